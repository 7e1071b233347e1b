//! Issue 4, CV quotas, through the real proxy: exact under concurrency for one account, one
//! organisation and one /24; all or nothing across scopes; settle to what was delivered; exports
//! cut at a record boundary with the marker line (and the HTTP/2 trailer); rate-limit headers and
//! problem documents; the deep-paging guard; reloads that keep spent budgets; shadow mode.
//!
//! The proxy runs on the harness's manual clock. Where a test keeps it still, no bucket refills,
//! so the bounds are exact; where it moves the clock, the bound adds what that move refills.

mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use common::*;
use cvgate::quota::{BucketState, Scope, Subject};
use http_body_util::BodyExt;

const KVK: &str = "12345678";
/// Seconds `cvs` CVs take to refill in a bucket of 1000 per 24 h (one per 86.4 s); `cvs` is a
/// multiple of 5 here, so the answer is whole.
fn refill_secs_1000_day(cvs: u64) -> u64 {
    cvs * 864 / 10
}

/// `horizons: { day: { budget: N, window: 24h } }`.
fn day(budget: u64) -> String {
    format!("horizons: {{ day: {{ budget: {budget}, window: 24h }} }}")
}

/// A `quota:` section with the given account, org and ip scope bodies (country and global keep
/// their large defaults). Automatic blocking rules are switched off: these tests are about the
/// buckets, and the default rule would turn an account's day-budget 429 into a 403 block.
fn quota(account: &str, org: &str, ip: &str) -> String {
    format!(
        "quota:\n  scopes:\n    account: {{ {account} }}\n    org: {{ {org} }}\n    ip: {{ {ip} }}\nblocks: {{ rules: [] }}\n"
    )
}

/// A proxy in front of a fresh mock with `extra` config; also returns the mock's address (for
/// rewriting the config file in reload tests).
async fn proxy(extra: &str) -> (Proxy, String) {
    let mock = format!("http://{}", start_mock().await);
    (start_proxy(&mock, extra).await, mock)
}

/// The quota engine's view of `account`/`org` from `ip`, nothing charged: (capacity, state) of
/// the first bucket of `scope`.
async fn peek(p: &Proxy, account: &str, org: &str, ip: &str, scope: Scope) -> (u64, BucketState) {
    let rt = p.running.shared.runtime();
    let ip: IpAddr = ip.parse().unwrap();
    let subject = Subject { account: Some(account), org: Some(org), ip, country: "ZZ" };
    let states = p.running.shared.quota.peek(&rt.config.quota, &subject).await.unwrap();
    states.into_iter().find(|(b, _)| b.scope == scope).map(|(b, s)| (b.capacity, s)).unwrap()
}

