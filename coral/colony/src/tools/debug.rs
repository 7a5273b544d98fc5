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

use super::{ToolDef, ToolError};
use crate::Shared;
use crate::config::McpConfig;

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

#[derive(Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct ProbeArgs {
    pub service: String,
    /// Function names (at most 8): full (`main.handleCheckout`) or the last
    /// element.
    pub functions: Vec<String>,
    /// How long to collect, in seconds (default 5, at most 30).
    pub seconds: Option<u64>,
}

#[derive(Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct TraceArgs {
    pub service: String,
    /// The request path; a trailing `*` matches a prefix.
    pub path: String,
    /// Functions to probe (default: the service's own functions matching a
    /// word of the path).
    pub functions: Option<Vec<String>>,
    /// How long to follow, in seconds (default 5, at most 30).
    pub seconds: Option<u64>,
}

#[derive(Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct CallsArgs {
    pub service: String,
    /// How far back, e.g. "15m" (default 1h).
    pub since: Option<String>,
    /// Only this function: full name or its last element.
    pub function: Option<String>,
    /// Only this session.
    pub session: Option<String>,
    /// At most this many recent calls (default 20, max 1000).
    pub limit: Option<u32>,
}

/// Longest collection of one `coral_debug_probe`.
pub const MAX_PROBE_SECONDS: u64 = 30;

/// One function's figures over a probe window. Self time is the call's
/// duration minus the probed calls nested in it on the same goroutine (Go)
/// or thread: where the time is spent, not just waited through.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ProbeFigures {
    pub function: String,
    pub calls: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub max_ms: f64,
    pub total_ms: f64,
    pub self_mean_ms: f64,
    pub self_total_ms: f64,
}

/// Per function figures of `calls` (completed ones), by self time, largest
/// first.
pub fn probe_figures(calls: &[coral_proto::debug::DebugCall]) -> Vec<ProbeFigures> {
    use std::collections::BTreeMap;
    // (key, start, end, index) per completed call, by key then start, the
    // outer call first at equal starts.
    let mut spans: Vec<(u64, i64, i64, usize)> = calls
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            let d = c.duration_ns? as i64;
            let key = if c.goroutine != 0 {
                c.goroutine
            } else {
                u64::from(c.tid)
            };
            Some((key, c.start_unix_ns, c.start_unix_ns + d, i))
        })
        .collect();
    spans.sort_by_key(|&(k, start, end, _)| (k, start, std::cmp::Reverse(end)));
    let mut child_ns = vec![0i64; calls.len()];
    let mut open: Vec<(u64, i64, usize)> = Vec::new();
    for &(k, start, end, i) in &spans {
        while open
            .last()
            .is_some_and(|&(ok, oend, _)| ok != k || oend <= start)
        {
            open.pop();
        }
        if let Some(&(_, _, parent)) = open.last() {
            child_ns[parent] += end - start;
        }
        open.push((k, end, i));
    }
    let mut by: BTreeMap<&str, (Vec<f64>, f64)> = BTreeMap::new();
    for &(_, start, end, i) in &spans {
        let e = by.entry(calls[i].function.as_str()).or_default();
        e.0.push((end - start) as f64 / 1e6);
        e.1 += ((end - start) - child_ns[i]).max(0) as f64 / 1e6;
    }
    let round = |v: f64| (v * 1000.0).round() / 1000.0;
    let mut out: Vec<ProbeFigures> = by
        .into_iter()
        .map(|(f, (mut d, self_ms))| {
            d.sort_by(f64::total_cmp);
            let q = |p: f64| d[((d.len() - 1) as f64 * p).round() as usize];
            let total: f64 = d.iter().sum();
            ProbeFigures {
                function: f.to_string(),
                calls: d.len() as u64,
                mean_ms: round(total / d.len() as f64),
                p50_ms: round(q(0.5)),
                p95_ms: round(q(0.95)),
                max_ms: round(q(1.0)),
                total_ms: round(total),
                self_mean_ms: round(self_ms / d.len() as f64),
                self_total_ms: round(self_ms),
            }
        })
        .collect();
    out.sort_by(|a, b| {
        b.self_total_ms
            .total_cmp(&a.self_total_ms)
            .then(a.function.cmp(&b.function))
    });
    out
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
            name: "coral_debug_probe",
            title: "Probe functions for a few seconds",
            description: "Attaches live probes to up to 8 functions of a service's running process, collects for a few seconds (default 5, at most 30), detaches, and answers per function: calls, mean/p50/p95/max duration and self time (minus the probed calls nested in it). Use it when a route got slow and no span says which function.",
            schema: schema::<ProbeArgs>(),
            read_only: false,
        },
        ToolDef {
            name: "coral_debug_trace",
            title: "Requests on a path with their call trees",
            description: "Follows the requests on one path of a service for a few seconds (default 5, at most 30): each request (method, target, status, duration, from the eBPF HTTP capture) and, for a Go net/http server, the probed functions' calls on the goroutine that served it, as a call tree.",
            schema: schema::<TraceArgs>(),
            read_only: false,
        },
        ToolDef {
            name: "coral_debug_calls",
            title: "Stored calls of live probes",
            description: "Calls that live probes saw on a service, as the colony stores them (also after the session ended or the agent restarted): per function count and duration figures, and the latest calls.",
            schema: schema::<CallsArgs>(),
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
        DebugReply::Trace(t) => serde_json::to_value(t).unwrap_or(Value::Null),
        DebugReply::Requests(r) => serde_json::to_value(r).unwrap_or(Value::Null),
    })
}

