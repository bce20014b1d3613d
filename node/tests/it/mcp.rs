//! The data plane end to end: the official MCP Python SDK client and a fastmcp server (both from
//! PyPI) through a real 3-node cluster behind a round-robin "load balancer"; enforcement of the
//! registry; and a specific error for each kind of bad input.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::harness::{http, joch_bin, metric, node_children, recorded, FastMcp, LegacyServer, TestCluster};

fn bases(c: &TestCluster) -> Vec<String> {
    c.nodes.iter().map(|n| n.mcp_url.clone()).collect()
}

fn register(c: &TestCluster, upstream: &FastMcp) {
    c.cli(1, &["mcp", "add", "heldout", "--endpoint", &upstream.url]).ok();
}

#[test]
fn sdk_session_continues_across_every_node() {
    let c = TestCluster::up(3, &[]);
    let up = FastMcp::start();
    register(&c, &up);
    let mut args = vec!["walkthrough".to_string(), "heldout".into()];
    args.extend(bases(&c));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    // The legacy era: one session, created on one node, continued on the others.
    let r = c.sdk_mode("legacy", &argv);
    assert_eq!(r["protocol_version"], "2025-11-25");
    walkthrough_answers(&r);
    // The modern era (negotiated by the SDK in auto mode): stateless, any node.
    let r = c.sdk(&argv);
    assert_eq!(r["protocol_version"], "2026-07-28");
    walkthrough_answers(&r);
    // A server-to-client request (elicitation) on the call's stream reaches the client, whose
    // answer (a POST on whichever node) reaches the upstream session that asked; through the
    // aggregate endpoint too (the request's id names the member).
    let mut elicit_args = vec!["elicit".to_string(), "heldout".into()];
    elicit_args.extend(bases(&c));
    for target in ["heldout", "@heldout"] {
        elicit_args[1] = target.into();
        let r = c.sdk_mode("legacy", &elicit_args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(r["asked"], json!(["Deploy?"]), "{target}: {r}");
        assert_eq!(r["result"], "accept:True", "{target}: {r}");
    }
}

#[track_caller]
fn walkthrough_answers(r: &Value) {
    assert_eq!(r["tools"], json!(["add", "announce", "confirm", "getenv", "slow", "trace"]));
    assert_eq!(r["add"], "3");
    assert_eq!(r["slow"], "done 5");
    assert_eq!(
        r["progress"],
        json!([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0], [4.0, 5.0], [5.0, 5.0]]),
        "progress over SSE, in order"
    );
    assert_eq!(r["resources"], json!(["data://greeting"]));
    assert_eq!(r["read"], "hello from heldout");
    assert_eq!(r["prompts"], json!(["review"]));
    assert_eq!(r["prompt"], "Review this code: x = 1");
    assert_eq!(r["ports"].as_array().unwrap().len(), 3, "one session, served by all three nodes: {r}");
}

#[test]
fn quarantine_through_node_3_is_enforced_on_every_node_and_cuts_open_streams() {
    let c = TestCluster::up(3, &[]);
    let rec = c.dir.path().join("upstream.jsonl");
    let up = FastMcp::start_recording(&[], Some(&rec));
    register(&c, &up);
    let joch = joch_bin().display().to_string();
    let mut args = vec!["quarantine".to_string(), joch, c.node(3).admin_url.clone(), "heldout".into()];
    args.extend(bases(&c));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    // Legacy: the open call is an SSE stream; modern: a plain JSON exchange. Both are cut.
    for mode in ["legacy", "auto"] {
        let _ = std::fs::remove_file(&rec);
        let r = c.sdk_env(mode, &argv, &[("JOCH_RECORD", &rec)]);
        assert_eq!(r["before"], "4");
        assert_eq!(r["quarantine_exit"], 0, "{}", r["quarantine_output"]);
        let calls: Vec<String> = recorded(&rec).into_iter().map(|(t, _)| t).collect();
        assert_eq!(calls, ["add", "slow"], "{mode}: the open call reached the upstream, nothing after the quarantine");
        // The open call (20 s of work) ends with the denial as its answer, right after the ack.
        let slow = &r["slow"];
        assert_eq!(slow["error"]["code"], -32002, "{mode}: {r}");
        assert_eq!(slow["error"]["data"]["reason"], "server-quarantined");
        assert!(slow["ended_after_ack_s"].as_f64().unwrap() < 1.0, "{mode}: cut within a second of the ack: {slow}");
        // The very next call, on each node, is denied with the stable code and data.
        let after = r["after"].as_array().unwrap();
        let mut nodes = BTreeSet::new();
        for a in after {
            let e = &a["error"];
            assert_eq!(e["code"], -32002, "{mode}: {a}");
            assert_eq!(e["data"]["reason"], "server-quarantined");
            assert_eq!(e["data"]["server"], "heldout");
            assert_eq!(e["data"]["rule"], "registry.quarantine");
            assert!(e["message"].as_str().unwrap().contains("e2e: drift"));
            nodes.insert(e["data"]["node"].as_u64().unwrap());
        }
        assert_eq!(nodes, BTreeSet::from([1, 2, 3]));
        c.cli(1, &["mcp", "unquarantine", "heldout"]).ok();
    }
}

