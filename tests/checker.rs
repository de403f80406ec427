//! An independent judge of release times against limits.
//!
//! Given the events released under one limit (time in integer microseconds, cost, queue),
//! this module answers whether the limit held and how well it was used, from the
//! definitions alone. It deliberately shares no code with the extension's limiter (std
//! only), so a bug there cannot hide itself here.
//!
//! Two readings of "n per period" are checked:
//! - a window limit: every half-open window `[t, t + per)` holds a cost of at most `n`
//!   ([`max_window`], [`window_ok`]);
//! - a token bucket (GCRA) of rate `n` per `per` with burst `burst`: every closed window
//!   `[a, b]` holds at most `burst + n·(b − a)/per` ([`gcra_ok`]).
//!
//! All bounds are compared in exact integers (i128); only the summary figures
//! ([`utilisation`], [`jain`]) are floating point.

use std::collections::BTreeMap;
use std::fmt;

/// One released message (or batch): when, how much of the limit it used, and whose.
///
/// `K` is the queue's key: a `String` (sender, campaign…) or a `u64`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event<K> {
    /// Release time in microseconds (any epoch, as long as all events share it).
    pub t_us: i64,
    pub cost: u64,
    pub queue: K,
}

impl<K> Event<K> {
    pub fn new(t_us: i64, cost: u64, queue: K) -> Self {
        Event { t_us, cost, queue }
    }
}

impl<K> From<(i64, u64, K)> for Event<K> {
    fn from((t_us, cost, queue): (i64, u64, K)) -> Self {
        Event { t_us, cost, queue }
    }
}

/// A window that holds more than its limit allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// First instant of the window (µs).
    pub start_us: i64,
    /// Its end (µs): excluded for a window limit, included for GCRA.
    pub end_us: i64,
    pub end_inclusive: bool,
    /// Cost released in the window.
    pub total: u64,
    /// Most the limit allows in that window (floored: costs are integers, so
    /// `total > limit` exactly when the bound is broken).
    pub limit: u64,
    /// The rule broken, e.g. "75 per 60 s" or "GCRA 10 per 1 s, burst 5".
    pub rule: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cost {} in [{}, {}{} exceeds the limit {} ({})",
            self.total,
            fmt_t(self.start_us),
            fmt_t(self.end_us),
            if self.end_inclusive { "]" } else { ")" },
            self.limit,
            self.rule
        )
    }
}

impl std::error::Error for Violation {}

/// (time, cost) sorted by time: every check below works on this.
fn sorted<K>(events: &[Event<K>]) -> Vec<(i64, u64)> {
    let mut v: Vec<(i64, u64)> = events.iter().map(|e| (e.t_us, e.cost)).collect();
    v.sort_unstable();
    v
}

/// The largest total cost in any half-open window `[t, t + per_us)`, and the earliest
/// `t` where it occurs. `(0, 0)` for no events.
///
/// Some window of maximal cost always starts at an event (slide any window right until
/// its first event sits on its start: nothing leaves, something may enter), so only
/// windows starting at event times are considered: sort + two pointers, O(n log n).
pub fn max_window<K>(events: &[Event<K>], per_us: i64) -> (u64, i64) {
    assert!(per_us > 0, "per_us must be positive");
    let ev = sorted(events);
    let (mut best, mut best_t) = (0u64, ev.first().map_or(0, |e| e.0));
    let (mut j, mut sum) = (0usize, 0u64);
    for i in 0..ev.len() {
        // i128: t + per must not overflow near i64::MAX.
        let end = ev[i].0 as i128 + per_us as i128;
        while j < ev.len() && (ev[j].0 as i128) < end {
            sum += ev[j].1;
            j += 1;
        }
        // Among equal times only the first index sees the whole group, and it comes
        // first, so strict `>` keeps the earliest start.
        if sum > best {
            (best, best_t) = (sum, ev[i].0);
        }
        sum -= ev[i].1;
    }
    (best, best_t)
}

