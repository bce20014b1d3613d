//! Parsing manifests. Several YAML (or JSON) documents per text; every document is checked and
//! every problem reported before anything is written.

use std::collections::BTreeMap;

use joch_raft_store::model::resource::McpServerSpec;
use joch_raft_store::model::validate::check_name;
use joch_raft_store::Command;
use serde::Deserialize;

/// The only API version this build accepts.
pub const API_VERSION: &str = "joch.dev/v1alpha1";

/// A parsed, valid manifest.
#[derive(Debug, Clone, PartialEq)]
pub enum Manifest {
    /// `kind: MCPServer`.
    McpServer {
        /// metadata.name
        name: String,
        /// metadata.labels
        labels: BTreeMap<String, String>,
        /// spec
        spec: Box<McpServerSpec>,
    },
    /// `kind: Policy`.
    Policy {
        /// metadata.name
        name: String,
        /// metadata.labels
        labels: BTreeMap<String, String>,
        /// spec, as canonical JSON (sorted keys)
        spec_json: String,
    },
    /// `kind: VirtualServer`.
    VirtualServer {
        /// metadata.name
        name: String,
        /// metadata.labels
        labels: BTreeMap<String, String>,
        /// spec
        spec: joch_raft_store::model::resource::VirtualServerSpec,
    },
    /// `kind: Secret`: values in the clear, sealed by the node that applies it (see
    /// [`Manifest::into_command`]); never logged.
    Secret {
        /// metadata.name
        name: String,
        /// stringData, and data decoded from base64.
        data: SecretData,
    },
}

/// A secret's values; its `Debug` shows the keys only.
#[derive(Clone, PartialEq)]
pub struct SecretData(pub BTreeMap<String, String>);

impl std::fmt::Debug for SecretData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

impl Manifest {
    /// The manifest's kind, as written.
    pub fn kind(&self) -> &'static str {
        match self {
            Manifest::McpServer { .. } => "MCPServer",
            Manifest::Policy { .. } => "Policy",
            Manifest::Secret { .. } => "Secret",
            Manifest::VirtualServer { .. } => "VirtualServer",
        }
    }

    /// metadata.name.
    pub fn name(&self) -> &str {
        match self {
            Manifest::McpServer { name, .. }
            | Manifest::Policy { name, .. }
            | Manifest::Secret { name, .. }
            | Manifest::VirtualServer { name, .. } => name,
        }
    }

    /// The command that applies it; a secret's values are sealed with `seal` first (only
    /// ciphertext enters the log).
    pub fn into_command<E>(
        self,
        seal: impl FnOnce(&str, &BTreeMap<String, String>) -> Result<Command, E>,
    ) -> Result<Command, E> {
        Ok(match self {
            Manifest::McpServer { name, labels, spec } => Command::UpsertServer { name, labels, spec: *spec },
            Manifest::Policy { name, labels, spec_json } => Command::ApplyPolicy { name, labels, spec_json },
            Manifest::Secret { name, data } => return seal(&name, &data.0),
            Manifest::VirtualServer { name, labels, spec } => Command::ApplyVirtualServer { name, labels, spec },
        })
    }
}

/// One problem in a manifest, located.
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestError {
    /// File name (or `-`).
    pub source: String,
    /// 1-based line in the whole text, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// Field path, when known (`spec.endpoint.url`).
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for ManifestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.source)?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
            if let Some(c) = self.column {
                write!(f, ":{c}")?;
            }
        }
        write!(f, ": ")?;
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        write!(f, "{}", self.message)
    }
}

