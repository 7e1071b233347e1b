//! Listeners: accept TCP, terminate TLS, speak HTTP/1.1 or HTTP/2, drain on shutdown.
//!
//! Owns the connection-level limits: the connection cap (excess connections are closed at
//! once), the TLS handshake and header-read timeouts (slowloris), the idle timeout, hyper's
//! header buffer limits, HTTP/2 stream limits, and graceful drain: on shutdown every connection
//! is told to finish its in-flight requests and close; the server waits up to the grace period,
//! then drops the rest. The limits are read when a connection is accepted, so a reload applies
//! them to new connections; the connection and in-flight caps and the grace period are sized
//! once, at start.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::{ServiceBuilder, ServiceExt};

use crate::observe::metrics::Metrics;
use crate::problem::{BoxError, ProxyBody, ProxyError};

/// What the listener needs of the shared state (implemented by `state::Shared`, which the
/// listener does not know): the current limits, the in-flight cap and the connection metrics.
pub trait Conns: Send + Sync + 'static {
    fn limits(&self) -> Limits;
    fn inflight(&self) -> &Arc<Semaphore>;
    fn metrics(&self) -> &Metrics;
}

/// What answers one request: `proxy::handle`, handed in by the wiring (the listener knows
/// nothing of the proxy's story). Never fails: every error is an answer.
pub trait Handler<S>: Fn(Arc<S>, Request<Incoming>, ConnInfo) -> Self::Fut + Copy + Send + Sync + 'static {
    type Fut: std::future::Future<Output = Response<ProxyBody>> + Send + 'static;
}

impl<S, F, Fut> Handler<S> for F
where
    F: Fn(Arc<S>, Request<Incoming>, ConnInfo) -> Fut + Copy + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<ProxyBody>> + Send + 'static,
{
    type Fut = Fut;
}

/// The `limits` section: connection and request limits (validated by `config`).
#[derive(Debug, Clone)]
pub struct Limits {
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed (gracefully: GOAWAY on h2).
    pub idle_timeout: Duration,
    /// Request line and headers; beyond it the proxy answers 431 (hyper's own limit is twice it).
    pub max_header_bytes: usize,
    /// An upstream response body that sends nothing for this long is ended (applied by the
    /// proxy's body wrapper; the client's request body has no such timeout).
    pub idle_body_timeout: Duration,
    /// Read at start (the connection semaphore is sized once; a reload reports it pending).
    pub max_connections: usize,
    /// Read at start, like `max_connections`.
    pub max_inflight_requests: usize,
    pub h2_max_concurrent_streams: u32,
    /// Read at start: how long shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
    /// Decompression-bomb limits for a compressed upstream body on a counted route.
    pub bomb: crate::count::codec::BombGuard,
}

/// What the proxy knows about the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// Came over TLS (`X-Forwarded-Proto: https`).
    pub tls: bool,
}

/// One listening socket and how to serve it.
pub struct Listener {
    pub tcp: TcpListener,
    /// `Some` for the TLS listener.
    pub tls: Option<TlsAcceptor>,
}

/// Accept connections until `stop` is cancelled; connection tasks are spawned on `tasks`, and
/// each request is answered by `handler`.
pub async fn accept_loop<S: Conns>(
    l: Listener,
    shared: Arc<S>,
    conns: Arc<Semaphore>,
    stop: CancellationToken,
    tasks: TaskTracker,
    handler: impl Handler<S>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = l.tcp.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = conns.clone().try_acquire_owned() else {
            shared.metrics().connections_refused.inc();
            drop(stream); // over the connection cap: close at once
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let tls = l.tls.clone();
        let stop = stop.clone();
        tasks.spawn(async move {
            shared.metrics().connections_active.inc();
            serve_connection(stream, peer, tls, shared.clone(), stop, handler).await;
            shared.metrics().connections_active.dec();
            drop(permit);
        });
    }
}

