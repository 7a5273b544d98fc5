//! Programs built by the live-debugging tests (issue 12) from
//! `tests/targets/` (Go 1.19 from Debian's golang-go, C from gcc).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub const GO_SRC: &str = include_str!("../../../tests/targets/debugee.go");
pub const C_SRC: &str = include_str!("../../../tests/targets/debugee.c");

pub fn have(tool: &str) -> bool {
    Command::new(tool).arg("version").output().is_ok()
        || Command::new(tool).arg("--version").output().is_ok()
}

/// `go build extra... -o dir/out debugee.go`, stdlib only, no network.
pub fn go_build(dir: &Path, out: &str, extra: &[&str]) -> PathBuf {
    let src = dir.join("debugee.go");
    std::fs::write(&src, GO_SRC).unwrap();
    let bin = dir.join(out);
    let st = Command::new("go")
        .arg("build")
        .args(extra)
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .env("GOCACHE", dir.join("gocache"))
        .env("GOPATH", dir.join("gopath"))
        .env("GO111MODULE", "off")
        .env("CGO_ENABLED", "0")
        .status()
        .unwrap();
    assert!(st.success(), "go build {extra:?}");
    bin
}

/// A running target; killed (by pid) when dropped.
pub struct Running {
    pub child: Child,
}

impl Running {
    /// Starts `bin <period_ms> <seconds>` and waits for its `ready` line.
    pub fn start(bin: &Path, period_ms: u32, seconds: u32) -> Self {
        let mut child = Command::new(bin)
            .arg(period_ms.to_string())
            .arg(seconds.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("ready"), "{line:?}");
        Running { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it is still running (a crashed target fails the test).
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
