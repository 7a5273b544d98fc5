//! The helper's server: authenticate, decode, do one privileged step, reply.
//!
//! One thread per connection, at most `MAX_CONNECTIONS` at once. The colony
//! and the agent may both hold a connection; with one connection at a time a
//! slow or stuck allowed caller would block every other caller. Each
//! connection has an idle timeout, so a stuck caller frees its slot. Key
//! generation is serialised by a mutex.
//!
//! A caller is checked before it gets a slot (issue 16): a refused caller,
//! and an allowed one that finds every slot taken (`Busy`), is answered by
//! one of `MAX_REPLIES` short-lived reply threads, which close only after the
//! caller could read the answer; when those are busy too the connection is
//! closed at once. Either way the slots of allowed callers are never held by
//! a refused one, and every refusal is logged (at most once a second).

use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use crate::config::{Allow, Verdict};
use crate::protocol::{self, DecodeError, ErrorCode, Request, Response, TunParams};
use crate::target::TargetProcess;
use crate::wire::{self, WireError};
use crate::{bpf, keys, tun, uprobe};

/// Default socket path.
pub const DEFAULT_SOCKET: &str = "/run/coral/privhelper.sock";
/// Default state dir (the private key lives here).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/coral-privhelper";
/// Concurrent connections served.
pub const MAX_CONNECTIONS: usize = 16;
/// Refusals and `Busy` answers being sent at once.
pub const MAX_REPLIES: usize = 4;
/// Interface names the helper creates must start with this.
pub const IFNAME_PREFIX: &str = "coral";

/// What the server needs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub allow: Allow,
    pub state_dir: PathBuf,
    pub idle_timeout: Duration,
    /// The target process (`crate::target`): group lookups, `OpenTarget`
    /// and the process-side steps of `UprobeAttach`.
    pub target: Arc<TargetProcess>,
}

/// What the helper's connection threads share: its config and counters.
struct HelperState {
    cfg: ServerConfig,
    conns: AtomicUsize,
    replies: AtomicUsize,
    key_lock: Mutex<()>,
    refused_log: Mutex<RateLimit>,
    busy_log: Mutex<RateLimit>,
}

/// Logs at most once a second, counting what it suppressed.
struct RateLimit {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    fn log(&mut self, line: &str) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            self.suppressed += 1;
            return;
        }
        if self.suppressed > 0 {
            log(&format!(
                "{line} ({} similar lines suppressed)",
                self.suppressed
            ));
        } else {
            log(line);
        }
        self.last = Some(now);
        self.suppressed = 0;
    }
}

/// One line to stderr. Never called with key material.
pub fn log(line: &str) {
    eprintln!("coral-privhelper: {line}");
}

/// Binds the listening socket: creates the parent dir (0755) if needed,
/// replaces a stale socket file (never any other kind of file), and makes
/// the socket 0666 — every connection is authenticated by `SO_PEERCRED`.
/// The path appears only when the socket is ready to accept.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    if let Some(parent) = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty() && !p.exists())
    {
        fs::DirBuilder::new().recursive(true).create(parent)?;
        fs::set_permissions(parent, fs::Permissions::from_mode(0o755))?;
    }
    match fs::symlink_metadata(path) {
        Ok(md) if md.file_type().is_socket() => fs::remove_file(path)?,
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // Bound, listening and 0666 under a temporary name, then renamed: the
    // socket path appears only once a client can connect to it.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = Path::new(&tmp);
    let _ = fs::remove_file(tmp);
    let l = UnixListener::bind(tmp)?;
    let ready = fs::set_permissions(tmp, fs::Permissions::from_mode(0o666))
        .and_then(|()| fs::rename(tmp, path));
    if let Err(e) = ready {
        let _ = fs::remove_file(tmp);
        return Err(e);
    }
    Ok(l)
}

