//! The enqueue side: a row trigger on `throttle.pending` notes each new row's queue, and at
//! commit the ids are handed to the worker through shared memory and its latch is set, so
//! the worker neither polls nor scans. Only the first row per queue per transaction is
//! noted (the worker fetches the rest by queue).

use crate::backend::BackendLocal;
use crate::shmem;
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
"#,
    name = "pending_trigger",
    requires = ["queue_tables"],
);

#[derive(Default)]
struct Noted {
    ids: Vec<i64>,
    queues: FxHashSet<u64>,
    registered: bool,
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
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn pg_throttle_pending_changed(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    unsafe {
        let td = (*fcinfo).context.cast::<pg_sys::TriggerData>();
        if td.is_null() || (*td).type_ != pg_sys::NodeTag::T_TriggerData {
            pgrx::error!("throttle.pending_changed() must be called as a trigger");
        }
        let tuple = if !(*td).tg_newtuple.is_null() {
            (*td).tg_newtuple
        } else {
            (*td).tg_trigtuple
        };
        let desc = (*(*td).tg_relation).rd_att;
        let natts = (*desc).natts as usize;
        let mut values = vec![pg_sys::Datum::from(0usize); natts];
        let mut nulls = vec![true; natts];
        pg_sys::heap_deform_tuple(tuple, desc, values.as_mut_ptr(), nulls.as_mut_ptr());
        if natts < COLUMNS || nulls[..COLUMNS].iter().any(|&n| n) {
            return pg_sys::Datum::from(0usize);
        }
        let id = values[0].value() as i64;
        let mut h = rustc_hash::FxHasher::default();
        for d in &values[1..COLUMNS] {
            let mut p = d.cast_mut_ptr::<pg_sys::varlena>();
            if pgrx::varlena::varatt_is_1b_e(p) || pgrx::varlena::varatt_is_4b_c(p) {
                p = pg_sys::pg_detoast_datum_packed(p);
            }
            h.write(pgrx::varlena::varlena_to_byte_slice(p));
            h.write_u8(0);
        }
        let queue = h.finish();
        let register = with_noted(|n| {
            if n.queues.insert(queue) {
                n.ids.push(id);
            }
            !std::mem::replace(&mut n.registered, true)
        });
        if register {
            register_xact_callback(PgXactCallbackEvent::Commit, || {
                let ids = with_noted(|n| {
                    n.queues.clear();
                    n.registered = false;
                    std::mem::take(&mut n.ids)
                });
                shmem::ring_push(&ids);
            });
            register_xact_callback(PgXactCallbackEvent::Abort, || {
                with_noted(|n| {
                    n.queues.clear();
                    n.ids.clear();
                    n.registered = false;
                });
            });
        }
        // AFTER trigger: the return value is ignored.
        pg_sys::Datum::from(0usize)
    }
}
