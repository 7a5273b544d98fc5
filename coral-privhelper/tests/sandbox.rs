//! The helper's own sandbox (issue 16): every thread of the running helper
//! is under seccomp, a call outside its list kills it with SIGSYS, and a
//! call with arguments outside its lists is refused with EPERM; the main
//! process's landlock set refuses every path outside it; the target process
//! keeps three capabilities, opens nothing for writing, dies with the
//! helper, and when it is gone only its verbs fail.
//!
//! The filters and the landlock set are tested in a child process: this
//! test binary runs itself again with `CORAL_SECCOMP_CHILD=ACTION`, the
//! child applies the filter (or the rules) and tries ACTION.

use std::os::unix::process::ExitStatusExt as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SIGSYS: i32 = 31;

/// In the child: apply the filter, try the action, report.
fn child() {
    let Ok(action) = std::env::var("CORAL_SECCOMP_CHILD") else {
        return;
    };
    if action == "landlock" {
        return landlock_child();
    }
    if let Some(action) = action.strip_prefix("target-") {
        return target_child(action);
    }
    coral_privhelper::sandbox::helper_policy()
        .apply()
        .expect("apply the helper's filter");
    let outcome = match action.as_str() {
        "allowed" => std::fs::read("/proc/self/status").map(|_| ()),
        "chroot" => std::os::unix::fs::chroot("/"),
        "execve" => {
            use std::os::unix::process::CommandExt as _;
            Err(Command::new("/bin/true").exec())
        }
        "fork" => Command::new("/bin/true").status().map(|_| ()),
        "thread" => std::thread::spawn(|| ())
            .join()
            .map_err(|_| std::io::Error::other("join")),
        "socket-packet" => nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Packet,
            nix::sys::socket::SockType::Raw,
            nix::sys::socket::SockFlag::empty(),
            None,
        )
        .map(drop)
        .map_err(std::io::Error::from),
        "socket-inet" => nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Inet,
            nix::sys::socket::SockType::Datagram,
            nix::sys::socket::SockFlag::empty(),
            None,
        )
        .map(drop)
        .map_err(std::io::Error::from),
        // Not on the list: the helper's socket is bound before the filter.
        "bind" => std::net::UdpSocket::bind("127.0.0.1:0").map(drop),
        // Not on the list: the helper mounts nothing. A path that does not
        // exist, so a filter that let it through would change nothing.
        "mount" => nix::mount::mount(
            Some("tmpfs"),
            "/nonexistent/coral-mount-probe",
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(std::io::Error::from),
        other => panic!("unknown action {other}"),
    };
    match outcome {
        Ok(()) => println!("ok"),
        Err(e) => println!("refused: {}", e.raw_os_error().unwrap_or(0)),
    }
    std::process::exit(0);
}

/// In the child: the main process's landlock rules, then one line per
/// path tried.
fn landlock_child() {
    let state = std::path::PathBuf::from(std::env::var("CORAL_LANDLOCK_STATE").unwrap());
    let l = coral_privhelper::sandbox::confine_main(&state).expect("apply the landlock rules");
    // A line of its own after the test harness's "test ... " prefix.
    println!();
    println!("status {}", l.status);
    let show = |what: &str, r: std::io::Result<()>| match r {
        Ok(()) => println!("{what} ok"),
        Err(e) => println!("{what} refused {}", e.raw_os_error().unwrap_or(0)),
    };
    show("shadow", std::fs::File::open("/etc/shadow").map(drop));
    show("passwd", std::fs::File::open("/etc/passwd").map(drop));
    show("root", std::fs::read_dir("/root").map(drop));
    show("proc-1", std::fs::read("/proc/1/environ").map(drop));
    show(
        "tmp-write",
        std::fs::write("/tmp/coral-landlock-probe", b"x"),
    );
    show(
        "tun",
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .map(drop),
    );
    show(
        "cpus",
        std::fs::read("/sys/devices/system/cpu/possible").map(drop),
    );
    show(
        "btf",
        std::fs::File::open("/sys/kernel/btf/vmlinux").map(drop),
    );
    show("state-write", {
        let f = state.join("key.tmp");
        std::fs::write(&f, b"k").and_then(|()| std::fs::rename(&f, state.join("key")))
    });
    let port = std::env::var("CORAL_LANDLOCK_PORT").unwrap();
    show(
        "tcp-connect",
        std::net::TcpStream::connect(format!("127.0.0.1:{port}")).map(drop),
    );
    std::process::exit(0);
}

