//! `coral debug attach | logs | trace | detach | list | functions` (issue 12): thin
//! adapters over `ColonyControl::debug`, which the colony routes to the
//! agent hosting the service.

use std::time::{Duration, Instant};

use anyhow::anyhow;
use coral_proto::debug::{
    DebugAttachRequest, DebugCall, DebugError, DebugLogsRequest, DebugOp, DebugReply, DebugRequest,
    DebugSession, DebugTarget, DebugTraceRequest,
};

use super::args::DebugCmd;
use super::client::{colony_client, colony_gone};
use super::output::out;
use coral_proto::exit::{Coded, EX_NOPERM, Unavailable, Usage};

fn debug_error(e: DebugError) -> anyhow::Error {
    match e {
        DebugError::Invalid(m)
        | DebugError::NotFound(m)
        | DebugError::Unsupported(m)
        | DebugError::Limit(m) => Usage(m).into(),
        DebugError::Refused(m) => Coded {
            code: EX_NOPERM,
            msg: m,
        }
        .into(),
        DebugError::Failed(m) => Unavailable(m).into(),
    }
}

async fn call(service: &str, op: DebugOp) -> anyhow::Result<DebugReply> {
    let c = colony_client().await?;
    let mut ctx = tarpc::context::current();
    ctx.deadline = Instant::now() + Duration::from_secs(40);
    c.debug(ctx, service.to_string(), op)
        .await
        .map_err(|e| colony_gone(&e))?
        .map_err(debug_error)
}

fn sessions(r: DebugReply) -> anyhow::Result<Vec<DebugSession>> {
    match r {
        DebugReply::Sessions(s) => Ok(s),
        other => Err(anyhow!("unexpected reply from the agent: {other:?}")),
    }
}

fn secs_left(s: &DebugSession) -> i64 {
    ((s.expires_ms - coral_proto::now_ms()).max(0) + 999) / 1000
}

fn session_table(list: &[DebugSession]) -> String {
    let mut t = format!(
        "{:<8} {:>7} {:<6} {:<9} {:>6} {:>8} {:>7} {:>9}  {}\n",
        "SESSION", "PID", "LANG", "STATE", "POINTS", "CALLS", "DROPPED", "LEFT", "FUNCTIONS (hits)"
    );
    for s in list {
        let funcs: Vec<String> = s
            .probes
            .iter()
            .map(|p| {
                if p.state == "attached" {
                    format!("{} ({})", p.function, p.hits)
                } else {
                    format!("{} ({}; {})", p.function, p.hits, p.state)
                }
            })
            .collect();
        let left = if s.state == "active" {
            format!("{}s", secs_left(s))
        } else {
            "-".into()
        };
        t.push_str(&format!(
            "{:<8} {:>7} {:<6} {:<9} {:>6} {:>8} {:>7} {:>9}  {}\n",
            s.id,
            s.pid,
            s.lang,
            s.state,
            s.attach_points,
            s.calls,
            s.dropped,
            left,
            funcs.join(", ")
        ));
    }
    t
}

fn fmt_duration(ns: Option<u64>) -> String {
    match ns {
        None => "-".into(),
        Some(n) if n < 1_000 => format!("{n}ns"),
        Some(n) if n < 1_000_000 => format!("{:.1}µs", n as f64 / 1e3),
        Some(n) if n < 1_000_000_000 => format!("{:.2}ms", n as f64 / 1e6),
        Some(n) => format!("{:.2}s", n as f64 / 1e9),
    }
}

fn call_line(c: &DebugCall) -> String {
    let secs = c.start_unix_ns.div_euclid(1_000_000_000);
    let nanos = c.start_unix_ns.rem_euclid(1_000_000_000);
    let t = humantime::format_rfc3339_micros(
        std::time::UNIX_EPOCH + Duration::new(secs.max(0) as u64, nanos as u32),
    );
    let args: Vec<String> = c
        .args
        .iter()
        .map(|a| format!("{}={}", a.name, a.value))
        .collect();
    let res: Vec<String> = c.results.iter().map(|a| a.value.clone()).collect();
    let who = if c.goroutine != 0 {
        format!("g={:#x}", c.goroutine)
    } else {
        format!("tid={}", c.tid)
    };
    let mut line = format!(
        "{t} {:>10} {} {}({})",
        fmt_duration(c.duration_ns),
        who,
        c.function,
        args.join(", ")
    );
    if !res.is_empty() {
        line.push_str(&format!(" -> {}", res.join(", ")));
    }
    line.push('\n');
    for f in &c.stack {
        line.push_str(&format!("      at {f}\n"));
    }
    line
}

