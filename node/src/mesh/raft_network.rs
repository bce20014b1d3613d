//! openraft's network over the mesh.

use std::sync::Arc;
use std::time::Duration;

use joch_raft_store::{NodeAddr, NodeId, TypeConfig};
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};

use super::{Mesh, MeshError, MeshRequest, MeshResponse};

/// Creates one [`PeerLink`] per target.
#[derive(Clone)]
pub struct MeshNetwork {
    mesh: Arc<Mesh>,
}

impl MeshNetwork {
    /// A network over `mesh`.
    pub fn new(mesh: Arc<Mesh>) -> Self {
        MeshNetwork { mesh }
    }
}

/// Raft's view of one peer.
pub struct PeerLink {
    mesh: Arc<Mesh>,
    target: NodeId,
    addr: String,
}

impl RaftNetworkFactory<TypeConfig> for MeshNetwork {
    type Network = PeerLink;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddr) -> PeerLink {
        PeerLink { mesh: self.mesh.clone(), target, addr: node.mesh.clone() }
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

fn unexpected<E: std::error::Error>(resp: MeshResponse) -> RPCError<NodeId, NodeAddr, E> {
    let e = std::io::Error::other(format!("unexpected mesh answer: {resp:?}"));
    RPCError::Network(NetworkError::new(&e))
}

impl PeerLink {
    async fn call(&self, req: MeshRequest, option: &RPCOption) -> Result<MeshResponse, MeshError> {
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
        match self.call(MeshRequest::AppendEntries(rpc), &option).await.map_err(transport_err)? {
            MeshResponse::AppendEntries(Ok(r)) => Ok(r),
            MeshResponse::AppendEntries(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            other => Err(unexpected(other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        match self.call(MeshRequest::InstallSnapshot(rpc), &option).await.map_err(transport_err)? {
            MeshResponse::InstallSnapshot(Ok(r)) => Ok(r),
            MeshResponse::InstallSnapshot(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            other => Err(unexpected(other)),
        }
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> Result<VoteResponse<NodeId>, RpcErr> {
        match self.call(MeshRequest::Vote(rpc), &option).await.map_err(transport_err)? {
            MeshResponse::Vote(Ok(r)) => Ok(r),
            MeshResponse::Vote(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            other => Err(unexpected(other)),
        }
    }
}
