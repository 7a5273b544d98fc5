//! `coral colony status | token create | agents | revoke`: the colony's
//! state and its mesh membership, over its control socket. (`start` and
//! `stop` are daemon code: `start.rs`, `daemon.rs`.)

use super::args::{ColonyCmd, TokenCmd};
use super::client::{client, colony_client, colony_gone, ctx, mesh_admin};
use super::output::{out, print_json_or};
use super::render;

/// The colony commands other than `start` and `stop`.
pub(super) fn run(cmd: ColonyCmd) -> anyhow::Result<()> {
    match cmd {
        ColonyCmd::Status { json } => client(async move {
            let c = colony_client().await?;
            let status = c.status(ctx()).await.map_err(|e| colony_gone(&e))?;
            print_json_or(json, &status, render::colony_status)
        }),
        ColonyCmd::Token(TokenCmd::Create { ttl, uses, json }) => client(async move {
            let c = colony_client().await?;
            let t = c
                .token_create(
                    ctx(),
                    coral_proto::TokenRequest {
                        ttl_ms: ttl.as_millis().min(u64::MAX as u128) as u64,
                        uses,
                    },
                )
                .await
                .map_err(|e| colony_gone(&e))?
                .map_err(mesh_admin)?;
            print_json_or(json, &t, render::token)
        }),
        ColonyCmd::Agents { json } => client(async move {
            let c = colony_client().await?;
            let m = c
                .members(ctx())
                .await
                .map_err(|e| colony_gone(&e))?
                .map_err(mesh_admin)?;
            print_json_or(json, &m, |m| render::members(coral_proto::now_ms(), m))
        }),
        ColonyCmd::Revoke { agent } => client(async move {
            let c = colony_client().await?;
            let m = c
                .revoke(ctx(), agent)
                .await
                .map_err(|e| colony_gone(&e))?
                .map_err(mesh_admin)?;
            out(&format!(
                "Revoked {} ({}{})\n",
                m.name,
                m.agent_id,
                m.mesh_ip.map(|ip| format!(", {ip}")).unwrap_or_default()
            ))
        }),
        ColonyCmd::Start(_) | ColonyCmd::Stop => unreachable!("dispatched to the daemon code"),
    }
}
