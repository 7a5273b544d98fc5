//! The helper's wire protocol: versioned, length-prefixed binary frames.
//!
//! ```text
//! offset  size  field
//! 0       4     body length N, big-endian u32, 2 <= N <= MAX_BODY
//! 4       1     protocol version (1)
//! 5       1     message type
//! 6       N-2   payload, a fixed layout per message type
//! ```
//!
//! Every field has a fixed size or a one-byte length with a small bound, and
//! trailing bytes are an error. The decoder never panics and never allocates
//! more than `MAX_BODY` bytes. File descriptors (a TUN fd, a sealed memfd)
//! travel beside a response frame as `SCM_RIGHTS`; requests carry none.
//! A `BpfLoaded` reply carries one fd per map and program (at most
//! `MAX_FDS`).
//!
//! New requests get new type bytes (0x10..0x1F are BPF load/attach).

use std::net::Ipv4Addr;

use thiserror::Error;

/// The protocol version this build speaks. A server accepts frames whose
/// version byte is in `MIN_VERSION..=VERSION`.
pub const VERSION: u8 = 1;
/// The oldest version this build still speaks.
pub const MIN_VERSION: u8 = 1;
/// Largest body (version + type + payload) either side accepts.
pub const MAX_BODY: usize = 512;
/// Length of the `u32` length prefix.
pub const HEADER_LEN: usize = 4;
/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = 15;
/// Longest error message in an error response.
pub const MAX_MESSAGE: usize = 400;
/// Longest BPF object name.
pub const MAX_OBJECT_NAME: usize = 32;
/// Longest binary path in `UprobeAttach`.
pub const MAX_PATH: usize = 255;
/// Most fds one response carries (the kernel's SCM_MAX_FD is 253).
pub const MAX_FDS: usize = 253;

// Request types.
const T_HELLO: u8 = 0x01;
const T_CREATE_TUN: u8 = 0x02;
const T_GET_KEY: u8 = 0x03;
const T_BPF_LOAD: u8 = 0x10;
const T_BPF_ATTACH: u8 = 0x11;
const T_BPF_RELEASE: u8 = 0x12;
const T_UPROBE_ATTACH: u8 = 0x13;
const T_OPEN_TARGET: u8 = 0x14;
// Response types.
const T_HELLO_OK: u8 = 0x81;
const T_TUN_CREATED: u8 = 0x82;
const T_KEY: u8 = 0x83;
const T_BPF_LOADED: u8 = 0x90;
const T_BPF_ATTACHED: u8 = 0x91;
const T_BPF_RELEASED: u8 = 0x92;
const T_UPROBE_ATTACHED: u8 = 0x93;
const T_TARGET_OPENED: u8 = 0x94;
const T_ERROR: u8 = 0xFF;

/// Why a frame was rejected. The server answers each with an error response
/// and closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("frame is truncated")]
    Truncated,
    #[error("frame body is {0} bytes; at most {MAX_BODY} are allowed")]
    Oversize(u32),
    #[error("frame body is {0} bytes; at least 2 are needed")]
    Undersize(u32),
    #[error("unsupported protocol version {0} (this helper speaks {MIN_VERSION}..={VERSION})")]
    UnsupportedVersion(u8),
    #[error("unknown message type 0x{0:02x}")]
    UnknownType(u8),
    #[error("{0} trailing bytes after the payload")]
    Trailing(usize),
    #[error("invalid field: {0}")]
    InvalidField(&'static str),
    #[error("invalid interface name: {0}")]
    InvalidName(#[from] NameError),
}

/// Why an interface name was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    #[error("the name is empty")]
    Empty,
    #[error("the name is longer than {MAX_IFNAME} bytes")]
    TooLong,
    #[error("the name may only hold ASCII letters, digits, '_' and '-'")]
    BadChar,
}

/// A network interface name the kernel will take literally: 1 to 15 bytes of
/// `[A-Za-z0-9_-]`. That excludes `/`, `:`, whitespace, `.`/`..` and `%`
/// (the kernel expands `%d` in TUNSETIFF names).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IfName(String);

