//! OTLP requests → telemetry rows. Pure: no I/O (`spans` reads the clock;
//! `spans_at` takes it). Items that cannot be stored (a span without a valid
//! trace or span id, a span that ends more than [`MAX_FUTURE`] ahead of the
//! agent's clock, a data point without a value, a log with a malformed trace
//! id) are counted as rejected and named in the partial-success message;
//! everything else is kept.

use coral_proto::{LogRecord, MetricRecord, SpanRecord};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use opentelemetry_proto::tonic::resource::v1::Resource;
use serde_json::{Map, Value, json};

/// Rows to store, and what was rejected.
#[derive(Debug)]
pub struct Converted<T> {
    pub rows: Vec<T>,
    pub rejected: i64,
    /// Why the first rejected item was rejected.
    pub reason: Option<String>,
}

impl<T> Default for Converted<T> {
    fn default() -> Self {
        Converted {
            rows: Vec::new(),
            rejected: 0,
            reason: None,
        }
    }
}

impl<T> Converted<T> {
    fn reject(&mut self, why: impl FnOnce() -> String) {
        self.rejected += 1;
        if self.reason.is_none() {
            self.reason = Some(why());
        }
    }

    /// The partial-success message: empty when all was accepted.
    pub fn message(&self) -> String {
        match &self.reason {
            Some(r) if self.rejected > 1 => format!("{} rejected; first: {r}", self.rejected),
            Some(r) => r.clone(),
            None => String::new(),
        }
    }
}

/// JSON for an OTLP value: strings, numbers, booleans, arrays and maps as
/// themselves; bytes as lowercase hex.
pub fn any_to_json(v: &AnyValue) -> Value {
    match &v.value {
        None => Value::Null,
        Some(any_value::Value::StringValue(s)) => json!(s),
        Some(any_value::Value::BoolValue(b)) => json!(b),
        Some(any_value::Value::IntValue(i)) => json!(i),
        Some(any_value::Value::DoubleValue(d)) => json!(d),
        Some(any_value::Value::ArrayValue(a)) => {
            Value::Array(a.values.iter().map(any_to_json).collect())
        }
        Some(any_value::Value::KvlistValue(kv)) => attrs_map(&kv.values),
        Some(any_value::Value::BytesValue(b)) => json!(hex(b)),
        // An index into a profiles string table, meaningless without it.
        Some(any_value::Value::StringValueStrindex(i)) => json!({ "strindex": i }),
    }
}

fn attrs_map(attrs: &[KeyValue]) -> Value {
    let mut m = Map::with_capacity(attrs.len());
    for kv in attrs {
        m.insert(
            kv.key.clone(),
            kv.value.as_ref().map(any_to_json).unwrap_or(Value::Null),
        );
    }
    Value::Object(m)
}

fn attrs_json(attrs: &[KeyValue]) -> String {
    attrs_map(attrs).to_string()
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xf) as usize] as char);
    }
    s
}

/// `service.name` of a resource; OTel's default when absent.
pub fn service_name(resource: Option<&Resource>) -> String {
    resource
        .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| match &v.value {
            Some(any_value::Value::StringValue(s)) if !s.is_empty() => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_else(|| "unknown_service".to_string())
}

fn valid_id(id: &[u8], len: usize) -> bool {
    id.len() == len && id.iter().any(|b| *b != 0)
}

fn nanos_to_us(ns: u64) -> i64 {
    (ns / 1000).min(i64::MAX as u64) as i64
}

fn span_kind(k: i32) -> &'static str {
    match k {
        1 => "internal",
        2 => "server",
        3 => "client",
        4 => "producer",
        5 => "consumer",
        _ => "unspecified",
    }
}

fn status_code(c: i32) -> &'static str {
    match c {
        1 => "ok",
        2 => "error",
        _ => "unset",
    }
}

/// How far ahead of the agent's clock a span may end (clock skew between
/// hosts); a span dated later would sit at the top of every trace list with
/// an absurd duration (issue 16), so it is refused.
pub const MAX_FUTURE: std::time::Duration = std::time::Duration::from_secs(600);

pub fn spans(agent_id: &str, req: &ExportTraceServiceRequest) -> Converted<SpanRecord> {
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos().min(u64::MAX as u128) as u64)
        .unwrap_or(0);
    spans_at(agent_id, req, now_ns)
}

