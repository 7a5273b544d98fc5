//! How a command reaches the local daemons: a small runtime, the control
//! clients over the per-user Unix sockets, the call deadline, and the errors
//! (exit 69) when a daemon is not there; the time windows of `--since`.

use anyhow::{Context as _, anyhow};
use coral_proto::exit::{Unavailable, Usage};
use coral_proto::services::{AgentControlClient, ColonyControlClient};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Runs a client command on a small runtime.
pub(super) fn client<T>(
    f: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(f)
}

pub(super) fn ctx() -> tarpc::context::Context {
    let mut c = tarpc::context::current();
    c.deadline = Instant::now() + Duration::from_secs(10);
    c
}

pub(super) fn socket_path(role: &str) -> anyhow::Result<PathBuf> {
    Ok(coral_proto::local::runtime_dir()?.join(format!("{role}.sock")))
}

pub(super) async fn local_stream(role: &str) -> anyhow::Result<tokio::net::UnixStream> {
    let path = socket_path(role)?;
    coral_proto::local::connect(&path).await.map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                "not running".to_string()
            }
            _ => e.to_string(),
        };
        Unavailable(format!(
            "cannot reach the {role} at {}: {why} (is 'coral {role} start' running?)",
            path.display()
        ))
        .into()
    })
}

pub(super) async fn colony_client() -> anyhow::Result<ColonyControlClient> {
    let s = local_stream("colony").await?;
    Ok(ColonyControlClient::new(Default::default(), coral_proto::local::framed(s)).spawn())
}

pub(super) async fn agent_client() -> anyhow::Result<AgentControlClient> {
    let s = local_stream("agent").await?;
    Ok(AgentControlClient::new(Default::default(), coral_proto::local::framed(s)).spawn())
}

pub(super) fn colony_gone(e: &tarpc::client::RpcError) -> anyhow::Error {
    Unavailable(format!("the colony did not answer: {e}")).into()
}

pub(super) fn agent_gone(e: &tarpc::client::RpcError) -> anyhow::Error {
    Unavailable(format!("the agent did not answer: {e}")).into()
}

pub(super) fn mesh_admin(e: coral_proto::MeshAdminError) -> anyhow::Error {
    use coral_proto::MeshAdminError as E;
    match e {
        E::Storage(_) => anyhow!("{e}"),
        _ => Usage(e.to_string()).into(),
    }
}

/// A `--since` or `--baseline` length in ms, refused (exit 64) past a year:
/// `--since 300000years` is a usage error, never an overflow.
pub(super) fn window_ms(flag: &str, d: Duration) -> Result<i64, Usage> {
    let ms = d.as_millis();
    if ms > coral_proto::MAX_WINDOW_MS as u128 {
        return Err(Usage(format!(
            "{flag} {} is longer than a year; ask for at most 365d",
            humantime::format_duration(d)
        )));
    }
    Ok(ms as i64)
}

pub(super) fn since_ms(since: Duration) -> Result<i64, Usage> {
    Ok(coral_proto::now_ms() - window_ms("--since", since)?)
}
