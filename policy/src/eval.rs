//! Deciding: the compiled policies, indexed by the servers they name, against one request's facts.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::compile::{Attr, Cond, LabelReq, Policy, Selector};
use crate::matcher::{Test, Val};
use crate::{Action, Constraints, Decision, Enforcement};

/// What a request is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// `tools/call` (or a tool in a list).
    Tool,
    /// `prompts/get`.
    Prompt,
    /// `resources/read`.
    Resource,
}

impl Kind {
    /// `tool`, `prompt` or `resource`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Tool => "tool",
            Kind::Prompt => "prompt",
            Kind::Resource => "resource",
        }
    }
}

/// The facts one decision reads: who calls, which server, what, with which arguments, when.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The agent's name.
    pub agent: &'a str,
    /// Its labels.
    pub agent_labels: &'a BTreeMap<String, String>,
    /// The server's registered name.
    pub server: &'a str,
    /// Its labels.
    pub server_labels: &'a BTreeMap<String, String>,
    /// Its trust score, once discovery computed one.
    pub trust_score: Option<f64>,
    /// Whether its capabilities drifted, once discovery looked.
    pub schema_drift: Option<bool>,
    /// What kind of capability.
    pub kind: Kind,
    /// The JSON-RPC method (`tools/call`; a list item is decided as the call it would be).
    pub method: &'a str,
    /// The tool or prompt name, or the resource URI.
    pub name: &'a str,
    /// Read or write.
    pub action: Action,
    /// Risk tags of the server and the tool.
    pub risk_tags: &'a [String],
    /// The call's arguments.
    pub args: Option<&'a Value>,
    /// Deciding whether a list shows the capability, not a call: the arguments are not known,
    /// so a condition on them is taken to hold for a rule that allows (some call may match it)
    /// and not to hold for a DENY (some call may escape it). A capability is then listed exactly
    /// when some call to it could be allowed or held: the list never hides what a call may use,
    /// and never shows what every call would be denied.
    pub listing: bool,
    /// Now, in Unix milliseconds.
    pub now_ms: u64,
    /// The answer's facts (`mcpResult.*`), when deciding on an answer.
    pub result: Option<&'a Value>,
    /// What the content guard found in the call's arguments (`mcpArgs.*`), when some rule asks.
    pub args_scan: Option<&'a Value>,
}

/// One rule (or a policy's default) that matched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Match {
    /// The policy.
    pub policy: String,
    /// The rule id (`default` for the policy's default decision).
    pub rule: String,
    /// What it decides.
    pub decision: Decision,
    /// The reason it gives.
    pub reason: String,
    /// From a policy in `enforcement: audit` (recorded, not enforced).
    pub audit: bool,
}

/// The outcome of a decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// What is enforced.
    pub decision: Decision,
    /// The rule that decided (`None`: no enforcing policy had a matching rule or a default, so
    /// the call is allowed).
    pub decided_by: Option<Match>,
    /// Bounds merged from every matching constrained rule.
    pub constraints: Constraints,
    /// What audit-only policies would have decided (their most severe match each).
    pub audited: Vec<Match>,
}

/// FNV-1a: the index maps are keyed by short server names, looked up once per policy per
/// decision; SipHash's DoS resistance buys nothing for keys operators wrote.
#[derive(Default, Clone, Copy)]
pub(crate) struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 { 0xcbf2_9ce4_8422_2325 } else { self.0 };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

type FastMap<V> = HashMap<String, V, std::hash::BuildHasherDefault<Fnv>>;

pub(crate) struct Indexed {
    pub(crate) policy: Arc<Policy>,
    /// In `PolicySet::global`.
    global: bool,
    /// Rules naming exact servers, by server.
    rules_by_server: FastMap<Bucket>,
    /// Rules for any server.
    rules_any: Bucket,
}

