//! `throttle_admit` and `try_admit`: atomic admission across every limit that applies.
//!
//! These two are the hot path (called once per row of a query), so they are plain V1 C
//! functions reading their arguments straight from `fcinfo`, declared in SQL below, rather
//! than `#[pg_extern]`s: pgrx's generic per-argument unboxing and memory-context switching
//! cost more than the admission itself. Everything they do past argument reading is shared
//! safe Rust.

use crate::backend;
use crate::caps;
use crate::config::{self, PlanView};
use crate::error::{self, Fast as Result};
use crate::gucs;
use crate::limiter::cap::lease_chunk;
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
    error::check_identifier(what, bytes).map_err(Box::new)?;
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

/// Decide one call; `then` sees how many limits and caps applied, the outcome, and (when
/// refused) the id and name of what blocked it (a calendar cap's id is negated).
fn decide<R>(
    call: &Call,
    headroom: bool,
    then: impl FnOnce(usize, Outcome, Option<(i64, &str)>) -> Result<R>,
) -> Result<R> {
    if !shmem::is_loaded() {
        return Err(Box::new(error::not_preloaded()));
    }
    let mut then = Some(then);
    let mut caps_known = false;
    let mut authorized = false;
    let fast = loop {
        let mut ask = false;
        let fast = config::with_plan(call.sender, call.carrier, call.channel, |plan| {
            if !authorized && !plan.allowed() {
                ask = true; // tenant model: may this role act for the sender?
                return None;
            }
            if plan.caps {
                caps_known = plan.caps_known;
                return None; // calendar caps may apply: the lease path below
            }
            let then = then.take()?;
            Some(admit_plan(plan, call, headroom, then))
        })?;
        if !ask {
            break fast;
        }
        config::authorize(call.sender, call.carrier, call.channel)?;
        authorized = true;
    };
    match (fast, then.take()) {
        (Some(r), _) => r,
        (None, Some(then)) => decide_with_caps(call, headroom, caps_known, then),
        (None, None) => Err(Box::new(error::internal("admission decided twice"))),
    }
}

/// Admit `call` through `plan`'s buckets and hand the answer to `then`.
fn admit_plan<R>(
    plan: &PlanView,
    call: &Call,
    headroom: bool,
    then: impl FnOnce(usize, Outcome, Option<(i64, &str)>) -> Result<R>,
) -> Result<R> {
    let outcome = shmem::admit(&plan.wants, plan.partitions, call.cost, call.now, headroom)
        .map_err(ErrorReport::from)?;
    then(plan.wants.len(), outcome, blocker_of(plan, &outcome))
}

/// The id and name of the limit that refused (None when admitted).
fn blocker_of<'a>(plan: &'a PlanView, outcome: &Outcome) -> Option<(i64, &'a str)> {
    match *outcome {
        Outcome::Refused { blocker, .. } => {
            let l = plan.limit(blocker);
            Some((l.id, &*l.label))
        }
        Outcome::Admitted { .. } => None,
    }
}

/// How long `throttle_admit` waits for the worker to lease capacity of a calendar cap.
const LEASE_WAIT_MS: u32 = 2_000;

