//! The OTLP receiver: OTLP/gRPC (default :4317) and OTLP/HTTP (default
//! :4318, `/v1/traces`, `/v1/metrics`, `/v1/logs`, protobuf or JSON, gzip),
//! so each agent is one more sink beside an app's existing exporters.
//!
//! Memory is bounded: a request is admitted only if its size fits in the
//! in-flight budget, else it is refused with 429 / RESOURCE_EXHAUSTED and a
//! retry hint. OTLP/HTTP admits on Content-Length before reading the body;
//! OTLP/gRPC admits on the length in the message's gRPC frame header, before
//! tonic buffers or decodes anything (a compressed message is charged
//! `max_request_bytes`, what it may inflate to), and caps open HTTP/2 streams
//! per connection, so a client queues excess requests before sending them. An admitted request is answered only after its rows are
//! committed to DuckDB: what is accepted is stored, what is refused is
//! refused explicitly.
//!
//! Slow and idle clients are bounded too (issue 16): each listener serves at
//! most `max_connections` connections (beyond, new ones are closed at once),
//! a request's headers (HTTP) or connection preface (gRPC) must arrive within
//! `header_timeout`, and an admitted body must arrive within `body_timeout`
//! and keep up a minimum rate ([`BodyClock`]), so a client that declares a
//! large body and trickles it holds its share of the budget for seconds, not
//! for as long as it likes. So a flood of the OTLP ports can use at most
//! `2 × max_connections` file descriptors, and the control socket and
//! `coral exec` keep working.

pub mod convert;
mod grpc;
mod http;

use coral_store::telemetry::{Batch, Telemetry};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// The `[agent.otlp]` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpConfig {
    pub enabled: bool,
    pub grpc_listen: String,
    pub http_listen: String,
    /// Largest request accepted, after decompression.
    pub max_request_bytes: usize,
    /// Encoded bytes of requests being stored at once; beyond this, requests
    /// are refused with a retry hint.
    pub max_inflight_bytes: usize,
    /// Open connections per listener; beyond, new ones are closed at once.
    pub max_connections: usize,
    /// A request's headers (HTTP/1) or the connection preface (gRPC) must
    /// arrive within this time; an idle keep-alive connection is closed
    /// after it.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// An admitted request's whole body must arrive within this time.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        OtlpConfig {
            enabled: true,
            grpc_listen: "127.0.0.1:4317".into(),
            http_listen: "127.0.0.1:4318".into(),
            max_request_bytes: 4 * 1024 * 1024,
            max_inflight_bytes: 64 * 1024 * 1024,
            max_connections: 256,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
        }
    }
}

impl OtlpConfig {
    pub fn validate(&self) -> Result<(), String> {
        for (key, addr) in [
            ("grpc_listen", &self.grpc_listen),
            ("http_listen", &self.http_listen),
        ] {
            addr.parse::<std::net::SocketAddr>().map_err(|_| {
                format!("agent.otlp.{key} '{addr}' must be ip:port, e.g. 127.0.0.1:4317")
            })?;
        }
        if self.max_request_bytes < 1024 {
            return Err("agent.otlp.max_request_bytes must be at least 1024".into());
        }
        if self.max_inflight_bytes < self.max_request_bytes {
            return Err(
                "agent.otlp.max_inflight_bytes must be at least agent.otlp.max_request_bytes"
                    .into(),
            );
        }
        if !(1..=65536).contains(&self.max_connections) {
            return Err("agent.otlp.max_connections must be between 1 and 65536".into());
        }
        for (key, d) in [
            ("header_timeout", self.header_timeout),
            ("body_timeout", self.body_timeout),
        ] {
            if d < Duration::from_millis(100) || d > Duration::from_secs(600) {
                return Err(format!(
                    "agent.otlp.{key} must be between 100ms and 10m, e.g. \"10s\""
                ));
            }
        }
        Ok(())
    }
}

/// A body must arrive at least this fast (bytes per second) once
/// [`BODY_GRACE`] has passed: a client that trickles is cut off.
pub const MIN_BODY_RATE: f64 = 64.0 * 1024.0;
/// Time a body may take before [`MIN_BODY_RATE`] applies.
pub const BODY_GRACE: Duration = Duration::from_secs(5);

/// The deadline of a request body that is being received: all of it within
/// `body_timeout`, and byte `n` no later than `BODY_GRACE + n / MIN_BODY_RATE`
/// after the headers.
#[derive(Clone, Copy)]
pub(crate) struct BodyClock {
    start: tokio::time::Instant,
    total: Duration,
}

impl BodyClock {
    pub(crate) fn start(total: Duration) -> Self {
        BodyClock {
            start: tokio::time::Instant::now(),
            total,
        }
    }

    /// When the next piece must have arrived, `received` bytes in.
    pub(crate) fn deadline(&self, received: usize) -> tokio::time::Instant {
        let by_rate = BODY_GRACE + Duration::from_secs_f64(received as f64 / MIN_BODY_RATE);
        self.start + by_rate.min(self.total)
    }
}

