//! The one module that owns shared memory: the bucket table, its partition locks and the
//! configuration generation counter.
//!
//! Layout: a `Header`, then `PARTITIONS × slots_per_part` slots. Each partition has its own
//! LWLock from the `pg_throttle` tranche; an admission locks the partitions of every bucket
//! it touches, in ascending order, so concurrent admissions never deadlock and never
//! over-admit. The size comes from `throttle.max_buckets`, read once at postmaster start.

use crate::gucs;
use crate::limiter::table::{Full, Key, Slot, Table};
use crate::limiter::{self, Bucket, Micros, Outcome, Rate};
use pgrx::pg_sys;
use std::ffi::CStr;
use std::ptr::null_mut;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

pub const PARTITIONS: usize = 32;
const TRANCHE: &CStr = c"pg_throttle";
const SEGMENT: &CStr = c"pg_throttle buckets";
const MAGIC: u64 = 0x7067_7468_726f_7401;

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
    /// Live buckets per partition, each guarded by its partition's lock.
    part_len: [u32; PARTITIONS],
}

struct Shared {
    header: *mut Header,
    slots: *mut Slot,
    locks: *mut pg_sys::LWLockPadded,
}

// Postmaster-set pointers, inherited by every backend through fork; only touched from the
// backend's single thread.
static mut SHARED: Shared = Shared {
    header: null_mut(),
    slots: null_mut(),
    locks: null_mut(),
};
static mut PREV_REQUEST_HOOK: pg_sys::shmem_request_hook_type = None;
static mut PREV_STARTUP_HOOK: pg_sys::shmem_startup_hook_type = None;

fn slots_per_part(max_buckets: usize) -> usize {
    // Room for twice the average share, so a partition fills only far past max_buckets.
    (max_buckets * 2)
        .div_ceil(PARTITIONS)
        .max(64)
        .next_power_of_two()
}

fn segment_size(max_buckets: usize) -> usize {
    size_of::<Header>().next_multiple_of(64)
        + PARTITIONS * slots_per_part(max_buckets) * size_of::<Slot>()
}

