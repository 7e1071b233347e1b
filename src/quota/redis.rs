//! The Redis quota store: bucket states shared by every replica, with the memory store's
//! semantics, in one round trip per operation.
//!
//! # One script, one round trip
//! `redis.lua` (loaded once per server, called by `EVALSHA`; redis-rs reloads it on `NOSCRIPT`,
//! e.g. after a Redis restart) reads every bucket of the request, rebases it to the configured
//! interval ([`gcra::rebase`]), decides like [`store::decide`] and charges all buckets or none,
//! atomically (Redis runs a script alone). Settle and peek are one call of the same script.
//! "Now" is Redis `TIME`, read inside the script, so replicas with skewed clocks agree.
//!
//! # Resolution: microseconds
//! Redis Lua numbers are doubles (exact integers up to 2^53); nanoseconds since 1970 (~1.8e18)
//! do not fit, microseconds (~1.8e15) do. So in Redis a bucket's interval is
//! `T_µs = max(1, ⌊W / C / 1000⌋)` (the memory store's `T = ⌊W / C⌋` ns rounded down to a whole
//! microsecond) and time is Redis `TIME` in whole microseconds. The script returns `now` and
//! the rebased `tat`s in µs; Rust multiplies them by 1000 and runs the very same
//! [`store::decide`] on buckets whose window is `C·T_µs·1000`, which reproduces the script's
//! decision exactly and yields the `remaining`/`reset`/`retry-after` numbers. Versus the memory
//! store: a full bucket holds exactly `C` in both; refill is faster by less than 1 µs per CV
//! (relative error < 1 µs / T, i.e. < 3·10⁻⁸ for the default day budget); reset times can
//! differ by one rounding step (1 s in headers). Rebase is exact while `T_old·T_new < 2^53 µs²`
//! and within 1 µs beyond. Absurd values saturate at 2^53 µs (Rust: `u64::MAX` ns).
//!
//! # Keys and TTLs
//! `{key_prefix}{bucket key}`, e.g. `cvgate:{quota}:a:acct-1|day`, a hash `{t: tat_µs,
//! i: T_µs}` mirroring [`GcraState`]. Every write sets a TTL of "until
//! the bucket is full again" + 1 s; a bucket that is full is deleted. A missing key is a full
//! bucket, so expiry loses nothing and idle keys vanish by themselves ([`QuotaStore::sweep`] has
//! nothing to do). The prefix must contain a hash tag (`{quota}`) so that all keys of a request
//! share one Redis Cluster slot (docs/redis.md).
//!
//! # Timeouts
//! Every call is bounded by `timeout` (default 50 ms): a slow or dead Redis costs a request at
//! most that, then [`StoreError::Timeout`]; the caller ([`super::failover`]) applies the failure
//! policy. A reservation that timed out may still have been applied by Redis: that errs on the
//! side of charging too much, never too little.

use std::time::Duration;

use futures_util::future::BoxFuture;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::gcra::{self, GcraState, Params};
use super::store::{self, BucketSpec, BucketState, CostMode, QuotaStore, ReserveOutcome, StoreError, TopList};

/// The script, compiled into the binary.
pub const SCRIPT: &str = include_str!("redis.lua");

pub use super::gcra::NS_PER_US;

/// How to reach Redis and name keys (validated config, see [`super::failover::StoreConfig`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port[/db]` (or `redis+unix:///path`); no TLS.
    pub url: String,
    /// Upper bound on one call, connection wait included.
    pub timeout: Duration,
    /// Prepended to every bucket key; contains a Cluster hash tag such as `{quota}`.
    pub key_prefix: String,
}

/// Bucket states in Redis, shared by every replica using the same Redis and prefix.
pub struct RedisStore {
    conn: ConnectionManager,
    script: redis::Script,
    prefix: String,
    timeout: Duration,
}