/// Some of a policy's rules, narrowed by what a call shows at once: its action (`mcp.action`,
/// read or write) and its tool's name. A rule lands where it could hold, so only those are
/// checked: a write-only rule is never looked at for a read, a rule on `delete_*` tools only for
/// tools (and servers, for `server.tool`) whose names begin with `delete_`.
#[derive(Default)]
struct Bucket {
    /// Rules no tool name narrows, by action (read, write).
    loose: [Vec<u32>; 2],
    /// Rules on tools whose names begin with a literal, by action, then by that literal.
    by_tool: [FastMap<Vec<u32>>; 2],
    /// The literals' lengths, each once.
    lens: Vec<usize>,
}

impl Bucket {
    fn add(&mut self, r: u32, rule: &crate::compile::Rule) {
        let (read, write) = rule
            .conds
            .iter()
            .find_map(|c| match c {
                Cond::Action { read, write } => Some((*read, *write)),
                _ => None,
            })
            .unwrap_or((true, true));
        let prefixes = rule.conds.iter().find_map(|c| match c {
            Cond::Attr(Attr::Tool, t) => tool_prefixes(t),
            _ => None,
        });
        for (a, on) in [(0, read), (1, write)] {
            if !on {
                continue;
            }
            match &prefixes {
                None => self.loose[a].push(r),
                Some(ps) => {
                    for p in ps {
                        let list = self.by_tool[a].entry(p.to_string()).or_default();
                        if !list.contains(&r) {
                            list.push(r);
                        }
                        if !self.lens.contains(&p.len()) {
                            self.lens.push(p.len());
                        }
                    }
                }
            }
        }
    }

    /// The rules narrowed to this call's tool, pushed to `out` (a rule can be found under the
    /// tool's name and under the server's, for `server.tool`: the caller removes repeats).
    fn tool_rules(&self, f: &Facts<'_>, out: &mut Vec<u32>) {
        let by = &self.by_tool[action_ix(f.action)];
        if by.is_empty() || f.kind != Kind::Tool {
            return;
        }
        for &l in &self.lens {
            for name in [f.name.get(..l), f.server.get(..l)].into_iter().flatten() {
                if let Some(rs) = by.get(name) {
                    out.extend_from_slice(rs);
                }
            }
        }
    }
}

fn action_ix(a: Action) -> usize {
    match a {
        Action::Read => 0,
        Action::Write => 1,
    }
}

/// The literals a tool test's names must begin with, if every alternative has one: exact names
/// and globs up to their first wildcard. A dot in one leaves the test unindexed (a name with a
/// dot can match `server.tool` in more ways than a prefix of either tells); without a dot, a
/// glob can match `server.tool` only through the server's name beginning with it.
fn tool_prefixes(t: &Test) -> Option<Vec<&str>> {
    fn one(p: &str) -> Option<Vec<&str>> {
        (!p.is_empty() && !p.contains('.')).then_some(vec![p])
    }
    match t {
        Test::Str(s) => one(s),
        Test::Glob(g) => one(g.literal_prefix()),
        Test::Any(list) => {
            let mut out = Vec::new();
            for t in list {
                out.extend(tool_prefixes(t)?);
            }
            Some(out)
        }
        _ => None,
    }
}

/// Every policy of the registry, compiled and indexed. Immutable; rebuilt when a policy changes.
#[derive(Default, Clone)]
pub struct PolicySet {
    pub(crate) policies: Vec<Arc<Indexed>>,
    by_name: HashMap<String, usize>,
    /// Policies whose `appliesTo.servers` names exact servers, by server.
    scoped: FastMap<Vec<usize>>,
    /// Policies for every server (or a server selector).
    global: Vec<usize>,
    /// Some rule looks at arguments (else callers need not parse them).
    needs_args: bool,
    /// Some rule looks at what the content guard found in arguments (`mcpArgs.*`).
    needs_args_scan: bool,
    /// Some rule decides REQUIRE_APPROVAL (else no call is ever held).
    holds: bool,
    /// Some rule decides on answers (`mcpResult.*`, `modify`): answers must be scanned.
    answers: bool,
    /// Some rule modifies a call's arguments (`modify` on `args.*` or `mcpArgs.*`).
    modifies_calls: bool,
    /// The subjects' plans, found as calls come (shared by clones: they hold the same policies).
    pub(crate) plans: Arc<crate::plan::Plans>,
}

impl std::fmt::Debug for PolicySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.policies.iter().map(|p| &p.policy.name)).finish()
    }
}

