//! Static node configuration: defaults < file < environment (`JOCH_*`) < flags. Parsed raw,
//! validated once, every problem reported at once. Governance state (servers, policies) is not
//! here: it lives in the replicated store and changes only by commands.

pub mod stdio_allow;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use joch_raft_store::model::validate::parse_duration;
use serde::{Deserialize, Serialize};

/// The config file, as written. Every field optional; see [`Config`] for meanings and defaults.
#[derive(Deserialize, Serialize, Default, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Node id (> 0), unique in the cluster.
    pub id: Option<u64>,
    /// Data directory (RocksDB and the bound-address file).
    pub data_dir: Option<PathBuf>,
    /// Listen addresses.
    #[serde(default)]
    pub listen: RawListen,
    /// Addresses other nodes and clients use to reach this one, when they differ from `listen`.
    #[serde(default)]
    pub advertise: RawListen,
    /// Mesh TLS material.
    #[serde(default)]
    pub tls: RawTls,
    /// Raft timing and log compaction.
    #[serde(default)]
    pub raft: RawRaft,
    /// How long a fleet-acknowledged write waits for every member (default 2s).
    pub fleet_ack_timeout: Option<String>,
    /// How long a write waits for a leader before giving up (default 10s).
    pub write_timeout: Option<String>,
    /// MCP proxy limits.
    #[serde(default)]
    pub proxy: RawProxy,
    /// Logging.
    #[serde(default)]
    pub log: RawLog,
    /// Operators: this node's bootstrap admin token.
    #[serde(default)]
    pub admin: RawAdmin,
    /// Agents on the data plane.
    #[serde(default)]
    pub agents: RawAgents,
    /// Upstream secrets: the key-encryption key(s).
    #[serde(default)]
    pub secrets: RawSecrets,
    /// Which stdio servers this node may run.
    #[serde(default)]
    pub stdio: RawStdio,
    /// TLS for the MCP listener.
    #[serde(default)]
    pub mcp_tls: RawMcpTls,
    /// The node's audit trail.
    #[serde(default)]
    pub audit: RawAudit,
    /// OTLP export of audit records (spans and logs).
    #[serde(default)]
    pub otlp: RawOtlp,
    /// This node's guardian: an ACS hook endpoint called for every server's traffic
    /// (`docs/guardian-hooks.md`); servers may add their own (`spec.guardian`).
    #[serde(default)]
    pub guardian: Option<joch_raft_store::model::resource::GuardianSpec>,
    /// The fleet's catalog as an MCP Registry (`/v0.1/servers` on the MCP listener).
    #[serde(default)]
    pub catalog: RawCatalog,
    /// Run without authenticating operators, with a plaintext admin API (development only; logged
    /// loudly). Default false.
    pub insecure_dev: Option<bool>,
}

/// `admin:`.
#[derive(Deserialize, Serialize, Default, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// A file holding this node's bootstrap admin token (role admin, valid on this node only; how
    /// a cluster is initialised before any token is replicated). Required unless `insecure_dev`.
    pub token_file: Option<PathBuf>,
}

/// `agents:`.
#[derive(Deserialize, Serialize, Default, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawAgents {
    /// A request without a credential is the agent `anonymous` (default false).
    pub allow_anonymous: Option<bool>,
}

/// `secrets:`.
#[derive(Deserialize, Serialize, Default, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawSecrets {
    /// The key-encryption key: a file of 32 random bytes, base64 (the same on every node). Without
    /// it this node cannot seal or open secrets.
    pub kek_file: Option<PathBuf>,
    /// Earlier keys, still opened during a rotation (`joch secret rotate-kek`).
    pub previous_kek_files: Option<Vec<PathBuf>>,
}

/// `audit:`.
#[derive(Deserialize, Serialize, Default, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    /// Keep an audit trail (default true).
    pub enabled: Option<bool>,
    /// Records older than this are removed (default 30d).
    pub max_age: Option<String>,
    /// At most this many records are kept on this node (default 10000000).
    pub max_records: Option<u64>,
    /// The audit database is kept under this size (default 10GiB): `512MiB`, `2GB`, bytes.
    pub max_bytes: Option<String>,
    /// Records waiting to be written at most; beyond, they are dropped and counted (default 65536).
    pub queue: Option<usize>,
    /// The group-commit window: how long the writer gathers records before one synced write
    /// (default 5ms): with what is queued, the most a crash can lose.
    pub group_commit: Option<String>,
    /// Also append every record as a JSON line to this file (for a SIEM).
    pub jsonl: Option<PathBuf>,
    /// How often the leader counts every server's calls of the last day for the trust score
    /// (default 60s).
    pub traffic_interval: Option<String>,
}

