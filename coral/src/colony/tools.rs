//! The colony's diagnostic tools: the same small set serves MCP clients,
//! `coral ask` (whose LLM calls them over MCP) and the built-in analyzer.
//!
//! Each tool takes JSON arguments (typed below, with JSON schemas generated
//! from the types) and returns compact JSON, capped at [`MAX_OUTPUT`] bytes.
//! Every tool here only reads the colony's stores.

use super::Shared;
use coral_agent::telemetry::TelemetryError;
use coral_proto::{LogQuery, TraceQuery};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
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
            description: "Per service: request rate, error %, p50/p95/p99 latency in a recent window, the same in a baseline window before it, and the change.",
            schema: schema::<RedArgs>(),
            read_only: true,
        },
        ToolDef {
            name: "coral_service_map",
            title: "Service map",
            description: "Who calls whom: edges between services (and databases) with call counts, errors and mean latency.",
            schema: schema::<MapArgs>(),
            read_only: true,
        },
        ToolDef {
            name: "coral_hotspots",
            title: "Where a service's time goes",
            description: "Breaks down a service's requests into the operations under them (downstream calls, queries with their statements), recent vs baseline: count, mean and p95 time, share of the service's time.",
            schema: schema::<HotspotArgs>(),
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
    list.extend(super::debug_tools::catalog()); // issue 12; gated in mcp.rs by debug_tools::listed
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
    if let Some(r) = super::debug_tools::call(shared, name, args.clone(), caller).await {
        return r;
    }
    match name {
        "coral_agent_exec" if shared.config.mcp.allow_exec => {
            exec(shared, parse(args)?, caller.clone()).await
        }
        "coral_services" => {
            parse::<NoArgs>(args)?;
            services(shared)
        }
        "coral_red_metrics" => red(shared, parse(args)?, now_us).await,
        "coral_service_map" => service_map(shared, parse(args)?, now_us).await,
        "coral_hotspots" => hotspots(shared, parse(args)?, now_us).await,
        "coral_traces" => traces(shared, parse(args)?, now_us).await,
        "coral_trace" => trace(shared, parse(args)?).await,
        "coral_logs" => logs(shared, parse(args)?, now_us).await,
        "coral_changes" => changes(shared, parse(args)?, now_us),
        other => Err(ToolError::Unknown(other.to_string())),
    }
}

/// Serialises `v`; if it is over [`MAX_OUTPUT`], drops the tail of its
/// largest array and says so in `"truncated"`.
pub fn capped(mut v: Value) -> String {
    let mut text = v.to_string();
    while text.len() > MAX_OUTPUT {
        let Some(obj) = v.as_object_mut() else { break };
        let biggest = obj
            .iter()
            .filter_map(|(k, x)| x.as_array().map(|a| (k.clone(), a.len())))
            .max_by_key(|(_, n)| *n);
        let Some((key, n)) = biggest.filter(|(_, n)| *n > 1) else {
            text.truncate(MAX_OUTPUT);
            return text;
        };
        if let Some(a) = obj.get_mut(&key).and_then(Value::as_array_mut) {
            a.truncate(n * 3 / 4);
        }
        obj.insert("truncated".into(), json!(true));
        text = v.to_string();
    }
    text
}

fn ms(us: f64) -> f64 {
    (us / 1000.0 * 100.0).round() / 100.0
}

fn services(shared: &Shared) -> Result<Value, ToolError> {
    let now = coral_proto::now_ms();
    let agents = shared
        .registry
        .lock()
        .expect("registry lock")
        .agents(now, shared.config.agent_timeout.as_millis() as i64)
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

/// RED figures of one service in one window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Red {
    pub requests: u64,
    pub errors: u64,
    pub p50_us: f64,
    pub p95_us: f64,
    pub p99_us: f64,
}