/// [`spans`] with the agent's clock (ns since the Unix epoch) given.
pub fn spans_at(
    agent_id: &str,
    req: &ExportTraceServiceRequest,
    now_ns: u64,
) -> Converted<SpanRecord> {
    let latest_end = now_ns.saturating_add(MAX_FUTURE.as_nanos() as u64);
    let mut out = Converted::default();
    for rs in &req.resource_spans {
        let service = service_name(rs.resource.as_ref());
        let resource = rs
            .resource
            .as_ref()
            .map(|r| attrs_json(&r.attributes))
            .unwrap_or_else(|| "{}".into());
        for ss in &rs.scope_spans {
            let scope = ss
                .scope
                .as_ref()
                .map(|s| s.name.clone())
                .unwrap_or_default();
            for span in &ss.spans {
                if !valid_id(&span.trace_id, 16) {
                    out.reject(|| {
                        format!(
                            "span '{}' has an invalid trace id (need 16 non-zero bytes)",
                            span.name
                        )
                    });
                    continue;
                }
                if !valid_id(&span.span_id, 8) {
                    out.reject(|| {
                        format!(
                            "span '{}' has an invalid span id (need 8 non-zero bytes)",
                            span.name
                        )
                    });
                    continue;
                }
                if span.end_time_unix_nano < span.start_time_unix_nano {
                    out.reject(|| format!("span '{}' ends before it starts", span.name));
                    continue;
                }
                if span.end_time_unix_nano > latest_end {
                    out.reject(|| {
                        format!(
                            "span '{}' ends more than {}s after the agent's clock (check the sender's clock)",
                            span.name,
                            MAX_FUTURE.as_secs()
                        )
                    });
                    continue;
                }
                let events: Vec<Value> = span
                    .events
                    .iter()
                    .map(|e| {
                        json!({
                            "name": e.name,
                            "time_us": nanos_to_us(e.time_unix_nano),
                            "attributes": attrs_map(&e.attributes),
                        })
                    })
                    .collect();
                let status = span.status.as_ref();
                out.rows.push(SpanRecord {
                    agent_id: agent_id.to_string(),
                    seq: 0,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: valid_id(&span.parent_span_id, 8)
                        .then(|| hex(&span.parent_span_id)),
                    service: service.clone(),
                    name: span.name.clone(),
                    kind: span_kind(span.kind).into(),
                    start_us: nanos_to_us(span.start_time_unix_nano),
                    duration_us: nanos_to_us(span.end_time_unix_nano - span.start_time_unix_nano),
                    status_code: status_code(status.map(|s| s.code).unwrap_or(0)).into(),
                    status_message: status.map(|s| s.message.clone()).unwrap_or_default(),
                    attributes: attrs_json(&span.attributes),
                    events: Value::Array(events).to_string(),
                    resource: resource.clone(),
                    scope: scope.clone(),
                });
            }
        }
    }
    out
}

pub fn metrics(agent_id: &str, req: &ExportMetricsServiceRequest) -> Converted<MetricRecord> {
    let mut out = Converted::default();
    for rm in &req.resource_metrics {
        let service = service_name(rm.resource.as_ref());
        for sm in &rm.scope_metrics {
            for m in &sm.metrics {
                let row = |kind: &'static str, ts: u64, attrs: &[KeyValue]| MetricRecord {
                    agent_id: agent_id.to_string(),
                    seq: 0,
                    service: service.clone(),
                    name: m.name.clone(),
                    unit: m.unit.clone(),
                    kind: kind.into(),
                    ts_us: nanos_to_us(ts),
                    value: None,
                    count: None,
                    sum: None,
                    attributes: attrs_json(attrs),
                };
                match &m.data {
                    None => out.reject(|| format!("metric '{}' has no data", m.name)),
                    Some(metric::Data::Gauge(g)) => {
                        number_points(&mut out, &g.data_points, "gauge", &row, &m.name)
                    }
                    Some(metric::Data::Sum(s)) => {
                        number_points(&mut out, &s.data_points, "sum", &row, &m.name)
                    }
                    Some(metric::Data::Histogram(h)) => {
                        for p in &h.data_points {
                            let mut r = row("histogram", p.time_unix_nano, &p.attributes);
                            r.count = Some(p.count);
                            r.sum = p.sum;
                            out.rows.push(r);
                        }
                    }
                    Some(metric::Data::ExponentialHistogram(h)) => {
                        for p in &h.data_points {
                            let mut r =
                                row("exponential_histogram", p.time_unix_nano, &p.attributes);
                            r.count = Some(p.count);
                            r.sum = p.sum;
                            out.rows.push(r);
                        }
                    }
                    Some(metric::Data::Summary(s)) => {
                        for p in &s.data_points {
                            let mut r = row("summary", p.time_unix_nano, &p.attributes);
                            r.count = Some(p.count);
                            r.sum = Some(p.sum);
                            out.rows.push(r);
                        }
                    }
                }
            }
        }
    }
    out
}

