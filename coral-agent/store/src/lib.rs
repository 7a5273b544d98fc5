//! Coral's stores, shared by the agent (its recent window) and the colony
//! (the aggregate): the DuckDB telemetry store, SQLite state files with
//! versioned migrations, and the two encodings both sides must agree on in
//! stored calls (latency histograms, normalised routes).

pub mod hist;
pub mod route;
pub mod sqlite;
#[cfg(feature = "telemetry")]
pub mod telemetry;

use std::path::PathBuf;

/// `$XDG_STATE_HOME`, or `~/.local/state`.
pub fn state_home() -> PathBuf {
    match std::env::var_os("XDG_STATE_HOME") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/lib/coral"))
            .join(".local/state"),
    }
}
