//! A fixed-capacity hash table of buckets, laid over slices so the same code runs on `Vec`s in
//! tests and on shared memory in the server. The buckets are dense: the live ones fill the
//! first `len` slots, so a few thousand of them span a few hundred pages (an admission's
//! address translation then stays in the TLB), found through an index of 8-byte entries
//! (linear probing with backward-shift deletion: no tombstones, lookups stay O(1) at any
//! age). Removing a bucket moves the last one into its slot.

use super::{Bucket, Micros};

/// Identifies one bucket: the limit it belongs to and, for limits kept per key (a recipient,
/// a carrier), a sub-key. `limit_id == 0` marks an empty slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub limit_id: i64,
    pub sub: u64,
}

impl Key {
    pub const EMPTY: Key = Key {
        limit_id: 0,
        sub: 0,
    };

    pub fn new(limit_id: i64, sub: u64) -> Key {
        debug_assert!(limit_id != 0);
        Key { limit_id, sub }
    }

    /// A well-mixed 64-bit hash (splitmix64 finaliser over both words).
    pub fn hash(&self) -> u64 {
        let mut z = (self.limit_id as u64) ^ self.sub.rotate_left(32) ^ 0x9E37_79B9_7F4A_7C15;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Slot {
    pub key: Key,
    pub bucket: Bucket,
}

impl Slot {
    pub fn is_empty(&self) -> bool {
        self.key.limit_id == 0
    }
}

/// The table is full and no bucket in it could be forgotten without loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full;

/// One entry of an index over dense entries (a partition's buckets here; a session's plans
/// in the server): the low half of its hash, which also gives its home position (an index
/// has fewer than 2^32 entries), and its entry's position plus one (0: an empty entry).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndexEntry {
    pub tag: u32,
    pub at: u32,
}

/// In `index` (a power of two of entries, linear probing), the position and the entry of the
/// first entry of hash `hash` for which `is(entry)` holds, if any.
#[inline]
pub fn probe(
    index: &[IndexEntry],
    hash: u64,
    mut is: impl FnMut(usize) -> bool,
) -> Option<(usize, usize)> {
    let mask = index.len().checked_sub(1)?;
    let tag = hash as u32;
    let mut i = hash as usize & mask;
    loop {
        let e = index[i];
        if e.at == 0 {
            return None;
        }
        if e.tag == tag && is(e.at as usize - 1) {
            return Some((i, e.at as usize - 1));
        }
        i = (i + 1) & mask;
    }
}

/// Put entry `at`, of hash `hash`, in the first free position of `index` from its home.
pub fn place(index: &mut [IndexEntry], hash: u64, at: usize) {
    let mask = index.len() - 1;
    let mut i = hash as usize & mask;
    while index[i].at != 0 {
        i = (i + 1) & mask;
    }
    index[i] = IndexEntry {
        tag: hash as u32,
        at: at as u32 + 1,
    };
}

/// One partition: its index (a power of two of entries), its slots (at least as many as may
/// be live: the live ones are `slots[..len]`) and its live count.
pub struct Table<'a> {
    pub index: &'a mut [IndexEntry],
    pub slots: &'a mut [Slot],
    pub len: &'a mut u32,
}

