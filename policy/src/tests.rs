//! The seeds' policies decide as the seeds describe; errors are located; both shapes decide alike.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::{json, Value};

use crate::*;

fn seed_000() -> Value {
    json!({
        "appliesTo": {"agents": {"selector": {"matchLabels": {"env": "prod"}}}},
        "rules": [
            {"when": {"mcpServer.trustScore": "<0.75"}, "action": {"deny": true, "reason": "trust-score-too-low"}},
            {"when": {"mcpServer.schemaDrift": true}, "action": {"deny": true, "reason": "schema-drift-detected"}},
            {"when": {"mcpResult.injectionScan.hit": true}, "action": {"modify": "redact", "reason": "prompt-injection-stripped"}}
        ]
    })
}

fn seed_003() -> Value {
    json!({
        "version": "v1",
        "rules": [
            {"id": "allow-read-approved-servers",
             "match": {"labels": {"mcp.action": "read", "mcp.server": ["github", "jira", "snowflake", "slack"]}},
             "decision": "ALLOW"},
            {"id": "require-approval-production-write",
             "match": {"labels": {"mcp.action": "write", "risk_tags": ["prod"]}},
             "decision": "REQUIRE_APPROVAL", "constraints": {"max_runtime_sec": 60, "max_retries": 1}},
            {"id": "constrain-medium-risk",
             "match": {"labels": {"mcp.action": "write", "risk_tags": ["non_prod"]}},
             "decision": "ALLOW_WITH_CONSTRAINTS",
             "constraints": {"max_runtime_sec": 30, "network_allowlist": ["api.github.com", "api.slack.com"]}},
            {"id": "deny-unregistered-server",
             "match": {"labels": {"mcp.server": "*"}, "mcp": {"deny_servers_not_in": ["github", "jira", "snowflake", "slack"]}},
             "decision": "DENY"}
        ]
    })
}

fn set(ps: &[(&str, Value)]) -> PolicySet {
    PolicySet::new(ps.iter().map(|(n, v)| Arc::new(Policy::compile(n, v).unwrap())))
}

struct F {
    agent_labels: BTreeMap<String, String>,
    server_labels: BTreeMap<String, String>,
    tags: Vec<String>,
}

impl F {
    fn new(env: &str, tags: &[&str]) -> F {
        F {
            agent_labels: [("env".to_string(), env.to_string())].into(),
            server_labels: BTreeMap::new(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
        }
    }
    fn facts<'a>(&'a self, server: &'a str, tool: &'a str, action: Action) -> Facts<'a> {
        Facts {
            agent: "a",
            agent_labels: &self.agent_labels,
            server,
            server_labels: &self.server_labels,
            trust_score: None,
            schema_drift: None,
            kind: Kind::Tool,
            method: "tools/call",
            name: tool,
            action,
            risk_tags: &self.tags,
            args: None,
            listing: false,
            now_ms: 0,
            result: None,
            args_scan: None,
        }
    }
}

#[test]
fn seed_000_strips_injections_from_answers_to_prod_agents() {
    let s = set(&[("mcp-tool-safety", seed_000())]);
    assert!(s.decides_answers());
    let prod = F::new("prod", &[]);
    let mut f = prod.facts("github", "search", Action::Read);
    f.trust_score = Some(0.9);
    assert!(s.modification(&f, &[]).is_none(), "a request is not an answer");
    let hit = json!({"injectionScan": {"hit": true, "families": ["override"]}});
    f.result = Some(&hit);
    let (m, modify) = s.modification(&f, &[]).expect("the redact rule");
    assert_eq!(
        (m.rule.as_str(), m.reason.as_str(), modify.as_str()),
        ("rule-3", "prompt-injection-stripped", "redact")
    );
    let clean = json!({"injectionScan": {"hit": false}});
    f.result = Some(&clean);
    assert!(s.modification(&f, &[]).is_none());
    let dev = F::new("dev", &[]);
    let mut f = dev.facts("github", "search", Action::Read);
    f.result = Some(&hit);
    assert!(s.modification(&f, &[]).is_none(), "appliesTo: prod agents only");
}

