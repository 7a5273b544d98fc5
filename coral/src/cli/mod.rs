//! The `coral` command line: argument parsing, dispatch, exit codes.
//!
//! Exit codes follow sysexits: 0 success, 1 failure, 64 usage or config
//! error, 69 a daemon is not reachable. A closed stdout (`coral ... | head`)
//! is not an error. `coral exec` passes the remote command's exit code on
//! and adds 77 (denied by policy), 124 (timed out), 126 (cannot run), 127
//! (not found on the host), 128+N (killed by signal N), 130 (cancelled).

mod ask;
mod daemon;
mod debug;
mod doctor;
mod mcp_cmd;
pub(crate) mod render;

use crate::colony::{Colony, ColonyConfig};
use crate::config::CoralConfig;
use anyhow::{Context as _, anyhow};
use clap::{Args, Parser, Subcommand};
use coral_agent::{Agent, AgentConfig};
use coral_proto::rpc::{AgentControlClient, ColonyControlClient};
use coral_proto::{LinkState, ServiceKind, ServiceSpec};
use coral_sandbox::{self as sandbox, Mode, Role};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const EX_USAGE: i32 = 64;
pub const EX_UNAVAILABLE: i32 = 69;

/// A usage or config error: exit 64.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

/// A daemon that is not there: exit 69.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

/// An error with its own exit code (printed as `error: ...`).
#[derive(Debug, thiserror::Error)]
#[error("{msg}")]
pub struct Coded {
    pub code: i32,
    pub msg: String,
}

/// Exit with this code and print nothing (the remote command's own code).
#[derive(Debug, thiserror::Error)]
#[error("exit status {0}")]
pub struct Exit(pub i32);

pub const EX_NOPERM: i32 = 77;

const ABOUT: &str = "Coral: debug distributed apps. A colony coordinates one agent per host; \
agents watch your services and report to the colony.";

#[derive(Parser)]
#[command(name = "coral", version, about = ABOUT, propagate_version = true, after_help = "\
Quick start (one machine):
  coral colony start --daemon
  coral agent start --daemon
  coral connect frontend:3000 api:8080:/health
  coral colony status")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run and inspect the colony (the coordinator).
    #[command(subcommand)]
    Colony(ColonyCmd),
    /// Run and inspect this host's agent.
    #[command(subcommand)]
    Agent(AgentCmd),
    /// Watch services on this host: the local agent probes and reports them.
    #[command(after_help = "\
Examples:
  coral connect frontend:3000 api:8080:/health
  coral connect db:5432:tcp rpc:9090:grpc
  coral connect api --port 8080 --health /health

A spec is name:port[:health][:type]. With a health path (starting with /)
the agent probes with HTTP GET and counts 2xx/3xx as up; without one it
probes with a TCP connect, on 127.0.0.1 then ::1. The type (http, grpc,
tcp; default http) says what the service speaks; only http services take a
health path.")]
    Connect(ConnectArgs),
    /// Stop watching a service.
    #[command(after_help = "Example:\n  coral disconnect api")]
    Disconnect {
        /// Name of a connected service.
        name: String,
    },
    /// Run a discovery registry, where colonies publish their signed endpoints.
    #[command(subcommand)]
    Discovery(DiscoveryCmd),
    /// Query telemetry held by the colony: traces, logs, RED metrics, the map.
    #[command(subcommand)]
    Query(QueryCmd),
    /// Run a command on the host of a service, under that host's exec policy.
    #[command(after_help = "\
Examples:
  coral exec api \"ss -tnp\"
  coral exec db \"psql -d app -c 'EXPLAIN SELECT 1'\" --timeout 10s
  coral exec api \"ps aux\" --json

The command line is split into words with shell quoting rules, and no shell
runs it: ; | && > $(...) and backticks reach the program as plain text. The
agent hosting the service decides under its policy (default
/etc/coral/policy.toml), records the attempt in its audit log, runs the
program in its own process group with only the rule's environment, and
streams the output back. Exit code: the command's own; 64 usage or unknown
service, 69 colony or agent unreachable, 77 denied by policy, 124 timed out,
126 cannot run, 127 not found on the host, 128+N killed by signal N, 130
cancelled.")]
    Exec(ExecArgs),
    /// Live debugging: attach uprobes to a service's functions, read the calls, detach.
    #[command(subcommand)]
    Debug(debug::DebugCmd),
    /// Show the exec audit log: every attempt on every agent, and the colony's own records.
    #[command(after_help = "\
