//! The tools seam: how the model loop of `coral ask` (`crate::ask`) and the
//! built-in analyzer (`crate::analyze`) call tools, without either knowing
//! the other. The production source is the colony's MCP gateway
//! (`crate::mcp::McpTools`); [`file::FileTools`] reads canned outputs from a
//! file, [`replay::Replay`] answers from recorded calls (tests).

pub mod file;
pub mod replay;

pub use file::FileTools;
pub use replay::{Recorded, Recorder, Replay};

/// One tool the model may call (from the colony's MCP tool list).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    pub input_schema: serde_json::Value,
}
/// Where tool calls go. The real implementation is an MCP client of the colony.
pub trait Tools {
    fn list(&self) -> impl std::future::Future<Output = anyhow::Result<Vec<ToolSpec>>> + Send;
    /// Runs one tool; Ok(text) is the tool's (JSON) output, Err is a tool error to report to the model.
    fn call(
        &self,
        name: &str,
        args: serde_json::Value,
    ) -> impl std::future::Future<Output = anyhow::Result<String>> + Send;
}