async fn serve_connection<S: Conns>(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    shared: Arc<S>,
    stop: CancellationToken,
    handler: impl Handler<S>,
) {
    let limits = shared.limits();
    let info = ConnInfo { peer, tls: tls.is_some() };
    match tls {
        None => serve_http(TokioIo::new(stream), None, info, &limits, shared, stop, handler).await,
        Some(acceptor) => {
            let hs = tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream)).await;
            match hs {
                Ok(Ok(tls_stream)) => {
                    let h2 = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2");
                    serve_http(TokioIo::new(tls_stream), Some(h2), info, &limits, shared, stop, handler).await
                }
                Ok(Err(e)) => {
                    shared.metrics().tls_handshake_failures.inc();
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                }
                Err(_) => {
                    shared.metrics().tls_handshake_failures.inc();
                    tracing::debug!(%peer, "TLS handshake timed out");
                }
            }
        }
    }
}

/// Every error (only load shedding produces one) becomes an answer, never a reset.
fn shed_to_answer(r: Result<Response<ProxyBody>, BoxError>) -> Response<ProxyBody> {
    r.unwrap_or_else(|_| ProxyError::Overloaded.into_response(&uuid::Uuid::new_v4().to_string()))
}

/// The tower stack as a hyper service whose error type is `Infallible`: every error has
/// already become an answer (`shed_to_answer`), and a concrete error type keeps rustc's `Send`
/// inference for the spawned connection task tractable.
#[derive(Clone)]
struct Answering(tower::util::BoxCloneService<Request<Incoming>, Response<ProxyBody>, BoxError>);

impl hyper::service::Service<Request<Incoming>> for Answering {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = futures_util::future::BoxFuture<'static, Result<Response<ProxyBody>, Infallible>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let svc = self.0.clone();
        Box::pin(async move { Ok(shed_to_answer(svc.oneshot(req).await)) })
    }
}

/// Serve HTTP on an established (maybe TLS) stream. `alpn_h2`: `Some(true)` when ALPN chose h2,
/// `Some(false)` when it chose http/1.1 or nothing; `None` (plain TCP) detects the h2 preface.
async fn serve_http<I, S: Conns>(
    io: I,
    alpn_h2: Option<bool>,
    info: ConnInfo,
    limits: &Limits,
    shared: Arc<S>,
    stop: CancellationToken,
    handler: impl Handler<S>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    // Requests in flight and the last time one started or ended, for the two connection
    // deadlines below: no first request within `header_read_timeout` (no bytes, half an h2
    // preface, a TLS session that never asks) closes the connection, or `max_connections` silent
    // sockets would lock every other client out; and no request in flight for `idle_timeout`
    // closes it gracefully (an h2 client's pings would otherwise hold it forever).
    let activity = Arc::new(Activity::default());
    let svc_shared = shared.clone();
    let svc_activity = activity.clone();
    let svc = tower::service_fn(move |req: Request<Incoming>| {
        let shared = svc_shared.clone();
        let busy = svc_activity.begin();
        async move {
            let resp = handler(shared, req, info).await;
            drop(busy); // the body may still stream: a graceful close lets it finish
            Ok::<_, Infallible>(resp)
        }
    });
    // Cross-cutting, in request order: shed load when the in-flight cap is reached.
    let svc = ServiceBuilder::new()
        .load_shed()
        .layer(tower::limit::GlobalConcurrencyLimitLayer::with_semaphore(shared.inflight().clone()))
        .service(svc);
    let svc: tower::util::BoxCloneService<Request<Incoming>, Response<ProxyBody>, BoxError> =
        tower::util::BoxCloneService::new(svc);
    let svc = Answering(svc);

    // hyper's own limit is a backstop at twice ours; below it the proxy answers 431 with a
    // problem document (hyper's own 431 has no body).
    let buf = (limits.max_header_bytes * 2).max(8192);
    // The same settings on hyper's builders and on hyper-util's auto builder (same method names,
    // different types).
    macro_rules! h1 {
        ($b:expr) => {
            $b.timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(buf)
                .max_headers(200)
        };
    }
    macro_rules! h2 {
        ($b:expr) => {
            $b.timer(TokioTimer::new())
                .max_concurrent_streams(limits.h2_max_concurrent_streams)
                .max_header_list_size(buf as u32)
                .max_pending_accept_reset_streams(Some(64))
                .keep_alive_interval(Some(std::time::Duration::from_secs(30)))
        };
    }
    // ALPN decided: hyper's connection for that protocol alone, boxed, so an idle connection
    // holds only its own protocol's state (docs/BENCHMARKS.md, idle TLS connections). Plain TCP
    // (HTTP/1.1, or h2 with prior knowledge) needs the auto builder's detection.
    let mut auto_builder = auto::Builder::new(TokioExecutor::new());
    let mut conn: Pin<Box<dyn Served + '_>> = match alpn_h2 {
        Some(false) => Box::pin(h1!(hyper::server::conn::http1::Builder::new()).serve_connection(io, svc)),
        Some(true) => {
            Box::pin(h2!(hyper::server::conn::http2::Builder::new(TokioExecutor::new())).serve_connection(io, svc))
        }
        None => {
            h1!(auto_builder.http1());
            h2!(auto_builder.http2());
            Box::pin(auto_builder.serve_connection(io, svc))
        }
    };
    let deadline = tokio::time::sleep(limits.header_read_timeout);
    tokio::pin!(deadline);
    let mut draining = false;
    loop {
        tokio::select! {
            r = std::future::poll_fn(|cx| conn.as_mut().poll_end(cx)) => {
                if let Err(e) = r {
                    tracing::debug!(peer = %info.peer, error = %e, "connection ended with error");
                }
                return;
            }
            _ = &mut deadline, if !draining => {
                let now = tokio::time::Instant::now();
                match activity.idle() {
                    Idle::NeverAsked => {
                        tracing::debug!(peer = %info.peer, "no request within header_read_timeout; closing");
                        return; // dropping the connection closes the socket
                    }
                    Idle::Since(since) if now >= since + limits.idle_timeout => {
                        tracing::debug!(peer = %info.peer, "idle for idle_timeout; closing");
                        conn.as_mut().drain();
                        draining = true;
                    }
                    Idle::Since(since) => deadline.as_mut().reset(since + limits.idle_timeout),
                    Idle::Busy => deadline.as_mut().reset(now + limits.idle_timeout),
                }
            }
            _ = stop.cancelled(), if !draining => {
                conn.as_mut().drain();
                draining = true;
            }
        }
    }
}

