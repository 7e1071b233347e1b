//! The Redis store against the memory store, through the whole proxy: requests per second, the
//! proxy's own CPU per request, and redis-server's own CPU and commands per charged request.
//! Results go in docs/redis.md ("Bench").
//!
//! In one process, on two runtimes: the proxy (`cvgate::server::start`, the full policy: JWT,
//! every quota scope with the shipped config.yaml's horizons — 12 buckets over 5 subjects —,
//! closure, blocks, masking checked, audit to a file) on its own tokio runtime whose threads
//! are named `cvgate-proxy`, and the load generator plus the mock CV API on another
//! (`bench-load`). The proxy's CPU is the sum of its threads' (and the audit writer's) run time
//! from `/proc/self/task/*/schedstat` (nanoseconds), before/after, ÷ requests. redis-server's
//! is `used_cpu_user + used_cpu_sys` from `INFO cpu`, its commands `INFO commandstats` (the
//! bench's own `INFO` calls left out), both ÷ charged requests (every answer is a 200 with 20
//! CVs reserved and counted: nothing to settle). As benches/e2e.sh does, the proxy is pinned to
//! one core and the load to the other (`taskset`); redis-server shares the proxy's core, as in
//! the issue's figures. Memory and Redis alternate round by round so that both see the same
//! machine noise; the summary gives medians.
//!
//! `cargo bench --bench redis` (needs `redis-server` on PATH; starts its own on a free port).
//! Knobs: `CVGATE_BENCH_SECS` (5 per store and round), `CVGATE_BENCH_CLIENTS` (32 keep-alive
//! HTTP/1.1 connections), `CVGATE_BENCH_ROUNDS` (3), `CVGATE_BENCH_SIZE` (20 CVs a search),
//! `CVGATE_BENCH_PIN` (`1,0`: proxy and redis-server on CPU 1, load on CPU 0; `off`),
//! `CVGATE_BENCH_STORES` (`memory,redis`). `CVGATE_BENCH_MODE=store`: the Redis store alone,
//! optionally under callgrind (see [`store_mode`]).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/redis.rs"]
mod redis_server;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use cvgate::quota::gcra::NS_PER_SEC;
use cvgate::quota::{BucketSpec, CostMode, QuotaStore, RedisSettings, RedisStore, ReserveOutcome, Scope};
use redis_server::RedisServer;
use tokio::runtime::Runtime;
use tokio::time::Instant;

/// config.yaml's quota shape (account burst/hour/day/week, org day/week, ip hour/day, country
/// hour/day, global hour/day; day and week fixed windows as shipped) with budgets a run never
/// reaches, so every request takes the whole path (and intervals of at least 1 µs, as real
/// budgets have: the script's resolution).
const QUOTA: &str = r#"quota:
  scopes:
    account:
      horizons:
        burst: { budget: 10000000, window: 1m }
        hour:  { budget: 1000000000, window: 1h }
        day:   { budget: 1000000000, window: 24h, fixed: true }
        week:  { budget: 1000000000, window: 7d, fixed: true, offset: 4d }
    org:
      horizons:
        day:  { budget: 1000000000, window: 24h, fixed: true }
        week: { budget: 1000000000, window: 7d, fixed: true, offset: 4d }
    ip:
      horizons:
        hour: { budget: 1000000000, window: 1h }
        day:  { budget: 1000000000, window: 24h, fixed: true }
    country:
      horizons:
        hour: { budget: 1000000000, window: 1h }
        day:  { budget: 1000000000, window: 24h, fixed: true }
    global:
      horizons:
        hour: { budget: 1000000000, window: 1h }
        day:  { budget: 1000000000, window: 24h, fixed: true }
  overrides:
    countries: {} # the built-in NL and ZZ budgets would refuse the run
"#;

