//! The helper's own sandbox (issue 16). The helper is two processes:
//!
//! - the **main process** serves the socket. After the start-up hygiene
//!   (`startup::sanitize`) it forks the target process, then confines
//!   itself: landlock ([`main_rules`]: `/dev/net/tun`, its state dir, the
//!   sysfs files BPF loading reads, nothing else) and a seccomp
//!   allowlist set on every thread ([`ALLOWED`]);
//! - the **target process** ([`crate::target`]) does the steps that need
//!   ptrace-class access to other processes, which a landlock domain
//!   forbids: `/proc/PID/{maps,exe,fd}` and `perf_event_open` filtered on a
//!   pid. It has no landlock, few capabilities and a much narrower seccomp
//!   list ([`TARGET_ALLOWED`]: single-threaded, read-only opens, no `bpf`,
//!   no `ioctl`).
//!
//! Anything not listed kills the process with `SIGSYS`; a few listed calls
//! are further limited by their arguments (Firecracker's and Cloud
//! Hypervisor's per-syscall rules are the model):
//!
//! - `clone` only with `CLONE_THREAD` (a connection thread; the main
//!   process never starts a process after the target process), `clone3`
//!   fails with `ENOSYS` (its flags are in memory a filter cannot read; the
//!   C library falls back to `clone`);
//! - `ioctl` only with the requests [`IOCTLS`] lists, `socket` only for the
//!   families [`SOCKET_FAMILIES`] lists, `prctl` only with [`PRCTLS`]; the
//!   target process's `openat` only without write flags: anything else
//!   fails with `EPERM`.
//!
//! The lists are reviewed data, one entry and one reason per call, per
//! architecture. What the main process does not get: `execve`, `fork`,
//! `ptrace`, `kill`, `setuid`, `chroot`, `mount`, `perf_event_open` (the
//! target process opens the uprobe events), `unshare`, `setns`, module
//! loading, `kexec`, keyrings, `process_vm_*`, `bind`/`listen` (the socket
//! is bound before the filter, or passed by systemd), `connect`. See
//! docs/privhelper.md.

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