/// `catalog:`.
#[derive(Deserialize, Serialize, Default, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawCatalog {
    /// The reverse-DNS namespace servers are listed under, `NAMESPACE/NAME` (default `local.joch`).
    pub namespace: Option<String>,
    /// Where agents reach the fleet (the load balancer's URL); default: as each request
    /// addressed the node.
    pub public_url: Option<String>,
    /// What a caller without a credential sees: `none` (default) or `all`.
    pub anonymous: Option<crate::catalog::Anonymous>,
}

/// `otlp:`.
#[derive(Deserialize, Serialize, Default, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawOtlp {
    /// The collector's OTLP/gRPC endpoint (`http://HOST:4317`); absent: no export.
    pub endpoint: Option<String>,
    /// `service.name` of the exported resource (default `joch`).
    pub service_name: Option<String>,
    /// How long one export may take (default 5s).
    pub timeout: Option<String>,
}

/// `stdio:`.
#[derive(Deserialize, Serialize, Default, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawStdio {
    /// Executables (or directories of them) this node may run as stdio servers (default none):
    /// the replicated record alone is not enough.
    pub allow: Option<Vec<PathBuf>>,
}

/// `mcp_tls:`.
#[derive(Deserialize, Serialize, Default, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawMcpTls {
    /// Certificate chain (PEM) of the MCP listener; reloaded when the file changes.
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub key: Option<PathBuf>,
    /// Serve plain HTTP on a non-loopback address anyway (behind a TLS-terminating balancer).
    pub allow_plain_http: Option<bool>,
}

/// MCP proxy limits.
#[derive(Deserialize, Serialize, Default, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawProxy {
    /// Largest request body in bytes (default 4194304); larger gets 413.
    pub max_body_bytes: Option<usize>,
    /// Deepest JSON nesting accepted (default 64).
    pub max_json_depth: Option<usize>,
    /// Upstream TCP/TLS connect timeout (default 5s).
    pub upstream_connect_timeout: Option<String>,
    /// Time for an upstream to start answering, and to finish a JSON answer once started
    /// (default 60s); a stdio call may also stay silent this long. Long SSE streams are not cut
    /// by it.
    pub upstream_timeout: Option<String>,
    /// Interval of SSE keep-alive comments on idle streams (default 15s).
    pub keepalive: Option<String>,
    /// How long a client may take to send its request headers, and its body (default 10s each);
    /// slower clients are disconnected (headers) or answered 408 (body).
    pub client_timeout: Option<String>,
    /// Browser origins allowed to call the MCP endpoints (`Origin` header); others get 403.
    /// Requests without an Origin header (non-browser agents) are not affected.
    pub allowed_origins: Option<Vec<String>>,
    /// Open client connections a node accepts (default 16384); beyond, a new connection gets 503
    /// with `Retry-After` and is closed.
    pub max_connections: Option<usize>,
    /// Requests in flight at once, open streams included (default 8192); beyond, a request gets
    /// 503 `node-overloaded` with `Retry-After`, never a queue.
    pub max_concurrent_requests: Option<usize>,
    /// HTTP/2 streams per connection (default 256).
    pub max_h2_streams: Option<u32>,
    /// How long a session id stays valid after its initialize (default 24h); an older one is
    /// answered "session not found: re-initialize".
    pub session_max_age: Option<String>,
}

/// Listen (or advertise) addresses.
#[derive(Deserialize, Serialize, Default, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawListen {
    /// MCP HTTP (agents), also `/healthz` and `/readyz`.
    pub mcp: Option<String>,
    /// gRPC admin API (operators, the CLI).
    pub admin: Option<String>,
    /// QUIC mesh (other nodes).
    pub mesh: Option<String>,
    /// Prometheus `/metrics`.
    pub metrics: Option<String>,
}

/// TLS files.
#[derive(Deserialize, Serialize, Default, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// Cluster CA certificate (PEM).
    pub ca: Option<PathBuf>,
    /// This node's certificate (PEM), signed by the CA.
    pub cert: Option<PathBuf>,
    /// This node's private key (PEM).
    pub key: Option<PathBuf>,
}

/// Raft timing.
#[derive(Deserialize, Serialize, Default, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawRaft {
    /// Leader heartbeat interval (default 250ms).
    pub heartbeat: Option<String>,
    /// Lower bound of the randomised election timeout (default 1500ms).
    pub election_timeout_min: Option<String>,
    /// Upper bound (default 3000ms).
    pub election_timeout_max: Option<String>,
    /// Build a snapshot after this many log entries since the last (default 5000).
    pub snapshot_after_logs: Option<u64>,
    /// Log entries kept after a snapshot, for slow followers (default 1000).
    pub logs_to_keep: Option<u64>,
    /// Control-plane lease: a node that has not heard from a leader for longer fails closed
    /// (default 6s).
    pub lease: Option<String>,
}

