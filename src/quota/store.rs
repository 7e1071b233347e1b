//! The store boundary: what a quota store must do, in memory or in Redis, with the same meaning.
//!
//! The store, not the engine, decides "now" (the memory store asks its clock, Redis uses `TIME`),
//! so replicas with skewed clocks agree. Every call is all-or-nothing over the buckets it is
//! given: either every non-shadow bucket has room and all buckets (shadow ones too, so their
//! counts are real) are charged, or none is.

use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::gcra::{self, GcraState, Params};
use super::Scope;

/// One bucket a request is charged in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketSpec {
    /// `{scope key}|{horizon}`, e.g. `a:acct-123|day`, `i:203.0.113.0/24|hour`, `g|day`.
    pub key: String,
    pub capacity: u64,
    pub window_ns: u64,
    /// `Some(offset)`: a hard cap per fixed window (see [`gcra`]'s module doc), the windows
    /// starting `offset` ns past the Unix epoch; `None`: refilled continuously.
    pub fixed_offset_ns: Option<u64>,
    /// Charged, but never rejects; a rejection it would have made is reported.
    pub shadow: bool,
    pub scope: Scope,
    pub horizon: Arc<str>,
}

impl BucketSpec {
    /// A continuous, non-shadow bucket of `capacity` CVs over `window_ns` (tools, tests and
    /// benches; the engine builds its buckets from the policy).
    pub fn new(key: impl Into<String>, scope: Scope, horizon: &str, capacity: u64, window_ns: u64) -> Self {
        let (key, horizon) = (key.into(), Arc::from(horizon));
        BucketSpec { key, capacity, window_ns, fixed_offset_ns: None, shadow: false, scope, horizon }
    }

    pub fn params(&self) -> Params {
        match self.fixed_offset_ns {
            None => Params::new(self.capacity, self.window_ns),
            Some(offset) => Params::new_fixed(self.capacity, self.window_ns, offset),
        }
    }
}

/// How much to reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CostMode {
    /// Exactly this many, or reject.
    Exact(u64),
    /// As many as fit in every non-shadow bucket, up to `max`; at least `min`, else reject.
    UpTo { max: u64, min: u64 },
}

/// A bucket as the client may see it. In a grant: after charging (`retry_after_secs` 0). In a
/// rejection: untouched, `retry_after_secs` until the requested amount fits this bucket. In a
/// peek: `retry_after_secs` until one CV fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BucketState {
    pub remaining: u64,
    /// Seconds until the bucket is full again.
    pub reset_secs: u64,
    pub retry_after_secs: u64,
}

/// The answer to a reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReserveOutcome {
    Granted {
        granted: u64,
        states: Vec<BucketState>,
        /// Indexes of shadow buckets that would have rejected this request.
        would_reject: Vec<usize>,
    },
    Rejected {
        /// The first non-shadow bucket (in the order given) without room.
        index: usize,
        /// Seconds until the whole request (`min` for `UpTo`) fits in ALL non-shadow buckets.
        retry_after_secs: u64,
        states: Vec<BucketState>,
    },
    /// The request (`min` for `UpTo`) is larger than bucket `index`'s capacity: no wait helps.
    TooLarge { index: usize, states: Vec<BucketState> },
}

/// Whether a store can decide requests now (readiness, see `ops`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Ok,
    /// Deciding, but not as configured (e.g. on local shares while Redis is away).
    Degraded(String),
    /// CV requests are refused (e.g. Redis away and a `fail_closed` scope).
    Down(String),
}

/// One bucket in a [`QuotaStore::top`] answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopEntry {
    /// The bucket's key, e.g. `a:acct-123|day`.
    pub key: String,
    /// CVs used now ([`gcra::used`]: debt beyond the capacity included).
    pub used: u64,
}

/// The heaviest buckets of one scope and horizon, heaviest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopList {
    pub entries: Vec<TopEntry>,
    /// Keys looked at (with Redis: every key `SCAN` walked, matching or not).
    pub scanned: u64,
    /// `false` when the store stopped at its bound before it had seen every key.
    pub complete: bool,
}

