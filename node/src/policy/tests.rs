//! The registry's controls and the policies decide calls and list items alike.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use joch_raft_store::model::registry::Touched;
use joch_raft_store::model::resource::{Endpoint, McpServerSpec, ToolApproval};
use joch_raft_store::{Command, PublishedState, Registry, RegistryHandle, Request};
use serde_json::json;

use super::list::ListFilter;
use super::*;
use crate::auth::agent::{Caller, Source};
use crate::proxy::request::{Call, Rpc};
use crate::proxy::stages::Stage;

fn state(cmds: Vec<Command>) -> PublishedState {
    let mut reg = Registry::default();
    for (i, c) in cmds.into_iter().enumerate() {
        reg.apply(i as u64 + 1, &Request { actor: "t".into(), at_ms: 0, command: c }, &mut Touched::default()).unwrap();
    }
    PublishedState { registry: reg, applied_index: 9 }
}

fn server(name: &str, f: impl FnOnce(&mut McpServerSpec)) -> Command {
    let mut spec = McpServerSpec {
        endpoint: Some(Endpoint { url: "http://api.github.com:8080/mcp".into() }),
        ..Default::default()
    };
    f(&mut spec);
    Command::CreateServer { name: name.into(), labels: Default::default(), spec }
}

fn policy(name: &str, spec: serde_json::Value) -> Command {
    Command::ApplyPolicy { name: name.into(), labels: Default::default(), spec_json: spec.to_string() }
}

fn caller(env: &str) -> Caller {
    Caller { name: "bot".into(), source: Source::Anonymous, labels: BTreeMap::from([("env".into(), env.into())]) }
}

static NULL: serde_json::Value = serde_json::Value::Null;

fn listed(s: Subject<'_>) -> Subject<'_> {
    Subject { args: None, ..s }
}

fn tool<'a>(name: &'a str, annotations: Option<&'a serde_json::Value>) -> Subject<'a> {
    Subject { kind: Kind::Tool, method: "tools/call", name, annotations, args: Some(&NULL), now_ms: 0 }
}

#[test]
fn exposes_approval_and_read_only_refuse_calls_and_hide_items() {
    let st = state(vec![
        server("docs", |s| s.exposes.prompts = false),
        server("gh", |s| s.security.tool_approval = ToolApproval::Manual),
        Command::ApproveTool { server: "gh".into(), tool: "search".into() },
        server("ro", |_| {}),
        Command::SetServerPolicy { name: "ro".into(), read_only: true },
    ]);
    let gov = Governance::default();
    let c = caller("prod");
    let rec = |n: &str| st.registry.servers[n].clone();
    let judge = |n: &str, s: Subject<'_>, listing: bool| {
        let s = if listing { listed(s) } else { s };
        gov.judge(&st, &c, &rec(n), &s, None).map_err(|r| r.kind)
    };
    let prompt = Subject {
        kind: Kind::Prompt,
        method: "prompts/get",
        name: "p",
        annotations: None,
        args: Some(&NULL),
        now_ms: 0,
    };
    assert_eq!(judge("docs", prompt, false), Err(RefusalKind::NotExposed));
    assert_eq!(judge("docs", prompt, true), Err(RefusalKind::NotExposed));
    assert!(judge("docs", tool("t", None), false).is_ok());
    assert!(judge("gh", tool("search", None), false).is_ok());
    assert_eq!(judge("gh", tool("delete_repo", None), false), Err(RefusalKind::NotApproved));
    assert_eq!(judge("gh", tool("delete_repo", None), true), Err(RefusalKind::NotApproved));
    let ro = json!({"readOnlyHint": true});
    assert!(judge("ro", tool("get", Some(&ro)), true).is_ok());
    assert_eq!(judge("ro", tool("get", None), false), Err(RefusalKind::ReadOnly), "not seen yet: a write");
    gov.learn("ro", std::iter::once(("get".to_string(), Action::Read)));
    assert!(judge("ro", tool("get", None), false).is_ok(), "the list declared it read-only");
    assert_eq!(judge("ro", tool("put", Some(&json!({"destructiveHint": true}))), true), Err(RefusalKind::ReadOnly));
}

