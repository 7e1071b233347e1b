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
//! Two cvgate replicas are scraped: one with the memory store, one whose quotas live in a private
//! `redis-server` that is killed (breaker, fallbacks, store errors), so the dashboard's `instance`
//! variable has two values and the Redis panels have data. Dashboard expressions are sent as
//! Grafana would send them (`$instance`, `$__rate_interval`, `$__range` substituted).
//!
//! Issue 17, first events: with every `for:` shortened, the very first refused reload, block,
//! organisation 429, restart-pending reload and quota-store failure each fire their alert in a
//! real Prometheus (counters are primed at zero, so the first event moves `increase()`); and the
//! dashboard's "CVs delivered" panels, evaluated over the test's window, equal the sum of
//! `cvgate_cvs_delivered_total` in `/metrics` over every route and tier (regression: the panel
//! once showed 378 of 1,731 CVs, missing the export route and the staffing tier).
//!
//! Needs `promtool` and `prometheus` (Debian package `prometheus`) and `redis-server`;
//! scripts/test.sh installs them. The test's Prometheus never uses a fixed port, so a system
//! daemon on 9090 does not matter.

mod common;
#[path = "common/redis.rs"]
mod redis_server;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use redis_server::RedisServer;
use serde_json::{json, Value};
use tokio::time::Instant;

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
    let mut out = Vec::new();
    walk(&dashboard(), &mut out);
    out
}

