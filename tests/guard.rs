//! Issue 19, the population guard through the real proxy on a manual clock: CVs delivered to a
//! cohort cross a threshold → alert, then (still over) mask, then pause, each a metric, a log
//! line and an audit line; the vetted tier is exempt throughout; the operator releases it; a
//! forced step cools down by itself.

mod common;
#[path = "common/redis.rs"]
mod redis_server;

use std::time::Duration;

use common::*;
use serde_json::Value;

const ADMIN_TOKEN: &str = "admin-token-for-guard-tests-012345";

fn config(upstream: &str, dir: &std::path::Path) -> String {
    config_with(upstream, dir, "")
}

fn config_with(upstream: &str, dir: &std::path::Path, store: &str) -> String {
    let extra = format!(
        r#"{identity}{store}admin: {{ token: "{ADMIN_TOKEN}" }}
audit: {{ sink: file, path: audit.log }}
blocks: {{ rules: [] }}
quota:
  overrides: {{ orgs: {{ "87654321": {{ tier: staffing_agency }} }} }}
guard:
  rules:
    - name: harvest
      cohort: all
      window: 1h
      above: 100
      steps: [alert, mask, pause]
      escalate_after: 5m
      cool_down: 10m
  exempt: {{ tiers: [staffing_agency] }}
"#,
        identity = identity_yaml(&[]),
    );
    let yaml = test_yaml(upstream, dir, &extra);
    assert_eq!(yaml.matches("  admin: null").count(), 1);
    yaml.replace("  admin: null", "  admin: \"127.0.0.1:0\"")
}

/// One search of 20 CVs: status, `cvgate-masked`, body.
async fn search(p: &Proxy, account: &str, org: &str) -> (u16, Option<String>, Value) {
    let auth = bearer(&token(p, account, org));
    let mut s = plain_connect(p.plain).await;
    let r = s.send(get("/api/v1/cvs?size=20", false, &[("authorization", &auth)])).await;
    let status = r.status().as_u16();
    let masked = r.headers().get("cvgate-masked").map(|v| v.to_str().unwrap().to_string());
    let (_, v) = body_json(r).await;
    (status, masked, v)
}

