//! The command line's grammar: every clap type of `coral`, apart from what
//! the commands do (the modules beside this one). `--help` text lives here.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

const ABOUT: &str = "Coral: debug distributed apps. A colony coordinates one agent per host; \
agents watch your services and report to the colony.";

#[derive(Parser)]
#[command(name = "coral", version, about = ABOUT, propagate_version = true, after_help = "\
Quick start (one machine):
  coral colony start --daemon
  coral agent start --daemon
  coral connect frontend:3000 api:8080:/health
  coral colony status")]
pub struct Cli {
    #[command(subcommand)]
    pub(super) command: Command,
}

#[derive(Subcommand)]
pub enum Command {
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
    Debug(DebugCmd),
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
    Mcp(McpCmd),
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
    Ask(AskArgs),
    /// Check configuration files.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Check this machine: kernel features, the helper's socket and group, ports, mesh subnet.
    #[command(after_help = "Examples:\n  coral doctor\n  coral doctor --json")]
    Doctor(DoctorArgs),
    /// Show version, git commit, build date and features.
    #[command(after_help = "Examples:\n  coral version\n  coral version --json")]
    Version {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum ColonyCmd {
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
pub enum TokenCmd {
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
pub enum DiscoveryCmd {
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
pub struct ColonyStart {
    /// Detach, write a pid file and a log file; return once the colony serves.
    #[arg(short, long)]
    pub(super) daemon: bool,
    /// Port agents connect to (default 9000; 0 picks a free one).
    #[arg(long)]
    pub(super) port: Option<u16>,
    /// The colony's id (fixed on first start; generated when omitted).
    #[arg(long)]
    pub(super) colony_id: Option<String>,
    /// Config file (default $XDG_CONFIG_HOME/coral/config.toml).
    #[arg(long)]
    pub(super) config: Option<PathBuf>,
    /// Confinement: enforce (landlock + seccomp, the default), log (log
    /// syscall violations instead of killing; no landlock) or off. For debugging.
    #[arg(
        long,
        env = "CORAL_SANDBOX",
        default_value = "enforce",
        value_name = "MODE"
    )]
    pub(super) sandbox: String,
}

#[derive(Subcommand)]
pub enum AgentCmd {
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
pub struct AgentStart {
    /// Config file (default $XDG_CONFIG_HOME/coral/config.toml).
    #[arg(long)]
    pub(super) config: Option<PathBuf>,
    /// Join only the colony with this id.
    #[arg(long)]
    pub(super) colony_id: Option<String>,
    /// Colony address host:port, plain TCP (development: a colony with the mesh off).
    #[arg(long)]
    pub(super) colony: Option<String>,
    /// Join a colony with a token from 'coral colony token create'.
    #[arg(long, value_name = "TOKEN")]
    pub(super) join: Option<String>,
    /// A discovery registry host:port to find the colony if it moved.
    #[arg(long)]
    pub(super) discovery: Option<String>,
    /// Detach, write a pid file and a log file; return once the agent serves.
    #[arg(short, long)]
    pub(super) daemon: bool,
    /// Confinement: enforce (landlock + seccomp, the default), log (log
    /// syscall violations instead of killing; no landlock) or off. For debugging.
    #[arg(
        long,
        env = "CORAL_SANDBOX",
        default_value = "enforce",
        value_name = "MODE"
    )]
    pub(super) sandbox: String,
}

#[derive(Args)]
pub struct ConnectArgs {
    /// Services as name:port[:health][:type], or one NAME with --port.
    #[arg(required = true, value_name = "SPEC")]
    pub(super) specs: Vec<String>,
    /// Port of the single service NAME.
    #[arg(long)]
    pub(super) port: Option<u32>,
    /// Health path of the single service NAME (HTTP GET).
    #[arg(long, requires = "port")]
    pub(super) health: Option<String>,
    /// Type of the single service NAME: http, grpc or tcp.
    #[arg(long = "type", requires = "port", value_parser = ["http", "grpc", "tcp"])]
    pub(super) kind: Option<String>,
}

#[derive(Args)]
pub struct ExecArgs {
    /// The service whose host runs the command.
    pub(super) service: String,
    /// The command line, e.g. "ss -tnp" (split like a shell would, never run by one).
    pub(super) command: String,
    /// Stop the command after this long (at most the rule's timeout), e.g. 10s.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(super) timeout: Option<Duration>,
    /// The agent (name or id), when several agents host the service.
    #[arg(long)]
    pub(super) agent: Option<String>,
    /// Print one JSON document (output included) instead of streaming.
    #[arg(long)]
    pub(super) json: bool,
}

#[derive(Subcommand)]
pub enum QueryCmd {
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
pub enum PolicyCmd {
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
pub enum ConfigCmd {
    /// Parse and check a config file; unknown keys are errors.
    #[command(
        after_help = "Examples:\n  coral config validate\n  coral config validate /etc/coral/config.toml"
    )]
    Validate {
        /// File to check (default $XDG_CONFIG_HOME/coral/config.toml).
        file: Option<PathBuf>,
    },
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AskArgs {
    #[command(subcommand)]
    pub(super) cmd: Option<AskCmd>,
    /// The question, e.g. "What's wrong with the API?".
    #[arg(value_name = "QUESTION")]
    pub(super) question: Vec<String>,
    /// provider:model-id, e.g. anthropic:claude-sonnet-4-5, openai:gpt-4.1,
    /// ollama:qwen3:8b (default: ask.model from 'coral ask config').
    #[arg(long)]
    pub(super) model: Option<String>,
    /// Most model rounds before giving up (default 8, or ask.max_steps).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub(super) max_steps: Option<u32>,
    /// Print {answer, evidence, usage} as JSON once done, instead of streaming.
    #[arg(long)]
    pub(super) json: bool,
    /// Wait for each whole response instead of streaming it (SSE).
    #[arg(long)]
    pub(super) no_stream: bool,
    /// Test/dev aid: serve tools from a JSON file instead of the colony.
    #[arg(long, hide = true, env = "CORAL_ASK_TOOLS_FILE", value_name = "FILE")]
    pub(super) tools_file: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum AskCmd {
    /// Choose the provider, model and API key (interactive on a terminal).
    #[command(after_help = "\
Examples:
  coral ask config                                   # prompts, on a terminal
  coral ask config --model anthropic:claude-sonnet-4-5 --api-key-env ANTHROPIC_API_KEY
  coral ask config --provider openai --model gpt-4.1 --api-key-env OPENAI_API_KEY
  pass show openai | coral ask config --provider openai --api-key-stdin
  coral ask config --model ollama:qwen3:8b --base-url http://gpu-box:11434/v1
  coral ask config --show

Settings go to the [ask] table of $XDG_CONFIG_HOME/coral/config.toml. The
config holds only a reference to the key: env:NAME (read from the environment
at each ask) or 'stored' ($XDG_CONFIG_HOME/coral/keys/<provider>.key, mode
0600). Keys are never printed.")]
    Config(ConfigArgs),
    /// Tokens and estimated cost per day and model.
    #[command(after_help = "\
Examples:
  coral ask cost
  coral ask cost --since 30d --json

Costs are estimates from list prices per million tokens; override a price in
config.toml:
  [ask.prices.\"openai:gpt-4.1\"]
  input = 2.0
  output = 8.0")]
    Cost {
        /// How far back, e.g. 24h, 7d, 30d.
        #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
        since: Duration,
        /// Print JSON (a stable schema) instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct ConfigArgs {
    /// anthropic, openai or ollama (the provider the key and base URL are for).
    #[arg(long, value_parser = ["anthropic", "openai", "ollama"])]
    pub(super) provider: Option<String>,
    /// The default model: provider:model-id, or model-id with --provider.
    #[arg(long)]
    pub(super) model: Option<String>,
    /// Read the key from this environment variable at each ask (stores env:NAME).
    #[arg(long, value_name = "NAME", conflicts_with = "api_key_stdin")]
    pub(super) api_key_env: Option<String>,
    /// Read the key from stdin and store it in a 0600 file.
    #[arg(long)]
    pub(super) api_key_stdin: bool,
    /// The provider's API base URL (OpenAI/Ollama: ending in /v1).
    #[arg(long, value_name = "URL")]
    pub(super) base_url: Option<String>,
    /// Show the settings (key references only, never keys).
    #[arg(long, conflicts_with_all = ["provider", "model", "api_key_env", "api_key_stdin", "base_url"])]
    pub(super) show: bool,
    /// With --show: print JSON.
    #[arg(long, requires = "show")]
    pub(super) json: bool,
}

#[derive(Debug, Subcommand)]
pub enum DebugCmd {
    /// Attach uprobes to functions of a service's process for a while.
    #[command(after_help = "\
Examples:
  coral debug attach api --function handleCheckout --duration 60s --args
  coral debug attach api --function main.Fib --function main.Nap

Go (1.17 or newer, with or without DWARF, PIE or not) gets a probe at the
entry and at every return instruction (never a uretprobe); C, C++ and Rust an
entry probe and a uretprobe. The session ends by itself after --duration
(at most 10m); its probes are then removed from the kernel.")]
    Attach(AttachArgs),
    /// Show the calls the probes saw: arguments, results, durations.
    Logs {
        service: String,
        /// Only this session.
        #[arg(long)]
        session: Option<String>,
        /// Keep printing new calls until the sessions end (or Ctrl-C).
        #[arg(long)]
        follow: bool,
        /// Most calls per read.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
        /// Print JSON lines (one call each; a stable schema).
        #[arg(long)]
        json: bool,
    },
    /// Follow the requests on a path, each with the probed functions' calls
    /// on the goroutine that served it (Go net/http), as a call tree.
    #[command(after_help = "\
Examples:
  coral debug trace api --path /api/checkout --duration 5m
  coral debug trace api --path '/api/*' --function lookupStock --json

The requests come from the eBPF HTTP capture (any runtime). For a Go net/http
server the trace also probes net/http.serverHandler.ServeHTTP, to find the
goroutine serving each request, and the functions named with --function
(default: those of package main whose name matches a word of the path); the
host's [[debug]] policy must allow them. Ctrl-C ends the trace early.")]
    Trace {
        service: String,
        /// The request path; a trailing '*' matches a prefix.
        #[arg(long)]
        path: String,
        /// A function to probe (repeat for several).
        #[arg(long = "function", short = 'f')]
        functions: Vec<String>,
        /// How long to follow (at most 10m).
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Print JSON lines (one request each).
        #[arg(long)]
        json: bool,
    },
    /// End sessions now: their probes are removed.
    Detach {
        service: String,
        /// Every session on the service.
        #[arg(long, conflicts_with = "session")]
        all: bool,
        #[arg(long)]
        session: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Active and recently ended sessions on a service.
    List {
        service: String,
        #[arg(long)]
        json: bool,
    },
    /// The functions that can be probed in a service's binary.
    Functions {
        service: String,
        /// Only names containing this.
        pattern: Option<String>,
        #[arg(long, default_value_t = 200)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct AttachArgs {
    pub(super) service: String,
    /// A function: its full name or its last element (repeat for several).
    #[arg(long = "function", short = 'f', required = true)]
    pub(super) functions: Vec<String>,
    /// How long the probes stay (at most 10m).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub(super) duration: Duration,
    /// Capture argument and result values (they can hold secrets).
    #[arg(long)]
    pub(super) args: bool,
    /// Capture each call's stack at its entry (up to 32 frames; needs frame
    /// pointers, which Go always has).
    #[arg(long)]
    pub(super) stack: bool,
    #[arg(long)]
    pub(super) json: bool,
}

#[derive(Args)]
pub struct DoctorArgs {
    /// Print JSON (a stable schema) instead of one line per check.
    #[arg(long)]
    pub(super) json: bool,
    /// Config file (default $XDG_CONFIG_HOME/coral/config.toml).
    #[arg(long)]
    pub(super) config: Option<PathBuf>,
}

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
