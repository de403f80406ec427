//! One release tick's decisions, as pure functions: the worker reads, calls these, writes.
//!
//! A tick runs in two steps around one fetch of rows:
//! 1. [`take`]: for each due queue, how many of its head rows to fetch (the room its rate
//!    limits and calendar caps have), or what holds it instead: a shared limit others wait
//!    on (no jumping the line), a full cap (wait for its reset, hold until a local time, or
//!    refuse), a limit with no token.
//! 2. [`release`]: the fetched rows in fair order (see [`Scheduler::order`]), each through
//!    the queue's caps and rate limits: which rows go, which can never go and why, which
//!    queues a limit stopped, and which need a look at their next due row.
//!
//! Rate limits are reached through [`Buckets`] (shared memory in the worker, a map in the
//! tests), calendar caps through [`Ledgers`] of the windows the tick touches. Time is an
//! argument; nothing here reads a clock, a table or shared memory.

use crate::calendar::Calendar;
use crate::cap::{CapFull, CapRule, Ledger};
use crate::contact;
use crate::schedule::{self, Done, QueueId, Row, Scheduler, Verdict};
use crate::{LimitRef, Micros};
use std::collections::HashMap;
use std::hash::Hash;

/// What a cap does with a message over it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AtCap {
    /// Wait for the cap's reset.
    Defer,
    /// Wait for a local time in the recipient's zone, at or after the reset.
    DeferLocal,
    /// Dead-letter it.
    Refuse,
}

impl AtCap {
    /// As `throttle.cap.at_cap` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            AtCap::Defer => "defer",
            AtCap::DeferLocal => "defer_local",
            AtCap::Refuse => "refuse",
        }
    }
}

/// A calendar cap as the decisions need it (the worker's cap definition implements it).
pub trait Cap {
    fn id(&self) -> i64;
    fn action(&self) -> AtCap;
    fn calendar(&self) -> &Calendar;
    fn rule(&self) -> &CapRule;
    /// The start of the window that contains `at` (a cap may remember its last window: a
    /// time zone conversion per queue and tick is not free).
    fn window_start(&self, at: Micros) -> Micros {
        self.calendar().window_start(at)
    }
}

/// A shared cap is a cap.
impl<T: Cap + ?Sized> Cap for std::rc::Rc<T> {
    fn id(&self) -> i64 {
        (**self).id()
    }
    fn action(&self) -> AtCap {
        (**self).action()
    }
    fn calendar(&self) -> &Calendar {
        (**self).calendar()
    }
    fn rule(&self) -> &CapRule {
        (**self).rule()
    }
    fn window_start(&self, at: Micros) -> Micros {
        (**self).window_start(at)
    }
}

/// One cap's usage in one window, as a tick sees it: read from the table, plus what this
/// tick adds (`used`, `leased`: written back before the commit).
#[derive(Clone, Debug)]
pub struct CapWindow<C> {
    pub cap: C,
    pub ledger: Ledger,
    /// What the window had spent when it was read (for warning thresholds).
    pub read_spent: u64,
    /// Released this tick.
    pub used: u64,
    /// Leased less leases taken back, this tick.
    pub leased: i64,
}

impl<C: Cap> CapWindow<C> {
    /// A window read with `used` released and `leased` leased so far.
    pub fn read(cap: C, window: (Micros, Micros), used: u64, leased: u64) -> CapWindow<C> {
        let ledger = Ledger {
            window_start: window.0,
            window_end: window.1,
            used,
            leased,
        };
        CapWindow {
            cap,
            ledger,
            read_spent: ledger.spent(),
            used: 0,
            leased: 0,
        }
    }

    /// Whether this tick changed it (it must be written back).
    pub fn dirty(&self) -> bool {
        self.used > 0 || self.leased != 0
    }

    /// What it has spent after this tick.
    pub fn spent_after(&self) -> u64 {
        (self.read_spent as i64 + self.used as i64 + self.leased).max(0) as u64
    }

