//! Attaching Coral's uprobe program (`coral-ebpf`'s [`coral_ebpf::UPROBE`])
//! at one point of a running process (issue 12): the `UprobeAttach` request,
//! and the same steps for an agent that holds `CAP_BPF` + `CAP_PERFMON`.
//!
//! The caller names a binary, a file offset, a process and the kind of
//! point. Before anything reaches the kernel this module
//!
//! 1. refuses a process of another user (unless the caller is root);
//! 2. opens the binary itself and checks that this very file (device and
//!    inode) is mapped executable in the process (`/proc/PID/maps`);
//! 3. decodes the binary itself ([`crate::elfcode`]) and checks the offset:
//!    a function's entry for entry probes and uretprobes, an instruction
//!    boundary of the linear sweep from the function's entry for Go return
//!    instructions; a uretprobe on a Go binary is refused.
//!
//! The probe is a perf event of the `uprobe` PMU opened on
//! `/proc/self/fd/N` (the file that was checked, not the path again),
//! filtered to the process, and a BPF link with the cookie
//! `probe_id << 8 | kind`. Only the link fd is returned: closing it (or the
//! death of its holder) removes the probe. Nothing is pinned and nothing is
//! written to tracefs.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::bpf::{self, BpfError, Loaded, failed};
use crate::elfcode::{Binary, MAX_BINARY_BYTES, PointKind};

/// One attach point, as a caller asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<'a> {
    pub probe_id: u32,
    /// `coral_ebpf::KIND_*`.
    pub kind: u8,
    pub pid: u32,
    pub path: &'a Path,
    /// File offset in `path`.
    pub offset: u64,
}

/// The last binary decoded (a session attaches many points in one binary).
#[derive(Default)]
pub struct Checker {
    cache: Option<(FileKey, Binary, Vec<u8>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

fn invalid(msg: impl Into<String>) -> BpfError {
    BpfError::Invalid(msg.into())
}

/// The real uid of a process (`Uid:` in `/proc/PID/status`).
fn process_uid(pid: u32) -> Result<u32, BpfError> {
    let s = fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|_| invalid(format!("no process {pid}")))?;
    s.lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| invalid(format!("cannot read the owner of process {pid}")))
}

fn dev_major_minor(dev: u64) -> (u64, u64) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major, minor)
}

/// Whether `/proc/PID/maps` has an executable mapping of (dev, ino).
fn mapped_executable(pid: u32, dev: u64, ino: u64) -> Result<bool, BpfError> {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps"))
        .map_err(|e| failed(format!("read /proc/{pid}/maps"), e))?;
    let (maj, min) = dev_major_minor(dev);
    Ok(maps.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (Some(_), Some(perms), Some(_), Some(d), Some(i)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            return false;
        };
        let Some((a, b)) = d.split_once(':') else {
            return false;
        };
        perms.contains('x')
            && u64::from_str_radix(a, 16) == Ok(maj)
            && u64::from_str_radix(b, 16) == Ok(min)
            && i.parse::<u64>() == Ok(ino)
    }))
}

/// Steps 1 and 2 of the module doc: the binary at `path`, opened, if
/// `pid` belongs to `caller_uid` (any process for root) and maps this very
/// file executable. In the helper this runs in the target process
/// ([`crate::target`]).
pub fn open_binary(pid: u32, path: &Path, caller_uid: u32) -> Result<File, BpfError> {
    if pid == 0 {
        return Err(invalid("pid 0"));
    }
    check_owner(pid, caller_uid)?;
    if !path.is_absolute() {
        return Err(invalid("the binary path must be absolute"));
    }
    let file =
        File::open(path).map_err(|e| invalid(format!("cannot open {}: {e}", path.display())))?;
    check_mapped(&file, pid, &path.display().to_string())?;
    Ok(file)
}

/// `pid` belongs to `caller_uid`, or the caller is root.
pub fn check_owner(pid: u32, caller_uid: u32) -> Result<(), BpfError> {
    let owner = process_uid(pid)?;
    if caller_uid != 0 && caller_uid != owner {
        return Err(invalid(format!(
            "process {pid} belongs to uid {owner}; uid {caller_uid} may only probe its own processes"
        )));
    }
    Ok(())
}

