//! Wire types and tarpc service traits for Coral.
//!
//! Everything that crosses a process boundary is defined here and only here:
//! the agent → colony control plane ([`services::ColonyLink`]), the CLI → daemon local
//! control services ([`services::ColonyControl`], [`services::AgentControl`]), the types
//! they carry, and the framing used on the local Unix sockets ([`local`]).

pub mod debug;
pub mod exit;
pub mod forward;
pub mod local;
pub mod read;
pub mod services;
pub mod span_tree;
pub mod spec;
pub mod types;

#[doc(hidden)]
pub mod reexport {
    pub use futures::StreamExt;
    pub use tarpc::server::{BaseChannel, Channel};
}

pub use read::*;
pub use spec::{ServiceKind, ServiceSpec, SpecError};
pub use types::*;

/// Milliseconds since the Unix epoch, the one timestamp unit on the wire.
pub fn now_ms() -> i64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
