//! Issue 18: contact data masked in the stream, through the real proxy in front of the real mock
//! CV API (two thirds of its CVs carry name, address, e-mail, ...). Every trigger — always,
//! tier/org/account and their exemptions, a soft budget, a time window, the admin switch (kept
//! across a restart) — on JSON search pages, NDJSON exports (masked and cut at the grant in one
//! pass) and single CVs, over HTTP/1.1 and HTTP/2; shadow mode; a compressed answer decoded
//! before masking and an undecodable one refused.

mod common;

use bytes::Bytes;
use common::*;
use cvgate::devtools::mock_api::MockOptions;
use serde_json::Value;

const KVK: &str = "12345678";
const ADMIN_TOKEN: &str = "admin-token-for-masking-tests-0123";
/// What the board's decision hides (the default `masking.fields`).
const CONTACT: [&str; 7] = ["naam", "geslacht", "geboortedatum", "adres", "postcode", "woonplaats", "email"];

/// The harness config with `masking:` set to `masking` (YAML body, indented two spaces), an
/// audit file, and no automatic block rules.
fn cfg(masking: &str, extra: &str) -> String {
    format!("masking:\n{masking}\naudit:\n  sink: file\n  path: audit.log\nblocks: {{ rules: [] }}\n{extra}")
}

async fn proxy(masking: &str, extra: &str) -> Proxy {
    let mock = format!("http://{}", start_mock().await);
    start_proxy(&mock, &cfg(masking, extra)).await
}

async fn mock_with(opts: MockOptions) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(cvgate::devtools::mock_api::serve_with(l, opts, std::future::pending()));
    format!("http://{addr}")
}

/// GET `path` as `account` of `org` over HTTP/2 (TLS) or HTTP/1.1.
async fn fetch(p: &Proxy, h2: bool, account: &str, org: &str, path: &str) -> (http::response::Parts, Bytes) {
    let auth = bearer(&token(p, account, org));
    let mut s = if h2 { tls_connect(p.tls, &p.cert_pem, &[b"h2"]).await.1 } else { plain_connect(p.plain).await };
    let r = s.send(get(path, h2, &[("authorization", &auth)])).await;
    let out = body_bytes(r).await;
    // Settle runs off the body's end; let it land before the next request reads a bucket.
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    out
}

/// The CVs of a body: a search page's `results`, an export's lines (not the cut marker), or one CV.
fn cvs(body: &[u8]) -> Vec<Value> {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        return match v.get("results") {
            Some(Value::Array(a)) => a.clone(),
            _ => vec![v],
        };
    }
    let text = std::str::from_utf8(body).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not NDJSON ({e}): {l}")))
        .filter(|v| v.get("_cvgate").is_none())
        .collect()
}

/// Whether a CV still shows any of its holder's contact data (keys in any case).
fn has_contact(cv: &Value) -> bool {
    cv.as_object().unwrap().keys().any(|k| CONTACT.contains(&k.to_lowercase().as_str()))
}

/// Masked as the board decided: no contact field, and the phone only where the job seeker
/// chose to show it.
fn assert_masked(cv: &Value) {
    assert!(!has_contact(cv), "contact data left: {cv}");
    let phone_ok = cv.get("toon_telefoon") == Some(&Value::Bool(true));
    assert!(cv.get("telefoon").is_none() || phone_ok, "phone shown against the job seeker's choice: {cv}");
}

