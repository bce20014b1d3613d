//! The cluster: this node's Raft instance and what the admin API needs from it — writes
//! forwarded to the leader, linearizable reads (read index through the leader), fleet-wide
//! acknowledgements, status of every member, membership changes.
//!
//! It owns no storage; the store is joch-raft-store, the transport the mesh.

pub mod error;
mod handler;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use error::ClusterError;
use joch_raft_store::{Command, NodeAddr, NodeId, Raft, RegistryHandle, Request};
use openraft::error::{CheckIsLeaderError, ClientWriteError, InitializeError, RaftError};
use openraft::{ChangeMembers, ServerState};

use crate::config::RaftTiming;
use crate::mesh::message::{
    McpForward, McpHead, MembershipChange, MembershipOutcome, NodeStatus, Refusal, WriteOutcome,
};
use crate::mesh::{Mesh, MeshRequest, MeshResponse};

/// Timeout of one mesh call made on behalf of an operator. A write to a live leader commits in
/// milliseconds; a dead leader must not hold the caller past this before we look for the new one.
const PEER_CALL: Duration = Duration::from_secs(3);

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
    mesh: Arc<Mesh>,
    settings: Settings,
    /// Unix ms when this node last accepted AppendEntries/InstallSnapshot from a leader.
    leader_contact_ms: AtomicU64,
    /// Commit index last announced by a leader (followers).
    leader_commit: AtomicU64,
    /// After losing the leader for longer than the lease: the commit index this node must apply
    /// before it serves again (it may have missed quarantines meanwhile).
    resync_target: AtomicU64,
    /// The data plane, for MCP requests forwarded by peers (set once at start; weak, since the
    /// data plane holds this node).
    data_plane: std::sync::OnceLock<std::sync::Weak<dyn DataPlane>>,
}

/// What the cluster needs from the data plane: answering MCP requests forwarded by peers.
pub trait DataPlane: Send + Sync + 'static {
    /// Handles a request for a session this node owns: the answer's head, then its body.
    fn forwarded(&self, req: McpForward) -> futures::future::BoxFuture<'_, (McpHead, crate::mesh::BodyStream)>;
}

/// Timing the cluster handle needs from the node configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Raft timing (for the lease).
    pub timing: RaftTiming,
    /// Longest wait for every member to apply a fleet-acknowledged write.
    pub fleet_ack_timeout: Duration,
    /// Longest wait for a leader to accept a write or confirm a read.
    pub write_timeout: Duration,
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
    /// Each member.
    pub members: Vec<MemberAck>,
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

impl ClusterNode {
    /// Wraps a started Raft instance.
    pub fn new(
        id: NodeId,
        addr: NodeAddr,
        raft: Raft,
        registry: RegistryHandle,
        mesh: Arc<Mesh>,
        settings: Settings,
    ) -> Arc<Self> {
        Arc::new(ClusterNode {
            id,
            addr,
            raft,
            registry,
            mesh,
            settings,
            leader_contact_ms: AtomicU64::new(0),
            leader_commit: AtomicU64::new(0),
            resync_target: AtomicU64::new(0),
            data_plane: std::sync::OnceLock::new(),
        })
    }

    /// The configured control-plane lease.
    pub fn lease(&self) -> Duration {
        self.settings.timing.lease
    }

    /// Milliseconds since this node last heard from a leader; 0 on a leader whose quorum is fresh.
    pub fn leader_contact_age(&self) -> Option<u64> {
        {
            let rx = self.raft.metrics();
            let m = rx.borrow();
            if m.state == ServerState::Leader {
                return m.millis_since_quorum_ack.or(Some(0));
            }
        }
        match self.leader_contact_ms.load(Ordering::Relaxed) {
            0 => None,
            t => Some(now_ms().saturating_sub(t)),
        }
    }

    /// Commit index as this node knows it: on the leader, the highest index a quorum of voters
    /// holds; elsewhere, the last one a leader announced.
    pub fn commit_index(&self) -> u64 {
        let m = self.raft.metrics().borrow().clone();
        if m.state != ServerState::Leader {
            return self.leader_commit.load(Ordering::Relaxed);
        }
        let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
        let repl = m.replication.unwrap_or_default();
        let mut matched: Vec<u64> = voters
            .iter()
            .map(|v| {
                if *v == self.id {
                    m.last_log_index.unwrap_or(0)
                } else {
                    repl.get(v).copied().flatten().map(|l| l.index).unwrap_or(0)
                }
            })
            .collect();
        matched.sort_unstable_by(|a, b| b.cmp(a));
        matched.get(voters.len() / 2).copied().unwrap_or(0)
    }

    /// A leader's AppendEntries (or snapshot) reached this node. `commit` is the leader's commit
    /// index; `in_sync` whether this node's log matched (contact counts only then). A node that
    /// had been out of contact for longer than its lease must first apply `commit`: until then it
    /// stays stale, so nothing committed while it was cut off can be missed.
    fn note_leader(&self, commit: u64, in_sync: bool) {
        self.leader_commit.fetch_max(commit, Ordering::Relaxed);
        let now = now_ms();
        let last = self.leader_contact_ms.load(Ordering::Relaxed);
        if last == 0 || now.saturating_sub(last) > self.settings.timing.lease.as_millis() as u64 {
            self.resync_target.fetch_max(commit, Ordering::Release);
        }
        if in_sync {
            self.leader_contact_ms.store(now, Ordering::Release);
        }
    }

