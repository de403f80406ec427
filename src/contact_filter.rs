//! Which (line, contact) pairs the contact tables may hold: a presence filter in shared
//! memory (`limiter::presence`), so that an admission with contact rules skips the two index
//! reads for a recipient the line never wrote to nor heard from (most of a campaign's
//! recipients), which were a third of its time.
//!
//! Soundness: a "never" must be true. Every row ever written to `throttle.contact_sent` or
//! `throttle.contact_inbound` is added, by a BEFORE INSERT OR UPDATE row trigger
//! (`throttle.contact_seen`, ENABLE ALWAYS so that replication's apply fires it too), in the
//! writing transaction before it can commit. The filter lives in shared memory, so it starts
//! empty at every server start (and crash restart); the rows written before then are added by
//! the release worker, which reads both tables block range by block range, a batch per tick,
//! and then marks the filter ready for that database and those two tables. A row either
//! existed before the start (the worker's read finds it, or a later update of it fired the
//! trigger) or was written after (the trigger added it). Until it is ready (or in another
//! database, or where the tables are not the ones it was built for) the filter is not used.
//! The worker checks again every [`RECHECK`] that both triggers are still there and enabled,
//! else it starts over; rows written while a trigger was disabled are not seen (ALTER TABLE
//! ... DISABLE TRIGGER on these tables is not supported: restart the server after it).
//!
//! Keys are never removed (pruned contacts stay "maybe"): `throttle.contact_filter()` shows
//! the estimated false-positive rate; a restart rebuilds the filter from the tables as they
//! are.

use crate::limiter::presence::{key_hash, KeyHash, Presence};
use crate::limiter::Micros;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use std::ffi::CStr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

const SEGMENT: &CStr = c"pg_throttle contact filter";

/// Which database and tables the filter is ready for (all zero: none), and counts.
#[repr(C, align(64))]
struct Header {
    ready: AtomicBool,
    db: AtomicU32,
    sent: AtomicU32,
    inbound: AtomicU32,
    words: u64,
}

static mut HEADER: *mut Header = std::ptr::null_mut();
static mut WORDS: *mut AtomicU64 = std::ptr::null_mut();

/// Bytes to reserve (in the shmem request hook): the header and the words, and 64 of slack.
pub fn request_size() -> usize {
    64 + size_of::<Header>() + words_of_settings() * 8
}

fn words_of_settings() -> usize {
    crate::gucs::contact_filter_bytes() / 8 / crate::limiter::presence::BLOCK_WORDS
        * crate::limiter::presence::BLOCK_WORDS
}

/// Find or make the segment (in the shmem startup hook, with AddinShmemInitLock held).
///
/// # Safety
/// Called only from the shmem startup hook, with AddinShmemInitLock held, after the request
/// hook reserved [`request_size`].
pub unsafe fn attach() {
    let words = words_of_settings();
    let mut found = false;
    // SAFETY: the caller holds AddinShmemInitLock in the startup hook, for the size reserved;
    // the header and words lie within it after aligning to 64 bytes (the slack). Only this
    // hook writes HEADER and WORDS, before any backend is forked (which inherits them).
    unsafe {
        let raw =
            pg_sys::ShmemInitStruct(SEGMENT.as_ptr(), request_size(), &mut found).cast::<u8>();
        let base = raw.add(raw.align_offset(64));
        let header = base.cast::<Header>();
        let w = base.add(size_of::<Header>()).cast::<AtomicU64>();
        if !found {
            header.write(Header {
                ready: AtomicBool::new(false),
                db: AtomicU32::new(0),
                sent: AtomicU32::new(0),
                inbound: AtomicU32::new(0),
                words: words as u64,
            });
            // All zeroes: no key.
            std::ptr::write_bytes(w, 0, words);
        }
        HEADER = header;
        WORDS = w;
    }
}

fn parts() -> Option<(&'static Header, Presence<'static>)> {
    // SAFETY: HEADER and WORDS are written only by `attach` before any backend exists, and
    // point into shared memory mapped for the life of the process; the header says how many
    // words follow it.
    unsafe {
        let h = HEADER;
        if h.is_null() {
            return None;
        }
        let h = &*h;
        let words = std::slice::from_raw_parts(WORDS.cast_const(), h.words as usize);
        Some((h, Presence::new(words)))
    }
}

