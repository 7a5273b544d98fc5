//! The colony's diagnostic tools: the same small set serves MCP clients,
//! `coral ask` (whose LLM calls them over MCP) and the built-in analyzer.
//!
//! Each tool takes JSON arguments (typed below, with JSON schemas generated
//! from the types) and returns compact JSON, capped at [`MAX_OUTPUT`] bytes.
//! The tools compute nothing themselves: each is an adapter over one
//! question of the read layer (`read.rs`), and every answer carries the
//! read layer's coverage (what the colony could not see).

pub mod debug;

use crate::Shared;
use crate::read;
use coral_proto::{LogQuery, RedFigures, RedRow, Source, SourceRed, TraceQuery, Window};
use coral_store::telemetry::TelemetryError;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;

/// Most bytes of JSON one tool call returns.
pub const MAX_OUTPUT: usize = 32 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("unknown tool '{0}'")]
    Unknown(String),
    #[error("invalid arguments: {0}")]
    Args(String),
    #[error("{0}")]
    Failed(String),
}

impl From<TelemetryError> for ToolError {
    fn from(e: TelemetryError) -> Self {
        ToolError::Failed(e.to_string())
    }
}

impl From<coral_proto::QueryError> for ToolError {
    fn from(e: coral_proto::QueryError) -> Self {
        ToolError::Failed(e.to_string())
    }
}

/// One tool's description for `tools/list`.
pub struct ToolDef {
    pub name: &'static str,
    pub title: &'static str,
    pub description: &'static str,
    pub schema: Value,
    pub read_only: bool,
}

fn schema<T: JsonSchema>() -> Value {
    serde_json::to_value(schemars::schema_for!(T)).unwrap_or_else(|_| json!({"type": "object"}))
}

/// A window length like `15m`, `1h`, `90s`.
fn window(s: &Option<String>, default: Duration) -> Result<Duration, ToolError> {
    match s {
        None => Ok(default),
        Some(s) => {
            let d = humantime::parse_duration(s.trim())
                .map_err(|e| ToolError::Args(format!("'{s}' is not a duration like 15m: {e}")))?;
            if d < Duration::from_secs(1) || d > Duration::from_secs(30 * 24 * 3600) {
                return Err(ToolError::Args(format!("'{s}' must be between 1s and 30d")));
            }
            Ok(d)
        }
    }
}

#[derive(Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct NoArgs {}

#[derive(Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct RedArgs {
    /// Only this service (default: all).
    pub service: Option<String>,
    /// The recent window, e.g. "5m" (default 5m).
    pub window: Option<String>,
    /// The baseline: this long before the recent window, e.g. "1h" (default 1h).
    pub baseline: Option<String>,
}

#[derive(Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct MapArgs {
    /// How far back to look, e.g. "15m" (default 15m).
    pub since: Option<String>,
}

#[derive(Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct TracesArgs {
    /// Only traces that touch this service.
    pub service: Option<String>,
    /// How far back, e.g. "15m" (default 15m).
    pub since: Option<String>,
    /// Only traces at least this long, in milliseconds.
    pub min_duration_ms: Option<u64>,
    /// At most this many traces (default 20, max 100).
    pub limit: Option<u32>,
}

#[derive(Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct TraceArgs {
    /// The trace id: 32 hex digits.
    pub trace_id: String,
}

#[derive(Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct LogsArgs {
    pub service: Option<String>,
    /// How far back, e.g. "15m" (default 15m).
    pub since: Option<String>,
    /// Only records whose body contains this text (case-insensitive).
    pub contains: Option<String>,
    pub trace_id: Option<String>,
    /// At most this many records (default 50, max 200).
    pub limit: Option<u32>,
}

#[derive(Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct HotspotArgs {
    /// The service whose requests to break down.
    pub service: String,
    /// The recent window, e.g. "5m" (default 5m).
    pub window: Option<String>,
    /// The baseline before it, e.g. "1h" (default 1h).
    pub baseline: Option<String>,
}

#[derive(Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct BreakdownArgs {
    /// Drill into one service: every dimension of its spans (instance,
    /// node, version, status, exception, message, route, peer, resend).
    pub service: Option<String>,
    /// The recent window, e.g. "5m" (default 5m).
    pub window: Option<String>,
    /// The baseline before it, e.g. "1h" (default 1h).
    pub baseline: Option<String>,
}

#[derive(Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct ChangesArgs {
    /// How far back, e.g. "1h" (default 1h).
    pub since: Option<String>,
}

