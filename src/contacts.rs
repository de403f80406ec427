//! Contact rules in the release worker (the decisions are the core's, `limiter::contact`):
//! read each line's rules (cached until the configuration changes), read the state of the
//! lines and contacts of the rows a tick fetched (three statements, only for lines with
//! rules), and write back what the tick counted and held, in the transaction that releases.
//!
//! Every line with rules has an advisory lock (`throttle.line_lock_key`). The worker *tries*
//! it before it reads a line's state and keeps it to its commit; a line a client holds is left
//! to a later tick, so no client ever makes the worker wait. Admissions and
//! `throttle.inbound()` wait for it. So the worker's reads see every admission and inbound
//! message committed before, and an inbound message that comes meanwhile waits for the tick
//! and then finds what it held for a reply: a message is never held for a reply that came.

use crate::limiter::calendar::{Calendar, Period};
use crate::limiter::contact::{self, AtLimit, Contact, Kind, Line, Rule, Window};
use crate::limiter::schedule::Row;
use crate::limiter::Micros;
use crate::worker::ts;
use chrono::NaiveTime;
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::BuiltinOid::*;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::{PgBuiltInOids, PgOid};
use rustc_hash::FxHashMap;
use std::rc::Rc;

pgrx::extension_sql_file!(
    "../sql/contacts.sql",
    name = "contacts",
    requires = ["schema", "queue_tables", "tenancy", "take"]
);

/// `throttle.until_reply()`, 9999-12-31 00:00 UTC in PostgreSQL µs: the `not_before` of a
/// message held until an inbound message.
pub const UNTIL_REPLY: Micros = 252_455_529_600_000_000;

/// The names behind a [`contact::Tick`]'s indexes, for writing it back: each line's sender,
/// and each contact's line (an index into `lines`) and recipient.
#[derive(Default)]
pub struct Keys {
    pub lines: Vec<String>,
    pub contacts: Vec<(usize, String)>,
}

/// Each line's rules, read once per configuration.
#[derive(Default)]
pub struct Cache {
    /// Whether any contact rule exists (None: not read yet).
    any: Option<bool>,
    rules: FxHashMap<String, Rc<[Rule]>>,
    /// Each rule read: its name (or id) and error code, for dead letters.
    labels: FxHashMap<i64, (String, Option<String>)>,
    /// Whether throttle.attempt exists (0.6.0; None: not looked yet).
    attempts: Option<bool>,
    /// The owner of the contact tables (None: not looked yet).
    owner: Option<pg_sys::Oid>,
}

impl Cache {
    /// Forget everything (the configuration changed).
    pub fn clear(&mut self) {
        *self = Cache::default();
    }

    /// Whether `sender` is known to have no contact rules (nothing to read).
    pub fn known_free(&self, sender: &str) -> bool {
        self.any == Some(false) || self.rules.get(sender).is_some_and(|r| r.is_empty())
    }

    /// A rule's name (or id) and error code, for its dead letters.
    pub fn label(&self, rule: i64) -> (String, Option<String>) {
        self.labels
            .get(&rule)
            .cloned()
            .unwrap_or_else(|| (rule.to_string(), None))
    }
}

/// Whether this database's schema has contact rules (a database still at 0.4.0, before
/// `ALTER EXTENSION pg_throttle UPDATE`, has none: the upgrade script then tells the worker).
const SQL_PRESENT: &str = "SELECT pg_catalog.to_regclass('throttle.contact_rule') IS NOT NULL";
const SQL_ANY: &str = "SELECT EXISTS (SELECT 1 FROM throttle.contact_rule)";

const SQL_RULES: &str = "
    SELECT q.s, r.rule_id, r.kind::text, r.max_count,
           (extract(epoch FROM r.per) * 1000000)::int8, r.reset_at::text, r.time_zone,
           (extract(epoch FROM r.reply_window) * 1000000)::int8, r.at_limit::text, r.channel,
           coalesce(r.name, r.rule_id::text), r.error_code, r.scope::text, r.name
      FROM unnest($1::text[]) AS q(s)
      LEFT JOIN throttle.sender s ON s.sender = q.s
      JOIN throttle.contact_rule r
        ON (r.scope = 'sender' AND r.scope_id = q.s)
        OR (r.scope = 'campaign' AND r.scope_id = s.campaign)
        OR (r.scope = 'brand' AND r.scope_id = s.brand)
        OR (r.scope = 'account' AND r.scope_id = s.account)
     ORDER BY q.s, r.rule_id";

