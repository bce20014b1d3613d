//! The nemesis: a schedule of faults drawn from the seed (what, when, for how long, which way
//! to pick the target), then applied to the live cluster. Faults overlap (at most two at once;
//! a restart of every node runs alone). Targets are picked when the fault starts, from the live
//! membership and the current leader, by the fault's own seeded draw: the same seed gives the
//! same schedule, while who leads at that moment depends on the run.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use joch_proto::admin as pb;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::cluster::Cluster;
use crate::history::{Clock, History};
use crate::net::Cut;
use crate::relay::{Faults, LinkFault};

/// What a fault does.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// kill -9 of the leader (restarted at the heal).
    KillLeader,
    /// kill -9 of a follower, only if a quorum stays up.
    KillFollower,
    /// kill -9 of a majority: quorum deliberately lost.
    KillMajority,
    /// SIGSTOP of the leader, SIGCONT at the heal.
    PauseLeader,
    PauseFollower,
    /// One node cut off from all others.
    Isolate,
    /// The leader on the minority side.
    LeaderMinority,
    /// The leader on the majority side.
    LeaderMajority,
    /// Two halves cut from each other, one node seeing both.
    Bridge,
    /// The leader's messages to one follower are dropped, not the other way.
    OneWay,
    /// Datagrams on some nodes' mesh links dropped.
    Loss,
    /// Delayed (and so reordered).
    Delay,
    /// Duplicated.
    Duplicate,
    /// The clock node's wall clock stepped by minutes to hours.
    ClockStep,
    /// The disk node's data volume filled up.
    DiskFull,
    /// kill -9 of every node, then all started again.
    RestartAll,
    /// Node 4 joins (when it is not a member) or is removed (when it is).
    Membership,
}

const KINDS: [(Kind, u32); 17] = [
    (Kind::KillLeader, 8),
    (Kind::KillFollower, 8),
    (Kind::KillMajority, 3),
    (Kind::PauseLeader, 6),
    (Kind::PauseFollower, 5),
    (Kind::Isolate, 6),
    (Kind::LeaderMinority, 6),
    (Kind::LeaderMajority, 5),
    (Kind::Bridge, 5),
    (Kind::OneWay, 5),
    (Kind::Loss, 5),
    (Kind::Delay, 5),
    (Kind::Duplicate, 4),
    (Kind::ClockStep, 4),
    (Kind::DiskFull, 3),
    (Kind::RestartAll, 2),
    (Kind::Membership, 4),
];

/// One planned fault.
#[derive(Serialize, Clone, Debug)]
pub struct Planned {
    pub at_s: f64,
    pub kind: Kind,
    pub hold_s: f64,
    /// The fault's own draw for picking targets and magnitudes.
    pub pick: u64,
}

/// The schedule for `seed` over `duration` (faults start after a 5 s warm-up and end 5 s before).
pub fn schedule(seed: u64, duration: Duration) -> Vec<Planned> {
    let mut rng = StdRng::seed_from_u64(seed);
    let total: u32 = KINDS.iter().map(|k| k.1).sum();
    let end = duration.as_secs_f64() - 5.0;
    let mut t = 5.0;
    let mut active: Vec<f64> = Vec::new();
    let mut out = Vec::new();
    while t < end {
        let mut roll = rng.random_range(0..total);
        let kind = KINDS
            .iter()
            .find(|(_, w)| {
                if roll < *w {
                    true
                } else {
                    roll -= w;
                    false
                }
            })
            .map(|k| k.0)
            .unwrap_or(Kind::KillLeader);
        let hold = match kind {
            Kind::RestartAll | Kind::Membership => 0.0,
            _ => rng.random_range(3.0..12.0),
        };
        active.retain(|e| *e > t);
        let start = if kind == Kind::RestartAll {
            active.iter().copied().fold(t, f64::max)
        } else if active.len() >= 2 {
            active.iter().copied().fold(f64::INFINITY, f64::min)
        } else {
            t
        };
        if start + hold >= end {
            break;
        }
        active.retain(|e| *e > start);
        active.push(start + hold + if kind == Kind::RestartAll { 3.0 } else { 0.0 });
        out.push(Planned { at_s: start, kind, hold_s: hold, pick: rng.random() });
        t = start + rng.random_range(2.0..7.0);
    }
    out
}

