//! Issue 9, deployment: the files under `deploy/` checked with what runs here (no container
//! engine): every YAML parses, the Kubernetes objects are complete and refer to each other
//! correctly, the probes hit paths the real ops port answers, the embedded configs pass
//! `Config::parse` and keep the repo's policy, the compose file's references exist, the
//! Dockerfile is multi-stage and non-root, `systemd-analyze verify` accepts the unit and
//! `kubectl kustomize` renders deploy/k8s. Both tools are required, not optional: a missing one
//! fails its test with the Debian package to install (`scripts/test.sh` installs them).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;
use cvgate::config::Config;
use serde_yaml_ng::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn deploy() -> PathBuf {
    repo().join("deploy")
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every document of a YAML file (`---`-separated).
fn docs(p: &Path) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml_ng::Deserializer::from_str(&read(p))
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .filter(|v| !v.is_null())
        .collect()
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            yaml_files(&p, out);
        } else if matches!(p.extension().and_then(|x| x.to_str()), Some("yml" | "yaml")) {
            out.push(p);
        }
    }
}

/// `v[a][b]…` as text (panics with the path when missing).
fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for k in path {
        cur = cur.get(*k).unwrap_or_else(|| panic!("missing {}", path.join(".")));
    }
    cur.as_str().unwrap_or_else(|| panic!("{} is not a string: {cur:?}", path.join(".")))
}

/// A container's ports: name → containerPort.
fn container_ports(c: &Value) -> BTreeMap<&str, u64> {
    c["ports"].as_sequence().unwrap().iter().map(|p| (s(p, &["name"]), p["containerPort"].as_u64().unwrap())).collect()
}

/// The Kubernetes objects in deploy/k8s, by kind (one object per kind here).
fn k8s() -> BTreeMap<String, Value> {
    let mut files = Vec::new();
    yaml_files(&deploy().join("k8s"), &mut files);
    let mut out = BTreeMap::new();
    for f in files.iter().filter(|f| !f.ends_with("kustomization.yaml")) {
        for d in docs(f) {
            let kind = s(&d, &["kind"]).to_string();
            assert!(out.insert(kind.clone(), d).is_none(), "two {kind} objects");
        }
    }
    out
}

/// Validate a config text as cvgate would, with `extra_files` written beside it.
fn parse_config(text: &str, name: &str, extra_files: &[(&str, &str)]) -> Config {
    let dir = tempfile::tempdir().unwrap();
    for (f, body) in extra_files {
        std::fs::write(dir.path().join(f), body).unwrap();
    }
    Config::parse(text, name, dir.path()).unwrap_or_else(|e| panic!("{name} is not a valid cvgate config:\n{e}"))
}

/// The repo's config.yaml, the reference policy.
fn repo_config() -> Config {
    Config::load(&repo().join("config.yaml")).unwrap_or_else(|e| panic!("config.yaml:\n{e}"))
}

/// Deployment configs may change addresses, identity keys, the store and file locations, but
/// not the policy: routes, closure windows, budgets, limits and block rules stay the repo's.
/// Compared after validation (defaults filled in, durations parsed) through `Debug`; the
/// budgets as written (their validated form holds hash maps), without `overrides.orgs`, which
/// names config.yaml's demo staffing agency.
fn assert_same_policy(c: &Config, what: &str) {
    let r = repo_config();
    for (key, got, want) in [
        ("routes", format!("{:?}", c.routes), format!("{:?}", r.routes)),
        ("closure", format!("{:?}", c.closure), format!("{:?}", r.closure)),
        ("limits", format!("{:?}", c.limits), format!("{:?}", r.limits)),
        ("blocks.rules", format!("{:?}", c.blocks.rules), format!("{:?}", r.blocks.rules)),
        ("paused", format!("{:?}", c.paused_groups), format!("{:?}", r.paused_groups)),
    ] {
        assert_eq!(got, want, "{what}: `{key}` differs from config.yaml");
    }
    let budgets = |c: &Config| {
        let mut v = serde_json::to_value(&c.raw.quota).unwrap();
        v["overrides"].as_object_mut().unwrap().remove("orgs");
        v
    };
    assert_eq!(budgets(c), budgets(&r), "{what}: `quota` differs from config.yaml's");
}