impl RedisStore {
    /// A store that connects lazily (start-up does not wait for or require Redis: until Redis
    /// answers, calls fail fast and the failure policy applies). Reconnects by itself.
    ///
    /// # Errors
    /// When the URL is invalid.
    pub fn new(settings: &RedisSettings) -> Result<Self, StoreError> {
        let client = redis::Client::open(settings.url.as_str())
            .map_err(|e| StoreError::Unavailable(format!("redis url: {e}")))?;
        // Reconnection runs in the background; requests never wait on it longer than `timeout`.
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(settings.timeout))
            .set_connection_timeout(Some(Duration::from_secs(1).max(settings.timeout)))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| StoreError::Unavailable(format!("redis: {e}")))?;
        Ok(Self {
            conn,
            script: redis::Script::new(SCRIPT),
            prefix: settings.key_prefix.clone(),
            timeout: settings.timeout,
        })
    }

    /// Run the script with `op`, the buckets' keys and `head` args followed by `per_bucket`
    /// args for each bucket; returns the integer array it answers, within the timeout.
    async fn run(
        &self,
        op: &str,
        buckets: &[BucketSpec],
        head: &[u64],
        signed_head: Option<i64>,
        shadow: bool,
    ) -> Result<Vec<i64>, StoreError> {
        let mut inv = self.script.prepare_invoke();
        for b in buckets {
            inv.key(format!("{}{}", self.prefix, b.key));
        }
        inv.arg(op);
        if let Some(d) = signed_head {
            inv.arg(d);
        }
        for h in head {
            inv.arg(*h);
        }
        for (b, p) in buckets.iter().zip(redis_params(buckets)) {
            inv.arg(&script_args(&p)[..]);
            if shadow {
                inv.arg(u8::from(b.shadow));
            }
        }
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, inv.invoke_async::<Vec<i64>>(&mut conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if e.is_timeout() => Err(StoreError::Timeout),
            Ok(Err(e)) => Err(StoreError::Unavailable(e.to_string())),
            Err(_) => Err(StoreError::Timeout),
        }
    }

    /// One round trip that proves Redis answers (used by tests and readiness checks).
    ///
    /// # Errors
    /// When Redis does not answer within the timeout.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        match tokio::time::timeout(self.timeout, ping).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Unavailable(e.to_string())),
            Err(_) => Err(StoreError::Timeout),
        }
    }

    async fn reserve_remote(&self, buckets: &[BucketSpec], cost: CostMode) -> Result<ReserveOutcome, StoreError> {
        let (want, min) = match cost {
            CostMode::Exact(n) => (n, n),
            CostMode::UpTo { max, min } => (max, min.min(max)),
        };
        let v = self.run("r", buckets, &[want, min], None, true).await?;
        let (now, rest) = split_now(&v, buckets.len() + 1)?;
        let granted = rest[0];
        let tats: Vec<u64> = rest[1..].iter().map(|&t| us_to_ns(t)).collect();
        let out = store::decide(buckets, &redis_params(buckets), &tats, now, cost);
        // The script decided and wrote; `decide` on the same integers must agree. If it ever
        // does not (a bug), what Redis did is the truth for the charge.
        let agrees = match &out {
            ReserveOutcome::Granted { granted: g, .. } => i64::try_from(*g).is_ok_and(|g| g == granted),
            _ => granted < 0,
        };
        if !agrees {
            tracing::error!(script = granted, rust = ?out, "redis quota script and store::decide disagree");
            return Err(StoreError::Unavailable("quota script and decide disagree".into()));
        }
        Ok(out)
    }

    async fn settle_remote(&self, buckets: &[BucketSpec], delta: i64) -> Result<(), StoreError> {
        if delta == 0 || buckets.is_empty() {
            return Ok(());
        }
        self.run("s", buckets, &[], Some(delta), false).await.map(|_| ())
    }

    /// `top`: `SCAN` the keys of one scope and horizon (`MATCH {prefix}a:*|day`, `COUNT`
    /// [`TOP_SCAN_COUNT`]), and for each batch one pipelined `HMGET t i b` per key: two round
    /// trips per call. `SCAN` walks the whole database, matching keys or not (about
    /// `TOP_SCAN_COUNT` keys a call, each call short, so Redis serves others in between), and
    /// stops after [`TOP_SCAN_CALLS`] calls (~200,000 keys walked, a second or so), then says
    /// `complete: false`. "Now" is Redis `TIME`, as in the script.
    async fn top_remote(&self, shape: &BucketSpec, prefix: &str, n: usize) -> Result<TopList, StoreError> {
        let p = redis_params(std::slice::from_ref(shape))[0];
        let pattern = format!("{}{}*|{}", glob_escape(&self.prefix), glob_escape(prefix), glob_escape(&shape.horizon));
        let long = self.timeout * 4;
        let mut conn = self.conn.clone();
        let (secs, micros): (u64, u64) = self.within(long, redis::cmd("TIME").query_async(&mut conn)).await?;
        let now = secs.saturating_mul(1_000_000).saturating_add(micros).saturating_mul(NS_PER_US);
        let (mut cursor, mut calls, mut top, mut scanned) = (0u64, 0u32, store::Heaviest::new(n), 0u64);
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(TOP_SCAN_COUNT);
            let (next, keys): (u64, Vec<String>) = self.within(long, scan.query_async(&mut conn)).await?;
            calls += 1;
            if !keys.is_empty() {
                let mut pipe = redis::pipe();
                for k in &keys {
                    pipe.cmd("HMGET").arg(k).arg("t").arg("i").arg("b");
                }
                type Fields = (Option<u64>, Option<u64>, Option<u64>);
                let states: Vec<Fields> = self.within(long, pipe.query_async(&mut conn)).await?;
                scanned += keys.len() as u64;
                for (key, (t, i, b)) in keys.into_iter().zip(states) {
                    let Some(t) = t else { continue }; // expired since the SCAN: full
                    let state = GcraState {
                        tat_ns: t.saturating_mul(NS_PER_US),
                        interval_ns: i.unwrap_or(0).saturating_mul(NS_PER_US),
                        base_ns: b.unwrap_or(0).saturating_mul(NS_PER_US),
                    };
                    let used = gcra::used(gcra::rebase(state, &p, now), &p, now);
                    top.offer(used, || key.strip_prefix(self.prefix.as_str()).unwrap_or(&key).to_string());
                }
            }
            cursor = next;
            if cursor == 0 || calls >= TOP_SCAN_CALLS {
                break;
            }
        }
        Ok(TopList { entries: top.into_sorted(), scanned, complete: cursor == 0 })
    }

    /// `reset`: one `DEL` of every key (they share a slot); the count is the buckets that held
    /// spending (a full bucket has no key).
    async fn reset_remote(&self, buckets: &[BucketSpec]) -> Result<usize, StoreError> {
        if buckets.is_empty() {
            return Ok(0);
        }
        let mut del = redis::cmd("DEL");
        for b in buckets {
            del.arg(format!("{}{}", self.prefix, b.key));
        }
        let mut conn = self.conn.clone();
        self.within(self.timeout, del.query_async::<usize>(&mut conn)).await
    }

    /// A Redis call bounded by `limit`.
    async fn within<T>(
        &self,
        limit: Duration,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(limit, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if e.is_timeout() => Err(StoreError::Timeout),
            Ok(Err(e)) => Err(StoreError::Unavailable(e.to_string())),
            Err(_) => Err(StoreError::Timeout),
        }
    }

    async fn peek_remote(&self, buckets: &[BucketSpec]) -> Result<Vec<BucketState>, StoreError> {
        if buckets.is_empty() {
            return Ok(Vec::new());
        }
        let v = self.run("p", buckets, &[], None, false).await?;
        let (now, rest) = split_now(&v, buckets.len())?;
        Ok(redis_params(buckets).iter().zip(rest).map(|(p, &t)| store::peek_one(us_to_ns(t), p, now)).collect())
    }
}

