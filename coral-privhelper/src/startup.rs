//! Process hygiene at start, before anything else runs: take a systemd
//! activation socket if there is one, close every other inherited fd above
//! 2, clear the environment, `umask 077`.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::libc;
use nix::sys::stat::{Mode, umask};
use nix::unistd::getpid;

const SD_LISTEN_FDS_START: RawFd = 3;

/// Reads `LISTEN_PID`/`LISTEN_FDS`: `true` when exactly one socket was
/// passed to this process.
fn activation_requested(listen_pid: Option<&str>, listen_fds: Option<&str>) -> bool {
    let pid_ok = listen_pid
        .and_then(|p| p.parse::<i32>().ok())
        .is_some_and(|p| p == getpid().as_raw());
    pid_ok && listen_fds == Some("1")
}

/// Must be called first in `main`, while the process has one thread.
/// Returns the activation listener, if any.
pub fn sanitize() -> Result<Option<UnixListener>, String> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let activated = activation_requested(pid.as_deref(), fds.as_deref());
    let for_us = pid
        .as_deref()
        .and_then(|p| p.parse::<i32>().ok())
        .is_some_and(|p| p == getpid().as_raw());
    if for_us && !activated {
        return Err(format!(
            "socket activation passed {} sockets; exactly 1 is supported",
            fds.as_deref().unwrap_or("no")
        ));
    }

    // Make sure 0, 1, 2 are open so no later file lands on them.
    for fd in 0..=2 {
        // SAFETY: F_GETFD only queries the fd table.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            let null = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
                .map_err(|e| format!("cannot open /dev/null: {e}"))?;
            // Leak it: it now fills the lowest free slot, i.e. fd.
            std::mem::forget(null);
        }
    }

    let first = if activated { 4 } else { 3 };
    // SAFETY: no Rust object owns an fd above 2 this early in main (the
    // caller guarantees this runs first); close_range only changes the fd table.
    let r = unsafe { libc::close_range(first, libc::c_uint::MAX, 0) };
    if r != 0 {
        // Old kernel: close one by one up to the fd limit.
        let max = nix::unistd::sysconf(nix::unistd::SysconfVar::OPEN_MAX)
            .ok()
            .flatten()
            .unwrap_or(1024)
            .min(1 << 20) as RawFd;
        for fd in first as RawFd..max {
            // SAFETY: as above; EBADF for fds that are not open is ignored.
            unsafe { libc::close(fd) };
        }
    }

    // SAFETY: the process has one thread here, so nothing reads the
    // environment concurrently.
    unsafe { nix::env::clearenv() }.map_err(|e| format!("cannot clear the environment: {e}"))?;
    umask(Mode::from_bits_truncate(0o077));

    if !activated {
        return Ok(None);
    }
    // SAFETY: systemd passed fd 3 to this process (LISTEN_PID matched) and
    // nothing else in the process owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(SD_LISTEN_FDS_START) };
    fcntl(&fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
        .map_err(|e| format!("activation fd 3: {e}"))?;
    let is_listening_unix =
        nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::AcceptConn).unwrap_or(false)
            && nix::sys::socket::getsockname::<nix::sys::socket::UnixAddr>(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
            )
            .is_ok_and(|a| a.path().is_some());
    if !is_listening_unix {
        return Err("activation fd 3 is not a listening Unix socket".into());
    }
    Ok(Some(UnixListener::from(fd)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activation_needs_our_pid_and_one_fd() {
        let me = getpid().as_raw().to_string();
        assert!(activation_requested(Some(&me), Some("1")));
        assert!(!activation_requested(Some("1"), Some("1")));
        assert!(!activation_requested(Some(&me), Some("2")));
        assert!(!activation_requested(None, Some("1")));
        assert!(!activation_requested(Some(&me), None));
    }
}
