//! The config as written in YAML: plain serde structs with defaults, no validation.
//!
//! Every field here has a default, so a minimal file (even `{}`) works; entries of lists and
//! maps have required fields of their own (a route's name, group and path, a closure window's
//! name, start, end and groups, a horizon's budget and window). docs/config.md documents each
//! key, with its default; `tests/docs_honesty.rs` checks that against these structs. Unknown
//! keys are reported by the loader ([`super::Config::parse`]), all of them at once.

use serde::{Deserialize, Serialize};

use crate::policy::closure::RawClosure;
use crate::policy::identity::RawIdentity;
pub use crate::policy::route::{default_routes, RawCost, RawDeepPaging, RawEncoding, RawRoute};
use crate::quota::RawQuota;

/// Top level of `config.yaml`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RawConfig {
    /// Development mode: allows `identity.dev_hs256` (tokens anyone with this file can sign).
    /// Logged at start and exported as `cvgate_dev_mode 1`, which pages (alerts.yml).
    pub dev_mode: bool,
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
    pub audit: crate::observe::audit::RawAudit,
    /// Country of the client IP (country quota scope, audit).
    pub geo: crate::policy::geo::RawGeo,
    pub blocks: crate::policy::blocks::RawBlocks,
    pub admin: RawAdmin,
    /// When CV answers lose their holders' contact data (see `policy::masking`).
    pub masking: crate::policy::masking::RawMasking,
    /// Newcomer probation (see `policy::probation`).
    pub probation: crate::policy::probation::RawProbation,
    /// The population guard (see `policy::guard`).
    pub guard: crate::policy::guard::RawGuard,
}

impl Default for RawConfig {
    fn default() -> Self {
        Self {
            dev_mode: false,
            listen: RawListen::default(),
            upstream: RawUpstream::default(),
            limits: RawLimits::default(),
            identity: RawIdentity::default(),
            routes: default_routes(),
            unmatched: "reject".into(),
            paused: Vec::new(),
            closure: crate::policy::closure::default_windows(),
            quota: crate::quota::default_raw(),
            store: crate::quota::RawStore::default(),
            audit: crate::observe::audit::RawAudit::default(),
            geo: crate::policy::geo::RawGeo::default(),
            blocks: crate::policy::blocks::RawBlocks::default(),
            admin: RawAdmin::default(),
            masking: crate::policy::masking::RawMasking::default(),
            probation: crate::policy::probation::RawProbation::default(),
            guard: crate::policy::guard::RawGuard::default(),
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

/// Admin API access: one unnamed token (named `admin`), and/or named ones (see
/// [`super::admin`]).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RawAdmin {
    /// Bearer token. Prefer `token_env` so the secret stays out of the file.
    pub token: Option<String>,
    /// Environment variable holding the token (used when `token` is null).
    pub token_env: String,
    /// Named tokens, so that the admin log and audit say who acted (`security`, `ops`, ...).
    pub tokens: Vec<RawAdminToken>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self { token: None, token_env: "CVGATE_ADMIN_TOKEN".into(), tokens: Vec::new() }
    }
}

/// One entry of `admin.tokens`: a name and its secret, written here or in an environment
/// variable (exactly one of the two).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RawAdminToken {
    pub name: String,
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub token_env: Option<String>,
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
    /// CA bundle (PEM) for an https upstream. It replaces the webpki roots: with it, only these
    /// CAs are trusted (`net::tls::upstream_client_config`).
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
    /// An upstream response body that sends nothing for this long is ended (the client's
    /// request body has no such timeout).
    pub idle_body_timeout: String,
    pub max_connections: usize,
    pub max_inflight_requests: usize,
    pub h2_max_concurrent_streams: u32,
    /// SIGTERM/SIGINT: how long in-flight requests may finish. Read at start.
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
