//! The MCPServer resource (seed 002), field by field, as operators write it in YAML.
//!
//! The same types are stored in the Raft log and the state machine (postcard-encoded), so they
//! must not use serde features that need a self-describing format (`skip_serializing_if`,
//! `flatten`, untagged enums), except behind `is_human_readable` (see [`EnvValue`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `spec` of an MCPServer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct McpServerSpec {
    /// How joch reaches the server: `streamable_http` (default) or `stdio`.
    #[serde(default)]
    pub transport: Transport,
    /// Where a `streamable_http` server listens.
    #[serde(default)]
    pub endpoint: Option<Endpoint>,
    /// Credentials joch presents upstream (never the agent's own token).
    #[serde(default)]
    pub auth: Option<Auth>,
    /// How to start a local `stdio` server.
    #[serde(default)]
    pub stdio: Option<StdioSpec>,
    /// Which capability kinds the server may expose through joch.
    #[serde(default)]
    pub exposes: Exposes,
    /// Capability discovery and what schema drift does.
    #[serde(default)]
    pub discovery: Discovery,
    /// Sandboxing, transport and version-pinning rules.
    #[serde(default)]
    pub security: Security,
    /// Policies that apply to this server, by name.
    #[serde(default)]
    pub policies: Vec<PolicyRef>,
    /// Result scanning and redaction.
    #[serde(default)]
    pub scanning: Scanning,
    /// Risk tags of every call to this server (`prod`, `pii`): policies match them as
    /// `risk_tags`.
    #[serde(default)]
    pub risk_tags: Vec<String>,
    /// Per-tool settings that override what the upstream declares, by bare tool name.
    #[serde(default)]
    pub tools: BTreeMap<String, ToolSettings>,
    /// What the audit trail keeps of calls to this server.
    #[serde(default)]
    pub audit: AuditSpec,
    /// A guardian (an ACS hook endpoint) that sees this server's traffic, after the node's own
    /// (`guardian:` of the node's config), if any.
    #[serde(default)]
    pub guardian: Option<GuardianSpec>,
    /// What the server does, in a sentence (at most 100 characters): the `description` of its
    /// entry in the fleet's MCP Registry listing.
    #[serde(default)]
    pub description: Option<String>,
    /// Who publishes it, as a reverse-DNS namespace (`io.github.acme`): what `joch mcp import`
    /// takes from a `server.json` name; compared with `security.trustedPublisher`.
    #[serde(default)]
    pub publisher: Option<String>,
    /// The publisher's ed25519 signature over the manifest (`joch mcp sign`): counts in the
    /// server's trust score when it verifies with a trusted publisher's key.
    #[serde(default)]
    pub signature: Option<ManifestSignature>,
}

/// `spec.signature`, written by `joch mcp sign`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ManifestSignature {
    /// The publisher that signed (a name on the trusted-publisher list).
    pub publisher: String,
    /// `ed25519:` and the base64 of the 64-byte signature.
    pub value: String,
    /// What was signed: the canonical manifest (`trust::signed_document`), filled in by the
    /// node from the manifest as applied; whatever is written here is replaced.
    #[serde(default)]
    pub signed: String,
}

/// A guardian: an endpoint speaking the Agent Control Standard's hook contract (JSON-RPC over
/// HTTP) that allows, denies or modifies each message (`docs/guardian-hooks.md`). The same shape
/// as `spec.guardian` of an MCPServer and `guardian:` of a node's config.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GuardianSpec {
    /// Names it in audit verdicts (`hook:NAME`) and denials (default `guardian`).
    #[serde(default)]
    pub name: Option<String>,
    /// Where it listens: `http://HOST:PORT/PATH` or `https://...`.
    pub endpoint: String,
    /// How long one hook call may take (default 500ms); past it, `failure` decides.
    #[serde(default)]
    pub timeout: Option<String>,
    /// What a call that got no usable decision (timeout, refused, an error, a malformed answer)
    /// does: `open` proceeds and records it (the ACS default), `closed` denies.
    #[serde(default)]
    pub failure: FailMode,
    /// Which hooks it is called for (default all four).
    #[serde(default)]
    pub hooks: Vec<HookPoint>,
}