fn exact_servers(conds: &[Cond]) -> Option<Vec<&str>> {
    conds.iter().find_map(|c| match c {
        Cond::Attr(Attr::ServerName, t) => t.exact_names(),
        _ => None,
    })
}

impl PolicySet {
    /// Indexes compiled policies (any order; they are kept by name).
    pub fn new(policies: impl IntoIterator<Item = Arc<Policy>>) -> PolicySet {
        let mut list: Vec<Arc<Policy>> = policies.into_iter().collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        let mut set = PolicySet::default();
        for (i, p) in list.into_iter().enumerate() {
            let mut rules_by_server: FastMap<Bucket> = FastMap::default();
            let mut rules_any = Bucket::default();
            for (r, rule) in p.rules.iter().enumerate() {
                set.needs_args |=
                    rule.conds.iter().any(|c| matches!(c, Cond::Attr(Attr::Arg(_) | Attr::ArgsScan(_), _)));
                set.needs_args_scan |= rule.conds.iter().any(|c| matches!(c, Cond::Attr(Attr::ArgsScan(_), _)));
                set.holds |= rule.decision == Some(Decision::RequireApproval);
                set.answers |= rule.answer;
                set.modifies_calls |= !rule.answer && rule.modify.is_some();
                match exact_servers(&rule.conds) {
                    Some(mut names) => {
                        names.sort_unstable();
                        names.dedup();
                        for n in names {
                            rules_by_server.entry(n.to_string()).or_default().add(r as u32, rule);
                        }
                    }
                    None => rules_any.add(r as u32, rule),
                }
            }
            let global = match p
                .servers
                .as_ref()
                .filter(|s| s.labels.is_empty())
                .and_then(|s| s.names.as_ref()?.exact_names())
            {
                Some(names) => {
                    for n in names {
                        set.scoped.entry(n.to_string()).or_default().push(i);
                    }
                    false
                }
                None => {
                    set.global.push(i);
                    true
                }
            };
            set.by_name.insert(p.name.clone(), i);
            set.policies.push(Arc::new(Indexed { policy: p, global, rules_by_server, rules_any }));
        }
        set
    }

    /// The policies, by name.
    pub fn policies(&self) -> impl Iterator<Item = &Policy> {
        self.policies.iter().map(|p| &*p.policy)
    }

    /// Whether some rule can hold a call for an approval.
    pub fn may_hold(&self) -> bool {
        self.holds
    }

    /// Whether some rule decides on answers (the content guard scans every answer then).
    pub fn decides_answers(&self) -> bool {
        self.answers
    }

    /// The first rule with a modification (`modify: redact`) that matches: an answer rule for an
    /// answer (`f.result`), a rule on the arguments for a call (no `f.result`); in policy order
    /// (by name) then file order; audit-only policies are left out (their matches are only
    /// recorded).
    pub fn modification(&self, f: &Facts<'_>, attached: &[&str]) -> Option<(Match, String)> {
        let answer = f.result.is_some();
        if !answer && !self.modifies_calls {
            return None;
        }
        // In policy order (by name), audit-only policies left out.
        let mut candidates: Vec<usize> =
            self.in_scope(f, attached).filter(|&i| self.policies[i].policy.enforcement != Enforcement::Audit).collect();
        candidates.sort_unstable();
        let qualified = std::cell::OnceCell::new();
        for i in candidates {
            let p = &self.policies[i].policy;
            for rule in &p.rules {
                let Some(modify) = &rule.modify else { continue };
                if rule.answer == answer && rule.conds.iter().all(|c| c.holds(f, answer, &qualified)) {
                    let m = Match {
                        policy: p.name.clone(),
                        rule: rule.id.clone(),
                        decision: Decision::Allow,
                        reason: rule.reason.clone(),
                        audit: false,
                    };
                    return Some((m, modify.clone()));
                }
            }
        }
        None
    }

    /// Whether some rule looks at what the content guard found in a call's arguments.
    pub fn needs_args_scan(&self) -> bool {
        self.needs_args_scan
    }

