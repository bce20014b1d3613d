//! From a Policy's `spec` (either shape) to the compiled [`Policy`]. Every problem is reported at
//! once, each with its field path and rule id.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use crate::matcher::Test;
use crate::{Constraints, Decision, PolicyError};

/// Whether a policy's decisions are enforced, or only recorded (a dry run before rollout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enforcement {
    /// Decisions are enforced.
    Enforce,
    /// Decisions are logged and counted, never enforced.
    Audit,
}

impl Enforcement {
    /// `enforce` or `audit`.
    pub fn as_str(self) -> &'static str {
        match self {
            Enforcement::Enforce => "enforce",
            Enforcement::Audit => "audit",
        }
    }
}

/// A compiled policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Its name.
    pub name: String,
    /// Enforced or audit only.
    pub enforcement: Enforcement,
    /// Which agents it applies to (`None`: every agent).
    pub(crate) agents: Option<Selector>,
    /// Which servers it applies to (`None`: every server); a server's `policies:` list also
    /// brings it into scope for that server.
    pub(crate) servers: Option<Selector>,
    /// Its rules, in file order.
    pub rules: Vec<Rule>,
    /// What it decides when none of its rules matched (`None`: it abstains).
    pub default: Option<Decision>,
    /// Content-guard patterns it adds (`spec.patterns`): used wherever the guard scans; its rules
    /// (and others) decide on their hits by rule id (`policy.NAME.ID`).
    pub patterns: Vec<Pattern>,
}

/// A content-guard pattern written in a policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Pattern {
    /// Its id within the policy.
    pub id: String,
    /// Its family (`override`, `role`, `hidden`, `coercion`, `exfiltration`, `cross-server`,
    /// `secret-access`, `concealment`, `secret`, `pii`).
    pub family: String,
    /// The regex (linear-time syntax).
    pub regex: String,
}

/// The families a pattern may name.
pub const FAMILIES: [&str; 10] = [
    "override",
    "role",
    "hidden",
    "coercion",
    "exfiltration",
    "cross-server",
    "secret-access",
    "concealment",
    "secret",
    "pii",
];

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Its id (`rule-N`, 1-based, where the manifest gives none).
    pub id: String,
    /// What it decides; `None` for an answer-direction `modify`.
    pub decision: Option<Decision>,
    /// `modify: redact`: what it does to an answer, or (a rule that looks at the call's
    /// arguments, `args.*` or `mcpArgs.*`) to the call's arguments before they leave.
    pub modify: Option<String>,
    /// The reason given to the caller (the rule id when the manifest gives none).
    pub reason: String,
    /// Bounds (ALLOW_WITH_CONSTRAINTS, REQUIRE_APPROVAL).
    pub constraints: Constraints,
    /// Decided on the answer (`mcpResult.*` conditions, or `modify` without conditions on the
    /// arguments), not on the request.
    pub answer: bool,
    pub(crate) conds: Vec<Cond>,
}

/// What a condition looks at.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Attr {
    AgentName,
    AgentLabel(String),
    ServerName,
    ServerLabel(String),
    TrustScore,
    SchemaDrift,
    /// The tool's name (tools only; matched against `tool` and `server.tool`).
    Tool,
    Prompt,
    Resource,
    /// The tool or prompt name or resource URI, whatever the kind.
    Name,
    Kind,
    Method,
    Action,
    RiskTags,
    /// An argument, by JSON pointer (compiled to its tokens).
    Arg(Pointer),
    /// A fact about the answer, by JSON pointer under `mcpResult`.
    Result(Pointer),
    /// What the content guard found in the call's arguments, by JSON pointer under `mcpArgs`
    /// (`mcpArgs.secretScan.hit`, `.rules`, `.classes`).
    ArgsScan(Pointer),
}

/// One condition of a rule; a rule matches when all hold.
#[derive(Debug, Clone)]
pub(crate) enum Cond {
    Attr(Attr, Test),
    Agents(Selector),
    Time(TimeWindow),
    /// `mcp.action` as exact names, compiled to which actions hold (no text compared per call).
    Action {
        read: bool,
        write: bool,
    },
}

/// A Kubernetes-style selector over names and labels.
#[derive(Debug, Clone, Default)]
pub(crate) struct Selector {
    pub names: Option<Test>,
    pub labels: Vec<(String, LabelReq)>,
}

#[derive(Debug, Clone)]
pub(crate) enum LabelReq {
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
}

