//! The running proxy: shared state, start-up, reload and shutdown.
//!
//! [`start`] takes its world as arguments (config, clock) and binds the configured addresses
//! (tests use port 0); it returns a [`Running`] handle with the bound addresses. [`serve`] is the
//! CLI's entry point: it adds signal handling (SIGHUP reloads, SIGTERM/SIGINT drain and exit).
//! State that must outlive a reload — quota buckets, pauses, blocks, metrics — lives in
//! [`Shared`]; everything derived from the config file lives in a [`Runtime`] swapped atomically.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::SharedClock;
use crate::config::{Config, ConfigErrors};
use crate::forward::Upstreams;
use crate::identity::Identifier;
use crate::listener::{accept_loop, Listener};
use crate::metrics::Metrics;
use crate::quota::QuotaEngine;
use crate::tls::CertStore;

/// Everything derived from one config file; replaced whole on reload.
pub struct Runtime {
    pub config: Config,
    pub identifier: Identifier,
    pub upstreams: Upstreams,
}

impl Runtime {
    fn build(config: Config, clock: &SharedClock) -> anyhow::Result<Self> {
        let identifier = Identifier::new(config.identity.clone(), clock.clone());
        let upstreams = Upstreams::new(&config.upstream)?;
        Ok(Self { config, identifier, upstreams })
    }
}

/// State shared by every connection; survives reloads.
pub struct Shared {
    runtime: ArcSwap<Runtime>,
    pub clock: SharedClock,
    pub quota: QuotaEngine,
    pub metrics: Metrics,
    /// The audit log (opened at start; flushed at shutdown).
    pub audit: crate::audit::AuditLog,
    /// Route groups paused by an operator (503 `paused`).
    pub paused: RwLock<BTreeSet<String>>,
    /// In-flight request cap (tower's concurrency limit shares it across connections).
    pub inflight: Arc<Semaphore>,
    pub certs: Option<Arc<CertStore>>,
    /// Blocked accounts, organisations and IP prefixes (persisted).
    pub blocks: Arc<crate::blocks::Blocks>,
    /// CVs per account in the current hour, for the bounded top-N gauge.
    pub top_accounts: crate::metrics::TopAccounts,
    /// The rate-limited warning for responses whose count is uncertain.
    pub uncertain_log: crate::integrity::UncertainLog,
    /// With the Redis store: blocks and pauses shared by every replica (see [`Shared::sync_flags`]).
    pub flags: Option<Arc<dyn crate::quota::redis::SharedFlags>>,
    /// The config file, for reloads.
    pub config_path: Option<PathBuf>,
}

impl Shared {
    /// The current runtime (config, identifier, upstream client).
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Pause or resume a route group.
    pub fn set_paused(&self, group: &str, paused: bool) {
        let mut p = self.paused.write().expect("pause lock");
        if paused {
            p.insert(group.to_string());
        } else {
            p.remove(group);
        }
        self.metrics.paused.with_label_values(&[group]).set(i64::from(paused));
    }

    /// Pause or resume a route group on every replica (through Redis when configured).
    pub fn pause(&self, group: &str, paused: bool) {
        self.set_paused(group, paused);
        self.push_flag(PAUSE_FLAGS, group.to_string(), paused);
    }

    /// Block on every replica: here at once, and through Redis (when configured) for the others.
    pub fn block(&self, b: crate::blocks::Block) -> anyhow::Result<crate::blocks::Block> {
        let b = self.blocks.add(b, self.clock.now())?;
        self.count_block(&b);
        self.push_flag(BLOCK_FLAGS, block_flag(&b), true);
        Ok(b)
    }

    /// Unblock on every replica; `false` when there was no such block here.
    pub fn unblock(&self, scope: crate::blocks::BlockScope, key: &str) -> anyhow::Result<bool> {
        let removed = self.blocks.remove(scope, key, self.clock.now())?;
        if let Some(flags) = self.flags.clone() {
            let prefix = format!("{}|{key}|", scope.as_str());
            let metrics = self.metrics.store_errors.clone();
            tokio::spawn(async move {
                let members = flags.members(BLOCK_FLAGS).await.unwrap_or_default();
                for m in members.iter().filter(|m| m.starts_with(&prefix)) {
                    if flags.set(BLOCK_FLAGS, m, false).await.is_err() {
                        metrics.with_label_values(&["flags"]).inc();
                    }
                }
            });
        }
        Ok(removed)
    }

