//! Service specs: `name:port[:health][:type]`, as typed on the command line.
//!
//! Parsing is shared by the CLI (to fail fast with exit code 64) and the agent
//! (which must never trust what a client sends it).

use serde::{Deserialize, Serialize};
use std::fmt;

/// Services one agent may watch: `coral connect` refuses more, and the
/// colony refuses a registration or heartbeat that reports more (issue 16:
/// the agent accepted the 1,001st, and the colony then refused it forever).
pub const MAX_SERVICES_PER_AGENT: usize = 1_000;

/// What kind of traffic a service speaks; later layers use it to decode the
/// traffic they observe. Probing: a health path means HTTP GET (http only),
/// none means TCP connect. gRPC health is probed by TCP connect: an HTTP/1.1
/// GET would not reach a gRPC server's health service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceKind {
    Http,
    Grpc,
    Tcp,
}

impl ServiceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceKind::Http => "http",
            ServiceKind::Grpc => "grpc",
            ServiceKind::Tcp => "tcp",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "http" => Some(ServiceKind::Http),
            "grpc" => Some(ServiceKind::Grpc),
            "tcp" => Some(ServiceKind::Tcp),
            _ => None,
        }
    }
}

impl fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A service the agent watches on its own host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub name: String,
    pub port: u16,
    /// HTTP path probed with GET; `None` means the probe is a TCP connect.
    pub health_path: Option<String>,
    pub kind: ServiceKind,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum SpecError {
    #[error(
        "invalid service spec '{spec}': {reason} (expected name:port[:health][:type], e.g. api:8080:/health)"
    )]
    Malformed { spec: String, reason: String },
    #[error("service '{0}' is given more than once")]
    Duplicate(String),
}

const MAX_NAME: usize = 63;
const MAX_HEALTH: usize = 256;

fn malformed(spec: &str, reason: impl Into<String>) -> SpecError {
    SpecError::Malformed {
        spec: spec.to_string(),
        reason: reason.into(),
    }
}

/// Checks a service name: 1-63 characters of `a-z A-Z 0-9 - _ .`, starting
/// with a letter or digit.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("service name is empty".into());
    }
    if name.len() > MAX_NAME {
        return Err(format!("service name is longer than {MAX_NAME} characters"));
    }
    let first = name.as_bytes()[0];
    if !first.is_ascii_alphanumeric() {
        return Err(format!(
            "service name '{name}' must start with a letter or digit"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "service name '{name}' contains '{}'; use letters, digits, '-', '_' or '.'",
            c.escape_default()
        ));
    }
    Ok(())
}

/// Checks a colony id: the same alphabet as service names.
pub fn validate_colony_id(id: &str) -> Result<(), String> {
    validate_name(id).map_err(|e| e.replace("service name", "colony id"))
}

fn parse_port(s: &str) -> Result<u16, String> {
    if s.is_empty() {
        return Err("port is empty".into());
    }
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("port '{s}' is not a number"));
    }
    match s.parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
        _ => Err(format!("port {s} is out of range 1-65535")),
    }
}

fn validate_health(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("health path '{path}' must start with '/'"));
    }
    if path.len() > MAX_HEALTH {
        return Err(format!(
            "health path is longer than {MAX_HEALTH} characters"
        ));
    }
    if path.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("health path contains whitespace or control characters".into());
    }
    Ok(())
}

impl ServiceSpec {
    /// Builds a spec from its parts (the `coral connect NAME --port N` form).
    pub fn new(
        name: &str,
        port: u32,
        health: Option<&str>,
        kind: Option<ServiceKind>,
    ) -> Result<Self, SpecError> {
        let shown = format!("{name}:{port}");
        validate_name(name).map_err(|r| malformed(&shown, r))?;
        let port = parse_port(&port.to_string()).map_err(|r| malformed(&shown, r))?;
        if let Some(h) = health {
            validate_health(h).map_err(|r| malformed(&shown, r))?;
        }
        let spec = ServiceSpec {
            name: name.to_string(),
            port,
            health_path: health.map(str::to_string),
            kind: kind.unwrap_or(ServiceKind::Http),
        };
        spec.check_probe().map_err(|r| malformed(&shown, r))?;
        Ok(spec)
    }

