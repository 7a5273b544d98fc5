//! Plain data carried by the RPCs. Timestamps are milliseconds since the Unix
//! epoch (`*_ms`), durations are microseconds (`*_us`). These structs are also
//! the stable `--json` schema of the status commands: add fields, never rename.

use crate::spec::ServiceSpec;
use serde::{Deserialize, Serialize};

/// Health of one service as last probed by its agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Not probed yet.
    Unknown,
    Up,
    Down,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Up => "up",
            Health::Down => "down",
        }
    }

    pub fn parse(s: &str) -> Health {
        match s {
            "up" => Health::Up,
            "down" => Health::Down,
            _ => Health::Unknown,
        }
    }
}

/// A service with its current health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceHealth {
    #[serde(flatten)]
    pub spec: ServiceSpec,
    pub health: Health,
    /// When the health last changed (start of the current up/down period).
    pub since_ms: Option<i64>,
    pub last_checked_ms: Option<i64>,
    pub latency_us: Option<u64>,
    pub last_error: Option<String>,
}

impl ServiceHealth {
    pub fn new(spec: ServiceSpec) -> Self {
        ServiceHealth {
            spec,
            health: Health::Unknown,
            since_ms: None,
            last_checked_ms: None,
            latency_us: None,
            last_error: None,
        }
    }
}

/// One probe result. `seq` increases strictly per agent, across agent
/// restarts, so the colony can store each sample exactly once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthSample {
    pub seq: u64,
    pub ts_ms: i64,
    pub service: String,
    pub up: bool,
    pub latency_us: u64,
    pub error: Option<String>,
}

/// Sent by an agent on every (re)connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Registration {
    pub agent_id: String,
    pub name: String,
    pub hostname: String,
    pub version: String,
    pub pid: u32,
    pub started_at_ms: i64,
    /// Only join a colony with this id, if set.
    pub colony_id: Option<String>,
    pub services: Vec<ServiceHealth>,
    /// Where the agent serves `AgentRpc` (colony → agent calls).
    #[serde(default)]
    pub rpc_addr: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Registered {
    pub colony_id: String,
    /// Highest sample sequence number the colony has stored for this agent.
    pub last_seq: u64,
    pub heartbeat_interval_ms: u64,
    /// Where forwarding of spans, metrics and logs resumes.
    pub checkpoints: Checkpoints,
}

/// Periodic agent → colony report: the full service set (so removals
/// propagate) and the samples not yet acknowledged.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    pub agent_id: String,
    pub services: Vec<ServiceHealth>,
    pub samples: Vec<HealthSample>,
    /// Samples the agent had to drop because the colony was away too long.
    pub dropped_samples: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatAck {
    /// Every sample with `seq <= last_seq` is stored.
    pub last_seq: u64,
}

/// Errors the colony returns to agents.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ColonyError {
    #[error("agent {0} is not registered with this colony")]
    UnknownAgent(String),
    /// `actual` is empty in the colony's reply: an unauthenticated caller
    /// does not learn the colony's id (issue 16); the agent's own check
    /// (its configured colony against the token) fills it in.
    #[error("this colony is not '{wanted}'{}", actual_colony(.actual))]
    WrongColony { wanted: String, actual: String },
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("colony storage failed: {0}")]
    Storage(String),
    /// The caller's mesh address belongs to another agent, or to none.
    #[error("agent id '{claimed}' does not match the caller's mesh address {mesh_ip}")]
    NotYou { claimed: String, mesh_ip: String },
    #[error("this agent was revoked from the colony")]
    Revoked,
}

/// Where the local colony listens (answered over the local socket so that an
/// agent on the same machine finds it without configuration).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ColonyEndpoint {
    pub colony_id: String,
    pub rpc_addr: String,
    /// With the mesh on, agents of the same user on this machine talk to the
    /// colony over this Unix socket (peer credentials are the authority)
    /// instead of `rpc_addr`, which is on the colony's mesh address.
    #[serde(default)]
    pub local_socket: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentState {
    Online,
    /// Heartbeats stopped arriving.
    Offline,
    /// The agent said goodbye.
    Stopped,
}