/// The Grafana dashboard, parsed.
fn dashboard() -> Value {
    let text = std::fs::read_to_string(deploy("grafana/cvgate.json")).unwrap();
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// The query of the dashboard's `instance` variable (`label_values(METRIC, instance)`).
const INSTANCE_VARIABLE: &str = "label_values(cvgate_build_info, instance)";

/// The metric of a `label_values(METRIC, LABEL)` variable query.
fn variable_metric(query: &str) -> &str {
    let args = query.strip_prefix("label_values(").expect("a label_values query");
    args.split(',').next().unwrap().trim()
}

/// `expr` as Grafana sends it to Prometheus: `$instance` as the multi-value regex of `instances`
/// (Grafana's format for a Prometheus data source: regex characters escaped with `\\` inside
/// the PromQL string, several values as `(a|b)`), `$__rate_interval` and `$__range` as given.
fn grafana_expr(expr: &str, instances: &[String], rate_interval: &str, range: &str) -> String {
    let escaped: Vec<String> = instances
        .iter()
        .map(|i| {
            i.chars().map(|c| if "\\^$*+?.()|[]{}/".contains(c) { format!("\\\\{c}") } else { c.to_string() }).collect()
        })
        .collect();
    let instance = match escaped.as_slice() {
        [one] => one.clone(),
        many => format!("({})", many.join("|")),
    };
    expr.replace("$__rate_interval", rate_interval).replace("$__range", range).replace("$instance", &instance)
}

#[test]
fn grafana_variables_are_substituted_as_grafana_does() {
    let e = r#"sum(rate(x{instance=~"$instance"}[$__rate_interval])) + sum(increase(x[$__range]))"#;
    let one = grafana_expr(e, &["127.0.0.1:9090".into()], "1m", "2h");
    assert_eq!(one, r#"sum(rate(x{instance=~"127\\.0\\.0\\.1:9090"}[1m])) + sum(increase(x[2h]))"#);
    let two = grafana_expr(r#"x{instance=~"$instance"}"#, &["a".into(), "b".into()], "1m", "1h");
    assert_eq!(two, r#"x{instance=~"(a|b)"}"#);
}

/// Every panel, rows included, flattened (a collapsed row keeps its panels inside it).
fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// Each `name{...}` selector of metric `name` in `expr`: the text between its braces, or `None`
/// for a bare name.
fn selectors<'a>(expr: &'a str, name: &str) -> Vec<Option<&'a str>> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut out = Vec::new();
    for (at, _) in expr.match_indices(name) {
        let before = expr[..at].chars().next_back();
        let after = &expr[at + name.len()..];
        if before.is_some_and(ident) || after.chars().next().is_some_and(ident) {
            continue; // part of a longer name
        }
        out.push(after.strip_prefix('{').map(|m| &m[..m.find('}').expect("closed matcher")]));
    }
    out
}

/// The contents of every `[...]` range in `expr`.
fn ranges(expr: &str) -> Vec<&str> {
    expr.split('[').skip(1).map(|r| &r[..r.find(']').expect("closed range")]).collect()
}

/// Issue 17: the dashboard can show one replica or several (`instance` variable, every selector
/// filtered by it), its rates follow the dashboard's interval (`$__rate_interval`), a fixed
/// window is named in its panel's title or description, and it still imports (unique ids,
/// panels inside the 24-column grid without overlapping, one data source variable).
#[test]
fn the_dashboard_filters_by_instance_and_names_its_fixed_windows() {
    let d = dashboard();
    let vars = d["templating"]["list"].as_array().unwrap();
    let v = vars.iter().find(|v| v["name"] == "instance").expect("an `instance` template variable");
    assert_eq!(v["type"], "query");
    assert_eq!(v["query"], INSTANCE_VARIABLE);
    assert_eq!((v["multi"].as_bool(), v["includeAll"].as_bool()), (Some(true), Some(true)), "{v}");
    assert_eq!(v["datasource"]["uid"], "${datasource}");

    let mut ids = BTreeSet::new();
    let mut cells: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    let mut problems = Vec::new();
    for p in panels(&d) {
        let id = p["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "panel id {id} used twice");
        let g = &p["gridPos"];
        let [x, y, w, h] =
            ["x", "y", "w", "h"].map(|k| g[k].as_u64().unwrap_or_else(|| panic!("panel {id} gridPos.{k}")));
        assert!(x + w <= 24 && w > 0 && h > 0, "panel {id} is outside the grid: {g}");
        for cx in x..x + w {
            for cy in y..y + h {
                if let Some(other) = cells.insert((cx, cy), id) {
                    panic!("panels {other} and {id} overlap at ({cx}, {cy})");
                }
            }
        }
        if p["type"] == "row" {
            continue;
        }
        let text = format!("{} {}", p["title"].as_str().unwrap_or(""), p["description"].as_str().unwrap_or(""));
        let targets = p["targets"].as_array().unwrap_or_else(|| panic!("panel {id} has no targets"));
        for t in targets {
            let ds = if t["datasource"].is_null() { &p["datasource"] } else { &t["datasource"] };
            assert_eq!(ds["uid"], "${datasource}", "panel {id}: data source");
            let e = t["expr"].as_str().unwrap_or_else(|| panic!("panel {id}: a target without expr"));
            for name in metric_names(e) {
                for m in selectors(e, &name) {
                    if !m.is_some_and(|m| m.contains(r#"instance=~"$instance""#)) {
                        problems.push(format!("panel {id}: {name} is not filtered by instance=~\"$instance\": {e}"));
                    }
                }
            }
            for r in ranges(e) {
                if !(r == "$__rate_interval" || r == "$__range" || text.contains(r)) {
                    problems.push(format!("panel {id}: fixed window [{r}] not named in its title or description: {e}"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// (alert name, expression) of every rule in alerts.yml.
fn alert_exprs() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for r in rules(&std::fs::read_to_string(deploy("prometheus/alerts.yml")).unwrap()) {
        let name = r.get("alert").or_else(|| r.get("record")).and_then(|n| n.as_str()).unwrap();
        out.push((name.to_string(), r["expr"].as_str().unwrap().trim().to_string()));
    }
    out
}

/// Every rule of a rules file's text, across its groups.
fn rules(text: &str) -> Vec<serde_yaml_ng::Value> {
    let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).unwrap();
    v["groups"].as_sequence().unwrap().iter().flat_map(|g| g["rules"].as_sequence().unwrap().clone()).collect()
}

#[test]
fn every_alert_has_a_severity_a_summary_and_a_description() {
    for r in rules(&std::fs::read_to_string(deploy("prometheus/alerts.yml")).unwrap()) {
        let Some(name) = r.get("alert").and_then(|n| n.as_str()) else { continue };
        let severity = r["labels"]["severity"].as_str();
        assert!(matches!(severity, Some("critical" | "warning" | "info")), "{name}: severity {severity:?}");
        for a in ["summary", "description"] {
            assert!(r["annotations"][a].as_str().is_some_and(|s| !s.trim().is_empty()), "{name} has no {a}");
        }
    }
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
guard:
  rules:
    - { name: spread-harvest, cohort: all, window: 1h, above: 1000000, steps: [alert, mask, pause], escalate_after: 15m, cool_down: 1h }
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
    /// Start it scraping `targets` (job `cvgate`) every second with the rule file `rules`,
    /// evaluated every second; wait until ready.
    async fn start(targets: &[SocketAddr], rules: &Path) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let config = format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\n\
             rule_files: [\"{rules}\"]\n\
             scrape_configs:\n  - job_name: cvgate\n    static_configs: [{{ targets: [{targets}] }}]\n",
            rules = rules.display(),
            targets = targets.join(", ")
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

    /// GET an API path; the parsed answer.
    async fn api(&self, path: &str) -> Value {
        let (_, body) = http_get(self.addr, path).await;
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
    }

    /// Run an instant query; the parsed answer.
    async fn query(&self, q: &str) -> Value {
        self.api(&format!("/api/v1/query?query={}", urlencode(q))).await
    }

    /// Run an instant query at `time` (Unix seconds, millisecond precision).
    async fn query_at(&self, q: &str, time: f64) -> Value {
        self.api(&format!("/api/v1/query?query={}&time={time:.3}", urlencode(q))).await
    }

    /// The one value of a query whose answer is a single sample or a scalar (`None` when empty).
    async fn value(&self, q: &str) -> Option<f64> {
        one_value(&self.query(q).await)
    }

    /// Values of the label `label` on series matching `matcher`: what Grafana asks for a
    /// `label_values(matcher, label)` variable.
    async fn label_values(&self, label: &str, matcher: &str) -> Vec<String> {
        let v = self.api(&format!("/api/v1/label/{label}/values?match[]={}", urlencode(matcher))).await;
        v["data"].as_array().into_iter().flatten().filter_map(|s| s.as_str().map(str::to_string)).collect()
    }

    /// Active alerts (pending or firing).
    async fn alerts(&self) -> Vec<Value> {
        self.api("/api/v1/alerts").await["data"]["alerts"].as_array().cloned().unwrap_or_default()
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

/// (labels, value) of each sample of an instant-vector answer.
fn samples(v: &Value) -> Vec<(BTreeMap<String, String>, f64)> {
    assert_eq!(v["status"], "success", "{v}");
    let sample = |s: &Value| s[1].as_str().and_then(|x| x.parse::<f64>().ok()).unwrap_or(f64::NAN);
    match v["data"]["resultType"].as_str() {
        Some("scalar") => vec![(BTreeMap::new(), sample(&v["data"]["result"]))],
        _ => v["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                let labels = r["metric"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect();
                (labels, sample(&r["value"]))
            })
            .collect(),
    }
}

fn one_value(v: &Value) -> Option<f64> {
    match samples(v).as_slice() {
        [] => None,
        [(_, x)] => Some(*x),
        many => panic!("expected one sample, got {many:?}"),
    }
}

/// `store:` of a replica whose quotas live in `redis`, falling back to its local share.
fn redis_store_yaml(redis: &RedisServer) -> String {
    format!(
        "store:\n  kind: redis\n  redis:\n    url: \"{}\"\n    timeout: 250ms\n    replicas: 2\n    \
         failure_policy: {{ default: fail_open_local }}\n    breaker: {{ failures: 3, probe_every: 300ms }}\n",
        redis.url()
    )
}

/// A cvgate replica with its quotas in `redis`.
async fn redis_replica(upstream: &str, redis: &RedisServer) -> Proxy {
    let (dir, cert) = cert_dir();
    let extra = format!("{}{}", identity_yaml(&[]), redis_store_yaml(redis));
    let yaml = test_yaml(upstream, dir.path(), &extra);
    start_proxy_in(dir, cert, &yaml).await
}

/// Kill `redis` under replica `p`, then ask `p` for CVs until its breaker is open (bounded:
/// 10 s). Every request is served from the local share (`fail_open_local`): fallbacks with
/// reason error, then breaker_open; store errors (reserve); the breaker gauge at 1.
async fn fail_the_store(p: &Proxy, redis: &mut RedisServer) {
    redis.kill();
    let t = token(p, "acct-redis", "34567890");
    let mut s = plain_connect(p.plain).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = s.send(get("/api/v1/cvs?size=2", false, &[("authorization", &bearer(&t))])).await;
        assert_eq!(r.status(), 200, "fail_open_local serves from the local share");
        let _ = body_bytes(r).await;
        let text = metrics_text(p).await;
        if metric_value(&text, "cvgate_quota_store_breaker_open", &[]) == 1.0 {
            return;
        }
        assert!(Instant::now() < deadline, "the breaker did not open within 10 s:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
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
    let names: BTreeSet<String> = dashboard
        .iter()
        .chain(alerts.iter().map(|(_, e)| e))
        .flat_map(|e| metric_names(e))
        .chain([variable_metric(INSTANCE_VARIABLE).to_string()])
        .collect();
    assert!(names.contains("cvgate_cvs_delivered_total") && names.contains("up"), "{names:?}");
    assert!(names.contains("cvgate_build_info"), "the instance variable's metric: {names:?}");

    let mock = start_mock().await;
    let p = start_proxy(&format!("http://{mock}"), TRAFFIC_CONFIG).await;
    let mut redis = RedisServer::start();
    let r = redis_replica(&format!("http://{mock}"), &redis).await;
    let prom = Prometheus::start(&[p.ops, r.ops], &deploy("prometheus/alerts.yml")).await;
    make_traffic(&p).await;
    fail_the_store(&r, &mut redis).await;
    // The `instance` variable lists both replicas; panels are queried with "All" selected.
    let mut instances = vec![p.ops.to_string(), r.ops.to_string()];
    instances.sort();

    // Every name (but Prometheus's own `up`) is exported by cvgate: histogram series by their
    // `_bucket`/`_sum`/`_count` names, as PromQL uses them.
    let text = format!("{}{}", metrics_text(&p).await, metrics_text(&r).await);
    let exported: BTreeSet<&str> =
        text.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split(['{', ' ']).next()).collect();
    for n in names.iter().filter(|n| *n != "up") {
        assert!(exported.contains(n.as_str()), "{n} is not in cvgate's /metrics");
    }

    // Poll (bounded: 90 rounds of ~0.5 s) until every check passes; report what never did.
    let mut pending: Vec<String> = Vec::new();
    for _round in 0..90 {
        pending.clear();
        let mut listed = prom.label_values("instance", "cvgate_build_info").await;
        listed.sort();
        if listed != instances {
            pending.push(format!("{INSTANCE_VARIABLE} lists {listed:?}, not {instances:?}"));
        }
        for e in &dashboard {
            let e = grafana_expr(e, &instances, "1m", "1h");
            let v = prom.query(&e).await;
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
        let rules = prom.api("/api/v1/rules").await;
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
    r.running.shutdown().await;
}

// ---- Issue 17: first events fire alerts; the CVs panel counts every route and tier ----------

const ADMIN_TOKEN: &str = "admin-token-for-the-monitoring-test-0123";

/// `text` with its one `from` replaced by `to` (panics unless `from` occurs exactly once).
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "expected {from:?} once in:\n{text}");
    text.replace(from, to)
}

/// A tiny day budget for default-tier organisations (30 CVs, so the first org 429 comes
/// quickly), a staffing-agency tier for KvK 87654321, the admin API on port 0, blocks on disk
/// and the default block rules (an organisation's first day-budget 429 blocks it).
fn first_events_yaml(upstream: &str, dir: &Path) -> String {
    let extra = format!(
        r#"{identity}admin: {{ token: "{ADMIN_TOKEN}" }}
blocks:
  file: "{blocks}"
quota:
  scopes:
    org:
      horizons:
        day: {{ budget: 30, window: 24h, fixed: true }}
  tiers:
    staffing_agency:
      org: {{ day: {{ budget: 100000, window: 24h, fixed: true }} }}
  overrides: {{ orgs: {{ "87654321": {{ tier: staffing_agency }} }} }}
"#,
        identity = identity_yaml(&[]),
        blocks = dir.join("blocks.json").display(),
    );
    replace_once(&test_yaml(upstream, dir, &extra), "  admin: null", "  admin: \"127.0.0.1:0\"")
}

/// alerts.yml with every `for:` shortened to 1 s, written to `dir`, so an alert fires within
/// seconds of its first event. Panics unless each rule with a `for:` had exactly one line
/// `for: <duration>` rewritten; promtool must accept the result.
fn rules_with_short_for(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(deploy("prometheus/alerts.yml")).unwrap();
    let with_for = rules(&text).iter().filter(|r| r.get("for").is_some()).count();
    let mut replaced = 0;
    let mut out = String::new();
    for line in text.lines() {
        let rest = line.trim_start();
        match rest.strip_prefix("for: ") {
            Some(d) => {
                let (n, unit) = d.split_at(d.len() - 1);
                assert!(n.parse::<u32>().is_ok() && "smhd".contains(unit), "not a duration: {line:?}");
                out.push_str(&line[..line.len() - rest.len()]);
                out.push_str("for: 1s\n");
                replaced += 1;
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    assert!(replaced > 0 && replaced == with_for, "{replaced} `for:` lines rewritten, {with_for} rules have `for`");
    let path = dir.join("alerts-short-for.yml");
    std::fs::write(&path, out).unwrap();
    let mut c = tool("promtool");
    c.args(["check", "rules"]).arg(&path);
    run_ok(c, "promtool check rules (short for)");
    path
}

/// GET `uri` with `token` on a fresh plain connection: the status (the body is read whole).
async fn get_with(p: &Proxy, uri: &str, token: &str) -> u16 {
    let mut s = plain_connect(p.plain).await;
    let r = s.send(get(uri, false, &[("authorization", &bearer(token))])).await;
    let status = r.status().as_u16();
    let _ = body_bytes(r).await;
    status
}

/// An alert we wait for: its name and labels it must carry.
struct Wanted {
    event: &'static str,
    alert: &'static str,
    labels: Vec<(&'static str, String)>,
}

impl Wanted {
    fn matches(&self, a: &Value) -> bool {
        a["labels"]["alertname"] == self.alert && self.labels.iter().all(|(k, v)| a["labels"][*k] == v.as_str())
    }
}

fn want(event: &'static str, alert: &'static str, labels: &[(&'static str, &str)]) -> Wanted {
    Wanted { event, alert, labels: labels.iter().map(|(k, v)| (*k, v.to_string())).collect() }
}

/// Sum of every `cvgate_cvs_delivered_total` series (every route, every tier) in a `/metrics`
/// text, and the same sum restricted to one label value.
fn delivered(text: &str, only: Option<(&str, &str)>) -> f64 {
    text.lines()
        .filter(|l| l.starts_with("cvgate_cvs_delivered_total{"))
        .filter(|l| only.is_none_or(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
        .sum()
}

/// Check the dashboard's "CVs delivered" panels for one replica: each target, evaluated by
/// Prometheus at the replica's last scrape over `range` (for `$__range`), sums to `want`, and a
/// per-route target shows each of `routes`. Evaluated at a scrape, a counter that starts at 0
/// inside the window has an exact increase (no extrapolation at either end).
async fn check_cvs_panels(prom: &Prometheus, instance: &str, want: f64, range: &str, routes: &[&str]) {
    // Wait (bounded: 20 s) until Prometheus has scraped the final counts.
    let total = format!("sum(cvgate_cvs_delivered_total{{instance=\"{instance}\"}})");
    let deadline = Instant::now() + Duration::from_secs(20);
    while prom.value(&total).await != Some(want) {
        assert!(
            Instant::now() < deadline,
            "Prometheus never saw {want} CVs on {instance}: {:?}",
            prom.value(&total).await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let at = format!("max(timestamp(cvgate_cvs_delivered_total{{instance=\"{instance}\"}}))");
    let at = prom.value(&at).await.unwrap();
    let d = dashboard();
    let cv_panels: Vec<&Value> = panels(&d)
        .into_iter()
        .filter(|p| p["title"].as_str().is_some_and(|t| t.starts_with("CVs delivered")))
        .collect();
    assert!(cv_panels.len() >= 2, "the dashboard's CVs delivered panels: per hour and in the time range");
    for p in cv_panels {
        for t in p["targets"].as_array().unwrap() {
            let e = grafana_expr(t["expr"].as_str().unwrap(), &[instance.to_string()], "1m", range);
            let got = samples(&prom.query_at(&e, at).await);
            let sum: f64 = got.iter().map(|(_, v)| v).sum();
            assert_eq!(sum, want, "panel {:?} target {}: {e} at {at} gave {got:?}", p["title"], t["refId"]);
            if e.contains("by (route)") {
                for route in routes {
                    let found = got.iter().find(|(l, _)| l.get("route").is_some_and(|r| r == route));
                    assert!(found.is_some_and(|(_, v)| *v > 0.0), "no {route} CVs per route: {got:?}");
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_events_fire_their_alerts_and_the_cvs_panels_count_every_route_and_tier() {
    let started = Instant::now();
    let up = format!("http://{}", start_mock().await);
    let (dir, cert) = cert_dir();
    let yaml = first_events_yaml(&up, dir.path());
    let p = start_proxy_in(dir, cert, &yaml).await;
    let mut redis = RedisServer::start();
    let r = redis_replica(&up, &redis).await;
    let rules_dir = tempfile::tempdir().unwrap();
    let prom = Prometheus::start(&[p.ops, r.ops], &rules_with_short_for(rules_dir.path())).await;
    let (pi, ri) = (p.ops.to_string(), r.ops.to_string());
    let t_start = prom.value("time()").await.unwrap();

    // Both replicas scraped, and every rule evaluated after that, before any event: the primed
    // zeros are Prometheus's first samples, and no wanted alert is active yet.
    let deadline = Instant::now() + Duration::from_secs(30);
    while prom.value("count(up{job=\"cvgate\"} == 1)").await != Some(2.0) {
        assert!(Instant::now() < deadline, "targets never up:\n{}", prom.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let scraped = prom.value("time()").await.unwrap();
    loop {
        let rules = prom.api("/api/v1/rules").await;
        let evaluated = rules["data"]["groups"].as_array().into_iter().flatten().all(|g| {
            g["lastEvaluation"]
                .as_str()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .is_some_and(|t| t.as_millisecond() as f64 / 1000.0 > scraped)
        });
        if evaluated {
            break;
        }
        assert!(Instant::now() < deadline, "rules never evaluated: {rules}\n{}", prom.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let wanted = [
        want("first organisation-budget 429", "CvgateOrgBudgetExhausted", &[("horizon", "day")]),
        want("first block (admin API)", "CvgateBlocked", &[("scope", "account"), ("source", "manual")]),
        want("first refused reload", "CvgateConfigReloadFailed", &[("instance", &pi)]),
        want("first refused reload", "CvgateConfigLastReloadFailed", &[("instance", &pi)]),
        want(
            "first rule block (org)",
            "CvgateBlocked",
            &[("scope", "org"), ("source", "rule:org-day-budget-exhausted")],
        ),
        want("reload with a start-only change", "CvgateConfigRestartPending", &[("instance", &ri)]),
        want("Redis down", "CvgateQuotaStoreBreakerOpen", &[("instance", &ri)]),
        want("Redis down", "CvgateQuotaStoreFallback", &[("instance", &ri), ("decision", "local")]),
        want("Redis down", "CvgateQuotaStoreErrors", &[("instance", &ri), ("op", "reserve")]),
    ];
    let active = prom.alerts().await;
    for w in &wanted {
        assert!(!active.iter().any(|a| w.matches(a)), "{} active before its event: {active:?}", w.alert);
    }
    let ready = started.elapsed();

    // CVs on every charged route, for a default-tier organisation and a staffing agency; then the
    // default-tier organisation's first 429 (its day budget is 30: 10 + 1 + 15 spent, 10 asked);
    // 97 CVs in all.
    let acct = token(&p, "acct-a", "11111111");
    let agency = token(&p, "agency-1", "87654321");
    for (uri, tok) in [
        ("/api/v1/cvs?size=10", &acct),
        ("/api/v1/cvs/cv-1", &acct),
        ("/api/v1/cvs/export?limit=15", &acct),
        ("/api/v1/cvs?size=20", &agency),
        ("/api/v1/cvs/cv-2", &agency),
        ("/api/v1/cvs/export?limit=50", &agency),
    ] {
        assert_eq!(get_with(&p, uri, tok).await, 200, "{uri}");
    }
    assert_eq!(get_with(&p, "/api/v1/cvs?size=10", &acct).await, 429, "the organisation's day budget");
    // The first block, through the admin API.
    let admin = p.running.admin_addr.unwrap();
    let block = json!({"scope": "account", "key": "acct-z", "reason": "monitoring: first block", "duration": "1h"});
    let (status, v) = admin_call(admin, ADMIN_TOKEN, "POST", "/v1/blocks", Some(block)).await;
    assert_eq!(status, 201, "{v}");
    // The first refused reload, through the admin API; the good file goes back (not reloaded).
    let good = std::fs::read_to_string(&p.config_path).unwrap();
    std::fs::write(&p.config_path, "listen: { plain: nowhere }\n").unwrap();
    let (status, v) = admin_call(admin, ADMIN_TOKEN, "POST", "/v1/reload", None).await;
    assert_eq!(status, 422, "{v}");
    std::fs::write(&p.config_path, good).unwrap();
    // The Redis replica: a good reload that changes a start-only setting, then Redis killed.
    let text = std::fs::read_to_string(&r.config_path).unwrap();
    std::fs::write(&r.config_path, replace_once(&text, "shutdown_grace: 10s", "shutdown_grace: 11s")).unwrap();
    let reloaded = r.running.shared.reload().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(reloaded.restart_pending, ["limits.shutdown_grace"]);
    fail_the_store(&r, &mut redis).await;
    let events = started.elapsed();

    // Poll (bounded: 60 s) until every wanted alert fires; note when each did.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut fired: Vec<Option<Duration>> = vec![None; wanted.len()];
    loop {
        let active = prom.alerts().await;
        for (w, f) in wanted.iter().zip(fired.iter_mut()) {
            if f.is_none() && active.iter().any(|a| w.matches(a) && a["state"] == "firing") {
                *f = Some(started.elapsed() - events);
            }
        }
        if fired.iter().all(Option::is_some) {
            break;
        }
        if Instant::now() >= deadline {
            let missing: Vec<String> = wanted
                .iter()
                .zip(&fired)
                .filter(|(_, f)| f.is_none())
                .map(|(w, _)| format!("{} {:?} ({})", w.alert, w.labels, w.event))
                .collect();
            panic!(
                "not firing after 60 s:\n{}\n--- active alerts ---\n{}\n--- prometheus log ---\n{}",
                missing.join("\n"),
                serde_json::to_string_pretty(&active).unwrap(),
                prom.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for (w, f) in wanted.iter().zip(&fired) {
        eprintln!(
            "{:>38} → {} {:?} firing {:.1} s after the events",
            w.event,
            w.alert,
            w.labels,
            f.unwrap().as_secs_f64()
        );
    }

    // The CVs delivered panels, per replica, against /metrics: every route and every tier.
    let text = metrics_text(&p).await;
    let total = delivered(&text, None);
    assert!(delivered(&text, Some(("route", "cv_export"))) > 0.0, "export CVs:\n{text}");
    assert!(delivered(&text, Some(("tier", "staffing_agency"))) > 0.0, "staffing CVs:\n{text}");
    assert_eq!(total, 97.0, "10 + 1 + 15 + 20 + 1 + 50 CVs:\n{text}");
    let now = prom.value("time()").await.unwrap();
    let range = format!("{}s", (now - t_start).ceil() as u64 + 30);
    check_cvs_panels(&prom, &pi, total, &range, &["cv_search", "cv_get", "cv_export"]).await;
    let redis_total = delivered(&metrics_text(&r).await, None);
    assert!(redis_total > 0.0);
    check_cvs_panels(&prom, &ri, redis_total, &range, &["cv_search"]).await;
    eprintln!(
        "timing: ready for events after {:.1} s, events took {:.1} s, whole test {:.1} s",
        ready.as_secs_f64(),
        (events - ready).as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    drop(prom);
    p.running.shutdown().await;
    r.running.shutdown().await;
}
