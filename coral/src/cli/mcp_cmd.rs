//! `coral mcp`: the colony's MCP gateway from the command line.

use super::{client, out, render};
use crate::mcp::McpTools;
use anyhow::Context as _;
use clap::Subcommand;
use coral_proto::exit::{Unavailable, Usage};

#[derive(Subcommand)]
pub enum McpCmd {
    /// Serve MCP on stdin/stdout, bridged to the colony (for Claude Desktop, Cursor and other MCP clients).
    #[command(after_help = "Example (what an MCP client runs):\n  coral mcp serve")]
    Serve,
    /// Print the MCP client configuration that runs `coral mcp serve`.
    #[command(
        after_help = "Example:\n  coral mcp config >> claude_desktop_config.json  # then merge by hand"
    )]
    Config,
    /// List the colony's tools.
    #[command(after_help = "Examples:\n  coral mcp tools\n  coral mcp tools --json")]
    Tools {
        #[arg(long)]
        json: bool,
    },
    /// Call one tool with JSON arguments and print its JSON output.
    #[command(
        after_help = "Examples:\n  coral mcp call coral_services\n  coral mcp call coral_red_metrics '{\"window\": \"5m\"}'"
    )]
    Call {
        /// Tool name, e.g. coral_red_metrics.
        name: String,
        /// Arguments as a JSON object (default {}).
        args: Option<String>,
    },
}

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
