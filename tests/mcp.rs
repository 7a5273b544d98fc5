//! The colony's MCP gateway driven by a real MCP client: the Python `mcp`
//! package (from PyPI, installed by packaging/dev/deps.sh) runs
//! `coral mcp serve` over stdio, lists the tools and calls each one (issue 7).

mod common;

use common::scenario::{self, Recorder, Shape};
use common::*;
use serde_json::Value;
use std::time::Duration;

fn python() -> Option<String> {
    let py = std::env::var("CORAL_PYTHON").ok().or_else(|| {
        let home = std::env::var("HOME").ok()?;
        Some(format!("{home}/.cache/coral/venv/bin/python"))
    })?;
    let ok = std::process::Command::new(&py)
        .args(["-c", "import mcp"])
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Some(py)
    } else if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("the Python mcp package is missing in {py}: run packaging/dev/deps.sh");
    } else {
        eprintln!("skipped: the Python mcp package is missing (run packaging/dev/deps.sh)");
        None
    }
}

#[test]
fn python_mcp_client_lists_and_calls_every_tool_over_stdio() {
    let Some(py) = python() else { return };
    let env = Env::new(FAST_CONFIG);
    env.start_colony();
    env.start_agent();
    let http = env.json(&["agent", "status", "--json"])["otlp_http"]
        .as_str()
        .unwrap()
        .to_string();
    let mut rec = Recorder::new();
    let shape = Shape {
        api_ms: 8.0,
        db_ms: 2.0,
        dep: None,
        api_error: false,
    };
    rec.requests(20, 30 * 60_000, 60_000, &shape);
    scenario::send(&http, &rec);
    let n = rec.spans.len() as u64;
    env.wait_json(
        &["colony", "status", "--json"],
        Duration::from_secs(20),
        "spans at the colony",
        |c| c["stored_spans"].as_u64() == Some(n),
    );

    let cmd = env.command(&[]);
    let out = std::process::Command::new(&py)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/mcp/client.py"
        ))
        .arg(CORAL)
        .envs(
            cmd.get_envs()
                .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["server"], "coral");
    let tools = v["tools"].as_array().unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "coral_services",
            "coral_red_metrics",
            "coral_service_map",
            "coral_hotspots",
            "coral_breakdown",
            "coral_traces",
            "coral_trace",
            "coral_logs",
            "coral_changes"
        ]
    );
    assert!(tools.len() <= 10);
    for t in tools {
        assert_eq!(t["read_only"], true, "{t}");
        assert_eq!(t["schema_type"], "object", "{t}");
    }
    for (name, call) in v["calls"].as_object().unwrap() {
        assert_eq!(call["is_error"], false, "{name}: {}", call["text"]);
        let body: Value = serde_json::from_str(call["text"].as_str().unwrap())
            .unwrap_or_else(|e| panic!("{name} output is not JSON: {e}"));
        assert!(body.is_object(), "{name}");
    }
    assert_eq!(v["calls"].as_object().unwrap().len(), names.len());
    // Issue 15: the breakdown drills into the api's spans over MCP.
    let bd: Value =
        serde_json::from_str(v["calls"]["coral_breakdown"]["text"].as_str().unwrap()).unwrap();
    assert!(
        bd["operations"].as_array().is_some_and(|o| !o.is_empty())
            && bd["facets"]
                .as_array()
                .is_some_and(|f| f.iter().all(|x| x["service"] == "api")),
        "{bd:#}"
    );
    // Real data came through: the map has the recorded edges and the
    // trace has all its spans.
    let map: Value =
        serde_json::from_str(v["calls"]["coral_service_map"]["text"].as_str().unwrap()).unwrap();
    let edges: Vec<(String, String)> = map["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["from"].as_str().unwrap().into(),
                e["to"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        edges.contains(&("frontend".into(), "api".into())),
        "{edges:?}"
    );
    assert!(edges.contains(&("api".into(), "db".into())), "{edges:?}");
    let trace: Value =
        serde_json::from_str(v["calls"]["coral_trace"]["text"].as_str().unwrap()).unwrap();
    assert_eq!(trace["span_count"], 3);
    // A bad argument is a tool error with a clear message, and the session
    // carried on.
    assert_eq!(v["bad_args"]["is_error"], true);
    assert!(
        v["bad_args"]["text"]
            .as_str()
            .unwrap()
            .contains("'soon' is not a duration"),
        "{}",
        v["bad_args"]
    );
    // The colony logged every call.
    let log = env.log("colony");
    assert!(log.matches("mcp tool call").count() >= 9, "{log}");
}

