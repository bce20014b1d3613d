//! The governed catalog as an MCP Registry: every node serves the generic MCP Registry API
//! (`modelcontextprotocol/registry`, `docs/reference/api/openapi.yaml`, version `v0.1`, and `v0`
//! where identical) on its MCP listener, read-only, from the in-memory snapshot (no Raft round
//! trip per request). An IDE or agent that reads a registry URL reads joch's: the servers it may
//! use, each reachable only through the gateway (`remotes` = `/mcp/NAME` of this fleet).
//!
//! What is listed: registered servers that are not quarantined; for a caller with an agent's
//! credential, those its policies do not deny it as a whole (the decision `tools/list` makes,
//! for a tool no rule names); without a credential, what `catalog.anonymous` allows (nothing by
//! default). `server_json.rs` converts both ways (served entries, and `joch mcp import`).

pub mod server_json;

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::Engine as _;
use joch_policy::Kind;
use joch_raft_store::{RegistryHandle, ServerRecord};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::agent::{AgentAuth, Caller};
use crate::policy::{Governance, RefusalKind, Subject};

/// Who sees what without a credential (`catalog.anonymous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Anonymous {
    /// An empty listing (the default).
    #[default]
    None,
    /// Every listed server.
    All,
}

/// How a node serves the catalog (`catalog:` of its config).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The reverse-DNS namespace servers are listed under (`NAMESPACE/NAME`).
    pub namespace: String,
    /// Where agents reach the fleet (the load balancer); `None`: as the request addressed this node.
    pub public_url: Option<String>,
    /// What a caller without a credential sees.
    pub anonymous: Anonymous,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings { namespace: "local.joch".into(), public_url: None, anonymous: Anonymous::None }
    }
}

/// The catalog of one node.
pub struct Catalog {
    registry: RegistryHandle,
    gov: Arc<Governance>,
    agents: Arc<AgentAuth>,
    tls: bool,
    settings: Settings,
}

/// Default and largest page.
const PAGE: usize = 30;
const MAX_PAGE: usize = 100;

#[derive(Default)]
struct ListQuery {
    cursor: Option<String>,
    limit: Option<String>,
    search: Option<String>,
    updated_since: Option<String>,
    version: Option<String>,
}

/// An answer other than 200, in the registry API's shape: `{"error": MESSAGE}`.
struct Refused(StatusCode, String);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        (self.0, axum::Json(json!({ "error": self.1 }))).into_response()
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Refused {
    Refused(status, message.into())
}

impl Catalog {
    /// A catalog over this node's registry, deciding per caller with `gov`.
    pub fn new(
        registry: RegistryHandle,
        gov: Arc<Governance>,
        agents: Arc<AgentAuth>,
        tls: bool,
        settings: Settings,
    ) -> Catalog {
        Catalog { registry, gov, agents, tls, settings }
    }

    /// The routes, under `/v0.1` and `/v0`.
    pub fn router<S: Clone + Send + Sync + 'static>(self: Arc<Self>) -> Router<S> {
        let mut r = Router::new();
        for v in ["/v0.1", "/v0"] {
            r = r
                .route(&format!("{v}/servers"), get(list))
                .route(&format!("{v}/servers/{{name}}/versions"), get(versions))
                .route(&format!("{v}/servers/{{name}}/versions/{{version}}"), get(one));
        }
        r.with_state(self)
    }

    /// Who asks: `Ok(None)` without a credential, `Err` with one that does not hold.
    fn caller(&self, headers: &HeaderMap) -> Result<Option<Arc<Caller>>, Refused> {
        let Some(h) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
            return Ok(None);
        };
        let access = self.registry.load().registry.access.clone();
        self.agents
            .authenticate(&access, Some(h))
            .map(Some)
            .map_err(|e| error(StatusCode::UNAUTHORIZED, format!("unauthenticated: {e}")))
    }

    /// The servers `caller` is offered, by name.
    fn offered(&self, caller: Option<&Caller>) -> Vec<Arc<ServerRecord>> {
        let state = self.registry.load();
        let servers = state.registry.servers.values().filter(|r| r.phase() != "Quarantined");
        match caller {
            None if self.settings.anonymous == Anonymous::None => Vec::new(),
            None => servers.cloned().collect(),
            Some(c) => servers
                .filter(|rec| {
                    let s = Subject {
                        kind: Kind::Tool,
                        method: "tools/call",
                        name: "",
                        annotations: None,
                        args: None,
                        now_ms: crate::policy::list::now_ms(),
                    };
                    !matches!(self.gov.judge(&state, c, rec, &s, None), Err(r) if r.kind == RefusalKind::Policy)
                })
                .cloned()
                .collect(),
        }
    }

    /// Where the servers are reached: `catalog.public_url`, else as this request addressed us.
    fn base(&self, headers: &HeaderMap) -> String {
        if let Some(u) = &self.settings.public_url {
            return u.trim_end_matches('/').to_string();
        }
        let host = headers.get("host").and_then(|v| v.to_str().ok()).unwrap_or("localhost");
        format!("{}://{host}", if self.tls { "https" } else { "http" })
    }

    /// The joch name in a served `NAMESPACE/NAME`.
    fn local<'a>(&self, served: &'a str) -> Option<&'a str> {
        served.strip_prefix(&self.settings.namespace)?.strip_prefix('/')
    }
}

