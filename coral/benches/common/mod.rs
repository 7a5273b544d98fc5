//! What the `coral` benchmarks share: daemons in private XDG dirs, stopped
//! when dropped, and rewriting a benchmark's own section of
//! docs/benchmarks.md.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

pub const CORAL: &str = env!("CARGO_BIN_EXE_coral");

/// OTLP on ephemeral ports, so a benchmark never collides with 4317/4318.
pub const EPHEMERAL_OTLP: &str =
    "[agent.otlp]\ngrpc_listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\n";

/// A colony and/or agent in a private set of XDG dirs.
pub struct Daemons {
    pub dir: tempfile::TempDir,
    /// Run coral on core 0 only (`taskset`), for "one core" figures.
    pin: bool,
}

impl Daemons {
    pub fn new(config: &str, pin: bool) -> Daemons {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("config/coral")).unwrap();
        // These benchmarks measure the loopback development transport; the
        // mesh has its own (coral-agent/mesh/benches/mesh.rs, tests/mesh_join.rs).
        let config = format!("[colony.mesh]\nenabled = false\n{config}");
        std::fs::write(dir.path().join("config/coral/config.toml"), config).unwrap();
        Daemons { dir, pin }
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = if self.pin {
            let mut c = Command::new("taskset");
            c.args(["-c", "0", CORAL]);
            c
        } else {
            Command::new(CORAL)
        };
        c.args(args)
            .env("XDG_RUNTIME_DIR", self.dir.path().join("run"))
            .env("XDG_STATE_HOME", self.dir.path().join("state"))
            .env("XDG_CONFIG_HOME", self.dir.path().join("config"))
            .env("CORAL_LOG", "warn")
            .stdin(Stdio::null());
        c
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }

    pub fn socket(&self, role: &str) -> PathBuf {
        self.dir.path().join(format!("run/coral/{role}.sock"))
    }

    pub fn pid(&self, role: &str) -> u32 {
        std::fs::read_to_string(self.dir.path().join(format!("run/coral/{role}.pid")))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        let _ = self.cmd(&["agent", "stop"]).output();
        let _ = self.cmd(&["colony", "stop"]).output();
    }
}

/// The build profile these figures come from, for each section's header.
pub fn build_profile() -> &'static str {
    if cfg!(debug_assertions) {
        "dev (unoptimised Rust; DuckDB at -O1)"
    } else {
        "release"
    }
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// CPUs this process may run on.
pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0)
}

/// The `p` quantile of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// Replaces the `name` section of docs/benchmarks.md (between its markers),
/// or appends it.
pub fn write_section(name: &str, section: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/benchmarks.md");
    let (begin, end) = (
        format!("<!-- bench:{name}:begin -->"),
        format!("<!-- bench:{name}:end -->"),
    );
    let doc = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n".into());
    let block = format!("{begin}\n{section}{end}");
    let new = match (doc.find(&begin), doc.find(&end)) {
        (Some(b), Some(e)) => format!("{}{block}{}", &doc[..b], &doc[e + end.len()..]),
        _ => format!("{}\n\n{block}\n", doc.trim_end()),
    };
    std::fs::write(&path, new).unwrap();
    eprintln!("wrote {}", path.display());
}

/// One `coral exec api true` round trip through a colony's control socket:
/// `exec_start`, then `exec_poll` until the command is done.
pub async fn exec_true(client: &coral_proto::services::ColonyControlClient) {
    let req = coral_proto::ExecStartRequest {
        service: "api".into(),
        agent: None,
        argv: vec!["true".into()],
        timeout_ms: None,
    };
    let st = client
        .exec_start(tarpc::context::current(), req)
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("exec_start: {e}"));
    assert_eq!(st.verdict, coral_proto::ExecVerdict::Allowed, "{st:?}");
    let mut offset = 0;
    loop {
        let p = client
            .exec_poll(
                tarpc::context::current(),
                st.agent_id.clone(),
                st.exec_id.clone(),
                offset,
                1000,
            )
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("exec_poll: {e}"));
        offset = p.next_offset;
        if let Some(done) = p.done {
            assert_eq!(done.exit_code, Some(0));
            return;
        }
    }
}

fn kv(
    k: &str,
    v: opentelemetry_proto::tonic::common::v1::any_value::Value,
) -> opentelemetry_proto::tonic::common::v1::KeyValue {
    opentelemetry_proto::tonic::common::v1::KeyValue {
        key: k.into(),
        value: Some(opentelemetry_proto::tonic::common::v1::AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

/// An OTLP export of `spans` HTTP server spans of `service`, numbered from
/// `first` (four spans a trace), starting now, each with four attributes
/// and, when `pad` > 0, a `pad`-byte string attribute.
pub fn server_spans(
    service: &str,
    first: u64,
    spans: usize,
    pad: usize,
) -> opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
    use opentelemetry_proto::tonic::common::v1::any_value::Value as V;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let spans = (0..spans as u64)
        .map(|i| {
            let n = first + i;
            let mut trace_id = [0u8; 16];
            trace_id[..8].copy_from_slice(&(n / 4 + 1).to_be_bytes());
            let mut attributes = vec![
                kv("http.request.method", V::StringValue("GET".into())),
                kv("http.route", V::StringValue("/api/orders/{id}".into())),
                kv("http.response.status_code", V::IntValue(200)),
                kv("user.id", V::IntValue((n % 1000) as i64)),
            ];
            if pad > 0 {
                attributes.push(kv("pad", V::StringValue("x".repeat(pad))));
            }
            Span {
                trace_id: trace_id.to_vec(),
                span_id: (n + 1).to_be_bytes().to_vec(),
                parent_span_id: if n.is_multiple_of(4) {
                    vec![]
                } else {
                    ((n / 4) * 4 + 1).to_be_bytes().to_vec()
                },
                name: "GET /api/orders/{id}".into(),
                kind: 2,
                start_time_unix_nano: now,
                end_time_unix_nano: now + 1_000_000 + (n % 100) * 10_000,
                attributes,
                status: Some(Status {
                    code: 0,
                    message: String::new(),
                }),
                ..Default::default()
            }
        })
        .collect();
    opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", V::StringValue(service.into()))],
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