#[test]
fn pin_mismatch_denies_until_the_pin_is_fixed() {
    let c = TestCluster::up(3, &[]);
    let up = FastMcp::start();
    register(&c, &up);
    let joch = joch_bin().display().to_string();
    let mut args = vec!["pin".to_string(), joch, c.node(2).admin_url.clone(), "heldout".into(), "9.9.9".into()];
    args.extend(bases(&c));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    for mode in ["legacy", "auto"] {
        let r = c.sdk_mode(mode, &argv);
        assert_eq!(r["before"], "7");
        assert_eq!(r["pin_wrong"], 0);
        for key in ["existing_session", "new_session"] {
            let e = &r[key];
            assert_eq!(e["code"], -32003, "{mode} {key}: {r}");
            assert_eq!(e["data"]["reason"], "version-pin-mismatch");
            assert_eq!(e["data"]["rule"], "mcpserver.spec.security.pinnedVersion");
            assert_eq!(e["message"], "MCP server \"heldout\" is pinned to 9.9.9 but runs 1.4.2");
        }
        assert_eq!(r["pin_right"], 0);
        assert_eq!(r["after_fix"], "10");
    }
}

const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#;
const ACCEPT: (&str, &str) = ("accept", "application/json, text/event-stream");
const JSON_CT: (&str, &str) = ("content-type", "application/json");

fn code(v: &Value) -> i64 {
    v["error"]["code"].as_i64().unwrap_or(0)
}