fn my_db() -> u32 {
    // SAFETY: MyDatabaseId is set at backend start and only read here.
    unsafe { pg_sys::MyDatabaseId }.to_u32()
}

fn hash(sender: &[u8], contact: &[u8]) -> KeyHash {
    key_hash(my_db(), sender, contact)
}

/// Whether (`sender`, `contact`) certainly has no row in either contact table, as the tables
/// `sent` and `inbound` of this database are (false: it may have, or the filter cannot say).
pub fn never_seen(sent: pg_sys::Oid, inbound: pg_sys::Oid, sender: &str, contact: &str) -> bool {
    let Some((h, f)) = parts() else {
        return false;
    };
    h.ready.load(Ordering::Acquire)
        && h.db.load(Ordering::Relaxed) == my_db()
        && h.sent.load(Ordering::Relaxed) == sent.to_u32()
        && h.inbound.load(Ordering::Relaxed) == inbound.to_u32()
        && !f.may_hold(hash(sender.as_bytes(), contact.as_bytes()))
}

fn add(sender: &[u8], contact: &[u8]) {
    if let Some((_, f)) = parts() {
        f.add(hash(sender, contact));
    }
}

fn set_ready(tables: Option<(u32, u32)>) {
    let Some((h, _)) = parts() else { return };
    h.ready.store(false, Ordering::Release);
    if let Some((sent, inbound)) = tables {
        h.db.store(my_db(), Ordering::Relaxed);
        h.sent.store(sent, Ordering::Relaxed);
        h.inbound.store(inbound, Ordering::Relaxed);
        h.ready.store(true, Ordering::Release);
    }
}

#[unsafe(no_mangle)]
#[doc(hidden)]
pub extern "C" fn pg_finfo_pg_throttle_contact_seen() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// The BEFORE INSERT OR UPDATE row trigger of both contact tables: add the row's (sender,
/// contact) to the filter, and let the row through unchanged. A plain V1 function: it runs
/// for every row written.
///
/// # Safety
/// Called only by PostgreSQL's function manager, as `throttle.contact_seen()`.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn pg_throttle_contact_seen(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: fcinfo is the call's; a call that is not a row trigger's BEFORE INSERT or
    // UPDATE is refused with an error before anything is read. The trigger's relation is
    // open (PostgreSQL holds it for the trigger), so its tuple descriptor is valid; the
    // tuple is the one being written, and its attributes are read with that descriptor.
    // Text datums are detoasted into the current memory context.
    unsafe {
        let ctx = (*fcinfo).context;
        if ctx.is_null() || (*ctx).type_ != pg_sys::NodeTag::T_TriggerData {
            not_as_trigger("throttle.contact_seen() is a trigger function");
        }
        let td = ctx.cast::<pg_sys::TriggerData>();
        let event = (*td).tg_event;
        let row = event & pg_sys::TRIGGER_EVENT_ROW != 0;
        let before = event & pg_sys::TRIGGER_EVENT_TIMINGMASK == pg_sys::TRIGGER_EVENT_BEFORE;
        let op = event & pg_sys::TRIGGER_EVENT_OPMASK;
        let tuple = if op == pg_sys::TRIGGER_EVENT_INSERT {
            (*td).tg_trigtuple
        } else if op == pg_sys::TRIGGER_EVENT_UPDATE {
            (*td).tg_newtuple
        } else {
            std::ptr::null_mut()
        };
        if !row || !before || tuple.is_null() {
            not_as_trigger(
                "throttle.contact_seen() fires only BEFORE INSERT OR UPDATE FOR EACH ROW",
            );
        }
        let desc = (*(*td).tg_relation).rd_att;
        let d = pgrx::PgTupleDesc::from_pg_unchecked(desc);
        let is_text = |i: usize, name: &str| {
            d.get(i).is_some_and(|a| {
                !a.is_dropped() && a.type_oid().value() == pg_sys::TEXTOID && a.name() == name
            })
        };
        // Both tables have them first; anywhere else is looked for.
        let at = |name: &str, first: usize| {
            if is_text(first, name) {
                Some(first)
            } else {
                (0..d.len()).find(|&i| is_text(i, name))
            }
        };
        let bytes = |at: usize| -> Option<&[u8]> {
            let mut null = false;
            let v = pg_sys::heap_getattr(tuple, (at + 1) as i32, desc, &mut null);
            if null {
                return None;
            }
            // A short value is read in place; a compressed or external one is copied into
            // the trigger's memory context, freed with it.
            let t = pg_sys::pg_detoast_datum_packed(v.cast_mut_ptr());
            Some(pgrx::varlena::varlena_to_byte_slice(t))
        };
        if let (Some(s), Some(c)) = (at("sender", 0), at("contact", 1)) {
            if let (Some(s), Some(c)) = (bytes(s), bytes(c)) {
                add(s, c);
            }
        }
        // Not a contact table's row (or a NULL key, which the table refuses): nothing the
        // filter answers for.
        pg_sys::Datum::from(tuple)
    }
}

