//! `joch guard ...`: the content guard's feeds (loaded, listed, removed; replicated), and a scan
//! of a file with the built-in rules, offline (to see what the guard would find).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use joch_proto::admin as pb;
use serde::Deserialize;
use serde_json::json;

use super::audit::s;
use super::client::{self, req, settle, status_err};
use super::output::{self, table, time};
use super::registry::done;
use super::{Format, Global};

/// `joch guard ...`.
#[derive(Subcommand, Debug)]
pub enum GuardCmd {
    /// Content-guard feeds: patterns an operator loads, used by every node.
    Feed {
        #[command(subcommand)]
        cmd: FeedCmd,
    },
    /// What the guard saw that operators must see, every node's: prompt injection sent back by
    /// a server, tool poisoning in a tools/list answer (newest first; open ones unless --all).
    Incidents {
        /// Only this MCP server's.
        #[arg(long)]
        mcpserver: Option<String>,
        /// Acknowledged ones too.
        #[arg(long)]
        all: bool,
    },
    /// Acknowledge an incident (operator): a tool-poisoning one stops lowering the server's
    /// trust score.
    Ack { id: u64 },
    /// Scan a file (or `-`, stdin) with the built-in rules, offline: every hit with its rule and
    /// span; exit 1 when something was found.
    Scan {
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
}

/// `joch guard feed ...`.
#[derive(Subcommand, Debug)]
pub enum FeedCmd {
    /// Load (or replace) a feed from a YAML or JSON file (admin).
    Apply {
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// The feed's name (default: the file's `name:`, else the file name).
        #[arg(long)]
        name: Option<String>,
    },
    /// The feeds loaded.
    Ls,
    /// Remove a feed (admin).
    Rm { name: String },
}

/// A feed file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedFile {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    version: Option<String>,
    patterns: Vec<joch_guard::FeedPattern>,
}

