//! The sandbox the colony and the agent put themselves in before they open
//! their stores or start their async runtime, so every thread they ever
//! have is confined:
//!
//! - **landlock**: read-write only beneath the role's own state and runtime
//!   directories; read-only (and execute) where code and system facts live;
//!   nothing else (no home directories, no other users' files);
//! - **seccomp**: a per-role allowlist of system calls (below, one comment
//!   per group); anything else kills the process with `SIGSYS`. Set on the
//!   main thread while it is the only thread, with `no_new_privs`, and
//!   synchronised to all threads, so `/proc/<pid>/task/*/status` shows
//!   `Seccomp: 2` everywhere.
//!
//! `ioctl`, `socket` and `prctl` are allowed to the colony and the agent
//! only with the arguments [`DAEMON_IOCTLS`], [`DAEMON_SOCKET_FAMILIES`] and
//! [`DAEMON_PRCTLS`] list (others fail with `EPERM`); the filters are built
//! by `coral_privhelper::sandbox::Policy`, which the helper uses for its own.
//!
//! The agent never runs a program itself (issue 16): `coral exec` commands
//! start in the exec spawner (`exec::spawner`), a process the agent starts
//! before it confines itself. The agent's list has no `execve`, no `fork`,
//! and `clone` only with `CLONE_THREAD` (threads, not processes); `clone3`,
//! whose flags a filter cannot see, fails with `ENOSYS` so the C library
//! falls back to `clone`. The spawner has its own role: it may read
//! everything, write nothing but the commands' cgroups, and its syscall list
//! carries what the commands need (they inherit it). Each command is then
//! confined on its own by [`confine_command`]: the system paths plus the
//! paths its allowed arguments name.
//!
//! `--sandbox=log` logs would-be violations of the syscall list to the
//! kernel log instead of killing, and skips landlock; `--sandbox=off`
//! applies nothing. Both are for debugging.

use landlock::{
    ABI, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus,
    path_beneath_rules,
};
use std::path::{Path, PathBuf};

/// How the sandbox is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    Off,
    /// Log syscall-list violations (kernel audit log), no landlock.
    Log,
    #[default]
    Enforce,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(Mode::Off),
            "log" => Ok(Mode::Log),
            "enforce" => Ok(Mode::Enforce),
            _ => Err(format!("sandbox mode '{s}' must be off, log or enforce")),
        }
    }
}

/// Which process is confined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Colony,
    Agent,
    /// The agent's exec spawner (and, inherited, the commands it runs).
    Spawner,
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot apply landlock: {0}")]
    Landlock(String),
    #[error("cannot apply seccomp: {0}")]
    Seccomp(String),
}

/// What [`apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub mode: Mode,
    /// `fully`, `partially` or `not enforced` (kernel without landlock).
    pub landlock: &'static str,
    pub syscalls: usize,
}

/// Paths the role may write beneath (its state and runtime directories),
/// and extra paths it may read.
#[derive(Debug, Clone, Default)]
pub struct Paths {
    pub writable: Vec<PathBuf>,
    pub readable: Vec<PathBuf>,
}

/// Read-only (and executable) system paths every role needs: code and
/// libraries, configuration (`/etc`: time zone, resolver, users; the
/// agent's policy), and system facts (`/proc`, `/sys`: DuckDB reads memory
/// and CPU limits there; `ps`/`ss` read them for `coral exec`).
const SYSTEM_READ: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc", "/proc", "/sys", "/opt",
];
/// Device files: the null device (children's stdin), randomness, and the
/// TUN clone device (a daemon with the privilege creates its own TUN).
const DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/urandom",
    "/dev/random",
    "/dev/zero",
    "/dev/net/tun",
];

/// Confines the calling process. Call it while the process has one thread.
pub fn apply(role: Role, mode: Mode, paths: &Paths) -> Result<Applied, SandboxError> {
    let threads = std::fs::read_dir("/proc/self/task").map_or(1, |d| d.count());
    if threads > 1 && mode == Mode::Enforce {
        // landlock confines only the calling thread: a thread started
        // earlier would stay unconfined.
        return Err(SandboxError::Landlock(format!(
            "{threads} threads are already running; the sandbox must be applied first"
        )));
    }
    if mode == Mode::Off {
        return Ok(Applied {
            mode,
            landlock: "off",
            syscalls: 0,
        });
    }
    let landlock = if mode == Mode::Enforce {
        landlock(paths, DEVICES)?
    } else {
        "off"
    };
    let list = allowlist(role);
    let syscalls = list.len();
    seccomp(role, &list, mode)?;
    Ok(Applied {
        mode,
        landlock,
        syscalls,
    })
}

