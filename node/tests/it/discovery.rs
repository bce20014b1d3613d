//! Discovery and schema drift end to end: `joch mcp discover` of a fastmcp server over HTTP and
//! of mcp-server-time over stdio (seed 000's view: tools, resources, prompts, drift); a rug pull
//! (the server changes a tool's description at runtime, called through joch by the official SDK
//! client, and announces it with `notifications/tools/list_changed`) discovered again by the
//! node that relayed the announcement, with `onSchemaDrift: quarantine`: the diff names the tool
//! and the field, and the server is quarantined on every node by the same commit; `deny` refuses
//! calls until a pin.

use std::path::Path;

use std::time::Duration;

use crate::harness::{eventually, FastMcp, TestCluster};

/// A fastmcp server that can pull the rug (its `rugpull` tool changes `add`'s description),
/// registered as `name` with these `discovery` settings.
fn rug_pull_server(c: &TestCluster, name: &str, discovery: &str) -> FastMcp {
    let up = FastMcp::start_env(&[], &[("JOCH_RUGPULL", Path::new("1"))]);
    let f = c.dir.path().join(format!("{name}.yaml"));
    let doc = format!(
        "apiVersion: joch.dev/v1alpha1\nkind: MCPServer\nmetadata:\n  name: {name}\nspec:\n  endpoint: {{ url: \"{}\" }}\n  discovery: {{ {discovery} }}\n",
        up.url
    );
    std::fs::write(&f, doc).unwrap();
    c.cli(1, &["apply", "-f", f.to_str().unwrap()]).ok();
    up
}

