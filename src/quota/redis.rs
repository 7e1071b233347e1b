//! The Redis quota store: bucket states shared by every replica, with the memory store's
//! semantics, in one round trip per operation.
//!
//! # One call, one round trip
//! `redis.lua` reads every bucket of the request, rebases it to the configured interval
//! ([`gcra::rebase`]), decides like [`store::decide`] and charges all buckets or none,
//! atomically (Redis runs it alone). Settle and peek are one call of the same code. "Now" is
//! Redis `TIME`, read inside the call, so replicas with skewed clocks agree. On Redis 7+ the
//! code is a function library called by `FCALL` (loaded on "Function not found"; its name
//! carries the code's hash, so two cvgate versions never replace each other's); where Redis
//! refuses functions, the same code runs by `EVALSHA` (loaded on `NOSCRIPT`). Why a function:
//! it keeps its scratch tables and parsed bucket shapes between calls (~1.5× less Redis CPU
//! than the same code as a script, docs/redis.md "Bench").
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
//! # Keys and TTLs: one hash per subject
//! A bucket key `{scope key}|{horizon}` (e.g. `a:acct-1|day`) is split at its last `|`: the
//! subject's hash is `{key_prefix}{scope key}|` (`cvgate:{quota}:a:acct-1|`), the horizon a
//! field of it whose value is three little-endian doubles `tat, T, b` (µs, mirroring
//! [`GcraState`]; decimal text costs the script more than its arithmetic). So a request's 12
//! buckets are 5 keys, and the call runs `TIME` + per subject one `HMGET` and one `HSET` (11
//! commands, where a hash per bucket took 37). A field `!` records when the key's TTL ends;
//! `PEXPIRE` is sent only when a write needs the key to live longer (then for 1/8 longer than
//! needed, at most 10 min more), and the TTL never shrinks, so horizons a request does not
//! name keep theirs. A missing key or field is a full bucket, so expiry loses nothing and idle
//! keys vanish by themselves ([`QuotaStore::sweep`] has nothing to do). New keys end in `|`
//! and old-layout keys (one hash per bucket, before 2026-12) in `|{horizon}`
//! (`[a-z0-9_-]+`), so the two layouts never share a key; what a rolling upgrade from the old
//! layout does is in docs/redis.md. The prefix must contain a hash tag (`{quota}`) so that all
//! keys of a request share one Redis Cluster slot (spreading them: docs/redis-cluster.md).
//!
//! # Timeouts
//! Every call is bounded by `timeout` (default 50 ms): a slow or dead Redis costs a request at
//! most that, then [`StoreError::Timeout`]; the caller ([`super::failover`]) applies the failure
//! policy. A reservation that timed out may still have been applied by Redis: that errs on the
//! side of charging too much, never too little.

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::RedisWrite as _;

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
    /// SHA-1 of [`SCRIPT`], for `EVALSHA`.
    sha: String,
    /// `cvgate_quota_` + the first 12 hex digits of `sha`: the function (and its library) that
    /// `FCALL` calls. Versioned so that replicas of two cvgate versions never replace each
    /// other's code during a rolling upgrade.
    function: String,
    /// [`SCRIPT`] as a function library: the shebang naming it, then `FUNCTION_NAME`.
    library: String,
    /// Call the function (Redis 7+); `false` once Redis refused functions (an older server,
    /// or an ACL that denies `FUNCTION LOAD`): `EVALSHA` of the same code from then on.
    functions: AtomicBool,
    prefix: String,
    timeout: Duration,
}

/// What the script is asked to do, with its two head numbers (see `redis.lua`).
#[derive(Debug, Clone, Copy)]
enum Op {
    Reserve { want: u64, min: u64 },
    Settle(i64),
    Peek,
}

/// The buckets of one call as the script takes them: grouped by subject (one hash each), the
/// subjects in order of first appearance, each subject's buckets in the order given. `order[p]`
/// is the index in the caller's slice of the script's `p`-th bucket; `counts[k]` how many
/// buckets subject `k` has.
#[derive(Debug, PartialEq, Eq)]
struct Grouped<'a> {
    subjects: Vec<&'a str>,
    counts: Vec<usize>,
    order: Vec<usize>,
}

/// `(subject, horizon)` of a bucket key: split at the last `|` (an account id may hold `|`
/// itself; horizon names cannot). A key without `|` (not one the engine builds) is a subject
/// with the horizon `""`.
fn split_key(key: &str) -> (&str, &str) {
    key.rsplit_once('|').unwrap_or((key, ""))
}