    /// Whether some rule looks at a call's arguments.
    pub fn needs_args(&self) -> bool {
        self.needs_args
    }

    /// Whether there are no policies.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Whether a policy of that name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// Decides a request (or, with `facts.result`, an answer). `attached`: the policies the
    /// server's record lists (`spec.policies`), in scope for it whatever their `appliesTo.servers`.
    /// With `trace`, every matching rule is pushed there, in evaluation order (`explain`).
    ///
    /// A request is decided from its subject's plan (`plan.rs`): the rules whose conditions on
    /// who, which server, what and when (for the minute) already hold, found once per subject
    /// and kept; only their conditions on the arguments are checked per call. An answer, and a
    /// traced decision, are decided in full ([`PolicySet::decide_in_full`]); both ways decide alike.
    pub fn decide(&self, f: &Facts<'_>, attached: &[&str], trace: Option<&mut Vec<Match>>) -> Verdict {
        if self.policies.is_empty() {
            return Verdict::allowed();
        }
        match trace {
            None if f.result.is_none() => self.decide_planned(&self.plan_of(f, attached), f),
            trace => self.decide_in_full(f, attached, trace),
        }
    }

    /// [`PolicySet::decide`] without the subject's plan: every candidate rule's every condition
    /// checked. `explain` and answers decide this way; the benchmarks measure both.
    pub fn decide_in_full(&self, f: &Facts<'_>, attached: &[&str], mut trace: Option<&mut Vec<Match>>) -> Verdict {
        let answer = f.result.is_some();
        let mut tally = Tally::new(answer);
        // `server.tool`, built once if a tool pattern asks for it.
        let qualified = std::cell::OnceCell::new();
        let mut on_tool = Vec::new();
        for i in self.in_scope(f, attached) {
            let p = &self.policies[i].policy;
            // The policy's own verdict: its most severe matching rule, first in file order.
            let mut own: Option<(Decision, u32)> = None;
            let mut constraints = Constraints::default();
            let traced_from = trace.as_deref().map(Vec::len);
            for r in self.policies[i].candidates(f, &mut on_tool) {
                let rule = &p.rules[r as usize];
                let Some(d) = rule.decision else { continue };
                let optimistic = d != Decision::Deny;
                if rule.answer != answer || !rule.conds.iter().all(|c| c.holds(f, optimistic, &qualified)) {
                    continue;
                }
                if let Some(t) = trace.as_deref_mut() {
                    t.push(Match {
                        policy: p.name.clone(),
                        rule: rule.id.clone(),
                        decision: d,
                        reason: rule.reason.clone(),
                        audit: p.enforcement == Enforcement::Audit,
                    });
                }
                fold_rule(&mut own, &mut constraints, d, r, rule);
            }
            if let (Some(t), Some(from)) = (trace.as_deref_mut(), traced_from) {
                // In file order (rules naming this server were checked after the others).
                let pos = |m: &Match| p.rules.iter().position(|r| r.id == m.rule).unwrap_or(usize::MAX);
                t[from..].sort_by_key(pos);
            }
            self.settle(&mut tally, i, own, constraints, trace.as_deref_mut());
        }
        tally.finish()
    }

    /// The policies in scope for a call, in index order (ties between policies go to the first
    /// by name, the lowest index): fleet-wide ones, those naming this server, those the server
    /// attaches (each once), whose agent and server selectors hold.
    pub(crate) fn in_scope<'s>(&'s self, f: &'s Facts<'_>, attached: &'s [&str]) -> impl Iterator<Item = usize> + 's {
        let scoped = self.scoped.get(f.server).map(Vec::as_slice).unwrap_or_default();
        let attached_ix = attached.iter().filter_map(|a| self.by_name.get(*a).copied());
        let extra: Vec<usize> = attached_ix.filter(|i| !self.policies[*i].global && !scoped.contains(i)).collect();
        self.global.iter().chain(scoped).copied().chain(extra).filter(move |&i| {
            let p = &self.policies[i].policy;
            let attached_here = attached.contains(&p.name.as_str());
            p.agents.as_ref().is_none_or(|s| s.matches(f.agent, f.agent_labels))
                && (attached_here || p.servers.as_ref().is_none_or(|s| s.matches(f.server, f.server_labels)))
        })
    }