#[test]
fn a_redact_rule_on_the_arguments_modifies_calls_not_answers() {
    let rules = json!({"rules": [
        {"when": {"mcpArgs.secretScan.hit": true}, "action": {"modify": "redact", "reason": "secret-in-arguments"}}
    ]});
    let s = set(&[("no-secrets-out", rules)]);
    assert!(!s.decides_answers(), "nothing to scan in answers");
    let any = F::new("prod", &[]);
    let mut f = any.facts("github", "create_issue", Action::Write);
    let scan = json!({"secretScan": {"hit": true, "rules": ["secret.github-token"]}});
    f.args_scan = Some(&scan);
    let (m, modify) = s.modification(&f, &[]).expect("the call is redacted");
    assert_eq!((m.rule.as_str(), modify.as_str()), ("rule-1", "redact"));
    assert_eq!(s.decide(&f, &[], None).decision, Decision::Allow, "a modification decides nothing");
    let clean = json!({"secretScan": {"hit": false}});
    f.args_scan = Some(&clean);
    assert!(s.modification(&f, &[]).is_none());
    let answer = json!({"injectionScan": {"hit": true}});
    f.args_scan = Some(&scan);
    f.result = Some(&answer);
    assert!(s.modification(&f, &[]).is_none(), "an answer is not a call");
    // One rule cannot redact both directions.
    let both = json!({"rules": [{"when": {"mcpArgs.secretScan.hit": true, "mcpResult.injectionScan.hit": true}, "action": {"modify": "redact"}}]});
    let errs = Policy::compile("both", &both).unwrap_err();
    assert!(errs.iter().any(|e| e.field.contains("rules[0]") && e.message.contains("not both")), "{errs:?}");
}

#[test]
fn seed_000_denies_prod_agents_on_low_trust_or_drift_only() {
    let s = set(&[("mcp-tool-safety", seed_000())]);
    let prod = F::new("prod", &[]);
    let mut f = prod.facts("github", "create_issue", Action::Write);
    assert_eq!(s.decide(&f, &[], None).decision, Decision::Allow, "unknown trust score: no rule matches");
    f.trust_score = Some(0.5);
    let v = s.decide(&f, &[], None);
    assert_eq!(v.decision, Decision::Deny);
    let by = v.decided_by.unwrap();
    assert_eq!(
        (by.policy.as_str(), by.rule.as_str(), by.reason.as_str()),
        ("mcp-tool-safety", "rule-1", "trust-score-too-low")
    );
    f.trust_score = Some(0.9);
    f.schema_drift = Some(true);
    assert_eq!(s.decide(&f, &[], None).decided_by.unwrap().reason, "schema-drift-detected");
    let dev = F::new("dev", &[]);
    let mut f = dev.facts("github", "create_issue", Action::Write);
    f.trust_score = Some(0.1);
    assert_eq!(s.decide(&f, &[], None).decision, Decision::Allow, "appliesTo: prod agents only");
    let p = Policy::compile("x", &seed_000()).unwrap();
    assert!(
        p.rules[2].answer && p.rules[2].modify.as_deref() == Some("redact"),
        "the redact rule is decided on answers"
    );
}

