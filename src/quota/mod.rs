//! CV quotas: budgets per account, organisation, IP prefix, country and globally, each over
//! several horizons, charged in CVs (not requests), all or nothing, reserve-then-settle.
//!
//! - [`gcra`]: the bucket maths, pure functions (also the spec for the Redis Lua script).
//! - [`policy`]: YAML shape, werk.nl defaults, validation into [`QuotaPolicy`].
//! - [`store`]: the [`QuotaStore`] trait and the shared decision over a set of buckets.
//! - [`memory`]: the in-process store (exact under concurrency, bounded, flood-proof).
//! - [`redis`]: the shared store for many replicas (one Lua script call per operation).
//! - [`failover`]: the `store:` config, circuit breaker and fail-closed/fail-open-local policy.
//! - [`headers`]: `RateLimit-Policy`, `RateLimit` and `Retry-After` values, and with
//!   `quota.legacy_headers` `X-RateLimit-Limit`/`-Remaining`/`-Reset`.
//!
//! The proxy passes the current [`QuotaPolicy`] on every call (it is swapped on reload); the
//! [`QuotaEngine`] keeps the store, so what was spent survives a reload.

pub mod failover;
pub mod gcra;
pub mod headers;
pub mod memory;
pub mod policy;
pub mod redis;
pub mod store;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

pub use self::redis::{RedisSettings, RedisStore, SharedFlags};
pub use failover::{build_store, FailoverStore, FailurePolicy, RawStore, StoreConfig};
pub use headers::{ratelimit_headers, retry_after};
pub use memory::{MemoryStore, BYTES_PER_KEY_BOUND};
pub use policy::{default_raw, parse_window, Horizon, QuotaPolicy, RawQuota};
pub use store::{BucketSpec, BucketState, CostMode, Health, QuotaStore, ReserveOutcome, StoreError, TopEntry, TopList};

/// Who is charged. Ordered as buckets are: narrowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Account = 0,
    Org = 1,
    Ip = 2,
    Country = 3,
    Global = 4,
}

impl Scope {
    pub const ALL: [Scope; 5] = [Scope::Account, Scope::Org, Scope::Ip, Scope::Country, Scope::Global];

    /// Name in config, metrics labels and headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Account => "account",
            Scope::Org => "org",
            Scope::Ip => "ip",
            Scope::Country => "country",
            Scope::Global => "global",
        }
    }

    /// First letter of a store key (`a:acct-1|day`, overflow `a~overflow|day`).
    pub fn key_prefix(self) -> &'static str {
        match self {
            Scope::Account => "a",
            Scope::Org => "o",
            Scope::Ip => "i",
            Scope::Country => "c",
            Scope::Global => "g",
        }
    }
}

/// The request being charged.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// `None`: anonymous; the account and org scopes are skipped.
    pub account: Option<&'a str>,
    /// KvK number.
    pub org: Option<&'a str>,
    pub ip: IpAddr,
    /// ISO 3166 alpha-2; anything else counts as `ZZ` (unknown).
    pub country: &'a str,
}

/// What was granted; settle it exactly once with the number of CVs delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub granted: u64,
    pub buckets: Vec<BucketSpec>,
    /// Per bucket, after the charge.
    pub states: Vec<BucketState>,
    /// Shadow buckets that would have rejected this request.
    pub would_reject: Vec<(Scope, Arc<str>)>,
    /// The tier from the account's or org's override, if any (for audit and metrics).
    pub tier: Option<Arc<str>>,
    /// Exempt subject: no bucket was touched.
    pub exempt: bool,
    /// Also send the legacy `X-RateLimit-*` headers (`quota.legacy_headers`).
    pub legacy_headers: bool,
}

impl Reservation {
    /// Whether settling to `actual` CVs changes any bucket (not when it is what was granted, or
    /// when no bucket was charged), so the caller can skip the store call altogether.
    pub fn needs_settle(&self, actual: u64) -> bool {
        actual != self.granted && !self.buckets.is_empty()
    }
}

