//! Each backend's cache of the limits that apply to a sender, read from the configuration
//! tables on first use and dropped whenever any backend commits a change to them (the
//! shared configuration generation moves). For each (carrier, channel) a sender is used
//! with, the cache keeps a ready [`Plan`]: the buckets to check, with their hashes and
//! partitions computed. The hot path reads one atomic, hashes the sender once and compares
//! a few bytes.

use crate::backend::BackendLocal;
use crate::error::{self, Result};
use crate::limiter::table::Key;
use crate::limiter::Rate;
use crate::shmem;
use crate::shmem::{Want, MAX_WANTS};
use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use rustc_hash::FxHashMap;
use std::rc::Rc;

/// One limit row as it applies to a sender.
#[derive(Debug, Clone)]
pub struct Limit {
    pub id: i64,
    pub carrier: Option<Box<str>>,
    pub channel: Option<Box<str>>,
    pub rate: Rate,
    pub label: Box<str>,
    /// When the limit row was created (PostgreSQL µs).
    pub created_at: i64,
}

impl Limit {
    #[inline]
    pub fn applies(&self, carrier: &[u8], channel: &[u8]) -> bool {
        self.carrier
            .as_deref()
            .is_none_or(|c| c.as_bytes() == carrier)
            && self
                .channel
                .as_deref()
                .is_none_or(|c| c.as_bytes() == channel)
    }
}

/// Every limit that may apply to one sender (before narrowing by carrier and channel).
#[derive(Debug, Default)]
pub struct SenderLimits {
    pub limits: Vec<Limit>,
}

/// The buckets one (sender, carrier, channel) admission touches.
#[derive(Debug)]
pub struct Plan {
    pub wants: Vec<Want>,
    /// Bit per shared-memory partition the wants live in.
    pub partitions: u32,
    /// For each want, its limit (for naming a blocker).
    pub limits: Vec<Rc<Limit>>,
}

struct SenderEntry {
    limits: Rc<SenderLimits>,
    /// Plans by (carrier, channel); a sender is used with a handful of them.
    plans: Vec<(Box<[u8]>, Box<[u8]>, Rc<Plan>)>,
}

struct Cache {
    generation: u64,
    senders: FxHashMap<Box<[u8]>, SenderEntry>,
    stmt: Option<OwnedPreparedStatement>,
}

/// Most (carrier, channel) plans kept per sender before they are rebuilt.
const MAX_PLANS_PER_SENDER: usize = 64;

static CACHE: BackendLocal<Option<Cache>> = BackendLocal::new(None);

/// Run `f` on this backend's cache (made on first use). `f` never runs SPI.
fn with_cache<R>(f: impl FnOnce(&mut Cache) -> R) -> R {
    CACHE.with(|c| {
        f(c.get_or_insert_with(|| Cache {
            generation: 0,
            senders: FxHashMap::default(),
            stmt: None,
        }))
    })
}

/// Senders cached per backend before the cache is emptied and refilled on demand.
const MAX_CACHED_SENDERS: usize = 1_000_000;

const LOAD_SQL: &str = "
    SELECT l.limit_id, l.carrier, l.channel, l.rate,
           (extract(epoch FROM l.per) * 1000000)::bigint, l.burst,
           coalesce(l.name, l.scope::text || ' ' || l.scope_id
                    || coalesce(' carrier ' || l.carrier, '')
                    || coalesce(' channel ' || l.channel, '')
                    || coalesce(' sender_type ' || l.sender_type, '')
                    || ' ' || l.rate || '/' || l.per::text),
           l.created_at
      FROM throttle.sender s
      LEFT JOIN LATERAL (
            SELECT * FROM throttle.rate_limit r WHERE r.scope = 'sender' AND r.scope_id = s.sender
            UNION ALL
            SELECT * FROM throttle.rate_limit r WHERE r.scope = 'campaign' AND r.scope_id = s.campaign
            UNION ALL
            SELECT * FROM throttle.rate_limit r WHERE r.scope = 'brand' AND r.scope_id = s.brand
            UNION ALL
            SELECT * FROM throttle.rate_limit r WHERE r.scope = 'account' AND r.scope_id = s.account
      ) l ON l.sender_type IS NULL OR l.sender_type IS NOT DISTINCT FROM s.sender_type
     WHERE s.sender = $1
     ORDER BY l.limit_id";

