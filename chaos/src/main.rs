//! `joch-chaos`: starts a real joch cluster, runs a workload against it while a seeded nemesis
//! injects faults, then checks the history against the safety properties of DESIGN.md. Prints
//! one JSON line per violation and a summary; exits 1 on any violation. A run keeps its history,
//! its schedule and every node's log in `--out`/seed-N; `--seed N` replays the schedule.
//!
//! ```text
//! cargo run -p joch-chaos -- --joch target/debug/joch --duration 10m [--seed N]
//! ```

mod check;
mod cluster;
mod history;
mod nemesis;
mod net;
mod relay;
mod upstream;
mod workload;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use joch_proto::admin as pb;
use serde_json::{json, Value};

use crate::check::{Lin, Model};
use crate::cluster::Cluster;
use crate::history::{Clock, History, Op, RegOp, Srv};
use crate::nemesis::Nemesis;
use crate::workload::{Ctx, FIXED, TRANSIENT};

/// After every fault healed, a leader must exist and a write succeed within this bound.
const LIVENESS_BOUND: Duration = Duration::from_secs(30);

#[derive(Parser, Debug)]
#[command(name = "joch-chaos", about = "The joch chaos suite: faults from a seeded schedule, a workload, checkers")]
struct Args {
    /// The joch binary under test.
    #[arg(long, env = "JOCH_BIN")]
    joch: PathBuf,
    /// The schedule's seed (random when absent; printed either way).
    #[arg(long)]
    seed: Option<u64>,
    /// How long faults are injected.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Where each run keeps its history, schedule, results and node logs (a folder per seed).
    #[arg(long, default_value = "chaos-results")]
    out: PathBuf,
    /// The Python with the MCP SDK (the SDK client's traffic is left out without it).
    #[arg(long, env = "JOCH_PYTHON")]
    python: Option<PathBuf>,
    /// Keep the nodes' data directories of a run without violations too.
    #[arg(long)]
    keep_data: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let seed = args.seed.unwrap_or_else(rand::random);
    let dir = args.out.join(format!("seed-{seed}"));
    eprintln!(
        "chaos: seed {seed} (replay with --seed {seed}); {:?} of faults; results in {}",
        args.duration,
        dir.display()
    );
    let result = run(&args, seed, &dir).await;
    // Whatever happened, no partition outlives the run.
    net::clear_all();
    match result {
        Ok(0) => ExitCode::SUCCESS,
        Ok(n) => {
            eprintln!(
                "chaos: {n} violation(s) with seed {seed}: history, schedule and node logs kept in {}",
                dir.display()
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("chaos: the run could not be completed (seed {seed}): {e:#}; see {}", dir.display());
            ExitCode::from(2)
        }
    }
}

/// The SDK client, when the venv with the MCP SDK is there.
fn sdk(args: &Args) -> Option<(PathBuf, PathBuf)> {
    let python = args
        .python
        .clone()
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/joch-venv/bin/python")))?;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../node/tests/e2e/client.py");
    (python.exists() && script.exists()).then_some((python, script))
}

/// Retries `f` until it succeeds or `bound` passes; returns how long it took.
async fn within<F, Fut, T>(bound: Duration, mut f: F) -> Result<(Duration, T), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < bound {
        match f().await {
            Ok(v) => return Ok((start.elapsed(), v)),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last)
}

/// Liveness: time until a leader is known and a registry write succeeds through some node.
async fn liveness(c: &Cluster, n: &mut u64) -> Result<Duration, String> {
    *n += 1;
    let name = format!("live{n}");
    within(LIVENESS_BOUND, || {
        let name = name.clone();
        async move {
            let leader = c.leader().await.ok_or("no leader")?;
            let req = pb::AddServerRequest { name, endpoint: "http://127.0.0.1:9/mcp".into(), ..Default::default() };
            match c.registry(leader).add_server(c.req(req, Duration::from_secs(5))).await {
                Ok(_) => Ok(()),
                Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(()),
                Err(s) => Err(s.message().to_string()),
            }
        }
    })
    .await
    .map(|(d, _)| d)
}

