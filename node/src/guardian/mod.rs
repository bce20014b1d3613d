//! Guardian hooks: external policy endpoints that speak the Agent Control Standard's hook
//! contract (`wire.rs`, `docs/guardian-hooks.md`) and allow, deny or modify each message.
//!
//! A server's guardians are the node's own (`guardian:` of its config), then the server's
//! (`spec.guardian`), in that order; each sees what the one before let through. They are called
//! from the seam, at two points only:
//! - the front (`proxy/routing.rs`), once the agent's message is parsed and before anything is
//!   decided about it: `protocols/MCP/<method>` (outbound), then `steps/toolCallRequest` for a
//!   `tools/call`. A modified message replaces the request for everything after, so joch's own
//!   admission and policies decide on what will really be sent: a guardian cannot launder a call
//!   past them.
//! - the exit (`proxy/exit.rs`), on every message a server sends the agent (a JSON answer, each
//!   SSE event): `protocols/MCP/<method>` (inbound), then `steps/toolCallResult` for a
//!   `tools/call` result. The stages run after (list filtering, the audit stamp).
//!
//! Every call's verdict and latency go into the request's audit record (`hook:NAME`). A call
//! without a usable decision (timeout, refused, an error, a malformed answer) proceeds and is
//! recorded `failed-open` (the ACS default), or, with `failure: closed`, denies
//! (`guardian-unavailable`).

pub mod wire;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use joch_raft_store::model::resource::{FailMode, GuardianSpec, HookPoint};
use joch_raft_store::RegistryHandle;
use serde_json::{json, Value};

use crate::mcp::sse;
use crate::proxy::deny::{Denial, Reason};
use crate::proxy::request::Call;
use wire::{Decision, Meta};

/// The largest answer a guardian may send.
const MAX_ANSWER: usize = 4 << 20;

/// The guardians of this node.
pub struct Guardian {
    /// The node's own (`guardian:`), for every server.
    local: Option<GuardianSpec>,
    registry: RegistryHandle,
    client: reqwest::Client,
    ids: AtomicU64,
    /// Whether some server of the registry has a guardian, as of the registry index beside it
    /// (so the request path without guardians pays two atomic loads, not a lookup).
    servers_guarded: (AtomicU64, std::sync::atomic::AtomicBool),
}

impl Guardian {
    /// The guardians of a node: its own, and those of the servers in its registry.
    pub fn new(local: Option<GuardianSpec>, registry: RegistryHandle) -> anyhow::Result<Guardian> {
        // The TLS provider the node installs at start; installed here too so a guardian made
        // elsewhere (a test) cannot panic.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()?;
        Ok(Guardian {
            local,
            registry,
            client,
            ids: AtomicU64::new(1),
            servers_guarded: (AtomicU64::new(u64::MAX), std::sync::atomic::AtomicBool::new(false)),
        })
    }

    /// Whether any guardian applies anywhere (the node's own, or some server's): when none does,
    /// the hooks cost nothing more than this.
    pub fn any(&self) -> bool {
        if self.local.is_some() {
            return true;
        }
        let state = self.registry.load();
        let (index, guarded) = &self.servers_guarded;
        if index.load(Ordering::Acquire) != state.applied_index {
            let any = state.registry.servers.values().any(|r| r.spec.guardian.is_some());
            guarded.store(any, Ordering::Relaxed);
            index.store(state.applied_index, Ordering::Release);
            return any;
        }
        guarded.load(Ordering::Relaxed)
    }

    /// The guardians of `server`, in order: the node's own, then the server's.
    fn of(&self, server: &str) -> Vec<GuardianSpec> {
        let mut out: Vec<GuardianSpec> = self.local.iter().cloned().collect();
        if !server.is_empty() {
            if let Some(g) = self.registry.load().registry.servers.get(server).and_then(|r| r.spec.guardian.as_ref()) {
                out.push(g.clone());
            }
        }
        out
    }

    /// The server a call's message is for: on the aggregate endpoint or a virtual server, the
    /// member it routes to (empty when it goes to several or none: only the node's own guardian
    /// sees it).
    pub fn server_of(&self, call: &Call) -> String {
        crate::proxy::aggregate::routed_server(call, &self.registry.load())
    }

    /// Whether `server` has any guardian at all (a JSON-RPC batch cannot be shown to one, so it
    /// is refused).
    pub fn guards(&self, server: &str) -> bool {
        self.of(server).iter().any(|g| g.at(HookPoint::Outbound) || g.at(HookPoint::ToolCallRequest))
    }

