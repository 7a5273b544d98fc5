//! `coral mcp`: the colony's MCP gateway from the command line.

use super::args::McpCmd;
use super::client::client;
use super::output::out;
use super::render;
use crate::mcp::McpTools;
use anyhow::Context as _;
use coral_proto::exit::{Unavailable, Usage};

pub fn run(cmd: McpCmd) -> anyhow::Result<()> {
    match cmd {
        McpCmd::Serve => client(serve()),
        McpCmd::Config => {
            let exe = std::env::current_exe().context("cannot find the coral binary")?;
            let cfg = serde_json::json!({
                "mcpServers": {
                    "coral": { "command": exe.display().to_string(), "args": ["mcp", "serve"] }
                }
            });
            out(&format!("{}\n", serde_json::to_string_pretty(&cfg)?))
        }
        McpCmd::Tools { json } => client(async move {
            let tools = McpTools::connect().await?.list().await?;
            if json {
                return out(&format!("{}\n", serde_json::to_string_pretty(&tools)?));
            }
            let mut t = render::table(&["TOOL", "READ-ONLY", "DESCRIPTION"]);
            for tool in &tools {
                t.add_row(vec![
                    tool.name.clone(),
                    if tool.read_only { "yes" } else { "no" }.to_string(),
                    tool.description.clone(),
                ]);
            }
            out(&format!("{t}\n"))
        }),
        McpCmd::Call { name, args } => {
            let args: serde_json::Value = match args.as_deref() {
                None => serde_json::json!({}),
                Some(a) => serde_json::from_str(a)
                    .map_err(|e| Usage(format!("arguments must be a JSON object: {e}")))?,
            };
            if !args.is_object() {
                return Err(Usage(
                    "arguments must be a JSON object, e.g. '{\"window\": \"5m\"}'".into(),
                )
                .into());
            }
            client(async move {
                let v = McpTools::connect().await?.call_json(&name, args).await?;
                out(&format!("{}\n", serde_json::to_string_pretty(&v)?))
            })
        }
    }
}

/// Bridges stdin/stdout to the colony's MCP socket until either side closes.
async fn serve() -> anyhow::Result<()> {
    let path = crate::mcp::socket_path()?;
    let sock = tokio::net::UnixStream::connect(&path).await.map_err(|e| {
        Unavailable(format!(
            "cannot reach the colony's MCP gateway at {}: {e} (is 'coral colony start' running?)",
            path.display()
        ))
    })?;
    let (mut rd, mut wr) = sock.into_split();
    let mut stdin = tokio::io::stdin();
    let mut stdout = tokio::io::stdout();
    let up = async {
        let _ = tokio::io::copy(&mut stdin, &mut wr).await;
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut wr).await;
    };
    let down = async {
        let _ = tokio::io::copy(&mut rd, &mut stdout).await;
    };
    // The session ends when the colony closes or the client does.
    tokio::select! {
        _ = down => {}
        _ = async { up.await; std::future::pending::<()>().await } => {}
    }
    Ok(())
}