/// `file` is a regular file of at most [`MAX_BINARY_BYTES`] that `pid` maps
/// executable.
pub fn check_mapped(file: &File, pid: u32, name: &str) -> Result<(), BpfError> {
    let md = file
        .metadata()
        .map_err(|e| failed(format!("stat {name}"), e))?;
    if !md.is_file() || md.len() > MAX_BINARY_BYTES {
        return Err(invalid(format!(
            "{name} is not a regular file of at most {MAX_BINARY_BYTES} bytes"
        )));
    }
    if !mapped_executable(pid, md.dev(), md.ino())? {
        return Err(invalid(format!(
            "{name} is not mapped executable in process {pid}"
        )));
    }
    Ok(())
}

/// The kind and probe id of `t` are ones the uprobe object knows.
fn point_kind(t: &Target<'_>) -> Result<PointKind, BpfError> {
    let kind = match t.kind {
        coral_ebpf::KIND_ENTRY => PointKind::Entry,
        coral_ebpf::KIND_RET_INSN => PointKind::Instruction,
        coral_ebpf::KIND_URETPROBE => PointKind::Return,
        k => return Err(invalid(format!("unknown attach point kind {k}"))),
    };
    if t.probe_id >= coral_ebpf::UPROBE_MAX_PROBES {
        return Err(invalid(format!(
            "probe id {} is not below {}",
            t.probe_id,
            coral_ebpf::UPROBE_MAX_PROBES
        )));
    }
    Ok(kind)
}

impl Checker {
    /// Steps 1 to 3 of the module doc; returns the open file and the name of
    /// the function the point belongs to.
    pub fn check(&mut self, t: &Target<'_>, caller_uid: u32) -> Result<(File, String), BpfError> {
        point_kind(t)?;
        let mut file = open_binary(t.pid, t.path, caller_uid)?;
        let function = self.check_opened(&mut file, t)?;
        Ok((file, function))
    }

    /// Step 3 of the module doc on a binary opened (and checked) by
    /// [`open_binary`]; returns the name of the function the point belongs to.
    pub fn check_opened(&mut self, file: &mut File, t: &Target<'_>) -> Result<String, BpfError> {
        let kind = point_kind(t)?;
        let md = file
            .metadata()
            .map_err(|e| failed(format!("stat {}", t.path.display()), e))?;
        if !md.is_file() || md.len() > MAX_BINARY_BYTES {
            return Err(invalid(format!(
                "{} is not a regular file of at most {MAX_BINARY_BYTES} bytes",
                t.path.display()
            )));
        }
        let key = FileKey {
            dev: md.dev(),
            ino: md.ino(),
            size: md.len(),
            mtime_ns: i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec()),
        };
        if self.cache.as_ref().map(|c| c.0) != Some(key) {
            self.cache = None;
            let mut data = Vec::with_capacity(md.len() as usize);
            file.read_to_end(&mut data)
                .map_err(|e| failed(format!("read {}", t.path.display()), e))?;
            let bin = Binary::parse(&data).map_err(|e| invalid(e.to_string()))?;
            self.cache = Some((key, bin, data));
        }
        let (_, bin, data) = self.cache.as_ref().expect("just filled");
        let f = bin
            .check_point(data, t.offset, kind)
            .map_err(|e| invalid(e.to_string()))?;
        Ok(f.name.clone())
    }
}

/// The pid of the process listening on TCP `port` on loopback or any
/// address (IPv4 or IPv6): the socket inode from `/proc/net/tcp{,6}`, then
/// the first process holding it among those whose fds can be read.
pub fn find_listener(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(s) = fs::read_to_string(table) else {
            continue;
        };
        for l in s.lines().skip(1) {
            let f: Vec<_> = l.split_whitespace().collect();
            // local_address is "ADDR:PORT" in hex; st 0A is LISTEN.
            if f.len() > 9
                && f[3] == "0A"
                && f[1]
                    .rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
                    == Some(port)
            {
                inodes.push(format!("socket:[{}]", f[9]));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for p in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(l) = fs::read_link(fd.path())
                && inodes.iter().any(|i| l.as_os_str() == i.as_str())
            {
                return Some(pid);
            }
        }
    }
    None
}

/// `OpenTarget`: the process (`pid`, or the listener on `port` when `pid`
/// is 0) if it belongs to `caller_uid` (any process for root), its
/// executable's path as `/proc/PID/exe` names it, and the executable opened
/// read-only.
pub fn open_target(pid: u32, port: u16, caller_uid: u32) -> Result<(u32, String, File), BpfError> {
    let pid = match pid {
        0 => find_listener(port)
            .ok_or_else(|| invalid(format!("no process listens on TCP port {port}")))?,
        p => p,
    };
    check_owner(pid, caller_uid)?;
    let exe = format!("/proc/{pid}/exe");
    let path = fs::read_link(&exe)
        .ok()
        .and_then(|p| p.to_str().map(str::to_owned))
        .filter(|p| p.starts_with('/') && p.len() <= crate::protocol::MAX_PATH && !p.contains('\0'))
        .unwrap_or_else(|| exe.clone());
    let file = File::open(&exe).map_err(|e| invalid(format!("cannot open {exe}: {e}")))?;
    Ok((pid, path, file))
}

