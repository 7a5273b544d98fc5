//! The `coral` CLI and the colony daemon.

pub mod ask;
pub mod cli;
pub mod colony;
pub mod config;
