//! The ops port: `/metrics`, `/healthz`, `/readyz`; and the housekeeping loop.
//!
//! What the probes mean (Kubernetes' liveness and readiness, Envoy's health checks):
//! - `/healthz` (liveness): 200 while the process answers. Restarting helps nothing else.
//! - `/readyz` (readiness): 200 when this replica decides CV requests as configured, 503 when it
//!   would refuse them all for a reason of its own: its quota store is away and a scope is
//!   `fail_closed` (every CV request would get 503). An upstream that refuses connections is
//!   *not* a readiness failure: every replica shares it, pulling them all leaves traffic nowhere
//!   to go, and clients get a clear 502 problem meanwhile; it is reported as `degraded` in the
//!   body (and in `cvgate_upstream_errors_total`). A store on local shares is degraded too.
//!   Each call makes one TCP connect to the upstream and, with Redis, one `PING`. At shutdown
//!   the ops port closes first, so probes fail while connections drain.
//!
//! Housekeeping runs once a second: closure gauges, quota key eviction, tracked-key gauge.

pub mod admin;
pub mod subject;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{header, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::problem::{full, ProxyBody};
use crate::state::Shared;

fn text(status: StatusCode, ctype: &'static str, body: String) -> Response<ProxyBody> {
    Response::builder().status(status).header(header::CONTENT_TYPE, ctype).body(full(body)).expect("response")
}

async fn upstream_reachable(shared: &Shared) -> bool {
    let up = shared.runtime().config.upstream.clone();
    let host = up.authority.host().trim_start_matches('[').trim_end_matches(']').to_string();
    let port = up.authority.port_u16().unwrap_or(if up.https { 443 } else { 80 });
    let connect = tokio::net::TcpStream::connect((host.as_str(), port));
    matches!(tokio::time::timeout(up.connect_timeout.min(Duration::from_secs(1)), connect).await, Ok(Ok(_)))
}

/// `/readyz`: one line per check (`[+]` fine, `[!]` degraded, `[-]` failing), then the verdict.
async fn readiness(shared: &Shared) -> Response<ProxyBody> {
    use crate::quota::Health;
    let (store, upstream) = tokio::join!(shared.quota.health(), upstream_reachable(shared));
    let mut body = String::from("[+] config loaded\n");
    let (mut ready, mut degraded) = (true, false);
    match store {
        Health::Ok => body.push_str("[+] quota store\n"),
        Health::Degraded(why) => {
            degraded = true;
            body.push_str(&format!("[!] quota store degraded: {why}\n"));
        }
        Health::Down(why) => {
            ready = false;
            body.push_str(&format!("[-] quota store down: {why}\n"));
        }
    }
    if upstream {
        body.push_str("[+] upstream reachable\n");
    } else {
        degraded = true;
        body.push_str("[!] upstream unreachable: CV requests answer 502 (not a readiness failure)\n");
    }
    body.push_str(match (ready, degraded) {
        (false, _) => "not ready\n",
        (true, true) => "ready (degraded)\n",
        (true, false) => "ready\n",
    });
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    text(status, "text/plain", body)
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<ProxyBody>, Infallible> {
    Ok(match req.uri().path() {
        "/metrics" => text(StatusCode::OK, "text/plain; version=0.0.4", shared.metrics.render()),
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => readiness(&shared).await,
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    })
}

/// Serve the ops endpoints until `stop`.
pub async fn serve(l: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    serve_local(l, stop, move |req| handle(shared.clone(), req)).await;
}

/// The peer of a request on a local port (ops, admin), in the request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::SocketAddr);

/// Accept loop of the small local HTTP ports (ops, admin): every request goes to `handler`,
/// with its [`Peer`] in the extensions.
pub async fn serve_local<F, Fut>(l: TcpListener, stop: CancellationToken, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static,
{
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            r = l.accept() => match r { Ok(x) => x, Err(_) => continue },
        };
        let (stream, peer) = stream;
        let (b, handler) = (builder.clone(), handler.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(Peer(peer));
                handler(req)
            });
            let _ = b.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// Once a second: closure gauges, quota key eviction, tracked-key gauge.
pub async fn housekeeping(shared: Arc<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut since_snapshot = Duration::ZERO;
    let mut ticks = 0u64;
    let mut guard_synced = true; // the start read the whole day
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let rt = shared.runtime();
        let now = shared.clock.now();
        for (window, closed) in rt.config.closure.states(now) {
            shared.metrics.closed.with_label_values(&[window.as_str()]).set(i64::from(closed));
        }
        shared.sync_flags().await;
        ticks += 1;
        shared.sync_seen(ticks.is_multiple_of(60)).await;
        // The guard: the fleet's sums (Redis), then one evaluation of every rule.
        guard_synced = shared.sync_guard(!guard_synced).await;
        shared.report_guard(shared.guard.tick(now));
        if ticks.is_multiple_of(60) {
            let s = shared.clone();
            let _ = tokio::task::spawn_blocking(move || s.save_guard()).await;
        }
        // Prune expired blocks and stale rule events; write rule-made blocks (file I/O: off
        // the runtime's threads).
        let (blocks, within, memory) =
            (shared.blocks.clone(), rt.config.blocks.longest_window(), rt.config.blocks.max_duration);
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || blocks.maintain(now, within, memory)).await {
            tracing::warn!(error = %e, "could not write the block list; retrying in a second");
        }
        for (scope, n) in shared.blocks.counts(now) {
            shared.metrics.blocks_active.with_label_values(&[scope.as_str()]).set(n);
        }
        shared.quota.sweep();
        since_snapshot += Duration::from_secs(1);
        if rt.config.snapshot.as_ref().is_some_and(|(_, every)| since_snapshot >= *every) {
            since_snapshot = Duration::ZERO;
            let s = shared.clone();
            let _ = tokio::task::spawn_blocking(move || s.save_snapshot()).await;
        }
        let s = shared.clone();
        let _ = tokio::task::spawn_blocking(move || s.save_seen()).await;
        shared.metrics.quota_tracked_keys.set(shared.quota.tracked_keys() as i64);
    }
}
