//! OTLP/gRPC: the three collector services on one tonic server.

use super::{Admission, BodyClock, ConnectionCap, RETRY_AFTER, Receiver, Refusal, Signal};
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
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::codec::CompressionEncoding;
use tonic::codegen::Service;
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

/// The one export path behind the three services. The request was admitted
/// by [`Admit`] before tonic decoded it.
async fn export<S: Signal>(r: &Receiver, req: Request<S>) -> Result<Response<S::Response>, Status> {
    let admitted = req.extensions().get::<Admitted>().cloned();
    let req = req.into_inner();
    let admitted = match admitted {
        Some(a) => a,
        None => Admitted(Arc::new(r.admit(req.encoded_len()).map_err(refused)?)),
    };
    r.accept(req, admitted)
        .await
        .map(Response::new)
        .map_err(refused)
}

/// A request's share of the in-flight budget, from [`Admit`] to [`export`].
#[derive(Clone)]
struct Admitted(#[allow(dead_code)] Arc<Admission>);

/// Length of a gRPC message's frame header: compressed flag, u32 length.
const FRAME_HEADER: usize = 5;

/// Reserves a request's share of the in-flight budget from its gRPC frame
/// header, before tonic buffers or decodes anything (tonic allocates the
/// declared length as soon as it reads the header), then reads the body on
/// the [`BodyClock`]. Issue 16: admitting after decoding let 16 connections
/// × 16 streams of 4 MB take the agent to 1.24 GB.
#[derive(Clone)]
struct Admit<S> {
    inner: S,
    r: Receiver,
}

impl<S> Service<http::Request<Body>> for Admit<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let r = self.r.clone();
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            match receive(&r, body).await {
                Ok((bytes, admission)) => {
                    parts.extensions.insert(Admitted(Arc::new(admission)));
                    let body = Body::new(http_body_util::Full::new(bytes));
                    let mut resp = inner.call(http::Request::from_parts(parts, body)).await?;
                    client_error_is_invalid_argument(&mut resp);
                    Ok(resp)
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

/// Reads a unary request's one message: admitted on its declared length
/// once the frame header is in, at most `max_request_bytes`, on the clock.
async fn receive(r: &Receiver, mut body: Body) -> Result<(bytes::Bytes, Admission), Status> {
    use http_body_util::BodyExt;
    let mut clock = BodyClock::start(r.body_timeout);
    let mut buf: Vec<u8> = Vec::new();
    let mut admitted: Option<(Admission, usize)> = None;
    loop {
        let frame = tokio::time::timeout_at(clock.deadline(buf.len()), body.frame())
            .await
            .map_err(|_| Status::deadline_exceeded("the request arrived too slowly"))?;
        let Some(frame) = frame else { break };
        let frame =
            frame.map_err(|e| Status::cancelled(format!("cannot read the request: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        if admitted.is_none() && buf.len() >= FRAME_HEADER {
            let compressed = buf[0];
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if compressed > 1 {
                return Err(Status::invalid_argument(format!(
                    "malformed gRPC frame: compression flag {compressed}"
                )));
            }
            if len > r.max_request_bytes {
                return Err(too_large(r.max_request_bytes));
            }
            // A compressed message may inflate up to the request limit.
            let charge = if compressed == 1 {
                r.max_request_bytes
            } else {
                FRAME_HEADER + len
            };
            let admission = r.admit(charge).map_err(refused)?;
            // The rest is on the clock from now (streams of one connection
            // share its flow-control window, so a burst slows each).
            clock = BodyClock::start(r.body_timeout);
            buf.reserve_exact((FRAME_HEADER + len).saturating_sub(buf.len()));
            admitted = Some((admission, FRAME_HEADER + len));
        }
        if let Some((_, total)) = &admitted
            && buf.len() > *total
        {
            return Err(Status::invalid_argument(
                "malformed request: more than one message in a unary call",
            ));
        }
    }
    let admission = match admitted {
        Some((a, _)) => a,
        // Too short to hold a message: tonic says what is wrong with it.
        None => r.admit(buf.len()).map_err(refused)?,
    };
    Ok((buf.into(), admission))
}

/// tonic answers a message it cannot decode (malformed protobuf, a corrupt
/// gzip stream) with INTERNAL; our handlers never return INTERNAL, so on
/// these services it always means the client's bytes were bad: the OTLP
/// specification's INVALID_ARGUMENT (not retryable). Issue 16 item 9.
fn client_error_is_invalid_argument(resp: &mut http::Response<Body>) {
    const INTERNAL: &str = "13";
    let headers = resp.headers_mut();
    if headers.get("grpc-status").is_some_and(|v| v == INTERNAL) {
        headers.insert(
            "grpc-status",
            http::HeaderValue::from(Code::InvalidArgument as i32),
        );
    }
}

/// An oversize message: not retryable (RESOURCE_EXHAUSTED without RetryInfo,
/// per the OTLP specification).
fn too_large(max: usize) -> Status {
    Status::resource_exhausted(format!("request is larger than {max} bytes"))
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
struct AcceptedConn {
    stream: tokio::net::TcpStream,
    _slot: tokio::sync::OwnedSemaphorePermit,
    preface: Option<(usize, Pin<Box<tokio::time::Sleep>>)>,
}

/// Length of the HTTP/2 client connection preface.
const PREFACE_LEN: usize = 24;

impl Connected for AcceptedConn {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for AcceptedConn {
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

impl AsyncWrite for AcceptedConn {
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
) -> impl futures::Stream<Item = std::io::Result<AcceptedConn>> {
    futures::stream::unfold(listener, move |listener| {
        let (cap, shutdown) = (cap.clone(), shutdown.clone());
        async move {
            loop {
                let stream = super::accept(&listener, &shutdown).await?;
                let Some(slot) = cap.admit() else { continue };
                let _ = stream.set_nodelay(true);
                let conn = AcceptedConn {
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
    let admit = {
        let r = r.clone();
        tower_layer::layer_fn(move |inner| Admit {
            inner,
            r: r.clone(),
        })
    };
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
        .layer(admit)
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
