//! Each backend's cache of the limits that apply to a sender, read from the configuration
//! tables on first use and dropped whenever any backend commits a change to them (the
//! shared configuration generation moves).
//!
//! For each (sender, carrier, channel) it keeps a [`PlanEntry`]: the buckets to check (key,
//! hash, partition and rate, ready for shared memory) and the indices of their limits in an
//! arena of [`LimitInfo`]s (read only to name a blocker). The plans live inline in an
//! open-addressing table, so a hit costs one probe into one entry: once a query's scan has
//! flushed the caches, dependent cache misses are what an admission costs, and this keeps
//! them to a minimum.

use crate::backend::BackendLocal;
use crate::error::{self, Fast as Result};
use crate::limiter::table::{self, IndexEntry, Key};
use crate::limiter::Rate;
use crate::shmem::{self, Want, MAX_WANTS};
use pgrx::prelude::*;
use rustc_hash::FxHashMap;
use smallvec::SmallVec;
use std::hash::Hasher;
use std::rc::Rc;

/// One limit row as it applies to a sender.
#[derive(Debug, Clone)]
pub struct Limit {
    pub id: i64,
    pub carrier: Option<Box<str>>,
    pub channel: Option<Box<str>>,
    pub rate: Rate,
    pub label: Box<str>,
    /// When the limit row was created (PostgreSQL µs).
    pub created_at: i64,
    /// A group's limit that each of its senders has on its own (its own bucket).
    pub each_sender: bool,
}

impl Limit {
    #[inline]
    pub fn applies(&self, carrier: &[u8], channel: &[u8]) -> bool {
        self.carrier
            .as_deref()
            .is_none_or(|c| c.as_bytes() == carrier)
            && self
                .channel
                .as_deref()
                .is_none_or(|c| c.as_bytes() == channel)
    }
}

/// Every limit that may apply to one sender (before narrowing by carrier and channel).
#[derive(Debug, Default)]
pub struct SenderLimits {
    pub limits: Vec<Rc<Limit>>,
    /// The sender's share of a limit it shares with others, relative to theirs.
    pub weight: u16,
}

/// A limit in the arena: its bucket as shared memory wants it, and the row (for naming it).
pub struct LimitInfo {
    pub want: Want,
    pub limit: Rc<Limit>,
}

/// What an admission needs from a plan: its buckets, their partitions, and their limits.
pub struct PlanView<'a> {
    pub wants: &'a [Want],
    /// Bit per shared-memory partition the wants live in.
    pub partitions: u32,
    /// Calendar caps may apply to this (sender, carrier, channel): some exist and this plan
    /// has not been found free of them yet (see [`note_plan_caps`]).
    pub caps: bool,
    /// ... and which, once known (no need to look again this generation).
    pub cap_defs: Option<&'a CapDefs>,
    /// The sender's weight (see [`SenderLimits::weight`]).
    pub weight: u16,
    user: u32,
    idx: &'a [u32],
    arena: &'a [LimitInfo],
}

impl PlanView<'_> {
    /// The limit of want `i`.
    pub fn limit(&self, i: usize) -> &Limit {
        &self.arena[self.idx[i] as usize].limit
    }
}

/// `sender \0 carrier \0 channel`: text never holds a NUL byte, so this is unambiguous.
type PlanKey = SmallVec<[u8; 24]>;

/// One cached plan, `hash` and `key` first so a probe's first line decides, then the
/// buckets themselves (one or two inline: no further pointer to chase). Aligned to cache
/// lines: an admission reads the first three whole (232 bytes laid end to end straddled a
/// fourth line for most plans: 9 ns more per `try_admit` over 10,000 senders, measured).
#[repr(C, align(64))]
struct PlanEntry {
    hash: u64,
    key: PlanKey,
    partitions: u32,
    /// Calendar caps: 0 none apply, 1 some apply, 2 some exist and it is not known yet.
    caps: u8,
    /// The sender's weight (see [`SenderLimits::weight`]).
    weight: u16,
    /// The role this plan was authorized for (see [`authorize`]): 0 none yet, [`ANY_USER`]
    /// every role (no tenant model is configured).
    user: u32,
    wants: SmallVec<[Want; 2]>,
    limits: SmallVec<[u32; 2]>,
    /// The calendar caps that apply (set with `caps` 1): the admission needs no second
    /// look-up.
    cap_defs: Option<CapDefs>,
}

const _: () = assert!(std::mem::size_of::<PlanEntry>() == 256);

/// The calendar caps that apply to one queue.
pub type CapDefs = Rc<[Rc<crate::caps::CapDef>]>;

impl PlanView<'_> {
    /// Whether the current role was authorized for this plan (see [`authorize`]).
    #[inline]
    pub fn allowed(&self) -> bool {
        // SAFETY: GetUserId only reads backend-local state (the current user id, always set
        // in a backend that runs SQL).
        self.user == ANY_USER || self.user == unsafe { pg_sys::GetUserId() }.to_u32()
    }
}

/// A plan's `user` when no tenant model is configured: every role may use it.
const ANY_USER: u32 = u32::MAX;