/// In the child: the target process's filter, then `action`.
fn target_child(action: &str) {
    coral_privhelper::sandbox::target_policy()
        .apply()
        .expect("apply the target process's filter");
    let dir = std::env::var("CORAL_LANDLOCK_STATE").unwrap_or_else(|_| "/tmp".into());
    let outcome = match action {
        "read" => std::fs::read("/proc/self/status").map(|_| ()),
        "write" => std::fs::write(format!("{dir}/written"), b"x"),
        "append" => std::fs::OpenOptions::new()
            .append(true)
            .open("/proc/self/status")
            .map(drop),
        "thread" => std::thread::spawn(|| ())
            .join()
            .map_err(|_| std::io::Error::other("join")),
        "socket-inet" => nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Inet,
            nix::sys::socket::SockType::Datagram,
            nix::sys::socket::SockFlag::empty(),
            None,
        )
        .map(drop)
        .map_err(std::io::Error::from),
        other => panic!("unknown action {other}"),
    };
    match outcome {
        Ok(()) => println!("ok"),
        Err(e) => println!("refused: {}", e.raw_os_error().unwrap_or(0)),
    }
    std::process::exit(0);
}

fn try_in_child(action: &str) -> std::process::Output {
    try_in_child_with(action, &[])
}

fn try_in_child_with(action: &str, env: &[(&str, &str)]) -> std::process::Output {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "filter_child_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("CORAL_SECCOMP_CHILD", action)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The entry the child runs (a no-op in the parent).
#[test]
fn filter_child_entry() {
    child();
}

#[test]
fn a_forbidden_call_kills_and_a_refused_argument_fails_issue_16() {
    let stdout = |o: &std::process::Output| String::from_utf8_lossy(&o.stdout).to_string();
    for allowed in ["allowed", "thread", "socket-inet"] {
        let out = try_in_child(allowed);
        assert!(
            out.status.success() && stdout(&out).contains("ok"),
            "{allowed}: {:?} {} {}",
            out.status,
            stdout(&out),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for forbidden in ["chroot", "execve", "fork", "bind", "mount"] {
        let out = try_in_child(forbidden);
        assert_eq!(
            out.status.signal(),
            Some(SIGSYS),
            "{forbidden}: {:?} {}",
            out.status,
            stdout(&out)
        );
    }
    // socket(AF_PACKET): on the list, but not that family.
    let out = try_in_child("socket-packet");
    assert!(
        stdout(&out).contains(&format!("refused: {}", libc::EPERM)),
        "{}",
        stdout(&out)
    );
}

fn seccomp_of(pid: u32, tid: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

#[test]
fn every_thread_of_the_running_helper_is_under_seccomp_issue_16() {
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI runs as root"
        );
        eprintln!("SKIP: the helper needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("privhelper.sock");
    let log = dir.path().join("helper.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_coral-privhelper"))
        .arg("--socket")
        .arg(&socket)
        .arg("--config")
        .arg(dir.path().join("none.conf"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "helper did not bind");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Connection threads: hold three connections open.
    let clients: Vec<_> = (0..3)
        .map(|_| coral_privhelper::Client::connect(&socket).expect("hello"))
        .collect();
    let pid = child.id();
    let tasks: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(tasks.len() >= 4, "main + 3 connection threads: {tasks:?}");
    for tid in &tasks {
        assert_eq!(seccomp_of(pid, tid), "2", "thread {tid}");
    }
    drop(clients);
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("sandbox: seccomp"), "{text}");
}

fn root_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI runs as root"
    );
    eprintln!("SKIP {test}: needs root");
    false
}

fn landlock_abi() -> i64 {
    coral_privhelper::sandbox::kernel_landlock_abi()
}

/// Issue 16 item 12: the helper's main process, landlocked, opens only what
/// its verbs need: not /etc/shadow, not /root, not another process's /proc
/// files, no file outside its state dir, no TCP.
#[test]
fn the_main_process_landlock_set_refuses_every_other_path_issue_16() {
    if !root_or_skip("the_main_process_landlock_set_refuses_every_other_path_issue_16") {
        return;
    }
    let abi = landlock_abi();
    if abi < 1 {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI has landlock"
        );
        eprintln!("SKIP: the kernel has no landlock");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let out = try_in_child_with(
        "landlock",
        &[
            ("CORAL_LANDLOCK_STATE", state.to_str().unwrap()),
            ("CORAL_LANDLOCK_PORT", &port),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{:?} {text}", out.status);
    let eacces = format!("refused {}", libc::EACCES);
    let expect = |what: &str, outcome: &str| {
        assert!(
            text.lines().any(|l| l == format!("{what} {outcome}")),
            "{what}: expected '{outcome}' in\n{text}"
        );
    };
    // ABI 6 (Linux 6.12) is what the rules are written for.
    if abi >= 6 {
        expect("status", "fully");
    }
    for refused in ["shadow", "passwd", "root", "proc-1", "tmp-write"] {
        expect(refused, &eacces);
    }
    if abi >= 4 {
        expect("tcp-connect", &eacces);
    }
    for allowed in ["cpus", "state-write"] {
        expect(allowed, "ok");
    }
    if std::path::Path::new("/dev/net/tun").exists() {
        expect("tun", "ok");
    }
    if std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        expect("btf", "ok");
    }
}

/// Issue 16 item 12: the target process's filter: reads only (a write flag
/// fails with EPERM), no thread, no socket but AF_UNIX.
#[test]
fn the_target_process_opens_nothing_for_writing_issue_16() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let stdout = |o: &std::process::Output| String::from_utf8_lossy(&o.stdout).to_string();
    let out = try_in_child_with("target-read", &[("CORAL_LANDLOCK_STATE", d)]);
    assert!(
        stdout(&out).contains("ok"),
        "{:?} {}",
        out.status,
        stdout(&out)
    );
    for refused in ["target-write", "target-append", "target-socket-inet"] {
        let out = try_in_child_with(refused, &[("CORAL_LANDLOCK_STATE", d)]);
        assert!(
            stdout(&out).contains(&format!("refused: {}", libc::EPERM)),
            "{refused}: {:?} {}",
            out.status,
            stdout(&out)
        );
    }
    assert!(!dir.path().join("written").exists());
    let out = try_in_child("target-thread");
    assert_eq!(out.status.signal(), Some(SIGSYS), "{}", stdout(&out));
}

struct RunningHelper {
    child: std::process::Child,
    _dir: tempfile::TempDir,
    socket: std::path::PathBuf,
    log: std::path::PathBuf,
}

impl RunningHelper {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("privhelper.sock");
        let log = dir.path().join("helper.log");
        let child = Command::new(env!("CARGO_BIN_EXE_coral-privhelper"))
            .arg("--socket")
            .arg(&socket)
            .arg("--config")
            .arg(dir.path().join("none.conf"))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        // Serving: the target process is started and logged by then.
        while coral_privhelper::Client::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "helper did not serve");
            std::thread::sleep(Duration::from_millis(20));
        }
        RunningHelper {
            child,
            _dir: dir,
            socket,
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The target process's pid, from the helper's log.
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn target_pid(&self) -> u32 {
        let log = self.log();
        log.lines()
            .find_map(|l| l.strip_prefix("coral-privhelper: target process "))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no target process in the log:\n{log}"))
    }
}

