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
use std::rc::Rc;

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
///
/// # Safety
/// `fcinfo` is the call information PostgreSQL passed to the V1 function running now.
#[inline]
unsafe fn arg(fcinfo: pg_sys::FunctionCallInfo, i: usize) -> Option<pg_sys::Datum> {
    // SAFETY: `fcinfo` points to this call's live FunctionCallInfo (the caller's contract),
    // whose trailing `args` array holds exactly `nargs` initialized entries: the slice covers
    // no more than that, and `get` bounds `i`.
    unsafe {
        let args = (*fcinfo).args.as_slice((*fcinfo).nargs as usize);
        args.get(i).filter(|a| !a.isnull).map(|a| a.value)
    }
}

/// A text argument as bytes (detoasted only when it is compressed or out of line).
///
/// # Safety
/// `fcinfo` is the call information of the V1 function running now, argument `i` of which is
/// declared `text`; the bytes are used only while the call lasts (`'a`).
#[inline]
unsafe fn text_arg<'a>(fcinfo: pg_sys::FunctionCallInfo, i: usize, what: &str) -> Result<&'a [u8]> {
    // SAFETY: `fcinfo` is this call's live FunctionCallInfo (the caller's contract).
    let d = unsafe { arg(fcinfo, i) }.ok_or_else(|| error::null_value(what))?;
    // SAFETY: argument `i` is declared `text` and is not NULL, so `d` points to a varlena
    // that PostgreSQL keeps alive for the call. The `varatt_is_*` tests read only its header;
    // `pg_detoast_datum_packed` returns it, or an in-line uncompressed copy palloc'd in the
    // call's memory context (which outlives the call's use of the bytes); the slice covers
    // exactly that varlena's data bytes.
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

/// The checked arguments of a call of `throttle_admit` or `try_admit`.
///
/// # Safety
/// `fcinfo` is the call information of one of those two functions, running now; the
/// `Call` is used only while it lasts (`'a`).
unsafe fn read_call<'a>(fcinfo: pg_sys::FunctionCallInfo) -> Result<Call<'a>> {
    // SAFETY: `fcinfo` is the live call information of `throttle_admit` or `try_admit` (the
    // caller's contract), declared in SQL above as (text, text, timestamptz, integer, text):
    // arguments 0, 1 and 4 are text, as `text_arg` needs, and `ts` and `cost` are pass-by-value
    // int8 and int4 datums, read as such.
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
    let mut known_caps: Option<config::CapDefs> = None;
    let mut authorized = false;
    let fast = loop {
        let mut ask = false;
        let fast = config::with_plan(call.sender, call.carrier, call.channel, |plan| {
            if !authorized && !plan.allowed() {
                ask = true; // tenant model: may this role act for the sender?
                return None;
            }
            if plan.caps {
                // Calendar caps may apply: the lease path below (with them, when known).
                known_caps = plan.cap_defs.cloned();
                return None;
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
        (None, Some(then)) => decide_with_caps(call, headroom, known_caps, then),
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
    let outcome = shmem::admit(plan.wants, plan.partitions, call.cost, call.now, headroom)
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
    mut known: Option<config::CapDefs>,
    then: impl FnOnce(usize, Outcome, Option<(i64, &str)>) -> Result<R>,
) -> Result<R> {
    let mut waited = 0u32;
    loop {
        let found = match known.take() {
            Some(defs) => Some(defs),
            None => caps_that_apply(call)?,
        };
        let Some(defs) = found else {
            return config::with_plan(call.sender, call.carrier, call.channel, |plan| {
                admit_plan(plan, call, headroom, then)
            })?;
        };
        // SAFETY: `MyDatabaseId` is a plain global PostgreSQL sets once when this backend
        // connects to its database, before any SQL function runs; the backend is
        // single-threaded, so this read of a `Copy` value races with no write.
        let db = unsafe { pg_sys::MyDatabaseId }.to_u32();
        check_caps_usable(call, &defs, db)?;
        // A cost more than a whole window allows never passes.
        if let Some(d) = defs.iter().find(|d| call.cost > d.rule.allowed()) {
            return refused_by_cap(call, defs.len(), d, None, then);
        }
        let (answer, wants) = take_leases(call, &defs, db)?;
        match answer {
            shmem::LeaseAnswer::Taken => {
                return admit_leased(call, headroom, db, &wants, defs.len(), then);
            }
            shmem::LeaseAnswer::Full { i, until } => {
                return refused_by_cap(call, defs.len(), &defs[i], Some(until), then);
            }
            shmem::LeaseAnswer::Asked => wait_for_lease(&mut waited)?,
        }
    }
}

/// The calendar caps on `call`'s queue (None when none applies, or the sender is unknown:
/// `with_plan` says so), noted in the queue's plan: the next call finds them there, or takes
/// the fast path when none applies.
fn caps_that_apply(call: &Call) -> Result<Option<config::CapDefs>> {
    let found = caps::caps_for_queue(call.sender, call.carrier, call.channel).map_err(Box::new)?;
    let Some(found) = found else {
        return Ok(None); // unknown sender
    };
    let defs = (!found.is_empty()).then_some(found);
    config::note_plan_caps(call.sender, call.carrier, call.channel, defs.clone());
    Ok(defs)
}

/// Whether the caps `defs` can be leased in database `db`: not too many of them, and the
/// release worker (which leases their capacity) runs there.
fn check_caps_usable(call: &Call, defs: &[Rc<caps::CapDef>], db: u32) -> Result<()> {
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
    Ok(())
}

/// Hand `then` a refusal by cap `d` (one of `n_caps` caps that apply), retrying at
/// `retry_at` (None: never).
fn refused_by_cap<R>(
    call: &Call,
    n_caps: usize,
    d: &caps::CapDef,
    retry_at: Option<Micros>,
    then: impl FnOnce(usize, Outcome, Option<(i64, &str)>) -> Result<R>,
) -> Result<R> {
    let n = config::with_plan(call.sender, call.carrier, call.channel, |p| p.wants.len())?;
    let refused = Outcome::Refused {
        blocker: 0,
        retry_at,
        headroom: 0,
    };
    then(n + n_caps, refused, Some((-d.id, &d.label)))
}

/// The lease wants of one admission, one per cap.
type CapWants = smallvec::SmallVec<[shmem::CapWant; 4]>;

/// Take `call`'s cost from the leases of every cap in `defs` at once (all or none), and
/// remember where each lease was found for the next call.
fn take_leases(
    call: &Call,
    defs: &[Rc<caps::CapDef>],
    db: u32,
) -> Result<(shmem::LeaseAnswer, CapWants)> {
    // A cap counts in the window of the admission's time, but never in a window before
    // the transaction's: an old timestamp cannot spend a window that is over.
    let at = call.now.max(backend::transaction_start());
    let mut wants: CapWants = defs
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
    let answer = shmem::lease_take(db, &mut wants, call.cost as i64).map_err(|e| match e {
        shmem::ShmemError::Full => error::capacity(
            format!(
                "all {} calendar-cap lease entries in shared memory hold unspent leases (throttle.max_cap_leases)",
                gucs::max_cap_leases()
            ),
            "raise throttle.max_cap_leases (80 bytes of shared memory each) in postgresql.conf and restart",
        ),
        e => ErrorReport::from(e),
    })?;
    for (d, w) in defs.iter().zip(&wants) {
        d.lease_hint.set(w.hint);
    }
    Ok((answer, wants))
}

/// With the caps' leases `wants` taken (`n_caps` of them), admit `call` through its plan's
/// buckets and hand the answer to `then`; the leases are refunded if the buckets refuse, or
/// fail.
fn admit_leased<R>(
    call: &Call,
    headroom: bool,
    db: u32,
    wants: &[shmem::CapWant],
    n_caps: usize,
    then: impl FnOnce(usize, Outcome, Option<(i64, &str)>) -> Result<R>,
) -> Result<R> {
    let cost = call.cost as i64;
    config::with_plan(call.sender, call.carrier, call.channel, |plan| {
        let outcome = match shmem::admit(plan.wants, plan.partitions, call.cost, call.now, headroom)
        {
            Ok(o) => o,
            Err(e) => {
                shmem::lease_refund(db, wants, cost);
                return Err(Box::new(ErrorReport::from(e)));
            }
        };
        if matches!(outcome, Outcome::Refused { .. }) {
            shmem::lease_refund(db, wants, cost);
        }
        let blocker = blocker_of(plan, &outcome);
        then(plan.wants.len() + n_caps, outcome, blocker)
    })?
}

/// Wait a millisecond for the worker to lease more capacity, or fail once `waited` reaches
/// [`LEASE_WAIT_MS`].
fn wait_for_lease(waited: &mut u32) -> Result<()> {
    if *waited >= LEASE_WAIT_MS {
        return Err(Box::new(error::no_worker(
            "the release worker did not lease capacity of a calendar cap in time",
        )));
    }
    // SAFETY: `MyLatch` points to this backend's own process latch, set up when the backend
    // started and valid for its whole life; we are in an ordinary SQL function call (not a
    // signal handler) on the backend's only thread, which is where a latch may be waited on
    // and reset. WL_EXIT_ON_PM_DEATH is given, as WaitLatch requires of a backend, and a
    // PostgreSQL error inside either call is turned into a Rust panic by pgrx's bindings.
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            1,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
    pgrx::check_for_interrupts!();
    *waited += 1;
    Ok(())
}

#[unsafe(no_mangle)]
#[doc(hidden)]
pub extern "C" fn pg_finfo_pg_throttle_try_admit() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// A plain (not compressed, not out-of-line) text argument's bytes, or None.
///
/// # Safety
/// `a` is an argument, declared `text`, of the V1 function running now; the bytes are used
/// only while the call lasts (`'a`).
#[inline(always)]
unsafe fn plain_text<'a>(a: &pg_sys::NullableDatum) -> Option<&'a [u8]> {
    if a.isnull {
        return None;
    }
    // SAFETY: `a` is a non-NULL `text` argument of the running call (the caller's contract),
    // so its value points to a varlena PostgreSQL keeps alive for the call. Only its header is
    // read before compressed and out-of-line values are refused, so the slice covers in-line
    // data bytes of the datum itself.
    unsafe {
        let p = a.value.cast_mut_ptr::<pg_sys::varlena>();
        if pgrx::varlena::varatt_is_1b_e(p) || pgrx::varlena::varatt_is_4b_c(p) {
            return None;
        }
        let b = pgrx::varlena::varlena_to_byte_slice(p);
        (!b.is_empty()).then_some(b)
    }
}

/// The arguments of `try_admit` or `throttle_admit` when they need nothing but the common
/// case: all plain (not toasted) and valid; None sends the call down
/// the general path, which gives each other case its proper answer or error.
///
/// # Safety
/// `fcinfo` is the call information of `try_admit` or `throttle_admit`, running now; the
/// bytes are used only while the call lasts (`'a`).
#[inline(always)]
unsafe fn fast_args<'a>(fcinfo: pg_sys::FunctionCallInfo) -> Option<Call<'a>> {
    // SAFETY: `fcinfo` is the live call information of one of the two functions (the caller's
    // contract). `nargs` is checked to be 5 before the five entries of `args` are viewed;
    // arguments 0, 1 and 4 are declared `text` (as `plain_text` needs) and 2 and 3 are
    // pass-by-value timestamptz and integer datums, read as such after their NULL flags are
    // checked.
    unsafe {
        if (*fcinfo).nargs != 5 {
            return None;
        }
        let args = (*fcinfo).args.as_slice(5);
        let sender = plain_text(&args[0])?;
        let carrier = plain_text(&args[1])?;
        let channel = plain_text(&args[4])?;
        if args[2].isnull || args[3].isnull {
            return None;
        }
        let now = checked_ts(args[2].value.value() as i64).ok()?;
        let cost = checked_cost(args[3].value.value() as i32).ok()?;
        Some(Call {
            sender,
            carrier,
            channel,
            now,
            cost,
        })
    }
}

/// `try_admit`'s common case as one function with a scalar answer (a `Result` travelling
/// back through memory cost more than the admission's arithmetic): 0 refused, 1 admitted,
/// 2 take the general path, which handles everything else (NULLs, bad values, detoasting,
/// a plan not cached yet, calendar caps, shared-memory errors) with its proper error.
///
/// # Safety
/// `fcinfo` is the call information of `try_admit`, running now.
#[inline(never)]
unsafe fn try_admit_fast(fcinfo: pg_sys::FunctionCallInfo) -> u8 {
    // SAFETY: `fcinfo` is the live call information of `try_admit` (the caller's contract).
    let Some(c) = (unsafe { fast_args(fcinfo) }) else {
        return 2;
    };
    config::with_cached_plan(c.sender, c.carrier, c.channel, |plan, hint| {
        if plan.caps || !plan.allowed() {
            return 2;
        }
        match shmem::admit_hinted(plan.wants, plan.partitions, c.cost, c.now, false, hint) {
            Ok(Outcome::Admitted { .. }) => 1,
            Ok(Outcome::Refused { .. }) => 0,
            Err(_) => 2,
        }
    })
    .unwrap_or(2)
}

/// `throttle_admit`'s common case, as [`try_admit_fast`]: the plan is cached, no calendar cap
/// applies, the role may act for the sender. The answer's row type is looked up first, so
/// once buckets are debited nothing can send the call down the general path (which would
/// debit them again). None: take the general path.
///
/// # Safety
/// `fcinfo` is the call information of `throttle_admit`, running now.
#[inline(never)]
unsafe fn throttle_admit_fast(fcinfo: pg_sys::FunctionCallInfo) -> Option<pg_sys::Datum> {
    // SAFETY: `fcinfo` is the live call information of `throttle_admit` (the caller's
    // contract), a function returning the composite `throttle.admission`.
    let c = unsafe { fast_args(fcinfo) }?;
    // SAFETY: as above; an error finding the type is left to the general path to raise.
    let answer = unsafe { answer_type(fcinfo) }.ok()?;
    config::with_cached_plan(c.sender, c.carrier, c.channel, |plan, hint| {
        if plan.caps || !plan.allowed() {
            return None;
        }
        let outcome =
            shmem::admit_hinted(plan.wants, plan.partitions, c.cost, c.now, true, hint).ok()?;
        let (limits, blocked) = (plan.wants.len(), blocker_of(plan, &outcome));
        let copied = match outcome {
            Outcome::Admitted { headroom: Some(h) } => answer.admitted(h, limits),
            _ => answer.refused(&outcome, blocked, limits),
        };
        // SAFETY: `answer.desc` is the blessed descriptor of `throttle.admission`.
        Some(
            copied.unwrap_or_else(|| unsafe {
                admission_tuple(answer.desc, limits, outcome, blocked)
            }),
        )
    })
    .flatten()
}

/// `throttle.try_admit(sender, carrier, ts, cost, channel) → boolean`: true when admitted
/// (and every applicable limit debited), false when throttled.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn pg_throttle_try_admit(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: PostgreSQL calls this V1 function with the call information of
    // `throttle.try_admit`, whose SQL declaration (above) has the arguments it reads.
    match unsafe { try_admit_fast(fcinfo) } {
        0 => return pg_sys::Datum::from(false),
        1 => return pg_sys::Datum::from(true),
        _ => {}
    }
    // SAFETY: `fcinfo` is the call information of `throttle.try_admit`, running now; the
    // `Call` borrowed from its arguments is dropped before this function returns.
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
    // SAFETY: PostgreSQL calls this V1 function with the call information of
    // `throttle.throttle_admit`, whose SQL declaration (above) has the arguments it reads.
    if let Some(d) = unsafe { throttle_admit_fast(fcinfo) } {
        return d;
    }
    // SAFETY: `fcinfo` is the call information of `throttle.throttle_admit`, running now; the
    // `Call` borrowed from its arguments is dropped before this function returns.
    let r = unsafe { read_call(fcinfo) }.and_then(|call| {
        decide(&call, true, |limits, outcome, blocker| {
            // SAFETY: `fcinfo` is the live call information of `throttle.throttle_admit`,
            // whose result type is the composite `throttle.admission` it forms.
            unsafe { admission_datum(fcinfo, limits, outcome, blocker) }
        })
    });
    error::or_raise(r)
}

/// Form a `throttle.admission` row.
///
/// # Safety
/// `fcinfo` is the call information of `throttle_admit`, running now.
unsafe fn admission_datum(
    fcinfo: pg_sys::FunctionCallInfo,
    limits: usize,
    outcome: Outcome,
    blocked: Option<(i64, &str)>,
) -> Result<pg_sys::Datum> {
    // SAFETY: `fcinfo` is the live call information of `throttle_admit` (the caller's
    // contract), a function returning the composite `throttle.admission`.
    let desc = unsafe { answer_type(fcinfo)? }.desc;
    // SAFETY: `desc` is that type's blessed descriptor.
    Ok(unsafe { admission_tuple(desc, limits, outcome, blocked) })
}

/// A `throttle.admission` row with these fields, formed with its descriptor `desc`.
///
/// # Safety
/// `desc` is the blessed descriptor of `throttle.admission` (from [`answer_type`]).
unsafe fn admission_tuple(
    desc: pg_sys::TupleDesc,
    limits: usize,
    outcome: Outcome,
    blocked: Option<(i64, &str)>,
) -> pg_sys::Datum {
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
    // SAFETY: `desc` is the blessed descriptor of `throttle.admission`, whose six columns
    // (boolean, timestamptz, bigint, text, bigint, integer) match `values` and `nulls`, six
    // entries each, every non-NULL one a datum of its column's type (the text a fresh palloc'd
    // varlena). `heap_form_tuple` copies them into a new tuple palloc'd in the current memory
    // context; it never returns NULL (it raises an error instead), so `t_data` is readable.
    unsafe {
        let tuple = pg_sys::heap_form_tuple(desc, values.as_mut_ptr(), nulls.as_mut_ptr());
        // No field is toasted, so the tuple header is the composite datum.
        pg_sys::Datum::from((*tuple).t_data)
    }
}

/// What a `throttle_admit` call site keeps for the life of its `flinfo` (in `fn_extra`, the
/// usual C idiom: one catalog look-up per query, not per row): the answer's row type, and
/// answers as rows to copy, with where their varying fields are. Copying one row's bytes and
/// writing two or three fields is a fraction of `heap_form_tuple`'s work per attribute. A
/// template is made only once the call site has needed it twice (an admission; a refusal by
/// the same limit), so a statement that admits once, the usual shape of an application's call,
/// never pays for one.
struct AnswerType {
    desc: pg_sys::TupleDesc,
    /// The memory context of the call site (`fn_mcxt`), where templates are made.
    mcxt: pg_sys::MemoryContext,
    /// Admitted answers so far, counted up to the one that makes the template.
    admissions: u8,
    /// An admitted answer, varying in `headroom` and `limits` (None: not made yet, or it
    /// could not be).
    admitted: Option<Template<2>>,
    /// Refused answers by blocking limit (a few, by the limit's id): the limit last refused
    /// there and the configuration generation it was read in (its name may change with it),
    /// and its answer varying in `retry_at`, `headroom` and `limits` once it refused twice in
    /// a row.
    refused: [((i64, u64), Option<Template<3>>); REFUSED_ROWS],
    /// Templates still allowed to be made at this call site (each costs a few rows formed).
    budget: u8,
}

/// Refusing limits a call site keeps an answer row for (a power of two: a limit's place is
/// the top bits of its id's hash).
const REFUSED_ROWS: usize = 64;
const _: () = assert!(REFUSED_ROWS.is_power_of_two());

/// Templates a call site may make (each costs a few rows formed).
const TEMPLATES: u8 = 64;

/// A row formed by `heap_form_tuple`, `len` bytes at `row` (in the call site's memory
/// context), and the byte offset and width (8 or 4) of each of its `N` varying fields.
#[derive(Clone, Copy)]
struct Template<const N: usize> {
    row: *const u8,
    len: usize,
    at: [usize; N],
    width: [usize; N],
}

impl<const N: usize> Template<N> {
    /// Find the template of the rows `form` makes, whose field `i` is `values[i]` and
    /// `width[i]` bytes wide: each field's place is where a row with it alone changed (to all
    /// bits set) differs from the first; the template with two other values written in must
    /// then equal the row formed with them. None if anything does not line up.
    fn find<'a>(form: impl Fn([i64; N]) -> &'a [u8], width: [usize; N]) -> Option<Template<N>> {
        let base = form([0; N]);
        let mut at = [0; N];
        for i in 0..N {
            let mut v = [0; N];
            v[i] = -1;
            at[i] = differing_run(base, form(v), width[i])?;
        }
        let t = Template {
            row: base.as_ptr(),
            len: base.len(),
            at,
            width,
        };
        let check: [i64; N] = std::array::from_fn(|i| 0x0102_0304_0506_0708 + i as i64 * 0x11);
        let mut copy = base.to_vec();
        // SAFETY: `copy` holds the template's `len` bytes, and each field lies within them
        // (`differing_run` found it so).
        unsafe { t.write(copy.as_mut_ptr(), check) };
        (copy == form(check)).then_some(t)
    }

    /// Write `values` into the row at `row` (a copy of the template).
    ///
    /// # Safety
    /// `row` points at `len` writable bytes.
    #[inline]
    unsafe fn write(&self, row: *mut u8, values: [i64; N]) {
        for ((&at, &w), v) in self.at.iter().zip(&self.width).zip(values) {
            // SAFETY: each field's `at + width` is within `len` (`differing_run` found it
            // so), `row` has `len` writable bytes (the caller's contract), and the writes are
            // unaligned-safe.
            unsafe {
                let f = row.add(at);
                if w == 8 {
                    f.cast::<i64>().write_unaligned(v);
                } else {
                    f.cast::<i32>().write_unaligned(v as i32);
                }
            }
        }
    }

    /// A fresh row, palloc'd in the current memory context as `heap_form_tuple`'s would be,
    /// with `values` written in.
    #[inline]
    fn copy(&self, values: [i64; N]) -> pg_sys::Datum {
        // SAFETY: `row` points at `len` bytes (a tuple header and its data) in the call site's
        // memory context, which outlives every use of the template; palloc returns `len`
        // writable bytes (or raises an error), which no one else sees yet.
        unsafe {
            let p = pg_sys::palloc(self.len).cast::<u8>();
            std::ptr::copy_nonoverlapping(self.row, p, self.len);
            self.write(p, values);
            pg_sys::Datum::from(p)
        }
    }
}

impl AnswerType {
    /// Run `make` in the call site's memory context if a template may still be made.
    fn make<T>(&mut self, make: impl FnOnce(pg_sys::TupleDesc) -> Option<T>) -> Option<T> {
        self.budget = self.budget.checked_sub(1)?;
        // SAFETY: `mcxt` is the call site's memory context, alive as long as this
        // `AnswerType`; the current context is restored.
        unsafe {
            let old = pg_sys::MemoryContextSwitchTo(self.mcxt);
            let made = make(self.desc);
            pg_sys::MemoryContextSwitchTo(old);
            made
        }
    }

    /// An admitted answer with `headroom` and `limits`, copied from the template (made on
    /// the call site's second admission); None when there is no template.
    #[inline]
    fn admitted(&mut self, headroom: u64, limits: usize) -> Option<pg_sys::Datum> {
        if self.admitted.is_none() {
            self.admissions = self.admissions.saturating_add(1);
            if self.admissions != 2 {
                return None;
            }
            self.admitted = self.make(|desc| {
                let form = |[h, l]: [i64; 2]| {
                    // SAFETY: `desc` is the blessed descriptor of `throttle.admission`; the row
                    // is formed in the call site's context and read while it lives.
                    unsafe { admitted_row(desc, h, l) }
                };
                Template::find(form, [8, 4])
            });
        }
        Some(self.admitted?.copy([headroom as i64, limits as i64]))
    }

    /// A refused answer, copied from its blocking limit's template (made on that limit's
    /// second refusal in a row at its place here); None when there is none.
    #[inline(never)]
    fn refused(
        &mut self,
        outcome: &Outcome,
        blocked: Option<(i64, &str)>,
        limits: usize,
    ) -> Option<pg_sys::Datum> {
        let (
            Outcome::Refused {
                retry_at: Some(retry_at),
                headroom,
                ..
            },
            Some((id, label)),
        ) = (*outcome, blocked)
        else {
            return None;
        };
        let k = ((id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            >> (u64::BITS - REFUSED_ROWS.trailing_zeros())) as usize;
        let key = (id, shmem::config_generation());
        if self.refused[k].0 != key {
            self.refused[k] = (key, None);
            return None;
        }
        if self.refused[k].1.is_none() {
            let t = self.make(|desc| {
                let form = |[r, h, l]: [i64; 3]| {
                    // SAFETY: as in `admitted`.
                    unsafe { refused_row(desc, id, label, r, h, l) }
                };
                Template::find(form, [8, 8, 4])
            })?;
            self.refused[k].1 = Some(t);
        }
        Some(
            self.refused[k]
                .1?
                .copy([retry_at, headroom as i64, limits as i64]),
        )
    }
}

/// The bytes of an admitted answer formed by [`admission_tuple`].
///
/// # Safety
/// `desc` is the blessed descriptor of `throttle.admission`; the row is palloc'd in the
/// current memory context and read while it lives.
unsafe fn admitted_row<'a>(desc: pg_sys::TupleDesc, headroom: i64, limits: i64) -> &'a [u8] {
    let o = Outcome::Admitted {
        headroom: Some(headroom as u64),
    };
    // SAFETY: the caller's contract; the datum is a composite formed just now.
    unsafe { tuple_bytes(admission_tuple(desc, limits as u32 as usize, o, None)) }
}

/// The bytes of an answer refused by limit `id` (`label`), formed by [`admission_tuple`].
///
/// # Safety
/// As [`admitted_row`].
unsafe fn refused_row<'a>(
    desc: pg_sys::TupleDesc,
    id: i64,
    label: &str,
    retry_at: i64,
    headroom: i64,
    limits: i64,
) -> &'a [u8] {
    let o = Outcome::Refused {
        blocker: 0,
        retry_at: Some(retry_at),
        headroom: headroom as u64,
    };
    let blocked = Some((id, label));
    // SAFETY: the caller's contract; the datum is a composite formed just now.
    unsafe { tuple_bytes(admission_tuple(desc, limits as u32 as usize, o, blocked)) }
}

/// The bytes of a composite datum (a tuple header with its data).
///
/// # Safety
/// `d` is a composite datum formed by [`admission_tuple`], alive now.
unsafe fn tuple_bytes<'a>(d: pg_sys::Datum) -> &'a [u8] {
    // SAFETY: a composite datum is a plain 4-byte-header varlena (never toasted or short:
    // `heap_form_tuple` sets its length with SET_VARSIZE), so its size is readable and it
    // spans that many bytes.
    unsafe {
        let p = d.cast_mut_ptr::<pg_sys::varlena>();
        std::slice::from_raw_parts(p.cast::<u8>(), pgrx::varlena::varsize_any(p))
    }
}

/// The offset of the one run of at most `n` bytes in which `a` and `b` differ (None if they
/// differ in more, or not at all, or have different lengths).
fn differing_run(a: &[u8], b: &[u8], n: usize) -> Option<usize> {
    if a.len() != b.len() {
        return None;
    }
    let first = a.iter().zip(b).position(|(x, y)| x != y)?;
    let last = a.len()
        - 1
        - a.iter()
            .rev()
            .zip(b.iter().rev())
            .position(|(x, y)| x != y)?;
    (last + 1 - first <= n && first + n <= a.len()).then_some(first)
}

/// The call site's [`AnswerType`], made on its first call.
///
/// # Safety
/// `fcinfo` is the call information of `throttle_admit`, running now.
unsafe fn answer_type<'a>(fcinfo: pg_sys::FunctionCallInfo) -> Result<&'a mut AnswerType> {
    // SAFETY: `fcinfo` and its `flinfo` are live for this call (the caller's contract), and
    // only this function uses `fn_extra` of `throttle_admit`'s flinfo: it is NULL or the
    // `AnswerType` stored below, used by one call at a time. `get_call_result_type` writes
    // through pointers to two locals. The descriptor and the `AnswerType` are made in
    // `fn_mcxt`, which lives as long as the flinfo, so the cached pointer stays valid for every
    // later call through it; the old memory context is restored.
    unsafe {
        let flinfo = (*fcinfo).flinfo;
        if !(*flinfo).fn_extra.is_null() {
            return Ok(&mut *(*flinfo).fn_extra.cast::<AnswerType>());
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
        let desc = pg_sys::BlessTupleDesc(pg_sys::CreateTupleDescCopy(desc));
        let answer = pg_sys::palloc(size_of::<AnswerType>()).cast::<AnswerType>();
        answer.write(AnswerType {
            desc,
            mcxt: (*flinfo).fn_mcxt,
            admissions: 0,
            admitted: None,
            refused: [((0, 0), None); REFUSED_ROWS],
            budget: TEMPLATES,
        });
        pg_sys::MemoryContextSwitchTo(old);
        (*flinfo).fn_extra = answer.cast();
        Ok(&mut *answer)
    }
}

pgrx::extension_sql!(
    r#"
-- throttle_admit for a message to `recipient`: the line's contact rules (sql/contacts.sql) are
-- judged first, at ts, and counted with the admission in the caller's transaction.
CREATE FUNCTION throttle.throttle_admit(
    sender text, carrier text, ts timestamptz, cost integer, channel text, recipient text
) RETURNS throttle.admission
VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'pg_throttle_admit_to';
"#,
    name = "admit_to",
    requires = ["admit_functions"],
);

/// Each line's contact rules, for admissions, with the configuration generation they are of.
static CONTACT_RULES: backend::BackendLocal<Option<(u64, crate::contacts::Cache)>> =
    backend::BackendLocal::new(None);

/// The admission of `call` to `recipient`: without contact rules on its line, exactly
/// [`decide`]; with them, under the line's lock, the rules judge the message at the call's
/// time (a rule that holds it refuses the call until when it would let it go, or with no
/// retry time until the recipient writes), then the rate limits and caps decide, and an
/// admitted message is counted in the line's and the recipient's state.
fn admit_to<R>(
    call: &Call,
    recipient: Option<&[u8]>,
    then: impl FnOnce(usize, Outcome, Option<(i64, &str)>) -> Result<R>,
) -> Result<R> {
    if !shmem::is_loaded() {
        return Err(Box::new(error::not_preloaded()));
    }
    // Who may act for the sender first: a line's lock is taken only for its own tenants.
    config::authorize(call.sender, call.carrier, call.channel)?;
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let (sender, channel) = (text(call.sender), text(call.channel));
    let generation = shmem::config_generation();
    let mut cache = CONTACT_RULES
        .with(|c| c.take())
        .filter(|(g, _)| *g == generation)
        .map(|(_, c)| c)
        .unwrap_or_default();
    let read = if cache.known_free(&sender) {
        Ok(None)
    } else {
        let to = recipient.map(text).unwrap_or_default();
        Spi::connect_mut(|c| {
            crate::contacts::read_one(c, &mut cache, &sender, &to, &channel, call.now)
        })
        .map_err(|e| Box::new(error::internal(e)))
    };
    let rules_label = |t: &crate::limiter::contact::Tick, rule: i64| -> String {
        let kind = t.lines[0]
            .0
            .iter()
            .find(|r| r.id == rule)
            .map_or("", |r| r.kind.as_str());
        format!("contact rule {} ({kind})", cache.label(rule).0)
    };
    let outcome = match read {
        Err(e) => Err(e),
        Ok(None) => Ok(None),
        Ok(Some(_)) if recipient.is_none() => Err(Box::new(error::invalid(
            format!("sender \"{sender}\" has contact rules: they count recipients"),
            "pass the recipient: throttle_admit(sender, carrier, ts, cost, channel, recipient)",
        ))),
        Ok(Some((mut t, keys))) => {
            let n_rules = t.lines[0].0.len();
            let refused = |retry_at| Outcome::Refused {
                blocker: 0,
                retry_at,
                headroom: 0,
            };
            match t.judge(0, 0, call.now) {
                crate::limiter::contact::Judged::Free => {
                    let (n, outcome, blocker) = decide(call, true, |n, o, b| {
                        Ok((n, o, b.map(|(id, l)| (id, l.to_string()))))
                    })?;
                    if matches!(outcome, Outcome::Admitted { .. }) {
                        t.count(0, 0, call.now);
                        crate::contacts::kept_by_txn(&t, &keys, call.now);
                    }
                    Ok(Some((n + n_rules, outcome, blocker)))
                }
                crate::limiter::contact::Judged::Refused { rule, .. } => Ok(Some((
                    n_rules,
                    refused(None),
                    Some((rule, rules_label(&t, rule))),
                ))),
                _ => {
                    let held = t.held.first().map(|h| (h.1, h.2));
                    let (rule, until) = held.unwrap_or((0, None));
                    Ok(Some((
                        n_rules,
                        refused(until),
                        Some((rule, rules_label(&t, rule))),
                    )))
                }
            }
        }
    };
    CONTACT_RULES.with(|c| *c = Some((generation, cache)));
    crate::contact_txn::bound()?;
    match outcome? {
        None => decide(call, true, then),
        Some((n, outcome, blocker)) => then(
            n,
            outcome,
            blocker.as_ref().map(|(id, l)| (*id, l.as_str())),
        ),
    }
}

#[unsafe(no_mangle)]
#[doc(hidden)]
pub extern "C" fn pg_finfo_pg_throttle_admit_to() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// `throttle.throttle_admit(sender, carrier, ts, cost, channel, recipient)`.
///
/// # Safety
/// Called only by PostgreSQL's function manager, with a valid `fcinfo`, as the function of
/// that SQL function.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn pg_throttle_admit_to(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: `fcinfo` is the call information of the six-argument `throttle_admit`, running
    // now, whose first five arguments are those of the five-argument one (what `read_call`
    // reads) and whose sixth is text; the borrowed `Call` and recipient are dropped before
    // this function returns.
    let r = unsafe { read_call(fcinfo) }.and_then(|call| {
        // SAFETY: as above: `fcinfo` is live and has six arguments.
        let given = unsafe { arg(fcinfo, 5) }.is_some();
        let recipient = if given {
            // SAFETY: as above: argument 5 is declared text, and is not NULL.
            Some(unsafe { text_arg(fcinfo, 5, "recipient") }?)
        } else {
            None
        };
        admit_to(&call, recipient, |limits, outcome, blocker| {
            // SAFETY: `fcinfo` is the live call information of a function returning the
            // composite `throttle.admission`.
            unsafe { admission_datum(fcinfo, limits, outcome, blocker) }
        })
    });
    error::or_raise(r)
}