/// Attach, collect, detach: a bounded look at some functions. The session's
/// own lifetime is the collection time plus 5 s, so the probes go even if
/// this colony dies mid-way.
async fn probe(
    shared: &Shared,
    a: ProbeArgs,
    caller: &coral_proto::ExecCaller,
) -> Result<Value, ToolError> {
    let seconds = a.seconds.unwrap_or(5);
    if !(1..=MAX_PROBE_SECONDS).contains(&seconds) {
        return Err(ToolError::Args(format!(
            "seconds must be 1 to {MAX_PROBE_SECONDS}"
        )));
    }
    let op = DebugOp::Attach(DebugAttachRequest {
        target: DebugTarget::Service(a.service.clone()),
        functions: a.functions,
        ttl_ms: (seconds + 5) * 1000,
        capture_args: false,
        stack: false,
    });
    let fail = |e: coral_proto::debug::DebugError| ToolError::Failed(e.to_string());
    let session = match shared
        .debug(a.service.clone(), op, caller.clone())
        .await
        .map_err(fail)?
    {
        DebugReply::Sessions(mut s) if !s.is_empty() => s.remove(0),
        _ => return Err(ToolError::Failed("the agent started no session".into())),
    };
    let started = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let detached = shared
        .debug(
            a.service.clone(),
            DebugOp::Detach(Some(session.id.clone())),
            caller.clone(),
        )
        .await;
    let collected_ms = started.elapsed().as_millis() as u64;
    let logs = shared
        .debug(
            a.service.clone(),
            DebugOp::Logs(DebugLogsRequest {
                session: Some(session.id.clone()),
                after_seq: 0,
                limit: 10_000,
            }),
            caller.clone(),
        )
        .await
        .map_err(fail)?;
    let DebugReply::Logs(logs) = logs else {
        return Err(ToolError::Failed("unexpected reply to logs".into()));
    };
    let ended = logs.sessions.iter().find(|s| s.id == session.id);
    Ok(json!({
        "service": a.service,
        "session": session.id,
        "collected_ms": collected_ms,
        "attach_points": session.attach_points,
        "functions": probe_figures(&logs.calls),
        "probes": ended.map(|s| &s.probes).unwrap_or(&session.probes),
        "dropped": ended.map_or(0, |s| s.dropped),
        "detached": match &detached {
            Ok(_) => json!(true),
            Err(e) => json!(format!("detach failed: {e} (the session expires by itself {} s after attach)", seconds + 5)),
        },
    }))
}