Examples:
  coral audit
  coral audit --service api --since 1h
  coral audit --json")]
    Audit {
        /// Only records for this service.
        #[arg(long)]
        service: Option<String>,
        /// How far back to look, e.g. 30m, 1h, 7days.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        since: Duration,
        /// Most records to show, per source (at most 10000).
        #[arg(long, default_value_t = 200)]
        limit: u32,
        /// Print JSON (a stable schema) instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// A live table of services from eBPF: rps, error %, p50/p95/p99.
    #[command(after_help = "\
Examples:
  coral top
  coral top --interval 5s
  coral top --once --json

Figures cover the last minute. The table is redrawn in place on a terminal;
otherwise each refresh is printed after the previous one.")]
    Top {
        /// Time between refreshes.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        interval: Duration,
        /// Stop after this many refreshes.
        #[arg(long)]
        iterations: Option<u32>,
        /// Print one table and exit (same as --iterations 1).
        #[arg(long)]
        once: bool,
        /// Only this service.
        #[arg(long)]
        service: Option<String>,
        /// Print each refresh as one JSON line (a stable schema).
        #[arg(long)]
        json: bool,
    },
    /// Check and explain exec policies (the rules `coral exec` runs under).
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Applies a role's sandbox to this process, then tries one action and
    /// reports the outcome (for the sandbox tests; not a user command).
    #[command(hide = true)]
    SandboxCheck {
        #[arg(long)]
        role: String,
        /// syscall:chroot, read:PATH or write:PATH.
        #[arg(long = "try")]
        action: String,
    },
    /// The colony's MCP gateway: serve it to an MCP client, print its config, call its tools.
    #[command(subcommand)]
    Mcp(mcp_cmd::McpCmd),
    /// Ask your LLM about the application; it gathers evidence with the colony's tools.
    #[command(after_help = "\
Examples:
  coral ask \"What's wrong with the API?\"
  coral ask \"Why is checkout slow?\" --model openai:gpt-4.1 --json
  coral ask config                     # choose provider, model and key
  coral ask cost --since 30d           # tokens and estimated cost

The model calls the colony's tools (services, RED metrics, service map,
traces, logs, changes) as many rounds as it needs, up to --max-steps. The
answer streams to the terminal, followed by the evidence: every tool call
with its id and arguments. With no provider configured, the built-in
analyzer answers. Only the question, the tool specs and the tool outputs
are sent to the provider.")]
    Ask(ask::AskArgs),
    /// Check configuration files.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Check this machine: kernel features, the helper's socket and group, ports, mesh subnet.
    #[command(after_help = "Examples:\n  coral doctor\n  coral doctor --json")]
    Doctor(doctor::DoctorArgs),
    /// Show version, git commit, build date and features.
    #[command(after_help = "Examples:\n  coral version\n  coral version --json")]
    Version {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ColonyCmd {
    /// Start the colony (in the foreground unless --daemon).
    #[command(after_help = "\
Examples:
  coral colony start
  coral colony start --daemon --port 9100 --colony-id shop-prod

State lives in $XDG_STATE_HOME/coral/colony, the control socket in
$XDG_RUNTIME_DIR/coral. Settings come from $XDG_CONFIG_HOME/coral/config.toml
([colony] table) or --config; flags override the file.")]
    Start(ColonyStart),
    /// Show the colony, its agents and their services.
    #[command(after_help = "Examples:\n  coral colony status\n  coral colony status --json")]
    Status {
        /// Print JSON (a stable schema) instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Stop the colony.
    #[command(after_help = "Example:\n  coral colony stop")]
    Stop,
    /// Join tokens for agents on other hosts.
    #[command(subcommand)]
    Token(TokenCmd),
    /// List the agents that joined the colony's mesh.
    #[command(after_help = "Examples:\n  coral colony agents\n  coral colony agents --json")]
    Agents {
        /// Print JSON (a stable schema) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove an agent from the mesh: its peer, its address and its calls.
    #[command(
        after_help = "Examples:\n  coral colony revoke web-3\n  coral colony revoke 5f0c2a1e-..."
    )]
    Revoke {
        /// The agent's name or id (see 'coral colony agents').
        agent: String,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Create a join token: colony id, keys, endpoints and a one-time secret.
    #[command(after_help = "\
Examples:
  coral colony token create
  coral colony token create --ttl 24h --uses 10 --json

Give the token to 'coral agent start --join TOKEN' on the host to add. The
colony keeps only a hash of its secret. A token works --uses times (default
once) until it expires (default 1h).")]
    Create {
        /// How long the token stays valid, e.g. 10m, 1h, 7days.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// How many agents may join with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// Print JSON (a stable schema) instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum DiscoveryCmd {
    /// Start the registry in the foreground (agents and colonies point
    /// colony.mesh.discovery / agent.mesh.discovery at it).
    #[command(after_help = "\
Examples:
  coral discovery start
  coral discovery start --listen 0.0.0.0:41580

Records are signed by each colony's key and checked by agents against the
key from their join token; the registry is trusted only to be available.")]
    Start {
        #[arg(long, default_value = "127.0.0.1:41580")]
        listen: String,
    },
}

#[derive(Args)]
struct ColonyStart {
    /// Detach, write a pid file and a log file; return once the colony serves.
    #[arg(short, long)]
    daemon: bool,
    /// Port agents connect to (default 9000; 0 picks a free one).
    #[arg(long)]
    port: Option<u16>,
    /// The colony's id (fixed on first start; generated when omitted).
    #[arg(long)]
    colony_id: Option<String>,
    /// Config file (default $XDG_CONFIG_HOME/coral/config.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Confinement: enforce (landlock + seccomp, the default), log (log
    /// syscall violations instead of killing; no landlock) or off. For debugging.
    #[arg(
        long,
        env = "CORAL_SANDBOX",
        default_value = "enforce",
        value_name = "MODE"
    )]
    sandbox: String,
}

#[derive(Subcommand)]
enum AgentCmd {
    /// Start this host's agent (in the foreground unless --daemon).
    #[command(after_help = "\
Examples:
  coral agent start                      # joins the colony running on this machine
  coral agent start --daemon --join coral-join-v1.eyJjb2xvbnlf...
  coral agent start --colony-id shop-prod --discovery 10.0.0.9:41580

With --join the agent redeems the token (from 'coral colony token create')
with its colony, caches the colony-signed peer config in its state dir and
talks to the colony over the WireGuard mesh from then on, also after
restarts (no --join needed again). Without a membership it finds the colony
that the same user runs on this machine. --colony host:port is the plain-TCP
development transport (a colony with colony.mesh.enabled = false). If the
colony is not reachable the agent keeps retrying and says so in
'coral agent status'.")]
    Start(AgentStart),
    /// Show the agent, its services and its link to the colony.
    #[command(after_help = "Examples:\n  coral agent status\n  coral agent status --json")]
    Status {
        /// Print JSON (a stable schema) instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Stop the agent.
    #[command(after_help = "Example:\n  coral agent stop")]
    Stop,
}

#[derive(Args)]
struct AgentStart {
    /// Config file (default $XDG_CONFIG_HOME/coral/config.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Join only the colony with this id.
    #[arg(long)]
    colony_id: Option<String>,
    /// Colony address host:port, plain TCP (development: a colony with the mesh off).
    #[arg(long)]
    colony: Option<String>,
    /// Join a colony with a token from 'coral colony token create'.
    #[arg(long, value_name = "TOKEN")]
    join: Option<String>,
    /// A discovery registry host:port to find the colony if it moved.
    #[arg(long)]
    discovery: Option<String>,
    /// Detach, write a pid file and a log file; return once the agent serves.
    #[arg(short, long)]
    daemon: bool,
    /// Confinement: enforce (landlock + seccomp, the default), log (log
    /// syscall violations instead of killing; no landlock) or off. For debugging.
    #[arg(
        long,
        env = "CORAL_SANDBOX",
        default_value = "enforce",
        value_name = "MODE"
    )]
    sandbox: String,
}