impl PlanEntry {
    #[inline]
    fn is(&self, sender: &[u8], carrier: &[u8], channel: &[u8]) -> bool {
        let k = &self.key[..];
        k.len() == sender.len() + carrier.len() + channel.len() + 2
            && same(&k[..sender.len()], sender)
            && same(
                &k[sender.len() + 1..sender.len() + 1 + carrier.len()],
                carrier,
            )
            && same(&k[sender.len() + 2 + carrier.len()..], channel)
    }
}

/// Equality of two short byte strings of the same length, eight bytes at a time (a call to
/// `memcmp` costs more than the comparison for keys this short).
#[inline(always)]
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        if u64::from_ne_bytes(x.try_into().unwrap_or([0; 8]))
            != u64::from_ne_bytes(y.try_into().unwrap_or([1; 8]))
        {
            return false;
        }
    }
    ca.remainder()
        .iter()
        .zip(cb.remainder())
        .all(|(x, y)| x == y)
}

/// The hash of a plan key, computed from its parts without building it.
#[inline]
fn plan_hash(sender: &[u8], carrier: &[u8], channel: &[u8]) -> u64 {
    let mut h = rustc_hash::FxHasher::default();
    h.write(sender);
    h.write_u8(0);
    h.write(carrier);
    h.write_u8(0);
    h.write(channel);
    // Fx leaves the low bits weak: mix before they pick a slot.
    let z = h.finish();
    let z = (z ^ (z >> 32)).wrapping_mul(0xD6E8_FEB8_6659_FD93);
    // Never 0: a zero hash marks an empty slot.
    (z ^ (z >> 32)) | 1 << 63
}

/// The plans: dense in `entries`, found through `index` (at most half full), the same kind
/// of index as a partition's buckets have in shared memory (`limiter::table`). The index is
/// 8 bytes an entry, so it stays in cache where the plans would not: a hit costs a probe that
/// is nearly always a cache hit, then one plan. Plans are never moved while cached and only
/// forgotten all at once.
struct PlanTable {
    index: Vec<IndexEntry>,
    entries: Vec<PlanEntry>,
}

impl PlanEntry {
    fn view<'a>(&'a self, arena: &'a [LimitInfo]) -> PlanView<'a> {
        PlanView {
            wants: &self.wants,
            partitions: self.partitions,
            caps: self.caps != 0,
            cap_defs: self.cap_defs.as_ref(),
            weight: self.weight,
            user: self.user,
            idx: &self.limits,
            arena,
        }
    }
}

impl PlanTable {
    fn len(&self) -> usize {
        self.entries.len()
    }

    fn clear(&mut self) {
        self.index = Vec::new();
        self.entries = Vec::new();
    }

    /// The entry of the plan for (sender, carrier, channel), if cached.
    #[inline]
    fn position(&self, hash: u64, sender: &[u8], carrier: &[u8], channel: &[u8]) -> Option<usize> {
        let is = |at: usize| {
            let e = &self.entries[at];
            e.hash == hash && e.is(sender, carrier, channel)
        };
        table::probe(&self.index, hash, is).map(|(_, at)| at)
    }

    #[inline]
    fn find(&self, hash: u64, sender: &[u8], carrier: &[u8], channel: &[u8]) -> Option<&PlanEntry> {
        let i = self.position(hash, sender, carrier, channel)?;
        self.entries.get(i)
    }

    fn find_mut(
        &mut self,
        hash: u64,
        sender: &[u8],
        carrier: &[u8],
        channel: &[u8],
    ) -> Option<&mut PlanEntry> {
        let i = self.position(hash, sender, carrier, channel)?;
        self.entries.get_mut(i)
    }

    fn insert(&mut self, e: PlanEntry) {
        if (self.entries.len() + 1) * 2 > self.index.len() {
            let slots = (self.index.len() * 2).max(64);
            self.index = crate::backend::huge_vec(slots, IndexEntry::default);
            for (at, e) in self.entries.iter().enumerate() {
                table::place(&mut self.index, e.hash, at);
            }
        }
        if self.entries.len() == self.entries.capacity() {
            // Grown in huge-page-advised memory, as the index is (the entries are what a
            // look-up reads last).
            let mut grown = crate::backend::huge_capacity(self.entries.capacity().max(32) * 2);
            grown.append(&mut self.entries);
            self.entries = grown;
        }
        table::place(&mut self.index, e.hash, self.entries.len());
        self.entries.push(e);
    }
}

struct Cache {
    generation: u64,
    plans: PlanTable,
    /// Every limit any cached plan uses, once.
    arena: Vec<LimitInfo>,
    arena_pos: FxHashMap<(i64, u64), u32>,
    /// Limits read per sender, to build plans for new (carrier, channel)s without SPI.
    senders: FxHashMap<Box<[u8]>, Rc<SenderLimits>>,
    /// Whether any calendar cap exists in this generation (None: not asked yet).
    any_caps: Option<bool>,
    /// Whether a tenant model is configured (rows in throttle.account_role) in this
    /// generation (None: not asked yet).
    tenancy: Option<bool>,
    /// Per plan hash, where its first bucket was in shared memory (see `with_cached_plan`).
    hints: Box<[u32]>,
    /// Senders read one at a time in this generation, and whether all were then read at
    /// once (or tried to be: there were too many).
    misses: u32,
    preloaded: bool,
}

