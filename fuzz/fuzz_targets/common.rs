//! Shared set-up: an identity policy built the way the proxy builds it, from a config.

use std::sync::Arc;

use cvgate::clock::ManualClock;
use cvgate::policy::identity::Identifier;

/// The dev HS256 key and two trusted proxy ranges, so both the token path and the
/// trusted-forwarding path are reachable.
pub const CONFIG: &str = r#"
identity:
  issuers: ["https://eherkenning.fuzz"]
  audiences: ["cvgate"]
  dev_hs256: { kid: "dev", secret: "fuzz-only-secret-0123456789abcdef0123456789abcdef" }
  trusted_proxies: ["127.0.0.0/8", "2001:db8::/32"]
  gateway_headers: { account: X-Employer-Account, org: X-Employer-KvK, assurance: X-Assurance-Level }
"#;

pub fn identifier() -> Identifier {
    let cfg = cvgate::config::Config::parse(CONFIG, "fuzz", std::path::Path::new("/nonexistent"))
        .unwrap_or_else(|e| panic!("fuzz config invalid:\n{e}"));
    let clock = ManualClock::new("2026-11-24T09:00:00Z".parse().unwrap());
    Identifier::new(cfg.identity.clone(), Arc::clone(&clock) as cvgate::clock::SharedClock)
}
