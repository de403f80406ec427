//! "Why is it waiting?" and "how long would this take?": both answered from the same limit
//! model the worker uses (the buckets in shared memory, the caps' usage in their table).

use crate::caps;
use crate::config;
use crate::error::{self, Result};
use crate::limiter::cap::Ledger;
use crate::limiter::capacity;
use crate::limiter::Micros;
use crate::shmem::{self, Want};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

fn ts(us: Micros) -> Option<TimestampWithTimeZone> {
    TimestampWithTimeZone::try_from(us).ok()
}

type ExplainRow = (
    String,
    String,
    Option<i64>,
    Option<TimestampWithTimeZone>,
    bool,
    String,
);

/// One constraint on a message: (kind, name, limit id, when it lets the message go, detail).
struct Constraint {
    kind: &'static str,
    name: String,
    limit_id: Option<i64>,
    ready_at: Option<Micros>,
    detail: String,
}

/// The rate limits of (sender, carrier, channel): bucket, limit id, name (None: the sender
/// is not registered).
fn plan_limits(
    sender: &str,
    carrier: &str,
    channel: &str,
) -> Result<Option<Vec<(Want, i64, String)>>> {
    config::with_known_plan(
        sender.as_bytes(),
        carrier.as_bytes(),
        channel.as_bytes(),
        |plan| {
            plan.wants
                .iter()
                .enumerate()
                .map(|(i, w)| (*w, plan.limit(i).id, plan.limit(i).label.to_string()))
                .collect()
        },
    )
    .map_err(|e| *e)
}

/// Senders other than `p`'s with messages waiting under limit `limit_id` (narrowed like the
/// limit: carrier, channel, sender type), the sum of their weights, and `p`'s sender's weight.
fn sharing(c: &SpiClient<'_>, limit_id: i64, p: &Pending) -> Result<(i64, i64, i64)> {
    let t = c
        .select(
            "SELECT count(*) FILTER (WHERE s.sender <> $2)::int8,
                    coalesce(sum(s.weight) FILTER (WHERE s.sender <> $2), 0)::int8,
                    coalesce((SELECT weight FROM throttle.sender WHERE sender = $2), 1)::int8
               FROM throttle.rate_limit l
               JOIN throttle.sender s
                 ON CASE l.scope WHEN 'sender' THEN s.sender = l.scope_id
                                 WHEN 'campaign' THEN s.campaign = l.scope_id
                                 WHEN 'brand' THEN s.brand = l.scope_id
                                 ELSE s.account = l.scope_id END
                AND (l.sender_type IS NULL OR s.sender_type = l.sender_type)
                AND NOT l.each_sender
              WHERE l.limit_id = $1
                AND EXISTS (SELECT 1 FROM throttle.pending q
                             WHERE q.sender = s.sender
                               AND (l.carrier IS NULL OR q.carrier = l.carrier)
                               AND (l.channel IS NULL OR q.channel = l.channel)
                               AND (q.sender <> $2 OR q.carrier <> $3 OR q.channel <> $4))",
            None,
            &[
                limit_id.into(),
                p.sender.clone().into(),
                p.carrier.clone().into(),
                p.channel.clone().into(),
            ],
        )
        .map_err(error::internal)?;
    let r = t.first();
    Ok((
        r.get::<i64>(1).map_err(error::internal)?.unwrap_or(0),
        r.get::<i64>(2).map_err(error::internal)?.unwrap_or(0),
        r.get::<i64>(3).map_err(error::internal)?.unwrap_or(1),
    ))
}

/// A pending message as explain needs it.
struct Pending {
    id: i64,
    sender: String,
    carrier: String,
    channel: String,
    cost: i64,
    priority: i16,
    not_before: Option<Micros>,
    enqueued_at: Micros,
}

/// Whether this database's schema has `table` (an extension not yet updated lacks the newer
/// ones).
fn present(c: &SpiClient<'_>, table: &str) -> Result<bool> {
    crate::backend::has_table(c, table).map_err(error::internal)
}

