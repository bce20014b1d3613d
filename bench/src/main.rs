//! joch benchmarks: real `joch` processes on loopback, measured from outside.
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

mod canned;
mod common;
mod micro;

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
        /// Where to write results (default bench/results/<date>).
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
        Cmd::ProxyLatency { joch, requests, warmup, era, out } => {
            micro::proxy_latency(common::joch_bin(joch), requests, warmup, era, out).await
        }
        Cmd::ClusterCore { joch, trials, up_trials, out } => micro::cluster_core(joch, trials, up_trials, out).await,
    }
}
