//! Issue 15, count integrity, through the real proxy: every CV delivered is a CV charged. A
//! compressed answer is counted after decoding (gzip, deflate, br, zstd) and refunds only what
//! the exact count allows; every answer whose records cannot be counted with certainty
//! (partial, another content type, another JSON shape, an unknown coding, a body that ends early
//! or is malformed or lies in Content-Length, a redirect, a corrupt stream, a decompression bomb)
//! is charged its full reservation, and the audit line and metric say why.

mod common;

use bytes::Bytes;
use common::*;
use cvgate::count::codec::{BombGuard, Failure};
use cvgate::devtools::mock_api::MockOptions;
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const KVK: &str = "12345678";

/// An account budget of 1,000 CVs a day (the limiting bucket), no block rules, audit to a file.
fn cfg(extra: &str) -> String {
    format!(
        r#"
audit:
  sink: file
  path: audit.log
quota:
  scopes:
    account:
      horizons:
        day: {{ budget: 1000, window: 24h }}
blocks: {{ rules: [] }}
{extra}"#
    )
}

async fn mock_with(opts: MockOptions) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(cvgate::devtools::mock_api::serve_with(l, opts, std::future::pending()));
    format!("http://{addr}")
}

/// `r=` of the `RateLimit` header: what the limiting bucket has left after this reservation.
fn remaining(parts: &http::response::Parts) -> u64 {
    let v = header(parts, "ratelimit");
    v.split(';').find_map(|p| p.strip_prefix("r=")).unwrap().parse().unwrap()
}

/// GET `path` as `acct-1` with the given headers; the head and the body as the client reads it
/// (decoded when the proxy compressed it); a body that ends in an error gives `None`.
async fn fetch(p: &Proxy, path: &str, headers: &[(&str, &str)]) -> (http::response::Parts, Option<Bytes>) {
    let t = token(p, "acct-1", KVK);
    let auth = bearer(&t);
    let mut h = vec![("authorization", auth.as_str())];
    h.extend_from_slice(headers);
    let mut s = plain_connect(p.plain).await;
    let r = s.send(get(path, false, &h)).await;
    let (parts, body) = r.into_parts();
    let body = match cvgate::count::codec::content_coding(&parts.headers) {
        Ok(Some(c)) => {
            cvgate::count::codec::decode(body, c, BombGuard::default(), Failure::default()).collect().await.ok()
        }
        _ => body.collect().await.ok(),
    };
    // settle runs off the body's end; let it land before the next request reads the bucket.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    (parts, body.map(|b| b.to_bytes()))
}

fn results(body: &[u8]) -> usize {
    let v: Value = serde_json::from_slice(body).unwrap_or_else(|e| panic!("not JSON ({e})"));
    v["results"].as_array().map_or(0, Vec::len)
}