impl AgentState {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Online => "online",
            AgentState::Offline => "offline",
            AgentState::Stopped => "stopped",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentSummary {
    pub id: String,
    pub name: String,
    pub hostname: String,
    pub version: String,
    /// Address the agent connects from, as the colony sees it.
    pub addr: String,
    pub state: AgentState,
    pub started_at_ms: i64,
    pub registered_at_ms: i64,
    pub last_seen_ms: i64,
    pub last_seq: u64,
    pub services: Vec<ServiceHealth>,
    /// Where the colony reaches the agent's `AgentRpc`.
    #[serde(default)]
    pub rpc_addr: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ColonyStatus {
    pub colony_id: String,
    pub version: String,
    pub pid: u32,
    pub started_at_ms: i64,
    pub now_ms: i64,
    pub rpc_addr: String,
    pub state_dir: String,
    /// Health samples held in the colony's telemetry store.
    pub stored_samples: u64,
    /// OTLP rows held in the colony's telemetry store.
    pub stored_spans: u64,
    pub stored_metric_points: u64,
    pub stored_logs: u64,
    pub agents: Vec<AgentSummary>,
    /// The WireGuard mesh; `None` with `colony.mesh.enabled = false`.
    #[serde(default)]
    pub mesh: Option<ColonyMeshStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ColonyMeshStatus {
    pub mesh_ip: String,
    pub subnet: String,
    pub interface: String,
    /// Public `host:port` endpoints (UDP WireGuard, TCP join).
    pub endpoints: Vec<String>,
    pub public_key: String,
    /// Where the WireGuard key is kept: `coral-privhelper` or a key file.
    pub key_source: String,
    /// How the TUN device was made: through coral-privhelper or directly.
    pub tun_path: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    /// Looking for the colony or retrying after a failure.
    Connecting,
    Connected,
}

/// The agent's view of its link to the colony.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ColonyLink {
    pub state: LinkState,
    /// Where the agent is trying to reach the colony (empty while unknown).
    pub addr: String,
    pub colony_id: Option<String>,
    pub since_ms: i64,
    pub last_heartbeat_ms: Option<i64>,
    pub last_error: Option<String>,
    pub attempts: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentStatus {
    pub agent_id: String,
    pub name: String,
    pub version: String,
    pub pid: u32,
    pub started_at_ms: i64,
    pub now_ms: i64,
    pub state_dir: String,
    pub colony: ColonyLink,
    /// Samples waiting to be acknowledged by the colony.
    pub pending_samples: u64,
    pub dropped_samples: u64,
    /// Health samples held in the agent's telemetry store.
    pub stored_samples: u64,
    /// OTLP rows held in the agent's telemetry store.
    pub stored_spans: u64,
    pub stored_metric_points: u64,
    pub stored_logs: u64,
    pub services: Vec<ServiceHealth>,
    /// Where the OTLP receiver listens, when enabled.
    pub otlp_grpc: Option<String>,
    pub otlp_http: Option<String>,
    /// The agent's mesh address, once it joined a colony with a token.
    #[serde(default)]
    pub mesh_ip: Option<String>,
    /// The agent's mesh interface.
    #[serde(default)]
    pub mesh_interface: Option<String>,
    /// Where the agent serves `AgentRpc` for its colony.
    #[serde(default)]
    pub rpc_addr: Option<String>,
    /// Exec: the policy in force and how commands are contained.
    #[serde(default)]
    pub exec: Option<ExecStatus>,
    /// The eBPF capture (issue 5).
    #[serde(default)]
    pub ebpf: Option<EbpfStatus>,
    /// Live debugging (issue 12): sessions, attach points, limits.
    #[serde(default)]
    pub debug: Option<crate::debug::DebugStatus>,
}

/// Errors the agent's local control service returns to the CLI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ControlError {
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
    #[error("service '{0}' is already connected (run 'coral disconnect {0}' first)")]
    AlreadyConnected(String),
    #[error("no service named '{0}' is connected (see 'coral agent status')")]
    UnknownService(String),
    #[error("agent storage failed: {0}")]
    Storage(String),
    #[error(
        "this agent watches {have} services and may watch at most {max}; disconnect some first"
    )]
    TooManyServices { have: usize, max: usize },
}