#[test]
fn bad_input_gets_its_specific_error_and_the_node_keeps_serving() {
    let c = TestCluster::up(1, &[]);
    let up = FastMcp::start();
    register(&c, &up);
    let url = format!("{}/mcp/heldout", c.node(1).mcp_url);
    let post = |headers: &[(&str, &str)], body: &[u8]| {
        let mut h = vec![ACCEPT, JSON_CT, c.auth()];
        h.extend_from_slice(headers);
        http("POST", &url, &h, body)
    };

    let r = post(&[], b"{not json");
    assert_eq!((r.status, code(&r.json())), (400, -32700), "{r:?}");
    let r = post(&[], format!("{}1{}", "[".repeat(200), "]".repeat(200)).as_bytes());
    assert_eq!((r.status, code(&r.json())), (400, -32600), "{r:?}");
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("nesting deeper than 64"));
    let r = post(&[("mcp-protocol-version", "1999-01-01")], INIT.as_bytes());
    assert_eq!((r.status, code(&r.json())), (400, -32022), "{r:?}");
    assert_eq!(r.json()["error"]["data"]["supported"], json!(["2026-07-28", "2025-11-25", "2025-06-18", "2025-03-26"]));
    let big = vec![b' '; 5 << 20];
    let r = post(&[], &big);
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(code(&r.json()), -32010);
    assert_eq!(r.json()["error"]["data"]["reason"], "request-too-large");
    let r = post(&[("origin", "https://evil.example")], INIT.as_bytes());
    assert_eq!((r.status, code(&r.json())), (403, -32011), "{r:?}");

    // A tools/list without a session, or with a forged one.
    let list = br#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;
    let r = post(&[], list);
    assert_eq!((r.status, code(&r.json())), (400, -32007), "{r:?}");
    assert_eq!(r.json()["id"], 2);
    let r = post(&[("mcp-session-id", "j2.0.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")], list);
    assert_eq!((r.status, code(&r.json())), (404, -32006), "{r:?}");
    let r = http("GET", &url, &[ACCEPT, c.auth()], b"");
    assert_eq!((r.status, code(&r.json())), (400, -32007), "{r:?}");

    // An unregistered server: 404 with the deny data, before anything else about the request
    // is settled (no session needed to learn that); joch never contacts anything.
    let r = http("POST", &format!("{}/mcp/nope", c.node(1).mcp_url), &[ACCEPT, JSON_CT, c.auth()], list);
    assert_eq!((r.status, code(&r.json())), (404, -32001), "{r:?}");
    let r = http("GET", &format!("{}/mcp/nope", c.node(1).mcp_url), &[ACCEPT, c.auth()], b"");
    assert_eq!((r.status, code(&r.json())), (404, -32001), "{r:?}");
    let r = http("POST", &format!("{}/mcp/nope", c.node(1).mcp_url), &[ACCEPT, JSON_CT, c.auth()], INIT.as_bytes());
    assert_eq!((r.status, code(&r.json())), (404, -32001), "{r:?}");
    let mut data = r.json()["error"]["data"].clone();
    let exec = data.as_object_mut().and_then(|d| d.remove("execId"));
    assert!(
        exec.as_ref().and_then(Value::as_str).is_some_and(|e| e.starts_with("exec-")),
        "{data}: names its execution"
    );
    assert_eq!(
        data,
        json!({"reason": "server-not-registered", "server": "nope", "node": 1, "rule": "registry.registered"})
    );

    // The modern era: the SDK server's validation ladder, then removed methods.
    let m = |method: &str, version: &str, extra: &str| {
        format!(
            r#"{{"jsonrpc":"2.0","id":5,"method":"{method}","params":{{{extra}"_meta":{{"io.modelcontextprotocol/protocolVersion":"{version}","io.modelcontextprotocol/clientCapabilities":{{}}}}}}}}"#
        )
    };
    let modern = |method: &str, name: Option<&str>, body: &str| {
        let mut h = vec![("mcp-protocol-version", "2026-07-28"), ("mcp-method", method)];
        if let Some(n) = name {
            h.push(("mcp-name", n));
        }
        post(&h, body.as_bytes())
    };
    let r = modern("server/discover", None, r#"{"jsonrpc":"2.0","id":1,"method":"server/discover","params":{}}"#);
    assert_eq!((r.status, code(&r.json())), (400, -32602), "{r:?}");
    let r = modern("tools/call", None, &m("tools/list", "2026-07-28", ""));
    assert_eq!((r.status, code(&r.json())), (400, -32020), "{r:?}");
    assert_eq!(r.json()["error"]["message"], "mcp-method header does not match the request body's method");
    let r =
        modern("tools/call", Some("sub"), &m("tools/call", "2026-07-28", r#""name":"add","arguments":{"a":1,"b":2},"#));
    assert_eq!((r.status, code(&r.json())), (400, -32020), "{r:?}");
    let r = post(
        &[("mcp-protocol-version", "2027-01-01"), ("mcp-method", "tools/list")],
        m("tools/list", "2027-01-01", "").as_bytes(),
    );
    assert_eq!((r.status, code(&r.json())), (400, -32022), "{r:?}");
    let r = modern("ping", None, &m("ping", "2026-07-28", ""));
    assert_eq!((r.status, code(&r.json())), (404, -32601), "{r:?}");
    let r =
        modern("tools/call", Some("add"), &m("tools/call", "2026-07-28", r#""name":"add","arguments":{"a":1,"b":2},"#));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["result"]["content"][0]["text"], "3", "{r:?}");
    let r = modern("tools/list", None, &m("tools/list", "2026-07-28", ""));
    assert_eq!(r.status, 200, "{r:?}");
    assert_ne!(r.json()["result"]["cacheScope"], "public", "lists never leave joch cacheable as public");

    // Through all that, the node keeps serving: a real session with a batch refused mid-way.
    let r = post(&[], INIT.as_bytes());
    assert_eq!(r.status, 200, "{r:?}");
    let sid = r.header("mcp-session-id").expect("a session id");
    assert!(sid.starts_with("j2.0."), "sealed with key 0: {sid}");
    let batch = br#"[{"jsonrpc":"2.0","id":3,"method":"tools/list"}]"#;
    let r = post(&[("mcp-session-id", &sid), ("mcp-protocol-version", "2025-11-25")], batch);
    assert_eq!((r.status, code(&r.json())), (400, -32600), "{r:?}");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("batches are not allowed at protocol version 2025-11-25"));
    let r = post(&[("mcp-session-id", &sid), ("mcp-protocol-version", "2025-11-25")], list);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("\"name\":\"add\""), "{r:?}");
    // A session is bound to its server.
    c.cli(1, &["mcp", "add", "other", "--endpoint", &up.url]).ok();
    let r = http(
        "POST",
        &format!("{}/mcp/other", c.node(1).mcp_url),
        &[ACCEPT, JSON_CT, c.auth(), ("mcp-session-id", &sid)],
        list,
    );
    assert_eq!((r.status, code(&r.json())), (404, -32006), "{r:?}");
}

/// Initializes a raw session on `base`; returns the session id.
fn raw_session(c: &TestCluster, base: &str) -> String {
    let r = http("POST", &format!("{base}/mcp/heldout"), &[ACCEPT, JSON_CT, c.auth()], INIT.as_bytes());
    assert_eq!(r.status, 200, "{r:?}");
    r.header("mcp-session-id").expect("session id")
}

fn raw_list(c: &TestCluster, base: &str, sid: &str) -> crate::harness::HttpReply {
    let list = br#"{"jsonrpc":"2.0","id":9,"method":"tools/list"}"#;
    http(
        "POST",
        &format!("{base}/mcp/heldout"),
        &[ACCEPT, JSON_CT, c.auth(), ("mcp-session-id", sid), ("mcp-protocol-version", "2025-11-25")],
        list,
    )
}

#[test]
fn a_node_cut_off_fails_closed_after_its_lease_and_serves_again_after_healing() {
    use std::time::{Duration, Instant};

    use crate::harness::{eventually, Partition};

    let c = TestCluster::up_stdio(3);
    let up = FastMcp::start();
    register(&c, &up);
    let time_bin = crate::harness::python().parent().unwrap().join("mcp-server-time").display().to_string();
    c.cli(1, &["mcp", "add", "time", "--transport", "stdio", "--command", &time_bin, "--allow-stdio"]).ok();
    // Cut off the leader: the hard case (it cannot tell it was deposed).
    let cut_id = c.leader();
    let cut = c.node(cut_id).clone();
    let other = c.nodes.iter().find(|n| n.id != cut_id).unwrap().clone();
    let sid = raw_session(&c, &cut.mcp_url);
    assert_eq!(raw_list(&c, &cut.mcp_url, &sid).status, 200);
    // A stdio child running on the cut node.
    let r = http("POST", &format!("{}/mcp/time", cut.mcp_url), &[ACCEPT, JSON_CT, c.auth()], INIT.as_bytes());
    assert_eq!(r.status, 200, "{r:?}");
    assert!(node_children(&c, "mcp-server-time").iter().any(|(_, n)| *n == cut_id), "the child runs on the cut node");

    let mut partition = Partition::cut(&cut.mesh_addr);
    let t0 = Instant::now();
    let stale = eventually("the cut-off node to fail closed", Duration::from_secs(30), || {
        let r = raw_list(&c, &cut.mcp_url, &sid);
        (r.status == 503).then_some(r)
    });
    let took = t0.elapsed();
    // It cannot know whether its stdio servers were quarantined meanwhile: their children stop.
    eventually("the stale node's stdio child to stop", Duration::from_secs(10), || {
        (!node_children(&c, "mcp-server-time").iter().any(|(_, n)| *n == cut_id)).then_some(())
    });
    let e = stale.json();
    assert_eq!(e["error"]["code"], -32005, "{stale:?}");
    assert_eq!(e["error"]["data"]["reason"], "control-plane-stale");
    assert_eq!(e["error"]["data"]["node"], cut_id);
    // Lease 6 s (default); allow for the last contact and polling.
    assert!(took <= Duration::from_secs(10), "denied {took:?} after the cut; the lease is 6 s");
    let ready = http("GET", &format!("{}/readyz", cut.mcp_url), &[], b"");
    assert_eq!(ready.status, 503, "{ready:?}");

    // The majority side elects a leader and keeps serving the same session (sealed id).
    eventually("the majority to serve", Duration::from_secs(30), || {
        (raw_list(&c, &other.mcp_url, &sid).status == 200).then_some(())
    });
    // A quarantine committed while the node is cut off...
    let q = c.cli(other.id, &["mcp", "quarantine", "heldout", "--reason", "during partition", "-o", "json"]);
    assert_eq!(q.code, 3, "acknowledged by the majority, not by the cut-off node: {q:?}");

    // ...is enforced by that node as soon as it is back: it never serves in between.
    partition.heal();
    let back = eventually("the healed node to answer again", Duration::from_secs(30), || {
        let r = raw_list(&c, &cut.mcp_url, &sid);
        (r.status != 503).then_some(r)
    });
    assert_eq!(back.status, 403, "{back:?}");
    assert_eq!(back.json()["error"]["data"]["reason"], "server-quarantined");
    c.cli(other.id, &["mcp", "unquarantine", "heldout"]).ok();
    eventually("the healed node to serve", Duration::from_secs(10), || {
        (raw_list(&c, &cut.mcp_url, &sid).status == 200).then_some(())
    });
}

#[test]
fn stdio_server_runs_once_on_the_owner_is_reached_through_the_mesh_and_restarts() {
    use std::time::Duration;

    use crate::harness::{eventually, python};

    let c = TestCluster::up_stdio(3);
    let server_bin = python().parent().unwrap().join("mcp-server-time").display().to_string();
    c.cli(1, &["mcp", "add", "time", "--transport", "stdio", "--command", &server_bin, "--allow-stdio"]).ok();
    c.cli(1, &["mcp", "add", "time-unsafe", "--transport", "stdio", "--command", &server_bin]).ok();

    let mut args = vec!["stdio".to_string(), "time".into()];
    args.extend(bases(&c));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    // Legacy era: one session, owned by the node that created it; the others forward to it.
    let r = c.sdk_mode("legacy", &argv);
    assert_eq!(r["protocol_version"], "2025-11-25");
    assert_eq!(r["tools"], json!(["convert_time", "get_current_time"]));
    assert_eq!(r["zones"], json!(["UTC", "UTC", "UTC"]));
    assert_eq!(r["tokyo"], "21:00");
    assert_eq!(r["ports"].as_array().unwrap().len(), 3, "the session was served through every node: {r}");
    // One child in the whole cluster: on the node that created the session; the others forwarded.
    let children = node_children(&c, "mcp-server-time");
    assert_eq!(children.len(), 1, "{children:?}");
    let (pid, owner) = children[0];
    let forwarded: u64 =
        c.nodes.iter().filter(|n| n.id != owner).map(|n| metric(&n.metrics_url, "joch_mcp_forwarded_total")).sum();
    assert!(forwarded >= 2, "requests reached the owner over the mesh ({forwarded})");

    // The child dies: the next session gets a new one.
    std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    eventually("the dead child to be gone", Duration::from_secs(10), || {
        (node_children(&c, "mcp-server-time").iter().all(|(p, _)| *p != pid)).then_some(())
    });
    let r = c.sdk_mode("legacy", &argv);
    assert_eq!(r["zones"], json!(["UTC", "UTC", "UTC"]));
    let again = node_children(&c, "mcp-server-time");
    assert_eq!(again.len(), 1, "{again:?}");
    assert_ne!(again[0].0, pid, "restarted");

    // Modern era (the SDK negotiates it): stateless, so each node serves from its own child.
    let r = c.sdk(&argv);
    assert_eq!(r["protocol_version"], "2026-07-28", "{r}");
    assert_eq!(r["zones"], json!(["UTC", "UTC", "UTC"]));
    assert_eq!(r["tokyo"], "21:00");
    let owners: BTreeSet<u64> = node_children(&c, "mcp-server-time").iter().map(|(_, n)| *n).collect();
    assert_eq!(owners, BTreeSet::from([1, 2, 3]), "one child per node");

    // Quarantine stops the child (stdin closed, then SIGTERM, then SIGKILL).
    c.cli(2, &["mcp", "quarantine", "time", "--reason", "test"]).ok();
    eventually("the quarantined server's child to stop", Duration::from_secs(10), || {
        node_children(&c, "mcp-server-time").is_empty().then_some(())
    });

    // A stdio server whose record does not allow stdio is refused, and nothing is started.
    let r =
        http("POST", &format!("{}/mcp/time-unsafe", c.node(3).mcp_url), &[ACCEPT, JSON_CT, c.auth()], INIT.as_bytes());
    assert_eq!((r.status, code(&r.json())), (403, -32004), "{r:?}");
    assert_eq!(r.json()["error"]["data"]["rule"], "mcpserver.spec.security.allowStdio");
    assert!(node_children(&c, "mcp-server-time").is_empty());
}

#[test]
fn aggregate_endpoint_names_routes_and_drops_a_quarantined_server_alone() {
    use crate::harness::python;

    let c = TestCluster::up_stdio(3);
    let up = FastMcp::start();
    register(&c, &up);
    let server_bin = python().parent().unwrap().join("mcp-server-time").display().to_string();
    c.cli(2, &["mcp", "add", "time", "--transport", "stdio", "--command", &server_bin, "--allow-stdio"]).ok();
    let joch = joch_bin().display().to_string();
    let mut args = vec!["aggregate".to_string(), joch, c.node(3).admin_url.clone()];
    args.extend(bases(&c));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    for mode in ["legacy", "auto"] {
        let r = c.sdk_mode(mode, &argv);
        let era = if mode == "legacy" { "2025-11-25" } else { "2026-07-28" };
        assert_eq!(r["protocol_version"], era, "{r}");
        assert_eq!(
            r["tools"],
            json!([
                "heldout.add",
                "heldout.announce",
                "heldout.confirm",
                "heldout.getenv",
                "heldout.slow",
                "heldout.trace",
                "time.convert_time",
                "time.get_current_time"
            ]),
            "{mode}: {r}"
        );
        assert_eq!(r["add"], "42");
        assert_eq!(r["slow"], "done 3");
        // The member's progress is relayed event by event through /mcp, in both eras.
        assert_eq!(r["progress"], json!([[1.0, 3.0], [2.0, 3.0], [3.0, 3.0]]), "{mode}: {r}");
        assert_eq!(r["time"], "UTC");
        assert_eq!(r["prompts"], json!(["heldout.review"]));
        assert_eq!(r["prompt"], "Review this code: y");
        assert_eq!(r["resources"], json!(["joch+heldout:data://greeting"]));
        assert_eq!(r["read"], "hello from heldout");
        assert_eq!(r["quarantine_exit"], 0);
        assert_eq!(
            r["tools_after"],
            json!(["time.convert_time", "time.get_current_time"]),
            "{mode}: the quarantined server drops out alone"
        );
        assert_eq!(r["add_after"]["code"], -32002, "{mode}: {r}");
        assert_eq!(r["add_after"]["data"]["server"], "heldout");
        assert_eq!(r["time_after"], "UTC");
        assert_eq!(r["ports"].as_array().unwrap().len(), 3);
        c.cli(1, &["mcp", "unquarantine", "heldout"]).ok();
    }
}

#[test]
fn slow_and_oversized_clients_are_cut_off() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};

    let c = TestCluster::up(1, &[]);
    let addr = c.node(1).mcp_url.strip_prefix("http://").unwrap().to_string();
    let stall = |prefix: &'static [u8]| {
        let addr = addr.clone();
        std::thread::spawn(move || {
            let mut s = std::net::TcpStream::connect(&addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
            s.write_all(prefix).unwrap();
            let t = Instant::now();
            let mut got = Vec::new();
            let _ = s.read_to_end(&mut got);
            (t.elapsed(), String::from_utf8_lossy(&got).into_owned())
        })
    };
    // Headers never finished: the connection is closed after the client timeout (10 s default).
    let headers = stall(b"POST /mcp/x HTTP/1.1\r\nHost: x\r\n");
    // A body that never completes: 408 with the JSON-RPC error.
    let body = stall(
        b"POST /mcp/x HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"a\"",
    );
    let (t, got) = headers.join().unwrap();
    assert!(t >= Duration::from_secs(9) && t < Duration::from_secs(30), "closed after {t:?}: {got:?}");
    let (t, got) = body.join().unwrap();
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(got.contains("\"code\":-32012") && got.contains("request-timeout"), "{got}");
    assert!(t >= Duration::from_secs(9) && t < Duration::from_secs(30), "answered after {t:?}");

    // Oversized headers: 431 at once.
    let big = "a".repeat(1 << 20);
    let r = http("POST", &format!("{}/mcp/x", c.node(1).mcp_url), &[("x-big", &big)], b"{}");
    assert_eq!(r.status, 431, "{r:?}");
    // And the node still serves.
    assert_eq!(http("GET", &format!("{}/healthz", c.node(1).mcp_url), &[], b"").status, 200);
}

