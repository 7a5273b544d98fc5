//! Read queries over the colony's telemetry aggregate (spans, logs, eBPF
//! RED metrics and the connection map).

use coral_agent::telemetry::{
    LOG_COLUMNS, RED_COLUMNS, SPAN_COLUMNS, Telemetry, log_row, red_row, span_row,
};
use coral_proto::{LogQuery, LogRecord, QueryError, SpanRecord, TraceQuery, TraceSummary};

/// Most rows one query returns.
pub const MAX_LIMIT: u32 = 1_000;
/// Most spans one trace returns.
pub const MAX_TRACE_SPANS: usize = 10_000;

fn storage(e: coral_agent::telemetry::TelemetryError) -> QueryError {
    QueryError::Storage(e.to_string())
}

pub fn check_trace_id(id: &str) -> Result<String, QueryError> {
    let id = id.trim().to_ascii_lowercase();
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(QueryError::Invalid(format!(
            "trace id '{id}' must be 32 hex digits, e.g. 4bf92f3577b34da6a3ce929d0e0e4736"
        )));
    }
    Ok(id)
}

/// Traces are listed by their root span (the newest first), so a query
/// touches only the spans of the traces it returns; a trace whose root span
/// has not arrived is not listed (`coral query trace` still shows it).
pub async fn traces(t: &Telemetry, q: TraceQuery) -> Result<Vec<TraceSummary>, QueryError> {
    let limit = q.limit.clamp(1, MAX_LIMIT);
    t.query(move |c| {
        let mut st = c.prepare(
            "WITH roots AS (
                SELECT trace_id, service, name, start_ts, duration_us
                FROM spans
                WHERE start_ts >= make_timestamp(?::BIGINT) AND parent_span_id IS NULL AND duration_us >= ?
                  AND (?::VARCHAR IS NULL OR trace_id IN (
                        SELECT trace_id FROM spans WHERE start_ts >= make_timestamp(?::BIGINT) AND service = ?::VARCHAR))
                ORDER BY start_ts DESC LIMIT ?
             )
             SELECT r.trace_id, any_value(r.service), any_value(r.name), epoch_us(any_value(r.start_ts)),
                    greatest(any_value(r.duration_us), max(epoch_us(sp.start_ts) + sp.duration_us) - min(epoch_us(sp.start_ts))),
                    count(*), count(*) FILTER (WHERE sp.status_code = 'error'),
                    string_agg(DISTINCT sp.service, ',' ORDER BY sp.service)
             FROM roots r JOIN spans sp ON sp.trace_id = r.trace_id
             GROUP BY r.trace_id
             ORDER BY any_value(r.start_ts) DESC",
        )?;
        let since_us = q.since_ms * 1000;
        let rows = st.query_map(
            duckdb::params![since_us, q.min_duration_us as i64, q.service, since_us, q.service, limit],
            |r| {
                let services: String = r.get(7)?;
                Ok(TraceSummary {
                    trace_id: r.get(0)?,
                    service: r.get(1)?,
                    name: r.get(2)?,
                    start_us: r.get(3)?,
                    duration_us: r.get(4)?,
                    spans: r.get(5)?,
                    errors: r.get(6)?,
                    services: services.split(',').map(str::to_string).collect(),
                })
            },
        )?;
        rows.collect()
    })
    .await
    .map_err(storage)
}

pub async fn trace(t: &Telemetry, trace_id: &str) -> Result<Vec<SpanRecord>, QueryError> {
    let id = check_trace_id(trace_id)?;
    t.query(move |c| {
        c.prepare(&format!(
            "SELECT {SPAN_COLUMNS} FROM spans WHERE trace_id = ? ORDER BY start_ts, span_id LIMIT ?"
        ))?
        .query_map(duckdb::params![id, MAX_TRACE_SPANS as u64], span_row)?
        .collect()
    })
    .await
    .map_err(storage)
}

pub async fn logs(t: &Telemetry, q: LogQuery) -> Result<Vec<LogRecord>, QueryError> {
    let trace = q.trace_id.as_deref().map(check_trace_id).transpose()?;
    let limit = q.limit.clamp(1, MAX_LIMIT);
    t.query(move |c| {
        c.prepare(&format!(
            "SELECT {LOG_COLUMNS} FROM log_records
             WHERE ts >= make_timestamp(?::BIGINT)
               AND (?::VARCHAR IS NULL OR service = ?::VARCHAR)
               AND (?::VARCHAR IS NULL OR trace_id = ?::VARCHAR)
               AND (?::VARCHAR IS NULL OR body ILIKE '%' || ?::VARCHAR || '%')
             ORDER BY ts DESC, seq DESC LIMIT ?"
        ))?
        .query_map(
            duckdb::params![
                q.since_ms * 1000,
                q.service,
                q.service,
                trace,
                trace,
                q.contains,
                q.contains,
                limit
            ],
            log_row,
        )?
        .collect()
    })
    .await
    .map_err(storage)
}

