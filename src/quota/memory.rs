//! The in-process quota store: bucket states in a `DashMap`, one lockable cell per subject
//! holding all its horizons, exact under concurrency, bounded in memory.
//!
//! # One cell per subject
//! A request's ~11 buckets belong to 5 subjects (`a:acct-1`, `o:12345678`, `i:203.0.113.0/24`,
//! `c:NL`, `g`), each with its horizons (`burst`, `hour`, `day`, ...). The map is keyed by the
//! subject (a bucket key `a:acct-1|day` less its `|horizon`), and the subject's cell holds a state
//! per horizon: 5 map lookups and 5 locks per request instead of 11, and the horizons of one
//! subject side by side in memory. A horizon with no state in the cell is a full bucket.
//!
//! # Atomicity without a global lock
//! Each subject maps to its own `Arc<Mutex<Cell>>`. A multi-bucket operation clones the `Arc`s
//! out of the map (shard locks are held only for the lookup, never while a cell is locked), then
//! locks the cells in address order — one global order, so two requests sharing subjects can
//! never deadlock — reads "now", decides and writes all states, and unlocks. Requests that share
//! no subject never wait for each other.
//!
//! # Eviction
//! [`MemoryStore::sweep`] (the proxy calls it every second) drops states whose bucket is full
//! again (`tat ≤ now`) and removes subjects left with none: forgetting a full bucket loses
//! nothing, forgetting a spent one would hand out fresh quota, so spent buckets are never
//! evicted. A cell is marked `dead` under its own lock before it leaves the map; an operation
//! that finds a dead cell after locking retries with a fresh lookup, so a charge can never land
//! in an evicted cell.
//!
//! # Key flooding
//! At most `max_tracked_keys` ordinary subjects are held. When full, a NEW subject is not
//! inserted: its charges go to a shared overflow subject for that scope (`i~overflow`, its
//! horizons as `i~overflow|day`) with the same limits. Rotating IPv6 prefixes therefore buys one
//! prefix's quota in total, memory stays bounded, and subjects already tracked keep their own
//! buckets. Before a newcomer is sent to the overflow, the store makes room by evicting the
//! subjects that are full again (at most one such sweep a second): a returning employer whose idle
//! buckets were forgotten gets its own, not the overflow a flood used up. Overflow subjects (≤ one
//! per scope) come on top of the cap. After a sweep that removed most subjects, the map gives its
//! memory back.
//!
//! # Memory
//! Per subject: the map slot (`Box<str>` 16 B + `Arc` 8 B, at hashbrown's 50–87% load ≈ 28–48
//! B), the key text (≈ 24–40 B, one allocation), and the cell (`Arc` header 16 B + mutex 4 B +
//! two inline horizon states of 40 B + length = 112 B, one allocation; a third horizon moves
//! them to the heap); with allocator overhead ≈ 200 B for a subject with one or two horizons.
//! Bound: [`BYTES_PER_KEY_BOUND`] = 256 B, so the default 1,000,000 subjects stay under 256 MB.
//! Checked by the `million_keys_stay_under_the_bound` test with `/proc/self/statm`.
//!
//! # Why by hand
//! A GCRA cell per subject that survives reloads (a horizon's interval is rebased on the next
//! touch), is charged all-or-nothing with other subjects' cells, and bounds its memory under a
//! key flood: the rate-limiting crates (`governor` and others) keep one bucket per key with fixed
//! parameters and no multi-key transaction, so the store is ours; the map is `dashmap`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use futures_util::future::BoxFuture;
use smallvec::SmallVec;

use super::gcra::{self, GcraState, Params};
use super::store::{self, BucketSpec, BucketState, CostMode, QuotaStore, ReserveOutcome, StoreError, TopList};
use crate::clock::SharedClock;

/// Upper bound on resident bytes per tracked subject (see the module doc).
pub const BYTES_PER_KEY_BOUND: usize = 256;

/// A request's buckets (11 with the shipped config) fit without a heap allocation.
type PerBucket<T> = SmallVec<[T; 16]>;

/// One subject's buckets: a state per horizon that is not full, and whether the sweeper took it.
#[derive(Debug, Default)]
struct Cell {
    states: SmallVec<[(Arc<str>, GcraState); 2]>,
    /// Set by the sweeper (or a reset), under this lock, just before the subject leaves the map.
    dead: bool,
}

