//! Issue 6: OTLP ingestion with real clients (the OpenTelemetry Python SDK's
//! gRPC and HTTP exporters) into a real agent's DuckDB, and the receiver's
//! answers to bad input and overload.

mod common;

use common::*;
use prost::Message;
use serde_json::Value;
use std::time::Duration;

/// The venv python with the OpenTelemetry SDK (set by `make test`). In CI
/// its absence is a failure, not a skip.
fn sdk_python() -> Option<String> {
    let py = std::env::var("CORAL_PYTHON").unwrap_or_default();
    let ok = !py.is_empty()
        && std::process::Command::new(&py)
            .args(["-c", "import opentelemetry.exporter.otlp.proto.grpc, opentelemetry.exporter.otlp.proto.http"])
            .status()
            .is_ok_and(|s| s.success());
    if !ok && std::env::var_os("CI").is_some() {
        panic!(
            "CI: CORAL_PYTHON ('{py}') has no OpenTelemetry SDK; 'make test' installs it (packaging/dev/deps.sh)"
        );
    }
    ok.then_some(py)
}

fn otlp_addrs(env: &Env) -> (String, String) {
    let a = env.json(&["agent", "status", "--json"]);
    (
        a["otlp_grpc"].as_str().unwrap().to_string(),
        a["otlp_http"].as_str().unwrap().to_string(),
    )
}