/// Stop the proxy (flushing the audit log) and return its CV lines.
async fn audit(p: Proxy) -> Vec<Value> {
    p.running.shutdown().await;
    let text = std::fs::read_to_string(p.dir.path().join("audit.log")).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_coding_is_decoded_counted_and_refunded_only_by_the_exact_count() {
    for coding in ["gzip", "deflate", "br", "zstd"] {
        let mock = mock_with(MockOptions { force_encoding: Some(coding.into()), ..MockOptions::default() }).await;
        let p = start_proxy(&mock, &cfg("")).await;
        // What python requests and browsers send; and a Range that must not reach the upstream.
        let ask = [("accept-encoding", "gzip, deflate, br, zstd"), ("range", "bytes=0-999")];
        let (parts, body) = fetch(&p, "/api/v1/cvs?size=200&results=150&query=a", &ask).await;
        assert_eq!(parts.status, 200, "{coding}");
        assert!(parts.headers.get("content-encoding").is_none(), "{coding}: plain to the client (compress is off)");
        assert_eq!(results(&body.unwrap()), 150, "{coding}");
        assert_eq!(remaining(&parts), 800, "{coding}: 200 reserved");
        // The exact count (150) refunded 50: the next reservation of 200 leaves 650.
        let (parts, body) = fetch(&p, "/api/v1/cvs?size=200&query=b", &ask).await;
        assert_eq!(results(&body.unwrap()), 200);
        assert_eq!(remaining(&parts), 650, "{coding}: charged 150, then 200");
        let mut delivered = 350;
        loop {
            let (parts, body) = fetch(&p, "/api/v1/cvs?size=200&query=c", &ask).await;
            if parts.status == 429 {
                break;
            }
            delivered += results(&body.unwrap());
            assert!(delivered <= 1000, "{coding}: {delivered} CVs past a budget of 1000");
        }
        assert_eq!(delivered, 950, "{coding}");
        assert_eq!(
            metric(&p, "cvgate_count_uncertain_total", &[("route", "cv_search"), ("reason", "shape")]).await,
            0.0
        );
        let lines = audit(p).await;
        let ok: Vec<_> = lines.iter().filter(|l| l["decision"] == "allowed").collect();
        assert_eq!(ok.len(), 5, "{coding}");
        assert!(ok.iter().all(|l| l["count"] == "exact"), "{coding}: {ok:?}");
        assert_eq!(ok[0]["delivered"], 150);
    }
}

/// Each way a 2xx answer can escape the count, and the reason the audit line must give.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_that_cannot_be_counted_are_charged_their_full_reservation() {
    // (mock options, path, reason); each asks 200 and the upstream sends 150 (or garbage).
    let renamed = MockOptions { results_key: "hits".into(), ..MockOptions::default() };
    let unknown = MockOptions { force_encoding: Some("x-custom".into()), ..MockOptions::default() };
    let cases = [
        (MockOptions::default(), "/api/v1/cvs?size=200&results=150&range=bytes=0-40000", "partial"),
        (MockOptions::default(), "/api/v1/cvs?size=200&results=150&format=csv", "content-type"),
        (renamed, "/api/v1/cvs?size=200&results=150", "shape"),
        (unknown, "/api/v1/cvs?size=200&results=150", "encoding"),
    ];
    for (opts, path, reason) in cases {
        let p = start_proxy(&mock_with(opts).await, &cfg("")).await;
        let (parts, body) = fetch(&p, path, &[("accept-encoding", "gzip")]).await;
        assert!(parts.status.is_success(), "{reason}: {}", parts.status);
        assert!(body.is_some(), "{reason}: the answer itself passes");
        assert_eq!(remaining(&parts), 800);
        let (parts, _) = fetch(&p, "/api/v1/cvs?size=200&query=next", &[]).await;
        assert_eq!(remaining(&parts), 600, "{reason}: charged the full 200, not the 150 sent");
        // The renamed array and the unknown coding hold for the second answer too.
        let both = matches!(reason, "shape" | "encoding");
        let m = metric(&p, "cvgate_count_uncertain_total", &[("route", "cv_search"), ("reason", reason)]).await;
        assert_eq!(m, if both { 2.0 } else { 1.0 }, "{reason}");
        let lines = audit(p).await;
        assert_eq!(lines[0]["count"], format!("uncertain:{reason}"), "{reason}: {:?}", lines[0]);
        assert_eq!(lines[0]["delivered"], 200, "{reason}");
        let second = if both { format!("uncertain:{reason}") } else { "exact".into() };
        assert_eq!(lines[1]["count"], second.as_str());
    }
}