#[test]
fn seed_003_decides_as_its_table_says() {
    let s = set(&[("seed-003", seed_003())]);
    let none = F::new("prod", &[]);
    let prod = F::new("prod", &["prod"]);
    let non_prod = F::new("prod", &["non_prod"]);
    let d = |f: &Facts| s.decide(f, &[], None);
    let v = d(&none.facts("github", "search_issues", Action::Read));
    assert_eq!((v.decision, v.decided_by.unwrap().rule.as_str()), (Decision::Allow, "allow-read-approved-servers"));
    let v = d(&prod.facts("github", "create_issue", Action::Write));
    assert_eq!(v.decision, Decision::RequireApproval);
    assert_eq!(v.constraints.max_runtime_sec, Some(60));
    assert_eq!(v.constraints.max_retries, Some(1));
    let v = d(&non_prod.facts("slack", "post", Action::Write));
    assert_eq!(v.decision, Decision::AllowWithConstraints);
    assert_eq!(v.constraints.max_runtime_sec, Some(30));
    assert!(v.constraints.host_allowed("api.github.com") && !v.constraints.host_allowed("evil.example"));
    let v = d(&none.facts("notion", "search", Action::Read));
    let by = v.decided_by.unwrap();
    assert_eq!(
        (v.decision, by.rule.as_str(), by.reason.as_str()),
        (Decision::Deny, "deny-unregistered-server", "deny-unregistered-server")
    );
    // Deny overrides: a prod write to an unlisted server is denied, not held.
    assert_eq!(d(&prod.facts("notion", "write", Action::Write)).decision, Decision::Deny);
}

#[test]
fn explain_traces_every_match_and_audit_policies_do_not_enforce() {
    let mut audit = seed_003();
    audit["enforcement"] = json!("audit");
    let s = set(&[("enforced", seed_003()), ("dry-run", audit)]);
    let f = F::new("prod", &["prod"]);
    let mut trace = Vec::new();
    let v = s.decide(&f.facts("notion", "x", Action::Write), &[], Some(&mut trace));
    assert_eq!(v.decision, Decision::Deny);
    assert_eq!(v.decided_by.as_ref().unwrap().policy, "enforced");
    assert_eq!(v.audited.len(), 1);
    assert_eq!((v.audited[0].policy.as_str(), v.audited[0].decision), ("dry-run", Decision::Deny));
    let seen: Vec<(String, String)> = trace.iter().map(|m| (m.policy.clone(), m.rule.clone())).collect();
    assert_eq!(
        seen,
        [
            ("dry-run".into(), "require-approval-production-write".into()),
            ("dry-run".into(), "deny-unregistered-server".into()),
            ("enforced".into(), "require-approval-production-write".into()),
            ("enforced".into(), "deny-unregistered-server".into()),
        ]
    );
}

#[test]
fn scope_attachment_default_and_conditions() {
    let scoped = json!({
        "appliesTo": {"servers": {"names": ["jira"]}},
        "defaultDecision": "DENY",
        "rules": [{"id": "reads", "match": {"labels": {"mcp.action": "read"}, "tools": ["search_*"]}, "decision": "ALLOW"}]
    });
    let args = json!({"rules": [
        {"id": "no-main", "when": {"args./branch": "main", "tool": "git.push"}, "action": {"deny": true, "reason": "protected branch"}},
        {"id": "office-hours", "match": {"time": {"days": ["sat", "sun"]}}, "decision": "DENY"}
    ]});
    let s = set(&[("jira-only", scoped), ("args", args)]);
    let f = F::new("prod", &[]);
    let mut x = f.facts("jira", "search_issues", Action::Read);
    x.now_ms = 1_764_547_200_000; // 2025-12-01, a Monday
    assert_eq!(s.decide(&x, &[], None).decision, Decision::Allow);
    x.name = "delete_issue";
    let v = s.decide(&x, &[], None);
    assert_eq!((v.decision, v.decided_by.unwrap().rule.as_str()), (Decision::Deny, "default"));
    let mut g = f.facts("git", "push", Action::Write);
    g.now_ms = x.now_ms;
    assert_eq!(s.decide(&g, &[], None).decision, Decision::Allow, "jira-only does not apply to git; no args");
    assert_eq!(s.decide(&g, &["jira-only"], None).decision, Decision::Deny, "attached by the server's policies list");
    let a = json!({"branch": "main"});
    g.args = Some(&a);
    assert_eq!(
        s.decide(&g, &[], None).decided_by.unwrap().reason,
        "protected branch",
        "server.tool glob and an argument"
    );
    g.args = None;
    g.now_ms += 5 * 86_400_000; // Saturday
    assert_eq!(s.decide(&g, &[], None).decided_by.unwrap().rule, "office-hours");
}