impl IfName {
    /// Checks `name` and wraps it.
    pub fn new(name: &str) -> Result<Self, NameError> {
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > MAX_IFNAME {
            return Err(NameError::TooLong);
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(NameError::BadChar);
        }
        Ok(Self(name.to_owned()))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for IfName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A BPF object name: 1 to 32 bytes of `[a-z0-9_-]`. It only selects one of
/// the objects compiled into the helper.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectName(String);

impl ObjectName {
    pub fn new(name: &str) -> Option<Self> {
        let ok = !name.is_empty()
            && name.len() <= MAX_OBJECT_NAME
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        ok.then(|| Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a TUN device should look like once created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunParams {
    pub name: IfName,
    pub addr: Ipv4Addr,
    pub prefix: u8,
    pub mtu: u16,
}

/// The closed set of requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Version negotiation; must be the first request on a connection.
    Hello { min_version: u8, max_version: u8 },
    /// Create and configure a TUN device; the reply carries its fd.
    CreateTun(TunParams),
    /// Return the node's X25519 key pair; the private key comes as a sealed memfd.
    GetKey,
    /// Load the BPF object compiled into the helper under `name`, if its
    /// SHA-256 is `sha256`, with one ring buffer of `ring_bytes` per CPU.
    /// The reply carries the map fds (stats, ports, then the rings) and the
    /// program fds. The helper keeps the object for `BpfAttach` until
    /// `BpfRelease` or the connection closes.
    BpfLoad {
        name: ObjectName,
        sha256: [u8; 32],
        ring_bytes: u32,
    },
    /// Attach program `prog` (an index into the object's embedded program
    /// table) to its tracepoint; the reply carries the BPF link fd.
    BpfAttach { prog: u8 },
    /// Close the helper's copies of the loaded object.
    BpfRelease,
    /// Attach the loaded `uprobe` object's program at file `offset` of the
    /// binary `path`, for process `pid` only, with the BPF cookie
    /// `probe_id << 8 | kind`. The helper re-derives the point from its own
    /// decode of the file (a function entry, or an instruction boundary for
    /// Go return instructions) and checks the file is mapped in `pid`. The
    /// reply carries the BPF link fd: closing it detaches.
    UprobeAttach(UprobePoint),
    /// Find the process to probe (`pid`, or with `pid` 0 the process
    /// listening on TCP `port`) and open its executable read-only: a
    /// sandboxed caller cannot look into other processes itself. Only a
    /// process of the caller's own uid (any, for root). The reply carries
    /// the executable's fd.
    OpenTarget { pid: u32, port: u16 },
}

/// Where `UprobeAttach` puts a probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UprobePoint {
    pub probe_id: u32,
    /// `coral_ebpf::KIND_*`.
    pub kind: u8,
    pub pid: u32,
    pub offset: u64,
    /// Absolute, 1 to `MAX_PATH` bytes of UTF-8 without NUL.
    pub path: String,
}

impl Request {
    /// Short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Hello { .. } => "hello",
            Request::CreateTun(_) => "create_tun",
            Request::GetKey => "get_key",
            Request::BpfLoad { .. } => "bpf_load",
            Request::BpfAttach { .. } => "bpf_attach",
            Request::BpfRelease => "bpf_release",
            Request::UprobeAttach(_) => "uprobe_attach",
            Request::OpenTarget { .. } => "open_target",
        }
    }
}

/// Error codes carried in an error response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The frame could not be decoded.
    BadFrame,
    /// No common protocol version.
    UnsupportedVersion,
    /// The caller is not in the allowed set.
    Refused,
    /// A field was well-formed but not acceptable (name prefix, address range).
    InvalidArgument,
    /// The privileged operation failed.
    Failed,
    /// Too many connections right now; retry.
    Busy,
    /// The request came out of order (e.g. before Hello).
    BadSequence,
    /// A code this build does not know (from a newer peer).
    Other(u8),
}

impl ErrorCode {
    fn to_u8(self) -> u8 {
        match self {
            ErrorCode::BadFrame => 1,
            ErrorCode::UnsupportedVersion => 2,
            ErrorCode::Refused => 3,
            ErrorCode::InvalidArgument => 4,
            ErrorCode::Failed => 5,
            ErrorCode::Busy => 6,
            ErrorCode::BadSequence => 7,
            ErrorCode::Other(c) => c,
        }
    }

    fn from_u8(c: u8) -> Self {
        match c {
            1 => ErrorCode::BadFrame,
            2 => ErrorCode::UnsupportedVersion,
            3 => ErrorCode::Refused,
            4 => ErrorCode::InvalidArgument,
            5 => ErrorCode::Failed,
            6 => ErrorCode::Busy,
            7 => ErrorCode::BadSequence,
            c => ErrorCode::Other(c),
        }
    }
}