impl QuotaStore for RedisStore {
    fn reserve<'a>(
        &'a self,
        buckets: &'a [BucketSpec],
        cost: CostMode,
    ) -> BoxFuture<'a, Result<ReserveOutcome, StoreError>> {
        Box::pin(self.reserve_remote(buckets, cost))
    }

    fn settle<'a>(&'a self, buckets: &'a [BucketSpec], delta: i64) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.settle_remote(buckets, delta))
    }

    fn peek<'a>(&'a self, buckets: &'a [BucketSpec]) -> BoxFuture<'a, Result<Vec<BucketState>, StoreError>> {
        Box::pin(self.peek_remote(buckets))
    }

    fn top<'a>(
        &'a self,
        shape: &'a BucketSpec,
        prefix: &'a str,
        n: usize,
    ) -> BoxFuture<'a, Result<TopList, StoreError>> {
        Box::pin(self.top_remote(shape, prefix, n))
    }

    fn reset<'a>(&'a self, buckets: &'a [BucketSpec]) -> BoxFuture<'a, Result<usize, StoreError>> {
        Box::pin(self.reset_remote(buckets))
    }

    fn tracked_keys(&self) -> usize {
        0
    }

    fn health(&self) -> BoxFuture<'_, super::store::Health> {
        Box::pin(async move {
            match self.ping().await {
                Ok(()) => super::store::Health::Ok,
                Err(e) => super::store::Health::Down(e.to_string()),
            }
        })
    }
}

