//! The exec spawner (issue 16): the process that starts `coral exec`
//! commands, so the agent itself never forks or executes anything (its
//! syscall list has no `execve`, and `clone` only for threads).
//!
//! The agent starts it (`coral __coral-exec-spawner MODE POLICY`) before it
//! confines itself, with two socket pairs as its stdin (requests) and stdout
//! (replies). For each command the agent has judged and audited, it sends a
//! request with the write ends of two pipes (`SCM_RIGHTS`); the spawner
//!
//! 1. judges the request again under its own copy of the policy file,
//!    read when the agent reads it (at start, and on the agent's `Reload`;
//!    an invalid file keeps the previous policy, a missing one denies
//!    everything); the same rule must allow it, so a compromised agent can
//!    still run only what the file allows some caller;
//! 2. takes the environment and working directory from that rule, and the
//!    paths the command may read from its arguments ([`command_reads`]);
//! 3. starts the command through the shim (`exec::shim`), in its own
//!    process group, which joins the command's cgroup, confines it with
//!    landlock and `execve`s it, and says `Started { pid }`;
//! 4. when the command ends, kills what is left in its process group
//!    (before reaping it, so the group id cannot be reused) and says
//!    `Exited`. The agent's `Kill` kills the group while it runs.
//!
//! The spawner runs under its own sandbox (`coral_sandbox::Role::Spawner`: read
//! everything, write only cgroups; a syscall list for running commands).
//! When the agent goes away (EOF on the requests), it kills every group
//! still running and exits.
//!
//! Requests are length-prefixed JSON (with the pipe fds riding on a run
//! request's first byte); replies are JSON lines.

use super::policy::PolicyHolder;
use super::shim::{SHIM_ARG, shim_args};
use coral_policy::{Caller, Request};
use coral_proto::ExecCaller;
use coral_sandbox::Mode;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io::{self, IoSlice, IoSliceMut, Write as _};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::{Component, Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

/// The first argument that selects the spawner.
pub const SPAWNER_ARG: &str = "__coral-exec-spawner";

/// Largest request frame: argv is at most 256 KiB, which JSON escaping
/// can grow sixfold.
const MAX_FRAME: usize = 4 << 20;

/// One command the agent has judged and audited.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RunRequest {
    pub id: String,
    pub caller: ExecCaller,
    pub service: String,
    /// The program as resolved (what the policy judged).
    pub program: String,
    /// The path to execute (resolves to `program`).
    pub launch: String,
    pub argv0: String,
    pub args: Vec<String>,
    /// The rule that allowed it, by name.
    pub rule: String,
    /// The `cgroup.procs` files the command joins.
    pub cgroup_procs: Vec<PathBuf>,
}

#[derive(Debug, Serialize, Deserialize)]
enum ToSpawner {
    Run(Box<RunRequest>),
    Kill {
        id: String,
    },
    /// The agent read its policy file again: so does the spawner.
    Reload {
        why: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
enum FromSpawner {
    Started {
        id: String,
        pid: u32,
    },
    Failed {
        id: String,
        error: String,
    },
    Exited {
        id: String,
        code: Option<i32>,
        signal: Option<i32>,
    },
}

/// How a command ended: (exit code, signal), or why that is unknown.
pub(crate) type Exit = Result<(Option<i32>, Option<i32>), String>;

/// A command the spawner started.
pub(crate) struct Running {
    pub pid: u32,
    pub stdout: tokio::net::unix::pipe::Receiver,
    pub stderr: tokio::net::unix::pipe::Receiver,
    pub exited: tokio::sync::oneshot::Receiver<Exit>,
}

struct AwaitedReplies {
    started: Option<tokio::sync::oneshot::Sender<Result<u32, String>>>,
    exited: Option<tokio::sync::oneshot::Sender<Exit>>,
}

/// The agent's end of the spawner.
pub struct Spawner {
    requests: Mutex<UnixStream>,
    /// Taken by the reply reader on first use (it needs the runtime).
    replies: Mutex<Option<UnixStream>>,
    pending: Mutex<HashMap<String, AwaitedReplies>>,
    child: Mutex<Child>,
    mode: Mode,
}

impl std::fmt::Debug for Spawner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spawner").field("mode", &self.mode).finish()
    }
}

