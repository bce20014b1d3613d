//! The cluster's members as this node last saw them in Raft's membership, and the nodes it saw
//! leave (a fleet acknowledgement counts those for a while: `ClusterNode::fleet_ack`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use joch_raft_store::{NodeAddr, NodeId};

/// The current members' addresses, published from Raft's membership (lock-free reads), and the
/// nodes seen leaving it.
#[derive(Default)]
pub struct Members {
    current: ArcSwap<BTreeMap<NodeId, NodeAddr>>,
    /// Nodes that were members and are not any more, with when this node saw them go. A node
    /// removed while it held a lease may serve from it until it runs out, and no longer receives
    /// the log: fleet acknowledgements count it until then (see [`super::ClusterNode::fleet_ack`]).
    departed: parking_lot::Mutex<BTreeMap<NodeId, (NodeAddr, Instant)>>,
}

impl Members {
    /// A member's addresses, if it is one.
    pub fn get(&self, id: NodeId) -> Option<NodeAddr> {
        self.current.load().get(&id).cloned()
    }

    /// How many members there are.
    pub fn len(&self) -> usize {
        self.current.load().len()
    }

    /// Whether there are none (before the cluster is initialised).
    pub fn is_empty(&self) -> bool {
        self.current.load().is_empty()
    }

    pub(super) fn set(&self, m: BTreeMap<NodeId, NodeAddr>, now: Instant) {
        let old = self.current.load_full();
        if *old == m {
            return;
        }
        let mut departed = self.departed.lock();
        for (id, addr) in old.iter().filter(|(id, _)| !m.contains_key(id)) {
            departed.insert(*id, (addr.clone(), now));
        }
        departed.retain(|id, _| !m.contains_key(id));
        self.current.store(Arc::new(m));
    }

    /// Nodes seen leaving the membership less than `window` ago: id, addresses, how long ago.
    pub(super) fn departed_within(&self, window: Duration, now: Instant) -> Vec<(NodeId, NodeAddr, Duration)> {
        let mut departed = self.departed.lock();
        departed.retain(|_, (_, at)| now.saturating_duration_since(*at) < window);
        departed.iter().map(|(id, (addr, at))| (*id, addr.clone(), now.saturating_duration_since(*at))).collect()
    }
}