    /// Folds policy `i`'s verdict (its most severe matching rule `own`, else its default) into
    /// the call's: audit-only policies are recorded, the others decide by deny-overrides.
    pub(crate) fn settle(
        &self,
        tally: &mut Tally,
        i: usize,
        own: Option<(Decision, u32)>,
        constraints: Constraints,
        trace: Option<&mut Vec<Match>>,
    ) {
        let Tally { verdict, decided_ix, answer } = tally;
        let p = &self.policies[i].policy;
        let m = match own {
            Some((d, r)) => {
                let rule = &p.rules[r as usize];
                Match {
                    policy: p.name.clone(),
                    rule: rule.id.clone(),
                    decision: d,
                    reason: rule.reason.clone(),
                    audit: p.enforcement == Enforcement::Audit,
                }
            }
            None => match p.default {
                Some(d) if !*answer => {
                    let m = Match {
                        policy: p.name.clone(),
                        rule: "default".into(),
                        decision: d,
                        reason: format!("no rule of policy {} matched (defaultDecision {})", p.name, d.as_str()),
                        audit: p.enforcement == Enforcement::Audit,
                    };
                    if let Some(t) = trace {
                        t.push(m.clone());
                    }
                    m
                }
                _ => return,
            },
        };
        if m.audit {
            verdict.audited.push(m);
            return;
        }
        verdict.constraints.merge(&constraints);
        if verdict
            .decided_by
            .as_ref()
            .is_none_or(|by| m.decision > by.decision || (m.decision == by.decision && i < *decided_ix))
        {
            *decided_ix = i;
            verdict.decision = m.decision;
            verdict.decided_by = Some(m);
        }
    }
}

/// Folds a matching rule into its policy's verdict: the most severe, first in file order; the
/// bounds of every constrained one merged.
pub(crate) fn fold_rule(
    own: &mut Option<(Decision, u32)>,
    constraints: &mut Constraints,
    d: Decision,
    r: u32,
    rule: &crate::compile::Rule,
) {
    if matches!(d, Decision::AllowWithConstraints | Decision::RequireApproval) {
        constraints.merge(&rule.constraints);
    }
    if own.is_none_or(|(o, oi)| d > o || (d == o && r < oi)) {
        *own = Some((d, r));
    }
}

impl Verdict {
    fn allowed() -> Verdict {
        Verdict {
            decision: Decision::Allow,
            decided_by: None,
            constraints: Constraints::default(),
            audited: Vec::new(),
        }
    }
}

/// A decision being made, policy by policy: the verdict so far, and the index of the policy that
/// decided it (ties go to the lowest).
pub(crate) struct Tally {
    verdict: Verdict,
    decided_ix: usize,
    /// Deciding on an answer (a policy's default decides requests only).
    answer: bool,
}

impl Tally {
    pub(crate) fn new(answer: bool) -> Tally {
        Tally { verdict: Verdict::allowed(), decided_ix: usize::MAX, answer }
    }

    /// The verdict, with bounds only where the decision takes them.
    pub(crate) fn finish(self) -> Verdict {
        let mut v = self.verdict;
        if !matches!(v.decision, Decision::AllowWithConstraints | Decision::RequireApproval) {
            v.constraints = Constraints::default();
        }
        v
    }
}

impl Indexed {
    /// The rules that could hold for this call: those of its action, and those on its tool's
    /// name (found once each). `on_tool` is scratch space.
    pub(crate) fn candidates<'s>(&'s self, f: &Facts<'_>, on_tool: &'s mut Vec<u32>) -> impl Iterator<Item = u32> + 's {
        let by_server = self.rules_by_server.get(f.server);
        let a = action_ix(f.action);
        on_tool.clear();
        for b in std::iter::once(&self.rules_any).chain(by_server) {
            b.tool_rules(f, on_tool);
        }
        if on_tool.len() > 1 {
            on_tool.sort_unstable();
            on_tool.dedup();
        }
        let loose = by_server.map(|b| b.loose[a].as_slice()).unwrap_or_default();
        self.rules_any.loose[a].iter().chain(loose).chain(on_tool.iter()).copied()
    }
}

