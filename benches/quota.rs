//! Quota hot path: check+charge ns/op for the memory store and the engine, single-threaded and
//! with 2 threads on the same keys, next to `governor`'s keyed limiter doing the same work
//! (1 bucket; 10 separate limiters for the 10-bucket case, which governor cannot make atomic).
//! Also prints resident bytes per tracked key. Run: `cargo bench --bench quota`.

use std::hint::black_box;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use futures_util::FutureExt;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use cvgate::clock::{ManualClock, SharedClock};
use cvgate::quota::policy::{RawHorizon, RawScope};
use cvgate::quota::{
    default_raw, BucketSpec, CostMode, MemoryStore, QuotaEngine, QuotaPolicy, QuotaStore, Scope, Subject,
};

const COST: u64 = 1;

/// A policy whose buckets never run dry during a bench: every horizon of every scope holds far
/// more than the bench can take. 4 + 2 + 2 + 1 + 1 = 10 buckets per subject.
fn policy() -> QuotaPolicy {
    let mut raw = default_raw();
    let big = |names: &[&str]| RawScope {
        shadow: false,
        horizons: names.iter().map(|n| (n.to_string(), RawHorizon::continuous(u64::from(u32::MAX), "1h"))).collect(),
    };
    raw.scopes.account = big(&["burst", "hour", "day", "week"]);
    raw.scopes.org = big(&["day", "week"]);
    raw.scopes.ip = big(&["hour", "day"]);
    raw.scopes.country = big(&["day"]);
    raw.scopes.global = big(&["day"]);
    raw.overrides.countries.clear();
    QuotaPolicy::from_raw(&raw).expect("bench policy")
}

fn store() -> Arc<MemoryStore> {
    let clock: SharedClock = ManualClock::new("2024-05-04T07:00:00Z".parse().expect("ts"));
    Arc::new(MemoryStore::new(clock, 1_000_000))
}

fn subject() -> Subject<'static> {
    Subject { account: Some("acct-123"), org: Some("12345678"), ip: IpAddr::from([203, 0, 113, 7]), country: "NL" }
}

fn governor_limiter() -> DefaultKeyedRateLimiter<String> {
    RateLimiter::keyed(Quota::per_hour(NonZeroU32::MAX))
}

/// The store futures complete without yielding; poll them once instead of paying for a runtime.
fn reserve(s: &MemoryStore, b: &[BucketSpec]) -> u64 {
    match s.reserve(b, CostMode::Exact(COST)).now_or_never() {
        Some(Ok(cvgate::quota::ReserveOutcome::Granted { granted, .. })) => granted,
        other => panic!("bench bucket ran dry: {other:?}"),
    }
}

fn single(c: &mut Criterion) {
    let p = policy();
    let ten = QuotaEngine::new(store()).buckets(&p, &subject());
    assert_eq!(ten.len(), 10);
    let one = vec![ten[2].clone()]; // a:acct-123|day
    let mut g = c.benchmark_group("check+charge, 1 thread");
    let s = store();
    g.bench_function("cvgate store, 1 bucket", |b| b.iter(|| reserve(&s, black_box(&one))));
    g.bench_function("cvgate store, 10 buckets (atomic)", |b| b.iter(|| reserve(&s, black_box(&ten))));
    let engine = QuotaEngine::new(store());
    let subj = subject();
    g.bench_function("cvgate engine, 10 buckets (resolve keys + reserve)", |b| {
        b.iter(|| {
            engine.reserve(&p, black_box(&subj), CostMode::Exact(COST)).now_or_never().expect("ready").expect("granted")
        })
    });
    let gov = governor_limiter();
    let n = NonZeroU32::new(COST as u32).expect("nonzero");
    let key1 = one[0].key.clone();
    g.bench_function("governor keyed, 1 bucket", |b| {
        b.iter(|| gov.check_key_n(black_box(&key1), n).expect("fits").is_ok())
    });
    let govs: Vec<(DefaultKeyedRateLimiter<String>, String)> =
        ten.iter().map(|b| (governor_limiter(), b.key.clone())).collect();
    g.bench_function("governor keyed, 10 limiters (not atomic)", |b| {
        b.iter(|| govs.iter().all(|(l, k)| l.check_key_n(black_box(k), n).expect("fits").is_ok()))
    });
    g.finish();
}

/// Wall time per op on this thread while a second thread does the same on the same keys.
fn contended_run(iters: u64, op: Arc<dyn Fn() + Send + Sync>) -> Duration {
    let other = op.clone();
    let t = std::thread::spawn(move || {
        for _ in 0..iters {
            other();
        }
    });
    let start = Instant::now();
    for _ in 0..iters {
        op();
    }
    let d = start.elapsed();
    t.join().expect("second thread");
    d
}

fn contended(c: &mut Criterion) {
    let p = policy();
    let ten = QuotaEngine::new(store()).buckets(&p, &subject());
    let one = vec![ten[2].clone()];
    let mut g = c.benchmark_group("check+charge, 2 threads same key");
    let s = store();
    let (s1, o1) = (s.clone(), one.clone());
    g.bench_function("cvgate store, 1 bucket", |b| {
        b.iter_custom(|iters| {
            contended_run(
                iters,
                Arc::new({
                    let (s, o) = (s1.clone(), o1.clone());
                    move || {
                        black_box(reserve(&s, &o));
                    }
                }),
            )
        })
    });
    g.bench_function("cvgate store, 10 buckets (atomic)", |b| {
        b.iter_custom(|iters| {
            contended_run(
                iters,
                Arc::new({
                    let (s, t) = (s.clone(), ten.clone());
                    move || {
                        black_box(reserve(&s, &t));
                    }
                }),
            )
        })
    });
    let gov = Arc::new(governor_limiter());
    let key = one[0].key.clone();
    g.bench_function("governor keyed, 1 bucket", |b| {
        b.iter_custom(|iters| {
            contended_run(
                iters,
                Arc::new({
                    let (l, k) = (gov.clone(), key.clone());
                    move || {
                        black_box(l.check_key_n(&k, NonZeroU32::MIN).expect("fits").is_ok());
                    }
                }),
            )
        })
    });
    g.finish();
}

/// Resident bytes per tracked key: RSS growth over 1,000,000 inserted IPv6 /56 keys.
fn bytes_per_key() {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else { return };
    let rss = |s: &str| s.split_whitespace().nth(1).and_then(|x| x.parse::<usize>().ok()).unwrap_or(0) * 4096;
    let before = rss(&statm);
    let s = store();
    let n = 1_000_000u32;
    let mut spec = BucketSpec::new("", Scope::Ip, "day", 5000, 86_400_000_000_000);
    for i in 0..n {
        spec.key = format!("i:2001:db8:{:x}:{:x}00::/56|day", i >> 8, i & 0xff);
        reserve(&s, std::slice::from_ref(&spec));
    }
    let after = std::fs::read_to_string("/proc/self/statm").map(|t| rss(&t)).unwrap_or(before);
    println!(
        "memory store: {} keys tracked, {} B resident per key (bound {} B)",
        s.tracked_keys(),
        after.saturating_sub(before) / n as usize,
        cvgate::quota::BYTES_PER_KEY_BOUND
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2)).sample_size(20);
    targets = single, contended
}

fn main() {
    bytes_per_key();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