/// The contact rule that holds message `p` (see sql/contacts.sql), and what lets it go.
fn contact_constraint(c: &SpiClient<'_>, p: &Pending) -> Result<Option<Constraint>> {
    // A database not yet updated to 0.5.0 has no contact rules.
    if !present(c, "throttle.contact_rule")? {
        return Ok(None);
    }
    let t = c
        .select(
            "SELECT r.rule_id, coalesce(r.name, r.kind::text || ' (rule ' || r.rule_id || ')'),
                    r.kind::text, r.max_count, coalesce(r.per::text, 'day from ' || r.reset_at || ' ' || r.time_zone),
                    m.recipient, m.not_before = throttle.until_reply()
               FROM throttle.pending m JOIN throttle.contact_rule r ON r.rule_id = m.held_rule
              WHERE m.id = $1",
            Some(1),
            &[p.id.into()],
        )
        .map_err(error::internal)?;
    if t.is_empty() {
        return Ok(None);
    }
    let r = t.first();
    let get = |e: pgrx::spi::SpiError| error::internal(e);
    let id = r.get::<i64>(1).map_err(get)?;
    let name = r.get::<String>(2).map_err(get)?.unwrap_or_default();
    let kind = r.get::<String>(3).map_err(get)?.unwrap_or_default();
    let max = r.get::<i32>(4).map_err(get)?.unwrap_or(0);
    let window = r.get::<String>(5).map_err(get)?.unwrap_or_default();
    let to = r
        .get::<String>(6)
        .map_err(get)?
        .unwrap_or_else(|| "its recipient".into());
    let for_reply = r.get::<bool>(7).map_err(get)?.unwrap_or(false);
    let detail = match kind.as_str() {
        "new_contacts" => format!(
            "{max} new contacts (who never wrote to the line) per {window} are counted: {to} would be one more; goes when the window resets"
        ),
        "follow_up_contacts" => format!(
            "{max} follow-up contacts (messaged first after the reply window) per {window} are counted: {to} would be one more; goes when the window resets, or at once if {to} writes"
        ),
        "unanswered" => format!(
            "{max} messages to {to} without a reply: goes when {to} writes (throttle.inbound)"
        ),
        "line_streak" => format!(
            "{max} consecutive outbound messages on the line: goes when anyone writes to it (throttle.inbound)"
        ),
        _ => format!("{max} messages to {to} per {window}: goes when the oldest leaves the window"),
    };
    let detail = if for_reply {
        format!("{detail} (ready_at 9999-12-31 stands for: until then)")
    } else {
        detail
    };
    Ok(Some(Constraint {
        kind: "contact_rule",
        name,
        limit_id: id,
        ready_at: p.not_before,
        detail,
    }))
}

fn pending(c: &SpiClient<'_>, id: i64) -> Result<Option<Pending>> {
    let t = c
        .select(
            "SELECT sender, carrier, channel, cost, priority, not_before, enqueued_at
               FROM throttle.pending WHERE id = $1",
            Some(1),
            &[id.into()],
        )
        .map_err(error::internal)?;
    if t.is_empty() {
        return Ok(None);
    }
    let r = t.first();
    let get = |e: pgrx::spi::SpiError| error::internal(e);
    Ok(Some(Pending {
        id,
        sender: r.get::<String>(1).map_err(get)?.unwrap_or_default(),
        carrier: r.get::<String>(2).map_err(get)?.unwrap_or_default(),
        channel: r.get::<String>(3).map_err(get)?.unwrap_or_default(),
        cost: r.get::<i32>(4).map_err(get)?.unwrap_or(1) as i64,
        priority: r.get::<i16>(5).map_err(get)?.unwrap_or(0),
        not_before: r
            .get::<TimestampWithTimeZone>(6)
            .map_err(get)?
            .map(Micros::from),
        enqueued_at: r
            .get::<TimestampWithTimeZone>(7)
            .map_err(get)?
            .map_or(0, Micros::from),
    }))
}

/// Every constraint on `p` at `now`: its not-before, its place in its queue, each rate limit
/// (when the bucket will have given the queue's messages ahead of it and it), each calendar
/// cap (the window in which it fits), and the worker.
fn constraints(c: &SpiClient<'_>, p: &Pending, now: Micros) -> Result<Vec<Constraint>> {
    // A contact rule that holds it comes first: it is what its not_before stands for.
    let mut out: Vec<Constraint> = contact_constraint(c, p)?.into_iter().collect();
    out.extend(not_before_constraint(p, now));
    let (ahead, ahead_cost) = ahead_in_queue(c, p)?;
    out.push(Constraint {
        kind: "queue",
        name: format!("{} → {} ({})", p.sender, p.carrier, p.channel),
        limit_id: None,
        ready_at: None,
        detail: format!("{ahead} messages ({ahead_cost} segments) ahead of it in its queue"),
    });
    let need = (ahead_cost + p.cost).max(1) as u64;
    let Some(limits) = plan_limits(&p.sender, &p.carrier, &p.channel)? else {
        out.push(Constraint {
            kind: "sender",
            name: p.sender.clone(),
            limit_id: None,
            ready_at: None,
            detail: "the sender is not registered in throttle.sender: the worker holds its messages until it is".into(),
        });
        return Ok(out);
    };
    for limit in limits {
        out.push(rate_constraint(c, p, need, limit, now)?);
    }
    for def in caps::caps_for(&p.sender, &p.carrier, &p.channel)?.unwrap_or_default() {
        out.push(cap_constraint(c, &def, need, now)?);
    }
    out.extend(worker_constraint());
    Ok(out)
}

