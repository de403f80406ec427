//! Each backend's cache of the limits that apply to a sender, read from the configuration
//! tables on first use and dropped whenever any backend commits a change to them (the
//! shared configuration generation moves). The hot path reads one atomic and one hash map.

use crate::error::{self, Result};
use crate::limiter::Rate;
use crate::shmem;
use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use rustc_hash::FxHashMap;
use std::cell::RefCell;
use std::rc::Rc;

/// One limit row as it applies to a sender.
#[derive(Debug, Clone)]
pub struct Limit {
    pub id: i64,
    pub carrier: Option<Box<str>>,
    pub channel: Option<Box<str>>,
    pub rate: Rate,
    pub label: Box<str>,
}

impl Limit {
    #[inline]
    pub fn applies(&self, carrier: &str, channel: &str) -> bool {
        self.carrier.as_deref().is_none_or(|c| c == carrier)
            && self.channel.as_deref().is_none_or(|c| c == channel)
    }
}

/// Every limit that may apply to one sender (before narrowing by carrier and channel).
#[derive(Debug, Default)]
pub struct SenderLimits {
    pub limits: Vec<Limit>,
}

struct Cache {
    generation: u64,
    senders: FxHashMap<Box<str>, Rc<SenderLimits>>,
    stmt: Option<OwnedPreparedStatement>,
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache {
        generation: 0,
        senders: FxHashMap::default(),
        stmt: None,
    });
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
                    || ' ' || l.rate || '/' || l.per::text)
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

/// The limits of `sender`, from the cache or the tables. Unknown sender: 42704.
pub fn sender_limits(sender: &str) -> Result<Rc<SenderLimits>> {
    let generation = shmem::config_generation();
    let hit = CACHE.with_borrow_mut(|c| {
        if c.generation != generation || c.senders.len() >= MAX_CACHED_SENDERS {
            c.senders.clear();
            c.generation = generation;
        }
        c.senders.get(sender).cloned()
    });
    if let Some(found) = hit {
        return Ok(found);
    }
    let loaded = Rc::new(load(sender)?);
    CACHE.with_borrow_mut(|c| {
        // Cache only what was read under the generation checked above; a reader in a
        // REPEATABLE READ transaction may see an older snapshot, so it does not cache.
        if c.generation == generation && !uses_transaction_snapshot() {
            c.senders.insert(sender.into(), loaded.clone());
        }
    });
    Ok(loaded)
}

/// Forget everything this backend has cached (its own transaction changed the tables).
pub fn invalidate_local() {
    CACHE.with_borrow_mut(|c| {
        c.senders.clear();
        c.generation = 0;
    });
}

fn uses_transaction_snapshot() -> bool {
    unsafe { pg_sys::XactIsoLevel >= pg_sys::XACT_REPEATABLE_READ as i32 }
}

fn load(sender: &str) -> Result<SenderLimits> {
    let rows: Option<Vec<Option<(i64, Option<String>, Option<String>, i64, i64, i64, String)>>> =
        Spi::connect(|client| {
            let stmt = CACHE.with_borrow_mut(|c| c.stmt.take());
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
                        )),
                    });
                }
                Ok::<_, pgrx::spi::SpiError>(out)
            })();
            CACHE.with_borrow_mut(|c| c.stmt = Some(stmt));
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
    for (id, carrier, channel, count, period_us, burst, label) in rows.into_iter().flatten() {
        // The tables' constraints make a bad rate impossible; refuse loudly if one slips by.
        let rate = Rate::new(count as u64, period_us as u64, burst as u64)
            .map_err(|e| error::internal(format!("limit {id}: {e}")))?;
        limits.push(Limit {
            id,
            carrier: carrier.map(Into::into),
            channel: channel.map(Into::into),
            rate,
            label: label.into(),
        });
    }
    Ok(SenderLimits { limits })
}
