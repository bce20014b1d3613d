//! joch benchmarks: real `joch` processes on loopback, measured from outside.
//!
//! `joch-bench cluster-core` measures (1) `joch dev up` from invocation to a cluster with a
//! leader, and (2) a quarantine's latency from send to fleet-wide acknowledgement (every member
//! applied it), sent to the leader and to a follower. Results go to stdout and to
//! `bench/results/<date>/cluster-core.{json,md}`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use joch_proto::admin::cluster_client::ClusterClient;
use joch_proto::admin::registry_client::RegistryClient;
use joch_proto::admin::{AddServerRequest, Empty, NameRequest, QuarantineRequest};
use serde_json::json;

#[derive(Parser)]
#[command(about = "joch benchmarks")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// Cluster start-up and fleet-wide quarantine acknowledgement.
    ClusterCore {
        /// The joch binary to measure (default: $JOCH_BIN, else the debug build).
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

fn joch_bin(arg: Option<PathBuf>) -> PathBuf {
    arg.or_else(|| std::env::var_os("JOCH_BIN").map(PathBuf::from)).unwrap_or_else(|| {
        let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
        PathBuf::from(target).join("debug/joch")
    })
}

fn run(joch: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(joch)
        .args(args)
        .env_remove("JOCH_SERVER")
        .output()
        .with_context(|| format!("running {}", joch.display()))?;
    if !out.status.success() {
        bail!("joch {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

struct Stats {
    n: usize,
    median: Duration,
    p99: Duration,
    max: Duration,
    min: Duration,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    let q = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    Stats { n: v.len(), median: q(0.5), p99: q(0.99), max: *v.last().unwrap(), min: v[0] }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn stats_json(s: &Stats) -> serde_json::Value {
    json!({"n": s.n, "min_ms": ms(s.min), "median_ms": ms(s.median), "p99_ms": ms(s.p99), "max_ms": ms(s.max)})
}

struct Cluster {
    joch: PathBuf,
    dir: tempfile::TempDir,
    nodes: Vec<serde_json::Value>,
}

impl Cluster {
    fn up(joch: &Path) -> anyhow::Result<(Cluster, Duration)> {
        let dir = tempfile::TempDir::new()?;
        let t = Instant::now();
        run(joch, &["dev", "up", "--nodes", "3", "--dir", dir.path().to_str().unwrap()])?;
        let took = t.elapsed();
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("cluster.json"))?)?;
        let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
        Ok((Cluster { joch: joch.to_path_buf(), dir, nodes }, took))
    }

    fn admin(&self, id: u64) -> String {
        self.nodes.iter().find(|n| n["id"] == id).and_then(|n| n["admin_url"].as_str()).unwrap_or_default().to_string()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = run(&self.joch, &["dev", "down", "--dir", self.dir.path().to_str().unwrap()]);
    }
}

async fn quarantine_trials(c: &Cluster, target: u64, trials: usize) -> anyhow::Result<Vec<Duration>> {
    let mut reg = RegistryClient::connect(c.admin(target)).await?;
    let name = format!("bench-{target}");
    reg.add_server(AddServerRequest {
        name: name.clone(),
        endpoint: "http://127.0.0.1:9/mcp".into(),
        ..Default::default()
    })
    .await?;
    let mut out = Vec::with_capacity(trials);
    for i in 0..trials {
        // Quarantine (measured), then lift it (not measured), so every trial changes state.
        let t = Instant::now();
        let r =
            reg.quarantine(QuarantineRequest { name: name.clone(), reason: format!("bench {i}") }).await?.into_inner();
        let took = t.elapsed();
        let fleet = r.fleet.unwrap_or_default();
        if !r.changed || !fleet.complete || fleet.members.len() != 3 {
            bail!("trial {i}: quarantine not acknowledged by all three members: {fleet:?}");
        }
        out.push(took);
        reg.unquarantine(NameRequest { name: name.clone() }).await?;
    }
    Ok(out)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let Args { cmd: Cmd::ClusterCore { joch, trials, up_trials, out } } = Args::parse();
    let joch = joch_bin(joch);
    let version = run(&joch, &["--version"])?;
    let mut ups = Vec::new();
    for _ in 0..up_trials {
        let (_c, took) = Cluster::up(&joch)?;
        ups.push(took);
    }
    let (c, _) = Cluster::up(&joch)?;
    let status = ClusterClient::connect(c.admin(1)).await?.status(Empty {}).await?.into_inner();
    let leader = status.leader;
    let follower = status.members.iter().map(|m| m.id).find(|id| *id != leader).context("a follower")?;
    let to_leader = stats(quarantine_trials(&c, leader, trials).await?);
    let to_follower = stats(quarantine_trials(&c, follower, trials).await?);
    let up = stats(ups);

    let date = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let day = &date[..10];
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let result = json!({
        "benchmark": "cluster-core",
        "date": date,
        "joch": joch.display().to_string(),
        "joch_version": version.trim(),
        "machine": {"cores": cores},
        "dev_up_to_leader": stats_json(&up),
        "quarantine_send_to_fleet_ack": {"via_leader": stats_json(&to_leader), "via_follower": stats_json(&to_follower)},
    });
    let md = format!(
        "# cluster-core ({date})\n\nBinary: `{}` ({})\n\n3 nodes on loopback, {cores} cores shared by nodes and client.\n\n\
         | measurement | n | min | median | p99 | max |\n|---|---|---|---|---|---|\n\
         | `joch dev up` to a leader | {} | {} ms | {} ms | {} ms | {} ms |\n\
         | quarantine send to fleet ack, via leader | {} | {} ms | {} ms | {} ms | {} ms |\n\
         | quarantine send to fleet ack, via follower | {} | {} ms | {} ms | {} ms | {} ms |\n",
        joch.display(),
        version.trim(),
        up.n, ms(up.min), ms(up.median), ms(up.p99), ms(up.max),
        to_leader.n, ms(to_leader.min), ms(to_leader.median), ms(to_leader.p99), ms(to_leader.max),
        to_follower.n, ms(to_follower.min), ms(to_follower.median), ms(to_follower.p99), ms(to_follower.max),
    );
    print!("{md}");
    let dir = out.unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results").join(day));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("cluster-core.json"), serde_json::to_vec_pretty(&result)?)?;
    std::fs::write(dir.join("cluster-core.md"), md)?;
    eprintln!("results written to {}", dir.display());
    Ok(())
}