/// `p`'s not-before, if it is still ahead of `now`.
fn not_before_constraint(p: &Pending, now: Micros) -> Option<Constraint> {
    let nb = p.not_before.filter(|&t| t > now)?;
    Some(Constraint {
        kind: "not_before",
        name: "not_before".into(),
        limit_id: None,
        ready_at: Some(nb),
        detail: "held until its not_before (set by the sender, or by a defer_local cap)".into(),
    })
}

/// The messages ahead of `p` in its queue (releasable now, and before it in priority and id
/// order), and their segments.
fn ahead_in_queue(c: &SpiClient<'_>, p: &Pending) -> Result<(i64, i64)> {
    let t = c
        .select(
            "SELECT count(*)::int8, coalesce(sum(cost), 0)::int8 FROM throttle.pending
              WHERE sender = $1 AND carrier = $2 AND channel = $3
                AND (priority > $4 OR (priority = $4 AND id < $5))
                AND (not_before IS NULL OR not_before <= now())
                AND (expires_at IS NULL OR expires_at > now())",
            None,
            &[
                p.sender.clone().into(),
                p.carrier.clone().into(),
                p.channel.clone().into(),
                p.priority.into(),
                p.id.into(),
            ],
        )
        .map_err(error::internal)?;
    let r = t.first();
    let ahead: i64 = r.get(1).map_err(error::internal)?.unwrap_or(0);
    let ahead_cost: i64 = r.get(2).map_err(error::internal)?.unwrap_or(0);
    Ok((ahead, ahead_cost))
}

/// Rate limit `(w, id, label)` on `p`: when its bucket will have passed the `need` segments
/// of `p`'s queue up to `p`. Other senders with messages waiting under this limit share it
/// by cost, in proportion to the weights: this queue's part of it is weight / (sum of weights).
fn rate_constraint(
    c: &SpiClient<'_>,
    p: &Pending,
    need: u64,
    (w, id, label): (Want, i64, String),
    now: Micros,
) -> Result<Constraint> {
    let (others, their_weight, weight) = sharing(c, id, p)?;
    let scaled = capacity::weighted_need(need, others, their_weight, weight);
    let at = shmem::eta(&w, scaled, now).map_err(pgrx::pg_sys::panic::ErrorReport::from)?;
    let how = if w.rate.is_window() {
        format!(
            "at most {} per {} µs in every window",
            w.rate.count, w.rate.period_us
        )
    } else {
        format!(
            "a token bucket of {} per {} µs (burst {})",
            w.rate.count, w.rate.period_us, w.rate.burst
        )
    };
    let share = if others > 0 {
        format!(
            "; {others} other senders wait under it too (weight {their_weight} against this sender's {weight}): its share is {:.0} % while they all wait",
            100.0 * weight as f64 / (weight + their_weight) as f64
        )
    } else {
        "; no other sender waits under it".to_string()
    };
    Ok(Constraint {
        kind: "rate_limit",
        name: label,
        limit_id: Some(id),
        ready_at: Some(at),
        detail: format!("{need} segments through {how}{share}{}", slowed(c, id)?),
    })
}

/// Why limit `id` runs below its configured rate, if a provider's error slowed it (see
/// sql/feedback.sql), as a clause to append; empty when it runs at its configured rate.
fn slowed(c: &SpiClient<'_>, id: i64) -> Result<String> {
    // A database not yet updated to 0.6.0 has no feedback.
    if !present(c, "throttle.limit_feedback")? {
        return Ok(String::new());
    }
    let t = c
        .select(
            "SELECT pg_catalog.format('; slowed to %s (configured %s) by provider error %s at %s, back to %s by %s',
                                      l.rate, f.configured_rate, f.error_code, f.slowed_at, f.configured_rate,
                                      f.recovered_by)
               FROM throttle.limit_feedback f JOIN throttle.rate_limit l ON l.limit_id = f.limit_id
              WHERE f.limit_id = $1",
            None,
            &[id.into()],
        )
        .map_err(error::internal)?;
    if t.is_empty() {
        return Ok(String::new());
    }
    let why = t.first().get::<String>(1).map_err(error::internal)?;
    Ok(why.unwrap_or_default())
}

