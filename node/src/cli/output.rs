//! Rendering: tables for people, JSON and YAML for programs; resources in the manifest shape.

/// `println!` that ignores a closed stdout (`joch mcp ls | head` must not panic).
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// `print!` that ignores a closed stdout.
macro_rules! say_raw {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($t)*);
    }};
}

use std::time::{Duration, UNIX_EPOCH};

use joch_proto::admin as pb;
use serde_json::{json, Value};

use super::Format;

/// An error and its causes, on one line.
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ")
}

/// RFC 3339 time of a Unix-ms timestamp.
pub fn time(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// A Unix-ms instant as a time of day, rounded up to the second: `12:04:07 UTC`.
pub fn clock(ms: u64) -> String {
    let secs = ms.div_ceil(1000);
    let t = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string();
    match t.split_once('T') {
        Some((_, rest)) => format!("{} UTC", rest.trim_end_matches('Z')),
        None => t,
    }
}

/// Prints a table with a header row.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let n = cells.len();
        let s: Vec<String> = cells
            .into_iter()
            .enumerate()
            .map(|(i, c)| if i + 1 == n { c } else { format!("{c:<w$}", w = widths[i]) })
            .collect();
        say!("{}", s.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}

/// Prints a value as JSON or YAML.
pub fn data(format: Format, v: &Value) {
    match format {
        Format::Yaml => say_raw!("{}", serde_yaml_ng::to_string(v).unwrap_or_default()),
        _ => say!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
    }
}

/// Removes nulls, recursively (for readable output; absent and null mean the same in manifests).
pub fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            Value::Object(m.into_iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k, strip_nulls(v))).collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(strip_nulls).collect()),
        other => other,
    }
}

fn stamp(s: &Option<pb::Stamp>) -> Value {
    match s {
        Some(s) => json!({"by": s.actor, "at": time(s.at_ms), "logIndex": s.index}),
        None => Value::Null,
    }
}

/// An MCP server in the manifest shape (re-appliable with `joch apply`), with its status.
pub fn server_resource(s: &pb::Server) -> Value {
    let spec: Value = serde_json::from_str(&s.spec_json).unwrap_or(Value::Null);
    let mut status = json!({
        "phase": s.phase,
        "readOnly": s.read_only,
        "approvedTools": s.approved_tools.iter().map(|t| format!("{}.{}", s.name, t)).collect::<Vec<_>>(),
        "generation": s.generation,
        "created": stamp(&s.created),
        "updated": stamp(&s.updated),
    });
    if s.quarantined {
        status["quarantine"] = json!({"reason": s.quarantine_reason, "since": stamp(&s.quarantined_at)});
    }
    if !s.pending_upgrade.is_empty() {
        status["pendingUpgrade"] = json!(s.pending_upgrade);
    }
    if let Ok(d) = serde_json::from_str::<Value>(&s.discovery_json) {
        // Seed 002's status fields, from the last discovery.
        let tools: Vec<String> = d["discovery"]["tools"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["name"].as_str())
            .map(|t| format!("{}.{t}", s.name))
            .collect();
        let mut resources: Vec<Value> = d["discovery"]["resources"].as_array().cloned().unwrap_or_default();
        resources.extend(d["discovery"]["resource_templates"].as_array().cloned().unwrap_or_default());
        status["discoveredTools"] = json!(tools);
        status["discoveredResources"] = json!(resources);
        status["discoveredPrompts"] = d["discovery"]["prompts"].clone();
        status["lastDiscoveryAt"] = json!(time(d["discovery"]["at_ms"].as_u64().unwrap_or_default()));
        status["lastDiscoveryBy"] = json!(format!("node {}", d["discovery"]["node"]));
        status["schemaDrift"] = json!(d["drift"].as_array().is_some_and(|a| !a.is_empty()));
        if spec["security"]["toolApproval"] == "manual" {
            // Discovered and not approved: hidden and denied until joch mcp approve-tool.
            let pending: Vec<&String> =
                tools.iter().filter(|t| !s.approved_tools.iter().any(|a| **t == format!("{}.{a}", s.name))).collect();
            status["pendingTools"] = json!(pending);
        }
    }
    if let Ok(t) = serde_json::from_str::<Value>(&s.trust_json) {
        // Seed 002's trustScore (`joch mcp trust NAME` shows its components).
        status["trustScore"] = t["score"].clone();
    }
    if let (Some(calls), Some(denied)) = (s.call_count_7d, s.deny_count_7d) {
        status["callCount7d"] = json!(calls);
        status["denyCount7d"] = json!(denied);
    }
    let labels: std::collections::BTreeMap<_, _> = s.labels.iter().collect();
    strip_nulls(json!({
        "apiVersion": "joch.dev/v1alpha1",
        "kind": "MCPServer",
        "metadata": {"name": s.name, "labels": labels},
        "spec": spec,
        "status": status,
    }))
}

