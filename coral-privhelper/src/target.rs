//! The target process (issue 16): the helper's one part without landlock,
//! for the steps that need ptrace-class access to other processes.
//!
//! A landlock domain forbids ptrace-class access to every process outside
//! it, and `OpenTarget` and `UprobeAttach` need exactly that
//! (`/proc/PID/maps`, `/proc/PID/exe`, `/proc/PID/fd`, and
//! `perf_event_open` filtered on the target's pid). So the helper forks this
//! process at start-up, after `startup::sanitize` and before it confines
//! itself, and asks it over a `SOCK_SEQPACKET` socketpair (fds back with
//! `SCM_RIGHTS`). It does only four things ([`Request`]):
//!
//! 1. `CheckUser`: is a uid in the config's allowed set (the group lookups
//!    read `/etc/group`, which the helper's landlock set cannot name: the
//!    file is replaced, not rewritten, when a user is added to a group);
//! 2. `OpenTarget`: find a process (by pid, or the listener of a TCP port)
//!    of the caller and open its executable ([`crate::uprobe::open_target`]);
//! 3. `OpenBinary`: open a binary of the caller's process and check that
//!    this very file is mapped executable in it
//!    ([`crate::uprobe::open_binary`]);
//! 4. `PerfUprobe`: open the uprobe perf event on (binary fd, offset, pid)
//!    ([`crate::uprobe::perf_uprobe`]) after checking the binary and the
//!    pid again.
//!
//! The helper's main process keeps the decode of the binary (elfcode) and
//! the BPF load and link. The target process trusts nothing it receives: a
//! compromised main process could send anything. Requests have a fixed
//! layout and a bounded size; each request about a process carries the
//! caller's connection, and the target process reads the caller's uid from
//! it itself (`SO_PEERCRED`), after checking that it is a connection
//! accepted on the helper's socket and that its peer is not the helper.
//! The pid, port and uid rules are then checked here, where they are
//! enforced.
//!
//! It runs single-threaded, keeps only the capabilities [`KEEP_CAPS`] lists,
//! and is under its own seccomp list
//! ([`crate::sandbox::target_policy`]): no `bpf`, no `ioctl`, no writes to
//! any file. It dies with the helper (`PR_SET_PDEATHSIG`), and exits when
//! the helper closes its end. If it dies first, the helper answers
//! `OpenTarget` and `UprobeAttach` (and group-based caller checks) with an
//! error and keeps serving the rest; it does not start another: a fork is
//! not on the confined helper's list.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::socket::{
    AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr, getsockname, getsockopt, socketpair,
    sockopt,
};

use crate::bpf::BpfError;
use crate::config::{Allow, Verdict};
use crate::protocol::MAX_PATH;
use crate::sandbox::{self, Policy};
use crate::uprobe;
use crate::wire;
use caps::Capability;

/// Fixed part of a request: op, uid, pid, port, offset, kind, path length.
const REQUEST_HEADER: usize = 1 + 4 + 4 + 2 + 8 + 1 + 2;
/// The longest request.
pub const MAX_REQUEST: usize = REQUEST_HEADER + MAX_PATH;
/// The longest text in a reply (a path, a group name, an error).
pub const MAX_TEXT: usize = 512;
/// Fixed part of a reply: status, number, text length.
const REPLY_HEADER: usize = 1 + 4 + 2;
/// The longest reply.
pub const MAX_REPLY: usize = REPLY_HEADER + MAX_TEXT;
/// At most this many fds ride with a message.
const MAX_FDS: usize = 2;
/// How long the helper waits for an answer before it gives up on the
/// target process.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The capabilities the target process keeps; every other one is dropped
/// from its effective, permitted, inheritable, ambient and bounding sets.
pub const KEEP_CAPS: &[(Capability, &str)] = &[
    (
        Capability::CAP_SYS_PTRACE,
        "/proc/PID/maps, /proc/PID/exe and /proc/PID/fd of another user's process, and perf_event_open on its pid (ptrace access mode checks; measured: without it, /proc/PID/exe of a uid 65534 process is EACCES)",
    ),
    (
        Capability::CAP_DAC_READ_SEARCH,
        "open a binary (and search the directories above it) whatever its mode: a user's program under a 0700 home",
    ),
    (
        Capability::CAP_SYS_ADMIN,
        "perf_event_open of the uprobe PMU: measured on Linux 6.18, CAP_PERFMON alone gets EACCES (its other uses are calls the seccomp list does not have)",
    ),
];