#[test]
fn errors_name_field_and_rule() {
    let bad = json!({"version": "v1", "rules": [
        {"id": "ok", "match": {"labels": {"mcp.action": "read"}}, "decision": "ALLOW"},
        {"id": "typo", "match": {"labels": {"mcp.acton": "read"}}, "decision": "ALLOWED"},
        {"id": "no-bounds", "decision": "ALLOW_WITH_CONSTRAINTS"},
        {"when": {"mcp.action": "delete"}, "action": {"deny": true, "allow": true}}
    ]});
    let errs = Policy::compile("p", &bad).unwrap_err();
    let shown: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    assert!(
        shown.iter().any(|e| e.starts_with("spec.rules[1].match.labels.mcp.acton: rule \"typo\": unknown condition")),
        "{shown:?}"
    );
    assert!(
        shown.iter().any(|e| e.starts_with("spec.rules[1].decision: rule \"typo\": unknown decision \"ALLOWED\"")),
        "{shown:?}"
    );
    assert!(
        shown
            .iter()
            .any(|e| e.starts_with("spec.rules[2].constraints: rule \"no-bounds\": ALLOW_WITH_CONSTRAINTS needs")),
        "{shown:?}"
    );
    assert!(
        shown
            .iter()
            .any(|e| e.starts_with("spec.rules[3].when.mcp.action: rule \"rule-4\": mcp.action is read or write")),
        "{shown:?}"
    );
    assert!(shown.iter().any(|e| e.starts_with("spec.rules[3].action: rule \"rule-4\": exactly one of")), "{shown:?}");
    assert_eq!(shown.len(), 5, "{shown:?}");
    let dup = json!({"rules": [{"id": "a", "decision": "DENY"}, {"id": "a", "decision": "DENY"}]});
    assert!(Policy::compile("p", &dup).unwrap_err()[0].message.contains("duplicate rule id"));
    assert!(Policy::compile("p", &json!({"rulez": []})).is_err());
}

#[test]
fn a_list_shows_what_some_call_may_use() {
    let p = json!({"defaultDecision": "DENY", "rules": [
        {"id": "only-acme", "match": {"args": {"/repo": "acme/*"}}, "decision": "ALLOW"},
        {"id": "never-main", "match": {"args": {"/branch": "main"}}, "decision": "DENY"}
    ]});
    let s = set(&[("p", p)]);
    let f = F::new("prod", &[]);
    let mut x = f.facts("git", "push", Action::Write);
    x.listing = true;
    assert_eq!(s.decide(&x, &[], None).decision, Decision::Allow, "listed: a call with acme args is allowed");
    x.listing = false;
    let args = json!({"repo": "acme/x", "branch": "main"});
    x.args = Some(&args);
    assert_eq!(s.decide(&x, &[], None).decision, Decision::Deny);
    let args = json!({"repo": "acme/x", "branch": "dev"});
    x.args = Some(&args);
    assert_eq!(s.decide(&x, &[], None).decision, Decision::Allow);
}

/// A rule in both shapes, from the same parts.
fn both_shapes(server: &Value, action: &Value, tool: &Value, decision: &str) -> (Value, Value) {
    let mut labels = serde_json::Map::new();
    if !server.is_null() {
        labels.insert("mcp.server".into(), server.clone());
    }
    if !action.is_null() {
        labels.insert("mcp.action".into(), action.clone());
    }
    if !tool.is_null() {
        labels.insert("tool".into(), tool.clone());
    }
    let a = json!({"version": "v1", "rules": [{"id": "r", "match": {"labels": labels.clone()}, "decision": decision}]});
    let act = match decision {
        "DENY" => json!({"deny": true, "reason": "r"}),
        "REQUIRE_APPROVAL" => json!({"requireApproval": true, "reason": "r"}),
        _ => json!({"allow": true, "reason": "r"}),
    };
    let b = json!({"rules": [{"id": "r", "when": labels, "action": act}]});
    (a, b)
}

