//! TLS: the listener's rustls config, certificate (re)loading, and the upstream client config.
//!
//! rustls only, with `ring` as the crypto provider (no OpenSSL, no cmake). TLS 1.2 and 1.3 only;
//! rustls offers no weak suites, and we keep its defaults (ECDHE + AEAD). ALPN offers `h2` and
//! `http/1.1`. The certificate lives behind a [`CertStore`] that the SIGHUP/reload path swaps
//! without restarting or dropping connections; a handshake always sees a whole cert+key pair.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, Context};
use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The crypto provider everything in cvgate uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Where the serving certificate comes from, and the current one.
#[derive(Debug)]
pub struct CertStore {
    files: std::sync::Mutex<Option<(PathBuf, PathBuf)>>,
    current: ArcSwap<CertifiedKey>,
}

impl CertStore {
    /// Load the cert/key files, or generate a self-signed `localhost` cert when `files` is None.
    pub fn new(files: Option<(PathBuf, PathBuf)>) -> anyhow::Result<Arc<Self>> {
        let key = match &files {
            Some((c, k)) => load_pair(c, k)?,
            None => {
                tracing::warn!(
                    "no TLS certificate configured: serving a self-signed certificate for localhost \
                     (set listen.tls.cert and listen.tls.key in production)"
                );
                self_signed()?.0
            }
        };
        Ok(Arc::new(Self { files: std::sync::Mutex::new(files), current: ArcSwap::from_pointee(key) }))
    }

    /// A store serving a given pair (tests).
    pub fn from_certified(key: CertifiedKey) -> Arc<Self> {
        Arc::new(Self { files: std::sync::Mutex::new(None), current: ArcSwap::from_pointee(key) })
    }

    /// Re-read the certificate files, switching to `files` (a reload may name new paths).
    /// `None` keeps serving the current certificate. On error the current certificate stays.
    pub fn reload(&self, files: Option<(PathBuf, PathBuf)>) -> anyhow::Result<bool> {
        match Self::prepare(files)? {
            Some(p) => {
                self.install(p);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Load `files` without serving them yet (a reload builds everything before it changes
    /// anything); `None` when no files are configured.
    ///
    /// # Errors
    /// The files cannot be read or do not hold a matching certificate chain and key.
    pub fn prepare(files: Option<(PathBuf, PathBuf)>) -> anyhow::Result<Option<PreparedCert>> {
        let Some((c, k)) = files else { return Ok(None) };
        Ok(Some(PreparedCert { key: load_pair(&c, &k)?, files: (c, k) }))
    }

    /// Serve a prepared certificate from the next handshake on.
    pub fn install(&self, p: PreparedCert) {
        self.current.store(Arc::new(p.key));
        tracing::info!(cert = %p.files.0.display(), "TLS certificate loaded");
        *self.files.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(p.files);
    }

    /// The files the certificate was last loaded from.
    pub fn files(&self) -> Option<(PathBuf, PathBuf)> {
        self.files.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

/// A certificate loaded by [`CertStore::prepare`], not yet served.
pub struct PreparedCert {
    key: CertifiedKey,
    files: (PathBuf, PathBuf),
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The server config for the TLS listener: TLS 1.2/1.3, ALPN h2 + http/1.1.
pub fn server_config(certs: Arc<dyn ResolvesServerCert>) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS versions")?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Choose by the server's order (ring's: AES-256-GCM, AES-128-GCM, ChaCha20; ECDHE only),
    // not the client's: every suite offered is strong, but auditors (testssl.sh rates a missing
    // server order HIGH) and ops expect the server to decide.
    cfg.ignore_client_order = true;
    Ok(Arc::new(cfg))
}

/// Load a PEM certificate chain and its private key (`serve` at start and reload, and
/// `check-config`).
///
/// # Errors
/// A file cannot be read, holds no certificate or key, or the key does not fit the chain.
pub fn load_pair(cert: &Path, key: &Path) -> anyhow::Result<CertifiedKey> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading certificate {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing certificate {}", cert.display()))?;
    if chain.is_empty() {
        return Err(anyhow!("no certificate in {}", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading key {}", key.display()))?;
    certified(chain, key)
}

fn certified(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> anyhow::Result<CertifiedKey> {
    let signer = provider().key_provider.load_private_key(key).map_err(|e| anyhow!("unusable private key: {e}"))?;
    let ck = CertifiedKey::new(chain, signer);
    ck.keys_match().map_err(|e| anyhow!("certificate and key do not match: {e}"))?;
    Ok(ck)
}

/// A self-signed certificate for `localhost`, `127.0.0.1` and `::1`.
pub fn self_signed() -> anyhow::Result<(CertifiedKey, String)> {
    let (cert_pem, key_pem) = self_signed_pem()?;
    let chain = vec![CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| anyhow!("{e}"))?];
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| anyhow!("{e}"))?;
    Ok((certified(chain, key)?, cert_pem))
}

/// A self-signed `localhost` certificate and its key, as PEM (tests write them to files and
/// give the certificate to their client as the only trusted root).
pub fn self_signed_pem() -> anyhow::Result<(String, String)> {
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    let ck = rcgen::generate_simple_self_signed(names).context("generating self-signed cert")?;
    Ok((ck.cert.pem(), ck.signing_key.serialize_pem()))
}

/// Client config for an https upstream: the given CA bundle if any, else the webpki roots.
pub fn upstream_client_config(ca_file: Option<&Path>) -> anyhow::Result<Option<rustls::ClientConfig>> {
    let Some(ca) = ca_file else { return Ok(None) };
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).with_context(|| format!("reading CA {}", ca.display()))? {
        roots.add(c.with_context(|| format!("parsing CA {}", ca.display()))?)?;
    }
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Some(cfg))
}
