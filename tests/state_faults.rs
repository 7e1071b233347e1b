//! Issue 16, state that cannot be lost or corrupted, each bug reproduced as a fault test:
//! concurrent admin block calls with a SIGKILL in the middle, a refused reload, a block whose
//! persistence fails, an account id with `|` across two replicas, a block made while Redis is
//! down, and requests cancelled by the client after they were forwarded (one audit line each).

mod common;
#[path = "common/redis.rs"]
mod redis_server;

use std::time::Duration;

use common::*;
use redis_server::RedisServer;
use serde_json::{json, Value};

const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789";

/// An admin call with the test token.
async fn admin_at(addr: std::net::SocketAddr, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    admin_call(addr, ADMIN_TOKEN, method, path, body).await
}

/// The harness config with the admin API, no automatic rules, blocks in `blocks_file`.
fn admin_config(upstream: &str, dir: &std::path::Path, blocks_file: &str, extra: &str) -> String {
    let extra = format!(
        "{}admin: {{ token: \"{ADMIN_TOKEN}\" }}\nblocks:\n  file: \"{blocks_file}\"\n  rules: []\n{extra}",
        identity_yaml(&[])
    );
    let yaml = test_yaml(upstream, dir, &extra);
    assert_eq!(yaml.matches("  admin: null").count(), 1);
    yaml.replace("  admin: null", "  admin: \"127.0.0.1:0\"")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `cvgate serve` as a child process, killed (SIGKILL) on drop.
struct Serve(std::process::Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn serve(config: &std::path::Path, admin: u16) -> Serve {
    serve_logging(config, admin, None).await
}

/// `cvgate serve`, its warnings and errors as JSON lines into `log` when given.
async fn serve_logging(config: &std::path::Path, admin: u16, log: Option<&std::path::Path>) -> Serve {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_cvgate"));
    cmd.args(["serve", "--config"]).arg(config);
    match log {
        Some(path) => {
            cmd.args(["--log-format", "json"]).env("CVGATE_LOG", "warn");
            cmd.stderr(std::fs::File::create(path).unwrap());
        }
        None => {
            cmd.env("CVGATE_LOG", "error");
        }
    }
    let child = cmd.spawn().unwrap();
    let s = Serve(child);
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", admin)).await.is_ok() {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("cvgate serve did not open its admin port");
}

/// Issue 17: every admin change is one log line naming the caller (address and token name), the call and its answer;
/// a key with spaces and `key=value` text stays one quoted value (no forged fields).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_actions_are_logged_with_who_what_and_outcome() {
    let mock = start_mock().await;
    let (dir, _) = cert_dir();
    let admin = free_port();
    let blocks = dir.path().join("blocks.json").display().to_string();
    let yaml = admin_config(&format!("http://{mock}"), dir.path(), &blocks, "")
        .replace("  admin: \"127.0.0.1:0\"", &format!("  admin: \"127.0.0.1:{admin}\""));
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, &yaml).unwrap();
    let log = dir.path().join("stderr.jsonl");
    let proc = serve_logging(&config, admin, Some(&log)).await;
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], admin).into();
    let forged = "tf tiny scope=org key=12345678 reason=forged";
    let (st, _) = admin_at(addr, "POST", "/v1/blocks", Some(json!({"scope": "account", "key": forged}))).await;
    assert_eq!(st, 201);
    let (st, _) = admin_at(addr, "DELETE", "/v1/blocks/account/nobody", None).await;
    assert_eq!(st, 404);
    let (st, _) = admin_at(addr, "POST", "/v1/pauses/cv", None).await;
    assert_eq!(st, 200);
    let (st, _) = admin_at(addr, "GET", "/v1/blocks", None).await;
    assert_eq!(st, 200);
    drop(proc);
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let actions: Vec<&Value> = lines.iter().filter(|v| v["message"] == "admin action").collect();
    let seen: Vec<(String, String, u64)> = actions
        .iter()
        .map(|v| {
            (v["method"].as_str().unwrap().into(), v["path"].as_str().unwrap().into(), v["status"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("POST".into(), "\"/v1/blocks\"".into(), 201),
            ("DELETE".into(), "\"/v1/blocks/account/nobody\"".into(), 404),
            ("POST".into(), "\"/v1/pauses/cv\"".into(), 200),
        ],
        "{text}"
    );
    assert!(actions.iter().all(|v| v["peer"].as_str().unwrap().contains("127.0.0.1:")), "{text}");
    // Issue 20: and the name of the token that made it (`admin.token` is the token `admin`).
    assert!(actions.iter().all(|v| v["token"] == "\"admin\""), "{text}");
    // The block itself is logged with the whole key as one value.
    let blocked = lines.iter().find(|v| v["message"] == "blocked").expect("a block line");
    assert_eq!(blocked["key"].as_str().unwrap(), format!("{forged:?}"), "{text}");
    assert!(blocked.get("reason").is_some_and(|r| !r.as_str().unwrap().contains("forged")), "{text}");
}

/// The block keys a restart would read from `file` (and its journal), read the way a start does.
fn on_disk(file: &std::path::Path) -> Vec<String> {
    // Blocks made by these tests have no end: any time lists them.
    cvgate::policy::blocks::Blocks::open(Some(file.to_path_buf()))
        .unwrap()
        .list(daytime())
        .into_iter()
        .map(|b| b.key)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_admin_block_calls_never_corrupt_the_file_even_under_sigkill() {
    let mock = start_mock().await;
    let (dir, _) = cert_dir();
    let blocks = dir.path().join("state/blocks.json");
    let admin = free_port();
    let yaml = admin_config(&format!("http://{mock}"), dir.path(), &blocks.display().to_string(), "")
        .replace("  admin: \"127.0.0.1:0\"", &format!("  admin: \"127.0.0.1:{admin}\""));
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, &yaml).unwrap();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], admin).into();

    for round in 0..2 {
        let proc = serve(&config, admin).await;
        // 10 clients, 10 calls each: block, unblock, block again... every answer must be a success.
        let mut clients = Vec::new();
        for c in 0..10 {
            clients.push(tokio::spawn(async move {
                let mut statuses = Vec::new();
                for i in 0..10 {
                    let key = format!("acct-{round}-{c}-{}", i / 2);
                    let (st, _) = if i % 2 == 0 {
                        admin_at(
                            addr,
                            "POST",
                            "/v1/blocks",
                            Some(json!({"scope": "account", "key": key, "reason": "flood"})),
                        )
                        .await
                    } else {
                        admin_at(addr, "DELETE", &format!("/v1/blocks/account/{key}"), None).await
                    };
                    statuses.push(st);
                }
                statuses
            }));
        }
        // Meanwhile, the files on disk always parse: the snapshot whole, the journal line by line
        // (its last line may be on its way).
        let reader_path = blocks.clone();
        let journal_path = dir.path().join("state/blocks.json.journal");
        let reader = tokio::spawn(async move {
            let mut reads = 0;
            for _ in 0..200 {
                if let Ok(text) = std::fs::read_to_string(&reader_path) {
                    serde_json::from_str::<Value>(&text).unwrap_or_else(|e| panic!("torn block file ({e}): {text}"));
                    reads += 1;
                }
                if let Ok(text) = std::fs::read_to_string(&journal_path) {
                    for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
                        serde_json::from_str::<Value>(line)
                            .unwrap_or_else(|e| panic!("torn journal line ({e}): {line}"));
                    }
                    reads += 1;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            reads
        });
        for c in clients {
            let statuses = c.await.unwrap();
            assert!(statuses.iter().all(|s| *s == 200 || *s == 201), "{statuses:?}");
        }
        assert!(reader.await.unwrap() > 0, "the file was read");
        // Each client ends on an unblock except its last key... every key was blocked then
        // unblocked: nothing of this round is left. A last block, then SIGKILL at once.
        let (st, _) = admin_at(
            addr,
            "POST",
            "/v1/blocks",
            Some(json!({"scope": "account", "key": format!("keep-{round}"), "reason": "r"})),
        )
        .await;
        assert!(st == 200 || st == 201);
        drop(proc); // SIGKILL
                    // What a restart reads (the snapshot and the journal beside it).
        let left = on_disk(&blocks);
        let keys: Vec<&str> = left.iter().map(String::as_str).collect();
        assert!(keys.contains(&format!("keep-{round}").as_str()), "{keys:?}");
        assert!(
            !keys.iter().any(|k| k.starts_with(&format!("acct-{round}-"))),
            "an acknowledged unblock came back: {keys:?}"
        );
    }
    // It starts again from what the SIGKILL left.
    let _proc = serve(&config, admin).await;
    let (st, v) = admin_at(addr, "GET", "/v1/blocks", None).await;
    assert_eq!(st, 200);
    let keys: Vec<&str> = v["blocks"].as_array().unwrap().iter().map(|b| b["key"].as_str().unwrap()).collect();
    assert!(keys.contains(&"keep-0") && keys.contains(&"keep-1"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reload_leaves_the_block_list_where_it_was() {
    let mock = start_mock().await;
    let (dir, cert) = cert_dir();
    let first = dir.path().join("blocks.json");
    let yaml = admin_config(&format!("http://{mock}"), dir.path(), &first.display().to_string(), "");
    let p = start_proxy_in(dir, cert, &yaml).await;
    let addr = p.running.admin_addr.unwrap();
    // A config that validates but cannot be applied (its certificate file is missing), naming a
    // new block file: refused as a whole.
    let moved = p.dir.path().join("moved/blocks.json");
    let bad = yaml
        .replace(&first.display().to_string(), &moved.display().to_string())
        .replace(&p.dir.path().join("cert.pem").display().to_string(), "/nonexistent/cert.pem");
    assert_ne!(bad, yaml);
    std::fs::write(&p.config_path, &bad).unwrap();
    let (st, _) = admin_at(addr, "POST", "/v1/reload", None).await;
    assert_eq!(st, 422, "the reload is refused");
    let (st, _) =
        admin_at(addr, "POST", "/v1/blocks", Some(json!({"scope": "account", "key": "acct-9", "reason": "r"}))).await;
    assert!(st == 200 || st == 201, "blocking still works after a refused reload: {st}");
    assert!(!moved.exists(), "the refused reload moved the block list");
    assert!(on_disk(&first).contains(&"acct-9".to_string()));
    p.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_that_cannot_be_persisted_is_an_error_and_blocks_nothing() {
    let mock = start_mock().await;
    let (dir, cert) = cert_dir();
    // The block file's directory cannot be made: its parent is a regular file.
    std::fs::write(dir.path().join("not-a-dir"), "x").unwrap();
    let file = dir.path().join("not-a-dir/blocks.json");
    let yaml = admin_config(&format!("http://{mock}"), dir.path(), &file.display().to_string(), "");
    let p = start_proxy_in(dir, cert, &yaml).await;
    let addr = p.running.admin_addr.unwrap();
    let (st, _) =
        admin_at(addr, "POST", "/v1/blocks", Some(json!({"scope": "account", "key": "acct-1", "reason": "r"}))).await;
    assert!(st >= 400, "a block that was not persisted is not a success: {st}");
    let (_, v) = admin_at(addr, "GET", "/v1/blocks", None).await;
    assert_eq!(v["blocks"].as_array().map(Vec::len), Some(0), "{v}");
    let t = token(&p, "acct-1", "12345678");
    let mut s = plain_connect(p.plain).await;
    let r = s.send(get("/api/v1/cvs?size=1", false, &[("authorization", &bearer(&t))])).await;
    assert_eq!(r.status(), 200, "not blocked");
    p.running.shutdown().await;
}

async fn replica(mock: &str, redis: &str) -> Proxy {
    let (dir, cert) = cert_dir();
    let store = format!(
        "store:\n  kind: redis\n  redis:\n    url: \"{redis}\"\n    timeout: 250ms\n    replicas: 2\n    failure_policy: {{ default: fail_open_local }}\n    breaker: {{ failures: 3, probe_every: 300ms }}\n"
    );
    let yaml = admin_config(mock, dir.path(), &dir.path().join("blocks.json").display().to_string(), &store);
    start_proxy_in(dir, cert, &yaml).await
}

/// Status of a one-CV search by `account` on `p`, polled until it is `want` or 5 s pass.
async fn status_becomes(p: &Proxy, account: &str, want: u16) -> u16 {
    let t = token(p, account, "12345678");
    let mut last = 0;
    for _ in 0..50 {
        let mut s = plain_connect(p.plain).await;
        let r = s.send(get("/api/v1/cvs?size=1", false, &[("authorization", &bearer(&t))])).await;
        last = r.status().as_u16();
        let _ = body_bytes(r).await;
        if last == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_ids_with_a_bar_and_blocks_made_while_redis_is_down_reach_every_replica() {
    let mut redis = RedisServer::start();
    let mock = format!("http://{}", start_mock().await);
    let a = replica(&mock, &redis.url()).await;
    let b = replica(&mock, &redis.url()).await;
    let admin_a = a.running.admin_addr.unwrap();

    // `acct-1|x` blocked on A reaches B; unblocking `acct-1` (another account) leaves it blocked.
    let (st, _) =
        admin_at(admin_a, "POST", "/v1/blocks", Some(json!({"scope": "account", "key": "acct-1|x", "reason": "r"})))
            .await;
    assert!(st == 200 || st == 201);
    assert_eq!(status_becomes(&b, "acct-1|x", 403).await, 403, "the block with a | did not reach B");
    let (st, _) =
        admin_at(admin_a, "POST", "/v1/blocks", Some(json!({"scope": "account", "key": "acct-1", "reason": "r"})))
            .await;
    assert!(st == 200 || st == 201);
    assert_eq!(status_becomes(&b, "acct-1", 403).await, 403);
    let (st, _) = admin_at(admin_a, "DELETE", "/v1/blocks/account/acct-1", None).await;
    assert_eq!(st, 200);
    assert_eq!(status_becomes(&b, "acct-1", 200).await, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await; // two syncs
    assert_eq!(status_becomes(&b, "acct-1|x", 403).await, 403, "unblocking acct-1 also cleared acct-1|x");
    assert_eq!(status_becomes(&a, "acct-1|x", 403).await, 403);

    // Redis goes down; a block made on A meanwhile reaches B once Redis is back.
    redis.kill();
    let (st, _) =
        admin_at(admin_a, "POST", "/v1/blocks", Some(json!({"scope": "account", "key": "acct-down", "reason": "r"})))
            .await;
    assert!(st == 200 || st == 201, "a block is made locally while Redis is down: {st}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.restart();
    assert_eq!(status_becomes(&b, "acct-down", 403).await, 403, "the block made while Redis was down was lost");
    assert_eq!(status_becomes(&a, "acct-down", 403).await, 403, "A dropped its own block when Redis came back");
    a.running.shutdown().await;
    b.running.shutdown().await;
}

/// The client resets its HTTP/2 streams while the upstream is still thinking: every forwarded
/// request still gets exactly one audit line, `cancelled`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_cancelled_after_forwarding_each_get_one_audit_line() {
    let mock = start_mock().await;
    let extra = "audit:\n  sink: file\n  path: audit.log\nblocks: { rules: [] }\n";
    let p = start_proxy(&format!("http://{mock}"), extra).await;
    let t = token(&p, "acct-1", "12345678");
    let (_, mut s) = tls_connect(p.tls, &p.cert_pem, &[b"h2"]).await;
    let auth = bearer(&t);
    for i in 0..20 {
        let req = get(&format!("/api/v1/cvs?size=5&header_delay_ms=400&query=q{i}"), true, &[("authorization", &auth)]);
        // Dropping the response future resets the stream (RST_STREAM CANCEL) after ~100 ms.
        let r = tokio::time::timeout(Duration::from_millis(100), s.send(req)).await;
        assert!(r.is_err(), "the answer cannot have come yet");
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    p.running.shutdown().await;
    let text = std::fs::read_to_string(p.dir.path().join("audit.log")).unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 20, "{text}");
    for l in &lines {
        assert_eq!(l["decision"], "cancelled", "{l}");
        assert_eq!(l["status"], 499);
        assert_eq!(l["count"], "uncertain:cancelled");
        assert_eq!(l["delivered"], 5, "the reservation stays charged");
    }
}

/// A pause made at run time survives a restart (it used to be lost: the CV routes reopened).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_survives_a_restart() {
    let mock = start_mock().await;
    let (dir, cert) = cert_dir();
    let yaml = admin_config(
        &format!("http://{mock}"),
        dir.path(),
        &dir.path().join("state/blocks.json").display().to_string(),
        "",
    );
    let p = start_proxy_in(dir, cert, &yaml).await;
    let (st, _) = admin_at(p.running.admin_addr.unwrap(), "POST", "/v1/pauses/cv", None).await;
    assert_eq!(st, 200);
    p.running.shutdown().await;
    let p = start_proxy_in(p.dir, p.cert_pem, &yaml).await;
    assert_eq!(status_becomes(&p, "acct-1", 503).await, 503, "the pause was lost on restart");
    let (st, _) = admin_at(p.running.admin_addr.unwrap(), "DELETE", "/v1/pauses/cv", None).await;
    assert_eq!(st, 200);
    assert_eq!(status_becomes(&p, "acct-1", 200).await, 200);
    p.running.shutdown().await;
}

/// The memory store's spent budgets survive a restart (a deploy used to be a free refill: an
/// account at 600 of 1,000 came back with 1,000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spent_budgets_survive_a_restart_of_the_memory_store() {
    let mock = start_mock().await;
    let (dir, cert) = cert_dir();
    let quota = "quota:\n  scopes:\n    account:\n      horizons:\n        day: { budget: 1000, window: 24h }\nblocks: { rules: [] }\n";
    let yaml = test_yaml(&format!("http://{mock}"), dir.path(), &format!("{}{quota}", identity_yaml(&[])));
    let p = start_proxy_in(dir, cert, &yaml).await;
    let remaining = |parts: &http::response::Parts| -> u64 {
        header(parts, "ratelimit").split(';').find_map(|x| x.strip_prefix("r=")).unwrap().parse().unwrap()
    };
    let t = token(&p, "acct-1", "12345678");
    for q in ["a", "b", "c"] {
        let mut s = plain_connect(p.plain).await;
        let r = s.send(get(&format!("/api/v1/cvs?size=200&query={q}"), false, &[("authorization", &bearer(&t))])).await;
        let _ = body_bytes(r).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    p.running.shutdown().await;
    assert!(p.dir.path().join("state/quota.jsonl").exists(), "snapshot written at shutdown");
    let p = start_proxy_in(p.dir, p.cert_pem, &yaml).await;
    let t = token(&p, "acct-1", "12345678");
    let mut s = plain_connect(p.plain).await;
    let r = s.send(get("/api/v1/cvs?size=200&query=d", false, &[("authorization", &bearer(&t))])).await;
    let (parts, _) = body_bytes(r).await;
    assert_eq!(remaining(&parts), 200, "600 spent before the restart, 200 now");
    p.running.shutdown().await;
}