    /// The outbound hooks on the agent's message to `server` (on the aggregate endpoint: the
    /// member it routes to, or empty). `Ok(Some(body))`: a guardian modified it, and this is the
    /// message to send instead.
    pub async fn outbound(&self, call: &Call, server: &str) -> Result<Option<Bytes>, Denial> {
        if !self.any() {
            return Ok(None);
        }
        let Some(rpc) = call.rpc.as_ref() else { return Ok(None) };
        let Some(method) = rpc.msg.method.clone() else { return Ok(None) };
        let all = self.of(server);
        let (wrapped, tool) = (at(&all, HookPoint::Outbound), at(&all, HookPoint::ToolCallRequest));
        let tool_call = method == "tools/call";
        if wrapped.is_empty() && (!tool_call || tool.is_empty()) {
            return Ok(None);
        }
        let original = rpc.value();
        let mut msg = original.clone();
        let hook = format!("protocols/MCP/{method}");
        for g in &wrapped {
            let payload = json!({"direction": "outbound", "server": server, "message": msg});
            self.decide(g, call, &hook, payload, &mut msg).await?;
            same_request(&original, &msg).map_err(|why| invalid(call, g, &hook, &why))?;
        }
        if tool_call {
            for g in &tool {
                let name = msg.pointer("/params/name").cloned().unwrap_or(Value::Null);
                let mut args = msg.pointer("/params/arguments").cloned().unwrap_or(Value::Null);
                let payload = json!({
                    "tool": {"id": format!("{server}/{}", name.as_str().unwrap_or_default()), "name": name, "server": server},
                    "arguments": args,
                });
                let hook = "steps/toolCallRequest";
                self.decide(g, call, hook, payload, &mut args).await?;
                if !(args.is_object() || args.is_null()) {
                    return Err(invalid(call, g, hook, "the arguments are no longer an object"));
                }
                if let Some(p) = msg.get_mut("params").and_then(Value::as_object_mut) {
                    p.insert("arguments".into(), args);
                }
            }
        }
        Ok((msg != original).then(|| Bytes::from(msg.to_string())))
    }

    /// The inbound hooks on one message from `server` to the agent: a JSON answer, or one SSE
    /// event. Returns what to send instead: the same, a modified message, a denial in place of
    /// an answer, or nothing (a denied notification or server request is dropped).
    pub async fn inbound(&self, call: &Call, server: &str, message: Bytes) -> Bytes {
        if !self.any() {
            return message;
        }
        let all = self.of(server);
        let (wrapped, results) = (at(&all, HookPoint::Inbound), at(&all, HookPoint::ToolCallResult));
        if wrapped.is_empty() && results.is_empty() {
            return message;
        }
        let Some(mut msg) =
            sse::message_text(&message).and_then(|j| serde_json::from_str::<Value>(&j).ok()).filter(Value::is_object)
        else {
            // Not a JSON-RPC message (a keep-alive, a non-JSON error page): nothing an agent reads as MCP.
            return message;
        };
        let answer = msg.get("result").is_some() || msg.get("error").is_some();
        let method = match msg.get("method").and_then(Value::as_str) {
            Some(m) => m.to_string(),
            None => call.method().unwrap_or_default().to_string(),
        };
        let original = msg.clone();
        let hook = format!("protocols/MCP/{method}");
        let mut verdict = Ok(());
        for g in &wrapped {
            let payload = json!({"direction": "inbound", "server": server, "message": msg});
            verdict = self.decide(g, call, &hook, payload, &mut msg).await;
            if verdict.is_err() {
                break;
            }
            if msg.get("id") != original.get("id") || !msg.is_object() {
                verdict = Err(invalid(call, g, &hook, "the message lost its id or its shape"));
                break;
            }
        }
        if verdict.is_ok() && answer && method == "tools/call" && msg.get("result").is_some() {
            for g in &results {
                let mut result = msg["result"].clone();
                let payload = json!({
                    "execution_id": call.exec.id.to_string(),
                    "tool": {"name": call.target().unwrap_or_default(), "server": server},
                    "outputs": result,
                    "is_error": result.get("isError").and_then(Value::as_bool).unwrap_or(false),
                    "duration_ms": call.exec.elapsed_us() / 1000,
                });
                verdict = self.decide(g, call, "steps/toolCallResult", payload, &mut result).await;
                if verdict.is_err() {
                    break;
                }
                msg["result"] = result;
            }
        }
        let out = match verdict {
            Ok(()) if msg == original => return message,
            Ok(()) => msg.to_string(),
            Err(d) => {
                let d = d.with_exec(&call.exec.id);
                call.exec.note(|n| n.denial = Some(Box::new(d.clone())));
                if !answer {
                    return Bytes::new();
                }
                d.with_id(original.get("id").cloned().unwrap_or(Value::Null)).body().to_string()
            }
        };
        sse::with_message(&message, out)
    }

