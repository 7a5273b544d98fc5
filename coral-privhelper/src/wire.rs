//! Frame I/O on a Unix stream socket, with fds passed as `SCM_RIGHTS`.

use std::io::{self, IoSlice, IoSliceMut, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, UnixAddr, recvmsg, sendmsg};
use thiserror::Error;

use crate::protocol::{self, DecodeError, HEADER_LEN, MAX_BODY, Response};

#[derive(Debug, Error)]
pub enum WireError {
    #[error("the peer closed the connection")]
    Eof,
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("malformed frame: {0}")]
    Decode(#[from] DecodeError),
    #[error("expected {expected} fd(s) with the reply, got {got}")]
    Fds { expected: usize, got: usize },
}

/// One `sendmsg` of `bytes`, with `fds` as `SCM_RIGHTS` when there are any,
/// retried on EINTR; the bytes sent. The helper's socket to its callers and
/// the socketpair to its target process both go through it.
pub(crate) fn send_with_fds(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[RawFd],
) -> io::Result<usize> {
    let iov = [IoSlice::new(bytes)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    loop {
        match sendmsg::<UnixAddr>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Err(nix::errno::Errno::EINTR) => {}
            r => return r.map_err(io::Error::from),
        }
    }
}

/// One `recvmsg` into `buf`, with room for `N` fds, retried on EINTR: the
/// bytes read and the message's flags (`MSG_TRUNC`, `MSG_CTRUNC` say what
/// was cut). The fds that came are appended to `fds`, owned and
/// close-on-exec.
pub(crate) fn recv_with_fds<const N: usize>(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<(usize, MsgFlags)> {
    loop {
        let mut cmsg = nix::cmsg_space!([RawFd; N]);
        let mut iov = [IoSliceMut::new(buf)];
        let msg = match recvmsg::<UnixAddr>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => m,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        for c in msg.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                for r in raw {
                    // SAFETY: the kernel just installed this fd in our table
                    // (SCM_RIGHTS); nothing else owns it.
                    fds.push(unsafe { OwnedFd::from_raw_fd(r) });
                }
            }
        }
        return Ok((msg.bytes, msg.flags));
    }
}

/// Sends a whole frame; `fd`, if any, rides with the first byte.
pub fn send_frame(sock: &UnixStream, frame: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
    send_frame_fds(sock, frame, fd.as_slice())
}

/// Sends a whole frame with any number of fds (at most `MAX_FDS`) riding
/// with the first byte.
pub fn send_frame_fds(sock: &UnixStream, frame: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if fds.len() > protocol::MAX_FDS {
        return Err(io::Error::other("too many fds for one message"));
    }
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let mut sent = 0;
    while sent < frame.len() {
        let with = if sent == 0 { &raw[..] } else { &[] };
        match send_with_fds(sock.as_fd(), &frame[sent..], with)? {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            n => sent += n,
        }
    }
    Ok(())
}

fn read_exact_or_eof(sock: &mut UnixStream, buf: &mut [u8]) -> Result<(), WireError> {
    let mut got = 0;
    while got < buf.len() {
        match sock.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Err(WireError::Eof),
            Ok(0) => return Err(DecodeError::Truncated.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Reads one frame body (server side). Any fds a client sends are discarded
/// by the kernel because `read` passes no control buffer.
pub fn read_body(sock: &mut UnixStream) -> Result<Vec<u8>, WireError> {
    let mut prefix = [0u8; HEADER_LEN];
    read_exact_or_eof(sock, &mut prefix)?;
    let n = protocol::check_len(prefix)?;
    let mut body = vec![0u8; n];
    match read_exact_or_eof(sock, &mut body) {
        Err(WireError::Eof) => Err(DecodeError::Truncated.into()),
        other => other.map(|()| body),
    }
}

/// Reads one response frame and the fds that came with it (client side).
pub fn recv_response(sock: &UnixStream) -> Result<(Response, Vec<OwnedFd>), WireError> {
    let mut buf = [0u8; HEADER_LEN + MAX_BODY];
    let mut fds: Vec<OwnedFd> = Vec::new();
    let mut got = 0;
    let mut want = HEADER_LEN;
    while got < want {
        let (n, flags) =
            recv_with_fds::<{ protocol::MAX_FDS }>(sock.as_fd(), &mut buf[got..want], &mut fds)?;
        if flags.contains(MsgFlags::MSG_CTRUNC) {
            return Err(WireError::Fds {
                expected: protocol::MAX_FDS,
                got: fds.len() + 1,
            });
        }
        if n == 0 {
            return Err(if got == 0 {
                WireError::Eof
            } else {
                DecodeError::Truncated.into()
            });
        }
        got += n;
        if got == HEADER_LEN && want == HEADER_LEN {
            let mut p = [0u8; HEADER_LEN];
            p.copy_from_slice(&buf[..HEADER_LEN]);
            want = HEADER_LEN + protocol::check_len(p)?;
        }
    }
    let resp = protocol::decode_response(&buf[HEADER_LEN..want])?;
    let expected = resp.fd_count();
    if fds.len() != expected {
        return Err(WireError::Fds {
            expected,
            got: fds.len(),
        });
    }
    Ok((resp, fds))
}
