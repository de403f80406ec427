//! Window-exact counting: at most `count` (cost) in *every* half-open window of `period_us`,
//! the first one after an idle spell included, in bounded memory.
//!
//! Releases are kept in a few batches, oldest first: each batch remembers its total cost and
//! the time of its latest release, and counts in full until that latest release is a whole
//! period old. Counting a batch for longer than its earlier members need is the only
//! approximation, and it errs on the safe side: a call at `t` counts every release later
//! than `t - period` (and maybe a few earlier ones), so no window ever holds more than
//! `count`, whatever order the timestamps come in.
//!
//! A batch closes when it holds an eighth of `count` or spans an eighth of the period, so
//! under a backlog (releases come as soon as a batch expires, all at once) it returns its
//! capacity at most a few ticks late: the limit sustains its full rate.
//!
//! Batches are forgotten only once they are a whole period old at some call's time; the
//! latest release they held is kept as `horizon`, and a call timed before `horizon + period`
//! (an older timestamp than one already seen) is refused until then rather than judged
//! without them.

use super::Micros;

/// How many batches a window keeps.
pub const BATCHES: usize = 8;

/// No forgotten release: every call may be judged on the batches alone.
const NO_HORIZON: Micros = Micros::MIN;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    // What nearly every call reads first, together.
    /// Cost of every batch kept: when it leaves room, nothing needs a closer look.
    total: u64,
    /// Latest release of any batch forgotten (`NO_HORIZON`: none).
    horizon: Micros,
    /// When the newest batch was opened.
    opened: Micros,
    head: u8,
    len: u8,
    /// Latest release of each batch, ring order from `head`; non-decreasing.
    last: [Micros; BATCHES],
    /// Total cost of each batch.
    cost: [u32; BATCHES],
}

impl Window {
    /// Nothing released, nothing forgotten.
    pub const EMPTY: Window = Window {
        total: 0,
        horizon: NO_HORIZON,
        opened: 0,
        head: 0,
        len: 0,
        last: [0; BATCHES],
        cost: [0; BATCHES],
    };

    /// As if everything had been released at `at`: nothing passes before `at + period`.
    pub fn spent_at(at: Micros) -> Window {
        Window {
            horizon: at,
            ..Window::EMPTY
        }
    }

    /// One batch of `cost` whose latest release was at `at` (a conversion from another kind
    /// of state that only bounds what went before).
    pub fn one_batch(cost: u64, at: Micros) -> Window {
        let mut w = Window::EMPTY;
        if cost > 0 {
            w.push(at, cost);
        }
        w
    }

    #[inline]
    fn idx(&self, i: usize) -> usize {
        (self.head as usize + i) % BATCHES
    }

