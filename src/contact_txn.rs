//! What a transaction's admissions read and counted under contact rules, kept until it ends.
//!
//! An admission on a line with contact rules takes the line's lock and holds it to the end
//! of its transaction. While it is held nobody else changes the line's state: other
//! admissions and `throttle.inbound()` wait for the lock, and the worker leaves a line whose
//! lock is taken to a later tick. So what one admission read stays true for every later
//! admission on that line in the same transaction, and what they count is written once, just
//! before the transaction commits (one statement for every contact and one for every line),
//! instead of in a statement or two per admission.
//!
//! - A line's use of its contact caps is read again when an admission's time falls in another
//!   window than the one it was read for (after what was counted is written, so the count
//!   sees it).
//! - A subtransaction that rolls back releases the locks it took: the lines it locked are
//!   forgotten, with what was counted on them (as their rows would have been rolled back).
//!   What it counted on lines locked before it stays counted: erring on the safe side.
//! - `throttle.inbound()` and `take()` ask for a consumer ticket first; that writes what is
//!   counted and forgets what was read, so an inbound message in the same transaction is seen
//!   by the admissions after it.

use crate::backend::BackendLocal;
use crate::limiter::contact::{Contact, Line, Rule};
use crate::limiter::Micros;
use pgrx::pg_sys;
use pgrx::prelude::*;
use rustc_hash::FxHashMap;
use std::rc::Rc;

/// A line this transaction holds the lock of.
struct TxnLine {
    /// The subtransaction that took the lock (its parent's once it commits).
    sub: pg_sys::SubTransactionId,
    rules: Rc<[Rule]>,
    line: Line,
    /// Where each rule's window began when `line.used` was counted.
    starts: Vec<Micros>,
    contacts: FxHashMap<String, Contact>,
    /// Recipients changed since the line was last written before commit (so a transaction
    /// whose windows keep moving writes each change once, not everything at every move).
    unwritten: rustc_hash::FxHashSet<String>,
}

#[derive(Default)]
struct State {
    lines: FxHashMap<String, TxnLine>,
    /// The latest time an admission counted at (written as the contacts' last send).
    latest: Micros,
    /// The owner of the contact tables, who writes them.
    owner: pg_sys::Oid,
    callbacks: bool,
    /// Recipients kept, over every line.
    kept: usize,
}

static STATE: BackendLocal<Option<State>> = BackendLocal::new(None);

fn with_state<R>(f: impl FnOnce(&mut State) -> R) -> R {
    STATE.with(|s| f(s.get_or_insert_with(State::default)))
}

/// Where each of `rules`' windows begins at `now` (0 for a rule that counts no window).
pub fn starts(rules: &[Rule], now: Micros) -> Vec<Micros> {
    rules
        .iter()
        .map(|r| match r.kind.counted_as() {
            Some(_) => r.window.start(now),
            None => 0,
        })
        .collect()
}

/// What this transaction keeps of line `sender`: whether it holds its lock, and if so (and
/// the rules are still `rules`) the line's state, when its use was counted for the windows
/// of `starts`, and `recipient`'s state if kept. Copies: the kept state changes only through
/// [`store`], so an admission that fails half-way changes nothing.
pub enum Kept {
    /// The lock is not held: take it and read.
    No,
    /// The lock is held; the line's state is current for these windows.
    Line(Line, Option<Contact>),
    /// The lock is held; the windows (or the rules) moved on: write, then read the line again.
    Stale(Option<Contact>),
}

pub fn lookup(sender: &str, recipient: &str, rules: &Rc<[Rule]>, starts: &[Micros]) -> Kept {
    with_state(|s| match s.lines.get(sender) {
        None => Kept::No,
        Some(l) => {
            let contact = l.contacts.get(recipient).cloned();
            if Rc::ptr_eq(&l.rules, rules) && l.starts == starts {
                Kept::Line(l.line.clone(), contact)
            } else {
                Kept::Stale(contact)
            }
        }
    })
}

