//! The one exit: every answer leaves for the agent through [`Exit::respond`], which runs the
//! stages on each message (a JSON answer, each SSE event, each routed member's event), in every
//! era, translation and endpoint. The layers answer with an [`Answer`]; only this module turns an
//! answer into an HTTP response, so upstream content cannot leave without the stages.
//!
//! Streams stay streams: SSE is relayed event by event, with keep-alive comments while idle, and
//! ends when the source ends, the agent goes away, or the cut fires (the server stopped being
//! admissible, or this node turned stale); a POST stream's pending request then gets the denial
//! as its answer.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt;
use serde_json::Value;

use super::admission::Call;
use super::deny::Denial;
use super::stages::{Outcome, Stage};
use crate::mcp::sse::{self, EventSplitter};
use crate::mesh::BodyStream;

/// A rewrite applied to each SSE event on its way (an era translation, a member's ids); an event
/// rewritten to nothing (empty) is dropped.
pub type EventMap = Box<dyn Fn(Bytes) -> Bytes + Send + Sync>;

/// What a layer answers.
pub enum Answer {
    /// The upstream's answer, passed on with its status and content type.
    Upstream {
        /// Its status.
        status: u16,
        /// Its content type.
        content_type: Option<HeaderValue>,
        /// Its body.
        body: Bytes,
    },
    /// A JSON-RPC message joch built from upstream answers (translated, merged, routed).
    Message(Value),
    /// A JSON-RPC message joch answers itself (a ping, its own discover or initialize).
    Own(Value),
    /// An SSE stream.
    Stream(Stream),
    /// A status without a body (202 to a notification, 200 to a DELETE, 405 to a GET).
    Status {
        /// The status.
        status: StatusCode,
        /// An `Allow` header (405).
        allow: Option<&'static str>,
        /// Whether the upstream said it (else joch did).
        upstream: bool,
    },
    /// A denial.
    Denied(Denial),
    /// A protocol error joch answers before anything is forwarded.
    Rejected {
        /// HTTP status.
        status: StatusCode,
        /// The JSON-RPC error.
        body: Value,
    },
    /// The answer of the node that owns the session (it admitted the request and ran the stages).
    Relayed {
        /// The owner.
        owner: u64,
        /// Its status.
        status: u16,
        /// Its content type.
        content_type: Option<String>,
        /// Its body, as it streams in.
        body: BodyStream,
    },
}

impl From<Denial> for Answer {
    fn from(d: Denial) -> Answer {
        Answer::Denied(d)
    }
}

impl Answer {
    /// 202 Accepted (a notification or an answer taken).
    pub fn accepted(upstream: bool) -> Answer {
        Answer::Status { status: StatusCode::ACCEPTED, allow: None, upstream }
    }

    /// A protocol error (400 unless said otherwise).
    pub fn reject(status: StatusCode, id: Value, code: i64, message: &str, data: Option<Value>) -> Answer {
        Answer::Rejected { status, body: crate::mcp::jsonrpc::error(id, code, message, data) }
    }

    /// A 400 protocol error without an id.
    pub fn bad_request(code: i64, message: &str, data: Option<Value>) -> Answer {
        Answer::reject(StatusCode::BAD_REQUEST, Value::Null, code, message, data)
    }
}

/// A message of a stream that is already framed as an SSE event.
pub struct Event {
    /// On the aggregate endpoint: the member it came from.
    pub from: Option<Arc<str>>,
    /// The event.
    pub bytes: Bytes,
}