impl Cache {
    fn clear(&mut self) {
        self.any_caps = None;
        self.tenancy = None;
        self.plans.clear();
        self.arena.clear();
        self.arena_pos.clear();
        self.senders.clear();
        self.misses = 0;
        self.preloaded = false;
    }
}

static CACHE: BackendLocal<Option<Cache>> = BackendLocal::new(None);

/// Run `f` on this backend's cache (made on first use). `f` never runs SPI.
fn with_cache<R>(f: impl FnOnce(&mut Cache) -> R) -> R {
    CACHE.with(|c| {
        f(c.get_or_insert_with(|| Cache {
            generation: 0,
            plans: PlanTable {
                index: Vec::new(),
                entries: Vec::new(),
            },
            arena: Vec::new(),
            arena_pos: FxHashMap::default(),
            senders: FxHashMap::default(),
            any_caps: None,
            tenancy: None,
            hints: Box::new([]),
            misses: 0,
            preloaded: false,
        }))
    })
}

/// Senders a session reads one at a time in a generation before it reads them all at once
/// (see `preload`).
pub const PRELOAD_AFTER_MISSES: u32 = 32;

impl Cache {
    /// Count a sender read alone; true once (per generation) when enough were to read the
    /// rest at once.
    fn preload_due(&mut self) -> bool {
        if self.preloaded {
            return false;
        }
        self.misses += 1;
        self.preloaded = self.misses > PRELOAD_AFTER_MISSES;
        self.preloaded
    }
}

/// Plans cached per backend before they are forgotten and rebuilt on demand, at least
/// (65,536 plans of 256 bytes and an index of 131,072 entries of 8: 17.8 MB). A session that
/// has read more senders' limits (`throttle.preload_senders`) keeps two plans per sender: a
/// platform's lines, each admitted in turn, would otherwise empty the cache every 65,536
/// admissions and rebuild every plan.
const MAX_CACHED_PLANS: usize = 65_536;

impl Cache {
    fn plans_full(&self) -> bool {
        self.plans.len() >= MAX_CACHED_PLANS.max(2 * self.senders.len())
    }
}

/// Run `f` on the plan for admitting `sender` to `carrier` on `channel`, from the cache or
/// the tables. Unknown sender: 42704; more than [`MAX_WANTS`] applicable limits: 54000.
/// `f` must not run SPI.
pub fn with_plan<R>(
    sender: &[u8],
    carrier: &[u8],
    channel: &[u8],
    f: impl FnOnce(&PlanView) -> R,
) -> Result<R> {
    with_known_plan(sender, carrier, channel, f)?.ok_or_else(|| {
        Box::new(error::undefined(
            format!("unknown sender \"{}\"", error::shown(sender)),
            "register it first: INSERT INTO throttle.sender (sender, ...) VALUES (...)",
        ))
    })
}

/// Run `f` on the plan if it is cached for the current generation; `None` otherwise (the
/// caller then takes [`with_plan`]). No SPI, no error: the admission fast path.
#[inline]
pub fn with_cached_plan<R>(
    sender: &[u8],
    carrier: &[u8],
    channel: &[u8],
    f: impl FnOnce(&PlanView, &mut u32) -> R,
) -> Option<R> {
    let hash = plan_hash(sender, carrier, channel);
    let generation = shmem::config_generation();
    with_cache(|c| {
        if c.generation != generation {
            return None;
        }
        // Where this plan's bucket was last time: load it while the plan itself loads (the
        // two would otherwise be two cache misses one after the other).
        if c.hints.is_empty() {
            c.hints = vec![0; HINTS].into_boxed_slice();
        }
        let h = &mut c.hints[(hash >> 32) as usize & (HINTS - 1)];
        shmem::prefetch_hint(*h);
        let e = c.plans.find(hash, sender, carrier, channel)?;
        Some(f(&e.view(&c.arena), h))
    })
}

/// Slot hints kept per backend (4 bytes each: small enough to stay in cache).
const HINTS: usize = 1 << 15;

/// Record which calendar caps apply to the cached plan of (sender, carrier, channel), as
/// `caps::caps_for` found (None: none): a plan that none apply to goes back to the fast
/// path, and one that some apply to keeps them, so the next admission looks them up in the
/// plan alone.
pub fn note_plan_caps(sender: &[u8], carrier: &[u8], channel: &[u8], defs: Option<CapDefs>) {
    let hash = plan_hash(sender, carrier, channel);
    let generation = shmem::config_generation();
    with_cache(|c| {
        if c.generation == generation {
            if let Some(e) = c.plans.find_mut(hash, sender, carrier, channel) {
                e.caps = u8::from(defs.is_some());
                e.cap_defs = defs;
            }
        }
    });
}

