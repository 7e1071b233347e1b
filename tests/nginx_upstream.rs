//! Issue 15 against a real web server: Debian's nginx with `gzip on` for JSON and NDJSON (how
//! most API backends run) as the upstream, serving a search page and an export as static files
//! (so it also answers `Range` and conditional requests, as a real server does). A client that
//! sends `Accept-Encoding: gzip`, `Range` and `If-None-Match` gets exactly its budget, and the
//! `RateLimit` header follows what was delivered, whether cvgate asks nginx for identity (the
//! default) or lets it compress.
//!
//! nginx is installed by `scripts/test.sh`; without it this test fails rather than skip.

mod common;

use std::path::Path;
use std::process::{Child, Command};

use common::*;
use serde_json::Value;

const KVK: &str = "12345678";

/// nginx in the foreground, one process, on a free loopback port, killed on drop.
struct Nginx {
    child: Child,
    port: u16,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A search page of `n` CVs and an export of `m`, as files nginx serves.
fn write_files(dir: &Path, n: u64, m: u64) {
    let mut page = String::from(r#"{"page":1,"size":200,"total":10000,"results":["#);
    for i in 1..=n {
        if i > 1 {
            page.push(',');
        }
        cvgate::devtools::mock_api::write_cv(&mut page, i);
    }
    page.push_str("]}");
    std::fs::write(dir.join("search.json"), page).unwrap();
    let mut export = String::new();
    for i in 1..=m {
        cvgate::devtools::mock_api::write_cv(&mut export, i);
        export.push('\n');
    }
    std::fs::write(dir.join("export.ndjson"), export).unwrap();
}

fn start_nginx(dir: &Path) -> Nginx {
    let bin = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("nginx is not installed: scripts/test.sh installs it (apt-get install nginx-light)");
    let port = free_port();
    let d = dir.display();
    let conf = format!(
        r#"daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{}}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  gzip on;
  gzip_types application/json application/x-ndjson;
  gzip_min_length 0;
  gzip_proxied any;
  etag on;
  server {{
    listen 127.0.0.1:{port};
    location = /api/v1/cvs {{ default_type application/json; alias {d}/search.json; }}
    location = /api/v1/cvs/export {{ default_type application/x-ndjson; alias {d}/export.ndjson; }}
  }}
}}
"#
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let nginx = Nginx {
        child: Command::new(bin)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg(dir.join("error.log"))
            .spawn()
            .unwrap(),
        port,
    };
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return nginx;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("nginx did not start: {}", std::fs::read_to_string(dir.join("error.log")).unwrap_or_default());
}

/// nginx itself: gzip when asked, 206 for a range, 304 for a matching ETag (what cvgate must
/// never let through uncounted).
async fn nginx_behaves_like_a_real_server(port: u16) -> String {
    let mut s = plain_connect(([127, 0, 0, 1], port).into()).await;
    let r = s.send(get("/api/v1/cvs", false, &[("accept-encoding", "gzip")])).await;
    let (parts, _) = body_bytes(r).await;
    assert_eq!(header(&parts, "content-encoding"), "gzip");
    let r = s.send(get("/api/v1/cvs", false, &[("range", "bytes=0-99")])).await;
    let (parts, body) = body_bytes(r).await;
    assert_eq!((parts.status.as_u16(), body.len()), (206, 100));
    let etag = header(&parts, "etag").to_string();
    let r = s.send(get("/api/v1/cvs", false, &[("if-none-match", &etag)])).await;
    assert_eq!(r.status(), 304);
    let _ = body_bytes(r).await;
    etag
}

fn routes(upstream_encoding: &str) -> String {
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
routes:
  - {{ name: cv_export, group: cv, methods: [GET], path: /api/v1/cvs/export, cost: {{ query: limit, default: 100, max: 1000, up_to: true, count: ndjson }}, encoding: {{ upstream: "{upstream_encoding}", compress: true }} }}
  - {{ name: cv_search, group: cv, methods: [GET], path: /api/v1/cvs, cost: {{ query: size, default: 20, max: 200, count: "json_array:results" }}, encoding: {{ upstream: "{upstream_encoding}" }} }}
"#
    )
}