/// A request to the target process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Is `uid` in the config's allowed set? No fd.
    CheckUser { uid: u32 },
    /// The caller's process `pid` (or the listener on `port` when `pid` is
    /// 0): its pid, its executable's path and the executable, opened. Fd:
    /// the caller's connection.
    OpenTarget { pid: u32, port: u16 },
    /// `path`, opened, if the caller's process `pid` maps it executable.
    /// Fd: the caller's connection.
    OpenBinary { pid: u32, path: String },
    /// The uprobe perf event at `offset` in the binary, filtered to the
    /// caller's process `pid`. Fds: the caller's connection, the binary.
    PerfUprobe { pid: u32, offset: u64, kind: u8 },
}

impl Request {
    fn op(&self) -> u8 {
        match self {
            Request::CheckUser { .. } => 1,
            Request::OpenTarget { .. } => 2,
            Request::OpenBinary { .. } => 3,
            Request::PerfUprobe { .. } => 4,
        }
    }

    /// The fds that must come with it.
    pub fn fds(&self) -> usize {
        match self {
            Request::CheckUser { .. } => 0,
            Request::OpenTarget { .. } | Request::OpenBinary { .. } => 1,
            Request::PerfUprobe { .. } => 2,
        }
    }

    /// Fixed layout, little-endian: op u8, uid u32, pid u32, port u16,
    /// offset u64, kind u8, path length u16, path.
    pub fn encode(&self) -> Vec<u8> {
        let (mut uid, mut pid, mut port, mut offset, mut kind, mut path) =
            (0u32, 0u32, 0u16, 0u64, 0u8, "");
        match self {
            Request::CheckUser { uid: u } => uid = *u,
            Request::OpenTarget { pid: p, port: q } => (pid, port) = (*p, *q),
            Request::OpenBinary { pid: p, path: s } => (pid, path) = (*p, s),
            Request::PerfUprobe {
                pid: p,
                offset: o,
                kind: k,
            } => (pid, offset, kind) = (*p, *o, *k),
        }
        let mut b = Vec::with_capacity(REQUEST_HEADER + path.len());
        b.push(self.op());
        b.extend_from_slice(&uid.to_le_bytes());
        b.extend_from_slice(&pid.to_le_bytes());
        b.extend_from_slice(&port.to_le_bytes());
        b.extend_from_slice(&offset.to_le_bytes());
        b.push(kind);
        b.extend_from_slice(&(path.len() as u16).to_le_bytes());
        b.extend_from_slice(path.as_bytes());
        b
    }

    /// Decodes and checks one request; every field outside its range is an
    /// error.
    pub fn decode(b: &[u8]) -> Result<Request, String> {
        if b.len() < REQUEST_HEADER || b.len() > MAX_REQUEST {
            return Err(format!(
                "request of {} bytes (expected {REQUEST_HEADER} to {MAX_REQUEST})",
                b.len()
            ));
        }
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let uid = u32_at(1);
        let pid = u32_at(5);
        let port = u16::from_le_bytes([b[9], b[10]]);
        let offset = u64::from_le_bytes(b[11..19].try_into().expect("8 bytes"));
        let kind = b[19];
        let len = usize::from(u16::from_le_bytes([b[20], b[21]]));
        let path = &b[REQUEST_HEADER..];
        if path.len() != len {
            return Err(format!(
                "path length {len} does not match the {} bytes sent",
                path.len()
            ));
        }
        let unused = |ok: bool| {
            if ok {
                Ok(())
            } else {
                Err("a field this request does not use is set".to_string())
            }
        };
        match b[0] {
            1 => {
                unused(pid == 0 && port == 0 && offset == 0 && kind == 0 && len == 0)?;
                Ok(Request::CheckUser { uid })
            }
            2 => {
                unused(uid == 0 && offset == 0 && kind == 0 && len == 0)?;
                if pid == 0 && port == 0 {
                    return Err("neither a pid nor a port".into());
                }
                Ok(Request::OpenTarget { pid, port })
            }
            3 => {
                unused(uid == 0 && port == 0 && offset == 0 && kind == 0)?;
                let path = std::str::from_utf8(path)
                    .ok()
                    .filter(|p| p.starts_with('/') && !p.contains('\0'))
                    .ok_or("the path must be absolute UTF-8 without NUL")?;
                if pid == 0 {
                    return Err("pid 0".into());
                }
                Ok(Request::OpenBinary {
                    pid,
                    path: path.to_owned(),
                })
            }
            4 => {
                unused(uid == 0 && port == 0 && len == 0)?;
                if pid == 0 {
                    return Err("pid 0".into());
                }
                if ![
                    coral_ebpf::KIND_ENTRY,
                    coral_ebpf::KIND_RET_INSN,
                    coral_ebpf::KIND_URETPROBE,
                ]
                .contains(&kind)
                {
                    return Err(format!("unknown attach point kind {kind}"));
                }
                Ok(Request::PerfUprobe { pid, offset, kind })
            }
            op => Err(format!("unknown request {op}")),
        }
    }
}

