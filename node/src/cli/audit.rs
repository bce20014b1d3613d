//! The audit commands: `joch get toolcalls`, `joch denials ls`, `joch trace`, `joch audit verify`.
//! The node asked fans each question out to every member and merges the answers; a member that
//! did not answer is named, and the command exits 3 (a partial answer).

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};
use joch_proto::admin as pb;
use serde_json::Value;

use super::client::{self, req, settle};
use super::output::{self, table};
use super::{Format, Global, EXIT_FLEET_INCOMPLETE};

/// Which records.
#[derive(Args, Debug, Default, Clone)]
pub struct Filter {
    /// Calls to this MCP server.
    #[arg(long = "mcpserver")]
    pub mcpserver: Option<String>,
    /// Calls by this agent.
    #[arg(long)]
    pub agent: Option<String>,
    /// Calls of this tool (or prompt, or resource URI).
    #[arg(long)]
    pub tool: Option<String>,
    /// Decided by this policy.
    #[arg(long)]
    pub policy: Option<String>,
    /// Since: a duration back from now (24h, 7d, 90m) or an RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
    /// Until: a duration back from now or an RFC 3339 time.
    #[arg(long)]
    pub until: Option<String>,
    /// result | error | cut | denied | timedOut | rejected | answered | relayed.
    #[arg(long)]
    pub outcome: Option<String>,
    /// At most this many records (default 100, at most 10000).
    #[arg(long)]
    pub limit: Option<u32>,
    /// Count calls by agent, tool or server instead of listing them.
    #[arg(long = "by", value_name = "agent|tool|server")]
    pub by: Option<String>,
    /// How long to wait for the members (default 5s).
    #[arg(long)]
    pub timeout: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum DenialsCmd {
    /// Denied calls, newest first, from every member.
    Ls {
        #[command(flatten)]
        filter: Filter,
    },
}

#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// Every member checks its audit chain (hashes, no gaps); exits 1 when one does not verify.
    /// `--node N` (a member id) checks that member only.
    Verify {
        /// How long to wait for the members (default 5s).
        #[arg(long)]
        timeout: Option<String>,
    },
}

/// Whether `joch get KIND` asks for tool calls.
pub fn is_toolcalls(kind: &str) -> bool {
    matches!(kind.to_ascii_lowercase().as_str(), "toolcalls" | "toolcall" | "calls")
}

/// The call filters belong to `joch get toolcalls` only.
pub fn not_a_call_query(kind: &str, f: &Filter) -> anyhow::Result<()> {
    let given = [&f.mcpserver, &f.agent, &f.tool, &f.policy, &f.since, &f.until, &f.outcome, &f.by, &f.timeout]
        .iter()
        .any(|x| x.is_some())
        || f.limit.is_some();
    if given {
        anyhow::bail!(
            "--mcpserver, --agent, --tool, --policy, --since, --until, --outcome, --limit, --by and --timeout are for `joch get toolcalls`, not `joch get {kind}`"
        );
    }
    Ok(())
}

/// A member id given as `--node N` (a number, not a URL): the audit commands ask that member
/// only. Taken out of the global options so the command still talks to the configured node.
pub fn member_of(g: &mut Global) -> Option<u64> {
    let n = g.server.as_deref().and_then(|s| s.parse::<u64>().ok())?;
    g.server = None;
    Some(n)
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A `--since`/`--until` value as Unix milliseconds.
pub(super) fn instant(flag: &str, v: &str) -> anyhow::Result<u64> {
    if let Some(d) = joch_raft_store::model::validate::parse_duration(v) {
        return Ok(now_ms().saturating_sub(d.as_millis() as u64));
    }
    match humantime::parse_rfc3339_weak(v) {
        Ok(t) => Ok(t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)),
        Err(_) => anyhow::bail!(
            "--{flag} {v:?}: give a duration back from now (24h, 7d, 90m) or a time (2026-12-01T08:00:00Z)"
        ),
    }
}

pub(super) fn timeout_ms(v: &Option<String>) -> anyhow::Result<u32> {
    match v {
        None => Ok(0),
        Some(s) => joch_raft_store::model::validate::parse_duration(s)
            .map(|d| d.as_millis().min(60_000) as u32)
            .ok_or_else(|| anyhow::anyhow!("--timeout {s:?} is not a duration (e.g. 5s)")),
    }
}

