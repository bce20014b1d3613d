//! `joch admin token ...`, `joch agent ...`, `joch idp ...`, `joch secret ...`, `joch login`,
//! `joch whoami`: who may do what. Tokens are printed once, when created.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use joch_proto::admin as pb;
use serde_json::{json, Value};

use super::client::{self, req, settle, status_err, LoginConfig, LoginContext};
use super::output::{self, table, time};
use super::registry::parse_pairs;
use super::{Format, Global, EXIT_FLEET_INCOMPLETE};

#[derive(Subcommand, Debug)]
pub enum AdminCmd {
    /// Operators' tokens.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Create a token (printed once; the store keeps its hash).
    Create {
        name: String,
        /// viewer (reads), operator (quarantine, pin, apply, approvals) or admin (membership,
        /// tokens, agents, secrets, stdio servers).
        #[arg(long)]
        role: String,
    },
    /// List tokens (names and roles).
    Ls,
    /// Revoke a token (fleet-acknowledged).
    Revoke { name: String },
}

#[derive(Subcommand, Debug)]
pub enum AgentCmd {
    /// Create an agent; its token is printed once.
    Create {
        name: String,
        /// Label KEY=VALUE (repeatable); policies match them.
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    /// List agents.
    Ls,
    /// Revoke an agent (fleet-acknowledged): its token stops working, its sessions are cut.
    Revoke { name: String },
}

#[derive(Subcommand, Debug)]
pub enum IdpCmd {
    /// Add (or replace) an identity provider whose JWTs name agents.
    Add {
        name: String,
        /// The `iss` its tokens carry.
        #[arg(long)]
        issuer: String,
        /// The `aud` its tokens must carry.
        #[arg(long)]
        audience: String,
        /// Its public keys, a JWKS document.
        #[arg(long)]
        jwks_file: PathBuf,
        /// The claim naming the agent (default sub).
        #[arg(long, default_value = "sub")]
        name_claim: String,
        /// LABEL=CLAIM: a label taken from a claim (repeatable).
        #[arg(long = "label-claim")]
        label_claims: Vec<String>,
    },
    /// List identity providers.
    Ls,
    /// Remove an identity provider (its tokens stop working).
    Rm { name: String },
}

#[derive(Subcommand, Debug)]
pub enum SecretCmd {
    /// Create or replace a secret: KEY=VALUE from the command line and/or KEY=PATH from files.
    Set {
        name: String,
        /// KEY=VALUE (repeatable).
        #[arg(long = "from-literal")]
        literals: Vec<String>,
        /// KEY=PATH: the file's content (repeatable).
        #[arg(long = "from-file")]
        files: Vec<String>,
    },
    /// List secrets: names, keys and versions, never values.
    Ls,
    /// Delete a secret.
    Rm { name: String },
    /// Re-seal every secret under the current key-encryption key of the node it is sent to.
    RotateKek,
}

fn done(w: &pb::WriteReply) -> ExitCode {
    if w.fleet.as_ref().is_none_or(|f| f.complete) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FLEET_INCOMPLETE)
    }
}

fn print_token(g: &Global, kind: &str, r: &pb::TokenReply) {
    if g.output != Format::Table {
        output::data(g.output, &json!({"name": r.name, "token": r.token}));
        return;
    }
    say!("{kind} {:?} created. Its token (shown this once; the cluster keeps only its hash):\n{}", r.name, r.token);
}

