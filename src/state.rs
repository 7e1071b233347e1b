//! State shared by every connection, and what one config file makes of it.
//!
//! [`Shared`] holds what must outlive a reload — quota buckets, pauses, blocks, metrics, the
//! audit log — and the current [`Runtime`], everything derived from one config file (validated
//! config, token verifier, upstream client), swapped whole and atomically on reload: a reload
//! builds everything first and changes nothing when any part fails. The wiring that creates it
//! (listeners, tasks, signals) is `server`, which nothing imports.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::sync::Semaphore;

use crate::clock::SharedClock;
use crate::config::{Config, ConfigErrors};
use crate::forward::Upstreams;
use crate::net::tls::CertStore;
use crate::observe::metrics::Metrics;
use crate::policy::identity::Identifier;
use crate::policy::switches::{Switch, Switches};
use crate::quota::QuotaEngine;

/// Everything derived from one config file; replaced whole on reload.
pub struct Runtime {
    pub config: Config,
    pub identifier: Identifier,
    pub upstreams: Upstreams,
}

impl Runtime {
    pub fn build(config: Config, clock: &SharedClock) -> anyhow::Result<Self> {
        let identifier = Identifier::new(config.identity.clone(), clock.clone());
        let upstreams = Upstreams::new(&config.upstream)?;
        Ok(Self { config, identifier, upstreams })
    }
}

/// State shared by every connection; survives reloads.
pub struct Shared {
    pub(crate) runtime: ArcSwap<Runtime>,
    pub clock: SharedClock,
    pub quota: QuotaEngine,
    pub metrics: Metrics,
    /// The audit log (opened at start; flushed at shutdown).
    pub audit: crate::observe::audit::AuditLog,
    /// Route groups paused by an operator (503 `paused`).
    pub pauses: Switches,
    /// Route groups whose CVs an operator masked (contact data removed for everyone).
    pub masks: Switches,
    /// In-flight request cap (tower's concurrency limit shares it across connections).
    pub inflight: Arc<Semaphore>,
    pub certs: Option<Arc<CertStore>>,
    /// Blocked accounts, organisations and IP prefixes (persisted).
    pub blocks: Arc<crate::policy::blocks::Blocks>,
    /// When each account and organisation was first seen (probation; `seen.jsonl`).
    pub seen: crate::policy::probation::FirstSeen,
    /// Sliding sums of CVs per cohort and the guard's steps (kept across reloads).
    pub guard: crate::policy::guard::PopulationGuard,
    /// The last refusals per account, organisation and IP (the admin API's `/v1/explain`).
    pub refusals: crate::observe::refusals::Refusals,
    /// The rate-limited warning for responses whose count is uncertain.
    pub uncertain_log: crate::count::integrity::UncertainLog,
    /// With the Redis store: blocks and pauses shared by every replica (see [`Shared::sync_flags`]).
    pub flags: Option<Arc<dyn crate::quota::redis::SharedFlags>>,
    /// The config file, for reloads.
    pub config_path: Option<PathBuf>,
    /// Block, unblock and pause changes on their way to Redis, in order (see [`crate::share`]).
    pub outbox: Arc<crate::share::Outbox>,
    /// The settings read only at start, as the process started with them ([`start_only`]).
    pub started_with: serde_json::Value,
    /// This process among the replicas (fresh per start): its field in the shared guard sums.
    pub process_id: String,
    /// When this process started (the admin API's `/v1/version`).
    pub started_at: jiff::Timestamp,
    /// The operator's guard operations applied here (id → when made), so each applies once.
    pub guard_ops_seen: std::sync::Mutex<std::collections::HashMap<String, jiff::Timestamp>>,
}

/// Settings read only at start: a reload that changes one keeps the old value until the next
/// restart, and says so. The keys as written in YAML.
pub const START_ONLY: &[&str] = &[
    "listen.tls.addr",
    "listen.plain",
    "listen.metrics",
    "listen.admin",
    "limits.max_connections",
    "limits.max_inflight_requests",
    "limits.shutdown_grace",
    "quota.max_tracked_keys",
    "store.kind",
    "store.redis",
    "audit",
    "paused",
];