#[test]
fn every_yaml_file_under_deploy_parses() {
    let mut files = Vec::new();
    yaml_files(&deploy(), &mut files);
    assert!(files.len() >= 8, "expected the compose, k8s and prometheus files, found {files:?}");
    for f in &files {
        assert!(!docs(f).is_empty(), "{} is empty", f.display());
    }
}

#[test]
fn k8s_objects_are_complete_and_refer_to_each_other() {
    let objs = k8s();
    for kind in ["Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "HorizontalPodAutoscaler"] {
        let o = objs.get(kind).unwrap_or_else(|| panic!("no {kind} in deploy/k8s"));
        assert!(!s(o, &["apiVersion"]).is_empty());
        assert!(!s(o, &["metadata", "name"]).is_empty(), "{kind} without a name");
    }
    let dep = &objs["Deployment"];
    let name = s(dep, &["metadata", "name"]);
    let pod_labels = &dep["spec"]["template"]["metadata"]["labels"];
    assert_eq!(&dep["spec"]["selector"]["matchLabels"], pod_labels, "Deployment selector");
    assert_eq!(&objs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"], pod_labels, "PDB selector");
    assert_eq!(&objs["Service"]["spec"]["selector"], pod_labels, "Service selector");
    let hpa = &objs["HorizontalPodAutoscaler"]["spec"];
    assert_eq!(s(hpa, &["scaleTargetRef", "kind"]), "Deployment");
    assert_eq!(s(hpa, &["scaleTargetRef", "name"]), name);
    assert!(hpa["minReplicas"].as_u64().unwrap() >= 2, "one replica cannot survive a drain");

    let pod = &dep["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let ports = container_ports(c);
    for p in objs["Service"]["spec"]["ports"].as_sequence().unwrap() {
        let target = s(p, &["targetPort"]);
        assert!(ports.contains_key(target), "Service targetPort {target} is not a container port");
    }
    // Hardened and bounded.
    assert_eq!(pod["securityContext"]["runAsNonRoot"], Value::Bool(true));
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], Value::Bool(true));
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], Value::Bool(false));
    for r in ["cpu", "memory"] {
        assert!(c["resources"]["limits"].get(r).is_some(), "no {r} limit");
        assert!(c["resources"]["requests"].get(r).is_some(), "no {r} request");
    }
    // Volumes and env refer to the ConfigMap and Secret that exist, by keys they hold.
    let cm = &objs["ConfigMap"];
    assert!(!objs.contains_key("Secret"), "a Secret in deploy/k8s would be re-applied over the real one");
    let example = docs(&deploy().join("k8s-secret.example.yaml"));
    let secret = &example[0];
    let secret_keys = &secret["stringData"];
    for v in pod["volumes"].as_sequence().unwrap() {
        if let Some(m) = v.get("configMap") {
            assert_eq!(s(m, &["name"]), s(cm, &["metadata", "name"]));
        }
        if let Some(m) = v.get("secret") {
            assert_eq!(s(m, &["secretName"]), s(secret, &["metadata", "name"]));
            for item in m["items"].as_sequence().unwrap() {
                assert!(secret_keys.get(s(item, &["key"])).is_some(), "Secret has no {:?}", item["key"]);
            }
        }
    }
    for e in c["env"].as_sequence().unwrap() {
        if let Some(r) = e.get("valueFrom").and_then(|v| v.get("secretKeyRef")) {
            assert_eq!(s(r, &["name"]), s(secret, &["metadata", "name"]));
            assert!(secret_keys.get(s(r, &["key"])).is_some(), "Secret has no {:?}", r["key"]);
        }
    }
    // Every file the config names is mounted: the TLS pair from the Secret, blocks on a volume.
    let cfg = configmap_config();
    let mounts: Vec<&str> = c["volumeMounts"].as_sequence().unwrap().iter().map(|m| s(m, &["mountPath"])).collect();
    let (cert, key) = cfg.listen.tls.as_ref().unwrap().files.clone().expect("a real certificate in production");
    let blocks = cfg.blocks.file.clone().expect("blocks persisted");
    for f in [&cert, &key, &blocks] {
        assert!(mounts.iter().any(|m| f.starts_with(m)), "{} is on no volume mount {mounts:?}", f.display());
    }
    // The admin token comes from the environment the Secret fills.
    let token_env = &cfg.raw.admin.token_env;
    assert!(c["env"].as_sequence().unwrap().iter().any(|e| s(e, &["name"]) == token_env), "{token_env} not set");
    // Long enough to drain: terminationGracePeriodSeconds covers limits.shutdown_grace.
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(grace > cfg.limits.shutdown_grace.as_secs(), "terminationGracePeriodSeconds {grace} ≤ shutdown_grace");
}