/// Group `buckets` by subject. Quadratic in the number of subjects, which is at most 5 for a
/// request: cheaper than a map.
fn group(buckets: &[BucketSpec]) -> Grouped<'_> {
    let n = buckets.len();
    let mut g =
        Grouped { subjects: Vec::with_capacity(5), counts: Vec::with_capacity(5), order: Vec::with_capacity(n) };
    for (i, b) in buckets.iter().enumerate() {
        let subject = split_key(&b.key).0;
        if g.subjects.contains(&subject) {
            continue;
        }
        let before = g.order.len();
        g.order.extend((i..n).filter(|&j| split_key(&buckets[j].key).0 == subject));
        g.subjects.push(subject);
        g.counts.push(g.order.len() - before);
    }
    g
}

/// A stored horizon's value, three little-endian doubles `tat, T, b` (µs, see `redis.lua`), as
/// a [`GcraState`] in ns; `None` when it is not 24 bytes.
fn parse_state(v: &[u8]) -> Option<GcraState> {
    let v: &[u8; 24] = v.try_into().ok()?;
    let us = |i: usize| {
        let d = f64::from_le_bytes(v[i * 8..i * 8 + 8].try_into().unwrap_or_default());
        // Whole µs below 2^53 as the script writes them; `as` saturates anything else.
        (d as u64).saturating_mul(NS_PER_US)
    };
    Some(GcraState { tat_ns: us(0), interval_ns: us(1), base_ns: us(2) })
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
        let sha = redis::Script::new(SCRIPT).get_hash().to_string();
        let function = format!("cvgate_quota_{}", &sha[..12]);
        let library = format!("#!lua name={function}\nlocal FUNCTION_NAME = '{function}'\n{SCRIPT}");
        Ok(Self {
            conn,
            sha,
            function,
            library,
            functions: AtomicBool::new(true),
            prefix: settings.key_prefix.clone(),
            timeout: settings.timeout,
        })
    }

    /// The call of `op` over `buckets` grouped as `g`, as `redis.lua` takes it: `FCALL` of the
    /// function or `EVALSHA` of the script; the subjects' keys; `op`, its two head numbers and
    /// whether a bucket is passed twice; per subject its "shape": per bucket its horizon's
    /// length (one byte) and name, then [`script_args`] and its shadow flag as little-endian
    /// doubles (decimal text costs the script more than anything else, see its header).
    /// Written straight into one `Cmd` buffer rather than through redis-rs's
    /// `ScriptInvocation`, which allocates a vector per argument.
    ///
    /// # Errors
    /// A horizon name longer than 255 bytes (its length is one byte; names are words).
    fn command(
        &self,
        function: bool,
        op: Op,
        buckets: &[BucketSpec],
        params: &[Params],
        g: &Grouped<'_>,
    ) -> Result<redis::Cmd, StoreError> {
        let mut cmd = redis::cmd(if function { "FCALL" } else { "EVALSHA" });
        cmd.arg(if function { &self.function } else { &self.sha }).arg(g.subjects.len());
        for s in &g.subjects {
            let mut w = cmd.writer_for_next_arg();
            // Writes into the command's Vec<u8>: cannot fail.
            let _ = w.write_all(self.prefix.as_bytes()).and(w.write_all(s.as_bytes())).and(w.write_all(b"|"));
        }
        match op {
            Op::Reserve { want, min } => cmd.arg("r").arg(want).arg(min),
            Op::Settle(delta) => cmd.arg("s").arg(delta).arg(0),
            Op::Peek => cmd.arg("p").arg(0).arg(0),
        };
        let horizon = |i: usize| split_key(&buckets[i].key).1;
        let mut shapes = Vec::with_capacity(g.counts.len());
        let mut rest = &g.order[..];
        for &count in &g.counts {
            let (mine, after) = rest.split_at(count.min(rest.len()));
            shapes.push(mine);
            rest = after;
        }
        let passed_twice = |mine: &&[usize]| {
            mine.iter().enumerate().any(|(n, &i)| mine[..n].iter().any(|&p| horizon(p) == horizon(i)))
        };
        cmd.arg(if shapes.iter().any(passed_twice) { "1" } else { "0" });
        for mine in shapes {
            let mut w = cmd.writer_for_next_arg();
            for &i in mine {
                let name = horizon(i);
                let Ok(len) = u8::try_from(name.len()) else {
                    return Err(StoreError::Unavailable(format!("horizon name longer than 255 bytes: {name}")));
                };
                let [c, t, win, off] = script_args(&params[i]);
                let _ = w.write_all(&[len]).and(w.write_all(name.as_bytes()));
                // Exact: every value is below 2^53 (validation bounds windows and budgets).
                for x in [c as f64, t as f64, win as f64, off as f64, f64::from(u8::from(buckets[i].shadow))] {
                    let _ = w.write_all(&x.to_le_bytes());
                }
            }
        }
        Ok(cmd)
    }

    /// Run `op` within the timeout and return the integers the script answers: `FCALL`, loading
    /// the library on "Function not found" (first call, or Redis restarted empty); where Redis
    /// refuses functions, `EVALSHA` from then on, loading the script on `NOSCRIPT`.
    async fn eval(
        &self,
        op: Op,
        buckets: &[BucketSpec],
        g: &Grouped<'_>,
        params: &[Params],
    ) -> Result<Vec<i64>, StoreError> {
        let mut conn = self.conn.clone();
        if self.functions.load(Ordering::Relaxed) {
            let cmd = self.command(true, op, buckets, params, g)?;
            let call = async {
                match cmd.query_async::<Vec<i64>>(&mut conn).await {
                    Err(e) if said(&e, "Function not found") => {
                        let mut load = redis::cmd("FUNCTION");
                        load.arg("LOAD").arg("REPLACE").arg(&self.library);
                        match load.query_async::<String>(&mut conn).await {
                            Ok(_) => cmd.query_async::<Vec<i64>>(&mut conn).await.map(Some),
                            Err(e) if refused(&e) => {
                                tracing::warn!(error = %e, "redis refuses FUNCTION LOAD: quota calls use EVALSHA");
                                Ok(None)
                            }
                            Err(e) => Err(e),
                        }
                    }
                    Err(e) if said(&e, "unknown command") => {
                        tracing::info!("redis has no functions (before 7.0): quota calls use EVALSHA");
                        Ok(None)
                    }
                    other => other.map(Some),
                }
            };
            match self.within(self.timeout, call).await? {
                Some(v) => return Ok(v),
                None => self.functions.store(false, Ordering::Relaxed),
            }
        }
        let cmd = self.command(false, op, buckets, params, g)?;
        let call = async {
            match cmd.query_async::<Vec<i64>>(&mut conn).await {
                Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                    redis::cmd("SCRIPT").arg("LOAD").arg(SCRIPT).query_async::<String>(&mut conn).await?;
                    cmd.query_async::<Vec<i64>>(&mut conn).await
                }
                other => other,
            }
        };
        self.within(self.timeout, call).await
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
        let (params, g) = (redis_params(buckets), group(buckets));
        let v = self.eval(Op::Reserve { want, min }, buckets, &g, &params).await?;
        let (now, rest) = split_now(&v, buckets.len() + 1)?;
        let granted = rest[0];
        let tats = in_caller_order(&g, &rest[1..]);
        let out = store::decide(buckets, &params, &tats, now, cost);
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
        let (params, g) = (redis_params(buckets), group(buckets));
        let v = self.eval(Op::Settle(delta), buckets, &g, &params).await?;
        split_now(&v, 0).map(|_| ())
    }

    async fn peek_remote(&self, buckets: &[BucketSpec]) -> Result<Vec<BucketState>, StoreError> {
        if buckets.is_empty() {
            return Ok(Vec::new());
        }
        let (params, g) = (redis_params(buckets), group(buckets));
        let v = self.eval(Op::Peek, buckets, &g, &params).await?;
        let (now, rest) = split_now(&v, buckets.len())?;
        let tats = in_caller_order(&g, rest);
        Ok(params.iter().zip(tats).map(|(p, t)| store::peek_one(t, p, now)).collect())
    }

    /// `top`: `SCAN` the subjects of one scope (`MATCH {prefix}a:*|`, `COUNT`
    /// [`TOP_SCAN_COUNT`]), and for each batch one pipelined `HGET {key} {horizon}` per key:
    /// two round trips per call. `SCAN` walks the whole database, matching keys or not (about
    /// `TOP_SCAN_COUNT` keys a call, each call short, so Redis serves others in between), and
    /// stops after [`TOP_SCAN_CALLS`] calls (~200,000 keys walked, a second or so), then says
    /// `complete: false`. "Now" is Redis `TIME`, as in the script.
    async fn top_remote(&self, shape: &BucketSpec, prefix: &str, n: usize) -> Result<TopList, StoreError> {
        let p = redis_params(std::slice::from_ref(shape))[0];
        let horizon = &*shape.horizon;
        let pattern = format!("{}{}*|", glob_escape(&self.prefix), glob_escape(prefix));
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
                    pipe.cmd("HGET").arg(k).arg(horizon);
                }
                let states: Vec<Option<Vec<u8>>> = self.within(long, pipe.query_async(&mut conn)).await?;
                scanned += keys.len() as u64;
                for (key, state) in keys.into_iter().zip(states) {
                    // Gone since the SCAN, or no such horizon: full.
                    let Some(state) = state.as_deref().and_then(parse_state) else { continue };
                    let used = gcra::used(gcra::rebase(state, &p, now), &p, now);
                    top.offer(used, || {
                        let subject = key.strip_prefix(self.prefix.as_str()).unwrap_or(&key);
                        [subject, horizon].concat() // the subject key ends in `|` already
                    });
                }
            }
            cursor = next;
            if cursor == 0 || calls >= TOP_SCAN_CALLS {
                break;
            }
        }
        Ok(TopList { entries: top.into_sorted(), scanned, complete: cursor == 0 })
    }

    /// `reset`: one pipelined `HDEL` of the horizons per subject (one round trip; a hash left
    /// without fields is gone); the count is the buckets that held spending (a full bucket has
    /// no field).
    async fn reset_remote(&self, buckets: &[BucketSpec]) -> Result<usize, StoreError> {
        if buckets.is_empty() {
            return Ok(0);
        }
        let g = group(buckets);
        let mut pipe = redis::pipe();
        let mut order = g.order.iter();
        for (s, &count) in g.subjects.iter().zip(&g.counts) {
            pipe.cmd("HDEL").arg([self.prefix.as_str(), s, "|"].concat());
            for &i in order.by_ref().take(count) {
                pipe.arg(split_key(&buckets[i].key).1);
            }
        }
        let mut conn = self.conn.clone();
        let held: Vec<usize> = self.within(self.timeout, pipe.query_async(&mut conn)).await?;
        Ok(held.iter().sum())
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

/// The script's per-bucket `tat`s (µs, in its grouped order) in the caller's order, in ns.
fn in_caller_order(g: &Grouped<'_>, script_tats: &[i64]) -> Vec<u64> {
    let mut tats = vec![0; g.order.len()];
    for (&i, &t) in g.order.iter().zip(script_tats) {
        tats[i] = us_to_ns(t);
    }
    tats
}

/// Whether Redis answered `e` with an error whose message contains `what`.
fn said(e: &redis::RedisError, what: &str) -> bool {
    e.detail().is_some_and(|d| d.contains(what)) || e.to_string().contains(what)
}

/// Whether `e` is Redis's own answer (an error reply such as `NOPERM` or a refused library),
/// not a broken connection or a timeout, which say nothing about what the server supports.
fn refused(e: &redis::RedisError) -> bool {
    !(e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal())
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
        assert!(SCRIPT.contains("call('TIME')"));
        assert!(SCRIPT.contains("PEXPIRE"));
        assert!(SCRIPT.contains("HMGET"));
        assert!(SCRIPT.contains("redis.register_function(FUNCTION_NAME, run)"));
    }

    /// A private redis-server on a free loopback port, killed on drop (as tests/common/redis.rs,
    /// which a unit test cannot include).
    struct Server {
        child: std::process::Child,
        port: u16,
        /// Its working directory, removed with it.
        _dir: tempfile::TempDir,
    }

    impl Server {
        fn start() -> Self {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let dir = tempfile::tempdir().unwrap();
            let bin = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
            let child = std::process::Command::new(&bin)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .args(["--dir", &dir.path().display().to_string()])
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {bin} (scripts/test.sh installs it): {e}"));
            for _ in 0..200 {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            Server { child, port, _dir: dir }
        }

        fn store(&self, prefix: &str) -> RedisStore {
            let url = format!("redis://127.0.0.1:{}/0", self.port);
            let settings = RedisSettings { url, timeout: Duration::from_secs(2), key_prefix: prefix.into() };
            RedisStore::new(&settings).unwrap()
        }

        fn calls(&self, command: &str) -> u64 {
            let mut c =
                redis::Client::open(format!("redis://127.0.0.1:{}/0", self.port)).unwrap().get_connection().unwrap();
            let info: String = redis::cmd("INFO").arg("commandstats").query(&mut c).unwrap();
            let prefix = format!("cmdstat_{command}:calls=");
            info.lines().find_map(|l| l.strip_prefix(&prefix)?.split(',').next()?.parse().ok()).unwrap_or(0)
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Reserve, reserve up to, refund, force a charge and peek; what each answered (grants and
    /// `remaining`: seconds may differ by a rounding step from one call to the next).
    async fn sequence(store: &RedisStore, buckets: &[BucketSpec]) -> Vec<String> {
        let remaining = |s: &[BucketState]| format!("{:?}", s.iter().map(|b| b.remaining).collect::<Vec<_>>());
        let outcome = |o: ReserveOutcome| match o {
            ReserveOutcome::Granted { granted, states, would_reject } => {
                format!("granted {granted} {} {would_reject:?}", remaining(&states))
            }
            ReserveOutcome::Rejected { index, states, .. } => format!("rejected {index} {}", remaining(&states)),
            ReserveOutcome::TooLarge { index, .. } => format!("too large {index}"),
        };
        let mut out = Vec::new();
        for cost in [CostMode::Exact(10), CostMode::UpTo { max: 200, min: 1 }, CostMode::Exact(1)] {
            out.push(outcome(store.reserve_remote(buckets, cost).await.unwrap()));
        }
        store.settle_remote(buckets, -7).await.unwrap();
        out.push(remaining(&store.peek_remote(buckets).await.unwrap()));
        store.settle_remote(&buckets[1..3], 300).await.unwrap();
        out.push(remaining(&store.peek_remote(buckets).await.unwrap()));
        out
    }

    /// The two ways of running redis.lua (a function library by `FCALL`; `EVALSHA` where Redis
    /// refuses functions) answer the same sequence the same way, and each store uses its own.
    #[tokio::test]
    async fn function_and_script_answer_the_same() {
        const DAY: u64 = 86_400 * NS_PER_SEC;
        let server = Server::start();
        let function = server.store("fn:{q}:");
        let script = server.store("sc:{q}:");
        script.functions.store(false, Ordering::Relaxed);
        let mut week = BucketSpec::new("a:x|week", Scope::Account, "week", 700, 7 * DAY);
        week.fixed_offset_ns = Some(4 * DAY);
        let mut shadow = BucketSpec::new("c:NL|day", Scope::Country, "day", 5, DAY);
        shadow.shadow = true;
        let buckets = vec![
            BucketSpec::new("a:x|day", Scope::Account, "day", 100, DAY),
            BucketSpec::new("o:y|day", Scope::Org, "day", 250, DAY),
            week,
            shadow,
            BucketSpec::new("a:x|day", Scope::Account, "day", 100, DAY), // twice: charged twice
        ];
        let (a, b) = (sequence(&function, &buckets).await, sequence(&script, &buckets).await);
        assert_eq!(a, b);
        assert_eq!(a.last().map(String::as_str), Some("[0, 0, 317, 0, 0]"), "{a:#?}");
        assert!(server.calls("fcall") > 0 && server.calls("evalsha") > 0, "each store called its own way");
    }

    fn keyed(key: &str) -> BucketSpec {
        BucketSpec::new(key, Scope::Account, "day", 10, NS_PER_SEC)
    }

    #[test]
    fn bucket_keys_split_into_subject_and_horizon() {
        assert_eq!(split_key("a:acct-1|day"), ("a:acct-1", "day"));
        assert_eq!(split_key("a:with|bar|week"), ("a:with|bar", "week")); // the horizon is the last part
        assert_eq!(split_key("g|hour"), ("g", "hour"));
        assert_eq!(split_key("odd"), ("odd", ""));
    }

    #[test]
    fn buckets_are_grouped_by_subject_in_order_of_first_appearance() {
        let b: Vec<BucketSpec> =
            ["a:x|burst", "o:y|day", "a:x|day", "g|hour", "o:y|week", "a:x|day"].into_iter().map(keyed).collect();
        let g = group(&b);
        assert_eq!(g.subjects, ["a:x", "o:y", "g"]);
        assert_eq!(g.counts, [3, 2, 1]);
        assert_eq!(g.order, [0, 2, 5, 1, 4, 3]);
        // The script answers in that order; the caller gets its own back.
        let tats = in_caller_order(&g, &[10, 12, 15, 11, 14, 13]);
        assert_eq!(tats, [10, 11, 12, 13, 14, 15].map(|us| us * NS_PER_US));
        assert_eq!(group(&[]), Grouped { subjects: vec![], counts: vec![], order: vec![] });
    }

    #[test]
    fn stored_horizons_parse_as_gcra_states() {
        let packed: Vec<u8> =
            [1_714_809_600_000_000.0f64, 43_200_000.0, 0.0].iter().flat_map(|d| d.to_le_bytes()).collect();
        let s = parse_state(&packed).unwrap();
        assert_eq!(s, GcraState { tat_ns: 1_714_809_600_000_000_000, interval_ns: 43_200_000_000, base_ns: 0 });
        for bad in [&[][..], &packed[..16], &[0; 25][..]] {
            assert_eq!(parse_state(bad), None, "{bad:?}");
        }
    }
}