proptest! {
    #[test]
    fn both_shapes_of_one_rule_decide_alike(
        server in prop::sample::select(vec![json!(null), json!("github"), json!(["github", "jira"]), json!("j*"), json!("*")]),
        action in prop::sample::select(vec![json!(null), json!("read"), json!("write"), json!(["read", "write"])]),
        tool in prop::sample::select(vec![json!(null), json!("create_*"), json!("github.search_issues"), json!(["a", "b"])]),
        decision in prop::sample::select(vec!["ALLOW", "DENY", "REQUIRE_APPROVAL"]),
        req_server in prop::sample::select(vec!["github", "jira", "slack"]),
        req_tool in prop::sample::select(vec!["create_issue", "search_issues", "a"]),
        read in any::<bool>(),
    ) {
        let (a, b) = both_shapes(&server, &action, &tool, decision);
        let (sa, sb) = (set(&[("p", a)]), set(&[("p", b)]));
        let f = F::new("prod", &[]);
        let facts = f.facts(req_server, req_tool, if read { Action::Read } else { Action::Write });
        let (va, vb) = (sa.decide(&facts, &[], None), sb.decide(&facts, &[], None));
        prop_assert_eq!(va.decision, vb.decision);
        prop_assert_eq!(va.decided_by.map(|m| m.rule), vb.decided_by.map(|m| m.rule));
    }

    #[test]
    fn deny_overrides_whatever_the_order(order in Just(()).prop_perturb(|_, mut rng| {
        let mut names = vec!["a", "b", "c"];
        for i in (1..names.len()).rev() { names.swap(i, (rng.next_u32() as usize) % (i + 1)); }
        names
    })) {
        let kinds = ["ALLOW", "DENY", "REQUIRE_APPROVAL"];
        let ps: Vec<(&str, Value)> = order.iter().zip(kinds).map(|(n, d)| (*n, json!({"rules": [{"id": "r", "decision": d}]}))).collect();
        let f = F::new("prod", &[]);
        prop_assert_eq!(set(&ps).decide(&f.facts("s", "t", Action::Read), &[], None).decision, Decision::Deny);
    }
}

fn arb_rule() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec!["ALLOW", "DENY", "REQUIRE_APPROVAL"]),
        prop::option::of(prop::sample::select(vec!["read", "write"])),
        prop::option::of(prop::sample::select(vec!["s1", "s2", "s*"])),
        prop::option::of(prop::sample::select(vec!["main", "dev", "*"])),
        prop::option::of(prop::sample::select(vec!["push", "p*", "s1.pull"])),
    )
        .prop_map(|(d, action, server, branch, tool)| {
            let mut m = json!({"labels": rule_labels(action, server, tool.map(|t| json!(t)))});
            if let Some(b) = branch {
                m["args"] = json!({"/branch": b});
            }
            json!({"match": m, "decision": d})
        })
}