/// The three CV routes with what each should carry.
const ROUTES: [(&str, usize); 3] =
    [("/api/v1/cvs?size=20&query=m", 20), ("/api/v1/cvs/export?limit=25&query=m", 25), ("/api/v1/cvs/4242", 1)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_trigger_contact_data_passes_so_the_other_tests_can_fail() {
    let p = proxy("  always: false", "").await;
    for (path, n) in ROUTES {
        let (parts, body) = fetch(&p, false, "acct-1", KVK, path).await;
        assert_eq!(parts.status, 200);
        let cvs = cvs(&body);
        assert_eq!(cvs.len(), n, "{path}");
        assert!(parts.headers.get("cvgate-masked").is_none());
        if n > 1 {
            assert!(cvs.iter().filter(|c| has_contact(c)).count() >= n / 3, "{path}: the mock shows contact data");
        }
    }
    p.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_masks_search_pages_exports_and_single_cvs_over_h1_and_h2() {
    let p = proxy("  always: true", "").await;
    for h2 in [false, true] {
        for (path, n) in ROUTES {
            let (parts, body) = fetch(&p, h2, "acct-1", KVK, path).await;
            assert_eq!(parts.status, 200, "{path} h2={h2}");
            assert_eq!(header(&parts, "cvgate-masked"), "contact;reason=always");
            assert!(parts.headers.get("content-length").is_none(), "the body was rewritten");
            let cvs = cvs(&body);
            assert_eq!(cvs.len(), n, "{path} h2={h2}: every CV delivered");
            cvs.iter().for_each(assert_masked);
            assert!(cvs.iter().all(|c| c.get("id").is_some() && c.get("werkervaring").is_some()), "profile kept");
        }
    }
    let masked = metric(&p, "cvgate_cvs_masked_total", &[("route", "cv_search"), ("reason", "always")]).await;
    assert!(masked > 0.0 && masked <= 40.0, "{masked}");
    p.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_is_masked_and_cut_at_its_grant_in_one_pass() {
    let quota = "quota:\n  scopes:\n    account:\n      horizons:\n        day: { budget: 30, window: 24h }\n";
    let p = proxy("  always: true", quota).await;
    let (parts, body) = fetch(&p, true, "acct-1", KVK, "/api/v1/cvs/export?limit=50&query=x").await;
    assert_eq!(parts.status, 200);
    let cvs = cvs(&body);
    assert_eq!(cvs.len(), 30, "cut at the grant");
    cvs.iter().for_each(assert_masked);
    let text = std::str::from_utf8(&body).unwrap();
    assert!(text.trim_end().ends_with(r#"{"_cvgate":{"truncated":true,"records":30,"reason":"quota"}}"#), "{text}");
    p.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soft_budget_masks_past_its_line_and_says_so_in_advance() {
    let p = proxy("  soft_budgets: [{ scope: account, horizon: day, after: 30 }]", "").await;
    let page = "/api/v1/cvs?size=20&query=soft";
    // 20 of 30: whole, and the header says 10 are left with contact data.
    let (parts, body) = fetch(&p, false, "acct-1", KVK, page).await;
    assert!(parts.headers.get("cvgate-masked").is_none());
    assert_eq!(header(&parts, "cvgate-mask-budget"), "\"account-day\";after=30;r=10");
    assert!(cvs(&body).iter().any(has_contact));
    // The page that crosses the line: its first 10 CVs whole, the other 10 masked.
    let (parts, body) = fetch(&p, true, "acct-1", KVK, "/api/v1/cvs?size=20&query=soft2").await;
    assert_eq!(header(&parts, "cvgate-masked"), "contact;reason=soft-budget");
    assert_eq!(header(&parts, "cvgate-mask-budget"), "\"account-day\";after=30;r=0");
    let cvs2 = cvs(&body);
    assert_eq!(cvs2.len(), 20);
    assert!(cvs2[..10].iter().any(has_contact), "the first 10 are within the soft budget");
    cvs2[10..].iter().for_each(assert_masked);
    // Past it: everything masked; another account is not affected.
    let (_, body) = fetch(&p, false, "acct-1", KVK, "/api/v1/cvs/export?limit=40&query=soft3").await;
    let cvs3 = cvs(&body);
    assert_eq!(cvs3.len(), 40);
    cvs3.iter().for_each(assert_masked);
    let (parts, _) = fetch(&p, false, "acct-2", KVK, page).await;
    assert!(parts.headers.get("cvgate-masked").is_none());
    let masked = metric(&p, "cvgate_cvs_masked_total", &[("route", "cv_search"), ("reason", "soft-budget")]).await;
    assert!(masked > 0.0 && masked <= 10.0, "{masked}");
    let lines = audit(p).await;
    let crossing = lines.iter().find(|l| l["mask_reason"] == "soft-budget" && l["route"] == "cv_search").unwrap();
    assert_eq!(crossing["masked"].as_u64(), Some(masked as u64), "{crossing}");
}

/// Stop the proxy (flushing the audit log) and return its lines.
async fn audit(p: Proxy) -> Vec<Value> {
    p.running.shutdown().await;
    let text = std::fs::read_to_string(p.dir.path().join("audit.log")).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

const STAFFING: &str = "87654321";
const AGENCY: &str = "quota:\n  overrides: { orgs: { \"87654321\": { tier: staffing_agency } } }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everyone_but_the_vetted_staffing_agencies() {
    let p = proxy("  always: true\n  exempt: { tiers: [staffing_agency] }", AGENCY).await;
    let (parts, body) = fetch(&p, false, "agency-1", STAFFING, "/api/v1/cvs?size=30&query=t").await;
    assert!(parts.headers.get("cvgate-masked").is_none());
    assert!(cvs(&body).iter().any(has_contact), "the vetted agency keeps contact data");
    let (parts, body) = fetch(&p, true, "acct-1", KVK, "/api/v1/cvs?size=30&query=t").await;
    assert_eq!(header(&parts, "cvgate-masked"), "contact;reason=always");
    cvs(&body).iter().for_each(assert_masked);
    p.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_tiers_organisations_and_accounts_are_masked() {
    let masking = "  tiers: [staffing_agency]\n  orgs: [\"11111111\"]\n  accounts: [acct-m]";
    let p = proxy(masking, AGENCY).await;
    for (account, org, reason) in [
        ("agency-1", STAFFING, Some("tier")),
        ("acct-o", "11111111", Some("org")),
        ("acct-m", KVK, Some("account")),
        ("acct-1", KVK, None),
    ] {
        let (parts, body) = fetch(&p, false, account, org, "/api/v1/cvs/export?limit=20&query=l").await;
        match reason {
            Some(r) => {
                assert_eq!(header(&parts, "cvgate-masked"), format!("contact;reason={r}"), "{account}");
                cvs(&body).iter().for_each(assert_masked);
            }
            None => assert!(cvs(&body).iter().any(has_contact), "{account} is not listed"),
        }
    }
    p.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_masks_during_its_hours_only() {
    // The harness clock stands at 10:00 in Amsterdam on a weekday.
    let masking = "  schedule:\n    windows:\n      - { name: office, start: \"09:00\", end: \"11:00\", groups: [cv] }";
    let p = proxy(masking, "").await;
    let (parts, body) = fetch(&p, true, "acct-1", KVK, "/api/v1/cvs/77").await;
    assert_eq!(header(&parts, "cvgate-masked"), "contact;reason=window");
    cvs(&body).iter().for_each(assert_masked);
    p.clock.advance(std::time::Duration::from_secs(2 * 3600)); // 12:00
    let (parts, _) = fetch(&p, true, "acct-1", KVK, "/api/v1/cvs/77").await;
    assert!(parts.headers.get("cvgate-masked").is_none());
    p.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_mode_counts_what_it_would_mask_and_masks_nothing() {
    let p = proxy("  always: true\n  shadow: true", "").await;
    let (parts, body) = fetch(&p, false, "acct-1", KVK, "/api/v1/cvs?size=30&query=s").await;
    assert!(parts.headers.get("cvgate-masked").is_none());
    let with_contact = cvs(&body).iter().filter(|c| has_contact(c)).count() as f64;
    assert!(with_contact > 0.0);
    let counted = metric(&p, "cvgate_cvs_masked_total", &[("route", "cv_search"), ("reason", "shadow:always")]).await;
    assert!(counted >= with_contact, "{counted} would-be-masked of {with_contact} with contact data");
    let lines = audit(p).await;
    assert!(lines.iter().any(|l| l["mask_reason"] == "shadow:always" && l["masked"].as_u64() == Some(counted as u64)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_answer_is_decoded_then_masked_and_an_undecodable_one_is_refused() {
    let gz = mock_with(MockOptions { force_encoding: Some("gzip".into()), ..MockOptions::default() }).await;
    let p = start_proxy(&gz, &cfg("  always: true", "")).await;
    for (path, n) in ROUTES {
        let (parts, body) = fetch(&p, false, "acct-1", KVK, path).await;
        assert_eq!(parts.status, 200, "{path}");
        assert!(parts.headers.get("content-encoding").is_none(), "{path}: decoded");
        let cvs = cvs(&body);
        assert_eq!(cvs.len(), n, "{path}");
        cvs.iter().for_each(assert_masked);
    }
    p.running.shutdown().await;
    // A coding cvgate cannot decode: never passed on unmasked, on every CV route.
    let odd = mock_with(MockOptions { force_encoding: Some("x-secret".into()), ..MockOptions::default() }).await;
    let p = start_proxy(&odd, &cfg("  always: true", "")).await;
    for (path, _) in ROUTES {
        let auth = bearer(&token(&p, "acct-1", KVK));
        let mut s = plain_connect(p.plain).await;
        let r = s.send(get(path, false, &[("authorization", &auth)])).await;
        let (_, v) = expect_problem(r, 502, "upstream-undecodable").await;
        assert!(!v.to_string().contains("naam"), "{v}");
    }
    p.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_switch_masks_a_group_for_everyone_and_survives_a_restart() {
    let mock = format!("http://{}", start_mock().await);
    let (dir, cert) = cert_dir();
    let blocks = dir.path().join("state/blocks.json");
    let extra =
        format!("admin: {{ token: \"{ADMIN_TOKEN}\" }}\nblocks:\n  file: \"{}\"\n  rules: []\n", blocks.display());
    let masking = format!("  exempt: {{ tiers: [staffing_agency] }}\n{AGENCY}");
    let yaml = test_yaml(&mock, dir.path(), &format!("{}masking:\n{masking}{extra}", identity_yaml(&[])));
    assert_eq!(yaml.matches("  admin: null").count(), 1);
    let yaml = yaml.replace("  admin: null", "  admin: \"127.0.0.1:0\"");
    let p = start_proxy_in(dir, cert, &yaml).await;
    let admin = p.running.admin_addr.unwrap();
    let (st, v) = admin_call(admin, ADMIN_TOKEN, "POST", "/v1/masks/cv", None).await;
    assert_eq!((st, &v["masked"]), (200, &Value::Bool(true)));
    let (st, v) = admin_call(admin, ADMIN_TOKEN, "GET", "/v1/masks", None).await;
    assert_eq!((st, v["masked"].clone()), (200, serde_json::json!(["cv"])));
    // Everyone, the exempt agency too: the operator's switch is the emergency brake.
    for (account, org) in [("acct-1", KVK), ("agency-1", STAFFING)] {
        let (parts, body) = fetch(&p, false, account, org, "/api/v1/cvs?size=20&query=a").await;
        assert_eq!(header(&parts, "cvgate-masked"), "contact;reason=admin", "{account}");
        cvs(&body).iter().for_each(assert_masked);
    }
    assert_eq!(metric(&p, "cvgate_masked", &[("group", "cv")]).await, 1.0);
    let (st, _) = admin_call(admin, ADMIN_TOKEN, "POST", "/v1/masks/nope", None).await;
    assert_eq!(st, 404);
    let config = p.config_path.clone();
    let dir = p.dir;
    p.running.shutdown().await;
    assert!(std::fs::read_to_string(blocks.with_file_name("masks.json")).unwrap().contains("cv"));

    // A restart keeps the switch; lifting it unmasks.
    let yaml = std::fs::read_to_string(&config).unwrap();
    let cert = std::fs::read_to_string(dir.path().join("cert.pem")).unwrap();
    let p = start_proxy_in(dir, cert, &yaml).await;
    let (parts, _) = fetch(&p, true, "acct-1", KVK, "/api/v1/cvs/5").await;
    assert_eq!(header(&parts, "cvgate-masked"), "contact;reason=admin");
    let (st, _) = admin_call(p.running.admin_addr.unwrap(), ADMIN_TOKEN, "DELETE", "/v1/masks/cv", None).await;
    assert_eq!(st, 200);
    let (parts, body) = fetch(&p, true, "acct-1", KVK, "/api/v1/cvs?size=20&query=b").await;
    assert!(parts.headers.get("cvgate-masked").is_none());
    assert!(cvs(&body).iter().any(has_contact));
    p.running.shutdown().await;
}