const GONE: &str = "the exec spawner has stopped (see the agent's log); restart the agent";

impl Spawner {
    /// Starts the spawner from `exe` (the `coral` binary). Call it before
    /// the agent confines itself: the spawner keeps the right to run
    /// programs that the agent gives up. `mode` is the agent's sandbox
    /// mode (the spawner and each command are confined the same way).
    pub fn start(exe: &Path, mode: Mode, policy: &Path) -> io::Result<Arc<Spawner>> {
        let (requests, their_requests) = UnixStream::pair()?;
        let (replies, their_replies) = UnixStream::pair()?;
        let child = Command::new(exe)
            .arg(SPAWNER_ARG)
            .arg(mode_name(mode))
            .arg(policy)
            .arg0("coral-exec-spawner")
            .stdin(Stdio::from(OwnedFd::from(their_requests)))
            .stdout(Stdio::from(OwnedFd::from(their_replies)))
            .spawn()?;
        Ok(Arc::new(Spawner {
            requests: Mutex::new(requests),
            replies: Mutex::new(Some(replies)),
            pending: Mutex::new(HashMap::new()),
            child: Mutex::new(child),
            mode,
        }))
    }

    /// The spawner's pid.
    pub fn pid(&self) -> u32 {
        self.child.lock().expect("spawner lock").id()
    }

    pub(crate) fn mode(&self) -> Mode {
        self.mode
    }

    fn send(&self, msg: &ToSpawner, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let body = serde_json::to_vec(msg).map_err(io::Error::other)?;
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        let sock = self.requests.lock().expect("spawner lock");
        send_frame(&sock, &frame, fds)
    }

    /// Starts a command; `Err` says why it did not start.
    pub(crate) async fn run(self: &Arc<Self>, req: RunRequest) -> Result<Running, String> {
        if let Some(replies) = self.replies.lock().expect("spawner lock").take() {
            tokio::spawn(self.clone().read_replies(replies));
        }
        let pipes = || -> io::Result<_> {
            let (out_r, out_w) = std::io::pipe()?;
            let (err_r, err_w) = std::io::pipe()?;
            Ok((out_r, out_w, err_r, err_w))
        };
        let (out_r, out_w, err_r, err_w) =
            pipes().map_err(|e| format!("cannot make the command's pipes: {e}"))?;
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let (exited_tx, exited) = tokio::sync::oneshot::channel();
        let id = req.id.clone();
        self.pending.lock().expect("spawner lock").insert(
            id.clone(),
            AwaitedReplies {
                started: Some(started_tx),
                exited: Some(exited_tx),
            },
        );
        let me = self.clone();
        // The write ends go to the spawner and are closed here once sent,
        // so the pipes end when the command (and its children) close them.
        let sent = tokio::task::spawn_blocking(move || {
            me.send(
                &ToSpawner::Run(Box::new(req)),
                &[out_w.as_fd(), err_w.as_fd()],
            )
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| format!("{GONE} ({e})")));
        if let Err(e) = sent {
            self.pending.lock().expect("spawner lock").remove(&id);
            return Err(e);
        }
        let pid = started.await.map_err(|_| GONE.to_string())??;
        let receiver = |r: std::io::PipeReader| {
            tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(r))
                .map_err(|e| format!("cannot read the command's output: {e}"))
        };
        Ok(Running {
            pid,
            stdout: receiver(out_r)?,
            stderr: receiver(err_r)?,
            exited,
        })
    }

    /// Asks the spawner to kill the command's process group (if it still
    /// runs). Does not wait.
    pub(crate) fn kill(self: &Arc<Self>, id: &str) {
        let me = self.clone();
        let id = id.to_string();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = me.send(&ToSpawner::Kill { id }, &[]) {
                tracing::warn!(error = %e, "cannot reach the exec spawner to kill a command");
            }
        });
    }

    /// Tells the spawner to read the policy file again. Does not wait.
    pub(crate) fn reload(self: &Arc<Self>, why: &str) {
        let me = self.clone();
        let why = why.to_string();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = me.send(&ToSpawner::Reload { why }, &[]) {
                tracing::warn!(error = %e, "cannot tell the exec spawner to reload the policy");
            }
        });
    }

    async fn read_replies(self: Arc<Self>, replies: UnixStream) {
        use tokio::io::AsyncBufReadExt as _;
        let stream = replies
            .set_nonblocking(true)
            .and_then(|()| tokio::net::UnixStream::from_std(replies));
        let mut lines = match stream {
            Ok(s) => tokio::io::BufReader::new(s).lines(),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the exec spawner's replies");
                return self.fail_all();
            }
        };
        while let Ok(Some(line)) = lines.next_line().await {
            let msg: FromSpawner = match serde_json::from_str(&line) {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!(error = %e, "unreadable reply from the exec spawner");
                    continue;
                }
            };
            let mut pending = self.pending.lock().expect("spawner lock");
            match msg {
                FromSpawner::Started { id, pid } => {
                    if let Some(tx) = pending.get_mut(&id).and_then(|p| p.started.take()) {
                        let _ = tx.send(Ok(pid));
                    }
                }
                FromSpawner::Failed { id, error } => {
                    if let Some(mut p) = pending.remove(&id)
                        && let Some(tx) = p.started.take()
                    {
                        let _ = tx.send(Err(error));
                    }
                }
                FromSpawner::Exited { id, code, signal } => {
                    if let Some(mut p) = pending.remove(&id)
                        && let Some(tx) = p.exited.take()
                    {
                        let _ = tx.send(Ok((code, signal)));
                    }
                }
            }
        }
        tracing::error!(
            "the exec spawner has stopped: coral exec cannot run commands until the agent restarts"
        );
        self.fail_all();
    }

    fn fail_all(&self) {
        for (_, mut p) in self.pending.lock().expect("spawner lock").drain() {
            if let Some(tx) = p.started.take() {
                let _ = tx.send(Err(GONE.to_string()));
            }
            if let Some(tx) = p.exited.take() {
                let _ = tx.send(Err(GONE.to_string()));
            }
        }
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        // EOF on its requests: it kills what still runs and exits.
        let _ = self
            .requests
            .lock()
            .map(|s| s.shutdown(std::net::Shutdown::Both));
        if let Ok(mut c) = self.child.lock() {
            let _ = c.wait();
        }
    }
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Off => "off",
        Mode::Log => "log",
        Mode::Enforce => "enforce",
    }
}

