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

use crate::limiter::schedule::{self, Done, Row, Scheduler, Verdict};
use crate::limiter::{Micros, Outcome};
use crate::{config, gucs, shmem};
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient};
use pgrx::{PgBuiltInOids, PgOid};
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

const SQL_DISCOVER_IDS: &str =
    "SELECT DISTINCT sender, carrier, channel FROM throttle.pending WHERE id = ANY($1)";
const SQL_DISCOVER_ALL: &str = "SELECT DISTINCT sender, carrier, channel FROM throttle.pending";
const SQL_FETCH: &str = "
    SELECT q.i::int4, p.id, p.cost, p.priority
      FROM unnest($1::text[], $2::text[], $3::text[], $4::int4[]) WITH ORDINALITY AS q(s, c, ch, n, i)
     CROSS JOIN LATERAL (
           SELECT id, cost, priority FROM throttle.pending p
            WHERE p.sender = q.s AND p.carrier = q.c AND p.channel = q.ch
              AND (p.not_before IS NULL OR p.not_before <= $5)
              AND (p.expires_at IS NULL OR p.expires_at > $5)
            ORDER BY p.priority DESC, p.id
            LIMIT q.n) p
     ORDER BY q.i, p.priority DESC, p.id";
const SQL_MOVE: &str = "
    WITH moved AS (DELETE FROM throttle.pending WHERE id = ANY($1) RETURNING *),
         ins AS (INSERT INTO throttle.ready (id, sender, carrier, channel, recipient, cost, priority,
                                             payload, not_before, expires_at, enqueued_at, released_at)
                 SELECT id, sender, carrier, channel, recipient, cost, priority,
                        payload, not_before, expires_at, enqueued_at, $2 FROM moved
                 RETURNING greatest(enqueued_at, not_before) AS due)
    SELECT count(*)::int8, (extract(epoch FROM $2 - min(due)) * 1000000::numeric)::int8 FROM ins";
const SQL_DEAD: &str = "
    WITH gone AS (DELETE FROM throttle.pending p USING unnest($1::int8[], $2::text[]) AS d(id, reason)
                   WHERE p.id = d.id RETURNING p.*, d.reason),
         ins AS (INSERT INTO throttle.dead (id, sender, carrier, channel, recipient, cost, priority, payload,
                                            not_before, expires_at, enqueued_at, died_at, reason, error_code)
                 SELECT id, sender, carrier, channel, recipient, cost, priority, payload,
                        not_before, expires_at, enqueued_at, $3, reason, NULL FROM gone RETURNING 1)
    SELECT count(*)::int8 FROM ins";
const SQL_EXPIRE: &str = "
    WITH gone AS (DELETE FROM throttle.pending WHERE expires_at <= $1 RETURNING *),
         ins AS (INSERT INTO throttle.dead (id, sender, carrier, channel, recipient, cost, priority, payload,
                                            not_before, expires_at, enqueued_at, died_at, reason, error_code)
                 SELECT id, sender, carrier, channel, recipient, cost, priority, payload,
                        not_before, expires_at, enqueued_at, $1, 'expired before release', NULL FROM gone
                 RETURNING 1)
    SELECT count(*)::int8 FROM ins";
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
    fetch: OwnedPreparedStatement,
    mv: OwnedPreparedStatement,
    dead: OwnedPreparedStatement,
    expire: OwnedPreparedStatement,
    next_expiry: OwnedPreparedStatement,
    next_due: OwnedPreparedStatement,
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
            fetch: c
                .prepare(
                    SQL_FETCH,
                    &[
                        texts[0],
                        texts[1],
                        texts[2],
                        oid(INT4ARRAYOID),
                        oid(TIMESTAMPTZOID),
                    ],
                )?
                .keep(),
            mv: c
                .prepare_mut(SQL_MOVE, &[oid(INT8ARRAYOID), oid(TIMESTAMPTZOID)])?
                .keep(),
            dead: c
                .prepare_mut(
                    SQL_DEAD,
                    &[oid(INT8ARRAYOID), oid(TEXTARRAYOID), oid(TIMESTAMPTZOID)],
                )?
                .keep(),
            expire: c.prepare_mut(SQL_EXPIRE, &[oid(TIMESTAMPTZOID)])?.keep(),
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

