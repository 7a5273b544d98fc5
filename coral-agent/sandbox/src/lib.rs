//! The sandbox the colony and the agent put themselves in before they open
//! their stores or start their async runtime, so every thread they ever
//! have is confined:
//!
//! - **landlock**: read-write only beneath the role's own state and runtime
//!   directories; read-only (and execute) where code and system facts live;
//!   nothing else (no home directories, no other users' files);
//! - **seccomp**: a per-role allowlist of system calls, reviewed data with
//!   one reason per call and per architecture ([`COMMON`], [`AGENT_ONLY`],
//!   [`SPAWNER_ONLY`], [`COMMON_ARCH_ONLY`], [`SPAWNER_ARCH_ONLY`]);
//!   anything else kills the process with `SIGSYS`. Set on the
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
        read_only_open: false,
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

/// One allowed system call and who needs it.
pub type Call = (i64, &'static str);

/// Calls every role makes (colony, agent, exec spawner). Reviewed data: add
/// a call only with the reason someone needs it.
pub const COMMON: &[Call] = &[
    // Memory.
    (libc::SYS_brk, "the allocator"),
    (
        libc::SYS_mmap,
        "the allocator, DuckDB's buffer manager, thread stacks",
    ),
    (libc::SYS_munmap, "the allocator, thread stacks"),
    (libc::SYS_mremap, "the allocator (growing buffers)"),
    (libc::SYS_mprotect, "thread stack guard pages"),
    (
        libc::SYS_madvise,
        "the allocator and DuckDB returning memory",
    ),
    (libc::SYS_mlock, "DuckDB's buffer manager"),
    (libc::SYS_munlock, "DuckDB's buffer manager"),
    (libc::SYS_membarrier, "DuckDB and SQLite memory fences"),
    // Threads and synchronisation.
    (
        libc::SYS_clone,
        "tokio workers, DuckDB and SQLite threads (CLONE_THREAD only for the colony and agent)",
    ),
    (
        libc::SYS_clone3,
        "answered ENOSYS for the colony and agent, so the C library uses clone",
    ),
    (libc::SYS_futex, "locks, condition variables, thread joins"),
    (libc::SYS_set_robust_list, "new threads"),
    (libc::SYS_get_robust_list, "the C library's thread start-up"),
    (libc::SYS_rseq, "new threads (glibc)"),
    (libc::SYS_set_tid_address, "new threads"),
    (libc::SYS_sched_yield, "spin locks (tokio, DuckDB)"),
    (
        libc::SYS_sched_getaffinity,
        "the CPUs tokio and DuckDB may use",
    ),
    (libc::SYS_sched_setaffinity, "DuckDB's worker threads"),
    (libc::SYS_gettid, "thread ids in logs"),
    (libc::SYS_getpid, "the pid in logs, peer checks"),
    (
        libc::SYS_getppid,
        "`coral --daemon` children check their parent",
    ),
    (libc::SYS_exit, "a thread ends"),
    (libc::SYS_exit_group, "the process exits"),
    (
        libc::SYS_tgkill,
        "signals to its own threads (the C library)",
    ),
    (
        libc::SYS_tkill,
        "signals to its own threads (older callers)",
    ),
    (
        libc::SYS_kill,
        "the agent kills what is left in a `coral exec` command's cgroup; signals to daemons",
    ),
    (libc::SYS_nanosleep, "sleeps"),
    (libc::SYS_clock_nanosleep, "sleeps"),
    // Signals: tokio's signal handling (SIGTERM, SIGINT, SIGHUP, SIGCHLD).
    (libc::SYS_rt_sigaction, "signal handlers (tokio)"),
    (
        libc::SYS_rt_sigprocmask,
        "new threads block signals while starting",
    ),
    (libc::SYS_rt_sigreturn, "return from a signal handler"),
    (
        libc::SYS_sigaltstack,
        "the stack-overflow handler of each thread",
    ),
    (libc::SYS_rt_sigtimedwait, "waiting for a signal"),
    // Time.
    (libc::SYS_clock_gettime, "timestamps, timeouts"),
    (libc::SYS_clock_getres, "DuckDB's timers"),
    (libc::SYS_gettimeofday, "timestamps (older callers)"),
    // Files: stores, logs, sockets' paths, /proc and /sys reads (landlock
    // decides which paths).
    (
        libc::SYS_openat,
        "every file: stores, logs, /proc and /sys facts",
    ),
    (libc::SYS_close, "every fd"),
    (
        libc::SYS_close_range,
        "closing inherited fds (std, children)",
    ),
    (libc::SYS_read, "files, sockets"),
    (libc::SYS_write, "files, sockets, logs"),
    (libc::SYS_pread64, "DuckDB and SQLite pages"),
    (libc::SYS_pwrite64, "DuckDB and SQLite pages"),
    (libc::SYS_readv, "sockets (tokio)"),
    (libc::SYS_writev, "sockets (tokio), logs"),
    (libc::SYS_preadv, "DuckDB"),
    (libc::SYS_pwritev, "DuckDB"),
    (libc::SYS_lseek, "files read in parts"),
    (libc::SYS_fstat, "files' metadata"),
    (libc::SYS_newfstatat, "paths' metadata"),
    (libc::SYS_statx, "paths' metadata (std)"),
    (libc::SYS_statfs, "DuckDB: the file system of its database"),
    (libc::SYS_fstatfs, "the same, by fd"),
    (libc::SYS_faccessat, "does a path exist (the C library)"),
    (libc::SYS_faccessat2, "the same (newer C libraries)"),
    (libc::SYS_readlinkat, "/proc links (discovery, exec)"),
    (libc::SYS_getdents64, "directory listings (stores, /proc)"),
    (libc::SYS_fsync, "durable stores and state files"),
    (libc::SYS_fdatasync, "durable stores (SQLite)"),
    (libc::SYS_ftruncate, "SQLite and DuckDB files, WAL resets"),
    (libc::SYS_fallocate, "DuckDB growing its file"),
    (libc::SYS_renameat, "state files appear whole"),
    (libc::SYS_renameat2, "state files appear whole (std)"),
    (libc::SYS_unlinkat, "temporary files, stale sockets"),
    (libc::SYS_mkdirat, "state and runtime directories"),
    (libc::SYS_fchmod, "files' and sockets' modes"),
    (libc::SYS_fchmodat, "paths' modes"),
    (libc::SYS_flock, "one daemon per state dir"),
    (libc::SYS_fcntl, "close-on-exec, locks (SQLite), flags"),
    (
        libc::SYS_ioctl,
        "sockets and terminals (listed requests only for the colony and agent, see DAEMON_IOCTLS)",
    ),
    (libc::SYS_dup, "fd copies"),
    (libc::SYS_dup3, "fd copies (children's stdio)"),
    (libc::SYS_pipe2, "pipes to children, tokio's wakers"),
    (libc::SYS_getcwd, "relative paths in the CLI"),
    (libc::SYS_chdir, "`coral --daemon` children leave the cwd"),
    (libc::SYS_fchdir, "the same, by fd"),
    (libc::SYS_umask, "`coral --daemon` sets its umask"),
    (libc::SYS_utimensat, "SQLite and DuckDB touch files"),
    (libc::SYS_copy_file_range, "file copies (std::fs::copy)"),
    (libc::SYS_sendfile, "file copies (older kernels)"),
    (
        libc::SYS_memfd_create,
        "the sealed key memfd of a daemon keying without the helper",
    ),
    (libc::SYS_fadvise64, "DuckDB's read-ahead hints"),
    (libc::SYS_sync_file_range, "DuckDB's checkpoint writes"),
    (libc::SYS_symlinkat, "SQLite and DuckDB (rarely)"),
    (libc::SYS_linkat, "SQLite and DuckDB (rarely)"),
    (
        libc::SYS_fchown,
        "SQLite, running as root, gives new journal and WAL files the owner of their database",
    ),
    (libc::SYS_fchownat, "the same, by path"),
    // Event loops: tokio (epoll, eventfd), timers.
    (libc::SYS_epoll_create1, "tokio's event loop"),
    (libc::SYS_epoll_ctl, "tokio's event loop"),
    (libc::SYS_epoll_pwait, "tokio's event loop"),
    (libc::SYS_epoll_pwait2, "tokio's event loop (newer)"),
    (libc::SYS_eventfd2, "tokio's waker"),
    (libc::SYS_ppoll, "blocking waits on one fd"),
    (libc::SYS_pselect6, "blocking waits (older callers)"),
    (libc::SYS_timerfd_create, "timers"),
    (libc::SYS_timerfd_settime, "timers"),
    (libc::SYS_signalfd4, "signals as fds (tokio)"),
    // Sockets: Unix control/MCP sockets (with peer credentials), TCP
    // control plane, OTLP listeners, UDP for the mesh.
    (
        libc::SYS_socket,
        "control, OTLP, mesh sockets (listed families only for the colony and agent, see DAEMON_SOCKET_FAMILIES)",
    ),
    (libc::SYS_socketpair, "pipes to the exec spawner"),
    (libc::SYS_bind, "OTLP and control listeners, the mesh's UDP"),
    (libc::SYS_listen, "OTLP and control listeners"),
    (libc::SYS_accept, "connections (older callers)"),
    (libc::SYS_accept4, "connections"),
    (libc::SYS_connect, "the colony, the helper, upstreams"),
    (libc::SYS_getsockname, "the ports bound (port 0)"),
    (libc::SYS_getpeername, "peers' addresses in logs"),
    (
        libc::SYS_getsockopt,
        "SO_PEERCRED of local callers, socket errors",
    ),
    (libc::SYS_setsockopt, "timeouts, keep-alive, buffer sizes"),
    (libc::SYS_sendto, "datagrams, replies"),
    (libc::SYS_recvfrom, "datagrams, requests"),
    (
        libc::SYS_sendmsg,
        "fds to and from the helper and the spawner",
    ),
    (libc::SYS_recvmsg, "the same"),
    (
        libc::SYS_sendmmsg,
        "the mesh's UDP in batches; the resolver",
    ),
    (libc::SYS_recvmmsg, "the mesh's UDP in batches"),
    (libc::SYS_shutdown, "half-closing connections"),
    // Identity and limits.
    (
        libc::SYS_getuid,
        "peer checks, paths of the user's directories",
    ),
    (libc::SYS_geteuid, "the same"),
    (libc::SYS_getgid, "peer checks"),
    (libc::SYS_getegid, "peer checks"),
    (libc::SYS_getgroups, "group checks of local callers"),
    (libc::SYS_getresuid, "the C library"),
    (libc::SYS_getresgid, "the C library"),
    (libc::SYS_getrlimit, "the fd limit"),
    (libc::SYS_prlimit64, "raising the fd limit"),
    (libc::SYS_getrusage, "its own CPU time (status)"),
    (libc::SYS_uname, "the kernel version (doctor, aya)"),
    (libc::SYS_sysinfo, "DuckDB: the memory size"),
    (libc::SYS_getrandom, "keys, tokens, hash maps"),
    (
        libc::SYS_prctl,
        "thread names (listed options only for the colony and agent, see DAEMON_PRCTLS)",
    ),
    (libc::SYS_getcpu, "DuckDB's per-CPU state"),
    (libc::SYS_getpriority, "DuckDB's thread priorities"),
    (libc::SYS_setpriority, "the same"),
    (libc::SYS_times, "CPU time (older callers)"),
    // Processes.
    (
        libc::SYS_wait4,
        "`coral --daemon` children, the spawner's commands",
    ),
    (libc::SYS_waitid, "the same (std)"),
];

/// Calls only the agent makes.
pub const AGENT_ONLY: &[Call] = &[
    (
        libc::SYS_bpf,
        "the eBPF reader: map and ring-buffer operations on fds the helper (or the agent itself, with the privilege) created",
    ),
    (
        libc::SYS_perf_event_open,
        "BPF attach without the helper (CAP_BPF + CAP_PERFMON)",
    ),
];

/// Calls only the exec spawner makes: starting, signalling and reaping
/// `coral exec` commands, and what the commands themselves need (they
/// inherit the list).
pub const SPAWNER_ONLY: &[Call] = &[
    (libc::SYS_execve, "the shim, then each command"),
    (libc::SYS_execveat, "the same (fexecve)"),
    (libc::SYS_setpgid, "each command in its own process group"),
    (libc::SYS_getpgid, "process groups"),
    (libc::SYS_setsid, "commands' sessions"),
    (libc::SYS_getsid, "commands' sessions"),
    (libc::SYS_pidfd_open, "waiting on a command"),
    (libc::SYS_pidfd_send_signal, "killing a command's group"),
    (libc::SYS_setrlimit, "commands' limits (the shim)"),
    (libc::SYS_setitimer, "commands' timers"),
    (libc::SYS_getitimer, "commands' timers"),
    (
        libc::SYS_landlock_create_ruleset,
        "the shim confines each command before execve",
    ),
    (libc::SYS_landlock_add_rule, "the same"),
    (libc::SYS_landlock_restrict_self, "the same"),
    // Diagnostic commands: ps/top read /proc, ss uses netlink sockets
    // (allowed above), psql, and terminal handling.
    (libc::SYS_sched_getparam, "ps, top"),
    (libc::SYS_sched_getscheduler, "ps, top"),
    (libc::SYS_capget, "commands checking their capabilities"),
    (libc::SYS_getxattr, "ls -l (ACLs, SELinux labels)"),
    (libc::SYS_lgetxattr, "the same"),
    (libc::SYS_fgetxattr, "the same"),
    (libc::SYS_listxattr, "the same"),
    (libc::SYS_llistxattr, "the same"),
    (libc::SYS_mincore, "commands' allocators"),
    (libc::SYS_msync, "commands' mapped files"),
    (
        libc::SYS_shmget,
        "psql and terminals (System V shared memory)",
    ),
    (libc::SYS_shmat, "the same"),
    (libc::SYS_shmdt, "the same"),
    (libc::SYS_shmctl, "the same"),
    (libc::SYS_inotify_init1, "tail -f"),
    (libc::SYS_inotify_add_watch, "tail -f"),
    (libc::SYS_inotify_rm_watch, "tail -f"),
];

/// The older x86_64 calls the `*at` forms replaced, for every role
/// (aarch64 has only the `*at` forms).
#[cfg(target_arch = "x86_64")]
pub const COMMON_ARCH_ONLY: &[Call] = &[
    (libc::SYS_open, "files (older callers), as openat"),
    (libc::SYS_stat, "metadata, as newfstatat"),
    (libc::SYS_lstat, "metadata, as newfstatat"),
    (libc::SYS_access, "as faccessat"),
    (libc::SYS_readlink, "as readlinkat"),
    (libc::SYS_rename, "as renameat"),
    (libc::SYS_unlink, "as unlinkat"),
    (libc::SYS_mkdir, "as mkdirat"),
    (libc::SYS_rmdir, "as unlinkat"),
    (libc::SYS_chmod, "as fchmodat"),
    (libc::SYS_symlink, "as symlinkat"),
    (libc::SYS_link, "as linkat"),
    (libc::SYS_dup2, "as dup3"),
    (libc::SYS_pipe, "as pipe2"),
    (libc::SYS_epoll_wait, "as epoll_pwait"),
    (libc::SYS_poll, "as ppoll"),
    (libc::SYS_select, "as pselect6"),
    (libc::SYS_time, "the vDSO's fallback"),
    (libc::SYS_arch_prctl, "thread-local storage of new threads"),
];
#[cfg(target_arch = "aarch64")]
pub const COMMON_ARCH_ONLY: &[Call] = &[];

/// The older x86_64 calls the spawner's commands make.
#[cfg(target_arch = "x86_64")]
pub const SPAWNER_ARCH_ONLY: &[Call] = &[
    (libc::SYS_fork, "commands' own children (shells)"),
    (libc::SYS_vfork, "posix_spawn in commands"),
    (libc::SYS_getpgrp, "shells' job control"),
    (libc::SYS_alarm, "commands' timers"),
    (libc::SYS_pause, "commands' waits"),
    (libc::SYS_chown, "commands (as fchownat)"),
    (libc::SYS_lchown, "commands (as fchownat)"),
];
#[cfg(target_arch = "aarch64")]
pub const SPAWNER_ARCH_ONLY: &[Call] = &[];

/// A role's list, with reasons: the common calls, then its own.
pub fn calls(role: Role) -> Vec<Call> {
    let own: &[&[Call]] = match role {
        Role::Colony => &[],
        Role::Agent => &[AGENT_ONLY],
        Role::Spawner => &[SPAWNER_ONLY, SPAWNER_ARCH_ONLY],
    };
    COMMON
        .iter()
        .chain(COMMON_ARCH_ONLY)
        .chain(own.iter().flat_map(|l| l.iter()))
        .copied()
        .collect()
}

/// The system calls each role may make ([`calls`] without the reasons),
/// sorted.
pub fn allowlist(role: Role) -> Vec<i64> {
    let mut v: Vec<i64> = calls(role).iter().map(|(s, _)| *s).collect();
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

    /// Issue 16 item 12: every role's list is reviewed data, each call with
    /// a reason and listed once, and so are the argument lists.
    #[test]
    fn every_listed_call_has_a_reason_and_is_listed_once() {
        for role in [Role::Colony, Role::Agent, Role::Spawner] {
            let list = calls(role);
            let mut seen = std::collections::BTreeSet::new();
            for (call, why) in &list {
                assert!(
                    !why.trim().is_empty(),
                    "{role:?}: call {call} has no reason"
                );
                assert!(seen.insert(*call), "{role:?}: call {call} is listed twice");
            }
            assert_eq!(allowlist(role).len(), list.len(), "{role:?}");
        }
        for (name, list) in [
            ("DAEMON_IOCTLS", DAEMON_IOCTLS),
            ("DAEMON_SOCKET_FAMILIES", DAEMON_SOCKET_FAMILIES),
            ("DAEMON_PRCTLS", DAEMON_PRCTLS),
        ] {
            let mut seen = std::collections::BTreeSet::new();
            for (v, why) in list {
                assert!(!why.trim().is_empty(), "{name}: {v:#x} has no reason");
                assert!(seen.insert(*v), "{name}: {v:#x} is listed twice");
            }
        }
    }
}
