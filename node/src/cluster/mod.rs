//! The cluster: this node's Raft instance and what the admin API needs from it — writes
//! forwarded to the leader, linearizable reads (read index through the leader), fleet-wide
//! acknowledgements, status of every member, membership changes — and the lease that decides
//! whether this node may serve governed traffic (`lease.rs`), kept current by two tasks
//! ([`ClusterNode::run`]).
//!
//! It owns no storage (the store is joch-raft-store) and no transport (the mesh carries its
//! `message`s). What the data plane may see of it is a [`NodeView`].

mod discovery;
pub mod error;
pub mod fence;
mod handler;
mod members;
pub use members::Members;
pub mod identity;
pub mod lease;
pub mod message;
pub mod network;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use error::ClusterError;
use joch_raft_store::{Command, NodeAddr, NodeId, Raft, RegistryHandle, Request};
use lease::{Lease, Role, Standing};
use message::{
    ControlRequest, ControlResponse, MembershipChange, MembershipOutcome, NodeStatus, Refusal, WriteOutcome,
};
use openraft::error::{CheckIsLeaderError, ClientWriteError, InitializeError, RaftError};
use openraft::{ChangeMembers, RaftMetrics, ServerState};
use tokio_util::sync::CancellationToken;

use crate::config::RaftTiming;
use crate::mesh::Mesh;

/// Timeout of one mesh call made on behalf of an operator. A write to a live leader commits in
/// milliseconds; a dead leader must not hold the caller past this before we look for the new one.
const PEER_CALL: Duration = Duration::from_secs(3);
/// How long a fleet acknowledgement asks a node that left the cluster for its applied index.
const DEPARTED_CALL: Duration = Duration::from_millis(500);

/// Longest wait for a new member to catch up before it is made a voter.
const ADD_LEARNER_WAIT: Duration = Duration::from_secs(60);

/// One node's handle on the cluster.
pub struct ClusterNode {
    /// This node's id.
    pub id: NodeId,
    /// This node's advertised addresses.
    pub addr: NodeAddr,
    /// The Raft instance.
    pub raft: Raft,
    /// The published registry.
    pub registry: RegistryHandle,
    /// Whether this node may serve governed traffic.
    pub lease: Arc<Lease>,
    /// Fences standing here (writes taking something out of service, not applied yet).
    pub fences: Arc<fence::Fences>,
    members: Arc<Members>,
    mesh: Arc<Mesh>,
    settings: Settings,
    /// Commit index last granted by a leader (followers), for `commit_index`.
    leader_commit: AtomicU64,
    /// This node's audit trail (set once at start; peers' audit questions are answered from it).
    audit: std::sync::OnceLock<Arc<joch_audit::Audit>>,
    /// The proxy's queue of servers to discover again.
    rediscover: std::sync::OnceLock<tokio::sync::mpsc::Sender<String>>,
    /// The proxy's discovery, for a leader that may not run a stdio server itself.
    discoverer: std::sync::OnceLock<crate::admin::Discoverer>,
}

/// What the data plane may see of its node: its id, the published registry, its lease, where
/// the other members are, and the mesh to reach them. Nothing else of the cluster.
#[derive(Clone)]
pub struct NodeView {
    /// This node's id.
    pub id: NodeId,
    /// The published registry (lock-free reads).
    pub registry: RegistryHandle,
    /// Whether this node may serve governed traffic, and a watch that turns when it may not.
    pub lease: Arc<Lease>,
    /// The members' addresses.
    pub members: Arc<Members>,
    /// Fences standing here (admission denies what they name).
    pub fences: Arc<fence::Fences>,
    /// The mesh (forwarded MCP requests).
    pub mesh: Arc<Mesh>,
}

/// Timing the cluster handle needs from the node configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Raft timing (heartbeat, lease).
    pub timing: RaftTiming,
    /// Longest wait for every member to apply a fleet-acknowledged write.
    pub fleet_ack_timeout: Duration,
    /// Longest wait for a leader to accept a write or confirm a read.
    pub write_timeout: Duration,
    /// The stdio commands this node runs (shown in its status).
    pub stdio_allow: crate::config::stdio_allow::StdioAllow,
}