proptest! {
    /// The list filter and the call decision never disagree: whatever a call may use (allowed or
    /// held) is listed, and whatever is not listed every call is denied.
    #[test]
    fn list_and_call_never_disagree(
        rules in prop::collection::vec(arb_rule(), 0..6),
        default_deny in any::<bool>(),
        server in prop::sample::select(vec!["s1", "s2", "t"]),
        tool in prop::sample::select(vec!["push", "pull", "x"]),
        branch in prop::sample::select(vec!["main", "dev", "feature"]),
        read in any::<bool>(),
    ) {
        let mut p = json!({"rules": rules.iter().enumerate().map(|(i, r)| { let mut r = r.clone(); r["id"] = json!(format!("r{i}")); r }).collect::<Vec<_>>()});
        if default_deny {
            p["defaultDecision"] = json!("DENY");
        }
        let s = set(&[("p", p)]);
        let f = F::new("prod", &[]);
        let mut x = f.facts(server, tool, if read { Action::Read } else { Action::Write });
        x.listing = true;
        let listed = s.decide(&x, &[], None).decision.visible();
        x.listing = false;
        let args = json!({"branch": branch});
        x.args = Some(&args);
        let callable = s.decide(&x, &[], None).decision.visible();
        prop_assert!(listed || !callable, "a call may use what the list hides");
        let no_args = json!({});
        x.args = Some(&no_args);
        let bare = s.decide(&x, &[], None).decision.visible();
        prop_assert!(listed || !bare);
        if rules.iter().all(|r| r["match"].get("args").is_none()) {
            prop_assert_eq!(listed, callable, "without conditions on arguments the two are the same decision");
        }
    }
}

fn arb_tool_rule() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec!["ALLOW", "DENY", "REQUIRE_APPROVAL"]),
        prop::option::of(prop::sample::select(vec!["read", "write"])),
        prop::option::of(prop::sample::select(vec!["s1", "del"])),
        prop::option::of(prop::sample::select(vec![
            json!("push"),
            json!("p*"),
            json!("del*"),
            json!("de?ete"),
            json!("*ll"),
            json!("s1.pull"),
            json!("s1.*"),
            json!(["push", "delete_*"]),
            json!(["pull", "*x"]),
        ])),
    )
        .prop_map(
            |(d, action, server, tool)| json!({"match": {"labels": rule_labels(action, server, tool)}, "decision": d}),
        )
}

/// A rule's `match.labels`, from the conditions a strategy chose.
fn rule_labels(action: Option<&str>, server: Option<&str>, tool: Option<Value>) -> serde_json::Map<String, Value> {
    let mut labels = serde_json::Map::new();
    if let Some(a) = action {
        labels.insert("mcp.action".into(), json!(a));
    }
    if let Some(s) = server {
        labels.insert("mcp.server".into(), json!(s));
    }
    if let Some(t) = tool {
        labels.insert("tool".into(), t);
    }
    labels
}

proptest! {
    /// The index (by server, action and tool name) only leaves out rules that cannot hold: the
    /// rules `explain` shows as matching are exactly those whose every condition holds.
    #[test]
    fn the_index_leaves_out_only_rules_that_cannot_hold(
        rules in prop::collection::vec(arb_tool_rule(), 0..8),
        server in prop::sample::select(vec!["s1", "s2", "del", "delta"]),
        tool in prop::sample::select(vec!["push", "pull", "delete", "delete_all", "x", "s1.pull"]),
        kind in prop::sample::select(vec![Kind::Tool, Kind::Prompt]),
        read in any::<bool>(),
    ) {
        let p = json!({"rules": rules.iter().enumerate().map(|(i, r)| { let mut r = r.clone(); r["id"] = json!(format!("r{i}")); r }).collect::<Vec<_>>()});
        let policy = Policy::compile("p", &p).unwrap();
        let s = set(&[("p", p)]);
        let f = F::new("prod", &[]);
        let mut x = f.facts(server, tool, if read { Action::Read } else { Action::Write });
        x.kind = kind;
        let mut trace = Vec::new();
        s.decide(&x, &[], Some(&mut trace));
        let found: Vec<String> = trace.into_iter().map(|m| m.rule).collect();
        let qualified = std::cell::OnceCell::new();
        let every: Vec<String> = policy
            .rules
            .iter()
            .filter(|r| {
                r.decision.is_some_and(|d| !r.answer && r.conds.iter().all(|c| c.holds(&x, d != Decision::Deny, &qualified)))
            })
            .map(|r| r.id.clone())
            .collect();
        prop_assert_eq!(found, every);
    }
}

