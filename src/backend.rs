//! Backend-local state for the hot path. A PostgreSQL backend runs one thread, so plain
//! statics serve where `thread_local!` would cost a `__tls_get_addr` call per access in a
//! shared library.

use pgrx::pg_sys;
use std::cell::UnsafeCell;

/// A value private to this backend process.
pub struct BackendLocal<T>(UnsafeCell<T>);

// SAFETY: PostgreSQL runs a backend's code on one thread and none of ours starts another, so
// a value is only ever reached from that thread: sharing the static between threads never
// happens.
unsafe impl<T> Sync for BackendLocal<T> {}

impl<T> BackendLocal<T> {
    pub const fn new(v: T) -> Self {
        BackendLocal(UnsafeCell::new(v))
    }

    /// Run `f` with the value. `f` must not call back into code that uses the same value
    /// (the callers keep these sections free of SPI and of other `with` calls on it).
    #[inline]
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        // SAFETY: only the backend's one thread reaches the value (see the Sync impl), and no
        // caller re-enters `with` on the same value from `f`, so this is the only reference to
        // it while `f` runs.
        f(unsafe { &mut *self.0.get() })
    }
}

/// A statement with one `text` argument, prepared on its first use in this backend and kept
/// (a sender read alone is read once per new sender, per row of a query over many: parsing
/// and planning it each time cost more than the read).
pub struct KeptStatement {
    sql: &'static str,
    kept: BackendLocal<Option<pgrx::spi::OwnedPreparedStatement>>,
}

impl KeptStatement {
    pub const fn new(sql: &'static str) -> Self {
        KeptStatement {
            sql,
            kept: BackendLocal::new(None),
        }
    }

    /// Run `f` with the statement, prepared through `c` if it is not yet. Never re-entered:
    /// the statement is out of its slot while `f` runs.
    pub fn with<R>(
        &self,
        c: &pgrx::spi::SpiClient<'_>,
        f: impl FnOnce(&pgrx::spi::OwnedPreparedStatement) -> pgrx::spi::Result<R>,
    ) -> pgrx::spi::Result<R> {
        let stmt = match self.kept.with(|s| s.take()) {
            Some(s) => s,
            None => c
                .prepare(
                    self.sql,
                    &[pgrx::PgOid::BuiltIn(pgrx::PgBuiltInOids::TEXTOID)],
                )?
                .keep(),
        };
        let r = f(&stmt);
        self.kept.with(|s| *s = Some(stmt));
        r
    }
}

/// (local transaction id, its start time) of the last transaction asked about.
static XACT_START: BackendLocal<(u32, i64)> = BackendLocal::new((0, 0));

/// The current transaction's start time (`now()`), without a guarded call into PostgreSQL
/// per admission: looked up once per local transaction id.
pub fn transaction_start() -> i64 {
    // SAFETY: MyProc is this backend's PGPROC, set before any of our code runs and valid for
    // the life of the backend; only this backend writes its `lxid`.
    let lxid = unsafe { (*pg_sys::MyProc).lxid };
    XACT_START.with(|(id, start)| {
        if *id != lxid || *start == 0 {
            *id = lxid;
            // SAFETY: GetCurrentTransactionStartTimestamp only reads backend-local transaction
            // state, and raises no error.
            *start = unsafe { pg_sys::GetCurrentTransactionStartTimestamp() };
        }
        *start
    })
}

/// The latest snapshot, pushed as the active snapshot for as long as this guard lives: queries
/// run meanwhile read the tables as committed now, not as the calling statement's snapshot
/// saw them. The guard pops it on drop, so every path out of the scope does, a Rust panic or a
/// PostgreSQL error unwinding through pgrx included.
pub struct LatestSnapshot(pg_sys::Snapshot);