fn ts(us: Micros) -> TimestampWithTimeZone {
    TimestampWithTimeZone::try_from(us)
        .unwrap_or_else(|_| TimestampWithTimeZone::try_from(0i64).expect("epoch"))
}

/// One queue taken this tick: which, how many rows it may release, and its buckets.
struct Taken {
    q: schedule::QueueId,
    n: u64,
    wants: Vec<shmem::Want>,
    partitions: u32,
}

/// How often the worker re-reads every queue from the table, as a safety net for rows no
/// trigger told it about (for example rows written with session_replication_role =
/// replica, which fires no triggers).
const REDISCOVER_EVERY_US: Micros = 60_000_000;

struct Worker {
    sched: Scheduler<QueueKey>,
    stmts: Option<Stmts>,
    rediscover: bool,
    last_rediscovery: Micros,
    generation: u64,
    next_expiry: Option<Micros>,
    ids: Vec<i64>,
}

/// What a tick asks of the loop: how long to sleep (None: until the latch is set).
type Sleep = Option<Duration>;

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
        }
    }

    fn tick(&mut self) -> Sleep {
        if !gucs::worker_enabled() {
            return None; // SIGHUP sets the latch
        }
        if unsafe { pg_sys::RecoveryInProgress() } {
            return Some(Duration::from_secs(5));
        }
        BackgroundWorker::transaction(std::panic::AssertUnwindSafe(|| self.tick_in_transaction()))
    }

    fn tick_in_transaction(&mut self) -> Sleep {
        // Wait (without a poll per message) for CREATE EXTENSION in this database.
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

    fn run_with(&mut self, c: &mut SpiClient<'_>, st: &Stmts) -> pgrx::spi::Result<Sleep> {
        let now = unsafe { pg_sys::GetCurrentTimestamp() };
        let generation = shmem::config_generation();
        if generation != self.generation {
            self.generation = generation;
            self.sched.unpark_all(now);
        }

        // 1. New work: ids committed since the last tick, or everything after a restart or a
        //    full ring.
        self.ids.clear();
        let lost = shmem::ring_drain(&mut self.ids);
        if lost || self.rediscover || now - self.last_rediscovery > REDISCOVER_EVERY_US {
            self.rediscover = false;
            self.last_rediscovery = now;
            for row in c.select(&st.discover_all, None, &[])? {
                self.touch(row.get(1)?, row.get(2)?, row.get(3)?, now);
            }
        } else if !self.ids.is_empty() {
            let ids: Vec<i64> = std::mem::take(&mut self.ids);
            for row in c.select(&st.discover_ids, None, &[ids.into()])? {
                self.touch(row.get(1)?, row.get(2)?, row.get(3)?, now);
            }
        }

        // 2. Expired messages leave for throttle.dead.
        let mut dead = 0u64;
        if self.next_expiry.is_some_and(|t| t <= now) {
            let n: Option<i64> = c
                .update(&st.expire, None, &[ts(now).into()])?
                .first()
                .get(1)?;
            dead += n.unwrap_or(0) as u64;
        }

        // 3. Due queues, each with as many rows as its buckets have tokens.
        let budget = gucs::release_batch();
        let per_queue = gucs::queue_batch();
        let due = self
            .sched
            .due(now, budget, |limit| match config::cached_want(limit) {
                Some(w) => shmem::room(&[w], now)
                    .map(|(k, _, next)| (k, next))
                    .unwrap_or((1, now)),
                None => (1, now),
            });
        let mut taken: Vec<Taken> = Vec::new();
        let mut left = budget as u64;
        'queues: for (q, woken_by) in due {
            // The tick's rows are spoken for: look at this queue next tick, without reading
            // its plan or its buckets now.
            if left == 0 {
                self.sched.done(q, Done::More);
                continue;
            }
            let key = self.sched.key(q).clone();
            let plan = config::with_known_plan(
                key.sender.as_bytes(),
                key.carrier.as_bytes(),
                key.channel.as_bytes(),
                |p| (p.wants.to_vec(), p.partitions),
            );
            let (wants, partitions) = match plan {
                Ok(Some(p)) => p,
                Ok(None) => {
                    self.sched.done(q, Done::Parked);
                    continue;
                }
                Err(e) => {
                    pgrx::warning!(
                        "pg_throttle: queue {key:?} cannot be judged: {}",
                        e.message()
                    );
                    self.sched.done(q, Done::Parked);
                    continue;
                }
            };
            // Queue behind others waiting on a shared limit: no jumping the line.
            for w in &wants {
                let l = w.key.limit_id;
                if Some(l) != woken_by {
                    if let Some(until) = self.sched.waiting_on(l) {
                        self.sched.done(q, Done::Blocked { limit: l, until });
                        continue 'queues;
                    }
                }
            }
            let (tokens, blocker, next) = shmem::room(&wants, now).unwrap_or((0, 0, now));
            if tokens == 0 {
                self.sched.done(
                    q,
                    Done::Blocked {
                        limit: blocker,
                        until: next,
                    },
                );
                continue;
            }
            let n = tokens.min(per_queue).min(left);
            left -= n;
            taken.push(Taken {
                q,
                n,
                wants,
                partitions,
            });
        }

        // 4. Fetch the head rows of those queues: one statement.
        let mut batches: Vec<Vec<Row>> = vec![Vec::new(); taken.len()];
        if !taken.is_empty() {
            let (mut s, mut ca, mut ch, mut n) = (vec![], vec![], vec![], vec![]);
            for t in &taken {
                let k = self.sched.key(t.q);
                s.push(k.sender.clone());
                ca.push(k.carrier.clone());
                ch.push(k.channel.clone());
                n.push(t.n as i32);
            }
            let args: [DatumWithOid; 5] =
                [s.into(), ca.into(), ch.into(), n.into(), ts(now).into()];
            for row in c.select(&st.fetch, None, &args)? {
                let i: i32 = row.get(1)?.unwrap_or(0);
                let id: i64 = row.get(2)?.unwrap_or(0);
                let cost: i32 = row.get(3)?.unwrap_or(1);
                let priority: i16 = row.get(4)?.unwrap_or(0);
                if let Some(b) = batches.get_mut((i - 1) as usize) {
                    b.push(Row {
                        id,
                        priority,
                        cost: cost.max(1) as u64,
                    });
                }
            }
        }

        // 5. Admit in priority, round-robin order, through the shared buckets.
        let order = schedule::interleave(&batches);
        let released = schedule::release(&batches, &order, |b, row| {
            let t = &taken[b];
            match shmem::admit(&t.wants, t.partitions, row.cost, now, false) {
                Ok(Outcome::Admitted { .. }) => Verdict::Admitted,
                Ok(Outcome::Refused {
                    blocker,
                    retry_at: Some(until),
                    ..
                }) => Verdict::Blocked {
                    limit: t.wants[blocker].key.limit_id,
                    until,
                },
                Ok(Outcome::Refused {
                    blocker,
                    retry_at: None,
                    ..
                }) => Verdict::Never {
                    limit: t.wants[blocker].key.limit_id,
                },
                // Shared memory full: try again a little later.
                Err(_) => Verdict::Blocked {
                    limit: 0,
                    until: now + 100_000,
                },
            }
        });

        // 6. Move what was admitted; dead-letter what never can be. One statement each.
        let mut moved = 0u64;
        let mut lag = 0i64;
        if !released.admitted.is_empty() {
            let ids: Vec<i64> = released
                .admitted
                .iter()
                .map(|&(b, r)| batches[b][r].id)
                .collect();
            let row = c
                .update(&st.mv, None, &[ids.into(), ts(now).into()])?
                .first();
            moved = row.get::<i64>(1)?.unwrap_or(0) as u64;
            lag = row.get::<i64>(2)?.unwrap_or(0);
            if moved > 0 {
                c.update(
                    "SELECT pg_notify('throttle_ready', $1)",
                    None,
                    &[moved.to_string().into()],
                )?;
            }
        }
        if !released.never.is_empty() {
            let ids: Vec<i64> = released
                .never
                .iter()
                .map(|&(b, r, _)| batches[b][r].id)
                .collect();
            let reasons: Vec<String> = released
                .never
                .iter()
                .map(|&(b, r, l)| {
                    format!("cost {} exceeds the burst of limit {l}", batches[b][r].cost)
                })
                .collect();
            let n: Option<i64> = c
                .update(
                    &st.dead,
                    None,
                    &[ids.into(), reasons.into(), ts(now).into()],
                )?
                .first()
                .get(1)?;
            dead += n.unwrap_or(0) as u64;
        }

        // 7. Reschedule every queue taken: blocked ones wait on their limit; those that gave
        //    fewer rows than asked are drained or deferred (asked in one statement).
        let mut short: Vec<usize> = Vec::new();
        for (b, t) in taken.iter().enumerate() {
            if let Some((limit, until)) = released.blocked[b] {
                self.sched.done(t.q, Done::Blocked { limit, until });
            } else if (batches[b].len() as u64) < t.n {
                short.push(b);
            } else {
                self.sched.done(t.q, Done::More);
            }
        }
        if !short.is_empty() {
            let (mut s, mut ca, mut ch) = (vec![], vec![], vec![]);
            for &b in &short {
                let k = self.sched.key(taken[b].q);
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
            for (j, &b) in short.iter().enumerate() {
                let done = match next[j] {
                    None => Done::Drained,
                    Some(t) if t <= now => Done::More,
                    Some(t) => Done::Deferred { until: t },
                };
                self.sched.done(taken[b].q, done);
            }
        }

        // 8. When to wake: the next due queue or limit, or the next expiry.
        let e: Option<TimestampWithTimeZone> =
            c.select(&st.next_expiry, None, &[])?.first().get(1)?;
        self.next_expiry = e.map(i64::from);
        shmem::note_tick(now, moved, dead, self.sched.len() as u64, lag);
        let wake = match (self.sched.next_wake(), self.next_expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok(wake.map(|at| {
            let now = unsafe { pg_sys::GetCurrentTimestamp() };
            Duration::from_micros(at.saturating_sub(now).clamp(0, 3_600_000_000) as u64)
        }))
    }

    fn touch(
        &mut self,
        sender: Option<String>,
        carrier: Option<String>,
        channel: Option<String>,
        now: Micros,
    ) {
        if let (Some(sender), Some(carrier), Some(channel)) = (sender, carrier, channel) {
            self.sched.touch(
                &QueueKey {
                    sender,
                    carrier,
                    channel,
                },
                now,
            );
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn withdraw(_code: i32, _arg: pg_sys::Datum) {
    shmem::register_worker(std::ptr::null_mut(), 0);
    // Exit status 1: the postmaster restarts the worker after a pg_terminate_backend (exit 0
    // would unregister it for good); at shutdown nothing is restarted anyway.
    unsafe { pg_sys::proc_exit(1) };
}

/// The worker's entry point.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_throttle_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let db = gucs::database_name();
    BackgroundWorker::connect_worker_to_spi(Some(&db), None);
    shmem::register_worker(unsafe { pg_sys::MyLatch }, unsafe { pg_sys::MyProcPid });
    shmem::set_worker_database(unsafe { pg_sys::MyDatabaseId }.to_u32());
    // However the worker ends (an error exits the process), withdraw its latch.
    unsafe { pg_sys::before_shmem_exit(Some(withdraw), pg_sys::Datum::from(0usize)) };
    pgrx::log!("pg_throttle release worker started for database \"{db}\"");
    let mut w = Worker::new();
    loop {
        if BackgroundWorker::sighup_received() {
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
    unsafe { pg_sys::proc_exit(1) };
}
