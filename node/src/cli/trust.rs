//! Trust from the command line: `joch mcp trust NAME` (a server's score, component by
//! component), `joch mcp keygen|sign|verify` (a publisher's ed25519 signature over a manifest),
//! `joch trust ...` (trusted publishers, the third-party allow-list, the weights) and
//! `joch agbom show|diff` (an agent's bill of materials, also as CycloneDX 1.6).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use base64::Engine;
use clap::Subcommand;
use joch_proto::admin as pb;
use joch_raft_store::model::trust::{key_id, verifying_key, AllowList, TrustChange, Weights};
use ring::signature::KeyPair;
use serde::Deserialize;
use serde_json::{json, Value};

use super::audit::s;
use super::client::{self, req, settle, status_err};
use super::output::{self, table, time};
use super::registry::done;
use super::{Format, Global};
use crate::resource::manifest;

/// `joch trust ...`.
#[derive(Subcommand, Debug)]
pub enum TrustCmd {
    /// The trust settings: publishers and their keys, the allow-list, the weights.
    Show,
    /// The trusted-publisher list.
    Publisher {
        #[command(subcommand)]
        cmd: PublisherCmd,
    },
    /// The third-party allow-list (your security team's list of approved MCP servers).
    Allowlist {
        #[command(subcommand)]
        cmd: AllowlistCmd,
    },
    /// Set the weights of the score's components (those not given keep theirs).
    Weights {
        #[arg(long)]
        publisher: Option<f64>,
        #[arg(long)]
        signature: Option<f64>,
        #[arg(long)]
        stability: Option<f64>,
        #[arg(long)]
        poisoning: Option<f64>,
        #[arg(long)]
        traffic: Option<f64>,
        #[arg(long)]
        allowlist: Option<f64>,
    },
}

/// `joch trust publisher ...`.
#[derive(Subcommand, Debug)]
pub enum PublisherCmd {
    /// Trust a publisher, with its public keys (replaces the keys of one already trusted).
    Add {
        name: String,
        /// `ed25519:BASE64` (as `joch mcp keygen` prints it), or a file holding it (repeatable).
        #[arg(long = "key", required = true)]
        keys: Vec<String>,
    },
    /// Stop trusting a publisher.
    Rm { name: String },
    /// The trusted publishers.
    Ls,
}

/// `joch trust allowlist ...`.
#[derive(Subcommand, Debug)]
pub enum AllowlistCmd {
    /// Load an allow-list file (YAML or JSON: `servers`, `publishers`, `endpoints`), replacing
    /// the one loaded before.
    Apply {
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// Unload the allow-list (the component stops counting).
    Rm,
}

/// `joch agbom ...`.
#[derive(Subcommand, Debug)]
pub enum AgbomCmd {
    /// The servers an agent used: versions, capabilities, publishers, trust scores, since when
    /// (`-o cyclonedx` for a CycloneDX 1.6 BOM).
    Show {
        agent: String,
        /// How long to wait for the members' audit trails (default 5s).
        #[arg(long)]
        timeout: Option<String>,
    },
    /// What changed in an agent's dependencies since a time: pins, upgrades, quarantines,
    /// drift, trust scores, servers first used; who did it and when.
    Diff {
        agent: String,
        /// A duration back (24h, 7d) or a time (RFC 3339).
        #[arg(long, default_value = "24h")]
        since: String,
        #[arg(long)]
        timeout: Option<String>,
    },
}

fn score(v: &Value) -> String {
    v.as_f64().map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into())
}

async fn get_trust(g: &Global, name: &str) -> anyhow::Result<Value> {
    let n = client::node(g).await?;
    let c = n.registry.clone();
    let r = settle(&n.url, || {
        let mut c = c.clone();
        let r = pb::GetRequest { name: name.to_string(), stale: false };
        async move { c.get_trust(req(r)).await }
    })
    .await?;
    Ok(serde_json::from_str(&r.json)?)
}

/// `joch mcp trust NAME`.
pub async fn show(g: &Global, name: &str) -> anyhow::Result<ExitCode> {
    let v = get_trust(g, name).await?;
    if g.output != Format::Table {
        output::data(g.output, &v);
        return Ok(ExitCode::SUCCESS);
    }
    let t = &v["trust"];
    let min = match v["minTrustScore"].as_f64() {
        Some(m) if t["score"].as_f64().unwrap_or(0.0) < m => {
            format!(" (minTrustScore {m:.2}: BELOW, calls are denied)")
        }
        Some(m) => format!(" (minTrustScore {m:.2})"),
        None => String::new(),
    };
    say!("{name}: trust score {}{min}", score(&t["score"]));
    let rows: Vec<Vec<String>> = t["components"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| vec![s(&c["name"]), score(&c["weight"]), score(&c["value"]), s(&c["detail"])])
        .collect();
    table(&["COMPONENT", "WEIGHT", "VALUE", "WHY"], &rows);
    Ok(ExitCode::SUCCESS)
}

