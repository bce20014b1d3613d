//! joch benchmarks: real `joch` processes on loopback, measured from outside.
//!
//! `joch-bench all` runs the whole suite (open-loop load beside direct and an nginx hop, stdio,
//! quarantine propagation, admin writes, memory, session continuation): see `suite.rs`.
//! `joch-bench load` is the open-loop generator alone, against any MCP endpoint.
//!
//! `joch-bench proxy-latency` measures one `tools/call` through joch against the same call made
//! directly to the upstream (a canned Rust MCP server, so the upstream's own time is small and
//! constant), sequentially on one keep-alive connection per path, and reports the added latency,
//! in the legacy era (a session) and the modern era (stateless requests), or one of them.
//!
//! `joch-bench cluster-core` measures (1) `joch dev up` from invocation to a cluster with a
//! leader, and (2) a quarantine's latency from send to fleet-wide acknowledgement (every member
//! applied it), sent to the leader and to a follower. Results go to stdout and to
//! `bench/results/<date>/cluster-core.{json,md}`.

mod audit;
mod canned;
mod common;
mod floor;
mod loadgen;
mod micro;
mod plot;
mod policy;
mod procs;
mod report;
mod suite;

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser)]
#[command(about = "joch benchmarks")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// The whole suite, beside direct calls and an nginx hop (writes bench/results/<date>/suite).
    All {
        /// The joch binary to measure (default: the one built beside this benchmark).
        #[arg(long)]
        joch: Option<PathBuf>,
        /// Measured seconds per rate step.
        #[arg(long, default_value_t = 4.0)]
        step: f64,
        /// Keep-alive connections of the load.
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// Quarantine propagation trials per condition.
        #[arg(long, default_value_t = 200)]
        trials: usize,
        /// Servers registered for the "many servers" propagation conditions.
        #[arg(long, default_value_t = 10_000)]
        many_servers: usize,
        /// Bytes in each call's argument.
        #[arg(long, default_value_t = 64)]
        payload: usize,
        /// Run only these scenarios (1-6; repeatable), e.g. while working on one.
        #[arg(long)]
        only: Vec<u32>,
        /// Where to write (default bench/results/<date>/suite).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Open-loop load against MCP endpoints (several: round-robin per connection).
    Load {
        /// Target URL(s), e.g. http://127.0.0.1:8080/mcp/github.
        #[arg(long = "target", required = true)]
        targets: Vec<String>,
        #[arg(long, value_enum, default_value_t = loadgen::Era::Legacy)]
        era: loadgen::Era,
        /// Requests per second.
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        /// Measured seconds.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        #[arg(long, default_value_t = 16)]
        connections: usize,
        #[arg(long, default_value_t = 64)]
        payload: usize,
        /// An agent token (sent as Authorization: Bearer).
        #[arg(long, env = "JOCH_AGENT_TOKEN")]
        token: Option<String>,
    },
    /// The canned upstream as a process (what the suite starts).
    Canned {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
        #[arg(long)]
        addr_file: Option<PathBuf>,
        /// Serve on stdin/stdout instead.
        #[arg(long)]
        stdio: bool,
    },
    /// Added latency of the MCP proxy over a direct call.
    ProxyLatency {
        /// The joch binary to measure (default: the one built beside this benchmark).
        #[arg(long)]
        joch: Option<PathBuf>,
        /// Measured calls per path.
        #[arg(long, default_value_t = 5000)]
        requests: usize,
        /// Unmeasured calls per path first.
        #[arg(long, default_value_t = 500)]
        warmup: usize,
        /// Protocol era(s) to measure.
        #[arg(long, value_enum, default_value_t = EraArg::Both)]
        era: EraArg,
        /// Policy rules loaded first (a synthetic, realistic set: see `policy-decision`); 0: none.
        #[arg(long, default_value_t = 0)]
        policy_rules: usize,
        /// Give the server a guardian (an ACS hook endpoint in this process that allows
        /// everything, all four hooks) after a first measurement without it.
        #[arg(long)]
        guardian: bool,
        /// Turn the content guard on for the server (prompt-injection scan, secrets and PII
        /// redaction) after a first measurement without it.
        #[arg(long)]
        guard: bool,
        /// Size of each result's text (benign developer content; 0: "hello").
        #[arg(long, default_value_t = 0)]
        result_bytes: usize,
        /// Where to write results (default bench/results/<date>).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The policy decision alone: per-decision latency with N rules compiled.
    PolicyDecision {
        #[arg(long, default_value_t = 1000)]
        rules: usize,
        /// Measured decisions.
        #[arg(long, default_value_t = 1_000_000)]
        iterations: usize,
        /// Write the rule set as manifests (`joch apply -f`) to this file instead of measuring.
        #[arg(long)]
        write_manifests: Option<PathBuf>,
        /// Where to write results (default bench/results/<date>).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// What recording a request costs the request path (the push onto the audit writer's queue).
    AuditWrite {
        #[arg(long, default_value_t = 1_000_000)]
        records: u64,
        /// Pushes per second (0: as fast as possible).
        #[arg(long, default_value_t = 20_000)]
        rate: u64,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Fleet-wide audit queries on a 3-node cluster with this many records per node.
    AuditQuery {
        #[arg(long)]
        joch: Option<PathBuf>,
        #[arg(long, default_value_t = 1_000_000)]
        per_node: u64,
        #[arg(long, default_value_t = 5)]
        trials: usize,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Cluster start-up and fleet-wide quarantine acknowledgement.
    ClusterCore {
        /// The joch binary to measure (default: the one built beside this benchmark).
        #[arg(long)]
        joch: Option<PathBuf>,
        /// Quarantine trials per target (leader, follower).
        #[arg(long, default_value_t = 100)]
        trials: usize,
        /// `joch dev up` trials.
        #[arg(long, default_value_t = 5)]
        up_trials: usize,
        /// Where to write results (default bench/results/<date>).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Which era(s) `proxy-latency` measures.
#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
enum EraArg {
    /// 2025-11-25: initialize, then calls in the session.
    Legacy,
    /// 2026-07-28: stateless calls, the envelope in `params._meta`.
    Modern,
    /// Both, one after the other.
    Both,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    match Args::parse().cmd {
        Cmd::All { joch, step, connections, trials, many_servers, payload, only, out } => {
            let s = suite::Settings {
                step: std::time::Duration::from_secs_f64(step),
                connections,
                trials,
                many_servers,
                p99_bound_ms: 10.0,
                payload,
                only: (!only.is_empty()).then_some(only),
            };
            suite::all(common::joch_bin(joch), s, out.unwrap_or_else(suite::default_out)).await
        }
        Cmd::Load { targets, era, rate, duration, connections, payload, token } => {
            let spec = loadgen::Spec {
                targets,
                era,
                rate,
                duration: std::time::Duration::from_secs_f64(duration),
                warmup: std::time::Duration::from_secs(1),
                connections,
                payload,
                bearer: token.map(|t| format!("Bearer {t}")),
                tool: None,
            };
            let o = loadgen::run(spec)?;
            println!("{}", serde_json::to_string_pretty(&o)?);
            Ok(())
        }
        Cmd::Canned { listen, addr_file, stdio } => {
            if stdio {
                canned::stdio().await
            } else {
                canned::serve(listen, addr_file).await
            }
        }
        Cmd::ProxyLatency { joch, requests, warmup, era, policy_rules, guardian, guard, result_bytes, out } => {
            let joch = common::joch_bin(joch);
            let run =
                micro::LatencyRun { joch, requests, warmup, era, policy_rules, guardian, guard, result_bytes, out };
            micro::proxy_latency(run).await
        }
        Cmd::PolicyDecision { rules, write_manifests: Some(path), .. } => {
            std::fs::write(&path, policy::manifests(rules))?;
            println!("{rules} rules written to {}", path.display());
            Ok(())
        }
        Cmd::PolicyDecision { rules, iterations, out, .. } => policy::decision(rules, iterations, out),
        Cmd::AuditWrite { records, rate, out } => audit::write_cost(records, rate, out),
        Cmd::AuditQuery { joch, per_node, trials, out } => {
            audit::query(common::joch_bin(joch), per_node, trials, out).await
        }
        Cmd::ClusterCore { joch, trials, up_trials, out } => micro::cluster_core(joch, trials, up_trials, out).await,
    }
}
