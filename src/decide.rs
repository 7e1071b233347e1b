//! The policy's decisions on one request, without HTTP: after the proxy has found the route and
//! the identity (`proxy::admit`), [`check`] asks the blocks, pauses, closure windows and the
//! paging depth; [`reserve`] the population guard, probation and the quota buckets (all or
//! nothing); [`mask_step`] whether the answer loses contact data. The proxy calls them on every
//! request; `cvgate simulate` calls the same functions on recorded requests, so a replay decides
//! exactly as the proxy did.

use std::sync::Arc;

use http::header::HeaderValue;

use crate::count::RecordFormat;
use crate::ctx::Ctx;
use crate::policy::blocks::{Event, Who};
use crate::policy::masking::{Asker, MaskStep};
use crate::policy::route::{Count, Reserve, Route};
use crate::problem::ProxyError;
use crate::quota::{CostMode, Rejection, Reservation, Subject};
use crate::state::{Runtime, Shared};

/// A finished request's CVs into the population guard's sums, in its cohorts (the proxy at the
/// body's end, the replay at the recorded end).
pub fn add_to_guard(shared: &Shared, ctx: &Ctx, delivered: u64, at: jiff::Timestamp) {
    if delivered > 0 {
        let (account, org, tier) = (ctx.account.as_deref(), ctx.org.as_deref(), ctx.tier.as_deref());
        shared.guard.add(&guard_subject(account, org, tier, &ctx.country, ctx.newcomer), delivered, at);
    }
}

/// blocks, pauses, closure windows, deep paging: the checks between identity and quota.
///
/// # Errors
/// The problem that answers the request.
pub fn check(shared: &Shared, cfg: &crate::config::Config, a: &Admitted, query: &str) -> Result<(), ProxyError> {
    if let Some(b) = shared.blocks.check(&a.who(), a.now) {
        return Err(ProxyError::Blocked { scope: b.scope.as_str(), until: b.until.map(|u| u.to_string()) });
    }
    if shared.is_paused(&a.route.group) {
        return Err(ProxyError::Paused { group: a.route.group.to_string() });
    }
    if let Some(c) = cfg.closure.decide(&a.route.group, a.account(), a.org(), a.now) {
        let (window, opens_at, retry_after) = (c.window.clone(), c.opens_at_rfc3339(), c.retry_after_secs);
        return Err(ProxyError::Closed { window, opens_at, retry_after });
    }
    check_paging(shared, cfg, a, query)
}

pub fn guard_subject<'a>(
    account: Option<&'a str>,
    org: Option<&'a str>,
    tier: Option<&'a str>,
    country: &'a str,
    probation: bool,
) -> crate::policy::guard::Subject<'a> {
    crate::policy::guard::Subject { account, org, tier, country, probation }
}

/// Does this answer lose its holders' contact data? Only a success on a route that carries CVs.
pub fn mask_step(
    shared: &Shared,
    rt: &Runtime,
    a: &Admitted,
    reservation: Option<&Reservation>,
    status: http::StatusCode,
    guard: bool,
) -> Option<MaskStep> {
    let format = a.route.mask.as_ref().filter(|_| status.is_success())?;
    let m = &rt.config.masking;
    let who = Asker { account: a.account(), org: a.org(), tier: reservation.and_then(|r| r.tier.as_deref()) };
    let switched = shared.masks.any() && shared.masks.is_on(&a.route.group);
    let decision = m.decide(&a.route.group, &who, switched, guard, reservation, a.now)?;
    Some(MaskStep::new(m, decision, format.clone()))
}

/// What admission established: the route, who is asking, from where, and when.
pub struct Admitted {
    pub route: Arc<Route>,
    pub identity: Option<crate::policy::identity::Identity>,
    pub client_ip: std::net::IpAddr,
    pub ip_prefix: ipnet::IpNet,
    pub now: jiff::Timestamp,
}

impl Admitted {
    pub fn account(&self) -> Option<&str> {
        self.identity.as_ref().map(|i| i.account.as_str())
    }

    pub fn org(&self) -> Option<&str> {
        self.identity.as_ref().and_then(|i| i.org.as_deref())
    }

    pub fn who(&self) -> Who<'_> {
        Who { account: self.account(), org: self.org(), ip: self.client_ip, ip_prefix: self.ip_prefix }
    }

    /// The route's counted body format, if it counts the body.
    pub fn format(&self) -> Option<&RecordFormat> {
        match &self.route.count {
            Count::Body(f) => Some(f),
            _ => None,
        }
    }
}

