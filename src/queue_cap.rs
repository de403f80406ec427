//! Queue caps at enqueue: every message that enters `throttle.pending` is counted under the
//! queue caps of its scope in shared memory, atomically with the check, so concurrent
//! enqueues can never overfill a cap. A rolled-back enqueue (or savepoint) gives its place
//! back; a message that leaves pending (released, dead-lettered, deleted by hand) frees its
//! place when that transaction commits, never before. The worker counts every cap afresh,
//! under a lock that no enqueue runs under, when it starts and after each configuration
//! change.

use crate::backend::BackendLocal;
use crate::error::Result;
use crate::{caps, shmem};
use pgrx::pg_sys;
use pgrx::prelude::*;

/// One count this transaction made.
struct Entry {
    sub: pg_sys::SubTransactionId,
    id: i64,
    /// true: counted at enqueue (given back if it rolls back); false: to uncount at commit.
    reserved: bool,
}

#[derive(Default)]
struct State {
    entries: Vec<Entry>,
    callbacks: bool,
    prepare_refused: bool,
}

static STATE: BackendLocal<Option<State>> = BackendLocal::new(None);

fn with_state<R>(f: impl FnOnce(&mut State) -> R) -> R {
    STATE.with(|s| f(s.get_or_insert_with(State::default)))
}

fn db() -> u32 {
    // SAFETY: MyDatabaseId is a plain backend-local value, set when the backend connects and
    // written only by this backend's one thread.
    unsafe { pg_sys::MyDatabaseId }.to_u32()
}

/// At the end of the transaction: give back what it counted (abort) or uncount what left
/// (commit).
///
/// # Safety
/// Called only by PostgreSQL, as the transaction callback [`note`] registered.
#[pg_guard]
unsafe extern "C-unwind" fn xact_callback(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    let uncount = match event {
        pg_sys::XactEvent::XACT_EVENT_COMMIT | pg_sys::XactEvent::XACT_EVENT_PARALLEL_COMMIT => {
            false
        }
        pg_sys::XactEvent::XACT_EVENT_ABORT | pg_sys::XactEvent::XACT_EVENT_PARALLEL_ABORT => true,
        _ => return,
    };
    let entries = with_state(|s| {
        s.prepare_refused = false;
        std::mem::take(&mut s.entries)
    });
    for e in entries {
        // At commit: the messages that left. At abort: the messages that never came.
        if e.reserved == uncount {
            shmem::queue_unreserve(db(), e.id, 1);
        }
    }
}

/// At the end of a subtransaction: its counts pass to its parent (commit), or what it counted
/// is given back (abort).
///
/// # Safety
/// Called only by PostgreSQL, as the subtransaction callback [`note`] registered.
#[pg_guard]
unsafe extern "C-unwind" fn subxact_callback(
    event: pg_sys::SubXactEvent::Type,
    my: pg_sys::SubTransactionId,
    parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    match event {
        pg_sys::SubXactEvent::SUBXACT_EVENT_COMMIT_SUB => with_state(|s| {
            for e in s.entries.iter_mut().filter(|e| e.sub == my) {
                e.sub = parent;
            }
        }),
        pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB => {
            let undone: Vec<i64> = with_state(|s| {
                let mut undone = Vec::new();
                s.entries.retain(|e| {
                    if e.sub != my {
                        return true;
                    }
                    if e.reserved {
                        undone.push(e.id);
                    }
                    false
                });
                undone
            });
            for id in undone {
                shmem::queue_unreserve(db(), id, 1);
            }
        }
        _ => {}
    }
}

/// Set (by the worker, around its statement) while messages come back to their queues from
/// `throttle.inflight`: they are counted under their queue caps but never refused, and keep
/// their ids.
pub static REQUEUE: crate::backend::BackendLocal<bool> = crate::backend::BackendLocal::new(false);

fn note(id: i64, reserved: bool) {
    // SAFETY: GetCurrentSubTransactionId only reads backend-local transaction state.
    let sub = unsafe { pg_sys::GetCurrentSubTransactionId() };
    let first = with_state(|s| {
        s.entries.push(Entry { sub, id, reserved });
        let register = !std::mem::replace(&mut s.callbacks, true);
        let refuse = !std::mem::replace(&mut s.prepare_refused, true);
        (register, refuse)
    });
    if first.0 {
        // SAFETY: registers each callback once per backend (`callbacks` is set first), with a
        // null argument that neither reads; both are guarded functions with the signatures
        // PostgreSQL calls, in this library, which PostgreSQL never unloads.
        unsafe {
            pg_sys::RegisterXactCallback(Some(xact_callback), std::ptr::null_mut());
            pg_sys::RegisterSubXactCallback(Some(subxact_callback), std::ptr::null_mut());
        }
    }
    if first.1 {
        crate::error::refuse_prepare(
            "cannot PREPARE a transaction that changed messages under a queue cap",
            "Commit it directly; queue caps are counted when the transaction ends.",
        );
    }
}

