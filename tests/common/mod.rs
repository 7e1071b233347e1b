//! Shared harness for the integration tests: a real mock CV API, a real proxy with a real
//! self-signed certificate on loopback port 0, and real TLS/HTTP clients. No fixed ports.
#![allow(dead_code)] // each test file uses a different part of the harness

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cvgate::clock::ManualClock;
use cvgate::config::Config;
use cvgate::server::Running;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};

/// The demo HS256 secret the test configs use (dev-only, like config.yaml's).
pub const DEV_SECRET: &str = "test-only-secret-0123456789abcdef0123456789abcdef";
pub const ISSUER: &str = "https://eherkenning.test";
pub const AUDIENCE: &str = "cvgate";

/// A weekday at 10:00 Amsterdam: every CV route is open.
pub fn daytime() -> jiff::Timestamp {
    "2026-11-24T09:00:00Z".parse().unwrap()
}

/// Start the mock CV API on a free loopback port; it runs until the test's runtime ends.
pub async fn start_mock() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(cvgate::devtools::mock_api::serve(l, std::future::pending()));
    addr
}

/// A proxy under test.
pub struct Proxy {
    pub running: Running,
    pub tls: SocketAddr,
    pub plain: SocketAddr,
    pub ops: SocketAddr,
    pub cert_pem: String,
    pub clock: Arc<ManualClock>,
    pub config_path: PathBuf,
    pub dir: tempfile::TempDir,
}

/// A test config: all listeners on port 0, the given upstream, a fresh self-signed cert in
/// `dir`, the dev HS256 key. `extra` is appended at top level (it may override sections).
pub fn test_yaml(upstream: &str, dir: &Path, extra: &str) -> String {
    format!(
        r#"
listen:
  tls: {{ addr: "127.0.0.1:0", cert: "{cert}", key: "{key}" }}
  plain: "127.0.0.1:0"
  metrics: "127.0.0.1:0"
  admin: null
upstream:
  url: "{upstream}"
  connect_timeout: 1s
  response_header_timeout: 2s
limits:
  header_read_timeout: 1s
  max_header_bytes: 8192
  idle_body_timeout: 5s
  shutdown_grace: 10s
{extra}
{audit}
"#,
        // Audit lines go to stdout by default; tests that read them configure `audit:` themselves.
        audit = if extra.contains("audit:") { "" } else { "audit:\n  sink: \"off\"\n" },
        cert = dir.join("cert.pem").display(),
        key = dir.join("key.pem").display(),
    )
}

/// Identity section with the dev key (and the `dev_mode` it needs); `trusted` lists trusted
/// proxy CIDRs.
pub fn identity_yaml(trusted: &[&str]) -> String {
    let list = trusted.iter().map(|t| format!("\"{t}\"")).collect::<Vec<_>>().join(", ");
    format!(
        r#"dev_mode: true
identity:
  issuers: ["{ISSUER}"]
  audiences: ["{AUDIENCE}"]
  dev_hs256: {{ kid: "dev", secret: "{DEV_SECRET}" }}
  trusted_proxies: [{list}]
"#
    )
}

/// Write a fresh cert/key into a new temp dir.
pub fn cert_dir() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = cvgate::net::tls::self_signed_pem().unwrap();
    std::fs::write(dir.path().join("cert.pem"), &cert).unwrap();
    std::fs::write(dir.path().join("key.pem"), &key).unwrap();
    (dir, cert)
}

/// Start a proxy in-process from `yaml` (written to `dir/config.yaml`), on a manual clock at
/// `daytime()` unless `clock` is given.
pub async fn start_proxy_in(dir: tempfile::TempDir, cert_pem: String, yaml: &str) -> Proxy {
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    let config = Config::load(&path).unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
    let clock = ManualClock::new(daytime());
    let running = cvgate::server::start(config, Some(path.clone()), clock.clone()).await.unwrap();
    Proxy {
        tls: running.tls_addr.unwrap(),
        plain: running.plain_addr.unwrap(),
        ops: running.ops_addr.unwrap(),
        running,
        cert_pem,
        clock,
        config_path: path,
        dir,
    }
}