async fn write(g: &Global, target: &str, change: TrustChange) -> anyhow::Result<ExitCode> {
    let mut n = client::node(g).await?;
    let url = n.url.clone();
    let r = pb::TrustRequest { change_json: serde_json::to_string(&change)? };
    let w = n.registry.set_trust(req(r)).await.map_err(|s| status_err(&url, s))?.into_inner();
    Ok(done(output::write(g.output, target, &w)))
}

/// A public key given as `ed25519:BASE64` or in a file holding that.
fn public_key(arg: &str) -> anyhow::Result<[u8; 32]> {
    let text = if arg.starts_with("ed25519:") {
        arg.to_string()
    } else {
        std::fs::read_to_string(arg)
            .with_context(|| format!("--key {arg:?}: neither ed25519:BASE64 nor a readable file"))?
    };
    let b64 = text.trim().strip_prefix("ed25519:").ok_or_else(|| {
        anyhow::anyhow!("--key {arg:?}: a public key is written ed25519:BASE64 (joch mcp keygen prints one)")
    })?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| anyhow::anyhow!("--key {arg:?}: not base64: {e}"))?;
    raw.try_into()
        .map_err(|v: Vec<u8>| anyhow::anyhow!("--key {arg:?}: {} bytes, an ed25519 public key has 32", v.len()))
}

/// The allow-list file's shape.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowListFile {
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    servers: Vec<String>,
    #[serde(default)]
    publishers: Vec<String>,
    #[serde(default)]
    endpoints: Vec<String>,
}

