//! Test harness: each `Env` is a private set of XDG directories in which real
//! `coral` processes run, so tests run in parallel without sharing sockets,
//! pid files or state. Daemons an `Env` started are stopped when it drops,
//! by the pids they wrote.

#![allow(dead_code)]

pub mod netns;
pub mod scenario;

use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub const CORAL: &str = env!("CARGO_BIN_EXE_coral");

/// Fast intervals so tests see changes within a second. These tests use
/// the plain-TCP development transport (`[colony.mesh] enabled = false`):
/// they run unprivileged and in parallel on loopback. The mesh is tested in
/// network namespaces by `tests/mesh_join.rs`.
pub const FAST_CONFIG: &str = r#"
[colony]
heartbeat_interval = "200ms"
agent_timeout = "1s"

[colony.mesh]
enabled = false

[agent]
name = "test-host"
probe_interval = "200ms"
probe_timeout = "150ms"

[agent.otlp]
grpc_listen = "127.0.0.1:0"
http_listen = "127.0.0.1:0"
"#;

pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new(config: &str) -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let env = Env { dir };
        std::fs::create_dir_all(env.config_dir()).unwrap();
        std::fs::write(env.config_dir().join("config.toml"), config).unwrap();
        env
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }
    pub fn runtime(&self) -> PathBuf {
        self.root().join("run")
    }
    pub fn runtime_coral(&self) -> PathBuf {
        self.runtime().join("coral")
    }
    pub fn state(&self) -> PathBuf {
        self.root().join("state")
    }
    pub fn colony_state(&self) -> PathBuf {
        self.state().join("coral/colony")
    }
    pub fn agent_state(&self) -> PathBuf {
        self.state().join("coral/agent")
    }
    pub fn config_dir(&self) -> PathBuf {
        self.root().join("config/coral")
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(CORAL);
        c.args(args)
            .env("XDG_RUNTIME_DIR", self.runtime())
            .env("XDG_STATE_HOME", self.state())
            .env("XDG_CONFIG_HOME", self.root().join("config"))
            .env("XDG_DATA_HOME", self.root().join("data"))
            .env("CORAL_LOG", "info")
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run coral")
    }

    /// Runs coral and requires success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "coral {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).expect("json output")
    }

    /// Polls `coral <args> --json` until `pred` holds.
    pub fn wait_json(
        &self,
        args: &[&str],
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            let out = self.run(args);
            if out.status.success() {
                last = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
                if pred(&last) {
                    return last;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("timed out after {timeout:?} waiting for {what}; last {args:?}: {last:#}");
    }

    pub fn start_colony(&self) -> Value {
        self.ok(&[
            "colony",
            "start",
            "--daemon",
            "--port",
            "0",
            "--colony-id",
            "test-colony",
        ]);
        self.json(&["colony", "status", "--json"])
    }

    pub fn start_agent(&self) -> String {
        self.ok(&["agent", "start", "--daemon"])
    }

    pub fn pid_of(&self, role: &str) -> Option<i32> {
        std::fs::read_to_string(self.runtime_coral().join(format!("{role}.pid")))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    pub fn log(&self, role: &str) -> String {
        let dir = if role == "colony" {
            self.colony_state()
        } else {
            self.agent_state()
        };
        std::fs::read_to_string(dir.join(format!("{role}.log"))).unwrap_or_default()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for role in ["agent", "colony"] {
            if let Some(pid) = self.pid_of(role) {
                let _ = self.run(&[role, "stop"]);
                if alive(pid) {
                    kill(pid, 9);
                }
            }
        }
    }
}

pub fn alive(pid: i32) -> bool {
    Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn kill(pid: i32, sig: i32) {
    let _ = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status();
}

pub fn wait_dead(pid: i32, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while alive(pid) {
        assert!(
            Instant::now() < deadline,
            "pid {pid} still alive after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// A real HTTP service (hyper via axum) whose `/health` answers 200 or 503.
pub struct HttpService {
    pub port: u16,
    healthy: Arc<AtomicBool>,
    _rt: tokio::runtime::Runtime,
}

impl HttpService {
    pub fn start() -> HttpService {
        use axum::{Router, http::StatusCode, routing::get};
        let healthy = Arc::new(AtomicBool::new(true));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let h = healthy.clone();
        let app = Router::new().route(
            "/health",
            get(move || {
                let h = h.clone();
                async move {
                    if h.load(Ordering::Relaxed) {
                        (StatusCode::OK, "ok")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "sick")
                    }
                }
            }),
        );
        rt.spawn(async move { axum::serve(listener, app).await });
        HttpService {
            port,
            healthy,
            _rt: rt,
        }
    }

    pub fn set_healthy(&self, up: bool) {
        self.healthy.store(up, Ordering::Relaxed);
    }
}

/// A real TCP service: a listening socket (the kernel completes connects).
pub struct TcpService {
    pub port: u16,
    listener: Option<TcpListener>,
}

impl TcpService {
    pub fn start() -> TcpService {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        TcpService {
            port: l.local_addr().unwrap().port(),
            listener: Some(l),
        }
    }
    pub fn stop(&mut self) {
        self.listener = None;
    }
}

/// Writes raw bytes to a stream and reads until EOF or timeout.
pub fn poke(mut s: impl Read + Write, bytes: &[u8]) -> Vec<u8> {
    let _ = s.write_all(bytes);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    buf
}

pub fn services(agent: &Value) -> Vec<Value> {
    agent["services"].as_array().cloned().unwrap_or_default()
}

/// Waits until an online agent that the colony can call (`rpc_addr`)
/// serves `name`.
pub fn wait_service_known(env: &Env, name: &str, timeout: Duration) {
    env.wait_json(
        &["colony", "status", "--json"],
        timeout,
        &format!("{name} known to the colony"),
        |s| {
            s["agents"].as_array().is_some_and(|a| {
                a.iter().any(|a| {
                    a["state"] == "online"
                        && a["rpc_addr"].is_string()
                        && service(a, name).is_some()
                })
            })
        },
    );
}

pub fn service<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list["services"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == name)
}

/// An OTLP trace request of `spans` spans of `service` that ended just now,
/// each with a `pad`-byte attribute; `valid = false` gives them a malformed
/// trace id.
pub fn trace_request(
    service: &str,
    spans: usize,
    pad: usize,
    valid: bool,
) -> opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    let kv = |k: &str, v: &str| KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let spans = (0..spans)
        .map(|i| Span {
            trace_id: if valid {
                [7u8; 16].to_vec()
            } else {
                vec![1, 2, 3]
            },
            span_id: ((i as u64) + 1).to_be_bytes().to_vec(),
            name: format!("op-{i}"),
            start_time_unix_nano: now - 5_000_000,
            end_time_unix_nano: now,
            attributes: vec![kv("pad", &"x".repeat(pad))],
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", service)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}
