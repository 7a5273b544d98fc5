//! The `coral` CLI and the colony daemon.

pub mod cli;
pub mod colony;
pub mod config;
pub mod discovery;
