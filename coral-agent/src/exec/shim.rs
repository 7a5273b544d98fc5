//! The exec shim: the spawner runs commands through the `coral` binary,
//! `coral __coral-exec-shim MODE N PROCS... M READS... -- PROGRAM ARGV0 ARGS...`,
//! which writes its pid into each `cgroup.procs` file, confines itself with
//! landlock to the system paths plus READS (when MODE is `enforce`; see
//! `coral_sandbox::confine_command`) and then `execve`s PROGRAM (the environment
//! it got is passed on unchanged). So the command is in its cgroup and its
//! landlock domain before its first instruction, with no `unsafe` pre-exec
//! hook and no shell.

use coral_sandbox::Mode;
use std::ffi::OsString;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;

/// The first argument that selects the shim.
pub const SHIM_ARG: &str = "__coral-exec-shim";

/// The shim's arguments after [`SHIM_ARG`].
pub(crate) fn shim_args(
    mode: Mode,
    cgroup_procs: &[PathBuf],
    reads: &[PathBuf],
    program: &str,
    argv0: &str,
    args: &[String],
) -> Vec<OsString> {
    let mode = match mode {
        Mode::Off => "off",
        Mode::Log => "log",
        Mode::Enforce => "enforce",
    };
    let mut v: Vec<OsString> = vec![mode.into(), cgroup_procs.len().to_string().into()];
    v.extend(cgroup_procs.iter().map(|p| p.clone().into_os_string()));
    v.push(reads.len().to_string().into());
    v.extend(reads.iter().map(|p| p.clone().into_os_string()));
    v.push("--".into());
    v.push(program.into());
    v.push(argv0.into());
    v.extend(args.iter().map(OsString::from));
    v
}

/// Runs the shim with the arguments after [`SHIM_ARG`]; returns an exit
/// code only if it could not exec (126 cannot run, 127 not found).
pub fn shim_main(args: Vec<OsString>) -> i32 {
    let usage = || {
        eprintln!("coral: {SHIM_ARG} is internal to the agent");
        126
    };
    let mut it = args.into_iter();
    let Some(mode) = it
        .next()
        .and_then(|m| m.into_string().ok()?.parse::<Mode>().ok())
    else {
        return usage();
    };
    let counted = |it: &mut std::vec::IntoIter<OsString>| -> Option<Vec<OsString>> {
        let n = it.next()?.into_string().ok()?.parse::<usize>().ok()?;
        let v: Vec<OsString> = it.by_ref().take(n).collect();
        (v.len() == n).then_some(v)
    };
    let (Some(files), Some(reads)) = (counted(&mut it), counted(&mut it)) else {
        return usage();
    };
    if it.next().as_deref() != Some(std::ffi::OsStr::new("--")) {
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
    if mode == Mode::Enforce {
        let reads: Vec<PathBuf> = reads.into_iter().map(PathBuf::from).collect();
        if let Err(e) = coral_sandbox::confine_command(&reads) {
            eprintln!("coral: cannot confine the command: {e}");
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
