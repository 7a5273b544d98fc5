// coral/src/ask/tools.rs
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
