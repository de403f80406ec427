//! The one module that owns shared memory: the bucket table, its partition locks and the
//! configuration generation counter.
//!
//! Layout: a `Header`, then `PARTITIONS × slots_per_part` index entries (8 bytes each), then as
//! many slots (192 bytes each: a partition's live buckets fill the first of its slots, see
//! `limiter::table`), then the other tables. Each partition has its own
//! lock; an admission locks the partitions of every bucket it touches, in ascending order, so
//! concurrent admissions never deadlock and never over-admit. The size comes from
//! `throttle.max_buckets`, read once at postmaster start.
//!
//! The partition locks are spinlocks, not LWLocks: a critical section is a few hash probes
//! and integer operations (well under a microsecond), makes no call into PostgreSQL and
//! cannot raise an error, which is what PostgreSQL's own spinlocks are for. Every pgrx call
//! into PostgreSQL costs a `sigsetjmp`; two LWLock calls per partition were a third of an
//! admission's time. A backend that dies holding one cannot leave it held: PostgreSQL
//! reinitialises shared memory after any backend crash. A live one cannot either: every lock
//! is held by a guard (`Locked`, `SpinGuard`, `LwLockGuard`) that releases it on drop, so a
//! panic unwinding through a critical section releases it too.

use crate::gucs;
use crate::limiter::table::{Full, IndexEntry, Key, Slot, Table};
use crate::limiter::{self, Bucket, Micros, Outcome, Rate};
use pgrx::pg_sys;
use std::ffi::CStr;
use std::ptr::null_mut;
use std::sync::atomic::{
    AtomicBool, AtomicI32, AtomicI64, AtomicPtr, AtomicU32, AtomicU64, Ordering,
};

pub const PARTITIONS: usize = 32;
const SEGMENT: &CStr = c"pg_throttle buckets";
const MAGIC: u64 = 0x7067_7468_726f_7402;

#[repr(C)]
struct Header {
    magic: u64,
    slots_per_part: u64,
    max_buckets: u64,
    /// When this shared memory was made (server start or crash restart), PostgreSQL µs.
    started_at: i64,
    /// Bumped at the end of every transaction that changed limits or senders.
    config_gen: AtomicU64,
    /// Live buckets across all partitions.
    live: AtomicI64,
    /// Each partition's lock and live count.
    parts: [PartLock; PARTITIONS],
    /// The release worker's latch (null while no worker runs) and its figures.
    worker: WorkerShared,
    /// The ring of enqueued ids: a spinlock, then head and tail counters under it.
    ring: RingHead,
}

#[repr(C, align(64))]
struct WorkerShared {
    latch: AtomicPtr<pg_sys::Latch>,
    pid: AtomicI32,
    last_tick_at: AtomicI64,
    ticks: AtomicU64,
    released: AtomicU64,
    dead: AtomicU64,
    queues: AtomicU64,
    /// Queues parked because their sender is not registered.
    parked: AtomicU64,
    /// Ticks that failed (reported in the log, tried again).
    failed: AtomicU64,
    /// Lateness of the last tick that released: how long after its queues became due (by
    /// time, or by room on the limit they waited on) the worker ran them, µs.
    late_us: AtomicI64,
    /// The database the worker serves (0: not known yet).
    database: AtomicU32,
    /// That database was dropped: the worker waits, unconnected, for it to be created again.
    db_gone: AtomicBool,
    /// Released per second over the last second or more (× 1000), and where that measure
    /// started (time, released count).
    per_s_milli: AtomicU64,
    rate_t0: AtomicI64,
    rate_n0: AtomicU64,
    /// The earliest `visible_at` a consumer noted since the worker last looked
    /// (`i64::MAX`: none), so that a sleeping worker wakes for it.
    inflight_due: AtomicI64,
}

#[repr(C, align(64))]
struct RingHead {
    locked: AtomicU32,
    overflowed: bool,
    head: u64,
    tail: u64,
}

/// A partition's spinlock and its live count (guarded by the lock), on its own cache line.
#[repr(C, align(64))]
struct PartLock {
    locked: AtomicU32,
    len: u32,
}

/// Where the segment's parts are. Once [`shared`] returns it, every pointer is into our
/// segment, which stays mapped at the same address for the life of the process.
struct Shared {
    header: *mut Header,
    index: *mut IndexEntry,
    slots: *mut Slot,
    ring: *mut i64,
    /// Entries of the ring.
    ring_cap: usize,
    caps: *mut CapsHeader,
    leases: *mut Lease,
    max_leases: usize,
    queue: *mut QueueCount,
    max_queue_caps: usize,
}

// Postmaster-set pointers, inherited by every backend through fork; only touched from the
// backend's single thread.
static mut SHARED: Shared = Shared {
    header: null_mut(),
    index: null_mut(),
    slots: null_mut(),
    ring: null_mut(),
    ring_cap: 0,
    caps: null_mut(),
    leases: null_mut(),
    max_leases: 0,
    queue: null_mut(),
    max_queue_caps: 0,
};
static mut PREV_REQUEST_HOOK: pg_sys::shmem_request_hook_type = None;
static mut PREV_STARTUP_HOOK: pg_sys::shmem_startup_hook_type = None;

fn slots_per_part(max_buckets: usize) -> usize {
    // Room for 1.25 times the average share, rounded up to a power of two: at max_buckets a
    // partition holds about 3,125 of its 4,096 slots by default, many standard deviations below
    // the 7/8 at which it counts as full. The live buckets are dense at the start of each
    // partition's slots whatever their number; the index has an entry for each slot.
    (max_buckets * 5 / 4)
        .div_ceil(PARTITIONS)
        .max(64)
        .next_power_of_two()
}

/// Where each table lies in the segment, sized by the postmaster settings
/// (`throttle.max_buckets`, `throttle.enqueue_ring`, `throttle.max_cap_leases`,
/// `throttle.max_queue_caps`): byte offsets from the segment's 64-byte aligned start.
struct Layout {
    max_buckets: usize,
    ring_cap: usize,
    max_leases: usize,
    max_queue_caps: usize,
    index: usize,
    slots: usize,
    ring: usize,
    caps: usize,
    leases: usize,
    queue: usize,
    /// Bytes to ask for: 64 of slack to align the start to a cache line ourselves.
    size: usize,
}

impl Layout {
    fn of_settings() -> Layout {
        let max_buckets = gucs::max_buckets();
        let (ring_cap, max_leases, max_queue_caps) = (
            gucs::enqueue_ring(),
            gucs::max_cap_leases(),
            gucs::max_queue_caps(),
        );
        let n = PARTITIONS * slots_per_part(max_buckets);
        let index = size_of::<Header>().next_multiple_of(64);
        let slots = (index + n * size_of::<IndexEntry>()).next_multiple_of(64);
        let ring = slots + n * size_of::<Slot>();
        let caps = (ring + ring_cap * size_of::<i64>()).next_multiple_of(64);
        let leases = (caps + size_of::<CapsHeader>()).next_multiple_of(64);
        let queue = (leases + max_leases * size_of::<Lease>()).next_multiple_of(64);
        let end = queue + max_queue_caps * size_of::<QueueCount>();
        Layout {
            max_buckets,
            ring_cap,
            max_leases,
            max_queue_caps,
            index,
            slots,
            ring,
            caps,
            leases,
            queue,
            size: 64 + end,
        }
    }
}

/// Install the hooks that reserve and set up shared memory. Called from `_PG_init` while
/// the postmaster loads `shared_preload_libraries`.
pub fn init() {
    // SAFETY: `_PG_init` runs in the postmaster while it loads shared_preload_libraries: one
    // thread, before any backend exists and before either hook can run, so nothing else reads
    // or writes these hook variables meanwhile.
    unsafe {
        PREV_REQUEST_HOOK = pg_sys::shmem_request_hook;
        pg_sys::shmem_request_hook = Some(request_hook);
        PREV_STARTUP_HOOK = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(startup_hook);
    }
}

/// Holds an LWLock; releases it on drop, so an error raised while it is held (which pgrx
/// turns into a panic that unwinds through the holder) never leaves it held.
struct LwLockGuard(*mut pg_sys::LWLock);

impl LwLockGuard {
    /// Acquire `lock` in `mode`.
    ///
    /// # Safety
    /// `lock` points at an initialised LWLock in shared memory that this process does not
    /// hold yet.
    unsafe fn acquire(lock: *mut pg_sys::LWLock, mode: pg_sys::LWLockMode::Type) -> LwLockGuard {
        // SAFETY: the caller gives an initialised LWLock this process does not hold.
        unsafe { pg_sys::LWLockAcquire(lock, mode) };
        LwLockGuard(lock)
    }
}

