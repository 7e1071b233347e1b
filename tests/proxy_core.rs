//! Issue 2, the proxy core, through real sockets: TLS with ALPN (h2 and http/1.1), streaming
//! without buffering, header hygiene, upstream failures, limits, graceful shutdown, and
//! `check-config`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_and_http11_over_tls_reach_the_mock_api() {
    let mock = start_mock().await;
    let p = start_proxy(&format!("http://{mock}"), "").await;
    let t = token(&p, "acct-1", "12345678");
    for (alpn, want, h2) in
        [(&[&b"h2"[..], b"http/1.1"][..], b"h2".to_vec(), true), (&[&b"http/1.1"[..]][..], b"http/1.1".to_vec(), false)]
    {
        let (negotiated, mut s) = tls_connect(p.tls, &p.cert_pem, alpn).await;
        assert_eq!(negotiated, Some(want.clone()), "ALPN outcome");
        let r = s.send(get("/api/v1/cvs?size=5&query=lasser", h2, &[("authorization", &bearer(&t))])).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.version(), if h2 { http::Version::HTTP_2 } else { http::Version::HTTP_11 });
        assert_eq!(r.headers()["x-result-count"], "5");
        assert!(r.headers().contains_key("x-request-id"));
        let (_, v) = body_json(r).await;
        assert_eq!(v["results"].as_array().unwrap().len(), 5);
        assert_eq!(v["size"], 5);
    }
    p.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_record_arrives_before_the_upstream_sends_the_last() {
    // An upstream whose second record the test releases only after the client has seen the
    // first one through the proxy: a buffering proxy would deadlock here (and time out).
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let rx = std::sync::Arc::new(tokio::sync::Mutex::new(Some(rx)));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let svc = hyper::service::service_fn(move |_req| {
            let rx = rx.clone();
            async move {
                let mut rx = rx.lock().await.take().unwrap();
                let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
                    .map(|b| Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(b)));
                let body = http_body_util::StreamBody::new(stream);
                Ok::<_, std::convert::Infallible>(
                    http::Response::builder().header("content-type", "application/x-ndjson").body(body).unwrap(),
                )
            }
        });
        let _ = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(s), svc).await;
    });
    let p = start_proxy(&format!("http://{up}"), "").await;
    let t = token(&p, "acct-1", "12345678");
    let (_, mut s) = tls_connect(p.tls, &p.cert_pem, &[b"h2"]).await;
    let r = s.send(get("/api/v1/cvs/export?limit=2", true, &[("authorization", &bearer(&t))])).await;
    assert_eq!(r.status(), 200);
    tx.send(Bytes::from_static(b"{\"id\":\"cv-1\"}\n")).await.unwrap();
    let mut body = r.into_body();
    let first = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("first record not streamed")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), Bytes::from_static(b"{\"id\":\"cv-1\"}\n"));
    tx.send(Bytes::from_static(b"{\"id\":\"cv-2\"}\n")).await.unwrap();
    drop(tx);
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, Bytes::from_static(b"{\"id\":\"cv-2\"}\n"));
    p.running.shutdown().await;
}

