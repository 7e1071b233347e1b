//! GCRA bucket maths: pure functions of (state, params, now, cost). No I/O, no clock, no locks.
//!
//! GCRA in five lines. A bucket holds `C` tokens (CVs) that refill continuously over window `W`,
//! so one token is worth the emission interval `T = W / C` of time. The only state is `tat`, the
//! theoretical arrival time: the instant at which the bucket would be full again. Spending `n`
//! tokens pushes `tat` forward by `n·T` (from `now` if it lies in the past); a spend is allowed
//! iff the new `tat` is at most the burst tolerance `τ = C·T` ahead of `now`.
//!
//! Why hand-written rather than `governor`: the state must survive a config reload with an exact
//! conversion to the new interval (spent CVs stay spent), and the same maths must be mirrored in
//! a Redis Lua script (one round trip for all buckets, time from Redis `TIME`). Governor's state
//! is private and process-local, and it cannot resize a bucket without forgetting what was spent.
//!
//! All arithmetic is saturating or done in `u128`: no input, however absurd, panics.

/// Nanoseconds per second.
pub const NS_PER_SEC: u64 = 1_000_000_000;

/// One bucket's stored state. `interval_ns` is the `T` that `tat_ns` was written with, so a reload
/// that changes `T` is converted lazily and exactly on the next touch ([`rebase`]), in memory and
/// in Redis alike, without iterating over all keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GcraState {
    pub tat_ns: u64,
    pub interval_ns: u64,
}

/// A bucket's configured shape: `capacity` tokens over `window_ns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    capacity: u64,
    interval_ns: u64,
}

impl Params {
    /// `capacity` tokens refilling over `window_ns`. Degenerate inputs are clamped (capacity ≥ 1,
    /// `T` ≥ 1 ns) rather than rejected: validation in `policy` rejects them before they get here.
    pub fn new(capacity: u64, window_ns: u64) -> Self {
        let capacity = capacity.max(1);
        Self { capacity, interval_ns: (window_ns / capacity).max(1) }
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// `T`, the time one token takes to refill.
    pub fn interval_ns(&self) -> u64 {
        self.interval_ns
    }

    /// `τ = C·T` (≤ W). Used instead of `W` so that a full bucket holds exactly `C` tokens even
    /// when `W` is not a multiple of `C`.
    pub fn tolerance_ns(&self) -> u64 {
        sat_mul(self.capacity, self.interval_ns)
    }

    /// The time `n` tokens are worth.
    fn cost_ns(&self, n: u64) -> u64 {
        sat_mul(n, self.interval_ns)
    }
}

/// What a bucket says about a cost `n` at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Check {
    pub allowed: bool,
    /// Whole tokens available now.
    pub remaining: u64,
    /// Nanoseconds until the bucket is full again.
    pub reset_ns: u64,
    /// Nanoseconds until `n` would fit: `Some(0)` if allowed, `None` if `n > C` (never fits).
    pub retry_after_ns: Option<u64>,
}

/// Bring a stored state to the configured interval and return its `tat`.
///
/// If `T` changed (reload), the spent amount `(tat − now)/T_old` is kept in tokens:
/// `tat' = now + (tat − now)·T_new/T_old`, computed in `u128` so fractional tokens survive.
/// A state with `interval_ns == 0` (fresh) is taken as written with the current interval.
pub fn rebase(state: GcraState, p: &Params, now: u64) -> u64 {
    if state.interval_ns == p.interval_ns || state.interval_ns == 0 || state.tat_ns <= now {
        return state.tat_ns; // same interval, or nothing spent: nothing to convert
    }
    let ahead = u128::from(state.tat_ns - now);
    let converted = ahead * u128::from(p.interval_ns) / u128::from(state.interval_ns);
    now.saturating_add(u64::try_from(converted).unwrap_or(u64::MAX))
}