/// Requests of each service: its server spans (or root spans where a
/// service reports no server kind) between `from_us` and `to_us`.
async fn red_window(
    shared: &Shared,
    service: Option<String>,
    from_us: i64,
    to_us: i64,
) -> Result<BTreeMap<String, Red>, ToolError> {
    Ok(shared
        .telemetry
        .query(move |c| {
            let mut st = c.prepare(
                "SELECT service, count(*), count(*) FILTER (WHERE status_code = 'error'),
                        quantile_cont(duration_us, 0.5), quantile_cont(duration_us, 0.95),
                        quantile_cont(duration_us, 0.99)
                 FROM spans
                 WHERE start_ts >= make_timestamp(?::BIGINT) AND start_ts < make_timestamp(?::BIGINT)
                   AND (kind = 'server' OR parent_span_id IS NULL)
                   AND (?::VARCHAR IS NULL OR service = ?::VARCHAR)
                 GROUP BY service ORDER BY service",
            )?;
            st.query_map(
                duckdb::params![from_us, to_us, service, service],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        Red {
                            requests: r.get::<_, i64>(1)? as u64,
                            errors: r.get::<_, i64>(2)? as u64,
                            p50_us: r.get(3)?,
                            p95_us: r.get(4)?,
                            p99_us: r.get(5)?,
                        },
                    ))
                },
            )?
            .collect()
        })
        .await?)
}

fn red_json(r: &Red, secs: f64) -> Value {
    json!({
        "requests": r.requests,
        "rps": (r.requests as f64 / secs * 100.0).round() / 100.0,
        "errors": r.errors,
        "error_pct": error_pct(r),
        "p50_ms": ms(r.p50_us),
        "p95_ms": ms(r.p95_us),
        "p99_ms": ms(r.p99_us),
    })
}

fn error_pct(r: &Red) -> f64 {
    if r.requests == 0 {
        0.0
    } else {
        (r.errors as f64 * 10000.0 / r.requests as f64).round() / 100.0
    }
}

async fn red(shared: &Shared, a: RedArgs, now_us: i64) -> Result<Value, ToolError> {
    let win = window(&a.window, Duration::from_secs(300))?;
    let base = window(&a.baseline, Duration::from_secs(3600))?;
    let split = now_us - win.as_micros() as i64;
    let start = split - base.as_micros() as i64;
    let recent = red_window(shared, a.service.clone(), split, now_us).await?;
    let before = red_window(shared, a.service.clone(), start, split).await?;
    let mut names: Vec<&String> = recent.keys().chain(before.keys()).collect();
    names.sort();
    names.dedup();
    let services: Vec<Value> = names
        .into_iter()
        .map(|name| {
            let r = recent.get(name).cloned().unwrap_or_default();
            let b = before.get(name).cloned().unwrap_or_default();
            let ratio = |x: f64, y: f64| {
                if y > 0.0 {
                    Some((x / y * 100.0).round() / 100.0)
                } else {
                    None
                }
            };
            json!({
                "service": name,
                "source": "otlp",
                "recent": red_json(&r, win.as_secs_f64()),
                "baseline": red_json(&b, base.as_secs_f64()),
                "change": {
                    "p50_ratio": ratio(r.p50_us, b.p50_us),
                    "p95_ratio": ratio(r.p95_us, b.p95_us),
                    "error_pct_delta": ((error_pct(&r) - error_pct(&b)) * 100.0).round() / 100.0,
                    "rps_ratio": ratio(r.requests as f64 / win.as_secs_f64(), b.requests as f64 / base.as_secs_f64()),
                },
            })
        })
        .collect();
    if services.is_empty()
        && let Some(s) = &a.service
    {
        return Err(ToolError::Failed(format!(
            "no requests recorded for service '{s}' in the last {}",
            humantime::format_duration(win + base)
        )));
    }
    Ok(json!({
        "window": humantime::format_duration(win).to_string(),
        "baseline": humantime::format_duration(base).to_string(),
        "window_start_ms": split / 1000,
        "services": services,
    }))
}

/// The first of `keys` present as a string attribute.
pub fn attr(attributes: &str, keys: &[&str]) -> Option<String> {
    let v: Value = serde_json::from_str(attributes).ok()?;
    keys.iter()
        .find_map(|k| v.get(*k).and_then(Value::as_str).map(str::to_string))
}

/// The peer a client span calls, from its semantic-convention attributes.
pub fn peer_of(attributes: &str) -> Option<String> {
    attr(
        attributes,
        &[
            "peer.service",
            "db.name",
            "db.namespace",
            "db.system",
            "db.system.name",
            "server.address",
            "net.peer.name",
        ],
    )
}

/// The statement or target a span carries, for display.
pub fn detail_of(attributes: &str) -> Option<String> {
    attr(
        attributes,
        &[
            "db.statement",
            "db.query.text",
            "http.route",
            "url.full",
            "http.url",
        ],
    )
}

