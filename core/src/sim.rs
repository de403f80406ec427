//! A simulated release engine for the tests: queues of rows, rate limits and calendar caps,
//! run tick by tick through the decisions the worker makes ([`tick::take`],
//! [`tick::release`], [`tick::settle`]), with the tables and shared memory as maps.

use crate::calendar::Calendar;
use crate::cap::{CapRule, Ledger};
use crate::contact;
use crate::schedule::{Row, Scheduler, Verdict};
use crate::tick::{self, AtCap, Buckets, Budget, Cap, CapWindow, DueQueue, Ledgers, Never};
use crate::{admit, Bucket, Check, LimitRef, Micros, Outcome};
use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;

pub const SEC: Micros = 1_000_000;

#[derive(Clone, Debug)]
pub struct SimCap {
    pub id: i64,
    pub cal: Calendar,
    pub rule: CapRule,
    pub action: AtCap,
}

impl Cap for SimCap {
    fn id(&self) -> i64 {
        self.id
    }
    fn action(&self) -> AtCap {
        self.action
    }
    fn calendar(&self) -> &Calendar {
        &self.cal
    }
    fn rule(&self) -> &CapRule {
        &self.rule
    }
}

/// Rate limits as a map of buckets; a queue's plan is its key.
#[derive(Default)]
pub struct SimBuckets {
    pub limits_of: HashMap<u32, Vec<i64>>,
    pub buckets: HashMap<i64, Bucket>,
    /// How many queues use each limit: one that only one uses is that queue's own.
    users: HashMap<i64, usize>,
}

/// Tokens a bucket has now, and when it will have one more.
pub fn room_of(b: &Bucket, now: Micros) -> (u64, Micros) {
    let k = b.available(now);
    let next = match b.check(k + 1, now) {
        Check::Wait { at } => at,
        _ => now + (b.rate.period_us / b.rate.count) as Micros,
    };
    (k, next)
}

impl Buckets for SimBuckets {
    type Plan = u32;

    fn shared(&self, q: &u32) -> Vec<LimitRef> {
        self.limits_of[q]
            .iter()
            .filter(|l| self.users.get(l).copied().unwrap_or(0) > 1)
            .map(|&l| LimitRef::Rate(l))
            .collect()
    }

    fn room(&mut self, q: &u32, now: Micros) -> (u64, LimitRef, Micros) {
        let fewest = self.limits_of[q]
            .iter()
            .map(|l| (self.buckets[l].available(now), *l))
            .min();
        match fewest {
            Some((k, l)) => (k, LimitRef::Rate(l), room_of(&self.buckets[&l], now).1),
            None => (u64::MAX, LimitRef::Memory, now),
        }
    }

    fn admit(&mut self, q: &u32, cost: u64, now: Micros) -> Verdict {
        let ids = &self.limits_of[q];
        let mut bs: Vec<Bucket> = ids.iter().map(|l| self.buckets[l]).collect();
        match admit(&mut bs, cost, now) {
            Outcome::Admitted { .. } => {
                for (l, nb) in ids.iter().zip(bs) {
                    self.buckets.insert(*l, nb);
                }
                Verdict::Admitted
            }
            Outcome::Refused {
                blocker,
                retry_at: Some(t),
                ..
            } => Verdict::Blocked {
                limit: LimitRef::Rate(ids[blocker]),
                until: t,
            },
            Outcome::Refused { blocker, .. } => Verdict::Never {
                limit: LimitRef::Rate(ids[blocker]),
            },
        }
    }
}

pub struct Sim {
    pub sched: Scheduler<u32>,
    pub pending: BTreeMap<u32, VecDeque<Row>>,
    /// Rows held until a time (a `defer_local` cap).
    pub not_before: HashMap<i64, Micros>,
    pub limits: SimBuckets,
    pub caps_of: HashMap<u32, Vec<SimCap>>,
    pub weight_of: HashMap<u32, u32>,
    /// What the cap_usage table holds: (cap, window start) → usage.
    pub usage: HashMap<(i64, Micros), Ledger>,
    /// (time, queue, row) of every release.
    pub released: Vec<(Micros, u32, Row)>,
    /// (time, queue, id, why) of every row dead-lettered.
    pub dead: Vec<(Micros, u32, i64, Never)>,
    pub fetched: usize,
    pub next_id: i64,
    /// Conversation rules per queue (the queue stands for its line).
    pub rules_of: HashMap<u32, Rc<[contact::Rule]>>,
    /// Each row's recipient.
    pub recipient: HashMap<i64, u32>,
    /// What the contact tables hold: (line, recipient) → state, and each line's streak.
    pub contacts: HashMap<(u32, u32), contact::Contact>,
    pub lines: HashMap<u32, contact::Line>,
}

/// The not_before of a row held until its recipient writes.
pub const UNTIL_REPLY: Micros = Micros::MAX / 2;

impl Default for Sim {
    fn default() -> Self {
        Self::new()
    }
}

