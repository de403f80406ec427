//! The pure core: rate math and admission decisions. No pgrx, no clock: every function takes
//! the time as an argument (integer microseconds, any fixed epoch).

pub mod calendar;
pub mod cap;
pub mod capacity;
pub mod contact;
pub mod gcra;
pub mod presence;
pub mod schedule;
#[cfg(test)]
mod sim;
pub mod table;
pub mod tick;
pub mod window;

pub use gcra::{Bucket, Check, Mode, Rate, RateError};

/// Integer microseconds. The glue uses PostgreSQL's epoch (2000-01-01 UTC).
pub type Micros = i64;

/// What holds a queue: a rate limit, a calendar cap (each by its row's id), or shared memory
/// that has no room for another bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LimitRef {
    Rate(i64),
    Cap(i64),
    Memory,
}

/// The answer to one admission over several limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every limit had room and was debited. `headroom` is the fewest whole tokens any of
    /// them has left afterwards (`None` when no limit applies, or when not asked for).
    Admitted { headroom: Option<u64> },
    /// Some limit had no room and nothing was debited. `blocker` is the index of the limit
    /// that holds the call longest; `retry_at` the earliest time the same call would pass
    /// (`None`: never, its cost exceeds that limit's burst). `headroom` is the fewest
    /// whole tokens any limit has now.
    Refused {
        blocker: usize,
        retry_at: Option<Micros>,
        headroom: u64,
    },
}

/// Admit `cost` at `now` against every bucket at once: all are debited or none is.
/// The buckets may be owned or borrowed (`&mut Bucket` into shared memory).
pub fn admit<B: AsMut<Bucket>>(buckets: &mut [B], cost: u64, now: Micros) -> Outcome {
    admit_opt(buckets, cost, now, true)
}

/// [`admit`], computing the headroom of an admission only if `headroom` (it costs a
/// division per bucket).
pub fn admit_opt<B: AsMut<Bucket>>(
    buckets: &mut [B],
    cost: u64,
    now: Micros,
    headroom: bool,
) -> Outcome {
    let want_headroom = headroom;
    let n = buckets.len();
    // Decide first, debit after: no bucket is touched unless all have room.
    let mut worst: Option<(usize, Option<Micros>)> = None;
    for i in 0..n {
        match buckets[i].as_mut().check(cost, now) {
            Check::Room { .. } => {}
            Check::Never => {
                worst = Some((i, None));
                break;
            }
            Check::Wait { at } => match worst {
                Some((_, Some(w))) if w >= at => {}
                _ => worst = Some((i, Some(at))),
            },
        }
    }
    match worst {
        Some((blocker, retry_at)) => {
            let headroom = (0..n)
                .map(|i| buckets[i].as_mut().available(now))
                .min()
                .unwrap_or(0);
            Outcome::Refused {
                blocker,
                retry_at,
                headroom,
            }
        }
        None => {
            let mut headroom: Option<u64> = None;
            for i in 0..n {
                let b = buckets[i].as_mut();
                let taken = b.take(cost, now);
                debug_assert!(taken, "checked bucket refused");
                if want_headroom {
                    let left = b.available(now);
                    headroom = Some(headroom.map_or(left, |h| h.min(left)));
                }
            }
            Outcome::Admitted { headroom }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEC: Micros = 1_000_000;

    fn rate(count: u64, period_us: u64, burst: u64) -> Rate {
        Rate::new(count, period_us, burst).expect("valid rate")
    }

    #[test]
    fn all_or_nothing() {
        let line = Bucket::full_at(rate(1, SEC as u64, 1), 0);
        let campaign = Bucket::full_at(rate(4500, 60 * SEC as u64, 4500), 0);
        let mut b = [line, campaign];
        assert_eq!(admit(&mut b, 1, 0), Outcome::Admitted { headroom: Some(0) });
        let before = b;
        match admit(&mut b, 1, 0) {
            Outcome::Refused {
                blocker,
                retry_at,
                headroom,
            } => {
                assert_eq!(blocker, 0);
                assert_eq!(retry_at, Some(SEC));
                assert_eq!(headroom, 0);
            }
            o => panic!("expected refusal, got {o:?}"),
        }
        // The campaign bucket was not debited by the refused call.
        assert_eq!(b, before);
    }

    #[test]
    fn blocker_is_the_latest() {
        let fast = Bucket::full_at(rate(10, SEC as u64, 1), 0);
        let slow = Bucket::full_at(rate(1, 60 * SEC as u64, 1), 0);
        let mut b = [fast, slow];
        assert!(matches!(admit(&mut b, 1, 0), Outcome::Admitted { .. }));
        assert_eq!(
            admit(&mut b, 1, 0),
            Outcome::Refused {
                blocker: 1,
                retry_at: Some(60 * SEC),
                headroom: 0
            }
        );
    }

    #[test]
    fn never_when_cost_exceeds_burst() {
        let mut b = [
            Bucket::full_at(rate(100, SEC as u64, 100), 0),
            Bucket::full_at(rate(1, SEC as u64, 2), 0),
        ];
        assert_eq!(
            admit(&mut b, 3, 0),
            Outcome::Refused {
                blocker: 1,
                retry_at: None,
                headroom: 2
            }
        );
    }

    #[test]
    fn no_limits_admits() {
        assert_eq!(
            admit::<Bucket>(&mut [], 1, 0),
            Outcome::Admitted { headroom: None }
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Refusals never debit; admissions debit each bucket by exactly the cost, and the
        /// named retry time really is when the call passes.
        #[test]
        fn atomic_and_exact(rates in prop::collection::vec((1u64..100, 1u64..10), 1..5),
                            calls in prop::collection::vec((0i64..300_000, 1u64..4), 1..200)) {
            let mut bs: Vec<Bucket> = rates.iter().map(|&(c, burst)| Bucket::full_at(rate(c, SEC as u64, burst), 0)).collect();
            let mut t = 0;
            for (dt, cost) in calls {
                t += dt;
                let before = bs.clone();
                match admit(&mut bs, cost, t) {
                    Outcome::Admitted { .. } => {
                        for (a, b) in before.iter().zip(&bs) {
                            prop_assert_eq!(b.tat, a.tat.max(t as i128 * a.rate.count as i128) + cost as i128 * a.rate.period_us as i128);
                        }
                    }
                    Outcome::Refused { retry_at, .. } => {
                        prop_assert_eq!(&before, &bs);
                        if let Some(at) = retry_at {
                            let mut probe = bs.clone();
                            let ok = matches!(admit(&mut probe, cost, at), Outcome::Admitted { .. });
                    prop_assert!(ok);
                            let mut probe = bs.clone();
                            let ok = matches!(admit(&mut probe, cost, at - 1), Outcome::Refused { .. });
                    prop_assert!(ok);
                        }
                    }
                }
            }
        }
    }
}