impl Drop for RunningHelper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn status_field(pid: u32, field: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field).map(|v| v.trim().to_string()))
}

fn gone_within(pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        // A zombie is gone for our purposes: it runs nothing.
        match status_field(pid, "State:") {
            None => return true,
            Some(s) if s.starts_with('Z') => return true,
            Some(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    false
}

/// Issue 16 item 12: the running helper's target process keeps only its
/// three capabilities and is under its filter; when it dies, OpenTarget
/// fails with a one-line reason and GetKey still works; when the helper
/// dies, it dies too.
#[test]
fn the_target_process_is_confined_and_its_death_only_costs_its_verbs_issue_16() {
    if !root_or_skip("the_target_process_is_confined_and_its_death_only_costs_its_verbs_issue_16") {
        return;
    }
    let helper = RunningHelper::start();
    let mut c = coral_privhelper::Client::connect(&helper.socket).expect("hello");
    let target = helper.target_pid();
    let want: u64 = coral_privhelper::target::KEEP_CAPS
        .iter()
        .map(|(cap, _)| cap.bitmask())
        .sum();
    for field in ["CapEff:", "CapPrm:", "CapBnd:"] {
        let v = status_field(target, field).unwrap();
        assert_eq!(
            u64::from_str_radix(&v, 16).unwrap(),
            want,
            "{field} of the target process"
        );
    }
    assert_eq!(
        status_field(target, "CapInh:").as_deref(),
        Some("0000000000000000")
    );
    assert_eq!(status_field(target, "Seccomp:").as_deref(), Some("2"));
    // The main process keeps only what it still does itself.
    let main: u64 = coral_privhelper::sandbox::MAIN_CAPS
        .iter()
        .map(|(cap, _)| cap.bitmask())
        .sum();
    for field in ["CapEff:", "CapPrm:", "CapBnd:"] {
        let v = status_field(helper.pid(), field).unwrap();
        assert_eq!(
            u64::from_str_radix(&v, 16).unwrap(),
            main,
            "{field} of the helper's main process"
        );
    }
    assert_eq!(status_field(target, "NoNewPrivs:").as_deref(), Some("1"));
    let log = helper.log();
    if landlock_abi() >= 6 {
        assert!(log.contains("sandbox: landlock fully enforced"), "{log}");
    }

    // OpenTarget works through it: this test's own process.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (pid, _, _) = c.open_target(0, port).expect("open_target by port");
    assert_eq!(pid, std::process::id());

    // The target process dies: its verbs fail with one clear line; the
    // rest is served.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(target as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(gone_within(target, Duration::from_secs(5)));
    let e = c
        .open_target(std::process::id(), 0)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("target process has exited") && !e.contains('\n'),
        "{e}"
    );
    c.get_key().expect("GetKey after the target process died");
    let mut again = coral_privhelper::Client::connect(&helper.socket).expect("a new caller");
    again.get_key().expect("GetKey on a new connection");
    assert!(helper.child.id() > 0 && !gone_within(helper.child.id(), Duration::from_millis(10)));
    drop(again);
    drop(c);

    // The helper dies: a new target process of a new helper dies with it.
    let mut helper = RunningHelper::start();
    let target = helper.target_pid();
    assert!(!gone_within(target, Duration::from_millis(10)));
    helper.child.kill().unwrap();
    helper.child.wait().unwrap();
    assert!(
        gone_within(target, Duration::from_secs(5)),
        "the target process outlived the helper"
    );
}

/// Issue 16 item 12: the uid rule of OpenTarget is the target process's,
/// with the uid it reads from the caller's connection: uid 65534 opens its
/// own process (another uid than the target process's root: the kept
/// CAP_SYS_PTRACE at work) and is refused root's pid 1.
#[test]
fn the_target_process_applies_the_callers_uid_issue_16() {
    if !root_or_skip("the_target_process_applies_the_callers_uid_issue_16") {
        return;
    }
    // target/<profile>/deps/<test> -> target/<profile>/examples/privhelper-client
    let client = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(std::path::Path::parent)
        .unwrap()
        .join("examples/privhelper-client");
    assert!(client.exists(), "build the example: {}", client.display());
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let conf = dir.path().join("privhelper.conf");
    std::fs::write(&conf, "allow_uid = 65534\n").unwrap();
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o600)).unwrap();
    let socket = dir.path().join("privhelper.sock");
    let mut helper = Command::new(env!("CARGO_BIN_EXE_coral-privhelper"))
        .arg("--socket")
        .arg(&socket)
        .arg("--config")
        .arg(&conf)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while coral_privhelper::Client::connect(&socket).is_err() {
        assert!(Instant::now() < deadline, "helper did not serve");
        std::thread::sleep(Duration::from_millis(20));
    }
    let as_nobody = |args: &[&str]| {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&client)
            .arg(&socket)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (code, own) = as_nobody(&["open-target", "self"]);
    let (_, other) = as_nobody(&["open-target", "1"]);
    let _ = helper.kill();
    let _ = helper.wait();
    assert_eq!(code, Some(0), "{own}");
    assert!(
        own.starts_with("target ") && own.contains("privhelper-client"),
        "{own}"
    );
    assert!(
        other.contains("belongs to uid 0; uid 65534 may only probe its own processes"),
        "{other}"
    );
}
