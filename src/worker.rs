//! The release worker: moves rows from `throttle.pending` to `throttle.ready` exactly as fast
//! as the limits allow.
//!
//! Each tick is one short transaction: take the ids enqueued since the last tick (handed
//! over through shared memory at commit), ask the scheduler which queues are due, fetch the
//! head rows of those queues only (one statement), admit them through the same shared-memory
//! buckets `throttle_admit` uses, and move the admitted rows (one statement) before the
//! commit. Between ticks the worker sleeps until the next token is due or an enqueue sets its
//! latch: never a fixed poll. Buckets are debited before the commit: a crash in between
//! wastes tokens, never overspends them, and the rows stay in pending.

use crate::backend::LatestSnapshot;
use crate::caps::{self, Action, CapDef};
use crate::generic_plan::GenericPlan;
use crate::limiter::calendar::Calendar;
use crate::limiter::cap::CapRule;
use crate::limiter::schedule::{self, Row, Scheduler, Verdict};
use crate::limiter::tick::{self, CapWindow, DueQueue, Never, Released};
use crate::limiter::{LimitRef, Micros, Outcome};
use crate::{config, contacts, delivery, feedback, gucs, limiter, shmem};
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient};
use pgrx::{PgBuiltInOids, PgOid};
use rustc_hash::FxHashMap;
use std::rc::Rc;
use std::time::Duration;