/// Take the locks of these lines, where no client holds them (an admission or an inbound
/// message on a line holds its lock until it commits; the worker never waits for one).
/// (Each key is `throttle.line_lock_key`'s, written out: a call of that function, which sets
/// its search_path, costs a save and restore of the settings per line.)
const SQL_TRY_LINES: &str = "
    SELECT q.i::int4, pg_catalog.pg_try_advisory_xact_lock(pg_catalog.hashtextextended(q.s, 7368))
      FROM unnest($1::text[]) WITH ORDINALITY AS q(s, i)";

/// An admission's wait for its line's lock (see [`read_one`]).
const SQL_LOCK_LINE: &str =
    "SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended($1, 7368))";

/// One recipient's state on one line (for an admission).
const SQL_ONE: &str = "
    SELECT cs.counted_as, cs.counted_at, cs.unanswered, cs.unanswered_since, cs.recent,
           (SELECT ci.last_inbound_at FROM throttle.contact_inbound ci WHERE ci.sender = $1 AND ci.contact = $2)
      FROM (SELECT 1) AS one
      LEFT JOIN throttle.contact_sent cs ON cs.sender = $1 AND cs.contact = $2";

/// The fetched rows of lines with rules, with their recipients' state.
const SQL_ROWS: &str = "
    SELECT p.id, p.sender, p.recipient, cs.counted_as, cs.counted_at, cs.unanswered,
           cs.unanswered_since, cs.recent, ci.last_inbound_at
      FROM throttle.pending p
      LEFT JOIN throttle.contact_sent cs ON cs.sender = p.sender AND cs.contact = p.recipient
      LEFT JOIN throttle.contact_inbound ci ON ci.sender = p.sender AND ci.contact = p.recipient
     WHERE p.ctid = ANY($1::tid[])";

/// Each line's last inbound message and streak.
const SQL_LINES: &str = "
    SELECT q.i::int4,
           (SELECT max(i.last_inbound_at) FROM throttle.contact_inbound i WHERE i.sender = q.s),
           l.streak, l.streak_since
      FROM unnest($1::text[]) WITH ORDINALITY AS q(s, i)
      LEFT JOIN throttle.line_sent l ON l.sender = q.s";

/// Contacts counted in each contact cap's window (per line and kind), and the oldest count.
/// (Per element, by the index of counted contacts: never a scan of the table, whatever plan
/// the kept statement gets.)
const SQL_USED: &str = "
    SELECT q.i::int4, u.n, u.oldest
      FROM unnest($1::text[], $2::int2[], $3::timestamptz[]) WITH ORDINALITY AS q(s, k, since, i)
     CROSS JOIN LATERAL (
           SELECT count(*)::int8 AS n, min(c.counted_at) AS oldest FROM throttle.contact_sent c
            WHERE c.sender = q.s AND c.counted_as = q.k AND c.counted_at >= q.since) u";

const SQL_HOLD: &str = "
    UPDATE throttle.pending p SET not_before = h.until, held_rule = h.rule
      FROM unnest($1::int8[], $2::timestamptz[], $3::int8[]) AS h(id, until, rule)
     WHERE p.id = h.id";

/// The rows of contacts written (for [`SQL_SENT`] and [`SQL_SENT_NEW`]), as a literal for
/// `concat!`. Each row's recent sends travel as the text of an int8[] of µs since 2000-01-01
/// UTC (PostgreSQL's epoch: the values it keeps; one element of `$7` per row), turned back
/// into timestamptz[] row by row: a row reads only its own.
/// (They were one flat array for all rows, which every row scanned for its own part: a
/// statement of n rows under a pair rate took n² steps.)
macro_rules! contact_rows {
    () => {
        "
    INSERT INTO throttle.contact_sent AS c
           (sender, contact, counted_as, counted_at, unanswered, unanswered_since, recent, last_sent_at)
    SELECT u.s, u.c, u.k, u.at, u.n, u.since,
           CASE WHEN u.r = '{}' THEN '{}'::timestamptz[]
                ELSE ARRAY(SELECT timestamptz '2000-01-01 00:00:00+00' + e.x * interval '1 microsecond'
                             FROM unnest(u.r::int8[]) WITH ORDINALITY AS e(x, o) ORDER BY e.o) END,
           $8
      FROM unnest($1::text[], $2::text[], $3::int2[], $4::timestamptz[], $5::int4[], $6::timestamptz[],
                  $7::text[]) AS u(s, c, k, at, n, since, r)"
    };
}

const SQL_SENT: &str = concat!(
    contact_rows!(),
    "
    ON CONFLICT ON CONSTRAINT contact_sent_pkey DO UPDATE
       SET counted_as = excluded.counted_as, counted_at = excluded.counted_at,
           unanswered = excluded.unanswered, unanswered_since = excluded.unanswered_since,
           recent = excluded.recent, last_sent_at = excluded.last_sent_at"
);

