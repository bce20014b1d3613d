//! `joch mcp ...`, `joch apply`, `joch describe`, `joch get`, `joch delete`.

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use joch_proto::admin as pb;
use serde_json::{json, Value};

use super::client::{self, req, settle, status_err};
use super::output::{self, table, time};
use super::{Format, Global, EXIT_FLEET_INCOMPLETE};

/// `joch mcp add`.
#[derive(clap::Args, Debug)]
pub struct AddArgs {
    /// Server name (lowercase letters, digits, '-').
    name: String,
    /// Streamable-HTTP endpoint URL.
    #[arg(long)]
    endpoint: Option<String>,
    /// Upstream credential type: none, bearer, header, api_key, oauth2.
    #[arg(long)]
    auth: Option<String>,
    /// Secret holding the credential (default NAME-mcp-AUTH); SECRET/KEY names its key.
    #[arg(long)]
    secret_ref: Option<String>,
    /// header / api_key: the header the credential goes in.
    #[arg(long)]
    header: Option<String>,
    /// oauth2: the token endpoint (client-credentials grant).
    #[arg(long)]
    token_url: Option<String>,
    /// oauth2: a scope to ask for (repeatable).
    #[arg(long = "scope")]
    scopes: Vec<String>,
    /// oauth2: the audience parameter.
    #[arg(long)]
    audience: Option<String>,
    /// stdio: VAR=VALUE in the child's environment (repeatable; not for secrets).
    #[arg(long = "env")]
    env: Vec<String>,
    /// stdio: VAR=SECRET[/KEY]: a secret's value in the child's environment (repeatable).
    #[arg(long = "env-secret")]
    env_secrets: Vec<String>,
    /// streamable_http (default) or stdio.
    #[arg(long)]
    transport: Option<String>,
    /// Command of a stdio server.
    #[arg(long = "command")]
    stdio_command: Option<String>,
    /// Argument of the stdio command (repeatable).
    #[arg(long = "arg", allow_hyphen_values = true)]
    stdio_args: Vec<String>,
    /// Allow the stdio transport for this server.
    #[arg(long)]
    allow_stdio: bool,
    /// Label KEY=VALUE (repeatable).
    #[arg(long = "label")]
    labels: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum McpCmd {
    /// Register an MCP server.
    Add(Box<AddArgs>),
    /// List MCP servers.
    Ls {
        /// Read this node's local copy instead of a linearizable read.
        #[arg(long)]
        stale: bool,
    },
    /// Pin a server to a version (calls to another version are denied).
    Pin {
        name: String,
        /// Version, e.g. 1.2.0.
        #[arg(long)]
        to: String,
    },
    /// Move a server's pin to a new version; `--review` stages it without applying.
    Upgrade {
        name: String,
        #[arg(long)]
        to: String,
        #[arg(long)]
        review: bool,
    },
    /// Discover a server now: its tools (with their hashes), resources and prompts, committed
    /// for every node, and the drift from its baseline.
    Discover { name: String },
    /// The drift of a server's last discovery from its baseline, field by field (`joch mcp pin`
    /// takes a new baseline once reviewed).
    Diff { name: String },
    /// Take a server out of rotation, fleet-wide.
    Quarantine {
        name: String,
        #[arg(long)]
        reason: String,
    },
    /// Return a quarantined server to rotation.
    Unquarantine { name: String },
    /// Approve one tool: SERVER.TOOL.
    ApproveTool { tool: String },
    /// A server's trust score, component by component.
    Trust { name: String },
    /// Make an ed25519 key pair for signing manifests as a publisher.
    Keygen {
        /// Where the private key goes (the public key goes to OUT.pub).
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Sign the MCPServer manifests of a file as a publisher (adds spec.signature).
    Sign {
        #[arg(short = 'f', long = "filename")]
        file: std::path::PathBuf,
        /// The private key (from joch mcp keygen).
        #[arg(long)]
        key: std::path::PathBuf,
        /// The publisher's name, as trusted with joch trust publisher add.
        #[arg(long)]
        publisher: String,
        /// Write the signed manifests here instead of stdout.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Check the signatures of the MCPServer manifests of a file (with --key, else with the
    /// cluster's trusted publishers); exit 1 when one does not verify.
    Verify {
        #[arg(short = 'f', long = "filename")]
        file: std::path::PathBuf,
        /// A public key, ed25519:BASE64 or a file (repeatable).
        #[arg(long = "key")]
        keys: Vec<String>,
    },
    /// Turn a server.json (the MCP Registry's format) into an MCPServer and apply it, or print
    /// it for review (`--dry-run`): from a file, or from any MCP Registry (`--from-registry`).
    #[command(disable_version_flag = true)]
    Import(super::import::ImportArgs),
    /// Per-server policy flags.
    Policy {
        #[command(subcommand)]
        cmd: McpPolicyCmd,
    },
    /// Who changed a server, what, when, at which log index; `--retention` shows (or, with
    /// `--keep`/`--max-age`, sets) how much history every replica keeps.
    History {
        #[arg(required_unless_present = "retention")]
        name: Option<String>,
        #[arg(long)]
        stale: bool,
        /// Show or set the retention instead.
        #[arg(long)]
        retention: bool,
        /// With --retention: lines kept per resource.
        #[arg(long, requires = "retention")]
        keep: Option<u32>,
        /// With --retention: drop lines older than this (e.g. 90d).
        #[arg(long, requires = "retention")]
        max_age: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum McpPolicyCmd {
    /// Set flags on a server.
    Set {
        name: String,
        /// Restrict the server to read tools.
        #[arg(long, conflicts_with = "read_write")]
        read_only: bool,
        /// Lift a read-only restriction.
        #[arg(long)]
        read_write: bool,
    },
}

/// `KEY=VALUE` arguments of `flag`, as a map (a specific error names the one that is not).
pub(super) fn parse_pairs(items: &[String], flag: &str) -> anyhow::Result<HashMap<String, String>> {
    items
        .iter()
        .map(|l| {
            l.split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow::anyhow!("{flag} {l:?}: expected KEY=VALUE"))
        })
        .collect()
}

/// The exit code of a write: 3 when the fleet acknowledgement was incomplete.
pub(super) fn done(complete: bool) -> ExitCode {
    if complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FLEET_INCOMPLETE)
    }
}

pub async fn mcp(g: &Global, cmd: McpCmd) -> anyhow::Result<ExitCode> {
    // An import reads a file or another registry first: a dry run needs no node.
    let cmd = match cmd {
        McpCmd::Import(a) => return super::import::import(g, a).await,
        McpCmd::Discover { name } => return super::discovery::discover(g, &name).await,
        McpCmd::Diff { name } => return super::discovery::diff(g, &name).await,
        McpCmd::Trust { name } => return super::trust::show(g, &name).await,
        McpCmd::Keygen { out } => return super::trust::keygen(&out),
        McpCmd::Sign { file, key, publisher, out } => {
            return super::trust::sign(&file, &key, &publisher, out.as_deref())
        }
        McpCmd::Verify { file, keys } => return super::trust::verify(g, &file, &keys).await,
        other => other,
    };
    let mut n = client::node(g).await?;
    let url = n.url.clone();
    let e = |s| status_err(&url, s);
    let (target, reply) = match cmd {
        McpCmd::Add(a) => {
            let AddArgs {
                name,
                endpoint,
                auth,
                secret_ref,
                header,
                token_url,
                scopes,
                audience,
                env,
                env_secrets,
                transport,
                stdio_command,
                stdio_args,
                allow_stdio,
                labels,
            } = *a;
            let r = pb::AddServerRequest {
                name: name.clone(),
                endpoint: endpoint.unwrap_or_default(),
                auth: auth.unwrap_or_default(),
                secret_ref: secret_ref.unwrap_or_default(),
                header: header.unwrap_or_default(),
                token_url: token_url.unwrap_or_default(),
                scopes,
                audience: audience.unwrap_or_default(),
                env: parse_pairs(&env, "--env")?,
                env_secrets: parse_pairs(&env_secrets, "--env-secret")?,
                transport: transport.unwrap_or_default(),
                stdio_command: stdio_command.unwrap_or_default(),
                stdio_args,
                allow_stdio,
                labels: parse_pairs(&labels, "--label")?,
            };
            (format!("mcpserver/{name}"), n.registry.add_server(req(r)).await.map_err(e)?.into_inner())
        }
        McpCmd::Ls { stale } => return list_servers(g, &mut n, stale).await,
        McpCmd::Pin { name, to } => {
            let r = pb::PinRequest { name: name.clone(), version: to };
            (format!("mcpserver/{name}"), n.registry.pin(req(r)).await.map_err(e)?.into_inner())
        }
        McpCmd::Upgrade { name, to, review } => {
            let r = pb::UpgradeRequest { name: name.clone(), version: to, review };
            (format!("mcpserver/{name}"), n.registry.upgrade(req(r)).await.map_err(e)?.into_inner())
        }
        McpCmd::Quarantine { name, reason } => {
            let r = pb::QuarantineRequest { name: name.clone(), reason };
            (format!("mcpserver/{name}"), n.registry.quarantine(req(r)).await.map_err(e)?.into_inner())
        }
        McpCmd::Unquarantine { name } => {
            let r = pb::NameRequest { name: name.clone() };
            (format!("mcpserver/{name}"), n.registry.unquarantine(req(r)).await.map_err(e)?.into_inner())
        }
        McpCmd::ApproveTool { tool } => {
            let server = tool.split('.').next().unwrap_or_default().to_string();
            let r = pb::ApproveToolRequest { tool };
            (format!("mcpserver/{server}"), n.registry.approve_tool(req(r)).await.map_err(e)?.into_inner())
        }
        McpCmd::Import(_)
        | McpCmd::Discover { .. }
        | McpCmd::Diff { .. }
        | McpCmd::Trust { .. }
        | McpCmd::Keygen { .. }
        | McpCmd::Sign { .. }
        | McpCmd::Verify { .. } => unreachable!("answered before connecting"),
        McpCmd::Policy { cmd: McpPolicyCmd::Set { name, read_only, read_write } } => {
            if !read_only && !read_write {
                anyhow::bail!("say --read-only or --read-write");
            }
            let r = pb::ServerPolicyRequest { name: name.clone(), read_only };
            (format!("mcpserver/{name}"), n.registry.set_server_policy(req(r)).await.map_err(e)?.into_inner())
        }
        McpCmd::History { retention: true, keep, max_age, stale, .. } => {
            if keep.is_some() || max_age.is_some() {
                let r = pb::Retention {
                    history_per_server: keep.unwrap_or(0),
                    history_max_age: max_age.unwrap_or_default(),
                    read_index: 0,
                };
                ("retention".to_string(), n.registry.set_retention(req(r)).await.map_err(e)?.into_inner())
            } else {
                let c = n.registry.clone();
                let r = settle(&url, || {
                    let mut c = c.clone();
                    async move { c.get_retention(req(pb::ListRequest { stale })).await }
                })
                .await?;
                if g.output != Format::Table {
                    output::data(
                        g.output,
                        &json!({"historyPerServer": r.history_per_server, "historyMaxAge": r.history_max_age}),
                    );
                } else {
                    say!("history kept: {} lines per resource, {} at most", r.history_per_server, r.history_max_age);
                }
                return Ok(ExitCode::SUCCESS);
            }
        }
        McpCmd::History { name, stale, .. } => {
            let name = name.unwrap_or_default();
            let c = n.registry.clone();
            let h = settle(&url, || {
                let mut c = c.clone();
                let r = pb::HistoryRequest { target: name.clone(), stale };
                async move { c.history(req(r)).await }
            })
            .await?;
            print_history(g.output, &h);
            return Ok(ExitCode::SUCCESS);
        }
    };
    Ok(done(output::write(g.output, &target, &reply)))
}

fn print_history(format: Format, h: &pb::HistoryReply) {
    if format != Format::Table {
        let v: Vec<Value> = h
            .changes
            .iter()
            .map(|c| {
                let at = c.at.clone().unwrap_or_default();
                json!({"target": c.target, "logIndex": at.index, "time": time(at.at_ms), "actor": at.actor, "action": c.action, "detail": c.detail})
            })
            .collect();
        output::data(format, &Value::Array(v));
        return;
    }
    let rows: Vec<Vec<String>> = h
        .changes
        .iter()
        .map(|c| {
            let at = c.at.clone().unwrap_or_default();
            vec![at.index.to_string(), time(at.at_ms), at.actor, c.action.clone(), c.detail.clone()]
        })
        .collect();
    table(&["INDEX", "TIME", "ACTOR", "ACTION", "DETAIL"], &rows);
}

async fn list_servers(g: &Global, n: &mut client::Node, stale: bool) -> anyhow::Result<ExitCode> {
    let c = n.registry.clone();
    let list = settle(&n.url, || {
        let mut c = c.clone();
        async move { c.list_servers(req(pb::ListRequest { stale })).await }
    })
    .await?;
    if g.output != Format::Table {
        output::data(g.output, &Value::Array(list.servers.iter().map(output::server_resource).collect()));
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = list
        .servers
        .iter()
        .map(|s| {
            let pinned = if s.pin_server_version { s.pinned_version.clone() } else { "-".into() };
            let mut flags = Vec::new();
            if s.read_only {
                flags.push("read-only".to_string());
            }
            if !s.pending_upgrade.is_empty() {
                flags.push(format!("upgrade {} pending", s.pending_upgrade));
            }
            if s.quarantined {
                flags.push(format!("reason: {}", s.quarantine_reason));
            }
            let updated = s.updated.clone().unwrap_or_default();
            vec![
                s.name.clone(),
                s.transport.clone(),
                s.endpoint.clone(),
                pinned,
                s.phase.clone(),
                time(updated.at_ms),
                flags.join("; "),
            ]
        })
        .collect();
    table(&["NAME", "TRANSPORT", "ENDPOINT", "PINNED", "PHASE", "UPDATED", "NOTES"], &rows);
    Ok(ExitCode::SUCCESS)
}

pub async fn apply(g: &Global, file: &Path) -> anyhow::Result<ExitCode> {
    let (source, text) = if file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).context("reading stdin")?;
        ("-".to_string(), s)
    } else {
        (
            file.display().to_string(),
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?,
        )
    };
    apply_text(g, source, text).await
}

/// Applies manifests given as text (`source` names them in errors).
pub(super) async fn apply_text(g: &Global, source: String, text: String) -> anyhow::Result<ExitCode> {
    let mut n = client::node(g).await?;
    let reply =
        n.registry.apply(req(pb::ApplyRequest { source, text })).await.map_err(|s| status_err(&n.url, s))?.into_inner();
    if g.output != Format::Table {
        let v: Vec<Value> = reply
            .results
            .iter()
            .map(|r| {
                output::write_value(
                    &format!("{}/{}", r.kind.to_lowercase(), r.name),
                    &r.write.clone().unwrap_or_default(),
                )
            })
            .collect();
        output::data(g.output, &Value::Array(v));
        return Ok(ExitCode::SUCCESS);
    }
    for r in &reply.results {
        let w = r.write.clone().unwrap_or_default();
        let verb = if w.changed { "configured" } else { "unchanged" };
        say!("{}/{} {verb}: {} [log index {}]", r.kind.to_lowercase(), r.name, w.summary, w.log_index);
    }
    Ok(ExitCode::SUCCESS)
}

fn kind_of(kind: &str) -> anyhow::Result<&'static str> {
    match kind.to_lowercase().as_str() {
        "mcpserver" | "mcpservers" | "mcp" => Ok("mcpserver"),
        "policy" | "policies" => Ok("policy"),
        "virtualserver" | "virtualservers" | "vs" => Ok("virtualserver"),
        other => anyhow::bail!("unknown resource kind {other:?}: expected mcpserver, policy or virtualserver"),
    }
}

