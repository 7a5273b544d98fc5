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
    #[error("this colony is '{actual}', not '{wanted}'")]
    WrongColony { wanted: String, actual: String },
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("colony storage failed: {0}")]
    Storage(String),
}

/// Where the local colony listens (answered over the local socket so that an
/// agent on the same machine finds it without configuration).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ColonyEndpoint {
    pub colony_id: String,
    pub rpc_addr: String,
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
    /// The eBPF capture (issue 5).
    #[serde(default)]
    pub ebpf: Option<EbpfStatus>,
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
}

impl SignalKind {
    pub const ALL: [SignalKind; 5] = [
        SignalKind::Spans,
        SignalKind::Metrics,
        SignalKind::Logs,
        SignalKind::Red,
        SignalKind::Edges,
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
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Signals::Spans(v) => v.len(),
            Signals::Metrics(v) => v.len(),
            Signals::Logs(v) => v.len(),
            Signals::Red(v) => v.len(),
            Signals::Edges(v) => v.len(),
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
}

impl Checkpoints {
    pub fn get(&self, kind: SignalKind) -> u64 {
        match kind {
            SignalKind::Spans => self.spans,
            SignalKind::Metrics => self.metrics,
            SignalKind::Logs => self.logs,
            SignalKind::Red => self.red,
            SignalKind::Edges => self.edges,
        }
    }

    pub fn set(&mut self, kind: SignalKind, seq: u64) {
        match kind {
            SignalKind::Spans => self.spans = seq,
            SignalKind::Metrics => self.metrics = seq,
            SignalKind::Logs => self.logs = seq,
            SignalKind::Red => self.red = seq,
            SignalKind::Edges => self.edges = seq,
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

// ---- eBPF RED metrics and the connection map (issue 5) ----

/// HTTP requests of one service, method and normalised route within one
/// minute, as seen by the agent's eBPF capture. One minute may have several
/// rows (the agent flushes partial aggregates); they add up. `hist` is the
/// latency histogram, sparse `bucket:count` pairs joined by commas (buckets
/// of `coral_agent::ebpf::hist`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RedRecord {
    pub agent_id: String,
    pub seq: u64,
    /// Start of the minute, ms since the epoch.
    pub minute_ms: i64,
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
}

/// Connections from one process (or service) to one peer address within
/// one minute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdgeRecord {
    pub agent_id: String,
    pub seq: u64,
    pub minute_ms: i64,
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
}

/// `coral query metrics` / `coral top`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetricsQuery {
    pub service: Option<String>,
    pub since_ms: i64,
}

/// RED figures over the queried window, for a service (`route` is `None`)
/// or one of its routes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RedSummary {
    pub service: String,
    pub method: Option<String>,
    pub route: Option<String>,
    pub count: u64,
    pub errors: u64,
    pub client_errors: u64,
    /// `errors / count * 100`.
    pub error_pct: f64,
    /// Requests per second over the window.
    pub rps: f64,
    pub p50_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsReport {
    pub since_ms: i64,
    pub until_ms: i64,
    /// One per service, busiest first.
    pub services: Vec<RedSummary>,
    /// One per service, method and route, busiest first.
    pub routes: Vec<RedSummary>,
}

/// `coral query map`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MapQuery {
    pub since_ms: i64,
}

/// One edge of the service map over the queried window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MapEdge {
    pub src: String,
    pub dst_addr: String,
    pub dst_service: Option<String>,
    pub connections: u64,
    pub failures: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub rtt_avg_us: u64,
    pub rtt_max_us: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceMap {
    pub since_ms: i64,
    pub until_ms: i64,
    pub edges: Vec<MapEdge>,
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