impl Table<'_> {
    /// Live entries allowed before the partition counts as full (7/8 of the index, and no
    /// more than there are slots).
    pub fn max_len(&self) -> usize {
        (self.index.len() - self.index.len() / 8).min(self.slots.len())
    }

    #[inline]
    fn mask(&self) -> usize {
        self.index.len() - 1
    }

    /// Slot of `key`, if present.
    #[inline]
    pub fn find(&self, key: Key, hash: u64) -> Option<usize> {
        probe(self.index, hash, |at| self.slots[at].key == key).map(|(_, at)| at)
    }

    /// `at`, when it is a live slot holding `key` (a remembered position checked without
    /// probing the index; keys are unique within a partition, so a match is the entry).
    #[inline]
    pub fn holds(&self, key: Key, at: usize) -> Option<usize> {
        (at < *self.len as usize && self.slots[at].key == key).then_some(at)
    }

    /// Slot of `key`, inserting `make()` if absent. When the partition is full, buckets that
    /// are full at `now` (they hold no debt: forgetting them loses nothing) are dropped first.
    /// `budget` is asked before a new entry is added (a global cap across partitions) and
    /// told of every entry dropped; it returns false when no entry may be added. Entries for
    /// which `keep` is true are never dropped. Dropping moves entries: slots found before
    /// this call may be stale after it.
    pub fn find_or_insert(
        &mut self,
        key: Key,
        hash: u64,
        now: Micros,
        make: impl FnOnce() -> Bucket,
        budget: &mut impl FnMut(i64) -> bool,
        keep: impl Fn(&Key) -> bool,
    ) -> Result<usize, Full> {
        if let Some(i) = self.find(key, hash) {
            return Ok(i);
        }
        if *self.len as usize >= self.max_len() || !budget(1) {
            let dropped = self.forget_full(now, keep);
            budget(-(dropped as i64));
            if dropped == 0 || *self.len as usize >= self.max_len() || !budget(1) {
                return Err(Full);
            }
        }
        let at = *self.len as usize;
        self.slots[at] = Slot {
            key,
            bucket: make(),
        };
        place(self.index, hash, at);
        *self.len += 1;
        Ok(at)
    }

    /// Drop every bucket that is full at `now`, except those `keep` names; returns how many
    /// were dropped.
    pub fn forget_full(&mut self, now: Micros, keep: impl Fn(&Key) -> bool) -> usize {
        let mut dropped = 0;
        let mut at = 0;
        while at < *self.len as usize {
            let s = &self.slots[at];
            if s.bucket.is_full(now) && !keep(&s.key) {
                self.remove(at);
                dropped += 1;
                // The slot now holds what was the last one: look at it again.
            } else {
                at += 1;
            }
        }
        dropped
    }

    /// Position in the index of the entry that points at slot `at` (live).
    fn entry_of(&self, at: usize) -> usize {
        let hash = self.slots[at].key.hash();
        let found = probe(self.index, hash, |e| e == at);
        debug_assert!(found.is_some(), "a live slot has its index entry");
        found.map_or(0, |(i, _)| i)
    }

    /// Remove the bucket in slot `at` (live): its index entry goes, shifting later entries
    /// of its probe run back, and the last live slot moves into its place.
    pub fn remove(&mut self, at: usize) {
        let mask = self.mask();
        let mut i = self.entry_of(at);
        let mut j = i;
        'shift: loop {
            self.index[i] = IndexEntry::default();
            loop {
                j = (j + 1) & mask;
                let e = self.index[j];
                if e.at == 0 {
                    break 'shift;
                }
                let home = e.tag as usize & mask;
                // Move j back to i unless its home lies cyclically in (i, j].
                let stays = if i <= j {
                    i < home && home <= j
                } else {
                    i < home || home <= j
                };
                if !stays {
                    break;
                }
            }
            self.index[i] = self.index[j];
            i = j;
        }
        let last = *self.len as usize - 1;
        if at != last {
            let e = self.entry_of(last);
            self.index[e].at = at as u32 + 1;
            self.slots[at] = self.slots[last];
        }
        self.slots[last].key = Key::EMPTY;
        *self.len -= 1;
    }

    /// Every live entry.
    pub fn iter(&self) -> impl Iterator<Item = &Slot> {
        self.slots[..*self.len as usize].iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rate;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn empty_index(n: usize) -> Vec<IndexEntry> {
        vec![IndexEntry::default(); n]
    }

    fn empty_slots(n: usize) -> Vec<Slot> {
        let b = Bucket::full_at(Rate::new(1, 1_000_000, 1).unwrap(), 0);
        vec![
            Slot {
                key: Key::EMPTY,
                bucket: b
            };
            n
        ]
    }

    fn busy(at: Micros) -> Bucket {
        Bucket::empty_at(Rate::new(1, 1_000_000, 1).unwrap(), at)
    }

    #[test]
    fn a_slot_is_three_cache_lines() {
        // Key (16) + token bucket state (16) + rate (32) + window batches (128). The README's
        // settings table quotes this size: keep them in step.
        assert_eq!(std::mem::size_of::<Slot>(), 192);
    }

    #[test]
    fn full_partition_forgets_only_refilled_buckets() {
        let (mut index, mut slots) = (empty_index(16), empty_slots(16));
        let mut len = 0;
        let mut t = Table {
            index: &mut index,
            slots: &mut slots,
            len: &mut len,
        };
        let mut unlimited = |_: i64| true;
        // 14 = 7/8 of 16 entries, all busy until 1 s.
        for id in 1..=14 {
            let k = Key::new(id, 0);
            t.find_or_insert(k, k.hash(), 0, || busy(0), &mut unlimited, |_| false)
                .unwrap();
        }
        let k = Key::new(99, 0);
        assert_eq!(
            t.find_or_insert(k, k.hash(), 0, || busy(0), &mut unlimited, |_| false),
            Err(Full)
        );
        // Every entry is still there.
        for id in 1..=14 {
            let k = Key::new(id, 0);
            assert!(t.find(k, k.hash()).is_some());
        }
        // Once they have refilled they may be forgotten.
        assert!(t
            .find_or_insert(
                k,
                k.hash(),
                2_000_000,
                || busy(2_000_000),
                &mut unlimited,
                |_| false
            )
            .is_ok());
        assert_eq!(*t.len, 1);
    }

    #[test]
    fn global_budget_is_respected() {
        let (mut index, mut slots) = (empty_index(64), empty_slots(64));
        let mut len = 0;
        let mut t = Table {
            index: &mut index,
            slots: &mut slots,
            len: &mut len,
        };
        let mut live = 0i64;
        let mut budget = |d: i64| {
            if d > 0 && live + d > 3 {
                return false;
            }
            live += d;
            true
        };
        for id in 1..=3 {
            let k = Key::new(id, 0);
            t.find_or_insert(k, k.hash(), 0, || busy(0), &mut budget, |_| false)
                .unwrap();
        }
        let k = Key::new(4, 0);
        assert_eq!(
            t.find_or_insert(k, k.hash(), 0, || busy(0), &mut budget, |_| false),
            Err(Full)
        );
        assert!(t
            .find_or_insert(k, k.hash(), 5_000_000, || busy(0), &mut budget, |_| false)
            .is_ok());
        assert_eq!(live, 1);
    }

    proptest! {
        /// Against a HashMap model: inserts, removals and forgetting keep every key findable.
        #[test]
        fn behaves_like_a_map(ops in prop::collection::vec((0u8..3, 1i64..40, 0u64..3), 1..400)) {
            let (mut index, mut slots) = (empty_index(64), empty_slots(64));
            let mut len = 0;
            let mut t = Table { index: &mut index, slots: &mut slots, len: &mut len };
            let mut model: HashMap<Key, Micros> = HashMap::new();
            let mut remembered: HashMap<Key, usize> = HashMap::new();
            let mut unlimited = |_: i64| true;
            for (op, id, sub) in ops {
                let k = Key::new(id, sub);
                match op {
                    0 => {
                        let at = id * 10;
                        if t.find_or_insert(k, k.hash(), 0, || busy(at), &mut unlimited, |_| false).is_ok() {
                            model.entry(k).or_insert(at);
                        }
                    }
                    1 => {
                        if let Some(i) = t.find(k, k.hash()) { t.remove(i); }
                        model.remove(&k);
                    }
                    _ => {
                        let now = 200 + 1_000_000;
                        t.forget_full(now, |_| false);
                        model.retain(|_, at| !busy(*at).is_full(now));
                    }
                }
                prop_assert_eq!(*t.len as usize, model.len());
                // Dense: the live buckets are exactly the first `len` slots.
                let live: Vec<Key> = t.iter().map(|s| s.key).collect();
                prop_assert!(live.iter().all(|k| model.contains_key(k)));
                prop_assert_eq!(live.len(), model.len());
                prop_assert!(t.slots[model.len()..].iter().all(|s| s.is_empty()));
                for (k, at) in &model {
                    let i = t.find(*k, k.hash());
                    prop_assert!(i.is_some());
                    prop_assert_eq!(t.slots[i.unwrap()].bucket, busy(*at));
                }
                // A remembered position (a hint), however stale, is accepted only where its
                // key still lives: then it is the key's slot.
                for (k, at) in &remembered {
                    if let Some(i) = t.holds(*k, *at) {
                        prop_assert!(model.contains_key(k));
                        prop_assert_eq!(Some(i), t.find(*k, k.hash()));
                    }
                }
                for k in model.keys() {
                    let i = t.find(*k, k.hash()).unwrap_or(usize::MAX);
                    prop_assert_eq!(t.holds(*k, i), Some(i));
                    remembered.insert(*k, i);
                }
            }
        }
    }
}
