//! Issue 6: blocks (manual, automatic, persisted across restarts), the admin API, and live
//! reload through it — all through the real proxy and real HTTP.

mod common;

use common::*;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789";

/// `text` with its one `from` replaced by `to`. Panics unless `from` occurs exactly once: a patch
/// that matched nothing would silently test the unpatched config.
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "expected {from:?} once in:\n{text}");
    text.replace(from, to)
}

/// The harness config with the admin API on port 0, a token, blocks in the temp dir and small
/// account budgets.
fn admin_yaml(upstream: &str, dir: &std::path::Path, day_budget: u64, auto_rules: bool) -> String {
    let rules = if auto_rules { "" } else { "  rules: []\n" };
    let extra = format!(
        r#"{identity}admin: {{ token: "{ADMIN_TOKEN}" }}
blocks:
  file: "{blocks}"
{rules}quota:
  scopes:
    account:
      horizons:
        day: {{ budget: {day_budget}, window: 24h }}
"#,
        identity = identity_yaml(&[]),
        blocks = dir.join("blocks.json").display(),
    );
    replace_once(&test_yaml(upstream, dir, &extra), "  admin: null", "  admin: \"127.0.0.1:0\"")
}

/// One admin call over a fresh HTTP/1.1 connection.
async fn admin(p: &Proxy, method: &str, path: &str, body: Option<Value>, token: &str) -> (u16, Value) {
    admin_call(p.running.admin_addr.unwrap(), token, method, path, body).await
}

async fn search(p: &Proxy, tok: &str, size: u32) -> (u16, Value) {
    let (_, mut s) = tls_connect(p.tls, &p.cert_pem, &[b"h2"]).await;
    let r = s.send(get(&format!("/api/v1/cvs?size={size}"), true, &[("authorization", &bearer(tok))])).await;
    let status = r.status().as_u16();
    let (_, v) = body_json(r).await;
    (status, v)
}

