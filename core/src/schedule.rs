//! The release scheduler: which queues to look at next, and in which order to release the
//! rows fetched from them. Pure: time is an argument, rows and limits are abstract.
//!
//! A queue is the pending rows of one (sender, carrier, channel). The scheduler never looks at
//! a queue that cannot release: a queue is *due* at a time, *waiting* on a limit that refused
//! it, *parked* (its sender is unknown), or *idle* (drained). Waiting queues form a FIFO per
//! limit; when the limit has room again, only as many queues are woken as it has tokens, so a
//! tick's work grows with what it releases, not with what waits.
//!
//! Queues that share a limit share it by *cost* (segments), in proportion to their weights:
//! start-time fair queueing. Each queue has a virtual finish tag that grows by cost / weight
//! with every row it releases; rows are tried in order of their start tags, and waiters on a
//! limit are woken lowest tag first. A queue that comes back after being idle starts at the
//! scheduler's virtual time: it gets its share from then on, no credit for the time away.

use super::{LimitRef, Micros};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::Hash;

pub type QueueId = u32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Item {
    Queue(QueueId, u64),
    Limit(LimitRef),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Due(Micros),
    Waiting(LimitRef),
    Running,
    Parked,
}

struct Queue<K> {
    key: K,
    state: State,
    /// Bumped at every reschedule: heap entries of an older epoch are stale.
    epoch: u64,
    /// Virtual finish tag: where this queue's next row starts, unless it lags behind the
    /// scheduler's virtual time.
    finish: u64,
    /// Its share of a limit it shares, relative to the others' (1 and up).
    weight: u32,
    /// It comes back from idle (new, or held by time rather than by a shared limit): its next
    /// row starts no earlier than the virtual time, so it has no credit for the time away.
    /// A queue that waited its turn on a shared limit keeps its tag: it was owed that turn.
    lift: bool,
}

/// Virtual time per unit of cost at weight 1.
const TAG_UNIT: u64 = 1 << 16;

#[derive(Default)]
struct LimitWait {
    /// (finish tag, arrival, queue, epoch): the least served first, then first come.
    queues: BinaryHeap<Reverse<(u64, u64, QueueId, u64)>>,
    wake: Option<Micros>,
}

/// What became of a queue after it ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Done {
    /// Nothing left to release.
    Drained,
    /// More rows may be releasable now.
    More,
    /// A limit refused it; it may have room at `until`.
    Blocked { limit: LimitRef, until: Micros },
    /// Its next row is not due before `until` (not-before, or a calendar reset).
    Deferred { until: Micros },
    /// It cannot be judged until the configuration changes (unknown sender).
    Parked,
}

pub struct Scheduler<K> {
    queues: Vec<Option<Queue<K>>>,
    free: Vec<QueueId>,
    by_key: HashMap<K, QueueId>,
    heap: BinaryHeap<Reverse<(Micros, u64, Item)>>,
    limits: HashMap<LimitRef, LimitWait>,
    seq: u64,
    /// Virtual time: the start tag of the last row released.
    vtime: u64,
    /// How late the last `due` ran its latest queue: now less the time it was due.
    late: Micros,
    /// Queues parked (their sender is unknown).
    parked_n: usize,
}

impl<K: Clone + Eq + Hash> Default for Scheduler<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Clone + Eq + Hash> Scheduler<K> {
    pub fn new() -> Self {
        Scheduler {
            queues: Vec::new(),
            free: Vec::new(),
            by_key: HashMap::new(),
            heap: BinaryHeap::new(),
            limits: HashMap::new(),
            seq: 0,
            vtime: 0,
            late: 0,
            parked_n: 0,
        }
    }

    /// Set a queue's weight (its share of a limit it shares, relative to the others').
    pub fn set_weight(&mut self, q: QueueId, weight: u32) {
        self.queue_mut(q).weight = weight.max(1);
    }

