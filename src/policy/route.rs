//! Routes: which requests are CV requests, and what each one costs.
//!
//! A route matches method + path and says: its group (what closure windows and pauses name),
//! whether a verified employer is required, how many CVs to reserve before forwarding, how to
//! count the CVs in the response, and the deep-paging guard. First match wins; a request that
//! matches no route is rejected (`unmatched: reject`, the default) so that an unlisted path can
//! never be a way around counting.

use std::sync::Arc;

use http::Method;
use serde::{Deserialize, Serialize};

use crate::count::integrity::{RouteEncoding, Undecodable};
use crate::count::RecordFormat;
use crate::invalid::Invalid;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A verified employer account with accepted assurance and a KvK number.
    Employer,
    /// Anyone; identity is still read (and quotas still apply to an identified caller).
    Anonymous,
}

/// How many CVs to reserve before forwarding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reserve {
    /// Not charged at all (vacancies, health).
    Free,
    Fixed(u64),
    /// From a query parameter, with a default when absent and a cap.
    Query {
        param: String,
        default: u64,
        max: u64,
    },
}

/// How the response's records are counted (the real charge at settle time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Count {
    /// The reservation is the charge.
    Reserved,
    /// A response header carries the count, e.g. `X-Result-Count`.
    Header(http::HeaderName),
    /// A body format counted as it streams.
    Body(RecordFormat),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeepPaging {
    pub page_param: String,
    pub size_param: String,
    pub default_size: u64,
    pub max_depth: u64,
}

/// A validated route.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: Arc<str>,
    pub group: Arc<str>,
    methods: Vec<Method>,
    segments: Vec<Segment>,
    prefix: bool,
    pub access: Access,
    pub reserve: Reserve,
    /// Grant what fits (≥ 1) instead of rejecting, and cut the stream at the grant.
    pub up_to: bool,
    pub count: Count,
    pub deep_paging: Option<DeepPaging>,
    /// Content codings: what is asked upstream, whether to compress for the client.
    pub encoding: RouteEncoding,
    /// Answers carry CVs `masking` may mask: how they are made of records (a counted body's
    /// format, else one CV per answer).
    pub mask: Option<crate::count::mask::MaskFormat>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Lit(String),
    Param,
}

/// Routes in match order.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
    /// Forward unmatched requests as anonymous, uncharged (`true`), or reject them (`false`).
    pub forward_unmatched: bool,
}

impl RouteTable {
    /// Validate the raw routes.
    ///
    /// # Errors
    /// Every problem found, each with its key path relative to the config root
    /// (`routes[2].path`, `unmatched`).
    pub fn from_raw(raw: &[RawRoute], unmatched: &str) -> Result<Self, Invalid> {
        let mut errs = Invalid::new();
        let mut routes = Vec::new();
        let mut names = std::collections::HashSet::new();
        for (i, r) in raw.iter().enumerate() {
            let p = format!("routes[{i}]");
            if r.name.is_empty() {
                errs.push(format!("{p}.name"), "a route needs a name");
            } else if !names.insert(r.name.clone()) {
                errs.push(format!("{p}.name"), format!("duplicate route name {:?}", r.name));
            }
            if r.group.is_empty() {
                errs.push(format!("{p}.group"), "a route needs a group (e.g. cv)");
            }
            if let Some(route) = errs.nest(&p, Route::from_raw(r)) {
                routes.push(Arc::new(route));
            }
        }
        let forward_unmatched = match unmatched {
            "reject" => false,
            "forward" => true,
            other => {
                errs.push("unmatched", format!("expected reject or forward, got {other:?}"));
                false
            }
        };
        errs.into_result(Self { routes, forward_unmatched })
    }

    /// The first route matching `method` and the (already normalised) `path`.
    pub fn find(&self, method: &Method, path: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| r.matches(method, path))
    }

    /// The routes in match order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.routes.iter()
    }

    /// Every group named by a route.
    pub fn groups(&self) -> Vec<Arc<str>> {
        let mut g: Vec<Arc<str>> = self.routes.iter().map(|r| r.group.clone()).collect();
        g.sort();
        g.dedup();
        g
    }
}

