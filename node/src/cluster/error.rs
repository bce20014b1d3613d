//! Errors of cluster operations, each saying what the operator can do about it.

use joch_raft_store::{ApplyError, NodeId};

use super::message::Refusal;
use crate::mesh::MeshError;

/// Why a cluster operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The cluster has not been initialised (`joch cluster init`).
    #[error("this node is not part of an initialised cluster (run `joch cluster init` on the first node, or add it to a cluster)")]
    NotInitialized,
    /// The cluster is already initialised.
    #[error("the cluster is already initialised")]
    AlreadyInitialized,
    /// No leader could be found in time.
    #[error("no leader after {waited_ms} ms (is a majority of the cluster up and reachable?): {last}")]
    NoLeader {
        /// How long we waited.
        waited_ms: u64,
        /// The last thing that went wrong.
        last: String,
    },
    /// The leader was known but the forwarded request failed.
    #[error("leader node {leader} did not answer: {source}")]
    Forward {
        /// Leader id.
        leader: NodeId,
        /// The mesh failure.
        source: MeshError,
    },
    /// The state machine rejected the command.
    #[error(transparent)]
    Rejected(#[from] ApplyError),
    /// The node did not catch up in time for a linearizable read.
    #[error("this node did not apply index {index} within {waited_ms} ms")]
    ReadTimeout {
        /// Index needed.
        index: u64,
        /// How long we waited.
        waited_ms: u64,
    },
    /// A membership change was refused.
    #[error("membership change refused: {0}")]
    Membership(String),
    /// Raft stopped on this node (a storage error or shutdown).
    #[error("raft stopped on this node: {0}")]
    Fatal(String),
    /// A forwarded request was refused by the peer.
    #[error(transparent)]
    Refused(#[from] Refusal),
}
