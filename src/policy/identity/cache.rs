//! The verified-token cache, so that signature checks do not dominate CPU under load.
//!
//! Keyed by a 128-bit keyed hash of the token, SipHash-1-3 with a random key drawn from the OS
//! when the cache is made (the token itself is never stored). Why not SHA-256, as before: the
//! cache key needs no collision resistance against someone who can compute it, only against
//! someone who cannot see it, which a secret-keyed PRF gives; SipHash over a ~800-byte token is
//! ~1 k instructions everywhere, SHA-256 ~1 k with the SHA extensions and ~20 k without them
//! (Intel Xeons before Ice Lake, valgrind), where it was an eighth of a request's CPU. To reuse
//! a cached identity an attacker would need a token whose 128-bit keyed hash equals a victim's,
//! without ever seeing a hash: 2^-128 a try. Only tokens that passed
//! every check are cached; each entry keeps `exp`/`nbf`, and every hit re-checks them against the
//! clock, so an entry is good exactly as long as its token. Bounded by entry count (quick_cache's
//! S3-FIFO eviction). Rejected tokens are not cached: an attacker can vary a bad token at will,
//! so a negative cache would only fill up; floods are for the connection and in-flight limits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use siphasher::sip128::{Hasher128, SipHasher13};

use super::Identity;

/// What a cache entry holds.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub identity: Arc<Identity>,
    pub exp: i64,
    pub nbf: Option<i64>,
}

pub(crate) type Key = u128;

pub(crate) struct TokenCache {
    map: quick_cache::sync::Cache<Key, Entry>,
    /// The SipHash key, random per cache.
    sip: (u64, u64),
    hits: AtomicU64,
    misses: AtomicU64,
}

impl TokenCache {
    /// A cache of at most `entries` tokens (`entries` > 0).
    pub fn new(entries: u64) -> Self {
        let cap = usize::try_from(entries).unwrap_or(usize::MAX);
        let mut seed = [0u8; 16];
        // No OS randomness is a broken machine; refuse to run with a guessable key.
        getrandom::fill(&mut seed).expect("OS random numbers for the token cache key");
        let (k0, k1) = seed.split_at(8);
        let sip =
            (u64::from_le_bytes(k0.try_into().expect("8 bytes")), u64::from_le_bytes(k1.try_into().expect("8 bytes")));
        Self { map: quick_cache::sync::Cache::new(cap), sip, hits: AtomicU64::new(0), misses: AtomicU64::new(0) }
    }

    pub fn key(&self, token: &str) -> Key {
        let mut h = SipHasher13::new_with_keys(self.sip.0, self.sip.1);
        std::hash::Hasher::write(&mut h, token.as_bytes());
        h.finish128().as_u128()
    }

    /// The entry for `key`, counting the hit or miss.
    pub fn get(&self, key: &Key) -> Option<Entry> {
        let e = self.map.get(key);
        let counter = if e.is_some() { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        e
    }

    pub fn insert(&self, key: Key, entry: Entry) {
        self.map.insert(key, entry);
    }

    pub fn remove(&self, key: &Key) {
        self.map.remove(key);
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_per_token_and_secret_per_cache() {
        let (a, b) = (TokenCache::new(10), TokenCache::new(10));
        let t = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhY2N0LTEifQ.c2ln";
        assert_eq!(a.key(t), a.key(t));
        assert_ne!(a.key(t), a.key(&t.replace("c2ln", "c2lm")), "one changed byte, another key");
        assert_ne!(a.key(t), a.key(""));
        // Two caches (two processes) draw their own SipHash keys: a key seen in one says
        // nothing about the other.
        assert_ne!(a.key(t), b.key(t));
        assert_ne!(a.sip, b.sip);
    }
}