/// [`decide`] for a sender that calendar caps may apply to: the caps' leased capacity in
/// shared memory is debited together with the rate limits (all or nothing); when a lease runs
/// out the worker is asked for the next chunk, which it counts in `throttle.cap_usage`
/// before handing it over.
fn decide_with_caps<R>(
    call: &Call,
    headroom: bool,
    caps_known: bool,
    then: impl FnOnce(usize, Outcome, Option<(i64, &str)>) -> Result<R>,
) -> Result<R> {
    let mut waited = 0u32;
    loop {
        let defs = match caps::caps_for_queue(call.sender, call.carrier, call.channel)
            .map_err(Box::new)?
        {
            Some(d) if !d.is_empty() => {
                if !caps_known {
                    config::note_plan_caps(call.sender, call.carrier, call.channel, true);
                }
                d
            }
            // Unknown sender (with_plan says so), or no cap applies: the plan says so from
            // now on, and the next call takes the fast path.
            found => {
                if found.is_some() {
                    config::note_plan_caps(call.sender, call.carrier, call.channel, false);
                }
                return config::with_plan(call.sender, call.carrier, call.channel, |plan| {
                    admit_plan(plan, call, headroom, then)
                })?;
            }
        };
        let db = unsafe { pg_sys::MyDatabaseId }.to_u32();
        if defs.len() > shmem::MAX_CAP_WANTS {
            return Err(Box::new(error::too_many(
                format!(
                    "more than {} calendar caps apply to sender \"{}\"",
                    shmem::MAX_CAP_WANTS,
                    String::from_utf8_lossy(call.sender)
                ),
                "merge or remove caps in throttle.cap",
            )));
        }
        if !gucs::worker_enabled() || !shmem::worker_serves(db) || shmem::worker_pid() == 0 {
            return Err(Box::new(error::no_worker(
                "calendar caps need the release worker running in this database",
            )));
        }
        let limits = |plan_len: usize| plan_len + defs.len();
        // A cost more than a whole window allows never passes.
        if let Some(d) = defs.iter().find(|d| call.cost > d.rule.allowed()) {
            let n = config::with_plan(call.sender, call.carrier, call.channel, |p| p.wants.len())?;
            let refused = Outcome::Refused {
                blocker: 0,
                retry_at: None,
                headroom: 0,
            };
            return then(limits(n), refused, Some((-d.id, &d.label)));
        }
        // A cap counts in the window of the admission's time, but never in a window before
        // the transaction's: an old timestamp cannot spend a window that is over.
        let at = call.now.max(backend::transaction_start());
        let mut wants: smallvec::SmallVec<[shmem::CapWant; 4]> = defs
            .iter()
            .map(|d| {
                let (window_start, window_end) = d.window_of(at);
                shmem::CapWant {
                    cap_id: d.id,
                    born: d.born,
                    hint: d.lease_hint.get(),
                    window_start,
                    window_end,
                    at,
                    chunk: lease_chunk(&d.rule, call.cost) as i64,
                }
            })
            .collect();
        let cost = call.cost as i64;
        let answer = shmem::lease_take(db, &mut wants, cost).map_err(|e| match e {
            shmem::ShmemError::Full => error::capacity(
                format!(
                    "all {} calendar-cap lease entries in shared memory hold unspent leases",
                    shmem::MAX_LEASES
                ),
                "fewer caps on senders admitted with throttle_admit (cap their campaign, brand or account instead)",
            ),
            e => ErrorReport::from(e),
        })?;
        for (d, w) in defs.iter().zip(&wants) {
            d.lease_hint.set(w.hint);
        }
        match answer {
            shmem::LeaseAnswer::Taken => {
                return config::with_plan(call.sender, call.carrier, call.channel, |plan| {
                    let outcome = match shmem::admit(
                        &plan.wants,
                        plan.partitions,
                        call.cost,
                        call.now,
                        headroom,
                    ) {
                        Ok(o) => o,
                        Err(e) => {
                            shmem::lease_refund(db, &wants, cost);
                            return Err(Box::new(ErrorReport::from(e)));
                        }
                    };
                    if matches!(outcome, Outcome::Refused { .. }) {
                        shmem::lease_refund(db, &wants, cost);
                    }
                    let blocker = blocker_of(plan, &outcome);
                    then(limits(plan.wants.len()), outcome, blocker)
                })?;
            }
            shmem::LeaseAnswer::Full { i, until } => {
                let n =
                    config::with_plan(call.sender, call.carrier, call.channel, |p| p.wants.len())?;
                let refused = Outcome::Refused {
                    blocker: 0,
                    retry_at: Some(until),
                    headroom: 0,
                };
                return then(limits(n), refused, Some((-defs[i].id, &defs[i].label)));
            }
            shmem::LeaseAnswer::Asked => {
                if waited >= LEASE_WAIT_MS {
                    return Err(Box::new(error::no_worker(
                        "the release worker did not lease capacity of a calendar cap in time",
                    )));
                }
                unsafe {
                    pg_sys::WaitLatch(
                        pg_sys::MyLatch,
                        (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH)
                            as i32,
                        1,
                        pg_sys::PG_WAIT_EXTENSION,
                    );
                    pg_sys::ResetLatch(pg_sys::MyLatch);
                }
                pgrx::check_for_interrupts!();
                waited += 1;
            }
        }
    }
}