/// The tools, in the order `tools/list` shows them; `coral_agent_exec`
/// only when the colony's config allows it.
pub fn catalog(allow_exec: bool) -> Vec<ToolDef> {
    let mut list = vec![
        ToolDef {
            name: "coral_services",
            title: "Services and health",
            description: "Agents and the services connected to them: health (up/down), since when, probe latency, last error.",
            schema: schema::<NoArgs>(),
            read_only: true,
        },
        ToolDef {
            name: "coral_red_metrics",
            title: "RED metrics against a baseline",
            description: "Per service, and per route under it: request rate, error % (5xx; 4xx apart), p50/p95/p99 latency in a recent window, the same in a baseline before it, the change, and since when it moved. From eBPF (every connected service, no code change) and OTLP server spans, side by side; `sources` says which. Start here.",
            schema: schema::<RedArgs>(),
            read_only: true,
        },
        ToolDef {
            name: "coral_service_map",
            title: "Service map",
            description: "Who calls whom: edges between services, databases and external peers. eBPF edges carry connections, failed connects and RTT (any protocol); OTLP edges carry calls, errors and mean latency. A service whose callee moved too is a symptom.",
            schema: schema::<MapArgs>(),
            read_only: true,
        },
        ToolDef {
            name: "coral_hotspots",
            title: "Where a service's time goes",
            description: "Where one service's request time goes, recent vs baseline: its routes (eBPF or OTLP; count, mean, p95, share of time, since when slow) and, with traces, the operations under its requests (its own spans and downstream calls, queries with their statements).",
            schema: schema::<HotspotArgs>(),
            read_only: true,
        },
        ToolDef {
            name: "coral_breakdown",
            title: "What moved, along every dimension",
            description: "Window against baseline ([recent, baseline] pairs), from traces, metrics and eBPF. Without `service`: the operations that moved most (service, span kind, name, peer, statement; calls and own time per request, errors they originated), metrics whose level moved, eBPF connection edges (connects, failed connects, RTT), problem log messages (WARN and worse) grouped by template (ids and numbers replaced by `?`; count per window, one example; new or grown first: a new error message often names the mechanism when spans do not), and the node of each service's requests. The cause is the deepest operation whose own time or originated errors grew (a caller that only waits on it is a symptom); more calls per request at the same cost per call means the caller changed (N+1, retries, fallback); a new operation on a shared database points at the new workload. Then call again with `service` to see which instance, node, version, status code, exception, route or retry count carries the change, and read its metrics and log messages.",
            schema: schema::<BreakdownArgs>(),
            read_only: true,
        },
        ToolDef {
            name: "coral_traces",
            title: "Search traces",
            description: "Recent traces, newest first, optionally for one service and above a duration.",
            schema: schema::<TracesArgs>(),
            read_only: true,
        },
        ToolDef {
            name: "coral_trace",
            title: "One trace",
            description: "Every span of one trace with offsets and durations; spans on the critical path are marked.",
            schema: schema::<TraceArgs>(),
            read_only: true,
        },
        ToolDef {
            name: "coral_logs",
            title: "Logs",
            description: "Recent log records, newest first, filtered by service, text or trace.",
            schema: schema::<LogsArgs>(),
            read_only: true,
        },
        ToolDef {
            name: "coral_changes",
            title: "What changed",
            description: "What changed in a window: agents joined, restarted or left; services added; health changes (up/down) with errors.",
            schema: schema::<ChangesArgs>(),
            read_only: true,
        },
    ];
    list.extend(debug::catalog()); // issue 12; gated in mcp_gateway.rs by debug::listed
    if allow_exec {
        list.push(ToolDef {
            name: "coral_agent_exec",
            title: "Run a diagnostic command",
            description: "Runs one command (e.g. `ss -tnp`, `ps aux`, `psql -c 'EXPLAIN ...'`) on the host of a service, without a shell, under that host's exec policy; returns its exit code and output. Denied commands say which rule decided.",
            schema: schema::<ExecArgs>(),
            read_only: false,
        });
    }
    list
}

#[derive(Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct ExecArgs {
    /// The service whose host runs the command.
    pub service: String,
    /// The command line, split with shell quoting rules (no shell runs it).
    pub command: String,
    /// At most this long, e.g. "10s" (the policy may allow less).
    pub timeout: Option<String>,
    /// The agent (name or id), when several host the service.
    pub agent: Option<String>,
}

/// Most output bytes of each stream `coral_agent_exec` returns.
const EXEC_OUTPUT: usize = 16 * 1024;

fn parse<T: for<'de> Deserialize<'de>>(args: Value) -> Result<T, ToolError> {
    let args = if args.is_null() { json!({}) } else { args };
    serde_json::from_value(args).map_err(|e| ToolError::Args(e.to_string()))
}

/// Runs one tool.
pub(crate) async fn call(
    shared: &Shared,
    name: &str,
    args: Value,
    caller: &coral_proto::ExecCaller,
) -> Result<Value, ToolError> {
    let now_us = coral_proto::now_ms() * 1000;
    if let Some(r) = debug::call(shared, name, args.clone(), caller).await {
        return r;
    }
    match name {
        "coral_agent_exec" if shared.config.mcp.allow_exec => {
            exec(shared, parse(args)?, caller.clone()).await
        }
        "coral_services" => {
            parse::<NoArgs>(args)?;
            let mut v = services(shared)?;
            v["coverage"] = coverage_json(&read::coverage(shared).await);
            Ok(v)
        }
        "coral_red_metrics" => red(shared, parse(args)?, now_us).await,
        "coral_service_map" => service_map(shared, parse(args)?, now_us).await,
        "coral_hotspots" => hotspots(shared, parse(args)?, now_us).await,
        "coral_breakdown" => breakdown(shared, parse(args)?, now_us).await,
        "coral_traces" => traces(shared, parse(args)?, now_us).await,
        "coral_trace" => trace(shared, parse(args)?).await,
        "coral_logs" => logs(shared, parse(args)?, now_us).await,
        "coral_changes" => changes(shared, parse(args)?, now_us).await,
        other => Err(ToolError::Unknown(other.to_string())),
    }
}

