//! The client the colony and the agent use, and `open_tun`, which falls back
//! to creating the device directly when the caller has `CAP_NET_ADMIN`.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use crate::keys::{self, KeyError, NodeKey};
use crate::protocol::{self, ErrorCode, IfName, Request, Response, TunParams};
use crate::tun::{self, Tun, TunError};
use crate::wire::{self, WireError};

/// What to do when the helper cannot be reached (issue 13): the packaged
/// helper is started by systemd's `coral-privhelper.socket` and serves the
/// members of group `coral`; `coral doctor` says which step is missing.
const FIX: &str = "run 'coral doctor'; the coral package's coral-privhelper.socket serves members of group 'coral'";

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot reach coral-privhelper at {path}: {reason} ({FIX})")]
    Unreachable { path: PathBuf, reason: String },
    #[error("coral-privhelper refused the request: {0}")]
    Refused(String),
    #[error("coral-privhelper rejected the request: {0}")]
    Invalid(String),
    #[error("coral-privhelper failed: {0}")]
    Failed(String),
    #[error("coral-privhelper protocol error: {0}")]
    Protocol(String),
    #[error("{0}")]
    Key(#[from] KeyError),
}

impl From<WireError> for ClientError {
    fn from(e: WireError) -> Self {
        ClientError::Protocol(e.to_string())
    }
}

fn describe(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => {
            "no such file (not installed, or 'sudo systemctl enable --now coral-privhelper.socket')"
                .into()
        }
        io::ErrorKind::ConnectionRefused => {
            "connection refused (is coral-privhelper.socket active?)".into()
        }
        io::ErrorKind::PermissionDenied => format!(
            "permission denied: {}",
            group_membership(crate::config::DEFAULT_GROUP).hint()
        ),
        _ => e.to_string(),
    }
}

/// Whether this process may use a socket that is `root:GROUP 0660`: the
/// kernel checks the groups of the process (fixed at login), while
/// `/etc/group` may already list a user added since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Membership {
    /// Root, or the group is among this process's groups.
    Active,
    /// `/etc/group` lists the user, but this login session predates it.
    NotInSession(String),
    /// The user is not a member.
    NotMember(String),
    /// The group does not exist (the package is not installed).
    NoGroup(String),
}

impl Membership {
    /// One sentence saying what to do.
    pub fn hint(&self) -> String {
        match self {
            Membership::Active => "this process is in the helper's group".into(),
            Membership::NotInSession(g) => format!(
                "you were added to group '{g}' after this login: log in again or run 'newgrp {g}'"
            ),
            Membership::NotMember(g) => format!(
                "you are not in group '{g}': run 'sudo usermod -aG {g} $USER', then log in again"
            ),
            Membership::NoGroup(g) => format!(
                "group '{g}' does not exist: install the coral package (or 'make build-dev' in a source tree)"
            ),
        }
    }
}

/// This process's standing towards `group` (see [`Membership`]).
pub fn group_membership(group: &str) -> Membership {
    use nix::unistd::{Group, User, getegid, geteuid, getgroups};
    if geteuid().is_root() {
        return Membership::Active;
    }
    let Ok(Some(g)) = Group::from_name(group) else {
        return Membership::NoGroup(group.to_owned());
    };
    if getegid() == g.gid || getgroups().is_ok_and(|gs| gs.contains(&g.gid)) {
        return Membership::Active;
    }
    let listed = User::from_uid(geteuid())
        .ok()
        .flatten()
        .is_some_and(|u| u.gid == g.gid || g.mem.contains(&u.name));
    if listed {
        Membership::NotInSession(group.to_owned())
    } else {
        Membership::NotMember(group.to_owned())
    }
}

/// A connection to the helper, after version negotiation.
#[derive(Debug)]
pub struct Client {
    sock: UnixStream,
    path: PathBuf,
    version: u8,
}