fn floor_minute(ms: i64) -> i64 {
    ms - ms.rem_euclid(60_000)
}

#[derive(Default)]
struct RedAcc {
    count: u64,
    errors: u64,
    client_errors: u64,
    bytes_in: u64,
    bytes_out: u64,
    max_us: u64,
    hist: coral_agent::ebpf::hist::Hist,
}

impl RedAcc {
    fn add(&mut self, r: &coral_proto::RedRecord, hist: &coral_agent::ebpf::hist::Hist) {
        self.count += r.count;
        self.errors += r.errors;
        self.client_errors += r.client_errors;
        self.bytes_in += r.bytes_in;
        self.bytes_out += r.bytes_out;
        self.max_us = self.max_us.max(r.max_us);
        self.hist.merge(hist);
    }

    fn summary(
        self,
        service: String,
        method: Option<String>,
        route: Option<String>,
        window_s: f64,
    ) -> coral_proto::RedSummary {
        coral_proto::RedSummary {
            service,
            method,
            route,
            count: self.count,
            errors: self.errors,
            client_errors: self.client_errors,
            error_pct: if self.count == 0 {
                0.0
            } else {
                self.errors as f64 * 100.0 / self.count as f64
            },
            rps: self.count as f64 / window_s,
            p50_us: self.hist.quantile(0.50),
            p95_us: self.hist.quantile(0.95),
            p99_us: self.hist.quantile(0.99),
            max_us: self.max_us,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            spans: None,
        }
    }
}

/// service, method, route, count, errors, p50, p95.
type SpanRow = (String, Option<String>, Option<String>, i64, i64, f64, f64);

/// Server spans since `since_ms` per service, and per service, method and
/// route: the method and route from the span's `http.request.method` /
/// `http.method` and `http.route` attributes, else from a `METHOD /route`
/// span name (the OpenTelemetry HTTP server convention).
async fn span_stats(
    t: &Telemetry,
    since_ms: i64,
    service: Option<String>,
) -> Result<
    (
        std::collections::HashMap<String, coral_proto::SpanStats>,
        std::collections::HashMap<(String, String, String), coral_proto::SpanStats>,
    ),
    QueryError,
> {
    let rows: Vec<SpanRow> = t
        .query(move |c| {
            c.prepare(
                "WITH s AS (
                    SELECT service, status_code, duration_us,
                      coalesce(nullif(regexp_extract(attributes, '\"http\\.request\\.method\":\"([A-Z]+)\"', 1), ''),
                               nullif(regexp_extract(attributes, '\"http\\.method\":\"([A-Z]+)\"', 1), ''),
                               nullif(regexp_extract(name, '^([A-Z]+) /', 1), '')) AS method,
                      coalesce(nullif(regexp_extract(attributes, '\"http\\.route\":\"([^\"]*)\"', 1), ''),
                               nullif(regexp_extract(name, '^[A-Z]+ (/\\S*)', 1), '')) AS route
                    FROM spans
                    WHERE start_ts >= make_timestamp(?::BIGINT) AND kind = 'server'
                      AND (?::VARCHAR IS NULL OR service = ?::VARCHAR))
                 SELECT service, method, route, count(*), count(*) FILTER (WHERE status_code = 'error'),
                        quantile_cont(duration_us, 0.5), quantile_cont(duration_us, 0.95)
                 FROM s GROUP BY GROUPING SETS ((service), (service, method, route))",
            )?
            .query_map(duckdb::params![since_ms * 1000, service, service], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?))
            })?
            .collect()
        })
        .await
        .map_err(storage)?;
    let mut per_service = std::collections::HashMap::new();
    let mut per_route = std::collections::HashMap::new();
    for (svc, method, route, n, errors, p50, p95) in rows {
        let st = coral_proto::SpanStats {
            count: n as u64,
            errors: errors as u64,
            p50_us: p50 as u64,
            p95_us: p95 as u64,
        };
        match (method, route) {
            (Some(m), Some(r)) => {
                per_route.insert((svc, m, r), st);
            }
            (None, None) => {
                per_service.insert(svc, st);
            }
            _ => {}
        }
    }
    Ok((per_service, per_route))
}