use futures_util::StreamExt as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_256_mib_body_streams_without_growing_memory() {
    let mock = start_mock().await;
    let p = start_proxy(&format!("http://{mock}"), "unmatched: forward\n").await;
    let (_, mut s) = tls_connect(p.tls, &p.cert_pem, &[b"h2"]).await;
    // Warm up allocators and pools with a small transfer first.
    let r = s.send(get("/debug/bytes?mib=4", true, &[])).await;
    let _ = body_bytes(r).await;
    let before = rss_bytes();
    let r = s.send(get("/debug/bytes?mib=256", true, &[])).await;
    assert_eq!(r.status(), 200);
    let mut body = r.into_body();
    let (mut total, mut peak) = (0u64, before);
    while let Some(f) = body.frame().await {
        if let Ok(d) = f.unwrap().into_data() {
            total += d.len() as u64;
            if total % (16 << 20) < d.len() as u64 {
                peak = peak.max(rss_bytes());
            }
        }
    }
    assert_eq!(total, 256 << 20);
    let growth = peak.saturating_sub(before);
    assert!(growth < 64 << 20, "RSS grew by {} MiB while streaming 256 MiB", growth >> 20);
    p.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_stripped_both_ways_and_forwarding_headers_set() {
    let mock = start_mock().await;
    let (dir, cert) = cert_dir();
    let yaml = test_yaml(
        &format!("http://{mock}"),
        dir.path(),
        &format!("{}unmatched: forward\n", identity_yaml(&["127.0.0.1/32"])),
    );
    let p = start_proxy_in(dir, cert, &yaml).await;
    let (_, mut s) = tls_connect(p.tls, &p.cert_pem, &[b"http/1.1"]).await;
    let r = s
        .send(get(
            "/debug/echo",
            false,
            &[
                ("connection", "keep-alive, x-client-hop"),
                ("x-client-hop", "drop me"),
                ("keep-alive", "timeout=5"),
                ("te", "trailers"),
                ("proxy-authorization", "Basic Zm9vOmJhcg=="),
                ("x-forwarded-for", "203.0.113.7"),
                ("x-end-to-end", "kept"),
            ],
        ))
        .await;
    assert_eq!(r.status(), 200);
    assert!(!r.headers().contains_key("x-upstream-hop"), "Connection-named response header leaked");
    assert!(!r.headers().contains_key("keep-alive"));
    assert_eq!(r.headers()["x-upstream-end"], "kept");
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let (_, v) = body_json(r).await;
    let h = &v["headers"];
    for gone in ["x-client-hop", "keep-alive", "te", "proxy-authorization"] {
        assert!(h.get(gone).is_none(), "{gone} reached the upstream: {h}");
    }
    assert_eq!(h["x-end-to-end"], "kept");
    // The peer (127.0.0.1) is a trusted proxy here, so its chain is extended.
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-forwarded-host"], "localhost");
    assert_eq!(h["x-request-id"], rid.as_str());
    assert_eq!(v["version"], "HTTP/1.1");
    p.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_xff_is_replaced_and_h2_gets_a_host_for_the_h1_upstream() {
    let mock = start_mock().await;
    let p = start_proxy(&format!("http://{mock}"), "unmatched: forward\n").await;
    let (_, mut s) = tls_connect(p.tls, &p.cert_pem, &[b"h2"]).await;
    let r = s.send(get("/debug/echo", true, &[("x-forwarded-for", "198.51.100.1"), ("x-request-id", "req-42")])).await;
    assert_eq!(r.headers()["x-request-id"], "req-42");
    let (_, v) = body_json(r).await;
    assert_eq!(v["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(v["headers"]["host"], format!("{mock}"));
    assert_eq!(v["headers"]["x-forwarded-host"], "localhost");
    assert_eq!(v["headers"]["x-request-id"], "req-42");
    assert_eq!(v["version"], "HTTP/1.1");
    p.running.shutdown().await;
}

async fn problem(r: hyper::Response<hyper::body::Incoming>, status: u16, slug: &str) {
    assert_eq!(r.status(), status);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let (_, v) = body_json(r).await;
    assert_eq!(v["type"], format!("urn:cvgate:problem:{slug}"));
    assert_eq!(v["status"], status);
    let text = v.to_string();
    assert!(!text.contains("127.0.0.1"), "upstream internals leaked: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upstream_is_502_and_slow_upstream_is_504() {
    // A port nobody listens on: bind, note, close.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let p = start_proxy(&format!("http://{dead}"), "").await;
    let t = token(&p, "acct-1", "12345678");
    let (_, mut s) = tls_connect(p.tls, &p.cert_pem, &[b"h2"]).await;
    problem(
        s.send(get("/api/v1/cvs?size=5", true, &[("authorization", &bearer(&t))])).await,
        502,
        "upstream-unreachable",
    )
    .await;
    p.running.shutdown().await;

    let mock = start_mock().await;
    let p = start_proxy(&format!("http://{mock}"), "").await;
    let t = token(&p, "acct-1", "12345678");
    let (_, mut s) = tls_connect(p.tls, &p.cert_pem, &[b"h2"]).await;
    let r = s.send(get("/api/v1/cvs?size=5&header_delay_ms=4000", true, &[("authorization", &bearer(&t))])).await;
    problem(r, 504, "upstream-timeout").await;
    p.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431_and_slow_headers_are_cut_off() {
    let mock = start_mock().await;
    let p = start_proxy(&format!("http://{mock}"), "").await;
    let big = "x".repeat(10_000);
    for (alpn, h2) in [(&b"h2"[..], true), (&b"http/1.1"[..], false)] {
        let (_, mut s) = tls_connect(p.tls, &p.cert_pem, &[alpn]).await;
        problem(s.send(get("/api/v1/vacancies", h2, &[("x-big", &big)])).await, 431, "header-too-large").await;
    }
    // Slowloris: half a request line, then nothing. The proxy must hang up after
    // header_read_timeout (1 s here); we give it ample time.
    let mut tcp = tokio::net::TcpStream::connect(p.plain).await.unwrap();
    tcp.write_all(b"GET /api/v1/vacancies HTTP/1.1\r\nHost: localhost\r\nX-Slow: ").await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), tcp.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "slow-header client still connected after 15 s");
    p.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_an_in_flight_stream_finish() {
    let mock = start_mock().await;
    let p = start_proxy(&format!("http://{mock}"), "").await;
    let t = token(&p, "acct-1", "12345678");
    let (_, mut s) = tls_connect(p.tls, &p.cert_pem, &[b"h2"]).await;
    let r =
        s.send(get("/api/v1/cvs/export?limit=10&chunk=1&delay_ms=100", true, &[("authorization", &bearer(&t))])).await;
    assert_eq!(r.status(), 200);
    let mut body = r.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(first.ends_with(b"\n"));
    let tls_addr = p.tls;
    let shutdown = tokio::spawn(p.running.shutdown());
    tokio::time::sleep(Duration::from_millis(100)).await;
    // New connections are no longer accepted once draining starts.
    let refused = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(tls_addr)).await;
    assert!(!matches!(refused, Ok(Ok(_))), "listener still accepting during drain");
    let rest = body.collect().await.unwrap().to_bytes();
    let lines = 1 + rest.iter().filter(|b| **b == b'\n').count();
    assert_eq!(lines, 10, "in-flight stream was not allowed to finish");
    tokio::time::timeout(Duration::from_secs(10), shutdown).await.expect("shutdown did not return").unwrap();
}

#[test]
fn check_config_prints_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "listen:\n  tls:\n    addr: \"not-an-address\"\nupstream:\n  url: \"ftp://example\"\nlimits:\n  shutdown_grace: \"whenever\"\n  max_conections: 10\n",
    )
    .unwrap();
    let err = check_config_refuses(&path);
    for needle in [
        "line 3: listen.tls.addr",
        "line 5: upstream.url",
        "line 7: limits.shutdown_grace",
        "line 8: limits.max_conections: unknown key",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    let ok = std::process::Command::new(env!("CARGO_BIN_EXE_cvgate"))
        .args(["check-config", "--config", concat!(env!("CARGO_MANIFEST_DIR"), "/config.yaml")])
        .output()
        .unwrap();
    assert!(ok.status.success(), "config.yaml invalid: {}", String::from_utf8_lossy(&ok.stderr));
}

/// `cvgate check-config` on `path`: asserts it exits 1 and returns what it printed on stderr.
fn check_config_refuses(path: &std::path::Path) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cvgate"))
        .args(["check-config", "--config"])
        .arg(path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Issue 17: `check-config` accepts only what `serve` can start with: a certificate file that
/// is missing and two listeners on one address are refused, each with its key and line.
#[test]
fn check_config_refuses_what_serve_would() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    let text = "listen:\n  tls:\n    addr: \"127.0.0.1:8443\"\n    cert: missing.pem\n    key: missing-key.pem\n  plain: \"127.0.0.1:8443\"\n";
    std::fs::write(&path, text).unwrap();
    let err = check_config_refuses(&path);
    assert!(err.contains("line 6: listen.plain: 127.0.0.1:8443 is already listen.tls.addr's address"), "{err}");
    // With the clash fixed, the missing certificate is what remains.
    std::fs::write(&path, text.replace("  plain: \"127.0.0.1:8443\"", "  plain: \"127.0.0.1:8080\"")).unwrap();
    let err = check_config_refuses(&path);
    assert!(err.contains("line 4: listen.tls.cert: cannot load the certificate and key"), "{err}");

    // A JWKS holding RFC 8037's example key (its private half is printed in the RFC) is refused:
    // the shipped ConfigMap used to carry it, and a token signed with it was accepted.
    let jwks = r#"{"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
    std::fs::write(dir.path().join("jwks.json"), jwks).unwrap();
    let text = "identity:\n  jwks_file: jwks.json\n  issuers: [\"https://idp\"]\n  audiences: [cvgate]\n";
    std::fs::write(&path, text).unwrap();
    let err = check_config_refuses(&path);
    assert!(err.contains("line 2: identity.jwks_file: holds the example key published in RFC 8037"), "{err}");

    // The dev HS256 key (anyone with the file signs tokens) only with an explicit dev_mode, which
    // the process then announces (cvgate_dev_mode, a log line at start).
    let dev = "identity:\n  issuers: [\"https://idp\"]\n  audiences: [cvgate]\n  dev_hs256:\n    kid: dev\n    secret: \"0123456789abcdef0123456789abcdef\"\n";
    std::fs::write(&path, dev).unwrap();
    let err = check_config_refuses(&path);
    assert!(err.contains("line 4: identity.dev_hs256: a shared-secret key"), "{err}");
    std::fs::write(&path, format!("dev_mode: true\n{dev}")).unwrap();
    let ok = std::process::Command::new(env!("CARGO_BIN_EXE_cvgate"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&ok.stderr);
    assert!(ok.status.success() && stderr.contains("warning: dev_mode is on"), "{stderr}");
}

/// The listener decides the cipher suite (testssl.sh: "cipher order"): a client that prefers
/// ChaCha20 still gets AES-256-GCM, over TLS 1.3 and over TLS 1.2; TLS 1.2 uses ECDHE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_chooses_the_cipher_suite() {
    use rustls::crypto::ring::cipher_suite as cs;
    use rustls_pki_types::pem::PemObject;
    let mock = start_mock().await;
    let p = start_proxy(&format!("http://{mock}"), "").await;
    let cases = [
        (&rustls::version::TLS13, vec![cs::TLS13_CHACHA20_POLY1305_SHA256, cs::TLS13_AES_256_GCM_SHA384]),
        (
            &rustls::version::TLS12,
            vec![cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384],
        ),
    ];
    for (version, suites) in cases {
        let provider =
            rustls::crypto::CryptoProvider { cipher_suites: suites, ..rustls::crypto::ring::default_provider() };
        let mut roots = rustls::RootCertStore::empty();
        roots.add(rustls_pki_types::CertificateDer::from_pem_slice(p.cert_pem.as_bytes()).unwrap()).unwrap();
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(p.tls).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await.unwrap();
        let suite = tls.get_ref().1.negotiated_cipher_suite().unwrap().suite();
        let want = if *version == rustls::version::TLS13 {
            rustls::CipherSuite::TLS13_AES_256_GCM_SHA384
        } else {
            rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
        };
        assert_eq!(suite, want, "{version:?}: the client preferred ChaCha20");
    }
    p.running.shutdown().await;
}

/// `text` with its one `from` replaced by `to`. Panics unless `from` occurs exactly once: a patch
/// that matched nothing would silently test the unpatched config.
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "expected {from:?} once in:\n{text}");
    text.replace(from, to)
}

/// `limits.idle_timeout`: an HTTP/2 connection with no request in flight is closed (GOAWAY) once
/// it has been idle that long, even though its client answers keep-alive pings; a connection
/// that keeps asking stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_h2_connections_are_closed_after_the_idle_timeout() {
    let mock = start_mock().await;
    let (dir, cert) = cert_dir();
    let yaml = replace_once(
        &test_yaml(&format!("http://{mock}"), dir.path(), &identity_yaml(&[])),
        "  shutdown_grace: 10s",
        "  shutdown_grace: 10s\n  idle_timeout: 2s",
    );
    let p = start_proxy_in(dir, cert, &yaml).await;
    let (_, mut idle) = tls_connect(p.tls, &p.cert_pem, &[b"h2"]).await;
    let (_, mut busy) = tls_connect(p.tls, &p.cert_pem, &[b"h2"]).await;
    let closed = |s: &Sender| match s {
        Sender::H2(s) => s.is_closed(),
        Sender::H1(s) => s.is_closed(),
    };
    let started = tokio::time::Instant::now();
    for s in [&mut idle, &mut busy] {
        assert_eq!(s.send(get("/api/v1/vacancies/1", true, &[])).await.status(), 200);
    }
    // The busy connection asks every 500 ms for 4 s; the idle one never again.
    let mut idle_closed_after = None;
    while started.elapsed() < Duration::from_secs(4) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let r = busy.send(get("/api/v1/vacancies/2", true, &[])).await;
        assert_eq!(r.status(), 200, "the busy connection is served");
        if idle_closed_after.is_none() && closed(&idle) {
            idle_closed_after = Some(started.elapsed());
        }
    }
    let after = idle_closed_after.expect("the idle connection was closed");
    assert!(after >= Duration::from_millis(1900), "closed after {after:?}, before the idle timeout");
    assert!(!closed(&busy), "a connection in use is not idle");
    p.running.shutdown().await;
}

