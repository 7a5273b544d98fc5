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
    /// eBPF RED metrics per service and route (issue 5).
    async fn metrics(q: MetricsQuery) -> Result<MetricsReport, QueryError>;
    /// The connection map (issue 5).
    async fn service_map(q: MapQuery) -> Result<ServiceMap, QueryError>;
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