/// Days of the week and a time of day range, at a fixed UTC offset.
#[derive(Debug, Clone)]
pub(crate) struct TimeWindow {
    /// Bit 0 = Monday.
    pub days: u8,
    /// Minutes after midnight, [from, to); `to < from` wraps past midnight.
    pub from_min: u32,
    pub to_min: u32,
    pub offset_min: i32,
}

const ATTRS: &str = "agent, agent.labels.KEY, mcpServer (mcp.server), mcpServer.labels.KEY, mcpServer.trustScore, mcpServer.schemaDrift, tool (mcp.tool), prompt, resource, mcp.name, mcp.kind, mcp.method, mcp.action, risk_tags, args.PATH (args./json/pointer), mcpArgs.PATH, mcpResult.PATH, time";

fn attr(key: &str) -> Option<Attr> {
    Some(match key {
        "agent" | "agent.name" => Attr::AgentName,
        "mcpServer" | "mcpServer.name" | "mcp.server" | "server" | "server.name" => Attr::ServerName,
        "mcpServer.trustScore" | "server.trustScore" => Attr::TrustScore,
        "mcpServer.schemaDrift" | "server.schemaDrift" => Attr::SchemaDrift,
        "tool" | "tool.name" | "mcp.tool" => Attr::Tool,
        "prompt" | "prompt.name" | "mcp.prompt" => Attr::Prompt,
        "resource" | "resource.uri" | "mcp.resource" => Attr::Resource,
        "mcp.name" => Attr::Name,
        "mcp.kind" => Attr::Kind,
        "mcp.method" => Attr::Method,
        "mcp.action" => Attr::Action,
        "risk_tags" | "riskTags" | "mcp.riskTags" | "mcp.risk_tags" => Attr::RiskTags,
        _ => {
            if let Some(k) = key.strip_prefix("agent.labels.") {
                Attr::AgentLabel(k.to_string())
            } else if let Some(k) = key.strip_prefix("mcpServer.labels.").or_else(|| key.strip_prefix("server.labels."))
            {
                Attr::ServerLabel(k.to_string())
            } else if let Some(p) = key.strip_prefix("args") {
                Attr::Arg(Pointer::new(&pointer(p)?))
            } else if let Some(p) = key.strip_prefix("mcpResult") {
                Attr::Result(Pointer::new(&pointer(p)?))
            } else if let Some(p) = key.strip_prefix("mcpArgs") {
                Attr::ArgsScan(Pointer::new(&pointer(p)?))
            } else {
                return None;
            }
        }
    })
}

/// A JSON pointer, split and unescaped once (looking it up allocates nothing).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Pointer(Vec<String>);

impl Pointer {
    fn new(p: &str) -> Pointer {
        Pointer(p.split('/').skip(1).map(|t| t.replace("~1", "/").replace("~0", "~")).collect())
    }

    /// The value it points at in `v`.
    pub(crate) fn get<'a>(&self, v: &'a Value) -> Option<&'a Value> {
        self.0.iter().try_fold(v, |v, t| match v {
            Value::Object(m) => m.get(t),
            Value::Array(a) => t.parse::<usize>().ok().and_then(|i| a.get(i)),
            _ => None,
        })
    }
}

/// `.a.b`, `/a/b` or `./a/b` to the JSON pointer `/a/b`.
fn pointer(p: &str) -> Option<String> {
    if p.is_empty() {
        return None;
    }
    let p = p.strip_prefix('.').unwrap_or(p);
    if p.starts_with('/') {
        Some(p.to_string())
    } else if p.is_empty() {
        None
    } else {
        Some(p.split('.').map(|s| format!("/{}", s.replace('~', "~0").replace('/', "~1"))).collect())
    }
}

/// Collects problems while compiling.
struct Errors(Vec<PolicyError>);

impl Errors {
    fn push(&mut self, field: &str, message: impl Into<String>) {
        self.0.push(PolicyError::at(field, message.into()));
    }
}

fn keys_known(m: &Map<String, Value>, field: &str, known: &[&str], errs: &mut Errors) {
    for k in m.keys() {
        if !known.contains(&k.as_str()) {
            errs.push(&format!("{field}.{k}"), format!("unknown field; expected one of {}", known.join(", ")));
        }
    }
}

fn get<'a>(m: &'a Map<String, Value>, names: &[&str]) -> Option<&'a Value> {
    names.iter().find_map(|n| m.get(*n))
}