/// A member's answer to a fleet acknowledgement.
#[derive(Debug, Clone)]
pub struct MemberAck {
    /// Member id.
    pub id: NodeId,
    /// Its mesh address.
    pub mesh: String,
    /// It applied the entry.
    pub applied: bool,
    /// Its applied index when it answered.
    pub applied_index: u64,
    /// Why it did not confirm.
    pub error: Option<String>,
}

/// Result of waiting for every member to apply an entry.
#[derive(Debug, Clone)]
pub struct FleetAck {
    /// Every member applied it.
    pub complete: bool,
    /// How long the wait took.
    pub waited: Duration,
    /// Each member, then each node that left the membership lately (it may still hold a lease).
    pub members: Vec<MemberAck>,
    /// Unix ms by which a member that did not confirm stops serving at the latest (its lease
    /// runs out): the end of the wait plus the lease.
    pub laggards_stop_by_ms: u64,
}

/// A member as seen by `cluster status`.
#[derive(Debug, Clone)]
pub struct MemberView {
    /// Id.
    pub id: NodeId,
    /// Addresses.
    pub addr: NodeAddr,
    /// Voter (else learner).
    pub voter: bool,
    /// Its status, or why it could not be had.
    pub status: Result<NodeStatus, String>,
}

/// The cluster as seen from this node.
#[derive(Debug, Clone)]
pub struct ClusterView {
    /// This node.
    pub node_id: NodeId,
    /// Leader, if known.
    pub leader: Option<NodeId>,
    /// Current term here.
    pub term: u64,
    /// Members.
    pub members: Vec<MemberView>,
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn role(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

/// The highest index a quorum of voters holds, from the leader's replication metrics.
fn leader_commit_index(me: NodeId, m: &RaftMetrics<NodeId, NodeAddr>) -> u64 {
    let repl = m.replication.clone().unwrap_or_default();
    let matched = |v: &NodeId| {
        if *v == me {
            m.last_log_index.unwrap_or(0)
        } else {
            repl.get(v).copied().flatten().map(|l| l.index).unwrap_or(0)
        }
    };
    m.membership_config
        .membership()
        .get_joint_config()
        .iter()
        .filter(|set| !set.is_empty())
        .map(|set| {
            let mut idx: Vec<u64> = set.iter().map(matched).collect();
            idx.sort_unstable_by(|a, b| b.cmp(a));
            idx[set.len() / 2]
        })
        .min()
        .unwrap_or(0)
}

impl ClusterNode {
    /// Wraps a started Raft instance; `lease` is the one its network reports to.
    pub fn new(
        id: NodeId,
        addr: NodeAddr,
        raft: Raft,
        registry: RegistryHandle,
        mesh: Arc<Mesh>,
        lease: Arc<Lease>,
        settings: Settings,
    ) -> Arc<Self> {
        Arc::new(ClusterNode {
            id,
            addr,
            raft,
            fences: Arc::new(fence::Fences::new(registry.clone())),
            registry,
            lease,
            members: Arc::default(),
            mesh,
            settings,
            leader_commit: AtomicU64::new(0),
            audit: std::sync::OnceLock::new(),
            rediscover: std::sync::OnceLock::new(),
            discoverer: std::sync::OnceLock::new(),
        })
    }

    /// Gives the node its audit trail (once, at start).
    pub fn set_audit(&self, audit: Arc<joch_audit::Audit>) {
        let _ = self.audit.set(audit);
    }

    /// This node's audit trail, if it keeps one.
    pub fn audit(&self) -> Option<Arc<joch_audit::Audit>> {
        self.audit.get().cloned()
    }

    /// Asks every member (or only `only`) a question about its audit trail, in parallel, each
    /// within `timeout`; this node answers from its own. Every member is in the answer, with
    /// its answer or why there is none.
    pub async fn ask_audit(
        &self,
        ask: &crate::audit::fleet::AuditAsk,
        only: Option<NodeId>,
        timeout: Duration,
    ) -> Vec<(NodeId, Result<crate::audit::fleet::AuditAnswer, String>)> {
        let members = self.members().into_iter().filter(|(id, _, _)| only.is_none_or(|o| o == *id));
        let asks = members.map(|(id, addr, _)| async move {
            let a = if id == self.id {
                match tokio::time::timeout(timeout, crate::audit::fleet::answer_async(self.audit(), ask.clone())).await
                {
                    Ok(a) => a,
                    Err(_) => Err(format!("no answer within {timeout:?}")),
                }
            } else {
                match self.mesh.call(&addr.mesh, &ControlRequest::Audit(ask.clone()), timeout).await {
                    Ok(ControlResponse::Audit(a)) => a,
                    Ok(other) => Err(format!("unexpected answer: {other:?}")),
                    Err(e) => Err(e.to_string()),
                }
            };
            (id, a)
        });
        futures::future::join_all(asks).await
    }

    /// What the data plane may see of this node.
    pub fn view(&self) -> NodeView {
        NodeView {
            id: self.id,
            registry: self.registry.clone(),
            lease: self.lease.clone(),
            members: self.members.clone(),
            fences: self.fences.clone(),
            mesh: self.mesh.clone(),
        }
    }

    /// The configured control-plane lease.
    pub fn lease_duration(&self) -> Duration {
        self.settings.timing.lease
    }

    /// Commit index as this node knows it: on the leader, the highest index a quorum of voters
    /// holds; elsewhere, the last one a leader granted.
    pub fn commit_index(&self) -> u64 {
        let rx = self.raft.metrics();
        let m = rx.borrow();
        if m.state != ServerState::Leader {
            return self.leader_commit.load(Ordering::Relaxed);
        }
        leader_commit_index(self.id, &m)
    }

    /// Ready to serve governed traffic (see `lease.rs`); the reason when not.
    pub fn is_ready(&self) -> Result<(), lease::Stale> {
        self.lease.check(Instant::now())
    }

    /// This node's own status.
    pub fn node_status(&self) -> NodeStatus {
        let m = self.raft.metrics().borrow().clone();
        let now = Instant::now();
        NodeStatus {
            id: self.id,
            role: role(m.state).into(),
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            leader: m.current_leader,
            leader_contact_ms: self.lease.age(now).map(|d| d.as_millis() as u64),
            stale: self.lease.check(now).err().map(|e| e.to_string()),
            snapshot_index: m.snapshot.map(|l| l.index).unwrap_or(0),
            purged_index: m.purged.map(|l| l.index).unwrap_or(0),
            stdio_refused: self.stdio_refused(),
        }
    }

    /// The stdio servers registered that this node's own allow-list does not let it run, with
    /// the reason.
    fn stdio_refused(&self) -> Vec<String> {
        let state = self.registry.load();
        state
            .registry
            .servers
            .values()
            .filter_map(|r| {
                let command = &r.spec.stdio.as_ref()?.command;
                let why = self.settings.stdio_allow.check(command).err()?;
                Some(format!("{}: {why}", r.name))
            })
            .collect()
    }

    fn applied_index(&self) -> u64 {
        self.raft.metrics().borrow().last_applied.map(|l| l.index).unwrap_or(0)
    }

    /// Current members: id, addresses, voter?
    pub fn members(&self) -> Vec<(NodeId, NodeAddr, bool)> {
        let m = self.raft.metrics().borrow().clone();
        let mem = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = mem.voter_ids().collect();
        mem.nodes().map(|(id, n)| (*id, n.clone(), voters.contains(id))).collect()
    }

    fn leader_addr(&self, leader: NodeId) -> Option<NodeAddr> {
        self.members().into_iter().find(|(id, _, _)| *id == leader).map(|(_, a, _)| a)
    }

    /// Runs the tasks that keep the lease current and bootstrap the cluster's identity, until
    /// `stop`: the monitor (Raft's standing and the published registry into the lease, the stale
    /// watch flipped when the lease runs out), the prober (a follower's grants from the leader),
    /// and the cluster key (set once by the first leader).
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        tokio::join!(self.clone().monitor(stop.clone()), self.clone().prober(stop.clone()), self.bootstrap(stop));
    }

    /// Raft's standing of this node, as the lease needs it.
    fn standing(&self, m: &RaftMetrics<NodeId, NodeAddr>) -> Standing {
        let mem = m.membership_config.membership();
        let voters: Vec<Vec<NodeId>> = mem.get_joint_config().iter().map(|s| s.iter().copied().collect()).collect();
        let initialised = mem.nodes().next().is_some();
        let member = mem.nodes().any(|(id, _)| *id == self.id);
        let role = if initialised && !member {
            Role::Removed
        } else if m.state == ServerState::Leader {
            // A new leader knows the commit index only once an entry of its own term is applied.
            let own_term_applied = m.last_applied.is_some_and(|l| l.leader_id.term == m.current_term);
            if own_term_applied {
                Role::Leader
            } else {
                Role::NewLeader
            }
        } else if m.current_leader.is_some_and(|l| l != self.id) {
            Role::Follower
        } else {
            Role::NoLeader
        };
        let commit = if m.state == ServerState::Leader { leader_commit_index(self.id, m) } else { 0 };
        Standing { role, term: m.current_term, voters, commit }
    }

    async fn monitor(self: Arc<Self>, stop: CancellationToken) {
        let mut metrics = self.raft.metrics();
        let mut applied = self.registry.subscribe();
        let mut last: Option<(Standing, u64)> = None;
        let mut was: Option<Result<(), lease::Stale>> = None;
        loop {
            let now = Instant::now();
            let applied_index = self.registry.load().applied_index;
            {
                let m = metrics.borrow_and_update();
                let s = self.standing(&m);
                if last.as_ref() != Some(&(s.clone(), applied_index)) {
                    self.lease.set_standing(&s, applied_index, now);
                    self.members
                        .set(m.membership_config.membership().nodes().map(|(i, a)| (*i, a.clone())).collect(), now);
                    self.mesh.set_members(
                        m.membership_config.membership().nodes().map(|(i, a)| (*i, a.mesh.clone())).collect(),
                    );
                    last = Some((s, applied_index));
                }
            }
            let r = self.lease.publish(now);
            if was.as_ref().map(|w| w.is_ok()) != Some(r.is_ok()) {
                match &r {
                    Ok(()) => tracing::info!("control plane fresh: serving governed traffic"),
                    Err(why) => tracing::warn!(reason = %why, "control plane stale: failing closed"),
                }
                metrics::gauge!("joch_lease_fresh").set(if r.is_ok() { 1.0 } else { 0.0 });
                was = Some(r);
            }
            let expiry = self.lease.expires_at(now);
            let expired = async {
                match expiry {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                r = metrics.changed() => if r.is_err() { return },
                r = applied.changed() => if r.is_err() { return },
                _ = expired => {}
            }
        }
    }

    /// A follower asks its leader to vouch for it every heartbeat interval (see `lease.rs`); while
    /// it is not vouched for (just started, back from a partition, a new leader) it asks every
    /// 50 ms, so it serves again as soon as it may.
    async fn prober(self: Arc<Self>, stop: CancellationToken) {
        let mut wait = Duration::ZERO;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = match self.lease.check(Instant::now()) {
                Ok(()) => self.settings.timing.heartbeat,
                Err(_) => Duration::from_millis(50).min(self.settings.timing.heartbeat),
            };
            if self.lease.role() != Role::Follower {
                continue;
            }
            let leader = self.raft.metrics().borrow().current_leader;
            let Some(addr) = leader.filter(|l| *l != self.id).and_then(|l| self.leader_addr(l)) else { continue };
            let sent = Instant::now();
            let req = ControlRequest::LeaseProbe { from: self.id };
            let probe = self.mesh.call(&addr.mesh, &req, self.settings.timing.lease);
            let answer = tokio::select! {
                _ = stop.cancelled() => return,
                a = probe => a,
            };
            match answer {
                Ok(ControlResponse::Lease(Ok(grant))) => {
                    self.leader_commit.fetch_max(grant.commit, Ordering::Relaxed);
                    self.lease.on_grant(sent, grant, self.registry.load().applied_index);
                    let _ = self.lease.publish(Instant::now());
                }
                Ok(ControlResponse::Lease(Err(Refusal::NotMember(_)))) => {
                    // Removed (the leader has the change, this node may not have it yet): what an
                    // earlier grant vouched for no longer counts.
                    self.lease.revoke();
                    let _ = self.lease.publish(Instant::now());
                }
                Ok(ControlResponse::Lease(Err(r))) => tracing::debug!(refusal = %r, "lease probe refused"),
                Ok(other) => tracing::debug!(answer = ?other, "unexpected answer to a lease probe"),
                Err(e) => tracing::debug!(error = %e, "lease probe failed"),
            }
        }
    }

    /// Leader: answers a member's lease probe (a node that is not a member gets nothing).
    fn grant(&self, from: NodeId) -> Result<lease::Grant, Refusal> {
        if self.members.get(from).is_none() {
            return Err(Refusal::NotMember(from));
        }
        let now = Instant::now();
        self.lease.grant(now, self.commit_index()).ok_or_else(|| {
            let why = match self.lease.check(now) {
                Err(s) => s.to_string(),
                Ok(()) => "not the leader".to_string(),
            };
            Refusal::NotVouching(why)
        })
    }

    /// Sets the cluster key once this node leads and none is set yet (sealed session ids need it).
    async fn bootstrap(self: Arc<Self>, stop: CancellationToken) {
        let mut metrics = self.raft.metrics();
        let mut retry = tokio::time::interval(Duration::from_secs(1));
        loop {
            if self.registry.load().registry.cluster_key.is_some() {
                return;
            }
            if metrics.borrow_and_update().state == ServerState::Leader {
                let mut key = [0u8; 32];
                rand::fill(&mut key);
                let req = Request {
                    actor: "joch/bootstrap".into(),
                    at_ms: now_ms(),
                    command: Command::InitClusterKey { key },
                };
                match self.raft.client_write(req).await {
                    Ok(_) => tracing::info!("cluster key initialised"),
                    Err(e) => tracing::warn!(error = %e, "could not initialise the cluster key; will retry"),
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                r = metrics.changed() => if r.is_err() { return },
                _ = retry.tick() => {}
            }
        }
    }

    /// Proposes a command through the leader (forwarding if needed) and waits for it to be applied
    /// on the leader. Retries with backoff while there is no leader, up to the write timeout.
    pub async fn write(&self, actor: &str, command: Command) -> Result<WriteOutcome, ClusterError> {
        // Every attempt below carries the same id: an attempt whose answer was lost may have been
        // applied, and the state machine applies an id once (raft-store's `model::once`).
        let command = Command::Once { id: rand::random(), command: Box::new(command) };
        let req = Request { actor: actor.to_string(), at_ms: now_ms(), command };
        let kind = req.command.kind();
        let started = Instant::now();
        let res = self.with_leader(|leader| self.write_once(leader, req.clone())).await;
        let outcome = match &res {
            Ok(_) => "ok",
            Err(_) => "error",
        };
        metrics::histogram!("joch_admin_write_seconds", "command" => kind, "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        let out = res?;
        match &out.response.result {
            Some(Err(e)) => Err(ClusterError::Rejected(e.clone())),
            _ => Ok(out),
        }
    }

    async fn write_once(&self, leader: Option<(NodeId, NodeAddr)>, req: Request) -> Attempt<WriteOutcome> {
        match leader {
            None => Attempt::from_result(self.local_write(req).await, "this node"),
            Some((id, addr)) => {
                self.ask_leader(id, &addr, ControlRequest::ForwardWrite(Box::new(req)), PEER_CALL, |r| match r {
                    ControlResponse::Write(x) => Ok(x),
                    other => Err(Box::new(other)),
                })
                .await
            }
        }
    }

    /// Proposes on this node (which must lead) and waits until the leader applied it.
    pub(crate) async fn local_write(&self, req: Request) -> Result<WriteOutcome, Refusal> {
        self.raft
            .client_write(req)
            .await
            .map(|r| WriteOutcome { index: r.log_id.index, response: r.data })
            .map_err(refusal)
    }

    /// Sends a request the leader must answer and maps its answer for the retry loop; `pick`
    /// takes the expected answer out of the response, or gives the response back.
    async fn ask_leader<T>(
        &self,
        id: NodeId,
        addr: &NodeAddr,
        req: ControlRequest,
        timeout: Duration,
        pick: impl FnOnce(ControlResponse) -> Result<Result<T, Refusal>, Box<ControlResponse>>,
    ) -> Attempt<T> {
        match self.mesh.call(&addr.mesh, &req, timeout).await {
            Err(e) => Attempt::Retry(None, ClusterError::Forward { leader: id, source: e }.to_string()),
            Ok(resp) => match pick(resp) {
                Ok(r) => Attempt::from_result(r, &format!("node {id}")),
                Err(other) => Attempt::Retry(None, format!("unexpected answer from node {id}: {other:?}")),
            },
        }
    }

    /// Runs `op` against the leader: locally first; when told who leads, over the mesh. Backs off
    /// and retries while no leader is known (or it has no quorum yet), up to the write timeout.
    async fn with_leader<T, F, Fut>(&self, op: F) -> Result<T, ClusterError>
    where
        F: Fn(Option<(NodeId, NodeAddr)>) -> Fut,
        Fut: std::future::Future<Output = Attempt<T>>,
    {
        if !self.raft.is_initialized().await.map_err(|e| ClusterError::Fatal(e.to_string()))? {
            return Err(ClusterError::NotInitialized);
        }
        let started = Instant::now();
        let mut target: Option<(NodeId, NodeAddr)> = None;
        let mut delay = Duration::from_millis(50);
        loop {
            match op(target.clone()).await {
                Attempt::Done(r) => return r,
                Attempt::Retry(hint, why) => {
                    if started.elapsed() >= self.settings.write_timeout {
                        return Err(ClusterError::NoLeader {
                            waited_ms: started.elapsed().as_millis() as u64,
                            last: why,
                        });
                    }
                    target = match hint {
                        Some((id, _)) if id == self.id => None,
                        Some(h) => Some(h),
                        None => {
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(Duration::from_millis(500));
                            let leader = self.raft.metrics().borrow().current_leader;
                            match leader {
                                Some(l) if l != self.id => self.leader_addr(l).map(|a| (l, a)),
                                _ => None,
                            }
                        }
                    };
                }
            }
        }
    }

    /// Linearizable read barrier: confirms the leader's leadership with a quorum (read index),
    /// then waits until this node applied that index. Returns the index.
    pub async fn read_barrier(&self) -> Result<u64, ClusterError> {
        let index = self.with_leader(|leader| self.read_index_once(leader)).await?;
        let started = Instant::now();
        let wait = self.settings.write_timeout;
        match self.raft.wait(Some(wait)).applied_index_at_least(Some(index), "linearizable read").await {
            Ok(_) => Ok(index),
            Err(_) => Err(ClusterError::ReadTimeout { index, waited_ms: started.elapsed().as_millis() as u64 }),
        }
    }

    async fn read_index_once(&self, leader: Option<(NodeId, NodeAddr)>) -> Attempt<u64> {
        match leader {
            None => Attempt::from_result(self.local_read_index().await, "this node"),
            Some((id, addr)) => {
                self.ask_leader(id, &addr, ControlRequest::ReadIndex, PEER_CALL, |r| match r {
                    ControlResponse::ReadIndex(x) => Ok(x),
                    other => Err(Box::new(other)),
                })
                .await
            }
        }
    }

    /// On the leader: confirms leadership and returns the read index.
    async fn local_read_index(&self) -> Result<u64, Refusal> {
        match self.raft.get_read_log_id().await {
            Ok((read, _applied)) => Ok(read.map(|l| l.index).unwrap_or(0)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(Refusal::NotLeader { leader: f.leader_id, leader_addr: f.leader_node })
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q))) => {
                Err(Refusal::NoQuorum { leader: self.id, voters: q.cluster, got: q.got.into_iter().collect() })
            }
            Err(RaftError::Fatal(f)) => Err(Refusal::Fatal(f.to_string())),
        }
    }

    /// Waits (bounded by the fleet-ack timeout) until every member applied `index`.
    pub async fn fleet_ack(&self, index: u64) -> FleetAck {
        let started = Instant::now();
        let timeout = self.settings.fleet_ack_timeout;
        let waits = self.members().into_iter().map(|(id, addr, _)| async move {
            if id == self.id {
                let ok = self.raft.wait(Some(timeout)).applied_index_at_least(Some(index), "fleet ack").await.is_ok();
                return MemberAck {
                    id,
                    mesh: addr.mesh,
                    applied: ok,
                    applied_index: self.applied_index(),
                    error: (!ok).then(|| "timed out".into()),
                };
            }
            let req = ControlRequest::WaitApplied { index, timeout_ms: timeout.as_millis() as u64 };
            match self.mesh.call(&addr.mesh, &req, timeout + Duration::from_millis(500)).await {
                Ok(ControlResponse::Applied { applied_index, reached }) => MemberAck {
                    id,
                    mesh: addr.mesh,
                    applied: reached,
                    applied_index,
                    error: (!reached).then(|| format!("timed out at applied index {applied_index}")),
                },
                Ok(other) => MemberAck {
                    id,
                    mesh: addr.mesh,
                    applied: false,
                    applied_index: 0,
                    error: Some(format!("unexpected answer: {other:?}")),
                },
                Err(e) => {
                    MemberAck { id, mesh: addr.mesh, applied: false, applied_index: 0, error: Some(e.to_string()) }
                }
            }
        });
        // A node removed lately may still serve from a lease granted before its leader had the
        // removal (grants go to members only), and it no longer receives the log: it counts as a
        // laggard unless it applied the entry anyway. Its last grant came before this node saw it
        // go, so it is stale a lease after that at the latest; the window is doubled for the time
        // the leader's own view took to catch up with its log.
        let window = self.settings.timing.lease * 2;
        let gone = self.members.departed_within(window, Instant::now()).into_iter().map(|(id, addr, ago)| async move {
            let status = self.mesh.call(&addr.mesh, &ControlRequest::Status, timeout.min(DEPARTED_CALL)).await;
            let applied_index = match &status {
                Ok(ControlResponse::Status(s)) => s.applied_index,
                _ => 0,
            };
            let applied = applied_index >= index;
            let error = (!applied).then(|| {
                let why = match status {
                    Ok(ControlResponse::Status(s)) => format!("at applied index {}", s.applied_index),
                    Ok(other) => format!("unexpected answer: {other:?}"),
                    Err(e) => e.to_string(),
                };
                format!(
                    "left the cluster {} ms ago ({why}); it no longer receives the log and may serve from its last lease until that runs out",
                    ago.as_millis()
                )
            });
            MemberAck { id, mesh: addr.mesh, applied, applied_index, error }
        });
        let (mut members, gone) = tokio::join!(futures::future::join_all(waits), futures::future::join_all(gone));
        members.extend(gone);
        let complete = members.iter().all(|m| m.applied);
        metrics::histogram!("joch_fleet_ack_seconds", "complete" => complete.to_string())
            .record(started.elapsed().as_secs_f64());
        // The entry was committed before the wait ended; a member that has not applied it cannot
        // be vouched for after its lease from then (lease.rs).
        let laggards_stop_by_ms = now_ms() + self.settings.timing.lease.as_millis() as u64;
        FleetAck { complete, waited: started.elapsed(), members, laggards_stop_by_ms }
    }

    /// Every member's status, probed over the mesh.
    pub async fn view_cluster(&self) -> ClusterView {
        let m = self.raft.metrics().borrow().clone();
        let probes = self.members().into_iter().map(|(id, addr, voter)| async move {
            let status = if id == self.id {
                Ok(self.node_status())
            } else {
                match self.mesh.call(&addr.mesh, &ControlRequest::Status, Duration::from_secs(1)).await {
                    Ok(ControlResponse::Status(s)) => Ok(s),
                    Ok(other) => Err(format!("unexpected answer: {other:?}")),
                    Err(e) => Err(e.to_string()),
                }
            };
            MemberView { id, addr, voter, status }
        });
        let members = futures::future::join_all(probes).await;
        ClusterView { node_id: self.id, leader: m.current_leader, term: m.current_term, members }
    }

    /// Initialises a new cluster with these members (this node alone if empty).
    pub async fn init(&self, members: BTreeMap<NodeId, NodeAddr>) -> Result<(), ClusterError> {
        let members = if members.is_empty() { BTreeMap::from([(self.id, self.addr.clone())]) } else { members };
        if !members.contains_key(&self.id) {
            return Err(ClusterError::Membership(format!("the member list must include this node ({})", self.id)));
        }
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Err(ClusterError::AlreadyInitialized),
            Err(RaftError::APIError(InitializeError::NotInMembers(e))) => Err(ClusterError::Membership(e.to_string())),
            Err(RaftError::Fatal(f)) => Err(ClusterError::Fatal(f.to_string())),
        }
    }

