//! Calendar caps and queue caps as each backend sees them: every cap row read once per
//! configuration generation (caps are few), and each sender's groups read on first use.
//! Also the SQL helpers for calendars and zones.

use crate::backend::{BackendLocal, KeptStatement, LatestSnapshot};
use crate::error::{self, Result};
use crate::limiter::calendar::{self, Calendar, Period};
use crate::limiter::cap::CapRule;
use crate::limiter::Micros;
use crate::shmem;
use chrono::NaiveTime;
use chrono_tz::Tz;
use pgrx::prelude::*;
use rustc_hash::FxHashMap;
use smallvec::SmallVec;
use std::cell::Cell;
use std::rc::Rc;

/// What the worker does with a message over a cap.
pub use crate::limiter::tick::AtCap as Action;

/// The group a cap, queue cap or rate limit applies to (`throttle.scope`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    Sender,
    Campaign,
    Brand,
    Account,
}

impl Scope {
    /// From `throttle.scope`'s text (None: a label this build does not know).
    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "sender" => Some(Scope::Sender),
            "campaign" => Some(Scope::Campaign),
            "brand" => Some(Scope::Brand),
            "account" => Some(Scope::Account),
            _ => None,
        }
    }

    /// As `throttle.scope` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Sender => "sender",
            Scope::Campaign => "campaign",
            Scope::Brand => "brand",
            Scope::Account => "account",
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which senders a cap (or queue cap) covers.
#[derive(Debug, Clone)]
pub struct Coverage {
    /// None: a scope this build does not know (it covers no one).
    pub scope: Option<Scope>,
    pub scope_id: Box<str>,
    pub carrier: Option<Box<str>>,
    pub channel: Option<Box<str>>,
    pub sender_type: Option<Box<str>>,
    /// Campaigns exempt from it.
    pub exempt: Vec<Box<str>>,
}

impl Coverage {
    fn covers(&self, g: &Groups, carrier: &str, channel: &str) -> bool {
        let id = match self.scope {
            Some(Scope::Sender) => Some(&g.sender),
            Some(Scope::Campaign) => g.campaign.as_ref(),
            Some(Scope::Brand) => g.brand.as_ref(),
            Some(Scope::Account) => g.account.as_ref(),
            None => None,
        };
        id.is_some_and(|id| **id == *self.scope_id)
            && self.carrier.as_deref().is_none_or(|c| c == carrier)
            && self.channel.as_deref().is_none_or(|c| c == channel)
            && self
                .sender_type
                .as_deref()
                .is_none_or(|t| g.sender_type.as_deref() == Some(t))
            && !g
                .campaign
                .as_ref()
                .is_some_and(|c| self.exempt.iter().any(|e| e == c))
    }
}

/// A calendar cap row.
#[derive(Debug)]
pub struct CapDef {
    pub id: i64,
    pub coverage: Coverage,
    pub cal: Calendar,
    pub time_zone: Tz,
    pub rule: CapRule,
    pub action: Action,
    pub local_time: NaiveTime,
    pub error_code: Option<String>,
    pub label: String,
    /// When the row was made (µs): with the id, names this cap across DROP/CREATE EXTENSION.
    pub born: Micros,
    /// The window last computed (start, end): most admissions fall in it again.
    window: Cell<(Micros, Micros)>,
    /// Where this cap's lease was last found in shared memory (index + 1).
    pub lease_hint: Cell<u32>,
}

impl CapDef {
    /// The window of this cap's calendar that contains `at` (remembered: a time zone
    /// conversion per admission would cost more than the admission).
    pub fn window_of(&self, at: Micros) -> (Micros, Micros) {
        let (s, e) = self.window.get();
        if s <= at && at < e {
            return (s, e);
        }
        let w = (self.cal.window_start(at), self.cal.window_end(at));
        self.window.set(w);
        w
    }
}

/// A queue cap row, its size resolved (None: derived from rate limits the scope lacks).
#[derive(Debug)]
pub struct QueueCapDef {
    pub id: i64,
    pub coverage: Coverage,
    pub max_waiting: Option<i64>,
    pub error_code: Option<String>,
    pub label: String,
}

/// A sender's groups.
#[derive(Debug, Clone)]
pub struct Groups {
    pub sender: Box<str>,
    pub campaign: Option<Box<str>>,
    pub brand: Option<Box<str>>,
    pub account: Option<Box<str>>,
    pub sender_type: Option<Box<str>>,
}

