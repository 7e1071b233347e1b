//! The admin API's questions about one subject (an account, an organisation, an IP): `explain`
//! (everything that decides its next CV request, and why its last ones were refused), `quota`
//! (its buckets), `quota/reset` (refill them), and `top` (the heaviest subjects of a scope,
//! from the quota store's own state). Answers are JSON values; a [`Fault`] says why a question
//! has no answer, and `admin` turns both into responses.
//!
//! Looking changes nothing: a subject is looked up in the first-seen list without being
//! recorded as seen (asking about a newcomer does not start its probation).

use std::net::IpAddr;
use std::sync::Arc;

use http::StatusCode;
use jiff::Timestamp;
use serde_json::{json, Value};

use crate::config::Config;
use crate::policy::blocks::{Block, BlockScope};
use crate::policy::masking::Asker;
use crate::policy::probation::Kind;
use crate::quota::{BucketSpec, BucketState, Scope, StoreError, Subject};
use crate::state::Shared;

/// Subjects `top` answers with at most, and without `n`.
pub const TOP_MAX: usize = 1000;
pub const TOP_DEFAULT: usize = 20;

/// Why a question has no answer: the problem's status, type slug (`admin-<slug>`, as every
/// admin problem) and detail.
#[derive(Debug)]
pub struct Fault {
    pub status: StatusCode,
    pub slug: String,
    pub detail: String,
}

/// The admin problem `slug` (`urn:cvgate:problem:admin-<slug>`, docs/problems.md).
fn problem(status: StatusCode, slug: &str, detail: impl Into<String>) -> Fault {
    Fault { status, slug: format!("admin-{slug}"), detail: detail.into() }
}

fn store_fault(e: StoreError) -> Fault {
    problem(StatusCode::SERVICE_UNAVAILABLE, "store", e.to_string())
}

/// `name`'s value in a query string, percent-decoded (`%7C` is `|`); `None` when absent or
/// empty.
pub fn query_param(q: &str, name: &str) -> Option<String> {
    let raw = q.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| v)?;
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (b[i], b.get(i + 1).and_then(|c| hex(*c)), b.get(i + 2).and_then(|c| hex(*c))) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned()).filter(|v| !v.is_empty())
}

/// Who an admin call asks about: an account, an organisation (KvK number) and/or a client IP,
/// at least one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Asked {
    pub account: Option<String>,
    pub org: Option<String>,
    pub ip: Option<IpAddr>,
}

impl Asked {
    /// From `?account=&org=&ip=`.
    ///
    /// # Errors
    /// `ip` is not an address, or nothing is asked about.
    pub fn from_query(q: &str) -> Result<Asked, Fault> {
        let ip = match query_param(q, "ip").map(|v| v.parse::<IpAddr>()) {
            Some(Ok(ip)) => Some(ip),
            Some(Err(_)) => return Err(problem(StatusCode::BAD_REQUEST, "bad-ip", "ip is not an IP address")),
            None => None,
        };
        Asked { account: query_param(q, "account"), org: query_param(q, "org"), ip }.given()
    }

    /// From a JSON body's `account`, `org` and `ip` (strings or null).
    ///
    /// # Errors
    /// A field that is not a string, an `ip` that is not an address, or nothing asked about.
    pub fn from_json(v: &Value) -> Result<Asked, Fault> {
        let text = |k: &str| match &v[k] {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s.clone()).filter(|s| !s.is_empty())),
            _ => Err(problem(StatusCode::UNPROCESSABLE_ENTITY, "bad-subject", format!("{k} must be a string"))),
        };
        let ip = match text("ip")?.map(|s| s.parse::<IpAddr>()) {
            Some(Ok(ip)) => Some(ip),
            Some(Err(_)) => return Err(problem(StatusCode::UNPROCESSABLE_ENTITY, "bad-ip", "ip is not an IP address")),
            None => None,
        };
        Asked { account: text("account")?, org: text("org")?, ip }.given()
    }

    fn given(self) -> Result<Asked, Fault> {
        if self == Asked::default() {
            return Err(problem(StatusCode::BAD_REQUEST, "no-subject", "give account, org and/or ip"));
        }
        Ok(self)
    }

    /// As the quota engine takes it (no IP: a placeholder whose buckets [`Asked::names`]
    /// leaves out; the country is unknown).
    fn subject(&self) -> Subject<'_> {
        Subject {
            account: self.account.as_deref(),
            org: self.org.as_deref(),
            ip: self.ip.unwrap_or(IpAddr::from([0, 0, 0, 0])),
            country: "ZZ",
        }
    }

    /// Whether the call names this scope's subject.
    fn names(&self, scope: Scope) -> bool {
        match scope {
            Scope::Account => self.account.is_some(),
            Scope::Org => self.org.is_some(),
            Scope::Ip => self.ip.is_some(),
            Scope::Country | Scope::Global => false,
        }
    }

    /// The subject of one bucket key of `top`.
    fn of_key(scope: Scope, id: &str) -> Asked {
        match scope {
            Scope::Account => Asked { account: Some(id.into()), ..Asked::default() },
            Scope::Org => Asked { org: Some(id.into()), ..Asked::default() },
            _ => Asked { ip: id.parse::<ipnet::IpNet>().ok().map(|n| n.network()), ..Asked::default() },
        }
    }
}