impl Policy {
    /// Compiles a policy's `spec` (as JSON), in either shape. `name` is metadata.name.
    pub fn compile(name: &str, spec: &Value) -> Result<Policy, Vec<PolicyError>> {
        let mut errs = Errors(Vec::new());
        let Some(m) = spec.as_object() else {
            return Err(vec![PolicyError::at("spec", "must be a mapping".into())]);
        };
        keys_known(
            m,
            "spec",
            &["version", "description", "appliesTo", "enforcement", "defaultDecision", "rules", "patterns"],
            &mut errs,
        );
        if let Some(v) = m.get("version") {
            if v.as_str() != Some("v1") {
                errs.push("spec.version", format!("unknown version {v}: expected v1"));
            }
        }
        let enforcement = match m.get("enforcement").map(|v| v.as_str()) {
            None | Some(Some("enforce")) => Enforcement::Enforce,
            Some(Some("audit")) => Enforcement::Audit,
            Some(_) => {
                errs.push("spec.enforcement", "expected enforce or audit");
                Enforcement::Enforce
            }
        };
        let default = match m.get("defaultDecision") {
            None => None,
            Some(v) => match v.as_str().and_then(decision) {
                Some(d @ (Decision::Allow | Decision::Deny)) => Some(d),
                _ => {
                    errs.push("spec.defaultDecision", "expected ALLOW or DENY");
                    None
                }
            },
        };
        let (mut agents, mut servers) = (None, None);
        if let Some(a) = m.get("appliesTo") {
            match a.as_object() {
                None => errs.push("spec.appliesTo", "must be a mapping (agents, servers)"),
                Some(a) => {
                    keys_known(a, "spec.appliesTo", &["agents", "servers", "mcpServers"], &mut errs);
                    agents = a.get("agents").map(|v| selector("spec.appliesTo.agents", v, &mut errs));
                    servers =
                        get(a, &["servers", "mcpServers"]).map(|v| selector("spec.appliesTo.servers", v, &mut errs));
                }
            }
        }
        let mut rules = Vec::new();
        match m.get("rules").map(|r| r.as_array()) {
            None => errs.push("spec.rules", "required: a list of rules"),
            Some(None) => errs.push("spec.rules", "must be a list of rules"),
            Some(Some(list)) => {
                let mut ids = BTreeSet::new();
                for (i, r) in list.iter().enumerate() {
                    let field = format!("spec.rules[{i}]");
                    let before = errs.0.len();
                    if let Some(rule) = compile_rule(&field, i, r, &mut errs) {
                        if !ids.insert(rule.id.clone()) {
                            errs.push(&format!("{field}.id"), format!("duplicate rule id {:?}", rule.id));
                        }
                        for e in &mut errs.0[before..] {
                            e.rule.get_or_insert_with(|| rule.id.clone());
                        }
                        rules.push(rule);
                    } else {
                        let id = r.get("id").and_then(|v| v.as_str()).map(str::to_string);
                        for e in &mut errs.0[before..] {
                            if let Some(id) = &id {
                                *e = e.clone().in_rule(id);
                            }
                        }
                    }
                }
            }
        }
        for r in &mut rules {
            let key = format!("{name}/{}", r.id);
            for l in &mut r.constraints.rate_limits {
                l.rule = key.clone();
            }
        }
        let patterns = patterns(m.get("patterns"), &mut errs);
        if errs.0.is_empty() {
            Ok(Policy { name: name.to_string(), enforcement, agents, servers, rules, default, patterns })
        } else {
            Err(errs.0)
        }
    }
}

/// `spec.patterns`: `[{id, family, regex, description}]`, each regex compiled here (the
/// `regex` crate: linear time; a size limit).
fn patterns(v: Option<&Value>, errs: &mut Errors) -> Vec<Pattern> {
    let Some(v) = v else { return Vec::new() };
    let Some(list) = v.as_array() else {
        errs.push("spec.patterns", "must be a list of {id, family, regex}");
        return Vec::new();
    };
    let mut out: Vec<Pattern> = Vec::new();
    for (i, p) in list.iter().enumerate() {
        let at = format!("spec.patterns[{i}]");
        let Some(m) = p.as_object() else {
            errs.push(&at, "must be a mapping {id, family, regex}");
            continue;
        };
        keys_known(m, &at, &["id", "family", "regex", "description"], errs);
        let s = |k: &str| m.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
        let (id, family, regex) = (s("id"), s("family"), s("regex"));
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
            errs.push(&format!("{at}.id"), format!("{id:?}: letters, digits, '-', '_', '.'"));
        } else if out.iter().any(|o| o.id == id) {
            errs.push(&format!("{at}.id"), format!("{id:?} is used twice"));
        }
        if !FAMILIES.contains(&family.as_str()) {
            errs.push(&format!("{at}.family"), format!("{family:?}: one of {}", FAMILIES.join(", ")));
        }
        if let Err(e) = regex::RegexBuilder::new(&regex).size_limit(1 << 20).build() {
            errs.push(&format!("{at}.regex"), format!("does not compile: {e}"));
        }
        out.push(Pattern { id, family, regex });
    }
    out
}

