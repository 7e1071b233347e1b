//! Requests per second through the proxy with the memory store vs the Redis store, and Redis
//! commands per request (from `INFO commandstats`). In-process: the mock CV API, the proxy and
//! the load generator share the machine (2 cores here), so the numbers compare the stores with
//! each other, not with production. Results go in docs/redis.md.
//!
//! `cargo bench --bench redis` (needs `redis-server` on PATH; starts its own on a free port).
//! `CVGATE_BENCH_SECS` (default 3) and `CVGATE_BENCH_CLIENTS` (default 32) tune the run.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/redis.rs"]
mod redis_server;

use std::time::Duration;

use common::*;
use tokio::time::Instant;

const QUOTA: &str = r#"quota:
  scopes:
    account: { horizons: { burst: { budget: 1000000000, window: 1m }, day: { budget: 1000000000, window: 24h } } }
    org: { horizons: { day: { budget: 1000000000, window: 24h } } }
    ip: { horizons: { hour: { budget: 1000000000, window: 1h }, day: { budget: 1000000000, window: 24h } } }
"#;

async fn proxy(upstream: &str, store: &str) -> Proxy {
    let (dir, cert) = cert_dir();
    let extra = format!("{}{QUOTA}{store}", identity_yaml(&[]));
    let yaml = test_yaml(upstream, dir.path(), &extra);
    start_proxy_in(dir, cert, &yaml).await
}

/// Requests completed per second by `clients` keep-alive HTTP/1.1 clients over `secs`.
async fn load(p: &Proxy, clients: usize, secs: u64) -> (f64, u64) {
    let end = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..clients {
        let token = token(p, &format!("acct-{}", i % 8), "12345678");
        let addr = p.plain;
        tasks.push(tokio::spawn(async move {
            let auth = bearer(&token);
            let mut s = plain_connect(addr).await;
            let mut n = 0u64;
            while Instant::now() < end {
                let r = s
                    .send(get(
                        &format!("/api/v1/cvs?size=1&page={}", n % 1_000 + 1),
                        false,
                        &[("authorization", &auth)],
                    ))
                    .await;
                assert_eq!(r.status(), 200);
                let _ = body_bytes(r).await;
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    (total as f64 / start.elapsed().as_secs_f64(), total)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let secs: u64 = std::env::var("CVGATE_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let clients: usize = std::env::var("CVGATE_BENCH_CLIENTS").ok().and_then(|s| s.parse().ok()).unwrap_or(32);
    let up = format!("http://{}", start_mock().await);

    let mem = proxy(&up, "").await;
    let _ = load(&mem, clients, 1).await; // warm-up
    let (mem_rps, _) = load(&mem, clients, secs).await;
    mem.running.shutdown().await;

    let redis = redis_server::RedisServer::start();
    let store = format!("store:\n  kind: redis\n  redis: {{ url: \"{}\", timeout: 50ms }}\n", redis.url());
    let rp = proxy(&up, &store).await;
    let _ = load(&rp, clients, 1).await;
    let (evalsha0, all0) = (redis.calls("evalsha"), redis.total_calls());
    let (redis_rps, n) = load(&rp, clients, secs).await;
    let (evalsha, all) = (redis.calls("evalsha") - evalsha0, redis.total_calls() - all0);
    rp.running.shutdown().await;

    println!("clients {clients}, {secs} s each, GET /api/v1/cvs?size=1 (1 CV reserved and counted) (9 buckets per request, every answer 200)");
    println!("memory store: {mem_rps:>8.0} req/s");
    println!("redis store:  {redis_rps:>8.0} req/s ({:.0}% of memory)", 100.0 * redis_rps / mem_rps);
    println!(
        "redis round trips per request: {:.3} (EVALSHA); commands per request incl. inside the script: {:.2}",
        evalsha as f64 / n as f64,
        all.saturating_sub(1) as f64 / n as f64 // the INFO call itself
    );
}