/// The responses. `TunCreated` and `Key` come with exactly one fd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    HelloOk {
        version: u8,
    },
    TunCreated {
        name: IfName,
        ifindex: u32,
    },
    Key {
        public: [u8; 32],
    },
    /// Carries `maps + progs` fds.
    BpfLoaded {
        maps: u8,
        progs: u8,
    },
    /// Carries the link fd.
    BpfAttached {
        prog: u8,
    },
    BpfReleased,
    /// Carries the link fd.
    UprobeAttached {
        probe_id: u32,
    },
    /// Carries the executable's fd; `path` is where it is mapped from.
    TargetOpened {
        pid: u32,
        path: String,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
}

impl Response {
    /// How many fds come beside this response.
    pub fn fd_count(&self) -> usize {
        match self {
            Response::TunCreated { .. }
            | Response::Key { .. }
            | Response::BpfAttached { .. }
            | Response::UprobeAttached { .. }
            | Response::TargetOpened { .. } => 1,
            Response::BpfLoaded { maps, progs } => usize::from(*maps) + usize::from(*progs),
            _ => 0,
        }
    }
}

/// A bounds-checked reader over a payload.
struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    fn path(&mut self) -> Result<String, DecodeError> {
        let len = usize::from(self.u8()?);
        if len == 0 || len > MAX_PATH {
            return Err(DecodeError::InvalidField(
                "uprobe_attach: path must be 1..=255 bytes",
            ));
        }
        let s = std::str::from_utf8(self.take(len)?)
            .map_err(|_| DecodeError::InvalidField("uprobe_attach: path is not UTF-8"))?;
        if !s.starts_with('/') || s.contains('\0') {
            return Err(DecodeError::InvalidField(
                "uprobe_attach: path must be absolute, without NUL",
            ));
        }
        Ok(s.to_owned())
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn array32(&mut self) -> Result<[u8; 32], DecodeError> {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.take(32)?);
        Ok(out)
    }

    fn name(&mut self) -> Result<IfName, DecodeError> {
        let len = usize::from(self.u8()?);
        if len > MAX_IFNAME {
            return Err(NameError::TooLong.into());
        }
        let bytes = self.take(len)?;
        let s = std::str::from_utf8(bytes).map_err(|_| NameError::BadChar)?;
        Ok(IfName::new(s)?)
    }

    fn object_name(&mut self) -> Result<ObjectName, DecodeError> {
        let len = usize::from(self.u8()?);
        if len == 0 || len > MAX_OBJECT_NAME {
            return Err(DecodeError::InvalidField(
                "bpf_load: name must be 1..=32 bytes",
            ));
        }
        let bytes = self.take(len)?;
        let s = std::str::from_utf8(bytes)
            .map_err(|_| DecodeError::InvalidField("bpf_load: bad name"))?;
        ObjectName::new(s).ok_or(DecodeError::InvalidField("bpf_load: bad name"))
    }

    fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Trailing(self.buf.len()))
        }
    }
}

/// Checks a length prefix before anything is read or allocated.
pub fn check_len(prefix: [u8; HEADER_LEN]) -> Result<usize, DecodeError> {
    let n = u32::from_be_bytes(prefix);
    if n as usize > MAX_BODY {
        return Err(DecodeError::Oversize(n));
    }
    if n < 2 {
        return Err(DecodeError::Undersize(n));
    }
    Ok(n as usize)
}

fn split_body(body: &[u8]) -> Result<(u8, Cursor<'_>), DecodeError> {
    if body.len() > MAX_BODY {
        return Err(DecodeError::Oversize(
            u32::try_from(body.len()).unwrap_or(u32::MAX),
        ));
    }
    let [version, ty, payload @ ..] = body else {
        return Err(DecodeError::Truncated);
    };
    if !(MIN_VERSION..=VERSION).contains(version) {
        return Err(DecodeError::UnsupportedVersion(*version));
    }
    Ok((*ty, Cursor { buf: payload }))
}

