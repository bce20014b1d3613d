//! rustls configurations for the mesh: TLS 1.3 only, ring provider, mutual authentication against
//! the cluster CA. A peer whose certificate the CA did not sign fails the handshake, both ways.
//! A node's certificate names its id (`node<ID>.joch`): a dialer asks for the name of the node
//! membership says lives at the address, and an acceptor reads the id off the client's
//! certificate ([`node_id_of`]). The node's own pair is reloaded when its files change.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use crate::certs::CertStore;

/// ALPN protocol of the mesh.
pub const ALPN: &[u8] = b"joch-mesh/1";

/// A problem loading TLS material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file is unreadable or holds nothing usable.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// rustls rejected the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// quinn rejected the crypto configuration.
    #[error("QUIC crypto configuration: {0}")]
    Quic(String),
}

/// The TLS material of one node.
pub struct NodeTls {
    roots: Arc<RootCertStore>,
    /// This node's certificate and key (reloaded on change).
    pub pair: Arc<CertStore>,
}

/// The TLS name of node `id`'s certificate.
pub fn node_server_name(id: u64) -> String {
    format!("node{id}.joch")
}

/// The node id a certificate names (its one `node<ID>.joch` name).
pub fn node_id_of(cert: &CertificateDer<'_>) -> Option<u64> {
    let ee = webpki::EndEntityCert::try_from(cert).ok()?;
    let mut ids =
        ee.valid_dns_names().filter_map(|n| n.strip_prefix("node")?.strip_suffix(".joch")?.parse::<u64>().ok());
    let id = ids.next()?;
    ids.next().is_none().then_some(id)
}

fn pem_err(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::Pem { path: path.display().to_string(), message: e.to_string() }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl NodeTls {
    /// Loads the CA certificate, this node's certificate chain and key.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let mut roots = RootCertStore::empty();
        let ca_certs: Vec<_> = CertificateDer::pem_file_iter(ca)
            .map_err(|e| pem_err(ca, e))?
            .collect::<Result<_, _>>()
            .map_err(|e| pem_err(ca, e))?;
        if ca_certs.is_empty() {
            return Err(pem_err(ca, "no certificate in file"));
        }
        for c in ca_certs {
            roots.add(c).map_err(|e| pem_err(ca, e))?;
        }
        let pair = CertStore::load(cert, key).map_err(|e| pem_err(cert, e))?;
        Ok(NodeTls { roots: Arc::new(roots), pair })
    }

    /// QUIC server configuration: requires a client certificate signed by the cluster CA.
    pub fn server_config(&self) -> Result<quinn::ServerConfig, TlsError> {
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider()).build()?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(self.pair.clone());
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(cfg).map_err(|e| TlsError::Quic(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
        server.transport_config(transport());
        Ok(server)
    }

    /// QUIC client configuration: presents this node's certificate, trusts only the cluster CA.
    pub fn client_config(&self) -> Result<quinn::ClientConfig, TlsError> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots.clone())
            .with_client_cert_resolver(self.pair.clone());
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(cfg).map_err(|e| TlsError::Quic(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(quic));
        client.transport_config(transport());
        Ok(client)
    }
}

fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(std::time::Duration::from_secs(1)));
    t.max_idle_timeout(Some(std::time::Duration::from_secs(5).try_into().expect("5 s is a valid idle timeout")));
    t.max_concurrent_bidi_streams(1024u32.into());
    Arc::new(t)
}