impl Route {
    /// One route entry; error paths are relative to the entry (`cost.max`).
    fn from_raw(r: &RawRoute) -> Result<Self, Invalid> {
        let mut errs = Invalid::new();
        let mut methods = Vec::new();
        for (j, m) in r.methods.iter().enumerate() {
            match Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                Ok(m) => methods.push(m),
                Err(_) => errs.push(format!("methods[{j}]"), format!("not an HTTP method: {m:?}")),
            }
        }
        let (segments, prefix) = match parse_pattern(&r.path) {
            Ok(x) => x,
            Err(e) => {
                errs.push("path", e);
                (Vec::new(), false)
            }
        };
        let access = match r.identity.as_deref().unwrap_or("employer") {
            "employer" => Access::Employer,
            "anonymous" => Access::Anonymous,
            other => {
                errs.push("identity", format!("expected employer or anonymous, got {other:?}"));
                Access::Employer
            }
        };
        let (reserve, up_to, count) = match &r.cost {
            None => (Reserve::Free, false, Count::Reserved),
            Some(c) => errs.under("cost", |e| parse_cost(c, e)),
        };
        let deep_paging = r.deep_paging.as_ref().map(|d| DeepPaging {
            page_param: d.page_param.clone(),
            size_param: d.size_param.clone(),
            default_size: d.default_size,
            max_depth: d.max_depth,
        });
        if let Some(d) = &deep_paging {
            if d.max_depth == 0 {
                errs.push("deep_paging.max_depth", "must be greater than 0");
            }
        }
        let mut encoding = errs.under("encoding", |e| parse_encoding(&r.encoding, e));
        if up_to {
            // An export cut at its grant cannot pass uncounted: whatever the file says, refuse.
            encoding.undecodable = Undecodable::Refuse;
        }
        let mask = match (r.mask, &count) {
            (Some(false), _) => None,
            (None, _) if r.cost.is_none() => None,
            (_, Count::Body(f)) => Some(f.clone().into()),
            (_, _) => Some(crate::count::mask::MaskFormat::Single),
        };
        errs.into_result(Route {
            mask,
            name: r.name.as_str().into(),
            group: r.group.as_str().into(),
            methods,
            segments,
            prefix,
            access,
            reserve,
            up_to,
            count,
            deep_paging,
            encoding,
        })
    }

    /// The route of a request no configured route matches, when `unmatched: forward`:
    /// anonymous, uncharged.
    pub fn unmatched() -> Self {
        Route {
            name: "unmatched".into(),
            group: "unmatched".into(),
            methods: Vec::new(),
            segments: Vec::new(),
            prefix: true,
            access: Access::Anonymous,
            reserve: Reserve::Free,
            up_to: false,
            count: Count::Reserved,
            deep_paging: None,
            encoding: RouteEncoding::default(),
            mask: None,
        }
    }

    fn matches(&self, method: &Method, path: &str) -> bool {
        if !self.methods.is_empty() && !self.methods.contains(method) {
            return false;
        }
        let mut parts = path.trim_start_matches('/').split('/').filter(|s| !s.is_empty());
        for seg in &self.segments {
            match (seg, parts.next()) {
                (Segment::Lit(l), Some(s)) if l == s => {}
                (Segment::Param, Some(_)) => {}
                _ => return false,
            }
        }
        self.prefix || parts.next().is_none()
    }

    /// Whether requests on this route are charged at all.
    pub fn is_charged(&self) -> bool {
        self.reserve != Reserve::Free
    }
}

fn parse_pattern(path: &str) -> Result<(Vec<Segment>, bool), String> {
    if !path.starts_with('/') {
        return Err(format!("a path pattern starts with '/', got {path:?}"));
    }
    let (body, prefix) = match path.strip_suffix("/*") {
        Some(b) => (b, true),
        None => (path, false),
    };
    let mut segs = Vec::new();
    for s in body.split('/').filter(|s| !s.is_empty()) {
        if s.starts_with('{') && s.ends_with('}') && s.len() > 2 {
            segs.push(Segment::Param);
        } else if s.contains(['{', '}', '*', '?', '%']) {
            return Err(format!("bad path segment {s:?} (use {{name}} for one segment, /* at the end for a prefix)"));
        } else {
            segs.push(Segment::Lit(s.to_string()));
        }
    }
    Ok((segs, prefix))
}