/// Logging.
#[derive(Deserialize, Serialize, Default, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// `text` (default) or `json`.
    pub format: Option<String>,
    /// tracing filter, e.g. `info` or `joch=debug,openraft=info` (default `info`).
    pub level: Option<String>,
}

/// Validated node configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Node id.
    pub id: u64,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Where to listen.
    pub listen: Listen,
    /// What to tell others (same as `listen` unless set; port 0 is replaced by the bound port).
    pub advertise: Advertise,
    /// Mesh TLS files.
    pub tls: TlsFiles,
    /// Raft settings.
    pub raft: RaftTiming,
    /// Fleet acknowledgement wait.
    pub fleet_ack_timeout: Duration,
    /// Leader wait for writes.
    pub write_timeout: Duration,
    /// MCP proxy limits.
    pub proxy: ProxyLimits,
    /// Log format is JSON.
    pub log_json: bool,
    /// Log filter.
    pub log_level: String,
    /// The bootstrap admin token's file (`None` only with `insecure_dev`).
    pub admin_token_file: Option<PathBuf>,
    /// Operators are not authenticated (development only).
    pub insecure_dev: bool,
    /// Anonymous agents allowed.
    pub allow_anonymous: bool,
    /// Key-encryption key files: the current one first, then earlier ones.
    pub kek_files: Vec<PathBuf>,
    /// Executables or directories this node may run as stdio servers.
    pub stdio_allow: Vec<PathBuf>,
    /// TLS certificate and key of the MCP listener.
    pub mcp_tls: Option<(PathBuf, PathBuf)>,
    /// The audit trail (`None`: not kept).
    pub audit: Option<AuditSettings>,
    /// OTLP export of the audit records (`None`: none).
    pub otlp: Option<crate::audit::otlp::Settings>,
    /// This node's guardian, for every server.
    pub guardian: Option<joch_raft_store::model::resource::GuardianSpec>,
    /// How the catalog is served.
    pub catalog: crate::catalog::Settings,
}

/// How the audit trail is kept (`audit:`).
#[derive(Debug, Clone)]
pub struct AuditSettings {
    /// Oldest kept.
    pub max_age: Duration,
    /// Most records kept.
    pub max_records: u64,
    /// Largest size on disk.
    pub max_bytes: u64,
    /// Queue bound.
    pub queue: usize,
    /// Group-commit window.
    pub group_commit: Duration,
    /// JSON lines file.
    pub jsonl: Option<PathBuf>,
    /// How often the leader counts calls for the trust score.
    pub traffic_interval: Duration,
}

impl AuditSettings {
    /// The store's options for a node whose data directory is `data_dir`.
    pub fn options(&self, data_dir: &std::path::Path) -> joch_audit::Options {
        let mut o = joch_audit::Options::new(data_dir.join("audit"));
        o.queue = self.queue;
        o.window = self.group_commit;
        o.retention = joch_audit::Retention {
            max_age_us: self.max_age.as_micros() as u64,
            max_records: self.max_records,
            max_bytes: self.max_bytes,
        };
        o.jsonl = self.jsonl.clone();
        o
    }
}

/// Listen addresses.
#[derive(Debug, Clone)]
pub struct Listen {
    /// MCP HTTP.
    pub mcp: SocketAddr,
    /// Admin gRPC.
    pub admin: SocketAddr,
    /// QUIC mesh.
    pub mesh: SocketAddr,
    /// Metrics.
    pub metrics: SocketAddr,
}

/// Advertised host overrides (`host:port`), if any.
#[derive(Debug, Clone, Default)]
pub struct Advertise {
    /// MCP HTTP.
    pub mcp: Option<String>,
    /// Admin gRPC.
    pub admin: Option<String>,
    /// Mesh.
    pub mesh: Option<String>,
}

/// TLS file paths.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// CA certificate.
    pub ca: PathBuf,
    /// Node certificate.
    pub cert: PathBuf,
    /// Node key.
    pub key: PathBuf,
}

/// MCP proxy limits.
#[derive(Debug, Clone)]
pub struct ProxyLimits {
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Deepest JSON nesting.
    pub max_json_depth: usize,
    /// Upstream connect timeout.
    pub upstream_connect_timeout: Duration,
    /// Upstream time to first byte of the answer.
    pub upstream_timeout: Duration,
    /// SSE keep-alive interval.
    pub keepalive: Duration,
    /// Time allowed for request headers, and for the body.
    pub client_timeout: Duration,
    /// Allowed browser origins.
    pub allowed_origins: Vec<String>,
    /// Open client connections.
    pub max_connections: usize,
    /// Requests in flight.
    pub max_concurrent_requests: usize,
    /// HTTP/2 streams per connection.
    pub max_h2_streams: u32,
    /// Lifetime of a session id.
    pub session_max_age: Duration,
}