/// Register the worker (from `_PG_init`, while preloading).
pub fn register() {
    BackgroundWorkerBuilder::new("pg_throttle release worker")
        .set_type("pg_throttle")
        .set_function("pg_throttle_worker_main")
        .set_library("pg_throttle")
        .enable_spi_access()
        // Not on a standby: it starts once recovery is over (after a promotion, too).
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct QueueKey {
    sender: String,
    carrier: String,
    channel: String,
}

/// Queues of new rows (a queue the worker does not know yet is then checked for a registered
/// sender, in one statement for all of them: see `discover`).
/// Queues of these new rows, each with the first of them in the queue's order (a queue whose
/// fetch resumes after that row fetches from its start again, see [`tick::Resume`]).
const SQL_DISCOVER_IDS: &str = "
    SELECT DISTINCT ON (sender, carrier, channel) sender, carrier, channel, priority, id
      FROM throttle.pending WHERE id = ANY($1)
     ORDER BY sender, carrier, channel, priority DESC, id";
const SQL_DISCOVER_ALL: &str = "SELECT DISTINCT sender, carrier, channel FROM throttle.pending";
/// Which of these senders are registered.
const SQL_KNOWN: &str = "SELECT sender FROM throttle.sender WHERE sender = ANY($1)";
/// The head rows of each queue taken, as [`SQL_FETCH`], with `$more` more arrays of one entry
/// per queue (named by `$cols`), `$cond` more conditions, in `$order`.
macro_rules! fetch_sql {
    ($more:literal, $cols:literal, $cond:literal, $order:literal) => {
        concat!(
            "
    SELECT q.i::int4, p.ctid, p.id, p.cost, p.priority
      FROM unnest($1::text[], $2::text[], $3::text[], $4::int4[]",
            $more,
            ") WITH ORDINALITY AS q(s, c, ch, n",
            $cols,
            ", i)
     CROSS JOIN LATERAL (
           SELECT ctid, id, cost, priority FROM throttle.pending p
            WHERE p.sender = q.s AND p.carrier = q.c AND p.channel = q.ch",
            $cond,
            "
              AND (p.not_before IS NULL OR p.not_before <= $5)
              AND (p.expires_at IS NULL OR p.expires_at > $5)
            ORDER BY ",
            $order,
            "
            LIMIT q.n) p"
        )
    };
}
/// The head rows of each queue taken (`$4` rows at most), with where each row is (its ctid:
/// the move deletes by it, with no index descent per row). Each queue's rows are put in its
/// order (priority, then id) by the worker, not by a sort here.
const SQL_FETCH: &str = fetch_sql!("", "", "", "p.priority DESC, p.id");
/// The same for queues with a point to resume at (see [`tick::Resume`]): the rows of the
/// point's priority after it, found by the index without stepping over the entries of rows
/// released before. (A queue that has fewer such rows than asked loses its point, and its
/// lower priorities are fetched from its start on the next tick.)
const SQL_FETCH_AFTER: &str = fetch_sql!(
    ", $6::int2[], $7::int8[]",
    ", rp, ri",
    " AND p.priority = q.rp AND p.id > q.ri",
    "p.id"
);
/// The columns [`SQL_FETCH`] and [`SQL_FETCH_AFTER`] return: queue position, ctid, id, cost,
/// priority.
const FETCH_COLUMNS: [pg_sys::Oid; 5] = [
    pg_sys::INT4OID,
    pg_sys::TIDOID,
    pg_sys::INT8OID,
    pg_sys::INT4OID,
    pg_sys::INT2OID,
];

/// Move the rows at these ctids (fetched in this transaction: a row updated meanwhile by
/// someone else has moved on and stays, its token wasted, never overspent) and count them per
/// queue (for the queue caps).
const SQL_MOVE_COUNTED: &str = "
    WITH moved AS (DELETE FROM throttle.pending WHERE ctid = ANY($1::tid[]) RETURNING *),
         ins AS (INSERT INTO throttle.ready (id, sender, carrier, channel, recipient, cost, priority,
                                             payload, not_before, expires_at, enqueued_at, released_at)
                 SELECT id, sender, carrier, channel, recipient, cost, priority,
                        payload, not_before, expires_at, enqueued_at, $2 FROM moved
                 RETURNING sender, carrier, channel)
    SELECT sender, carrier, channel, count(*)::int8 FROM ins GROUP BY 1, 2, 3";
/// The same when no queue cap counts them: only the number moved is needed (no rows come
/// back, nothing is grouped).
const SQL_MOVE: &str = "
    WITH moved AS (DELETE FROM throttle.pending WHERE ctid = ANY($1::tid[]) RETURNING *)
    INSERT INTO throttle.ready (id, sender, carrier, channel, recipient, cost, priority,
                                payload, not_before, expires_at, enqueued_at, released_at)
    SELECT id, sender, carrier, channel, recipient, cost, priority,
           payload, not_before, expires_at, enqueued_at, $2 FROM moved";
const SQL_DEAD: &str = "
    WITH gone AS (DELETE FROM throttle.pending p
                   USING unnest($1::int8[], $2::text[], $4::text[]) AS d(id, reason, code)
                   WHERE p.id = d.id RETURNING p.*, d.reason, d.code),
         ins AS (INSERT INTO throttle.dead (id, sender, carrier, channel, recipient, cost, priority, payload,
                                            not_before, expires_at, enqueued_at, died_at, reason, error_code)
                 SELECT id, sender, carrier, channel, recipient, cost, priority, payload,
                        not_before, expires_at, enqueued_at, $3, reason, code FROM gone
                 RETURNING sender, carrier, channel)
    SELECT sender, carrier, channel, count(*)::int8 FROM ins GROUP BY 1, 2, 3";
const SQL_EXPIRE: &str = "
    WITH gone AS (DELETE FROM throttle.pending WHERE expires_at <= $1 RETURNING *),
         ins AS (INSERT INTO throttle.dead (id, sender, carrier, channel, recipient, cost, priority, payload,
                                            not_before, expires_at, enqueued_at, died_at, reason, error_code)
                 SELECT g.id, g.sender, g.carrier, g.channel, g.recipient, g.cost, g.priority, g.payload,
                        g.not_before, g.expires_at, g.enqueued_at, $1, 'expired before release',
                        coalesce((SELECT s.expiry_error_code FROM throttle.sender s WHERE s.sender = g.sender), $2)
                   FROM gone g
                 RETURNING sender, carrier, channel)
    SELECT sender, carrier, channel, count(*)::int8 FROM ins GROUP BY 1, 2, 3";
const SQL_USAGE: &str = "
    SELECT u.cap_id, u.window_start, u.used, u.leased
      FROM unnest($1::int8[], $2::timestamptz[]) AS w(cap_id, window_start)
      JOIN throttle.cap_usage u USING (cap_id, window_start)";
/// Add what a tick used and leased (less leases taken back: `leased` may be negative) to each
/// cap's window: windows that have a row are updated, the others inserted.
const SQL_USAGE_ADD: &str = "
    WITH d(cap_id, window_start, window_end, used, leased) AS (
        SELECT * FROM unnest($1::int8[], $2::timestamptz[], $3::timestamptz[], $4::int8[], $5::int8[])),
    upd AS (
        UPDATE throttle.cap_usage u
           SET used = u.used + d.used, leased = greatest(0, u.leased + d.leased), updated_at = $6
          FROM d WHERE u.cap_id = d.cap_id AND u.window_start = d.window_start
        RETURNING u.cap_id, u.window_start)
    INSERT INTO throttle.cap_usage AS u (cap_id, window_start, window_end, used, leased, updated_at)
    SELECT d.cap_id, d.window_start, d.window_end, d.used, greatest(0, d.leased), $6 FROM d
     WHERE NOT EXISTS (SELECT 1 FROM upd WHERE upd.cap_id = d.cap_id AND upd.window_start = d.window_start)
    ON CONFLICT (cap_id, window_start) DO UPDATE
       SET used = u.used + excluded.used, leased = u.leased + excluded.leased,
           updated_at = excluded.updated_at";
const SQL_DEFER_LOCAL: &str = "
    WITH d AS (
        UPDATE throttle.pending p
           SET not_before = coalesce(throttle.next_local_time(
                   coalesce((SELECT a.zones FROM throttle.area_code_zone a
                              WHERE a.area_code = throttle.area_code(p.recipient)), ARRAY[$5]),
                   $6, $7), $6),
               held_by = $8
         WHERE p.sender = $1 AND p.carrier = $2 AND p.channel = $3
           AND (p.not_before IS NULL OR p.not_before < $6)
           AND (p.expires_at IS NULL OR p.expires_at > $4)
        RETURNING 1)
    SELECT count(*)::int8 FROM d";
/// The caps that hold messages until a local time (set by `SQL_DEFER_LOCAL`).
const SQL_HELD_BY: &str = "SELECT DISTINCT held_by FROM throttle.pending WHERE held_by IS NOT NULL";
/// Messages a cap held until a local time go back to their queues now: those it held in its
/// current window (until at or after that window's end), which has room again. Those it held
/// in an earlier window keep their local time (08:00 after the reset, not the small hours).
const SQL_UNHOLD: &str = "
    UPDATE throttle.pending p SET not_before = NULL, held_by = NULL
      FROM unnest($1::int8[], $2::timestamptz[]) AS u(cap_id, window_end)
     WHERE p.held_by = u.cap_id AND p.not_before >= u.window_end
    RETURNING p.sender, p.carrier, p.channel";
/// Messages a cap held until a local time whose campaign is exempt from that cap now go back
/// to their queues (the exemption was added after they were held).
const SQL_UNHOLD_EXEMPT: &str = "
    UPDATE throttle.pending p SET not_before = NULL, held_by = NULL
      FROM throttle.sender s, throttle.cap_exemption e
     WHERE p.held_by IS NOT NULL AND e.cap_id = p.held_by
       AND s.sender = p.sender AND e.campaign = s.campaign
    RETURNING p.sender, p.carrier, p.channel";
const SQL_NEXT_EXPIRY: &str =
    "SELECT min(expires_at) FROM throttle.pending WHERE expires_at IS NOT NULL";
const SQL_NEXT_DUE: &str = "
    SELECT q.i::int4,
           (SELECT CASE WHEN bool_or(p.not_before IS NULL OR p.not_before <= $4) THEN $4
                        ELSE min(p.not_before) END
              FROM throttle.pending p
             WHERE p.sender = q.s AND p.carrier = q.c AND p.channel = q.ch)
      FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS q(s, c, ch, i)";

struct Stmts {
    discover_ids: OwnedPreparedStatement,
    discover_all: OwnedPreparedStatement,
    known: OwnedPreparedStatement,
    limit_ids: OwnedPreparedStatement,
    fetch: GenericPlan,
    fetch_after: GenericPlan,
    notify_ready: OwnedPreparedStatement,
    mv: OwnedPreparedStatement,
    mv_counted: OwnedPreparedStatement,
    dead: OwnedPreparedStatement,
    expire: OwnedPreparedStatement,
    next_expiry: OwnedPreparedStatement,
    next_due: OwnedPreparedStatement,
    usage: OwnedPreparedStatement,
    usage_add: OwnedPreparedStatement,
    defer_local: OwnedPreparedStatement,
}

fn oid(o: PgBuiltInOids) -> PgOid {
    PgOid::BuiltIn(o)
}

impl Stmts {
    fn prepare(c: &SpiClient<'_>) -> pgrx::spi::Result<Stmts> {
        use pgrx::pg_sys::BuiltinOid::*;
        let texts = [oid(TEXTARRAYOID), oid(TEXTARRAYOID), oid(TEXTARRAYOID)];
        Ok(Stmts {
            discover_ids: c.prepare(SQL_DISCOVER_IDS, &[oid(INT8ARRAYOID)])?.keep(),
            discover_all: c.prepare(SQL_DISCOVER_ALL, &[])?.keep(),
            known: c.prepare(SQL_KNOWN, &[oid(TEXTARRAYOID)])?.keep(),
            limit_ids: c
                .prepare("SELECT limit_id FROM throttle.rate_limit", &[])?
                .keep(),
            fetch: GenericPlan::prepare(
                c,
                SQL_FETCH,
                &[
                    TEXTARRAYOID.value(),
                    TEXTARRAYOID.value(),
                    TEXTARRAYOID.value(),
                    INT4ARRAYOID.value(),
                    TIMESTAMPTZOID.value(),
                ],
                &FETCH_COLUMNS,
            )?,
            fetch_after: GenericPlan::prepare(
                c,
                SQL_FETCH_AFTER,
                &[
                    TEXTARRAYOID.value(),
                    TEXTARRAYOID.value(),
                    TEXTARRAYOID.value(),
                    INT4ARRAYOID.value(),
                    TIMESTAMPTZOID.value(),
                    INT2ARRAYOID.value(),
                    INT8ARRAYOID.value(),
                ],
                &FETCH_COLUMNS,
            )?,
            notify_ready: c
                .prepare_mut("SELECT pg_notify('throttle_ready', $1)", &[oid(TEXTOID)])?
                .keep(),
            mv: c
                .prepare_mut(SQL_MOVE, &[oid(TIDARRAYOID), oid(TIMESTAMPTZOID)])?
                .keep(),
            mv_counted: c
                .prepare_mut(SQL_MOVE_COUNTED, &[oid(TIDARRAYOID), oid(TIMESTAMPTZOID)])?
                .keep(),
            dead: c
                .prepare_mut(
                    SQL_DEAD,
                    &[
                        oid(INT8ARRAYOID),
                        oid(TEXTARRAYOID),
                        oid(TIMESTAMPTZOID),
                        oid(TEXTARRAYOID),
                    ],
                )?
                .keep(),
            expire: c
                .prepare_mut(SQL_EXPIRE, &[oid(TIMESTAMPTZOID), oid(TEXTOID)])?
                .keep(),
            usage: c
                .prepare(SQL_USAGE, &[oid(INT8ARRAYOID), oid(TIMESTAMPTZARRAYOID)])?
                .keep(),
            usage_add: c
                .prepare_mut(
                    SQL_USAGE_ADD,
                    &[
                        oid(INT8ARRAYOID),
                        oid(TIMESTAMPTZARRAYOID),
                        oid(TIMESTAMPTZARRAYOID),
                        oid(INT8ARRAYOID),
                        oid(INT8ARRAYOID),
                        oid(TIMESTAMPTZOID),
                    ],
                )?
                .keep(),
            defer_local: c
                .prepare_mut(
                    SQL_DEFER_LOCAL,
                    &[
                        oid(TEXTOID),
                        oid(TEXTOID),
                        oid(TEXTOID),
                        oid(TIMESTAMPTZOID),
                        oid(TEXTOID),
                        oid(TIMESTAMPTZOID),
                        oid(TIMEOID),
                        oid(INT8OID),
                    ],
                )?
                .keep(),
            next_expiry: c.prepare(SQL_NEXT_EXPIRY, &[])?.keep(),
            next_due: c
                .prepare(
                    SQL_NEXT_DUE,
                    &[texts[0], texts[1], texts[2], oid(TIMESTAMPTZOID)],
                )?
                .keep(),
        })
    }
}

/// The time now (PostgreSQL µs).
fn clock_now() -> Micros {
    // SAFETY: GetCurrentTimestamp reads the system clock; it touches no shared state and
    // cannot raise an error.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

/// A time in PostgreSQL µs as a timestamptz (the epoch for one out of range).
pub(crate) fn ts(us: Micros) -> TimestampWithTimeZone {
    TimestampWithTimeZone::try_from(us)
        .unwrap_or_else(|_| TimestampWithTimeZone::try_from(0i64).expect("epoch"))
}

/// Where each fetched row is, by id.
type Ctids = FxHashMap<i64, pg_sys::ItemPointerData>;

/// What a tick fetched: per queue taken, its rows in its order and where its fetch started
/// (None: at its start); and where each row is.
struct Fetched {
    batches: Vec<Vec<Row>>,
    ctids: Ctids,
    from: Vec<Option<tick::Resume>>,
}

/// The windows of calendar caps a tick touches.
type Ledgers = tick::Ledgers<Rc<CapDef>>;

impl tick::Cap for CapDef {
    fn id(&self) -> i64 {
        self.id
    }
    fn action(&self) -> Action {
        self.action
    }
    fn calendar(&self) -> &Calendar {
        &self.cal
    }
    fn rule(&self) -> &CapRule {
        &self.rule
    }
    fn window_start(&self, at: Micros) -> Micros {
        self.window_of(at).0
    }
}

/// A queue's buckets, as shared memory keys them.
struct QueuePlan {
    wants: Vec<shmem::Want>,
    partitions: u32,
}

/// The rate limits of queues: the shared-memory buckets `throttle_admit` uses too.
struct SharedBuckets;

impl tick::Buckets for SharedBuckets {
    type Plan = QueuePlan;

    fn shared(&self, plan: &QueuePlan) -> Vec<LimitRef> {
        plan.wants
            .iter()
            .filter(|w| !config::is_per_sender(&w.key))
            .map(|w| LimitRef::Rate(w.key.limit_id))
            .collect()
    }

    fn room(&mut self, plan: &QueuePlan, now: Micros) -> (u64, LimitRef, Micros) {
        match shmem::room(&plan.wants, now) {
            Ok((k, limit, next)) => (k, LimitRef::Rate(limit), next),
            // Shared memory full: try again a little later.
            Err(_) => (0, LimitRef::Memory, now + 100_000),
        }
    }

    fn admit(&mut self, plan: &QueuePlan, cost: u64, now: Micros) -> Verdict {
        let limit = |i: usize| LimitRef::Rate(plan.wants[i].key.limit_id);
        match shmem::admit(&plan.wants, plan.partitions, cost, now, false) {
            Ok(Outcome::Admitted { .. }) => Verdict::Admitted,
            Ok(Outcome::Refused {
                blocker,
                retry_at: Some(until),
                ..
            }) => Verdict::Blocked {
                limit: limit(blocker),
                until,
            },
            Ok(Outcome::Refused { blocker, .. }) => Verdict::Never {
                limit: limit(blocker),
            },
            Err(_) => Verdict::Blocked {
                limit: LimitRef::Memory,
                until: now + 100_000,
            },
        }
    }
}

/// What the worker does once a tick's transaction has committed.
#[derive(Default)]
struct AfterCommit {
    /// Leases counted in the table.
    grants: Vec<shmem::LeaseGrant>,
    /// Messages that left pending: (queue cap, how many).
    left_queue: Vec<(i64, i64)>,
    /// Where queues' next fetches start (see [`tick::Resume`]).
    resume: Vec<(QueueKey, Option<tick::Resume>)>,
}

/// Hold every due message of a queue over `def` until `def.local_time` in its recipient's
/// zone, at or after the reset `until` (one statement).
fn defer_local(
    c: &mut SpiClient<'_>,
    st: &Stmts,
    key: &QueueKey,
    def: &CapDef,
    until: Micros,
    now: Micros,
) -> pgrx::spi::Result<()> {
    let at = def.local_time;
    let local = pgrx::datum::Time::new(
        chrono::Timelike::hour(&at) as u8,
        chrono::Timelike::minute(&at) as u8,
        chrono::Timelike::second(&at) as f64,
    )
    .unwrap_or(pgrx::datum::Time::ALLBALLS);
    let args: [DatumWithOid; 8] = [
        key.sender.clone().into(),
        key.carrier.clone().into(),
        key.channel.clone().into(),
        ts(now).into(),
        def.time_zone.name().into(),
        ts(until).into(),
        local.into(),
        def.id.into(),
    ];
    c.update(&st.defer_local, None, &args)?;
    Ok(())
}

/// Rows of (sender, carrier, channel, count) from a statement that moved messages out of
/// pending: their total, and (if `keep`) each queue's count into `gone`.
fn per_queue_counts(
    rows: pgrx::spi::SpiTupleTable<'_>,
    keep: bool,
    gone: &mut Vec<(String, String, String, i64)>,
) -> pgrx::spi::Result<u64> {
    let mut total = 0u64;
    for row in rows {
        let n: i64 = row.get(4)?.unwrap_or(0);
        total += n.max(0) as u64;
        if keep {
            gone.push((
                row.get(1)?.unwrap_or_default(),
                row.get(2)?.unwrap_or_default(),
                row.get(3)?.unwrap_or_default(),
                n,
            ));
        }
    }
    Ok(total)
}

/// Read the usage of every (cap, window containing a time) in `need` that this tick has not
/// read yet: one statement for all of them.
fn read_ledgers(
    c: &SpiClient<'_>,
    st: &Stmts,
    ledgers: &mut Ledgers,
    need: &[(Rc<CapDef>, Micros)],
) -> pgrx::spi::Result<()> {
    let mut missing: Vec<(Rc<CapDef>, Micros, Micros)> = Vec::new();
    let mut seen = rustc_hash::FxHashSet::default();
    for (def, at) in need {
        let (start, end) = def.window_of(*at);
        if !ledgers.contains_key(&(def.id, start)) && seen.insert((def.id, start)) {
            missing.push((def.clone(), start, end));
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = missing.iter().map(|(d, _, _)| d.id).collect();
    let starts: Vec<TimestampWithTimeZone> = missing.iter().map(|(_, s, _)| ts(*s)).collect();
    let mut found: FxHashMap<(i64, Micros), (u64, u64)> = FxHashMap::default();
    for row in c.select(&st.usage, None, &[ids.into(), starts.into()])? {
        let id: i64 = row.get(1)?.unwrap_or(0);
        let start: Micros = row.get::<TimestampWithTimeZone>(2)?.map_or(0, Micros::from);
        let used = row.get::<i64>(3)?.unwrap_or(0).max(0) as u64;
        let leased = row.get::<i64>(4)?.unwrap_or(0).max(0) as u64;
        found.insert((id, start), (used, leased));
    }
    for (def, start, end) in missing {
        let (used, leased) = found.get(&(def.id, start)).copied().unwrap_or((0, 0));
        let id = def.id;
        ledgers.insert(
            (id, start),
            CapWindow::read(def, (start, end), used, leased),
        );
    }
    Ok(())
}

/// The usage of `def`'s window that contains `at` (read by [`read_ledgers`] if this tick has
/// not yet).
fn load_ledger<'a>(
    c: &SpiClient<'_>,
    st: &Stmts,
    ledgers: &'a mut Ledgers,
    def: &Rc<CapDef>,
    at: Micros,
) -> pgrx::spi::Result<&'a mut CapWindow<Rc<CapDef>>> {
    let key = (def.id, def.window_of(at).0);
    if !ledgers.contains_key(&key) {
        read_ledgers(c, st, ledgers, &[(def.clone(), at)])?;
    }
    Ok(ledgers.get_mut(&key).expect("just read"))
}

/// The release worker's state between ticks. It re-reads every queue from the table at
/// least every `throttle.rescan_interval`, a safety net for rows no trigger told it about
/// (rows written with session_replication_role = replica fire no triggers).
struct Worker {
    sched: Scheduler<QueueKey>,
    stmts: Option<Stmts>,
    rediscover: bool,
    last_rediscovery: Micros,
    generation: u64,
    next_expiry: Option<Micros>,
    ids: Vec<i64>,
    /// This worker's database.
    db: u32,
    /// The configuration generation whose queue caps were counted (0: none yet).
    queue_counted: u64,
    recount_tries: u32,
    /// The configuration changed: messages a cap held until a local time are looked at again.
    unhold: bool,
    /// Look for buckets of deleted limits (after a configuration change, at every rescan).
    sweep: bool,
    after: AfterCommit,
    /// Where each queue's next fetch starts, if not at its start (see [`tick::Resume`]).
    resume: FxHashMap<QueueKey, tick::Resume>,
    /// Each line's contact rules.
    contacts: contacts::Cache,
    delivery: delivery::State,
    feedback: feedback::State,
    /// When to prune old contact state next.
    next_prune: Micros,
    /// The contact filter's build (see contact_filter.rs).
    filter: crate::contact_filter::Build,
    /// When to look at the leases for idle ones to take back next (None: none holds room).
    next_lease_look: Option<Micros>,
    /// What each cap this worker leased from allowed then (`CapRule::allowed`): a cap that
    /// changed has its leases taken back at once, so none spends more than it now allows.
    leased_caps: FxHashMap<i64, u64>,
    /// Caps changed since they were leased from, whose leases to take back.
    changed_caps: rustc_hash::FxHashSet<i64>,
}

/// What a tick asks of the loop: how long to sleep (None: until the latch is set).
type Sleep = Option<Duration>;

/// The cap a lease names, if it still exists (the same id made again is another cap).
fn cap_named(key: &shmem::LeaseKey) -> Option<Rc<CapDef>> {
    caps::cap(key.cap_id)
        .ok()
        .flatten()
        .filter(|d| d.born == key.born)
}

/// Whether any calendar caps and any queue caps exist (read once per tick).
#[derive(Clone, Copy)]
struct Flags {
    caps: bool,
    queue_caps: bool,
}

/// A queue's plan (its buckets and weight) and its calendar caps (if `any_caps`); None if
/// its sender is not registered or its plan cannot be read (the queue is parked).
fn queue_plan(key: &QueueKey, any_caps: bool) -> Option<(QueuePlan, Vec<Rc<CapDef>>, u32)> {
    let (s, ca, ch) = (
        key.sender.as_bytes(),
        key.carrier.as_bytes(),
        key.channel.as_bytes(),
    );
    let plan = config::with_known_plan(s, ca, ch, |p| {
        let plan = QueuePlan {
            wants: p.wants.to_vec(),
            partitions: p.partitions,
        };
        (plan, p.weight as u32)
    });
    let (plan, weight) = match plan {
        Ok(found) => found?,
        Err(e) => {
            pgrx::warning!(
                "pg_throttle: queue {key:?} cannot be judged: {}",
                e.message()
            );
            return None;
        }
    };
    if !any_caps {
        return Some((plan, Vec::new(), weight));
    }
    match caps::caps_for_queue(s, ca, ch) {
        Ok(Some(defs)) => Some((plan, defs.to_vec(), weight)),
        Ok(None) => None,
        Err(e) => {
            pgrx::warning!(
                "pg_throttle: caps of queue {key:?} cannot be read: {}",
                e.message()
            );
            None
        }
    }
}

/// The reason and error code a dead-lettered row gets.
fn dead_reason(why: Never, ledgers: &Ledgers, rules: &contacts::Cache) -> (String, Option<String>) {
    let cap = |id: i64| ledgers.values().find(|w| w.cap.id == id).map(|w| &w.cap);
    match why {
        Never::OverCap { cap: id, cost } => match cap(id) {
            Some(def) => (
                format!(
                    "cost {cost} exceeds all that {} allows in a window",
                    def.label
                ),
                def.error_code.clone(),
            ),
            None => (
                format!("cost {cost} exceeds all that cap {id} allows in a window"),
                None,
            ),
        },
        Never::Refused { cap: id } => match cap(id) {
            Some(def) => (
                format!("over {} (at_cap = refuse)", def.label),
                def.error_code.clone(),
            ),
            None => (format!("over cap {id} (at_cap = refuse)"), None),
        },
        Never::Contact { rule, kind } => {
            let (name, code) = rules.label(rule);
            (
                format!(
                    "over contact rule {name} ({}, at_limit = refuse)",
                    kind.as_str()
                ),
                code,
            )
        }
        Never::NoRecipient => (
            "no recipient: its line has contact rules, which count recipients".to_string(),
            None,
        ),
        Never::OverBurst { limit, cost } => {
            let id = match limit {
                LimitRef::Rate(id) | LimitRef::Cap(id) => id,
                LimitRef::Memory => 0,
            };
            (format!("cost {cost} exceeds the burst of limit {id}"), None)
        }
    }
}

impl Worker {
    fn new() -> Worker {
        Worker {
            sched: Scheduler::new(),
            stmts: None,
            rediscover: true,
            last_rediscovery: 0,
            generation: 0,
            next_expiry: None,
            ids: Vec::new(),
            db: 0,
            queue_counted: 0,
            recount_tries: 0,
            unhold: true,
            sweep: true,
            after: AfterCommit::default(),
            resume: FxHashMap::default(),
            contacts: contacts::Cache::default(),
            delivery: delivery::State::default(),
            feedback: feedback::State::default(),
            next_prune: 0,
            filter: Default::default(),
            next_lease_look: Some(0),
            leased_caps: FxHashMap::default(),
            changed_caps: Default::default(),
        }
    }

    fn tick(&mut self) -> Sleep {
        if !gucs::worker_enabled() {
            return None; // SIGHUP sets the latch
        }
        // SAFETY: RecoveryInProgress reads shared state under its own spin lock.
        if unsafe { pg_sys::RecoveryInProgress() } {
            return Some(Duration::from_secs(5));
        }
        // New ids are taken before the transaction's snapshot: every row they name is then
        // visible to the tick (taken after it, a row committed in between would be missed).
        self.ids.clear();
        if shmem::ring_drain(&mut self.ids) {
            self.rediscover = true;
        }
        // An error in a tick (a lock wait over lock_timeout, a row no check foresaw) is
        // reported and the tick is tried again a second later: one bad row or one lock held
        // by a client never stops the worker, and the error is in the log.
        // SAFETY: a backend-local global, read in the worker's own process.
        let ctx = unsafe { pg_sys::CurrentMemoryContext };
        let tick = PgTryBuilder::new(std::panic::AssertUnwindSafe(|| {
            Ok(BackgroundWorker::transaction(std::panic::AssertUnwindSafe(
                || self.tick_in_transaction(),
            )))
        }))
        .catch_others(|e| {
            let r = match &e {
                pg_sys::panic::CaughtError::PostgresError(r)
                | pg_sys::panic::CaughtError::ErrorReport(r)
                | pg_sys::panic::CaughtError::RustPanic { ereport: r, .. } => r,
            };
            Err(format!("{} ({:?})", r.message(), r.sql_error_code()))
        })
        .execute();
        let sleep = match tick {
            Ok(sleep) => sleep,
            Err(message) => {
                // SAFETY: the error left the tick's transaction open; this ends it, as
                // PostgreSQL's own workers do, and returns to the loop's memory context.
                unsafe {
                    pg_sys::AbortCurrentTransaction();
                    pg_sys::MemoryContextSwitchTo(ctx);
                }
                pgrx::warning!("pg_throttle: release tick failed, trying again in 1 s: {message}");
                // What the tick decided is void: leases it granted were not counted, and the
                // queues it held are looked at afresh (tokens it spent stay spent: safe).
                self.after = AfterCommit::default();
                self.resume.clear();
                self.contacts.clear();
                crate::queue_cap::REQUEUE.with(|r| *r = false);
                self.stmts = None;
                self.rediscover = true;
                self.sched = Scheduler::new();
                shmem::note_failed_tick();
                return Some(Duration::from_secs(1));
            }
        };
        // Committed: hand out what the table now counts.
        let after = std::mem::take(&mut self.after);
        let now = clock_now();
        for g in &after.grants {
            shmem::lease_grant(self.db, g, now);
        }
        for (id, n) in after.left_queue {
            shmem::queue_unreserve(self.db, id, n);
        }
        for (key, at) in after.resume {
            match at {
                Some(r) => self.resume.insert(key, r),
                None => self.resume.remove(&key),
            };
        }
        sleep
    }

    fn tick_in_transaction(&mut self) -> Sleep {
        // Wait (without a poll per message) for CREATE EXTENSION in this database.
        // SAFETY: inside a transaction (catalog access is allowed); missing_ok: no error.
        let ext = unsafe { pg_sys::get_extension_oid(c"pg_throttle".as_ptr(), true) };
        if ext == pg_sys::InvalidOid {
            self.stmts = None;
            self.rediscover = true;
            return Some(Duration::from_secs(5));
        }
        Spi::connect_mut(|c| {
            if self.stmts.is_none() {
                // Never a sequential scan of pending: plans cached while the table was empty
                // must stay index plans when it holds a million rows.
                c.update("SET enable_seqscan = off", None, &[])
                    .expect("set enable_seqscan");
                // Rows the worker deletes are uncounted from queue caps by the worker itself,
                // not by the delete trigger (see queue_cap.rs).
                c.update("SET pg_throttle.worker = on", None, &[])
                    .expect("set pg_throttle.worker");
                // Never wait long on a lock a client holds: the tick fails, is reported, and
                // is tried again.
                c.update("SET lock_timeout = '1s'", None, &[])
                    .expect("set lock_timeout");
                self.stmts = Some(Stmts::prepare(c).expect("prepare the worker's statements"));
            }
            self.run(c).expect("release tick")
        })
    }

    fn run(&mut self, c: &mut SpiClient<'_>) -> pgrx::spi::Result<Sleep> {
        let stmts = self.stmts.take().expect("prepared");
        let r = self.run_with(c, &stmts);
        self.stmts = Some(stmts);
        r
    }

    /// One tick: follow the configuration, serve the caps' leases and queue counts, find new
    /// work, dead-letter what expired, release what is due, and say when to wake.
    fn run_with(&mut self, c: &mut SpiClient<'_>, st: &Stmts) -> pgrx::spi::Result<Sleep> {
        let now = clock_now();
        self.follow_config(c, st, now)?;
        // Fail closed: if the caps cannot be read, release nothing this tick.
        let flags = match (caps::any_caps(), caps::any_queue_caps()) {
            (Ok(caps), Ok(queue_caps)) => Flags { caps, queue_caps },
            (Err(e), _) | (_, Err(e)) => {
                pgrx::warning!("pg_throttle: caps cannot be read: {}", e.message());
                return Ok(Some(Duration::from_secs(1)));
            }
        };
        let mut ledgers = Ledgers::default();
        if flags.caps {
            self.reclaim_leases(c, st, &mut ledgers, now)?;
        } else {
            // No cap: no lease to look at.
            self.next_lease_look = None;
        }
        self.grant_leases(c, st, &mut ledgers, now)?;
        let counted = self.count_queue_caps(c, flags.queue_caps)?;
        if std::mem::take(&mut self.unhold) {
            self.release_held(c, st, &mut ledgers, now)?;
        }
        self.find_work(c, st, now)?;
        if std::mem::take(&mut self.sweep) {
            self.sweep_buckets(c, st, now)?;
        }
        let expired = self.expire(c, st, flags, now)?;
        let mut tick = self.release(c, st, &mut ledgers, flags, now)?;
        tick.dead += expired;
        self.write_usage(c, st, &ledgers, now)?;
        let mut soon = (!counted).then_some(now + 20_000);
        if contacts::any(c, &mut self.contacts)? {
            if now >= self.next_prune {
                // A batch every 10 s, or every 100 ms while whole batches go.
                let more = contacts::prune(c, now)?;
                self.next_prune = now + if more { 100_000 } else { 10_000_000 };
            }
            soon = Some(soon.map_or(self.next_prune, |s| s.min(self.next_prune)));
            let back = crate::contact_filter::step(c, &mut self.filter, now)?;
            soon = Some(soon.map_or(back, |s| s.min(back)));
        }
        let delivered = delivery::tick(c, &mut self.delivery, now)?;
        tick.dead += delivered.died as u64;
        if let Some(w) = delivered.wake {
            soon = Some(soon.map_or(w, |s| s.min(w)));
        }
        if let Some(w) = feedback::tick(c, &mut self.feedback, now)? {
            soon = Some(soon.map_or(w, |s| s.min(w)));
        }
        self.note(tick);
        self.next_wake(c, st, soon)
    }

    /// Limits, caps, exemptions or groups changed: what held a queue may not any more.
    fn follow_config(
        &mut self,
        c: &mut SpiClient<'_>,
        st: &Stmts,
        now: Micros,
    ) -> pgrx::spi::Result<()> {
        let generation = shmem::config_generation();
        if generation != self.generation {
            self.generation = generation;
            self.contacts.clear();
            self.delivery.clear();
            self.feedback.clear();
            self.sched.wake_all(now);
            self.unpark_known(c, st, now)?;
            self.unhold = true;
            self.sweep = true;
            self.leased_caps.retain(|&id, allowed| {
                let same = caps::cap(id)
                    .ok()
                    .flatten()
                    .is_some_and(|d| d.rule.allowed() == *allowed);
                if !same {
                    self.changed_caps.insert(id);
                }
                same
            });
            if !self.changed_caps.is_empty() {
                self.next_lease_look = Some(now);
            }
        }
        Ok(())
    }

    /// Leases asked for by `throttle_admit`: granted from their windows (read in one
    /// statement), handed out once the tick commits.
    fn grant_leases(
        &mut self,
        c: &mut SpiClient<'_>,
        st: &Stmts,
        ledgers: &mut Ledgers,
        now: Micros,
    ) -> pgrx::spi::Result<()> {
        let requests: Vec<_> = shmem::lease_requests(self.db)
            .into_iter()
            .map(|r| (r, cap_named(&r.key)))
            .collect();
        let need: Vec<(Rc<CapDef>, Micros)> = requests
            .iter()
            .filter_map(|(r, def)| def.clone().map(|d| (d, r.at)))
            .collect();
        read_ledgers(c, st, ledgers, &need)?;
        for (r, def) in requests {
            let start = r.key.window_start;
            let (n, full) = match def {
                Some(def) => {
                    self.leased_caps.insert(def.id, def.rule.allowed());
                    load_ledger(c, st, ledgers, &def, r.at)?.lease(
                        start,
                        r.want.max(0) as u64,
                        r.at,
                        now,
                    )
                }
                // Gone: the asking backend reads the configuration again.
                None => (0, false),
            };
            self.after.grants.push(shmem::LeaseGrant {
                key: r.key,
                n: n as i64,
                full,
                slot: r.slot,
            });
        }
        if !self.after.grants.is_empty() {
            // A lease holds room now: look at it again before long (see `reclaim_leases`).
            let soon = now + gucs::lease_idle_us() / 4;
            self.next_lease_look = Some(self.next_lease_look.map_or(soon, |t| t.min(soon)));
        }
        Ok(())
    }

    /// Count the queue caps once per configuration generation. Returns false if the count
    /// must be tried again soon (its lock was not free).
    fn count_queue_caps(&mut self, c: &mut SpiClient<'_>, any: bool) -> pgrx::spi::Result<bool> {
        let generation = self.generation;
        if self.queue_counted == generation {
            return Ok(true);
        }
        if !any {
            shmem::queue_counts_set(self.db, &[]);
        } else if !self.count_queues(c)? {
            return Ok(false);
        }
        self.queue_counted = generation;
        Ok(true)
    }

    /// New work: the queues of ids committed since the last tick, or of every row after a
    /// restart, a full ring, or a rescan interval.
    fn find_work(
        &mut self,
        c: &mut SpiClient<'_>,
        st: &Stmts,
        now: Micros,
    ) -> pgrx::spi::Result<()> {
        if self.rediscover || now - self.last_rediscovery >= gucs::rescan_interval_us() {
            self.rediscover = false;
            self.last_rediscovery = now;
            self.sweep = true;
            // Rows may have come without a note (written with triggers off): every queue is
            // fetched from its start again.
            self.resume.clear();
            let rows = c.select(&st.discover_all, None, &[])?;
            self.discover(c, st, rows, now)?;
        } else if !self.ids.is_empty() {
            let ids: Vec<i64> = std::mem::take(&mut self.ids);
            let rows = c.select(&st.discover_ids, None, &[ids.into()])?;
            self.discover(c, st, rows, now)?;
        }
        Ok(())
    }

    /// Buckets of deleted limits leave shared memory once refilled.
    fn sweep_buckets(
        &mut self,
        c: &mut SpiClient<'_>,
        st: &Stmts,
        now: Micros,
    ) -> pgrx::spi::Result<()> {
        let mut live = rustc_hash::FxHashSet::default();
        for row in c.select(&st.limit_ids, None, &[])? {
            if let Some(id) = row.get::<i64>(1)? {
                live.insert(id);
            }
        }
        shmem::forget_unused(self.db, now, |id| live.contains(&id));
        Ok(())
    }

    /// Expired messages leave for throttle.dead, with their error code.
    fn expire(
        &mut self,
        c: &mut SpiClient<'_>,
        st: &Stmts,
        flags: Flags,
        now: Micros,
    ) -> pgrx::spi::Result<u64> {
        if !self.next_expiry.is_some_and(|t| t <= now) {
            return Ok(0);
        }
        let code = gucs::expiry_error_code();
        let mut gone = Vec::new();
        let rows = c.update(&st.expire, None, &[ts(now).into(), code.into()])?;
        let dead = per_queue_counts(rows, flags.queue_caps, &mut gone)?;
        self.left_queues(gone);
        Ok(dead)
    }

    /// Release what is due: read the due queues' plans, caps and windows, let the core
    /// decide how many rows each may give, fetch them (one statement), let the core decide
    /// which go, and write that.
    fn release(
        &mut self,
        c: &mut SpiClient<'_>,
        st: &Stmts,
        ledgers: &mut Ledgers,
        flags: Flags,
        now: Micros,
    ) -> pgrx::spi::Result<shmem::Tick> {
        let budget = tick::Budget {
            rows: gucs::release_batch() as u64,
            per_queue: gucs::queue_batch(),
        };
        let due = self
            .sched
            .due(now, budget.rows as usize, |limit| match limit {
                LimitRef::Rate(id) => config::cached_want(id)
                    .and_then(|w| shmem::room(&[w], now).ok())
                    .map_or((1, now), |(k, _, next)| (k, next)),
                _ => (1, now),
            });
        let lateness = self.sched.lateness();
        let queues = self.read_due(c, st, due, ledgers, flags.caps, now)?;
        let take = tick::take(
            &mut self.sched,
            queues,
            ledgers,
            &mut SharedBuckets,
            budget,
            now,
        );
        let fetched = self.fetch(c, st, &take.taken, now)?;
        // The configuration changed while this tick read: rows it fetched may have been
        // enqueued under limits or caps it has not read (a cap created, then messages sent).
        // Release nothing; the next tick (at once: the change set the latch) reads both anew.
        if shmem::config_generation() != self.generation {
            tick::abandon(&mut self.sched, take);
            return Ok(shmem::Tick {
                at: now,
                released: 0,
                dead: 0,
                queues: 0,
                parked: 0,
                late_us: 0,
            });
        }
        let asked: Vec<(schedule::QueueId, u64)> = take.taken.iter().map(|t| (t.q, t.n)).collect();
        let (mut convo, keys) = self.read_contacts(c, &take.taken, &fetched, now)?;
        let r = tick::release(
            &mut self.sched,
            take,
            &fetched.batches,
            ledgers,
            &mut SharedBuckets,
            &mut convo,
            now,
        );
        let (released, dead) =
            self.write_release(c, st, &r, &fetched.ctids, ledgers, flags, now)?;
        contacts::write_tick(c, &convo, &keys, now)?;
        let held: rustc_hash::FxHashSet<i64> = convo.held.iter().map(|h| h.0).collect();
        if released == r.admitted.len() as u64 && dead == r.dead.len() as u64 {
            self.resume_after(&asked, &fetched, &r, &held, now);
        } else {
            // Some row moved on meanwhile (updated or deleted by a client): fetch every
            // queue of this tick from its start next time.
            for &(q, _) in &asked {
                let key = self.sched.key(q).clone();
                self.after.resume.push((key, None));
            }
        }
        for h in &r.hold {
            let key = self.sched.key(h.q).clone();
            // Its due rows are held until a local time: fetched from its start once due.
            self.after.resume.push((key.clone(), None));
            if let Some(w) = ledgers.values().find(|w| w.cap.id == h.cap) {
                defer_local(c, st, &key, &w.cap, h.until, now)?;
            }
        }
        self.settle(c, st, &r.short, now)?;
        Ok(shmem::Tick {
            at: now,
            released,
            dead,
            queues: 0,
            parked: 0,
            late_us: if released > 0 { lateness } else { 0 },
        })
    }

    /// Each due queue's plan (its buckets and weight) and calendar caps, and the usage of
    /// those caps' windows (one statement for all).
    fn read_due(
        &mut self,
        c: &mut SpiClient<'_>,
        st: &Stmts,
        due: Vec<(schedule::QueueId, Option<LimitRef>)>,
        ledgers: &mut Ledgers,
        any_caps: bool,
        now: Micros,
    ) -> pgrx::spi::Result<Vec<DueQueue<QueuePlan, Rc<CapDef>>>> {
        let mut out = Vec::with_capacity(due.len());
        let mut need: Vec<(Rc<CapDef>, Micros)> = Vec::new();
        for (q, woken_by) in due {
            let key = self.sched.key(q);
            let found = queue_plan(key, any_caps);
            if let Some((_, caps, _)) = &found {
                need.extend(caps.iter().map(|d| (d.clone(), now)));
            }
            out.push(DueQueue { q, woken_by, found });
        }
        read_ledgers(c, st, ledgers, &need)?;
        Ok(out)
    }

    /// The head rows of the queues taken: one statement for those fetched from their start,
    /// one for those that resume where their last fetch left (see [`tick::Resume`]). Returns
    /// each queue's rows in its order, where each row is, and where each fetch started.
    fn fetch(
        &mut self,
        c: &mut SpiClient<'_>,
        st: &Stmts,
        taken: &[tick::Taken<QueuePlan>],
        now: Micros,
    ) -> pgrx::spi::Result<Fetched> {
        let mut f = Fetched {
            batches: vec![Vec::new(); taken.len()],
            ctids: Ctids::default(),
            from: vec![None; taken.len()],
        };
        // Per statement: the queues' positions in `taken`, then the statement's arguments.
        let mut start: Vec<usize> = Vec::new();
        let mut resume: Vec<usize> = Vec::new();
        for (i, t) in taken.iter().enumerate() {
            let at = self
                .resume
                .get(self.sched.key(t.q))
                .filter(|r| r.fresh(now));
            f.from[i] = at.copied();
            if at.is_some() {
                resume.push(i);
            } else {
                start.push(i);
            }
        }
        for (stmt, which) in [(&st.fetch, &start), (&st.fetch_after, &resume)] {
            if which.is_empty() {
                continue;
            }
            let (mut s, mut ca, mut ch, mut n) = (vec![], vec![], vec![], vec![]);
            let (mut rp, mut ri) = (vec![], vec![]);
            for &i in which {
                let k = self.sched.key(taken[i].q);
                s.push(k.sender.clone());
                ca.push(k.carrier.clone());
                ch.push(k.channel.clone());
                n.push(taken[i].n as i32);
                if let Some(r) = f.from[i] {
                    rp.push(r.priority);
                    ri.push(r.id);
                }
            }
            let mut args = vec![
                s.into_datum(),
                ca.into_datum(),
                ch.into_datum(),
                n.into_datum(),
            ];
            args.push(ts(now).into_datum());
            if !rp.is_empty() {
                args.extend([rp.into_datum(), ri.into_datum()]);
            }
            let args: Option<Vec<pg_sys::Datum>> = args.into_iter().collect();
            let args = args.ok_or(pgrx::spi::SpiError::SpiError(
                pgrx::spi::SpiErrorCodes::Param,
            ))?;
            stmt.for_each(c, &args, |[k, ctid, id, cost, priority]| {
                // FETCH_COLUMNS: int4, tid (by reference: copied here), int8, int4, int2.
                let k = k.map_or(0, |d| d.value() as i32);
                // SAFETY: a non-NULL tid datum points at an ItemPointerData of the row being
                // read, alive while this closure runs; it is copied out.
                let ctid = ctid.map(|d| unsafe { *d.cast_mut_ptr::<pg_sys::ItemPointerData>() });
                let id = id.map_or(0, |d| d.value() as i64);
                let cost = cost.map_or(1, |d| d.value() as i32);
                let priority = priority.map_or(0, |d| d.value() as i16);
                let at = (k as usize).checked_sub(1).and_then(|k| which.get(k));
                if let (Some(&i), Some(ctid)) = (at, ctid) {
                    f.ctids.insert(id, ctid);
                    f.batches[i].push(Row {
                        id,
                        priority,
                        cost: cost.max(1) as u64,
                    });
                }
            })?;
        }
        // Each batch in its queue's order (the rows mostly come in it: a sort of sorted rows).
        for b in &mut f.batches {
            b.sort_by_key(|r| (std::cmp::Reverse(r.priority), r.id));
        }
        Ok(f)
    }

    /// Where each queue taken resumes its next fetch, once this tick commits: after the rows
    /// it released or dead-lettered (all of them left: the statements counted every one).
    fn resume_after(
        &mut self,
        asked: &[(schedule::QueueId, u64)],
        f: &Fetched,
        r: &Released,
        held: &rustc_hash::FxHashSet<i64>,
        now: Micros,
    ) {
        // Rows a contact rule held are out of the way too (until a time or a reply).
        let gone: rustc_hash::FxHashSet<i64> = r
            .admitted
            .iter()
            .copied()
            .chain(r.dead.iter().map(|d| d.0))
            .chain(held.iter().copied())
            .collect();
        for (i, &(q, n)) in asked.iter().enumerate() {
            let at = tick::Resume::after(f.from[i], &f.batches[i], n, |id| gone.contains(&id), now);
            if at != f.from[i] {
                let key = self.sched.key(q).clone();
                self.after.resume.push((key, at));
            }
        }
    }

    /// The conversation state of the lines and recipients of the rows fetched (nothing is
    /// read when no line has contact rules).
    fn read_contacts(
        &mut self,
        c: &mut SpiClient<'_>,
        taken: &[tick::Taken<QueuePlan>],
        f: &Fetched,
        now: Micros,
    ) -> pgrx::spi::Result<(limiter::contact::Tick, contacts::Keys)> {
        if taken.is_empty() || !contacts::any(c, &mut self.contacts)? {
            return Ok(Default::default());
        }
        let queues: Vec<(&str, &str)> = taken
            .iter()
            .map(|t| {
                let k = self.sched.key(t.q);
                (k.sender.as_str(), k.channel.as_str())
            })
            .collect();
        contacts::read_tick(
            c,
            &mut self.contacts,
            &queues,
            &f.batches,
            |id| f.ctids.get(&id).copied(),
            now,
        )
    }

    /// Move what was admitted and dead-letter what never can go: one statement each.
    /// Returns (released, dead) as the statements counted them (a row deleted meanwhile by
    /// someone else is not counted).
    fn write_release(
        &mut self,
        c: &mut SpiClient<'_>,
        st: &Stmts,
        r: &Released,
        ctids: &Ctids,
        ledgers: &Ledgers,
        flags: Flags,
        now: Micros,
    ) -> pgrx::spi::Result<(u64, u64)> {
        let (mut moved, mut dead) = (0, 0);
        let mut gone = Vec::new();
        if !r.admitted.is_empty() {
            let at: Vec<pg_sys::ItemPointerData> = r
                .admitted
                .iter()
                .filter_map(|id| ctids.get(id).copied())
                .collect();
            let args: [DatumWithOid; 2] = [at.into(), ts(now).into()];
            moved = if flags.queue_caps {
                let rows = c.update(&st.mv_counted, None, &args)?;
                per_queue_counts(rows, true, &mut gone)?
            } else {
                c.update(&st.mv, None, &args)?.len() as u64
            };
            if moved > 0 {
                c.update(&st.notify_ready, None, &[moved.to_string().into()])?;
            }
        }
        if !r.dead.is_empty() {
            let mut ids = Vec::with_capacity(r.dead.len());
            let mut reasons = Vec::with_capacity(r.dead.len());
            let mut codes: Vec<Option<String>> = Vec::with_capacity(r.dead.len());
            for &(id, why) in &r.dead {
                let (reason, code) = dead_reason(why, ledgers, &self.contacts);
                ids.push(id);
                reasons.push(reason);
                codes.push(code);
            }
            let args: [DatumWithOid; 4] =
                [ids.into(), reasons.into(), ts(now).into(), codes.into()];
            let rows = c.update(&st.dead, None, &args)?;
            dead = per_queue_counts(rows, flags.queue_caps, &mut gone)?;
        }
        self.left_queues(gone);
        Ok((moved, dead))
    }

    /// Queues that gave fewer rows than asked, or whose due rows are held: each is drained,
    /// due again, or deferred to its next row (asked in one statement).
    fn settle(
        &mut self,
        c: &mut SpiClient<'_>,
        st: &Stmts,
        short: &[schedule::QueueId],
        now: Micros,
    ) -> pgrx::spi::Result<()> {
        if short.is_empty() {
            return Ok(());
        }
        let (mut s, mut ca, mut ch) = (vec![], vec![], vec![]);
        for &q in short {
            let k = self.sched.key(q);
            s.push(k.sender.clone());
            ca.push(k.carrier.clone());
            ch.push(k.channel.clone());
        }
        let args: [DatumWithOid; 4] = [s.into(), ca.into(), ch.into(), ts(now).into()];
        let mut next: Vec<Option<Micros>> = vec![None; short.len()];
        for row in c.select(&st.next_due, None, &args)? {
            let i: i32 = row.get(1)?.unwrap_or(0);
            let at: Option<TimestampWithTimeZone> = row.get(2)?;
            if let Some(slot) = next.get_mut((i - 1) as usize) {
                *slot = at.map(i64::from);
            }
        }
        tick::settle(&mut self.sched, short, &next, now);
        Ok(())
    }

    /// Publish the tick's figures (for `worker_state()`).
    fn note(&self, mut t: shmem::Tick) {
        let parked = self.sched.parked_count();
        t.queues = (self.sched.len() - parked) as u64;
        t.parked = parked as u64;
        shmem::note_tick(t);
    }

    /// When to wake: the next due queue or limit, the next expiry, an unspent lease to take
    /// back once idle, and at least every rescan interval (rows written without the trigger
    /// are found then).
    fn next_wake(
        &mut self,
        c: &mut SpiClient<'_>,
        st: &Stmts,
        soon: Option<Micros>,
    ) -> pgrx::spi::Result<Sleep> {
        let e: Option<TimestampWithTimeZone> =
            c.select(&st.next_expiry, None, &[])?.first().get(1)?;
        self.next_expiry = e.map(i64::from);
        let rescan = Some(self.last_rediscovery + gucs::rescan_interval_us());
        let wake = [
            self.sched.next_wake(),
            self.next_expiry,
            soon,
            self.next_lease_look,
            rescan,
        ]
        .into_iter()
        .flatten()
        .min();
        Ok(wake.map(|at| {
            let now = clock_now();
            Duration::from_micros(at.saturating_sub(now).clamp(0, 3_600_000_000) as u64)
        }))
    }

    /// Messages a `defer_local` cap held until a local time go back to their queues when that
    /// cap has room again (it was raised, or its window turned), is gone, holds no longer, or
    /// exempts their campaign (a statement for all of them; asked after configuration changes).
    fn release_held(
        &mut self,
        c: &mut SpiClient<'_>,
        st: &Stmts,
        ledgers: &mut Ledgers,
        now: Micros,
    ) -> pgrx::spi::Result<()> {
        let mut held: Vec<i64> = Vec::new();
        for row in c.select(SQL_HELD_BY, None, &[])? {
            if let Some(id) = row.get::<i64>(1)? {
                held.push(id);
            }
        }
        // (cap, the end of the window whose holds may go; MIN: every hold of a cap that is
        // gone or holds no longer).
        let (mut free, mut ends): (Vec<i64>, Vec<TimestampWithTimeZone>) = (vec![], vec![]);
        for id in held {
            let end = match caps::cap(id).ok().flatten() {
                Some(def) if def.action == Action::DeferLocal => {
                    let tl = load_ledger(c, st, ledgers, &def, now)?;
                    (tl.ledger.left(&def.rule) > 0).then_some(tl.ledger.window_end)
                }
                _ => Some(Micros::MIN),
            };
            if let Some(end) = end {
                free.push(id);
                ends.push(ts(end.max(-211_813_488_000_000_000)));
            }
        }
        let mut queues: Vec<(Option<String>, Option<String>, Option<String>)> = Vec::new();
        if !free.is_empty() {
            for row in c.update(SQL_UNHOLD, None, &[free.into(), ends.into()])? {
                queues.push((row.get(1)?, row.get(2)?, row.get(3)?));
            }
        }
        for row in c.update(SQL_UNHOLD_EXEMPT, None, &[])? {
            queues.push((row.get(1)?, row.get(2)?, row.get(3)?));
        }
        // Messages contact rules held are judged again under the rules as they are now.
        queues.extend(contacts::unhold(c)?);
        for (s, ca, ch) in queues {
            if let (Some(sender), Some(carrier), Some(channel)) = (s, ca, ch) {
                let key = QueueKey {
                    sender,
                    carrier,
                    channel,
                };
                // Its held rows are due again, before where its fetch would resume.
                self.resume.remove(&key);
                self.sched.touch(&key, now);
            }
        }
        Ok(())
    }

    /// Take back what idle leases of caps that queued messages wait on hold unspent (or of
    /// any cap, while the lease entries run short) and uncount it from the caps' windows in
    /// this transaction (a window that is over keeps its count: it no longer matters); and
    /// all a changed cap's leases hold. The entries are read a few times per
    /// `throttle.lease_idle` while some lease holds room, and right after a cap changed; not
    /// on every tick.
    fn reclaim_leases(
        &mut self,
        c: &mut SpiClient<'_>,
        st: &Stmts,
        ledgers: &mut Ledgers,
        now: Micros,
    ) -> pgrx::spi::Result<()> {
        if self.next_lease_look.is_none_or(|at| now < at) {
            return Ok(());
        }
        let idle = gucs::lease_idle_us();
        let sched = &self.sched;
        let changed = std::mem::take(&mut self.changed_caps);
        let sweep = shmem::lease_reclaim(self.db, now - idle, now, &changed, |cap| {
            sched.waiting_on(LimitRef::Cap(cap)).is_some()
        });
        // While a lease holds room, look again a few times per lease_idle: an idle one is
        // taken back within a quarter of it once its room is wanted. None holds room: look
        // again once one is granted (see `grant_leases`).
        self.next_lease_look = sweep.holding.then_some(now + idle / 4);
        let back: Vec<_> = sweep
            .back
            .into_iter()
            .filter_map(|b| cap_named(&b.key).map(|d| (b, d)))
            .collect();
        let need: Vec<(Rc<CapDef>, Micros)> = back
            .iter()
            .map(|(b, d)| (d.clone(), b.key.window_start))
            .collect();
        read_ledgers(c, st, ledgers, &need)?;
        for (b, def) in back {
            let start = b.key.window_start;
            if load_ledger(c, st, ledgers, &def, start)?.reclaim(start, b.n.max(0) as u64, now) {
                // Queues told to wait for this cap's reset may go now.
                self.sched.wake_waiters(LimitRef::Cap(def.id), now);
            }
        }
        Ok(())
    }

    /// Count the messages that left each queue as gone from the queue caps that count it,
    /// at commit.
    fn left_queues(&mut self, gone: Vec<(String, String, String, i64)>) {
        for (sender, carrier, channel, n) in gone {
            if let Ok(qcaps) = caps::queue_caps_for(&sender, &carrier, &channel) {
                for qc in qcaps {
                    self.after.left_queue.push((qc.id, n));
                }
            }
        }
    }

    /// Write what this tick added to each cap's usage (one statement), and NOTIFY
    /// `throttle_cap` once for every warning threshold crossed.
    fn write_usage(
        &mut self,
        c: &mut SpiClient<'_>,
        st: &Stmts,
        ledgers: &Ledgers,
        now: Micros,
    ) -> pgrx::spi::Result<()> {
        let dirty: Vec<&CapWindow<Rc<CapDef>>> = ledgers.values().filter(|w| w.dirty()).collect();
        if dirty.is_empty() {
            return Ok(());
        }
        let ids: Vec<i64> = dirty.iter().map(|t| t.cap.id).collect();
        let starts: Vec<TimestampWithTimeZone> =
            dirty.iter().map(|t| ts(t.ledger.window_start)).collect();
        let ends: Vec<TimestampWithTimeZone> =
            dirty.iter().map(|t| ts(t.ledger.window_end)).collect();
        let used: Vec<i64> = dirty.iter().map(|t| t.used as i64).collect();
        let leased: Vec<i64> = dirty.iter().map(|t| t.leased).collect();
        let args: [DatumWithOid; 6] = [
            ids.into(),
            starts.into(),
            ends.into(),
            used.into(),
            leased.into(),
            ts(now).into(),
        ];
        c.update(&st.usage_add, None, &args)?;
        for t in dirty {
            let after = t.spent_after();
            for pct in t.cap.rule.crossed(t.read_spent, after) {
                let args: [DatumWithOid; 6] = [
                    t.cap.id.into(),
                    t.cap.label.clone().into(),
                    (pct as i32).into(),
                    (after as i64).into(),
                    (t.cap.rule.cap as i64).into(),
                    ts(t.ledger.window_start).into(),
                ];
                c.update(
                    "SELECT pg_notify('throttle_cap', json_build_object(
                         'cap_id', $1, 'cap', $2, 'percent', $3, 'spent', $4, 'limit', $5,
                         'window_start', $6)::text)",
                    None,
                    &args,
                )?;
            }
        }
        Ok(())
    }

    /// Count the messages waiting under every queue cap, holding a lock on throttle.pending
    /// that waits for every enqueue in progress and holds new ones until this transaction
    /// ends. Returns false if the lock was not free this time (tried again next tick; after
    /// many tries the worker waits for it).
    fn count_queues(&mut self, c: &mut SpiClient<'_>) -> pgrx::spi::Result<bool> {
        // New sizes apply at once; the count itself may have to wait for the lock.
        if let Ok(all) = caps::all_queue_caps() {
            let limits: Vec<(i64, i64)> = all
                .iter()
                .map(|q| (q.id, q.max_waiting.unwrap_or(i64::MAX)))
                .collect();
            shmem::queue_limits_update(self.db, &limits);
        }
        let relid: Option<pg_sys::Oid> = c
            .select("SELECT 'throttle.pending'::regclass::oid", None, &[])?
            .first()
            .get(1)?;
        let Some(relid) = relid else {
            return Ok(false);
        };
        // Never wait for the lock: an enqueuing transaction left open would hold the worker,
        // and behind the worker's request every new enqueue. Until the count succeeds (it is
        // tried every few milliseconds), enqueues use the counts they had.
        // An enqueuing transaction left open must not keep a new cap uncounted (and every
        // enqueue under it refused) for as long as it lasts: after a second of trying, count
        // what is committed without the lock. Rows of transactions still open then are not
        // counted under a cap created meanwhile (they were not checked against it either).
        let share = pg_sys::ShareLock as pg_sys::LOCKMODE;
        // SAFETY: inside the tick's transaction, which releases the lock when it ends
        // (commit or abort): no path leaves it held.
        let locked = unsafe { pg_sys::ConditionalLockRelationOid(relid, share) };
        if !locked {
            self.recount_tries += 1;
            if self.recount_tries < 50 {
                return Ok(false);
            }
            pgrx::log!(
                "pg_throttle: queue caps counted without waiting for enqueuing transactions still open; their messages count under caps created after them only once they leave"
            );
        }
        self.recount_tries = 0;
        let Ok(all) = caps::all_queue_caps() else {
            return Ok(false);
        };
        let mut counts: Vec<shmem::QueueCount> = all
            .iter()
            .map(|q| shmem::QueueCount {
                id: q.id,
                limit: q.max_waiting.unwrap_or(i64::MAX),
                waiting: 0,
            })
            .collect();
        // Count under a snapshot taken now that the lock is held (the transaction's own is
        // older: enqueues that committed while the worker waited would be missed).
        let snapshot = LatestSnapshot::push();
        let rows = c.select(
            "SELECT p.sender, p.carrier, p.channel, s.campaign, s.brand, s.account, s.sender_type,
                    count(*)::int8
               FROM throttle.pending p LEFT JOIN throttle.sender s ON s.sender = p.sender
              GROUP BY 1, 2, 3, 4, 5, 6, 7",
            None,
            &[],
        );
        drop(snapshot);
        for row in rows? {
            let g = caps::Groups {
                sender: row.get::<String>(1)?.unwrap_or_default().into(),
                campaign: row.get::<String>(4)?.map(Into::into),
                brand: row.get::<String>(5)?.map(Into::into),
                account: row.get::<String>(6)?.map(Into::into),
                sender_type: row.get::<String>(7)?.map(Into::into),
            };
            let carrier: String = row.get(2)?.unwrap_or_default();
            let channel: String = row.get(3)?.unwrap_or_default();
            let n: i64 = row.get(8)?.unwrap_or(0);
            for qc in caps::queue_caps_matching(&g, &carrier, &channel) {
                if let Some(cnt) = counts.iter_mut().find(|x| x.id == qc.id) {
                    cnt.waiting += n;
                }
            }
        }
        shmem::queue_counts_set(self.db, &counts);
        Ok(true)
    }

    /// Queues with new rows, as (sender, carrier, channel) rows: a known queue is due now (a
    /// parked one stays parked); a new one is due, or parked at once if its sender is not
    /// registered (asked in one statement for all the new ones, so a crowd of queues the
    /// worker already knows costs no query each).
    fn discover(
        &mut self,
        c: &mut SpiClient<'_>,
        st: &Stmts,
        rows: pgrx::spi::SpiTupleTable<'_>,
        now: Micros,
    ) -> pgrx::spi::Result<()> {
        let mut new: Vec<QueueKey> = Vec::new();
        for row in rows {
            let (Some(sender), Some(carrier), Some(channel)) =
                (row.get(1)?, row.get(2)?, row.get(3)?)
            else {
                continue;
            };
            let key = QueueKey {
                sender,
                carrier,
                channel,
            };
            // A new or updated row may sort before where the queue's fetch would resume (one
            // drawn its id early, or of a higher priority): from its start, then. (The rows
            // of a rescan come without one: every point was dropped.)
            if let Some(r) = self.resume.get(&key) {
                let first: Option<(i16, i64)> = row.get(4)?.zip(row.get(5)?);
                if first.is_none_or(|(p, id)| r.passed(p, id)) {
                    self.resume.remove(&key);
                }
            }
            if self.sched.knows(&key) {
                self.sched.touch(&key, now);
            } else {
                new.push(key);
            }
        }
        if new.is_empty() {
            return Ok(());
        }
        let known = self.registered(c, st, new.iter().map(|k| k.sender.clone()).collect())?;
        for key in new {
            if known.contains(&key.sender) {
                self.sched.touch(&key, now);
            } else {
                self.sched.park_new(&key);
            }
        }
        Ok(())
    }

    /// Which of `senders` are registered (one statement).
    fn registered(
        &mut self,
        c: &mut SpiClient<'_>,
        st: &Stmts,
        mut senders: Vec<String>,
    ) -> pgrx::spi::Result<rustc_hash::FxHashSet<String>> {
        senders.sort_unstable();
        senders.dedup();
        let mut known = rustc_hash::FxHashSet::default();
        for row in c.select(&st.known, None, &[senders.into()])? {
            if let Some(s) = row.get::<String>(1)? {
                known.insert(s);
            }
        }
        Ok(known)
    }

    /// Parked queues whose sender is registered now are due (one statement for all).
    fn unpark_known(
        &mut self,
        c: &mut SpiClient<'_>,
        st: &Stmts,
        now: Micros,
    ) -> pgrx::spi::Result<()> {
        let parked = self.sched.parked();
        if parked.is_empty() {
            return Ok(());
        }
        let senders: Vec<String> = parked
            .iter()
            .map(|&q| self.sched.key(q).sender.clone())
            .collect();
        let known = self.registered(c, st, senders)?;
        for q in parked {
            if known.contains(&self.sched.key(q).sender) {
                self.sched.unpark(q, now);
            }
        }
        Ok(())
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn withdraw(_code: i32, _arg: pg_sys::Datum) {
    shmem::register_worker(std::ptr::null_mut(), 0);
    // Exit status 1: the postmaster restarts the worker after a pg_terminate_backend (exit 0
    // would unregister it for good); at shutdown nothing is restarted anyway.
    // SAFETY: proc_exit runs the exit callbacks and never returns.
    unsafe { pg_sys::proc_exit(1) };
}

/// The worker's entry point.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_throttle_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let db = gucs::database_name();
    // SAFETY: the process's own latch and pid, set before a background worker's main runs.
    let (latch, pid) = unsafe { (pg_sys::MyLatch, pg_sys::MyProcPid) };
    shmem::register_worker(latch, pid);
    // Its database was dropped: wait, unconnected, until one of that name is created again
    // (CREATE DATABASE sets the latch), rather than fail to connect every few seconds.
    if shmem::worker_db_gone() {
        pgrx::log!("pg_throttle release worker: database \"{db}\" was dropped; waiting for it to be created again");
        while shmem::worker_db_gone() {
            if !BackgroundWorker::wait_latch(Some(Duration::from_secs(10))) {
                shmem::register_worker(std::ptr::null_mut(), 0);
                // SAFETY: proc_exit runs the exit callbacks and never returns.
                unsafe { pg_sys::proc_exit(1) };
            }
        }
    }
    BackgroundWorker::connect_worker_to_spi(Some(&db), None);
    // SAFETY: set by connect_worker_to_spi just above, read in this process.
    let database = unsafe { pg_sys::MyDatabaseId }.to_u32();
    shmem::set_worker_database(database);
    // However the worker ends (an error exits the process), withdraw its latch.
    // SAFETY: registers a callback with a static lifetime and no argument to keep alive.
    unsafe { pg_sys::before_shmem_exit(Some(withdraw), pg_sys::Datum::from(0usize)) };
    pgrx::log!("pg_throttle release worker started for database \"{db}\"");
    let mut w = Worker::new();
    w.db = database;
    loop {
        if BackgroundWorker::sighup_received() {
            // SAFETY: outside any transaction, in the main loop, as PostgreSQL's own workers do.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        let sleep = w.tick();
        // Round up to whole milliseconds (the latch's unit): waking early only to find
        // nothing due yet would spin.
        let sleep = sleep.map(|d| Duration::from_millis(d.as_micros().div_ceil(1000) as u64));
        if !BackgroundWorker::wait_latch(sleep) {
            break;
        }
    }
    shmem::register_worker(std::ptr::null_mut(), 0);
    // Exit status 1: the postmaster restarts the worker after a pg_terminate_backend (exit 0
    // would unregister it for good); at shutdown nothing is restarted anyway.
    // SAFETY: proc_exit runs the exit callbacks and never returns.
    unsafe { pg_sys::proc_exit(1) };
}