/// The rest of benches/e2e-config.yaml's full policy: its routes, a closure window checked on
/// every request (the proxy's manual clock stands at 10:00 Amsterdam: open), masking checked
/// but never triggered, blocks in memory.
const POLICY: &str = r#"routes:
  - name: cv_search
    group: cv
    methods: [GET]
    path: /api/v1/cvs
    identity: employer
    cost: { query: size, default: 20, max: 200, count: "json_array:results" }
    deep_paging: { page_param: page, size_param: size, default_size: 20, max_depth: 2000 }
  - name: cv_get
    group: cv
    methods: [GET]
    path: "/api/v1/cvs/{id}"
    identity: employer
    cost: { fixed: 1 }
unmatched: reject
closure:
  windows:
    - { name: bench-night, tz: Europe/Amsterdam, start: "23:00", end: "07:00", groups: [cv] }
blocks:
  file: null
masking:
  fields:
    remove: [naam, geslacht, geboortedatum, adres, postcode, woonplaats, email]
    keep_if:
      - { field: telefoon, when: toon_telefoon, equals: true }
    case_insensitive: true
  always: false
  soft_budgets:
    - { scope: account, horizon: hour, after: 100000000000 }
    - { scope: account, horizon: day, after: 100000000000 }
    - { scope: org, horizon: day, after: 100000000000 }
    - { scope: ip, horizon: day, after: 100000000000 }
"#;

struct Knobs {
    secs: u64,
    clients: usize,
    rounds: usize,
    size: u64,
    /// (proxy and redis-server CPU, load CPU)
    pin: Option<(u32, u32)>,
    stores: Vec<String>,
}

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

impl Knobs {
    fn from_env() -> Self {
        let pin = match std::env::var("CVGATE_BENCH_PIN").unwrap_or_else(|_| "1,0".into()).as_str() {
            "off" | "" => None,
            s => s.split_once(',').and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?))),
        };
        let pin = pin.filter(|_| std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2);
        let stores = std::env::var("CVGATE_BENCH_STORES").unwrap_or_else(|_| "memory,redis".into());
        Knobs {
            secs: env("CVGATE_BENCH_SECS", 5),
            clients: env("CVGATE_BENCH_CLIENTS", 32),
            rounds: env("CVGATE_BENCH_ROUNDS", 3),
            size: env("CVGATE_BENCH_SIZE", 20),
            pin,
            stores: stores.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
        }
    }
}

/// Run time so far of this process's threads whose name starts with one of `names`, in ns
/// (`/proc/self/task/*/schedstat`: nanoseconds on a CPU; threads that ended are not counted,
/// and none of the proxy's end during a run).
fn threads_cpu_ns(names: &[&str]) -> u64 {
    let mut total = 0;
    for t in std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if names.iter().any(|n| comm.trim_end().starts_with(n)) {
            let s = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
            total += s.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    total
}

/// Pin this process's threads named `name*` to `cpu`.
fn pin_threads(name: &str, cpu: u32) {
    for t in std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim_end().starts_with(name) {
            taskset(false, cpu, &t.file_name().to_string_lossy());
        }
    }
}

fn taskset(all_threads: bool, cpu: u32, pid: &str) {
    let mut cmd = std::process::Command::new("taskset");
    if all_threads {
        cmd.arg("-a");
    }
    let ok = cmd.args(["-pc", &cpu.to_string(), pid]).stdout(std::process::Stdio::null()).status();
    assert!(ok.is_ok_and(|s| s.success()), "taskset -pc {cpu} {pid} failed (CVGATE_BENCH_PIN=off to run unpinned)");
}

/// redis-server's own CPU seconds so far (`INFO cpu`: user + sys, all its threads).
fn redis_cpu_secs(r: &RedisServer) -> f64 {
    let info: String = r.query(&["INFO", "cpu"]);
    info.lines()
        .filter_map(|l| l.strip_prefix("used_cpu_user:").or_else(|| l.strip_prefix("used_cpu_sys:")))
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum()
}

