//! Issue 6, the monitoring team's files: `deploy/prometheus/{prometheus,alerts}.yml` pass
//! promtool, the live `/metrics` passes `promtool check metrics`, and a REAL Prometheus (on a free
//! loopback port, temp storage, 1 s scrapes) scraping a live cvgate under traffic finds data for
//! every expression the Grafana dashboard and the alert rules use.
//!
//! What "finds data" means, per kind:
//! - dashboard expressions: the query succeeds and returns at least one sample. The traffic is
//!   made so that every panel has something: CVs, a 429 (account), a shadow would-reject (org),
//!   a cut export, an auth failure, an upstream timeout (504), a pause, a refused reload.
//! - alert expressions compare a signal with a threshold, so under test traffic most are rightly
//!   empty: each must be a valid query, Prometheus must evaluate the rule with health `ok`, and
//!   every metric name it uses must have series (in Prometheus and, except Prometheus's own `up`,
//!   in cvgate's `/metrics`). So a typo'd metric name fails either way.
//!
//! Needs `promtool` and `prometheus` (Debian package `prometheus`; scripts/test.sh installs it).
//! The test's Prometheus never uses a fixed port, so a system daemon on 9090 does not matter.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

fn deploy(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy").join(rel)
}

fn tool(name: &str) -> Command {
    let ok = Command::new(name).arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(ok, "`{name}` is not installed: apt-get install prometheus (scripts/test.sh does)");
    Command::new(name)
}

fn run_ok(mut c: Command, what: &str) -> String {
    let out = c.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{what} failed:\n{text}");
    text
}

#[test]
fn promtool_accepts_the_prometheus_config_and_the_alert_rules() {
    let mut c = tool("promtool");
    c.args(["check", "config"]).arg(deploy("prometheus/prometheus.yml"));
    let out = run_ok(c, "promtool check config");
    assert!(out.contains("1 rule files found"), "prometheus.yml must load alerts.yml:\n{out}");
    let mut c = tool("promtool");
    c.args(["check", "rules"]).arg(deploy("prometheus/alerts.yml"));
    run_ok(c, "promtool check rules");
}

/// Every PromQL expression in the dashboard (`expr` anywhere in the JSON).
fn dashboard_exprs() -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr", Value::String(s)) => out.push(s.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let text = std::fs::read_to_string(deploy("grafana/cvgate.json")).unwrap();
    let v: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut out = Vec::new();
    walk(&v, &mut out);
    out
}

/// (alert name, expression) of every rule in alerts.yml.
fn alert_exprs() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(deploy("prometheus/alerts.yml")).unwrap();
    let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    let mut out = Vec::new();
    for g in v["groups"].as_sequence().unwrap() {
        for r in g["rules"].as_sequence().unwrap() {
            let name = r.get("alert").or_else(|| r.get("record")).and_then(|n| n.as_str()).unwrap();
            out.push((name.to_string(), r["expr"].as_str().unwrap().trim().to_string()));
        }
    }
    out
}

/// Metric names an expression reads: identifiers outside strings, label matchers `{..}`, ranges
/// `[..]` and grouping lists (`by (..)` etc.), that are not functions, operators or keywords.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ];
    const LISTS: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];
    // Blank out strings, matchers and ranges, keeping positions.
    let mut flat = String::with_capacity(expr.len());
    let (mut depth, mut quote) = (0usize, None::<char>);
    for c in expr.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '{' | '[') => depth += 1,
            (None, '}' | ']') => depth = depth.saturating_sub(1),
            (None, c) if depth == 0 => {
                flat.push(c);
                continue;
            }
            _ => {}
        }
        flat.push(' ');
    }
    let b = flat.as_bytes();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_digit() || c == b'.' {
            // numbers and durations such as 0.99, 5m, 1d
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                i += 1;
            }
            continue;
        }
        if !(c.is_ascii_alphabetic() || c == b'_' || c == b':') {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
            i += 1;
        }
        let word = &flat[start..i];
        let mut j = i;
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        if LISTS.contains(&word) {
            // skip the label list that follows
            if j < b.len() && b[j] == b'(' {
                while j < b.len() && b[j] != b')' {
                    j += 1;
                }
                i = j;
            }
        } else if !(KEYWORDS.contains(&word) || (j < b.len() && b[j] == b'(')) {
            names.insert(word.to_string());
        }
    }
    names
}

