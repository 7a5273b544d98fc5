//! The agent's typed configuration: the `[agent]` table of `config.toml`.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Name shown in `coral colony status`; defaults to the hostname.
    pub name: Option<String>,
    /// Colony control-plane address (`host:port`). When unset the agent finds
    /// the colony running on this machine for the same user.
    pub colony: Option<String>,
    /// Join only a colony with this id.
    pub colony_id: Option<String>,
    /// Where the agent keeps `agent.db` and `telemetry.duckdb`; defaults to
    /// `$XDG_STATE_HOME/coral/agent`.
    pub state_dir: Option<PathBuf>,
    #[serde(with = "humantime_serde")]
    pub probe_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub probe_timeout: Duration,
    /// How long telemetry stays in the agent's store.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Samples kept for the colony while it is unreachable; the oldest are
    /// dropped (and counted) beyond this.
    pub max_pending_samples: usize,
    /// Services connected at start, as `name:port[:health][:type]`.
    pub services: Vec<String>,
    /// The OTLP receiver.
    pub otlp: crate::otlp::OtlpConfig,
    /// The WireGuard mesh, used once the agent has joined a colony with
    /// `--join TOKEN` (the membership is cached in the state dir).
    pub mesh: AgentMeshConfig,
    /// Where the agent serves colony → agent calls (`AgentRpc`: exec,
    /// audit). The one place this bind address is set: on the mesh it is
    /// the agent's mesh address. Port 0 picks a free port; the agent tells
    /// the colony the bound address when it registers.
    pub rpc_listen: String,
    /// `coral exec` on this host.
    pub exec: ExecConfig,
    /// eBPF RED metrics and the connection map.
    pub ebpf: crate::ebpf::EbpfConfig,
    /// Live debugging's limits (`coral debug`).
    pub debug: DebugConfig,
}

/// `[agent.debug]`: limits on live debugging on this host.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DebugConfig {
    /// Sessions active at once.
    pub max_sessions: usize,
    /// Functions one session probes.
    pub max_functions_per_session: usize,
    /// Attach points (entries and returns) on this host at once.
    pub max_points_per_agent: usize,
    /// A probe whose hits cost more than this many µs of CPU per second is
    /// detached (20,000 = 2 % of a CPU; about 1,300 calls/s at 15 µs a hit).
    pub budget_us_per_s: u64,
}

impl Default for DebugConfig {
    fn default() -> Self {
        let l = crate::debug::Limits::default();
        DebugConfig {
            max_sessions: l.max_sessions,
            max_functions_per_session: l.max_functions_per_session,
            max_points_per_agent: l.max_points_per_agent,
            budget_us_per_s: l.budget_us_per_s,
        }
    }
}

impl DebugConfig {
    fn validate(&self) -> Result<(), String> {
        if !(1..=64).contains(&self.max_sessions) {
            return Err("agent.debug.max_sessions must be between 1 and 64".into());
        }
        if !(1..=64).contains(&self.max_functions_per_session) {
            return Err("agent.debug.max_functions_per_session must be between 1 and 64".into());
        }
        if !(2..=4096).contains(&self.max_points_per_agent) {
            return Err("agent.debug.max_points_per_agent must be between 2 and 4096".into());
        }
        if !(100..=1_000_000).contains(&self.budget_us_per_s) {
            return Err("agent.debug.budget_us_per_s must be between 100 and 1000000".into());
        }
        Ok(())
    }

    /// The debugger's limits with these values.
    pub fn limits(&self) -> crate::debug::Limits {
        crate::debug::Limits {
            max_sessions: self.max_sessions,
            max_functions_per_session: self.max_functions_per_session,
            max_points_per_agent: self.max_points_per_agent,
            budget_us_per_s: self.budget_us_per_s,
            ..crate::debug::Limits::default()
        }
    }
}

/// `[agent.mesh]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentMeshConfig {
    /// The TUN device's name (default `corala` + 8 hex digits of the id).
    pub interface: Option<String>,
    /// The local UDP address for WireGuard (default any address, any port).
    pub listen: String,
    /// coral-privhelper's socket, for the TUN device and the key.
    pub helper_socket: PathBuf,
    /// `auto`, `helper` or `file` (see the colony's `mesh.key`).
    pub key: KeySource,
    /// WireGuard persistent keepalive towards the colony (keeps NAT open).
    #[serde(with = "humantime_serde")]
    pub keepalive: Duration,
    /// A discovery registry (`host:port`) to find the colony when its
    /// endpoints moved.
    pub discovery: Option<String>,
    pub mtu: u16,
}

/// How the agent runs commands for `coral exec`: the `[agent.exec]` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecConfig {
    /// The policy file the host's admin owns. Missing: every exec is denied.
    pub policy: PathBuf,
    /// How often the file is checked for changes (SIGHUP reloads at once).
    #[serde(with = "humantime_serde")]
    pub policy_watch_interval: Duration,
    /// `auto` (a cgroup per command when the agent can create one, else the
    /// process group only), `cgroup` (refuse to run without one) or `none`.
    pub isolation: Isolation,
    /// Most processes (and threads) one command may have, with a cgroup.
    pub max_pids: u32,
    /// Most commands running at once on this agent.
    pub max_running: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeySource {
    Auto,
    Helper,
    File,
}

