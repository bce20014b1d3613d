//! The cluster CA and node certificates (`joch cluster ca init|issue`, and `joch dev up`).
//!
//! One CA per cluster; each node gets a certificate for client and server authentication, with
//! the SANs `joch-mesh` (the name peers dial) and `node<ID>.joch`, plus any hosts given.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// The TLS server name every node's certificate carries and every peer dials.
pub const MESH_SERVER_NAME: &str = "joch-mesh";

/// A problem creating or reading certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// rcgen failed.
    #[error("certificate generation failed: {0}")]
    Gen(#[from] rcgen::Error),
    /// The CA already exists (never overwrite a cluster's CA).
    #[error("{0} already exists; refusing to overwrite a cluster CA")]
    Exists(PathBuf),
    /// A host name is not valid for a certificate.
    #[error("invalid host {0:?} for a certificate")]
    BadHost(String),
}

/// Paths of the files in a PKI directory.
#[derive(Clone, Debug)]
pub struct PkiDir(pub PathBuf);

impl PkiDir {
    /// CA certificate.
    pub fn ca_cert(&self) -> PathBuf {
        self.0.join("ca.pem")
    }
    /// CA private key.
    pub fn ca_key(&self) -> PathBuf {
        self.0.join("ca-key.pem")
    }
    /// Node certificate.
    pub fn node_cert(&self, id: u64) -> PathBuf {
        self.0.join(format!("node{id}.pem"))
    }
    /// Node private key.
    pub fn node_key(&self, id: u64) -> PathBuf {
        self.0.join(format!("node{id}-key.pem"))
    }
}

fn write(path: &Path, contents: &str, secret: bool) -> Result<(), PkiError> {
    let io = |source| PkiError::Io { path: path.to_path_buf(), source };
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io)?;
    }
    fs::write(path, contents).map_err(io)?;
    if secret {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    Ok(())
}

fn read(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Io { path: path.to_path_buf(), source })
}

/// The CA's parameters. Deterministic, so the issuer can be rebuilt from the CA key alone.
fn ca_params() -> Result<CertificateParams, PkiError> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "joch cluster CA");
    dn.push(DnType::OrganizationName, "joch");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2124, 1, 1);
    Ok(p)
}

/// Creates a new CA in `dir` (fails if one exists).
pub fn init_ca(dir: &PkiDir) -> Result<(), PkiError> {
    if dir.ca_key().exists() {
        return Err(PkiError::Exists(dir.ca_key()));
    }
    let key = KeyPair::generate()?;
    let cert = ca_params()?.self_signed(&key)?;
    write(&dir.ca_cert(), &cert.pem(), false)?;
    write(&dir.ca_key(), &key.serialize_pem(), true)?;
    Ok(())
}

/// Issues a certificate for node `id`, signed by the CA in `dir`.
pub fn issue_node(dir: &PkiDir, id: u64, extra_hosts: &[String]) -> Result<(), PkiError> {
    let ca_key = KeyPair::from_pem(&read(&dir.ca_key())?)?;
    let issuer = Issuer::new(ca_params()?, ca_key);
    let mut names = vec![MESH_SERVER_NAME.to_string(), format!("node{id}.joch"), "localhost".to_string()];
    names.extend(extra_hosts.iter().filter(|h| h.parse::<std::net::IpAddr>().is_err()).cloned());
    let mut p = CertificateParams::new(names)?;
    for h in extra_hosts.iter().chain(std::iter::once(&"127.0.0.1".to_string())) {
        if let Ok(ip) = h.parse::<std::net::IpAddr>() {
            p.subject_alt_names.push(SanType::IpAddress(ip));
        } else if h.is_empty() {
            return Err(PkiError::BadHost(h.clone()));
        }
    }
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("joch node {id}"));
    p.distinguished_name = dn;
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2124, 1, 1);
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, &issuer)?;
    write(&dir.node_cert(id), &cert.pem(), false)?;
    write(&dir.node_key(id), &key.serialize_pem(), true)?;
    Ok(())
}
