//! The suite's markdown report: every figure beside direct and the nginx hop, the bars of the
//! benchmark issue checked, what they were measured with.

use serde_json::Value;

/// The reference rate latencies are compared at.
const REF_RPS: f64 = 1000.0;
/// Likewise, with the Python upstream.
const PY_REF_RPS: f64 = 100.0;

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn at(sweep: &Value, rps: f64) -> Option<&Value> {
    sweep["points"].as_array()?.iter().find(|p| (f(&p["offered_rps"]) - rps).abs() < 0.5)
}

fn r3(x: f64) -> String {
    if x.is_nan() {
        "-".into()
    } else {
        format!("{:.3}", x)
    }
}

/// The report.
pub fn markdown(r: &Value, extra: &[(&str, String)]) -> String {
    let mut md = format!(
        "# joch benchmark suite ({})\n\nBinary: `{}` ({}). Machine: {} cores, shared by the load generator, the gateways \
         and the upstream. Command: `cargo run --release -p joch-bench -- all`.\n\n",
        r["date"].as_str().unwrap_or("?"),
        r["joch"].as_str().unwrap_or("?"),
        r["joch_version"].as_str().unwrap_or("?"),
        r["machine"]["cores"],
    );
    let st = &r["settings"];
    md.push_str(&format!(
        "Open loop, {} keep-alive connections, `tools/call echo` with a {}-byte argument to a canned Rust upstream \
         (its own process); latency from each request's scheduled send time; {} s per rate after 1 s of warm-up; a rate \
         is sustained when p99 stays under {} ms and at least 95% of it is answered without errors.\n\n",
        st["connections"], st["payload"], st["step_s"], st["p99_bound_ms"]
    ));
    let sweeps = r["rates"].as_array().cloned().unwrap_or_default();
    md.push_str("## 1. Added latency and maximum sustained rate\n\n");
    for era in ["legacy", "modern"] {
        let mine: Vec<&Value> = sweeps.iter().filter(|s| s["era"] == era).collect();
        let by = |name: &str| mine.iter().find(|s| s["target"] == name).copied();
        let direct = by("direct");
        let d50 = direct.and_then(|d| at(d, REF_RPS)).map(|p| f(&p["p50_ms"])).unwrap_or(f64::NAN);
        let d99 = direct.and_then(|d| at(d, REF_RPS)).map(|p| f(&p["p99_ms"])).unwrap_or(f64::NAN);
        md.push_str(&format!(
            "### {era} era\n\n| path | max sustained rps | p50 at the reference rate | p99 | p99.9 | added p50 | added p99 | CPU s per 1,000 requests |\n|---|---|---|---|---|---|---|---|\n"
        ));
        for s in &mine {
            // The Python upstream is compared with itself, at a rate it sustains.
            let python = s["target"].as_str().is_some_and(|t| t.contains("Python"));
            let (rps, base) = if python { (PY_REF_RPS, by("direct (fastmcp, Python)")) } else { (REF_RPS, direct) };
            let b = |k: &str| base.and_then(|d| at(d, rps)).map(|p| f(&p[k])).unwrap_or(f64::NAN);
            let (d50, d99) = (b("p50_ms"), b("p99_ms"));
            let p = at(s, rps);
            let g = |k: &str| p.map(|p| f(&p[k])).unwrap_or(f64::NAN);
            let cpu = p.and_then(|p| p["cpu_s_per_1000"].as_f64()).map(r3).unwrap_or_else(|| "-".into());
            md.push_str(&format!(
                "| {} | {} | {} ms at {rps} rps | {} ms | {} ms | {} ms | {} ms | {cpu} |\n",
                s["target"].as_str().unwrap_or("?"),
                f(&s["max_sustained_rps"]),
                r3(g("p50_ms")),
                r3(g("p99_ms")),
                r3(g("p999_ms")),
                r3(g("p50_ms") - d50),
                r3(g("p99_ms") - d99),
            ));
        }
        for (label, j) in [("one joch node", by("joch, one node")), ("with governance on", by(crate::suite::GOVERNED))]
        {
            let (Some(n), Some(j)) = (by("nginx"), j) else { continue };
            let (np, jp) = (at(n, REF_RPS), at(j, REF_RPS));
            let added = |p: Option<&Value>, k: &str, d: f64| p.map(|p| f(&p[k]) - d).unwrap_or(f64::NAN);
            let (n50, j50) = (added(np, "p50_ms", d50), added(jp, "p50_ms", d50));
            let (n99, j99) = (added(np, "p99_ms", d99), added(jp, "p99_ms", d99));
            let (nmax, jmax) = (f(&n["max_sustained_rps"]), f(&j["max_sustained_rps"]));
            let check = |ok: bool| if ok { "met" } else { "**missed**" };
            md.push_str(&format!(
                "\nBars ({label} against the nginx hop, same run): added p50 {} ms vs {} ms ({}: no more than nginx's); \
                 added p99 {} ms vs {} ms, ratio {:.2} ({}: at most 1.5); max sustained rate {} vs {} rps, ratio {:.2} ({}: at least nginx's).\n\n",
                r3(j50), r3(n50), check(j50 <= n50), r3(j99), r3(n99), j99 / n99, check(j99 <= 1.5 * n99), jmax, nmax, jmax / nmax, check(jmax >= nmax),
            ));
        }
    }
    md.push_str("![latency against rate](latency-vs-rate.png)\n\n");

    md.push_str("## 2. stdio upstream\n\nSequential calls, legacy session:\n\n");
    for (k, v) in extra {
        md.push_str(&format!("- {k}: {v}\n"));
    }
    let prop = &r["propagation"];
    md.push_str(&format!(
        "\n## 3. Quarantine propagation\n\nFrom the quarantine's send (gRPC, to a follower) to its acknowledgement (every member applied it) and to the moment the last of the three nodes denied a call (each node probed continuously). Many servers: {} registered (registering them took {:.1} s).\n\n| condition | trials | ack p50 | ack p99 | denied everywhere p50 | p99 | max |\n|---|---|---|---|---|---|---|\n",
        prop["many_servers"], f(&prop["registering_them_s"])
    ));
    for (k, label) in [
        ("one_server_idle", "1 server, idle"),
        ("one_server_1500rps", "1 server, 1,500 rps of traffic"),
        ("many_servers_idle", "many servers, idle"),
        ("many_servers_1500rps", "many servers, 1,500 rps"),
    ] {
        let c = &prop[k];
        md.push_str(&format!(
            "| {label} | {} | {} ms | {} ms | {} ms | {} ms | {} ms |\n",
            c["trials"],
            c["ack"]["median_ms"],
            c["ack"]["p99_ms"],
            c["denied_on_every_node"]["median_ms"],
            c["denied_on_every_node"]["p99_ms"],
            c["denied_on_every_node"]["max_ms"]
        ));
    }
    md.push_str("\nBar: p99 from send to denied on every node under 10 ms in every condition.\n\n![propagation](propagation.png)\n\n");
    let w = &r["admin_writes"];
    md.push_str(&format!(
        "## 4. Admin writes (3 nodes, durable)\n\nSequential `mcp add` through a follower: p50 {} ms, p99 {} ms ({} writes). {} concurrent writers over the three nodes: {} writes per second.\n\n",
        w["sequential_latency"]["median_ms"], w["sequential_latency"]["p99_ms"], w["sequential_latency"]["n"], w["concurrent_writers"], w["throughput_per_s"]
    ));
    let m = &r["memory"];
    md.push_str(&format!(
        "## 5. Memory (node 1, RSS)\n\nIdle {:.1} MiB; with 1,000 servers {:.1} MiB; with 1,000 sessions {:.1} MiB; with {} open server streams {:.1} MiB ({} MiB per 1,000 streams). Bars: idle under 64 MB; under 1 GB with 10,000 open sessions.\n\n",
        f(&m["idle_mib"]), f(&m["with_1000_servers_mib"]), f(&m["with_1000_sessions_mib"]), m["open_streams"], f(&m["with_streams_mib"]), m["per_1000_streams_mib"]
    ));
    let c = &r["continuation"];
    md.push_str(&format!(
        "## 6. Continuing a session on another node\n\nSequential legacy calls of a session created on node 1: HTTP upstream on node 1 p50 {} ms / p99 {} ms, on node 2 p50 {} / p99 {} ms; stdio upstream (its child on node 1) on node 1 p50 {} / p99 {} ms, on node 2 (forwarded over the mesh) p50 {} / p99 {} ms.\n",
        c["http_same_node"]["median_ms"], c["http_same_node"]["p99_ms"], c["http_other_node"]["median_ms"], c["http_other_node"]["p99_ms"],
        c["stdio_owner_node"]["median_ms"], c["stdio_owner_node"]["p99_ms"], c["stdio_other_node_via_mesh"]["median_ms"], c["stdio_other_node_via_mesh"]["p99_ms"]
    ));
    md
}
