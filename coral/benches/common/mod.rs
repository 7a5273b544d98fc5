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
        // mesh has its own (coral-agent/benches/mesh.rs, tests/mesh_join.rs).
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
pub async fn exec_true(client: &coral_proto::rpc::ColonyControlClient) {
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
