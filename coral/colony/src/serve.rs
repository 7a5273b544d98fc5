//! The colony's tarpc services: the agent-facing control plane (TCP) and the
//! CLI-facing local control service (Unix socket).

use super::Shared;
use super::colony_mesh::ColonyMesh;
use super::registry::check_agent_id;
use coral_mesh::membership as ms;
use coral_proto::services::{ColonyControl, ColonyJoin, ColonyLink};
use coral_proto::{
    AuditQuery, AuditReport, ColonyEndpoint, ColonyError, ColonyStatus, ExecError, ExecPoll,
    ExecStartRequest, ExecStarted, Heartbeat, HeartbeatAck, JoinError, JoinRequest, LogQuery,
    LogRecord, Member, MeshAdminError, QueryError, Registered, Registration, ServiceHealth,
    Signals, SignedGrant, SpanRecord, TokenCreated, TokenRequest, TraceQuery, TraceSummary,
};
use coral_store::telemetry::SampleRow;
use futures::StreamExt as _;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tarpc::context::Context;
use tarpc::server::{BaseChannel, Channel as _};
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinHandle;

/// Limits on what one agent may send in one call.
const MAX_SERVICES: usize = coral_proto::spec::MAX_SERVICES_PER_AGENT;
const MAX_SAMPLES: usize = 10_000;
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
        Signals::Calls(v) => {
            Signals::Calls(keep(v, stored, agent_id, |r| (&mut r.seq, &mut r.agent_id)))
        }
    }
}

/// Who is calling, as the transport proves it.
#[derive(Clone, Copy, Debug)]
enum Caller {
    /// Over the mesh: the WireGuard device checked that this source address
    /// belongs to the peer that sent the packets, so it is the identity.
    Mesh(Ipv4Addr),
    /// Over `colony-agents.sock`: the same user on this machine.
    Local,
    /// Plain TCP with the mesh off (development and tests): no identity.
    Dev,
}

/// The agent-facing `ColonyLink` service for one agent connection.
#[derive(Clone)]
struct AgentFacing {
    shared: Arc<Shared>,
    peer: String,
    caller: Caller,
}

impl AgentFacing {
    /// The IP the caller reaches us from (loopback for the local socket).
    fn caller_ip(&self) -> IpAddr {
        match self.caller {
            Caller::Mesh(ip) => IpAddr::V4(ip),
            Caller::Local => IpAddr::V4(Ipv4Addr::LOCALHOST),
            Caller::Dev => self
                .peer
                .parse::<SocketAddr>()
                .map(|a| a.ip())
                .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        }
    }

    /// Refuses a call whose claimed agent id the transport does not back.
    fn authorize(&self, claimed: &str) -> Result<(), ColonyError> {
        let reg = self.shared.registry.lock().expect("registry lock");
        match self.caller {
            Caller::Mesh(ip) => match reg.member_at(ip).map_err(storage)? {
                Some((id, false)) if id == claimed => Ok(()),
                Some((_, true)) => Err(ColonyError::Revoked),
                _ => Err(ColonyError::NotYou {
                    claimed: claimed.to_string(),
                    mesh_ip: ip.to_string(),
                }),
            },
            Caller::Local | Caller::Dev => match reg.is_revoked(claimed).map_err(storage)? {
                true => Err(ColonyError::Revoked),
                false => Ok(()),
            },
        }
    }
}

/// Serves one connection until it closes or `cancel` fires.
fn spawn_conn<S>(stream: S, facing: AgentFacing, cancel: tokio_util::sync::CancellationToken)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let channel = BaseChannel::with_defaults(coral_proto::local::framed(stream));
    tokio::spawn(async move {
        tokio::select! {
            _ = channel.execute(facing.serve()).for_each(|call| async {
                tokio::spawn(call);
            }) => {}
            _ = cancel.cancelled() => {}
        }
    });
}

pub(crate) async fn serve_agents(shared: Arc<Shared>, listener: TcpListener, mesh: bool) {
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
        let (caller, cancel) = match (mesh, peer.ip(), &shared.mesh) {
            (true, IpAddr::V4(ip), Some(m)) => (Caller::Mesh(ip), m.conn_token(ip)),
            (true, _, _) => continue,
            (false, _, _) => (Caller::Dev, shared.shutdown.child_token()),
        };
        let facing = AgentFacing {
            shared: shared.clone(),
            peer: peer.to_string(),
            caller,
        };
        spawn_conn(stream, facing, cancel);
    }
}