struct Defs {
    generation: u64,
    caps: Vec<Rc<CapDef>>,
    queue_caps: Vec<Rc<QueueCapDef>>,
    senders: FxHashMap<Box<str>, Option<Rc<Groups>>>,
    /// Senders whose groups were read one at a time, and whether all were then read at once
    /// (or tried to be: there were too many).
    senders_missed: u32,
    senders_preloaded: bool,
    /// `caps_for` per `sender \0 carrier \0 channel` (None: unknown sender).
    for_queue: FxHashMap<Box<[u8]>, Option<Rc<[Rc<CapDef>]>>>,
    /// Which caps and queue caps are for each scope (keyed by the scope and a hash of its
    /// id: a collision only costs a comparison), so that finding a sender's caps costs its four
    /// groups, not a pass over every cap (100,000 lines each with a queue cap).
    by_scope: FxHashMap<(Scope, u64), ScopeDefs>,
}

/// The positions in [`Defs`] of the caps and queue caps of one scope.
#[derive(Default)]
struct ScopeDefs {
    caps: SmallVec<[u32; 2]>,
    queue_caps: SmallVec<[u32; 2]>,
}

fn id_hash(id: &str) -> u64 {
    use std::hash::Hasher;
    let mut h = rustc_hash::FxHasher::default();
    h.write(id.as_bytes());
    h.finish()
}

impl Defs {
    fn index(&mut self) {
        let mut by: FxHashMap<(Scope, u64), ScopeDefs> = FxHashMap::default();
        let caps = self.caps.iter().map(|c| (&c.coverage, false));
        let queue_caps = self.queue_caps.iter().map(|c| (&c.coverage, true));
        for (i, (cov, queue)) in caps.enumerate().chain(queue_caps.enumerate()) {
            let Some(scope) = cov.scope else { continue };
            let e = by.entry((scope, id_hash(&cov.scope_id))).or_default();
            if queue {
                e.queue_caps.push(i as u32);
            } else {
                e.caps.push(i as u32);
            }
        }
        self.by_scope = by;
    }

    /// Positions (from `pick`), in order, of the definitions for one of the groups of `g`.
    fn of_groups(&self, g: &Groups, pick: impl Fn(&ScopeDefs) -> &[u32]) -> SmallVec<[u32; 4]> {
        let mut out: SmallVec<[u32; 4]> = SmallVec::new();
        let groups = [
            (Scope::Sender, Some(&g.sender)),
            (Scope::Campaign, g.campaign.as_ref()),
            (Scope::Brand, g.brand.as_ref()),
            (Scope::Account, g.account.as_ref()),
        ];
        for (scope, id) in groups {
            if let Some(e) = id.and_then(|id| self.by_scope.get(&(scope, id_hash(id)))) {
                out.extend_from_slice(pick(e));
            }
        }
        out.sort_unstable();
        out
    }

    fn caps_of(&self, g: &Groups, carrier: &str, channel: &str) -> SmallVec<[Rc<CapDef>; 2]> {
        self.of_groups(g, |e| &e.caps)
            .into_iter()
            .map(|i| &self.caps[i as usize])
            .filter(|c| c.coverage.covers(g, carrier, channel))
            .cloned()
            .collect()
    }

    fn queue_caps_of(
        &self,
        g: &Groups,
        carrier: &str,
        channel: &str,
    ) -> SmallVec<[Rc<QueueCapDef>; 2]> {
        self.of_groups(g, |e| &e.queue_caps)
            .into_iter()
            .map(|i| &self.queue_caps[i as usize])
            .filter(|c| c.max_waiting.is_some() && c.coverage.covers(g, carrier, channel))
            .cloned()
            .collect()
    }
}

static DEFS: BackendLocal<Option<Defs>> = BackendLocal::new(None);
/// (generation, whether any calendar cap exists): the one check `throttle_admit` makes per
/// call when no cap is configured.
static ANY_CAPS: BackendLocal<(u64, bool)> = BackendLocal::new((0, false));
/// The same for queue caps: the check every enqueue makes.
static ANY_QUEUE_CAPS: BackendLocal<(u64, bool)> = BackendLocal::new((0, false));