async fn service_map(shared: &Shared, a: MapArgs, now_us: i64) -> Result<Value, ToolError> {
    let since = window(&a.since, Duration::from_secs(900))?;
    let from = now_us - since.as_micros() as i64;
    // Parent → child across services, and client spans to a named peer
    // (a database, or a service that does not report spans).
    let rows: Vec<(String, String, Option<String>, i64, i64, f64)> = shared
        .telemetry
        .query(move |c| {
            let mut st = c.prepare(
                "SELECT p.service, c.service, NULL, count(*), count(*) FILTER (WHERE c.status_code = 'error'), avg(c.duration_us)
                 FROM spans c JOIN spans p ON c.trace_id = p.trace_id AND c.parent_span_id = p.span_id
                 WHERE c.start_ts >= make_timestamp(?::BIGINT) AND p.service <> c.service
                 GROUP BY p.service, c.service
                 UNION ALL
                 SELECT service, '', attributes, count(*), count(*) FILTER (WHERE status_code = 'error'), avg(duration_us)
                 FROM spans
                 WHERE start_ts >= make_timestamp(?::BIGINT) AND kind = 'client'
                 GROUP BY service, attributes",
            )?;
            st.query_map(duckdb::params![from, from], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
            })?
            .collect()
        })
        .await?;
    // (from, to) → (calls, errors, total us); parent→child edges win over
    // the client spans that produced them.
    let mut edges: BTreeMap<(String, String), (i64, i64, f64)> = BTreeMap::new();
    let mut direct: std::collections::HashSet<(String, String)> = Default::default();
    for (from, to, attrs, n, errs, avg) in rows {
        let to = match attrs {
            None => {
                direct.insert((from.clone(), to.clone()));
                to
            }
            Some(attrs) => match peer_of(&attrs) {
                Some(p) => p,
                None => continue,
            },
        };
        let e = edges.entry((from, to)).or_default();
        e.0 += n;
        e.1 += errs;
        e.2 += avg * n as f64;
    }
    let edges: Vec<Value> = edges
        .into_iter()
        .filter(|((f, t), _)| f != t)
        .map(|((from, to), (n, errs, total))| {
            json!({"from": from, "to": to, "calls": n, "errors": errs, "mean_ms": ms(total / n.max(1) as f64),
                   "source": if direct.contains(&(from.clone(), to.clone())) { "traces" } else { "client spans" }})
        })
        .collect();
    Ok(json!({ "since": humantime::format_duration(since).to_string(), "edges": edges }))
}

/// One operation under a service's requests.
#[derive(Debug, Clone)]
struct Op {
    service: String,
    name: String,
    kind: String,
    count: i64,
    errors: i64,
    total_us: f64,
    p95_us: f64,
    attributes: String,
}

async fn ops(
    shared: &Shared,
    service: String,
    from_us: i64,
    to_us: i64,
) -> Result<(f64, i64, Vec<Op>), ToolError> {
    Ok(shared
        .telemetry
        .query(move |c| {
            let (total, requests): (f64, i64) = c.query_row(
                "SELECT coalesce(sum(duration_us), 0)::DOUBLE, count(*) FROM spans
                 WHERE service = ? AND (kind = 'server' OR parent_span_id IS NULL)
                   AND start_ts >= make_timestamp(?::BIGINT) AND start_ts < make_timestamp(?::BIGINT)",
                duckdb::params![service, from_us, to_us],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            // Every span under the service's requests (their descendants),
            // grouped by operation.
            let mut st = c.prepare(
                "WITH RECURSIVE w AS (
                    SELECT trace_id, span_id, parent_span_id, service, name, kind, duration_us, status_code, attributes
                    FROM spans
                    WHERE start_ts >= make_timestamp(?::BIGINT) - INTERVAL 1 MINUTE
                      AND start_ts < make_timestamp(?::BIGINT) + INTERVAL 1 MINUTE),
                 req AS (
                    SELECT trace_id, span_id FROM spans
                    WHERE service = ? AND (kind = 'server' OR parent_span_id IS NULL)
                      AND start_ts >= make_timestamp(?::BIGINT) AND start_ts < make_timestamp(?::BIGINT)),
                 under(trace_id, span_id) AS (
                    SELECT w.trace_id, w.span_id FROM w JOIN req r ON w.trace_id = r.trace_id AND w.parent_span_id = r.span_id
                    UNION
                    SELECT w.trace_id, w.span_id FROM w JOIN under u ON w.trace_id = u.trace_id AND w.parent_span_id = u.span_id)
                 SELECT s.service, s.name, any_value(s.kind), count(*), count(*) FILTER (WHERE s.status_code = 'error'),
                        sum(s.duration_us)::DOUBLE, quantile_cont(s.duration_us, 0.95), any_value(s.attributes)
                 FROM w s JOIN under USING (trace_id, span_id)
                 GROUP BY s.service, s.name
                 ORDER BY 6 DESC LIMIT 15",
            )?;
            let ops = st
                .query_map(
                    duckdb::params![from_us, to_us, service, from_us, to_us],
                    |r| {
                        Ok(Op {
                            service: r.get(0)?,
                            name: r.get(1)?,
                            kind: r.get(2)?,
                            count: r.get(3)?,
                            errors: r.get(4)?,
                            total_us: r.get(5)?,
                            p95_us: r.get(6)?,
                            attributes: r.get(7)?,
                        })
                    },
                )?
                .collect::<duckdb::Result<Vec<_>>>()?;
            Ok((total, requests, ops))
        })
        .await?)
}