/// Whether every half-open window `[t, t + per_us)` holds a cost of at most `n`; if not,
/// the worst window (the earliest of the worst).
pub fn window_ok<K>(events: &[Event<K>], n: u64, per_us: i64) -> Result<(), Violation> {
    let (total, t) = max_window(events, per_us);
    if total <= n {
        return Ok(());
    }
    Err(Violation {
        start_us: t,
        end_us: t.saturating_add(per_us),
        end_inclusive: false,
        total,
        limit: n,
        rule: format!("{n} per {}", fmt_dur(per_us)),
    })
}

/// Whether the events conform to a token bucket (GCRA) of rate `n` per `per_us` with
/// burst `burst`: for every closed window `[a, b]` with `a ≤ b` event times,
/// `cost(a..=b)·per_us ≤ burst·per_us + n·(b − a)`. If not, the first broken window
/// (smallest `b`, and for it the `a` with the largest excess).
///
/// With prefix sums `P` over the sorted events, the bound for the window from the group
/// of events at `a` to the group at `b` reads
/// `(per·P(b) − n·b) − (per·P(before a) − n·a) ≤ burst·per`, so one pass keeping the
/// minimum of the second bracket over all `a ≤ b` checks every pair: O(n log n) for the
/// sort, O(n) after. This is the virtual-scheduling (TAT) simulation written without
/// the clamping, in exact i128 arithmetic.
pub fn gcra_ok<K>(events: &[Event<K>], n: u64, per_us: i64, burst: u64) -> Result<(), Violation> {
    assert!(per_us > 0, "per_us must be positive");
    let ev = sorted(events);
    let (per, rate, burst_i) = (per_us as i128, n as i128, burst as i128);
    let mut prefix: i128 = 0; // cost of all events before the current group
                              // min over groups a seen so far of per·P(before a) − n·a, with its time and prefix.
    let mut best: Option<(i128, i64, i128)> = None;
    let mut i = 0;
    while i < ev.len() {
        let t = ev[i].0;
        let key = per * prefix - rate * t as i128;
        if best.is_none_or(|(m, _, _)| key < m) {
            best = Some((key, t, prefix));
        }
        // Take in the whole group at t: a closed window ending at t holds all of it.
        let mut j = i;
        while j < ev.len() && ev[j].0 == t {
            prefix += ev[j].1 as i128;
            j += 1;
        }
        let (m, a, before_a) = best.expect("set above");
        if per * prefix - rate * t as i128 - m > burst_i * per {
            let allowed = (burst_i * per + rate * (t as i128 - a as i128)) / per;
            return Err(Violation {
                start_us: a,
                end_us: t,
                end_inclusive: true,
                total: (prefix - before_a) as u64,
                limit: allowed.min(u64::MAX as i128) as u64,
                rule: format!("GCRA {n} per {}, burst {burst}", fmt_dur(per_us)),
            });
        }
        i = j;
    }
    Ok(())
}

/// How much of a window limit's capacity was used in `[from_us, to_us)`:
/// `released cost in [from, to) / (n · (to − from) / per_us)`, in f64.
///
/// The denominator is the limit's long-run capacity over the span, not the window
/// bound's rounded-up `n·ceil(span/per)`: a queue kept backlogged from idle under an
/// exact window limit releases `n` at the start of each period, so over exactly `k`
/// periods it scores 1.0; over a span that is not a whole number of periods it can
/// score above 1.0. NaN if the span is empty or `n` is 0.
pub fn utilisation<K>(events: &[Event<K>], n: u64, per_us: i64, from_us: i64, to_us: i64) -> f64 {
    let released: u64 = events
        .iter()
        .filter(|e| e.t_us >= from_us && e.t_us < to_us)
        .map(|e| e.cost)
        .sum();
    let capacity = n as f64 * (to_us as f64 - from_us as f64) / per_us as f64;
    if capacity > 0.0 {
        released as f64 / capacity
    } else {
        f64::NAN
    }
}

