//! The helper's own sandbox (issue 16): a seccomp allowlist set on every
//! thread after the start-up hygiene (`startup::sanitize`) and before the
//! helper serves its first request. Anything not listed kills the process
//! with `SIGSYS`; a few listed calls are further limited by their
//! arguments (Firecracker's and Cloud Hypervisor's per-syscall rules are the
//! model):
//!
//! - `clone` only with `CLONE_THREAD` (a connection thread; the helper never
//!   starts a process), `clone3` fails with `ENOSYS` (its flags are in
//!   memory a filter cannot read; the C library falls back to `clone`);
//! - `ioctl` only with the requests [`IOCTLS`] lists, `socket` only for the
//!   families [`SOCKET_FAMILIES`] lists, `prctl` only with [`PRCTLS`], and
//!   `mount` only with the flags of the tracefs mount: anything else fails
//!   with `EPERM`.
//!
//! The list is reviewed data, one entry and one reason per call, per
//! architecture ([`ALLOWED`]). What the helper does not get: `execve`,
//! `fork`, `ptrace`, `kill`, `setuid`, `chroot`, `unshare`, `setns`,
//! module loading, `kexec`, keyrings, `process_vm_*`, `bind`/`listen` (the
//! socket is bound before the filter, or passed by systemd).
//!
//! No landlock: a landlock domain forbids ptrace-class access to every
//! process outside it, and `OpenTarget` and `UprobeAttach` need exactly
//! that (`/proc/PID/maps`, `/proc/PID/exe`, `/proc/PID/fd`, and
//! `perf_event_open` on the target's pid). See docs/privhelper.md.

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};
use std::collections::BTreeMap;

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
    // Files: the key file in the state dir, /proc and /sys facts, tracefs
    // ids, /dev/net/tun, the target binaries of uprobes.
    (libc::SYS_openat, "every file the helper opens"),
    (libc::SYS_close, "every fd"),
    (libc::SYS_read, "requests, files"),
    (libc::SYS_write, "replies, the key file, log lines"),
    (
        libc::SYS_pread64,
        "the key file; ELF sections of uprobe targets",
    ),
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
    (libc::SYS_statfs, "aya: is tracefs/bpffs mounted"),
    (libc::SYS_fstatfs, "aya"),
    (
        libc::SYS_getdents64,
        "OpenTarget: /proc and /proc/PID/fd listings",
    ),
    (libc::SYS_readlinkat, "OpenTarget: /proc/PID/fd links"),
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
        "TUN set-up and BPF attach (listed requests only, see IOCTLS)",
    ),
    (libc::SYS_dup, "fd copies for replies"),
    (libc::SYS_dup3, "fd copies"),
    (
        libc::SYS_mount,
        "tracefs on /sys/kernel/tracing when absent (its flags only)",
    ),
    (libc::SYS_uname, "aya: the kernel version"),
    (libc::SYS_getrandom, "key generation; hash maps"),
    // Sockets: the callers' connections, an AF_INET socket for interface
    // ioctls, AF_UNIX for the C library's name service (group lookups).
    (libc::SYS_accept4, "a caller connects"),
    (
        libc::SYS_socket,
        "interface ioctls, name service (listed families, see SOCKET_FAMILIES)",
    ),
    (
        libc::SYS_connect,
        "the name service (nscd, systemd-userdb) for group lookups",
    ),
    (libc::SYS_getsockopt, "SO_PEERCRED of each caller"),
    (
        libc::SYS_setsockopt,
        "read/write timeouts of each connection",
    ),
    (libc::SYS_getsockname, "the activation socket is checked"),
    (libc::SYS_getpeername, "the name service"),
    (libc::SYS_sendmsg, "replies with fds (SCM_RIGHTS)"),
    (libc::SYS_recvmsg, "requests"),
    (libc::SYS_sendto, "replies; the name service"),
    (libc::SYS_recvfrom, "requests; the name service"),
    (
        libc::SYS_shutdown,
        "a connection is closed after its answer",
    ),
    (libc::SYS_ppoll, "the name service"),
    // BPF and perf: the helper's job.
    (libc::SYS_bpf, "load the compiled-in objects, maps, links"),
    (libc::SYS_perf_event_open, "tracepoint and uprobe events"),
    // Identity.
    (libc::SYS_getuid, "the name service"),
    (libc::SYS_geteuid, "the name service"),
    (libc::SYS_getgid, "the name service"),
    (libc::SYS_getegid, "the name service"),
    (libc::SYS_getrlimit, "aya: the memlock limit"),
    (libc::SYS_prlimit64, "aya: the memlock limit"),
];