impl Default for ProxyLimits {
    fn default() -> Self {
        ProxyLimits {
            max_body_bytes: 4 << 20,
            max_json_depth: 64,
            upstream_connect_timeout: Duration::from_secs(5),
            upstream_timeout: Duration::from_secs(60),
            keepalive: Duration::from_secs(15),
            client_timeout: Duration::from_secs(10),
            allowed_origins: Vec::new(),
            max_connections: 16384,
            max_concurrent_requests: 8192,
            max_h2_streams: 256,
            session_max_age: Duration::from_secs(24 * 3600),
        }
    }
}

/// Raft timing and compaction.
#[derive(Debug, Clone)]
pub struct RaftTiming {
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Election timeout lower bound.
    pub election_min: Duration,
    /// Election timeout upper bound.
    pub election_max: Duration,
    /// Snapshot threshold.
    pub snapshot_after_logs: u64,
    /// Logs kept after a snapshot.
    pub logs_to_keep: u64,
    /// Control-plane lease.
    pub lease: Duration,
}

impl RaftTiming {
    /// openraft's configuration from these settings.
    pub fn openraft_config(&self) -> Result<openraft::Config, Box<openraft::ConfigError>> {
        openraft::Config {
            cluster_name: "joch".into(),
            heartbeat_interval: self.heartbeat.as_millis() as u64,
            election_timeout_min: self.election_min.as_millis() as u64,
            election_timeout_max: self.election_max.as_millis() as u64,
            install_snapshot_timeout: 10_000,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_after_logs),
            max_in_snapshot_log_to_keep: self.logs_to_keep,
            // openraft purges only when this many entries can go at once; tie it to the snapshot
            // threshold so small thresholds (tests, experiments) purge too.
            purge_batch_size: (self.snapshot_after_logs / 2).clamp(1, 256),
            ..Default::default()
        }
        .validate()
        .map_err(Box::new)
    }
}

/// One problem in the configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigProblem {
    /// Field path (as in the file), e.g. `raft.heartbeat`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// Everything wrong with a configuration.
#[derive(Debug, thiserror::Error)]
#[error("invalid node configuration{}:\n{}", .source_name.as_ref().map(|s| format!(" ({s})")).unwrap_or_default(), .problems.iter().map(|p| format!("  - {}: {}", p.field, p.message)).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError {
    /// File the configuration came from, if any.
    pub source_name: Option<String>,
    /// The problems.
    pub problems: Vec<ConfigProblem>,
}

impl RawConfig {
    /// Reads a YAML config file.
    pub fn from_file(path: &Path) -> Result<RawConfig, ConfigError> {
        let one = |message: String| ConfigError {
            source_name: Some(path.display().to_string()),
            problems: vec![ConfigProblem { field: "(file)".into(), message }],
        };
        let text = std::fs::read_to_string(path).map_err(|e| one(format!("cannot read: {e}")))?;
        serde_yaml_ng::from_str(&text).map_err(|e| one(e.to_string()))
    }