fn read_sysfs(path: &str) -> Result<String, BpfError> {
    fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|e| failed(format!("read {path} (uprobes unsupported?)"), e))
}

/// The `uprobe` PMU's type and the config bit that makes a uretprobe.
fn uprobe_pmu() -> Result<(u32, u32), BpfError> {
    let ty = read_sysfs("/sys/bus/event_source/devices/uprobe/type")?
        .parse()
        .map_err(|e| failed("parse the uprobe PMU type", e))?;
    let fmt = read_sysfs("/sys/bus/event_source/devices/uprobe/format/retprobe")?;
    let bit = fmt
        .strip_prefix("config:")
        .and_then(|b| b.parse().ok())
        .filter(|b: &u32| *b < 64)
        .ok_or_else(|| invalid(format!("unexpected uprobe retprobe format '{fmt}'")))?;
    Ok((ty, bit))
}

fn check_object(loaded: &Loaded) -> Result<(), BpfError> {
    if loaded.name() != coral_ebpf::UPROBE {
        return Err(invalid(format!(
            "the object loaded is '{}', not '{}'",
            loaded.name(),
            coral_ebpf::UPROBE
        )));
    }
    Ok(())
}

/// Checks `t` ([`Checker::check`]) and attaches `loaded`'s uprobe program
/// there, all in this process (a daemon with `CAP_BPF` + `CAP_PERFMON`);
/// returns the BPF link fd and the function's name.
pub fn attach(
    loaded: &Loaded,
    checker: &mut Checker,
    t: &Target<'_>,
    caller_uid: u32,
) -> Result<(OwnedFd, String), BpfError> {
    check_object(loaded)?;
    let (file, function) = checker.check(t, caller_uid)?;
    let perf = perf_uprobe(&file, t.pid, t.offset, t.kind)
        .map_err(|e| with_function(e, &function, t.offset))?;
    Ok((link(loaded, &perf, t, &function)?, function))
}

/// The same steps in the helper: the target process
/// ([`crate::target::TargetProcess`]) opens and checks the binary (steps 1
/// and 2) and opens the perf event; this process decodes the binary (step
/// 3) and creates the BPF link. `conn` is the caller's connection: the
/// target process reads the caller's uid from it itself.
pub fn attach_through(
    loaded: &Loaded,
    checker: &mut Checker,
    t: &Target<'_>,
    tp: &crate::target::TargetProcess,
    conn: std::os::fd::BorrowedFd<'_>,
) -> Result<(OwnedFd, String), BpfError> {
    check_object(loaded)?;
    point_kind(t)?;
    let mut file = tp.open_binary(conn, t.pid, t.path)?;
    let function = checker.check_opened(&mut file, t)?;
    let perf = tp
        .perf_uprobe(conn, &file, t.pid, t.offset, t.kind)
        .map_err(|e| with_function(e, &function, t.offset))?;
    Ok((link(loaded, &perf, t, &function)?, function))
}

fn with_function(e: BpfError, function: &str, offset: u64) -> BpfError {
    match e {
        BpfError::Failed { what, reason } if what == PERF_WHAT => BpfError::Failed {
            what: format!("perf_event_open uprobe {function}+{offset:#x}"),
            reason,
        },
        e => e,
    }
}

const PERF_WHAT: &str = "perf_event_open uprobe";