/// The plan for admitting `sender` to `carrier` on `channel`, from the cache or the tables.
/// Unknown sender: 42704; more than [`MAX_WANTS`] applicable limits: 54000.
pub fn plan(sender: &[u8], carrier: &[u8], channel: &[u8]) -> Result<Rc<Plan>> {
    let generation = shmem::config_generation();
    let found = with_cache(|c| {
        if c.generation != generation || c.senders.len() >= MAX_CACHED_SENDERS {
            c.senders.clear();
            c.generation = generation;
        }
        let entry = c.senders.get_mut(sender)?;
        if let Some((_, _, p)) = entry
            .plans
            .iter()
            .find(|(ca, ch, _)| &ca[..] == carrier && &ch[..] == channel)
        {
            return Some(Ok(p.clone()));
        }
        if entry.plans.len() >= MAX_PLANS_PER_SENDER {
            entry.plans.clear();
        }
        let p = build_plan(&entry.limits, sender, carrier, channel).map(Rc::new);
        if let Ok(p) = &p {
            entry
                .plans
                .push((carrier.into(), channel.into(), p.clone()));
        }
        Some(p)
    });
    if let Some(p) = found {
        return p;
    }
    let loaded = Rc::new(load(sender)?);
    let p = Rc::new(build_plan(&loaded, sender, carrier, channel)?);
    with_cache(|c| {
        // Cache only what was read under the generation checked above; a reader in a
        // REPEATABLE READ transaction may see an older snapshot, so it does not cache.
        if c.generation == generation && !uses_transaction_snapshot() {
            c.senders.insert(
                sender.into(),
                SenderEntry {
                    limits: loaded,
                    plans: vec![(carrier.into(), channel.into(), p.clone())],
                },
            );
        }
    });
    Ok(p)
}

fn build_plan(
    limits: &SenderLimits,
    sender: &[u8],
    carrier: &[u8],
    channel: &[u8],
) -> Result<Plan> {
    let mut plan = Plan {
        wants: Vec::new(),
        partitions: 0,
        limits: Vec::new(),
    };
    for l in limits.limits.iter().filter(|l| l.applies(carrier, channel)) {
        if plan.wants.len() == MAX_WANTS {
            return Err(error::too_many(
                format!(
                    "more than {MAX_WANTS} limits apply to sender \"{}\"",
                    String::from_utf8_lossy(sender)
                ),
                "merge or remove limits in throttle.rate_limit",
            ));
        }
        let w = Want::new(Key::new(l.id, 0), l.rate, l.created_at);
        plan.partitions |= 1 << w.partition;
        plan.wants.push(w);
        plan.limits.push(Rc::new(l.clone()));
    }
    Ok(plan)
}

/// Forget everything this backend has cached (its own transaction changed the tables).
pub fn invalidate_local() {
    with_cache(|c| {
        c.senders.clear();
        c.generation = 0;
    });
}

fn uses_transaction_snapshot() -> bool {
    unsafe { pg_sys::XactIsoLevel >= pg_sys::XACT_REPEATABLE_READ as i32 }
}

fn load(sender: &[u8]) -> Result<SenderLimits> {
    let sender = String::from_utf8_lossy(sender);
    let sender: &str = &sender;
    type Row = (
        i64,
        Option<String>,
        Option<String>,
        i64,
        i64,
        i64,
        String,
        i64,
    );
    let rows: Option<Vec<Option<Row>>> = Spi::connect(|client| {
        let stmt = with_cache(|c| c.stmt.take());
        let stmt = match stmt {
            Some(s) => s,
            None => client
                .prepare(
                    LOAD_SQL,
                    &[pgrx::PgOid::BuiltIn(pgrx::PgBuiltInOids::TEXTOID)],
                )?
                .keep(),
        };
        let result = (|| {
            let table = client.select(&stmt, None, &[sender.into()])?;
            let mut out = Vec::with_capacity(table.len());
            for row in table {
                let id: Option<i64> = row.get(1)?;
                out.push(match id {
                    None => None,
                    Some(id) => Some((
                        id,
                        row.get::<String>(2)?,
                        row.get::<String>(3)?,
                        row.get::<i64>(4)?.unwrap_or(0),
                        row.get::<i64>(5)?.unwrap_or(0),
                        row.get::<i64>(6)?.unwrap_or(0),
                        row.get::<String>(7)?.unwrap_or_default(),
                        row.get::<TimestampWithTimeZone>(8)?.map_or(0, i64::from),
                    )),
                });
            }
            Ok::<_, pgrx::spi::SpiError>(out)
        })();
        with_cache(|c| c.stmt = Some(stmt));
        result.map(|v| if v.is_empty() { None } else { Some(v) })
    })
    .map_err(error::internal)?;
    let rows = rows.ok_or_else(|| {
        error::undefined(
            format!("unknown sender \"{sender}\""),
            "register it first: INSERT INTO throttle.sender (sender, ...) VALUES (...)",
        )
    })?;
    let mut limits = Vec::with_capacity(rows.len());
    for (id, carrier, channel, count, period_us, burst, label, created_at) in
        rows.into_iter().flatten()
    {
        // The tables' constraints make a bad rate impossible; refuse loudly if one slips by.
        let rate = Rate::new(count as u64, period_us as u64, burst as u64)
            .map_err(|e| error::internal(format!("limit {id}: {e}")))?;
        limits.push(Limit {
            id,
            carrier: carrier.map(Into::into),
            channel: channel.map(Into::into),
            rate,
            label: label.into(),
            created_at,
        });
    }
    Ok(SenderLimits { limits })
}