/// Why a reservation was refused. Each variant carries what the 429 answer needs.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    /// A bucket has no room now; `retry_after_secs` until the request fits in every bucket.
    #[error("{} {horizon} quota exceeded; retry in {retry_after_secs} s", scope.as_str())]
    Quota { scope: Scope, horizon: Arc<str>, retry_after_secs: u64, headers: Vec<(&'static str, String)> },
    /// The request asks for more CVs than the bucket can ever hold: ask for fewer.
    #[error("{} {horizon} quota holds at most {capacity} CVs", scope.as_str())]
    TooLarge { scope: Scope, horizon: Arc<str>, capacity: u64, headers: Vec<(&'static str, String)> },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Resolves subjects to buckets and talks to the store.
pub struct QuotaEngine {
    store: Arc<dyn QuotaStore>,
}

impl QuotaEngine {
    pub fn new(store: Arc<dyn QuotaStore>) -> Self {
        Self { store }
    }

    pub fn store(&self) -> &Arc<dyn QuotaStore> {
        &self.store
    }

    /// The buckets `subject` is charged in under `policy` (empty when exempt).
    pub fn buckets(&self, policy: &QuotaPolicy, subject: &Subject<'_>) -> Vec<BucketSpec> {
        resolve(policy, subject, None, false).0
    }

    /// As an operator asks about a subject (admin API): its buckets and tier with `newcomer`
    /// as [`QuotaEngine::reserve_as`] takes it, an organisation's buckets even without an
    /// account (a request always has one).
    pub fn buckets_as(
        &self,
        policy: &QuotaPolicy,
        subject: &Subject<'_>,
        newcomer: Option<&str>,
    ) -> (Vec<BucketSpec>, Option<Arc<str>>) {
        resolve(policy, subject, newcomer, true)
    }

    /// Reserve CVs in every bucket of `subject`, all or nothing.
    ///
    /// # Errors
    /// [`Rejection::Quota`] / [`Rejection::TooLarge`] naming the first bucket without room;
    /// [`Rejection::Store`] when the store cannot decide: with Redis, the failover store has
    /// already applied the failure policy, so this means a scope of the request is `fail_closed`
    /// (the proxy answers 503 `quota-unavailable`).
    pub async fn reserve(
        &self,
        policy: &QuotaPolicy,
        subject: &Subject<'_>,
        cost: CostMode,
    ) -> Result<Reservation, Rejection> {
        self.reserve_as(policy, subject, None, cost).await
    }

    /// As [`QuotaEngine::reserve`], with `newcomer_tier` (a tier of `quota.tiers`) for a subject
    /// that has no override of its own: probation.
    pub async fn reserve_as(
        &self,
        policy: &QuotaPolicy,
        subject: &Subject<'_>,
        newcomer_tier: Option<&str>,
        cost: CostMode,
    ) -> Result<Reservation, Rejection> {
        let (buckets, tier) = resolve(policy, subject, newcomer_tier, false);
        if buckets.is_empty() {
            let granted = match cost {
                CostMode::Exact(n) => n,
                CostMode::UpTo { max, .. } => max,
            };
            let exempt = true;
            let (states, would_reject, legacy_headers) = (Vec::new(), Vec::new(), policy.legacy_headers);
            return Ok(Reservation { granted, buckets, states, would_reject, tier, exempt, legacy_headers });
        }
        match self.store.reserve(&buckets, cost).await? {
            ReserveOutcome::Granted { granted, states, would_reject } => {
                let would_reject =
                    would_reject.iter().map(|&i| (buckets[i].scope, buckets[i].horizon.clone())).collect();
                let legacy_headers = policy.legacy_headers;
                Ok(Reservation { granted, buckets, states, would_reject, tier, exempt: false, legacy_headers })
            }
            ReserveOutcome::Rejected { index, retry_after_secs, states } => {
                let headers =
                    headers::rejection_headers(&buckets, &states, index, Some(retry_after_secs), policy.legacy_headers);
                let b = &buckets[index];
                Err(Rejection::Quota { scope: b.scope, horizon: b.horizon.clone(), retry_after_secs, headers })
            }
            ReserveOutcome::TooLarge { index, states } => {
                let b = &buckets[index];
                let headers = headers::rejection_headers(&buckets, &states, index, None, policy.legacy_headers);
                Err(Rejection::TooLarge { scope: b.scope, horizon: b.horizon.clone(), capacity: b.capacity, headers })
            }
        }
    }

    /// Settle a reservation to the CVs actually delivered: refund `granted − actual`, or charge
    /// `actual − granted` (forced: the CVs are gone, the client goes into debt). Failures are
    /// logged, not returned: the response has been sent by now.
    pub async fn settle(&self, r: &Reservation, actual: u64) {
        if !r.needs_settle(actual) {
            return;
        }
        let delta = i64::try_from(i128::from(actual) - i128::from(r.granted)).unwrap_or(if actual > r.granted {
            i64::MAX
        } else {
            i64::MIN
        });
        if let Err(e) = self.store.settle(&r.buckets, delta).await {
            tracing::warn!(error = %e, delta, "quota settle failed");
        }
    }

    /// Current states of `subject`'s buckets (admin and tests), as [`QuotaEngine::buckets_as`]
    /// without a newcomer tier.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn peek(
        &self,
        policy: &QuotaPolicy,
        subject: &Subject<'_>,
    ) -> Result<Vec<(BucketSpec, BucketState)>, StoreError> {
        self.peek_buckets(self.buckets_as(policy, subject, None).0).await
    }

    /// Current states of these buckets, changing nothing.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn peek_buckets(&self, buckets: Vec<BucketSpec>) -> Result<Vec<(BucketSpec, BucketState)>, StoreError> {
        let states = self.store.peek(&buckets).await?;
        Ok(buckets.into_iter().zip(states).collect())
    }

    /// The `n` subjects of `scope` with the most CVs used in its horizon `horizon`, from the
    /// store's own state ([`QuotaStore::top`]); `None` when no bucket of `scope` has that
    /// horizon.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn top(
        &self,
        policy: &QuotaPolicy,
        scope: Scope,
        horizon: &str,
        n: usize,
    ) -> Result<Option<TopList>, StoreError> {
        let Some(shape) = shape(policy, scope, horizon) else { return Ok(None) };
        let prefix = [scope.key_prefix(), ":"].concat();
        self.store.top(&shape, &prefix, n).await.map(Some)
    }

    /// Refill these buckets (admin: a subject's quota reset); how many held spending.
    ///
    /// # Errors
    /// When the store fails (with Redis: this replica's local shares are reset all the same).
    pub async fn reset(&self, buckets: &[BucketSpec]) -> Result<usize, StoreError> {
        self.store.reset(buckets).await
    }

    /// Evict idle full buckets (the proxy's housekeeping calls this every second).
    pub fn sweep(&self) -> usize {
        self.store.sweep()
    }

    pub fn tracked_keys(&self) -> usize {
        self.store.tracked_keys()
    }

    /// Can the store decide requests now (readiness)?
    pub async fn health(&self) -> Health {
        self.store.health().await
    }

    /// Write the spent buckets to `path` (the memory store; a no-op for Redis), so that a
    /// restart or a deploy is not a free refill; how many bytes.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn save_snapshot(&self, path: &std::path::Path) -> anyhow::Result<usize> {
        let Some(bytes) = self.store.save() else { return Ok(0) };
        crate::persist::write_atomically(path, &bytes)?;
        Ok(bytes.len())
    }

    /// Read a snapshot back at start (a missing file is none); how many buckets.
    pub fn load_snapshot(&self, path: &std::path::Path) -> usize {
        std::fs::read(path).map(|b| self.store.load(&b)).unwrap_or(0)
    }
}