/// The nemesis's view of the cluster.
pub struct Nemesis {
    pub cluster: Arc<Cluster>,
    pub relays: Vec<Arc<Faults>>,
    pub clock: Arc<Clock>,
    pub history: Arc<History>,
    /// Whether node 4 is a member.
    pub member4: AtomicBool,
    /// Nodes a fault has killed and not yet restarted.
    down: Mutex<BTreeSet<u64>>,
    /// How many faults were applied (not skipped).
    pub applied: Mutex<Vec<Kind>>,
}

fn pick<T: Copy>(rng: &mut StdRng, v: &[T]) -> Option<T> {
    (!v.is_empty()).then(|| v[rng.random_range(0..v.len())])
}

impl Nemesis {
    pub fn new(cluster: Arc<Cluster>, relays: Vec<Arc<Faults>>, clock: Arc<Clock>, history: Arc<History>) -> Nemesis {
        Nemesis {
            cluster,
            relays,
            clock,
            history,
            member4: AtomicBool::new(false),
            down: Mutex::new(BTreeSet::new()),
            applied: Mutex::new(Vec::new()),
        }
    }

    /// The nodes that should be running when no fault is on.
    pub fn should_run(&self) -> Vec<u64> {
        let mut v = vec![1, 2, 3];
        if self.member4.load(Ordering::Relaxed) {
            v.push(4);
        }
        v
    }

    fn log(&self, phase: &str, kind: Kind, detail: String) {
        self.history.fault(&self.clock, phase, &format!("{kind:?}"), detail);
    }