/// A hand-written upstream: answers every request with `head` + `body` (raw bytes), then closes.
async fn raw_upstream(response: &'static [u8]) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(response).await;
                let _ = s.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

/// Like [`fetch`] without headers, for answers that may break off: `None` when no response
/// head arrives; the body is read and dropped either way.
async fn try_fetch(p: &Proxy, path: &str) -> Option<http::response::Parts> {
    let t = token(p, "acct-1", KVK);
    let tcp = tokio::net::TcpStream::connect(p.plain).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let r = tx.send_request(get(path, false, &[("authorization", &bearer(&t))])).await.ok();
    let parts = match r {
        Some(r) => {
            let (parts, body) = r.into_parts();
            let _ = body.collect().await;
            Some(parts)
        }
        None => None,
    };
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    parts
}

const TWO: &str = r#"{"results":[{"id":"cv-1"},{"id":"cv-2"}]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_that_end_early_lie_or_are_malformed_are_charged_in_full() {
    let cases: [(&'static [u8], &str); 5] = [
        // Content-Length promises more than comes: the body ends early.
        (
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 5000\r\nconnection: close\r\n\r\n{\"results\":[{\"id\":\"cv-1\"},{\"id\":\"cv-2\"}",
            "truncated",
        ),
        // Content-Length promises less than comes: the JSON is cut off by the framing.
        (
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 30\r\nconnection: close\r\n\r\n{\"results\":[{\"id\":\"cv-1\"},{\"id\":\"cv-2\"}]}",
            "malformed",
        ),
        // Complete framing, broken JSON.
        (
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 25\r\nconnection: close\r\n\r\n{\"results\":[{\"id\":\"cv-1\"}",
            "malformed",
        ),
        // Says gzip, is not.
        (
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\ncontent-length: 12\r\nconnection: close\r\n\r\n\x1f\x8b\x08\x00garbage!",
            "decode-error",
        ),
        // A redirect: the records are somewhere we cannot see.
        (
            b"HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:1/cvs.json\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            "status",
        ),
    ];
    for (response, reason) in cases {
        let p = start_proxy(&raw_upstream(response).await, &cfg("")).await;
        // A body that fails before its first bytes are flushed leaves the client no head at all.
        if let Some(parts) = try_fetch(&p, "/api/v1/cvs?size=200").await {
            assert_eq!(remaining(&parts), 800, "{reason}");
        }
        let delivered = metric(&p, "cvgate_cvs_delivered_total", &[("route", "cv_search"), ("tier", "default")]).await;
        assert_eq!(delivered, 200.0, "{reason}: counted as delivered, the full reservation");
        let m = metric(&p, "cvgate_count_uncertain_total", &[("route", "cv_search"), ("reason", reason)]).await;
        assert_eq!(m, 1.0, "{reason}");
        let lines = audit(p).await;
        assert_eq!(lines[0]["count"], format!("uncertain:{reason}"), "{reason}: {:?}", lines[0]);
        assert_eq!(lines[0]["delivered"], 200, "{reason}: charged the full reservation");
    }
    // The control: the same upstream, well-formed, is counted exactly (2 of 200: 198 refunded).
    let ok: &'static [u8] = Box::leak(
        format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{TWO}", TWO.len())
            .into_bytes()
            .into_boxed_slice(),
    );
    let p = start_proxy(&raw_upstream(ok).await, &cfg("")).await;
    let (_, body) = fetch(&p, "/api/v1/cvs?size=200", &[]).await;
    assert_eq!(results(&body.unwrap()), 2);
    let lines = audit(p).await;
    assert_eq!((lines[0]["count"].as_str(), lines[0]["delivered"].as_u64()), (Some("exact"), Some(2)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_answer_can_be_refused_and_an_export_always_is() {
    let unknown = MockOptions { force_encoding: Some("x-custom".into()), ..MockOptions::default() };
    let mock = mock_with(unknown).await;
    let refuse = "routes:\n  - { name: cv_search, group: cv, methods: [GET], path: /api/v1/cvs, cost: { query: size, default: 20, max: 200, count: \"json_array:results\" }, encoding: { undecodable: refuse } }\n  - { name: cv_export, group: cv, methods: [GET], path: /api/v1/cvs/export, cost: { query: limit, default: 100, max: 1000, up_to: true, count: ndjson } }\n";
    let p = start_proxy(&mock, &cfg(refuse)).await;
    let t = token(&p, "acct-1", KVK);
    for path in ["/api/v1/cvs?size=200", "/api/v1/cvs/export?limit=300"] {
        let mut s = plain_connect(p.plain).await;
        let r = s.send(get(path, false, &[("authorization", &bearer(&t))])).await;
        expect_problem(r, 502, "upstream-undecodable").await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    // Refused: nothing delivered, everything given back (the audit line says 0 delivered).
    let m = metric(&p, "cvgate_count_uncertain_total", &[("route", "cv_export"), ("reason", "encoding")]).await;
    assert_eq!(m, 1.0);
    let lines = audit(p).await;
    assert_eq!(lines.len(), 2);
    assert!(lines.iter().all(|l| l["decision"] == "upstream-undecodable" && l["status"] == 502), "{lines:?}");
    assert!(lines.iter().all(|l| l["delivered"] == 0), "{lines:?}");
}

/// A compressed NDJSON export is cut at its grant after decoding, at a record boundary, and
/// compressed again for a client that asked when the route says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_export_is_cut_at_the_grant_after_decoding() {
    let compress = "routes:\n  - { name: cv_export, group: cv, methods: [GET], path: /api/v1/cvs/export, cost: { query: limit, default: 100, max: 1000, up_to: true, count: ndjson }, encoding: { compress: true } }\n  - { name: cv_search, group: cv, methods: [GET], path: /api/v1/cvs, cost: { query: size, default: 20, max: 200, count: \"json_array:results\" } }\n";
    for coding in ["gzip", "br", "zstd"] {
        let mock = mock_with(MockOptions { force_encoding: Some(coding.into()), ..MockOptions::default() }).await;
        let p = start_proxy(&mock, &cfg(compress)).await;
        // Spend 700 so the export's grant is 300 of the 1000 asked.
        for q in ["a", "b", "c"] {
            let (parts, _) = fetch(&p, &format!("/api/v1/cvs?size=200&query={q}"), &[]).await;
            assert_eq!(parts.status, 200);
        }
        let (parts, _) = fetch(&p, "/api/v1/cvs?size=100&query=d", &[]).await;
        assert_eq!(remaining(&parts), 300);
        let (parts, body) = fetch(&p, "/api/v1/cvs/export?limit=1000&chunk=7", &[("accept-encoding", coding)]).await;
        assert_eq!(parts.status, 200);
        assert_eq!(header(&parts, "content-encoding"), coding, "compressed again for the client");
        assert!(parts.headers.get("content-length").is_none());
        let (cvs, marker) = export_lines(&body.expect("a clean end after the marker"));
        assert_eq!((cvs, marker), (300, Some(300)), "{coding}: cut at the grant, at a record boundary");
        let (parts, _) = fetch(&p, "/api/v1/cvs?size=1&query=e", &[]).await;
        assert_eq!(parts.status, 429, "{coding}: the budget is spent");
        let lines = audit(p).await;
        let export = lines.iter().find(|l| l["route"] == "cv_export").unwrap();
        assert_eq!(export["delivered"], 300);
        assert_eq!(export["truncated"], true);
        assert_eq!(export["count"], "exact");
    }
}

/// 1 GiB of zeros gzipped to about 1 MiB: the proxy stops decoding at the ratio limit, memory
/// stays flat, the request is charged in full, the connection ends and the proxy serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decompression_bomb_is_charged_in_full_with_bounded_memory() {
    // Compress 1 GiB of zeros as a stream of 1 MiB chunks (never 1 GiB in memory).
    // At the best level (what an attacker would pick), not the proxy's fastest.
    let zeros = Bytes::from(vec![0u8; 1 << 20]);
    let chunks = futures_util::stream::iter((0..1024).map(move |_| Ok::<_, std::io::Error>(zeros.clone())));
    let mut encoder = async_compression::tokio::bufread::GzipEncoder::with_quality(
        tokio_util::io::StreamReader::new(chunks),
        async_compression::Level::Best,
    );
    let mut bomb = Vec::new();
    encoder.read_to_end(&mut bomb).await.unwrap();
    assert!(bomb.len() < 2 << 20, "{} bytes", bomb.len());
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\ncontent-length: {}\r\n\r\n",
        bomb.len()
    );
    let response: &'static [u8] = Box::leak([head.as_bytes(), &bomb].concat().into_boxed_slice());
    let p = start_proxy(&raw_upstream(response).await, &cfg("")).await;
    let before = rss_bytes();
    let (parts, body) = fetch(&p, "/api/v1/cvs?size=200", &[]).await;
    let grown = rss_bytes().saturating_sub(before);
    assert_eq!(parts.status, 200);
    assert!(body.is_none(), "the body ends with an error, not as if complete");
    assert!(grown < 64 << 20, "RSS grew {} MiB", grown >> 20);
    // The proxy serves on, and the bomb was charged its full reservation.
    let (parts, _) = fetch(&p, "/api/v1/cvs?size=200", &[]).await;
    assert_eq!(remaining(&parts), 600);
    let m = metric(&p, "cvgate_count_uncertain_total", &[("route", "cv_search"), ("reason", "bomb")]).await;
    assert_eq!(m, 2.0);
    let lines = audit(p).await;
    assert_eq!(lines[0]["count"], "uncertain:bomb");
    assert_eq!(lines[0]["delivered"], 200);
}

/// Over TLS and HTTP/2 a gzipped export is decoded, cut at its grant and ends with the
/// truncation trailers (the route does not compress again, so nothing stands between).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_h2_a_gzipped_export_is_cut_with_its_trailers() {
    let mock = mock_with(MockOptions { force_encoding: Some("gzip".into()), ..MockOptions::default() }).await;
    let p = start_proxy(&mock, &cfg("")).await;
    let t = token(&p, "acct-1", KVK);
    let (alpn, mut s) = tls_connect(p.tls, &p.cert_pem, &[b"h2"]).await;
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    let h = [("authorization", bearer(&t)), ("accept-encoding", "gzip".to_string())];
    let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = s.send(get("/api/v1/cvs/export?limit=5000&chunk=33", true, &h)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r.into_parts().0, "ratelimit").split(';').find_map(|p| p.strip_prefix("r=")), Some("0"));
    let r = s.send(get("/api/v1/cvs/export?limit=5000&chunk=33", true, &h)).await;
    assert_eq!(r.status(), 429, "the first export took the whole day");

    // A fresh budget: the export is granted 1000 (the day), cut there with trailers.
    let p = start_proxy(&mock, &cfg("")).await;
    let (_, mut s) = tls_connect(p.tls, &p.cert_pem, &[b"h2"]).await;
    let t = token(&p, "acct-1", KVK);
    let r = s.send(get("/api/v1/cvs/export?limit=5000&chunk=33", true, &[("authorization", &bearer(&t))])).await;
    assert!(r.headers().get("content-encoding").is_none());
    let collected = r.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("h2 trailers");
    assert_eq!(trailers["cvgate-truncated"], "true");
    assert_eq!(trailers["cvgate-records"], "1000");
    assert_eq!(export_lines(&collected.to_bytes()), (1000, Some(1000)));
}
