//! The built-in analyzer on recorded incident scenarios (issue 7): each
//! scenario's traces go through a real agent's OTLP receiver into a real
//! colony, and the analyzer, talking to the colony over MCP like any client,
//! must name the expected root cause.

mod common;

use common::scenario::{self, Recorder, SELECT, Shape};
use common::*;
use coral::analyze::{Analysis, analyze};
use coral::mcp::McpTools;
use std::time::Duration;

/// Runs a scenario: a colony and an agent, the recorded traces sent to the
/// agent, then the analyzer's answer to `question`.
fn run_scenario(env: &Env, rec: &Recorder, question: &str) -> Analysis {
    let a = env.json(&["agent", "status", "--json"]);
    let http = a["otlp_http"].as_str().unwrap().to_string();
    scenario::send(&http, rec);
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
        // The target is 1 s (docs/benchmarks.md measures it on 1M spans);
        // here other tests share the two cores, so allow slack.
        assert!(took < Duration::from_secs(3), "analysis took {took:?}");
        // Deterministic: the same data gives the same answer (up to the
        // "N s ago" figures, which move with the clock).
        let again = analyze(&tools, question).await.unwrap();
        let shape = |s: &str| s.replace(|c: char| c.is_ascii_digit(), "");
        assert_eq!(shape(&first.answer), shape(&again.answer));
        assert_eq!(first.root_cause, again.root_cause);
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

#[test]
fn young_system_is_compared_with_its_own_short_past() {
    // Minutes-old data only: the analyzer zooms in to a 20 s window
    // against the 5 min before it.
    let env = setup();
    let mut rec = Recorder::new();
    rec.requests(60, 60_000, 25_000, &normal());
    rec.requests(
        30,
        17_000,
        1_000,
        &Shape {
            db_ms: 380.0,
            ..normal()
        },
    );
    let a = run_scenario(&env, &rec, "What's wrong with the API?");
    let rc = a.root_cause.as_ref().expect("a root cause");
    assert_eq!(rc.service, "db", "{}", a.answer);
    assert!(a.answer.contains("in the last 20s"), "{}", a.answer);
}

#[test]
fn coral_ask_without_a_provider_answers_with_the_analyzer() {
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
    run_scenario(&env, &rec, "warm up");
    let v = env.json(&["ask", "What's wrong with the API?", "--json"]);
    let answer = v["answer"].as_str().unwrap();
    assert!(
        answer.contains("api is affected; the cause is in db"),
        "{answer}"
    );
    assert!(answer.contains(SELECT), "{answer}");
    assert_eq!(v["usage"]["provider"], "builtin");
    let evidence = v["evidence"].as_array().unwrap();
    assert!(
        evidence.iter().any(|e| e["tool"] == "coral_hotspots"),
        "{v}"
    );
    // Every evidence id the answer cites is a real tool call.
    for e in evidence {
        assert_eq!(e["ok"], true, "{e}");
    }
    let human = env.ok(&["ask", "What's wrong with the API?"]);
    assert!(human.contains("Likely root cause"), "{human}");
}

/// Issue 11: with an agent offline the analyzer never says "No problem
/// found": it says what it could not see. Every tool answer carries the
/// coverage that tells it.
#[test]
fn an_offline_agent_is_named_instead_of_no_problem_found() {
    let env = setup();
    let quiet = env.json(&["ask", "Are there any issues?", "--json"]);
    assert!(
        quiet["answer"]
            .as_str()
            .unwrap()
            .starts_with("No problem found"),
        "{quiet:#}"
    );
    let pid = env.pid_of("agent").unwrap();
    kill(pid, 9);
    wait_dead(pid, Duration::from_secs(5));
    env.wait_json(
        &["colony", "status", "--json"],
        Duration::from_secs(10),
        "the agent offline",
        |c| c["agents"][0]["state"] == "offline",
    );
    let v = env.json(&["ask", "Are there any issues?", "--json"]);
    let answer = v["answer"].as_str().unwrap();
    assert!(!answer.contains("No problem found"), "{answer}");
    assert!(answer.contains("agent test-host is offline"), "{answer}");
    let red: serde_json::Value =
        serde_json::from_str(&env.ok(&["mcp", "call", "coral_red_metrics", "{}"])).unwrap();
    assert_eq!(red["coverage"]["complete"], false, "{red:#}");
    assert_eq!(red["coverage"]["agents"][0]["state"], "offline", "{red:#}");
}
