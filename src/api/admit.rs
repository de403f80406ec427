//! `throttle_admit` and `try_admit`: atomic admission across every limit that applies.
//!
//! These two are the hot path (called once per row of a query), so they are plain V1 C
//! functions reading their arguments straight from `fcinfo`, declared in SQL below, rather
//! than `#[pg_extern]`s: pgrx's generic per-argument unboxing and memory-context switching
//! cost more than the admission itself. Everything they do past argument reading is shared
//! safe Rust.

use crate::backend;
use crate::config::{self, PlanView};
use crate::error::{self, Fast as Result};
use crate::gucs;
use crate::limiter::gcra::MAX_COST;
use crate::limiter::{Micros, Outcome};
use crate::shmem;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

pgrx::extension_sql!(
    r#"
CREATE FUNCTION throttle.throttle_admit(
    sender text, carrier text, ts timestamptz DEFAULT now(), cost integer DEFAULT 1,
    channel text DEFAULT 'sms'
) RETURNS throttle.admission
VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'pg_throttle_admit';

CREATE FUNCTION throttle.try_admit(
    sender text, carrier text, ts timestamptz DEFAULT now(), cost integer DEFAULT 1,
    channel text DEFAULT 'sms'
) RETURNS boolean
VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'pg_throttle_try_admit';
"#,
    name = "admit_functions",
    requires = ["schema"],
);

/// The arguments of one call, checked.
struct Call<'a> {
    sender: &'a [u8],
    carrier: &'a [u8],
    channel: &'a [u8],
    now: Micros,
    cost: u64,
}

/// Argument `i` of the call, or None for SQL NULL.
#[inline]
unsafe fn arg(fcinfo: pg_sys::FunctionCallInfo, i: usize) -> Option<pg_sys::Datum> {
    unsafe {
        let args = (*fcinfo).args.as_slice((*fcinfo).nargs as usize);
        args.get(i).filter(|a| !a.isnull).map(|a| a.value)
    }
}

/// A text argument as bytes (detoasted only when it is compressed or out of line).
#[inline]
unsafe fn text_arg<'a>(fcinfo: pg_sys::FunctionCallInfo, i: usize, what: &str) -> Result<&'a [u8]> {
    let d = unsafe { arg(fcinfo, i) }.ok_or_else(|| error::null_value(what))?;
    let bytes = unsafe {
        let mut p = d.cast_mut_ptr::<pg_sys::varlena>();
        if pgrx::varlena::varatt_is_1b_e(p) || pgrx::varlena::varatt_is_4b_c(p) {
            p = pg_sys::pg_detoast_datum_packed(p);
        }
        pgrx::varlena::varlena_to_byte_slice(p)
    };
    if bytes.is_empty() {
        return Err(Box::new(error::invalid(
            format!("{what} must not be empty"),
            format!("pass the {what} as registered in throttle.sender / throttle.rate_limit"),
        )));
    }
    Ok(bytes)
}

unsafe fn read_call<'a>(fcinfo: pg_sys::FunctionCallInfo) -> Result<Call<'a>> {
    unsafe {
        let sender = text_arg(fcinfo, 0, "sender")?;
        let carrier = text_arg(fcinfo, 1, "carrier")?;
        let ts = arg(fcinfo, 2).ok_or_else(|| error::null_value("ts"))?;
        let cost = arg(fcinfo, 3).ok_or_else(|| error::null_value("cost"))?;
        let channel = text_arg(fcinfo, 4, "channel")?;
        Ok(Call {
            sender,
            carrier,
            channel,
            now: checked_ts(ts.value() as i64)?,
            cost: checked_cost(cost.value() as i32)?,
        })
    }
}

fn checked_cost(cost: i32) -> Result<u64> {
    if cost < 1 || cost as u64 > MAX_COST {
        return Err(Box::new(error::invalid(
            format!("cost must be between 1 and {MAX_COST}, got {cost}"),
            "cost counts segments: 1 for a single-segment message",
        )));
    }
    Ok(cost as u64)
}

fn checked_ts(us: Micros) -> Result<Micros> {
    if us == Micros::MAX || us == Micros::MIN {
        return Err(Box::new(error::invalid(
            "ts must be finite",
            "pass now() or a real point in time",
        )));
    }
    let max_future = gucs::max_future_us();
    if max_future > 0 && us > backend::transaction_start().saturating_add(max_future) {
        return Err(Box::new(error::invalid(
            "ts is too far in the future",
            format!(
                "ts may be at most throttle.max_future ({} ms) after the transaction's start; pass now()",
                max_future / 1000
            ),
        )));
    }
    Ok(us)
}