    /// Ready: member of a cluster that has a leader, in contact with it within the lease, and,
    /// after having lost it, caught up with what was committed meanwhile.
    /// On the request path: reads the metrics in place (no clone, no lock held across awaits).
    pub fn is_ready(&self) -> Result<(), String> {
        if self.raft.metrics().borrow().current_leader.is_none() {
            return Err("no leader known".into());
        }
        match self.leader_contact_age() {
            Some(age) if age <= self.settings.timing.lease.as_millis() as u64 => {}
            Some(age) => {
                return Err(format!("last heard from the leader {age} ms ago (lease {:?})", self.settings.timing.lease))
            }
            None => return Err("has not heard from a leader yet".into()),
        }
        let target = self.resync_target.load(Ordering::Acquire);
        let applied = self.applied_index();
        if applied < target {
            return Err(format!("catching up after losing the leader: applied {applied} of {target}"));
        }
        Ok(())
    }

    /// This node's own status.
    pub fn node_status(&self) -> NodeStatus {
        let m = self.raft.metrics().borrow().clone();
        NodeStatus {
            id: self.id,
            role: role(m.state).into(),
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            leader: m.current_leader,
            leader_contact_ms: self.leader_contact_age(),
            snapshot_index: m.snapshot.map(|l| l.index).unwrap_or(0),
            purged_index: m.purged.map(|l| l.index).unwrap_or(0),
        }
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

    /// Proposes a command through the leader (forwarding if needed) and waits for it to be applied
    /// on the leader. Retries with backoff while there is no leader, up to the write timeout.
    pub async fn write(&self, actor: &str, command: Command) -> Result<WriteOutcome, ClusterError> {
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
                self.ask_leader(id, &addr, MeshRequest::ForwardWrite(req), PEER_CALL, |r| match r {
                    MeshResponse::Write(x) => Ok(x),
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
        req: MeshRequest,
        timeout: Duration,
        pick: impl FnOnce(MeshResponse) -> Result<Result<T, Refusal>, Box<MeshResponse>>,
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
    /// and retries while no leader is known, up to the write timeout.
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
                self.ask_leader(id, &addr, MeshRequest::ReadIndex, PEER_CALL, |r| match r {
                    MeshResponse::ReadIndex(x) => Ok(x),
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
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q))) => Err(Refusal::NoQuorum(q.to_string())),
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
            let req = MeshRequest::WaitApplied { index, timeout_ms: timeout.as_millis() as u64 };
            match self.mesh.call(&addr.mesh, &req, timeout + Duration::from_millis(500)).await {
                Ok(MeshResponse::Applied { applied_index, reached }) => MemberAck {
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
        let members = futures::future::join_all(waits).await;
        let complete = members.iter().all(|m| m.applied);
        metrics::histogram!("joch_fleet_ack_seconds", "complete" => complete.to_string())
            .record(started.elapsed().as_secs_f64());
        FleetAck { complete, waited: started.elapsed(), members }
    }

    /// Every member's status, probed over the mesh.
    pub async fn view(&self) -> ClusterView {
        let m = self.raft.metrics().borrow().clone();
        let probes = self.members().into_iter().map(|(id, addr, voter)| async move {
            let status = if id == self.id {
                Ok(self.node_status())
            } else {
                match self.mesh.call(&addr.mesh, &MeshRequest::Status, Duration::from_secs(1)).await {
                    Ok(MeshResponse::Status(s)) => Ok(s),
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
                        let req = MeshRequest::ForwardMembership(change);
                        self.ask_leader(id, &addr, req, ADD_LEARNER_WAIT + PEER_CALL, |r| match r {
                            MeshResponse::Membership(x) => Ok(x),
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

    /// Installs the data plane (once, at start).
    pub fn set_data_plane(&self, dp: std::sync::Weak<dyn DataPlane>) {
        let _ = self.data_plane.set(dp);
    }

    fn data_plane(&self) -> Option<Arc<dyn DataPlane>> {
        self.data_plane.get()?.upgrade()
    }

    /// Sends an MCP request to the node that owns its session; the answer's body streams. `Ok(None)`:
    /// that node is no longer a member.
    pub async fn forward_mcp(
        &self,
        owner: NodeId,
        req: McpForward,
        timeout: Duration,
    ) -> Result<Option<(McpHead, crate::mesh::BodyStream)>, String> {
        let Some((_, addr, _)) = self.members().into_iter().find(|(id, _, _)| *id == owner) else {
            return Ok(None);
        };
        self.mesh.call_mcp(&addr.mesh, req, timeout).await.map(Some).map_err(|e| e.to_string())
    }

    /// Sets the cluster key if this node leads and none is set yet (sealed session ids need it).
    pub async fn ensure_cluster_key(&self) {
        if self.registry.load().registry.cluster_key.is_some() {
            return;
        }
        if self.raft.metrics().borrow().state != ServerState::Leader {
            return;
        }
        let mut key = [0u8; 32];
        rand::fill(&mut key);
        match self
            .raft
            .client_write(Request {
                actor: "joch/bootstrap".into(),
                at_ms: now_ms(),
                command: Command::InitClusterKey { key },
            })
            .await
        {
            Ok(_) => tracing::info!("cluster key initialised"),
            Err(e) => tracing::warn!(error = %e, "could not initialise the cluster key; will retry"),
        }
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
            Err(r @ Refusal::NoQuorum(_)) => Attempt::Retry(None, r.to_string()),
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