/// Starts everything the mesh needs once the runtime runs: the WireGuard
/// device, the control plane on the mesh address, the join endpoint, the
/// local agents' socket, endpoint bookkeeping and discovery publishing.
pub(crate) fn start_mesh(
    shared: &Arc<Shared>,
    m: &Arc<ColonyMesh>,
    control: &UnixListener,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    let mut tasks = Vec::new();
    let dev = m.device.clone();
    // The device outlives the colony's other tasks by a moment on shutdown
    // (see `Colony::run`), so the agents' connections close over it with a
    // FIN and they reconnect at once instead of waiting for a timeout.
    let stop = m.device_stop.clone();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = dev.run(stop).await {
            tracing::error!(error = %e, "the WireGuard device stopped");
        }
    }));
    // A restarted colony greets the agents it knows at once.
    let dev = m.device.clone();
    tasks.push(tokio::spawn(
        async move { dev.initiate_handshakes(false).await },
    ));

    if let Some(rpc) = m.take_rpc_listener() {
        tasks.push(tokio::spawn(serve_agents(shared.clone(), rpc, true)));
    }

    if let Some(join) = m.take_join_listener() {
        let join = TcpListener::from_std(join)?;
        tasks.push(tokio::spawn(serve_join(shared.clone(), join)));
    }

    if let Some(dir) = control
        .local_addr()?
        .as_pathname()
        .and_then(|p| p.parent().map(|d| d.to_path_buf()))
    {
        use std::os::unix::fs::PermissionsExt as _;
        let path = dir.join("colony-agents.sock");
        // The caller holds the colony's pid lock: a file here is stale.
        let _ = std::fs::remove_file(&path);
        let l = UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        *shared.local_agents.lock().expect("local_agents lock") = Some(path);
        let sh = shared.clone();
        tasks.push(tokio::spawn(async move {
            coral_proto::local::serve_local(l, |stream| {
                let facing = AgentFacing {
                    shared: sh.clone(),
                    peer: "local".into(),
                    caller: Caller::Local,
                };
                spawn_conn(stream, facing, sh.shutdown.child_token());
            })
            .await
        }));
    }

    tasks.push(tokio::spawn(persist_endpoints(shared.clone(), m.clone())));
    if let Some(d) = shared.config.mesh.discovery.clone() {
        tasks.push(tokio::spawn(publish_endpoints(
            shared.clone(),
            m.clone(),
            d,
        )));
    }
    Ok(tasks)
}

/// Keeps each member's last WireGuard endpoint in colony.db, so a restarted
/// colony can reach its agents first.
async fn persist_endpoints(shared: Arc<Shared>, m: Arc<ColonyMesh>) {
    let mut known: HashMap<Ipv4Addr, SocketAddr> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        for p in m.device.peer_status() {
            let Some(ep) = p.endpoint else { continue };
            if known.get(&p.mesh_ip) == Some(&ep) {
                continue;
            }
            let r = shared
                .registry
                .lock()
                .expect("registry lock")
                .set_endpoint(p.mesh_ip, &ep.to_string());
            match r {
                Ok(()) => {
                    known.insert(p.mesh_ip, ep);
                }
                Err(e) => tracing::warn!(error = %e, "cannot record a peer endpoint"),
            }
        }
    }
}

/// Publishes the colony's signed endpoints to discovery now and every 30 s.
async fn publish_endpoints(shared: Arc<Shared>, m: Arc<ColonyMesh>, addr: String) {
    let failures = coral_proto::local::RateLimited::new(Duration::from_secs(60));
    loop {
        let rec = ms::sign_endpoints(
            &m.sign,
            &coral_proto::EndpointRecord {
                colony_id: shared.colony_id.clone(),
                endpoints: m.endpoints.clone(),
                issued_at_ms: coral_proto::now_ms(),
            },
        );
        let r = async {
            let s = tokio::time::timeout(
                Duration::from_secs(3),
                tokio::net::TcpStream::connect(&addr),
            )
            .await
            .map_err(|_| "no answer".to_string())?
            .map_err(|e| e.to_string())?;
            let c = coral_proto::services::DiscoveryClient::new(
                Default::default(),
                coral_proto::local::framed(s),
            )
            .spawn();
            c.publish(tarpc::context::current(), rec)
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())
        }
        .await;
        match r {
            Ok(()) => tracing::debug!(discovery = %addr, "published endpoints"),
            Err(e) => {
                if let Some(suppressed) = failures.allow() {
                    tracing::warn!(discovery = %addr, error = %e, suppressed, "cannot publish endpoints to discovery");
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
}

#[derive(Clone)]
struct Joiner {
    shared: Arc<Shared>,
}

/// Frames on the public join endpoint are small: a join request is < 1 KiB.
const MAX_JOIN_FRAME: usize = 16 * 1024;
const MAX_JOINS_IN_FLIGHT: usize = 64;

async fn serve_join(shared: Arc<Shared>, listener: TcpListener) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_JOINS_IN_FLIGHT));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue; // busy: drop the connection
        };
        let joiner = Joiner {
            shared: shared.clone(),
        };
        tokio::spawn(async move {
            let codec = tokio_util::codec::LengthDelimitedCodec::builder()
                .max_frame_length(MAX_JOIN_FRAME)
                .new_codec();
            let transport = tarpc::serde_transport::new(
                tarpc::tokio_util::codec::Framed::new(stream, codec),
                tarpc::tokio_serde::formats::Json::default(),
            );
            let channel = BaseChannel::with_defaults(transport);
            // One join per connection is enough; a slow client is cut off.
            let _ = tokio::time::timeout(
                Duration::from_secs(10),
                channel.execute(joiner.serve()).for_each(|call| call),
            )
            .await;
            drop(permit);
        });
    }
}