/// Jain's fairness index `(Σx)² / (n·Σx²)`: 1.0 when all shares are equal, `1/n` when
/// one takes everything. 1.0 for no shares or all zero (nobody is favoured).
pub fn jain(shares: &[f64]) -> f64 {
    let sum: f64 = shares.iter().sum();
    let sq: f64 = shares.iter().map(|x| x * x).sum();
    if shares.is_empty() || sq == 0.0 {
        return 1.0;
    }
    sum * sum / (shares.len() as f64 * sq)
}

/// Each queue's released cost in `[from_us, to_us)`. Queues with nothing in the span are
/// absent: to count a starved queue as 0, start from its key (see [`Report::new`]).
pub fn cost_shares<K: Ord + Clone>(
    events: &[Event<K>],
    from_us: i64,
    to_us: i64,
) -> BTreeMap<K, u64> {
    let mut m = BTreeMap::new();
    for e in events
        .iter()
        .filter(|e| e.t_us >= from_us && e.t_us < to_us)
    {
        *m.entry(e.queue.clone()).or_insert(0) += e.cost;
    }
    m
}

/// One limit's verdict and figures, printed as one line by the benchmark.
#[derive(Clone, Debug)]
pub struct Report {
    pub name: String,
    pub n: u64,
    pub per_us: i64,
    /// Worst half-open window over all events given (not only the span).
    pub worst_cost: u64,
    pub worst_start_us: i64,
    /// `worst_cost <= n`.
    pub ok: bool,
    /// Span the figures below cover: `[from_us, to_us)`.
    pub from_us: i64,
    pub to_us: i64,
    /// See [`utilisation`].
    pub utilisation: f64,
    /// Jain's index over the cost shares in the span of every queue that appears in the
    /// events (a queue released nothing in the span counts as 0).
    pub jain: f64,
    pub queues: usize,
}

impl Report {
    pub fn new<K: Ord + Clone>(
        name: impl Into<String>,
        events: &[Event<K>],
        n: u64,
        per_us: i64,
        from_us: i64,
        to_us: i64,
    ) -> Report {
        let (worst_cost, worst_start_us) = max_window(events, per_us);
        let mut shares: BTreeMap<K, u64> = events.iter().map(|e| (e.queue.clone(), 0)).collect();
        shares.extend(cost_shares(events, from_us, to_us));
        let shares: Vec<f64> = shares.values().map(|&c| c as f64).collect();
        Report {
            name: name.into(),
            n,
            per_us,
            worst_cost,
            worst_start_us,
            ok: worst_cost <= n,
            from_us,
            to_us,
            utilisation: utilisation(events, n, per_us, from_us, to_us),
            jain: jain(&shares),
            queues: shares.len(),
        }
    }
}

impl fmt::Display for Report {
    /// `att T sms: worst 75/75 in 60 s window at t=12.5 s, utilisation 0.99, jain 1.000`;
    /// t counts from the span's start.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: worst {}/{} in {} window at t={}, utilisation {:.2}, jain {:.3}",
            self.name,
            self.worst_cost,
            self.n,
            fmt_dur(self.per_us),
            fmt_t(self.worst_start_us.saturating_sub(self.from_us)),
            self.utilisation,
            self.jain
        )?;
        if !self.ok {
            write!(f, ", OVER THE LIMIT")?;
        }
        Ok(())
    }
}

/// A duration in the largest unit that shows it exactly: "60 s", "250 ms", "7 µs".
fn fmt_dur(us: i64) -> String {
    if us % 1_000_000 == 0 {
        format!("{} s", us / 1_000_000)
    } else if us % 1_000 == 0 {
        format!("{} ms", us / 1_000)
    } else {
        format!("{us} µs")
    }
}

