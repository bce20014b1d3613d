//! `server.json` (the MCP Registry's server format) both ways: a registered server as this
//! fleet serves it ([`entry`]), and a `server.json` as an MCPServer manifest to review and apply
//! ([`manifest`]). Pure: no I/O.

use std::fmt::Write as _;

use joch_raft_store::ServerRecord;
use serde_json::{json, Value};

/// The `_meta` key of registry metadata (status, times) in the generic API's responses.
pub const OFFICIAL: &str = "io.modelcontextprotocol.registry/official";
/// The `_meta` key of joch's own metadata.
pub const JOCH: &str = "dev.joch/governance";

/// The version of a server that has none pinned.
pub const UNPINNED: &str = "0.0.0-unpinned";

/// The version a server is served under: its pinned version (`joch mcp pin`, or what an import
/// recorded), else [`UNPINNED`].
pub fn version(rec: &ServerRecord) -> String {
    rec.spec.security.pinned_version.clone().unwrap_or_else(|| UNPINNED.into())
}

/// The name a server is served under: `NAMESPACE/NAME`.
pub fn name(namespace: &str, rec: &ServerRecord) -> String {
    format!("{namespace}/{}", rec.name)
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()
}

/// A `ServerResponse`: the server's `server.json` as this fleet offers it (reached only through
/// `base`/mcp/NAME), and registry metadata.
pub fn entry(rec: &ServerRecord, namespace: &str, base: &str) -> Value {
    let description = match &rec.spec.description {
        Some(d) => d.chars().take(100).collect::<String>(),
        None => format!("MCP server {} through the joch gateway", rec.name).chars().take(100).collect(),
    };
    let mut server = json!({
        "name": name(namespace, rec),
        "title": rec.name,
        "description": description,
        "version": version(rec),
        "remotes": [{"type": "streamable-http", "url": format!("{}/mcp/{}", base.trim_end_matches('/'), rec.name)}],
    });
    if let Some(p) = &rec.spec.publisher {
        server["_meta"] = json!({"io.modelcontextprotocol.registry/publisher-provided": {"publisher": p}});
    }
    json!({
        "server": server,
        "_meta": {
            OFFICIAL: {
                "status": "active",
                "publishedAt": rfc3339(rec.created.at_ms),
                "updatedAt": rfc3339(rec.updated.at_ms),
                "isLatest": true,
            },
            JOCH: {
                "server": rec.name,
                "phase": rec.phase(),
                "generation": rec.generation,
                "pinned": rec.spec.security.pin_server_version,
                "transport": rec.spec.transport.as_str(),
                "publisher": rec.spec.publisher,
                "trustedPublisher": rec.spec.security.trusted_publisher,
                "labels": rec.labels,
            },
        },
    })
}

