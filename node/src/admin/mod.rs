//! The gRPC admin API (tonic): the `Registry` and `Cluster` services every node serves. Writes go
//! through the cluster (forwarded to the leader); reads are linearizable unless `stale`.

mod access;
mod audit;
mod convert;
mod guard;
pub mod status;
mod trust;

pub use trust::public_key_text;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use joch_proto::admin as pb;
use joch_proto::admin::cluster_server::{Cluster, ClusterServer};
use joch_proto::admin::registry_server::{Registry, RegistryServer};
use joch_raft_store::model::resource::{
    Auth, AuthKind, Endpoint, EnvValue, McpServerSpec, SecretRef, Security, StdioSpec, Transport,
};
use joch_raft_store::model::validate::{check_name, check_version};
use joch_raft_store::{Command, NodeAddr, PublishedState};
use tonic::{Request, Response, Status};

use crate::auth::admin::{denied, Operator};
use crate::cluster::message::MembershipChange;
use crate::cluster::ClusterNode;
use crate::resource::manifest;
use crate::secrets::Keyring;
use joch_proto::admin::access_server::AccessServer;
use joch_raft_store::model::access::Role;
use status::{outcome, to_status};

/// The admin services over one cluster node.
#[derive(Clone)]
pub struct AdminApi {
    cluster: Arc<ClusterNode>,
    keyring: Arc<Keyring>,
    /// The proxy's governance (what it learned of tools' annotations), for `policy explain`.
    gov: Arc<crate::policy::Governance>,
    /// Discovers a server from this node (the proxy, on the data plane's runtime).
    discoverer: Discoverer,
}

/// Discovers the named server (`joch mcp discover`).
pub type Discoverer = Arc<
    dyn Fn(String) -> futures::future::BoxFuture<'static, Result<joch_raft_store::model::discovery::Discovery, String>>
        + Send
        + Sync,
>;

impl AdminApi {
    /// The services, ready to add to a tonic router (behind the auth layer).
    pub fn services(
        cluster: Arc<ClusterNode>,
        keyring: Arc<Keyring>,
        gov: Arc<crate::policy::Governance>,
        discoverer: Discoverer,
    ) -> (RegistryServer<AdminApi>, ClusterServer<AdminApi>, AccessServer<AdminApi>) {
        let api = AdminApi { cluster, keyring, gov, discoverer };
        (RegistryServer::new(api.clone()), ClusterServer::new(api.clone()), AccessServer::new(api))
    }

    fn err(&self, e: crate::cluster::ClusterError) -> Status {
        to_status(self.cluster.id, e)
    }

    async fn read(&self, stale: bool) -> Result<Arc<PublishedState>, Status> {
        if !stale {
            self.cluster.read_barrier().await.map_err(|e| self.err(e))?;
        }
        Ok(self.cluster.registry.load())
    }

    /// Writes a command; if the command is fleet-acknowledged, waits for every member to apply it.
    async fn write(&self, actor: &str, command: Command) -> Result<pb::WriteReply, Status> {
        let fleet = command.fleet_acknowledged();
        // A write that takes something out of service is fenced on every member while it
        // commits (`cluster/fence.rs`): denied everywhere from about one mesh round trip on.
        let (written, fence) = match crate::cluster::fence::Target::of(&command) {
            Some(target) => {
                let (w, id) = tokio::join!(self.write_unacknowledged(actor, command), self.cluster.raise_fence(target));
                (w, Some(id))
            }
            None => (self.write_unacknowledged(actor, command).await, None),
        };
        let mut reply = match written {
            Ok(r) => r,
            Err(e) => {
                // Not written (or not known to be): lowered everywhere; if it commits after
                // all, the registry enforces it as any write.
                if let Some(id) = fence {
                    self.cluster.lower_fence(id, |_| true);
                }
                return Err(e);
            }
        };
        if fleet {
            let ack = self.cluster.fleet_ack(reply.log_index).await;
            if let Some(id) = fence {
                // The members that applied it enforce it from their registry; on the others the
                // fence stands until its time to live runs out.
                let applied: std::collections::BTreeSet<_> =
                    ack.members.iter().filter(|m| m.applied).map(|m| m.id).collect();
                self.cluster.lower_fence(id, move |n| applied.contains(&n));
            }
            reply.fleet = Some((&ack).into());
        } else if let Some(id) = fence {
            self.cluster.lower_fence(id, |_| true);
        }
        Ok(reply)
    }