/// `joch trust ...`.
pub async fn trust(g: &Global, cmd: TrustCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        TrustCmd::Show | TrustCmd::Publisher { cmd: PublisherCmd::Ls } => {
            let v = get_trust(g, "").await?;
            if g.output != Format::Table {
                output::data(g.output, &v);
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = v["publishers"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|p| {
                    let keys = p["keys"].as_array().cloned().unwrap_or_default();
                    keys.into_iter()
                        .map(|k| {
                            vec![
                                s(&p["name"]),
                                s(&k["id"]),
                                s(&k["key"]),
                                s(&p["addedBy"]),
                                time(p["addedAtMs"].as_u64().unwrap_or(0)),
                            ]
                        })
                        .collect::<Vec<_>>()
                })
                .collect();
            table(&["PUBLISHER", "KEY ID", "PUBLIC KEY", "ADDED BY", "ADDED"], &rows);
            if matches!(cmd, TrustCmd::Show) {
                let a = &v["allowlist"];
                say!("");
                if a["at"].is_null() {
                    say!("third-party allow-list: none loaded");
                } else {
                    say!(
                        "third-party allow-list: {} ({} servers, {} publishers, {} endpoints), loaded by {} at {}",
                        s(&a["source"]),
                        a["servers"].as_array().map_or(0, Vec::len),
                        a["publishers"].as_array().map_or(0, Vec::len),
                        a["endpoints"].as_array().map_or(0, Vec::len),
                        s(&a["at"]["actor"]),
                        time(a["at"]["at_ms"].as_u64().unwrap_or(0))
                    );
                }
                let w = &v["weights"];
                say!(
                    "weights: publisher {} signature {} stability {} poisoning {} traffic {} allowlist {}",
                    w["publisher"],
                    w["signature"],
                    w["stability"],
                    w["poisoning"],
                    w["traffic"],
                    w["allowlist"]
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        TrustCmd::Publisher { cmd: PublisherCmd::Add { name, keys } } => {
            let keys = keys.iter().map(|k| public_key(k)).collect::<anyhow::Result<Vec<_>>>()?;
            write(g, &format!("publisher/{name}"), TrustChange::SetPublisher { name: name.clone(), keys }).await
        }
        TrustCmd::Publisher { cmd: PublisherCmd::Rm { name } } => {
            write(g, &format!("publisher/{name}"), TrustChange::RemovePublisher { name: name.clone() }).await
        }
        TrustCmd::Allowlist { cmd: AllowlistCmd::Apply { file } } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let f: AllowListFile =
                serde_yaml_ng::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            if f.servers.is_empty() && f.publishers.is_empty() && f.endpoints.is_empty() {
                anyhow::bail!(
                    "{}: lists no servers, publishers or endpoints (joch trust allowlist rm unloads the list)",
                    file.display()
                );
            }
            let source = f
                .source
                .unwrap_or_else(|| file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
            let list =
                AllowList { source, servers: f.servers, publishers: f.publishers, endpoints: f.endpoints, at: None };
            write(g, "trust/allowlist", TrustChange::AllowList(list)).await
        }
        TrustCmd::Allowlist { cmd: AllowlistCmd::Rm } => {
            write(g, "trust/allowlist", TrustChange::AllowList(AllowList::default())).await
        }
        TrustCmd::Weights { publisher, signature, stability, poisoning, traffic, allowlist } => {
            let v = get_trust(g, "").await?;
            let mut w: Weights = serde_json::from_value(v["weights"].clone()).context("the node's weights")?;
            for (slot, given) in [
                (&mut w.publisher, publisher),
                (&mut w.signature, signature),
                (&mut w.stability, stability),
                (&mut w.poisoning, poisoning),
                (&mut w.traffic, traffic),
                (&mut w.allowlist, allowlist),
            ] {
                if let Some(x) = given {
                    *slot = x;
                }
            }
            w.check().map_err(|e| anyhow::anyhow!("{}: {}", e.field, e.message))?;
            write(g, "trust/weights", TrustChange::Weights(w)).await
        }
    }
}

/// `joch mcp keygen --out FILE`: an ed25519 key pair; the private key (PKCS#8) goes to FILE
/// (mode 0600), the public key to FILE.pub and stdout.
pub fn keygen(out: &Path) -> anyhow::Result<ExitCode> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| anyhow::anyhow!("no randomness"))?;
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| anyhow::anyhow!("bad key"))?;
    let public: [u8; 32] = pair.public_key().as_ref().try_into()?;
    let private = format!("ed25519-pkcs8:{}\n", base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref()));
    write_private(out, &private)?;
    let pub_path = PathBuf::from(format!("{}.pub", out.display()));
    let public_text = crate::admin::public_key_text(&public);
    std::fs::write(&pub_path, format!("{public_text}\n")).with_context(|| format!("writing {}", pub_path.display()))?;
    say!("{public_text}");
    eprintln!(
        "private key in {} (keep it secret), public key in {} (key id {}): trust it with joch trust publisher add NAME --key {}",
        out.display(),
        pub_path.display(),
        key_id(&public),
        pub_path.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {} (it must not exist)", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

fn private_key(path: &Path) -> anyhow::Result<ring::signature::Ed25519KeyPair> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let b64 = text
        .trim()
        .strip_prefix("ed25519-pkcs8:")
        .ok_or_else(|| anyhow::anyhow!("{}: not a private key written by joch mcp keygen", path.display()))?;
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    ring::signature::Ed25519KeyPair::from_pkcs8(&der)
        .map_err(|_| anyhow::anyhow!("{}: not an ed25519 PKCS#8 key", path.display()))
}

/// The kind of a document (`None` for one that does not parse).
fn kind_of(doc: &str) -> Option<String> {
    let v: Value = serde_yaml_ng::from_str(doc).ok()?;
    v.get("kind").and_then(Value::as_str).map(str::to_string)
}

/// Writes `spec.signature` into one MCPServer document written in block style, after `spec:`.
fn insert_signature(doc: &str, publisher: &str, value: &str) -> Result<String, String> {
    let lines: Vec<&str> = doc.split_inclusive('\n').collect();
    let at = lines.iter().position(|l| l.trim_end() == "spec:").ok_or("no `spec:` line (write spec in block style)")?;
    let indent = lines[at + 1..]
        .iter()
        .find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|l| l.len() - l.trim_start().len())
        .filter(|&i| i > 0)
        .ok_or("spec is empty")?;
    let pad = " ".repeat(indent);
    if lines[at + 1..].iter().any(|l| l.starts_with(&format!("{pad}signature:"))) {
        return Err("already signed: remove spec.signature to sign again".into());
    }
    let mut out: String = lines[..=at].concat();
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&format!("{pad}signature:\n{pad}{pad}publisher: {publisher}\n{pad}{pad}value: \"{value}\"\n"));
    out.push_str(&lines[at + 1..].concat());
    Ok(out)
}

