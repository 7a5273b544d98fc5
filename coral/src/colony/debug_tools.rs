//! MCP tools for live debugging (issue 12): thin adapters over
//! [`Shared::debug`], the same path as `coral debug`. They are listed and
//! run only with `[colony.mcp] allow_debug` (attach and detach act on a
//! running process; the default tool list stays read-only).

use std::time::Duration;

use coral_proto::debug::{
    DebugAttachRequest, DebugLogsRequest, DebugOp, DebugReply, DebugTarget, MAX_DEBUG_TTL_MS,
};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

use super::Shared;
use super::config::McpConfig;
use super::tools::{ToolDef, ToolError};

#[derive(Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct AttachArgs {
    /// The service whose process to probe.
    pub service: String,
    /// Function names: full (`main.handleCheckout`) or the last element.
    pub functions: Vec<String>,
    /// How long the probes stay, e.g. "30s" (default 60s, at most 10m).
    pub duration: Option<String>,
    /// Capture argument and result values (they can hold secrets).
    pub capture_args: Option<bool>,
    /// Capture each call's stack (up to 32 frames).
    pub stack: Option<bool>,
}

#[derive(Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct LogsArgs {
    pub service: String,
    /// One session (default: all of the service's).
    pub session: Option<String>,
    /// At most this many calls (default 100, max 1000).
    pub limit: Option<u32>,
}

#[derive(Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct DetachArgs {
    pub service: String,
    /// One session (default: every session on the service).
    pub session: Option<String>,
}

#[derive(Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct FunctionsArgs {
    pub service: String,
    /// Only names containing this text.
    pub pattern: Option<String>,
    /// At most this many (default 100, max 1000).
    pub limit: Option<u32>,
}

fn schema<T: JsonSchema>() -> Value {
    serde_json::to_value(schemars::schema_for!(T)).unwrap_or_else(|_| json!({"type": "object"}))
}

/// Whether `name` is listed under `cfg` (every non-debug tool is).
pub fn listed(cfg: &McpConfig, name: &str) -> bool {
    cfg.allow_debug || !name.starts_with("coral_debug_")
}

/// The debug tools, all of them; `listed` filters them out unless
/// `allow_debug`.
pub fn catalog() -> Vec<ToolDef> {
    vec![
        ToolDef {
            name: "coral_debug_functions",
            title: "Functions that can be probed",
            description: "The functions of a service's binary that live probes can attach to (Go, C, C++, Rust on x86_64), with their arguments when the binary has DWARF.",
            schema: schema::<FunctionsArgs>(),
            read_only: true,
        },
        ToolDef {
            name: "coral_debug_attach",
            title: "Attach live probes",
            description: "Attaches eBPF uprobes to functions of a service's running process for a bounded time (default 60s): every call's duration, goroutine/thread and, with capture_args, argument and result values. The probes are removed at the end of the duration or on detach.",
            schema: schema::<AttachArgs>(),
            read_only: false,
        },
        ToolDef {
            name: "coral_debug_logs",
            title: "Calls seen by live probes",
            description: "The calls the probes of a service's debug sessions saw, oldest first: function, start time, duration, arguments and results; and the sessions (hits, state, time left).",
            schema: schema::<LogsArgs>(),
            read_only: true,
        },
        ToolDef {
            name: "coral_debug_detach",
            title: "Detach live probes",
            description: "Ends a debug session (or every session on the service) now; its probes are removed from the kernel.",
            schema: schema::<DetachArgs>(),
            read_only: false,
        },
    ]
}

fn parse<T: for<'de> Deserialize<'de>>(args: Value) -> Result<T, ToolError> {
    let args = if args.is_null() { json!({}) } else { args };
    serde_json::from_value(args).map_err(|e| ToolError::Args(e.to_string()))
}

async fn run(
    shared: &Shared,
    service: String,
    op: DebugOp,
    caller: &coral_proto::ExecCaller,
) -> Result<Value, ToolError> {
    let reply = shared
        .debug(service, op, caller.clone())
        .await
        .map_err(|e| ToolError::Failed(e.to_string()))?;
    Ok(match reply {
        DebugReply::Sessions(s) => json!({ "sessions": s }),
        DebugReply::Logs(l) => json!({ "sessions": l.sessions, "calls": l.calls }),
        DebugReply::Functions(f) => serde_json::to_value(f).unwrap_or(Value::Null),
    })
}

/// Runs a debug tool; `None` if `name` is not one.
pub(crate) async fn call(
    shared: &Shared,
    name: &str,
    args: Value,
    caller: &coral_proto::ExecCaller,
) -> Option<Result<Value, ToolError>> {
    if !name.starts_with("coral_debug_") {
        return None;
    }
    if !listed(&shared.config.mcp, name) {
        return Some(Err(ToolError::Unknown(name.to_string())));
    }
    Some(match name {
        "coral_debug_functions" => match parse::<FunctionsArgs>(args) {
            Ok(a) => {
                let op = DebugOp::Functions {
                    pattern: a.pattern.unwrap_or_default(),
                    limit: a.limit.unwrap_or(100).min(1000),
                };
                run(shared, a.service, op, caller).await
            }
            Err(e) => Err(e),
        },
        "coral_debug_attach" => match parse::<AttachArgs>(args) {
            Ok(a) => {
                let ttl = match a.duration.as_deref().map(humantime::parse_duration) {
                    None => Ok(Duration::ZERO),
                    Some(Ok(d)) => Ok(d),
                    Some(Err(e)) => Err(ToolError::Args(format!("duration: {e}"))),
                };
                match ttl {
                    Ok(ttl) => {
                        let op = DebugOp::Attach(DebugAttachRequest {
                            target: DebugTarget::Service(a.service.clone()),
                            functions: a.functions,
                            ttl_ms: (ttl.as_millis() as u64).min(MAX_DEBUG_TTL_MS),
                            capture_args: a.capture_args.unwrap_or(false),
                            stack: a.stack.unwrap_or(false),
                        });
                        run(shared, a.service, op, caller).await
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        },
        "coral_debug_logs" => match parse::<LogsArgs>(args) {
            Ok(a) => {
                let op = DebugOp::Logs(DebugLogsRequest {
                    session: a.session,
                    after_seq: 0,
                    limit: a.limit.unwrap_or(100).min(1000),
                });
                run(shared, a.service, op, caller).await
            }
            Err(e) => Err(e),
        },
        "coral_debug_detach" => match parse::<DetachArgs>(args) {
            Ok(a) => run(shared, a.service, DebugOp::Detach(a.session), caller).await,
            Err(e) => Err(e),
        },
        other => Err(ToolError::Unknown(other.to_string())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACTIONS: &[&str] = &["coral_debug_attach", "coral_debug_detach"];

    #[test]
    fn action_tools_need_allow_debug() {
        let off = McpConfig::default();
        let on = McpConfig {
            allow_debug: true,
            ..McpConfig::default()
        };
        let names: Vec<_> = catalog().iter().map(|t| t.name).collect();
        assert_eq!(names.len(), 4);
        assert!(!listed(&off, "coral_debug_logs"));
        assert!(!listed(&off, "coral_debug_attach"));
        assert!(!listed(&off, "coral_debug_detach"));
        assert!(listed(&on, "coral_debug_attach"));
        assert!(listed(&on, "coral_debug_logs"));
        assert!(listed(&off, "coral_services"));
        for t in catalog() {
            assert_eq!(t.read_only, !ACTIONS.contains(&t.name), "{}", t.name);
        }
    }
}
