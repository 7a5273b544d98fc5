//! tarpc service traits. Each `#[tarpc::service]` generates a `...Client`
//! and a `serve()` adapter.

use crate::spec::ServiceSpec;
use crate::types::*;

/// The colony's control plane, called by agents.
#[tarpc::service]
pub trait Colony {
    /// Joins (or rejoins after any reconnect) with the agent's full service set.
    async fn register(reg: Registration) -> Result<Registered, ColonyError>;
    /// Reports health and samples; idempotent, acknowledged by sequence number.
    async fn heartbeat(hb: Heartbeat) -> Result<HeartbeatAck, ColonyError>;
    /// Forwards telemetry rows in `seq` order; returns the highest `seq`
    /// now stored for this agent and kind. Rows at or below it are skipped.
    async fn push(agent_id: String, signals: Signals) -> Result<u64, ColonyError>;
    /// The agent is stopping on purpose.
    async fn leave(agent_id: String) -> Result<(), ColonyError>;
}

/// The colony's local control service, reached by the CLI over a Unix socket.
#[tarpc::service]
pub trait ColonyControl {
    async fn status() -> ColonyStatus;
    async fn endpoint() -> ColonyEndpoint;
    async fn traces(q: TraceQuery) -> Result<Vec<TraceSummary>, QueryError>;
    /// Every span of one trace (hex id), in start order.
    async fn trace(trace_id: String) -> Result<Vec<SpanRecord>, QueryError>;
    async fn logs(q: LogQuery) -> Result<Vec<LogRecord>, QueryError>;
    /// Begins a graceful shutdown; returns the colony's pid.
    async fn stop() -> u32;
    /// Creates a join token (`coral colony token create`).
    async fn token_create(req: TokenRequest) -> Result<TokenCreated, MeshAdminError>;
    /// The mesh members (`coral colony agents`).
    async fn members() -> Result<Vec<Member>, MeshAdminError>;
    /// Removes an agent (by name or id) from the mesh; returns it.
    async fn revoke(agent: String) -> Result<Member, MeshAdminError>;
}

/// The join exchange, served on the colony's public endpoint (TCP, the
/// same port as its WireGuard UDP socket). The only service reachable from
/// outside the mesh.
#[tarpc::service]
pub trait ColonyJoin {
    async fn join(req: JoinRequest) -> Result<SignedGrant, JoinError>;
}

/// The discovery registry (`coral discovery start`).
#[tarpc::service]
pub trait Discovery {
    /// Publishes (or replaces with a newer) signed record.
    async fn publish(rec: SignedEndpoints) -> Result<(), DiscoveryError>;
    async fn lookup(colony_id: String) -> Option<SignedEndpoints>;
}

/// The agent's local control service, reached by the CLI over a Unix socket.
#[tarpc::service]
pub trait AgentControl {
    async fn status() -> AgentStatus;
    /// Adds services atomically: all of them or none.
    async fn connect(specs: Vec<ServiceSpec>) -> Result<Vec<ServiceSpec>, ControlError>;
    async fn disconnect(name: String) -> Result<ServiceSpec, ControlError>;
    /// Begins a graceful shutdown; returns the agent's pid.
    async fn stop() -> u32;
}
