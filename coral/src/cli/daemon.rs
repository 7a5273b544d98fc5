//! Running the colony, the agent and the discovery registry as daemons:
//! start-up (umask and logging, the runtime, shutdown signals, confinement
//! with landlock + seccomp, the control socket), pid files held with an
//! exclusive `flock` for the daemon's lifetime (so a stale file is simply
//! taken over), detaching with a readiness report, and `coral ... stop`.
//! Linux-only daemon code.

use super::client::{client, ctx, local_stream};
use super::output::out;
use anyhow::{Context as _, anyhow};
use coral_agent::AgentConfig;
use coral_colony::ColonyConfig;
use coral_proto::exit::Usage;
use coral_proto::services::{AgentControlClient, ColonyControlClient};
use coral_sandbox::{self as sandbox, Mode, Role};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Set in the environment of a detached child: it must report readiness on
/// stdout and start a new session.
pub const CHILD_ENV: &str = "CORAL_DAEMON_CHILD";
const READY: &str = "ready ";

pub fn is_child() -> bool {
    std::env::var_os(CHILD_ENV).is_some_and(|v| v == "1")
}

/// A pid file locked by this process until dropped (then removed).
pub struct PidFile {
    path: PathBuf,
    _lock: Flock<File>,
}

#[derive(Debug, thiserror::Error)]
pub enum PidError {
    #[error("already running (pid {0})")]
    Running(i32),
    #[error("cannot use pid file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl PidFile {
    /// Takes the pid file at `path`. Returns the stale pid it replaced, if
    /// the file was left behind by a process that is gone.
    pub fn acquire(path: &Path) -> Result<(PidFile, Option<i32>), PidError> {
        let io = |source: std::io::Error| PidError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((mut file, Errno::EWOULDBLOCK)) => {
                return Err(PidError::Running(read_pid(&mut file).unwrap_or(0)));
            }
            Err((_, e)) => return Err(io(e.into())),
        };
        let stale = read_pid(&mut lock);
        lock.set_len(0).map_err(io)?;
        lock.rewind().map_err(io)?;
        writeln!(lock, "{}", std::process::id()).map_err(io)?;
        lock.sync_all().map_err(io)?;
        Ok((
            PidFile {
                path: path.to_path_buf(),
                _lock: lock,
            },
            stale,
        ))
    }

    /// The pid of the live process holding `path`, if any.
    pub fn holder(path: &Path) -> Option<i32> {
        let file = File::open(path).ok()?;
        match Flock::lock(file, FlockArg::LockSharedNonblock) {
            Ok(_) => None, // nobody holds it: stale or absent
            Err((mut file, _)) => read_pid(&mut file),
        }
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn read_pid(file: &mut File) -> Option<i32> {
    let mut s = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}

pub fn alive(pid: i32) -> bool {
    pid > 0 && kill(Pid::from_raw(pid), None).is_ok()
}

/// Waits until `pid` is gone; false on timeout.
pub fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while alive(pid) && !is_zombie(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')))
        .unwrap_or(false)
}

pub fn terminate(pid: i32) -> anyhow::Result<()> {
    kill(Pid::from_raw(pid), Signal::SIGTERM).with_context(|| format!("cannot signal pid {pid}"))
}

/// In a detached child: leave the parent's session and terminal.
pub fn detach_child() {
    if let Err(e) = nix::unistd::setsid() {
        tracing::warn!(error = %e, "setsid failed");
    }
}

/// In a detached child: tells the waiting parent that the daemon serves.
pub fn report_ready(detail: &serde_json::Value) {
    if is_child() {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{READY}{detail}");
        let _ = out.flush();
    }
}

/// Re-runs this command detached (same arguments minus `--daemon`), with
/// stderr appended to `log`, and waits until it reports ready. Returns what
/// it reported.
pub fn spawn_detached(log: &Path, timeout: Duration) -> anyhow::Result<serde_json::Value> {
    let exe = std::env::current_exe().context("cannot find the coral executable")?;
    let args: Vec<OsString> = std::env::args_os()
        .skip(1)
        .filter(|a| a != "--daemon" && a != "-d")
        .collect();
    let log_file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(log)
        .with_context(|| format!("cannot open log file {}", log.display()))?;
    let start_len = log_file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut child = Command::new(exe)
        .args(&args)
        .env(CHILD_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file)
        .spawn()
        .context("cannot start the daemon process")?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            match line {
                Ok(l) if l.starts_with(READY) => {
                    let _ = tx.send(Some(l[READY.len()..].to_string()));
                    return;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        let _ = tx.send(None);
    });
    match rx.recv_timeout(timeout) {
        Ok(Some(detail)) => Ok(serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null)),
        Ok(None) => {
            let status = child.wait().ok();
            let why = last_error_line(log, start_len).unwrap_or_else(|| match status {
                Some(s) => format!("it exited with {s}"),
                None => "it exited".into(),
            });
            Err(anyhow!("{why} (log: {})", log.display()))
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(anyhow!(
                "it did not report ready within {timeout:?} and was stopped (log: {})",
                log.display()
            ))
        }
    }
}

