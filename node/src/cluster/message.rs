//! The cluster's control messages on the mesh: one request and one response per call, each a
//! postcard-encoded value (see `codec` in joch-raft-store). The mesh carries them without
//! knowing what they mean.

use joch_raft_store::{NodeAddr, NodeId, Request, Response, TypeConfig};
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::{Deserialize, Serialize};

use super::lease::Grant;

/// A control request from one node to another.
#[derive(Serialize, Deserialize, Debug)]
pub enum ControlRequest {
    /// Raft AppendEntries.
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    /// Raft RequestVote.
    Vote(VoteRequest<NodeId>),
    /// Raft InstallSnapshot (one chunk).
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// An admin write received by a follower, for the leader to propose.
    ForwardWrite(Box<Request>),
    /// A membership change received by a follower, for the leader to carry out.
    ForwardMembership(MembershipChange),
    /// Leader: confirm leadership with a quorum and return the index a linearizable read must wait for.
    ReadIndex,
    /// Wait until this node applied `index` (bounded by `timeout_ms`), then answer with its applied index.
    WaitApplied {
        /// Log index to wait for.
        index: u64,
        /// Longest wait.
        timeout_ms: u64,
    },
    /// This node's Raft status.
    Status,
    /// Leader: vouch for the asking node's registry (see `lease.rs`); refused to a node that is
    /// not a member.
    LeaseProbe {
        /// The asking node.
        from: NodeId,
    },
    /// A question for this node's audit trail (`joch get toolcalls`, `joch trace`, ...).
    Audit(crate::audit::fleet::AuditAsk),
    /// Leader: discover these servers again (a member relayed their `tools/list_changed`).
    Rediscover(Vec<String>),
    /// Discover this server from here (the leader may not run its stdio command) and answer
    /// with what was found; the asking leader commits it.
    DiscoverHere(String),
    /// Raise a fence here (`fence.rs`): deny what it names until it is lowered or expires.
    RaiseFence(super::fence::Fence),
    /// Lower the fence with this id.
    LowerFence(u128),
}

/// The answer to a [`ControlRequest`], same variant order.
#[derive(Serialize, Deserialize, Debug)]
pub enum ControlResponse {
    /// Raft AppendEntries result.
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    /// Raft RequestVote result.
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    /// Raft InstallSnapshot result.
    InstallSnapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    /// Result of a forwarded write.
    Write(Result<WriteOutcome, Refusal>),
    /// Result of a forwarded membership change.
    Membership(Result<MembershipOutcome, Refusal>),
    /// Result of a read-index request.
    ReadIndex(Result<u64, Refusal>),
    /// Answer to `WaitApplied`.
    Applied {
        /// The node's applied index when it answered.
        applied_index: u64,
        /// Whether it reached the index asked for.
        reached: bool,
    },
    /// Answer to `Status`.
    Status(NodeStatus),
    /// Answer to `LeaseProbe`.
    Lease(Result<Grant, Refusal>),
    /// Answer to `Audit`.
    Audit(Result<crate::audit::fleet::AuditAnswer, String>),
    /// Answer to `Rediscover`: taken, or why not (not the leader).
    Rediscover(Result<(), String>),
    /// Answer to `DiscoverHere`.
    Discovered(Result<Box<joch_raft_store::model::discovery::Discovery>, String>),
    /// The request could not be decoded or handled at all.
    BadRequest(String),
    /// Answer to `RaiseFence` and `LowerFence`.
    Fenced,
}

/// A committed write.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct WriteOutcome {
    /// Log index of the entry.
    pub index: u64,
    /// What the state machine answered.
    pub response: Response,
}

/// A membership change to carry out on the leader.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum MembershipChange {
    /// Add a node (learner first, then voter unless `learner_only`).
    Add {
        /// Node id.
        id: NodeId,
        /// Its addresses.
        addr: NodeAddr,
        /// Stay a learner.
        learner_only: bool,
    },
    /// Remove a node entirely.
    Remove {
        /// Node id.
        id: NodeId,
    },
}

/// Membership after a change.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct MembershipOutcome {
    /// Voting members.
    pub voters: Vec<NodeId>,
    /// Non-voting members.
    pub learners: Vec<NodeId>,
    /// Log index of the membership entry.
    pub index: u64,
}

/// Why a node would not carry out a forwarded request.
#[derive(Serialize, Deserialize, Debug, Clone, thiserror::Error)]
pub enum Refusal {
    /// This node is not the leader (it names the one it knows, if any).
    #[error("node is not the leader (leader: {leader:?})")]
    NotLeader {
        /// Leader id, if known.
        leader: Option<NodeId>,
        /// Leader addresses, if known.
        leader_addr: Option<NodeAddr>,
    },
    /// Leadership could not be confirmed with a quorum (yet: a leader just elected or restarted
    /// has not heard from a majority).
    #[error("node {leader} leads but has not heard from a majority of the voters {voters} yet (only from {got:?}); is a majority of the cluster up?")]
    NoQuorum {
        /// The leader.
        leader: NodeId,
        /// The voter configuration, as openraft prints it.
        voters: String,
        /// The nodes it heard from.
        got: Vec<NodeId>,
    },
    /// The node cannot vouch for anyone's registry now (lease probe).
    #[error("node cannot vouch for the registry now: {0}")]
    NotVouching(String),
    /// The membership change is not possible.
    #[error("membership change refused: {0}")]
    Membership(String),
    /// Raft stopped on that node.
    #[error("raft stopped on that node: {0}")]
    Fatal(String),
    /// The node asking (a lease probe) is not a member of the asked node's cluster: it was
    /// removed, or never joined.
    #[error("node {0} is not a member of this cluster")]
    NotMember(NodeId),
}

/// One node's Raft status.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct NodeStatus {
    /// Node id.
    pub id: NodeId,
    /// leader | follower | candidate | learner | shutdown.
    pub role: String,
    /// Current term.
    pub term: u64,
    /// Last log index.
    pub last_log_index: u64,
    /// Last applied index.
    pub applied_index: u64,
    /// Leader it knows.
    pub leader: Option<NodeId>,
    /// Milliseconds since its registry was last vouched for by a leader with a quorum (see the
    /// lease); `None`: not vouched for.
    pub leader_contact_ms: Option<u64>,
    /// Why it does not serve governed traffic, if it does not.
    pub stale: Option<String>,
    /// Index of its last snapshot.
    pub snapshot_index: u64,
    /// Index up to which its log is purged.
    pub purged_index: u64,
    /// Registered stdio servers its local allow-list does not let it run ("NAME: why").
    pub stdio_refused: Vec<String>,
}