    /// Writes a command and answers once the leader applied it.
    async fn write_unacknowledged(&self, actor: &str, command: Command) -> Result<pb::WriteReply, Status> {
        let out = self.cluster.write(actor, command).await.map_err(|e| self.err(e))?;
        let applied = out.response.result.and_then(|r| r.ok());
        Ok(pb::WriteReply {
            log_index: out.index,
            changed: applied.as_ref().is_some_and(|a| a.changed),
            summary: applied.map(|a| a.summary).unwrap_or_default(),
            fleet: None,
        })
    }
}

/// The authenticated operator (the auth layer put it there; without it, nothing is allowed).
fn operator<T>(req: &Request<T>) -> Result<Operator, Status> {
    req.extensions()
        .get::<Operator>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("the request was not authenticated"))
}

/// The actor recorded for a change: the authenticated operator's name, never a claim.
fn actor<T>(req: &Request<T>) -> String {
    operator(req).map(|o| o.name).unwrap_or_else(|_| "unauthenticated".into())
}

/// Registering a server that runs a command on every node (stdio) needs the admin role.
fn stdio_needs_admin(op: &Operator, spec: &McpServerSpec, name: &str) -> Result<(), Status> {
    if spec.transport == Transport::Stdio && op.role < Role::Admin {
        return Err(denied(op, Role::Admin, &format!("registering the stdio server {name:?}")));
    }
    Ok(())
}

fn invalid(field: &str, message: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {message}"))
}

/// Runs one admin method, recording its latency and outcome.
async fn observe<T>(
    method: &'static str,
    fut: impl std::future::Future<Output = Result<T, Status>>,
) -> Result<Response<T>, Status> {
    let started = Instant::now();
    let r = fut.await;
    metrics::counter!("joch_admin_requests_total", "method" => method, "outcome" => outcome(&r)).increment(1);
    metrics::histogram!("joch_admin_request_seconds", "method" => method).record(started.elapsed().as_secs_f64());
    if let Err(s) = &r {
        tracing::debug!(method, code = ?s.code(), message = s.message(), "admin request failed");
    }
    r.map(Response::new)
}

/// Suffix of the default secret name, as in the seeds (`github-mcp-oauth`).
fn default_secret_suffix(kind: AuthKind) -> &'static str {
    match kind {
        AuthKind::None => "none",
        AuthKind::Bearer => "token",
        AuthKind::Header => "header",
        AuthKind::ApiKey => "api-key",
        AuthKind::Oauth2 => "oauth",
    }
}

/// `SECRET` or `SECRET/KEY`.
fn secret_ref(s: &str) -> SecretRef {
    match s.split_once('/') {
        Some((name, key)) => SecretRef { name: name.into(), key: Some(key.into()) },
        None => SecretRef { name: s.into(), key: None },
    }
}

