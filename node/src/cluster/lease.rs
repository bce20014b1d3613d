//! The control-plane lease: whether this node can vouch for its registry snapshot, i.e. whether
//! the snapshot the data plane reads holds every change committed more than `lease` ago.
//!
//! The rule (docs/design/0003-hardening.md has the argument):
//! - A leader is fresh as of the send time of the last AppendEntries round that a quorum of
//!   voters acknowledged (itself included), once it has applied an entry of its own term, and
//!   only as far back as its applied index kept up with its commit index.
//! - A follower or learner asks the leader for a grant (a probe over the mesh, every heartbeat
//!   interval). It is fresh as of `probe sent - leader's quorum age`, and only once it has
//!   applied the commit index the grant named. A leader that lost its quorum keeps its followers
//!   stale with it; a node behind on apply is stale until it caught up. The probe's own round
//!   trip only makes the estimate older, never newer: the bound needs no clock agreement.
//! - Fresh means `now - fresh_as_of <= lease`. Times are monotonic (`Instant`): a wall-clock step
//!   does not stretch the lease.
//!
//! This type does no I/O and takes `now` as an argument (tests drive time). The request path
//! calls [`Lease::check`], which reads atomics only. The cluster's monitor task feeds it Raft's
//! standing and calls [`Lease::publish`], which flips the stale watch that cuts work in flight.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use joch_raft_store::NodeId;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// Contacts waiting for their commit index to be applied, at most.
const MAX_PENDING: usize = 1024;

/// Why this node cannot vouch for its registry snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Stale {
    /// Not part of an initialised cluster, or no leader is known (an election is running).
    #[error("no leader known")]
    NoLeader,
    /// This node was removed from the cluster.
    #[error("this node is no longer a member of the cluster")]
    Removed,
    /// It leads, but has not applied an entry of its own term yet (until then it cannot know the
    /// commit index).
    #[error("newly elected leader, not yet caught up with its own term")]
    NewLeader,
    /// No leader with a quorum has vouched for it since it started.
    #[error("has not been vouched for by a leader with a quorum yet")]
    NeverVouched,
    /// The last vouching is older than the lease.
    #[error("last vouched for by a quorum {age_ms} ms ago (lease {lease_ms} ms)")]
    Expired {
        /// Age of the freshness.
        age_ms: u64,
        /// The lease.
        lease_ms: u64,
    },
    /// It heard from the leader but has not applied what was committed meanwhile.
    #[error("catching up: applied index {applied}, needs {needed} (last vouched for {age_ms} ms ago)")]
    CatchingUp {
        /// Applied index.
        applied: u64,
        /// The commit index it must reach.
        needed: u64,
        /// Age of the freshness it has.
        age_ms: u64,
    },
}

/// This node's place in the cluster, as Raft reports it (published by the monitor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// No leader known, or not initialised.
    NoLeader = 0,
    /// Follower or learner of a known leader.
    Follower = 1,
    /// Leader that has applied an entry of its own term.
    Leader = 2,
    /// Leader that has not yet applied an entry of its own term.
    NewLeader = 3,
    /// Not in the membership any more.
    Removed = 4,
}

impl Role {
    fn from_u8(v: u8) -> Role {
        match v {
            1 => Role::Follower,
            2 => Role::Leader,
            3 => Role::NewLeader,
            4 => Role::Removed,
            _ => Role::NoLeader,
        }
    }
}

/// What Raft says about this node, fed to the lease on every metrics change.
#[derive(Debug, Clone, PartialEq)]
pub struct Standing {
    /// Role.
    pub role: Role,
    /// Current term.
    pub term: u64,
    /// Voter sets (two during a joint configuration change): a quorum is a majority of each.
    pub voters: Vec<Vec<NodeId>>,
    /// Commit index (meaningful on the leader).
    pub commit: u64,
}

/// A leader's answer to a follower's lease probe.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Term of the leader.
    pub term: u64,
    /// How long before answering the leader last had its quorum's acknowledgement, in µs.
    pub quorum_age_us: u64,
    /// The leader's commit index when answering: the follower must apply it first.
    pub commit: u64,
}