/// `joch guard ...`.
pub async fn run(g: &Global, cmd: GuardCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        GuardCmd::Scan { file } => scan(g, &file),
        GuardCmd::Incidents { mcpserver, all } => incidents(g, mcpserver.as_deref(), all).await,
        GuardCmd::Ack { id } => {
            let mut n = client::node(g).await?;
            let url = n.url.clone();
            let w = n
                .registry
                .ack_incident(req(pb::IncidentAck { id }))
                .await
                .map_err(|s| status_err(&url, s))?
                .into_inner();
            Ok(done(output::write(g.output, &format!("incident/{id}"), &w)))
        }
        GuardCmd::Feed { cmd: FeedCmd::Apply { file, name } } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let f: FeedFile = serde_yaml_ng::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let stem = file.file_stem().map(|s| s.to_string_lossy().to_lowercase().replace(['_', ' ', '.'], "-"));
            let name = name.or(f.name).or(stem).unwrap_or_default();
            // Checked here first (every problem at once, with the file), and again by the cluster.
            let problems = joch_raft_store::model::guard::check(&name, &f.patterns);
            if !problems.is_empty() {
                let lines: Vec<String> =
                    problems.iter().map(|p| format!("{}: {}: {}", file.display(), p.field, p.message)).collect();
                anyhow::bail!("{}", lines.join("\n"));
            }
            let mut n = client::node(g).await?;
            let url = n.url.clone();
            let r = pb::GuardFeedRequest {
                name: name.clone(),
                source: f.source.unwrap_or_else(|| file.display().to_string()),
                version: f.version.unwrap_or_default(),
                patterns_json: serde_json::to_string(&f.patterns)?,
            };
            let w = n.registry.set_guard_feed(req(r)).await.map_err(|s| status_err(&url, s))?.into_inner();
            Ok(done(output::write(g.output, &format!("guardfeed/{name}"), &w)))
        }
        GuardCmd::Feed { cmd: FeedCmd::Rm { name } } => {
            let mut n = client::node(g).await?;
            let url = n.url.clone();
            let w = n
                .registry
                .delete_guard_feed(req(pb::NameRequest { name: name.clone() }))
                .await
                .map_err(|s| status_err(&url, s))?
                .into_inner();
            Ok(done(output::write(g.output, &format!("guardfeed/{name}"), &w)))
        }
        GuardCmd::Feed { cmd: FeedCmd::Ls } => {
            let n = client::node(g).await?;
            let c = n.registry.clone();
            let r = settle(&n.url, || {
                let mut c = c.clone();
                async move { c.list_guard_feeds(req(pb::ListRequest { stale: false })).await }
            })
            .await?;
            let v: serde_json::Value = serde_json::from_str(&r.json)?;
            if g.output != Format::Table {
                output::data(g.output, &v);
                return Ok(ExitCode::SUCCESS);
            }
            say!("built-in rule set {}", s(&v["ruleset"]));
            let rows: Vec<Vec<String>> = v["feeds"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|f| {
                    vec![
                        s(&f["name"]),
                        s(&f["source"]),
                        s(&f["version"]),
                        f["patterns"].as_array().map_or(0, Vec::len).to_string(),
                        s(&f["loadedBy"]),
                        time(f["loadedAtMs"].as_u64().unwrap_or(0)),
                    ]
                })
                .collect();
            table(&["FEED", "SOURCE", "VERSION", "PATTERNS", "LOADED BY", "LOADED"], &rows);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `joch guard incidents`.
async fn incidents(g: &Global, server: Option<&str>, all: bool) -> anyhow::Result<ExitCode> {
    let n = client::node(g).await?;
    let c = n.registry.clone();
    let r = settle(&n.url, || {
        let mut c = c.clone();
        async move { c.list_incidents(req(pb::ListRequest { stale: false })).await }
    })
    .await?;
    let v: serde_json::Value = serde_json::from_str(&r.json)?;
    let shown: Vec<&serde_json::Value> = v["incidents"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| server.is_none_or(|s| i["server"] == s))
        .filter(|i| all || i["acknowledgedBy"].is_null())
        .collect();
    if g.output != Format::Table {
        output::data(g.output, &json!({"incidents": shown}));
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = shown
        .iter()
        .map(|i| {
            let rules: Vec<String> = i["rules"].as_array().into_iter().flatten().map(s).collect();
            vec![
                s(&i["id"]),
                s(&i["kind"]),
                s(&i["server"]),
                s(&i["agent"]),
                s(&i["node"]),
                rules.join(","),
                s(&i["verdict"]),
                s(&i["count"]),
                time(i["lastMs"].as_u64().unwrap_or(0)),
                if i["acknowledgedBy"].is_null() { "-".into() } else { s(&i["acknowledgedBy"]) },
                s(&i["evidence"]).chars().take(60).collect::<String>().replace('\n', " "),
            ]
        })
        .collect();
    table(&["ID", "KIND", "SERVER", "AGENT", "NODE", "RULES", "VERDICT", "COUNT", "LAST", "ACK", "EVIDENCE"], &rows);
    Ok(ExitCode::SUCCESS)
}

/// `joch guard scan -f FILE`.
fn scan(g: &Global, file: &PathBuf) -> anyhow::Result<ExitCode> {
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
    };
    let hits = crate::guard::SCANNER.scan(&text, &joch_guard::Options::all());
    if g.output != Format::Table {
        let v: Vec<serde_json::Value> = hits
            .iter()
            .map(|h| json!({"rule": h.rule, "family": h.family, "start": h.start, "end": h.end, "text": &text[h.start..h.end]}))
            .collect();
        output::data(g.output, &json!({"ruleset": joch_guard::RULESET_VERSION, "hits": v}));
    } else {
        let rows: Vec<Vec<String>> = hits
            .iter()
            .map(|h| {
                let line = text[..h.start].matches('\n').count() + 1;
                let shown: String = text[h.start..h.end].chars().take(80).collect();
                vec![format!("{line}"), h.rule.to_string(), h.family.as_str().to_string(), format!("{shown:?}")]
            })
            .collect();
        if rows.is_empty() {
            say!("nothing found (rule set {})", joch_guard::RULESET_VERSION);
        } else {
            table(&["LINE", "RULE", "FAMILY", "MATCH"], &rows);
        }
    }
    Ok(if hits.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
