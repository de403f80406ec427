//! At-least-once delivery (`sql/delivery.sql`): consumers `read()` released messages with a
//! visibility timeout and `ack()` each with its outcome. The release worker's part is here:
//! messages whose visibility timeout passed (a consumer died, or a failed one's back-off
//! ended) go back to their queues, through the limits again, or to `throttle.dead` after
//! `throttle.max_attempts`; and what was sent is pruned after `throttle.sent_retention`.
//! Both are a bounded batch found through an index; a row a consumer holds is skipped.

use crate::limiter::Micros;
use crate::worker::ts;
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
}

impl State {
    /// Look again (the configuration changed: perhaps an ALTER EXTENSION UPDATE).
    pub fn clear(&mut self) {
        self.present = None;
    }
}

/// What a tick did.
pub struct Done {
    pub requeued: i64,
    pub died: i64,
    /// When to look again (the next visibility timeout, or more to do now).
    pub wake: Option<Micros>,
}

const SQL_PRESENT: &str = "SELECT to_regclass('throttle.inflight') IS NOT NULL";

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

/// The worker's delivery step of a tick (see the module's documentation).
pub fn tick(c: &mut SpiClient<'_>, st: &mut State, now: Micros) -> pgrx::spi::Result<Done> {
    let mut done = Done {
        requeued: 0,
        died: 0,
        wake: None,
    };
    if st.present.is_none() {
        st.present = c.select(SQL_PRESENT, None, &[])?.first().get::<bool>(1)?;
    }
    if st.present != Some(true) {
        return Ok(done);
    }
    let noted = crate::shmem::inflight_due(now);
    let next = |c: &mut SpiClient<'_>| -> pgrx::spi::Result<Option<Micros>> {
        Ok(c.select(SQL_NEXT_DUE, None, &[])?
            .first()
            .get::<TimestampWithTimeZone>(1)?
            .map(i64::from))
    };
    let mut due = next(c)?;
    if due.is_some_and(|d| d <= now) {
        let row = {
            let _requeue = Requeue::start();
            c.update(
                SQL_RECLAIM,
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
        done.requeued = row.0.unwrap_or(0);
        done.died = row.1.unwrap_or(0);
        // A whole batch: more may be due (at once); else the next one's time.
        due = if done.requeued + done.died >= BATCH {
            Some(now)
        } else {
            next(c)?
        };
    }
    done.wake = due;
    if noted != i64::MAX && noted > now {
        done.wake = Some(done.wake.map_or(noted, |w| w.min(noted)));
    }
    let retention = crate::gucs::sent_retention_us();
    if retention > 0 && now >= st.next_prune {
        let n = c
            .update(
                SQL_PRUNE_SENT,
                None,
                &[ts(now - retention).into(), BATCH.into()],
            )?
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
