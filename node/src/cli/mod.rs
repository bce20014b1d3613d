//! The operator CLI and `joch serve`. Every command but `serve`, `dev` and `cluster ca` is a
//! client of a node's gRPC admin API.

#[macro_use]
mod output;
mod access;
mod audit;
mod client;
mod cluster;
mod dev;
mod discovery;
mod guard;
mod import;
mod policy;
mod registry;
mod serve;
mod trust;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Exit code: the write was committed but not every member confirmed applying it in time.
pub const EXIT_FLEET_INCOMPLETE: u8 = 3;
/// Exit code: no token, or a token the node does not accept.
pub const EXIT_UNAUTHENTICATED: u8 = 4;
/// Exit code: the token's role does not allow the command.
pub const EXIT_PERMISSION_DENIED: u8 = 5;

/// joch: a governance gateway for the Model Context Protocol.
#[derive(Parser, Debug)]
#[command(name = "joch", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Cmd,
}

/// Options for every client command.
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Admin URL of the node to talk to (any node works). Default: node 1 of ./.joch-dev, else
    /// the current context of `joch login`, else https://127.0.0.1:7100. The operator's token
    /// comes from JOCH_TOKEN, else ./.joch-dev, else the login context.
    /// (`--node` is the same; under `policy explain`, where `--server` names the MCP server, use
    /// `--node`.)
    #[arg(long, visible_alias = "node", global = true, env = "JOCH_SERVER")]
    pub server: Option<String>,
    /// The cluster CA's certificate, to verify the node (default: ./.joch-dev's, else the login
    /// context's).
    #[arg(long, global = true, env = "JOCH_CA")]
    pub ca: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// Output formats.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Human-readable tables.
    Table,
    /// JSON.
    Json,
    /// YAML.
    Yaml,
    /// CycloneDX 1.6 JSON (`joch agbom show`; other commands print JSON).
    Cyclonedx,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run a node.
    Serve(serve::ServeArgs),
    /// Manage MCP servers.
    Mcp {
        #[command(subcommand)]
        cmd: registry::McpCmd,
    },
    /// Apply MCPServer and Policy manifests (YAML or JSON; `-f -` reads stdin).
    Apply {
        /// Manifest file.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// Policies: list, explain a decision, test policy files against expected decisions.
    Policy {
        #[command(subcommand)]
        cmd: policy::PolicyCmd,
    },
    /// Calls held for an operator's approval: list, approve, deny.
    Approvals {
        #[command(subcommand)]
        cmd: policy::ApprovalsCmd,
    },
    /// Show one resource in full.
    Describe {
        /// mcpserver | policy
        kind: String,
        /// Resource name.
        name: String,
        /// Read this node's local copy instead of a linearizable read.
        #[arg(long)]
        stale: bool,
    },
    /// List resources.
    Get {
        /// mcpservers | policies | virtualservers | toolcalls
        kind: String,
        /// Read this node's local copy instead of a linearizable read.
        #[arg(long)]
        stale: bool,
        /// For `toolcalls`: which calls.
        #[command(flatten)]
        filter: audit::Filter,
    },
    /// Denied calls from every member's audit trail.
    Denials {
        #[command(subcommand)]
        cmd: audit::DenialsCmd,
    },
    /// Every record of one execution (`exec-...`, as the agent saw it in `_meta` or a denial),
    /// or of one W3C trace id, from every member in time order.
    Trace {
        /// The execution id, or a 32-hex trace id.
        id: String,
        /// How long to wait for the members (default 5s).
        #[arg(long)]
        timeout: Option<String>,
    },
    /// Seed 003's rollout gates, fleet-wide: each value against its target; exits 1 when one
    /// blocks.
    Gates {
        /// Count "immediate stop" events since (a duration back or an RFC 3339 time; default 24h).
        #[arg(long)]
        since: Option<String>,
        /// How long to wait for the members (default 5s).
        #[arg(long)]
        timeout: Option<String>,
    },
    /// The audit trail itself.
    Audit {
        #[command(subcommand)]
        cmd: audit::AuditCmd,
    },
    /// Delete a resource.
    Delete {
        /// mcpserver | policy
        kind: String,
        /// Resource name.
        name: String,
    },
    /// Trust: publishers and their keys, the third-party allow-list, the score's weights
    /// (`joch mcp trust NAME` shows a server's score).
    Trust {
        #[command(subcommand)]
        cmd: trust::TrustCmd,
    },
    /// An agent's bill of materials: the MCP servers it depends on, and what changed in them.
    Agbom {
        #[command(subcommand)]
        cmd: trust::AgbomCmd,
    },
    /// The content guard: feeds of patterns, and an offline scan of a file.
    Guard {
        #[command(subcommand)]
        cmd: guard::GuardCmd,
    },
    /// Cluster membership, status and certificates.
    Cluster {
        #[command(subcommand)]
        cmd: cluster::ClusterCmd,
    },
    /// A local cluster for development and the quick start.
    Dev {
        #[command(subcommand)]
        cmd: dev::DevCmd,
    },
    /// Operators' tokens.
    Admin {
        #[command(subcommand)]
        cmd: access::AdminCmd,
    },
    /// Agents (their tokens).
    Agent {
        #[command(subcommand)]
        cmd: access::AgentCmd,
    },
    /// Identity providers whose JWTs name agents.
    Idp {
        #[command(subcommand)]
        cmd: access::IdpCmd,
    },
    /// Secrets for upstream credentials (sealed; values are never shown).
    Secret {
        #[command(subcommand)]
        cmd: access::SecretCmd,
    },
    /// Check a token against a node and save it as the current context (kubeconfig-style).
    Login {
        /// The context's name.
        #[arg(long, default_value = "default")]
        context: String,
        /// Read the token from this file (else JOCH_TOKEN, else stdin).
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// The operator the current token names.
    Whoami,
    /// Run the small demo MCP server shipped with joch (tools echo, add, utc_now; what `joch dev
    /// up` registers as `demo`).
    DemoServer {
        /// Address to listen on (streamable HTTP on /mcp).
        #[arg(long, default_value = "127.0.0.1:7300")]
        listen: std::net::SocketAddr,
        /// Write the bound address to this file.
        #[arg(long)]
        addr_file: Option<PathBuf>,
    },
    /// GET a plain-HTTP URL (a node's `/readyz`, say) and exit 0 on a 2xx answer, 1 otherwise: a
    /// container's health check, in an image that holds nothing but joch.
    Probe {
        /// The URL (`http://127.0.0.1:8080/readyz`).
        url: String,
        /// How long to wait for the answer.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let mut cli = Cli::parse_from(policy::explain_args(std::env::args_os().collect()));
    // `--node N` with a member id (not a URL) narrows an audit question to that member.
    let member = match &cli.command {
        Cmd::Get { .. } | Cmd::Denials { .. } | Cmd::Trace { .. } | Cmd::Audit { .. } => {
            audit::member_of(&mut cli.global)
        }
        _ => None,
    };
    if let Cmd::Serve(args) = cli.command {
        return serve::run(args);
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let t = client::target(&cli.global);
    client::use_token(t.token);
    client::use_ca(t.ca);
    match rt.block_on(dispatch(cli, member)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", output::error_chain(&e));
            match e.downcast_ref::<client::StatusError>().map(|s| s.code) {
                Some(tonic::Code::Unauthenticated) => ExitCode::from(EXIT_UNAUTHENTICATED),
                Some(tonic::Code::PermissionDenied) => ExitCode::from(EXIT_PERMISSION_DENIED),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

async fn dispatch(cli: Cli, member: Option<u64>) -> anyhow::Result<ExitCode> {
    let g = cli.global;
    match cli.command {
        Cmd::Serve(_) => unreachable!("handled before the runtime starts"),
        Cmd::Mcp { cmd } => registry::mcp(&g, cmd).await,
        Cmd::Apply { file } => registry::apply(&g, &file).await,
        Cmd::Policy { cmd } => policy::run(&g, cmd).await,
        Cmd::Approvals { cmd } => policy::approvals(&g, cmd).await,
        Cmd::Describe { kind, name, stale } => registry::describe(&g, &kind, &name, stale).await,
        Cmd::Get { kind, filter, .. } if audit::is_toolcalls(&kind) => audit::toolcalls(&g, &filter, member).await,
        Cmd::Get { kind, stale, filter } => {
            audit::not_a_call_query(&kind, &filter)?;
            registry::get(&g, &kind, stale).await
        }
        Cmd::Denials { cmd } => audit::denials(&g, cmd, member).await,
        Cmd::Trace { id, timeout } => audit::trace(&g, &id, member, &timeout).await,
        Cmd::Audit { cmd } => audit::audit(&g, cmd, member).await,
        Cmd::Gates { since, timeout } => audit::gates(&g, &since, &timeout).await,
        Cmd::Delete { kind, name } => registry::delete(&g, &kind, &name).await,
        Cmd::Trust { cmd } => trust::trust(&g, cmd).await,
        Cmd::Agbom { cmd } => trust::agbom(&g, cmd).await,
        Cmd::Guard { cmd } => guard::run(&g, cmd).await,
        Cmd::Cluster { cmd } => cluster::run(&g, cmd).await,
        Cmd::Dev { cmd } => dev::run(&g, cmd).await,
        Cmd::Admin { cmd } => access::admin(&g, cmd).await,
        Cmd::Agent { cmd } => access::agent(&g, cmd).await,
        Cmd::Idp { cmd } => access::idp(&g, cmd).await,
        Cmd::Secret { cmd } => access::secret(&g, cmd).await,
        Cmd::Login { context, token_file } => access::login(&g, context, token_file).await,
        Cmd::Whoami => access::whoami(&g).await,
        Cmd::DemoServer { listen, addr_file } => {
            crate::demo::serve(listen, addr_file).await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Probe { url, timeout } => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let client = reqwest::Client::builder().timeout(timeout).build()?;
            match client.get(&url).send().await {
                Ok(r) if r.status().is_success() => Ok(ExitCode::SUCCESS),
                Ok(r) => {
                    say!("{url}: {}", r.status());
                    Ok(ExitCode::FAILURE)
                }
                Err(e) => {
                    say!("{url}: {e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// clap checks its command tree only when a command is built: every subcommand's definition
    /// (unique names, flags that do not clash with `--version`) is checked here, not by a user.
    #[test]
    fn every_command_is_well_formed() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
