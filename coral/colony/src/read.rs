//! The colony's read layer: each question Coral answers is computed here
//! and only here, over every source the colony holds — eBPF RED and
//! connection edges, OTLP spans and logs, the registry's health and
//! changes — and returns the typed answers of `coral_proto::read`, each
//! row labelled with its sources and each answer with its coverage.
//! `coral query`, the MCP tools and the analyzer are thin adapters over it.

use super::Shared;
use coral_proto::{
    AgentCoverage, AgentState, Change, Changes, Checkpoints, Coverage, HotspotQuery, Hotspots,
    LogQuery, LogRecord, MapEdge, MapQuery, Operation, QueryError, RedFigures, RedQuery, RedReport,
    RedRow, ServiceMap, SignalKind, Source, SourceRed, SpanRecord, TraceQuery, TraceSummary,
    Window,
};
use coral_store::hist::Hist;
use coral_store::telemetry::{LOG_COLUMNS, SPAN_COLUMNS, Telemetry, log_row, span_row};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// Most rows one list query returns.
pub const MAX_LIMIT: u32 = 1_000;
/// Most spans one trace returns.
pub const MAX_TRACE_SPANS: usize = 10_000;
/// How long an answer waits for rows an agent committed that the colony
/// has not stored yet (they are normally forwarded within ~100 ms).
const CATCH_UP: Duration = Duration::from_secs(1);
/// How long the colony waits for an agent to say what it holds.
const HEAD_TIMEOUT: Duration = Duration::from_millis(500);

/// The first columns of a row as a tuple: `cols!(r; 0, 1, 2)`.
macro_rules! cols {
    ($r:expr; $($i:literal),*) => { ($($r.get($i)?,)*) };
}

fn storage(e: coral_store::telemetry::TelemetryError) -> QueryError {
    QueryError::Storage(e.to_string())
}