fn decision(s: &str) -> Option<Decision> {
    Some(match s.to_ascii_uppercase().as_str() {
        "ALLOW" => Decision::Allow,
        "DENY" => Decision::Deny,
        "REQUIRE_APPROVAL" => Decision::RequireApproval,
        "ALLOW_WITH_CONSTRAINTS" => Decision::AllowWithConstraints,
        _ => return None,
    })
}

fn compile_rule(field: &str, i: usize, v: &Value, errs: &mut Errors) -> Option<Rule> {
    let Some(m) = v.as_object() else {
        errs.push(field, "a rule must be a mapping");
        return None;
    };
    let id = match m.get("id") {
        None => format!("rule-{}", i + 1),
        Some(Value::String(s))
            if !s.is_empty()
                && s.len() <= 128
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)) =>
        {
            s.clone()
        }
        Some(other) => {
            errs.push(&format!("{field}.id"), format!("invalid rule id {other}: letters, digits, '-', '_', '.', ':'"));
            format!("rule-{}", i + 1)
        }
    };
    let mut conds = Vec::new();
    let mut constraints = Constraints::default();
    let (decision, modify, reason) = if m.contains_key("decision") || m.contains_key("match") {
        // Seed 003's shape.
        keys_known(m, field, &["id", "description", "match", "decision", "constraints", "reason"], errs);
        if m.contains_key("action") || m.contains_key("when") {
            errs.push(field, "mixes both shapes: use match/decision (with id) or when/action, not both");
        }
        match m.get("match") {
            None => {}
            Some(Value::Object(mm)) => compile_match(&format!("{field}.match"), mm, &mut conds, errs),
            Some(_) => errs.push(&format!("{field}.match"), "must be a mapping"),
        }
        let d = match m.get("decision") {
            None => {
                errs.push(
                    &format!("{field}.decision"),
                    "required: ALLOW, DENY, REQUIRE_APPROVAL or ALLOW_WITH_CONSTRAINTS",
                );
                None
            }
            Some(v) => {
                match v.as_str().and_then(decision) {
                    Some(d) => Some(d),
                    None => {
                        errs.push(
                        &format!("{field}.decision"),
                        format!("unknown decision {v}: expected ALLOW, DENY, REQUIRE_APPROVAL or ALLOW_WITH_CONSTRAINTS"),
                    );
                        None
                    }
                }
            }
        };
        let reason = m.get("reason").and_then(|r| r.as_str()).unwrap_or(&id).to_string();
        if let Some(c) = m.get("constraints") {
            constraints = compile_constraints(&format!("{field}.constraints"), c, errs);
        }
        (d, None, reason)
    } else if m.contains_key("action") || m.contains_key("when") {
        // Seed 000's shape.
        keys_known(m, field, &["id", "description", "when", "action"], errs);
        match m.get("when") {
            None => {}
            Some(Value::Object(w)) => compile_attrs(&format!("{field}.when"), w, &mut conds, errs),
            Some(_) => errs.push(&format!("{field}.when"), "must be a mapping of conditions"),
        }
        let Some(Value::Object(a)) = m.get("action") else {
            errs.push(
                &format!("{field}.action"),
                "required: a mapping such as { deny: true, reason: ... } or { modify: redact }",
            );
            return None;
        };
        let at = format!("{field}.action");
        keys_known(a, &at, &["deny", "allow", "requireApproval", "modify", "reason", "constraints"], errs);
        let flag = |k: &str, errs: &mut Errors| match a.get(k) {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                errs.push(&format!("{at}.{k}"), "expected true or false");
                false
            }
        };
        let (deny, allow, approval) = (flag("deny", errs), flag("allow", errs), flag("requireApproval", errs));
        let modify = match a.get("modify") {
            None => None,
            Some(Value::String(s)) if s == "redact" => Some(s.clone()),
            Some(other) => {
                errs.push(&format!("{at}.modify"), format!("unknown modification {other}: expected redact"));
                None
            }
        };
        if let Some(c) = a.get("constraints") {
            constraints = compile_constraints(&format!("{at}.constraints"), c, errs);
        }
        let chosen = [deny, allow, approval, modify.is_some()].iter().filter(|b| **b).count();
        if chosen != 1 {
            errs.push(&at, "exactly one of deny: true, allow: true, requireApproval: true, modify: redact");
        }
        let d = if deny {
            Some(Decision::Deny)
        } else if approval {
            Some(Decision::RequireApproval)
        } else if allow && !constraints.is_empty() {
            Some(Decision::AllowWithConstraints)
        } else if allow {
            Some(Decision::Allow)
        } else {
            None
        };
        let reason = a.get("reason").and_then(|r| r.as_str()).unwrap_or(&id).to_string();
        (d, modify, reason)
    } else {
        errs.push(
            field,
            "a rule needs match/decision (seed 003's shape, with an id) or when/action (seed 000's shape)",
        );
        return None;
    };
    if let Some(d) = decision {
        match d {
            Decision::AllowWithConstraints
                if constraints.max_runtime_sec.is_none()
                    && constraints.max_retries.is_none()
                    && constraints.network_allowlist.is_none()
                    && constraints.rate_limits.is_empty() =>
            {
                errs.push(
                    &format!("{field}.constraints"),
                    "ALLOW_WITH_CONSTRAINTS needs at least one of max_runtime_sec, max_retries, network_allowlist, rate_limit",
                )
            }
            Decision::Allow | Decision::Deny if !constraints.is_empty() => errs.push(
                &format!("{field}.constraints"),
                format!("{} takes no constraints (use ALLOW_WITH_CONSTRAINTS or REQUIRE_APPROVAL)", d.as_str()),
            ),
            _ => {}
        }
    }
    let on_result = conds.iter().any(|c| matches!(c, Cond::Attr(Attr::Result(_), _)));
    let on_args = conds.iter().any(|c| matches!(c, Cond::Attr(Attr::Arg(_) | Attr::ArgsScan(_), _)));
    if modify.is_some() && on_result && on_args {
        errs.push(
            field,
            "a modify rule redacts either the answer (mcpResult.* conditions) or the call's arguments (args.* or mcpArgs.* conditions), not both: split it in two",
        );
        return None;
    }
    let answer = on_result || (modify.is_some() && !on_args);
    Some(Rule { id, decision, modify, reason, constraints, answer, conds: order(conds) })
}

