//! The behavioural suite every quota store must pass, run against BOTH the memory store and the
//! Redis store (a private redis-server per test).
//!
//! Time: the memory store runs on a manual clock; Redis takes "now" from its own `TIME`, which
//! the test cannot move. So the cases are written around costs and `remaining`, with budgets
//! whose interval `T` (window ÷ budget) is long — seconds to hours — so that the few
//! milliseconds a case takes in real time refill nothing. The one refill case moves time by a
//! small real interval (the memory harness advances its clock by the same amount) and accepts
//! a refill range for Redis, whose real sleep may overrun. Seconds in headers (`reset`,
//! `retry-after`) may differ by one rounding step between the stores (docs/redis.md), so they
//! are compared within 1 s.

#[path = "common/redis.rs"]
mod redis_server;

use std::sync::Arc;
use std::time::Duration;

use cvgate::clock::ManualClock;
use cvgate::quota::gcra::NS_PER_SEC;
use cvgate::quota::{
    BucketSpec, BucketState, CostMode, MemoryStore, QuotaStore, RedisSettings, RedisStore, ReserveOutcome, Scope,
};
use redis_server::RedisServer;

const HOUR: u64 = 3600 * NS_PER_SEC;
const DAY: u64 = 24 * HOUR;

struct Harness {
    name: &'static str,
    store: Arc<dyn QuotaStore>,
    /// `Some` for the memory store: time moves only when told.
    clock: Option<Arc<ManualClock>>,
    _redis: Option<RedisServer>,
}

impl Harness {
    fn memory() -> Self {
        let clock = ManualClock::new("2026-11-24T09:00:00Z".parse().unwrap());
        let store = Arc::new(MemoryStore::new(clock.clone(), 100_000));
        Self { name: "memory", store, clock: Some(clock), _redis: None }
    }

    fn redis() -> Self {
        let server = RedisServer::start();
        let settings = RedisSettings {
            url: server.url(),
            timeout: Duration::from_secs(2), // generous: the suite checks semantics, not latency
            key_prefix: "cvgate:{suite}:".into(),
        };
        let store = Arc::new(RedisStore::new(&settings).unwrap());
        Self { name: "redis", store, clock: None, _redis: Some(server) }
    }

    async fn advance(&self, d: Duration) {
        match &self.clock {
            Some(c) => c.advance(d),
            None => tokio::time::sleep(d).await,
        }
    }

    async fn reserve(&self, b: &[BucketSpec], cost: CostMode) -> ReserveOutcome {
        self.store.reserve(b, cost).await.unwrap_or_else(|e| panic!("{}: reserve failed: {e}", self.name))
    }

    async fn settle(&self, b: &[BucketSpec], delta: i64) {
        self.store.settle(b, delta).await.unwrap_or_else(|e| panic!("{}: settle failed: {e}", self.name));
    }

    async fn peek(&self, b: &[BucketSpec]) -> Vec<BucketState> {
        self.store.peek(b).await.unwrap_or_else(|e| panic!("{}: peek failed: {e}", self.name))
    }

    async fn remaining(&self, b: &[BucketSpec]) -> Vec<u64> {
        self.peek(b).await.iter().map(|s| s.remaining).collect()
    }
}

fn bucket(key: &str, capacity: u64, window_ns: u64) -> BucketSpec {
    BucketSpec::new(key, Scope::Account, "day", capacity, window_ns)
}

/// A hard cap of `capacity` per fixed window of `window_ns` (windows from the epoch).
fn fixed(key: &str, capacity: u64, window_ns: u64) -> BucketSpec {
    BucketSpec { fixed_offset_ns: Some(0), ..bucket(key, capacity, window_ns) }
}

fn granted(o: &ReserveOutcome) -> Option<u64> {
    match o {
        ReserveOutcome::Granted { granted, .. } => Some(*granted),
        _ => None,
    }
}

/// Run a case against both stores.
macro_rules! suite {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            #[tokio::test]
            async fn memory() {
                super::$case(&super::Harness::memory()).await;
            }
            #[tokio::test]
            async fn redis() {
                super::$case(&super::Harness::redis()).await;
            }
        }
    )*};
}

suite!(
    fresh_bucket_is_full_and_drains_exactly,
    all_or_nothing_across_buckets,
    up_to_grants_what_fits_everywhere,
    too_large_is_never_granted,
    shadow_buckets_count_but_never_reject,
    settle_refunds_and_forces_debt,
    refund_to_unknown_key_is_a_no_op,
    reload_keeps_what_was_spent,
    a_key_passed_twice_is_charged_twice,
    refill_is_continuous,
    concurrent_reservations_never_overspend,
    many_buckets_one_call,
    fixed_window_refills_nothing_until_its_end,
    fixed_window_debt_carries_over,
    switching_to_fixed_and_back_keeps_what_was_spent,
);