async fn hotspots(shared: &Shared, a: HotspotArgs, now_us: i64) -> Result<Value, ToolError> {
    let win = window(&a.window, Duration::from_secs(300))?;
    let base = window(&a.baseline, Duration::from_secs(3600))?;
    let split = now_us - win.as_micros() as i64;
    let start = split - base.as_micros() as i64;
    let (total, requests, recent) = ops(shared, a.service.clone(), split, now_us).await?;
    let (base_total, base_requests, before) = ops(shared, a.service.clone(), start, split).await?;
    if requests == 0 && base_requests == 0 {
        return Err(ToolError::Failed(format!(
            "no requests recorded for service '{}' in the last {}",
            a.service,
            humantime::format_duration(win + base)
        )));
    }
    // Since when requests are slow: the oldest recent request over 1.5x
    // the baseline p95 (and at least 10 ms over it).
    let svc = a.service.clone();
    let slow: Option<(f64, i64)> = shared
        .telemetry
        .query(move |c| {
            c.query_row(
                "WITH b AS (
                    SELECT quantile_cont(duration_us, 0.95) AS p95 FROM spans
                    WHERE service = ? AND (kind = 'server' OR parent_span_id IS NULL)
                      AND start_ts >= make_timestamp(?::BIGINT) AND start_ts < make_timestamp(?::BIGINT))
                 SELECT greatest(b.p95 * 1.5, b.p95 + 10000), min(epoch_us(s.start_ts))
                 FROM spans s, b
                 WHERE b.p95 IS NOT NULL AND s.service = ? AND (s.kind = 'server' OR s.parent_span_id IS NULL)
                   AND s.start_ts >= make_timestamp(?::BIGINT)
                   AND s.duration_us > greatest(b.p95 * 1.5, b.p95 + 10000)
                 GROUP BY b.p95",
                duckdb::params![svc, start, split, svc, split],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map(Some)
            .or_else(|e| match e {
                duckdb::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })
        })
        .await?;
    let before: HashMap<(String, String), Op> = before
        .into_iter()
        .map(|o| ((o.service.clone(), o.name.clone()), o))
        .collect();
    let per_req = |o: &Op, reqs: i64| o.count as f64 / reqs.max(1) as f64;
    let ops: Vec<Value> = recent
        .iter()
        .map(|o| {
            let b = before.get(&(o.service.clone(), o.name.clone()));
            json!({
                "service": o.service,
                "operation": o.name,
                "kind": o.kind,
                "peer": peer_of(&o.attributes),
                "statement": detail_of(&o.attributes),
                "db_name": attr(&o.attributes, &["db.name", "db.namespace"]),
                "db_user": attr(&o.attributes, &["db.user"]),
                "count": o.count,
                "per_request": (per_req(o, requests) * 100.0).round() / 100.0,
                "errors": o.errors,
                "mean_ms": ms(o.total_us / o.count.max(1) as f64),
                "p95_ms": ms(o.p95_us),
                "share_pct": if total > 0.0 { (o.total_us / total * 1000.0).round() / 10.0 } else { 0.0 },
                "baseline_mean_ms": b.map(|b| ms(b.total_us / b.count.max(1) as f64)),
                "baseline_p95_ms": b.map(|b| ms(b.p95_us)),
            })
        })
        .collect();
    Ok(json!({
        "service": a.service,
        "window": humantime::format_duration(win).to_string(),
        "requests": requests,
        "mean_request_ms": ms(total / requests.max(1) as f64),
        "baseline_requests": base_requests,
        "baseline_mean_request_ms": if base_requests > 0 { Some(ms(base_total / base_requests as f64)) } else { None },
        "operations": ops,
        "slow_threshold_ms": slow.map(|(t, _)| ms(t)),
        "slow_since_s_ago": slow.map(|(_, first)| (now_us - first) / 1_000_000),
    }))
}