/// Cheap conditions first (names before arguments, expressions and time).
fn order(mut conds: Vec<Cond>) -> Vec<Cond> {
    conds.sort_by_key(|c| match c {
        Cond::Action { .. } => 0,
        Cond::Attr(Attr::ServerName | Attr::Tool | Attr::Name | Attr::Kind | Attr::Method | Attr::Action, _) => 1,
        Cond::Attr(Attr::AgentName | Attr::Prompt | Attr::Resource, _) => 2,
        Cond::Attr(_, Test::Regex(_)) => 5,
        Cond::Attr(Attr::Arg(_) | Attr::Result(_) | Attr::ArgsScan(_), _) => 4,
        Cond::Attr(..) | Cond::Agents(_) => 3,
        Cond::Time(_) => 6,
    });
    conds
}

/// A mapping of attribute → matcher (`when`, `match.labels`).
fn compile_attrs(field: &str, m: &Map<String, Value>, conds: &mut Vec<Cond>, errs: &mut Errors) {
    for (k, v) in m {
        let at = format!("{field}.{k}");
        match k.as_str() {
            "time" => {
                if let Some(t) = time_window(&at, v, errs) {
                    conds.push(Cond::Time(t));
                }
            }
            "args" => match v.as_object() {
                Some(args) => {
                    for (p, x) in args {
                        let at = format!("{at}.{p}");
                        match (pointer(p), Test::compile(&at, x)) {
                            (Some(p), Ok(t)) => conds.push(Cond::Attr(Attr::Arg(Pointer::new(&p)), t)),
                            (None, _) => errs.push(&at, "an argument path: /a/b or a.b"),
                            (_, Err(e)) => errs.0.push(e),
                        }
                    }
                }
                None => errs.push(&at, "a mapping of argument path to condition"),
            },
            _ => match attr(k) {
                None => errs.push(&at, format!("unknown condition {k:?}; known: {ATTRS}")),
                Some(a) => match Test::compile(&at, v) {
                    Ok(t) => {
                        if let (Attr::Action, Some(names)) = (&a, t.exact_names()) {
                            if let Some(bad) = names.iter().find(|n| !["read", "write"].contains(n)) {
                                errs.push(&at, format!("mcp.action is read or write, not {bad:?}"));
                            }
                        }
                        if let (Attr::Kind, Some(names)) = (&a, t.exact_names()) {
                            if let Some(bad) = names.iter().find(|n| !["tool", "prompt", "resource"].contains(n)) {
                                errs.push(&at, format!("mcp.kind is tool, prompt or resource, not {bad:?}"));
                            }
                        }
                        match (&a, t.exact_names()) {
                            (Attr::Action, Some(names)) => conds
                                .push(Cond::Action { read: names.contains(&"read"), write: names.contains(&"write") }),
                            _ => conds.push(Cond::Attr(a, t)),
                        }
                    }
                    Err(e) => errs.0.push(e),
                },
            },
        }
    }
}

