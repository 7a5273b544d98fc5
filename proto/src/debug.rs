//! Wire types of live debugging (issue 12): `coral debug attach | list |
//! logs | detach | functions`, carried CLI → colony → agent. Also the
//! `--json` schema of those commands.

use serde::{Deserialize, Serialize};

/// Default and largest session lifetime.
pub const DEFAULT_DEBUG_TTL_MS: u64 = 60_000;
pub const MAX_DEBUG_TTL_MS: u64 = 600_000;

/// What to probe: a service's process (the one listening on its port) or a
/// pid on the agent's host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DebugTarget {
    Service(String),
    Pid(u32),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebugAttachRequest {
    pub target: DebugTarget,
    /// Function names: exact, or the last element (`handleCheckout`).
    pub functions: Vec<String>,
    /// Session lifetime; 0 means the default. At most [`MAX_DEBUG_TTL_MS`].
    pub ttl_ms: u64,
    /// Capture argument and result values (they can hold secrets).
    pub capture_args: bool,
    /// Capture each call's user stack at its entry (up to 32 frames).
    #[serde(default)]
    pub stack: bool,
}

/// One probed function of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebugProbe {
    pub function: String,
    /// File offsets of the attach points: the entry, then the return
    /// instructions (Go) or the entry again as a uretprobe (native).
    pub entry_offset: u64,
    pub return_offsets: Vec<u64>,
    /// Arguments as `name type` (from DWARF; empty without it).
    pub params: Vec<String>,
    pub hits: u64,
    /// Its measured cost over the last window: hits × the cost of one hit,
    /// in µs of CPU per second.
    pub cost_us_per_s: u64,
    /// `attached`, or why it was detached (`detached: over budget ...`).
    pub state: String,
    /// Hits per second over the last budget window.
    #[serde(default)]
    pub events_per_s: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebugSession {
    pub id: String,
    pub pid: u32,
    pub binary: String,
    /// `go` or `native`.
    pub lang: String,
    /// `coral-privhelper` or `direct (CAP_BPF)`.
    pub attached_via: String,
    pub probes: Vec<DebugProbe>,
    pub attach_points: u32,
    pub started_ms: i64,
    pub expires_ms: i64,
    pub calls: u64,
    /// Events the ring had no room for.
    pub dropped: u64,
    /// `active`, or why it ended (`detached`, `expired`).
    pub state: String,
    /// The service the session probes (empty for a pid target).
    #[serde(default)]
    pub service: String,
}

/// One argument or result value as captured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebugValue {
    pub name: String,
    pub type_name: String,
    /// The value, or `<unavailable: why>`.
    pub value: String,
}

/// One completed (or still open at detach) call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebugCall {
    /// Order within the session.
    pub seq: u64,
    pub session: String,
    pub function: String,
    pub tid: u32,
    /// Go: the goroutine's `g` address (display only); else 0.
    pub goroutine: u64,
    /// Wall clock of the entry, ns since the Unix epoch.
    pub start_unix_ns: i64,
    /// `None` when the return was not seen (detached mid-call).
    pub duration_ns: Option<u64>,
    pub args: Vec<DebugValue>,
    pub results: Vec<DebugValue>,
    /// With `stack`: the frames at the entry, innermost first, as
    /// `function+0xoffset` (`0x…` outside the binary); empty when the
    /// stack was not asked for or is unavailable (no frame pointers).
    #[serde(default)]
    pub stack: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebugLogsRequest {
    /// One session, or all of the target's.
    pub session: Option<String>,
    /// Calls with `seq` above this (0: from the start).
    pub after_seq: u64,
    /// At most this many calls (capped by the agent).
    pub limit: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebugLogs {
    pub calls: Vec<DebugCall>,
    /// The sessions the calls came from, as they are now.
    pub sessions: Vec<DebugSession>,
}

/// A function that can be probed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebugFunction {
    pub name: String,
    pub offset: u64,
    pub size: u64,
    pub params: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebugFunctions {
    pub pid: u32,
    pub binary: String,
    pub lang: String,
    pub has_dwarf: bool,
    /// Matching functions (capped; `total` counts all matches).
    pub functions: Vec<DebugFunction>,
    pub total: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum DebugError {
    /// The caller may not do this.
    #[error("{0}")]
    Refused(String),
    /// The request itself is wrong (exit 64 in the CLI).
    #[error("{0}")]
    Invalid(String),
    /// The target, its runtime or the host cannot be probed.
    #[error("{0}")]
    Unsupported(String),
    /// A limit was reached.
    #[error("{0}")]
    Limit(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Failed(String),
}

/// One `coral debug` operation on a service, as the colony forwards it to
/// the agent hosting the service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DebugOp {
    Attach(DebugAttachRequest),
    List,
    Logs(DebugLogsRequest),
    /// One session, or all of the agent's with `None`.
    Detach(Option<String>),
    Functions {
        pattern: String,
        limit: u32,
    },
    /// `coral debug trace`: follow the requests on a path.
    Trace(DebugTraceRequest),
    /// The requests a trace saw, ended after `after_ns`.
    TraceRequests {
        trace: String,
        after_ns: i64,
    },
}

/// `coral debug trace SERVICE --path PATH`: the requests on `path` from the
/// HTTP capture and, for Go, the calls of the probed functions on the
/// goroutine that served each (the trace probes
/// `net/http.serverHandler.ServeHTTP` to find that goroutine).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebugTraceRequest {
    /// The request path (without the query); a trailing `*` matches a prefix.
    pub path: String,
    /// Functions to probe; empty: those whose name matches a word of the path.
    pub functions: Vec<String>,
    pub ttl_ms: u64,
}

/// A trace as started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebugTrace {
    pub id: String,
    pub service: String,
    pub path: String,
    pub expires_ms: i64,
    /// The probe session (Go); `None`: request level only, with why.
    pub session: Option<DebugSession>,
    pub note: Option<String>,
}