    /// Overlays `other`'s set fields on `self`.
    pub fn merge(mut self, other: RawConfig) -> RawConfig {
        fn m<T>(a: &mut Option<T>, b: Option<T>) {
            if b.is_some() {
                *a = b;
            }
        }
        m(&mut self.id, other.id);
        m(&mut self.data_dir, other.data_dir);
        for (a, b) in [(&mut self.listen, other.listen), (&mut self.advertise, other.advertise)] {
            m(&mut a.mcp, b.mcp);
            m(&mut a.admin, b.admin);
            m(&mut a.mesh, b.mesh);
            m(&mut a.metrics, b.metrics);
        }
        m(&mut self.tls.ca, other.tls.ca);
        m(&mut self.tls.cert, other.tls.cert);
        m(&mut self.tls.key, other.tls.key);
        m(&mut self.raft.heartbeat, other.raft.heartbeat);
        m(&mut self.raft.election_timeout_min, other.raft.election_timeout_min);
        m(&mut self.raft.election_timeout_max, other.raft.election_timeout_max);
        m(&mut self.raft.snapshot_after_logs, other.raft.snapshot_after_logs);
        m(&mut self.raft.logs_to_keep, other.raft.logs_to_keep);
        m(&mut self.raft.lease, other.raft.lease);
        m(&mut self.fleet_ack_timeout, other.fleet_ack_timeout);
        m(&mut self.write_timeout, other.write_timeout);
        m(&mut self.proxy.max_body_bytes, other.proxy.max_body_bytes);
        m(&mut self.proxy.max_json_depth, other.proxy.max_json_depth);
        m(&mut self.proxy.upstream_connect_timeout, other.proxy.upstream_connect_timeout);
        m(&mut self.proxy.upstream_timeout, other.proxy.upstream_timeout);
        m(&mut self.proxy.keepalive, other.proxy.keepalive);
        m(&mut self.proxy.session_max_age, other.proxy.session_max_age);
        m(&mut self.proxy.client_timeout, other.proxy.client_timeout);
        m(&mut self.proxy.allowed_origins, other.proxy.allowed_origins);
        m(&mut self.proxy.max_connections, other.proxy.max_connections);
        m(&mut self.proxy.max_concurrent_requests, other.proxy.max_concurrent_requests);
        m(&mut self.proxy.max_h2_streams, other.proxy.max_h2_streams);
        m(&mut self.log.format, other.log.format);
        m(&mut self.log.level, other.log.level);
        m(&mut self.admin.token_file, other.admin.token_file);
        m(&mut self.agents.allow_anonymous, other.agents.allow_anonymous);
        m(&mut self.audit.enabled, other.audit.enabled);
        m(&mut self.audit.max_age, other.audit.max_age);
        m(&mut self.audit.max_records, other.audit.max_records);
        m(&mut self.audit.max_bytes, other.audit.max_bytes);
        m(&mut self.audit.queue, other.audit.queue);
        m(&mut self.audit.group_commit, other.audit.group_commit);
        m(&mut self.audit.jsonl, other.audit.jsonl);
        m(&mut self.audit.traffic_interval, other.audit.traffic_interval);
        m(&mut self.otlp.endpoint, other.otlp.endpoint);
        m(&mut self.otlp.service_name, other.otlp.service_name);
        m(&mut self.otlp.timeout, other.otlp.timeout);
        m(&mut self.guardian, other.guardian);
        m(&mut self.catalog.namespace, other.catalog.namespace);
        m(&mut self.catalog.public_url, other.catalog.public_url);
        m(&mut self.catalog.anonymous, other.catalog.anonymous);
        m(&mut self.secrets.kek_file, other.secrets.kek_file);
        m(&mut self.secrets.previous_kek_files, other.secrets.previous_kek_files);
        m(&mut self.stdio.allow, other.stdio.allow);
        m(&mut self.mcp_tls.cert, other.mcp_tls.cert);
        m(&mut self.mcp_tls.key, other.mcp_tls.key);
        m(&mut self.mcp_tls.allow_plain_http, other.mcp_tls.allow_plain_http);
        m(&mut self.insecure_dev, other.insecure_dev);
        self
    }

    /// Validates, reporting every problem at once.
    pub fn validate(self, source_name: Option<String>) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let mut bad = |field: &str, message: String| problems.push(ConfigProblem { field: field.into(), message });

