//! `joch serve`: run one node.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::config::{RawConfig, RawListen, RawLog, RawTls};

/// Flags of `joch serve`. Each may also come from its `JOCH_*` variable; flags win over the
/// environment, which wins over the config file.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// YAML config file.
    #[arg(long, short = 'c', env = "JOCH_CONFIG")]
    pub config: Option<PathBuf>,
    /// Node id (> 0).
    #[arg(long, env = "JOCH_NODE_ID")]
    pub id: Option<u64>,
    /// Data directory.
    #[arg(long, env = "JOCH_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// MCP HTTP listen address.
    #[arg(long, env = "JOCH_MCP_LISTEN")]
    pub mcp_listen: Option<String>,
    /// Admin gRPC listen address.
    #[arg(long, env = "JOCH_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,
    /// QUIC mesh listen address.
    #[arg(long, env = "JOCH_MESH_LISTEN")]
    pub mesh_listen: Option<String>,
    /// Metrics listen address.
    #[arg(long, env = "JOCH_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Cluster CA certificate.
    #[arg(long, env = "JOCH_TLS_CA")]
    pub ca: Option<PathBuf>,
    /// Node certificate.
    #[arg(long, env = "JOCH_TLS_CERT")]
    pub cert: Option<PathBuf>,
    /// Node key.
    #[arg(long, env = "JOCH_TLS_KEY")]
    pub key: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long, env = "JOCH_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Log filter (tracing syntax).
    #[arg(long, env = "JOCH_LOG")]
    pub log_level: Option<String>,
    /// File with this node's bootstrap admin token.
    #[arg(long, env = "JOCH_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Allow agents without a credential (they are the agent `anonymous`).
    #[arg(long, env = "JOCH_ALLOW_ANONYMOUS")]
    pub allow_anonymous: bool,
    /// Development only: operators are not authenticated and the admin API is plaintext.
    #[arg(long)]
    pub insecure_dev: bool,
}

/// Environment variables `joch serve` reads (cleared for nodes started by `joch dev`).
pub const SERVE_ENV: [&str; 15] = [
    "JOCH_CONFIG",
    "JOCH_NODE_ID",
    "JOCH_DATA_DIR",
    "JOCH_MCP_LISTEN",
    "JOCH_ADMIN_LISTEN",
    "JOCH_MESH_LISTEN",
    "JOCH_METRICS_LISTEN",
    "JOCH_TLS_CA",
    "JOCH_TLS_CERT",
    "JOCH_TLS_KEY",
    "JOCH_LOG_FORMAT",
    "JOCH_LOG",
    "JOCH_SERVER",
    "JOCH_ADMIN_TOKEN_FILE",
    "JOCH_ALLOW_ANONYMOUS",
];

pub fn run(a: ServeArgs) -> ExitCode {
    let base = match &a.config {
        Some(p) => match RawConfig::from_file(p) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => RawConfig::default(),
    };
    let flags = RawConfig {
        id: a.id,
        data_dir: a.data_dir,
        listen: RawListen { mcp: a.mcp_listen, admin: a.admin_listen, mesh: a.mesh_listen, metrics: a.metrics_listen },
        tls: RawTls { ca: a.ca, cert: a.cert, key: a.key },
        log: RawLog { format: a.log_format, level: a.log_level },
        admin: crate::config::RawAdmin { token_file: a.admin_token_file },
        agents: crate::config::RawAgents { allow_anonymous: a.allow_anonymous.then_some(true) },
        insecure_dev: a.insecure_dev.then_some(true),
        ..Default::default()
    };
    let cfg = match base.merge(flags).validate(a.config.as_ref().map(|p| p.display().to_string())) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _log = crate::telemetry::init_tracing(&cfg.log_level, cfg.log_json);
    tracing::info!(config = ?cfg, "effective configuration");
    if cfg.insecure_dev {
        tracing::warn!(
            "INSECURE: --insecure-dev: operators are NOT authenticated and the admin API is plaintext; \
             anyone who reaches {} can change the registry. Development only.",
            cfg.listen.admin
        );
        eprintln!(
            "WARNING: joch serve --insecure-dev: the admin API on {} is unauthenticated and plaintext",
            cfg.listen.admin
        );
    }
    // Two runtimes: the control plane (Raft, mesh, admin API, lease) on one thread of its own,
    // the data plane's background work (discovery, stdio children, relayed requests) on one per
    // core; see app::run.
    let runtimes = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("joch-control")
        .enable_all()
        .build()
        .and_then(|control| {
            let data = tokio::runtime::Builder::new_multi_thread().thread_name("joch-data").enable_all().build()?;
            Ok((control, data))
        });
    // And agents' connections on a thread per core, each its own runtime (crate::workers).
    let runtimes = runtimes.and_then(|(control, data)| Ok((control, data, crate::workers::Workers::per_core()?)));
    let (control, data, workers) = match runtimes {
        Ok(rts) => rts,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let workers = std::sync::Arc::new(workers);
    let result = control.block_on(crate::app::run(
        cfg,
        data.handle().clone(),
        workers.clone(),
        crate::lifecycle::shutdown_signal(),
    ));
    workers.stop();
    data.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %super::output::error_chain(&e), "node failed");
            eprintln!("error: {}", super::output::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
