//! The `coral` command line: `main` and dispatch. The grammar is
//! `args.rs`; each command group has its module; the errors that carry exit
//! codes, and the codes, are `coral_proto::exit`.
//!
//! The code that runs daemons (the colony and agent crates, the agent's exec
//! helpers, landlock/seccomp) is only in `start.rs` and `daemon.rs`; the
//! other modules are clients of the daemons' sockets or work on this
//! machine, though some still borrow types from the daemon crates (`doctor`,
//! the config file's `[colony]`/`[agent]` tables, the renderer's span tree).

mod agent;
mod args;
mod ask;
mod client;
mod colony;
mod config;
#[cfg(feature = "daemons")]
mod daemon;
mod debug;
#[cfg(feature = "daemons")]
mod doctor;
mod exec;
mod mcp;
mod output;
mod policy;
mod query;
pub(crate) mod render;
#[cfg(feature = "daemons")]
mod start;
mod version;

use args::{AgentCmd, Cli, ColonyCmd, Command, ConfigCmd, DiscoveryCmd, PolicyCmd};
use clap::Parser;
use client::client;
use coral_proto::exit::EX_USAGE;
#[cfg(not(feature = "daemons"))]
use coral_proto::exit::Usage;

/// Runs the CLI and returns the process exit code.
pub fn main() -> i32 {
    #[cfg(feature = "daemons")]
    if let Some(code) = daemon::exec_helper_main() {
        return code;
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
    let (code, print) = coral_proto::exit::exit_code(e);
    if print {
        eprintln!("error: {}", render::esc(&format!("{e:#}")));
    }
    code
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    #[cfg(feature = "daemons")]
    match cli.command {
        Command::Colony(ColonyCmd::Start(args)) => return start::colony(args),
        Command::Colony(ColonyCmd::Stop) => return daemon::stop("colony"),
        Command::Discovery(DiscoveryCmd::Start { listen }) => return start::discovery(&listen),
        Command::Agent(AgentCmd::Start(args)) => return start::agent(args),
        Command::Agent(AgentCmd::Stop) => return daemon::stop("agent"),
        Command::SandboxCheck { role, action } => return daemon::sandbox_check(&role, &action),
        Command::Doctor(args) => return doctor::run(args),
        _ => {}
    }
    #[cfg(not(feature = "daemons"))]
    if let Some(what) = daemon_command(&cli.command) {
        return Err(Usage(format!(
            "'coral {what}' runs or checks a daemon, and this coral is the CLI alone \
             (built without the `daemons` feature, as on macOS): run it on the Linux host"
        ))
        .into());
    }
    match cli.command {
        Command::Colony(ColonyCmd::Start(_) | ColonyCmd::Stop)
        | Command::Discovery(DiscoveryCmd::Start { .. })
        | Command::Agent(AgentCmd::Start(_) | AgentCmd::Stop)
        | Command::SandboxCheck { .. }
        | Command::Doctor(_) => unreachable!("daemon commands are dispatched above"),
        Command::Colony(cmd) => colony::run(cmd),
        Command::Agent(AgentCmd::Status { json }) => agent::status(json),
        Command::Connect(args) => agent::connect(args),
        Command::Disconnect { name } => agent::disconnect(name),
        Command::Config(ConfigCmd::Validate { file }) => config::validate(file),
        Command::Ask(args) => ask::run(args),
        Command::Query(q) => client(query::query(q)),
        Command::Mcp(cmd) => mcp::run(cmd),
        Command::Exec(args) => client(exec::exec(args)),
        Command::Debug(cmd) => client(debug::run(cmd)),
        Command::Audit {
            service,
            since,
            limit,
            json,
        } => client(query::audit(service, since, limit, json)),
        Command::Top {
            interval,
            iterations,
            once,
            service,
            json,
        } => client(query::top(
            interval,
            if once { Some(1) } else { iterations },
            service,
            json,
        )),
        Command::Policy(PolicyCmd::Check { file }) => policy::check(file),
        Command::Policy(PolicyCmd::Explain {
            file,
            service,
            callers,
            command,
        }) => policy::explain(&file, &service, &callers, &command),
        Command::Version { json } => version::version(json),
    }
}

/// The daemon command a CLI-only build refuses, as the user typed it.
#[cfg(not(feature = "daemons"))]
fn daemon_command(c: &Command) -> Option<&'static str> {
    Some(match c {
        Command::Colony(ColonyCmd::Start(_)) => "colony start",
        Command::Colony(ColonyCmd::Stop) => "colony stop",
        Command::Discovery(DiscoveryCmd::Start { .. }) => "discovery start",
        Command::Agent(AgentCmd::Start(_)) => "agent start",
        Command::Agent(AgentCmd::Stop) => "agent stop",
        Command::SandboxCheck { .. } => "sandbox-check",
        Command::Doctor(_) => "doctor",
        _ => return None,
    })
}