    /// Where the next row of `q` starts in virtual time.
    fn start_tag(&self, q: QueueId) -> u64 {
        let queue = self.queue(q);
        if queue.lift {
            queue.finish.max(self.vtime)
        } else {
            queue.finish
        }
    }

    /// The order to try the rows fetched from the queues `qs` in (one batch of rows each):
    /// higher priority first; within a priority, by start tag (each row starts where the
    /// queue's previous row would finish: cost / weight further on), so queues that share a
    /// limit get shares of its cost in proportion to their weights; ties in the order the
    /// queues were given. Each batch's rows must come in its own order (priority desc, id).
    /// `more[b]`: batch `b` is all that was fetched of a queue that may hold more; rows of
    /// other queues that would come after its next row are left for the next tick, so a queue
    /// of cheap rows is not outrun because its batch ended. Returns (batch, row) pairs.
    pub fn order(
        &self,
        qs: &[QueueId],
        batches: &[Vec<Row>],
        more: &[bool],
    ) -> Vec<(usize, usize)> {
        let mut order: Vec<(Reverse<i16>, u64, usize, usize)> = Vec::new();
        let mut cut: Option<(Reverse<i16>, u64)> = None;
        for (b, rows) in batches.iter().enumerate() {
            let weight = self.queue(qs[b]).weight.max(1) as u64;
            let mut tag = self.start_tag(qs[b]);
            for (r, row) in rows.iter().enumerate() {
                order.push((Reverse(row.priority), tag, b, r));
                tag = tag.saturating_add(row.cost.max(1) * TAG_UNIT / weight);
            }
            if let (true, Some(last)) = (more.get(b) == Some(&true), rows.last()) {
                let next = (Reverse(last.priority), tag);
                cut = Some(cut.map_or(next, |c| c.min(next)));
            }
        }
        if let Some(c) = cut {
            order.retain(|&(p, tag, _, _)| (p, tag) < c);
        }
        order.sort_unstable();
        order.into_iter().map(|(_, _, b, r)| (b, r)).collect()
    }

    /// `q` released a row of `cost`: its finish tag moves on by cost / weight.
    pub fn charge(&mut self, q: QueueId, cost: u64) {
        let start = self.start_tag(q);
        let weight = self.queue(q).weight.max(1) as u64;
        self.vtime = self.vtime.max(start);
        let queue = self.queue_mut(q);
        queue.finish = start.saturating_add(cost.max(1) * TAG_UNIT / weight);
        queue.lift = false;
    }

    /// Every queue that waits (on a limit or a time) becomes due now: the configuration
    /// changed, and what held them may hold them no longer. Parked queues stay parked: only
    /// `unpark` (their sender is known now) brings them back, so a crowd of rows for unknown
    /// senders costs nothing at a configuration change.
    pub fn wake_all(&mut self, now: Micros) {
        self.limits.clear();
        let held: Vec<QueueId> = self
            .queues
            .iter()
            .enumerate()
            .filter_map(|(i, q)| {
                q.as_ref()
                    .filter(|q| match q.state {
                        State::Due(at) => at > now,
                        State::Waiting(_) => true,
                        State::Running | State::Parked => false,
                    })
                    .map(|_| i as QueueId)
            })
            .collect();
        for q in held {
            self.schedule(q, now);
        }
    }

    /// A queue whose sender is known to be unknown: parked from the start, never due until
    /// `unpark`. A queue already known is left as it is.
    pub fn park_new(&mut self, key: &K) {
        if self.by_key.contains_key(key) {
            return;
        }
        let q = self.add(key);
        self.done(q, Done::Parked);
    }

    /// Whether the scheduler knows this queue (due, waiting, running or parked).
    pub fn knows(&self, key: &K) -> bool {
        self.by_key.contains_key(key)
    }

    /// Every parked queue.
    pub fn parked(&self) -> Vec<QueueId> {
        self.queues
            .iter()
            .enumerate()
            .filter(|(_, q)| q.as_ref().is_some_and(|q| q.state == State::Parked))
            .map(|(i, _)| i as QueueId)
            .collect()
    }