fn number_points(
    out: &mut Converted<MetricRecord>,
    points: &[opentelemetry_proto::tonic::metrics::v1::NumberDataPoint],
    kind: &'static str,
    row: &impl Fn(&'static str, u64, &[KeyValue]) -> MetricRecord,
    name: &str,
) {
    for p in points {
        let value = match p.value {
            Some(number_data_point::Value::AsDouble(d)) => d,
            Some(number_data_point::Value::AsInt(i)) => i as f64,
            None => {
                out.reject(|| format!("a data point of metric '{name}' has no value"));
                continue;
            }
        };
        let mut r = row(kind, p.time_unix_nano, &p.attributes);
        r.value = Some(value);
        out.rows.push(r);
    }
}

pub fn logs(agent_id: &str, req: &ExportLogsServiceRequest) -> Converted<LogRecord> {
    let mut out = Converted::default();
    for rl in &req.resource_logs {
        let service = service_name(rl.resource.as_ref());
        for sl in &rl.scope_logs {
            for l in &sl.log_records {
                if !l.trace_id.is_empty() && l.trace_id.len() != 16 {
                    out.reject(|| "a log record has a malformed trace id (need 16 bytes)".into());
                    continue;
                }
                if !l.span_id.is_empty() && l.span_id.len() != 8 {
                    out.reject(|| "a log record has a malformed span id (need 8 bytes)".into());
                    continue;
                }
                // OTLP: use the observed time when the event time is unknown.
                let ts = if l.time_unix_nano != 0 {
                    l.time_unix_nano
                } else {
                    l.observed_time_unix_nano
                };
                let body = match l.body.as_ref().map(any_to_json) {
                    Some(Value::String(s)) => s,
                    Some(Value::Null) | None => String::new(),
                    Some(other) => other.to_string(),
                };
                out.rows.push(LogRecord {
                    agent_id: agent_id.to_string(),
                    seq: 0,
                    service: service.clone(),
                    ts_us: nanos_to_us(ts),
                    severity_number: l.severity_number,
                    severity_text: l.severity_text.clone(),
                    body,
                    trace_id: valid_id(&l.trace_id, 16).then(|| hex(&l.trace_id)),
                    span_id: valid_id(&l.span_id, 8).then(|| hex(&l.span_id)),
                    attributes: attrs_json(&l.attributes),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    fn request(times: &[(u64, u64)]) -> ExportTraceServiceRequest {
        let spans = times
            .iter()
            .enumerate()
            .map(|(i, &(start, end))| Span {
                trace_id: [7u8; 16].to_vec(),
                span_id: ((i as u64) + 1).to_be_bytes().to_vec(),
                name: format!("op-{i}"),
                start_time_unix_nano: start,
                end_time_unix_nano: end,
                ..Default::default()
            })
            .collect();
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    /// Issue 16 item 10: spans dated in the year 2500 (or at u64::MAX) sat at
    /// the top of every `coral query traces` forever with absurd durations.
    #[test]
    fn issue16_future_dated_spans_are_refused_with_a_reason() {
        let now: u64 = 1_760_000_000_000_000_000;
        let y2500: u64 = 16_725_225_600_000_000_000;
        let c = spans_at(
            "a",
            &request(&[
                (now - 5_000_000, now),                     // ordinary
                (now + 1_000_000_000, now + 2_000_000_000), // 2 s ahead: skew
                (y2500, y2500 + 1_000),
                (u64::MAX - 10, u64::MAX),
                (now, y2500), // starts now, ends in 2500
            ]),
            now,
        );
        assert_eq!(c.rows.len(), 2, "{:?}", c.rows);
        assert_eq!(c.rejected, 3);
        assert!(
            c.message().contains("after the agent's clock"),
            "{}",
            c.message()
        );
        assert!(c.rows.iter().all(|r| r.duration_us <= 2_000_000));
    }
}
