//! Config: load `config.yaml`, validate it into types that cannot be wrong, report every error.
//!
//! Two steps (linkerd's `parse_config` pattern): serde reads the YAML into [`raw`] structs with
//! defaults; [`Config::from_raw`] validates them into typed values (socket addresses, durations,
//! parsed zones, CIDRs), collecting *every* error with its key path and line before failing.
//! Unknown keys are errors too — all of them, via `serde_ignored`, rather than only the first as
//! `deny_unknown_fields` would give. A reload runs the same function; on failure the running
//! config stays (see `server::reload`).

pub mod admin;
pub mod lines;
pub mod raw;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::invalid::Invalid;
use crate::policy::closure::ClosurePolicy;
use crate::policy::identity::IdentityPolicy;
use crate::policy::route::RouteTable;
use crate::quota::QuotaPolicy;
use lines::LineIndex;
use raw::RawConfig;

pub use crate::forward::Upstream;
pub use crate::net::listener::Limits;

/// One thing wrong with a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Key path, e.g. `routes[2].path` (empty for file-level errors).
    pub path: String,
    /// 1-based line in the file, when known.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.path.is_empty()) {
            (Some(l), false) => write!(f, "line {l}: {}: {}", self.path, self.message),
            (Some(l), true) => write!(f, "line {l}: {}", self.message),
            (None, false) => write!(f, "{}: {}", self.path, self.message),
            (None, true) => write!(f, "{}", self.message),
        }
    }
}

/// Every error found in one config file.
#[derive(Debug, Clone)]
pub struct ConfigErrors {
    pub file: String,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}: {} error(s)", self.file, self.errors.len())?;
        for e in &self.errors {
            writeln!(f, "  {}: {e}", self.file)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    /// One file-level error (e.g. a certificate that does not load during a reload).
    pub fn single(file: &Path, e: impl fmt::Display) -> Self {
        Self {
            file: file.display().to_string(),
            errors: vec![ConfigError { path: String::new(), line: None, message: e.to_string() }],
        }
    }
}

/// The validated config. Built only by [`Config::from_raw`].
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Listen,
    pub upstream: Upstream,
    pub limits: Limits,
    pub identity: IdentityPolicy,
    pub routes: RouteTable,
    pub closure: ClosurePolicy,
    pub quota: QuotaPolicy,
    /// The quota store (read at start: changing it needs a restart, not a reload).
    pub store: crate::quota::StoreConfig,
    /// The memory store's snapshot file and how often it is written (read at start).
    pub snapshot: Option<(PathBuf, Duration)>,
    /// Audit log settings (read at start: changing them needs a restart, not a reload).
    pub audit: crate::observe::audit::AuditSettings,
    /// Country of the client IP (trusted edge header, MaxMind database).
    pub geo: crate::policy::geo::GeoPolicy,
    /// When CV answers lose contact data.
    pub masking: crate::policy::masking::MaskingPolicy,
    /// Newcomer probation.
    pub probation: crate::policy::probation::ProbationPolicy,
    /// The population guard's rules.
    pub guard: crate::policy::guard::GuardPolicy,
    pub blocks: crate::policy::blocks::BlocksConfig,
    /// Admin API bearer tokens, by name; none: every admin request is refused.
    pub admin: admin::AdminTokens,
    /// Route groups paused at start (operators pause/resume at run time too).
    pub paused_groups: Vec<String>,
    /// The raw form, for the admin API's "effective config" (secrets redacted there).
    pub raw: RawConfig,
}

#[derive(Debug, Clone)]
pub struct Listen {
    pub tls: Option<TlsListen>,
    pub plain: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
}

#[derive(Debug, Clone)]
pub struct TlsListen {
    pub addr: SocketAddr,
    /// Cert and key PEM paths; `None` = generate a self-signed localhost cert.
    pub files: Option<(PathBuf, PathBuf)>,
}

/// A socket address (`ip:port`), or `None` with the error recorded at `path`.
fn addr(e: &mut Invalid, path: &str, s: &str) -> Option<SocketAddr> {
    match s.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            e.push(path, format!("not a socket address (ip:port): {s:?}"));
            None
        }
    }
}