/// `encoding:` of a route; error paths relative to it.
fn parse_encoding(r: &RawEncoding, errs: &mut Invalid) -> RouteEncoding {
    let upstream = match http::HeaderValue::from_str(r.upstream.trim()) {
        Ok(v) if !r.upstream.trim().is_empty() => v,
        _ => {
            errs.push("upstream", format!("not an Accept-Encoding value: {:?}", r.upstream));
            http::HeaderValue::from_static("identity")
        }
    };
    let undecodable = match r.undecodable.as_str() {
        "charge" => Undecodable::Charge,
        "refuse" => Undecodable::Refuse,
        other => {
            errs.push("undecodable", format!("expected charge or refuse, got {other:?}"));
            Undecodable::Charge
        }
    };
    RouteEncoding { upstream, compress: r.compress, undecodable }
}

/// `cost:` of a route; error paths relative to it (the empty path is `cost` itself).
fn parse_cost(c: &RawCost, errs: &mut Invalid) -> (Reserve, bool, Count) {
    let reserve = match (c.fixed, &c.query) {
        (Some(_), Some(_)) => {
            errs.push("", "give either fixed or query, not both");
            Reserve::Free
        }
        (Some(n), None) => Reserve::Fixed(n),
        (None, Some(q)) => {
            let default = c.default.unwrap_or(1);
            let max = c.max.unwrap_or(default);
            if max == 0 {
                errs.push("max", "must be greater than 0");
            }
            if default > max {
                errs.push("default", format!("default {default} exceeds max {max}"));
            }
            Reserve::Query { param: q.clone(), default, max }
        }
        (None, None) => {
            errs.push("", "a cost needs fixed: N or query: PARAM");
            Reserve::Free
        }
    };
    let count = match c.count.as_deref().unwrap_or("none") {
        "none" => Count::Reserved,
        "ndjson" => Count::Body(RecordFormat::Ndjson),
        other => match other.split_once(':') {
            Some(("json_array", field)) if !field.is_empty() => {
                Count::Body(RecordFormat::JsonArrayField(field.to_string()))
            }
            Some(("header", h)) => match http::HeaderName::from_bytes(h.as_bytes()) {
                Ok(h) => Count::Header(h),
                Err(_) => {
                    errs.push("count", format!("not a header name: {h:?}"));
                    Count::Reserved
                }
            },
            _ => {
                errs.push("count", format!("expected none, ndjson, json_array:FIELD or header:NAME, got {other:?}"));
                Count::Reserved
            }
        },
    };
    if c.up_to && count != Count::Body(RecordFormat::Ndjson) {
        errs.push("up_to", "up_to needs count: ndjson (only NDJSON can be cut at a record)");
    }
    (reserve, c.up_to, count)
}

/// One route: which requests it matches and how they are treated.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(default)]
pub struct RawRoute {
    pub name: String,
    /// Route group, e.g. `cv` or `vacancies`: what closure windows and pauses name.
    pub group: String,
    /// Methods matched; empty = any.
    pub methods: Vec<String>,
    /// `/api/v1/cvs/{id}` (a `{name}` matches one segment) or `/api/v1/vacancies/*` (prefix).
    pub path: String,
    /// `employer` (verified account with accepted assurance and a KvK number) or `anonymous`.
    pub identity: Option<String>,
    /// How many CVs a request costs.
    pub cost: Option<RawCost>,
    /// Deep-paging guard: reject when page × size exceeds `max_depth`.
    pub deep_paging: Option<RawDeepPaging>,
    /// Content codings on a charged route (count integrity).
    pub encoding: RawEncoding,
    /// Its answers carry CVs whose contact data `masking` may remove; default: charged routes.
    pub mask: Option<bool>,
}

/// `routes[].encoding`: what a charged route asks of the upstream and gives the client.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RawEncoding {
    /// `Accept-Encoding` sent upstream: `identity` (default), or e.g. `gzip, br` to let the
    /// upstream compress (cvgate decodes gzip, deflate, br and zstd to count).
    pub upstream: String,
    /// Compress the answer again for a client that accepts gzip, br or zstd.
    pub compress: bool,
    /// A body in a coding cvgate cannot decode: `charge` (the full reservation) or `refuse` (502).
    pub undecodable: String,
}