/// Where a stream's events come from.
pub enum Source {
    /// SSE bytes as they arrive (an upstream's body): split into events here.
    Sse(BoxStream<'static, Result<Bytes, String>>),
    /// Events already framed (a stdio child's messages, merged members).
    Events(BoxStream<'static, Event>),
}

/// An SSE answer.
pub struct Stream {
    source: Source,
    request_id: Option<Value>,
    transform: Option<EventMap>,
    cut: BoxFuture<'static, Denial>,
}

impl Stream {
    /// A stream from `source`, ending with the cut's denial (sent as the answer to
    /// `request_id`, if this stream answers a request) when `cut` resolves first.
    pub fn new(source: Source, request_id: Option<Value>, cut: impl Future<Output = Denial> + Send + 'static) -> Self {
        Stream { source, request_id, transform: None, cut: Box::pin(cut) }
    }

    /// Each event rewritten on its way (before the stages see it).
    pub fn map(mut self, transform: EventMap) -> Self {
        self.transform = Some(transform);
        self
    }

    /// An upstream's SSE body.
    pub fn sse<S, E>(body: S, request_id: Option<Value>, cut: impl Future<Output = Denial> + Send + 'static) -> Self
    where
        S: futures::Stream<Item = Result<Bytes, E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let body = body.map(|r| r.map_err(|e| e.to_string()));
        Stream::new(Source::Sse(Box::pin(body)), request_id, cut)
    }

    /// Events already framed.
    pub fn events(
        events: impl futures::Stream<Item = Event> + Send + 'static,
        request_id: Option<Value>,
        cut: impl Future<Output = Denial> + Send + 'static,
    ) -> Self {
        Stream::new(Source::Events(Box::pin(events)), request_id, cut)
    }
}

/// An answer with the session id to hand out, if any.
pub struct Reply {
    /// The answer.
    pub answer: Answer,
    /// A sealed session id for the `Mcp-Session-Id` header.
    pub session_id: Option<String>,
}

impl<T: Into<Answer>> From<T> for Reply {
    fn from(a: T) -> Reply {
        Reply { answer: a.into(), session_id: None }
    }
}

impl From<Stream> for Answer {
    fn from(s: Stream) -> Answer {
        Answer::Stream(s)
    }
}

/// The exit.
#[derive(Clone)]
pub struct Exit {
    stages: Arc<[Arc<dyn Stage>]>,
    guardian: Arc<crate::guardian::Guardian>,
    keepalive: Duration,
}

fn json_response(status: StatusCode, content_type: Option<HeaderValue>, body: Bytes) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    if let Some(ct) = content_type {
        r.headers_mut().insert("content-type", ct);
    }
    r
}

const JSON: HeaderValue = HeaderValue::from_static("application/json");

impl Exit {
    /// An exit running the guardian's inbound hooks, then these stages; idle streams get a
    /// keep-alive comment every `keepalive`.
    pub fn new(stages: Arc<[Arc<dyn Stage>]>, guardian: Arc<crate::guardian::Guardian>, keepalive: Duration) -> Exit {
        Exit { stages, guardian, keepalive }
    }

    /// One message on its way to the agent: the guardian's inbound hooks, then the stages.
    /// `member`: on the aggregate endpoint, the member a stream's event came from. Empty:
    /// dropped (a guardian denied a notification).
    async fn pass(&self, call: &Call, member: Option<&str>, bytes: Bytes) -> Bytes {
        // The guardians of the server that said it (a routed call's member); the stages see the
        // endpoint's name, or the member.
        let mut bytes = bytes;
        if self.guardian.any() {
            let guarded = member.map(str::to_string).unwrap_or_else(|| self.guardian.server_of(call));
            bytes = self.guardian.inbound(call, &guarded, bytes).await;
            if bytes.is_empty() {
                return bytes;
            }
        }
        self.stage(call, member.unwrap_or(&call.server), &mut bytes);
        bytes
    }

    fn stage(&self, call: &Call, server: &str, bytes: &mut Bytes) {
        for s in self.stages.iter() {
            s.on_message(call, server, bytes);
        }
    }

