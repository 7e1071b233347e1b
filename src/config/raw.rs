//! The config as written in YAML: plain serde structs with defaults, no validation.
//!
//! Every field has a default so a minimal file works; `config.yaml` at the repo root documents
//! each key. Unknown keys are reported by the loader (`super::load`), all of them at once.

use serde::{Deserialize, Serialize};

use crate::closure::RawClosure;
use crate::identity::RawIdentity;
use crate::quota::RawQuota;

/// Top level of `config.yaml`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RawConfig {
    pub listen: RawListen,
    pub upstream: RawUpstream,
    pub limits: RawLimits,
    pub identity: RawIdentity,
    pub routes: Vec<RawRoute>,
    pub unmatched: String,
    /// Route groups paused from start (503 `paused`), e.g. `[cv]`.
    pub paused: Vec<String>,
    pub closure: RawClosure,
    pub quota: RawQuota,
    /// Where quota buckets live (memory, or Redis shared by replicas) and the failure policy.
    pub store: crate::quota::RawStore,
    /// The audit log (one JSON line per CV request and per rejection).
    pub audit: crate::audit::RawAudit,
    /// Country of the client IP (country quota scope, audit).
    pub geo: crate::geo::RawGeo,
    pub blocks: crate::blocks::RawBlocks,
    pub admin: RawAdmin,
}

impl Default for RawConfig {
    fn default() -> Self {
        Self {
            listen: RawListen::default(),
            upstream: RawUpstream::default(),
            limits: RawLimits::default(),
            identity: RawIdentity::default(),
            routes: default_routes(),
            unmatched: "reject".into(),
            paused: Vec::new(),
            closure: crate::closure::default_windows(),
            quota: crate::quota::default_raw(),
            store: crate::quota::RawStore::default(),
            audit: crate::audit::RawAudit::default(),
            geo: crate::geo::RawGeo::default(),
            blocks: crate::blocks::RawBlocks::default(),
            admin: RawAdmin::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RawListen {
    /// TLS listener; `null` disables it.
    pub tls: Option<RawTlsListen>,
    /// Plain-HTTP listener (behind a TLS-terminating load balancer); `null` disables it.
    pub plain: Option<String>,
    /// `/metrics`, `/healthz`, `/readyz`; `null` disables it.
    pub metrics: Option<String>,
    /// Admin API; `null` disables it.
    pub admin: Option<String>,
}

impl Default for RawListen {
    fn default() -> Self {
        Self {
            tls: Some(RawTlsListen::default()),
            plain: Some("127.0.0.1:8080".into()),
            metrics: Some("127.0.0.1:9090".into()),
            admin: Some("127.0.0.1:9091".into()),
        }
    }
}

/// Admin API access.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RawAdmin {
    /// Bearer token. Prefer `token_env` so the secret stays out of the file.
    pub token: Option<String>,
    /// Environment variable holding the token (used when `token` is null).
    pub token_env: String,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self { token: None, token_env: "CVGATE_ADMIN_TOKEN".into() }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RawTlsListen {
    pub addr: String,
    /// PEM certificate chain; with `key`. Both `null`: a self-signed localhost cert is generated.
    pub cert: Option<String>,
    pub key: Option<String>,
}

impl Default for RawTlsListen {
    fn default() -> Self {
        Self { addr: "127.0.0.1:8443".into(), cert: None, key: None }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RawUpstream {
    /// `http://host:port` or `https://host:port`, optionally with a path prefix.
    pub url: String,
    /// Extra CA bundle (PEM) to trust for an https upstream, besides the webpki roots.
    pub ca_file: Option<String>,
    /// Keep the client's Host header (true) or send the upstream's authority (false).
    pub preserve_host: bool,
    pub connect_timeout: String,
    pub response_header_timeout: String,
    pub pool_idle_timeout: String,
    pub pool_max_idle_per_host: usize,
}

impl Default for RawUpstream {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8081".into(),
            ca_file: None,
            preserve_host: false,
            connect_timeout: "2s".into(),
            response_header_timeout: "15s".into(),
            pool_idle_timeout: "60s".into(),
            pool_max_idle_per_host: 256,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RawLimits {
    pub header_read_timeout: String,
    pub idle_timeout: String,
    pub max_header_bytes: usize,
    pub idle_body_timeout: String,
    pub max_connections: usize,
    pub max_inflight_requests: usize,
    pub h2_max_concurrent_streams: u32,
    pub shutdown_grace: String,
    /// Most bytes one compressed upstream body may decode to (decompression-bomb guard).
    pub max_decoded_bytes: u64,
    /// Most decoded bytes per compressed byte, checked past the first MiB (bomb guard).
    pub max_decompression_ratio: u64,
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: "10s".into(),
            idle_timeout: "60s".into(),
            max_header_bytes: 16 * 1024,
            idle_body_timeout: "30s".into(),
            max_connections: 10_000,
            max_inflight_requests: 4096,
            h2_max_concurrent_streams: 128,
            shutdown_grace: "30s".into(),
            max_decoded_bytes: 1 << 30,
            max_decompression_ratio: 100,
        }
    }
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
        },
    ]
}