/// `joch mcp sign -f FILE --key KEY --publisher NAME`: every MCPServer of the file signed,
/// printed (or written to `--out`); the rest as it was.
pub fn sign(file: &Path, key: &Path, publisher: &str, out: Option<&Path>) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let pair = private_key(key)?;
    let mut result = String::new();
    let mut signed = 0;
    let docs = manifest::documents(&text);
    for (i, (doc, line)) in docs.iter().enumerate() {
        if i > 0 || text.trim_start().starts_with("---") {
            result.push_str("---\n");
        }
        if kind_of(doc).as_deref() != Some("MCPServer") {
            result.push_str(doc);
            continue;
        }
        let document = manifest::signed_document(doc)
            .ok_or_else(|| anyhow::anyhow!("{}:{line}: not a YAML document", file.display()))?;
        let value = format!(
            "ed25519:{}",
            base64::engine::general_purpose::STANDARD.encode(pair.sign(document.as_bytes()).as_ref())
        );
        let with =
            insert_signature(doc, publisher, &value).map_err(|e| anyhow::anyhow!("{}:{line}: {e}", file.display()))?;
        // What a node will verify is what was signed.
        if manifest::signed_document(&with).as_deref() != Some(document.as_str()) {
            anyhow::bail!(
                "{}:{line}: the signed manifest does not read back the same (write spec in block style)",
                file.display()
            );
        }
        result.push_str(&with);
        signed += 1;
    }
    if signed == 0 {
        anyhow::bail!("{}: no MCPServer manifest to sign", file.display());
    }
    match out {
        Some(p) => std::fs::write(p, &result).with_context(|| format!("writing {}", p.display()))?,
        None => say_raw!("{result}"),
    }
    let public: [u8; 32] = pair.public_key().as_ref().try_into()?;
    eprintln!("signed {signed} MCPServer manifest(s) as {publisher} with key {}", key_id(&public));
    Ok(ExitCode::SUCCESS)
}