impl Cell {
    fn get(&self, horizon: &Arc<str>) -> Option<GcraState> {
        self.states.iter().find(|(h, _)| Arc::ptr_eq(h, horizon) || **h == **horizon).map(|(_, s)| *s)
    }

    /// Store a horizon's state; a full bucket (`tat ≤ now`) is the same as none, so it is dropped.
    fn put(&mut self, horizon: &Arc<str>, state: GcraState, now: u64) {
        let at = self.states.iter().position(|(h, _)| Arc::ptr_eq(h, horizon) || **h == **horizon);
        match (at, state.tat_ns > now) {
            (Some(i), true) => self.states[i].1 = state,
            (Some(i), false) => {
                self.states.swap_remove(i);
            }
            (None, true) => self.states.push((horizon.clone(), state)),
            (None, false) => {}
        }
    }

    /// Drop the states that are full again; whether any spending is left.
    fn prune(&mut self, now: u64) -> bool {
        self.states.retain(|(_, s)| s.tat_ns > now);
        !self.states.is_empty()
    }
}

type Slot = Arc<Mutex<Cell>>;

/// The subject a bucket belongs to: its key less `|{horizon}` (`a:acct-1` of `a:acct-1|day`);
/// a key without that suffix (tools, tests) is a subject of its own.
fn subject_of(b: &BucketSpec) -> &str {
    b.key.strip_suffix(&*b.horizon).and_then(|k| k.strip_suffix('|')).unwrap_or(&b.key)
}

/// The default store: no setup, state lives as long as the process.
pub struct MemoryStore {
    clock: SharedClock,
    map: DashMap<Box<str>, Slot, foldhash::fast::RandomState>,
    /// Subjects in `map`, maintained alongside it so the cap check is one atomic op.
    tracked: AtomicUsize,
    cap: usize,
    /// When the last sweep made on the request path (at the cap) ran, in clock nanoseconds.
    last_room_sweep: AtomicU64,
}

/// Cells of one operation, locked in address order; `at[i]` is bucket `i`'s guard (`None`: a
/// peek or refund of an unknown subject, whose buckets are full).
struct Locked<'a> {
    guards: SmallVec<[MutexGuard<'a, Cell>; 8]>,
    at: PerBucket<Option<usize>>,
}

impl Locked<'_> {
    fn tat(&self, i: usize, b: &BucketSpec, p: &Params, now: u64) -> u64 {
        match self.at[i].and_then(|g| self.guards[g].get(&b.horizon)) {
            Some(state) => gcra::rebase(state, p, now),
            None => now,
        }
    }

    fn set(&mut self, i: usize, b: &BucketSpec, tat: u64, p: &Params, now: u64) {
        if let Some(g) = self.at[i] {
            self.guards[g].put(&b.horizon, store::stored(tat, p, now), now);
        }
    }
}

impl MemoryStore {
    /// A store tracking at most `max_tracked_keys` ordinary subjects (plus overflow subjects).
    pub fn new(clock: SharedClock, max_tracked_keys: usize) -> Self {
        Self {
            clock,
            map: DashMap::with_hasher(foldhash::fast::RandomState::default()),
            tracked: AtomicUsize::new(0),
            cap: max_tracked_keys.max(1),
            last_room_sweep: AtomicU64::new(0),
        }
    }

    /// Remove subjects whose buckets are all full again; returns how many. Cells in use right
    /// now are kept (their next sweep will see them).
    pub fn sweep(&self) -> usize {
        let now = self.clock.now_nanos();
        let mut evicted = 0;
        self.map.retain(|_, slot| {
            let Ok(mut cell) = slot.try_lock() else { return true };
            if cell.prune(now) {
                return true;
            }
            cell.dead = true;
            evicted += 1;
            false
        });
        self.tracked.fetch_sub(evicted, Ordering::AcqRel);
        // After a flood: give the memory back once the map is mostly empty.
        if evicted > 0 && self.map.len() * 4 < self.map.capacity() {
            self.map.shrink_to_fit();
        }
        evicted
    }

    /// Count one more tracked subject, unless the cap is reached.
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

