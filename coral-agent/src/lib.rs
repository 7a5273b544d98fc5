//! The Coral agent: one per host. It watches the services connected to it
//! (health probes), keeps recent telemetry in its own DuckDB, and reports to
//! its colony over tarpc, re-registering after any reconnect without losing
//! a sample.
//!
//! Start it with [`Agent::open`] then [`Agent::run`] (or [`run`]), giving it
//! the Unix listener for its local control socket and a shutdown future.

mod colony_calls;
pub mod config;
pub mod debug;
pub mod ebpf;
pub mod exec;
pub mod join;
mod link;
mod local_control;
pub mod otlp;
pub mod probe;
mod state;

pub use config::AgentConfig;

use coral_proto::{Health, HealthSample, ServiceHealth, ServiceSpec};
use coral_store::telemetry::{SampleRow, Telemetry, TelemetryGuard};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::net::UnixListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("invalid agent config: {0}")]
    Config(String),
    #[error(transparent)]
    State(#[from] coral_store::sqlite::StoreError),
    #[error(transparent)]
    Telemetry(#[from] coral_store::telemetry::TelemetryError),
    #[error(transparent)]
    Otlp(#[from] otlp::BindError),
    #[error("cannot create state dir {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("agent mesh: {0}")]
    Mesh(String),
}

/// Samples waiting for the colony's acknowledgement.
struct PendingSamples {
    /// Last sample sequence number used: the boot counter in the high 32 bits.
    next_seq: u64,
    samples: VecDeque<HealthSample>,
    dropped: u64,
}

struct Watched {
    health: ServiceHealth,
    cancel: CancellationToken,
}

/// State shared by the agent's tasks.
pub(crate) struct AgentCore {
    pub(crate) config: AgentConfig,
    pub(crate) agent_id: String,
    pub(crate) name: String,
    pub(crate) hostname: String,
    pub(crate) started_at_ms: i64,
    pub(crate) state_dir: PathBuf,
    state: Mutex<state::AgentDb>,
    services: Mutex<BTreeMap<String, Watched>>,
    pending: Mutex<PendingSamples>,
    pub(crate) link: Mutex<coral_proto::ColonyLink>,
    pub(crate) telemetry: Telemetry,
    /// OTLP/gRPC and OTLP/HTTP addresses, when the receiver runs.
    pub(crate) otlp_addrs: Option<(String, String)>,
    /// Where `AgentRpc` is served (the bound `agent.rpc_listen`).
    pub(crate) rpc_addr: String,
    /// The IP of the colony the link connected to: the only caller
    /// `AgentRpc` accepts (until the mesh identity replaces this check).
    pub(crate) colony_peer: Mutex<Option<std::net::IpAddr>>,
    pub(crate) exec: Arc<exec::Exec>,
    /// Live-debugging sessions (issue 12).
    pub(crate) debug: Arc<debug::Debugger>,
    /// Requests copied from the eBPF capture for `coral debug trace`.
    pub(crate) requests: Arc<ebpf::tap::RequestTap>,
    prober: probe::Prober,
    /// The eBPF capture's state, once it started.
    pub(crate) ebpf: Arc<Mutex<Option<coral_proto::EbpfStatus>>>,
    /// Tells the eBPF capture that the connected services changed.
    pub(crate) follow: Arc<ebpf::Follow>,
    /// Wakes the link to send a heartbeat now (services changed).
    pub(crate) changed: Notify,
    pub(crate) shutdown: CancellationToken,
    /// The mesh, once this agent has joined a colony with a token.
    pub(crate) mesh: Option<Arc<join::AgentMesh>>,
    /// The agent's own mesh address (the one place to read it): listeners
    /// the colony dials bind here. `None` for an agent without the mesh.
    pub(crate) mesh_ip: Option<std::net::Ipv4Addr>,
}

/// An opened agent, ready to run.
pub struct Agent {
    shared: Arc<AgentCore>,
    otlp: Option<otlp::Listeners>,
    rpc: Option<std::net::TcpListener>,
    _telemetry: TelemetryGuard,
}

impl Agent {
    /// Redeems a join token with its colony (see [`join::redeem`]) before
    /// the agent opens; returns the colony id and the agent's mesh address,
    /// and whether the token was redeemed now (false: this agent already
    /// redeemed it).
    pub async fn join(
        config: &AgentConfig,
        token: &str,
    ) -> Result<(coral_proto::MeshGrant, bool), join::JoinFailure> {
        let state_dir = config.state_dir();
        coral_proto::local::ensure_private_dir(&state_dir).map_err(|e| {
            join::JoinFailure::Local(format!("cannot create {}: {e}", state_dir.display()))
        })?;
        let agent_id = state::AgentDb::open(&state_dir.join("agent.db"))
            .and_then(|s| s.agent_id())
            .map_err(|e| join::JoinFailure::Local(e.to_string()))?;
        let hostname = hostname();
        let name = config.name.clone().unwrap_or_else(|| hostname.clone());
        join::redeem(config, &agent_id, &name, &hostname, token).await
    }

    /// Validates the config and opens the agent's state and telemetry files.
    /// With a cached mesh membership it also brings the mesh up, which must
    /// happen inside a tokio runtime.
    /// Commands for `coral exec` are started by the agent itself, without
    /// cgroup or landlock (see [`Agent::open_with_spawner`]).
    pub fn open(config: AgentConfig) -> Result<Agent, AgentError> {
        Self::open_with_spawner(config, None)
    }

    /// Like [`Agent::open`]; commands for `coral exec` run through
    /// `spawner` ([`exec::Spawner::start`], before the agent confines
    /// itself), which confines each one and joins it to its cgroup.
    pub fn open_with_spawner(
        config: AgentConfig,
        spawner: Option<std::sync::Arc<exec::Spawner>>,
    ) -> Result<Agent, AgentError> {
        config.validate().map_err(AgentError::Config)?;
        let state_dir = config.state_dir();
        coral_proto::local::ensure_private_dir(&state_dir).map_err(|source| {
            AgentError::StateDir {
                path: state_dir.clone(),
                source,
            }
        })?;
        let mut state = state::AgentDb::open(&state_dir.join("agent.db"))?;
        let agent_id = state.agent_id()?;
        let boot = state.next_boot()?;
        // Services from the config are added once; later edits go through
        // `coral connect`/`coral disconnect`.
        let known: Vec<String> = state.services()?.into_iter().map(|s| s.name).collect();
        let from_config: Vec<ServiceSpec> = ServiceSpec::parse_all(&config.services)
            .map_err(|e| AgentError::Config(e.to_string()))?
            .into_iter()
            .filter(|s| !known.contains(&s.name))
            .collect();
        state.add_services(&from_config)?;
        let otlp_listeners = match config.otlp.enabled {
            true => Some(otlp::Listeners::bind(&config.otlp)?),
            false => None,
        };
        let exec = exec::Exec::open(&config.exec, &state_dir.join("agent.db"), spawner)?;
        let (telemetry, guard) = Telemetry::open_with(
            &state_dir.join("telemetry.duckdb"),
            config.retention,
            Some(1),
        )?;
        let hostname = hostname();
        let name = config.name.clone().unwrap_or_else(|| hostname.clone());
        let mesh = match join::SavedMembership::load(&state_dir)
            .map_err(|e| AgentError::Mesh(e.to_string()))?
        {
            Some((m, grant)) => {
                if let Some(want) = &config.colony_id
                    && want != &grant.colony_id
                {
                    return Err(AgentError::Mesh(format!(
                        "this agent is a member of colony '{}', not '{want}' (join the other with --join TOKEN)",
                        grant.colony_id
                    )));
                }
                Some(Arc::new(
                    join::AgentMesh::open(&config, &agent_id, m, grant)
                        .map_err(|e| AgentError::Mesh(e.to_string()))?,
                ))
            }
            None => None,
        };
        // On the mesh, AgentRpc is served on the agent's mesh address (the
        // colony reaches it there); a loopback rpc_listen keeps its port.
        let rpc_listen = match (&mesh, config.rpc_listen.parse::<std::net::SocketAddr>()) {
            (Some(m), Ok(a)) if a.ip().is_loopback() => {
                std::net::SocketAddr::new(m.mesh_ip.into(), a.port()).to_string()
            }
            _ => config.rpc_listen.clone(),
        };
        let rpc = std::net::TcpListener::bind(&rpc_listen)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| {
                AgentError::Config(format!(
                    "cannot listen on agent.rpc_listen {rpc_listen}: {e}"
                ))
            })?;
        let rpc_addr = rpc
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| rpc_listen.clone());
        let now = coral_proto::now_ms();
        let shared = Arc::new(AgentCore {
            prober: probe::Prober::new(config.probe_timeout),
            agent_id,
            name,
            hostname,
            started_at_ms: now,
            state_dir,
            state: Mutex::new(state),
            services: Mutex::new(BTreeMap::new()),
            pending: Mutex::new(PendingSamples {
                next_seq: boot << 32,
                samples: VecDeque::new(),
                dropped: 0,
            }),
            link: Mutex::new(coral_proto::ColonyLink {
                state: coral_proto::LinkState::Connecting,
                addr: config.colony.clone().unwrap_or_default(),
                colony_id: config.colony_id.clone(),
                since_ms: now,
                last_heartbeat_ms: None,
                last_error: None,
                attempts: 0,
            }),
            telemetry,
            otlp_addrs: otlp_listeners.as_ref().map(otlp::Listeners::addrs),
            rpc_addr,
            colony_peer: Mutex::new(None),
            exec: Arc::new(exec),
            debug: Arc::new(debug::Debugger::new(
                config.mesh.helper_socket.clone(),
                config.debug.limits(),
            )),
            ebpf: Arc::new(Mutex::new(None)),
            requests: Arc::default(),
            follow: Arc::new(ebpf::Follow::new().map_err(|e| {
                AgentError::Config(format!(
                    "cannot create the eBPF capture's wakeup socket: {e}"
                ))
            })?),
            changed: Notify::new(),
            shutdown: CancellationToken::new(),
            mesh_ip: mesh.as_ref().map(|m| m.mesh_ip),
            mesh,
            config,
        });
        Ok(Agent {
            shared,
            otlp: otlp_listeners,
            rpc: Some(rpc),
            _telemetry: guard,
        })
    }

    pub fn agent_id(&self) -> &str {
        &self.shared.agent_id
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The agent's mesh address, once it joined a colony.
    pub fn mesh_ip(&self) -> Option<std::net::Ipv4Addr> {
        self.shared.mesh_ip
    }

    /// The colony this agent is a member of (from its signed grant).
    pub fn mesh_colony(&self) -> Option<&str> {
        self.shared
            .mesh
            .as_ref()
            .map(|m| m.grant.colony_id.as_str())
    }

    /// Runs until `shutdown` resolves or a client asks the agent to stop.
    pub async fn run(mut self, control: UnixListener, shutdown: impl Future<Output = ()>) {
        let shared = self.shared.clone();
        let otlp_task = self.otlp.take().map(|listeners| {
            let receiver = otlp::Receiver::new(
                &shared.agent_id,
                shared.telemetry.clone(),
                &shared.config.otlp,
            );
            tokio::spawn(otlp::serve(receiver, listeners, shared.shutdown.clone()))
        });
        let specs = match shared.state.lock().expect("state lock").services() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot read services");
                Vec::new()
            }
        };
        for spec in specs {
            shared.watch(spec);
        }
        let mesh_task = shared.mesh.clone().map(|m| {
            // Not tied to shutdown: the link says goodbye over the mesh first.
            let stop = CancellationToken::new();
            tokio::spawn(async move {
                if let Err(e) = m.device.clone().run(stop).await {
                    tracing::error!(error = %e, "the WireGuard device stopped");
                }
            })
        });
        let capture = shared.config.ebpf.enabled.then(|| {
            let weak = Arc::downgrade(&shared);
            let services: ebpf::Services = Arc::new(move || {
                weak.upgrade()
                    .map(|s| {
                        s.services_snapshot()
                            .into_iter()
                            .map(|h| (h.spec.port, h.spec.name))
                            .collect()
                    })
                    .unwrap_or_default()
            });
            ebpf::Capture::start(
                shared.config.ebpf.clone(),
                shared.agent_id.clone(),
                services,
                shared.follow.clone(),
                ebpf::Sinks {
                    telemetry: shared.telemetry.clone(),
                    status: shared.ebpf.clone(),
                    tap: shared.requests.clone(),
                },
                tokio::runtime::Handle::current(),
            )
        });
        let control_task = tokio::spawn(local_control::serve(shared.clone(), control));
        let rpc_task = match self.rpc.take().map(tokio::net::TcpListener::from_std) {
            Some(Ok(l)) => Some(tokio::spawn(colony_calls::serve(shared.clone(), l))),
            Some(Err(e)) => {
                tracing::error!(error = %e, "cannot serve agent rpc; coral exec will not reach this agent");
                None
            }
            None => None,
        };
        let exec_stop = CancellationToken::new();
        let exec_task = tokio::spawn(shared.exec.clone().background(exec_stop.clone()));
        let link_task = tokio::spawn(link::run(shared.clone()));
        let debug_task = tokio::spawn(debug::run(shared.clone()));
        tracing::info!(agent_id = %shared.agent_id, name = %shared.name, "agent running");
        tokio::select! {
            _ = shutdown => {}
            _ = shared.shutdown.cancelled() => {}
        }
        tracing::info!("agent stopping");
        // The capture flushes its last aggregates and releases every BPF
        // object (its fds are the only references) before the link's final
        // push.
        if let Some(c) = capture {
            let _ = tokio::task::spawn_blocking(move || c.stop()).await;
        }
        shared.shutdown.cancel();
        debug_task.abort();
        let _ = shared.debug.detach(None);
        debug::save(&shared).await;
        control_task.abort();
        if let Some(t) = rpc_task {
            t.abort();
        }
        exec_stop.cancel();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(3), exec_task).await;
        for w in shared.services.lock().expect("services lock").values() {
            w.cancel.cancel();
        }
        // The link says goodbye to the colony (bounded in time) and ends;
        // the OTLP servers finish the requests they hold.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(3), link_task).await;
        if let Some(t) = otlp_task {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), t).await;
        }
        if let Some(t) = mesh_task {
            t.abort();
        }
        drop(shared);
        // Dropping `self` commits outstanding telemetry and joins the writer.
    }
}

