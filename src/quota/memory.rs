//! The in-process quota store: bucket states in a `DashMap`, exact under concurrency, bounded in
//! memory.
//!
//! # Atomicity without a global lock
//! Each key maps to its own `Arc<Mutex<Cell>>`. A multi-bucket operation clones the `Arc`s out of
//! the map (shard locks are held only for the lookup), then locks the cells in address order —
//! one global order, so two requests sharing buckets can never deadlock — reads "now", decides
//! and writes all cells, and unlocks. Requests that share no bucket never wait for each other.
//!
//! # Eviction
//! [`MemoryStore::sweep`] (the proxy calls it every second) removes keys whose bucket is full
//! again (`tat ≤ now`): forgetting a full bucket loses nothing, forgetting a spent one would hand
//! out fresh quota, so spent buckets are never evicted. A cell is marked `dead` under its own
//! lock before it leaves the map; an operation that finds a dead cell after locking retries with
//! a fresh lookup, so a charge can never land in an evicted cell.
//!
//! # Key flooding
//! At most `max_tracked_keys` ordinary keys are held. When full, a NEW key is not inserted: its
//! charge goes to a shared overflow bucket for that scope and horizon (`i~overflow|day`) with
//! the same limits. Rotating IPv6 prefixes therefore buys one prefix's quota in total, memory
//! stays bounded, and keys already tracked keep their own buckets. Before a newcomer is sent to
//! the overflow, the store makes room by evicting the buckets that are full again (at most one
//! such sweep a second): a returning employer whose idle bucket was forgotten gets a bucket of
//! its own, not the overflow a flood used up. Overflow keys (≤ one per scope and horizon) come on
//! top of the cap. After a sweep that removed most keys, the map gives its memory back.
//!
//! # Memory
//! Per key: the map slot (`Box<str>` 16 B + `Arc` 8 B, at hashbrown's 50–87% load ≈ 28–48 B), the
//! key text (≈ 24–40 B, one allocation), and the cell (`Arc` header 16 B + mutex 8 B + state 32 B
//! = 56 B, one allocation); with allocator overhead ≈ 150 B (measured: 153–164 B). Bound:
//! [`BYTES_PER_KEY_BOUND`] = 256 B, so the default 1,000,000 keys stay under 256 MB. Checked by
//! the `million_keys_stay_under_the_bound` test with `/proc/self/statm`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use futures_util::future::BoxFuture;

use super::gcra::{self, GcraState, Params};
use super::store::{self, BucketSpec, BucketState, CostMode, QuotaStore, ReserveOutcome, StoreError, TopList};
use crate::clock::SharedClock;

/// Upper bound on resident bytes per tracked key (see the module doc).
pub const BYTES_PER_KEY_BOUND: usize = 256;

#[derive(Debug, Default)]
struct Cell {
    state: GcraState,
    /// Set by the sweeper, under this lock, just before the key leaves the map.
    dead: bool,
}

type Slot = Arc<Mutex<Cell>>;

/// The default store: no setup, state lives as long as the process.
pub struct MemoryStore {
    clock: SharedClock,
    map: DashMap<Box<str>, Slot>,
    /// Keys in `map`, maintained alongside it so the cap check is one atomic op.
    tracked: AtomicUsize,
    cap: usize,
    /// When the last sweep made on the request path (at the cap) ran, in clock nanoseconds.
    last_room_sweep: std::sync::atomic::AtomicU64,
}

/// Cells of one operation, locked in address order; `at[i]` is bucket `i`'s guard (`None`: a
/// peek or refund of an unknown key, which is a full bucket).
struct Locked<'a> {
    guards: Vec<MutexGuard<'a, Cell>>,
    at: Vec<Option<usize>>,
}

impl Locked<'_> {
    fn tat(&self, i: usize, p: &Params, now: u64) -> u64 {
        self.at[i].map_or(now, |g| gcra::rebase(self.guards[g].state, p, now))
    }

    fn set(&mut self, i: usize, tat: u64, p: &Params, now: u64) {
        if let Some(g) = self.at[i] {
            self.guards[g].state = store::stored(tat, p, now);
        }
    }
}

