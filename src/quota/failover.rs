//! Choosing the quota store, and what happens when the shared one fails: the `store:` config
//! section, a circuit breaker, and the fail-closed / fail-open-to-local policy per scope.
//!
//! # Policy
//! Each scope has a [`FailurePolicy`] (`store.redis.failure_policy`, `default` for the rest).
//! When Redis fails (error or timeout) or the breaker is open, a request is decided right there:
//! - if any of its non-shadow buckets belongs to a `fail_closed` scope, the store answers
//!   [`StoreError`] and the proxy answers 503 `quota-unavailable`;
//! - otherwise (`fail_open_local`) it is decided by a local [`MemoryStore`] whose buckets hold
//!   this replica's share: capacity ÷ `replicas` (rounded down, at least 1), same window, so the
//!   replicas together never hand out more than the budget while Redis is away.
//!
//! # Breaker
//! After `failures` consecutive failed calls the breaker opens: no call goes to Redis, every
//! request takes the policy at once. Every `probe_every` one request is let through as a probe;
//! its success closes the breaker (Redis is back, no restart needed), its failure keeps it open
//! for another period. So a dead Redis costs at most one timeout per probe period, not one per
//! request.
//!
//! # Settle
//! A settle goes to where reservations currently go (Redis when the breaker is closed, the local
//! share otherwise). Reservations in flight across a switch are settled in the other store; the
//! error is bounded by their size and only at the moment of switching (docs/redis.md).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::future::BoxFuture;
use prometheus::{IntCounterVec, IntGauge};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::memory::MemoryStore;
use super::redis::{RedisSettings, RedisStore};
use super::store::{BucketSpec, BucketState, CostMode, Health, QuotaStore, ReserveOutcome, StoreError, TopList};
use super::Scope;
use crate::clock::SharedClock;
use crate::invalid::Invalid;
use crate::observe::metrics::Metrics;

// ---------------------------------------------------------------------------------------------
// Config

/// `store:` as written in YAML.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RawStore {
    /// `memory` (default, one process) or `redis` (shared by every replica).
    pub kind: String,
    pub redis: RawRedis,
    /// The memory store's spent buckets, written every `snapshot_every` and at shutdown, read
    /// at start: a restart or deploy is not a free refill. `null`: kept in memory only.
    pub snapshot: Option<String>,
    pub snapshot_every: String,
}

impl Default for RawStore {
    fn default() -> Self {
        Self {
            kind: "memory".into(),
            redis: RawRedis::default(),
            snapshot: Some("state/quota.jsonl".into()),
            snapshot_every: "60s".into(),
        }
    }
}

/// `store.redis:` as written in YAML.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RawRedis {
    pub url: String,
    /// Upper bound on one Redis call (the request path never waits longer).
    pub timeout: String,
    /// Prepended to every key; must contain a Cluster hash tag such as `{quota}`.
    pub key_prefix: String,
    /// Replicas sharing the budget: each one's local share during an outage is budget ÷ this.
    pub replicas: u64,
    /// Scope name (or `default`) → `fail_closed` | `fail_open_local`.
    pub failure_policy: BTreeMap<String, String>,
    pub breaker: RawBreaker,
}

impl Default for RawRedis {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379/0".into(),
            timeout: "50ms".into(),
            key_prefix: "cvgate:{quota}:".into(),
            replicas: 1,
            failure_policy: BTreeMap::from([("default".into(), "fail_closed".into())]),
            breaker: RawBreaker::default(),
        }
    }
}

/// `store.redis.breaker:` as written in YAML.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RawBreaker {
    /// Consecutive failed calls that open the breaker.
    pub failures: u32,
    /// While open, one request probes Redis this often.
    pub probe_every: String,
}

impl Default for RawBreaker {
    fn default() -> Self {
        Self { failures: 5, probe_every: "2s".into() }
    }
}

/// What to do with a scope's buckets while the shared store is unavailable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Refuse the request (503 `quota-unavailable`).
    FailClosed,
    /// Decide it on this replica's share of the budget, in memory.
    FailOpenLocal,
}

/// The validated `store:` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    Memory,
    Redis(RedisConfig),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    pub settings: RedisSettings,
    pub replicas: u64,
    /// Indexed by `Scope as usize`.
    pub policy: [FailurePolicy; 5],
    pub breaker_failures: u32,
    pub probe_every: Duration,
}