/// A policy in the manifest shape.
pub fn policy_resource(p: &pb::Policy) -> Value {
    let spec: Value = serde_json::from_str(&p.spec_json).unwrap_or(Value::Null);
    let labels: std::collections::BTreeMap<_, _> = p.labels.iter().collect();
    strip_nulls(json!({
        "apiVersion": "joch.dev/v1alpha1",
        "kind": "Policy",
        "metadata": {"name": p.name, "labels": labels},
        "spec": spec,
        "status": {"generation": p.generation, "created": stamp(&p.created), "updated": stamp(&p.updated)},
    }))
}

/// A write's result as data.
pub fn write_value(target: &str, w: &pb::WriteReply) -> Value {
    let mut v = json!({"target": target, "logIndex": w.log_index, "changed": w.changed, "summary": w.summary});
    if let Some(f) = &w.fleet {
        v["fleet"] = json!({
            "complete": f.complete,
            "waitedMs": f.waited_ms,
            "laggardsStopServingBy": if f.complete { Value::Null } else { json!(time(f.laggards_stop_by_unix_ms.div_ceil(1000) * 1000)) },
            "laggardsStopServingByMs": if f.complete { Value::Null } else { json!(f.laggards_stop_by_unix_ms) },
            "members": f.members.iter().map(|m| json!({
                "id": m.id, "mesh": m.mesh, "applied": m.applied, "appliedIndex": m.applied_index,
                "error": if m.error.is_empty() { Value::Null } else { json!(m.error) },
            })).collect::<Vec<_>>(),
        });
    }
    v
}

/// Prints a write's result; returns whether the fleet acknowledgement (if any) was complete.
pub fn write(format: Format, target: &str, w: &pb::WriteReply) -> bool {
    let complete = w.fleet.as_ref().is_none_or(|f| f.complete);
    if format != Format::Table {
        data(format, &strip_nulls(write_value(target, w)));
        return complete;
    }
    let note = if w.changed { "" } else { " (no change)" };
    say!("{target}: {}{note} [log index {}]", w.summary, w.log_index);
    if let Some(f) = &w.fleet {
        let applied = f.members.iter().filter(|m| m.applied).count();
        say!("fleet: applied on {applied}/{} members in {} ms", f.members.len(), f.waited_ms);
        let rows: Vec<Vec<String>> = f
            .members
            .iter()
            .map(|m| {
                vec![
                    m.id.to_string(),
                    m.mesh.clone(),
                    if m.applied { "yes".into() } else { "NO".into() },
                    m.applied_index.to_string(),
                    m.error.clone(),
                ]
            })
            .collect();
        table(&["NODE", "MESH", "APPLIED", "INDEX", "ERROR"], &rows);
        if !f.complete {
            eprintln!("warning: committed, but not every member confirmed applying it within the wait");
            for m in f.members.iter().filter(|m| !m.applied) {
                eprintln!(
                    "node {} did not confirm; it stops serving by {} at the latest (its lease runs out)",
                    m.id,
                    clock(f.laggards_stop_by_unix_ms)
                );
            }
        }
    }
    complete
}