/// One OTLP span as stored, flattened. Ids are lowercase hex; attributes,
/// events and resource are JSON text; times are µs since the Unix epoch.
/// `seq` grows strictly per agent and kind; 0 means "not yet numbered".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpanRecord {
    pub agent_id: String,
    pub seq: u64,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: Option<String>,
    pub service: String,
    pub name: String,
    pub kind: String,
    pub start_us: i64,
    pub duration_us: i64,
    pub status_code: String,
    pub status_message: String,
    pub attributes: String,
    pub events: String,
    pub resource: String,
    pub scope: String,
}

/// One OTLP metric data point: `value` for gauges and sums, `count` and
/// `sum` for histograms and summaries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricRecord {
    pub agent_id: String,
    pub seq: u64,
    pub service: String,
    pub name: String,
    pub unit: String,
    pub kind: String,
    pub ts_us: i64,
    pub value: Option<f64>,
    pub count: Option<u64>,
    pub sum: Option<f64>,
    pub attributes: String,
}

/// One OTLP log record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    pub agent_id: String,
    pub seq: u64,
    pub service: String,
    pub ts_us: i64,
    pub severity_number: i32,
    pub severity_text: String,
    pub body: String,
    pub trace_id: Option<String>,
    pub span_id: Option<String>,
    pub attributes: String,
}

/// Telemetry an agent forwards to the colony, in `seq` order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Signals {
    Spans(Vec<SpanRecord>),
    Metrics(Vec<MetricRecord>),
    Logs(Vec<LogRecord>),
    /// eBPF HTTP RED aggregates (issue 5).
    Red(Vec<RedRecord>),
    /// eBPF connection-map edges (issue 5).
    Edges(Vec<EdgeRecord>),
    /// Calls seen by live-debugging probes (issue 12).
    Calls(Vec<ProbeCallRecord>),
}

/// The three kinds of forwarded telemetry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignalKind {
    Spans,
    Metrics,
    Logs,
    Red,
    Edges,
    Calls,
}

impl SignalKind {
    pub const ALL: [SignalKind; 6] = [
        SignalKind::Spans,
        SignalKind::Metrics,
        SignalKind::Logs,
        SignalKind::Red,
        SignalKind::Edges,
        SignalKind::Calls,
    ];
}

impl Signals {
    pub fn kind(&self) -> SignalKind {
        match self {
            Signals::Spans(_) => SignalKind::Spans,
            Signals::Metrics(_) => SignalKind::Metrics,
            Signals::Logs(_) => SignalKind::Logs,
            Signals::Red(_) => SignalKind::Red,
            Signals::Edges(_) => SignalKind::Edges,
            Signals::Calls(_) => SignalKind::Calls,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Signals::Spans(v) => v.len(),
            Signals::Metrics(v) => v.len(),
            Signals::Logs(v) => v.len(),
            Signals::Red(v) => v.len(),
            Signals::Edges(v) => v.len(),
            Signals::Calls(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The highest `seq` carried.
    pub fn max_seq(&self) -> u64 {
        match self {
            Signals::Spans(v) => v.iter().map(|r| r.seq).max(),
            Signals::Metrics(v) => v.iter().map(|r| r.seq).max(),
            Signals::Logs(v) => v.iter().map(|r| r.seq).max(),
            Signals::Red(v) => v.iter().map(|r| r.seq).max(),
            Signals::Edges(v) => v.iter().map(|r| r.seq).max(),
            Signals::Calls(v) => v.iter().map(|r| r.seq).max(),
        }
        .unwrap_or(0)
    }
}

/// Per kind, the highest `seq` the colony has stored for an agent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoints {
    pub spans: u64,
    pub metrics: u64,
    pub logs: u64,
    #[serde(default)]
    pub red: u64,
    #[serde(default)]
    pub edges: u64,
    #[serde(default)]
    pub calls: u64,
}

impl Checkpoints {
    pub fn get(&self, kind: SignalKind) -> u64 {
        match kind {
            SignalKind::Spans => self.spans,
            SignalKind::Metrics => self.metrics,
            SignalKind::Logs => self.logs,
            SignalKind::Red => self.red,
            SignalKind::Edges => self.edges,
            SignalKind::Calls => self.calls,
        }
    }

    pub fn set(&mut self, kind: SignalKind, seq: u64) {
        match kind {
            SignalKind::Spans => self.spans = seq,
            SignalKind::Metrics => self.metrics = seq,
            SignalKind::Logs => self.logs = seq,
            SignalKind::Red => self.red = seq,
            SignalKind::Edges => self.edges = seq,
            SignalKind::Calls => self.calls = seq,
        }
    }
}

/// Rows held per table of a telemetry store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCounts {
    pub samples: u64,
    pub spans: u64,
    pub metric_points: u64,
    pub logs: u64,
    #[serde(default)]
    pub red: u64,
    #[serde(default)]
    pub edges: u64,
    /// Calls seen by live-debugging probes (issue 12).
    #[serde(default)]
    pub calls: u64,
}

/// `coral query traces`: traces that touch `service` (any span), started
/// since `since_ms`, lasting at least `min_duration_us`; newest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TraceQuery {
    pub service: Option<String>,
    pub since_ms: i64,
    pub min_duration_us: u64,
    pub limit: u32,
}

