//! The analyzer's tools behind a trait: the colony's MCP tools in
//! production, recorded tool output in tests (issue 15), so the analyzer's
//! reasoning is tested without processes.

use crate::mcp::McpTools;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::future::Future;
use std::sync::Mutex;

/// What the analyzer calls: the names of the tools on offer and one call
/// (its JSON text answer).
pub trait Tools {
    fn names(&self) -> impl Future<Output = anyhow::Result<Vec<String>>>;
    fn call(&self, name: &str, args: Value) -> impl Future<Output = anyhow::Result<String>>;
}

impl Tools for McpTools {
    async fn names(&self) -> anyhow::Result<Vec<String>> {
        Ok(self.list().await?.into_iter().map(|t| t.name).collect())
    }
    async fn call(&self, name: &str, args: Value) -> anyhow::Result<String> {
        McpTools::call(self, name, args).await
    }
}

/// One recorded tool call.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Recorded {
    pub tool: String,
    pub args: Value,
    /// The answer's text, or the error's.
    pub output: Result<String, String>,
}

/// Records the calls made through `inner`.
pub struct Recorder<'a, T: Tools> {
    pub inner: &'a T,
    pub calls: Mutex<Vec<Recorded>>,
}

impl<T: Tools> Tools for Recorder<'_, T> {
    async fn names(&self) -> anyhow::Result<Vec<String>> {
        self.inner.names().await
    }
    async fn call(&self, name: &str, args: Value) -> anyhow::Result<String> {
        let out = self.inner.call(name, args.clone()).await;
        self.calls.lock().expect("recorder lock").push(Recorded {
            tool: name.to_string(),
            args,
            output: out.as_ref().map(String::clone).map_err(|e| e.to_string()),
        });
        out
    }
}

/// Answers each call with the recorded output of the same tool and
/// arguments.
pub struct Replay {
    pub names: Vec<String>,
    pub calls: Vec<Recorded>,
}

impl Tools for Replay {
    async fn names(&self) -> anyhow::Result<Vec<String>> {
        Ok(self.names.clone())
    }
    async fn call(&self, name: &str, args: Value) -> anyhow::Result<String> {
        let hit = self
            .calls
            .iter()
            .find(|c| c.tool == name && c.args == args)
            .ok_or_else(|| anyhow::anyhow!("no recorded answer for {name} {args}"))?;
        hit.output.clone().map_err(|e| anyhow::anyhow!(e))
    }
}
