//! TUN device creation. The helper calls this for its callers; a daemon that
//! already has `CAP_NET_ADMIN` calls it directly.

use std::fs::OpenOptions;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use nix::errno::Errno;
use nix::libc;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
use thiserror::Error;

use crate::protocol::{IfName, TunParams};

/// A TUN device: the fd keeps it alive (it is not persistent).
#[derive(Debug)]
pub struct Tun {
    pub fd: OwnedFd,
    pub name: IfName,
    pub ifindex: u32,
}

/// Which step of creating the device failed, with the OS error.
#[derive(Debug, Error)]
pub enum TunError {
    #[error("cannot open /dev/net/tun: {0}")]
    Open(std::io::Error),
    #[error("cannot create TUN device {name}: {errno}{hint}")]
    Create {
        name: String,
        errno: Errno,
        hint: &'static str,
    },
    #[error("cannot configure TUN device {name} ({step}): {errno}")]
    Configure {
        name: String,
        step: &'static str,
        errno: Errno,
    },
    #[error("invalid TUN parameters: {0}")]
    Invalid(&'static str),
}

impl TunError {
    /// Whether the failure is a missing privilege (EPERM/EACCES).
    pub fn is_permission(&self) -> bool {
        match self {
            TunError::Open(e) => e.kind() == std::io::ErrorKind::PermissionDenied,
            TunError::Create { errno, .. } | TunError::Configure { errno, .. } => {
                matches!(errno, Errno::EPERM | Errno::EACCES)
            }
            TunError::Invalid(_) => false,
        }
    }
}

nix::ioctl_write_ptr_bad!(tunsetiff, libc::TUNSETIFF, libc::ifreq);
nix::ioctl_write_ptr_bad!(siocsifmtu, libc::SIOCSIFMTU, libc::ifreq);
nix::ioctl_write_ptr_bad!(siocsifaddr, libc::SIOCSIFADDR, libc::ifreq);
nix::ioctl_write_ptr_bad!(siocsifnetmask, libc::SIOCSIFNETMASK, libc::ifreq);
nix::ioctl_write_ptr_bad!(siocsifflags, libc::SIOCSIFFLAGS, libc::ifreq);
nix::ioctl_readwrite_bad!(siocgifflags, libc::SIOCGIFFLAGS, libc::ifreq);
nix::ioctl_readwrite_bad!(siocgifindex, libc::SIOCGIFINDEX, libc::ifreq);

/// Smallest and largest MTU accepted.
pub const MIN_MTU: u16 = 576;
pub const MAX_MTU: u16 = 9000;

fn ifreq(name: &IfName) -> libc::ifreq {
    // SAFETY: ifreq is plain old data (arrays, integers, a union of those and
    // pointers); all-zero is a valid value for every field.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    // IfName is at most 15 ASCII bytes, so the name stays NUL-terminated.
    for (dst, src) in req.ifr_name.iter_mut().zip(name.as_str().bytes()) {
        *dst = src as libc::c_char;
    }
    req
}

fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr are both 16 bytes on Linux, and the
    // kernel reads an AF_INET sockaddr in ifr_addr as a sockaddr_in.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// The netmask for a prefix length of 0..=32.
pub fn netmask(prefix: u8) -> Ipv4Addr {
    let bits = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    };
    Ipv4Addr::from(bits)
}

/// Creates the TUN device `p.name` (IFF_TUN | IFF_NO_PI, and IFF_TUN_EXCL so
/// an existing device is never taken over), sets its MTU, address and
/// netmask (the kernel adds the connected route) and brings the link up.
/// Dropping the returned fd removes the device.
pub fn create(p: &TunParams) -> Result<Tun, TunError> {
    if !(1..=32).contains(&p.prefix) {
        return Err(TunError::Invalid("prefix must be 1..=32"));
    }
    if !(MIN_MTU..=MAX_MTU).contains(&p.mtu) {
        return Err(TunError::Invalid("MTU must be 576..=9000"));
    }
    let name = p.name.as_str().to_owned();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(TunError::Open)?;
    let fd = OwnedFd::from(file);

    let mut req = ifreq(&p.name);
    req.ifr_ifru.ifru_flags =
        (libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_TUN_EXCL) as libc::c_short;
    // SAFETY: fd is an open /dev/net/tun, req is a valid ifreq that outlives
    // the call, and TUNSETIFF only reads it (and writes the final name back).
    unsafe { tunsetiff(fd.as_raw_fd(), &req) }.map_err(|errno| TunError::Create {
        name: name.clone(),
        errno,
        hint: match errno {
            Errno::EBUSY => " (a device with this name already exists)",
            Errno::EPERM => " (needs CAP_NET_ADMIN)",
            _ => "",
        },
    })?;

    let cfg = |step: &'static str| {
        let name = name.clone();
        move |errno| TunError::Configure { name, step, errno }
    };
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(cfg("control socket"))?;
    let s = sock.as_raw_fd();

    let mut r = ifreq(&p.name);
    r.ifr_ifru.ifru_mtu = libc::c_int::from(p.mtu);
    // SAFETY: s is an open AF_INET socket; r is a valid ifreq for the call.
    unsafe { siocsifmtu(s, &r) }.map_err(cfg("set MTU"))?;

    let mut r = ifreq(&p.name);
    r.ifr_ifru.ifru_addr = sockaddr_in(p.addr);
    // SAFETY: as above; ifru_addr holds an AF_INET address.
    unsafe { siocsifaddr(s, &r) }.map_err(cfg("set address"))?;

    let mut r = ifreq(&p.name);
    r.ifr_ifru.ifru_netmask = sockaddr_in(netmask(p.prefix));
    // SAFETY: as above; ifru_netmask holds an AF_INET netmask.
    unsafe { siocsifnetmask(s, &r) }.map_err(cfg("set netmask"))?;

    let mut r = ifreq(&p.name);
    // SAFETY: as above; the kernel writes ifru_flags into r.
    unsafe { siocgifflags(s, &mut r) }.map_err(cfg("get flags"))?;
    // SAFETY: SIOCGIFFLAGS succeeded, so ifru_flags is the initialised member.
    let flags = unsafe { r.ifr_ifru.ifru_flags };
    r.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: as above; only ifru_flags is read by the kernel.
    unsafe { siocsifflags(s, &r) }.map_err(cfg("link up"))?;

    let mut r = ifreq(&p.name);
    // SAFETY: as above; the kernel writes ifru_ifindex into r.
    unsafe { siocgifindex(s, &mut r) }.map_err(cfg("get ifindex"))?;
    // SAFETY: SIOCGIFINDEX succeeded, so ifru_ifindex is the initialised member.
    let ifindex = unsafe { r.ifr_ifru.ifru_ifindex };

    Ok(Tun {
        fd,
        name: p.name.clone(),
        ifindex: u32::try_from(ifindex).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netmasks() {
        assert_eq!(netmask(10), Ipv4Addr::new(255, 192, 0, 0));
        assert_eq!(netmask(32), Ipv4Addr::new(255, 255, 255, 255));
        assert_eq!(netmask(1), Ipv4Addr::new(128, 0, 0, 0));
        assert_eq!(netmask(0), Ipv4Addr::new(0, 0, 0, 0));
    }
}