/// One trace in a list: its root span, extent and size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceSummary {
    pub trace_id: String,
    /// Service and name of the root span (the earliest span if none is a root).
    pub service: String,
    pub name: String,
    pub start_us: i64,
    pub duration_us: i64,
    pub spans: u64,
    pub errors: u64,
    pub services: Vec<String>,
}

/// `coral query logs`: newest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogQuery {
    pub service: Option<String>,
    pub since_ms: i64,
    pub trace_id: Option<String>,
    /// Case-insensitive substring of the body.
    pub contains: Option<String>,
    pub limit: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum QueryError {
    #[error("{0}")]
    Invalid(String),
    #[error("query failed: {0}")]
    Storage(String),
}

// ---------------------------------------------------------------------------
// The mesh: joining, members, discovery (issue 3).

/// What `coral colony token create` prints, base64url-encoded behind the
/// `coral-join-v1.` prefix (see `coral_mesh::membership`). Everything an
/// agent needs to join: where the colony is, the keys to check its answers
/// with, and the one-time secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    pub colony_id: String,
    /// The colony's WireGuard (X25519) public key, hex.
    pub colony_public_key: String,
    /// The colony's Ed25519 signing key, hex: grants and discovery records
    /// must verify with it.
    pub colony_sign_key: String,
    /// `host:port` endpoints: UDP for WireGuard and TCP for the join
    /// exchange, on the same port.
    pub endpoints: Vec<String>,
    /// 32 random bytes, hex. The colony stores only its SHA-256.
    pub secret: String,
}

/// An agent's request to join, sent over TCP to a colony endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    pub colony_id: String,
    pub agent_id: String,
    pub name: String,
    pub hostname: String,
    /// The agent's WireGuard public key, hex.
    pub public_key: String,
    /// The token secret and the public key above, sealed (crypto_box sealed
    /// box) to the colony's WireGuard key: an eavesdropper learns nothing,
    /// and the secret cannot be replayed for another key.
    pub sealed_secret: Vec<u8>,
}

/// The agent's membership as the colony granted it. Carried as JSON text
/// signed by the colony's Ed25519 key ([`SignedGrant`]), and cached by the
/// agent so it can restart while the colony is down.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshGrant {
    pub colony_id: String,
    pub agent_id: String,
    /// The agent's WireGuard public key (hex) this grant is for.
    pub agent_public_key: String,
    /// The agent's mesh address (a /32 of `prefix`).
    pub mesh_ip: String,
    /// The colony's mesh subnet, e.g. `100.91.16.0/20`.
    pub subnet: String,
    pub colony_mesh_ip: String,
    /// The colony's WireGuard public key, hex.
    pub colony_public_key: String,
    /// Where the colony's WireGuard listens (`host:port`, UDP).
    pub endpoints: Vec<String>,
    /// The colony's control-plane port on its mesh address (tarpc, TCP).
    pub rpc_port: u16,
    pub issued_at_ms: i64,
}