fn ratelimit_remaining(parts: &http::response::Parts) -> u64 {
    header(parts, "ratelimit").split(';').find_map(|p| p.strip_prefix("r=")).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzipping_nginx_upstream_cannot_make_cvs_free() {
    let files = tempfile::tempdir().unwrap();
    write_files(files.path(), 150, 2000);
    let nginx = start_nginx(files.path());
    let etag = nginx_behaves_like_a_real_server(nginx.port).await;

    // identity: cvgate asks for plain records; "gzip": nginx compresses and cvgate decodes.
    for upstream_encoding in ["identity", "gzip"] {
        let p = start_proxy(&format!("http://127.0.0.1:{}", nginx.port), &routes(upstream_encoding)).await;
        let t = token(&p, "acct-1", KVK);
        let auth = bearer(&t);
        // What an attacker's client sends: compression, a tiny range, a validator it holds.
        let ask = [
            ("authorization", auth.as_str()),
            ("accept-encoding", "gzip"),
            ("range", "bytes=0-99"),
            ("if-none-match", etag.as_str()),
        ];
        let mut delivered = 0;
        let mut expected_remaining = 1000;
        for _ in 0..20 {
            let mut s = plain_connect(p.plain).await;
            let r = s.send(get("/api/v1/cvs?size=200", false, &ask)).await;
            if r.status() == 429 {
                break;
            }
            let (parts, body) = body_bytes(r).await;
            assert_eq!(parts.status, 200, "{upstream_encoding}: a whole answer, not 206 or 304");
            assert!(parts.headers.get("content-encoding").is_none(), "search is not re-compressed");
            let v: Value = serde_json::from_slice(&body).unwrap();
            let n = v["results"].as_array().unwrap().len() as u64;
            assert_eq!(n, 150);
            // Reserved 200; the previous answers were charged exactly what they delivered.
            expected_remaining -= 200;
            assert_eq!(ratelimit_remaining(&parts), expected_remaining, "{upstream_encoding}");
            expected_remaining += 50;
            delivered += n;
            tokio::time::sleep(std::time::Duration::from_millis(50)).await; // settle lands
        }
        assert_eq!(delivered, 900, "{upstream_encoding}: 6 pages of 150 fit in 1000, the 7th does not");

        // The export of 2000 is cut at what is left (100), after decoding, and gzipped for us.
        let mut s = plain_connect(p.plain).await;
        let r = s.send(get("/api/v1/cvs/export?limit=1000", false, &ask)).await;
        let (parts, body) = body_bytes(r).await;
        assert_eq!(parts.status, 200);
        assert_eq!(header(&parts, "content-encoding"), "gzip");
        let plain = cvgate::count::codec::decode(
            http_body_util::Full::new(body),
            cvgate::count::codec::Coding::Gzip,
            cvgate::count::codec::BombGuard::default(),
            cvgate::count::codec::Failure::default(),
        );
        let plain = http_body_util::BodyExt::collect(plain).await.unwrap().to_bytes();
        assert_eq!(export_lines(&plain), (100, Some(100)), "{upstream_encoding}");

        p.running.shutdown().await;
        let audit = std::fs::read_to_string(p.dir.path().join("audit.log")).unwrap();
        let lines: Vec<Value> = audit.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let allowed: Vec<&Value> = lines.iter().filter(|l| l["decision"] == "allowed").collect();
        assert_eq!(allowed.len(), 7);
        assert!(allowed.iter().all(|l| l["count"] == "exact"), "{allowed:?}");
        let total: u64 = allowed.iter().map(|l| l["delivered"].as_u64().unwrap()).sum();
        assert_eq!(total, 1000, "{upstream_encoding}: every CV delivered is charged, the budget exactly");
    }
}
