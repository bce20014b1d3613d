//! Sessions with a stdio server, on the node that runs its child (`upstream/stdio.rs`): joch
//! answers initialize from the child's own handshake, keeps the shared child's subscriptions as
//! the union of its sessions', and streams a call's progress as SSE while it runs.

use serde_json::json;

use super::admission::{check_pin, Admitted, Call};
use super::exit::{Answer, Event, Reply, Stream};
use super::session::{hand_out, new_session, requested_version};
use super::Proxy;
use crate::mcp::session::{Sealer, SessionToken};
use crate::mcp::{jsonrpc, sse, version};

impl Proxy {
    /// initialize for a stdio server: answered from the child's own handshake with joch.
    pub(super) async fn stdio_initialize(&self, call: &mut Call, adm: &Admitted, sealer: &Sealer) -> Reply {
        let child = match self.stdio.child(adm).await {
            Ok(c) => c,
            Err(e) => return e.deny(adm).into(),
        };
        if let Err(d) = check_pin(adm, child.version()) {
            return d.into();
        }
        // The child's result is an object (checked when it started).
        let mut result = child.init.clone();
        let protocol_version = requested_version(call)
            .or_else(|| result.get("protocolVersion").and_then(|v| v.as_str()).map(str::to_string))
            .unwrap_or_else(|| version::LEGACY_DEFAULT.into());
        if let Some(r) = result.as_object_mut() {
            r.insert("protocolVersion".into(), json!(protocol_version));
        }
        let token = SessionToken {
            upstream_version: child.version().map(str::to_string),
            ..new_session(call, protocol_version)
        };
        hand_out(call, sealer, token, Answer::Message(jsonrpc::result(call.id(), result)))
    }

    /// A request for a stdio server on the node that runs its child (`key`: the session's id).
    pub(super) async fn stdio_request(&self, adm: &Admitted, key: &str) -> Answer {
        let call = adm.call();
        let Some(rpc) = call.rpc.clone() else {
            return Answer::bad_request(jsonrpc::INVALID_REQUEST, "an empty request", None);
        };
        let m = &rpc.msg;
        // The child is shared: its subscriptions are the union of its sessions'. An update goes
        // to the sessions that subscribed; the child hears unsubscribe only from the last one.
        match (m.method.as_deref(), m.target_name()) {
            (Some("resources/subscribe"), Some(uri)) => self.stdio.streams.subscribe(key, &call.server, uri),
            (Some("resources/unsubscribe"), Some(uri)) if self.stdio.streams.unsubscribe(key, &call.server, uri) => {
                return Answer::Own(jsonrpc::result(call.id(), json!({})));
            }
            _ => {}
        }
        if !m.is_request() {
            // Notifications (initialized: joch already sent it; cancellations) and answers to
            // server requests are taken here and not forwarded.
            return Answer::accepted(false);
        }
        let child = match self.stdio.child(adm).await {
            Ok(c) => c,
            Err(e) => return e.deny(adm).into(),
        };
        let wants_progress = m.params.meta.progress_token.is_some();
        let pending = match child.call(rpc.value(), &adm.call().exec.traceparent()) {
            Ok(p) => p,
            Err(e) => return e.deny(adm).into(),
        };
        if wants_progress {
            // Progress notifications, then the answer, as SSE events while they happen.
            let events = pending.into_stream().map(|v| Event { from: None, bytes: sse::message_event(&v.to_string()) });
            return Answer::Stream(Stream::events(events, Some(call.id()), adm.cut()));
        }
        match pending.answer().await {
            Some(v) => Answer::Message(v),
            None => adm
                .deny(
                    super::deny::Reason::UpstreamUnavailable,
                    "upstream.stdio",
                    "the stdio server ended the call without an answer",
                )
                .into(),
        }
    }
}

use futures::StreamExt;