/// Probation as the proxy decides it (`policy::probation::on_probation`), without recording
/// the subject as seen: one not seen yet would start it at its first request.
struct Probation {
    on: bool,
    first_seen: Vec<(Kind, Option<Timestamp>)>,
    until: Option<Timestamp>,
}

fn probation(shared: &Shared, cfg: &Config, asked: &Asked, now: Timestamp) -> Probation {
    let p = &cfg.probation;
    let mut out = Probation { on: false, first_seen: Vec::new(), until: None };
    for (kind, id) in [(Kind::Account, &asked.account), (Kind::Org, &asked.org)] {
        let Some(id) = id else { continue };
        let first = shared.seen.get(kind, id);
        let t = first.unwrap_or(now.as_second());
        if p.is_new(t, now) {
            out.on = true;
            let ends = p.period.and_then(|d| Timestamp::from_second(t).ok()?.checked_add(d).ok());
            out.until = out.until.max(ends);
        }
        out.first_seen.push((kind, first.and_then(|t| Timestamp::from_second(t).ok())));
    }
    out
}

impl Probation {
    /// The tier the quota engine charges a newcomer in.
    fn tier<'c>(&self, cfg: &'c Config) -> Option<&'c str> {
        self.on.then_some(&*cfg.probation.tier)
    }

    fn json(&self, cfg: &Config) -> Value {
        let mut v = json!({
            "enabled": cfg.probation.enabled(),
            "tier": &*cfg.probation.tier,
            "on_probation": self.on,
            "until": self.until,
        });
        for (kind, first) in &self.first_seen {
            v[format!("{}_first_seen", kind.as_str())] = json!(first);
        }
        v
    }
}

fn bucket_json(b: &BucketSpec, s: &BucketState) -> Value {
    json!({"scope": b.scope.as_str(), "horizon": &*b.horizon, "key": b.key, "capacity": b.capacity,
           "window_secs": b.window_ns / 1_000_000_000, "remaining": s.remaining, "reset_secs": s.reset_secs,
           "shadow": b.shadow, "fixed": b.fixed_offset_ns.is_some()})
}

/// `GET /v1/quota`: the buckets of the scopes asked about, in the tier the subject is charged
/// in now (a newcomer's probation tier included).
///
/// # Errors
/// The store cannot answer.
pub async fn quota(shared: &Shared, asked: &Asked) -> Result<Value, Fault> {
    let rt = shared.runtime();
    let cfg = &rt.config;
    let p = probation(shared, cfg, asked, shared.clock.now());
    let (buckets, tier) = shared.quota.buckets_as(&cfg.quota, &asked.subject(), p.tier(cfg));
    let buckets = buckets.into_iter().filter(|b| asked.names(b.scope)).collect();
    let states = shared.quota.peek_buckets(buckets).await.map_err(store_fault)?;
    let list: Vec<Value> = states.iter().map(|(b, s)| bucket_json(b, s)).collect();
    Ok(json!({ "buckets": list, "tier": tier.as_deref() }))
}

/// Does `b` apply to what was asked: the account, the organisation, or a prefix holding the IP?
fn blocks_it(b: &Block, asked: &Asked) -> bool {
    match b.scope {
        BlockScope::Account => asked.account.as_deref() == Some(&*b.key),
        BlockScope::Org => asked.org.as_deref() == Some(&*b.key),
        BlockScope::Ip => {
            asked.ip.zip(b.key.parse::<ipnet::IpNet>().ok()).is_some_and(|(ip, net)| net.contains(&ip.to_canonical()))
        }
    }
}