/// The buckets' shapes as the script computes with them: the memory store's [`Params`] with `T`
/// rounded down to a whole microsecond (at least 1); fixed windows are whole seconds already.
/// [`store::decide`] runs on these and the script's integers (× 1000), so it reproduces the
/// script's decision exactly.
pub fn redis_params(buckets: &[BucketSpec]) -> Vec<Params> {
    buckets.iter().map(|b| b.params().at_us_resolution()).collect()
}

/// The per-bucket script arguments: capacity, `T` (µs), fixed window (µs, 0: continuous) and
/// its offset (µs).
fn script_args(p: &Params) -> [u64; 4] {
    let (w, o) = p.fixed().map_or((0, 0), |f| (f.window_ns / NS_PER_US, f.offset_ns / NS_PER_US));
    [p.capacity(), p.interval_ns() / NS_PER_US, w, o]
}

/// Keys one `SCAN` call of `top` walks.
pub const TOP_SCAN_COUNT: u64 = 1000;
/// `SCAN` calls one `top` makes at most.
pub const TOP_SCAN_CALLS: u32 = 200;

/// `s` matched literally in a `SCAN MATCH` pattern.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn us_to_ns(us: i64) -> u64 {
    u64::try_from(us).unwrap_or(0).saturating_mul(NS_PER_US)
}

/// `now` (converted to ns) and the rest of a script answer that must hold `n` more integers.
fn split_now(v: &[i64], n: usize) -> Result<(u64, &[i64]), StoreError> {
    match v.split_first() {
        Some((&now, rest)) if rest.len() == n => Ok((us_to_ns(now), rest)),
        _ => Err(StoreError::Unavailable(format!("unexpected quota script answer of {} values", v.len()))),
    }
}