/// Start a proxy in front of `upstream` with the dev identity and `extra` config.
pub async fn start_proxy(upstream: &str, extra: &str) -> Proxy {
    let (dir, cert) = cert_dir();
    let yaml = test_yaml(upstream, dir.path(), &format!("{}{extra}", identity_yaml(&[])));
    start_proxy_in(dir, cert, &yaml).await
}

/// A dev token for `account` of organisation `org` at assurance level 3, valid for a day from
/// the test's clock.
pub fn token(p: &Proxy, account: &str, org: &str) -> String {
    token_at(p, account, Some(org), "urn:etoegang:core:assurance-class:loa3")
}

pub fn token_at(p: &Proxy, account: &str, org: Option<&str>, acr: &str) -> String {
    use cvgate::clock::Clock;
    cvgate::policy::identity::mint_dev_token(
        DEV_SECRET.as_bytes(),
        "dev",
        ISSUER,
        AUDIENCE,
        account,
        org,
        acr,
        Duration::from_secs(86_400),
        p.clock.now(),
    )
}

/// Either kind of hyper client connection.
pub enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

impl Sender {
    pub async fn send(&mut self, req: Request<Empty<Bytes>>) -> Response<Incoming> {
        match self {
            Sender::H1(s) => {
                s.ready().await.unwrap();
                s.send_request(req).await.unwrap()
            }
            Sender::H2(s) => {
                s.ready().await.unwrap();
                s.send_request(req).await.unwrap()
            }
        }
    }
}

/// TLS client connection that trusts only `cert_pem`, offering `alpn`. Returns the
/// negotiated ALPN protocol and a sender speaking it.
pub async fn tls_connect(addr: SocketAddr, cert_pem: &str, alpn: &[&[u8]]) -> (Option<Vec<u8>>, Sender) {
    tls_handshake(TcpStream::connect(addr).await.unwrap(), cert_pem, alpn).await
}

/// TLS (trusting only `cert_pem`, offering `alpn`) and HTTP handshakes on an open TCP stream.
async fn tls_handshake(tcp: TcpStream, cert_pem: &str, alpn: &[&[u8]]) -> (Option<Vec<u8>>, Sender) {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls_pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(cvgate::net::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let negotiated = tls.get_ref().1.alpn_protocol().map(|a| a.to_vec());
    let io = TokioIo::new(tls);
    let sender = if negotiated.as_deref() == Some(b"h2") {
        let (s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.unwrap();
        tokio::spawn(conn);
        Sender::H2(s)
    } else {
        let (s, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        Sender::H1(s)
    };
    (negotiated, sender)
}

/// Plain HTTP/1.1 client connection.
pub async fn plain_connect(addr: SocketAddr) -> Sender {
    h1_handshake(TcpStream::connect(addr).await.unwrap()).await
}

/// HTTP/1.1 handshake on an open TCP stream.
async fn h1_handshake(tcp: TcpStream) -> Sender {
    let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    Sender::H1(s)
}

/// A GET request; for HTTP/1.1 `uri` is origin-form and a Host header is added, for HTTP/2 an
/// absolute URI (authority `localhost`) is used.
pub fn get(uri: &str, h2: bool, headers: &[(&str, &str)]) -> Request<Empty<Bytes>> {
    let mut b = Request::builder().method("GET");
    if h2 {
        b = b.uri(format!("https://localhost{uri}")).version(http::Version::HTTP_2);
    } else {
        b = b.uri(uri).header("host", "localhost");
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Empty::new()).unwrap()
}

/// Bearer header value.
pub fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

/// Read a whole response body.
pub async fn body_bytes(r: Response<Incoming>) -> (http::response::Parts, Bytes) {
    let (parts, body) = r.into_parts();
    let b = body.collect().await.unwrap().to_bytes();
    (parts, b)
}

/// Read a whole response body as JSON.
pub async fn body_json(r: Response<Incoming>) -> (http::response::Parts, serde_json::Value) {
    let (p, b) = body_bytes(r).await;
    let v = serde_json::from_slice(&b).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&b)));
    (p, v)
}

/// Resident set size of this process, in bytes (Linux).
pub fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = s.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

// ---- Added for tests/identity.rs, tests/quota.rs and tests/closure.rs ----