/// A [`MeshGrant`] as JSON text with the colony's signature over
/// `coral-grant-v1\n` + `grant` (hex Ed25519 signature).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedGrant {
    pub grant: String,
    pub signature: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum JoinError {
    #[error("the join token is not valid for this colony (unknown secret)")]
    UnknownToken,
    #[error("the join token expired")]
    Expired,
    #[error("the join token was already used")]
    Used,
    /// `actual` is empty in the colony's reply: an unauthenticated caller
    /// does not learn the colony's id (issue 16); the agent's own check
    /// (its configured colony against the token) fills it in.
    #[error("this colony is not '{wanted}'{}", actual_colony(.actual))]
    WrongColony { wanted: String, actual: String },
    #[error("invalid join request: {0}")]
    Invalid(String),
    #[error("the colony's mesh is full")]
    Full,
    #[error("colony storage failed: {0}")]
    Storage(String),
}

fn actual_colony(actual: &str) -> String {
    match actual {
        "" => String::new(),
        a => format!(" (it is '{a}')"),
    }
}

/// `coral colony token create`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRequest {
    pub ttl_ms: u64,
    pub uses: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenCreated {
    /// The token to pass to `coral agent start --join`.
    pub token: String,
    /// A short id for the token (the first hex digits of its hash).
    pub id: String,
    pub colony_id: String,
    pub endpoints: Vec<String>,
    pub expires_at_ms: i64,
    pub uses: u32,
}

/// One member of the colony's mesh, for `coral colony agents`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Member {
    pub agent_id: String,
    pub name: String,
    /// The agent's mesh address; `None` for an agent on the colony's own
    /// machine that talks over the local socket.
    pub mesh_ip: Option<String>,
    /// The agent's WireGuard public key, hex (`None` for a local agent).
    pub public_key: Option<String>,
    /// Where its WireGuard packets last came from.
    pub endpoint: Option<String>,
    pub last_handshake_ms: Option<i64>,
    pub joined_at_ms: i64,
    pub last_seen_ms: Option<i64>,
    pub online: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum MeshAdminError {
    #[error(
        "the colony's mesh is disabled (colony.mesh.enabled = false): it has no tokens or members"
    )]
    Disabled,
    #[error("no agent named or with id '{0}' (see 'coral colony agents')")]
    UnknownAgent(String),
    #[error("'{0}' names more than one agent; use its id")]
    Ambiguous(String),
    #[error("{0}")]
    Invalid(String),
    #[error("colony storage failed: {0}")]
    Storage(String),
}

/// A colony's current endpoints as it publishes them to discovery: JSON
/// text of [`EndpointRecord`] signed over `coral-endpoints-v1\n` + `record`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedEndpoints {
    pub record: String,
    /// The colony's Ed25519 public key, hex. Discovery pins the first key
    /// seen for a colony id; agents check it against the key they hold.
    pub sign_key: String,
    pub signature: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    pub colony_id: String,
    pub endpoints: Vec<String>,
    pub issued_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum DiscoveryError {
    #[error("bad signature")]
    BadSignature,
    #[error("colony '{0}' is published with another key")]
    KeyMismatch(String),
    #[error("an older record than the one published")]
    Stale,
    #[error("invalid record: {0}")]
    Invalid(String),
}

// ---------------------------------------------------------------------------
// Exec under policy (issue 4).

/// Base64 on the wire for byte buffers (JSON has no bytes type).
pub mod b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

/// Who asks for an exec, as established by the colony from authenticated
/// sources only: the local user from `SO_PEERCRED` on the colony's socket,
/// the identity from the mesh (until the mesh names nodes: the colony's id).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecCaller {
    /// Mesh identity of the node the request comes through.
    pub identity: Option<String>,
    pub roles: Vec<String>,
    pub uid: Option<u32>,
    pub user: Option<String>,
    pub gids: Vec<u32>,
    pub groups: Vec<String>,
    /// The CLI's pid on the colony's machine (for the audit record only).
    pub pid: Option<u32>,
}

/// `coral exec` as the CLI sends it to the colony.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecStartRequest {
    pub service: String,
    /// Only this agent (name or id), when several host the service.
    pub agent: Option<String>,
    /// argv, split from the command line with shell quoting rules, no shell.
    pub argv: Vec<String>,
    /// Asked timeout; the agent uses the smaller of this and the rule's.
    pub timeout_ms: Option<u64>,
}

