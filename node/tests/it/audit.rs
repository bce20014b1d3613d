//! The audit trail end to end: seed 000's three commands as written after calls through three
//! nodes with the official SDK client; the agent's trace reaching the upstream and `joch trace`;
//! a node down during a query (a partial answer naming it); a record altered on disk (named by
//! `joch audit verify`); kill -9 under load (the chain verifies after the restart).

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{eventually, recorded_headers, FastMcp, TestCluster};

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// github (governed by mcp-tool-safety: `slow` denied to prod agents) at `url`.
fn github(url: &str) -> String {
    format!(
        r#"apiVersion: joch.dev/v1alpha1
kind: Policy
metadata:
  name: mcp-tool-safety
spec:
  appliesTo:
    agents: {{ selector: {{ matchLabels: {{ env: prod }} }} }}
  rules:
    - when:
        tool: slow
      action: {{ deny: true, reason: no-slow-tools-in-prod }}
---
apiVersion: joch.dev/v1alpha1
kind: MCPServer
metadata:
  name: github
spec:
  endpoint: {{ url: "{url}" }}
  policies:
    - name: mcp-tool-safety
"#
    )
}

/// Calls through every node, round robin, as `token`, with this `traceparent`.
fn calls(c: &TestCluster, token: &str, traceparent: &str, calls: &Value) -> Value {
    let mut args = vec!["probe".to_string(), "github".to_string(), calls.to_string()];
    args.extend(c.nodes.iter().map(|n| n.mcp_url.clone()));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    c.sdk_env("legacy", &argv, &[("JOCH_AGENT_TOKEN", Path::new(token)), ("JOCH_TRACEPARENT", Path::new(traceparent))])
}

/// `joch get toolcalls ... -o json`, once at least `n` records are there.
fn toolcalls(c: &TestCluster, node: u64, args: &[&str], n: usize) -> Value {
    let mut all = vec!["get", "toolcalls"];
    all.extend_from_slice(args);
    all.extend(["-o", "json"]);
    eventually("the audit records", Duration::from_secs(20), || {
        let v = c.cli(node, &all).ok().json();
        (v["records"].as_array().map_or(0, Vec::len) >= n).then_some(v)
    })
}

