//! Calendar caps: at most N per hour, day or month of a [`Calendar`], with an optional soft
//! overage (Sendblue lets plans reach 120 %) and warning thresholds (75/90/100 %).
//!
//! A [`Ledger`] is one cap's usage in one window. Usage has two parts: `used`, counted in the
//! same transaction as the release of the messages, and `leased`, capacity handed in chunks
//! to shared memory for `throttle_admit` (a crash may waste a lease, never overspend it).
//! Both count against the cap, so the sum never exceeds what the cap allows.

use super::calendar::Calendar;
use super::Micros;

/// What a cap allows and when it warns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapRule {
    /// The cap itself: 100 %.
    pub cap: u64,
    /// How far over the cap usage may go, in percent of the cap (20: up to 120 %).
    pub overage_pct: u32,
    /// Percentages of the cap whose crossing is announced, ascending.
    pub warn_at: Vec<u32>,
}

impl CapRule {
    /// The most a window may use: the cap plus its overage, rounded down.
    pub fn allowed(&self) -> u64 {
        (self.cap as u128 * (100 + self.overage_pct as u128) / 100) as u64
    }

    /// The thresholds crossed going from `before` to `after` (each is crossed once per
    /// window, since usage only grows within one).
    pub fn crossed(&self, before: u64, after: u64) -> impl Iterator<Item = u32> + '_ {
        let cap = self.cap as u128;
        self.warn_at.iter().copied().filter(move |&pct| {
            let mark = cap * pct as u128; // usage × 100 reaches this at the threshold
            (before as u128) * 100 < mark && (after as u128) * 100 >= mark
        })
    }
}

/// Why a cap cannot take a cost now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapFull {
    /// Not before the window resets at `until`.
    Until { until: Micros },
    /// Never: the cost is more than a whole window allows.
    Never,
}

/// One cap's usage in the window that contains the time it was last asked about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ledger {
    pub window_start: Micros,
    pub window_end: Micros,
    /// Released in this window (counted with the release).
    pub used: u64,
    /// Leased to shared memory in this window.
    pub leased: u64,
}

impl Ledger {
    /// An empty ledger for the window of `cal` that contains `now`.
    pub fn new(cal: &Calendar, now: Micros) -> Ledger {
        Ledger {
            window_start: cal.window_start(now),
            window_end: cal.window_end(now),
            used: 0,
            leased: 0,
        }
    }

    /// Move to the window that contains `now` if it has ended (usage starts again at zero);
    /// returns whether it moved. A `now` before the window never moves it back.
    pub fn roll(&mut self, cal: &Calendar, now: Micros) -> bool {
        if now < self.window_end {
            return false;
        }
        *self = Ledger::new(cal, now);
        true
    }

    pub fn spent(&self) -> u64 {
        self.used.saturating_add(self.leased)
    }

    /// How much more the window allows.
    pub fn left(&self, rule: &CapRule) -> u64 {
        rule.allowed().saturating_sub(self.spent())
    }

    /// Whether `cost` fits now (after rolling to `now`'s window).
    pub fn check(
        &mut self,
        cal: &Calendar,
        rule: &CapRule,
        cost: u64,
        now: Micros,
    ) -> Result<(), CapFull> {
        self.roll(cal, now);
        if cost > rule.allowed() {
            return Err(CapFull::Never);
        }
        if cost > self.left(rule) {
            return Err(CapFull::Until {
                until: self.window_end,
            });
        }
        Ok(())
    }

    /// Count `cost` as released if it fits.
    pub fn take(
        &mut self,
        cal: &Calendar,
        rule: &CapRule,
        cost: u64,
        now: Micros,
    ) -> Result<(), CapFull> {
        self.check(cal, rule, cost, now)?;
        self.used += cost;
        Ok(())
    }

