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

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod canned;

use anyhow::{bail, Context};
use clap::Parser;
use joch_proto::admin::cluster_client::ClusterClient;
use joch_proto::admin::registry_client::RegistryClient;
use joch_proto::admin::{AddServerRequest, Empty, NameRequest, QuarantineRequest};
use serde_json::json;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

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

/// `--joch`, else the `joch` built beside this benchmark (same profile). Not `$JOCH_BIN`:
/// `scripts/env.sh` points that at the debug build, which must not be measured by mistake.
fn joch_bin(arg: Option<PathBuf>) -> PathBuf {
    arg.unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| Some(p.parent()?.join("joch")))
            .unwrap_or_else(|| PathBuf::from("joch"))
    })
}

fn run(joch: &Path, args: &[&str]) -> anyhow::Result<String> {
    run_env(joch, args, &[])
}

fn run_env(joch: &Path, args: &[&str], env: &[(&str, String)]) -> anyhow::Result<String> {
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
    /// `cluster.json`'s admin token, CA and agent token (absent with binaries older than
    /// authentication, which serve plaintext without tokens).
    admin_token: Option<String>,
    ca: Option<String>,
    agent_token: Option<String>,
}

impl Cluster {
    fn up(joch: &Path) -> anyhow::Result<(Cluster, Duration)> {
        let dir = tempfile::TempDir::new()?;
        let t = Instant::now();
        run(joch, &["dev", "up", "--nodes", "3", "--dir", dir.path().to_str().unwrap()])?;
        let took = t.elapsed();
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("cluster.json"))?)?;
        let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
        let text = |k: &str| v[k].as_str().map(str::to_string);
        let (admin_token, ca, agent_token) = (text("admin_token"), text("ca"), text("agent_token"));
        Ok((Cluster { joch: joch.to_path_buf(), dir, nodes, admin_token, ca, agent_token }, took))
    }

    /// A channel to node `id`'s admin API (TLS verified with the cluster CA when it serves it).
    async fn channel(&self, id: u64) -> anyhow::Result<Channel> {
        let url = self.admin(id);
        let mut endpoint = Channel::from_shared(url.clone())?;
        if let Some(ca) = &self.ca {
            let pem = std::fs::read(ca)?;
            endpoint = endpoint.tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))?;
        }
        endpoint.connect().await.with_context(|| format!("connecting to {url}"))
    }

    /// A gRPC request carrying the admin token, if any.
    fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Some(v) = self.admin_token.as_ref().and_then(|t| format!("Bearer {t}").parse().ok()) {
            r.metadata_mut().insert("authorization", v);
        }
        r
    }

    /// The environment that makes the CLI an admin of this cluster.
    fn admin_env(&self) -> Vec<(&'static str, String)> {
        let mut env = Vec::new();
        if let Some(t) = &self.admin_token {
            env.push(("JOCH_TOKEN", t.clone()));
        }
        if let Some(ca) = &self.ca {
            env.push(("JOCH_CA", ca.clone()));
        }
        env
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
    let mut reg = RegistryClient::new(c.channel(target).await?);
    let name = format!("bench-{target}");
    reg.add_server(c.req(AddServerRequest {
        name: name.clone(),
        endpoint: "http://127.0.0.1:9/mcp".into(),
        ..Default::default()
    }))
    .await?;
    let mut out = Vec::with_capacity(trials);
    for i in 0..trials {
        // Quarantine (measured), then lift it (not measured), so every trial changes state.
        let t = Instant::now();
        let r = reg
            .quarantine(c.req(QuarantineRequest { name: name.clone(), reason: format!("bench {i}") }))
            .await?
            .into_inner();
        let took = t.elapsed();
        let fleet = r.fleet.unwrap_or_default();
        if !r.changed || !fleet.complete || fleet.members.len() != 3 {
            bail!("trial {i}: quarantine not acknowledged by all three members: {fleet:?}");
        }
        out.push(took);
        reg.unquarantine(c.req(NameRequest { name: name.clone() })).await?;
    }
    Ok(out)
}

/// A caller of one era over HTTP, for measuring: a legacy session, or modern stateless calls.
struct Caller {
    http: reqwest::Client,
    /// The legacy session id; `None`: the modern era.
    sid: Option<String>,
    /// The agent's token, sent as `Authorization: Bearer` (to joch; not to the upstream).
    bearer: Option<String>,
}

