//! What every benchmark shares: the binary measured, running the CLI, a dev cluster (its admin
//! channel, tokens and CA), percentile summaries, and where results are written.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

/// `--joch`, else the `joch` built beside this benchmark (same profile). Not `$JOCH_BIN`:
/// `scripts/env.sh` points that at the debug build, which must not be measured by mistake.
pub fn joch_bin(arg: Option<PathBuf>) -> PathBuf {
    arg.unwrap_or_else(|| {
        build_joch_beside();
        std::env::current_exe()
            .ok()
            .and_then(|p| Some(p.parent()?.join("joch")))
            .unwrap_or_else(|| PathBuf::from("joch"))
    })
}

/// Under `cargo run`, builds the `joch` binary of the same profile first (cargo builds only the
/// benchmark itself), so `cargo run --release -p joch-bench -- all` measures the current code.
fn build_joch_beside() {
    let Some(cargo) = std::env::var_os("CARGO") else { return };
    let release = std::env::current_exe().ok().is_some_and(|p| p.parent().is_some_and(|d| d.ends_with("release")));
    let mut c = Command::new(cargo);
    c.args(["build", "-p", "joch-node", "--bin", "joch"]);
    if release {
        c.arg("--release");
    }
    eprintln!("bench: building joch ({})", if release { "release" } else { "debug" });
    match c.status() {
        Ok(s) if s.success() => {}
        other => eprintln!("bench: building joch failed ({other:?}); measuring the binary that is there"),
    }
}

pub fn run(joch: &Path, args: &[&str]) -> anyhow::Result<String> {
    run_env(joch, args, &[])
}

pub fn run_env(joch: &Path, args: &[&str], env: &[(&str, String)]) -> anyhow::Result<String> {
    let out = Command::new(joch)
        .args(args)
        .env_remove("JOCH_SERVER")
        .env_remove("JOCH_TOKEN")
        .env_remove("JOCH_CA")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .with_context(|| format!("running {}", joch.display()))?;
    if !out.status.success() {
        bail!("joch {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub struct Stats {
    pub n: usize,
    pub median: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub min: Duration,
}

pub fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    let q = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    Stats { n: v.len(), median: q(0.5), p99: q(0.99), max: *v.last().unwrap(), min: v[0] }
}

pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

pub fn stats_json(s: &Stats) -> serde_json::Value {
    json!({"n": s.n, "min_ms": ms(s.min), "median_ms": ms(s.median), "p99_ms": ms(s.p99), "max_ms": ms(s.max)})
}

pub struct Cluster {
    pub joch: PathBuf,
    pub dir: tempfile::TempDir,
    pub nodes: Vec<serde_json::Value>,
    /// `cluster.json`'s admin token, CA and agent token (absent with binaries older than
    /// authentication, which serve plaintext without tokens).
    pub admin_token: Option<String>,
    pub ca: Option<String>,
    pub agent_token: Option<String>,
}

impl Cluster {
    pub fn up(joch: &Path) -> anyhow::Result<(Cluster, Duration)> {
        Cluster::up_with(joch, 3, &[])
    }

    /// `joch dev up --nodes N` with extra flags; how long it took.
    pub fn up_with(joch: &Path, nodes: usize, extra: &[&str]) -> anyhow::Result<(Cluster, Duration)> {
        let dir = tempfile::TempDir::new()?;
        let t = Instant::now();
        let n = nodes.to_string();
        let mut args = vec!["dev", "up", "--nodes", &n, "--dir", dir.path().to_str().unwrap()];
        args.extend_from_slice(extra);
        run(joch, &args)?;
        let took = t.elapsed();
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("cluster.json"))?)?;
        let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
        let text = |k: &str| v[k].as_str().map(str::to_string);
        let (admin_token, ca, agent_token) = (text("admin_token"), text("ca"), text("agent_token"));
        Ok((Cluster { joch: joch.to_path_buf(), dir, nodes, admin_token, ca, agent_token }, took))
    }

    /// Re-reads `cluster.json` (after `joch dev up --dir` restarted the nodes).
    pub fn reload(&mut self) -> anyhow::Result<()> {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(self.dir.path().join("cluster.json"))?)?;
        self.nodes = v["nodes"].as_array().cloned().unwrap_or_default();
        Ok(())
    }

    /// A channel to node `id`'s admin API (TLS verified with the cluster CA when it serves it).
    pub async fn channel(&self, id: u64) -> anyhow::Result<Channel> {
        let url = self.admin(id);
        let mut endpoint = Channel::from_shared(url.clone())?;
        if let Some(ca) = &self.ca {
            let pem = std::fs::read(ca)?;
            endpoint = endpoint.tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))?;
        }
        endpoint.connect().await.with_context(|| format!("connecting to {url}"))
    }

    /// A gRPC request carrying the admin token, if any.
    pub fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Some(v) = self.admin_token.as_ref().and_then(|t| format!("Bearer {t}").parse().ok()) {
            r.metadata_mut().insert("authorization", v);
        }
        r
    }

    /// The environment that makes the CLI an admin of this cluster.
    pub fn admin_env(&self) -> Vec<(&'static str, String)> {
        let mut env = Vec::new();
        if let Some(t) = &self.admin_token {
            env.push(("JOCH_TOKEN", t.clone()));
        }
        if let Some(ca) = &self.ca {
            env.push(("JOCH_CA", ca.clone()));
        }
        env
    }

    /// Node `id`'s MCP base URL.
    pub fn mcp(&self, id: u64) -> String {
        self.nodes.iter().find(|n| n["id"] == id).and_then(|n| n["mcp_url"].as_str()).unwrap_or_default().to_string()
    }

    /// Node `id`'s process.
    pub fn pid(&self, id: u64) -> u32 {
        self.nodes.iter().find(|n| n["id"] == id).and_then(|n| n["pid"].as_u64()).unwrap_or_default() as u32
    }

    /// Every node's process.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes.iter().filter_map(|n| n["pid"].as_u64()).map(|p| p as u32).collect()
    }

    /// The agent's `Authorization` value, if the build authenticates agents.
    pub fn bearer(&self) -> Option<String> {
        self.agent_token.as_ref().map(|t| format!("Bearer {t}"))
    }

    /// Runs the CLI against node 1 as an admin of this cluster.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let admin = self.admin(1);
        let mut all = vec!["--server", admin.as_str()];
        all.extend_from_slice(args);
        run_env(&self.joch, &all, &self.admin_env())
    }

    pub fn admin(&self, id: u64) -> String {
        self.nodes.iter().find(|n| n["id"] == id).and_then(|n| n["admin_url"].as_str()).unwrap_or_default().to_string()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = run(&self.joch, &["dev", "down", "--dir", self.dir.path().to_str().unwrap()]);
    }
}

pub fn write_results(out: Option<PathBuf>, name: &str, result: &serde_json::Value, md: &str) -> anyhow::Result<()> {
    let date = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let dir = out.unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results").join(&date[..10]));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(format!("{name}.json")), serde_json::to_vec_pretty(result)?)?;
    std::fs::write(dir.join(format!("{name}.md")), md)?;
    eprintln!("results written to {}", dir.display());
    Ok(())
}
