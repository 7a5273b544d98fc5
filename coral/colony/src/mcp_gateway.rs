//! The colony as an MCP gateway: the tools of [`super::tools`] served with
//! rmcp over a local Unix socket (`colony-mcp.sock`, next to the control
//! socket). Only the colony's own user (or root) may connect; `coral mcp
//! serve` bridges an MCP client's stdio to this socket.

use super::Shared;
use super::tools::{self, ToolError};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
    ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt};
use std::sync::Arc;
use std::time::Instant;
use tokio::net::UnixListener;

#[derive(Clone)]
struct Gateway {
    shared: Arc<Shared>,
    /// Who is connected, for the audit log.
    caller: String,
    /// The same, as an exec policy sees it.
    exec_caller: coral_proto::ExecCaller,
}

impl ServerHandler for Gateway {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(
                Implementation::new("coral", env!("CARGO_PKG_VERSION")).with_title("Coral colony"),
            )
            .with_instructions(
                "Coral observes a distributed application: services and their health, \
                 RED metrics against a baseline, the service map, traces, logs and recent \
                 changes. Start with coral_services and coral_red_metrics, then drill down \
                 with coral_hotspots and coral_trace.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let list = tools::catalog(self.shared.config.mcp.allow_exec)
            .into_iter()
            .filter(|t| super::tools::debug::listed(&self.shared.config.mcp, t.name))
            .map(|t| {
                let schema = match t.schema {
                    serde_json::Value::Object(m) => m,
                    _ => Default::default(),
                };
                Tool::new(t.name, t.description, Arc::new(schema))
                    .with_title(t.title)
                    .with_annotations(
                        ToolAnnotations::with_title(t.title)
                            .read_only(t.read_only)
                            .destructive(!t.read_only),
                    )
            })
            .collect();
        Ok(ListToolsResult::with_all_items(list))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let args = request
            .arguments
            .map(serde_json::Value::Object)
            .unwrap_or(serde_json::Value::Null);
        // Every call is recorded before it runs, with the equivalent
        // command line.
        let cli = tools::cli_equivalent(&request.name, &args);
        if let Err(e) = self.shared.audit.record(
            &format!("mcp {}", self.caller),
            &format!("mcp {}", request.name),
            &args.to_string(),
            Some(&cli),
        ) {
            return Ok(CallToolResult::error(vec![ContentBlock::text(format!(
                "cannot write the audit record, so the call does not run: {e}"
            ))])
            .into());
        }
        let started = Instant::now();
        let outcome =
            tools::call(&self.shared, &request.name, args.clone(), &self.exec_caller).await;
        let ms = started.elapsed().as_millis();
        match &outcome {
            Ok(_) => {
                tracing::info!(tool = %request.name, caller = %self.caller, ms, "mcp tool call")
            }
            Err(e) => {
                tracing::info!(tool = %request.name, caller = %self.caller, ms, error = %e, "mcp tool call failed")
            }
        }
        match outcome {
            Ok(v) => Ok(CallToolResult::success(vec![ContentBlock::text(tools::capped(v))]).into()),
            Err(ToolError::Unknown(name)) => Err(ErrorData::invalid_params(
                format!("unknown tool '{name}'"),
                None,
            )),
            Err(e) => Ok(CallToolResult::error(vec![ContentBlock::text(e.to_string())]).into()),
        }
    }
}

/// Longest JSON-RPC line accepted from a client.
const MAX_LINE: usize = 4 << 20;

/// The client's stream as rmcp sees it: every line the client sends must be
/// a JSON value (at most `MAX_LINE` bytes) to reach rmcp; any other line is
/// answered with a JSON-RPC parse error (-32700, id null) and dropped, where
/// rmcp answered nothing (issue 16). A longer line ends the session.
fn screened(stream: tokio::net::UnixStream) -> tokio::io::DuplexStream {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let (ours, theirs) = tokio::io::duplex(64 << 10);
    let (client_rd, mut client_wr) = stream.into_split();
    let (rmcp_rd, mut rmcp_wr) = tokio::io::split(ours);
    let (errors_tx, mut errors_rx) = tokio::sync::mpsc::channel::<String>(16);
    // Client → rmcp, screening each line.
    tokio::spawn(async move {
        let mut lines = BufReader::new(client_rd);
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = match (&mut lines)
                .take(MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut line)
                .await
            {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if n > MAX_LINE {
                let _ = errors_tx.send(parse_error("line too long")).await;
                break;
            }
            let text = line.trim_ascii();
            if text.is_empty() {
                continue;
            }
            match serde_json::from_slice::<serde_json::Value>(text) {
                Ok(_) => {
                    if rmcp_wr.write_all(&line).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    if errors_tx.send(parse_error(&e.to_string())).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = rmcp_wr.shutdown().await;
    });
    // rmcp and the parse errors → client, a whole line at a time.
    tokio::spawn(async move {
        let mut out = BufReader::new(rmcp_rd);
        // Kept across turns of the loop: a read interrupted by an error line
        // has appended what it read so far (read_until's cancel contract).
        let mut line = Vec::new();
        loop {
            tokio::select! {
                r = out.read_until(b'\n', &mut line) => match r {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if client_wr.write_all(&line).await.is_err() {
                            break;
                        }
                        line.clear();
                    }
                },
                Some(e) = errors_rx.recv() => {
                    if client_wr.write_all(e.as_bytes()).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = client_wr.shutdown().await;
    });
    theirs
}

fn parse_error(why: &str) -> String {
    let mut line = serde_json::json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": { "code": -32700, "message": format!("Parse error: {why}") },
    })
    .to_string();
    line.push('\n');
    line
}

/// Serves MCP clients on `listener` until the task is aborted.
pub(crate) async fn serve(shared: Arc<Shared>, listener: UnixListener) {
    let me = nix::unistd::getuid().as_raw();
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "mcp accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let cred = match stream.peer_cred() {
            Ok(c) => c,
            Err(_) => continue,
        };
        if cred.uid() != me && cred.uid() != 0 {
            tracing::warn!(uid = cred.uid(), "refused an MCP client of another user");
            continue;
        }
        let gateway = Gateway {
            exec_caller: super::exec::caller_from_cred(Some(&cred), &shared.colony_id),
            shared: shared.clone(),
            caller: format!("uid {} pid {}", cred.uid(), cred.pid().unwrap_or(0)),
        };
        tokio::spawn(async move {
            let stream = screened(stream);
            match gateway.serve(stream).await {
                Ok(running) => {
                    let _ = running.waiting().await;
                }
                Err(e) => tracing::debug!(error = %e, "mcp session ended during initialisation"),
            }
        });
    }
}