    /// The cell of `subject` (bucket `b`'s); with `create`, inserted (or redirected to the
    /// overflow subject when the cap is reached).
    fn slot(&self, subject: &str, b: &BucketSpec, create: bool) -> Option<Slot> {
        if let Some(s) = self.map.get(subject) {
            return Some(s.clone());
        }
        if !create {
            return None;
        }
        // Take a place under the cap before inserting, so concurrent inserts cannot overshoot.
        let tracked = self.try_track() || (self.make_room() && self.try_track());
        if !tracked {
            return Some(self.insert(&[b.scope.key_prefix(), "~overflow"].concat(), false));
        }
        Some(self.insert(subject, true))
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

    /// Take a dead cell (a reset emptied it) out of the map, once.
    fn remove_dead(&self, key: &str, slot: &Slot) {
        if self.map.remove_if(key, |_, v| Arc::ptr_eq(v, slot)).is_some() {
            self.tracked.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Look up, lock in a global order, and run `f` with "now" read under the locks.
    fn locked<R>(&self, buckets: &[BucketSpec], create: bool, mut f: impl FnMut(&mut Locked<'_>, u64) -> R) -> R {
        loop {
            // Buckets of one subject are adjacent (the engine orders them by scope): one lookup
            // and one lock per subject. `cells` holds each subject's cell with its first bucket;
            // `of[i]` is bucket `i`'s place in it.
            let mut cells: SmallVec<[(Slot, usize); 8]> = SmallVec::new();
            let mut of: PerBucket<Option<usize>> = PerBucket::with_capacity(buckets.len());
            let mut prev = None;
            for (i, b) in buckets.iter().enumerate() {
                let subject = subject_of(b);
                if prev == Some(subject) {
                    of.push(of[i - 1]);
                    continue;
                }
                prev = Some(subject);
                of.push(self.slot(subject, b, create).map(|slot| {
                    cells.push((slot, i));
                    cells.len() - 1
                }));
            }
            // Lock in address order; a cell met twice (a subject passed apart) is locked once.
            let mut order: SmallVec<[usize; 8]> = (0..cells.len()).collect();
            order.sort_unstable_by_key(|&c| Arc::as_ptr(&cells[c].0));
            let mut guard_of: SmallVec<[usize; 8]> = smallvec::smallvec![0; cells.len()];
            let mut guards: SmallVec<[MutexGuard<'_, Cell>; 8]> = SmallVec::new();
            let mut dead = None;
            let mut last: Option<*const Mutex<Cell>> = None;
            for &c in &order {
                let ptr = Arc::as_ptr(&cells[c].0);
                if last == Some(ptr) {
                    guard_of[c] = guards.len() - 1;
                    continue;
                }
                let guard = cells[c].0.lock().unwrap_or_else(PoisonError::into_inner);
                if guard.dead {
                    dead = Some(c);
                }
                last = Some(ptr);
                guard_of[c] = guards.len();
                guards.push(guard);
            }
            if let Some(c) = dead {
                drop(guards);
                // Evicted between lookup and lock: look up again (a reset's dead cell may still
                // be in the map; take it out first).
                let (slot, i) = &cells[c];
                self.remove_dead(subject_of(&buckets[*i]), slot);
                continue;
            }
            let mut l = Locked { guards, at: of.iter().map(|o| o.map(|c| guard_of[c])).collect() };
            let now = self.clock.now_nanos();
            return f(&mut l, now);
        }
    }

    fn reserve_now(&self, buckets: &[BucketSpec], cost: CostMode) -> ReserveOutcome {
        let params: PerBucket<Params> = buckets.iter().map(BucketSpec::params).collect();
        self.locked(buckets, true, |l, now| {
            let tats: PerBucket<u64> = (0..buckets.len()).map(|i| l.tat(i, &buckets[i], &params[i], now)).collect();
            let out = store::decide(buckets, &params, &tats, now, cost);
            if let ReserveOutcome::Granted { granted, .. } = out {
                for (i, p) in params.iter().enumerate() {
                    let tat = l.tat(i, &buckets[i], p, now); // re-read: a bucket passed twice is charged twice
                    l.set(i, &buckets[i], gcra::charge(tat, p, now, granted), p, now);
                }
            }
            out
        })
    }

    fn settle_now(&self, buckets: &[BucketSpec], delta: i64) {
        if delta == 0 {
            return;
        }
        let params: PerBucket<Params> = buckets.iter().map(BucketSpec::params).collect();
        // A refund to an unknown subject is a no-op (it is full already): do not create it.
        self.locked(buckets, delta > 0, |l, now| {
            for (i, p) in params.iter().enumerate() {
                let tat = l.tat(i, &buckets[i], p, now);
                l.set(i, &buckets[i], store::settle_one(tat, p, now, delta), p, now);
            }
        })
    }

    /// One pass over the map, a shard's read lock at a time and each matching cell's lock for
    /// one read (requests on other subjects do not wait; one on a matching subject waits that
    /// long); only a bucket that enters the top `n` has its key written. About 50 ms per
    /// 100,000 subjects on one core, 0.5 s at the default cap of 1,000,000 (release build, the
    /// `million_keys_stay_under_the_bound` test prints it). Overflow subjects (`a~overflow`)
    /// are not subjects and are left out. `scanned` counts subjects.
    fn top_now(&self, shape: &BucketSpec, prefix: &str, n: usize) -> TopList {
        let p = shape.params();
        let now = self.clock.now_nanos();
        let (mut top, mut scanned) = (store::Heaviest::new(n), 0u64);
        for e in &self.map {
            scanned += 1;
            let key = e.key();
            if !key.starts_with(prefix) {
                continue;
            }
            let cell = e.value().lock().unwrap_or_else(PoisonError::into_inner);
            let (state, dead) = (cell.get(&shape.horizon), cell.dead);
            drop(cell);
            if let Some(state) = state.filter(|_| !dead) {
                top.offer(gcra::used(gcra::rebase(state, &p, now), &p, now), || [key, "|", &shape.horizon].concat());
            }
        }
        TopList { entries: top.into_sorted(), scanned, complete: true }
    }

    /// Forget these buckets (a missing one is full); how many held spending. A subject left
    /// with no bucket is marked dead under its lock as the sweeper does, so an operation that
    /// looked it up before takes a fresh (full) one instead of charging the forgotten one.
    fn reset_now(&self, buckets: &[BucketSpec]) -> usize {
        let now = self.clock.now_nanos();
        let mut spent = 0;
        for b in buckets {
            let Some(slot) = self.map.get(subject_of(b)).map(|s| s.clone()) else { continue };
            let mut cell = slot.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(state) = cell.get(&b.horizon) {
                spent += usize::from(state.tat_ns > now);
                let full = GcraState { tat_ns: 0, ..state };
                cell.put(&b.horizon, full, now);
            }
            let emptied = !cell.dead && cell.states.is_empty();
            cell.dead |= emptied;
            drop(cell);
            if emptied {
                self.remove_dead(subject_of(b), &slot);
            }
        }
        spent
    }

    fn peek_now(&self, buckets: &[BucketSpec]) -> Vec<BucketState> {
        let params: PerBucket<Params> = buckets.iter().map(BucketSpec::params).collect();
        self.locked(buckets, false, |l, now| {
            (0..buckets.len())
                .map(|i| store::peek_one(l.tat(i, &buckets[i], &params[i], now), &params[i], now))
                .collect()
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
            if e.key().contains("~overflow") {
                continue;
            }
            let cell = e.value().lock().unwrap_or_else(PoisonError::into_inner);
            let states: SmallVec<[(Arc<str>, GcraState); 4]> = cell.states.iter().cloned().collect();
            drop(cell);
            // One line per spent bucket under its bucket key, as the store kept them before
            // subjects had cells: old snapshots load, and so do these in an older version.
            for (horizon, st) in states.iter().filter(|(_, st)| st.tat_ns > now) {
                let key = [e.key().as_ref(), "|", horizon].concat();
                if serde_json::to_writer(&mut out, &(key, st.tat_ns, st.interval_ns, st.base_ns)).is_ok() {
                    out.push(b'\n');
                }
            }
        }
        Some(out)
    }

    fn load(&self, snapshot: &[u8]) -> usize {
        let mut n = 0;
        let mut horizons: std::collections::HashMap<String, Arc<str>> = Default::default();
        for line in snapshot.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let Ok((key, tat_ns, interval_ns, base_ns)) = serde_json::from_slice::<(String, u64, u64, u64)>(line)
            else {
                continue; // a torn last line of an old crash: skip it, keep the rest
            };
            let Some((subject, horizon)) = key.rsplit_once('|') else { continue };
            if self.tracked.load(Ordering::Acquire) >= self.cap && self.map.get(subject).is_none() {
                break;
            }
            let horizon = horizons.entry(horizon.to_string()).or_insert_with(|| Arc::from(horizon)).clone();
            let slot = self.insert(subject, false);
            let now = self.clock.now_nanos();
            slot.lock().unwrap_or_else(PoisonError::into_inner).put(
                &horizon,
                GcraState { tat_ns, interval_ns, base_ns },
                now,
            );
            n += 1;
        }
        n
    }
}