impl MemoryStore {
    /// A store tracking at most `max_tracked_keys` ordinary keys (plus overflow keys).
    pub fn new(clock: SharedClock, max_tracked_keys: usize) -> Self {
        Self {
            clock,
            map: DashMap::new(),
            tracked: AtomicUsize::new(0),
            cap: max_tracked_keys.max(1),
            last_room_sweep: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Remove keys whose buckets are full again; returns how many. Cells in use right now are
    /// kept (their next sweep will see them).
    pub fn sweep(&self) -> usize {
        let now = self.clock.now_nanos();
        let mut evicted = 0;
        self.map.retain(|_, slot| {
            let Ok(mut cell) = slot.try_lock() else { return true };
            if cell.state.tat_ns <= now {
                cell.dead = true;
                evicted += 1;
                false
            } else {
                true
            }
        });
        self.tracked.fetch_sub(evicted, Ordering::AcqRel);
        // After a flood: give the memory back once the map is mostly empty.
        if evicted > 0 && self.map.len() * 4 < self.map.capacity() {
            self.map.shrink_to_fit();
        }
        evicted
    }

    /// Count one more tracked key, unless the cap is reached.
    fn try_track(&self) -> bool {
        if self.tracked.fetch_add(1, Ordering::AcqRel) < self.cap {
            return true;
        }
        self.tracked.fetch_sub(1, Ordering::AcqRel);
        false
    }

    /// At the cap: sweep now (at most once a second) so that room made by buckets that are
    /// full again goes to newcomers before the overflow does.
    fn make_room(&self) -> bool {
        let now = self.clock.now_nanos();
        let last = self.last_room_sweep.load(Ordering::Acquire);
        if now.saturating_sub(last) < 1_000_000_000
            || self.last_room_sweep.compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire).is_err()
        {
            return false;
        }
        self.sweep() > 0
    }

    /// The cell for a bucket; with `create`, inserted (or redirected to the overflow bucket when
    /// the cap is reached).
    fn slot(&self, b: &BucketSpec, create: bool) -> Option<Slot> {
        if let Some(s) = self.map.get(b.key.as_str()) {
            return Some(s.clone());
        }
        if !create {
            return None;
        }
        // Take a place under the cap before inserting, so concurrent inserts cannot overshoot.
        let tracked = self.try_track() || (self.make_room() && self.try_track());
        if !tracked {
            return Some(self.insert(&format!("{}~overflow|{}", b.scope.key_prefix(), b.horizon), false));
        }
        Some(self.insert(&b.key, true))
    }

    /// Insert-or-get; `counted` says the caller already took a place in `tracked`.
    fn insert(&self, key: &str, counted: bool) -> Slot {
        match self.map.entry(key.into()) {
            Entry::Occupied(o) => {
                if counted {
                    self.tracked.fetch_sub(1, Ordering::AcqRel);
                }
                o.get().clone()
            }
            Entry::Vacant(v) => {
                if !counted {
                    self.tracked.fetch_add(1, Ordering::AcqRel);
                }
                v.insert(Slot::default()).clone()
            }
        }
    }

    /// Look up, lock in a global order, and run `f` with "now" read under the locks.
    fn locked<R>(&self, buckets: &[BucketSpec], create: bool, f: impl Fn(&mut Locked<'_>, u64) -> R) -> R {
        loop {
            let slots: Vec<Option<Slot>> = buckets.iter().map(|b| self.slot(b, create)).collect();
            let mut order: Vec<usize> = (0..slots.len()).filter(|&i| slots[i].is_some()).collect();
            let addr = |i: usize| slots[i].as_ref().map_or(std::ptr::null(), Arc::as_ptr);
            order.sort_by_key(|&i| addr(i));
            let mut l = Locked { guards: Vec::with_capacity(order.len()), at: vec![None; slots.len()] };
            let mut dead = false;
            let mut prev: Option<(*const Mutex<Cell>, usize)> = None;
            for &i in &order {
                let Some(slot) = slots[i].as_ref() else { continue };
                let ptr = Arc::as_ptr(slot);
                if let Some((p, g)) = prev.filter(|(p, _)| *p == ptr) {
                    debug_assert_eq!(p, ptr);
                    l.at[i] = Some(g); // the same cell twice (a caller passed a key twice)
                    continue;
                }
                let guard = slot.lock().unwrap_or_else(PoisonError::into_inner);
                dead |= guard.dead;
                prev = Some((ptr, l.guards.len()));
                l.at[i] = Some(l.guards.len());
                l.guards.push(guard);
            }
            if dead {
                continue; // evicted between lookup and lock: look up again
            }
            let now = self.clock.now_nanos();
            return f(&mut l, now);
        }
    }

    fn reserve_now(&self, buckets: &[BucketSpec], cost: CostMode) -> ReserveOutcome {
        let params: Vec<Params> = buckets.iter().map(BucketSpec::params).collect();
        self.locked(buckets, true, |l, now| {
            let tats: Vec<u64> = (0..buckets.len()).map(|i| l.tat(i, &params[i], now)).collect();
            let out = store::decide(buckets, &params, &tats, now, cost);
            if let ReserveOutcome::Granted { granted, .. } = out {
                for (i, p) in params.iter().enumerate() {
                    let tat = l.tat(i, p, now); // re-read: a key passed twice is charged twice
                    l.set(i, gcra::charge(tat, p, now, granted), p, now);
                }
            }
            out
        })
    }

    fn settle_now(&self, buckets: &[BucketSpec], delta: i64) {
        if delta == 0 {
            return;
        }
        let params: Vec<Params> = buckets.iter().map(BucketSpec::params).collect();
        // A refund to an unknown key is a no-op (it is full already): do not create it.
        self.locked(buckets, delta > 0, |l, now| {
            for (i, p) in params.iter().enumerate() {
                let tat = l.tat(i, p, now);
                l.set(i, store::settle_one(tat, p, now, delta), p, now);
            }
        })
    }

    /// One pass over the map, a shard's read lock at a time and each matching cell's lock for
    /// one read (requests on other keys do not wait; one on a matching key waits that long);
    /// only a bucket that enters the top `n` has its key copied. About 50 ms per 100,000 keys
    /// on one core, 0.5 s at the default cap of 1,000,000 keys (release build, the
    /// `million_keys_stay_under_the_bound` test prints it). Overflow buckets
    /// (`a~overflow|day`) are not subjects and are left out.
    fn top_now(&self, shape: &BucketSpec, prefix: &str, n: usize) -> TopList {
        let p = shape.params();
        let suffix = format!("|{}", shape.horizon);
        let now = self.clock.now_nanos();
        let (mut top, mut scanned) = (store::Heaviest::new(n), 0u64);
        for e in &self.map {
            scanned += 1;
            let key = e.key();
            if !key.starts_with(prefix) || !key.ends_with(suffix.as_str()) || key.len() < prefix.len() + suffix.len() {
                continue;
            }
            let cell = e.value().lock().unwrap_or_else(PoisonError::into_inner);
            let (state, dead) = (cell.state, cell.dead);
            drop(cell);
            if !dead {
                top.offer(gcra::used(gcra::rebase(state, &p, now), &p, now), || key.to_string());
            }
        }
        TopList { entries: top.into_sorted(), scanned, complete: true }
    }

    /// Forget these keys (a missing key is a full bucket); how many held spending. A cell is
    /// marked dead under its lock as the sweeper does, so an operation that looked it up before
    /// takes a fresh (full) one instead of charging the forgotten one.
    fn reset_now(&self, buckets: &[BucketSpec]) -> usize {
        let now = self.clock.now_nanos();
        let mut spent = 0;
        for b in buckets {
            let Some((_, slot)) = self.map.remove(b.key.as_str()) else { continue };
            let mut cell = slot.lock().unwrap_or_else(PoisonError::into_inner);
            cell.dead = true;
            spent += usize::from(cell.state.tat_ns > now);
            self.tracked.fetch_sub(1, Ordering::AcqRel);
        }
        spent
    }

    fn peek_now(&self, buckets: &[BucketSpec]) -> Vec<BucketState> {
        let params: Vec<Params> = buckets.iter().map(BucketSpec::params).collect();
        self.locked(buckets, false, |l, now| {
            (0..buckets.len()).map(|i| store::peek_one(l.tat(i, &params[i], now), &params[i], now)).collect()
        })
    }
}

impl QuotaStore for MemoryStore {
    fn reserve<'a>(
        &'a self,
        buckets: &'a [BucketSpec],
        cost: CostMode,
    ) -> BoxFuture<'a, Result<ReserveOutcome, StoreError>> {
        Box::pin(async move { Ok(self.reserve_now(buckets, cost)) })
    }