use caps::{CapSet, Capability, CapsHashSet};
use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetError, RulesetStatus, Scope,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The system calls the helper makes, each with who needs it. Calls that
/// only exist on one architecture are in [`ARCH_ONLY`].
pub const ALLOWED: &[(i64, &str)] = &[
    // Memory.
    (libc::SYS_brk, "the allocator"),
    (
        libc::SYS_mmap,
        "the allocator, thread stacks, aya's ring-buffer maps",
    ),
    (libc::SYS_munmap, "the allocator, thread stacks"),
    (libc::SYS_mremap, "the allocator (growing buffers)"),
    (libc::SYS_mprotect, "thread stack guard pages"),
    (libc::SYS_madvise, "the allocator returning memory"),
    // Threads.
    (
        libc::SYS_clone,
        "a thread per connection (CLONE_THREAD only, see CLONE)",
    ),
    (
        libc::SYS_clone3,
        "answered ENOSYS, so the C library uses clone",
    ),
    (libc::SYS_futex, "locks, thread joins"),
    (libc::SYS_set_robust_list, "new threads"),
    (libc::SYS_rseq, "new threads (glibc)"),
    (libc::SYS_set_tid_address, "new threads"),
    (libc::SYS_sched_yield, "spin locks"),
    (
        libc::SYS_sched_getaffinity,
        "aya: the CPUs for per-CPU maps",
    ),
    (libc::SYS_gettid, "thread ids"),
    (libc::SYS_getpid, "the pid in log lines and temporary names"),
    (libc::SYS_exit, "a connection thread ends"),
    (libc::SYS_exit_group, "the helper exits"),
    (libc::SYS_rt_sigaction, "the runtime's signal set-up"),
    (
        libc::SYS_rt_sigprocmask,
        "new threads block signals while starting",
    ),
    (libc::SYS_rt_sigreturn, "return from a signal handler"),
    (
        libc::SYS_sigaltstack,
        "the stack-overflow handler of each thread",
    ),
    (libc::SYS_nanosleep, "the accept loop's back-off"),
    (libc::SYS_clock_nanosleep, "the accept loop's back-off"),
    (libc::SYS_clock_gettime, "rate limits and timeouts"),
    (
        libc::SYS_prctl,
        "thread names (PR_SET_NAME only, see PRCTLS)",
    ),
    // Files: the key file in the state dir, /proc and /sys facts,
    // /dev/net/tun, the target binaries of uprobes.
    (libc::SYS_openat, "every file the helper opens"),
    (libc::SYS_close, "every fd"),
    (libc::SYS_read, "requests, files"),
    (libc::SYS_write, "replies, the key file, log lines"),
    (libc::SYS_pread64, "the key file"),
    (libc::SYS_pwrite64, "the key file"),
    (libc::SYS_readv, "requests"),
    (libc::SYS_writev, "log lines"),
    (libc::SYS_lseek, "files read in parts"),
    (
        libc::SYS_fstat,
        "the key file's mode and owner; uprobe targets",
    ),
    (libc::SYS_newfstatat, "paths' metadata"),
    (libc::SYS_statx, "paths' metadata (std)"),
    (libc::SYS_fsync, "the key file and its directory"),
    (libc::SYS_fdatasync, "the key file"),
    (libc::SYS_ftruncate, "the sealed key memfd"),
    (libc::SYS_memfd_create, "the sealed key memfd"),
    (libc::SYS_renameat, "the key file appears whole"),
    (libc::SYS_renameat2, "the key file appears whole (std)"),
    (libc::SYS_unlinkat, "a failed key write is cleaned up"),
    (libc::SYS_mkdirat, "the state dir"),
    (libc::SYS_fchmod, "the state dir's and key file's mode"),
    (libc::SYS_fchmodat, "the state dir's mode"),
    (libc::SYS_fchown, "the state dir's owner"),
    (libc::SYS_fcntl, "CLOEXEC, seals on the key memfd, dup"),
    (
        libc::SYS_ioctl,
        "TUN set-up (listed requests only, see IOCTLS)",
    ),
    (libc::SYS_dup, "fd copies for replies"),
    (libc::SYS_dup3, "fd copies"),
    (libc::SYS_uname, "aya: the kernel version"),
    (libc::SYS_getrandom, "key generation; hash maps"),
    // Sockets: the callers' connections, an AF_INET socket for interface
    // ioctls, the target process's socketpair. Group lookups (the name
    // service) happen in the target process.
    (libc::SYS_accept4, "a caller connects"),
    (
        libc::SYS_socket,
        "interface ioctls (listed families, see SOCKET_FAMILIES)",
    ),
    (libc::SYS_getsockopt, "SO_PEERCRED of each caller"),
    (
        libc::SYS_setsockopt,
        "read/write timeouts of each connection",
    ),
    (libc::SYS_getsockname, "the activation socket is checked"),
    (
        libc::SYS_sendmsg,
        "replies with fds (SCM_RIGHTS); requests to the target process",
    ),
    (
        libc::SYS_recvmsg,
        "requests; the target process's replies with fds",
    ),
    (libc::SYS_sendto, "replies"),
    (libc::SYS_recvfrom, "requests"),
    (
        libc::SYS_shutdown,
        "a connection is closed after its answer",
    ),
    // BPF: the helper's job.
    (libc::SYS_bpf, "load the compiled-in objects, maps, links"),
    (
        libc::SYS_wait4,
        "reap the target process once it has exited (WNOHANG)",
    ),
    // Identity and limits.
    (
        libc::SYS_geteuid,
        "the state dir must be owned by the helper's user",
    ),
    (libc::SYS_getrlimit, "aya: the memlock limit"),
    (libc::SYS_prlimit64, "aya: the memlock limit"),
];

/// Calls of the older x86_64 table (aarch64 only has the `*at` forms).
#[cfg(target_arch = "x86_64")]
pub const ARCH_ONLY: &[(i64, &str)] = &[
    (libc::SYS_open, "files (older callers)"),
    (libc::SYS_stat, "paths' metadata (older callers)"),
    (libc::SYS_lstat, "paths' metadata (older callers)"),
    (libc::SYS_rename, "the key file appears whole"),
    (libc::SYS_unlink, "a failed key write is cleaned up"),
    (libc::SYS_mkdir, "the state dir"),
    (libc::SYS_chmod, "the state dir's mode"),
    (libc::SYS_arch_prctl, "thread-local storage of new threads"),
];
#[cfg(target_arch = "aarch64")]
pub const ARCH_ONLY: &[(i64, &str)] = &[];