#[derive(Deserialize)]
struct Header {
    #[serde(rename = "apiVersion")]
    api_version: Option<serde_yaml_ng::Value>,
    kind: Option<serde_yaml_ng::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// Accepted (tools add them) and not stored yet.
    #[serde(default)]
    #[allow(dead_code)]
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)] // api_version/kind/status are checked or ignored, not used
struct McpServerDoc {
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: McpServerSpec,
    /// Status is written by joch; accepted (so `describe -o yaml` output re-applies) and ignored.
    #[serde(default)]
    status: Option<serde_yaml_ng::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct SecretDoc {
    api_version: String,
    kind: String,
    metadata: Metadata,
    /// Values as text.
    #[serde(default)]
    string_data: BTreeMap<String, String>,
    /// Values in base64.
    #[serde(default)]
    data: BTreeMap<String, String>,
    /// Accepted (`Opaque`), not used.
    #[serde(default, rename = "type")]
    kind_of: Option<String>,
}

/// A secret's keys: letters, digits, '-', '_' and '.'.
pub fn valid_secret_key(k: &str) -> bool {
    !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct VirtualServerDoc {
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: joch_raft_store::model::resource::VirtualServerSpec,
    #[serde(default)]
    status: Option<serde_yaml_ng::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct PolicyDoc {
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: serde_json::Value,
    #[serde(default)]
    status: Option<serde_yaml_ng::Value>,
}

/// A document of a multi-document text: its text and the line it starts on (1-based).
struct Doc<'a> {
    text: &'a str,
    first_line: usize,
}

/// The documents of a multi-document text, each with the line it starts on (1-based).
pub fn documents(text: &str) -> Vec<(&str, usize)> {
    split_docs(text).into_iter().map(|d| (d.text, d.first_line)).collect()
}

/// Splits at `---` lines, keeping line numbers.
fn split_docs(text: &str) -> Vec<Doc<'_>> {
    let mut docs = Vec::new();
    let mut start = 0usize;
    let mut start_line = 1usize;
    let mut offset = 0usize;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let t = line.trim_end();
        if t == "---" || t.starts_with("--- ") || t == "..." {
            docs.push(Doc { text: &text[start..offset], first_line: start_line });
            start = offset + line.len();
            start_line = i + 2;
        }
        offset += line.len();
    }
    docs.push(Doc { text: &text[start..], first_line: start_line });
    docs.into_iter()
        .filter(|d| d.text.lines().any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')))
        .collect()
}

/// Finds the line of a field path like `spec.security.pinnedVersion` or
/// `spec.rules[2].match.labels.mcp.action` in a document written in block style: each segment is
/// looked for after the previous one, `[i]` picks the i-th item of a list, and a key with dots
/// in it (`mcp.action`) is tried whole. A field written in flow style (`{ a: 1 }`) gives the
/// line of the closest enclosing field found.
fn locate(doc: &str, field: &str) -> Option<usize> {
    let lines: Vec<&str> = doc.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let key_at = |i: usize, key: &str| {
        let t = lines[i].trim_start().trim_start_matches("- ");
        t.starts_with(&format!("{key}:")) || t.starts_with(&format!("\"{key}\":"))
    };
    let segs: Vec<&str> = field.split('.').collect();
    let (mut from, mut found, mut k) = (0usize, None, 0usize);
    while k < segs.len() {
        // The longest run of segments that is one key (`mcp.action`), else one segment.
        let mut hit = None;
        for end in (k + 1..=segs.len()).rev() {
            if end > k + 1 && segs[k..end].iter().any(|s| s.contains('[')) {
                continue;
            }
            let joined = segs[k..end].join(".");
            let (key, index) = match joined.split_once('[') {
                Some((key, rest)) => (key.to_string(), rest.trim_end_matches(']').parse::<usize>().ok()),
                None => (joined.clone(), None),
            };
            if let Some(line) = (from..lines.len()).find(|&i| key_at(i, &key)) {
                hit = Some((end, line, index));
                break;
            }
        }
        // Not found (flow style): the closest enclosing field found so far.
        let Some((end, line, index)) = hit else { break };
        found = Some(line);
        from = line + 1;
        if let Some(n) = index {
            // The n-th item: lines starting with "- " at the first item's indentation.
            let first = (from..lines.len()).find(|&i| lines[i].trim_start().starts_with("- "))?;
            let col = indent(lines[first]);
            let item = (first..lines.len())
                .filter(|&i| indent(lines[i]) == col && lines[i].trim_start().starts_with("- "))
                .nth(n)?;
            found = Some(item);
            from = item;
        }
        k = end;
    }
    found
}

fn yaml_error(source: &str, doc: &Doc<'_>, e: &serde_yaml_ng::Error) -> ManifestError {
    let loc = e.location();
    let mut message = e.to_string();
    if let Some(i) = message.find(" at line ") {
        message.truncate(i);
    }
    // serde_yaml_ng puts the field path first ("spec.discovery: unknown field ..."); keep it as the field.
    let (field, message) = match message.split_once(": ") {
        Some((path, rest)) if !path.contains(' ') && !path.is_empty() => (Some(path.to_string()), rest.to_string()),
        _ => (None, message),
    };
    ManifestError {
        source: source.into(),
        line: loc.as_ref().map(|l| l.line() + doc.first_line - 1),
        column: loc.as_ref().map(|l| l.column()),
        field,
        message,
    }
}

/// The canonical document a publisher signs of an MCPServer manifest's text
/// (`joch_raft_store::model::trust::signed_document`).
pub fn signed_document(text: &str) -> Option<String> {
    let v: serde_json::Value = serde_yaml_ng::from_str(text).ok()?;
    Some(joch_raft_store::model::trust::signed_document(&v))
}

/// A policy compiles (the state machine compiles it again when it applies it).
fn check_policy(m: &Manifest) -> Result<(), Vec<joch_raft_store::model::validate::FieldError>> {
    match m {
        Manifest::Policy { name, spec_json, .. } => {
            joch_raft_store::model::registry::compile_policy(name, spec_json).map(|_| ())
        }
        _ => Ok(()),
    }
}

/// Seed 003's shape: a document of `version: v1` and `rules` without apiVersion/kind/metadata,
/// applied as the Policy named after the file (`governance.yaml` is policy `governance`).
fn bare_policy(source: &str, text: &str) -> Result<Manifest, String> {
    let spec: serde_json::Value = serde_yaml_ng::from_str(text).map_err(|e| format!("not a manifest: {e}"))?;
    let looks_like_rules = spec.get("rules").is_some() || spec.get("version").is_some();
    if !looks_like_rules {
        return Err(format!(
            "no apiVersion and kind: expected a manifest (apiVersion: {API_VERSION}, kind: MCPServer, Policy or Secret) or a policy rule file (version: v1, rules: [...])"
        ));
    }
    let stem = std::path::Path::new(source).file_stem().and_then(|s| s.to_str()).unwrap_or_default();
    let name = stem.to_ascii_lowercase().replace(['_', ' ', '.'], "-");
    if check_name("metadata.name", &name).is_err() || source == "-" || source == "<input>" {
        return Err(format!(
            "a policy rule file without a header is named after its file, and {source:?} gives no valid name: add\n  apiVersion: {API_VERSION}\n  kind: Policy\n  metadata: {{ name: NAME }}\n  spec:\nabove its rules (indented under spec), or save it as NAME.yaml"
        ));
    }
    Ok(Manifest::Policy { name, labels: BTreeMap::new(), spec_json: spec.to_string() })
}

/// Checks that the policies the servers name (`spec.policies`) exist, in the registry (`known`)
/// or among these manifests, and puts policies before the servers that name them.
pub fn resolve_policies(
    source: &str,
    text: &str,
    manifests: &mut [Manifest],
    known: &dyn Fn(&str) -> bool,
    existing: &[String],
) -> Result<(), Vec<ManifestError>> {
    let here: Vec<String> = manifests
        .iter()
        .filter_map(|m| match m {
            Manifest::Policy { name, .. } => Some(name.clone()),
            _ => None,
        })
        .collect();
    let mut errors = Vec::new();
    for m in manifests.iter() {
        let Manifest::McpServer { name, spec, .. } = m else { continue };
        for (i, p) in spec.policies.iter().enumerate() {
            if here.contains(&p.name) || known(&p.name) {
                continue;
            }
            let field = format!("spec.policies[{i}].name");
            let all = here.iter().chain(existing).map(String::as_str);
            let line = split_docs(text).iter().find_map(|d| {
                let names_it = d.text.lines().any(|l| l.trim() == format!("name: {name}"));
                names_it.then(|| locate(d.text, &field).map(|l| l + d.first_line)).flatten()
            });
            errors.push(ManifestError {
                source: source.into(),
                line,
                column: None,
                field: Some(field),
                message: format!(
                    "MCPServer {name}: {}",
                    joch_raft_store::model::registry::missing_policy(&p.name, all)
                ),
            });
        }
    }
    // Secrets first (servers use them), then policies (servers name them), then servers.
    manifests.sort_by_key(|m| match m {
        Manifest::Secret { .. } => 0,
        Manifest::Policy { .. } => 1,
        Manifest::McpServer { .. } => 2,
        Manifest::VirtualServer { .. } => 3,
    });
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Parses every document in `text`. Returns all valid manifests, or every problem found.
pub fn parse(source: &str, text: &str) -> Result<Vec<Manifest>, Vec<ManifestError>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let docs = split_docs(text);
    if docs.is_empty() {
        errors.push(ManifestError {
            source: source.into(),
            line: None,
            column: None,
            field: None,
            message: "no manifest in input".into(),
        });
    }
    for doc in &docs {
        let at = |field: &str, message: String| ManifestError {
            source: source.into(),
            line: locate(doc.text, field).map(|l| l + doc.first_line),
            column: None,
            field: Some(field.to_string()),
            message,
        };
        let header: Header = match serde_yaml_ng::from_str(doc.text) {
            Ok(h) => h,
            Err(e) => {
                errors.push(yaml_error(source, doc, &e));
                continue;
            }
        };
        if header.api_version.is_none() && header.kind.is_none() {
            // Seed 003's rule file as it stands: `version: v1` and `rules`, no header. It is a
            // Policy named after the file.
            match bare_policy(source, doc.text) {
                Ok(m) => match check_policy(&m) {
                    Ok(()) => out.push(m),
                    Err(problems) => errors.extend(problems.into_iter().map(|p| {
                        let inner = p.field.strip_prefix("spec.").unwrap_or(&p.field).to_string();
                        ManifestError {
                            source: source.into(),
                            line: locate(doc.text, &inner).map(|l| l + doc.first_line),
                            column: None,
                            field: Some(inner),
                            message: p.message,
                        }
                    })),
                },
                Err(e) => errors.push(ManifestError {
                    source: source.into(),
                    line: Some(doc.first_line),
                    column: None,
                    field: None,
                    message: e,
                }),
            }
            continue;
        }
        let api = header.api_version.as_ref().and_then(|v| v.as_str()).unwrap_or("");
        if api != API_VERSION {
            errors.push(at("apiVersion", format!("expected {API_VERSION}, got {:?}", api)));
            continue;
        }
        let kind = header.kind.as_ref().and_then(|v| v.as_str()).unwrap_or("").to_string();
        let parsed = match kind.as_str() {
            "MCPServer" => serde_yaml_ng::from_str::<McpServerDoc>(doc.text).map(|mut d| {
                let problems = d.spec.problems();
                if let Some(sig) = d.spec.signature.as_mut() {
                    // What the publisher signed, from the document as written (the state
                    // machine verifies the signature over it).
                    sig.signed = signed_document(doc.text).unwrap_or_default();
                }
                (
                    Manifest::McpServer { name: d.metadata.name, labels: d.metadata.labels, spec: Box::new(d.spec) },
                    problems,
                )
            }),
            "Policy" => serde_yaml_ng::from_str::<PolicyDoc>(doc.text).map(|d| {
                let m = Manifest::Policy {
                    name: d.metadata.name,
                    labels: d.metadata.labels,
                    spec_json: d.spec.to_string(),
                };
                let problems = check_policy(&m).err().unwrap_or_default();
                (m, problems)
            }),
            "Secret" => serde_yaml_ng::from_str::<SecretDoc>(doc.text).map(|d| {
                use base64::Engine;
                let mut problems = Vec::new();
                let problem = |field: String, message: &str| joch_raft_store::model::validate::FieldError {
                    field,
                    message: message.into(),
                };
                let mut data = d.string_data;
                for (k, v) in d.data {
                    // Never the value in a message: only which key.
                    match base64::engine::general_purpose::STANDARD.decode(v.trim()).ok().map(String::from_utf8) {
                        Some(Ok(text)) => {
                            data.insert(k, text);
                        }
                        Some(Err(_)) => problems.push(problem(format!("data.{k}"), "not UTF-8 text once decoded")),
                        None => problems.push(problem(format!("data.{k}"), "not base64")),
                    }
                }
                if data.is_empty() {
                    problems.push(problem("stringData".into(), "a secret needs at least one key (stringData or data)"));
                }
                for k in data.keys().filter(|k| !valid_secret_key(k)) {
                    problems.push(problem(format!("stringData.{k}"), "keys are letters, digits, '-', '_' and '.'"));
                }
                (Manifest::Secret { name: d.metadata.name, data: SecretData(data) }, problems)
            }),
            "VirtualServer" => serde_yaml_ng::from_str::<VirtualServerDoc>(doc.text).map(|d| {
                (Manifest::VirtualServer { name: d.metadata.name, labels: d.metadata.labels, spec: d.spec }, Vec::new())
            }),
            "" => {
                errors.push(at("kind", "required (MCPServer, Policy, Secret or VirtualServer)".into()));
                continue;
            }
            other => {
                errors.push(at(
                    "kind",
                    format!("unknown kind {other:?}: expected MCPServer, Policy, Secret or VirtualServer"),
                ));
                continue;
            }
        };
        match parsed {
            Err(e) => errors.push(yaml_error(source, doc, &e)),
            Ok((m, problems)) => {
                let mut ok = true;
                if let Err(e) = check_name("metadata.name", m.name()) {
                    errors.push(at(&e.field, e.message));
                    ok = false;
                }
                for p in problems {
                    errors.push(at(&p.field, p.message));
                    ok = false;
                }
                if ok {
                    out.push(m);
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED_002: &str = r#"apiVersion: joch.dev/v1alpha1
kind: MCPServer
metadata:
  name: github
spec:
  transport: streamable_http
  endpoint:
    url: https://mcp.example.com/github
  auth:
    type: oauth2
    secretRef: { name: github-mcp-oauth }
  exposes:
    tools: true
    resources: true
    prompts: false
  discovery:
    enabled: true
    refreshInterval: 10m
    onSchemaDrift: quarantine
  security:
    sandbox: true
    allowStdio: false
    pinServerVersion: true
    pinnedVersion: 1.2.0
    trustedPublisher: github
    minTrustScore: 0.75
  policies:
    - name: mcp-tool-safety-policy
  scanning:
    promptInjectionScan: true
    redactFieldsInResults:
      - sshKeys
      - apiTokens
status:
  phase: Ready
  discoveredTools:
    - github.search_issues
    - github.create_issue
  trustScore: 0.92
  schemaDrift: false
"#;

    const SEED_000_POLICY: &str = r#"apiVersion: joch.dev/v1alpha1
kind: Policy
metadata:
  name: mcp-tool-safety
spec:
  appliesTo:
    agents: { selector: { matchLabels: { env: prod } } }
  rules:
    - when:
        mcpServer.trustScore: "<0.75"
      action: { deny: true, reason: trust-score-too-low }
    - when:
        mcpServer.schemaDrift: true
      action: { deny: true, reason: schema-drift-detected }
    - when:
        mcpResult.injectionScan.hit: true
      action: { modify: redact, reason: prompt-injection-stripped }
"#;

    #[test]
    fn seed_manifests_parse_as_written() {
        let text = format!("{SEED_002}---\n{SEED_000_POLICY}");
        let ms = parse("seed.yaml", &text).unwrap();
        assert_eq!(ms.len(), 2);
        let Manifest::McpServer { name, spec, .. } = &ms[0] else { panic!("first is the server") };
        assert_eq!(name, "github");
        assert_eq!(spec.security.pinned_version.as_deref(), Some("1.2.0"));
        assert_eq!(spec.security.min_trust_score, Some(0.75));
        assert_eq!(spec.auth.as_ref().unwrap().secret_ref.as_ref().unwrap().name, "github-mcp-oauth");
        assert!(!spec.exposes.prompts);
        assert_eq!(spec.scanning.redact_fields_in_results, ["sshKeys", "apiTokens"]);
        let Manifest::Policy { name, spec_json, .. } = &ms[1] else { panic!("second is the policy") };
        assert_eq!(name, "mcp-tool-safety");
        assert!(spec_json.contains("\"trust-score-too-low\""));
    }

    #[test]
    fn unknown_field_names_line_and_field() {
        let text =
            SEED_002.replace("    refreshInterval: 10m\n", "    refreshInterval: 10m\n    refreshIntervall: 5m\n");
        let errs = parse("github.yaml", &text).unwrap_err();
        assert_eq!(errs.len(), 1);
        let e = &errs[0];
        assert_eq!(e.line, Some(19), "{e}");
        assert_eq!(e.field.as_deref(), Some("spec.discovery"), "{e}");
        assert!(e.message.contains("unknown field `refreshIntervall`"), "{e}");
        assert!(e.to_string().starts_with("github.yaml:19:"), "{e}");
    }

    #[test]
    fn semantic_problems_in_a_later_document_are_located() {
        let bad = "apiVersion: joch.dev/v1alpha1\nkind: MCPServer\nmetadata:\n  name: time\nspec:\n  transport: streamable_http\n  discovery:\n    refreshInterval: soon\n  security:\n    pinnedVersion: latest\n";
        let text = format!("{SEED_000_POLICY}---\n{bad}");
        let errs = parse("all.yaml", &text).unwrap_err();
        let shown: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        let policy_lines = SEED_000_POLICY.lines().count();
        assert_eq!(
            shown,
            [
                format!("all.yaml:{}: spec.endpoint.url: required for transport streamable_http", policy_lines + 6),
                format!("all.yaml:{}: spec.discovery.refreshInterval: invalid duration \"soon\": expected e.g. 30s, 10m, 1h", policy_lines + 9),
                format!("all.yaml:{}: spec.security.pinnedVersion: invalid version \"latest\": expected MAJOR[.MINOR[.PATCH]][-PRE][+BUILD], e.g. 1.2.0", policy_lines + 11),
            ]
        );
    }

    #[test]
    fn wrong_api_version_kind_and_name() {
        let errs = parse("x", "apiVersion: v1\nkind: MCPServer\n").unwrap_err();
        assert_eq!(errs[0].to_string(), "x:1: apiVersion: expected joch.dev/v1alpha1, got \"v1\"");
        let errs = parse("x", "apiVersion: joch.dev/v1alpha1\nkind: Pod\n").unwrap_err();
        assert_eq!(
            errs[0].to_string(),
            "x:2: kind: unknown kind \"Pod\": expected MCPServer, Policy, Secret or VirtualServer"
        );
        let errs = parse("x", &SEED_002.replace("name: github", "name: GitHub.com")).unwrap_err();
        assert!(errs[0].to_string().starts_with("x:4: metadata.name: invalid name \"GitHub.com\""), "{}", errs[0]);
        let errs = parse("x", "# nothing\n").unwrap_err();
        assert_eq!(errs[0].message, "no manifest in input");
    }

    #[test]
    fn json_input_is_accepted() {
        let json = r#"{"apiVersion":"joch.dev/v1alpha1","kind":"MCPServer","metadata":{"name":"t"},"spec":{"endpoint":{"url":"http://127.0.0.1:9/mcp"}}}"#;
        assert_eq!(parse("t.json", json).unwrap().len(), 1);
    }

    /// Seed 003's rule file, indented as YAML needs (the seed's text lost its indentation).
    const SEED_003: &str = include_str!("../../../docs/examples/mcp-governance.yaml");

    #[test]
    fn seed_003_rule_file_applies_as_the_policy_named_after_it() {
        let ms = parse("policies/mcp-governance.yaml", SEED_003).unwrap();
        let Manifest::Policy { name, spec_json, .. } = &ms[0] else { panic!() };
        assert_eq!(name, "mcp-governance");
        assert!(spec_json.contains("deny_servers_not_in"));
        let errs = parse("-", SEED_003).unwrap_err();
        assert!(errs[0].message.contains("kind: Policy"), "{}", errs[0]);
    }

    #[test]
    fn policy_problems_name_file_line_rule_and_field() {
        let bad = SEED_003
            .replace("    decision: ALLOW_WITH_CONSTRAINTS", "    decision: ALLOW_WITH_LIMITS")
            .replace("        mcp.server: \"*\"", "        mcp.srv: \"*\"");
        let errs = parse("gov.yaml", &bad).unwrap_err();
        let shown: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            shown,
            [
                "gov.yaml:23: rules[2].decision: rule \"constrain-medium-risk\": unknown decision \"ALLOW_WITH_LIMITS\": expected ALLOW, DENY, REQUIRE_APPROVAL or ALLOW_WITH_CONSTRAINTS",
                "gov.yaml:30: rules[3].match.labels.mcp.srv: rule \"deny-unregistered-server\": unknown condition \"mcp.srv\"; known: agent, agent.labels.KEY, mcpServer (mcp.server), mcpServer.labels.KEY, mcpServer.trustScore, mcpServer.schemaDrift, tool (mcp.tool), prompt, resource, mcp.name, mcp.kind, mcp.method, mcp.action, risk_tags, args.PATH (args./json/pointer), mcpArgs.PATH, mcpResult.PATH, time",
            ]
        );
        let wrapped =
            SEED_000_POLICY.replace("action: { deny: true, reason: schema-drift-detected }", "action: { block: true }");
        let errs = parse("p.yaml", &wrapped).unwrap_err();
        let shown: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert!(
            shown[0].starts_with("p.yaml:14: spec.rules[1].action.block: rule \"rule-2\": unknown field"),
            "{shown:?}"
        );
    }

    #[test]
    fn servers_must_name_policies_that_exist() {
        let text = format!("{SEED_002}---\n{SEED_000_POLICY}");
        let mut ms = parse("seed.yaml", &text).unwrap();
        let errs = resolve_policies("seed.yaml", &text, &mut ms, &|_| false, &[]).unwrap_err();
        assert_eq!(
            errs[0].to_string(),
            "seed.yaml:28: spec.policies[0].name: MCPServer github: policy \"mcp-tool-safety-policy\" does not exist; did you mean \"mcp-tool-safety\"? (apply the Policy first, or fix the name)"
        );
        let fixed = text.replace("mcp-tool-safety-policy", "mcp-tool-safety");
        let mut ms = parse("seed.yaml", &fixed).unwrap();
        resolve_policies("seed.yaml", &fixed, &mut ms, &|_| false, &[]).unwrap();
        assert_eq!(ms[0].kind(), "Policy", "policies are applied before the servers naming them");
    }
}