/// Seed 003's `match`.
fn compile_match(field: &str, m: &Map<String, Value>, conds: &mut Vec<Cond>, errs: &mut Errors) {
    keys_known(m, field, &["labels", "when", "mcp", "agents", "tools", "args", "time"], errs);
    for (k, v) in m {
        let at = format!("{field}.{k}");
        match k.as_str() {
            "labels" | "when" => match v.as_object() {
                Some(l) => compile_attrs(&at, l, conds, errs),
                None => errs.push(&at, "a mapping of condition to value"),
            },
            "mcp" => match v.as_object() {
                Some(mcp) => {
                    keys_known(mcp, &at, &["deny_servers_not_in", "servers_in", "servers_not_in"], errs);
                    for (mk, mv) in mcp {
                        let a2 = format!("{at}.{mk}");
                        let list = match mv.as_array() {
                            Some(l) if !l.is_empty() && l.iter().all(|x| x.is_string()) => l,
                            _ => {
                                errs.push(&a2, "a list of server names");
                                continue;
                            }
                        };
                        let Ok(Test::Any(names)) = Test::compile(&a2, &Value::Array(list.clone())) else {
                            continue;
                        };
                        conds.push(Cond::Attr(
                            Attr::ServerName,
                            if mk == "servers_in" { Test::Any(names) } else { Test::None(names) },
                        ));
                    }
                }
                None => errs.push(&at, "a mapping (deny_servers_not_in: [...])"),
            },
            "agents" => conds.push(Cond::Agents(selector(&at, v, errs))),
            "tools" => match Test::compile(&at, v) {
                Ok(t) => conds.push(Cond::Attr(Attr::Tool, t)),
                Err(e) => errs.0.push(e),
            },
            "args" | "time" => {
                let mut one = Map::new();
                one.insert(k.clone(), v.clone());
                compile_attrs(field, &one, conds, errs);
            }
            _ => {}
        }
    }
}