    /// Lease a chunk for shared memory: `want` if it fits, else all that is left (0: none).
    pub fn lease(&mut self, cal: &Calendar, rule: &CapRule, want: u64, now: Micros) -> u64 {
        self.roll(cal, now);
        let n = want.min(self.left(rule));
        self.leased += n;
        n
    }
}

/// How much `throttle_admit` leases at a time: a hundredth of what the window allows (at
/// least 10, or all of a smaller window; at most 10,000; at least the cost asked for), so a
/// busy cap costs one table write per hundred admissions while a crash wastes at most a
/// hundredth of a window (or 10).
pub fn lease_chunk(rule: &CapRule, cost: u64) -> u64 {
    let allowed = rule.allowed();
    (allowed / 100).clamp(allowed.min(10), 10_000).max(cost)
}

#[cfg(test)]
mod tests {
    use super::super::calendar::{Calendar, Period, PG_EPOCH_UNIX_US};
    use super::*;
    use chrono::NaiveTime;
    use proptest::prelude::*;

    const LA: chrono_tz::Tz = chrono_tz::America::Los_Angeles;

    fn pg(utc: &str) -> Micros {
        chrono::DateTime::parse_from_rfc3339(utc)
            .expect("rfc3339")
            .timestamp_micros()
            - PG_EPOCH_UNIX_US
    }

    fn daily_la() -> Calendar {
        Calendar {
            period: Period::Day,
            reset: NaiveTime::MIN,
            tz: LA,
        }
    }

    fn rule(cap: u64, overage_pct: u32) -> CapRule {
        CapRule {
            cap,
            overage_pct,
            warn_at: vec![75, 90, 100],
        }
    }

    #[test]
    fn soft_overage_and_thresholds() {
        let r = rule(4000, 20);
        assert_eq!(r.allowed(), 4800);
        assert_eq!(r.crossed(0, 2999).collect::<Vec<_>>(), Vec::<u32>::new());
        assert_eq!(r.crossed(2999, 3000).collect::<Vec<_>>(), vec![75]);
        assert_eq!(r.crossed(3000, 4000).collect::<Vec<_>>(), vec![90, 100]);
        assert_eq!(r.crossed(4000, 4800).collect::<Vec<_>>(), Vec::<u32>::new());
        // Thresholds past 100 % work too.
        let r = CapRule {
            warn_at: vec![110, 120],
            ..r
        };
        assert_eq!(r.crossed(4000, 4800).collect::<Vec<_>>(), vec![110, 120]);
    }

    #[test]
    fn a_cap_hit_at_2359_pacific_waits_for_midnight() {
        let cal = daily_la();
        let r = rule(2000, 0);
        let t = pg("2026-11-23T07:59:00Z"); // 23:59 PST, Nov 22
        let mut l = Ledger::new(&cal, t);
        assert_eq!(l.take(&cal, &r, 2000, t), Ok(()));
        let midnight = pg("2026-11-23T08:00:00Z");
        assert_eq!(
            l.take(&cal, &r, 1, t),
            Err(CapFull::Until { until: midnight })
        );
        assert_eq!(
            l.take(&cal, &r, 1, midnight - 1),
            Err(CapFull::Until { until: midnight })
        );
        assert_eq!(l.take(&cal, &r, 1, midnight), Ok(()));
        assert_eq!((l.window_start, l.used), (midnight, 1));
        assert_eq!(l.take(&cal, &r, 2001, midnight), Err(CapFull::Never));
    }

    #[test]
    fn leases_count_against_the_cap() {
        let cal = daily_la();
        let r = rule(100, 0);
        let t = pg("2026-11-22T12:00:00Z");
        let mut l = Ledger::new(&cal, t);
        assert_eq!(lease_chunk(&r, 1), 10);
        assert_eq!(lease_chunk(&rule(4, 0), 1), 4);
        assert_eq!(lease_chunk(&rule(200_000, 0), 1), 2000);
        assert_eq!(lease_chunk(&rule(200_000, 0), 5000), 5000);
        assert_eq!(l.lease(&cal, &r, 60, t), 60);
        assert_eq!(
            l.take(&cal, &r, 41, t),
            Err(CapFull::Until {
                until: l.window_end
            })
        );
        assert_eq!(l.take(&cal, &r, 40, t), Ok(()));
        assert_eq!(l.lease(&cal, &r, 60, t), 0);
    }