#[derive(Args)]
struct ConnectArgs {
    /// Services as name:port[:health][:type], or one NAME with --port.
    #[arg(required = true, value_name = "SPEC")]
    specs: Vec<String>,
    /// Port of the single service NAME.
    #[arg(long)]
    port: Option<u32>,
    /// Health path of the single service NAME (HTTP GET).
    #[arg(long, requires = "port")]
    health: Option<String>,
    /// Type of the single service NAME: http, grpc or tcp.
    #[arg(long = "type", requires = "port", value_parser = ["http", "grpc", "tcp"])]
    kind: Option<String>,
}

#[derive(Args)]
struct ExecArgs {
    /// The service whose host runs the command.
    service: String,
    /// The command line, e.g. "ss -tnp" (split like a shell would, never run by one).
    command: String,
    /// Stop the command after this long (at most the rule's timeout), e.g. 10s.
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// The agent (name or id), when several agents host the service.
    #[arg(long)]
    agent: Option<String>,
    /// Print one JSON document (output included) instead of streaming.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum QueryCmd {
    /// List recent traces, newest first.
    #[command(after_help = "\
Examples:
  coral query traces
  coral query traces --service checkout --since 1h --min-duration 500ms
  coral query traces --json")]
    Traces {
        /// Only traces with a span of this service (OTLP service.name).
        #[arg(long)]
        service: Option<String>,
        /// How far back to look, e.g. 30s, 10m, 2h.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        since: Duration,
        /// Only traces lasting at least this long, e.g. 500ms.
        #[arg(long, value_parser = humantime::parse_duration)]
        min_duration: Option<Duration>,
        /// Most traces to show (at most 1000).
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Print JSON (a stable schema) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one trace as a tree of spans; * marks the critical path.
    #[command(
        after_help = "Examples:\n  coral query trace 4bf92f3577b34da6a3ce929d0e0e4736\n  coral query trace 4bf92f3577b34da6a3ce929d0e0e4736 --json"
    )]
    Trace {
        /// The trace id: 32 hex digits.
        trace_id: String,
        /// Print the spans as JSON instead of a tree.
        #[arg(long)]
        json: bool,
    },
    /// List recent log records, newest first.
    #[command(after_help = "\
Examples:
  coral query logs --service checkout --since 1h
  coral query logs --trace 4bf92f3577b34da6a3ce929d0e0e4736
  coral query logs --grep timeout --json")]
    Logs {
        /// Only records of this service (OTLP service.name).
        #[arg(long)]
        service: Option<String>,
        /// How far back to look, e.g. 30s, 10m, 2h.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        since: Duration,
        /// Only records written in this trace.
        #[arg(long = "trace")]
        trace_id: Option<String>,
        /// Only records whose body contains this text (case-insensitive).
        #[arg(long)]
        grep: Option<String>,
        /// Most records to show (at most 1000).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Print JSON (a stable schema) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// RED metrics per service, then per route: eBPF and OTLP side by side.
    #[command(after_help = "\
Examples:
  coral query metrics
  coral query metrics --service api --since 1h
  coral query metrics --since 5m --baseline 1h
  coral query metrics --json

The figures lead with eBPF (every request on the wire of a connected
service, no code change) and show the app's OTLP server spans beside them
(SPANS); SOURCE says which saw the row. Routes are normalised
(/api/orders/123 -> /api/orders/{id}). Errors are 5xx responses (OTLP: error
status); 4xx are counted apart. Windows are resolved to the second. The same
read layer answers the MCP tool coral_red_metrics and 'coral ask'.")]
    Metrics {
        /// Only this service (as connected with 'coral connect', or its OTLP service.name).
        #[arg(long)]
        service: Option<String>,
        /// How far back to look, e.g. 5m, 15m, 2h.
        #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
        since: Duration,
        /// Compare with this long before the window, e.g. 1h (adds BASE P95 and CHANGE).
        #[arg(long, value_parser = humantime::parse_duration)]
        baseline: Option<Duration>,
        /// Print JSON (a stable schema) instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// The service map: who connects to whom (eBPF) and who calls whom (OTLP).
    #[command(after_help = "\
Examples:
  coral query map
  coral query map --json
  coral query map --dot | dot -Tsvg > map.svg")]
    Map {
        /// How far back to look, e.g. 5m, 15m, 2h.
        #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
        since: Duration,
        /// Print JSON (a stable schema) instead of a table.
        #[arg(long, conflicts_with = "dot")]
        json: bool,
        /// Print a Graphviz digraph.
        #[arg(long)]
        dot: bool,
    },
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Parse a policy and run its [[test]] entries.
    #[command(after_help = "\
Examples:
  coral policy check
  coral policy check ./policy.toml

Exit codes: 0 all tests pass, 1 a test failed, 64 the file does not parse.
The format is in docs/policy.md.")]
    Check {
        /// Policy file (default /etc/coral/policy.toml).
        file: Option<PathBuf>,
    },
    /// Say which rule decides a command and why.
    #[command(after_help = "\
Examples:
  coral policy explain policy.toml --service api -- ss -tnp
  coral policy explain policy.toml --service db --as role:oncall -- psql -c 'EXPLAIN SELECT 1'

CMD is resolved like a shell would (PATH, then symlinks) but never run. The
caller is you (uid, user, groups) unless --as gives one.")]
    Explain {
        /// Policy file.
        file: PathBuf,
        /// The service the command targets.
        #[arg(long)]
        service: String,
        /// Who asks, as kind:value (identity, role, uid, user, gid, group); repeatable.
        #[arg(long = "as", value_name = "KIND:VALUE")]
        callers: Vec<String>,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Parse and check a config file; unknown keys are errors.
    #[command(
        after_help = "Examples:\n  coral config validate\n  coral config validate /etc/coral/config.toml"
    )]
    Validate {
        /// File to check (default $XDG_CONFIG_HOME/coral/config.toml).
        file: Option<PathBuf>,
    },
}

