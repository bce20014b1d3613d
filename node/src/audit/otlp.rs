//! OTLP export: every committed audit record as a span (joch's span in the agent's trace) and as
//! a log record (the whole record as JSON), sent over gRPC to a collector. Off the request path:
//! the audit writer hands each committed batch to a bounded queue; a task exports in batches;
//! a full queue or a collector that does not answer drops batches and counts them
//! (`joch_otlp_dropped_records_total`), never holding the writer back.

use std::time::Duration;

use joch_audit::{Outcome, Record};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, status, ResourceSpans, ScopeSpans, Span, Status};
use tokio::sync::mpsc;

/// Batches waiting for export at most.
const QUEUE: usize = 256;
/// Records in one export at most.
const MAX_EXPORT: usize = 1024;

/// Where and how records are exported.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The collector's OTLP/gRPC endpoint, e.g. `http://127.0.0.1:4317`.
    pub endpoint: String,
    /// `service.name` of the resource.
    pub service_name: String,
    /// How long one export may take.
    pub timeout: Duration,
}

/// Starts the exporter for node `node`; the tap the audit writer calls with each committed batch.
pub fn start(settings: Settings, node: u64) -> anyhow::Result<joch_audit::Tap> {
    let channel = tonic::transport::Endpoint::from_shared(settings.endpoint.clone())
        .map_err(|e| anyhow::anyhow!("otlp.endpoint {:?}: {e}", settings.endpoint))?
        .timeout(settings.timeout)
        .connect_lazy();
    let (tx, rx) = mpsc::channel::<Vec<Record>>(QUEUE);
    tokio::spawn(export(rx, channel, settings, node));
    Ok(joch_audit::Tap(std::sync::Arc::new(move |batch: &[Record]| {
        if tx.try_send(batch.to_vec()).is_err() {
            metrics::counter!("joch_otlp_dropped_records_total").increment(batch.len() as u64);
        }
    })))
}

async fn export(mut rx: mpsc::Receiver<Vec<Record>>, channel: tonic::transport::Channel, s: Settings, node: u64) {
    let mut traces = TraceServiceClient::new(channel.clone());
    let mut logs = LogsServiceClient::new(channel);
    let resource = Resource {
        attributes: vec![kv("service.name", &s.service_name), kv("service.instance.id", &node.to_string())],
        ..Resource::default()
    };
    let scope = InstrumentationScope {
        name: "joch.audit".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    };
    let mut warned = false;
    while let Some(mut batch) = rx.recv().await {
        while batch.len() < MAX_EXPORT {
            match rx.try_recv() {
                Ok(more) => batch.extend(more),
                Err(_) => break,
            }
        }
        let spans: Vec<Span> = batch.iter().filter_map(span_of).collect();
        let records: Vec<LogRecord> = batch.iter().map(log_of).collect();
        let t = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(resource.clone()),
                scope_spans: vec![ScopeSpans { scope: Some(scope.clone()), spans, schema_url: String::new() }],
                schema_url: String::new(),
            }],
        };
        let l = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(resource.clone()),
                scope_logs: vec![ScopeLogs {
                    scope: Some(scope.clone()),
                    log_records: records,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        let sent = match traces.export(t).await {
            Ok(_) => logs.export(l).await.map(|_| ()),
            Err(e) => Err(e),
        };
        match sent {
            Ok(()) => {
                metrics::counter!("joch_otlp_exported_records_total").increment(batch.len() as u64);
                warned = false;
            }
            Err(e) => {
                metrics::counter!("joch_otlp_dropped_records_total").increment(batch.len() as u64);
                if !warned {
                    tracing::warn!(endpoint = %s.endpoint, error = %e, "OTLP export failed; dropping records until it works again");
                    warned = true;
                }
            }
        }
    }
}

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue { key: k.into(), value: Some(AnyValue { value: Some(any_value::Value::StringValue(v.into())) }) }
}

fn kv_int(k: &str, v: i64) -> KeyValue {
    KeyValue { key: k.into(), value: Some(AnyValue { value: Some(any_value::Value::IntValue(v)) }) }
}

