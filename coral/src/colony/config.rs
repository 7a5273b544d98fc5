//! The colony's typed configuration: the `[colony]` table of `config.toml`.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ColonyConfig {
    /// The colony's id; generated on first start when unset.
    pub colony_id: Option<String>,
    /// Control-plane address agents connect to. Loopback by default: until
    /// the mesh carries this traffic, opening it to a network is a choice.
    pub listen: String,
    /// Where `colony.db` and `telemetry.duckdb` live; defaults to
    /// `$XDG_STATE_HOME/coral/colony`.
    pub state_dir: Option<PathBuf>,
    /// How often agents report.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// An agent silent for this long is shown offline.
    #[serde(with = "humantime_serde")]
    pub agent_timeout: Duration,
    /// How long telemetry stays in the colony's store.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
}

pub const DEFAULT_PORT: u16 = 9000;

impl Default for ColonyConfig {
    fn default() -> Self {
        ColonyConfig {
            colony_id: None,
            listen: format!("127.0.0.1:{DEFAULT_PORT}"),
            state_dir: None,
            heartbeat_interval: Duration::from_secs(5),
            agent_timeout: Duration::from_secs(15),
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl ColonyConfig {
    pub fn validate(&self) -> Result<(), String> {
        if let Some(id) = &self.colony_id {
            coral_proto::spec::validate_colony_id(id)
                .map_err(|e| format!("colony.colony_id: {e}"))?;
        }
        self.listen.parse::<std::net::SocketAddr>().map_err(|_| {
            format!(
                "colony.listen '{}' must be ip:port, e.g. 127.0.0.1:9000",
                self.listen
            )
        })?;
        if self.heartbeat_interval < Duration::from_millis(100)
            || self.heartbeat_interval > Duration::from_secs(60)
        {
            return Err("colony.heartbeat_interval must be between 100ms and 60s".into());
        }
        if self.agent_timeout < self.heartbeat_interval * 2 {
            return Err(
                "colony.agent_timeout must be at least twice colony.heartbeat_interval".into(),
            );
        }
        if self.retention < Duration::from_secs(60) {
            return Err("colony.retention must be at least 1m".into());
        }
        Ok(())
    }

    pub fn state_dir(&self) -> PathBuf {
        self.state_dir.clone().unwrap_or_else(|| {
            coral_agent::config::state_home()
                .join("coral")
                .join("colony")
        })
    }

    /// Replaces the port of `listen`.
    pub fn set_port(&mut self, port: u16) {
        if let Ok(mut addr) = self.listen.parse::<std::net::SocketAddr>() {
            addr.set_port(port);
            self.listen = addr.to_string();
        }
    }
}