fn configmap_config() -> Config {
    let objs = k8s();
    let data = &objs["ConfigMap"]["data"];
    let text = s(data, &["config.yaml"]);
    let jwks = s(data, &["jwks.json"]);
    parse_config(text, "deploy/k8s/configmap.yaml:config.yaml", &[("jwks.json", jwks)])
}

#[test]
fn the_configmap_config_is_valid_and_keeps_the_repo_policy() {
    let cfg = configmap_config();
    assert_same_policy(&cfg, "ConfigMap");
    assert!(cfg.raw.identity.dev_hs256.is_none(), "the dev HS256 key must not reach production");
    assert!(!cfg.raw.dev_mode, "dev_mode must not reach production");
    assert!(cfg.raw.identity.jwks_file.is_some(), "no identity provider keys");
    assert!(cfg.listen.plain.is_none(), "plain HTTP open in production");
    let metrics = cfg.listen.metrics.expect("ops port");
    assert!(metrics.ip().is_unspecified(), "kubelet cannot reach the ops port on {metrics}");
    assert!(cfg.listen.admin.is_none_or(|a| a.ip().is_loopback()), "admin API reachable from the network");
    assert!(cfg.blocks.file.as_ref().is_some_and(|f| f.is_absolute()), "blocks file inside the read-only config mount");
    assert_eq!(cfg.raw.store.kind, "redis", "replicas must share quotas");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probes_point_at_the_ops_port_and_paths_cvgate_answers() {
    let objs = k8s();
    let c = &objs["Deployment"]["spec"]["template"]["spec"]["containers"][0];
    let ports = container_ports(c);
    let ops_port = u64::from(configmap_config().listen.metrics.unwrap().port());
    let mut paths = Vec::new();
    for (probe, want) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")] {
        let get = &c[probe]["httpGet"];
        if probe != "startupProbe" {
            assert!(get.is_mapping(), "no {probe}");
        }
        if !get.is_mapping() {
            continue;
        }
        let port = match &get["port"] {
            Value::Number(n) => n.as_u64().unwrap(),
            Value::String(name) => ports[name.as_str()],
            other => panic!("{probe} port {other:?}"),
        };
        assert_eq!(port, ops_port, "{probe} is not on the ops port");
        assert_eq!(s(get, &["path"]), want, "{probe} path");
        paths.push(want);
    }
    // The Dockerfile's HEALTHCHECK too.
    let dockerfile = read(&deploy().join("Dockerfile"));
    let hc = dockerfile.lines().skip_while(|l| !l.starts_with("HEALTHCHECK")).take(2).collect::<String>();
    assert!(hc.contains(&format!("/{ops_port}")) && hc.contains("/healthz"), "HEALTHCHECK: {hc}");
    // And the real ops port answers those paths with 200 (upstream up, so /readyz too).
    let mock = start_mock().await;
    let p = start_proxy(&format!("http://{mock}"), "").await;
    for path in paths {
        let mut s = plain_connect(p.ops).await;
        let r = s.send(get(path, false, &[])).await;
        assert_eq!(r.status(), 200, "GET {path} on the ops port");
    }
    p.running.shutdown().await;
}

