//! The `coral` CLI and the colony daemon.

pub mod analyze;
pub mod cli;
pub mod colony;
pub mod config;
pub mod mcp;
pub mod discovery;