/// Decodes a request body (the bytes after the length prefix).
pub fn decode_request(body: &[u8]) -> Result<Request, DecodeError> {
    let (ty, mut c) = split_body(body)?;
    let req = match ty {
        T_HELLO => {
            let min_version = c.u8()?;
            let max_version = c.u8()?;
            if min_version > max_version {
                return Err(DecodeError::InvalidField(
                    "hello: min_version > max_version",
                ));
            }
            Request::Hello {
                min_version,
                max_version,
            }
        }
        T_CREATE_TUN => {
            let name = c.name()?;
            let a = c.take(4)?;
            let addr = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            let prefix = c.u8()?;
            if !(1..=32).contains(&prefix) {
                return Err(DecodeError::InvalidField(
                    "create_tun: prefix must be 1..=32",
                ));
            }
            let mtu = c.u16()?;
            Request::CreateTun(TunParams {
                name,
                addr,
                prefix,
                mtu,
            })
        }
        T_GET_KEY => Request::GetKey,
        T_BPF_LOAD => Request::BpfLoad {
            name: c.object_name()?,
            sha256: c.array32()?,
            ring_bytes: c.u32()?,
        },
        T_BPF_ATTACH => Request::BpfAttach { prog: c.u8()? },
        T_BPF_RELEASE => Request::BpfRelease,
        T_UPROBE_ATTACH => Request::UprobeAttach(UprobePoint {
            probe_id: c.u32()?,
            kind: c.u8()?,
            pid: c.u32()?,
            offset: c.u64()?,
            path: c.path()?,
        }),
        T_OPEN_TARGET => {
            let pid = c.u32()?;
            let port = c.u16()?;
            if pid == 0 && port == 0 {
                return Err(DecodeError::InvalidField(
                    "open_target: give a pid or a port",
                ));
            }
            Request::OpenTarget { pid, port }
        }
        other => return Err(DecodeError::UnknownType(other)),
    };
    c.finish()?;
    Ok(req)
}

/// Decodes one whole request frame (prefix + body) from the start of `buf`;
/// returns the request and the number of bytes used.
pub fn decode_request_frame(buf: &[u8]) -> Result<(Request, usize), DecodeError> {
    let prefix: [u8; HEADER_LEN] = buf
        .get(..HEADER_LEN)
        .and_then(|p| p.try_into().ok())
        .ok_or(DecodeError::Truncated)?;
    let n = check_len(prefix)?;
    let body = buf
        .get(HEADER_LEN..HEADER_LEN + n)
        .ok_or(DecodeError::Truncated)?;
    Ok((decode_request(body)?, HEADER_LEN + n))
}

/// Decodes a response body.
pub fn decode_response(body: &[u8]) -> Result<Response, DecodeError> {
    let (ty, mut c) = split_body(body)?;
    let resp = match ty {
        T_HELLO_OK => Response::HelloOk { version: c.u8()? },
        T_TUN_CREATED => {
            let name = c.name()?;
            let ifindex = c.u32()?;
            Response::TunCreated { name, ifindex }
        }
        T_KEY => Response::Key {
            public: c.array32()?,
        },
        T_BPF_LOADED => Response::BpfLoaded {
            maps: c.u8()?,
            progs: c.u8()?,
        },
        T_BPF_ATTACHED => Response::BpfAttached { prog: c.u8()? },
        T_BPF_RELEASED => Response::BpfReleased,
        T_UPROBE_ATTACHED => Response::UprobeAttached { probe_id: c.u32()? },
        T_TARGET_OPENED => Response::TargetOpened {
            pid: c.u32()?,
            path: c.path()?,
        },
        T_ERROR => {
            let code = ErrorCode::from_u8(c.u8()?);
            let len = usize::from(c.u16()?);
            if len > MAX_MESSAGE {
                return Err(DecodeError::InvalidField("error: message too long"));
            }
            let message = String::from_utf8_lossy(c.take(len)?).into_owned();
            Response::Error { code, message }
        }
        other => return Err(DecodeError::UnknownType(other)),
    };
    c.finish()?;
    Ok(resp)
}

fn frame(ty: u8, payload: &[u8]) -> Vec<u8> {
    let body_len = 2 + payload.len();
    debug_assert!(body_len <= MAX_BODY);
    let mut out = Vec::with_capacity(HEADER_LEN + body_len);
    out.extend_from_slice(&(body_len as u32).to_be_bytes());
    out.push(VERSION);
    out.push(ty);
    out.extend_from_slice(payload);
    out
}

fn push_name(out: &mut Vec<u8>, name: &IfName) {
    // IfName guarantees len <= 15.
    out.push(name.as_str().len() as u8);
    out.extend_from_slice(name.as_str().as_bytes());
}