/// `INFO commandstats`: calls and µs per command.
fn commandstats(r: &RedisServer) -> BTreeMap<String, (u64, u64)> {
    let info: String = r.query(&["INFO", "commandstats"]);
    let field = |rest: &str, name: &str| -> u64 {
        rest.split(',').find_map(|kv| kv.strip_prefix(name)).and_then(|v| v.parse().ok()).unwrap_or(0)
    };
    info.lines()
        .filter_map(|l| l.strip_prefix("cmdstat_")?.split_once(':'))
        .map(|(cmd, rest)| (cmd.to_string(), (field(rest, "calls="), field(rest, "usec="))))
        .collect()
}

fn pid_of(r: &RedisServer) -> String {
    let info: String = r.query(&["INFO", "server"]);
    info.lines().find_map(|l| l.strip_prefix("process_id:")).expect("INFO server: process_id").trim().to_string()
}

async fn start(upstream: &str, store: &str) -> Proxy {
    let (dir, cert) = cert_dir();
    let audit = format!("audit: {{ sink: file, path: \"{}\" }}\n", dir.path().join("audit.log").display());
    let extra = format!("{}{POLICY}{QUOTA}{store}{audit}", identity_yaml(&[]));
    let yaml = test_yaml(upstream, dir.path(), &extra);
    start_proxy_in(dir, cert, &yaml).await
}

