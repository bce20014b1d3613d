//! `joch mcp import`: a `server.json` (from a file, or from any MCP Registry) as an MCPServer
//! manifest, applied or printed for review.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use serde_json::{json, Value};

use super::{Format, Global};
use crate::catalog::server_json;

/// `joch mcp import`.
#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// A server.json file (`-`: stdin).
    #[arg(short = 'f', long = "file", required_unless_present = "from_registry", conflicts_with = "from_registry")]
    file: Option<PathBuf>,
    /// An MCP Registry's base URL (e.g. https://registry.modelcontextprotocol.io).
    #[arg(long, requires = "name")]
    from_registry: Option<String>,
    /// With --from-registry: the server's name there (NAMESPACE/NAME).
    #[arg(long, requires = "from_registry")]
    name: Option<String>,
    /// With --from-registry: the version (default latest).
    #[arg(long = "version", id = "server_version", requires = "from_registry")]
    version: Option<String>,
    /// A bearer token for the registry (a joch fleet's registry lists what that agent may use).
    #[arg(long, env = "JOCH_REGISTRY_TOKEN", hide_env_values = true)]
    registry_token: Option<String>,
    /// The MCPServer's name (default: the part of the server.json name after '/').
    #[arg(long = "as")]
    as_name: Option<String>,
    /// Print the manifest (and what to do before applying it) instead of applying it.
    #[arg(long)]
    dry_run: bool,
}

/// Percent-encodes a path segment (a registry server name holds a '/').
fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The server.json of `name` at `version` in the registry at `base`.
async fn fetch(base: &str, name: &str, version: &str, token: Option<&str>) -> anyhow::Result<Value> {
    let url = format!("{}/v0.1/servers/{}/versions/{}", base.trim_end_matches('/'), segment(name), segment(version));
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30)).build()?;
    let mut req = client.get(&url).header("accept", "application/json");
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.with_context(|| format!("cannot reach the registry at {url}"))?;
    let status = resp.status();
    let bytes = resp.bytes().await.with_context(|| format!("reading the answer of {url}"))?;
    let body: Value = serde_json::from_slice(&bytes).with_context(|| format!("{url} did not answer JSON"))?;
    if !status.is_success() {
        let why = body["error"].as_str().map(str::to_string).unwrap_or_else(|| body.to_string());
        anyhow::bail!("{url} answered {status}: {why}");
    }
    body.get("server")
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("{url}: the answer has no `server` (not a ServerResponse)"))
}

pub async fn import(g: &Global, a: ImportArgs) -> anyhow::Result<ExitCode> {
    let (source, sj) = match (&a.file, &a.from_registry) {
        (Some(f), _) => {
            let text = if f.as_os_str() == "-" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).context("reading stdin")?;
                s
            } else {
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?
            };
            let v: Value =
                serde_json::from_str(&text).with_context(|| format!("{}: not a server.json (JSON)", f.display()))?;
            (f.display().to_string(), v)
        }
        (None, Some(base)) => {
            let name = a.name.as_deref().unwrap_or_default();
            let version = a.version.as_deref().unwrap_or("latest");
            (format!("{base} {name}@{version}"), fetch(base, name, version, a.registry_token.as_deref()).await?)
        }
        (None, None) => anyhow::bail!("give a server.json with -f FILE, or --from-registry URL --name NAME"),
    };
    let (manifest, notes) =
        server_json::manifest(&sj, a.as_name.as_deref()).map_err(|e| anyhow::anyhow!("{source}: {e}"))?;
    if a.dry_run {
        match g.output {
            Format::Json => println!("{}", json!({ "manifest": manifest, "notes": notes })),
            _ => {
                print!("{manifest}");
                for n in &notes {
                    eprintln!("note: {n}");
                }
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let code = super::registry::apply_text(g, source, manifest).await?;
    for n in &notes {
        eprintln!("note: {n}");
    }
    Ok(code)
}