    /// A day and a half of traffic at random instants, released at once when the cap has
    /// room and otherwise deferred to the reset (as the worker does): no window ever takes
    /// more than the cap allows, every message is released exactly once, and none waits
    /// while its window had room.
    #[test]
    fn a_day_of_traffic() {
        let cal = daily_la();
        let r = rule(2000, 10); // 2,200 allowed a day
        let start = pg("2026-11-22T06:00:00Z"); // 22:00 PST Nov 21
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut arrivals: Vec<Micros> = (0..6000)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                start + (seed % (36 * 3_600_000_000)) as Micros
            })
            .collect();
        arrivals.sort();
        let mut ledger = Ledger::new(&cal, start);
        let mut waiting: std::collections::VecDeque<Micros> = Default::default();
        let mut released: Vec<(Micros, Micros)> = Vec::new(); // (arrived, released)
        let mut events = arrivals.clone();
        // Wake at every reset too, to drain what waits.
        let mut reset = cal.window_end(start);
        while reset < start + 48 * 3_600_000_000 {
            events.push(reset);
            reset = cal.window_end(reset);
        }
        events.sort();
        let mut next_arrival = 0;
        for now in events {
            while next_arrival < arrivals.len() && arrivals[next_arrival] <= now {
                waiting.push_back(arrivals[next_arrival]);
                next_arrival += 1;
            }
            while let Some(&a) = waiting.front() {
                match ledger.take(&cal, &r, 1, now) {
                    Ok(()) => {
                        released.push((a, now));
                        waiting.pop_front();
                    }
                    Err(CapFull::Until { until }) => {
                        assert_eq!(until, cal.window_end(now));
                        break;
                    }
                    Err(CapFull::Never) => unreachable!(),
                }
            }
        }
        assert_eq!(released.len() + waiting.len(), arrivals.len());
        let mut per_window: std::collections::BTreeMap<Micros, u64> = Default::default();
        for &(a, at) in &released {
            assert!(at >= a);
            *per_window.entry(cal.window_start(at)).or_default() += 1;
            // Released late only at a reset: it waited because its window was full.
            if at > a {
                assert_eq!(cal.window_start(at), at, "deferred to a reset");
            }
        }
        assert!(per_window.values().all(|&n| n <= r.allowed()));
        // The first full window used all it allows.
        assert!(per_window.values().any(|&n| n == r.allowed()));
    }

    proptest! {
        /// Whatever the order of leases and releases and times, a window never spends more
        /// than it allows, and a refusal names that window's end.
        #[test]
        fn never_over_the_cap(steps in proptest::collection::vec((0u8..2, 1u64..300, 0i64..7_200_000_000), 1..200),
                              cap in 1u64..3000, overage in 0u32..50) {
            let cal = Calendar { period: Period::Hour, reset: NaiveTime::MIN, tz: LA };
            let r = rule(cap, overage);
            let mut t = pg("2026-11-22T00:00:00Z");
            let mut l = Ledger::new(&cal, t);
            for (kind, cost, dt) in steps {
                t += dt / 100;
                let before = l;
                if kind == 0 {
                    if let Err(CapFull::Until { until }) = l.take(&cal, &r, cost, t) {
                        prop_assert_eq!(until, cal.window_end(t));
                    }
                } else {
                    l.lease(&cal, &r, cost, t);
                }
                prop_assert!(l.spent() <= r.allowed());
                prop_assert!(l.window_start <= t && t < l.window_end);
                if l.window_start == before.window_start {
                    prop_assert!(l.spent() >= before.spent());
                }
            }
        }
    }
}