/// `joch mcp verify -f FILE [--key PUB]`: checks every MCPServer's signature, with the keys
/// given, else with the cluster's trusted publishers. Exit 1 when one does not verify.
pub async fn verify(g: &Global, file: &Path, keys: &[String]) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let given: Vec<[u8; 32]> = keys.iter().map(|k| public_key(k)).collect::<anyhow::Result<_>>()?;
    let cluster = if given.is_empty() { Some(get_trust(g, "").await?) } else { None };
    let mut failed = 0;
    let mut rows = Vec::new();
    for (doc, line) in manifest::documents(&text) {
        if kind_of(doc).as_deref() != Some("MCPServer") {
            continue;
        }
        let v: Value = serde_yaml_ng::from_str(doc).unwrap_or(Value::Null);
        let name = s(&v["metadata"]["name"]);
        let sig = &v["spec"]["signature"];
        let (ok, why) = if sig.is_null() {
            (false, "not signed".to_string())
        } else {
            let by = s(&sig["publisher"]);
            let keys: Vec<[u8; 32]> = match &cluster {
                None => given.clone(),
                Some(c) => c["publishers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| p["name"] == by.as_str())
                    .flat_map(|p| p["keys"].as_array().cloned().unwrap_or_default())
                    .filter_map(|k| public_key(k["key"].as_str().unwrap_or_default()).ok())
                    .collect(),
            };
            let document = manifest::signed_document(doc).unwrap_or_default();
            match (verifying_key(&keys, &document, &s(&sig["value"])), keys.is_empty()) {
                (Err(e), _) => (false, format!("signed by {by}: {e}")),
                (Ok(Some(k)), _) => (true, format!("signed by {by}: verifies (key {})", key_id(k))),
                (Ok(None), true) => {
                    (false, format!("signed by {by}, which is not a trusted publisher of this cluster"))
                }
                (Ok(None), false) => (false, format!("signed by {by}: does NOT verify with its {} key(s)", keys.len())),
            }
        };
        failed += usize::from(!ok);
        rows.push(vec![
            format!("{}:{line}", file.display()),
            name,
            if ok { "ok".into() } else { "FAILED".into() },
            why,
        ]);
    }
    if rows.is_empty() {
        anyhow::bail!("{}: no MCPServer manifest", file.display());
    }
    table(&["DOCUMENT", "MCPSERVER", "SIGNATURE", "WHY"], &rows);
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

async fn agbom_json(g: &Global, agent: &str, since_ms: u64, timeout: &Option<String>) -> anyhow::Result<Value> {
    let n = client::node(g).await?;
    let c = n.registry.clone();
    let timeout_ms = super::audit::timeout_ms(timeout)?;
    let r = settle(&n.url, || {
        let mut c = c.clone();
        let r = pb::AgbomRequest { agent: agent.to_string(), since_ms, timeout_ms };
        async move { c.agbom(req(r)).await }
    })
    .await?;
    Ok(serde_json::from_str(&r.json)?)
}

/// `joch agbom ...`.
pub async fn agbom(g: &Global, cmd: AgbomCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        AgbomCmd::Show { agent, timeout } => {
            let v = agbom_json(g, &agent, 0, &timeout).await?;
            match g.output {
                Format::Cyclonedx => output::data(Format::Json, &cyclonedx(&v)),
                Format::Json | Format::Yaml => output::data(g.output, &v),
                Format::Table => {
                    let servers = v["servers"].as_array().cloned().unwrap_or_default();
                    say!(
                        "AgBOM of agent {agent}: {} MCP server(s), at {}",
                        servers.len(),
                        time(v["generatedAtMs"].as_u64().unwrap_or(0))
                    );
                    let rows: Vec<Vec<String>> = servers
                        .iter()
                        .map(|x| {
                            let n = |k: &str| x[k].as_array().map_or(0, Vec::len);
                            vec![
                                s(&x["name"]),
                                s(&x["serverVersion"]),
                                s(&x["pinnedVersion"]),
                                s(&x["publisher"]),
                                score(&x["trustScore"]),
                                format!("{} tools, {} resources, {} prompts", n("tools"), n("resources"), n("prompts")),
                                if x["registered"] == false { "Unregistered".into() } else { s(&x["phase"]) },
                                time(x["firstUsedMs"].as_u64().unwrap_or(0)),
                                s(&x["calls"]),
                            ]
                        })
                        .collect();
                    table(
                        &[
                            "SERVER",
                            "VERSION",
                            "PINNED",
                            "PUBLISHER",
                            "TRUST",
                            "CAPABILITIES",
                            "PHASE",
                            "SINCE",
                            "CALLS",
                        ],
                        &rows,
                    );
                }
            }
            Ok(super::audit::partial(&v))
        }
        AgbomCmd::Diff { agent, since, timeout } => {
            let since_ms = super::audit::instant("since", &since)?;
            let v = agbom_json(g, &agent, since_ms, &timeout).await?;
            if g.output != Format::Table {
                output::data(
                    if g.output == Format::Yaml { Format::Yaml } else { Format::Json },
                    &json!({"agent": v["agent"], "sinceMs": v["sinceMs"], "changes": v["changes"], "unanswered": v["unanswered"]}),
                );
                return Ok(super::audit::partial(&v));
            }
            let rows: Vec<Vec<String>> = v["changes"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    vec![
                        time(c["atMs"].as_u64().unwrap_or(0)),
                        s(&c["server"]),
                        s(&c["actor"]),
                        s(&c["action"]),
                        s(&c["detail"]),
                    ]
                })
                .collect();
            if rows.is_empty() {
                say!("no changes to {agent}'s MCP servers since {}", time(since_ms));
            } else {
                table(&["TIME", "SERVER", "BY", "ACTION", "DETAIL"], &rows);
            }
            Ok(super::audit::partial(&v))
        }
    }
}

