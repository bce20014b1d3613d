//! Connecting to a node's admin API: which node, which CA verifies its certificate, which token
//! the CLI presents. Each comes from, in this order: a flag or its variable (`--server`/`JOCH_SERVER`,
//! `--ca`/`JOCH_CA`, `JOCH_TOKEN` or `JOCH_TOKEN_FILE`), the dev cluster here (`./.joch-dev/cluster.json`, or a
//! `cluster.json` of `joch dev up` in the current directory: it names the nodes, the CA and an
//! admin token), the current context of `joch login`'s config (`$JOCH_CLI_CONFIG`, else
//! `~/.config/joch/config.yaml`, kubeconfig-style), the defaults. A dev cluster's or a context's
//! token is only ever sent to that cluster's or context's server, never to another `--server`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use joch_proto::admin::access_client::AccessClient;
use joch_proto::admin::cluster_client::ClusterClient;
use joch_proto::admin::registry_client::RegistryClient;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

use super::Global;

/// The dev cluster's directory, used to find a default node.
pub const DEV_DIR: &str = ".joch-dev";

/// The token every request carries, and the CA that verifies nodes (set at start; `joch dev`
/// sets its own cluster's).
static TOKEN: RwLock<Option<String>> = RwLock::new(None);
static CA: RwLock<Option<PathBuf>> = RwLock::new(None);

/// Clients of one node.
pub struct Node {
    /// Its admin URL.
    pub url: String,
    /// Registry service.
    pub registry: RegistryClient<Channel>,
    /// Cluster service.
    pub cluster: ClusterClient<Channel>,
    /// Access service.
    pub access: AccessClient<Channel>,
}

/// One context of the login config.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct LoginContext {
    /// Admin URL of a node.
    pub server: String,
    /// The operator's token.
    #[serde(default)]
    pub token: Option<String>,
    /// The cluster CA's certificate.
    #[serde(default)]
    pub ca: Option<PathBuf>,
}

/// The login config file.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct LoginConfig {
    /// The context used when none is named.
    #[serde(default)]
    pub current_context: Option<String>,
    /// Contexts by name.
    #[serde(default)]
    pub contexts: BTreeMap<String, LoginContext>,
}

/// Where the login config lives.
pub fn config_path() -> PathBuf {
    if let Some(p) = std::env::var_os("JOCH_CLI_CONFIG") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    home.join(".config/joch/config.yaml")
}

