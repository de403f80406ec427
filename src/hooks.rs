//! A utility hook for the edges of the lifecycle:
//! - `DROP EXTENSION pg_throttle` refuses (55006) while messages are queued, unless the
//!   session sets `throttle.drop_with_messages` (the messages would be deleted with it);
//! - `DROP DATABASE` of the worker's database first stops the worker (it would otherwise hold
//!   a connection and make the drop fail), and the worker waits, unconnected, until a
//!   database of that name is created again.
//!
//! The hook itself is not guarded and keeps only plain values in its frame, so errors of the
//! command pass through it exactly as PostgreSQL raised them; its checks run in guarded
//! functions.

use crate::{error, gucs, shmem};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use std::ffi::CStr;

static mut PREVIOUS: pg_sys::ProcessUtility_hook_type = None;

/// Install the hook (from `_PG_init`, while preloading).
pub fn install() {
    // SAFETY: called once, from `_PG_init` in the postmaster while it loads
    // shared_preload_libraries: one thread, before any backend exists or any statement runs,
    // so nothing reads or writes the hook variables meanwhile.
    unsafe {
        PREVIOUS = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
    }
}

unsafe extern "C-unwind" {
    /// The server's own utility processing, called directly: its errors pass through the
    /// hook as PostgreSQL raised them (the hook's frame holds nothing to drop).
    #[link_name = "standard_ProcessUtility"]
    fn standard_process_utility(
        pstmt: *mut pg_sys::PlannedStmt,
        query: *const std::ffi::c_char,
        read_only_tree: bool,
        context: pg_sys::ProcessUtilityContext::Type,
        params: pg_sys::ParamListInfo,
        env: *mut pg_sys::QueryEnvironment,
        dest: *mut pg_sys::DestReceiver,
        qc: *mut pg_sys::QueryCompletion,
    );
}

/// The hook. Not guarded, and with only plain values in its frame: an error raised below it
/// (by the command, or by `before`, which is guarded) passes through it unchanged.
///
/// # Safety
/// Called only by PostgreSQL, as `ProcessUtility_hook`, with the arguments of
/// `ProcessUtility`.
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query: *const std::ffi::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    // SAFETY: PostgreSQL passes a valid PlannedStmt for a utility command, whose
    // `utilityStmt` is its parse node (or null, which `before` checks).
    let dropping_worker_db = unsafe { before((*pstmt).utilityStmt) };
    // SAFETY: PREVIOUS is written only in `install`, before any statement runs. The hook
    // installed before ours, or standard_ProcessUtility, gets the arguments PostgreSQL gave us,
    // unchanged, as it would without our hook; an error it raises crosses this frame, which
    // holds only plain values.
    unsafe {
        match PREVIOUS {
            Some(prev) => prev(pstmt, query, read_only_tree, context, params, env, dest, qc),
            None => standard_process_utility(
                pstmt,
                query,
                read_only_tree,
                context,
                params,
                env,
                dest,
                qc,
            ),
        }
    }
    if dropping_worker_db {
        after_drop();
    }
}

/// Checks before a utility statement; true when it drops the worker's database (the worker
/// has been told to leave it).
///
/// # Safety
/// `stmt` is null or points at a valid parse node (the statement about to run).
#[pg_guard]
unsafe extern "C-unwind" fn before(stmt: *mut pg_sys::Node) -> bool {
    if stmt.is_null() {
        return false;
    }
    // SAFETY: `stmt` is not null (checked above) and points at a parse node, whose first
    // field is its tag.
    match unsafe { (*stmt).type_ } {
        pg_sys::NodeTag::T_DropStmt => {
            // SAFETY: a node tagged T_DropStmt is a DropStmt.
            unsafe { check_drop_extension(stmt.cast::<pg_sys::DropStmt>()) };
            false
        }
        pg_sys::NodeTag::T_DropdbStmt => {
            // SAFETY: a node tagged T_DropdbStmt is a DropdbStmt, whose `dbname` is the
            // parser's NUL-terminated name (or null), alive for the whole statement.
            if !unsafe { is_worker_db((*stmt.cast::<pg_sys::DropdbStmt>()).dbname) } {
                return false;
            }
            // The worker must leave the database first, or the drop fails while it is
            // connected. It starts again in a few seconds: by then the database is gone
            // (it waits for it, unconnected) or the drop failed (it connects again).
            let pid = shmem::worker_pid();
            if pid != 0 {
                // SAFETY: a non-zero pid in shared memory is our worker's: it publishes it when
                // it starts and withdraws it as it exits.
                unsafe { libc_kill(pid) };
            }
            true
        }
        pg_sys::NodeTag::T_CreatedbStmt => {
            // SAFETY: a node tagged T_CreatedbStmt is a CreatedbStmt, whose `dbname` is the
            // parser's NUL-terminated name (or null), alive for the whole statement.
            if unsafe { is_worker_db((*stmt.cast::<pg_sys::CreatedbStmt>()).dbname) } {
                // Created again: the waiting worker connects to it.
                shmem::set_worker_db_gone(false);
                shmem::wake_worker();
            }
            false
        }
        _ => false,
    }
}