/// Appends, once each, a note for every probe that was detached early
/// (over its CPU budget); returns whether any was added.
fn after_printed_notes(
    done: &mut std::collections::HashSet<(String, String)>,
    sessions: &[DebugSession],
    text: &mut String,
) -> bool {
    let mut any = false;
    for s in sessions {
        for p in s.probes.iter().filter(|p| p.state != "attached") {
            if done.insert((s.id.clone(), p.function.clone())) {
                text.push_str(&format!("note: {} {}: {}\n", s.id, p.function, p.state));
                any = true;
            }
        }
    }
    any
}

pub(super) async fn run(cmd: DebugCmd) -> anyhow::Result<()> {
    match cmd {
        DebugCmd::Attach(a) => {
            if a.duration.is_zero() {
                return Err(Usage("--duration must be above 0".into()).into());
            }
            let req = DebugAttachRequest {
                target: DebugTarget::Service(a.service.clone()),
                functions: a.functions,
                ttl_ms: a.duration.as_millis().min(u128::from(u64::MAX)) as u64,
                capture_args: a.args,
                stack: a.stack,
            };
            let s = sessions(call(&a.service, DebugOp::Attach(req)).await?)?;
            let s = s
                .first()
                .ok_or_else(|| anyhow!("the agent returned no session"))?;
            if a.json {
                return out(&(serde_json::to_string_pretty(s)? + "\n"));
            }
            let mut msg = format!(
                "Attached {} to {} (pid {}, {}, {} attach points via {}), for {}s\n",
                s.id,
                a.service,
                s.pid,
                s.lang,
                s.attach_points,
                s.attached_via,
                secs_left(s)
            );
            for p in &s.probes {
                msg.push_str(&format!(
                    "  {}({}): entry {:#x}, {} return point(s)\n",
                    p.function,
                    p.params.join(", "),
                    p.entry_offset,
                    p.return_offsets.len()
                ));
            }
            msg.push_str(&format!(
                "See the calls with 'coral debug logs {} --session {}'\n",
                a.service, s.id
            ));
            out(&msg)
        }
        DebugCmd::Logs {
            service,
            session,
            follow,
            limit,
            json,
        } => {
            let mut after = 0;
            let mut notes_done = std::collections::HashSet::new();
            loop {
                let r = call(
                    &service,
                    DebugOp::Logs(DebugLogsRequest {
                        session: session.clone(),
                        after_seq: after,
                        limit,
                    }),
                )
                .await?;
                let DebugReply::Logs(logs) = r else {
                    return Err(anyhow!("unexpected reply from the agent"));
                };
                let mut text = String::new();
                for c in &logs.calls {
                    after = after.max(c.seq);
                    if json {
                        text.push_str(&serde_json::to_string(c)?);
                        text.push('\n');
                    } else {
                        text.push_str(&call_line(c));
                    }
                }
                if !json {
                    after_printed_notes(&mut notes_done, &logs.sessions, &mut text);
                }
                out(&text)?;
                let active = logs.sessions.iter().any(|s| s.state == "active");
                if !follow || (!active && logs.calls.len() < limit as usize) {
                    if !json && !follow && logs.calls.is_empty() {
                        out("No calls yet.\n")?;
                    }
                    return Ok(());
                }
                if logs.calls.len() < limit as usize {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = tokio::signal::ctrl_c() => return Ok(()),
                    }
                }
            }
        }
        DebugCmd::Detach {
            service,
            all,
            session,
            json,
        } => {
            if !all && session.is_none() {
                return Err(Usage("say which: --all or --session ID".into()).into());
            }
            let ended = sessions(call(&service, DebugOp::Detach(session)).await?)?;
            if json {
                return out(&(serde_json::to_string_pretty(&ended)? + "\n"));
            }
            if ended.is_empty() {
                return out("No active session.\n");
            }
            let mut msg = String::new();
            for s in &ended {
                msg.push_str(&format!(
                    "Detached {} ({} attach points removed, {} calls seen)\n",
                    s.id, s.attach_points, s.calls
                ));
            }
            out(&msg)
        }
        DebugCmd::Trace {
            service,
            path,
            functions,
            duration,
            json,
        } => trace(service, path, functions, duration, json).await,
        DebugCmd::List { service, json } => {
            let list = sessions(call(&service, DebugOp::List).await?)?;
            if json {
                return out(&(serde_json::to_string_pretty(&list)? + "\n"));
            }
            if list.is_empty() {
                return out("No sessions.\n");
            }
            out(&session_table(&list))
        }
        DebugCmd::Functions {
            service,
            pattern,
            limit,
            json,
        } => {
            let r = call(
                &service,
                DebugOp::Functions {
                    pattern: pattern.unwrap_or_default(),
                    limit,
                },
            )
            .await?;
            let DebugReply::Functions(f) = r else {
                return Err(anyhow!("unexpected reply from the agent"));
            };
            if json {
                return out(&(serde_json::to_string_pretty(&f)? + "\n"));
            }
            let mut t = format!(
                "{} (pid {}, {}, {})\n",
                f.binary,
                f.pid,
                f.lang,
                if f.has_dwarf {
                    "with DWARF: arguments known"
                } else {
                    "no DWARF: names only"
                }
            );
            for func in &f.functions {
                t.push_str(&format!(
                    "  {:#010x} {:>7}  {}({})\n",
                    func.offset,
                    func.size,
                    func.name,
                    func.params.join(", ")
                ));
            }
            if f.total as usize > f.functions.len() {
                t.push_str(&format!(
                    "  … {} more (narrow with a pattern or raise --limit)\n",
                    f.total as usize - f.functions.len()
                ));
            }
            out(&t)
        }
    }
}

