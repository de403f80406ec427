//! Backend-local state for the hot path. A PostgreSQL backend runs one thread, so plain
//! statics serve where `thread_local!` would cost a `__tls_get_addr` call per access in a
//! shared library.

use pgrx::pg_sys;
use std::cell::UnsafeCell;

/// A value private to this backend process.
pub struct BackendLocal<T>(UnsafeCell<T>);

// SAFETY: a backend touches these only from its single thread.
unsafe impl<T> Sync for BackendLocal<T> {}

impl<T> BackendLocal<T> {
    pub const fn new(v: T) -> Self {
        BackendLocal(UnsafeCell::new(v))
    }

    /// Run `f` with the value. `f` must not call back into code that uses the same value
    /// (the callers keep these sections free of SPI and of other `with` calls on it).
    #[inline]
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        // SAFETY: single-threaded, and no caller re-enters `with` on the same value.
        f(unsafe { &mut *self.0.get() })
    }
}

/// (local transaction id, its start time) of the last transaction asked about.
static XACT_START: BackendLocal<(u32, i64)> = BackendLocal::new((0, 0));

/// The current transaction's start time (`now()`), without a guarded call into PostgreSQL
/// per admission: looked up once per local transaction id.
pub fn transaction_start() -> i64 {
    // SAFETY: MyProc is this backend's PGPROC, valid for the life of the backend.
    let lxid = unsafe { (*pg_sys::MyProc).lxid };
    XACT_START.with(|(id, start)| {
        if *id != lxid || *start == 0 {
            *id = lxid;
            *start = unsafe { pg_sys::GetCurrentTransactionStartTimestamp() };
        }
        *start
    })
}