impl Default for RawEncoding {
    fn default() -> Self {
        Self { upstream: "identity".into(), compress: false, undecodable: "charge".into() }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(default)]
pub struct RawCost {
    /// Fixed reservation per request (e.g. 1 for a single CV).
    pub fixed: Option<u64>,
    /// Reservation from a query parameter (e.g. `size`), with default and cap.
    pub query: Option<String>,
    pub default: Option<u64>,
    pub max: Option<u64>,
    /// `true`: grant what the budget allows (at least 1) instead of rejecting; the stream is
    /// cut at a record boundary when the grant is used up (exports).
    pub up_to: bool,
    /// How records are counted in the response: `header:X-Result-Count`, `json_array:results`,
    /// `ndjson`, or `none` (the reservation is the charge).
    pub count: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RawDeepPaging {
    pub page_param: String,
    pub size_param: String,
    pub default_size: u64,
    pub max_depth: u64,
}

impl Default for RawDeepPaging {
    fn default() -> Self {
        Self { page_param: "page".into(), size_param: "size".into(), default_size: 20, max_depth: 2000 }
    }
}

/// The CV API's routes, as served by `cvgate mock-cv-api` and werk.nl's CV API.
pub fn default_routes() -> Vec<RawRoute> {
    let cv = |name: &str, path: &str, cost: RawCost| RawRoute {
        name: name.into(),
        group: "cv".into(),
        methods: vec!["GET".into()],
        path: path.into(),
        identity: Some("employer".into()),
        cost: Some(cost),
        deep_paging: None,
        encoding: RawEncoding::default(),
        mask: None,
    };
    vec![
        cv(
            "cv_export",
            "/api/v1/cvs/export",
            RawCost {
                query: Some("limit".into()),
                default: Some(1000),
                max: Some(10_000),
                up_to: true,
                count: Some("ndjson".into()),
                ..RawCost::default()
            },
        ),
        RawRoute {
            deep_paging: Some(RawDeepPaging::default()),
            ..cv(
                "cv_search",
                "/api/v1/cvs",
                RawCost {
                    query: Some("size".into()),
                    default: Some(20),
                    max: Some(200),
                    count: Some("json_array:results".into()),
                    ..RawCost::default()
                },
            )
        },
        cv("cv_get", "/api/v1/cvs/{id}", RawCost { fixed: Some(1), ..RawCost::default() }),
        RawRoute {
            name: "vacancies".into(),
            group: "vacancies".into(),
            methods: vec![],
            path: "/api/v1/vacancies/*".into(),
            identity: Some("anonymous".into()),
            cost: None,
            deep_paging: None,
            encoding: RawEncoding::default(),
            mask: None,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_routes_match_the_cv_api() {
        let t = RouteTable::from_raw(&default_routes(), "reject").unwrap();
        let name = |m: Method, p: &str| t.find(&m, p).map(|r| r.name.to_string());
        assert_eq!(name(Method::GET, "/api/v1/cvs").as_deref(), Some("cv_search"));
        assert_eq!(name(Method::GET, "/api/v1/cvs/").as_deref(), Some("cv_search"));
        assert_eq!(name(Method::GET, "/api/v1/cvs/export").as_deref(), Some("cv_export"));
        assert_eq!(name(Method::GET, "/api/v1/cvs/123").as_deref(), Some("cv_get"));
        assert_eq!(name(Method::GET, "/api/v1/vacancies").as_deref(), Some("vacancies"));
        assert_eq!(name(Method::POST, "/api/v1/vacancies/9").as_deref(), Some("vacancies"));
        assert_eq!(name(Method::POST, "/api/v1/cvs"), None);
        assert_eq!(name(Method::GET, "/api/v1/cvs/1/2"), None);
    }

    #[test]
    fn every_route_error_is_reported() {
        let mut r = default_routes();
        r[0].path = "api".into();
        r[1].methods = vec!["G ET".into()];
        r[2].identity = Some("robot".into());
        let errs = RouteTable::from_raw(&r, "maybe").unwrap_err();
        let keys: Vec<_> = errs.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(keys, ["routes[0].path", "routes[1].methods[0]", "routes[2].identity", "unmatched"]);
    }
}