impl Drop for LwLockGuard {
    fn drop(&mut self) {
        // SAFETY: `acquire` took this lock and only this drop releases it, so it is still held
        // here (PostgreSQL releases every LWLock only later, when it aborts after an error);
        // LWLockRelease raises no error for a lock that is held.
        unsafe { pg_sys::LWLockRelease(self.0) };
    }
}

/// PostgreSQL's `shmem_request_hook`: reserve room for the segment.
///
/// # Safety
/// Called only by PostgreSQL, in the postmaster (or a single-user backend) while it sizes
/// shared memory, after [`init`] installed it.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn request_hook() {
    // SAFETY: PREV_REQUEST_HOOK was written in `init`, before this hook could run, and is
    // only read afterwards, by this one-threaded process.
    if let Some(prev) = unsafe { PREV_REQUEST_HOOK } {
        // SAFETY: the hook that was installed before ours, called as PostgreSQL would call
        // it, at the same point; an error it raises crosses only this frame, which holds
        // nothing to drop.
        unsafe { prev() };
    }
    // SAFETY: PostgreSQL runs shmem_request_hook exactly where RequestAddinShmemSpace is
    // allowed (it raises an error anywhere else).
    unsafe {
        pg_sys::RequestAddinShmemSpace(Layout::of_settings().size);
        pg_sys::RequestAddinShmemSpace(crate::contact_filter::request_size());
    }
}

/// PostgreSQL's `shmem_startup_hook`: find the segment, or create and initialise it.
///
/// # Safety
/// Called only by PostgreSQL, once shared memory exists and the room [`request_hook`] asked
/// for was reserved: in the postmaster at start and after every crash restart (and in each
/// backend of an EXEC_BACKEND build).
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn startup_hook() {
    // SAFETY: PREV_STARTUP_HOOK was written in `init`, before this hook could run, and is
    // only read afterwards, by this one-threaded process.
    if let Some(prev) = unsafe { PREV_STARTUP_HOOK } {
        // SAFETY: the hook that was installed before ours, called as PostgreSQL would call
        // it, at the same point; an error it raises crosses only this frame, which holds
        // nothing to drop.
        unsafe { prev() };
    }
    let layout = Layout::of_settings();
    let (max, size) = (layout.max_buckets, layout.size);
    // SAFETY: MainLWLockArray is initialised before shmem_startup_hook runs, and its entry
    // 21 is AddinShmemInitLock (PostgreSQL 15's lwlocknames.txt), which this process does not
    // hold: PostgreSQL expects it held around ShmemInitStruct in this hook.
    let init_lock = unsafe {
        LwLockGuard::acquire(
            &raw mut (*pg_sys::MainLWLockArray.add(21)).lock,
            pg_sys::LWLockMode::LW_EXCLUSIVE,
        )
    };
    let mut found = false;
    // SAFETY: called with AddinShmemInitLock held, for the size `request_hook` reserved: it
    // returns that many bytes of shared memory (or raises an error), and says in `found`
    // whether another process made them already.
    let raw = unsafe { pg_sys::ShmemInitStruct(SEGMENT.as_ptr(), size, &mut found) }.cast::<u8>();
    // SAFETY: the layout's size counts 64 bytes of slack for this alignment, and the
    // header, index, slots, ring, caps header, leases and queue counts lie within the rest
    // at its offsets (each a multiple of 64 or of its entry's alignment).
    let (header, index, slots, ring, caps, leases, queue) = unsafe {
        let base = raw.add(raw.align_offset(64));
        (
            base.cast::<Header>(),
            base.add(layout.index).cast::<IndexEntry>(),
            base.add(layout.slots).cast::<Slot>(),
            base.add(layout.ring).cast::<i64>(),
            base.add(layout.caps).cast::<CapsHeader>(),
            base.add(layout.leases).cast::<Lease>(),
            base.add(layout.queue).cast::<QueueCount>(),
        )
    };
    if !found {
        let spp = slots_per_part(max);
        // SAFETY: GetCurrentTimestamp only reads the system clock.
        let started_at = unsafe { pg_sys::GetCurrentTimestamp() };
        let empty = Slot {
            key: Key::EMPTY,
            bucket: Bucket::full_at(
                Rate {
                    count: 1,
                    period_us: 1_000_000,
                    burst: 1,
                },
                0,
            ),
        };
        // SAFETY: the segment was just made (`found` is false) and no other process uses it
        // before AddinShmemInitLock is released; the pointers are aligned (the header to 64
        // bytes, the others by their offsets) and within the segment, which holds the header,
        // PARTITIONS * spp index entries and slots, and the caps area.
        unsafe {
            header.write(new_header(spp, max, started_at));
            // All zeroes is an empty index entry.
            std::ptr::write_bytes(index, 0, PARTITIONS * spp);
            for i in 0..PARTITIONS * spp {
                slots.add(i).write(empty);
            }
            // All zeroes is the empty state: no leases, no queue counts.
            std::ptr::write_bytes(caps, 0, 1);
            std::ptr::write_bytes(leases, 0, layout.max_leases);
            std::ptr::write_bytes(queue, 0, layout.max_queue_caps);
        }
    }
    // SAFETY: only this hook writes SHARED, in the postmaster (one thread) before it forks
    // any backend, or in a backend of an EXEC_BACKEND build before it reads SHARED.
    unsafe {
        SHARED = Shared {
            header,
            index,
            slots,
            ring,
            ring_cap: layout.ring_cap,
            caps,
            leases,
            max_leases: layout.max_leases,
            queue,
            max_queue_caps: layout.max_queue_caps,
        };
    }
    // SAFETY: in this startup hook, with AddinShmemInitLock held, after the request hook
    // reserved the filter's size.
    unsafe { crate::contact_filter::attach() };
    drop(init_lock);
}

/// The header of a segment just made: no bucket live, no worker yet, the ring empty.
fn new_header(spp: usize, max: usize, started_at: Micros) -> Header {
    Header {
        magic: MAGIC,
        slots_per_part: spp as u64,
        max_buckets: max as u64,
        started_at,
        config_gen: AtomicU64::new(1),
        live: AtomicI64::new(0),
        parts: std::array::from_fn(|_| PartLock {
            locked: AtomicU32::new(0),
            len: 0,
        }),
        worker: WorkerShared {
            latch: AtomicPtr::new(null_mut()),
            pid: AtomicI32::new(0),
            last_tick_at: AtomicI64::new(0),
            ticks: AtomicU64::new(0),
            released: AtomicU64::new(0),
            dead: AtomicU64::new(0),
            queues: AtomicU64::new(0),
            parked: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            late_us: AtomicI64::new(0),
            database: AtomicU32::new(0),
            db_gone: AtomicBool::new(false),
            per_s_milli: AtomicU64::new(0),
            rate_t0: AtomicI64::new(0),
            rate_n0: AtomicU64::new(0),
            inflight_due: AtomicI64::new(i64::MAX),
        },
        ring: RingHead {
            locked: AtomicU32::new(0),
            overflowed: false,
            head: 0,
            tail: 0,
        },
    }
}

/// Shared memory is not there: the library was not in `shared_preload_libraries`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShmemError {
    NotLoaded,
    Full,
}

fn shared() -> Result<&'static Shared, ShmemError> {
    // SAFETY: SHARED is written only by `startup_hook`, in the postmaster before it forks any
    // backend (which inherits it), and only read afterwards, from the process's one thread.
    let s = unsafe { &*(&raw const SHARED) };
    if s.header.is_null() {
        return Err(ShmemError::NotLoaded);
    }
    Ok(s)
}

pub fn is_loaded() -> bool {
    shared().is_ok()
}

/// The current configuration generation (0 if shared memory is missing).
#[inline]
pub fn config_generation() -> u64 {
    match shared() {
        // SAFETY: `s.header` points at the header in our segment, mapped for the life of the
        // process; the counter is atomic.
        Ok(s) => unsafe { (*s.header).config_gen.load(Ordering::Acquire) },
        Err(_) => 0,
    }
}

pub fn bump_config_generation() {
    if let Ok(s) = shared() {
        // SAFETY: `s.header` points at the header in our segment, mapped for the life of the
        // process; the counter is atomic.
        unsafe { (*s.header).config_gen.fetch_add(1, Ordering::AcqRel) };
    }
}

