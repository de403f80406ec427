//! One recipient's state read straight from the two tables' primary keys, as an admission
//! with contact rules needs it for each recipient it has not seen in its transaction yet.
//!
//! The same read as a statement (`contacts::SQL_ONE`) costs a plan-cache look-up, an executor
//! start and end, and the statement's bookkeeping around two index look-ups: measured, 44 % of
//! a statement of admissions to new recipients (20,000 over 1,000 lines: 423–432 ms with the
//! statement's reads, 235–242 ms with no read at all, 329–344 ms with these). Here each table
//! is probed through its primary key with the active snapshot, and the row's columns are read
//! where the tuple lies.
//!
//! The tables are found by name once per transaction, and their layout (columns' names and
//! types, the keys' columns) is checked at every read on the relations as opened: any
//! difference, a missing table, or a key this read cannot form answers `None`, and the
//! caller reads with the statement instead.

use crate::backend::BackendLocal;
use crate::contacts::ContactColumns;
use crate::limiter::contact::Contact;
use crate::limiter::Micros;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::FromDatum;

/// A table and its primary key.
#[derive(Clone, Copy)]
struct Keyed {
    table: pg_sys::Oid,
    pkey: pg_sys::Oid,
}

/// The two tables as this transaction found them by name (None: read with the statement).
#[derive(Clone, Copy)]
struct Tables {
    sent: Keyed,
    inbound: Keyed,
}

/// (local transaction id, the tables found in it).
static FOUND: BackendLocal<(u32, Option<Tables>)> = BackendLocal::new((0, None));

/// contact_sent's columns as read here: (name, type), from attribute number 1.
const SENT_COLUMNS: [(&str, pg_sys::Oid); 7] = [
    ("sender", pg_sys::TEXTOID),
    ("contact", pg_sys::TEXTOID),
    ("counted_as", pg_sys::INT2OID),
    ("counted_at", pg_sys::TIMESTAMPTZOID),
    ("unanswered", pg_sys::INT4OID),
    ("unanswered_since", pg_sys::TIMESTAMPTZOID),
    ("recent", pg_sys::TIMESTAMPTZARRAYOID),
];

/// contact_inbound's columns as read here.
const INBOUND_COLUMNS: [(&str, pg_sys::Oid); 3] = [
    ("sender", pg_sys::TEXTOID),
    ("contact", pg_sys::TEXTOID),
    ("last_inbound_at", pg_sys::TIMESTAMPTZOID),
];

/// `recipient`'s state on line `sender` as committed when the active snapshot was taken
/// (the caller pushes the latest one), or None when this read cannot answer (the caller then
/// runs the statement). A recipient neither table knows is a contact with no state, marked
/// unstored.
pub fn contact(sender: &str, recipient: &str) -> Option<Contact> {
    let tables = tables()?;
    let (sender, recipient) = (sender.into_datum()?, recipient.into_datum()?);
    let mut c = ContactColumns::default();
    probe(tables.sent, sender, recipient, &SENT_COLUMNS, |v| {
        c.counted_as = v[2].map(|k| k.value() as i16);
        c.counted_at = v[3].map(|t| t.value() as Micros);
        c.unanswered = v[4].map(|n| n.value() as i32);
        c.unanswered_since = v[5].map(|t| t.value() as Micros);
        // SAFETY: a non-null `recent` of the row just read, declared timestamptz[] (checked
        // with the layout); it is read (detoasted and copied) while the slot still holds it.
        c.recent = v[6].and_then(|d| unsafe {
            Vec::<Option<TimestampWithTimeZone>>::from_polymorphic_datum(
                d,
                false,
                pg_sys::TIMESTAMPTZARRAYOID,
            )
        });
    })?;
    probe(tables.inbound, sender, recipient, &INBOUND_COLUMNS, |v| {
        c.last_inbound = v[2].map(|t| t.value() as Micros);
    })?;
    Some(c.into())
}

/// Whether neither table ever held a row for (`sender`, `recipient`), as the filter of pairs
/// seen says (false: they may have, or the filter cannot say). No snapshot is needed: the
/// filter holds every pair written by any transaction, committed or not.
pub fn never_seen(sender: &str, recipient: &str) -> bool {
    tables().is_some_and(|t| {
        crate::contact_filter::never_seen(t.sent.table, t.inbound.table, sender, recipient)
    })
}

/// The tables, found by name once per local transaction.
fn tables() -> Option<Tables> {
    // SAFETY: MyProc is this backend's PGPROC, set before any of our code runs and valid for
    // the life of the backend; only this backend writes its `lxid`.
    let lxid = unsafe { (*pg_sys::MyProc).lxid };
    if let Some(found) = FOUND.with(|(id, t)| (*id == lxid).then_some(*t)) {
        return found;
    }
    let found = find();
    FOUND.with(|f| *f = (lxid, found));
    found
}

fn find() -> Option<Tables> {
    // SAFETY: catalog look-ups by name, in a transaction (the caller's statement runs in
    // one); a missing schema or relation answers InvalidOid (missing_ok), never an error.
    let (nsp, name) = unsafe {
        let nsp = pg_sys::get_namespace_oid(c"throttle".as_ptr(), true);
        (nsp, move |n: &std::ffi::CStr| {
            pg_sys::get_relname_relid(n.as_ptr(), nsp)
        })
    };
    if nsp == pg_sys::InvalidOid {
        return None;
    }
    let keyed = |table: &std::ffi::CStr, pkey: &std::ffi::CStr| {
        let k = Keyed {
            table: name(table),
            pkey: name(pkey),
        };
        (k.table != pg_sys::InvalidOid && k.pkey != pg_sys::InvalidOid).then_some(k)
    };
    Some(Tables {
        sent: keyed(c"contact_sent", c"contact_sent_pkey")?,
        inbound: keyed(c"contact_inbound", c"contact_inbound_pkey")?,
    })
}