    /// Turns a reply into the HTTP response, running the stages on what leaves; says how the
    /// request ended.
    pub async fn respond(&self, call: &Call, reply: Reply) -> (Response, Outcome) {
        let (mut resp, outcome) = match reply.answer {
            Answer::Upstream { status, content_type, body } => {
                let body = self.pass(call, None, body).await;
                let code = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
                (json_response(code, content_type, body), Outcome::Forwarded { status })
            }
            Answer::Message(v) => {
                let body = self.pass(call, None, Bytes::from(v.to_string())).await;
                (json_response(StatusCode::OK, Some(JSON), body), Outcome::Forwarded { status: 200 })
            }
            Answer::Own(v) => {
                // joch's own answer: no server said it, so no guardian sees it; the stages do.
                let mut body = Bytes::from(v.to_string());
                self.stage(call, &call.server, &mut body);
                (json_response(StatusCode::OK, Some(JSON), body), Outcome::Answered)
            }
            Answer::Stream(s) => (self.stream(call, s), Outcome::Forwarded { status: 200 }),
            Answer::Status { status, allow, upstream } => {
                let mut r = status.into_response();
                if let Some(a) = allow {
                    r.headers_mut().insert("allow", HeaderValue::from_static(a));
                }
                let outcome = if upstream || status == StatusCode::METHOD_NOT_ALLOWED {
                    if status == StatusCode::METHOD_NOT_ALLOWED {
                        Outcome::Rejected { status: 405 }
                    } else {
                        Outcome::Forwarded { status: status.as_u16() }
                    }
                } else {
                    Outcome::Answered
                };
                (r, outcome)
            }
            Answer::Denied(d) => Self::denied(call, d),
            Answer::Rejected { status, body } => {
                let r = json_response(status, Some(JSON), Bytes::from(body.to_string()));
                (r, Outcome::Rejected { status: status.as_u16() })
            }
            Answer::Relayed { owner, status, content_type, body } => {
                let code = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
                let mut r = Response::new(Body::from_stream(body.map(Ok::<_, Infallible>)));
                *r.status_mut() = code;
                if let Some(ct) = content_type.and_then(|c| HeaderValue::from_str(&c).ok()) {
                    r.headers_mut().insert("content-type", ct);
                }
                (r, Outcome::Relayed { owner, status })
            }
        };
        if let Some(v) = reply.session_id.and_then(|s| HeaderValue::from_str(&s).ok()) {
            resp.headers_mut().insert("mcp-session-id", v);
        }
        (resp, outcome)
    }

    /// A denial as the HTTP response (it carries the execution id).
    pub fn denied(call: &Call, d: Denial) -> (Response, Outcome) {
        let d = d.with_exec(&call.exec.id);
        let resp = d.clone().into_response();
        (resp, Outcome::Denied(Box::new(d)))
    }