    /// One hook call: asks, records the verdict, applies a modification to `subject`.
    async fn decide(
        &self,
        g: &GuardianSpec,
        call: &Call,
        hook: &str,
        payload: Value,
        subject: &mut Value,
    ) -> Result<(), Denial> {
        let started = Instant::now();
        let answer = self.ask(g, call, hook, payload).await;
        let micros = started.elapsed().as_micros() as u64;
        let name = g.name();
        let (label, result) = match answer {
            Ok(v) => {
                let why = if v.reasoning.is_empty() { String::from("no reason given") } else { v.reasoning.clone() };
                let codes = if v.codes.is_empty() { String::new() } else { format!(" [{}]", v.codes.join(", ")) };
                let r = match &v.decision {
                    Decision::Allow => Ok(()),
                    Decision::Deny => {
                        Err(deny(call, g, Reason::GuardianDenied, format!("guardian {name} denied {hook}: {why}{codes}")))
                    }
                    Decision::Modify(m) => m.apply(subject).map_err(|e| invalid(call, g, hook, &e)),
                    Decision::Unsupported(d) => Err(deny(
                        call,
                        g,
                        Reason::GuardianDenied,
                        format!("guardian {name} answered {d} to {hook}, which joch cannot pause for; denied ({d}_unsupported): {why}"),
                    )),
                };
                (v.name(), r)
            }
            Err(why) => {
                metrics::counter!("joch_guardian_failures_total", "guardian" => name.to_string()).increment(1);
                match g.failure {
                    FailMode::Open => {
                        tracing::warn!(guardian = name, hook, exec = %call.exec.id, error = %why, "guardian gave no decision; proceeding (failure: open)");
                        ("failed-open".to_string(), Ok(()))
                    }
                    FailMode::Closed => (
                        "failed-closed".to_string(),
                        Err(deny(
                            call,
                            g,
                            Reason::GuardianUnavailable,
                            format!("guardian {name} gave no decision on {hook} ({why}); it fails closed"),
                        )),
                    ),
                }
            }
        };
        metrics::histogram!("joch_guardian_seconds", "guardian" => name.to_string()).record(micros as f64 / 1e6);
        let label = if label == "modify" && result.is_err() { "modify-invalid".to_string() } else { label };
        call.exec.note(|n| {
            n.verdict(joch_audit::Verdict { by: format!("hook:{name}"), verdict: label, rule: hook.into(), micros })
        });
        result
    }

    /// Sends one hook call and reads the decision, within the guardian's timeout.
    async fn ask(&self, g: &GuardianSpec, call: &Call, hook: &str, payload: Value) -> Result<wire::Verdict, String> {
        let session = call.session.as_ref().map(|s| format!("{}-{:x}", s.owner, s.created_ms));
        let meta = Meta {
            agent: &call.caller.name,
            session: session.as_deref().unwrap_or(&call.exec.id),
            exec: &call.exec.id,
            trace: &call.exec.trace,
            node: call.node,
        };
        let body = wire::request(self.ids.fetch_add(1, Ordering::Relaxed), hook, &meta, payload);
        let exchange = async {
            let resp = self
                .client
                .post(&g.endpoint)
                .header("content-type", "application/json")
                .header("traceparent", call.exec.traceparent())
                .body(body.to_string())
                .send()
                .await
                .map_err(|e| format!("{} cannot be reached: {e}", g.endpoint))?;
            if !resp.status().is_success() {
                return Err(format!("{} answered HTTP {}", g.endpoint, resp.status()));
            }
            let mut resp = resp;
            let mut bytes = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(|e| format!("reading the answer: {e}"))? {
                bytes.extend_from_slice(&chunk);
                if bytes.len() > MAX_ANSWER {
                    return Err(format!("the answer is larger than {MAX_ANSWER} bytes"));
                }
            }
            let answer: Value =
                serde_json::from_slice(&bytes).map_err(|e| format!("the answer is not JSON-RPC: {e}"))?;
            wire::verdict(&answer)
        };
        match tokio::time::timeout(g.timeout(), exchange).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {:?}", g.timeout())),
        }
    }
}

/// The guardians of `all` called at `point`, in order.
fn at(all: &[GuardianSpec], point: HookPoint) -> Vec<&GuardianSpec> {
    all.iter().filter(|g| g.at(point)).collect()
}

/// A modified request must stay the same request: its id, method and JSON-RPC version.
fn same_request(original: &Value, modified: &Value) -> Result<(), String> {
    for k in ["jsonrpc", "id", "method"] {
        if original.get(k) != modified.get(k) {
            return Err(format!("the modified message changed its {k}"));
        }
    }
    Ok(())
}

fn deny(call: &Call, g: &GuardianSpec, reason: Reason, message: String) -> Denial {
    call.deny(reason, &format!("hook:{}", g.name()), message)
}

/// A modification joch cannot apply: denied, never sent unmodified (ACS §6.3, §6.5).
fn invalid(call: &Call, g: &GuardianSpec, hook: &str, why: &str) -> Denial {
    deny(
        call,
        g,
        Reason::GuardianDenied,
        format!(
            "guardian {} answered {hook} with a modification joch cannot apply ({why}); denied (modify_invalid)",
            g.name()
        ),
    )
}

impl std::fmt::Debug for Guardian {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guardian").field("local", &self.local).finish()
    }
}

/// Shared by the front and the exit.
pub type Shared = Arc<Guardian>;
