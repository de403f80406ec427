//! `throttle_admit` and `try_admit`: atomic admission across every limit that applies.

use crate::config::{self, SenderLimits};
use crate::error::{self, Result};
use crate::gucs;
use crate::limiter::gcra::MAX_COST;
use crate::limiter::table::Key;
use crate::limiter::{Micros, Outcome};
use crate::shmem::{self, Want, MAX_WANTS};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::{composite_type, PgTupleDesc};

/// Validated arguments and the answer for one call.
struct Answer {
    outcome: Outcome,
    /// Index into `limits` of each want, to name a blocker.
    wanted: [u16; MAX_WANTS],
    checked: usize,
    limits: std::rc::Rc<SenderLimits>,
}

fn checked_text<'a>(v: Option<&'a str>, what: &str) -> Result<&'a str> {
    match v {
        None => Err(error::null_value(what)),
        Some("") => Err(error::invalid(
            format!("{what} must not be empty"),
            format!("pass the {what} as registered in throttle.sender / throttle.rate_limit"),
        )),
        Some(s) => Ok(s),
    }
}

fn checked_ts(ts: Option<TimestampWithTimeZone>) -> Result<Micros> {
    let ts = ts.ok_or_else(|| error::null_value("ts"))?;
    if ts.is_infinity() || ts.is_neg_infinity() {
        return Err(error::invalid(
            "ts must be finite",
            "pass now() or a real point in time",
        ));
    }
    let us: Micros = ts.into();
    let max_future = gucs::max_future_us();
    if max_future > 0 {
        let start = unsafe { pg_sys::GetCurrentTransactionStartTimestamp() };
        if us > start.saturating_add(max_future) {
            return Err(error::invalid(
                "ts is too far in the future",
                format!(
                    "ts may be at most throttle.max_future ({} ms) after the transaction's start; pass now()",
                    max_future / 1000
                ),
            ));
        }
    }
    Ok(us)
}

fn decide(
    sender: Option<&str>,
    carrier: Option<&str>,
    ts: Option<TimestampWithTimeZone>,
    cost: Option<i32>,
    channel: Option<&str>,
) -> Result<(Answer, Micros)> {
    let sender = checked_text(sender, "sender")?;
    let carrier = checked_text(carrier, "carrier")?;
    let channel = checked_text(channel, "channel")?;
    let now = checked_ts(ts)?;
    let cost = cost.ok_or_else(|| error::null_value("cost"))?;
    if cost < 1 || cost as u64 > MAX_COST {
        return Err(error::invalid(
            format!("cost must be between 1 and {MAX_COST}, got {cost}"),
            "cost counts segments: 1 for a single-segment message",
        ));
    }
    if !shmem::is_loaded() {
        return Err(error::not_preloaded());
    }
    let limits = config::sender_limits(sender)?;
    let mut wants = [Want {
        key: Key::EMPTY,
        rate: crate::limiter::Rate {
            count: 1,
            period_us: 1,
            burst: 1,
        },
    }; MAX_WANTS];
    let mut wanted = [0u16; MAX_WANTS];
    let mut n = 0;
    for (i, l) in limits.limits.iter().enumerate() {
        if !l.applies(carrier, channel) {
            continue;
        }
        if n == MAX_WANTS {
            return Err(error::too_many(
                format!("more than {MAX_WANTS} limits apply to sender \"{sender}\""),
                "merge or remove limits in throttle.rate_limit",
            ));
        }
        wants[n] = Want {
            key: Key::new(l.id, 0),
            rate: l.rate,
        };
        wanted[n] = i as u16;
        n += 1;
    }
    let outcome = shmem::admit(&wants[..n], cost as u64, now).map_err(ErrorReport::from)?;
    Ok((
        Answer {
            outcome,
            wanted,
            checked: n,
            limits,
        },
        now,
    ))
}

/// May `sender` send `cost` segments to `carrier` on `channel` at `ts`? If every limit that
/// applies has room, all of them are debited and the answer says so; otherwise none is, and
/// the answer names the limit that blocks and the earliest time the same call would pass.
#[pg_extern(volatile, parallel_unsafe)]
fn throttle_admit(
    sender: Option<&str>,
    carrier: Option<&str>,
    ts: default!(Option<TimestampWithTimeZone>, "now()"),
    cost: default!(Option<i32>, 1),
    channel: default!(Option<&str>, "'sms'"),
    fcinfo: pg_sys::FunctionCallInfo,
) -> Result<composite_type!('static, "admission")> {
    let (a, _) = decide(sender, carrier, ts, cost, channel)?;
    let desc = admission_desc(fcinfo)?;
    let checked = Some((a.checked as i32).into());
    let datums: [Option<pg_sys::Datum>; 6] = match a.outcome {
        Outcome::Admitted { headroom } => [
            Some(true.into()),
            None,
            None,
            None,
            headroom.map(|h| (h as i64).into()),
            checked,
        ],
        Outcome::Refused {
            blocker,
            retry_at,
            headroom,
        } => {
            let limit = &a.limits.limits[a.wanted[blocker] as usize];
            [
                Some(false.into()),
                retry_at.map(|t| t.into()),
                Some(limit.id.into()),
                limit.label.as_ref().into_datum(),
                Some((headroom as i64).into()),
                checked,
            ]
        }
    };
    // SAFETY: `desc` describes throttle.admission, whose columns the datums above match.
    unsafe {
        PgHeapTuple::from_datums(PgTupleDesc::from_pg_unchecked(desc), datums)
            .map_err(|e| error::internal(format!("admission row: {e}")))
    }
}

/// The boolean form of `throttle_admit`, for `WHERE` clauses: true when admitted (and
/// debited), false when throttled.
#[pg_extern(volatile, parallel_unsafe)]
fn try_admit(
    sender: Option<&str>,
    carrier: Option<&str>,
    ts: default!(Option<TimestampWithTimeZone>, "now()"),
    cost: default!(Option<i32>, 1),
    channel: default!(Option<&str>, "'sms'"),
) -> Result<bool> {
    let (a, _) = decide(sender, carrier, ts, cost, channel)?;
    Ok(matches!(a.outcome, Outcome::Admitted { .. }))
}

/// The blessed descriptor of the function's result type, cached for the life of the call site
/// in `flinfo->fn_extra` (the usual C idiom: one catalog look-up per query, not per row).
fn admission_desc(fcinfo: pg_sys::FunctionCallInfo) -> Result<pg_sys::TupleDesc> {
    unsafe {
        let flinfo = (*fcinfo).flinfo;
        if !(*flinfo).fn_extra.is_null() {
            return Ok((*flinfo).fn_extra.cast());
        }
        let mut typoid = pg_sys::InvalidOid;
        let mut desc: pg_sys::TupleDesc = std::ptr::null_mut();
        let kind = pg_sys::get_call_result_type(fcinfo, &mut typoid, &mut desc);
        if kind != pg_sys::TypeFuncClass::TYPEFUNC_COMPOSITE || desc.is_null() {
            return Err(error::internal(
                "throttle_admit must return a composite type",
            ));
        }
        let old = pg_sys::MemoryContextSwitchTo((*flinfo).fn_mcxt);
        let copy = pg_sys::BlessTupleDesc(pg_sys::CreateTupleDescCopy(desc));
        pg_sys::MemoryContextSwitchTo(old);
        (*flinfo).fn_extra = copy.cast();
        Ok(copy)
    }
}