/// Confines a command `coral exec` is about to `execve` (called by the
/// shim, a single-threaded process): it may read and execute the system
/// paths, read `reads` (the paths its allowed arguments name), write the
/// null, zero and random devices, and no file. Returns how fully the kernel enforces it.
pub fn confine_command(reads: &[PathBuf]) -> Result<&'static str, SandboxError> {
    landlock(
        &Paths {
            writable: Vec::new(),
            readable: reads.to_vec(),
        },
        COMMAND_DEVICES,
    )
}

/// Devices a command may use: the null device, randomness, zeros.
const COMMAND_DEVICES: &[&str] = &["/dev/null", "/dev/urandom", "/dev/random", "/dev/zero"];

fn landlock(paths: &Paths, devices: &[&str]) -> Result<&'static str, SandboxError> {
    let abi = ABI::V3;
    let err = |e: landlock::RulesetError| SandboxError::Landlock(e.to_string());
    let existing =
        |v: Vec<PathBuf>| -> Vec<PathBuf> { v.into_iter().filter(|p| p.exists()).collect() };
    let read: Vec<PathBuf> = existing(
        SYSTEM_READ
            .iter()
            .map(PathBuf::from)
            .chain(paths.readable.iter().cloned())
            .collect(),
    );
    let devices = existing(devices.iter().map(PathBuf::from).collect());
    let writable = existing(paths.writable.clone());
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .map_err(err)?
        .create()
        .map_err(err)?
        .add_rules(path_beneath_rules(&read, AccessFs::from_read(abi)))
        .map_err(err)?
        .add_rules(path_beneath_rules(
            &devices,
            AccessFs::from_read(abi) | AccessFs::WriteFile,
        ))
        .map_err(err)?
        .add_rules(path_beneath_rules(&writable, AccessFs::from_all(abi)))
        .map_err(err)?
        .restrict_self()
        .map_err(err)?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => "fully",
        RulesetStatus::PartiallyEnforced => "partially",
        RulesetStatus::NotEnforced => "not enforced",
    })
}

fn seccomp(role: Role, list: &[i64], mode: Mode) -> Result<(), SandboxError> {
    // The colony and the agent: threads only, and the arguments of ioctl,
    // socket and prctl limited to the lists below (EPERM otherwise). The
    // spawner's commands make whatever calls diagnostic tools make.
    let daemon = role != Role::Spawner;
    let pick = |list: &[(u64, &str)]| -> Vec<u64> {
        if daemon {
            list.iter().map(|(v, _)| *v).collect()
        } else {
            Vec::new()
        }
    };
    coral_privhelper::sandbox::Policy {
        allowed: list.to_vec(),
        threads_only: daemon,
        ioctls: pick(DAEMON_IOCTLS),
        socket_families: pick(DAEMON_SOCKET_FAMILIES),
        prctls: pick(DAEMON_PRCTLS),
        mount_flags: None,
        log_only: mode == Mode::Log,
    }
    .apply()
    .map_err(|e| SandboxError::Seccomp(e.to_string()))
}

