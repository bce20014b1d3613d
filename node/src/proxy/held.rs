//! Held calls on the wire: a call a policy holds for an approval, from a client that accepts
//! SSE, is answered at once with an event stream that carries keep-alive comments while it waits
//! (the exit sends them on idle streams), then the call's own answer once it ran, or the denial
//! (approval-denied, approval-timeout). A client that sends `Prefer: respond-async`, or accepts
//! JSON only, is held in admission instead (`policy/approvals.rs`): no bytes until the decision.
//!
//! Held here only where this node admits the call: not for stdio servers, whose session may live
//! on another node (held by that node's admission, without keep-alive comments).

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use http_body_util::BodyExt;

use super::admission::Call;
use super::exit::{Answer, Reply, Stream};
use super::request::Inbound;
use super::Proxy;
use crate::mcp::sse;
use crate::policy::approvals::{prefers_async, timeout_of, Held};
use crate::policy::{subject_kind, RefusalKind};

impl Proxy {
    /// What to hold, if a policy holds this call to `server`'s capability `name` for an approval
    /// (the same decision admission makes), and whether the server is a stdio one. The one place
    /// both ways of holding (on a stream here, in admission otherwise) ask.
    pub(super) fn approval_needed(&self, call: &Call, server: &str, name: &str) -> Option<(Held, bool)> {
        let state = self.gate.state();
        let method = call.method()?;
        let kind = subject_kind(method)?;
        let rec = state.registry.servers.get(server)?;
        // Decided as admission decides, and kept for admission to take rather than decide again.
        let (result, parsed) = super::admission::judge(&self.gov, call, rec, &state, (kind, method, name));
        let refusal = result.as_ref().err().cloned();
        *call.exec.judged.lock() = Some(crate::policy::Judged {
            index: state.applied_index,
            server: server.to_string(),
            name: name.to_string(),
            result,
        });
        let refusal = refusal?;
        if refusal.kind != RefusalKind::Approval {
            return None;
        }
        let args = parsed.unwrap_or_else(|| super::admission::call_args(call));
        let timeout = timeout_of(&refusal);
        let by = refusal.by?;
        let stdio = rec.spec.transport == joch_raft_store::model::resource::Transport::Stdio;
        let held = Held {
            server: server.to_string(),
            kind,
            name: name.to_string(),
            args,
            policy: by.policy,
            rule: by.rule,
            timeout,
            no_wait: false,
        };
        Some((held, stdio))
    }

    /// The held stream for this request, if a policy holds it and the client can take SSE.
    /// Called once the message is parsed (`call.rpc`); costs nothing unless some policy rule can
    /// hold a call.
    pub(super) fn held_stream(&self, call: &Call, inb: &Inbound) -> Option<Reply> {
        let state = self.gate.state();
        if !state.registry.compiled.set.may_hold() || call.approval.is_some() {
            return None;
        }
        let accepts_sse = inb.header("accept").is_some_and(|a| a.contains("text/event-stream"));
        let no_wait = prefers_async(inb.header("prefer"));
        if inb.http_method != "POST" || !accepts_sse || no_wait {
            return None;
        }
        let msg = &call.rpc.as_ref()?.msg;
        let method = msg.method.clone()?;
        subject_kind(&method)?;
        let (server, name) = if inb.aggregate() {
            let view = call.view().and_then(|v| state.registry.virtual_servers.get(v).cloned());
            let (s, _, n) = super::aggregate::route(&method, msg, view.as_ref().map(|v| &v.spec))?;
            (s, n)
        } else {
            (call.server.clone(), msg.target_name()?.to_string())
        };
        let (held, stdio) = self.approval_needed(call, &server, &name)?;
        if stdio {
            return None;
        }
        let me = self.me.upgrade()?;
        let id = msg.id_value();
        let mut outer = call.clone();
        let inner_inb = Inbound {
            server: inb.server.clone(),
            http_method: inb.http_method,
            headers: inb.headers.clone(),
            body: inb.body.clone(),
            exec: inb.exec.clone(),
        };
        let member = Call { server, ..call.clone() };
        let answer = async move {
            match me.approvals.hold(&member, held).await {
                Ok(approval) => outer.approval = Some(approval.into()),
                Err(d) => {
                    let d = d.with_id(id).with_exec(&member.exec.id);
                    member.exec.note(|n| n.denial = Some(Box::new(d.clone())));
                    return event(d.body().to_string());
                }
            }
            let reply = me.post(&mut outer, &inner_inb).await;
            let (resp, _) = me.exit.respond(&outer, reply).await;
            let sse_answer = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|c| c.starts_with("text/event-stream"));
            let body = resp.into_body();
            if sse_answer {
                body.into_data_stream().map(|r| r.map_err(|e| e.to_string())).boxed()
            } else {
                match body.collect().await {
                    Ok(b) => event(String::from_utf8_lossy(&b.to_bytes()).into_owned()),
                    Err(e) => futures::stream::once(async move { Err(e.to_string()) }).boxed(),
                }
            }
        };
        let source = futures::stream::once(answer).flatten();
        let cut = self.gate.stale_cut(call);
        metrics::counter!("joch_approvals_held_streams_total").increment(1);
        Some(Answer::Stream(Stream::sse(source, Some(call.id()), cut)).into())
    }
}

/// One SSE event carrying `json`.
fn event(json: String) -> BoxStream<'static, Result<Bytes, String>> {
    futures::stream::once(async move { Ok(sse::message_event(&json)) }).boxed()
}