    /// A parked queue is due now (its sender became known).
    pub fn unpark(&mut self, q: QueueId, now: Micros) {
        if self
            .queues
            .get(q as usize)
            .and_then(|x| x.as_ref())
            .is_some_and(|x| x.state == State::Parked)
        {
            self.parked_n -= 1;
            self.schedule(q, now);
        }
    }

    /// How many queues are parked.
    pub fn parked_count(&self) -> usize {
        self.parked_n
    }

    /// How late the last `due` was for the latest queue it ran: its time less the time that
    /// queue (or the limit that woke it) was due. 0 when nothing ran.
    pub fn lateness(&self) -> Micros {
        self.late
    }

    /// Queues known (not drained).
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    pub fn key(&self, q: QueueId) -> &K {
        &self.queue(q).key
    }

    fn queue(&self, q: QueueId) -> &Queue<K> {
        self.queues[q as usize].as_ref().expect("live queue id")
    }

    fn queue_mut(&mut self, q: QueueId) -> &mut Queue<K> {
        self.queues[q as usize].as_mut().expect("live queue id")
    }

    fn push(&mut self, at: Micros, item: Item) {
        self.seq += 1;
        self.heap.push(Reverse((at, self.seq, item)));
    }

    fn schedule(&mut self, q: QueueId, at: Micros) {
        let e = {
            let queue = self.queue_mut(q);
            queue.epoch += 1;
            queue.state = State::Due(at);
            queue.epoch
        };
        self.push(at, Item::Queue(q, e));
    }

    /// Rows were added to the queue of `key`: make it due at `now` unless it is already due
    /// sooner, running, or waiting on a limit (new rows do not give a limit room).
    pub fn touch(&mut self, key: &K, now: Micros) {
        match self.by_key.get(key).copied() {
            None => {
                let q = self.add(key);
                self.schedule(q, now);
            }
            Some(q) => match self.queue(q).state {
                State::Due(at) if at <= now => {}
                State::Due(_) => self.schedule(q, now),
                // New rows do not make an unknown sender known.
                State::Waiting(_) | State::Running | State::Parked => {}
            },
        }
    }

    fn add(&mut self, key: &K) -> QueueId {
        let q = match self.free.pop() {
            Some(q) => q,
            None => {
                self.queues.push(None);
                (self.queues.len() - 1) as QueueId
            }
        };
        self.queues[q as usize] = Some(Queue {
            key: key.clone(),
            state: State::Running,
            epoch: 0,
            finish: self.vtime,
            weight: 1,
            lift: true,
        });
        self.by_key.insert(key.clone(), q);
        q
    }