/// Serves forever.
pub fn run(listener: UnixListener, cfg: ServerConfig) -> io::Result<()> {
    keys::ensure_state_dir(&cfg.state_dir).map_err(io::Error::other)?;
    let shared = Arc::new(HelperState {
        cfg,
        conns: AtomicUsize::new(0),
        replies: AtomicUsize::new(0),
        key_lock: Mutex::new(()),
        refused_log: Mutex::new(RateLimit {
            last: None,
            suppressed: 0,
        }),
        busy_log: Mutex::new(RateLimit {
            last: None,
            suppressed: 0,
        }),
    });
    log(&format!(
        "serving (allow uids {:?}, groups {:?}, root)",
        shared.cfg.allow.uids, shared.cfg.allow.groups
    ));
    loop {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                shared
                    .refused_log
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .log(&format!("accept failed: {e}"));
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let (uid, pid) = match getsockopt(&stream, PeerCredentials) {
            Ok(c) => (c.uid(), c.pid()),
            Err(e) => {
                log(&format!("cannot read peer credentials: {e}"));
                continue;
            }
        };
        if verdict(&shared, uid) == Verdict::Denied {
            let why = format!(
                "uid {uid} is not allowed to use coral-privhelper (add the user to group 'coral' with 'sudo usermod -aG coral USER' and log in again, or add 'allow_uid = {uid}' to its config)"
            );
            answer_and_close(
                &shared,
                stream,
                error(ErrorCode::Refused, why),
                (
                    &shared.refused_log,
                    format!("uid={uid} pid={pid} refused: not in the allowed set"),
                ),
            );
            continue;
        }
        if shared.conns.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            shared.conns.fetch_sub(1, Ordering::SeqCst);
            answer_and_close(
                &shared,
                stream,
                error(ErrorCode::Busy, "too many connections; retry"),
                (
                    &shared.busy_log,
                    format!("uid={uid} pid={pid} busy: all {MAX_CONNECTIONS} connections in use"),
                ),
            );
            continue;
        }
        let sh = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name("conn".into())
            .spawn(move || {
                serve_conn(stream, &sh, uid, pid);
                sh.conns.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            shared.conns.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Whether `uid` may use the helper: root and listed uids here, group
/// membership by the target process (it reads the user database, which
/// this process's landlock set cannot name).
fn verdict(sh: &HelperState, uid: u32) -> Verdict {
    let allow = &sh.cfg.allow;
    if uid == 0 {
        return Verdict::Root;
    }
    if allow.uids.contains(&uid) {
        return Verdict::Uid;
    }
    if allow.groups.is_empty() {
        return Verdict::Denied;
    }
    match sh.cfg.target.check_user(uid) {
        Ok(v) => v,
        Err(e) => {
            sh.refused_log
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .log(&format!("uid={uid}: cannot check group membership: {e}"));
            Verdict::Denied
        }
    }
}

/// Answers a caller that gets no slot (refused, or busy) on a reply thread,
/// and logs why (rate-limited); closes at once if `MAX_REPLIES` answers are
/// already being sent.
fn answer_and_close(
    shared: &Arc<HelperState>,
    stream: UnixStream,
    answer: Response,
    (limit, line): (&Mutex<RateLimit>, String),
) {
    limit.lock().unwrap_or_else(|p| p.into_inner()).log(&line);
    if shared.replies.fetch_add(1, Ordering::SeqCst) >= MAX_REPLIES {
        shared.replies.fetch_sub(1, Ordering::SeqCst);
        return;
    }
    let sh = Arc::clone(shared);
    let spawned = std::thread::Builder::new()
        .name("reply".into())
        .spawn(move || {
            let mut stream = stream;
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = reply(&stream, &answer);
            linger(&mut stream);
            sh.replies.fetch_sub(1, Ordering::SeqCst);
        });
    if spawned.is_err() {
        shared.replies.fetch_sub(1, Ordering::SeqCst);
    }
}

fn error(code: ErrorCode, message: impl Into<String>) -> Response {
    Response::Error {
        code,
        message: message.into(),
    }
}

fn reply(s: &UnixStream, r: &Response) -> io::Result<()> {
    wire::send_frame(s, &protocol::encode_response(r), None)
}

/// A reply that carries one fd (SCM_RIGHTS).
fn reply_with_fd(s: &UnixStream, r: &Response, fd: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    wire::send_frame(s, &protocol::encode_response(r), Some(fd))
}

/// Closes after the peer has read our last reply: closing a Unix socket with
/// unread data resets the peer, which would then see a broken pipe instead
/// of the refusal. Reads (and drops) at most 4 KiB for at most 200 ms.
fn linger(stream: &mut UnixStream) {
    use std::io::Read;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = [0u8; 512];
    let mut total = 0;
    while total < 4096 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
}

/// Serves an allowed caller (checked before it got its slot).
fn serve_conn(mut stream: UnixStream, sh: &HelperState, uid: u32, pid: i32) {
    let _ = stream.set_read_timeout(Some(sh.cfg.idle_timeout));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let mut version: Option<u8> = None;
    // A BPF object loaded on this connection, kept for BpfAttach; dropped
    // (the helper's fds closed) on BpfRelease or when the caller goes away.
    let mut session: Option<bpf::Loaded> = None;
    // The last target binary decoded for UprobeAttach.
    let mut checker = uprobe::Checker::default();
    loop {
        let body = match wire::read_body(&mut stream) {
            Ok(b) => b,
            Err(WireError::Eof) => return,
            Err(WireError::Decode(e)) => return bad_frame(&mut stream, uid, pid, &e),
            Err(e) => {
                log(&format!("uid={uid} pid={pid} connection dropped: {e}"));
                return;
            }
        };
        let req = match protocol::decode_request(&body) {
            Ok(r) => r,
            Err(e) => return bad_frame(&mut stream, uid, pid, &e),
        };
        let kind = req.kind();
        let (outcome, keep) = handle(
            &stream,
            sh,
            req,
            &mut version,
            (&mut session, &mut checker),
            pid,
        );
        log(&format!("uid={uid} pid={pid} req={kind} {outcome}"));
        if !keep {
            return;
        }
    }
}

fn bad_frame(stream: &mut UnixStream, uid: u32, pid: i32, e: &DecodeError) {
    log(&format!(
        "uid={uid} pid={pid} req=? outcome=bad_frame ({e})"
    ));
    let code = match e {
        DecodeError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
        _ => ErrorCode::BadFrame,
    };
    let _ = reply(stream, &error(code, e.to_string()));
    linger(stream);
}

/// Checks what only the helper enforces (the direct path has no such rules):
/// the name prefix, the mesh range 100.64.0.0/10 and the MTU range.
pub fn check_tun_policy(p: &TunParams) -> Result<(), String> {
    if !p.name.as_str().starts_with(IFNAME_PREFIX) {
        return Err(format!(
            "interface name {} must start with '{IFNAME_PREFIX}'",
            p.name
        ));
    }
    let cgnat = u32::from(Ipv4Addr::new(100, 64, 0, 0));
    if u32::from(p.addr) & 0xFFC0_0000 != cgnat || p.prefix < 10 {
        return Err(format!(
            "address {}/{} is outside the mesh range 100.64.0.0/10",
            p.addr, p.prefix
        ));
    }
    if !(tun::MIN_MTU..=tun::MAX_MTU).contains(&p.mtu) {
        return Err(format!(
            "MTU {} is outside {}..={}",
            p.mtu,
            tun::MIN_MTU,
            tun::MAX_MTU
        ));
    }
    Ok(())
}

/// Handles one request; returns the log outcome and whether to keep the
/// connection.
fn handle(
    stream: &UnixStream,
    sh: &HelperState,
    req: Request,
    version: &mut Option<u8>,
    (session, checker): (&mut Option<bpf::Loaded>, &mut uprobe::Checker),
    pid: i32,
) -> (String, bool) {
    let sent = |r: io::Result<()>, ok: String| match r {
        Ok(()) => (ok, true),
        Err(e) => (format!("{ok} reply_failed ({e})"), false),
    };
    let fail = |code: ErrorCode, msg: String| {
        let _ = reply(stream, &error(code, msg.clone()));
        (format!("outcome=refused ({msg})"), false)
    };
    // A BPF, uprobe or target request that failed: the caller hears why,
    // and the connection stays.
    let bpf_failed = |e: bpf::BpfError, what: String| {
        let code = match e {
            bpf::BpfError::Invalid(_) => ErrorCode::InvalidArgument,
            _ => ErrorCode::Failed,
        };
        let msg = e.to_string();
        let _ = reply(stream, &error(code, msg.clone()));
        (format!("{what} outcome=failed ({msg})"), true)
    };
    match req {
        Request::Hello {
            min_version,
            max_version,
        } => {
            let v = max_version.min(protocol::VERSION);
            if v < min_version || v < protocol::MIN_VERSION {
                return fail(
                    ErrorCode::UnsupportedVersion,
                    format!(
                        "no common version: caller speaks {min_version}..={max_version}, helper {}..={}",
                        protocol::MIN_VERSION,
                        protocol::VERSION
                    ),
                );
            }
            *version = Some(v);
            sent(
                reply(stream, &Response::HelloOk { version: v }),
                format!("outcome=ok version={v}"),
            )
        }
        _ if version.is_none() => fail(ErrorCode::BadSequence, "send Hello first".into()),
        Request::CreateTun(p) => {
            let what = format!("name={} addr={}/{} mtu={}", p.name, p.addr, p.prefix, p.mtu);
            if let Err(msg) = check_tun_policy(&p) {
                let _ = reply(stream, &error(ErrorCode::InvalidArgument, msg.clone()));
                return (format!("{what} outcome=invalid ({msg})"), true);
            }
            match tun::create(&p) {
                Ok(t) => {
                    let r = Response::TunCreated {
                        name: t.name.clone(),
                        ifindex: t.ifindex,
                    };
                    let res = wire::send_frame(
                        stream,
                        &protocol::encode_response(&r),
                        Some(t.fd.as_fd()),
                    );
                    // Our copy of the fd closes here; the caller's keeps the
                    // device alive. If the send failed the device goes away.
                    sent(res, format!("{what} outcome=ok ifindex={}", t.ifindex))
                }
                Err(e) => {
                    let msg = e.to_string();
                    let _ = reply(stream, &error(ErrorCode::Failed, msg.clone()));
                    (format!("{what} outcome=failed ({msg})"), true)
                }
            }
        }
        Request::GetKey => {
            let key = {
                let _g = sh.key_lock.lock().unwrap_or_else(|p| p.into_inner());
                keys::load_or_generate(&sh.cfg.state_dir)
            };
            let res = key.and_then(|k| keys::sealed_memfd(&k.secret).map(|fd| (k.public, fd)));
            match res {
                Ok((public, fd)) => {
                    let r = Response::Key { public };
                    let res =
                        wire::send_frame(stream, &protocol::encode_response(&r), Some(fd.as_fd()));
                    sent(res, "outcome=ok".into())
                }
                Err(e) => {
                    let msg = e.to_string();
                    let _ = reply(stream, &error(ErrorCode::Failed, msg.clone()));
                    (format!("outcome=failed ({msg})"), true)
                }
            }
        }
        Request::BpfLoad {
            name,
            sha256,
            ring_bytes,
        } => {
            let what = format!(
                "name={} sha256={} ring_bytes={ring_bytes}",
                name.as_str(),
                coral_ebpf::hex(&sha256)
            );
            if session.is_some() {
                let msg = "an object is already loaded on this connection".to_string();
                let _ = reply(stream, &error(ErrorCode::BadSequence, msg.clone()));
                return (format!("{what} outcome=refused ({msg})"), true);
            }
            // The caller's own process is never traced (its pid comes from
            // SO_PEERCRED, not from the request).
            match bpf::load(name.as_str(), &sha256, ring_bytes, pid.max(0) as u32) {
                Ok(loaded) => {
                    let r = Response::BpfLoaded {
                        maps: loaded.maps.len() as u8,
                        progs: loaded.progs.len() as u8,
                    };
                    let fds: Vec<_> = loaded
                        .maps
                        .iter()
                        .chain(loaded.progs.iter())
                        .map(|f| f.as_fd())
                        .collect();
                    let res = wire::send_frame_fds(stream, &protocol::encode_response(&r), &fds);
                    let ok = format!(
                        "{what} outcome=ok maps={} progs={}",
                        loaded.maps.len(),
                        loaded.progs.len()
                    );
                    *session = Some(loaded);
                    sent(res, ok)
                }
                Err(e) => {
                    let code = match e {
                        bpf::BpfError::UnknownObject(_)
                        | bpf::BpfError::HashMismatch { .. }
                        | bpf::BpfError::Invalid(_) => ErrorCode::InvalidArgument,
                        bpf::BpfError::Failed { .. } => ErrorCode::Failed,
                    };
                    let msg = e.to_string();
                    let _ = reply(stream, &error(code, msg.clone()));
                    (format!("{what} outcome=failed ({msg})"), true)
                }
            }
        }
        Request::BpfAttach { prog } => {
            let Some(loaded) = session.as_ref() else {
                return fail(ErrorCode::BadSequence, "send BpfLoad first".into());
            };
            let what = match loaded.programs().get(usize::from(prog)) {
                Some(p) => format!(
                    "prog={} {}={}:{}",
                    p.name,
                    match p.attach {
                        coral_ebpf::Attach::BtfRawTracepoint => "tp_btf",
                        coral_ebpf::Attach::Uprobe => "uprobe",
                    },
                    p.category,
                    p.tracepoint
                ),
                None => format!("prog={prog}"),
            };
            // A BTF tracepoint: no tracefs, nothing to mount.
            match bpf::attach(loaded, usize::from(prog)) {
                Ok(link) => {
                    // The helper keeps no copy: the caller's fd is the link.
                    let res = reply_with_fd(stream, &Response::BpfAttached { prog }, link.as_fd());
                    sent(res, format!("{what} outcome=ok"))
                }
                Err(e) => bpf_failed(e, what),
            }
        }
        Request::UprobeAttach(p) => {
            let what = format!(
                "probe={} kind={} pid={} path={:?} offset={:#x}",
                p.probe_id, p.kind, p.pid, p.path, p.offset
            );
            let Some(loaded) = session.as_ref() else {
                return fail(ErrorCode::BadSequence, "send BpfLoad uprobe first".into());
            };
            let target = uprobe::Target {
                probe_id: p.probe_id,
                kind: p.kind,
                pid: p.pid,
                path: std::path::Path::new(&p.path),
                offset: p.offset,
            };
            match uprobe::attach_through(loaded, checker, &target, &sh.cfg.target, stream.as_fd()) {
                Ok((link, function)) => {
                    // The helper keeps no copy: the caller's fd is the link.
                    let r = Response::UprobeAttached {
                        probe_id: p.probe_id,
                    };
                    let res = reply_with_fd(stream, &r, link.as_fd());
                    sent(res, format!("{what} function={function:?} outcome=ok"))
                }
                Err(e) => bpf_failed(e, what),
            }
        }
        Request::OpenTarget { pid: want, port } => {
            let what = format!("pid={want} port={port}");
            match sh.cfg.target.open_target(stream.as_fd(), want, port) {
                Ok((found, path, file)) => {
                    let logged = format!("{what} outcome=ok target={found} path={path:?}");
                    let r = Response::TargetOpened { pid: found, path };
                    sent(reply_with_fd(stream, &r, file.as_fd()), logged)
                }
                Err(e) => bpf_failed(e, what),
            }
        }
        Request::BpfRelease => {
            let had = session.take().is_some();
            sent(
                reply(stream, &Response::BpfReleased),
                format!("outcome=ok released={had}"),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::IfName;

    fn p(name: &str, addr: [u8; 4], prefix: u8, mtu: u16) -> TunParams {
        TunParams {
            name: IfName::new(name).unwrap(),
            addr: Ipv4Addr::from(addr),
            prefix,
            mtu,
        }
    }

    #[test]
    fn tun_policy() {
        assert!(check_tun_policy(&p("coral0", [100, 64, 0, 1], 10, 1420)).is_ok());
        assert!(check_tun_policy(&p("coral0", [100, 127, 255, 1], 32, 1420)).is_ok());
        assert!(check_tun_policy(&p("eth0", [100, 64, 0, 1], 10, 1420)).is_err());
        assert!(check_tun_policy(&p("coral0", [10, 0, 0, 1], 24, 1420)).is_err());
        assert!(check_tun_policy(&p("coral0", [100, 128, 0, 1], 24, 1420)).is_err());
        assert!(check_tun_policy(&p("coral0", [100, 64, 0, 1], 8, 1420)).is_err());
        assert!(check_tun_policy(&p("coral0", [100, 64, 0, 1], 10, 100)).is_err());
    }
}
