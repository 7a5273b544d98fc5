//! The helper's own sandbox (issue 16): every thread of the running helper
//! is under seccomp, a call outside its list kills it with SIGSYS, and a
//! call with arguments outside its lists is refused with EPERM.
//!
//! The filter is tested in a child process: this test binary runs itself
//! again with `CORAL_SECCOMP_CHILD=ACTION`, the child applies the helper's
//! filter and tries ACTION.

use std::os::unix::process::ExitStatusExt as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SIGSYS: i32 = 31;

/// In the child: apply the filter, try the action, report.
fn child() {
    let Ok(action) = std::env::var("CORAL_SECCOMP_CHILD") else {
        return;
    };
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
        other => panic!("unknown action {other}"),
    };
    match outcome {
        Ok(()) => println!("ok"),
        Err(e) => println!("refused: {}", e.raw_os_error().unwrap_or(0)),
    }
    std::process::exit(0);
}

fn try_in_child(action: &str) -> std::process::Output {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "filter_child_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("CORAL_SECCOMP_CHILD", action)
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
    for forbidden in ["chroot", "execve", "fork", "bind"] {
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