/// Whether `rel` is a table with `columns` (by name and type, from attribute 1, none
/// dropped) and `idx` a valid unique index of it on exactly its first two columns.
///
/// # Safety
/// `rel` and `idx` are relations this backend has open.
unsafe fn laid_out(
    rel: pg_sys::Relation,
    idx: pg_sys::Relation,
    columns: &[(&str, pg_sys::Oid)],
) -> bool {
    // SAFETY: both are open relations (the caller's contract): their relcache entries, tuple
    // descriptor and (for an index, after its relkind is checked) pg_index row stay valid
    // while they are open.
    unsafe {
        if (*(*rel).rd_rel).relkind as u8 != pg_sys::RELKIND_RELATION
            || (*(*idx).rd_rel).relkind as u8 != pg_sys::RELKIND_INDEX
        {
            return false;
        }
        let desc = pgrx::PgTupleDesc::from_pg_unchecked((*rel).rd_att);
        let columns_ok = desc.len() >= columns.len()
            && columns.iter().enumerate().all(|(i, (n, t))| {
                desc.get(i).is_some_and(|a| {
                    !a.is_dropped() && a.name() == *n && a.type_oid().value() == *t
                })
            });
        let i = &*(*idx).rd_index;
        columns_ok
            && i.indrelid == (*rel).rd_id
            && i.indisunique
            && i.indisvalid
            && i.indnkeyatts == 2
            && i.indkey.values.as_slice(2) == [1, 2]
    }
}

/// Look (sender, contact) up in `k` by its primary key under the active snapshot; when a row
/// is there, `read` sees its `columns` (None for NULL) while the row is held. None: the
/// tables are not as `columns` says (or gone), or there is no active snapshot to read with.
fn probe(
    k: Keyed,
    sender: pg_sys::Datum,
    contact: pg_sys::Datum,
    columns: &[(&str, pg_sys::Oid)],
    read: impl FnOnce(&[Option<pg_sys::Datum>]),
) -> Option<()> {
    let natts = columns.len();
    // SAFETY: called in a transaction with an active snapshot (checked). The relations are
    // opened with try_relation_open (NULL when gone) and checked by `laid_out` before any use
    // beyond that (a table with these columns and types, a unique index on its columns 1 and
    // 2, both text: the keys are two text datums compared with `texteq` in the index's own
    // collations, and each column read has the type `read` expects). Every object made here
    // (scan, slot) is ended before return, and the relations are closed keeping their
    // AccessShareLock to the transaction's end. An error raised inside aborts the
    // transaction, whose resource owner releases the pin, scan and locks.
    unsafe {
        if !pg_sys::ActiveSnapshotSet() {
            return None;
        }
        let snapshot = pg_sys::GetActiveSnapshot();
        let rel = pg_sys::try_relation_open(k.table, pg_sys::AccessShareLock as _);
        if rel.is_null() {
            return None;
        }
        let idx = pg_sys::try_relation_open(k.pkey, pg_sys::AccessShareLock as _);
        if idx.is_null() || !laid_out(rel, idx, columns) {
            if !idx.is_null() {
                pg_sys::relation_close(idx, pg_sys::NoLock as _);
            }
            pg_sys::relation_close(rel, pg_sys::NoLock as _);
            return None;
        }
        let mut keys: [pg_sys::ScanKeyData; 2] = std::mem::zeroed();
        for (i, value) in [sender, contact].into_iter().enumerate() {
            pg_sys::ScanKeyEntryInitialize(
                &mut keys[i],
                0,
                (i + 1) as pg_sys::AttrNumber,
                pg_sys::BTEqualStrategyNumber as pg_sys::StrategyNumber,
                pg_sys::InvalidOid,
                *(*idx).rd_indcollation.add(i),
                pg_sys::Oid::from(pg_sys::F_TEXTEQ),
                value,
            );
        }
        let scan = pg_sys::index_beginscan(rel, idx, snapshot, 2, 0);
        pg_sys::index_rescan(scan, keys.as_mut_ptr(), 2, std::ptr::null_mut(), 0);
        let slot = pg_sys::table_slot_create(rel, std::ptr::null_mut());
        if pg_sys::index_getnext_slot(scan, pg_sys::ScanDirection::ForwardScanDirection, slot) {
            pg_sys::slot_getsomeattrs_int(slot, natts as i32);
            let values = std::slice::from_raw_parts((*slot).tts_values, natts);
            let nulls = std::slice::from_raw_parts((*slot).tts_isnull, natts);
            let row: Vec<Option<pg_sys::Datum>> = values
                .iter()
                .zip(nulls)
                .map(|(v, null)| (!null).then_some(*v))
                .collect();
            read(&row);
        }
        pg_sys::ExecDropSingleTupleTableSlot(slot);
        pg_sys::index_endscan(scan);
        pg_sys::relation_close(idx, pg_sys::NoLock as _);
        pg_sys::relation_close(rel, pg_sys::NoLock as _);
    }
    Some(())
}