/// Sends a whole frame; the fds ride with its first byte.
fn send_frame(sock: &UnixStream, frame: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let mut sent = 0;
    while sent < frame.len() {
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(2))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if sent == 0 && !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(io::Error::other("too many fds for one message"));
        }
        match rustix::net::sendmsg(
            sock,
            &[IoSlice::new(&frame[sent..])],
            &mut control,
            SendFlags::NOSIGNAL,
        ) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => sent += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Reads request frames and the fds that came with them, in order.
struct FrameReader {
    sock: UnixStream,
    buf: Vec<u8>,
    fds: VecDeque<OwnedFd>,
}

impl FrameReader {
    /// The next frame, or `None` at EOF.
    fn next(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if self.buf.len() >= 4 {
                let n = u32::from_be_bytes(self.buf[..4].try_into().expect("4 bytes")) as usize;
                if n > MAX_FRAME {
                    return Err(io::Error::other(format!("a {n}-byte request")));
                }
                if self.buf.len() >= 4 + n {
                    let frame = self.buf[4..4 + n].to_vec();
                    self.buf.drain(..4 + n);
                    return Ok(Some(frame));
                }
            }
            let mut chunk = vec![0u8; 64 << 10];
            let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(4))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let got = match rustix::net::recvmsg(
                &self.sock,
                &mut [IoSliceMut::new(&mut chunk)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            ) {
                Ok(m) => m.bytes,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            };
            for msg in control.drain() {
                if let RecvAncillaryMessage::ScmRights(fds) = msg {
                    self.fds.extend(fds);
                }
            }
            if got == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..got]);
        }
    }
}

/// The spawner's state shared with its waiting threads.
struct SpawnerState {
    replies: Mutex<UnixStream>,
    /// Running commands: id → process group.
    live: Mutex<HashMap<String, i32>>,
}

impl SpawnerState {
    fn reply(&self, msg: &FromSpawner) {
        let mut line = serde_json::to_vec(msg).expect("replies serialise");
        line.push(b'\n');
        let mut out = self.replies.lock().expect("replies lock");
        if let Err(e) = out.write_all(&line) {
            eprintln!("coral exec spawner: cannot reply to the agent: {e}");
        }
    }
}

