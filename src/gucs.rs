//! Every `throttle.*` setting: private statics, `init()`, typed accessors.

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

static MAX_BUCKETS: GucSetting<i32> = GucSetting::<i32>::new(100_000);
static MAX_FUTURE_MS: GucSetting<i32> = GucSetting::<i32>::new(3_600_000);

pub fn init() {
    GucRegistry::define_int_guc(
        c"throttle.max_buckets",
        c"Live limit buckets kept in shared memory.",
        c"Each rate limit (and each key of a keyed limit) uses one bucket. When they are all in use and none has fully refilled, admissions that need a new bucket fail with SQLSTATE 53400.",
        &MAX_BUCKETS,
        1_024,
        50_000_000,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"throttle.max_future",
        c"How far ahead of the transaction's start time an admission timestamp may be.",
        c"An admission at a future time debits the buckets as of that time; this bounds the damage a wrong timestamp can do. 0 disables the check.",
        &MAX_FUTURE_MS,
        0,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
}

/// Capacity of the shared bucket table (read once, at postmaster start).
pub fn max_buckets() -> usize {
    MAX_BUCKETS.get().max(1) as usize
}

/// Largest allowed distance into the future of an admission timestamp, in µs (0: unbounded).
pub fn max_future_us() -> i64 {
    MAX_FUTURE_MS.get() as i64 * 1_000
}
