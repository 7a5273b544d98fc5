//! `coral colony start`, `coral agent start`, `coral discovery start`: the
//! daemons' start commands (the colony and agent crates run inside this
//! binary). Linux-only daemon code.

use super::args::{AgentStart, ColonyStart};
use super::client::{agent_client, client, ctx};
use super::config::load_config;
use super::daemon::{
    self, bind_control, claim, confine, daemon_runtime, detach, init_daemon, shutdown_signal,
};
use super::output::out;
use anyhow::{Context as _, anyhow};
use coral_agent::{Agent, AgentConfig};
use coral_colony::{Colony, ColonyConfig};
use coral_proto::LinkState;
use coral_proto::exit::{Coded, Unavailable, Usage};
use coral_sandbox::{Mode, Role};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub(super) fn colony(args: ColonyStart) -> anyhow::Result<()> {
    let file = load_config(args.config.as_deref())?;
    let mut config = file.colony.unwrap_or_default();
    if let Some(p) = args.port {
        config.set_port(p);
    }
    if let Some(id) = args.colony_id {
        config.colony_id = Some(id);
    }
    config.validate().map_err(|e| Usage(e.to_string()))?;
    let sandbox: Mode = args.sandbox.parse().map_err(Usage)?;
    if args.daemon && !daemon::is_child() {
        let (ready, log) = detach("colony", &config.state_dir())?;
        return out(&format!(
            "Colony {} started (pid {}), listening on {}\nLog: {}\n",
            ready["colony_id"].as_str().unwrap_or("?"),
            ready["pid"],
            ready["rpc_addr"].as_str().unwrap_or("?"),
            log.display()
        ));
    }
    init_daemon();
    serve_colony(config, sandbox)
}

fn serve_colony(config: ColonyConfig, sandbox: Mode) -> anyhow::Result<()> {
    let (_pid, sock) = claim("colony")?;
    // Bind before touching state, so a busy port leaves nothing behind.
    // With the mesh on, agents are served on the mesh address instead.
    let listen = config.listen.clone();
    let rpc = if config.mesh.enabled {
        None
    } else {
        let rpc = std::net::TcpListener::bind(&listen).map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
                " (another colony? pick another port with --port)"
            } else {
                ""
            };
            anyhow!("cannot listen on {listen}: {e}{hint}")
        })?;
        rpc.set_nonblocking(true)?;
        Some(rpc)
    };
    confine(Role::Colony, sandbox, &config.state_dir(), &[])?;
    let rt = daemon_runtime()?;
    // The mesh's device and sockets register with the runtime.
    let colony = {
        let _enter = rt.enter();
        Colony::open(config)?
    };
    rt.block_on(async move {
        let rpc = rpc.map(tokio::net::TcpListener::from_std).transpose()?;
        let control = bind_control(&sock)?;
        let addr = colony.rpc_addr();
        tracing::info!(colony_id = colony.colony_id(), rpc = %addr, socket = %sock.display(), "colony listening");
        daemon::report_ready(&serde_json::json!({
            "colony_id": colony.colony_id(),
            "pid": std::process::id(),
            "rpc_addr": addr,
            "mesh_ip": colony.mesh_ip().map(|ip| ip.to_string()),
            "endpoints": colony.mesh_endpoints(),
        }));
        colony.run(rpc, control, shutdown_signal()).await;
        let _ = std::fs::remove_file(&sock);
        anyhow::Ok(())
    })
}

