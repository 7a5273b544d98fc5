//! The built-in analyzer on recorded incident scenarios (issue 7): each
//! scenario's traces go through a real agent's OTLP receiver into a real
//! colony, and the analyzer, talking to the colony over MCP like any client,
//! must name the expected root cause.

mod common;

use common::*;
use coral::analyze::{Analysis, analyze};
use coral::mcp::McpTools;
use serde_json::{Value, json};
use std::time::Duration;

/// One span of a recorded scenario.
struct Span {
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

const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const SELECT: &str = "SELECT id, total FROM orders WHERE user_id = $1";

/// Traces of `frontend → api → (db query, and optionally a call to
/// `dep`)`, spread over a time range; `shape` gives each request's api self
/// time, db time, dep time and error flags.
struct Recorder {
    spans: Vec<Span>,
    next: u64,
}

struct Shape {
    api_ms: f64,
    db_ms: f64,
    dep: Option<(&'static str, f64, bool)>,
    api_error: bool,
}

impl Recorder {
    fn new() -> Self {
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
    fn requests(&mut self, n: usize, from_ago_ms: i64, to_ago_ms: i64, shape: &Shape) {
        for i in 0..n {
            let at = from_ago_ms - (from_ago_ms - to_ago_ms) * i as i64 / n.max(1) as i64;
            self.request(at, shape);
        }
    }

    fn request(&mut self, at: i64, s: &Shape) {
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
    fn export(&self) -> Vec<Value> {
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

/// Runs a scenario: a colony and an agent, the recorded traces sent to the
/// agent, then the analyzer's answer to `question`.
fn run_scenario(env: &Env, rec: &Recorder, question: &str) -> Analysis {
    let a = env.json(&["agent", "status", "--json"]);
    let http = a["otlp_http"].as_str().unwrap().to_string();
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
    let n = rec.spans.len() as u64;
    env.wait_json(
        &["colony", "status", "--json"],
        Duration::from_secs(20),
        "the scenario's spans at the colony",
        |c| c["stored_spans"].as_u64() == Some(n),
    );
    let sock = env.runtime_coral().join("colony-mcp.sock");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tools = McpTools::connect_at(&sock).await.unwrap();
        let started = std::time::Instant::now();
        let first = analyze(&tools, question).await.unwrap();
        let took = started.elapsed();
        assert!(took < Duration::from_secs(1), "analysis took {took:?}");
        // Deterministic: the same data gives the same answer.
        let again = analyze(&tools, question).await.unwrap();
        assert_eq!(first.answer, again.answer);
        first
    })
}

fn setup() -> Env {
    let env = Env::new(FAST_CONFIG);
    env.start_colony();
    env.start_agent();
    env
}

const MIN: i64 = 60_000;

fn normal() -> Shape {
    Shape {
        api_ms: 8.0,
        db_ms: 2.0,
        dep: None,
        api_error: false,
    }
}

#[test]
fn missing_index_scenario_blames_the_query_on_the_database() {
    let env = setup();
    let mut rec = Recorder::new();
    rec.requests(120, 60 * MIN, 6 * MIN, &normal());
    rec.requests(
        60,
        4 * MIN,
        10_000,
        &Shape {
            db_ms: 420.0,
            ..normal()
        },
    );
    let a = run_scenario(&env, &rec, "What's wrong with the API?");
    let rc = a.root_cause.as_ref().expect("a root cause");
    assert_eq!(rc.service, "db", "{}", a.answer);
    assert_eq!(rc.kind, "slow_query", "{}", a.answer);
    assert!(a.answer.contains(SELECT), "{}", a.answer);
    assert!(
        a.answer.contains("api is affected; the cause is in db"),
        "{}",
        a.answer
    );
    assert!(a.answer.contains("frontend is a symptom"), "{}", a.answer);
    assert!(a.answer.contains("began about"), "{}", a.answer);
    // Evidence ids in the answer point at real tool calls.
    for e in &a.evidence {
        assert!(e.id.starts_with('e'));
    }
    assert!(a.evidence.iter().any(|e| e.tool == "coral_hotspots"));
}

#[test]
fn latency_regression_scenario_blames_the_service_itself() {
    let env = setup();
    let mut rec = Recorder::new();
    rec.requests(120, 60 * MIN, 6 * MIN, &normal());
    rec.requests(
        60,
        4 * MIN,
        10_000,
        &Shape {
            api_ms: 300.0,
            ..normal()
        },
    );
    let a = run_scenario(&env, &rec, "Why is checkout slow?");
    let rc = a.root_cause.as_ref().expect("a root cause");
    assert_eq!(rc.service, "api", "{}", a.answer);
    assert_eq!(rc.kind, "latency_regression", "{}", a.answer);
    assert!(a.answer.contains("frontend is a symptom"), "{}", a.answer);
}

#[test]
fn error_burst_scenario_follows_the_errors_to_the_dependency() {
    let env = setup();
    let mut rec = Recorder::new();
    let base = Shape {
        dep: Some(("payments", 5.0, false)),
        ..normal()
    };
    rec.requests(120, 60 * MIN, 6 * MIN, &base);
    rec.requests(
        60,
        4 * MIN,
        10_000,
        &Shape {
            dep: Some(("payments", 5.0, true)),
            ..normal()
        },
    );
    let a = run_scenario(&env, &rec, "Why are checkouts failing?");
    let rc = a.root_cause.as_ref().expect("a root cause");
    assert_eq!(rc.kind, "error_burst", "{}", a.answer);
    assert_eq!(rc.service, "payments", "{}", a.answer);
    assert!(a.answer.contains("errors rose"), "{}", a.answer);
}

#[test]
fn dependency_down_scenario_names_the_down_service() {
    let env = setup();
    // A connected service that nothing listens on: the agent finds it down.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    env.ok(&["connect", &format!("inventory:{port}:tcp")]);
    env.wait_json(
        &["colony", "status", "--json"],
        Duration::from_secs(10),
        "inventory down",
        |c| c.to_string().contains("\"down\""),
    );
    let mut rec = Recorder::new();
    rec.requests(
        120,
        60 * MIN,
        6 * MIN,
        &Shape {
            dep: Some(("inventory", 3.0, false)),
            ..normal()
        },
    );
    rec.requests(
        60,
        4 * MIN,
        10_000,
        &Shape {
            dep: Some(("inventory", 1.0, true)),
            ..normal()
        },
    );
    let a = run_scenario(&env, &rec, "What's wrong?");
    let rc = a.root_cause.as_ref().expect("a root cause");
    assert_eq!(rc.kind, "dependency_down", "{}", a.answer);
    assert_eq!(rc.service, "inventory", "{}", a.answer);
    assert!(a.answer.contains("inventory is down"), "{}", a.answer);
}

#[test]
fn healthy_system_gets_a_clear_no_problem_answer() {
    let env = setup();
    let mut rec = Recorder::new();
    rec.requests(120, 60 * MIN, 6 * MIN, &normal());
    rec.requests(60, 4 * MIN, 10_000, &normal());
    let a = run_scenario(&env, &rec, "Are there any issues?");
    assert!(a.root_cause.is_none(), "{}", a.answer);
    assert!(a.answer.starts_with("No problem found"), "{}", a.answer);
}