/// A `server.json` as an MCPServer manifest (YAML, commented where an operator must act), and
/// notes about what was not carried over. `name`: the MCPServer's name (default: from the
/// server.json name). An error names the field that cannot be imported.
pub fn manifest(sj: &Value, name: Option<&str>) -> Result<(String, Vec<String>), String> {
    let full = sj.get("name").and_then(Value::as_str).ok_or("name: missing (a server.json needs a name)")?;
    let (namespace, short) = full
        .split_once('/')
        .ok_or_else(|| format!("name: {full:?} is not NAMESPACE/NAME (e.g. io.github.acme/weather)"))?;
    let name = match name {
        Some(n) => n.to_string(),
        None => joch_name(short),
    };
    joch_raft_store::model::validate::check_name("--as", &name)
        .map_err(|e| format!("{e} (server.json name {full:?}: choose a name with --as)"))?;
    let mut notes = Vec::new();
    let mut y = String::new();
    let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let _ = writeln!(y, "# Imported from server.json {full:?}; review before applying.");
    let _ = writeln!(y, "apiVersion: joch.dev/v1alpha1\nkind: MCPServer\nmetadata:\n  name: {name}\nspec:");
    if let Some(d) = sj.get("description").and_then(Value::as_str) {
        let d: String = d.chars().take(100).collect();
        let _ = writeln!(y, "  description: {}", q(&d));
    }
    let _ = writeln!(y, "  publisher: {}", q(namespace));
    let remote = list(sj, "remotes").find(|r| r.get("type").and_then(Value::as_str) == Some("streamable-http"));
    let stdio = list(sj, "packages").find(|p| p.pointer("/transport/type").and_then(Value::as_str) == Some("stdio"));
    if let Some(r) = remote {
        let url = r.get("url").and_then(Value::as_str).ok_or("remotes[].url: missing")?;
        let url = resolve(url, r.get("variables"), "the endpoint URL", &mut notes);
        let _ = writeln!(y, "  transport: streamable_http\n  endpoint:\n    url: {}", q(&url));
        let secrets: Vec<&Value> =
            list(r, "headers").filter(|h| h.get("isSecret").and_then(Value::as_bool).unwrap_or(false)).collect();
        if let Some(h) = secrets.first() {
            let header = h.get("name").and_then(Value::as_str).unwrap_or("Authorization");
            let secret = format!("{name}-{}", joch_name(header));
            if header.eq_ignore_ascii_case("authorization") {
                let _ = writeln!(y, "  auth:\n    type: bearer\n    secretRef: {{ name: {secret} }}   # joch secret set {secret} --from-literal token=...");
            } else {
                let _ = writeln!(y, "  auth:\n    type: header\n    header: {}\n    secretRef: {{ name: {secret} }}   # joch secret set {secret} --from-literal token=...", q(header));
            }
            notes.push(format!("fill the secret {secret} with the value of the {header} header"));
            if secrets.len() > 1 {
                notes.push(
                    "more than one secret header: joch presents one upstream credential; the others are left out"
                        .into(),
                );
            }
        }
    } else if let Some(p) = stdio {
        let (command, args) = stdio_command(p, &mut notes)?;
        let _ = writeln!(y, "  transport: stdio\n  stdio:\n    command: {}", q(&command));
        let _ = writeln!(y, "    args: [{}]", args.iter().map(|a| q(a)).collect::<Vec<_>>().join(", "));
        let env: Vec<&Value> = list(p, "environmentVariables").collect();
        if !env.is_empty() {
            let _ = writeln!(y, "    env:");
        }
        for e in env {
            let Some(var) = e.get("name").and_then(Value::as_str) else { continue };
            if e.get("isSecret").and_then(Value::as_bool).unwrap_or(false) {
                let secret = format!("{name}-{}", joch_name(var));
                let _ = writeln!(y, "      {var}: {{ secretRef: {{ name: {secret}, key: {} }} }}", q(var));
                notes.push(format!("fill the secret {secret} (key {var})"));
            } else if let Some(v) = e.get("value").or_else(|| e.get("default")).and_then(Value::as_str) {
                let _ = writeln!(y, "      {var}: {}", q(v));
            } else if e.get("isRequired").and_then(Value::as_bool).unwrap_or(false) {
                let _ = writeln!(y, "      {var}: \"\"   # required: set its value");
                notes.push(format!("the environment variable {var} is required and has no value"));
            }
        }
        let _ = writeln!(y, "  security:\n    allowStdio: false   # a local process: enable after review (joch apply with allowStdio: true)");
        notes.push("a stdio server: it stays disabled (allowStdio: false) until an operator enables it, and runs only on nodes whose stdio.allow lists its command".into());
    } else {
        return Err(
            "no remote of type streamable-http and no package with transport stdio: nothing joch can proxy (SSE-only remotes and local HTTP packages are not supported)".into(),
        );
    }
    if let Some(v) = sj.get("version").and_then(Value::as_str).filter(|v| *v != UNPINNED) {
        match joch_raft_store::model::validate::check_version("version", v) {
            Ok(()) => {
                // Recorded as the served version; enforced once discovery confirms what the server reports.
                if !y.contains("  security:\n") {
                    let _ = writeln!(y, "  security:");
                }
                let _ = writeln!(y, "    pinnedVersion: {}   # pinServerVersion: true enforces it", q(v));
            }
            Err(e) => notes.push(format!("version left out: {e}")),
        }
    }
    Ok((y, notes))
}

/// The items of the array `key` of `v` (none when absent or not an array).
fn list<'a>(v: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    v.get(key).and_then(Value::as_array).into_iter().flatten()
}

/// A name in joch's alphabet (lowercase letters, digits, '-').
fn joch_name(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars().map(|c| c.to_ascii_lowercase()) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    let mut out = out.trim_end_matches('-').to_string();
    if !out.starts_with(|c: char| c.is_ascii_lowercase()) {
        out.insert_str(0, "mcp-");
    }
    out.truncate(63);
    out.trim_end_matches('-').to_string()
}