fn request(f: &Filter, member: Option<u64>) -> anyhow::Result<pb::AuditQueryRequest> {
    Ok(pb::AuditQueryRequest {
        server: f.mcpserver.clone().unwrap_or_default(),
        agent: f.agent.clone().unwrap_or_default(),
        tool: f.tool.clone().unwrap_or_default(),
        policy: f.policy.clone().unwrap_or_default(),
        outcome: f.outcome.clone().unwrap_or_default(),
        since_ms: f.since.as_deref().map(|s| instant("since", s)).transpose()?.unwrap_or(0),
        until_ms: f.until.as_deref().map(|s| instant("until", s)).transpose()?.unwrap_or(0),
        limit: f.limit.unwrap_or(0),
        group_by: f.by.clone().unwrap_or_default(),
        timeout_ms: timeout_ms(&f.timeout)?,
        node: member.unwrap_or(0),
        ..Default::default()
    })
}

async fn query(g: &Global, r: pb::AuditQueryRequest) -> anyhow::Result<Value> {
    let n = client::node(g).await?;
    let c = n.registry.clone();
    let reply = settle(&n.url, || {
        let (mut c, r) = (c.clone(), r.clone());
        async move { c.query_audit(req(r)).await }
    })
    .await?;
    Ok(serde_json::from_str(&reply.json)?)
}

/// Names the members that did not answer (stderr) and gives the exit code.
pub(super) fn partial(v: &Value) -> ExitCode {
    let missing = v["unanswered"].as_array().cloned().unwrap_or_default();
    if missing.is_empty() {
        return ExitCode::SUCCESS;
    }
    for m in &missing {
        eprintln!("partial answer: node {} did not answer: {}", m["node"], m["error"].as_str().unwrap_or_default());
    }
    ExitCode::from(EXIT_FLEET_INCOMPLETE)
}

/// A JSON value as text: a string as it is, null as nothing, anything else as JSON.
pub(super) fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A record's (or a problem's) `timeUs` as a UTC time to the millisecond.
fn when(r: &Value) -> String {
    let us = r["timeUs"].as_u64().unwrap_or(0);
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_micros(us)).to_string().replace('T', " ")
}

fn ms(us: &Value) -> String {
    format!("{:.1}", us.as_u64().unwrap_or(0) as f64 / 1000.0)
}

fn or_dash(s: String) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s
    }
}

