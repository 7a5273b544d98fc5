//! Live debugging (issue 12): uprobes attached to running code on this
//! host, through `coral-privhelper`'s `UprobeAttach` or directly with
//! `CAP_BPF`. `index` says what can be probed in a binary and where each
//! argument is.

pub mod index;
pub mod session;

pub use session::{Debugger, Limits};

use std::sync::Arc;
use std::time::Duration;

use coral_proto::debug::{DebugError, DebugOp, DebugReply, DebugTarget};

/// Reads the sessions' rings and expires sessions, every 100 ms.
pub(crate) async fn run(d: Arc<Debugger>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let d = d.clone();
        let _ = tokio::task::spawn_blocking(move || d.poll()).await;
    }
}

/// Serves one `AgentRpc::debug` call on the process of `service`.
pub(crate) async fn handle(
    shared: Arc<crate::Shared>,
    service: String,
    op: DebugOp,
) -> Result<DebugReply, DebugError> {
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
                let policy = shared.exec.policy();
                let allow = |function: &str| match policy.decide_debug(&service, function) {
                    coral_policy::DebugDecision::Allowed { args, .. } => Ok(args),
                    coral_policy::DebugDecision::Denied => Err(DebugError::Refused(format!(
                        "no [[debug]] rule in the host's policy ({}) allows probing {function} of '{service}'",
                        policy.path()
                    ))),
                };
                d.attach_checked(pid, &req, &allow)
                    .map(|s| DebugReply::Sessions(vec![s]))
            }
            DebugOp::List => Ok(DebugReply::Sessions(of_service(d.list()))),
            DebugOp::Logs(req) => d.logs(&req).map(DebugReply::Logs),
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
