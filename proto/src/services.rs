//! tarpc service traits. Each `#[tarpc::service]` generates a `...Client`
//! and a `serve()` adapter.

use crate::read::*;
use crate::spec::ServiceSpec;
use crate::types::*;

/// The colony's control plane, called by agents.
#[tarpc::service]
pub trait ColonyLink {
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
    /// `coral exec`: finds the agent hosting the service and asks it to run
    /// argv under its policy. The caller is the peer of this local socket.
    async fn exec_start(req: ExecStartRequest) -> Result<ExecStarted, ExecError>;
    /// Output since `offset` (waiting up to `wait_ms` for some), and the
    /// outcome once done. Forwarded to the agent.
    async fn exec_poll(
        agent_id: String,
        exec_id: String,
        offset: u64,
        wait_ms: u64,
    ) -> Result<ExecPoll, ExecError>;
    /// Kills a running command's process group.
    async fn exec_cancel(agent_id: String, exec_id: String) -> Result<(), ExecError>;
    /// `coral audit`: the agents' exec audit logs and the colony's own table.
    async fn audit(q: AuditQuery) -> Result<AuditReport, QueryError>;
    /// Begins a graceful shutdown; returns the colony's pid.
    async fn stop() -> u32;
    /// Creates a join token (`coral colony token create`).
    async fn token_create(req: TokenRequest) -> Result<TokenCreated, MeshAdminError>;
    /// The mesh members (`coral colony agents`).
    async fn members() -> Result<Vec<Member>, MeshAdminError>;
    /// Removes an agent (by name or id) from the mesh; returns it.
    async fn revoke(agent: String) -> Result<Member, MeshAdminError>;
    /// RED per service and route from every source (the read layer).
    async fn red(q: RedQuery) -> Result<RedReport, QueryError>;
    /// The service map from every source (the read layer).
    async fn service_map(q: MapQuery) -> Result<ServiceMap, QueryError>;
    /// `coral debug` (issue 12): forwarded to the agent hosting `service`
    /// after the colony's audit record is written.
    async fn debug(
        service: String,
        op: crate::debug::DebugOp,
    ) -> Result<crate::debug::DebugReply, crate::debug::DebugError>;
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

/// Colony → agent calls, served by the agent on its own TCP listener
/// (`agent.rpc_listen`; on the mesh address once the mesh carries this
/// traffic). The agent accepts them only from the colony it is linked to.
#[tarpc::service]
pub trait AgentRpc {
    /// Decides under the agent's policy, writes the audit record (fsync),
    /// then starts the command. A denied request is recorded too.
    async fn exec_start(req: ExecRequest) -> Result<ExecStarted, ExecError>;
    /// Output after `offset` (waiting up to `wait_ms` for some); `done` once
    /// the command is over and all its output was read.
    async fn exec_poll(exec_id: String, offset: u64, wait_ms: u64) -> Result<ExecPoll, ExecError>;
    /// Kills the command's process group (and cgroup).
    async fn exec_cancel(exec_id: String) -> Result<(), ExecError>;
    /// The agent's exec audit log, newest first.
    async fn audit(q: AuditQuery) -> Result<Vec<ExecAuditRecord>, ExecError>;
    /// Per kind, the last telemetry `seq` the agent has committed: the
    /// colony compares it with what it stored to know what is in flight.
    async fn telemetry_head() -> Checkpoints;
    /// Live debugging (issue 12) on the process serving `service`.
    async fn debug(
        service: String,
        op: crate::debug::DebugOp,
    ) -> Result<crate::debug::DebugReply, crate::debug::DebugError>;
}