/// Calendar cap `def`: the window of it in which `need` more segments fit.
fn cap_constraint(
    c: &SpiClient<'_>,
    def: &caps::CapDef,
    need: u64,
    now: Micros,
) -> Result<Constraint> {
    let l = cap_ledger(c, def, now)?;
    let allowed = def.rule.allowed().max(1);
    let at = capacity::cap_ready_at(&def.cal, allowed, l.spent(), need, l.window_end, now);
    Ok(Constraint {
        kind: "cap",
        name: def.label.clone(),
        limit_id: Some(-def.id),
        ready_at: Some(at),
        detail: format!(
            "{} of {allowed} spent in the window that ends {}; at_cap = {}",
            l.spent(),
            ts(l.window_end)
                .map(|t| t.to_iso_string())
                .unwrap_or_default(),
            def.action.as_str()
        ),
    })
}

/// Cap `def`'s usage in its window that contains `now`, as `throttle.cap_usage` counts it.
fn cap_ledger(c: &SpiClient<'_>, def: &caps::CapDef, now: Micros) -> Result<Ledger> {
    let mut l = Ledger::new(&def.cal, now);
    let u = c
        .select(
            "SELECT used, leased FROM throttle.cap_usage WHERE cap_id = $1 AND window_start = $2",
            Some(1),
            &[def.id.into(), ts(l.window_start).into()],
        )
        .map_err(error::internal)?;
    if !u.is_empty() {
        let r = u.first();
        l.used = r
            .get::<i64>(1)
            .map_err(error::internal)?
            .unwrap_or(0)
            .max(0) as u64;
        l.leased = r
            .get::<i64>(2)
            .map_err(error::internal)?
            .unwrap_or(0)
            .max(0) as u64;
    }
    Ok(l)
}

/// The worker, when none runs for this database (then nothing is released).
fn worker_constraint() -> Option<Constraint> {
    // SAFETY: `MyDatabaseId` is a plain global PostgreSQL sets once when this backend
    // connects to its database, before any SQL function runs; the backend is single-threaded,
    // so this read of a `Copy` value races with no write.
    let db = unsafe { pg_sys::MyDatabaseId }.to_u32();
    if shmem::worker_pid() != 0 && shmem::worker_serves(db) {
        return None;
    }
    Some(Constraint {
        kind: "worker",
        name: "release worker".into(),
        limit_id: None,
        ready_at: None,
        detail: "no release worker runs for this database: nothing is released (see throttle.worker_state())".into(),
    })
}

fn rows(cs: Vec<Constraint>, now: Micros) -> Vec<ExplainRow> {
    let worst = cs.iter().filter_map(|c| c.ready_at).max().unwrap_or(now);
    let no_worker = cs.iter().any(|c| c.kind == "worker" || c.kind == "sender");
    let mut holder_named = false;
    cs.into_iter()
        .map(|c| {
            let holds = if c.kind == "worker" || c.kind == "sender" {
                true
            } else {
                !no_worker && !holder_named && worst > now && c.ready_at == Some(worst) && {
                    holder_named = true;
                    true
                }
            };
            (
                c.kind.to_string(),
                c.name,
                c.limit_id,
                c.ready_at.and_then(ts),
                holds,
                c.detail,
            )
        })
        .collect()
}

/// Why message `id` is still waiting: one row per constraint on it (its not_before, its place
/// in its queue, each rate limit, each calendar cap, the worker), with when each lets it go;
/// `holds` marks the one that holds it longest. A released or dead message says so.
#[pg_extern(volatile, parallel_unsafe)]
fn explain(
    id: i64,
) -> Result<
    TableIterator<
        'static,
        (
            name!(kind, String),
            name!(name, String),
            name!(limit_id, Option<i64>),
            name!(ready_at, Option<TimestampWithTimeZone>),
            name!(holds, bool),
            name!(detail, String),
        ),
    >,
