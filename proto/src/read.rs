//! The colony's read layer on the wire: one typed question and answer per
//! thing Coral is asked about (RED, the service map, where a service's time
//! goes, what changed), each row labelled with the sources it came from and
//! each answer with its [`Coverage`]. `coral query`, the MCP tools and the
//! analyzer all read these, so they cannot disagree.

use serde::{Deserialize, Serialize};

/// Where a figure came from: the agent's eBPF capture (every request on
/// the wire, no code change) or the application's OTLP telemetry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Ebpf,
    Otlp,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Ebpf => "ebpf",
            Source::Otlp => "otlp",
        }
    }
}

/// A time window `[since_ms, until_ms)` and the baseline of `baseline_ms`
/// just before it (0: no baseline).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub since_ms: i64,
    pub until_ms: i64,
    pub baseline_ms: i64,
}

/// Longest window or baseline any question takes.
pub const MAX_WINDOW_MS: i64 = 366 * 24 * 3600 * 1000;

impl Window {
    /// The `len_ms` before `until_ms`, with a baseline of `baseline_ms`
    /// before that.
    pub fn last(len_ms: i64, baseline_ms: i64, until_ms: i64) -> Window {
        Window {
            since_ms: until_ms.saturating_sub(len_ms),
            until_ms,
            baseline_ms,
        }
    }

    pub fn baseline_since_ms(&self) -> i64 {
        self.since_ms - self.baseline_ms
    }

    /// Refuses windows no store can hold: negative, reversed, before 1970
    /// or longer than [`MAX_WINDOW_MS`] (e.g. `--since 300000years`).
    pub fn check(&self) -> Result<(), String> {
        let len = self.until_ms.checked_sub(self.since_ms);
        if self.since_ms < 0 || self.baseline_ms < 0 || self.baseline_since_ms() < 0 {
            return Err("the window starts before 1970; ask for at most a year".into());
        }
        match len {
            Some(l) if (1..=MAX_WINDOW_MS).contains(&l) => {}
            _ => return Err("the window must be between 1ms and one year long".into()),
        }
        if self.baseline_ms > MAX_WINDOW_MS {
            return Err("the baseline must be at most one year long".into());
        }
        Ok(())
    }
}

/// RED of every service (or one), per service and per route.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RedQuery {
    pub service: Option<String>,
    pub window: Window,
}

/// Requests, errors and latency of one service or route in one window, as
/// one source saw them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RedFigures {
    pub count: u64,
    /// eBPF: 5xx responses. OTLP: spans with status error.
    pub errors: u64,
    /// 4xx responses (eBPF only; they are the caller's errors).
    pub client_errors: u64,
    pub error_pct: f64,
    /// Requests per second over the window.
    pub rps: f64,
    pub p50_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    /// Total time in requests, µs (for shares of a service's time).
    pub sum_us: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// eBPF: failed requests by the protocol's own code (gRPC status
    /// code, PostgreSQL SQLSTATE); absent when there are none.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub error_codes: std::collections::BTreeMap<String, u64>,
}

/// One source's view of a service or route: the window, the baseline, and
/// when in the window it moved away from the baseline.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceRed {
    pub recent: RedFigures,
    pub baseline: Option<RedFigures>,
    /// The first second of the window whose mean latency exceeded the slow
    /// threshold (1.5x the baseline p95, and 10 ms over it) or whose
    /// errors exceeded the baseline's error share by 5 points.
    pub onset_ms: Option<i64>,
    /// The slow threshold used for `onset_ms`.
    pub slow_threshold_us: Option<u64>,
}

/// A service (`route` is `None`) or one of its routes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RedRow {
    pub service: String,
    pub method: Option<String>,
    pub route: Option<String>,
    /// The sources with requests for this row, in the window or baseline.
    pub sources: Vec<Source>,
    pub ebpf: Option<SourceRed>,
    pub otlp: Option<SourceRed>,
    /// A PostgreSQL statement seen by eBPF: the user and database its
    /// connections logged in as (when their startup was seen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_name: Option<String>,
}

