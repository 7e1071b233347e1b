//! Issue 9, hardening: request smuggling and abuse through the real proxy, over real sockets.
//!
//! HTTP/1.1 framing attacks are written byte by byte on a raw TCP connection to the plain
//! listener; the upstream is the mock CV API behind a recorder that notes every request it
//! receives, so "nothing was smuggled" is checked where it matters: at the upstream. HTTP/2
//! rapid reset is written frame by frame over TLS (ALPN h2). After every attack a fresh client
//! must still get its 200. Every loop is bounded in count and in time; no timing assertions.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Upper bound for any single read-until-close in this file.
const READ_LIMIT: Duration = Duration::from_secs(10);

/// What the upstream received: `METHOD uri` per request.
type Seen = Arc<Mutex<Vec<String>>>;

/// The mock CV API behind a recorder of every request that reaches it.
async fn start_recording_mock() -> (SocketAddr, Seen) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let rec = seen.clone();
    tokio::spawn(async move {
        let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
        loop {
            let Ok((s, _)) = l.accept().await else { continue };
            let (b, rec) = (builder.clone(), rec.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    rec.lock().unwrap().push(format!("{} {}", req.method(), req.uri()));
                    cvgate::devtools::mock_api::handle(req)
                });
                let _ = b.serve_connection(hyper_util::rt::TokioIo::new(s), svc).await;
            });
        }
    });
    (addr, seen)
}

/// A proxy that forwards unmatched paths (so `/debug/echo` reaches the recorder).
async fn proxy_with_recorder(extra: &str) -> (Proxy, Seen) {
    let (up, seen) = start_recording_mock().await;
    let p = start_proxy(&format!("http://{up}"), &format!("unmatched: forward\n{extra}")).await;
    (p, seen)
}

/// `text` with its one `from` replaced by `to`. Panics unless `from` occurs exactly once: a patch
/// that matched nothing would silently test the unpatched config.
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "expected {from:?} once in:\n{text}");
    text.replace(from, to)
}

/// A proxy in front of `upstream` whose `limits.header_read_timeout` and `max_connections` are
/// replaced (the harness's test config fixes the other limits).
async fn proxy_with_limits(upstream: SocketAddr, header_read_timeout: &str, max_connections: usize) -> Proxy {
    let (dir, cert) = cert_dir();
    let yaml = replace_once(
        &test_yaml(&format!("http://{upstream}"), dir.path(), &identity_yaml(&[])),
        "limits:\n  header_read_timeout: 1s\n",
        &format!("limits:\n  header_read_timeout: {header_read_timeout}\n  max_connections: {max_connections}\n"),
    );
    start_proxy_in(dir, cert, &yaml).await
}