/// `GET /v1/explain`: everything that decides the subject's next CV request now, and its last
/// refusals. See the admin API's doc in README for the fields.
///
/// # Errors
/// The store cannot answer.
pub async fn explain(shared: &Shared, asked: &Asked) -> Result<Value, Fault> {
    let rt = shared.runtime();
    let cfg = &rt.config;
    let now = shared.clock.now();
    let (account, org) = (asked.account.as_deref(), asked.org.as_deref());
    let p = probation(shared, cfg, asked, now);
    let (buckets, tier) = shared.quota.buckets_as(&cfg.quota, &asked.subject(), p.tier(cfg));
    let buckets = buckets.into_iter().filter(|b| asked.names(b.scope) || b.scope == Scope::Global).collect();
    let states = shared.quota.peek_buckets(buckets).await.map_err(store_fault)?;

    // The guard and masking see the tier the proxy would (`quota::tier_of`, probation included).
    let guard_who =
        crate::policy::guard::Subject { account, org, tier: tier.as_deref(), country: "ZZ", probation: p.on };
    let action = shared.guard.action_for(&guard_who);
    let m = &cfg.masking;
    let asker = Asker { account, org, tier: tier.as_deref() };
    let (exempt, named) = m.applies_to(&asker);
    let soft: Vec<Value> = m
        .soft_budgets
        .iter()
        .filter_map(|s| {
            let (b, st) = states.iter().find(|(b, _)| b.scope == s.scope && *b.horizon == *s.horizon)?;
            let used = b.capacity.saturating_sub(st.remaining);
            Some(json!({"scope": s.scope.as_str(), "horizon": s.horizon, "after": s.after, "used": used,
                        "unmasked_left": s.after.saturating_sub(used)}))
        })
        .collect();
    let unmasked_left = soft.iter().filter_map(|s| s["unmasked_left"].as_u64()).min().filter(|_| !exempt);
    let mut groups = serde_json::Map::new();
    for g in cfg.routes.groups() {
        let closed = cfg.closure.decide(&g, account, org, now).map(
            |c| json!({"window": c.window, "opens_at": c.opens_at_rfc3339(), "retry_after_secs": c.retry_after_secs}),
        );
        let switched = shared.masks.is_on(&g);
        let masked = m
            .decide(&g, &asker, switched, action.mask.is_some(), None, now)
            .map(|d| d.reason.as_str())
            .or((unmasked_left == Some(0)).then_some("soft-budget"));
        groups.insert(
            g.to_string(),
            json!({"closed": closed, "paused": shared.is_paused(&g), "operator_masked": switched, "masked": masked}),
        );
    }
    let blocks: Vec<Block> = shared.blocks.list(now).into_iter().filter(|b| blocks_it(b, asked)).collect();
    let ip_prefix = asked.ip.map(|ip| crate::quota::ip_prefix(&cfg.quota, ip).to_string());
    Ok(json!({
        "subject": {"account": account, "org": org, "ip": asked.ip, "ip_prefix": ip_prefix},
        "at": now,
        "tier": tier.as_deref(),
        "probation": p.json(cfg),
        "buckets": states.iter().map(|(b, s)| bucket_json(b, s)).collect::<Vec<_>>(),
        "blocks": blocks,
        "groups": groups,
        "mask": {
            "shadow": m.shadow,
            "operator": shared.masks.list(),
            "exempt": exempt,
            "config": named.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
            "guard": action.mask.as_deref(),
            "soft_budgets": soft,
            "unmasked_left": unmasked_left,
        },
        "guard": {"mask": action.mask.as_deref(), "pause": action.pause.as_deref()},
        "refusals": refusals(shared, asked),
    }))
}

/// The refusals kept for each subject asked about, newest first, each once.
fn refusals(shared: &Shared, asked: &Asked) -> Vec<Value> {
    use crate::observe::refusals::Subject as R;
    let subjects = [asked.account.clone().map(R::Account), asked.org.clone().map(R::Org), asked.ip.map(R::Ip)];
    let mut all: Vec<_> = subjects.iter().flatten().flat_map(|s| shared.refusals.of(s)).collect();
    all.sort_by_key(|r| std::cmp::Reverse(r.seq));
    all.dedup_by_key(|r| r.seq);
    all.iter()
        .map(|r| {
            json!({"at": r.at, "request_id": r.request_id, "route": r.route.as_deref(), "decision": r.decision,
                   "scope": r.scope, "horizon": r.horizon, "status": r.status})
        })
        .collect()
}

