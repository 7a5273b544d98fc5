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

pub struct Prober {
    /// `Err` when the client cannot be built: with TLS compiled in (the
    /// `coral` binary enables it for LLM providers), a host with no CA
    /// store cannot build one. Health probes then say so instead of the
    /// agent panicking.
    http: Result<reqwest::Client, String>,
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
                format!("cannot build an HTTP client: {e}")
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
                error: Some(e),
            },
        }
    }

    async fn tcp_connect(&self, port: u16) -> Result<(), String> {
        match tokio::time::timeout(
            self.timeout,
            tokio::net::TcpStream::connect(("127.0.0.1", port)),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("tcp connect: {}", io_reason(&e))),
            Err(_) => Err(format!("tcp connect: no answer within {:?}", self.timeout)),
        }
    }

    async fn http_get(&self, port: u16, path: &str) -> Result<(), String> {
        let url = format!("http://127.0.0.1:{port}{path}");
        let http = self.http.as_ref().map_err(Clone::clone)?;
        match http.get(&url).send().await {
            Ok(resp) if resp.status().as_u16() < 400 => Ok(()),
            Ok(resp) => Err(format!("GET {path}: HTTP {}", resp.status().as_u16())),
            Err(e) if e.is_timeout() => {
                Err(format!("GET {path}: no answer within {:?}", self.timeout))
            }
            Err(e) if e.is_connect() => Err(format!("GET {path}: connection refused")),
            Err(e) => Err(format!("GET {path}: {}", error_chain(&e))),
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