    /// The batches still counting at `t`, oldest first: (latest release, cost).
    #[inline]
    fn live(&self, t: Micros, period: u64) -> impl Iterator<Item = (Micros, u64)> + '_ {
        let floor = t.saturating_sub(period as Micros);
        (0..self.len as usize)
            .map(move |i| {
                let j = self.idx(i);
                (self.last[j], self.cost[j] as u64)
            })
            .filter(move |&(last, _)| last > floor)
    }

    /// Cost counting against a call at `t`.
    pub fn used(&self, t: Micros, period: u64) -> u64 {
        self.live(t, period).map(|(_, c)| c).sum()
    }

    /// The first time a call before which is in the shadow of forgotten releases.
    #[inline]
    fn clear_from(&self, period: u64) -> Micros {
        if self.horizon == NO_HORIZON {
            Micros::MIN
        } else {
            self.horizon.saturating_add(period as Micros)
        }
    }

    /// The earliest time at or after `now` when `cost` fits under `count`, as things stand.
    /// `None`: never (the cost exceeds the count).
    pub fn room_at(&self, cost: u64, now: Micros, count: u64, period: u64) -> Option<Micros> {
        if cost > count {
            return None;
        }
        let t = now.max(self.clear_from(period));
        // Everything kept counting still leaves room: no need to look at each batch.
        if self.total + cost <= count {
            return Some(t);
        }
        let used = self.used(t, period);
        if used + cost <= count {
            return Some(t);
        }
        // Batches expire oldest first: find the one whose expiry leaves enough room.
        let mut left = used;
        for (last, c) in self.live(t, period) {
            left -= c;
            if left + cost <= count {
                return Some(last.saturating_add(period as Micros));
            }
        }
        Some(t) // unreachable: with every batch expired, `cost <= count` fits
    }

    /// Whole units of cost that fit at `now`.
    pub fn available(&self, now: Micros, count: u64, period: u64) -> u64 {
        if now < self.clear_from(period) {
            return 0;
        }
        if self.total == 0 {
            return count;
        }
        count.saturating_sub(self.used(now, period))
    }

    /// Nothing counts at `now` and nothing forgotten casts a shadow on it.
    pub fn is_clear(&self, now: Micros, period: u64) -> bool {
        now >= self.clear_from(period) && self.used(now, period) == 0
    }

    /// Record `cost` released at `now` (the caller has checked that it fits).
    pub fn record(&mut self, cost: u64, now: Micros, count: u64, period: u64) {
        // Batches that stopped counting a while ago (an eighth of the period: calls from other
        // sessions come with slightly older timestamps, and a forgotten batch holds those
        // back) are forgotten, so `total` is what counts and the next check is quick.
        let grace = (period / BATCHES as u64).max(1) as Micros;
        let floor = now.saturating_sub(period as Micros).saturating_sub(grace);
        while self.len > 0 && self.last[self.head as usize] <= floor {
            let h = self.head as usize;
            self.horizon = self.horizon.max(self.last[h]);
            self.total -= self.cost[h] as u64;
            self.head = ((h + 1) % BATCHES) as u8;
            self.len -= 1;
        }
        let per_batch = count.div_ceil(BATCHES as u64).max(1);
        let width = (period / BATCHES as u64).max(1) as Micros;
        if self.len > 0 {
            let n = self.idx(self.len as usize - 1);
            let fits =
                now.saturating_sub(self.opened) < width && self.cost[n] as u64 + cost <= per_batch;
            // An older timestamp than the newest batch's joins it: the batches stay ordered.
            if now < self.last[n] || fits {
                self.merge(n, now, cost);
                return;
            }
        }
        if self.len as usize == BATCHES {
            // Full: forget the oldest if it no longer counts, else add to the newest.
            let h = self.head as usize;
            if self.last[h] <= now.saturating_sub(period as Micros) {
                self.horizon = self.horizon.max(self.last[h]);
                self.total -= self.cost[h] as u64;
                self.head = ((h + 1) % BATCHES) as u8;
                self.len -= 1;
            } else {
                let n = self.idx(self.len as usize - 1);
                self.merge(n, now, cost);
                return;
            }
        }
        self.push(now, cost);
    }

    fn merge(&mut self, j: usize, now: Micros, cost: u64) {
        self.last[j] = self.last[j].max(now);
        let c = (self.cost[j] as u64 + cost).min(u32::MAX as u64);
        self.total += c - self.cost[j] as u64;
        self.cost[j] = c as u32;
    }

    fn push(&mut self, now: Micros, cost: u64) {
        let j = self.idx(self.len as usize);
        self.last[j] = now;
        self.cost[j] = cost.min(u32::MAX as u64) as u32;
        self.total += self.cost[j] as u64;
        self.opened = now;
        self.len += 1;
    }

    /// When the `n`-th of `n` more units could go, each as soon as it fits, from `now` on:
    /// what fits now, then each batch's cost as it expires, and the same pattern again every
    /// period after (what goes at `t` comes back at `t + period`).
    pub fn eta(&self, n: u64, now: Micros, count: u64, period: u64) -> Micros {
        if n == 0 {
            return now;
        }
        let t = now.max(self.clear_from(period));
        let mut steps: Vec<(Micros, u64)> = Vec::with_capacity(BATCHES + 1);
        let used = self.used(t, period);
        let mut wave = count.saturating_sub(used);
        if wave > 0 {
            steps.push((t, wave));
        }
        for (last, c) in self.live(t, period) {
            let c = c.min(count - wave.min(count));
            if c > 0 {
                steps.push((last.saturating_add(period as Micros), c));
                wave += c;
            }
        }
        let wave = wave.max(1);
        let rounds = (n - 1) / wave;
        let mut k = (n - 1) % wave + 1;
        for (at, c) in steps {
            if k <= c {
                let shift = (rounds as i128 * period as i128).min(Micros::MAX as i128) as Micros;
                return at.saturating_add(shift);
            }
            k -= c;
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEC: Micros = 1_000_000;
    const MIN: u64 = 60 * SEC as u64;

    fn take(w: &mut Window, cost: u64, t: Micros, count: u64, period: u64) -> bool {
        if w.room_at(cost, t, count, period) == Some(t) {
            w.record(cost, t, count, period);
            true
        } else {
            false
        }
    }

    /// Brute force: the largest cost in any half-open window [s, s + period).
    fn worst_window(ev: &[(Micros, u64)], period: u64) -> u64 {
        let mut worst = 0;
        for &(s, _) in ev {
            let sum: u64 = ev
                .iter()
                .filter(|&&(t, _)| t >= s && t < s + period as Micros)
                .map(|&(_, c)| c)
                .sum();
            worst = worst.max(sum);
        }
        worst
    }

    #[test]
    fn a_minute_limit_from_idle_lets_the_count_through_once_per_minute() {
        // AT&T class T: 75 per minute. From idle all 75 go at once, then nothing until a
        // minute after them, then 75 again.
        let mut w = Window::EMPTY;
        for _ in 0..75 {
            assert!(take(&mut w, 1, 0, 75, MIN));
        }
        assert!(!take(&mut w, 1, 0, 75, MIN));
        assert_eq!(w.room_at(1, 0, 75, MIN), Some(MIN as Micros));
        assert!(!take(&mut w, 1, MIN as Micros - 1, 75, MIN));
        for _ in 0..75 {
            assert!(take(&mut w, 1, MIN as Micros, 75, MIN));
        }
        assert!(!take(&mut w, 1, MIN as Micros, 75, MIN));
    }

    #[test]
    fn eta_walks_the_batches_then_repeats_each_period() {
        let mut w = Window::EMPTY;
        for t in 0..4 {
            w.record(1, t * SEC, 4, 10 * SEC as u64);
        }
        let p = 10 * SEC as u64;
        assert_eq!(w.eta(1, 4 * SEC, 4, p), 10 * SEC);
        assert_eq!(w.eta(4, 4 * SEC, 4, p), 13 * SEC);
        assert_eq!(w.eta(5, 4 * SEC, 4, p), 20 * SEC);
        assert_eq!(Window::EMPTY.eta(3, 7, 4, p), 7);
    }

    #[test]
    fn an_older_timestamp_after_forgetting_waits_out_the_shadow() {
        // One per second: a call from the future forgets the old batch; a call timed between
        // them must not pass on the forgotten history's account.
        let mut w = Window::EMPTY;
        let p = SEC as u64;
        for t in 0..BATCHES as Micros {
            assert!(take(&mut w, 1, t * SEC, 1, p));
        }
        assert!(take(&mut w, 1, 100 * SEC, 1, p)); // forgets the batch at 0
        assert_eq!(w.room_at(1, SEC / 2, 1, p), Some(100 * SEC + SEC));
    }

    fn arb_period() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(1_000u64),
            Just(SEC as u64),
            Just(MIN),
            1_000u64..5_000_000
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// The window bound itself: no half-open window of the period holds more than the
        /// count, for timestamps in order.
        #[test]
        fn every_window_holds_at_most_count(count in 1u64..40, period in arb_period(),
                steps in prop::collection::vec((0i64..400_000, 1u64..5), 1..400)) {
            let mut w = Window::EMPTY;
            let mut t = 0;
            let mut ev = vec![];
            for (dt, cost) in steps {
                t += dt;
                if take(&mut w, cost, t, count, period) { ev.push((t, cost)); }
            }
            prop_assert!(worst_window(&ev, period) <= count);
        }

        /// The same with timestamps in any order (clock quirks, explicit `ts`).
        #[test]
        fn every_window_holds_at_most_count_in_any_order(count in 1u64..20, period in arb_period(),
                steps in prop::collection::vec((0i64..6_000_000, 1u64..4), 1..300)) {
            let mut w = Window::EMPTY;
            let mut ev = vec![];
            for (t, cost) in steps {
                if take(&mut w, cost, t, count, period) { ev.push((t, cost)); }
                let kept: u64 = (0..w.len as usize).map(|i| w.cost[w.idx(i)] as u64).sum();
                prop_assert_eq!(w.total, kept);
            }
            prop_assert!(worst_window(&ev, period) <= count);
        }

        /// Full speed: a backlog (a call every `dt`, taking all that fits) gets at least
        /// 98 % of what an exact log of every release would let through at the same calls
        /// (the batches cost at most that), and the whole count in the first period.
        #[test]
        fn a_backlog_sustains_the_rate(count in 1u64..5000, period in arb_period(), ticks in 1i64..200,
                                       cost in 1u64..4) {
            let dt = (period as i64 / ticks).max(1);
            let end = 20 * period as i64;
            let mut w = Window::EMPTY;
            let mut log: std::collections::VecDeque<(Micros, u64)> = Default::default();
            let mut in_log = 0u64;
            let (mut released, mut exact, mut first) = (0u64, 0u64, 0u64);
            let mut t = 0;
            while t < end {
                while take(&mut w, cost, t, count, period) {
                    released += cost;
                    if t < period as i64 { first += cost; }
                }
                while log.front().is_some_and(|e| e.0 <= t - period as i64) {
                    in_log -= log.pop_front().map_or(0, |e| e.1);
                }
                while in_log + cost <= count {
                    log.push_back((t, cost));
                    in_log += cost;
                    exact += cost;
                }
                t += dt;
            }
            prop_assert_eq!(first, count / cost * cost);
            prop_assert!(released * 100 >= exact * 98, "released {} where an exact log gives {}", released, exact);
        }

        /// The time a refusal names is the first instant the same call passes.
        #[test]
        fn room_at_is_exact(count in 1u64..30, period in arb_period(),
                pre in prop::collection::vec((0i64..2_000_000, 1u64..4), 0..60), cost in 1u64..5, t in 0i64..4_000_000) {
            let mut w = Window::EMPTY;
            for (at, c) in pre { take(&mut w, c, at, count, period); }
            match w.room_at(cost, t, count, period) {
                None => prop_assert!(cost > count),
                Some(at) => {
                    prop_assert!(at >= t);
                    prop_assert_eq!(w.room_at(cost, at, count, period), Some(at));
                    if at > t {
                        prop_assert_ne!(w.room_at(cost, at - 1, count, period), Some(at - 1));
                    }
                }
            }
        }
    }
}