    /// When the scheduler next has something to do (None: nothing is scheduled).
    pub fn next_wake(&self) -> Option<Micros> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Up to `max` queues to run now, each with the limit that woke it (None: it was due by
    /// time). A limit whose waiters are due is asked how many whole tokens it has (`room`:
    /// tokens now, and when it will have one more); that many of its waiters run, first come
    /// first.
    pub fn due(
        &mut self,
        now: Micros,
        max: usize,
        mut room: impl FnMut(LimitRef) -> (u64, Micros),
    ) -> Vec<(QueueId, Option<LimitRef>)> {
        let mut out = Vec::new();
        self.late = 0;
        while out.len() < max {
            let Some(Reverse((at, _, item))) = self.heap.peek().copied() else {
                break;
            };
            if at > now {
                break;
            }
            self.heap.pop();
            let late = if at > Micros::MIN { now - at } else { 0 };
            match item {
                Item::Queue(q, e) => {
                    let live = self.queues.get(q as usize).and_then(|x| x.as_ref());
                    if live.is_some_and(|x| x.epoch == e && matches!(x.state, State::Due(_))) {
                        self.late = self.late.max(late);
                        self.queue_mut(q).state = State::Running;
                        out.push((q, None));
                    }
                }
                Item::Limit(id) => {
                    let Some(w) = self.limits.get_mut(&id) else {
                        continue;
                    };
                    if w.wake != Some(at) {
                        continue; // superseded
                    }
                    w.wake = None;
                    self.late = self.late.max(late);
                    let (tokens, next) = room(id);
                    let mut woken = 0u64;
                    while woken < tokens && out.len() < max {
                        let Some(Reverse((_, _, q, e))) = w.queues.pop() else {
                            break;
                        };
                        let live = self.queues.get(q as usize).and_then(|x| x.as_ref());
                        if live.is_some_and(|x| x.epoch == e && x.state == State::Waiting(id)) {
                            out.push((q, Some(id)));
                            woken += 1;
                        }
                    }
                    let again = if w.queues.is_empty() {
                        None
                    } else if woken < tokens {
                        Some(now) // `max` cut it short
                    } else {
                        Some(next.max(now))
                    };
                    if w.queues.is_empty() {
                        self.limits.remove(&id);
                    }
                    let start = out.len() - woken as usize;
                    for i in start..out.len() {
                        let q = out[i].0;
                        self.queue_mut(q).state = State::Running;
                    }
                    if let Some(t) = again {
                        self.wake_limit(id, t);
                    }
                }
            }
        }
        out
    }

    /// If queues wait on `limit`, when it wakes next. A queue that needs a limit others wait
    /// on must queue behind them (no jumping the line when a token happens to be free).
    pub fn waiting_on(&self, limit: LimitRef) -> Option<Micros> {
        self.limits
            .get(&limit)
            .filter(|w| !w.queues.is_empty())
            .and_then(|w| w.wake)
    }

    /// Queues waiting on `limit` are looked at again now (it has room again that it did not
    /// have when they were told to wait: a lease came back).
    pub fn wake_waiters(&mut self, limit: LimitRef, now: Micros) {
        if self.waiting_on(limit).is_some() {
            self.wake_limit(limit, now);
        }
    }

    fn wake_limit(&mut self, id: LimitRef, at: Micros) {
        let w = self.limits.entry(id).or_default();
        if w.wake.is_some_and(|t| t <= at) {
            return;
        }
        w.wake = Some(at);
        self.push(at, Item::Limit(id));
    }

    /// Report what became of a queue that ran.
    pub fn done(&mut self, q: QueueId, what: Done) {
        match what {
            Done::Drained => {
                let key = self.queue(q).key.clone();
                self.by_key.remove(&key);
                self.queues[q as usize] = None;
                self.free.push(q);
            }
            Done::More => self.schedule(q, Micros::MIN),
            Done::Deferred { until } => {
                self.queue_mut(q).lift = true;
                self.schedule(q, until)
            }
            Done::Parked => {
                if self.queue(q).state != State::Parked {
                    self.parked_n += 1;
                }
                let queue = self.queue_mut(q);
                queue.epoch += 1;
                queue.state = State::Parked;
                queue.lift = true;
            }
            Done::Blocked { limit, until } => {
                let (e, tag) = {
                    let queue = self.queue_mut(q);
                    queue.epoch += 1;
                    queue.state = State::Waiting(limit);
                    (queue.epoch, queue.finish)
                };
                self.seq += 1;
                let seq = self.seq;
                self.limits
                    .entry(limit)
                    .or_default()
                    .queues
                    .push(Reverse((tag, seq, q, e)));
                self.wake_limit(limit, until);
            }
        }
    }
}

/// A fetched row, as far as ordering and release need it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Row {
    pub id: i64,
    pub priority: i16,
    pub cost: u64,
}

/// What one admission said about a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Admitted,
    /// Refused by `limit` until `until`.
    Blocked {
        limit: LimitRef,
        until: Micros,
    },
    /// Can never pass `limit` (its cost exceeds the burst).
    Never {
        limit: LimitRef,
    },
    /// Not now, and not in its queue's way: the row waits apart (a rule of its recipient
    /// holds it, or it goes to the dead letters for a reason of its own); the queue's later
    /// rows are tried.
    Aside,
}