fn opt_addr(e: &mut Invalid, path: &str, s: &Option<String>) -> Option<SocketAddr> {
    s.as_deref().and_then(|s| addr(e, path, s))
}

impl Config {
    /// Validate a raw config. `base` is the directory relative paths are resolved against.
    /// Reads the JWKS file the identity section names.
    ///
    /// # Errors
    /// Every problem found, each with its key path from the config root.
    pub fn from_raw(raw: RawConfig, base: &Path) -> Result<Config, Invalid> {
        let mut e = Invalid::new();
        let resolve = |p: &str| -> PathBuf {
            let p = Path::new(p);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };

        // listen
        let l = &raw.listen;
        let tls = l.tls.as_ref().and_then(|t| {
            let addr = addr(&mut e, "listen.tls.addr", &t.addr)?;
            let files = match (&t.cert, &t.key) {
                (Some(c), Some(k)) => Some((resolve(c), resolve(k))),
                (None, None) => None,
                _ => {
                    e.push("listen.tls", "give both cert and key, or neither (self-signed)");
                    None
                }
            };
            Some(TlsListen { addr, files })
        });
        let listen = Listen {
            tls,
            plain: opt_addr(&mut e, "listen.plain", &l.plain),
            metrics: opt_addr(&mut e, "listen.metrics", &l.metrics),
            admin: opt_addr(&mut e, "listen.admin", &l.admin),
        };
        if listen.tls.is_none() && listen.plain.is_none() {
            e.push("listen", "enable at least one of tls and plain");
        }
        // Two listeners on one address: `serve` would fail to bind the second (port 0 picks a
        // free port each time, so it never clashes).
        let named = [
            ("listen.tls.addr", listen.tls.as_ref().map(|t| t.addr)),
            ("listen.plain", listen.plain),
            ("listen.metrics", listen.metrics),
            ("listen.admin", listen.admin),
        ];
        for (i, (key, addr)) in named.iter().enumerate() {
            let Some(a) = addr.filter(|a| a.port() != 0) else { continue };
            if let Some((other, _)) = named[..i].iter().find(|(_, b)| *b == Some(a)) {
                e.push(*key, format!("{a} is already {other}'s address"));
            }
        }

        // upstream
        let u = &raw.upstream;
        let upstream = match u.url.parse::<http::Uri>() {
            Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) && uri.authority().is_some() => Some(uri),
            _ => {
                e.push("upstream.url", format!("expected http://host:port or https://host:port, got {:?}", u.url));
                None
            }
        };
        let upstream = upstream.map(|uri| Upstream {
            https: uri.scheme_str() == Some("https"),
            authority: uri.authority().cloned().expect("checked above"),
            path_prefix: uri.path().trim_end_matches('/').to_string(),
            uri,
            ca_file: u.ca_file.as_deref().map(resolve),
            preserve_host: u.preserve_host,
            connect_timeout: e.duration("upstream.connect_timeout", &u.connect_timeout).unwrap_or_default(),
            response_header_timeout: e
                .duration("upstream.response_header_timeout", &u.response_header_timeout)
                .unwrap_or_default(),
            pool_idle_timeout: e.duration("upstream.pool_idle_timeout", &u.pool_idle_timeout).unwrap_or_default(),
            pool_max_idle_per_host: u.pool_max_idle_per_host,
        });