impl Selector {
    pub(crate) fn matches(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        if let Some(n) = &self.names {
            if !n.holds(Val::Str(name)) {
                return false;
            }
        }
        self.labels.iter().all(|(k, req)| match (req, labels.get(k)) {
            (LabelReq::In(vs), Some(v)) => vs.contains(v),
            (LabelReq::In(_), None) => false,
            (LabelReq::NotIn(vs), Some(v)) => !vs.contains(v),
            (LabelReq::NotIn(_), None) => true,
            (LabelReq::Exists, v) => v.is_some(),
            (LabelReq::DoesNotExist, v) => v.is_none(),
        })
    }
}

impl Cond {
    pub(crate) fn holds(&self, f: &Facts<'_>, optimistic: bool, qualified: &std::cell::OnceCell<String>) -> bool {
        match self {
            Cond::Attr(Attr::Arg(_) | Attr::ArgsScan(_), _) if f.listing => optimistic,
            Cond::Agents(s) => s.matches(f.agent, f.agent_labels),
            Cond::Time(w) => w.holds(f.now_ms),
            Cond::Action { read, write } => match f.action {
                Action::Read => *read,
                Action::Write => *write,
            },
            Cond::Attr(Attr::Tool, t) => {
                f.kind == Kind::Tool
                    && (t.holds(Val::Str(f.name))
                        || (needs_qualified(t)
                            && t.holds(Val::Str(qualified.get_or_init(|| format!("{}.{}", f.server, f.name))))))
            }
            Cond::Attr(a, t) => t.holds(value(a, f)),
        }
    }
}

/// Whether a tool test can hold for `server.tool` (it names a dot): only then is the qualified
/// name built.
fn needs_qualified(t: &Test) -> bool {
    match t {
        Test::Str(s) => s.contains('.'),
        Test::Glob(_) | Test::Regex(_) => true,
        Test::Any(l) | Test::None(l) | Test::All(l) => l.iter().any(needs_qualified),
        _ => false,
    }
}

fn value<'a>(a: &Attr, f: &Facts<'a>) -> Val<'a> {
    match a {
        Attr::AgentName => Val::Str(f.agent),
        Attr::AgentLabel(k) => f.agent_labels.get(k).map(|v| Val::Str(v)).unwrap_or(Val::Missing),
        Attr::ServerName => Val::Str(f.server),
        Attr::ServerLabel(k) => f.server_labels.get(k).map(|v| Val::Str(v)).unwrap_or(Val::Missing),
        Attr::TrustScore => f.trust_score.map(Val::Num).unwrap_or(Val::Missing),
        Attr::SchemaDrift => f.schema_drift.map(Val::Bool).unwrap_or(Val::Missing),
        Attr::Tool => unreachable_tool(f),
        Attr::Prompt => {
            if f.kind == Kind::Prompt {
                Val::Str(f.name)
            } else {
                Val::Missing
            }
        }
        Attr::Resource => {
            if f.kind == Kind::Resource {
                Val::Str(f.name)
            } else {
                Val::Missing
            }
        }
        Attr::Name => Val::Str(f.name),
        Attr::Kind => Val::Str(f.kind.as_str()),
        Attr::Method => Val::Str(f.method),
        Attr::Action => Val::Str(f.action.as_str()),
        Attr::RiskTags => Val::Words(f.risk_tags),
        Attr::Arg(p) => f.args.and_then(|a| p.get(a)).map(Val::Json).unwrap_or(Val::Missing),
        Attr::Result(p) => f.result.and_then(|r| p.get(r)).map(Val::Json).unwrap_or(Val::Missing),
        Attr::ArgsScan(p) => f.args_scan.and_then(|r| p.get(r)).map(Val::Json).unwrap_or(Val::Missing),
    }
}

/// Tools are matched in [`Cond::holds`] (plain and qualified names); here only for completeness.
fn unreachable_tool<'a>(f: &Facts<'a>) -> Val<'a> {
    if f.kind == Kind::Tool {
        Val::Str(f.name)
    } else {
        Val::Missing
    }
}
