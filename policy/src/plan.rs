//! Plans: what a subject's decision can depend on once its static facts are known.
//!
//! Most of a call's facts are the same call after call: who calls (the agent and its labels),
//! which server (its name, labels, trust score, drift, risk tags, the policies it attaches), what
//! (kind, method, name, read or write). Only the arguments and the time change. A subject's
//! *plan* is the result of checking every candidate rule's conditions on those static facts
//! once: the policies in scope whose selectors hold, and in each the rules whose static
//! conditions hold, in evaluation order, marked where a condition on the arguments is left to
//! check. Time windows are checked when the plan is made; a plan that checked one holds for that
//! minute only (a window's truth changes only from one minute to the next). A call then checks
//! only what is left, from one small array, instead of every candidate rule's every condition
//! (the 1,000-rule sample set: 224 candidate rules for the sample call, 32 left in its plan on a
//! weekday).
//!
//! A plan is keyed by every static fact it read, compared in full on a hit (the hash only finds
//! it), so a changed label, tag or trust score finds another plan; a changed policy builds a new
//! [`PolicySet`](crate::PolicySet), with no plans. At most [`PLANS_MAX`] are kept, of at most
//! [`PLANS_MAX_BYTES`]; past that the cache starts over (a fleet with more subjects than that in
//! use makes their plans again as they come: correct, slower).

use std::collections::{BTreeMap, HashMap};
use std::hash::Hasher;
use std::sync::{Arc, RwLock};

use crate::compile::{Attr, Cond};
use crate::eval::{fold_rule, Fnv, Tally};
use crate::{Action, Constraints, Decision, Facts, Kind, PolicySet, Verdict};

/// Plans kept at most, per policy set.
pub(crate) const PLANS_MAX: usize = 4096;

/// Bytes of plans kept at most, per policy set (their steps and their keys' text): names in a
/// call are the caller's to choose, so what they can make the node keep is bounded in bytes too.
pub(crate) const PLANS_MAX_BYTES: usize = 16 << 20;

/// The plans found so far, by the hash of their subject.
#[derive(Default)]
pub(crate) struct Plans {
    map: RwLock<Kept>,
}

#[derive(Default)]
struct Kept {
    plans: HashMap<u64, Arc<Plan>, std::hash::BuildHasherDefault<Fnv>>,
    /// The sum of their [`Plan::bytes`].
    bytes: usize,
}

/// One subject's plan.
pub(crate) struct Plan {
    key: Key,
    /// The minute (Unix time / 60 s) it holds for, when a rule's time window was checked: a
    /// window's truth changes only from one minute to the next.
    minute: Option<u64>,
    /// In-scope policies with something left to decide: (policy index, its steps in `steps`).
    policies: Vec<(u32, u32, u32)>,
    /// The rules whose static conditions hold, policy by policy, in evaluation order.
    steps: Vec<Step>,
}

/// A rule whose static conditions hold for the subject.
#[derive(Clone, Copy)]
struct Step {
    rule: u32,
    decision: Decision,
    /// Some condition on the arguments is left to check per call.
    dynamic: bool,
}

/// The static facts a plan was made from, owned.
struct Key {
    agent: String,
    agent_labels: BTreeMap<String, String>,
    server: String,
    server_labels: BTreeMap<String, String>,
    trust_score: Option<u64>,
    schema_drift: Option<bool>,
    kind: Kind,
    method: String,
    name: String,
    action: Action,
    risk_tags: Vec<String>,
    attached: Vec<String>,
}

impl Plan {
    /// What keeping it costs, roughly: its steps and its key's text.
    fn bytes(&self) -> usize {
        let k = &self.key;
        let labels = |m: &BTreeMap<String, String>| m.iter().map(|(a, b)| a.len() + b.len()).sum::<usize>();
        std::mem::size_of::<Plan>()
            + self.steps.len() * std::mem::size_of::<Step>()
            + self.policies.len() * std::mem::size_of::<(u32, u32, u32)>()
            + k.agent.len()
            + k.server.len()
            + k.method.len()
            + k.name.len()
            + labels(&k.agent_labels)
            + labels(&k.server_labels)
            + k.risk_tags.iter().chain(&k.attached).map(String::len).sum::<usize>()
    }
}