/// A scope `top` and `quota/reset` take.
fn subject_scope(s: &str) -> Option<Scope> {
    [Scope::Account, Scope::Org, Scope::Ip].into_iter().find(|x| x.as_str() == s)
}

/// `GET /v1/top?scope=&horizon=&n=`: the `n` subjects of the scope with the most CVs used in
/// that horizon, from the quota store itself ([`crate::quota::QuotaStore::top`] documents the
/// cost), off the runtime's threads. Capacity and tier per subject as its own override and
/// first-seen time make them (an account charged under its organisation's override shows the
/// default).
///
/// # Errors
/// A scope, horizon or `n` that is not one, or the store cannot answer.
pub async fn top(shared: &Arc<Shared>, q: &str) -> Result<Value, Fault> {
    let Some(scope) = query_param(q, "scope").as_deref().and_then(subject_scope) else {
        return Err(problem(StatusCode::UNPROCESSABLE_ENTITY, "bad-scope", "scope must be account, org or ip"));
    };
    let rt = shared.runtime();
    let cfg = &rt.config;
    let known = cfg.quota.horizon_names(scope);
    let horizon = query_param(q, "horizon").filter(|h| known.contains(h.as_str())).ok_or_else(|| {
        let list: Vec<&str> = known.iter().map(|h| &**h).collect();
        problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad-horizon",
            format!("horizon must be one of the {} scope's: {}", scope.as_str(), list.join(", ")),
        )
    })?;
    let n = match query_param(q, "n") {
        None => TOP_DEFAULT,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                let detail = format!("n must be a whole number from 1 (at most {TOP_MAX} are given)");
                problem(StatusCode::UNPROCESSABLE_ENTITY, "bad-n", detail)
            })?
            .min(TOP_MAX),
    };
    let (s, h, handle) = (Arc::clone(shared), horizon.clone(), tokio::runtime::Handle::current());
    let list = tokio::task::spawn_blocking(move || {
        let rt = s.runtime();
        handle.block_on(s.quota.top(&rt.config.quota, scope, &h, n))
    })
    .await
    .map_err(|e| problem(StatusCode::INTERNAL_SERVER_ERROR, "task", e.to_string()))?
    .map_err(store_fault)?
    .ok_or_else(|| problem(StatusCode::UNPROCESSABLE_ENTITY, "bad-horizon", "the horizon went away in a reload"))?;
    let now = shared.clock.now();
    let top: Vec<Value> = list
        .entries
        .iter()
        .map(|e| {
            let id = crate::quota::key_subject(&e.key, scope, &horizon).unwrap_or(&e.key);
            let asked = Asked::of_key(scope, id);
            let p = probation(shared, cfg, &asked, now);
            let (buckets, tier) = shared.quota.buckets_as(&cfg.quota, &asked.subject(), p.tier(cfg));
            let capacity = buckets.iter().find(|b| b.key == e.key).map(|b| b.capacity);
            json!({"subject": id, "key": e.key, "used": e.used, "capacity": capacity,
                   "remaining": capacity.map(|c| c.saturating_sub(e.used)), "tier": tier.as_deref()})
        })
        .collect();
    Ok(json!({"scope": scope.as_str(), "horizon": horizon, "n": n, "top": top,
              "scanned": list.scanned, "complete": list.complete}))
}

