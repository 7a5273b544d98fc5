//! The OTLP receiver: OTLP/gRPC (default :4317) and OTLP/HTTP (default
//! :4318, `/v1/traces`, `/v1/metrics`, `/v1/logs`, protobuf or JSON, gzip),
//! so each agent is one more sink beside an app's existing exporters.
//!
//! Memory is bounded: a request is admitted only if its size fits in the
//! in-flight budget, else it is refused with 429 / RESOURCE_EXHAUSTED and a
//! retry hint. OTLP/HTTP admits on Content-Length before reading the body;
//! OTLP/gRPC (whose messages tonic decodes first) admits on the encoded size
//! and caps open HTTP/2 streams per connection, so a client queues excess
//! requests before sending them instead of the agent holding them decoded. An admitted request is answered only after its rows are
//! committed to DuckDB: what is accepted is stored, what is refused is
//! refused explicitly.

pub mod convert;
mod grpc;
mod http;

use crate::telemetry::{Batch, Telemetry};
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
}

impl Default for OtlpConfig {
    fn default() -> Self {
        OtlpConfig {
            enabled: true,
            grpc_listen: "127.0.0.1:4317".into(),
            http_listen: "127.0.0.1:4318".into(),
            max_request_bytes: 4 * 1024 * 1024,
            max_inflight_bytes: 64 * 1024 * 1024,
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
        Ok(())
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
}

impl Receiver {
    pub fn new(agent_id: &str, telemetry: Telemetry, config: &OtlpConfig) -> Self {
        Receiver {
            agent_id: agent_id.into(),
            telemetry,
            budget: Arc::new(Semaphore::new(config.max_inflight_bytes)),
            max_request_bytes: config.max_request_bytes,
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
        _admitted: Admission,
    ) -> Result<S::Response, Refusal> {
        let (batch, rejected, message) = req.convert(&self.agent_id);
        drop(req);
        self.store(batch).await?;
        Ok(S::response(rejected, message))
    }
}

/// Listeners bound at agent start (so a busy port fails the start).
pub struct Listeners {
    pub grpc: std::net::TcpListener,
    pub http: std::net::TcpListener,
}

impl Listeners {
    pub fn bind(config: &OtlpConfig) -> Result<Listeners, String> {
        let bind = |addr: &str, what: &str, key: &str| {
            let l = std::net::TcpListener::bind(addr).map_err(|e| {
                format!(
                    "cannot listen on {addr} for {what}: {e} (set agent.otlp.{key}, or agent.otlp.enabled = false)"
                )
            })?;
            l.set_nonblocking(true).map_err(|e| e.to_string())?;
            Ok::<_, String>(l)
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