    /// Hand out a lease of up to `want` for the window that starts at `start`: what it
    /// grants (0 if that window is over by `now`), and whether the window is full after it.
    pub fn lease(&mut self, start: Micros, want: u64, at: Micros, now: Micros) -> (u64, bool) {
        if self.ledger.window_start != start || self.ledger.window_end <= now {
            return (0, true);
        }
        let n = self
            .ledger
            .lease(self.cap.calendar(), self.cap.rule(), want, at);
        self.leased += n as i64;
        (n, self.ledger.left(self.cap.rule()) == 0)
    }

    /// Take back `n` of an idle lease of the window that starts at `start` (nothing if that
    /// window is over: it no longer matters). Returns whether anything came back.
    pub fn reclaim(&mut self, start: Micros, n: u64, now: Micros) -> bool {
        if self.ledger.window_start != start || self.ledger.window_end <= now {
            return false;
        }
        let n = n.min(self.ledger.leased);
        self.ledger.leased -= n;
        self.leased -= n as i64;
        true
    }
}

/// The windows of caps a tick touches, by (cap, window start).
pub type Ledgers<C> = HashMap<(i64, Micros), CapWindow<C>>;

/// The rate limits of queues: shared-memory buckets in the worker, a map in the tests.
/// `Plan` is what names one queue's buckets.
pub trait Buckets {
    type Plan;
    /// The limits of `plan` that it shares with other queues (a limit each sender has on
    /// its own is not shared).
    fn shared(&self, plan: &Self::Plan) -> Vec<LimitRef>;
    /// Whole tokens every bucket of `plan` has now, the limit with the fewest, and when it
    /// has one more.
    fn room(&mut self, plan: &Self::Plan, now: Micros) -> (u64, LimitRef, Micros);
    /// Admit `cost` across every bucket of `plan` at once (all are debited or none is).
    fn admit(&mut self, plan: &Self::Plan, cost: u64, now: Micros) -> Verdict;
}

/// A due queue as the worker found it: the limit that woke it, and its plan, caps and
/// weight (None: its sender is not registered, or its plan cannot be read).
pub struct DueQueue<P, C> {
    pub q: QueueId,
    pub woken_by: Option<LimitRef>,
    pub found: Option<(P, Vec<C>, u32)>,
}

/// A queue taken this tick: how many head rows to fetch, and what they go through.
pub struct Taken<P> {
    pub q: QueueId,
    pub n: u64,
    pub plan: P,
    /// Its caps' windows (keys of [`Ledgers`]).
    pub caps: Vec<(i64, Micros)>,
    /// Over this cap, whose action is to refuse: every row taken is dead-lettered.
    pub refuse: Option<i64>,
}

/// A queue's due rows wait until a local time: a `defer_local` cap is full until `until`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HoldLocal {
    pub q: QueueId,
    pub cap: i64,
    pub until: Micros,
}

/// What [`take`] decided.
pub struct Take<P> {
    pub taken: Vec<Taken<P>>,
    /// Hold these queues' due rows until a local time (then look at their next due row).
    pub hold: Vec<HoldLocal>,
}

/// How many rows a tick may release in all, and from one queue.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub rows: u64,
    pub per_queue: u64,
}