impl LatestSnapshot {
    /// Push the latest snapshot. Called in a transaction (every caller runs in a statement).
    pub fn push() -> LatestSnapshot {
        // SAFETY: in a transaction, GetLatestSnapshot takes a fresh snapshot and
        // PushActiveSnapshot pushes a copy of it, which GetActiveSnapshot then returns; an
        // error (such as a parallel operation) comes back as a panic, before anything is
        // pushed.
        unsafe {
            pg_sys::PushActiveSnapshot(pg_sys::GetLatestSnapshot());
            LatestSnapshot(pg_sys::GetActiveSnapshot())
        }
    }
}

impl Drop for LatestSnapshot {
    fn drop(&mut self) {
        // SAFETY: ActiveSnapshotSet and GetActiveSnapshot only read the active snapshot stack,
        // and PopActiveSnapshot (which raises no error) runs only while the stack's top holds
        // the snapshot `push` put there, so it never pops an entry of our caller. After an
        // error, code that pushed on top of ours may not have popped; then this pops nothing
        // or one entry of that same snapshot, and the abort that follows the error pops
        // whatever the (sub)transaction pushed and left, ours included.
        unsafe {
            if pg_sys::ActiveSnapshotSet() && pg_sys::GetActiveSnapshot() == self.0 {
                pg_sys::PopActiveSnapshot();
            }
        }
    }
}

/// Generic plans, made without sequential scans, for the statements run while this guard
/// lives. The plan cache otherwise plans a kept statement whose custom plans look cheaper anew
/// at every execution (measured: 38 % of an admission with contact rules went to planning its
/// six statements again). And a generic plan is made once, from the statistics of that moment:
/// made while the contact tables were empty (just installed, or emptied and analysed), it
/// scanned the whole table of what was sent for every line's count once rows came (measured:
/// 2 s instead of 0.2 s for a statement of 20,000 admissions over 1,000 lines); without
/// sequential scans it reads the indexes whatever the statistics say. The previous settings
/// come back on drop, a Rust panic or a PostgreSQL error unwinding through pgrx included.
pub struct GenericPlans(core::ffi::c_int, bool);

impl GenericPlans {
    pub fn set() -> GenericPlans {
        // SAFETY: `plan_cache_mode` and `enable_seqscan` are plain backend-local GUC
        // variables, read by the plan cache and the planner when a statement runs and written
        // only by this backend's one thread; the guard puts the values it found back.
        unsafe {
            let was = (pg_sys::plan_cache_mode, pg_sys::enable_seqscan);
            pg_sys::plan_cache_mode =
                pg_sys::PlanCacheMode::PLAN_CACHE_MODE_FORCE_GENERIC_PLAN as core::ffi::c_int;
            pg_sys::enable_seqscan = false;
            GenericPlans(was.0, was.1)
        }
    }
}

impl Drop for GenericPlans {
    fn drop(&mut self) {
        // SAFETY: as in `set`: backend-local variables, written back by this backend's thread.
        unsafe {
            pg_sys::plan_cache_mode = self.0;
            pg_sys::enable_seqscan = self.1;
        }
    }
}

/// Whether this database's schema has table `name` (schema-qualified): a database whose
/// extension is not yet updated lacks the newer ones, and the worker and explain leave
/// those steps out.
pub fn has_table(c: &pgrx::spi::SpiClient<'_>, name: &str) -> pgrx::spi::Result<bool> {
    Ok(c.select(
        "SELECT pg_catalog.to_regclass($1) IS NOT NULL",
        None,
        &[name.into()],
    )?
    .first()
    .get::<bool>(1)?
        == Some(true))
}

/// A vector of `n` values made by `fill`, whose memory asks the kernel for huge pages first
/// where it spans them (`MADV_HUGEPAGE`, honoured when transparent huge pages are set to
/// `madvise` or `always`). A backend's plan table for 100,000 lines spans tens of megabytes:
/// in 4 kB pages nearly every look-up also misses the TLB.
pub fn huge_vec<T>(n: usize, fill: impl FnMut() -> T) -> Vec<T> {
    let mut v = huge_capacity(n);
    v.extend(std::iter::repeat_with(fill).take(n));
    v
}

