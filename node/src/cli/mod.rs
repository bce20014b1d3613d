//! The operator CLI and `joch serve`. Every command but `serve`, `dev` and `cluster ca` is a
//! client of a node's gRPC admin API.

#[macro_use]
mod output;
mod client;
mod cluster;
mod dev;
mod registry;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Exit code: the write was committed but not every member confirmed applying it in time.
pub const EXIT_FLEET_INCOMPLETE: u8 = 3;

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
    /// http://127.0.0.1:7100.
    #[arg(long, global = true, env = "JOCH_SERVER")]
    pub server: Option<String>,
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
        /// mcpservers | policies
        kind: String,
        /// Read this node's local copy instead of a linearizable read.
        #[arg(long)]
        stale: bool,
    },
    /// Delete a resource.
    Delete {
        /// mcpserver | policy
        kind: String,
        /// Resource name.
        name: String,
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
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
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
    match rt.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", output::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let g = cli.global;
    match cli.command {
        Cmd::Serve(_) => unreachable!("handled before the runtime starts"),
        Cmd::Mcp { cmd } => registry::mcp(&g, cmd).await,
        Cmd::Apply { file } => registry::apply(&g, &file).await,
        Cmd::Describe { kind, name, stale } => registry::describe(&g, &kind, &name, stale).await,
        Cmd::Get { kind, stale } => registry::get(&g, &kind, stale).await,
        Cmd::Delete { kind, name } => registry::delete(&g, &kind, &name).await,
        Cmd::Cluster { cmd } => cluster::run(&g, cmd).await,
        Cmd::Dev { cmd } => dev::run(&g, cmd).await,
    }
}