/// An AgBOM as a CycloneDX 1.6 BOM: the agent is the BOM's subject (`metadata.component`), each
/// MCP server a `service` it depends on, joch's findings in `joch:` properties.
pub fn cyclonedx(v: &Value) -> Value {
    let agent = s(&v["agent"]);
    let agent_ref = format!("agent:{agent}");
    let prop = |name: &str, value: String| json!({"name": format!("joch:{name}"), "value": value});
    let mut services = Vec::new();
    let mut refs = Vec::new();
    for x in v["servers"].as_array().into_iter().flatten() {
        let name = s(&x["name"]);
        let bom_ref = format!("mcpserver:{name}");
        let mut props = vec![prop("registered", s(&x["registered"]))];
        for (key, field) in [
            ("phase", "phase"),
            ("transport", "transport"),
            ("pinnedVersion", "pinnedVersion"),
            ("serverName", "serverName"),
            ("protocolVersion", "protocolVersion"),
            ("trustScore", "trustScore"),
            ("signedManifest", "signed"),
            ("schemaDrift", "schemaDrift"),
            ("quarantine", "quarantine"),
            ("calls", "calls"),
            ("denied", "denied"),
        ] {
            if !x[field].is_null() {
                props.push(prop(key, s(&x[field])));
            }
        }
        for (key, field) in
            [("firstUsed", "firstUsedMs"), ("lastUsed", "lastUsedMs"), ("lastDiscovery", "lastDiscoveryMs")]
        {
            if let Some(ms) = x[field].as_u64() {
                props.push(prop(key, time(ms)));
            }
        }
        for t in x["tools"].as_array().into_iter().flatten() {
            props.push(prop("tool", format!("{} sha256:{}", s(&t["name"]), s(&t["hash"]))));
        }
        for r in x["resources"].as_array().into_iter().flatten() {
            props.push(prop("resource", s(r)));
        }
        for p in x["prompts"].as_array().into_iter().flatten() {
            props.push(prop("prompt", s(p)));
        }
        let mut svc = json!({"bom-ref": bom_ref, "name": name, "x-trust-boundary": true, "properties": props});
        if let Some(p) = x["publisher"].as_str() {
            svc["provider"] = json!({"name": p});
        }
        if let Some(version) = x["serverVersion"].as_str().or(x["pinnedVersion"].as_str()).filter(|v| !v.is_empty()) {
            svc["version"] = json!(version);
        }
        if let Some(d) = x["description"].as_str() {
            svc["description"] = json!(d);
        }
        if let Some(e) = x["endpoint"].as_str().filter(|e| e.starts_with("http://") || e.starts_with("https://")) {
            svc["endpoints"] = json!([e]);
        }
        refs.push(bom_ref);
        services.push(svc);
    }
    let labels: Vec<Value> = v["agentLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, val)| prop(&format!("label:{k}"), s(val)))
        .collect();
    let uuid = {
        let mut b: [u8; 16] = rand::random();
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
        format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
    };
    let mut deps = vec![json!({"ref": agent_ref, "dependsOn": refs})];
    deps.extend(refs.iter().map(|r| json!({"ref": r})));
    json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "serialNumber": format!("urn:uuid:{uuid}"),
        "version": 1,
        "metadata": {
            "timestamp": time(v["generatedAtMs"].as_u64().unwrap_or(0)),
            "tools": {"components": [{"type": "application", "name": "joch", "version": env!("CARGO_PKG_VERSION")}]},
            "component": {"type": "application", "bom-ref": agent_ref, "name": agent, "description": "an AI agent, as joch's audit trail knows it", "properties": labels},
        },
        "services": services,
        "dependencies": deps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_goes_under_spec_at_its_indentation_once() {
        let doc = "apiVersion: joch.dev/v1alpha1\nkind: MCPServer\nmetadata:\n  name: x\nspec:\n  # the endpoint\n  endpoint:\n    url: http://h/mcp\n";
        let out = insert_signature(doc, "acme", "ed25519:AAAA").unwrap();
        assert!(
            out.contains("spec:\n  signature:\n    publisher: acme\n    value: \"ed25519:AAAA\"\n  # the endpoint\n"),
            "{out}"
        );
        assert_eq!(manifest::signed_document(&out), manifest::signed_document(doc));
        assert!(insert_signature(&out, "acme", "x").unwrap_err().contains("already signed"));
        assert!(insert_signature("kind: MCPServer\nspec: {a: 1}\n", "acme", "x").is_err());
    }

    #[test]
    fn a_cyclonedx_bom_names_the_agent_and_each_server_as_a_service_it_depends_on() {
        let v = json!({"agent": "alice", "agentLabels": {"env": "prod"}, "generatedAtMs": 1_700_000_000_000u64,
            "servers": [{"name": "time", "registered": true, "serverVersion": "1.2.0", "publisher": "acme",
                "endpoint": "http://127.0.0.1:1/mcp", "trustScore": 0.5, "tools": [{"name": "now", "hash": "ab"}],
                "resources": [], "prompts": [], "firstUsedMs": 1_700_000_000_000u64, "calls": 3}]});
        let b = cyclonedx(&v);
        assert_eq!(b["specVersion"], "1.6");
        assert_eq!(b["metadata"]["component"]["bom-ref"], "agent:alice");
        assert_eq!(b["services"][0]["provider"]["name"], "acme");
        assert_eq!(b["services"][0]["version"], "1.2.0");
        assert_eq!(b["dependencies"][0]["dependsOn"], json!(["mcpserver:time"]));
        let props = b["services"][0]["properties"].as_array().unwrap();
        assert!(props.contains(&json!({"name": "joch:tool", "value": "now sha256:ab"})), "{props:?}");
        assert!(b["serialNumber"].as_str().unwrap().starts_with("urn:uuid:"));
    }
}
