//! Answers to control requests from peers.

use std::time::Duration;

use super::message::{ControlRequest, ControlResponse};
use super::ClusterNode;
use crate::mesh::ControlHandler;

impl ControlHandler for ClusterNode {
    type Request = ControlRequest;
    type Response = ControlResponse;

    async fn handle(&self, req: ControlRequest) -> ControlResponse {
        match req {
            ControlRequest::AppendEntries(rpc) => ControlResponse::AppendEntries(self.raft.append_entries(rpc).await),
            ControlRequest::Vote(rpc) => ControlResponse::Vote(self.raft.vote(rpc).await),
            ControlRequest::InstallSnapshot(rpc) => {
                ControlResponse::InstallSnapshot(self.raft.install_snapshot(rpc).await)
            }
            ControlRequest::ForwardWrite(req) => ControlResponse::Write(self.local_write(*req).await),
            ControlRequest::ForwardMembership(change) => {
                ControlResponse::Membership(self.local_membership(change).await)
            }
            ControlRequest::ReadIndex => ControlResponse::ReadIndex(self.local_read_index().await),
            ControlRequest::WaitApplied { index, timeout_ms } => {
                let timeout = Duration::from_millis(timeout_ms.min(30_000));
                let reached =
                    self.raft.wait(Some(timeout)).applied_index_at_least(Some(index), "peer ack").await.is_ok();
                ControlResponse::Applied { applied_index: self.applied_index(), reached }
            }
            ControlRequest::Status => ControlResponse::Status(self.node_status()),
            ControlRequest::LeaseProbe { from } => ControlResponse::Lease(self.grant(from)),
            ControlRequest::Audit(ask) => {
                ControlResponse::Audit(crate::audit::fleet::answer_async(self.audit(), ask).await)
            }
            ControlRequest::Rediscover(servers) => ControlResponse::Rediscover(self.take_rediscover(servers)),
            ControlRequest::DiscoverHere(server) => ControlResponse::Discovered(self.discover_here(server).await),
            ControlRequest::RaiseFence(f) => {
                self.fences.raise(f, std::time::Instant::now());
                ControlResponse::Fenced
            }
            ControlRequest::LowerFence(id) => {
                self.fences.lower(id);
                ControlResponse::Fenced
            }
        }
    }

    fn undecodable(&self, why: String) -> ControlResponse {
        ControlResponse::BadRequest(why)
    }
}