/// A reply: a number and a text (at most [`MAX_TEXT`] bytes), with an fd
/// for `Ok` replies to the requests that open something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Ok {
        number: u32,
        text: String,
    },
    /// The request was refused (the caller's error).
    Invalid(String),
    /// The request was allowed but failed.
    Failed(String),
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Reply {
    pub fn encode(&self) -> Vec<u8> {
        let (status, number, text) = match self {
            Reply::Ok { number, text } => (0u8, *number, text.as_str()),
            Reply::Invalid(t) => (1, 0, t.as_str()),
            Reply::Failed(t) => (2, 0, t.as_str()),
        };
        let text = cut(text, MAX_TEXT);
        let mut b = Vec::with_capacity(REPLY_HEADER + text.len());
        b.push(status);
        b.extend_from_slice(&number.to_le_bytes());
        b.extend_from_slice(&(text.len() as u16).to_le_bytes());
        b.extend_from_slice(text.as_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Reply, String> {
        if b.len() < REPLY_HEADER || b.len() > MAX_REPLY {
            return Err(format!("reply of {} bytes", b.len()));
        }
        let number = u32::from_le_bytes(b[1..5].try_into().expect("4 bytes"));
        let len = usize::from(u16::from_le_bytes([b[5], b[6]]));
        if b.len() != REPLY_HEADER + len {
            return Err("reply text length does not match".into());
        }
        let text = String::from_utf8(b[REPLY_HEADER..].to_vec())
            .map_err(|_| "reply text is not UTF-8".to_string())?;
        if b[0] != 0 && number != 0 {
            return Err("an error reply carries a number".into());
        }
        match b[0] {
            0 => Ok(Reply::Ok { number, text }),
            1 => Ok(Reply::Invalid(text)),
            2 => Ok(Reply::Failed(text)),
            s => Err(format!("unknown reply status {s}")),
        }
    }
}

/// One message with its fds (one `sendmsg`: the socket keeps boundaries).
fn send(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    match wire::send_with_fds(sock, bytes, fds)? {
        n if n == bytes.len() => Ok(()),
        _ => Err(io::Error::other("short send on a packet socket")),
    }
}

/// One message into `buf` and the fds that came with it; `None` when the
/// peer closed. A message or fd list too long for the buffers is an error
/// (the fds that did arrive are closed).
fn recv(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<(usize, Vec<OwnedFd>)>> {
    let mut fds = Vec::new();
    let (n, flags) = wire::recv_with_fds::<MAX_FDS>(sock, buf, &mut fds)?;
    if flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC) {
        return Err(io::Error::other("message or fds too long"));
    }
    Ok((n > 0).then_some((n, fds)))
}

/// The helper's handle on its target process.
pub struct TargetProcess {
    /// `None` once the process is gone (or stopped answering).
    sock: Mutex<Option<OwnedFd>>,
    pid: i32,
}

impl std::fmt::Debug for TargetProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetProcess")
            .field("pid", &self.pid)
            .finish()
    }
}

/// The error every verb that needs the target process gets once it is gone.
pub const GONE: &str = "the helper's target process has exited, so OpenTarget and UprobeAttach are unavailable (restart coral-privhelper)";