fn print_groups(g: &Global, v: &Value, by: &str) {
    if g.output != Format::Table {
        output::data(g.output, v);
        return;
    }
    let rows: Vec<Vec<String>> = v["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|x| vec![or_dash(s(&x["key"])), s(&x["calls"]), s(&x["denied"]), s(&x["errors"])])
        .collect();
    table(&[&by.to_uppercase(), "CALLS", "DENIED", "ERRORS"], &rows);
}

fn more_note(v: &Value) {
    if v["more"].as_bool() == Some(true) {
        eprintln!("(more records match: narrow the query or raise --limit)");
    }
}

/// A column of a record table: its header and how a record's cell reads.
type Column = (&'static str, fn(&Value) -> String);

/// Records (or, with `--by`, counts) from every member, as a table of these columns or as data.
async fn list(g: &Global, f: &Filter, member: Option<u64>, columns: &[Column]) -> anyhow::Result<ExitCode> {
    let v = query(g, request(f, member)?).await?;
    if let Some(by) = &f.by {
        print_groups(g, &v, by);
    } else if g.output != Format::Table {
        output::data(g.output, &v);
    } else {
        let rows: Vec<Vec<String>> = records(&v).map(|r| columns.iter().map(|(_, cell)| cell(r)).collect()).collect();
        table(&columns.iter().map(|(h, _)| *h).collect::<Vec<_>>(), &rows);
        more_note(&v);
    }
    Ok(partial(&v))
}

/// `joch get toolcalls`.
pub async fn toolcalls(g: &Global, f: &Filter, member: Option<u64>) -> anyhow::Result<ExitCode> {
    let columns: [Column; 10] = [
        ("TIME", when),
        ("NODE", |r| s(&r["node"])),
        ("AGENT", |r| or_dash(s(&r["agent"]))),
        ("SERVER", |r| or_dash(s(&r["server"]))),
        ("METHOD", |r| or_dash(s(&r["method"]))),
        ("TOOL", |r| or_dash(s(&r["target"]))),
        ("DECISION", |r| or_dash(s(&r["decision"]))),
        ("OUTCOME", |r| s(&r["outcome"])),
        ("MS", |r| ms(&r["latencyUs"])),
        ("EXEC", |r| s(&r["exec"])),
    ];
    list(g, f, member, &columns).await
}

fn records(v: &Value) -> impl Iterator<Item = &Value> {
    v["records"].as_array().into_iter().flatten()
}

/// `joch denials ls`.
pub async fn denials(g: &Global, cmd: DenialsCmd, member: Option<u64>) -> anyhow::Result<ExitCode> {
    let DenialsCmd::Ls { mut filter } = cmd;
    if let Some(o) = &filter.outcome {
        anyhow::bail!("--outcome {o:?}: denials are the records with outcome denied; use joch get toolcalls --outcome");
    }
    filter.outcome = Some("denied".into());
    let columns: [Column; 10] = [
        ("TIME", when),
        ("NODE", |r| s(&r["node"])),
        ("AGENT", |r| or_dash(s(&r["agent"]))),
        ("SERVER", |r| or_dash(s(&r["server"]))),
        ("TOOL", |r| or_dash(s(&r["target"]))),
        ("POLICY", |r| or_dash(s(&r["policy"]))),
        ("RULE", |r| or_dash(s(&r["rule"]))),
        ("CODE", |r| s(&r["code"])),
        ("EXEC", |r| s(&r["exec"])),
        ("REASON", |r| s(&r["reason"])),
    ];
    list(g, &filter, member, &columns).await
}

/// `joch trace ID`: every record of one execution (or of one W3C trace, given its 32-hex id),
/// from every member, in time order.
pub async fn trace(g: &Global, id: &str, member: Option<u64>, timeout: &Option<String>) -> anyhow::Result<ExitCode> {
    let is_trace = id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit());
    let mut r = pb::AuditQueryRequest {
        limit: 10_000,
        oldest_first: true,
        timeout_ms: timeout_ms(timeout)?,
        node: member.unwrap_or(0),
        ..Default::default()
    };
    if is_trace {
        r.trace = id.to_ascii_lowercase();
    } else {
        r.exec = id.to_string();
    }
    let v = query(g, r).await?;
    let found = records(&v).count();
    if g.output != Format::Table {
        output::data(g.output, &v);
    } else if found > 0 {
        let first = records(&v).next().cloned().unwrap_or_default();
        say!("execution {}  trace {}", s(&first["exec"]), s(&first["trace"]));
        let rows: Vec<Vec<String>> = records(&v)
            .map(|r| {
                // Guardian hooks' and audit-only policies' verdicts, in the order they were made.
                let verdicts = r["verdicts"].as_array().into_iter().flatten().map(|v| {
                    let took = v["micros"].as_u64().filter(|m| *m > 0).map(|m| format!(" {:.1}ms", m as f64 / 1000.0));
                    format!("[{} {}: {}{}]", s(&v["by"]), s(&v["rule"]), s(&v["verdict"]), took.unwrap_or_default())
                });
                let why = [s(&r["policy"]), s(&r["rule"]), s(&r["approval"]), s(&r["reason"])]
                    .into_iter()
                    .chain(verdicts)
                    .filter(|x| !x.is_empty())
                    .collect::<Vec<_>>()
                    .join(" ");
                vec![
                    when(r),
                    s(&r["node"]),
                    s(&r["kind"]),
                    or_dash(s(&r["agent"])),
                    or_dash(s(&r["server"])),
                    or_dash(s(&r["method"])),
                    or_dash(s(&r["target"])),
                    or_dash(s(&r["decision"])),
                    s(&r["outcome"]),
                    ms(&r["latencyUs"]),
                    why,
                ]
            })
            .collect();
        table(
            &["TIME", "NODE", "KIND", "AGENT", "SERVER", "METHOD", "TOOL", "DECISION", "OUTCOME", "MS", "DETAIL"],
            &rows,
        );
    }
    let code = partial(&v);
    if found == 0 {
        let asked: Vec<String> = v["answered"].as_array().into_iter().flatten().map(s).collect();
        eprintln!(
            "no records of {} {id} on the members that answered ({})",
            if is_trace { "trace" } else { "execution" },
            asked.join(", ")
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(code)
}

/// `joch audit verify`.
pub async fn audit(g: &Global, cmd: AuditCmd, member: Option<u64>) -> anyhow::Result<ExitCode> {
    let AuditCmd::Verify { timeout } = cmd;
    let n = client::node(g).await?;
    let c = n.registry.clone();
    let r = pb::AuditVerifyRequest { node: member.unwrap_or(0), timeout_ms: timeout_ms(&timeout)? };
    let reply = settle(&n.url, || {
        let mut c = c.clone();
        async move { c.verify_audit(req(r)).await }
    })
    .await?;
    let v: Value = serde_json::from_str(&reply.json)?;
    let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
    let broken = nodes.iter().any(|n| n["report"]["problems"].as_array().is_some_and(|p| !p.is_empty()));
    if g.output != Format::Table {
        output::data(g.output, &v);
    } else {
        let rows: Vec<Vec<String>> = nodes
            .iter()
            .map(|n| {
                let r = &n["report"];
                let problems = r["problems"].as_array().map(|p| p.len()).unwrap_or(0);
                vec![
                    s(&n["node"]),
                    s(&r["records"]),
                    format!("{}..{}", s(&r["firstSeq"]), s(&r["lastSeq"])),
                    s(&n["dropped"]),
                    if problems == 0 { "verified".into() } else { format!("BROKEN ({problems})") },
                    s(&r["head"]).chars().take(16).collect(),
                ]
            })
            .collect();
        table(&["NODE", "RECORDS", "SEQ", "DROPPED", "CHAIN", "HEAD"], &rows);
        for n in &nodes {
            for p in n["report"]["problems"].as_array().into_iter().flatten() {
                say!("node {}: record {} ({}): {}", n["node"], s(&p["seq"]), when(p), s(&p["problem"]));
            }
        }
    }
    let code = partial(&v);
    if broken {
        return Ok(ExitCode::FAILURE);
    }
    Ok(code)
}

/// `joch gates`: seed 003's rollout gates, fleet-wide; exits 1 when one blocks (for a rollout
/// pipeline), 3 when a member did not answer.
pub async fn gates(g: &Global, since: &Option<String>, timeout: &Option<String>) -> anyhow::Result<ExitCode> {
    let n = client::node(g).await?;
    let c = n.registry.clone();
    let r = pb::GatesRequest {
        since_ms: since.as_deref().map(|s| instant("since", s)).transpose()?.unwrap_or(0),
        timeout_ms: timeout_ms(timeout)?,
    };
    let reply = settle(&n.url, || {
        let mut c = c.clone();
        async move { c.gates(req(r)).await }
    })
    .await?;
    let v: Value = serde_json::from_str(&reply.json)?;
    let gates = v["gates"].as_array().cloned().unwrap_or_default();
    if g.output != Format::Table {
        output::data(g.output, &v);
    } else {
        let rows: Vec<Vec<String>> = gates
            .iter()
            .map(|x| {
                let value = match x["value"].as_f64() {
                    Some(f) if f.fract() == 0.0 => format!("{f} {}", s(&x["unit"])),
                    Some(f) => format!("{f:.2} {}", s(&x["unit"])),
                    None => "-".into(),
                };
                let status = match x["status"].as_str().unwrap_or_default() {
                    "blocking" => "BLOCKING".to_string(),
                    "overTarget" => "over target".to_string(),
                    other => other.to_string(),
                };
                vec![s(&x["gate"]), value, s(&x["target"]), s(&x["blockIf"]), status, s(&x["owner"])]
            })
            .collect();
        table(&["GATE", "VALUE", "TARGET", "BLOCK CONDITION", "STATUS", "OWNER"], &rows);
        for x in &gates {
            say!("{}: {}", s(&x["gate"]), s(&x["detail"]));
        }
    }
    let code = partial(&v);
    if gates.iter().any(|x| x["status"] == "blocking") {
        eprintln!("a gate blocks the rollout");
        return Ok(ExitCode::FAILURE);
    }
    Ok(code)
}