/// Remaining CVs of `scope` once settles (spawned when a body ends) have landed: polls until
/// the value equals `want` or 2 s pass, then returns what it saw last.
async fn settled_remaining(p: &Proxy, account: &str, scope: Scope, want: u64) -> u64 {
    let mut got = 0;
    for _ in 0..200 {
        got = peek(p, account, KVK, "127.0.0.1", scope).await.1.remaining;
        if got == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    got
}

/// What one concurrent client saw.
#[derive(Debug, Default)]
struct Tally {
    /// CVs received: `results` elements, NDJSON lines (not the marker).
    delivered: u64,
    ok: u64,
    rejected: u64,
    /// `scope` of every 429 problem.
    scopes: BTreeSet<String>,
}

/// One client: `n` requests, three searches of 200 then an export of 150, repeated; it does
/// not stop at a 429 (later requests may fit when the clock moves).
async fn client(mut s: Sender, h2: bool, token: String, n: usize) -> Tally {
    let mut t = Tally::default();
    let auth = bearer(&token);
    for i in 0..n {
        let export = i % 4 == 3;
        let uri = if export { "/api/v1/cvs/export?limit=150" } else { "/api/v1/cvs?size=200" };
        let r = s.send(get(uri, h2, &[("authorization", &auth)])).await;
        match r.status().as_u16() {
            200 => {
                t.ok += 1;
                if export {
                    let (_, b) = body_bytes(r).await;
                    t.delivered += export_lines(&b).0;
                } else {
                    let (_, v) = body_json(r).await;
                    t.delivered += v["results"].as_array().unwrap().len() as u64;
                }
            }
            429 => {
                t.rejected += 1;
                for h in ["retry-after", "ratelimit", "ratelimit-policy"] {
                    assert!(r.headers().contains_key(h), "429 without {h}");
                }
                let (_, v) = expect_problem(r, 429, "quota-exceeded").await;
                t.scopes.insert(v["scope"].as_str().unwrap().to_string());
            }
            other => panic!("unexpected status {other}"),
        }
    }
    t
}

/// A client connection from `src`: plain HTTP/1.1, TLS HTTP/1.1 or TLS HTTP/2 by `i`.
async fn connect(p: &Proxy, i: usize, src: IpAddr) -> (Sender, bool) {
    match i % 3 {
        0 => (plain_connect_from(p.plain, src).await, false),
        1 => (tls_connect_from(p.tls, &p.cert_pem, &[b"http/1.1"], src).await.1, false),
        _ => (tls_connect_from(p.tls, &p.cert_pem, &[b"h2"], src).await.1, true),
    }
}

/// Run `clients` (account, org, source address) concurrently, `n` requests each; the sum.
async fn run_clients(p: &Proxy, clients: Vec<(String, String, IpAddr)>, n: usize) -> Tally {
    let mut tasks = Vec::new();
    for (i, (account, org, src)) in clients.into_iter().enumerate() {
        let (s, h2) = connect(p, i, src).await;
        let t = token(p, &account, &org);
        tasks.push(tokio::spawn(client(s, h2, t, n)));
    }
    let mut total = Tally::default();
    for task in tasks {
        let t = tokio::time::timeout(Duration::from_secs(120), task).await.expect("client stuck").unwrap();
        total.delivered += t.delivered;
        total.ok += t.ok;
        total.rejected += t.rejected;
        total.scopes.extend(t.scopes);
    }
    total
}

fn src(net: u8, host: usize) -> IpAddr {
    IpAddr::from([127, 0, net, u8::try_from(host + 1).unwrap()])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_account_64_concurrent_clients_never_exceed_the_budget() {
    // Not a multiple of 200: the last CVs go to exports, cut at the budget edge.
    const CAP: u64 = 1090;
    let (p, _) = proxy(&quota(&day(CAP), &day(1_000_000), &day(1_000_000))).await;
    let clients = (0..64).map(|i| ("acct-1".to_string(), KVK.to_string(), src(2, i))).collect();
    // The clock stands still: nothing refills, so the budget is the bound.
    let t = run_clients(&p, clients, 8).await;
    assert!(t.delivered <= CAP, "delivered {} > {CAP}", t.delivered);
    assert!(t.rejected > 0 && t.scopes == BTreeSet::from(["account".to_string()]), "{t:?}");
    // Every search was refused only when fewer than 200 were left.
    assert!(t.delivered > CAP - 200, "{t:?}");
    // Exact accounting: what is left is what was not delivered.
    let left = settled_remaining(&p, "acct-1", Scope::Account, CAP - t.delivered).await;
    assert_eq!(left, CAP - t.delivered);
    p.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_organisation_of_30_accounts_never_exceeds_its_budget_plus_refill() {
    // 1500 CVs over 1500 s: one CV per second of (manual) time.
    const CAP: u64 = 1500;
    let org = format!("horizons: {{ quarter: {{ budget: {CAP}, window: 1500s }} }}");
    // Each account could take 8 × 200 = 1600 alone: only the org scope can bind.
    let (p, _) = proxy(&quota(&day(2000), &org, &day(1_000_000))).await;
    let clients = (0..30).map(|i| (format!("acct-{i}"), KVK.to_string(), src(3, i))).collect();
    // Move the clock 3 × 20 s while the clients run: at most 60 CVs refill.
    let clock = p.clock.clone();
    let mover = tokio::spawn(async move {
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(30)).await;
            clock.advance(Duration::from_secs(20));
        }
    });
    let t = run_clients(&p, clients, 8).await;
    mover.await.unwrap();
    let refill = 60;
    assert!(t.delivered <= CAP + refill, "delivered {} > {CAP} + {refill}", t.delivered);
    assert!(t.rejected > 0 && t.scopes == BTreeSet::from(["org".to_string()]), "{t:?}");
    assert!(t.delivered > CAP - 200, "{t:?}");
    p.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_slash_24_shared_by_30_organisations_never_exceeds_its_budget() {
    const CAP: u64 = 1250;
    let (p, _) = proxy(&quota(&day(1_000_000), &day(1_000_000), &day(CAP))).await;
    // 30 organisations, one account each, from 30 addresses of 127.0.1.0/24.
    let clients = (0..30).map(|i| (format!("acct-{i}"), format!("100000{i:02}"), src(1, i))).collect();
    let t = run_clients(&p, clients, 8).await;
    assert!(t.delivered <= CAP, "delivered {} > {CAP}", t.delivered);
    assert!(t.rejected > 0 && t.scopes == BTreeSet::from(["ip".to_string()]), "{t:?}");
    assert!(t.delivered > CAP - 200, "{t:?}");
    // Any address of the /24 sees the same bucket, and exactly what was not delivered is left.
    let (_, st) = peek(&p, "someone", "99999999", "127.0.1.250", Scope::Ip).await;
    assert_eq!(st.remaining, CAP - t.delivered);
    let (cap, other) = peek(&p, "someone", "99999999", "127.0.2.1", Scope::Ip).await;
    assert_eq!(other.remaining, cap, "another /24 was charged");
    p.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_refused_by_the_org_leaves_the_account_untouched() {
    let (p, _) = proxy(&quota(&day(1000), &day(300), &day(100_000))).await;
    let mut s = plain_connect(p.plain).await;
    let (a, b) = (token(&p, "acct-a", KVK), token(&p, "acct-b", KVK));
    let r = s.send(get("/api/v1/cvs?size=200", false, &[("authorization", &bearer(&b))])).await;
    assert_eq!(r.status(), 200);
    let _ = body_bytes(r).await;
    // 100 left in the org: acct-a's 200 does not fit.
    let r = s.send(get("/api/v1/cvs?size=200", false, &[("authorization", &bearer(&a))])).await;
    let (_, v) = expect_problem(r, 429, "quota-exceeded").await;
    assert_eq!((v["scope"].as_str(), v["horizon"].as_str()), (Some("org"), Some("day")));
    // Nothing of the refused request was charged anywhere.
    let at = |scope| peek(&p, "acct-a", KVK, "127.0.0.1", scope);
    assert_eq!(at(Scope::Account).await.1.remaining, 1000, "account charged by a refused request");
    assert_eq!(at(Scope::Org).await.1.remaining, 100);
    assert_eq!(at(Scope::Ip).await.1.remaining, 100_000 - 200, "ip charged by a refused request");
    // A request that fits is charged in every scope; the headers name the tightest bucket.
    let r = s.send(get("/api/v1/cvs?size=50", false, &[("authorization", &bearer(&a))])).await;
    assert_eq!(r.status(), 200);
    let (parts, _) = body_bytes(r).await;
    assert!(header(&parts, "ratelimit").starts_with("\"org-day\";r=50;"), "{:?}", parts.headers);
    assert_eq!(at(Scope::Account).await.1.remaining, 950);
    p.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settle_refunds_short_pages_and_exports_are_cut_at_a_record_boundary() {
    let (p, _) = proxy(&quota(&day(1000), &day(100_000), &day(100_000))).await;
    let t = token(&p, "acct-1", KVK);
    let auth = [("authorization", bearer(&t))];
    let auth: Vec<(&str, &str)> = auth.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut h1 = plain_connect(p.plain).await;

    // Reserved 200, delivered 37: 163 come back.
    let r = h1.send(get("/api/v1/cvs?size=200&results=37", false, &auth)).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["ratelimit"].to_str().unwrap().starts_with("\"account-day\";r=800;"));
    let (_, v) = body_json(r).await;
    assert_eq!(v["results"].as_array().unwrap().len(), 37);
    assert_eq!(settled_remaining(&p, "acct-1", Scope::Account, 963).await, 963);

    // HTTP/1.1 export of 1000 with 963 left: 963 whole lines, then the marker.
    let r = h1.send(get("/api/v1/cvs/export?limit=1000", false, &auth)).await;
    assert_eq!(r.status(), 200);
    assert!(!r.headers().contains_key("content-length"));
    let (_, b) = body_bytes(r).await;
    assert_eq!(export_lines(&b), (963, Some(963)));
    let last = std::str::from_utf8(&b).unwrap().lines().last().unwrap().to_string();
    assert_eq!(last, r#"{"_cvgate":{"truncated":true,"records":963,"reason":"quota"}}"#);
    assert_eq!(settled_remaining(&p, "acct-1", Scope::Account, 0).await, 0);

    // 50 CVs refill over 50 × 86.4 s; an HTTP/2 export of 150 gets those 50, the marker and
    // the trailers.
    p.clock.advance(Duration::from_secs(refill_secs_1000_day(50)));
    let (_, mut h2) = tls_connect(p.tls, &p.cert_pem, &[b"h2"]).await;
    let r = h2.send(get("/api/v1/cvs/export?limit=150", true, &auth)).await;
    assert_eq!(r.status(), 200);
    let collected = r.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("no trailers on the cut HTTP/2 stream");
    assert_eq!(trailers["cvgate-truncated"], "true");
    assert_eq!(trailers["cvgate-records"], "50");
    assert_eq!(export_lines(&collected.to_bytes()), (50, Some(50)));
    assert_eq!(metric(&p, "cvgate_streams_truncated_total", &[("reason", "quota")]).await, 2.0);
    assert_eq!(metric(&p, "cvgate_cvs_delivered_total", &[("route", "cv_export"), ("tier", "default")]).await, 1013.0);
    p.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_carries_retry_after_ratelimit_headers_and_a_problem() {
    let (p, _) = proxy(&quota(&day(1000), &day(100_000), &day(100_000))).await;
    let t = token(&p, "acct-1", KVK);
    let mut s = plain_connect(p.plain).await;
    for left in [800, 600, 400, 200, 0] {
        let r = s.send(get("/api/v1/cvs?size=200", false, &[("authorization", &bearer(&t))])).await;
        assert_eq!(r.status(), 200);
        let (parts, _) = body_bytes(r).await;
        // Draft-10 syntax: the constraining bucket, its remaining CVs, seconds until full.
        let t_full = refill_secs_1000_day(1000 - left);
        assert_eq!(header(&parts, "ratelimit"), format!("\"account-day\";r={left};t={t_full}"));
        assert_eq!(header(&parts, "ratelimit-policy"), "\"account-day\";q=1000;w=86400");
    }
    let r = s.send(get("/api/v1/cvs?size=20", false, &[("authorization", &bearer(&t))])).await;
    assert_eq!(r.status(), 429);
    let (parts, v) = expect_problem(r, 429, "quota-exceeded").await;
    // 20 CVs take 20 × 86.4 s to refill.
    assert_eq!(header(&parts, "retry-after"), "1728");
    assert_eq!(header(&parts, "ratelimit"), "\"account-day\";r=0;t=86400");
    assert_eq!(header(&parts, "ratelimit-policy"), "\"account-day\";q=1000;w=86400");
    assert_eq!((v["scope"].as_str(), v["horizon"].as_str()), (Some("account"), Some("day")));
    assert_eq!(v["retry_after"], 1728);
    let rejections = metric(&p, "cvgate_quota_rejections_total", &[("scope", "account"), ("horizon", "day")]).await;
    assert_eq!(rejections, 1.0);
    p.running.shutdown().await;
}

/// Issue 17: clients built against Kong/Envoy read `X-RateLimit-*`; off by default, on with
/// `quota.legacy_headers`, showing the same constraining bucket as `RateLimit`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_ratelimit_headers_only_when_asked_for() {
    let base = quota(&day(1000), &day(100_000), &day(100_000));
    let (p, _) = proxy(&base).await;
    let t = token(&p, "acct-1", KVK);
    let mut s = plain_connect(p.plain).await;
    let r = s.send(get("/api/v1/cvs?size=200", false, &[("authorization", &bearer(&t))])).await;
    let (parts, _) = body_bytes(r).await;
    assert!(parts.headers.contains_key("ratelimit") && !parts.headers.contains_key("x-ratelimit-remaining"));
    p.running.shutdown().await;

    let with = base.replacen("quota:\n", "quota:\n  legacy_headers: true\n", 1);
    assert_ne!(with, base);
    let (p, _) = proxy(&with).await;
    let mut s = plain_connect(p.plain).await;
    let r = s.send(get("/api/v1/cvs?size=200", false, &[("authorization", &bearer(&t))])).await;
    let (parts, _) = body_bytes(r).await;
    assert_eq!(header(&parts, "ratelimit"), format!("\"account-day\";r=800;t={}", refill_secs_1000_day(200)));
    assert_eq!(header(&parts, "x-ratelimit-limit"), "1000");
    assert_eq!(header(&parts, "x-ratelimit-remaining"), "800");
    assert_eq!(header(&parts, "x-ratelimit-reset"), refill_secs_1000_day(200).to_string());
    for _ in 0..4 {
        let r = s.send(get("/api/v1/cvs?size=200", false, &[("authorization", &bearer(&t))])).await;
        body_bytes(r).await;
    }
    let r = s.send(get("/api/v1/cvs?size=20", false, &[("authorization", &bearer(&t))])).await;
    let (parts, _) = expect_problem(r, 429, "quota-exceeded").await;
    assert_eq!(header(&parts, "x-ratelimit-remaining"), "0");
    assert_eq!(header(&parts, "retry-after"), "1728");
    p.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_paging_is_refused_and_not_charged() {
    let (p, _) = proxy(&quota(&day(10_000), &day(100_000), &day(100_000))).await;
    let t = token(&p, "acct-1", KVK);
    let mut s = plain_connect(p.plain).await;
    let r = s.send(get("/api/v1/cvs?page=100&size=200", false, &[("authorization", &bearer(&t))])).await;
    let (_, v) = expect_problem(r, 403, "paging-too-deep").await;
    assert_eq!(v["max_depth"], 2000);
    assert_eq!(peek(&p, "acct-1", KVK, "127.0.0.1", Scope::Account).await.1.remaining, 10_000);
    // Exactly at the depth limit (10 × 200) is allowed.
    let r = s.send(get("/api/v1/cvs?page=10&size=200", false, &[("authorization", &bearer(&t))])).await;
    assert_eq!(r.status(), 200);
    let _ = body_bytes(r).await;
    p.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_resizes_buckets_and_keeps_what_was_spent() {
    let (p, mock) = proxy(&quota(&day(1000), &day(100_000), &day(100_000))).await;
    let t = token(&p, "acct-1", KVK);
    let mut s = plain_connect(p.plain).await;
    for size in [200, 100] {
        let r = s.send(get(&format!("/api/v1/cvs?size={size}"), false, &[("authorization", &bearer(&t))])).await;
        assert_eq!(r.status(), 200);
        let _ = body_bytes(r).await;
    }
    let rewrite = |budget: u64| {
        let extra = format!("{}{}", identity_yaml(&[]), quota(&day(budget), &day(100_000), &day(100_000)));
        std::fs::write(&p.config_path, test_yaml(&mock, p.dir.path(), &extra)).unwrap();
    };
    rewrite(2000);
    p.running.shared.reload().expect("reload");
    let (cap, st) = peek(&p, "acct-1", KVK, "127.0.0.1", Scope::Account).await;
    assert_eq!((cap, st.remaining), (2000, 1700), "spent 300 must stay spent");
    let r = s.send(get("/api/v1/cvs?size=100", false, &[("authorization", &bearer(&t))])).await;
    let (parts, _) = body_bytes(r).await;
    assert!(header(&parts, "ratelimit").starts_with("\"account-day\";r=1600;"));
    assert_eq!(header(&parts, "ratelimit-policy"), "\"account-day\";q=2000;w=86400");
    // A broken file is refused and the running budget stays.
    rewrite(0);
    assert!(p.running.shared.reload().is_err());
    let (cap, st) = peek(&p, "acct-1", KVK, "127.0.0.1", Scope::Account).await;
    assert_eq!((cap, st.remaining), (2000, 1600));
    p.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_scope_lets_requests_through_and_counts_would_reject() {
    let account = "shadow: true, horizons: { day: { budget: 150, window: 24h } }";
    let (p, _) = proxy(&quota(account, &day(100_000), &day(100_000))).await;
    let t = token(&p, "acct-1", KVK);
    let mut s = plain_connect(p.plain).await;
    let series = [("scope", "account"), ("horizon", "day")];
    for (i, would_reject) in [0.0, 1.0, 2.0].into_iter().enumerate() {
        let r = s.send(get("/api/v1/cvs?size=100", false, &[("authorization", &bearer(&t))])).await;
        assert_eq!(r.status(), 200, "request {i}");
        let (parts, v) = body_json(r).await;
        assert_eq!(v["results"].as_array().unwrap().len(), 100);
        // A shadow bucket never shows in the headers.
        assert!(!header(&parts, "ratelimit").starts_with("\"account-"), "{:?}", parts.headers);
        assert_eq!(metric(&p, "cvgate_quota_would_reject_total", &series).await, would_reject, "request {i}");
    }
    assert_eq!(metric(&p, "cvgate_quota_rejections_total", &series).await, 0.0);
    p.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_delivered_cvs_are_labelled_with_the_tier() {
    // Bug: `Ctx::tier` is never filled in from `Reservation::tier`, so CVs delivered to a
    // staffing agency are counted under tier="default" (and audited with tier null).
    let (p, _) = proxy("quota:\n  overrides: { orgs: { \"87654321\": { tier: staffing_agency } } }\n").await;
    let t = token(&p, "agency-1", "87654321");
    let mut s = plain_connect(p.plain).await;
    let r = s.send(get("/api/v1/cvs?size=5", false, &[("authorization", &bearer(&t))])).await;
    assert_eq!(r.status(), 200);
    let _ = body_bytes(r).await;
    let series = |tier| [("route", "cv_search"), ("tier", tier)];
    assert_eq!(metric(&p, "cvgate_cvs_delivered_total", &series("staffing_agency")).await, 5.0);
    assert_eq!(metric(&p, "cvgate_cvs_delivered_total", &series("default")).await, 0.0);
    p.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_single_cv_gets_are_charged_their_fixed_cost() {
    // Bug: a route without `count` (cv_get, fixed cost 1) settled to the body's record count
    // (0, nothing is counted), so every GET /api/v1/cvs/{id} was refunded and never ran out.
    let (p, _) = proxy(&quota(&day(3), &day(1000), &day(1000))).await;
    let t = token(&p, "acct-reader", "12345678");
    let (_, mut s) = tls_connect(p.tls, &p.cert_pem, &[b"h2"]).await;
    for id in 1..=3 {
        let r = s.send(get(&format!("/api/v1/cvs/{id}"), true, &[("authorization", &bearer(&t))])).await;
        assert_eq!(r.status(), 200);
        let _ = body_bytes(r).await;
    }
    assert_eq!(settled_remaining(&p, "acct-reader", Scope::Account, 0).await, 0);
    let r = s.send(get("/api/v1/cvs/4", true, &[("authorization", &bearer(&t))])).await;
    assert_eq!(r.status(), 429);
    p.running.shutdown().await;
}