/// [`with_plan`], answering `None` for an unknown sender instead of an error.
pub fn with_known_plan<R, F: FnOnce(&PlanView) -> R>(
    sender: &[u8],
    carrier: &[u8],
    channel: &[u8],
    f: F,
) -> Result<Option<R>> {
    let hash = plan_hash(sender, carrier, channel);
    let generation = shmem::config_generation();
    let mut f = Some(f);
    // Fast path: the plan is cached. Else build it from the sender's cached limits (once it
    // is known whether caps exist in this generation).
    let attempt = |f: &mut Option<_>| {
        with_cache(|c| {
            if c.generation != generation {
                c.clear();
                c.generation = generation;
            } else if c.plans_full() {
                // Full: forget the plans only. Each sender's limits stay cached, so a plan is
                // rebuilt without a query (the worker, serving every queue, relies on it).
                c.plans.clear();
            }
            if c.plans.find(hash, sender, carrier, channel).is_none() {
                c.any_caps?;
                let limits = c.senders.get(sender)?.clone();
                if let Err(e) = add_plan(c, hash, &limits, sender, carrier, channel) {
                    return Some(Err(e));
                }
            }
            let e = c.plans.find(hash, sender, carrier, channel)?;
            let f: F = f.take()?;
            Some(Ok(f(&e.view(&c.arena))))
        })
    };
    if let Some(r) = attempt(&mut f) {
        return r.map(Some);
    }
    // Slow path: whether caps exist, and the sender's limits (SPI, outside the cache).
    let any_caps = crate::caps::any_caps().map_err(Box::new)?;
    if with_cache(|c| c.generation == generation && c.any_caps.is_none()) {
        with_cache(|c| c.any_caps = Some(any_caps));
        if let Some(r) = attempt(&mut f) {
            return r.map(Some);
        }
    }
    let cacheable = !uses_transaction_snapshot();
    // A session that keeps meeting senders it has not read reads all the others at once, if
    // they are few; one that admits for a handful of senders never pays for reading them all.
    if cacheable && with_cache(|c| c.generation == generation && c.preload_due()) {
        if let Some(all) = preload()? {
            with_cache(|c| {
                if c.generation == generation {
                    c.any_caps.get_or_insert(any_caps);
                    for (s, l) in all {
                        c.senders.entry(s).or_insert_with(|| Rc::new(l));
                    }
                }
            });
            if let Some(r) = attempt(&mut f) {
                return r.map(Some);
            }
        }
    }
    let Some(loaded) = load(sender)? else {
        return Ok(None);
    };
    let loaded = Rc::new(loaded);
    with_cache(|c| {
        // Cache only what was read under the generation checked above; a reader in a
        // REPEATABLE READ transaction may see an older snapshot, so it does not cache.
        if c.generation == generation && cacheable {
            c.any_caps.get_or_insert(any_caps);
            c.senders.insert(sender.into(), loaded.clone());
            add_plan(c, hash, &loaded, sender, carrier, channel)?;
            let e = c
                .plans
                .find(hash, sender, carrier, channel)
                .ok_or_else(|| error::internal("plan vanished"))?;
            let f = f.take().ok_or_else(|| error::internal("plan used twice"))?;
            return Ok(Some(f(&e.view(&c.arena))));
        }
        // Not cacheable: a private arena for this one call.
        let mut arena = Vec::new();
        let mut pos = FxHashMap::default();
        let (idx, partitions) =
            plan_limits(&mut arena, &mut pos, &loaded, sender, carrier, channel)?;
        let wants: Vec<Want> = idx.iter().map(|&i| arena[i as usize].want).collect();
        let view = PlanView {
            wants: &wants,
            partitions,
            caps: any_caps,
            cap_defs: None,
            weight: loaded.weight,
            user: 0,
            idx: &idx,
            arena: &arena,
        };
        let f = f.take().ok_or_else(|| error::internal("plan used twice"))?;
        Ok(Some(f(&view)))
    })
}

fn add_plan(
    c: &mut Cache,
    hash: u64,
    limits: &SenderLimits,
    sender: &[u8],
    carrier: &[u8],
    channel: &[u8],
) -> Result<()> {
    let (idx, partitions) = plan_limits(
        &mut c.arena,
        &mut c.arena_pos,
        limits,
        sender,
        carrier,
        channel,
    )?;
    let mut key = PlanKey::new();
    key.extend_from_slice(sender);
    key.push(0);
    key.extend_from_slice(carrier);
    key.push(0);
    key.extend_from_slice(channel);
    let wants = idx.iter().map(|&i| c.arena[i as usize].want).collect();
    c.plans.insert(PlanEntry {
        hash,
        key,
        partitions,
        caps: if c.any_caps == Some(false) { 0 } else { 2 },
        weight: limits.weight,
        user: if c.tenancy == Some(false) {
            ANY_USER
        } else {
            0
        },
        wants,
        limits: idx.into_iter().collect(),
        cap_defs: None,
    });
    Ok(())
}

