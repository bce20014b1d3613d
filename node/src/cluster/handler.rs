//! Answers to mesh requests from peers.

use std::time::Duration;

use super::ClusterNode;
use crate::mesh::message::{McpForward, McpHead};
use crate::mesh::{BodyStream, Handler, MeshRequest, MeshResponse};

impl Handler for ClusterNode {
    async fn handle_mcp(&self, req: McpForward) -> (McpHead, BodyStream) {
        match self.data_plane() {
            Some(dp) => dp.forwarded(req).await,
            None => {
                let head = McpHead { status: 503, content_type: None };
                (head, Box::pin(futures::stream::empty()))
            }
        }
    }

    async fn handle(&self, req: MeshRequest) -> MeshResponse {
        match req {
            MeshRequest::AppendEntries(rpc) => {
                let commit = rpc.leader_commit.map(|l| l.index).unwrap_or(0);
                let r = self.raft.append_entries(rpc).await;
                use openraft::raft::AppendEntriesResponse as A;
                match &r {
                    Ok(A::Success) | Ok(A::PartialSuccess(_)) => self.note_leader(commit, true),
                    Ok(A::Conflict) => self.note_leader(commit, false),
                    Ok(A::HigherVote(_)) | Err(_) => {}
                }
                MeshResponse::AppendEntries(r)
            }
            MeshRequest::Vote(rpc) => MeshResponse::Vote(self.raft.vote(rpc).await),
            MeshRequest::InstallSnapshot(rpc) => {
                let r = self.raft.install_snapshot(rpc).await;
                if r.is_ok() {
                    // Not contact yet: the next AppendEntries brings the commit index, and a node
                    // that was cut off stays stale until it applied that.
                    self.note_leader(0, false);
                }
                MeshResponse::InstallSnapshot(r)
            }
            MeshRequest::ForwardWrite(req) => MeshResponse::Write(self.local_write(req).await),
            MeshRequest::ForwardMembership(change) => MeshResponse::Membership(self.local_membership(change).await),
            MeshRequest::ReadIndex => MeshResponse::ReadIndex(self.local_read_index().await),
            MeshRequest::WaitApplied { index, timeout_ms } => {
                let timeout = Duration::from_millis(timeout_ms.min(30_000));
                let reached =
                    self.raft.wait(Some(timeout)).applied_index_at_least(Some(index), "peer ack").await.is_ok();
                MeshResponse::Applied { applied_index: self.applied_index(), reached }
            }
            MeshRequest::Status => MeshResponse::Status(self.node_status()),
            MeshRequest::McpForward(_) => MeshResponse::BadRequest("MCP requests are answered as streams".into()),
        }
    }
}