/// The perf event of the `uprobe` PMU at `offset` in `file` (opened as
/// `/proc/self/fd/N`: the file that was checked, not a path again),
/// filtered to `pid`; a uretprobe for [`coral_ebpf::KIND_URETPROBE`].
pub fn perf_uprobe(file: &File, pid: u32, offset: u64, kind: u8) -> Result<OwnedFd, BpfError> {
    let (pmu, ret_bit) = uprobe_pmu()?;
    let pid = libc::c_int::try_from(pid)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| invalid(format!("pid {pid} is out of range")))?;
    let path = format!("/proc/self/fd/{}\0", file.as_raw_fd());
    let mut attr = bpf::PerfEventAttr {
        type_: pmu,
        size: std::mem::size_of::<bpf::PerfEventAttr>() as u32,
        config: if kind == coral_ebpf::KIND_URETPROBE {
            1 << ret_bit
        } else {
            0
        },
        sample_period: 1,
        wakeup_events: 1,
        ..Default::default()
    };
    attr.rest[0] = path.as_ptr() as u64; // config1: uprobe_path
    attr.rest[1] = offset; // config2: probe_offset
    // SAFETY: perf_event_open reads `size` bytes from a valid attr, and the
    // NUL-terminated path config1 points to; both outlive the call.
    let perf = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const bpf::PerfEventAttr,
            pid,
            -1 as libc::c_int,
            -1 as libc::c_int,
            bpf::PERF_FLAG_FD_CLOEXEC,
        )
    };
    if perf < 0 {
        return Err(failed(PERF_WHAT, io::Error::last_os_error()));
    }
    // SAFETY: the syscall just returned this new fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(perf as libc::c_int) })
}

/// The BPF link of `loaded`'s uprobe program on the perf event `perf`, with
/// the cookie `probe_id << 8 | kind`.
fn link(
    loaded: &Loaded,
    perf: &OwnedFd,
    t: &Target<'_>,
    function: &str,
) -> Result<OwnedFd, BpfError> {
    let prog_fd = loaded
        .progs
        .first()
        .ok_or_else(|| invalid("no uprobe program loaded"))?;
    let mut link_attr = bpf::LinkCreateAttr {
        prog_fd: prog_fd.as_raw_fd() as u32,
        target_fd: perf.as_raw_fd() as u32,
        attach_type: bpf::BPF_PERF_EVENT,
        ..Default::default()
    };
    link_attr.rest[0] = coral_ebpf::uprobe_cookie(t.probe_id, t.kind); // perf_event.bpf_cookie
    // SAFETY: bpf(BPF_LINK_CREATE) reads `size` bytes from a valid attr
    // whose unused tail is zero.
    let link = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf::BPF_LINK_CREATE,
            &link_attr as *const bpf::LinkCreateAttr,
            std::mem::size_of::<bpf::LinkCreateAttr>() as libc::c_uint,
        )
    };
    if link < 0 {
        return Err(failed(
            format!("attach uprobe {function}+{:#x}", t.offset),
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: as above; the link holds the perf event, which holds the
    // probe, so `perf` and the binary's file may close now.
    Ok(unsafe { OwnedFd::from_raw_fd(link as libc::c_int) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_is_found_and_opened() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let me = std::process::id();
        assert_eq!(find_listener(port), Some(me));
        let uid = nix::unistd::getuid().as_raw();
        let (pid, path, mut f) = open_target(0, port, uid).unwrap();
        assert_eq!(pid, me);
        assert_eq!(Path::new(&path), fs::read_link("/proc/self/exe").unwrap());
        let mut head = [0u8; 4];
        f.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"\x7fELF");
        drop(l);
        assert!(open_target(0, port, uid).is_err());
    }

    #[test]
    fn devices_split_like_the_kernel() {
        assert_eq!(dev_major_minor(0x0803), (8, 3));
        assert_eq!(dev_major_minor((259 << 8) | 1), (259, 1));
    }

    #[test]
    fn own_binary_is_mapped_and_points_are_checked() {
        let me = std::process::id();
        let exe = fs::read_link("/proc/self/exe").unwrap();
        let md = fs::metadata(&exe).unwrap();
        assert!(mapped_executable(me, md.dev(), md.ino()).unwrap());
        assert!(!mapped_executable(me, md.dev(), md.ino() + 1_000_000).unwrap());
        let data = fs::read(&exe).unwrap();
        let bin = Binary::parse(&data).unwrap();
        let f = bin.functions.iter().find(|f| f.size > 8).unwrap();
        let mut c = Checker::default();
        let t = |offset, kind| Target {
            probe_id: 1,
            kind,
            pid: me,
            path: &exe,
            offset,
        };
        let uid = nix::unistd::getuid().as_raw();
        assert!(c.check(&t(f.offset, coral_ebpf::KIND_ENTRY), uid).is_ok());
        assert!(c.check(&t(f.offset, 9), uid).is_err());
        assert!(
            c.check(
                &Target {
                    path: Path::new("rel"),
                    ..t(f.offset, 0)
                },
                uid
            )
            .is_err()
        );
        // Another user's process (pid 1 is root's) is refused to a non-root caller.
        if uid == 0 {
            assert!(
                c.check(
                    &Target {
                        pid: 1,
                        ..t(f.offset, 0)
                    },
                    12345
                )
                .is_err()
            );
        }
    }
}