/// The arena indices of the limits that apply to (carrier, channel), adding them to the
/// arena as needed, and the partitions they live in.
fn plan_limits(
    arena: &mut Vec<LimitInfo>,
    pos: &mut FxHashMap<(i64, u64), u32>,
    limits: &SenderLimits,
    sender: &[u8],
    carrier: &[u8],
    channel: &[u8],
) -> Result<(SmallVec<[u32; 4]>, u32)> {
    let mut idx = SmallVec::new();
    let mut partitions = 0u32;
    for l in limits.limits.iter().filter(|l| l.applies(carrier, channel)) {
        if idx.len() == MAX_WANTS {
            return Err(Box::new(error::too_many(
                format!(
                    "more than {MAX_WANTS} limits apply to sender \"{}\"",
                    String::from_utf8_lossy(sender)
                ),
                "merge or remove limits in throttle.rate_limit",
            )));
        }
        let sub = bucket_sub(l, sender);
        let i = *pos.entry((l.id, sub)).or_insert_with(|| {
            arena.push(LimitInfo {
                want: Want::new(Key::new(l.id, sub), l.rate, l.created_at),
                limit: l.clone(),
            });
            (arena.len() - 1) as u32
        });
        partitions |= 1 << arena[i as usize].want.partition;
        idx.push(i);
    }
    Ok((idx, partitions))
}

/// Forget everything this backend has cached (its own transaction changed the tables).
pub fn invalidate_local() {
    with_cache(|c| {
        c.clear();
        c.generation = 0;
    });
}

/// Every operator here has an exact match in pg_catalog for its argument types, so no
/// operator a user creates in a schema on the search path can be chosen instead.
/// The limits that may apply to senders (`$where`), one row per limit (a sender with none:
/// one row of NULLs), with the sender's weight and name.
macro_rules! load_sql {
    (@label) => {
        "coalesce(l.name, l.scope::text || ' ' || l.scope_id
                    || coalesce(' carrier ' || l.carrier, '')
                    || coalesce(' channel ' || l.channel, '')
                    || coalesce(' sender_type ' || l.sender_type, '')
                    || ' ' || l.rate::text || '/' || l.per::text)"
    };
    (@columns) => {
        concat!(
            "
    SELECT l.limit_id, l.carrier, l.channel, l.rate,
           (extract(epoch FROM l.per) * 1000000::numeric)::bigint, l.burst, ",
            load_sql!(@label),
            ", l.created_at, l.each_sender, s.weight, s.sender"
        )
    };
    ($where:literal, $order:literal) => {
        concat!(
            load_sql!(@columns),
            "
      FROM throttle.sender s
      LEFT JOIN LATERAL (
            SELECT * FROM throttle.rate_limit r WHERE r.scope = 'sender'::throttle.scope AND r.scope_id = s.sender
            UNION ALL
            SELECT * FROM throttle.rate_limit r WHERE r.scope = 'campaign'::throttle.scope AND r.scope_id = s.campaign
            UNION ALL
            SELECT * FROM throttle.rate_limit r WHERE r.scope = 'brand'::throttle.scope AND r.scope_id = s.brand
            UNION ALL
            SELECT * FROM throttle.rate_limit r WHERE r.scope = 'account'::throttle.scope AND r.scope_id = s.account
      ) l ON l.sender_type IS NULL OR l.sender_type IS NOT DISTINCT FROM s.sender_type
     ",
            $where,
            "
     ORDER BY ",
            $order
        )
    };
}

/// The rows of [`LOAD_ALL_SQL`] that say which limits of one scope may apply to each sender.
macro_rules! load_all_scope {
    ($scope:literal, $id:literal) => {
        concat!(
            "
            SELECT s.sender, l.limit_id FROM throttle.sender s
              JOIN throttle.rate_limit l ON l.scope = '",
            $scope,
            "'::throttle.scope AND l.scope_id = ",
            $id,
            "
               AND (l.sender_type IS NULL OR l.sender_type IS NOT DISTINCT FROM s.sender_type)"
        )
    };
}