#[test]
fn seed_commands_answer_from_every_node_merged_and_traces_reach_the_upstream() {
    let c = TestCluster::up(3, &[]);
    let headers = c.dir.path().join("headers.jsonl");
    let up = FastMcp::start_env(&[], &[("JOCH_RECORD_HEADERS", &headers)]);
    let f = write(c.dir.path(), "github.yaml", &github(&up.url));
    c.cli(1, &["apply", "-f", &f]).ok();
    let bot = c.cli(1, &["agent", "create", "prod-bot", "--label", "env=prod", "-o", "json"]).ok().json();
    let token = bot["token"].as_str().unwrap().to_string();

    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let tp = format!("00-{trace}-00f067aa0ba902b7-01");
    let r =
        calls(&c, &token, &tp, &json!([["add", {"a": 1, "b": 2}], ["add", {"a": 2, "b": 2}], ["slow", {"steps": 1}]]));
    assert_eq!(r["calls"]["add"], "4", "{r}");
    assert_eq!(r["calls"]["slow"]["code"], -32013, "{r}");
    // The agent sees its execution ids: in the result's _meta, and in the denial.
    let exec =
        r["metas"]["add"]["joch/execId"].as_str().unwrap_or_else(|| panic!("no exec id in _meta: {r}")).to_string();
    assert!(exec.starts_with("exec-"), "{exec}");
    let denied_exec = r["calls"]["slow"]["data"]["execId"].as_str().unwrap().to_string();

    // The upstream received the agent's trace, with joch's span as the parent.
    let sent: Vec<String> = recorded_headers(&headers)
        .into_iter()
        .filter_map(|(_, _, h)| h["traceparent"].as_str().map(str::to_string))
        .collect();
    let span = &exec[exec.len() - 16..];
    assert!(sent.contains(&format!("00-{trace}-{span}-01")), "{sent:?} should carry {span}");

    // Seed 000's commands, as written, from one node: every node's records, merged by time.
    let all = toolcalls(&c, 2, &["--mcpserver", "github", "--since", "24h"], 5);
    let recs = all["records"].as_array().unwrap();
    let nodes: std::collections::BTreeSet<u64> = recs.iter().map(|r| r["node"].as_u64().unwrap()).collect();
    assert_eq!(nodes.len(), 3, "the client's requests went round robin over the three nodes: {all}");
    let times: Vec<u64> = recs.iter().map(|r| r["timeUs"].as_u64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first: {times:?}");
    assert_eq!(all["unanswered"], json!([]));
    let tools: Vec<&str> =
        recs.iter().filter(|r| r["method"] == "tools/call").map(|r| r["target"].as_str().unwrap()).collect();
    assert_eq!(tools.iter().filter(|t| **t == "add").count(), 2, "{tools:?}");
    let table = c.cli(3, &["get", "toolcalls", "--mcpserver", "github", "--since", "24h"]).ok().stdout;
    assert!(table.starts_with("TIME"), "{table}");
    assert!(table.contains("prod-bot") && table.contains(&exec), "{table}");

    let d = c.cli(1, &["denials", "ls", "--policy", "mcp-tool-safety", "--since", "24h", "-o", "json"]).ok().json();
    let denials = d["records"].as_array().unwrap();
    assert_eq!(denials.len(), 1, "{d}");
    assert_eq!(denials[0]["exec"], denied_exec.as_str());
    assert_eq!(denials[0]["policy"], "mcp-tool-safety");
    assert_eq!(denials[0]["code"], -32013);
    assert_eq!(denials[0]["agent"], "prod-bot");
    assert_eq!(denials[0]["decision"], "deny");
    let table = c.cli(1, &["denials", "ls", "--policy", "mcp-tool-safety", "--since", "24h"]).ok().stdout;
    assert!(table.contains("no-slow-tools-in-prod") || table.contains("mcp-tool-safety"), "{table}");

    // joch trace, from what the agent saw: the record, with the agent's trace id.
    let t = c.cli(3, &["trace", &exec, "-o", "json"]).ok().json();
    let recs = t["records"].as_array().unwrap();
    assert!(!recs.is_empty(), "{t}");
    assert!(recs.iter().all(|r| r["exec"] == exec.as_str() && r["trace"] == trace), "{t}");
    assert_eq!(recs[0]["target"], "add");
    assert_eq!(recs[0]["outcome"], "result");
    assert!(!recs[0]["argsDigest"].as_str().unwrap().is_empty(), "arguments are digested, not kept: {t}");
    assert_eq!(recs[0]["args"], Value::Null);
    let text = c.cli(2, &["trace", &exec]).ok().stdout;
    assert!(text.contains(&format!("execution {exec}  trace {trace}")), "{text}");
    // The seed's own example id does not exist here: said plainly, non-zero.
    let e = c.cli(1, &["trace", "exec-20260510-001"]).fails(1);
    assert!(e.contains("no records of execution exec-20260510-001"), "{e}");
    // The whole trace by its W3C id: every call of the agent's run.
    let whole = c.cli(1, &["trace", trace, "-o", "json"]).ok().json();
    assert!(whole["records"].as_array().unwrap().len() >= 3, "{whole}");

    // Counts: which agents called github in the last 24 h; and describe's 7-day counts.
    let by = c
        .cli(2, &["get", "toolcalls", "--mcpserver", "github", "--since", "24h", "--by", "agent", "-o", "json"])
        .ok()
        .json();
    let bot = by["groups"].as_array().unwrap().iter().find(|g| g["key"] == "prod-bot").cloned().unwrap_or_default();
    assert!(bot["calls"].as_u64().unwrap() >= 3, "{by}");
    assert_eq!(bot["denied"], 1, "{by}");
    let s = c.cli(1, &["describe", "mcpserver", "github", "-o", "json"]).ok().json();
    assert!(s["status"]["callCount7d"].as_u64().unwrap() >= 3, "{s}");
    assert_eq!(s["status"]["denyCount7d"], 1, "{s}");

    // Every chain verifies.
    let v = c.cli(1, &["audit", "verify", "-o", "json"]).ok().json();
    assert_eq!(v["nodes"].as_array().unwrap().len(), 3, "{v}");

    // Seed 003's gates: decisions measured on every node; no unknown server yet ...
    let g = c.cli(2, &["gates", "-o", "json"]).ok().json();
    let gate =
        |g: &Value, name: &str| g["gates"].as_array().unwrap().iter().find(|x| x["gate"] == name).cloned().unwrap();
    let p95 = gate(&g, "Policy decision p95 latency");
    assert_eq!(p95["status"], "ok", "{g}");
    assert!(p95["value"].as_f64().unwrap() < 50.0, "{g}");
    assert_eq!(gate(&g, "Unknown server connections")["status"], "ok", "{g}");
    assert_eq!(gate(&g, "Output QUARANTINE ratio")["status"], "unmeasured", "{g}");
    // ... then an agent asks for a server that is not registered: the gate blocks, exit 1.
    let r = crate::harness::http(
        "POST",
        &format!("{}/mcp/shadow-server", c.node(3).mcp_url),
        &[c.auth(), ("content-type", "application/json"), ("accept", "application/json, text/event-stream")],
        br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
    );
    assert_eq!(r.status, 404);
    let out = eventually("the gate to block", Duration::from_secs(20), || {
        let out = c.cli(1, &["gates", "-o", "json"]);
        (out.code == 1).then_some(out)
    });
    assert_eq!(gate(&out.json(), "Unknown server connections")["value"], 1.0, "{}", out.stdout);
    assert!(out.stderr.contains("a gate blocks the rollout"), "{}", out.stderr);
    let table = c.cli(1, &["gates"]).stdout;
    assert!(table.contains("Unknown server connections") && table.contains("BLOCKING"), "{table}");
}

/// A stdio server has no HTTP headers: the agent's trace reaches it in `params._meta.traceparent`,
/// with joch's span as the parent, as the HTTP upstreams get it in the header.
#[test]
fn the_agent_s_trace_reaches_a_stdio_server_in_meta() {
    let c = TestCluster::up_stdio(1);
    c.add_python_stdio("local", "fastmcp_server.py", &["stdio"], &[]);
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let tp = format!("00-{trace}-b7ad6b7169203331-01");
    let argv = ["probe", "local", r#"[["trace", {}]]"#, &c.nodes[0].mcp_url];
    let r = c.sdk_env("legacy", &argv, &[("JOCH_TRACEPARENT", Path::new(&tp))]);
    let exec = r["metas"]["trace"]["joch/execId"].as_str().unwrap_or_else(|| panic!("{r}")).to_string();
    let span = &exec[exec.len() - 16..];
    assert_eq!(r["calls"]["trace"], format!("00-{trace}-{span}-01"), "{r}");
}

#[test]
fn a_node_down_gives_a_partial_answer_naming_it() {
    let c = TestCluster::up(3, &[]);
    let up = FastMcp::start();
    let f = write(c.dir.path(), "github.yaml", &github(&up.url));
    c.cli(1, &["apply", "-f", &f]).ok();
    let r = calls(
        &c,
        &c.agent_token,
        "",
        &json!([["add", {"a": 1, "b": 1}], ["add", {"a": 1, "b": 2}], ["add", {"a": 1, "b": 3}]]),
    );
    assert_eq!(r["calls"]["add"], "4", "{r}");
    toolcalls(&c, 1, &["--mcpserver", "github"], 3);
    c.kill9(3);
    let out = c.cli(1, &["get", "toolcalls", "--mcpserver", "github", "--timeout", "2s", "-o", "json"]);
    assert_eq!(out.code, 3, "a partial answer exits 3: {}", out.stderr);
    let v = out.json();
    assert_eq!(v["unanswered"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["unanswered"][0]["node"], 3);
    assert_eq!(v["answered"], json!([1, 2]));
    assert!(out.stderr.contains("partial answer: node 3 did not answer"), "{}", out.stderr);
    assert!(v["records"].as_array().unwrap().iter().all(|r| r["node"] != 3));
}

#[test]
fn tampering_is_named_and_kill_9_under_load_keeps_a_verifying_chain() {
    let mut c = TestCluster::up(1, &[]);
    let up = FastMcp::start();
    let f = write(c.dir.path(), "github.yaml", &github(&up.url));
    c.cli(1, &["apply", "-f", &f]).ok();
    let batch = json!((0..20).map(|i| json!(["add", {"a": i, "b": 1}])).collect::<Vec<_>>());
    calls(&c, &c.agent_token, "", &batch);
    let before = toolcalls(&c, 1, &["--limit", "1000"], 20);
    let seen = before["records"].as_array().unwrap().len();

    // kill -9 while requests are in flight: each answer names its execution (here a denial:
    // no session), and every execution answered well before the kill must be in the trail.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answered = std::sync::Arc::new(parking_lot::Mutex::new(Vec::<(std::time::Instant, String)>::new()));
    let load = {
        let (url, stop, answered) = (format!("{}/mcp/github", c.nodes[0].mcp_url), stop.clone(), answered.clone());
        let bearer = c.agent_bearer.clone();
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let body = json!({"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": "add", "arguments": {"a": i, "b": 0}}});
                let r = std::panic::catch_unwind(|| {
                    crate::harness::http(
                        "POST",
                        &url,
                        &[
                            ("authorization", bearer.as_str()),
                            ("content-type", "application/json"),
                            ("accept", "application/json, text/event-stream"),
                        ],
                        body.to_string().as_bytes(),
                    )
                });
                let answer = r.ok().and_then(|r| serde_json::from_str::<Value>(&r.body).ok());
                match answer.and_then(|a| a["error"]["data"]["execId"].as_str().map(str::to_string)) {
                    Some(exec) => answered.lock().push((std::time::Instant::now(), exec)),
                    None => break,
                }
            }
        })
    };
    // The group-commit window is 5 ms; 500 ms leaves room for a loaded machine (2 cores shared
    // by the node, the client and the test). Kill once 50 answers are older than that.
    let margin = Duration::from_millis(500);
    eventually("answers older than the margin", Duration::from_secs(20), || {
        let a = answered.lock();
        (a.iter().filter(|(t, _)| t.elapsed() > margin).count() >= 50).then_some(())
    });
    let killed_at = std::time::Instant::now();
    c.kill9(1);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.join().unwrap();
    let answered = answered.lock().clone();
    let durable: Vec<&String> = answered.iter().filter(|(t, _)| *t + margin < killed_at).map(|(_, e)| e).collect();
    assert!(durable.len() >= 50, "{} answers", answered.len());
    c.restart();
    let after = toolcalls(&c, 1, &["--limit", "10000"], seen);
    let kept: std::collections::HashSet<&str> =
        after["records"].as_array().unwrap().iter().filter_map(|r| r["exec"].as_str()).collect();
    let lost: Vec<&&String> = durable.iter().filter(|e| !kept.contains(e.as_str())).collect();
    assert!(
        lost.is_empty(),
        "{} of {} executions answered before the kill are missing: {lost:?}",
        lost.len(),
        durable.len()
    );
    let v = c.cli(1, &["audit", "verify", "-o", "json"]).ok().json();
    assert_eq!(v["nodes"][0]["report"]["problems"], json!([]), "the chain verifies after kill -9: {v}");

    // Alter one record on disk (the node stopped: RocksDB is single-process).
    let seq = v["nodes"][0]["report"]["firstSeq"].as_u64().unwrap() + 3;
    c.kill9(1);
    let db = c.dir.path().join("node1").join("data").join("audit");
    {
        // The lock is released once the killed process is fully gone.
        let store = eventually("the stopped node's audit database to open", Duration::from_secs(20), || {
            joch_audit::Store::open(&db).ok()
        });
        assert!(joch_audit::tamper(store.raw(), seq, |r| r.agent = "someone-else".into()).unwrap());
    }
    c.restart();
    let out = c.cli(1, &["audit", "verify"]);
    assert_eq!(out.code, 1, "a broken chain exits 1: {}", out.stdout);
    assert!(out.stdout.contains(&format!("node 1: record {seq} (")), "{}", out.stdout);
    assert!(out.stdout.contains("hash mismatch"), "{}", out.stdout);
}