/// An empty vector with room for `n` values, in memory advised as [`huge_vec`]'s is.
pub fn huge_capacity<T>(n: usize) -> Vec<T> {
    const HUGE: usize = 2 << 20;
    let mut v: Vec<T> = Vec::with_capacity(n);
    let bytes = n.saturating_mul(std::mem::size_of::<T>());
    if bytes >= 2 * HUGE {
        let start = v.as_mut_ptr() as usize;
        let from = start.next_multiple_of(HUGE);
        let to = (start + bytes) & !(HUGE - 1);
        if to > from {
            unsafe extern "C" {
                fn madvise(addr: *mut std::ffi::c_void, len: usize, advice: i32) -> i32;
            }
            const MADV_HUGEPAGE: i32 = 14;
            // SAFETY: [from, to) lies inside the allocation just made for `v` (whose capacity
            // covers `bytes`), is aligned to 2 MB and so to the page size; the advice changes
            // only how the kernel backs those pages, never their contents, and a refusal
            // (an error return) is harmless.
            unsafe {
                madvise(from as *mut std::ffi::c_void, to - from, MADV_HUGEPAGE);
            }
        }
    }
    v
}

/// Run as `owner` (the extension's owner) for as long as this guard lives, as a SECURITY
/// DEFINER function with `SET search_path = pg_catalog` would: for the statements on tables
/// no other role may touch, run for a role already authorized for what they do. Names resolve
/// in pg_catalog only meanwhile ([`CatalogSearchPath`]), so no function or operator the
/// caller put in their search path runs as the owner (a cached plan is analysed again under
/// the path current when it runs). The guard puts the caller's identity and path back on
/// drop; an error's abort restores them too.
pub struct AsOwner(pg_sys::Oid, core::ffi::c_int, CatalogSearchPath);

impl AsOwner {
    pub fn set(owner: pg_sys::Oid) -> AsOwner {
        let path = CatalogSearchPath::push();
        let mut user = pg_sys::InvalidOid;
        let mut sec: core::ffi::c_int = 0;
        // SAFETY: both functions only read or write this backend's current user and security
        // context (plain backend-local state); the pointers are to live locals.
        unsafe {
            pg_sys::GetUserIdAndSecContext(&mut user, &mut sec);
            pg_sys::SetUserIdAndSecContext(
                owner,
                sec | pg_sys::SECURITY_LOCAL_USERID_CHANGE as core::ffi::c_int,
            );
        }
        AsOwner(user, sec, path)
    }
}

impl Drop for AsOwner {
    fn drop(&mut self) {
        // SAFETY: as in `set`: backend-local state, set back to what `set` found.
        unsafe { pg_sys::SetUserIdAndSecContext(self.0, self.1) };
    }
}

/// Resolve names as if the search path held only `pg_catalog`, for as long as this guard
/// lives (see [`AsOwner`]). The guard pops it on drop, on every path out; an error's abort
/// drops any left over.
pub struct CatalogSearchPath(());

impl CatalogSearchPath {
    pub fn push() -> CatalogSearchPath {
        let mut path = pg_sys::OverrideSearchPath {
            schemas: std::ptr::null_mut(),
            addCatalog: true,
            addTemp: false,
            generation: 0,
        };
        // SAFETY: PushOverrideSearchPath copies the path it is given (an empty schema list,
        // with pg_catalog and without pg_temp) into its own memory before returning, so the
        // local may go; it raises no error for such a path.
        unsafe { pg_sys::PushOverrideSearchPath(&mut path) };
        CatalogSearchPath(())
    }
}

impl Drop for CatalogSearchPath {
    fn drop(&mut self) {
        // SAFETY: pops the entry `push` pushed: guards live in one scope each and are dropped
        // in reverse order, and nothing between pushes an override of its own without
        // popping it.
        unsafe { pg_sys::PopOverrideSearchPath() };
    }
}