/// Serialises `v` within [`MAX_OUTPUT`] bytes, always as valid JSON: drops
/// the tail of its largest top-level array, then halves its longest
/// strings (on a character boundary), saying so in `"truncated"`.
pub fn capped(mut v: Value) -> String {
    let mut text = v.to_string();
    while text.len() > MAX_OUTPUT {
        let Some(obj) = v.as_object_mut() else { break };
        obj.insert("truncated".into(), json!(true));
        let biggest = obj
            .iter()
            .filter_map(|(k, x)| x.as_array().map(|a| (k.clone(), a.len())))
            .max_by_key(|(_, n)| *n)
            .filter(|(_, n)| *n > 1);
        if let Some((key, n)) = biggest {
            if let Some(a) = obj.get_mut(&key).and_then(Value::as_array_mut) {
                a.truncate(n * 3 / 4);
            }
        } else if !halve_longest_string(&mut v) {
            break;
        }
        text = v.to_string();
    }
    if text.len() > MAX_OUTPUT {
        return json!({"error": "the answer was too large to return", "truncated": true})
            .to_string();
    }
    text
}

/// Cuts the longest string in `v` to half (at a character boundary, with a
/// marker); false when no string is long enough to be worth cutting.
fn halve_longest_string(v: &mut Value) -> bool {
    fn longest(v: &mut Value) -> Option<&mut String> {
        match v {
            Value::String(s) => Some(s),
            Value::Array(a) => a.iter_mut().filter_map(longest).max_by_key(|s| s.len()),
            Value::Object(o) => o.values_mut().filter_map(longest).max_by_key(|s| s.len()),
            _ => None,
        }
    }
    match longest(v) {
        Some(s) if s.len() >= 64 => {
            let mut at = s.len() / 2;
            while !s.is_char_boundary(at) {
                at -= 1;
            }
            let cut = s.len() - at;
            s.truncate(at);
            s.push_str(&format!("…[{cut} bytes cut]"));
            true
        }
        _ => false,
    }
}

fn ms(us: f64) -> f64 {
    (us / 1000.0 * 100.0).round() / 100.0
}

fn ago_s(now_ms: i64, ts_ms: i64) -> i64 {
    (now_ms - ts_ms).max(0) / 1000
}

pub(crate) fn coverage_json(c: &coral_proto::Coverage) -> Value {
    json!({
        "complete": c.complete,
        "missing": c.gaps(),
        "agents": c.agents.iter().map(|a| json!({
            "agent": a.agent, "state": a.state, "rows_behind": a.rows_behind,
        })).collect::<Vec<_>>(),
    })
}