/// 39P01, as PostgreSQL's own trigger functions raise it when called otherwise.
fn not_as_trigger(msg: &'static str) -> ! {
    pgrx::ereport!(
        PgLogLevel::ERROR,
        PgSqlErrorCode::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
        msg,
        "it is the trigger contact_seen of throttle.contact_sent and throttle.contact_inbound"
    );
    unreachable!("ereport at ERROR does not return")
}

pgrx::extension_sql!(
    r#"
CREATE FUNCTION throttle.contact_seen() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'pg_throttle_contact_seen';
CREATE TRIGGER contact_seen BEFORE INSERT OR UPDATE ON throttle.contact_sent
    FOR EACH ROW EXECUTE FUNCTION throttle.contact_seen();
CREATE TRIGGER contact_seen BEFORE INSERT OR UPDATE ON throttle.contact_inbound
    FOR EACH ROW EXECUTE FUNCTION throttle.contact_seen();
ALTER TABLE throttle.contact_sent ENABLE ALWAYS TRIGGER contact_seen;
ALTER TABLE throttle.contact_inbound ENABLE ALWAYS TRIGGER contact_seen;
REVOKE ALL ON FUNCTION throttle.contact_seen() FROM PUBLIC;
"#,
    name = "contact_filter_triggers",
    requires = ["contacts"],
);

/// How often the worker checks that the triggers are still there once the filter is ready.
const RECHECK: Micros = 10_000_000;

/// Blocks of a table read per tick while the filter is built.
const BLOCKS_PER_TICK: i64 = 256;

/// The worker's build of the filter: which tables it is for, and how far it has read them.
#[derive(Default)]
pub struct Build {
    /// (contact_sent, contact_inbound) as found, and the next block to read in each.
    tables: Option<(u32, u32)>,
    next: [i64; 2],
    /// When the filter was marked ready (0: not yet), or last checked since.
    checked_at: Micros,
}

/// The contact tables' oids, when both carry an enabled `contact_seen` trigger (ENABLE
/// ALWAYS, calling throttle.contact_seen()), and their indexes compare keys by bytes
/// (deterministic collations only; else equal keys could hash apart).
const SQL_TABLES: &str = "
    SELECT s::oid, i::oid,
           (SELECT count(*) FROM pg_catalog.pg_trigger t
             WHERE t.tgrelid IN (s, i) AND t.tgname = 'contact_seen' AND t.tgenabled = 'A'
               AND t.tgfoid = pg_catalog.to_regprocedure('throttle.contact_seen()')) = 2
       AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                         JOIN pg_catalog.pg_collation c ON c.oid = a.attcollation
                        WHERE a.attrelid IN (s, i) AND a.attname IN ('sender', 'contact')
                          AND NOT c.collisdeterministic)
      FROM (SELECT pg_catalog.to_regclass('throttle.contact_sent') AS s,
                   pg_catalog.to_regclass('throttle.contact_inbound') AS i) t";

/// One table's keys in a range of blocks.
const SQL_RANGE: [&str; 2] = [
    "SELECT sender, contact FROM throttle.contact_sent
      WHERE ctid >= pg_catalog.format('(%s,0)', $1)::tid AND ctid < pg_catalog.format('(%s,0)', $2)::tid",
    "SELECT sender, contact FROM throttle.contact_inbound
      WHERE ctid >= pg_catalog.format('(%s,0)', $1)::tid AND ctid < pg_catalog.format('(%s,0)', $2)::tid",
];

