//! Upstream credentials and secrets from the outside: the upstream sees the secret joch injects
//! and never the agent's token; OAuth client credentials are fetched once per node, cached and
//! refreshed before expiry; a stdio child gets a secret by reference and its stderr does not
//! carry it into the node's log; no value is ever stored or shown in the clear; a node runs only
//! the stdio commands its own config allows.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{eventually, http, node_children, recorded_headers, FastMcp, TestCluster};

const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#;
const ACCEPT: (&str, &str) = ("accept", "application/json, text/event-stream");
const JSON_CT: (&str, &str) = ("content-type", "application/json");

/// A raw legacy session on `server` through node `node`, as `dev-agent`.
struct Session<'a> {
    c: &'a TestCluster,
    url: String,
    sid: String,
}

impl<'a> Session<'a> {
    fn open(c: &'a TestCluster, node: u64, server: &str) -> Session<'a> {
        let url = format!("{}/mcp/{server}", c.node(node).mcp_url);
        let r = http("POST", &url, &[ACCEPT, JSON_CT, c.auth()], INIT.as_bytes());
        assert_eq!(r.status, 200, "{r:?}");
        Session { c, url, sid: r.header("mcp-session-id").unwrap() }
    }

    fn call(&self, tool: &str, args: Value) -> crate::harness::HttpReply {
        let body = json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":tool,"arguments":args}});
        let h = [ACCEPT, JSON_CT, self.c.auth(), ("mcp-session-id", &self.sid), ("mcp-protocol-version", "2025-11-25")];
        http("POST", &self.url, &h, body.to_string().as_bytes())
    }
}

/// Every file under `dir` that contains `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if std::fs::read(&p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle)) {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

/// The nodes' data directories and logs.
fn node_files(c: &TestCluster) -> Vec<std::path::PathBuf> {
    c.nodes.iter().map(|n| c.dir.path().join(format!("node{}", n.id))).collect()
}

#[test]
fn the_upstream_gets_the_secret_never_the_agents_token_and_no_value_is_kept_in_the_clear() {
    // Snapshots early, so they are searched too.
    let c = TestCluster::up(3, &["--snapshot-after-logs", "5"]);
    let headers = c.dir.path().join("headers.jsonl");
    let up = FastMcp::start_env(&[], &[("JOCH_RECORD_HEADERS", &headers)]);
    let value = "ghp_UpstreamSecretValue_4f1c9a";
    c.cli(2, &["secret", "set", "gh", "--from-literal", &format!("token={value}")]).ok();
    c.cli(1, &["mcp", "add", "heldout", "--endpoint", &up.url, "--auth", "bearer", "--secret-ref", "gh"]).ok();
    // Registering is not fleet-acknowledged: a linearizable read through node 3 waits until it
    // applied the registration.
    c.cli(3, &["describe", "mcpserver", "heldout"]).ok();

    let s = Session::open(&c, 3, "heldout");
    let r = s.call("add", json!({"a": 1, "b": 2}));
    assert_eq!(r.status, 200, "{r:?}");
    let seen = recorded_headers(&headers);
    let mcp: Vec<&Value> = seen.iter().filter(|(_, path, _)| path == "/mcp").map(|(_, _, h)| h).collect();
    assert!(mcp.len() >= 2, "initialize, the call: {seen:?}");
    for h in &mcp {
        assert_eq!(h["authorization"], format!("Bearer {value}"), "{h}");
        assert!(!h.to_string().contains(&c.agent_token), "the agent's token reached the upstream: {h}");
    }

    // Nothing shows the value: describe, yaml, the secret list, history.
    for args in [
        &["describe", "mcpserver", "heldout", "-o", "json"][..],
        &["get", "mcpservers", "-o", "yaml"],
        &["secret", "ls", "-o", "json"],
        &["secret", "ls"],
        &["mcp", "history", "heldout", "-o", "json"],
    ] {
        let out = c.cli(1, args).ok();
        assert!(!out.stdout.contains(value) && !out.stderr.contains(value), "{args:?} shows the secret: {out:?}");
    }
    let ls = c.cli(1, &["secret", "ls", "-o", "json"]).ok().json();
    assert_eq!(
        (ls[0]["name"].clone(), ls[0]["keys"].clone(), ls[0]["version"].clone()),
        (json!("gh"), json!(["token"]), json!(1))
    );

    // A new value is used from the next call on.
    let rotated = "ghp_RotatedSecretValue_77aa01";
    c.cli(1, &["secret", "set", "gh", "--from-literal", &format!("token={rotated}")]).ok();
    assert_eq!(s.call("add", json!({"a": 2, "b": 2})).status, 200);
    let last = recorded_headers(&headers).pop().unwrap();
    assert_eq!(last.2["authorization"], format!("Bearer {rotated}"));

    // A server whose secret does not exist: a specific error, nothing sent.
    c.cli(1, &["mcp", "add", "nokey", "--endpoint", &up.url, "--auth", "api_key", "--secret-ref", "missing"]).ok();
    let r = http("POST", &format!("{}/mcp/nokey", c.node(1).mcp_url), &[ACCEPT, JSON_CT, c.auth()], INIT.as_bytes());
    assert_eq!((r.status, r.json()["error"]["code"].as_i64()), (502, Some(-32042)), "{r:?}");
    assert_eq!(r.json()["error"]["data"]["rule"], "mcpserver.spec.auth");
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("secret \"missing\" does not exist"), "{r:?}");