fn spec_from_add(r: &pb::AddServerRequest) -> Result<McpServerSpec, Status> {
    let transport = match r.transport.as_str() {
        "" | "streamable_http" | "http" => Transport::StreamableHttp,
        "stdio" => Transport::Stdio,
        other => return Err(invalid("transport", format!("{other:?}: expected streamable_http or stdio"))),
    };
    let text = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let auth = match r.auth.as_str() {
        "" => None,
        a => {
            let kind = AuthKind::parse(a)
                .ok_or_else(|| invalid("auth", format!("{a:?}: expected none, bearer, header, api_key or oauth2")))?;
            let secret = match (kind, r.secret_ref.as_str()) {
                (AuthKind::None, _) => None,
                (_, "") => {
                    Some(SecretRef { name: format!("{}-mcp-{}", r.name, default_secret_suffix(kind)), key: None })
                }
                (_, s) => Some(secret_ref(s)),
            };
            Some(Auth {
                kind,
                secret_ref: secret,
                header: text(&r.header),
                token_url: text(&r.token_url),
                scopes: r.scopes.clone(),
                audience: text(&r.audience),
            })
        }
    };
    let mut env: BTreeMap<String, EnvValue> =
        r.env.iter().map(|(k, v)| (k.clone(), EnvValue::Value(v.clone()))).collect();
    env.extend(r.env_secrets.iter().map(|(k, v)| (k.clone(), EnvValue::SecretRef(secret_ref(v)))));
    if !env.is_empty() && r.stdio_command.is_empty() {
        return Err(invalid("env", "--env and --env-secret apply to stdio servers (give --command)"));
    }
    let spec = McpServerSpec {
        transport,
        endpoint: (!r.endpoint.is_empty()).then(|| Endpoint { url: r.endpoint.clone() }),
        auth,
        stdio: (!r.stdio_command.is_empty()).then(|| StdioSpec {
            command: r.stdio_command.clone(),
            args: r.stdio_args.clone(),
            env,
        }),
        security: Security { allow_stdio: r.allow_stdio, ..Default::default() },
        ..Default::default()
    };
    let problems = spec.problems();
    if !problems.is_empty() {
        return Err(Status::invalid_argument(problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; ")));
    }
    Ok(spec)
}

#[tonic::async_trait]
impl Registry for AdminApi {
    async fn apply(&self, req: Request<pb::ApplyRequest>) -> Result<Response<pb::ApplyReply>, Status> {
        let actor = actor(&req);
        let op = operator(&req)?;
        let r = req.into_inner();
        observe("Apply", async {
            let source = if r.source.is_empty() { "<input>" } else { r.source.as_str() };
            let show = |errs: Vec<manifest::ManifestError>| {
                Status::invalid_argument(errs.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))
            };
            let mut manifests = manifest::parse(source, &r.text).map_err(show)?;
            let st = self.read(false).await?;
            let existing: Vec<String> = st.registry.policies.keys().cloned().collect();
            manifest::resolve_policies(
                source,
                &r.text,
                &mut manifests,
                &|n| st.registry.policies.contains_key(n),
                &existing,
            )
            .map_err(show)?;
            // Every manifest is written in order; one fleet acknowledgement of the last one that
            // needs it then covers them all (a member that applied index N applied every one before).
            for m in &manifests {
                match m {
                    manifest::Manifest::McpServer { name, spec, .. } => stdio_needs_admin(&op, spec, name)?,
                    manifest::Manifest::Secret { name, .. } if op.role < Role::Admin => {
                        return Err(denied(&op, Role::Admin, &format!("applying secret {name:?}")));
                    }
                    _ => {}
                }
            }
            let mut results = Vec::new();
            let mut acked: Option<usize> = None;
            for m in manifests {
                let (kind, name) = (m.kind().to_string(), m.name().to_string());
                let command = m.into_command(|name, data| self.seal_secret(name, data))?;
                if command.fleet_acknowledged() {
                    acked = Some(results.len());
                }
                let write = self.write_unacknowledged(&actor, command).await?;
                results.push(pb::ApplyResult { kind, name, write: Some(write) });
            }
            if let Some(i) = acked {
                if let Some(w) = results[i].write.as_mut() {
                    w.fleet = Some((&self.cluster.fleet_ack(w.log_index).await).into());
                }
            }
            Ok(pb::ApplyReply { results })
        })
        .await
    }

    async fn add_server(&self, req: Request<pb::AddServerRequest>) -> Result<Response<pb::WriteReply>, Status> {
        let actor = actor(&req);
        let op = operator(&req)?;
        let r = req.into_inner();
        observe("AddServer", async {
            check_name("name", &r.name).map_err(|e| invalid(&e.field, e.message))?;
            let spec = spec_from_add(&r)?;
            stdio_needs_admin(&op, &spec, &r.name)?;
            let labels: BTreeMap<String, String> = r.labels.into_iter().collect();
            self.write(&actor, Command::CreateServer { name: r.name, labels, spec }).await
        })
        .await
    }

    async fn delete_server(&self, req: Request<pb::NameRequest>) -> Result<Response<pb::WriteReply>, Status> {
        let actor = actor(&req);
        let name = req.into_inner().name;
        observe("DeleteServer", self.write(&actor, Command::DeleteServer { name })).await
    }

    async fn pin(&self, req: Request<pb::PinRequest>) -> Result<Response<pb::WriteReply>, Status> {
        let actor = actor(&req);
        let r = req.into_inner();
        observe("Pin", async {
            check_version("version", &r.version).map_err(|e| invalid(&e.field, e.message))?;
            self.write(&actor, Command::Pin { name: r.name, version: r.version }).await
        })
        .await
    }

    async fn upgrade(&self, req: Request<pb::UpgradeRequest>) -> Result<Response<pb::WriteReply>, Status> {
        let actor = actor(&req);
        let r = req.into_inner();
        observe("Upgrade", async {
            check_version("version", &r.version).map_err(|e| invalid(&e.field, e.message))?;
            self.write(&actor, Command::Upgrade { name: r.name, version: r.version, review: r.review }).await
        })
        .await
    }

    async fn quarantine(&self, req: Request<pb::QuarantineRequest>) -> Result<Response<pb::WriteReply>, Status> {
        let actor = actor(&req);
        let r = req.into_inner();
        observe("Quarantine", async {
            let reason = if r.reason.trim().is_empty() { "no reason given".to_string() } else { r.reason };
            self.write(&actor, Command::Quarantine { name: r.name, reason }).await
        })
        .await
    }

    async fn discover(&self, req: Request<pb::NameRequest>) -> Result<Response<pb::DiscoverReply>, Status> {
        let actor = actor(&req);
        let name = req.into_inner().name;
        observe("Discover", async {
            let node = self.cluster.id;
            let found = (self.discoverer)(name.clone())
                .await
                .map_err(|e| Status::failed_precondition(format!("node {node}: discovery of {name:?} failed: {e}")))?;
            let write =
                self.write(&actor, Command::RecordDiscovery { name: name.clone(), discovery: Box::new(found) }).await?;
            let state = self.cluster.registry.load();
            let rec = state
                .registry
                .servers
                .get(&name)
                .ok_or_else(|| Status::not_found(format!("MCP server {name:?} is not registered")))?;
            let mut status: serde_json::Value =
                serde_json::from_str(&convert::discovery_json(rec)).unwrap_or_else(|_| serde_json::json!({}));
            status["phase"] = serde_json::json!(rec.phase());
            status["quarantine"] = serde_json::json!(rec.status.quarantine.as_ref().map(|q| &q.reason));
            status["trust"] = serde_json::json!(rec.status.trust);
            Ok(pb::DiscoverReply { status_json: status.to_string(), write: Some(write) })
        })
        .await
    }

    async fn unquarantine(&self, req: Request<pb::NameRequest>) -> Result<Response<pb::WriteReply>, Status> {
        let actor = actor(&req);
        let name = req.into_inner().name;
        observe("Unquarantine", self.write(&actor, Command::Unquarantine { name })).await
    }

    async fn approve_tool(&self, req: Request<pb::ApproveToolRequest>) -> Result<Response<pb::WriteReply>, Status> {
        let actor = actor(&req);
        let tool = req.into_inner().tool;
        observe("ApproveTool", async {
            let (server, tool) = tool
                .split_once('.')
                .filter(|(s, t)| !s.is_empty() && !t.is_empty())
                .ok_or_else(|| invalid("tool", format!("{tool:?}: expected SERVER.TOOL, e.g. github.create_issue")))?;
            self.write(&actor, Command::ApproveTool { server: server.into(), tool: tool.into() }).await
        })
        .await
    }

    async fn get_trust(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::TrustReply>, Status> {
        let r = req.into_inner();
        observe("GetTrust", self.trust_json(r)).await
    }

    async fn set_trust(&self, req: Request<pb::TrustRequest>) -> Result<Response<pb::WriteReply>, Status> {
        let actor = actor(&req);
        let r = req.into_inner();
        observe("SetTrust", async { self.write_trust(&actor, r).await }).await
    }

    async fn agbom(&self, req: Request<pb::AgbomRequest>) -> Result<Response<pb::TrustReply>, Status> {
        let r = req.into_inner();
        observe("Agbom", self.agbom_json(r)).await
    }

    async fn set_guard_feed(&self, req: Request<pb::GuardFeedRequest>) -> Result<Response<pb::WriteReply>, Status> {
        let actor = actor(&req);
        let r = req.into_inner();
        observe("SetGuardFeed", async { self.write_guard_feed(&actor, r).await }).await
    }

    async fn list_guard_feeds(&self, req: Request<pb::ListRequest>) -> Result<Response<pb::TrustReply>, Status> {
        let r = req.into_inner();
        observe("ListGuardFeeds", self.guard_feeds_json(r.stale)).await
    }

    async fn list_incidents(&self, req: Request<pb::ListRequest>) -> Result<Response<pb::TrustReply>, Status> {
        let r = req.into_inner();
        observe("ListIncidents", self.incidents_json(r.stale)).await
    }

    async fn ack_incident(&self, req: Request<pb::IncidentAck>) -> Result<Response<pb::WriteReply>, Status> {
        let actor = actor(&req);
        let id = req.into_inner().id;
        observe("AckIncident", self.write(&actor, Command::AckIncident { id })).await
    }

    async fn delete_guard_feed(&self, req: Request<pb::NameRequest>) -> Result<Response<pb::WriteReply>, Status> {
        let actor = actor(&req);
        let name = req.into_inner().name;
        observe("DeleteGuardFeed", self.write(&actor, Command::DeleteGuardFeed { name })).await
    }

    async fn set_server_policy(
        &self,
        req: Request<pb::ServerPolicyRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let actor = actor(&req);
        let r = req.into_inner();
        observe(
            "SetServerPolicy",
            self.write(&actor, Command::SetServerPolicy { name: r.name, read_only: r.read_only }),
        )
        .await
    }

    async fn delete_policy(&self, req: Request<pb::NameRequest>) -> Result<Response<pb::WriteReply>, Status> {
        let actor = actor(&req);
        let name = req.into_inner().name;
        observe("DeletePolicy", self.write(&actor, Command::DeletePolicy { name })).await
    }

    async fn get_server(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::Server>, Status> {
        let r = req.into_inner();
        observe("GetServer", async {
            let st = self.read(r.stale).await?;
            let rec = st
                .registry
                .servers
                .get(&r.name)
                .ok_or_else(|| Status::not_found(format!("MCP server {:?} is not registered", r.name)))?;
            let mut s = convert::server(rec, st.applied_index);
            if let Some((calls, denied)) = self.counts_7d(&r.name).await {
                (s.call_count_7d, s.deny_count_7d) = (Some(calls), Some(denied));
            }
            Ok(s)
        })
        .await
    }

    async fn list_servers(&self, req: Request<pb::ListRequest>) -> Result<Response<pb::ServerList>, Status> {
        let r = req.into_inner();
        observe("ListServers", async {
            let st = self.read(r.stale).await?;
            let servers = st.registry.servers.values().map(|s| convert::server(s, st.applied_index)).collect();
            Ok(pb::ServerList { servers, read_index: st.applied_index })
        })
        .await
    }

    async fn get_policy(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::Policy>, Status> {
        let r = req.into_inner();
        observe("GetPolicy", async {
            let st = self.read(r.stale).await?;
            let rec = st
                .registry
                .policies
                .get(&r.name)
                .ok_or_else(|| Status::not_found(format!("policy {:?} does not exist", r.name)))?;
            Ok(convert::policy(rec, st.applied_index))
        })
        .await
    }

    async fn list_policies(&self, req: Request<pb::ListRequest>) -> Result<Response<pb::PolicyList>, Status> {
        let r = req.into_inner();
        observe("ListPolicies", async {
            let st = self.read(r.stale).await?;
            let policies = st.registry.policies.values().map(|p| convert::policy(p, st.applied_index)).collect();
            Ok(pb::PolicyList { policies, read_index: st.applied_index })
        })
        .await
    }

    async fn explain_policy(&self, req: Request<pb::ExplainRequest>) -> Result<Response<pb::ExplainReply>, Status> {
        let r = req.into_inner();
        observe("ExplainPolicy", async {
            let st = self.read(r.stale).await?;
            let rec = st
                .registry
                .servers
                .get(&r.server)
                .ok_or_else(|| Status::not_found(format!("MCP server {:?} is not registered", r.server)))?;
            let registered = st.registry.access.agents.get(&r.agent);
            let note = match (registered, r.labels.is_empty()) {
                (None, true) => Some(format!(
                    "agent {:?} is not registered with joch: decided with no labels (give an identity provider's agent its labels with --label)",
                    r.agent
                )),
                _ => None,
            };
            let labels = match registered {
                Some(a) if r.labels.is_empty() => a.labels.clone(),
                _ => r.labels.into_iter().collect(),
            };
            let caller = crate::auth::agent::Caller {
                name: r.agent.clone(),
                source: crate::auth::agent::Source::Anonymous,
                labels,
            };
            let kind = match r.kind.as_str() {
                "" | "tool" => joch_policy::Kind::Tool,
                "prompt" => joch_policy::Kind::Prompt,
                "resource" => joch_policy::Kind::Resource,
                other => return Err(invalid("kind", format!("unknown kind {other:?}: tool, prompt or resource"))),
            };
            let args: Option<serde_json::Value> = if r.args_json.is_empty() {
                None
            } else {
                Some(serde_json::from_str(&r.args_json).map_err(|e| invalid("args", format!("not JSON: {e}")))?)
            };
            let method = match kind {
                joch_policy::Kind::Tool => "tools/call",
                joch_policy::Kind::Prompt => "prompts/get",
                joch_policy::Kind::Resource => "resources/read",
            };
            let subject = crate::policy::Subject {
                kind,
                method,
                name: &r.name,
                annotations: None,
                args: Some(args.as_ref().unwrap_or(&serde_json::Value::Null)),
                now_ms: crate::policy::list::now_ms(),
            };
            let mut v = self.gov.explain(&st, &caller, rec, &subject);
            if let Some(n) = note {
                v["note"] = serde_json::Value::String(n);
            }
            Ok(pb::ExplainReply { json: v.to_string(), read_index: st.applied_index })
        })
        .await
    }

    async fn list_virtual_servers(
        &self,
        req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::VirtualServerList>, Status> {
        let r = req.into_inner();
        observe("ListVirtualServers", async {
            let st = self.read(r.stale).await?;
            let manifests_json = st
                .registry
                .virtual_servers
                .values()
                .map(|v| {
                    serde_json::json!({"apiVersion": "joch.dev/v1alpha1", "kind": "VirtualServer",
                        "metadata": {"name": v.name, "labels": v.labels}, "spec": v.spec,
                        "status": {"endpoint": format!("/mcp/v/{}", v.name), "generation": v.generation,
                            "updated": {"by": v.updated.actor, "atMs": v.updated.at_ms, "index": v.updated.index}}})
                    .to_string()
                })
                .collect();
            Ok(pb::VirtualServerList { manifests_json, read_index: st.applied_index })
        })
        .await
    }

    async fn delete_virtual_server(&self, req: Request<pb::NameRequest>) -> Result<Response<pb::WriteReply>, Status> {
        let actor = actor(&req);
        let name = req.into_inner().name;
        observe("DeleteVirtualServer", self.write(&actor, Command::DeleteVirtualServer { name })).await
    }

    async fn list_approvals(&self, req: Request<pb::ListRequest>) -> Result<Response<pb::ApprovalList>, Status> {
        let r = req.into_inner();
        observe("ListApprovals", async {
            let st = self.read(r.stale).await?;
            let mut approvals: Vec<pb::Approval> =
                st.registry.approvals.values().map(|a| convert::approval(a)).collect();
            approvals.sort_by_key(|a| std::cmp::Reverse(a.requested.as_ref().map(|s| s.index)));
            Ok(pb::ApprovalList { approvals, read_index: st.applied_index })
        })
        .await
    }

    async fn decide_approval(
        &self,
        req: Request<pb::DecideApprovalRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let actor = actor(&req);
        let r = req.into_inner();
        observe("DecideApproval", async {
            if !r.approve && r.reason.trim().is_empty() {
                return Err(invalid("reason", "a denial needs a reason (--reason): the agent is told it"));
            }
            self.write(&actor, Command::DecideApproval { id: r.id, approve: r.approve, reason: r.reason }).await
        })
        .await
    }

    async fn history(&self, req: Request<pb::HistoryRequest>) -> Result<Response<pb::HistoryReply>, Status> {
        let r = req.into_inner();
        observe("History", async {
            let target = if r.target.contains('/') { r.target.clone() } else { format!("mcpserver/{}", r.target) };
            let st = self.read(r.stale).await?;
            let lines = st
                .registry
                .history
                .get(&target)
                .ok_or_else(|| Status::not_found(format!("no history for {target:?}: it was never registered")))?;
            Ok(pb::HistoryReply { changes: lines.iter().map(convert::change).collect(), read_index: st.applied_index })
        })
        .await
    }

    async fn get_retention(&self, req: Request<pb::ListRequest>) -> Result<Response<pb::Retention>, Status> {
        let r = req.into_inner();
        observe("GetRetention", async {
            let st = self.read(r.stale).await?;
            let ret = st.registry.retention;
            Ok(pb::Retention {
                history_per_server: ret.history_per_target,
                history_max_age: match ret.history_max_age_ms {
                    ms if ms % 86_400_000 == 0 => format!("{}d", ms / 86_400_000),
                    ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
                    ms => humantime::format_duration(std::time::Duration::from_millis(ms)).to_string(),
                },
                read_index: st.applied_index,
            })
        })
        .await
    }

    async fn set_retention(&self, req: Request<pb::Retention>) -> Result<Response<pb::WriteReply>, Status> {
        let actor = actor(&req);
        let r = req.into_inner();
        observe("SetRetention", async {
            let current = self.cluster.registry.load().registry.retention;
            let per = if r.history_per_server == 0 { current.history_per_target } else { r.history_per_server };
            let age = if r.history_max_age.is_empty() {
                current.history_max_age_ms
            } else {
                joch_raft_store::model::validate::parse_duration(&r.history_max_age)
                    .ok_or_else(|| {
                        invalid(
                            "history_max_age",
                            format!("{:?} is not a duration (e.g. 90d, 720h)", r.history_max_age),
                        )
                    })?
                    .as_millis() as u64
            };
            self.write(&actor, Command::SetRetention { history_per_target: per, history_max_age_ms: age }).await
        })
        .await
    }

    async fn query_audit(&self, req: Request<pb::AuditQueryRequest>) -> Result<Response<pb::AuditReply>, Status> {
        let r = req.into_inner();
        observe("QueryAudit", async { Ok(pb::AuditReply { json: self.query_audit_json(r).await? }) }).await
    }

    async fn verify_audit(&self, req: Request<pb::AuditVerifyRequest>) -> Result<Response<pb::AuditReply>, Status> {
        let r = req.into_inner();
        observe("VerifyAudit", async { Ok(pb::AuditReply { json: self.verify_audit_json(r).await? }) }).await
    }

    async fn gates(&self, req: Request<pb::GatesRequest>) -> Result<Response<pb::AuditReply>, Status> {
        let r = req.into_inner();
        observe("Gates", async { Ok(pb::AuditReply { json: self.gates_json(r).await? }) }).await
    }
}

fn member_addr(m: &pb::Member) -> Result<NodeAddr, Status> {
    if m.id == 0 {
        return Err(invalid("member.id", "must be greater than 0"));
    }
    if m.mesh.is_empty() {
        return Err(invalid("member.mesh", "required: the node's QUIC mesh address (HOST:PORT)"));
    }
    Ok(NodeAddr { mesh: m.mesh.clone(), admin: m.admin.clone(), mcp: m.mcp.clone() })
}

#[tonic::async_trait]
impl Cluster for AdminApi {
    async fn init(&self, req: Request<pb::InitRequest>) -> Result<Response<pb::InitReply>, Status> {
        let r = req.into_inner();
        observe("Init", async {
            let mut members = BTreeMap::new();
            for m in &r.members {
                let addr = if m.id == self.cluster.id && m.mesh.is_empty() {
                    self.cluster.addr.clone()
                } else {
                    member_addr(m)?
                };
                if members.insert(m.id, addr).is_some() {
                    return Err(invalid("members", format!("node id {} appears twice", m.id)));
                }
            }
            self.cluster.init(members).await.map_err(|e| self.err(e))?;
            let members = self
                .cluster
                .members()
                .into_iter()
                .map(|(id, a, _)| pb::Member { id, mesh: a.mesh, admin: a.admin, mcp: a.mcp })
                .collect();
            let leader = self.cluster.raft.metrics().borrow().current_leader.unwrap_or(0);
            Ok(pb::InitReply { leader, members })
        })
        .await
    }

    async fn node_info(&self, _req: Request<pb::Empty>) -> Result<Response<pb::Member>, Status> {
        observe("NodeInfo", async {
            let a = &self.cluster.addr;
            Ok(pb::Member { id: self.cluster.id, mesh: a.mesh.clone(), admin: a.admin.clone(), mcp: a.mcp.clone() })
        })
        .await
    }

    async fn add_member(&self, req: Request<pb::AddMemberRequest>) -> Result<Response<pb::MembershipReply>, Status> {
        let r = req.into_inner();
        observe("AddMember", async {
            let m = r.member.ok_or_else(|| invalid("member", "required"))?;
            let addr = member_addr(&m)?;
            let out = self
                .cluster
                .change_membership(MembershipChange::Add { id: m.id, addr, learner_only: r.learner_only })
                .await
                .map_err(|e| self.err(e))?;
            Ok(pb::MembershipReply { voters: out.voters, learners: out.learners, log_index: out.index })
        })
        .await
    }

    async fn remove_member(
        &self,
        req: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::MembershipReply>, Status> {
        let r = req.into_inner();
        observe("RemoveMember", async {
            if !self.cluster.members().iter().any(|(id, _, _)| *id == r.id) {
                return Err(Status::not_found(format!("node {} is not a member", r.id)));
            }
            let out =
                self.cluster.change_membership(MembershipChange::Remove { id: r.id }).await.map_err(|e| self.err(e))?;
            Ok(pb::MembershipReply { voters: out.voters, learners: out.learners, log_index: out.index })
        })
        .await
    }

    async fn status(&self, _req: Request<pb::Empty>) -> Result<Response<pb::ClusterStatus>, Status> {
        observe("Status", async {
            let v = self.cluster.view_cluster().await;
            let leader_last = v
                .members
                .iter()
                .filter_map(|m| m.status.as_ref().ok())
                .find(|s| Some(s.id) == v.leader)
                .map(|s| s.last_log_index)
                .unwrap_or_else(|| {
                    v.members.iter().filter_map(|m| m.status.as_ref().ok()).map(|s| s.last_log_index).max().unwrap_or(0)
                });
            Ok(pb::ClusterStatus {
                node_id: v.node_id,
                leader: v.leader.unwrap_or(0),
                has_leader: v.leader.is_some(),
                term: v.term,
                members: v.members.iter().map(|m| convert::member_status(m, leader_last)).collect(),
            })
        })
        .await
    }
}