    /// Relays a stream event by event (see the module doc).
    fn stream(&self, call: &Call, s: Stream) -> Response {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(64);
        let exit = self.clone();
        let call = call.clone();
        let keepalive = self.keepalive;
        tokio::spawn(async move {
            metrics::gauge!("joch_mcp_open_streams").increment(1.0);
            let Stream { source, request_id, transform, cut } = s;
            let mut cut = cut;
            let mut split = EventSplitter::default();
            let mut ka = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
            // Both sources as one stream of events: SSE bytes are split here.
            let (mut sse, mut events) = match source {
                Source::Sse(s) => (Some(s), None),
                Source::Events(e) => (None, Some(e)),
            };
            // An event on its way out: rewritten, then through the guardian and the stages
            // (`None`: dropped).
            let staged = |ev: Event| {
                let bytes = match &transform {
                    Some(t) => t(ev.bytes),
                    None => ev.bytes,
                };
                let (exit, call) = (&exit, &call);
                async move {
                    if bytes.is_empty() {
                        return None;
                    }
                    Some(exit.pass(call, ev.from.as_deref(), bytes).await).filter(|b| !b.is_empty())
                }
            };
            let cut_denial = 'relay: loop {
                tokio::select! {
                    biased;
                    d = &mut cut => break Some(d),
                    _ = tx.closed() => break None,
                    chunk = async { sse.as_mut()?.next().await }, if sse.is_some() => match chunk {
                        Some(Ok(b)) => match split.push(&b) {
                            Ok(evs) => {
                                for bytes in evs {
                                    if let Some(out) = staged(Event { from: None, bytes }).await {
                                        if tx.send(Ok(out)).await.is_err() {
                                            break 'relay None;
                                        }
                                    }
                                }
                                ka.reset();
                            }
                            Err(e) => {
                                tracing::warn!(server = %call.server, error = %e, "closing stream");
                                break None;
                            }
                        },
                        Some(Err(e)) => {
                            tracing::debug!(server = %call.server, error = %e, "upstream stream ended with an error");
                            break None;
                        }
                        None => {
                            let rest = std::mem::take(&mut split).finish();
                            if let Some(bytes) = rest {
                                if let Some(out) = staged(Event { from: None, bytes }).await {
                                    let _ = tx.send(Ok(out)).await;
                                }
                            }
                            break None;
                        }
                    },
                    ev = async { events.as_mut()?.next().await }, if events.is_some() => match ev {
                        Some(ev) => {
                            if let Some(out) = staged(ev).await {
                                if tx.send(Ok(out)).await.is_err() {
                                    break None;
                                }
                            }
                            ka.reset();
                        }
                        None => break None,
                    },
                    _ = ka.tick() => {
                        if tx.send(Ok(Bytes::from_static(b": keep-alive\n\n"))).await.is_err() {
                            break None;
                        }
                    }
                }
            };
            if let Some(d) = cut_denial {
                tracing::info!(server = %call.server, reason = d.reason.as_str(), "stream cut");
                call.exec.note(|n| n.cut = Some(format!("{} ({}): {}", d.reason.as_str(), d.rule, d.message)));
                if let Some(id) = request_id {
                    let d = d.with_id(id).with_exec(&call.exec.id);
                    let _ = tx.send(Ok(sse::message_event(&d.body().to_string()))).await;
                }
            }
            metrics::gauge!("joch_mcp_open_streams").decrement(1.0);
        });
        let body = Body::from_stream(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)));
        let mut r = Response::new(body);
        r.headers_mut().insert("content-type", HeaderValue::from_static("text/event-stream"));
        r.headers_mut().insert("cache-control", HeaderValue::from_static("no-cache, no-transform"));
        r.headers_mut().insert("x-accel-buffering", HeaderValue::from_static("no"));
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A stream with nothing to say (a held call waiting for its approval) sends keep-alive
    /// comments, then what comes.
    #[tokio::test]
    async fn an_idle_stream_gets_keep_alive_comments_then_its_events() {
        let guardian = Arc::new(crate::guardian::Guardian::new(None, Default::default()).unwrap());
        let exit = Exit::new(Arc::new([]), guardian, Duration::from_millis(20));
        let call = Call {
            node: 1,
            server: "s".into(),
            caller: crate::auth::agent::Caller::anonymous(),
            http_method: "POST",
            rpc: None,
            session: None,
            approval: None,
            exec: crate::audit::exec::Exec::detached(),
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let later = futures::stream::once(async move {
            let _ = rx.await;
            Ok::<_, String>(sse::message_event(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#))
        });
        let s = Stream::sse(later, Some(serde_json::json!(1)), std::future::pending());
        let (resp, _) = exit.respond(&call, Answer::Stream(s).into()).await;
        let mut body = resp.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b": keep-alive\n\n");
        tx.send(()).unwrap();
        let mut rest = Vec::new();
        while let Some(Ok(f)) = body.frame().await {
            if let Ok(d) = f.into_data() {
                rest.extend_from_slice(&d);
            }
        }
        let text = String::from_utf8(rest).unwrap();
        assert!(text.ends_with("data: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n"), "{text}");
    }
}
