//! Running the colony and the agent as daemons: pid files held with an
//! exclusive `flock` for the daemon's lifetime (so a stale file is simply
//! taken over), detaching with a readiness report, and stopping.

use anyhow::{Context as _, anyhow};
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
