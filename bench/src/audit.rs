//! The audit trail's costs: what recording costs the request path (the push onto the writer's
//! queue, timed per record while the writer commits in groups), and how fast the fleet answers
//! with a million records per node (a 3-node cluster, each node's database filled while it is
//! stopped, then the CLI's queries timed end to end).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use joch_audit::{Audit, Options, Outcome, Record};
use serde_json::json;

use crate::common::{ms, run, stats, stats_json, write_results, Cluster};

fn record(i: u64, time_us: u64) -> Record {
    Record {
        time_us,
        node: 1,
        exec: format!("exec-20261203-{i:016x}"),
        trace: format!("{:032x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        agent: format!("agent-{}", (i / 7) % 200),
        subject: "token:0a1b2c3d".into(),
        server: format!("svc-{}", i % 50),
        http: "POST".into(),
        method: "tools/call".into(),
        target: format!("tool_{}", i % 20),
        args_digest: "3f2a9c1b0e4d5a6b".into(),
        decision: if i.is_multiple_of(17) { "deny".into() } else { "allow".into() },
        policy: if i.is_multiple_of(17) { "mcp-tool-safety".into() } else { String::new() },
        outcome: if i.is_multiple_of(17) { Outcome::Denied } else { Outcome::Result },
        status: 200,
        latency_us: 350,
        upstream_us: 120,
        bytes_in: 180,
        bytes_out: 420,
        ..Record::default()
    }
}

/// The request path's cost: `records` pushes at `rate` per second (0: as fast as possible),
/// each timed, while the writer commits.
pub fn write_cost(records: u64, rate: u64, out: Option<PathBuf>) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let audit = Audit::open(Options::new(dir.path().join("audit")))?;
    let mut h = Histogram::<u64>::new_with_bounds(1, 10_000_000, 3)?;
    let gap = 1_000_000_000u64.checked_div(rate).map(Duration::from_nanos).unwrap_or(Duration::ZERO);
    let started = Instant::now();
    let now = joch_audit::now_us();
    for i in 0..records {
        let r = record(i, now + i);
        let t = Instant::now();
        audit.record(r);
        h.record(t.elapsed().as_nanos().max(1) as u64)?;
        if !gap.is_zero() {
            let due = started + gap * (i as u32 + 1);
            while Instant::now() < due {
                std::hint::spin_loop();
            }
        }
    }
    let pushed = started.elapsed();
    audit.close();
    let all = started.elapsed();
    let st = audit.stats();
    let result = json!({
        "records": records, "rate": rate,
        "push_ns": {"p50": h.value_at_quantile(0.5), "p99": h.value_at_quantile(0.99), "p999": h.value_at_quantile(0.999), "max": h.max()},
        "written": st.written, "dropped": st.dropped,
        "push_seconds": pushed.as_secs_f64(), "until_written_seconds": all.as_secs_f64(),
        "written_per_second": st.written as f64 / all.as_secs_f64(),
    });
    let md = format!(
        "# audit write cost\n\n{records} records pushed ({}), the writer committing in groups (5 ms window, synced).\n\n\
         | push p50 | p99 | p99.9 | max | written | dropped | written/s |\n| --- | --- | --- | --- | --- | --- | --- |\n\
         | {} ns | {} ns | {} ns | {} ns | {} | {} | {:.0} |\n",
        if rate == 0 { "as fast as possible".to_string() } else { format!("{rate}/s") },
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max(),
        st.written,
        st.dropped,
        st.written as f64 / all.as_secs_f64()
    );
    println!("{md}");
    write_results(out, "audit-write", &result, &md)
}

/// Fills a stopped node's audit database with `n` records over the last 24 hours.
fn fill(db: &Path, node: u64, n: u64) -> anyhow::Result<()> {
    let store = joch_audit::Store::open(db)?;
    let now = joch_audit::now_us();
    let span = 24 * 3600 * 1_000_000u64;
    let first = now - span + 60_000_000;
    let step = (span - 120_000_000) / n;
    let mut batch = Vec::with_capacity(10_000);
    for i in 0..n {
        let mut r = record(i + node * 1_000_000_000, first + i * step);
        r.node = node;
        batch.push(r);
        if batch.len() == 10_000 {
            store.append(&mut batch, false)?;
            batch.clear();
        }
    }
    store.append(&mut batch, true)?;
    Ok(())
}

/// A 3-node cluster, `per_node` records on each, the queries timed `trials` times through the CLI.
pub async fn query(joch: PathBuf, per_node: u64, trials: usize, out: Option<PathBuf>) -> anyhow::Result<()> {
    let (mut cluster, _) = Cluster::up_with(&joch, 3, &["--no-demo"])?;
    let dir = cluster.dir.path().to_path_buf();
    run(&joch, &["dev", "down", "--dir", dir.to_str().unwrap_or_default()])?;
    let t = Instant::now();
    for node in 1..=3u64 {
        fill(&dir.join(format!("node{node}")).join("data").join("audit"), node, per_node)?;
    }
    let fill_s = t.elapsed().as_secs_f64();
    eprintln!("filled 3 x {per_node} records in {fill_s:.1} s");
    run(&joch, &["dev", "up", "--dir", dir.to_str().unwrap_or_default()])?;
    cluster.reload()?;
    let queries: [(&str, Vec<&str>); 4] = [
        (
            "agents that called svc-7 in the last 24 h",
            vec!["get", "toolcalls", "--mcpserver", "svc-7", "--since", "24h", "--by", "agent", "-o", "json"],
        ),
        (
            "newest 100 calls to svc-7 in the last 24 h",
            vec!["get", "toolcalls", "--mcpserver", "svc-7", "--since", "24h", "-o", "json"],
        ),
        (
            "newest 100 denials by mcp-tool-safety, 24 h",
            vec!["denials", "ls", "--policy", "mcp-tool-safety", "--since", "24h", "-o", "json"],
        ),
        ("one execution (joch trace)", vec!["trace", "exec-20261203-000000003b9aca07", "-o", "json"]),
    ];
    let mut rows = Vec::new();
    let mut md = format!(
        "# audit queries, 3 nodes x {per_node} records (24 h, 50 servers, 200 agents, 20 tools)\n\n\
         Wall time of the `joch` command (process start, TLS, fan-out to 3 nodes, merge, JSON), {trials} trials.\n\n\
         | query | p50 ms | max ms | answer |\n| --- | --- | --- | --- |\n"
    );
    for (name, args) in &queries {
        let mut times = Vec::new();
        let mut size = String::new();
        for _ in 0..trials {
            let t = Instant::now();
            let text = cluster.cli(args)?;
            times.push(t.elapsed());
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            size = match (v["groups"].as_array(), v["records"].as_array()) {
                (Some(g), _) => {
                    format!("{} agents, {} calls", g.len(), g.iter().filter_map(|x| x["calls"].as_u64()).sum::<u64>())
                }
                (_, Some(r)) => format!("{} records, unanswered {}", r.len(), v["unanswered"]),
                _ => text.chars().take(80).collect(),
            };
        }
        let s = stats(times);
        md.push_str(&format!("| {name} | {:.0} | {:.0} | {size} |\n", ms(s.median), ms(s.max)));
        rows.push(json!({"query": name, "args": args, "stats": stats_json(&s), "answer": size}));
    }
    println!("{md}");
    write_results(out, "audit-query", &json!({"per_node": per_node, "fill_seconds": fill_s, "queries": rows}), &md)
}