/// A small OTLP/gRPC collector: keeps the spans and log records it receives.
mod collector {
    use std::sync::Arc;

    use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{LogsService, LogsServiceServer};
    use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
    use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
    use opentelemetry_proto::tonic::logs::v1::LogRecord;
    use opentelemetry_proto::tonic::trace::v1::Span;
    use parking_lot::Mutex;

    #[derive(Clone, Default)]
    pub struct Received {
        pub spans: Arc<Mutex<Vec<Span>>>,
        pub logs: Arc<Mutex<Vec<LogRecord>>>,
    }

    #[tonic::async_trait]
    impl TraceService for Received {
        async fn export(
            &self,
            req: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            for rs in req.into_inner().resource_spans {
                for ss in rs.scope_spans {
                    self.spans.lock().extend(ss.spans);
                }
            }
            Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
        }
    }

    #[tonic::async_trait]
    impl LogsService for Received {
        async fn export(
            &self,
            req: tonic::Request<ExportLogsServiceRequest>,
        ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
            for rl in req.into_inner().resource_logs {
                for sl in rl.scope_logs {
                    self.logs.lock().extend(sl.log_records);
                }
            }
            Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
        }
    }

    /// Starts one on a free loopback port: its endpoint and what it receives.
    pub fn start() -> (String, Received) {
        let port = crate::harness::free_port();
        let received = Received::default();
        let r = received.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let _ = tonic::transport::Server::builder()
                    .add_service(TraceServiceServer::new(r.clone()))
                    .add_service(LogsServiceServer::new(r))
                    .serve(([127, 0, 0, 1], port).into())
                    .await;
            });
        });
        (format!("http://127.0.0.1:{port}"), received)
    }
}

