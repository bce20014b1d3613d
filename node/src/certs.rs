//! A certificate and key served from files and reloaded when the files change, without a
//! restart: the node's certificate (mesh, both ways, and the admin API) and the MCP listener's.
//! The files are polled; a new pair is used once both parse and the key matches the
//! certificate (a renewal written file by file is picked up when it is whole), and new
//! handshakes use it at once while open connections keep theirs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;

/// How often the files are looked at.
const POLL: Duration = Duration::from_secs(1);

/// A certificate and its key, from files, reloaded on change.
#[derive(Debug)]
pub struct CertStore {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<CertifiedKey>,
    /// Modification times of the pair in use.
    seen: Mutex<(Option<SystemTime>, Option<SystemTime>)>,
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Loads a certificate chain and its key, checking they belong together.
pub fn load_pair(cert: &Path, key: &Path) -> anyhow::Result<CertifiedKey> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| anyhow::anyhow!("{}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{}: {e}", cert.display()))?;
    if chain.is_empty() {
        anyhow::bail!("{}: no certificate in file", cert.display());
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| anyhow::anyhow!("{}: {e}", key.display()))?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, der, &provider)
        .map_err(|e| anyhow::anyhow!("{} and {} do not make a pair: {e}", cert.display(), key.display()))
}

impl CertStore {
    /// Loads the pair (an error names the file).
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Arc<CertStore>> {
        let seen = (mtime(cert), mtime(key));
        let pair = load_pair(cert, key)?;
        Ok(Arc::new(CertStore {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: ArcSwap::from_pointee(pair),
            seen: Mutex::new(seen),
        }))
    }

    /// The pair in use.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }

    /// Reloads if the files changed; `Ok(true)` when a new pair is in use.
    pub fn reload(&self) -> anyhow::Result<bool> {
        let now = (mtime(&self.cert), mtime(&self.key));
        if *self.seen.lock() == now {
            return Ok(false);
        }
        let pair = load_pair(&self.cert, &self.key)?;
        self.current.store(Arc::new(pair));
        *self.seen.lock() = now;
        Ok(true)
    }

    /// Polls the files until `stop`, reloading on change.
    pub async fn watch(self: Arc<Self>, what: &'static str, stop: tokio_util::sync::CancellationToken) {
        let mut warned = false;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(POLL) => {}
            }
            match self.reload() {
                Ok(true) => {
                    warned = false;
                    tracing::info!(what, cert = %self.cert.display(), "certificate reloaded");
                    metrics::counter!("joch_certificate_reloads_total", "what" => what).increment(1);
                }
                Ok(false) => {}
                // Half-written, or a key that is not the certificate's: keep the pair in use.
                Err(e) if !warned => {
                    warned = true;
                    tracing::warn!(what, error = %e, "certificate files changed but do not load; keeping the current pair");
                }
                Err(_) => {}
            }
        }
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for CertStore {
    fn resolve(&self, _issuers: &[&[u8]], schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        let ck = self.current();
        ck.key.choose_scheme(schemes).is_some().then_some(ck)
    }

    fn has_certs(&self) -> bool {
        true
    }
}