/// Runs the CLI and returns the process exit code.
pub fn main() -> i32 {
    // The agent runs exec'd commands through this binary (cgroup join, then
    // execve); see coral_agent::exec::shim_main.
    if std::env::args_os().nth(1).as_deref()
        == Some(std::ffi::OsStr::new(coral_agent::exec::SHIM_ARG))
    {
        return coral_agent::exec::shim_main(std::env::args_os().skip(2).collect());
    }
    // The agent's exec spawner (issue 16): it runs commands so the agent
    // never does; see coral_agent::exec::spawner.
    if std::env::args_os().nth(1).as_deref()
        == Some(std::ffi::OsStr::new(coral_agent::exec::SPAWNER_ARG))
    {
        return coral_agent::exec::spawner_main(std::env::args_os().skip(2).collect());
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EX_USAGE } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    match dispatch(cli) {
        Ok(()) => 0,
        Err(e) => exit_code(&e),
    }
}

fn exit_code(e: &anyhow::Error) -> i32 {
    if e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    }) {
        return 0;
    }
    if let Some(Exit(code)) = e.downcast_ref::<Exit>() {
        return *code;
    }
    eprintln!("error: {}", render::esc(&format!("{e:#}")));
    if let Some(c) = e.downcast_ref::<Coded>() {
        return c.code;
    }
    if e.downcast_ref::<Usage>().is_some() {
        EX_USAGE
    } else if e.downcast_ref::<Unavailable>().is_some() {
        EX_UNAVAILABLE
    } else {
        1
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Colony(ColonyCmd::Start(args)) => colony_start(args),
        Command::Colony(ColonyCmd::Status { json }) => client(async move {
            let c = colony_client().await?;
            let status = c.status(ctx()).await.map_err(|e| colony_gone(&e))?;
            print_json_or(json, &status, render::colony_status)
        }),
        Command::Colony(ColonyCmd::Stop) => stop("colony"),
        Command::Colony(ColonyCmd::Token(TokenCmd::Create { ttl, uses, json })) => {
            client(async move {
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
            })
        }
        Command::Colony(ColonyCmd::Agents { json }) => client(async move {
            let c = colony_client().await?;
            let m = c
                .members(ctx())
                .await
                .map_err(|e| colony_gone(&e))?
                .map_err(mesh_admin)?;
            print_json_or(json, &m, |m| render::members(coral_proto::now_ms(), m))
        }),
        Command::Colony(ColonyCmd::Revoke { agent }) => client(async move {
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
        Command::Discovery(DiscoveryCmd::Start { listen }) => discovery_start(&listen),
        Command::Agent(AgentCmd::Start(args)) => agent_start(args),
        Command::Agent(AgentCmd::Status { json }) => client(async move {
            let c = agent_client().await?;
            let status = c.status(ctx()).await.map_err(|e| agent_gone(&e))?;
            print_json_or(json, &status, render::agent_status)
        }),
        Command::Agent(AgentCmd::Stop) => stop("agent"),
        Command::Connect(args) => connect(args),
        Command::Disconnect { name } => client(async move {
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
        }),
        Command::Config(ConfigCmd::Validate { file }) => config_validate(file),
        Command::Ask(args) => ask::run(args),
        Command::Query(q) => client(query(q)),
        Command::Mcp(cmd) => mcp_cmd::run(cmd),
        Command::SandboxCheck { role, action } => sandbox_check(&role, &action),
        Command::Exec(args) => client(exec(args)),
        Command::Debug(cmd) => client(debug::run(cmd)),
        Command::Audit {
            service,
            since,
            limit,
            json,
        } => client(async move {
            let c = colony_client().await?;
            let q = coral_proto::AuditQuery {
                service,
                since_ms: since_ms(since)?,
                limit,
            };
            let report = c
                .audit(ctx(), q)
                .await
                .map_err(|e| colony_gone(&e))?
                .map_err(|e| match e {
                    coral_proto::QueryError::Invalid(m) => Usage(m).into(),
                    other => anyhow!("{other}"),
                })?;
            for u in &report.unreachable {
                eprintln!("warning: agent not asked: {u}");
            }
            print_json_or(json, &report, |r| render::audit(coral_proto::now_ms(), r))
        }),
        Command::Top {
            interval,
            iterations,
            once,
            service,
            json,
        } => client(top(
            interval,
            if once { Some(1) } else { iterations },
            service,
            json,
        )),
        Command::Policy(PolicyCmd::Check { file }) => policy_check(file),
        Command::Policy(PolicyCmd::Explain {
            file,
            service,
            callers,
            command,
        }) => policy_explain(&file, &service, &callers, &command),
        Command::Version { json } => version(json),
        Command::Doctor(args) => doctor::run(args),
    }
}

fn out(s: &str) -> anyhow::Result<()> {
    let mut o = std::io::stdout().lock();
    o.write_all(s.as_bytes())?;
    o.flush()?;
    Ok(())
}

fn print_json_or<T: serde::Serialize>(
    json: bool,
    v: &T,
    human: impl Fn(&T) -> String,
) -> anyhow::Result<()> {
    if json {
        out(&(serde_json::to_string_pretty(v)? + "\n"))
    } else {
        out(&human(v))
    }
}

/// Runs a client command on a small runtime.
fn client<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(f)
}

fn ctx() -> tarpc::context::Context {
    let mut c = tarpc::context::current();
    c.deadline = Instant::now() + Duration::from_secs(10);
    c
}

