//! The cluster CA and node certificates (`joch cluster ca init|issue`, and `joch dev up`).
//!
//! One CA per cluster (valid ten years); each node gets a certificate for client and server
//! authentication, with the SANs `joch-mesh` and `node<ID>.joch` (the name a peer dials when
//! membership says node ID lives at the address), plus any hosts given (kept beside it in
//! `node<ID>.hosts`, so a renewal keeps them). A node certificate lives [`NODE_CERT_DAYS`] days
//! by default; `joch cluster cert renew` replaces it in place and the node reloads it.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// The TLS server name every node's certificate carries (dialed where no member is known).
pub const MESH_SERVER_NAME: &str = "joch-mesh";

/// Default lifetime of a node certificate.
pub const NODE_CERT_DAYS: u32 = 180;

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
    /// The extra hosts of node `id`'s certificate (one per line).
    pub fn node_hosts(&self, id: u64) -> PathBuf {
        self.0.join(format!("node{id}.hosts"))
    }
}

/// Writes a file whole (a temporary file renamed over it): a node reloading it never reads half.
fn write(path: &Path, contents: &str, secret: bool) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| PkiError::Io { path: path.to_path_buf(), source };
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(io)?;
    f.write_all(contents.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)?;
    Ok(())
}

/// `days` from now (an hour back, for clocks slightly behind).
fn validity(days: u32) -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = time::OffsetDateTime::now_utc();
    (now - time::Duration::hours(1), now + time::Duration::days(i64::from(days)))
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
    // Signing only uses the name and key; the CA certificate's own validity is set in init_ca.
    Ok(p)
}

/// Creates a new CA in `dir` (fails if one exists).
pub fn init_ca(dir: &PkiDir) -> Result<(), PkiError> {
    if dir.ca_key().exists() {
        return Err(PkiError::Exists(dir.ca_key()));
    }
    let key = KeyPair::generate()?;
    let mut p = ca_params()?;
    (p.not_before, p.not_after) = validity(3653);
    let cert = p.self_signed(&key)?;
    write(&dir.ca_cert(), &cert.pem(), false)?;
    write(&dir.ca_key(), &key.serialize_pem(), true)?;
    Ok(())
}

/// Issues a certificate for node `id`, signed by the CA in `dir`, valid `days` (default
/// [`NODE_CERT_DAYS`]); replaces one there (a new key too).
pub fn issue_node(dir: &PkiDir, id: u64, extra_hosts: &[String], days: Option<u32>) -> Result<(), PkiError> {
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
    (p.not_before, p.not_after) = validity(days.unwrap_or(NODE_CERT_DAYS));
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, &issuer)?;
    write(&dir.node_hosts(id), &extra_hosts.join("\n"), false)?;
    write(&dir.node_key(id), &key.serialize_pem(), true)?;
    write(&dir.node_cert(id), &cert.pem(), false)?;
    Ok(())
}

/// Renews node `id`'s certificate in `dir` (same hosts, a new key, valid `days` from now).
pub fn renew_node(dir: &PkiDir, id: u64, days: Option<u32>) -> Result<(), PkiError> {
    if !dir.node_cert(id).exists() {
        return Err(PkiError::Io {
            path: dir.node_cert(id),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no certificate to renew"),
        });
    }
    let hosts: Vec<String> = fs::read_to_string(dir.node_hosts(id))
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_string())
        .collect();
    issue_node(dir, id, &hosts, days)
}
