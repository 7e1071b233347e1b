//! Rate-limit response headers, draft-ietf-httpapi-ratelimit-headers-10 syntax:
//! `RateLimit-Policy: "account-burst";q=400;w=60, "account-day";q=2000;w=86400` and
//! `RateLimit: "account-day";r=150;t=3600`, plus `Retry-After` on a rejection.
//!
//! What is shown: the ONE bucket that constrains this request — the non-shadow bucket with the
//! fewest CVs left (in a rejection, the bucket that fired) — named `{scope}-{horizon}`, and the
//! policies (limits, not usage) of that bucket's scope. Org, IP, country and global buckets are
//! shared with other people, so their usage is reported only when it is what limits this caller,
//! and only as the single number the caller needs. Quotas are in CVs; the draft's `qu` parameter
//! has no unit for records, so it is left out (the API docs say "CVs").
//!
//! With `quota.legacy_headers`, the same bucket is also shown in the names clients built for
//! Kong and Envoy read: `X-RateLimit-Limit` (its capacity), `X-RateLimit-Remaining`,
//! `X-RateLimit-Reset` (seconds until it is full again, as Envoy sends it).

use super::gcra::ceil_secs;
use super::store::{BucketSpec, BucketState};
use super::Reservation;

/// Header names, lower-case as HTTP/2 requires (and `HeaderName::from_static` accepts).
pub const RATELIMIT_POLICY: &str = "ratelimit-policy";
pub const RATELIMIT: &str = "ratelimit";
pub const RETRY_AFTER: &str = "retry-after";
pub const X_RATELIMIT_LIMIT: &str = "x-ratelimit-limit";
pub const X_RATELIMIT_REMAINING: &str = "x-ratelimit-remaining";
pub const X_RATELIMIT_RESET: &str = "x-ratelimit-reset";

/// Headers for a granted request (none for an exempt one or when every bucket is shadow).
pub fn ratelimit_headers(r: &Reservation) -> Vec<(&'static str, String)> {
    let tightest = (0..r.buckets.len())
        .filter(|&i| !r.buckets[i].shadow)
        .min_by_key(|&i| (r.states[i].remaining, std::cmp::Reverse(r.states[i].reset_secs)));
    match tightest {
        Some(i) => pair(&r.buckets, &r.states, i, r.legacy_headers),
        None => Vec::new(),
    }
}

/// `Retry-After` value: delay-seconds.
pub fn retry_after(secs: u64) -> String {
    secs.to_string()
}

/// Headers for a rejection by bucket `index`; no `Retry-After` when no wait helps (too large).
pub(crate) fn rejection_headers(
    buckets: &[BucketSpec],
    states: &[BucketState],
    index: usize,
    retry_after_secs: Option<u64>,
    legacy: bool,
) -> Vec<(&'static str, String)> {
    let mut h = pair(buckets, states, index, legacy);
    if let Some(secs) = retry_after_secs {
        h.push((RETRY_AFTER, retry_after(secs)));
    }
    h
}

fn pair(buckets: &[BucketSpec], states: &[BucketState], i: usize, legacy: bool) -> Vec<(&'static str, String)> {
    let scope = buckets[i].scope;
    // One buffer per header, written in place with `itoa` (this runs on every charged response;
    // `write!` was ~5.6 k instructions a response under callgrind).
    let mut num = itoa::Buffer::new();
    let mut item = |out: &mut String, horizon: &str, (k1, v1): (&str, u64), (k2, v2): (&str, u64)| {
        out.push('"');
        out.push_str(scope.as_str());
        out.push('-');
        out.push_str(horizon);
        out.push_str("\";");
        out.push_str(k1);
        out.push_str(num.format(v1));
        out.push_str(k2);
        out.push_str(num.format(v2));
    };
    let mut policy = String::with_capacity(128);
    for b in buckets.iter().filter(|b| b.scope == scope && !b.shadow) {
        if !policy.is_empty() {
            policy.push_str(", ");
        }
        item(&mut policy, &b.horizon, ("q=", b.capacity), (";w=", ceil_secs(b.window_ns)));
    }
    let b = &buckets[i];
    let s = &states[i];
    let mut limit = String::with_capacity(48);
    item(&mut limit, &b.horizon, ("r=", s.remaining), (";t=", s.reset_secs));
    let mut h = vec![(RATELIMIT_POLICY, policy), (RATELIMIT, limit)];
    if legacy {
        h.push((X_RATELIMIT_LIMIT, num.format(b.capacity).to_string()));
        h.push((X_RATELIMIT_REMAINING, num.format(s.remaining).to_string()));
        h.push((X_RATELIMIT_RESET, num.format(s.reset_secs).to_string()));
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::Scope;

    fn spec(scope: Scope, horizon: &str, cap: u64, secs: u64) -> BucketSpec {
        BucketSpec::new(format!("{}:x|{horizon}", scope.key_prefix()), scope, horizon, cap, secs * 1_000_000_000)
    }

    #[test]
    fn names_only_the_constraining_bucket() {
        let buckets = vec![
            spec(Scope::Account, "burst", 400, 60),
            spec(Scope::Account, "day", 2000, 86_400),
            spec(Scope::Org, "day", 5000, 86_400),
        ];
        let st = |r, t| BucketState { remaining: r, reset_secs: t, retry_after_secs: 0 };
        let r = Reservation {
            granted: 200,
            buckets,
            states: vec![st(200, 30), st(150, 79_000), st(4000, 17_000)],
            would_reject: vec![],
            tier: None,
            exempt: false,
            legacy_headers: false,
        };
        let h = ratelimit_headers(&r);
        assert_eq!(
            h,
            vec![
                (RATELIMIT_POLICY, "\"account-burst\";q=400;w=60, \"account-day\";q=2000;w=86400".to_string()),
                (RATELIMIT, "\"account-day\";r=150;t=79000".to_string()),
            ]
        );
        // The org's usage (shared with colleagues) is not shown when it does not constrain.
        assert!(!h.iter().any(|(_, v)| v.contains("org")));
    }

    #[test]
    fn rejection_adds_retry_after() {
        let b = vec![spec(Scope::Ip, "day", 5000, 86_400)];
        let s = vec![BucketState { remaining: 12, reset_secs: 86_000, retry_after_secs: 8000 }];
        let h = rejection_headers(&b, &s, 0, Some(8000), false);
        assert_eq!(h[1], (RATELIMIT, "\"ip-day\";r=12;t=86000".to_string()));
        assert_eq!(h[2], (RETRY_AFTER, "8000".to_string()));
        assert_eq!(h.len(), 3, "no legacy names unless asked for");
        // Legacy names on: the same bucket in Kong's/Envoy's headers.
        let h = rejection_headers(&b, &s, 0, Some(8000), true);
        assert_eq!(
            &h[2..],
            &[
                (X_RATELIMIT_LIMIT, "5000".to_string()),
                (X_RATELIMIT_REMAINING, "12".to_string()),
                (X_RATELIMIT_RESET, "86000".to_string()),
                (RETRY_AFTER, "8000".to_string()),
            ]
        );
    }
}