/// Calls of the older x86_64 table (aarch64 only has the `*at` forms).
#[cfg(target_arch = "x86_64")]
pub const ARCH_ONLY: &[(i64, &str)] = &[
    (libc::SYS_open, "files (older callers)"),
    (libc::SYS_stat, "paths' metadata (older callers)"),
    (libc::SYS_lstat, "paths' metadata (older callers)"),
    (libc::SYS_access, "the name service"),
    (libc::SYS_readlink, "OpenTarget: /proc/PID/fd links"),
    (libc::SYS_rename, "the key file appears whole"),
    (libc::SYS_unlink, "a failed key write is cleaned up"),
    (libc::SYS_mkdir, "the state dir"),
    (libc::SYS_chmod, "the state dir's mode"),
    (libc::SYS_arch_prctl, "thread-local storage of new threads"),
    (libc::SYS_poll, "the name service (as ppoll)"),
];
#[cfg(target_arch = "aarch64")]
pub const ARCH_ONLY: &[(i64, &str)] = &[];

/// `ioctl` requests the helper makes: TUN set-up (`tun.rs`) and BPF
/// attach to perf events (aya, `bpf.rs`).
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
    (PERF_EVENT_IOC_ENABLE, "enable a perf event (aya)"),
    (PERF_EVENT_IOC_DISABLE, "disable a perf event (aya)"),
    (
        PERF_EVENT_IOC_SET_BPF,
        "attach a program to a perf event (aya, older kernels)",
    ),
];
const PERF_EVENT_IOC_ENABLE: u64 = 0x2400;
const PERF_EVENT_IOC_DISABLE: u64 = 0x2401;
const PERF_EVENT_IOC_SET_BPF: u64 = 0x4004_2408;

/// Socket families: `AF_UNIX` (the name service), `AF_INET` (interface
/// ioctls), `AF_NETLINK` (aya's netlink attach paths are not used, but the
/// C library's interface queries are).
// The casts: libc's request and constant types differ by target (c_ulong
// on glibc, c_int on musl).
#[allow(clippy::unnecessary_cast)]
pub const SOCKET_FAMILIES: &[(u64, &str)] = &[
    (libc::AF_UNIX as u64, "the name service"),
    (libc::AF_INET as u64, "interface ioctls on the TUN device"),
];

/// `prctl` options.
// The casts: libc's request and constant types differ by target (c_ulong
// on glibc, c_int on musl).
#[allow(clippy::unnecessary_cast)]
pub const PRCTLS: &[(u64, &str)] = &[(libc::PR_SET_NAME as u64, "thread names")];

/// Why the filter could not be set.
#[derive(Debug, thiserror::Error)]
#[error("cannot apply seccomp: {0}")]
pub struct SeccompError(String);

fn err(e: impl std::fmt::Display) -> SeccompError {
    SeccompError(e.to_string())
}

/// A role's seccomp policy, as data: the calls it may make, and the
/// arguments some of them are limited to. Shared by the helper and the
/// colony and agent (`coral_agent::sandbox`).
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
    /// When set, `mount` only with exactly these flags (fourth argument).
    pub mount_flags: Option<u64>,
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
        if let Some(flags) = self.mount_flags {
            refuse.insert(
                libc::SYS_mount,
                vec![none_of(3, SeccompCmpArgLen::Qword, &[flags])?],
            );
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
        mount_flags: Some((libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC) as u64),
        log_only: false,
    }
}