    // `kind: Secret` applies too (stringData, or data in base64), sealed the same way.
    let applied = "sk_AppliedManifestValue_91d2";
    let manifest = c.dir.path().join("secret.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: joch.dev/v1alpha1\nkind: Secret\nmetadata:\n  name: from-manifest\ntype: Opaque\n\
             stringData:\n  token: {applied}\ndata:\n  other: {}\n",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "second-value")
        ),
    )
    .unwrap();
    let out = c.cli(1, &["apply", "-f", manifest.to_str().unwrap()]).ok();
    assert!(out.stdout.contains("secret/from-manifest configured") && !out.stdout.contains(applied), "{out:?}");
    let ls = c.cli(1, &["secret", "ls", "-o", "json"]).ok().json();
    let entry = ls.as_array().unwrap().iter().find(|s| s["name"] == "from-manifest").cloned().unwrap();
    assert_eq!(entry["keys"], json!(["other", "token"]), "{ls}");

    // Neither value is in any node's files (RocksDB, its WAL and snapshots, logs), while what
    // is stored in the clear there (the endpoint) is: the search finds what is there.
    for dir in node_files(&c) {
        assert!(!files_containing(&dir, up.url.as_bytes()).is_empty(), "control: the endpoint is in {}", dir.display());
        for v in [value, rotated, applied] {
            let found = files_containing(&dir, v.as_bytes());
            assert!(found.is_empty(), "a secret value in the clear: {found:?}");
        }
    }
}