> {
    // SAFETY: `GetCurrentTimestamp` only reads the system clock; it has no preconditions and
    // is called on this backend's own thread.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    let out = Spi::connect(|c| -> Result<Vec<ExplainRow>> {
        if let Some(p) = pending(c, id)? {
            let mut v = rows(constraints(c, &p, now)?, now);
            v.insert(
                0,
                (
                    "waiting".into(),
                    format!("message {id}"),
                    None,
                    ts(p.not_before.unwrap_or(p.enqueued_at).max(p.enqueued_at)),
                    false,
                    "pending since ready_at (its enqueue, or its not_before)".into(),
                ),
            );
            return Ok(v);
        }
        let t = c
            .select(
                "SELECT 'released', released_at, 'released: take it from throttle.ready' FROM throttle.ready WHERE id = $1
                 UNION ALL
                 SELECT 'dead', died_at, 'dead: ' || reason || coalesce(' (error code ' || error_code || ')', '')
                   FROM throttle.dead WHERE id = $1",
                Some(1),
                &[id.into()],
            )
            .map_err(error::internal)?;
        if t.is_empty() {
            return Err(error::undefined(
                format!("no message {id} in throttle.pending, throttle.ready or throttle.dead"),
                "pass the id returned by throttle.enqueue() (consumed messages are gone)",
            ));
        }
        let r = t.first();
        Ok(vec![(
            r.get::<String>(1)
                .map_err(error::internal)?
                .unwrap_or_default(),
            format!("message {id}"),
            None,
            r.get::<TimestampWithTimeZone>(2).map_err(error::internal)?,
            false,
            r.get::<String>(3)
                .map_err(error::internal)?
                .unwrap_or_default(),
        )])
    })?;
    Ok(TableIterator::new(out))
}

/// Every queue of `sender`: how many wait and since when, and for its head and its last
/// message, when each would go and what holds it.
#[pg_extern(volatile, parallel_unsafe)]
fn explain_sender(
    sender: &str,
) -> Result<
    TableIterator<
        'static,
        (
            name!(carrier, String),
            name!(channel, String),
            name!(waiting, i64),
            name!(oldest, Option<TimestampWithTimeZone>),
            name!(head_id, i64),
            name!(head_ready_at, Option<TimestampWithTimeZone>),
            name!(last_id, i64),
            name!(last_ready_at, Option<TimestampWithTimeZone>),
            name!(held_by, Option<String>),
        ),
    >,
> {
    crate::config::authorize_sender(sender.as_bytes()).map_err(|e| *e)?;
    // SAFETY: `GetCurrentTimestamp` only reads the system clock; it has no preconditions and
    // is called on this backend's own thread.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    let out = Spi::connect(|c| -> Result<Vec<_>> {
        let t = c
            .select(
                "SELECT carrier, channel, count(*)::int8, min(enqueued_at),
                        (array_agg(id ORDER BY priority DESC, id))[1],
                        (array_agg(id ORDER BY priority, id DESC))[1]
                   FROM throttle.pending WHERE sender = $1 GROUP BY 1, 2 ORDER BY 1, 2",
                None,
                &[sender.into()],
            )
            .map_err(error::internal)?;
        let mut queues = Vec::new();
        for r in t {
            queues.push((
                r.get::<String>(1)
                    .map_err(error::internal)?
                    .unwrap_or_default(),
                r.get::<String>(2)
                    .map_err(error::internal)?
                    .unwrap_or_default(),
                r.get::<i64>(3).map_err(error::internal)?.unwrap_or(0),
                r.get::<TimestampWithTimeZone>(4).map_err(error::internal)?,
                r.get::<i64>(5).map_err(error::internal)?.unwrap_or(0),
                r.get::<i64>(6).map_err(error::internal)?.unwrap_or(0),
            ));
        }
        let mut out = Vec::new();
        for (carrier, channel, n, oldest, head, last) in queues {
            let ready = |id: i64| -> Result<(Option<Micros>, Option<String>)> {
                let Some(p) = pending(c, id)? else {
                    return Ok((None, None));
                };
                let rs = rows(constraints(c, &p, now)?, now);
                let at = rs.iter().filter_map(|r| r.3.map(Micros::from)).max();
                let by = rs
                    .into_iter()
                    .find(|r| r.4)
                    .map(|r| format!("{}: {}", r.0, r.1));
                Ok((at.map(|t| t.max(now)), by))
            };
            let (head_at, held) = ready(head)?;
            let (last_at, _) = ready(last)?;
            out.push((
                carrier,
                channel,
                n,
                oldest,
                head,
                head_at.and_then(ts),
                last,
                last_at.and_then(ts),
                held,
            ));
        }
        Ok(out)
    })?;
    Ok(TableIterator::new(out))
}

/// One row of `plan_capacity`: (limit_name, scope, volume, time_needed, senders_needed, note).
type PlanRow = (String, String, i64, Option<Interval>, Option<i64>, String);

/// Capacity planning: how long `messages` from `sender` (split over `carriers` by `shares`,
/// equal shares if NULL) would take under the configured limits and caps, starting from full
/// buckets and empty windows, and, given a `deadline`, how many senders like it would be
/// needed. One row per limit or cap that applies, and a last row `total`.
#[pg_extern(volatile, parallel_unsafe)]
fn plan_capacity(
    sender: &str,
    messages: i64,
    carriers: default!(Vec<Option<String>>, "ARRAY['att', 'tmobile', 'verizon']"),
    shares: default!(Vec<Option<f64>>, "'{}'"),
    channel: default!(&str, "'sms'"),
    cost: default!(i32, 1),
    deadline: default!(Interval, "'0'"),
) -> Result<
    TableIterator<
        'static,
        (
            name!(limit_name, String),
            name!(scope, String),
            name!(volume, i64),
            name!(time_needed, Option<Interval>),
            name!(senders_needed, Option<i64>),
            name!(note, String),
        ),
    >,