    /// Blocks made here by a rule, shared with the other replicas.
    pub fn share_blocks(&self, made: Vec<crate::blocks::Block>) {
        for b in made {
            self.count_block(&b);
            self.push_flag(BLOCK_FLAGS, block_flag(&b), true);
        }
    }

    fn count_block(&self, b: &crate::blocks::Block) {
        self.metrics.blocks_created.with_label_values(&[b.scope.as_str(), &b.source]).inc();
    }

    fn push_flag(&self, kind: &'static str, name: String, on: bool) {
        if let Some(flags) = self.flags.clone() {
            let metrics = self.metrics.store_errors.clone();
            tokio::spawn(async move {
                if let Err(e) = flags.set(kind, &name, on).await {
                    metrics.with_label_values(&["flags"]).inc();
                    tracing::warn!(error = %e, kind, "could not share a block/pause through Redis");
                }
            });
        }
    }

    /// Housekeeping, once a second with the Redis store: take the shared blocks and pauses as
    /// they are in Redis (a block or pause made on any replica applies here within a second, and
    /// survives a restart of every replica). When Redis cannot be read, the local state stays.
    pub async fn sync_flags(&self) {
        let Some(flags) = &self.flags else { return };
        if let Ok(members) = flags.members(BLOCK_FLAGS).await {
            let shared: Vec<crate::blocks::Block> = members
                .iter()
                .filter_map(|m| m.splitn(3, '|').nth(2))
                .filter_map(|j| serde_json::from_str(j).ok())
                .collect();
            if let Err(e) = self.blocks.replace(shared, self.clock.now()) {
                tracing::warn!(error = %e, "could not persist shared blocks");
            }
        }
        if let Ok(groups) = flags.members(PAUSE_FLAGS).await {
            let now: BTreeSet<String> = groups.into_iter().collect();
            let before = self.paused.read().expect("pause lock").clone();
            for g in before.difference(&now) {
                self.set_paused(g, false);
            }
            for g in now.difference(&before) {
                self.set_paused(g, true);
            }
        }
    }

    pub fn is_paused(&self, group: &str) -> bool {
        self.paused.read().expect("pause lock").contains(group)
    }

    /// Re-read the config file and swap it in. On any error the running config stays, every
    /// error is logged, and `cvgate_config_reloads_total{result="failed"}` counts it.
    pub fn reload(&self) -> Result<(), ConfigErrors> {
        let Some(path) = &self.config_path else { return Ok(()) };
        let result = Config::load(path).and_then(|c| self.apply(c).map_err(|e| ConfigErrors::single(path, e)));
        match &result {
            Ok(()) => {
                self.metrics.config_reloads.with_label_values(&["ok"]).inc();
                tracing::info!(file = %path.display(), "config reloaded");
            }
            Err(errs) => {
                self.metrics.config_reloads.with_label_values(&["failed"]).inc();
                for e in &errs.errors {
                    tracing::error!(file = %errs.file, error = %e, "config reload rejected; keeping the running config");
                }
            }
        }
        result
    }

    /// Swap in an already validated config. Quota buckets are kept (the engine resizes them
    /// lazily, keeping what was spent).
    pub fn apply(&self, config: Config) -> anyhow::Result<()> {
        if let (Some(certs), Some(tls)) = (&self.certs, &config.listen.tls) {
            certs.reload(tls.files.clone()).context("reloading the TLS certificate")?;
        }
        self.blocks.set_file(config.blocks.file.clone()).context("moving the block list")?;
        let rt = Runtime::build(config, &self.clock)?;
        self.runtime.store(Arc::new(rt));
        Ok(())
    }
}

/// Redis flag kinds for shared blocks and pauses.
const BLOCK_FLAGS: &str = "blocks";
const PAUSE_FLAGS: &str = "pauses";

/// A block as a shared flag: `scope|key|json`, so an unblock can find it by prefix.
fn block_flag(b: &crate::blocks::Block) -> String {
    format!("{}|{}|{}", b.scope.as_str(), b.key, serde_json::to_string(b).unwrap_or_default())
}

/// A started proxy.
pub struct Running {
    pub shared: Arc<Shared>,
    pub tls_addr: Option<SocketAddr>,
    pub plain_addr: Option<SocketAddr>,
    pub ops_addr: Option<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
    stop: CancellationToken,
    tasks: TaskTracker,
    grace: Duration,
}