impl Key {
    fn of(f: &Facts<'_>, attached: &[&str]) -> Key {
        Key {
            agent: f.agent.to_string(),
            agent_labels: f.agent_labels.clone(),
            server: f.server.to_string(),
            server_labels: f.server_labels.clone(),
            trust_score: f.trust_score.map(f64::to_bits),
            schema_drift: f.schema_drift,
            kind: f.kind,
            method: f.method.to_string(),
            name: f.name.to_string(),
            action: f.action,
            risk_tags: f.risk_tags.to_vec(),
            attached: attached.iter().map(|a| a.to_string()).collect(),
        }
    }

    fn is(&self, f: &Facts<'_>, attached: &[&str]) -> bool {
        self.agent == f.agent
            && self.server == f.server
            && self.name == f.name
            && self.method == f.method
            && self.kind == f.kind
            && self.action == f.action
            && self.trust_score == f.trust_score.map(f64::to_bits)
            && self.schema_drift == f.schema_drift
            && self.agent_labels == *f.agent_labels
            && self.server_labels == *f.server_labels
            && self.risk_tags == f.risk_tags
            && self.attached.len() == attached.len()
            && self.attached.iter().zip(attached).all(|(a, b)| a == b)
    }
}

/// The hash of a subject's static facts (each string ended by a byte no UTF-8 text holds).
fn hash(f: &Facts<'_>, attached: &[&str]) -> u64 {
    let mut h = Fnv::default();
    let mut s = |t: &str| {
        h.write(t.as_bytes());
        h.write(&[0xff]);
    };
    s(f.agent);
    s(f.server);
    s(f.name);
    s(f.method);
    for (k, v) in f.agent_labels.iter().chain(f.server_labels) {
        s(k);
        s(v);
    }
    for t in f.risk_tags {
        s(t);
    }
    for a in attached {
        s(a);
    }
    h.write_u64(f.trust_score.map(f64::to_bits).unwrap_or(1));
    h.write(&[f.kind as u8, f.action as u8, f.schema_drift.map_or(2, u8::from)]);
    h.finish()
}

impl Cond {
    /// Whether the condition reads what changes from call to call (the arguments, what the
    /// guard found in them, the answer). Time windows are checked when the plan is made, which
    /// then holds for that minute only.
    fn dynamic(&self) -> bool {
        matches!(self, Cond::Attr(Attr::Arg(_) | Attr::Result(_) | Attr::ArgsScan(_), _))
    }
}

impl PolicySet {
    /// The subject's plan: kept, or made and kept.
    pub(crate) fn plan_of(&self, f: &Facts<'_>, attached: &[&str]) -> Arc<Plan> {
        let h = hash(f, attached);
        let found = {
            let map = self.plans.map.read().unwrap_or_else(|e| e.into_inner());
            let minute = f.now_ms / 60_000;
            map.plans.get(&h).filter(|p| p.key.is(f, attached) && p.minute.is_none_or(|m| m == minute)).cloned()
        };
        if let Some(p) = found {
            return p;
        }
        let plan = Arc::new(self.plan(f, attached));
        let bytes = plan.bytes();
        let mut kept = self.plans.map.write().unwrap_or_else(|e| e.into_inner());
        if kept.plans.len() >= PLANS_MAX || kept.bytes + bytes > PLANS_MAX_BYTES {
            kept.plans.clear();
            kept.bytes = 0;
        }
        // A colliding subject's plan (or the same subject's, of another minute) is replaced: the
        // key and the minute tell them apart.
        if let Some(old) = kept.plans.insert(h, plan.clone()) {
            kept.bytes -= old.bytes();
        }
        kept.bytes += bytes;
        plan
    }