/// Inspect the bucket for a cost of `n` tokens, changing nothing. `tat` is already rebased.
pub fn check(tat: u64, p: &Params, now: u64, n: u64) -> Check {
    let start = tat.max(now);
    let used = start - now; // time debt: how far ahead of now the bucket runs
    let tau = p.tolerance_ns();
    let remaining = tau.saturating_sub(used) / p.interval_ns;
    let new_used = used.saturating_add(p.cost_ns(n));
    let allowed = new_used <= tau && n <= p.capacity;
    let retry_after_ns = if allowed {
        Some(0)
    } else if n > p.capacity {
        None
    } else {
        Some(new_used - tau) // waiting this long drains exactly enough debt
    };
    Check { allowed, remaining, reset_ns: used, retry_after_ns }
}

/// Spend `n` tokens unconditionally (a reservation that passed [`check`], or a forced charge of
/// an excess at settle time, which may run beyond `τ`: debt, the client waits longer).
pub fn charge(tat: u64, p: &Params, now: u64, n: u64) -> u64 {
    tat.max(now).saturating_add(p.cost_ns(n))
}

/// Give back `n` tokens; never further than a full bucket (`tat` ≥ `now`).
pub fn refund(tat: u64, p: &Params, now: u64, n: u64) -> u64 {
    tat.saturating_sub(p.cost_ns(n)).max(now)
}

/// Nanoseconds to whole seconds, rounded up so a client that waits that long is not early.
pub fn ceil_secs(ns: u64) -> u64 {
    ns.div_ceil(NS_PER_SEC)
}