#[test]
fn a_rug_pull_is_discovered_as_drift_and_quarantines_the_server_on_every_node() {
    let c = TestCluster::up_stdio(3);
    let _up = rug_pull_server(&c, "github", "onSchemaDrift: quarantine");

    // First discovery: seed 000's view, and the baseline.
    let out = c.cli(2, &["mcp", "discover", "github"]).ok().stdout;
    for want in [
        "TOOL",
        "github.add",
        "Add two numbers.",
        "github.rugpull",
        "data://greeting",
        "review",
        "tool poisoning checks: nothing found",
        "schema drift: none",
        "phase: Ready",
    ] {
        assert!(out.contains(want), "{want:?} missing from:\n{out}");
    }
    let d = c.cli(2, &["describe", "mcpserver", "github", "--stale", "-o", "json"]).ok().json();
    let tools: Vec<&str> =
        d["status"]["discoveredTools"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert!(tools.contains(&"github.add"), "{d}");
    assert_eq!(d["status"]["schemaDrift"], false);
    assert_eq!(d["status"]["discoveredResources"], serde_json::json!(["data://greeting"]));
    assert!(d["status"]["lastDiscoveryAt"].as_str().is_some());

    // The rug pull, through joch, by the official SDK client.
    let argv = ["probe", "github", r#"[["rugpull", {}]]"#, &c.nodes[0].mcp_url];
    let r = c.sdk(&argv);
    assert_eq!(r["calls"]["rugpull"], "pulled", "{r}");

    // The server announced its new tools (notifications/tools/list_changed, on the call's stream):
    // the node that relayed it discovers the server again and commits: drift, named, and the
    // quarantine in the same commit, without an operator.
    let quarantined = eventually("the quarantine on drift", Duration::from_secs(20), || {
        let d = c.cli(1, &["describe", "mcpserver", "github", "-o", "json"]).ok().json();
        (d["status"]["phase"] == "Quarantined").then_some(d)
    });
    assert_eq!(quarantined["status"]["schemaDrift"], true, "{quarantined}");
    let j = c.cli(2, &["mcp", "diff", "github", "-o", "json"]).ok().json();
    let drift = j["drift"].as_array().unwrap();
    let fields: Vec<(&str, &str)> =
        drift.iter().map(|d| (d["tool"].as_str().unwrap(), d["field"].as_str().unwrap())).collect();
    assert_eq!(fields, [("add", "description"), ("add", "poisoning"), ("add", "poisoning")], "{j}");
    assert_eq!(drift[0]["before"], "Add two numbers.");
    assert!(drift[0]["after"].as_str().unwrap().contains("id_rsa"), "{j}");
    // The new description is also caught by the tool-poisoning checks.
    let poisoning: Vec<&str> = drift[1..].iter().map(|d| d["after"].as_str().unwrap()).collect();
    assert!(
        poisoning[0].starts_with("poison.instruction: ") && poisoning[0].contains("before answering"),
        "{poisoning:?}"
    );
    assert!(poisoning[1].starts_with("poison.secret-access: ") && poisoning[1].contains("~/.ssh"), "{poisoning:?}");
    // A quarantined server is not contacted, not even by discovery.
    let err = c.cli(3, &["mcp", "discover", "github"]).fails(1);
    assert!(err.contains("quarantined"), "{err}");
    for node in 1..=3 {
        let d = c.cli(node, &["describe", "mcpserver", "github", "--stale", "-o", "json"]).ok().json();
        assert_eq!(d["status"]["phase"], "Quarantined", "node {node}: {d}");
        assert_eq!(d["status"]["schemaDrift"], true, "node {node}");
        let why = d["status"]["quarantine"]["reason"].as_str().unwrap();
        assert!(why.contains("schema drift") && why.contains("add description changed"), "node {node}: {why}");
    }
    // Every node refuses the server now, from the first message of a session.
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
    let h = [("content-type", "application/json"), ("accept", "application/json, text/event-stream"), c.auth()];
    for n in &c.nodes {
        let r = crate::harness::http("POST", &format!("{}/mcp/github", n.mcp_url), &h, init.as_bytes());
        assert_eq!((r.status, r.json()["error"]["code"].as_i64()), (403, Some(-32002)), "node {}: {r:?}", n.id);
    }
    let diff = c.cli(1, &["mcp", "diff", "github"]).ok().stdout;
    assert!(
        diff.contains("~ add description:") && diff.contains("before: Add two numbers.") && diff.contains("id_rsa"),
        "{diff}"
    );
    let hist = c.cli(1, &["mcp", "history", "github", "-o", "json"]).ok().json();
    let details: Vec<&str> = hist.as_array().unwrap().iter().map(|h| h["detail"].as_str().unwrap()).collect();
    assert!(
        details.iter().any(|d| d.starts_with("quarantined on schema drift: add description changed")),
        "{details:?}"
    );

    // A pin, after review, takes the new tools as the baseline.
    c.cli(1, &["mcp", "pin", "github", "--to", "1.4.2"]).ok();
    let diff = c.cli(1, &["mcp", "diff", "github"]).ok().stdout;
    assert!(diff.contains("schema drift: none"), "{diff}");

    // onSchemaDrift: deny: not quarantined, but calls are refused until a pin re-baselines.
    let _up2 = rug_pull_server(&c, "jira", "onSchemaDrift: deny, refreshInterval: 1s");
    c.cli(1, &["mcp", "discover", "jira"]).ok();
    assert_eq!(c.sdk(&["probe", "jira", r#"[["rugpull", {}]]"#, &c.nodes[0].mcp_url])["calls"]["rugpull"], "pulled");
    eventually("the drift of jira", Duration::from_secs(20), || {
        let d = c.cli(1, &["describe", "mcpserver", "jira", "-o", "json"]).ok().json();
        (d["status"]["schemaDrift"] == true).then_some(())
    });
    // Discovered again by hand: the drift stands, the server is not quarantined.
    let j = c.cli(2, &["mcp", "discover", "jira", "-o", "json"]).ok().json();
    assert_eq!((j["phase"].as_str(), j["drift"][0]["field"].as_str()), (Some("Ready"), Some("description")), "{j}");
    let r = crate::harness::http("POST", &format!("{}/mcp/jira", c.nodes[2].mcp_url), &h, init.as_bytes());
    let e = r.json();
    assert_eq!((r.status, e["error"]["code"].as_i64()), (403, Some(-32024)), "{r:?}");
    assert!(e["error"]["message"].as_str().unwrap().contains("add description changed"), "{e}");
    c.cli(1, &["mcp", "pin", "jira", "--to", "1.4.2"]).ok();
    let r = crate::harness::http("POST", &format!("{}/mcp/jira", c.nodes[2].mcp_url), &h, init.as_bytes());
    assert_eq!(r.status, 200, "{r:?}");
    // The leader refreshes a discovered server every refreshInterval (1s here), on its own.
    let discoveries = |c: &TestCluster| {
        let h = c.cli(1, &["mcp", "history", "jira", "-o", "json"]).ok().json();
        h.as_array().unwrap().iter().filter(|l| l["action"] == "record_discovery").count()
    };
    let before = discoveries(&c);
    eventually("periodic discoveries of jira", Duration::from_secs(20), || {
        (discoveries(&c) >= before + 2).then_some(())
    });

    // A renamed tool is drift too (`add` offered as `plus`, the same otherwise): named as a
    // rename, and quarantined. Discovered first by the leader, on registration.
    let _up3 = rug_pull_server(&c, "gitlab", "onSchemaDrift: quarantine");
    eventually("the first discovery of gitlab", Duration::from_secs(20), || {
        let d = c.cli(2, &["describe", "mcpserver", "gitlab", "-o", "json"]).ok().json();
        d["status"]["lastDiscoveryAt"].as_str().map(|_| ())
    });
    assert_eq!(c.sdk(&["probe", "gitlab", r#"[["rename", {}]]"#, &c.nodes[1].mcp_url])["calls"]["rename"], "renamed");
    eventually("the quarantine of gitlab on a rename", Duration::from_secs(20), || {
        let d = c.cli(3, &["describe", "mcpserver", "gitlab", "-o", "json"]).ok().json();
        (d["status"]["phase"] == "Quarantined").then_some(())
    });
    let renamed = c.cli(3, &["mcp", "diff", "gitlab", "-o", "json"]).ok().json();
    let d = &renamed["drift"][0];
    assert_eq!(
        (d["tool"].as_str(), d["field"].as_str(), d["after"].as_str()),
        (Some("add"), Some("renamed"), Some("plus")),
        "{renamed}"
    );
    assert_eq!(renamed["drift"].as_array().unwrap().len(), 1, "{renamed}");

    // A stdio server: discovered through a child on the node asked.
    let time_bin = crate::harness::venv_bin().join("mcp-server-time").display().to_string();
    c.cli(1, &["mcp", "add", "time", "--transport", "stdio", "--command", &time_bin, "--allow-stdio"]).ok();
    let t = c.cli(1, &["mcp", "discover", "time", "-o", "json"]).ok().json();
    let names: Vec<&str> =
        t["discovery"]["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["convert_time", "get_current_time"], "{t}");
    assert_eq!(t["discovery"]["server_name"], "mcp-time");
    let table = c.cli(1, &["mcp", "discover", "time"]).ok().stdout;
    assert!(table.contains("time.get_current_time") && table.contains("schema drift: none"), "{table}");

    // A modern-only (2026-era) server: discovered with server/discover and the envelope.
    let modern = crate::harness::ModernOnlyServer::start();
    c.cli(1, &["mcp", "add", "newer", "--endpoint", &modern.url]).ok();
    let m = c.cli(2, &["mcp", "discover", "newer", "-o", "json"]).ok().json();
    let d = &m["discovery"];
    assert_eq!((d["server_name"].as_str(), d["server_version"].as_str()), (Some("modern-only"), Some("3.0.0")), "{m}");
    assert_eq!(d["protocol_version"], "2026-07-28", "{m}");
    let names: Vec<&str> = d["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"shout") && names.contains(&"announce"), "{names:?}");

    // A server that is not there: the command fails and says why.
    let err = c.cli(1, &["mcp", "discover", "nope"]).fails(1);
    assert!(err.contains("discovery of \"nope\" failed") && err.contains("not registered"), "{err}");
}

#[test]
fn a_server_that_comes_back_after_being_unreachable_is_discovered_again_by_the_leader() {
    let c = TestCluster::up(3, &[]);
    let port = crate::harness::free_port();
    let up = FastMcp::start_on(port, &[], &[]);
    let f = c.dir.path().join("svc.yaml");
    let doc = format!(
        "apiVersion: joch.dev/v1alpha1\nkind: MCPServer\nmetadata:\n  name: svc\nspec:\n  endpoint: {{ url: \"{}\" }}\n  discovery: {{ refreshInterval: 1h }}\n",
        up.url
    );
    std::fs::write(&f, doc).unwrap();
    c.cli(1, &["apply", "-f", f.to_str().unwrap()]).ok();
    // Discovered by the leader on registration: the baseline.
    eventually("the first discovery of svc", Duration::from_secs(20), || {
        let d = c.cli(1, &["describe", "mcpserver", "svc", "-o", "json"]).ok().json();
        d["status"]["lastDiscoveryAt"].as_str().map(|_| ())
    });
    let leader = c.leader();
    let follower = c.nodes.iter().position(|n| n.id != leader).unwrap();
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
    let h = [("content-type", "application/json"), ("accept", "application/json, text/event-stream"), c.auth()];
    let call = || crate::harness::http("POST", &format!("{}/mcp/svc", c.nodes[follower].mcp_url), &h, init.as_bytes());
    // The server goes away: the follower cannot connect to it.
    drop(up);
    eventually("svc to be unreachable from a follower", Duration::from_secs(20), || {
        let r = call();
        let m = r.json()["error"]["message"].as_str().unwrap_or_default().to_string();
        (r.status != 200 && m.contains("connect")).then_some(())
    });
    // It comes back, with more tools than before.
    let _back = FastMcp::start_on(port, &[], &[("JOCH_RUGPULL", Path::new("1"))]);
    eventually("svc to answer again", Duration::from_secs(20), || (call().status == 200).then_some(()));
    // The follower told the leader, which discovered it again: the new tools are drift.
    let drifted = eventually("the rediscovery of svc", Duration::from_secs(20), || {
        let j = c.cli(2, &["mcp", "diff", "svc", "-o", "json"]).ok().json();
        (j["drift"].as_array().is_some_and(|d| !d.is_empty())).then_some(j)
    });
    let added: Vec<&str> = drifted["drift"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["field"] == "added")
        .map(|d| d["tool"].as_str().unwrap())
        .collect();
    assert!(added.contains(&"rugpull") && added.contains(&"rename"), "{drifted}");
    let hist = c.cli(1, &["mcp", "history", "svc", "-o", "json"]).ok().json();
    let last = hist.as_array().unwrap().iter().rev().find(|l| l["action"] == "record_discovery").unwrap();
    assert_eq!(last["actor"], format!("node {leader}"), "the leader discovers: {hist}");
}

#[test]
fn a_stdio_server_the_leader_may_not_run_is_discovered_by_a_member_that_may() {
    let mut c = TestCluster::up(3, &[]);
    let leader = c.leader();
    let bin = crate::harness::venv_bin();
    // Only the followers may run the test venv's programs (their own config, restarted).
    for n in (1..=3u64).filter(|&n| n != leader) {
        let cfg = c.dir.path().join(format!("node{n}")).join("joch.yaml");
        let mut text = std::fs::read_to_string(&cfg).unwrap();
        text.push_str(&format!("stdio:\n  allow:\n    - {}\n", bin.display()));
        std::fs::write(&cfg, text).unwrap();
        c.kill9(n);
        c.restart();
    }
    assert_eq!(c.leader(), leader, "restarting followers kept the leader");
    let time_bin = bin.join("mcp-server-time").display().to_string();
    c.cli(leader, &["mcp", "add", "time", "--transport", "stdio", "--command", &time_bin, "--allow-stdio"]).ok();
    // The leader may not run it: a member that may discovers it, and the leader commits that.
    let d = eventually("the discovery of time", Duration::from_secs(30), || {
        let d = c.cli(leader, &["describe", "mcpserver", "time", "-o", "json"]).ok().json();
        d["status"]["lastDiscoveryAt"].as_str().is_some().then_some(d)
    });
    assert_ne!(d["status"]["lastDiscoveryBy"], format!("node {leader}"), "{d}");
    let tools = d["status"]["discoveredTools"].as_array().unwrap();
    assert!(tools.contains(&serde_json::json!("time.get_current_time")), "{d}");
}
