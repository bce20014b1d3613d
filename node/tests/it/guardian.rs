//! Guardian hooks end to end: a guardian (an ACS hook endpoint this test starts) on a real
//! fastmcp server, called by the official SDK client through joch. Each verdict at each hook:
//! allow, deny before the call (the upstream never sees it), modify the arguments, modify the
//! result, deny the result; a guardian that does not answer, failing closed and failing open;
//! every verdict and its latency in the audit record (`joch trace`).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{eventually, recorded, FastMcp, TestCluster};

/// Every hook call the guardian received (the JSON-RPC request).
type Seen = Arc<Mutex<Vec<Value>>>;

/// What the test's guardian decides, from what it is shown.
fn decide(req: &Value) -> Value {
    let method = req["method"].as_str().unwrap_or_default();
    let p = &req["params"]["payload"];
    let text = |v: &Value| v.pointer("/content/0/text").and_then(Value::as_str).unwrap_or_default().to_string();
    match method {
        "protocols/MCP/tools/call"
            if p["direction"] == "outbound" && p["message"]["params"]["arguments"]["a"] == 13 =>
        {
            json!({"decision": "deny", "reasoning": "thirteen is unlucky", "reason_codes": ["superstition"]})
        }
        "steps/toolCallRequest" if p["arguments"]["a"] == 7 => {
            json!({"decision": "MODIFY", "reasoning": "b is always 100", "modifications": {"parameter_overrides": {"b": 100}}})
        }
        "steps/toolCallResult" if text(&p["outputs"]) == "42" => json!({
            "decision": "modify", "reasoning": "the answer is secret",
            "modifications": {"redactions": ["/content/0/text"]},
        }),
        "protocols/MCP/tools/call" if p["direction"] == "inbound" && text(&p["message"]["result"]) == "666" => {
            json!({"decision": "deny", "reasoning": "a number of the beast"})
        }
        _ => json!({"decision": "allow"}),
    }
}

/// Starts the guardian on a free port; returns its URL and what it saw.
fn guardian() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let (tx, rx) = std::sync::mpsc::channel();
    let s = seen.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let app = axum::Router::new().route(
                "/acs",
                axum::routing::post(move |body: axum::body::Bytes| {
                    let s = s.clone();
                    async move {
                        let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        s.lock().unwrap().push(req.clone());
                        let answer = json!({"jsonrpc": "2.0", "id": req["id"], "result": decide(&req)});
                        ([("content-type", "application/json")], answer.to_string())
                    }
                }),
            );
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(l.local_addr().unwrap()).unwrap();
            axum::serve(l, app).await.unwrap();
        });
    });
    let addr = rx.recv().unwrap();
    (format!("http://{addr}/acs"), seen)
}

fn server(name: &str, url: &str, guardian: &str, failure: &str) -> String {
    format!(
        r#"apiVersion: joch.dev/v1alpha1
kind: MCPServer
metadata:
  name: {name}
spec:
  endpoint: {{ url: "{url}" }}
  guardian:
    name: acme
    endpoint: "{guardian}"
    timeout: 2s
    failure: {failure}
"#
    )
}

fn probe(c: &TestCluster, server: &str, calls: &Value) -> Value {
    let argv = ["probe", server, &calls.to_string(), &c.nodes[0].mcp_url];
    c.sdk_env("legacy", &argv, &[] as &[(&str, &Path)])
}