#[test]
fn oauth_client_credentials_are_fetched_once_cached_and_refreshed_before_expiry() {
    let c = TestCluster::up(1, &[]);
    let headers = c.dir.path().join("headers.jsonl");
    let ttl = Path::new("3");
    let client = Path::new("joch-client:s3cret-client-secret");
    let up = FastMcp::start_env(
        &[],
        &[("JOCH_RECORD_HEADERS", &headers), ("JOCH_OAUTH_TTL", ttl), ("JOCH_OAUTH_CLIENT", client)],
    );
    let token_url = up.url.replace("/mcp", "/token");
    let set_client = |secret: &str| {
        let secret = format!("client_secret={secret}");
        c.cli(
            1,
            &["secret", "set", "idp-client", "--from-literal", "client_id=joch-client", "--from-literal", &secret],
        )
        .ok();
    };
    set_client("wrong");
    c.cli(
        1,
        &[
            "mcp",
            "add",
            "heldout",
            "--endpoint",
            &up.url,
            "--auth",
            "oauth2",
            "--secret-ref",
            "idp-client",
            "--token-url",
            &token_url,
            "--scope",
            "mcp.read",
        ],
    )
    .ok();
    // The token endpoint refuses the client: a specific error naming it.
    let url = format!("{}/mcp/heldout", c.node(1).mcp_url);
    let r = http("POST", &url, &[ACCEPT, JSON_CT, c.auth()], INIT.as_bytes());
    assert_eq!((r.status, r.json()["error"]["data"]["reason"].as_str()), (502, Some("upstream-credentials")), "{r:?}");
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("invalid_client"), "{r:?}");
    assert!(!r.body.contains("s3cret"), "{r:?}");

    set_client("s3cret-client-secret");
    let s = Session::open(&c, 1, "heldout");
    for i in 0..5 {
        assert_eq!(s.call("add", json!({"a": i, "b": 1})).status, 200);
    }
    let seen = recorded_headers(&headers);
    let fetches = |seen: &[(String, String, Value)]| seen.iter().filter(|(_, p, _)| p == "/token").count();
    // One refused fetch, then one token (the first issued) for everything so far.
    assert_eq!(fetches(&seen), 2, "{seen:?}");
    let bearers: Vec<&str> =
        seen.iter().filter(|(_, p, _)| p == "/mcp").filter_map(|(_, _, h)| h["authorization"].as_str()).collect();
    assert!(!bearers.is_empty() && bearers.iter().all(|b| *b == "Bearer at-1"), "{bearers:?}");
    let token_req = seen.iter().find(|(_, p, _)| p == "/token").unwrap();
    assert!(!token_req.2.to_string().contains(&c.agent_token));
    // Before the token expires (3 s), a new one is in use.
    let first_at = std::time::Instant::now();
    eventually("a refreshed token upstream", Duration::from_secs(10), || {
        assert_eq!(s.call("add", json!({"a": 1, "b": 1})).status, 200);
        let last = recorded_headers(&headers).into_iter().rev().find(|(_, p, _)| p == "/mcp")?;
        (last.2["authorization"] == "Bearer at-2").then_some(())
    });
    assert!(first_at.elapsed() < Duration::from_secs(3) + Duration::from_millis(500), "refreshed before expiry");

    // The seeds' form: only type and secretRef; the token endpoint is in the secret.
    let literal = |kv: &str| ["--from-literal".to_string(), kv.to_string()];
    let mut args: Vec<String> = ["secret", "set", "seed-oauth"].map(String::from).to_vec();
    for kv in ["client_id=joch-client", "client_secret=s3cret-client-secret", &format!("token_url={token_url}")] {
        args.extend(literal(kv));
    }
    c.cli(1, &args.iter().map(String::as_str).collect::<Vec<_>>()).ok();
    c.cli(1, &["mcp", "add", "seeded", "--endpoint", &up.url, "--auth", "oauth2", "--secret-ref", "seed-oauth"]).ok();
    assert_eq!(Session::open(&c, 1, "seeded").call("add", json!({"a": 1, "b": 1})).status, 200);
}

#[test]
fn a_stdio_child_gets_its_secret_by_reference_and_the_node_log_never_shows_it() {
    let c = TestCluster::up_stdio(1);
    let value = "sk_StdioEnvSecret_0b7e55";
    c.cli(1, &["secret", "set", "child", "--from-literal", &format!("LEAK={value}")]).ok();
    c.add_python_stdio("envy", "fastmcp_server.py", &["stdio"], &["--env-secret", "LEAK=child", "--env", "MODE=plain"]);
    let d = c.cli(1, &["describe", "mcpserver", "envy", "-o", "json"]).ok().json();
    assert_eq!(d["spec"]["stdio"]["env"], json!({"LEAK": {"secretRef": {"name": "child"}}, "MODE": "plain"}), "{d}");
    let s = Session::open(&c, 1, "envy");
    let r = s.call("getenv", json!({"name": "LEAK"}));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["result"]["content"][0]["text"], value, "the child has the secret: {r:?}");
    // It printed it to stderr at start; the node logged that line with the value replaced.
    let log = c.dir.path().join("node1/node.log");
    let line = eventually("the child's stderr in the node log", Duration::from_secs(10), || {
        std::fs::read_to_string(&log).ok()?.lines().find(|l| l.contains("starting with token")).map(str::to_string)
    });
    assert!(line.contains("[secret child/LEAK]"), "{line}");
    assert!(files_containing(&c.dir.path().join("node1"), value.as_bytes()).is_empty());
}

