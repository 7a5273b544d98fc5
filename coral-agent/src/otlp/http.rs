//! OTLP/HTTP: `POST /v1/traces`, `/v1/metrics`, `/v1/logs` with protobuf or
//! JSON bodies, optionally gzip-compressed. Replies use the request's
//! encoding; errors carry a `google.rpc.Status` body.

use super::{
    Admission, BodyClock, BodyError, ConnectionCap, RETRY_AFTER, Receiver, Refusal, Signal,
    read_body,
};
use axum::Router;
use axum::body::Bytes;
use axum::extract::Request;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use std::io::Read;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Copy, PartialEq)]
enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }
}

/// An error reply: HTTP status, gRPC code and message, sent in `enc` as a
/// `google.rpc.Status`.
struct HttpError {
    enc: Encoding,
    status: StatusCode,
    code: i32,
    message: String,
}

fn error(enc: Encoding, status: StatusCode, code: i32, message: String) -> HttpError {
    HttpError {
        enc,
        status,
        code,
        message,
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let body = match self.enc {
            Encoding::Json => serde_json::json!({ "code": self.code, "message": self.message })
                .to_string()
                .into_bytes(),
            Encoding::Protobuf => tonic_types::Status {
                code: self.code,
                message: self.message,
                details: Vec::new(),
            }
            .encode_to_vec(),
        };
        let mut resp = (
            self.status,
            [(header::CONTENT_TYPE, self.enc.content_type())],
            body,
        )
            .into_response();
        if matches!(
            self.status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(RETRY_AFTER.as_secs()),
            );
        }
        resp
    }
}

const INVALID_ARGUMENT: i32 = 3;
const RESOURCE_EXHAUSTED: i32 = 8;
const UNAVAILABLE: i32 = 14;

fn encoding(headers: &HeaderMap) -> Result<Encoding, HttpError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "application/x-protobuf" | "application/protobuf" => Ok(Encoding::Protobuf),
        "application/json" => Ok(Encoding::Json),
        _ => Err(error(
            Encoding::Json,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            INVALID_ARGUMENT,
            format!(
                "unsupported content-type '{ct}': send application/x-protobuf or application/json"
            ),
        )),
    }
}

/// The request body, gunzipped if needed, at most `max` bytes.
fn body(enc: Encoding, headers: &HeaderMap, raw: Bytes, max: usize) -> Result<Bytes, HttpError> {
    let ce = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    match ce.as_str() {
        "" | "identity" => Ok(raw),
        "gzip" => {
            let mut out = Vec::new();
            let mut dec = flate2::read::GzDecoder::new(&raw[..]).take(max as u64 + 1);
            if let Err(e) = dec.read_to_end(&mut out) {
                return Err(error(
                    enc,
                    StatusCode::BAD_REQUEST,
                    INVALID_ARGUMENT,
                    format!("malformed gzip body: {e}"),
                ));
            }
            if out.len() > max {
                return Err(error(
                    enc,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    RESOURCE_EXHAUSTED,
                    format!("request is larger than {max} bytes once decompressed"),
                ));
            }
            Ok(out.into())
        }
        other => Err(error(
            enc,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            INVALID_ARGUMENT,
            format!("unsupported content-encoding '{other}': send gzip or none"),
        )),
    }
}

fn decode<S: Signal>(enc: Encoding, bytes: &[u8]) -> Result<S, HttpError> {
    let result = match enc {
        Encoding::Protobuf => S::decode(bytes).map_err(|e| e.to_string()),
        Encoding::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
    };
    result.map_err(|e| {
        error(
            enc,
            StatusCode::BAD_REQUEST,
            INVALID_ARGUMENT,
            format!("malformed {} request: {e}", S::NAME),
        )
    })
}

fn refusal(enc: Encoding, r: Refusal) -> HttpError {
    match r {
        Refusal::Busy => error(
            enc,
            StatusCode::TOO_MANY_REQUESTS,
            RESOURCE_EXHAUSTED,
            "coral agent is over its OTLP in-flight budget; retry later".into(),
        ),
        Refusal::Store(e) => error(
            enc,
            StatusCode::SERVICE_UNAVAILABLE,
            UNAVAILABLE,
            format!("coral agent cannot store telemetry now: {e}"),
        ),
    }
}