/// The tier a subject is charged in: its account's or organisation's override, else
/// `newcomer` (probation) when given. What [`QuotaEngine::reserve_as`] would report, without
/// building buckets.
pub fn tier_of(
    policy: &QuotaPolicy,
    account: Option<&str>,
    org: Option<&str>,
    newcomer: Option<&str>,
) -> Option<Arc<str>> {
    let account = account.filter(|a| !a.is_empty());
    let org = org.filter(|o| !o.is_empty() && account.is_some());
    let ao = account.and_then(|a| policy.accounts.get(a));
    let oo = org.and_then(|o| policy.orgs.get(o));
    if ao.is_none() && oo.is_none() {
        return newcomer.and_then(|t| policy.tiers.get(t)).and_then(|o| o.tier.clone());
    }
    ao.and_then(|o| o.tier.clone()).or_else(|| oo.and_then(|o| o.tier.clone()))
}

/// The subject a bucket key names: `acct-1` of `a:acct-1|day`, `203.0.113.0/24` of
/// `i:203.0.113.0/24|hour` (an account id may hold `|` itself: the horizon is the last part).
pub fn key_subject<'k>(key: &'k str, scope: Scope, horizon: &str) -> Option<&'k str> {
    key.strip_prefix(scope.key_prefix())?.strip_prefix(':')?.strip_suffix(horizon)?.strip_suffix('|')
}

/// A bucket of `scope` with horizon `horizon` as configured (the scope's own, else the first
/// override or tier that has it), to read stored states with: spent CVs do not depend on the
/// capacity (see [`gcra::used`]).
fn shape(policy: &QuotaPolicy, scope: Scope, horizon: &str) -> Option<BucketSpec> {
    let sp = policy.scope(scope);
    let overrides = policy.accounts.values().chain(policy.orgs.values()).chain(policy.tiers.values());
    let h = std::iter::once(&sp.horizons)
        .chain(overrides.map(|o| &o.horizons[scope as usize]))
        .flat_map(|hs| hs.iter())
        .find(|h| &*h.name == horizon)?;
    let mut b = BucketSpec::new("", scope, horizon, h.capacity.get(), h.window_ns.get());
    (b.fixed_offset_ns, b.shadow, b.horizon) = (h.fixed_offset_ns, sp.shadow, h.name.clone());
    Some(b)
}