fn gone() -> BpfError {
    BpfError::Failed {
        what: "target process".into(),
        reason: GONE.into(),
    }
}

impl TargetProcess {
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Whether the helper still talks to it.
    pub fn alive(&self) -> bool {
        self.sock
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// One request and its reply. Any transport error, timeout or malformed
    /// reply ends the conversation for good: the helper closes its end
    /// (the target process then exits) and later calls get [`GONE`].
    fn call(
        &self,
        req: &Request,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(Reply, Option<OwnedFd>), BpfError> {
        let mut guard = self.sock.lock().unwrap_or_else(|p| p.into_inner());
        let Some(sock) = guard.as_ref() else {
            return Err(gone());
        };
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let mut buf = [0u8; MAX_REPLY + 1];
        let res = send(sock.as_fd(), &req.encode(), &raw).and_then(|()| {
            recv(sock.as_fd(), &mut buf)?.ok_or_else(|| io::Error::other("it closed its end"))
        });
        let outcome = res.map_err(|e| e.to_string()).and_then(|(n, mut got)| {
            let reply = Reply::decode(&buf[..n])?;
            let want = match (&reply, req.fds()) {
                (Reply::Ok { .. }, 1 | 2) => 1,
                _ => 0,
            };
            if got.len() != want {
                return Err(format!("{} fd(s) with a reply, expected {want}", got.len()));
            }
            Ok((reply, got.pop()))
        });
        match outcome {
            Ok(r) => Ok(r),
            Err(e) => {
                *guard = None;
                // Reap it if it has exited (no zombie while the helper runs);
                // if it has not, it exits on the EOF of the socket just closed.
                let _ = nix::sys::wait::waitpid(
                    nix::unistd::Pid::from_raw(self.pid),
                    Some(nix::sys::wait::WaitPidFlag::WNOHANG),
                );
                crate::server::log(&format!(
                    "target process {}: {e}; OpenTarget and UprobeAttach are refused from now on",
                    self.pid
                ));
                Err(gone())
            }
        }
    }

    fn call_for_fd(
        &self,
        req: &Request,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(u32, String, OwnedFd), BpfError> {
        match self.call(req, fds)? {
            (Reply::Ok { number, text }, Some(fd)) => Ok((number, text, fd)),
            (Reply::Ok { .. }, None) => Err(gone()),
            (Reply::Invalid(m), _) => Err(BpfError::Invalid(m)),
            (Reply::Failed(m), _) => Err(BpfError::Failed {
                what: "target process".into(),
                reason: m,
            }),
        }
    }

    /// `CheckUser`.
    pub fn check_user(&self, uid: u32) -> Result<Verdict, BpfError> {
        match self.call(&Request::CheckUser { uid }, &[])? {
            (Reply::Ok { number, text }, _) => Ok(match number {
                1 => Verdict::Root,
                2 => Verdict::Uid,
                3 => Verdict::Group(text),
                _ => Verdict::Denied,
            }),
            (Reply::Invalid(m) | Reply::Failed(m), _) => Err(BpfError::Invalid(m)),
        }
    }

    /// `OpenTarget` for the caller on `conn`: (pid, path, executable).
    pub fn open_target(
        &self,
        conn: BorrowedFd<'_>,
        pid: u32,
        port: u16,
    ) -> Result<(u32, String, File), BpfError> {
        let (pid, path, fd) = self.call_for_fd(&Request::OpenTarget { pid, port }, &[conn])?;
        Ok((pid, path, File::from(fd)))
    }

    /// `OpenBinary` for the caller on `conn`.
    pub fn open_binary(
        &self,
        conn: BorrowedFd<'_>,
        pid: u32,
        path: &Path,
    ) -> Result<File, BpfError> {
        let path = path
            .to_str()
            .filter(|p| p.len() <= MAX_PATH)
            .ok_or_else(|| BpfError::Invalid("the binary path is too long or not UTF-8".into()))?;
        let req = Request::OpenBinary {
            pid,
            path: path.to_owned(),
        };
        let (_, _, fd) = self.call_for_fd(&req, &[conn])?;
        Ok(File::from(fd))
    }

    /// `PerfUprobe` for the caller on `conn`: the perf event fd.
    pub fn perf_uprobe(
        &self,
        conn: BorrowedFd<'_>,
        binary: &File,
        pid: u32,
        offset: u64,
        kind: u8,
    ) -> Result<OwnedFd, BpfError> {
        let req = Request::PerfUprobe { pid, offset, kind };
        let (_, _, fd) = self.call_for_fd(&req, &[conn, binary.as_fd()])?;
        Ok(fd)
    }
}

/// The target process's first message: it is confined and serving.
const READY: &[u8] = b"ready";

/// How the target process confines itself.
#[derive(Debug, Clone)]
pub enum Confine {
    /// Drop capabilities and apply this seccomp policy.
    Yes(Policy),
    /// Nothing (`--sandbox off`).
    No,
}

/// Forks the target process. Call while the helper has one thread, after
/// `startup::sanitize` and before the helper confines itself. `listener` is
/// the helper's socket: the target process accepts only connections made
/// to it.
pub fn spawn(
    listener: &UnixListener,
    allow: Allow,
    confine: Confine,
) -> Result<TargetProcess, String> {
    let listen_path = local_path(listener.as_fd())
        .ok_or("the helper's socket has no path; the target process could not check callers")?;
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| format!("socketpair: {e}"))?;
    let sock = std::os::unix::net::UnixDatagram::from(ours.try_clone().map_err(|e| e.to_string())?);
    sock.set_read_timeout(Some(TIMEOUT))
        .and_then(|()| sock.set_write_timeout(Some(TIMEOUT)))
        .map_err(|e| format!("socket timeouts: {e}"))?;
    drop(sock);
    let parent = nix::unistd::getpid();
    // SAFETY: the helper has one thread here (the caller's contract), so the
    // child's copy of memory has no lock held by another thread, and the
    // child may allocate.
    match unsafe { nix::unistd::fork() }.map_err(|e| format!("fork: {e}"))? {
        nix::unistd::ForkResult::Parent { child } => {
            drop(theirs);
            // Started means confined: the child says so once its
            // capabilities are dropped and its filter is on, so nothing
            // (a request, or a reader of /proc) sees it before.
            let mut buf = [0u8; 16];
            let failed = match recv(ours.as_fd(), &mut buf) {
                Ok(Some((n, _))) if &buf[..n] == READY => None,
                Ok(_) => {
                    Some("it exited before it was ready (its reason is logged above)".to_string())
                }
                Err(e) => Some(format!("it did not report ready: {e}")),
            };
            if let Some(why) = failed {
                let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(child, None);
                return Err(why);
            }
            Ok(TargetProcess {
                sock: Mutex::new(Some(ours)),
                pid: child.as_raw(),
            })
        }
        nix::unistd::ForkResult::Child => {
            drop(ours);
            let code = match child_main(theirs, parent, &listen_path, &allow, confine) {
                Ok(()) => 0,
                Err(e) => {
                    crate::server::log(&format!("target process: {e}"));
                    1
                }
            };
            // SAFETY: _exit ends this process without running the parent's
            // exit handlers a second time.
            unsafe { libc::_exit(code) }
        }
    }
}

fn local_path(fd: BorrowedFd<'_>) -> Option<PathBuf> {
    getsockname::<UnixAddr>(fd.as_raw_fd())
        .ok()
        .and_then(|a| a.path().map(Path::to_path_buf))
}

fn child_main(
    sock: OwnedFd,
    parent: nix::unistd::Pid,
    listen_path: &Path,
    allow: &Allow,
    confine: Confine,
) -> Result<(), String> {
    // SAFETY: prctl with integer arguments changes only this process.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) } != 0 {
        return Err(format!("PR_SET_PDEATHSIG: {}", io::Error::last_os_error()));
    }
    if nix::unistd::getppid() != parent {
        // The helper died before the line above took effect.
        return Ok(());
    }
    // SAFETY: as above; the name is a NUL-terminated static string.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"coral-target".as_ptr(), 0, 0, 0) };
    // Only stdio and the socket stay open: not the listener, not anything
    // the helper opened before the fork.
    let keep = sock.as_raw_fd() as libc::c_uint;
    // SAFETY: close_range only changes the fd table; the fds closed are
    // copies of the parent's that no Rust object in this process uses.
    unsafe {
        if keep > 3 {
            libc::close_range(3, keep - 1, 0);
        }
        libc::close_range(keep + 1, libc::c_uint::MAX, 0);
    }
    if let Confine::Yes(policy) = confine {
        // Load the name service's modules (libnss_systemd and what it
        // links) now: their constructors make calls the filter has no
        // reason to allow. Names no file has reach every module.
        let _ = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(u32::MAX - 1));
        let _ = nix::unistd::Group::from_name("coral-target-no-such-group");
        sandbox::keep_capabilities(KEEP_CAPS)?;
        policy.apply().map_err(|e| e.to_string())?;
    }
    send(sock.as_fd(), READY, &[]).map_err(|e| format!("report ready: {e}"))?;
    serve(sock, listen_path, allow)
}