/// A rule mixing every kind of condition: static ones (action, server, tool, agent labels, risk
/// tags) and those a plan leaves to each call (arguments, time), with constraints.
fn arb_mixed_rule() -> impl Strategy<Value = Value> {
    (
        arb_tool_rule(),
        prop::sample::select(vec!["ALLOW", "DENY", "REQUIRE_APPROVAL", "ALLOW_WITH_CONSTRAINTS"]),
        prop::option::of(prop::sample::select(vec!["main", "dev", "*"])),
        prop::option::of(prop::sample::select(vec!["prod", "dev"])),
        prop::option::of(prop::sample::select(vec!["pci", "pii"])),
        prop::option::of(prop::sample::select(vec![vec!["mon"], vec!["thu", "fri"]])),
        prop::option::of(1u64..100),
    )
        .prop_map(|(mut r, d, branch, env, tag, days, runtime)| {
            r["decision"] = json!(d);
            if let Some(b) = branch {
                r["match"]["args"] = json!({"/branch": b});
            }
            if let Some(e) = env {
                r["match"]["agents"] = json!({"matchLabels": {"env": e}});
            }
            if let Some(t) = tag {
                r["match"]["labels"]["risk_tags"] = json!([t]);
            }
            if let Some(days) = days {
                r["match"]["time"] = json!({"days": days, "hours": "00:00-12:00"});
            }
            let constrained = matches!(d, "ALLOW_WITH_CONSTRAINTS" | "REQUIRE_APPROVAL");
            if let Some(s) = runtime.or((d == "ALLOW_WITH_CONSTRAINTS").then_some(60)).filter(|_| constrained) {
                r["constraints"] = json!({"max_runtime_sec": s, "rate_limit": {"per_minute": s, "per": "agent"}});
            }
            r
        })
}

proptest! {
    /// A request decided from its subject's plan (kept after the first call) decides exactly as
    /// every candidate rule's every condition checked: the same decision, rule, reason, bounds
    /// and audit-only matches; a plan is never used for another subject.
    #[test]
    fn a_plan_decides_as_the_full_evaluation(
        policies in prop::collection::vec((
            prop::collection::vec(arb_mixed_rule(), 0..6),
            prop::option::of(prop::sample::select(vec!["ALLOW", "DENY"])),
            any::<bool>(),
            prop::option::of(prop::sample::select(vec!["s1", "s2"])),
        ), 1..4),
        calls in prop::collection::vec((
            prop::sample::select(vec!["s1", "s2", "del", "delta"]),
            prop::sample::select(vec!["push", "pull", "delete", "delete_all", "x", "s1.pull"]),
            prop::sample::select(vec!["prod", "dev"]),
            prop::sample::select(vec![vec![], vec!["pci"], vec!["pii", "pci"]]),
            any::<bool>(),
            any::<bool>(),
            prop::sample::select(vec!["main", "dev", "feature"]),
            0u64..7 * 86_400_000,
            any::<bool>(),
        ), 1..12),
    ) {
        let ps: Vec<(String, Value)> = policies.iter().enumerate().map(|(i, (rules, default, audit, scope))| {
            let rules: Vec<Value> = rules.iter().enumerate().map(|(j, r)| { let mut r = r.clone(); r["id"] = json!(format!("r{j}")); r }).collect();
            let mut p = json!({"rules": rules});
            if let Some(d) = default {
                p["defaultDecision"] = json!(d);
            }
            if *audit {
                p["enforcement"] = json!("audit");
            }
            if let Some(s) = scope {
                p["appliesTo"] = json!({"servers": {"names": [s]}});
            }
            (format!("p{i}"), p)
        }).collect();
        let s = PolicySet::new(ps.iter().map(|(n, v)| Arc::new(Policy::compile(n, v).unwrap())));
        // Every call twice: the first makes the subject's plan, the second finds it.
        for (server, tool, env, tags, read, listing, branch, now_ms, attach) in calls.iter().flat_map(|c| [c, c]) {
            let f = F::new(env, tags);
            let mut x = f.facts(server, tool, if *read { Action::Read } else { Action::Write });
            let args = json!({"branch": branch});
            x.args = Some(&args);
            x.listing = *listing;
            x.now_ms = *now_ms;
            let attached: &[&str] = if *attach { &["p0"] } else { &[] };
            prop_assert_eq!(s.decide(&x, attached, None), s.decide_in_full(&x, attached, None));
        }
    }
}