async fn fresh_bucket_is_full_and_drains_exactly(h: &Harness) {
    let b = [bucket("a:fresh|day", 2000, DAY)]; // T = 43.2 s
    let p = h.peek(&b).await;
    assert_eq!(p[0].remaining, 2000, "{}", h.name);
    assert_eq!(p[0].reset_secs, 0, "{}", h.name);
    let o = h.reserve(&b, CostMode::Exact(1850)).await;
    let ReserveOutcome::Granted { granted, states, would_reject } = o else { panic!("{}: {o:?}", h.name) };
    assert_eq!(granted, 1850);
    assert_eq!(states[0].remaining, 150, "{}", h.name);
    assert!(would_reject.is_empty());
    let o = h.reserve(&b, CostMode::Exact(200)).await;
    let ReserveOutcome::Rejected { index, retry_after_secs, states } = o else { panic!("{}: {o:?}", h.name) };
    assert_eq!(index, 0);
    assert_eq!(states[0].remaining, 150, "{}", h.name);
    assert!((2159..=2160).contains(&retry_after_secs), "{}: 50 CVs × 43.2 s, got {retry_after_secs}", h.name);
    assert_eq!(granted_of(h.reserve(&b, CostMode::Exact(150)).await), 150, "{}", h.name);
    let o = h.reserve(&b, CostMode::Exact(1)).await;
    let ReserveOutcome::Rejected { retry_after_secs, states, .. } = o else { panic!("{}: {o:?}", h.name) };
    assert_eq!(states[0].remaining, 0);
    assert!((43..=44).contains(&retry_after_secs), "{}: one CV is 43.2 s, got {retry_after_secs}", h.name);
    assert!((86_399..=86_400).contains(&states[0].reset_secs), "{}: {}", h.name, states[0].reset_secs);
}

fn granted_of(o: ReserveOutcome) -> u64 {
    granted(&o).unwrap_or_else(|| panic!("not granted: {o:?}"))
}

async fn all_or_nothing_across_buckets(h: &Harness) {
    let b = [bucket("a:aon|day", 100, DAY), bucket("o:aon|day", 50, DAY)];
    assert_eq!(granted_of(h.reserve(&b, CostMode::Exact(40)).await), 40);
    let o = h.reserve(&b, CostMode::Exact(20)).await; // the org has 10 left
    let ReserveOutcome::Rejected { index, states, .. } = o else { panic!("{}: {o:?}", h.name) };
    assert_eq!(index, 1, "{}", h.name);
    assert_eq!(states.iter().map(|s| s.remaining).collect::<Vec<_>>(), [60, 10]);
    // Nothing was charged anywhere by the rejected request.
    assert_eq!(h.remaining(&b).await, [60, 10], "{}", h.name);
}

async fn up_to_grants_what_fits_everywhere(h: &Harness) {
    let b = [bucket("a:upto|day", 1000, DAY), bucket("o:upto|day", 30, DAY)];
    assert_eq!(granted_of(h.reserve(&b, CostMode::UpTo { max: 500, min: 1 }).await), 30, "{}", h.name);
    assert_eq!(h.remaining(&b).await, [970, 0], "{}", h.name);
    let o = h.reserve(&b, CostMode::UpTo { max: 500, min: 1 }).await;
    assert!(matches!(o, ReserveOutcome::Rejected { index: 1, .. }), "{}: {o:?}", h.name);
    // min 0 on an empty (not indebted) bucket: a zero grant, nothing charged.
    assert_eq!(granted_of(h.reserve(&b, CostMode::UpTo { max: 500, min: 0 }).await), 0, "{}", h.name);
    assert_eq!(h.remaining(&b).await, [970, 0], "{}", h.name);
}

async fn too_large_is_never_granted(h: &Harness) {
    let b = [bucket("a:big|min", 400, 60 * NS_PER_SEC), bucket("g|min", 100_000, 60 * NS_PER_SEC)];
    let o = h.reserve(&b, CostMode::Exact(401)).await;
    let ReserveOutcome::TooLarge { index, states } = o else { panic!("{}: {o:?}", h.name) };
    assert_eq!(index, 0);
    assert_eq!(states[0].remaining, 400);
    assert_eq!(h.remaining(&b).await, [400, 100_000], "{}", h.name);
}

