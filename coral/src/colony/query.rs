//! Read queries over the colony's telemetry aggregate (spans, logs).

use coral_agent::telemetry::{LOG_COLUMNS, SPAN_COLUMNS, Telemetry, log_row, span_row};
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