/// Buckets and tier for a subject. Order: account, org, ip, country, global; within a scope,
/// shortest window first. An organisation without an account is charged nothing (a request
/// always has an account) unless `lone_org` (an operator asking about the organisation).
fn resolve(
    policy: &QuotaPolicy,
    s: &Subject<'_>,
    newcomer: Option<&str>,
    lone_org: bool,
) -> (Vec<BucketSpec>, Option<Arc<str>>) {
    let account = s.account.filter(|a| !a.is_empty());
    let org = s.org.filter(|o| !o.is_empty() && (account.is_some() || lone_org));
    if account.is_some_and(|a| policy.exempt_accounts.contains(a))
        || org.is_some_and(|o| policy.exempt_orgs.contains(o))
    {
        return (Vec::new(), None);
    }
    let ao = account.and_then(|a| policy.accounts.get(a));
    let mut oo = org.and_then(|o| policy.orgs.get(o));
    if ao.is_none() && oo.is_none() {
        // A newcomer without an override of its own gets the probation tier.
        oo = newcomer.and_then(|t| policy.tiers.get(t));
    }
    let tier = ao.and_then(|o| o.tier.clone()).or_else(|| oo.and_then(|o| o.tier.clone()));
    let country = crate::country::or_unknown(s.country);
    let mut out = Vec::with_capacity(12);
    for scope in Scope::ALL {
        let key: Cow<'_, str> = match scope {
            Scope::Account => match account {
                Some(a) => Cow::Owned(["a:", a].concat()),
                None => continue,
            },
            Scope::Org => match org {
                Some(o) => Cow::Owned(["o:", o].concat()),
                None => continue,
            },
            Scope::Ip => Cow::Owned(ip_key(ip_prefix(policy, s.ip))),
            Scope::Country => Cow::Owned(["c:", &country].concat()),
            Scope::Global => Cow::Borrowed("g"),
        };
        let sp = policy.scope(scope);
        let mut horizons = Cow::Borrowed(sp.horizons.as_slice());
        if scope == Scope::Country {
            if let Some(c) = policy.countries.get(country.as_ref()) {
                horizons = Cow::Borrowed(c.as_slice());
            }
        }
        for o in [oo, ao].into_iter().flatten() {
            let over = &o.horizons[scope as usize];
            if !over.is_empty() {
                horizons = Cow::Owned(policy::merge(&horizons, over));
            }
        }
        for h in horizons.iter() {
            // `{scope key}|{horizon}`, without the formatting machinery (11 keys per request).
            let mut k = String::with_capacity(key.len() + 1 + h.name.len());
            k.push_str(&key);
            k.push('|');
            k.push_str(&h.name);
            out.push(BucketSpec {
                key: k,
                capacity: h.capacity.get(),
                window_ns: h.window_ns.get(),
                fixed_offset_ns: h.fixed_offset_ns,
                shadow: sp.shadow,
                scope,
                horizon: h.name.clone(),
            });
        }
    }
    (out, tier)
}

/// `i:{prefix}`, the IP scope's subject. IPv4 is written by hand: through `Display` it was
/// ~1.9 k instructions a request (callgrind), most of a request's key building; IPv6 keeps
/// `Display`, whose zero compression is not worth a copy.
fn ip_key(net: ipnet::IpNet) -> String {
    fn push_u8(k: &mut String, n: u8) {
        if n >= 100 {
            k.push(char::from(b'0' + n / 100));
        }
        if n >= 10 {
            k.push(char::from(b'0' + n / 10 % 10));
        }
        k.push(char::from(b'0' + n % 10));
    }
    match net {
        ipnet::IpNet::V4(n) => {
            let mut k = String::with_capacity(20);
            k.push_str("i:");
            for (i, &o) in n.addr().octets().iter().enumerate() {
                if i > 0 {
                    k.push('.');
                }
                push_u8(&mut k, o);
            }
            k.push('/');
            push_u8(&mut k, n.prefix_len());
            k
        }
        ipnet::IpNet::V6(_) => format!("i:{net}"),
    }
}

/// The IP scope key: the address truncated to the configured prefix (IPv4-mapped IPv6 counts as
/// IPv4, so one client cannot get two budgets by switching notation).
pub fn ip_prefix(policy: &QuotaPolicy, ip: IpAddr) -> ipnet::IpNet {
    let ip = ip.to_canonical();
    let len = if ip.is_ipv4() { policy.v4_prefix } else { policy.v6_prefix };
    ipnet::IpNet::new(ip, len).map_or_else(|_| ipnet::IpNet::from(ip), |n| n.trunc())
}