/// One call in a request's call tree, depth first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebugTreeCall {
    pub function: String,
    /// 0 for the outermost call.
    pub depth: u32,
    /// From the request's start.
    pub offset_ns: i64,
    pub duration_ns: Option<u64>,
}

/// One request on the traced path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebugRequest {
    pub method: String,
    pub target: String,
    pub status: u16,
    pub start_unix_ns: i64,
    pub duration_ns: u64,
    /// The goroutine (`g`) that served it, when a probe found it.
    pub goroutine: Option<u64>,
    pub calls: Vec<DebugTreeCall>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebugRequests {
    pub trace: DebugTrace,
    /// Ended requests after the asked time, oldest first.
    pub requests: Vec<DebugRequest>,
    /// True while the trace runs.
    pub active: bool,
}

impl DebugOp {
    /// Short name for the audit log.
    pub fn action(&self) -> &'static str {
        match self {
            DebugOp::Attach(_) => "debug_attach",
            DebugOp::List => "debug_list",
            DebugOp::Logs(_) => "debug_logs",
            DebugOp::Detach(_) => "debug_detach",
            DebugOp::Functions { .. } => "debug_functions",
            DebugOp::Trace(_) => "debug_trace",
            DebugOp::TraceRequests { .. } => "debug_trace_requests",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DebugReply {
    Sessions(Vec<DebugSession>),
    Logs(DebugLogs),
    Functions(DebugFunctions),
    Trace(DebugTrace),
    Requests(DebugRequests),
}

impl DebugCall {
    /// The row the agent stores and forwards for this call.
    pub fn record(&self, service: &str, pid: u32) -> crate::ProbeCallRecord {
        fn json<T: Serialize>(v: &T) -> String {
            serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
        }
        crate::ProbeCallRecord {
            agent_id: String::new(),
            seq: 0,
            service: service.to_string(),
            session: self.session.clone(),
            call_seq: self.seq,
            pid,
            function: self.function.clone(),
            tid: self.tid,
            goroutine: self.goroutine,
            start_ns: self.start_unix_ns,
            duration_ns: self.duration_ns,
            args: json(&self.args),
            results: json(&self.results),
            stack: json(&self.stack),
        }
    }

    /// The call a stored row holds (values that do not parse are dropped).
    pub fn from_record(r: &crate::ProbeCallRecord) -> DebugCall {
        DebugCall {
            seq: r.call_seq,
            session: r.session.clone(),
            function: r.function.clone(),
            tid: r.tid,
            goroutine: r.goroutine,
            start_unix_ns: r.start_ns,
            duration_ns: r.duration_ns,
            args: serde_json::from_str(&r.args).unwrap_or_default(),
            results: serde_json::from_str(&r.results).unwrap_or_default(),
            stack: serde_json::from_str(&r.stack).unwrap_or_default(),
        }
    }
}

/// The agent's limits on live debugging (`[agent.debug]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebugLimits {
    pub max_sessions: u32,
    pub max_functions_per_session: u32,
    pub max_points_per_agent: u32,
    /// A probe costing more CPU than this (hits × the cost of one hit) is
    /// detached, in µs of CPU per second.
    pub budget_us_per_s: u64,
    /// The cost of one hit the budget counts, in ns.
    pub hit_cost_ns: u64,
    /// The events per second per probe that budget allows.
    pub max_events_per_s_per_probe: u64,
    pub default_ttl_s: u64,
    pub max_ttl_s: u64,
}

/// Live debugging in `coral agent status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebugStatus {
    pub active_sessions: u32,
    pub attach_points: u32,
    /// Calls held in the agent's telemetry store.
    pub stored_calls: u64,
    /// The active sessions.
    pub sessions: Vec<DebugSession>,
    pub limits: DebugLimits,
}
