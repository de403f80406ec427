//! A presence filter over (database, line, contact) keys: a blocked Bloom filter whose words
//! live wherever the caller keeps them (shared memory, in the glue).
//!
//! It answers "certainly never added" or "maybe added": a key added is always found (no
//! false negative, whatever other keys were added or how full it is), and a key never added
//! is found with a small probability that grows with the keys added. Each key touches one
//! block of [`BLOCK_WORDS`] 64-bit words (one cache line), [`BITS_PER_KEY`] bits in it.
//! Adding is one atomic OR per bit, so concurrent adds and looks need no lock: a look that
//! runs beside an add of the same key may or may not find it, and finds it once the add
//! returned.

use std::sync::atomic::{AtomicU64, Ordering};

/// Words in a block: 512 bits, one 64-byte cache line.
pub const BLOCK_WORDS: usize = 8;
/// Bits set per key, all in its block.
pub const BITS_PER_KEY: u32 = 6;

/// A key's two hashes: which block, and which bits in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyHash(u64, u64);

/// The hash of (database, line, contact): the same bytes give the same hash in every process
/// and build (no random seed). Each string is counted with its length, so no two different
/// pairs hash the same bytes. Not a cryptographic hash: a key an adversary picks to collide
/// costs only a read of the tables that the filter would have spared.
pub fn key_hash(db: u32, line: &[u8], contact: &[u8]) -> KeyHash {
    let mut h = Mix(0x243f_6a88_85a3_08d3 ^ db as u64);
    h.bytes(line);
    h.bytes(contact);
    KeyHash(fmix(h.0), fmix(h.0 ^ 0x9e37_79b9_7f4a_7c15))
}

/// A multiply-and-rotate accumulator over 8-byte words.
struct Mix(u64);

impl Mix {
    fn word(&mut self, w: u64) {
        self.0 = (self.0 ^ w)
            .wrapping_mul(0x9fb2_1c65_1e98_df25)
            .rotate_left(29);
    }

    fn bytes(&mut self, b: &[u8]) {
        self.word(b.len() as u64);
        let mut chunks = b.chunks_exact(8);
        for c in &mut chunks {
            self.word(u64::from_le_bytes(c.try_into().unwrap_or([0; 8])));
        }
        let rest = chunks.remainder();
        let mut last = [0u8; 8];
        last[..rest.len()].copy_from_slice(rest);
        self.word(u64::from_le_bytes(last));
    }
}

/// MurmurHash3's finaliser: every input bit reaches every output bit.
fn fmix(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

/// A filter over `words` (a whole number of blocks; none at all is a filter that holds
/// every key, so that a missing one never answers "absent").
pub struct Presence<'a> {
    words: &'a [AtomicU64],
}

