//! Configuration change tracking and shared-memory state for the monitoring views.

use crate::error::{self, Result};
use crate::limiter::{Check, Micros};
use crate::{config, shmem};
use pgrx::prelude::*;
use pgrx::{register_xact_callback, PgXactCallbackEvent};
use std::cell::Cell;

thread_local! {
    static REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// Called by the configuration tables' statement trigger: this backend forgets its cached
/// limits now (it must see its own uncommitted change), and when the transaction ends every
/// backend is told to forget theirs.
#[pg_extern(volatile, parallel_unsafe)]
fn note_config_change() {
    config::invalidate_local();
    crate::caps::invalidate_local();
    if REGISTERED.get() {
        return;
    }
    REGISTERED.set(true);
    let done = || {
        shmem::bump_config_generation();
        // The worker recounts queue caps and rereads caps on a new generation: now.
        shmem::wake_worker();
        config::invalidate_local();
        crate::caps::invalidate_local();
        REGISTERED.set(false);
    };
    register_xact_callback(PgXactCallbackEvent::Commit, done);
    crate::error::refuse_prepare(
        "cannot PREPARE a transaction that changed pg_throttle's limits or senders",
        "Commit it directly, so that every session sees the change when it commits.",
    );
    register_xact_callback(PgXactCallbackEvent::Abort, done);
}

fn to_ts(us: Micros) -> Option<TimestampWithTimeZone> {
    TimestampWithTimeZone::try_from(us).ok()
}

/// Every live bucket in shared memory: the limit it belongs to, the database of that limit,
/// its sub-key, whole tokens available at `at`, when it will be full again, when it next has
/// room for one, and whether it counts windows (burst NULL) or is a token bucket.
#[pg_extern(volatile, parallel_safe)]
fn bucket_state(
    at: default!(TimestampWithTimeZone, "now()"),
) -> Result<
    TableIterator<
        'static,
        (
            name!(limit_id, i64),
            name!(database, pg_sys::Oid),
            name!(sub_key, i64),
            name!(available, i64),
            name!(full_at, Option<TimestampWithTimeZone>),
            name!(rate, i64),
            name!(period_us, i64),
            name!(burst, i64),
            name!(next_room_at, Option<TimestampWithTimeZone>),
            name!(window, bool),
        ),
    >,
> {
    let now: Micros = at.into();
    let rows = shmem::snapshot().map_err(pgrx::pg_sys::panic::ErrorReport::from)?;
    Ok(TableIterator::new(rows.into_iter().map(move |(k, b)| {
        let next = match b.check(1, now) {
            Check::Room { .. } => Some(now),
            Check::Wait { at } => Some(at),
            Check::Never => None,
        };
        (
            k.limit_id,
            pg_sys::Oid::from((k.sub >> 32) as u32),
            (k.sub & 0xFFFF_FFFF) as i64,
            b.available(now) as i64,
            to_ts(b.full_from(now)),
            b.rate.count as i64,
            b.rate.period_us as i64,
            b.rate.max_at_once() as i64,
            next.and_then(to_ts),
            b.rate.is_window(),
        )
    })))
}

/// Shared-memory capacity: live buckets, the configured maximum, and when this shared memory
/// was made (the server's start, or its last crash restart).
#[pg_extern(volatile, parallel_safe)]
fn shmem_usage() -> Result<
    TableIterator<
        'static,
        (
            name!(live_buckets, i64),
            name!(max_buckets, i64),
            name!(started_at, Option<TimestampWithTimeZone>),
        ),
    >,
> {
    let (live, max) = shmem::usage().map_err(pgrx::pg_sys::panic::ErrorReport::from)?;
    let started = shmem::started_at().map_err(pgrx::pg_sys::panic::ErrorReport::from)?;
    if max <= 0 {
        return Err(error::internal("shared memory has no capacity"));
    }
    Ok(TableIterator::once((live, max, to_ts(started))))
}

/// Every fixed-size table in shared memory: what it holds, the setting that sizes it (a
/// restart applies a new value), entries in use, entries it has room for, and bytes per entry.
#[pg_extern(volatile, parallel_safe)]
fn shmem_tables() -> Result<
    TableIterator<
        'static,
        (
            name!(table_name, String),
            name!(setting, String),
            name!(used, i64),
            name!(size, i64),
            name!(entry_bytes, i64),
        ),
    >,
> {
    let rows = shmem::tables().map_err(pgrx::pg_sys::panic::ErrorReport::from)?;
    Ok(TableIterator::new(rows.into_iter().map(
        |(table, setting, used, size, bytes)| (table.into(), setting.into(), used, size, bytes),
    )))
}

/// The release worker: its pid (NULL when none runs), last tick and how long ago, whether it
/// is healthy, ticks (and failed ones: reported in the log and tried again), rows released
/// and dead-lettered since the server started, queues it works on and parked ones, how late
/// its last release ran (after its queues became releasable), enqueued ids not yet looked
/// at, and its release rate.
#[pg_extern(volatile, parallel_safe)]
fn worker_state() -> Result<
    TableIterator<
        'static,
        (
            name!(pid, Option<i32>),
            name!(last_tick_at, Option<TimestampWithTimeZone>),
            name!(seconds_since_tick, Option<f64>),
            name!(healthy, bool),
            name!(ticks, i64),
            name!(failed_ticks, i64),
            name!(released, i64),
            name!(dead, i64),
            name!(queues, i64),
            name!(parked_queues, i64),
            name!(late_ms, f64),
            name!(unseen_enqueues, i64),
            name!(released_per_s, f64),
        ),
    >,
> {
    // SAFETY: `GetCurrentTimestamp` only reads the system clock; it has no preconditions and
    // is called on this backend's own thread.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    let f = shmem::worker_figures(now).map_err(pgrx::pg_sys::panic::ErrorReport::from)?;
    let since = (f.last_tick_at != 0).then(|| (now - f.last_tick_at).max(0) as f64 / 1e6);
    // The worker ticks at least every rescan interval, idle or not: healthy while it runs
    // and its last tick is no older than two intervals (plus a tick's own time).
    let fresh = 2.0 * crate::gucs::rescan_interval_us() as f64 / 1e6 + 5.0;
    let healthy = f.pid != 0 && since.is_some_and(|s| s <= fresh);
    Ok(TableIterator::once((
        (f.pid != 0).then_some(f.pid),
        (f.last_tick_at != 0)
            .then(|| to_ts(f.last_tick_at))
            .flatten(),
        since,
        healthy,
        f.ticks as i64,
        f.failed as i64,
        f.released as i64,
        f.dead as i64,
        f.queues as i64,
        f.parked as i64,
        f.late_us as f64 / 1000.0,
        f.ring_len as i64,
        f.per_s,
    )))
}

/// Calendar-cap capacity leased to shared memory for `throttle_admit` and not yet spent.
#[pg_extern(volatile, parallel_safe)]
fn cap_leases() -> TableIterator<
    'static,
    (
        name!(cap_id, i64),
        name!(database, pg_sys::Oid),
        name!(window_start, Option<TimestampWithTimeZone>),
        name!(window_end, Option<TimestampWithTimeZone>),
        name!(unspent, i64),
        name!(exhausted, bool),
    ),
> {
    TableIterator::new(shmem::leases().into_iter().map(|l| {
        (
            l.cap_id,
            pg_sys::Oid::from(l.db),
            to_ts(l.window_start),
            to_ts(l.window_end),
            l.left,
            l.full,
        )
    }))
}

/// Messages counted as waiting under each queue cap (in the worker's database).
#[pg_extern(volatile, parallel_safe)]
fn queue_cap_counts() -> TableIterator<
    'static,
    (
        name!(queue_cap_id, i64),
        name!(database, pg_sys::Oid),
        name!(max_waiting, i64),
        name!(waiting, i64),
    ),
> {
    let (db, counts) = shmem::queue_counts();
    TableIterator::new(
        counts
            .into_iter()
            .map(move |q| (q.id, pg_sys::Oid::from(db), q.limit, q.waiting)),
    )
}