/// [`SQL_SENT`] for rows read as absent (`Contact::unstored`): a plain insert, without the
/// conflict check (half of the write's time for a new recipient). The line's lock, held since
/// the read, keeps every writer of pg_throttle's own from adding the pair meanwhile.
const SQL_SENT_NEW: &str = contact_rows!();

const SQL_LINE_SENT: &str = "
    INSERT INTO throttle.line_sent AS l (sender, streak, streak_since, updated_at)
    SELECT u.s, u.n, u.since, $4 FROM unnest($1::text[], $2::int4[], $3::timestamptz[]) AS u(s, n, since)
    ON CONFLICT ON CONSTRAINT line_sent_pkey DO UPDATE
       SET streak = excluded.streak, streak_since = excluded.streak_since, updated_at = excluded.updated_at";

/// Messages held by contact rules go back to their queues, to be judged again (the rules
/// changed). Those an inbound message is letting go right now are skipped: it does so.
const SQL_UNHOLD: &str = "
    UPDATE throttle.pending p SET not_before = NULL, held_rule = NULL
     WHERE p.ctid = ANY (ARRAY(SELECT h.ctid FROM throttle.pending h WHERE h.held_rule IS NOT NULL
                                 FOR UPDATE SKIP LOCKED))
    RETURNING p.sender, p.carrier, p.channel";

/// The configuration changed: every message a contact rule holds is judged again. Returns
/// their queues.
pub fn unhold(
    c: &mut SpiClient<'_>,
) -> pgrx::spi::Result<Vec<(Option<String>, Option<String>, Option<String>)>> {
    let mut queues = Vec::new();
    if c.select(SQL_PRESENT, None, &[])?.first().get::<bool>(1)? != Some(true) {
        return Ok(queues);
    }
    for row in c.update(SQL_UNHOLD, None, &[])? {
        queues.push((row.get(1)?, row.get(2)?, row.get(3)?));
    }
    Ok(queues)
}

/// Forget contact state older than the retention, and inbound message ids (kept to count a
/// webhook delivered twice once) older than [`INBOUND_IDS_KEPT`], a batch of each at a time,
/// oldest first (by index: never a scan of what is kept).
const SQL_PRUNE: &str = "
    WITH s AS (DELETE FROM throttle.contact_sent c
                WHERE c.ctid = ANY (ARRAY(SELECT o.ctid FROM throttle.contact_sent o
                                           WHERE o.last_sent_at < $1 ORDER BY o.last_sent_at LIMIT $2))
               RETURNING 1),
         i AS (DELETE FROM throttle.contact_inbound c
                WHERE c.ctid = ANY (ARRAY(SELECT o.ctid FROM throttle.contact_inbound o
                                           WHERE o.last_inbound_at < $1 ORDER BY o.last_inbound_at LIMIT $2
                                           FOR UPDATE SKIP LOCKED))
               RETURNING 1),
         m AS (DELETE FROM throttle.inbound_message m
                WHERE m.ctid = ANY (ARRAY(SELECT o.ctid FROM throttle.inbound_message o
                                           WHERE o.recorded_at < $3 ORDER BY o.recorded_at LIMIT $2
                                           FOR UPDATE SKIP LOCKED))
               RETURNING 1)
    SELECT greatest((SELECT count(*) FROM s), (SELECT count(*) FROM i), (SELECT count(*) FROM m))";

/// How long an inbound message's id is remembered (as `throttle.inbound()` prunes too).
const INBOUND_IDS_KEPT: Micros = 7 * 86_400_000_000;

/// Rows pruned per statement.
const PRUNE_BATCH: i32 = 1_000;

/// Prune contact state older than `throttle.contact_retention` and old inbound message ids
/// (a batch of each; returns whether a whole batch went, so that more may be left).
pub fn prune(c: &mut SpiClient<'_>, now: Micros) -> pgrx::spi::Result<bool> {
    let cutoff = now - crate::gucs::contact_retention_us();
    let n = c
        .update(
            SQL_PRUNE,
            None,
            &[
                ts(cutoff).into(),
                PRUNE_BATCH.into(),
                ts(now - INBOUND_IDS_KEPT).into(),
            ],
        )?
        .first()
        .get::<i64>(1)?
        .unwrap_or(0);
    Ok(n >= PRUNE_BATCH as i64)
}

/// The statements of every tick and admission, prepared once per backend and kept.
static KEPT: crate::backend::BackendLocal<
    Option<FxHashMap<(usize, usize), Rc<pgrx::spi::OwnedPreparedStatement>>>,
> = crate::backend::BackendLocal::new(None);