/// A TCP connection to `addr` from the loopback source address `src` (any of 127.0.0.0/8 works
/// on Linux), so tests can play several clients in one or several /24s.
pub async fn tcp_from(addr: SocketAddr, src: std::net::IpAddr) -> TcpStream {
    let sock = match src {
        std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4().unwrap(),
        std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6().unwrap(),
    };
    sock.bind(SocketAddr::new(src, 0)).unwrap();
    sock.connect(addr).await.unwrap()
}

/// Plain HTTP/1.1 client connection from source address `src`.
pub async fn plain_connect_from(addr: SocketAddr, src: std::net::IpAddr) -> Sender {
    h1_handshake(tcp_from(addr, src).await).await
}

/// [`tls_connect`] from source address `src`.
pub async fn tls_connect_from(
    addr: SocketAddr,
    cert_pem: &str,
    alpn: &[&[u8]],
    src: std::net::IpAddr,
) -> (Option<Vec<u8>>, Sender) {
    tls_handshake(tcp_from(addr, src).await, cert_pem, alpn).await
}

/// The text of `GET http://{ops}/metrics`.
pub async fn metrics_text(ops: SocketAddr) -> String {
    let mut s = plain_connect(ops).await;
    let r = s.send(get("/metrics", false, &[])).await;
    assert_eq!(r.status(), 200);
    let (_, b) = body_bytes(r).await;
    String::from_utf8(b.to_vec()).unwrap()
}

/// The value of one series in a Prometheus text exposition: metric `name` with exactly the
/// label set `labels` (in any order); 0 when the series is absent (a counter never touched).
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    want.sort();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let (n, got) = match series.split_once('{') {
            Some((n, rest)) => {
                let mut got: Vec<String> =
                    rest.trim_end_matches('}').split(',').filter(|s| !s.is_empty()).map(str::to_string).collect();
                got.sort();
                (n, got)
            }
            None => (series, Vec::new()),
        };
        if n == name && got == want {
            return value.parse().unwrap();
        }
    }
    0.0
}

/// One series' value read from the proxy's `/metrics`.
pub async fn metric(p: &Proxy, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_value(&metrics_text(p.ops).await, name, labels)
}

/// Assert `r` is a problem+json answer with `status` and type `urn:cvgate:problem:{slug}`;
/// returns the response head and the problem document.
pub async fn expect_problem(
    r: Response<Incoming>,
    status: u16,
    slug: &str,
) -> (http::response::Parts, serde_json::Value) {
    assert_eq!(r.status(), status);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let (parts, v) = body_json(r).await;
    assert_eq!(v["type"], format!("urn:cvgate:problem:{slug}"), "{v}");
    assert_eq!(v["status"], status);
    (parts, v)
}

/// A header's value as text (panics when absent).
pub fn header<'a>(parts: &'a http::response::Parts, name: &str) -> &'a str {
    parts.headers.get(name).unwrap_or_else(|| panic!("no {name} header in {:?}", parts.headers)).to_str().unwrap()
}

/// Count the CV lines of an export body; asserts whole lines only and a well-formed marker
/// (last, when present). Returns (CV lines, marker records if cut).
pub fn export_lines(body: &[u8]) -> (u64, Option<u64>) {
    let text = std::str::from_utf8(body).unwrap();
    assert!(text.is_empty() || text.ends_with('\n'), "partial last line");
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut cvs = 0;
    let mut marker = None;
    for (i, l) in lines.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("line {i} not JSON ({e}): {l}"));
        if let Some(m) = v.get("_cvgate") {
            assert_eq!(i, lines.len() - 1, "marker is not the last line");
            assert_eq!(m["truncated"], true);
            marker = Some(m["records"].as_u64().unwrap());
        } else {
            assert!(v["id"].as_str().unwrap().starts_with("cv-"));
            cvs += 1;
        }
    }
    if let Some(n) = marker {
        assert_eq!(n, cvs, "marker's record count");
    }
    (cvs, marker)
}

/// One admin API call to `addr` with bearer `token` over a fresh HTTP/1.1 connection: the status
/// and the JSON body (`Null` when the body is not JSON).
pub async fn admin_call(
    addr: SocketAddr,
    token: &str,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "admin")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(Bytes::from(body)))
        .unwrap();
    let r = s.send_request(req).await.unwrap();
    let status = r.status().as_u16();
    let b = r.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&b).unwrap_or(serde_json::Value::Null))
}