/// Keep line `sender` (whose lock this transaction now holds, under `rules`) with its state
/// `line` counted for the windows of `starts`, and `recipient`'s state, until the
/// transaction ends; `now` is the admission's time.
pub fn store(
    sender: &str,
    rules: &Rc<[Rule]>,
    line: Line,
    starts: Vec<Micros>,
    recipient: &str,
    contact: Contact,
    now: Micros,
) {
    let register = with_state(|s| {
        if line.dirty || contact.dirty {
            s.latest = s.latest.max(now);
        }
        let l = s
            .lines
            .entry(sender.to_string())
            .or_insert_with(|| TxnLine {
                // SAFETY: GetCurrentSubTransactionId only reads backend-local transaction state.
                sub: unsafe { pg_sys::GetCurrentSubTransactionId() },
                rules: rules.clone(),
                line: Line::default(),
                starts: Vec::new(),
                contacts: FxHashMap::default(),
                unwritten: Default::default(),
            });
        l.rules = rules.clone();
        // A line's changes stay marked until they are written at commit.
        let dirty = l.line.dirty || line.dirty;
        l.line = line;
        l.line.dirty = dirty;
        l.starts = starts;
        if contact.dirty {
            l.unwritten.insert(recipient.to_string());
        }
        match l.contacts.get_mut(recipient) {
            Some(c) => {
                let dirty = c.dirty || contact.dirty;
                // Once written, a row stays (the admission's copy may predate the write).
                let unstored = c.unstored && contact.unstored;
                *c = contact;
                c.dirty = dirty;
                c.unstored = unstored;
            }
            None => {
                l.contacts.insert(recipient.to_string(), contact);
                s.kept += 1;
            }
        }
        !std::mem::replace(&mut s.callbacks, true)
    });
    if register {
        // SAFETY: registers each callback once per backend (`callbacks` is set first), with a
        // null argument that neither reads; both are guarded functions with the signatures
        // PostgreSQL calls, in this library, which PostgreSQL never unloads.
        unsafe {
            pg_sys::RegisterXactCallback(Some(xact_callback), std::ptr::null_mut());
            pg_sys::RegisterSubXactCallback(Some(subxact_callback), std::ptr::null_mut());
        }
    }
}

/// The contact tables' owner, as whom this transaction's counts are written.
pub fn owned_by(owner: pg_sys::Oid) {
    with_state(|s| s.owner = owner);
}

/// What is to be written of the kept lines (all, or `only` that one): a tick of their
/// changed lines and contacts, its keys, and the time to write as the contacts' last send.
fn changed(only: Option<&str>) -> (crate::limiter::contact::Tick, crate::contacts::Keys, Micros) {
    with_state(|s| {
        let mut t = crate::limiter::contact::Tick::default();
        let mut keys = crate::contacts::Keys::default();
        for (name, l) in &mut s.lines {
            if only.is_some_and(|o| o != name) {
                continue;
            }
            // Before commit: everything changed. Before a line is read again: what changed
            // since its last write.
            let dirty: Vec<(&String, &Contact)> = match only {
                None => l.contacts.iter().filter(|(_, c)| c.dirty).collect(),
                Some(_) => l
                    .unwritten
                    .iter()
                    .filter_map(|k| l.contacts.get_key_value(k))
                    .collect(),
            };
            if !l.line.dirty && dirty.is_empty() {
                continue;
            }
            t.lines.push((l.rules.clone(), l.line.clone()));
            keys.lines.push(name.clone());
            for (to, ct) in dirty {
                t.contacts.push(ct.clone());
                keys.contacts.push((t.lines.len() - 1, to.clone()));
            }
            if only.is_some() {
                // Written now: each has its row from here on (a later write updates it).
                for k in l.unwritten.drain() {
                    if let Some(c) = l.contacts.get_mut(&k) {
                        c.unstored = false;
                    }
                }
            }
        }
        (t, keys, s.latest)
    })
}

/// Write what line `sender` counted in this transaction so far (before its use is read
/// again). Its rows stay marked as changed: a subtransaction that rolls back undoes this
/// write, and the one before commit then counts.
pub fn write_line(c: &mut pgrx::spi::SpiClient<'_>, sender: &str) -> pgrx::spi::Result<()> {
    let (t, keys, latest) = changed(Some(sender));
    crate::contacts::write_tick(c, &t, &keys, latest)
}