impl RedRow {
    /// The figures to lead with: eBPF (it sees every request on the wire)
    /// when it has any, else OTLP.
    pub fn primary(&self) -> Option<(Source, &SourceRed)> {
        match (&self.ebpf, &self.otlp) {
            (Some(e), _) => Some((Source::Ebpf, e)),
            (None, Some(o)) => Some((Source::Otlp, o)),
            (None, None) => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RedReport {
    pub window: Window,
    /// One per service, busiest first.
    pub services: Vec<RedRow>,
    /// One per service, method and route, busiest first.
    pub routes: Vec<RedRow>,
    pub coverage: Coverage,
}

/// The service map over a window.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MapQuery {
    pub window: Window,
}

/// Who calls whom. eBPF edges come from connections (any protocol, also to
/// unconnected peers such as a database by its address); OTLP edges from
/// parent/child spans across services and client spans' peer attributes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MapEdge {
    /// The calling service (or, for eBPF, its process name when the
    /// process serves no connected service).
    pub from: String,
    /// The called service, else the peer's name (OTLP) or `ip:port` (eBPF).
    pub to: String,
    /// `ip:port` of the peer, from eBPF.
    pub to_addr: Option<String>,
    pub sources: Vec<Source>,
    /// eBPF: connections opened, failed (refused, timed out), bytes, RTT.
    pub connections: u64,
    pub failures: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub rtt_avg_us: u64,
    pub rtt_max_us: u64,
    /// OTLP: calls, errors and mean duration.
    pub calls: u64,
    pub errors: u64,
    pub mean_us: u64,
    /// eBPF, where the agent parsed the destination service's protocol:
    /// which (`http`, `http2`, `grpc`, `postgres`, `redis`), and the
    /// requests this caller made on the edge's connections, failed ones,
    /// mean and max latency, as the server side saw them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default)]
    pub requests: u64,
    #[serde(default)]
    pub request_errors: u64,
    #[serde(default)]
    pub request_mean_us: u64,
    #[serde(default)]
    pub request_max_us: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceMap {
    pub window: Window,
    pub edges: Vec<MapEdge>,
    pub coverage: Coverage,
}

/// Where one service's time goes, window against baseline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HotspotQuery {
    pub service: String,
    pub window: Window,
}

/// One place a service's request time goes: a route of the service (eBPF
/// or OTLP server spans) or an operation under its requests (OTLP: its own
/// spans and its calls downstream, with the statement they run).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Operation {
    pub source: Source,
    /// `route` (one of the service's routes), or the span kind
    /// (`internal`, `client`, `server`, ...) of a descendant span.
    pub kind: String,
    /// The service the operation runs in.
    pub service: String,
    /// `GET /api/checkout`, or the span name.
    pub name: String,
    pub peer: Option<String>,
    pub statement: Option<String>,
    pub db_name: Option<String>,
    pub db_user: Option<String>,
    pub count: u64,
    /// Times per request of the service (routes: 1).
    pub per_request: f64,
    pub errors: u64,
    pub mean_us: u64,
    pub p95_us: u64,
    /// Share of the service's request time in the window, percent.
    pub share_pct: f64,
    pub baseline_count: Option<u64>,
    pub baseline_mean_us: Option<u64>,
    pub baseline_p95_us: Option<u64>,
    /// Routes: when in the window they turned slow.
    pub onset_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hotspots {
    pub service: String,
    pub window: Window,
    /// The service's requests (its primary source) in the window and
    /// baseline, and their mean duration.
    pub source: Option<Source>,
    pub requests: u64,
    pub mean_request_us: u64,
    pub baseline_requests: u64,
    pub baseline_mean_request_us: Option<u64>,
    /// Largest share of time first.
    pub operations: Vec<Operation>,
    /// Since when requests are slow: the first second of the window over
    /// the slow threshold.
    pub slow_threshold_us: Option<u64>,
    pub slow_since_ms: Option<i64>,
    pub coverage: Coverage,
}

/// Something that changed: an agent joined, restarted or left; a service
/// was added; a service's health changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub ts_ms: i64,
    pub what: String,
    pub agent: String,
    pub service: Option<String>,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Changes {
    pub since_ms: i64,
    pub changes: Vec<Change>,
    pub coverage: Coverage,
}

/// What moved between a window and its baseline, along every dimension
/// the telemetry carries (issue 15): per operation (service, span kind,
/// name, peer and statement) the time spent in it (its own, without its
/// children), its calls and the errors it originated; per value of each
/// dimension of the spans (instance, node, version, status code,
/// exception type and message, route, retry count) the same; per metric
/// its level; per eBPF connection edge its connects, failures and RTT;
/// per problem log message template (WARN and worse) and severity its
/// count.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BreakdownQuery {
    pub window: Window,
    /// Facets of this service along every dimension; without it, only
    /// the node of each service's requests.
    pub service: Option<String>,
}