/// When shared memory was made: a bucket first seen afterwards starts empty at this time, so
/// a restart never grants a burst on top of what was admitted just before it.
pub fn started_at() -> Result<Micros, ShmemError> {
    // SAFETY: `s.header` points at the header in our segment, mapped for the life of the
    // process; `started_at` is written when the segment is made and never again.
    shared().map(|s| unsafe { (*s.header).started_at })
}

/// Holds a set of partition locks; releases them in reverse order on drop (also when a
/// panic unwinds, so a lock is never left held by a live backend).
struct Locked {
    header: *mut Header,
    parts: [u8; PARTITIONS],
    n: usize,
}

impl Locked {
    /// Lock every partition whose bit is set in `wanted`, lowest first.
    fn acquire(s: &Shared, mut wanted: u32) -> Locked {
        let mut l = Locked {
            header: s.header,
            parts: [0; PARTITIONS],
            n: 0,
        };
        while wanted != 0 {
            let p = wanted.trailing_zeros() as usize;
            wanted &= wanted - 1;
            // SAFETY: `s.header` points at the header in our segment, mapped for the life of
            // the process, and `p` < PARTITIONS; the lock word is atomic.
            spin_lock(unsafe { &(*s.header).parts[p].locked });
            l.parts[l.n] = p as u8;
            l.n += 1;
        }
        l
    }
}

fn spin_lock(flag: &AtomicU32) {
    let mut spins = 0u32;
    loop {
        if flag
            .compare_exchange_weak(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            return;
        }
        while flag.load(Ordering::Relaxed) != 0 {
            spins += 1;
            if spins < 200 {
                std::hint::spin_loop();
            } else {
                // The holder may have been descheduled: give it the core.
                std::thread::yield_now();
            }
        }
    }
}

/// Holds one spinlock of the segment other than a partition's (the ring's or the caps
/// area's); releases it on drop, so every path out of the critical section releases it, a
/// panic unwinding through it included.
///
/// It keeps a raw pointer, not a reference: the critical section may borrow the structure
/// that holds the lock word mutably, and the release must not depend on a reference that
/// borrow has invalidated.
struct SpinGuard(*const AtomicU32);

impl SpinGuard {
    /// Take the spinlock at `flag`.
    ///
    /// # Safety
    /// `flag` points at a lock word in our segment (mapped for the life of the process) that
    /// this backend does not hold.
    unsafe fn lock(flag: *const AtomicU32) -> SpinGuard {
        // SAFETY: the caller gives a lock word of our segment, which stays mapped; it is
        // atomic, so a shared reference is sound while other backends use it.
        spin_lock(unsafe { &*flag });
        SpinGuard(flag)
    }
}

impl Drop for SpinGuard {
    fn drop(&mut self) {
        // SAFETY: `lock` was given a lock word of our segment, which stays mapped, and took
        // it: this store releases our own lock.
        unsafe { (*self.0).store(0, Ordering::Release) };
    }
}

impl Drop for Locked {
    fn drop(&mut self) {
        for i in (0..self.n).rev() {
            // SAFETY: `header` points at the header in our segment, mapped for the life of the
            // process; `acquire` locked partition `parts[i]`, so this store releases our own
            // lock, and nothing of the partition is reached after it.
            unsafe {
                (*self.header).parts[self.parts[i] as usize]
                    .locked
                    .store(0, Ordering::Release)
            };
        }
    }
}

fn partition_of(hash: u64) -> usize {
    (hash >> 59) as usize % PARTITIONS
}

/// Start loading the cache lines an admission will touch first: each partition lock and each
/// bucket's home entry in its partition's index (the slot it names comes after).
#[inline]
fn prefetch(s: &Shared, wants: &[Want]) {
    // SAFETY: `s` points into our segment, mapped for the life of the process. Each address is
    // a partition's lock (`parts[p]` is bounds-checked) or an index entry of that partition
    // (its home position is below spp), so every offset stays within the segment; a prefetch
    // only hints the cache and reads or writes nothing, so no lock is needed.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let spp = (*s.header).slots_per_part as usize;
        for w in wants {
            let p = w.partition as usize;
            _mm_prefetch::<_MM_HINT_T0>((&raw const (*s.header).parts[p]).cast());
            let home = p * spp + (w.hash as usize & (spp - 1));
            _mm_prefetch::<_MM_HINT_T0>(s.index.add(home).cast::<i8>());
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (s, wants);
}

/// A partition's table view.
///
/// # Safety
/// The caller holds partition `p`'s lock for as long as it uses the view, and uses no other
/// view or pointer into the partition meanwhile (the view borrows its slots and count
/// mutably).
unsafe fn table(s: &Shared, p: usize) -> Table<'static> {
    // SAFETY: `s` points into our segment, mapped for the life of the process. `parts[p]` is
    // bounds-checked first, so `p` < PARTITIONS and the partition's `spp` index entries and
    // slots lie within the segment; the caller holds its lock, so no other backend reads or
    // writes them or its count while the view is in use.
    unsafe {
        let len = &mut (*s.header).parts[p].len;
        let spp = (*s.header).slots_per_part as usize;
        Table {
            index: std::slice::from_raw_parts_mut(s.index.add(p * spp), spp),
            slots: std::slice::from_raw_parts_mut(s.slots.add(p * spp), spp),
            len,
        }
    }
}

/// One bucket an admission needs: its key (with its hash and partition), the rate it must
/// have now, and when its limit was created.
#[derive(Clone, Copy, Debug)]
pub struct Want {
    pub key: Key,
    pub hash: u64,
    pub partition: u32,
    pub rate: Rate,
    pub created_at: Micros,
}

impl Want {
    pub fn new(key: Key, rate: Rate, created_at: Micros) -> Want {
        let hash = key.hash();
        Want {
            key,
            hash,
            partition: partition_of(hash) as u32,
            rate,
            created_at,
        }
    }
}

/// The state of a bucket seen for the first time. Shared memory is lost on restart, so a
/// limit that existed before this shared memory was made starts empty at that moment: a
/// restart never grants a burst on top of what was admitted just before it. A limit created
/// since then has had no traffic yet and starts full at its creation.
fn first_state(w: &Want, started_at: Micros) -> Bucket {
    if w.created_at > started_at {
        Bucket::full_at(w.rate, w.created_at)
    } else {
        Bucket::empty_at(w.rate, started_at)
    }
}

/// Most limits one admission may touch.
pub const MAX_WANTS: usize = 32;

/// Admit `cost` at `now` across every wanted bucket, atomically. A bucket seen for the
/// first time starts as [`first_state`] says; a bucket whose rate changed is rebased at
/// `now` without minting tokens.
/// `partitions` has a bit set for each want's partition.
pub fn admit(
    wants: &[Want],
    partitions: u32,
    cost: u64,
    now: Micros,
    headroom: bool,
) -> Result<Outcome, ShmemError> {
    admit_hinted(wants, partitions, cost, now, headroom, &mut 0)
}

/// The position within partition `p` that `hint` names, if it names one there (whether it
/// still holds the bucket is for [`Table::holds`] to say, under the partition's lock): the
/// reading of what [`slot_hint`] writes.
fn hinted_in(s: &Shared, p: usize, hint: u32) -> Option<usize> {
    // SAFETY: `s.header` points at the header in our segment, mapped for the life of the
    // process; `slots_per_part` is written when the segment is made and never again.
    let spp = unsafe { (*s.header).slots_per_part } as usize;
    let slot = (hint as usize).checked_sub(1)?;
    (slot / spp == p).then_some(slot % spp)
}

/// The hint for slot `idx` of partition `p`: its position in the whole table, plus one.
fn slot_hint(s: &Shared, p: usize, idx: usize) -> u32 {
    // SAFETY: `s.header` points at the header in our segment, mapped for the life of the
    // process; `slots_per_part` is written when the segment is made and never again.
    let spp = unsafe { (*s.header).slots_per_part } as usize;
    (p * spp + idx + 1).try_into().unwrap_or(0)
}