/// `sql` (a constant of this module) prepared with argument types `types`, kept.
pub(crate) fn kept(
    c: &SpiClient<'_>,
    sql: &'static str,
    types: &[PgBuiltInOids],
    mutating: bool,
) -> pgrx::spi::Result<Rc<pgrx::spi::OwnedPreparedStatement>> {
    let key = (sql.as_ptr() as usize, sql.len());
    if let Some(p) = KEPT.with(|m| m.get_or_insert_with(Default::default).get(&key).cloned()) {
        return Ok(p);
    }
    let oids: Vec<PgOid> = types.iter().map(|&t| PgOid::BuiltIn(t)).collect();
    let p = Rc::new(if mutating {
        c.prepare_mut(sql, &oids)?.keep()
    } else {
        c.prepare(sql, &oids)?.keep()
    });
    KEPT.with(|m| {
        m.get_or_insert_with(Default::default)
            .insert(key, p.clone())
    });
    Ok(p)
}

fn us(t: Option<TimestampWithTimeZone>) -> Option<Micros> {
    t.map(i64::from)
}

const SQL_OWNER: &str =
    "SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = 'throttle.contact_sent'::pg_catalog.regclass";

/// The owner of the contact tables (read once per configuration): an admission, authorized
/// for its sender first, reads and writes them as their owner, as `throttle.inbound()` does.
fn owner(c: &SpiClient<'_>, cache: &mut Cache) -> pgrx::spi::Result<pg_sys::Oid> {
    if let Some(o) = cache.owner {
        return Ok(o);
    }
    let o = c
        .select(SQL_OWNER, None, &[])?
        .first()
        .get::<pg_sys::Oid>(1)?
        .unwrap_or(pg_sys::Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID));
    cache.owner = Some(o);
    Ok(o)
}

/// Whether any contact rule exists (read once per configuration).
pub fn any(c: &mut SpiClient<'_>, cache: &mut Cache) -> pgrx::spi::Result<bool> {
    if let Some(a) = cache.any {
        return Ok(a);
    }
    let present = c.select(SQL_PRESENT, None, &[])?.first().get::<bool>(1)?;
    let a = present == Some(true)
        && c.select(SQL_ANY, None, &[])?.first().get::<bool>(1)? == Some(true);
    cache.any = Some(a);
    Ok(a)
}

/// One rule from its row (None for a row the checks should have refused).
fn rule_of(row: &pgrx::spi::SpiHeapTupleData<'_>) -> pgrx::spi::Result<Option<Rule>> {
    let id: i64 = row.get(2)?.unwrap_or(0);
    let kind = row.get::<String>(3)?.as_deref().and_then(Kind::parse);
    let max: i32 = row.get(4)?.unwrap_or(0);
    let per: Option<i64> = row.get(5)?;
    let reset = row.get::<String>(6)?.unwrap_or_default();
    let zone: Option<String> = row.get(7)?;
    let reply: i64 = row.get(8)?.unwrap_or(0);
    let refuse = row.get::<String>(9)?.as_deref() == Some("refuse");
    let channel: Option<String> = row.get(10)?;
    let (Some(kind), Some(tz)) = (kind, zone.and_then(|z| z.parse::<chrono_tz::Tz>().ok())) else {
        return Ok(None);
    };
    let window = match per {
        Some(p) if p > 0 => Window::Rolling(p),
        _ => Window::Calendar(Calendar {
            period: Period::Day,
            reset: crate::caps::parse_time(&reset).unwrap_or(NaiveTime::MIN),
            tz,
        }),
    };
    Ok(Some(Rule {
        id,
        kind,
        max: max.max(1) as u32,
        window,
        reply_window: reply.max(0),
        at_limit: if refuse {
            AtLimit::Refuse
        } else {
            AtLimit::Hold
        },
        channel,
    }))
}

/// A contact cap that applies to a line: every line of its scope counts its own.
pub struct LineCap {
    pub rule_id: i64,
    pub name: String,
    pub scope: String,
    pub max: u32,
    pub window: Window,
}