impl StoreConfig {
    /// Validate `store:`.
    ///
    /// # Errors
    /// Every problem found, each with its key path relative to `store`.
    pub fn from_raw(raw: &RawStore) -> Result<StoreConfig, Invalid> {
        let mut errs = Invalid::new();
        let r = &raw.redis;
        let timeout = errs.positive_duration("redis.timeout", &r.timeout).unwrap_or_default();
        if timeout > Duration::from_secs(1) {
            errs.push("redis.timeout", "at most 1s: the request path must never wait seconds");
        }
        let probe_every =
            errs.positive_duration("redis.breaker.probe_every", &r.breaker.probe_every).unwrap_or_default();
        if r.breaker.failures == 0 {
            errs.push("redis.breaker.failures", "must be at least 1");
        }
        if r.replicas == 0 {
            errs.push("redis.replicas", "must be at least 1");
        }
        if !has_hash_tag(&r.key_prefix) {
            errs.push(
                "redis.key_prefix",
                format!(
                    "must contain a non-empty hash tag such as {{quota}} (one Cluster slot for all keys), got {:?}",
                    r.key_prefix
                ),
            );
        }
        if let Err(e) = redis::Client::open(r.url.as_str()) {
            errs.push("redis.url", format!("not a Redis URL like redis://host:6379/0: {e}"));
        } else if r.url.starts_with("rediss:") {
            errs.push("redis.url", "TLS (rediss://) is not built in; use redis:// on a private network");
        }
        let parse = |errs: &mut Invalid, k: &str, v: &str| match v {
            "fail_closed" => Some(FailurePolicy::FailClosed),
            "fail_open_local" => Some(FailurePolicy::FailOpenLocal),
            _ => {
                errs.push(
                    format!("redis.failure_policy.{k}"),
                    format!("expected fail_closed or fail_open_local, got {v:?}"),
                );
                None
            }
        };
        let default = r.failure_policy.get("default").and_then(|v| parse(&mut errs, "default", v));
        let mut policy = [default.unwrap_or(FailurePolicy::FailClosed); 5];
        for (k, v) in &r.failure_policy {
            if k == "default" {
                continue;
            }
            match Scope::ALL.iter().find(|s| s.as_str() == k) {
                Some(&s) => {
                    if let Some(p) = parse(&mut errs, k, v) {
                        policy[s as usize] = p;
                    }
                }
                None => errs.push(
                    format!("redis.failure_policy.{k}"),
                    "unknown scope (default, account, org, ip, country, global)",
                ),
            }
        }
        let kind = match raw.kind.as_str() {
            "memory" => Some(false),
            "redis" => Some(true),
            other => {
                errs.push("kind", format!("expected memory or redis, got {other:?}"));
                None
            }
        };
        errs.into_result(match kind {
            Some(true) => StoreConfig::Redis(RedisConfig {
                settings: RedisSettings { url: r.url.clone(), timeout, key_prefix: r.key_prefix.clone() },
                replicas: r.replicas,
                policy,
                breaker_failures: r.breaker.failures,
                probe_every,
            }),
            _ => StoreConfig::Memory,
        })
    }
}

/// A Redis Cluster hash tag: the text between the first `{` and the next `}`, non-empty.
fn has_hash_tag(prefix: &str) -> bool {
    prefix.find('{').is_some_and(|open| prefix[open + 1..].find('}').is_some_and(|len| len > 0))
}

/// Handle to the flags every replica shares (blocks, pauses), when the store is Redis.
pub type SharedFlagsHandle = Arc<dyn super::redis::SharedFlags>;

