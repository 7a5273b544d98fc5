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
mod daemon;
mod debug;
mod doctor;
mod exec;
mod mcp;
mod output;
mod policy;
mod query;
pub(crate) mod render;
mod start;
mod version;

use args::{AgentCmd, Cli, ColonyCmd, Command, ConfigCmd, DiscoveryCmd, PolicyCmd};
use clap::Parser;
use client::client;
use coral_proto::exit::EX_USAGE;

/// Runs the CLI and returns the process exit code.
pub fn main() -> i32 {
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
    match cli.command {
        Command::Colony(ColonyCmd::Start(args)) => start::colony(args),
        Command::Colony(ColonyCmd::Stop) => daemon::stop("colony"),
        Command::Colony(cmd) => colony::run(cmd),
        Command::Discovery(DiscoveryCmd::Start { listen }) => start::discovery(&listen),
        Command::Agent(AgentCmd::Start(args)) => start::agent(args),
        Command::Agent(AgentCmd::Status { json }) => agent::status(json),
        Command::Agent(AgentCmd::Stop) => daemon::stop("agent"),
        Command::Connect(args) => agent::connect(args),
        Command::Disconnect { name } => agent::disconnect(name),
        Command::Config(ConfigCmd::Validate { file }) => config::validate(file),
        Command::Ask(args) => ask::run(args),
        Command::Query(q) => client(query::query(q)),
        Command::Mcp(cmd) => mcp::run(cmd),
        Command::SandboxCheck { role, action } => daemon::sandbox_check(&role, &action),
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
        Command::Doctor(args) => doctor::run(args),
    }
}