        // limits
        let lr = &raw.limits;
        let limits = Limits {
            header_read_timeout: e.duration("limits.header_read_timeout", &lr.header_read_timeout).unwrap_or_default(),
            idle_timeout: e.duration("limits.idle_timeout", &lr.idle_timeout).unwrap_or_default(),
            max_header_bytes: lr.max_header_bytes,
            idle_body_timeout: e.duration("limits.idle_body_timeout", &lr.idle_body_timeout).unwrap_or_default(),
            max_connections: lr.max_connections,
            max_inflight_requests: lr.max_inflight_requests,
            h2_max_concurrent_streams: lr.h2_max_concurrent_streams,
            shutdown_grace: e.duration("limits.shutdown_grace", &lr.shutdown_grace).unwrap_or_default(),
            bomb: crate::count::codec::BombGuard {
                max_bytes: lr.max_decoded_bytes,
                max_ratio: lr.max_decompression_ratio,
                ..crate::count::codec::BombGuard::default()
            },
        };
        if lr.max_decoded_bytes == 0 {
            e.push("limits.max_decoded_bytes", "must be greater than 0");
        }
        if lr.max_decompression_ratio == 0 {
            e.push("limits.max_decompression_ratio", "must be greater than 0");
        }
        if limits.max_header_bytes < 1024 {
            e.push("limits.max_header_bytes", "must be at least 1024");
        }
        if limits.max_connections == 0 {
            e.push("limits.max_connections", "must be greater than 0");
        }
        if limits.max_inflight_requests == 0 {
            e.push("limits.max_inflight_requests", "must be greater than 0");
        }
        if limits.header_read_timeout.is_zero() {
            e.push("limits.header_read_timeout", "must be greater than 0");
        }
        if limits.idle_timeout.is_zero() {
            e.push("limits.idle_timeout", "must be greater than 0");
        }

        // identity (reads the JWKS file it names)
        let jwks_text = match &raw.identity.jwks_file {
            Some(f) => match std::fs::read_to_string(resolve(f)) {
                Ok(t) => Some(t),
                Err(err) => {
                    e.push("identity.jwks_file", format!("cannot read {f:?}: {err}"));
                    None
                }
            },
            None => None,
        };
        let identity = e.nest("identity", IdentityPolicy::from_raw(&raw.identity, jwks_text.as_deref()));
        if raw.identity.dev_hs256.is_some() && !raw.dev_mode {
            e.push(
                "identity.dev_hs256",
                "a shared-secret key anyone with this file can sign tokens with: allowed only with `dev_mode: true` (never in production)",
            );
        }
        let routes = e.nest("", RouteTable::from_raw(&raw.routes, &raw.unmatched));
        let closure = e.nest("closure", ClosurePolicy::from_raw(&raw.closure));
        let quota = e.nest("quota", QuotaPolicy::from_raw(&raw.quota));
        let store = e
            .nest("store", crate::quota::StoreConfig::from_raw(&raw.store))
            .unwrap_or(crate::quota::StoreConfig::Memory);
        let every = e.positive_duration("store.snapshot_every", &raw.store.snapshot_every).unwrap_or_default();
        let snapshot = raw.store.snapshot.as_deref().map(|f| (resolve(f), every));
        // Defaults stand in on error: `e` is not empty then, so no Config is built from them.
        let audit =
            e.nest("audit", crate::observe::audit::AuditSettings::from_raw(&raw.audit, base)).unwrap_or_default();
        let geo = e.nest("geo", crate::policy::geo::GeoPolicy::from_raw(&raw.geo, base)).unwrap_or_default();
        let masking =
            e.nest("masking", crate::policy::masking::MaskingPolicy::from_raw(&raw.masking)).unwrap_or_default();
        let probation = e
            .nest("probation", crate::policy::probation::ProbationPolicy::from_raw(&raw.probation))
            .unwrap_or_default();
        let guard = e.nest("guard", crate::policy::guard::GuardPolicy::from_raw(&raw.guard)).unwrap_or_default();
        if let (Some(q), true) = (&quota, probation.enabled()) {
            if !q.has_tier(&probation.tier) {
                e.push("probation.tier", format!("no quota tier is called {:?} (quota.tiers)", probation.tier));
            }
        }
        if let Some(q) = &quota {
            for (i, s) in masking.soft_budgets.iter().enumerate() {
                if !q.has_horizon(s.scope, &s.horizon) {
                    e.push(
                        format!("masking.soft_budgets[{i}].horizon"),
                        format!(
                            "the {} scope has no quota horizon {:?}: the soft budget could never apply",
                            s.scope.as_str(),
                            s.horizon
                        ),
                    );
                }
            }
        }
        if let Some(rt) = &routes {
            let groups = rt.groups();
            for (i, g) in raw.paused.iter().enumerate() {
                if !groups.iter().any(|x| &**x == g) {
                    e.push(format!("paused[{i}]"), format!("no route has group {g:?}"));
                }
            }
        }
        let paused_groups = raw.paused.clone();
        let blocks = e.nest("blocks", crate::policy::blocks::BlocksConfig::from_raw(&raw.blocks, base));
        // Rules written in the file must be able to fire; the built-in defaults name the
        // default horizons and simply never fire in a config that dropped one.
        let written = raw.blocks.rules != crate::policy::blocks::RawBlocks::default().rules;
        if let (Some(q), Some(b), true) = (&quota, &blocks, written) {
            for (i, r) in b.rules.iter().enumerate() {
                let scope =
                    r.scope.as_deref().and_then(|s| crate::quota::Scope::ALL.into_iter().find(|x| x.as_str() == s));
                let Some(h) = &r.horizon else { continue };
                let known = match scope {
                    Some(s) => q.has_horizon(s, h),
                    None => crate::quota::Scope::ALL.into_iter().any(|s| q.has_horizon(s, h)),
                };
                if !known {
                    e.push(
                        format!("blocks.rules[{i}].horizon"),
                        format!("no quota horizon is called {h:?}: the rule could never fire"),
                    );
                }
            }
        }
        let admin =
            e.nest("admin", admin::AdminTokens::from_raw(&raw.admin, |k| std::env::var(k).ok())).unwrap_or_default();

