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

const FIX: &str = "install the package or run 'sudo coral-privhelper'; or grant CAP_NET_ADMIN with 'sudo setcap cap_net_admin+ep $(which coral)'";

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
        io::ErrorKind::NotFound => "no such file".into(),
        io::ErrorKind::ConnectionRefused => "connection refused (is it running?)".into(),
        io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
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