const CAPS_SQL: &str = "
    SELECT c.cap_id, c.scope::text, c.scope_id, c.carrier, c.channel, c.sender_type, c.cap,
           c.period::text, to_char(c.reset_at, 'HH24:MI:SS'), c.time_zone, c.overage_pct,
           c.warn_at, c.at_cap::text, to_char(c.local_time, 'HH24:MI:SS'), c.error_code,
           coalesce(c.name, 'cap ' || c.scope::text || ' ' || c.scope_id
                    || coalesce(' carrier ' || c.carrier, '') || coalesce(' channel ' || c.channel, '')
                    || ' ' || c.cap::text || '/' || c.period::text),
           ARRAY(SELECT e.campaign FROM throttle.cap_exemption e WHERE e.cap_id = c.cap_id),
           c.created_at
      FROM throttle.cap c ORDER BY c.cap_id";

const QUEUE_CAPS_SQL: &str = "
    SELECT q.queue_cap_id, q.scope::text, q.scope_id, q.carrier, q.channel,
           coalesce(q.max_waiting,
                    (SELECT floor(min(r.rate::numeric / extract(epoch FROM r.per))
                                  * extract(epoch FROM q.validity))::int8
                       FROM throttle.rate_limit r
                      WHERE r.scope = q.scope AND r.scope_id = q.scope_id)),
           q.error_code,
           coalesce(q.name, 'queue cap ' || q.scope::text || ' ' || q.scope_id
                    || coalesce(' carrier ' || q.carrier, '') || coalesce(' channel ' || q.channel, ''))
      FROM throttle.queue_cap q ORDER BY q.queue_cap_id";

const GROUPS_SQL: &str =
    "SELECT campaign, brand, account, sender_type FROM throttle.sender WHERE sender = $1";
static GROUPS_STMT: KeptStatement = KeptStatement::new(GROUPS_SQL);

pub(crate) fn parse_time(s: &str) -> Result<NaiveTime> {
    NaiveTime::parse_from_str(s, "%H:%M:%S").map_err(error::internal)
}

fn load_defs(generation: u64) -> Result<Defs> {
    let snapshot = LatestSnapshot::push();
    let r = Spi::connect(|c| {
        let mut caps = Vec::new();
        for row in c.select(CAPS_SQL, None, &[])? {
            let id: i64 = row.get(1)?.unwrap_or(0);
            let zone: String = row.get(10)?.unwrap_or_default();
            let tz: Tz = zone.parse().unwrap_or(Tz::UTC);
            let period = match row.get::<String>(8)?.as_deref() {
                Some("hour") => Period::Hour,
                Some("month") => Period::Month,
                _ => Period::Day,
            };
            let reset =
                parse_time(&row.get::<String>(9)?.unwrap_or_default()).unwrap_or(NaiveTime::MIN);
            let warn: Vec<i32> = row.get(12)?.unwrap_or_default();
            caps.push(Rc::new(CapDef {
                id,
                coverage: Coverage {
                    scope: row.get::<String>(2)?.as_deref().and_then(Scope::parse),
                    scope_id: row.get::<String>(3)?.unwrap_or_default().into(),
                    carrier: row.get::<String>(4)?.map(Into::into),
                    channel: row.get::<String>(5)?.map(Into::into),
                    sender_type: row.get::<String>(6)?.map(Into::into),
                    exempt: row
                        .get::<Vec<String>>(17)?
                        .unwrap_or_default()
                        .into_iter()
                        .map(Into::into)
                        .collect(),
                },
                cal: Calendar { period, reset, tz },
                time_zone: tz,
                rule: CapRule {
                    cap: row.get::<i64>(7)?.unwrap_or(1).max(1) as u64,
                    overage_pct: row.get::<i32>(11)?.unwrap_or(0).max(0) as u32,
                    warn_at: warn.into_iter().map(|p| p.max(0) as u32).collect(),
                },
                action: match row.get::<String>(13)?.as_deref() {
                    Some("defer_local") => Action::DeferLocal,
                    Some("refuse") => Action::Refuse,
                    _ => Action::Defer,
                },
                local_time: parse_time(&row.get::<String>(14)?.unwrap_or_default())
                    .unwrap_or(NaiveTime::MIN),
                error_code: row.get(15)?,
                label: row.get(16)?.unwrap_or_default(),
                born: row
                    .get::<TimestampWithTimeZone>(18)?
                    .map_or(0, Micros::from),
                window: Cell::new((0, 0)),
                lease_hint: Cell::new(0),
            }));
        }
        let mut queue_caps = Vec::new();
        for row in c.select(QUEUE_CAPS_SQL, None, &[])? {
            queue_caps.push(Rc::new(QueueCapDef {
                id: row.get(1)?.unwrap_or(0),
                coverage: Coverage {
                    scope: row.get::<String>(2)?.as_deref().and_then(Scope::parse),
                    scope_id: row.get::<String>(3)?.unwrap_or_default().into(),
                    carrier: row.get::<String>(4)?.map(Into::into),
                    channel: row.get::<String>(5)?.map(Into::into),
                    sender_type: None,
                    exempt: Vec::new(),
                },
                max_waiting: row.get(6)?,
                error_code: row.get(7)?,
                label: row.get(8)?.unwrap_or_default(),
            }));
        }
        let mut defs = Defs {
            generation,
            caps,
            queue_caps,
            senders: FxHashMap::default(),
            senders_missed: 0,
            senders_preloaded: false,
            for_queue: FxHashMap::default(),
            by_scope: FxHashMap::default(),
        };
        defs.index();
        Ok::<_, pgrx::spi::SpiError>(defs)
    });
    drop(snapshot);
    r.map_err(error::internal)
}