#[test]
fn both_eras_reach_modern_legacy_only_and_modern_only_upstreams() {
    let c = TestCluster::up(3, &[]);
    let modern = FastMcp::start();
    let legacy = LegacyServer::start();
    register(&c, &modern);
    c.cli(2, &["mcp", "add", "old", "--endpoint", &legacy.url]).ok();
    for (server, tools, call, version) in [
        ("heldout", json!(["add", "announce", "confirm", "getenv", "slow", "trace"]), "3", "1.4.2"),
        ("old", json!(["announce", "confirm", "echo", "slow", "streams"]), "hi", "0.9.0"),
    ] {
        let mut args = vec!["era".to_string(), server.into()];
        args.extend(bases(&c));
        let r = c.sdk(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(r["protocol_version"], "2026-07-28", "{server}: {r}");
        assert_eq!(r["modern"], true);
        assert_eq!(r["server_version"], version, "{server}: the version reaches the client in _meta");
        assert_eq!(r["tools"], tools);
        assert_eq!(r["call"], call);
        assert_eq!(r["ports"].as_array().unwrap().len(), 3);
    }
    // A modern caller listens (`subscriptions/listen`) to the legacy-only server: joch opens a
    // session of its own upstream, relays the kinds asked for from its stream, and closes it
    // when the listener goes.
    let r = c.sdk(&["listen", "old", &c.node(1).mcp_url]);
    assert_eq!(r["honored"], json!({"toolsListChanged": true, "promptsListChanged": true}), "{r}");
    assert_eq!(r["announce"], "announced", "{r}");
    assert_eq!(r["event"], "ToolsListChanged", "{r}");
    assert_eq!(r["upstream_streams_after"], "0", "{r}");

    // Modern callers of the legacy-only server get its progress as it happens (relayed SSE).
    let mut args = vec!["progress".to_string(), "old".into()];
    args.extend(bases(&c));
    let r = c.sdk(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(r["protocol_version"], "2026-07-28", "{r}");
    for call in r["calls"].as_array().unwrap() {
        assert_eq!(call["result"], "done 10", "{r}");
        assert_eq!(call["events"], 10, "{r}");
        assert!(call["first_event_before_end_s"].as_f64().unwrap() > 0.25, "{r}");
    }

    // Legacy callers reach a modern-only upstream: joch answers initialize from its discover
    // result and adds the envelope and routing headers to every request.
    let newer = crate::harness::ModernOnlyServer::start();
    c.cli(3, &["mcp", "add", "newer", "--endpoint", &newer.url]).ok();
    let mut args = vec!["era".to_string(), "newer".into()];
    args.extend(bases(&c));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    for (mode, era) in [("legacy", "2025-11-25"), ("auto", "2026-07-28")] {
        let r = c.sdk_mode(mode, &argv);
        assert_eq!(r["protocol_version"], era, "{mode}: {r}");
        assert_eq!(r["server_version"], "3.0.0");
        assert_eq!(r["tools"], json!(["announce", "confirm", "shout", "slow", "streams"]));
        assert_eq!(r["call"], "HI");
        assert_eq!(r["ports"].as_array().unwrap().len(), 3);
    }
    // Their session's stream (GET) is a `subscriptions/listen` to the upstream, relayed as the
    // plain notifications of the legacy era; it is closed upstream when the session ends.
    let mut args = vec!["notify".to_string(), "newer".into()];
    args.extend(bases(&c));
    let r = c.sdk_mode("legacy", &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(r["sdk_saw_list_changed"], true, "{r}");
    let r = c.sdk(&["listen", "newer", &c.node(2).mcp_url]);
    assert_eq!(r["upstream_streams_after"], "0", "the legacy session's listen was closed upstream: {r}");
    // And they get its progress as it happens: its SSE answer is relayed event by event.
    let mut args = vec!["progress".to_string(), "newer".into()];
    args.extend(bases(&c));
    let r = c.sdk_mode("legacy", &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(r["protocol_version"], "2025-11-25", "{r}");
    for call in r["calls"].as_array().unwrap() {
        assert_eq!(call["result"], "done 10", "{r}");
        assert_eq!(call["events"], 10, "{r}");
        assert!(call["first_event_before_end_s"].as_f64().unwrap() > 0.25, "{r}");
    }

    // Server-to-client requests pass where caller and upstream speak the same era: elicitation
    // on a legacy session's call stream; an input_required result and the SDK's retry in the
    // modern era. Across a translation joch does not translate them yet, and says so instead of
    // leaving the upstream or the caller waiting.
    let elicit = |target: &str, mode: &str| {
        let mut a = vec!["elicit".to_string(), target.into()];
        a.extend(bases(&c));
        c.sdk_mode(mode, &a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    for (target, mode) in [("old", "legacy"), ("newer", "auto")] {
        let r = elicit(target, mode);
        assert_eq!(r["result"], "accept:True", "{target} {mode}: {r}");
        assert_eq!(r["asked"], json!(["Deploy?"]), "{target} {mode}: {r}");
    }
    let r = elicit("old", "auto");
    assert_eq!(r["protocol_version"], "2026-07-28", "{r}");
    assert!(r["result"].as_str().unwrap().starts_with("error: elicitation/create cannot reach this caller"), "{r}");
    assert_eq!(r["asked"], json!([]), "{r}");
    let r = elicit("newer", "legacy");
    assert_eq!(r["error"]["code"], -32603, "{r}");
    assert_eq!(r["error"]["data"]["reason"], "input-required-not-translated", "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("elicitation/create"), "{r}");

    // A pin is enforced on modern callers too, before anything is forwarded.
    c.cli(1, &["mcp", "pin", "old", "--to", "1.0.0"]).ok();
    let body = r#"{"jsonrpc":"2.0","id":5,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}"#;
    let r = http(
        "POST",
        &format!("{}/mcp/old", c.node(3).mcp_url),
        &[ACCEPT, JSON_CT, c.auth(), ("mcp-protocol-version", "2026-07-28"), ("mcp-method", "tools/list")],
        body.as_bytes(),
    );
    assert_eq!((r.status, code(&r.json())), (403, -32003), "{r:?}");
    assert_eq!(r.json()["error"]["message"], "MCP server \"old\" is pinned to 1.0.0 but runs 0.9.0");
}

#[test]
fn progress_of_a_stdio_call_streams_live_through_the_mesh() {
    let c = TestCluster::up_stdio(3);
    // fastmcp itself, as a stdio server: its `slow` tool reports progress every 50 ms.
    register_stdio_fastmcp(&c);
    let mut args = vec!["progress".to_string(), "held".into()];
    args.extend(bases(&c));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    // Legacy: the session's owner runs the child, the others forward over the mesh. Modern: each
    // node's own child, through the translation. Either way progress streams.
    for (mode, era) in [("legacy", "2025-11-25"), ("auto", "2026-07-28")] {
        let r = c.sdk_mode(mode, &argv);
        assert_eq!(r["protocol_version"], era, "{r}");
        for call in r["calls"].as_array().unwrap() {
            assert_eq!(call["result"], "done 10", "{mode}: {r}");
            assert_eq!(call["events"], 10, "{mode}: {r}");
            // The first progress event arrives while the call still runs (about 0.5 s), not with its answer.
            assert!(call["first_event_before_end_s"].as_f64().unwrap() > 0.25, "{mode}: {r}");
        }
    }
    // A server-to-client request from the shared child is refused with a reason the tool reports.
    let mut args = vec!["elicit".to_string(), "held".into()];
    args.extend(bases(&c));
    let r = c.sdk_mode("legacy", &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(r["is_error"], true, "{r}");
    assert!(r["result"].as_str().unwrap().contains("cannot be attributed to one agent's call"), "{r}");
    assert_eq!(r["asked"], json!([]), "{r}");
    // And the calls did cross the mesh: the session belongs to one node, the balancer spread them.
    let forwarded: u64 = c.nodes.iter().map(|n| metric(&n.metrics_url, "joch_mcp_forwarded_total")).sum();
    assert!(forwarded >= 1, "no request was forwarded to the session's owner");
}

/// Registers fastmcp itself as a stdio server named `held` (allowed stdio).
fn register_stdio_fastmcp(c: &TestCluster) {
    c.add_python_stdio("held", "fastmcp_server.py", &["stdio"], &[]);
}

#[test]
fn a_stdio_servers_own_notifications_reach_the_session_stream_and_resume_after_last_event_id() {
    let c = TestCluster::up_stdio(3);
    register_stdio_fastmcp(&c);
    let mut args = vec!["notify".to_string(), "held".into()];
    args.extend(bases(&c));
    let r = c.sdk_mode("legacy", &args.iter().map(String::as_str).collect::<Vec<_>>());
    // The SDK client's GET stream (through whichever node) carries the list change the shared
    // child announced during the session's call.
    assert_eq!(r["announce"], "announced", "{r}");
    assert_eq!(r["sdk_saw_list_changed"], true, "{r}");
    assert!(r["sdk_methods"].as_array().unwrap().contains(&json!("GET")), "{r}");
    args[0] = "replay".into();
    let r = c.sdk_mode("legacy", &args.iter().map(String::as_str).collect::<Vec<_>>());
    // Raw: the stream opened on node 2 (session of node 1) gets the announcement made via node 3.
    assert_eq!(r["get_status"], 200, "{r}");
    assert_eq!(r["first"][0]["data"]["method"], "notifications/tools/list_changed", "{r}");
    let first = r["first"][0]["id"].as_str().expect("events carry ids").to_string();
    // Two announcements made while no stream was open come back on node 3 after Last-Event-ID.
    let replayed = r["replayed"].as_array().unwrap();
    assert_eq!(replayed.len(), 2, "{r}");
    let n = |id: &str| id.rsplit_once('-').and_then(|(_, n)| n.parse::<u64>().ok()).unwrap();
    assert_eq!(
        replayed.iter().map(|e| n(e["id"].as_str().unwrap())).collect::<Vec<_>>(),
        vec![n(&first) + 1, n(&first) + 2]
    );
    assert!(replayed.iter().all(|e| e["data"]["method"] == "notifications/tools/list_changed"), "{r}");
    // DELETE ends the session everywhere: its id gets 404 on every node afterwards.
    assert_eq!(r["delete"], 200, "{r}");
    assert_eq!(r["after_delete"], 404, "{r}");
    assert_eq!(r["get_after_delete"], 404, "{r}");

    // The modern era has no session stream: a caller listens (`subscriptions/listen`) and gets
    // the changes of the node's child it asked for, acknowledged first, tagged with its id.
    let r = c.sdk(&["listen", "held", &c.node(2).mcp_url]);
    assert_eq!(r["protocol_version"], "2026-07-28", "{r}");
    assert_eq!(r["honored"], json!({"toolsListChanged": true, "promptsListChanged": true}), "{r}");
    assert_eq!(r["announce"], "announced", "{r}");
    assert_eq!(r["event"], "ToolsListChanged", "{r}");
}

#[test]
fn a_call_whose_stream_the_server_closes_resumes_with_last_event_id_on_another_node() {
    let c = TestCluster::up(3, &[]);
    let up = FastMcp::start_with(&["1.4.2", "resumable"]);
    register(&c, &up);
    let mut args = vec!["resume".to_string(), "heldout".into()];
    args.extend(bases(&c));
    let r = c.sdk_mode("legacy", &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(r["result"], "resumed 10", "{r}");
    // Every progress event arrives once, in order, across the break.
    assert_eq!(r["progress"], json!([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]), "{r}");
    // Besides the session's stream GET, the SDK resumed the call with a GET (Last-Event-ID),
    // which the balancer sent to whichever node was next.
    let gets = r["requests"].as_array().unwrap().iter().filter(|e| e["method"] == "GET").count();
    assert!(gets >= 2, "a stream GET and a resuming GET: {r}");
}

#[test]
fn the_aggregate_stream_merges_every_members_own_notifications() {
    let c = TestCluster::up_stdio(3);
    register_stdio_fastmcp(&c);
    let legacy = LegacyServer::start();
    c.cli(2, &["mcp", "add", "old", "--endpoint", &legacy.url]).ok();
    let mut args = vec!["aggregate_notify".to_string()];
    args.extend(bases(&c));
    let r = c.sdk_mode("legacy", &args.iter().map(String::as_str).collect::<Vec<_>>());
    // The stdio member's announcement is routed by its child's node (the session's owner); the
    // HTTP member's comes on the member session's own upstream stream. Both reach the one GET.
    assert_eq!(r["held.announce"], "announced", "{r}");
    assert_eq!(r["held.announce seen"], 1, "{r}");
    assert_eq!(r["old.announce"], "announced", "{r}");
    assert_eq!(r["old.announce seen"], 1, "{r}");
    assert!(r["methods"].as_array().unwrap().contains(&json!("GET")), "{r}");
    // The modern era: one `subscriptions/listen` on /mcp listens to every member (the stdio one
    // through this node's child, the legacy-only one through a session of its own) behind one
    // acknowledgement.
    let r = c.sdk(&["aggregate_listen", &c.node(2).mcp_url]);
    assert_eq!(r["protocol_version"], "2026-07-28", "{r}");
    assert_eq!(r["honored"], json!({"toolsListChanged": true}), "{r}");
    assert_eq!(r["held.announce event"], "ToolsListChanged", "{r}");
    assert_eq!(r["old.announce event"], "ToolsListChanged", "{r}");
    // When the agent goes (closing its stream, then DELETE), the member's stream upstream closes.
    crate::harness::eventually("the member's upstream stream to close", std::time::Duration::from_secs(10), || {
        let r = c.sdk(&["listen", "old", &c.node(1).mcp_url]);
        (r["upstream_streams_after"] == "0").then_some(())
    });
}

#[test]
fn a_shared_stdio_child_sends_resource_updates_to_subscribers_only_and_hears_the_last_unsubscribe() {
    use crate::harness::{e2e, python};
    let c = TestCluster::up_stdio(3);
    let py = python().display().to_string();
    let script = e2e("subscribe_server.py").display().to_string();
    c.cli(1, &["mcp", "add", "notes", "--transport", "stdio", "--command", &py, "--arg", &script, "--allow-stdio"])
        .ok();
    let mut args = vec!["subscribe".to_string(), "notes".into()];
    args.extend(bases(&c));
    let r = c.sdk_mode("legacy", &args.iter().map(String::as_str).collect::<Vec<_>>());
    // Two sessions on one child (one owner node; their requests spread over all three nodes).
    assert_eq!(r["b_got_b"], true, "the subscriber gets the update: {r}");
    assert_eq!(r["a_got_b"], false, "a session that did not subscribe does not: {r}");
    assert_eq!(r["both_got_a"], true, "{r}");
    // a unsubscribed from note://a, but b still holds it: the child was not told.
    assert_eq!(r["child_after_a_unsubscribed"], "note://a,note://b", "{r}");
    // b's session ended: the child was told to drop both.
    assert_eq!(r["child_after_b_ended"], "", "{r}");
}