impl<'a> Presence<'a> {
    /// A filter over the first whole blocks of `words`.
    pub fn new(words: &'a [AtomicU64]) -> Presence<'a> {
        let n = words.len() / BLOCK_WORDS * BLOCK_WORDS;
        Presence { words: &words[..n] }
    }

    /// The (word, mask) pairs of `k`'s bits.
    fn bits(&self, k: KeyHash) -> impl Iterator<Item = (usize, u64)> {
        let blocks = (self.words.len() / BLOCK_WORDS) as u64;
        // The high half of a 64x64 product: an even spread over the blocks without a division.
        let block = ((k.0 as u128 * blocks as u128) >> 64) as usize;
        (0..BITS_PER_KEY).map(move |i| {
            let bit = ((k.1 >> (9 * i)) & 511) as usize;
            (block * BLOCK_WORDS + bit / 64, 1u64 << (bit % 64))
        })
    }

    /// Add `k`.
    pub fn add(&self, k: KeyHash) {
        if self.words.is_empty() {
            return;
        }
        // The key's bits per word of its block, each word written once (and only when a bit
        // is missing: most adds of a key seen before write nothing).
        let mut masks = [0u64; BLOCK_WORDS];
        let mut first = usize::MAX;
        for (w, mask) in self.bits(k) {
            first = first.min(w - w % BLOCK_WORDS);
            masks[w % BLOCK_WORDS] |= mask;
        }
        for (i, mask) in masks.into_iter().enumerate() {
            let w = &self.words[first + i];
            // Release: a look that sees the bit sees what was written before the add.
            if mask != 0 && w.load(Ordering::Relaxed) & mask != mask {
                w.fetch_or(mask, Ordering::Release);
            }
        }
    }

    /// Whether `k` may have been added (false: it certainly was not).
    pub fn may_hold(&self, k: KeyHash) -> bool {
        if self.words.is_empty() {
            return true;
        }
        self.bits(k)
            .all(|(w, mask)| self.words[w].load(Ordering::Acquire) & mask != 0)
    }

    /// Forget every key.
    pub fn clear(&self) {
        for w in self.words {
            w.store(0, Ordering::Relaxed);
        }
    }

    /// Bits set, and bits in all.
    pub fn fill(&self) -> (u64, u64) {
        let set = self
            .words
            .iter()
            .map(|w| w.load(Ordering::Relaxed).count_ones() as u64)
            .sum();
        (set, 64 * self.words.len() as u64)
    }

    /// The chance that a key never added is found, estimated from how full the filter is
    /// (the fraction of bits set, to the power of the bits per key).
    pub fn false_positive_rate(&self) -> f64 {
        let (set, all) = self.fill();
        if all == 0 {
            return 1.0;
        }
        (set as f64 / all as f64).powi(BITS_PER_KEY as i32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn words(n: usize) -> Vec<AtomicU64> {
        (0..n).map(|_| AtomicU64::new(0)).collect()
    }

    #[test]
    fn a_key_added_is_always_found_and_others_mostly_not() {
        let w = words(8 * 1024);
        let f = Presence::new(&w);
        for i in 0..20_000u32 {
            f.add(key_hash(5, b"line", i.to_string().as_bytes()));
        }
        for i in 0..20_000u32 {
            assert!(f.may_hold(key_hash(5, b"line", i.to_string().as_bytes())));
        }
        // 20,000 keys in 524,288 bits: about 0.13 % of other keys are found.
        let found = (20_000..120_000u32)
            .filter(|i| f.may_hold(key_hash(5, b"line", i.to_string().as_bytes())))
            .count();
        assert!(
            found < 500,
            "{found} of 100,000 keys never added were found"
        );
        assert!(f.false_positive_rate() < 0.005);
    }

    #[test]
    fn the_database_and_the_split_between_line_and_contact_are_part_of_the_key() {
        let w = words(8 * 1024);
        let f = Presence::new(&w);
        f.add(key_hash(5, b"ab", b"c"));
        assert!(f.may_hold(key_hash(5, b"ab", b"c")));
        assert_ne!(key_hash(5, b"ab", b"c"), key_hash(5, b"a", b"bc"));
        assert_ne!(key_hash(5, b"ab", b"c"), key_hash(6, b"ab", b"c"));
        assert!(!f.may_hold(key_hash(6, b"ab", b"c")));
        assert!(!f.may_hold(key_hash(5, b"a", b"bc")));
    }

    #[test]
    fn an_empty_filter_holds_every_key_and_a_cleared_one_none() {
        let none = words(3);
        assert!(Presence::new(&none).may_hold(key_hash(1, b"x", b"y")));
        let w = words(16);
        let f = Presence::new(&w);
        f.add(key_hash(1, b"x", b"y"));
        f.clear();
        assert!(!f.may_hold(key_hash(1, b"x", b"y")));
        assert_eq!(f.fill(), (0, 1024));
    }

    proptest! {
        // Whatever was added, in whatever filter size, every added key is found.
        #[test]
        fn no_false_negative(
            blocks in 1usize..64,
            keys in proptest::collection::vec((any::<u32>(), ".{0,12}", ".{0,12}"), 1..300),
        ) {
            let w = words(blocks * BLOCK_WORDS);
            let f = Presence::new(&w);
            for (db, l, c) in &keys {
                f.add(key_hash(*db, l.as_bytes(), c.as_bytes()));
            }
            for (db, l, c) in &keys {
                prop_assert!(f.may_hold(key_hash(*db, l.as_bytes(), c.as_bytes())));
            }
        }
    }
}
