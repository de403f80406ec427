//! The enqueue side: a row trigger on `throttle.pending` notes each new row's queue, and at
//! commit the ids are handed to the worker through shared memory and its latch is set, so
//! the worker neither polls nor scans. Only the first row per queue per transaction is
//! noted (the worker fetches the rest by queue).

use crate::backend::BackendLocal;
use crate::{queue_cap, shmem};
use pgrx::prelude::*;
use pgrx::{register_xact_callback, PgXactCallbackEvent};
use rustc_hash::FxHashSet;
use std::hash::Hasher;

pgrx::extension_sql!(
    r#"
CREATE FUNCTION throttle.pending_changed() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'pg_throttle_pending_changed';

CREATE TRIGGER pending_changed AFTER INSERT OR UPDATE OF sender, carrier, channel, priority, not_before
    ON throttle.pending FOR EACH ROW EXECUTE FUNCTION throttle.pending_changed();

-- Every new message is checked (22023 for a bad sender, carrier, channel or time) and gets
-- its id from the sequence, whatever the INSERT said (only a superuser's restore keeps ids).
CREATE FUNCTION throttle.pending_check() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'pg_throttle_pending_check';
CREATE TRIGGER pending_check BEFORE INSERT ON throttle.pending
    FOR EACH ROW EXECUTE FUNCTION throttle.pending_check();

-- Messages deleted by hand free their place under queue caps (the worker uncounts what it
-- moves itself).
CREATE TRIGGER pending_deleted AFTER DELETE ON throttle.pending FOR EACH ROW
    WHEN (pg_catalog.current_setting('pg_throttle.worker', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION throttle.pending_changed();
"#,
    name = "pending_trigger",
    requires = ["queue_tables"],
);

#[derive(Default)]
struct Noted {
    ids: Vec<i64>,
    /// (queue, subtransaction) already noted: a row of a queue noted in a subtransaction
    /// that later rolls back is noted again when inserted in another one.
    queues: FxHashSet<(u64, u32)>,
    registered: bool,
    /// Rows were deleted after rows were noted: a noted id may be gone while its queue has
    /// rows that were not noted (insert, delete, insert in one transaction).
    rescan: bool,
}

static NOTED: BackendLocal<Option<Noted>> = BackendLocal::new(None);

fn with_noted<R>(f: impl FnOnce(&mut Noted) -> R) -> R {
    NOTED.with(|n| f(n.get_or_insert_with(Noted::default)))
}

#[unsafe(no_mangle)]
#[doc(hidden)]
pub extern "C" fn pg_finfo_pg_throttle_pending_changed() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// Columns of throttle.pending the trigger reads: id, sender, carrier, channel.
const COLUMNS: usize = 4;

/// AFTER INSERT OR UPDATE row trigger on throttle.pending.
///
/// # Safety
/// Called only by PostgreSQL's function manager, with a valid `fcinfo`, as the function of
/// `throttle.pending_changed()`.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn pg_throttle_pending_changed(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: `fcinfo` is valid (the function manager calls us). Its context is read as
    // TriggerData only once it is checked to be non-null and tagged T_TriggerData, and the
    // trigger manager then gives an open relation with its descriptor, and the event's rows
    // (the new or deleted row is checked for null; an UPDATE always has its old row). A row
    // is deformed with that descriptor into arrays of `natts` entries; its first COLUMNS
    // attributes are checked to be int8, then text, and not dropped, and their nulls are
    // checked before any is read as a bigint or as text (by `text_bytes` and `queue_key`).
    // MyDatabaseId and GetCurrentSubTransactionId only read backend-local state.
    unsafe {
        let td = (*fcinfo).context.cast::<pg_sys::TriggerData>();
        if td.is_null() || (*td).type_ != pg_sys::NodeTag::T_TriggerData {
            pgrx::error!("throttle.pending_changed() must be called as a trigger");
        }
        // Only as the row trigger on throttle.pending: (id bigint, sender, carrier, channel text).
        let event = (*td).tg_event;
        let row_level = event & pg_sys::TRIGGER_EVENT_ROW != 0;
        let tuple = if !(*td).tg_newtuple.is_null() {
            (*td).tg_newtuple
        } else {
            (*td).tg_trigtuple
        };
        let desc = (*(*td).tg_relation).rd_att;
        let natts = (*desc).natts as usize;
        let shape_ok = natts >= COLUMNS
            && (0..COLUMNS).all(|i| {
                let want = if i == 0 {
                    pg_sys::INT8OID
                } else {
                    pg_sys::TEXTOID
                };
                let att = (*desc).attrs.as_slice(natts).get(i);
                att.is_some_and(|a| a.atttypid == want && !a.attisdropped)
            });
        if !row_level || tuple.is_null() || !shape_ok {
            pgrx::error!("throttle.pending_changed() is the row trigger of throttle.pending only");
        }
        let mut values = vec![pg_sys::Datum::from(0usize); natts];
        let mut nulls = vec![true; natts];
        pg_sys::heap_deform_tuple(tuple, desc, values.as_mut_ptr(), nulls.as_mut_ptr());
        if nulls[..COLUMNS].iter().any(|&n| n)
            || !shmem::worker_serves(pg_sys::MyDatabaseId.to_u32())
        {
            return pg_sys::Datum::from(0usize);
        }
        // Queue caps: a message that leaves (deleted, or moved to another queue) is uncounted
        // at commit. (Entering is counted by the pending_enter trigger, which raises PT429
        // when a cap is full.) Nothing to do, and no text copied, when no queue cap exists.
        let op = event & pg_sys::TRIGGER_EVENT_OPMASK;
        let caps_on = crate::error::or_raise(crate::caps::any_queue_caps().map_err(Box::new));
        if op == pg_sys::TRIGGER_EVENT_DELETE {
            with_noted(|n| {
                if n.registered {
                    n.rescan = true;
                }
            });
            if caps_on {
                let key = queue_key(&values);
                if let Err(e) = queue_cap::leave(&key[0], &key[1], &key[2]) {
                    e.report(pgrx::PgLogLevel::ERROR);
                }
            }
            return pg_sys::Datum::from(0usize);
        }
        if caps_on && op == pg_sys::TRIGGER_EVENT_UPDATE {
            let old = (*td).tg_trigtuple;
            let mut ov = vec![pg_sys::Datum::from(0usize); natts];
            let mut on = vec![true; natts];
            pg_sys::heap_deform_tuple(old, desc, ov.as_mut_ptr(), on.as_mut_ptr());
            if !on[..COLUMNS].iter().any(|&n| n) {
                let (old, new) = (queue_key(&ov), queue_key(&values));
                if old != new {
                    if let Err(e) = queue_cap::leave(&old[0], &old[1], &old[2]) {
                        e.report(pgrx::PgLogLevel::ERROR);
                    }
                }
            }
        }
        let id = values[0].value() as i64;
        let mut h = rustc_hash::FxHasher::default();
        for &d in &values[1..COLUMNS] {
            h.write(text_bytes(d));
            h.write_u8(0);
        }
        note(id, h.finish());
        // AFTER trigger: the return value is ignored.
        pg_sys::Datum::from(0usize)
    }
}

/// Note new row `id` of the queue hashed `queue` for the worker: once per queue and
/// subtransaction (the worker fetches the rest by queue). The transaction's first note
/// registers the callbacks that hand the ids over at commit and forget them on abort.
fn note(id: i64, queue: u64) {
    // SAFETY: GetCurrentSubTransactionId only reads backend-local state.
    let queue = (queue, unsafe { pg_sys::GetCurrentSubTransactionId() });
    let register = with_noted(|n| {
        if n.queues.insert(queue) {
            n.ids.push(id);
        }
        !std::mem::replace(&mut n.registered, true)
    });
    if register {
        register_xact_callback(PgXactCallbackEvent::Commit, || {
            let (ids, rescan) = with_noted(|n| {
                n.queues.clear();
                n.registered = false;
                (std::mem::take(&mut n.ids), std::mem::take(&mut n.rescan))
            });
            shmem::ring_push(&ids, rescan);
        });
        // A prepared transaction's rows become visible at COMMIT PREPARED, in another
        // session, after any callback here: refuse rather than lose track of them.
        crate::error::refuse_prepare(
            "cannot PREPARE a transaction that enqueued messages into throttle.pending",
            "Commit it directly; pg_throttle hands new messages to its worker at commit.",
        );
        register_xact_callback(PgXactCallbackEvent::Abort, || {
            with_noted(|n| {
                n.queues.clear();
                n.ids.clear();
                n.registered = false;
                n.rescan = false;
            });
        });
    }
}

/// The bytes of a non-null text datum of a deformed row (detoasted only when compressed or
/// out of line).
///
/// # Safety
/// `d` is a non-null text datum, and it (or its detoasted copy, made in the current memory
/// context) stays valid for `'a`.
unsafe fn text_bytes<'a>(d: pg_sys::Datum) -> &'a [u8] {
    // SAFETY: the caller gives a non-null text datum, so `p` is a varlena: its header says
    // whether it is compressed or external, in which case pg_detoast_datum_packed gives a
    // plain copy; the bytes stay valid for `'a`, as the caller promises.
    unsafe {
        let mut p = d.cast_mut_ptr::<pg_sys::varlena>();
        if pgrx::varlena::varatt_is_1b_e(p) || pgrx::varlena::varatt_is_4b_c(p) {
            p = pg_sys::pg_detoast_datum_packed(p);
        }
        pgrx::varlena::varlena_to_byte_slice(p)
    }
}

/// (sender, carrier, channel) of a deformed pending row (columns 2 to 4, not null).
///
/// # Safety
/// `values` is a deformed row of throttle.pending whose columns 2 to 4 are non-null text
/// datums, valid for the call.
unsafe fn queue_key(values: &[pg_sys::Datum]) -> [String; 3] {
    std::array::from_fn(|i| {
        // SAFETY: the caller gives a row whose columns 2 to 4 are non-null text, valid while
        // they are copied here.
        let bytes = unsafe { text_bytes(values[i + 1]) };
        String::from_utf8_lossy(bytes).into_owned()
    })
}

#[unsafe(no_mangle)]
#[doc(hidden)]
pub extern "C" fn pg_finfo_pg_throttle_pending_check() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// Earliest and latest time a message may carry (1970-01-01 and 9999-12-31 UTC, in
/// PostgreSQL µs since 2000-01-01).
const EARLIEST: i64 = -946_684_800_000_000;
const LATEST: i64 = 252_455_615_999_000_000;

/// BEFORE INSERT row trigger on throttle.pending: 22023 for a sender, carrier or channel that
/// no path accepts (see `error::check_identifier`) or a time outside 1970..9999; and the id
/// comes from the sequence unless a superuser (a restore) chose it: an id chosen by a caller
/// could collide with one in ready or dead and stop the worker's moves for everyone.
///
/// # Safety
/// Called only by PostgreSQL's function manager, with a valid `fcinfo`, as the function of
/// `throttle.pending_check()`.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn pg_throttle_pending_check(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: `fcinfo` is valid (the function manager calls us). Its context is read as
    // TriggerData only once it is checked to be non-null and tagged T_TriggerData, and the
    // trigger manager then gives the open relation and the new row (checked for null). The
    // row is deformed with the relation's own descriptor into arrays of `natts` entries.
    // Columns are found by name, and each is read only when it is not null: sender, carrier
    // and channel as text (by `text_bytes`; they are text columns of the extension's own
    // table, which only its owner could alter), the times as plain integers. nextval_oid gets
    // the identity sequence's oid, and heap_modify_tuple_by_cols gets one-entry arrays for the
    // one column it replaces.
    unsafe {
        let td = (*fcinfo).context.cast::<pg_sys::TriggerData>();
        if td.is_null() || (*td).type_ != pg_sys::NodeTag::T_TriggerData {
            pgrx::error!("throttle.pending_check() must be called as a trigger");
        }
        let event = (*td).tg_event;
        let tuple = (*td).tg_trigtuple;
        if event & pg_sys::TRIGGER_EVENT_ROW == 0
            || event & pg_sys::TRIGGER_EVENT_OPMASK != pg_sys::TRIGGER_EVENT_INSERT
            || event & pg_sys::TRIGGER_EVENT_BEFORE == 0
            || tuple.is_null()
        {
            pgrx::error!("throttle.pending_check() is the BEFORE INSERT row trigger of throttle.pending only");
        }
        let rel = (*td).tg_relation;
        let desc = (*rel).rd_att;
        let natts = (*desc).natts as usize;
        let mut values = vec![pg_sys::Datum::from(0usize); natts];
        let mut nulls = vec![true; natts];
        pg_sys::heap_deform_tuple(tuple, desc, values.as_mut_ptr(), nulls.as_mut_ptr());
        let shape = pending_shape(rel);
        for (i, what) in [shape.sender, shape.carrier, shape.channel]
            .into_iter()
            .zip(["sender", "carrier", "channel"])
        {
            if let Some(i) = i.filter(|&i| !nulls[i]) {
                if let Err(e) = crate::error::check_identifier(what, text_bytes(values[i])) {
                    e.report(pgrx::PgLogLevel::ERROR);
                }
            }
        }
        for (i, what) in [shape.not_before, shape.expires_at, shape.enqueued_at]
            .into_iter()
            .zip(["not_before", "expires_at", "enqueued_at"])
        {
            if let Some(i) = i.filter(|&i| !nulls[i]) {
                if !(EARLIEST..=LATEST).contains(&(values[i].value() as i64)) {
                    crate::error::invalid(
                        format!("{what} is out of range"),
                        "a message's times lie between 1970-01-01 and 9999-12-31 (infinity is refused)",
                    )
                    .report(pgrx::PgLogLevel::ERROR);
                }
            }
        }
        if pg_sys::superuser()
            || shape.sequence == pg_sys::InvalidOid
            || crate::queue_cap::REQUEUE.with(|r| *r)
        {
            return pg_sys::Datum::from(tuple);
        }
        let seq = shape.sequence;
        let id: i64 = pgrx::direct_function_call(pg_sys::nextval_oid, &[seq.into_datum()])
            .unwrap_or_else(|| {
                pgrx::error!("pg_throttle: nextval of throttle.pending's sequence gave NULL")
            });
        let id = pg_sys::Datum::from(id);
        let mut cols = [1i32];
        let mut repl = [id];
        let mut repl_null = [false];
        let new = pg_sys::heap_modify_tuple_by_cols(
            tuple,
            desc,
            1,
            cols.as_mut_ptr(),
            repl.as_mut_ptr(),
            repl_null.as_mut_ptr(),
        );
        pg_sys::Datum::from(new)
    }
}

/// Where the trigger finds what it checks in throttle.pending, and the sequence of its id:
/// looked up once per backend and relation (the sequence's lookup is a catalog scan).
#[derive(Clone, Copy)]
struct PendingShape {
    relid: pg_sys::Oid,
    sender: Option<usize>,
    carrier: Option<usize>,
    channel: Option<usize>,
    not_before: Option<usize>,
    expires_at: Option<usize>,
    enqueued_at: Option<usize>,
    sequence: pg_sys::Oid,
}

static SHAPE: BackendLocal<Option<PendingShape>> = BackendLocal::new(None);

/// Where the trigger finds its columns in `rel` (see [`PendingShape`]).
///
/// # Safety
/// `rel` is an open relation (the trigger's) for the duration of the call.
unsafe fn pending_shape(rel: pg_sys::Relation) -> PendingShape {
    // SAFETY: the caller gives an open relation.
    let relid = unsafe { (*rel).rd_id };
    if let Some(s) = SHAPE.with(|s| *s).filter(|s| s.relid == relid) {
        return s;
    }
    // SAFETY: the caller gives an open relation, whose descriptor lives as long as it is open.
    let desc = unsafe { (*rel).rd_att };
    let col = |name: &std::ffi::CStr| -> Option<usize> {
        // SAFETY: SPI_fnumber only reads `desc`, the open relation's descriptor, and the
        // NUL-terminated name; it needs no SPI connection.
        let n = unsafe { pg_sys::SPI_fnumber(desc, name.as_ptr()) };
        (n > 0).then(|| n as usize - 1)
    };
    let shape = PendingShape {
        relid,
        sender: col(c"sender"),
        carrier: col(c"carrier"),
        channel: col(c"channel"),
        not_before: col(c"not_before"),
        expires_at: col(c"expires_at"),
        enqueued_at: col(c"enqueued_at"),
        // SAFETY: getIdentitySequence reads pg_depend in the trigger's transaction; with
        // `missing_ok` it answers InvalidOid when column 1 has no identity sequence.
        sequence: unsafe { pg_sys::getIdentitySequence(relid, 1, true) },
    };
    SHAPE.with(|s| *s = Some(shape));
    shape
}