/// A bounded `coral debug trace`: start, follow, stop, read.
async fn trace(
    shared: &Shared,
    a: TraceArgs,
    caller: &coral_proto::ExecCaller,
) -> Result<Value, ToolError> {
    let seconds = a.seconds.unwrap_or(5);
    if !(1..=MAX_PROBE_SECONDS).contains(&seconds) {
        return Err(ToolError::Args(format!(
            "seconds must be 1 to {MAX_PROBE_SECONDS}"
        )));
    }
    let fail = |e: coral_proto::debug::DebugError| ToolError::Failed(e.to_string());
    let op = DebugOp::Trace(coral_proto::debug::DebugTraceRequest {
        path: a.path,
        functions: a.functions.unwrap_or_default(),
        ttl_ms: (seconds + 5) * 1000,
    });
    let DebugReply::Trace(t) = shared
        .debug(a.service.clone(), op, caller.clone())
        .await
        .map_err(fail)?
    else {
        return Err(ToolError::Failed("unexpected reply to trace".into()));
    };
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let stopped = shared
        .debug(
            a.service.clone(),
            DebugOp::Detach(Some(t.id.clone())),
            caller.clone(),
        )
        .await;
    // The last requests settle (their calls are read) before they count.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let DebugReply::Requests(r) = shared
        .debug(
            a.service.clone(),
            DebugOp::TraceRequests {
                trace: t.id.clone(),
                after_ns: 0,
            },
            caller.clone(),
        )
        .await
        .map_err(fail)?
    else {
        return Err(ToolError::Failed("unexpected reply to trace".into()));
    };
    let mut v = serde_json::to_value(&r).unwrap_or(Value::Null);
    v["detached"] = match stopped {
        Ok(_) => json!(true),
        Err(e) => json!(format!(
            "detach failed: {e} (the probes expire by themselves)"
        )),
    };
    Ok(v)
}

/// The colony's stored calls of a service (`read::probe_calls`).
async fn stored_calls(shared: &Shared, a: CallsArgs) -> Result<Value, ToolError> {
    let since = match a.since.as_deref().map(humantime::parse_duration) {
        None => Duration::from_secs(3600),
        Some(Ok(d)) => d,
        Some(Err(e)) => return Err(ToolError::Args(format!("since: {e}"))),
    };
    let q = crate::read::ProbeCallQuery {
        service: a.service,
        since_ms: (coral_proto::now_ms() - since.as_millis() as i64).max(0),
        function: a.function,
        session: a.session,
        limit: a.limit.unwrap_or(20),
    };
    let r = crate::read::probe_calls(shared, q)
        .await
        .map_err(|e| ToolError::Failed(e.to_string()))?;
    let mut v = serde_json::to_value(&r).unwrap_or(Value::Null);
    v["coverage"] = super::coverage_json(&r.coverage);
    Ok(v)
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
        "coral_debug_probe" => match parse::<ProbeArgs>(args) {
            Ok(a) => probe(shared, a, caller).await,
            Err(e) => Err(e),
        },
        "coral_debug_trace" => match parse::<TraceArgs>(args) {
            Ok(a) => trace(shared, a, caller).await,
            Err(e) => Err(e),
        },
        "coral_debug_calls" => match parse::<CallsArgs>(args) {
            Ok(a) => stored_calls(shared, a).await,
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

    const ACTIONS: &[&str] = &[
        "coral_debug_attach",
        "coral_debug_detach",
        "coral_debug_probe",
        "coral_debug_trace",
    ];

    #[test]
    fn action_tools_need_allow_debug() {
        let off = McpConfig::default();
        let on = McpConfig {
            allow_debug: true,
            ..McpConfig::default()
        };
        let names: Vec<_> = catalog().iter().map(|t| t.name).collect();
        assert_eq!(names.len(), 7);
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

#[cfg(test)]
mod figures {
    use super::*;
    use coral_proto::debug::DebugCall;

    fn call(f: &str, g: u64, start_ms: i64, ms: u64) -> DebugCall {
        DebugCall {
            seq: 0,
            session: "dbg-1".into(),
            function: f.into(),
            tid: 1,
            goroutine: g,
            start_unix_ns: start_ms * 1_000_000,
            duration_ns: Some(ms * 1_000_000),
            args: Vec::new(),
            results: Vec::new(),
            stack: Vec::new(),
        }
    }

    #[test]
    fn self_time_subtracts_nested_calls_on_the_same_goroutine() {
        // Issue 12: the handler waits through lookup; lookup is where the
        // time is spent. Another goroutine's overlapping call is not nested.
        let calls = vec![
            call("main.handle", 1, 0, 100),
            call("main.lookup", 1, 5, 90),
            call("main.handle", 2, 10, 12),
            call("main.lookup", 3, 0, 2),
        ];
        let f = probe_figures(&calls);
        assert_eq!(f[0].function, "main.lookup");
        assert_eq!(f[0].calls, 2);
        assert_eq!(f[0].self_total_ms, 92.0);
        assert_eq!(f[1].function, "main.handle");
        assert_eq!(f[1].self_total_ms, 10.0 + 12.0);
        assert_eq!(f[1].max_ms, 100.0);
    }
}
