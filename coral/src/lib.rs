//! The `coral` CLI and the colony daemon.

pub mod analyze;
pub mod analyze_probe;
pub mod ask;
pub mod cli;
pub mod colony;
pub mod config;
pub mod discovery;
pub mod mcp;