/// The values of [`START_ONLY`] in `raw`, by key.
pub fn start_only(raw: &crate::config::raw::RawConfig) -> serde_json::Value {
    let all = serde_json::to_value(raw).unwrap_or_default();
    let picked = START_ONLY.iter().map(|k| {
        let pointer = format!("/{}", k.replace('.', "/"));
        ((*k).to_string(), all.pointer(&pointer).cloned().unwrap_or_default())
    });
    serde_json::Value::Object(picked.collect())
}

/// SHA-256 of the config as parsed (comments and layout do not change it), hex.
pub fn config_hash(config: &Config) -> String {
    use sha2::{Digest, Sha256};
    let bytes = serde_json::to_vec(&config.raw).unwrap_or_default();
    Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// What a good reload changed that only a restart applies.
#[derive(Debug, Default)]
pub struct Reloaded {
    /// Keys of [`START_ONLY`] whose value in the file differs from the running one.
    pub restart_pending: Vec<String>,
}

impl Shared {
    /// The current runtime (config, identifier, upstream client).
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Pause or resume a route group here (logged, kept in `pauses.json` beside the block file,
    /// so a restart does not quietly reopen a group an operator paused).
    pub fn set_paused(&self, group: &str, paused: bool) {
        self.pauses.set(group, paused, self.switch_file(&self.pauses).as_deref());
    }

    /// Mask or unmask a route group's CVs here (kept in `masks.json`).
    pub fn set_masked(&self, group: &str, masked: bool) {
        self.masks.set(group, masked, self.switch_file(&self.masks).as_deref());
    }

    /// The file a switch is kept in, beside the block file (`None` when blocks are kept in
    /// memory only).
    pub fn switch_file(&self, s: &Switches) -> Option<PathBuf> {
        self.state_file(s.kind().file_name())
    }

    /// A state file beside the block file (`None` when blocks are kept in memory only): the one
    /// place that decides where pauses, masks, first-seen times and the guard's state live.
    pub fn state_file(&self, name: &str) -> Option<PathBuf> {
        self.runtime().config.blocks.file.as_ref().map(|f| f.with_file_name(name))
    }

    /// `seen.jsonl` beside the block file (`None` when blocks are kept in memory only).
    pub fn seen_file(&self) -> Option<PathBuf> {
        self.state_file("seen.jsonl")
    }

    /// With Redis: share this replica's newcomers (the earliest time any replica saw a subject
    /// wins) and, with `all`, take every time the replicas recorded. One round trip each;
    /// housekeeping, never the request path. Redis away: kept and tried again.
    pub async fn sync_seen(&self, all: bool) {
        use crate::policy::probation::Seen;
        let Some(flags) = &self.flags else { return };
        let fresh = if all { self.seen.entries() } else { self.seen.take_fresh() };
        if !fresh.is_empty() {
            let entries: Vec<(String, i64)> = fresh.iter().map(|s| (s.field(), s.first)).collect();
            match flags.seen_put(&entries).await {
                Ok(times) => {
                    for (s, first) in fresh.into_iter().zip(times) {
                        self.seen.merge(&Seen { first, ..s });
                    }
                }
                Err(_) if all => {}
                Err(_) => self.seen.put_back(fresh),
            }
        }
        if all {
            if let Ok(v) = flags.seen_all().await {
                for (field, first) in v {
                    if let Some(s) = Seen::from_field(&field, first) {
                        self.seen.merge(&s);
                    }
                }
            }
        }
    }

    /// With Redis: push this replica's guard sums and take the others' (one round trip), so
    /// every replica decides on the fleet's sums from memory, one second late. `whole_day`
    /// after a start or an outage; else the current and the previous minute.
    pub async fn sync_guard(&self, whole_day: bool) -> bool {
        use crate::policy::guard::minute_of;
        let Some(flags) = &self.flags else { return true };
        let now = self.clock.now();
        let deltas = self.guard.take_deltas();
        let push: Vec<(String, i64, u64)> =
            deltas.iter().map(|d| (d.cohort.to_string(), d.minute, d.local_total)).collect();
        let (m, span) = (minute_of(now), if whole_day { 1440 } else { 2 });
        let cohorts = self.guard.cohorts();
        let read: Vec<(String, i64)> =
            cohorts.iter().flat_map(|c| (0..span).map(move |i| (c.to_string(), m - i))).collect();
        match flags.guard_sync(&self.process_id, &push, &read).await {
            Ok(totals) => {
                let mut it = totals.into_iter();
                for c in &cohorts {
                    for i in 0..span {
                        self.guard.set_remote(c, m - i, it.next().unwrap_or(0), now);
                    }
                }
                true
            }
            Err(_) => false, // the local totals are pushed again whole next time
        }
    }

    /// The guard's state file beside the block file (levels and baselines, not the sums).
    pub fn guard_file(&self) -> Option<PathBuf> {
        self.state_file("guard.json")
    }

    /// Write the guard's levels and baselines. Blocking I/O.
    pub fn save_guard(&self) {
        let Some(path) = self.guard_file() else { return };
        let bytes = serde_json::to_vec(&self.guard.save()).unwrap_or_default();
        if let Err(e) = crate::persist::write_atomically(&path, &bytes) {
            tracing::warn!(error = %e, file = %path.display(), "could not write the guard's state");
        }
    }

    /// Log, audit and count the guard's transitions of one tick.
    pub fn report_guard(&self, transitions: Vec<crate::policy::guard::Transition>) {
        for t in transitions {
            let cohort = t.cohort.to_string();
            self.metrics.guard_state.with_label_values(&[&t.rule, &cohort]).set(t.to as i64);
            if t.to > t.from {
                self.metrics.guard_trips.with_label_values(&[&t.rule, t.to.as_str()]).inc();
            }
            tracing::warn!(
                guard = ?t.rule, cohort = ?cohort, from = t.from.as_str(), to = t.to.as_str(),
                reason = t.reason.as_str(), sum = t.sum, threshold = ?t.threshold,
                "population guard {}", if t.to > t.from { "stepped up" } else { "released" }
            );
            self.audit.event(
                t.at,
                "guard",
                serde_json::json!({
                    "guard": &*t.rule, "cohort": cohort, "from": t.from.as_str(), "to": t.to.as_str(),
                    "reason": t.reason.as_str(), "sum": t.sum, "threshold": t.threshold,
                }),
            );
        }
    }

    /// Write `seen.jsonl` when it changed, logging a failure. Blocking I/O.
    pub fn save_seen(&self) {
        if let Some(path) = self.seen_file() {
            if let Err(e) = self.seen.save_if_changed(&path) {
                tracing::warn!(error = %e, file = %path.display(), "could not write the first-seen list");
            }
        }
    }

    /// Write the memory store's spent buckets to the snapshot file (no-op for Redis or without
    /// a file), logging a failure. Blocking I/O.
    pub fn save_snapshot(&self) {
        let rt = self.runtime();
        if let (crate::quota::StoreConfig::Memory, Some((path, _))) = (&rt.config.store, &rt.config.snapshot) {
            if let Err(e) = self.quota.save_snapshot(path) {
                tracing::warn!(error = %e, file = %path.display(), "could not write the quota snapshot");
            }
        }
    }

    /// Every series the dashboards and alerts read, at zero, for the labels this config can
    /// produce: a counter born at its first event has no earlier sample, so `increase()` misses
    /// that event and the first refused reload, block or org refusal would fire no alert. Run at
    /// start and after every reload (series already counting keep their values).
    pub fn prime_metrics(&self) {
        use crate::quota::Scope;
        let rt = self.runtime();
        let (cfg, m) = (&rt.config, &self.metrics);
        for result in ["ok", "failed"] {
            m.config_reloads.with_label_values(&[result]);
        }
        for scope in Scope::ALL {
            for h in cfg.quota.horizon_names(scope) {
                m.quota_rejections.with_label_values(&[scope.as_str(), &h]);
                m.quota_would_reject.with_label_values(&[scope.as_str(), &h]);
            }
        }
        let tiers: Vec<String> = std::iter::once("default".to_string())
            .chain(cfg.quota.tier_names().iter().map(|t| t.to_string()))
            .collect();
        for r in cfg.routes.iter() {
            m.requests.with_label_values(&[&r.name, &r.group, "2xx", "allowed"]);
            m.request_duration.with_label_values(&[&r.name, "2xx"]);
            m.response_bytes.with_label_values(&[&r.name]);
            m.request_bytes.with_label_values(&[&r.name]);
            if !r.is_charged() {
                continue;
            }
            for t in &tiers {
                m.cvs_delivered.with_label_values(&[r.name.as_ref(), t.as_str()]);
            }
            m.requests.with_label_values(&[&r.name, &r.group, "4xx", "quota-exceeded"]);
            for reason in crate::count::integrity::UNCERTAIN_REASONS {
                m.count_uncertain.with_label_values(&[&r.name, reason]);
            }
            if r.mask.is_some() {
                for reason in crate::policy::masking::Reason::ALL {
                    m.cvs_masked.with_label_values(&[&r.name, reason.as_str()]);
                }
                m.mask_dropped.with_label_values(&[&r.name]);
            }
        }
        for g in cfg.routes.groups() {
            m.paused.with_label_values(&[&g]);
            m.masked.with_label_values(&[&g]);
        }
        for scope in ["account", "org", "ip"] {
            m.blocks_created.with_label_values(&[scope, "manual"]);
            m.blocks_active.with_label_values(&[scope]);
        }
        for rule in &cfg.guard.rules {
            m.guard_state.with_label_values(&[&*rule.name, &rule.cohort.to_string()]);
            for step in &rule.steps {
                m.guard_trips.with_label_values(&[&*rule.name, step.as_str()]);
            }
        }
        for rule in &cfg.blocks.rules {
            m.blocks_created.with_label_values(&[rule.block.as_str(), &format!("rule:{}", rule.name)]);
        }
        for kind in ["upstream-unreachable", "upstream-timeout", "upstream-failed"] {
            m.upstream_errors.with_label_values(&[kind]);
        }
        for reason in ["quota", "closed"] {
            m.streams_truncated.with_label_values(&[reason]);
        }
        for op in ["reserve", "settle", "peek", "flags"] {
            m.store_errors.with_label_values(&[op]);
        }
        for decision in ["closed", "local"] {
            for reason in ["error", "timeout", "breaker_open"] {
                m.quota_store_fallback.with_label_values(&[decision, reason]);
            }
        }
    }

    /// Pause or resume a route group on every replica (through Redis when configured).
    pub fn pause(&self, group: &str, paused: bool) {
        self.set_paused(group, paused);
        self.share(|o| o.switch(Switch::Pause, group.to_string(), paused));
    }

    /// Mask or unmask a route group on every replica (through Redis when configured).
    pub fn mask(&self, group: &str, masked: bool) {
        self.set_masked(group, masked);
        self.share(|o| o.switch(Switch::Mask, group.to_string(), masked));
    }

    /// Block on every replica: here at once, and through Redis (when configured) for the others.
    pub fn block(&self, b: crate::policy::blocks::Block) -> anyhow::Result<crate::policy::blocks::Block> {
        let b = self.blocks.add(b)?;
        self.count_block(&b);
        self.share(|o| o.block(b.clone()));
        Ok(b)
    }

    /// Unblock on every replica; `false` when there was no such block here.
    pub fn unblock(&self, scope: crate::policy::blocks::BlockScope, key: &str) -> anyhow::Result<bool> {
        let removed = self.blocks.remove(scope, key)?;
        self.share(|o| o.unblock(scope, scope.stored_key(key)));
        Ok(removed)
    }

    /// Blocks made here by a rule, shared with the other replicas.
    pub fn share_blocks(&self, made: Vec<crate::policy::blocks::Block>) {
        for b in made {
            self.count_block(&b);
            self.share(|o| o.block(b));
        }
    }

    fn count_block(&self, b: &crate::policy::blocks::Block) {
        self.metrics.blocks_created.with_label_values(&[b.scope.as_str(), &b.source]).inc();
    }

    /// Queue a change for the other replicas (with the Redis store) and write it soon; see
    /// [`crate::share`] for why nothing is lost while Redis is down.
    fn share(&self, change: impl FnOnce(&crate::share::Outbox)) {
        if let Some(flags) = &self.flags {
            change(&self.outbox);
            crate::share::flush_soon(&self.outbox, flags, self.metrics.store_errors.clone());
        }
    }

    /// Housekeeping, once a second with the Redis store: take the shared blocks and pauses as
    /// they are in Redis (a block or pause made on any replica applies here within a second, and
    /// survives a restart of every replica) once every local change has reached it. When Redis
    /// cannot be written or read, the local state stays.
    pub async fn sync_flags(&self) {
        let Some(flags) = &self.flags else { return };
        let Some(state) = self.outbox.read(&**flags).await else { return };
        if let Err(e) = self.blocks.replace(state.blocks, self.clock.now()) {
            tracing::warn!(error = %e, "could not persist shared blocks");
        }
        self.pauses.replace(&state.paused, self.switch_file(&self.pauses).as_deref());
        self.masks.replace(&state.masked, self.switch_file(&self.masks).as_deref());
        self.apply_guard_ops(&state.guard_ops);
    }

    /// An operator's guard operation made here (admin API): applied, reported, and shared so
    /// that every replica applies it within a second.
    ///
    /// # Errors
    /// As [`crate::policy::guard::PopulationGuard::apply`]; nothing is shared then.
    pub fn guard_operate(&self, op: crate::policy::guard::OperatorOp) -> Result<(), crate::policy::guard::GuardError> {
        let transitions = self.guard.apply(&op, self.clock.now())?;
        self.report_guard(transitions);
        self.guard_ops_seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(op.id.clone(), op.at);
        self.share(|o| o.guard_op(op.to_member(), true));
        Ok(())
    }

    /// The other replicas' guard operations not applied here yet, in the order they were made.
    /// A starting replica replays those of the last [`ops::REPLAY`] before its start; those
    /// older than [`ops::KEEP`] are dropped from Redis. Two operators acting on two replicas in
    /// the same second may see their operations applied in a different order on each.
    ///
    /// [`ops::REPLAY`]: crate::policy::guard::ops::REPLAY
    /// [`ops::KEEP`]: crate::policy::guard::ops::KEEP
    fn apply_guard_ops(&self, members: &[String]) {
        use crate::policy::guard::{ops, OperatorOp};
        let now = self.clock.now();
        let mut list: Vec<(OperatorOp, &String)> =
            members.iter().filter_map(|m| Some((OperatorOp::from_member(m)?, m))).collect();
        list.sort_by(|(a, _), (b, _)| (a.at, &a.id).cmp(&(b.at, &b.id)));
        let mut seen = self.guard_ops_seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (op, member) in list {
            if now.duration_since(op.at) > ops::KEEP {
                self.outbox.guard_op(member.clone(), false);
                continue;
            }
            if seen.insert(op.id.clone(), op.at).is_some() || op.at < self.started_at - ops::REPLAY {
                continue;
            }
            match self.guard.apply(&op, now) {
                Ok(transitions) => {
                    tracing::warn!(guard = ?op.rule, op = op.name(), by = ?op.by, "guard operation from another replica applied");
                    self.report_guard(transitions);
                }
                Err(e) => {
                    tracing::info!(guard = ?op.rule, op = op.name(), error = %e, "guard operation from another replica not applicable here")
                }
            }
        }
        seen.retain(|_, at| now.duration_since(*at) <= ops::KEEP);
    }

    pub fn is_paused(&self, group: &str) -> bool {
        self.pauses.is_on(group)
    }

    /// Re-read the config file and swap it in. On any error the running config stays, every
    /// error is logged, and `cvgate_config_reloads_total{result="failed"}` counts it. A good
    /// reload that changes a setting read only at start names it (log line, answer, metric).
    pub fn reload(&self) -> Result<Reloaded, ConfigErrors> {
        let Some(path) = &self.config_path else { return Ok(Reloaded::default()) };
        let result = Config::load(path).and_then(|c| {
            let now = start_only(&c.raw);
            self.apply(c).map_err(|e| ConfigErrors::single(path, e))?;
            Ok(now)
        });
        match result {
            Ok(now) => {
                self.metrics.config_reloads.with_label_values(&["ok"]).inc();
                self.metrics.config_last_reload_successful.set(1);
                tracing::info!(file = %path.display(), "config reloaded");
                let restart_pending: Vec<String> =
                    START_ONLY.iter().filter(|k| now[**k] != self.started_with[**k]).map(|k| k.to_string()).collect();
                for key in &restart_pending {
                    tracing::warn!(key = %key, "setting read only at start changed: the old value stays until a restart");
                }
                self.metrics.config_restart_pending.set(i64::from(!restart_pending.is_empty()));
                Ok(Reloaded { restart_pending })
            }
            Err(errs) => {
                self.metrics.config_reloads.with_label_values(&["failed"]).inc();
                self.metrics.config_last_reload_successful.set(0);
                for e in &errs.errors {
                    tracing::error!(file = %errs.file, error = %e, "config reload rejected; keeping the running config");
                }
                Err(errs)
            }
        }
    }

    /// Swap in an already validated config. Quota buckets are kept (the engine resizes them
    /// lazily, keeping what was spent).
    ///
    /// All or nothing: the runtime (token keys, upstream client and its CA) and the certificate
    /// are built first; the block list's move to a new file is the one step that writes, and it
    /// switches files only once the new one is written. Any failure leaves everything as it was.
    pub fn apply(&self, config: Config) -> anyhow::Result<()> {
        let cert = match (&self.certs, &config.listen.tls) {
            (Some(_), Some(tls)) => CertStore::prepare(tls.files.clone()).context("reloading the TLS certificate")?,
            _ => None,
        };
        let blocks_file = config.blocks.file.clone();
        let rt = Runtime::build(config, &self.clock)?;
        self.blocks.set_file(blocks_file).context("moving the block list")?;
        if let (Some(certs), Some(cert)) = (&self.certs, cert) {
            certs.install(cert);
        }
        self.guard.reconfigure(rt.config.guard.clone(), self.clock.now());
        let hash = config_hash(&rt.config);
        self.metrics.dev_mode.set(i64::from(rt.config.raw.dev_mode));
        if rt.config.raw.dev_mode {
            tracing::warn!(
                "dev_mode is on: tokens signed with identity.dev_hs256 are accepted; never run it in production"
            );
        }
        self.runtime.store(Arc::new(rt));
        self.metrics.config_info.reset();
        self.metrics.config_info.with_label_values(&[&hash]).set(1);
        self.metrics.config_last_reload_success.set(self.clock.now().as_second());
        self.prime_metrics();
        Ok(())
    }
}

impl crate::net::listener::Conns for Shared {
    fn limits(&self) -> crate::net::listener::Limits {
        self.runtime().config.limits.clone()
    }

    fn inflight(&self) -> &Arc<Semaphore> {
        &self.inflight
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}