#[test]
fn a_stdio_command_not_on_a_nodes_allow_list_does_not_run_there() {
    let c = TestCluster::up(3, &[]); // no --stdio-allow: the nodes run nothing
    let time_bin = crate::harness::venv_bin().join("mcp-server-time").display().to_string();
    c.cli(1, &["mcp", "add", "time", "--transport", "stdio", "--command", &time_bin, "--allow-stdio"]).ok();
    for n in 1..=3 {
        // Registering is not fleet-acknowledged: a linearizable read waits until node n applied it.
        c.cli(n, &["describe", "mcpserver", "time"]).ok();
        let r = http("POST", &format!("{}/mcp/time", c.node(n).mcp_url), &[ACCEPT, JSON_CT, c.auth()], INIT.as_bytes());
        assert_eq!((r.status, r.json()["error"]["code"].as_i64()), (403, Some(-32004)), "{r:?}");
        let e = &r.json()["error"];
        assert_eq!(e["data"]["reason"], "stdio-not-allowed");
        assert_eq!(e["data"]["rule"], "node.stdio.allow");
        let msg = e["message"].as_str().unwrap();
        assert!(msg.contains("not in its local stdio.allow list (it is empty)") && msg.contains(&time_bin), "{msg}");
    }
    assert!(node_children(&c, "mcp-server-time").is_empty(), "nothing was started");
    // Registered and accepted by the store; every node says it will not run it.
    let st = c.cli(2, &["cluster", "status", "-o", "json"]).ok().json();
    for m in st["members"].as_array().unwrap() {
        let refused = m["stdio_refused"].as_array().unwrap();
        assert!(refused.len() == 1 && refused[0].as_str().unwrap().starts_with("time: node "), "{m}");
    }
    let table = c.cli(2, &["cluster", "status"]).ok();
    assert!(
        table.stdout.contains("answers stdio-not-allowed for time")
            || table.stderr.contains("answers stdio-not-allowed for time"),
        "{table:?}"
    );
}

/// A new key-encryption key file (32 random bytes, base64).
fn new_kek(path: &Path) {
    use std::io::Read;
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut key).unwrap();
    std::fs::write(path, base64::Engine::encode(&base64::engine::general_purpose::STANDARD, key)).unwrap();
}

/// Points node 1's config at these key files (the current one first) and restarts it.
fn use_keks(c: &mut TestCluster, current: &Path, previous: &[&Path]) {
    let cfg = c.dir.path().join("node1/joch.yaml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let start = text.find("secrets:\n").expect("a secrets section");
    let body = start + "secrets:\n".len();
    let rest = body + text[body..].lines().take_while(|l| l.starts_with("  ")).map(|l| l.len() + 1).sum::<usize>();
    let prev: Vec<String> = previous.iter().map(|p| p.display().to_string()).collect();
    let section = format!("secrets:\n  kek_file: {}\n  previous_kek_files: [{}]\n", current.display(), prev.join(", "));
    std::fs::write(&cfg, format!("{}{section}{}", &text[..start], &text[rest..])).unwrap();
    c.kill9(1);
    c.restart();
}

#[test]
fn the_key_encryption_key_rotates_without_losing_a_secret() {
    let mut c = TestCluster::up(1, &[]);
    let headers = c.dir.path().join("headers.jsonl");
    let up = FastMcp::start_env(&[], &[("JOCH_RECORD_HEADERS", &headers)]);
    let value = "ghp_BeforeAndAfterRotation_5e0c";
    c.cli(1, &["secret", "set", "gh", "--from-literal", &format!("token={value}")]).ok();
    c.cli(1, &["mcp", "add", "heldout", "--endpoint", &up.url, "--auth", "bearer", "--secret-ref", "gh"]).ok();
    let kek_ids = |c: &TestCluster| c.cli(1, &["secret", "ls", "-o", "json"]).ok().json()[0]["kekIds"].clone();
    let old_id = kek_ids(&c);

    // Every node gets the new key as current and the old one as previous, then re-seal.
    let (old, new) = (c.dir.path().join("kek"), c.dir.path().join("kek-2"));
    new_kek(&new);
    use_keks(&mut c, &new, &[&old]);
    let w = c.cli(1, &["secret", "rotate-kek", "-o", "json"]).ok().json();
    assert_eq!(w["fleet"]["complete"], true, "{w}");
    let new_id = kek_ids(&c);
    assert_ne!(new_id, old_id, "re-sealed under the new key");

    // The old key retired: the secret still reaches the upstream.
    use_keks(&mut c, &new, &[]);
    let s = Session::open(&c, 1, "heldout");
    assert_eq!(s.call("add", json!({"a": 1, "b": 1})).status, 200);
    let last = recorded_headers(&headers).pop().unwrap();
    assert_eq!(last.2["authorization"], format!("Bearer {value}"));
}
