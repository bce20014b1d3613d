//! `joch policy`: list, explain a decision on a node, and test policy files offline (in CI, like
//! code) against expected decisions.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Subcommand;
use joch_policy::{Action, Decision, Facts, Kind, Policy, PolicySet};
use joch_proto::admin as pb;
use serde::Deserialize;
use serde_json::{json, Value};

use super::client::{self, req, settle};
use super::output::{self, table};
use super::{Format, Global};
use crate::resource::manifest::{self, Manifest};

#[derive(Subcommand, Debug)]
pub enum PolicyCmd {
    /// List policies (as `joch get policies`).
    Ls {
        /// Read this node's local copy instead of a linearizable read.
        #[arg(long)]
        stale: bool,
    },
    /// The decision a node would make for a call: every rule that matched and the one that
    /// decided.
    Explain {
        /// The agent (a registered agent's labels are used unless --label is given).
        #[arg(long)]
        agent: String,
        /// Labels of the agent (KEY=VALUE, repeatable), for agents of an identity provider.
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// The MCP server (`--server S` as the issue and docs write it; the node to ask is then
        /// `--node URL` or JOCH_SERVER).
        #[arg(long = "mcp-server")]
        mcp_server: String,
        /// The tool (the server's own name, or SERVER.TOOL).
        #[arg(long, conflicts_with_all = ["prompt", "resource"])]
        tool: Option<String>,
        /// A prompt instead of a tool.
        #[arg(long, conflicts_with = "resource")]
        prompt: Option<String>,
        /// A resource URI instead of a tool.
        #[arg(long)]
        resource: Option<String>,
        /// The call's arguments as JSON.
        #[arg(long)]
        args: Option<String>,
        /// Read this node's local copy instead of a linearizable read.
        #[arg(long)]
        stale: bool,
    },
    /// Check policy files against expected decisions, offline (exit 1 on a failed case).
    Test {
        /// Policy manifests (or a seed-003 rule file), several documents allowed.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// The cases: `cases: [{name, agent: {name, labels}, server: {name, labels, riskTags},
        /// tool | prompt | resource, action, args, expect, rule}]`.
        #[arg(long)]
        cases: PathBuf,
    },
}

/// `joch policy explain --server S` names the MCP server, not the node (the global `--server`):
/// under `policy explain`, `--server` becomes `--mcp-server`, and `--node` picks the node.
pub fn explain_args(mut args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let pos = |w: &str| args.iter().position(|a| a == w);
    let (Some(p), Some(e)) = (pos("policy"), pos("explain")) else { return args };
    if e != p + 1 {
        return args;
    }
    for a in args.iter_mut().skip(e + 1) {
        if a == "--server" {
            *a = "--mcp-server".into();
        } else if let Some(v) = a.to_str().and_then(|s| s.strip_prefix("--server=")) {
            *a = format!("--mcp-server={v}").into();
        }
    }
    args
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| format!("{s:?}: expected KEY=VALUE"))
}

