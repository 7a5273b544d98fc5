//! `coral debug` through the colony (issue 12), like `coral exec`: find the
//! agent hosting the service, write the colony's audit record (for every
//! operation but reads), then forward the operation to that agent's
//! `AgentRpc::debug`.

use std::time::{Duration, Instant};

use coral_proto::AgentState;
use coral_proto::ExecCaller;
use coral_proto::debug::{DebugError, DebugOp, DebugReply, DebugTarget};
use tarpc::context;

use super::Shared;
use super::exec::quote;

/// Attaching indexes a binary and attaches every point: allow more time.
const DEBUG_RPC_TIMEOUT: Duration = Duration::from_secs(30);

/// The `coral debug ...` command line an operation stands for.
pub(crate) fn cli_equivalent(service: &str, op: &DebugOp) -> String {
    let s = quote(service);
    match op {
        DebugOp::Attach(r) => {
            let mut out = format!("coral debug attach {s}");
            for f in &r.functions {
                out.push_str(&format!(" --function {}", quote(f)));
            }
            if r.ttl_ms > 0 {
                out.push_str(&format!(" --duration {}s", r.ttl_ms.div_ceil(1000)));
            }
            if r.capture_args {
                out.push_str(" --args");
            }
            if r.stack {
                out.push_str(" --stack");
            }
            out
        }
        DebugOp::List => format!("coral debug list {s}"),
        DebugOp::Logs(r) => match &r.session {
            Some(id) => format!("coral debug logs {s} --session {}", quote(id)),
            None => format!("coral debug logs {s}"),
        },
        DebugOp::Detach(Some(id)) => format!("coral debug detach {s} --session {}", quote(id)),
        DebugOp::Detach(None) => format!("coral debug detach {s} --all"),
        DebugOp::Trace(r) => {
            let mut out = format!("coral debug trace {s} --path {}", quote(&r.path));
            for f in &r.functions {
                out.push_str(&format!(" --function {}", quote(f)));
            }
            if r.ttl_ms > 0 {
                out.push_str(&format!(" --duration {}s", r.ttl_ms.div_ceil(1000)));
            }
            out
        }
        DebugOp::TraceRequests { trace, .. } => {
            format!("coral debug trace {s} (reading {})", quote(trace))
        }
        DebugOp::Functions { pattern, .. } => {
            format!("coral debug functions {s} {}", quote(pattern))
                .trim_end()
                .to_string()
        }
    }
}

impl Shared {
    /// Routes one debug operation to the agent hosting `service`.
    pub(crate) async fn debug(
        &self,
        service: String,
        op: DebugOp,
        caller: ExecCaller,
    ) -> Result<DebugReply, DebugError> {
        coral_proto::spec::validate_name(&service).map_err(DebugError::Invalid)?;
        if let DebugOp::Attach(r) = &op
            && !matches!(&r.target, DebugTarget::Service(s) if *s == service)
        {
            return Err(DebugError::Invalid(
                "through the colony, a session targets the service's own process".into(),
            ));
        }
        let now = coral_proto::now_ms();
        let targets = self
            .registry
            .lock()
            .expect("registry lock")
            .exec_targets(&service, now, self.config.agent_timeout.as_millis() as i64)
            .map_err(|e| DebugError::Failed(e.to_string()))?;
        let online: Vec<_> = targets
            .iter()
            .filter(|t| t.state == AgentState::Online)
            .collect();
        let t = match (targets.len(), online.as_slice()) {
            (0, _) => {
                return Err(DebugError::NotFound(format!(
                    "no agent hosts a service named '{service}' (see 'coral colony status')"
                )));
            }
            (_, [one]) => (*one).clone(),
            (_, []) => {
                return Err(DebugError::Failed(format!(
                    "the agent hosting '{service}' is not online"
                )));
            }
            _ => {
                return Err(DebugError::Invalid(format!(
                    "'{service}' is hosted by several agents: {}",
                    online
                        .iter()
                        .map(|t| t.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        };
        let Some(addr) = t.rpc_addr.clone() else {
            return Err(DebugError::Failed(format!(
                "agent {} registered without an rpc address (upgrade it)",
                t.name
            )));
        };
        if matches!(
            op,
            DebugOp::Attach(_) | DebugOp::Detach(_) | DebugOp::Trace(_)
        ) {
            let actor = match (caller.user.as_deref(), caller.uid, caller.pid) {
                (Some(u), _, Some(p)) => format!("user:{u} pid:{p}"),
                (Some(u), _, None) => format!("user:{u}"),
                (None, Some(uid), _) => format!("uid:{uid}"),
                _ => "unknown".into(),
            };
            let cli = cli_equivalent(&service, &op);
            let detail = format!("{service} on agent {}: {cli}", t.name);
            if let Err(e) = self.audit.record(&actor, op.action(), &detail, Some(&cli)) {
                tracing::error!(error = %e, "cannot write the colony audit record; not forwarding");
                return Err(DebugError::Failed(e.to_string()));
            }
        }
        let unreachable = |why: String| {
            DebugError::Failed(format!(
                "cannot reach agent {} at {addr}: {why} (is it running? see 'coral colony status')",
                t.name
            ))
        };
        for attempt in 0..2 {
            let client = self
                .agent_client(&t.agent_id, &addr)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let mut ctx = context::current();
            ctx.deadline = Instant::now() + DEBUG_RPC_TIMEOUT;
            match client.debug(ctx, service.clone(), op.clone()).await {
                Ok(r) => return r,
                Err(tarpc::client::RpcError::DeadlineExceeded) => {
                    return Err(unreachable("it did not answer in time".into()));
                }
                Err(e) => {
                    self.forget_client(&t.agent_id);
                    if attempt == 1 {
                        return Err(unreachable(e.to_string()));
                    }
                }
            }
        }
        unreachable!("the loop returns")
    }
}