fn compile_constraints(field: &str, v: &Value, errs: &mut Errors) -> Constraints {
    let mut c = Constraints::default();
    let Some(m) = v.as_object() else {
        errs.push(field, "a mapping (max_runtime_sec, max_retries, network_allowlist, approval_timeout_sec)");
        return c;
    };
    keys_known(
        m,
        field,
        &[
            "max_runtime_sec",
            "maxRuntimeSec",
            "max_retries",
            "maxRetries",
            "network_allowlist",
            "networkAllowlist",
            "approval_timeout_sec",
            "approvalTimeoutSec",
            "rate_limit",
            "rateLimit",
        ],
        errs,
    );
    let uint = |names: &[&str], min: u64, errs: &mut Errors| -> Option<u64> {
        let (k, v) = names.iter().find_map(|n| m.get(*n).map(|v| (*n, v)))?;
        match v.as_u64() {
            Some(n) if n >= min => Some(n),
            _ => {
                errs.push(&format!("{field}.{k}"), format!("expected a whole number >= {min}, got {v}"));
                None
            }
        }
    };
    c.max_runtime_sec = uint(&["max_runtime_sec", "maxRuntimeSec"], 1, errs);
    c.max_retries = uint(&["max_retries", "maxRetries"], 0, errs).map(|n| n.min(u32::MAX as u64) as u32);
    c.approval_timeout_sec = uint(&["approval_timeout_sec", "approvalTimeoutSec"], 1, errs);
    if let Some((k, v)) = ["rate_limit", "rateLimit"].iter().find_map(|n| m.get(*n).map(|v| (*n, v))) {
        let items: Vec<&Value> = match v {
            Value::Array(l) => l.iter().collect(),
            other => vec![other],
        };
        for (i, item) in items.iter().enumerate() {
            let at = if matches!(v, Value::Array(_)) { format!("{field}.{k}[{i}]") } else { format!("{field}.{k}") };
            let Some(o) = item.as_object() else {
                errs.push(&at, "a mapping: {per_minute: N, per: agent | tool | server}");
                continue;
            };
            keys_known(o, &at, &["per_minute", "perMinute", "per"], errs);
            let n = o.get("per_minute").or_else(|| o.get("perMinute")).and_then(Value::as_u64);
            let per = match o.get("per").and_then(Value::as_str).unwrap_or("agent") {
                "agent" => Some(crate::RatePer::Agent),
                "tool" => Some(crate::RatePer::Tool),
                "server" => Some(crate::RatePer::Server),
                other => {
                    errs.push(&format!("{at}.per"), format!("unknown {other:?}: agent, tool or server"));
                    None
                }
            };
            match (n, per) {
                (Some(n), Some(per)) if (1..=1_000_000).contains(&n) => {
                    c.rate_limits.push(crate::RateLimit { per_minute: n as u32, per, rule: String::new() })
                }
                (_, Some(_)) => errs.push(&format!("{at}.per_minute"), "required: calls per minute, 1..1000000"),
                _ => {}
            }
        }
    }
    if let Some((k, v)) = ["network_allowlist", "networkAllowlist"].iter().find_map(|n| m.get(*n).map(|v| (*n, v))) {
        match v.as_array() {
            Some(l) if l.iter().all(|h| h.as_str().is_some_and(valid_host)) => {
                c.network_allowlist = Some(l.iter().filter_map(|h| h.as_str()).map(str::to_ascii_lowercase).collect())
            }
            _ => errs.push(&format!("{field}.{k}"), "a list of host names (api.github.com, *.example.com)"),
        }
    }
    c
}

fn valid_host(h: &str) -> bool {
    let h = h.strip_prefix("*.").unwrap_or(h);
    !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
}

/// `{selector: {matchLabels, matchExpressions}, names: [...]}`, or the selector itself.
fn selector(field: &str, v: &Value, errs: &mut Errors) -> Selector {
    let mut s = Selector::default();
    let Some(m) = v.as_object() else {
        match Test::compile(field, v) {
            Ok(t) => s.names = Some(t),
            Err(e) => errs.0.push(e),
        }
        return s;
    };
    keys_known(m, field, &["selector", "names", "matchLabels", "matchExpressions"], errs);
    if let Some(n) = m.get("names") {
        match Test::compile(&format!("{field}.names"), n) {
            Ok(t) => s.names = Some(t),
            Err(e) => errs.0.push(e),
        }
    }
    let (sel, at) = match m.get("selector") {
        Some(Value::Object(sel)) => (sel, format!("{field}.selector")),
        Some(_) => {
            errs.push(&format!("{field}.selector"), "must be a mapping (matchLabels, matchExpressions)");
            return s;
        }
        None => (m, field.to_string()),
    };
    if m.contains_key("selector") {
        keys_known(sel, &at, &["matchLabels", "matchExpressions"], errs);
    }
    if let Some(ml) = sel.get("matchLabels") {
        match ml.as_object() {
            Some(ml) => {
                for (k, v) in ml {
                    match v {
                        Value::String(x) => s.labels.push((k.clone(), LabelReq::In(vec![x.clone()]))),
                        Value::Bool(_) | Value::Number(_) => {
                            s.labels.push((k.clone(), LabelReq::In(vec![v.to_string()])))
                        }
                        _ => errs.push(&format!("{at}.matchLabels.{k}"), "a label value"),
                    }
                }
            }
            None => errs.push(&format!("{at}.matchLabels"), "a mapping of label to value"),
        }
    }
    if let Some(me) = sel.get("matchExpressions") {
        let Some(list) = me.as_array() else {
            errs.push(&format!("{at}.matchExpressions"), "a list of {key, operator, values}");
            return s;
        };
        for (i, e) in list.iter().enumerate() {
            let ef = format!("{at}.matchExpressions[{i}]");
            let key = e.get("key").and_then(|k| k.as_str());
            let values: Vec<String> = e
                .get("values")
                .and_then(|v| v.as_array())
                .map(|l| l.iter().map(|x| x.as_str().map(str::to_string).unwrap_or_else(|| x.to_string())).collect())
                .unwrap_or_default();
            let req = match e.get("operator").and_then(|o| o.as_str()) {
                Some("In") if !values.is_empty() => LabelReq::In(values),
                Some("NotIn") if !values.is_empty() => LabelReq::NotIn(values),
                Some("Exists") => LabelReq::Exists,
                Some("DoesNotExist") => LabelReq::DoesNotExist,
                Some("In" | "NotIn") => {
                    errs.push(&format!("{ef}.values"), "In and NotIn need a non-empty list of values");
                    continue;
                }
                other => {
                    errs.push(
                        &format!("{ef}.operator"),
                        format!("unknown operator {other:?}: expected In, NotIn, Exists or DoesNotExist"),
                    );
                    continue;
                }
            };
            match key {
                Some(k) => s.labels.push((k.to_string(), req)),
                None => errs.push(&format!("{ef}.key"), "required: the label's key"),
            }
        }
    }
    s
}

