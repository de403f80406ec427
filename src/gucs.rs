//! Every `throttle.*` setting: private statics, `init()`, typed accessors.

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

static MAX_BUCKETS: GucSetting<i32> = GucSetting::<i32>::new(100_000);
static MAX_QUEUE_CAPS: GucSetting<i32> = GucSetting::<i32>::new(10_000);
static MAX_CAP_LEASES: GucSetting<i32> = GucSetting::<i32>::new(4_096);
static ENQUEUE_RING: GucSetting<i32> = GucSetting::<i32>::new(262_144);
static CONTACT_FILTER_MB: GucSetting<i32> = GucSetting::<i32>::new(16);
static DATABASE_NAME: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"postgres"));
static WORKER_ENABLED: GucSetting<bool> = GucSetting::<bool>::new(true);
static RELEASE_BATCH: GucSetting<i32> = GucSetting::<i32>::new(1_000);
static QUEUE_BATCH: GucSetting<i32> = GucSetting::<i32>::new(100);
static EXPIRY_ERROR_CODE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"30036"));
static MAX_FUTURE_MS: GucSetting<i32> = GucSetting::<i32>::new(3_600_000);
static LEASE_IDLE_MS: GucSetting<i32> = GucSetting::<i32>::new(1_000);
static CONTACT_RETENTION_S: GucSetting<i32> = GucSetting::<i32>::new(90 * 86_400);
static RESCAN_INTERVAL_MS: GucSetting<i32> = GucSetting::<i32>::new(60_000);
static DROP_WITH_MESSAGES: GucSetting<bool> = GucSetting::<bool>::new(false);
static PRELOAD_SENDERS: GucSetting<i32> = GucSetting::<i32>::new(20_000);
static MAX_ATTEMPTS: GucSetting<i32> = GucSetting::<i32>::new(5);
static RETRY_BACKOFF_MS: GucSetting<i32> = GucSetting::<i32>::new(30_000);
static SENT_RETENTION_S: GucSetting<i32> = GucSetting::<i32>::new(7 * 86_400);
const MAX_IDENTIFIER: usize = 128;

/// Define the settings. Postmaster-context settings can only be defined while the postmaster
/// loads `shared_preload_libraries` (`preloading`); defining them later is FATAL.
pub fn init(preloading: bool) {
    if preloading {
        define_postmaster();
    }
    define_runtime();
    define_expiry_code();
    define_delivery();
}