/// `ioctl` requests the helper makes: TUN set-up (`tun.rs`). BPF programs
/// attach with `bpf` calls (links), never a perf event ioctl.
// The casts: libc's request and constant types differ by target (c_ulong
// on glibc, c_int on musl).
#[allow(clippy::unnecessary_cast)]
pub const IOCTLS: &[(u64, &str)] = &[
    (libc::TUNSETIFF as u64, "name the TUN device"),
    (libc::SIOCSIFMTU as u64, "its MTU"),
    (libc::SIOCSIFADDR as u64, "its address"),
    (libc::SIOCSIFNETMASK as u64, "its netmask"),
    (libc::SIOCGIFFLAGS as u64, "read its flags"),
    (libc::SIOCSIFFLAGS as u64, "bring it up"),
    (libc::SIOCGIFINDEX as u64, "its index"),
    (libc::FIOCLEX as u64, "close-on-exec (std)"),
    (libc::FIONBIO as u64, "non-blocking mode (std)"),
];

/// Socket families: `AF_INET` (interface ioctls on the TUN device). The
/// name service's `AF_UNIX` sockets are the target process's.
// The casts: libc's request and constant types differ by target (c_ulong
// on glibc, c_int on musl).
#[allow(clippy::unnecessary_cast)]
pub const SOCKET_FAMILIES: &[(u64, &str)] =
    &[(libc::AF_INET as u64, "interface ioctls on the TUN device")];

/// `prctl` options.
// The casts: libc's request and constant types differ by target (c_ulong
// on glibc, c_int on musl).
#[allow(clippy::unnecessary_cast)]
pub const PRCTLS: &[(u64, &str)] = &[(libc::PR_SET_NAME as u64, "thread names")];

/// `open` flags that write: any one of them is refused to a
/// [`Policy::read_only_open`] role.
#[allow(clippy::unnecessary_cast)]
const WRITE_FLAGS: &[u64] = &[
    libc::O_WRONLY as u64,
    libc::O_RDWR as u64,
    libc::O_CREAT as u64,
    libc::O_TRUNC as u64,
    libc::O_APPEND as u64,
];

/// Why the filter could not be set.
#[derive(Debug, thiserror::Error)]
#[error("cannot apply seccomp: {0}")]
pub struct SeccompError(String);

fn err(e: impl std::fmt::Display) -> SeccompError {
    SeccompError(e.to_string())
}

/// A role's seccomp policy, as data: the calls it may make, and the
/// arguments some of them are limited to. Shared by the helper and the
/// colony and agent (`coral_sandbox`).
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Allowed calls; anything else kills the process.
    pub allowed: Vec<i64>,
    /// `clone` only for threads (`CLONE_THREAD`); `clone3` fails with
    /// `ENOSYS`.
    pub threads_only: bool,
    /// `ioctl` requests allowed (second argument); others fail with `EPERM`.
    /// Empty: any request.
    pub ioctls: Vec<u64>,
    /// `socket` families allowed (first argument); others fail with `EPERM`.
    pub socket_families: Vec<u64>,
    /// `prctl` options allowed (first argument); others fail with `EPERM`.
    pub prctls: Vec<u64>,
    /// `openat` (and `open` on x86_64) only without write, create, truncate
    /// or append flags; others fail with `EPERM`.
    pub read_only_open: bool,
    /// Log instead of killing (for debugging a list).
    pub log_only: bool,
}

fn arch() -> Result<seccompiler::TargetArch, SeccompError> {
    std::env::consts::ARCH
        .try_into()
        .map_err(|e| SeccompError(format!("{e:?}")))
}

