//! Issue 6, the client IP's country, through the real proxy: a MaxMind-format database built by
//! the test maps a test network to its country, unknown is `ZZ`, a trusted edge's country header
//! wins, and the country quota scope is charged under that country.

mod common;

use common::*;
use serde_json::Value;

#[derive(serde::Serialize)]
struct Iso {
    iso_code: &'static str,
}

#[derive(serde::Serialize)]
struct Country {
    country: Iso,
}

/// A GeoIP2-Country-shaped database: 198.51.100.0/24 is in Germany, 203.0.113.0/24 in Belgium.
fn write_mmdb(path: &std::path::Path) {
    let mut w = mmdb_writer::Writer::new("GeoIP2-Country");
    for (net, code) in [("198.51.100.0/24", "DE"), ("203.0.113.0/24", "BE")] {
        w.insert(net.parse::<ipnet::IpNet>().unwrap(), &Country { country: Iso { iso_code: code } }).unwrap();
    }
    std::fs::write(path, w.to_bytes().unwrap()).unwrap();
}

/// A search for 8 CVs by `account` "from" `xff`; the status and the JSON answer.
async fn send(s: &mut Sender, p: &Proxy, account: &str, xff: &str, extra: &[(&str, &str)], id: &str) -> (u16, Value) {
    let auth = bearer(&token(p, account, "12345678"));
    let mut h = vec![("authorization", auth.as_str()), ("x-forwarded-for", xff), ("x-request-id", id)];
    h.extend_from_slice(extra);
    let r = s.send(get("/api/v1/cvs?size=8", false, &h)).await;
    let status = r.status().as_u16();
    let (_, v) = body_json(r).await;
    (status, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_country_scope_is_charged_under_the_clients_country() {
    let mock = start_mock().await;
    let (dir, cert) = cert_dir();
    write_mmdb(&dir.path().join("geo.mmdb"));
    // The test client connects from 127.0.0.1, a trusted proxy, so X-Forwarded-For says where
    // the client is "from". Germany may have 10 CVs an hour; everyone else the default.
    let extra = r#"
geo:
  mmdb_file: geo.mmdb
  header: CF-IPCountry
audit: { sink: file, path: audit.log }
quota:
  overrides:
    countries:
      DE:
        hour: { budget: 10, window: 1h }
"#;
    let yaml =
        test_yaml(&format!("http://{mock}"), dir.path(), &format!("{}{extra}", identity_yaml(&["127.0.0.1/32"])));
    let p = start_proxy_in(dir, cert, &yaml).await;
    let mut s = plain_connect(p.plain).await;
    // Two German accounts share Germany's 10 CVs: the second request of 8 does not fit.
    assert_eq!(send(&mut s, &p, "de-1", "198.51.100.7", &[], "de-1").await.0, 200);
    let (status, problem) = send(&mut s, &p, "de-2", "198.51.100.8", &[], "de-2").await;
    assert_eq!(status, 429, "{problem}");
    assert_eq!(problem["scope"], "country", "{problem}");
    // An address the database does not know is ZZ, with the default budget.
    assert_eq!(send(&mut s, &p, "zz-1", "192.0.2.9", &[], "zz-1").await.0, 200);
    // Belgium is not Germany.
    assert_eq!(send(&mut s, &p, "be-1", "203.0.113.5", &[], "be-1").await.0, 200);
    // The trusted edge's header wins over the database: this one is charged to Germany too.
    let (status, _) = send(&mut s, &p, "edge-1", "192.0.2.10", &[("cf-ipcountry", "DE")], "edge-de").await;
    assert_eq!(status, 429);

    p.running.shutdown().await;
    let text = std::fs::read_to_string(p.dir.path().join("audit.log")).unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let country = |id: &str| {
        let l = lines.iter().find(|l| l["request_id"] == id).unwrap_or_else(|| panic!("{id} not audited: {text}"));
        (l["country"].as_str().unwrap().to_string(), l["client_ip"].as_str().unwrap().to_string())
    };
    assert_eq!(country("de-1"), ("DE".into(), "198.51.100.7".into()));
    assert_eq!(country("de-2"), ("DE".into(), "198.51.100.8".into()));
    assert_eq!(country("zz-1"), ("ZZ".into(), "192.0.2.9".into()));
    assert_eq!(country("be-1"), ("BE".into(), "203.0.113.5".into()));
    assert_eq!(country("edge-de"), ("DE".into(), "192.0.2.10".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_client_cannot_choose_its_country() {
    let mock = start_mock().await;
    let (dir, cert) = cert_dir();
    let extra = r#"
geo: { header: CF-IPCountry }
audit: { sink: file, path: audit.log }
"#;
    // No trusted proxies: neither X-Forwarded-For nor CF-IPCountry from the client counts.
    let yaml = test_yaml(&format!("http://{mock}"), dir.path(), &format!("{}{extra}", identity_yaml(&[])));
    let p = start_proxy_in(dir, cert, &yaml).await;
    let t = token(&p, "acct-1", "12345678");
    let mut s = plain_connect(p.plain).await;
    let r = s
        .send(get(
            "/api/v1/cvs?size=1",
            false,
            &[("authorization", &bearer(&t)), ("cf-ipcountry", "NL"), ("x-request-id", "spoof")],
        ))
        .await;
    assert_eq!(r.status(), 200);
    let _ = body_bytes(r).await;
    p.running.shutdown().await;
    let text = std::fs::read_to_string(p.dir.path().join("audit.log")).unwrap();
    let l: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(l["country"], "ZZ");
}

#[test]
fn a_bad_database_is_a_config_error_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.mmdb"), b"not a database").unwrap();
    let e = cvgate::config::Config::parse("geo:\n  mmdb_file: bad.mmdb\n", "t.yaml", dir.path()).unwrap_err();
    assert_eq!(e.errors.len(), 1, "{e}");
    assert_eq!(e.errors[0].path, "geo.mmdb_file");
    assert_eq!(e.errors[0].line, Some(2));
}
