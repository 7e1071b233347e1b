//! The composition root: start-up, signals and shutdown. Nothing in the crate imports it.
//!
//! [`start`] takes its world as arguments (config, clock) and binds the configured addresses
//! (tests use port 0); it builds the [`Shared`] state, hands each listener the request handler
//! ([`crate::proxy::handle`]) and returns a [`Running`] handle with the bound addresses.
//! [`serve`] is the CLI's entry point: it adds signal handling (SIGHUP reloads, SIGTERM/SIGINT
//! drain and exit).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::SharedClock;
use crate::config::Config;
use crate::net::listener::{accept_loop, Listener};
use crate::net::tls::CertStore;
use crate::observe::metrics::Metrics;
use crate::policy::switches::{Switch, Switches};
use crate::quota::QuotaEngine;
use crate::state::{Runtime, Shared};

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
        self.shared.save_snapshot();
        self.shared.save_seen();
        self.shared.save_guard();
        // Blocks made by rules since the last housekeeping tick.
        let memory = self.shared.runtime().config.blocks.max_duration;
        if let Err(e) = self.shared.blocks.maintain(self.shared.clock.now(), Duration::ZERO, memory) {
            tracing::warn!(error = %e, "could not write the block list at shutdown");
        }
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
    let audit = crate::observe::audit::AuditLog::start(&config.audit, metrics.audit_dropped.clone())?;
    let pauses = Switches::new(Switch::Pause, metrics.paused.clone());
    let masks = Switches::new(Switch::Mask, metrics.masked.clone());
    let shared = Arc::new(Shared {
        runtime: ArcSwap::from_pointee(Runtime::build(config.clone(), &clock)?),
        quota: QuotaEngine::new(store),
        metrics,
        audit,
        pauses,
        masks,
        inflight: Arc::new(Semaphore::new(limits.max_inflight_requests)),
        certs: certs.clone(),
        blocks: crate::policy::blocks::Blocks::open(config.blocks.file.clone())?,
        seen: crate::policy::probation::FirstSeen::default(),
        guard: crate::policy::guard::PopulationGuard::new(config.guard.clone(), clock.now()),
        process_id: uuid::Uuid::new_v4().to_string(),
        started_at: clock.now(),
        guard_ops_seen: Default::default(),
        refusals: crate::observe::refusals::Refusals::default(),
        uncertain_log: crate::count::integrity::UncertainLog::default(),
        flags,
        config_path,
        clock,
        outbox: Arc::default(),
        started_with: crate::state::start_only(&config.raw),
    });
    shared.prime_metrics();
    shared.metrics.config_info.with_label_values(&[&crate::state::config_hash(&config)]).set(1);
    shared.metrics.config_last_reload_success.set(shared.clock.now().as_second());
    shared.metrics.config_last_reload_successful.set(1);
    shared.metrics.dev_mode.set(i64::from(config.raw.dev_mode));
    if config.raw.dev_mode {
        tracing::warn!(
            "dev_mode is on: tokens signed with identity.dev_hs256 are accepted; never run it in production"
        );
    }
    // Spent budgets from before the last stop (memory store): a restart is not a free refill.
    if let (crate::quota::StoreConfig::Memory, Some((path, _))) = (&config.store, &config.snapshot) {
        let n = shared.quota.load_snapshot(path);
        tracing::info!(buckets = n, file = %path.display(), "quota snapshot read");
    }
    // First-seen times (probation): the file, then what every replica recorded.
    if let Some(path) = shared.seen_file() {
        let n = shared.seen.load(&path)?;
        tracing::info!(subjects = n, file = %path.display(), "first-seen list read");
    }
    shared.sync_seen(true).await;
    // The guard's levels and baselines from before the stop; the fleet's sums of the last day.
    if let Some(saved) = shared.guard_file().and_then(|p| std::fs::read(p).ok()) {
        match serde_json::from_slice(&saved) {
            Ok(s) => shared.guard.restore(s, shared.clock.now()),
            Err(e) => tracing::warn!(error = %e, "guard state file unreadable; the guard starts from normal"),
        }
    }
    shared.sync_guard(true).await;
    // Pauses made at run time before the last stop, then the config's own.
    for g in Switches::saved(shared.switch_file(&shared.pauses).as_deref()) {
        shared.set_paused(&g, true);
    }
    for g in Switches::saved(shared.switch_file(&shared.masks).as_deref()) {
        shared.set_masked(&g, true);
    }
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
        let acceptor = TlsAcceptor::from(crate::net::tls::server_config(certs)?);
        let l = Listener { tcp, tls: Some(acceptor) };
        tokio::spawn(accept_loop(l, shared.clone(), conns.clone(), stop.clone(), tasks.clone(), crate::proxy::handle));
    }
    let mut plain_addr = None;
    if let Some(a) = config.listen.plain {
        let tcp = bind(a, "plain HTTP").await?;
        plain_addr = Some(tcp.local_addr()?);
        let l = Listener { tcp, tls: None };
        tokio::spawn(accept_loop(l, shared.clone(), conns.clone(), stop.clone(), tasks.clone(), crate::proxy::handle));
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
        tokio::spawn(crate::ops::admin::serve(tcp, shared.clone(), stop.clone()));
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
