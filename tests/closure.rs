//! Issue 5, closure windows and pauses, through the real proxy on the harness's manual clock:
//! the night 23:00–07:00 Amsterdam with exact `Retry-After` (also on both DST nights),
//! exemptions, operator pauses, exports cut at a record boundary when a `cut` window starts, and
//! the `cvgate_closed` gauge.

mod common;

use std::time::Duration;

use common::*;
use cvgate::quota::Subject;
use http_body_util::BodyExt;

const KVK: &str = "12345678";
const EXEMPT_ORG: &str = "87654321";
const SEARCH: &str = "/api/v1/cvs?size=5";

/// The night window for the `cv` group, with one exempt account and one exempt organisation.
fn night(in_flight: &str) -> String {
    format!(
        r#"closure:
  windows:
    - name: night
      tz: Europe/Amsterdam
      days: [mon, tue, wed, thu, fri, sat, sun]
      start: "23:00"
      end: "07:00"
      groups: [cv]
      exempt_accounts: ["night-owl"]
      exempt_orgs: ["{EXEMPT_ORG}"]
      in_flight: {in_flight}
"#
    )
}

async fn proxy(extra: &str) -> Proxy {
    let mock = start_mock().await;
    start_proxy(&format!("http://{mock}"), extra).await
}

fn at(s: &str) -> jiff::Timestamp {
    s.parse().unwrap()
}

/// GET `uri` as `account` of `org`, with a token minted at the proxy's current clock.
async fn get_as(
    p: &Proxy,
    s: &mut Sender,
    uri: &str,
    account: &str,
    org: &str,
) -> http::Response<hyper::body::Incoming> {
    let t = token(p, account, org);
    s.send(get(uri, false, &[("authorization", &bearer(&t))])).await
}