/// The contact caps (new and follow-up contacts) of `sender` on `channel`, for capacity
/// planning, named as `throttle.plan_lines` names them (none where the schema has no contact
/// rules).
pub fn line_caps(
    c: &SpiClient<'_>,
    sender: &str,
    channel: &str,
) -> pgrx::spi::Result<Vec<LineCap>> {
    if c.select(SQL_PRESENT, None, &[])?.first().get::<bool>(1)? != Some(true) {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for row in c.select(SQL_RULES, None, &[vec![sender.to_string()].into()])? {
        let Some(r) = rule_of(&row)? else { continue };
        if r.kind.counted_as().is_none() || !r.applies_to(channel) {
            continue;
        }
        let name: Option<String> = row.get(14)?;
        out.push(LineCap {
            rule_id: r.id,
            name: name.unwrap_or_else(|| format!("{} (rule {})", r.kind.as_str(), r.id)),
            scope: row.get(13)?.unwrap_or_default(),
            max: r.max,
            window: r.window,
        });
    }
    Ok(out)
}

/// The rules of these lines (read for those not cached, in one statement).
fn rules_of(
    c: &mut SpiClient<'_>,
    cache: &mut Cache,
    senders: &[&str],
) -> pgrx::spi::Result<Vec<Rc<[Rule]>>> {
    let missing: Vec<String> = senders
        .iter()
        .filter(|s| !cache.rules.contains_key(**s))
        .map(|s| s.to_string())
        .collect();
    if !missing.is_empty() {
        let mut read: FxHashMap<String, Vec<Rule>> = FxHashMap::default();
        // Kept: an admission reads a new line's rules alone, once per line and session.
        let p = kept(c, SQL_RULES, &[TEXTARRAYOID], false)?;
        for row in c.select(&*p, None, &[missing.clone().into()])? {
            let s: String = row.get(1)?.unwrap_or_default();
            if let Some(r) = rule_of(&row)? {
                let name: String = row.get(11)?.unwrap_or_default();
                cache.labels.insert(r.id, (name, row.get(12)?));
                read.entry(s).or_default().push(r);
            }
        }
        for s in missing {
            let rules = read.remove(&s).unwrap_or_default();
            cache.rules.insert(s, rules.into());
        }
    }
    Ok(senders
        .iter()
        .map(|s| cache.rules.get(*s).cloned().unwrap_or_else(|| Rc::from([])))
        .collect())
}

/// The conversation state of a tick: per queue taken (`queues[i]`: its sender and channel;
/// its rows `batches[i]`, each where `ctid_of` says), its line's rules and state and its
/// rows' contacts. Empty when no line of the tick has rules (and then nothing is read).
pub fn read_tick(
    c: &mut SpiClient<'_>,
    cache: &mut Cache,
    queues: &[(&str, &str)],
    batches: &[Vec<Row>],
    ctid_of: impl Fn(i64) -> Option<pg_sys::ItemPointerData>,
    now: Micros,
) -> pgrx::spi::Result<(contact::Tick, Keys)> {
    let mut t = contact::Tick::default();
    let mut keys = Keys::default();
    if queues.is_empty() || !any(c, cache)? {
        return Ok((t, keys));
    }
    let _generic = crate::backend::GenericPlans::set();
    let senders: Vec<&str> = queues.iter().map(|q| q.0).collect();
    let rules = rules_of(c, cache, &senders)?;
    let mut line_at: FxHashMap<&str, usize> = FxHashMap::default();
    let mut tids = Vec::new();
    for (i, (sender, channel)) in queues.iter().enumerate() {
        if rules[i].is_empty() {
            t.queues.push(None);
            continue;
        }
        let li = *line_at.entry(sender).or_insert_with(|| {
            t.lines.push((
                rules[i].clone(),
                Line {
                    used: vec![(0, None); rules[i].len()],
                    ..Line::default()
                },
            ));
            keys.lines.push(sender.to_string());
            t.lines.len() - 1
        });
        t.queues.push(Some((li, channel.to_string())));
        tids.extend(batches[i].iter().filter_map(|r| ctid_of(r.id)));
    }
    if t.lines.is_empty() {
        return Ok((t, keys));
    }
    // The lines' locks first, then everything read as committed now: an admission that
    // changed a line's state before is seen, one that holds its lock makes it busy.
    t.busy = vec![false; t.lines.len()];
    let p = kept(c, SQL_TRY_LINES, &[TEXTARRAYOID], false)?;
    for row in c.select(&*p, None, &[keys.lines.clone().into()])? {
        let i: i32 = row.get(1)?.unwrap_or(0);
        if let Some(b) = t.busy.get_mut((i - 1) as usize) {
            *b = row.get::<bool>(2)? != Some(true);
        }
    }
    let _latest = crate::backend::LatestSnapshot::push();
    // The rows' recipients and their state.
    let mut contact_at: FxHashMap<(String, String), usize> = FxHashMap::default();
    let p = kept(c, SQL_ROWS, &[TIDARRAYOID], false)?;
    for row in c.select(&*p, None, &[tids.into()])? {
        let id: i64 = row.get(1)?.unwrap_or(0);
        let sender: String = row.get(2)?.unwrap_or_default();
        let Some(recipient) = row.get::<String>(3)? else {
            t.rows.insert(id, None);
            continue;
        };
        let key = (sender, recipient);
        if let Some(&ci) = contact_at.get(&key) {
            t.rows.insert(id, Some(ci));
            continue;
        }
        let Some(&li) = line_at.get(key.0.as_str()) else {
            continue;
        };
        t.contacts.push(contact_of(&row, 4)?);
        let ci = t.contacts.len() - 1;
        keys.contacts.push((li, key.1.clone()));
        contact_at.insert(key, ci);
        t.rows.insert(id, Some(ci));
    }
    read_again(c, cache, &mut t)?;
    read_lines(c, &mut t, &keys.lines, now)?;
    Ok((t, keys))
}

/// Rows the provider refused before, back for another attempt (a failed acknowledgement: see
/// sql/delivery.sql): counted when they first went, so only the pair rate counts them again.
/// A message whose consumer never answered is counted again (it may have gone).
const SQL_AGAIN: &str =
    "SELECT a.id FROM throttle.attempt a WHERE a.id = ANY ($1) AND a.last_error IS NOT NULL";

fn read_again(
    c: &mut SpiClient<'_>,
    cache: &mut Cache,
    t: &mut contact::Tick,
) -> pgrx::spi::Result<()> {
    if cache.attempts.is_none() {
        cache.attempts = Some(crate::backend::has_table(c, "throttle.attempt")?);
    }
    if cache.attempts != Some(true) || t.rows.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = t.rows.keys().copied().collect();
    let p = kept(c, SQL_AGAIN, &[INT8ARRAYOID], false)?;
    for row in c.select(&*p, None, &[ids.into()])? {
        if let Some(id) = row.get::<i64>(1)? {
            t.again.insert(id);
        }
    }
    Ok(())
}

/// A contact's columns as read (None: NULL, or no row), from `contact_sent` and
/// `contact_inbound`, by a statement or through the tables' keys (`contact_probe`).
#[derive(Default)]
pub(crate) struct ContactColumns {
    pub counted_as: Option<i16>,
    pub counted_at: Option<Micros>,
    pub unanswered: Option<i32>,
    pub unanswered_since: Option<Micros>,
    pub recent: Option<Vec<Option<TimestampWithTimeZone>>>,
    pub last_inbound: Option<Micros>,
}

impl From<ContactColumns> for Contact {
    fn from(c: ContactColumns) -> Contact {
        Contact {
            last_inbound: c.last_inbound,
            counted: c.counted_as.zip(c.counted_at),
            unanswered: c.unanswered.unwrap_or(0).max(0) as u32,
            unanswered_since: c.unanswered_since,
            recent: c
                .recent
                .unwrap_or_default()
                .into_iter()
                .flatten()
                .map(i64::from)
                .collect(),
            dirty: false,
            // `unanswered` is NOT NULL: it is read iff the pair has a row.
            unstored: c.unanswered.is_none(),
        }
    }
}

/// A contact's state from a row whose columns from `at` on are counted_as, counted_at,
/// unanswered, unanswered_since, recent, last_inbound_at.
fn contact_of(row: &pgrx::spi::SpiHeapTupleData<'_>, at: usize) -> pgrx::spi::Result<Contact> {
    Ok(ContactColumns {
        counted_as: row.get(at)?,
        counted_at: us(row.get(at + 1)?),
        unanswered: row.get(at + 2)?,
        unanswered_since: us(row.get(at + 3)?),
        recent: row.get(at + 4)?,
        last_inbound: us(row.get(at + 5)?),
    }
    .into())
}

/// Each line's last inbound message, streak, and the use of its contact caps.
fn read_lines(
    c: &mut SpiClient<'_>,
    t: &mut contact::Tick,
    line_names: &[String],
    now: Micros,
) -> pgrx::spi::Result<()> {
    let p = kept(c, SQL_LINES, &[TEXTARRAYOID], false)?;
    for row in c.select(&*p, None, &[line_names.to_vec().into()])? {
        let i: i32 = row.get(1)?.unwrap_or(0);
        if let Some((_, l)) = t.lines.get_mut((i - 1) as usize) {
            l.last_inbound = us(row.get(2)?);
            l.streak = row.get::<i32>(3)?.unwrap_or(0).max(0) as u32;
            l.streak_since = us(row.get(4)?);
        }
    }
    // The use of every contact cap in its window.
    let (mut s, mut k, mut since, mut at) = (vec![], vec![], vec![], vec![]);
    for (li, (rules, _)) in t.lines.iter().enumerate() {
        for (ri, r) in rules.iter().enumerate() {
            if let Some(kind) = r.kind.counted_as() {
                s.push(line_names[li].clone());
                k.push(kind);
                since.push(ts(r.window.start(now)));
                at.push((li, ri));
            }
        }
    }
    if !s.is_empty() {
        let args: [DatumWithOid; 3] = [s.into(), k.into(), since.into()];
        let p = kept(
            c,
            SQL_USED,
            &[TEXTARRAYOID, INT2ARRAYOID, TIMESTAMPTZARRAYOID],
            false,
        )?;
        for row in c.select(&*p, None, &args)? {
            let i: i32 = row.get(1)?.unwrap_or(0);
            let n: i64 = row.get(2)?.unwrap_or(0);
            let oldest = us(row.get(3)?);
            if let Some(&(li, ri)) = at.get((i - 1) as usize) {
                t.lines[li].1.used[ri] = (n.max(0) as u32, oldest);
            }
        }
    }
    Ok(())
}

/// An admission's conversation state: the rules of line `sender` and the state of it and of
/// `recipient`, read under the line's lock (taken here, held to the end of the transaction:
/// admissions on one line with contact rules take turns, and the worker leaves the line
/// alone meanwhile). What an earlier admission of the same transaction read or counted on
/// the line is used as it is kept (see `contact_txn`). None when the line has no contact
/// rules.
pub fn read_one(
    c: &mut SpiClient<'_>,
    cache: &mut Cache,
    sender: &str,
    recipient: &str,
    channel: &str,
    now: Micros,
) -> pgrx::spi::Result<Option<(contact::Tick, Keys)>> {
    use crate::contact_txn::{self as txn, Kept};
    let _generic = crate::backend::GenericPlans::set();
    if !any(c, cache)? {
        return Ok(None);
    }
    let rules = rules_of(c, cache, &[sender])?.remove(0);
    if rules.is_empty() {
        return Ok(None);
    }
    let owner = owner(c, cache)?;
    let _owner = crate::backend::AsOwner::set(owner);
    let mut t = contact::Tick {
        queues: vec![Some((0, channel.to_string()))],
        lines: vec![(
            rules.clone(),
            Line {
                used: vec![(0, None); rules.len()],
                ..Line::default()
            },
        )],
        busy: vec![false],
        ..contact::Tick::default()
    };
    t.rows.insert(0, Some(0));
    let keys = Keys {
        lines: vec![sender.to_string()],
        contacts: vec![(0, recipient.to_string())],
    };
    let starts = txn::starts(&rules, now);
    let contact = match txn::lookup(sender, recipient, &rules, &starts) {
        Kept::Line(line, contact) => {
            t.lines[0].1 = line;
            contact
        }
        Kept::Stale(contact) => {
            // Written first, so that the use read again counts it.
            txn::write_line(c, sender)?;
            let _latest = crate::backend::LatestSnapshot::push();
            read_lines(c, &mut t, &keys.lines, now)?;
            contact
        }
        Kept::No => {
            let p = kept(c, SQL_LOCK_LINE, &[TEXTOID], true)?;
            c.update(&*p, None, &[sender.into()])?;
            let _latest = crate::backend::LatestSnapshot::push();
            read_lines(c, &mut t, &keys.lines, now)?;
            None
        }
    };
    let contact = match contact {
        Some(ct) => ct,
        // A pair the filter never held has no state: no snapshot to take, nothing to read.
        None if crate::contact_probe::never_seen(sender, recipient) => {
            ContactColumns::default().into()
        }
        None => {
            let _latest = crate::backend::LatestSnapshot::push();
            match crate::contact_probe::contact(sender, recipient) {
                Some(read) => read,
                None => read_one_contact(c, sender, recipient)?,
            }
        }
    };
    t.contacts.push(contact);
    crate::contact_txn::owned_by(owner);
    kept_by_txn(&t, &keys, now);
    Ok(Some((t, keys)))
}

/// `recipient`'s state on line `sender` read with a statement (what
/// [`crate::contact_probe::contact`] reads without one), under the active snapshot.
pub(crate) fn read_one_contact(
    c: &SpiClient<'_>,
    sender: &str,
    recipient: &str,
) -> pgrx::spi::Result<Contact> {
    let p = kept(c, SQL_ONE, &[TEXTOID, TEXTOID], false)?;
    let mut read = None;
    for row in c.select(&*p, None, &[sender.into(), recipient.into()])? {
        read = Some(contact_of(&row, 1)?);
    }
    Ok(read.unwrap_or_default())
}

/// Keep the state of an admission's line and recipient (as read, or as counted) until its
/// transaction ends, which writes what was counted (see `contact_txn`).
pub fn kept_by_txn(t: &contact::Tick, keys: &Keys, now: Micros) {
    let (Some((rules, line)), Some(contact), Some(sender), Some((_, recipient))) = (
        t.lines.first(),
        t.contacts.first(),
        keys.lines.first(),
        keys.contacts.first(),
    ) else {
        return;
    };
    crate::contact_txn::store(
        sender,
        rules,
        line.clone(),
        crate::contact_txn::starts(rules, now),
        recipient,
        contact.clone(),
        now,
    );
}

/// Write what the tick decided: its holds, and the state of the contacts and lines it counted
/// (one statement each, each only if there is something to write).
pub fn write_tick(
    c: &mut SpiClient<'_>,
    t: &contact::Tick,
    keys: &Keys,
    now: Micros,
) -> pgrx::spi::Result<()> {
    if t.lines.is_empty() {
        return Ok(());
    }
    let _generic = crate::backend::GenericPlans::set();
    write_holds(c, t)?;
    write_contacts(c, t, keys, now)?;
    write_lines(c, t, keys, now)
}

/// The holds of the tick: each row's `not_before` (the rule's reset, or `until_reply()`) and
/// the rule. (A hold for a reply needs no more than the line's lock, which the tick has: an
/// inbound message on the line waits for the tick, then finds the hold.)
fn write_holds(c: &mut SpiClient<'_>, t: &contact::Tick) -> pgrx::spi::Result<()> {
    if t.held.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = t.held.iter().map(|h| h.0).collect();
    let until: Vec<TimestampWithTimeZone> = t
        .held
        .iter()
        .map(|h| ts(h.2.unwrap_or(UNTIL_REPLY)))
        .collect();
    let rules: Vec<i64> = t.held.iter().map(|h| h.1).collect();
    let args: [DatumWithOid; 3] = [ids.into(), until.into(), rules.into()];
    c.update(SQL_HOLD, None, &args)?;
    Ok(())
}

/// The state of the contacts the tick counted (one statement).
fn write_contacts(
    c: &mut SpiClient<'_>,
    t: &contact::Tick,
    keys: &Keys,
    now: Micros,
) -> pgrx::spi::Result<()> {
    // Rows read as absent are inserted; the others inserted or updated.
    for new in [true, false] {
        let (mut s, mut cn, mut k, mut at, mut n, mut since) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        let mut recent: Vec<String> = vec![];
        for (ct, (li, contact)) in t.contacts.iter().zip(&keys.contacts) {
            if !ct.dirty || ct.unstored != new {
                continue;
            }
            s.push(keys.lines[*li].clone());
            cn.push(contact.clone());
            k.push(ct.counted.map(|c| c.0));
            at.push(ct.counted.map(|c| ts(c.1)));
            n.push(ct.unanswered.min(i32::MAX as u32) as i32);
            since.push(ct.unanswered_since.map(ts));
            recent.push(int8_array_text(&ct.recent));
        }
        if s.is_empty() {
            continue;
        }
        let args: [DatumWithOid; 8] = [
            s.into(),
            cn.into(),
            k.into(),
            at.into(),
            n.into(),
            since.into(),
            recent.into(),
            ts(now).into(),
        ];
        let p = kept(
            c,
            if new { SQL_SENT_NEW } else { SQL_SENT },
            &[
                TEXTARRAYOID,
                TEXTARRAYOID,
                INT2ARRAYOID,
                TIMESTAMPTZARRAYOID,
                INT4ARRAYOID,
                TIMESTAMPTZARRAYOID,
                TEXTARRAYOID,
                TIMESTAMPTZOID,
            ],
            true,
        )?;
        c.update(&*p, None, &args)?;
    }
    Ok(())
}

/// `{t1,t2,...}`: times (µs since 2000-01-01 UTC), the text of an int8[].
fn int8_array_text(times: &[Micros]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(2 + 17 * times.len());
    out.push('{');
    for (i, t) in times.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{t}");
    }
    out.push('}');
    out
}

/// The streaks of the lines the tick counted (one statement).
fn write_lines(
    c: &mut SpiClient<'_>,
    t: &contact::Tick,
    keys: &Keys,
    now: Micros,
) -> pgrx::spi::Result<()> {
    let (mut s, mut n, mut since) = (vec![], vec![], vec![]);
    for ((_, l), name) in t.lines.iter().zip(&keys.lines) {
        if l.dirty && (l.streak > 0 || l.streak_since.is_some()) {
            s.push(name.clone());
            n.push(l.streak.min(i32::MAX as u32) as i32);
            since.push(l.streak_since.map(ts));
        }
    }
    if !s.is_empty() {
        let args: [DatumWithOid; 4] = [s.into(), n.into(), since.into(), ts(now).into()];
        let p = kept(
            c,
            SQL_LINE_SENT,
            &[
                TEXTARRAYOID,
                INT4ARRAYOID,
                TIMESTAMPTZARRAYOID,
                TIMESTAMPTZOID,
            ],
            true,
        )?;
        c.update(&*p, None, &args)?;
    }
    Ok(())
}
