//! At-least-once delivery (`sql/delivery.sql`): consumers `read()` released messages with a
//! visibility timeout and `ack()` each with its outcome. The release worker's part is here:
//! messages whose visibility timeout passed (a consumer died, or a failed one's back-off
//! ended) go back to their queues, through the limits again, or to `throttle.dead` after
//! `throttle.max_attempts`; and what was sent is pruned after `throttle.sent_retention`.
//! Both are a bounded batch found through an index; a row a consumer holds is skipped.

use crate::limiter::Micros;
use crate::worker::ts;
use pgrx::pg_sys::BuiltinOid::*;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

pgrx::extension_sql_file!(
    "../sql/delivery.sql",
    name = "delivery",
    requires = [
        "schema",
        "queue_tables",
        "tenancy",
        "take",
        note_inflight_due
    ]
);

/// Internal, for `read_for`, `ack_for` and `extend_for`: a message in flight falls due at
/// `at`; the worker wakes for it if that is sooner than what it knew.
#[pg_extern(volatile, parallel_unsafe)]
fn note_inflight_due(at: TimestampWithTimeZone) {
    crate::shmem::note_inflight_due(i64::from(at));
}

/// What the worker knows of delivery between ticks.
#[derive(Default)]
pub struct State {
    /// Whether this database's schema has `throttle.inflight` (None: not looked yet; an
    /// extension not yet updated to 0.6.0 has none).
    present: Option<bool>,
    next_prune: Micros,
    /// The earliest `visible_at` in the table when last read (`Micros::MAX`: none; None:
    /// read it now), and when that was.
    next_due: Option<Micros>,
    read_at: Micros,
}

impl State {
    /// Look again (the configuration changed: perhaps an ALTER EXTENSION UPDATE).
    pub fn clear(&mut self) {
        self.present = None;
        self.next_due = None;
    }
}

/// What a tick did.
pub struct Done {
    pub died: i64,
    /// When to look again (the next visibility timeout, or more to do now).
    pub wake: Option<Micros>,
}

const SQL_NEXT_DUE: &str = "SELECT min(visible_at) FROM throttle.inflight";

/// Messages whose visibility timeout passed: back to their queue, keeping their id (so at
/// the front of it) and counting their attempts, or dead after the last attempt.
const SQL_RECLAIM: &str = "
    WITH due AS (
        SELECT f.id FROM throttle.inflight f
         WHERE f.visible_at <= $1
         ORDER BY f.visible_at LIMIT $2 FOR UPDATE SKIP LOCKED),
    gone AS (
        DELETE FROM throttle.inflight f USING due WHERE f.id = due.id
        RETURNING f.id, f.sender, f.carrier, f.channel, f.recipient, f.cost, f.priority,
                  f.payload, f.not_before, f.expires_at, f.enqueued_at, f.attempt, f.last_error),
    died AS (
        INSERT INTO throttle.dead (id, sender, carrier, channel, recipient, cost, priority, payload,
                                   not_before, expires_at, enqueued_at, died_at, reason, error_code)
        SELECT g.id, g.sender, g.carrier, g.channel, g.recipient, g.cost, g.priority, g.payload,
               g.not_before, g.expires_at, g.enqueued_at, $1,
               CASE WHEN g.last_error IS NULL
                    THEN format('not acknowledged within its visibility timeout, %s times', g.attempt)
                    ELSE format('failed %s times', g.attempt) END,
               g.last_error
          FROM gone g WHERE g.attempt >= $3
        RETURNING id),
    forgotten AS (
        DELETE FROM throttle.attempt a USING died WHERE a.id = died.id),
    counted AS (
        INSERT INTO throttle.attempt AS a (id, attempts, last_error)
        SELECT g.id, g.attempt, g.last_error FROM gone g WHERE g.attempt < $3
        ON CONFLICT (id) DO UPDATE SET attempts = excluded.attempts, last_error = excluded.last_error),
    back AS (
        INSERT INTO throttle.pending (id, sender, carrier, channel, recipient, cost, priority,
                                      payload, not_before, expires_at, enqueued_at)
        OVERRIDING SYSTEM VALUE
        SELECT g.id, g.sender, g.carrier, g.channel, g.recipient, g.cost, g.priority,
               g.payload, g.not_before, g.expires_at, g.enqueued_at
          FROM gone g WHERE g.attempt < $3
        RETURNING id)
    SELECT (SELECT count(*) FROM back), (SELECT count(*) FROM died)";