/// paging: page × size beyond the route's depth is refused (walking the whole database page by
/// page), and counts toward the deep-paging block rule.
fn check_paging(shared: &Shared, cfg: &crate::config::Config, a: &Admitted, query: &str) -> Result<(), ProxyError> {
    let Some(dp) = &a.route.deep_paging else { return Ok(()) };
    let page = number_param(query, &dp.page_param)?.unwrap_or(1).max(1);
    let mut size = number_param(query, &dp.size_param)?.unwrap_or(dp.default_size);
    if let Reserve::Query { param, max, .. } = &a.route.reserve {
        if *param == dp.size_param {
            size = size.min(*max); // depth is checked at the reserved size; the query itself goes upstream unchanged
        }
    }
    let depth = page.saturating_mul(size);
    if depth > dp.max_depth {
        shared.share_blocks(shared.blocks.observe(&cfg.blocks, Event::DeepPaging, None, &a.who(), a.now));
        return Err(ProxyError::TooDeep { depth, max_depth: dp.max_depth });
    }
    Ok(())
}

/// reserve: the expected CVs from every bucket of every scope, all or nothing. A quota refusal
/// counts toward the block rules.
pub async fn reserve(
    shared: &Shared,
    rt: &Runtime,
    a: &Admitted,
    query: &str,
    ctx: &mut Ctx,
) -> Result<Option<Arc<Reservation>>, ProxyError> {
    let cfg = &rt.config;
    let Some(n) = expected_cost(&a.route, query)? else { return Ok(None) };
    ctx.asked = n;
    let mode = if a.route.up_to { CostMode::UpTo { max: n, min: 1 } } else { CostMode::Exact(n) };
    let subject = Subject { account: a.account(), org: a.org(), ip: a.client_ip, country: &ctx.country };
    // A newcomer (probation) without an override of its own is charged in the probation tier.
    let newcomer = crate::policy::probation::on_probation(&cfg.probation, &shared.seen, a.account(), a.org(), a.now);
    let tier = newcomer.then_some(&*cfg.probation.tier);
    // The population guard: this request's cohorts may be masked or paused.
    let cohort_tier = crate::quota::tier_of(&cfg.quota, a.account(), a.org(), tier);
    let who = guard_subject(a.account(), a.org(), cohort_tier.as_deref(), &ctx.country, newcomer);
    let action = shared.guard.action_for(&who);
    if let Some(rule) = action.pause {
        return Err(ProxyError::GuardPaused { group: a.route.group.to_string(), rule: rule.to_string() });
    }
    (ctx.newcomer, ctx.guard_mask) = (newcomer, action.mask);
    let r = match shared.quota.reserve_as(&cfg.quota, &subject, tier, mode).await {
        Ok(r) => Arc::new(r),
        Err(rej) => {
            let e = rejection(rej);
            if let ProxyError::QuotaExceeded { scope, horizon, .. } = &e {
                let fired = Some((*scope, horizon.as_str()));
                shared.share_blocks(shared.blocks.observe(&cfg.blocks, Event::Quota, fired, &a.who(), a.now));
            }
            return Err(e);
        }
    };
    ctx.reserved = r.granted;
    ctx.tier = r.tier.as_deref().map(str::to_string);
    for (scope, horizon) in &r.would_reject {
        shared.metrics.quota_would_reject.with_label_values(&[scope.as_str(), horizon]).inc();
        ctx.would_reject.push((scope.as_str().to_string(), horizon.to_string()));
    }
    Ok(Some(r))
}

pub fn rejection(r: Rejection) -> ProxyError {
    match r {
        Rejection::Quota { scope, horizon, retry_after_secs, headers } => ProxyError::QuotaExceeded {
            scope: scope.as_str(),
            horizon: horizon.to_string(),
            retry_after: retry_after_secs,
            headers: quota_headers(headers),
        },
        Rejection::TooLarge { scope, horizon, capacity, headers } => ProxyError::TooLarge {
            scope: scope.as_str(),
            horizon: horizon.to_string(),
            capacity,
            headers: quota_headers(headers),
        },
        Rejection::Store(e) => {
            tracing::warn!(error = %e, "quota store failed");
            ProxyError::QuotaUnavailable
        }
    }
}