/// The `n` heaviest buckets seen so far: a min-heap of `n`, O(log n) per bucket that enters it,
/// O(1) for one that does not (whose key is then never copied).
pub struct Heaviest {
    n: usize,
    heap: std::collections::BinaryHeap<std::cmp::Reverse<(u64, std::cmp::Reverse<String>)>>,
}

impl Heaviest {
    pub fn new(n: usize) -> Self {
        Self { n, heap: std::collections::BinaryHeap::with_capacity(n.saturating_add(1).min(4096)) }
    }

    /// Offer a bucket that used `used` CVs; `key` is called only when it enters. Unused
    /// buckets never do.
    pub fn offer(&mut self, used: u64, key: impl FnOnce() -> String) {
        use std::cmp::Reverse;
        if used == 0 || self.n == 0 {
            return;
        }
        if self.heap.len() == self.n && self.heap.peek().is_some_and(|Reverse((least, _))| used < *least) {
            return;
        }
        self.heap.push(Reverse((used, Reverse(key()))));
        if self.heap.len() > self.n {
            self.heap.pop();
        }
    }

    /// Heaviest first (ties: key order).
    pub fn into_sorted(self) -> Vec<TopEntry> {
        let mut out: Vec<TopEntry> = self
            .heap
            .into_iter()
            .map(|std::cmp::Reverse((used, std::cmp::Reverse(key)))| TopEntry { key, used })
            .collect();
        out.sort_by(|a, b| b.used.cmp(&a.used).then_with(|| a.key.cmp(&b.key)));
        out
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("quota store unavailable: {0}")]
    Unavailable(String),
    #[error("quota store timed out")]
    Timeout,
}

/// A place where bucket states live. Dyn-compatible so the proxy can hold `Arc<dyn QuotaStore>`.
pub trait QuotaStore: Send + Sync {
    /// Check all buckets and charge them all, or none.
    fn reserve<'a>(
        &'a self,
        buckets: &'a [BucketSpec],
        cost: CostMode,
    ) -> BoxFuture<'a, Result<ReserveOutcome, StoreError>>;
    /// `delta > 0`: charge more (forced, may go into debt); `delta < 0`: refund. All buckets.
    fn settle<'a>(&'a self, buckets: &'a [BucketSpec], delta: i64) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Current states, changing nothing (an unknown key is a full bucket).
    fn peek<'a>(&'a self, buckets: &'a [BucketSpec]) -> BoxFuture<'a, Result<Vec<BucketState>, StoreError>>;
    /// The `n` buckets with the most CVs used (none unused), heaviest first: the keys that
    /// start with `prefix` (one scope, e.g. `a:`) and end in `|{shape.horizon}`, each read with
    /// `shape` (the horizon's configured shape: spent CVs are the same whatever tier wrote a
    /// bucket, see [`gcra::rebase`]). Bounded work; each store documents its cost.
    fn top<'a>(
        &'a self,
        shape: &'a BucketSpec,
        prefix: &'a str,
        n: usize,
    ) -> BoxFuture<'a, Result<TopList, StoreError>>;
    /// Refill these buckets now (their keys are forgotten: a missing key is a full bucket);
    /// how many of them held spending.
    fn reset<'a>(&'a self, buckets: &'a [BucketSpec]) -> BoxFuture<'a, Result<usize, StoreError>>;
    /// Keys held locally (0 for a remote store).
    fn tracked_keys(&self) -> usize;
    /// Can the store decide requests now? A local store always can; a remote one asks its
    /// server (one round trip).
    fn health(&self) -> BoxFuture<'_, Health> {
        Box::pin(async { Health::Ok })
    }
    /// Evict idle keys whose buckets are full again; returns how many. A remote store expires
    /// keys itself (TTL = time until full), hence the default.
    fn sweep(&self) -> usize {
        0
    }
    /// The buckets that are not full, as JSON lines (`[key, tat_ns, interval_ns, base_ns]`), for
    /// a snapshot a restart reads back; `None` for a store that keeps its own state (Redis).
    fn save(&self) -> Option<Vec<u8>> {
        None
    }
    /// Read back a [`QuotaStore::save`]d snapshot; how many buckets it held.
    fn load(&self, _snapshot: &[u8]) -> usize {
        0
    }
}

