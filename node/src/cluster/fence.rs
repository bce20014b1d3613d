//! Fences: a write that takes a server or an agent out of service (quarantine, delete, revoke)
//! is enforced by every member from the moment it is sent, not only from the moment each member
//! applies it.
//!
//! The node that receives such a write raises a fence on every member over the mesh, in parallel
//! with the Raft write (`admin::write`); admission denies what a standing fence names, and the
//! raise wakes what is in flight, which re-checks and is cut. A fence only denies: raising one
//! before the write commits, or one whose write then fails, is never unsafe (it fails closed for
//! a moment). The receiving node lowers the fence on the members that applied the write (their
//! registry enforces it from then on), and everywhere when the write failed; a fence left
//! standing (its node died before lowering it) lowers itself after its time to live, which
//! outlasts the write's timeout and its fleet acknowledgement.
//!
//! Safety never rests on a fence: the registry and the lease (`lease.rs`) give the guarantee the
//! fleet acknowledgement prints. Fences take the commit, the fsync and the apply off the time an
//! operator waits for "denied on every node" (docs/benchmarks.md, propagation).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use joch_raft_store::{Command, NodeId, RegistryHandle};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::message::{ControlRequest, ControlResponse};
use super::{ClusterNode, PEER_CALL};

/// Longest wait for a member to take a fence (the write does not wait for more).
const FENCE_CALL: Duration = Duration::from_millis(250);

/// Fences lowered lately, remembered so that a raise arriving after its lower is ignored.
const LOWERED: usize = 256;

/// What a fence keeps out.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Calls to a server being quarantined.
    Quarantine {
        /// The server.
        server: String,
        /// The quarantine's reason.
        reason: String,
    },
    /// Calls to a server being deleted.
    Delete {
        /// The server.
        server: String,
    },
    /// Calls by an agent being revoked.
    Revoke {
        /// The agent.
        agent: String,
    },
}

impl Target {
    /// The fence a command needs, if it takes something out of service.
    pub fn of(command: &Command) -> Option<Target> {
        match command {
            Command::Once { command, .. } => Target::of(command),
            Command::Quarantine { name, reason } => {
                Some(Target::Quarantine { server: name.clone(), reason: reason.clone() })
            }
            Command::DeleteServer { name } => Some(Target::Delete { server: name.clone() }),
            Command::RevokeAgent { name } => Some(Target::Revoke { agent: name.clone() }),
            _ => None,
        }
    }
}

/// A fence, as raised on a member.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// Random id (lowering names it).
    pub id: u128,
    /// The node that received the write.
    pub from: NodeId,
    /// What it keeps out.
    pub target: Target,
    /// How long it stands at most, from when a member took it.
    pub ttl_ms: u64,
}

/// Why a standing fence denies a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fenced<'a> {
    /// The node whose write raised it.
    pub from: NodeId,
    /// What it keeps out.
    pub target: &'a Target,
}

#[derive(Default)]
struct Inner {
    standing: HashMap<u128, (Fence, Instant)>,
    lowered: VecDeque<u128>,
}

/// The fences standing on this node.
pub struct Fences {
    /// How many stand (the request path's fast path: no lock while none does).
    count: AtomicUsize,
    inner: Mutex<Inner>,
    /// Nudged when a fence is raised, so admitted calls re-check.
    registry: RegistryHandle,
}

impl Fences {
    /// No fences, waking the readers of `registry` when one is raised.
    pub fn new(registry: RegistryHandle) -> Fences {
        Fences { count: AtomicUsize::new(0), inner: Mutex::default(), registry }
    }

    /// Raises a fence here (ignored if it was lowered already).
    pub fn raise(&self, fence: Fence, now: Instant) {
        let mut inner = self.inner.lock();
        if inner.lowered.contains(&fence.id) {
            return;
        }
        let until = now + Duration::from_millis(fence.ttl_ms);
        if inner.standing.insert(fence.id, (fence, until)).is_none() {
            self.count.fetch_add(1, Ordering::AcqRel);
        }
        drop(inner);
        metrics::counter!("joch_fences_raised_total").increment(1);
        self.registry.nudge();
    }

    /// Lowers a fence here (remembered, in case its raise arrives later).
    pub fn lower(&self, id: u128) {
        let mut inner = self.inner.lock();
        if inner.standing.remove(&id).is_some() {
            self.count.fetch_sub(1, Ordering::AcqRel);
        }
        if inner.lowered.len() == LOWERED {
            inner.lowered.pop_front();
        }
        inner.lowered.push_back(id);
    }

    /// How many fences stand (expired ones included until the next check).
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Whether none stands.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The fence that denies a call by `agent` to `server`, if one stands. Lock-free while no
    /// fence stands.
    pub fn denies<T>(&self, agent: &str, server: &str, now: Instant, deny: impl FnOnce(Fenced<'_>) -> T) -> Option<T> {
        if self.is_empty() {
            return None;
        }
        let mut inner = self.inner.lock();
        let before = inner.standing.len();
        inner.standing.retain(|_, (_, until)| *until > now);
        let expired = before - inner.standing.len();
        if expired > 0 {
            self.count.fetch_sub(expired, Ordering::AcqRel);
        }
        let hit = inner.standing.values().map(|(f, _)| f).find(|f| match &f.target {
            Target::Quarantine { server: s, .. } | Target::Delete { server: s } => s == server,
            Target::Revoke { agent: a } => a == agent,
        })?;
        Some(deny(Fenced { from: hit.from, target: &hit.target }))
    }
}

impl ClusterNode {
    /// Raises a fence for `target` here and on every other member (each given at most
    /// [`FENCE_CALL`]); returns its id, for [`ClusterNode::lower_fence`].
    pub async fn raise_fence(&self, target: Target) -> u128 {
        let ttl = self.settings.write_timeout + self.settings.fleet_ack_timeout + PEER_CALL;
        let fence = Fence { id: rand::random(), from: self.id, target, ttl_ms: ttl.as_millis() as u64 };
        self.fences.raise(fence.clone(), Instant::now());
        let id = fence.id;
        self.tell_members(|_| true, ControlRequest::RaiseFence(fence)).await;
        id
    }