> {
    check_volume(messages, cost)?;
    let carriers = checked_carriers(carriers)?;
    let shares = checked_shares(shares, carriers.len())?;
    let deadline_us = checked_deadline(&deadline)?;
    // SAFETY: `GetCurrentTimestamp` only reads the system clock; it has no preconditions and
    // is called on this backend's own thread.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    let volume = Volume {
        messages,
        cost: cost as u64,
    };
    let loads = plan_loads(sender, &carriers, &shares, channel, volume)?;
    let scopes = limit_scopes()?;
    let mut tally = Tally {
        worst: 0,
        senders: 1,
        impossible: None,
    };
    let mut out: Vec<PlanRow> = loads
        .iter()
        .map(|l| load_row(l, l.scope(&scopes), volume, deadline_us, now, &mut tally))
        .collect();
    out.push(total_row(volume, deadline_us, &tally));
    Ok(TableIterator::new(out))
}

/// What a plan sends: `messages` messages of `cost` segments each.
#[derive(Clone, Copy)]
struct Volume {
    messages: i64,
    cost: u64,
}

/// `messages` and `cost` within bounds.
fn check_volume(messages: i64, cost: i32) -> Result<()> {
    if !(0..=capacity::MAX_MESSAGES).contains(&messages)
        || !(1..=crate::limiter::gcra::MAX_COST as i64).contains(&(cost as i64))
    {
        return Err(error::invalid(
            format!(
                "messages must be between 0 and 1e12 and cost between 1 and {}",
                crate::limiter::gcra::MAX_COST
            ),
            "pass how many messages, and their segments each",
        ));
    }
    Ok(())
}

/// The carriers, none NULL or empty, at least one.
fn checked_carriers(carriers: Vec<Option<String>>) -> Result<Vec<String>> {
    let carriers: Vec<String> = carriers
        .into_iter()
        .map(|c| {
            c.filter(|c| !c.is_empty())
                .ok_or_else(|| error::null_value("carrier"))
        })
        .collect::<Result<_>>()?;
    if carriers.is_empty() {
        return Err(error::invalid("no carriers", "pass at least one carrier"));
    }
    Ok(carriers)
}

/// The carriers' shares (equal ones when none is given): finite, not negative, one per
/// carrier, and not all 0.
fn checked_shares(shares: Vec<Option<f64>>, carriers: usize) -> Result<Vec<f64>> {
    let shares: Vec<f64> = match shares.is_empty() {
        true => vec![1.0; carriers],
        false => shares
            .into_iter()
            .map(|x| {
                x.filter(|x| x.is_finite() && *x >= 0.0).ok_or_else(|| {
                    error::invalid(
                        "shares must be finite and >= 0",
                        "for example ARRAY[0.4, 0.4, 0.2]",
                    )
                })
            })
            .collect::<Result<_>>()?,
    };
    let sum: f64 = shares.iter().sum();
    if shares.len() != carriers || !(sum > 0.0 && sum.is_finite()) {
        return Err(error::invalid(
            "shares must match carriers, one each, and not all be 0",
            "for example carriers => ARRAY['att', 'tmobile'], shares => ARRAY[0.5, 0.5]",
        ));
    }
    Ok(shares)
}

/// The deadline in microseconds: at most 100 years; '0' (the default) means none.
fn checked_deadline(deadline: &Interval) -> Result<Option<Micros>> {
    match deadline.as_micros() {
        0 => Ok(None),
        us if (1..=capacity::MAX_DEADLINE_US as i128).contains(&us) => Ok(Some(us as i64)),
        _ => Err(error::invalid(
            "deadline must be positive and at most 100 years",
            "for example '8 hours'; '0' for none",
        )),
    }
}

/// What a load of a plan goes through: a rate limit (by its id), a calendar cap, or a
/// contact cap of the line (every line counts its own, whatever the rule's scope).
enum Source {
    Rate { id: i64, rate: crate::limiter::Rate },
    Cap(std::rc::Rc<caps::CapDef>),
    Contacts(crate::contacts::LineCap),
}