pub async fn describe(g: &Global, kind: &str, name: &str, stale: bool) -> anyhow::Result<ExitCode> {
    let n = client::node(g).await?;
    let url = n.url.clone();
    let v = match kind_of(kind)? {
        "mcpserver" => {
            let c = n.registry.clone();
            let s = settle(&url, || {
                let mut c = c.clone();
                async move { c.get_server(req(pb::GetRequest { name: name.into(), stale })).await }
            })
            .await?;
            output::server_resource(&s)
        }
        "virtualserver" => {
            let all = virtual_servers(&n, stale).await?;
            all.into_iter()
                .find(|v| v["metadata"]["name"] == name)
                .ok_or_else(|| anyhow::anyhow!("virtual server {name:?} does not exist"))?
        }
        _ => {
            let c = n.registry.clone();
            let p = settle(&url, || {
                let mut c = c.clone();
                async move { c.get_policy(req(pb::GetRequest { name: name.into(), stale })).await }
            })
            .await?;
            output::policy_resource(&p)
        }
    };
    let format = if g.output == Format::Table { Format::Yaml } else { g.output };
    output::data(format, &v);
    Ok(ExitCode::SUCCESS)
}

pub async fn get(g: &Global, kind: &str, stale: bool) -> anyhow::Result<ExitCode> {
    let mut n = client::node(g).await?;
    match kind_of(kind)? {
        "mcpserver" => list_servers(g, &mut n, stale).await,
        "virtualserver" => {
            let all = virtual_servers(&n, stale).await?;
            if g.output != Format::Table {
                output::data(g.output, &Value::Array(all));
            } else {
                let rows: Vec<Vec<String>> = all
                    .iter()
                    .map(|v| {
                        let tools: Vec<String> = v["spec"]["tools"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|t| {
                                let exposed = t["name"].as_str().or(t["tool"].as_str()).unwrap_or_default();
                                format!(
                                    "{exposed} ({}.{})",
                                    t["server"].as_str().unwrap_or_default(),
                                    t["tool"].as_str().unwrap_or_default()
                                )
                            })
                            .collect();
                        vec![
                            v["metadata"]["name"].as_str().unwrap_or_default().to_string(),
                            v["status"]["endpoint"].as_str().unwrap_or_default().to_string(),
                            tools.join(", "),
                        ]
                    })
                    .collect();
                table(&["NAME", "ENDPOINT", "TOOLS"], &rows);
            }
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            let c = n.registry.clone();
            let list = settle(&n.url, || {
                let mut c = c.clone();
                async move { c.list_policies(req(pb::ListRequest { stale })).await }
            })
            .await?;
            if g.output != Format::Table {
                output::data(g.output, &Value::Array(list.policies.iter().map(output::policy_resource).collect()));
            } else {
                let rows: Vec<Vec<String>> = list
                    .policies
                    .iter()
                    .map(|p| {
                        let rules = serde_json::from_str::<Value>(&p.spec_json)
                            .ok()
                            .and_then(|v| v["rules"].as_array().map(|r| r.len()))
                            .unwrap_or(0);
                        let updated = p.updated.clone().unwrap_or_default();
                        vec![
                            p.name.clone(),
                            rules.to_string(),
                            p.generation.to_string(),
                            time(updated.at_ms),
                            updated.actor,
                        ]
                    })
                    .collect();
                table(&["NAME", "RULES", "GENERATION", "UPDATED", "BY"], &rows);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn virtual_servers(n: &client::Node, stale: bool) -> anyhow::Result<Vec<Value>> {
    let c = n.registry.clone();
    let list = settle(&n.url, || {
        let mut c = c.clone();
        async move { c.list_virtual_servers(req(pb::ListRequest { stale })).await }
    })
    .await?;
    Ok(list.manifests_json.iter().filter_map(|j| serde_json::from_str(j).ok()).collect())
}

pub async fn delete(g: &Global, kind: &str, name: &str) -> anyhow::Result<ExitCode> {
    let mut n = client::node(g).await?;
    let url = n.url.clone();
    let kind = kind_of(kind)?;
    let r = pb::NameRequest { name: name.into() };
    let reply = match kind {
        "mcpserver" => n.registry.delete_server(req(r)).await,
        "virtualserver" => n.registry.delete_virtual_server(req(r)).await,
        _ => n.registry.delete_policy(req(r)).await,
    }
    .map_err(|s| status_err(&url, s))?
    .into_inner();
    Ok(done(output::write(g.output, &format!("{kind}/{name}"), &reply)))
}
