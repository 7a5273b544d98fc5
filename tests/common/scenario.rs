//! Recorded traces for scenario tests: `frontend → api → db (and a
//! dependency)` requests with chosen timings, sent as OTLP/JSON.

use serde_json::{Value, json};

/// One span of a recorded scenario.
pub struct Span {
    trace: u64,
    id: u64,
    parent: Option<u64>,
    service: &'static str,
    name: String,
    kind: i32,
    start_ago_ms: i64,
    dur_ms: f64,
    error: bool,
    attrs: Vec<(&'static str, String)>,
}

pub const SERVER: i32 = 2;
pub const CLIENT: i32 = 3;
pub const SELECT: &str = "SELECT id, total FROM orders WHERE user_id = $1";

/// Traces of `frontend → api → (db query, and optionally a call to
/// `dep`)`, spread over a time range; `shape` gives each request's api self
/// time, db time, dep time and error flags.
pub struct Recorder {
    pub spans: Vec<Span>,
    next: u64,
}

pub struct Shape {
    pub api_ms: f64,
    pub db_ms: f64,
    pub dep: Option<(&'static str, f64, bool)>,
    pub api_error: bool,
}

impl Recorder {
    pub fn new() -> Self {
        Recorder {
            spans: Vec::new(),
            next: 1,
        }
    }

    fn id(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    /// `n` requests evenly between `from_ago_ms` and `to_ago_ms`.
    pub fn requests(&mut self, n: usize, from_ago_ms: i64, to_ago_ms: i64, shape: &Shape) {
        for i in 0..n {
            let at = from_ago_ms - (from_ago_ms - to_ago_ms) * i as i64 / n.max(1) as i64;
            self.request(at, shape);
        }
    }

    pub fn request(&mut self, at: i64, s: &Shape) {
        let trace = self.id();
        let fe = self.id();
        let api = self.id();
        let db = self.id();
        let dep_time = s.dep.map_or(0.0, |d| d.1);
        let api_total = s.api_ms + s.db_ms + dep_time;
        let total = api_total + 2.0;
        let err = s.api_error || s.dep.is_some_and(|d| d.2);
        self.spans.push(Span {
            trace,
            id: fe,
            parent: None,
            service: "frontend",
            name: "GET /checkout".into(),
            kind: SERVER,
            start_ago_ms: at,
            dur_ms: total,
            error: err,
            attrs: vec![("http.route", "/checkout".into())],
        });
        self.spans.push(Span {
            trace,
            id: api,
            parent: Some(fe),
            service: "api",
            name: "GET /orders".into(),
            kind: SERVER,
            start_ago_ms: at - 1,
            dur_ms: api_total,
            error: err,
            attrs: vec![("http.route", "/orders".into())],
        });
        self.spans.push(Span {
            trace,
            id: db,
            parent: Some(api),
            service: "api",
            name: "SELECT orders".into(),
            kind: CLIENT,
            start_ago_ms: at - 1,
            dur_ms: s.db_ms,
            error: false,
            attrs: vec![
                ("db.system", "postgresql".into()),
                ("peer.service", "db".into()),
                ("db.name", "shop".into()),
                ("db.statement", SELECT.into()),
            ],
        });
        if let Some((dep, ms, e)) = s.dep {
            let d = self.id();
            self.spans.push(Span {
                trace,
                id: d,
                parent: Some(api),
                service: "api",
                name: format!("POST {dep}"),
                kind: CLIENT,
                start_ago_ms: at - 1,
                dur_ms: ms,
                error: e,
                attrs: vec![("peer.service", dep.into())],
            });
        }
    }

    /// OTLP/JSON export requests, one per service.
    pub fn export(&self) -> Vec<Value> {
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64;
        let mut by_service: std::collections::BTreeMap<&str, Vec<Value>> = Default::default();
        for s in &self.spans {
            let start = now_ns - s.start_ago_ms * 1_000_000;
            let end = start + (s.dur_ms * 1e6) as i64;
            let mut span = json!({
                "traceId": format!("{:032x}", s.trace),
                "spanId": format!("{:016x}", s.id),
                "name": s.name,
                "kind": s.kind,
                "startTimeUnixNano": start.to_string(),
                "endTimeUnixNano": end.to_string(),
                "attributes": s.attrs.iter().map(|(k, v)| json!({"key": k, "value": {"stringValue": v}})).collect::<Vec<_>>(),
                "status": {"code": if s.error { 2 } else { 1 }},
            });
            if let Some(p) = s.parent {
                span["parentSpanId"] = json!(format!("{p:016x}"));
            }
            by_service.entry(s.service).or_default().push(span);
        }
        by_service
            .into_iter()
            .map(|(svc, spans)| {
                json!({"resourceSpans": [{
                    "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": svc}}]},
                    "scopeSpans": [{"scope": {"name": "recorded"}, "spans": spans}],
                }]})
            })
            .collect()
    }
}

/// Posts the recorded traces to an agent's OTLP/HTTP receiver.
pub fn send(http: &str, rec: &Recorder) {
    let client = reqwest::blocking::Client::new();
    for body in rec.export() {
        let resp = client
            .post(format!("http://{http}/v1/traces"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{}", resp.text().unwrap());
    }
}