/// The volume (in segments) that one limit or cap of a plan sees: a limit or cap sees the
/// messages of every carrier it applies to.
struct Load {
    name: String,
    source: Source,
    volume: u64,
}

impl Load {
    /// The limit's scope, and whether it is each sender's own (more senders split the
    /// volume) rather than shared.
    fn scope(&self, scopes: &[(i64, String)]) -> (String, bool) {
        let scope = match &self.source {
            Source::Rate { id, .. } => scope_of(scopes, *id),
            Source::Cap(def) => scope_of(scopes, -def.id),
            Source::Contacts(cap) => return (format!("{} (each line)", cap.scope), true),
        };
        let own = scope == "sender";
        (scope, own)
    }

    /// Whether `other` is the same limit or cap.
    fn same_source(&self, other: &Source) -> bool {
        match (&self.source, other) {
            (Source::Rate { id: a, .. }, Source::Rate { id: b, .. }) => a == b,
            (Source::Cap(a), Source::Cap(b)) => a.id == b.id,
            (Source::Contacts(a), Source::Contacts(b)) => a.rule_id == b.rule_id,
            _ => false,
        }
    }

    /// Whether a message of `cost` is more than the limit or cap ever allows at once.
    fn never(&self, cost: u64) -> bool {
        match &self.source {
            Source::Rate { rate, .. } => cost > rate.max_at_once(),
            Source::Cap(def) => cost > def.rule.allowed(),
            // A contact counts once, whatever its messages' segments.
            Source::Contacts(_) => false,
        }
    }

    /// How long the volume takes from `now`, and what one sender passes within the deadline.
    fn estimate(&self, now: Micros, deadline_us: Option<Micros>) -> capacity::Estimate {
        match &self.source {
            Source::Rate { rate, .. } => capacity::rate_estimate(rate, self.volume, deadline_us),
            Source::Cap(def) => {
                capacity::cap_estimate(&def.cal, def.rule.allowed(), self.volume, now, deadline_us)
            }
            Source::Contacts(cap) => capacity::contact_estimate(
                &cap.window,
                cap.max as u64,
                self.volume,
                now,
                deadline_us,
            ),
        }
    }
}

/// Every limit and cap that `volume` from `sender` over `carriers` (by `shares`) goes
/// through, in the order they first apply, with the segments each sees.
fn plan_loads(
    sender: &str,
    carriers: &[String],
    shares: &[f64],
    channel: &str,
    volume: Volume,
) -> Result<Vec<Load>> {
    let total_share: f64 = shares.iter().sum();
    let mut loads: Vec<Load> = Vec::new();
    for (carrier, share) in carriers.iter().zip(shares) {
        // At most 1e18.
        let n = capacity::share_volume(volume.messages, *share, total_share, volume.cost);
        let wants = plan_limits(sender, carrier, channel)?.ok_or_else(|| {
            error::undefined(
                format!("unknown sender \"{sender}\""),
                "register it first: INSERT INTO throttle.sender (sender, ...) VALUES (...)",
            )
        })?;
        for (w, id, label) in wants {
            let source = Source::Rate { id, rate: w.rate };
            add_load(&mut loads, label, source, n);
        }
        for def in caps::caps_for(sender, carrier, channel)?.unwrap_or_default() {
            add_load(&mut loads, def.label.clone(), Source::Cap(def), n);
        }
    }
    // A line's contact caps: each message may go to a contact the rule counts (a new one, or a
    // follow-up), so they count at most the messages themselves, whatever their segments.
    let line_caps = Spi::connect(|c| crate::contacts::line_caps(c, sender, channel))
        .map_err(error::internal)?;
    for cap in line_caps {
        let name = cap.name.clone();
        add_load(
            &mut loads,
            name,
            Source::Contacts(cap),
            volume.messages as u64,
        );
    }
    Ok(loads)
}

/// Add `n` segments to the load of `source`, made (named `name`) if it is not there yet.
fn add_load(loads: &mut Vec<Load>, name: String, source: Source, n: u64) {
    match loads.iter_mut().find(|l| l.same_source(&source)) {
        Some(l) => l.volume = l.volume.saturating_add(n),
        None => loads.push(Load {
            name,
            source,
            volume: n,
        }),
    }
}

/// The scope of every rate limit (by id) and calendar cap (by negated id): whether a limit is
/// the sender's own (more senders like it split their volume).
fn limit_scopes() -> Result<Vec<(i64, String)>> {
    Spi::connect(|c| {
        let mut v = Vec::new();
        for r in c.select(
            "SELECT limit_id, scope::text FROM throttle.rate_limit
             UNION ALL SELECT -cap_id, scope::text FROM throttle.cap",
            None,
            &[],
        )? {
            v.push((
                r.get::<i64>(1)?.unwrap_or(0),
                r.get::<String>(2)?.unwrap_or_default(),
            ));
        }
        Ok::<_, pgrx::spi::SpiError>(v)
    })
    .map_err(error::internal)
}