#[test]
fn policies_refuse_with_their_rule_and_constraints_check_the_host() {
    let st = state(vec![
        server("github", |s| s.risk_tags = vec!["non_prod".into()]),
        server("slack", |s| {
            s.risk_tags = vec!["non_prod".into()];
            s.endpoint = Some(Endpoint { url: "https://hooks.evil.example/mcp".into() });
        }),
        server("notion", |_| {}),
        policy(
            "seed-003",
            json!({"version": "v1", "rules": [
                {"id": "constrain-medium-risk", "match": {"labels": {"mcp.action": "write", "risk_tags": ["non_prod"]}},
                 "decision": "ALLOW_WITH_CONSTRAINTS", "constraints": {"max_runtime_sec": 30, "network_allowlist": ["api.github.com"]}},
                {"id": "deny-unregistered-server", "match": {"labels": {"mcp.server": "*"}, "mcp": {"deny_servers_not_in": ["github", "slack"]}},
                 "decision": "DENY"}
            ]}),
        ),
    ]);
    let gov = Governance::default();
    let c = caller("prod");
    let g = gov.judge(&st, &c, &st.registry.servers["github"], &tool("create_issue", None), None).unwrap();
    assert_eq!(g.constraints.max_runtime_sec, Some(30));
    let r = gov.judge(&st, &c, &st.registry.servers["slack"], &tool("post", None), None).unwrap_err();
    assert_eq!(r.kind, RefusalKind::Constraint);
    assert!(r.message.contains("\"hooks.evil.example\" is not in the network_allowlist"), "{}", r.message);
    assert!(gov.judge(&st, &c, &st.registry.servers["slack"], &listed(tool("post", None)), None).is_ok(), "listed");
    let r = gov.judge(&st, &c, &st.registry.servers["notion"], &tool("x", None), None).unwrap_err();
    assert_eq!((r.kind, r.rule.as_str()), (RefusalKind::Policy, "seed-003/deny-unregistered-server"));
    assert_eq!(r.message, "denied by policy seed-003, rule deny-unregistered-server: deny-unregistered-server");
    let explained = gov.explain(&st, &c, &st.registry.servers["notion"], &tool("x", None));
    assert_eq!(explained["decision"], "DENY");
    assert_eq!(explained["decidedBy"], "seed-003/deny-unregistered-server");
    assert_eq!(explained["listed"], false);
}

fn call(method: &str, server: &str) -> Call {
    let body = Bytes::from(json!({"jsonrpc": "2.0", "id": 1, "method": method}).to_string());
    let crate::mcp::jsonrpc::Body::Single(msg) = crate::mcp::jsonrpc::parse(&body, 64).unwrap() else { panic!() };
    Call {
        node: 1,
        server: server.into(),
        caller: Arc::new(caller("prod")),
        http_method: "POST",
        rpc: Some(Arc::new(Rpc { msg, body })),
        session: None,
        approval: None,
        exec: crate::audit::exec::Exec::detached(),
    }
}

#[test]
fn lists_are_filtered_as_json_as_sse_and_on_the_aggregate() {
    let st = state(vec![
        server("gh", |_| {}),
        server("jira", |_| {}),
        policy(
            "no-deletes",
            json!({"rules": [{"id": "no-delete", "match": {"tools": ["delete_*"]}, "decision": "DENY"}]}),
        ),
    ]);
    let handle = RegistryHandle::fixed(st);
    let f = ListFilter::new(Arc::new(Governance::default()), handle);
    let answer = json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": [{"name": "search"}, {"name": "delete_repo"}]}});
    let mut json_body = Bytes::from(answer.to_string());
    f.on_message(&call("tools/list", "gh"), "gh", &mut json_body);
    let v: serde_json::Value = serde_json::from_slice(&json_body).unwrap();
    assert_eq!(v["result"]["tools"], json!([{"name": "search"}]));
    assert_eq!(v["result"]["_meta"]["dev.joch/policy"]["hidden"], 1);
    let mut event = Bytes::from(format!("event: message\nid: 7\ndata: {answer}\n\n"));
    f.on_message(&call("tools/list", "gh"), "gh", &mut event);
    let text = std::str::from_utf8(&event).unwrap();
    assert!(text.starts_with("event: message\nid: 7\ndata: {") && text.ends_with("}\n\n"), "{text}");
    assert!(!text.contains("delete_repo"), "{text}");
    let merged = json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": [
        {"name": "gh.search"}, {"name": "jira.delete_issue"}, {"name": "gone.x"}]}});
    let mut agg = Bytes::from(merged.to_string());
    f.on_message(&call("tools/list", ""), "", &mut agg);
    let v: serde_json::Value = serde_json::from_slice(&agg).unwrap();
    assert_eq!(v["result"]["tools"], json!([{"name": "gh.search"}]));
    let mut call_answer = Bytes::from(json!({"jsonrpc": "2.0", "id": 1, "result": {"content": []}}).to_string());
    let before = call_answer.clone();
    f.on_message(&call("tools/call", "gh"), "gh", &mut call_answer);
    assert_eq!(call_answer, before, "only list answers are touched");
}