    /// Parses `name:port[:health][:type]`. The third field is a health path if
    /// it starts with `/`, otherwise a type (`http`, `grpc`, `tcp`).
    pub fn parse(spec: &str) -> Result<Self, SpecError> {
        let spec_text = spec;
        let parts: Vec<&str> = spec.split(':').collect();
        if parts.len() < 2 {
            return Err(malformed(spec, "missing ':port'"));
        }
        if parts.len() > 4 {
            return Err(malformed(spec, "too many ':' separated fields"));
        }
        validate_name(parts[0]).map_err(|r| malformed(spec, r))?;
        let port = parse_port(parts[1]).map_err(|r| malformed(spec, r))?;
        let mut health = None;
        let mut kind = None;
        for field in &parts[2..] {
            if field.starts_with('/') && health.is_none() && kind.is_none() {
                validate_health(field).map_err(|r| malformed(spec, r))?;
                health = Some(field.to_string());
            } else if let Some(k) = ServiceKind::parse(field) {
                if kind.is_some() {
                    return Err(malformed(spec, "the type is given twice"));
                }
                kind = Some(k);
            } else if field.is_empty() {
                return Err(malformed(spec, "empty field"));
            } else {
                return Err(malformed(
                    spec,
                    format!(
                        "'{field}' is neither a health path (/...) nor a type (http, grpc, tcp)"
                    ),
                ));
            }
        }
        let spec = ServiceSpec {
            name: parts[0].to_string(),
            port,
            health_path: health,
            kind: kind.unwrap_or(ServiceKind::Http),
        };
        spec.check_probe().map_err(|r| malformed(spec_text, r))?;
        Ok(spec)
    }

    /// A health path is an HTTP GET, which only an http service answers.
    fn check_probe(&self) -> Result<(), String> {
        if self.health_path.is_some() && self.kind != ServiceKind::Http {
            return Err(format!(
                "a health path is probed with HTTP GET, which a {} service does not answer; drop the path to probe with a TCP connect",
                self.kind
            ));
        }
        Ok(())
    }

    /// Parses several specs and rejects duplicate names among them.
    pub fn parse_all<S: AsRef<str>>(specs: &[S]) -> Result<Vec<Self>, SpecError> {
        let mut out: Vec<ServiceSpec> = Vec::with_capacity(specs.len());
        for s in specs {
            let spec = Self::parse(s.as_ref())?;
            if out.iter().any(|o| o.name == spec.name) {
                return Err(SpecError::Duplicate(spec.name));
            }
            out.push(spec);
        }
        Ok(out)
    }

    /// Re-checks a spec that arrived over a socket (a client may send anything).
    pub fn validate(&self) -> Result<(), SpecError> {
        let shown = format!("{}:{}", self.name, self.port);
        validate_name(&self.name).map_err(|r| malformed(&shown, r))?;
        if self.port == 0 {
            return Err(malformed(&shown, "port 0 is out of range 1-65535"));
        }
        if let Some(h) = &self.health_path {
            validate_health(h).map_err(|r| malformed(&shown, r))?;
        }
        self.check_probe().map_err(|r| malformed(&shown, r))
    }
}

impl fmt::Display for ServiceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, self.port)?;
        if let Some(h) = &self.health_path {
            write!(f, ":{h}")?;
        }
        write!(f, ":{}", self.kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_forms() {
        let s = ServiceSpec::parse("api:8080").unwrap();
        assert_eq!(
            (s.name.as_str(), s.port, s.health_path, s.kind),
            ("api", 8080, None, ServiceKind::Http)
        );
        let s = ServiceSpec::parse("api:8080:/health").unwrap();
        assert_eq!(s.health_path.as_deref(), Some("/health"));
        let s = ServiceSpec::parse("db:5432:tcp").unwrap();
        assert_eq!((s.health_path, s.kind), (None, ServiceKind::Tcp));
        let s = ServiceSpec::parse("rpc:9090:grpc").unwrap();
        assert_eq!(
            (s.health_path.as_deref(), s.kind),
            (None, ServiceKind::Grpc)
        );
        assert_eq!(s.to_string(), "rpc:9090:grpc");
        let s = ServiceSpec::parse("web:80:/healthz:http").unwrap();
        assert_eq!(s.to_string(), "web:80:/healthz:http");
    }

    #[test]
    fn rejects_bad_specs_with_a_reason() {
        let cases = [
            ("api:abc", "port 'abc' is not a number"),
            ("api:70000", "port 70000 is out of range"),
            ("api:0", "port 0 is out of range"),
            (":8080", "service name is empty"),
            ("api", "missing ':port'"),
            ("api:", "port is empty"),
            ("a b:80", "contains ' '"),
            ("-x:80", "must start with a letter or digit"),
            ("api:80:health", "neither a health path"),
            ("api:80:tcp:http", "type is given twice"),
            ("api:80:/h:tcp:x", "too many"),
            ("api:80:/h\tx", "whitespace"),
            (
                "rpc:9090:/healthz:grpc",
                "drop the path to probe with a TCP connect",
            ),
        ];
        for (spec, want) in cases {
            let err = ServiceSpec::parse(spec).unwrap_err().to_string();
            assert!(err.contains(want), "{spec}: {err}");
            assert!(!err.contains('\n'), "{spec}: error must be one line");
        }
    }

    #[test]
    fn rejects_duplicates() {
        let err = ServiceSpec::parse_all(&["api:80", "web:81", "api:82"]).unwrap_err();
        assert_eq!(err, SpecError::Duplicate("api".into()));
    }

    #[test]
    fn validate_catches_forged_specs() {
        let forged = ServiceSpec {
            name: "../etc".into(),
            port: 0,
            health_path: None,
            kind: ServiceKind::Tcp,
        };
        assert!(forged.validate().is_err());
    }
}