/// A connection being served, whichever protocol: polled to its end by `serve_http`'s loop, told
/// to finish its requests and close (`graceful_shutdown`) on idle timeout or shutdown.
trait Served: Send {
    fn poll_end(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>>;
    fn drain(self: Pin<&mut Self>);
}

impl<I> Served for hyper::server::conn::http1::Connection<I, Answering>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    fn poll_end(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Future::poll(self, cx).map_err(Into::into)
    }
    fn drain(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I> Served for hyper::server::conn::http2::Connection<I, Answering, TokioExecutor>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    fn poll_end(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Future::poll(self, cx).map_err(Into::into)
    }
    fn drain(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I> Served for auto::Connection<'_, I, Answering, TokioExecutor>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    fn poll_end(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Future::poll(self, cx)
    }
    fn drain(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Requests in flight on one connection and when it last became idle (`None` until the first
/// request ends).
#[derive(Default)]
struct Activity(std::sync::Mutex<(usize, Option<tokio::time::Instant>)>);

/// What a connection is doing, for its deadline.
enum Idle {
    /// No request has been made on it yet.
    NeverAsked,
    /// A request is in flight.
    Busy,
    /// No request in flight since then.
    Since(tokio::time::Instant),
}

/// Marks one request in flight until dropped.
struct Busy(Arc<Activity>);

impl Activity {
    fn begin(self: &Arc<Self>) -> Busy {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).0 += 1;
        Busy(self.clone())
    }

    fn idle(&self) -> Idle {
        match *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) {
            (0, None) => Idle::NeverAsked,
            (0, Some(since)) => Idle::Since(since),
            _ => Idle::Busy,
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut st = self.0 .0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        st.0 -= 1;
        if st.0 == 0 {
            st.1 = Some(tokio::time::Instant::now());
        }
    }
}