#[derive(Default)]
struct Inner {
    /// Followers: (fresh-as-of, commit index to apply first), oldest first.
    pending: VecDeque<(u64, u64)>,
    /// Leader: per peer, the send time of the latest AppendEntries it acknowledged.
    acks: HashMap<NodeId, u64>,
    voters: Vec<Vec<NodeId>>,
    term: u64,
}

/// The lease of one node.
pub struct Lease {
    me: NodeId,
    lease: Duration,
    origin: Instant,
    role: AtomicU8,
    /// Follower freshness: ns since `origin` plus one; 0 = never.
    fresh: AtomicU64,
    /// Leader: time of the last quorum acknowledgement; 0 = none; `u64::MAX` = sole voter.
    quorum: AtomicU64,
    /// Leader: 0 while applied == commit, else when applied first fell behind.
    apply_lag_since: AtomicU64,
    applied: AtomicU64,
    inner: Mutex<Inner>,
    stale: watch::Sender<bool>,
}

impl Lease {
    /// A lease of `lease` for node `me`; stale until the monitor says otherwise.
    pub fn new(me: NodeId, lease: Duration) -> Lease {
        Lease {
            me,
            lease,
            origin: Instant::now(),
            role: AtomicU8::new(Role::NoLeader as u8),
            fresh: AtomicU64::new(0),
            quorum: AtomicU64::new(0),
            apply_lag_since: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            inner: Mutex::new(Inner::default()),
            stale: watch::Sender::new(true),
        }
    }

    /// The configured lease.
    pub fn duration(&self) -> Duration {
        self.lease
    }

    fn ns(&self, t: Instant) -> u64 {
        (t.saturating_duration_since(self.origin).as_nanos() as u64).saturating_add(1)
    }

    /// The role last published.
    pub fn role(&self) -> Role {
        Role::from_u8(self.role.load(Ordering::Acquire))
    }

    /// The instant (as ns since origin) as of which this node is vouched for, if any.
    fn fresh_as_of(&self) -> Result<u64, Stale> {
        match self.role() {
            Role::NoLeader => Err(Stale::NoLeader),
            Role::Removed => Err(Stale::Removed),
            Role::NewLeader => Err(Stale::NewLeader),
            Role::Follower => Ok(self.fresh.load(Ordering::Acquire)),
            Role::Leader => {
                let q = self.quorum.load(Ordering::Acquire);
                match self.apply_lag_since.load(Ordering::Acquire) {
                    0 => Ok(q),
                    lag => Ok(q.min(lag)),
                }
            }
        }
    }

    /// Whether this node may serve governed traffic now. Lock-free (the request path).
    pub fn check(&self, now: Instant) -> Result<(), Stale> {
        let t = self.fresh_as_of()?;
        if t == u64::MAX {
            return Ok(());
        }
        let pending = || self.inner.lock().pending.back().map(|p| p.1);
        if t == 0 {
            return match pending() {
                Some(needed) => {
                    Err(Stale::CatchingUp { applied: self.applied.load(Ordering::Acquire), needed, age_ms: u64::MAX })
                }
                None => Err(Stale::NeverVouched),
            };
        }
        let age = self.ns(now).saturating_sub(t);
        if age <= self.lease.as_nanos() as u64 {
            return Ok(());
        }
        let age_ms = age / 1_000_000;
        match pending() {
            Some(needed) => Err(Stale::CatchingUp { applied: self.applied.load(Ordering::Acquire), needed, age_ms }),
            None => Err(Stale::Expired { age_ms, lease_ms: self.lease.as_millis() as u64 }),
        }
    }

    /// How long ago this node was last vouched for (`None`: never, or no leader).
    pub fn age(&self, now: Instant) -> Option<Duration> {
        match self.fresh_as_of().ok()? {
            0 => None,
            u64::MAX => Some(Duration::ZERO),
            t => Some(Duration::from_nanos(self.ns(now).saturating_sub(t))),
        }
    }

    /// When the current freshness runs out (`None`: stale already, or never expires).
    pub fn expires_at(&self, now: Instant) -> Option<Instant> {
        let t = self.fresh_as_of().ok()?;
        if t == 0 || t == u64::MAX {
            return None;
        }
        let until = Duration::from_nanos(t - 1) + self.lease;
        let at = self.origin + until;
        (at > now).then_some(at)
    }