impl Default for AgentMeshConfig {
    fn default() -> Self {
        AgentMeshConfig {
            interface: None,
            listen: "0.0.0.0:0".into(),
            helper_socket: PathBuf::from("/run/coral/privhelper.sock"),
            key: KeySource::Auto,
            keepalive: Duration::from_secs(25),
            discovery: None,
            mtu: 1380,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    Auto,
    Cgroup,
    None,
}

impl Default for ExecConfig {
    fn default() -> Self {
        ExecConfig {
            policy: PathBuf::from(coral_policy::DEFAULT_PATH),
            policy_watch_interval: Duration::from_secs(1),
            isolation: Isolation::Auto,
            max_pids: 256,
            max_running: 16,
        }
    }
}

impl ExecConfig {
    fn validate(&self) -> Result<(), String> {
        if !self.policy.is_absolute() {
            return Err(format!(
                "agent.exec.policy '{}' must be an absolute path",
                self.policy.display()
            ));
        }
        if self.policy_watch_interval < Duration::from_millis(100) {
            return Err("agent.exec.policy_watch_interval must be at least 100ms".into());
        }
        if !(8..=1_000_000).contains(&self.max_pids) {
            return Err("agent.exec.max_pids must be between 8 and 1000000".into());
        }
        if !(1..=1024).contains(&self.max_running) {
            return Err("agent.exec.max_running must be between 1 and 1024".into());
        }
        Ok(())
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            name: None,
            colony: None,
            colony_id: None,
            state_dir: None,
            probe_interval: Duration::from_secs(10),
            probe_timeout: Duration::from_secs(2),
            retention: Duration::from_secs(3600),
            max_pending_samples: 100_000,
            services: Vec::new(),
            otlp: crate::otlp::OtlpConfig::default(),
            mesh: AgentMeshConfig::default(),
            rpc_listen: "127.0.0.1:0".into(),
            exec: ExecConfig::default(),
            ebpf: crate::ebpf::EbpfConfig::default(),
            debug: DebugConfig::default(),
        }
    }
}

impl AgentConfig {
    /// Checks what serde cannot: ranges and the service specs.
    pub fn validate(&self) -> Result<(), String> {
        let ms = |d: Duration| d.as_millis();
        if ms(self.probe_interval) < 100 {
            return Err("agent.probe_interval must be at least 100ms".into());
        }
        if ms(self.probe_timeout) < 10 || self.probe_timeout > self.probe_interval {
            return Err("agent.probe_timeout must be between 10ms and agent.probe_interval".into());
        }
        if self.retention < Duration::from_secs(60) {
            return Err("agent.retention must be at least 1m".into());
        }
        if self.max_pending_samples == 0 {
            return Err("agent.max_pending_samples must be at least 1".into());
        }
        if let Some(c) = &self.colony
            && !c.contains(':')
        {
            return Err(format!("agent.colony '{c}' must be host:port"));
        }
        if let Some(id) = &self.colony_id {
            coral_proto::spec::validate_name(id).map_err(|e| {
                format!(
                    "agent.colony_id: {}",
                    e.replace("service name", "colony id")
                )
            })?;
        }
        self.otlp.validate()?;
        self.debug.validate()?;
        let m = &self.mesh;
        m.listen
            .parse::<std::net::SocketAddr>()
            .map_err(|_| format!("agent.mesh.listen '{}' must be ip:port", m.listen))?;
        if let Some(name) = &m.interface {
            coral_privhelper::IfName::new(name)
                .map_err(|e| format!("agent.mesh.interface '{name}': {e}"))?;
        }
        if m.keepalive < Duration::from_secs(1) || m.keepalive > Duration::from_secs(600) {
            return Err("agent.mesh.keepalive must be between 1s and 10m".into());
        }
        if let Some(d) = &m.discovery
            && !d.contains(':')
        {
            return Err(format!("agent.mesh.discovery '{d}' must be host:port"));
        }
        if !(576..=9000).contains(&m.mtu) {
            return Err("agent.mesh.mtu must be between 576 and 9000".into());
        }
        self.rpc_listen
            .parse::<std::net::SocketAddr>()
            .map_err(|_| {
                format!(
                    "agent.rpc_listen '{}' must be ip:port, e.g. 127.0.0.1:0",
                    self.rpc_listen
                )
            })?;
        self.exec.validate()?;
        self.ebpf.validate()?;
        coral_proto::ServiceSpec::parse_all(&self.services)
            .map_err(|e| format!("agent.services: {e}"))?;
        Ok(())
    }

    pub fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| coral_store::state_home().join("coral").join("agent"))
    }
}