impl Client {
    /// Connects and says Hello.
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        let unreachable = |e: &io::Error| ClientError::Unreachable {
            path: path.to_owned(),
            reason: describe(e),
        };
        let sock = UnixStream::connect(path).map_err(|e| unreachable(&e))?;
        let t = Some(Duration::from_secs(10));
        sock.set_read_timeout(t).map_err(|e| unreachable(&e))?;
        sock.set_write_timeout(t).map_err(|e| unreachable(&e))?;
        let mut c = Client {
            sock,
            path: path.to_owned(),
            version: 0,
        };
        match c.call(&Request::Hello {
            min_version: protocol::MIN_VERSION,
            max_version: protocol::VERSION,
        })? {
            (Response::HelloOk { version }, _) => c.version = version,
            (other, _) => return Err(unexpected(&other)),
        }
        Ok(c)
    }

    /// The negotiated protocol version.
    pub fn version(&self) -> u8 {
        self.version
    }

    fn call(&mut self, req: &Request) -> Result<(Response, Vec<OwnedFd>), ClientError> {
        if let Err(e) = wire::send_frame(&self.sock, &protocol::encode_request(req), None) {
            // A helper that refuses us replies and closes at once, possibly
            // before our request is written: its answer is still readable.
            let answered = match e.kind() {
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => {
                    wire::recv_response(&self.sock).ok()
                }
                _ => None,
            };
            match answered {
                Some((
                    Response::Error {
                        code: ErrorCode::Refused,
                        message,
                    },
                    _,
                )) => {
                    return Err(ClientError::Refused(message));
                }
                _ => {
                    return Err(ClientError::Unreachable {
                        path: self.path.clone(),
                        reason: describe(&e),
                    });
                }
            }
        }
        let (resp, fds) = wire::recv_response(&self.sock)?;
        if let Response::Error { code, message } = resp {
            return Err(match code {
                ErrorCode::Refused => ClientError::Refused(message),
                ErrorCode::InvalidArgument => ClientError::Invalid(message),
                ErrorCode::Failed => ClientError::Failed(message),
                _ => ClientError::Protocol(message),
            });
        }
        Ok((resp, fds))
    }

    /// Asks the helper to create and configure a TUN device.
    pub fn create_tun(&mut self, p: &TunParams) -> Result<Tun, ClientError> {
        match self.call(&Request::CreateTun(p.clone()))? {
            (Response::TunCreated { name, ifindex }, mut fds) => Ok(Tun {
                fd: fds
                    .pop()
                    .ok_or_else(|| ClientError::Protocol("no fd".into()))?,
                name,
                ifindex,
            }),
            (other, _) => Err(unexpected(&other)),
        }
    }

    /// The node's public key and the sealed memfd holding the private key.
    pub fn get_key_fd(&mut self) -> Result<([u8; 32], OwnedFd), ClientError> {
        match self.call(&Request::GetKey)? {
            (Response::Key { public }, mut fds) => Ok((
                public,
                fds.pop()
                    .ok_or_else(|| ClientError::Protocol("no fd".into()))?,
            )),
            (other, _) => Err(unexpected(&other)),
        }
    }

    /// The node's key pair, read from the sealed memfd (seals and the public
    /// key are checked).
    pub fn get_key(&mut self) -> Result<NodeKey, ClientError> {
        let (public, fd) = self.get_key_fd()?;
        Ok(keys::read_sealed(fd, public)?)
    }
}

impl Client {
    /// `OpenTarget`: the process `pid` (or, with 0, the one listening on
    /// TCP `port`), its executable's path and a read-only fd of it.
    pub fn open_target(
        &mut self,
        pid: u32,
        port: u16,
    ) -> Result<(u32, String, OwnedFd), ClientError> {
        match self.call(&Request::OpenTarget { pid, port })? {
            (Response::TargetOpened { pid, path }, mut fds) => Ok((
                pid,
                path,
                fds.pop()
                    .ok_or_else(|| ClientError::Protocol("no fd".into()))?,
            )),
            (other, _) => Err(unexpected(&other)),
        }
    }

    /// Asks the helper to load its embedded object `name` (with the hash
    /// this build embeds) and attach every program; releases the helper's
    /// copies before returning, so the fds returned are the only ones.
    pub fn bpf_load_and_attach(
        &mut self,
        name: &str,
        ring_bytes: u32,
    ) -> Result<BpfFds, ClientError> {
        let object = coral_ebpf::object(name).ok_or_else(|| {
            ClientError::Invalid(format!("no embedded BPF object named '{name}'"))
        })?;
        let obj_name = protocol::ObjectName::new(name)
            .ok_or_else(|| ClientError::Invalid(format!("bad BPF object name '{name}'")))?;
        let (maps, progs) = match self.call(&Request::BpfLoad {
            name: obj_name,
            sha256: object.sha256,
            ring_bytes,
        })? {
            (Response::BpfLoaded { maps, progs: _ }, mut fds) => {
                let progs_fds = fds.split_off(usize::from(maps));
                (fds, progs_fds)
            }
            (other, _) => return Err(unexpected(&other)),
        };
        let mut links = Vec::with_capacity(progs.len());
        for i in 0..progs.len() {
            let prog =
                u8::try_from(i).map_err(|_| ClientError::Protocol("too many programs".into()))?;
            match self.call(&Request::BpfAttach { prog })? {
                (Response::BpfAttached { prog: p }, mut fds) if p == prog => links.push(
                    fds.pop()
                        .ok_or_else(|| ClientError::Protocol("no fd".into()))?,
                ),
                (other, _) => return Err(unexpected(&other)),
            }
        }
        match self.call(&Request::BpfRelease)? {
            (Response::BpfReleased, _) => {}
            (other, _) => return Err(unexpected(&other)),
        }
        Ok(BpfFds { maps, progs, links })
    }
}