    /// Lowers fence `id` here and on the other members for which `on` holds, without waiting
    /// for them (a member not told lowers it when its time to live runs out).
    pub fn lower_fence(self: &std::sync::Arc<Self>, id: u128, on: impl Fn(NodeId) -> bool + Send + 'static) {
        if on(self.id) {
            self.fences.lower(id);
        }
        let me = self.clone();
        tokio::spawn(async move { me.tell_members(on, ControlRequest::LowerFence(id)).await });
    }

    async fn tell_members(&self, to: impl Fn(NodeId) -> bool, req: ControlRequest) {
        let calls = self.members().into_iter().filter(|(id, _, _)| *id != self.id && to(*id)).map(|(id, addr, _)| {
            let req = &req;
            async move {
                match self.mesh.call::<_, ControlResponse>(&addr.mesh, req, FENCE_CALL).await {
                    Ok(ControlResponse::Fenced) => {}
                    Ok(other) => tracing::debug!(node = id, answer = ?other, "unexpected answer to a fence"),
                    Err(e) => tracing::debug!(node = id, error = %e, "fence not delivered"),
                }
            }
        });
        futures::future::join_all(calls).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fence(id: u128, target: Target) -> Fence {
        Fence { id, from: 2, target, ttl_ms: 1_000 }
    }

    fn quarantine(server: &str) -> Target {
        Target::Quarantine { server: server.into(), reason: "incident".into() }
    }

    fn denied(f: &Fences, agent: &str, server: &str, now: Instant) -> Option<(NodeId, Target)> {
        f.denies(agent, server, now, |d| (d.from, d.target.clone()))
    }

    #[test]
    fn a_fence_denies_what_it_names_until_lowered() {
        let f = Fences::new(RegistryHandle::default());
        let now = Instant::now();
        assert!(denied(&f, "a", "s", now).is_none());
        f.raise(fence(1, quarantine("s")), now);
        f.raise(fence(2, Target::Revoke { agent: "bad".into() }), now);
        f.raise(fence(3, Target::Delete { server: "gone".into() }), now);
        assert_eq!(denied(&f, "a", "s", now), Some((2, quarantine("s"))));
        assert!(denied(&f, "a", "t", now).is_none(), "another server passes");
        assert!(denied(&f, "bad", "t", now).is_some(), "the revoked agent is denied everywhere");
        assert!(denied(&f, "a", "gone", now).is_some());
        f.lower(1);
        assert!(denied(&f, "a", "s", now).is_none());
        assert_eq!(f.len(), 2);
    }

    #[test]
    fn a_fence_lowers_itself_after_its_time_to_live() {
        let f = Fences::new(RegistryHandle::default());
        let now = Instant::now();
        f.raise(fence(1, quarantine("s")), now);
        assert!(denied(&f, "a", "s", now + Duration::from_millis(999)).is_some());
        assert!(denied(&f, "a", "s", now + Duration::from_millis(1_000)).is_none());
        assert!(f.is_empty(), "the expired fence is gone, the fast path is back");
    }

    #[test]
    fn a_raise_arriving_after_its_lower_is_ignored() {
        let f = Fences::new(RegistryHandle::default());
        let now = Instant::now();
        f.lower(7);
        f.raise(fence(7, quarantine("s")), now);
        assert!(denied(&f, "a", "s", now).is_none());
        assert!(f.is_empty());
    }

    #[test]
    fn raising_wakes_the_readers_of_the_registry() {
        let registry = RegistryHandle::default();
        let mut rx = registry.subscribe();
        rx.mark_unchanged();
        let f = Fences::new(registry);
        f.raise(fence(1, quarantine("s")), Instant::now());
        assert!(rx.has_changed().unwrap(), "admitted calls re-check when a fence is raised");
    }

    #[test]
    fn only_commands_that_take_something_out_of_service_are_fenced() {
        let q = Command::Quarantine { name: "s".into(), reason: "r".into() };
        assert_eq!(Target::of(&q), Some(Target::Quarantine { server: "s".into(), reason: "r".into() }));
        let once = Command::Once { id: 9, command: Box::new(Command::DeleteServer { name: "s".into() }) };
        assert_eq!(Target::of(&once), Some(Target::Delete { server: "s".into() }));
        assert_eq!(Target::of(&Command::RevokeAgent { name: "a".into() }), Some(Target::Revoke { agent: "a".into() }));
        assert_eq!(Target::of(&Command::Unquarantine { name: "s".into() }), None);
        assert_eq!(Target::of(&Command::Pin { name: "s".into(), version: "1".into() }), None);
    }
}