/// Assert a 503 `closed` answer with `retry_after` seconds and opening `opens_at`.
async fn expect_closed(r: http::Response<hyper::body::Incoming>, retry_after: u64, opens_at: &str) {
    let (parts, v) = expect_problem(r, 503, "closed").await;
    assert_eq!(header(&parts, "retry-after"), retry_after.to_string());
    assert_eq!(v["opens_at"], opens_at, "{v}");
    assert_eq!(v["window"], "night");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cv_search_at_half_past_eleven_is_closed_until_seven() {
    let p = proxy(&night("finish")).await;
    let mut s = plain_connect(p.plain).await;
    p.clock.set(at("2026-11-24T23:30:00+01:00"));
    // 7.5 hours to 07:00 the next morning.
    let r = get_as(&p, &mut s, SEARCH, "acct-1", KVK).await;
    expect_closed(r, 27_000, "2026-11-25T07:00:00+01:00").await;
    // Refused before any CV was reserved.
    let rt = p.running.shared.runtime();
    let subject = Subject { account: Some("acct-1"), org: Some(KVK), ip: "127.0.0.1".parse().unwrap(), country: "ZZ" };
    for (b, st) in p.running.shared.quota.peek(&rt.config.quota, &subject).await.unwrap() {
        assert_eq!(st.remaining, b.capacity, "{} {} charged while closed", b.scope.as_str(), b.horizon);
    }
    let closed = metric(
        &p,
        "cvgate_requests_total",
        &[("route", "cv_search"), ("group", "cv"), ("status", "5xx"), ("decision", "closed")],
    );
    assert_eq!(closed.await, 1.0);

    // Vacancies stay open; exempt accounts and organisations keep working.
    let r = s.send(get("/api/v1/vacancies", false, &[])).await;
    assert_eq!(r.status(), 200);
    let _ = body_bytes(r).await;
    for (account, org) in [("night-owl", KVK), ("acct-2", EXEMPT_ORG)] {
        let r = get_as(&p, &mut s, SEARCH, account, org).await;
        assert_eq!(r.status(), 200, "{account} of {org}");
        let _ = body_bytes(r).await;
    }

    // One second before seven: Retry-After 1; at seven: open.
    p.clock.set(at("2026-11-25T06:59:59+01:00"));
    expect_closed(get_as(&p, &mut s, SEARCH, "acct-1", KVK).await, 1, "2026-11-25T07:00:00+01:00").await;
    p.clock.set(at("2026-11-25T07:00:00+01:00"));
    let r = get_as(&p, &mut s, SEARCH, "acct-1", KVK).await;
    assert_eq!(r.status(), 200);
    let (_, v) = body_json(r).await;
    assert_eq!(v["results"].as_array().unwrap().len(), 5);
    p.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dst_nights_are_seven_and_nine_hours() {
    // The default closure section (no `closure:` key) is the same night window.
    let p = proxy("").await;
    let mut s = plain_connect(p.plain).await;
    // Saturday 28 March 2026, 23:00 CET: the clocks go forward at 02:00, so 7 hours.
    p.clock.set(at("2026-03-28T23:00:00+01:00"));
    expect_closed(get_as(&p, &mut s, SEARCH, "acct-1", KVK).await, 7 * 3600, "2026-03-29T07:00:00+02:00").await;
    // Saturday 24 October 2026, 23:00 CEST: the clocks go back at 03:00, so 9 hours.
    p.clock.set(at("2026-10-24T23:00:00+02:00"));
    expect_closed(get_as(&p, &mut s, SEARCH, "acct-1", KVK).await, 9 * 3600, "2026-10-25T07:00:00+01:00").await;
    p.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_group_is_503_until_resumed() {
    let p = proxy("paused: [cv]\n").await;
    let mut s = plain_connect(p.plain).await;
    let r = get_as(&p, &mut s, SEARCH, "acct-1", KVK).await;
    assert!(!r.headers().contains_key("retry-after"), "nobody knows when an operator resumes");
    let (_, v) = expect_problem(r, 503, "paused").await;
    assert_eq!(v["group"], "cv");
    assert_eq!(metric(&p, "cvgate_paused", &[("group", "cv")]).await, 1.0);
    // Vacancies are another group.
    let r = s.send(get("/api/v1/vacancies", false, &[])).await;
    assert_eq!(r.status(), 200);
    let _ = body_bytes(r).await;

    p.running.shared.set_paused("cv", false);
    let r = get_as(&p, &mut s, SEARCH, "acct-1", KVK).await;
    assert_eq!(r.status(), 200);
    let _ = body_bytes(r).await;
    assert_eq!(metric(&p, "cvgate_paused", &[("group", "cv")]).await, 0.0);

    p.running.shared.set_paused("cv", true);
    expect_problem(get_as(&p, &mut s, SEARCH, "acct-1", KVK).await, 503, "paused").await;
    p.running.shutdown().await;
}

/// Start a slow export (`records` lines, one per 100 ms) over HTTP/2 as `account`.
async fn slow_export(p: &Proxy, account: &str, records: u64) -> http::Response<hyper::body::Incoming> {
    let (_, mut s) = tls_connect(p.tls, &p.cert_pem, &[b"h2"]).await;
    let t = token(p, account, KVK);
    let uri = format!("/api/v1/cvs/export?limit={records}&chunk=1&delay_ms=100");
    let r = s.send(get(&uri, true, &[("authorization", &bearer(&t))])).await;
    assert_eq!(r.status(), 200);
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_in_flight_is_cut_at_a_record_boundary_when_a_cut_window_starts() {
    let p = proxy(&night("cut")).await;
    // Two seconds before the window; the proxy schedules the cut in real time from here.
    p.clock.set(at("2026-11-24T22:59:58+01:00"));
    let cut = slow_export(&p, "acct-1", 60).await;
    let exempt = slow_export(&p, "night-owl", 60).await;
    let read = |r: http::Response<hyper::body::Incoming>| async move {
        tokio::time::timeout(Duration::from_secs(30), r.into_body().collect()).await.expect("export stuck").unwrap()
    };
    let (cut, exempt) = tokio::join!(read(cut), read(exempt));

    let trailers = cut.trailers().cloned().expect("no trailers on the cut stream");
    let body = cut.to_bytes();
    let (cvs, marker) = export_lines(&body);
    assert!(cvs > 0 && cvs < 60, "cut after {cvs} of 60 records");
    assert_eq!(marker, Some(cvs));
    let last = std::str::from_utf8(&body).unwrap().lines().last().unwrap().to_string();
    assert_eq!(last, format!(r#"{{"_cvgate":{{"truncated":true,"records":{cvs},"reason":"closed"}}}}"#));
    assert_eq!(trailers["cvgate-truncated"], "true");
    assert_eq!(trailers["cvgate-records"], cvs.to_string().as_str());

    // The exempt account's export is not cut.
    assert_eq!(export_lines(&exempt.to_bytes()), (60, None));
    p.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_a_closure_cut_is_counted_as_closed_not_quota() {
    // Bug: `Settle::done` increments cvgate_streams_truncated_total{reason="quota"} for every
    // cut, also one made by a closure window (whose marker line says "closed").
    let p = proxy(&night("cut")).await;
    p.clock.set(at("2026-11-24T22:59:59+01:00"));
    let r = slow_export(&p, "acct-1", 40).await;
    let body = tokio::time::timeout(Duration::from_secs(30), r.into_body().collect()).await.unwrap().unwrap();
    assert!(export_lines(&body.to_bytes()).1.is_some(), "not cut");
    assert_eq!(metric(&p, "cvgate_streams_truncated_total", &[("reason", "closed")]).await, 1.0);
    assert_eq!(metric(&p, "cvgate_streams_truncated_total", &[("reason", "quota")]).await, 0.0);
    p.running.shutdown().await;
}

/// Polls `cvgate_closed{window="night"}` until it reads `want` (housekeeping sets it once a
/// second); gives up after 5 s and returns the last value.
async fn closed_gauge(p: &Proxy, want: f64) -> f64 {
    let mut got = -1.0;
    for _ in 0..50 {
        got = metric(p, "cvgate_closed", &[("window", "night")]).await;
        if got == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_closed_gauge_reads_one_while_closed() {
    let p = proxy(&night("finish")).await;
    assert_eq!(closed_gauge(&p, 0.0).await, 0.0, "open at 10:00");
    p.clock.set(at("2026-11-24T23:30:00+01:00"));
    assert_eq!(closed_gauge(&p, 1.0).await, 1.0, "closed at 23:30");
    p.clock.set(at("2026-11-25T07:00:00+01:00"));
    assert_eq!(closed_gauge(&p, 0.0).await, 0.0, "open again at 07:00");
    p.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_finished_requests_leave_no_cut_timer_behind() {
    // Bug: with `in_flight: cut`, every CV request spawns a task that sleeps until the next
    // window start (up to a day) even after its response has ended; at production rates that is
    // millions of live tasks.
    let p = proxy(&night("cut")).await;
    let mut s = plain_connect(p.plain).await;
    let alive = || tokio::runtime::Handle::current().metrics().num_alive_tasks();
    let r = get_as(&p, &mut s, SEARCH, "acct-1", KVK).await;
    let _ = body_bytes(r).await;
    let before = alive();
    for _ in 0..50 {
        let r = get_as(&p, &mut s, SEARCH, "acct-1", KVK).await;
        assert_eq!(r.status(), 200);
        let _ = body_bytes(r).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await; // let settle tasks finish
    let grown = alive().saturating_sub(before);
    assert!(grown < 10, "{grown} tasks still alive after 50 finished requests");
    p.running.shutdown().await;
}