/// Start loading the slot a hint names (and its partition's lock), before the plan that
/// says which bucket to admit against has even arrived: a hint is only ever a prefetch, so
/// a stale one costs nothing but the wasted load.
#[inline]
pub fn prefetch_hint(hint: u32) {
    #[cfg(target_arch = "x86_64")]
    if hint != 0 {
        let Ok(s) = shared() else { return };
        // SAFETY: `s` points into our segment, mapped for the life of the process, and a
        // stale or wrong hint is checked against the table's size before any address is
        // computed from it, so every address is a slot or a partition lock in the segment; a
        // prefetch only hints the cache and reads or writes nothing, so no lock is needed.
        unsafe {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let spp = (*s.header).slots_per_part as usize;
            let slot = hint as usize - 1;
            if slot < PARTITIONS * spp {
                // All of the slot: a window's batches are in its other two cache lines.
                let line = s.slots.add(slot).cast::<i8>();
                _mm_prefetch::<_MM_HINT_T0>(line);
                _mm_prefetch::<_MM_HINT_T0>(line.add(64));
                _mm_prefetch::<_MM_HINT_T0>(line.add(128));
                _mm_prefetch::<_MM_HINT_T0>((&raw const (*s.header).parts[slot / spp]).cast());
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = hint;
}

/// [`admit`], also writing to `hint` where the first bucket lives now (for [`prefetch_hint`]).
pub fn admit_hinted(
    wants: &[Want],
    partitions: u32,
    cost: u64,
    now: Micros,
    headroom: bool,
    hint: &mut u32,
) -> Result<Outcome, ShmemError> {
    let s = shared()?;
    debug_assert!(wants.len() <= MAX_WANTS);
    debug_assert!(wants.iter().all(|w| partitions & (1 << w.partition) != 0));
    if let [w] = wants {
        return Ok(admit_one(s, w, cost, now, headroom, hint)?);
    }
    // The lock words and the buckets' home slots are independent cache lines: ask for all of
    // them at once instead of missing on each in turn.
    prefetch(s, wants);
    let mask = partitions;
    let keys = &wants[..];
    let keep = |k: &Key| keys.iter().any(|w| w.key == *k);
    let _locks = Locked::acquire(s, mask);
    // Pass 1: make sure every bucket exists (inserting may move others in its partition).
    // The hint names the first want's slot as it was last time: checked, it saves a probe.
    let hinted = wants
        .first()
        .and_then(|w| hinted_in(s, w.partition as usize, *hint));
    for (i, w) in wants.iter().enumerate() {
        // SAFETY: `_locks` holds the lock of every want's partition (`partitions` has a bit set
        // for each, as `admit` requires and the assertion above checks), and the previous view
        // is gone.
        let mut t = unsafe { table(s, w.partition as usize) };
        ensure(s, &mut t, w, hinted.filter(|_| i == 0), now, keep)?;
    }
    // Pass 2: nothing moves any more. Find every slot first (each look-up borrows its
    // partition briefly), then reach the buckets only through raw pointers from the base of
    // shared memory, so no later borrow invalidates an earlier pointer.
    // SAFETY: `s.header` points at the header in our segment, mapped for the life of the
    // process; `slots_per_part` is written when the segment is made and never again.
    let spp = unsafe { (*s.header).slots_per_part } as usize;
    let mut at = [0usize; MAX_WANTS];
    for (i, w) in wants.iter().enumerate() {
        // SAFETY: `_locks` holds the lock of every want's partition, and the previous view is
        // gone.
        let t = unsafe { table(s, w.partition as usize) };
        let found = hinted
            .filter(|_| i == 0)
            .and_then(|h| t.holds(w.key, h))
            .or_else(|| t.find(w.key, w.hash))
            .ok_or(ShmemError::Full)?;
        if i == 0 {
            *hint = slot_hint(s, w.partition as usize, found);
        }
        at[i] = w.partition as usize * spp + found;
    }
    let mut refs = [BucketPtr(null_mut()); MAX_WANTS];
    for (i, w) in wants.iter().enumerate() {
        // SAFETY: `at[i]` is the index of a live slot, found above, of a partition whose lock
        // `_locks` holds; the pointer is taken without making a reference.
        let b = unsafe { &raw mut (*s.slots.add(at[i])).bucket };
        // SAFETY: `b` points at that slot's bucket, which no other backend touches while
        // `_locks` is held, and no other reference to it is live here.
        unsafe { (*b).rebase(w.rate, now) };
        refs[i] = BucketPtr(b);
    }
    Ok(limiter::admit_opt(
        &mut refs[..wants.len()],
        cost,
        now,
        headroom,
    ))
}

/// The global cap on live buckets, as [`Table::find_or_insert`] asks it: +n to add (false
/// when that would pass `throttle.max_buckets`), -n after dropping.
fn budget(s: &Shared) -> impl FnMut(i64) -> bool + '_ {
    // SAFETY: `s.header` points at the header in our segment, mapped for the life of the
    // process; `max_buckets` is written when the segment is made and never again.
    let max = unsafe { (*s.header).max_buckets } as i64;
    // SAFETY: as above; the count is atomic, so a shared reference to it is sound while other
    // backends update it.
    let live = unsafe { &(*s.header).live };
    move |d: i64| {
        if d > 0 && live.fetch_add(d, Ordering::AcqRel) + d > max {
            live.fetch_sub(d, Ordering::AcqRel);
            return false;
        }
        if d < 0 {
            live.fetch_add(d, Ordering::AcqRel);
        }
        true
    }
}

/// The slot of `w`'s bucket in its partition `t` (whose lock the caller holds), made as
/// [`first_state`] says if absent. To make room, buckets full by the clock may be forgotten
/// (full at a timestamp some caller passed from the future is not enough), never those
/// `keep` names.
fn ensure(
    s: &Shared,
    t: &mut Table<'_>,
    w: &Want,
    hinted: Option<usize>,
    now: Micros,
    keep: impl Fn(&Key) -> bool,
) -> Result<usize, ShmemError> {
    if let Some(i) = hinted.and_then(|at| t.holds(w.key, at)) {
        return Ok(i);
    }
    if let Some(i) = t.find(w.key, w.hash) {
        return Ok(i);
    }
    // SAFETY: `s.header` points at the header in our segment, mapped for the life of the
    // process; `started_at` is written when the segment is made and never again.
    let started = unsafe { (*s.header).started_at };
    let evict_at = now.min(crate::backend::transaction_start());
    t.find_or_insert(
        w.key,
        w.hash,
        evict_at,
        || first_state(w, started),
        &mut budget(s),
        keep,
    )
    .map_err(|Full| ShmemError::Full)
}

/// [`admit`] for the common case of a single bucket: one lock, one probe, one borrow.
fn admit_one(
    s: &Shared,
    w: &Want,
    cost: u64,
    now: Micros,
    headroom: bool,
    hint: &mut u32,
) -> Result<Outcome, ShmemError> {
    // Start loading the bucket's home slot before the lock: the lock's atomic operation
    // would otherwise hold the load back until it completes.
    prefetch(s, std::slice::from_ref(w));
    let _lock = Locked::acquire(s, 1 << w.partition);
    // SAFETY: `_lock` holds the want's partition, and this is the only view of it.
    let mut t = unsafe { table(s, w.partition as usize) };
    let hinted = hinted_in(s, w.partition as usize, *hint);
    let idx = ensure(s, &mut t, w, hinted, now, |_| false)?;
    *hint = slot_hint(s, w.partition as usize, idx);
    let b = &mut t.slots[idx].bucket;
    b.rebase(w.rate, now);
    // One check: take it if there is room, else say why not.
    if b.take(cost, now) {
        let headroom = headroom.then(|| b.available(now));
        return Ok(Outcome::Admitted { headroom });
    }
    Ok(limiter::admit_opt(&mut [b], cost, now, headroom))
}

/// A bucket in shared memory, reached while its partition lock is held.
#[derive(Clone, Copy)]
struct BucketPtr(*mut Bucket);

impl AsMut<Bucket> for BucketPtr {
    fn as_mut(&mut self) -> &mut Bucket {
        // SAFETY: only made in `admit_hinted`, from a live slot of a partition whose lock it
        // holds until these pointers are dropped, after `admit_opt` returns; `admit_opt` uses
        // one bucket at a time, so the reference returned is the only one live to its bucket.
        unsafe { &mut *self.0 }
    }
}

/// A copy of every live bucket (partition by partition, each under its shared lock).
pub fn snapshot() -> Result<Vec<(Key, Bucket)>, ShmemError> {
    let s = shared()?;
    let mut out = Vec::new();
    for p in 0..PARTITIONS {
        let _lock = Locked::acquire(s, 1 << p);
        // SAFETY: `_lock` holds partition `p`, and this is the only view of it.
        let t = unsafe { table(s, p) };
        out.extend(t.iter().map(|slot| (slot.key, slot.bucket)));
    }
    Ok(out)
}

/// Forget the buckets of database `db` whose limit `live` no longer names (the limit was
/// deleted), once they are full at `now`: a full bucket is what a new one would be, so even
/// a limit that reappears meanwhile loses nothing. Returns how many were forgotten.
pub fn forget_unused(db: u32, now: Micros, live: impl Fn(i64) -> bool) -> usize {
    let Ok(s) = shared() else { return 0 };
    let mut forgotten = 0;
    for p in 0..PARTITIONS {
        let _lock = Locked::acquire(s, 1 << p);
        // SAFETY: `_lock` holds partition `p`, and this is the only view of it.
        let mut t = unsafe { table(s, p) };
        let n = t.forget_full(now, |k| (k.sub >> 32) as u32 != db || live(k.limit_id));
        budget(s)(-(n as i64));
        forgotten += n;
    }
    forgotten
}

/// (live buckets, capacity).
pub fn usage() -> Result<(i64, i64), ShmemError> {
    let s = shared()?;
    // SAFETY: `s.header` points at the header in our segment, mapped for the life of the
    // process; `live` is atomic and `max_buckets` is written when the segment is made and
    // never again.
    unsafe {
        Ok((
            (*s.header).live.load(Ordering::Acquire),
            (*s.header).max_buckets as i64,
        ))
    }
}

/// Hand ids of newly committed pending rows to the worker and wake it. When the ring is full
/// the worker is told to rediscover every queue from the table instead: nothing is lost.
/// `rescan`: the transaction also deleted rows of queues it had noted, so a noted id may be
/// gone while its queue has others: the worker looks at the whole table then too.
pub fn ring_push(ids: &[i64], rescan: bool) {
    let Ok(s) = shared() else { return };
    // SAFETY: `s.header` and `s.ring` point into our segment, mapped for the life of the
    // process. `_lock` takes the ring's lock (no caller holds it: no function that takes it
    // calls another) and holds it until the block ends, so no other backend reads or writes
    // the head, the tail, the flag or the ring meanwhile; the index taken modulo `s.ring_cap`
    // stays within the ring's `s.ring_cap` entries.
    unsafe {
        let r = &raw mut (*s.header).ring;
        let _lock = SpinGuard::lock(&raw const (*r).locked);
        if rescan {
            (*r).overflowed = true;
        }
        for &id in ids {
            if (*r).tail - (*r).head >= s.ring_cap as u64 {
                (*r).overflowed = true;
                break;
            }
            *s.ring.add(((*r).tail % s.ring_cap as u64) as usize) = id;
            (*r).tail += 1;
        }
    }
    wake_worker();
}

/// Take every id in the ring; returns true if ids were lost to a full ring since the last
/// drain (the caller must rediscover queues from the table).
pub fn ring_drain(out: &mut Vec<i64>) -> bool {
    let Ok(s) = shared() else { return false };
    // SAFETY: `s.header` and `s.ring` point into our segment, mapped for the life of the
    // process. `_lock` takes the ring's lock (no caller holds it: no function that takes it
    // calls another) and holds it until the block ends, so no other backend reads or writes
    // the head, the tail, the flag or the ring meanwhile; the index taken modulo `s.ring_cap`
    // stays within the ring's `s.ring_cap` entries.
    unsafe {
        let r = &raw mut (*s.header).ring;
        let _lock = SpinGuard::lock(&raw const (*r).locked);
        while (*r).head < (*r).tail {
            out.push(*s.ring.add(((*r).head % s.ring_cap as u64) as usize));
            (*r).head += 1;
        }
        std::mem::replace(&mut (*r).overflowed, false)
    }
}

/// The worker's database is being dropped (true), or exists again (false).
pub fn set_worker_db_gone(gone: bool) {
    if let Ok(s) = shared() {
        // SAFETY: `s.header` points at the header in our segment, mapped for the life of the
        // process; the worker's fields are all atomic, so a shared reference to them is sound
        // while other backends update them.
        unsafe { &(*s.header).worker }
            .db_gone
            .store(gone, Ordering::Release);
    }
}

pub fn worker_db_gone() -> bool {
    shared().is_ok_and(|s| {
        // SAFETY: `s.header` points at the header in our segment, mapped for the life of the
        // process; the worker's fields are all atomic, so a shared reference to them is sound
        // while other backends update them.
        unsafe { &(*s.header).worker }
            .db_gone
            .load(Ordering::Acquire)
    })
}

/// Set the worker's latch, if a worker runs.
pub fn wake_worker() {
    let Ok(s) = shared() else { return };
    // SAFETY: `s.header` points at the header in our segment, mapped for the life of the
    // process; the latch pointer is atomic.
    let latch = unsafe { (*s.header).worker.latch.load(Ordering::Acquire) };
    if !latch.is_null() {
        // SAFETY: a non-null latch is the one the worker published, its process latch in its
        // PGPROC, which is in shared memory for the life of the server: even when the worker
        // has just exited, setting it only wakes whatever process owns it now, if any.
        unsafe { pg_sys::SetLatch(latch) };
    }
}

/// A message in flight falls due at `at` (PostgreSQL µs): wake the worker if that is sooner
/// than anything noted before.
pub fn note_inflight_due(at: i64) {
    let Ok(s) = shared() else { return };
    // SAFETY: `s.header` points at the header in our segment, mapped for the life of the
    // process; the time is atomic.
    let before = unsafe {
        (*s.header)
            .worker
            .inflight_due
            .fetch_min(at, Ordering::AcqRel)
    };
    if at < before {
        wake_worker();
    }
}

/// For the worker: the earliest time noted by [`note_inflight_due`] (`i64::MAX`: none). Once
/// it has passed (`<= now`) it is forgotten, so that later notes wake the worker again; one
/// still ahead stays, and notes of later times wake nobody.
pub fn inflight_due(now: i64) -> i64 {
    let Ok(s) = shared() else { return i64::MAX };
    // SAFETY: as in `note_inflight_due`.
    let due = unsafe { &(*s.header).worker.inflight_due };
    let at = due.load(Ordering::Acquire);
    if at <= now {
        // A note of a sooner time in between keeps its value (and set the latch).
        let _ = due.compare_exchange(at, i64::MAX, Ordering::AcqRel, Ordering::Acquire);
    }
    at
}

/// Called by the worker: publish (or, with null, withdraw) its latch and pid.
pub fn register_worker(latch: *mut pg_sys::Latch, pid: i32) {
    if let Ok(s) = shared() {
        // SAFETY: `s.header` points at the header in our segment, mapped for the life of the
        // process; the pid and the latch pointer are atomic.
        unsafe {
            (*s.header).worker.pid.store(pid, Ordering::Release);
            (*s.header).worker.latch.store(latch, Ordering::Release);
        }
    }
}

/// A tick failed (and was reported): counted, and the worker's liveness stays fresh.
pub fn note_failed_tick() {
    if let Ok(s) = shared() {
        // SAFETY: `s.header` points at the header in our segment, mapped for the life of the
        // process; the worker's fields are all atomic, so a shared reference to them is sound
        // while other backends update them.
        let w = unsafe { &(*s.header).worker };
        w.failed.fetch_add(1, Ordering::AcqRel);
    }
}

/// What one tick of the worker did.
pub struct Tick {
    pub at: Micros,
    pub released: u64,
    pub dead: u64,
    /// Queues known and not parked.
    pub queues: u64,
    pub parked: u64,
    /// How late the tick ran its due queues (0: it released nothing).
    pub late_us: i64,
}

/// The worker's figures after a tick (idle ticks too: the worker ticks at least every
/// `throttle.rescan_interval`, so `last_tick_at` is its liveness).
pub fn note_tick(t: Tick) {
    if let Ok(s) = shared() {
        // SAFETY: `s.header` points at the header in our segment, mapped for the life of the
        // process; the worker's fields are all atomic, so a shared reference to them is sound
        // while other backends update them.
        let w = unsafe { &(*s.header).worker };
        w.last_tick_at.store(t.at, Ordering::Release);
        w.ticks.fetch_add(1, Ordering::AcqRel);
        let total = w.released.fetch_add(t.released, Ordering::AcqRel) + t.released;
        w.dead.fetch_add(t.dead, Ordering::AcqRel);
        w.queues.store(t.queues, Ordering::Release);
        w.parked.store(t.parked, Ordering::Release);
        if t.released > 0 {
            w.late_us.store(t.late_us, Ordering::Release);
        }
        // Only the worker writes these.
        let t0 = w.rate_t0.load(Ordering::Acquire);
        if t.at - t0 >= 1_000_000 {
            let n0 = w.rate_n0.load(Ordering::Acquire);
            if t0 != 0 {
                let per_s = (total - n0) as u128 * 1_000_000_000 / (t.at - t0) as u128;
                w.per_s_milli.store(per_s as u64, Ordering::Release);
            }
            w.rate_t0.store(t.at, Ordering::Release);
            w.rate_n0.store(total, Ordering::Release);
        }
    }
}

/// The worker's figures: pid (0: none), last tick, ticks, released, dead-lettered, queues
/// known, queues parked, lateness of the last release, new ids not yet seen, release rate.
pub struct WorkerFigures {
    pub pid: i32,
    pub last_tick_at: Micros,
    pub ticks: u64,
    pub released: u64,
    pub dead: u64,
    pub queues: u64,
    pub parked: u64,
    pub failed: u64,
    pub late_us: i64,
    pub ring_len: u64,
    pub per_s: f64,
}

/// The worker's figures as of `now`: the release rate is over the last second or more, and
/// falls to 0 while nothing is released (it is measured to `now`, not to the last tick).
pub fn worker_figures(now: Micros) -> Result<WorkerFigures, ShmemError> {
    let s = shared()?;
    // SAFETY: `s.header` points at the header in our segment, mapped for the life of the
    // process; the worker's fields are all atomic, so a shared reference to them is sound
    // while other backends update them.
    let w = unsafe { &(*s.header).worker };
    // SAFETY: `s.header` points at the header in our segment, mapped for the life of the
    // process; `_lock` takes the ring's lock (no caller holds it: no function that takes it
    // calls another) and holds it while the counters are read, so no other backend writes
    // them meanwhile.
    let ring_len = unsafe {
        let r = &raw const (*s.header).ring;
        let _lock = SpinGuard::lock(&raw const (*r).locked);
        (*r).tail - (*r).head
    };
    let released = w.released.load(Ordering::Acquire);
    let (t0, n0) = (
        w.rate_t0.load(Ordering::Acquire),
        w.rate_n0.load(Ordering::Acquire),
    );
    let mut per_s = w.per_s_milli.load(Ordering::Acquire) as f64 / 1000.0;
    if t0 != 0 && now - t0 >= 2_000_000 {
        per_s = released.saturating_sub(n0) as f64 * 1e6 / (now - t0) as f64;
    }
    Ok(WorkerFigures {
        pid: w.pid.load(Ordering::Acquire),
        last_tick_at: w.last_tick_at.load(Ordering::Acquire),
        ticks: w.ticks.load(Ordering::Acquire),
        released,
        dead: w.dead.load(Ordering::Acquire),
        queues: w.queues.load(Ordering::Acquire),
        parked: w.parked.load(Ordering::Acquire),
        failed: w.failed.load(Ordering::Acquire),
        late_us: w.late_us.load(Ordering::Acquire),
        ring_len,
        per_s,
    })
}

/// Whole tokens each wanted bucket has at `now` (as `admit` would see them, creating none),
/// and for the tightest one its limit id and when it will have one more token. Used by
/// the worker to fetch no more rows than it can release.
pub fn room(wants: &[Want], now: Micros) -> Result<(u64, i64, Micros), ShmemError> {
    let s = shared()?;
    // SAFETY: `s.header` points at the header in our segment, mapped for the life of the
    // process; `started_at` is written when the segment is made and never again.
    let started = unsafe { (*s.header).started_at };
    let mut best: (u64, i64, Micros) = (u64::MAX, 0, now);
    for w in wants {
        let _lock = Locked::acquire(s, 1 << w.partition);
        // SAFETY: `_lock` holds the want's partition, and this is the only view of it.
        let t = unsafe { table(s, w.partition as usize) };
        let mut b = match t.find(w.key, w.hash) {
            Some(i) => t.slots[i].bucket,
            None => first_state(w, started),
        };
        b.rebase(w.rate, now);
        let k = b.available(now);
        if k < best.0 {
            let next = match b.check(k + 1, now) {
                crate::limiter::Check::Wait { at } => at,
                _ => now + (w.rate.period_us / w.rate.count).max(1) as Micros,
            };
            best = (k, w.key.limit_id, next);
        }
    }
    Ok(best)
}

/// The worker's pid (0: none runs).
pub fn worker_pid() -> i32 {
    match shared() {
        // SAFETY: `s.header` points at the header in our segment, mapped for the life of the
        // process; the pid is atomic.
        Ok(s) => unsafe { (*s.header).worker.pid.load(Ordering::Acquire) },
        Err(_) => 0,
    }
}

/// When the `n`-th of `n` more tokens of `w`'s bucket could be taken, one at a time as soon
/// as each is there (see [`Bucket::eta`]), as the bucket stands now.
pub fn eta(w: &Want, n: u64, now: Micros) -> Result<Micros, ShmemError> {
    let s = shared()?;
    // SAFETY: `s.header` points at the header in our segment, mapped for the life of the
    // process; `started_at` is written when the segment is made and never again.
    let started = unsafe { (*s.header).started_at };
    let mut b = {
        let _lock = Locked::acquire(s, 1 << w.partition);
        // SAFETY: `_lock` holds the want's partition, and this is the only view of it.
        let t = unsafe { table(s, w.partition as usize) };
        match t.find(w.key, w.hash) {
            Some(i) => t.slots[i].bucket,
            None => first_state(w, started),
        }
    };
    b.rebase(w.rate, now);
    Ok(b.eta(n, now))
}

/// Called by the worker once connected: the database whose enqueues it wants to hear of.
pub fn set_worker_database(oid: u32) {
    if let Ok(s) = shared() {
        // SAFETY: `s.header` points at the header in our segment, mapped for the life of the
        // process; the database oid is atomic.
        unsafe { (*s.header).worker.database.store(oid, Ordering::Release) };
    }
}

/// Whether enqueues in database `oid` concern the worker (true while it is not known yet).
pub fn worker_serves(oid: u32) -> bool {
    match shared() {
        Ok(s) => {
            // SAFETY: `s.header` points at the header in our segment, mapped for the life of
            // the process; the database oid is atomic.
            let db = unsafe { (*s.header).worker.database.load(Ordering::Acquire) };
            db == 0 || db == oid
        }
        Err(_) => false,
    }
}

// ---- Calendar-cap leases and queue-cap counts --------------------------------------------

// Leases and queue counts, under one spinlock, sized by `throttle.max_cap_leases` and
// `throttle.max_queue_caps`. Queue counts are kept sorted by cap id (an enqueue finds its
// caps by binary search); a lease is found where it was last (its hint), else by a pass.

/// Capacity of one calendar cap's window, leased from `throttle.cap_usage` by the worker for
/// `throttle_admit`. `cap_id` 0 is a free entry.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Lease {
    pub db: u32,
    /// The table had nothing more to lease in this window.
    pub full: bool,
    pub cap_id: i64,
    /// The cap's created_at: a cap made again after DROP/CREATE EXTENSION with the same id
    /// is another cap.
    pub born: Micros,
    pub window_start: Micros,
    pub window_end: Micros,
    /// Leased and not yet spent.
    pub left: i64,
    /// > 0: a backend asks the worker for this much more, for the window of `want_at`.
    pub want: i64,
    pub want_at: Micros,
    /// When it was last granted or spent from (the spender's transaction start): an idle
    /// lease's unspent part goes back to the table (see [`lease_reclaim`]).
    pub touched: Micros,
    /// The process latch of the last backend that asked for more (0: none), set when the
    /// worker grants it: the backend wakes then, not at its next poll.
    pub waiter: usize,
}

/// Messages waiting under one queue cap (counted at enqueue, uncounted when they leave).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueCount {
    pub id: i64,
    pub limit: i64,
    pub waiting: i64,
}

