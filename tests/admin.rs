//! Issue 6: blocks (manual, automatic, persisted across restarts), the admin API, and live
//! reload through it — all through the real proxy and real HTTP.

mod common;
#[path = "common/redis.rs"]
mod redis_server;

use common::*;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use redis_server::RedisServer;
use serde_json::{json, Value};

const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789";
/// A named token (`admin.tokens`), for the security team.
const SECURITY_TOKEN: &str = "security-token-for-tests-0123456789";

/// `text` with its one `from` replaced by `to`. Panics unless `from` occurs exactly once: a patch
/// that matched nothing would silently test the unpatched config.
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "expected {from:?} once in:\n{text}");
    text.replace(from, to)
}

/// The harness config with the admin API on port 0, a token, blocks in the temp dir and small
/// account budgets.
fn admin_yaml(upstream: &str, dir: &std::path::Path, day_budget: u64, auto_rules: bool) -> String {
    admin_yaml_with(upstream, dir, day_budget, auto_rules, "")
}

/// [`admin_yaml`] with `more` top-level config.
fn admin_yaml_with(upstream: &str, dir: &std::path::Path, day_budget: u64, auto_rules: bool, more: &str) -> String {
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
{more}"#,
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

/// `admin_call`'s answer, polled (bounded: 2 s) until `done` holds: a refusal is filed when the
/// request's story ends, which may be a moment after the client has its answer.
async fn admin_until(p: &Proxy, path: &str, token: &str, done: impl Fn(&Value) -> bool) -> Value {
    let mut v = Value::Null;
    for _ in 0..40 {
        let (status, got) = admin(p, "GET", path, None, token).await;
        assert_eq!(status, 200, "{got}");
        v = got;
        if done(&v) {
            return v;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("{path} never answered as expected:\n{v:#}");
}

/// The (subject, used) pairs of a `/v1/top` answer.
fn ranking(v: &Value) -> Vec<(String, u64)> {
    v["top"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["subject"].as_str().unwrap().into(), t["used"].as_u64().unwrap()))
        .collect()
}

/// Issue 20, against either store: real traffic through the proxy, then `top` ranks the
/// subjects by the CVs the store says they used; `explain` shows the spent bucket, a block, a
/// pause and the last refusals with their reasons; a quota reset (by a named token, audited
/// with its name) lets the refused account back in.
async fn explain_top_and_reset(redis: Option<&RedisServer>) {
    let mock = start_mock().await;
    let (dir, cert) = cert_dir();
    let store = redis
        .map(|r| format!("store:\n  kind: redis\n  redis: {{ url: \"{}\", timeout: 250ms }}\n", r.url()))
        .unwrap_or_default();
    let more = format!("{store}audit: {{ sink: file, path: audit.log }}\n");
    let yaml = admin_yaml_with(&format!("http://{mock}"), dir.path(), 400, false, &more);
    let named =
        format!("admin: {{ token: \"{ADMIN_TOKEN}\", tokens: [{{ name: security, token: \"{SECURITY_TOKEN}\" }}] }}");
    let yaml = replace_once(&yaml, &format!("admin: {{ token: \"{ADMIN_TOKEN}\" }}"), &named);
    let p = start_proxy_in(dir, cert, &yaml).await;
    let heavy = token(&p, "acct-heavy", "12345678");
    let light = token(&p, "acct-light", "23456789");
    assert_eq!(search(&p, &heavy, 200).await.0, 200);
    assert_eq!(search(&p, &heavy, 200).await.0, 200);
    let (status, v) = search(&p, &heavy, 200).await;
    assert_eq!((status, v["scope"].as_str(), v["horizon"].as_str()), (429, Some("account"), Some("day")), "{v}");
    assert_eq!(search(&p, &light, 50).await.0, 200);

    // top: from the store's own buckets, heaviest first, per scope and horizon.
    let (status, v) = admin(&p, "GET", "/v1/top?scope=account&horizon=day&n=10", None, SECURITY_TOKEN).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(ranking(&v), [("acct-heavy".into(), 400), ("acct-light".into(), 50)], "{v}");
    assert_eq!((v["top"][0]["capacity"].as_u64(), v["top"][0]["remaining"].as_u64()), (Some(400), Some(0)), "{v}");
    assert_eq!((v["top"][0]["key"].as_str(), v["complete"].as_bool()), (Some("a:acct-heavy|day"), Some(true)), "{v}");
    let (_, v) = admin(&p, "GET", "/v1/top?scope=account&horizon=day&n=1", None, ADMIN_TOKEN).await;
    assert_eq!(ranking(&v), [("acct-heavy".into(), 400)], "{v}");
    let (_, v) = admin(&p, "GET", "/v1/top?scope=org&horizon=week", None, ADMIN_TOKEN).await;
    assert_eq!(ranking(&v), [("12345678".into(), 400), ("23456789".into(), 50)], "{v}");
    let (_, v) = admin(&p, "GET", "/v1/top?scope=ip&horizon=day", None, ADMIN_TOKEN).await;
    assert_eq!(ranking(&v), [("127.0.0.0/24".into(), 450)], "{v}");
    for (query, slug) in [
        ("scope=country&horizon=day", "bad-scope"),
        ("scope=account&horizon=fortnight", "bad-horizon"),
        ("scope=account&horizon=day&n=0", "bad-n"),
    ] {
        let (status, v) = admin(&p, "GET", &format!("/v1/top?{query}"), None, ADMIN_TOKEN).await;
        assert_eq!((status, v["type"].as_str()), (422, Some(&*format!("urn:cvgate:problem:admin-{slug}"))), "{v}");
    }

    // explain: a block on the organisation and a pause of the group; the next request is
    // refused as blocked, and explain says all of it.
    let block = json!({"scope": "org", "key": "12345678", "reason": "scraping", "duration": "1h"});
    assert_eq!(admin(&p, "POST", "/v1/blocks", Some(block), SECURITY_TOKEN).await.0, 201);
    assert_eq!(admin(&p, "POST", "/v1/pauses/cv", None, SECURITY_TOKEN).await.0, 200);
    assert_eq!(search(&p, &heavy, 1).await.0, 403);
    let v = admin_until(&p, "/v1/explain?account=acct-heavy&org=12345678&ip=127.0.0.1", ADMIN_TOKEN, |v| {
        v["refusals"].as_array().is_some_and(|r| r.len() >= 2)
    })
    .await;
    assert_eq!(v["subject"]["ip_prefix"], "127.0.0.0/24", "{v:#}");
    let day = v["buckets"].as_array().unwrap().iter().find(|b| b["key"] == "a:acct-heavy|day").expect("the day bucket");
    assert_eq!((day["capacity"].as_u64(), day["remaining"].as_u64()), (Some(400), Some(0)), "{v:#}");
    assert!(v["buckets"].as_array().unwrap().iter().any(|b| b["key"] == "o:12345678|day"), "{v:#}");
    let blocks = v["blocks"].as_array().unwrap();
    assert_eq!(blocks.len(), 1, "{v:#}");
    assert_eq!((blocks[0]["scope"].as_str(), blocks[0]["reason"].as_str()), (Some("org"), Some("scraping")), "{v:#}");
    assert!(blocks[0]["until"].is_string(), "{v:#}");
    assert_eq!(v["groups"]["cv"]["paused"], true, "{v:#}");
    assert_eq!(v["groups"]["cv"]["closed"], Value::Null, "daytime: {v:#}");
    let r = v["refusals"].as_array().unwrap();
    assert_eq!(r.len(), 2, "each refusal once, though filed under account, org and ip: {v:#}");
    assert_eq!((r[0]["decision"].as_str(), r[0]["status"].as_u64()), (Some("blocked"), Some(403)), "{v:#}");
    assert_eq!((r[1]["decision"].as_str(), r[1]["status"].as_u64()), (Some("quota-exceeded"), Some(429)), "{v:#}");
    assert_eq!((r[1]["scope"].as_str(), r[1]["horizon"].as_str()), (Some("account"), Some("day")), "{v:#}");
    assert_eq!(r[1]["route"], "cv_search", "{v:#}");
    assert_eq!((v["tier"].clone(), v["probation"]["on_probation"].clone()), (Value::Null, json!(false)), "{v:#}");
    assert_eq!(v["guard"], json!({"mask": null, "pause": null}), "{v:#}");
    assert_eq!((v["mask"]["exempt"].clone(), v["mask"]["operator"].clone()), (json!(false), json!([])), "{v:#}");
    let (status, v) = admin(&p, "GET", "/v1/explain", None, ADMIN_TOKEN).await;
    assert_eq!((status, v["type"].as_str()), (400, Some("urn:cvgate:problem:admin-no-subject")), "{v}");

    // Reset: the block and the pause lifted, the account is still over its budget until its
    // quota is reset; then it is served again.
    assert_eq!(admin(&p, "DELETE", "/v1/blocks/org/12345678", None, SECURITY_TOKEN).await.0, 200);
    assert_eq!(admin(&p, "DELETE", "/v1/pauses/cv", None, SECURITY_TOKEN).await.0, 200);
    assert_eq!(search(&p, &heavy, 200).await.0, 429);
    let bad = admin(&p, "POST", "/v1/quota/reset", Some(json!({"account": "acct-heavy", "scope": "org"})), ADMIN_TOKEN);
    assert_eq!(bad.await.0, 422);
    if let Some(r) = redis {
        assert_eq!(r.query::<i64>(&["HEXISTS", "cvgate:{quota}:a:acct-heavy|", "day"]), 1, "the day is in Redis");
    }
    let (status, v) =
        admin(&p, "POST", "/v1/quota/reset", Some(json!({"account": "acct-heavy"})), SECURITY_TOKEN).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["reset"],
        json!([{"scope": "account", "horizon": "day", "key": "a:acct-heavy|day", "used_before": 400}]),
        "{v}"
    );
    assert_eq!(v["by"], "security", "{v}");
    if let Some(r) = redis {
        // One hash per subject, one field per horizon (src/quota/redis.lua).
        assert_eq!(
            r.query::<i64>(&["HEXISTS", "cvgate:{quota}:a:acct-heavy|", "day"]),
            0,
            "the day is gone from Redis"
        );
    }
    assert_eq!(search(&p, &heavy, 200).await.0, 200, "served again after the reset");
    let (_, v) = admin(&p, "GET", "/v1/quota?account=acct-heavy", None, ADMIN_TOKEN).await;
    assert_eq!(v["buckets"][0]["remaining"], 200, "{v}");

    // The named token's secret never shows; the reset is an audit event naming who and what.
    let (_, v) = admin(&p, "GET", "/v1/config", None, SECURITY_TOKEN).await;
    assert_eq!(v["admin"]["tokens"][0], json!({"name": "security", "token": "<redacted>", "token_env": null}), "{v}");
    assert!(!v.to_string().contains(SECURITY_TOKEN));
    let path = p.dir.path().join("audit.log");
    p.running.shutdown().await;
    let text = std::fs::read_to_string(path).unwrap();
    let resets: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["event"] == "quota-reset")
        .collect();
    assert_eq!(resets.len(), 1, "{text}");
    assert_eq!((resets[0]["by"].as_str(), resets[0]["account"].as_str()), (Some("security"), Some("acct-heavy")));
    assert_eq!(resets[0]["buckets"][0]["key"], "a:acct-heavy|day", "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_top_and_reset_with_the_memory_store() {
    explain_top_and_reset(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_top_and_reset_with_redis() {
    let redis = RedisServer::start();
    explain_top_and_reset(Some(&redis)).await;
}