/// The command line of a stdio package: its runtime (uvx, npx, docker) and arguments.
fn stdio_command(p: &Value, notes: &mut Vec<String>) -> Result<(String, Vec<String>), String> {
    let kind = p.get("registryType").and_then(Value::as_str).unwrap_or_default();
    let id = p.get("identifier").and_then(Value::as_str).ok_or("packages[].identifier: missing")?;
    let version = p.get("version").and_then(Value::as_str);
    let runtime_args = arguments(p.get("runtimeArguments"), notes);
    let package_args = arguments(p.get("packageArguments"), notes);
    let (command, mut args) = match kind {
        "pypi" => ("uvx".to_string(), runtime_args),
        "npm" => ("npx".to_string(), [vec!["-y".to_string()], runtime_args].concat()),
        "oci" => {
            // A container sees no environment it is not given: each variable is passed by name.
            let mut a = vec!["run".to_string(), "-i".into(), "--rm".into()];
            for e in list(p, "environmentVariables") {
                if let Some(n) = e.get("name").and_then(Value::as_str) {
                    a.extend(["-e".to_string(), n.to_string()]);
                }
            }
            ("docker".to_string(), [a, runtime_args].concat())
        }
        other => return Err(format!("packages[].registryType: {other:?} is not importable (pypi, npm and oci are)")),
    };
    args.push(match (kind, version) {
        ("pypi", Some(v)) => format!("{id}=={v}"),
        ("npm", Some(v)) => format!("{id}@{v}"),
        ("oci", Some(v)) if !id.contains(':') => format!("{id}:{v}"),
        _ => id.to_string(),
    });
    args.extend(package_args);
    Ok((command, args))
}

/// `{name}` in `text` replaced by the variable's value or default (`variables` of the remote or
/// argument); a variable without one, or a secret, is left for the operator, with a note.
fn resolve(text: &str, variables: Option<&Value>, what: &str, notes: &mut Vec<String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}').map(|c| open + c) else { break };
        let name = &rest[open + 1..close];
        let var = variables.and_then(|v| v.get(name));
        let secret = var.and_then(|v| v.get("isSecret")).and_then(Value::as_bool).unwrap_or(false);
        let value = var.and_then(|v| v.get("value").or_else(|| v.get("default"))).and_then(Value::as_str);
        out.push_str(&rest[..open]);
        match value.filter(|_| !secret) {
            Some(v) => out.push_str(v),
            None => {
                out.push_str(&rest[open..=close]);
                notes.push(format!("{what} has the variable {{{name}}}: replace it before applying"));
            }
        }
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

