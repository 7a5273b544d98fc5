//! Recorded tool calls: [`Recorder`] records the calls made through a tools
//! source, [`Replay`] answers from such a record, so the analyzer's
//! reasoning is tested without processes (issue 15).

use super::{ToolSpec, Tools};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::sync::Mutex;

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

impl<T: Tools + Sync> Tools for Recorder<'_, T> {
    async fn list(&self) -> anyhow::Result<Vec<ToolSpec>> {
        self.inner.list().await
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
    async fn list(&self) -> anyhow::Result<Vec<ToolSpec>> {
        Ok(self
            .names
            .iter()
            .map(|n| ToolSpec {
                name: n.clone(),
                description: String::new(),
                input_schema: json!({"type": "object"}),
            })
            .collect())
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
