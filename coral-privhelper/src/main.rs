//! `coral-privhelper [--socket PATH] [--config PATH] [--state-dir PATH] [--sandbox MODE]`
//!
//! Thin main: process hygiene, arguments, config, listener, the target
//! process (`target`), its own landlock rules and seccomp filter
//! (`sandbox`), then `server::run`. See docs/privhelper.md for every
//! privileged step.
#![allow(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use coral_privhelper::{config, keys, sandbox, server, startup, target};

const USAGE: &str = "usage: coral-privhelper [--socket PATH] [--config PATH] [--state-dir PATH] [--sandbox enforce|log|off]";
const EX_USAGE: u8 = 64;
const EX_CONFIG: u8 = 78;

fn main() -> ExitCode {
    // Hygiene first, while the process has a single thread.
    let activation = match startup::sanitize() {
        Ok(a) => a,
        Err(e) => {
            server::log(&format!("error: {e}"));
            return ExitCode::from(1);
        }
    };
    let mut socket = PathBuf::from(server::DEFAULT_SOCKET);
    let mut config_path = PathBuf::from(config::DEFAULT_CONFIG);
    let mut state_dir = PathBuf::from(server::DEFAULT_STATE_DIR);
    let mut mode = PathBuf::from("enforce");
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        let slot = match a.to_str() {
            Some("--sandbox") => &mut mode,
            Some("--socket") => &mut socket,
            Some("--config") => &mut config_path,
            Some("--state-dir") => &mut state_dir,
            Some("-h" | "--help") => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            Some("-V" | "--version") => {
                println!("coral-privhelper {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            _ => {
                eprintln!("error: unexpected argument {a:?}\n{USAGE}");
                return ExitCode::from(EX_USAGE);
            }
        };
        match args.next() {
            Some(v) if !v.is_empty() => *slot = PathBuf::from(v),
            _ => {
                eprintln!("error: {} needs a value\n{USAGE}", a.to_string_lossy());
                return ExitCode::from(EX_USAGE);
            }
        }
    }
    let mut filter = sandbox::helper_policy();
    match mode.to_str() {
        Some("enforce") => {}
        Some("log") => filter.log_only = true,
        Some("off") => {}
        _ => {
            eprintln!("error: --sandbox must be enforce, log or off\n{USAGE}");
            return ExitCode::from(EX_USAGE);
        }
    }
    let allow = match config::load(&config_path) {
        Ok(a) => a,
        Err(e) => {
            server::log(&format!("error: {e}"));
            return ExitCode::from(EX_CONFIG);
        }
    };
    let listener = match activation {
        Some(l) => l,
        None => match server::bind(&socket) {
            Ok(l) => l,
            Err(e) => {
                server::log(&format!(
                    "error: cannot listen on {}: {e}",
                    socket.display()
                ));
                return ExitCode::from(1);
            }
        },
    };
    // What needs the privileges landlock and seccomp take away happens
    // first: the state dir, and the target process, forked while this
    // process has one thread.
    if let Err(e) = keys::ensure_state_dir(&state_dir) {
        server::log(&format!("error: {e}"));
        return ExitCode::from(1);
    }
    let off = mode.to_str() == Some("off");
    let confine = if off {
        target::Confine::No
    } else {
        let mut p = sandbox::target_policy();
        p.log_only = filter.log_only;
        target::Confine::Yes(p)
    };
    let target = match target::spawn(&listener, allow.clone(), confine) {
        Ok(t) => Arc::new(t),
        Err(e) => {
            server::log(&format!("error: cannot start the target process: {e}"));
            return ExitCode::from(1);
        }
    };
    server::log(&format!(
        "target process {} started{}",
        target.pid(),
        if off {
            " (unconfined: --sandbox off)"
        } else {
            ""
        }
    ));
    // Its own landlock rules and seccomp filter, on every thread, before the
    // first request (issue 16). The socket is bound: bind and listen are not
    // on the list.
    if off {
        server::log("sandbox: off (--sandbox off)");
    } else {
        if let Err(e) = sandbox::keep_capabilities(sandbox::MAIN_CAPS) {
            server::log(&format!("error: {e}"));
            return ExitCode::from(1);
        }
        if filter.log_only {
            server::log("sandbox: landlock skipped (--sandbox log)");
        } else {
            match sandbox::confine_main(&state_dir) {
                Ok(l) => server::log(&format!(
                    "sandbox: landlock {} enforced (ABI {:?} asked, kernel ABI {}, {} path rules)",
                    l.status,
                    sandbox::LANDLOCK_ABI,
                    sandbox::kernel_landlock_abi(),
                    l.rules
                )),
                Err(e) => {
                    server::log(&format!("error: {e}"));
                    return ExitCode::from(1);
                }
            }
        }
        match filter.apply() {
            Ok(()) => server::log(&format!(
                "sandbox: seccomp{}, {} calls allowed; target process: {} calls",
                if filter.log_only { " (log only)" } else { "" },
                filter.allowed.len(),
                sandbox::TARGET_ALLOWED.len() + sandbox::TARGET_ARCH_ONLY.len()
            )),
            Err(e) => {
                server::log(&format!("error: {e}"));
                return ExitCode::from(1);
            }
        }
    }
    let cfg = server::ServerConfig {
        allow,
        state_dir,
        idle_timeout: Duration::from_secs(30),
        target,
    };
    match server::run(listener, cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            server::log(&format!("error: {e}"));
            ExitCode::from(1)
        }
    }
}