fn killpg(pgid: i32) {
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pgid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Runs the spawner with the arguments after [`SPAWNER_ARG`]
/// (`MODE POLICY`); returns its exit code.
pub fn spawner_main(args: Vec<OsString>) -> i32 {
    let usage = || {
        eprintln!("coral: {SPAWNER_ARG} is internal to the agent");
        64
    };
    let mut it = args.into_iter();
    let (Some(mode), Some(policy), None) = (it.next(), it.next(), it.next()) else {
        return usage();
    };
    let Some(mode) = mode.to_str().and_then(|m| m.parse::<Mode>().ok()) else {
        return usage();
    };
    let policy = PolicyHolder::open(PathBuf::from(policy));
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("coral exec spawner: cannot find its own binary: {e}");
            return 71;
        }
    };
    let dup = |fd: BorrowedFd<'_>| fd.try_clone_to_owned().map(UnixStream::from);
    let (requests, replies) = match (dup(io::stdin().as_fd()), dup(io::stdout().as_fd())) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("coral exec spawner: no channel to the agent: {e}");
            return 71;
        }
    };
    if let Err(e) = coral_sandbox::apply(
        coral_sandbox::Role::Spawner,
        mode,
        &coral_sandbox::spawner_paths(),
    ) {
        eprintln!("coral exec spawner: {e}");
        return 71;
    }
    let shared = Arc::new(SpawnerState {
        replies: Mutex::new(replies),
        live: Mutex::new(HashMap::new()),
    });
    let mut reader = FrameReader {
        sock: requests,
        buf: Vec::new(),
        fds: VecDeque::new(),
    };
    loop {
        let frame = match reader.next() {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                eprintln!("coral exec spawner: cannot read the agent's request: {e}");
                break;
            }
        };
        match serde_json::from_slice::<ToSpawner>(&frame) {
            Ok(ToSpawner::Kill { id }) => {
                if let Some(pgid) = shared.live.lock().expect("live lock").get(&id) {
                    killpg(*pgid);
                }
            }
            Ok(ToSpawner::Reload { why }) => policy.reload(&why),
            Ok(ToSpawner::Run(req)) => {
                let (Some(out), Some(err)) = (reader.fds.pop_front(), reader.fds.pop_front())
                else {
                    shared.reply(&FromSpawner::Failed {
                        id: req.id.clone(),
                        error: "the request came without its output pipes".into(),
                    });
                    continue;
                };
                let id = req.id.clone();
                match start(&exe, &policy, mode, &req, out, err) {
                    Ok(child) => {
                        let pid = child.id();
                        shared
                            .live
                            .lock()
                            .expect("live lock")
                            .insert(id.clone(), pid as i32);
                        shared.reply(&FromSpawner::Started {
                            id: id.clone(),
                            pid,
                        });
                        let shared = shared.clone();
                        std::thread::spawn(move || wait(&shared, id, child));
                    }
                    Err(error) => shared.reply(&FromSpawner::Failed { id, error }),
                }
            }
            Err(e) => eprintln!("coral exec spawner: malformed request: {e}"),
        }
    }
    // The agent is gone: nothing it started may outlive it.
    for pgid in shared.live.lock().expect("live lock").values() {
        killpg(*pgid);
    }
    0
}

/// Waits for one command, kills what is left in its group, reaps it and
/// says how it ended.
fn wait(shared: &SpawnerState, id: String, mut child: Child) {
    use nix::sys::wait::{Id, WaitPidFlag, waitid};
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    // Not reaped yet: while it is a zombie, its pid (the group id) cannot
    // be reused, so the kill below reaches only its own group.
    while let Err(nix::errno::Errno::EINTR) =
        waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT)
    {}
    {
        let mut live = shared.live.lock().expect("live lock");
        killpg(pid.as_raw());
        live.remove(&id);
    }
    let (code, signal) = match child.wait() {
        Ok(st) => (st.code(), st.signal()),
        Err(e) => {
            eprintln!("coral exec spawner: cannot reap a command: {e}");
            (None, None)
        }
    };
    shared.reply(&FromSpawner::Exited { id, code, signal });
}

