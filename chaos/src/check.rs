//! The checkers. Each reads the history only and returns one JSON object per violation.
//!
//! 1. Linearizability of the registry operations, per server (independent objects), with
//!    stateright's Wing–Gong search; an operation without an answer is open forever.
//! 2. No acknowledged write lost: every applied write that changed something is in the
//!    server's change history at its log index, read after everything was restarted.
//! 3. Quarantine safety: a call sent after a quarantine (or a deletion) of its server was
//!    acknowledged never reaches the upstream, unless an unquarantine (or a new registration)
//!    might have come after it; for a node that did not confirm the acknowledgement, the bound
//!    is the time by which it stops serving (its lease).
//! 4. No request reaches a server that was never registered; a call with another agent's
//!    session is refused, and an upstream session only ever carries one agent's calls.
//! 5. Liveness is measured by the run itself (see `main`), not from the history.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};
use stateright::semantics::{ConsistencyTester, LinearizabilityTester, SequentialSpec};

use crate::history::{Call, History, Op, Outcome, RegOp, Ret, Srv, Via};

/// The sequential model of one server in the registry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Model(pub Option<Srv>);

impl SequentialSpec for Model {
    type Op = Op;
    type Ret = Ret;

    fn invoke(&mut self, op: &Op) -> Ret {
        match (op, &mut self.0) {
            (Op::Read, s) => Ret::Value(*s),
            (Op::Add, Some(_)) => Ret::Exists,
            (Op::Add, s @ None) => {
                *s = Some(Srv::default());
                Ret::Changed(true)
            }
            (_, None) => Ret::NotFound,
            (Op::Delete, s) => {
                *s = None;
                Ret::Changed(true)
            }
            (Op::Quarantine, Some(v)) => {
                let changed = !v.quarantined;
                v.quarantined = true;
                Ret::Changed(changed)
            }
            (Op::Unquarantine, Some(v)) => {
                let changed = v.quarantined;
                v.quarantined = false;
                Ret::Changed(changed)
            }
            (Op::Pin(n), Some(v)) => {
                let changed = v.pin != Some(*n);
                v.pin = Some(*n);
                Ret::Changed(changed)
            }
        }
    }
}

/// The result of the linearizability check of one server.
pub enum Lin {
    Ok {
        ops: usize,
    },
    Violation {
        ops: usize,
    },
    /// The search did not finish within its budget.
    Undecided {
        ops: usize,
    },
}

/// Checks one server's operations, starting from `init`, within `budget`.
pub fn linearizable(ops: &[RegOp], init: Model, budget: Duration) -> Lin {
    // Events in real-time order; at equal times an invocation goes first (the operations are
    // then concurrent, which demands less).
    let mut events: Vec<(f64, u8, usize)> = Vec::new();
    for (i, o) in ops.iter().enumerate() {
        match (o.returned, o.ret) {
            (Some(t), Some(_)) => {
                events.push((o.invoked, 0, i));
                events.push((t, 1, i));
            }
            // Failed for certain: it did nothing.
            (Some(_), None) => {}
            // No answer: open forever.
            (None, _) => events.push((o.invoked, 0, i)),
        }
    }
    events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let n = events.iter().filter(|e| e.1 == 0).count();
    let mut t = LinearizabilityTester::<u64, Model>::new(init);
    for (_, kind, i) in &events {
        let o = &ops[*i];
        let r = if *kind == 0 {
            t.on_invoke(o.process, o.op).map(|_| ())
        } else {
            t.on_return(o.process, o.ret.unwrap_or(Ret::NotFound)).map(|_| ())
        };
        if r.is_err() {
            return Lin::Violation { ops: n };
        }
    }
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new().stack_size(1 << 30).spawn(move || {
        let _ = tx.send(t.serialized_history().is_some());
    });
    if spawned.is_err() {
        return Lin::Undecided { ops: n };
    }
    match rx.recv_timeout(budget) {
        Ok(true) => Lin::Ok { ops: n },
        Ok(false) => Lin::Violation { ops: n },
        Err(_) => Lin::Undecided { ops: n },
    }
}

/// When node `via` must deny new calls after the blocking write `b` (run clock, ms).
fn enforced_from(b: &RegOp, via: Via) -> f64 {
    let acked = b.returned.unwrap_or(f64::INFINITY);
    let Some(f) = &b.fleet else { return acked };
    if f.complete {
        return acked;
    }
    let late = f.laggards_stop_by.unwrap_or(acked).max(acked);
    match via {
        Via::Node(id) if f.applied.contains(&id) || !f.members.contains(&id) => acked,
        Via::Node(_) => late,
        // Through the balancer: any node.
        Via::Balancer => late,
    }
}