    /// Carries out a membership change on the leader (forwarding if needed).
    pub async fn change_membership(&self, change: MembershipChange) -> Result<MembershipOutcome, ClusterError> {
        self.with_leader(|leader| {
            let change = change.clone();
            async move {
                match leader {
                    None => Attempt::from_result(self.local_membership(change).await, "this node"),
                    Some((id, addr)) => {
                        let req = ControlRequest::ForwardMembership(change);
                        self.ask_leader(id, &addr, req, ADD_LEARNER_WAIT + PEER_CALL, |r| match r {
                            ControlResponse::Membership(x) => Ok(x),
                            other => Err(Box::new(other)),
                        })
                        .await
                    }
                }
            }
        })
        .await
    }

    /// On the leader: add (learner, then voter) or remove a node.
    async fn local_membership(&self, change: MembershipChange) -> Result<MembershipOutcome, Refusal> {
        let resp = match change {
            MembershipChange::Add { id, addr, learner_only } => {
                // Blocks until the learner has caught up (by log or snapshot), bounded: an
                // unreachable node must not hold the operator forever.
                let r = tokio::time::timeout(ADD_LEARNER_WAIT, self.raft.add_learner(id, addr, true))
                    .await
                    .map_err(|_| {
                        Refusal::Membership(format!(
                            "node {id} was added as a learner but did not catch up within {ADD_LEARNER_WAIT:?} \
                             (is its mesh address reachable and its certificate from this cluster's CA?); \
                             remove it with `joch cluster remove --id {id}` or retry"
                        ))
                    })?
                    .map_err(refusal)?;
                if learner_only {
                    r
                } else {
                    self.raft
                        .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                        .await
                        .map_err(refusal)?
                }
            }
            MembershipChange::Remove { id } => {
                let voters: BTreeSet<NodeId> =
                    self.members().into_iter().filter(|(_, _, v)| *v).map(|(i, _, _)| i).collect();
                if voters.contains(&id) {
                    self.raft
                        .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                        .await
                        .map_err(refusal)?
                } else {
                    self.raft
                        .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                        .await
                        .map_err(refusal)?
                }
            }
        };
        let mem = resp.membership.clone().unwrap_or_default();
        let voters: Vec<NodeId> = mem.voter_ids().collect();
        let learners: Vec<NodeId> = mem.learner_ids().collect();
        Ok(MembershipOutcome { voters, learners, index: resp.log_id.index })
    }
}

