//! Issue 19, newcomer probation through the real proxy: a new account is charged in the
//! probation tier and masked as `masking.tiers` says; an employer seeded by `cvgate import-seen`
//! from an old audit log is not; a newcomer graduates after the period; and with two replicas
//! on one redis-server the earliest time any replica saw a subject wins.

mod common;
#[path = "common/redis.rs"]
mod redis_server;

use std::time::Duration;

use common::*;
use redis_server::RedisServer;

const KVK: &str = "12345678";

/// Probation for 7 days with its own small budget, masked; blocks (and the first-seen list
/// beside them) in `dir`.
fn cfg(dir: &std::path::Path, extra: &str) -> String {
    format!(
        r#"probation: {{ days: 7, tier: probation }}
quota:
  tiers:
    probation:
      account: {{ day: {{ budget: 50, window: 24h }} }}
masking: {{ tiers: [probation] }}
blocks:
  file: "{}"
  rules: []
{extra}"#,
        dir.join("state/blocks.json").display()
    )
}

/// One search of `size` CVs by `account`: status, `RateLimit`, `cvgate-masked`.
async fn search(p: &Proxy, account: &str, org: &str, size: u32) -> (u16, String, Option<String>) {
    let auth = bearer(&token(p, account, org));
    let mut s = plain_connect(p.plain).await;
    let r = s.send(get(&format!("/api/v1/cvs?size={size}"), false, &[("authorization", &auth)])).await;
    let (parts, _) = body_bytes(r).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let h = |n: &str| parts.headers.get(n).map(|v| v.to_str().unwrap().to_string());
    (parts.status.as_u16(), h("ratelimit").unwrap_or_default(), h("cvgate-masked"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newcomers_get_the_probation_tier_imported_employers_do_not_and_newcomers_graduate() {
    let mock = format!("http://{}", start_mock().await);
    let (dir, cert) = cert_dir();
    let yaml = test_yaml(&mock, dir.path(), &format!("{}{}", identity_yaml(&[]), cfg(dir.path(), "")));
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, &yaml).unwrap();
    // The operator's audit log from before cvgate knows `old-1` of organisation 22222222.
    let log = dir.path().join("old-audit.log");
    std::fs::write(&log, "{\"ts\":\"2026-10-01T09:00:00.000Z\",\"account\":\"old-1\",\"org\":\"22222222\"}\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cvgate"))
        .args(["import-seen", "--config"])
        .arg(&config)
        .arg(&log)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 subjects"), "{}", String::from_utf8_lossy(&out.stdout));

    let p = start_proxy_in(dir, cert, &yaml).await;
    // A new account of a new organisation: the probation tier's 50 a day, masked.
    let (st, rl, masked) = search(&p, "new-1", KVK, 20).await;
    assert_eq!(st, 200);
    assert!(rl.starts_with("\"account-day\";r=30;"), "{rl}");
    assert_eq!(masked.as_deref(), Some("contact;reason=tier"));
    let (st, _, _) = search(&p, "new-1", KVK, 40).await;
    assert_eq!(st, 429, "past the probation budget");
    // The imported employer: the default tier (2,000 a day), unmasked.
    let (st, rl, masked) = search(&p, "old-1", "22222222", 20).await;
    assert_eq!(st, 200);
    assert!(!rl.contains("r=30;") && masked.is_none(), "{rl} {masked:?}");
    let probation = metric(&p, "cvgate_cvs_delivered_total", &[("route", "cv_search"), ("tier", "probation")]).await;
    assert_eq!(probation, 20.0);

    // Eight days later the newcomer is established.
    p.clock.advance(Duration::from_secs(8 * 86_400));
    let (st, rl, masked) = search(&p, "new-1", KVK, 20).await;
    assert_eq!(st, 200);
    assert!(masked.is_none() && !rl.contains(";q=50"), "{rl} {masked:?}");
    // The first-seen list survives a restart (written by housekeeping and at shutdown).
    let seen_file = p.dir.path().join("state/seen.jsonl");
    p.running.shutdown().await;
    let text = std::fs::read_to_string(&seen_file).unwrap();
    assert!(text.contains("\"new-1\"") && text.contains("\"old-1\""), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_earliest_replica_wins_through_redis() {
    let redis = RedisServer::start();
    let mock = format!("http://{}", start_mock().await);
    let store =
        format!("store:\n  kind: redis\n  redis: {{ url: \"{}\", key_prefix: \"cvgate:{{quota}}:\" }}\n", redis.url());
    let replica = || async {
        let (dir, cert) = cert_dir();
        let extra = format!("{}{}", identity_yaml(&[]), cfg(dir.path(), &store));
        let yaml = test_yaml(&mock, dir.path(), &extra);
        start_proxy_in(dir, cert, &yaml).await
    };
    let a = replica().await;
    let b = replica().await;
    // Replica A sees the newcomer today; replica B's clock is 8 days on.
    assert_eq!(search(&a, "spread-1", KVK, 10).await.2.as_deref(), Some("contact;reason=tier"));
    b.clock.advance(Duration::from_secs(8 * 86_400));
    // Whichever replica writes to Redis first, the earlier time stays.
    // Within a few housekeeping ticks B knows A's time: established there, not a newcomer of
    // B's "today".
    let mut last = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        last = search(&b, "spread-1", KVK, 1).await.2;
        if last.is_none() {
            break;
        }
    }
    assert_eq!(last, None, "replica B kept its own (later) first-seen time");
    a.running.shutdown().await;
    b.running.shutdown().await;
}
