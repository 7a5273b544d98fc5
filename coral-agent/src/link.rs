//! The agent's link to its colony: find it, connect, register, heartbeat;
//! on any failure, back off and start over. Registration always carries the
//! full service set, so a colony that restarted (or lost the agent) is
//! brought up to date by the next connection.

use crate::AgentCore;
use coral_proto::services::{ColonyControlClient, ColonyLinkClient};
use coral_proto::{ColonyError, Heartbeat, LinkState, Registration};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tarpc::context;

/// Samples sent per heartbeat; the rest follow right after.
const SAMPLES_PER_HEARTBEAT: usize = 5_000;
/// Telemetry rows per push (the colony takes at most 10,000), and pushes
/// per kind per tick.
const ROWS_PER_PUSH: usize = 10_000;
const PUSHES_PER_TICK: usize = 10;
/// Most bytes of rows in one push, as JSON: half the 16 MiB frame.
const PUSH_BYTES: usize = 8 << 20;
/// Most bytes of one row; a larger row has its largest text cut, with a
/// marker, so it never blocks the rows behind it.
const ROW_BYTES: usize = 1 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const RPC_TIMEOUT: Duration = Duration::from_secs(5);
/// While a connect over the mesh waits, a fresh WireGuard handshake this often.
const REHANDSHAKE_EVERY: Duration = Duration::from_millis(500);
const BACKOFF_MIN: Duration = Duration::from_millis(200);
/// Kept low so an agent is back within seconds of a colony restart.
const BACKOFF_MAX: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("{0}")]
    Find(String),
    #[error("cannot reach colony at {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("colony at {addr} refused the agent: {source}")]
    Refused { addr: String, source: ColonyError },
    #[error("colony at {addr} stopped answering: {reason}")]
    Rpc { addr: String, reason: String },
}

fn ctx() -> context::Context {
    let mut c = context::current();
    c.deadline = Instant::now() + RPC_TIMEOUT;
    c
}