const SQL_PRUNE_SENT: &str = "
    WITH old AS (SELECT s.id FROM throttle.sent s WHERE s.sent_at < $1 ORDER BY s.sent_at LIMIT $2),
         gone AS (DELETE FROM throttle.sent s USING old WHERE s.id = old.id RETURNING 1)
    SELECT count(*) FROM gone";

/// Rows moved back or pruned per statement.
const BATCH: i64 = 1_000;

/// Clears [`crate::queue_cap::REQUEUE`] when dropped (also when the statement fails).
struct Requeue;

impl Requeue {
    fn start() -> Self {
        crate::queue_cap::REQUEUE.with(|r| *r = true);
        Requeue
    }
}

impl Drop for Requeue {
    fn drop(&mut self) {
        crate::queue_cap::REQUEUE.with(|r| *r = false);
    }
}

/// How often the worker reads the table's next visibility timeout when nothing it knows of
/// is due: a message read in a transaction that had not committed when it looked is found
/// within this (one that falls due sooner than anything noted wakes it at once).
const REREAD_US: Micros = 1_000_000;

/// The worker's delivery step of a tick (see the module's documentation).
pub fn tick(c: &mut SpiClient<'_>, st: &mut State, now: Micros) -> pgrx::spi::Result<Done> {
    let mut done = Done {
        died: 0,
        wake: None,
    };
    if st.present.is_none() {
        st.present = Some(crate::backend::has_table(c, "throttle.inflight")?);
    }
    if st.present != Some(true) {
        return Ok(done);
    }
    let noted = crate::shmem::inflight_due(now);
    let next = |c: &mut SpiClient<'_>| -> pgrx::spi::Result<Micros> {
        let p = crate::contacts::kept(c, SQL_NEXT_DUE, &[], false)?;
        Ok(c.select(&*p, None, &[])?
            .first()
            .get::<TimestampWithTimeZone>(1)?
            .map_or(Micros::MAX, i64::from))
    };
    // The table is read when what it said last is due, when a consumer noted a time that
    // came, and once a second at most otherwise: not on every tick.
    let stale = match st.next_due {
        None => true,
        Some(d) => d <= now || noted <= now || now >= st.read_at + REREAD_US,
    };
    if stale {
        let mut due = next(c)?;
        if due <= now {
            let p =
                crate::contacts::kept(c, SQL_RECLAIM, &[TIMESTAMPTZOID, INT8OID, INT4OID], true)?;
            let (requeued, died) = {
                let _requeue = Requeue::start();
                c.update(
                    &*p,
                    None,
                    &[
                        ts(now).into(),
                        BATCH.into(),
                        crate::gucs::max_attempts().into(),
                    ],
                )?
                .first()
                .get_two::<i64, i64>()?
            };
            done.died = died.unwrap_or(0);
            // A whole batch: more may be due (at once); else the next one's time.
            due = if requeued.unwrap_or(0) + done.died >= BATCH {
                now
            } else {
                next(c)?
            };
        }
        st.next_due = Some(due);
        st.read_at = now;
    }
    let due = st
        .next_due
        .unwrap_or(Micros::MAX)
        .min(if noted > now { noted } else { Micros::MAX });
    // Asleep, the worker wakes for the next timeout it knows of; while anything is in flight
    // it also looks again within a second (see REREAD_US).
    done.wake = (due != Micros::MAX).then(|| due.min(now + REREAD_US));
    let retention = crate::gucs::sent_retention_us();
    if retention > 0 && now >= st.next_prune {
        let p = crate::contacts::kept(c, SQL_PRUNE_SENT, &[TIMESTAMPTZOID, INT8OID], true)?;
        let n = c
            .update(&*p, None, &[ts(now - retention).into(), BATCH.into()])?
            .first()
            .get::<i64>(1)?
            .unwrap_or(0);
        // A batch every 10 s (on a tick that comes anyway), every 100 ms while whole
        // batches go.
        st.next_prune = now + if n >= BATCH { 100_000 } else { 10_000_000 };
        if n >= BATCH {
            done.wake = Some(done.wake.map_or(st.next_prune, |w| w.min(st.next_prune)));
        }
    }
    Ok(done)
}