impl Sim {
    pub fn new() -> Sim {
        Sim {
            sched: Scheduler::new(),
            pending: BTreeMap::new(),
            not_before: HashMap::new(),
            limits: SimBuckets::default(),
            caps_of: HashMap::new(),
            weight_of: HashMap::new(),
            usage: HashMap::new(),
            released: vec![],
            dead: vec![],
            fetched: 0,
            next_id: 1,
            rules_of: HashMap::new(),
            recipient: HashMap::new(),
            contacts: HashMap::new(),
            lines: HashMap::new(),
        }
    }

    pub fn limit(&mut self, id: i64, r: crate::Rate) {
        self.limits.buckets.insert(id, Bucket::full_at(r, 0));
    }

    pub fn enqueue(&mut self, q: u32, limits: &[i64], n: usize, priority: i16, now: Micros) {
        self.enqueue_cost(q, limits, n, priority, 1, now);
    }

    pub fn enqueue_cost(
        &mut self,
        q: u32,
        limits: &[i64],
        n: usize,
        priority: i16,
        cost: u64,
        now: Micros,
    ) {
        if !self.limits.limits_of.contains_key(&q) {
            for l in limits {
                *self.limits.users.entry(*l).or_default() += 1;
            }
            self.limits.limits_of.insert(q, limits.to_vec());
        }
        let rows = self.pending.entry(q).or_default();
        for _ in 0..n {
            rows.push_back(Row {
                id: self.next_id,
                priority,
                cost,
            });
            self.next_id += 1;
        }
        // Keep each queue in its fetch order: priority desc, id.
        rows.make_contiguous()
            .sort_by_key(|r| (Reverse(r.priority), r.id));
        self.sched.touch(&q, now);
    }

    fn due_now(&self, row: &Row, now: Micros) -> bool {
        self.not_before.get(&row.id).is_none_or(|&t| t <= now)
    }

    /// One tick, as the worker runs it: due queues, their caps' windows read, what to
    /// take, the head rows fetched, released, written back, and the short queues settled.
    pub fn tick(&mut self, now: Micros, max_queues: usize, per_queue: u64) {
        let buckets = &self.limits.buckets;
        let due = self.sched.due(now, max_queues, |l| match l {
            LimitRef::Rate(id) => room_of(&buckets[&id], now),
            _ => (1, now),
        });
        let mut ledgers: Ledgers<SimCap> = HashMap::new();
        let mut queues = Vec::new();
        for (q, woken_by) in due {
            let key = *self.sched.key(q);
            let caps = self.caps_of.get(&key).cloned().unwrap_or_default();
            for cap in &caps {
                let start = cap.cal.window_start(now);
                let read = self.usage.get(&(cap.id, start)).copied();
                let (used, leased) = read.map_or((0, 0), |l| (l.used, l.leased));
                let window = (start, cap.cal.window_end(now));
                ledgers.insert(
                    (cap.id, start),
                    CapWindow::read(cap.clone(), window, used, leased),
                );
            }
            let weight = self.weight_of.get(&key).copied().unwrap_or(1);
            queues.push(DueQueue {
                q,
                woken_by,
                found: Some((key, caps, weight)),
            });
        }
        let budget = Budget {
            rows: 10_000,
            per_queue,
        };
        let take = tick::take(
            &mut self.sched,
            queues,
            &ledgers,
            &mut self.limits,
            budget,
            now,
        );
        let mut batches = vec![];
        for t in &take.taken {
            let rows: Vec<Row> = self.pending[&t.plan]
                .iter()
                .filter(|r| self.due_now(r, now))
                .take(t.n as usize)
                .copied()
                .collect();
            self.fetched += rows.len();
            batches.push(rows);
        }
        let plans: Vec<u32> = take.taken.iter().map(|t| t.plan).collect();
        let queue_of = |q: crate::schedule::QueueId, s: &Scheduler<u32>| *s.key(q);
        let (mut convo, keys) = self.read_convo(&plans, &batches, now);
        let r = tick::release(
            &mut self.sched,
            take,
            &batches,
            &mut ledgers,
            &mut self.limits,
            &mut convo,
            now,
        );
        self.write_convo(&convo, &keys, &plans);
        let by_id: HashMap<i64, (u32, Row)> = batches
            .iter()
            .zip(&plans)
            .flat_map(|(b, &k)| b.iter().map(move |row| (row.id, (k, *row))))
            .collect();
        for id in &r.admitted {
            let (key, row) = by_id[id];
            self.released.push((now, key, row));
            self.remove(key, *id);
        }
        for (id, why) in &r.dead {
            let (key, _) = by_id[id];
            self.dead.push((now, key, *id, *why));
            self.remove(key, *id);
        }
        for w in ledgers.values().filter(|w| w.dirty()) {
            self.usage
                .insert((w.cap.id, w.ledger.window_start), w.ledger);
        }
        for h in &r.hold {
            let key = queue_of(h.q, &self.sched);
            let ids: Vec<i64> = self.pending[&key]
                .iter()
                .filter(|row| self.due_now(row, now))
                .map(|row| row.id)
                .collect();
            for id in ids {
                self.not_before.insert(id, h.until);
            }
        }
        let next: Vec<Option<Micros>> = r
            .short
            .iter()
            .map(|&q| self.next_due(*self.sched.key(q), now))
            .collect();
        tick::settle(&mut self.sched, &r.short, &next, now);
    }

