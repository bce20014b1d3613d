//! Discovery across the cluster: the proxy's queue and its discovery, given to the node at
//! start; a member hands servers to discover again to the leader, and a leader that may not run a
//! stdio server asks the members that may.

use std::time::Duration;

use super::message::{ControlRequest, ControlResponse};
use super::{ClusterNode, PEER_CALL};

impl ClusterNode {
    /// Gives the node the proxy's discovery (once, at start).
    pub fn set_discoverer(&self, d: crate::admin::Discoverer) {
        let _ = self.discoverer.set(d);
    }

    /// Discovers a server from this node, for a leader that may not run it.
    pub(crate) async fn discover_here(
        &self,
        server: String,
    ) -> Result<Box<joch_raft_store::model::discovery::Discovery>, String> {
        let d = self.discoverer.get().ok_or("this node has no proxy")?;
        d(server).await.map(Box::new).map_err(|e| format!("node {}: {e}", self.id))
    }

    /// Asks the other members, one after another, to discover a server this node may not run
    /// (a stdio command outside its `stdio.allow`); the first discovery made is the answer.
    pub async fn discover_elsewhere(
        &self,
        server: &str,
    ) -> Result<joch_raft_store::model::discovery::Discovery, String> {
        let mut why = Vec::new();
        for (id, addr, _) in self.members().into_iter().filter(|(id, _, _)| *id != self.id) {
            let req = ControlRequest::DiscoverHere(server.to_string());
            match self.mesh.call(&addr.mesh, &req, Duration::from_secs(120)).await {
                Ok(ControlResponse::Discovered(Ok(d))) => return Ok(*d),
                Ok(ControlResponse::Discovered(Err(e))) => why.push(e),
                Ok(other) => why.push(format!("node {id}: unexpected answer {other:?}")),
                Err(e) => why.push(format!("node {id}: {e}")),
            }
        }
        Err(format!("no other member could discover it ({})", why.join("; ")))
    }

    /// Gives the node the proxy's queue of servers to discover again (once, at start).
    pub fn set_rediscover(&self, queue: tokio::sync::mpsc::Sender<String>) {
        let _ = self.rediscover.set(queue);
    }

    /// Leader: queues servers a member saw announce new tools.
    pub(crate) fn take_rediscover(&self, servers: Vec<String>) -> Result<(), String> {
        if self.raft.metrics().borrow().current_leader != Some(self.id) {
            return Err(format!("node {} is not the leader", self.id));
        }
        let queue = self.rediscover.get().ok_or("this node has no proxy")?;
        for s in servers {
            if queue.try_send(s).is_err() {
                metrics::counter!("joch_discovery_dropped_total").increment(1);
            }
        }
        Ok(())
    }

    /// Hands servers to discover again to the leader: `Ok(true)` when it took them, `Ok(false)`
    /// when this node leads.
    pub async fn rediscover_on_leader(&self, servers: Vec<String>) -> Result<bool, String> {
        let leader = self.raft.metrics().borrow().current_leader;
        let leader = match leader {
            Some(l) if l == self.id => return Ok(false),
            Some(l) => l,
            None => return Err("no leader is known".into()),
        };
        let addr = self.leader_addr(leader).ok_or_else(|| format!("node {leader} is not a member"))?;
        match self.mesh.call(&addr.mesh, &ControlRequest::Rediscover(servers), PEER_CALL).await {
            Ok(ControlResponse::Rediscover(Ok(()))) => Ok(true),
            Ok(ControlResponse::Rediscover(Err(e))) => Err(format!("node {leader}: {e}")),
            Ok(other) => Err(format!("unexpected answer from node {leader}: {other:?}")),
            Err(e) => Err(format!("node {leader}: {e}")),
        }
    }
}