fn sat_mul(a: u64, b: u64) -> u64 {
    a.saturating_mul(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DAY: u64 = 86_400 * NS_PER_SEC;
    const NOW: u64 = 1_714_809_600 * NS_PER_SEC; // 2024-05-04T08:00:00Z

    #[test]
    fn fills_drains_and_refills_exactly() {
        let p = Params::new(2000, DAY);
        assert_eq!(p.interval_ns(), 43_200_000_000); // 43.2 s per CV
        let mut tat = NOW; // full
        let c = check(tat, &p, NOW, 2000);
        assert!(c.allowed);
        assert_eq!(c.remaining, 2000);
        tat = charge(tat, &p, NOW, 2000);
        let c = check(tat, &p, NOW, 1);
        assert!(!c.allowed);
        assert_eq!(c.remaining, 0);
        assert_eq!(c.retry_after_ns, Some(43_200_000_000));
        assert_eq!(c.reset_ns, DAY);
        // 43.2 s later exactly one CV is back, not a nanosecond earlier.
        assert!(!check(tat, &p, NOW + 43_199_999_999, 1).allowed);
        let c = check(tat, &p, NOW + 43_200_000_000, 1);
        assert!(c.allowed);
        assert_eq!(c.remaining, 1);
        // half a day refills half.
        assert_eq!(check(tat, &p, NOW + DAY / 2, 0).remaining, 1000);
        assert_eq!(check(tat, &p, NOW + DAY, 0).remaining, 2000);
        // never more than full, however long we wait.
        assert_eq!(check(tat, &p, NOW + 10 * DAY, 0).remaining, 2000);
    }

    #[test]
    fn remaining_and_retry_after_exact() {
        let p = Params::new(2000, DAY);
        let tat = charge(NOW, &p, NOW, 1850); // 150 left
        let c = check(tat, &p, NOW, 200);
        assert!(!c.allowed);
        assert_eq!(c.remaining, 150);
        assert_eq!(c.retry_after_ns, Some(50 * 43_200_000_000)); // 50 more CVs to refill
        assert_eq!(ceil_secs(c.retry_after_ns.unwrap()), 2160);
        let c = check(tat, &p, NOW, 150);
        assert!(c.allowed);
        assert_eq!(c.retry_after_ns, Some(0));
    }

    #[test]
    fn more_than_capacity_never_fits() {
        let p = Params::new(400, 60 * NS_PER_SEC);
        let c = check(NOW, &p, NOW, 401);
        assert!(!c.allowed);
        assert_eq!(c.retry_after_ns, None);
        assert_eq!(c.remaining, 400);
    }

    #[test]
    fn window_not_multiple_of_capacity_holds_exactly_capacity() {
        // T = floor(1e9 / 6e8) = 1 ns; τ = C·T, so a full bucket holds C tokens, not 1e9.
        let p = Params::new(600_000_000, NS_PER_SEC);
        assert_eq!(check(NOW, &p, NOW, 0).remaining, 600_000_000);
        assert!(!check(NOW, &p, NOW, 600_000_001).allowed);
    }

    #[test]
    fn debt_from_forced_charge_delays_the_client() {
        let p = Params::new(100, 100 * NS_PER_SEC); // 1 CV per second
        let tat = charge(NOW, &p, NOW, 150); // 50 beyond capacity
        let c = check(tat, &p, NOW, 1);
        assert_eq!(c.remaining, 0);
        assert_eq!(c.retry_after_ns, Some(51 * NS_PER_SEC));
    }

    #[test]
    fn refund_stops_at_full() {
        let p = Params::new(100, 100 * NS_PER_SEC);
        let tat = charge(NOW, &p, NOW, 30);
        assert_eq!(refund(tat, &p, NOW, 10), NOW + 20 * NS_PER_SEC);
        assert_eq!(refund(tat, &p, NOW, 1000), NOW);
    }

    #[test]
    fn rebase_keeps_spent_tokens() {
        let old = Params::new(2000, DAY);
        let tat = charge(NOW, &old, NOW, 1500);
        let new = Params::new(4000, DAY);
        let st = GcraState { tat_ns: tat, interval_ns: old.interval_ns() };
        let t2 = rebase(st, &new, NOW);
        assert_eq!(check(t2, &new, NOW, 0).remaining, 2500);
        // Shrinking below what was spent leaves the bucket in debt, not reset.
        let small = Params::new(1000, DAY);
        let t3 = rebase(st, &small, NOW);
        assert_eq!(check(t3, &small, NOW, 0).remaining, 0);
        assert_eq!(ceil_secs(check(t3, &small, NOW, 1).retry_after_ns.unwrap()), 43_287); // 501 CVs × 86.4 s, rounded up
                                                                                          // A bucket that refilled long ago converts to full.
        let later = NOW + 2 * DAY;
        assert_eq!(check(rebase(st, &new, later), &new, later, 0).remaining, 4000);
    }

    proptest! {
        #[test]
        fn never_panics(tat in any::<u64>(), iv in any::<u64>(), cap in any::<u64>(), w in any::<u64>(),
                        now in any::<u64>(), n in any::<u64>()) {
            let p = Params::new(cap, w);
            let t = rebase(GcraState { tat_ns: tat, interval_ns: iv }, &p, now);
            let c = check(t, &p, now, n);
            prop_assert!(c.remaining <= p.capacity());
            let _ = charge(t, &p, now, n);
            let _ = refund(t, &p, now, n);
            let _ = ceil_secs(c.reset_ns);
        }

        #[test]
        fn charge_then_refund_is_identity_when_not_clamped(
            tat in 0u64..u64::MAX / 4, now in 0u64..u64::MAX / 4, cap in 1u64..1_000_000,
            w in 1u64..(1u64 << 50), n in 0u64..1_000_000) {
            let p = Params::new(cap, w);
            let t = tat.max(now); // a state charged from here is not clamped by the refund
            let charged = charge(t, &p, now, n);
            prop_assert_eq!(refund(charged, &p, now, n), t);
        }

        #[test]
        fn allowed_iff_fits_in_remaining(spent in 0u64..5000, n in 0u64..5000, cap in 1u64..5000) {
            let p = Params::new(cap, DAY);
            let tat = charge(NOW, &p, NOW, spent.min(cap));
            let c = check(tat, &p, NOW, n);
            prop_assert_eq!(c.allowed, n <= c.remaining);
        }
    }
}