pub async fn admin(g: &Global, cmd: AdminCmd) -> anyhow::Result<ExitCode> {
    let mut n = client::node(g).await?;
    let url = n.url.clone();
    let e = |s| status_err(&url, s);
    let AdminCmd::Token { cmd } = cmd;
    match cmd {
        TokenCmd::Create { name, role } => {
            let r = n.access.create_admin_token(req(pb::CreateTokenRequest { name, role })).await.map_err(e)?;
            print_token(g, "admin token", &r.into_inner());
        }
        TokenCmd::Ls => {
            let c = n.access.clone();
            let l = settle(&url, || {
                let mut c = c.clone();
                async move { c.list_admin_tokens(req(pb::ListRequest { stale: false })).await }
            })
            .await?;
            let rows: Vec<(String, String, pb::Stamp)> =
                l.tokens.into_iter().map(|t| (t.name, t.role, t.created.unwrap_or_default())).collect();
            if g.output != Format::Table {
                let v: Vec<Value> = rows
                    .iter()
                    .map(|(n, r, s)| json!({"name": n, "role": r, "created": time(s.at_ms), "createdBy": s.actor}))
                    .collect();
                output::data(g.output, &Value::Array(v));
            } else {
                let rows: Vec<Vec<String>> =
                    rows.into_iter().map(|(n, r, s)| vec![n, r, time(s.at_ms), s.actor]).collect();
                table(&["NAME", "ROLE", "CREATED", "BY"], &rows);
            }
        }
        TokenCmd::Revoke { name } => {
            let w = n.access.revoke_admin_token(req(pb::NameRequest { name: name.clone() })).await.map_err(e)?;
            let w = w.into_inner();
            output::write(g.output, &format!("admintoken/{name}"), &w);
            return Ok(done(&w));
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn agent(g: &Global, cmd: AgentCmd) -> anyhow::Result<ExitCode> {
    let mut n = client::node(g).await?;
    let url = n.url.clone();
    let e = |s| status_err(&url, s);
    match cmd {
        AgentCmd::Create { name, labels } => {
            let labels = parse_pairs(&labels, "--label")?;
            let r = n.access.create_agent(req(pb::CreateAgentRequest { name, labels })).await.map_err(e)?;
            print_token(g, "agent", &r.into_inner());
        }
        AgentCmd::Ls => {
            let c = n.access.clone();
            let l = settle(&url, || {
                let mut c = c.clone();
                async move { c.list_agents(req(pb::ListRequest { stale: false })).await }
            })
            .await?;
            if g.output != Format::Table {
                let v: Vec<Value> = l
                    .agents
                    .iter()
                    .map(|a| {
                        let s = a.created.clone().unwrap_or_default();
                        json!({"name": a.name, "labels": a.labels, "created": time(s.at_ms), "createdBy": s.actor})
                    })
                    .collect();
                output::data(g.output, &Value::Array(v));
            } else {
                let rows: Vec<Vec<String>> = l
                    .agents
                    .iter()
                    .map(|a| {
                        let s = a.created.clone().unwrap_or_default();
                        let mut labels: Vec<String> = a.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                        labels.sort();
                        vec![a.name.clone(), labels.join(","), time(s.at_ms), s.actor]
                    })
                    .collect();
                table(&["NAME", "LABELS", "CREATED", "BY"], &rows);
            }
        }
        AgentCmd::Revoke { name } => {
            let w = n.access.revoke_agent(req(pb::NameRequest { name: name.clone() })).await.map_err(e)?.into_inner();
            output::write(g.output, &format!("agent/{name}"), &w);
            return Ok(done(&w));
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn idp(g: &Global, cmd: IdpCmd) -> anyhow::Result<ExitCode> {
    let mut n = client::node(g).await?;
    let url = n.url.clone();
    let e = |s| status_err(&url, s);
    match cmd {
        IdpCmd::Add { name, issuer, audience, jwks_file, name_claim, label_claims } => {
            let jwks_json =
                std::fs::read_to_string(&jwks_file).with_context(|| format!("reading {}", jwks_file.display()))?;
            let label_claims = parse_pairs(&label_claims, "--label-claim")?;
            let r = pb::IdpRequest { name: name.clone(), issuer, audience, jwks_json, name_claim, label_claims };
            let w = n.access.set_idp(req(r)).await.map_err(e)?.into_inner();
            output::write(g.output, &format!("idp/{name}"), &w);
            return Ok(done(&w));
        }
        IdpCmd::Ls => {
            let c = n.access.clone();
            let l = settle(&url, || {
                let mut c = c.clone();
                async move { c.list_idps(req(pb::ListRequest { stale: false })).await }
            })
            .await?;
            if g.output != Format::Table {
                let v: Vec<Value> = l
                    .idps
                    .iter()
                    .map(|i| {
                        json!({"name": i.name, "issuer": i.issuer, "audience": i.audience, "nameClaim": i.name_claim,
                                    "labelClaims": i.label_claims, "keys": i.keys})
                    })
                    .collect();
                output::data(g.output, &Value::Array(v));
            } else {
                let rows: Vec<Vec<String>> = l
                    .idps
                    .iter()
                    .map(|i| {
                        vec![
                            i.name.clone(),
                            i.issuer.clone(),
                            i.audience.clone(),
                            i.name_claim.clone(),
                            i.keys.to_string(),
                        ]
                    })
                    .collect();
                table(&["NAME", "ISSUER", "AUDIENCE", "NAME CLAIM", "KEYS"], &rows);
            }
        }
        IdpCmd::Rm { name } => {
            let w = n.access.delete_idp(req(pb::NameRequest { name: name.clone() })).await.map_err(e)?.into_inner();
            output::write(g.output, &format!("idp/{name}"), &w);
            return Ok(done(&w));
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn secret(g: &Global, cmd: SecretCmd) -> anyhow::Result<ExitCode> {
    let mut n = client::node(g).await?;
    let url = n.url.clone();
    let e = |s| status_err(&url, s);
    match cmd {
        SecretCmd::Set { name, literals, files } => {
            let mut data = parse_pairs(&literals, "--from-literal")?;
            for (k, path) in parse_pairs(&files, "--from-file")? {
                let v = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
                data.insert(k, v);
            }
            if data.is_empty() {
                anyhow::bail!("give the values with --from-literal KEY=VALUE or --from-file KEY=PATH");
            }
            let w = n.access.set_secret(req(pb::SecretRequest { name: name.clone(), data })).await.map_err(e)?;
            let w = w.into_inner();
            output::write(g.output, &format!("secret/{name}"), &w);
            return Ok(done(&w));
        }
        SecretCmd::Ls => {
            let c = n.access.clone();
            let l = settle(&url, || {
                let mut c = c.clone();
                async move { c.list_secrets(req(pb::ListRequest { stale: false })).await }
            })
            .await?;
            if g.output != Format::Table {
                let v: Vec<Value> = l
                    .secrets
                    .iter()
                    .map(|s| {
                        let u = s.updated.clone().unwrap_or_default();
                        json!({"name": s.name, "keys": s.keys, "version": s.version, "updated": time(u.at_ms),
                               "updatedBy": u.actor, "kekIds": s.kek_ids})
                    })
                    .collect();
                output::data(g.output, &Value::Array(v));
            } else {
                let rows: Vec<Vec<String>> = l
                    .secrets
                    .iter()
                    .map(|s| {
                        let u = s.updated.clone().unwrap_or_default();
                        vec![
                            s.name.clone(),
                            s.keys.join(","),
                            s.version.to_string(),
                            time(u.at_ms),
                            s.kek_ids.join(","),
                        ]
                    })
                    .collect();
                table(&["NAME", "KEYS", "VERSION", "UPDATED", "SEALED UNDER"], &rows);
            }
        }
        SecretCmd::Rm { name } => {
            let w = n.access.delete_secret(req(pb::NameRequest { name: name.clone() })).await.map_err(e)?.into_inner();
            output::write(g.output, &format!("secret/{name}"), &w);
            return Ok(done(&w));
        }
        SecretCmd::RotateKek => {
            let w = n.access.rotate_kek(req(pb::Empty {})).await.map_err(e)?.into_inner();
            output::write(g.output, "secrets", &w);
            return Ok(done(&w));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `joch cluster rotate-session-key`.
pub async fn rotate_session_key(g: &Global) -> anyhow::Result<ExitCode> {
    let mut n = client::node(g).await?;
    let w = n.access.rotate_session_key(req(pb::Empty {})).await.map_err(|s| status_err(&n.url, s))?.into_inner();
    output::write(g.output, "cluster/session-keys", &w);
    Ok(done(&w))
}

/// `joch whoami`.
pub async fn whoami(g: &Global) -> anyhow::Result<ExitCode> {
    let mut n = client::node(g).await?;
    let op = n.access.who_am_i(req(pb::Empty {})).await.map_err(|s| status_err(&n.url, s))?.into_inner();
    if g.output != Format::Table {
        output::data(g.output, &json!({"name": op.name, "role": op.role, "server": n.url}));
    } else {
        say!("{} ({}) on {}", op.name, op.role, n.url);
    }
    Ok(ExitCode::SUCCESS)
}

/// `joch login`: checks the token against the node, then saves a context.
pub async fn login(g: &Global, context: String, token_file: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    g.server.as_ref().context("give the node to log in to with --server URL")?;
    let token = match (token_file, std::env::var("JOCH_TOKEN").ok().filter(|t| !t.is_empty())) {
        (Some(f), _) => {
            std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?.trim().to_string()
        }
        (None, Some(t)) => t,
        (None, None) => {
            eprint!("admin token: ");
            let mut t = String::new();
            std::io::stdin().read_line(&mut t).context("reading the token from stdin")?;
            t.trim().to_string()
        }
    };
    let url = client::target(g).url;
    let ca = g.ca.clone().map(|p| std::fs::canonicalize(&p).unwrap_or(p));
    let mut n = client::connect_with(&url, ca.as_deref()).await?;
    client::use_token(Some(token.clone()));
    let op = n.access.who_am_i(req(pb::Empty {})).await.map_err(|s| status_err(&url, s))?.into_inner();
    let mut cfg = LoginConfig::load()?;
    cfg.contexts.insert(context.clone(), LoginContext { server: url.clone(), token: Some(token), ca });
    cfg.current_context = Some(context.clone());
    let path = cfg.save()?;
    say!("logged in to {url} as {} ({}); context {context:?} saved in {}", op.name, op.role, path.display());
    Ok(ExitCode::SUCCESS)
}