/// Issue 17: log lines on stderr as JSON objects with `--log-format json` (or
/// `CVGATE_LOG_FORMAT`), and plain text without colour codes when stderr is not a terminal.
#[test]
fn logs_are_json_when_asked_and_never_coloured_in_a_pipe() {
    use std::io::{BufRead, BufReader};
    let first_line = |json: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_cvgate"));
        if json {
            cmd.args(["--log-format", "json"]);
        }
        let mut child =
            cmd.args(["mock-cv-api", "--listen", "127.0.0.1:0"]).stderr(std::process::Stdio::piped()).spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stderr.take().unwrap()).read_line(&mut line).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        line
    };
    let json: serde_json::Value = serde_json::from_str(first_line(true).trim()).expect("a JSON log line");
    assert_eq!(json["level"], "INFO");
    assert_eq!(json["message"], "mock CV API listening");
    assert!(json["addr"].as_str().unwrap().starts_with("127.0.0.1:"));
    let text = first_line(false);
    assert!(text.contains("mock CV API listening") && !text.contains('\x1b'), "{text:?}");
}

/// Issue 17: the series alerts and panels read exist at zero before their first event (a counter
/// born at its first event has no earlier sample, so `increase()` never saw that event).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_start_at_zero_for_every_label_set_the_config_can_produce() {
    let mock = start_mock().await;
    let p = start_proxy(&format!("http://{mock}"), "").await;
    let text = metrics_text(p.ops).await;
    for series in [
        r#"cvgate_config_reloads_total{result="failed"} 0"#,
        r#"cvgate_quota_rejections_total{horizon="day",scope="org"} 0"#,
        r#"cvgate_quota_rejections_total{horizon="burst",scope="account"} 0"#,
        r#"cvgate_blocks_created_total{scope="account",source="rule:day-budget-exhausted"} 0"#,
        r#"cvgate_blocks_created_total{scope="org",source="manual"} 0"#,
        r#"cvgate_cvs_delivered_total{route="cv_export",tier="default"} 0"#,
        r#"cvgate_count_uncertain_total{reason="shape",route="cv_search"} 0"#,
        r#"cvgate_upstream_errors_total{kind="upstream-timeout"} 0"#,
        r#"cvgate_streams_truncated_total{reason="quota"} 0"#,
    ] {
        assert!(text.contains(series), "no {series} in:\n{text}");
    }
    p.running.shutdown().await;
}