#[test]
fn mcp_commands_explain_a_missing_colony_and_bad_arguments() {
    let env = Env::new(FAST_CONFIG);
    let out = env.run(&["mcp", "tools"]);
    assert_eq!(out.status.code(), Some(69));
    assert!(
        stderr(&out).contains("is 'coral colony start' running?"),
        "{}",
        stderr(&out)
    );
    let out = env.run(&["mcp", "call", "coral_services", "[1]"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(stderr(&out).contains("JSON object"), "{}", stderr(&out));
    let cfg: Value = serde_json::from_str(&env.ok(&["mcp", "config"])).unwrap();
    assert_eq!(
        cfg["mcpServers"]["coral"]["args"],
        serde_json::json!(["mcp", "serve"])
    );
}

#[test]
fn the_exec_tool_is_off_by_default_and_when_on_runs_under_the_agent_policy_and_is_audited() {
    // Off by default: not listed, and not callable.
    let env = Env::new(FAST_CONFIG);
    env.start_colony();
    let tools: Value = serde_json::from_str(&env.ok(&["mcp", "tools", "--json"])).unwrap();
    assert!(!tools.to_string().contains("coral_agent_exec"));
    let out = env.run(&[
        "mcp",
        "call",
        "coral_agent_exec",
        r#"{"service":"api","command":"uname -s"}"#,
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("unknown tool"), "{}", stderr(&out));

    // On: listed as destructive; allowed commands run, others are denied
    // by the agent's policy; every call is in the colony's audit log.
    let env = Env::new("");
    let policy = env.root().join("policy.toml");
    std::fs::write(
        &policy,
        r#"version = 1
[[rule]]
name = "uname"
callers = ["*"]
program = "/usr/bin/uname"
args = ["-s"]
"#,
    )
    .unwrap();
    std::fs::write(
        env.config_dir().join("config.toml"),
        format!(
            "{FAST_CONFIG}\n[colony.mcp]\nallow_exec = true\n\n[agent.exec]\npolicy = \"{}\"\n",
            policy.display()
        ),
    )
    .unwrap();
    env.start_colony();
    env.start_agent();
    let svc = TcpService::start();
    env.ok(&["connect", &format!("api:{}:tcp", svc.port)]);
    env.wait_json(
        &["colony", "status", "--json"],
        Duration::from_secs(15),
        "api at the colony",
        |s| {
            s.to_string().contains("\"rpc_addr\":\"127.0.0.1:")
                && service(&s["agents"][0], "api").is_some()
        },
    );
    let tools: Value = serde_json::from_str(&env.ok(&["mcp", "tools", "--json"])).unwrap();
    let exec = tools
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "coral_agent_exec")
        .expect("exec tool listed");
    assert_eq!(exec["read_only"], false);
    let v: Value = serde_json::from_str(&env.ok(&[
        "mcp",
        "call",
        "coral_agent_exec",
        r#"{"service":"api","command":"uname -s"}"#,
    ]))
    .unwrap();
    assert_eq!(v["exit_code"], 0, "{v}");
    assert_eq!(v["stdout"], "Linux\n");
    assert_eq!(v["rule"], "uname");
    let out = env.run(&[
        "mcp",
        "call",
        "coral_agent_exec",
        r#"{"service":"api","command":"uname -a; id"}"#,
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("Denied"), "{}", stderr(&out));
    let audit = env.json(&["audit", "--json"]);
    let colony = audit["colony"].as_array().unwrap();
    assert!(
        colony.iter().any(|r| r["action"] == "mcp coral_agent_exec"
            && r["cli_equivalent"] == "coral exec api 'uname -s'"),
        "{audit:#}"
    );
    assert!(
        colony
            .iter()
            .any(|r| r["action"] == "mcp coral_services" || r["action"] == "mcp coral_agent_exec"),
        "{audit:#}"
    );
    // The agent's own write-ahead log has both attempts, allowed and denied.
    let execs = audit["exec"].as_array().unwrap();
    assert!(execs.iter().any(|r| r["decision"] == "allow"), "{audit:#}");
    assert!(execs.iter().any(|r| r["decision"] == "deny"), "{audit:#}");
}