fn reply<R: Message + serde::Serialize>(enc: Encoding, r: R) -> Response {
    let body = match enc {
        Encoding::Protobuf => r.encode_to_vec(),
        Encoding::Json => serde_json::to_vec(&r).unwrap_or_else(|_| b"{}".to_vec()),
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, enc.content_type())],
        body,
    )
        .into_response()
}

/// Admission on the declared size, then the body (at most
/// `max_request_bytes`), then content type and encoding checks.
async fn prepare(r: &Receiver, req: Request) -> Result<(Encoding, Bytes, Admission), Response> {
    let (parts, body) = req.into_parts();
    let headers = &parts.headers;
    let enc = encoding(headers).map_err(IntoResponse::into_response)?;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(r.max_request_bytes);
    if declared > r.max_request_bytes {
        return Err(too_large(enc, r.max_request_bytes).into_response());
    }
    let clock = BodyClock::start(r.body_timeout);
    let admitted = match r.admit(declared) {
        Ok(a) => a,
        Err(e) => {
            // Read (and drop) what the client is sending before answering:
            // closing with unread data resets the connection, and the
            // client saw a reset instead of the 429 (issue 16 item 13).
            drain(body, r.max_request_bytes, clock).await;
            return Err(refusal(enc, e).into_response());
        }
    };
    let raw = read_body(body, r.max_request_bytes, declared, clock)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge => too_large(enc, r.max_request_bytes).into_response(),
            BodyError::Slow => error(
                enc,
                StatusCode::REQUEST_TIMEOUT,
                UNAVAILABLE,
                "the request body arrived too slowly".into(),
            )
            .into_response(),
            BodyError::Read(e) => error(
                enc,
                StatusCode::BAD_REQUEST,
                INVALID_ARGUMENT,
                format!("cannot read the request body: {e}"),
            )
            .into_response(),
        })?;
    let bytes =
        self::body(enc, headers, raw, r.max_request_bytes).map_err(IntoResponse::into_response)?;
    Ok((enc, bytes, admitted))
}

/// Reads and drops a body, at most `max` bytes, on `clock` (draining a
/// refused request costs no memory).
async fn drain(mut body: axum::body::Body, max: usize, clock: BodyClock) {
    use http_body_util::BodyExt;
    let mut seen = 0usize;
    while seen <= max {
        match tokio::time::timeout_at(clock.deadline(seen), body.frame()).await {
            Ok(Some(Ok(f))) => seen += f.data_ref().map_or(0, |d| d.len()),
            _ => return,
        }
    }
}

fn too_large(enc: Encoding, max: usize) -> HttpError {
    error(
        enc,
        StatusCode::PAYLOAD_TOO_LARGE,
        RESOURCE_EXHAUSTED,
        format!("request is larger than {max} bytes"),
    )
}

/// `POST /v1/{traces,metrics,logs}`: one path for the three signals.
async fn export<S: Signal>(State(r): State<Receiver>, req: Request) -> Response {
    let (enc, bytes, admitted) = match prepare(&r, req).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    let req = match decode::<S>(enc, &bytes) {
        Ok(req) => req,
        Err(e) => return e.into_response(),
    };
    drop(bytes);
    match r.accept(req, admitted).await {
        Ok(resp) => reply(enc, resp),
        Err(e) => refusal(enc, e).into_response(),
    }
}

/// Serves OTLP/HTTP (HTTP/1.1) with its own accept loop: at most
/// `max_connections` connections, each request's headers within
/// `header_timeout` (also the keep-alive idle limit). Waits for open
/// connections to finish (at most `body_timeout`) after `shutdown`.
pub(super) async fn serve(
    r: Receiver,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let (max, header_timeout, body_timeout) = (r.max_connections, r.header_timeout, r.body_timeout);
    let app = Router::new()
        .route("/v1/traces", post(export::<ExportTraceServiceRequest>))
        .route("/v1/metrics", post(export::<ExportMetricsServiceRequest>))
        .route("/v1/logs", post(export::<ExportLogsServiceRequest>))
        .with_state(r);
    let cap = ConnectionCap::new(max, "OTLP/HTTP");
    while let Some(stream) = super::accept(&listener, &shutdown).await {
        let Some(permit) = cap.admit() else {
            drop(stream);
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout);
            let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    // Every connection holds a permit: once all are back, all are closed.
    let _ = tokio::time::timeout(body_timeout, cap.drained(max)).await;
    Ok(())
}