#[test]
fn a_plan_is_found_again_only_for_the_same_subject() {
    let s = set(&[(
        "p",
        json!({"rules": [
            {"id": "prod-writes", "match": {"labels": {"mcp.action": "write"}, "agents": {"matchLabels": {"env": "prod"}}}, "decision": "DENY"},
            {"id": "main", "match": {"args": {"/branch": "main"}}, "decision": "REQUIRE_APPROVAL"},
        ]}),
    )]);
    let (prod, dev) = (F::new("prod", &[]), F::new("dev", &[]));
    let main = json!({"branch": "main"});
    let mut x = prod.facts("git", "push", Action::Write);
    x.args = Some(&main);
    assert_eq!(s.decide(&x, &[], None).decision, Decision::Deny);
    assert_eq!(s.decide(&x, &[], None).decision, Decision::Deny, "found again");
    assert_eq!(s.plans_kept(), 1);
    // The same names, other labels: another subject, another plan.
    let mut y = dev.facts("git", "push", Action::Write);
    y.args = Some(&main);
    assert_eq!(s.decide(&y, &[], None).decision, Decision::RequireApproval);
    let other = json!({"branch": "dev"});
    y.args = Some(&other);
    assert_eq!(s.decide(&y, &[], None).decision, Decision::Allow, "arguments are checked per call");
    assert_eq!(s.plans_kept(), 2);
    // A time window is checked when the plan is made: the plan holds for that minute only.
    let s = set(&[(
        "p",
        json!({"rules": [{"id": "mondays", "match": {"time": {"days": ["mon"], "hours": "09:00-17:00"}}, "decision": "DENY"}]}),
    )]);
    let mut t = dev.facts("git", "push", Action::Write);
    // 1970-01-05 was a Monday.
    let monday_noon = (4 * 24 + 12) * 3_600_000;
    for (now_ms, want) in [
        (monday_noon, Decision::Deny),
        (monday_noon + 59_000, Decision::Deny),
        (monday_noon + 5 * 3_600_000, Decision::Allow),
        (monday_noon + 24 * 3_600_000, Decision::Allow),
        (monday_noon, Decision::Deny),
    ] {
        t.now_ms = now_ms;
        assert_eq!(s.decide(&t, &[], None).decision, want, "at {now_ms}");
    }
    assert_eq!(s.plans_kept(), 1, "one subject, one plan (remade as the minute changed)");
    // Past the bound the cache starts over rather than grow.
    let names: Vec<String> = (0..crate::plan::PLANS_MAX + 1).map(|i| format!("t{i}")).collect();
    for n in &names {
        let mut z = dev.facts("git", n, Action::Read);
        z.args = Some(&other);
        s.decide(&z, &[], None);
    }
    assert!(s.plans_kept() <= crate::plan::PLANS_MAX);
    assert!(s.plans_kept() >= 1);
    // And in bytes: names are the caller's to choose.
    let long: Vec<String> = (0..200).map(|i| format!("{i}{}", "x".repeat(100_000))).collect();
    for n in &long {
        let mut z = dev.facts("git", n, Action::Read);
        z.args = Some(&other);
        s.decide(&z, &[], None);
    }
    assert!(s.plans_bytes() <= crate::plan::PLANS_MAX_BYTES, "{} bytes kept", s.plans_bytes());
    assert!(s.plans_kept() < 200, "the cache started over");
}