/// What a hook call without a usable decision does.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum FailMode {
    /// Proceed (recorded as `failed-open`).
    #[default]
    Open,
    /// Deny (`guardian-unavailable`).
    Closed,
}

/// A point of the request path where a guardian is called.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum HookPoint {
    /// `protocols/MCP/<method>`, before an agent's message is sent to the server.
    Outbound,
    /// `protocols/MCP/<method>`, before a server's message is forwarded to the agent.
    Inbound,
    /// `steps/toolCallRequest`, before a `tools/call` is sent.
    ToolCallRequest,
    /// `steps/toolCallResult`, before a `tools/call` result is forwarded.
    ToolCallResult,
}

impl GuardianSpec {
    /// Whether it is called at `point`.
    pub fn at(&self, point: HookPoint) -> bool {
        self.hooks.is_empty() || self.hooks.contains(&point)
    }

    /// Its name.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("guardian")
    }

    /// Its timeout.
    pub fn timeout(&self) -> std::time::Duration {
        self.timeout
            .as_deref()
            .and_then(super::validate::parse_duration)
            .unwrap_or(std::time::Duration::from_millis(500))
    }
}

/// `spec.audit`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditSpec {
    /// Keep call arguments in audit records (default: only their digest: arguments may hold
    /// personal data or secrets).
    #[serde(default)]
    pub record_arguments: bool,
}

/// `spec` of a VirtualServer: a named endpoint (`/mcp/v/NAME`) exposing chosen tools of several
/// servers, optionally renamed and described anew. Governed like the servers' own tools.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualServerSpec {
    /// The tools it exposes.
    pub tools: Vec<VirtualTool>,
}

/// One tool of a virtual server.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualTool {
    /// The MCP server it comes from.
    pub server: String,
    /// Its name on that server.
    pub tool: String,
    /// The name callers see (default: `tool`).
    #[serde(default)]
    pub name: Option<String>,
    /// The description callers see (default: the server's own).
    #[serde(default)]
    pub description: Option<String>,
}

impl VirtualTool {
    /// The name callers see.
    pub fn exposed(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.tool)
    }
}

impl VirtualServerSpec {
    /// The tool callers call `exposed`: (server, tool).
    pub fn resolve(&self, exposed: &str) -> Option<&VirtualTool> {
        self.tools.iter().find(|t| t.exposed() == exposed)
    }

    /// How callers see `server`'s tool `tool`, if it is exposed.
    pub fn exposing(&self, server: &str, tool: &str) -> Option<&VirtualTool> {
        self.tools.iter().find(|t| t.server == server && t.tool == tool)
    }

    /// The servers it draws on, each once, in order.
    pub fn servers(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for t in &self.tools {
            if !out.contains(&t.server) {
                out.push(t.server.clone());
            }
        }
        out
    }
}

/// `spec.tools.NAME`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ToolSettings {
    /// `read` or `write`, whatever the tool's annotations say.
    #[serde(default)]
    pub action: Option<ToolAction>,
    /// Risk tags of calls to this tool (added to the server's).
    #[serde(default)]
    pub risk_tags: Vec<String>,
}

/// Whether a tool reads or writes, as the registry says.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ToolAction {
    /// Only reads.
    Read,
    /// Changes something.
    Write,
}

/// `spec.security.toolApproval`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ToolApproval {
    /// Every tool the server offers may be used (subject to policy).
    #[default]
    Auto,
    /// Only tools approved with `joch mcp approve-tool SERVER.TOOL`; others are hidden and denied.
    Manual,
}

/// Upstream transport of an MCP server.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// MCP streamable HTTP (both protocol eras).
    #[default]
    StreamableHttp,
    /// A local child process speaking MCP on stdin/stdout.
    Stdio,
}

impl Transport {
    /// The name used in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::StreamableHttp => "streamable_http",
            Transport::Stdio => "stdio",
        }
    }
}

/// `spec.endpoint`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Endpoint {
    /// The server's MCP URL (`http://` or `https://`).
    pub url: String,
}

