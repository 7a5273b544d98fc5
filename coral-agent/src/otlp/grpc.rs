//! OTLP/gRPC: the three collector services on one tonic server.

use super::{RETRY_AFTER, Receiver, Refusal, Signal};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

const MAX_STREAMS_PER_CONNECTION: u32 = 16;

fn refused(r: Refusal) -> Status {
    match r {
        Refusal::Busy => Status::with_error_details(
            Code::ResourceExhausted,
            "coral agent is over its OTLP in-flight budget; retry later",
            ErrorDetails::with_retry_info(Some(RETRY_AFTER)),
        ),
        Refusal::Store(e) => Status::with_error_details(
            Code::Unavailable,
            format!("coral agent cannot store telemetry now: {e}"),
            ErrorDetails::with_retry_info(Some(RETRY_AFTER)),
        ),
    }
}

/// The one export path behind the three services.
async fn export<S: Signal>(r: &Receiver, req: Request<S>) -> Result<Response<S::Response>, Status> {
    let req = req.into_inner();
    let admitted = r.admit(req.encoded_len()).map_err(refused)?;
    r.accept(req, admitted)
        .await
        .map(Response::new)
        .map_err(refused)
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        export(self, req).await
    }
}

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        req: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        export(self, req).await
    }
}

#[tonic::async_trait]
impl LogsService for Receiver {
    async fn export(
        &self,
        req: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        export(self, req).await
    }
}

pub(super) async fn serve(
    r: Receiver,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let max = r.max_request_bytes;
    tonic::transport::Server::builder()
        // At most this many requests per connection are open (and decoded)
        // at once; a client queues the rest before sending them. (A
        // concurrency limit in front of the service would instead let queued
        // streams fill the connection's flow-control window and deadlock.)
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .add_service(
            TraceServiceServer::new(r.clone())
                .accept_compressed(CompressionEncoding::Gzip)
                .max_decoding_message_size(max),
        )
        .add_service(
            MetricsServiceServer::new(r.clone())
                .accept_compressed(CompressionEncoding::Gzip)
                .max_decoding_message_size(max),
        )
        .add_service(
            LogsServiceServer::new(r)
                .accept_compressed(CompressionEncoding::Gzip)
                .max_decoding_message_size(max),
        )
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            shutdown.cancelled_owned(),
        )
        .await
}
