//! A tools source read from a JSON file: tool specs and canned outputs.
//!
//! A test and development aid (`coral ask --tools-file FILE`, hidden, or
//! `CORAL_ASK_TOOLS_FILE`): it lets the real CLI run the model loop against a
//! fake provider without a colony. The format:
//!
//! ```json
//! { "tools": [
//!     { "name": "coral_services", "description": "…", "input_schema": {"type": "object"},
//!       "output": {"services": []} },
//!     { "name": "coral_logs", "description": "…", "input_schema": {"type": "object"},
//!       "error": "the colony is not reachable" } ],
//!   "log": "/tmp/calls.jsonl" }
//! ```
//!
//! `output` is returned as the tool's text (a JSON string as is, any other
//! value serialised); `error` makes the call fail with that message. With
//! `log`, every call is appended to that file as one JSON line
//! `{"name", "args"}`.

use super::{ToolSpec, Tools};
use anyhow::{Context as _, anyhow};
use serde::Deserialize;
use serde_json::Value;
use std::io::Write as _;
use std::path::{Path, PathBuf};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    tools: Vec<FileTool>,
    log: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTool {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default = "empty_object_schema")]
    input_schema: Value,
    output: Option<Value>,
    error: Option<String>,
}

fn empty_object_schema() -> Value {
    serde_json::json!({"type": "object", "properties": {}})
}

/// Tools served from a JSON file (see the module docs).
#[derive(Debug)]
pub struct FileTools {
    tools: Vec<FileTool>,
    log: Option<PathBuf>,
}

impl FileTools {
    pub fn load(path: &Path) -> anyhow::Result<FileTools> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read tools file {}", path.display()))?;
        let f: FileFormat = serde_json::from_str(&text)
            .map_err(|e| anyhow!("tools file {}: {e}", path.display()))?;
        Ok(FileTools {
            tools: f.tools,
            log: f.log,
        })
    }
}

impl Tools for FileTools {
    async fn list(&self) -> anyhow::Result<Vec<ToolSpec>> {
        Ok(self
            .tools
            .iter()
            .map(|t| ToolSpec {
                name: t.name.clone(),
                description: t.description.clone(),
                input_schema: t.input_schema.clone(),
            })
            .collect())
    }

    async fn call(&self, name: &str, args: Value) -> anyhow::Result<String> {
        if let Some(log) = &self.log {
            let line = serde_json::json!({"name": name, "args": args}).to_string() + "\n";
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .and_then(|mut f| f.write_all(line.as_bytes()))
                .with_context(|| format!("cannot append to {}", log.display()))?;
        }
        let tool = self
            .tools
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| anyhow!("no tool named {name}"))?;
        if let Some(e) = &tool.error {
            return Err(anyhow!("{e}"));
        }
        Ok(match &tool.output {
            Some(Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
            None => "null".into(),
        })
    }
}