/// Write everything this transaction counted, and forget what it read (a consumer is about
/// to act on the lines: see the module's documentation).
pub fn flush() -> crate::error::Fast<()> {
    write_all()?;
    with_state(|s| {
        s.lines.clear();
        s.kept = 0;
    });
    Ok(())
}

/// Write everything this transaction counted.
fn write_all() -> crate::error::Fast<()> {
    let (t, keys, latest) = changed(None);
    if !t.lines.is_empty() {
        // Before commit no statement is running: the writes need a snapshot of their own.
        let _snapshot = crate::backend::LatestSnapshot::push();
        let _owner = crate::backend::AsOwner::set(with_state(|s| s.owner));
        Spi::connect_mut(|c| crate::contacts::write_tick(c, &t, &keys, latest))
            .map_err(|e| Box::new(crate::error::internal(e)))?;
    }
    Ok(())
}

/// Most recipients a transaction keeps (each a key, a state and a hash entry) before what it
/// counted is written and what it read is forgotten.
const MAX_KEPT: usize = 10_000;

/// Bound what this transaction keeps: past [`MAX_KEPT`] recipients, write what was counted
/// and forget the recipients (later admissions read theirs again). The lines stay kept, as
/// written: their locks stay held, so nobody else changed them, and their use as counted is
/// what the tables now say (reading it again cost a statement or two per line). Only outside
/// subtransactions: one that rolls back would undo the write, and what it forgot could then
/// not be written again at commit.
pub fn bound() -> crate::error::Fast<()> {
    // SAFETY: GetCurrentTransactionNestLevel only reads backend-local transaction state.
    let top = unsafe { pg_sys::GetCurrentTransactionNestLevel() } <= 1;
    if top && with_state(|s| s.kept) > MAX_KEPT {
        write_all()?;
        with_state(|s| {
            for l in s.lines.values_mut() {
                l.line.dirty = false;
                l.contacts.clear();
                l.unwritten.clear();
            }
            s.kept = 0;
        });
    }
    Ok(())
}

/// Before commit (or PREPARE): write what was counted. At the end: forget it all.
///
/// # Safety
/// Called only by PostgreSQL, as the transaction callback [`store`] registered.
#[pg_guard]
unsafe extern "C-unwind" fn xact_callback(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_PRE_COMMIT | XACT_EVENT_PRE_PREPARE => {
            crate::error::or_raise(flush());
        }
        XACT_EVENT_COMMIT
        | XACT_EVENT_ABORT
        | XACT_EVENT_PREPARE
        | XACT_EVENT_PARALLEL_COMMIT
        | XACT_EVENT_PARALLEL_ABORT => with_state(|s| {
            s.lines.clear();
            s.latest = 0;
            s.kept = 0;
        }),
        _ => {}
    }
}

/// At the end of a subtransaction: the lines it locked pass to its parent (commit), or are
/// forgotten, their locks released (abort).
///
/// # Safety
/// Called only by PostgreSQL, as the subtransaction callback [`store`] registered.
#[pg_guard]
unsafe extern "C-unwind" fn subxact_callback(
    event: pg_sys::SubXactEvent::Type,
    my: pg_sys::SubTransactionId,
    parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    match event {
        pg_sys::SubXactEvent::SUBXACT_EVENT_COMMIT_SUB => with_state(|s| {
            for l in s.lines.values_mut().filter(|l| l.sub == my) {
                l.sub = parent;
            }
        }),
        pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB => with_state(|s| {
            s.lines.retain(|_, l| l.sub != my);
            s.kept = s.lines.values().map(|l| l.contacts.len()).sum();
            // Writes made in it are undone: what the kept lines changed is unwritten again
            // (their use, read again, must count it).
            for l in s.lines.values_mut() {
                l.unwritten = l
                    .contacts
                    .iter()
                    .filter(|(_, c)| c.dirty)
                    .map(|(k, _)| k.clone())
                    .collect();
            }
        }),
        _ => {}
    }
}
