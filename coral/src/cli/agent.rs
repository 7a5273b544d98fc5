//! `coral agent status`, `coral connect`, `coral disconnect`: the local
//! agent and the services it watches, over its control socket.

use super::args::ConnectArgs;
use super::client::{agent_client, agent_gone, client, ctx};
use super::output::{out, print_json_or};
use super::render;
use anyhow::anyhow;
use coral_proto::exit::Usage;
use coral_proto::{ServiceKind, ServiceSpec};

/// `coral agent status`.
pub(super) fn status(json: bool) -> anyhow::Result<()> {
    client(async move {
        let c = agent_client().await?;
        let status = c.status(ctx()).await.map_err(|e| agent_gone(&e))?;
        print_json_or(json, &status, render::agent_status)
    })
}

/// `coral disconnect NAME`.
pub(super) fn disconnect(name: String) -> anyhow::Result<()> {
    client(async move {
        let c = agent_client().await?;
        let spec = c
            .disconnect(ctx(), name)
            .await
            .map_err(|e| agent_gone(&e))?
            .map_err(|e| Usage(e.to_string()))?;
        out(&format!(
            "Disconnected {} (port {})\n",
            spec.name, spec.port
        ))
    })
}

pub(super) fn connect(args: ConnectArgs) -> anyhow::Result<()> {
    let specs = if let Some(port) = args.port {
        if args.specs.len() != 1 {
            return Err(Usage("with --port, give exactly one service NAME".into()).into());
        }
        let kind = args.kind.as_deref().and_then(ServiceKind::parse);
        ServiceSpec::new(&args.specs[0], port, args.health.as_deref(), kind).map(|s| vec![s])
    } else {
        ServiceSpec::parse_all(&args.specs)
    }
    .map_err(|e| Usage(e.to_string()))?;
    client(async move {
        let c = agent_client().await?;
        let added = c
            .connect(ctx(), specs)
            .await
            .map_err(|e| agent_gone(&e))?
            .map_err(|e| match e {
                coral_proto::ControlError::Storage(_) => anyhow!("{e}"),
                _ => Usage(e.to_string()).into(),
            })?;
        let mut msg = String::new();
        for s in added {
            let probe = match &s.health_path {
                Some(h) => format!("HTTP GET {h}"),
                None => "TCP connect".into(),
            };
            msg.push_str(&format!(
                "Connected {} on port {} ({}, probed by {probe})\n",
                s.name, s.port, s.kind
            ));
        }
        out(&msg)
    })
}