fn services(shared: &Shared) -> Result<Value, ToolError> {
    let now = coral_proto::now_ms();
    let agents = shared
        .agents()
        .map_err(|e| ToolError::Failed(e.to_string()))?;
    let agents: Vec<Value> = agents
        .iter()
        .map(|a| {
            json!({
                "agent": a.name,
                "host": a.hostname,
                "state": format!("{:?}", a.state).to_lowercase(),
                "last_seen_s_ago": (now - a.last_seen_ms) / 1000,
                "services": a.services.iter().map(|s| json!({
                    "name": s.spec.name,
                    "port": s.spec.port,
                    "type": s.spec.kind.as_str(),
                    "health": s.health.as_str(),
                    "since_s_ago": s.since_ms.map(|t| (now - t) / 1000),
                    "probe_ms": s.latency_us.map(|u| ms(u as f64)),
                    "last_error": s.last_error,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(json!({ "agents": agents }))
}

fn figures_json(f: &RedFigures) -> Value {
    let mut v = json!({
        "requests": f.count,
        "rps": f.rps,
        "errors": f.errors,
        "error_pct": f.error_pct,
        "client_errors": f.client_errors,
        "p50_ms": ms(f.p50_us as f64),
        "p95_ms": ms(f.p95_us as f64),
        "p99_ms": ms(f.p99_us as f64),
        "mean_ms": ms(f.sum_us.checked_div(f.count).unwrap_or(0) as f64),
    });
    if !f.error_codes.is_empty() {
        // gRPC status codes, SQLSTATEs, Redis error codes (issue 14).
        v["error_codes"] = json!(f.error_codes);
    }
    v
}

fn ratio(x: f64, y: f64) -> Option<f64> {
    (y > 0.0).then(|| (x / y * 100.0).round() / 100.0)
}

/// One source's window, baseline, change and onset.
fn side_json(s: &SourceRed, now_ms: i64) -> Value {
    let b = s.baseline.clone().unwrap_or_default();
    json!({
        "recent": figures_json(&s.recent),
        "baseline": figures_json(&b),
        "change": {
            "p50_ratio": ratio(s.recent.p50_us as f64, b.p50_us as f64),
            "p95_ratio": ratio(s.recent.p95_us as f64, b.p95_us as f64),
            "error_pct_delta": ((s.recent.error_pct - b.error_pct) * 100.0).round() / 100.0,
            "rps_ratio": ratio(s.recent.rps, b.rps),
        },
        "moved_s_ago": s.onset_ms.map(|t| ago_s(now_ms, t)),
    })
}

/// A RED row: its primary source's figures at the top level (what a
/// reader compares), the other source beside them.
fn red_row_json(r: &RedRow, now_ms: i64) -> Value {
    let Some((source, main)) = r.primary() else {
        return json!({});
    };
    let mut v = side_json(main, now_ms);
    v["service"] = json!(r.service);
    if let Some(route) = &r.route {
        v["route"] = json!(format!("{} {route}", r.method.as_deref().unwrap_or("")).trim());
    }
    v["sources"] = json!(r.sources.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    v["source"] = json!(source.as_str());
    if let (Source::Ebpf, Some(o)) = (source, &r.otlp) {
        v["otlp"] = side_json(o, now_ms);
    }
    if let (Some(user), Some(name)) = (&r.db_user, &r.db_name) {
        // A PostgreSQL statement: who ran it, on which database.
        v["db_user"] = json!(user);
        v["db_name"] = json!(name);
    }
    v
}

/// How much a row moved: the larger of its p95 ratio and its error rise.
fn movement(r: &RedRow) -> f64 {
    r.primary().map_or(0.0, |(_, s)| {
        let b = s.baseline.clone().unwrap_or_default();
        let lat = ratio(s.recent.p95_us as f64, b.p95_us as f64).unwrap_or(0.0);
        lat.max(1.0 + (s.recent.error_pct - b.error_pct) / 10.0)
    })
}

/// Routes shown per service: the ones that moved most.
const ROUTES_PER_SERVICE: usize = 8;

fn window_of(a: &Option<String>, b: &Option<String>, now_ms: i64) -> Result<Window, ToolError> {
    let win = window(a, Duration::from_secs(300))?;
    let base = window(b, Duration::from_secs(3600))?;
    Ok(Window::last(
        win.as_millis() as i64,
        base.as_millis() as i64,
        now_ms,
    ))
}

fn human(ms: i64) -> String {
    humantime::format_duration(Duration::from_millis(ms.max(0) as u64)).to_string()
}

async fn red(shared: &Shared, a: RedArgs, now_us: i64) -> Result<Value, ToolError> {
    let now = now_us / 1000;
    let w = window_of(&a.window, &a.baseline, now)?;
    let report = read::red(
        shared,
        coral_proto::RedQuery {
            service: a.service.clone(),
            window: w,
        },
    )
    .await?;
    if report.services.is_empty()
        && let Some(s) = &a.service
    {
        return Err(ToolError::Failed(format!(
            "no requests recorded for service '{s}' in the last {}{}",
            human(w.until_ms - w.baseline_since_ms()),
            report
                .coverage
                .gaps()
                .map(|g| format!(" (not seen: {g})"))
                .unwrap_or_default()
        )));
    }
    let services: Vec<Value> = report
        .services
        .iter()
        .map(|s| {
            let mut routes: Vec<&RedRow> = report
                .routes
                .iter()
                .filter(|r| r.service == s.service)
                .collect();
            routes.sort_by(|a, b| {
                movement(b)
                    .partial_cmp(&movement(a))
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
            let more = routes.len().saturating_sub(ROUTES_PER_SERVICE);
            let mut v = red_row_json(s, now);
            v["routes"] = json!(
                routes
                    .iter()
                    .take(ROUTES_PER_SERVICE)
                    .map(|r| red_row_json(r, now))
                    .collect::<Vec<_>>()
            );
            if more > 0 {
                v["more_routes"] = json!(more);
            }
            v
        })
        .collect();
    Ok(json!({
        "window": human(w.until_ms - w.since_ms),
        "baseline": human(w.baseline_ms),
        "window_start_ms": w.since_ms,
        "services": services,
        "coverage": coverage_json(&report.coverage),
    }))
}

async fn service_map(shared: &Shared, a: MapArgs, now_us: i64) -> Result<Value, ToolError> {
    let since = window(&a.since, Duration::from_secs(900))?;
    let w = Window::last(since.as_millis() as i64, 0, now_us / 1000);
    let map = read::service_map(shared, coral_proto::MapQuery { window: w }).await?;
    let edges: Vec<Value> = map
        .edges
        .iter()
        .map(|e| {
            let mut v = json!({
                "from": e.from, "to": e.to,
                "sources": e.sources.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
            });
            if e.sources.contains(&Source::Ebpf) {
                v["addr"] = json!(e.to_addr);
                v["connections"] = json!(e.connections);
                v["failed_connects"] = json!(e.failures);
                v["rtt_ms"] = json!(ms(e.rtt_avg_us as f64));
                if let Some(p) = &e.protocol {
                    // Requests on the edge, parsed on the server side.
                    v["protocol"] = json!(p);
                    v["requests"] = json!(e.requests);
                    v["request_errors"] = json!(e.request_errors);
                    v["request_mean_ms"] = json!(ms(e.request_mean_us as f64));
                }
            }
            if e.sources.contains(&Source::Otlp) {
                v["calls"] = json!(e.calls);
                v["errors"] = json!(e.errors);
                v["mean_ms"] = json!(ms(e.mean_us as f64));
            }
            v
        })
        .collect();
    Ok(json!({
        "since": humantime::format_duration(since).to_string(),
        "edges": edges,
        "coverage": coverage_json(&map.coverage),
    }))
}

async fn hotspots(shared: &Shared, a: HotspotArgs, now_us: i64) -> Result<Value, ToolError> {
    let now = now_us / 1000;
    let w = window_of(&a.window, &a.baseline, now)?;
    let h = read::hotspots(
        shared,
        coral_proto::HotspotQuery {
            service: a.service.clone(),
            window: w,
        },
    )
    .await?;
    let ops: Vec<Value> = h
        .operations
        .iter()
        .map(|o| {
            json!({
                "source": o.source.as_str(),
                "service": o.service,
                "operation": o.name,
                "kind": o.kind,
                "peer": o.peer,
                "statement": o.statement,
                "db_name": o.db_name,
                "db_user": o.db_user,
                "count": o.count,
                "per_request": o.per_request,
                "errors": o.errors,
                "mean_ms": ms(o.mean_us as f64),
                "p95_ms": ms(o.p95_us as f64),
                "share_pct": o.share_pct,
                "baseline_count": o.baseline_count,
                "baseline_mean_ms": o.baseline_mean_us.map(|u| ms(u as f64)),
                "baseline_p95_ms": o.baseline_p95_us.map(|u| ms(u as f64)),
                "slow_since_s_ago": o.onset_ms.map(|t| ago_s(now, t)),
            })
        })
        .collect();
    Ok(json!({
        "service": h.service,
        "source": h.source.map(Source::as_str),
        "window": human(w.until_ms - w.since_ms),
        "requests": h.requests,
        "mean_request_ms": ms(h.mean_request_us as f64),
        "baseline_requests": h.baseline_requests,
        "baseline_mean_request_ms": h.baseline_mean_request_us.map(|u| ms(u as f64)),
        "operations": ops,
        "slow_threshold_ms": h.slow_threshold_us.map(|u| ms(u as f64)),
        "slow_since_s_ago": h.slow_since_ms.map(|t| ago_s(now, t)),
        "coverage": coverage_json(&h.coverage),
    }))
}

/// Rounds to 2 decimals.
fn r2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn tally_json(r: &coral_proto::SpanTally, b: &coral_proto::SpanTally, per: (f64, f64)) -> Value {
    let mean =
        |t: &coral_proto::SpanTally| (t.count > 0).then(|| ms(t.sum_us as f64 / t.count as f64));
    let self_mean =
        |t: &coral_proto::SpanTally| (t.count > 0).then(|| ms(t.self_us as f64 / t.count as f64));
    json!({
        "calls": [r.count, b.count],
        "calls_per_request": [r2(r.count as f64 / per.0), r2(b.count as f64 / per.1)],
        "errors": [r.errors, b.errors],
        "own_errors": [r.own_errors, b.own_errors],
        "self_ms_per_request": [ms(r.self_us as f64 / per.0), ms(b.self_us as f64 / per.1)],
        "mean_ms": [mean(r), mean(b)],
        "self_mean_ms": [self_mean(r), self_mean(b)],
    })
}

/// How much an operation moved, in ms of own time per request (an
/// originated error counts as 100 ms).
fn op_moved(o: &coral_proto::OpChange, per: (f64, f64)) -> f64 {
    let own = |t: &coral_proto::SpanTally, n: f64| t.self_us as f64 / 1000.0 / n;
    let err = |t: &coral_proto::SpanTally, n: f64| t.own_errors as f64 / n * 100.0;
    (own(&o.recent, per.0) - own(&o.baseline, per.1)).abs()
        + (err(&o.recent, per.0) - err(&o.baseline, per.1)).abs()
}

/// Operations shown without `service`.
const BREAKDOWN_OPS: usize = 40;
/// Log message templates shown without `service`.
const BREAKDOWN_LOGS: usize = 20;

async fn breakdown(shared: &Shared, a: BreakdownArgs, now_us: i64) -> Result<Value, ToolError> {
    let w = window_of(&a.window, &a.baseline, now_us / 1000)?;
    let b = read::breakdown(
        shared,
        coral_proto::BreakdownQuery {
            window: w,
            service: a.service.clone(),
        },
    )
    .await?;
    let per = (b.requests.max(1) as f64, b.baseline_requests.max(1) as f64);
    let mine = |s: &str| a.service.as_deref().is_none_or(|x| x == s);
    let mut ops: Vec<&coral_proto::OpChange> =
        b.operations.iter().filter(|o| mine(&o.service)).collect();
    ops.sort_by(|x, y| op_moved(y, per).total_cmp(&op_moved(x, per)));
    if a.service.is_none() {
        ops.truncate(BREAKDOWN_OPS);
    }
    let operations: Vec<Value> = ops
        .iter()
        .map(|o| {
            let mut v = tally_json(&o.recent, &o.baseline, per);
            v["service"] = json!(o.service);
            v["kind"] = json!(o.kind);
            v["name"] = json!(o.name);
            if let Some(p) = &o.peer {
                v["peer"] = json!(p);
            }
            if let Some(d) = &o.db_name {
                v["db"] = json!(d);
            }
            if let Some(st) = &o.statement {
                v["statement"] = json!(st.chars().take(300).collect::<String>());
            }
            v
        })
        .collect();
    // Facets: with a service, all of its dimensions; without, the node of
    // each service's requests (a bad node shows across services).
    let facets: Vec<Value> = b
        .facets
        .iter()
        .filter(|f| a.service.as_ref().is_none_or(|s| &f.service == s))
        .map(|f| {
            let mut v = tally_json(&f.recent, &f.baseline, per);
            v["service"] = json!(f.service);
            v["kind"] = json!(f.kind);
            v["dimension"] = json!(f.dimension);
            v["value"] = json!(f.value.chars().take(200).collect::<String>());
            v
        })
        .collect();
    let metrics: Vec<Value> = b
        .metrics
        .iter()
        .filter(|m| mine(&m.service))
        .map(|m| {
            json!({"service": m.service, "name": m.name, "unit": m.unit,
                   "mean": [m.recent_mean, m.baseline_mean], "max": [m.recent_max, m.baseline_max]})
        })
        .collect();
    let edges: Vec<Value> = b
        .edges
        .iter()
        .filter(|e| mine(&e.from) || a.service.as_deref() == Some(e.to.as_str()))
        .map(|e| {
            json!({"from": e.from, "to": e.to, "addr": e.to_addr,
                   "connections": [e.recent.connections, e.baseline.connections],
                   "failed_connects": [e.recent.failures, e.baseline.failures],
                   "rtt_ms": [ms(e.recent.rtt_avg_us as f64), ms(e.baseline.rtt_avg_us as f64)],
                   "rtt_max_ms": [ms(e.recent.rtt_max_us as f64), ms(e.baseline.rtt_max_us as f64)]})
        })
        .collect();
    // Log messages by template: those that appeared or grew first (per
    // minute, against the baseline's rate), then the rest.
    let minutes = (
        (w.until_ms - w.since_ms).max(1) as f64 / 60_000.0,
        w.baseline_ms.max(1) as f64 / 60_000.0,
    );
    let grew =
        |l: &coral_proto::LogChange| l.recent as f64 / minutes.0 - l.baseline as f64 / minutes.1;
    let mut logs: Vec<&coral_proto::LogChange> =
        b.logs.iter().filter(|l| mine(&l.service)).collect();
    logs.sort_by(|x, y| grew(y).total_cmp(&grew(x)));
    logs.truncate(if a.service.is_some() {
        30
    } else {
        BREAKDOWN_LOGS
    });
    let logs: Vec<Value> = logs
        .iter()
        .map(|l| {
            json!({"service": l.service, "severity": l.severity, "template": l.template,
                   "example": l.example.chars().take(300).collect::<String>(),
                   "count": [l.recent, l.baseline]})
        })
        .collect();
    Ok(json!({
        "window": human(w.until_ms - w.since_ms),
        "baseline": human(w.baseline_ms),
        "requests": [b.requests, b.baseline_requests],
        "operations": operations,
        "facets": facets,
        "metrics": metrics,
        "edges": edges,
        "logs": logs,
        "coverage": coverage_json(&b.coverage),
    }))
}

async fn traces(shared: &Shared, a: TracesArgs, now_us: i64) -> Result<Value, ToolError> {
    let since = window(&a.since, Duration::from_secs(900))?;
    let q = TraceQuery {
        service: a.service,
        since_ms: (now_us - since.as_micros() as i64) / 1000,
        min_duration_us: a.min_duration_ms.unwrap_or(0).saturating_mul(1000),
        limit: a.limit.unwrap_or(20).clamp(1, 100),
    };
    let coverage = read::coverage(shared).await;
    let list = read::traces(&shared.telemetry, q).await?;
    let traces: Vec<Value> = list
        .iter()
        .map(|t| {
            json!({"trace_id": t.trace_id, "root": format!("{} {}", t.service, t.name),
                   "duration_ms": ms(t.duration_us as f64), "spans": t.spans, "errors": t.errors,
                   "services": t.services, "start_s_ago": (now_us - t.start_us) / 1_000_000})
        })
        .collect();
    Ok(json!({ "traces": traces, "coverage": coverage_json(&coverage) }))
}

async fn trace(shared: &Shared, a: TraceArgs) -> Result<Value, ToolError> {
    let coverage = read::coverage(shared).await;
    let spans = read::trace(&shared.telemetry, &a.trace_id).await?;
    if spans.is_empty() {
        return Err(ToolError::Failed(format!(
            "no spans stored for trace {}{}",
            a.trace_id,
            coverage
                .gaps()
                .map(|g| format!(" (not seen: {g})"))
                .unwrap_or_default()
        )));
    }
    let t0 = spans.iter().map(|s| s.start_us).min().unwrap_or(0);
    let critical = coral_proto::span_tree::critical_span_ids(&spans);
    let list: Vec<Value> = spans
        .iter()
        .take(200)
        .map(|s| {
            json!({
                "span_id": s.span_id, "parent": s.parent_span_id, "service": s.service, "name": s.name,
                "kind": s.kind, "offset_ms": ms((s.start_us - t0) as f64), "duration_ms": ms(s.duration_us as f64),
                "status": s.status_code, "critical": critical.contains(&s.span_id),
                "detail": read::detail_of(&s.attributes),
                // Semantic-convention code attributes (issue 12: `coral ask`
                // probes the functions they name first).
                "code_function": read::attr(&s.attributes, &["code.function.name", "code.function"]),
                "code_namespace": read::attr(&s.attributes, &["code.namespace"]),
            })
        })
        .collect();
    Ok(
        json!({ "trace_id": a.trace_id, "span_count": spans.len(), "spans": list, "coverage": coverage_json(&coverage) }),
    )
}

async fn logs(shared: &Shared, a: LogsArgs, now_us: i64) -> Result<Value, ToolError> {
    let since = window(&a.since, Duration::from_secs(900))?;
    let q = LogQuery {
        service: a.service,
        since_ms: (now_us - since.as_micros() as i64) / 1000,
        contains: a.contains,
        trace_id: a.trace_id,
        limit: a.limit.unwrap_or(50).clamp(1, 200),
    };
    let coverage = read::coverage(shared).await;
    let list = read::logs(&shared.telemetry, q).await?;
    let logs: Vec<Value> = list
        .iter()
        .map(|l| {
            json!({"service": l.service, "s_ago": (now_us - l.ts_us) / 1_000_000, "severity": l.severity_text,
                   "body": l.body.chars().take(500).collect::<String>(), "trace_id": l.trace_id})
        })
        .collect();
    Ok(json!({ "logs": logs, "coverage": coverage_json(&coverage) }))
}

async fn changes(shared: &Shared, a: ChangesArgs, now_us: i64) -> Result<Value, ToolError> {
    let since = window(&a.since, Duration::from_secs(3600))?;
    let now = now_us / 1000;
    let c = read::changes(shared, now - since.as_millis() as i64).await?;
    let events: Vec<Value> = c
        .changes
        .into_iter()
        .map(|e| {
            json!({"s_ago": (now - e.ts_ms) / 1000, "what": e.what, "agent": e.agent,
                   "service": e.service, "detail": e.detail})
        })
        .collect();
    Ok(
        json!({ "since": humantime::format_duration(since).to_string(), "events": events, "coverage": coverage_json(&c.coverage) }),
    )
}

async fn exec(
    shared: &Shared,
    a: ExecArgs,
    caller: coral_proto::ExecCaller,
) -> Result<Value, ToolError> {
    let argv =
        shell_words::split(&a.command).map_err(|e| ToolError::Args(format!("command: {e}")))?;
    let timeout_ms = match &a.timeout {
        None => None,
        Some(_) => Some(window(&a.timeout, Duration::ZERO)?.as_millis() as u64),
    };
    let req = coral_proto::ExecStartRequest {
        service: a.service,
        agent: a.agent,
        argv,
        timeout_ms,
    };
    let started = shared
        .exec_start(req, caller)
        .await
        .map_err(|e| ToolError::Failed(e.to_string()))?;
    if started.verdict != coral_proto::ExecVerdict::Allowed {
        return Err(ToolError::Failed(format!(
            "{:?} on {}: {}{}",
            started.verdict,
            started.agent_name,
            started.reason,
            started
                .rule
                .as_ref()
                .map(|r| format!(" (rule {r})"))
                .unwrap_or_default()
        )));
    }
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let mut offset = 0;
    let outcome = loop {
        let poll = shared
            .exec_poll(&started.agent_id, started.exec_id.clone(), offset, 1000)
            .await
            .map_err(|e| ToolError::Failed(e.to_string()))?;
        offset = poll.next_offset;
        for c in poll.chunks {
            let buf = match c.stream {
                coral_proto::OutputStream::Stdout => &mut stdout,
                coral_proto::OutputStream::Stderr => &mut stderr,
            };
            let room = EXEC_OUTPUT.saturating_sub(buf.len());
            buf.extend_from_slice(&c.data[..c.data.len().min(room)]);
        }
        if let Some(done) = poll.done {
            break done;
        }
    };
    Ok(json!({
        "agent": started.agent_name,
        "program": started.program,
        "rule": started.rule,
        "exit_code": outcome.exit_code,
        "error": outcome.error,
        "signal": outcome.signal,
        "timed_out": outcome.timed_out,
        "truncated": outcome.truncated || stdout.len() >= EXEC_OUTPUT || stderr.len() >= EXEC_OUTPUT,
        "stdout": String::from_utf8_lossy(&stdout),
        "stderr": String::from_utf8_lossy(&stderr),
    }))
}

/// The `coral` command that does what one tool call did, for the audit log.
pub fn cli_equivalent(name: &str, args: &Value) -> String {
    let s = |k: &str| args.get(k).and_then(Value::as_str);
    let q = |v: &str| shell_words::quote(v).into_owned();
    let mut flags = String::new();
    for (k, flag) in [
        ("service", "--service"),
        ("since", "--since"),
        ("contains", "--contains"),
    ] {
        if let Some(v) = s(k) {
            flags.push_str(&format!(" {flag} {}", q(v)));
        }
    }
    match name {
        "coral_services" => "coral colony status".into(),
        "coral_traces" => {
            if let Some(ms) = args.get("min_duration_ms").and_then(Value::as_u64) {
                flags.push_str(&format!(" --min-duration {ms}ms"));
            }
            format!("coral query traces{flags}")
        }
        "coral_trace" => format!("coral query trace {}", q(s("trace_id").unwrap_or(""))),
        "coral_red_metrics" => {
            let mut f = String::new();
            if let Some(v) = s("service") {
                f.push_str(&format!(" --service {}", q(v)));
            }
            f.push_str(&format!(
                " --since {} --baseline {}",
                q(s("window").unwrap_or("5m")),
                q(s("baseline").unwrap_or("1h"))
            ));
            format!("coral query metrics{f}")
        }
        "coral_service_map" => {
            format!("coral query map --since {}", q(s("since").unwrap_or("15m")))
        }
        "coral_logs" => format!("coral query logs{flags}"),
        "coral_agent_exec" => format!(
            "coral exec {} {}",
            q(s("service").unwrap_or("")),
            q(s("command").unwrap_or(""))
        ),
        _ => format!("coral mcp call {name} {}", q(&args.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_capped_by_dropping_rows() {
        let rows: Vec<Value> = (0..5000)
            .map(|i| json!({"i": i, "pad": "x".repeat(20)}))
            .collect();
        let text = capped(json!({"rows": rows, "name": "n"}));
        assert!(text.len() <= MAX_OUTPUT);
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["truncated"], json!(true));
        assert_eq!(v["name"], json!("n"));
        assert!(v["rows"].as_array().unwrap().len() > 100);
    }

    #[test]
    fn output_is_capped_on_character_boundaries() {
        // Issue 16: a span named "€" x 12000 made `capped` panic mid-character.
        let text = capped(json!({"name": "€".repeat(12_000), "n": 1}));
        assert!(text.len() <= MAX_OUTPUT);
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["truncated"], json!(true));
        assert!(v["name"].as_str().unwrap().ends_with("bytes cut]"));
        let nested = capped(json!({"spans": [{"detail": "é".repeat(40_000)}]}));
        assert!(nested.len() <= MAX_OUTPUT);
        serde_json::from_str::<Value>(&nested).unwrap();
    }

    #[test]
    fn tool_calls_have_cli_equivalents() {
        assert_eq!(
            cli_equivalent("coral_services", &json!({})),
            "coral colony status"
        );
        assert_eq!(
            cli_equivalent(
                "coral_agent_exec",
                &json!({"service": "db", "command": "ss -tnp"})
            ),
            "coral exec db 'ss -tnp'"
        );
        assert_eq!(
            cli_equivalent(
                "coral_traces",
                &json!({"service": "api", "min_duration_ms": 500})
            ),
            "coral query traces --service api --min-duration 500ms"
        );
        assert!(
            cli_equivalent("coral_hotspots", &json!({"service": "api"}))
                .starts_with("coral mcp call coral_hotspots")
        );
        assert_eq!(
            cli_equivalent(
                "coral_red_metrics",
                &json!({"service": "api", "window": "20s"})
            ),
            "coral query metrics --service api --since 20s --baseline 1h"
        );
        assert_eq!(catalog(false).len() + 1, catalog(true).len());
    }

    #[test]
    fn windows_are_checked() {
        assert_eq!(
            window(&None, Duration::from_secs(5)).unwrap(),
            Duration::from_secs(5)
        );
        assert_eq!(
            window(&Some("15m".into()), Duration::ZERO).unwrap(),
            Duration::from_secs(900)
        );
        assert!(window(&Some("soon".into()), Duration::ZERO).is_err());
        assert!(window(&Some("400d".into()), Duration::ZERO).is_err());
    }
}