/// Step 1: for each due queue, how many rows to fetch, or what holds it. Queues the tick has
/// no rows left for are due again at once, unread.
pub fn take<K, P, C, B>(
    sched: &mut Scheduler<K>,
    due: Vec<DueQueue<P, C>>,
    ledgers: &Ledgers<C>,
    buckets: &mut B,
    budget: Budget,
    now: Micros,
) -> Take<P>
where
    K: Clone + Eq + Hash,
    C: Cap,
    B: Buckets<Plan = P>,
{
    let mut out = Take {
        taken: Vec::new(),
        hold: Vec::new(),
    };
    let mut left = budget.rows;
    for d in due {
        if left == 0 {
            sched.done(d.q, Done::More);
            continue;
        }
        let Some((plan, caps, weight)) = d.found else {
            sched.done(d.q, Done::Parked);
            continue;
        };
        sched.set_weight(d.q, weight);
        // Queue behind others waiting on a shared limit: no jumping the line.
        let line = buckets
            .shared(&plan)
            .into_iter()
            .filter(|&l| Some(l) != d.woken_by)
            .find_map(|l| sched.waiting_on(l).map(|until| (l, until)));
        if let Some((limit, until)) = line {
            sched.done(d.q, Done::Blocked { limit, until });
            continue;
        }
        let room = match cap_room(&caps, ledgers, now) {
            CapRoom::Room { n, windows, refuse } => (n, windows, refuse),
            CapRoom::Wait { cap, until } => {
                sched.done(
                    d.q,
                    Done::Blocked {
                        limit: LimitRef::Cap(cap),
                        until,
                    },
                );
                continue;
            }
            CapRoom::HoldLocal { cap, until } => {
                out.hold.push(HoldLocal { q: d.q, cap, until });
                continue;
            }
        };
        let (cap_room, windows, refuse) = room;
        let n = if refuse.is_some() {
            budget.per_queue.min(left)
        } else {
            let (tokens, blocker, next) = buckets.room(&plan, now);
            if tokens == 0 {
                sched.done(d.q, held(buckets, &plan, blocker, next));
                continue;
            }
            tokens.min(budget.per_queue).min(left).min(cap_room)
        };
        left -= n;
        out.taken.push(Taken {
            q: d.q,
            n,
            plan,
            caps: windows,
            refuse,
        });
    }
    out
}

enum CapRoom {
    /// Room for `n` in every cap (`refuse`: a full cap refuses every row).
    Room {
        n: u64,
        windows: Vec<(i64, Micros)>,
        refuse: Option<i64>,
    },
    /// A full `defer` cap: wait for its reset.
    Wait { cap: i64, until: Micros },
    /// A full `defer_local` cap: hold the rows until a local time after its reset.
    HoldLocal { cap: i64, until: Micros },
}

/// The room a queue's caps leave now (their windows must be in `ledgers`; one that is not
/// is passed over: the worker reads every window before it decides).
fn cap_room<C: Cap>(caps: &[C], ledgers: &Ledgers<C>, now: Micros) -> CapRoom {
    let mut n = u64::MAX;
    let mut windows = Vec::with_capacity(caps.len());
    let mut refuse = None;
    for cap in caps {
        let start = cap.window_start(now);
        let Some(w) = ledgers.get(&(cap.id(), start)) else {
            continue;
        };
        windows.push((cap.id(), start));
        let room = w.ledger.left(cap.rule());
        if room == 0 && refuse.is_none() {
            let until = w.ledger.window_end;
            match cap.action() {
                AtCap::Defer => {
                    return CapRoom::Wait {
                        cap: cap.id(),
                        until,
                    }
                }
                AtCap::DeferLocal => {
                    return CapRoom::HoldLocal {
                        cap: cap.id(),
                        until,
                    }
                }
                AtCap::Refuse => refuse = Some(cap.id()),
            }
        }
        n = n.min(room);
    }
    CapRoom::Room { n, windows, refuse }
}

/// What becomes of a queue a limit holds until `until`: it waits its turn on a limit it
/// shares with other queues; a bucket of its own it shares with no one, so it is just due
/// again then.
fn held<B: Buckets>(buckets: &B, plan: &B::Plan, limit: LimitRef, until: Micros) -> Done {
    let shared = !matches!(limit, LimitRef::Rate(_)) || buckets.shared(plan).contains(&limit);
    if shared {
        Done::Blocked { limit, until }
    } else {
        Done::Deferred { until }
    }
}

/// Release nothing of what [`take`] took (the configuration changed while the tick read): every
/// queue it took or held is due again at once, as it was.
pub fn abandon<K: Clone + Eq + Hash, P>(sched: &mut Scheduler<K>, take: Take<P>) {
    for q in take
        .taken
        .iter()
        .map(|t| t.q)
        .chain(take.hold.iter().map(|h| h.q))
    {
        sched.done(q, Done::More);
    }
}