/// Why a body could not be read.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// It did not keep up with the [`BodyClock`].
    Slow,
    /// It is longer than allowed.
    TooLarge,
    /// The connection failed.
    Read(String),
}

/// Reads a whole body, at most `max` bytes, on the clock of `clock`.
pub(crate) async fn read_body<B>(
    mut body: B,
    max: usize,
    capacity: usize,
    clock: BodyClock,
) -> Result<bytes::Bytes, BodyError>
where
    B: http_body::Body<Data = bytes::Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    use http_body_util::BodyExt;
    let mut buf = Vec::with_capacity(capacity.min(max));
    loop {
        let frame = tokio::time::timeout_at(clock.deadline(buf.len()), body.frame())
            .await
            .map_err(|_| BodyError::Slow)?;
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|e| BodyError::Read(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > max {
                return Err(BodyError::TooLarge);
            }
            if buf.is_empty() && body.is_end_stream() {
                return Ok(data);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.into())
}

/// Open connections of one listener: a permit per connection.
#[derive(Clone)]
pub(crate) struct ConnectionCap {
    slots: Arc<Semaphore>,
    refusals: Arc<coral_proto::local::RateLimited>,
    what: &'static str,
}

impl ConnectionCap {
    pub(crate) fn new(max: usize, what: &'static str) -> Self {
        ConnectionCap {
            slots: Arc::new(Semaphore::new(max)),
            refusals: Arc::new(coral_proto::local::RateLimited::new(Duration::from_secs(1))),
            what,
        }
    }

    /// A slot for a new connection, or `None` (logged at most once a second)
    /// when all are taken: the caller closes the connection.
    pub(crate) fn admit(&self) -> Option<OwnedSemaphorePermit> {
        let permit = self.slots.clone().try_acquire_owned().ok();
        if permit.is_none()
            && let Some(suppressed) = self.refusals.allow()
        {
            tracing::warn!(
                listener = self.what,
                suppressed,
                "OTLP connection limit reached; closing new connections (agent.otlp.max_connections)"
            );
        }
        permit
    }

    /// Resolves once no connection is open.
    pub(crate) async fn drained(&self, max: usize) {
        let _ = self.slots.acquire_many(max as u32).await;
    }
}

/// Accepts a connection, backing off on errors such as EMFILE instead of
/// spinning; `None` once `shutdown` is cancelled.
pub(crate) async fn accept(
    listener: &tokio::net::TcpListener,
    shutdown: &CancellationToken,
) -> Option<tokio::net::TcpStream> {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            r = listener.accept() => match r {
                Ok((stream, _)) => return Some(stream),
                Err(e) => {
                    tracing::warn!(error = %e, "OTLP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// How long a refused client is told to wait.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Why a request was not accepted.
#[derive(Debug)]
pub enum Refusal {
    /// Over the in-flight budget: retry later.
    Busy,
    /// The store failed: retry later.
    Store(String),
}

/// What differs between traces, metrics and logs: the request and response
/// messages, how a request becomes rows, and the partial-success reply.
pub trait Signal: prost::Message + Default + serde::de::DeserializeOwned + Send + 'static {
    type Response: prost::Message + serde::Serialize + Send + 'static;
    /// For messages: "trace", "metrics", "logs".
    const NAME: &'static str;
    /// Rows to store, how many items were rejected, and why.
    fn convert(&self, agent_id: &str) -> (Batch, i64, String);
    /// The reply; it carries a partial success only if something was rejected.
    fn response(rejected: i64, message: String) -> Self::Response;
}

impl Signal for ExportTraceServiceRequest {
    type Response = ExportTraceServiceResponse;
    const NAME: &'static str = "trace";
    fn convert(&self, agent_id: &str) -> (Batch, i64, String) {
        let c = convert::spans(agent_id, self);
        let message = c.message();
        (Batch::Spans(c.rows), c.rejected, message)
    }
    fn response(rejected: i64, error_message: String) -> Self::Response {
        ExportTraceServiceResponse {
            partial_success: (rejected > 0).then_some(ExportTracePartialSuccess {
                rejected_spans: rejected,
                error_message,
            }),
        }
    }
}

impl Signal for ExportMetricsServiceRequest {
    type Response = ExportMetricsServiceResponse;
    const NAME: &'static str = "metrics";
    fn convert(&self, agent_id: &str) -> (Batch, i64, String) {
        let c = convert::metrics(agent_id, self);
        let message = c.message();
        (Batch::Metrics(c.rows), c.rejected, message)
    }
    fn response(rejected: i64, error_message: String) -> Self::Response {
        ExportMetricsServiceResponse {
            partial_success: (rejected > 0).then_some(ExportMetricsPartialSuccess {
                rejected_data_points: rejected,
                error_message,
            }),
        }
    }
}

impl Signal for ExportLogsServiceRequest {
    type Response = ExportLogsServiceResponse;
    const NAME: &'static str = "logs";
    fn convert(&self, agent_id: &str) -> (Batch, i64, String) {
        let c = convert::logs(agent_id, self);
        let message = c.message();
        (Batch::Logs(c.rows), c.rejected, message)
    }
    fn response(rejected: i64, error_message: String) -> Self::Response {
        ExportLogsServiceResponse {
            partial_success: (rejected > 0).then_some(ExportLogsPartialSuccess {
                rejected_log_records: rejected,
                error_message,
            }),
        }
    }
}

/// A share of the in-flight budget, held until the request is answered.
pub struct Admission(#[allow(dead_code)] OwnedSemaphorePermit);

#[derive(Clone)]
pub struct Receiver {
    agent_id: Arc<str>,
    telemetry: Telemetry,
    budget: Arc<Semaphore>,
    max_request_bytes: usize,
    max_connections: usize,
    header_timeout: Duration,
    body_timeout: Duration,
}

impl Receiver {
    pub fn new(agent_id: &str, telemetry: Telemetry, config: &OtlpConfig) -> Self {
        Receiver {
            agent_id: agent_id.into(),
            telemetry,
            budget: Arc::new(Semaphore::new(config.max_inflight_bytes)),
            max_request_bytes: config.max_request_bytes,
            max_connections: config.max_connections,
            header_timeout: config.header_timeout,
            body_timeout: config.body_timeout,
        }
    }

    /// Reserves `bytes` of the in-flight budget, or refuses.
    pub(crate) fn admit(&self, bytes: usize) -> Result<Admission, Refusal> {
        let n = bytes.clamp(1, self.max_request_bytes) as u32;
        self.budget
            .clone()
            .try_acquire_many_owned(n)
            .map(Admission)
            .map_err(|_| Refusal::Busy)
    }

    async fn store(&self, batch: Batch) -> Result<(), Refusal> {
        self.telemetry
            .insert_batch(batch)
            .await
            .map_err(|e| Refusal::Store(e.to_string()))
    }

    /// Converts and stores an admitted request; answers once it is committed.
    pub async fn accept<S: Signal>(
        &self,
        req: S,
        _admitted: impl Send,
    ) -> Result<S::Response, Refusal> {
        let (batch, rejected, message) = req.convert(&self.agent_id);
        drop(req);
        self.store(batch).await?;
        Ok(S::response(rejected, message))
    }
}

/// Why the OTLP listeners cannot be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error(
        "cannot listen on {addr} for {what}: {source} (set agent.otlp.{key}, or agent.otlp.enabled = false)"
    )]
    Listen {
        addr: String,
        what: &'static str,
        key: &'static str,
        source: std::io::Error,
    },
    #[error("{0}")]
    Nonblocking(std::io::Error),
}

/// Listeners bound at agent start (so a busy port fails the start).
pub struct Listeners {
    pub grpc: std::net::TcpListener,
    pub http: std::net::TcpListener,
}

impl Listeners {
    pub fn bind(config: &OtlpConfig) -> Result<Listeners, BindError> {
        let bind = |addr: &str, what: &'static str, key: &'static str| {
            let l = std::net::TcpListener::bind(addr).map_err(|source| BindError::Listen {
                addr: addr.to_string(),
                what,
                key,
                source,
            })?;
            l.set_nonblocking(true).map_err(BindError::Nonblocking)?;
            Ok::<_, BindError>(l)
        };
        Ok(Listeners {
            grpc: bind(&config.grpc_listen, "OTLP/gRPC", "grpc_listen")?,
            http: bind(&config.http_listen, "OTLP/HTTP", "http_listen")?,
        })
    }

    pub fn addrs(&self) -> (String, String) {
        let a =
            |l: &std::net::TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
        (a(&self.grpc), a(&self.http))
    }
}

/// Serves both endpoints until `shutdown` is cancelled.
pub async fn serve(receiver: Receiver, listeners: Listeners, shutdown: CancellationToken) {
    let grpc = match tokio::net::TcpListener::from_std(listeners.grpc) {
        Ok(l) => l,
        Err(e) => return tracing::error!(error = %e, "OTLP/gRPC listener unusable"),
    };
    let http = match tokio::net::TcpListener::from_std(listeners.http) {
        Ok(l) => l,
        Err(e) => return tracing::error!(error = %e, "OTLP/HTTP listener unusable"),
    };
    let (g, h) = tokio::join!(
        grpc::serve(receiver.clone(), grpc, shutdown.clone()),
        http::serve(receiver, http, shutdown),
    );
    if let Err(e) = g {
        tracing::error!(error = %e, "OTLP/gRPC server stopped");
    }
    if let Err(e) = h {
        tracing::error!(error = %e, "OTLP/HTTP server stopped");
    }
}