/// The result of releasing one tick's rows.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// (batch, row) of every admitted row, in release order.
    pub admitted: Vec<(usize, usize)>,
    /// (batch, row, limit) of every row that can never be admitted.
    pub never: Vec<(usize, usize, LimitRef)>,
    /// Per batch: the limit that stopped it, and until when.
    pub blocked: Vec<Option<(LimitRef, Micros)>>,
}

/// Try the rows in `order`, asking `admit` for each; once a queue is refused its later rows
/// are not tried (FIFO within a queue).
pub fn release(
    batches: &[Vec<Row>],
    order: &[(usize, usize)],
    mut admit: impl FnMut(usize, &Row) -> Verdict,
) -> Released {
    let mut out = Released {
        blocked: vec![None; batches.len()],
        ..Default::default()
    };
    for &(b, r) in order {
        if out.blocked[b].is_some() {
            continue;
        }
        match admit(b, &batches[b][r]) {
            Verdict::Admitted => out.admitted.push((b, r)),
            Verdict::Blocked { limit, until } => out.blocked[b] = Some((limit, until)),
            Verdict::Never { limit } => out.never.push((b, r, limit)),
            Verdict::Aside => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Micros = 1_000_000;

    #[test]
    fn order_is_priority_then_by_cost_share() {
        let row = |id, priority, cost| Row { id, priority, cost };
        let mut s: Scheduler<u32> = Scheduler::new();
        s.touch(&0, 0);
        s.touch(&1, 0);
        let qs = [0, 1];
        let batches = vec![
            vec![row(1, 0, 1), row(2, 0, 1), row(3, 0, 1)],
            vec![row(9, 5, 1), row(10, 0, 1)],
        ];
        assert_eq!(
            s.order(&qs, &batches, &[]),
            vec![(1, 0), (0, 0), (0, 1), (1, 1), (0, 2)]
        );
        // Ties go to the queue that came due first, not to the oldest row.
        let batches = vec![vec![row(50, 0, 1)], vec![row(1, 0, 1)]];
        assert_eq!(s.order(&qs, &batches, &[]), vec![(0, 0), (1, 0)]);
        // By cost: a queue of 2-segment rows takes one row for every two of 1 segment.
        let batches = vec![
            vec![row(1, 0, 2), row(2, 0, 2)],
            vec![row(3, 0, 1), row(4, 0, 1), row(5, 0, 1)],
        ];
        assert_eq!(
            s.order(&qs, &batches, &[]),
            vec![(0, 0), (1, 0), (1, 1), (0, 1), (1, 2)]
        );
        // The queue served goes behind the one that was not.
        s.charge(0, 2);
        let batches = vec![vec![row(1, 0, 2)], vec![row(3, 0, 2)]];
        assert_eq!(s.order(&qs, &batches, &[]), vec![(1, 0), (0, 0)]);
        // A weight of 2 gets twice the cost.
        s.charge(1, 2);
        s.set_weight(1, 2);
        let batches = vec![
            vec![row(1, 0, 1), row(2, 0, 1)],
            vec![row(3, 0, 1), row(4, 0, 1), row(5, 0, 1), row(6, 0, 1)],
        ];
        assert_eq!(
            s.order(&qs, &batches, &[]),
            vec![(0, 0), (1, 0), (1, 1), (0, 1), (1, 2), (1, 3)]
        );
    }

    #[test]
    fn rows_that_would_outrun_a_queue_whose_batch_ended_wait() {
        let row = |id, cost| Row {
            id,
            priority: 0,
            cost,
        };
        let mut s: Scheduler<u32> = Scheduler::new();
        s.touch(&0, 0);
        s.touch(&1, 0);
        // Queue 0 gave its two 1-segment rows and may hold more: queue 1's rows past where
        // queue 0's third row would start wait for the next tick.
        let batches = vec![
            vec![row(1, 1), row(2, 1)],
            vec![row(3, 1), row(4, 1), row(5, 1), row(6, 1)],
        ];
        assert_eq!(
            s.order(&[0, 1], &batches, &[true, false]),
            vec![(0, 0), (1, 0), (0, 1), (1, 1)]
        );
    }

    #[test]
    fn a_configuration_change_wakes_every_held_queue() {
        let mut s: Scheduler<u32> = Scheduler::new();
        s.touch(&0, 0);
        s.touch(&1, 0);
        s.touch(&2, 0);
        let due = s.due(0, 10, |_| (0, 0));
        assert_eq!(due.len(), 3);
        s.done(
            due[0].0,
            Done::Blocked {
                limit: LimitRef::Rate(7),
                until: 60 * SEC,
            },
        );
        s.done(
            due[1].0,
            Done::Deferred {
                until: 86_400 * SEC,
            },
        );
        s.done(due[2].0, Done::Parked);
        assert!(s.due(SEC, 10, |_| (0, 60 * SEC)).is_empty());
        s.wake_all(SEC);
        let mut woken: Vec<QueueId> = s
            .due(SEC, 10, |_| (0, 0))
            .into_iter()
            .map(|x| x.0)
            .collect();
        woken.sort();
        assert_eq!(woken, vec![0, 1], "the parked queue stays parked");
        assert_eq!(
            s.waiting_on(LimitRef::Rate(7)),
            None,
            "the old wait is forgotten"
        );
        // New rows do not make its sender known; unpark does.
        s.touch(&2, 2 * SEC);
        assert!(s.due(2 * SEC, 10, |_| (0, 0)).iter().all(|x| x.0 != 2));
        assert_eq!(s.parked(), vec![2]);
        assert_eq!(s.parked_count(), 1);
        s.unpark(2, 3 * SEC);
        assert_eq!(s.parked_count(), 0);
        assert_eq!(s.due(4 * SEC, 10, |_| (0, 0)), vec![(2, None)]);
        assert_eq!(s.lateness(), SEC, "due at 3 s, run at 4 s");
    }

    #[test]
    fn a_queue_parked_from_the_start_is_never_due_until_unparked() {
        let mut s: Scheduler<u32> = Scheduler::new();
        s.park_new(&5);
        s.touch(&5, 0);
        assert!(s.due(SEC, 10, |_| (0, 0)).is_empty());
        assert_eq!(s.next_wake(), None);
        assert_eq!(s.len(), 1);
        let q = s.parked()[0];
        s.unpark(q, SEC);
        assert_eq!(s.due(SEC, 10, |_| (0, 0)), vec![(q, None)]);
        // park_new leaves a known queue as it is.
        assert!(s.knows(&5) && !s.knows(&6));
        s.park_new(&5);
        assert!(s.parked().is_empty());
    }

    #[test]
    fn release_stops_a_queue_at_its_first_refusal() {
        let row = |id| Row {
            id,
            priority: 0,
            cost: 1,
        };
        let batches = vec![vec![row(1), row(2), row(3)], vec![row(4)]];
        let order = vec![(0, 0), (1, 0), (0, 1), (0, 2)];
        let mut calls = 0;
        let r = release(&batches, &order, |b, row| {
            calls += 1;
            match (b, row.id) {
                (0, 2) => Verdict::Blocked {
                    limit: LimitRef::Rate(5),
                    until: 100,
                },
                (1, _) => Verdict::Never {
                    limit: LimitRef::Rate(6),
                },
                _ => Verdict::Admitted,
            }
        });
        assert_eq!(r.admitted, vec![(0, 0)]);
        assert_eq!(r.never, vec![(1, 0, LimitRef::Rate(6))]);
        assert_eq!(r.blocked, vec![Some((LimitRef::Rate(5), 100)), None]);
        assert_eq!(calls, 3, "row 3 was not tried after row 2 was refused");
    }
}
