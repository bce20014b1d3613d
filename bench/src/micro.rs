//! The sequential micro-benchmarks: `proxy-latency` (one call at a time through joch against
//! the same call direct) and `cluster-core` (`joch dev up`, quarantine to fleet acknowledgement).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use joch_proto::admin::cluster_client::ClusterClient;
use joch_proto::admin::registry_client::RegistryClient;
use joch_proto::admin::{AddServerRequest, Empty, NameRequest, QuarantineRequest};
use serde_json::json;

use crate::canned;
use crate::common::{joch_bin, ms, run, run_env, stats, stats_json, write_results, Cluster, Stats};
use crate::EraArg;

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
    /// What `echo` is asked to say (the result's text).
    text: std::sync::Arc<str>,
}

impl Caller {
    async fn open(
        http: &reqwest::Client,
        url: &str,
        modern: bool,
        token: Option<&str>,
        text: &std::sync::Arc<str>,
    ) -> anyhow::Result<Caller> {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let mut c = Caller { http: http.clone(), sid: None, bearer, text: text.clone() };
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
        let mut params = json!({"name":"echo","arguments":{"text": &*self.text}});
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
        if !status.is_success() || !bytes.windows(8).any(|w| w == b"\"result\"") {
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
    /// Node 1's CPU time (user + system, from `/proc`) per call through it alone, µs: steadier
    /// on a shared VM than latency, which moves with the neighbours.
    cpu_us: f64,
}

/// What `proxy-latency` measures (its command line).
pub struct LatencyRun {
    pub joch: PathBuf,
    pub requests: usize,
    pub warmup: usize,
    pub era: EraArg,
    pub policy_rules: usize,
    pub guardian: bool,
    pub guard: bool,
    pub result_bytes: usize,
    pub out: Option<PathBuf>,
}

pub async fn proxy_latency(run_args: LatencyRun) -> anyhow::Result<()> {
    let LatencyRun { joch, requests, warmup, era, policy_rules, guardian, guard, result_bytes, out } = run_args;
    let text: std::sync::Arc<str> =
        if result_bytes == 0 { "hello".into() } else { joch_guard::samples::benign(result_bytes).into() };
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
    let measure_eras = || async {
        let mut runs = Vec::new();
        for (name, modern) in eras {
            let direct = Caller::open(&http, &upstream_url, *modern, None, &text).await?;
            let proxied = Caller::open(&http, &via[0], *modern, c.agent_token.as_deref(), &text).await?;
            let d = stats(measure(&direct, std::slice::from_ref(&upstream_url), warmup, requests).await?);
            let cpu_before = crate::procs::cpu_seconds(c.pid(1));
            let one = stats(measure(&proxied, &via[..1], warmup, requests).await?);
            let cpu_us = (crate::procs::cpu_seconds(c.pid(1)) - cpu_before) * 1e6 / (warmup + requests).max(1) as f64;
            let rr = stats(measure(&proxied, &via, warmup, requests).await?);
            runs.push(EraRun { name, direct: d, one, rr, cpu_us });
        }
        anyhow::Ok(runs)
    };
    // With policies or a guardian: the same cluster measured without them first (an A/B on one
    // cluster: clusters started apart differ more than what is measured costs).
    let mut baseline = None;
    let mut change = String::new();
    if policy_rules > 0 {
        change.push_str(&crate::policy::manifests(policy_rules));
    }
    if guardian || guard {
        let mut spec = format!("  endpoint: {{ url: \"{upstream_url}\" }}\n");
        if guardian {
            let hook = canned::guardian().await?;
            spec.push_str(&format!("  guardian: {{ name: bench, endpoint: \"http://{hook}/acs\" }}\n"));
        }
        if guard {
            spec.push_str("  scanning: { promptInjectionScan: true, redactFieldsInResults: [secrets, pii] }\n");
        }
        change.push_str(&format!(
            "\n---\napiVersion: joch.dev/v1alpha1\nkind: MCPServer\nmetadata:\n  name: canned\nspec:\n{spec}"
        ));
    }
    if !change.is_empty() {
        baseline = Some(measure_eras().await?);
        let f = tempfile::NamedTempFile::new()?;
        std::fs::write(f.path(), change)?;
        let path = f.path().display().to_string();
        run_env(&joch, &["--server", &c.admin(1), "apply", "-f", &path], &c.admin_env())?;
    }
    let runs = measure_eras().await?;
    let added = |s: &Stats, d: &Stats| json!({"p50_ms": ms(s.median.saturating_sub(d.median)), "p99_ms": ms(s.p99.saturating_sub(d.p99))});
    let eras_json = |runs: &[EraRun]| {
        runs.iter()
            .map(|r| {
                json!({"era": r.name,
                "direct": stats_json(&r.direct), "via_one_node": stats_json(&r.one),
                "via_three_nodes_round_robin": stats_json(&r.rr),
                "added_one_node": added(&r.one, &r.direct), "added_three_nodes": added(&r.rr, &r.direct),
                "node1_cpu_us_per_call": r.cpu_us})
            })
            .collect::<Vec<_>>()
    };
    let date = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let result = json!({
        "benchmark": "proxy-latency", "date": date, "joch": joch.display().to_string(), "joch_version": version.trim(),
        "machine": {"cores": cores}, "requests": requests, "warmup": warmup, "policy_rules": policy_rules, "guardian": guardian, "guard": guard, "result_bytes": result_bytes,
        "eras": eras_json(&runs),
        "without_policies_same_cluster": baseline.as_deref().map(eras_json),
    });
    let row = |name: &str, s: &Stats| {
        format!("| {name} | {} | {} ms | {} ms | {} ms | {} ms |\n", s.n, ms(s.min), ms(s.median), ms(s.p99), ms(s.max))
    };
    let mut md = format!(
        "# proxy-latency ({date})\n\nBinary: `{}` ({})\n\nSequential `tools/call` on one keep-alive connection per \
         path, to a canned Rust MCP server (JSON answers); 3-node cluster on loopback; {cores} cores shared by client, \
         nodes and upstream. Policy rules loaded: {policy_rules}. Guardian (all four hooks, in the bench process): {guardian}. \
         Content guard (injection scan, secrets and PII redaction): {guard}. Result text: {result_bytes} bytes.\n",
        joch.display(),
        version.trim(),
    );
    for r in &runs {
        let (d, one, rr) = (&r.direct, &r.one, &r.rr);
        md.push_str(&format!(
            "\n## {}\n\n| path | n | min | median | p99 | max |\n|---|---|---|---|---|---|\n{}{}{}\n\
             Added by joch (percentile differences): one node p50 {} ms, p99 {} ms; round-robin over three nodes \
             p50 {} ms, p99 {} ms. Node 1's CPU per call through it: {:.0} µs.\n",
            r.name,
            row("direct", d),
            row("through node 1", one),
            row("round-robin over 3 nodes", rr),
            ms(one.median.saturating_sub(d.median)),
            ms(one.p99.saturating_sub(d.p99)),
            ms(rr.median.saturating_sub(d.median)),
            ms(rr.p99.saturating_sub(d.p99)),
            r.cpu_us,
        ));
    }
    if let Some(b) = &baseline {
        md.push_str("\n## The same cluster before the policies, the guardian or the guard were applied\n\n");
        for r in b {
            md.push_str(&format!(
                "{}: added one node p50 {} ms, p99 {} ms; round-robin p50 {} ms, p99 {} ms; node 1's CPU per call {:.0} µs.\n",
                r.name,
                ms(r.one.median.saturating_sub(r.direct.median)),
                ms(r.one.p99.saturating_sub(r.direct.p99)),
                ms(r.rr.median.saturating_sub(r.direct.median)),
                ms(r.rr.p99.saturating_sub(r.direct.p99)),
                r.cpu_us,
            ));
        }
    }
    print!("{md}");
    write_results(out, "proxy-latency", &result, &md)
}

pub async fn cluster_core(
    joch: Option<PathBuf>,
    trials: usize,
    up_trials: usize,
    out: Option<PathBuf>,
) -> anyhow::Result<()> {
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
