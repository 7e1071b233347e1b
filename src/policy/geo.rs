//! Country of the client IP, for the country quota scope and the audit line.
//!
//! Two sources, first answer wins:
//! 1. a header set by a trusted edge (e.g. Cloudflare's `CF-IPCountry`), believed only when the
//!    TCP peer is a trusted proxy (`identity.trusted_proxies`) — from anyone else it is removed,
//!    so neither cvgate nor the upstream can be told a made-up country;
//! 2. a MaxMind-format database (`.mmdb`: GeoIP2/GeoLite2 Country or City, DB-IP), looked up by
//!    the client IP: `country.iso_code`, else `registered_country.iso_code`.
//!
//! Unknown is `ZZ` (the code `overrides.countries` uses for it). The database is read when the
//! config is loaded, so a reload (SIGHUP) picks up a new download.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use http::{HeaderMap, HeaderName};
use serde::{Deserialize, Serialize};

use crate::invalid::Invalid;

/// The country code for "unknown".
pub use crate::country::UNKNOWN;

/// `geo:` in config.yaml.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct RawGeo {
    /// MaxMind-format database; relative paths are relative to the config file.
    pub mmdb_file: Option<String>,
    /// Country header set by a trusted edge, e.g. `CF-IPCountry`.
    pub header: Option<String>,
}

/// Validated geo settings with the database loaded.
#[derive(Clone, Default)]
pub struct GeoPolicy {
    db: Option<Arc<maxminddb::Reader<Vec<u8>>>>,
    header: Option<HeaderName>,
}

impl fmt::Debug for GeoPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeoPolicy")
            .field("db", &self.db.as_ref().map(|d| d.metadata().database_type.clone()))
            .field("header", &self.header)
            .finish()
    }
}

/// The parts of a GeoIP2 record we read.
#[derive(Deserialize)]
struct Record<'a> {
    #[serde(borrow, default)]
    country: Option<Iso<'a>>,
    #[serde(borrow, default)]
    registered_country: Option<Iso<'a>>,
}

#[derive(Deserialize)]
struct Iso<'a> {
    #[serde(borrow, default)]
    iso_code: Option<&'a str>,
}

impl GeoPolicy {
    /// Validate `geo:` and open the database. Errors carry key paths relative to `geo`.
    ///
    /// # Errors
    /// An unreadable or invalid database, or a header name that is not a valid header name.
    pub fn from_raw(raw: &RawGeo, base: &Path) -> Result<GeoPolicy, Invalid> {
        let mut errs = Invalid::new();
        let db = raw.mmdb_file.as_deref().and_then(|f| {
            let path = if Path::new(f).is_absolute() { Path::new(f).to_path_buf() } else { base.join(f) };
            match maxminddb::Reader::open_readfile(&path) {
                Ok(r) => Some(Arc::new(r)),
                Err(e) => {
                    errs.push("mmdb_file", format!("cannot read {}: {e}", path.display()));
                    None
                }
            }
        });
        let header = raw.header.as_deref().and_then(|h| match HeaderName::from_bytes(h.as_bytes()) {
            Ok(n) => Some(n),
            Err(_) => {
                errs.push("header", format!("not a header name: {h:?}"));
                None
            }
        });
        errs.into_result(GeoPolicy { db, header })
    }

    /// The country of `client_ip`, as an upper-case ISO 3166-1 alpha-2 code or [`UNKNOWN`].
    /// Removes the edge's country header when the peer is not a trusted proxy (`peer_trusted`).
    pub fn locate(&self, headers: &mut HeaderMap, peer_trusted: bool, client_ip: IpAddr) -> String {
        if let Some(h) = &self.header {
            if !peer_trusted {
                headers.remove(h);
            } else if let Some(c) = headers.get(h).and_then(|v| v.to_str().ok()).and_then(crate::country::parse) {
                return c;
            }
        }
        self.lookup(client_ip).unwrap_or_else(|| UNKNOWN.to_string())
    }

    /// The database's country for `ip`, if it has one.
    pub fn lookup(&self, ip: IpAddr) -> Option<String> {
        let db = self.db.as_ref()?;
        let ip = crate::policy::identity::client_ip::normalize(ip);
        let rec: Record<'_> = db.lookup(ip).ok()?.decode().ok()??;
        let code = rec.country.and_then(|c| c.iso_code).or(rec.registered_country.and_then(|c| c.iso_code))?;
        crate::country::parse(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_counts_only_from_a_trusted_peer_and_is_removed_otherwise() {
        let geo = GeoPolicy::from_raw(&RawGeo { mmdb_file: None, header: Some("CF-IPCountry".into()) }, Path::new("."))
            .unwrap();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("cf-ipcountry", "de".parse().unwrap());
        assert_eq!(geo.locate(&mut h.clone(), true, ip), "DE");
        assert_eq!(geo.locate(&mut h, false, ip), UNKNOWN);
        assert!(h.get("cf-ipcountry").is_none(), "a spoofed header must not reach the upstream");
        let mut bad = HeaderMap::new();
        bad.insert("cf-ipcountry", "Germany".parse().unwrap());
        assert_eq!(geo.locate(&mut bad, true, ip), UNKNOWN);
    }

    #[test]
    fn bad_settings_are_reported_with_their_keys() {
        let raw = RawGeo { mmdb_file: Some("no-such.mmdb".into()), header: Some("bad header".into()) };
        let errs = GeoPolicy::from_raw(&raw, Path::new("/nonexistent")).unwrap_err();
        let keys: Vec<&str> = errs.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["mmdb_file", "header"]);
    }

    #[test]
    fn the_database_maps_an_address_to_its_country() {
        #[derive(serde::Serialize)]
        struct Iso {
            iso_code: &'static str,
        }
        #[derive(serde::Serialize)]
        struct Country {
            country: Iso,
        }
        #[derive(serde::Serialize)]
        struct Registered {
            registered_country: Iso,
        }
        let mut w = mmdb_writer::Writer::new("GeoIP2-Country");
        w.insert("198.51.100.0/24".parse::<ipnet::IpNet>().unwrap(), &Country { country: Iso { iso_code: "DE" } })
            .unwrap();
        w.insert("2001:db8:1::/48".parse::<ipnet::IpNet>().unwrap(), &Country { country: Iso { iso_code: "be" } })
            .unwrap();
        w.insert(
            "203.0.113.0/24".parse::<ipnet::IpNet>().unwrap(),
            &Registered { registered_country: Iso { iso_code: "FR" } },
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("geo.mmdb"), w.to_bytes().unwrap()).unwrap();
        let raw = RawGeo { mmdb_file: Some("geo.mmdb".into()), header: None };
        let geo = GeoPolicy::from_raw(&raw, dir.path()).unwrap();
        let at = |ip: &str| geo.locate(&mut HeaderMap::new(), false, ip.parse().unwrap());
        assert_eq!(at("198.51.100.77"), "DE");
        assert_eq!(at("::ffff:198.51.100.77"), "DE"); // what a dual-stack socket reports
        assert_eq!(at("2001:db8:1::5"), "BE");
        assert_eq!(at("203.0.113.9"), "FR");
        assert_eq!(at("192.0.2.1"), UNKNOWN);
    }

    #[test]
    fn nothing_configured_is_unknown() {
        let geo = GeoPolicy::default();
        assert_eq!(geo.locate(&mut HeaderMap::new(), true, "192.0.2.1".parse().unwrap()), UNKNOWN);
    }
}
