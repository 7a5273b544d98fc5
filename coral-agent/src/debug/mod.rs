//! Live debugging (issue 12): uprobes attached to running code on this
//! host, through `coral-privhelper`'s `UprobeAttach` or directly with
//! `CAP_BPF`. `index` says what can be probed in a binary and where each
//! argument is.

pub mod index;
pub mod session;
pub mod trace;

pub use session::{Debugger, Limits};

use std::sync::Arc;
use std::time::Duration;

use coral_proto::debug::{
    DebugCall, DebugError, DebugLogs, DebugLogsRequest, DebugOp, DebugReply, DebugSession,
    DebugTarget,
};

/// Reads the sessions' rings and expires sessions, every 100 ms, and
/// stores the new calls in the telemetry store (which forwards them to the
/// colony like other telemetry).
pub(crate) async fn run(shared: Arc<crate::AgentCore>) {
    // Session ids and call numbers go on from those an earlier run stored.
    let last = shared
        .telemetry
        .query(|c| {
            c.query_row(
                "SELECT coalesce(max(TRY_CAST(substr(session, 5) AS UBIGINT)), 0), \
                 coalesce(max(call_seq), 0) FROM debug_calls WHERE session LIKE 'dbg-%'",
                [],
                |r| Ok((r.get::<_, u64>(0)?, r.get::<_, u64>(1)?)),
            )
        })
        .await;
    match last {
        Ok((session, call)) => shared.debug.resume_after(session, call),
        Err(e) => tracing::warn!(error = %e, "cannot read the stored debug calls"),
    }
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let d = shared.debug.clone();
        let _ = tokio::task::spawn_blocking(move || d.poll()).await;
        save(&shared).await;
        shared.requests.trim(Duration::from_secs(600));
    }
}

/// Hands the calls paired since the last save to the telemetry store.
pub(crate) async fn save(shared: &crate::AgentCore) {
    let rows = shared.debug.take_unsaved();
    if rows.is_empty() {
        return;
    }
    let n = rows.len();
    if let Err(e) = shared
        .telemetry
        .insert_batch(coral_store::telemetry::Batch::Calls(rows))
        .await
    {
        tracing::warn!(error = %e, calls = n, "cannot store debug calls");
    }
}

/// The calls of `service` the telemetry store holds after `req.after_seq`
/// (those of ended sessions, also from before an agent restart).
async fn stored_calls(
    shared: &crate::AgentCore,
    service: &str,
    req: &DebugLogsRequest,
) -> Vec<(DebugCall, u32)> {
    let (service, session) = (service.to_string(), req.session.clone());
    let (after, limit) = (req.after_seq, req.limit.clamp(1, 10_000));
    let rows = shared
        .telemetry
        .query(move |c| {
            let sql = format!(
                "SELECT {} FROM debug_calls WHERE service = ? AND call_seq > ? \
                 AND session LIKE ? ORDER BY call_seq LIMIT ?",
                coral_store::telemetry::CALL_COLUMNS
            );
            // Session ids are `dbg-N`: no LIKE wildcard in them.
            let session = session.unwrap_or_else(|| "%".into());
            c.prepare(&sql)?
                .query_map(
                    duckdb::params![service, after, session, limit],
                    coral_store::telemetry::call_row,
                )?
                .collect::<Result<Vec<_>, _>>()
        })
        .await;
    match rows {
        Ok(rows) => rows
            .iter()
            .map(|r| (DebugCall::from_record(r), r.pid))
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the stored debug calls");
            Vec::new()
        }
    }
}

/// `debug logs`: the calls in memory (sessions of this run) and, before and
/// beyond them, the stored ones; a session known only from the store is
/// described from its calls.
async fn logs(
    shared: &Arc<crate::AgentCore>,
    service: &str,
    req: DebugLogsRequest,
) -> Result<DebugReply, DebugError> {
    save(shared).await;
    let d = shared.debug.clone();
    let mem_req = req.clone();
    let mem = tokio::task::spawn_blocking(move || d.logs(&mem_req))
        .await
        .map_err(|e| DebugError::Failed(format!("debug task failed: {e}")))?;
    let (mut calls, mut sessions) = match mem {
        Ok(l) => (l.calls, l.sessions),
        Err(DebugError::NotFound(_)) => (Vec::new(), Vec::new()),
        Err(e) => return Err(e),
    };
    sessions.retain(|s| s.service.is_empty() || s.service == service);
    calls.retain(|c| sessions.iter().any(|s| s.id == c.session));
    let mut by_seq: std::collections::BTreeMap<u64, DebugCall> =
        calls.into_iter().map(|c| (c.seq, c)).collect();
    for (c, pid) in stored_calls(shared, service, &req).await {
        if !sessions.iter().any(|s| s.id == c.session) {
            sessions.push(stored_session(&c, pid, service));
        }
        if let Some(s) = sessions.iter_mut().find(|s| s.id == c.session)
            && s.state.starts_with("ended")
        {
            note_stored(s, &c);
        }
        by_seq.entry(c.seq).or_insert(c);
    }
    if let Some(id) = &req.session
        && !sessions.iter().any(|s| &s.id == id)
    {
        return Err(DebugError::NotFound(format!("no session '{id}'")));
    }
    let calls = by_seq
        .into_values()
        .take(req.limit.clamp(1, 10_000) as usize)
        .collect();
    Ok(DebugReply::Logs(DebugLogs { calls, sessions }))
}