        match (upstream, identity, routes, closure, quota, blocks) {
            (Some(upstream), Some(identity), Some(routes), Some(closure), Some(quota), Some(blocks))
                if e.is_empty() =>
            {
                Ok(Config {
                    listen,
                    upstream,
                    limits,
                    identity,
                    routes,
                    closure,
                    quota,
                    store,
                    paused_groups,
                    blocks,
                    admin,
                    audit,
                    snapshot,
                    geo,
                    masking,
                    probation,
                    guard,
                    raw,
                })
            }
            _ => Err(e),
        }
    }

    /// Parse and validate YAML text. `file` names the source in errors.
    pub fn parse(text: &str, file: &str, base: &Path) -> Result<Config, ConfigErrors> {
        let fail = |errors| ConfigErrors { file: file.to_string(), errors };
        let index = LineIndex::new(text);
        let mut unknown = Vec::new();
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let raw: Result<RawConfig, _> = serde_ignored::deserialize(de, |p| unknown.push(p.to_string()));
        let mut errors: Vec<ConfigError> = unknown
            .into_iter()
            .map(|p| {
                let path = ignored_path(&p);
                ConfigError { line: index.line_of(&path), path, message: "unknown key".into() }
            })
            .collect();
        let raw = match raw {
            Ok(r) => r,
            Err(err) => {
                let line = err.location().map(|l| l.line());
                errors.push(ConfigError { path: String::new(), line, message: err.to_string() });
                return Err(fail(errors));
            }
        };
        match Config::from_raw(raw, base) {
            Ok(c) if errors.is_empty() => Ok(c),
            Ok(_) => Err(fail(errors)),
            Err(es) => {
                errors.extend(es.into_iter().map(|(path, message)| ConfigError {
                    line: index.line_of(&path),
                    path,
                    message,
                }));
                Err(fail(errors))
            }
        }
    }

    /// `raw` for a world of its own in memory (the demo's scenarios, `cvgate simulate`): quota
    /// buckets in memory, no block file or snapshot, no listeners; everything that decides a
    /// request stays. Callers choose the audit log and turn on the listener they need.
    ///
    /// # Errors
    /// Every problem found, as `key: message` joined by `; `.
    pub fn detached(mut raw: RawConfig, base: &Path) -> Result<Config, String> {
        raw.store.kind = "memory".into();
        raw.store.snapshot = None;
        raw.blocks.file = None;
        let mut c = Self::from_raw(raw, base)
            .map_err(|es| es.into_iter().map(|(k, m)| format!("{k}: {m}")).collect::<Vec<_>>().join("; "))?;
        (c.listen.tls, c.listen.plain, c.listen.metrics, c.listen.admin) = (None, None, None, None);
        Ok(c)
    }

    /// Read, parse and validate a config file, and load the files it names (certificate and
    /// key, upstream CA) as `serve` will: what `check-config` accepts, `serve` starts with
    /// (short of binding the ports).
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            file: file.clone(),
            errors: vec![ConfigError { path: String::new(), line: None, message: format!("cannot read: {e}") }],
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let config = Config::parse(&text, &file, &base)?;
        let index = LineIndex::new(&text);
        let errors: Vec<ConfigError> = config
            .file_errors()
            .into_iter()
            .map(|(path, message)| ConfigError { line: index.line_of(&path), path, message })
            .collect();
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors { file, errors })
        }
    }

    /// The files this config names that cannot be loaded, with their keys.
    fn file_errors(&self) -> Invalid {
        let mut errs = Invalid::new();
        if let Some((cert, key)) = self.listen.tls.as_ref().and_then(|t| t.files.as_ref()) {
            if let Err(e) = crate::net::tls::load_pair(cert, key) {
                errs.push("listen.tls.cert", format!("cannot load the certificate and key: {e:#}"));
            }
        }
        if let Some(ca) = &self.upstream.ca_file {
            if let Err(e) = crate::net::tls::upstream_client_config(Some(ca)) {
                errs.push("upstream.ca_file", format!("cannot load the CA bundle: {e:#}"));
            }
        }
        errs
    }
}