/// Write `raw` on a new connection and read until the proxy closes it (bounded). The write may
/// fail half-way when the proxy has already closed: that is a refusal too.
async fn exchange(addr: SocketAddr, raw: &[u8]) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let _ = tcp.write_all(raw).await;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(READ_LIMIT, async {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => break, // closed or reset: both end the exchange
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "proxy kept the connection open for {READ_LIMIT:?}; got so far:\n{}", lossy(&buf));
    lossy(&buf)
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Status codes of the HTTP/1.1 responses in `text`, in order.
fn statuses(text: &str) -> Vec<u16> {
    text.match_indices("HTTP/1.1 ")
        .filter(|(i, _)| *i == 0 || text[..*i].ends_with('\n'))
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

/// A fresh client on a fresh connection still gets its 200, on both listeners.
async fn assert_still_serving(p: &Proxy) {
    let mut s = plain_connect(p.plain).await;
    let r = s.send(get("/api/v1/vacancies", false, &[])).await;
    assert_eq!(r.status(), 200, "plain listener no longer serves");
    let _ = body_bytes(r).await;
    let (_, mut s) = tls_connect(p.tls, &p.cert_pem, &[b"h2"]).await;
    let r = s.send(get("/api/v1/vacancies", true, &[])).await;
    assert_eq!(r.status(), 200, "TLS listener no longer serves");
    let _ = body_bytes(r).await;
}

/// The smuggled request every framing attack below tries to get past the proxy.
const SMUGGLED: &str = "GET /debug/echo?smuggled=1 HTTP/1.1\r\nHost: localhost\r\n\r\n";

fn assert_not_smuggled(seen: &Seen, case: &str) {
    let seen = seen.lock().unwrap();
    assert!(!seen.iter().any(|r| r.contains("smuggled")), "{case}: the upstream saw a smuggled request: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_chunked_is_never_forwarded_as_two_requests() {
    let (p, seen) = proxy_with_recorder("").await;
    // Each body is the classic desync payload for one of the two interpretations; whatever the
    // proxy picks, the bytes after it must never become a second request.
    let cases: [(&str, String); 5] = [
        // CL.TE: chunked says the body ends at "0\r\n\r\n"; Content-Length would swallow the rest.
        (
            "CL then TE",
            format!("POST /debug/echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "TE then CL",
            format!("POST /debug/echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        // TE.CL: Content-Length ends the body early; the chunk holds a whole request.
        (
            "request inside a chunk",
            format!(
                "POST /debug/echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n",
                SMUGGLED.len()
            ),
        ),
        (
            "CL with upper-case CHUNKED",
            format!("POST /debug/echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nTransfer-Encoding: CHUNKED\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "CL with chunked not last",
            format!("POST /debug/echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        ),
    ];
    for (case, raw) in &cases {
        seen.lock().unwrap().clear();
        let text = exchange(p.plain, raw.as_bytes()).await;
        let got = statuses(&text);
        // Refused (400), or answered once with the connection closed right after (RFC 9112 §6.1).
        assert!(got.len() <= 1, "{case}: {} responses on one connection:\n{text}", got.len());
        assert!(got.iter().all(|s| *s == 200 || *s == 400), "{case}: {got:?}\n{text}");
        assert_not_smuggled(&seen, case);
        let forwarded = seen.lock().unwrap().clone();
        assert!(forwarded.len() <= 1, "{case}: upstream saw {forwarded:?}");
        if got == [200] {
            // What was forwarded carries one framing only (the echo lists the upstream's headers
            // as JSON, quoted; the proxy's own response head is not quoted).
            let framings = ["\"content-length\"", "\"transfer-encoding\""].iter().filter(|h| text.contains(*h)).count();
            assert!(framings <= 1, "{case}: both framings forwarded:\n{text}");
        }
    }
    assert_still_serving(&p).await;
    p.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_content_lengths_obs_fold_and_bad_transfer_codings_are_400() {
    let (p, seen) = proxy_with_recorder("").await;
    let cases = [
        ("two different Content-Length", "Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello"),
        ("Content-Length list", "Content-Length: 5, 6\r\n\r\nhello"),
        ("negative Content-Length", "Content-Length: -5\r\n\r\nhello"),
        ("Content-Length with sign", "Content-Length: +5\r\n\r\nhello"),
        ("obs-fold continuation", "X-Folded: a\r\n folded\r\nContent-Length: 0\r\n\r\n"),
        ("obs-fold hiding Transfer-Encoding", "X-Folded: a\r\n\tTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("Transfer-Encoding without chunked", "Transfer-Encoding: gzip\r\n\r\nhello"),
        ("xchunked", "Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"),
        ("space before colon", "Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n"),
        ("NUL in a header value", "X-A: a\0b\r\nContent-Length: 0\r\n\r\n"),
    ];
    for (case, rest) in cases {
        seen.lock().unwrap().clear();
        let raw = format!("POST /debug/echo HTTP/1.1\r\nHost: localhost\r\n{rest}{SMUGGLED}");
        let text = exchange(p.plain, raw.as_bytes()).await;
        let got = statuses(&text);
        assert!(got.is_empty() || got == [400], "{case}: want 400 or a closed connection, got {got:?}:\n{text}");
        assert!(seen.lock().unwrap().is_empty(), "{case}: forwarded: {:?}", seen.lock().unwrap());
    }
    // A bare LF ends a header line (RFC 9112 §2.2 lets a recipient accept it; hyper does): the
    // request is one request with two headers, re-framed with CRLF towards the upstream, so
    // the upstream cannot read it differently.
    seen.lock().unwrap().clear();
    let raw =
        "POST /debug/echo HTTP/1.1\r\nHost: localhost\r\nX-A: 1\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
    let text = exchange(p.plain, raw.as_bytes()).await;
    assert_eq!(statuses(&text), [200], "{text}");
    assert!(text.contains("\"x-a\":\"1\"") && text.contains("\"body_len\":5"), "{text}");
    assert_eq!(seen.lock().unwrap().len(), 1);
    // Two equal Content-Length headers are legal (RFC 9110 §8.6): one request, forwarded once.
    seen.lock().unwrap().clear();
    let raw = "POST /debug/echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
    let text = exchange(p.plain, raw.as_bytes()).await;
    assert_eq!(statuses(&text), [200], "{text}");
    assert!(text.contains("\"body_len\":5"), "{text}");
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert_still_serving(&p).await;
    p.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_chunk_sizes_end_the_connection_without_smuggling() {
    let (p, seen) = proxy_with_recorder("").await;
    let sizes = ["zz", "-1", "0x5", "FFFFFFFFFFFFFFFFFFFF", " 5", "5 5", "5\n"];
    for size in sizes {
        seen.lock().unwrap().clear();
        let raw = format!(
            "POST /debug/echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n{size}\r\nhello\r\n0\r\n\r\n{SMUGGLED}"
        );
        let text = exchange(p.plain, raw.as_bytes()).await;
        let got = statuses(&text);
        // The head is valid, so the proxy may already be forwarding when the body turns bad:
        // it answers 400/502, or just closes. Never a second response, never the smuggled one.
        assert!(got.len() <= 1, "chunk size {size:?}: {got:?}:\n{text}");
        assert!(got.iter().all(|s| [400, 502].contains(s)), "chunk size {size:?}: {got:?}:\n{text}");
        assert_not_smuggled(&seen, &format!("chunk size {size:?}"));
    }
    assert_still_serving(&p).await;
    p.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_200_headers_get_431_or_a_close() {
    let (p, seen) = proxy_with_recorder("").await;
    for n in [201, 250, 1000] {
        let mut raw = String::from("GET /debug/echo HTTP/1.1\r\nHost: localhost\r\n");
        for i in 0..n {
            raw.push_str(&format!("x-h{i}: v\r\n"));
        }
        raw.push_str("\r\n");
        let text = exchange(p.plain, raw.as_bytes()).await;
        let got = statuses(&text);
        assert!(got.is_empty() || got == [431], "{n} headers: {got:?}:\n{text}");
        assert!(seen.lock().unwrap().is_empty(), "{n} headers forwarded");
    }
    assert_still_serving(&p).await;
    p.running.shutdown().await;
}

// ---- HTTP/2 rapid reset (CVE-2023-44487), frame by frame ----

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HEADERS (END_STREAM | END_HEADERS) for `GET https://localhost{path}`, HPACK without Huffman
/// and without indexing, so every block is self-contained.
fn h2_get(stream: u32, path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x87]; // :method GET, :scheme https (static table)
    block.push(0x04); // :path, literal without indexing
    block.push(path.len() as u8);
    block.extend_from_slice(path.as_bytes());
    block.push(0x01); // :authority, literal without indexing
    block.push(9);
    block.extend_from_slice(b"localhost");
    h2_frame(0x1, 0x1 | 0x4, stream, &block)
}

fn h2_rst_cancel(stream: u32) -> Vec<u8> {
    h2_frame(0x3, 0, stream, &0x8u32.to_be_bytes())
}

/// A raw TLS stream to the proxy's TLS listener, with ALPN `alpn`.
async fn tls_raw(p: &Proxy, alpn: &[u8]) -> tokio_rustls::client::TlsStream<TcpStream> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls_pki_types::CertificateDer::from_pem_slice(p.cert_pem.as_bytes()).unwrap()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(cvgate::net::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = TcpStream::connect(p.tls).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
    tls
}

/// Read frames until the server closes the connection or `limit` passes; returns the GOAWAY
/// error code if one came and whether the connection was closed.
async fn drain_frames<S: tokio::io::AsyncRead + Unpin>(s: &mut S, limit: Duration) -> (Option<u32>, bool) {
    let mut buf = Vec::new();
    let mut goaway = None;
    let closed = tokio::time::timeout(limit, async {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            while buf.len() >= 9 {
                let len = (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
                if buf.len() < 9 + len {
                    break;
                }
                if buf[3] == 0x7 && len >= 8 {
                    goaway = Some(u32::from_be_bytes(buf[13..17].try_into().unwrap()));
                }
                buf.drain(..9 + len);
            }
        }
    })
    .await
    .is_ok();
    (goaway, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_rapid_reset_does_not_harm_other_clients() {
    let (p, seen) = proxy_with_recorder("").await;
    // A well-behaved client with a connection open before, during and after the attack.
    let (_, mut bystander) = tls_connect(p.tls, &p.cert_pem, &[b"h2"]).await;
    let r = bystander.send(get("/api/v1/vacancies", true, &[])).await;
    assert_eq!(r.status(), 200);
    let _ = body_bytes(r).await;

    const STREAMS: u32 = 2000;
    let mut attacker = tls_raw(&p, b"h2").await;
    let mut burst = H2_PREFACE.to_vec();
    burst.extend(h2_frame(0x4, 0, 0, &[])); // empty SETTINGS
    for i in 0..STREAMS {
        let id = 1 + 2 * i;
        burst.extend(h2_get(id, "/debug/echo?rapid=1"));
        burst.extend(h2_rst_cancel(id));
    }
    // The proxy may hang up mid-burst (GOAWAY ENHANCE_YOUR_CALM): a failed write is fine.
    let write = tokio::spawn(async move {
        let _ = attacker.write_all(&burst).await;
        let _ = attacker.flush().await;
        attacker
    });
    // The bystander keeps working while the burst is processed.
    for _ in 0..20 {
        let r = bystander.send(get("/api/v1/vacancies", true, &[])).await;
        assert_eq!(r.status(), 200, "bystander refused during the rapid-reset burst");
        let _ = body_bytes(r).await;
    }
    let mut attacker = tokio::time::timeout(READ_LIMIT, write).await.expect("burst write hung").unwrap();
    let (goaway, closed) = drain_frames(&mut attacker, Duration::from_secs(5)).await;
    let forwarded = seen.lock().unwrap().iter().filter(|r| r.contains("rapid=1")).count();
    println!("rapid reset: {STREAMS} streams opened and cancelled; GOAWAY {goaway:?}, closed {closed}, forwarded {forwarded}");
    assert!(forwarded <= STREAMS as usize);
    // The attack's streams cost the bystander nothing, and a newcomer is served.
    let r = bystander.send(get("/api/v1/vacancies", true, &[])).await;
    assert_eq!(r.status(), 200);
    let _ = body_bytes(r).await;
    assert_still_serving(&p).await;
    p.running.shutdown().await;
}

// ---- Idle connections ----

/// Open `n` TCP connections that never send a byte (bounded in time).
async fn open_idle(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let c = tokio::time::timeout(READ_LIMIT, TcpStream::connect(addr)).await.expect("connect hung").unwrap();
        conns.push(c);
    }
    conns
}

/// File-descriptor limit of this process (soft), from /proc.
fn fd_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap_or(u64::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_idle_connections_leave_others_served_and_memory_bounded() {
    // The issue asks for 10,000. Client and proxy share this process, so every idle connection
    // costs two descriptors here, plus the test harness's own; 10,000 would need more than the
    // usual 20,000 soft limit. 2,000 stays well under it (and under the default backlog-sized
    // bursts of a shared CI box); the proxy-side cost per connection is what we measure.
    let want = 2000usize;
    let limit = fd_limit();
    let n = want.min((limit.saturating_sub(512) / 3) as usize);
    if n < want {
        println!("note: fd limit {limit} allows only {n} idle connections");
    }
    let mock = start_mock().await;
    // Long header timeout: the connections must stay open for the duration of the test.
    let p = proxy_with_limits(mock, "60s", 10_000).await;
    assert_still_serving(&p).await; // warm up pools and allocators
    let before = rss_bytes();
    let idle = open_idle(p.plain, n).await;
    // Wait (bounded) until the proxy has accepted them all, not just the kernel backlog.
    let mut active = 0.0;
    for _ in 0..100 {
        active = metric(&p, "cvgate_connections_active", &[]).await;
        if active >= n as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(active >= n as f64, "proxy accepted {active} of {n}");
    let after = rss_bytes();
    let growth = after.saturating_sub(before);
    println!(
        "{n} idle connections: RSS {} MiB → {} MiB (+{} KiB per connection, both ends)",
        before >> 20,
        after >> 20,
        (growth / n as u64) >> 10
    );
    assert!(growth < 64 << 20, "RSS grew by {} MiB for {n} idle connections", growth >> 20);
    // Everyone else is still served.
    assert_still_serving(&p).await;
    let t = token(&p, "acct-1", "12345678");
    let (_, mut s) = tls_connect(p.tls, &p.cert_pem, &[b"http/1.1"]).await;
    let r = s.send(get("/api/v1/cvs?size=5", false, &[("authorization", &bearer(&t))])).await;
    assert_eq!(r.status(), 200);
    drop(idle);
    p.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_refuses_the_excess_and_serves_again_when_they_leave() {
    let mock = start_mock().await;
    let p = proxy_with_limits(mock, "60s", 50).await;
    let idle = open_idle(p.plain, 50).await;
    for _ in 0..100 {
        if metric(&p, "cvgate_connections_active", &[]).await >= 50.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Over the cap: closed at once, counted.
    let text = exchange(p.plain, b"GET /api/v1/vacancies HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert!(statuses(&text).is_empty(), "served over the cap: {text}");
    assert!(metric(&p, "cvgate_connections_refused_total", &[]).await >= 1.0);
    drop(idle);
    // Bounded wait until the proxy has noticed they left.
    for _ in 0..100 {
        if metric(&p, "cvgate_connections_active", &[]).await < 5.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_still_serving(&p).await;
    p.running.shutdown().await;
}

/// Regression for the silent-connection lockout (see docs/hardening.md): a connection that
/// never sends a byte (plain listener, h1/h2c detection) or never sends the HTTP/2 preface
/// (TLS, ALPN h2) must be closed after `header_read_timeout`, or `max_connections` such
/// connections lock every other client out for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_after_the_header_read_timeout() {
    let mock = start_mock().await;
    // header_read_timeout is 1 s in the test config.
    let p = start_proxy(&format!("http://{mock}"), "").await;
    let mut plain_silent = TcpStream::connect(p.plain).await.unwrap();
    let mut plain_half_preface = TcpStream::connect(p.plain).await.unwrap();
    plain_half_preface.write_all(&H2_PREFACE[..10]).await.unwrap();
    let mut tls_h1_silent = tls_raw(&p, b"http/1.1").await;
    let mut tls_h2_silent = tls_raw(&p, b"h2").await;
    let mut buf = [0u8; 1024];
    let mut open = Vec::new();
    for (what, closed) in [
        ("plain, no bytes", closed_within(&mut plain_silent, &mut buf).await),
        ("plain, half an h2 preface", closed_within(&mut plain_half_preface, &mut buf).await),
        ("TLS http/1.1, no request", closed_within(&mut tls_h1_silent, &mut buf).await),
        ("TLS h2, no preface", closed_within(&mut tls_h2_silent, &mut buf).await),
    ] {
        if !closed {
            open.push(what);
        }
    }
    assert!(open.is_empty(), "still open 5 s after a 1 s header_read_timeout: {open:?}");
    p.running.shutdown().await;
}

/// Whether the server closes `s` within 5 s (data it sends first, e.g. SETTINGS, is skipped).
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(s: &mut S, buf: &mut [u8]) -> bool {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match s.read(buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}
