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
    // SAFETY: called once, from _PG_init in the postmaster, before any backend exists.
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
    // SAFETY: PostgreSQL passes a valid planned utility statement.
    let dropping_worker_db = unsafe { before((*pstmt).utilityStmt) };
    // SAFETY: the arguments are PostgreSQL's own, passed on unchanged.
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
#[pg_guard]
unsafe extern "C-unwind" fn before(stmt: *mut pg_sys::Node) -> bool {
    if stmt.is_null() {
        return false;
    }
    // SAFETY: the node is read by its tag only.
    match unsafe { (*stmt).type_ } {
        pg_sys::NodeTag::T_DropStmt => unsafe {
            check_drop_extension(stmt.cast::<pg_sys::DropStmt>());
            false
        },
        pg_sys::NodeTag::T_DropdbStmt => {
            let name = unsafe { (*stmt.cast::<pg_sys::DropdbStmt>()).dbname };
            if !is_worker_db(name) {
                return false;
            }
            // The worker must leave the database first, or the drop fails while it is
            // connected. It starts again in a few seconds: by then the database is gone
            // (it waits for it, unconnected) or the drop failed (it connects again).
            let pid = shmem::worker_pid();
            if pid != 0 {
                // SAFETY: the pid is our worker's (it registers and withdraws it).
                unsafe { libc_kill(pid) };
            }
            true
        }
        pg_sys::NodeTag::T_CreatedbStmt => {
            let name = unsafe { (*stmt.cast::<pg_sys::CreatedbStmt>()).dbname };
            if is_worker_db(name) {
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

unsafe fn libc_kill(pid: i32) {
    unsafe extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    const SIGTERM: i32 = 15;
    // SAFETY: sends SIGTERM to our own worker; an error (it is gone) is harmless.
    unsafe { kill(pid, SIGTERM) };
}

fn is_worker_db(name: *const std::ffi::c_char) -> bool {
    if name.is_null() {
        return false;
    }
    // SAFETY: the parser gives a NUL-terminated name.
    let name = unsafe { CStr::from_ptr(name) };
    name.to_bytes() == gucs::database_name().as_bytes()
}

/// `DROP EXTENSION pg_throttle` with messages queued: refuse, unless told to discard them.
unsafe fn check_drop_extension(stmt: *mut pg_sys::DropStmt) {
    // SAFETY: a DropStmt of extensions lists String nodes.
    unsafe {
        if (*stmt).removeType != pg_sys::ObjectType::OBJECT_EXTENSION {
            return;
        }
        let objects = pgrx::PgList::<pg_sys::Node>::from_pg((*stmt).objects);
        let ours = objects.iter_ptr().any(|node| {
            !node.is_null() && (*node).type_ == pg_sys::NodeTag::T_String && {
                let s = (*node.cast::<pg_sys::String>()).sval;
                !s.is_null() && CStr::from_ptr(s).to_bytes() == b"pg_throttle"
            }
        });
        if !ours || gucs::drop_with_messages() {
            return;
        }
        if pg_sys::get_extension_oid(c"pg_throttle".as_ptr(), true) == pg_sys::InvalidOid {
            return;
        }
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