#[unsafe(no_mangle)]
#[doc(hidden)]
pub extern "C" fn pg_finfo_pg_throttle_try_admit() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// A plain (not compressed, not out-of-line) text argument's bytes, or None.
#[inline(always)]
unsafe fn plain_text<'a>(a: &pg_sys::NullableDatum) -> Option<&'a [u8]> {
    if a.isnull {
        return None;
    }
    unsafe {
        let p = a.value.cast_mut_ptr::<pg_sys::varlena>();
        if pgrx::varlena::varatt_is_1b_e(p) || pgrx::varlena::varatt_is_4b_c(p) {
            return None;
        }
        let b = pgrx::varlena::varlena_to_byte_slice(p);
        (!b.is_empty()).then_some(b)
    }
}

/// `try_admit`'s common case as one function with a scalar answer (a `Result` travelling
/// back through memory cost more than the admission's arithmetic): 0 refused, 1 admitted,
/// 2 take the general path, which handles everything else (NULLs, bad values, detoasting,
/// a plan not cached yet, calendar caps, shared-memory errors) with its proper error.
#[inline(never)]
unsafe fn try_admit_fast(fcinfo: pg_sys::FunctionCallInfo) -> u8 {
    unsafe {
        if (*fcinfo).nargs != 5 {
            return 2;
        }
        let args = (*fcinfo).args.as_slice(5);
        let (Some(sender), Some(carrier), Some(channel)) = (
            plain_text(&args[0]),
            plain_text(&args[1]),
            plain_text(&args[4]),
        ) else {
            return 2;
        };
        if args[2].isnull || args[3].isnull {
            return 2;
        }
        let (Ok(now), Ok(cost)) = (
            checked_ts(args[2].value.value() as i64),
            checked_cost(args[3].value.value() as i32),
        ) else {
            return 2;
        };
        config::with_cached_plan(sender, carrier, channel, |plan, hint| {
            if plan.caps || !plan.allowed() {
                return 2;
            }
            match shmem::admit_hinted(&plan.wants, plan.partitions, cost, now, false, hint) {
                Ok(Outcome::Admitted { .. }) => 1,
                Ok(Outcome::Refused { .. }) => 0,
                Err(_) => 2,
            }
        })
        .unwrap_or(2)
    }
}

/// `throttle.try_admit(sender, carrier, ts, cost, channel) → boolean`: true when admitted
/// (and every applicable limit debited), false when throttled.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn pg_throttle_try_admit(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    match unsafe { try_admit_fast(fcinfo) } {
        0 => return pg_sys::Datum::from(false),
        1 => return pg_sys::Datum::from(true),
        _ => {}
    }
    let r: Result<bool> = unsafe { read_call(fcinfo) }.and_then(|call| {
        decide(&call, false, |_, o, _| {
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
        decide(&call, true, |limits, outcome, blocker| unsafe {
            admission_datum(fcinfo, limits, outcome, blocker)
        })
    });
    error::or_raise(r)
}

/// Form a `throttle.admission` row.
unsafe fn admission_datum(
    fcinfo: pg_sys::FunctionCallInfo,
    limits: usize,
    outcome: Outcome,
    blocked: Option<(i64, &str)>,
) -> Result<pg_sys::Datum> {
    let desc = unsafe { admission_desc(fcinfo)? };
    let mut values = [pg_sys::Datum::from(0usize); 6];
    let mut nulls = [true; 6];
    let mut set = |i: usize, d: pg_sys::Datum| {
        values[i] = d;
        nulls[i] = false;
    };
    set(5, pg_sys::Datum::from(limits as i32));
    match outcome {
        Outcome::Admitted { headroom } => {
            set(0, pg_sys::Datum::from(true));
            if let Some(h) = headroom {
                set(4, pg_sys::Datum::from(h as i64));
            }
        }
        Outcome::Refused {
            retry_at, headroom, ..
        } => {
            set(0, pg_sys::Datum::from(false));
            if let Some(t) = retry_at {
                set(1, pg_sys::Datum::from(t));
            }
            if let Some((id, label)) = blocked {
                set(2, pg_sys::Datum::from(id));
                set(
                    3,
                    pg_sys::Datum::from(pgrx::varlena::rust_str_to_text_p(label).into_pg()),
                );
            }
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