/// `ioctl` requests the colony and the agent make; any other fails with
/// `EPERM` (issue 16).
// The casts: libc's request and constant types differ by target (c_ulong
// on glibc, c_int on musl).
#[allow(clippy::unnecessary_cast)]
pub const DAEMON_IOCTLS: &[(u64, &str)] = &[
    (libc::FIONBIO as u64, "non-blocking sockets (std, tokio)"),
    (libc::FIOCLEX as u64, "close-on-exec (std)"),
    (libc::FIONCLEX as u64, "clear close-on-exec (std)"),
    (libc::FIONREAD as u64, "bytes waiting on a socket"),
    (libc::TCGETS as u64, "is the log a terminal (colours)"),
    (libc::TIOCGWINSZ as u64, "terminal width of the log"),
    (
        libc::TUNSETIFF as u64,
        "a TUN device made without the helper (CAP_NET_ADMIN)",
    ),
    (libc::SIOCSIFMTU as u64, "its MTU"),
    (libc::SIOCSIFADDR as u64, "its address"),
    (libc::SIOCSIFNETMASK as u64, "its netmask"),
    (libc::SIOCGIFFLAGS as u64, "its flags"),
    (libc::SIOCSIFFLAGS as u64, "bring it up"),
    (libc::SIOCGIFINDEX as u64, "its index"),
    (
        0x2400,
        "PERF_EVENT_IOC_ENABLE: BPF loaded without the helper (aya)",
    ),
    (0x2401, "PERF_EVENT_IOC_DISABLE: the same"),
    (
        0x4004_2408,
        "PERF_EVENT_IOC_SET_BPF: the same, older kernels",
    ),
];

/// Socket families the colony and the agent open; any other fails with
/// `EPERM`: no raw packets, no kernel crypto, no Bluetooth...
// The casts: libc's request and constant types differ by target (c_ulong
// on glibc, c_int on musl).
#[allow(clippy::unnecessary_cast)]
pub const DAEMON_SOCKET_FAMILIES: &[(u64, &str)] = &[
    (libc::AF_UNIX as u64, "control, MCP and helper sockets"),
    (
        libc::AF_INET as u64,
        "OTLP, the control plane, the mesh's UDP",
    ),
    (libc::AF_INET6 as u64, "the same over IPv6"),
    (
        libc::AF_NETLINK as u64,
        "the C library's address lookups (getaddrinfo)",
    ),
];

/// `prctl` options the colony and the agent use; others fail with `EPERM`.
// The casts: libc's request and constant types differ by target (c_ulong
// on glibc, c_int on musl).
#[allow(clippy::unnecessary_cast)]
pub const DAEMON_PRCTLS: &[(u64, &str)] = &[
    (libc::PR_SET_NAME as u64, "thread names (tokio, DuckDB)"),
    (libc::PR_GET_NAME as u64, "thread names"),
];

/// Tries one ioctl the colony and the agent may not make
/// (`FS_IOC_GETFLAGS` on `path`), for `coral sandbox-check`.
pub fn try_refused_ioctl(path: &Path) -> std::io::Result<()> {
    let f = std::fs::File::open(path)?;
    rustix::fs::ioctl_getflags(&f)
        .map(|_| ())
        .map_err(std::io::Error::from)
}