async fn shadow_buckets_count_but_never_reject(h: &Harness) {
    let mut shadow = bucket("c:NL|day", 10, DAY);
    shadow.shadow = true;
    shadow.scope = Scope::Country;
    let b = [bucket("a:shadow|day", 100, DAY), shadow];
    let o = h.reserve(&b, CostMode::Exact(15)).await;
    let ReserveOutcome::Granted { granted, would_reject, .. } = o else { panic!("{}: {o:?}", h.name) };
    assert_eq!(granted, 15);
    assert_eq!(would_reject, vec![1], "{}", h.name);
    assert_eq!(h.remaining(&b).await, [85, 0], "{}: the shadow bucket is charged (in debt)", h.name);
}

async fn settle_refunds_and_forces_debt(h: &Harness) {
    let b = [bucket("a:settle|100s", 100, 100 * NS_PER_SEC)]; // 1 CV per second
    assert_eq!(granted_of(h.reserve(&b, CostMode::Exact(50)).await), 50);
    h.settle(&b, -20).await; // delivered 30
    assert_eq!(h.remaining(&b).await, [70], "{}", h.name);
    h.settle(&b, -1000).await; // never beyond full
    assert_eq!(h.remaining(&b).await, [100], "{}", h.name);
    assert_eq!(granted_of(h.reserve(&b, CostMode::Exact(100)).await), 100);
    h.settle(&b, 50).await; // 50 delivered beyond the grant: debt
    let p = h.peek(&b).await;
    assert_eq!(p[0].remaining, 0);
    assert!((50..=51).contains(&p[0].retry_after_secs), "{}: 51 s of debt, got {}", h.name, p[0].retry_after_secs);
    let o = h.reserve(&b, CostMode::UpTo { max: 10, min: 0 }).await;
    assert!(matches!(o, ReserveOutcome::Rejected { .. }), "{}: a bucket in debt grants nothing: {o:?}", h.name);
}

async fn refund_to_unknown_key_is_a_no_op(h: &Harness) {
    let b = [bucket("a:never-charged|day", 100, DAY)];
    h.settle(&b, -10).await;
    assert_eq!(h.remaining(&b).await, [100], "{}", h.name);
    assert_eq!(h.store.tracked_keys(), 0, "{}: a refund creates no key", h.name);
}

async fn reload_keeps_what_was_spent(h: &Harness) {
    let old = [bucket("a:reload|day", 2000, DAY)];
    assert_eq!(granted_of(h.reserve(&old, CostMode::Exact(1500)).await), 1500);
    // Doubled budget: the 1500 spent stay spent.
    assert_eq!(h.remaining(&[bucket("a:reload|day", 4000, DAY)]).await, [2500], "{}", h.name);
    // Halved: in debt, not reset. 501 CVs × 86.4 s until one fits.
    let small = [bucket("a:reload|day", 1000, DAY)];
    let p = h.peek(&small).await;
    assert_eq!(p[0].remaining, 0, "{}", h.name);
    assert!((43_286..=43_287).contains(&p[0].retry_after_secs), "{}: {}", h.name, p[0].retry_after_secs);
    // A charge under the new shape is converted once and then stays consistent.
    let big = [bucket("a:reload|day", 4000, DAY)];
    assert_eq!(granted_of(h.reserve(&big, CostMode::Exact(500)).await), 500);
    assert_eq!(h.remaining(&big).await, [2000], "{}", h.name);
    assert_eq!(h.remaining(&old).await, [0], "{}: 2000 spent of 2000", h.name);
}

async fn a_key_passed_twice_is_charged_twice(h: &Harness) {
    let b = [bucket("a:twice|day", 100, DAY), bucket("a:twice|day", 100, DAY)];
    assert_eq!(granted_of(h.reserve(&b, CostMode::Exact(10)).await), 10);
    assert_eq!(h.remaining(&b[..1]).await, [80], "{}", h.name);
}

async fn refill_is_continuous(h: &Harness) {
    let b = [bucket("a:refill|s", 10, NS_PER_SEC)]; // one CV per 100 ms
    assert_eq!(granted_of(h.reserve(&b, CostMode::Exact(10)).await), 10);
    assert_eq!(h.remaining(&b).await, [0], "{}", h.name);
    h.advance(Duration::from_millis(350)).await;
    let r = h.remaining(&b).await[0];
    if h.clock.is_some() {
        assert_eq!(r, 3, "{}", h.name);
    } else {
        assert!((3..=10).contains(&r), "{}: 350 ms of real time refill at least 3, got {r}", h.name);
    }
    h.advance(Duration::from_secs(2)).await;
    assert_eq!(h.remaining(&b).await, [10], "{}: never more than full", h.name);
}

