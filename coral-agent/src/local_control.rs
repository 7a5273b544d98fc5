//! The agent's local control service (CLI → agent over the Unix socket).

use crate::AgentCore;
use coral_proto::services::AgentControl;
use coral_proto::{AgentStatus, ControlError, ServiceSpec};
use std::sync::Arc;
use tarpc::context::Context;
use tokio::net::UnixListener;

/// One CLI connection to `agent.sock`.
#[derive(Clone)]
struct LocalControl {
    shared: Arc<AgentCore>,
}

pub(crate) async fn serve(shared: Arc<AgentCore>, listener: UnixListener) {
    coral_proto::local::serve_local(listener, |stream| {
        let control = LocalControl {
            shared: shared.clone(),
        };
        coral_proto::spawn_channel!(coral_proto::local::framed(stream), control.serve());
    })
    .await;
}

impl AgentControl for LocalControl {
    async fn status(self, _: Context) -> AgentStatus {
        let s = &self.shared;
        let (pending, dropped) = s.pending_counts();
        let stored = s.telemetry.counts();
        AgentStatus {
            agent_id: s.agent_id.clone(),
            name: s.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            started_at_ms: s.started_at_ms,
            now_ms: coral_proto::now_ms(),
            state_dir: s.state_dir.display().to_string(),
            colony: s.link.lock().expect("link lock").clone(),
            pending_samples: pending,
            dropped_samples: dropped,
            stored_samples: stored.samples,
            stored_spans: stored.spans,
            stored_metric_points: stored.metric_points,
            stored_logs: stored.logs,
            services: s.services_snapshot(),
            otlp_grpc: s.otlp_addrs.as_ref().map(|a| a.0.clone()),
            otlp_http: s.otlp_addrs.as_ref().map(|a| a.1.clone()),
            mesh_ip: s.mesh_ip.map(|ip| ip.to_string()),
            mesh_interface: s.mesh.as_ref().map(|m| m.interface.clone()),
            rpc_addr: Some(s.rpc_addr.clone()),
            exec: Some(s.exec.status()),
            ebpf: s.ebpf.lock().expect("ebpf status").clone(),
            debug: Some(s.debug.status(stored.calls)),
        }
    }

    async fn connect(
        self,
        _: Context,
        specs: Vec<ServiceSpec>,
    ) -> Result<Vec<ServiceSpec>, ControlError> {
        let specs = self.shared.connect(specs)?;
        self.shared.follow_services().await;
        Ok(specs)
    }

    async fn disconnect(self, _: Context, name: String) -> Result<ServiceSpec, ControlError> {
        let spec = self.shared.disconnect(&name)?;
        self.shared.follow_services().await;
        Ok(spec)
    }

    async fn stop(self, _: Context) -> u32 {
        tracing::info!("stop requested over the local socket");
        self.shared.shutdown.cancel();
        std::process::id()
    }
}