/// One try of an operation against the leader.
pub(crate) enum Attempt<T> {
    /// Finished, successfully or not.
    Done(Result<T, ClusterError>),
    /// Try again, at this leader if known.
    Retry(Option<(NodeId, NodeAddr)>, String),
}

impl<T> Attempt<T> {
    /// What a leader's answer means for the retry loop: not the leader (with a hint) or no
    /// quorum is worth another try; any other refusal is final.
    fn from_result(r: Result<T, Refusal>, who: &str) -> Attempt<T> {
        match r {
            Ok(v) => Attempt::Done(Ok(v)),
            Err(Refusal::NotLeader { leader, leader_addr }) => {
                Attempt::Retry(leader.zip(leader_addr), format!("{who} is not the leader"))
            }
            Err(r @ Refusal::NoQuorum { .. }) => Attempt::Retry(None, r.to_string()),
            Err(r) => Attempt::Done(Err(r.into())),
        }
    }
}

/// A refused proposal, as a refusal a peer can be sent.
fn refusal(e: RaftError<NodeId, ClientWriteError<NodeId, NodeAddr>>) -> Refusal {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            Refusal::NotLeader { leader: f.leader_id, leader_addr: f.leader_node }
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => Refusal::Membership(c.to_string()),
        RaftError::Fatal(f) => Refusal::Fatal(f.to_string()),
    }
}