#[test]
fn the_compose_file_references_files_that_exist_and_a_valid_config() {
    let path = deploy().join("docker-compose.yml");
    let compose = docs(&path).remove(0);
    let services = compose["services"].as_mapping().unwrap();
    for name in ["cvgate", "redis", "prometheus", "grafana", "mock-cv-api"] {
        assert!(services.contains_key(name), "no {name} service");
    }
    let base = deploy();
    for (name, svc) in services {
        let name = name.as_str().unwrap();
        if let Some(b) = svc.get("build") {
            let ctx = base.join(s(b, &["context"]));
            let file = ctx.join(s(b, &["dockerfile"]));
            assert!(file.is_file(), "{name}: Dockerfile {} missing", file.display());
            assert!(ctx.join("Cargo.toml").is_file(), "{name}: build context is not the repo root");
        }
        for v in svc.get("volumes").and_then(Value::as_sequence).into_iter().flatten() {
            let src = v.as_str().unwrap().split(':').next().unwrap();
            if src.starts_with('.') || src.starts_with('/') {
                assert!(base.join(src).exists(), "{name}: bind source {src} does not exist");
            }
        }
        for c in svc.get("configs").and_then(Value::as_sequence).into_iter().flatten() {
            let src = s(c, &["source"]);
            assert!(compose["configs"].get(src).is_some(), "{name}: config {src} not defined");
        }
        for d in svc.get("depends_on").into_iter().flat_map(|d| match d {
            Value::Sequence(v) => v.iter().map(|x| x.as_str().unwrap().to_string()).collect::<Vec<_>>(),
            Value::Mapping(m) => m.keys().map(|k| k.as_str().unwrap().to_string()).collect(),
            _ => vec![],
        }) {
            assert!(services.contains_key(d.as_str()), "{name} depends on unknown service {d}");
        }
    }
    // Files mounted from deploy/ that other parts of the repo own.
    for f in ["prometheus/prometheus.yml", "prometheus/alerts.yml", "grafana/cvgate.json"] {
        assert!(base.join(f).is_file(), "deploy/{f} missing");
    }
    // Inline configs: cvgate's parses and keeps the policy; Grafana's provisioning is YAML.
    let text = s(&compose, &["configs", "cvgate_config", "content"]);
    let cfg = parse_config(text, "docker-compose.yml:configs.cvgate_config", &[]);
    assert_same_policy(&cfg, "docker-compose cvgate_config");
    assert_eq!(cfg.upstream.authority.as_str(), "mock-cv-api:8081", "cvgate must front the mock service");
    let url = cfg.raw.store.redis.url.clone();
    assert!(url.contains("//redis:"), "store URL {url} is not the redis service");
    for c in ["grafana_datasource", "grafana_dashboards"] {
        let v: Value = serde_yaml_ng::from_str(s(&compose, &["configs", c, "content"])).unwrap();
        assert_eq!(v["apiVersion"].as_u64(), Some(1), "{c}");
    }
}

#[test]
fn the_dockerfile_is_multi_stage_and_runs_as_non_root() {
    let text = read(&deploy().join("Dockerfile"));
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.starts_with('#')).collect();
    let froms: Vec<&str> = lines.iter().copied().filter(|l| l.starts_with("FROM ")).collect();
    assert!(froms.len() >= 2, "not multi-stage: {froms:?}");
    assert!(text.contains("COPY --from="), "the runtime stage does not copy from the builder");
    // The USER in force in the last stage is neither root nor uid 0.
    let last_from = lines.iter().rposition(|l| l.starts_with("FROM ")).unwrap();
    let user = lines[last_from..].iter().rev().find(|l| l.starts_with("USER ")).expect("no USER in the runtime stage");
    let who = user["USER ".len()..].split(':').next().unwrap().trim();
    assert!(who != "root" && who != "0", "runs as {who}");
    for needle in ["EXPOSE", "8443", "9090", "HEALTHCHECK", "\"serve\"", "/etc/cvgate/config.yaml"] {
        assert!(text.contains(needle), "Dockerfile lacks {needle}");
    }
    // What it COPYs from the context exists and is not filtered out by its .dockerignore.
    let ignore = read(&deploy().join("Dockerfile.dockerignore"));
    for l in lines.iter().filter(|l| l.starts_with("COPY ") && !l.contains("--from")) {
        let parts: Vec<&str> = l.split_whitespace().collect();
        for src in &parts[1..parts.len() - 1] {
            assert!(repo().join(src).exists(), "COPY source {src} missing");
            let allowed = ignore.lines().any(|i| i.trim().trim_start_matches('!').trim_end_matches('/') == *src);
            assert!(allowed, "COPY source {src} is excluded by Dockerfile.dockerignore");
        }
    }
}