/// The scope of limit `id` in `scopes` (empty if it is not there).
fn scope_of(scopes: &[(i64, String)], id: i64) -> String {
    scopes
        .iter()
        .find(|(i, _)| *i == id)
        .map(|(_, s)| s.clone())
        .unwrap_or_default()
}

/// `us` microseconds as an interval of days and microseconds.
fn interval(us: Micros) -> Option<Interval> {
    Interval::new(0, (us / 86_400_000_000) as i32, us % 86_400_000_000).ok()
}

/// What the rows of a plan add up to: the longest time, the most senders needed, and the
/// first limit that cannot meet the deadline however many senders there are.
struct Tally {
    worst: Micros,
    senders: i64,
    impossible: Option<String>,
}

/// The row of load `l` (whose limit has scope `scope`, each sender's own or shared), counted
/// in `tally`.
fn load_row(
    l: &Load,
    (scope, own): (String, bool),
    volume: Volume,
    deadline_us: Option<Micros>,
    now: Micros,
    tally: &mut Tally,
) -> PlanRow {
    let estimate = l.estimate(now, deadline_us);
    let segments = l.volume.min(i64::MAX as u64) as i64;
    if l.never(volume.cost) {
        tally.impossible.get_or_insert(l.name.clone());
        let note = format!(
            "never: a message of cost {} is more than this limit ever allows at once",
            volume.cost
        );
        return (l.name.clone(), scope, segments, None, None, note);
    }
    let (needed, mut note) = match estimate.room {
        Some(room) => deadline_note(l, &scope, own, room, tally),
        None => (None, String::new()),
    };
    if let Source::Contacts(cap) = &l.source {
        note = contacts_note(cap, note);
    }
    tally.worst = tally.worst.max(estimate.time);
    (
        l.name.clone(),
        scope,
        segments,
        interval(estimate.time),
        needed,
        note,
    )
}

/// The note of a contact cap's row: what it counts, at what pace, then `then`.
fn contacts_note(cap: &crate::contacts::LineCap, then: String) -> String {
    let per = match cap.window {
        crate::limiter::contact::Window::Calendar(_) => "calendar day".to_string(),
        crate::limiter::contact::Window::Rolling(p) => match interval(p) {
            Some(i) => format!("rolling {i}"),
            None => "window".to_string(),
        },
    };
    let head = format!(
        "each line takes on {} contacts per {per} (every message counted as one)",
        cap.max
    );
    if then.is_empty() {
        head
    } else {
        format!("{head}; {then}")
    }
}

/// How load `l` stands against the deadline, through a limit of `scope` (each sender's `own`
/// or shared) that one sender passes `room` of within it: the senders needed (its own limit
/// only) and a note.
fn deadline_note(
    l: &Load,
    scope: &str,
    own: bool,
    room: i128,
    tally: &mut Tally,
) -> (Option<i64>, String) {
    match capacity::against_deadline(l.volume, room, own) {
        capacity::Verdict::Senders(k) => {
            tally.senders = tally.senders.max(k);
            let note = if k <= 1 {
                "this sender alone finishes within the deadline".to_string()
            } else {
                format!("{k} senders like this one finish within the deadline")
            };
            (Some(k), note)
        }
        capacity::Verdict::Misses => {
            tally.impossible.get_or_insert(l.name.clone());
            (None, format!("shared by the whole {scope}: more senders do not help; it alone misses the deadline"))
        }
        capacity::Verdict::Fits => (
            None,
            format!("shared by the whole {scope}; fits the deadline"),
        ),
    }
}

/// The last row of a plan: the whole volume, the longest time, and the senders needed.
fn total_row(volume: Volume, deadline_us: Option<Micros>, tally: &Tally) -> PlanRow {
    let note = match (&tally.impossible, deadline_us) {
        (Some(name), _) => {
            format!("the deadline cannot be met: {name} is shared, and alone takes longer")
        }
        (None, Some(_)) if tally.senders <= 1 => "this sender alone meets the deadline".to_string(),
        (None, Some(_)) => format!("{} senders like this one meet the deadline", tally.senders),
        (None, None) => "time for this sender alone, from full buckets and unused windows".into(),
    };
    (
        "total".into(),
        String::new(),
        volume.messages.saturating_mul(volume.cost as i64),
        interval(tally.worst),
        deadline_us.map(|_| tally.senders),
        note,
    )
}