impl Running {
    /// Stop accepting, let in-flight requests finish (up to the grace period), then return.
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.tasks.close();
        if tokio::time::timeout(self.grace, self.tasks.wait()).await.is_err() {
            tracing::warn!(grace = ?self.grace, "grace period over; dropping remaining connections");
        }
        // After the drain, so the lines of the requests that just finished are written too.
        self.shared.audit.close().await;
    }

    /// A token that is cancelled when shutdown begins.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("binding the {what} listener on {addr}"))
}

/// Bind the configured listeners and start serving.
pub async fn start(config: Config, config_path: Option<PathBuf>, clock: SharedClock) -> anyhow::Result<Running> {
    let certs = match &config.listen.tls {
        Some(t) => Some(CertStore::new(t.files.clone())?),
        None => None,
    };
    let limits = config.limits.clone();
    let metrics = Metrics::new();
    // Memory by default; Redis behind the breaker and failure policy with `store.kind: redis`.
    let (store, flags) =
        crate::quota::build_store(&config.store, clock.clone(), config.quota.max_tracked_keys(), &metrics)
            .context("building the quota store")?;
    let audit = crate::audit::AuditLog::start(&config.audit, metrics.audit_dropped.clone())?;
    let shared = Arc::new(Shared {
        runtime: ArcSwap::from_pointee(Runtime::build(config.clone(), &clock)?),
        quota: QuotaEngine::new(store),
        metrics,
        audit,
        paused: RwLock::new(BTreeSet::new()),
        inflight: Arc::new(Semaphore::new(limits.max_inflight_requests)),
        certs: certs.clone(),
        blocks: crate::blocks::Blocks::open(config.blocks.file.clone())?,
        top_accounts: crate::metrics::TopAccounts::default(),
        uncertain_log: crate::integrity::UncertainLog::default(),
        flags,
        config_path,
        clock,
    });
    for g in &config.paused_groups {
        shared.pause(g, true);
    }
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let conns = Arc::new(Semaphore::new(limits.max_connections));

    let mut tls_addr = None;
    if let (Some(t), Some(certs)) = (&config.listen.tls, certs) {
        let tcp = bind(t.addr, "TLS").await?;
        tls_addr = Some(tcp.local_addr()?);
        let acceptor = TlsAcceptor::from(crate::tls::server_config(certs)?);
        let l = Listener { tcp, tls: Some(acceptor) };
        tokio::spawn(accept_loop(l, shared.clone(), conns.clone(), stop.clone(), tasks.clone()));
    }
    let mut plain_addr = None;
    if let Some(a) = config.listen.plain {
        let tcp = bind(a, "plain HTTP").await?;
        plain_addr = Some(tcp.local_addr()?);
        let l = Listener { tcp, tls: None };
        tokio::spawn(accept_loop(l, shared.clone(), conns.clone(), stop.clone(), tasks.clone()));
    }
    let mut ops_addr = None;
    if let Some(a) = config.listen.metrics {
        let tcp = bind(a, "metrics").await?;
        ops_addr = Some(tcp.local_addr()?);
        tokio::spawn(crate::ops::serve(tcp, shared.clone(), stop.clone()));
    }
    let mut admin_addr = None;
    if let Some(a) = config.listen.admin {
        let tcp = bind(a, "admin").await?;
        admin_addr = Some(tcp.local_addr()?);
        tokio::spawn(crate::admin::serve(tcp, shared.clone(), stop.clone()));
    }
    tokio::spawn(crate::ops::housekeeping(shared.clone(), stop.clone()));
    tracing::info!(tls = ?tls_addr, plain = ?plain_addr, ops = ?ops_addr, upstream = %config.upstream.uri, "cvgate listening");
    Ok(Running { shared, tls_addr, plain_addr, ops_addr, admin_addr, stop, tasks, grace: limits.shutdown_grace })
}

/// `cvgate serve`: start from a config file and run until SIGTERM/SIGINT; SIGHUP reloads.
pub async fn serve(path: &Path, clock: SharedClock) -> anyhow::Result<()> {
    let config = Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let running = start(config, Some(path.to_path_buf()), clock).await?;
    let shared = running.shared.clone();
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = hup.recv() => { let _ = shared.reload(); }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    tracing::info!("shutting down: draining connections");
    running.shutdown().await;
    tracing::info!("bye");
    Ok(())
}