/// The system calls each role may make. Reviewed data: add a call only with
/// a comment saying who needs it.
pub fn allowlist(role: Role) -> Vec<i64> {
    use libc::*;
    let mut v: Vec<i64> = vec![
        // Memory: the allocator, DuckDB's buffer manager, thread stacks.
        SYS_brk,
        SYS_mmap,
        SYS_munmap,
        SYS_mremap,
        SYS_mprotect,
        SYS_madvise,
        SYS_mlock,
        SYS_munlock,
        SYS_membarrier,
        // Threads and synchronisation: tokio workers, DuckDB and SQLite threads.
        SYS_clone,
        SYS_clone3,
        SYS_futex,
        SYS_set_robust_list,
        SYS_get_robust_list,
        SYS_rseq,
        SYS_set_tid_address,
        SYS_sched_yield,
        SYS_sched_getaffinity,
        SYS_sched_setaffinity,
        SYS_gettid,
        SYS_getpid,
        SYS_getppid,
        SYS_exit,
        SYS_exit_group,
        SYS_tgkill,
        SYS_tkill,
        SYS_kill,
        SYS_nanosleep,
        SYS_clock_nanosleep,
        // Signals: tokio's signal handling (SIGTERM, SIGINT, SIGHUP, SIGCHLD).
        SYS_rt_sigaction,
        SYS_rt_sigprocmask,
        SYS_rt_sigreturn,
        SYS_sigaltstack,
        SYS_rt_sigtimedwait,
        // Time.
        SYS_clock_gettime,
        SYS_clock_getres,
        SYS_gettimeofday,
        // Files: stores, logs, sockets' paths, /proc and /sys reads (landlock
        // decides which paths).
        SYS_openat,
        SYS_close,
        SYS_close_range,
        SYS_read,
        SYS_write,
        SYS_pread64,
        SYS_pwrite64,
        SYS_readv,
        SYS_writev,
        SYS_preadv,
        SYS_pwritev,
        SYS_lseek,
        SYS_fstat,
        SYS_newfstatat,
        SYS_statx,
        SYS_statfs,
        SYS_fstatfs,
        SYS_faccessat,
        SYS_faccessat2,
        SYS_readlinkat,
        SYS_getdents64,
        SYS_fsync,
        SYS_fdatasync,
        SYS_ftruncate,
        SYS_fallocate,
        SYS_renameat,
        SYS_renameat2,
        SYS_unlinkat,
        SYS_mkdirat,
        SYS_fchmod,
        SYS_fchmodat,
        SYS_flock,
        SYS_fcntl,
        SYS_ioctl,
        SYS_dup,
        SYS_dup3,
        SYS_pipe2,
        SYS_getcwd,
        SYS_chdir,
        SYS_fchdir,
        SYS_umask,
        SYS_utimensat,
        SYS_copy_file_range,
        SYS_sendfile,
        SYS_memfd_create,
        SYS_fadvise64,
        SYS_sync_file_range,
        SYS_symlinkat,
        SYS_linkat,
        // SQLite, when running as root, gives new journal and WAL files the
        // owner of their database.
        SYS_fchown,
        SYS_fchownat,
        // Event loops: tokio (epoll, eventfd), timers.
        SYS_epoll_create1,
        SYS_epoll_ctl,
        SYS_epoll_pwait,
        SYS_epoll_pwait2,
        SYS_eventfd2,
        SYS_ppoll,
        SYS_pselect6,
        SYS_timerfd_create,
        SYS_timerfd_settime,
        SYS_signalfd4,
        // Sockets: Unix control/MCP sockets (with peer credentials), TCP
        // control plane, OTLP listeners, UDP for the mesh.
        SYS_socket,
        SYS_socketpair,
        SYS_bind,
        SYS_listen,
        SYS_accept,
        SYS_accept4,
        SYS_connect,
        SYS_getsockname,
        SYS_getpeername,
        SYS_getsockopt,
        SYS_setsockopt,
        SYS_sendto,
        SYS_recvfrom,
        SYS_sendmsg,
        SYS_recvmsg,
        SYS_sendmmsg,
        SYS_recvmmsg,
        SYS_shutdown,
        // Identity and limits: users for peer checks, rlimits, uname, random.
        SYS_getuid,
        SYS_geteuid,
        SYS_getgid,
        SYS_getegid,
        SYS_getgroups,
        SYS_getresuid,
        SYS_getresgid,
        SYS_getrlimit,
        SYS_prlimit64,
        SYS_getrusage,
        SYS_uname,
        SYS_sysinfo,
        SYS_getrandom,
        SYS_prctl,
        SYS_getcpu,
        SYS_getpriority,
        SYS_setpriority,
        SYS_times,
        // Processes: `coral --daemon` children and the agent's waits.
        SYS_wait4,
        SYS_waitid,
    ];
    match role {
        Role::Colony => {}
        Role::Agent => v.extend([
            // The eBPF reader: map and ring-buffer operations on fds the
            // helper (or the agent itself, with the privilege) created.
            SYS_bpf,
            SYS_perf_event_open,
        ]),
        Role::Spawner => v.extend([
            // `coral exec` (issue 16): the spawner starts each command in
            // its own process group through the shim, kills the group on
            // the agent's word or when the command ends, and reaps it. The
            // command inherits this list; its own needs follow.
            SYS_execve,
            SYS_execveat,
            SYS_setpgid,
            SYS_getpgid,
            SYS_setsid,
            SYS_getsid,
            SYS_pidfd_open,
            SYS_pidfd_send_signal,
            SYS_setrlimit,
            SYS_setitimer,
            SYS_getitimer,
            // The shim confines the command with landlock before `execve`.
            SYS_landlock_create_ruleset,
            SYS_landlock_add_rule,
            SYS_landlock_restrict_self,
            // Diagnostic commands: ps/top read /proc, ss uses netlink
            // sockets (allowed above), psql, and terminal handling.
            SYS_sched_getparam,
            SYS_sched_getscheduler,
            SYS_capget,
            SYS_getxattr,
            SYS_lgetxattr,
            SYS_fgetxattr,
            SYS_listxattr,
            SYS_llistxattr,
            SYS_mincore,
            SYS_msync,
            SYS_shmget,
            SYS_shmat,
            SYS_shmdt,
            SYS_shmctl,
            SYS_inotify_init1,
            SYS_inotify_add_watch,
            SYS_inotify_rm_watch,
        ]),
    }
    // x86_64 also has the older calls the *at forms replaced; aarch64 has
    // only the *at forms, so these exist on x86_64 alone.
    #[cfg(target_arch = "x86_64")]
    {
        v.extend([
            SYS_open,       // files (older callers), as openat
            SYS_stat,       // metadata, as newfstatat
            SYS_lstat,      // metadata, as newfstatat
            SYS_access,     // as faccessat
            SYS_readlink,   // as readlinkat
            SYS_rename,     // as renameat
            SYS_unlink,     // as unlinkat
            SYS_mkdir,      // as mkdirat
            SYS_rmdir,      // as unlinkat
            SYS_chmod,      // as fchmodat
            SYS_symlink,    // as symlinkat
            SYS_link,       // as linkat
            SYS_dup2,       // as dup3
            SYS_pipe,       // as pipe2
            SYS_epoll_wait, // as epoll_pwait
            SYS_poll,       // as ppoll
            SYS_select,     // as pselect6
            SYS_time,       // the vDSO's fallback
            SYS_arch_prctl, // thread-local storage of new threads
        ]);
        if role == Role::Spawner {
            v.extend([
                SYS_fork,    // commands' own children (shells)
                SYS_vfork,   // posix_spawn in commands
                SYS_getpgrp, // shells' job control
                SYS_alarm,   // commands' timers
                SYS_pause,   // commands' waits
                SYS_chown,   // commands (as fchownat)
                SYS_lchown,  // commands (as fchownat)
            ]);
        }
    }
    v.sort_unstable();
    v.dedup();
    v
}