    /// The conversation state of a tick's queues and rows, as the worker reads it (the
    /// contact caps' use counted from the contacts' counts, like its statement does).
    fn read_convo(
        &self,
        plans: &[u32],
        batches: &[Vec<Row>],
        now: Micros,
    ) -> (contact::Tick, Vec<(u32, u32)>) {
        let mut t = contact::Tick::default();
        let mut keys: Vec<(u32, u32)> = vec![];
        let mut line_at: HashMap<u32, usize> = HashMap::new();
        for (b, &line) in plans.iter().enumerate() {
            let Some(rules) = self.rules_of.get(&line) else {
                t.queues.push(None);
                continue;
            };
            let li = *line_at.entry(line).or_insert_with(|| {
                let mut l = self.lines.get(&line).cloned().unwrap_or_default();
                l.dirty = false;
                l.used = rules
                    .iter()
                    .map(|r| match r.kind.counted_as() {
                        None => (0, None),
                        Some(k) => {
                            let start = r.window.start(now);
                            let at: Vec<Micros> = self
                                .contacts
                                .iter()
                                .filter(|((l2, _), c)| *l2 == line)
                                .filter_map(|(_, c)| c.counted)
                                .filter(|&(kind, at)| kind == k && at >= start)
                                .map(|(_, at)| at)
                                .collect();
                            (at.len() as u32, at.iter().min().copied())
                        }
                    })
                    .collect();
                t.lines.push((rules.clone(), l));
                t.lines.len() - 1
            });
            t.queues.push(Some((li, "sms".to_string())));
            for row in &batches[b] {
                let to = self.recipient[&row.id];
                let ci = match keys.iter().position(|&k| k == (line, to)) {
                    Some(ci) => ci,
                    None => {
                        keys.push((line, to));
                        let mut c = self.contacts.get(&(line, to)).cloned().unwrap_or_default();
                        c.dirty = false;
                        t.contacts.push(c);
                        keys.len() - 1
                    }
                };
                t.rows.insert(row.id, Some(ci));
            }
        }
        (t, keys)
    }

    /// What the worker writes back: the counted state and the holds.
    fn write_convo(&mut self, t: &contact::Tick, keys: &[(u32, u32)], plans: &[u32]) {
        for (ci, c) in t.contacts.iter().enumerate() {
            if c.dirty {
                self.contacts.insert(keys[ci], c.clone());
            }
        }
        for (b, q) in t.queues.iter().enumerate() {
            if let Some((li, _)) = q {
                let (_, l) = &t.lines[*li];
                if l.dirty {
                    self.lines.insert(plans[b], l.clone());
                }
            }
        }
        for &(id, _, until) in &t.held {
            self.not_before.insert(id, until.unwrap_or(UNTIL_REPLY));
        }
    }

    /// An inbound message from `contact` to `line` at `at`: it is recorded, and the rows held
    /// for a reply (the contact's, and the line's streak) go back to their queue.
    pub fn inbound(&mut self, line: u32, contact: u32, at: Micros) {
        let c = self.contacts.entry((line, contact)).or_default();
        c.last_inbound = Some(c.last_inbound.map_or(at, |t| t.max(at)));
        let l = self.lines.entry(line).or_default();
        l.last_inbound = Some(l.last_inbound.map_or(at, |t| t.max(at)));
        let held: Vec<i64> = self
            .pending
            .get(&line)
            .into_iter()
            .flatten()
            .map(|r| r.id)
            .filter(|id| self.not_before.get(id) == Some(&UNTIL_REPLY))
            .collect();
        for id in held {
            self.not_before.remove(&id);
        }
        self.sched.touch(&line, at);
    }

    fn remove(&mut self, key: u32, id: i64) {
        let p = self.pending.get_mut(&key).expect("queue");
        let pos = p.iter().position(|x| x.id == id).expect("row");
        p.remove(pos);
        self.not_before.remove(&id);
    }

    /// When the next row of a queue is due (now if one is), as the worker asks the table.
    fn next_due(&self, key: u32, now: Micros) -> Option<Micros> {
        self.pending[&key]
            .iter()
            .map(|r| self.not_before.get(&r.id).copied().unwrap_or(now).max(now))
            .min()
    }

    /// Run from `from` to `to`, waking exactly when the scheduler asks.
    pub fn run(&mut self, from: Micros, to: Micros) {
        let mut now = from;
        while now <= to {
            self.tick(now, 1000, 100);
            now = match self.sched.next_wake() {
                Some(t) => t.max(now + 1),
                None => break,
            };
        }
    }