/// `POST /v1/quota/reset`: refill the subject's buckets (those of the scopes named, narrowed
/// by `scope` and `horizon` when given; never country or global), written to the audit log as
/// a `quota-reset` event naming `by`. An IP's buckets are its prefix's (`i:203.0.113.0/24|day`):
/// every address in it gets them back. A block a rule made stays (`DELETE /v1/blocks/...`).
///
/// # Errors
/// A bad subject, scope or horizon, nothing matching, or the store cannot reset.
pub async fn reset(shared: &Shared, v: &Value, by: &str) -> Result<Value, Fault> {
    let asked = Asked::from_json(v)?;
    let scope = match &v["scope"] {
        Value::Null => None,
        s => match s.as_str().and_then(subject_scope) {
            Some(scope) if asked.names(scope) => Some(scope),
            Some(scope) => {
                return Err(problem(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "bad-scope",
                    format!("no {} given to reset", scope.as_str()),
                ))
            }
            None => {
                return Err(problem(StatusCode::UNPROCESSABLE_ENTITY, "bad-scope", "scope must be account, org or ip"))
            }
        },
    };
    let horizon = match &v["horizon"] {
        Value::Null => None,
        Value::String(h) => Some(h.as_str()),
        _ => return Err(problem(StatusCode::UNPROCESSABLE_ENTITY, "bad-horizon", "horizon must be a string")),
    };
    let rt = shared.runtime();
    let cfg = &rt.config;
    let now = shared.clock.now();
    let p = probation(shared, cfg, &asked, now);
    let (buckets, _) = shared.quota.buckets_as(&cfg.quota, &asked.subject(), p.tier(cfg));
    let chosen: Vec<BucketSpec> = buckets
        .into_iter()
        .filter(|b| asked.names(b.scope) && scope.is_none_or(|s| s == b.scope))
        .filter(|b| horizon.is_none_or(|h| *b.horizon == *h))
        .collect();
    if chosen.is_empty() {
        let detail = "no bucket of this subject matches (an exempt subject has none)";
        return Err(problem(StatusCode::UNPROCESSABLE_ENTITY, "no-bucket", detail));
    }
    // What was used, for the answer and the audit line (best effort: the reset matters more).
    let before = shared.quota.peek_buckets(chosen.clone()).await.ok();
    let held = shared.quota.reset(&chosen).await.map_err(store_fault)?;
    let list: Vec<Value> = chosen
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let used = before.as_ref().map(|s| b.capacity.saturating_sub(s[i].1.remaining));
            json!({"scope": b.scope.as_str(), "horizon": &*b.horizon, "key": b.key, "used_before": used})
        })
        .collect();
    shared.audit.event(
        now,
        "quota-reset",
        json!({"by": by, "account": asked.account, "org": asked.org, "ip": asked.ip, "buckets": list}),
    );
    Ok(json!({"reset": list, "held_spending": held, "by": by}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(query_param("account=acct%7C1&org=", "account").as_deref(), Some("acct|1"));
        assert_eq!(query_param("account=acct%7C1&org=", "org"), None);
        assert_eq!(query_param("a=%zz%4", "a").as_deref(), Some("%zz%4"));
        assert_eq!(query_param("a=1", "b"), None);
    }

    #[test]
    fn a_subject_is_needed_and_the_ip_must_parse() {
        assert_eq!(Asked::from_query("account=a1").unwrap().account.as_deref(), Some("a1"));
        assert_eq!(Asked::from_query("").unwrap_err().slug, "admin-no-subject");
        assert_eq!(Asked::from_query("ip=300.1.1.1").unwrap_err().slug, "admin-bad-ip");
        let j = Asked::from_json(&json!({"org": "12345678", "ip": "10.0.0.9"})).unwrap();
        assert_eq!((j.org.as_deref(), j.ip), (Some("12345678"), Some(IpAddr::from([10, 0, 0, 9]))));
        assert_eq!(Asked::from_json(&json!({"account": 5})).unwrap_err().slug, "admin-bad-subject");
        assert_eq!(Asked::from_json(&json!({"account": ""})).unwrap_err().slug, "admin-no-subject");
    }

    #[test]
    fn ip_blocks_hold_the_address_asked_about() {
        let b = |scope, key: &str| Block {
            scope,
            key: key.into(),
            reason: "r".into(),
            source: "manual".into(),
            created: Timestamp::UNIX_EPOCH,
            until: None,
        };
        let asked = Asked { account: Some("a".into()), ip: Some("203.0.113.7".parse().unwrap()), ..Asked::default() };
        assert!(blocks_it(&b(BlockScope::Ip, "203.0.113.0/24"), &asked));
        assert!(!blocks_it(&b(BlockScope::Ip, "198.51.100.0/24"), &asked));
        assert!(blocks_it(&b(BlockScope::Account, "a"), &asked));
        assert!(!blocks_it(&b(BlockScope::Org, "a"), &asked));
    }
}
