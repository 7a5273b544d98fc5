//! OTLP/gRPC: the three collector services on one tonic server.

use super::{ConnectionCap, RETRY_AFTER, Receiver, Refusal, Signal};
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
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

const MAX_STREAMS_PER_CONNECTION: u32 = 16;
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

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

/// One accepted connection: holds its slot of the connection cap, and must
/// deliver the HTTP/2 preface (24 bytes) within `header_timeout`.
struct Conn {
    stream: tokio::net::TcpStream,
    _slot: tokio::sync::OwnedSemaphorePermit,
    preface: Option<(usize, Pin<Box<tokio::time::Sleep>>)>,
}

/// Length of the HTTP/2 client connection preface.
const PREFACE_LEN: usize = 24;

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let r = Pin::new(&mut this.stream).poll_read(cx, buf);
        if let Some((seen, deadline)) = &mut this.preface {
            *seen += buf.filled().len() - before;
            if *seen >= PREFACE_LEN {
                this.preface = None;
            } else if r.is_pending() && deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no HTTP/2 preface within agent.otlp.header_timeout",
                )));
            }
        }
        r
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Accepted connections within the cap; the rest are closed at once.
fn incoming(
    listener: tokio::net::TcpListener,
    cap: ConnectionCap,
    header_timeout: Duration,
    shutdown: CancellationToken,
) -> impl futures::Stream<Item = std::io::Result<Conn>> {
    futures::stream::unfold(listener, move |listener| {
        let (cap, shutdown) = (cap.clone(), shutdown.clone());
        async move {
            loop {
                let stream = super::accept(&listener, &shutdown).await?;
                let Some(slot) = cap.admit() else { continue };
                let _ = stream.set_nodelay(true);
                let conn = Conn {
                    stream,
                    _slot: slot,
                    preface: Some((0, Box::pin(tokio::time::sleep(header_timeout)))),
                };
                return Some((Ok(conn), listener));
            }
        }
    })
}

pub(super) async fn serve(
    r: Receiver,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let max = r.max_request_bytes;
    let cap = ConnectionCap::new(r.max_connections, "OTLP/gRPC");
    let incoming = incoming(listener, cap, r.header_timeout, shutdown.clone());
    tonic::transport::Server::builder()
        // At most this many requests per connection are open (and decoded)
        // at once; a client queues the rest before sending them. (A
        // concurrency limit in front of the service would instead let queued
        // streams fill the connection's flow-control window and deadlock.)
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        // A peer that stops answering pings (half-open) is closed.
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
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
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await
}
