//! The floor for `benches/e2e.sh`: a reverse proxy on the same engine as cvgate (tokio
//! multi-thread runtime, hyper's HTTP/1.1 server, hyper-util's pooled client) with no policy at
//! all — no identity, quota, counting, headers, metrics or audit. What cvgate costs above this
//! row is its policy; what this row costs above nginx is the engine.
//!
//! `cargo run --release --example bare_proxy -- LISTEN UPSTREAM` (e.g. `127.0.0.1:18090
//! 127.0.0.1:8081`); plain HTTP only, loopback only, runs until killed.

use std::convert::Infallible;
use std::net::SocketAddr;

use http::uri::{PathAndQuery, Uri};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc; // as the cvgate binary

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: bare_proxy LISTEN UPSTREAM (host:port each, loopback)";
    let listen: SocketAddr = args.next().ok_or_else(|| anyhow::anyhow!(usage))?.parse()?;
    let upstream: SocketAddr = args.next().ok_or_else(|| anyhow::anyhow!(usage))?.parse()?;
    anyhow::ensure!(listen.ip().is_loopback() && upstream.ip().is_loopback(), "loopback only");
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(serve(listen, upstream))
}

async fn serve(listen: SocketAddr, upstream: SocketAddr) -> anyhow::Result<()> {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new()).build(http);
    let authority = http::uri::Authority::try_from(upstream.to_string())?;
    let tcp = tokio::net::TcpListener::bind(listen).await?;
    loop {
        let (stream, _) = tcp.accept().await?;
        stream.set_nodelay(true)?;
        let (client, authority) = (client.clone(), authority.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                let pq = req.uri().path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
                *req.uri_mut() = Uri::builder()
                    .scheme("http")
                    .authority(authority.clone())
                    .path_and_query(pq)
                    .build()
                    .expect("valid uri");
                let client = client.clone();
                async move {
                    let resp = match client.request(req).await {
                        Ok(r) => r.map(http_body_util::Either::Left),
                        Err(_) => Response::builder()
                            .status(502)
                            .body(http_body_util::Either::Right(http_body_util::Empty::new()))
                            .expect("static response"),
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}