fn hex_bytes(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// joch's span of a request (none for a relay: the owner exports the span).
fn span_of(r: &Record) -> Option<Span> {
    if r.outcome == Outcome::Relayed || r.exec.len() < 16 {
        return None;
    }
    let trace_id = hex_bytes(&r.trace)?;
    let span_id = hex_bytes(&r.exec[r.exec.len() - 16..])?;
    let end = r.time_us * 1000;
    let failed = !matches!(r.outcome, Outcome::Result | Outcome::Answered);
    let name = match (r.method.as_str(), r.target.as_str()) {
        ("", _) => format!("{} {}", r.http, if r.server.is_empty() { &r.endpoint } else { &r.server }),
        (m, "") => m.to_string(),
        (m, t) => format!("{m} {t}"),
    };
    let mut attributes = vec![
        kv("joch.exec", &r.exec),
        kv("joch.kind", &format!("{:?}", r.kind).to_ascii_lowercase()),
        kv("joch.agent", &r.agent),
        kv("mcp.server", &r.server),
        kv("mcp.method", &r.method),
        kv("mcp.target", &r.target),
        kv("joch.decision", &r.decision),
        kv("joch.outcome", r.outcome.as_str()),
        kv_int("joch.node", r.node as i64),
        kv_int("http.response.status_code", i64::from(r.status)),
    ];
    for (k, v) in [("joch.policy", &r.policy), ("joch.rule", &r.rule), ("joch.approval", &r.approval)] {
        if !v.is_empty() {
            attributes.push(kv(k, v));
        }
    }
    if r.code != 0 {
        attributes.push(kv_int("joch.deny.code", r.code));
    }
    Some(Span {
        trace_id,
        span_id,
        parent_span_id: hex_bytes(&r.parent_span).unwrap_or_default(),
        name,
        kind: span::SpanKind::Server as i32,
        start_time_unix_nano: end.saturating_sub(r.latency_us * 1000),
        end_time_unix_nano: end,
        attributes,
        status: Some(Status {
            code: if failed { status::StatusCode::Error } else { status::StatusCode::Ok } as i32,
            message: if failed { r.reason.clone() } else { String::new() },
        }),
        ..Span::default()
    })
}

/// The record as a log record: the whole record as JSON, in its trace.
fn log_of(r: &Record) -> LogRecord {
    let denied = r.outcome == Outcome::Denied;
    LogRecord {
        time_unix_nano: r.time_us * 1000,
        observed_time_unix_nano: r.time_us * 1000,
        severity_number: if denied { 13 } else { 9 }, // WARN, INFO
        severity_text: if denied { "WARN" } else { "INFO" }.into(),
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue(serde_json::to_string(r).unwrap_or_default())),
        }),
        attributes: vec![kv("event.name", "joch.audit"), kv("joch.exec", &r.exec), kv_int("joch.seq", r.seq as i64)],
        trace_id: hex_bytes(&r.trace).unwrap_or_default(),
        span_id: hex_bytes(r.exec.get(r.exec.len().saturating_sub(16)..).unwrap_or_default()).unwrap_or_default(),
        ..LogRecord::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_joch_s_span_in_the_agent_s_trace() {
        let r = Record {
            time_us: 2_000_000,
            latency_us: 500,
            exec: "exec-20261203-00f067aa0ba902b7".into(),
            trace: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            parent_span: "a0f067aa0ba902b7".into(),
            method: "tools/call".into(),
            target: "add".into(),
            outcome: Outcome::Denied,
            code: -32013,
            policy: "p".into(),
            ..Record::default()
        };
        let s = span_of(&r).unwrap();
        assert_eq!(s.trace_id, hex_bytes("4bf92f3577b34da6a3ce929d0e0e4736").unwrap());
        assert_eq!(s.span_id, hex_bytes("00f067aa0ba902b7").unwrap());
        assert_eq!(s.parent_span_id, hex_bytes("a0f067aa0ba902b7").unwrap());
        assert_eq!((s.start_time_unix_nano, s.end_time_unix_nano), (1_999_500_000, 2_000_000_000));
        assert_eq!(s.name, "tools/call add");
        assert_eq!(s.status.unwrap().code, status::StatusCode::Error as i32);
        assert!(s.attributes.iter().any(|a| a.key == "joch.policy"));
        assert!(span_of(&Record { outcome: Outcome::Relayed, ..r.clone() }).is_none(), "the owner exports it");
        let l = log_of(&r);
        assert_eq!(l.severity_text, "WARN");
        assert_eq!(l.span_id, hex_bytes("00f067aa0ba902b7").unwrap());
    }
}