/// Every limit once (its columns as arrays, in one row), every sender's weight, and which
/// limits may apply to which sender, in one statement (one snapshot) and in no order. Read
/// once per backend and configuration generation by a session meeting many senders, so shaped
/// for hash joins of the senders with the limits of each scope (10,000 senders: 16 ms
/// analysed, 35 not, where four index probes per sender took 42 and 59), and so that a
/// limit's label is made once, not once per sender. One row of arrays: a row per limit and
/// per (sender, limit) took 40,100 rows through SPI, each value read by its own guarded call
/// (about 1.7 µs a row, 70 ms for 10,000 senders, on top of the statement).
const LOAD_ALL_SQL: &str = concat!(
    "
    SELECT l.ids, l.carriers, l.channels, l.rates, l.pers, l.bursts, l.labels, l.created, l.each,
           s.senders, s.weights, a.senders, a.ids
      FROM (SELECT array_agg(l.limit_id) AS ids, array_agg(l.carrier) AS carriers,
                   array_agg(l.channel) AS channels, array_agg(l.rate::int8) AS rates,
                   array_agg((extract(epoch FROM l.per) * 1000000::numeric)::bigint) AS pers,
                   array_agg(l.burst::int8) AS bursts, array_agg(",
    load_sql!(@label),
    ") AS labels,
                   array_agg(l.created_at) AS created, array_agg(l.each_sender) AS each
              FROM throttle.rate_limit l) l,
           (SELECT array_agg(s.sender) AS senders, array_agg(s.weight) AS weights
              FROM throttle.sender s) s,
           (SELECT array_agg(x.sender) AS senders, array_agg(x.limit_id) AS ids FROM (",
    load_all_scope!("sender", "s.sender"),
    "
            UNION ALL",
    load_all_scope!("campaign", "s.campaign"),
    "
            UNION ALL",
    load_all_scope!("brand", "s.brand"),
    "
            UNION ALL",
    load_all_scope!("account", "s.account"),
    ") x) a",
);

/// One sender's limits.
const LOAD_SQL: &str = load_sql!("WHERE s.sender = $1", "l.limit_id");
static LOAD_STMT: crate::backend::KeptStatement = crate::backend::KeptStatement::new(LOAD_SQL);

/// A limit row as read: id, carrier, channel, rate, period (µs), burst, label, created_at,
/// each_sender.
type LimitRow = (
    i64,
    Option<String>,
    Option<String>,
    i64,
    i64,
    Option<i64>,
    String,
    i64,
    bool,
);

/// One row of [`load_sql!`]: the sender's weight, and the limit (None: the sender has none).
fn read_limit_row(
    row: &pgrx::spi::SpiHeapTupleData<'_>,
) -> pgrx::spi::Result<(u16, Option<LimitRow>)> {
    let id: Option<i64> = row.get(1)?;
    let weight = weight_of(row.get::<i32>(10)?);
    let limit = match id {
        None => None,
        Some(id) => Some(limit_columns(row, id, 2)?),
    };
    Ok((weight, limit))
}

/// Limit `id`'s columns from `at` on: carrier, channel, rate, period (µs), burst, label,
/// created_at, each_sender (as [`load_sql!`] and [`LOAD_ALL_SQL`] select them).
fn limit_columns(
    row: &pgrx::spi::SpiHeapTupleData<'_>,
    id: i64,
    at: usize,
) -> pgrx::spi::Result<LimitRow> {
    Ok((
        id,
        row.get::<String>(at)?,
        row.get::<String>(at + 1)?,
        row.get::<i64>(at + 2)?.unwrap_or(0),
        row.get::<i64>(at + 3)?.unwrap_or(0),
        row.get::<i64>(at + 4)?,
        row.get::<String>(at + 5)?.unwrap_or_default(),
        row.get::<TimestampWithTimeZone>(at + 6)?
            .map_or(0, i64::from),
        row.get::<bool>(at + 7)?.unwrap_or(false),
    ))
}

/// A sender's limits from its rows of [`load_sql!`].
fn limits_from(rows: Vec<(u16, Option<LimitRow>)>) -> Result<SenderLimits> {
    let weight = rows.first().map_or(1, |r| r.0);
    let limits = rows
        .into_iter()
        .filter_map(|r| r.1)
        .map(|l| limit_from(l).map(Rc::new))
        .collect::<Result<_>>()?;
    Ok(SenderLimits { limits, weight })
}

/// A limit from its row.
fn limit_from(row: LimitRow) -> Result<Limit> {
    let (id, carrier, channel, count, period_us, burst, label, created_at, each_sender) = row;
    // The tables' constraints make a bad rate impossible; refuse loudly if one slips by.
    // No burst: at most `rate` in every window of `per`; a burst: a token bucket.
    let rate = match burst {
        None => Rate::window(count as u64, period_us as u64),
        Some(b) => Rate::new(count as u64, period_us as u64, b as u64),
    }
    .map_err(|e| error::internal(format!("limit {id}: {e}")))?;
    Ok(Limit {
        id,
        carrier: carrier.map(Into::into),
        channel: channel.map(Into::into),
        rate,
        label: label.into(),
        created_at,
        each_sender,
    })
}

/// A sender's weight as stored (at least 1).
fn weight_of(w: Option<i32>) -> u16 {
    w.unwrap_or(1).clamp(1, u16::MAX as i32) as u16
}

/// Whether at most `max` senders are registered (counted no further than one past it).
pub fn few_senders(client: &pgrx::spi::SpiClient<'_>, max: i64) -> pgrx::spi::Result<bool> {
    let n: i64 = client
        .select(
            "SELECT count(*) FROM (SELECT 1 FROM throttle.sender LIMIT $1) s",
            None,
            &[(max + 1).into()],
        )?
        .first()
        .get(1)?
        .unwrap_or(0);
    Ok(n <= max)
}

/// Every limit by id, every sender's weight, and which limits may apply to which sender, as
/// [`LOAD_ALL_SQL`] reads them (None if its arrays do not line up, which cannot be: the
/// senders are then read one at a time).
type AllLimits = (
    FxHashMap<i64, LimitRow>,
    FxHashMap<String, u16>,
    Vec<(String, i64)>,
);

fn read_all(client: &pgrx::spi::SpiClient<'_>) -> pgrx::spi::Result<Option<AllLimits>> {
    let row = client.select(LOAD_ALL_SQL, None, &[])?.first();
    // Every column an array (NULL when its table has no rows), read whole.
    macro_rules! col {
        ($t:ty, $i:expr) => {
            row.get::<Vec<Option<$t>>>($i)?.unwrap_or_default()
        };
    }
    let ids = col!(i64, 1);
    let (carriers, channels) = (col!(String, 2), col!(String, 3));
    let (rates, pers, bursts) = (col!(i64, 4), col!(i64, 5), col!(i64, 6));
    let labels = col!(String, 7);
    let created = col!(TimestampWithTimeZone, 8);
    let each = col!(bool, 9);
    let (senders, weight) = (col!(String, 10), col!(i32, 11));
    let (to, limit_ids) = (col!(String, 12), col!(i64, 13));
    let n = ids.len();
    if [
        carriers.len(),
        channels.len(),
        rates.len(),
        pers.len(),
        bursts.len(),
    ]
    .into_iter()
    .chain([labels.len(), created.len(), each.len()])
    .any(|k| k != n)
        || weight.len() != senders.len()
        || limit_ids.len() != to.len()
    {
        return Ok(None); // cannot be: then read one sender at a time
    }
    let mut limits: FxHashMap<i64, LimitRow> = FxHashMap::default();
    let columns = carriers.into_iter().zip(channels).zip(labels);
    for (i, ((carrier, channel), label)) in columns.enumerate() {
        let Some(id) = ids[i] else { continue };
        limits.insert(
            id,
            (
                id,
                carrier,
                channel,
                rates[i].unwrap_or(0),
                pers[i].unwrap_or(0),
                bursts[i],
                label.unwrap_or_default(),
                created[i].map_or(0, i64::from),
                each[i].unwrap_or(false),
            ),
        );
    }
    let weights: FxHashMap<String, u16> = senders
        .into_iter()
        .zip(weight)
        .filter_map(|(s, w)| Some((s?, weight_of(w))))
        .collect();
    let applies: Vec<(String, i64)> = to
        .into_iter()
        .zip(limit_ids)
        .filter_map(|(s, id)| Some((s?, id?)))
        .collect();
    Ok(Some((limits, weights, applies)))
}

/// Every registered sender's limits, read in one statement (as committed now), if there are
/// at most `throttle.preload_senders` of them; None if there are more (they are read one
/// sender at a time, as each is first used). A session admitting for many senders then pays
/// one statement after a configuration change, not one per sender (see `Cache::preload_due`).
fn preload() -> Result<Option<Vec<(Box<[u8]>, SenderLimits)>>> {
    let max = crate::gucs::preload_senders();
    if max == 0 {
        return Ok(None);
    }
    let snapshot = crate::backend::LatestSnapshot::push();
    let read = Spi::connect(|client| {
        if !few_senders(client, max)? {
            return Ok(None);
        }
        read_all(client)
    });
    drop(snapshot);
    let Some((rows, weights, applies)) = read.map_err(error::internal)? else {
        return Ok(None);
    };
    // Each limit once, shared by the senders it applies to.
    let mut limits: FxHashMap<i64, Rc<Limit>> = FxHashMap::default();
    for (id, row) in rows {
        limits.insert(id, Rc::new(limit_from(row)?));
    }
    let mut out: FxHashMap<String, SenderLimits> = weights
        .into_iter()
        .map(|(s, weight)| {
            let l = SenderLimits {
                limits: Vec::new(),
                weight,
            };
            (s, l)
        })
        .collect();
    for (sender, id) in applies {
        if let (Some(s), Some(l)) = (out.get_mut(&sender), limits.get(&id)) {
            s.limits.push(l.clone());
        }
    }
    Ok(Some(
        out.into_iter()
            .map(|(s, mut l)| {
                // In limit order, as `load` reads one sender's (a limit's place in a plan
                // follows).
                l.limits.sort_unstable_by_key(|l| l.id);
                (s.into_bytes().into_boxed_slice(), l)
            })
            .collect(),
    ))
}

fn uses_transaction_snapshot() -> bool {
    // SAFETY: XactIsoLevel is a plain backend-local int, written only by this backend's one
    // thread.
    unsafe { pg_sys::XactIsoLevel >= pg_sys::XACT_REPEATABLE_READ as i32 }
}

/// The limits of `sender` from the tables; None if the sender is not registered.
fn load(sender: &[u8]) -> Result<Option<SenderLimits>> {
    let sender = String::from_utf8_lossy(sender);
    let sender: &str = &sender;
    // Read the configuration as committed now, not as the calling statement's snapshot saw
    // it: a long query that misses the cache after a change must not cache the old limits
    // under the new generation. (A transaction that already wrote under REPEATABLE READ
    // still reads its own snapshot: such reads are not cached, see `with_known_plan`.)
    let snapshot = crate::backend::LatestSnapshot::push();
    let rows = Spi::connect(|client| {
        LOAD_STMT.with(client, |stmt| {
            let table = client.select(stmt, None, &[sender.into()])?;
            let mut out = Vec::with_capacity(table.len());
            for row in table {
                out.push(read_limit_row(&row)?);
            }
            Ok(if out.is_empty() { None } else { Some(out) })
        })
    });
    drop(snapshot);
    let rows = rows.map_err(error::internal)?;
    rows.map(limits_from).transpose()
}

/// The bucket a limit this backend has cached wants (for the worker's per-limit room). A
/// limit each sender has on its own has no one bucket: None.
pub fn cached_want(limit_id: i64) -> Option<Want> {
    with_cache(|c| {
        c.arena_pos
            .get(&(limit_id, database_key()))
            .map(|&i| c.arena[i as usize].want)
    })
}

/// Buckets are keyed by this database too: two databases with the extension never share one.
fn database_key() -> u64 {
    // SAFETY: MyDatabaseId is a plain backend-local value, set when the backend connects and
    // written only by this backend's one thread.
    (unsafe { pg_sys::MyDatabaseId }.to_u32() as u64) << 32
}

/// The sub-key of `l`'s bucket for `sender`: the database, and for a limit each sender has on
/// its own, the sender (a hash: two senders that collide share a bucket, which only ever
/// holds them back, never lets more through).
fn bucket_sub(l: &Limit, sender: &[u8]) -> u64 {
    if !l.each_sender {
        return database_key();
    }
    let mut h = rustc_hash::FxHasher::default();
    h.write(sender);
    let low = (h.finish() as u32).max(1);
    database_key() | low as u64
}

/// Whether a bucket key belongs to one sender of a group (see [`bucket_sub`]).
pub fn is_per_sender(key: &Key) -> bool {
    key.sub & 0xFFFF_FFFF != 0
}

/// Whether a tenant model is configured, and whether the current role may act for `sender`
/// (a member of a role mapped to the sender's account in throttle.account_role). One
/// statement; every name in it is schema-qualified.
const TENANT_SQL: &str = "
    SELECT EXISTS (SELECT 1 FROM throttle.account_role),
           EXISTS (SELECT 1 FROM throttle.sender s WHERE s.sender OPERATOR(pg_catalog.=) $1),
           throttle.acts_for($2, $1)";

/// (tenant model configured, sender registered, current role may act for it).
fn tenant_answer(sender: &[u8]) -> Result<(bool, bool, bool)> {
    let sender = String::from_utf8_lossy(sender).into_owned();
    // SAFETY: GetUserId only reads backend-local state (the current user id, always set in a
    // backend that runs SQL).
    let role = unsafe { pg_sys::GetUserId() };
    Spi::connect(|c| {
        let row = c
            .select(TENANT_SQL, Some(1), &[sender.into(), role.into()])
            .map_err(|e| Box::new(error::internal(e)))?
            .first();
        let get = |i| row.get::<bool>(i).map_err(|e| Box::new(error::internal(e)));
        Ok((
            get(1)?.unwrap_or(false),
            get(2)?.unwrap_or(false),
            get(3)?.unwrap_or(false),
        ))
    })
}

fn not_yours(sender: &[u8]) -> Box<pgrx::pg_sys::panic::ErrorReport> {
    Box::new(error::forbidden(
        format!(
            "role \"{}\" may not act for sender \"{}\"",
            current_role(),
            error::shown(sender)
        ),
        "a role acts for the senders of the accounts throttle.account_role maps it to (or a role it is a member of)",
    ))
}

fn current_role() -> String {
    // SAFETY: GetUserId only reads backend-local state. GetUserNameFromId looks the role up
    // in the catalog cache, which is usable here (this runs in a statement, in a
    // transaction); with `noerr` it gives a palloc'd NUL-terminated copy of the name, or null
    // for a role that is gone, which is checked before the name is read.
    unsafe {
        let name = pg_sys::GetUserNameFromId(pg_sys::GetUserId(), true);
        if name.is_null() {
            return String::new();
        }
        std::ffi::CStr::from_ptr(name)
            .to_string_lossy()
            .into_owned()
    }
}

/// 42501 unless the current role may admit for `sender` (tenant model: see
/// `throttle.account_role`); 42704 for an unknown sender. The answer is kept in the plan, so
/// the next admission of the same role asks nothing.
pub fn authorize(sender: &[u8], carrier: &[u8], channel: &[u8]) -> Result<()> {
    if with_plan(sender, carrier, channel, |p| p.allowed())? {
        return Ok(());
    }
    let generation = shmem::config_generation();
    let (tenancy, _, may) = tenant_answer(sender)?;
    if tenancy && !may {
        return Err(not_yours(sender));
    }
    let user = if tenancy {
        // SAFETY: GetUserId only reads backend-local state (the current user id, always set
        // in a backend that runs SQL).
        unsafe { pg_sys::GetUserId() }.to_u32()
    } else {
        ANY_USER
    };
    let hash = plan_hash(sender, carrier, channel);
    with_cache(|c| {
        if c.generation == generation && !uses_transaction_snapshot() {
            c.tenancy = Some(tenancy);
            if let Some(e) = c.plans.find_mut(hash, sender, carrier, channel) {
                e.user = user;
            }
        }
    });
    Ok(())
}

/// 42704 for an unknown sender, 42501 if the current role may not act for it.
pub fn authorize_sender(sender: &[u8]) -> Result<()> {
    let (tenancy, known, may) = tenant_answer(sender)?;
    if !known {
        return Err(Box::new(error::undefined(
            format!("unknown sender \"{}\"", error::shown(sender)),
            "register it first: INSERT INTO throttle.sender (sender, ...) VALUES (...)",
        )));
    }
    if tenancy && !may {
        return Err(not_yours(sender));
    }
    Ok(())
}