/// Make sure this backend's definitions are those of the current generation.
fn fresh() -> Result<()> {
    let generation = shmem::config_generation();
    let ok = DEFS.with(|d| d.as_ref().is_some_and(|d| d.generation == generation));
    if !ok {
        let defs = load_defs(generation)?;
        DEFS.with(|d| *d = Some(defs));
    }
    Ok(())
}

/// Forget everything (this backend's own transaction changed the tables).
pub fn invalidate_local() {
    DEFS.with(|d| *d = None);
    ANY_CAPS.with(|a| *a = (0, false));
    ANY_QUEUE_CAPS.with(|a| *a = (0, false));
}

/// Whether any calendar cap is configured (cheap after the first call per generation).
#[inline]
pub fn any_caps() -> Result<bool> {
    let generation = shmem::config_generation();
    let (known, any) = ANY_CAPS.with(|a| *a);
    if known == generation && known != 0 {
        return Ok(any);
    }
    fresh()?;
    let any = DEFS.with(|d| d.as_ref().is_some_and(|d| !d.caps.is_empty()));
    ANY_CAPS.with(|a| *a = (generation, any));
    Ok(any)
}

/// Whether any queue cap is configured.
#[inline]
pub fn any_queue_caps() -> Result<bool> {
    let generation = shmem::config_generation();
    let (known, any) = ANY_QUEUE_CAPS.with(|a| *a);
    if known == generation && known != 0 {
        return Ok(any);
    }
    fresh()?;
    let any = DEFS.with(|d| d.as_ref().is_some_and(|d| !d.queue_caps.is_empty()));
    ANY_QUEUE_CAPS.with(|a| *a = (generation, any));
    Ok(any)
}

fn groups(sender: &str) -> Result<Option<Rc<Groups>>> {
    fresh()?;
    if let Some(g) = DEFS.with(|d| d.as_ref().and_then(|d| d.senders.get(sender).cloned())) {
        return Ok(g);
    }
    // As with limits (see config::PRELOAD_AFTER_MISSES): a session that keeps meeting new
    // senders reads all the others' groups at once.
    let due = DEFS.with(|d| {
        d.as_mut().is_some_and(|d| {
            if !d.senders_preloaded {
                d.senders_missed += 1;
                d.senders_preloaded = d.senders_missed > crate::config::PRELOAD_AFTER_MISSES;
                return d.senders_preloaded;
            }
            false
        })
    });
    if due {
        if let Some(all) = preload_groups()? {
            DEFS.with(|d| {
                if let Some(d) = d.as_mut() {
                    for g in all {
                        d.senders.entry(g.sender.clone()).or_insert(Some(g));
                    }
                }
            });
            if let Some(g) = DEFS.with(|d| d.as_ref().and_then(|d| d.senders.get(sender).cloned()))
            {
                return Ok(g);
            }
        }
    }
    let snapshot = LatestSnapshot::push();
    let r = Spi::connect(|c| {
        GROUPS_STMT.with(c, |stmt| {
            let t = c.select(stmt, Some(1), &[sender.into()])?;
            if t.is_empty() {
                return Ok(None);
            }
            let row = t.first();
            Ok(Some(Rc::new(Groups {
                sender: sender.into(),
                campaign: row.get::<String>(1)?.map(Into::into),
                brand: row.get::<String>(2)?.map(Into::into),
                account: row.get::<String>(3)?.map(Into::into),
                sender_type: row.get::<String>(4)?.map(Into::into),
            })))
        })
    });
    drop(snapshot);
    let g = r.map_err(error::internal)?;
    DEFS.with(|d| {
        if let Some(d) = d.as_mut() {
            d.senders.insert(sender.into(), g.clone());
        }
    });
    Ok(g)
}