#[repr(C)]
struct CapsHeader {
    lock: AtomicU32,
    /// The database whose queue caps are counted (0: not counted yet).
    queue_db: u32,
    /// Queue counts in use (the first `queue_len`, sorted by id).
    queue_len: u32,
    /// Lease entries from this index on have never been used.
    lease_hwm: u32,
    /// A backend asked for more of a lease since the worker last looked (so the worker reads
    /// the lease entries only then, not on every tick).
    lease_asked: u32,
}

/// The caps area, locked: its header's fields, the lease entries and the queue counts.
struct CapsShared<'a> {
    queue_db: &'a mut u32,
    queue_len: &'a mut u32,
    lease_hwm: &'a mut u32,
    lease_asked: &'a mut u32,
    leases: &'a mut [Lease],
    queue: &'a mut [QueueCount],
}

impl CapsShared<'_> {
    /// The queue counts in use.
    fn counted(&mut self) -> &mut [QueueCount] {
        let n = (*self.queue_len as usize).min(self.queue.len());
        &mut self.queue[..n]
    }

    /// The count of queue cap `id`, if counted.
    fn count_of(&mut self, id: i64) -> Option<&mut QueueCount> {
        let q = self.counted();
        let i = q.binary_search_by_key(&id, |c| c.id).ok()?;
        Some(&mut q[i])
    }
}