fn quota_headers(h: Vec<(&'static str, String)>) -> Vec<(http::HeaderName, HeaderValue)> {
    h.into_iter()
        .filter_map(|(k, v)| Some((http::HeaderName::from_static(k), HeaderValue::from_str(&v).ok()?)))
        .collect()
}

/// CVs to reserve before forwarding; `None` for routes that are not charged.
pub fn expected_cost(route: &Route, query: &str) -> Result<Option<u64>, ProxyError> {
    Ok(match &route.reserve {
        Reserve::Free => None,
        Reserve::Fixed(n) => Some(*n),
        Reserve::Query { param, default, max } => Some(number_param(query, param)?.unwrap_or(*default).clamp(1, *max)),
    })
}

/// A numeric query parameter that decides a charge or a depth, read strictly: the upstream must
/// not be able to read it differently from us. So a name that appears twice (in any spelling,
/// e.g. `size=1&%73ize=200`) or a value that is not plain digits is refused (400), rather than
/// guessing which one the upstream will use.
pub fn number_param(query: &str, name: &str) -> Result<Option<u64>, ProxyError> {
    // Byte by byte: this runs three times per charged request over a short query, where `str`
    // patterns (`split`, `split_once`, `contains([..])`) cost more than the scan itself.
    let mut found = None;
    for kv in query.as_bytes().split(|&b| b == b'&') {
        let (k, v) = match kv.iter().position(|&b| b == b'=') {
            Some(eq) => (&kv[..eq], &kv[eq + 1..]),
            None => (kv, &[][..]),
        };
        // Most keys carry no escapes: compare them as they are, without decoding.
        let same =
            if k.iter().any(|&b| b == b'%' || b == b'+') { percent_decode(k) == name } else { k == name.as_bytes() };
        if !same {
            continue;
        }
        if found.is_some() {
            return Err(ProxyError::BadRequest("a paging or size parameter appears more than once"));
        }
        if v.is_empty() || v.len() > 12 || !v.iter().all(u8::is_ascii_digit) {
            return Err(ProxyError::BadRequest("a paging or size parameter is not a plain number"));
        }
        // At most 12 digits: no overflow.
        found = Some(v.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')));
    }
    Ok(found)
}

/// `%XX` and `+` decoding of a query key (enough to compare names as the upstream sees them).
fn percent_decode(b: &[u8]) -> String {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex =
            b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(x)) => {
                out.push(x);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charge_parameters_are_read_strictly() {
        assert_eq!(number_param("size=200&page=3", "size").unwrap(), Some(200));
        assert_eq!(number_param("query=x", "size").unwrap(), None);
        // Regression: the upstream must not read a different size than the one we charged.
        assert!(number_param("size=1&size=200", "size").is_err());
        assert!(number_param("size=1&%73ize=200", "size").is_err());
        assert!(number_param("size=%32%30%30", "size").is_err());
        assert!(number_param("size=-1", "size").is_err());
        assert!(number_param("size", "size").is_err());
        assert_eq!(percent_decode(b"%73ize+x%zz"), "size x%zz");
        assert_eq!(number_param("&&size=007&", "size").unwrap(), Some(7));
        assert_eq!(number_param("", "size").unwrap(), None);
        assert_eq!(number_param("size=999999999999", "size").unwrap(), Some(999_999_999_999));
        assert!(number_param("size=1000000000000", "size").is_err(), "13 digits");
    }

    /// The reading `number_param` had before it worked on bytes (`str` patterns), kept as the
    /// reference the byte version must agree with.
    fn number_param_by_str(query: &str, name: &str) -> Result<Option<u64>, ()> {
        let mut found = None;
        for (k, v) in query.split('&').filter_map(|kv| kv.split_once('=').or(Some((kv, "")))) {
            let same = if k.contains(['%', '+']) { percent_decode(k.as_bytes()) == name } else { k == name };
            if !same {
                continue;
            }
            if found.is_some() || v.is_empty() || v.len() > 12 || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(());
            }
            found = Some(v.parse().map_err(|_| ())?);
        }
        Ok(found)
    }

    proptest::proptest! {
        #[test]
        fn the_byte_reading_agrees_with_the_str_reading(query in "[sizepag=&%73+0-9x]{0,24}") {
            for name in ["size", "page"] {
                proptest::prop_assert_eq!(number_param(&query, name).map_err(|_| ()), number_param_by_str(&query, name));
            }
        }
    }
}
