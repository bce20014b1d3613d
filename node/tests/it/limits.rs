//! Bounded, and no panics on input, from the outside: a node at its limits answers 503 with
//! Retry-After (never a hang); a stdio server that misbehaves gets a specific error or is
//! survived; the CLI waits out a settling cluster; `joch dev up` recovers a directory without
//! its cluster.json and leaves no orphans when it fails.

use std::io::{Read, Write};
use std::time::Duration;

use serde_json::json;

use crate::harness::{alive, eventually, http, joch, joch_env, start_extra_node, FastMcp, TestCluster};

const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#;
const ACCEPT: (&str, &str) = ("accept", "application/json, text/event-stream");
const JSON_CT: (&str, &str) = ("content-type", "application/json");

#[test]
fn a_node_at_its_request_limit_answers_503_with_retry_after_at_once() {
    let c = TestCluster::up(1, &[]);
    joch(["cluster", "ca", "issue", "--dir", &c.pki_dir().display().to_string(), "--id", "9"]).ok();
    let (mut node, addrs) = start_extra_node(c.dir.path(), &c.pki_dir(), 9, "proxy: { max_concurrent_requests: 1 }\n");
    let admin = format!("https://{}", addrs["admin"].as_str().unwrap());
    let mcp = format!("http://{}", addrs["mcp"].as_str().unwrap());
    c.run_at(&admin, &["cluster", "init"]).ok();
    let up = FastMcp::start();
    c.run_at(&admin, &["mcp", "add", "heldout", "--endpoint", &up.url]).ok();
    // Its own cluster: its own agent.
    let token =
        c.run_at(&admin, &["agent", "create", "a", "-o", "json"]).ok().json()["token"].as_str().unwrap().to_string();
    let bearer = format!("Bearer {token}");
    let auth = ("authorization", bearer.as_str());
    let init = eventually("the node to serve", Duration::from_secs(20), || {
        let r = http("POST", &format!("{mcp}/mcp/heldout"), &[ACCEPT, JSON_CT, auth], INIT.as_bytes());
        (r.status == 200).then_some(r)
    });
    let sid = init.header("mcp-session-id").unwrap();
    // One request in flight: the session's server stream, held open.
    let host = mcp.strip_prefix("http://").unwrap();
    let mut held = std::net::TcpStream::connect(host).unwrap();
    write!(
        held,
        "GET /mcp/heldout HTTP/1.1\r\nHost: {host}\r\naccept: text/event-stream\r\nauthorization: {bearer}\r\nmcp-session-id: {sid}\r\nmcp-protocol-version: 2025-11-25\r\n\r\n"
    )
    .unwrap();
    let mut head = [0u8; 12];
    held.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200", "the stream is open");
    // The next request is refused at once, with the reason and when to retry.
    let r = http("POST", &format!("{mcp}/mcp/heldout"), &[ACCEPT, JSON_CT, auth], INIT.as_bytes());
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("retry-after").as_deref(), Some("1"), "{r:?}");
    assert_eq!(r.json()["error"]["code"], -32030);
    assert_eq!(r.json()["error"]["data"]["reason"], "node-overloaded");
    assert_eq!(r.json()["error"]["data"]["rule"], "proxy.max_concurrent_requests");
    // When the stream ends, the node serves again.
    drop(held);
    eventually("the node to serve again", Duration::from_secs(10), || {
        let r = http("POST", &format!("{mcp}/mcp/heldout"), &[ACCEPT, JSON_CT, auth], INIT.as_bytes());
        (r.status == 200).then_some(())
    });
    let _ = node.kill();
    let _ = node.wait();
}

