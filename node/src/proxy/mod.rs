//! The MCP proxy (data plane): `/mcp/{server}` for each registered server and the aggregate
//! `/mcp`, in both eras of the protocol, to streamable-HTTP and stdio upstreams. It reads the
//! node only through a [`NodeView`] (the published registry, the lease, the members' addresses,
//! the mesh) and never touches RocksDB.
//!
//! The request path, one layer per file (ARCHITECTURE.md draws it):
//! - `request.rs`: the inbound request and the [`Call`](request::Call) made of it once;
//!   `routing.rs`: the front — origin, protocol version, the JSON-RPC body parsed once into the
//!   call, the session opened, and the request handed to the layer for its endpoint and era;
//! - `admission.rs`: the only maker of an `Admitted`, which everything that talks to an upstream
//!   requires; it carries the cut (registry and lease watches taken before the checks);
//! - `session.rs`: the legacy session path on `/mcp/{server}` (initialize, requests, the
//!   session's stream and its end); `stdio_bridge.rs`: the same to a shared stdio child;
//! - `modern/`: the modern era's validation, its translation to legacy upstreams (and of legacy
//!   callers to modern-only upstreams), and `subscriptions/listen`;
//! - `aggregate.rs`: `/mcp`, every usable server behind one session;
//! - `forward.rs`: a stdio session's requests relayed over the mesh to the node that owns it;
//! - `exit.rs`: the one exit, where every answer runs the stages and streams are relayed and cut;
//! - `upstream/`: the HTTP client and the stdio children; `streams.rs`: what a shared child sends
//!   on its own, routed to its sessions; `stages.rs`, `deny.rs`: the stages and every denial.
//!
//! The official Rust SDK (rmcp) is not used here: an intermediary needs byte-level control that
//! its typed client/server services hide: forwarding SSE event by event as the upstream wrote it,
//! keeping the upstream's status codes and headers, rewriting ids and progress tokens for a shared
//! stdio child, cutting a stream mid-way on a quarantine, and sealing its own session ids. The
//! protocol pieces joch needs are small (`crate::mcp`) and checked against the SDKs end to end.

pub mod admission;
pub(crate) mod aggregate;
pub mod deny;
pub mod discover;
pub mod exit;
pub mod forward;
mod held;
mod modern;
pub(crate) mod request;
mod routing;
mod session;
pub mod stages;
mod stdio_bridge;
mod streams;
pub mod upstream;

use std::sync::Arc;
use std::time::Instant;

use crate::policy::{list::ListFilter, Governance};
use admission::Admitted;
use admission::{Call, Gate};
use deny::{Denial, Reason};
use exit::Exit;
use stages::{Outcome, Stage, Telemetry};
use upstream::credentials::Credentials;
use upstream::http::Upstream;
use upstream::stdio::StdioPool;

use crate::auth::agent::{AgentAuth, Caller};
use crate::cluster::NodeView;
use crate::config::stdio_allow::StdioAllow;
use crate::config::ProxyLimits;
use crate::mcp::session::Sealer;
use crate::secrets::Keyring;

/// Largest initialize answer joch reads whole (to check the pinned version).
pub(crate) const MAX_INITIALIZE_ANSWER: usize = 1 << 20;
/// Largest JSON (non-stream) answer joch passes on.
pub(crate) const MAX_JSON_ANSWER: usize = 64 << 20;

/// How a node's proxy is set up.
pub struct Options {
    /// Its limits.
    pub limits: ProxyLimits,
    /// A request without a credential is the agent `anonymous`.
    pub allow_anonymous: bool,
    /// The MCP listener serves TLS (for the URLs joch gives out).
    pub tls: bool,
    /// Opens upstream secrets.
    pub keyring: Arc<Keyring>,
    /// The stdio commands this node runs.
    pub stdio_allow: StdioAllow,
    /// Commits approval requests and their use (held calls).
    pub proposer: Arc<dyn crate::policy::approvals::Proposer>,
    /// The node's audit trail (`None`: nothing is recorded).
    pub audit: Option<Arc<joch_audit::Audit>>,
    /// The node's own guardian (`guardian:`), called for every server.
    pub guardian: Option<joch_raft_store::model::resource::GuardianSpec>,
    /// How the MCP Registry API is served (`catalog:`).
    pub catalog: crate::catalog::Settings,
    /// How many MCP workers serve connections (`crate::workers`): one upstream pool each.
    pub workers: usize,
}

