//! openraft's network over the mesh. On the leader it also feeds the lease: every AppendEntries
//! a follower accepts is an acknowledgement of this leadership as of the time it was sent.

use std::sync::Arc;
use std::time::{Duration, Instant};

use joch_raft_store::{NodeAddr, NodeId, TypeConfig};
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};

use super::lease::Lease;
use super::message::{ControlRequest as Req, ControlResponse as Resp};
use crate::mesh::{Mesh, MeshError};

/// Creates one [`PeerLink`] per target.
#[derive(Clone)]
pub struct MeshNetwork {
    mesh: Arc<Mesh>,
    lease: Arc<Lease>,
}

impl MeshNetwork {
    /// A network over `mesh`, reporting acknowledgements to `lease`.
    pub fn new(mesh: Arc<Mesh>, lease: Arc<Lease>) -> Self {
        MeshNetwork { mesh, lease }
    }
}

/// Raft's view of one peer.
pub struct PeerLink {
    mesh: Arc<Mesh>,
    lease: Arc<Lease>,
    target: NodeId,
    addr: String,
}

impl RaftNetworkFactory<TypeConfig> for MeshNetwork {
    type Network = PeerLink;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddr) -> PeerLink {
        PeerLink { mesh: self.mesh.clone(), lease: self.lease.clone(), target, addr: node.mesh.clone() }
    }
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, NodeAddr, RaftError<NodeId, E>>;

fn transport_err<E: std::error::Error>(e: MeshError) -> RPCError<NodeId, NodeAddr, E> {
    match e {
        MeshError::Timeout { .. } | MeshError::Connect { .. } | MeshError::Resolve { .. } => {
            RPCError::Unreachable(Unreachable::new(&e))
        }
        MeshError::Stream { .. } | MeshError::Codec { .. } => RPCError::Network(NetworkError::new(&e)),
    }
}

fn unexpected<E: std::error::Error>(resp: Resp) -> RPCError<NodeId, NodeAddr, E> {
    let e = std::io::Error::other(format!("unexpected mesh answer: {resp:?}"));
    RPCError::Network(NetworkError::new(&e))
}

impl PeerLink {
    async fn call(&self, req: Req, option: &RPCOption) -> Result<Resp, MeshError> {
        let timeout = option.hard_ttl().max(Duration::from_millis(100));
        self.mesh.call(&self.addr, &req, timeout).await
    }
}

impl RaftNetwork<TypeConfig> for PeerLink {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        let sent = Instant::now();
        match self.call(Req::AppendEntries(rpc), &option).await.map_err(transport_err)? {
            Resp::AppendEntries(Ok(r)) => {
                // Anything but a higher vote means the peer accepted this leader's term.
                if !matches!(r, AppendEntriesResponse::HigherVote(_)) {
                    self.lease.on_ack(self.target, sent);
                    let _ = self.lease.publish(Instant::now());
                }
                Ok(r)
            }
            Resp::AppendEntries(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            other => Err(unexpected(other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        match self.call(Req::InstallSnapshot(rpc), &option).await.map_err(transport_err)? {
            Resp::InstallSnapshot(Ok(r)) => Ok(r),
            Resp::InstallSnapshot(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            other => Err(unexpected(other)),
        }
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> Result<VoteResponse<NodeId>, RpcErr> {
        match self.call(Req::Vote(rpc), &option).await.map_err(transport_err)? {
            Resp::Vote(Ok(r)) => Ok(r),
            Resp::Vote(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            other => Err(unexpected(other)),
        }
    }
}