async fn concurrent_reservations_never_overspend(h: &Harness) {
    let b = Arc::new(vec![bucket("a:race|day", 50, DAY), bucket("g|race", 1_000_000, DAY)]);
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (store, b) = (h.store.clone(), b.clone());
        tasks.push(tokio::spawn(async move { store.reserve(&b, CostMode::Exact(1)).await.unwrap() }));
    }
    let mut total = 0;
    for t in tasks {
        total += granted(&t.await.unwrap()).unwrap_or(0);
    }
    assert_eq!(total, 50, "{}", h.name);
    assert_eq!(h.remaining(&b).await, [0, 1_000_000 - 50], "{}", h.name);
}

async fn many_buckets_one_call(h: &Harness) {
    // The werk.nl default shape: 4 account + 2 org + 2 ip + 2 country + 2 global horizons.
    let shape = [
        ("a:m|burst", 400, 60 * NS_PER_SEC),
        ("a:m|hour", 1000, HOUR),
        ("a:m|day", 2000, DAY),
        ("a:m|week", 6000, 7 * DAY),
        ("o:m|day", 5000, DAY),
        ("o:m|week", 15000, 7 * DAY),
        ("i:m|hour", 2000, HOUR),
        ("i:m|day", 5000, DAY),
        ("c:m|hour", 5000, HOUR),
        ("c:m|day", 20000, DAY),
        ("g:m|hour", 200_000, HOUR),
        ("g:m|day", 1_000_000, DAY),
    ];
    let b: Vec<BucketSpec> = shape.iter().map(|&(k, c, w)| bucket(k, c, w)).collect();
    assert_eq!(granted_of(h.reserve(&b, CostMode::Exact(200)).await), 200);
    assert_eq!(granted_of(h.reserve(&b, CostMode::Exact(200)).await), 200);
    let o = h.reserve(&b, CostMode::Exact(200)).await; // the burst bucket (400/min) is empty
    assert!(matches!(o, ReserveOutcome::Rejected { index: 0, .. }), "{}: {o:?}", h.name);
    let r = h.remaining(&b).await;
    assert_eq!(r[0], 0, "{}", h.name);
    assert_eq!(r[3], 5600, "{}", h.name);
    assert_eq!(r[11], 1_000_000 - 400, "{}", h.name);
}

/// The stores agree op by op on a pseudo-random sequence (granted, outcome kind, remaining
/// exactly; seconds within 1). Intervals are long, and some are not whole microseconds.
#[tokio::test]
async fn memory_and_redis_agree_on_a_random_sequence() {
    let (m, r) = (Harness::memory(), Harness::redis());
    let b = vec![
        bucket("a:diff|day", 997, DAY + 1),   // T not a whole µs
        bucket("o:diff|hour", 313, HOUR + 7), // T not a whole µs
        bucket("g:diff|week", 50_000, 7 * DAY),
    ];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for step in 0..300 {
        let n = next() % 60;
        let kind = next() % 4;
        match kind {
            0 | 1 => {
                let cost = if kind == 0 { CostMode::Exact(n) } else { CostMode::UpTo { max: n, min: n.min(1) } };
                let (a, c) = (m.reserve(&b, cost).await, r.reserve(&b, cost).await);
                assert_same(step, &a, &c);
            }
            2 => {
                let delta = (n as i64) - 30;
                m.settle(&b, delta).await;
                r.settle(&b, delta).await;
            }
            _ => {
                let (a, c) = (m.peek(&b).await, r.peek(&b).await);
                assert_states(step, &a, &c);
            }
        }
    }
}

fn assert_same(step: usize, a: &ReserveOutcome, b: &ReserveOutcome) {
    use ReserveOutcome::*;
    match (a, b) {
        (
            Granted { granted: g1, states: s1, would_reject: w1 },
            Granted { granted: g2, states: s2, would_reject: w2 },
        ) => {
            assert_eq!((g1, w1), (g2, w2), "step {step}");
            assert_states(step, s1, s2);
        }
        (
            Rejected { index: i1, retry_after_secs: r1, states: s1 },
            Rejected { index: i2, retry_after_secs: r2, states: s2 },
        ) => {
            assert_eq!(i1, i2, "step {step}");
            assert!(r1.abs_diff(*r2) <= 1, "step {step}: retry-after {r1} vs {r2}");
            assert_states(step, s1, s2);
        }
        (TooLarge { index: i1, states: s1 }, TooLarge { index: i2, states: s2 }) => {
            assert_eq!(i1, i2, "step {step}");
            assert_states(step, s1, s2);
        }
        _ => panic!("step {step}: memory {a:?} vs redis {b:?}"),
    }
}