/// State every replica shares besides the buckets: blocks, pauses and masks as flags (one Redis
/// set per kind, `{key_prefix}flags:{kind}`, plus a `PUBLISH` on `{key_prefix}flags`; written
/// through `crate::share`, read by housekeeping once a second), and first-seen times of
/// accounts and organisations (one hash, `{key_prefix}seen`, earliest time wins).
pub trait SharedFlags: Send + Sync {
    /// Turn flag `name` of `kind` (`blocks`, `pauses`, `masks`) on or off for every replica.
    fn set<'a>(&'a self, kind: &'a str, name: &'a str, on: bool) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Every flag of `kind` that is on.
    fn members<'a>(&'a self, kind: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>>;
    /// Record first-seen times (the earlier of the given and the stored time stays) and return
    /// the times the hash holds for those fields, in order. One round trip.
    fn seen_put<'a>(&'a self, entries: &'a [(String, i64)]) -> BoxFuture<'a, Result<Vec<i64>, StoreError>>;
    /// Every first-seen time the replicas have recorded.
    fn seen_all(&self) -> BoxFuture<'_, Result<Vec<(String, i64)>, StoreError>>;
    /// The population guard's sums: write this process's per-minute totals (`(cohort, minute,
    /// total)`, idempotent `HSET` of field `process`, kept 25 h), then read the other processes'
    /// totals for `read` (`(cohort, minute)`), in order. One round trip.
    fn guard_sync<'a>(
        &'a self,
        process: &'a str,
        push: &'a [(String, i64, u64)],
        read: &'a [(String, i64)],
    ) -> BoxFuture<'a, Result<Vec<u64>, StoreError>>;
}