/// One request and its call tree, as `coral debug trace` prints it.
fn request_lines(r: &DebugRequest) -> String {
    let ms = |ns: u64| format!("{:.1} ms", ns as f64 / 1e6);
    let mut out = format!(
        "{} {} {} {}{}\n",
        r.method,
        r.target,
        r.status,
        ms(r.duration_ns),
        match r.goroutine {
            Some(g) => format!("  (goroutine {g:#x})"),
            None => String::new(),
        }
    );
    for c in &r.calls {
        out.push_str(&format!(
            "  {}{} +{} {}\n",
            "  ".repeat(c.depth as usize),
            c.function,
            ms(c.offset_ns.max(0) as u64),
            c.duration_ns.map_or("(no return seen)".into(), ms)
        ));
    }
    out
}

async fn trace(
    service: String,
    path: String,
    functions: Vec<String>,
    duration: Duration,
    json: bool,
) -> anyhow::Result<()> {
    if duration.is_zero() {
        return Err(Usage("--duration must be above 0".into()).into());
    }
    let r = call(
        &service,
        DebugOp::Trace(DebugTraceRequest {
            path: path.clone(),
            functions,
            ttl_ms: duration.as_millis().min(u128::from(u64::MAX)) as u64,
        }),
    )
    .await?;
    let DebugReply::Trace(t) = r else {
        return Err(anyhow!("unexpected reply from the agent"));
    };
    if !json {
        let probes = match &t.session {
            Some(s) => format!(
                "probing {} ({} attach points, session {})",
                s.probes
                    .iter()
                    .map(|p| p.function.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                s.attach_points,
                s.id
            ),
            None => t.note.clone().unwrap_or_default(),
        };
        out(&format!(
            "Tracing requests on {path} of {service} for {} ({}); {probes}. Ctrl-C ends it.\n",
            humantime::format_duration(duration),
            t.id
        ))?;
    }
    let mut after = 0i64;
    let mut last = false;
    loop {
        let r = call(
            &service,
            DebugOp::TraceRequests {
                trace: t.id.clone(),
                after_ns: after,
            },
        )
        .await?;
        let DebugReply::Requests(rs) = r else {
            return Err(anyhow!("unexpected reply from the agent"));
        };
        let mut text = String::new();
        for q in &rs.requests {
            after = after.max(q.start_unix_ns + q.duration_ns as i64);
            if json {
                text.push_str(&serde_json::to_string(q)?);
                text.push('\n');
            } else {
                text.push_str(&request_lines(q));
            }
        }
        out(&text)?;
        if last {
            break;
        }
        // One more read after the end, for the requests still settling.
        last = !rs.active;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(if last { 600 } else { 1000 })) => {}
            _ = tokio::signal::ctrl_c() => {
                last = true;
            }
        }
    }
    // Ends the trace's probes (they would go at the end of --duration).
    let _ = call(&service, DebugOp::Detach(Some(t.id.clone()))).await;
    Ok(())
}