impl Caller {
    async fn open(http: &reqwest::Client, url: &str, modern: bool, token: Option<&str>) -> anyhow::Result<Caller> {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let mut c = Caller { http: http.clone(), sid: None, bearer };
        if modern {
            return Ok(c);
        }
        let init = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25",
            "capabilities":{},"clientInfo":{"name":"joch-bench","version":"1"}}});
        let r = c.post(url).body(init.to_string()).send().await?;
        if !r.status().is_success() {
            bail!("initialize at {url}: {} {}", r.status(), r.text().await.unwrap_or_default());
        }
        let sid = r.headers().get("mcp-session-id").context("no session id")?.to_str()?.to_string();
        r.bytes().await?;
        c.sid = Some(sid);
        Ok(c)
    }

    fn post(&self, url: &str) -> reqwest::RequestBuilder {
        let mut req = self
            .http
            .post(url)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json");
        if let Some(b) = &self.bearer {
            req = req.header("authorization", b);
        }
        req
    }

    /// One tools/call on `url` (another node may serve the same session).
    async fn call(&self, url: &str, id: usize) -> anyhow::Result<Duration> {
        let mut params = json!({"name":"echo","arguments":{"text":"hello"}});
        let mut req = self.post(url);
        match &self.sid {
            Some(sid) => {
                req = req.header("mcp-protocol-version", "2025-11-25").header("mcp-session-id", sid);
            }
            None => {
                params["_meta"] = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                    "io.modelcontextprotocol/clientCapabilities": {},
                    "io.modelcontextprotocol/clientInfo": {"name": "joch-bench", "version": "1"}});
                req = req
                    .header("mcp-protocol-version", "2026-07-28")
                    .header("mcp-method", "tools/call")
                    .header("mcp-name", "echo");
            }
        }
        let body = json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":params});
        let t = Instant::now();
        let r = req.body(body.to_string()).send().await?;
        let status = r.status();
        let bytes = r.bytes().await?;
        let took = t.elapsed();
        if !status.is_success() || !bytes.windows(4).any(|w| w == b"\"ok\"") {
            bail!("call {id} at {url}: {status} {}", String::from_utf8_lossy(&bytes));
        }
        Ok(took)
    }
}

async fn measure(s: &Caller, urls: &[String], warmup: usize, n: usize) -> anyhow::Result<Vec<Duration>> {
    for i in 0..warmup {
        s.call(&urls[i % urls.len()], i).await?;
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(s.call(&urls[i % urls.len()], i).await?);
    }
    Ok(out)
}

/// One era's three paths.
struct EraRun {
    name: &'static str,
    direct: Stats,
    one: Stats,
    rr: Stats,
}