    fn settle<'a>(&'a self, buckets: &'a [BucketSpec], delta: i64) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.settle_now(buckets, delta);
            Ok(())
        })
    }

    fn peek<'a>(&'a self, buckets: &'a [BucketSpec]) -> BoxFuture<'a, Result<Vec<BucketState>, StoreError>> {
        Box::pin(async move { Ok(self.peek_now(buckets)) })
    }

    fn top<'a>(
        &'a self,
        shape: &'a BucketSpec,
        prefix: &'a str,
        n: usize,
    ) -> BoxFuture<'a, Result<TopList, StoreError>> {
        Box::pin(async move { Ok(self.top_now(shape, prefix, n)) })
    }

    fn reset<'a>(&'a self, buckets: &'a [BucketSpec]) -> BoxFuture<'a, Result<usize, StoreError>> {
        Box::pin(async move { Ok(self.reset_now(buckets)) })
    }

    fn tracked_keys(&self) -> usize {
        self.tracked.load(Ordering::Acquire)
    }

    fn sweep(&self) -> usize {
        MemoryStore::sweep(self)
    }

    fn save(&self) -> Option<Vec<u8>> {
        let now = self.clock.now_nanos();
        let mut out = Vec::with_capacity(self.map.len() * 64);
        for e in &self.map {
            let cell = e.value().lock().unwrap_or_else(PoisonError::into_inner);
            let st = cell.state;
            drop(cell);
            if st.tat_ns <= now || e.key().contains("~overflow|") {
                continue; // full again: nothing spent to remember
            }
            let line = (e.key().as_ref(), st.tat_ns, st.interval_ns, st.base_ns);
            if serde_json::to_writer(&mut out, &line).is_ok() {
                out.push(b'\n');
            }
        }
        Some(out)
    }

    fn load(&self, snapshot: &[u8]) -> usize {
        let mut n = 0;
        for line in snapshot.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let Ok((key, tat_ns, interval_ns, base_ns)) = serde_json::from_slice::<(String, u64, u64, u64)>(line)
            else {
                continue; // a torn last line of an old crash: skip it, keep the rest
            };
            if self.tracked.load(Ordering::Acquire) >= self.cap {
                break;
            }
            let slot = self.insert(&key, false);
            slot.lock().unwrap_or_else(PoisonError::into_inner).state = GcraState { tat_ns, interval_ns, base_ns };
            n += 1;
        }
        n
    }
}