#[test]
fn each_verdict_at_each_hook_is_enforced_and_recorded() {
    let c = TestCluster::up(1, &[]);
    let record = c.dir.path().join("calls.jsonl");
    let up = FastMcp::start_recording(&[], Some(&record));
    let (hook, seen) = guardian();
    let f = c.dir.path().join("guarded.yaml");
    std::fs::write(&f, server("guarded", &up.url, &hook, "closed")).unwrap();
    c.cli(1, &["apply", "-f", f.to_str().unwrap()]).ok();

    let r = probe(
        &c,
        "guarded",
        &json!([
            ["add", {"a": 1, "b": 2}],
            ["add", {"a": 13, "b": 1}],
            ["add", {"a": 7, "b": 1}],
            ["add", {"a": 40, "b": 2}],
            ["add", {"a": 600, "b": 66}],
        ]),
    );
    let seq = r["sequence"].as_array().unwrap_or_else(|| panic!("{r}"));
    // Allowed everywhere: the answer as the server gave it.
    assert_eq!(seq[0], "3", "{r}");
    // Denied before the call: the agent gets the stable code and the guardian's reason.
    assert_eq!(seq[1]["code"], -32060, "{r}");
    assert_eq!(seq[1]["data"]["reason"], "guardian-denied", "{r}");
    let msg = seq[1]["message"].as_str().unwrap();
    assert!(msg.contains("thirteen is unlucky") && msg.contains("superstition") && msg.contains("acme"), "{msg}");
    assert!(seq[1]["data"]["execId"].as_str().is_some_and(|e| e.starts_with("exec-")), "{r}");
    // Modified arguments: the upstream computed 7 + 100.
    assert_eq!(seq[2], "107", "{r}");
    // Modified result: the text redacted.
    assert_eq!(seq[3], "[REDACTED]", "{r}");
    // Denied result: the upstream ran it, the agent never sees its answer.
    assert_eq!(seq[4]["code"], -32060, "{r}");
    assert!(seq[4]["message"].as_str().unwrap().contains("beast"), "{r}");
    let ran = eventually("the upstream's calls", Duration::from_secs(10), || {
        let n = recorded(&record).len();
        (n >= 4).then_some(n)
    });
    assert_eq!(ran, 4, "the call denied before it was sent never reached the upstream");

    // The guardian saw each hook, in ACS envelopes, in order.
    let hooks: Vec<(String, String)> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["method"].as_str().unwrap().to_string(),
                h["params"]["payload"]["direction"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let first_call: Vec<&str> =
        hooks.iter().skip_while(|(m, _)| m != "protocols/MCP/tools/call").take(4).map(|(m, _)| m.as_str()).collect();
    assert_eq!(
        first_call,
        ["protocols/MCP/tools/call", "steps/toolCallRequest", "protocols/MCP/tools/call", "steps/toolCallResult"],
        "{hooks:?}"
    );
    assert!(hooks.iter().any(|(m, d)| m == "protocols/MCP/initialize" && d == "outbound"), "{hooks:?}");
    assert!(hooks.iter().any(|(m, d)| m == "protocols/MCP/tools/list" && d == "inbound"), "{hooks:?}");
    let req = seen.lock().unwrap().iter().find(|h| h["method"] == "steps/toolCallRequest").cloned().unwrap();
    assert_eq!(req["params"]["acs_version"], "0.1.0");
    assert!(req["params"]["metadata"]["agent_id"].as_str().is_some_and(|a| !a.is_empty()), "{req}");
    assert!(req["params"]["metadata"]["execution_id"].as_str().unwrap().starts_with("exec-"));
    assert_eq!(req["params"]["payload"]["tool"]["name"], "add");
    assert_eq!(req["params"]["payload"]["arguments"], json!({"a": 1, "b": 2}));

    // The verdicts and their latency are in the audit record of the execution.
    let exec = r["metas"]["add"]["joch/execId"].as_str().unwrap_or_else(|| panic!("{r}")).to_string();
    let t = eventually("the trace", Duration::from_secs(20), || {
        let v = c.cli(1, &["trace", &exec, "-o", "json"]).ok().json();
        v["records"].as_array().is_some_and(|r| !r.is_empty()).then_some(v)
    });
    let verdicts = &t["records"][0]["verdicts"];
    let got: Vec<(String, String, String)> = verdicts
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["by"].as_str().unwrap().into(),
                v["rule"].as_str().unwrap().into(),
                v["verdict"].as_str().unwrap().into(),
            )
        })
        .collect();
    let want = [
        ("hook:acme", "protocols/MCP/tools/call", "allow"),
        ("hook:acme", "steps/toolCallRequest", "allow"),
        ("hook:acme", "protocols/MCP/tools/call", "allow"),
        ("hook:acme", "steps/toolCallResult", "modify"),
    ];
    let want: Vec<(String, String, String)> =
        want.iter().map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string())).collect();
    assert_eq!(got, want, "{t}");
    assert!(verdicts.as_array().unwrap().iter().all(|v| v["micros"].as_u64().unwrap() > 0), "{t}");
    let table = c.cli(1, &["trace", &exec]).ok().stdout;
    assert!(table.contains("[hook:acme steps/toolCallResult: modify"), "{table}");
    // The result denied at the exit is recorded as a denial with the guardian's code.
    let denials = eventually("the denials", Duration::from_secs(20), || {
        let v = c.cli(1, &["get", "toolcalls", "--outcome", "denied", "-o", "json"]).ok().json();
        (v["records"].as_array().map_or(0, Vec::len) >= 2).then_some(v)
    });
    let codes: Vec<i64> = denials["records"].as_array().unwrap().iter().map(|r| r["code"].as_i64().unwrap()).collect();
    assert_eq!(codes, [-32060, -32060], "{denials}");

    // On the aggregate endpoint a call is shown to the guardian of the member it routes to.
    let agg = probe(&c, "-", &json!([["guarded.add", {"a": 13, "b": 1}], ["guarded.add", {"a": 7, "b": 1}]]));
    assert_eq!(agg["sequence"][0]["code"], -32060, "{agg}");
    assert_eq!(agg["sequence"][1], "107", "{agg}");

    // A guardian that does not answer: failing closed denies, failing open proceeds and says so.
    let dead = format!("http://127.0.0.1:{}/acs", crate::harness::free_port());
    let f = c.dir.path().join("dead.yaml");
    let docs = format!("{}---\n{}", server("shut", &up.url, &dead, "closed"), server("ajar", &up.url, &dead, "open"));
    std::fs::write(&f, docs).unwrap();
    c.cli(1, &["apply", "-f", f.to_str().unwrap()]).ok();
    // The initialize is the first message a guardian sees: failing closed, it is refused.
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
    let h = [("content-type", "application/json"), ("accept", "application/json, text/event-stream"), c.auth()];
    let shut = crate::harness::http("POST", &format!("{}/mcp/shut", c.nodes[0].mcp_url), &h, init.as_bytes());
    assert_eq!(shut.status, 503, "{shut:?}");
    let shut = shut.json();
    assert_eq!(shut["error"]["code"], -32061, "{shut}");
    assert_eq!(shut["error"]["data"]["reason"], "guardian-unavailable", "{shut}");
    let ajar = probe(&c, "ajar", &json!([["add", {"a": 2, "b": 2}]]));
    assert_eq!(ajar["sequence"][0], "4", "{ajar}");
    let exec = ajar["metas"]["add"]["joch/execId"].as_str().unwrap().to_string();
    let t = eventually("the trace", Duration::from_secs(20), || {
        let v = c.cli(1, &["trace", &exec, "-o", "json"]).ok().json();
        v["records"].as_array().is_some_and(|r| !r.is_empty()).then_some(v)
    });
    let failed: Vec<&str> =
        t["records"][0]["verdicts"].as_array().unwrap().iter().map(|v| v["verdict"].as_str().unwrap()).collect();
    assert!(!failed.is_empty() && failed.iter().all(|v| *v == "failed-open"), "{t}");
}