async fn proxy_latency(
    joch: PathBuf,
    requests: usize,
    warmup: usize,
    era: EraArg,
    out: Option<PathBuf>,
) -> anyhow::Result<()> {
    let version = run(&joch, &["--version"])?;
    let upstream = canned::start().await?;
    let upstream_url = format!("http://{upstream}/mcp");
    let (c, _) = Cluster::up(&joch)?;
    run_env(&joch, &["--server", &c.admin(1), "mcp", "add", "canned", "--endpoint", &upstream_url], &c.admin_env())?;
    let mcp = |id: u64| {
        c.nodes.iter().find(|n| n["id"] == id).and_then(|n| n["mcp_url"].as_str()).unwrap_or_default().to_string()
    };
    let via: Vec<String> = (1..=3).map(|id| format!("{}/mcp/canned", mcp(id))).collect();
    let http = reqwest::Client::builder().tcp_nodelay(true).pool_max_idle_per_host(8).build()?;
    let eras: &[(&'static str, bool)] = match era {
        EraArg::Legacy => &[("legacy (2025-11-25, session)", false)],
        EraArg::Modern => &[("modern (2026-07-28, stateless)", true)],
        EraArg::Both => &[("legacy (2025-11-25, session)", false), ("modern (2026-07-28, stateless)", true)],
    };
    let mut runs = Vec::new();
    for (name, modern) in eras {
        let direct = Caller::open(&http, &upstream_url, *modern, None).await?;
        let proxied = Caller::open(&http, &via[0], *modern, c.agent_token.as_deref()).await?;
        let d = stats(measure(&direct, std::slice::from_ref(&upstream_url), warmup, requests).await?);
        let one = stats(measure(&proxied, &via[..1], warmup, requests).await?);
        let rr = stats(measure(&proxied, &via, warmup, requests).await?);
        runs.push(EraRun { name, direct: d, one, rr });
    }
    let added = |s: &Stats, d: &Stats| json!({"p50_ms": ms(s.median.saturating_sub(d.median)), "p99_ms": ms(s.p99.saturating_sub(d.p99))});
    let date = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let result = json!({
        "benchmark": "proxy-latency", "date": date, "joch": joch.display().to_string(), "joch_version": version.trim(),
        "machine": {"cores": cores}, "requests": requests, "warmup": warmup,
        "eras": runs.iter().map(|r| json!({"era": r.name,
            "direct": stats_json(&r.direct), "via_one_node": stats_json(&r.one),
            "via_three_nodes_round_robin": stats_json(&r.rr),
            "added_one_node": added(&r.one, &r.direct), "added_three_nodes": added(&r.rr, &r.direct)})).collect::<Vec<_>>(),
    });
    let row = |name: &str, s: &Stats| {
        format!("| {name} | {} | {} ms | {} ms | {} ms | {} ms |\n", s.n, ms(s.min), ms(s.median), ms(s.p99), ms(s.max))
    };
    let mut md = format!(
        "# proxy-latency ({date})\n\nBinary: `{}` ({})\n\nSequential `tools/call` on one keep-alive connection per \
         path, to a canned Rust MCP server (JSON answers); 3-node cluster on loopback; {cores} cores shared by client, \
         nodes and upstream.\n",
        joch.display(),
        version.trim(),
    );
    for r in &runs {
        let (d, one, rr) = (&r.direct, &r.one, &r.rr);
        md.push_str(&format!(
            "\n## {}\n\n| path | n | min | median | p99 | max |\n|---|---|---|---|---|---|\n{}{}{}\n\
             Added by joch (percentile differences): one node p50 {} ms, p99 {} ms; round-robin over three nodes \
             p50 {} ms, p99 {} ms.\n",
            r.name,
            row("direct", d),
            row("through node 1", one),
            row("round-robin over 3 nodes", rr),
            ms(one.median.saturating_sub(d.median)),
            ms(one.p99.saturating_sub(d.p99)),
            ms(rr.median.saturating_sub(d.median)),
            ms(rr.p99.saturating_sub(d.p99)),
        ));
    }
    print!("{md}");
    write_results(out, "proxy-latency", &result, &md)
}

fn write_results(out: Option<PathBuf>, name: &str, result: &serde_json::Value, md: &str) -> anyhow::Result<()> {
    let date = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let dir = out.unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results").join(&date[..10]));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(format!("{name}.json")), serde_json::to_vec_pretty(result)?)?;
    std::fs::write(dir.join(format!("{name}.md")), md)?;
    eprintln!("results written to {}", dir.display());
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (joch, trials, up_trials, out) = match Args::parse().cmd {
        Cmd::ProxyLatency { joch, requests, warmup, era, out } => {
            return proxy_latency(joch_bin(joch), requests, warmup, era, out).await
        }
        Cmd::ClusterCore { joch, trials, up_trials, out } => (joch, trials, up_trials, out),
    };
    let joch = joch_bin(joch);
    let version = run(&joch, &["--version"])?;
    let mut ups = Vec::new();
    for _ in 0..up_trials {
        let (_c, took) = Cluster::up(&joch)?;
        ups.push(took);
    }
    let (c, _) = Cluster::up(&joch)?;
    let status = ClusterClient::new(c.channel(1).await?).status(c.req(Empty {})).await?.into_inner();
    let leader = status.leader;
    let follower = status.members.iter().map(|m| m.id).find(|id| *id != leader).context("a follower")?;
    let to_leader = stats(quarantine_trials(&c, leader, trials).await?);
    let to_follower = stats(quarantine_trials(&c, follower, trials).await?);
    let up = stats(ups);

    let date = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
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
    write_results(out, "cluster-core", &result, &md)
}