/// Install the hooks that reserve and set up shared memory. Called from `_PG_init` while
/// the postmaster loads `shared_preload_libraries`.
pub fn init() {
    unsafe {
        PREV_REQUEST_HOOK = pg_sys::shmem_request_hook;
        pg_sys::shmem_request_hook = Some(request_hook);
        PREV_STARTUP_HOOK = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(startup_hook);
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn request_hook() {
    unsafe {
        if let Some(prev) = PREV_REQUEST_HOOK {
            prev();
        }
        pg_sys::RequestAddinShmemSpace(segment_size(gucs::max_buckets()));
        pg_sys::RequestNamedLWLockTranche(TRANCHE.as_ptr(), PARTITIONS as i32);
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn startup_hook() {
    unsafe {
        if let Some(prev) = PREV_STARTUP_HOOK {
            prev();
        }
        let max = gucs::max_buckets();
        let size = segment_size(max);
        // AddinShmemInitLock
        let init_lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock;
        pg_sys::LWLockAcquire(init_lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let mut found = false;
        let base = pg_sys::ShmemInitStruct(SEGMENT.as_ptr(), size, &mut found).cast::<u8>();
        let header = base.cast::<Header>();
        let slots = base
            .add(size_of::<Header>().next_multiple_of(64))
            .cast::<Slot>();
        if !found {
            let spp = slots_per_part(max);
            header.write(Header {
                magic: MAGIC,
                slots_per_part: spp as u64,
                max_buckets: max as u64,
                started_at: pg_sys::GetCurrentTimestamp(),
                config_gen: AtomicU64::new(1),
                live: AtomicI64::new(0),
                part_len: [0; PARTITIONS],
            });
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
            for i in 0..PARTITIONS * spp {
                slots.add(i).write(empty);
            }
        }
        SHARED = Shared {
            header,
            slots,
            locks: pg_sys::GetNamedLWLockTranche(TRANCHE.as_ptr()),
        };
        pg_sys::LWLockRelease(init_lock);
    }
}

/// Shared memory is not there: the library was not in `shared_preload_libraries`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShmemError {
    NotLoaded,
    Full,
}

fn shared() -> Result<&'static Shared, ShmemError> {
    // SAFETY: written once by the postmaster before any backend exists.
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
        Ok(s) => unsafe { (*s.header).config_gen.load(Ordering::Acquire) },
        Err(_) => 0,
    }
}

pub fn bump_config_generation() {
    if let Ok(s) = shared() {
        unsafe { (*s.header).config_gen.fetch_add(1, Ordering::AcqRel) };
    }
}

/// When shared memory was made: a bucket first seen afterwards starts empty at this time, so
/// a restart never grants a burst on top of what was admitted just before it.
pub fn started_at() -> Result<Micros, ShmemError> {
    shared().map(|s| unsafe { (*s.header).started_at })
}

/// Holds a set of partition locks; releases them in reverse order on drop.
struct Locked {
    parts: [u8; PARTITIONS],
    n: usize,
}

impl Locked {
    fn acquire(s: &Shared, mut wanted: u32, mode: pg_sys::LWLockMode::Type) -> Locked {
        let mut l = Locked {
            parts: [0; PARTITIONS],
            n: 0,
        };
        while wanted != 0 {
            let p = wanted.trailing_zeros() as usize;
            wanted &= wanted - 1;
            unsafe { pg_sys::LWLockAcquire(&raw mut (*s.locks.add(p)).lock, mode) };
            l.parts[l.n] = p as u8;
            l.n += 1;
        }
        l
    }
}

impl Drop for Locked {
    fn drop(&mut self) {
        // SAFETY: the pointers were set at startup. During an elog unwind PostgreSQL releases
        // every LWLock itself (and InterruptHoldoffCount is 0 by then): do not release twice.
        unsafe {
            if pg_sys::InterruptHoldoffCount == 0 {
                return;
            }
            let s = &*(&raw const SHARED);
            for i in (0..self.n).rev() {
                pg_sys::LWLockRelease(&raw mut (*s.locks.add(self.parts[i] as usize)).lock);
            }
        }
    }
}

fn partition_of(hash: u64) -> usize {
    (hash >> 59) as usize % PARTITIONS
}

/// A partition's table view. Caller holds the partition's lock.
unsafe fn table(s: &Shared, p: usize) -> Table<'static> {
    unsafe {
        let spp = (*s.header).slots_per_part as usize;
        Table {
            slots: std::slice::from_raw_parts_mut(s.slots.add(p * spp), spp),
            len: &mut (*s.header).part_len[p],
        }
    }
}

/// One bucket an admission needs: its key and the rate it must have now.
#[derive(Clone, Copy, Debug)]
pub struct Want {
    pub key: Key,
    pub rate: Rate,
}

/// Most limits one admission may touch.
pub const MAX_WANTS: usize = 32;

/// Admit `cost` at `now` across every wanted bucket, atomically. A bucket seen for the
/// first time starts empty at `started_at`; a bucket whose rate changed is rebased at `now`
/// without minting tokens.
pub fn admit(wants: &[Want], cost: u64, now: Micros) -> Result<Outcome, ShmemError> {
    let s = shared()?;
    debug_assert!(wants.len() <= MAX_WANTS);
    let mut hashes = [0u64; MAX_WANTS];
    let mut mask = 0u32;
    for (i, w) in wants.iter().enumerate() {
        hashes[i] = w.key.hash();
        mask |= 1 << partition_of(hashes[i]);
    }
    let started = unsafe { (*s.header).started_at };
    let max = unsafe { (*s.header).max_buckets } as i64;
    let live = unsafe { &(*s.header).live };
    let mut budget = |d: i64| {
        if d > 0 && live.fetch_add(d, Ordering::AcqRel) + d > max {
            live.fetch_sub(d, Ordering::AcqRel);
            return false;
        }
        if d < 0 {
            live.fetch_add(d, Ordering::AcqRel);
        }
        true
    };
    let keys = &wants[..];
    let keep = |k: &Key| keys.iter().any(|w| w.key == *k);
    let _locks = Locked::acquire(s, mask, pg_sys::LWLockMode::LW_EXCLUSIVE);
    // Pass 1: make sure every bucket exists (inserting may move others in its partition).
    for (i, w) in wants.iter().enumerate() {
        let mut t = unsafe { table(s, partition_of(hashes[i])) };
        let rate = w.rate;
        t.find_or_insert(
            w.key,
            hashes[i],
            now,
            || Bucket::empty_at(rate, started),
            &mut budget,
            keep,
        )
        .map_err(|Full| ShmemError::Full)?;
    }
    // Pass 2: nothing moves any more; take pointers and bring each bucket to its rate.
    let mut refs = [BucketPtr(null_mut()); MAX_WANTS];
    for (i, w) in wants.iter().enumerate() {
        let t = unsafe { table(s, partition_of(hashes[i])) };
        let idx = t.find(w.key, hashes[i]).ok_or(ShmemError::Full)?;
        let b = &mut t.slots[idx].bucket;
        b.rebase(w.rate, now);
        refs[i] = BucketPtr(b);
    }
    Ok(limiter::admit(&mut refs[..wants.len()], cost, now))
}

/// A bucket in shared memory, reached while its partition lock is held.
#[derive(Clone, Copy)]
struct BucketPtr(*mut Bucket);

impl AsMut<Bucket> for BucketPtr {
    fn as_mut(&mut self) -> &mut Bucket {
        // SAFETY: only built in `admit` from a live slot, distinct per key, used under the
        // partition locks that `admit` holds until it returns.
        unsafe { &mut *self.0 }
    }
}

/// A copy of every live bucket (partition by partition, each under its shared lock).
pub fn snapshot() -> Result<Vec<(Key, Bucket)>, ShmemError> {
    let s = shared()?;
    let mut out = Vec::new();
    for p in 0..PARTITIONS {
        let _lock = Locked::acquire(s, 1 << p, pg_sys::LWLockMode::LW_SHARED);
        let t = unsafe { table(s, p) };
        out.extend(t.iter().map(|slot| (slot.key, slot.bucket)));
    }
    Ok(out)
}

/// (live buckets, capacity).
pub fn usage() -> Result<(i64, i64), ShmemError> {
    let s = shared()?;
    unsafe {
        Ok((
            (*s.header).live.load(Ordering::Acquire),
            (*s.header).max_buckets as i64,
        ))
    }
}