/// A session this run of the agent does not hold, from a stored call.
fn stored_session(c: &DebugCall, pid: u32, service: &str) -> DebugSession {
    DebugSession {
        id: c.session.clone(),
        pid,
        binary: String::new(),
        lang: String::new(),
        attached_via: String::new(),
        probes: Vec::new(),
        attach_points: 0,
        started_ms: c.start_unix_ns / 1_000_000,
        expires_ms: 0,
        calls: 0,
        dropped: 0,
        state: "ended (calls from the telemetry store)".into(),
        service: service.to_string(),
    }
}

fn note_stored(s: &mut DebugSession, _c: &DebugCall) {
    s.calls += 1;
}

/// Serves one `AgentRpc::debug` call on the process of `service`.
pub(crate) async fn handle(
    shared: Arc<crate::AgentCore>,
    service: String,
    op: DebugOp,
) -> Result<DebugReply, DebugError> {
    if let DebugOp::Logs(req) = op {
        return logs(&shared, &service, req).await;
    }
    tokio::task::spawn_blocking(move || {
        let d = &shared.debug;
        let pid = || {
            let services = shared.services_snapshot();
            d.target_pid(&DebugTarget::Service(service.clone()), |name| {
                services
                    .iter()
                    .find(|s| s.spec.name == name)
                    .map(|s| s.spec.port)
            })
        };
        let policy = shared.exec.policy();
        let allow = |function: &str| match policy.decide_debug(&service, function) {
            coral_policy::DebugDecision::Allowed { args, .. } => Ok(args),
            coral_policy::DebugDecision::Denied => Err(DebugError::Refused(format!(
                "no [[debug]] rule in the host's policy ({}) allows probing {function} of '{service}'",
                policy.path()
            ))),
        };
        let of_service = |sessions: Vec<coral_proto::debug::DebugSession>| match pid() {
            Ok(p) => sessions.into_iter().filter(|s| s.pid == p).collect(),
            Err(_) => sessions,
        };
        match op {
            DebugOp::Attach(req) => {
                let pid = match req.target {
                    DebugTarget::Pid(p) => p,
                    DebugTarget::Service(_) => pid()?,
                };
                d.attach_checked(pid, &req, &allow)
                    .map(|s| DebugReply::Sessions(vec![s]))
            }
            DebugOp::List => Ok(DebugReply::Sessions(of_service(d.list()))),
            DebugOp::Logs(_) => unreachable!("answered above"),
            DebugOp::Detach(Some(id)) if id.starts_with("trace-") => {
                d.stop_trace(&shared.requests, &id).map(DebugReply::Sessions)
            }
            DebugOp::Trace(req) => {
                d.start_trace(&shared.requests, &service, pid(), &req, &allow)
                    .map(DebugReply::Trace)
            }
            DebugOp::TraceRequests { trace, after_ns } => d
                .trace_requests(&shared.requests, &trace, after_ns)
                .map(DebugReply::Requests),
            DebugOp::Detach(id) => {
                let ids: Vec<String> = match &id {
                    Some(i) => vec![i.clone()],
                    None => of_service(d.list())
                        .into_iter()
                        .filter(|s| s.state == "active")
                        .map(|s| s.id)
                        .collect(),
                };
                let mut ended = Vec::new();
                for i in ids {
                    ended.extend(d.detach(Some(&i))?);
                }
                Ok(DebugReply::Sessions(ended))
            }
            DebugOp::Functions { pattern, limit } => d
                .functions(pid()?, &pattern, limit.clamp(1, 10_000) as usize)
                .map(DebugReply::Functions),
        }
    })
    .await
    .map_err(|e| DebugError::Failed(format!("debug task failed: {e}")))?
}

#[cfg(test)]
mod tests;