        let id = match self.id {
            Some(0) => {
                bad("id", "must be greater than 0".into());
                0
            }
            Some(id) => id,
            None => {
                bad("id", "required (--id, JOCH_NODE_ID or `id:` in the file)".into());
                0
            }
        };
        let data_dir = self.data_dir.clone().unwrap_or_else(|| {
            bad("data_dir", "required (--data-dir, JOCH_DATA_DIR or `data_dir:`)".into());
            PathBuf::new()
        });
        let mut addr = |field: &str, v: &Option<String>, default: &str| -> SocketAddr {
            let s = v.as_deref().unwrap_or(default);
            s.parse().unwrap_or_else(|_| {
                bad(field, format!("{s:?} is not an IP:PORT address"));
                SocketAddr::from(([127, 0, 0, 1], 0))
            })
        };
        let listen = Listen {
            mcp: addr("listen.mcp", &self.listen.mcp, "127.0.0.1:8080"),
            admin: addr("listen.admin", &self.listen.admin, "127.0.0.1:7100"),
            mesh: addr("listen.mesh", &self.listen.mesh, "127.0.0.1:7200"),
            metrics: addr("listen.metrics", &self.listen.metrics, "127.0.0.1:9100"),
        };
        let mut file = |field: &str, v: &Option<PathBuf>| -> PathBuf {
            match v {
                None => {
                    bad(
                        field,
                        "required: mesh TLS needs the cluster CA, a node certificate and key (see `joch cluster ca`)"
                            .into(),
                    );
                    PathBuf::new()
                }
                Some(p) if !p.exists() => {
                    bad(field, format!("{} does not exist", p.display()));
                    p.clone()
                }
                Some(p) => p.clone(),
            }
        };
        let tls = TlsFiles {
            ca: file("tls.ca", &self.tls.ca),
            cert: file("tls.cert", &self.tls.cert),
            key: file("tls.key", &self.tls.key),
        };
        let mut dur = |field: &str, v: &Option<String>, default: &str| -> Option<Duration> {
            let s = v.as_deref().unwrap_or(default);
            let d = parse_duration(s);
            if d.is_none() {
                bad(field, format!("{s:?} is not a duration (e.g. 250ms, 2s, 1m)"));
            }
            d
        };
        let heartbeat = dur("raft.heartbeat", &self.raft.heartbeat, "250ms");
        let election_min = dur("raft.election_timeout_min", &self.raft.election_timeout_min, "1500ms");
        let election_max = dur("raft.election_timeout_max", &self.raft.election_timeout_max, "3000ms");
        let lease = dur("raft.lease", &self.raft.lease, "6s");
        let fleet_ack_timeout = dur("fleet_ack_timeout", &self.fleet_ack_timeout, "2s").unwrap_or_default();
        let write_timeout = dur("write_timeout", &self.write_timeout, "10s").unwrap_or_default();
        let audit_max_age = dur("audit.max_age", &self.audit.max_age, "30d").unwrap_or_default();
        let audit_window = dur("audit.group_commit", &self.audit.group_commit, "5ms").unwrap_or_default();
        let traffic_interval =
            dur("audit.traffic_interval", &self.audit.traffic_interval, "60s").unwrap_or(Duration::from_secs(60));
        let otlp_timeout = dur("otlp.timeout", &self.otlp.timeout, "5s").unwrap_or_default();
        let defaults = ProxyLimits::default();
        let proxy = ProxyLimits {
            max_body_bytes: self.proxy.max_body_bytes.unwrap_or(defaults.max_body_bytes),
            max_json_depth: self.proxy.max_json_depth.unwrap_or(defaults.max_json_depth),
            upstream_connect_timeout: dur("proxy.upstream_connect_timeout", &self.proxy.upstream_connect_timeout, "5s")
                .unwrap_or_default(),
            upstream_timeout: dur("proxy.upstream_timeout", &self.proxy.upstream_timeout, "60s").unwrap_or_default(),
            keepalive: dur("proxy.keepalive", &self.proxy.keepalive, "15s").unwrap_or_default(),
            client_timeout: dur("proxy.client_timeout", &self.proxy.client_timeout, "10s").unwrap_or_default(),
            allowed_origins: self.proxy.allowed_origins.clone().unwrap_or_default(),
            max_connections: self.proxy.max_connections.unwrap_or(defaults.max_connections),
            max_concurrent_requests: self.proxy.max_concurrent_requests.unwrap_or(defaults.max_concurrent_requests),
            max_h2_streams: self.proxy.max_h2_streams.unwrap_or(defaults.max_h2_streams),
            session_max_age: dur("proxy.session_max_age", &self.proxy.session_max_age, "24h").unwrap_or_default(),
        };
        if proxy.max_connections == 0 {
            bad("proxy.max_connections", "must be greater than 0".into());
        }
        if proxy.max_concurrent_requests == 0 {
            bad("proxy.max_concurrent_requests", "must be greater than 0".into());
        }
        if proxy.max_h2_streams == 0 {
            bad("proxy.max_h2_streams", "must be greater than 0".into());
        }
        if proxy.max_body_bytes < 1024 {
            bad("proxy.max_body_bytes", "must be at least 1024".into());
        }
        if !(2..=1024).contains(&proxy.max_json_depth) {
            bad("proxy.max_json_depth", "must be between 2 and 1024".into());
        }
        // Relations between timings, checked only where both sides parsed (one problem per field).
        if let (Some(h), Some(min)) = (heartbeat, election_min) {
            if min < h * 3 {
                bad("raft.election_timeout_min", format!("{min:?} must be at least 3 heartbeats ({:?})", h * 3));
            }
        }
        if let (Some(min), Some(max)) = (election_min, election_max) {
            if max <= min {
                bad("raft.election_timeout_max", "must be greater than election_timeout_min".into());
            }
        }
        if let (Some(max), Some(l)) = (election_max, lease) {
            if l < max {
                bad("raft.lease", format!("{l:?} must be at least election_timeout_max ({max:?})"));
            }
        }
        if let (Some(h), Some(l)) = (heartbeat, lease) {
            // A follower is vouched for by a probe every heartbeat; a lease of a few heartbeats
            // would flap on a busy machine.
            if l < h * 4 {
                bad("raft.lease", format!("{l:?} must be at least 4 heartbeats ({:?})", h * 4));
            }
        }
        if let Some(l) = lease {
            // A member that does not confirm within fleet_ack_timeout is reported with the time
            // its lease runs out; a wait as long as the lease would report a moment already past.
            if fleet_ack_timeout >= l {
                bad(
                    "fleet_ack_timeout",
                    format!(
                        "{fleet_ack_timeout:?} must be shorter than raft.lease ({l:?}): a member that did not confirm \
                         is guaranteed to stop serving only when its lease runs out"
                    ),
                );
            }
        }
        let raft = RaftTiming {
            heartbeat: heartbeat.unwrap_or_default(),
            election_min: election_min.unwrap_or_default(),
            election_max: election_max.unwrap_or_default(),
            snapshot_after_logs: self.raft.snapshot_after_logs.unwrap_or(5000),
            logs_to_keep: self.raft.logs_to_keep.unwrap_or(1000),
            lease: lease.unwrap_or_default(),
        };
        if raft.snapshot_after_logs == 0 {
            bad("raft.snapshot_after_logs", "must be greater than 0".into());
        }
        let log_json = match self.log.format.as_deref().unwrap_or("text") {
            "text" => false,
            "json" => true,
            other => {
                bad("log.format", format!("{other:?}: expected text or json"));
                false
            }
        };
        let advertise = Advertise { mcp: self.advertise.mcp, admin: self.advertise.admin, mesh: self.advertise.mesh };
        let insecure_dev = self.insecure_dev.unwrap_or(false);
        match &self.admin.token_file {
            None if !insecure_dev => bad(
                "admin.token_file",
                "required: a file with this node's bootstrap admin token (operators must be authenticated; \
                 --insecure-dev turns that off, for development only)"
                    .into(),
            ),
            Some(p) if !p.exists() => bad("admin.token_file", format!("{} does not exist", p.display())),
            _ => {}
        }
        let mut kek_files = Vec::new();
        for (field, p) in self
            .secrets
            .kek_file
            .iter()
            .map(|p| ("secrets.kek_file", p))
            .chain(self.secrets.previous_kek_files.iter().flatten().map(|p| ("secrets.previous_kek_files", p)))
        {
            if !p.exists() {
                bad(field, format!("{} does not exist", p.display()));
            }
            kek_files.push(p.clone());
        }
        if self.secrets.kek_file.is_none() && self.secrets.previous_kek_files.as_ref().is_some_and(|v| !v.is_empty()) {
            bad("secrets.kek_file", "required when previous_kek_files are given (the current key)".into());
        }
        let mcp_tls = match (&self.mcp_tls.cert, &self.mcp_tls.key) {
            (Some(c), Some(k)) => {
                for (field, p) in [("mcp_tls.cert", c), ("mcp_tls.key", k)] {
                    if !p.exists() {
                        bad(field, format!("{} does not exist", p.display()));
                    }
                }
                Some((c.clone(), k.clone()))
            }
            (None, None) => None,
            (Some(_), None) => {
                bad("mcp_tls.key", "required with mcp_tls.cert".into());
                None
            }
            (None, Some(_)) => {
                bad("mcp_tls.cert", "required with mcp_tls.key".into());
                None
            }
        };
        if mcp_tls.is_none() && !listen.mcp.ip().is_loopback() && !self.mcp_tls.allow_plain_http.unwrap_or(false) {
            bad(
                "mcp_tls",
                format!(
                    "the MCP listener {} is not on loopback: give it a certificate (mcp_tls.cert, mcp_tls.key), or \
                     set mcp_tls.allow_plain_http behind a TLS-terminating balancer",
                    listen.mcp
                ),
            );
        }
        for (i, p) in self.stdio.allow.iter().flatten().enumerate() {
            if !p.is_absolute() {
                bad(
                    &format!("stdio.allow[{i}]"),
                    format!("{} is not an absolute path (an executable, or a directory of them)", p.display()),
                );
            }
        }
        if self.audit.queue == Some(0) {
            bad("audit.queue", "must be at least 1".into());
        }
        if self.audit.max_records == Some(0) {
            bad("audit.max_records", "must be at least 1".into());
        }
        let audit_max_bytes = match self.audit.max_bytes.as_deref() {
            None => 10 << 30,
            Some(s) => match parse_size(s) {
                Some(n) if n >= 1 << 20 => n,
                _ => {
                    bad("audit.max_bytes", format!("{s:?} is not a size of at least 1MiB (e.g. 512MiB, 10GiB, 2GB)"));
                    0
                }
            },
        };
        if traffic_interval < Duration::from_secs(1) {
            bad("audit.traffic_interval", format!("{traffic_interval:?} is shorter than 1s"));
        }
        if audit_window > Duration::from_secs(1) {
            bad("audit.group_commit", format!("{audit_window:?} is longer than 1s: a crash would lose that much"));
        }
        let otlp = match &self.otlp.endpoint {
            None => None,
            Some(e) if !(e.starts_with("http://") || e.starts_with("https://")) => {
                bad("otlp.endpoint", format!("{e:?} is not an http:// or https:// URL (the collector's OTLP/gRPC port, e.g. http://127.0.0.1:4317)"));
                None
            }
            Some(_) if self.audit.enabled == Some(false) => {
                bad("otlp.endpoint", "OTLP export sends the audit records: it needs audit.enabled".into());
                None
            }
            Some(e) => Some(crate::audit::otlp::Settings {
                endpoint: e.clone(),
                service_name: self.otlp.service_name.clone().unwrap_or_else(|| "joch".into()),
                timeout: otlp_timeout,
            }),
        };
        let audit = self.audit.enabled.unwrap_or(true).then(|| AuditSettings {
            max_age: audit_max_age,
            max_records: self.audit.max_records.unwrap_or(10_000_000),
            max_bytes: audit_max_bytes,
            queue: self.audit.queue.unwrap_or(65_536),
            group_commit: audit_window,
            jsonl: self.audit.jsonl.clone(),
            traffic_interval,
        });
        if let Some(g) = &self.guardian {
            for p in g.problems("guardian") {
                bad(&p.field, p.message);
            }
        }
        let namespace = self.catalog.namespace.clone().unwrap_or_else(|| "local.joch".into());
        let ns_ok = namespace.contains('.')
            && namespace.split('.').all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        if !ns_ok {
            bad("catalog.namespace", format!("{namespace:?} is not a reverse-DNS namespace (e.g. com.example.mcp)"));
        }
        if let Some(u) = &self.catalog.public_url {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                bad("catalog.public_url", format!("{u:?} is not an http:// or https:// URL"));
            }
        }
        let catalog = crate::catalog::Settings {
            namespace,
            public_url: self.catalog.public_url.clone(),
            anonymous: self.catalog.anonymous.unwrap_or_default(),
        };
        if !problems.is_empty() {
            return Err(ConfigError { source_name, problems });
        }
        Ok(Config {
            id,
            data_dir,
            listen,
            advertise,
            tls,
            raft,
            fleet_ack_timeout,
            write_timeout,
            proxy,
            log_json,
            log_level: self.log.level.unwrap_or_else(|| "info".into()),
            admin_token_file: self.admin.token_file,
            insecure_dev,
            allow_anonymous: self.agents.allow_anonymous.unwrap_or(false),
            kek_files,
            stdio_allow: self.stdio.allow.unwrap_or_default(),
            mcp_tls,
            audit,
            otlp,
            guardian: self.guardian,
            catalog,
        })
    }
}