/// The decision over a set of buckets, shared by every store so they cannot disagree.
/// `params[i]` is bucket `i`'s shape as the store computes with it and `tats` are rebased (see
/// [`gcra::rebase`]); on `Granted` the caller charges `granted` to all.
pub fn decide(buckets: &[BucketSpec], params: &[Params], tats: &[u64], now: u64, cost: CostMode) -> ReserveOutcome {
    let (want, min) = match cost {
        CostMode::Exact(n) => (n, n),
        CostMode::UpTo { max, min } => (max, min.min(max)),
    };
    // How many fit everywhere that counts.
    let mut fit = want;
    for (i, p) in params.iter().enumerate() {
        if !buckets[i].shadow {
            fit = fit.min(gcra::check(tats[i], p, now, 0).remaining);
        }
    }
    if fit >= min && gcra_all_allow(buckets, params, tats, now, fit) {
        let would_reject = (0..buckets.len())
            .filter(|&i| buckets[i].shadow && !gcra::check(tats[i], &params[i], now, fit).allowed)
            .collect();
        let states = (0..buckets.len())
            .map(|i| {
                let tat = gcra::charge(tats[i], &params[i], now, fit);
                let c = gcra::check(tat, &params[i], now, 0);
                BucketState { remaining: c.remaining, reset_secs: gcra::ceil_secs(c.reset_ns), retry_after_secs: 0 }
            })
            .collect();
        return ReserveOutcome::Granted { granted: fit, states, would_reject };
    }
    let checks: Vec<gcra::Check> = (0..buckets.len()).map(|i| gcra::check(tats[i], &params[i], now, min)).collect();
    let states = checks
        .iter()
        .map(|c| BucketState {
            remaining: c.remaining,
            reset_secs: gcra::ceil_secs(c.reset_ns),
            retry_after_secs: gcra::ceil_secs(c.retry_after_ns.unwrap_or(0)),
        })
        .collect();
    let binding = |i: &usize| !buckets[*i].shadow;
    if let Some(index) = (0..buckets.len()).filter(binding).find(|&i| checks[i].retry_after_ns.is_none()) {
        return ReserveOutcome::TooLarge { index, states };
    }
    let index = (0..buckets.len()).filter(binding).find(|&i| !checks[i].allowed).unwrap_or(0);
    let wait = (0..buckets.len()).filter(binding).filter_map(|i| checks[i].retry_after_ns).max().unwrap_or(0);
    ReserveOutcome::Rejected { index, retry_after_secs: gcra::ceil_secs(wait), states }
}

/// `fit` comes from `remaining`, which already implies `allowed`; checked again because the
/// all-or-nothing guarantee must not hinge on that reasoning (and `fit == 0` with a bucket in
/// debt is a rejection, not a free pass).
fn gcra_all_allow(buckets: &[BucketSpec], params: &[Params], tats: &[u64], now: u64, fit: u64) -> bool {
    (0..buckets.len()).all(|i| buckets[i].shadow || gcra::check(tats[i], &params[i], now, fit).allowed)
}

/// Apply a settle delta to one bucket state (already rebased to `p`).
pub fn settle_one(tat: u64, p: &Params, now: u64, delta: i64) -> u64 {
    if delta >= 0 {
        gcra::charge(tat, p, now, delta.unsigned_abs())
    } else {
        gcra::refund(tat, p, now, delta.unsigned_abs())
    }
}

/// The state a store writes back at `now` after charging/refunding with `p`.
pub fn stored(tat: u64, p: &Params, now: u64) -> GcraState {
    GcraState { tat_ns: tat, interval_ns: p.interval_ns(), base_ns: p.stored_base(now) }
}

/// The state one bucket shows in a peek.
pub fn peek_one(tat: u64, p: &Params, now: u64) -> BucketState {
    let c = gcra::check(tat, p, now, 1);
    BucketState {
        remaining: c.remaining,
        reset_secs: gcra::ceil_secs(c.reset_ns),
        retry_after_secs: gcra::ceil_secs(c.retry_after_ns.unwrap_or(0)),
    }
}