/// The proxy of one node.
pub struct Proxy {
    node: NodeView,
    gate: Gate,
    exit: Exit,
    stages: Arc<[Arc<dyn Stage>]>,
    upstream: Upstream,
    stdio: Arc<StdioPool>,
    eras: modern::Eras,
    limits: ProxyLimits,
    /// Requests in flight (streams included), bounded by `proxy.max_concurrent_requests`.
    in_flight: Arc<tokio::sync::Semaphore>,
    /// Who calls.
    agents: Arc<AgentAuth>,
    /// The fleet's catalog, served as an MCP Registry.
    catalog: Arc<crate::catalog::Catalog>,
    /// The MCP listener serves TLS (for the URLs joch gives out).
    tls: bool,
    /// Decides calls and list items.
    gov: Arc<Governance>,
    /// Holds calls that need an approval.
    approvals: Arc<crate::policy::approvals::Approvals>,
    /// This proxy (tasks that outlive a request's borrow: held streams).
    me: std::sync::Weak<Proxy>,
    /// Where finished requests are recorded.
    audit: Option<Arc<joch_audit::Audit>>,
    /// The guardian hooks (called at the front and at the exit).
    guardian: Arc<crate::guardian::Guardian>,
    /// Servers to discover again (what announced `tools/list_changed`; on the leader, also what
    /// other members saw announced).
    rediscover: tokio::sync::mpsc::Sender<String>,
}

impl Proxy {
    /// A proxy over this node's view; it also answers the MCP requests peers relay here.
    pub fn new(node: NodeView, opts: Options) -> anyhow::Result<Arc<Self>> {
        let Options { limits, allow_anonymous, tls, keyring, stdio_allow, proposer, audit, guardian, catalog, workers } =
            opts;
        let agents = Arc::new(AgentAuth::new(allow_anonymous));
        let guardian = Arc::new(crate::guardian::Guardian::new(guardian, node.registry.clone())?);
        let approvals = Arc::new(crate::policy::approvals::Approvals::new(
            node.id,
            node.registry.clone(),
            proposer.clone(),
            audit.clone(),
        ));
        let gov = Arc::new(Governance::new(node.members.clone()));
        let catalog =
            Arc::new(crate::catalog::Catalog::new(node.registry.clone(), gov.clone(), agents.clone(), tls, catalog));
        let (rediscover, announced) = discover::Rediscover::new();
        let rediscover_queue = rediscover.queue();
        let stages: Arc<[Arc<dyn Stage>]> = Arc::from(vec![
            Arc::new(ListFilter::new(gov.clone(), node.registry.clone())) as Arc<dyn Stage>,
            Arc::new(Telemetry) as Arc<dyn Stage>,
            // A server announcing new tools is discovered again (drift found without an operator).
            Arc::new(rediscover) as Arc<dyn Stage>,
            // What servers send back, scanned before it reaches the agent.
            Arc::new(crate::guard::stage::ContentGuard::new(node.registry.clone(), node.id, proposer.clone()))
                as Arc<dyn Stage>,
            // Last: it counts the bytes that leave and stamps what the agent sees.
            Arc::new(crate::audit::AuditStage) as Arc<dyn Stage>,
        ]);
        let gate =
            Gate::new(node.registry.clone(), node.lease.clone(), node.fences.clone(), gov.clone(), stages.clone());
        let exit = Exit::new(stages.clone(), guardian.clone(), limits.keepalive);
        let upstream =
            Upstream::new(&limits, workers, Arc::new(Credentials::new(keyring.clone())?), rediscover_queue.clone())?;
        let stdio = Arc::new(StdioPool::new(limits.upstream_timeout, stdio_allow, keyring, rediscover_queue.clone()));
        tokio::spawn(stdio.clone().reap(node.registry.clone(), node.lease.clone()));
        let in_flight = Arc::new(tokio::sync::Semaphore::new(limits.max_concurrent_requests));
        let proxy = Arc::new_cyclic(|me| Proxy {
            me: me.clone(),
            node,
            gate,
            exit,
            stages,
            upstream,
            stdio,
            eras: modern::Eras::default(),
            limits,
            in_flight,
            catalog,
            agents,
            tls,
            gov,
            approvals,
            audit,
            guardian,
            rediscover: rediscover_queue,
        });
        discover::Rediscover::serve(announced, Arc::downgrade(&proxy), proposer.clone());
        Ok(proxy)
    }