fn define_delivery() {
    GucRegistry::define_int_guc(
        c"throttle.max_attempts",
        c"Most times a message is read with throttle.read() before it goes to throttle.dead.",
        c"A message failed (ack 'failed') or not acknowledged within its visibility timeout goes back to its queue until it has been read this many times; then it is dead with its last error.",
        &MAX_ATTEMPTS,
        1,
        1_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"throttle.retry_backoff",
        c"How long a failed message waits before it goes back to its queue, after its first attempt.",
        c"Doubled with each attempt, at most an hour; an ack's retry_after (the provider's Retry-After) overrides it.",
        &RETRY_BACKOFF_MS,
        0,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"throttle.sent_retention",
        c"How long throttle.sent keeps what was sent.",
        c"Older rows are pruned by the release worker, a batch at a time. 0 keeps them all.",
        &SENT_RETENTION_S,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
}

fn define_postmaster() {
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
        c"throttle.max_queue_caps",
        c"Queue caps (rows of throttle.queue_cap) counted in shared memory.",
        c"24 bytes each. Creating more queue caps than this fails with SQLSTATE 53400.",
        &MAX_QUEUE_CAPS,
        16,
        10_000_000,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"throttle.max_cap_leases",
        c"Calendar-cap windows that throttle_admit sessions can hold leases on at once.",
        c"80 bytes each. When every entry holds an unspent lease, admissions under a calendar cap that needs a new one fail with SQLSTATE 53400.",
        &MAX_CAP_LEASES,
        16,
        10_000_000,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"throttle.contact_filter_mb",
        c"Shared memory for the filter that tells recipients never seen on a line (MB; 0: none).",
        c"An admission with contact rules reads a recipient's state from the contact tables unless this filter says no row of them was ever written for the pair. 16 MB: about 0.2 % of new recipients read all the same at 10 million (line, contact) pairs.",
        &CONTACT_FILTER_MB,
        0,
        4_096,
        GucContext::Postmaster,
        GucFlags::UNIT_MB,
    );
    GucRegistry::define_int_guc(
        c"throttle.enqueue_ring",
        c"Enqueued messages handed to the release worker through shared memory before it reads them.",
        c"8 bytes each. When it is full, the worker finds new messages by scanning throttle.pending instead (slower, never lost).",
        &ENQUEUE_RING,
        1_024,
        100_000_000,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"throttle.database_name",
        c"The database whose throttle.pending the release worker serves.",
        c"The worker starts with the server and waits for CREATE EXTENSION pg_throttle in this database.",
        &DATABASE_NAME,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"throttle.worker_enabled",
        c"Whether the release worker moves rows from throttle.pending to throttle.ready.",
        c"Off: the worker stays connected but releases nothing (admissions by throttle_admit go on).",
        &WORKER_ENABLED,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"throttle.release_batch",
        c"Most rows the release worker moves in one transaction.",
        c"Larger batches release faster under a backlog; smaller ones answer SIGTERM and new work sooner.",
        &RELEASE_BATCH,
        1,
        100_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"throttle.queue_batch",
        c"Most rows the release worker takes from one queue in one transaction.",
        c"Queues that share a limit take turns; this bounds one turn.",
        &QUEUE_BATCH,
        1,
        100_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"throttle.lease_idle",
        c"How long a calendar-cap lease may sit unspent before the worker takes it back when its room is wanted.",
        c"throttle_admit spends calendar caps from leases the worker grants; what an idle lease holds unspent goes back to the cap once messages queue under it (or more than three quarters of throttle.max_cap_leases are taken), so queued messages are never held by room no one uses. A lease nobody else needs is kept until its window ends.",
        &LEASE_IDLE_MS,
        10,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"throttle.contact_retention",
        c"How long the contact rules remember a line's contact: what it was sent, and its last inbound message.",
        c"Older state is pruned by the release worker, a batch at a time: the contact then counts as new again (the stricter cap), and an unanswered streak is forgotten. At least 32 days (longer than every window a rule counts in).",
        &CONTACT_RETENTION_S,
        32 * 86_400,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"throttle.rescan_interval",
        c"Longest the release worker sleeps, idle or not, before it looks at throttle.pending again.",
        c"New messages wake the worker at once through their insert trigger; this timer finds rows written without it (logical replication applies rows with session_replication_role = replica) and is the worker's liveness signal (throttle.worker_state().seconds_since_tick).",
        &RESCAN_INTERVAL_MS,
        1_000,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"throttle.preload_senders",
        c"Most registered senders whose limits a session reads in one statement once it has met many it had not read.",
        c"After a configuration change a session reads each sender's limits as it first meets the sender; one that has met 32 reads all the others at once (one statement) if there are at most this many, else it goes on one sender at a time. 0: always one at a time.",
        &PRELOAD_SENDERS,
        0,
        10_000_000,
        GucContext::Userset,
        GucFlags::default(),
    );
}

fn define_expiry_code() {
    GucRegistry::define_string_guc(
        c"throttle.expiry_error_code",
        c"Error code given to messages that expire before release.",
        c"Stored in throttle.dead.error_code, unless the sender has its own expiry_error_code. Twilio uses 30036, Infobip EC 1158.",
        &EXPIRY_ERROR_CODE,
        GucContext::Sighup,
        GucFlags::default(),
    );
}

