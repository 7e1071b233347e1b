//! Engine and memory-store tests: exactness under concurrency, all-or-nothing, settle, reload,
//! eviction and key flooding. (GCRA maths, policy and headers are tested beside their code.)

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::policy::{RawHorizon, RawOverride, RawScope, RawTier};
use super::*;
use crate::clock::{Clock, ManualClock, SharedClock};

const DAY_NS: u64 = 86_400_000_000_000;

/// The two tests that measure RSS must not overlap each other.
static MEMORY_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn t0() -> jiff::Timestamp {
    "2024-05-04T07:00:00Z".parse().unwrap()
}

fn hz(list: &[(&str, u64, &str)]) -> BTreeMap<String, RawHorizon> {
    list.iter().map(|(n, b, w)| (n.to_string(), RawHorizon::continuous(*b, w))).collect()
}

fn scope(list: &[(&str, u64, &str)]) -> RawScope {
    RawScope { shadow: false, horizons: hz(list) }
}

/// A policy with only the given scopes limited.
fn policy(f: impl FnOnce(&mut RawQuota)) -> QuotaPolicy {
    let mut raw = default_raw();
    raw.scopes = policy::RawScopes {
        account: RawScope::default(),
        org: RawScope::default(),
        ip: RawScope::default(),
        country: RawScope::default(),
        global: RawScope::default(),
    };
    raw.overrides.countries.clear();
    f(&mut raw);
    QuotaPolicy::from_raw(&raw).unwrap()
}

fn setup(cap: usize) -> (Arc<ManualClock>, Arc<MemoryStore>, QuotaEngine) {
    let clock = ManualClock::new(t0());
    let shared: SharedClock = clock.clone();
    let store = Arc::new(MemoryStore::new(shared, cap));
    let engine = QuotaEngine::new(store.clone());
    (clock, store, engine)
}

fn subject<'a>(account: Option<&'a str>, org: Option<&'a str>, ip: &str) -> Subject<'a> {
    Subject { account, org, ip: ip.parse().unwrap(), country: "NL" }
}

