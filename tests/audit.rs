//! Issue 6, the audit log, through the real proxy: one JSON line per CV request (accepted,
//! rejected by quota, cut short, refused at night) and per rejection on any route, with every
//! field the operators read; never the bearer token.

mod common;

use common::*;
use serde_json::Value;

/// Audit to `audit.log` beside the config; a small account budget so tests can hit it.
const AUDIT: &str = r#"
audit:
  sink: file
  path: audit.log
  rotate: { max_bytes: 10485760, max_files: 2, daily: true }
quota:
  scopes:
    account:
      horizons:
        hour: { budget: 10, window: 1h }
"#;

/// Stop the proxy (which flushes the audit log) and read its lines.
async fn lines(p: Proxy) -> (Vec<Value>, String) {
    p.running.shutdown().await;
    let text = std::fs::read_to_string(p.dir.path().join("audit.log")).unwrap();
    let lines =
        text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    (lines, text)
}

fn by_id<'a>(lines: &'a [Value], id: &str) -> &'a Value {
    lines.iter().find(|l| l["request_id"] == id).unwrap_or_else(|| panic!("no audit line for {id}: {lines:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_rejected_and_truncated_requests_each_leave_one_line() {
    let mock = start_mock().await;
    let p = start_proxy(&format!("http://{mock}"), AUDIT).await;
    let t = token(&p, "acct-1", "12345678");
    let auth = bearer(&t);
    let mut s = plain_connect(p.plain).await;

    // accepted: 4 CVs of the 10 this hour
    let r = s
        .send(get(
            "/api/v1/cvs?size=4&access_token=leaked-secret",
            false,
            &[("authorization", &auth), ("x-request-id", "ok-1"), ("user-agent", "recruit-tool/2.1")],
        ))
        .await;
    assert_eq!(r.status(), 200);
    let _ = body_bytes(r).await;
    // cut short: an export of 20 gets what is left (6) and ends at a record boundary
    let r =
        s.send(get("/api/v1/cvs/export?limit=20", false, &[("authorization", &auth), ("x-request-id", "cut-1")])).await;
    assert_eq!(r.status(), 200);
    let (_, body) = body_bytes(r).await;
    let body = String::from_utf8_lossy(&body);
    assert_eq!(body.lines().filter(|l| l.starts_with("{\"id\":\"cv-")).count(), 6, "{body}");
    // rejected: the hour's budget is spent
    let r = s.send(get("/api/v1/cvs?size=4", false, &[("authorization", &auth), ("x-request-id", "429-1")])).await;
    assert_eq!(r.status(), 429);
    let _ = body_bytes(r).await;
    // not a CV route and allowed: no line; a rejection on any route: a line
    let r = s.send(get("/api/v1/vacancies/1", false, &[("x-request-id", "vac-1")])).await;
    let _ = body_bytes(r).await;
    let r = s.send(get("/nowhere", false, &[("authorization", &auth), ("x-request-id", "404-1")])).await;
    assert_eq!(r.status(), 404);
    let _ = body_bytes(r).await;

    let (lines, text) = lines(p).await;
    assert_eq!(lines.len(), 4, "{text}");
    assert!(!text.contains(&t), "the bearer token must never reach the audit log");
    assert!(!text.contains(t.rsplit('.').next().unwrap()), "nor its signature");
    assert!(!text.contains("\"cv-"), "nor CV content");

    let ok = by_id(&lines, "ok-1");
    assert_eq!(ok["decision"], "allowed");
    assert_eq!(ok["account"], "acct-1");
    assert_eq!(ok["org"], "12345678");
    assert_eq!(ok["client_ip"], "127.0.0.1");
    assert_eq!(ok["country"], "ZZ");
    assert_eq!(ok["route"], "cv_search");
    assert_eq!(ok["group"], "cv");
    assert_eq!(ok["tier"], Value::Null);
    assert_eq!(ok["reserved"], 4);
    assert_eq!(ok["delivered"], 4);
    assert_eq!(ok["status"], 200);
    assert!(ok["bytes"].as_u64().unwrap() > 0);
    assert!(ok["duration_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(ok["truncated"], false);
    assert_eq!(ok["scope"], Value::Null);
    assert_eq!(ok["would_reject"], serde_json::json!([]));
    // The harness clock stands at 2026-11-24T09:00Z: 10:00 in Amsterdam (winter time).
    assert_eq!(ok["ts"], "2026-11-24T09:00:00.000000Z");
    // Schema 2: the request as asked, a secret in its query redacted.
    assert_eq!(ok["schema"], 2);
    assert_eq!((ok["method"].as_str(), ok["asked"].as_u64()), (Some("GET"), Some(4)));
    assert_eq!(ok["path"], "/api/v1/cvs?size=4&access_token=REDACTED");
    assert_eq!(ok["ua"], "recruit-tool/2.1");
    assert!(!text.contains("leaked-secret"));
    assert_eq!(ok["local"], "2026-11-24T10:00:00.000+01:00");

    let cut = by_id(&lines, "cut-1");
    assert_eq!(cut["route"], "cv_export");
    assert_eq!(cut["decision"], "allowed");
    assert_eq!((cut["reserved"].as_u64(), cut["delivered"].as_u64()), (Some(6), Some(6)));
    assert_eq!(cut["asked"], 20, "asked 20, granted 6");
    assert_eq!(cut["truncated"], true);

    let rej = by_id(&lines, "429-1");
    assert_eq!(rej["decision"], "quota-exceeded");
    assert_eq!((rej["scope"].as_str(), rej["horizon"].as_str()), (Some("account"), Some("hour")));
    assert_eq!(rej["status"], 429);
    assert_eq!(rej["delivered"], 0);
    assert_eq!(rej["account"], "acct-1");

    let nr = by_id(&lines, "404-1");
    assert_eq!(nr["decision"], "no-route");
    assert_eq!(nr["route"], Value::Null);
    assert_eq!(nr["status"], 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_at_night_is_refused_and_audited_as_closed() {
    let mock = start_mock().await;
    let p = start_proxy(&format!("http://{mock}"), AUDIT).await;
    // 23:30 in Amsterdam (22:30 UTC in winter): inside the default night window.
    p.clock.set("2026-11-24T22:30:00Z".parse().unwrap());
    let t = token(&p, "acct-2", "87654321");
    let mut s = plain_connect(p.plain).await;
    let r =
        s.send(get("/api/v1/cvs?size=4", false, &[("authorization", &bearer(&t)), ("x-request-id", "night")])).await;
    assert_eq!(r.status(), 503);
    let _ = body_bytes(r).await;

    let (lines, text) = lines(p).await;
    assert_eq!(lines.len(), 1, "{text}");
    let l = &lines[0];
    assert_eq!(l["decision"], "closed");
    assert_eq!(l["status"], 503);
    assert_eq!(l["account"], "acct-2");
    assert_eq!(l["route"], "cv_search");
    assert_eq!((l["reserved"].as_u64(), l["delivered"].as_u64()), (Some(0), Some(0)));
    assert_eq!(l["local"], "2026-11-24T23:30:00.000+01:00");
    assert_eq!(l["window"], "night", "the closure window that answered: {l}");
    assert!(!text.contains(&t));
}
