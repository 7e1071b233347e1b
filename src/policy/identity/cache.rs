//! The verified-token cache, so that signature checks do not dominate CPU under load.
//!
//! Keyed by SHA-256 of the token (the token itself is never stored). Only tokens that passed
//! every check are cached; each entry keeps `exp`/`nbf`, and every hit re-checks them against the
//! clock, so an entry is good exactly as long as its token. Bounded by entry count (quick_cache's
//! S3-FIFO eviction). Rejected tokens are not cached: an attacker can vary a bad token at will,
//! so a negative cache would only fill up; floods are for the connection and in-flight limits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::Identity;

/// What a cache entry holds.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub identity: Arc<Identity>,
    pub exp: i64,
    pub nbf: Option<i64>,
}

pub(crate) type Key = [u8; 32];

pub(crate) struct TokenCache {
    map: quick_cache::sync::Cache<Key, Entry>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl TokenCache {
    /// A cache of at most `entries` tokens (`entries` > 0).
    pub fn new(entries: u64) -> Self {
        let cap = usize::try_from(entries).unwrap_or(usize::MAX);
        Self { map: quick_cache::sync::Cache::new(cap), hits: AtomicU64::new(0), misses: AtomicU64::new(0) }
    }

    pub fn key(token: &str) -> Key {
        Sha256::digest(token.as_bytes()).into()
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