/// Where each role may write: its state directory and its runtime
/// directory; the agent also manages the cgroups of `coral exec` commands.
pub fn paths(role: Role, state_dir: &Path, runtime_dir: &Path, readable: &[PathBuf]) -> Paths {
    let mut writable = vec![state_dir.to_path_buf(), runtime_dir.to_path_buf()];
    if role == Role::Agent {
        writable.push(PathBuf::from("/sys/fs/cgroup"));
    }
    if role == Role::Spawner {
        return spawner_paths();
    }
    Paths {
        writable,
        readable: readable.to_vec(),
    }
}

/// The exec spawner reads everything (each command's own landlock set,
/// which it cannot widen, decides what the command reads) and writes only
/// the commands' `cgroup.procs` files (the shim joins the cgroup).
pub fn spawner_paths() -> Paths {
    Paths {
        writable: vec![PathBuf::from("/sys/fs/cgroup")],
        readable: vec![PathBuf::from("/")],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_lists_are_sane() {
        assert_eq!("enforce".parse::<Mode>().unwrap(), Mode::Enforce);
        assert!("strict".parse::<Mode>().is_err());
        let colony = allowlist(Role::Colony);
        let agent = allowlist(Role::Agent);
        assert!(colony.len() < agent.len());
        for forbidden in [
            libc::SYS_ptrace,
            libc::SYS_mount,
            libc::SYS_init_module,
            libc::SYS_kexec_load,
            libc::SYS_setns,
            libc::SYS_unshare,
            libc::SYS_process_vm_readv,
            libc::SYS_keyctl,
        ] {
            assert!(!agent.contains(&forbidden), "{forbidden}");
        }
        assert!(!colony.contains(&libc::SYS_execve));
        // Issue 16: the agent runs nothing itself; its spawner does.
        for process in [libc::SYS_execve, libc::SYS_execveat] {
            assert!(!agent.contains(&process), "{process}");
        }
        assert!(allowlist(Role::Spawner).contains(&libc::SYS_execve));
    }
}
