//! The colony: the coordinator every agent reports to. It keeps the
//! registry in SQLite and the telemetry aggregate in DuckDB, serves agents
//! over tarpc on TCP and the CLI over its local Unix socket.
//!
//! [`Colony::open`] validates the config and opens the stores (refusing
//! damaged files); [`Colony::run`] serves until shutdown.

pub mod audit;
pub(crate) mod colony_mesh;
pub mod config;
mod debug;
mod exec;
pub mod mcp_gateway;
pub mod read;
pub mod registry;
mod serve;
pub mod tools;

pub use config::ColonyConfig;

use coral_store::telemetry::{Telemetry, TelemetryGuard};
use registry::Registry;
use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum ColonyError {
    #[error("invalid colony config: {0}")]
    Config(#[from] config::InvalidConfig),
    #[error("cannot create state dir {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Registry(#[from] registry::RegistryError),
    #[error(transparent)]
    Store(#[from] coral_store::sqlite::StoreError),
    #[error(transparent)]
    Telemetry(#[from] coral_store::telemetry::TelemetryError),
    #[error("colony mesh: {0}")]
    Mesh(String),
}

/// Serialises one agent's writes of one kind, holding the highest seq stored
/// (loaded on first use).
pub(crate) type SeqSlot = Arc<tokio::sync::Mutex<Option<u64>>>;

pub(crate) struct Shared {
    pub(crate) config: ColonyConfig,
    pub(crate) colony_id: String,
    pub(crate) state_dir: PathBuf,
    pub(crate) started_at_ms: i64,
    pub(crate) registry: Mutex<Registry>,
    pub(crate) telemetry: Telemetry,
    /// Set once the RPC listener is bound.
    pub(crate) rpc_addr: Mutex<String>,
    /// Per agent: a lock that serialises its registrations and heartbeats,
    /// holding the highest sample seq stored (loaded on first use).
    pub(crate) agent_seqs: Mutex<HashMap<String, SeqSlot>>,
    /// The same for forwarded telemetry, per agent and kind.
    pub(crate) signal_seqs: Mutex<HashMap<(String, coral_proto::SignalKind), SeqSlot>>,
    /// The colony's own audit table (`record(actor, action, detail, cli_equivalent)`).
    pub(crate) audit: audit::AuditLog,
    /// Live `AgentRpc` connections: agent id → (address, client).
    pub(crate) agent_clients:
        Mutex<HashMap<String, (String, coral_proto::services::AgentRpcClient)>>,
    pub(crate) shutdown: CancellationToken,
    /// The WireGuard mesh, unless `colony.mesh.enabled = false`.
    pub(crate) mesh: Option<Arc<colony_mesh::ColonyMesh>>,
    /// The Unix socket same-user agents on this machine use (mesh mode).
    pub(crate) local_agents: Mutex<Option<PathBuf>>,
}

impl Shared {
    pub(crate) fn signal_seq(&self, agent_id: &str, kind: coral_proto::SignalKind) -> SeqSlot {
        self.signal_seqs
            .lock()
            .expect("signal_seqs lock")
            .entry((agent_id.to_string(), kind))
            .or_default()
            .clone()
    }

    /// Every agent with its services and state (online, offline, stopped).
    pub(crate) fn agents(
        &self,
    ) -> Result<Vec<coral_proto::AgentSummary>, coral_store::sqlite::StoreError> {
        self.registry.lock().expect("registry lock").agents(
            coral_proto::now_ms(),
            self.config.agent_timeout.as_millis() as i64,
        )
    }

    pub(crate) fn agent_seq(&self, agent_id: &str) -> SeqSlot {
        self.agent_seqs
            .lock()
            .expect("agent_seqs lock")
            .entry(agent_id.to_string())
            .or_default()
            .clone()
    }
}

pub struct Colony {
    shared: Arc<Shared>,
    _telemetry: TelemetryGuard,
}

impl Colony {
    pub fn open(config: ColonyConfig) -> Result<Colony, ColonyError> {
        config.validate().map_err(ColonyError::Config)?;
        let state_dir = config.state_dir();
        coral_proto::local::ensure_private_dir(&state_dir).map_err(|source| {
            ColonyError::StateDir {
                path: state_dir.clone(),
                source,
            }
        })?;
        let registry = Registry::open(&state_dir.join("colony.db"))?;
        let colony_id = registry.colony_id(config.colony_id.as_deref())?;
        let audit = audit::AuditLog::open(&state_dir.join("colony.db"))?;
        let (telemetry, guard) =
            Telemetry::open(&state_dir.join("telemetry.duckdb"), config.retention)?;
        let mesh = match config.mesh.enabled {
            true => Some(Arc::new(colony_mesh::ColonyMesh::open(
                &config, &registry, &state_dir, &colony_id,
            )?)),
            false => None,
        };
        Ok(Colony {
            shared: Arc::new(Shared {
                colony_id,
                state_dir,
                started_at_ms: coral_proto::now_ms(),
                registry: Mutex::new(registry),
                telemetry,
                rpc_addr: Mutex::new(
                    mesh.as_ref()
                        .map(|m| m.rpc_addr.to_string())
                        .unwrap_or_else(|| config.listen.clone()),
                ),
                agent_seqs: Mutex::new(HashMap::new()),
                signal_seqs: Mutex::new(HashMap::new()),
                audit,
                agent_clients: Mutex::new(HashMap::new()),
                shutdown: CancellationToken::new(),
                mesh,
                local_agents: Mutex::new(None),
                config,
            }),
            _telemetry: guard,
        })
    }

    pub fn colony_id(&self) -> &str {
        &self.shared.colony_id
    }

    /// The mesh address agents reach the colony's control plane on.
    pub fn mesh_ip(&self) -> Option<std::net::Ipv4Addr> {
        self.shared.mesh.as_ref().map(|m| m.mesh_ip)
    }

    /// Where agents reach the control plane (on the mesh when it is on).
    pub fn rpc_addr(&self) -> String {
        self.shared.rpc_addr.lock().expect("rpc_addr lock").clone()
    }

    /// The mesh's public endpoints (UDP WireGuard + TCP join), if on.
    pub fn mesh_endpoints(&self) -> Vec<String> {
        self.shared
            .mesh
            .as_ref()
            .map(|m| m.endpoints.clone())
            .unwrap_or_default()
    }

    /// Serves the CLI on `control` until `shutdown` resolves or a client
    /// asks the colony to stop. Agents are served on `rpc` (plain TCP, the
    /// development transport) when given; with the mesh on, on the
    /// colony's mesh address (port of `colony.listen`), on the join
    /// endpoint, and, for same-user agents on this machine, on
    /// `colony-agents.sock` next to `control`.
    pub async fn run(
        self,
        rpc: Option<TcpListener>,
        control: UnixListener,
        shutdown: impl Future<Output = ()>,
    ) {
        let shared = self.shared.clone();
        let mut tasks = Vec::new();
        if let Some(rpc) = rpc {
            if let Ok(addr) = rpc.local_addr() {
                *shared.rpc_addr.lock().expect("rpc_addr lock") = addr.to_string();
            }
            tasks.push(tokio::spawn(serve::serve_agents(
                shared.clone(),
                rpc,
                false,
            )));
        }
        if let Some(m) = shared.mesh.clone() {
            match serve::start_mesh(&shared, &m, &control) {
                Ok(t) => tasks.extend(t),
                Err(e) => {
                    tracing::error!(error = %e, "cannot serve agents on the mesh");
                    return;
                }
            }
        }
        if let Some(path) = control
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(coral_proto::local::mcp_socket_beside))
        {
            match bind_private(&path) {
                Ok(l) => {
                    tracing::info!(socket = %path.display(), "mcp gateway listening");
                    tasks.push(tokio::spawn(mcp_gateway::serve(shared.clone(), l)));
                }
                Err(e) => {
                    tracing::warn!(socket = %path.display(), error = %e, "mcp gateway not started")
                }
            }
        }
        let control_task = tokio::spawn(serve::serve_control(shared.clone(), control));
        tracing::info!(colony_id = %shared.colony_id, rpc = %shared.rpc_addr.lock().expect("rpc_addr lock"), "colony running");
        tokio::select! {
            _ = shutdown => {}
            _ = shared.shutdown.cancelled() => {}
        }
        tracing::info!("colony stopping");
        shared.shutdown.cancel();
        control_task.abort();
        // Agents' connections end first; the WireGuard device carries
        // those FINs out, then stops.
        if let Some(m) = &shared.mesh {
            m.close_all_conns();
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            m.device_stop.cancel();
        }
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        let _ = control_task.await;
        // Dropping `self` commits outstanding telemetry and joins the writer.
    }
}

/// Binds a Unix socket only its owner may use, replacing a stale socket
/// file (never any other kind of file).
fn bind_private(path: &std::path::Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(md) = std::fs::symlink_metadata(path)
        && md.file_type().is_socket()
    {
        std::fs::remove_file(path)?;
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Opens the colony and runs it (see [`Colony::open`] and [`Colony::run`]).
pub async fn run(
    config: ColonyConfig,
    rpc: Option<TcpListener>,
    control: UnixListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ColonyError> {
    Colony::open(config)?.run(rpc, control, shutdown).await;
    Ok(())
}