/// Runs `f` with the caps area locked.
fn with_caps<R>(f: impl FnOnce(&mut CapsShared<'_>) -> R) -> Result<R, ShmemError> {
    let s = shared()?;
    // SAFETY: `s.caps` points at the caps header in our segment, mapped for the life of the
    // process, and this backend does not hold its lock yet (no `f` calls `with_caps`).
    let _lock = unsafe { SpinGuard::lock(&raw const (*s.caps).lock) };
    // SAFETY: as above; `_lock` holds the caps area's lock until `f` has returned and `c` is
    // gone, so no other backend reads or writes the header's other fields, the leases or the
    // queue counts meanwhile (others only spin on the lock word, which is atomic and which
    // `f` leaves alone). `s.leases` and `s.queue` point at `s.max_leases` and
    // `s.max_queue_caps` initialised entries of the segment, apart from the header and from
    // each other; these are the only references to them in this backend.
    let mut c = unsafe {
        CapsShared {
            queue_db: &mut (*s.caps).queue_db,
            queue_len: &mut (*s.caps).queue_len,
            lease_hwm: &mut (*s.caps).lease_hwm,
            lease_asked: &mut (*s.caps).lease_asked,
            leases: std::slice::from_raw_parts_mut(s.leases, s.max_leases),
            queue: std::slice::from_raw_parts_mut(s.queue, s.max_queue_caps),
        }
    };
    Ok(f(&mut c))
}

/// How full each fixed-size table in shared memory is: (table, setting that sizes it, in use,
/// size, bytes per entry). For `throttle.shmem_tables()`. (Buckets count per slot; the table
/// has a quarter more slots than `throttle.max_buckets` allows in use.)
pub fn tables() -> Result<Vec<(&'static str, &'static str, i64, i64, i64)>, ShmemError> {
    let (live, max) = usage()?;
    let s = shared()?;
    let mut out = vec![(
        "buckets",
        "throttle.max_buckets",
        live,
        max,
        (size_of::<Slot>() + size_of::<IndexEntry>()) as i64,
    )];
    // SAFETY: `s.header` points at the header in our segment, mapped for the life of the
    // process; the ring's fields are read under its lock, which no caller holds.
    let ring_used = unsafe {
        let r = &raw mut (*s.header).ring;
        let _lock = SpinGuard::lock(&raw const (*r).locked);
        ((*r).tail - (*r).head) as i64
    };
    out.push((
        "enqueue ring",
        "throttle.enqueue_ring",
        ring_used,
        s.ring_cap as i64,
        size_of::<i64>() as i64,
    ));
    let (leases, queue) = with_caps(|c| {
        let leases = c.leases.iter().filter(|l| l.cap_id != 0).count();
        (leases as i64, c.counted().len() as i64)
    })
    .unwrap_or((0, 0));
    out.push((
        "calendar-cap leases",
        "throttle.max_cap_leases",
        leases,
        s.max_leases as i64,
        size_of::<Lease>() as i64,
    ));
    out.push((
        "queue-cap counts",
        "throttle.max_queue_caps",
        queue,
        s.max_queue_caps as i64,
        size_of::<QueueCount>() as i64,
    ));
    Ok(out)
}

/// One cap an admission needs: its id, the window of the admission's time, and the cost.
#[derive(Clone, Copy, Debug)]
pub struct CapWant {
    pub cap_id: i64,
    pub born: Micros,
    /// Where the lease was last found (index + 1; 0: not known): checked first.
    pub hint: u32,
    pub window_start: Micros,
    pub window_end: Micros,
    pub at: Micros,
    pub chunk: i64,
}

/// What the leases say about an admission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseAnswer {
    /// Every cap had leased room; all were debited.
    Taken,
    /// Cap `i` has nothing left in its window until `until`.
    Full { i: usize, until: Micros },
    /// Some cap needs more leased: the worker was asked.
    Asked,
}