/// Encodes a request as a whole frame.
pub fn encode_request(req: &Request) -> Vec<u8> {
    match req {
        Request::Hello {
            min_version,
            max_version,
        } => frame(T_HELLO, &[*min_version, *max_version]),
        Request::CreateTun(p) => {
            let mut pl = Vec::with_capacity(24);
            push_name(&mut pl, &p.name);
            pl.extend_from_slice(&p.addr.octets());
            pl.push(p.prefix);
            pl.extend_from_slice(&p.mtu.to_be_bytes());
            frame(T_CREATE_TUN, &pl)
        }
        Request::GetKey => frame(T_GET_KEY, &[]),
        Request::BpfLoad {
            name,
            sha256,
            ring_bytes,
        } => {
            let mut pl = Vec::with_capacity(1 + MAX_OBJECT_NAME + 36);
            pl.push(name.as_str().len() as u8);
            pl.extend_from_slice(name.as_str().as_bytes());
            pl.extend_from_slice(sha256);
            pl.extend_from_slice(&ring_bytes.to_be_bytes());
            frame(T_BPF_LOAD, &pl)
        }
        Request::BpfAttach { prog } => frame(T_BPF_ATTACH, &[*prog]),
        Request::BpfRelease => frame(T_BPF_RELEASE, &[]),
        Request::UprobeAttach(p) => {
            // Decoding checks the path; an over-long one is cut here so the
            // frame stays within MAX_BODY (and is then refused).
            let path = &p.path.as_bytes()[..p.path.len().min(MAX_PATH)];
            let mut pl = Vec::with_capacity(18 + path.len());
            pl.extend_from_slice(&p.probe_id.to_be_bytes());
            pl.push(p.kind);
            pl.extend_from_slice(&p.pid.to_be_bytes());
            pl.extend_from_slice(&p.offset.to_be_bytes());
            pl.push(path.len() as u8);
            pl.extend_from_slice(path);
            frame(T_UPROBE_ATTACH, &pl)
        }
        Request::OpenTarget { pid, port } => {
            let mut pl = pid.to_be_bytes().to_vec();
            pl.extend_from_slice(&port.to_be_bytes());
            frame(T_OPEN_TARGET, &pl)
        }
    }
}