/// Every registered sender's groups, read in one statement (as committed now), if there are
/// at most `throttle.preload_senders`; None if there are more (read one sender at a time).
fn preload_groups() -> Result<Option<Vec<Rc<Groups>>>> {
    let max = crate::gucs::preload_senders();
    if max == 0 {
        return Ok(None);
    }
    let snapshot = LatestSnapshot::push();
    let r = Spi::connect(|c| {
        if !crate::config::few_senders(c, max)? {
            return Ok(None);
        }
        let mut out = Vec::new();
        for row in c.select(
            "SELECT sender, campaign, brand, account, sender_type FROM throttle.sender",
            None,
            &[],
        )? {
            out.push(Rc::new(Groups {
                sender: row.get::<String>(1)?.unwrap_or_default().into(),
                campaign: row.get::<String>(2)?.map(Into::into),
                brand: row.get::<String>(3)?.map(Into::into),
                account: row.get::<String>(4)?.map(Into::into),
                sender_type: row.get::<String>(5)?.map(Into::into),
            }));
        }
        Ok::<_, pgrx::spi::SpiError>(Some(out))
    });
    drop(snapshot);
    r.map_err(error::internal)
}

/// The calendar caps that apply to messages of `sender` to `carrier` on `channel` (None: the
/// sender is not registered).
pub fn caps_for(
    sender: &str,
    carrier: &str,
    channel: &str,
) -> Result<Option<SmallVec<[Rc<CapDef>; 2]>>> {
    let Some(g) = groups(sender)? else {
        return Ok(None);
    };
    Ok(Some(DEFS.with(|d| {
        d.as_ref()
            .map(|d| d.caps_of(&g, carrier, channel))
            .unwrap_or_default()
    })))
}

/// [`caps_for`] from the bytes of the arguments, remembered per queue for this generation.
pub fn caps_for_queue(
    sender: &[u8],
    carrier: &[u8],
    channel: &[u8],
) -> Result<Option<Rc<[Rc<CapDef>]>>> {
    fresh()?;
    let mut key: SmallVec<[u8; 64]> = SmallVec::new();
    key.extend_from_slice(sender);
    key.push(0);
    key.extend_from_slice(carrier);
    key.push(0);
    key.extend_from_slice(channel);
    if let Some(found) = DEFS.with(|d| d.as_ref().and_then(|d| d.for_queue.get(&key[..]).cloned()))
    {
        return Ok(found);
    }
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let found: Option<Rc<[Rc<CapDef>]>> =
        caps_for(&text(sender), &text(carrier), &text(channel))?.map(|v| v.into_iter().collect());
    DEFS.with(|d| {
        if let Some(d) = d.as_mut() {
            d.for_queue
                .insert(key.to_vec().into_boxed_slice(), found.clone());
        }
    });
    Ok(found)
}

/// The queue caps that count a message of `sender` to `carrier` on `channel`.
pub fn queue_caps_for(
    sender: &str,
    carrier: &str,
    channel: &str,
) -> Result<SmallVec<[Rc<QueueCapDef>; 2]>> {
    let Some(g) = groups(sender)? else {
        return Ok(SmallVec::new());
    };
    Ok(DEFS.with(|d| {
        d.as_ref()
            .map(|d| d.queue_caps_of(&g, carrier, channel))
            .unwrap_or_default()
    }))
}

/// The queue caps that count a message of a sender with groups `g`.
pub fn queue_caps_matching(
    g: &Groups,
    carrier: &str,
    channel: &str,
) -> SmallVec<[Rc<QueueCapDef>; 2]> {
    DEFS.with(|d| {
        d.as_ref()
            .map(|d| d.queue_caps_of(g, carrier, channel))
            .unwrap_or_default()
    })
}