fn checked(w: &Window) -> Result<(), QueryError> {
    w.check().map_err(QueryError::Invalid)
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

fn check_since(since_ms: i64) -> Result<(), QueryError> {
    if since_ms < 0 || since_ms > coral_proto::now_ms() {
        return Err(QueryError::Invalid(
            "the window must start between 1970 and now; ask for at most a year".into(),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Coverage: what the agents hold that the colony does not.

/// The colony's stored checkpoints for one agent.
async fn stored(shared: &Shared, agent_id: &str) -> Result<Checkpoints, QueryError> {
    let mut c = Checkpoints::default();
    let mut unknown = false;
    for kind in SignalKind::ALL {
        match *shared.signal_seq(agent_id, kind).lock().await {
            Some(v) => c.set(kind, v),
            None => unknown = true,
        }
    }
    if unknown {
        // Not pushed to since the colony started: what the store holds.
        let held = shared
            .telemetry
            .checkpoints(agent_id)
            .await
            .map_err(storage)?;
        for kind in SignalKind::ALL {
            c.set(kind, c.get(kind).max(held.get(kind)));
        }
    }
    Ok(c)
}

fn behind(head: &Checkpoints, have: &Checkpoints) -> u64 {
    SignalKind::ALL
        .iter()
        .map(|k| head.get(*k).saturating_sub(have.get(*k)))
        .sum()
}

/// Asks every online agent what it has committed, waits up to
/// [`CATCH_UP`] for the colony to store it, and says what is still
/// missing: rows in flight, agents offline or silent.
pub(crate) async fn coverage(shared: &Shared) -> Coverage {
    let started = Instant::now();
    let agents = shared.agents().unwrap_or_default();
    let heads = futures::future::join_all(agents.iter().map(|a| async move {
        if a.state != AgentState::Online {
            return None;
        }
        let addr = a.rpc_addr.as_deref()?;
        let client = tokio::time::timeout(HEAD_TIMEOUT, shared.agent_client(&a.id, addr))
            .await
            .ok()?
            .ok()?;
        let mut ctx = tarpc::context::current();
        ctx.deadline = Instant::now() + HEAD_TIMEOUT;
        client.telemetry_head(ctx).await.ok()
    }))
    .await;
    let mut out = Vec::with_capacity(agents.len());
    for (a, head) in agents.iter().zip(&heads) {
        let mut rows_behind = 0;
        if let Some(head) = head {
            loop {
                let have = stored(shared, &a.id).await.unwrap_or_default();
                rows_behind = behind(head, &have);
                if rows_behind == 0 || started.elapsed() >= CATCH_UP {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let state = match (a.state, head) {
            (AgentState::Online, None) => "unreachable",
            (s, _) => s.as_str(),
        };
        out.push(AgentCoverage {
            agent: a.name.clone(),
            agent_id: a.id.clone(),
            state: state.to_string(),
            last_seen_ms: a.last_seen_ms,
            rows_behind,
        });
    }
    Coverage {
        complete: out
            .iter()
            .all(|a| a.rows_behind == 0 && matches!(a.state.as_str(), "online" | "stopped")),
        agents: out,
        waited_ms: started.elapsed().as_millis() as u64,
    }
}

// ---------------------------------------------------------------------------
// RED.

/// Adds up requests of one row key in one window.
#[derive(Default)]
struct Acc {
    count: u64,
    errors: u64,
    client_errors: u64,
    bytes_in: u64,
    bytes_out: u64,
    sum_us: u64,
    max_us: u64,
    /// eBPF: the merged histogram. OTLP: exact quantiles from the store.
    hist: Hist,
    quantiles: Option<(u64, u64, u64)>,
    /// eBPF: failed requests by the protocol's own code.
    error_codes: BTreeMap<String, u64>,
    /// Recent window only: per second, (count, errors, sum_us).
    seconds: BTreeMap<i64, (u64, u64, u64)>,
}

impl Acc {
    fn figures(&self, window_ms: i64) -> RedFigures {
        let (p50, p95, p99) = self.quantiles.unwrap_or_else(|| {
            (
                self.hist.quantile(0.50),
                self.hist.quantile(0.95),
                self.hist.quantile(0.99),
            )
        });
        RedFigures {
            count: self.count,
            errors: self.errors,
            client_errors: self.client_errors,
            error_pct: pct(self.errors, self.count),
            rps: round2(self.count as f64 * 1000.0 / window_ms.max(1) as f64),
            p50_us: p50,
            p95_us: p95,
            p99_us: p99,
            max_us: self.max_us,
            sum_us: self.sum_us,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            error_codes: self.error_codes.clone(),
        }
    }
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        round2(part as f64 * 100.0 / whole as f64)
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// The latency over which a request counts as slow against a baseline.
pub fn slow_threshold_us(baseline_p95_us: u64) -> u64 {
    (baseline_p95_us * 3 / 2).max(baseline_p95_us + 10_000)
}

/// The first second of the window that moved away from the baseline: its
/// mean latency over the slow threshold, or its error share 5 points over
/// the baseline's, confirmed by the next second with requests (or it is
/// the last).
fn onset(seconds: &BTreeMap<i64, (u64, u64, u64)>, base: &RedFigures) -> Option<i64> {
    if base.count == 0 {
        return None;
    }
    let threshold = slow_threshold_us(base.p95_us);
    let bad = |&(n, e, sum): &(u64, u64, u64)| {
        n > 0 && (sum / n > threshold || (e > 0 && pct(e, n) >= base.error_pct + 5.0))
    };
    let list: Vec<(&i64, &(u64, u64, u64))> = seconds.iter().collect();
    list.iter().enumerate().find_map(|(i, (ts, v))| {
        (bad(v) && list.get(i + 1).is_none_or(|(_, next)| bad(next))).then_some(**ts)
    })
}

/// (service, method, route): `None`s for the service's own row.
type Key = (String, Option<String>, Option<String>);

#[derive(Default)]
struct Sides {
    recent: Acc,
    baseline: Acc,
    /// eBPF, PostgreSQL: the user and database of the statement's
    /// connections (the last seen).
    db: Option<(String, String)>,
}

impl Sides {
    fn source_red(&self, w: &Window) -> SourceRed {
        let recent = self.recent.figures(w.until_ms - w.since_ms);
        let baseline = (w.baseline_ms > 0).then(|| self.baseline.figures(w.baseline_ms));
        let onset_ms = baseline
            .as_ref()
            .and_then(|b| onset(&self.recent.seconds, b));
        SourceRed {
            slow_threshold_us: baseline
                .as_ref()
                .filter(|b| b.count > 0)
                .map(|b| slow_threshold_us(b.p95_us)),
            recent,
            baseline,
            onset_ms,
        }
    }

    fn any(&self) -> bool {
        self.recent.count > 0 || self.baseline.count > 0
    }
}

/// One eBPF RED row as read.
type EbpfRow = (
    i64,
    String,
    String,
    String,
    u64,
    u64,
    u64,
    u64,
    u64,
    u64,
    u64,
    String,
    String,
    String,
    String,
);

/// `code:count` pairs joined by commas (`RedRecord::error_codes`).
fn parse_error_codes(s: &str) -> Vec<(String, u64)> {
    s.split(',')
        .filter_map(|p| {
            let (c, n) = p.rsplit_once(':')?;
            Some((c.to_string(), n.parse().ok()?))
        })
        .collect()
}

async fn ebpf_red(
    t: &Telemetry,
    service: Option<String>,
    w: Window,
) -> Result<HashMap<Key, Sides>, QueryError> {
    let rows: Vec<EbpfRow> = t
        .query(move |c| {
            c.prepare(
                "SELECT epoch_ms(ts), service, method, route, count, errors, client_errors,
                        bytes_in, bytes_out, sum_us, max_us, hist, error_codes, db_user, db_name
                 FROM http_red
                 WHERE ts >= make_timestamp(?::BIGINT) AND ts < make_timestamp(?::BIGINT)
                   AND (?::VARCHAR IS NULL OR service = ?::VARCHAR)",
            )?
            .query_map(
                duckdb::params![
                    w.baseline_since_ms() * 1000,
                    w.until_ms * 1000,
                    service,
                    service
                ],
                |r| Ok(cols!(r; 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14)),
            )?
            .collect()
        })
        .await
        .map_err(storage)?;
    let mut out: HashMap<Key, Sides> = HashMap::new();
    for (ts, svc, method, route, n, e, ce, bi, bo, sum, max, hist, codes, db_user, db_name) in rows
    {
        let h = Hist::decode(&hist);
        let codes = parse_error_codes(&codes);
        let recent = ts >= w.since_ms;
        for key in [
            (svc.clone(), None, None),
            (svc.clone(), Some(method.clone()), Some(route.clone())),
        ] {
            let route_row = key.2.is_some();
            let sides = out.entry(key).or_default();
            if route_row && !db_user.is_empty() {
                sides.db = Some((db_user.clone(), db_name.clone()));
            }
            let a = if recent {
                &mut sides.recent
            } else {
                &mut sides.baseline
            };
            a.count += n;
            a.errors += e;
            a.client_errors += ce;
            a.bytes_in += bi;
            a.bytes_out += bo;
            a.sum_us += sum;
            a.max_us = a.max_us.max(max);
            a.hist.merge(&h);
            for (code, k) in &codes {
                *a.error_codes.entry(code.clone()).or_default() += k;
            }
            if recent {
                let s = a.seconds.entry(ts - ts.rem_euclid(1000)).or_default();
                s.0 += n;
                s.1 += e;
                s.2 += sum;
            }
        }
    }
    Ok(out)
}

/// The method and route of a server span: `http.request.method` /
/// `http.method` and `http.route`, else a `METHOD /route` span name (the
/// OpenTelemetry HTTP server convention).
const SPAN_METHOD_ROUTE: &str = "
    coalesce(nullif(regexp_extract(attributes, '\"http\\.request\\.method\":\"([A-Z]+)\"', 1), ''),
             nullif(regexp_extract(attributes, '\"http\\.method\":\"([A-Z]+)\"', 1), ''),
             nullif(regexp_extract(name, '^([A-Z]+) /', 1), '')) AS method,
    coalesce(nullif(regexp_extract(attributes, '\"http\\.route\":\"([^\"]*)\"', 1), ''),
             nullif(regexp_extract(attributes, '\"url\\.path\":\"([^\"]*)\"', 1), ''),
             nullif(regexp_extract(attributes, '\"http\\.target\":\"([^\"?]*)', 1), ''),
             nullif(regexp_extract(name, '^[A-Z]+ (/\\S*)', 1), '')) AS route";

/// service, method, route, grouping id, recent, count, errors, p50, p95,
/// p99, sum, max.
type SpanAggRow = (
    String,
    Option<String>,
    Option<String>,
    i64,
    bool,
    i64,
    i64,
    f64,
    f64,
    f64,
    f64,
    i64,
);
/// service, method, route, grouping id, second, count, errors, sum.
type SpanSecondRow = (
    String,
    Option<String>,
    Option<String>,
    i64,
    i64,
    i64,
    i64,
    f64,
);

/// A service's requests as its OTLP spans report them: server spans, or
/// root spans where a service reports no server kind.
async fn otlp_red(
    t: &Telemetry,
    service: Option<String>,
    w: Window,
) -> Result<HashMap<Key, Sides>, QueryError> {
    let (aggs, seconds): (Vec<SpanAggRow>, Vec<SpanSecondRow>) = t
        .query(move |c| {
            let from = w.baseline_since_ms() * 1000;
            let split = w.since_ms * 1000;
            let until = w.until_ms * 1000;
            let base = format!(
                "WITH s AS (
                    SELECT service, status_code = 'error' AS err, duration_us, start_ts,
                           start_ts >= make_timestamp({split}::BIGINT) AS recent, {SPAN_METHOD_ROUTE}
                    FROM spans
                    WHERE start_ts >= make_timestamp({from}::BIGINT) AND start_ts < make_timestamp({until}::BIGINT)
                      AND (kind = 'server' OR parent_span_id IS NULL)
                      AND (?::VARCHAR IS NULL OR service = ?::VARCHAR))"
            );
            let aggs = c
                .prepare(&format!(
                    "{base}
                     SELECT service, method, route, grouping(method, route), recent, count(*),
                            count(*) FILTER (WHERE err), quantile_cont(duration_us, 0.5),
                            quantile_cont(duration_us, 0.95), quantile_cont(duration_us, 0.99),
                            sum(duration_us)::DOUBLE, max(duration_us)
                     FROM s GROUP BY GROUPING SETS ((service, recent), (service, method, route, recent))"
                ))?
                .query_map(duckdb::params![service, service], |r| {
                    Ok(cols!(r; 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11))
                })?
                .collect::<duckdb::Result<Vec<_>>>()?;
            let seconds = c
                .prepare(&format!(
                    "{base}
                     SELECT service, method, route, grouping(method, route),
                            epoch_ms(date_trunc('second', start_ts)) AS sec, count(*),
                            count(*) FILTER (WHERE err), sum(duration_us)::DOUBLE
                     FROM s WHERE recent
                     GROUP BY GROUPING SETS ((service, sec), (service, method, route, sec))"
                ))?
                .query_map(duckdb::params![service, service], |r| {
                    Ok(cols!(r; 0, 1, 2, 3, 4, 5, 6, 7))
                })?
                .collect::<duckdb::Result<Vec<_>>>()?;
            Ok((aggs, seconds))
        })
        .await
        .map_err(storage)?;
    // Route-level rows need a method and a route; spans without them count
    // only for their service.
    let key = |svc: String, m: Option<String>, r: Option<String>, g: i64| -> Option<Key> {
        match (g, m, r) {
            (0, Some(m), Some(r)) => Some((svc, Some(m), Some(coral_store::route::normalise(&r)))),
            (0, _, _) => None,
            _ => Some((svc, None, None)),
        }
    };
    let mut out: HashMap<Key, Sides> = HashMap::new();
    for (svc, m, r, g, recent, n, e, p50, p95, p99, sum, max) in aggs {
        let Some(k) = key(svc, m, r, g) else { continue };
        let sides = out.entry(k).or_default();
        let a = if recent {
            &mut sides.recent
        } else {
            &mut sides.baseline
        };
        // Two raw routes may normalise to one: the larger's quantiles win.
        if a.count < n as u64 {
            a.quantiles = Some((p50 as u64, p95 as u64, p99 as u64));
        }
        a.count += n as u64;
        a.errors += e as u64;
        a.sum_us += sum as u64;
        a.max_us = a.max_us.max(max.max(0) as u64);
    }
    for (svc, m, r, g, sec, n, e, sum) in seconds {
        let Some(k) = key(svc, m, r, g) else { continue };
        let s = out
            .entry(k)
            .or_default()
            .recent
            .seconds
            .entry(sec)
            .or_default();
        s.0 += n as u64;
        s.1 += e as u64;
        s.2 += sum as u64;
    }
    Ok(out)
}

/// RED per service and per route over the window (and its baseline), from
/// eBPF and OTLP side by side.
pub(crate) async fn red(shared: &Shared, q: RedQuery) -> Result<RedReport, QueryError> {
    checked(&q.window)?;
    let w = q.window;
    let coverage = coverage(shared).await;
    let ebpf = ebpf_red(&shared.telemetry, q.service.clone(), w).await?;
    let mut otlp = otlp_red(&shared.telemetry, q.service.clone(), w).await?;
    let mut rows: Vec<RedRow> = Vec::new();
    let mut add = |key: Key, e: Option<Sides>, o: Option<Sides>| {
        let e = e.filter(Sides::any);
        let o = o.filter(Sides::any);
        let mut sources = Vec::new();
        if e.is_some() {
            sources.push(Source::Ebpf);
        }
        if o.is_some() {
            sources.push(Source::Otlp);
        }
        if sources.is_empty() {
            return;
        }
        let db = e.as_ref().and_then(|s| s.db.clone());
        rows.push(RedRow {
            service: key.0,
            method: key.1,
            route: key.2,
            sources,
            ebpf: e.map(|s| s.source_red(&w)),
            otlp: o.map(|s| s.source_red(&w)),
            db_user: db.as_ref().map(|d| d.0.clone()),
            db_name: db.map(|d| d.1),
        });
    };
    for (key, e) in ebpf {
        let o = otlp.remove(&key);
        add(key, Some(e), o);
    }
    for (key, o) in otlp {
        add(key, None, Some(o));
    }
    let busy = |r: &RedRow| r.primary().map_or(0, |(_, s)| s.recent.count);
    rows.sort_by(|a, b| {
        busy(b)
            .cmp(&busy(a))
            .then(a.service.cmp(&b.service))
            .then(a.route.cmp(&b.route))
            .then(a.method.cmp(&b.method))
    });
    let (services, routes) = rows.into_iter().partition(|r| r.route.is_none());
    Ok(RedReport {
        window: w,
        services,
        routes,
        coverage,
    })
}

// ---------------------------------------------------------------------------
// The service map.

/// The first of `keys` present as a string attribute.
pub fn attr(attributes: &str, keys: &[&str]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(attributes).ok()?;
    keys.iter()
        .find_map(|k| v.get(*k).and_then(|x| x.as_str()).map(str::to_string))
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

type EdgeRow = (
    String,
    String,
    Option<String>,
    u64,
    u64,
    u64,
    u64,
    u64,
    u64,
    u64,
    String,
    u64,
    u64,
    u64,
    u64,
);

/// Who calls whom over the window: eBPF connections and OTLP calls, merged
/// where both name the same two ends.
pub(crate) async fn service_map(shared: &Shared, q: MapQuery) -> Result<ServiceMap, QueryError> {
    checked(&q.window)?;
    let w = q.window;
    let coverage = coverage(shared).await;
    let (from, until) = (w.since_ms * 1000, w.until_ms * 1000);
    let ebpf: Vec<EdgeRow> = shared
        .telemetry
        .query(move |c| {
            c.prepare(
                "SELECT src, dst_addr, dst_service, sum(connections)::UBIGINT, sum(failures)::UBIGINT,
                        sum(bytes_sent)::UBIGINT, sum(bytes_received)::UBIGINT,
                        sum(rtt_sum_us)::UBIGINT, sum(rtt_count)::UBIGINT, max(rtt_max_us),
                        max(protocol), sum(requests)::UBIGINT, sum(request_errors)::UBIGINT,
                        sum(request_sum_us)::UBIGINT, max(request_max_us)
                 FROM conn_edges WHERE ts >= make_timestamp(?::BIGINT) AND ts < make_timestamp(?::BIGINT)
                 GROUP BY src, dst_addr, dst_service
                 ORDER BY src, dst_addr LIMIT 10000",
            )?
            .query_map(duckdb::params![from, until], |r| {
                Ok(cols!(r; 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14))
            })?
            .collect()
        })
        .await
        .map_err(storage)?;
    // Parent → child across services, and client spans to a named peer (a
    // database, or a service that does not report spans).
    let spans: Vec<(String, String, Option<String>, i64, i64, f64)> = shared
        .telemetry
        .query(move |c| {
            c.prepare(
                "SELECT p.service, c.service, NULL, count(*), count(*) FILTER (WHERE c.status_code = 'error'), sum(c.duration_us)::DOUBLE
                 FROM spans c JOIN spans p ON c.trace_id = p.trace_id AND c.parent_span_id = p.span_id
                 WHERE c.start_ts >= make_timestamp(?::BIGINT) AND c.start_ts < make_timestamp(?::BIGINT)
                   AND p.service <> c.service
                 GROUP BY p.service, c.service
                 UNION ALL
                 SELECT service, '', attributes, count(*), count(*) FILTER (WHERE status_code = 'error'), sum(duration_us)::DOUBLE
                 FROM spans
                 WHERE start_ts >= make_timestamp(?::BIGINT) AND start_ts < make_timestamp(?::BIGINT) AND kind = 'client'
                 GROUP BY service, attributes",
            )?
            .query_map(duckdb::params![from, until, from, until], |r| {
                Ok(cols!(r; 0, 1, 2, 3, 4, 5))
            })?
            .collect()
        })
        .await
        .map_err(storage)?;
    let mut edges: BTreeMap<(String, String), MapEdge> = BTreeMap::new();
    // Several peer addresses may serve one connected service: RTTs add up.
    let mut rtt: HashMap<(String, String), (u64, u64)> = HashMap::new();
    let mut req_sum: HashMap<(String, String), u64> = HashMap::new();
    for (
        src,
        addr,
        dst,
        conns,
        fails,
        sent,
        recv,
        rtt_sum,
        rtt_n,
        rtt_max,
        protocol,
        requests,
        request_errors,
        request_sum,
        request_max,
    ) in ebpf
    {
        let to = dst.unwrap_or_else(|| addr.clone());
        let key = (src.clone(), to.clone());
        let e = edges.entry(key.clone()).or_insert_with(|| MapEdge {
            from: src,
            to,
            to_addr: Some(addr),
            sources: vec![Source::Ebpf],
            ..MapEdge::default()
        });
        e.connections += conns;
        e.failures += fails;
        e.bytes_sent += sent;
        e.bytes_received += recv;
        e.rtt_max_us = e.rtt_max_us.max(rtt_max);
        if !protocol.is_empty() {
            e.protocol = Some(protocol);
        }
        e.requests += requests;
        e.request_errors += request_errors;
        e.request_max_us = e.request_max_us.max(request_max);
        let s = req_sum.entry(key.clone()).or_default();
        *s += request_sum;
        e.request_mean_us = s.checked_div(e.requests).unwrap_or(0);
        let r = rtt.entry(key).or_default();
        r.0 += rtt_sum;
        r.1 += rtt_n;
        e.rtt_avg_us = r.0.checked_div(r.1).unwrap_or(0);
    }
    // Parent→child edges win over the client spans that produced them.
    let mut direct = std::collections::HashSet::new();
    let mut otlp: BTreeMap<(String, String), (u64, u64, f64)> = BTreeMap::new();
    for (from, to, attrs, n, errs, total) in spans {
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
        if from == to {
            continue;
        }
        let e = otlp.entry((from, to)).or_default();
        e.0 += n as u64;
        e.1 += errs as u64;
        e.2 += total;
    }
    for ((from, to), (n, errs, total)) in otlp {
        let e = edges
            .entry((from.clone(), to.clone()))
            .or_insert_with(|| MapEdge {
                from,
                to,
                ..MapEdge::default()
            });
        e.sources.push(Source::Otlp);
        e.calls = n;
        e.errors = errs;
        e.mean_us = (total / n.max(1) as f64) as u64;
    }
    Ok(ServiceMap {
        window: w,
        edges: edges.into_values().collect(),
        coverage,
    })
}

// ---------------------------------------------------------------------------
// Where a service's time goes.

/// One operation under a service's requests (OTLP).
#[derive(Debug, Clone)]
struct SpanOp {
    service: String,
    name: String,
    kind: String,
    count: i64,
    errors: i64,
    total_us: f64,
    p95_us: f64,
    attributes: String,
}

/// Every span under the service's requests between `from_us` and `to_us`
/// (their descendants), grouped by operation, largest total time first;
/// and the total time of the requests.
async fn span_ops(
    t: &Telemetry,
    service: String,
    from_us: i64,
    to_us: i64,
) -> Result<(f64, Vec<SpanOp>), QueryError> {
    t.query(move |c| {
        let total: f64 = c.query_row(
            "SELECT coalesce(sum(duration_us), 0)::DOUBLE FROM spans
             WHERE service = ? AND (kind = 'server' OR parent_span_id IS NULL)
               AND start_ts >= make_timestamp(?::BIGINT) AND start_ts < make_timestamp(?::BIGINT)",
            duckdb::params![service, from_us, to_us],
            |r| r.get(0),
        )?;
        let ops = c
            .prepare(
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
            )?
            .query_map(
                duckdb::params![from_us, to_us, service, from_us, to_us],
                |r| {
                    Ok(SpanOp {
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
        Ok((total, ops))
    })
    .await
    .map_err(storage)
}

/// Where a service's request time goes: its routes (from its primary
/// source), and with OTLP the operations under its requests (its own work
/// and its calls downstream), window against baseline.
pub(crate) async fn hotspots(shared: &Shared, q: HotspotQuery) -> Result<Hotspots, QueryError> {
    checked(&q.window)?;
    let w = q.window;
    let red = red(
        shared,
        RedQuery {
            service: Some(q.service.clone()),
            window: w,
        },
    )
    .await?;
    let Some(svc) = red.services.first() else {
        return Err(QueryError::Invalid(format!(
            "no requests recorded for service '{}' in the window or its baseline (see 'coral query metrics')",
            q.service
        )));
    };
    let (source, main) = svc.primary().expect("a listed service has a source");
    let requests = main.recent.count;
    let base = main.baseline.as_ref().filter(|b| b.count > 0);
    let mean = |f: &RedFigures| f.sum_us.checked_div(f.count).unwrap_or(0);
    let mut operations = Vec::new();
    for r in &red.routes {
        let Some(s) = (match source {
            Source::Ebpf => r.ebpf.as_ref(),
            Source::Otlp => r.otlp.as_ref(),
        }) else {
            continue;
        };
        let b = s.baseline.as_ref().filter(|b| b.count > 0);
        operations.push(Operation {
            source,
            kind: "route".into(),
            service: r.service.clone(),
            name: format!(
                "{} {}",
                r.method.as_deref().unwrap_or(""),
                r.route.as_deref().unwrap_or("")
            )
            .trim()
            .to_string(),
            peer: None,
            // A PostgreSQL statement the database served, seen on the
            // wire: it can be planned with EXPLAIN as its connections' user.
            statement: (source == Source::Ebpf && r.method.as_deref() == Some("SQL"))
                .then(|| r.route.clone())
                .flatten(),
            db_name: r.db_name.clone(),
            db_user: r.db_user.clone(),
            count: s.recent.count,
            per_request: round2(s.recent.count as f64 / requests.max(1) as f64),
            errors: s.recent.errors,
            mean_us: mean(&s.recent),
            p95_us: s.recent.p95_us,
            share_pct: pct(s.recent.sum_us, main.recent.sum_us),
            baseline_count: b.map(|b| b.count),
            baseline_mean_us: b.map(mean),
            baseline_p95_us: b.map(|b| b.p95_us),
            onset_ms: s.onset_ms,
        });
    }
    if svc.otlp.is_some() {
        let (total, recent) = span_ops(
            &shared.telemetry,
            q.service.clone(),
            w.since_ms * 1000,
            w.until_ms * 1000,
        )
        .await?;
        let (_, before) = span_ops(
            &shared.telemetry,
            q.service.clone(),
            w.baseline_since_ms() * 1000,
            w.since_ms * 1000,
        )
        .await?;
        let span_requests = svc.otlp.as_ref().map_or(0, |o| o.recent.count);
        let before: HashMap<(String, String), SpanOp> = before
            .into_iter()
            .map(|o| ((o.service.clone(), o.name.clone()), o))
            .collect();
        for o in recent {
            let b = before.get(&(o.service.clone(), o.name.clone()));
            operations.push(Operation {
                source: Source::Otlp,
                kind: o.kind.clone(),
                service: o.service.clone(),
                name: o.name.clone(),
                peer: peer_of(&o.attributes),
                statement: detail_of(&o.attributes),
                db_name: attr(&o.attributes, &["db.name", "db.namespace"]),
                db_user: attr(&o.attributes, &["db.user"]),
                count: o.count as u64,
                per_request: round2(o.count as f64 / span_requests.max(1) as f64),
                errors: o.errors as u64,
                mean_us: (o.total_us / o.count.max(1) as f64) as u64,
                p95_us: o.p95_us as u64,
                share_pct: if total > 0.0 {
                    (o.total_us / total * 1000.0).round() / 10.0
                } else {
                    0.0
                },
                baseline_count: b.map(|b| b.count as u64),
                baseline_mean_us: b.map(|b| (b.total_us / b.count.max(1) as f64) as u64),
                baseline_p95_us: b.map(|b| b.p95_us as u64),
                onset_ms: None,
            });
        }
    }
    operations.sort_by(|a, b| {
        b.share_pct
            .partial_cmp(&a.share_pct)
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    Ok(Hotspots {
        service: q.service,
        window: w,
        source: Some(source),
        requests,
        mean_request_us: mean(&main.recent),
        baseline_requests: base.map_or(0, |b| b.count),
        baseline_mean_request_us: base.map(mean),
        operations,
        slow_threshold_us: main.slow_threshold_us,
        slow_since_ms: main.onset_ms,
        coverage: red.coverage,
    })
}

// ---------------------------------------------------------------------------
// What moved, along every dimension (issue 15).

/// `coalesce` of the first of `keys` present in the JSON text column
/// `col` (compact JSON as the store writes it; DuckDB's JSON extension is
/// not bundled): a string value (still JSON-escaped, see [`unescape`]),
/// else a number or boolean as text.
fn json_first(col: &str, keys: &[&str]) -> String {
    let parts: Vec<String> = keys
        .iter()
        .map(|k| {
            let k = k.replace('.', "\\.");
            format!(
                "nullif(regexp_extract({col}, '\"{k}\":\"((?:[^\"\\\\]|\\\\.)*)\"', 1), ''),
                 nullif(regexp_extract({col}, '\"{k}\":(-?[0-9.]+|true|false)', 1), '')"
            )
        })
        .collect();
    format!("coalesce({})", parts.join(", "))
}

/// The peer a client or producer span calls.
fn peer_sql() -> String {
    format!(
        "CASE WHEN kind IN ('client', 'producer') THEN {} END",
        json_first(
            "attributes",
            &[
                "peer.service",
                "server.address",
                "net.peer.name",
                "messaging.destination.name",
                "messaging.destination",
                "db.namespace",
                "db.name",
                "db.system.name",
                "db.system",
            ]
        )
    )
}

/// The dimensions a span is broken down along, as SQL over `x`.
fn dimensions() -> Vec<(&'static str, String)> {
    let exc = |key: &str| {
        format!("nullif(regexp_extract(events, '\"{key}\":\"((?:[^\"\\\\]|\\\\.)*)\"', 1), '')")
    };
    vec![
        (
            "instance",
            json_first(
                "resource",
                &["service.instance.id", "k8s.pod.name", "host.name"],
            ),
        ),
        (
            "node",
            json_first("resource", &["k8s.node.name", "host.name"]),
        ),
        ("version", json_first("resource", &["service.version"])),
        (
            "status",
            json_first(
                "attributes",
                &[
                    "http.response.status_code",
                    "http.status_code",
                    "rpc.grpc.status_code",
                ],
            ),
        ),
        ("exception", exc("exception.type")),
        (
            "message",
            format!(
                "coalesce({}, CASE WHEN err THEN nullif(status_message, '') END)",
                exc("exception.message")
            ),
        ),
        ("route", json_first("attributes", &["http.route"])),
        (
            "resend",
            json_first(
                "attributes",
                &[
                    "http.request.resend_count",
                    "http.resend_count",
                    "retry.attempt",
                ],
            ),
        ),
    ]
}

/// A log body as a message template, as SQL over the column `col`: UUIDs,
/// hex runs of 8 or more and numbers (not part of a word: `v2` and `utf8`
/// stay) become `?`, as the SQL normaliser does for a statement's
/// literals, so one message logged with different ids counts as one.
pub(crate) fn log_template_sql(col: &str) -> String {
    let uuid = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}";
    format!(
        "left(regexp_replace(regexp_replace(regexp_replace(regexp_replace({col},
            '{uuid}', '?', 'g'),
            '\\b(0x)?[0-9a-fA-F]{{8,}}\\b', '?', 'g'),
            '(^|[^A-Za-z0-9_?])[0-9]+(\\.[0-9]+)*\\b', '\\1?', 'g'),
            '\\s+', ' ', 'g'), 200)"
    )
}

/// count, errors, own errors, sum, self.
type TallyCols = (i64, i64, i64, f64, f64);

fn tally((n, e, oe, sum, own): TallyCols) -> coral_proto::SpanTally {
    coral_proto::SpanTally {
        count: n.max(0) as u64,
        errors: e.max(0) as u64,
        own_errors: oe.max(0) as u64,
        sum_us: sum.max(0.0) as u64,
        self_us: own.max(0.0) as u64,
    }
}

const TALLY_SQL: &str = "count(*), count(*) FILTER (WHERE err), count(*) FILTER (WHERE own_err),
    sum(duration_us)::DOUBLE, sum(self_us)::DOUBLE";

/// Exception text stored JSON-escaped, as read by a regular expression.
fn unescape(s: String) -> String {
    if s.contains('\\') {
        serde_json::from_str::<String>(&format!("\"{s}\"")).unwrap_or(s)
    } else {
        s
    }
}

type OpRow = (
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    bool,
    i64,
    i64,
    i64,
    f64,
    f64,
);
type FacetRow = (
    String,
    String,
    String,
    String,
    bool,
    i64,
    i64,
    i64,
    f64,
    f64,
);
type MetricRow = (String, String, String, bool, f64, f64);
type EdgeChangeRow = (String, String, String, bool, u64, u64, u64, u64, u64);
type LogChangeRow = (String, String, String, bool, i64, String);

/// What moved between the window and its baseline, along every dimension.
pub(crate) async fn breakdown(
    shared: &Shared,
    q: coral_proto::BreakdownQuery,
) -> Result<coral_proto::Breakdown, QueryError> {
    checked(&q.window)?;
    let w = q.window;
    let service = q.service.clone();
    let coverage = coverage(shared).await;
    let (from, split, until) = (
        w.baseline_since_ms() * 1000,
        w.since_ms * 1000,
        w.until_ms * 1000,
    );
    let (roots, ops, facets, metrics, edges, logs) = shared
        .telemetry
        .query(move |c| {
            let x = format!(
                "WITH s AS (
                    SELECT trace_id, span_id, parent_span_id, service, name, kind, duration_us,
                           status_code = 'error' AS err, start_ts >= make_timestamp({split}::BIGINT) AS recent,
                           attributes, resource, events, status_message
                    FROM spans
                    WHERE start_ts >= make_timestamp({from}::BIGINT) AND start_ts < make_timestamp({until}::BIGINT)),
                 kids AS (
                    SELECT trace_id, parent_span_id AS span_id, sum(duration_us) AS child_us, bool_or(err) AS child_err
                    FROM s WHERE parent_span_id IS NOT NULL GROUP BY trace_id, parent_span_id),
                 x AS (
                    SELECT s.*, greatest(s.duration_us - coalesce(k.child_us, 0), 0) AS self_us,
                           s.err AND NOT coalesce(k.child_err, false) AS own_err
                    FROM s LEFT JOIN kids k ON s.trace_id = k.trace_id AND s.span_id = k.span_id)"
            );
            let roots: Vec<(bool, i64)> = c
                .prepare(&format!(
                    "{x} SELECT recent, count(*) FROM x WHERE parent_span_id IS NULL GROUP BY recent"
                ))?
                .query_map([], |r| Ok(cols!(r; 0, 1)))?
                .collect::<duckdb::Result<_>>()?;
            let ops: Vec<OpRow> = c
                .prepare(&format!(
                    "{x} SELECT service, kind, name, {peer}, {db}, {stmt}, recent, {TALLY_SQL}
                     FROM x GROUP BY ALL ORDER BY sum(self_us) DESC LIMIT 400",
                    peer = peer_sql(),
                    db = json_first("attributes", &["db.namespace", "db.name"]),
                    stmt = json_first("attributes", &["db.query.text", "db.statement"]),
                ))?
                .query_map([], |r| {
                    Ok(cols!(r; 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11))
                })?
                .collect::<duckdb::Result<_>>()?;
            // One service: every dimension; all: the node of requests.
            let only = match &service {
                Some(svc) => format!("WHERE service = '{}'", svc.replace('\'', "''")),
                None => "WHERE kind IN ('server', 'consumer')".to_string(),
            };
            let union: Vec<String> = dimensions()
                .into_iter()
                .chain(std::iter::once(("peer", peer_sql())))
                .filter(|(d, _)| service.is_some() || *d == "node")
                .map(|(d, e)| {
                    format!(
                        "SELECT service, kind, '{d}' AS dim, {e} AS val, recent, err, own_err, duration_us, self_us FROM x {only}"
                    )
                })
                .collect();
            let facets: Vec<FacetRow> = c
                .prepare(&format!(
                    "{x}, f AS ({}) SELECT service, kind, dim, val, recent, {TALLY_SQL}
                     FROM f WHERE val IS NOT NULL GROUP BY ALL ORDER BY count(*) DESC LIMIT 3000",
                    union.join(" UNION ALL ")
                ))?
                .query_map([], |r| Ok(cols!(r; 0, 1, 2, 3, 4, 5, 6, 7, 8, 9)))?
                .collect::<duckdb::Result<_>>()?;
            let metrics: Vec<MetricRow> = c
                .prepare(&format!(
                    "WITH m AS (
                        SELECT service, name, unit, ts >= make_timestamp({split}::BIGINT) AS recent,
                               coalesce(value, sum / nullif(count, 0)) AS v
                        FROM metric_points
                        WHERE ts >= make_timestamp({from}::BIGINT) AND ts < make_timestamp({until}::BIGINT))
                     SELECT service, name, any_value(unit), recent, avg(v), max(v)
                     FROM m WHERE v IS NOT NULL GROUP BY service, name, recent LIMIT 2000"
                ))?
                .query_map([], |r| Ok(cols!(r; 0, 1, 2, 3, 4, 5)))?
                .collect::<duckdb::Result<_>>()?;
            let edges: Vec<EdgeChangeRow> = c
                .prepare(&format!(
                    "SELECT src, coalesce(dst_service, dst_addr), any_value(dst_addr),
                            ts >= make_timestamp({split}::BIGINT) AS recent,
                            sum(connections)::UBIGINT, sum(failures)::UBIGINT, sum(rtt_sum_us)::UBIGINT,
                            sum(rtt_count)::UBIGINT, max(rtt_max_us)
                     FROM conn_edges
                     WHERE ts >= make_timestamp({from}::BIGINT) AND ts < make_timestamp({until}::BIGINT)
                     GROUP BY ALL LIMIT 4000"
                ))?
                .query_map([], |r| Ok(cols!(r; 0, 1, 2, 3, 4, 5, 6, 7, 8)))?
                .collect::<duckdb::Result<_>>()?;
            // Problem messages (WARN and worse) by service, severity and
            // template; INFO and DEBUG are the bulk of most logs and name
            // no mechanism.
            let logs: Vec<LogChangeRow> = c
                .prepare(&format!(
                    "WITH l AS (
                        SELECT service, CASE WHEN severity_text <> '' THEN upper(severity_text)
                                             ELSE 'SEVERITY' || severity_number END AS sev,
                               {tmpl} AS tmpl, body, ts >= make_timestamp({split}::BIGINT) AS recent
                        FROM log_records
                        WHERE ts >= make_timestamp({from}::BIGINT) AND ts < make_timestamp({until}::BIGINT)
                          AND (severity_number >= 13
                               OR (severity_number = 0
                                   AND regexp_matches(upper(severity_text), '^(WARN|ERR|FATAL|CRIT|ALERT|EMERG)'))))
                     SELECT service, sev, tmpl, recent, count(*), left(min(body), 300)
                     FROM l GROUP BY ALL ORDER BY count(*) DESC LIMIT 2000",
                    tmpl = log_template_sql("body"),
                ))?
                .query_map([], |r| Ok(cols!(r; 0, 1, 2, 3, 4, 5)))?
                .collect::<duckdb::Result<_>>()?;
            Ok((roots, ops, facets, metrics, edges, logs))
        })
        .await
        .map_err(storage)?;
    let requests = |recent: bool| {
        roots
            .iter()
            .find(|r| r.0 == recent)
            .map_or(0, |r| r.1.max(0) as u64)
    };
    type OpKey = (
        String,
        String,
        String,
        Option<String>,
        Option<String>,
        Option<String>,
    );
    let mut op_map: BTreeMap<OpKey, (coral_proto::SpanTally, coral_proto::SpanTally)> =
        BTreeMap::new();
    for (svc, kind, name, peer, db, stmt, recent, n, e, oe, sum, own) in ops {
        let sides = op_map
            .entry((
                svc,
                kind,
                name,
                peer.map(unescape),
                db.map(unescape),
                stmt.map(unescape),
            ))
            .or_default();
        let t = tally((n, e, oe, sum, own));
        if recent {
            sides.0 = t;
        } else {
            sides.1 = t;
        }
    }
    let operations = op_map
        .into_iter()
        .map(
            |((service, kind, name, peer, db_name, statement), (recent, baseline))| {
                coral_proto::OpChange {
                    service,
                    kind,
                    name,
                    peer,
                    db_name,
                    statement,
                    recent,
                    baseline,
                }
            },
        )
        .collect();
    let mut facet_map: BTreeMap<
        (String, String, String, String),
        (coral_proto::SpanTally, coral_proto::SpanTally),
    > = BTreeMap::new();
    for (svc, kind, dim, val, recent, n, e, oe, sum, own) in facets {
        let val = unescape(val);
        let sides = facet_map.entry((svc, kind, dim, val)).or_default();
        let t = tally((n, e, oe, sum, own));
        if recent {
            sides.0 = t;
        } else {
            sides.1 = t;
        }
    }
    let facets = facet_map
        .into_iter()
        .map(
            |((service, kind, dimension, value), (recent, baseline))| coral_proto::Facet {
                service,
                kind,
                dimension,
                value,
                recent,
                baseline,
            },
        )
        .collect();
    let mut metric_map: BTreeMap<(String, String), coral_proto::MetricChange> = BTreeMap::new();
    for (service, name, unit, recent, mean, max) in metrics {
        let m = metric_map
            .entry((service.clone(), name.clone()))
            .or_insert_with(|| coral_proto::MetricChange {
                service,
                name,
                unit,
                recent_mean: None,
                recent_max: None,
                baseline_mean: None,
                baseline_max: None,
            });
        if recent {
            m.recent_mean = Some(mean);
            m.recent_max = Some(max);
        } else {
            m.baseline_mean = Some(mean);
            m.baseline_max = Some(max);
        }
    }
    let mut edge_map: BTreeMap<(String, String), coral_proto::EdgeChange> = BTreeMap::new();
    for (from, to, addr, recent, conns, fails, rtt_sum, rtt_n, rtt_max) in edges {
        let e = edge_map
            .entry((from.clone(), to.clone()))
            .or_insert_with(|| coral_proto::EdgeChange {
                from,
                to,
                to_addr: addr,
                recent: coral_proto::EdgeTally::default(),
                baseline: coral_proto::EdgeTally::default(),
            });
        let t = if recent {
            &mut e.recent
        } else {
            &mut e.baseline
        };
        t.connections = conns;
        t.failures = fails;
        t.rtt_avg_us = rtt_sum.checked_div(rtt_n).unwrap_or(0);
        t.rtt_max_us = rtt_max;
    }
    let mut log_map: BTreeMap<(String, String, String), coral_proto::LogChange> = BTreeMap::new();
    for (service, severity, template, recent, n, body) in logs {
        let l = log_map
            .entry((service.clone(), severity.clone(), template.clone()))
            .or_insert_with(|| coral_proto::LogChange {
                service,
                severity,
                template,
                example: String::new(),
                recent: 0,
                baseline: 0,
            });
        if recent {
            l.recent = n.max(0) as u64;
            l.example = body;
        } else {
            l.baseline = n.max(0) as u64;
            if l.example.is_empty() {
                l.example = body;
            }
        }
    }
    let mut logs: Vec<coral_proto::LogChange> = log_map.into_values().collect();
    logs.sort_by_key(|l| std::cmp::Reverse(l.recent + l.baseline));
    Ok(coral_proto::Breakdown {
        window: w,
        requests: requests(true),
        baseline_requests: requests(false),
        operations,
        facets,
        metrics: metric_map.into_values().collect(),
        edges: edge_map.into_values().collect(),
        logs,
        coverage,
    })
}

// ---------------------------------------------------------------------------
// Traces, logs, changes.

/// Traces are listed by their root span (the newest first), so a query
/// touches only the spans of the traces it returns; a trace whose root span
/// has not arrived is not listed (`coral query trace` still shows it).
pub(crate) async fn traces(t: &Telemetry, q: TraceQuery) -> Result<Vec<TraceSummary>, QueryError> {
    check_since(q.since_ms)?;
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
            duckdb::params![since_us, q.min_duration_us.min(i64::MAX as u64) as i64, q.service, since_us, q.service, limit],
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

pub(crate) async fn trace(t: &Telemetry, trace_id: &str) -> Result<Vec<SpanRecord>, QueryError> {
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

pub(crate) async fn logs(t: &Telemetry, q: LogQuery) -> Result<Vec<LogRecord>, QueryError> {
    check_since(q.since_ms)?;
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

/// Agents joined, restarted or left, services added, health changes since
/// `since_ms`, oldest first.
pub(crate) async fn changes(shared: &Shared, since_ms: i64) -> Result<Changes, QueryError> {
    check_since(since_ms)?;
    let list = shared
        .registry
        .lock()
        .expect("registry lock")
        .changes(since_ms)
        .map_err(|e| QueryError::Storage(e.to_string()))?;
    Ok(Changes {
        since_ms,
        changes: list
            .into_iter()
            .map(|c| Change {
                ts_ms: c.ts_ms,
                what: c.what.to_string(),
                agent: c.agent,
                service: c.service,
                detail: c.detail,
            })
            .collect(),
        coverage: coverage(shared).await,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 15: one message logged with different ids is one template.
    #[test]
    fn log_bodies_become_templates() {
        let c = duckdb::Connection::open_in_memory().unwrap();
        let t = |body: &str| -> String {
            c.query_row(
                &format!(
                    "SELECT {} FROM (SELECT ?::VARCHAR AS b)",
                    log_template_sql("b")
                ),
                [body],
                |r| r.get(0),
            )
            .unwrap()
        };
        assert_eq!(
            t(
                "write /spool/seg-000123.tmp for request 7f3a9c1e2b4d5e6f failed: No space left on device"
            ),
            "write /spool/seg-?.tmp for request ? failed: No space left on device"
        );
        assert_eq!(
            t("order 123e4567-e89b-12d3-a456-426614174000 took 12.5 ms at 10.2.0.7:5432"),
            "order ? took ? ms at ?:?"
        );
        // Words with digits stay; whitespace collapses.
        assert_eq!(
            t("utf8  decoder v2 [Errno 28]"),
            "utf8 decoder v2 [Errno ?]"
        );
        assert_eq!(t("KeyError: 'shipping_zone'"), "KeyError: 'shipping_zone'");
    }

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
    fn onset_is_the_first_confirmed_slow_second() {
        let base = RedFigures {
            count: 100,
            p95_us: 8_000,
            error_pct: 0.0,
            ..RedFigures::default()
        };
        // Threshold: max(12 ms, 18 ms) = 18 ms.
        let mut s = BTreeMap::new();
        s.insert(1_000, (10, 0, 60_000)); // 6 ms
        s.insert(2_000, (10, 0, 4_000_000)); // 400 ms, alone: a blip
        s.insert(3_000, (10, 0, 60_000));
        s.insert(4_000, (10, 0, 4_000_000));
        s.insert(5_000, (10, 0, 4_000_000));
        assert_eq!(onset(&s, &base), Some(4_000));
        // Errors count too.
        let mut s = BTreeMap::new();
        s.insert(7_000, (10, 5, 60_000));
        assert_eq!(onset(&s, &base), Some(7_000));
        // No baseline, no onset.
        assert_eq!(onset(&s, &RedFigures::default()), None);
    }
}

// ---------------------------------------------------------------------------
// Live-debugging calls (issue 12): what the probes saw, as the agents
// forward it, so it outlives the sessions and the agents' restarts.

/// `probe_calls`: calls probes saw on `service` since `since_ms`, of one
/// function (`function`: full name or its last element) or all.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ProbeCallQuery {
    pub service: String,
    pub since_ms: i64,
    pub function: Option<String>,
    /// Session id (`dbg-N`), or all sessions.
    pub session: Option<String>,
    /// Most recent calls returned (the figures cover every call).
    pub limit: u32,
}

/// One probed function's calls.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProbeFunctionFigures {
    pub function: String,
    pub calls: u64,
    /// Calls whose return was seen (the duration figures are theirs).
    pub completed: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p95_us: f64,
    pub max_us: f64,
    pub first_ms: i64,
    pub last_ms: i64,
    pub sessions: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ProbeCalls {
    pub service: String,
    /// By total time, largest first.
    pub functions: Vec<ProbeFunctionFigures>,
    /// The latest calls, newest first.
    pub calls: Vec<coral_proto::debug::DebugCall>,
    pub coverage: Coverage,
}

pub(crate) async fn probe_calls(
    shared: &Shared,
    q: ProbeCallQuery,
) -> Result<ProbeCalls, QueryError> {
    use coral_store::telemetry::{CALL_COLUMNS, call_row};
    check_since(q.since_ms)?;
    coral_proto::spec::validate_name(&q.service).map_err(QueryError::Invalid)?;
    let coverage = coverage(shared).await;
    let limit = q.limit.clamp(1, MAX_LIMIT);
    // `main.work` matches `main.work` and `work` matches `pkg.work`.
    let function = q.function.clone().map(|f| {
        let like = f
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        (f, format!("%.{like}"))
    });
    let (fname, flike) = match function {
        Some((f, l)) => (Some(f), Some(l)),
        None => (None, None),
    };
    let service = q.service.clone();
    let session = q.session.clone();
    let since_us = q.since_ms * 1000;
    let (functions, calls) = shared
        .telemetry
        .query(move |c| {
            let filter = "service = ?::VARCHAR AND ts >= make_timestamp(?::BIGINT)
                AND (?::VARCHAR IS NULL OR function = ?::VARCHAR OR function LIKE ?::VARCHAR ESCAPE '\\')
                AND (?::VARCHAR IS NULL OR session = ?::VARCHAR)";
            let p = duckdb::params![
                service,
                since_us,
                fname,
                fname,
                flike,
                session,
                session
            ];
            let functions = c
                .prepare(&format!(
                    "SELECT function, count(*), count(duration_ns),
                        coalesce(avg(duration_ns), 0) / 1000.0,
                        coalesce(quantile_cont(duration_ns, 0.5), 0) / 1000.0,
                        coalesce(quantile_cont(duration_ns, 0.95), 0) / 1000.0,
                        coalesce(max(duration_ns), 0) / 1000.0,
                        epoch_ms(min(ts)), epoch_ms(max(ts)),
                        string_agg(DISTINCT session, ',' ORDER BY session)
                     FROM debug_calls WHERE {filter}
                     GROUP BY function ORDER BY coalesce(sum(duration_ns), 0) DESC, function"
                ))?
                .query_map(p, |r| {
                    let sessions: String = r.get(9)?;
                    Ok(ProbeFunctionFigures {
                        function: r.get(0)?,
                        calls: r.get(1)?,
                        completed: r.get(2)?,
                        mean_us: r.get(3)?,
                        p50_us: r.get(4)?,
                        p95_us: r.get(5)?,
                        max_us: r.get(6)?,
                        first_ms: r.get(7)?,
                        last_ms: r.get(8)?,
                        sessions: sessions.split(',').map(str::to_string).collect(),
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let calls = c
                .prepare(&format!(
                    "SELECT {CALL_COLUMNS} FROM debug_calls WHERE {filter}
                     ORDER BY ts DESC, agent_id, call_seq DESC LIMIT ?"
                ))?
                .query_map(
                    duckdb::params![
                        service,
                        since_us,
                        fname,
                        fname,
                        flike,
                        session,
                        session,
                        limit
                    ],
                    call_row,
                )?
                .collect::<Result<Vec<_>, _>>()?;
            Ok((functions, calls))
        })
        .await
        .map_err(storage)?;
    Ok(ProbeCalls {
        service: q.service,
        functions,
        calls: calls
            .iter()
            .map(coral_proto::debug::DebugCall::from_record)
            .collect(),
        coverage,
    })
}
