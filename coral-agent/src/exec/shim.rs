//! The exec shim: the agent runs commands through its own binary,
//! `coral __coral-exec-shim N PROCS... -- PROGRAM ARGV0 ARGS...`, which writes
//! its pid into each `cgroup.procs` file and then `execve`s PROGRAM (the
//! environment it got is passed on unchanged). So the command is in its
//! cgroup before its first instruction, with no `unsafe` pre-exec hook and
//! no shell.

use std::ffi::OsString;
use std::os::unix::process::CommandExt as _;

/// The first argument that selects the shim.
pub const SHIM_ARG: &str = "__coral-exec-shim";

/// Runs the shim with the arguments after [`SHIM_ARG`]; returns an exit
/// code only if it could not exec (126 cannot run, 127 not found).
pub fn shim_main(args: Vec<OsString>) -> i32 {
    let usage = || {
        eprintln!("coral: {SHIM_ARG} is internal to the agent");
        126
    };
    let mut it = args.into_iter();
    let Some(n) = it
        .next()
        .and_then(|n| n.into_string().ok()?.parse::<usize>().ok())
    else {
        return usage();
    };
    let files: Vec<OsString> = it.by_ref().take(n).collect();
    if files.len() != n || it.next().as_deref() != Some(std::ffi::OsStr::new("--")) {
        return usage();
    }
    let (Some(program), Some(argv0)) = (it.next(), it.next()) else {
        return usage();
    };
    let me = std::process::id().to_string();
    for f in &files {
        if let Err(e) = std::fs::write(f, &me) {
            eprintln!(
                "coral: cannot join cgroup {}: {e}",
                std::path::Path::new(f).display()
            );
            return 126;
        }
    }
    let err = std::process::Command::new(&program)
        .arg0(argv0)
        .args(it)
        .exec();
    eprintln!(
        "coral: cannot run {}: {err}",
        std::path::Path::new(&program).display()
    );
    if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    }
}