/// Poll `cvgate_guard_state` until it is `want` (housekeeping ticks once a second) or 5 s pass.
async fn state_becomes(p: &Proxy, want: f64) -> f64 {
    let mut last = -1.0;
    for _ in 0..50 {
        last = metric(p, "cvgate_guard_state", &[("guard", "harvest"), ("cohort", "all")]).await;
        if last == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spread_harvest_trips_alert_then_mask_then_pause_and_the_vetted_tier_is_exempt() {
    let mock = format!("http://{}", start_mock().await);
    let (dir, cert) = cert_dir();
    let yaml = config(&mock, dir.path());
    let p = start_proxy_in(dir, cert, &yaml).await;
    let admin = p.running.admin_addr.unwrap();
    assert_eq!(state_becomes(&p, 0.0).await, 0.0, "primed at zero");

    // Six organisations, 20 CVs each: 120 > 100 in the hour.
    for i in 0..6 {
        let (st, masked, _) = search(&p, &format!("acct-{i}"), &format!("1000000{i}")).await;
        assert_eq!((st, masked), (200, None));
    }
    assert_eq!(state_becomes(&p, 1.0).await, 1.0, "alert");
    let (_, masked, _) = search(&p, "acct-x", "20000000").await;
    assert_eq!(masked, None, "alert only: nothing masked yet");

    // Still over five minutes later: contact data is masked for the cohort, not for the agency.
    p.clock.advance(Duration::from_secs(6 * 60));
    assert_eq!(state_becomes(&p, 2.0).await, 2.0, "mask");
    let (st, masked, v) = search(&p, "acct-y", "30000000").await;
    assert_eq!((st, masked.as_deref()), (200, Some("contact;reason=guard")));
    assert!(!v.to_string().contains("\"naam\""), "masked");
    let (_, masked, _) = search(&p, "agency-1", "87654321").await;
    assert_eq!(masked, None, "the vetted tier is exempt");

    // Still over: paused for the cohort (503 paused, naming the guard), the agency still served.
    p.clock.advance(Duration::from_secs(6 * 60));
    assert_eq!(state_becomes(&p, 3.0).await, 3.0, "pause");
    let (st, _, v) = search(&p, "acct-z", "40000000").await;
    assert_eq!((st, v["type"].as_str()), (503, Some("urn:cvgate:problem:paused")), "{v}");
    assert_eq!(v["guard"], "harvest");
    assert_eq!(search(&p, "agency-1", "87654321").await.0, 200);
    for step in ["alert", "mask", "pause"] {
        assert_eq!(metric(&p, "cvgate_guard_trips_total", &[("guard", "harvest"), ("step", step)]).await, 1.0);
    }

    // The operator releases it: served and unmasked again at once.
    let (st, v) = admin_call(admin, ADMIN_TOKEN, "POST", "/v1/guard/harvest/release", None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["rules"][0]["step"], "normal", "{v}");
    let (st, masked, _) = search(&p, "acct-z", "40000000").await;
    assert_eq!((st, masked), (200, None));

    // A forced step with no traffic cools down by itself after the cool-down.
    p.clock.advance(Duration::from_secs(2 * 3600));
    let (st, _) = admin_call(admin, ADMIN_TOKEN, "POST", "/v1/guard/harvest/trip?step=mask", None).await;
    assert_eq!(st, 200);
    assert_eq!(state_becomes(&p, 2.0).await, 2.0);
    p.clock.advance(Duration::from_secs(11 * 60));
    assert_eq!(state_becomes(&p, 0.0).await, 0.0, "cooled down");
    let (st, _) = admin_call(admin, ADMIN_TOKEN, "POST", "/v1/guard/nope/release", None).await;
    assert_eq!(st, 404);

    // Every step is an audit line.
    p.running.shutdown().await;
    let text = std::fs::read_to_string(p.dir.path().join("audit.log")).unwrap();
    let steps: Vec<(String, String)> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["event"] == "guard")
        .map(|v| (v["to"].as_str().unwrap().to_string(), v["reason"].as_str().unwrap().to_string()))
        .collect();
    let want = [
        ("alert", "over"),
        ("mask", "escalated"),
        ("pause", "escalated"),
        ("normal", "manual"),
        ("mask", "manual"),
        ("normal", "cooled"),
    ];
    let want: Vec<(String, String)> = want.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    assert_eq!(steps, want, "{text}");
}

/// Two replicas on one redis-server: each delivers 60 CVs (under the rule's 100), and each
/// trips, because each decides on the fleet's sum; the operator's trip and release on one
/// replica apply on every replica, one started later included, once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_trip_on_the_fleets_sum_through_redis() {
    let redis = redis_server::RedisServer::start();
    let mock = format!("http://{}", start_mock().await);
    let store =
        format!("store:\n  kind: redis\n  redis: {{ url: \"{}\", key_prefix: \"cvgate:{{quota}}:\" }}\n", redis.url());
    let replica = || async {
        let (dir, cert) = cert_dir();
        let yaml = config_with(&mock, dir.path(), &store);
        start_proxy_in(dir, cert, &yaml).await
    };
    let (a, b) = (replica().await, replica().await);
    for i in 0..3 {
        assert_eq!(search(&a, &format!("a-{i}"), &format!("1100000{i}")).await.0, 200);
        assert_eq!(search(&b, &format!("b-{i}"), &format!("2200000{i}")).await.0, 200);
    }
    assert_eq!(state_becomes(&a, 1.0).await, 1.0, "replica A sees 120 across the fleet");
    assert_eq!(state_becomes(&b, 1.0).await, 1.0, "replica B sees 120 across the fleet");

    // The operator's hand reaches every replica: a pause forced on A pauses B's cohort too ...
    let (admin_a, admin_b) = (a.running.admin_addr.unwrap(), b.running.admin_addr.unwrap());
    let (st, v) = admin_call(admin_a, ADMIN_TOKEN, "POST", "/v1/guard/harvest/trip?step=pause", None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(state_becomes(&b, 3.0).await, 3.0, "the trip on A did not reach B");
    let (st, _, v) = search(&b, "b-new", "22000009").await;
    assert_eq!((st, v["guard"].as_str()), (503, Some("harvest")), "{v}");
    // ... a replica started meanwhile (a rolling restart) takes it over too ...
    let c = replica().await;
    assert_eq!(state_becomes(&c, 3.0).await, 3.0, "a replica started after the trip did not replay it");
    // ... and a release on B releases A and C.
    let (st, v) = admin_call(admin_b, ADMIN_TOKEN, "POST", "/v1/guard/harvest/release", None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(state_becomes(&a, 0.0).await, 0.0, "the release on B did not reach A");
    assert_eq!(state_becomes(&c, 0.0).await, 0.0, "the release on B did not reach C");
    assert_eq!(search(&a, "a-new", "11000009").await.0, 200);
    // Applied once each: A's audit log has its own trip and B's release, nothing twice.
    a.running.shutdown().await;
    b.running.shutdown().await;
    c.running.shutdown().await;
    let text = std::fs::read_to_string(a.dir.path().join("audit.log")).unwrap();
    let steps: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["event"] == "guard")
        .map(|v| v["to"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(steps, ["alert", "pause", "normal"], "{text}");
}