/// The store the config asks for: the memory store, or Redis behind the breaker and policy; with
/// Redis also the shared flags through which blocks and pauses reach every replica.
///
/// # Errors
/// When the Redis client cannot be built (the URL was validated, so hardly ever).
pub fn build_store(
    config: &StoreConfig,
    clock: SharedClock,
    max_tracked_keys: usize,
    metrics: &Metrics,
) -> Result<(Arc<dyn QuotaStore>, Option<SharedFlagsHandle>), StoreError> {
    Ok(match config {
        StoreConfig::Memory => (Arc::new(MemoryStore::new(clock, max_tracked_keys)), None),
        StoreConfig::Redis(c) => {
            let remote = Arc::new(RedisStore::new(&c.settings)?);
            let local = MemoryStore::new(clock, max_tracked_keys);
            let flags: Arc<dyn super::redis::SharedFlags> = remote.clone();
            (Arc::new(FailoverStore::new(remote, local, c, FailoverMetrics::from(metrics))), Some(flags))
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Breaker

/// Where the next call goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Remote,
    /// Breaker open, probe period over: this call tries Redis.
    Probe,
    /// Breaker open: decide by policy without calling Redis.
    Fallback,
}

/// Consecutive-failure circuit breaker with one probe per period. Monotonic time (tokio's), as
/// for every I/O timeout: this is not a decision about the time of day. While closed (the
/// common case) a call reads one atomic and a success writes nothing: no lock every request
/// shares; the mutex guards only the probe schedule while open.
#[derive(Debug)]
pub struct Breaker {
    open: AtomicBool,
    failures: AtomicU32,
    next_probe: Mutex<Instant>,
    failures_to_open: u32,
    probe_every: Duration,
    open_gauge: IntGauge,
}

impl Breaker {
    pub fn new(failures_to_open: u32, probe_every: Duration, open_gauge: IntGauge) -> Self {
        Self {
            open: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            next_probe: Mutex::new(Instant::now()),
            failures_to_open: failures_to_open.max(1),
            probe_every,
            open_gauge,
        }
    }

    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    fn next_probe(&self) -> std::sync::MutexGuard<'_, Instant> {
        self.next_probe.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn route(&self) -> Route {
        if !self.is_open() {
            return Route::Remote;
        }
        let mut next = self.next_probe();
        let now = Instant::now();
        if now >= *next {
            *next = now + self.probe_every; // one probe per period, even if it hangs
            Route::Probe
        } else {
            Route::Fallback
        }
    }

    fn record(&self, ok: bool) {
        if ok {
            if self.failures.load(Ordering::Relaxed) != 0 {
                self.failures.store(0, Ordering::Relaxed);
            }
            if self.open.swap(false, Ordering::AcqRel) {
                tracing::info!("quota store answers again: breaker closed, back to the shared store");
                self.open_gauge.set(0);
            }
            return;
        }
        if self.is_open() {
            return; // the next probe stays as scheduled
        }
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if failures >= self.failures_to_open {
            let mut next = self.next_probe();
            if !self.open.swap(true, Ordering::AcqRel) {
                *next = Instant::now() + self.probe_every;
                self.failures.store(0, Ordering::Relaxed);
                tracing::warn!(failures, probe_every = ?self.probe_every, "quota store failing: breaker open");
                self.open_gauge.set(1);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The failover store

/// Metric handles the failover store updates (families live in [`Metrics`]).
#[derive(Clone)]
pub struct FailoverMetrics {
    /// `cvgate_quota_store_breaker_open`.
    pub breaker_open: IntGauge,
    /// `cvgate_quota_store_fallback_total{decision, reason}`.
    pub fallback: IntCounterVec,
    /// `cvgate_quota_store_errors_total{op}`: failed remote calls absorbed here (a reserve error
    /// handed to the proxy is counted there).
    pub store_errors: IntCounterVec,
}

impl From<&Metrics> for FailoverMetrics {
    fn from(m: &Metrics) -> Self {
        Self {
            breaker_open: m.quota_store_breaker_open.clone(),
            fallback: m.quota_store_fallback.clone(),
            store_errors: m.store_errors.clone(),
        }
    }
}

/// A shared store behind a breaker, with the per-scope failure policy and local shares.
pub struct FailoverStore {
    remote: Arc<dyn QuotaStore>,
    local: MemoryStore,
    replicas: u64,
    policy: [FailurePolicy; 5],
    breaker: Breaker,
    metrics: FailoverMetrics,
}

impl FailoverStore {
    pub fn new(remote: Arc<dyn QuotaStore>, local: MemoryStore, c: &RedisConfig, metrics: FailoverMetrics) -> Self {
        let breaker = Breaker::new(c.breaker_failures, c.probe_every, metrics.breaker_open.clone());
        Self { remote, local, replicas: c.replicas.max(1), policy: c.policy, breaker, metrics }
    }

    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// This replica's share of each bucket.
    fn local_specs(&self, buckets: &[BucketSpec]) -> Vec<BucketSpec> {
        buckets.iter().map(|b| BucketSpec { capacity: (b.capacity / self.replicas).max(1), ..b.clone() }).collect()
    }

    /// The policy decision for one request without the shared store; `reason` for metrics.
    async fn fallback(
        &self,
        buckets: &[BucketSpec],
        cost: CostMode,
        err: StoreError,
        reason: &'static str,
    ) -> Result<ReserveOutcome, StoreError> {
        let closed = buckets.iter().any(|b| !b.shadow && self.policy[b.scope as usize] == FailurePolicy::FailClosed);
        if closed {
            self.metrics.fallback.with_label_values(&["closed", reason]).inc();
            return Err(err);
        }
        self.metrics.fallback.with_label_values(&["local", reason]).inc();
        self.local.reserve(&self.local_specs(buckets), cost).await
    }
}

fn reason(e: &StoreError) -> &'static str {
    match e {
        StoreError::Timeout => "timeout",
        StoreError::Unavailable(_) => "error",
    }
}

impl QuotaStore for FailoverStore {
    fn reserve<'a>(
        &'a self,
        buckets: &'a [BucketSpec],
        cost: CostMode,
    ) -> BoxFuture<'a, Result<ReserveOutcome, StoreError>> {
        Box::pin(async move {
            match self.breaker.route() {
                Route::Remote | Route::Probe => match self.remote.reserve(buckets, cost).await {
                    Ok(out) => {
                        self.breaker.record(true);
                        Ok(out)
                    }
                    Err(e) => {
                        self.breaker.record(false);
                        let why = reason(&e);
                        let out = self.fallback(buckets, cost, e, why).await;
                        if out.is_ok() {
                            self.metrics.store_errors.with_label_values(&["reserve"]).inc();
                        }
                        out
                    }
                },
                Route::Fallback => {
                    let e = StoreError::Unavailable("quota store breaker open".into());
                    self.fallback(buckets, cost, e, "breaker_open").await
                }
            }
        })
    }

    fn settle<'a>(&'a self, buckets: &'a [BucketSpec], delta: i64) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            if self.breaker.route() != Route::Fallback {
                match self.remote.settle(buckets, delta).await {
                    Ok(()) => {
                        self.breaker.record(true);
                        return Ok(());
                    }
                    Err(e) => {
                        self.breaker.record(false);
                        self.metrics.store_errors.with_label_values(&["settle"]).inc();
                        tracing::warn!(error = %e, delta, "quota settle in the shared store failed; settling locally");
                    }
                }
            }
            self.local.settle(&self.local_specs(buckets), delta).await
        })
    }

    fn peek<'a>(&'a self, buckets: &'a [BucketSpec]) -> BoxFuture<'a, Result<Vec<BucketState>, StoreError>> {
        Box::pin(async move {
            if !self.breaker.is_open() {
                match self.remote.peek(buckets).await {
                    Ok(s) => return Ok(s),
                    Err(e) => {
                        self.metrics.store_errors.with_label_values(&["peek"]).inc();
                        tracing::debug!(error = %e, "quota peek in the shared store failed; showing the local share");
                    }
                }
            }
            self.local.peek(&self.local_specs(buckets)).await
        })
    }

    /// The shared store's heaviest while its breaker is closed; else this replica's local
    /// shares (what it decided on since Redis went away), as `peek` does.
    fn top<'a>(
        &'a self,
        shape: &'a BucketSpec,
        prefix: &'a str,
        n: usize,
    ) -> BoxFuture<'a, Result<TopList, StoreError>> {
        Box::pin(async move {
            if !self.breaker.is_open() {
                match self.remote.top(shape, prefix, n).await {
                    Ok(t) => return Ok(t),
                    Err(e) => {
                        tracing::debug!(error = %e, "quota top in the shared store failed; showing the local shares")
                    }
                }
            }
            self.local.top(&self.local_specs(std::slice::from_ref(shape))[0], prefix, n).await
        })
    }

    /// Both: the local shares (spent while Redis was away) and the shared buckets. The shared
    /// store's failure is the answer's (the local reset has happened by then).
    fn reset<'a>(&'a self, buckets: &'a [BucketSpec]) -> BoxFuture<'a, Result<usize, StoreError>> {
        Box::pin(async move {
            let local = self.local.reset(buckets).await.unwrap_or(0);
            let remote = self.remote.reset(buckets).await?;
            Ok(remote.max(local))
        })
    }

    fn tracked_keys(&self) -> usize {
        self.local.tracked_keys()
    }

    /// Redis away: down when a `fail_closed` scope then refuses CV requests, degraded when every
    /// scope falls back to local shares.
    fn health(&self) -> BoxFuture<'_, Health> {
        Box::pin(async move {
            let why = match self.remote.health().await {
                Health::Ok => return Health::Ok,
                Health::Degraded(why) | Health::Down(why) => why,
            };
            if self.policy.contains(&FailurePolicy::FailClosed) {
                Health::Down(format!("shared quota store unreachable ({why}) and a scope is fail_closed"))
            } else {
                Health::Degraded(format!("shared quota store unreachable ({why}); deciding on local shares"))
            }
        })
    }

    fn sweep(&self) -> usize {
        self.local.sweep()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(y: &str) -> RawStore {
        serde_yaml_ng::from_str(y).unwrap()
    }

    #[test]
    fn default_is_memory() {
        assert_eq!(StoreConfig::from_raw(&RawStore::default()).unwrap(), StoreConfig::Memory);
    }

    #[test]
    fn redis_with_per_scope_policy() {
        let c = StoreConfig::from_raw(&raw(
            "kind: redis\nredis: { url: 'redis://127.0.0.1:7000/2', replicas: 3, failure_policy: { default: fail_open_local, global: fail_closed } }",
        ))
        .unwrap();
        let StoreConfig::Redis(c) = c else { panic!("redis expected") };
        assert_eq!(c.replicas, 3);
        assert_eq!(c.policy[Scope::Account as usize], FailurePolicy::FailOpenLocal);
        assert_eq!(c.policy[Scope::Global as usize], FailurePolicy::FailClosed);
        assert_eq!(c.settings.timeout, Duration::from_millis(50));
    }

    #[test]
    fn every_error_is_reported_with_its_path() {
        let e = StoreConfig::from_raw(&raw(
            "kind: redis-ish\nredis: { url: 'http://x', timeout: 5s, key_prefix: 'cv:', replicas: 0, failure_policy: { account: fail_open, planet: fail_closed }, breaker: { failures: 0, probe_every: soon } }",
        ))
        .unwrap_err();
        let paths: Vec<&str> = e.iter().map(|(p, _)| p.as_str()).collect();
        for want in [
            "kind",
            "redis.url",
            "redis.timeout",
            "redis.key_prefix",
            "redis.replicas",
            "redis.failure_policy.account",
            "redis.failure_policy.planet",
            "redis.breaker.failures",
            "redis.breaker.probe_every",
        ] {
            assert!(paths.contains(&want), "{want} missing from {paths:?}");
        }
    }

    #[test]
    fn hash_tags() {
        assert!(has_hash_tag("cvgate:{quota}:"));
        assert!(!has_hash_tag("cvgate:{}:"));
        assert!(!has_hash_tag("cvgate:"));
        assert!(!has_hash_tag("cvgate:{quota"));
    }

    #[tokio::test(start_paused = true)]
    async fn breaker_opens_after_n_failures_and_probes_once_per_period() {
        let g = IntGauge::new("g", "g").unwrap();
        let b = Breaker::new(3, Duration::from_secs(2), g.clone());
        for _ in 0..2 {
            assert_eq!(b.route(), Route::Remote);
            b.record(false);
        }
        assert_eq!(b.route(), Route::Remote);
        b.record(false);
        assert!(b.is_open());
        assert_eq!(g.get(), 1);
        assert_eq!(b.route(), Route::Fallback);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(b.route(), Route::Probe);
        assert_eq!(b.route(), Route::Fallback, "one probe per period");
        b.record(false);
        assert!(b.is_open());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(b.route(), Route::Probe);
        b.record(true);
        assert!(!b.is_open());
        assert_eq!(g.get(), 0);
        assert_eq!(b.route(), Route::Remote);
    }
}