/// The colony → agent request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecRequest {
    pub service: String,
    pub argv: Vec<String>,
    pub timeout_ms: Option<u64>,
    pub caller: ExecCaller,
    /// Where the request came from, for the audit (e.g. `colony test-colony, local socket`).
    pub origin: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecVerdict {
    /// The command runs.
    Allowed,
    /// The policy denies it (or the agent refused it, e.g. too many running).
    Denied,
    /// The program is not on the host.
    NotFound,
}

/// The answer to an exec start. Every start, allowed or not, is in the
/// agent's audit log before this is sent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecStarted {
    pub exec_id: String,
    pub agent_id: String,
    pub agent_name: String,
    pub verdict: ExecVerdict,
    /// The program as checked and run: absolute, symlinks resolved.
    pub program: Option<String>,
    /// The rule that decided (for a default deny: none).
    pub rule: Option<String>,
    /// One line: why.
    pub reason: String,
    pub timeout_ms: u64,
    pub max_output_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputStream {
    Stdout,
    Stderr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecChunk {
    pub stream: OutputStream,
    #[serde(with = "b64")]
    pub data: Vec<u8>,
}

/// How a command ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecOutcome {
    /// The exit status, when it exited.
    pub exit_code: Option<i32>,
    /// The signal that killed it.
    pub signal: Option<i32>,
    /// The timeout passed and the process group was killed.
    pub timed_out: bool,
    /// Cancelled by the caller (or nobody polled for a long time).
    pub cancelled: bool,
    /// Output went past the rule's `max_output_bytes` and was cut.
    pub truncated: bool,
    /// stdout + stderr bytes kept (at most the cap).
    pub output_bytes: u64,
    pub duration_us: u64,
    /// It could not be started, or the agent failed while running it.
    pub error: Option<String>,
}

/// Output since `offset`, and the outcome once the command is over and all
/// output has been read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecPoll {
    pub chunks: Vec<ExecChunk>,
    /// Pass this as `offset` next time (it acknowledges what came before).
    pub next_offset: u64,
    pub done: Option<ExecOutcome>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ExecError {
    #[error("no agent hosts a service named '{0}' (see 'coral colony status')")]
    UnknownService(String),
    #[error("service '{service}' runs on several agents ({}); pick one with --agent", agents.join(", "))]
    Ambiguous {
        service: String,
        agents: Vec<String>,
    },
    #[error("{0}")]
    Unavailable(String),
    #[error("no command {0} on this agent (it finished long ago, or the agent restarted)")]
    UnknownExec(String),
    #[error("refused: {0}")]
    Refused(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("audit log failed: {0}")]
    Storage(String),
}

/// `coral audit`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditQuery {
    pub service: Option<String>,
    pub since_ms: i64,
    pub limit: u32,
}

/// One exec attempt in an agent's write-ahead audit log: the first part is
/// committed (fsync) before anything runs, `finished` after.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecAuditRecord {
    pub exec_id: String,
    pub agent_id: String,
    pub agent_name: String,
    pub ts_ms: i64,
    /// The caller as `kind:value` words.
    pub caller: String,
    /// Where the request came from.
    pub origin: String,
    pub service: String,
    pub argv: Vec<String>,
    pub program: Option<String>,
    /// `allow` or `deny`.
    pub decision: String,
    pub rule: Option<String>,
    pub reason: String,
    /// `denied`, `running`, `finished`, or `interrupted` (the agent died
    /// while it ran).
    pub state: String,
    pub finished_ms: Option<i64>,
    pub outcome: Option<ExecOutcome>,
}

/// A row of the colony's own audit table (exec requests it forwarded, MCP
/// tool calls, ...).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ColonyAuditRecord {
    pub id: i64,
    pub ts_ms: i64,
    pub actor: String,
    pub action: String,
    pub detail: String,
    pub cli_equivalent: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AuditReport {
    /// From the agents' audit logs, newest first.
    pub exec: Vec<ExecAuditRecord>,
    /// From the colony's audit table, newest first.
    pub colony: Vec<ColonyAuditRecord>,
    /// Agents that could not be asked, with why.
    pub unreachable: Vec<String>,
}