pub(crate) async fn run(shared: Arc<AgentCore>) {
    let mut backoff = BACKOFF_MIN;
    loop {
        if shared.shutdown.is_cancelled() {
            return;
        }
        // The session watches for shutdown itself, to flush and say goodbye.
        match session(&shared).await {
            Ok(()) => return,
            Err(e) => {
                let msg = e.to_string();
                let attempts = {
                    let mut link = shared.link.lock().expect("link lock");
                    let was_connected = link.state == LinkState::Connected;
                    if was_connected {
                        link.state = LinkState::Connecting;
                        link.since_ms = coral_proto::now_ms();
                        link.attempts = 0;
                        backoff = BACKOFF_MIN;
                    }
                    let repeated = link.last_error.as_deref() == Some(msg.as_str());
                    link.attempts += 1;
                    link.last_error = Some(msg.clone());
                    (link.attempts, repeated, was_connected)
                };
                match attempts {
                    (_, _, true) => {
                        tracing::warn!(error = %msg, "lost the colony link; reconnecting")
                    }
                    (n, false, _) => {
                        tracing::warn!(error = %msg, attempts = n, "colony not reachable; retrying")
                    }
                    (n, true, _) if n % 50 == 0 => {
                        tracing::warn!(error = %msg, attempts = n, "colony still not reachable; retrying")
                    }
                    _ => {}
                }
            }
        }
        // A fresh WireGuard handshake with the colony: a restarted colony
        // has lost the old session, and waiting for the rekey timer would
        // keep the agent away for up to ~20 s.
        if let Some(m) = &shared.mesh {
            m.device.initiate_handshakes(true).await;
        }
        // Every few failures, ask discovery whether the colony moved.
        if let (Some(m), Some(d)) = (&shared.mesh, &shared.config.mesh.discovery) {
            let attempts = shared.link.lock().expect("link lock").attempts;
            if attempts.is_multiple_of(3) {
                match m.refresh_from_discovery(d, &shared.state_dir).await {
                    Ok(true) => backoff = BACKOFF_MIN,
                    Ok(false) => {}
                    Err(e) => tracing::debug!(error = %e, "discovery lookup failed"),
                }
            }
        }
        // Jitter so a fleet does not reconnect in lockstep after a restart.
        let jitter = Duration::from_millis(u64::from(uuid::Uuid::new_v4().as_bytes()[0]));
        tokio::select! {
            _ = tokio::time::sleep(backoff + jitter) => {}
            _ = shared.shutdown.cancelled() => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// How to reach the colony.
enum Target {
    /// TCP: on the mesh (the colony's mesh address), or plain with the mesh
    /// off (development).
    Tcp(String),
    /// The colony on this machine, same user: its local agents' socket.
    Unix(std::path::PathBuf),
}

/// Where the colony is: on the mesh once joined, else the configured
/// address, else the local colony's.
async fn find_colony(shared: &AgentCore) -> Result<Target, LinkError> {
    if let Some(m) = &shared.mesh {
        return Ok(Target::Tcp(m.colony_rpc()));
    }
    if let Some(addr) = &shared.config.colony {
        return Ok(Target::Tcp(addr.clone()));
    }
    let path = coral_proto::local::colony_socket().map_err(|e| LinkError::Find(e.to_string()))?;
    let no_colony = |e: std::io::Error| {
        LinkError::Find(format!(
            "no colony configured and none running locally at {} ({e}); start one with 'coral colony start' or set agent.colony",
            path.display()
        ))
    };
    let stream = coral_proto::local::connect(&path)
        .await
        .map_err(no_colony)?;
    let client =
        ColonyControlClient::new(Default::default(), coral_proto::local::framed(stream)).spawn();
    let ep = client.endpoint(ctx()).await.map_err(|e| {
        LinkError::Find(format!(
            "local colony at {} did not answer: {e}",
            path.display()
        ))
    })?;
    if let Some(want) = &shared.config.colony_id
        && want != &ep.colony_id
    {
        return Err(LinkError::Find(format!(
            "the local colony is '{}', not '{want}' (check --colony-id)",
            ep.colony_id
        )));
    }
    if let Some(sock) = ep.local_socket {
        return Ok(Target::Unix(sock.into()));
    }
    // A colony listening on all interfaces is reached on loopback.
    Ok(Target::Tcp(
        ep.rpc_addr
            .replace("0.0.0.0:", "127.0.0.1:")
            .replace("[::]:", "[::1]:"),
    ))
}

async fn session(shared: &Arc<AgentCore>) -> Result<(), LinkError> {
    let target = find_colony(shared).await?;
    let addr = match &target {
        Target::Tcp(a) => a.clone(),
        Target::Unix(p) => format!("unix:{}", p.display()),
    };
    shared.link.lock().expect("link lock").addr = addr.clone();
    let conn_err = |reason: String| LinkError::Connect {
        addr: addr.clone(),
        reason,
    };
    // The colony's address as this agent sees it: only the colony may call
    // the agent back (AgentRpc). Over the mesh it is the colony's mesh
    // address, which WireGuard has authenticated; a same-host colony on
    // the Unix socket dials from loopback.
    let (client, colony_ip) = match &target {
        Target::Tcp(a) => {
            let connect = tokio::net::TcpStream::connect(a);
            tokio::pin!(connect);
            let give_up = tokio::time::sleep(CONNECT_TIMEOUT);
            tokio::pin!(give_up);
            let mut rehandshake = tokio::time::interval_at(
                tokio::time::Instant::now() + REHANDSHAKE_EVERY,
                REHANDSHAKE_EVERY,
            );
            let stream = loop {
                tokio::select! {
                    r = &mut connect => break r.map_err(|e| conn_err(e.to_string()))?,
                    _ = &mut give_up => {
                        return Err(conn_err(format!("no answer within {CONNECT_TIMEOUT:?}")));
                    }
                    // A handshake initiation sent while the colony was down
                    // is lost, and boringtun would retry only after its 5 s
                    // rekey timeout: while the connect waits, start one again.
                    _ = rehandshake.tick(), if shared.mesh.is_some() => {
                        if let Some(m) = &shared.mesh {
                            m.device.initiate_handshakes(true).await;
                        }
                    }
                }
            };
            let _ = stream.set_nodelay(true);
            let ip = stream.peer_addr().ok().map(|a| a.ip());
            (
                ColonyLinkClient::new(Default::default(), coral_proto::local::framed(stream))
                    .spawn(),
                ip,
            )
        }
        Target::Unix(p) => {
            let stream = coral_proto::local::connect(p)
                .await
                .map_err(|e| conn_err(e.to_string()))?;
            (
                ColonyLinkClient::new(Default::default(), coral_proto::local::framed(stream))
                    .spawn(),
                Some(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
            )
        }
    };
    let rpc_err = |e: tarpc::client::RpcError| LinkError::Rpc {
        addr: addr.clone(),
        reason: e.to_string(),
    };
    let refused = |source: ColonyError| LinkError::Refused {
        addr: addr.clone(),
        source,
    };

    let reg = Registration {
        agent_id: shared.agent_id.clone(),
        name: shared.name.clone(),
        hostname: shared.hostname.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
        started_at_ms: shared.started_at_ms,
        colony_id: shared.config.colony_id.clone(),
        services: shared.services_snapshot(),
        rpc_addr: Some(shared.rpc_addr.clone()),
    };
    let registered = client
        .register(ctx(), reg)
        .await
        .map_err(rpc_err)?
        .map_err(refused)?;
    shared.acknowledge(registered.last_seq);
    // Only a colony that accepted this agent may call it (AgentRpc).
    *shared.colony_peer.lock().expect("colony_peer lock") = colony_ip;
    let mut checkpoints = registered.checkpoints;
    {
        let mut link = shared.link.lock().expect("link lock");
        link.state = LinkState::Connected;
        link.colony_id = Some(registered.colony_id.clone());
        link.since_ms = coral_proto::now_ms();
        link.last_error = None;
        link.attempts = 0;
    }
    tracing::info!(colony = %addr, colony_id = %registered.colony_id, "registered with colony");

    // The colony sets the pace of heartbeats: it decides when a silent
    // agent is offline. Telemetry goes as soon as it is committed.
    let interval = Duration::from_millis(registered.heartbeat_interval_ms.clamp(100, 60_000));
    let cut_log = coral_proto::local::RateLimited::new(Duration::from_secs(60));
    let mut beat = true;
    let mut next_beat = tokio::time::Instant::now();
    loop {
        let stopping = shared.shutdown.is_cancelled();
        let mut full = false;
        if beat || stopping || tokio::time::Instant::now() >= next_beat {
            let (samples, dropped) = shared.pending_batch(SAMPLES_PER_HEARTBEAT);
            full = samples.len() == SAMPLES_PER_HEARTBEAT;
            let hb = Heartbeat {
                agent_id: shared.agent_id.clone(),
                services: shared.services_snapshot(),
                samples,
                dropped_samples: dropped,
            };
            let ack = client
                .heartbeat(ctx(), hb)
                .await
                .map_err(rpc_err)?
                .map_err(refused)?;
            shared.acknowledge(ack.last_seq);
            shared.link.lock().expect("link lock").last_heartbeat_ms = Some(coral_proto::now_ms());
            next_beat = tokio::time::Instant::now() + interval;
        }
        let behind = forward(shared, &client, &mut checkpoints, &cut_log)
            .await
            .map_err(|e| match e {
                ForwardError::Rpc(e) => rpc_err(e),
                ForwardError::Refused(e) => refused(e),
                ForwardError::Local(reason) => LinkError::Rpc {
                    addr: addr.clone(),
                    reason: format!("cannot read local telemetry: {reason}"),
                },
            })?;
        if stopping {
            let _ = client.leave(ctx(), shared.agent_id.clone()).await;
            tracing::info!("said goodbye to the colony");
            return Ok(());
        }
        beat = full;
        if full || behind {
            continue; // more queued: send it now
        }
        tokio::select! {
            _ = tokio::time::sleep_until(next_beat) => {}
            _ = shared.changed.notified() => beat = true,
            _ = shared.telemetry.committed() => {}
            _ = shared.shutdown.cancelled() => {}
        }
    }
}

enum ForwardError {
    Rpc(tarpc::client::RpcError),
    Refused(ColonyError),
    Local(String),
}

/// Pushes telemetry past the colony's checkpoints, oldest first, in
/// batches capped by rows and bytes. Returns true if more is waiting than
/// one tick sends.
async fn forward(
    shared: &AgentCore,
    client: &ColonyLinkClient,
    checkpoints: &mut coral_proto::Checkpoints,
    cut_log: &coral_proto::local::RateLimited,
) -> Result<bool, ForwardError> {
    let mut behind = false;
    for kind in coral_proto::SignalKind::ALL {
        // Nothing newer than the colony has: no query at all.
        if shared.telemetry.last_seq(kind) <= checkpoints.get(kind) {
            continue;
        }
        for push in 0..PUSHES_PER_TICK {
            let mut rows = shared
                .telemetry
                .rows_after(kind, checkpoints.get(kind), ROWS_PER_PUSH)
                .await
                .map_err(|e| ForwardError::Local(e.to_string()))?;
            if rows.is_empty() {
                break;
            }
            let read = rows.len();
            let cut = rows.fit_bytes(PUSH_BYTES, ROW_BYTES);
            if cut > 0
                && let Some(more) = cut_log.allow()
            {
                tracing::warn!(
                    kind = ?kind,
                    rows = cut,
                    suppressed_warnings = more,
                    "rows over {ROW_BYTES} bytes: their largest text was cut to forward them"
                );
            }
            let full = read == ROWS_PER_PUSH || rows.len() < read;
            let stored = client
                .push(ctx(), shared.agent_id.clone(), rows)
                .await
                .map_err(ForwardError::Rpc)?
                .map_err(ForwardError::Refused)?;
            checkpoints.set(kind, stored);
            if !full {
                break;
            }
            behind |= push + 1 == PUSHES_PER_TICK;
        }
    }
    Ok(behind)
}