fn compile(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, SeccompError> {
    SeccompFilter::new(rules, mismatch, matched, arch()?)
        .map_err(err)?
        .try_into()
        .map_err(|e: seccompiler::BackendError| err(e))
}

/// A rule matching when argument `arg` is none of `values`.
fn none_of(arg: u8, len: SeccompCmpArgLen, values: &[u64]) -> Result<SeccompRule, SeccompError> {
    let conds = values
        .iter()
        .map(|v| SeccompCondition::new(arg, len.clone(), SeccompCmpOp::Ne, *v).map_err(err))
        .collect::<Result<Vec<_>, _>>()?;
    SeccompRule::new(conds).map_err(err)
}

impl Policy {
    /// The BPF programs, in the order they are installed: `clone3`
    /// (`ENOSYS`), the argument refusals (`EPERM`), then the allowlist
    /// (kill, or log). The kernel runs every filter and takes the strictest
    /// answer, so a call must pass all of them. The allowlist goes last:
    /// installing a filter needs `seccomp`, which no list has.
    pub fn programs(&self) -> Result<Vec<BpfProgram>, SeccompError> {
        let mut allow: BTreeMap<i64, Vec<SeccompRule>> =
            self.allowed.iter().map(|s| (*s, Vec::new())).collect();
        if self.threads_only && allow.contains_key(&libc::SYS_clone) {
            let thread = libc::CLONE_THREAD as u64;
            let cond = SeccompCondition::new(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(thread),
                thread,
            )
            .map_err(err)?;
            allow.insert(
                libc::SYS_clone,
                vec![SeccompRule::new(vec![cond]).map_err(err)?],
            );
        }
        let mismatch = if self.log_only {
            SeccompAction::Log
        } else {
            SeccompAction::KillProcess
        };
        let mut out = Vec::new();
        if self.threads_only {
            out.push(compile(
                BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
                SeccompAction::Allow,
                SeccompAction::Errno(libc::ENOSYS as u32),
            )?);
        }
        let mut refuse: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        // Request numbers are 32-bit: compare the low word, as the kernel does.
        if !self.ioctls.is_empty() {
            refuse.insert(
                libc::SYS_ioctl,
                vec![none_of(1, SeccompCmpArgLen::Dword, &self.ioctls)?],
            );
        }
        if !self.socket_families.is_empty() {
            refuse.insert(
                libc::SYS_socket,
                vec![none_of(0, SeccompCmpArgLen::Dword, &self.socket_families)?],
            );
        }
        if !self.prctls.is_empty() {
            // Installing the next filter sets no_new_privs again.
            let mut prctls = self.prctls.clone();
            prctls.push(libc::PR_SET_NO_NEW_PRIVS as u64);
            refuse.insert(
                libc::SYS_prctl,
                vec![none_of(0, SeccompCmpArgLen::Dword, &prctls)?],
            );
        }
        if self.read_only_open {
            let bits = |arg: u8| -> Result<Vec<SeccompRule>, SeccompError> {
                WRITE_FLAGS
                    .iter()
                    .map(|bit| {
                        let c = SeccompCondition::new(
                            arg,
                            SeccompCmpArgLen::Dword,
                            SeccompCmpOp::MaskedEq(*bit),
                            *bit,
                        )
                        .map_err(err)?;
                        SeccompRule::new(vec![c]).map_err(err)
                    })
                    .collect()
            };
            refuse.insert(libc::SYS_openat, bits(2)?);
            #[cfg(target_arch = "x86_64")]
            refuse.insert(libc::SYS_open, bits(1)?);
        }
        if !refuse.is_empty() {
            out.push(compile(
                refuse,
                SeccompAction::Allow,
                SeccompAction::Errno(libc::EPERM as u32),
            )?);
        }
        out.push(compile(allow, mismatch, SeccompAction::Allow)?);
        Ok(out)
    }

    /// Installs the filters on every thread of the process (with
    /// `no_new_privs`). Irreversible.
    pub fn apply(&self) -> Result<(), SeccompError> {
        for p in self.programs()? {
            seccompiler::apply_filter_all_threads(&p).map_err(err)?;
        }
        Ok(())
    }
}

/// The helper's policy.
#[allow(clippy::unnecessary_cast)] // c_ulong on 64-bit targets only
pub fn helper_policy() -> Policy {
    Policy {
        allowed: ALLOWED.iter().chain(ARCH_ONLY).map(|(s, _)| *s).collect(),
        threads_only: true,
        ioctls: IOCTLS.iter().map(|(r, _)| *r).collect(),
        socket_families: SOCKET_FAMILIES.iter().map(|(f, _)| *f).collect(),
        prctls: PRCTLS.iter().map(|(p, _)| *p).collect(),
        read_only_open: false,
        log_only: false,
    }
}

/// The system calls of the target process ([`crate::target`]), each with
/// who needs it. It is single-threaded, opens files read-only, and has no
/// `bpf`, `ioctl`, `clone`, `mount` or write to any file.
pub const TARGET_ALLOWED: &[(i64, &str)] = &[
    // Its conversation with the helper.
    (
        libc::SYS_recvmsg,
        "requests, with the caller's connection and a binary (SCM_RIGHTS)",
    ),
    (
        libc::SYS_sendmsg,
        "replies, with an opened file or perf event",
    ),
    (
        libc::SYS_getsockopt,
        "SO_PEERCRED: the caller's uid, read from its connection",
    ),
    (
        libc::SYS_getsockname,
        "the caller's connection was accepted on the helper's socket",
    ),
    (
        libc::SYS_getppid,
        "the connection's peer is not the helper itself",
    ),
    // Facts about processes and their binaries.
    (
        libc::SYS_openat,
        "/proc files, the binaries (read-only flags only, see read_only_open)",
    ),
    (libc::SYS_read, "/proc files, /etc/passwd and /etc/group"),
    (libc::SYS_close, "every fd"),
    (libc::SYS_lseek, "the name service reads its files again"),
    (libc::SYS_fstat, "binaries' type, size, device and inode"),
    (libc::SYS_newfstatat, "the same (the C library)"),
    (libc::SYS_statx, "the same (std)"),
    (
        libc::SYS_getdents64,
        "OpenTarget by port: /proc and /proc/PID/fd listings",
    ),
    (
        libc::SYS_readlinkat,
        "/proc/PID/exe, and /proc/PID/fd links (OpenTarget by port)",
    ),
    (
        libc::SYS_perf_event_open,
        "the uprobe perf event (PerfUprobe)",
    ),
    // The name service, for CheckUser's group lookups: files, and the
    // nscd or systemd-userdb sockets when the system has them.
    (
        libc::SYS_socket,
        "the name service's Unix sockets (AF_UNIX only, see TARGET_SOCKET_FAMILIES)",
    ),
    (libc::SYS_connect, "the name service's Unix sockets"),
    (libc::SYS_sendto, "the name service"),
    (libc::SYS_recvfrom, "the name service"),
    (libc::SYS_ppoll, "the name service"),
    (
        libc::SYS_setsockopt,
        "the name service (systemd's varlink socket options)",
    ),
    (libc::SYS_clock_gettime, "the name service's timeouts"),
    (libc::SYS_fcntl, "the name service (close-on-exec, flags)"),
    (libc::SYS_getuid, "the name service"),
    (libc::SYS_geteuid, "the name service"),
    (libc::SYS_getgid, "the name service"),
    (libc::SYS_getegid, "the name service"),
    (libc::SYS_mprotect, "the name service's modules (dlopen)"),
    // Memory and the rest of a process's life.
    (libc::SYS_brk, "the allocator"),
    (libc::SYS_mmap, "the allocator; the name service's modules"),
    (libc::SYS_munmap, "the allocator"),
    (libc::SYS_mremap, "the allocator (growing buffers)"),
    (libc::SYS_madvise, "the allocator returning memory"),
    (libc::SYS_futex, "std's locks (stderr)"),
    (libc::SYS_getrandom, "std's hash maps"),
    (libc::SYS_write, "log lines to stderr"),
    (libc::SYS_rt_sigreturn, "return from a signal handler"),
    (libc::SYS_rt_sigprocmask, "std (abort on a panic)"),
    (
        libc::SYS_exit_group,
        "it exits when the helper closes its end",
    ),
];

/// Calls of the older x86_64 table for the target process.
#[cfg(target_arch = "x86_64")]
pub const TARGET_ARCH_ONLY: &[(i64, &str)] = &[
    (
        libc::SYS_open,
        "files, older callers (read-only flags only)",
    ),
    (libc::SYS_stat, "paths' metadata (older callers)"),
    (libc::SYS_lstat, "paths' metadata (older callers)"),
    (libc::SYS_readlink, "/proc links (older callers)"),
    (libc::SYS_access, "the name service"),
    (libc::SYS_poll, "the name service (as ppoll)"),
];
#[cfg(target_arch = "aarch64")]
pub const TARGET_ARCH_ONLY: &[(i64, &str)] = &[];

/// Socket families of the target process: the name service only.
#[allow(clippy::unnecessary_cast)]
pub const TARGET_SOCKET_FAMILIES: &[(u64, &str)] = &[(
    libc::AF_UNIX as u64,
    "the name service (nscd, systemd-userdb)",
)];

/// The target process's policy: no threads, no ioctl, read-only opens.
#[allow(clippy::unnecessary_cast)]
pub fn target_policy() -> Policy {
    Policy {
        allowed: TARGET_ALLOWED
            .iter()
            .chain(TARGET_ARCH_ONLY)
            .map(|(s, _)| *s)
            .collect(),
        threads_only: false,
        ioctls: Vec::new(),
        socket_families: TARGET_SOCKET_FAMILIES.iter().map(|(f, _)| *f).collect(),
        prctls: Vec::new(),
        read_only_open: true,
        log_only: false,
    }
}

/// The capabilities the main process keeps once the target process is
/// running: everything it still does (TUN, keys, BPF) and nothing the
/// target process does for it. Dropped from the effective, permitted,
/// inheritable, ambient and bounding sets like the target's.
pub const MAIN_CAPS: &[(Capability, &str)] = &[
    (
        Capability::CAP_NET_ADMIN,
        "TUNSETIFF and the TUN device's address, MTU and link state",
    ),
    (
        Capability::CAP_BPF,
        "BPF maps and programs (BpfLoad), links on the perf events of BpfAttach and UprobeAttach",
    ),
    (
        Capability::CAP_PERFMON,
        "BPF programs that read kernel and user memory (BTF tracepoints, uprobes)",
    ),
];

/// Keeps those of `keep` this process has in its effective and permitted
/// sets, and nothing anywhere else. The bounding set is cut down too when
/// the process may (`CAP_SETPCAP`, which a systemd unit's bounding set may
/// lack); without it, it stays as the unit left it, which only matters to
/// an `execve`, which no filter of the helper allows.
pub fn keep_capabilities(keep: &[(Capability, &str)]) -> Result<(), String> {
    let err = |what: &str, e: caps::errors::CapsError| format!("{what}: {e}");
    let permitted = caps::read(None, CapSet::Permitted).map_err(|e| err("read capabilities", e))?;
    let keep: CapsHashSet = keep
        .iter()
        .map(|(c, _)| *c)
        .filter(|c| permitted.contains(c))
        .collect();
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)
        .map_err(|e| err("read capabilities", e))?
    {
        for c in caps::runtime::thread_all_supported() {
            if !keep.contains(&c) {
                caps::drop(None, CapSet::Bounding, c)
                    .map_err(|e| err(&format!("drop {c} from the bounding set"), e))?;
            }
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(|e| err("clear the ambient set", e))?;
    caps::clear(None, CapSet::Inheritable).map_err(|e| err("clear the inheritable set", e))?;
    caps::set(None, CapSet::Effective, &keep).map_err(|e| err("set the effective set", e))?;
    caps::set(None, CapSet::Permitted, &keep).map_err(|e| err("set the permitted set", e))
}

/// The landlock ABI the rules are written for (6: file systems, TCP and
/// scopes). Older kernels get what they support (best effort); on 6.12 and
/// later the whole set is enforced.
pub const LANDLOCK_ABI: ABI = ABI::V6;

/// The landlock ABI of the running kernel (0: no landlock).
pub fn kernel_landlock_abi() -> i64 {
    // SAFETY: landlock_create_ruleset with a NULL attr, size 0 and the
    // VERSION flag only returns the ABI version (or an error).
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32, // LANDLOCK_CREATE_RULESET_VERSION
        )
    };
    v.max(0)
}