    /// Checks every candidate rule's static conditions for the subject (a request, not an
    /// answer: answer rules are left out).
    fn plan(&self, f: &Facts<'_>, attached: &[&str]) -> Plan {
        let qualified = std::cell::OnceCell::new();
        let mut plan = Plan { key: Key::of(f, attached), minute: None, policies: Vec::new(), steps: Vec::new() };
        let mut on_tool = Vec::new();
        for i in self.in_scope(f, attached) {
            let ix = &self.policies[i];
            let start = plan.steps.len();
            for r in ix.candidates(f, &mut on_tool) {
                let rule = &ix.policy.rules[r as usize];
                let Some(d) = rule.decision else { continue };
                let optimistic = d != Decision::Deny;
                if rule.conds.iter().any(|c| matches!(c, Cond::Time(_))) {
                    plan.minute = Some(f.now_ms / 60_000);
                }
                if rule.answer
                    || !rule.conds.iter().filter(|c| !c.dynamic()).all(|c| c.holds(f, optimistic, &qualified))
                {
                    continue;
                }
                plan.steps.push(Step { rule: r, decision: d, dynamic: rule.conds.iter().any(Cond::dynamic) });
            }
            if plan.steps.len() > start || ix.policy.default.is_some() {
                plan.policies.push((i as u32, start as u32, plan.steps.len() as u32));
            }
        }
        plan.policies.shrink_to_fit();
        plan.steps.shrink_to_fit();
        plan
    }

    /// A request's decision from its subject's plan: the same as [`PolicySet::decide_in_full`].
    pub(crate) fn decide_planned(&self, plan: &Plan, f: &Facts<'_>) -> Verdict {
        let mut tally = Tally::new(false);
        // Dynamic conditions never read `server.tool`.
        let unused = std::cell::OnceCell::new();
        for &(i, from, to) in &plan.policies {
            let p = &self.policies[i as usize].policy;
            let mut own = None;
            let mut constraints = Constraints::default();
            for s in &plan.steps[from as usize..to as usize] {
                let rule = &p.rules[s.rule as usize];
                let optimistic = s.decision != Decision::Deny;
                if s.dynamic && !rule.conds.iter().filter(|c| c.dynamic()).all(|c| c.holds(f, optimistic, &unused)) {
                    continue;
                }
                fold_rule(&mut own, &mut constraints, s.decision, s.rule, rule);
            }
            self.settle(&mut tally, i as usize, own, constraints, None);
        }
        tally.finish()
    }

    /// How many plans are kept, and their bytes (tests).
    #[cfg(test)]
    pub(crate) fn plans_kept(&self) -> usize {
        self.plans.map.read().unwrap_or_else(|e| e.into_inner()).plans.len()
    }

    #[cfg(test)]
    pub(crate) fn plans_bytes(&self) -> usize {
        self.plans.map.read().unwrap_or_else(|e| e.into_inner()).bytes
    }
}
#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::samples::{synthetic, Env, CALLS};
    use crate::{Action, Policy, PolicySet};

    /// The sample set's plans for the sample calls (a Monday at noon): static conditions and time
    /// windows are settled, only the rules on arguments are left, fewer than the candidates.
    #[test]
    fn a_plan_leaves_only_what_the_arguments_decide() {
        let env = Env::default();
        let set = PolicySet::new(synthetic(1000).iter().map(|(n, s)| Arc::new(Policy::compile(n, s).unwrap())));
        for call in CALLS {
            let f = env.facts(call);
            let plan = set.plan_of(&f, &[]);
            let mut on_tool = Vec::new();
            let candidates: usize =
                set.in_scope(&f, &[]).map(|i| set.policies[i].candidates(&f, &mut on_tool).count()).sum();
            let left = plan.steps.iter().filter(|s| s.dynamic).count();
            assert!(
                plan.steps.len() * 2 < candidates,
                "{call:?}: {} steps of {candidates} candidates",
                plan.steps.len()
            );
            assert!(left > 0, "{call:?}: the argument rules are left");
            // The sample's time windows are on writes.
            assert_eq!(
                plan.minute.is_some(),
                call.2 == Action::Write,
                "{call:?}: time windows checked for this minute"
            );
        }
    }
}
