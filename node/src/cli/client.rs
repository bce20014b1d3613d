//! Connecting to a node's admin API.

use std::time::Duration;

use anyhow::Context;
use joch_proto::admin::cluster_client::ClusterClient;
use joch_proto::admin::registry_client::RegistryClient;
use tonic::transport::Channel;

use super::Global;
use crate::admin::ACTOR_HEADER;

/// The dev cluster's directory, used to find a default node.
pub const DEV_DIR: &str = ".joch-dev";

/// Clients of one node.
pub struct Node {
    /// Its admin URL.
    pub url: String,
    /// Registry service.
    pub registry: RegistryClient<Channel>,
    /// Cluster service.
    pub cluster: ClusterClient<Channel>,
}

/// The admin URL to use: `--server`/`JOCH_SERVER`, else node 1 of `./.joch-dev`, else the default port.
pub fn server_url(g: &Global) -> String {
    if let Some(s) = &g.server {
        return normalize(s);
    }
    let dev = std::path::Path::new(DEV_DIR).join("cluster.json");
    if let Ok(text) = std::fs::read_to_string(dev) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
            if let Some(url) = v["nodes"][0]["admin_url"].as_str() {
                return url.to_string();
            }
        }
    }
    "http://127.0.0.1:7100".to_string()
}

fn normalize(s: &str) -> String {
    if s.starts_with("http://") || s.starts_with("https://") {
        s.to_string()
    } else {
        format!("http://{s}")
    }
}

/// Connects to `url`.
pub async fn connect(url: &str) -> anyhow::Result<Node> {
    let channel = Channel::from_shared(url.to_string())
        .with_context(|| format!("invalid server URL {url:?}"))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(120))
        .connect()
        .await
        .with_context(|| {
            format!("cannot reach the joch node at {url} (is it running? pick another with --server or JOCH_SERVER)")
        })?;
    Ok(Node {
        url: url.to_string(),
        registry: RegistryClient::new(channel.clone()),
        cluster: ClusterClient::new(channel),
    })
}

/// Connects to the node the global options name.
pub async fn node(g: &Global) -> anyhow::Result<Node> {
    connect(&server_url(g)).await
}

/// The operator name sent with every request: `JOCH_ACTOR`, else `user@host`.
pub fn actor() -> String {
    if let Ok(a) = std::env::var("JOCH_ACTOR") {
        if !a.is_empty() {
            return a;
        }
    }
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    if host.is_empty() {
        user
    } else {
        format!("{user}@{host}")
    }
}

/// A request carrying the actor.
pub fn req<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Ok(v) = actor().parse() {
        r.metadata_mut().insert(ACTOR_HEADER, v);
    }
    r
}

/// Longest a read waits for a settling cluster (no leader yet, a leader without a quorum yet).
const SETTLE_WAIT: Duration = Duration::from_secs(30);

/// Makes a read, waiting out a cluster that is settling: an `unavailable` answer (no leader
/// yet, a leader not yet confirmed by a quorum, the node restarting) is retried with backoff for
/// up to 30 s, saying so once on stderr. `call` makes one attempt (with its own client clone).
pub async fn settle<T, F, Fut>(url: &str, mut call: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
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

/// Turns a gRPC status into an error that says which node answered.
pub fn status_err(url: &str, s: tonic::Status) -> anyhow::Error {
    let msg = if s.message().is_empty() { format!("{:?}", s.code()) } else { s.message().to_string() };
    match s.code() {
        tonic::Code::Unavailable if msg.contains("transport") || msg.contains("connect") => {
            anyhow::anyhow!("cannot reach the joch node at {url}: {msg}")
        }
        _ => anyhow::anyhow!("{msg}"),
    }
}