async fn remaining(e: &QuotaEngine, p: &QuotaPolicy, s: &Subject<'_>) -> Vec<(String, u64)> {
    e.peek(p, s).await.unwrap().into_iter().map(|(b, st)| (b.key, st.remaining)).collect()
}

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// xorshift: random costs without a dependency.
fn rng(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

/// One tick of the hammer's clock; refill makes its bounds a range.
const SECOND: Duration = Duration::from_secs(1);

/// 64 tasks on a multi-thread runtime reserve random amounts (exact and up-to) and settle to a
/// random delivered count, while the clock steps `step` at a time (`ZERO`: it stands still) and
/// a sweeper runs; then, the clock stopped, the watched bucket alone is drained. Demand (about a
/// million CVs) far exceeds every budget, so for the watched bucket, with refill = elapsed / T:
/// - delivered + drained ≤ capacity + refill: never over-granted;
/// - delivered + drained ≥ capacity: no CV lost to a race, and what `peek` shows is grantable;
///   on a still clock (no refill) the two meet: exactly the capacity;
/// - the hammer itself emptied it: some grant left it at 0 (a store that refused everything, or
///   all but a trickle, would leave it for the drain).
async fn hammer(p: Arc<QuotaPolicy>, subjects: Vec<(String, Option<String>, String)>, watch: &str, step: Duration) {
    let (clock, store, engine) = setup(1_000_000);
    let engine = Arc::new(engine);
    let start = clock.now_nanos();
    let delivered = Arc::new(AtomicU64::new(0));
    let emptied = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let subjects = Arc::new(subjects);
    let mut tasks = Vec::new();
    let watch_key: Arc<str> = Arc::from(watch);
    for t in 0..64u64 {
        let (e, p, d, emptied, subs, watch) =
            (engine.clone(), p.clone(), delivered.clone(), emptied.clone(), subjects.clone(), watch_key.clone());
        tasks.push(tokio::spawn(async move {
            let mut r = rng(t + 1);
            for _ in 0..300 {
                let (a, o, ip) = &subs[(r() % subs.len() as u64) as usize];
                let s = Subject { account: Some(a), org: o.as_deref(), ip: ip.parse().unwrap(), country: "NL" };
                let n = 1 + r() % 200;
                let mode = if r().is_multiple_of(2) { CostMode::Exact(n) } else { CostMode::UpTo { max: n, min: 1 } };
                if let Ok(res) = e.reserve(&p, &s, mode).await {
                    let actual = r() % (res.granted + 1);
                    // Charge all buckets of this subject that contain the watched key.
                    if let Some(i) = res.buckets.iter().position(|b| *b.key == *watch) {
                        d.fetch_add(actual, Ordering::SeqCst);
                        if res.states[i].remaining == 0 {
                            emptied.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    e.settle(&res, actual).await;
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    let ticker = {
        let (c, d) = (clock.clone(), done.clone());
        tokio::spawn(async move {
            while !d.load(Ordering::SeqCst) {
                c.advance(step);
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        })
    };
    let sweeper = {
        let (s, d) = (store.clone(), done.clone());
        tokio::spawn(async move {
            while !d.load(Ordering::SeqCst) {
                s.sweep();
                tokio::task::yield_now().await;
            }
        })
    };
    for t in tasks {
        t.await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    ticker.await.unwrap();
    sweeper.await.unwrap();
    let elapsed = clock.now_nanos() - start;
    // subjects[0] holds the watched key (the others share it, or do not matter).
    let (a, o, ip) = &subjects[0];
    let s0 = Subject { account: Some(a), org: o.as_deref(), ip: ip.parse().unwrap(), country: "NL" };
    let spec = engine.buckets(&p, &s0).into_iter().find(|b| b.key == watch).expect("watched key");
    let params = spec.params();
    let (capacity, bound) = (params.capacity(), params.capacity() + elapsed / params.interval_ns());
    let got = delivered.load(Ordering::SeqCst);
    let watched = std::slice::from_ref(&spec);
    let left = store.peek(watched).await.unwrap()[0];
    let drained = match store.reserve(watched, CostMode::UpTo { max: capacity, min: 1 }).await.unwrap() {
        ReserveOutcome::Granted { granted, .. } => granted,
        _ => 0,
    };
    let emptied = emptied.load(Ordering::SeqCst);
    eprintln!(
        "{watch}: delivered {got} + drained {drained}, capacity {capacity}, bound {bound}, elapsed {} s, \
         {emptied} grants emptied it",
        elapsed / 1_000_000_000
    );
    assert_eq!(drained, left.remaining, "{watch}: peek showed {left:?}, the drain got {drained}");
    let again = store.reserve(watched, CostMode::UpTo { max: capacity, min: 1 }).await.unwrap();
    assert!(matches!(again, ReserveOutcome::Rejected { .. }), "{watch}: drained, still grants: {again:?}");
    assert!(got + drained <= bound, "{watch}: {got} delivered + {drained} drained > capacity + refill {bound}");
    // Nothing leaks either: every CV was delivered or is still in the bucket (refill only adds).
    assert!(got + drained >= capacity, "{watch}: {got} delivered + {drained} drained < capacity {capacity}");
    assert!(emptied > 0, "{watch}: demand far over capacity, yet no grant emptied the bucket ({got} delivered)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_one_account_never_over_grants() {
    let p = policy(|r| r.scopes.account = scope(&[("burst", 400, "1m"), ("day", 2000, "24h")]));
    // The burst horizon binds here: watch the tightest bucket, so the bound is tight.
    hammer(Arc::new(p), vec![("acct-1".into(), None, "192.0.2.1".into())], "a:acct-1|burst", SECOND).await;
}

/// On a still clock nothing refills and no refund can overfill a bucket: delivered + drained is
/// exactly the capacity, for one account and for an org charged through 30 accounts at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reservations_grant_exactly_the_capacity_on_a_still_clock() {
    let p = policy(|r| r.scopes.account = scope(&[("burst", 400, "1m"), ("day", 2000, "24h")]));
    hammer(Arc::new(p), vec![("acct-1".into(), None, "192.0.2.1".into())], "a:acct-1|burst", Duration::ZERO).await;
    let p = policy(|r| {
        r.scopes.account = scope(&[("day", 2000, "24h")]);
        r.scopes.org = scope(&[("day", 5000, "24h")]);
    });
    let subs = (0..30).map(|i| (format!("acct-{i}"), Some("12345678".to_string()), format!("192.0.2.{i}"))).collect();
    hammer(Arc::new(p), subs, "o:12345678|day", Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_org_of_30_accounts_never_over_grants() {
    let p = policy(|r| {
        r.scopes.account = scope(&[("day", 2000, "24h")]);
        r.scopes.org = scope(&[("day", 5000, "24h"), ("week", 15000, "7d")]);
    });
    let subs = (0..30).map(|i| (format!("acct-{i}"), Some("12345678".to_string()), format!("192.0.2.{i}"))).collect();
    hammer(Arc::new(p), subs, "o:12345678|day", SECOND).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_ip_prefix_of_30_orgs_never_over_grants() {
    let p = policy(|r| {
        r.scopes.account = scope(&[("day", 2000, "24h")]);
        r.scopes.org = scope(&[("day", 5000, "24h")]);
        r.scopes.ip = scope(&[("hour", 2000, "1h"), ("day", 5000, "24h")]);
    });
    let subs =
        (0..30).map(|i| (format!("acct-{i}"), Some(format!("1000{i:04}")), format!("203.0.113.{}", 10 + i))).collect();
    hammer(Arc::new(p), subs, "i:203.0.113.0/24|hour", SECOND).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn up_to_fills_to_the_last_cv_under_contention() {
    let p = Arc::new(policy(|r| r.scopes.org = scope(&[("day", 5000, "24h")])));
    let (_clock, _store, engine) = setup(1000);
    let engine = Arc::new(engine);
    let total = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..64u64)
        .map(|t| {
            let (e, p, total) = (engine.clone(), p.clone(), total.clone());
            tokio::spawn(async move {
                let mut r = rng(t + 7);
                let acct = format!("acct-{}", t % 30);
                let s = subject(Some(&acct), Some("12345678"), "192.0.2.1");
                while let Ok(g) = e.reserve(&p, &s, CostMode::UpTo { max: 1 + r() % 200, min: 1 }).await {
                    total.fetch_add(g.granted, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(total.load(Ordering::SeqCst), 5000); // clock stands still: exactly the capacity
}

#[tokio::test]
async fn rejection_by_org_leaves_account_untouched() {
    let p = policy(|r| {
        r.scopes.account = scope(&[("burst", 400, "1m"), ("day", 2000, "24h")]);
        r.scopes.org = scope(&[("day", 300, "24h")]);
        r.scopes.global = RawScope { shadow: true, horizons: hz(&[("day", 1_000_000, "24h")]) };
    });
    let (_c, _s, e) = setup(1000);
    let colleague = subject(Some("acct-2"), Some("12345678"), "192.0.2.2");
    assert_eq!(e.reserve(&p, &colleague, CostMode::Exact(250)).await.unwrap().granted, 250);
    let me = subject(Some("acct-1"), Some("12345678"), "192.0.2.1");
    let before = remaining(&e, &p, &me).await;
    match e.reserve(&p, &me, CostMode::Exact(200)).await {
        Err(Rejection::Quota { scope, horizon, retry_after_secs, headers }) => {
            assert_eq!((scope, &*horizon), (Scope::Org, "day"));
            assert_eq!(retry_after_secs, 150 * 288); // 150 CVs × 288 s each
            assert!(headers.contains(&("retry-after", "43200".to_string())));
        }
        other => panic!("expected an org rejection, got {other:?}"),
    }
    assert_eq!(remaining(&e, &p, &me).await, before); // account AND the shadow global untouched
}

#[tokio::test]
async fn up_to_grants_the_minimum_remaining_across_buckets() {
    let p = policy(|r| {
        r.scopes.account = scope(&[("day", 2000, "24h")]);
        r.scopes.org = scope(&[("day", 5000, "24h")]);
        r.scopes.ip = scope(&[("day", 5000, "24h")]);
    });
    let (_c, _s, e) = setup(1000);
    let me = subject(Some("acct-1"), Some("12345678"), "192.0.2.1");
    e.reserve(&p, &me, CostMode::Exact(1850)).await.unwrap(); // account: 150 left
    let other = subject(Some("acct-2"), Some("12345678"), "198.51.100.1");
    e.reserve(&p, &other, CostMode::Exact(2000)).await.unwrap();
    e.reserve(&p, &subject(Some("acct-3"), Some("12345678"), "198.51.100.2"), CostMode::Exact(1030)).await.unwrap(); // org: 120 left
    let g = e.reserve(&p, &me, CostMode::UpTo { max: 200, min: 1 }).await.unwrap();
    assert_eq!(g.granted, 120);
    assert!(g.states.iter().any(|s| s.remaining == 0));
    assert_eq!(
        remaining(&e, &p, &me).await,
        vec![("a:acct-1|day".into(), 30), ("o:12345678|day".into(), 0), ("i:192.0.2.0/24|day".into(), 3030)]
    );
    // Nothing left in the org: at least one is required, so this is a rejection.
    assert!(matches!(
        e.reserve(&p, &me, CostMode::UpTo { max: 200, min: 1 }).await,
        Err(Rejection::Quota { scope: Scope::Org, .. })
    ));
}

#[tokio::test]
async fn settle_refunds_unused_and_charges_excess() {
    let p = policy(|r| {
        r.scopes.account = scope(&[("day", 2000, "24h")]);
        r.scopes.ip = scope(&[("day", 5000, "24h")]);
    });
    let (_c, _s, e) = setup(1000);
    let me = subject(Some("acct-1"), None, "192.0.2.1");
    let r = e.reserve(&p, &me, CostMode::Exact(200)).await.unwrap();
    assert_eq!(remaining(&e, &p, &me).await.iter().map(|x| x.1).collect::<Vec<_>>(), [1800, 4800]);
    e.settle(&r, 37).await; // 163 back, in every bucket
    assert_eq!(remaining(&e, &p, &me).await.iter().map(|x| x.1).collect::<Vec<_>>(), [1963, 4963]);
    let r = e.reserve(&p, &me, CostMode::Exact(200)).await.unwrap();
    e.settle(&r, 250).await; // 50 beyond the reservation
    assert_eq!(remaining(&e, &p, &me).await.iter().map(|x| x.1).collect::<Vec<_>>(), [1713, 4713]);
    e.settle(&r, 200).await; // equal to granted: a no-op
    assert_eq!(remaining(&e, &p, &me).await.iter().map(|x| x.1).collect::<Vec<_>>(), [1713, 4713]);
}

#[tokio::test]
async fn reload_keeps_what_was_spent() {
    let p1 = policy(|r| r.scopes.account = scope(&[("day", 2000, "24h")]));
    let p2 = policy(|r| r.scopes.account = scope(&[("day", 4000, "24h")]));
    let p3 = policy(|r| r.scopes.account = scope(&[("day", 1000, "24h")]));
    let (_c, _s, e) = setup(1000);
    let me = subject(Some("acct-1"), None, "192.0.2.1");
    e.reserve(&p1, &me, CostMode::Exact(1500)).await.unwrap();
    assert_eq!(remaining(&e, &p2, &me).await[0].1, 2500); // spent 1500 of the new 4000
    e.reserve(&p2, &me, CostMode::Exact(500)).await.unwrap(); // now stored at the new interval
    assert_eq!(remaining(&e, &p2, &me).await[0].1, 2000);
    assert_eq!(remaining(&e, &p1, &me).await[0].1, 0); // back to 2000/day: 2000 spent, none left
                                                       // Shrinking below what was spent: in debt, rejected, not reset.
    assert!(matches!(e.reserve(&p3, &me, CostMode::Exact(1)).await, Err(Rejection::Quota { .. })));
}

#[tokio::test]
async fn sweep_never_evicts_a_spent_bucket_and_evicts_full_ones() {
    let p = policy(|r| r.scopes.account = scope(&[("day", 2000, "24h")]));
    let (clock, store, e) = setup(1000);
    let me = subject(Some("acct-1"), None, "192.0.2.1");
    e.reserve(&p, &me, CostMode::Exact(2000)).await.unwrap();
    for _ in 0..24 {
        clock.advance(Duration::from_secs(3600) - Duration::from_nanos(1)); // always short of full
        assert_eq!(store.sweep(), 0);
        assert_eq!(store.tracked_keys(), 1);
    }
    assert!(remaining(&e, &p, &me).await[0].1 < 2000);
    clock.advance(Duration::from_secs(1));
    assert_eq!(e.sweep(), 1); // full again: forgetting it loses nothing
    assert_eq!(e.tracked_keys(), 0);
    assert_eq!(remaining(&e, &p, &me).await[0].1, 2000);
    // A rejected request creates its subject's cell but charges nothing: swept at once. Both
    // horizons live in the one cell of `a:acct-1`.
    let big = policy(|r| r.scopes.account = scope(&[("burst", 10, "1m"), ("day", 2000, "24h")]));
    assert!(e.reserve(&big, &me, CostMode::Exact(11)).await.is_err());
    assert_eq!(e.tracked_keys(), 1);
    assert_eq!(e.sweep(), 1);
    // A spent horizon keeps the subject; the full one is dropped from its cell, not forgotten
    // with it.
    e.reserve(&big, &me, CostMode::Exact(10)).await.unwrap();
    clock.advance(Duration::from_secs(61));
    assert_eq!(e.sweep(), 0);
    assert_eq!(e.tracked_keys(), 1);
    let left: Vec<u64> = remaining(&e, &big, &me).await.iter().map(|r| r.1).collect();
    assert_eq!(left[0], 10, "{left:?}");
    assert!((1990..2000).contains(&left[1]), "{left:?}");
}

/// Issue 20: `top` ranks by CVs used, whatever capacity wrote a bucket (an override, the
/// probation tier), within one scope and horizon only.
#[tokio::test]
async fn top_ranks_subjects_by_cvs_used_whatever_their_tier() {
    let p = policy(|r| {
        r.scopes.account = scope(&[("hour", 400, "1h"), ("day", 1000, "24h")]);
        r.scopes.org = scope(&[("day", 5000, "24h")]);
        r.tiers.insert("big".into(), RawTier { account: hz(&[("day", 5000, "24h")]), ..Default::default() });
        r.tiers.insert("probation".into(), RawTier { account: hz(&[("day", 100, "24h")]), ..Default::default() });
        r.overrides.accounts.insert("acct-big".into(), RawOverride { tier: Some("big".into()), ..Default::default() });
    });
    let (clock, _s, e) = setup(1000);
    let take = |account: &'static str, n: u64, tier: Option<&'static str>| {
        let (e, p) = (&e, &p);
        async move {
            let s = subject(Some(account), Some("12345678"), "192.0.2.1");
            e.reserve_as(p, &s, tier, CostMode::Exact(n)).await.unwrap();
        }
    };
    take("acct-a", 300, None).await;
    take("acct-b", 390, None).await;
    take("acct-big", 390, None).await;
    take("acct-new", 50, Some("probation")).await;
    clock.advance(Duration::from_secs(3600)); // the hour buckets refill; the day ones barely
    take("acct-big", 390, None).await;
    let top = e.top(&p, Scope::Account, "day", 3).await.unwrap().unwrap();
    let got: Vec<(&str, u64)> = top.entries.iter().map(|t| (t.key.as_str(), t.used)).collect();
    // Day buckets refill ~1000/24 an hour (≈42, 5000/24 ≈ 208 for the big tier's).
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[0].0, "a:acct-big|day");
    assert!((780 - 209..=780 - 208).contains(&got[0].1), "{got:?}");
    assert_eq!((got[1].0, got[1].1), ("a:acct-b|day", 390 - 41), "{got:?}");
    assert_eq!((got[2].0, got[2].1), ("a:acct-a|day", 300 - 41), "{got:?}");
    assert!(top.complete && top.scanned >= 5, "{top:?}"); // subjects: 4 accounts, 1 organisation
    let all = e.top(&p, Scope::Account, "day", 10).await.unwrap().unwrap();
    assert_eq!(all.entries.last().map(|t| (t.key.as_str(), t.used)), Some(("a:acct-new|day", 50 - 4)), "{all:?}");
    // The hour: only what was spent since; other scopes and unknown horizons apart.
    let hour = e.top(&p, Scope::Account, "hour", 10).await.unwrap().unwrap();
    assert_eq!(hour.entries.iter().map(|t| (t.key.as_str(), t.used)).collect::<Vec<_>>(), [("a:acct-big|hour", 390)]);
    let org = e.top(&p, Scope::Org, "day", 10).await.unwrap().unwrap();
    assert_eq!(org.entries.len(), 1);
    assert!(e.top(&p, Scope::Org, "hour", 10).await.unwrap().is_none());
    assert_eq!(key_subject("a:acct|x|day", Scope::Account, "day"), Some("acct|x"));
    assert_eq!(key_subject("o:acct|day", Scope::Account, "day"), None);
}

/// Issue 20: a reset refills the buckets given (and only those), and a cell looked up before it
/// is not charged after it.
#[tokio::test]
async fn reset_refills_exactly_the_buckets_given() {
    let p = policy(|r| {
        r.scopes.account = scope(&[("day", 1000, "24h")]);
        r.scopes.org = scope(&[("day", 5000, "24h")]);
    });
    let (_c, store, e) = setup(1000);
    let s = subject(Some("acct-a"), Some("12345678"), "192.0.2.1");
    e.reserve(&p, &s, CostMode::Exact(1000)).await.unwrap();
    assert!(e.reserve(&p, &s, CostMode::Exact(1)).await.is_err());
    let (buckets, _) = e.buckets_as(&p, &s, None);
    let account: Vec<BucketSpec> = buckets.iter().filter(|b| b.scope == Scope::Account).cloned().collect();
    let tracked = store.tracked_keys();
    assert_eq!(e.reset(&account).await.unwrap(), 1);
    assert_eq!(store.tracked_keys(), tracked - 1);
    assert_eq!(remaining(&e, &p, &s).await, [("a:acct-a|day".into(), 1000), ("o:12345678|day".into(), 4000)]);
    assert_eq!(e.reset(&account).await.unwrap(), 0, "nothing left to reset");
    e.reserve(&p, &s, CostMode::Exact(10)).await.unwrap();
    assert_eq!(remaining(&e, &p, &s).await, [("a:acct-a|day".into(), 990), ("o:12345678|day".into(), 3990)]);
    // An organisation asked about alone has its buckets too (admin); a request never does.
    let lone = Subject { account: None, ..s };
    assert_eq!(e.buckets_as(&p, &lone, None).0.len(), 1);
    assert!(e.buckets(&p, &lone).is_empty());
}

#[tokio::test]
async fn exempt_anonymous_tiers_and_keys() {
    let p = policy(|r| {
        r.scopes.account = scope(&[("day", 2000, "24h")]);
        r.scopes.org = scope(&[("day", 5000, "24h")]);
        r.scopes.ip = scope(&[("day", 5000, "24h")]);
        r.scopes.country = scope(&[("day", 20000, "24h")]);
        r.scopes.global = scope(&[("day", 1_000_000, "24h")]);
        r.overrides.countries.insert("NL".into(), hz(&[("day", 500_000, "24h")]));
        r.overrides
            .orgs
            .insert("87654321".into(), RawOverride { tier: Some("staffing_agency".into()), ..Default::default() });
        r.exempt.accounts.push("uwv-internal".into());
    });
    let (_c, _s, e) = setup(1000);
    let keys = |s: &Subject<'_>| e.buckets(&p, s).into_iter().map(|b| (b.key, b.capacity)).collect::<Vec<_>>();
    let anon =
        Subject { account: None, org: Some("12345678"), ip: "::ffff:192.0.2.77".parse().unwrap(), country: "de" };
    assert_eq!(
        keys(&anon),
        [("i:192.0.2.0/24|day".into(), 5000), ("c:DE|day".into(), 20000), ("g|day".into(), 1_000_000)]
    );
    let agency = Subject {
        account: Some("a-9"),
        org: Some("87654321"),
        ip: "2001:db8:1:2ff::1".parse().unwrap(),
        country: "NL",
    };
    let want: Vec<(String, u64)> = [
        ("a:a-9|burst", 2_000), // the tier adds horizons the scope lacks
        ("a:a-9|hour", 10_000),
        ("a:a-9|day", 20_000),
        ("a:a-9|week", 60_000),
        ("o:87654321|day", 50_000),
        ("o:87654321|week", 150_000),
        ("i:2001:db8:1:200::/56|hour", 20_000),
        ("i:2001:db8:1:200::/56|day", 50_000),
        ("c:NL|day", 500_000),
        ("g|day", 1_000_000),
    ]
    .iter()
    .map(|(k, c)| (k.to_string(), *c))
    .collect();
    assert_eq!(keys(&agency), want);
    let r = e.reserve(&p, &agency, CostMode::Exact(10)).await.unwrap();
    assert_eq!(r.tier.as_deref(), Some("staffing_agency"));
    let ex = subject(Some("uwv-internal"), Some("12345678"), "192.0.2.1");
    assert!(e.buckets(&p, &ex).is_empty());
    let r = e.reserve(&p, &ex, CostMode::Exact(100_000)).await.unwrap();
    assert!(r.exempt && r.granted == 100_000 && ratelimit_headers(&r).is_empty());
}

#[tokio::test]
async fn shadow_scope_counts_would_reject_but_lets_through() {
    let p = policy(|r| {
        r.scopes.account = scope(&[("day", 2000, "24h")]);
        r.scopes.ip = RawScope { shadow: true, horizons: hz(&[("day", 100, "24h")]) };
    });
    let (_c, _s, e) = setup(1000);
    let me = subject(Some("acct-1"), None, "192.0.2.1");
    let r = e.reserve(&p, &me, CostMode::UpTo { max: 200, min: 1 }).await.unwrap();
    assert_eq!(r.granted, 200); // the shadow bucket does not limit UpTo either
    assert_eq!(r.would_reject, vec![(Scope::Ip, Arc::from("day"))]);
    assert_eq!(remaining(&e, &p, &me).await[1].1, 0); // but it is charged (into debt)
}

#[tokio::test]
async fn larger_than_capacity_is_too_large_not_retry_later() {
    let p = policy(|r| r.scopes.account = scope(&[("burst", 400, "1m"), ("day", 2000, "24h")]));
    let (_c, _s, e) = setup(1000);
    let me = subject(Some("acct-1"), None, "192.0.2.1");
    match e.reserve(&p, &me, CostMode::Exact(401)).await {
        Err(Rejection::TooLarge { scope: Scope::Account, horizon, capacity: 400, headers }) => {
            assert_eq!(&*horizon, "burst");
            assert!(!headers.iter().any(|(k, _)| *k == "retry-after"));
        }
        other => panic!("{other:?}"),
    }
    // UpTo with max beyond capacity simply gets what fits.
    assert_eq!(e.reserve(&p, &me, CostMode::UpTo { max: 5000, min: 1 }).await.unwrap().granted, 400);
}

/// 1,000,000 distinct IPv6 /56 prefixes against a cap of 100,000: bounded keys and memory, the
/// overflow bucket takes the charges, and keys tracked before the flood keep their own buckets.
#[tokio::test]
async fn key_flooding_is_bounded_and_hands_out_no_fresh_quota() {
    let _g = MEMORY_TESTS.lock().await;
    let p = policy(|r| r.scopes.ip = scope(&[("day", 5000, "24h")]));
    let cap = 100_000;
    let (_c, store, e) = setup(cap);
    let victim = subject(None, None, "2001:db8:ffff:ff00::1");
    e.reserve(&p, &victim, CostMode::Exact(100)).await.unwrap();
    let rss0 = rss_bytes();
    let mut granted = 0;
    for i in 0..1_000_000u32 {
        let ip = IpAddr::from([0x2001, 0x0db8, (i >> 8) as u16, ((i & 0xff) << 8) as u16, 0, 0, 0, 1]);
        let s = Subject { account: None, org: None, ip, country: "NL" };
        if let Ok(r) = e.reserve(&p, &s, CostMode::Exact(1)).await {
            granted += r.granted;
        }
    }
    let grown = rss_bytes().saturating_sub(rss0);
    // At most the cap plus the overflow key.
    assert!(store.tracked_keys() <= cap + 1, "{} keys", store.tracked_keys());
    // cap − 1 prefixes got their own key (the victim holds one); all later newcomers share ONE
    // day bucket of 5000: no fresh quota per prefix.
    assert_eq!(granted, (cap as u64 - 1) + 5000);
    let overflow = BucketSpec::new("i~overflow|day", Scope::Ip, "day", 5000, DAY_NS);
    assert_eq!(store.peek(std::slice::from_ref(&overflow)).await.unwrap()[0].remaining, 0);
    // The victim's key was tracked before the flood: its own bucket, untouched by it.
    assert_eq!(remaining(&e, &p, &victim).await[0].1, 4900);
    assert!(e.reserve(&p, &victim, CostMode::Exact(100)).await.is_ok());
    let bound = cap * BYTES_PER_KEY_BOUND + (8 << 20);
    assert!(grown <= bound, "RSS grew {grown} B for {cap} keys; bound {bound}");
    eprintln!("flood: tracked {} keys, RSS +{grown} B", store.tracked_keys());
}

/// Regression (issue 16): during a flood at the cap, an employer whose idle bucket had been
/// evicted (full again) came back to the overflow bucket the flood had used up, and got 429.
/// Now the store first evicts the flood's buckets that are full again and gives it its own.
#[tokio::test]
async fn a_returning_employer_gets_its_own_bucket_during_a_flood_at_the_cap() {
    let _g = MEMORY_TESTS.lock().await;
    let p = policy(|r| r.scopes.ip = scope(&[("hour", 2000, "1h")]));
    let cap = 1000;
    let (clock, store, e) = setup(cap);
    let employer = subject(None, None, "192.0.2.10");
    e.reserve(&p, &employer, CostMode::Exact(1)).await.unwrap();
    clock.advance(Duration::from_secs(10));
    assert!(store.sweep() >= 1, "the employer's bucket is full again and forgotten");
    // 3,000 flooding /24s, one CV each: 1,000 get keys, the rest use up the overflow bucket.
    for i in 0..3000u32 {
        let ip = IpAddr::from([10, (i >> 8) as u8, (i & 0xff) as u8, 1]);
        let _ = e.reserve(&p, &Subject { account: None, org: None, ip, country: "NL" }, CostMode::Exact(1)).await;
    }
    assert_eq!(store.tracked_keys(), cap + 1, "the cap and the overflow key");
    let overflow = BucketSpec::new("i~overflow|hour", Scope::Ip, "hour", 2000, 3_600_000_000_000);
    assert!(store.peek(std::slice::from_ref(&overflow)).await.unwrap()[0].remaining < 100);
    // Seconds later the flood's single CVs have refilled; the employer asks for a page of 100.
    clock.advance(Duration::from_secs(5));
    let r = e.reserve(&p, &employer, CostMode::Exact(100)).await;
    assert!(r.is_ok(), "the returning employer was sent to the exhausted overflow bucket");
    assert_eq!(remaining(&e, &p, &employer).await[0].1, 1900, "its own bucket");
}

#[tokio::test]
async fn million_keys_stay_under_the_bound() {
    let _g = MEMORY_TESTS.lock().await;
    let n = 1_000_000usize;
    let clock: SharedClock = ManualClock::new(t0());
    let store = MemoryStore::new(clock, n);
    let rss0 = rss_bytes();
    let mut spec = BucketSpec::new("", Scope::Ip, "day", 5000, DAY_NS);
    for i in 0..n as u32 {
        spec.key = format!("i:2001:db8:{:x}:{:x}00::/56|day", i >> 8, i & 0xff);
        store.reserve(std::slice::from_ref(&spec), CostMode::Exact(1)).await.unwrap();
    }
    assert_eq!(store.tracked_keys(), n);
    let per_key = rss_bytes().saturating_sub(rss0) / n;
    eprintln!("memory store: {per_key} B per tracked key (RSS delta / {n})");
    // The admin API's `top` walks them all (MemoryStore::top_now documents the cost).
    let started = std::time::Instant::now();
    let top = store.top(&spec, "i:", 20).await.unwrap();
    eprintln!("memory store: top of {n} keys in {:?}", started.elapsed());
    assert_eq!((top.entries.len(), top.scanned, top.complete), (20, n as u64, true));
    assert!(per_key <= BYTES_PER_KEY_BOUND, "{per_key} B per key > {BYTES_PER_KEY_BOUND}");
}

proptest::proptest! {
    /// The hand-written IPv4 key is the one `Display` writes (and IPv6 goes through `Display`).
    #[test]
    fn ip_keys_are_written_as_display_writes_them(a in proptest::prelude::any::<[u8; 4]>(), len in 0u8..=32, v6 in proptest::prelude::any::<[u8; 16]>(), len6 in 0u8..=128) {
        let v4 = ipnet::IpNet::new(std::net::IpAddr::from(a), len).unwrap();
        proptest::prop_assert_eq!(super::ip_key(v4), format!("i:{v4}"));
        let v6 = ipnet::IpNet::new(std::net::IpAddr::from(v6), len6).unwrap();
        proptest::prop_assert_eq!(super::ip_key(v6), format!("i:{v6}"));
    }
}

/// A subject whose buckets are passed apart (not side by side, as the engine orders them) is
/// locked once and charged in each of its buckets; locking its cell twice would hang.
#[test]
fn a_subject_passed_apart_is_locked_once_and_charged_in_each_bucket() {
    let (_clock, store, _engine) = setup(100);
    let hour = 3_600_000_000_000;
    let buckets = vec![
        BucketSpec::new("a:x|hour", Scope::Account, "hour", 10, hour),
        BucketSpec::new("o:y|hour", Scope::Org, "hour", 10, hour),
        BucketSpec::new("a:x|day", Scope::Account, "day", 10, DAY_NS),
    ];
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let granted = rt.block_on(store.reserve(&buckets, CostMode::Exact(4))).unwrap();
        let states = rt.block_on(store.peek(&buckets)).unwrap();
        tx.send((granted, states)).unwrap();
    });
    let (granted, states) = rx.recv_timeout(Duration::from_secs(10)).expect("the reservation finished");
    assert!(matches!(granted, ReserveOutcome::Granted { granted: 4, .. }), "{granted:?}");
    assert_eq!(states.iter().map(|s| s.remaining).collect::<Vec<_>>(), [6, 6, 6]);
}