fn time_window(field: &str, v: &Value, errs: &mut Errors) -> Option<TimeWindow> {
    let Some(m) = v.as_object() else {
        errs.push(field, "a mapping (days, hours, utcOffset)");
        return None;
    };
    keys_known(m, field, &["days", "hours", "utcOffset"], errs);
    let mut w = TimeWindow { days: 0x7f, from_min: 0, to_min: 24 * 60, offset_min: 0 };
    const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    if let Some(d) = m.get("days") {
        w.days = 0;
        for x in d.as_array().into_iter().flatten() {
            match x.as_str().map(|s| s.to_ascii_lowercase()).and_then(|s| DAYS.iter().position(|d| s.starts_with(d))) {
                Some(i) => w.days |= 1 << i,
                None => errs.push(&format!("{field}.days"), format!("unknown day {x}: mon, tue, ... sun")),
            }
        }
        if w.days == 0 {
            errs.push(&format!("{field}.days"), "a list of days (mon, tue, ... sun)");
        }
    }
    let hm = |s: &str| -> Option<u32> {
        let (h, m) = s.trim().split_once(':')?;
        let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
        (h <= 24 && m < 60 && h * 60 + m <= 24 * 60).then_some(h * 60 + m)
    };
    if let Some(h) = m.get("hours") {
        match h.as_str().and_then(|s| s.split_once('-')).and_then(|(a, b)| Some((hm(a)?, hm(b)?))) {
            Some((a, b)) if a != b => (w.from_min, w.to_min) = (a, b),
            _ => errs.push(&format!("{field}.hours"), format!("expected HH:MM-HH:MM, e.g. 09:00-17:00, got {h}")),
        }
    }
    if let Some(o) = m.get("utcOffset") {
        let parsed = o.as_str().and_then(|s| {
            let (sign, rest) = match s.as_bytes().first()? {
                b'+' => (1, &s[1..]),
                b'-' => (-1, &s[1..]),
                _ => return None,
            };
            let mins = hm(rest)? as i32;
            (mins <= 14 * 60).then_some(sign * mins)
        });
        match parsed {
            Some(off) => w.offset_min = off,
            None => errs.push(&format!("{field}.utcOffset"), format!("expected +HH:MM or -HH:MM, got {o}")),
        }
    }
    Some(w)
}

impl TimeWindow {
    pub(crate) fn holds(&self, now_ms: u64) -> bool {
        let local_min = (now_ms / 60_000) as i64 + self.offset_min as i64;
        let day = local_min.div_euclid(24 * 60);
        let minute = local_min.rem_euclid(24 * 60) as u32;
        // 1970-01-01 was a Thursday (index 3 with Monday = 0).
        let weekday = (day + 3).rem_euclid(7) as u32;
        if self.from_min < self.to_min {
            self.days & (1 << weekday) != 0 && minute >= self.from_min && minute < self.to_min
        } else {
            // Past midnight: the part after midnight belongs to the window that began the day before.
            let yesterday = (weekday + 6) % 7;
            (minute >= self.from_min && self.days & (1 << weekday) != 0)
                || (minute < self.to_min && self.days & (1 << yesterday) != 0)
        }
    }
}