/// Opens the agent and runs it (see [`Agent::open`] and [`Agent::run`]).
pub async fn run(
    config: AgentConfig,
    control: UnixListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    Agent::open(config)?.run(control, shutdown).await;
    Ok(())
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

impl AgentCore {
    /// Starts probing a service.
    fn watch(self: &Arc<Self>, spec: ServiceSpec) {
        let cancel = self.shutdown.child_token();
        let name = spec.name.clone();
        self.services.lock().expect("services lock").insert(
            name.clone(),
            Watched {
                health: ServiceHealth::new(spec.clone()),
                cancel: cancel.clone(),
            },
        );
        let shared = self.clone();
        tokio::spawn(async move {
            let interval = shared.config.probe_interval;
            loop {
                let result = shared.prober.probe(&spec).await;
                if cancel.is_cancelled() {
                    break;
                }
                shared.record(&spec.name, result).await;
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = cancel.cancelled() => break,
                }
            }
        });
        tracing::info!(service = %name, "watching service");
    }

    async fn record(&self, service: &str, r: probe::ProbeResult) {
        let now = coral_proto::now_ms();
        let mut changed = false;
        {
            let mut services = self.services.lock().expect("services lock");
            let Some(w) = services.get_mut(service) else {
                return; // disconnected while probing
            };
            let h = &mut w.health;
            let health = if r.up { Health::Up } else { Health::Down };
            if h.health != health {
                changed = true;
                h.health = health;
                h.since_ms = Some(now);
                tracing::info!(
                    service,
                    health = health.as_str(),
                    error = r.error.as_deref().unwrap_or(""),
                    "service health changed"
                );
            }
            h.last_checked_ms = Some(now);
            h.latency_us = Some(r.latency.as_micros() as u64);
            h.last_error = r.error.clone();
        }
        let sample = {
            // The seq is taken and the sample queued under one lock, so the
            // queue is always in seq order: an acknowledgement up to N never
            // skips a sample below N that is not queued yet.
            let mut p = self.pending.lock().expect("pending lock");
            p.next_seq += 1;
            let sample = HealthSample {
                seq: p.next_seq,
                ts_ms: now,
                service: service.to_string(),
                up: r.up,
                latency_us: r.latency.as_micros() as u64,
                error: r.error,
            };
            if p.samples.len() >= self.config.max_pending_samples {
                p.samples.pop_front();
                p.dropped += 1;
            }
            p.samples.push_back(sample.clone());
            sample
        };
        let row = SampleRow {
            agent_id: self.agent_id.clone(),
            sample,
        };
        if let Err(e) = self.telemetry.insert(vec![row]).await {
            tracing::warn!(error = %e, "cannot store health sample");
        }
        if changed {
            self.changed.notify_one();
        }
    }

    /// Waits (briefly) until the eBPF capture follows the connected
    /// services as they are now: `coral connect` takes effect before it
    /// returns. A capture that is off or slow is not waited for.
    pub(crate) async fn follow_services(&self) {
        let ticket = self.follow.request();
        if !self
            .follow
            .applied(ticket, std::time::Duration::from_secs(2))
            .await
            && self
                .ebpf
                .lock()
                .expect("ebpf status")
                .as_ref()
                .is_some_and(|s| s.running)
        {
            tracing::warn!("the eBPF capture did not update its followed ports within 2 s");
        }
    }

    pub(crate) fn services_snapshot(&self) -> Vec<ServiceHealth> {
        self.services
            .lock()
            .expect("services lock")
            .values()
            .map(|w| w.health.clone())
            .collect()
    }

    /// Up to `max` samples not yet acknowledged, oldest first.
    pub(crate) fn pending_batch(&self, max: usize) -> (Vec<HealthSample>, u64) {
        let p = self.pending.lock().expect("pending lock");
        (p.samples.iter().take(max).cloned().collect(), p.dropped)
    }

    /// Forgets samples the colony has stored.
    pub(crate) fn acknowledge(&self, last_seq: u64) {
        let mut p = self.pending.lock().expect("pending lock");
        while p.samples.front().is_some_and(|s| s.seq <= last_seq) {
            p.samples.pop_front();
        }
    }

    pub(crate) fn pending_counts(&self) -> (u64, u64) {
        let p = self.pending.lock().expect("pending lock");
        (p.samples.len() as u64, p.dropped)
    }

    pub(crate) fn connect(
        self: &Arc<Self>,
        specs: Vec<ServiceSpec>,
    ) -> Result<Vec<ServiceSpec>, coral_proto::ControlError> {
        use coral_proto::{ControlError, SpecError};
        let mut seen: Vec<&str> = Vec::new();
        for s in &specs {
            s.validate()?;
            if seen.contains(&s.name.as_str()) {
                return Err(SpecError::Duplicate(s.name.clone()).into());
            }
            seen.push(&s.name);
        }
        {
            // Hold the services lock across the check and the insert so two
            // clients cannot add the same name at once.
            let services = self.services.lock().expect("services lock");
            if let Some(s) = specs.iter().find(|s| services.contains_key(&s.name)) {
                return Err(ControlError::AlreadyConnected(s.name.clone()));
            }
            let max = coral_proto::spec::MAX_SERVICES_PER_AGENT;
            if services.len() + specs.len() > max {
                return Err(ControlError::TooManyServices {
                    have: services.len(),
                    max,
                });
            }
            self.state
                .lock()
                .expect("state lock")
                .add_services(&specs)
                .map_err(|e| ControlError::Storage(e.to_string()))?;
        }
        for s in &specs {
            self.watch(s.clone());
        }
        self.changed.notify_one();
        Ok(specs)
    }

    pub(crate) fn disconnect(&self, name: &str) -> Result<ServiceSpec, coral_proto::ControlError> {
        use coral_proto::ControlError;
        let mut services = self.services.lock().expect("services lock");
        let Some(w) = services.get(name) else {
            return Err(ControlError::UnknownService(name.to_string()));
        };
        self.state
            .lock()
            .expect("state lock")
            .remove_service(name)
            .map_err(|e| ControlError::Storage(e.to_string()))?;
        w.cancel.cancel();
        let spec = w.health.spec.clone();
        services.remove(name);
        drop(services);
        tracing::info!(service = name, "service disconnected");
        self.changed.notify_one();
        Ok(spec)
    }
}