#[test]
fn records_are_exported_over_otlp_as_spans_in_the_agent_s_trace() {
    let (endpoint, got) = collector::start();
    let c = TestCluster::up(1, &["--otlp-endpoint", &endpoint]);
    let up = FastMcp::start();
    // This server's records keep the arguments themselves (spec.audit.recordArguments).
    let doc = format!("{}  audit:\n    recordArguments: true\n", github(&up.url));
    let f = write(c.dir.path(), "github.yaml", &doc);
    c.cli(1, &["apply", "-f", &f]).ok();
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let tp = format!("00-{trace}-b7ad6b7169203331-01");
    let r = calls(&c, &c.agent_token, &tp, &json!([["add", {"a": 1, "b": 2}]]));
    let exec = r["metas"]["add"]["joch/execId"].as_str().unwrap().to_string();
    let t = eventually("the record", Duration::from_secs(20), || {
        let out = c.cli(1, &["trace", &exec, "-o", "json"]);
        (out.code == 0).then(|| out.json())
    });
    let args: Value = serde_json::from_str(t["records"][0]["args"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"a": 1, "b": 2}), "{t}");
    let span = eventually("the call's span at the collector", Duration::from_secs(30), || {
        got.spans.lock().iter().find(|s| s.name == "tools/call add").cloned()
    });
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    assert_eq!(hex(&span.trace_id), trace);
    assert_eq!(hex(&span.parent_span_id), "b7ad6b7169203331", "the agent's span is the parent");
    assert_eq!(hex(&span.span_id), exec[exec.len() - 16..], "joch's span is the execution id's");
    assert!(span.end_time_unix_nano > span.start_time_unix_nano);
    let attr = |k: &str| span.attributes.iter().find(|a| a.key == k).and_then(|a| a.value.clone());
    assert!(format!("{:?}", attr("joch.exec")).contains(&exec));
    // The audit record itself, as a log record in the same trace.
    let log = eventually("the record as a log", Duration::from_secs(30), || {
        got.logs.lock().iter().find(|l| format!("{:?}", l.body).contains(&exec)).cloned()
    });
    assert_eq!(hex(&log.trace_id), trace);
}