/// The exec policy an agent runs under, for `coral agent status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PolicyStatus {
    pub path: String,
    /// The file is missing: every exec is denied.
    pub missing: bool,
    /// Rules of the policy in force.
    pub rules: u64,
    pub loaded_at_ms: Option<i64>,
    /// The last load failed; the policy in force is the previous one.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExecStatus {
    pub policy: PolicyStatus,
    /// How commands are contained: `cgroup (...)` or `process group only`.
    pub isolation: String,
    pub running: u64,
}

// ---- eBPF RED metrics and the connection map (issue 5) ----

/// HTTP requests of one service, method and normalised route that began
/// within one second, as seen by the agent's eBPF capture. One second may
/// have several rows (the agent flushes partial aggregates); they add up. `hist` is the
/// latency histogram, sparse `bucket:count` pairs joined by commas (buckets
/// of `coral_store::hist`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RedRecord {
    pub agent_id: String,
    pub seq: u64,
    /// Start of the second the requests began in, ms since the epoch.
    pub ts_ms: i64,
    pub service: String,
    pub method: String,
    pub route: String,
    pub count: u64,
    /// Responses with status 500-599.
    pub errors: u64,
    /// Responses with status 400-499.
    pub client_errors: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub sum_us: u64,
    pub max_us: u64,
    pub hist: String,
    /// Failed requests by the protocol's own code, as `code:count` pairs
    /// joined by commas, codes sorted: gRPC status codes (`13:4,14:1`),
    /// PostgreSQL SQLSTATEs (`42P01:5`); empty when there are none (and
    /// for HTTP, whose status classes are `errors` and `client_errors`).
    #[serde(default)]
    pub error_codes: String,
    /// PostgreSQL: the user and database of the connections the statement
    /// ran on, when their startup was seen (empty otherwise).
    #[serde(default)]
    pub db_user: String,
    #[serde(default)]
    pub db_name: String,
}

/// Connections from one process (or service) to one peer address within
/// one second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdgeRecord {
    pub agent_id: String,
    pub seq: u64,
    /// Start of the second, ms since the epoch.
    pub ts_ms: i64,
    /// The connecting service's name, or its process name (`comm`).
    pub src: String,
    pub src_pid: u32,
    /// `ip:port` of the peer.
    pub dst_addr: String,
    /// The connected service listening there, when known.
    pub dst_service: Option<String>,
    pub connections: u64,
    pub failures: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub rtt_sum_us: u64,
    pub rtt_count: u64,
    pub rtt_max_us: u64,
    /// Where the destination is a connected service whose protocol the
    /// agent parsed (`http`, `http2`, `grpc`, `postgres`, `redis`): the
    /// requests this client made on these connections, as the server side
    /// saw them, that began within the second; empty and zero otherwise.
    #[serde(default)]
    pub protocol: String,
    #[serde(default)]
    pub requests: u64,
    /// Of them, failed (5xx, a gRPC server-error code, an SQL or Redis
    /// error).
    #[serde(default)]
    pub request_errors: u64,
    #[serde(default)]
    pub request_sum_us: u64,
    #[serde(default)]
    pub request_max_us: u64,
}

/// One call a live-debugging probe saw (issue 12), as the agent stores it
/// and forwards it to the colony. Argument and result values and the stack
/// are JSON text (`DebugValue` lists, a list of frames).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeCallRecord {
    pub agent_id: String,
    pub seq: u64,
    /// The service whose process was probed.
    pub service: String,
    pub session: String,
    /// The call's order among the agent's debug calls (`DebugCall::seq`).
    pub call_seq: u64,
    pub pid: u32,
    pub function: String,
    pub tid: u32,
    pub goroutine: u64,
    /// Wall clock of the entry, ns since the Unix epoch.
    pub start_ns: i64,
    /// `None` when the return was not seen.
    pub duration_ns: Option<u64>,
    pub args: String,
    pub results: String,
    pub stack: String,
}

/// The agent's eBPF capture, in `coral agent status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EbpfStatus {
    /// `coral-privhelper` or `direct (CAP_BPF)`; empty when not running.
    pub path: String,
    pub running: bool,
    pub error: Option<String>,
    /// Events read from the ring buffers.
    pub events: u64,
    /// Events the kernel side dropped because a ring buffer was full.
    pub dropped: u64,
    pub requests: u64,
}