    /// The queue of servers to discover again (the leader takes other members' announcements).
    pub fn rediscover_queue(&self) -> tokio::sync::mpsc::Sender<String> {
        self.rediscover.clone()
    }

    /// The node's governance (the admin API's `policy explain` decides with it).
    pub fn governance(&self) -> Arc<Governance> {
        self.gov.clone()
    }

    /// Stops every stdio child (node shutdown).
    pub async fn shutdown(&self) {
        self.stdio.stop_all().await;
    }

    /// A call to `server` (empty: the aggregate endpoint) from `caller`, received by this node,
    /// in the agent's trace if its headers carry one; `relayed`: the execution id a peer gave it.
    fn call(
        &self,
        server: String,
        http_method: &'static str,
        caller: Arc<Caller>,
        headers: &axum::http::HeaderMap,
        relayed: Option<&str>,
    ) -> Call {
        let traceparent = headers.get("traceparent").and_then(|v| v.to_str().ok());
        let exec = crate::audit::exec::Exec::start(traceparent, relayed, self.audit.clone());
        Call { node: self.node.id, server, caller, http_method, rpc: None, session: None, approval: None, exec }
    }

    /// Admits a call to its server; a call a policy holds for approval waits here for the
    /// decision first (`policy/approvals.rs`), on the node that admits it.
    async fn admit_call(&self, call: &mut Call, headers: &axum::http::HeaderMap) -> Result<Admitted, Denial> {
        let admitted = self.admit_or_hold(call, headers).await;
        // What was admitted is what the rest of the request (its audit record) speaks of: the
        // message as it left, arguments redacted by policy included.
        if let Ok(a) = &admitted {
            call.rpc = a.call().rpc.clone();
        }
        admitted
    }

    async fn admit_or_hold(&self, call: &mut Call, headers: &axum::http::HeaderMap) -> Result<Admitted, Denial> {
        match self.gate.admit(call.clone()) {
            Err(d) if d.reason == Reason::ApprovalRequired && call.approval.is_none() => {
                let name = call.target().unwrap_or_default().to_string();
                let Some((mut held, _)) = self.approval_needed(call, &call.server, &name) else {
                    // Decided otherwise since: the admission says how.
                    return self.gate.admit(call.clone());
                };
                held.no_wait =
                    crate::policy::approvals::prefers_async(headers.get("prefer").and_then(|v| v.to_str().ok()));
                let id = self.approvals.hold(call, held).await?;
                call.approval = Some(id.into());
                self.gate.admit(call.clone())
            }
            other => other,
        }
    }

    /// Once per request: every stage's `on_finish`.
    fn finish(&self, call: &Call, outcome: &Outcome, started: Instant) {
        for s in self.stages.iter() {
            s.on_finish(call, outcome, started.elapsed());
        }
    }

    /// The sealer of session ids (the first session key is set by the first leader).
    fn sealer(&self, call: &Call) -> Result<Sealer, Denial> {
        let state = self.node.registry.load();
        let keys = state.registry.access.session_keys.iter().map(|k| (k.id, k.key));
        Sealer::new(keys, self.limits.session_max_age)
            .ok_or_else(|| call.deny(Reason::ControlPlaneStale, "cluster.key", "the cluster is not initialised yet"))
    }

    /// Whether `server` is registered as a stdio server (a lookup, not a decision: where a stdio
    /// session's requests are served).
    fn is_stdio(&self, server: &str) -> bool {
        self.node
            .registry
            .load()
            .registry
            .servers
            .get(server)
            .is_some_and(|r| r.spec.transport == joch_raft_store::model::resource::Transport::Stdio)
    }
}