/// Answers requests until the helper closes its end.
fn serve(sock: OwnedFd, listen_path: &Path, allow: &Allow) -> Result<(), String> {
    let mut buf = [0u8; MAX_REQUEST + 1];
    loop {
        let (reply, fd) = match recv(sock.as_fd(), &mut buf) {
            Ok(None) => return Ok(()),
            Ok(Some((n, fds))) => match Request::decode(&buf[..n]) {
                Ok(req) if fds.len() == req.fds() => handle(req, fds, listen_path, allow),
                Ok(req) => (
                    Reply::Invalid(format!(
                        "the request needs {} fd(s), {} came",
                        req.fds(),
                        fds.len()
                    )),
                    None,
                ),
                Err(e) => (Reply::Invalid(format!("bad request: {e}")), None),
            },
            // Too long: refused, and the next message is read.
            Err(e) if e.kind() == io::ErrorKind::Other => {
                (Reply::Invalid(format!("bad request: {e}")), None)
            }
            Err(e) => return Err(format!("receive: {e}")),
        };
        let raw: Vec<RawFd> = fd.iter().map(|f| f.as_raw_fd()).collect();
        if let Err(e) = send(sock.as_fd(), &reply.encode(), &raw) {
            return Err(format!("reply: {e}"));
        }
    }
}