async fn metric(p: &Proxy, needle: &str) -> f64 {
    let tcp = tokio::net::TcpStream::connect(p.ops).await.unwrap();
    let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/metrics")
        .header("host", "ops")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let text = s.send_request(req).await.unwrap().into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&text).to_string();
    text.lines()
        .find(|l| l.starts_with(needle))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_needs_the_token() {
    let mock = start_mock().await;
    let (dir, cert) = cert_dir();
    let yaml = admin_yaml(&format!("http://{mock}"), dir.path(), 2000, true);
    let p = start_proxy_in(dir, cert, &yaml).await;
    let (status, v) = admin(&p, "GET", "/v1/blocks", None, "wrong-token-wrong-token").await;
    assert_eq!(status, 401);
    assert_eq!(v["type"], "urn:cvgate:problem:admin-unauthorized");
    let (status, v) = admin(&p, "GET", "/v1/config", None, ADMIN_TOKEN).await;
    assert_eq!(status, 200);
    assert_eq!(v["identity"]["dev_hs256"]["secret"], "<redacted>");
    assert_eq!(v["admin"]["token"], "<redacted>");
    assert!(!v.to_string().contains(DEV_SECRET) && !v.to_string().contains(ADMIN_TOKEN));
    // What runs: the version, the config's hash (as /metrics labels it), when it started.
    let (status, v) = admin(&p, "GET", "/v1/version", None, ADMIN_TOKEN).await;
    assert_eq!(status, 200);
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    let hash = v["config_sha256"].as_str().unwrap();
    assert_eq!(common::metric(&p, "cvgate_config_info", &[("sha256", hash)]).await, 1.0);
    assert_eq!(v["started"].as_str().unwrap().parse::<jiff::Timestamp>().unwrap(), daytime());
    p.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_block_survives_a_restart_and_unblock_works() {
    let mock = start_mock().await;
    let (dir, cert) = cert_dir();
    let yaml = admin_yaml(&format!("http://{mock}"), dir.path(), 2000, true);
    let p = start_proxy_in(dir, cert.clone(), &yaml).await;
    let tok = token(&p, "acct-scraper", "12345678");
    assert_eq!(search(&p, &tok, 5).await.0, 200);
    let (status, v) = admin(
        &p,
        "POST",
        "/v1/blocks",
        Some(json!({"scope": "account", "key": "acct-scraper", "reason": "scraping", "duration": "7d"})),
        ADMIN_TOKEN,
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let (status, v) = search(&p, &tok, 5).await;
    assert_eq!(status, 403);
    assert_eq!(v["type"], "urn:cvgate:problem:blocked");
    assert_eq!(v["scope"], "account");
    // Other accounts are unaffected.
    assert_eq!(search(&p, &token(&p, "acct-other", "12345678"), 5).await.0, 200);

    // Restart: a new process state from the same files.
    let Proxy { running, dir, .. } = p;
    running.shutdown().await;
    let p = start_proxy_in(dir, cert, &yaml).await;
    let (status, _) = search(&p, &tok, 5).await;
    assert_eq!(status, 403, "block lost across restart");
    let (status, v) = admin(&p, "GET", "/v1/blocks", None, ADMIN_TOKEN).await;
    assert_eq!(status, 200);
    assert_eq!(v["blocks"][0]["key"], "acct-scraper");

    let (status, _) = admin(&p, "DELETE", "/v1/blocks/account/acct-scraper", None, ADMIN_TOKEN).await;
    assert_eq!(status, 200);
    assert_eq!(search(&p, &tok, 5).await.0, 200);
    p.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn using_up_the_day_budget_blocks_the_account_automatically() {
    let mock = start_mock().await;
    let (dir, cert) = cert_dir();
    let yaml = admin_yaml(&format!("http://{mock}"), dir.path(), 400, true);
    let p = start_proxy_in(dir, cert, &yaml).await;
    let tok = token(&p, "acct-greedy", "12345678");
    assert_eq!(search(&p, &tok, 200).await.0, 200);
    assert_eq!(search(&p, &tok, 200).await.0, 200);
    let (status, v) = search(&p, &tok, 200).await;
    assert_eq!(status, 429);
    assert_eq!((v["scope"].as_str(), v["horizon"].as_str()), (Some("account"), Some("day")));
    // The day-budget rule fired: the next request is refused as blocked, not as over quota.
    let (status, v) = search(&p, &tok, 1).await;
    assert_eq!(status, 403, "{v}");
    assert_eq!(v["type"], "urn:cvgate:problem:blocked");
    let (_, v) = admin(&p, "GET", "/v1/blocks", None, ADMIN_TOKEN).await;
    assert_eq!(v["blocks"][0]["source"], "rule:day-budget-exhausted");
    // Housekeeping publishes the gauge once a second.
    let mut gauge = 0.0;
    for _ in 0..50 {
        gauge = metric(&p, "cvgate_blocks_active{scope=\"account\"}").await;
        if gauge == 1.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(gauge, 1.0);
    p.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_a_new_budget_keeping_spent_and_a_bad_reload_changes_nothing() {
    let mock = start_mock().await;
    let (dir, cert) = cert_dir();
    let upstream = format!("http://{mock}");
    let yaml = admin_yaml(&upstream, dir.path(), 1000, false);
    let p = start_proxy_in(dir, cert, &yaml).await;
    let tok = token(&p, "acct-1", "12345678");
    assert_eq!(search(&p, &tok, 200).await.0, 200);
    assert_eq!(search(&p, &tok, 200).await.0, 200);
    let remaining = |v: &Value| {
        v["buckets"].as_array().unwrap().iter().find(|b| b["horizon"] == "day").unwrap()["remaining"].as_u64().unwrap()
    };
    let (_, v) = admin(&p, "GET", "/v1/quota?account=acct-1", None, ADMIN_TOKEN).await;
    assert_eq!(remaining(&v), 600);

    // A broken file: refused with every error, traffic untouched, the failure counted once.
    let good = std::fs::read_to_string(&p.config_path).unwrap();
    std::fs::write(&p.config_path, format!("{good}\nbogus_key: 1\nlimits:\n  max_connections: many\n")).unwrap();
    let (status, v) = admin(&p, "POST", "/v1/reload", None, ADMIN_TOKEN).await;
    assert_eq!(status, 422, "{v}");
    assert!(!v["errors"].as_array().unwrap().is_empty());
    assert_eq!(metric(&p, "cvgate_config_reloads_total{result=\"failed\"}").await, 1.0);
    assert_eq!(search(&p, &tok, 20).await.0, 200);

    // A good file with a bigger budget: applies at once, spent CVs stay spent.
    std::fs::write(&p.config_path, replace_once(&good, "budget: 1000", "budget: 5000")).unwrap();
    let (status, _) = admin(&p, "POST", "/v1/reload", None, ADMIN_TOKEN).await;
    assert_eq!(status, 200);
    let (_, v) = admin(&p, "GET", "/v1/quota?account=acct-1", None, ADMIN_TOKEN).await;
    assert_eq!(remaining(&v), 5000 - 420);
    assert_eq!(metric(&p, "cvgate_config_reloads_total{result=\"ok\"}").await, 1.0);

    // The day horizon made a fixed (calendar-day) cap: still the same CVs spent, and its reset is
    // the end of the UTC day instead of the time the continuous refill would take.
    let fixed = replace_once(&good, "budget: 1000, window: 24h }", "budget: 5000, window: 24h, fixed: true }");
    std::fs::write(&p.config_path, fixed).unwrap();
    let (status, _) = admin(&p, "POST", "/v1/reload", None, ADMIN_TOKEN).await;
    assert_eq!(status, 200);
    let (_, v) = admin(&p, "GET", "/v1/quota?account=acct-1", None, ADMIN_TOKEN).await;
    let day = v["buckets"].as_array().unwrap().iter().find(|b| b["horizon"] == "day").unwrap().clone();
    assert_eq!(remaining(&v), 5000 - 420, "{v}");
    assert_eq!(day["fixed"], true, "{v}");
    const DAY_NS: i128 = 86_400_000_000_000;
    let now = cvgate::clock::Clock::now(&*p.running.shared.clock).as_nanosecond();
    let to_midnight_secs = ((DAY_NS - now.rem_euclid(DAY_NS)) as u64).div_ceil(1_000_000_000);
    assert_eq!(day["reset_secs"].as_u64().unwrap(), to_midnight_secs, "{v}");
    p.running.shutdown().await;
}