/// How soon a queue whose line a client is busy with is looked at again.
const BUSY_RETRY_US: Micros = 20_000;

/// Why a row can never be released.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Never {
    /// Its cost is more than the burst of a rate limit.
    OverBurst { limit: LimitRef, cost: u64 },
    /// Its cost is more than a whole window of a cap allows.
    OverCap { cap: i64, cost: u64 },
    /// A full cap whose action is to refuse.
    Refused { cap: i64 },
    /// Over a contact rule whose action is to refuse.
    Contact { rule: i64, kind: contact::Kind },
    /// Its line has contact rules and it names no recipient.
    NoRecipient,
}

/// What [`release`] decided.
#[derive(Debug, Default)]
pub struct Released {
    /// Ids of the rows that go, in release order.
    pub admitted: Vec<i64>,
    /// Rows that never can go, and why.
    pub dead: Vec<(i64, Never)>,
    /// Queues that filled a `defer_local` cap: hold their due rows until a local time.
    pub hold: Vec<HoldLocal>,
    /// Queues that gave fewer rows than asked, or whose due rows are held: ask when their
    /// next row is due (see [`settle`]).
    pub short: Vec<QueueId>,
}

/// Step 2: release the rows fetched for `take` (`batches[i]` for `take.taken[i]`, each in
/// the queue's order) in fair order through caps and buckets; charge each queue its share,
/// reschedule every queue a limit stopped or that may give more.
pub fn release<K, P, C, B>(
    sched: &mut Scheduler<K>,
    take: Take<P>,
    batches: &[Vec<Row>],
    ledgers: &mut Ledgers<C>,
    buckets: &mut B,
    convo: &mut contact::Tick,
    now: Micros,
) -> Released
where
    K: Clone + Eq + Hash,
    C: Cap,
    B: Buckets<Plan = P>,
{
    let taken = take.taken;
    let qids: Vec<QueueId> = taken.iter().map(|t| t.q).collect();
    let more: Vec<bool> = taken
        .iter()
        .zip(batches)
        .map(|(t, b)| b.len() as u64 >= t.n)
        .collect();
    let order = sched.order(&qids, batches, &more);
    let mut out = Released {
        hold: take.hold,
        ..Default::default()
    };
    let mut local_hit: Vec<bool> = vec![false; taken.len()];
    let mut apart: Vec<(i64, Never)> = Vec::new();
    let mut busy: Vec<bool> = vec![false; taken.len()];
    let r = schedule::release(batches, &order, |b, row| {
        let t = &taken[b];
        // The recipient's rules first: a row they hold takes no cap or token.
        match convo.judge(b, row.id, now) {
            contact::Judged::Free => {}
            contact::Judged::Held => return Verdict::Aside,
            contact::Judged::Refused { rule, kind } => {
                apart.push((row.id, Never::Contact { rule, kind }));
                return Verdict::Aside;
            }
            contact::Judged::NoRecipient => {
                apart.push((row.id, Never::NoRecipient));
                return Verdict::Aside;
            }
            contact::Judged::Busy => {
                busy[b] = true;
                return Verdict::Blocked {
                    limit: LimitRef::Memory,
                    until: now + BUSY_RETRY_US,
                };
            }
        }
        let verdict = admit_row(t, row, ledgers, buckets, now);
        if verdict == Verdict::Admitted {
            convo.count(b, row.id, now);
        }
        if let Verdict::Blocked {
            limit: LimitRef::Cap(cap),
            until,
        } = verdict
        {
            let local = t.caps.iter().any(|k| {
                k.0 == cap
                    && ledgers
                        .get(k)
                        .is_some_and(|w| w.cap.action() == AtCap::DeferLocal)
            });
            if local && !local_hit[b] {
                local_hit[b] = true;
                out.hold.push(HoldLocal { q: t.q, cap, until });
            }
        }
        verdict
    });
    for &(b, i) in &r.admitted {
        let row = &batches[b][i];
        sched.charge(taken[b].q, row.cost);
        out.admitted.push(row.id);
    }
    for &(b, i, limit) in &r.never {
        let row = &batches[b][i];
        out.dead
            .push((row.id, never(&taken[b], row.cost, limit, ledgers)));
    }
    out.dead.extend(apart);
    out.short = out.hold.iter().map(|h| h.q).collect();
    for (b, t) in taken.iter().enumerate() {
        if local_hit[b] {
            continue;
        } else if busy[b] {
            // Its line is busy with a client: look again shortly, in no limit's line.
            sched.done(
                t.q,
                Done::Deferred {
                    until: now + BUSY_RETRY_US,
                },
            );
        } else if let Some((limit, until)) = r.blocked[b] {
            sched.done(t.q, held(buckets, &t.plan, limit, until));
        } else if (batches[b].len() as u64) < t.n {
            out.short.push(t.q);
        } else {
            sched.done(t.q, Done::More);
        }
    }
    out
}

