//! The colony's tarpc services: the agent-facing control plane (TCP) and the
//! CLI-facing local control service (Unix socket).

use super::Shared;
use coral_agent::telemetry::SampleRow;
use coral_proto::rpc::{Colony, ColonyControl};
use coral_proto::{
    ColonyEndpoint, ColonyError, ColonyStatus, Heartbeat, HeartbeatAck, LogQuery, LogRecord,
    QueryError, Registered, Registration, ServiceHealth, Signals, SpanRecord, TraceQuery,
    TraceSummary,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tarpc::context::Context;
use tokio::net::{TcpListener, UnixListener};

/// Limits on what one agent may send in one call.
const MAX_SERVICES: usize = 1_000;
const MAX_SAMPLES: usize = 10_000;
const MAX_ID: usize = 128;
const MAX_PUSH_ROWS: usize = 10_000;

/// The rows above `stored`, attributed to the agent that pushed them.
fn only_after(signals: Signals, stored: u64, agent_id: &str) -> Signals {
    fn keep<T>(
        rows: Vec<T>,
        stored: u64,
        agent_id: &str,
        f: impl Fn(&mut T) -> (&mut u64, &mut String),
    ) -> Vec<T> {
        rows.into_iter()
            .filter_map(|mut r| {
                let (seq, agent) = f(&mut r);
                if *seq <= stored {
                    return None;
                }
                agent.clear();
                agent.push_str(agent_id);
                Some(r)
            })
            .collect()
    }
    match signals {
        Signals::Spans(v) => {
            Signals::Spans(keep(v, stored, agent_id, |r| (&mut r.seq, &mut r.agent_id)))
        }
        Signals::Metrics(v) => {
            Signals::Metrics(keep(v, stored, agent_id, |r| (&mut r.seq, &mut r.agent_id)))
        }
        Signals::Logs(v) => {
            Signals::Logs(keep(v, stored, agent_id, |r| (&mut r.seq, &mut r.agent_id)))
        }
        Signals::Red(v) => {
            Signals::Red(keep(v, stored, agent_id, |r| (&mut r.seq, &mut r.agent_id)))
        }
        Signals::Edges(v) => {
            Signals::Edges(keep(v, stored, agent_id, |r| (&mut r.seq, &mut r.agent_id)))
        }
    }
}

#[derive(Clone)]
struct AgentFacing {
    shared: Arc<Shared>,
    peer: SocketAddr,
}

pub(crate) async fn serve_agents(shared: Arc<Shared>, listener: TcpListener) {
    let accept_errors = coral_proto::local::RateLimited::new(Duration::from_secs(1));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                if let Some(suppressed) = accept_errors.allow() {
                    tracing::warn!(error = %e, suppressed, "agent accept failed");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let facing = AgentFacing {
            shared: shared.clone(),
            peer,
        };
        coral_proto::spawn_channel!(coral_proto::local::framed(stream), facing.serve());
    }
}

fn invalid(msg: impl Into<String>) -> ColonyError {
    ColonyError::Invalid(msg.into())
}

fn check_services(services: &[ServiceHealth]) -> Result<(), ColonyError> {
    if services.len() > MAX_SERVICES {
        return Err(invalid(format!("more than {MAX_SERVICES} services")));
    }
    for s in services {
        s.spec.validate().map_err(|e| invalid(e.to_string()))?;
    }
    Ok(())
}

fn check_id(id: &str) -> Result<(), ColonyError> {
    if id.is_empty() || id.len() > MAX_ID || id.chars().any(|c| c.is_control()) {
        return Err(invalid("agent id must be 1-128 printable characters"));
    }
    Ok(())
}

fn storage(e: impl std::fmt::Display) -> ColonyError {
    tracing::error!(error = %e, "colony storage failed");
    ColonyError::Storage(e.to_string())
}

impl Colony for AgentFacing {
    async fn register(self, _: Context, reg: Registration) -> Result<Registered, ColonyError> {
        check_id(&reg.agent_id)?;
        check_services(&reg.services)?;
        let s = &self.shared;
        if let Some(wanted) = &reg.colony_id
            && wanted != &s.colony_id
        {
            return Err(ColonyError::WrongColony {
                wanted: wanted.clone(),
                actual: s.colony_id.clone(),
            });
        }
        let now = coral_proto::now_ms();
        let seq_lock = s.agent_seq(&reg.agent_id);
        let mut seq = seq_lock.lock().await;
        let recorded = s
            .registry
            .lock()
            .expect("registry lock")
            .register(&reg, &self.peer.to_string(), now)
            .map_err(storage)?;
        // DuckDB is the truth for what is stored: the registry's seq may lag
        // it if the colony died between the two commits.
        let last_seq = recorded.max(s.telemetry.max_seq(&reg.agent_id).await.map_err(storage)?);
        *seq = Some(last_seq);
        let checkpoints = s
            .telemetry
            .checkpoints(&reg.agent_id)
            .await
            .map_err(storage)?;
        tracing::info!(agent = %reg.name, agent_id = %reg.agent_id, peer = %self.peer, services = reg.services.len(), "agent registered");
        Ok(Registered {
            colony_id: s.colony_id.clone(),
            last_seq,
            heartbeat_interval_ms: s.config.heartbeat_interval.as_millis() as u64,
            checkpoints,
        })
    }

    async fn heartbeat(self, _: Context, hb: Heartbeat) -> Result<HeartbeatAck, ColonyError> {
        check_id(&hb.agent_id)?;
        check_services(&hb.services)?;
        if hb.samples.len() > MAX_SAMPLES {
            return Err(invalid(format!(
                "more than {MAX_SAMPLES} samples in one heartbeat"
            )));
        }
        let s = &self.shared;
        // One heartbeat per agent at a time, so no sample is stored twice.
        let seq_lock = s.agent_seq(&hb.agent_id);
        let mut seq = seq_lock.lock().await;
        let stored = match *seq {
            Some(v) => v,
            None => {
                let recorded = s
                    .registry
                    .lock()
                    .expect("registry lock")
                    .last_seq(&hb.agent_id)
                    .map_err(storage)?
                    .ok_or_else(|| ColonyError::UnknownAgent(hb.agent_id.clone()))?;
                recorded.max(s.telemetry.max_seq(&hb.agent_id).await.map_err(storage)?)
            }
        };
        // Store each sample once: anything at or below `stored` is a resend.
        let new: Vec<SampleRow> = hb
            .samples
            .into_iter()
            .filter(|x| x.seq > stored)
            .map(|sample| SampleRow {
                agent_id: hb.agent_id.clone(),
                sample,
            })
            .collect();
        let last_seq = new.iter().map(|r| r.sample.seq).max().unwrap_or(stored);
        s.telemetry.insert(new).await.map_err(storage)?;
        *seq = Some(last_seq);
        s.registry
            .lock()
            .expect("registry lock")
            .heartbeat(&hb.agent_id, &hb.services, last_seq, coral_proto::now_ms())
            .map_err(storage)?;
        Ok(HeartbeatAck { last_seq })
    }

    async fn push(
        self,
        _: Context,
        agent_id: String,
        signals: Signals,
    ) -> Result<u64, ColonyError> {
        check_id(&agent_id)?;
        if signals.len() > MAX_PUSH_ROWS {
            return Err(invalid(format!(
                "more than {MAX_PUSH_ROWS} rows in one push"
            )));
        }
        let s = &self.shared;
        let kind = signals.kind();
        // One push per agent and kind at a time, so no row is stored twice.
        let seq_lock = s.signal_seq(&agent_id, kind);
        let mut seq = seq_lock.lock().await;
        let stored = match *seq {
            Some(v) => v,
            None => {
                let known = s
                    .registry
                    .lock()
                    .expect("registry lock")
                    .last_seq(&agent_id)
                    .map_err(storage)?;
                if known.is_none() {
                    return Err(ColonyError::UnknownAgent(agent_id));
                }
                s.telemetry
                    .checkpoints(&agent_id)
                    .await
                    .map_err(storage)?
                    .get(kind)
            }
        };
        let fresh = only_after(signals, stored, &agent_id);
        let last = stored.max(fresh.max_seq());
        s.telemetry
            .insert_batch(fresh.into())
            .await
            .map_err(storage)?;
        *seq = Some(last);
        Ok(last)
    }

    async fn leave(self, _: Context, agent_id: String) -> Result<(), ColonyError> {
        check_id(&agent_id)?;
        let known = self
            .shared
            .registry
            .lock()
            .expect("registry lock")
            .leave(&agent_id, coral_proto::now_ms())
            .map_err(storage)?;
        if !known {
            return Err(ColonyError::UnknownAgent(agent_id));
        }
        tracing::info!(agent_id = %agent_id, "agent left");
        Ok(())
    }
}

#[derive(Clone)]
struct Control {
    shared: Arc<Shared>,
}

pub(crate) async fn serve_control(shared: Arc<Shared>, listener: UnixListener) {
    coral_proto::local::serve_local(listener, |stream| {
        let control = Control {
            shared: shared.clone(),
        };
        coral_proto::spawn_channel!(coral_proto::local::framed(stream), control.serve());
    })
    .await;
}

impl ColonyControl for Control {
    async fn status(self, _: Context) -> ColonyStatus {
        let s = &self.shared;
        let now = coral_proto::now_ms();
        let agents = s
            .registry
            .lock()
            .expect("registry lock")
            .agents(now, s.config.agent_timeout.as_millis() as i64)
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "cannot read agents");
                Vec::new()
            });
        let stored = s.telemetry.counts();
        ColonyStatus {
            colony_id: s.colony_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            started_at_ms: s.started_at_ms,
            now_ms: now,
            rpc_addr: s.rpc_addr.lock().expect("rpc_addr lock").clone(),
            state_dir: s.state_dir.display().to_string(),
            stored_samples: stored.samples,
            stored_spans: stored.spans,
            stored_metric_points: stored.metric_points,
            stored_logs: stored.logs,
            agents,
        }
    }

    async fn endpoint(self, _: Context) -> ColonyEndpoint {
        ColonyEndpoint {
            colony_id: self.shared.colony_id.clone(),
            rpc_addr: self.shared.rpc_addr.lock().expect("rpc_addr lock").clone(),
        }
    }

    async fn traces(self, _: Context, q: TraceQuery) -> Result<Vec<TraceSummary>, QueryError> {
        super::query::traces(&self.shared.telemetry, q).await
    }

    async fn trace(self, _: Context, trace_id: String) -> Result<Vec<SpanRecord>, QueryError> {
        super::query::trace(&self.shared.telemetry, &trace_id).await
    }

    async fn logs(self, _: Context, q: LogQuery) -> Result<Vec<LogRecord>, QueryError> {
        super::query::logs(&self.shared.telemetry, q).await
    }

    async fn metrics(
        self,
        _: Context,
        q: coral_proto::MetricsQuery,
    ) -> Result<coral_proto::MetricsReport, QueryError> {
        super::query::metrics(&self.shared.telemetry, q).await
    }

    async fn service_map(
        self,
        _: Context,
        q: coral_proto::MapQuery,
    ) -> Result<coral_proto::ServiceMap, QueryError> {
        super::query::service_map(&self.shared.telemetry, q).await
    }

    async fn stop(self, _: Context) -> u32 {
        tracing::info!("stop requested over the local socket");
        self.shared.shutdown.cancel();
        std::process::id()
    }
}