#[test]
fn the_systemd_unit_is_sandboxed_and_verifies() {
    let path = deploy().join("systemd/cvgate.service");
    let unit = read(&path);
    for needle in [
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "StateDirectory=cvgate",
        "CapabilityBoundingSet=\n",
        "PrivateTmp=yes",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(unit.contains(needle), "unit lacks {needle:?}");
    }
    assert!(unit.contains("DynamicUser=yes") || unit.contains("\nUser="), "runs as root");
    let out = tool("systemd-analyze", &["--version"], "systemd");
    assert!(out.status.success(), "systemd-analyze --version: {}", String::from_utf8_lossy(&out.stderr));
    // verify checks that ExecStart's binary exists: point it at the one cargo just built.
    let installed = "/usr/local/bin/cvgate";
    for exec in ["ExecStartPre=", "ExecStart="] {
        assert!(unit.contains(&format!("\n{exec}{installed} ")), "{exec} does not run {installed}");
    }
    let built = unit.replace(installed, env!("CARGO_BIN_EXE_cvgate"));
    assert!(!built.lines().any(|l| l.starts_with("Exec") && l.contains(installed)), "{installed} left in:\n{built}");
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("cvgate.service");
    std::fs::write(&copy, built).unwrap();
    let out = std::process::Command::new("systemd-analyze").arg("verify").arg(&copy).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    // Unknown keys are only warnings to systemd; here they are errors (a typo drops a sandbox).
    assert!(out.status.success() && !err.contains("Unknown") && !err.contains("Failed to parse"), "verify:\n{err}");
    // The sandbox's score (0 = locked down … 10 = exposed), computed offline (systemd ≥ 250;
    // Debian 12 has 252).
    let sec =
        std::process::Command::new("systemd-analyze").args(["security", "--offline=yes"]).arg(&copy).output().unwrap();
    let text = String::from_utf8_lossy(&sec.stdout);
    let level = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .and_then(|l| l.split(':').nth(1)?.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no exposure level from `systemd-analyze security --offline=yes`:\n{text}"));
    println!("systemd-analyze security: exposure {level}");
    assert!(level <= 2.0, "exposure level {level} (want ≤ 2.0)");
}

/// Run `cmd args`; panics naming the Debian package to install when `cmd` is not there.
fn tool(cmd: &str, args: &[&str], debian_package: &str) -> std::process::Output {
    std::process::Command::new(cmd).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run `{cmd}` ({e}): install Debian's `{debian_package}` package (scripts/test.sh does)")
    })
}

/// `kubectl kustomize` (what `kubectl apply -k deploy/k8s` renders) accepts the kustomization and
/// emits exactly the objects of deploy/k8s: every file is listed, none twice, none missing.
/// Any kubectl since 1.14 embeds kustomize; Debian 12's `kubernetes-client` (kubectl 1.20) does.
#[test]
fn kustomize_renders_the_k8s_directory() {
    let dir = deploy().join("k8s");
    let out = tool("kubectl", &["kustomize", dir.to_str().unwrap()], "kubernetes-client");
    assert!(out.status.success(), "kubectl kustomize deploy/k8s:\n{}", String::from_utf8_lossy(&out.stderr));
    let rendered = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(rendered.path(), &out.stdout).unwrap();
    let ids = |objs: Vec<Value>| -> Vec<(String, String)> {
        let mut v: Vec<_> =
            objs.iter().map(|o| (s(o, &["kind"]).to_string(), s(o, &["metadata", "name"]).to_string())).collect();
        v.sort();
        v
    };
    let want = ids(k8s().into_values().collect());
    assert_eq!(want.len(), 5, "deploy/k8s: {want:?}");
    let got = docs(rendered.path());
    assert_eq!(ids(got.clone()), want, "kubectl kustomize deploy/k8s renders other objects than the files");
    // Issue 17: `apply -k` must never carry a Secret (its placeholders replaced the real one).
    assert!(got.iter().all(|o| s(o, &["kind"]) != "Secret"), "the kustomization renders a Secret");
}
