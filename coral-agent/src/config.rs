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
    /// eBPF RED metrics and the connection map.
    pub ebpf: crate::ebpf::EbpfConfig,
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
            ebpf: crate::ebpf::EbpfConfig::default(),
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
        self.ebpf.validate()?;
        coral_proto::ServiceSpec::parse_all(&self.services)
            .map_err(|e| format!("agent.services: {e}"))?;
        Ok(())
    }

    pub fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| state_home().join("coral").join("agent"))
    }
}

/// `$XDG_STATE_HOME`, or `~/.local/state`.
pub fn state_home() -> PathBuf {
    match std::env::var_os("XDG_STATE_HOME") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/lib/coral"))
            .join(".local/state"),
    }
}