#[test]
fn metric_names_are_read_out_of_expressions() {
    let n = metric_names(
        r#"histogram_quantile(0.99, sum by (le) (rate(cvgate_upstream_response_seconds_bucket{x="a b"}[5m])))"#,
    );
    assert_eq!(n.into_iter().collect::<Vec<_>>(), ["cvgate_upstream_response_seconds_bucket"]);
    let n = metric_names("x > 5 * scalar(quantile(0.5, x)) and y offset 1d > 800 or absent(up{job=\"cvgate\"})");
    assert_eq!(n.into_iter().collect::<Vec<_>>(), ["up", "x", "y"]);
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// GET `uri` from a plain-HTTP server on loopback; status and body.
async fn http_get(addr: SocketAddr, uri: &str) -> (u16, String) {
    let mut s = plain_connect(addr).await;
    let r = s.send(get(uri, false, &[])).await;
    let status = r.status().as_u16();
    let (_, b) = body_bytes(r).await;
    (status, String::from_utf8_lossy(&b).into_owned())
}

async fn metrics_text(p: &Proxy) -> String {
    let (status, body) = http_get(p.ops, "/metrics").await;
    assert_eq!(status, 200);
    body
}

/// Requests that make every dashboard panel non-empty (see the module comment).
const TRAFFIC_CONFIG: &str = r#"
audit: { sink: file, path: audit.log }
quota:
  scopes:
    account:
      horizons:
        hour: { budget: 30, window: 1h }
    org:
      shadow: true
      horizons:
        day: { budget: 5, window: 24h }
"#;

async fn make_traffic(p: &Proxy) {
    let t = token(p, "acct-1", "12345678");
    let auth = bearer(&t);
    let h = [("authorization", auth.as_str())];
    let mut s = plain_connect(p.plain).await;
    for uri in [
        "/api/v1/cvs?size=10",          // allowed; the org scope (shadow) would reject
        "/api/v1/cvs/cv-1",             // allowed, 1 CV
        "/api/v1/cvs/export?limit=100", // cut at what is left of the account's 30
        "/api/v1/cvs?size=10",          // 429: account hour
    ] {
        let r = s.send(get(uri, false, &h)).await;
        let _ = body_bytes(r).await;
    }
    // auth failure
    let r = s.send(get("/api/v1/cvs?size=1", false, &[("authorization", "Bearer not-a-jwt")])).await;
    assert_eq!(r.status(), 401);
    let _ = body_bytes(r).await;
    // upstream timeout (the harness's response_header_timeout is 2 s): 504 and an upstream error
    let t2 = token(p, "acct-2", "23456789");
    let r = s.send(get("/api/v1/cvs?size=1&header_delay_ms=3000", false, &[("authorization", &bearer(&t2))])).await;
    assert_eq!(r.status(), 504);
    let _ = body_bytes(r).await;
    // an answer in another content type: charged in full, counted as uncertain
    let r = s.send(get("/api/v1/cvs?size=1&format=csv", false, &[("authorization", &bearer(&t2))])).await;
    assert_eq!(r.status(), 200);
    let _ = body_bytes(r).await;
    // a block through the admin path (cvgate_blocks_created_total)
    let now = cvgate::clock::Clock::now(&*p.running.shared.clock);
    p.running
        .shared
        .block(cvgate::policy::blocks::Block {
            scope: cvgate::policy::blocks::BlockScope::Account,
            key: "acct-3".into(),
            reason: "monitoring test".into(),
            source: "manual".into(),
            created: now,
            until: None,
        })
        .unwrap();
    // a pause (and its end), and a refused reload
    p.running.shared.set_paused("vacancies", true);
    p.running.shared.set_paused("vacancies", false);
    let good = std::fs::read_to_string(&p.config_path).unwrap();
    std::fs::write(&p.config_path, "listen: { plain: nowhere }\n").unwrap();
    assert!(p.running.shared.reload().is_err());
    std::fs::write(&p.config_path, good).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_the_live_metrics() {
    let mock = start_mock().await;
    let p = start_proxy(&format!("http://{mock}"), TRAFFIC_CONFIG).await;
    make_traffic(&p).await;
    let text = metrics_text(&p).await;
    let mut child = tool("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}\n--- /metrics ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    p.running.shutdown().await;
}

/// A Prometheus server of our own; killed (by its pid) when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Start it scraping `target` every second, with alerts.yml loaded; wait until ready.
    async fn start(target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\n\
             rule_files: [\"{rules}\"]\n\
             scrape_configs:\n  - job_name: cvgate\n    static_configs: [{{ targets: [\"{target}\"] }}]\n",
            rules = deploy("prometheus/alerts.yml").display()
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        // A free loopback port: bind 0, read it, release it for Prometheus.
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = tool("prometheus")
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let prom = Prometheus { child, addr, dir };
        for _ in 0..120 {
            if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(1), async {
                match tokio::net::TcpStream::connect(addr).await {
                    Ok(_) => Ok(http_get(addr, "/-/ready").await.0),
                    Err(e) => Err(e),
                }
            })
            .await
            {
                if s == 200 {
                    return prom;
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("prometheus did not become ready:\n{}", prom.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// Run an instant query; the parsed answer.
    async fn query(&self, q: &str) -> Value {
        let (_, body) = http_get(self.addr, &format!("/api/v1/query?query={}", urlencode(q))).await;
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
    }
}

fn has_data(v: &Value) -> bool {
    v["status"] == "success"
        && match v["data"]["resultType"].as_str() {
            Some("vector" | "matrix") => v["data"]["result"].as_array().is_some_and(|a| !a.is_empty()),
            Some("scalar" | "string") => true,
            _ => false,
        }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_finds_data_for_every_dashboard_and_alert_expression() {
    let dashboard = dashboard_exprs();
    let alerts = alert_exprs();
    assert!(
        dashboard.len() >= 10 && alerts.len() >= 6,
        "parsed {} panels' and {} alerts' exprs",
        dashboard.len(),
        alerts.len()
    );
    let names: BTreeSet<String> =
        dashboard.iter().chain(alerts.iter().map(|(_, e)| e)).flat_map(|e| metric_names(e)).collect();
    assert!(names.contains("cvgate_cvs_delivered_total") && names.contains("up"), "{names:?}");

    let mock = start_mock().await;
    let p = start_proxy(&format!("http://{mock}"), TRAFFIC_CONFIG).await;
    let prom = Prometheus::start(p.ops).await;
    make_traffic(&p).await;

    // Every name (but Prometheus's own `up`) is exported by cvgate: histogram series by their
    // `_bucket`/`_sum`/`_count` names, as PromQL uses them.
    let text = metrics_text(&p).await;
    let exported: BTreeSet<&str> =
        text.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split(['{', ' ']).next()).collect();
    for n in names.iter().filter(|n| *n != "up") {
        assert!(exported.contains(n.as_str()), "{n} is not in cvgate's /metrics");
    }

    // Poll (bounded: 90 rounds of ~0.5 s) until every check passes; report what never did.
    let mut pending: Vec<String> = Vec::new();
    for _round in 0..90 {
        pending.clear();
        for e in &dashboard {
            let v = prom.query(e).await;
            if !has_data(&v) {
                pending.push(format!("dashboard: {e}\n  → {v}"));
            }
        }
        for (name, e) in &alerts {
            let v = prom.query(e).await;
            if v["status"] != "success" {
                pending.push(format!("alert {name} is not a valid query: {e}\n  → {v}"));
            }
        }
        for n in &names {
            let v = prom.query(&format!("{{__name__=\"{n}\"}}")).await;
            if !has_data(&v) {
                pending.push(format!("metric {n} has no series in Prometheus"));
            }
        }
        let (_, rules) = http_get(prom.addr, "/api/v1/rules").await;
        let rules: Value = serde_json::from_str(&rules).unwrap();
        let mut evaluated = 0;
        for g in rules["data"]["groups"].as_array().into_iter().flatten() {
            for r in g["rules"].as_array().into_iter().flatten() {
                match r["health"].as_str() {
                    Some("ok") => evaluated += 1,
                    h => pending.push(format!("rule {} health {h:?}: {}", r["name"], r["lastError"])),
                }
            }
        }
        if evaluated != alerts.len() {
            pending.push(format!("{evaluated} of {} rules evaluated ok", alerts.len()));
        }
        if pending.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(pending.is_empty(), "never satisfied:\n{}\n--- prometheus log ---\n{}", pending.join("\n"), prom.log());
    drop(prom);
    p.running.shutdown().await;
}