async fn run(args: &Args, seed: u64, dir: &std::path::Path) -> anyhow::Result<usize> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    let dir = dir.canonicalize()?;
    anyhow::ensure!(net::available(), "iptables is not usable here (the partitions need root and iptables)");
    net::clear_all();
    let clock = Arc::new(Clock::new());
    let history = Arc::new(History::default());
    let joch = args.joch.canonicalize().map_err(|e| anyhow::anyhow!("--joch {}: {e}", args.joch.display()))?;
    let c = Arc::new(Cluster::create(&joch, &dir, 4)?);
    let relays = relay::start(&c.slots.iter().map(|s| (s.ports.relay, s.ports.mesh)).collect::<Vec<_>>()).await?;
    for id in 1..=3 {
        c.start(id)?;
    }
    c.init(&[1, 2, 3]).await?;
    within(Duration::from_secs(60), || async { c.leader().await.ok_or("no leader".to_string()) })
        .await
        .map_err(|e| anyhow::anyhow!("the cluster did not elect a leader: {e}"))?;
    let leader = c.leader().await.unwrap_or(1);
    let retention = pb::Retention { history_per_server: 1_000_000, ..Default::default() };
    c.registry(leader).set_retention(c.req(retention, Duration::from_secs(10))).await?;
    let mut agents = [String::new(), String::new()];
    for (i, a) in agents.iter_mut().enumerate() {
        let req = pb::CreateAgentRequest { name: format!("chaos-agent-{}", i + 1), ..Default::default() };
        let t = c.access(leader).create_agent(c.req(req, Duration::from_secs(10))).await?.into_inner();
        *a = format!("Bearer {}", t.token);
    }
    let up = upstream::start(clock.clone(), history.clone()).await?;
    let lb = upstream::balancer((1..=3).map(|id| c.slot(id).ports.mcp).collect()).await?;
    let ctx = Arc::new(Ctx::new(c.clone(), clock.clone(), history.clone(), agents, lb, up, sdk(args))?);
    for name in FIXED {
        let req = pb::AddServerRequest { name: name.into(), endpoint: ctx.endpoint(name), ..Default::default() };
        c.registry(leader).add_server(c.req(req, Duration::from_secs(10))).await?;
    }
    let plan = nemesis::schedule(seed, args.duration);
    std::fs::write(dir.join("schedule.json"), serde_json::to_string_pretty(&plan)?)?;
    eprintln!(
        "chaos: cluster of 3 up (leader {leader}), {} faults planned; SDK client {}; clock faults {}; disk faults {}",
        plan.len(),
        if ctx.sdk.is_some() { "on" } else { "off (no venv)" },
        c.clock_node.map(|n| format!("on node {n}")).unwrap_or("off (no libfaketime)".into()),
        c.disk_node.map(|n| format!("on node {n}")).unwrap_or("off (no tmpfs)".into()),
    );

    let mut tasks = Vec::new();
    for w in 0..5 {
        tasks.push(tokio::spawn(workload::registry_worker(ctx.clone(), w, seed)));
    }
    for a in 0..2 {
        tasks.push(tokio::spawn(workload::modern_traffic(ctx.clone(), a, seed)));
        tasks.push(tokio::spawn(workload::legacy_traffic(ctx.clone(), a, seed)));
    }
    tasks.push(tokio::spawn(workload::sdk_traffic(ctx.clone(), seed)));

    let nem = Arc::new(Nemesis::new(c.clone(), relays, clock.clone(), history.clone()));
    let started = Instant::now();
    let until = tokio::time::sleep(args.duration);
    tokio::pin!(until);
    tokio::select! {
        _ = nem.run(plan) => {}
        _ = &mut until => {}
    }
    let remaining = args.duration.saturating_sub(started.elapsed());
    tokio::time::sleep(remaining).await;

    let mut violations: Vec<Value> = Vec::new();
    let mut live_n = 0;
    let mut liveness_ms = Vec::new();
    nem.heal_all().await;
    match liveness(&c, &mut live_n).await {
        Ok(d) => liveness_ms.push(d.as_millis() as u64),
        Err(e) => violations.push(json!({"checker": "liveness", "after": "the faults healed", "bound_s": LIVENESS_BOUND.as_secs(), "last_error": e})),
    }
    // Traffic and writes go on a little on the healed cluster, then stop.
    tokio::time::sleep(Duration::from_secs(3)).await;
    ctx.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(70), t).await;
    }

    // Everything restarted: no acknowledged write may be lost.
    let members = nem.should_run();
    for id in c.ids() {
        c.kill(id);
    }
    history.fault(&clock, "start", "FinalRestart", format!("killed every node; starting {members:?}"));
    for id in &members {
        c.start(*id)?;
    }
    match liveness(&c, &mut live_n).await {
        Ok(d) => liveness_ms.push(d.as_millis() as u64),
        Err(e) => violations.push(json!({"checker": "liveness", "after": "every node restarted", "bound_s": LIVENESS_BOUND.as_secs(), "last_error": e})),
    }
    // Final linearizable reads of every server through every member, in the history.
    let keys: Vec<&str> = FIXED.iter().chain(TRANSIENT.iter()).copied().collect();
    for (i, key) in keys.iter().enumerate() {
        for id in &members {
            let record = workload::run_op(&ctx, (1 << 48) + (i as u64) * 16 + id, *id, key, Op::Read).await;
            if record.ret.is_none() {
                violations.push(json!({"checker": "final-read", "server": key, "node": id, "error": record.error}));
                continue;
            }
            history.reg.lock().push(record);
        }
    }
    let mut changes: HashMap<String, Vec<(u64, String)>> = HashMap::new();
    let leader = c.leader().await.unwrap_or(1);
    for key in &keys {
        match c.registry(leader).history(c.req(pb::HistoryRequest { target: key.to_string(), stale: false }, Duration::from_secs(10))).await {
            Ok(r) => {
                let lines = r.into_inner().changes.into_iter().filter_map(|ch| Some((ch.at?.index, ch.action))).collect();
                changes.insert(key.to_string(), lines);
            }
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => violations.push(json!({"checker": "lost-write", "server": key, "error": format!("history unreadable: {}", s.message())})),
        }
    }
    history.save(&dir)?;

    // The checkers.
    let checking = Instant::now();
    violations.extend(check::lost_writes(&history, &changes));
    violations.extend(check::quarantine_safety(&history));
    violations.extend(check::isolation(&history));
    let mut lin = Vec::new();
    let mut undecided = Vec::new();
    for key in &keys {
        let ops: Vec<RegOp> = history.reg.lock().iter().filter(|o| o.key == *key).cloned().collect();
        let init = Model(FIXED.contains(key).then(Srv::default));
        match check::linearizable(&ops, init, Duration::from_secs(120)) {
            Lin::Ok { ops } => lin.push(json!({"server": key, "ops": ops, "linearizable": true})),
            Lin::Violation { ops } => {
                violations.push(json!({"checker": "linearizability", "server": key, "ops": ops,
                    "what": "no order of this server's operations explains every answer (registry-ops.jsonl)"}));
                lin.push(json!({"server": key, "ops": ops, "linearizable": false}));
            }
            Lin::Undecided { ops } => {
                undecided.push(key.to_string());
                lin.push(json!({"server": key, "ops": ops, "linearizable": null}));
            }
        }
    }

    let reg = history.reg.lock().clone();
    let calls = history.calls.lock().clone();
    let faults = history.faults.lock().clone();
    let count = |f: &dyn Fn(&RegOp) -> bool| reg.iter().filter(|o| f(o)).count();
    let applied = nem.applied.lock().clone();
    let mut by_kind: HashMap<String, usize> = HashMap::new();
    for k in &applied {
        *by_kind.entry(format!("{k:?}")).or_default() += 1;
    }
    let by_era: HashMap<&str, usize> =
        ["modern", "legacy", "sdk"].iter().map(|e| (*e, calls.iter().filter(|c| c.era == *e).count())).collect();
    let summary = json!({
        "seed": seed,
        "duration_s": args.duration.as_secs(),
        "faults_applied": applied.len(),
        "faults_skipped": faults.iter().filter(|f| f.phase == "skip").count(),
        "faults_by_kind": by_kind,
        "registry_ops": reg.len(),
        "registry_acked_writes": count(&|o| o.acked()),
        "registry_reads_answered": count(&|o| o.op == Op::Read && o.ret.is_some()),
        "registry_unknown_outcomes": count(&|o| o.returned.is_none()),
        "registry_failed": count(&|o| o.returned.is_some() && o.ret.is_none()),
        "mcp_calls": calls.len(),
        "mcp_calls_answered": calls.iter().filter(|c| c.outcome == history::Outcome::Ok).count(),
        "mcp_calls_denied": calls.iter().filter(|c| matches!(c.outcome, history::Outcome::Denied { .. })).count(),
        "mcp_calls_by_era": by_era,
        "upstream_requests": history.received.lock().len(),
        "liveness_ms": liveness_ms,
        "liveness_bound_s": LIVENESS_BOUND.as_secs(),
        "linearizability": lin,
        "linearizability_undecided": undecided,
        "violations": violations.len(),
        "check_s": checking.elapsed().as_secs_f64(),
    });
    let mut v = String::new();
    for x in &violations {
        v.push_str(&x.to_string());
        v.push('\n');
        println!("{x}");
    }
    std::fs::write(dir.join("violations.jsonl"), v)?;
    std::fs::write(dir.join("summary.json"), serde_json::to_string_pretty(&summary)?)?;
    println!("{summary}");

    for id in c.ids() {
        c.kill(id);
    }
    c.unmount();
    if violations.is_empty() && !args.keep_data {
        for s in &c.slots {
            let _ = std::fs::remove_dir_all(s.dir.join("data"));
        }
    }
    Ok(violations.len())
}