impl SharedFlags for RedisStore {
    fn set<'a>(&'a self, kind: &'a str, name: &'a str, on: bool) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let key = format!("{}flags:{kind}", self.prefix);
            let mut pipe = redis::pipe();
            pipe.atomic().cmd(if on { "SADD" } else { "SREM" }).arg(&key).arg(name).ignore();
            pipe.cmd("PUBLISH").arg(format!("{}flags", self.prefix)).arg(kind).ignore();
            let mut conn = self.conn.clone();
            match tokio::time::timeout(self.timeout, pipe.query_async::<()>(&mut conn)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(StoreError::Unavailable(e.to_string())),
                Err(_) => Err(StoreError::Timeout),
            }
        })
    }

    fn members<'a>(&'a self, kind: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let mut cmd = redis::cmd("SMEMBERS");
            cmd.arg(format!("{}flags:{kind}", self.prefix));
            let q = cmd.query_async::<Vec<String>>(&mut conn);
            match tokio::time::timeout(self.timeout, q).await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(StoreError::Unavailable(e.to_string())),
                Err(_) => Err(StoreError::Timeout),
            }
        })
    }

    fn seen_put<'a>(&'a self, entries: &'a [(String, i64)]) -> BoxFuture<'a, Result<Vec<i64>, StoreError>> {
        Box::pin(async move {
            if entries.is_empty() {
                return Ok(Vec::new());
            }
            // The earliest time wins, whichever replica writes first.
            const MIN: &str = "local c = redis.call('HGET', KEYS[1], ARGV[1]) \
                if (not c) or tonumber(c) > tonumber(ARGV[2]) then \
                redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) return tonumber(ARGV[2]) end \
                return tonumber(c)";
            let key = format!("{}seen", self.prefix);
            let mut pipe = redis::pipe();
            for (field, t) in entries {
                pipe.cmd("EVAL").arg(MIN).arg(1).arg(&key).arg(field).arg(*t);
            }
            let mut conn = self.conn.clone();
            // Longer than one call's timeout: thousands of fields at start.
            let q = pipe.query_async::<Vec<i64>>(&mut conn);
            match tokio::time::timeout(self.timeout * 4, q).await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(StoreError::Unavailable(e.to_string())),
                Err(_) => Err(StoreError::Timeout),
            }
        })
    }

    fn guard_sync<'a>(
        &'a self,
        process: &'a str,
        push: &'a [(String, i64, u64)],
        read: &'a [(String, i64)],
    ) -> BoxFuture<'a, Result<Vec<u64>, StoreError>> {
        Box::pin(async move {
            let key = |c: &str, m: i64| format!("{}guard:{c}:{m}", self.prefix);
            let mut pipe = redis::pipe();
            for (c, m, total) in push {
                let k = key(c, *m);
                pipe.cmd("HSET").arg(&k).arg(process).arg(*total).ignore();
                pipe.cmd("EXPIRE").arg(&k).arg(25 * 3600).ignore();
            }
            for (c, m) in read {
                pipe.cmd("HGETALL").arg(key(c, *m));
            }
            let mut conn = self.conn.clone();
            let q = pipe.query_async::<Vec<Vec<(String, u64)>>>(&mut conn);
            match tokio::time::timeout(self.timeout * 4, q).await {
                Ok(Ok(v)) => Ok(v
                    .into_iter()
                    .map(|fields| fields.iter().filter(|(p, _)| p != process).map(|(_, n)| n).sum())
                    .collect()),
                Ok(Err(e)) => Err(StoreError::Unavailable(e.to_string())),
                Err(_) => Err(StoreError::Timeout),
            }
        })
    }

    fn seen_all(&self) -> BoxFuture<'_, Result<Vec<(String, i64)>, StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let mut cmd = redis::cmd("HGETALL");
            cmd.arg(format!("{}seen", self.prefix));
            let q = cmd.query_async::<Vec<(String, i64)>>(&mut conn);
            match tokio::time::timeout(self.timeout * 4, q).await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(StoreError::Unavailable(e.to_string())),
                Err(_) => Err(StoreError::Timeout),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::gcra::NS_PER_SEC;
    use crate::quota::Scope;

    fn spec(capacity: u64, window_ns: u64) -> BucketSpec {
        BucketSpec::new("a:x|day", Scope::Account, "day", capacity, window_ns)
    }

    #[test]
    fn interval_is_rounded_down_to_whole_microseconds() {
        let args = |c, w| script_args(&redis_params(&[spec(c, w)])[0]);
        // 2000 per day: T = 43.2 s exactly, no rounding.
        assert_eq!(args(2000, 86_400 * NS_PER_SEC), [2000, 43_200_000, 0, 0]);
        // 3 per second: T = 333_333_333 ns → 333_333 µs.
        assert_eq!(args(3, NS_PER_SEC), [3, 333_333, 0, 0]);
        // More tokens than microseconds: T clamps to 1 µs, capacity stays exact.
        assert_eq!(args(600_000_000, NS_PER_SEC), [600_000_000, 1, 0, 0]);
    }

    #[test]
    fn fixed_windows_keep_their_length_and_offset() {
        let mut b = spec(7, 604_800 * NS_PER_SEC);
        b.fixed_offset_ns = Some(345_600 * NS_PER_SEC);
        let p = redis_params(std::slice::from_ref(&b))[0];
        assert_eq!(script_args(&p), [7, 86_400_000_000, 604_800_000_000, 345_600_000_000]);
        assert_eq!(p.fixed().map(|f| f.window_ns), Some(604_800 * NS_PER_SEC));
    }

    #[test]
    fn redis_params_reproduce_the_script_interval() {
        for (c, w) in [(2000, 86_400 * NS_PER_SEC), (3, NS_PER_SEC), (7, 1_234_567_891), (600_000_000, NS_PER_SEC)] {
            let p = redis_params(&[spec(c, w)])[0];
            let [cap, t_us, _, _] = script_args(&p);
            assert_eq!(p.capacity(), cap);
            assert_eq!(p.interval_ns(), t_us * NS_PER_US);
        }
    }

    #[test]
    fn script_answers_are_checked_for_length() {
        assert!(split_now(&[1, 2, 3], 2).is_ok());
        assert!(split_now(&[1, 2], 2).is_err());
        assert!(split_now(&[], 0).is_err());
    }

    #[test]
    fn scan_patterns_match_keys_literally() {
        assert_eq!(glob_escape("cvgate:{quota}:"), "cvgate:{quota}:");
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }

    #[test]
    fn key_prefix_and_script_are_what_docs_say() {
        assert!(SCRIPT.contains("redis.call('TIME')"));
        assert!(SCRIPT.contains("PEXPIRE"));
    }
}