/// serde_ignored writes sequence indices as `.N`; ours are `[N]`.
fn ignored_path(p: &str) -> String {
    let mut out = String::new();
    for seg in p.split('.') {
        if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{seg}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(seg);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(y: &str) -> Result<Config, ConfigErrors> {
        Config::parse(y, "test.yaml", Path::new("."))
    }

    #[test]
    fn empty_file_gives_the_defaults() {
        let c = parse("{}").unwrap();
        assert_eq!(c.listen.tls.unwrap().addr, "127.0.0.1:8443".parse().unwrap());
        assert_eq!(c.upstream.authority.as_str(), "127.0.0.1:8081");
    }

    #[test]
    fn a_block_rule_that_could_never_fire_is_refused() {
        let rule = |scope: &str, horizon: &str| {
            format!("blocks:\n  rules:\n    - {{ name: r, on: quota, scope: {scope}, horizon: {horizon}, threshold: 1, within: 24h, block: account, duration: 7d }}\n")
        };
        assert!(parse(&rule("account", "day")).is_ok(), "7d parses in a block duration too");
        let e = parse(&rule("acount", "day")).unwrap_err();
        assert_eq!(e.errors[0].path, "blocks.rules[0].scope", "{e}");
        let e = parse(&rule("account", "dya")).unwrap_err();
        assert_eq!((e.errors[0].path.as_str(), e.errors[0].line), ("blocks.rules[0].horizon", Some(3)), "{e}");
    }

    #[test]
    fn every_error_is_reported_with_key_and_line() {
        let y = "listen:\n  tls:\n    addr: nowhere\n  plian: 1\nupstream:\n  url: ftp://x\nlimits:\n  shutdown_grace: soon\n";
        let e = parse(y).unwrap_err();
        let got: Vec<(String, Option<usize>)> = e.errors.iter().map(|e| (e.path.clone(), e.line)).collect();
        assert!(got.contains(&("listen.plian".into(), Some(4))), "{got:?}");
        assert!(got.contains(&("listen.tls.addr".into(), Some(3))), "{got:?}");
        assert!(got.contains(&("upstream.url".into(), Some(6))), "{got:?}");
        assert!(got.contains(&("limits.shutdown_grace".into(), Some(8))), "{got:?}");
    }

    #[test]
    fn type_errors_carry_the_line() {
        let e = parse("limits:\n  max_connections: many\n").unwrap_err();
        assert_eq!(e.errors.len(), 1);
        assert_eq!(e.errors[0].line, Some(2));
        assert!(e.errors[0].message.contains("max_connections"), "{}", e.errors[0].message);
    }

    #[test]
    fn sequence_paths_use_brackets() {
        assert_eq!(ignored_path("routes.2.nmae"), "routes[2].nmae");
        assert_eq!(ignored_path("a.b"), "a.b");
    }
}