/// One row through its queue's caps (each must have room) and then its buckets (all at
/// once); an admitted row is counted in every cap's window.
fn admit_row<P, C: Cap, B: Buckets<Plan = P>>(
    t: &Taken<P>,
    row: &Row,
    ledgers: &mut Ledgers<C>,
    buckets: &mut B,
    now: Micros,
) -> Verdict {
    if let Some(cap) = t.refuse {
        return Verdict::Never {
            limit: LimitRef::Cap(cap),
        };
    }
    for key in &t.caps {
        let Some(w) = ledgers.get_mut(key) else {
            continue;
        };
        match w
            .ledger
            .check(w.cap.calendar(), w.cap.rule(), row.cost, now)
        {
            Ok(()) => {}
            Err(CapFull::Until { until }) if w.cap.action() != AtCap::Refuse => {
                return Verdict::Blocked {
                    limit: LimitRef::Cap(key.0),
                    until,
                };
            }
            Err(_) => {
                return Verdict::Never {
                    limit: LimitRef::Cap(key.0),
                }
            }
        }
    }
    let verdict = buckets.admit(&t.plan, row.cost, now);
    if verdict == Verdict::Admitted {
        for key in &t.caps {
            if let Some(w) = ledgers.get_mut(key) {
                if w.ledger
                    .take(w.cap.calendar(), w.cap.rule(), row.cost, now)
                    .is_ok()
                {
                    w.used += row.cost;
                }
            }
        }
    }
    verdict
}

/// Why the row of `cost` taken from `t` can never pass `limit`.
fn never<P, C: Cap>(t: &Taken<P>, cost: u64, limit: LimitRef, ledgers: &Ledgers<C>) -> Never {
    match limit {
        LimitRef::Cap(cap) => {
            let allowed = t
                .caps
                .iter()
                .find(|k| k.0 == cap)
                .and_then(|k| ledgers.get(k))
                .map(|w| w.cap.rule().allowed());
            match allowed {
                Some(a) if cost > a => Never::OverCap { cap, cost },
                _ => Never::Refused { cap },
            }
        }
        limit => Never::OverBurst { limit, cost },
    }
}

/// The queues of [`Released::short`] with when each one's next row is due (None: it has
/// none; a time at or before `now`: now): each is drained, due again, or deferred.
pub fn settle<K: Clone + Eq + Hash>(
    sched: &mut Scheduler<K>,
    short: &[QueueId],
    next: &[Option<Micros>],
    now: Micros,
) {
    for (j, &q) in short.iter().enumerate() {
        let done = match next.get(j).copied().flatten() {
            None => Done::Drained,
            Some(t) if t <= now => Done::More,
            Some(t) => Done::Deferred { until: t },
        };
        sched.done(q, done);
    }
}