/// A size: bytes, or a number with KB/MB/GB/TB (powers of 1000) or KiB/MiB/GiB/TiB (of 1024).
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(digits);
    let n: u64 = n.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_reported_at_once() {
        let raw: RawConfig = serde_yaml_ng::from_str(
            "id: 0\nlisten: { admin: 'nope' }\nraft: { heartbeat: 1s, election_timeout_min: 2s, lease: fast }\nlog: { format: xml }\n",
        )
        .unwrap();
        let err = raw.validate(Some("node.yaml".into())).unwrap_err();
        let fields: Vec<&str> = err.problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "id",
                "data_dir",
                "listen.admin",
                "tls.ca",
                "tls.cert",
                "tls.key",
                "raft.lease",
                "raft.election_timeout_min",
                "log.format",
                "admin.token_file"
            ]
        );
        assert!(err.to_string().starts_with("invalid node configuration (node.yaml):"), "{err}");
    }

    #[test]
    fn a_guardian_is_checked_field_by_field() {
        let raw: RawConfig = serde_yaml_ng::from_str(
            "guardian: { endpoint: 'guard:9000', timeout: 2m, name: Central, failure: closed, hooks: [inbound] }\n",
        )
        .unwrap();
        let err = raw.validate(None).unwrap_err();
        let fields: Vec<&str> =
            err.problems.iter().map(|p| p.field.as_str()).filter(|f| f.starts_with("guardian")).collect();
        assert_eq!(fields, ["guardian.endpoint", "guardian.timeout", "guardian.name"], "{err}");
        let e = serde_yaml_ng::from_str::<RawConfig>("guardian: { endpoint: 'http://g/acs', hooks: [sideways] }\n")
            .unwrap_err();
        assert!(e.to_string().contains("unknown variant `sideways`"), "{e}");
        let e = serde_yaml_ng::from_str::<RawConfig>("guardian: { endpoint: 'http://g/acs', failure: ajar }\n")
            .unwrap_err();
        assert!(e.to_string().contains("unknown variant `ajar`"), "{e}");
    }

    #[test]
    fn sizes_are_read_with_their_units() {
        assert_eq!(parse_size("512MiB"), Some(512 << 20));
        assert_eq!(parse_size("2GB"), Some(2_000_000_000));
        assert_eq!(parse_size("1048576"), Some(1 << 20));
        assert_eq!(parse_size("10 GiB"), Some(10 << 30));
        for bad in ["", "GiB", "1.5GiB", "10 gigs", "99999999999999TiB"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let e = serde_yaml_ng::from_str::<RawConfig>("id: 1\nlistne: {}\n").unwrap_err();
        assert!(e.to_string().contains("unknown field `listne`"), "{e}");
    }

    #[test]
    fn later_layers_win() {
        let file: RawConfig = serde_yaml_ng::from_str("id: 1\nraft: { heartbeat: 100ms }\n").unwrap();
        let flags = RawConfig { id: Some(2), ..Default::default() };
        let merged = file.merge(flags);
        assert_eq!(merged.id, Some(2));
        assert_eq!(merged.raft.heartbeat.as_deref(), Some("100ms"));
    }
}