/// Judges the request again, then starts the shim for it.
fn start(
    exe: &Path,
    policy: &PolicyHolder,
    mode: Mode,
    req: &RunRequest,
    stdout: OwnedFd,
    stderr: OwnedFd,
) -> Result<Child, String> {
    let policy = policy.current();
    let c = &req.caller;
    let caller = Caller {
        identity: c.identity.clone(),
        roles: c.roles.clone(),
        uid: c.uid,
        user: c.user.clone(),
        gids: c.gids.clone(),
        groups: c.groups.clone(),
    };
    let d = policy.decide(&Request {
        caller: &caller,
        service: &req.service,
        program: &req.program,
        args: &req.args,
    });
    let limits = match (&d.limits, &d.rule) {
        (Some(l), Some(rule)) if d.is_allowed() && *rule.name == *req.rule => l.clone(),
        _ => {
            return Err(format!(
                "the policy changed before the command started and no longer allows it by rule '{}' ({d}); not run",
                req.rule
            ));
        }
    };
    if std::fs::canonicalize(&req.launch).ok().as_deref() != Some(Path::new(&req.program)) {
        return Err(format!(
            "{} no longer resolves to {}; not run",
            req.launch, req.program
        ));
    }
    for f in &req.cgroup_procs {
        let ok = f.starts_with("/sys/fs/cgroup")
            && f.file_name() == Some(std::ffi::OsStr::new("cgroup.procs"))
            && f.components()
                .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
        if !ok {
            return Err(format!("{} is not a cgroup.procs file", f.display()));
        }
    }
    let reads = command_reads(&req.args);
    let env = limits.filter_env(
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
    );
    Command::new(exe)
        .arg(SHIM_ARG)
        .args(shim_args(
            mode,
            &req.cgroup_procs,
            &reads,
            &req.launch,
            &req.argv0,
            &req.args,
        ))
        .env_clear()
        .envs(env)
        .current_dir(&limits.cwd)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr))
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", req.launch))
}

/// The paths a command may read besides the system paths: each argument
/// that is an absolute path (or `--option=/path`), exactly as named, when
/// it exists and no symlink is on the way (the policy judged the name;
/// a symlink could point anywhere). A directory is readable beneath.
pub(crate) fn command_reads(args: &[String]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for a in args {
        let candidate = if a.starts_with('/') {
            a.as_str()
        } else if let Some((_, v)) = a.split_once('=')
            && v.starts_with('/')
        {
            v
        } else {
            continue;
        };
        let Ok(normal) = coral_policy::normalize_path(candidate) else {
            continue;
        };
        let p = PathBuf::from(normal.as_ref());
        if std::fs::canonicalize(&p).is_ok_and(|real| real == p) && !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_the_real_paths_the_arguments_name() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::write(root.join("a.log"), "x").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", root.join("b.log")).unwrap();
        let a = root.join("a.log").display().to_string();
        let args = vec![
            "-n".to_string(),
            "10".to_string(),
            a.clone(),
            root.join("b.log").display().to_string(),
            format!("--file={a}"),
            root.join("missing").display().to_string(),
            format!("{}/../etc", root.display()),
        ];
        assert_eq!(command_reads(&args), vec![PathBuf::from(&a)]);
    }

    #[test]
    fn frames_carry_fds_in_order() {
        let (a, b) = UnixStream::pair().unwrap();
        let (r, w) = std::io::pipe().unwrap();
        send_frame(&a, b"\0\0\0\x02hi", &[w.as_fd()]).unwrap();
        send_frame(&a, b"\0\0\0\x01!", &[]).unwrap();
        drop(a);
        let mut reader = FrameReader {
            sock: b,
            buf: Vec::new(),
            fds: VecDeque::new(),
        };
        assert_eq!(reader.next().unwrap().unwrap(), b"hi");
        assert_eq!(reader.fds.len(), 1);
        assert_eq!(reader.next().unwrap().unwrap(), b"!");
        assert!(reader.next().unwrap().is_none());
        // The fd received is the pipe's write end.
        let w2 = std::fs::File::from(reader.fds.pop_front().unwrap());
        drop(w);
        std::io::Write::write_all(&mut &w2, b"ok").unwrap();
        drop(w2);
        let mut s = String::new();
        std::io::Read::read_to_string(&mut &r, &mut s).unwrap();
        assert_eq!(s, "ok");
    }
}