fn assert_states(step: usize, a: &[BucketState], b: &[BucketState]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.remaining, y.remaining, "step {step}: {a:?} vs {b:?}");
        assert!(x.reset_secs.abs_diff(y.reset_secs) <= 1, "step {step}: {a:?} vs {b:?}");
        assert!(x.retry_after_secs.abs_diff(y.retry_after_secs) <= 1, "step {step}: {a:?} vs {b:?}");
    }
}

/// A fixed window gives nothing back while it runs and everything at its end. The memory clock
/// stands at 09:00:00 (a window start); Redis runs on real time, so its window end is wherever
/// `TIME` puts it, read from `reset_secs`.
async fn fixed_window_refills_nothing_until_its_end(h: &Harness) {
    let b = [fixed("a:fixed|min", 60, 60 * NS_PER_SEC)]; // continuous, this would be 1 CV a second
    assert_eq!(granted_of(h.reserve(&b, CostMode::Exact(60)).await), 60);
    let o = h.reserve(&b, CostMode::Exact(1)).await;
    let ReserveOutcome::Rejected { retry_after_secs, states, .. } = o else { panic!("{}: {o:?}", h.name) };
    let to_end = states[0].reset_secs;
    assert!((1..=60).contains(&to_end), "{}: the window ends within a minute, got {to_end}", h.name);
    assert_eq!(retry_after_secs, to_end, "{}: one CV fits only when the window ends", h.name);
    if h.clock.is_some() {
        assert_eq!(to_end, 60, "memory: the clock stands at a window start");
    }
    if to_end >= 4 {
        // 1.5 s later the window still runs: a continuous bucket would have refilled one CV.
        h.advance(Duration::from_millis(1500)).await;
        assert_eq!(h.remaining(&b).await, [0], "{}: nothing back before the window ends", h.name);
    }
    if h.clock.is_some() {
        h.advance(Duration::from_secs(to_end) - Duration::from_millis(1500)).await;
        assert_eq!(h.remaining(&b).await, [60], "memory: everything back at the window end");
    }
}

/// CVs delivered beyond the grant (a forced settle) are owed to the next windows.
async fn fixed_window_debt_carries_over(h: &Harness) {
    let b = [fixed("a:fixed-debt|day", 100, DAY)];
    assert_eq!(granted_of(h.reserve(&b, CostMode::Exact(100)).await), 100);
    h.settle(&b, 150).await; // 250 spent of 100: this window, the next and half the one after
    let p = h.peek(&b).await;
    assert_eq!(p[0].remaining, 0, "{}", h.name);
    // Until one CV fits: the rest of today, all of tomorrow, then into the third day.
    let retry = p[0].retry_after_secs;
    assert!(retry > 86_400 && retry <= 2 * 86_400, "{}: retry after {retry} s", h.name);
    assert!(p[0].reset_secs >= retry, "{}: full again no sooner than one CV fits", h.name);
    if let Some(c) = &h.clock {
        assert_eq!(retry, 15 * 3600 + 86_400, "memory: from 09:00, today's 15 h and all of tomorrow");
        c.advance(Duration::from_secs(retry));
        assert_eq!(h.remaining(&b).await, [50], "memory: the third window starts 50 in debt");
    }
}

/// A reload that makes a horizon fixed (or continuous again) keeps what was spent.
async fn switching_to_fixed_and_back_keeps_what_was_spent(h: &Harness) {
    let cont = [bucket("a:switch|day", 2000, DAY)]; // T = 43.2 s: milliseconds refill nothing
    let fix = [fixed("a:switch|day", 2000, DAY)];
    assert_eq!(granted_of(h.reserve(&cont, CostMode::Exact(500)).await), 500);
    assert_eq!(h.remaining(&fix).await, [1500], "{}: 500 spent in the fixed window", h.name);
    assert_eq!(granted_of(h.reserve(&fix, CostMode::Exact(700)).await), 700);
    assert_eq!(h.remaining(&fix).await, [800], "{}", h.name);
    assert_eq!(h.remaining(&cont).await, [800], "{}: 1200 spent, continuous again", h.name);
    // A larger fixed budget in the same window keeps the 1200 spent.
    assert_eq!(h.remaining(&[fixed("a:switch|day", 4000, DAY)]).await, [2800], "{}", h.name);
}