/// RED figures per service and per route since `q.since_ms` (rounded down
/// to its minute). Rates are over the window from the later of that minute
/// and the first minute with data, to now.
pub async fn metrics(
    t: &Telemetry,
    q: coral_proto::MetricsQuery,
) -> Result<coral_proto::MetricsReport, QueryError> {
    use coral_agent::ebpf::hist::Hist;
    use std::collections::BTreeMap;
    let since = floor_minute(q.since_ms);
    let service = q.service.clone();
    let rows = t
        .query(move |c| {
            c.prepare(&format!(
                "SELECT {RED_COLUMNS} FROM http_red
                 WHERE ts >= make_timestamp(?::BIGINT) AND (?::VARCHAR IS NULL OR service = ?::VARCHAR)"
            ))?
            .query_map(duckdb::params![since * 1000, service, service], red_row)?
            .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(storage)?;
    let now = coral_proto::now_ms();
    let first = rows.iter().map(|r| r.minute_ms).min().unwrap_or(since);
    let window_s = ((now - since.max(first)) as f64 / 1000.0).max(1.0);
    let mut services: BTreeMap<String, RedAcc> = BTreeMap::new();
    let mut routes: BTreeMap<(String, String, String), RedAcc> = BTreeMap::new();
    for r in &rows {
        let h = Hist::decode(&r.hist);
        services.entry(r.service.clone()).or_default().add(r, &h);
        routes
            .entry((r.service.clone(), r.method.clone(), r.route.clone()))
            .or_default()
            .add(r, &h);
    }
    let mut services: Vec<_> = services
        .into_iter()
        .map(|(s, a)| a.summary(s, None, None, window_s))
        .collect();
    let mut routes: Vec<_> = routes
        .into_iter()
        .map(|((s, m, r), a)| a.summary(s, Some(m), Some(r), window_s))
        .collect();
    services.sort_by(|a, b| b.count.cmp(&a.count).then(a.service.cmp(&b.service)));
    routes.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then(a.service.cmp(&b.service))
            .then(a.route.cmp(&b.route))
    });
    // The same window's server spans, matched by service name (OTLP
    // `service.name` = the connected service's name) and route.
    let (span_services, span_routes) = span_stats(t, since, q.service.clone()).await?;
    for s in &mut services {
        s.spans = span_services.get(&s.service).cloned();
    }
    for r in &mut routes {
        if let (Some(m), Some(route)) = (&r.method, &r.route) {
            r.spans = span_routes
                .get(&(r.service.clone(), m.clone(), route.clone()))
                .cloned();
        }
    }
    Ok(coral_proto::MetricsReport {
        since_ms: since,
        until_ms: now,
        services,
        routes,
    })
}

/// Connection-map edges since `q.since_ms` (rounded down to its minute).
pub async fn service_map(
    t: &Telemetry,
    q: coral_proto::MapQuery,
) -> Result<coral_proto::ServiceMap, QueryError> {
    let since = floor_minute(q.since_ms);
    let edges = t
        .query(move |c| {
            c.prepare(
                "SELECT src, dst_addr, dst_service, sum(connections)::UBIGINT, sum(failures)::UBIGINT,
                        sum(bytes_sent)::UBIGINT, sum(bytes_received)::UBIGINT,
                        sum(rtt_sum_us)::UBIGINT, sum(rtt_count)::UBIGINT, max(rtt_max_us)
                 FROM conn_edges WHERE ts >= make_timestamp(?::BIGINT)
                 GROUP BY src, dst_addr, dst_service
                 ORDER BY src, dst_addr LIMIT 10000",
            )?
            .query_map(duckdb::params![since * 1000], |r| {
                let rtt_sum: u64 = r.get(7)?;
                let rtt_count: u64 = r.get(8)?;
                Ok(coral_proto::MapEdge {
                    src: r.get(0)?,
                    dst_addr: r.get(1)?,
                    dst_service: r.get(2)?,
                    connections: r.get(3)?,
                    failures: r.get(4)?,
                    bytes_sent: r.get(5)?,
                    bytes_received: r.get(6)?,
                    rtt_avg_us: rtt_sum.checked_div(rtt_count).unwrap_or(0),
                    rtt_max_us: r.get(9)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(storage)?;
    Ok(coral_proto::ServiceMap {
        since_ms: since,
        until_ms: coral_proto::now_ms(),
        edges,
    })
}