/// Coral's uprobe object (issue 12), loaded for one debug session: its maps
/// (`coral_ebpf::UPROBE_MAPS` order) and the means to attach points, through
/// the helper or directly. Call [`UprobeObject::release`] once every point
/// is attached: the links and maps the caller holds keep everything alive,
/// and dropping them detaches and frees it.
pub struct UprobeObject {
    pub maps: Vec<OwnedFd>,
    via: Option<UprobeVia>,
}

enum UprobeVia {
    Helper(Client),
    Direct(Box<(crate::bpf::Loaded, crate::uprobe::Checker)>),
}

impl std::fmt::Debug for UprobeObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UprobeObject")
            .field("maps", &self.maps)
            .finish_non_exhaustive()
    }
}

impl UprobeObject {
    /// Loads the object with an event ring of `ring_bytes`: through the
    /// helper at `socket`, or directly (root or `CAP_BPF` + `CAP_PERFMON`)
    /// when the helper cannot be reached or refuses this caller.
    pub fn open(socket: &Path, ring_bytes: u32) -> Result<(Self, BpfPath), OpenBpfError> {
        let name = coral_ebpf::UPROBE;
        let object = coral_ebpf::object(name)
            .ok_or_else(|| OpenBpfError::Helper(ClientError::Invalid("no uprobe object".into())))?;
        let via_helper = Client::connect(socket).and_then(|mut c| {
            let obj_name = protocol::ObjectName::new(name)
                .ok_or_else(|| ClientError::Invalid("bad object name".into()))?;
            match c.call(&Request::BpfLoad {
                name: obj_name,
                sha256: object.sha256,
                ring_bytes,
            })? {
                (Response::BpfLoaded { maps, .. }, mut fds) => {
                    fds.truncate(usize::from(maps));
                    Ok((c, fds))
                }
                (other, _) => Err(unexpected(&other)),
            }
        });
        let helper_err = match via_helper {
            Ok((c, maps)) => {
                return Ok((
                    UprobeObject {
                        maps,
                        via: Some(UprobeVia::Helper(c)),
                    },
                    BpfPath::Helper,
                ));
            }
            Err(e @ (ClientError::Unreachable { .. } | ClientError::Refused(_))) => e,
            Err(e) => return Err(OpenBpfError::Helper(e)),
        };
        let both = |direct| OpenBpfError::Both {
            name: name.to_string(),
            helper: Box::new(helper_err),
            direct: Box::new(direct),
        };
        let loaded = crate::bpf::load(name, &object.sha256, ring_bytes, std::process::id())
            .and_then(|l| {
                let maps = l
                    .maps
                    .iter()
                    .map(|f| f.try_clone())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| crate::bpf::failed("dup map fd", e))?;
                Ok((l, maps))
            });
        let (loaded, maps) = loaded.map_err(both)?;
        Ok((
            UprobeObject {
                maps,
                via: Some(UprobeVia::Direct(Box::new((
                    loaded,
                    crate::uprobe::Checker::default(),
                )))),
            },
            BpfPath::Direct,
        ))
    }

    /// Attaches one point (the helper, or this process, re-checks it against
    /// its own decode of the binary); returns the BPF link fd.
    pub fn attach(&mut self, p: &protocol::UprobePoint) -> Result<OwnedFd, ClientError> {
        match self.via.as_mut() {
            None => Err(ClientError::Invalid(
                "the uprobe object was released".into(),
            )),
            Some(UprobeVia::Helper(c)) => match c.call(&Request::UprobeAttach(p.clone()))? {
                (Response::UprobeAttached { probe_id }, mut fds) if probe_id == p.probe_id => fds
                    .pop()
                    .ok_or_else(|| ClientError::Protocol("no fd".into())),
                (other, _) => Err(unexpected(&other)),
            },
            Some(UprobeVia::Direct(d)) => {
                let (loaded, checker) = &mut **d;
                let t = crate::uprobe::Target {
                    probe_id: p.probe_id,
                    kind: p.kind,
                    pid: p.pid,
                    path: Path::new(&p.path),
                    offset: p.offset,
                };
                crate::uprobe::attach(loaded, checker, &t, nix::unistd::getuid().as_raw())
                    .map(|(fd, _)| fd)
                    .map_err(|e| match e {
                        crate::bpf::BpfError::Invalid(m) => ClientError::Invalid(m),
                        e => ClientError::Failed(e.to_string()),
                    })
            }
        }
    }

    /// Closes the helper connection (or this process's loader copies):
    /// no more points can be attached.
    pub fn release(&mut self) {
        self.via = None;
    }
}