/// Runs a `joch policy` command.
pub async fn run(g: &Global, cmd: PolicyCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCmd::Ls { stale } => super::registry::get(g, "policies", stale).await,
        PolicyCmd::Explain { agent, labels, mcp_server: server, tool, prompt, resource, args, stale } => {
            let (kind, name) = match (tool, prompt, resource) {
                (Some(t), None, None) => {
                    ("tool", t.strip_prefix(&format!("{server}.")).map(str::to_string).unwrap_or(t))
                }
                (None, Some(p), None) => ("prompt", p),
                (None, None, Some(r)) => ("resource", r),
                _ => anyhow::bail!("name what the call is about: --tool, --prompt or --resource"),
            };
            if let Some(a) = &args {
                serde_json::from_str::<Value>(a).context("--args is not JSON")?;
            }
            let n = client::node(g).await?;
            let c = n.registry.clone();
            let r = pb::ExplainRequest {
                agent,
                labels: labels.into_iter().collect(),
                server,
                kind: kind.into(),
                name,
                args_json: args.unwrap_or_default(),
                stale,
            };
            let reply = settle(&n.url, || {
                let mut c = c.clone();
                let r = r.clone();
                async move { c.explain_policy(req(r)).await }
            })
            .await?;
            let v: Value = serde_json::from_str(&reply.json).context("reading the node's explanation")?;
            if g.output != Format::Table {
                output::data(g.output, &v);
            } else {
                print_explanation(&v);
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyCmd::Test { file, cases } => test(g, &file, &cases),
    }
}

fn print_explanation(v: &Value) {
    let s = |k: &str| match &v[k] {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    if let Some(n) = v["note"].as_str() {
        println!("note:        {n}");
    }
    println!("decision:    {}", s("decision"));
    println!("decided by:  {}", s("decidedBy"));
    println!("reason:      {}", s("reason"));
    println!("call:        agent {} -> {} {}.{} ({})", s("agent"), s("kind"), s("server"), s("name"), s("action"));
    if v["constraints"].as_object().is_some_and(|c| c.values().any(|x| !x.is_null())) {
        println!("constraints: {}", v["constraints"]);
    }
    println!("listed:      {}", if v["listed"] == json!(true) { "yes" } else { "no (hidden from lists)" });
    println!("precedence:  {}", s("precedence"));
    let rows: Vec<Vec<String>> = v["matched"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            vec![
                m["policy"].as_str().unwrap_or_default().to_string(),
                m["rule"].as_str().unwrap_or_default().to_string(),
                m["decision"].as_str().unwrap_or_default().to_string(),
                if m["audit"] == json!(true) { "audit only".into() } else { "enforced".into() },
                m["reason"].as_str().unwrap_or_default().to_string(),
            ]
        })
        .collect();
    if rows.is_empty() {
        println!("\nno policy rule matched");
    } else {
        println!("\nrules that matched:");
        table(&["POLICY", "RULE", "DECISION", "MODE", "REASON"], &rows);
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    cases: Vec<Case>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Party {
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default, rename = "riskTags")]
    risk_tags: Vec<String>,
    #[serde(default, rename = "policies")]
    policies: Vec<String>,
    #[serde(default, rename = "trustScore")]
    trust_score: Option<f64>,
    #[serde(default, rename = "schemaDrift")]
    schema_drift: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    #[serde(default)]
    name: Option<String>,
    agent: Party,
    server: Party,
    #[serde(default)]
    tool: Option<String>,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    resource: Option<String>,
    /// read | write (default: write for a tool, as the MCP specification's defaults say).
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    args: Option<Value>,
    /// Unix milliseconds or RFC 3339 (time windows); default now.
    #[serde(default)]
    at: Option<Value>,
    expect: String,
    /// `RULE` or `POLICY/RULE` that must decide.
    #[serde(default)]
    rule: Option<String>,
}

fn test(g: &Global, file: &Path, cases: &Path) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let source = file.display().to_string();
    let manifests = manifest::parse(&source, &text)
        .map_err(|errs| anyhow::anyhow!("{}", errs.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n")))?;
    let mut compiled = Vec::new();
    for m in manifests {
        if let Manifest::Policy { name, spec_json, .. } = m {
            let spec: Value = serde_json::from_str(&spec_json)?;
            let p = Policy::compile(&name, &spec).map_err(|e| anyhow::anyhow!("policy {name}: {e:?}"))?;
            compiled.push(Arc::new(p));
        }
    }
    anyhow::ensure!(!compiled.is_empty(), "{source}: no policy in it");
    let set = PolicySet::new(compiled);
    let ctext = std::fs::read_to_string(cases).with_context(|| format!("reading {}", cases.display()))?;
    let cf: CaseFile = serde_yaml_ng::from_str(&ctext).map_err(|e| anyhow::anyhow!("{}: {e}", cases.display()))?;
    let now = crate::policy::list::now_ms();
    let mut rows = Vec::new();
    let mut results = Vec::new();
    let mut failed = 0;
    for (i, c) in cf.cases.iter().enumerate() {
        let label = c.name.clone().unwrap_or_else(|| format!("case {}", i + 1));
        let outcome = run_case(&set, c, now);
        let (ok, got, by, why) = match outcome {
            Ok((got, by)) => {
                let want = c.expect.to_ascii_uppercase();
                let rule_ok = c
                    .rule
                    .as_ref()
                    .is_none_or(|r| by.as_deref().is_some_and(|b| b == r || b.ends_with(&format!("/{r}"))));
                let ok = got.as_str() == want && rule_ok;
                let why = if ok {
                    String::new()
                } else {
                    format!("expected {want}{}", c.rule.as_ref().map(|r| format!(" by {r}")).unwrap_or_default())
                };
                (ok, got.as_str().to_string(), by, why)
            }
            Err(e) => (false, "-".into(), None, e),
        };
        if !ok {
            failed += 1;
        }
        results.push(json!({"case": label, "pass": ok, "decision": got, "decidedBy": by, "problem": why}));
        rows.push(vec![
            if ok { "PASS".into() } else { "FAIL".into() },
            label,
            got,
            by.unwrap_or_else(|| "-".into()),
            why,
        ]);
    }
    if g.output == Format::Table {
        table(&["RESULT", "CASE", "DECISION", "DECIDED BY", "PROBLEM"], &rows);
        println!("\n{} of {} cases passed", rows.len() - failed, rows.len());
    } else {
        output::data(g.output, &json!({"cases": results, "failed": failed}));
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn run_case(set: &PolicySet, c: &Case, now: u64) -> Result<(Decision, Option<String>), String> {
    let (kind, name) = match (&c.tool, &c.prompt, &c.resource) {
        (Some(t), None, None) => (Kind::Tool, t.as_str()),
        (None, Some(p), None) => (Kind::Prompt, p.as_str()),
        (None, None, Some(r)) => (Kind::Resource, r.as_str()),
        _ => return Err("name exactly one of tool, prompt, resource".into()),
    };
    let action = match c.action.as_deref() {
        Some("read") => Action::Read,
        Some("write") => Action::Write,
        None if kind == Kind::Tool => Action::Write,
        None => Action::Read,
        Some(other) => return Err(format!("action {other:?}: read or write")),
    };
    let now_ms = match &c.at {
        None => now,
        Some(Value::Number(n)) => n.as_u64().ok_or("at: Unix milliseconds")?,
        Some(Value::String(s)) => humantime::parse_rfc3339(s)
            .map_err(|e| format!("at: {e}"))?
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .map_err(|e| e.to_string())?,
        Some(_) => return Err("at: Unix milliseconds or RFC 3339".into()),
    };
    let method = match kind {
        Kind::Tool => "tools/call",
        Kind::Prompt => "prompts/get",
        Kind::Resource => "resources/read",
    };
    let null = Value::Null;
    let facts = Facts {
        agent: &c.agent.name,
        agent_labels: &c.agent.labels,
        server: &c.server.name,
        server_labels: &c.server.labels,
        trust_score: c.server.trust_score,
        schema_drift: c.server.schema_drift,
        kind,
        method,
        name: name.strip_prefix(&format!("{}.", c.server.name)).unwrap_or(name),
        action,
        risk_tags: &c.server.risk_tags,
        args: Some(c.args.as_ref().unwrap_or(&null)),
        listing: false,
        now_ms,
        result: None,
        args_scan: None,
    };
    let attached: Vec<&str> = c.server.policies.iter().map(String::as_str).collect();
    let v = set.decide(&facts, &attached, None);
    Ok((v.decision, v.decided_by.map(|m| format!("{}/{}", m.policy, m.rule))))
}

#[derive(Subcommand, Debug)]
pub enum ApprovalsCmd {
    /// Calls held for an approval (all states, newest first; `--pending` for the queue).
    Ls {
        /// Only those waiting for a decision.
        #[arg(long)]
        pending: bool,
        /// Read this node's local copy instead of a linearizable read.
        #[arg(long)]
        stale: bool,
    },
    /// Approve a held call: it runs once (fleet-acknowledged).
    Approve {
        /// The approval id (`apr-...`).
        id: String,
        /// Why (recorded, and shown to the agent's operators).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Deny a held call: the agent gets approval-denied with the reason (fleet-acknowledged).
    Deny {
        /// The approval id (`apr-...`).
        id: String,
        /// Why (required: the agent is told).
        #[arg(long)]
        reason: String,
    },
}

/// Runs a `joch approvals` command.
pub async fn approvals(g: &Global, cmd: ApprovalsCmd) -> anyhow::Result<ExitCode> {
    let n = client::node(g).await?;
    match cmd {
        ApprovalsCmd::Ls { pending, stale } => {
            let c = n.registry.clone();
            let list = settle(&n.url, || {
                let mut c = c.clone();
                async move { c.list_approvals(req(pb::ListRequest { stale })).await }
            })
            .await?;
            let shown: Vec<&pb::Approval> =
                list.approvals.iter().filter(|a| !pending || a.state == "pending").collect();
            let v: Vec<Value> = shown
                .iter()
                .map(|a| {
                    json!({"id": a.id, "state": a.state, "agent": a.agent, "server": a.server, "kind": a.kind,
                        "name": a.name, "policy": a.policy, "rule": a.rule, "node": a.node,
                        "requested": a.requested.as_ref().map(|s| output::time(s.at_ms)),
                        "expires": output::time(a.expires_ms),
                        "decidedBy": a.decided.as_ref().map(|s| s.actor.clone()), "reason": a.reason,
                        "argsSha256": a.args_sha256})
                })
                .collect();
            if g.output != Format::Table {
                output::data(g.output, &Value::Array(v));
            } else {
                let rows: Vec<Vec<String>> = shown
                    .iter()
                    .map(|a| {
                        vec![
                            a.id.clone(),
                            a.state.clone(),
                            a.agent.clone(),
                            format!("{} {}.{}", a.kind, a.server, a.name),
                            format!("{}/{}", a.policy, a.rule),
                            a.requested.as_ref().map(|s| output::time(s.at_ms)).unwrap_or_default(),
                            a.decided.as_ref().map(|s| format!("{}: {}", s.actor, a.reason)).unwrap_or_default(),
                        ]
                    })
                    .collect();
                table(&["ID", "STATE", "AGENT", "CALL", "RULE", "REQUESTED", "DECIDED"], &rows);
            }
            Ok(ExitCode::SUCCESS)
        }
        ApprovalsCmd::Approve { id, reason } => decide(g, n, id, true, reason).await,
        ApprovalsCmd::Deny { id, reason } => decide(g, n, id, false, reason).await,
    }
}

async fn decide(
    g: &Global,
    mut n: client::Node,
    id: String,
    approve: bool,
    reason: String,
) -> anyhow::Result<ExitCode> {
    let target = format!("approval/{id}");
    let r = pb::DecideApprovalRequest { id, approve, reason };
    let url = n.url.clone();
    let w = n.registry.decide_approval(req(r)).await.map_err(|s| client::status_err(&url, s))?.into_inner();
    Ok(if output::write(g.output, &target, &w) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(super::EXIT_FLEET_INCOMPLETE)
    })
}
