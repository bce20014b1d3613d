//! Policies end to end: the seeds' files applied as written with `joch apply -f`, decisions seen
//! by the official SDK client on `/mcp/{server}` and `/mcp`, in both eras; the registry's own
//! controls (read-only, approve-tool, exposes); `policy explain` and `policy test`.

use std::path::Path;

use serde_json::{json, Value};

use crate::harness::{FastMcp, TestCluster};

fn bases(c: &TestCluster) -> Vec<String> {
    c.nodes.iter().map(|n| n.mcp_url.clone()).collect()
}

/// What `agent_token` is shown and may do on `target` (`-`: the aggregate), in `mode`. The
/// client prefers not to wait for approvals (`Prefer: respond-async`): a held call answers
/// `approval-pending` at once.
fn probe(c: &TestCluster, mode: &str, agent_token: &str, target: &str, calls: &Value) -> Value {
    let calls = calls.to_string();
    let mut args = vec!["probe".to_string(), target.to_string(), calls];
    args.extend(bases(c));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    c.sdk_env(mode, &argv, &[("JOCH_AGENT_TOKEN", Path::new(agent_token)), ("JOCH_PREFER", Path::new("respond-async"))])
}

/// An MCPServer manifest for `name` at `url`.
fn server_doc(name: &str, url: &str) -> String {
    format!("apiVersion: joch.dev/v1alpha1\nkind: MCPServer\nmetadata: {{ name: {name} }}\nspec:\n  endpoint: {{ url: \"{url}\" }}\n")
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// Seed 003's rule file (docs/examples/mcp-governance.yaml: indented as YAML needs, the seed's
/// text lost its indentation).
const SEED_003: &str = include_str!("../../../docs/examples/mcp-governance.yaml");

/// Seed 000's Policy: the second document of docs/examples/github.yaml.
fn seed_000() -> String {
    let example = include_str!("../../../docs/examples/github.yaml");
    example.split("\n---\n").nth(1).expect("the example's Policy").to_string()
}

fn servers(url: &str) -> String {
    // One real fastmcp upstream, registered under three names: github (prod, its `add` declared a
    // read in the registry), jira (non-prod), notion (not on the seed's allow-list).
    format!(
        r#"apiVersion: joch.dev/v1alpha1
kind: MCPServer
metadata:
  name: github
spec:
  endpoint: {{ url: "{url}" }}
  riskTags: [prod]
  tools:
    add: {{ action: read }}
  policies:
    - name: mcp-tool-safety
---
apiVersion: joch.dev/v1alpha1
kind: MCPServer
metadata:
  name: jira
spec:
  endpoint: {{ url: "{url}" }}
  riskTags: [non_prod]
---
apiVersion: joch.dev/v1alpha1
kind: MCPServer
metadata:
  name: notion
spec:
  endpoint: {{ url: "{url}" }}
"#
    )
}

#[test]
fn seed_policies_applied_as_written_decide_through_the_sdk_in_both_eras() {
    let c = TestCluster::up(3, &[]);
    let up = FastMcp::start();
    let dir = c.dir.path();
    // Seed 002 names `mcp-tool-safety-policy`, seed 000 defines `mcp-tool-safety`: the user is
    // told, before anything is written.
    let wrong = servers(&up.url).replace("name: mcp-tool-safety", "name: mcp-tool-safety-policy");
    let f = write(dir, "servers.yaml", &format!("{wrong}---\n{}", seed_000()));
    let e = c.cli(1, &["apply", "-f", &f]).fails(1);
    assert!(
        e.contains(&format!("{f}:11: spec.policies[0].name: MCPServer github: policy \"mcp-tool-safety-policy\" does not exist; did you mean \"mcp-tool-safety\"?")),
        "{e}"
    );
    assert!(
        c.cli(2, &["get", "mcpservers", "-o", "json"]).ok().json().as_array().unwrap().is_empty(),
        "nothing written"
    );
    // As the seeds stand (seed 003's file has no header: it is the policy named after its file).
    let seed3 = write(dir, "mcp-governance.yaml", SEED_003);
    c.cli(2, &["apply", "-f", &seed3]).ok();
    let f = write(dir, "servers.yaml", &format!("{}---\n{}", servers(&up.url), seed_000()));
    c.cli(3, &["apply", "-f", &f]).ok();
    let ls = c.cli(1, &["policy", "ls", "-o", "json"]).ok().json();
    let names: Vec<&str> = ls.as_array().unwrap().iter().map(|p| p["metadata"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["mcp-governance", "mcp-tool-safety"]);

    let bot = c.cli(1, &["agent", "create", "prod-bot", "--label", "env=prod", "-o", "json"]).ok().json();
    let token = bot["token"].as_str().unwrap().to_string();
    let calls = json!([["add", {"a": 1, "b": 2}], ["slow", {"steps": 1}]]);
    // Seed 000's first rule: github's trust score (an unknown publisher, unsigned, little
    // history) is under 0.75, so prod agents are denied.
    let r = probe(&c, "auto", &token, "github", &json!([["add", {"a": 1, "b": 2}]]));
    assert_eq!(r["calls"]["add"]["data"]["policy"]["reason"], "trust-score-too-low", "{r}");
    // The security team's allow-list names the three, and the operator makes it all the score
    // counts: every one scores 1.
    let list = write(dir, "secteam.yaml", "servers: [github, jira, notion]\n");
    c.cli(1, &["trust", "allowlist", "apply", "-f", &list]).ok();
    let only_list = ["--publisher", "0", "--signature", "0", "--stability", "0", "--poisoning", "0", "--traffic", "0"];
    c.cli(2, &[&["trust", "weights"][..], &only_list[..]].concat()).ok();
    for mode in ["legacy", "auto"] {
        // github: `add` reads (ALLOW by allow-read-approved-servers); `slow` writes on a prod
        // server (REQUIRE_APPROVAL: listed, and held for an approval; this client does not wait).
        let r = probe(&c, mode, &token, "github", &calls);
        assert_eq!(r["calls"]["add"], "3", "{mode}: {r}");
        assert_eq!(r["calls"]["slow"]["code"], -32050, "{mode}: {r}");
        assert_eq!(r["calls"]["slow"]["data"]["reason"], "approval-pending");
        assert_eq!(r["calls"]["slow"]["data"]["policy"]["rule"], "require-approval-production-write");
        assert!(r["calls"]["slow"]["data"]["policy"]["approval"].as_str().unwrap().starts_with("apr-"));
        assert!(r["tools"].as_array().unwrap().contains(&json!("slow")), "{mode}: held calls stay listed: {r}");
        assert_eq!(r["prompts"], json!(["review"]));
        // jira: a non-prod write is ALLOW_WITH_CONSTRAINTS, and its upstream (127.0.0.1) is not
        // on the network allow-list: refused before anything is sent.
        let r = probe(&c, mode, &token, "jira", &calls);
        assert_eq!(r["calls"]["add"]["code"], -32019, "{mode}: {r}");
        assert!(r["calls"]["add"]["message"]
            .as_str()
            .unwrap()
            .contains("\"127.0.0.1\" is not in the network_allowlist"));
        // notion: not on the seed's list: every tool hidden, every call denied with the rule.
        let r = probe(&c, mode, &token, "notion", &calls);
        assert_eq!(r["tools"], json!([]), "{mode}: {r}");
        assert_eq!(r["calls"]["add"]["code"], -32013, "{mode}: {r}");
        assert_eq!(r["calls"]["add"]["data"]["reason"], "policy-denied");
        assert_eq!(r["calls"]["add"]["data"]["policy"]["policy"], "mcp-governance");
        assert_eq!(r["calls"]["add"]["data"]["policy"]["rule"], "deny-unregistered-server");
        assert_eq!(
            r["calls"]["add"]["message"],
            "denied by policy mcp-governance, rule deny-unregistered-server: deny-unregistered-server"
        );
        // The aggregate endpoint: the same decisions, by `server.tool`.
        let agg = json!([["github.add", {"a": 2, "b": 2}], ["notion.add", {"a": 1, "b": 1}]]);
        let r = probe(&c, mode, &token, "-", &agg);
        let tools: Vec<&str> = r["tools"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
        assert!(tools.contains(&"github.add") && tools.contains(&"jira.add"), "{mode}: {r}");
        assert!(!tools.iter().any(|t| t.starts_with("notion.")), "{mode}: {r}");
        assert_eq!(r["calls"]["github.add"], "4", "{mode}: {r}");
        assert_eq!(r["calls"]["notion.add"]["code"], -32013, "{mode}: {r}");
    }

    // explain, from any node, for the call the agent would make.
    let x = c
        .cli(2, &["policy", "explain", "--agent", "prod-bot", "--server", "notion", "--tool", "add", "-o", "json"])
        .ok()
        .json();
    assert_eq!(x["decision"], "DENY");
    assert_eq!(x["decidedBy"], "mcp-governance/deny-unregistered-server");
    assert_eq!(x["listed"], false);
    let x = c.cli(3, &["policy", "explain", "--agent", "prod-bot", "--server", "github", "--tool", "slow"]).ok().stdout;
    assert!(x.contains("decision:    REQUIRE_APPROVAL"), "{x}");
    assert!(x.contains("mcp-governance  require-approval-production-write"), "{x}");

    // Deleting a policy a server names is refused.
    let e = c.cli(1, &["delete", "policy", "mcp-tool-safety"]).fails(1);
    assert!(e.contains("still used by MCP server(s) github"), "{e}");
}

#[test]
fn read_only_approval_and_exposes_are_enforced_and_hidden() {
    let c = TestCluster::up(2, &[]);
    let up = FastMcp::start();
    let dir = c.dir.path();
    let f = write(
        dir,
        "s.yaml",
        &format!(
            r#"apiVersion: joch.dev/v1alpha1
kind: MCPServer
metadata:
  name: gated
spec:
  endpoint: {{ url: "{url}" }}
  exposes: {{ prompts: false }}
  security: {{ toolApproval: manual }}
---
apiVersion: joch.dev/v1alpha1
kind: MCPServer
metadata:
  name: ro
spec:
  endpoint: {{ url: "{url}" }}
  tools:
    add: {{ action: read }}
"#,
            url = up.url,
        ),
    );
    c.cli(1, &["apply", "-f", &f]).ok();
    c.cli(2, &["mcp", "approve-tool", "gated.add"]).ok();
    c.cli(1, &["mcp", "policy", "set", "ro", "--read-only"]).ok();
    let calls = json!([["add", {"a": 1, "b": 1}], ["slow", {"steps": 1}]]);
    for mode in ["legacy", "auto"] {
        let r = probe(&c, mode, &c.agent_token, "gated", &calls);
        assert_eq!(r["tools"], json!(["add"]), "{mode}: only the approved tool: {r}");
        assert_eq!(r["calls"]["add"], "2");
        assert_eq!(r["calls"]["slow"]["code"], -32014, "{mode}: {r}");
        assert_eq!(r["calls"]["slow"]["data"]["rule"], "mcpserver.spec.security.toolApproval");
        assert_eq!(r["prompts"], json!([]), "{mode}: prompts are not exposed: {r}");
        let r = probe(&c, mode, &c.agent_token, "ro", &calls);
        assert_eq!(r["tools"], json!(["add"]), "{mode}: write tools hidden: {r}");
        assert_eq!(r["calls"]["add"], "2");
        assert_eq!(r["calls"]["slow"]["code"], -32015, "{mode}: {r}");
    }
    // Lifting read-only shows the write tools again, on every node (fleet-acknowledged).
    c.cli(2, &["mcp", "policy", "set", "ro", "--read-write"]).ok();
    let r = probe(&c, "auto", &c.agent_token, "ro", &calls);
    assert_eq!(r["calls"]["slow"], "done 1", "{r}");
}

#[test]
fn policy_test_checks_files_against_expected_decisions_offline() {
    let dir = tempfile::TempDir::new().unwrap();
    // The bare seed-003 file beside seed 000's manifest, as two files in CI would be.
    let seed3 = write(dir.path(), "mcp-governance.yaml", SEED_003);
    let cases = write(
        dir.path(),
        "cases.yaml",
        r#"cases:
  - name: reads on approved servers
    agent: { name: bot }
    server: { name: github }
    tool: search_issues
    action: read
    expect: ALLOW
    rule: allow-read-approved-servers
  - name: production writes wait for a person
    agent: { name: bot }
    server: { name: github, riskTags: [prod] }
    tool: create_issue
    expect: REQUIRE_APPROVAL
  - name: unknown servers are denied
    agent: { name: bot }
    server: { name: notion }
    tool: search
    action: read
    expect: DENY
    rule: mcp-governance/deny-unregistered-server
"#,
    );
    let out = crate::harness::joch(["policy", "test", "-f", &seed3, "--cases", &cases]).ok().stdout;
    assert!(out.contains("3 of 3 cases passed"), "{out}");
    let wrong = write(
        dir.path(),
        "wrong.yaml",
        "cases:\n  - agent: { name: bot }\n    server: { name: notion }\n    tool: x\n    expect: ALLOW\n",
    );
    let out = crate::harness::joch(["policy", "test", "-f", &seed3, "--cases", &wrong]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(out.stdout.contains("FAIL") && out.stdout.contains("expected ALLOW"), "{}", out.stdout);
    // Seed 000 in CI: a prod agent on a low-trust server is denied with the rule's reason.
    let s0 = write(dir.path(), "safety.yaml", &seed_000());
    let c0 = write(
        dir.path(),
        "c0.yaml",
        "cases:\n  - agent: { name: bot, labels: { env: prod } }\n    server: { name: github, trustScore: 0.5 }\n    tool: create_issue\n    expect: DENY\n    rule: mcp-tool-safety/rule-1\n  - agent: { name: bot, labels: { env: dev } }\n    server: { name: github, trustScore: 0.5 }\n    tool: create_issue\n    expect: ALLOW\n",
    );
    let out = crate::harness::joch(["policy", "test", "-f", &s0, "--cases", &c0, "-o", "json"]).ok().json();
    assert_eq!(out["failed"], 0, "{out}");
}

/// The approval ids `joch approvals ls --pending` shows, from node `id`.
fn pending(c: &TestCluster, id: u64) -> Vec<String> {
    let v = c.cli(id, &["approvals", "ls", "--pending", "-o", "json"]).ok().json();
    v.as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap().to_string()).collect()
}

#[test]
fn held_calls_run_once_when_approved_on_another_node_and_fail_when_denied_or_timed_out() {
    let c = TestCluster::up(3, &[]);
    let dir = c.dir.path().to_path_buf();
    let record = dir.join("calls.jsonl");
    let up = FastMcp::start_recording(&[], Some(&record));
    let f = write(
        &dir,
        "held.yaml",
        &format!(
            r#"{github}---
apiVersion: joch.dev/v1alpha1
kind: Policy
metadata: {{ name: writes }}
spec:
  rules:
    - id: add-needs-a-person
      match: {{ tools: [add] }}
      decision: REQUIRE_APPROVAL
      constraints: {{ approval_timeout_sec: 60 }}
    - id: slow-needs-a-quick-person
      match: {{ tools: [slow] }}
      decision: REQUIRE_APPROVAL
      constraints: {{ approval_timeout_sec: 2 }}
"#,
            github = server_doc("github", &up.url),
        ),
    );
    c.cli(1, &["apply", "-f", &f]).ok();
    let node1 = [c.node(1).mcp_url.clone()];
    let probe_on = |env: &[(&str, &Path)], calls: &Value| {
        let mut args = vec!["probe".to_string(), "github".into(), calls.to_string()];
        args.extend(node1.iter().cloned());
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        c.sdk_env("auto", &argv, env)
    };
    let adds = |n: usize| crate::harness::recorded(&record).iter().filter(|(t, _)| t == "add").count() == n;

    // Held on node 1, approved on node 2: the call runs, once.
    let r = std::thread::scope(|s| {
        let held = s.spawn(|| probe_on(&[], &json!([["add", {"a": 1, "b": 2}]])));
        let id = crate::harness::eventually("the approval request", std::time::Duration::from_secs(20), || {
            pending(&c, 2).into_iter().next()
        });
        assert!(adds(0), "nothing reached the upstream while held");
        c.cli(2, &["approvals", "approve", &id, "--reason", "looks fine"]).ok();
        held.join().unwrap()
    });
    assert_eq!(r["calls"]["add"], "3", "{r}");
    assert!(adds(1));
    // Its execution, from any node: the approval decided, then the call, on the holding node.
    let exec = r["metas"]["add"]["joch/execId"].as_str().unwrap().to_string();
    let kinds = |exec: &str| {
        crate::harness::eventually("the execution's records", std::time::Duration::from_secs(20), || {
            let t = c.cli(3, &["trace", exec, "-o", "json"]);
            let v = (t.code == 0).then(|| t.json())?;
            let k: Vec<(String, String, String)> = v["records"]
                .as_array()?
                .iter()
                .map(|r| {
                    (
                        r["kind"].as_str().unwrap().into(),
                        r["decision"].as_str().unwrap().into(),
                        r["outcome"].as_str().unwrap().into(),
                    )
                })
                .collect();
            (k.len() >= 2).then_some(k)
        })
    };
    let k = kinds(&exec);
    assert_eq!(k[0], ("approvalDecided".to_string(), "approved".to_string(), "result".to_string()), "{k:?}");
    assert_eq!(k[1].0, "request", "{k:?}");
    assert_eq!(k[1].2, "result", "{k:?}");
    // The SDK client accepts SSE: it was held on an event stream (keep-alive comments while idle).
    assert!(crate::harness::metric(&c.node(1).metrics_url, "joch_approvals_held_streams_total") >= 1);
    let ls = c.cli(3, &["approvals", "ls", "-o", "json"]).ok().json();
    assert_eq!(ls[0]["state"], "used", "{ls}");
    assert!(ls[0]["decidedBy"].as_str().is_some_and(|a| !a.is_empty()), "{ls}");

    // The same call again is held anew (the approval was used): a caller that prefers not to
    // wait gets approval-pending with the new id.
    let prefer = Path::new("respond-async");
    let r = probe_on(&[("JOCH_PREFER", prefer)], &json!([["add", {"a": 1, "b": 2}]]));
    assert_eq!(r["calls"]["add"]["code"], -32050, "{r}");
    let id = r["calls"]["add"]["data"]["policy"]["approval"].as_str().unwrap().to_string();
    c.cli(3, &["approvals", "approve", &id]).ok();
    // Approved while the agent was away: other arguments do not use it (held again, pending) ...
    let r = probe_on(&[("JOCH_PREFER", prefer)], &json!([["add", {"a": 1, "b": 3}]]));
    assert_eq!(r["calls"]["add"]["code"], -32050, "{r}");
    assert_ne!(r["calls"]["add"]["data"]["policy"]["approval"], id.as_str());
    // ... the identical call does, once.
    let r = probe_on(&[("JOCH_PREFER", prefer)], &json!([["add", {"a": 1, "b": 2}]]));
    assert_eq!(r["calls"]["add"], "3", "{r}");
    assert!(adds(2));

    // Denied while held: the agent is told why.
    let before = pending(&c, 1);
    let r = std::thread::scope(|s| {
        let held = s.spawn(|| probe_on(&[], &json!([["add", {"a": 7, "b": 7}]])));
        let id = crate::harness::eventually("the approval request", std::time::Duration::from_secs(20), || {
            pending(&c, 1).into_iter().find(|i| !before.contains(i))
        });
        let e = c.cli(1, &["approvals", "deny", &id]).fails(2);
        assert!(e.contains("--reason"), "{e}");
        c.cli(1, &["approvals", "deny", &id, "--reason", "not on a Friday"]).ok();
        held.join().unwrap()
    });
    assert_eq!(r["calls"]["add"]["code"], -32051, "{r}");
    assert!(r["calls"]["add"]["message"].as_str().unwrap().contains("not on a Friday"), "{r}");
    let k = kinds(r["calls"]["add"]["data"]["execId"].as_str().unwrap());
    assert_eq!(k[0], ("approvalDecided".to_string(), "denied".to_string(), "denied".to_string()), "{k:?}");
    assert_eq!((k[1].0.as_str(), k[1].2.as_str()), ("request", "denied"), "{k:?}");

    // Nobody decides: the held call times out after the rule's approval_timeout_sec.
    let r = probe_on(&[], &json!([["slow", {"steps": 1}]]));
    assert_eq!(r["calls"]["slow"]["code"], -32052, "{r}");
    assert!(crate::harness::recorded(&record).iter().all(|(t, _)| t != "slow"));
    // A decision after the timeout is refused.
    let ls = c.cli(1, &["approvals", "ls", "--pending", "-o", "json"]).ok().json();
    let late = ls.as_array().unwrap().iter().find(|a| a["name"] == "slow").unwrap()["id"].as_str().unwrap().to_string();
    let e = c.cli(2, &["approvals", "approve", &late]).fails(1);
    assert!(e.contains("timed out before it was decided"), "{e}");
}

#[test]
fn a_rate_limit_is_shared_among_the_members_and_says_when_to_retry() {
    let c = TestCluster::up(3, &[]);
    let up = FastMcp::start();
    let f = write(
        c.dir.path(),
        "limited.yaml",
        &format!(
            r#"{github}---
apiVersion: joch.dev/v1alpha1
kind: Policy
metadata: {{ name: quotas }}
spec:
  rules:
    - id: six-a-minute
      match: {{ tools: [add] }}
      decision: ALLOW_WITH_CONSTRAINTS
      constraints: {{ rate_limit: {{ per_minute: 6, per: agent }} }}
"#,
            github = server_doc("github", &up.url),
        ),
    );
    c.cli(1, &["apply", "-f", &f]).ok();
    // Nine calls spread over the three nodes (a round-robin balancer): each node's share is
    // two a minute, so six pass and three are refused with the rule and when to retry.
    let calls: Vec<Value> = (0..9).map(|i| json!(["add", {"a": i, "b": 0}])).collect();
    let r = probe(&c, "auto", &c.agent_token, "github", &json!(calls));
    let seq = r["sequence"].as_array().unwrap();
    let passed = seq.iter().filter(|x| x.is_string()).count();
    let limited: Vec<&Value> = seq.iter().filter(|x| x["code"] == -32018).collect();
    assert_eq!((passed, limited.len()), (6, 3), "{r}");
    assert_eq!(limited[0]["data"]["reason"], "rate-limited");
    assert_eq!(limited[0]["data"]["rule"], "quotas/six-a-minute");
    // Within the per-member window (30 s for two a minute), counted down while the calls run.
    let after = limited[0]["data"]["retryAfter"].as_u64().unwrap();
    assert!((25..=30).contains(&after), "{r}");
    // Another agent has its own budget.
    let other = c.cli(1, &["agent", "create", "other", "-o", "json"]).ok().json();
    let r = probe(&c, "auto", other["token"].as_str().unwrap(), "github", &json!([["add", {"a": 1, "b": 1}]]));
    assert_eq!(r["calls"]["add"], "2", "{r}");
}

#[test]
fn a_virtual_server_exposes_only_its_tools_renamed_and_governed_by_the_same_policies() {
    let c = TestCluster::up(2, &[]);
    let up = FastMcp::start();
    let f = write(
        c.dir.path(),
        "virtual.yaml",
        &format!(
            r#"{github}---
{jira}---
apiVersion: joch.dev/v1alpha1
kind: VirtualServer
metadata: {{ name: support }}
spec:
  tools:
    - {{ server: github, tool: add, name: sum, description: "Adds two numbers for support" }}
    - {{ server: jira, tool: slow }}
    - {{ server: jira, tool: getenv }}
"#,
            github = server_doc("github", &up.url),
            jira = server_doc("jira", &up.url),
        ),
    );
    c.cli(1, &["apply", "-f", &f]).ok();
    let ls = c.cli(2, &["get", "virtualservers", "-o", "json"]).ok().json();
    assert_eq!(ls[0]["status"]["endpoint"], "/mcp/v/support", "{ls}");
    // Governed by the same policies: jira's getenv is denied, so it is hidden here too.
    let deny = write(
        c.dir.path(),
        "deny.yaml",
        "apiVersion: joch.dev/v1alpha1\nkind: Policy\nmetadata: { name: no-env }\nspec:\n  rules:\n    - id: no-getenv\n      match: { tools: [getenv] }\n      decision: DENY\n",
    );
    c.cli(1, &["apply", "-f", &deny]).ok();
    let calls = json!([["sum", {"a": 2, "b": 3}], ["slow", {"steps": 1}], ["add", {"a": 1, "b": 1}], ["getenv", {"name": "HOME"}]]);
    for mode in ["legacy", "auto"] {
        let r = probe(&c, mode, &c.agent_token, "v/support", &calls);
        assert_eq!(r["tools"], json!(["slow", "sum"]), "{mode}: {r}");
        assert_eq!(r["descriptions"]["sum"], "Adds two numbers for support", "{mode}: {r}");
        assert_eq!(r["prompts"], json!([]), "{mode}: tools only: {r}");
        assert_eq!(r["calls"]["sum"], "5", "{mode}: {r}");
        assert_eq!(r["calls"]["slow"], "done 1", "{mode}: {r}");
        assert_eq!(r["calls"]["add"]["code"], -32601, "{mode}: not exposed under its own name: {r}");
        assert_eq!(r["calls"]["getenv"]["code"], -32013, "{mode}: {r}");
        assert_eq!(r["calls"]["getenv"]["data"]["server"], "jira");
    }
    // An unknown virtual server is a 404 naming it; a deleted one stops serving.
    let missing = crate::harness::http(
        "POST",
        &format!("{}/mcp/v/nope", c.node(1).mcp_url),
        &[c.auth(), ("content-type", "application/json"), ("accept", "application/json, text/event-stream")],
        br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#,
    );
    assert_eq!(missing.status, 404);
    assert!(missing.body.contains(r#"virtual server \"nope\" does not exist"#), "{}", missing.body);
    c.cli(2, &["delete", "virtualserver", "support"]).ok();
    assert!(c.cli(1, &["get", "virtualservers", "-o", "json"]).ok().json().as_array().unwrap().is_empty());
}