impl ColonyJoin for Joiner {
    async fn join(self, _: Context, req: JoinRequest) -> Result<SignedGrant, JoinError> {
        let s = &self.shared;
        let m = s
            .mesh
            .as_ref()
            .ok_or_else(|| JoinError::Invalid("the mesh is off".into()))?;
        let port = s
            .rpc_addr
            .lock()
            .expect("rpc_addr lock")
            .parse::<SocketAddr>()
            .map(|a| a.port())
            .unwrap_or(super::config::DEFAULT_PORT);
        let r = m.join(&s.registry, &s.colony_id, port, req);
        if let Err(e) = &r {
            tracing::info!(error = %e, "join refused");
        }
        r
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

/// Where the colony dials an agent: its advertised `AgentRpc` address; an
/// unspecified IP (the agent bound 0.0.0.0 or ::) is replaced by the IP the
/// agent connected from.
///
/// Over the mesh the colony dials only the caller's own mesh address (its
/// identity), whatever IP it advertised.
fn reachable_rpc_addr(advertised: &str, peer: IpAddr, mesh: bool) -> Result<String, ColonyError> {
    let mut addr: SocketAddr = advertised
        .parse()
        .map_err(|_| invalid(format!("rpc_addr '{advertised}' is not ip:port")))?;
    if addr.port() == 0 {
        return Err(invalid("rpc_addr has port 0"));
    }
    if mesh || addr.ip().is_unspecified() {
        addr.set_ip(peer);
    }
    Ok(addr.to_string())
}

fn storage(e: impl std::fmt::Display) -> ColonyError {
    tracing::error!(error = %e, "colony storage failed");
    ColonyError::Storage(e.to_string())
}

impl ColonyLink for AgentFacing {
    async fn register(self, _: Context, reg: Registration) -> Result<Registered, ColonyError> {
        check_agent_id(&reg.agent_id)?;
        check_services(&reg.services)?;
        self.authorize(&reg.agent_id)?;
        let s = &self.shared;
        if let Some(wanted) = &reg.colony_id
            && wanted != &s.colony_id
        {
            return Err(ColonyError::WrongColony {
                wanted: wanted.clone(),
                actual: s.colony_id.clone(),
            });
        }
        let rpc_addr = match &reg.rpc_addr {
            Some(a) => Some(reachable_rpc_addr(
                a,
                self.caller_ip(),
                matches!(self.caller, Caller::Mesh(_)),
            )?),
            None => None,
        };
        let now = coral_proto::now_ms();
        let seq_lock = s.agent_seq(&reg.agent_id);
        let mut seq = seq_lock.lock().await;
        let recorded = s
            .registry
            .lock()
            .expect("registry lock")
            .register(&reg, &self.peer, rpc_addr.as_deref(), now)
            .map_err(storage)?;
        if !matches!(self.caller, Caller::Mesh(_)) {
            s.registry
                .lock()
                .expect("registry lock")
                .ensure_local_member(&reg.agent_id, &reg.name, now)
                .map_err(storage)?;
        }
        // A new registration may come with a new address.
        s.agent_clients
            .lock()
            .expect("agent_clients lock")
            .remove(&reg.agent_id);
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
        check_agent_id(&hb.agent_id)?;
        check_services(&hb.services)?;
        self.authorize(&hb.agent_id)?;
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
        check_agent_id(&agent_id)?;
        self.authorize(&agent_id)?;
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
        check_agent_id(&agent_id)?;
        self.authorize(&agent_id)?;
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

/// The `ColonyControl` service for one CLI connection on `colony.sock`.
#[derive(Clone)]
struct CliFacing {
    shared: Arc<Shared>,
    /// The CLI's credentials (`SO_PEERCRED`): who asks for an exec.
    cred: Option<tokio::net::unix::UCred>,
}

pub(crate) async fn serve_control(shared: Arc<Shared>, listener: UnixListener) {
    coral_proto::local::serve_local(listener, |stream| {
        let control = CliFacing {
            shared: shared.clone(),
            cred: stream.peer_cred().ok(),
        };
        coral_proto::spawn_channel!(coral_proto::local::framed(stream), control.serve());
    })
    .await;
}

impl ColonyControl for CliFacing {
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
            mesh: s.mesh.as_ref().map(|m| coral_proto::ColonyMeshStatus {
                mesh_ip: m.mesh_ip.to_string(),
                subnet: format!("{}/{}", m.subnet.0, m.subnet.1),
                interface: m.ifname.clone(),
                endpoints: m.endpoints.clone(),
                public_key: ms::hex(&m.public),
                key_source: m.key_source.to_string(),
                tun_path: m.tun_path.to_string(),
            }),
        }
    }

    async fn endpoint(self, _: Context) -> ColonyEndpoint {
        ColonyEndpoint {
            colony_id: self.shared.colony_id.clone(),
            rpc_addr: self.shared.rpc_addr.lock().expect("rpc_addr lock").clone(),
            local_socket: self
                .shared
                .local_agents
                .lock()
                .expect("local_agents lock")
                .as_ref()
                .map(|p| p.display().to_string()),
        }
    }

    async fn traces(self, _: Context, q: TraceQuery) -> Result<Vec<TraceSummary>, QueryError> {
        super::read::traces(&self.shared.telemetry, q).await
    }

    async fn trace(self, _: Context, trace_id: String) -> Result<Vec<SpanRecord>, QueryError> {
        super::read::trace(&self.shared.telemetry, &trace_id).await
    }

    async fn logs(self, _: Context, q: LogQuery) -> Result<Vec<LogRecord>, QueryError> {
        super::read::logs(&self.shared.telemetry, q).await
    }

    async fn exec_start(self, _: Context, req: ExecStartRequest) -> Result<ExecStarted, ExecError> {
        let caller = super::exec::caller_from_cred(self.cred.as_ref(), &self.shared.colony_id);
        self.shared.exec_start(req, caller).await
    }

    async fn debug(
        self,
        _: Context,
        service: String,
        op: coral_proto::debug::DebugOp,
    ) -> Result<coral_proto::debug::DebugReply, coral_proto::debug::DebugError> {
        let caller = super::exec::caller_from_cred(self.cred.as_ref(), &self.shared.colony_id);
        self.shared.debug(service, op, caller).await
    }

    async fn exec_poll(
        self,
        _: Context,
        agent_id: String,
        exec_id: String,
        offset: u64,
        wait_ms: u64,
    ) -> Result<ExecPoll, ExecError> {
        self.shared
            .exec_poll(&agent_id, exec_id, offset, wait_ms)
            .await
    }

    async fn exec_cancel(
        self,
        _: Context,
        agent_id: String,
        exec_id: String,
    ) -> Result<(), ExecError> {
        self.shared.exec_cancel(&agent_id, exec_id).await
    }

    async fn audit(self, _: Context, q: AuditQuery) -> Result<AuditReport, QueryError> {
        self.shared.audit_report(q).await
    }

    async fn red(
        self,
        _: Context,
        q: coral_proto::RedQuery,
    ) -> Result<coral_proto::RedReport, QueryError> {
        super::read::red(&self.shared, q).await
    }

    async fn service_map(
        self,
        _: Context,
        q: coral_proto::MapQuery,
    ) -> Result<coral_proto::ServiceMap, QueryError> {
        super::read::service_map(&self.shared, q).await
    }

    async fn stop(self, _: Context) -> u32 {
        tracing::info!("stop requested over the local socket");
        self.shared.shutdown.cancel();
        std::process::id()
    }

    async fn token_create(
        self,
        _: Context,
        req: TokenRequest,
    ) -> Result<TokenCreated, MeshAdminError> {
        let s = &self.shared;
        let m = s.mesh.as_ref().ok_or(MeshAdminError::Disabled)?;
        if !(1_000..=30 * 24 * 3_600_000).contains(&req.ttl_ms) {
            return Err(MeshAdminError::Invalid(
                "--ttl must be between 1s and 30days".into(),
            ));
        }
        if !(1..=1000).contains(&req.uses) {
            return Err(MeshAdminError::Invalid(
                "--uses must be between 1 and 1000".into(),
            ));
        }
        if m.endpoints.is_empty() {
            return Err(MeshAdminError::Invalid(
                "the colony knows no endpoint of its own to put in a token: set colony.mesh.endpoints (host:port)".into(),
            ));
        }
        let secret = ms::random32();
        let hash = ms::secret_hash(&secret);
        let now = coral_proto::now_ms();
        let expires = now + req.ttl_ms as i64;
        s.registry
            .lock()
            .expect("registry lock")
            .add_token(&hash, now, expires, req.uses)
            .map_err(|e| MeshAdminError::Storage(e.to_string()))?;
        let token = ms::encode_token(&coral_proto::JoinToken {
            colony_id: s.colony_id.clone(),
            colony_public_key: ms::hex(&m.public),
            colony_sign_key: m.sign_key_hex(),
            endpoints: m.endpoints.clone(),
            secret: ms::hex(&secret),
        });
        tracing::info!(
            token = &hash[..12],
            uses = req.uses,
            expires_at_ms = expires,
            "join token created"
        );
        Ok(TokenCreated {
            token,
            id: hash[..12].to_string(),
            colony_id: s.colony_id.clone(),
            endpoints: m.endpoints.clone(),
            expires_at_ms: expires,
            uses: req.uses,
        })
    }

    async fn members(self, _: Context) -> Result<Vec<Member>, MeshAdminError> {
        members(&self.shared)
    }

    async fn revoke(self, _: Context, agent: String) -> Result<Member, MeshAdminError> {
        let s = &self.shared;
        let all = members(s)?;
        let mut hits: Vec<&Member> = all.iter().filter(|m| m.agent_id == agent).collect();
        if hits.is_empty() {
            hits = all.iter().filter(|m| m.name == agent).collect();
        }
        let m = match hits.as_slice() {
            [] => return Err(MeshAdminError::UnknownAgent(agent)),
            [m] => (*m).clone(),
            _ => return Err(MeshAdminError::Ambiguous(agent)),
        };
        s.registry
            .lock()
            .expect("registry lock")
            .revoke(&m.agent_id, coral_proto::now_ms())
            .map_err(|e| MeshAdminError::Storage(e.to_string()))?;
        if let Some(mesh) = &s.mesh {
            mesh.cut(
                m.public_key.as_deref(),
                m.mesh_ip.as_deref().and_then(|ip| ip.parse().ok()),
            )
            .await;
        }
        tracing::info!(agent = %m.name, agent_id = %m.agent_id, "agent revoked");
        Ok(m)
    }
}

/// The active members, with what the WireGuard device knows of each.
fn members(s: &Shared) -> Result<Vec<Member>, MeshAdminError> {
    let rows = s
        .registry
        .lock()
        .expect("registry lock")
        .members()
        .map_err(|e| MeshAdminError::Storage(e.to_string()))?;
    let peers: HashMap<Ipv4Addr, coral_mesh::device::PeerStatus> = s
        .mesh
        .as_ref()
        .map(|m| {
            m.device
                .peer_status()
                .into_iter()
                .map(|p| (p.mesh_ip, p))
                .collect()
        })
        .unwrap_or_default();
    let now = coral_proto::now_ms();
    let timeout = s.config.agent_timeout.as_millis() as i64;
    Ok(rows
        .into_iter()
        .filter(|r| r.revoked_at.is_none())
        .map(|r| {
            let peer = r.mesh_ip.and_then(|ip| peers.get(&ip));
            Member {
                online: r.left_at.is_none() && r.last_seen.is_some_and(|t| now - t <= timeout),
                mesh_ip: r.mesh_ip.map(|ip| ip.to_string()),
                public_key: r.public_key,
                endpoint: peer
                    .and_then(|p| p.endpoint.map(|e| e.to_string()))
                    .or(r.endpoint),
                last_handshake_ms: peer
                    .and_then(|p| p.since_handshake)
                    .map(|d| now - d.as_millis() as i64),
                joined_at_ms: r.joined_at,
                last_seen_ms: r.last_seen,
                agent_id: r.agent_id,
                name: r.name,
            }
        })
        .collect())
}