/// The last `error:` line the child wrote to the log since `from`.
fn last_error_line(log: &Path, from: u64) -> Option<String> {
    let text = std::fs::read(log).ok()?;
    let text = String::from_utf8_lossy(&text[(from as usize).min(text.len())..]).to_string();
    text.lines()
        .rev()
        .find_map(|l| l.strip_prefix("error: ").map(str::to_string))
}

/// The agent's exec helpers, which are this binary run again: the shim
/// (cgroup join, then execve; `coral_agent::exec::shim_main`) and the exec
/// spawner (issue 16: it runs commands so the agent never does;
/// `coral_agent::exec::spawner`). Their exit code, or None for any other
/// command line.
pub(super) fn exec_helper_main() -> Option<i32> {
    let first = std::env::args_os().nth(1)?;
    let rest = || std::env::args_os().skip(2).collect();
    if first == coral_agent::exec::SHIM_ARG {
        Some(coral_agent::exec::shim_main(rest()))
    } else if first == coral_agent::exec::SPAWNER_ARG {
        Some(coral_agent::exec::spawner_main(rest()))
    } else {
        None
    }
}

/// Daemon start: files the daemon creates are private to its user, and
/// logs go to stderr (the log file when detached); `CORAL_LOG` sets the filter.
pub(super) fn init_daemon() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    if is_child() {
        detach_child();
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
pub(super) fn detach(role: &str, state_dir: &Path) -> anyhow::Result<(serde_json::Value, PathBuf)> {
    coral_proto::local::ensure_private_dir(state_dir)?;
    let log = state_dir.join(format!("{role}.log"));
    let ready = spawn_detached(&log, Duration::from_secs(60))
        .with_context(|| format!("the {role} did not start"))?;
    Ok((ready, log))
}

pub(super) fn daemon_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("coral-worker")
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Resolves on SIGINT or SIGTERM.
pub(super) async fn shutdown_signal() {
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
pub(super) fn claim(role: &str) -> anyhow::Result<(PidFile, PathBuf)> {
    let dir = coral_proto::local::runtime_dir()?;
    let pid_path = dir.join(format!("{role}.pid"));
    let (pid, stale) = match PidFile::acquire(&pid_path) {
        Ok(x) => x,
        Err(PidError::Running(pid)) => {
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

pub(super) fn bind_control(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let l = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Puts this daemon in its sandbox (see `coral_sandbox`): before
/// its stores open and its runtime starts, so every thread is confined.
pub(super) fn confine(
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

pub(super) fn sandbox_check(role: &str, action: &str) -> anyhow::Result<()> {
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

pub(super) fn stop(role: &str) -> anyhow::Result<()> {
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
        None => match PidFile::holder(&pid_path) {
            // It holds its pid file but does not answer: signal it.
            Some(pid) => {
                terminate(pid)?;
                pid
            }
            None => {
                let _ = std::fs::remove_file(&pid_path);
                return out(&format!("The {role} is not running\n"));
            }
        },
    };
    if wait_gone(pid, Duration::from_secs(15)) {
        out(&format!("Stopped the {role} (pid {pid})\n"))
    } else {
        Err(anyhow!(
            "the {role} (pid {pid}) is still running after 15s; 'kill {pid}' stops it"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_file_is_exclusive_and_stale_files_are_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.pid");
        std::fs::write(&path, "999999\n").unwrap();
        let (held, stale) = PidFile::acquire(&path).unwrap();
        assert_eq!(stale, Some(999999));
        assert_eq!(PidFile::holder(&path), Some(std::process::id() as i32));
        // flock is per open file description: a second open is refused.
        assert!(
            matches!(PidFile::acquire(&path), Err(PidError::Running(p)) if p == std::process::id() as i32)
        );
        drop(held);
        assert!(!path.exists());
        assert_eq!(PidFile::holder(&path), None);
    }
}