/// Spans of one group in one window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SpanTally {
    pub count: u64,
    /// Spans with status error.
    pub errors: u64,
    /// Errors the span originated: failed with no failed child.
    pub own_errors: u64,
    pub sum_us: u64,
    /// Time in the span itself, without its children.
    pub self_us: u64,
}

/// One operation: window against baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpChange {
    pub service: String,
    /// Span kind: `server`, `client`, `internal`, `producer`, `consumer`.
    pub kind: String,
    pub name: String,
    /// What a client span calls (peer.service, server.address, ...).
    pub peer: Option<String>,
    /// The database a client span queries (db.namespace / db.name).
    pub db_name: Option<String>,
    pub statement: Option<String>,
    pub recent: SpanTally,
    pub baseline: SpanTally,
}

/// One value of one dimension of a service's spans of one kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Facet {
    pub service: String,
    pub kind: String,
    /// `instance`, `node`, `version`, `status`, `exception`, `message`,
    /// `route`, `peer`, `resend`.
    pub dimension: String,
    pub value: String,
    pub recent: SpanTally,
    pub baseline: SpanTally,
}

/// One metric of one service: its mean and max in each window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricChange {
    pub service: String,
    pub name: String,
    pub unit: String,
    pub recent_mean: Option<f64>,
    pub recent_max: Option<f64>,
    pub baseline_mean: Option<f64>,
    pub baseline_max: Option<f64>,
}

/// eBPF connections from one process or service to one peer in one window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EdgeTally {
    pub connections: u64,
    pub failures: u64,
    pub rtt_avg_us: u64,
    pub rtt_max_us: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdgeChange {
    pub from: String,
    /// The connected service, else `ip:port`.
    pub to: String,
    pub to_addr: String,
    pub recent: EdgeTally,
    pub baseline: EdgeTally,
}

/// Problem log records (WARN and worse) of one service, severity and
/// message template (the body with numbers, ids, hex and UUIDs replaced by
/// `?`): how many in each window, and one body as it was logged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogChange {
    pub service: String,
    pub severity: String,
    pub template: String,
    /// One body of the template, from the window if any.
    pub example: String,
    pub recent: u64,
    pub baseline: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Breakdown {
    pub window: Window,
    /// Requests (root spans) in the window and the baseline.
    pub requests: u64,
    pub baseline_requests: u64,
    pub operations: Vec<OpChange>,
    pub facets: Vec<Facet>,
    pub metrics: Vec<MetricChange>,
    pub edges: Vec<EdgeChange>,
    /// Log messages by template, the most frequent first.
    #[serde(default)]
    pub logs: Vec<LogChange>,
    pub coverage: Coverage,
}

/// How much of what the agents hold the colony had when it answered.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Coverage {
    /// Every agent online and reachable, nothing committed on an agent
    /// missing at the colony.
    pub complete: bool,
    pub agents: Vec<AgentCoverage>,
    /// How long the answer waited for in-flight rows, ms.
    pub waited_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentCoverage {
    pub agent: String,
    pub agent_id: String,
    /// `online`, `offline` (silent past the agent timeout: its data since
    /// `last_seen_ms` is missing), `stopped` (left on purpose) or
    /// `unreachable` (online, but it did not say what it holds).
    pub state: String,
    pub last_seen_ms: i64,
    /// Telemetry rows the agent has committed that the colony has not
    /// stored yet (0 when unknown).
    pub rows_behind: u64,
}

impl Coverage {
    /// One line on what is missing, or `None` when complete.
    pub fn gaps(&self) -> Option<String> {
        if self.complete {
            return None;
        }
        let parts: Vec<String> = self
            .agents
            .iter()
            .filter_map(|a| match a.state.as_str() {
                "offline" => Some(format!("agent {} is offline", a.agent)),
                "unreachable" => Some(format!("agent {} did not answer", a.agent)),
                _ if a.rows_behind > 0 => Some(format!(
                    "agent {} has {} rows not yet at the colony",
                    a.agent, a.rows_behind
                )),
                _ => None,
            })
            .collect();
        Some(if parts.is_empty() {
            "some data may be missing".into()
        } else {
            parts.join("; ")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_windows_are_refused() {
        let now = 1_800_000_000_000;
        assert!(Window::last(300_000, 3_600_000, now).check().is_ok());
        // `--since 300000years`, saturated to i64::MAX ms.
        assert!(Window::last(i64::MAX, 0, now).check().is_err());
        assert!(Window::last(MAX_WINDOW_MS + 1, 0, now).check().is_err());
        assert!(Window::last(1000, i64::MAX, now).check().is_err());
        assert!(Window::last(0, 0, now).check().is_err());
    }
}