/// The worker's database is gone: its worker waits for it, unconnected.
#[pg_guard]
extern "C-unwind" fn after_drop() {
    shmem::set_worker_db_gone(true);
}

/// Send SIGTERM to `pid`.
///
/// # Safety
/// `pid` is our release worker's: any other process would be terminated as well.
unsafe fn libc_kill(pid: i32) {
    unsafe extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    const SIGTERM: i32 = 15;
    // SAFETY: kill(2) only sends a signal; the caller gives our own worker's pid, and an error
    // (it has just exited) is harmless.
    unsafe { kill(pid, SIGTERM) };
}

/// Whether `name` is the database the worker serves.
///
/// # Safety
/// `name` is null or points at a NUL-terminated string that outlives the call.
unsafe fn is_worker_db(name: *const std::ffi::c_char) -> bool {
    if name.is_null() {
        return false;
    }
    // SAFETY: `name` is not null (checked above), and the caller gives a NUL-terminated string
    // that outlives this call.
    let name = unsafe { CStr::from_ptr(name) };
    name.to_bytes() == gucs::database_name().as_bytes()
}

/// `DROP EXTENSION pg_throttle` with messages queued: refuse, unless told to discard them.
///
/// # Safety
/// `stmt` points at a valid DropStmt.
unsafe fn check_drop_extension(stmt: *mut pg_sys::DropStmt) {
    // SAFETY: the caller gives a valid DropStmt. Its `objects` is a List of nodes (or NIL);
    // each is read only after it is checked for null and tagged T_String, and a String node's
    // `sval` is checked for null before it is read as a NUL-terminated name.
    let ours = unsafe {
        (*stmt).removeType == pg_sys::ObjectType::OBJECT_EXTENSION
            && pgrx::PgList::<pg_sys::Node>::from_pg((*stmt).objects)
                .iter_ptr()
                .any(|node| {
                    !node.is_null() && (*node).type_ == pg_sys::NodeTag::T_String && {
                        let s = (*node.cast::<pg_sys::String>()).sval;
                        !s.is_null() && CStr::from_ptr(s).to_bytes() == b"pg_throttle"
                    }
                })
    };
    if !ours || gucs::drop_with_messages() {
        return;
    }
    // SAFETY: get_extension_oid reads pg_extension in the current transaction (a utility
    // command runs in one); with `missing_ok` it answers InvalidOid for an unknown name.
    if unsafe { pg_sys::get_extension_oid(c"pg_throttle".as_ptr(), true) } == pg_sys::InvalidOid {
        return;
    }
    let queued = Spi::get_one::<i64>(
        "SELECT (SELECT count(*) FROM throttle.pending) + (SELECT count(*) FROM throttle.ready)",
    );
    let n = match queued {
        Ok(Some(n)) => n,
        Ok(None) => 0,
        Err(e) => {
            error::internal(format!("cannot count queued messages: {e}"))
                .report(pgrx::PgLogLevel::ERROR);
            0
        }
    };
    if n > 0 {
        pgrx::pg_sys::panic::ErrorReport::new(
            PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
            format!("cannot drop extension pg_throttle: {n} messages are queued in throttle.pending and throttle.ready"),
            "pg_throttle",
        )
        .set_hint("Let them be released and consumed first, or SET throttle.drop_with_messages = on in this session to delete them with the extension (pg_dump keeps them, if you want a copy).")
        .report(pgrx::PgLogLevel::ERROR);
    }
}
