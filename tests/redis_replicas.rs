//! Many replicas, one Redis: two cvgate servers started in-process on the same private
//! redis-server share one account's budget; Redis killed under load: each replica's failure
//! policy holds from the first failing request, nobody waits long, and when Redis comes back
//! on the same port the shared limiting resumes by itself.

mod common;
#[path = "common/redis.rs"]
mod redis_server;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use redis_server::RedisServer;
use tokio::time::Instant;

/// `store:` for a replica of `replicas` on `url`; `policy` for every scope.
fn store_yaml(url: &str, policy: &str, replicas: u64) -> String {
    format!(
        r#"store:
  kind: redis
  redis:
    url: "{url}"
    timeout: 250ms
    key_prefix: "cvgate:{{quota}}:"
    replicas: {replicas}
    failure_policy: {{ default: {policy} }}
    breaker: {{ failures: 3, probe_every: 300ms }}
"#
    )
}

/// One account's day budget; everything else generous (and the same on every replica).
fn quota_yaml(account_day: u64) -> String {
    format!(
        r#"quota:
  scopes:
    account: {{ horizons: {{ day: {{ budget: {account_day}, window: 24h }} }} }}
    org: {{ horizons: {{ day: {{ budget: 10000000, window: 24h }} }} }}
    ip: {{ horizons: {{ day: {{ budget: 10000000, window: 24h }} }} }}
"#
    )
}

async fn replica(upstream: &str, redis_url: &str, policy: &str, account_day: u64) -> Proxy {
    let (dir, cert) = cert_dir();
    let extra = format!("{}{}{}", identity_yaml(&[]), quota_yaml(account_day), store_yaml(redis_url, policy, 2));
    let yaml = test_yaml(upstream, dir.path(), &extra);
    start_proxy_in(dir, cert, &yaml).await
}