fn define_runtime() {
    GucRegistry::define_int_guc(
        c"throttle.max_future",
        c"How far ahead of the transaction's start time an admission timestamp may be.",
        c"An admission at a future time debits the buckets as of that time; this bounds the damage a wrong timestamp can do. 0 disables the check.",
        &MAX_FUTURE_MS,
        0,
        i32::MAX,
        // Shared limits are everyone's: only a superuser may widen how far ahead one
        // caller may push them.
        GucContext::Suset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_bool_guc(
        c"throttle.drop_with_messages",
        c"Let DROP EXTENSION pg_throttle delete messages still queued in throttle.pending or throttle.ready.",
        c"Off (the default): DROP EXTENSION refuses with SQLSTATE 55006 while messages are queued. Set it in the dropping session to discard them.",
        &DROP_WITH_MESSAGES,
        GucContext::Userset,
        GucFlags::default(),
    );
}

/// Capacity of the shared bucket table (read once, at postmaster start).
pub fn max_buckets() -> usize {
    MAX_BUCKETS.get().max(1) as usize
}

/// Capacity of the queue-cap counts (read once, at postmaster start).
pub fn max_queue_caps() -> usize {
    MAX_QUEUE_CAPS.get().max(1) as usize
}

/// Capacity of the calendar-cap leases (read once, at postmaster start).
pub fn max_cap_leases() -> usize {
    MAX_CAP_LEASES.get().max(1) as usize
}

/// Bytes of the contact presence filter (read once, at postmaster start).
pub fn contact_filter_bytes() -> usize {
    CONTACT_FILTER_MB.get().max(0) as usize * 1024 * 1024
}

/// Capacity of the enqueue ring (read once, at postmaster start).
pub fn enqueue_ring() -> usize {
    ENQUEUE_RING.get().max(1) as usize
}

/// Largest allowed distance into the future of an admission timestamp, in µs (0: unbounded).
/// Read on every admission: the raw value, without pgrx's per-read thread check (backends
/// are single-threaded; the check and its thread-local cost more than the admission math).
pub fn max_future_us() -> i64 {
    // SAFETY: `as_ptr` points at the int inside the static, alive for the life of the
    // process; PostgreSQL, to which `init` registered it, writes it (on SET or a reload) only
    // from this backend's one thread, never while this read runs.
    (unsafe { *MAX_FUTURE_MS.as_ptr() }) as i64 * 1_000
}

/// The database the worker serves (read once, at worker start).
pub fn database_name() -> String {
    DATABASE_NAME
        .get()
        .and_then(|c| c.into_string().ok())
        .unwrap_or_else(|| "postgres".into())
}

pub fn worker_enabled() -> bool {
    WORKER_ENABLED.get()
}

pub fn release_batch() -> usize {
    RELEASE_BATCH.get().max(1) as usize
}

/// How long a lease may sit unspent before the worker takes it back, µs.
pub fn lease_idle_us() -> i64 {
    LEASE_IDLE_MS.get().max(10) as i64 * 1_000
}

/// How long contact state is kept, µs.
pub fn contact_retention_us() -> i64 {
    CONTACT_RETENTION_S.get().max(32 * 86_400) as i64 * 1_000_000
}

/// Most reads of a message before it is dead.
pub fn max_attempts() -> i32 {
    MAX_ATTEMPTS.get().max(1)
}

/// How long throttle.sent keeps a row, µs (0: for ever).
pub fn sent_retention_us() -> i64 {
    SENT_RETENTION_S.get().max(0) as i64 * 1_000_000
}

pub fn queue_batch() -> u64 {
    QUEUE_BATCH.get().max(1) as u64
}

/// The error code of expired messages (senders may override it).
pub fn expiry_error_code() -> Option<String> {
    EXPIRY_ERROR_CODE.get().and_then(|c| c.into_string().ok())
}

/// Longest the worker sleeps before looking at throttle.pending again, µs.
/// Most senders whose limits a session reads all at once (see `config::preload`).
pub fn preload_senders() -> i64 {
    PRELOAD_SENDERS.get().max(0) as i64
}

pub fn rescan_interval_us() -> i64 {
    RESCAN_INTERVAL_MS.get().max(1_000) as i64 * 1_000
}

/// Whether DROP EXTENSION may discard queued messages (set in the dropping session).
pub fn drop_with_messages() -> bool {
    DROP_WITH_MESSAGES.get()
}

/// Longest sender, carrier or channel accepted anywhere, in bytes (documented).
pub const fn max_identifier() -> usize {
    MAX_IDENTIFIER
}