/// Decide one call; `then` sees the plan used and the outcome.
fn decide<R>(
    call: &Call,
    headroom: bool,
    then: impl FnOnce(&PlanView, Outcome) -> Result<R>,
) -> Result<R> {
    if !shmem::is_loaded() {
        return Err(Box::new(error::not_preloaded()));
    }
    config::with_plan(call.sender, call.carrier, call.channel, |plan| {
        let outcome = shmem::admit(&plan.wants, plan.partitions, call.cost, call.now, headroom)
            .map_err(ErrorReport::from)?;
        then(plan, outcome)
    })?
}

#[unsafe(no_mangle)]
#[doc(hidden)]
pub extern "C" fn pg_finfo_pg_throttle_try_admit() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// `throttle.try_admit(sender, carrier, ts, cost, channel) → boolean`: true when admitted
/// (and every applicable limit debited), false when throttled.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn pg_throttle_try_admit(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    let r: Result<bool> = unsafe { read_call(fcinfo) }.and_then(|call| {
        decide(&call, false, |_, o| {
            Ok(matches!(o, Outcome::Admitted { .. }))
        })
    });
    pg_sys::Datum::from(error::or_raise(r))
}

#[unsafe(no_mangle)]
#[doc(hidden)]
pub extern "C" fn pg_finfo_pg_throttle_admit() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// `throttle.throttle_admit(sender, carrier, ts, cost, channel) → throttle.admission`: may
/// `sender` send `cost` segments to `carrier` on `channel` at `ts`? If every applicable limit
/// has room, all are debited; otherwise none is, and the answer names the limit that blocks
/// and the earliest time the same call would pass.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn pg_throttle_admit(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    let r = unsafe { read_call(fcinfo) }.and_then(|call| {
        decide(&call, true, |plan, outcome| unsafe {
            admission_datum(fcinfo, plan, outcome)
        })
    });
    error::or_raise(r)
}

/// Form a `throttle.admission` row.
unsafe fn admission_datum(
    fcinfo: pg_sys::FunctionCallInfo,
    plan: &PlanView,
    outcome: Outcome,
) -> Result<pg_sys::Datum> {
    let desc = unsafe { admission_desc(fcinfo)? };
    let mut values = [pg_sys::Datum::from(0usize); 6];
    let mut nulls = [true; 6];
    let mut set = |i: usize, d: pg_sys::Datum| {
        values[i] = d;
        nulls[i] = false;
    };
    set(5, pg_sys::Datum::from(plan.wants.len() as i32));
    match outcome {
        Outcome::Admitted { headroom } => {
            set(0, pg_sys::Datum::from(true));
            if let Some(h) = headroom {
                set(4, pg_sys::Datum::from(h as i64));
            }
        }
        Outcome::Refused {
            blocker,
            retry_at,
            headroom,
        } => {
            let limit = plan.limit(blocker);
            set(0, pg_sys::Datum::from(false));
            if let Some(t) = retry_at {
                set(1, pg_sys::Datum::from(t));
            }
            set(2, pg_sys::Datum::from(limit.id));
            set(
                3,
                pg_sys::Datum::from(pgrx::varlena::rust_str_to_text_p(&limit.label).into_pg()),
            );
            set(4, pg_sys::Datum::from(headroom as i64));
        }
    }
    unsafe {
        let tuple = pg_sys::heap_form_tuple(desc, values.as_mut_ptr(), nulls.as_mut_ptr());
        // No field is toasted, so the tuple header is the composite datum.
        Ok(pg_sys::Datum::from((*tuple).t_data))
    }
}

/// The blessed descriptor of the function's result type, cached for the life of the call site
/// in `flinfo->fn_extra` (the usual C idiom: one catalog look-up per query, not per row).
unsafe fn admission_desc(fcinfo: pg_sys::FunctionCallInfo) -> Result<pg_sys::TupleDesc> {
    unsafe {
        let flinfo = (*fcinfo).flinfo;
        if !(*flinfo).fn_extra.is_null() {
            return Ok((*flinfo).fn_extra.cast());
        }
        let mut typoid = pg_sys::InvalidOid;
        let mut desc: pg_sys::TupleDesc = std::ptr::null_mut();
        let kind = pg_sys::get_call_result_type(fcinfo, &mut typoid, &mut desc);
        if kind != pg_sys::TypeFuncClass::TYPEFUNC_COMPOSITE || desc.is_null() {
            return Err(Box::new(error::internal(
                "throttle_admit must return a composite type",
            )));
        }
        let old = pg_sys::MemoryContextSwitchTo((*flinfo).fn_mcxt);
        let copy = pg_sys::BlessTupleDesc(pg_sys::CreateTupleDescCopy(desc));
        pg_sys::MemoryContextSwitchTo(old);
        (*flinfo).fn_extra = copy.cast();
        Ok(copy)
    }
}
