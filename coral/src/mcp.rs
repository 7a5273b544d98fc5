//! The client side of the colony's MCP gateway: `coral ask`, the built-in
//! analyzer and `coral mcp call` reach the colony's tools through this, the
//! same way any MCP client does.

use anyhow::{Context, anyhow};
use rmcp::model::CallToolRequestParams;
use rmcp::service::RunningService;
use rmcp::{RoleClient, ServiceExt};
use serde_json::Value;
use std::path::PathBuf;

/// The colony's MCP socket for this user: beside its control socket.
pub fn socket_path() -> anyhow::Result<PathBuf> {
    Ok(coral_proto::local::mcp_socket_beside(
        &coral_proto::local::colony_socket()?,
    ))
}

/// One tool as the colony lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ToolInfo {
    pub name: String,
    pub description: String,
    pub input_schema: Value,
    pub read_only: bool,
}

/// A connected MCP session with the colony.
pub struct McpTools {
    client: RunningService<RoleClient, ()>,
}

impl McpTools {
    /// Connects to the colony's MCP socket; the error says how to start a colony.
    pub async fn connect() -> anyhow::Result<McpTools> {
        Self::connect_at(&socket_path()?).await
    }

    /// Connects to the MCP socket at `path`.
    pub async fn connect_at(path: &std::path::Path) -> anyhow::Result<McpTools> {
        let stream = tokio::net::UnixStream::connect(path).await.map_err(|e| {
            coral_proto::exit::Unavailable(format!(
                "cannot reach the colony's MCP gateway at {}: {e} (is 'coral colony start' running?)",
                path.display()
            ))
        })?;
        let client = ().serve(stream).await.context("MCP initialisation with the colony failed")?;
        Ok(McpTools { client })
    }

    pub async fn list(&self) -> anyhow::Result<Vec<ToolInfo>> {
        let tools = self
            .client
            .list_all_tools()
            .await
            .context("listing the colony's tools failed")?;
        Ok(tools
            .into_iter()
            .map(|t| ToolInfo {
                read_only: t
                    .annotations
                    .as_ref()
                    .and_then(|a| a.read_only_hint)
                    .unwrap_or(false),
                name: t.name.to_string(),
                description: t.description.map(|d| d.to_string()).unwrap_or_default(),
                input_schema: Value::Object((*t.input_schema).clone()),
            })
            .collect())
    }

    /// Calls one tool; `Ok` is its text output, `Err` a tool or transport error.
    pub async fn call(&self, name: &str, args: Value) -> anyhow::Result<String> {
        let mut params = CallToolRequestParams::new(name.to_string());
        match args {
            Value::Object(m) => params = params.with_arguments(m),
            Value::Null => {}
            other => return Err(anyhow!("tool arguments must be a JSON object, not {other}")),
        }
        let result = self
            .client
            .call_tool(params)
            .await
            .map_err(|e| anyhow!("tool {name}: {e}"))?;
        let text: String = result
            .content
            .iter()
            .filter_map(|c| c.as_text().map(|t| t.text.as_str()))
            .collect::<Vec<_>>()
            .join("\n");
        if result.is_error == Some(true) {
            return Err(anyhow!("{text}"));
        }
        Ok(text)
    }

    /// Calls a tool and parses its JSON output.
    pub async fn call_json(&self, name: &str, args: Value) -> anyhow::Result<Value> {
        let text = self.call(name, args).await?;
        serde_json::from_str(&text).with_context(|| format!("tool {name} returned invalid JSON"))
    }
}

impl crate::tools::Tools for McpTools {
    async fn list(&self) -> anyhow::Result<Vec<crate::tools::ToolSpec>> {
        Ok(McpTools::list(self)
            .await?
            .into_iter()
            .map(|t| crate::tools::ToolSpec {
                name: t.name,
                description: t.description,
                input_schema: t.input_schema,
            })
            .collect())
    }

    async fn call(&self, name: &str, args: Value) -> anyhow::Result<String> {
        McpTools::call(self, name, args).await
    }
}
