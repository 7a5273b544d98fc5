//! What the colony calls on the agent: the `AgentRpc` service (exec,
//! audit, telemetry checkpoints, live debugging), one `ColonyConnection`
//! per connection, on the agent's own TCP listener (`agent.rpc_listen`, or
//! its mesh address).
//!
//! Who may call: only the colony the agent is linked to. Until the mesh
//! carries this traffic, that is checked by address: the caller's IP must be
//! the IP of the colony the link connected to (on one host that is
//! loopback, so it only keeps other hosts out). On the mesh, the WireGuard
//! peer identity (the packet's authenticated source address) replaces this
//! check.

use crate::AgentCore;
use coral_proto::services::AgentRpc;
use coral_proto::{
    AuditQuery, Checkpoints, ExecAuditRecord, ExecError, ExecPoll, ExecRequest, ExecStarted,
    SignalKind,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tarpc::context::Context;
use tokio::net::TcpListener;

/// One connection from the colony: the agent's state and the caller's
/// address.
#[derive(Clone)]
struct ColonyConnection {
    shared: Arc<AgentCore>,
    peer: SocketAddr,
}

impl ColonyConnection {
    /// The caller must still be the linked colony.
    fn check(&self) -> Result<(), ExecError> {
        match *self.shared.colony_peer.lock().expect("colony_peer lock") {
            Some(ip) if ip == self.peer.ip() => Ok(()),
            Some(_) => Err(ExecError::Refused(format!(
                "{} is not the colony this agent is linked to",
                self.peer
            ))),
            None => Err(ExecError::Refused(
                "this agent is not linked to a colony".into(),
            )),
        }
    }

    fn agent(&self) -> (&str, &str) {
        (&self.shared.agent_id, &self.shared.name)
    }
}

pub(crate) async fn serve(shared: Arc<AgentCore>, listener: TcpListener) {
    let refusals = coral_proto::local::RateLimited::new(Duration::from_secs(1));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                if let Some(suppressed) = refusals.allow() {
                    tracing::warn!(error = %e, suppressed, "agent rpc accept failed");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let server = ColonyConnection {
            shared: shared.clone(),
            peer,
        };
        if let Err(e) = server.check() {
            if let Some(suppressed) = refusals.allow() {
                tracing::warn!(peer = %peer, error = %e, suppressed, "refused an agent rpc connection");
            }
            continue;
        }
        let _ = stream.set_nodelay(true);
        coral_proto::spawn_channel!(coral_proto::local::framed(stream), server.serve());
    }
}

impl AgentRpc for ColonyConnection {
    async fn exec_start(self, _: Context, req: ExecRequest) -> Result<ExecStarted, ExecError> {
        self.check()?;
        let services: Vec<String> = self
            .shared
            .services_snapshot()
            .into_iter()
            .map(|s| s.spec.name)
            .collect();
        let peer = self.peer.to_string();
        self.shared
            .exec
            .start(req, self.agent(), &services, &peer)
            .await
    }

    async fn exec_poll(
        self,
        _: Context,
        exec_id: String,
        offset: u64,
        wait_ms: u64,
    ) -> Result<ExecPoll, ExecError> {
        self.check()?;
        self.shared.exec.poll(&exec_id, offset, wait_ms).await
    }

    async fn exec_cancel(self, _: Context, exec_id: String) -> Result<(), ExecError> {
        self.check()?;
        self.shared.exec.cancel(&exec_id)
    }

    async fn audit(self, _: Context, q: AuditQuery) -> Result<Vec<ExecAuditRecord>, ExecError> {
        self.check()?;
        self.shared.exec.audit(self.agent(), q).await
    }

    async fn telemetry_head(self, _: Context) -> Checkpoints {
        let mut head = Checkpoints::default();
        if self.check().is_ok() {
            for kind in SignalKind::ALL {
                head.set(kind, self.shared.telemetry.last_seq(kind));
            }
        }
        head
    }

    async fn debug(
        self,
        _: Context,
        service: String,
        op: coral_proto::debug::DebugOp,
    ) -> Result<coral_proto::debug::DebugReply, coral_proto::debug::DebugError> {
        self.check()
            .map_err(|e| coral_proto::debug::DebugError::Refused(e.to_string()))?;
        crate::debug::handle(self.shared.clone(), service, op).await
    }
}
