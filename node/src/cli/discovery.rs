//! `joch mcp discover NAME` and `joch mcp diff NAME`: what a server offers, and how it drifted
//! from its baseline.

use std::process::ExitCode;

use joch_proto::admin as pb;
use serde_json::Value;

use super::client::{self, req, settle, status_err};
use super::output::{self, table, time};
use super::{Format, Global};

/// `joch mcp discover NAME`: discovers now, commits, prints seed 000's view (tools, resources,
/// prompts, drift). A failed discovery is an error (exit 1) saying why.
pub async fn discover(g: &Global, name: &str) -> anyhow::Result<ExitCode> {
    let mut n = client::node(g).await?;
    let url = n.url.clone();
    let reply =
        n.registry.discover(req(pb::NameRequest { name: name.into() })).await.map_err(|s| status_err(&url, s))?;
    let r = reply.into_inner();
    let status: Value = serde_json::from_str(&r.status_json).unwrap_or(Value::Null);
    if g.output != Format::Table {
        output::data(g.output, &status);
        return Ok(ExitCode::SUCCESS);
    }
    let d = &status["discovery"];
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    say!(
        "{name}: {} {} (protocol {}), discovered {} by node {}",
        s(&d["server_name"]),
        s(&d["server_version"]),
        s(&d["protocol_version"]),
        time(d["at_ms"].as_u64().unwrap_or_default()),
        d["node"]
    );
    let tools: Vec<Vec<String>> = d["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            let c: Value = serde_json::from_str(t["canonical"].as_str().unwrap_or("{}")).unwrap_or(Value::Null);
            let hash = s(&t["hash"]);
            vec![
                format!("{name}.{}", s(&t["name"])),
                format!("sha256:{}", &hash[..hash.len().min(12)]),
                s(&c["description"]),
            ]
        })
        .collect();
    say!("");
    table(&["TOOL", "HASH", "DESCRIPTION"], &tools);
    for (title, key) in
        [("RESOURCES", "resources"), ("RESOURCE TEMPLATES", "resource_templates"), ("PROMPTS", "prompts")]
    {
        let items: Vec<Vec<String>> = d[key].as_array().into_iter().flatten().map(|v| vec![s(v)]).collect();
        if !items.is_empty() {
            say!("");
            table(&[title], &items);
        }
    }
    let findings: Vec<Vec<String>> = d["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| vec![format!("{name}.{}", s(&f["tool"])), s(&f["rule"]), s(&f["evidence"])])
        .collect();
    say!("");
    if findings.is_empty() {
        say!("tool poisoning checks: nothing found");
    } else {
        table(&["TOOL", "POISONING CHECK", "EVIDENCE"], &findings);
    }
    match status["trust"]["score"].as_f64() {
        Some(score) => say!("trust score: {score:.2} (joch mcp trust {name} shows its components)"),
        None => say!("trust score: not computed"),
    }
    print_drift(&status);
    match status["quarantine"].as_str() {
        Some(why) => say!("phase: {} ({why})", s(&status["phase"])),
        None => say!("phase: {}", s(&status["phase"])),
    }
    Ok(ExitCode::SUCCESS)
}

fn print_drift(status: &Value) {
    if status["declaredDynamic"] == true {
        say!("declaredDynamic: tools are compared one by one; tools added or removed are not drift");
    }
    let drift = status["drift"].as_array().cloned().unwrap_or_default();
    if drift.is_empty() {
        say!("schema drift: none (baseline taken {})", time(status["baselineAtMs"].as_u64().unwrap_or_default()));
        return;
    }
    say!(
        "schema drift: {} change(s) since the baseline of {}",
        drift.len(),
        time(status["baselineAtMs"].as_u64().unwrap_or_default())
    );
    for d in &drift {
        let s = |k: &str| d[k].as_str().unwrap_or_default().to_string();
        match s("field").as_str() {
            "added" => say!("  + tool {} added: {}", s("tool"), s("after")),
            "removed" => say!("  - tool {} removed (was {})", s("tool"), s("before")),
            "renamed" => say!("  ~ tool {} renamed to {}", s("before"), s("after")),
            field => {
                say!("  ~ {} {field}:", s("tool"));
                say!("      before: {}", s("before"));
                say!("      after:  {}", s("after"));
            }
        }
    }
}

/// `joch mcp diff NAME`: the drift of the last discovery from the baseline, field by field.
pub async fn diff(g: &Global, name: &str) -> anyhow::Result<ExitCode> {
    let n = client::node(g).await?;
    let url = n.url.clone();
    let c = n.registry.clone();
    let s = settle(&url, || {
        let mut c = c.clone();
        async move { c.get_server(req(pb::GetRequest { name: name.into(), stale: false })).await }
    })
    .await?;
    if s.discovery_json.is_empty() {
        anyhow::bail!("{name} was never discovered: run joch mcp discover {name}");
    }
    let status: Value = serde_json::from_str(&s.discovery_json)?;
    if g.output != Format::Table {
        output::data(g.output, &serde_json::json!({"drift": status["drift"], "baselineAtMs": status["baselineAtMs"]}));
    } else {
        print_drift(&status);
    }
    Ok(ExitCode::SUCCESS)
}