/// An instant in seconds, exact to the microsecond: "60 s", "59.999999 s", "-0.5 s".
fn fmt_t(us: i64) -> String {
    let sign = if us < 0 { "-" } else { "" };
    let a = us.unsigned_abs();
    let (s, frac) = (a / 1_000_000, a % 1_000_000);
    if frac == 0 {
        format!("{sign}{s} s")
    } else {
        let f = format!("{frac:06}");
        format!("{sign}{s}.{} s", f.trim_end_matches('0'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64: enough randomness for small cases, no dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// A small random event set: few events over a short span, so that windows, ties
    /// and bursts collide often.
    fn random_events(r: &mut Rng) -> Vec<Event<u64>> {
        let len = r.below(14) as usize;
        let span = 1 + r.below(60);
        let costs = 1 + r.below(4);
        (0..len)
            .map(|_| Event::new(r.below(span) as i64 - 10, 1 + r.below(costs), r.below(4)))
            .collect()
    }

    fn ev(times: &[i64]) -> Vec<Event<u64>> {
        times.iter().map(|&t| Event::new(t, 1, 0)).collect()
    }

    /// Definition: cost in [start, start + per).
    fn window_cost(events: &[Event<u64>], start: i64, per: i64) -> u64 {
        events
            .iter()
            .filter(|e| e.t_us >= start && e.t_us < start + per)
            .map(|e| e.cost)
            .sum()
    }

    /// Definition: every closed window between two event times, all pairs.
    fn gcra_brute(events: &[Event<u64>], n: u64, per: i64, burst: u64) -> bool {
        for a in events {
            for b in events.iter().filter(|b| b.t_us >= a.t_us) {
                let cost: u64 = events
                    .iter()
                    .filter(|e| e.t_us >= a.t_us && e.t_us <= b.t_us)
                    .map(|e| e.cost)
                    .sum();
                if cost as i128 * per as i128
                    > burst as i128 * per as i128 + n as i128 * (b.t_us - a.t_us) as i128
                {
                    return false;
                }
            }
        }
        true
    }

    #[test]
    fn max_window_matches_every_start() {
        let mut r = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..5000 {
            let events = random_events(&mut r);
            let per = 1 + r.below(30) as i64;
            let (best, at) = max_window(&events, per);
            // Every integer start covering the events, not only event times: the claim
            // that event-time starts suffice is tested too.
            let brute = (-10 - per..=60)
                .map(|s| window_cost(&events, s, per))
                .max()
                .unwrap_or(0);
            assert_eq!(best, brute, "{events:?} per {per}");
            assert_eq!(
                window_cost(&events, at, per),
                best,
                "start {at} of {events:?}"
            );
            if best > 0 {
                // The earliest such start among event times.
                let first = events
                    .iter()
                    .map(|e| e.t_us)
                    .filter(|&t| window_cost(&events, t, per) == best)
                    .min();
                assert_eq!(Some(at), first, "{events:?} per {per}");
            }
            let n = r.below(8);
            match window_ok(&events, n, per) {
                Ok(()) => assert!(brute <= n),
                Err(v) => {
                    assert!(brute > n);
                    assert_eq!((v.total, v.limit, v.start_us), (best, n, at));
                    assert_eq!(
                        window_cost(&events, v.start_us, v.end_us - v.start_us),
                        v.total
                    );
                }
            }
        }
    }

    #[test]
    fn gcra_matches_all_pairs() {
        let mut r = Rng(0x2545_f491_4f6c_dd1d);
        let mut broken = 0;
        for _ in 0..5000 {
            let events = random_events(&mut r);
            let (n, per, burst) = (r.below(6), 1 + r.below(20) as i64, r.below(8));
            let fast = gcra_ok(&events, n, per, burst);
            assert_eq!(
                fast.is_ok(),
                gcra_brute(&events, n, per, burst),
                "{events:?} {n}/{per} burst {burst}"
            );
            if let Err(v) = fast {
                broken += 1;
                // The reported window is real and really broken.
                let cost: u64 = events
                    .iter()
                    .filter(|e| e.t_us >= v.start_us && e.t_us <= v.end_us)
                    .map(|e| e.cost)
                    .sum();
                assert_eq!(cost, v.total, "{v}");
                assert!(v.total > v.limit, "{v}");
                let allowed =
                    burst as i128 * per as i128 + n as i128 * (v.end_us - v.start_us) as i128;
                assert!(cost as i128 * per as i128 > allowed, "{v}");
                assert_eq!(v.limit as i128, allowed / per as i128, "{v}");
            }
        }
        // Both outcomes must be well exercised for the agreement to mean anything.
        assert!((1000..4000).contains(&broken), "{broken} broken of 5000");
    }

    /// Unit costs: the same verdict as the harness's own GCRA check.
    #[test]
    fn gcra_agrees_with_harness_check() {
        let mut r = Rng(12345);
        for _ in 0..2000 {
            let times: Vec<i64> = (0..r.below(12)).map(|_| r.below(5000) as i64).collect();
            let (n, per, burst) = (1 + r.below(5), 1000 + r.below(3000) as i64, 1 + r.below(4));
            assert_eq!(
                gcra_ok(&ev(&times), n, per, burst).is_ok(),
                crate::window_violation(&times, n as i128, per as i128, burst as i128).is_none(),
                "{times:?} {n}/{per} burst {burst}"
            );
        }
    }

    #[test]
    fn shares_utilisation_and_jain_match_definitions() {
        let mut r = Rng(777);
        for _ in 0..3000 {
            let events = random_events(&mut r);
            let (from, to) = (r.below(40) as i64 - 15, r.below(40) as i64 - 15);
            let shares = cost_shares(&events, from, to);
            for q in 0..4u64 {
                let brute: u64 = events
                    .iter()
                    .filter(|e| e.queue == q && from <= e.t_us && e.t_us < to)
                    .map(|e| e.cost)
                    .sum();
                assert_eq!(shares.get(&q).copied().unwrap_or(0), brute);
            }
            let (n, per) = (1 + r.below(5), 1 + r.below(20) as i64);
            let u = utilisation(&events, n, per, from, to);
            if to > from {
                let total: u64 = shares.values().sum();
                let expect = total as f64 * per as f64 / (n as f64 * (to - from) as f64);
                assert!(
                    (u - expect).abs() <= 1e-12 * expect.max(1.0),
                    "{u} vs {expect}"
                );
            } else {
                assert!(u.is_nan());
            }
            // Jain = 1 / (1 + CV²), an independent form of the same index.
            let x: Vec<f64> = (0..1 + r.below(6)).map(|_| r.below(5) as f64).collect();
            let mean = x.iter().sum::<f64>() / x.len() as f64;
            let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / x.len() as f64;
            let j = jain(&x);
            if mean > 0.0 {
                assert!(
                    (j - 1.0 / (1.0 + var / (mean * mean))).abs() < 1e-12,
                    "{x:?}"
                );
            } else {
                assert_eq!(j, 1.0);
            }
            assert!(j >= 1.0 / x.len() as f64 - 1e-12 && j <= 1.0 + 1e-12);
        }
    }

    const MIN: i64 = 60_000_000;

    #[test]
    fn half_open_minute_windows() {
        // 75 at t=0 and 75 at t=60 s: no half-open minute holds both.
        let mut e = ev(&[0; 75]);
        e.extend(ev(&[MIN; 75]));
        assert_eq!(window_ok(&e, 75, MIN), Ok(()));
        assert_eq!(max_window(&e, MIN), (75, 0));

        // One more 1 µs before the minute is out breaks it.
        let mut e = ev(&[0; 75]);
        e.push(Event::new(MIN - 1, 1, 0));
        let v = window_ok(&e, 75, MIN).unwrap_err();
        assert_eq!((v.start_us, v.end_us, v.total, v.limit), (0, MIN, 76, 75));
        assert_eq!(
            v.to_string(),
            "cost 76 in [0 s, 60 s) exceeds the limit 75 (75 per 60 s)"
        );

        // 76 spread evenly over 59.999999 s.
        let e = ev(&(0..76).map(|i| i * (MIN - 1) / 75).collect::<Vec<_>>());
        assert_eq!(*e.last().map(|x| &x.t_us).unwrap(), MIN - 1);
        assert!(window_ok(&e, 75, MIN).is_err());
    }

    #[test]
    fn two_n_within_one_period() {
        let (n, per) = (10u64, 1_000_000i64);
        let mut e = ev(&[0; 10]);
        e.extend(ev(&[per - 1; 10]));
        assert_eq!(window_ok(&e, n, per).unwrap_err().total, 20);
        // Token bucket n per period, burst n: [0, per − 1 µs] allows n + n·(per−1)/per < 2n.
        let v = gcra_ok(&e, n, per, n).unwrap_err();
        assert_eq!(
            (v.start_us, v.end_us, v.total, v.limit),
            (0, per - 1, 20, 19)
        );
        assert_eq!(
            v.to_string(),
            "cost 20 in [0 s, 0.999999 s] exceeds the limit 19 (GCRA 10 per 1 s, burst 10)"
        );
        // A full period apart, the bucket has refilled.
        let mut e = ev(&[0; 10]);
        e.extend(ev(&[per; 10]));
        assert_eq!(gcra_ok(&e, n, per, n), Ok(()));
        assert_eq!(window_ok(&e, n, per), Ok(()));
        // A single event costing more than the burst breaks it alone.
        assert!(gcra_ok(&[Event::new(5, 11, 0)], n, per, n).is_err());
    }

    #[test]
    fn jain_examples() {
        assert_eq!(jain(&[1.0, 1.0]), 1.0);
        assert_eq!(jain(&[1.0, 0.0]), 0.5);
        assert_eq!(jain(&[3.0, 0.0, 0.0]), 1.0 / 3.0);
        assert_eq!(jain(&[]), 1.0);
    }

    #[test]
    fn utilisation_examples() {
        // Backlogged from idle under 75/min: 75 at the start of each of 3 minutes.
        let e: Vec<_> = (0..3).flat_map(|k| ev(&[k * MIN; 75])).collect();
        assert_eq!(utilisation(&e, 75, MIN, 0, 3 * MIN), 1.0);
        // The same releases judged over 6 minutes used half the capacity.
        assert_eq!(utilisation(&e, 75, MIN, 0, 6 * MIN), 0.5);
        // The span is half-open: the batch at 3 min is outside [0, 3 min).
        let mut e4 = e.clone();
        e4.extend(ev(&[3 * MIN; 75]));
        assert_eq!(utilisation(&e4, 75, MIN, 0, 3 * MIN), 1.0);
    }

    #[test]
    fn report_line() {
        // Two senders, one starved in the span: jain counts it as 0.
        let mut e: Vec<Event<String>> = (0..3)
            .flat_map(|k| (0..75).map(move |_| Event::new(1_000_000 + k * MIN, 1, "a".to_string())))
            .collect();
        e.push(Event::new(3 * MIN + 2_000_000, 1, "b".to_string()));
        let r = Report::new("att T sms", &e, 75, MIN, 0, 3 * MIN);
        assert!(r.ok);
        assert_eq!(r.queues, 2);
        assert_eq!(
            r.to_string(),
            "att T sms: worst 75/75 in 60 s window at t=1 s, utilisation 1.00, jain 0.500"
        );
        e.push(Event::new(1_500_000, 1, "b".to_string()));
        let r = Report::new("att T sms", &e, 75, MIN, 0, 3 * MIN);
        assert!(!r.ok);
        assert!(r.to_string().ends_with(", OVER THE LIMIT"), "{r}");
        assert_eq!((r.worst_cost, r.worst_start_us), (76, 1_000_000));
    }
}