    /// Runs the schedule until it is done; returns when the last fault has healed.
    pub async fn run(self: &Arc<Self>, plan: Vec<Planned>) {
        let mut tasks = Vec::new();
        for p in plan {
            let me = self.clone();
            tasks.push(tokio::spawn(async move {
                let wait = p.at_s * 1000.0 - me.clock.now();
                if wait > 0.0 {
                    tokio::time::sleep(Duration::from_millis(wait as u64)).await;
                }
                me.fault(&p).await;
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    /// Applies one fault, holds it, heals it.
    async fn fault(&self, p: &Planned) {
        let c = &self.cluster;
        let mut rng = StdRng::seed_from_u64(p.pick);
        // One view of the cluster: the leader and the voters as the same node saw them.
        let view = c.view().await;
        let leader = view.as_ref().map(|s| s.leader);
        let voters = view.as_ref().map(crate::cluster::voters).unwrap_or_default();
        let running: Vec<u64> = voters.iter().copied().filter(|id| c.running(*id)).collect();
        let majority = voters.len() / 2 + 1;
        let followers: Vec<u64> = running.iter().copied().filter(|id| Some(*id) != leader).collect();
        let hold = Duration::from_secs_f64(p.hold_s);
        let skip = |why: &str| self.log("skip", p.kind, why.to_string());
        match p.kind {
            Kind::KillLeader | Kind::KillFollower | Kind::KillMajority => {
                let victims: Vec<u64> = match p.kind {
                    Kind::KillLeader => leader.into_iter().collect(),
                    Kind::KillFollower if running.len() > majority => pick(&mut rng, &followers).into_iter().collect(),
                    Kind::KillFollower => return skip("a quorum would be lost"),
                    _ => {
                        let mut v: Vec<u64> = leader.into_iter().collect();
                        let mut f = followers.clone();
                        while running.len() - v.len() >= majority && !f.is_empty() {
                            v.push(f.remove(rng.random_range(0..f.len())));
                        }
                        v
                    }
                };
                if victims.is_empty() {
                    return skip("no leader known");
                }
                for v in &victims {
                    c.kill(*v);
                    self.down.lock().insert(*v);
                }
                self.log("start", p.kind, format!("killed {victims:?} (voters {voters:?}, leader {leader:?})"));
                self.applied.lock().push(p.kind);
                tokio::time::sleep(hold).await;
                for v in &victims {
                    self.down.lock().remove(v);
                    if self.should_run().contains(v) {
                        let _ = c.start(*v);
                    }
                }
                self.log("heal", p.kind, format!("restarted {victims:?}"));
            }
            Kind::PauseLeader | Kind::PauseFollower => {
                let target = if p.kind == Kind::PauseLeader { leader } else { pick(&mut rng, &followers) };
                let Some(t) = target else { return skip("no target") };
                c.pause(t, true);
                self.log("start", p.kind, format!("SIGSTOP node {t}"));
                self.applied.lock().push(p.kind);
                tokio::time::sleep(hold).await;
                c.pause(t, false);
                self.log("heal", p.kind, format!("SIGCONT node {t}"));
            }
            Kind::Isolate | Kind::LeaderMinority | Kind::LeaderMajority | Kind::Bridge | Kind::OneWay => {
                let all: Vec<u64> = c.ids().collect();
                let Some(l) = leader else { return skip("no leader known") };
                let mut others: Vec<u64> = voters.iter().copied().filter(|id| *id != l).collect();
                let mut cut = Cut::default();
                let what = match p.kind {
                    Kind::Isolate => {
                        let Some(v) = pick(&mut rng, &voters) else { return skip("no voters") };
                        let rest: Vec<u64> = all.iter().copied().filter(|id| *id != v).collect();
                        cut.groups(c, &[v], &rest).map(|_| format!("node {v} isolated"))
                    }
                    Kind::LeaderMinority | Kind::LeaderMajority => {
                        let size = if p.kind == Kind::LeaderMinority { (voters.len() - 1) / 2 } else { majority - 1 };
                        let mut side = vec![l];
                        while side.len() < size + 1 && !others.is_empty() {
                            side.push(others.remove(rng.random_range(0..others.len())));
                        }
                        let rest: Vec<u64> = all.iter().copied().filter(|id| !side.contains(id)).collect();
                        cut.groups(c, &side, &rest).map(|_| format!("{side:?} (leader {l}) | {rest:?}"))
                    }
                    Kind::Bridge => {
                        let Some(b) = pick(&mut rng, &others) else { return skip("too few voters") };
                        let rest: Vec<u64> = all.iter().copied().filter(|id| *id != b && *id != l).collect();
                        let half = rest.len() / 2;
                        let (x, y) = rest.split_at(half);
                        let x: Vec<u64> = std::iter::once(l).chain(x.iter().copied()).collect();
                        cut.groups(c, &x, y).map(|_| format!("{x:?} | {y:?}, node {b} sees both"))
                    }
                    _ => {
                        let Some(f) = pick(&mut rng, &others) else { return skip("no follower") };
                        cut.one_way(c, l, f).map(|_| format!("leader {l} -> node {f} dropped (one way)"))
                    }
                };
                match what {
                    Ok(w) => {
                        self.log("start", p.kind, w);
                        self.applied.lock().push(p.kind);
                        tokio::time::sleep(hold).await;
                        cut.heal();
                        self.log("heal", p.kind, String::new());
                    }
                    Err(e) => {
                        cut.heal();
                        skip(&e.to_string());
                    }
                }
            }
            Kind::Loss | Kind::Delay | Kind::Duplicate => {
                let f = match p.kind {
                    Kind::Loss => LinkFault { loss: rng.random_range(0.1..0.5), ..Default::default() },
                    Kind::Delay => {
                        let lo = rng.random_range(10..100);
                        LinkFault { delay_ms: (lo, lo + rng.random_range(10..200)), ..Default::default() }
                    }
                    _ => LinkFault { dup: rng.random_range(0.2..0.6), ..Default::default() },
                };
                let nodes: Vec<u64> = if rng.random_bool(0.5) {
                    c.ids().collect()
                } else {
                    pick(&mut rng, &voters).into_iter().collect()
                };
                for n in &nodes {
                    self.relays[*n as usize - 1].set(p.pick, f);
                }
                self.log("start", p.kind, format!("{f:?} on the links of {nodes:?}"));
                self.applied.lock().push(p.kind);
                tokio::time::sleep(hold).await;
                for n in &nodes {
                    self.relays[*n as usize - 1].clear(p.pick);
                }
                self.log("heal", p.kind, String::new());
            }
            Kind::ClockStep => {
                let Some(n) = c.clock_node else { return skip("libfaketime is not installed") };
                let step = rng.random_range(60..7200) * if rng.random_bool(0.5) { 1 } else { -1 };
                if let Err(e) = c.set_clock(n, step) {
                    return skip(&e.to_string());
                }
                self.log("start", p.kind, format!("node {n}'s wall clock {step:+} s"));
                self.applied.lock().push(p.kind);
                tokio::time::sleep(hold).await;
                let _ = c.set_clock(n, 0);
                self.log("heal", p.kind, format!("node {n}'s wall clock true again"));
            }
            Kind::DiskFull => {
                let Some(n) = c.disk_node else { return skip("no tmpfs (mount needs root)") };
                let fill = c.slot(n).dir.join("data").join("chaos-fill");
                let f2 = fill.clone();
                let wrote = tokio::task::spawn_blocking(move || fill_up(&f2)).await.unwrap_or(0);
                self.log("start", p.kind, format!("node {n}'s data volume filled ({} MiB)", wrote >> 20));
                self.applied.lock().push(p.kind);
                tokio::time::sleep(hold).await;
                let _ = std::fs::remove_file(&fill);
                // A node that stopped on a full disk is started again.
                if !c.running(n) && !self.down.lock().contains(&n) && self.should_run().contains(&n) {
                    let _ = c.start(n);
                    self.log("heal", p.kind, format!("space freed; node {n} had stopped: restarted"));
                } else {
                    self.log("heal", p.kind, "space freed".into());
                }
            }
            Kind::RestartAll => {
                let ids = self.should_run();
                for id in &ids {
                    c.pause(*id, false);
                    c.kill(*id);
                }
                self.log("start", p.kind, format!("killed {ids:?}"));
                self.applied.lock().push(p.kind);
                for id in &ids {
                    let _ = c.start(*id);
                }
                self.down.lock().clear();
                self.log("heal", p.kind, format!("started {ids:?}"));
            }
            Kind::Membership => {
                let via = pick(&mut rng, &running).unwrap_or(1);
                if self.member4.load(Ordering::Relaxed) {
                    let mut api = c.cluster_api(via);
                    let r = api.remove_member(c.req(pb::RemoveMemberRequest { id: 4 }, Duration::from_secs(20)));
                    match tokio::time::timeout(Duration::from_secs(25), r).await {
                        Ok(Ok(_)) => {
                            self.member4.store(false, Ordering::Relaxed);
                            c.kill(4);
                            let _ = c.wipe(4);
                            self.applied.lock().push(p.kind);
                            self.log("start", p.kind, format!("node 4 removed through node {via}"));
                        }
                        Ok(Err(s)) => skip(&format!("remove node 4 through node {via}: {}", s.message())),
                        Err(_) => skip(&format!("remove node 4 through node {via}: no answer")),
                    }
                } else {
                    c.kill(4);
                    let _ = c.wipe(4);
                    if let Err(e) = c.start(4) {
                        return skip(&e.to_string());
                    }
                    let req = pb::AddMemberRequest { member: Some(c.member(4)), learner_only: false };
                    let mut api = c.cluster_api(via);
                    let r = api.add_member(c.req(req, Duration::from_secs(30)));
                    match tokio::time::timeout(Duration::from_secs(35), r).await {
                        Ok(Ok(_)) => {
                            self.member4.store(true, Ordering::Relaxed);
                            self.applied.lock().push(p.kind);
                            self.log("start", p.kind, format!("node 4 added through node {via}"));
                        }
                        other => {
                            let why = match other {
                                Ok(Err(s)) => s.message().to_string(),
                                _ => "no answer".into(),
                            };
                            // It may still have joined: ask.
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            if c.voters().await.contains(&4) {
                                self.member4.store(true, Ordering::Relaxed);
                                self.log("start", p.kind, format!("node 4 joined (the answer was: {why})"));
                            } else {
                                c.kill(4);
                                skip(&format!("add node 4 through node {via}: {why}"));
                            }
                        }
                    }
                }
            }
        }
    }

    /// Ends every fault: partitions healed, links clean, clocks true, disk freed, every node
    /// that should run running and resumed.
    pub async fn heal_all(&self) {
        crate::net::clear_all();
        for r in &self.relays {
            r.clear_all();
        }
        let c = &self.cluster;
        if let Some(n) = c.clock_node {
            let _ = c.set_clock(n, 0);
        }
        if let Some(n) = c.disk_node {
            let _ = std::fs::remove_file(c.slot(n).dir.join("data").join("chaos-fill"));
        }
        // Whether node 4 is a member, as the cluster says (an add may have timed out).
        let voters = c.voters().await;
        if !voters.is_empty() {
            self.member4.store(voters.contains(&4), Ordering::Relaxed);
        }
        for id in c.ids() {
            c.pause(id, false);
        }
        for id in self.should_run() {
            let _ = c.start(id);
        }
        self.down.lock().clear();
        self.history.fault(&self.clock, "heal", "All", format!("every fault healed; running {:?}", self.should_run()));
    }
}

/// Writes zeros into `path` until the volume is full; returns the bytes written.
fn fill_up(path: &std::path::Path) -> u64 {
    use std::io::Write;
    let Ok(mut f) = std::fs::File::create(path) else { return 0 };
    let chunk = vec![0u8; 1 << 20];
    let mut n = 0u64;
    while f.write_all(&chunk).is_ok() {
        n += chunk.len() as u64;
    }
    let _ = f.sync_all();
    n
}