/// A loaded and attached BPF object, as fds: the maps (stats, ports, then
/// one ring buffer per CPU), the programs, and one link per program. Dropping it
/// detaches and frees everything.
#[derive(Debug)]
pub struct BpfFds {
    pub maps: Vec<OwnedFd>,
    pub progs: Vec<OwnedFd>,
    pub links: Vec<OwnedFd>,
}

/// How the BPF object was loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BpfPath {
    /// Through coral-privhelper.
    Helper,
    /// By this process itself (root or CAP_BPF + CAP_PERFMON).
    Direct,
}

impl std::fmt::Display for BpfPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BpfPath::Helper => "coral-privhelper",
            BpfPath::Direct => "direct (CAP_BPF)",
        })
    }
}

#[derive(Debug, Error)]
pub enum OpenBpfError {
    #[error("{0}")]
    Helper(ClientError),
    #[error("cannot load BPF object '{name}': {helper}; loading it directly failed too: {direct}")]
    Both {
        name: String,
        helper: Box<ClientError>,
        direct: Box<crate::bpf::BpfError>,
    },
}

/// Tries the helper at `socket` first; if it cannot be reached or refuses
/// this caller, loads and attaches directly (root or `CAP_BPF`). Says which
/// path it used.
pub fn open_bpf(
    socket: &Path,
    name: &str,
    ring_bytes: u32,
) -> Result<(BpfFds, BpfPath), OpenBpfError> {
    let helper_err =
        match Client::connect(socket).and_then(|mut c| c.bpf_load_and_attach(name, ring_bytes)) {
            Ok(f) => return Ok((f, BpfPath::Helper)),
            Err(e @ (ClientError::Unreachable { .. } | ClientError::Refused(_))) => e,
            Err(e) => return Err(OpenBpfError::Helper(e)),
        };
    let direct = coral_ebpf::object(name)
        .ok_or_else(|| crate::bpf::BpfError::UnknownObject(name.to_string()))
        .and_then(|o| crate::bpf::load_and_attach(name, &o.sha256, ring_bytes, std::process::id()));
    match direct {
        Ok((loaded, links)) => {
            let crate::bpf::Loaded { maps, progs, .. } = loaded;
            Ok((BpfFds { maps, progs, links }, BpfPath::Direct))
        }
        Err(direct) => Err(OpenBpfError::Both {
            name: name.to_string(),
            helper: Box::new(helper_err),
            direct: Box::new(direct),
        }),
    }
}

fn unexpected(r: &Response) -> ClientError {
    ClientError::Protocol(format!("unexpected reply {r:?}"))
}

/// How a TUN device was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunPath {
    /// Through coral-privhelper.
    Helper,
    /// Created by this process itself (root or CAP_NET_ADMIN).
    Direct,
}

impl std::fmt::Display for TunPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TunPath::Helper => "coral-privhelper",
            TunPath::Direct => "direct (CAP_NET_ADMIN)",
        })
    }
}

#[derive(Debug, Error)]
pub enum OpenTunError {
    #[error("{0}")]
    Helper(ClientError),
    #[error("cannot create TUN device {name}: {helper}; creating it directly failed too: {direct}")]
    Both {
        name: IfName,
        helper: ClientError,
        direct: TunError,
    },
}

/// Tries the helper at `socket` first; if it cannot be reached or refuses
/// this caller, creates the device directly. Errors the helper reports about
/// the request itself (bad name, address in use) are returned as they are.
pub fn open_tun(socket: &Path, p: &TunParams) -> Result<(Tun, TunPath), OpenTunError> {
    let helper_err = match Client::connect(socket).and_then(|mut c| c.create_tun(p)) {
        Ok(t) => return Ok((t, TunPath::Helper)),
        Err(e @ (ClientError::Unreachable { .. } | ClientError::Refused(_))) => e,
        Err(e) => return Err(OpenTunError::Helper(e)),
    };
    match tun::create(p) {
        Ok(t) => Ok((t, TunPath::Direct)),
        Err(direct) => Err(OpenTunError::Both {
            name: p.name.clone(),
            helper: helper_err,
            direct,
        }),
    }
}
