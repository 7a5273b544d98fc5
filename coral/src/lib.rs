//! The `coral` binary's library: the CLI, `coral ask` and its analyzer, and
//! the MCP client. The colony daemon is the `coral-colony` crate.

pub mod analyze;
pub mod ask;
pub mod cli;
pub mod config;
#[cfg(feature = "daemons")]
pub mod discovery;
pub mod mcp;
pub mod tools;
