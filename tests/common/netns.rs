//! What the network-namespace tests share: a `coral` node (private XDG
//! dirs, commands run inside its namespace with `ip netns exec`) and small
//! shell helpers.

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// Whether `cmd` is on PATH.
pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs a command and requires success.
pub fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A colony or agent host: a namespace and a private set of XDG dirs.
pub struct Node {
    pub ns: String,
    pub dir: PathBuf,
}

impl Node {
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, super::CORAL])
            .args(args)
            .env("XDG_RUNTIME_DIR", self.dir.join("run"))
            .env("XDG_STATE_HOME", self.dir.join("state"))
            .env("XDG_CONFIG_HOME", self.dir.join("config"))
            .env(
                "CORAL_LOG",
                "info,coral_agent::link=debug,coral_colony=debug",
            )
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "coral {args:?} in {} failed ({}):\n{}\n{}",
            self.ns,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }

    pub fn pid(&self, role: &str) -> Option<i32> {
        std::fs::read_to_string(self.dir.join(format!("run/coral/{role}.pid")))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    pub fn log(&self, role: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("state/coral/{role}/{role}.log")))
            .unwrap_or_default()
    }

    pub fn write_config(&self, text: &str) {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::create_dir_all(self.dir.join("config/coral")).unwrap();
        std::fs::create_dir_all(self.dir.join("run")).unwrap();
        std::fs::set_permissions(self.dir.join("run"), std::fs::Permissions::from_mode(0o700))
            .unwrap();
        std::fs::write(self.dir.join("config/coral/config.toml"), text).unwrap();
    }

    /// Whether this node's agent is connected to its colony.
    pub fn connected(&self) -> bool {
        let out = self.run(&["agent", "status", "--json"]);
        out.status.success()
            && serde_json::from_slice::<Value>(&out.stdout)
                .is_ok_and(|s| s["colony"]["state"] == "connected")
    }

    /// `coral <role> stop` in this node.
    pub fn stop(&self, role: &str) {
        let _ = self.run(&[role, "stop"]);
    }

    /// Stops the agent and the colony of this node, by their pids.
    pub fn stop_all(&self) {
        for role in ["agent", "colony"] {
            if let Some(pid) = self.pid(role)
                && super::alive(pid)
            {
                let _ = self.run(&[role, "stop"]);
                if super::alive(pid) {
                    super::kill(pid, 9);
                }
            }
        }
    }
}