/// One landlock rule of the helper's main process: a path, the rights
/// beneath it, and why.
pub struct LandlockRule {
    pub path: PathBuf,
    pub access: BitFlags<AccessFs>,
    pub why: &'static str,
}

/// The helper's main process's landlock rules: nothing else on any file
/// system, no TCP bind or connect, no abstract Unix socket or signal
/// outside its domain. The socket is bound and the state dir created before
/// they apply.
pub fn main_rules(state_dir: &Path) -> Vec<LandlockRule> {
    let read = AccessFs::ReadFile | AccessFs::ReadDir;
    vec![
        LandlockRule {
            path: PathBuf::from("/dev/net/tun"),
            access: AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::IoctlDev,
            why: "CreateTun: the TUN clone device and its TUNSETIFF ioctl",
        },
        LandlockRule {
            path: state_dir.to_path_buf(),
            access: AccessFs::from_all(LANDLOCK_ABI),
            why: "GetKey: the node key, written whole (temporary file, rename)",
        },
        LandlockRule {
            path: PathBuf::from("/sys/devices/system/cpu"),
            access: read,
            why: "BpfLoad: the possible CPUs (one ring buffer each)",
        },
        LandlockRule {
            path: PathBuf::from("/sys/kernel/btf"),
            access: read,
            why: "BpfLoad: the kernel's BTF (CO-RE relocations, BTF tracepoints)",
        },
    ]
}