/// Searches completed by `clients` keep-alive HTTP/1.1 clients over `secs`: (req/s, requests).
/// 8 accounts of one organisation, all from 127.0.0.1: every request is charged in 12 buckets
/// of 5 subjects.
async fn load(p: &Proxy, clients: usize, secs: u64, size: u64) -> (f64, u64) {
    let end = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..clients {
        let token = token(p, &format!("acct-{}", i % 8), "12345678");
        let addr = p.plain;
        tasks.push(tokio::spawn(async move {
            let auth = bearer(&token);
            let mut s = plain_connect(addr).await;
            let uri = format!("/api/v1/cvs?query=bench&size={size}");
            let mut n = 0u64;
            while Instant::now() < end {
                let r = s.send(get(&uri, false, &[("authorization", &auth)])).await;
                let status = r.status();
                let (_, body) = body_bytes(r).await;
                assert_eq!(status, 200, "every search is served: {}", String::from_utf8_lossy(&body));
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

/// One measured run of one store.
#[derive(Clone, Default)]
struct Run {
    rps: f64,
    proxy_us: f64,
    redis_us: f64,
    commands: f64,
    round_trips: f64,
    script_us: f64,
    per_command: BTreeMap<String, f64>,
}

/// Threads whose CPU is cvgate's: the proxy runtime's and the audit writer.
const PROXY_THREADS: [&str; 2] = ["cvgate-proxy", "cvgate-audit"];

fn measure(k: &Knobs, proxy_rt: &Runtime, load_rt: &Runtime, up: &str, redis: Option<&RedisServer>) -> Run {
    // A generous timeout: the bench measures CPU, and one slow call on this shared machine
    // (or under a profiler) would otherwise fail the run with a 503 from the failure policy.
    let store = redis.map_or(String::new(), |r| {
        format!("store:\n  kind: redis\n  redis: {{ url: \"{}\", timeout: 1s }}\n", r.url())
    });
    let p = proxy_rt.block_on(start(up, &store));
    if let Some((proxy_cpu, _)) = k.pin {
        pin_threads("cvgate-", proxy_cpu);
    }
    let _ = load_rt.block_on(load(&p, k.clients, 1, k.size)); // warm-up: connections, script load
    let (cpu0, redis0, stats0) = (threads_cpu_ns(&PROXY_THREADS), redis.map(redis_cpu_secs), redis.map(commandstats));
    let (rps, n) = load_rt.block_on(load(&p, k.clients, k.secs, k.size));
    let cpu = threads_cpu_ns(&PROXY_THREADS) - cpu0;
    let mut run = Run { rps, proxy_us: cpu as f64 / 1000.0 / n as f64, ..Run::default() };
    if let (Some(r), Some(c0), Some(s0)) = (redis, redis0, stats0) {
        run.redis_us = (redis_cpu_secs(r) - c0) * 1e6 / n as f64;
        let s1 = commandstats(r);
        for (cmd, &(calls, _)) in s1.iter().filter(|(c, _)| *c != "info") {
            let before = s0.get(cmd).map_or(0, |s| s.0);
            if calls > before {
                run.per_command.insert(cmd.clone(), (calls - before) as f64 / n as f64);
            }
        }
        run.commands = run.per_command.values().sum();
        let (calls, usec) = ["evalsha", "fcall"]
            .iter()
            .filter_map(|c| Some((s1.get(*c)?, s0.get(*c).copied().unwrap_or((0, 0)))))
            .fold((0, 0), |(c, u), (a, b)| (c + a.0 - b.0, u + a.1 - b.1));
        run.round_trips = calls as f64 / n as f64;
        run.script_us = if calls > 0 { usec as f64 / calls as f64 } else { 0.0 };
    }
    proxy_rt.block_on(p.running.shutdown());
    run
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    v[v.len() / 2]
}

/// The bench's 12 buckets (config.yaml's shape, budgets as in [`QUOTA`]) of account `acct-{n}`,
/// only those of the scopes whose key letters `subjects` lists (`aoicg`: all).
fn request_buckets(n: usize, subjects: &str) -> Vec<BucketSpec> {
    const H: u64 = 3_600 * NS_PER_SEC;
    const D: u64 = 24 * H;
    let fixed = |mut b: BucketSpec, offset: u64| {
        b.fixed_offset_ns = Some(offset);
        b
    };
    let (acct, org, ip, cc) = (format!("a:acct-{n}"), "o:12345678", "i:127.0.0.0/24", "c:ZZ");
    let b = |subject: &str, scope, horizon: &str, budget, window| {
        BucketSpec::new(format!("{subject}|{horizon}"), scope, horizon, budget, window)
    };
    let all = vec![
        b(&acct, Scope::Account, "burst", 10_000_000, 60 * NS_PER_SEC),
        b(&acct, Scope::Account, "hour", 1_000_000_000, H),
        fixed(b(&acct, Scope::Account, "day", 1_000_000_000, D), 0),
        fixed(b(&acct, Scope::Account, "week", 1_000_000_000, 7 * D), 4 * D),
        fixed(b(org, Scope::Org, "day", 1_000_000_000, D), 0),
        fixed(b(org, Scope::Org, "week", 1_000_000_000, 7 * D), 4 * D),
        b(ip, Scope::Ip, "hour", 1_000_000_000, H),
        fixed(b(ip, Scope::Ip, "day", 1_000_000_000, D), 0),
        b(cc, Scope::Country, "hour", 1_000_000_000, H),
        fixed(b(cc, Scope::Country, "day", 1_000_000_000, D), 0),
        b("g", Scope::Global, "hour", 1_000_000_000, H),
        fixed(b("g", Scope::Global, "day", 1_000_000_000, D), 0),
    ];
    all.into_iter().filter(|b| subjects.contains(&b.key[..1])).collect()
}

/// `CVGATE_BENCH_MODE=store`: the Redis store alone, no proxy: `CVGATE_BENCH_CLIENTS` tasks
/// reserve 20 CVs in the bench's buckets (`CVGATE_BENCH_SUBJECTS`, default `aoicg`: all 12;
/// `g`: the global scope's 2, what one node of a Cluster would see per request, see
/// docs/redis-cluster.md) for `CVGATE_BENCH_SECS`; redis-server's CPU and commands per call.
/// With `CVGATE_BENCH_CALLGRIND=1` redis-server runs under callgrind and the bench reports the
/// instructions it executes per call (deterministic, unlike CPU time on a shared machine), over
/// `CVGATE_BENCH_CALLS` calls (default 2,000).
fn store_mode(k: &Knobs) {
    let subjects = std::env::var("CVGATE_BENCH_SUBJECTS").unwrap_or_else(|_| "aoicg".into());
    let callgrind = std::env::var("CVGATE_BENCH_CALLGRIND").is_ok_and(|v| v == "1");
    let calls: u64 = env("CVGATE_BENCH_CALLS", 2_000);
    let dir = tempfile::tempdir().unwrap();
    if callgrind {
        // RedisServer runs `$REDIS_SERVER --port …`: a wrapper that puts valgrind in front,
        // instrumentation off until the measured calls.
        let wrapper = dir.path().join("redis-under-callgrind");
        let out = dir.path().join("callgrind.out.%p");
        let script = format!(
            "#!/bin/sh\nexec valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file={} redis-server \"$@\"\n",
            out.display()
        );
        std::fs::write(&wrapper, script).unwrap();
        std::process::Command::new("chmod").arg("+x").arg(&wrapper).status().unwrap();
        std::env::set_var("REDIS_SERVER", &wrapper);
    }
    let redis = RedisServer::start();
    let pid = pid_of(&redis);
    if let Some((proxy_cpu, load_cpu)) = k.pin {
        taskset(true, proxy_cpu, &pid);
        taskset(false, load_cpu, &std::process::id().to_string());
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let settings = RedisSettings {
        url: redis.url(),
        timeout: Duration::from_secs(30), // valgrind makes redis-server ~50x slower
        key_prefix: "cvgate:{quota}:".into(),
    };
    let _in_runtime = rt.enter(); // the store's connection task is spawned on it
    let store = std::sync::Arc::new(RedisStore::new(&settings).unwrap());
    let requests: std::sync::Arc<Vec<Vec<BucketSpec>>> =
        std::sync::Arc::new((0..8).map(|n| request_buckets(n, &subjects)).collect());
    let run = |limit: Option<u64>, secs: u64| {
        let (store, requests) = (store.clone(), requests.clone());
        rt.block_on(async move {
            let end = Instant::now() + Duration::from_secs(secs);
            let left = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(limit.map_or(i64::MAX, |l| l as i64)));
            let mut tasks = Vec::new();
            for c in 0..k.clients {
                let (store, requests, left) = (store.clone(), requests.clone(), left.clone());
                tasks.push(tokio::spawn(async move {
                    let mut n = 0u64;
                    while Instant::now() < end && left.fetch_sub(1, std::sync::atomic::Ordering::Relaxed) > 0 {
                        let b = &requests[(c + n as usize) % requests.len()];
                        let o = store.reserve(b, CostMode::Exact(20)).await.expect("redis answers");
                        assert!(matches!(o, ReserveOutcome::Granted { granted: 20, .. }), "{o:?}");
                        n += 1;
                    }
                    n
                }));
            }
            let mut total = 0;
            for t in tasks {
                total += t.await.unwrap();
            }
            total
        })
    };
    run(Some(200), 60); // warm-up: the library loaded, the keys exist
    let (cpu0, stats0) = (redis_cpu_secs(&redis), commandstats(&redis));
    let callgrind_control = |args: &[&str]| {
        let ok = std::process::Command::new("callgrind_control").args(args).arg(&pid).output();
        assert!(ok.is_ok_and(|o| o.status.success()), "callgrind_control {args:?} failed");
    };
    if callgrind {
        callgrind_control(&["-i", "on"]);
    }
    let n = if callgrind { run(Some(calls), 3_600) } else { run(None, k.secs) };
    if callgrind {
        callgrind_control(&["-i", "off"]);
    }
    let (cpu1, stats1) = (redis_cpu_secs(&redis), commandstats(&redis));
    let per_command: Vec<String> = stats1
        .iter()
        .filter(|(c, _)| *c != "info")
        .filter_map(|(c, &(calls, _))| {
            let d = calls - stats0.get(c).map_or(0, |s| s.0);
            (d > 0).then(|| format!("{c} {:.2}", d as f64 / n as f64))
        })
        .collect();
    let buckets = requests[0].len();
    println!(
        "store mode: {n} reservations of {buckets} buckets ({subjects}), {} clients: redis-server {:.1} µs CPU/call; \
         commands per call: {}",
        k.clients,
        (cpu1 - cpu0) * 1e6 / n as f64,
        per_command.join(", ")
    );
    if callgrind {
        callgrind_control(&["-d"]);
        std::thread::sleep(Duration::from_secs(1));
        let mut total = 0u64;
        for f in std::fs::read_dir(dir.path()).unwrap().flatten() {
            let text = std::fs::read_to_string(f.path()).unwrap_or_default();
            total += text.lines().filter_map(|l| l.strip_prefix("totals: ")?.trim().parse::<u64>().ok()).sum::<u64>();
        }
        println!("callgrind: {:.1}k instructions of redis-server per call", total as f64 / n as f64 / 1000.0);
    }
}

fn main() {
    let k = Knobs::from_env();
    if std::env::var("CVGATE_BENCH_MODE").is_ok_and(|m| m == "store") {
        store_mode(&k);
        return;
    }
    let proxy_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("cvgate-proxy")
        .enable_all()
        .build()
        .unwrap();
    let load_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("bench-load")
        .enable_all()
        .build()
        .unwrap();
    let up = format!("http://{}", load_rt.block_on(start_mock()));
    let redis = k.stores.iter().any(|s| s == "redis").then(RedisServer::start);
    if let Some((proxy_cpu, load_cpu)) = k.pin {
        pin_threads("bench-load", load_cpu);
        taskset(false, load_cpu, &std::process::id().to_string()); // this (main) thread
        if let Some(r) = &redis {
            taskset(true, proxy_cpu, &pid_of(r));
        }
    }
    let load_avg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "redis bench: {} clients, {} s per store and round, {} rounds, GET /api/v1/cvs?size={} (reserved and counted: \
         nothing to settle), 12 buckets of 5 subjects a request; pin (proxy+redis, load): {:?}; load average before: {}",
        k.clients,
        k.secs,
        k.rounds,
        k.size,
        k.pin,
        load_avg.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    println!();
    println!("| round | store | req/s | cvgate CPU µs/req | redis-server CPU µs/req | Redis cmds/req | round trips/req | script µs/call (Redis's own) |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut runs: BTreeMap<String, Vec<Run>> = BTreeMap::new();
    for round in 0..k.rounds {
        // Alternate the order so that neither store always runs second.
        let mut order = k.stores.clone();
        if round % 2 == 1 {
            order.reverse();
        }
        for s in &order {
            let r = measure(&k, &proxy_rt, &load_rt, &up, if s == "redis" { redis.as_ref() } else { None });
            let dash = |v: f64, d: usize| if s == "redis" { format!("{v:.d$}") } else { "–".to_string() };
            println!(
                "| {} | {s} | {:.0} | {:.1} | {} | {} | {} | {} |",
                round + 1,
                r.rps,
                r.proxy_us,
                dash(r.redis_us, 1),
                dash(r.commands, 2),
                dash(r.round_trips, 3),
                dash(r.script_us, 1)
            );
            runs.entry(s.clone()).or_default().push(r);
        }
    }
    println!();
    let med = |s: &str, f: fn(&Run) -> f64| median(runs.get(s).map(|v| v.iter().map(f).collect()).unwrap_or_default());
    let (mem, red) = (med("memory", |r| r.proxy_us), med("redis", |r| r.proxy_us));
    println!("medians over {} rounds:", k.rounds);
    println!("  memory: {:>7.0} req/s, cvgate {mem:.1} µs CPU/request", med("memory", |r| r.rps));
    if runs.contains_key("redis") {
        println!(
            "  redis:  {:>7.0} req/s, cvgate {red:.1} µs CPU/request ({:.2}x memory), redis-server {:.1} µs CPU/request, \
             {:.2} commands/request, {:.3} round trips/request, script {:.1} µs/call by Redis's own count",
            med("redis", |r| r.rps),
            red / mem,
            med("redis", |r| r.redis_us),
            med("redis", |r| r.commands),
            med("redis", |r| r.round_trips),
            med("redis", |r| r.script_us),
        );
        if let Some(last) = runs.get("redis").and_then(|v| v.last()) {
            let list: Vec<String> = last.per_command.iter().map(|(c, n)| format!("{c} {n:.2}")).collect();
            println!("  redis commands per request (last round): {}", list.join(", "));
        }
    }
    let load_avg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average after: {}", load_avg.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
}