/// Where the next fetch of a queue may start in the queue's order (priority descending, then
/// id): every row of the queue before it left in a committed tick of this worker. A fetch that
/// starts there skips the index entries of the rows released before, which stay in the index
/// until vacuum and which a fetch from the queue's start steps over again on every tick.
///
/// A row can still come to be before the point: one enqueued with a higher priority or by a
/// transaction that drew its id earlier and committed later, one updated into the queue, one
/// whose `not_before` passed. A transaction's new and updated rows are noted to the worker at
/// commit (its first row of each queue), and a queue whose noted row sorts before its point
/// forgets it (see [`Resume::passed`]; the worker's business). For a later row of the same
/// transaction, a row whose `not_before` passed, and as a net under all, a point is trusted for
/// [`Resume::FOR`] after it was first set, and a fetch that finds fewer rows after it than
/// asked drops it. A row before the point is therefore released late (by at most that long
/// under a backlog), never lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resume {
    pub priority: i16,
    pub id: i64,
    /// When the queue was last fetched from its start.
    pub since: Micros,
}

impl Resume {
    /// How long a point is trusted after the fetch from the queue's start that set it.
    pub const FOR: Micros = 1_000_000;

    /// Whether a row at (`priority`, `id`) sorts before the point, or at it, in the queue's
    /// order: a fetch resuming there would not see it.
    pub fn passed(&self, priority: i16, id: i64) -> bool {
        priority > self.priority || (priority == self.priority && id <= self.id)
    }

    /// Whether the point may still be used at `now` (never when the clock went back).
    pub fn fresh(&self, now: Micros) -> bool {
        now >= self.since && now - self.since < Self::FOR
    }

    /// The point after a fetch of `asked` rows that returned `batch` (in the queue's order),
    /// the fetch having started at `used` (None: at the queue's start), once `gone(id)` says
    /// which rows left the queue in the committed tick: after the last of the batch's leading
    /// rows that left; `used` when none did; None when the batch was short (rows may wait
    /// before the point: the next fetch starts at the queue's start).
    pub fn after(
        used: Option<Resume>,
        batch: &[Row],
        asked: u64,
        gone: impl Fn(i64) -> bool,
        now: Micros,
    ) -> Option<Resume> {
        if (batch.len() as u64) < asked {
            return None;
        }
        let last = batch.iter().take_while(|r| gone(r.id)).last();
        match last {
            None => used,
            Some(r) => Some(Resume {
                priority: r.priority,
                id: r.id,
                since: used.map_or(now, |u| u.since),
            }),
        }
    }
}

#[cfg(test)]
mod resume_tests {
    use super::*;

    fn row(id: i64, priority: i16) -> Row {
        Row {
            id,
            priority,
            cost: 1,
        }
    }

    #[test]
    fn the_point_follows_the_leading_rows_that_left() {
        let batch = [row(1, 5), row(2, 5), row(7, 0), row(9, 0)];
        let gone = |id| id != 9;
        let r = Resume::after(None, &batch, 4, gone, 100).expect("a point");
        assert_eq!((r.priority, r.id, r.since), (0, 7, 100));
        // A row that stayed stops the point, whatever left after it.
        let r = Resume::after(None, &batch, 4, |id| id != 2, 100).expect("a point");
        assert_eq!((r.priority, r.id), (5, 1));
    }

    #[test]
    fn nothing_left_keeps_the_point_used_and_a_short_fetch_drops_it() {
        let used = Resume {
            priority: 0,
            id: 3,
            since: 10,
        };
        let batch = [row(4, 0), row(5, 0)];
        assert_eq!(
            Resume::after(Some(used), &batch, 2, |_| false, 50),
            Some(used)
        );
        assert_eq!(Resume::after(None, &batch, 2, |_| false, 50), None);
        // Fewer rows than asked: rows may wait before any point.
        assert_eq!(Resume::after(Some(used), &batch, 3, |_| true, 50), None);
        assert_eq!(Resume::after(Some(used), &[], 1, |_| true, 50), None);
    }