/// The uid of the caller on `conn`, read here: `conn` must be a connection
/// accepted on the helper's socket whose peer is not the helper itself.
fn caller_uid(conn: &OwnedFd, listen_path: &Path) -> Result<u32, BpfError> {
    let refuse = |m: &str| BpfError::Invalid(format!("the caller's connection is refused: {m}"));
    if local_path(conn.as_fd()).as_deref() != Some(listen_path) {
        return Err(refuse("not a connection to the helper's socket"));
    }
    let cred = getsockopt(conn, sockopt::PeerCredentials)
        .map_err(|e| refuse(&format!("no peer credentials ({e})")))?;
    if cred.pid() <= 0 || cred.pid() == nix::unistd::getppid().as_raw() {
        return Err(refuse("its peer is the helper itself"));
    }
    Ok(cred.uid())
}

fn handle(
    req: Request,
    mut fds: Vec<OwnedFd>,
    listen_path: &Path,
    allow: &Allow,
) -> (Reply, Option<OwnedFd>) {
    let fail = |e: BpfError| match e {
        BpfError::Invalid(m) => (Reply::Invalid(m), None),
        e => (Reply::Failed(e.to_string()), None),
    };
    if let Request::CheckUser { uid } = req {
        let (number, text) = match allow.check(uid) {
            Verdict::Denied => (0, String::new()),
            Verdict::Root => (1, String::new()),
            Verdict::Uid => (2, String::new()),
            Verdict::Group(g) => (3, g),
        };
        return (Reply::Ok { number, text }, None);
    }
    let uid = match caller_uid(&fds[0], listen_path) {
        Ok(u) => u,
        Err(e) => return fail(e),
    };
    let done = |number: u32, text: String, fd: OwnedFd| (Reply::Ok { number, text }, Some(fd));
    match req {
        Request::CheckUser { .. } => unreachable!("answered above"),
        Request::OpenTarget { pid, port } => match uprobe::open_target(pid, port, uid) {
            Ok((pid, path, file)) => done(pid, path, file.into()),
            Err(e) => fail(e),
        },
        Request::OpenBinary { pid, path } => {
            match uprobe::open_binary(pid, Path::new(&path), uid) {
                Ok(file) => done(0, String::new(), file.into()),
                Err(e) => fail(e),
            }
        }
        Request::PerfUprobe { pid, offset, kind } => {
            let file = File::from(fds.remove(1));
            let checked = uprobe::check_owner(pid, uid)
                .and_then(|()| uprobe::check_mapped(&file, pid, "the binary"))
                .and_then(|()| uprobe::perf_uprobe(&file, pid, offset, kind));
            match checked {
                Ok(perf) => done(0, String::new(), perf),
                Err(e) => fail(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_bad_ones_are_refused() {
        let all = [
            Request::CheckUser { uid: 1000 },
            Request::OpenTarget { pid: 0, port: 8080 },
            Request::OpenBinary {
                pid: 42,
                path: "/usr/bin/app".into(),
            },
            Request::PerfUprobe {
                pid: 42,
                offset: 0x1234,
                kind: coral_ebpf::KIND_URETPROBE,
            },
        ];
        for r in &all {
            assert_eq!(Request::decode(&r.encode()).as_ref(), Ok(r));
        }
        let bad = |r: Request| Request::decode(&r.encode()).unwrap_err();
        assert!(bad(Request::OpenTarget { pid: 0, port: 0 }).contains("neither"));
        assert!(
            bad(Request::OpenBinary {
                pid: 1,
                path: "rel".into()
            })
            .contains("absolute")
        );
        assert!(
            bad(Request::OpenBinary {
                pid: 1,
                path: "/a\0b".into()
            })
            .contains("NUL")
        );
        assert!(
            bad(Request::PerfUprobe {
                pid: 1,
                offset: 0,
                kind: 9
            })
            .contains("kind")
        );
        // A field another request uses, set: refused.
        let mut b = Request::CheckUser { uid: 1 }.encode();
        b[5] = 1;
        assert!(Request::decode(&b).is_err());
        // Lengths: too short, too long, path length lying.
        assert!(Request::decode(&[1; 3]).is_err());
        assert!(Request::decode(&vec![3; MAX_REQUEST + 1]).is_err());
        let mut b = Request::OpenBinary {
            pid: 1,
            path: "/x".into(),
        }
        .encode();
        b[20] = 9;
        assert!(Request::decode(&b).is_err());
        b[0] = 77;
        assert!(Request::decode(&b).is_err());
    }

    /// The caller's uid comes only from a connection accepted on the
    /// helper's socket: a socketpair, or a connection to another socket,
    /// which a compromised main process could make, is refused.
    #[test]
    fn only_connections_to_the_helpers_socket_name_a_caller() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("helper.sock");
        let other = dir.path().join("other.sock");
        let l = UnixListener::bind(&path).unwrap();
        let l2 = UnixListener::bind(&other).unwrap();
        let _c = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let (accepted, _) = l.accept().unwrap();
        let bound = local_path(l.as_fd()).unwrap();
        let me = nix::unistd::getuid().as_raw();
        assert_eq!(caller_uid(&OwnedFd::from(accepted), &bound).unwrap(), me);
        let _c2 = std::os::unix::net::UnixStream::connect(&other).unwrap();
        let (elsewhere, _) = l2.accept().unwrap();
        assert!(caller_uid(&OwnedFd::from(elsewhere), &bound).is_err());
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let e = caller_uid(&OwnedFd::from(a), &bound).unwrap_err();
        assert!(e.to_string().contains("not a connection"), "{e}");
    }

    #[test]
    fn replies_round_trip_and_texts_are_bounded() {
        let long = "é".repeat(MAX_TEXT);
        for r in [
            Reply::Ok {
                number: 7,
                text: "/bin/x".into(),
            },
            Reply::Invalid("no".into()),
            Reply::Failed(String::new()),
        ] {
            assert_eq!(Reply::decode(&r.encode()), Ok(r));
        }
        let b = Reply::Failed(long).encode();
        assert!(b.len() <= MAX_REPLY);
        assert!(matches!(Reply::decode(&b), Ok(Reply::Failed(t)) if t.len() == MAX_TEXT));
        assert!(Reply::decode(&[9, 0, 0, 0, 0, 0, 0]).is_err());
    }
}