/// Checker 3 (and 4's deleted servers): calls that reached the upstream after a block.
pub fn quarantine_safety(h: &History) -> Vec<Value> {
    let reg = h.reg.lock();
    let calls = h.calls.lock();
    let recv = h.received.lock();
    let received: HashMap<&str, f64> = recv.iter().filter_map(|r| Some((r.op.as_deref()?, r.at))).collect();
    // By server: the acknowledged blocks, and what may have lifted one (an unblock that may have
    // been applied: answered, or without an answer).
    let mut blocks: HashMap<&str, Vec<&RegOp>> = HashMap::new();
    let mut unblocks: HashMap<&str, Vec<&RegOp>> = HashMap::new();
    for o in reg.iter() {
        if o.acked() && matches!(o.op, Op::Quarantine | Op::Delete) {
            blocks.entry(o.key.as_str()).or_default().push(o);
        }
        if matches!(o.op, Op::Unquarantine | Op::Add) && o.may_have_applied() {
            unblocks.entry(o.key.as_str()).or_default().push(o);
        }
    }
    let mut out = Vec::new();
    for c in calls.iter() {
        let Some(&arrived) = received.get(c.id.as_str()) else { continue };
        for b in blocks.get(c.server.as_str()).map(Vec::as_slice).unwrap_or_default() {
            let from = enforced_from(b, c.via);
            if c.sent <= from {
                continue;
            }
            // Lifted by an operation that may have taken effect after the block, before the call arrived.
            let lifted = unblocks.get(c.server.as_str()).map(Vec::as_slice).unwrap_or_default().iter().any(|u| {
                (b.op == Op::Quarantine || u.op == Op::Add)
                    && u.invoked < arrived
                    && u.returned.is_none_or(|r| r > b.invoked)
            });
            if !lifted {
                out.push(json!({
                    "checker": "quarantine-safety",
                    "call": c.id, "server": c.server, "via": c.via, "sent_ms": c.sent, "arrived_ms": arrived,
                    "blocked_by": format!("{:?}", b.op), "block_log_index": b.log_index,
                    "block_acked_ms": b.returned, "enforced_from_ms": from, "fleet": b.fleet,
                }));
                break;
            }
        }
    }
    out
}

/// Checker 4: requests to servers that were never registered, cross-agent sessions.
pub fn isolation(h: &History) -> Vec<Value> {
    let reg = h.reg.lock();
    let calls = h.calls.lock();
    let received = h.received.lock();
    let mut out = Vec::new();
    // The first moment each transient server may have existed.
    let mut first_add: HashMap<&str, f64> = HashMap::new();
    for o in reg.iter().filter(|o| o.op == Op::Add && o.may_have_applied()) {
        let e = first_add.entry(o.key.as_str()).or_insert(f64::INFINITY);
        *e = e.min(o.invoked);
    }
    for r in received.iter().filter(|r| crate::workload::TRANSIENT.contains(&r.server.as_str())) {
        if first_add.get(r.server.as_str()).is_none_or(|t| r.at < *t) {
            out.push(
                json!({"checker": "unregistered", "server": r.server, "method": r.method, "op": r.op, "at_ms": r.at}),
            );
        }
    }
    let by_id: HashMap<&str, &Call> = calls.iter().map(|c| (c.id.as_str(), c)).collect();
    for c in calls.iter().filter(|c| c.cross && c.outcome == Outcome::Ok) {
        out.push(
            json!({"checker": "session-crossing", "call": c.id, "agent": c.agent, "server": c.server, "via": c.via,
                        "what": "a call with another agent's session was answered"}),
        );
    }
    let mut agents: BTreeMap<&str, HashSet<u8>> = BTreeMap::new();
    for r in received.iter() {
        if let (Some(s), Some(op)) = (r.session.as_deref(), r.op.as_deref()) {
            if let Some(c) = by_id.get(op) {
                agents.entry(s).or_default().insert(c.agent);
            }
        }
    }
    for (s, a) in agents.iter().filter(|(_, a)| a.len() > 1) {
        out.push(json!({"checker": "session-crossing", "upstream_session": s, "agents": a,
                        "what": "one upstream session carried calls of several agents"}));
    }
    out
}

/// The action a write leaves in the change history.
fn action(op: Op) -> &'static str {
    match op {
        Op::Add => "create_server",
        Op::Delete => "delete_server",
        Op::Quarantine => "quarantine",
        Op::Unquarantine => "unquarantine",
        Op::Pin(_) => "pin",
        Op::Read => "",
    }
}