impl LoginConfig {
    /// Reads the config (empty if there is none).
    pub fn load() -> anyhow::Result<LoginConfig> {
        let p = config_path();
        match std::fs::read_to_string(&p) {
            Ok(t) => serde_yaml_ng::from_str(&t).with_context(|| format!("reading {}", p.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(LoginConfig::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    /// Writes it (readable by its owner only: it holds tokens).
    pub fn save(&self) -> anyhow::Result<PathBuf> {
        let p = config_path();
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let text = serde_yaml_ng::to_string(self)?;
        let tmp = p.with_extension("tmp");
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        }
        std::fs::rename(&tmp, &p).with_context(|| format!("writing {}", p.display()))?;
        Ok(p)
    }

    fn current(&self) -> Option<&LoginContext> {
        self.contexts.get(self.current_context.as_deref()?)
    }
}

/// The dev cluster's `cluster.json`, if there is one here.
fn dev_cluster() -> Option<serde_json::Value> {
    [Path::new(DEV_DIR).join("cluster.json"), PathBuf::from("cluster.json")].iter().find_map(|p| {
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()?;
        (v["nodes"].is_array() && v["admin_token"].is_string()).then_some(v)
    })
}

/// Where and how to connect, resolved from the global options.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// The admin URL.
    pub url: String,
    /// The token, if any.
    pub token: Option<String>,
    /// The CA, if any.
    pub ca: Option<PathBuf>,
}

/// Resolves the target (see the module doc for the order).
pub fn target(g: &Global) -> Target {
    let login = LoginConfig::load().unwrap_or_default();
    let url = g
        .server
        .clone()
        .map(|s| normalize(&s))
        .or_else(|| dev_cluster().and_then(|v| v["nodes"][0]["admin_url"].as_str().map(str::to_string)))
        .or_else(|| login.current().map(|c| c.server.clone()))
        .unwrap_or_else(|| "https://127.0.0.1:7100".to_string());
    // Credentials of the dev cluster or of the context, for their own servers only.
    let dev = dev_cluster().filter(|v| {
        v["nodes"].as_array().is_some_and(|n| n.iter().any(|n| n["admin_url"].as_str() == Some(url.as_str())))
    });
    let ctx = login.current().filter(|c| normalize(&c.server) == url).cloned();
    let token = std::env::var("JOCH_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .or_else(|| {
            let f = std::env::var_os("JOCH_TOKEN_FILE")?;
            Some(std::fs::read_to_string(f).ok()?.trim().to_string())
        })
        .or_else(|| dev.as_ref().and_then(|v| v["admin_token"].as_str().map(str::to_string)))
        .or_else(|| ctx.as_ref().and_then(|c| c.token.clone()));
    let ca =
        g.ca.clone()
            .or_else(|| dev.as_ref().and_then(|v| v["ca"].as_str().map(PathBuf::from)))
            .or_else(|| ctx.as_ref().and_then(|c| c.ca.clone()));
    Target { url, token, ca }
}

/// The admin URL to use.
pub fn server_url(g: &Global) -> String {
    target(g).url
}

fn normalize(s: &str) -> String {
    if s.starts_with("http://") || s.starts_with("https://") {
        s.to_string()
    } else {
        format!("https://{s}")
    }
}

/// Sets the token every request carries.
pub fn use_token(token: Option<String>) {
    *TOKEN.write() = token;
}

/// Connects to `url`, verifying its certificate with `ca` (https).
pub async fn connect_with(url: &str, ca: Option<&Path>) -> anyhow::Result<Node> {
    let mut endpoint = Channel::from_shared(url.to_string())
        .with_context(|| format!("invalid server URL {url:?}"))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(120));
    if url.starts_with("https://") {
        let ca = ca.with_context(|| {
            format!("{url} serves TLS: give the cluster CA's certificate with --ca or JOCH_CA (or `joch login --ca`)")
        })?;
        let pem = std::fs::read(ca).with_context(|| format!("reading the CA certificate {}", ca.display()))?;
        endpoint = endpoint
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
            .context("TLS settings")?;
    }
    let channel = endpoint.connect().await.with_context(|| {
        format!("cannot reach the joch node at {url} (is it running? pick another with --server or JOCH_SERVER)")
    })?;
    Ok(Node {
        url: url.to_string(),
        registry: RegistryClient::new(channel.clone()),
        cluster: ClusterClient::new(channel.clone()),
        access: AccessClient::new(channel),
    })
}

/// Connects to `url` with the CA the global options name.
pub async fn connect(url: &str) -> anyhow::Result<Node> {
    let ca = CA.read().clone();
    connect_with(url, ca.as_deref()).await
}

/// Sets the CA used by [`connect`].
pub fn use_ca(ca: Option<PathBuf>) {
    *CA.write() = ca;
}

/// Connects to the node the global options name.
pub async fn node(g: &Global) -> anyhow::Result<Node> {
    connect(&server_url(g)).await
}

/// A request carrying the token.
pub fn req<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(t) = TOKEN.read().as_ref() {
        if let Ok(v) = format!("Bearer {t}").parse() {
            r.metadata_mut().insert("authorization", v);
        }
    }
    r
}

/// A gRPC error the CLI reports (its code decides the exit code).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StatusError {
    /// The gRPC code.
    pub code: tonic::Code,
    /// What to print.
    pub message: String,
}

/// Turns a gRPC status into an error that says which node answered.
pub fn status_err(url: &str, s: tonic::Status) -> anyhow::Error {
    let msg = if s.message().is_empty() { format!("{:?}", s.code()) } else { s.message().to_string() };
    let message = match s.code() {
        tonic::Code::Unavailable if msg.contains("transport") || msg.contains("connect") => {
            format!("cannot reach the joch node at {url}: {msg}")
        }
        tonic::Code::Unauthenticated => format!("unauthenticated: {msg}"),
        tonic::Code::PermissionDenied => format!("permission denied: {msg}"),
        _ => msg,
    };
    StatusError { code: s.code(), message }.into()
}

/// Makes a read, waiting out a cluster that is settling: an `unavailable` answer (no leader
/// yet, a leader not yet confirmed by a quorum, the node restarting) is retried with backoff for
/// up to 30 s, saying so once on stderr. `call` makes one attempt (with its own client clone).
pub async fn settle<T, F, Fut>(url: &str, mut call: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    const SETTLE_WAIT: Duration = Duration::from_secs(30);
    let started = std::time::Instant::now();
    let mut delay = Duration::from_millis(200);
    let mut told = false;
    loop {
        match call().await {
            Ok(r) => return Ok(r.into_inner()),
            Err(s) if s.code() == tonic::Code::Unavailable && started.elapsed() + delay < SETTLE_WAIT => {
                if !told {
                    eprintln!("waiting for the cluster to settle: {}", s.message());
                    told = true;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(s) => return Err(status_err(url, s)),
        }
    }
}