async fn traces(shared: &Shared, a: TracesArgs, now_us: i64) -> Result<Value, ToolError> {
    let since = window(&a.since, Duration::from_secs(900))?;
    let q = TraceQuery {
        service: a.service,
        since_ms: (now_us - since.as_micros() as i64) / 1000,
        min_duration_us: a.min_duration_ms.unwrap_or(0) * 1000,
        limit: a.limit.unwrap_or(20).clamp(1, 100),
    };
    let list = super::query::traces(&shared.telemetry, q).await?;
    let traces: Vec<Value> = list
        .iter()
        .map(|t| {
            json!({"trace_id": t.trace_id, "root": format!("{} {}", t.service, t.name),
                   "duration_ms": ms(t.duration_us as f64), "spans": t.spans, "errors": t.errors,
                   "services": t.services, "start_s_ago": (now_us - t.start_us) / 1_000_000})
        })
        .collect();
    Ok(json!({ "traces": traces }))
}

async fn trace(shared: &Shared, a: TraceArgs) -> Result<Value, ToolError> {
    let spans = super::query::trace(&shared.telemetry, &a.trace_id).await?;
    if spans.is_empty() {
        return Err(ToolError::Failed(format!(
            "no spans stored for trace {}",
            a.trace_id
        )));
    }
    let t0 = spans.iter().map(|s| s.start_us).min().unwrap_or(0);
    let critical = crate::cli::render::critical_span_ids(&spans);
    let list: Vec<Value> = spans
        .iter()
        .take(200)
        .map(|s| {
            json!({
                "span_id": s.span_id, "parent": s.parent_span_id, "service": s.service, "name": s.name,
                "kind": s.kind, "offset_ms": ms((s.start_us - t0) as f64), "duration_ms": ms(s.duration_us as f64),
                "status": s.status_code, "critical": critical.contains(&s.span_id),
                "detail": detail_of(&s.attributes),
            })
        })
        .collect();
    Ok(json!({ "trace_id": a.trace_id, "span_count": spans.len(), "spans": list }))
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
    let list = super::query::logs(&shared.telemetry, q).await?;
    let logs: Vec<Value> = list
        .iter()
        .map(|l| {
            json!({"service": l.service, "s_ago": (now_us - l.ts_us) / 1_000_000, "severity": l.severity_text,
                   "body": l.body.chars().take(500).collect::<String>(), "trace_id": l.trace_id})
        })
        .collect();
    Ok(json!({ "logs": logs }))
}

fn changes(shared: &Shared, a: ChangesArgs, now_us: i64) -> Result<Value, ToolError> {
    let since = window(&a.since, Duration::from_secs(3600))?;
    let now = now_us / 1000;
    let from = now - since.as_millis() as i64;
    let reg = shared.registry.lock().expect("registry lock");
    let c = reg
        .changes(from)
        .map_err(|e| ToolError::Failed(e.to_string()))?;
    let events: Vec<Value> = c
        .into_iter()
        .map(|e| {
            json!({"s_ago": (now - e.ts_ms) / 1000, "what": e.what, "agent": e.agent,
                   "service": e.service, "detail": e.detail})
        })
        .collect();
    Ok(json!({ "since": humantime::format_duration(since).to_string(), "events": events }))
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
    fn peers_come_from_semantic_conventions() {
        assert_eq!(
            peer_of(r#"{"db.system":"postgresql","peer.service":"db"}"#).as_deref(),
            Some("db")
        );
        assert_eq!(
            peer_of(r#"{"db.system":"postgresql"}"#).as_deref(),
            Some("postgresql")
        );
        assert_eq!(peer_of(r#"{"http.method":"GET"}"#), None);
        assert_eq!(
            detail_of(r#"{"db.statement":"SELECT 1"}"#).as_deref(),
            Some("SELECT 1")
        );
    }

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