/// The lease entry of (`db`, cap, window), made if missing in a free entry or one holding
/// nothing (a window that is over, or spent); None when every entry holds a live lease.
fn lease_slot(c: &mut CapsShared<'_>, db: u32, w: &CapWant) -> Option<usize> {
    let same = |l: &Lease| {
        l.db == db && l.cap_id == w.cap_id && l.born == w.born && l.window_start == w.window_start
    };
    if let Some(l) = (w.hint as usize)
        .checked_sub(1)
        .and_then(|k| c.leases.get(k))
    {
        if same(l) {
            return Some(w.hint as usize - 1);
        }
    }
    let used = (*c.lease_hwm as usize).min(c.leases.len());
    if let Some(k) = c.leases[..used].iter().position(same) {
        return Some(k);
    }
    // A never used entry, else one holding nothing (emptied, or of a window that is over).
    let k = if used < c.leases.len() {
        *c.lease_hwm = used as u32 + 1;
        used
    } else {
        c.leases
            .iter()
            .position(|l| l.cap_id == 0 || (l.want == 0 && (l.window_end <= w.at || l.left == 0)))?
    };
    c.leases[k] = Lease {
        db,
        cap_id: w.cap_id,
        born: w.born,
        window_start: w.window_start,
        window_end: w.window_end,
        left: 0,
        want: 0,
        want_at: w.at,
        full: false,
        touched: 0,
        waiter: 0,
    };
    Some(k)
}

/// Most calendar caps one admission may need.
pub const MAX_CAP_WANTS: usize = 16;

/// Debit `cost` from the lease of every cap in `wants` (each in the window of the admission's
/// time, and only that window), all or none.
pub fn lease_take(db: u32, wants: &mut [CapWant], cost: i64) -> Result<LeaseAnswer, ShmemError> {
    if wants.len() > MAX_CAP_WANTS {
        return Err(ShmemError::Full);
    }
    let r = with_caps(|c| {
        let mut found = [usize::MAX; MAX_CAP_WANTS];
        let mut asked = false;
        for (i, w) in wants.iter_mut().enumerate() {
            let Some(k) = lease_slot(c, db, w) else {
                return Err(ShmemError::Full);
            };
            found[i] = k;
            w.hint = k as u32 + 1;
            let l = &mut c.leases[k];
            if l.left >= cost {
                continue;
            }
            if l.full {
                return Ok(LeaseAnswer::Full {
                    i,
                    until: l.window_end,
                });
            }
            l.want = l.want.max(w.chunk);
            l.want_at = w.at;
            // SAFETY: MyLatch is this backend's own process latch (in its PGPROC, in shared
            // memory for the life of the server), set up before any SQL runs; only its
            // address is kept.
            l.waiter = unsafe { pg_sys::MyLatch } as usize;
            asked = true;
        }
        if asked {
            *c.lease_asked = 1;
            return Ok(LeaseAnswer::Asked);
        }
        let at = crate::backend::transaction_start();
        for &k in &found[..wants.len()] {
            c.leases[k].left -= cost;
            c.leases[k].touched = at;
        }
        Ok(LeaseAnswer::Taken)
    })??;
    if r == LeaseAnswer::Asked {
        wake_worker();
    }
    Ok(r)
}

/// Give back `cost` taken by [`lease_take`] (the rate limits then refused the admission).
pub fn lease_refund(db: u32, wants: &[CapWant], cost: i64) {
    let _ = with_caps(|c| {
        for w in wants {
            if let Some(k) = find_lease(c, db, w.hint, |l| {
                l.cap_id == w.cap_id && l.window_start == w.window_start
            }) {
                c.leases[k].left += cost;
            }
        }
    });
}

/// The window of a cap that a lease is for: the cap (its id, and its row's created_at, which
/// together name it across DROP/CREATE EXTENSION) and the window's start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseKey {
    pub cap_id: i64,
    pub born: Micros,
    pub window_start: Micros,
}

/// A backend asks the worker for `want` more of a lease, for an admission at `at`.
#[derive(Clone, Copy, Debug)]
pub struct LeaseRequest {
    pub key: LeaseKey,
    pub want: i64,
    pub at: Micros,
    /// Where the lease's entry is (index + 1), checked first when it is granted.
    pub slot: u32,
}