    /// Raft's view of this node changed (the monitor calls this on every metrics change).
    pub fn set_standing(&self, s: &Standing, applied: u64, now: Instant) {
        let mut inner = self.inner.lock();
        if self.role() == Role::Leader && s.role != Role::Leader {
            // Stepping down: what the quorum vouched for as leader still holds as a follower.
            if let Ok(t) = self.fresh_as_of() {
                let t = if t == u64::MAX { self.ns(now) } else { t };
                self.fresh.fetch_max(t, Ordering::AcqRel);
            }
        }
        if s.term != inner.term {
            // A new term: acknowledgements of an earlier leadership say nothing about this one.
            inner.term = s.term;
            inner.acks.clear();
            self.quorum.store(0, Ordering::Release);
        }
        inner.voters = s.voters.clone();
        if matches!(s.role, Role::Leader | Role::NewLeader) {
            self.quorum.store(quorum_time(&inner, self.me), Ordering::Release);
            if applied >= s.commit {
                self.apply_lag_since.store(0, Ordering::Release);
            } else if self.apply_lag_since.load(Ordering::Acquire) == 0 {
                self.apply_lag_since.store(self.ns(now), Ordering::Release);
            }
        }
        self.role.store(s.role as u8, Ordering::Release);
        drop(inner);
        self.on_applied(applied);
    }

    /// Leader: `peer` acknowledged an AppendEntries sent at `sent` (it accepted this leader's term).
    pub fn on_ack(&self, peer: NodeId, sent: Instant) {
        let sent = self.ns(sent);
        let mut inner = self.inner.lock();
        let slot = inner.acks.entry(peer).or_insert(0);
        if sent > *slot {
            *slot = sent;
        }
        self.quorum.store(quorum_time(&inner, self.me), Ordering::Release);
    }

    /// Leader: the grant for a follower's probe, or `None` if this node cannot vouch (not a
    /// leader caught up with its own term, no quorum acknowledgement yet, or applying behind).
    pub fn grant(&self, now: Instant, commit: u64) -> Option<Grant> {
        if self.role() != Role::Leader {
            return None;
        }
        let t = self.fresh_as_of().ok()?;
        let age = match t {
            0 => return None,
            u64::MAX => 0,
            t => self.ns(now).saturating_sub(t) / 1_000,
        };
        if age > self.lease.as_micros() as u64 {
            return None;
        }
        Some(Grant { term: self.inner.lock().term, quorum_age_us: age, commit })
    }

    /// Follower: the leader granted the probe sent at `sent`.
    pub fn on_grant(&self, sent: Instant, g: Grant, applied: u64) {
        let fresh = self.ns(sent).saturating_sub(g.quorum_age_us.saturating_mul(1_000)).max(1);
        if applied >= g.commit {
            self.fresh.fetch_max(fresh, Ordering::AcqRel);
            return;
        }
        let mut inner = self.inner.lock();
        match inner.pending.back_mut() {
            Some(last) if last.1 == g.commit => last.0 = last.0.max(fresh),
            _ => inner.pending.push_back((fresh, g.commit)),
        }
        while inner.pending.len() > MAX_PENDING {
            // Dropping the oldest only loses freshness: never unsafe.
            inner.pending.pop_front();
        }
    }

    /// Forgets every vouching so far (a leader said this node is not a member): stale until a
    /// leader vouches again.
    pub fn revoke(&self) {
        let mut inner = self.inner.lock();
        inner.pending.clear();
        self.fresh.store(0, Ordering::Release);
    }

    /// The published registry reached `applied`: contacts waiting for it now count.
    pub fn on_applied(&self, applied: u64) {
        self.applied.fetch_max(applied, Ordering::AcqRel);
        let mut inner = self.inner.lock();
        if inner.pending.is_empty() {
            return;
        }
        let mut best = 0;
        inner.pending.retain(|(fresh, commit)| {
            if *commit <= applied {
                best = best.max(*fresh);
                false
            } else {
                true
            }
        });
        drop(inner);
        if best > 0 {
            self.fresh.fetch_max(best, Ordering::AcqRel);
        }
    }

