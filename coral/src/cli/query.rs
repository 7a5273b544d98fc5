//! `coral query`, `coral top`, `coral audit`: reading the colony's
//! telemetry, RED figures and audit records.

use super::args::QueryCmd;
use super::client::{colony_client, colony_gone, ctx, since_ms, window_ms};
use super::output::{out, print_json_or};
use super::render;
use anyhow::anyhow;
use coral_proto::exit::Usage;
use std::time::Duration;

/// `coral audit`.
pub(super) async fn audit(
    service: Option<String>,
    since: Duration,
    limit: u32,
    json: bool,
) -> anyhow::Result<()> {
    let c = colony_client().await?;
    let q = coral_proto::AuditQuery {
        service,
        since_ms: since_ms(since)?,
        limit,
    };
    let report = c
        .audit(ctx(), q)
        .await
        .map_err(|e| colony_gone(&e))?
        .map_err(|e| match e {
            coral_proto::QueryError::Invalid(m) => Usage(m).into(),
            other => anyhow!("{other}"),
        })?;
    for u in &report.unreachable {
        eprintln!("warning: agent not asked: {u}");
    }
    print_json_or(json, &report, |r| render::audit(coral_proto::now_ms(), r))
}

pub(super) async fn query(q: QueryCmd) -> anyhow::Result<()> {
    let c = colony_client().await?;
    let usage = |e: coral_proto::QueryError| -> anyhow::Error {
        match e {
            coral_proto::QueryError::Invalid(m) => Usage(m).into(),
            other => anyhow!("{other}"),
        }
    };
    match q {
        QueryCmd::Traces {
            service,
            since,
            min_duration,
            limit,
            json,
        } => {
            let q = coral_proto::TraceQuery {
                service,
                since_ms: since_ms(since)?,
                min_duration_us: min_duration.map(|d| d.as_micros() as u64).unwrap_or(0),
                limit,
            };
            let traces = c
                .traces(ctx(), q)
                .await
                .map_err(|e| colony_gone(&e))?
                .map_err(usage)?;
            print_json_or(json, &traces, |t| render::traces(coral_proto::now_ms(), t))
        }
        QueryCmd::Trace { trace_id, json } => {
            let spans = c
                .trace(ctx(), trace_id.clone())
                .await
                .map_err(|e| colony_gone(&e))?
                .map_err(usage)?;
            if spans.is_empty() {
                return Err(anyhow!(
                    "no spans of trace {trace_id} in the colony (retention is colony.retention; see 'coral query traces')"
                ));
            }
            print_json_or(json, &spans, |s| render::trace_tree(s))
        }
        QueryCmd::Logs {
            service,
            since,
            trace_id,
            grep,
            limit,
            json,
        } => {
            let q = coral_proto::LogQuery {
                service,
                since_ms: since_ms(since)?,
                trace_id,
                contains: grep,
                limit,
            };
            let logs = c
                .logs(ctx(), q)
                .await
                .map_err(|e| colony_gone(&e))?
                .map_err(usage)?;
            print_json_or(json, &logs, |l| render::logs(l))
        }
        QueryCmd::Metrics {
            service,
            since,
            baseline,
            json,
        } => {
            let q = coral_proto::RedQuery {
                service,
                window: coral_proto::Window::last(
                    window_ms("--since", since)?,
                    baseline
                        .map(|b| window_ms("--baseline", b))
                        .transpose()?
                        .unwrap_or(0),
                    coral_proto::now_ms(),
                ),
            };
            let report = c
                .red(ctx(), q)
                .await
                .map_err(|e| colony_gone(&e))?
                .map_err(usage)?;
            print_json_or(json, &report, render::metrics)
        }
        QueryCmd::Map { since, json, dot } => {
            let q = coral_proto::MapQuery {
                window: coral_proto::Window::last(
                    window_ms("--since", since)?,
                    0,
                    coral_proto::now_ms(),
                ),
            };
            let map = c
                .service_map(ctx(), q)
                .await
                .map_err(|e| colony_gone(&e))?
                .map_err(usage)?;
            if dot {
                out(&render::service_map_dot(&map))
            } else {
                print_json_or(json, &map, render::service_map)
            }
        }
    }
}

/// `coral top`: the last minute's RED figures per service, refreshed.
pub(super) async fn top(
    interval: Duration,
    iterations: Option<u32>,
    service: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    if interval < Duration::from_millis(100) {
        return Err(Usage("--interval must be at least 100ms".into()).into());
    }
    let c = colony_client().await?;
    let tty = std::io::stdout().is_terminal() && !json;
    let mut n = 0u32;
    loop {
        let q = coral_proto::RedQuery {
            service: service.clone(),
            window: coral_proto::Window::last(60_000, 0, coral_proto::now_ms()),
        };
        let report = c
            .red(ctx(), q)
            .await
            .map_err(|e| colony_gone(&e))?
            .map_err(|e| anyhow!("{e}"))?;
        let frame = if json {
            serde_json::to_string(&report)? + "\n"
        } else {
            render::top(&report)
        };
        if tty {
            // Home, clear, draw: the table refreshes in place.
            out(&format!("\x1b[H\x1b[2J{frame}"))?;
        } else {
            out(&frame)?;
        }
        n += 1;
        if iterations.is_some_and(|max| n >= max) {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        if !tty && !json {
            out("\n")?;
        }
    }
}
