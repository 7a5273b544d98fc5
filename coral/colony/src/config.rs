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
    /// The WireGuard mesh agents join (`[colony.mesh]`).
    pub mesh: MeshConfig,
    /// The MCP gateway (`[colony.mcp]`).
    pub mcp: McpConfig,
}

/// `[colony.mcp]`: the MCP gateway. Read-only tools are always served;
/// action tools only when enabled here, and even then every command still
/// passes the policy of the agent that runs it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct McpConfig {
    /// Offer `coral_agent_exec` (run a diagnostic command under the
    /// agent's exec policy) to MCP clients, `coral ask` and the analyzer.
    pub allow_exec: bool,
    /// Offer the live-debugging tools (`coral_debug_attach`, `_logs`,
    /// `_detach`, `_functions`: uprobes on running code, issue 12).
    pub allow_debug: bool,
}

/// `[colony.mesh]`. With `enabled` (the default) agents join with tokens and
/// every agent call arrives over the mesh; `listen`'s port is then used on
/// the colony's mesh address. `enabled = false` is the development and test
/// transport: plain TCP on `colony.listen`, no identity, no tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MeshConfig {
    pub enabled: bool,
    /// UDP (WireGuard) and TCP (the join exchange) on the same address.
    pub listen: String,
    /// The `host:port` endpoints put in tokens and published to discovery;
    /// by default this host's IPv4 addresses with `listen`'s port.
    pub endpoints: Vec<String>,
    /// The TUN device's name (default `coralc` + 8 hex digits of the id).
    pub interface: Option<String>,
    /// A fixed mesh subnet inside 100.64.0.0/10 (e.g. `100.80.16.0/20`);
    /// by default a random /20, chosen on first start and kept in colony.db.
    pub subnet: Option<String>,
    /// coral-privhelper's socket, for the TUN device and the key.
    pub helper_socket: PathBuf,
    /// Where the key comes from: `auto` (a key file in the state dir if one
    /// exists, else the helper if it answers, else a new key file), `helper`
    /// or `file`.
    pub key: KeySource,
    /// A discovery registry (`host:port`) to publish the endpoints to.
    pub discovery: Option<String>,
    pub mtu: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeySource {
    Auto,
    Helper,
    File,
}

pub const DEFAULT_MESH_PORT: u16 = 51820;
pub const DEFAULT_HELPER_SOCKET: &str = "/run/coral/privhelper.sock";

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            enabled: true,
            listen: format!("0.0.0.0:{DEFAULT_MESH_PORT}"),
            endpoints: Vec::new(),
            interface: None,
            subnet: None,
            helper_socket: PathBuf::from(DEFAULT_HELPER_SOCKET),
            key: KeySource::Auto,
            discovery: None,
            mtu: 1380,
        }
    }
}

/// A `[colony]` value out of range; the message names the key and what it
/// must be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidConfig(pub String);

/// Parses `a.b.c.d/n` inside 100.64.0.0/10 with n in 10..=28.
pub fn parse_subnet(s: &str) -> Result<(std::net::Ipv4Addr, u8), InvalidConfig> {
    let bad = || {
        InvalidConfig(format!(
            "colony.mesh.subnet '{s}' must be a.b.c.d/n inside 100.64.0.0/10, n from 10 to 28"
        ))
    };
    let (ip, prefix) = s.split_once('/').ok_or_else(bad)?;
    let ip: std::net::Ipv4Addr = ip.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    if !(10..=28).contains(&prefix) {
        return Err(bad());
    }
    let mask = u32::MAX << (32 - prefix);
    if u32::from(ip) & mask != u32::from(ip) || u32::from(ip) & 0xffc0_0000 != 0x6440_0000 {
        return Err(bad());
    }
    Ok((ip, prefix))
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
            mesh: MeshConfig::default(),
            mcp: McpConfig::default(),
        }
    }
}

impl ColonyConfig {
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        if let Some(id) = &self.colony_id {
            coral_proto::spec::validate_colony_id(id)
                .map_err(|e| InvalidConfig(format!("colony.colony_id: {e}")))?;
        }
        self.listen.parse::<std::net::SocketAddr>().map_err(|_| {
            InvalidConfig(format!(
                "colony.listen '{}' must be ip:port, e.g. 127.0.0.1:9000",
                self.listen
            ))
        })?;
        if self.heartbeat_interval < Duration::from_millis(100)
            || self.heartbeat_interval > Duration::from_secs(60)
        {
            return Err(InvalidConfig(
                "colony.heartbeat_interval must be between 100ms and 60s".into(),
            ));
        }
        if self.agent_timeout < self.heartbeat_interval * 2 {
            return Err(InvalidConfig(
                "colony.agent_timeout must be at least twice colony.heartbeat_interval".into(),
            ));
        }
        if self.retention < Duration::from_secs(60) {
            return Err(InvalidConfig("colony.retention must be at least 1m".into()));
        }
        let m = &self.mesh;
        m.listen.parse::<std::net::SocketAddr>().map_err(|_| {
            InvalidConfig(format!(
                "colony.mesh.listen '{}' must be ip:port, e.g. 0.0.0.0:51820",
                m.listen
            ))
        })?;
        for e in &m.endpoints {
            if e.rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .is_none()
            {
                return Err(InvalidConfig(format!(
                    "colony.mesh.endpoints: '{e}' must be host:port"
                )));
            }
        }
        if let Some(name) = &m.interface {
            coral_privhelper::IfName::new(name)
                .map_err(|e| InvalidConfig(format!("colony.mesh.interface '{name}': {e}")))?;
        }
        if let Some(s) = &m.subnet {
            parse_subnet(s)?;
        }
        if let Some(d) = &m.discovery
            && !d.contains(':')
        {
            return Err(InvalidConfig(format!(
                "colony.mesh.discovery '{d}' must be host:port"
            )));
        }
        if !(576..=9000).contains(&m.mtu) {
            return Err(InvalidConfig(
                "colony.mesh.mtu must be between 576 and 9000".into(),
            ));
        }
        Ok(())
    }

    pub fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| coral_store::state_home().join("coral").join("colony"))
    }

    /// Replaces the port of `listen`.
    pub fn set_port(&mut self, port: u16) {
        if let Ok(mut addr) = self.listen.parse::<std::net::SocketAddr>() {
            addr.set_port(port);
            self.listen = addr.to_string();
        }
    }
}
