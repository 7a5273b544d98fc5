//! Health probes: a TCP connect, or an HTTP GET on the service's health path,
//! against the service's port on this host.

use coral_proto::ServiceSpec;
use std::time::{Duration, Instant};

/// What one probe found.
#[derive(Debug, Clone)]
pub struct ProbeResult {
    pub up: bool,
    pub latency: Duration,
    pub error: Option<String>,
}

/// Why a probe failed: the service's `last_error`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot build an HTTP client: {0}")]
    NoHttpClient(String),
    #[error("tcp connect: {0}")]
    Connect(String),
    #[error("tcp connect: no answer within {0:?}")]
    ConnectTimeout(Duration),
    #[error("GET {path}: HTTP {status}")]
    Status { path: String, status: u16 },
    #[error("GET {path}: no answer within {timeout:?}")]
    Timeout { path: String, timeout: Duration },
    #[error("GET {path}: connection refused")]
    Refused { path: String },
    #[error("GET {path}: {reason}")]
    Failed { path: String, reason: String },
}

pub struct Prober {
    /// `Err` when the client cannot be built: with TLS compiled in (the
    /// `coral` binary enables it for LLM providers), a host with no CA
    /// store cannot build one. Health probes then say so instead of the
    /// agent panicking.
    http: Result<reqwest::Client, ProbeError>,
    timeout: Duration,
}

impl Prober {
    pub fn new(timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(concat!("coral-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                tracing::warn!(error = %e, "HTTP health probes are off: cannot build an HTTP client (is the ca-certificates package installed?)");
                ProbeError::NoHttpClient(e.to_string())
            });
        Prober { http, timeout }
    }

    pub async fn probe(&self, spec: &ServiceSpec) -> ProbeResult {
        let start = Instant::now();
        let outcome = match &spec.health_path {
            Some(path) => self.http_get(spec.port, path).await,
            None => self.tcp_connect(spec.port).await,
        };
        let latency = start.elapsed();
        match outcome {
            Ok(()) => ProbeResult {
                up: true,
                latency,
                error: None,
            },
            Err(e) => ProbeResult {
                up: false,
                latency,
                error: Some(e.to_string()),
            },
        }
    }

    async fn tcp_connect(&self, port: u16) -> Result<(), ProbeError> {
        match tokio::time::timeout(
            self.timeout,
            tokio::net::TcpStream::connect(("127.0.0.1", port)),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(ProbeError::Connect(io_reason(&e))),
            Err(_) => Err(ProbeError::ConnectTimeout(self.timeout)),
        }
    }

    async fn http_get(&self, port: u16, path: &str) -> Result<(), ProbeError> {
        let url = format!("http://127.0.0.1:{port}{path}");
        let http = self.http.as_ref().map_err(Clone::clone)?;
        match http.get(&url).send().await {
            Ok(resp) if resp.status().as_u16() < 400 => Ok(()),
            Ok(resp) => Err(ProbeError::Status {
                path: path.to_string(),
                status: resp.status().as_u16(),
            }),
            Err(e) if e.is_timeout() => Err(ProbeError::Timeout {
                path: path.to_string(),
                timeout: self.timeout,
            }),
            Err(e) if e.is_connect() => Err(ProbeError::Refused {
                path: path.to_string(),
            }),
            Err(e) => Err(ProbeError::Failed {
                path: path.to_string(),
                reason: error_chain(&e),
            }),
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// `connection refused` rather than `Connection refused (os error 111)`.
fn io_reason(e: &std::io::Error) -> String {
    let s = e.to_string();
    let s = s.split(" (os error").next().unwrap_or(&s).to_string();
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().collect::<String>() + c.as_str(),
        None => s,
    }
}