    #[test]
    fn a_point_moved_on_keeps_the_time_of_the_fetch_from_the_start() {
        let used = Resume {
            priority: 0,
            id: 3,
            since: 10,
        };
        let r = Resume::after(Some(used), &[row(4, 0)], 1, |_| true, 500).expect("a point");
        assert_eq!((r.id, r.since), (4, 10));
        assert!(r.fresh(10 + Resume::FOR - 1));
        assert!(!r.fresh(10 + Resume::FOR));
        assert!(!r.fresh(9), "a clock that went back trusts no point");
    }

    #[test]
    fn a_row_passed_is_one_of_a_higher_priority_or_an_earlier_id() {
        let r = Resume {
            priority: 3,
            id: 100,
            since: 0,
        };
        assert!(r.passed(4, 500));
        assert!(r.passed(3, 99));
        assert!(r.passed(3, 100));
        assert!(!r.passed(3, 101));
        assert!(!r.passed(2, 1), "a lower priority comes after the point's");
    }
}

#[cfg(test)]
mod contact_tests {
    use super::*;
    use crate::contact::{AtLimit, Contact, Kind, Line, Rule, Window};
    use crate::sim::{SimBuckets, SimCap};
    use std::rc::Rc;

    #[test]
    fn a_row_its_recipient_holds_lets_the_rest_of_its_queue_go() {
        let mut sched: Scheduler<u32> = Scheduler::new();
        sched.touch(&7, 0);
        let q = sched.due(0, 10, |_| (1, 0))[0].0;
        let mut buckets = SimBuckets::default();
        buckets.limits_of.insert(7, vec![]);
        // Queue 7's four head rows, through no limit.
        let take_of = |q| Take {
            taken: vec![Taken {
                q,
                n: 4,
                plan: 7u32,
                caps: vec![],
                refuse: None,
            }],
            hold: vec![],
        };
        let take = take_of(q);
        let row = |id| Row {
            id,
            priority: 0,
            cost: 1,
        };
        let batches = vec![vec![row(1), row(2), row(3), row(4)]];
        let rules: Rc<[Rule]> = Rc::from(vec![Rule {
            id: 9,
            kind: Kind::Unanswered,
            max: 1,
            window: Window::Rolling(1),
            reply_window: 0,
            at_limit: AtLimit::Hold,
            channel: None,
        }]);
        let mut convo = contact::Tick {
            queues: vec![Some((0, "imessage".into()))],
            lines: vec![(
                rules,
                Line {
                    used: vec![(0, None)],
                    ..Line::default()
                },
            )],
            // Rows 1 and 2 to one contact, 3 to another, 4 to no one.
            rows: [(1, Some(0)), (2, Some(0)), (3, Some(1)), (4, None)]
                .into_iter()
                .collect(),
            contacts: vec![Contact::default(); 2],
            held: vec![],
            busy: vec![false],
            again: Default::default(),
        };
        let mut ledgers: Ledgers<SimCap> = HashMap::new();
        let r = release(
            &mut sched,
            take,
            &batches,
            &mut ledgers,
            &mut buckets,
            &mut convo,
            0,
        );
        // Row 2 waits for a reply; row 3 behind it goes; row 4 cannot be judged.
        assert_eq!(r.admitted, vec![1, 3]);
        assert_eq!(convo.held, vec![(2, 9, None)]);
        assert_eq!(r.dead, vec![(4, Never::NoRecipient)]);
        assert_eq!(
            convo
                .contacts
                .iter()
                .map(|c| (c.unanswered, c.dirty))
                .collect::<Vec<_>>(),
            vec![(1, true), (1, true)]
        );
        // A line a client is busy with: nothing of it is judged or taken; it is due again soon.
        sched.touch(&7, 1);
        let q = sched.due(1, 10, |_| (1, 1))[0].0;
        let take = take_of(q);
        convo.busy = vec![true];
        convo.held.clear();
        let r = release(
            &mut sched,
            take,
            &batches,
            &mut ledgers,
            &mut buckets,
            &mut convo,
            1,
        );
        assert!(r.admitted.is_empty() && r.dead.is_empty() && convo.held.is_empty());
        assert_eq!(sched.next_wake(), Some(1 + BUSY_RETRY_US));
    }
}