pub(super) fn agent(args: AgentStart) -> anyhow::Result<()> {
    let file = load_config(args.config.as_deref())?;
    let mut config: AgentConfig = file.agent.unwrap_or_default();
    if let Some(id) = args.colony_id {
        config.colony_id = Some(id);
    }
    if let Some(c) = args.colony {
        config.colony = Some(c);
    }
    if let Some(d) = args.discovery {
        config.mesh.discovery = Some(d);
    }
    config.validate().map_err(Usage)?;
    let sandbox: Mode = args.sandbox.parse().map_err(Usage)?;
    if let Some(token) = &args.join {
        // Redeemed before detaching, so a bad token is reported here; the
        // detached child sees the token is already redeemed and goes on.
        let (grant, now) = client(async {
            Agent::join(&config, token)
                .await
                .map_err(|e| -> anyhow::Error {
                    use coral_agent::join::JoinFailure as F;
                    match e {
                        F::Token(_) => Usage(e.to_string()).into(),
                        // Expired, used, unknown or for another colony:
                        // EX_NOPERM, with what to do (issue 16).
                        F::Refused { .. } => Coded {
                            code: 77,
                            msg: format!(
                                "{e} (create a new token with 'coral colony token create' on the colony)"
                            ),
                        }
                        .into(),
                        F::Unreachable { .. } => Unavailable(e.to_string()).into(),
                        _ => anyhow!("{e}"),
                    }
                })
        })?;
        if now {
            eprintln!(
                "Joined colony {} as {} (mesh subnet {})",
                grant.colony_id, grant.mesh_ip, grant.subnet
            );
        }
    }
    if args.daemon && !daemon::is_child() {
        let (ready, log) = detach("agent", &config.state_dir())?;
        let mut msg = format!(
            "Agent {} started (pid {})\nLog: {}\n",
            ready["name"].as_str().unwrap_or("?"),
            ready["pid"],
            log.display()
        );
        msg.push_str(&client(async {
            Ok(wait_registered(Duration::from_secs(3)).await)
        })?);
        return out(&msg);
    }
    init_daemon();
    let (_pid, sock) = claim("agent")?;
    // `coral exec` commands run in the exec spawner, started from this
    // binary before the agent confines itself and gives up execve.
    let exe = std::env::current_exe().context("cannot find the coral binary")?;
    let spawner = coral_agent::exec::Spawner::start(&exe, sandbox, &config.exec.policy)
        .context("cannot start the exec spawner")?;
    // The agent reads its policy file (where it is named and, through a
    // symlink, where it lives): it stays readable in the sandbox.
    let policy = &config.exec.policy;
    let mut readable: Vec<PathBuf> = policy.parent().map(Path::to_path_buf).into_iter().collect();
    readable.extend(
        std::fs::canonicalize(policy)
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf)),
    );
    confine(Role::Agent, sandbox, &config.state_dir(), &readable)?;
    let rt = daemon_runtime()?;
    // A joined agent's mesh device registers with the runtime.
    let agent = {
        let _enter = rt.enter();
        Agent::open_with_spawner(config, Some(spawner))?
    };
    rt.block_on(async move {
        let control = bind_control(&sock)?;
        tracing::info!(agent_id = agent.agent_id(), socket = %sock.display(), "agent listening");
        daemon::report_ready(&serde_json::json!({
            "agent_id": agent.agent_id(),
            "name": agent.name(),
            "pid": std::process::id(),
            "mesh_ip": agent.mesh_ip().map(|ip| ip.to_string()),
        }));
        agent.run(control, shutdown_signal()).await;
        let _ = std::fs::remove_file(&sock);
        anyhow::Ok(())
    })
}

/// A line saying whether the fresh agent reached its colony.
async fn wait_registered(timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    while Instant::now() < deadline {
        if let Ok(c) = agent_client().await
            && let Ok(s) = c.status(ctx()).await
        {
            if s.colony.state == LinkState::Connected {
                return format!(
                    "Registered with colony {} at {}\n",
                    s.colony.colony_id.as_deref().unwrap_or("?"),
                    s.colony.addr
                );
            }
            last = s.colony.last_error;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    format!(
        "Not registered yet: {}. The agent keeps retrying; see 'coral agent status'.\n",
        last.unwrap_or_else(|| "the colony has not answered".into())
    )
}

pub(super) fn discovery(listen: &str) -> anyhow::Result<()> {
    let addr: std::net::SocketAddr = listen
        .parse()
        .map_err(|_| Usage(format!("--listen '{listen}' must be ip:port")))?;
    init_daemon();
    let rt = daemon_runtime()?;
    rt.block_on(async move {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow!("cannot listen on {addr}: {e}"))?;
        let bound = l.local_addr()?;
        tracing::info!(listen = %bound, "discovery listening");
        daemon::report_ready(
            &serde_json::json!({ "pid": std::process::id(), "listen": bound.to_string() }),
        );
        crate::discovery::run(l, shutdown_signal()).await;
        anyhow::Ok(())
    })
}