/// `spec.auth`: the credential joch presents upstream, from a replicated secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Auth {
    /// `none`, `bearer`, `header`, `api_key` or `oauth2`.
    #[serde(rename = "type")]
    pub kind: AuthKind,
    /// The replicated secret holding the credential: for `bearer`, `header` and `api_key` its
    /// key (`token` unless `secretRef.key` says otherwise); for `oauth2`, its keys `client_id`
    /// and `client_secret`.
    #[serde(default)]
    pub secret_ref: Option<SecretRef>,
    /// `header`: the header's name; `api_key`: likewise, `X-API-Key` by default.
    #[serde(default)]
    pub header: Option<String>,
    /// `oauth2`: the token endpoint of the client-credentials grant (else the secret's key
    /// `token_url`).
    #[serde(default)]
    pub token_url: Option<String>,
    /// `oauth2`: the scopes asked for.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// `oauth2`: the `audience` parameter, for providers that want one.
    #[serde(default)]
    pub audience: Option<String>,
}

impl Auth {
    /// The header `header`/`api_key` credentials go in.
    pub fn header_name(&self) -> &str {
        match (self.kind, self.header.as_deref()) {
            (_, Some(h)) => h,
            (AuthKind::ApiKey, None) => "X-API-Key",
            _ => "Authorization",
        }
    }
}

/// Kind of upstream credential.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum AuthKind {
    /// No credential.
    #[default]
    None,
    /// A static token, sent as `Authorization: Bearer TOKEN`.
    Bearer,
    /// A static value in a header of the spec's choosing (`auth.header`).
    Header,
    /// An API key header (`X-API-Key` unless `auth.header` says otherwise).
    ApiKey,
    /// OAuth 2.0 client credentials: joch fetches (and refreshes) a token per node.
    Oauth2,
}

impl AuthKind {
    /// The name used in manifests and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthKind::None => "none",
            AuthKind::Bearer => "bearer",
            AuthKind::Header => "header",
            AuthKind::ApiKey => "api_key",
            AuthKind::Oauth2 => "oauth2",
        }
    }

    /// Parses the command-line / manifest name.
    pub fn parse(s: &str) -> Option<AuthKind> {
        Some(match s {
            "none" => AuthKind::None,
            "bearer" => AuthKind::Bearer,
            "header" => AuthKind::Header,
            "api_key" | "api-key" | "apikey" => AuthKind::ApiKey,
            "oauth2" => AuthKind::Oauth2,
            _ => return None,
        })
    }
}

/// A reference to a replicated secret (and one of its keys).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretRef {
    /// Secret name.
    pub name: String,
    /// Which of its keys (where one value is meant; each use says its default).
    #[serde(default)]
    pub key: Option<String>,
}

impl SecretRef {
    /// The key meant, or `default`.
    pub fn key_or<'a>(&'a self, default: &'a str) -> &'a str {
        self.key.as_deref().unwrap_or(default)
    }
}

/// `spec.stdio`: how a local server is started (only with `security.allowStdio: true`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StdioSpec {
    /// Program to run.
    pub command: String,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment (from the operator, never from the agent): a plain value, or
    /// `{secretRef: {name, key}}` for a secret's value (`key` defaults to the variable's name).
    #[serde(default)]
    pub env: BTreeMap<String, EnvValue>,
}

/// One environment variable's value.
#[derive(Clone, Debug, PartialEq)]
pub enum EnvValue {
    /// A plain value (not for secrets: it shows in `describe`).
    Value(String),
    /// A replicated secret's value, opened by the node that starts the child.
    SecretRef(SecretRef),
}

/// The manifest form: `VALUE` or `{secretRef: {name: ..., key: ...}}`.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum EnvManifest {
    Value(String),
    Ref(EnvRef),
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EnvRef {
    secret_ref: SecretRef,
}

/// The stored form (postcard is not self-describing: a tagged enum).
#[derive(Serialize, Deserialize)]
enum EnvStored {
    Value(String),
    SecretRef(SecretRef),
}