const SQL_BLOCKS: [&str; 2] = [
    "SELECT pg_catalog.pg_relation_size('throttle.contact_sent') / current_setting('block_size')::int8",
    "SELECT pg_catalog.pg_relation_size('throttle.contact_inbound') / current_setting('block_size')::int8",
];

/// One step of the worker's build (a tick's worth), or its periodic check once built.
/// Returns when to come back.
pub fn step(c: &mut SpiClient<'_>, b: &mut Build, now: Micros) -> pgrx::spi::Result<Micros> {
    if parts().is_none_or(|(h, _)| h.words == 0) {
        return Ok(Micros::MAX);
    }
    if b.checked_at != 0 {
        if now - b.checked_at < RECHECK {
            return Ok(b.checked_at + RECHECK);
        }
        b.checked_at = now;
        if tables(c)? != b.tables {
            // A trigger went (or the tables were made again): start over.
            set_ready(None);
            *b = Build::default();
            return Ok(now);
        }
        return Ok(now + RECHECK);
    }
    let found = tables(c)?;
    if found.is_none() {
        *b = Build::default();
        return Ok(now + RECHECK);
    }
    if found != b.tables {
        *b = Build {
            tables: found,
            ..Build::default()
        };
        if ready_for(found) {
            // Built before this worker started (the filter outlives a worker's restart).
            b.checked_at = now;
            return Ok(now + RECHECK);
        }
    }
    for t in 0..2 {
        let blocks = c
            .select(SQL_BLOCKS[t], None, &[])?
            .first()
            .get::<i64>(1)?
            .unwrap_or(0);
        if b.next[t] >= blocks {
            continue;
        }
        let end = b.next[t] + BLOCKS_PER_TICK;
        for row in c.select(SQL_RANGE[t], None, &[b.next[t].into(), end.into()])? {
            if let (Some(s), Some(k)) = (row.get::<&str>(1)?, row.get::<&str>(2)?) {
                add(s.as_bytes(), k.as_bytes());
            }
        }
        b.next[t] = end;
        // Come back at once for the next range.
        return Ok(now);
    }
    // Both read to their end (any block added since holds rows the trigger added).
    set_ready(b.tables);
    b.checked_at = now;
    Ok(now + RECHECK)
}

/// Whether the filter is ready for `tables` of this database.
fn ready_for(tables: Option<(u32, u32)>) -> bool {
    parts().is_some_and(|(h, _)| {
        h.ready.load(Ordering::Acquire)
            && h.db.load(Ordering::Relaxed) == my_db()
            && Some((
                h.sent.load(Ordering::Relaxed),
                h.inbound.load(Ordering::Relaxed),
            )) == tables
    })
}

fn tables(c: &mut SpiClient<'_>) -> pgrx::spi::Result<Option<(u32, u32)>> {
    let row = c.select(SQL_TABLES, None, &[])?.first();
    let (sent, inbound, ok) = (
        row.get::<pg_sys::Oid>(1)?,
        row.get::<pg_sys::Oid>(2)?,
        row.get::<bool>(3)?,
    );
    Ok(match (sent, inbound, ok) {
        (Some(s), Some(i), Some(true)) => Some((s.to_u32(), i.to_u32())),
        _ => None,
    })
}

/// The contact filter: whether it is ready (for this database), its size, how full it is,
/// and the estimated chance that a pair never seen is read from the tables all the same.
#[pg_extern(volatile, parallel_safe)]
fn contact_filter() -> TableIterator<
    'static,
    (
        name!(ready, bool),
        name!(bytes, i64),
        name!(bits_set, i64),
        name!(false_positive_rate, f64),
    ),
> {
    let Some((h, f)) = parts() else {
        return TableIterator::once((false, 0, 0, 1.0));
    };
    let (set, all) = f.fill();
    TableIterator::once((
        h.ready.load(Ordering::Acquire) && h.db.load(Ordering::Relaxed) == my_db(),
        (all / 8) as i64,
        set as i64,
        f.false_positive_rate(),
    ))
}