/// What the worker granted a lease (counted in `throttle.cap_usage`): `n` more, and whether
/// the window has no more.
#[derive(Clone, Copy, Debug)]
pub struct LeaseGrant {
    pub key: LeaseKey,
    pub n: i64,
    pub full: bool,
    /// Where the lease's entry was (index + 1), checked first.
    pub slot: u32,
}

/// The unspent part (`n`) of an idle lease, taken back.
#[derive(Clone, Copy, Debug)]
pub struct LeaseBack {
    pub key: LeaseKey,
    pub n: i64,
}

fn lease_key(l: &Lease) -> LeaseKey {
    LeaseKey {
        cap_id: l.cap_id,
        born: l.born,
        window_start: l.window_start,
    }
}

/// The entry of a lease of database `db` that `is` names: at `hint` (index + 1, 0: not
/// known) if it is there, else found among the entries ever used.
fn find_lease(
    c: &CapsShared<'_>,
    db: u32,
    hint: u32,
    is: impl Fn(&Lease) -> bool,
) -> Option<usize> {
    let live = |l: &Lease| l.db == db && l.cap_id != 0 && is(l);
    if let Some(k) = (hint as usize).checked_sub(1) {
        if c.leases.get(k).is_some_and(live) {
            return Some(k);
        }
    }
    let used = (*c.lease_hwm as usize).min(c.leases.len());
    c.leases[..used].iter().position(live)
}

/// For the worker: the leases of database `db` that backends asked more of, if any backend
/// asked since the last call (the entries are read only then).
pub fn lease_requests(db: u32) -> Vec<LeaseRequest> {
    with_caps(|c| {
        if std::mem::take(c.lease_asked) == 0 {
            return Vec::new();
        }
        let used = (*c.lease_hwm as usize).min(c.leases.len());
        c.leases[..used]
            .iter()
            .enumerate()
            .filter(|(_, l)| l.db == db && l.cap_id != 0 && l.want > 0)
            .map(|(k, l)| LeaseRequest {
                key: lease_key(l),
                want: l.want,
                at: l.want_at,
                slot: k as u32 + 1,
            })
            .collect()
    })
    .unwrap_or_default()
}

/// For the worker, after the transaction that counted it in `throttle.cap_usage` committed:
/// hand out what it granted.
pub fn lease_grant(db: u32, g: &LeaseGrant, now: Micros) {
    let waiter = with_caps(|c| {
        let k = find_lease(c, db, g.slot, |l| lease_key(l) == g.key)?;
        let l = &mut c.leases[k];
        l.left += g.n;
        l.full = g.full;
        l.want = 0;
        l.touched = now;
        Some(std::mem::take(&mut l.waiter))
    });
    if let Ok(Some(latch)) = waiter {
        if latch != 0 {
            // SAFETY: a waiter is the process latch an asking backend recorded, in its PGPROC,
            // which is in shared memory for the life of the server: if that backend has gone,
            // setting it only wakes whatever process owns it now. Set after the caps lock is
            // released (SetLatch may make a system call).
            unsafe { pg_sys::SetLatch(latch as *mut pg_sys::Latch) };
        }
    }
}

/// For the worker: take back the unspent part of some leases of database `db`:
/// - every lease of a cap in `changed` (it may now allow less than was leased);
/// - a lease nobody has spent from or asked more of since `idle_since`, if its room is wanted:
///   `waited` says so of a cap (queued messages wait on it), and every cap's is while more
///   than three quarters of the entries hold a lease (a new cap must find an entry).
///
/// A lease nobody wants stays where the admissions that spend it find it, until its window
/// is over; then it is left alone (a window that is over keeps its count) and does not count
/// as holding room, so the worker stops looking once every window with a lease has ended.
/// The caller uncounts what comes back from `throttle.cap_usage.leased`; if its
/// transaction fails, that room is lost for the window, never spent twice. `waited` runs
/// under the caps lock, only for idle leases.
pub fn lease_reclaim(
    db: u32,
    idle_since: Micros,
    now: Micros,
    changed: &rustc_hash::FxHashSet<i64>,
    waited: impl Fn(i64) -> bool,
) -> LeaseSweep {
    with_caps(|c| {
        let used = (*c.lease_hwm as usize).min(c.leases.len());
        let holding = |l: &Lease| l.cap_id != 0 && l.left > 0 && l.want == 0 && l.window_end > now;
        let live = c.leases[..used].iter().filter(|l| holding(l)).count();
        let crowded = live * 4 > c.leases.len() * 3;
        let mut sweep = LeaseSweep::default();
        for l in c.leases[..used].iter_mut() {
            if l.db != db || !holding(l) {
                continue;
            }
            let back = changed.contains(&l.cap_id)
                || (l.touched <= idle_since && (crowded || waited(l.cap_id)));
            if !back {
                sweep.holding = true;
                continue;
            }
            sweep.back.push(LeaseBack {
                key: lease_key(l),
                n: l.left,
            });
            l.left = 0;
            l.full = false;
        }
        sweep
    })
    .unwrap_or_default()
}

/// What [`lease_reclaim`] took back and found.
#[derive(Debug, Default)]
pub struct LeaseSweep {
    pub back: Vec<LeaseBack>,
    /// Some lease of a window not over yet still holds unspent room.
    pub holding: bool,
}

/// Every live lease (for monitoring).
pub fn leases() -> Vec<Lease> {
    with_caps(|c| c.leases.iter().filter(|l| l.cap_id != 0).copied().collect()).unwrap_or_default()
}

/// Why an enqueue cannot be counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueRefusal {
    /// The queue cap is full.
    Full(QueueCount),
    /// The worker has not counted this queue cap yet.
    NotCounted(i64),
}

/// For the worker, holding a lock that no enqueue runs under: the counts of every queue cap.
pub fn queue_counts_set(db: u32, counts: &[QueueCount]) {
    let _ = with_caps(|c| {
        let n = counts.len().min(c.queue.len());
        c.queue[..n].copy_from_slice(&counts[..n]);
        c.queue[..n].sort_unstable_by_key(|q| q.id);
        *c.queue_len = n as u32;
        *c.queue_db = db;
    });
}

/// For the worker on a configuration change, before it can count again: the new size of
/// every queue cap already counted (a cap no longer configured is dropped). Needs no lock:
/// what waits is unchanged.
pub fn queue_limits_update(db: u32, limits: &[(i64, i64)]) {
    let limits: rustc_hash::FxHashMap<i64, i64> = limits.iter().copied().collect();
    let _ = with_caps(|c| {
        if *c.queue_db != db {
            return;
        }
        // Kept in order: the counts stay sorted by id.
        let q = c.counted();
        let mut kept = 0;
        for i in 0..q.len() {
            let e = q[i];
            if let Some(&limit) = limits.get(&e.id) {
                q[kept] = QueueCount { limit, ..e };
                kept += 1;
            }
        }
        *c.queue_len = kept as u32;
    });
}

/// Count `n` more waiting under every cap in `ids`, all or none.
/// With `force`, a full cap counts them all the same (messages coming back to their queue
/// after a failed delivery: they were counted once already and are never refused).
pub fn queue_reserve(
    db: u32,
    ids: &[i64],
    n: i64,
    force: bool,
) -> Result<Result<(), QueueRefusal>, ShmemError> {
    with_caps(|c| {
        if *c.queue_db != db {
            return Err(QueueRefusal::NotCounted(ids.first().copied().unwrap_or(0)));
        }
        for &id in ids {
            match c.count_of(id) {
                None => return Err(QueueRefusal::NotCounted(id)),
                Some(q) if q.waiting + n > q.limit && !force => return Err(QueueRefusal::Full(*q)),
                Some(_) => {}
            }
        }
        for &id in ids {
            if let Some(q) = c.count_of(id) {
                q.waiting += n;
            }
        }
        Ok(())
    })
}

/// Count `n` fewer waiting under the cap `id` (messages left, or their enqueue rolled back).
pub fn queue_unreserve(db: u32, id: i64, n: i64) {
    let _ = with_caps(|c| {
        if *c.queue_db == db {
            if let Some(q) = c.count_of(id) {
                q.waiting = (q.waiting - n).max(0);
            }
        }
    });
}

/// The queue counts (for monitoring): (database, counts).
pub fn queue_counts() -> (u32, Vec<QueueCount>) {
    with_caps(|c| (*c.queue_db, c.counted().to_vec())).unwrap_or((0, Vec::new()))
}