/// Checker 2: every acknowledged write that changed something is in its server's change
/// history (`history`: each server's (log index, action) lines, read after the final restart).
/// A write the node retried is answered with the index of the entry that answered, and its line
/// carries the index where it was applied, earlier: such a write matches the latest earlier
/// line of its action that no other acknowledged write claims.
pub fn lost_writes(h: &History, history: &HashMap<String, Vec<(u64, String)>>) -> Vec<Value> {
    let reg = h.reg.lock();
    let acked: Vec<&RegOp> = reg.iter().filter(|o| o.ret == Some(Ret::Changed(true)) && o.log_index > 0).collect();
    let mut claimed: HashSet<(String, u64)> = acked.iter().map(|o| (o.key.clone(), o.log_index)).collect();
    let mut out = Vec::new();
    for o in &acked {
        let lines = history.get(&o.key).map(Vec::as_slice).unwrap_or_default();
        if lines.iter().any(|(i, a)| *i == o.log_index && a == action(o.op)) {
            continue;
        }
        let earlier = lines
            .iter()
            .filter(|(i, a)| *i < o.log_index && a == action(o.op) && !claimed.contains(&(o.key.clone(), *i)))
            .map(|(i, _)| *i)
            .max();
        match earlier {
            Some(i) => {
                claimed.insert((o.key.clone(), i));
            }
            None => out.push(json!({"checker": "lost-write", "server": o.key, "op": format!("{:?}", o.op),
                                   "log_index": o.log_index, "acked_ms": o.returned, "node": o.node})),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(process: u64, op: Op, invoked: f64, returned: Option<f64>, ret: Option<Ret>) -> RegOp {
        RegOp { process, key: "k".into(), node: 1, op, invoked, returned, ret, error: None, log_index: 0, fleet: None }
    }

    const B: Duration = Duration::from_secs(10);

    #[test]
    fn a_read_after_an_acknowledged_quarantine_must_see_it() {
        let q = Some(Srv { quarantined: true, pin: None });
        let fresh = Model(Some(Srv::default()));
        let good = [
            op(1, Op::Quarantine, 0.0, Some(1.0), Some(Ret::Changed(true))),
            op(2, Op::Read, 2.0, Some(3.0), Some(Ret::Value(q))),
        ];
        assert!(matches!(linearizable(&good, fresh.clone(), B), Lin::Ok { ops: 2 }));
        let stale = [
            op(1, Op::Quarantine, 0.0, Some(1.0), Some(Ret::Changed(true))),
            op(2, Op::Read, 2.0, Some(3.0), Some(Ret::Value(Some(Srv::default())))),
        ];
        assert!(matches!(linearizable(&stale, fresh.clone(), B), Lin::Violation { .. }));
        // Concurrent with the write: either value is fine.
        let concurrent = [
            op(1, Op::Quarantine, 0.0, Some(3.0), Some(Ret::Changed(true))),
            op(2, Op::Read, 1.0, Some(2.0), Some(Ret::Value(Some(Srv::default())))),
        ];
        assert!(matches!(linearizable(&concurrent, fresh, B), Lin::Ok { .. }));
    }

    #[test]
    fn an_unanswered_write_may_take_effect_later_or_never() {
        let fresh = Model(Some(Srv::default()));
        let pinned = Some(Srv { quarantined: false, pin: Some(1) });
        let h = [
            op(1, Op::Pin(1), 0.0, None, None),
            op(2, Op::Read, 5.0, Some(6.0), Some(Ret::Value(Some(Srv::default())))),
            op(2, Op::Read, 7.0, Some(8.0), Some(Ret::Value(pinned))),
        ];
        assert!(matches!(linearizable(&h, fresh.clone(), B), Lin::Ok { .. }));
        // But once seen, it cannot be unseen.
        let h = [
            op(1, Op::Pin(1), 0.0, None, None),
            op(2, Op::Read, 5.0, Some(6.0), Some(Ret::Value(pinned))),
            op(2, Op::Read, 7.0, Some(8.0), Some(Ret::Value(Some(Srv::default())))),
        ];
        assert!(matches!(linearizable(&h, fresh, B), Lin::Violation { .. }));
    }

    #[test]
    fn a_call_sent_after_the_acknowledgement_that_reached_the_upstream_is_a_violation() {
        let h = History::default();
        let mut q = op(1, Op::Quarantine, 0.0, Some(10.0), Some(Ret::Changed(true)));
        q.key = "t0".into();
        h.reg.lock().push(q);
        let call = |id: &str, sent: f64| Call {
            id: id.into(),
            agent: 1,
            server: "t0".into(),
            via: Via::Node(2),
            era: "modern".into(),
            cross: false,
            sent,
            done: sent + 1.0,
            outcome: Outcome::Ok,
        };
        h.calls.lock().extend([call("before", 5.0), call("after", 11.0)]);
        for (id, at) in [("before", 6.0), ("after", 12.0)] {
            h.received.lock().push(crate::history::Received {
                at,
                server: "t0".into(),
                method: "tools/call".into(),
                op: Some(id.into()),
                session: None,
            });
        }
        let v = quarantine_safety(&h);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0]["call"], "after");
        // An unquarantine that may have come after the quarantine lifts it.
        let mut u = op(3, Op::Unquarantine, 9.0, None, None);
        u.key = "t0".into();
        h.reg.lock().push(u);
        assert!(quarantine_safety(&h).is_empty());
        // A deletion is lifted by a registration only.
        let mut d = op(4, Op::Delete, 0.0, Some(10.0), Some(Ret::Changed(true)));
        d.key = "t0".into();
        h.reg.lock().push(d);
        assert_eq!(quarantine_safety(&h).len(), 1, "an unquarantine does not bring a deleted server back");
        let mut a = op(5, Op::Add, 10.5, Some(10.6), Some(Ret::Changed(true)));
        a.key = "t0".into();
        h.reg.lock().push(a);
        assert!(quarantine_safety(&h).is_empty());
    }
}