/// A message enters the queue of (sender, carrier, channel): count it under each of its
/// queue caps. None when counted; when a cap is full, what the error says about it.
fn enter(sender: &str, carrier: &str, channel: &str) -> Result<Option<Vec<Option<String>>>> {
    if !caps::any_queue_caps()? {
        return Ok(None);
    }
    let qcaps = caps::queue_caps_for(sender, carrier, channel)?;
    if qcaps.is_empty() || !shmem::worker_serves(db()) {
        return Ok(None);
    }
    let ids: smallvec::SmallVec<[i64; 4]> = qcaps.iter().map(|q| q.id).collect();
    match shmem::queue_reserve(db(), &ids, 1, REQUEUE.with(|r| *r)) {
        Err(_) => Ok(None), // not preloaded: nothing is counted anywhere
        Ok(Ok(())) => {
            for id in ids {
                note(id, true);
            }
            Ok(None)
        }
        Ok(Err(shmem::QueueRefusal::Full(count))) => {
            let q = qcaps.iter().find(|q| q.id == count.id).unwrap_or(&qcaps[0]);
            Ok(Some(vec![
                Some(q.label.clone()),
                Some(format!(
                    "{} {}",
                    q.coverage.scope.map_or("?", |s| s.as_str()),
                    q.coverage.scope_id
                )),
                Some(count.limit.to_string()),
                Some(count.waiting.to_string()),
                q.error_code.clone(),
            ]))
        }
        Ok(Err(shmem::QueueRefusal::NotCounted(_))) => {
            shmem::wake_worker();
            Err(pgrx::pg_sys::panic::ErrorReport::new(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!(
                    "the messages waiting under the queue caps of sender \"{sender}\" are not counted yet"
                ),
                "pg_throttle",
            )
            .set_detail("The release worker counts them when it starts and after a change to the configuration.")
            .set_hint("Retry in a moment; if it persists, check that the worker runs in this database (throttle.worker_state())."))
        }
    }
}

/// Internal, for the enqueue trigger: count a new message under its queue caps; NULL when
/// counted, else [cap, scope, max_waiting, waiting, error_code] of the full cap.
#[pg_extern(volatile, parallel_unsafe)]
fn queue_enter(sender: &str, carrier: &str, channel: &str) -> Result<Option<Vec<Option<String>>>> {
    enter(sender, carrier, channel)
}

#[unsafe(no_mangle)]
#[doc(hidden)]
pub extern "C" fn pg_finfo_pg_throttle_queue_caps_on() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// Internal, for the enqueue trigger's WHEN, evaluated for every enqueued row: whether any
/// queue cap is configured. A plain V1 function (pgrx's wrapper cost more than the check).
///
/// # Safety
/// Called only by PostgreSQL's function manager, as `throttle.queue_caps_on()`; it reads
/// nothing of `fcinfo`.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn pg_throttle_queue_caps_on(
    _fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    pg_sys::Datum::from(crate::error::or_raise(
        caps::any_queue_caps().map_err(Box::new),
    ))
}

/// A message leaves the queue of (sender, carrier, channel): uncount it when this
/// transaction commits.
pub fn leave(sender: &str, carrier: &str, channel: &str) -> Result<()> {
    if !caps::any_queue_caps()? {
        return Ok(());
    }
    for q in caps::queue_caps_for(sender, carrier, channel)? {
        note(q.id, false);
    }
    Ok(())
}

pgrx::extension_sql!(
    r#"
-- Queue caps at enqueue: the count and the check are one atomic step in shared memory; a
-- full cap fails the statement with SQLSTATE PT429 (raised here, in PL/pgSQL, which keeps
-- any SQLSTATE). Only runs when a queue cap exists.
CREATE FUNCTION throttle.pending_enter() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    f text[];
BEGIN
    f := throttle.queue_enter(NEW.sender, NEW.carrier, NEW.channel);
    IF f IS NOT NULL THEN
        RAISE EXCEPTION 'queue cap "%" is full: % messages waiting, at most %', f[1], f[4], f[3]
            USING ERRCODE = 'PT429',
                  DETAIL = format('scope: %s; max_waiting: %s; waiting: %s%s', f[2], f[3], f[4],
                                  coalesce('; error code: ' || f[5], '')),
                  HINT = 'Retry once the worker has released some, or raise max_waiting (or validity) in throttle.queue_cap.';
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION throttle.queue_caps_on() RETURNS boolean
VOLATILE PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'pg_throttle_queue_caps_on';

CREATE TRIGGER pending_enter AFTER INSERT ON throttle.pending FOR EACH ROW
    WHEN (throttle.queue_caps_on())
    EXECUTE FUNCTION throttle.pending_enter();
CREATE TRIGGER pending_reenter AFTER UPDATE OF sender, carrier, channel ON throttle.pending FOR EACH ROW
    WHEN ((OLD.sender, OLD.carrier, OLD.channel) IS DISTINCT FROM (NEW.sender, NEW.carrier, NEW.channel)
          AND throttle.queue_caps_on())
    EXECUTE FUNCTION throttle.pending_enter();
REVOKE ALL ON FUNCTION throttle.queue_enter(text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION throttle.pending_enter() FROM PUBLIC;
"#,
    name = "queue_cap_triggers",
    requires = ["queue_tables", queue_enter],
);