fn socket_path(role: &str) -> anyhow::Result<PathBuf> {
    Ok(coral_proto::local::runtime_dir()?.join(format!("{role}.sock")))
}

async fn local_stream(role: &str) -> anyhow::Result<tokio::net::UnixStream> {
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

async fn colony_client() -> anyhow::Result<ColonyControlClient> {
    let s = local_stream("colony").await?;
    Ok(ColonyControlClient::new(Default::default(), coral_proto::local::framed(s)).spawn())
}

async fn agent_client() -> anyhow::Result<AgentControlClient> {
    let s = local_stream("agent").await?;
    Ok(AgentControlClient::new(Default::default(), coral_proto::local::framed(s)).spawn())
}

fn colony_gone(e: &tarpc::client::RpcError) -> anyhow::Error {
    Unavailable(format!("the colony did not answer: {e}")).into()
}

fn mesh_admin(e: coral_proto::MeshAdminError) -> anyhow::Error {
    use coral_proto::MeshAdminError as E;
    match e {
        E::Storage(_) => anyhow!("{e}"),
        _ => Usage(e.to_string()).into(),
    }
}

fn discovery_start(listen: &str) -> anyhow::Result<()> {
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

fn agent_gone(e: &tarpc::client::RpcError) -> anyhow::Error {
    Unavailable(format!("the agent did not answer: {e}")).into()
}

fn load_config(path: Option<&Path>) -> anyhow::Result<CoralConfig> {
    CoralConfig::load_or_default(path).map_err(|e| Usage(e.to_string()).into())
}

/// Daemon start: files the daemon creates are private to its user, and
/// logs go to stderr (the log file when detached); `CORAL_LOG` sets the filter.
fn init_daemon() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    if daemon::is_child() {
        daemon::detach_child();
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("CORAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Starts this command again as a detached `role` daemon logging to
/// `<state_dir>/<role>.log`; returns what it reported once ready, and the log.
fn detach(role: &str, state_dir: &Path) -> anyhow::Result<(serde_json::Value, PathBuf)> {
    coral_proto::local::ensure_private_dir(state_dir)?;
    let log = state_dir.join(format!("{role}.log"));
    let ready = daemon::spawn_detached(&log, Duration::from_secs(60))
        .with_context(|| format!("the {role} did not start"))?;
    Ok((ready, log))
}

fn daemon_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("coral-worker")
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
        _ = term.recv() => tracing::info!("terminated"),
    }
}

/// Takes the pid file and the control socket of `role`, or explains who has them.
fn claim(role: &str) -> anyhow::Result<(daemon::PidFile, PathBuf)> {
    let dir = coral_proto::local::runtime_dir()?;
    let pid_path = dir.join(format!("{role}.pid"));
    let (pid, stale) = match daemon::PidFile::acquire(&pid_path) {
        Ok(x) => x,
        Err(daemon::PidError::Running(pid)) => {
            return Err(anyhow!(
                "the {role} is already running (pid {pid}); stop it with 'coral {role} stop'"
            ));
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(old) = stale {
        tracing::warn!(pid = old, file = %pid_path.display(), "removed a stale pid file (that process is gone)");
    }
    let sock = dir.join(format!("{role}.sock"));
    // We hold the pid lock, so a socket file left here is stale.
    match std::fs::remove_file(&sock) {
        Ok(()) => tracing::warn!(socket = %sock.display(), "removed a stale control socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(anyhow!(
                "cannot remove stale socket {}: {e}",
                sock.display()
            ));
        }
    }
    Ok((pid, sock))
}

fn bind_control(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let l = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

fn sandbox_check(role: &str, action: &str) -> anyhow::Result<()> {
    let (role, state) = match role {
        "colony" => (Role::Colony, ColonyConfig::default().state_dir()),
        "agent" => (Role::Agent, AgentConfig::default().state_dir()),
        _ => return Err(Usage(format!("role '{role}' must be colony or agent")).into()),
    };
    let applied = confine(role, Mode::Enforce, &state, &[])?;
    eprintln!(
        "sandbox: landlock {}, {} syscalls allowed",
        applied.landlock, applied.syscalls
    );
    let outcome = match action.split_once(':') {
        Some(("syscall", "chroot")) => {
            // Not on any role's list: the kernel kills the process here.
            std::os::unix::fs::chroot("/").map(|_| "allowed".to_string())
        }
        Some(("syscall", "execve")) => {
            // Not on the colony's or the agent's list (issue 16): this
            // process is replaced by `true`, or killed.
            use std::os::unix::process::CommandExt as _;
            Err(std::process::Command::new("/bin/true").exec())
        }
        Some(("socket", "packet")) => {
            // socket is on the lists, AF_PACKET is not (issue 16): EPERM.
            use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
            socket(
                AddressFamily::Packet,
                SockType::Raw,
                SockFlag::empty(),
                None,
            )
            .map(|_| "allowed".to_string())
            .map_err(std::io::Error::from)
        }
        Some(("ioctl", path)) => {
            // ioctl is on the lists, FS_IOC_GETFLAGS is not: EPERM.
            sandbox::try_refused_ioctl(Path::new(path)).map(|()| "allowed".to_string())
        }
        Some(("syscall", "fork")) => {
            // A clone without CLONE_THREAD: killed in the colony and agent.
            std::process::Command::new("/bin/true")
                .status()
                .map(|s| format!("ran: {s}"))
        }
        Some(("read", path)) => std::fs::read(path).map(|b| format!("read {} bytes", b.len())),
        Some(("write", path)) => std::fs::write(path, b"x").map(|_| "written".to_string()),
        _ => return Err(Usage(format!("unknown action '{action}'")).into()),
    };
    match outcome {
        Ok(o) => out(&format!("{o}\n")),
        Err(e) => out(&format!("denied: {e}\n")),
    }
}

/// Puts this daemon in its sandbox (see `coral_sandbox`): before
/// its stores open and its runtime starts, so every thread is confined.
fn confine(
    role: Role,
    mode: Mode,
    state_dir: &Path,
    readable: &[PathBuf],
) -> anyhow::Result<sandbox::Applied> {
    coral_proto::local::ensure_private_dir(state_dir)
        .with_context(|| format!("cannot create state dir {}", state_dir.display()))?;
    let runtime = coral_proto::local::runtime_dir()?;
    let applied = sandbox::apply(
        role,
        mode,
        &sandbox::paths(role, state_dir, &runtime, readable),
    )
    .with_context(|| "cannot sandbox this process (run with --sandbox=off to debug)")?;
    tracing::info!(mode = ?applied.mode, landlock = applied.landlock, syscalls = applied.syscalls, "sandbox applied");
    Ok(applied)
}

fn colony_start(args: ColonyStart) -> anyhow::Result<()> {
    let file = load_config(args.config.as_deref())?;
    let mut config = file.colony.unwrap_or_default();
    if let Some(p) = args.port {
        config.set_port(p);
    }
    if let Some(id) = args.colony_id {
        config.colony_id = Some(id);
    }
    config.validate().map_err(Usage)?;
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

fn agent_start(args: AgentStart) -> anyhow::Result<()> {
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

fn stop(role: &str) -> anyhow::Result<()> {
    let pid_path = coral_proto::local::runtime_dir()?.join(format!("{role}.pid"));
    let asked = client(async {
        let stream = match local_stream(role).await {
            Ok(s) => s,
            Err(_) => return Ok(None),
        };
        use coral_proto::local::framed;
        let pid = if role == "colony" {
            ColonyControlClient::new(Default::default(), framed(stream))
                .spawn()
                .stop(ctx())
                .await
        } else {
            AgentControlClient::new(Default::default(), framed(stream))
                .spawn()
                .stop(ctx())
                .await
        };
        Ok(pid.ok())
    })?;
    let pid = match asked {
        Some(pid) => pid as i32,
        None => match daemon::PidFile::holder(&pid_path) {
            // It holds its pid file but does not answer: signal it.
            Some(pid) => {
                daemon::terminate(pid)?;
                pid
            }
            None => {
                let _ = std::fs::remove_file(&pid_path);
                return out(&format!("The {role} is not running\n"));
            }
        },
    };
    if daemon::wait_gone(pid, Duration::from_secs(15)) {
        out(&format!("Stopped the {role} (pid {pid})\n"))
    } else {
        Err(anyhow!(
            "the {role} (pid {pid}) is still running after 15s; 'kill {pid}' stops it"
        ))
    }
}

fn connect(args: ConnectArgs) -> anyhow::Result<()> {
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

/// A `--since` or `--baseline` length in ms, refused (exit 64) past a year:
/// `--since 300000years` is a usage error, never an overflow.
fn window_ms(flag: &str, d: Duration) -> Result<i64, Usage> {
    let ms = d.as_millis();
    if ms > coral_proto::MAX_WINDOW_MS as u128 {
        return Err(Usage(format!(
            "{flag} {} is longer than a year; ask for at most 365d",
            humantime::format_duration(d)
        )));
    }
    Ok(ms as i64)
}

fn since_ms(since: Duration) -> Result<i64, Usage> {
    Ok(coral_proto::now_ms() - window_ms("--since", since)?)
}

async fn query(q: QueryCmd) -> anyhow::Result<()> {
    let c = colony_client().await?;
    let usage = |e: coral_proto::QueryError| -> anyhow::Error {
        match e {
            coral_proto::QueryError::Invalid(m) => Usage(m).into(),
            other => anyhow!("{other}"),
        }
    };
    match q {
        QueryCmd::Traces {
            service,
            since,
            min_duration,
            limit,
            json,
        } => {
            let q = coral_proto::TraceQuery {
                service,
                since_ms: since_ms(since)?,
                min_duration_us: min_duration.map(|d| d.as_micros() as u64).unwrap_or(0),
                limit,
            };
            let traces = c
                .traces(ctx(), q)
                .await
                .map_err(|e| colony_gone(&e))?
                .map_err(usage)?;
            print_json_or(json, &traces, |t| render::traces(coral_proto::now_ms(), t))
        }
        QueryCmd::Trace { trace_id, json } => {
            let spans = c
                .trace(ctx(), trace_id.clone())
                .await
                .map_err(|e| colony_gone(&e))?
                .map_err(usage)?;
            if spans.is_empty() {
                return Err(anyhow!(
                    "no spans of trace {trace_id} in the colony (retention is colony.retention; see 'coral query traces')"
                ));
            }
            print_json_or(json, &spans, |s| render::trace_tree(s))
        }
        QueryCmd::Logs {
            service,
            since,
            trace_id,
            grep,
            limit,
            json,
        } => {
            let q = coral_proto::LogQuery {
                service,
                since_ms: since_ms(since)?,
                trace_id,
                contains: grep,
                limit,
            };
            let logs = c
                .logs(ctx(), q)
                .await
                .map_err(|e| colony_gone(&e))?
                .map_err(usage)?;
            print_json_or(json, &logs, |l| render::logs(l))
        }
        QueryCmd::Metrics {
            service,
            since,
            baseline,
            json,
        } => {
            let q = coral_proto::RedQuery {
                service,
                window: coral_proto::Window::last(
                    window_ms("--since", since)?,
                    baseline
                        .map(|b| window_ms("--baseline", b))
                        .transpose()?
                        .unwrap_or(0),
                    coral_proto::now_ms(),
                ),
            };
            let report = c
                .red(ctx(), q)
                .await
                .map_err(|e| colony_gone(&e))?
                .map_err(usage)?;
            print_json_or(json, &report, render::metrics)
        }
        QueryCmd::Map { since, json, dot } => {
            let q = coral_proto::MapQuery {
                window: coral_proto::Window::last(
                    window_ms("--since", since)?,
                    0,
                    coral_proto::now_ms(),
                ),
            };
            let map = c
                .service_map(ctx(), q)
                .await
                .map_err(|e| colony_gone(&e))?
                .map_err(usage)?;
            if dot {
                out(&render::service_map_dot(&map))
            } else {
                print_json_or(json, &map, render::service_map)
            }
        }
    }
}

/// `coral top`: the last minute's RED figures per service, refreshed.
async fn top(
    interval: Duration,
    iterations: Option<u32>,
    service: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    if interval < Duration::from_millis(100) {
        return Err(Usage("--interval must be at least 100ms".into()).into());
    }
    let c = colony_client().await?;
    let tty = std::io::stdout().is_terminal() && !json;
    let mut n = 0u32;
    loop {
        let q = coral_proto::RedQuery {
            service: service.clone(),
            window: coral_proto::Window::last(60_000, 0, coral_proto::now_ms()),
        };
        let report = c
            .red(ctx(), q)
            .await
            .map_err(|e| colony_gone(&e))?
            .map_err(|e| anyhow!("{e}"))?;
        let frame = if json {
            serde_json::to_string(&report)? + "\n"
        } else {
            render::top(&report)
        };
        if tty {
            // Home, clear, draw: the table refreshes in place.
            out(&format!("\x1b[H\x1b[2J{frame}"))?;
        } else {
            out(&frame)?;
        }
        n += 1;
        if iterations.is_some_and(|max| n >= max) {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        if !tty && !json {
            out("\n")?;
        }
    }
}

fn exec_error(e: coral_proto::ExecError) -> anyhow::Error {
    use coral_proto::ExecError as E;
    match e {
        E::UnknownService(_) | E::Ambiguous { .. } | E::Invalid(_) => Usage(e.to_string()).into(),
        E::Unavailable(_) | E::Refused(_) => Unavailable(e.to_string()).into(),
        other => anyhow!("{other}"),
    }
}

/// `coral exec`: start, stream output as it comes, return the remote code.
async fn exec(args: ExecArgs) -> anyhow::Result<()> {
    use coral_proto::{ExecVerdict, OutputStream};
    let argv = coral_policy::split_command_line(&args.command).map_err(|e| Usage(e.to_string()))?;
    let timeout_ms = match args.timeout {
        Some(d) if d.is_zero() => return Err(Usage("--timeout must be above 0".into()).into()),
        Some(d) => Some(d.as_millis().min(u64::MAX as u128) as u64),
        None => None,
    };
    let c = colony_client().await?;
    let req = coral_proto::ExecStartRequest {
        service: args.service.clone(),
        agent: args.agent.clone(),
        argv: argv.clone(),
        timeout_ms,
    };
    let started = c
        .exec_start(ctx(), req)
        .await
        .map_err(|e| colony_gone(&e))?
        .map_err(exec_error)?;
    let mut doc = serde_json::json!({
        "service": args.service,
        "agent": started.agent_name,
        "agent_id": started.agent_id,
        "exec_id": started.exec_id,
        "argv": argv,
        "program": started.program,
        "verdict": started.verdict,
        "rule": started.rule,
        "reason": started.reason,
    });
    let refused = match started.verdict {
        ExecVerdict::Allowed => None,
        ExecVerdict::Denied => Some(Coded {
            code: EX_NOPERM,
            msg: format!(
                "denied by the policy on agent {}: {}",
                started.agent_name, started.reason
            ),
        }),
        ExecVerdict::NotFound => Some(Coded {
            code: 127,
            msg: format!("on agent {}: {}", started.agent_name, started.reason),
        }),
    };
    if let Some(err) = refused {
        if args.json {
            out(&(serde_json::to_string_pretty(&doc)? + "\n"))?;
            return Err(Exit(err.code).into());
        }
        return Err(err.into());
    }

    let (mut stdout_buf, mut stderr_buf) = (Vec::new(), Vec::new());
    let mut offset = 0;
    let mut cancelled = false;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let done = loop {
        let poll = c.exec_poll(
            ctx(),
            started.agent_id.clone(),
            started.exec_id.clone(),
            offset,
            500,
        );
        let p = tokio::select! {
            r = poll => r.map_err(|e| colony_gone(&e))?.map_err(exec_error)?,
            _ = &mut ctrl_c, if !cancelled => {
                cancelled = true;
                let _ = c.exec_cancel(ctx(), started.agent_id.clone(), started.exec_id.clone()).await;
                continue;
            }
        };
        offset = p.next_offset;
        for chunk in p.chunks {
            let written = match (args.json, chunk.stream) {
                (true, OutputStream::Stdout) => {
                    stdout_buf.extend_from_slice(&chunk.data);
                    Ok(())
                }
                (true, OutputStream::Stderr) => {
                    stderr_buf.extend_from_slice(&chunk.data);
                    Ok(())
                }
                (false, OutputStream::Stdout) => {
                    let mut o = std::io::stdout().lock();
                    o.write_all(&chunk.data).and_then(|()| o.flush())
                }
                (false, OutputStream::Stderr) => {
                    let mut o = std::io::stderr().lock();
                    o.write_all(&chunk.data).and_then(|()| o.flush())
                }
            };
            if let Err(e) = written {
                // Nobody reads our output any more: stop the command.
                let _ = c
                    .exec_cancel(ctx(), started.agent_id.clone(), started.exec_id.clone())
                    .await;
                return Err(e.into());
            }
        }
        if let Some(done) = p.done {
            break done;
        }
    };
    let (code, msg) = if let Some(e) = &done.error {
        (126, Some(format!("on agent {}: {e}", started.agent_name)))
    } else if done.timed_out {
        (
            124,
            Some(format!(
                "timed out after {}; the command's process group was killed",
                humantime::format_duration(Duration::from_millis(started.timeout_ms))
            )),
        )
    } else if done.cancelled {
        (
            130,
            Some("cancelled; the command's process group was killed".into()),
        )
    } else if let Some(sig) = done.signal {
        let why = if done.truncated && sig == 13 {
            format!(
                "output cut at {} bytes; the command was stopped by SIGPIPE",
                started.max_output_bytes
            )
        } else {
            format!("the command was killed by signal {sig}")
        };
        (128 + sig, Some(why))
    } else {
        (done.exit_code.unwrap_or(1), None)
    };
    if args.json {
        let obj = doc.as_object_mut().expect("object");
        obj.insert("outcome".into(), serde_json::to_value(&done)?);
        obj.insert("exit_code".into(), code.into());
        obj.insert("stdout".into(), String::from_utf8_lossy(&stdout_buf).into());
        obj.insert("stderr".into(), String::from_utf8_lossy(&stderr_buf).into());
        out(&(serde_json::to_string_pretty(&doc)? + "\n"))?;
        return if code == 0 {
            Ok(())
        } else {
            Err(Exit(code).into())
        };
    }
    match (code, msg) {
        (0, _) => Ok(()),
        (code, Some(msg)) => Err(Coded { code, msg }.into()),
        (code, None) => Err(Exit(code).into()),
    }
}

fn policy_check(file: Option<PathBuf>) -> anyhow::Result<()> {
    let path = file.unwrap_or_else(|| PathBuf::from(coral_policy::DEFAULT_PATH));
    let policy = coral_policy::Policy::load(&path).map_err(|e| Usage(e.to_string()))?;
    let outcomes = policy.run_tests();
    let mut text = String::new();
    for o in &outcomes {
        text.push_str(&format!("{o}\n"));
    }
    let failed = outcomes.iter().filter(|o| !o.passed).count();
    text.push_str(&format!(
        "{}: {} rules, {} tests, {}\n",
        path.display(),
        policy.rule_count(),
        outcomes.len(),
        if failed == 0 {
            "all pass".to_string()
        } else {
            format!("{failed} failed")
        }
    ));
    out(&text)?;
    if failed > 0 {
        return Err(anyhow!(
            "{failed} of {} policy tests failed",
            outcomes.len()
        ));
    }
    Ok(())
}

/// Finds `cmd` as a shell would (a path as given, else along PATH) and
/// resolves symlinks, so the policy sees the program that would really run.
fn resolve_program(cmd: &str) -> anyhow::Result<String> {
    let found = if cmd.contains('/') {
        Some(PathBuf::from(cmd))
    } else {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(cmd))
                .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file()))
        })
    };
    let path = found.ok_or_else(|| Usage(format!("command '{cmd}' is not found in PATH")))?;
    let real = std::fs::canonicalize(&path)
        .map_err(|e| Usage(format!("cannot resolve {}: {e}", path.display())))?;
    Ok(real.to_string_lossy().into_owned())
}

/// The user running the CLI, as a policy caller.
fn local_caller() -> coral_policy::Caller {
    use nix::unistd::{Gid, Group, Uid, User, getgroups};
    let uid = Uid::current();
    let mut gids: Vec<Gid> = getgroups().unwrap_or_default();
    gids.push(Gid::current());
    gids.dedup();
    coral_policy::Caller {
        uid: Some(uid.as_raw()),
        user: User::from_uid(uid).ok().flatten().map(|u| u.name),
        groups: gids
            .iter()
            .filter_map(|g| Group::from_gid(*g).ok().flatten().map(|g| g.name))
            .collect(),
        gids: gids.iter().map(|g| g.as_raw()).collect(),
        ..Default::default()
    }
}

fn policy_explain(
    file: &Path,
    service: &str,
    callers: &[String],
    command: &[String],
) -> anyhow::Result<()> {
    let policy = coral_policy::Policy::load(file).map_err(|e| Usage(e.to_string()))?;
    let caller = if callers.is_empty() {
        local_caller()
    } else {
        coral_policy::Caller::from_specs(callers).map_err(Usage)?
    };
    let program = resolve_program(&command[0])?;
    let args = command[1..].to_vec();
    let decision = policy.decide(&coral_policy::Request {
        caller: &caller,
        service,
        program: &program,
        args: &args,
    });
    out(&format!("{}\n", decision.explain()))
}

fn config_validate(file: Option<PathBuf>) -> anyhow::Result<()> {
    let path = match file.or_else(crate::config::default_path) {
        Some(p) => p,
        None => {
            return Err(Usage("no config file given and no config directory known".into()).into());
        }
    };
    let cfg = CoralConfig::load(&path).map_err(|e| Usage(e.to_string()))?;
    let mut parts = Vec::new();
    if cfg.colony.is_some() {
        parts.push("[colony]");
    }
    if cfg.agent.is_some() {
        parts.push("[agent]");
    }
    if cfg.ask.is_some() {
        parts.push("[ask]");
    }
    let what = if parts.is_empty() {
        "no tables, all defaults".to_string()
    } else {
        parts.join(" and ")
    };
    out(&format!("{}: ok ({what})\n", path.display()))
}

fn version(json: bool) -> anyhow::Result<()> {
    let duckdb = duckdb::Connection::open_in_memory()
        .and_then(|c| c.version())
        .unwrap_or_else(|_| "unknown".into());
    let features: Vec<&str> = Vec::new();
    let v = serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "git_commit": env!("CORAL_GIT_COMMIT"),
        "build_date": env!("CORAL_BUILD_DATE"),
        "features": features,
        "sqlite": rusqlite::version(),
        "duckdb": duckdb,
    });
    print_json_or(json, &v, |v| {
        format!(
            "coral {}\ncommit:   {}\nbuilt:    {}\nfeatures: {}\nstorage:  sqlite {}, duckdb {}\n",
            v["version"].as_str().unwrap_or(""),
            v["git_commit"].as_str().unwrap_or(""),
            v["build_date"].as_str().unwrap_or(""),
            if features.is_empty() {
                "none".to_string()
            } else {
                features.join(", ")
            },
            v["sqlite"].as_str().unwrap_or(""),
            v["duckdb"].as_str().unwrap_or(""),
        )
    })
}