impl Serialize for EnvValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            match self {
                EnvValue::Value(v) => EnvManifest::Value(v.clone()),
                EnvValue::SecretRef(r) => EnvManifest::Ref(EnvRef { secret_ref: r.clone() }),
            }
            .serialize(s)
        } else {
            match self {
                EnvValue::Value(v) => EnvStored::Value(v.clone()),
                EnvValue::SecretRef(r) => EnvStored::SecretRef(r.clone()),
            }
            .serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for EnvValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            match EnvManifest::deserialize(d)
                .map_err(|_| serde::de::Error::custom("expected a string, or {secretRef: {name: SECRET, key: KEY}}"))?
            {
                EnvManifest::Value(v) => Ok(EnvValue::Value(v)),
                EnvManifest::Ref(r) => Ok(EnvValue::SecretRef(r.secret_ref)),
            }
        } else {
            Ok(match EnvStored::deserialize(d)? {
                EnvStored::Value(v) => EnvValue::Value(v),
                EnvStored::SecretRef(r) => EnvValue::SecretRef(r),
            })
        }
    }
}

/// `spec.exposes`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Exposes {
    /// Tools are exposed.
    #[serde(default = "yes")]
    pub tools: bool,
    /// Resources are exposed.
    #[serde(default = "yes")]
    pub resources: bool,
    /// Prompts are exposed.
    #[serde(default = "yes")]
    pub prompts: bool,
}

fn yes() -> bool {
    true
}

impl Default for Exposes {
    fn default() -> Self {
        Exposes { tools: true, resources: true, prompts: true }
    }
}

/// `spec.discovery`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Discovery {
    /// Discovery runs for this server.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// How often capabilities are re-fetched, e.g. `10m`.
    #[serde(default = "default_refresh")]
    pub refresh_interval: String,
    /// What schema drift does.
    #[serde(default)]
    pub on_schema_drift: DriftAction,
    /// The server changes its tool list on purpose: drift is recorded, never acted on.
    #[serde(default)]
    pub declared_dynamic: bool,
}

fn default_refresh() -> String {
    "10m".to_string()
}

impl Default for Discovery {
    fn default() -> Self {
        Discovery {
            enabled: true,
            refresh_interval: default_refresh(),
            on_schema_drift: DriftAction::default(),
            declared_dynamic: false,
        }
    }
}

/// What happens when a server's capabilities drift from what was discovered before.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum DriftAction {
    /// Record an event; keep serving.
    #[default]
    Alert,
    /// Deny calls until an operator refreshes the server.
    Deny,
    /// Quarantine the server fleet-wide.
    Quarantine,
}

/// `spec.security`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Security {
    /// Run local servers under the sandbox.
    #[serde(default)]
    pub sandbox: bool,
    /// Allow the stdio transport for this server.
    #[serde(default)]
    pub allow_stdio: bool,
    /// Deny calls when the upstream's `serverInfo.version` differs from `pinnedVersion`.
    #[serde(default)]
    pub pin_server_version: bool,
    /// The version calls are pinned to.
    #[serde(default)]
    pub pinned_version: Option<String>,
    /// Publisher the server is expected to come from.
    #[serde(default)]
    pub trusted_publisher: Option<String>,
    /// Minimum trust score (0..=1) for the server to be used.
    #[serde(default)]
    pub min_trust_score: Option<f64>,
    /// `manual`: only approved tools may be used (`joch mcp approve-tool`).
    #[serde(default)]
    pub tool_approval: ToolApproval,
}

/// `spec.policies[]`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyRef {
    /// Policy name.
    pub name: String,
}

/// `spec.scanning`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Scanning {
    /// Scan inbound results for prompt injection.
    #[serde(default)]
    pub prompt_injection_scan: bool,
    /// Field classes redacted from results (`sshKeys`, `apiTokens`, ...).
    #[serde(default)]
    pub redact_fields_in_results: Vec<String>,
    /// What a prompt-injection hit does when no policy decides (`modify: redact` or a deny on
    /// `mcpResult.injectionScan.hit`): `strip` (default) the injected span, `annotate` the result
    /// with a warning, or `deny` it.
    #[serde(default)]
    pub on_injection: InjectionAction,
}

/// `spec.scanning.onInjection`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum InjectionAction {
    /// Remove the injected sentence, keep the rest; say so in `_meta`.
    #[default]
    Strip,
    /// Keep the result, add a warning the agent sees (in the content and in `_meta`).
    Annotate,
    /// Replace the result by an error (`prompt-injection-blocked`).
    Deny,
}