    /// Release times of queue `key`.
    pub fn times(&self, key: u32) -> Vec<Micros> {
        self.released
            .iter()
            .filter(|r| r.1 == key)
            .map(|r| r.0)
            .collect()
    }

    pub fn count(&self, key: u32) -> usize {
        self.released.iter().filter(|(_, k, _)| *k == key).count()
    }
}

/// A GCRA replay of releases (time, cost) against a token bucket: no run of releases beats
/// it (n units over a span w need n × period ≤ burst × period + count × w).
pub fn assert_gcra(mut ev: Vec<(Micros, u64)>, r: crate::Rate) {
    ev.sort();
    let (count, period, burst) = (r.count as i128, r.period_us as i128, r.burst as i128);
    let mut tat: i128 = i128::MIN / 4;
    for (t, cost) in ev {
        let now = t as i128 * count;
        tat = tat.max(now) + cost as i128 * period;
        assert!(tat <= now + burst * period, "over the bucket at {t}");
    }
}

/// The most cost any half-open window of `period` holds.
pub fn worst_window(mut ev: Vec<(Micros, u64)>, period: Micros) -> u64 {
    ev.sort();
    let mut worst = 0;
    let mut sum = 0u64;
    let mut lo = 0;
    for hi in 0..ev.len() {
        sum += ev[hi].1;
        while ev[hi].0 - ev[lo].0 >= period {
            sum -= ev[lo].1;
            lo += 1;
        }
        worst = worst.max(sum);
    }
    worst
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rate;

    fn rate(count: u64, period_us: u64, burst: u64) -> Rate {
        Rate::new(count, period_us, burst).expect("valid rate")
    }

    #[test]
    fn releases_at_exactly_the_rate() {
        let mut s = Sim::new();
        s.limit(1, rate(1, SEC as u64, 1));
        s.enqueue(7, &[1], 10, 0, 0);
        s.run(0, 60 * SEC);
        let times: Vec<Micros> = s.released.iter().map(|r| r.0).collect();
        assert_eq!(times, (0..10).map(|i| i * SEC).collect::<Vec<_>>());
    }

    #[test]
    fn group_limit_is_shared_fairly_and_work_follows_releases() {
        // 1,000 lines at 1/s under one campaign limit of 4,500/min (75/s): 60 s of backlog.
        let mut s = Sim::new();
        s.limit(-1, rate(4500, 60 * SEC as u64, 4500));
        for q in 0..1000u32 {
            s.limit(q as i64 + 1, rate(1, SEC as u64, 1));
            s.enqueue(q, &[q as i64 + 1, -1], 60, 0, 0);
        }
        s.run(0, 60 * SEC - 1);
        let total = s.released.len();
        // Burst of 4,500 at t=0 (then every line's own 1/s holds), then 75/s: the
        // theoretical maximum over [0, 60 s) is 4,500 + 75 × 60 - rounding.
        let max = 4500 + 75 * 60;
        assert!(
            total <= max && total >= max - 80,
            "released {total} of {max}"
        );
        let times: Vec<Micros> = s.released.iter().map(|r| r.0).collect();
        assert_gcra(
            times.iter().map(|&t| (t, 1)).collect(),
            rate(4500, 60 * SEC as u64, 4500),
        );
        for q in 0..1000u32 {
            assert_gcra(
                s.times(q).into_iter().map(|t| (t, 1)).collect(),
                rate(1, SEC as u64, 1),
            );
        }
        // Fair: every line got a share within a few messages of the others.
        let counts: Vec<usize> = (0..1000).map(|q| s.count(q)).collect();
        let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(hi - lo <= 2, "shares between {lo} and {hi}");
        // Work: rows fetched are the rows released (nothing fetched just to be refused).
        assert!(
            s.fetched <= total + 1000,
            "fetched {} for {total} releases",
            s.fetched
        );
    }

    #[test]
    fn two_short_codes_share_an_account_limit_by_segments() {
        // 100 segments/s for the account, 2-segment messages from two short codes with big
        // backlogs: 50 segments/s each (the case that used to give 428 messages and 25).
        let mut s = Sim::new();
        s.limit(-1, window(100, SEC as u64));
        s.limit(1, window(100, SEC as u64));
        s.limit(2, window(100, SEC as u64));
        s.enqueue_cost(1, &[1, -1], 5_000, 0, 2, 0);
        s.enqueue_cost(2, &[2, -1], 5_000, 0, 2, 0);
        s.run(0, 10 * SEC - 1);
        for q in [1, 2] {
            let per_s = cost_of(&s, q, 0, 10 * SEC) as f64 / 10.0;
            assert!(
                (45.0..=55.0).contains(&per_s),
                "queue {q}: {per_s} segments/s"
            );
        }
        // And the account never saw more than 100 segments in any second.
        let mut ev: Vec<(Micros, u64)> = s.released.iter().map(|r| (r.0, r.2.cost)).collect();
        ev.sort();
        for i in 0..ev.len() {
            let sum: u64 = ev[i..]
                .iter()
                .take_while(|e| e.0 < ev[i].0 + SEC)
                .map(|e| e.1)
                .sum();
            assert!(sum <= 100, "{sum} segments in the second from {}", ev[i].0);
        }
    }

    #[test]
    fn weights_give_proportional_shares() {
        let mut s = Sim::new();
        s.limit(-1, window(90, SEC as u64));
        for q in 1..=2u32 {
            s.limit(q as i64, window(1000, SEC as u64));
            s.enqueue_cost(q, &[q as i64, -1], 2_000, 0, 1, 0);
        }
        s.weight_of.insert(2, 2);
        s.run(0, 10 * SEC - 1);
        let (a, b) = (cost_of(&s, 1, 0, 10 * SEC), cost_of(&s, 2, 0, 10 * SEC));
        assert!(
            (b as f64 / a as f64 - 2.0).abs() < 0.15,
            "weight 2 got {b}, weight 1 got {a}"
        );
    }

    #[test]
    fn a_big_queue_does_not_starve_a_small_one() {
        let mut s = Sim::new();
        s.limit(-1, rate(10, SEC as u64, 10));
        s.limit(1, rate(1000, SEC as u64, 1000));
        s.limit(2, rate(1000, SEC as u64, 1000));
        s.enqueue(1, &[1, -1], 100_000, 0, 0);
        s.run(0, SEC - 1);
        s.enqueue(2, &[2, -1], 10, 0, SEC);
        s.run(SEC, 3 * SEC);
        // The small queue's 10 went within 2 s although the big one had ~100k waiting.
        assert_eq!(s.count(2), 10);
    }

    #[test]
    fn priority_passes_a_blast_in_the_same_group() {
        let mut s = Sim::new();
        s.limit(-1, rate(10, SEC as u64, 10));
        s.limit(1, rate(1000, SEC as u64, 1000));
        s.limit(2, rate(1000, SEC as u64, 1000));
        s.enqueue(1, &[1, -1], 1000, 0, 0); // marketing blast
        s.run(0, SEC / 2 - 1);
        s.enqueue(2, &[2, -1], 1, 10, SEC / 2); // an OTP
        s.enqueue(1, &[1, -1], 1, 10, SEC / 2); // an OTP behind the blast, same sender
        s.run(SEC / 2, 2 * SEC);
        let after: Vec<(u32, i16)> = s
            .released
            .iter()
            .filter(|r| r.0 >= SEC / 2)
            .map(|r| (r.1, r.2.priority))
            .take(2)
            .collect();
        assert!(
            after.iter().all(|(_, p)| *p == 10),
            "the OTPs went first: {after:?}"
        );
    }

    #[test]
    fn a_day_of_traffic_in_simulated_time() {
        // 50 lines at 1 per 6 s, a group of 5/s, new traffic every 10 s for a day.
        let mut s = Sim::new();
        s.limit(-1, rate(5, SEC as u64, 5));
        for q in 0..50u32 {
            s.limit(q as i64 + 1, rate(1, 6 * SEC as u64, 1));
        }
        let day = 86_400 * SEC;
        let mut t = 0;
        let mut enq = 0;
        while t < day {
            for q in (0..50u32).filter(|q| (t / (10 * SEC)) as u32 % 7 == q % 7) {
                s.enqueue(q, &[q as i64 + 1, -1], 1, 0, t);
                enq += 1;
            }
            s.run(t, t + 10 * SEC - 1);
            t += 10 * SEC;
        }
        s.run(day, day + 3600 * SEC);
        assert_eq!(s.released.len(), enq, "everything went, nothing twice");
        let mut ids: Vec<i64> = s.released.iter().map(|r| r.2.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), enq);
        for q in 0..50u32 {
            assert_gcra(
                s.times(q).into_iter().map(|t| (t, 1)).collect(),
                rate(1, 6 * SEC as u64, 1),
            );
        }
    }

    fn window(count: u64, period_us: u64) -> Rate {
        Rate::window(count, period_us).expect("valid rate")
    }

    /// Each queue's released cost in [from, to).
    fn cost_of(s: &Sim, q: u32, from: Micros, to: Micros) -> u64 {
        s.released
            .iter()
            .filter(|r| r.1 == q && r.0 >= from && r.0 < to)
            .map(|r| r.2.cost)
            .sum()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(40))]

        /// Any mix of costs 1–10 and backlogs: queues sharing a limit get near-equal cost
        /// (Jain's index ≥ 0.99 over whole seconds), and the limit is used to the full.
        #[test]
        fn shares_are_fair_for_any_mix_of_costs(costs in proptest::collection::vec(1u64..=10, 2..6),
                                                 rate in 50u64..400) {
            let mut s = Sim::new();
            s.limit(-1, window(rate, SEC as u64));
            for (i, &c) in costs.iter().enumerate() {
                let q = i as u32 + 1;
                s.limit(q as i64, window(100_000, SEC as u64));
                s.enqueue_cost(q, &[q as i64, -1], (rate as usize * 30 / c as usize) + 10, 0, c, 0);
            }
            s.run(0, 20 * SEC - 1);
            let shares: Vec<f64> = (1..=costs.len() as u32).map(|q| cost_of(&s, q, 0, 20 * SEC) as f64).collect();
            let sum: f64 = shares.iter().sum();
            let sq: f64 = shares.iter().map(|x| x * x).sum();
            let jain = sum * sum / (shares.len() as f64 * sq);
            proptest::prop_assert!(jain >= 0.99, "shares {:?}: jain {}", shares, jain);
            // Work-conserving: at most one message's cost per second short of the rate.
            let max_cost = *costs.iter().max().unwrap_or(&1);
            proptest::prop_assert!(sum >= ((rate - max_cost) * 20) as f64, "released {} of {}", sum, rate * 20);
        }
    }

    /// A day of mixed traffic over every kind of limit, through the worker's decisions in
    /// simulated time: per-line token buckets, a window-exact group limit shared by weight,
    /// daily calendar caps that defer, hold until a local time and refuse, 1- and
    /// 2-segment messages, priorities, and a blast at noon. Asserted: no limit is ever
    /// exceeded (checked by window counts and a bucket replay, not by the limiter's own
    /// math), nothing goes twice or is lost, the group is shared by weight and used to the
    /// full while there is a backlog.
    #[test]
    fn a_day_of_mixed_traffic_over_every_limit_kind() {
        use crate::calendar::{Calendar, Period};
        use chrono::NaiveTime;
        let cal = Calendar {
            period: Period::Day,
            reset: NaiveTime::MIN,
            tz: chrono_tz::America::Los_Angeles,
        };
        let rule = |cap| CapRule {
            cap,
            overage_pct: 0,
            warn_at: vec![],
        };
        let group = window(5, SEC as u64);
        let line = rate(1, SEC as u64, 2);
        let mut s = Sim::new();
        s.limit(-1, group);
        let caps = [
            (100, 2_000, AtCap::Defer, 10..15u32),
            (101, 1_000, AtCap::DeferLocal, 15..18),
            (102, 500, AtCap::Refuse, 18..20),
        ];
        for q in 0..20u32 {
            s.limit(q as i64 + 1, line);
            if q < 5 {
                s.weight_of.insert(q, 2);
            }
        }
        for (id, cap, action, qs) in caps.clone() {
            for q in qs {
                s.caps_of.entry(q).or_default().push(SimCap {
                    id,
                    cal,
                    rule: rule(cap),
                    action,
                });
            }
        }
        // 2026-11-22 00:00 in Los Angeles, in PostgreSQL µs.
        let start: Micros = 817_027_200 * SEC;
        let day = 86_400 * SEC;
        let noon = start + day / 2;
        let mut enq = 0usize;
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut t = start;
        while t < start + day {
            for q in 0..20u32 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let n = (seed % 4) as usize;
                let cost = 1 + (seed >> 8) % 2;
                let priority = if (seed >> 16) % 50 == 0 { 10 } else { 0 };
                s.enqueue_cost(q, &[q as i64 + 1, -1], n, priority, cost, t);
                enq += n;
            }
            if t == noon {
                for q in 0..10u32 {
                    s.enqueue_cost(q, &[q as i64 + 1, -1], 600, 0, 1, t);
                    enq += 600;
                }
            }
            s.run(t, t + 60 * SEC - 1);
            t += 60 * SEC;
        }
        s.run(t, t + 2 * day);

        // Nothing twice, nothing lost.
        let mut ids: Vec<i64> = s.released.iter().map(|r| r.2.id).collect();
        ids.extend(s.dead.iter().map(|d| d.2));
        let left: usize = s.pending.values().map(|p| p.len()).sum();
        ids.sort();
        ids.dedup();
        assert_eq!(
            ids.len() + left,
            enq,
            "released + dead + waiting = enqueued"
        );
        assert_eq!(ids.len(), s.released.len() + s.dead.len());

        // Every limit held: the group in every half-open second, each line's bucket.
        let all: Vec<(Micros, u64)> = s.released.iter().map(|r| (r.0, r.2.cost)).collect();
        assert!(worst_window(all, SEC) <= 5, "the group's second");
        for q in 0..20u32 {
            let ev = s
                .released
                .iter()
                .filter(|r| r.1 == q)
                .map(|r| (r.0, r.2.cost))
                .collect();
            assert_gcra(ev, line);
        }
        // Every cap held in every window; only the refusing cap dead-lettered anything.
        for (id, cap, action, qs) in caps {
            let mut per_window: HashMap<Micros, u64> = HashMap::new();
            for r in s.released.iter().filter(|r| qs.contains(&r.1)) {
                *per_window.entry(cal.window_start(r.0)).or_default() += r.2.cost;
            }
            let worst = per_window.values().copied().max().unwrap_or(0);
            assert!(worst <= cap, "cap {id}: {worst} in a day");
            assert!(worst >= cap - 1, "cap {id} was used to the full: {worst}");
            let dead = s.dead.iter().filter(|d| qs.contains(&d.1)).count();
            assert_eq!(dead > 0, action == AtCap::Refuse, "cap {id}: {dead} dead");
        }
        assert!(s.dead.iter().all(|d| d.3 == Never::Refused { cap: 102 }));

        // The noon blast: the group is used to the full, and shared 2:1 by weight.
        let (from, to) = (noon + 60 * SEC, noon + 600 * SEC);
        let busy: u64 = s
            .released
            .iter()
            .filter(|r| r.0 >= from && r.0 < to)
            .map(|r| r.2.cost)
            .sum();
        assert!(
            busy >= 5 * 540 - 5,
            "the group gave {busy} of {} in the blast",
            5 * 540
        );
        let share = |qs: std::ops::Range<u32>| cost_in(&s, qs, from, to) as f64;
        let ratio = share(0..5) / share(5..10);
        assert!((ratio - 2.0).abs() < 0.2, "weight 2 : weight 1 = {ratio}");
        let shares: Vec<f64> = (5..10)
            .map(|q| cost_in(&s, q..q + 1, from, to) as f64)
            .collect();
        let (sum, sq): (f64, f64) = (shares.iter().sum(), shares.iter().map(|x| x * x).sum());
        assert!(
            sum * sum / (5.0 * sq) >= 0.99,
            "equal weights, equal shares: {shares:?}"
        );
    }

    fn cost_in(s: &Sim, qs: std::ops::Range<u32>, from: Micros, to: Micros) -> u64 {
        s.released
            .iter()
            .filter(|r| qs.contains(&r.1) && r.0 >= from && r.0 < to)
            .map(|r| r.2.cost)
            .sum()
    }

    /// A tick that finds the configuration changed after it read releases nothing: every
    /// queue it took is due again at once, and no bucket was debited.
    #[test]
    fn an_abandoned_tick_releases_nothing_and_leaves_every_queue_due() {
        let mut s = Sim::new();
        s.limit(1, rate(10, SEC as u64, 10));
        s.enqueue(1, &[1], 5, 0, 0);
        s.enqueue(2, &[1], 5, 0, 0);
        let due = s.sched.due(0, 10, |_| (1, 0));
        let queues = due
            .into_iter()
            .map(|(q, woken_by)| DueQueue {
                q,
                woken_by,
                found: Some((*s.sched.key(q), Vec::<SimCap>::new(), 1)),
            })
            .collect();
        let budget = Budget {
            rows: 100,
            per_queue: 10,
        };
        let ledgers = Ledgers::new();
        let take = tick::take(&mut s.sched, queues, &ledgers, &mut s.limits, budget, 0);
        assert_eq!(take.taken.len(), 2);
        tick::abandon(&mut s.sched, take);
        assert!(
            s.sched.next_wake().is_some_and(|t| t <= 0),
            "due again at once"
        );
        assert_eq!(s.limits.buckets[&1].available(0), 10, "nothing debited");
        s.run(0, SEC);
        assert_eq!(s.released.len(), 10, "and the next ticks release them");
    }

    /// Two days of two lines with conversation rules, run through the worker's take, release
    /// and settle: an iMessage line (5 new and 3 follow-up contacts a day from 03:00 New
    /// York, 2 messages without a reply) and a WhatsApp line (1 message per 6 s to a
    /// recipient), with inbound messages along the way. Judged from the event log alone:
    /// no rule is ever exceeded, nothing is lost or sent twice, and what waits, waits for a
    /// reply.
    #[test]
    fn two_days_of_conversations_keep_every_contact_rule() {
        use crate::contact::{AtLimit, Kind, Rule, Window};
        const HOUR: Micros = 3600 * SEC;
        let ny = Calendar {
            period: crate::calendar::Period::Day,
            reset: chrono::NaiveTime::from_hms_opt(3, 0, 0).unwrap(),
            tz: chrono_tz::America::New_York,
        };
        let rule = |id, kind, max, window| Rule {
            id,
            kind,
            max,
            window,
            reply_window: 24 * HOUR,
            at_limit: AtLimit::Hold,
            channel: None,
        };
        let mut s = Sim::new();
        s.limit(1, rate(1, SEC as u64, 1));
        s.limit(2, rate(20, SEC as u64, 20));
        s.rules_of.insert(
            1,
            Rc::from(vec![
                rule(11, Kind::NewContacts, 5, Window::Calendar(ny)),
                rule(12, Kind::FollowUpContacts, 3, Window::Calendar(ny)),
                rule(13, Kind::Unanswered, 2, Window::Calendar(ny)),
            ]),
        );
        s.rules_of.insert(
            2,
            Rc::from(vec![rule(21, Kind::PairRate, 1, Window::Rolling(6 * SEC))]),
        );
        // 2026-12-02 10:00 New York.
        let t0 = crate::calendar::resolve_local(
            chrono_tz::America::New_York,
            chrono::NaiveDate::from_ymd_opt(2026, 12, 2)
                .unwrap()
                .and_hms_opt(10, 0, 0)
                .unwrap(),
        );
        // Inbound messages: (line, contact, at). Contact 0 wrote 2 h before (reply window),
        // 1 wrote 30 h before (a follow-up), 2 and 3 write during the run.
        let mut inbound = vec![
            (1u32, 0u32, t0 - 2 * HOUR),
            (1, 1, t0 - 30 * HOUR),
            (1, 2, t0 + 20 * 60 * SEC),
            (1, 3, t0 + 26 * HOUR),
            (1, 2, t0 + 30 * HOUR),
        ];
        inbound.sort_by_key(|e| e.2);
        let mut all: Vec<(i64, u32, u32)> = vec![];
        let mut enqueue = |s: &mut Sim, line: u32, to: u32, at: Micros| {
            s.enqueue(line, &[line as i64], 1, 0, at);
            let id = s.next_id - 1;
            s.recipient.insert(id, to);
            all.push((id, line, to));
        };
        for k in 0..60u32 {
            enqueue(&mut s, 1, k % 12, t0);
            enqueue(&mut s, 2, k % 4, t0);
        }
        for (line, to, at) in inbound.iter().copied().filter(|e| e.2 <= t0) {
            s.inbound(line, to, at);
        }
        let mut now = t0;
        for (line, to, at) in inbound.iter().copied().filter(|e| e.2 > t0) {
            s.run(now, at - 1);
            s.inbound(line, to, at);
            now = at;
        }
        s.run(now, t0 + 48 * HOUR);

        // Nothing lost or sent twice.
        let released: Vec<i64> = s.released.iter().map(|r| r.2.id).collect();
        let unique: std::collections::HashSet<i64> = released.iter().copied().collect();
        assert_eq!(unique.len(), released.len(), "sent twice");
        for &(id, line, _) in &all {
            let waiting = s.pending[&line].iter().any(|r| r.id == id);
            assert!(
                unique.contains(&id) != waiting,
                "row {id} lost or in two places"
            );
            if waiting {
                assert_eq!(
                    s.not_before.get(&id),
                    Some(&UNTIL_REPLY),
                    "row {id} waits for a reply"
                );
            }
        }
        // The pair rate: one message per 6 s to each recipient, in every window.
        for to in 0..4 {
            let times: Vec<Micros> = s
                .released
                .iter()
                .filter(|r| r.1 == 2 && s.recipient[&r.2.id] == to)
                .map(|r| r.0)
                .collect();
            assert_eq!(times.len(), 15);
            assert_eq!(
                worst_window(times.iter().map(|&t| (t, 1)).collect(), 6 * SEC),
                1
            );
        }
        // The iMessage line, judged from the log: the last inbound message before each send.
        let last_in = |to: u32, at: Micros| {
            inbound
                .iter()
                .filter(|e| e.1 == to && e.2 <= at)
                .map(|e| e.2)
                .max()
        };
        let mut per_day: HashMap<(Micros, &str), std::collections::HashSet<u32>> = HashMap::new();
        let mut streak: HashMap<u32, (Option<Micros>, u32)> = HashMap::new();
        for r in s.released.iter().filter(|r| r.1 == 1) {
            let (at, to) = (r.0, s.recipient[&r.2.id]);
            let last = last_in(to, at);
            let in_window = last.is_some_and(|t| at - t < 24 * HOUR);
            if !in_window {
                let kind = if last.is_none() { "new" } else { "follow_up" };
                per_day
                    .entry((ny.window_start(at), kind))
                    .or_default()
                    .insert(to);
                let e = streak.entry(to).or_insert((last, 0));
                if e.0 != last {
                    *e = (last, 0);
                }
                e.1 += 1;
                assert!(e.1 <= 2, "contact {to}: {} messages without a reply", e.1);
            }
        }
        for ((day, kind), who) in &per_day {
            let max = if *kind == "new" { 5 } else { 3 };
            assert!(who.len() <= max, "{kind} on day {day}: {}", who.len());
        }
        // Used to the full: 5 new contacts on each of the two days the run spans, contact 0
        // in its reply window got all five, and contact 2 went on after each reply.
        assert_eq!(
            per_day
                .iter()
                .filter(|((_, k), _)| *k == "new")
                .map(|(_, w)| w.len())
                .sum::<usize>(),
            10
        );
        let to = |c: u32| {
            s.released
                .iter()
                .filter(|r| r.1 == 1 && s.recipient[&r.2.id] == c)
                .count()
        };
        assert_eq!(to(0), 5);
        assert!(to(2) >= 4, "contact 2: {}", to(2));
    }
}