fn send_with_sdk(py: &str, protocol: &str, addr: &str, service: &str, traces: usize) -> Value {
    let out = std::process::Command::new(py)
        .args([
            concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/otlp/send.py"),
            protocol,
            addr,
            service,
            &traces.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "send.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sent: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        sent["flushed"],
        true,
        "the SDK did not flush: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    sent
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[test]
fn python_sdk_traces_metrics_and_logs_round_trip_over_grpc_and_http() {
    let Some(py) = sdk_python() else {
        eprintln!(
            "SKIP python_sdk_...: set CORAL_PYTHON to a python with the OpenTelemetry SDK (make test does)"
        );
        return;
    };
    let env = Env::new(FAST_CONFIG);
    env.start_colony();
    env.start_agent();
    let (grpc, http) = otlp_addrs(&env);
    let sent_grpc = send_with_sdk(&py, "grpc", &grpc, "checkout-grpc", 40);
    let sent_http = send_with_sdk(&py, "http", &http, "checkout-http", 40);
    // The colony receives the same rows (checked row by row below).
    let agent = env.json(&["agent", "status", "--json"]);
    env.wait_json(
        &["colony", "status", "--json"],
        Duration::from_secs(15),
        "telemetry forwarded",
        |c| {
            ["stored_spans", "stored_metric_points", "stored_logs"]
                .iter()
                .all(|k| c[k] == agent[k] && c[k].as_u64() > Some(0))
        },
    );
    check_queries(&env, &sent_grpc);
    env.ok(&["agent", "stop"]);
    env.ok(&["colony", "stop"]);
    assert_same_rows(&env);

    let db = duckdb::Connection::open(env.agent_state().join("telemetry.duckdb")).unwrap();
    for (service, sent) in [("checkout-grpc", &sent_grpc), ("checkout-http", &sent_http)] {
        let spans = sent["spans"].as_array().unwrap();
        let stored: i64 = db
            .query_row(
                "SELECT count(*) FROM spans WHERE service = ?",
                [service],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(stored as usize, spans.len(), "{service}: span count");
        for s in spans {
            let (name, parent, attrs): (String, Option<String>, String) = db
                .query_row(
                    "SELECT name, parent_span_id, attributes FROM spans WHERE service = ? AND trace_id = ? AND span_id = ?",
                    [service, s["trace_id"].as_str().unwrap(), s["span_id"].as_str().unwrap()],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .unwrap_or_else(|e| panic!("{service}: span {s} not stored: {e}"));
            assert_eq!(name, s["name"].as_str().unwrap());
            assert_eq!(
                parent.as_deref(),
                s["parent_span_id"].as_str(),
                "{service}: parent of {name}"
            );
            let attrs: Value = serde_json::from_str(&attrs).unwrap();
            for (k, v) in s["attributes"].as_object().unwrap() {
                assert_eq!(
                    scalar(&attrs[k]),
                    scalar(v),
                    "{service}: attribute {k} of {name}"
                );
            }
        }
        // Logs: every record, linked to the span it was written in.
        let logs = sent["logs"].as_array().unwrap();
        let stored: i64 = db
            .query_row(
                "SELECT count(*) FROM log_records WHERE service = ?",
                [service],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(stored as usize, logs.len(), "{service}: log count");
        for l in logs {
            let n: i64 = db
                .query_row(
                    "SELECT count(*) FROM log_records WHERE service = ? AND trace_id = ? AND body = ? AND severity_text = 'WARN'",
                    [service, l["trace_id"].as_str().unwrap(), l["body"].as_str().unwrap()],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(n, 1, "{service}: log {l}");
        }
        // Metrics: the counter's cumulative sum and the histogram's count.
        let (total, kind): (f64, String) = db
            .query_row(
                "SELECT value, kind FROM metric_points WHERE service = ? AND name = 'orders_total' ORDER BY ts DESC LIMIT 1",
                [service],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(
            (total, kind.as_str()),
            (sent["orders_total"].as_f64().unwrap(), "sum")
        );
        let count: u64 = db
            .query_row(
                "SELECT count FROM metric_points WHERE service = ? AND name = 'checkout_latency_ms' ORDER BY ts DESC LIMIT 1",
                [service],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(count, sent["latency_count"].as_u64().unwrap());
    }
}

/// `coral query traces|trace|logs` over what the SDK sent.
fn check_queries(env: &Env, sent: &Value) {
    let traces = env.json(&[
        "query",
        "traces",
        "--service",
        "checkout-grpc",
        "--since",
        "1h",
        "--limit",
        "100",
        "--json",
    ]);
    let traces = traces.as_array().unwrap();
    assert_eq!(traces.len(), 40);
    for t in traces {
        assert_eq!(
            (t["service"].as_str(), t["name"].as_str()),
            (Some("checkout-grpc"), Some("POST /checkout"))
        );
        assert_eq!(t["spans"], 3);
        assert_eq!(t["services"], serde_json::json!(["checkout-grpc"]));
    }
    let none = env.json(&[
        "query",
        "traces",
        "--service",
        "checkout-grpc",
        "--min-duration",
        "1h",
        "--json",
    ]);
    assert!(none.as_array().unwrap().is_empty());
    // One trace: the JSON spans and the tree.
    let root = sent["spans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["parent_span_id"].is_null())
        .unwrap();
    let trace_id = root["trace_id"].as_str().unwrap();
    let spans = env.json(&["query", "trace", trace_id, "--json"]);
    let spans = spans.as_array().unwrap();
    assert_eq!(spans.len(), 3);
    for s in spans.iter().filter(|s| s["span_id"] != root["span_id"]) {
        assert_eq!(s["parent_span_id"], root["span_id"]);
    }
    let tree = env.ok(&["query", "trace", trace_id]);
    assert!(
        tree.contains("3 spans") && tree.contains("POST /checkout") && tree.contains("  db.query"),
        "{tree}"
    );
    assert!(
        tree.lines()
            .any(|l| l.trim_start().starts_with("* ") && l.contains("POST /checkout")),
        "{tree}"
    );
    // Logs of that trace.
    let logs = env.json(&["query", "logs", "--trace", trace_id, "--json"]);
    assert_eq!(logs.as_array().unwrap().len(), 1, "{logs}");
    assert!(logs[0]["body"].as_str().unwrap().starts_with("payment "));
    let grep = env.json(&[
        "query",
        "logs",
        "--service",
        "checkout-http",
        "--grep",
        "PAYMENT 7 ",
        "--json",
    ]);
    assert_eq!(grep.as_array().unwrap().len(), 1, "{grep}");
    // Bad input is a usage error.
    let out = env.run(&["query", "trace", "not-a-trace-id"]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(stderr(&out).contains("must be 32 hex digits"));
}

/// The colony's spans, metric points and logs equal the agent's, row for
/// row, each stored once.
fn assert_same_rows(env: &Env) {
    let db = duckdb::Connection::open_in_memory().unwrap();
    db.execute_batch(&format!(
        "ATTACH '{}' AS a (READ_ONLY); ATTACH '{}' AS c (READ_ONLY);",
        env.agent_state().join("telemetry.duckdb").display(),
        env.colony_state().join("telemetry.duckdb").display()
    ))
    .unwrap();
    for table in ["spans", "metric_points", "log_records"] {
        let q = |sql: &str| -> i64 {
            db.query_row(&sql.replace("{t}", table), [], |r| r.get(0))
                .unwrap()
        };
        let agent = q("SELECT count(*) FROM a.{t}");
        assert!(agent > 0, "{table}: nothing stored");
        assert_eq!(
            q("SELECT count(*) FROM c.{t}"),
            agent,
            "{table}: colony row count"
        );
        assert_eq!(
            q("SELECT count(DISTINCT (agent_id, seq)) FROM c.{t}"),
            agent,
            "{table}: duplicates in the colony"
        );
        assert_eq!(
            q("SELECT count(*) FROM (SELECT * FROM a.{t} EXCEPT SELECT * FROM c.{t})"),
            0,
            "{table}: rows differ"
        );
    }
}

const SMALL_LIMITS: &str = r#"
[agent]
name = "otlp-host"
probe_interval = "1s"
probe_timeout = "500ms"

[agent.otlp]
grpc_listen = "127.0.0.1:0"
http_listen = "127.0.0.1:0"
max_request_bytes = 65536
max_inflight_bytes = 65536
"#;

fn post(
    url: &str,
    content_type: &str,
    encoding: Option<&str>,
    body: Vec<u8>,
) -> (u16, Option<String>, Vec<u8>) {
    let client = reqwest::blocking::Client::new();
    let mut req = client
        .post(url)
        .header("content-type", content_type)
        .body(body);
    if let Some(e) = encoding {
        req = req.header("content-encoding", e);
    }
    let resp = req.send().unwrap();
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (status, retry, resp.bytes().unwrap().to_vec())
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

#[test]
fn http_receiver_answers_bad_input_with_the_specified_codes_and_keeps_serving() {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
    let env = Env::new(SMALL_LIMITS);
    env.start_agent();
    let (_, http) = otlp_addrs(&env);
    let url = format!("http://{http}/v1/traces");
    let pb = "application/x-protobuf";

    // Good protobuf, plain and gzip; good JSON.
    let good = trace_request("svc", 3, 10, true).encode_to_vec();
    assert_eq!(post(&url, pb, None, good.clone()).0, 200);
    assert_eq!(post(&url, pb, Some("gzip"), gzip(&good)).0, 200);
    let json = serde_json::to_vec(&trace_request("svc-json", 2, 10, true)).unwrap();
    let (code, _, body) = post(&url, "application/json", None, json);
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));

    // Malformed and truncated bodies: 400 with a google.rpc.Status message.
    let (code, _, body) = post(&url, pb, None, vec![0xff, 0xff, 0xff, 0x01]);
    assert_eq!(code, 400);
    let status = tonic_types::Status::decode(&body[..]).unwrap();
    assert!(
        status.message.contains("malformed trace request"),
        "{}",
        status.message
    );
    assert_eq!(post(&url, pb, None, good[..good.len() / 2].to_vec()).0, 400);
    let (code, _, body) = post(
        &url,
        "application/json",
        None,
        b"{\"resourceSpans\": [".to_vec(),
    );
    assert_eq!(code, 400);
    assert!(String::from_utf8_lossy(&body).contains("malformed trace request"));
    assert_eq!(
        post(&url, pb, Some("gzip"), b"not gzip at all".to_vec()).0,
        400
    );

    // Wrong content type or encoding: 415.
    assert_eq!(post(&url, "text/plain", None, good.clone()).0, 415);
    assert_eq!(post(&url, pb, Some("br"), good.clone()).0, 415);

    // Oversize, raw or once decompressed (a gzip bomb): 413.
    let big = trace_request("svc", 1, 100_000, true).encode_to_vec();
    assert_eq!(post(&url, pb, None, big.clone()).0, 413);
    assert_eq!(post(&url, pb, Some("gzip"), gzip(&big)).0, 413);

    // Invalid ids: partial success, the rest stored.
    let mut mixed = trace_request("svc-mixed", 2, 10, true);
    mixed
        .resource_spans
        .extend(trace_request("svc-mixed", 3, 10, false).resource_spans);
    let (code, _, body) = post(&url, pb, None, mixed.encode_to_vec());
    assert_eq!(code, 200);
    let resp = ExportTraceServiceResponse::decode(&body[..]).unwrap();
    let partial = resp.partial_success.unwrap();
    assert_eq!(partial.rejected_spans, 3);
    assert!(
        partial.error_message.contains("invalid trace id"),
        "{}",
        partial.error_message
    );

    // Still serving.
    assert_eq!(post(&url, pb, None, good).0, 200);
    env.ok(&["agent", "stop"]);
    let db = duckdb::Connection::open(env.agent_state().join("telemetry.duckdb")).unwrap();
    let count = |svc: &str| -> i64 {
        db.query_row("SELECT count(*) FROM spans WHERE service = ?", [svc], |r| {
            r.get(0)
        })
        .unwrap()
    };
    assert_eq!(
        (count("svc"), count("svc-json"), count("svc-mixed")),
        (9, 2, 2)
    );
}

#[test]
fn overload_is_refused_with_retry_hints_and_accepted_data_is_never_lost() {
    let env = Env::new(SMALL_LIMITS);
    env.start_agent();
    let (_, http) = otlp_addrs(&env);
    let url = format!("http://{http}/v1/traces");
    // Each request takes most of the in-flight budget, so concurrent ones
    // must be refused while one is being committed.
    let body = trace_request("load", 50, 900, true).encode_to_vec();
    assert!(body.len() > 40_000 && body.len() < 65_536, "{}", body.len());
    let results: Vec<(u16, Option<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..16)
            .map(|_| {
                let (url, body) = (url.clone(), body.clone());
                s.spawn(move || {
                    let (code, retry, _) = post(&url, "application/x-protobuf", None, body);
                    (code, retry)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let accepted = results.iter().filter(|r| r.0 == 200).count();
    let refused: Vec<_> = results.iter().filter(|r| r.0 == 429).collect();
    assert!(accepted >= 1, "{results:?}");
    assert!(!refused.is_empty(), "no request was refused: {results:?}");
    assert!(
        refused.iter().all(|r| r.1.as_deref() == Some("1")),
        "429 without Retry-After: {results:?}"
    );
    assert_eq!(accepted + refused.len(), results.len(), "{results:?}");
    std::thread::sleep(Duration::from_millis(100));
    env.ok(&["agent", "stop"]);
    let db = duckdb::Connection::open(env.agent_state().join("telemetry.duckdb")).unwrap();
    let stored: i64 = db
        .query_row(
            "SELECT count(*) FROM spans WHERE service = 'load'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        stored as usize,
        accepted * 50,
        "accepted spans must all be stored"
    );
}

#[test]
fn forwarding_to_the_colony_is_exactly_once_across_a_colony_crash() {
    let env = Env::new(FAST_CONFIG);
    env.start_colony();
    env.start_agent();
    let (_, http) = otlp_addrs(&env);
    let url = format!("http://{http}/v1/traces");
    let send = |service: &str, n: usize| {
        for _ in 0..n {
            let body = trace_request(service, 50, 20, true).encode_to_vec();
            assert_eq!(post(&url, "application/x-protobuf", None, body).0, 200);
        }
    };
    send("before", 10);
    env.wait_json(
        &["colony", "status", "--json"],
        Duration::from_secs(10),
        "500 spans forwarded",
        |c| c["stored_spans"] == 500,
    );
    // Crash the colony while the agent keeps receiving.
    let pid = env.pid_of("colony").unwrap();
    kill(pid, 9);
    wait_dead(pid, Duration::from_secs(5));
    send("during", 10);
    env.start_colony();
    send("after", 10);
    env.wait_json(
        &["colony", "status", "--json"],
        Duration::from_secs(15),
        "1500 spans forwarded",
        |c| c["stored_spans"] == 1500,
    );
    env.ok(&["agent", "stop"]);
    env.ok(&["colony", "stop"]);
    let db = duckdb::Connection::open(env.colony_state().join("telemetry.duckdb")).unwrap();
    let (n, distinct): (i64, i64) = db
        .query_row("SELECT count(*), count(DISTINCT seq) FROM spans", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((n, distinct), (1500, 1500));
}

#[test]
fn rust_opentelemetry_otlp_exporter_round_trips() {
    use opentelemetry::trace::{Span as _, TraceContextExt as _, Tracer as _, TracerProvider as _};
    use opentelemetry_otlp::{Protocol, WithExportConfig as _};
    let env = Env::new(FAST_CONFIG);
    env.start_agent();
    let (_, http) = otlp_addrs(&env);
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!("http://{http}/v1/traces"))
        .build()
        .unwrap();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_simple_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name("rust-app")
                .build(),
        )
        .build();
    let tracer = provider.tracer("coral-test");
    let mut sent = Vec::new(); // (trace, span, parent)
    for i in 0..20i64 {
        let mut parent = tracer.start("handle-order");
        parent.set_attribute(opentelemetry::KeyValue::new("order.id", i));
        let pctx = parent.span_context().clone();
        let cx = opentelemetry::Context::current_with_span(parent);
        let mut child = tracer.start_with_context("charge-card", &cx);
        let c = child.span_context().clone();
        child.end();
        sent.push((
            c.trace_id().to_string(),
            c.span_id().to_string(),
            Some(pctx.span_id().to_string()),
        ));
        cx.span().end();
        sent.push((
            pctx.trace_id().to_string(),
            pctx.span_id().to_string(),
            None,
        ));
    }
    provider.shutdown().unwrap();
    env.ok(&["agent", "stop"]);
    let db = duckdb::Connection::open(env.agent_state().join("telemetry.duckdb")).unwrap();
    let n: i64 = db
        .query_row(
            "SELECT count(*) FROM spans WHERE service = 'rust-app'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 40);
    for (trace, span, parent) in sent {
        let stored: Option<String> = db
            .query_row(
                "SELECT parent_span_id FROM spans WHERE service = 'rust-app' AND trace_id = ? AND span_id = ?",
                [&trace, &span],
                |r| r.get(0),
            )
            .unwrap_or_else(|e| panic!("span {trace}/{span} not stored: {e}"));
        assert_eq!(stored, parent);
    }
    let attrs: String = db
        .query_row(
            "SELECT attributes FROM spans WHERE name = 'handle-order' ORDER BY start_ts LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&attrs).unwrap()["order.id"],
        0
    );
}

/// Regression (issue 6): a per-connection concurrency limit once deadlocked
/// HTTP/2 under load (queued streams held the connection's flow-control
/// window). Many large concurrent exports on one connection must all finish.
#[test]
fn many_concurrent_grpc_exports_on_one_connection_all_complete() {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    let env = Env::new(FAST_CONFIG); // the default 64 MiB in-flight budget
    env.start_agent();
    let (grpc, _) = otlp_addrs(&env);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (ok, refused, other) = rt.block_on(async {
        let client = TraceServiceClient::connect(format!("http://{grpc}"))
            .await
            .unwrap();
        let calls = (0..384).map(|i| {
            let mut c = client.clone();
            async move {
                c.export(trace_request(&format!("burst-{}", i % 4), 50, 900, true))
                    .await
            }
        });
        let all = futures::future::join_all(calls);
        let results = tokio::time::timeout(Duration::from_secs(60), all)
            .await
            .expect("exports hung");
        let ok = results.iter().filter(|r| r.is_ok()).count();
        let refused = results
            .iter()
            .filter(|r| {
                r.as_ref()
                    .is_err_and(|s| s.code() == tonic::Code::ResourceExhausted)
            })
            .count();
        let other: Vec<String> = results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .filter(|s| s.code() != tonic::Code::ResourceExhausted)
            .map(|s| format!("{:?}: {}", s.code(), s.message()))
            .collect();
        (ok, refused, other)
    });
    assert_eq!(
        ok + refused,
        384,
        "some exports failed otherwise: {other:?}"
    );
    assert!(ok >= 1);
    env.ok(&["agent", "stop"]);
    let db = duckdb::Connection::open(env.agent_state().join("telemetry.duckdb")).unwrap();
    let n: i64 = db
        .query_row(
            "SELECT count(*) FROM spans WHERE service LIKE 'burst-%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n as usize, ok * 50, "accepted spans must all be stored");
}

/// Issue 11: rows queued while the colony was down are forwarded in pushes
/// capped by bytes, so no push exceeds the 16 MiB frame (2,000 spans of
/// 9 KB did, and forwarding stalled for good); a single span larger than
/// any push is cut with a marker at the colony and kept whole on the agent.
#[test]
fn large_attributes_are_forwarded_in_byte_capped_pushes() {
    let env = Env::new(FAST_CONFIG);
    env.start_colony();
    env.start_agent();
    let (_, http) = otlp_addrs(&env);
    let url = format!("http://{http}/v1/traces");
    env.ok(&["colony", "stop"]);
    let mut sent = 0;
    // 2,500 spans of 9 KB (22 MB) and 200 of 64 KB (13 MB), queued.
    for (spans, pad, requests) in [(250, 9_000, 10), (50, 64_000, 4)] {
        for _ in 0..requests {
            let body = trace_request("big", spans, pad, true).encode_to_vec();
            assert_eq!(post(&url, "application/x-protobuf", None, body).0, 200);
            sent += spans;
        }
    }
    // One span of 3 MB of control characters: 18 MB once JSON-escaped.
    let mut huge = trace_request("huge", 1, 0, true);
    huge.resource_spans[0].scope_spans[0].spans[0].attributes[0]
        .value
        .as_mut()
        .unwrap()
        .value = Some(
        opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(
            "\u{1}".repeat(3 << 20),
        ),
    );
    let (status, _, body) = post(&url, "application/x-protobuf", None, huge.encode_to_vec());
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    sent += 1;
    env.start_colony();
    env.wait_json(
        &["colony", "status", "--json"],
        Duration::from_secs(60),
        "every queued span at the colony",
        |c| c["stored_spans"].as_u64() == Some(sent as u64),
    );
    let log = env.log("agent");
    assert!(log.contains("largest text was cut"), "{log}");
    assert!(!log.contains("frame"), "a push hit the frame limit: {log}");
    env.ok(&["agent", "stop"]);
    env.ok(&["colony", "stop"]);
    let attrs = |path: std::path::PathBuf| -> String {
        duckdb::Connection::open(path)
            .unwrap()
            .query_row(
                "SELECT attributes FROM spans WHERE service = 'huge'",
                [],
                |r| r.get(0),
            )
            .unwrap()
    };
    let at_colony: Value =
        serde_json::from_str(&attrs(env.colony_state().join("telemetry.duckdb"))).unwrap();
    assert!(
        at_colony["coral.cut"]
            .as_str()
            .unwrap()
            .contains("bytes cut"),
        "{at_colony}"
    );
    assert!(attrs(env.agent_state().join("telemetry.duckdb")).len() > 3 << 20);
}

/// Issue 11: an absurd window is a one-line usage error (exit 64), never an
/// overflow; the colony keeps serving queries and agents afterwards.
#[test]
fn absurd_windows_are_usage_errors_and_the_colony_keeps_serving() {
    let env = Env::new(FAST_CONFIG);
    env.start_colony();
    env.start_agent();
    for args in [
        &["query", "metrics", "--since", "300000years"][..],
        &[
            "query",
            "metrics",
            "--since",
            "5m",
            "--baseline",
            "300000years",
        ],
        &["query", "map", "--since", "300000years"],
        &["query", "traces", "--since", "300000years"],
        &["query", "logs", "--since", "300000years"],
    ] {
        let out = env.run(args);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains("longer than a year"), "{err}");
    }
    // Past what a duration can hold: clap's usage error, naming the flag.
    let out = env.run(&["query", "traces", "--since", "99999999999999999years"]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.lines().next().unwrap().contains("--since"), "{err}");
    let out = env.run(&[
        "mcp",
        "call",
        "coral_red_metrics",
        r#"{"window":"300000years"}"#,
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("between 1s and 30d"),
        "{out:?}"
    );
    // Still serving: queries answer, the agent stays registered.
    let m = env.json(&["query", "metrics", "--since", "5m", "--json"]);
    assert_eq!(m["coverage"]["complete"], true, "{m:#}");
    std::thread::sleep(Duration::from_millis(1500));
    let st = env.json(&["colony", "status", "--json"]);
    assert_eq!(st["agents"][0]["state"], "online", "{st:#}");
}