impl ListQuery {
    /// The query string's parameters (percent-decoded; the last of a repeated one wins).
    fn parse(uri: &axum::http::Uri) -> ListQuery {
        let mut q = ListQuery::default();
        let Ok(u) = reqwest::Url::parse(&format!("http://x/?{}", uri.query().unwrap_or_default())) else { return q };
        for (k, v) in u.query_pairs() {
            let v = Some(v.into_owned());
            match &*k {
                "cursor" => q.cursor = v,
                "limit" => q.limit = v,
                "search" => q.search = v,
                "updated_since" => q.updated_since = v,
                "version" => q.version = v,
                _ => {}
            }
        }
        q
    }
}

async fn list(State(c): State<Arc<Catalog>>, headers: HeaderMap, uri: axum::http::Uri) -> Result<Response, Refused> {
    let q = ListQuery::parse(&uri);
    let caller = c.caller(&headers)?;
    let limit = match q.limit.as_deref().map(str::parse::<usize>) {
        None => PAGE,
        Some(Ok(n)) if (1..=MAX_PAGE).contains(&n) => n,
        Some(_) => {
            return Err(error(StatusCode::BAD_REQUEST, format!("limit: expected a number from 1 to {MAX_PAGE}")))
        }
    };
    let after = match q.cursor.as_deref().filter(|c| !c.is_empty()) {
        None => None,
        Some(cur) => match base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(cur)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
        {
            Some(name) => Some(name),
            None => return Err(error(StatusCode::BAD_REQUEST, "cursor: not a cursor this registry returned")),
        },
    };
    let since = match q.updated_since.as_deref() {
        None => None,
        Some(t) => match humantime::parse_rfc3339_weak(t) {
            Ok(t) => Some(t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)),
            Err(e) => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    format!("updated_since: {t:?} is not an RFC 3339 time ({e})"),
                ))
            }
        },
    };
    let search = q.search.as_deref().map(str::to_lowercase);
    let base = c.base(&headers);
    let ns = &c.settings.namespace;
    let mut matching = c.offered(caller.as_deref()).into_iter().filter(|r| {
        let name = server_json::name(ns, r);
        search.as_ref().is_none_or(|s| name.to_lowercase().contains(s))
            && since.is_none_or(|t| r.updated.at_ms >= t)
            && q.version.as_deref().is_none_or(|v| v == "latest" || v == server_json::version(r))
            && after.as_ref().is_none_or(|a| r.name.as_str() > a.as_str())
    });
    let page: Vec<Arc<ServerRecord>> = matching.by_ref().take(limit).collect();
    let more = matching.next().is_some();
    let mut metadata = json!({ "count": page.len() });
    if more {
        if let Some(last) = page.last() {
            metadata["nextCursor"] =
                json!(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(last.name.as_bytes()));
        }
    }
    let servers: Vec<Value> = page.iter().map(|r| server_json::entry(r, ns, &base)).collect();
    Ok(axum::Json(json!({ "servers": servers, "metadata": metadata })).into_response())
}

/// The offered server named `served`, or the 404.
fn find(c: &Catalog, headers: &HeaderMap, served: &str) -> Result<Arc<ServerRecord>, Refused> {
    let caller = c.caller(headers)?;
    let not_found = || error(StatusCode::NOT_FOUND, "Server not found");
    let name = c.local(served).ok_or_else(not_found)?;
    c.offered(caller.as_deref()).into_iter().find(|r| r.name == name).ok_or_else(not_found)
}

async fn versions(
    State(c): State<Arc<Catalog>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, Refused> {
    let r = find(&c, &headers, &name)?;
    let entry = server_json::entry(&r, &c.settings.namespace, &c.base(&headers));
    Ok(axum::Json(json!({ "servers": [entry], "metadata": { "count": 1 } })).into_response())
}

async fn one(
    State(c): State<Arc<Catalog>>,
    headers: HeaderMap,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, Refused> {
    let r = find(&c, &headers, &name)?;
    if version != "latest" && version != server_json::version(&r) {
        return Err(error(
            StatusCode::NOT_FOUND,
            format!("Server version not found: {name} is served at version {}", server_json::version(&r)),
        ));
    }
    Ok(axum::Json(server_json::entry(&r, &c.settings.namespace, &c.base(&headers))).into_response())
}
