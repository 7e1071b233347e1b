//! Forwarding: the pooled upstream client and the header rules of a well-behaved proxy.
//!
//! Bodies stream both ways without buffering: the client's request body is handed to hyper's
//! client as is, the upstream's response body comes back as a stream (wrapped for counting by
//! the caller). Hop-by-hop headers are removed in both directions (RFC 9110 §7.6.1), the
//! X-Forwarded-* headers and a request id are set, and Host is set, as the upstream is always
//! spoken to in HTTP/1.1, even when the client spoke HTTP/2 (which has `:authority` and no
//! Host). An `https` upstream is verified against the webpki roots, or, with `ca_file`, against
//! that bundle only.

use std::path::PathBuf;
use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, HOST};
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::problem::ProxyError;

pub use crate::problem::X_REQUEST_ID;
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Headers that describe one connection, never forwarded (plus whatever `Connection` names).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Remove hop-by-hop headers: those listed above and every header `Connection` names.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Most messages carry none: one pass over the names instead of nine removals (each a hash).
    if !h.keys().any(|k| HOP_BY_HOP.contains(&k.as_str())) {
        return;
    }
    let named: Vec<HeaderName> = h
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in HOP_BY_HOP {
        h.remove(n);
    }
}

/// A request id: the client's, when it is short and printable, else a fresh UUID.
pub fn request_id(h: &HeaderMap) -> String {
    match h.get(X_REQUEST_ID).and_then(|v| v.to_str().ok()) {
        Some(id) if !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()) => id.to_string(),
        _ => uuid::Uuid::new_v4().to_string(),
    }
}

/// The `upstream` section: where the CV API is and how to talk to it (validated by `config`).
#[derive(Debug, Clone)]
pub struct Upstream {
    pub uri: http::Uri,
    pub https: bool,
    pub authority: http::uri::Authority,
    /// Path prefix prepended to every forwarded path ("" for none), without trailing '/'.
    pub path_prefix: String,
    /// PEM CA bundle that replaces the webpki roots for an `https` upstream.
    pub ca_file: Option<PathBuf>,
    pub preserve_host: bool,
    /// Connecting takes longer: `UpstreamUnreachable` (502).
    pub connect_timeout: Duration,
    /// No response headers within it, connecting included: `UpstreamTimeout` (504).
    pub response_header_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
}

type Connector = HttpsConnector<HttpConnector>;

/// The pooled client for one upstream.
#[derive(Clone)]
pub struct Upstreams {
    client: Client<Connector, Incoming>,
    cfg: Upstream,
}

/// How the request reached us, for the X-Forwarded-* headers.
pub struct Hop<'a> {
    /// The TCP peer (what we append to X-Forwarded-For).
    pub peer: std::net::IpAddr,
    /// Whether the peer is a trusted proxy (then its X-Forwarded-For is kept and appended to).
    pub peer_trusted: bool,
    /// `https` or `http`.
    pub proto: &'static str,
    pub request_id: &'a str,
}

impl Upstreams {
    pub fn new(cfg: &Upstream) -> anyhow::Result<Self> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(cfg.connect_timeout));
        http.set_nodelay(true);
        http.set_keepalive(Some(Duration::from_secs(60)));
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = match crate::net::tls::upstream_client_config(cfg.ca_file.as_deref())? {
            Some(tls) => builder.with_tls_config(tls),
            None => builder.with_webpki_roots(),
        };
        let connector = builder.https_or_http().enable_http1().wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(cfg.pool_idle_timeout)
            .pool_max_idle_per_host(cfg.pool_max_idle_per_host)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Ok(Self { client, cfg: cfg.clone() })
    }

    /// Rewrite `req` for the upstream and send it; resolves when response headers arrive.
    ///
    /// # Errors
    /// `UpstreamUnreachable` (connect failed or timed out → 502), `UpstreamTimeout` (no response
    /// headers within `response_header_timeout` → 504), `UpstreamFailed` (anything else → 502).
    pub async fn send(&self, mut req: Request<Incoming>, hop: &Hop<'_>) -> Result<Response<Incoming>, ProxyError> {
        self.rewrite(&mut req, hop);
        let fut = self.client.request(req);
        let resp = match tokio::time::timeout(self.cfg.response_header_timeout, fut).await {
            Err(_) => return Err(ProxyError::UpstreamTimeout),
            Ok(Err(e)) if e.is_connect() => {
                tracing::warn!(error = %e, "upstream connect failed");
                return Err(ProxyError::UpstreamUnreachable);
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "upstream request failed");
                return Err(ProxyError::UpstreamFailed);
            }
            Ok(Ok(r)) => r,
        };
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, body))
    }

    fn rewrite(&self, req: &mut Request<Incoming>, hop: &Hop<'_>) {
        // The host the client asked for: Host (HTTP/1.1) or :authority (HTTP/2).
        let client_host = req
            .headers()
            .get(HOST)
            .cloned()
            .or_else(|| req.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()));
        let pq = match (req.uri().path_and_query(), self.cfg.path_prefix.is_empty()) {
            (Some(pq), true) => pq.clone(), // shares the request's bytes
            (pq, _) => {
                let pq = pq.map(PathAndQuery::as_str).unwrap_or("/");
                PathAndQuery::try_from([self.cfg.path_prefix.as_str(), pq].concat()).expect("a prefix and a valid path")
            }
        };
        let scheme = if self.cfg.https { "https" } else { "http" };
        *req.uri_mut() = Uri::builder()
            .scheme(scheme)
            .authority(self.cfg.authority.clone())
            .path_and_query(pq)
            .build()
            .expect("valid upstream uri");
        *req.version_mut() = Version::HTTP_11;

        let h = req.headers_mut();
        strip_hop_by_hop(h);
        let host = match (&client_host, self.cfg.preserve_host) {
            (Some(ch), true) => ch.clone(),
            _ => HeaderValue::from_str(self.cfg.authority.as_str()).expect("authority is a valid header"),
        };
        h.insert(HOST, host);
        if let Some(ch) = client_host {
            if !hop.peer_trusted || !h.contains_key(X_FORWARDED_HOST) {
                h.insert(X_FORWARDED_HOST, ch);
            }
        }
        // X-Forwarded-For: a trusted proxy's chain is kept and extended; an untrusted peer's
        // claims are dropped, so the upstream never sees a spoofed chain.
        let peer = hop.peer.to_string();
        let xff = match h.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(prev) if hop.peer_trusted && !prev.trim().is_empty() => format!("{prev}, {peer}"),
            _ => peer,
        };
        h.insert(X_FORWARDED_FOR, HeaderValue::from_str(&xff).expect("ip list is a valid header"));
        if !(hop.peer_trusted && h.contains_key(X_FORWARDED_PROTO)) {
            h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(hop.proto));
        }
        h.insert(X_REQUEST_ID, HeaderValue::from_str(hop.request_id).expect("request id is printable"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, X-Secret-Hop"));
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("proxy-authorization", HeaderValue::from_static("Basic x"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn request_id_is_kept_only_when_sane() {
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert(X_REQUEST_ID, HeaderValue::from_static("has space"));
        assert_eq!(request_id(&h).len(), 36);
    }
}