/// Encodes a response as a whole frame. Error messages are cut to
/// `MAX_MESSAGE` bytes (at a character boundary).
pub fn encode_response(resp: &Response) -> Vec<u8> {
    match resp {
        Response::HelloOk { version } => frame(T_HELLO_OK, &[*version]),
        Response::TunCreated { name, ifindex } => {
            let mut pl = Vec::with_capacity(20);
            push_name(&mut pl, name);
            pl.extend_from_slice(&ifindex.to_be_bytes());
            frame(T_TUN_CREATED, &pl)
        }
        Response::Key { public } => frame(T_KEY, public),
        Response::BpfLoaded { maps, progs } => frame(T_BPF_LOADED, &[*maps, *progs]),
        Response::BpfAttached { prog } => frame(T_BPF_ATTACHED, &[*prog]),
        Response::BpfReleased => frame(T_BPF_RELEASED, &[]),
        Response::UprobeAttached { probe_id } => frame(T_UPROBE_ATTACHED, &probe_id.to_be_bytes()),
        Response::TargetOpened { pid, path } => {
            let path = &path.as_bytes()[..path.len().min(MAX_PATH)];
            let mut pl = pid.to_be_bytes().to_vec();
            pl.push(path.len() as u8);
            pl.extend_from_slice(path);
            frame(T_TARGET_OPENED, &pl)
        }
        Response::Error { code, message } => {
            let mut end = message.len().min(MAX_MESSAGE);
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            let msg = &message.as_bytes()[..end];
            let mut pl = Vec::with_capacity(3 + msg.len());
            pl.push(code.to_u8());
            pl.extend_from_slice(&(msg.len() as u16).to_be_bytes());
            pl.extend_from_slice(msg);
            frame(T_ERROR, &pl)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tun() -> Request {
        Request::CreateTun(TunParams {
            name: IfName::new("coral0").unwrap(),
            addr: Ipv4Addr::new(100, 64, 0, 1),
            prefix: 10,
            mtu: 1420,
        })
    }

    #[test]
    fn requests_round_trip() {
        for req in [
            Request::Hello {
                min_version: 1,
                max_version: 3,
            },
            tun(),
            Request::GetKey,
            Request::BpfLoad {
                name: ObjectName::new("coral").unwrap(),
                sha256: [7; 32],
                ring_bytes: 1 << 20,
            },
            Request::BpfAttach { prog: 3 },
            Request::BpfRelease,
            Request::UprobeAttach(UprobePoint {
                probe_id: 7,
                kind: 1,
                pid: 4242,
                offset: 0x4a_5b6c,
                path: "/usr/bin/app".into(),
            }),
            Request::OpenTarget { pid: 0, port: 8080 },
            Request::OpenTarget { pid: 42, port: 0 },
        ] {
            let f = encode_request(&req);
            assert_eq!(decode_request_frame(&f), Ok((req, f.len())));
        }
    }

    #[test]
    fn responses_round_trip() {
        for resp in [
            Response::HelloOk { version: 1 },
            Response::TunCreated {
                name: IfName::new("coral0").unwrap(),
                ifindex: 7,
            },
            Response::Key { public: [9; 32] },
            Response::BpfLoaded { maps: 3, progs: 20 },
            Response::BpfAttached { prog: 19 },
            Response::BpfReleased,
            Response::UprobeAttached { probe_id: 9 },
            Response::TargetOpened {
                pid: 7,
                path: "/srv/app".into(),
            },
            Response::Error {
                code: ErrorCode::Refused,
                message: "no".into(),
            },
        ] {
            let f = encode_response(&resp);
            assert_eq!(decode_response(&f[HEADER_LEN..]), Ok(resp));
        }
    }

    #[test]
    fn uprobe_paths_are_checked() {
        for bad in ["", "rel/path", "/a\0b"] {
            let f = encode_request(&Request::UprobeAttach(UprobePoint {
                probe_id: 1,
                kind: 0,
                pid: 1,
                offset: 0,
                path: bad.into(),
            }));
            assert!(
                matches!(decode_request_frame(&f), Err(DecodeError::InvalidField(_))),
                "{bad:?}"
            );
        }
        let long = format!("/{}", "a".repeat(300));
        let f = encode_request(&Request::UprobeAttach(UprobePoint {
            probe_id: 1,
            kind: 0,
            pid: 1,
            offset: 0,
            path: long,
        }));
        assert!(f.len() <= HEADER_LEN + MAX_BODY);
    }

    #[test]
    fn names_are_checked() {
        assert_eq!(IfName::new(""), Err(NameError::Empty));
        assert_eq!(IfName::new("a/b"), Err(NameError::BadChar));
        assert_eq!(IfName::new("coral%d"), Err(NameError::BadChar));
        assert_eq!(IfName::new(".."), Err(NameError::BadChar));
        assert_eq!(IfName::new("a b"), Err(NameError::BadChar));
        assert_eq!(IfName::new("0123456789abcdef"), Err(NameError::TooLong));
        assert!(IfName::new("0123456789abcde").is_ok());
        assert!(ObjectName::new("coral").is_some());
        for bad in ["", "Coral", "../x", "a b", &"a".repeat(33)] {
            assert!(ObjectName::new(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn malformed_frames_are_typed_errors() {
        let good = encode_request(&tun());
        // Truncated at every length.
        for n in 0..good.len() {
            assert!(decode_request_frame(&good[..n]).is_err(), "len {n}");
        }
        let mut bad = good.clone();
        bad[4] = 9;
        assert_eq!(
            decode_request_frame(&bad),
            Err(DecodeError::UnsupportedVersion(9))
        );
        let mut bad = good.clone();
        bad[5] = 0x42;
        assert_eq!(
            decode_request_frame(&bad),
            Err(DecodeError::UnknownType(0x42))
        );
        assert_eq!(
            check_len(u32::MAX.to_be_bytes()),
            Err(DecodeError::Oversize(u32::MAX))
        );
        // Trailing bytes.
        let mut bad = encode_request(&Request::GetKey);
        bad[3] += 1;
        bad.push(0);
        assert_eq!(decode_request_frame(&bad), Err(DecodeError::Trailing(1)));
        // Prefix 0 and 33.
        for p in [0u8, 33] {
            let mut bad = good.clone();
            let at = bad.len() - 3;
            bad[at] = p;
            assert!(matches!(
                decode_request_frame(&bad),
                Err(DecodeError::InvalidField(_))
            ));
        }
    }
}