/// `runtimeArguments` / `packageArguments` as command-line words (a named one is two: the flag,
/// then its value, which every CLI parser takes).
fn arguments(list: Option<&Value>, notes: &mut Vec<String>) -> Vec<String> {
    let mut out = Vec::new();
    for a in list.and_then(Value::as_array).into_iter().flatten() {
        let value = a
            .get("value")
            .or_else(|| a.get("default"))
            .and_then(Value::as_str)
            .map(|v| resolve(v, a.get("variables"), "an argument", notes));
        match a.get("type").and_then(Value::as_str) {
            Some("named") => {
                let flag = a.get("name").and_then(Value::as_str).unwrap_or_default();
                out.push(flag.to_string());
                out.extend(value);
            }
            _ => match value {
                Some(v) => out.push(v),
                None => {
                    let hint = a.get("valueHint").and_then(Value::as_str).unwrap_or("value");
                    out.push(format!("{{{hint}}}"));
                    notes.push(format!("the argument {{{hint}}} needs a value"));
                }
            },
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(y: &str) -> joch_raft_store::model::resource::McpServerSpec {
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(y).unwrap();
        serde_yaml_ng::from_value(doc["spec"].clone()).unwrap_or_else(|e| panic!("{e}\n{y}"))
    }

    #[test]
    fn a_remote_becomes_an_endpoint_with_its_secret_header() {
        let sj = json!({
            "name": "io.github.acme/Weather_API", "description": "Weather", "version": "1.0.2",
            "remotes": [{"type": "sse", "url": "https://x/sse"}, {"type": "streamable-http", "url": "https://mcp.acme.io/mcp",
                "headers": [{"name": "X-API-Key", "isSecret": true}]}],
        });
        let (y, notes) = manifest(&sj, None).unwrap();
        assert!(y.contains("name: weather-api"), "{y}");
        let spec = parse(&y);
        assert_eq!(spec.endpoint.clone().unwrap().url, "https://mcp.acme.io/mcp");
        assert_eq!(spec.publisher.as_deref(), Some("io.github.acme"));
        assert_eq!(spec.description.as_deref(), Some("Weather"));
        assert_eq!(spec.security.pinned_version.as_deref(), Some("1.0.2"));
        let auth = spec.auth.clone().unwrap();
        assert_eq!(auth.header.as_deref(), Some("X-API-Key"));
        assert_eq!(auth.secret_ref.unwrap().name, "weather-api-x-api-key");
        assert!(notes.iter().any(|n| n.contains("weather-api-x-api-key")), "{notes:?}");
        assert!(spec.problems().is_empty(), "{:?}", spec.problems());
    }

    #[test]
    fn packages_become_disabled_stdio_commands() {
        let pypi = json!({"name": "io.github.x/time", "description": "t", "version": "0.6.2", "packages": [{
            "registryType": "pypi", "identifier": "mcp-server-time", "version": "0.6.2", "transport": {"type": "stdio"},
            "packageArguments": [{"type": "named", "name": "--local-timezone", "value": "UTC"}],
            "environmentVariables": [{"name": "TOKEN", "isSecret": true}, {"name": "MODE", "default": "fast"}],
        }]});
        let spec = parse(&manifest(&pypi, None).unwrap().0);
        let s = spec.stdio.clone().unwrap();
        assert_eq!(
            (s.command.as_str(), s.args.clone()),
            ("uvx", vec!["mcp-server-time==0.6.2".to_string(), "--local-timezone".into(), "UTC".into()])
        );
        assert!(!spec.security.allow_stdio);
        assert_eq!(s.env.len(), 2);
        assert!(spec.problems().is_empty(), "{:?}", spec.problems());

        let npm = json!({"name": "io.github.x/fs", "description": "f", "version": "1.0.0", "packages": [{
            "registryType": "npm", "identifier": "@modelcontextprotocol/server-filesystem", "version": "1.0.0",
            "transport": {"type": "stdio"}, "packageArguments": [{"type": "positional", "valueHint": "target_dir"}],
        }]});
        let (y, notes) = manifest(&npm, None).unwrap();
        let s = parse(&y).stdio.unwrap();
        assert_eq!(s.args, ["-y", "@modelcontextprotocol/server-filesystem@1.0.0", "{target_dir}"]);
        assert!(notes.iter().any(|n| n.contains("{target_dir}")), "{notes:?}");

        let oci = json!({"name": "io.github.x/db", "description": "d", "version": "2.0.0", "packages": [{
            "registryType": "oci", "identifier": "docker.io/acme/db-mcp", "version": "2.0.0", "transport": {"type": "stdio"},
            "environmentVariables": [{"name": "DB_URL", "isSecret": true}],
        }]});
        let s = parse(&manifest(&oci, None).unwrap().0).stdio.unwrap();
        assert_eq!(s.command, "docker");
        assert_eq!(s.args, ["run", "-i", "--rm", "-e", "DB_URL", "docker.io/acme/db-mcp:2.0.0"]);
    }

    #[test]
    fn an_entry_is_reached_through_the_fleet_and_imports_back() {
        let rec = ServerRecord {
            name: "github".into(),
            spec: joch_raft_store::model::resource::McpServerSpec {
                description: Some("Issues and pull requests".into()),
                publisher: Some("io.github.acme".into()),
                ..Default::default()
            },
            labels: Default::default(),
            status: Default::default(),
            created: Default::default(),
            updated: Default::default(),
            generation: 1,
        };
        let e = entry(&rec, "com.example.mcp", "https://mcp.example.com/");
        assert_eq!(e["server"]["name"], "com.example.mcp/github");
        assert_eq!(e["server"]["remotes"][0]["url"], "https://mcp.example.com/mcp/github");
        assert_eq!(e["server"]["version"], UNPINNED);
        let (y, _) = manifest(&json!({
            "name": e["server"]["name"], "description": e["server"]["description"], "version": e["server"]["version"],
            "remotes": e["server"]["remotes"],
        }), None)
        .unwrap();
        let spec = parse(&y);
        assert!(y.contains("\n  name: github\n"), "{y}");
        assert_eq!(spec.description, rec.spec.description);
        assert_eq!(spec.security.pinned_version, None, "the unpinned marker is not a pin");
    }

    #[test]
    fn what_cannot_be_imported_is_named() {
        assert!(manifest(&json!({"description": "x"}), None).unwrap_err().starts_with("name:"));
        assert!(manifest(&json!({"name": "noslash"}), None).unwrap_err().contains("NAMESPACE/NAME"));
        let sse = json!({"name": "a.b/c", "remotes": [{"type": "sse", "url": "https://x"}]});
        assert!(manifest(&sse, None).unwrap_err().contains("streamable-http"));
        let nuget = json!({"name": "a.b/c", "packages": [{"registryType": "nuget", "identifier": "X", "transport": {"type": "stdio"}}]});
        assert!(manifest(&nuget, None).unwrap_err().contains("nuget"));
        assert!(manifest(
            &json!({"name": "a.b/c", "remotes": [{"type": "streamable-http", "url": "https://x"}]}),
            Some("Bad_Name")
        )
        .unwrap_err()
        .contains("--as"));
    }
}