    /// Recomputes staleness and tells the watchers when it changed; returns it.
    pub fn publish(&self, now: Instant) -> Result<(), Stale> {
        let r = self.check(now);
        let stale = r.is_err();
        self.stale.send_if_modified(|s| std::mem::replace(s, stale) != stale);
        r
    }

    /// A watch that is `true` while this node is stale (as of the monitor's last publish).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.stale.subscribe()
    }
}

/// The latest time a quorum of every voter set had acknowledged (the leader counts as now).
fn quorum_time(inner: &Inner, me: NodeId) -> u64 {
    let mut worst = u64::MAX;
    let mut any = false;
    for set in inner.voters.iter().filter(|s| !s.is_empty()) {
        any = true;
        let mut times: Vec<u64> =
            set.iter().map(|v| if *v == me { u64::MAX } else { inner.acks.get(v).copied().unwrap_or(0) }).collect();
        times.sort_unstable_by(|a, b| b.cmp(a));
        worst = worst.min(times[set.len() / 2]);
    }
    if any {
        worst
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(6);

    fn leader(voters: &[NodeId], commit: u64) -> Standing {
        Standing { role: Role::Leader, term: 2, voters: vec![voters.to_vec()], commit }
    }

    fn follower() -> Standing {
        Standing { role: Role::Follower, term: 2, voters: vec![vec![1, 2, 3]], commit: 0 }
    }

    #[test]
    fn a_leader_is_fresh_as_of_its_last_quorum_acknowledgement() {
        let l = Lease::new(1, LEASE);
        let t0 = l.origin + Duration::from_secs(100);
        l.set_standing(&leader(&[1, 2, 3, 4, 5], 7), 7, t0);
        assert_eq!(l.check(t0), Err(Stale::NeverVouched), "no acknowledgement yet: stale, not fresh");
        l.on_ack(2, t0);
        assert!(l.check(t0).is_err(), "two of five is no quorum");
        l.on_ack(3, t0 + Duration::from_secs(1));
        assert_eq!(l.check(t0 + Duration::from_secs(6)), Ok(()), "quorum as of t0 (2's ack is the oldest needed)");
        assert!(matches!(l.check(t0 + Duration::from_millis(6001)), Err(Stale::Expired { .. })));
        // The minority case: the leader keeps hearing from one follower only.
        for s in 2..20 {
            l.on_ack(2, t0 + Duration::from_secs(s));
        }
        assert!(l.check(t0 + Duration::from_secs(8)).is_err(), "one follower's acks are not a quorum's");
        assert!(l.grant(t0 + Duration::from_secs(8), 7).is_none(), "nor can it vouch for followers");
    }

    #[test]
    fn a_new_leader_waits_for_its_own_term_and_a_lagging_apply_stales_it() {
        let l = Lease::new(1, LEASE);
        let t0 = l.origin + Duration::from_secs(10);
        l.set_standing(&Standing { role: Role::NewLeader, ..leader(&[1], 3) }, 3, t0);
        assert_eq!(l.check(t0), Err(Stale::NewLeader));
        l.set_standing(&leader(&[1], 3), 3, t0);
        assert_eq!(l.check(t0 + Duration::from_secs(3600)), Ok(()), "a sole voter is its own quorum");
        // Commit moves ahead of apply: fresh only until the lease from that moment runs out.
        l.set_standing(&leader(&[1], 9), 8, t0 + Duration::from_secs(1));
        assert_eq!(l.check(t0 + Duration::from_secs(7)), Ok(()));
        assert!(l.check(t0 + Duration::from_secs(8)).is_err());
        l.set_standing(&leader(&[1], 9), 9, t0 + Duration::from_secs(9));
        assert_eq!(l.check(t0 + Duration::from_secs(9)), Ok(()));
    }

    #[test]
    fn a_follower_counts_a_grant_only_once_it_applied_the_granted_commit() {
        let l = Lease::new(2, LEASE);
        let t0 = l.origin + Duration::from_secs(10);
        l.set_standing(&follower(), 5, t0);
        assert_eq!(l.check(t0), Err(Stale::NeverVouched));
        // The leader's quorum is 2 s old when it answers a probe sent at t0.
        l.on_grant(t0, Grant { term: 2, quorum_age_us: 2_000_000, commit: 5 }, 5);
        assert_eq!(l.check(t0 + Duration::from_secs(4)), Ok(()));
        assert!(l.check(t0 + Duration::from_millis(4001)).is_err(), "fresh as of t0 - 2 s");
        // A grant naming a commit it has not applied waits.
        let t1 = t0 + Duration::from_secs(5);
        l.on_grant(t1, Grant { term: 2, quorum_age_us: 0, commit: 9 }, 5);
        assert!(matches!(l.check(t1 + Duration::from_secs(1)), Err(Stale::CatchingUp { needed: 9, .. })));
        l.on_applied(9);
        assert_eq!(l.check(t1 + Duration::from_secs(6)), Ok(()));
        assert_eq!(l.expires_at(t1), Some(t1 + LEASE));
    }

    #[test]
    fn grants_come_only_from_a_leader_with_a_recent_quorum() {
        let l = Lease::new(1, LEASE);
        let t0 = l.origin + Duration::from_secs(10);
        l.set_standing(&leader(&[1, 2, 3], 4), 4, t0);
        assert!(l.grant(t0, 4).is_none(), "no quorum yet");
        l.on_ack(2, t0);
        let g = l.grant(t0 + Duration::from_millis(300), 4).unwrap();
        assert_eq!((g.commit, g.quorum_age_us / 1000), (4, 300));
        // A term change forgets the acknowledgements of the earlier one.
        l.set_standing(&Standing { term: 3, ..leader(&[1, 2, 3], 4) }, 4, t0);
        assert!(l.grant(t0, 4).is_none());
        l.set_standing(&follower(), 4, t0);
        assert!(l.grant(t0, 4).is_none(), "a follower grants nothing");
    }

    #[test]
    fn joint_configurations_need_a_quorum_of_each() {
        let l = Lease::new(1, LEASE);
        let t0 = l.origin + Duration::from_secs(10);
        l.set_standing(
            &Standing { role: Role::Leader, term: 2, voters: vec![vec![1, 2, 3], vec![4, 5, 6]], commit: 1 },
            1,
            t0,
        );
        l.on_ack(2, t0);
        assert!(l.check(t0).is_err(), "the second set has no quorum");
        l.on_ack(4, t0);
        l.on_ack(5, t0);
        assert_eq!(l.check(t0), Ok(()));
    }

    #[test]
    fn removal_and_stepping_down() {
        let l = Lease::new(1, LEASE);
        let t0 = l.origin + Duration::from_secs(10);
        l.set_standing(&leader(&[1, 2, 3], 1), 1, t0);
        l.on_ack(2, t0);
        l.set_standing(&follower(), 1, t0 + Duration::from_secs(1));
        assert_eq!(l.check(t0 + Duration::from_secs(5)), Ok(()), "what the quorum vouched for still holds");
        l.set_standing(&Standing { role: Role::Removed, ..follower() }, 1, t0);
        assert_eq!(l.check(t0), Err(Stale::Removed));
    }

    #[test]
    fn a_revoked_follower_is_stale_until_vouched_for_again() {
        let l = Lease::new(2, LEASE);
        let t0 = l.origin + Duration::from_secs(10);
        l.set_standing(&follower(), 5, t0);
        l.on_grant(t0, Grant { term: 2, quorum_age_us: 0, commit: 5 }, 5);
        l.on_grant(t0, Grant { term: 2, quorum_age_us: 0, commit: 9 }, 5);
        assert_eq!(l.check(t0 + Duration::from_secs(1)), Ok(()));
        l.revoke();
        assert_eq!(l.check(t0 + Duration::from_secs(1)), Err(Stale::NeverVouched));
        l.on_applied(9);
        assert!(l.check(t0 + Duration::from_secs(1)).is_err(), "a grant pending before the revocation does not count");
        l.on_grant(t0 + Duration::from_secs(2), Grant { term: 2, quorum_age_us: 0, commit: 9 }, 9);
        assert_eq!(l.check(t0 + Duration::from_secs(3)), Ok(()));
    }
}