/// A calendar cap by id, in this backend's current definitions.
pub fn cap(id: i64) -> Result<Option<Rc<CapDef>>> {
    fresh()?;
    Ok(DEFS.with(|d| {
        d.as_ref().and_then(|d| {
            // In id order (CAPS_SQL): a binary search.
            let i = d.caps.binary_search_by_key(&id, |c| c.id).ok()?;
            d.caps.get(i).cloned()
        })
    }))
}

/// Every queue cap with a size.
pub fn all_queue_caps() -> Result<Vec<Rc<QueueCapDef>>> {
    fresh()?;
    Ok(DEFS.with(|d| {
        d.as_ref()
            .map(|d| {
                d.queue_caps
                    .iter()
                    .filter(|c| c.max_waiting.is_some())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }))
}

// ---- SQL helpers ----------------------------------------------------------------------

/// Timestamps the calendars handle: years 1 to 9999 (no infinities).
fn finite(t: TimestampWithTimeZone) -> Result<Micros> {
    let us: Micros = t.into();
    if (-63_000_000_000_000_000..=252_000_000_000_000_000).contains(&us) {
        Ok(us)
    } else {
        Err(error::invalid(
            "timestamp out of range for calendars",
            "pass a finite timestamp between the years 1 and 9999",
        ))
    }
}

fn zone(name: &str) -> Result<Tz> {
    name.parse().map_err(|_| {
        error::invalid(
            format!("unknown time zone \"{name}\""),
            "use an IANA zone name such as 'America/New_York' or 'UTC'",
        )
    })
}

/// Whether `name` is an IANA time zone pg_throttle knows.
#[pg_extern(immutable, strict, parallel_safe)]
fn is_time_zone(name: &str) -> bool {
    name.parse::<Tz>().is_ok()
}

/// The North American area code of a phone number (`+12125550100` → `212`), or NULL.
#[pg_extern(immutable, strict, parallel_safe)]
fn area_code(recipient: &str) -> Option<String> {
    calendar::nanp_area_code(recipient).map(|a| String::from_utf8_lossy(&a).into_owned())
}

/// The first instant at or after `after` whose local time is `at` in every one of `zones`
/// or later (the latest over the zones): "08:00 in the recipient's zone".
#[pg_extern(immutable, strict, parallel_safe)]
fn next_local_time(
    zones: Vec<Option<String>>,
    after: TimestampWithTimeZone,
    at: Time,
) -> Result<Option<TimestampWithTimeZone>> {
    let tzs: Vec<Tz> = zones
        .iter()
        .map(|z| match z {
            Some(z) => zone(z),
            None => Err(error::null_value("zone")),
        })
        .collect::<Result<_>>()?;
    let (h, m, s) = (at.hour() as u32, at.minute() as u32, at.second() as u32);
    let t = NaiveTime::from_hms_opt(h, m, s.min(59)).unwrap_or(NaiveTime::MIN);
    let after = finite(after)?;
    Ok(calendar::next_local_at_all(after, &tzs, t)
        .and_then(|us| TimestampWithTimeZone::try_from(us).ok()))
}

/// The window of a calendar (`hour`, `day` or `month`, resetting at `reset_at` in
/// `time_zone`) that contains `at`.
#[pg_extern(immutable, strict, parallel_safe)]
fn cap_window(
    period: &str,
    reset_at: Time,
    time_zone: &str,
    at: TimestampWithTimeZone,
) -> Result<
    TableIterator<
        'static,
        (
            name!(window_start, TimestampWithTimeZone),
            name!(window_end, TimestampWithTimeZone),
        ),
    >,
> {
    let period = match period {
        "hour" => Period::Hour,
        "day" => Period::Day,
        "month" => Period::Month,
        other => {
            return Err(error::invalid(
                format!("unknown period \"{other}\""),
                "use 'hour', 'day' or 'month'",
            ))
        }
    };
    let cal = Calendar {
        period,
        reset: NaiveTime::from_hms_opt(
            reset_at.hour() as u32,
            reset_at.minute() as u32,
            (reset_at.second() as u32).min(59),
        )
        .unwrap_or(NaiveTime::MIN),
        tz: zone(time_zone)?,
    };
    let at = finite(at)?;
    let ts = |us| {
        TimestampWithTimeZone::try_from(us)
            .map_err(|_| error::invalid("timestamp out of range", "pass a finite timestamp"))
    };
    let (s, e) = (ts(cal.window_start(at))?, ts(cal.window_end(at))?);
    Ok(TableIterator::once((s, e)))
}