/// One CV (a search for one result: reserved 1, counted 1); returns the status and whether it
/// was `quota-unavailable`.
async fn get_cv(s: &mut Sender, token: &str, id: u64) -> (u16, bool) {
    let auth = bearer(token);
    let r =
        s.send(get(&format!("/api/v1/cvs?size=1&page={}", id % 1_000 + 1), false, &[("authorization", &auth)])).await;
    let status = r.status().as_u16();
    let (_, body) = body_bytes(r).await;
    (status, String::from_utf8_lossy(&body).contains("quota-unavailable"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_budget() {
    const BUDGET: u64 = 300;
    let redis = RedisServer::start();
    let up = format!("http://{}", start_mock().await);
    let a = replica(&up, &redis.url(), "fail_closed", BUDGET).await;
    let b = replica(&up, &redis.url(), "fail_closed", BUDGET).await;
    let token = token(&a, "acct-shared", "12345678"); // same dev key on both replicas
    let started = Instant::now();
    let calls_before = redis.calls("fcall") + redis.calls("evalsha");

    let mut clients = Vec::new();
    for i in 0..64u64 {
        let addr = if i % 2 == 0 { a.plain } else { b.plain };
        let token = token.clone();
        clients.push(tokio::spawn(async move {
            let mut s = plain_connect(addr).await;
            let (mut ok, mut unavailable) = (0u64, 0u64);
            for n in 0..30 {
                match get_cv(&mut s, &token, i * 100 + n).await {
                    (200, _) => ok += 1,
                    // 403: the blocks module's automatic block after repeated 429s.
                    (429 | 403, _) => break,
                    (503, true) => unavailable += 1,
                    (st, _) => panic!("unexpected status {st}"),
                }
            }
            (i % 2, ok, unavailable)
        }));
    }
    let (mut per_replica, mut unavailable) = ([0u64; 2], 0);
    for c in clients {
        let (r, ok, u) = c.await.unwrap();
        per_replica[r as usize] += ok;
        unavailable += u;
    }
    let delivered = per_replica[0] + per_replica[1];
    // Refill during the test: BUDGET per day, continuously.
    let refill = (BUDGET as f64 * started.elapsed().as_secs_f64() / 86_400.0).ceil() as u64;
    assert!(delivered <= BUDGET + refill, "{delivered} CVs delivered by two replicas, budget {BUDGET} (+{refill})");
    assert!(per_replica[0] > 0 && per_replica[1] > 0, "both replicas served: {per_replica:?}");
    // With Redis healthy nothing fails closed, so the whole budget is used.
    assert_eq!(unavailable, 0);
    assert!(delivered + refill >= BUDGET, "{delivered} of {BUDGET}");
    // One script call per request (one CV reserved, one delivered: nothing to settle).
    let requests = delivered + 64; // every client ends on one 429 or 403
                                   // FCALL where Redis has functions (7+), EVALSHA where it refuses them: both are one call.
    let calls = redis.calls("fcall") + redis.calls("evalsha") - calls_before;
    // Every delivered CV took one call (a 403 from the automatic block never reaches the store).
    assert!(calls >= delivered, "{calls} store calls for {delivered} CVs delivered: the count misses the call");
    // Slack: once, with the machine at load 9, 386 calls were seen for 364 requests (cause not
    // yet found; suspected calls re-sent after a client-side timeout). The bench measures the
    // exact figure (docs/redis.md); this guards against a second round trip per request.
    assert!(calls <= requests + requests / 10 + 4, "{calls} FCALL/EVALSHA for {requests} requests");
    a.running.shutdown().await;
    b.running.shutdown().await;
}

/// `cvgate_quota_store_fallback_total{decision}`, summed over reasons.
async fn fallbacks(p: &Proxy, decision: &str) -> f64 {
    let text = metrics_text(p.ops).await;
    ["error", "timeout", "breaker_open"]
        .iter()
        .map(|r| metric_value(&text, "cvgate_quota_store_fallback_total", &[("decision", decision), ("reason", r)]))
        .sum()
}

#[derive(Debug)]
struct Sample {
    replica: usize,
    start: Instant,
    took: Duration,
    status: u16,
    unavailable: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_under_load_then_back() {
    let mut redis = RedisServer::start();
    let up = format!("http://{}", start_mock().await);
    // Replica 0 fails closed, replica 1 fails open to its local share (budget ÷ 2).
    let closed = replica(&up, &redis.url(), "fail_closed", 1_000_000).await;
    let open = replica(&up, &redis.url(), "fail_open_local", 1_000_000).await;
    let addrs = [closed.plain, open.plain];
    let stop = Arc::new(AtomicBool::new(false));

    let mut clients = Vec::new();
    for i in 0..16usize {
        let replica = i % 2;
        let token = token(&closed, &format!("acct-{i}"), "12345678");
        let (addr, stop) = (addrs[replica], stop.clone());
        clients.push(tokio::spawn(async move {
            let mut s = plain_connect(addr).await;
            let mut out = Vec::new();
            for n in 0..2_000u64 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let start = Instant::now();
                let (status, unavailable) = get_cv(&mut s, &token, n).await;
                out.push(Sample { replica, start, took: start.elapsed(), status, unavailable });
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            out
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    redis.kill();
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    stop.store(true, Ordering::Relaxed);
    let mut samples = Vec::new();
    for c in clients {
        samples.extend(c.await.unwrap());
    }

    let before = samples.iter().filter(|s| s.start + s.took < killed).count();
    assert!(before > 0, "load ran before the kill");
    for s in &samples {
        assert!(s.took <= Duration::from_secs(2), "a request waited {:?}: {s:?}", s.took);
    }
    let after: Vec<&Sample> = samples.iter().filter(|s| s.start >= killed).collect();
    let closed_after: Vec<&&Sample> = after.iter().filter(|s| s.replica == 0).collect();
    let open_after: Vec<&&Sample> = after.iter().filter(|s| s.replica == 1).collect();
    assert!(!closed_after.is_empty() && !open_after.is_empty());
    // Fail closed: from the first request after the kill, every answer is 503 quota-unavailable.
    for s in &closed_after {
        assert!(s.status == 503 && s.unavailable, "fail_closed replica answered {s:?} after the kill");
    }
    // Fail open to the local share: served (the share is far from spent), never a 503.
    for s in &open_after {
        assert_eq!(s.status, 200, "fail_open_local replica answered {s:?} after the kill");
    }
    // The breaker opened on both and the fallbacks were counted.
    assert_eq!(metric(&closed, "cvgate_quota_store_breaker_open", &[]).await, 1.0);
    assert_eq!(metric(&open, "cvgate_quota_store_breaker_open", &[]).await, 1.0);
    assert!(fallbacks(&closed, "closed").await >= 1.0);
    assert!(fallbacks(&open, "local").await >= 1.0);
    assert_eq!(fallbacks(&open, "closed").await, 0.0);

    // Redis back on the same port (empty): both replicas return to it without a restart.
    redis.restart();
    let token = token(&closed, "acct-after", "12345678");
    let mut s = plain_connect(closed.plain).await;
    let mut back = false;
    for n in 0..100 {
        if get_cv(&mut s, &token, n).await.0 == 200 {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "the fail_closed replica serves again within 10 s of Redis coming back");
    let mut s = plain_connect(open.plain).await;
    for n in 0..100 {
        let _ = get_cv(&mut s, &token, n).await;
        if metric(&open, "cvgate_quota_store_breaker_open", &[]).await == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(metric(&open, "cvgate_quota_store_breaker_open", &[]).await, 0.0);
    // Shared again: the account's bucket lives in the restarted Redis, charged by both replicas.
    let keys: Vec<String> = redis.query(&["KEYS", "cvgate:{quota}:a:acct-after*"]);
    assert_eq!(keys.len(), 1, "{keys:?}");
    let ttl: i64 = redis.query(&["PTTL", &keys[0]]);
    assert!(ttl > 0 && ttl <= 86_400_000 + 1_000, "idle keys expire: PTTL {ttl}");
    closed.running.shutdown().await;
    open.running.shutdown().await;
}

/// Status of one search by `token` on replica `p`, polled until it is `want` or 5 s pass.
async fn status_becomes(p: &Proxy, token: &str, want: u16) -> u16 {
    let mut last = 0;
    for _ in 0..50 {
        let mut s = plain_connect(p.plain).await;
        last = get_cv(&mut s, token, 1).await.0;
        if last == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_and_pauses_made_on_one_replica_apply_on_all_and_survive_a_restart_of_all() {
    let redis = RedisServer::start();
    let mock = format!("http://{}", start_mock().await);
    let a = replica(&mock, &redis.url(), "fail_closed", 1000).await;
    let b = replica(&mock, &redis.url(), "fail_closed", 1000).await;
    let tok = token(&a, "acct-shared", "12345678");
    assert_eq!(status_becomes(&b, &tok, 200).await, 200);

    // A block made on replica A reaches replica B (housekeeping syncs once a second).
    let now = cvgate::clock::Clock::now(&*a.clock);
    a.running
        .shared
        .block(cvgate::policy::blocks::Block {
            scope: cvgate::policy::blocks::BlockScope::Account,
            key: "acct-shared".into(),
            reason: "test".into(),
            source: "manual".into(),
            created: now,
            until: None,
        })
        .unwrap();
    assert_eq!(status_becomes(&b, &tok, 403).await, 403, "block did not reach replica B");

    // A pause made on replica B reaches replica A.
    b.running.shared.pause("cv", true);
    let other = token(&a, "acct-other", "12345678");
    assert_eq!(status_becomes(&a, &other, 503).await, 503, "pause did not reach replica A");

    // Restart both replicas (fresh processes' state, fresh block files): Redis still has both.
    a.running.shutdown().await;
    b.running.shutdown().await;
    let c = replica(&mock, &redis.url(), "fail_closed", 1000).await;
    assert_eq!(status_becomes(&c, &other, 503).await, 503, "pause lost across a restart of every replica");
    c.running.shared.pause("cv", false);
    assert_eq!(status_becomes(&c, &tok, 403).await, 403, "block lost across a restart of every replica");
    assert!(c.running.shared.unblock(cvgate::policy::blocks::BlockScope::Account, "acct-shared").unwrap());
    assert_eq!(status_becomes(&c, &tok, 200).await, 200);
    c.running.shutdown().await;
}

/// Issue 18: a mask switched on one replica masks the group's CVs on every replica within a
/// second or two, survives a restart of all of them, and lifts everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mask_made_on_one_replica_applies_on_all_and_survives_a_restart_of_all() {
    let redis = RedisServer::start();
    let mock = format!("http://{}", start_mock().await);
    let a = replica(&mock, &redis.url(), "fail_closed", 100_000).await;
    let b = replica(&mock, &redis.url(), "fail_closed", 100_000).await;
    let tok = token(&a, "acct-m", "12345678");
    // The `cvgate-masked` header of one search on `p`, polled until it is `want` or 5 s pass.
    async fn masked_becomes(p: &Proxy, tok: &str, want: Option<&str>) -> Option<String> {
        let mut last = None;
        for _ in 0..50 {
            let mut s = plain_connect(p.plain).await;
            let r = s.send(get("/api/v1/cvs?size=5", false, &[("authorization", &bearer(tok))])).await;
            last = r.headers().get("cvgate-masked").map(|v| v.to_str().unwrap().to_string());
            body_bytes(r).await;
            if last.as_deref() == want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        last
    }
    assert_eq!(masked_becomes(&b, &tok, None).await, None);
    a.running.shared.mask("cv", true);
    let admin = Some("contact;reason=admin");
    assert_eq!(masked_becomes(&b, &tok, admin).await.as_deref(), admin, "the mask did not reach replica B");
    a.running.shutdown().await;
    b.running.shutdown().await;
    let c = replica(&mock, &redis.url(), "fail_closed", 100_000).await;
    assert_eq!(masked_becomes(&c, &tok, admin).await.as_deref(), admin, "mask lost across a restart of every replica");
    c.running.shared.mask("cv", false);
    assert_eq!(masked_becomes(&c, &tok, None).await, None);
    c.running.shutdown().await;
}

/// `/readyz` as text and status.
async fn readyz(p: &Proxy) -> (u16, String) {
    let mut s = plain_connect(p.ops).await;
    let r = s.send(get("/readyz", false, &[])).await;
    let status = r.status().as_u16();
    let (_, body) = body_bytes(r).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Readiness means "this replica decides CV requests as configured": a dead upstream (shared by
/// every replica) leaves it ready but degraded; Redis away with a `fail_closed` scope (every CV
/// request would be 503) makes it not ready; with `fail_open_local` it stays ready, degraded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_under_upstream_down_and_redis_down() {
    let mut redis = RedisServer::start();
    let up = format!("http://{}", start_mock().await);
    let closed = replica(&up, &redis.url(), "fail_closed", 1_000_000).await;
    let open = replica(&up, &redis.url(), "fail_open_local", 1_000_000).await;
    let (status, body) = readyz(&closed).await;
    assert_eq!((status, body.lines().last()), (200, Some("ready")), "{body}");

    // The upstream down: a port nothing listens on. Ready (degraded); CV requests get 502.
    let dead = format!("http://127.0.0.1:{}", redis_server::free_port());
    let no_upstream = replica(&dead, &redis.url(), "fail_closed", 1_000_000).await;
    let (status, body) = readyz(&no_upstream).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("[!] upstream unreachable") && body.ends_with("ready (degraded)\n"), "{body}");
    let t = token(&no_upstream, "acct-r", "12345678");
    let mut s = plain_connect(no_upstream.plain).await;
    assert_eq!(get_cv(&mut s, &t, 1).await.0, 502);

    // Redis down: the fail_closed replica is not ready (and does refuse CV requests), the
    // fail_open_local one is ready on its local share.
    redis.kill();
    let (status, body) = readyz(&closed).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("[-] quota store down") && body.ends_with("not ready\n"), "{body}");
    let mut s = plain_connect(closed.plain).await;
    assert_eq!(get_cv(&mut s, &token(&closed, "acct-r", "12345678"), 2).await, (503, true));
    let (status, body) = readyz(&open).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("[!] quota store degraded") && body.ends_with("ready (degraded)\n"), "{body}");

    // Redis back: ready again without a restart.
    redis.restart();
    let (status, body) = readyz(&closed).await;
    assert_eq!((status, body.lines().last()), (200, Some("ready")), "{body}");
    for p in [closed, open, no_upstream] {
        p.running.shutdown().await;
    }
}