/// What [`confine_main`] applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Landlocked {
    /// `fully`, `partially` or `not enforced`.
    pub status: &'static str,
    pub rules: usize,
}

/// Applies [`main_rules`] to the calling thread and the threads it starts
/// later (call it while the process has one thread). Irreversible.
pub fn confine_main(state_dir: &Path) -> Result<Landlocked, SeccompError> {
    let rules: Vec<_> = main_rules(state_dir)
        .into_iter()
        .filter(|r| r.path.exists())
        .collect();
    let abi = LANDLOCK_ABI;
    let lerr = |e: RulesetError| SeccompError(format!("landlock: {e}"));
    let mut created = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .map_err(lerr)?
        .handle_access(AccessNet::from_all(abi))
        .map_err(lerr)?
        .scope(Scope::from_all(abi))
        .map_err(lerr)?
        .create()
        .map_err(lerr)?;
    for r in &rules {
        let fd = PathFd::new(&r.path).map_err(|e| SeccompError(format!("landlock: {e}")))?;
        created = created
            .add_rule(PathBeneath::new(fd, r.access))
            .map_err(lerr)?;
    }
    let status = created.restrict_self().map_err(lerr)?;
    Ok(Landlocked {
        status: match status.ruleset {
            RulesetStatus::FullyEnforced => "fully",
            RulesetStatus::PartiallyEnforced => "partially",
            RulesetStatus::NotEnforced => "not enforced",
        },
        rules: rules.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 16 item 12: the helper's lists are reviewed data: every call
    /// and argument value has a reason and is listed once.
    #[test]
    fn every_listed_call_has_a_reason_and_is_listed_once() {
        let lists: [(&str, Vec<(u64, &str)>); 6] = [
            (
                "main process",
                ALLOWED
                    .iter()
                    .chain(ARCH_ONLY)
                    .map(|(s, w)| (*s as u64, *w))
                    .collect(),
            ),
            (
                "target process",
                TARGET_ALLOWED
                    .iter()
                    .chain(TARGET_ARCH_ONLY)
                    .map(|(s, w)| (*s as u64, *w))
                    .collect(),
            ),
            ("IOCTLS", IOCTLS.to_vec()),
            ("SOCKET_FAMILIES", SOCKET_FAMILIES.to_vec()),
            ("PRCTLS", PRCTLS.to_vec()),
            ("TARGET_SOCKET_FAMILIES", TARGET_SOCKET_FAMILIES.to_vec()),
        ];
        for (name, list) in lists {
            let mut seen = BTreeMap::new();
            for (v, why) in list {
                assert!(!why.trim().is_empty(), "{name}: {v} has no reason");
                assert!(seen.insert(v, why).is_none(), "{name}: {v} is listed twice");
            }
        }
        // The target process is much narrower than the main process, and
        // has none of what it must not do.
        let target = target_policy().allowed;
        assert!(target.len() * 3 < helper_policy().allowed.len() * 2);
        for forbidden in [
            libc::SYS_bpf,
            libc::SYS_ioctl,
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_mount,
            libc::SYS_ptrace,
            libc::SYS_process_vm_readv,
            libc::SYS_pwrite64,
            libc::SYS_renameat,
            libc::SYS_unlinkat,
            libc::SYS_prctl,
            libc::SYS_capset,
        ] {
            assert!(!target.contains(&forbidden), "{forbidden}");
        }
        // The main process mounts nothing and opens no perf event (the
        // target process opens the uprobe events).
        let main = helper_policy().allowed;
        for forbidden in [libc::SYS_mount, libc::SYS_perf_event_open] {
            assert!(!main.contains(&forbidden), "{forbidden}");
        }
    }
}