#[test]
fn a_misbehaving_stdio_server_gets_a_specific_error_and_never_a_panic() {
    let c = TestCluster::up_stdio(1);
    for (name, mode) in [("odd", "odd-init"), ("noisy", "noisy")] {
        c.add_python_stdio(name, "odd_stdio_server.py", &[mode], &[]);
    }
    let base = &c.node(1).mcp_url;
    // initialize answered with a result that is not an object: the child is refused, said why.
    let r = http("POST", &format!("{base}/mcp/odd"), &[ACCEPT, JSON_CT, c.auth()], INIT.as_bytes());
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(r.json()["error"]["data"]["reason"], "upstream-unavailable");
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("initialize result is not a JSON object"), "{r:?}");
    // A child that sends a 17 MiB line, a non-object message and notifications with odd params
    // before its answer: they are dropped, the answer arrives.
    let r = http("POST", &format!("{base}/mcp/noisy"), &[ACCEPT, JSON_CT, c.auth()], INIT.as_bytes());
    assert_eq!(r.status, 200, "{r:?}");
    let sid = r.header("mcp-session-id").unwrap();
    let call =
        json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{}}}).to_string();
    let h = [ACCEPT, JSON_CT, c.auth(), ("mcp-session-id", sid.as_str()), ("mcp-protocol-version", "2025-11-25")];
    let r = http("POST", &format!("{base}/mcp/noisy"), &h, call.as_bytes());
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["result"]["content"][0]["text"], "still here", "{r:?}");
    // The modern era translates for it too (notifications with a non-object _meta included).
    let m = json!({"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","arguments":{},"_meta":{
        "io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}});
    let h = [
        ACCEPT,
        JSON_CT,
        c.auth(),
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "echo"),
    ];
    let r = http("POST", &format!("{base}/mcp/noisy"), &h, m.to_string().as_bytes());
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["result"]["content"][0]["text"], "still here", "{r:?}");
    assert!(alive(c.node(1).pid), "the node is up");
}

#[test]
fn a_read_waits_out_a_cluster_without_a_quorum_instead_of_failing() {
    let mut c = TestCluster::up(3, &[]);
    c.cli(1, &["mcp", "add", "s", "--endpoint", "http://127.0.0.1:9/mcp"]).ok();
    c.kill9(2);
    c.kill9(3);
    // A read while no quorum exists: it waits (with backoff) rather than exit with a dump...
    let admin = c.node(1).admin_url.clone();
    let env = c.admin_env().map(|(k, v)| (k.to_string(), v.to_string()));
    let reader = std::thread::spawn(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        joch_env(["--server", &admin, "mcp", "ls", "-o", "json"], &env)
    });
    // ...and succeeds once the cluster is back.
    c.restart();
    let out = reader.join().unwrap();
    assert_eq!(out.code, 0, "{out:?}");
    assert!(!out.stderr.contains("QuorumNotEnough"), "{}", out.stderr);
    assert_eq!(out.json()[0]["metadata"]["name"], "s");
}

#[test]
fn dev_up_restarts_a_directory_without_cluster_json_and_leaves_no_orphans_when_it_fails() {
    let mut c = TestCluster::up(3, &[]);
    c.cli(1, &["mcp", "add", "s", "--endpoint", "http://127.0.0.1:9/mcp"]).ok();
    let dir = c.dir.path().display().to_string();
    joch(["dev", "down", "--dir", &dir]).ok();
    c.nodes.clear();
    std::fs::remove_file(c.dir.path().join("cluster.json")).unwrap();
    let out = joch(["dev", "up", "--dir", &dir]).ok();
    assert!(out.stderr.contains("restarting the 3 node(s)"), "{out:?}");
    c.reload();
    let ls = c.cli(1, &["mcp", "ls", "-o", "json"]).ok().json();
    assert_eq!(ls[0]["metadata"]["name"], "s", "the registry is the one on disk: {ls}");

    // A failing start stops the nodes it started: node 2's data directory claims another node.
    joch(["dev", "down", "--dir", &dir]).ok();
    c.nodes.clear();
    let identity = c.dir.path().join("node2/data/identity.json");
    std::fs::write(&identity, r#"{"node_id": 5, "cluster_id": null}"#).unwrap();
    let out = joch(["dev", "up", "--dir", &dir]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(
        out.stderr.contains("node 2 exited during start-up") && out.stderr.contains("belongs to node 5"),
        "{}",
        out.stderr
    );
    c.reload();
    for n in &c.nodes {
        eventually("the nodes started by the failed command to stop", Duration::from_secs(10), || {
            (!alive(n.pid)).then_some(())
        });
    }
}
