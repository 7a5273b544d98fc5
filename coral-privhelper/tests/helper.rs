//! Integration tests against the real `coral-privhelper` binary, real TUN
//! devices in a network namespace each test makes, and a real unprivileged
//! caller (`setpriv` to uid 65534). Issue 3.

use std::fs;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use coral_privhelper::client::ClientError;
use coral_privhelper::keys::{KEY_FILE, key_seals};
use coral_privhelper::protocol::{self, HEADER_LEN, Response};
use coral_privhelper::{Client, IfName, TunParams, TunPath, open_tun};
use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sched::{CloneFlags, setns};

fn root_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() && Path::new("/dev/net/tun").exists() {
        true
    } else {
        eprintln!("SKIP {test}: needs root and /dev/net/tun");
        false
    }
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A network namespace made (and deleted) by the test.
struct NetNs {
    name: String,
}

impl NetNs {
    fn new() -> Self {
        let name = format!(
            "coralph-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("run ip");
        assert!(st.success(), "ip netns add {name}");
        NetNs { name }
    }

    /// Runs `f` on a thread that has joined the namespace.
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = fs::File::open(&path).expect("open netns");
            setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("netns thread")
    }

    fn sh(&self, cmd: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(cmd)
            .output()
            .expect("ip netns exec");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A running helper on a temp socket, config and state dir.
struct Helper {
    child: Child,
    dir: tempfile::TempDir,
    socket: PathBuf,
}

impl Helper {
    fn start(ns: Option<&NetNs>, config: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // Let uid 65534 reach the socket inside.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let socket = dir.path().join("privhelper.sock");
        let conf = dir.path().join("privhelper.conf");
        if let Some(text) = config {
            fs::write(&conf, text).unwrap();
            fs::set_permissions(&conf, fs::Permissions::from_mode(0o600)).unwrap();
        }
        let bin = env!("CARGO_BIN_EXE_coral-privhelper");
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &ns.name, bin]);
                c
            }
            None => Command::new(bin),
        };
        cmd.arg("--socket")
            .arg(&socket)
            .arg("--config")
            .arg(&conf)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.path().join("helper.log")).unwrap());
        let child = cmd.spawn().expect("start helper");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "helper did not bind");
            std::thread::sleep(Duration::from_millis(20));
        }
        Helper { child, dir, socket }
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Stops the helper and returns its log.
    /// Stops the helper once its log holds every line in `expect` (or after
    /// 5 s) and returns the log. The helper logs a request after replying
    /// to it, so a client can see the reply before the line is written.
    fn stop(mut self, expect: &[&str]) -> String {
        let path = self.dir.path().join("helper.log");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let log = fs::read_to_string(&path).unwrap_or_default();
            if expect.iter().all(|e| log.contains(e)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        fs::read_to_string(&path).unwrap_or_default()
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn params(name: &str, addr: [u8; 4], prefix: u8, mtu: u16) -> TunParams {
    TunParams {
        name: IfName::new(name).unwrap(),
        addr: Ipv4Addr::from(addr),
        prefix,
        mtu,
    }
}

/// A minimal IPv4/UDP packet from 100.64.0.1 to 100.64.0.2.
fn ipv4_packet() -> Vec<u8> {
    let mut p = vec![
        0x45, 0, 0, 32, 0, 0, 0x40, 0, 64, 17, 0, 0, 100, 64, 0, 1, 100, 64, 0, 2,
    ];
    let mut sum: u32 = p
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let ck = !(sum as u16);
    p[10..12].copy_from_slice(&ck.to_be_bytes());
    p.extend_from_slice(&[0x30, 0x39, 0x30, 0x39, 0, 12, 0, 0, b'c', b'o', b'r', b'l']);
    p
}

#[test]
fn create_tun_through_helper_configures_the_device() {
    if !root_or_skip("create_tun_through_helper_configures_the_device") {
        return;
    }
    let ns = NetNs::new();
    let helper = Helper::start(Some(&ns), None);
    let mut c = Client::connect(&helper.socket).unwrap();
    assert_eq!(c.version(), protocol::VERSION);
    let tun = c
        .create_tun(&params("coral-t0", [100, 64, 0, 1], 10, 1400))
        .unwrap();
    assert_eq!(tun.name.as_str(), "coral-t0");
    assert!(tun.ifindex > 0);

    assert_eq!(ns.sh(&["cat", "/sys/class/net/coral-t0/mtu"]), "1400");
    let flags = ns.sh(&["cat", "/sys/class/net/coral-t0/flags"]);
    let flags = u32::from_str_radix(flags.trim_start_matches("0x"), 16).unwrap();
    assert_eq!(flags & 1, 1, "IFF_UP");
    let ifindex = ns.sh(&["cat", "/sys/class/net/coral-t0/ifindex"]);
    assert_eq!(ifindex, tun.ifindex.to_string());

    let (addrs, route) = ns.run(|| {
        let addrs: Vec<(Ipv4Addr, Ipv4Addr)> = nix::ifaddrs::getifaddrs()
            .unwrap()
            .filter(|i| i.interface_name == "coral-t0")
            .filter_map(|i| {
                let a = i.address?.as_sockaddr_in()?.ip();
                let m = i.netmask?.as_sockaddr_in()?.ip();
                Some((a, m))
            })
            .collect();
        let route = fs::read_to_string("/proc/thread-self/net/route").unwrap();
        (addrs, route)
    });
    assert_eq!(
        addrs,
        vec![(Ipv4Addr::new(100, 64, 0, 1), Ipv4Addr::new(255, 192, 0, 0))]
    );
    // Connected route 100.64.0.0/10 (little-endian hex in /proc).
    assert!(
        route
            .lines()
            .any(|l| l.starts_with("coral-t0\t00004064") && l.contains("0000C0FF")),
        "no connected route in:\n{route}"
    );

    // The fd works: the kernel takes an IPv4 packet from it.
    let mut f = fs::File::from(tun.fd);
    let pkt = ipv4_packet();
    assert_eq!(f.write(&pkt).unwrap(), pkt.len());

    // The same name again is refused (IFF_TUN_EXCL), and the helper goes on.
    let err = c
        .create_tun(&params("coral-t0", [100, 64, 0, 1], 10, 1400))
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Failed(ref m) if m.contains("already exists")),
        "{err}"
    );

    // Closing the fd removes the device.
    drop(f);
    let deadline = Instant::now() + Duration::from_secs(5);
    while ns.sh(&["ls", "/sys/class/net"]).contains("coral-t0") {
        assert!(Instant::now() < deadline, "device not removed");
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = helper.stop(&["req=create_tun"]);
    assert!(
        log.contains("req=create_tun name=coral-t0 addr=100.64.0.1/10 mtu=1400 outcome=ok"),
        "{log}"
    );
}

#[test]
fn get_key_is_stable_sealed_and_stored_0600() {
    if !root_or_skip("get_key_is_stable_sealed_and_stored_0600") {
        return;
    }
    let helper = Helper::start(None, None);
    let a = Client::connect(&helper.socket).unwrap().get_key().unwrap();
    let (public, fd) = Client::connect(&helper.socket)
        .unwrap()
        .get_key_fd()
        .unwrap();
    assert_eq!(a.public, public);
    assert_eq!(coral_privhelper::keys::public_of(&a.secret), public);
    let seals = SealFlag::from_bits_truncate(fcntl(&fd, FcntlArg::F_GET_SEALS).unwrap());
    assert!(seals.contains(key_seals()), "seals {seals:?}");
    let mut f = fs::File::from(fd);
    assert!(f.write_all(b"x").is_err(), "memfd must be write-sealed");

    let state = helper.dir.path().join("state");
    let md = fs::metadata(state.join(KEY_FILE)).unwrap();
    assert_eq!(md.mode() & 0o777, 0o600);
    assert_eq!(md.uid(), 0);
    assert_eq!(md.len(), 32);
    assert_eq!(fs::metadata(&state).unwrap().mode() & 0o777, 0o700);
    let log = helper.stop(&["req=get_key outcome=ok"]);
    assert!(log.contains("req=get_key outcome=ok"), "{log}");
    // No key material in the log.
    let hex: String = a.secret.iter().map(|b| format!("{b:02x}")).collect();
    assert!(!log.contains(&hex));
}

fn client_example() -> PathBuf {
    // target/<profile>/deps/<test> -> target/<profile>/examples/privhelper-client
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .and_then(Path::parent)
        .unwrap()
        .join("examples/privhelper-client")
}

fn run_as_nobody(socket: &Path, cmd: &str) -> (i32, String) {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(client_example())
        .arg(socket)
        .arg(cmd)
        .output()
        .expect("run setpriv");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn caller_outside_the_allowed_set_is_refused() {
    if !root_or_skip("caller_outside_the_allowed_set_is_refused") {
        return;
    }
    assert!(
        client_example().exists(),
        "build the example first: {}",
        client_example().display()
    );
    // No config file: group coral (+ root). Nobody is not in it.
    let mut helper = Helper::start(None, None);
    let (code, out) = run_as_nobody(&helper.socket, "get-key");
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("uid 65534 is not allowed"), "{out}");
    assert!(helper.alive());
    assert!(Client::connect(&helper.socket).is_ok());
    let log = helper.stop(&["uid=65534", "refused"]);
    assert!(log.contains("uid=65534"), "{log}");
    assert!(log.contains("refused"), "{log}");

    // Allowed by uid.
    let helper = Helper::start(None, Some("# test\nallow_uid = 65534\n"));
    let (code, out) = run_as_nobody(&helper.socket, "get-key");
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("public"), "{out}");
    drop(helper);

    // Allowed through the primary group of user nobody.
    let group = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(65534))
        .unwrap()
        .and_then(|u| nix::unistd::Group::from_gid(u.gid).unwrap());
    if let Some(g) = group {
        let helper = Helper::start(None, Some(&format!("allow_group = {}\n", g.name)));
        let (code, out) = run_as_nobody(&helper.socket, "hello");
        assert_eq!(code, 0, "{out}");
    }
}

/// Sends raw bytes; returns the decoded reply, or None if the helper closed.
fn raw(socket: &Path, bytes: &[u8], hello_first: bool) -> Option<Response> {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    if hello_first {
        s.write_all(&protocol::encode_request(&protocol::Request::Hello {
            min_version: 1,
            max_version: 1,
        }))
        .unwrap();
        read_reply(&mut s).expect("hello reply");
    }
    let _ = s.write_all(bytes);
    let r = read_reply(&mut s);
    // After an error the helper closes the connection.
    if matches!(r, Some(Response::Error { .. })) {
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(rest.is_empty(), "helper kept talking after an error");
    }
    r
}

fn read_reply(s: &mut UnixStream) -> Option<Response> {
    let mut p = [0u8; HEADER_LEN];
    s.read_exact(&mut p).ok()?;
    let n = protocol::check_len(p).unwrap();
    let mut body = vec![0u8; n];
    s.read_exact(&mut body).ok()?;
    Some(protocol::decode_response(&body).unwrap())
}

fn code_of(r: Option<Response>) -> protocol::ErrorCode {
    match r {
        Some(Response::Error { code, .. }) => code,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

#[test]
fn malformed_frames_are_refused_and_the_helper_keeps_serving() {
    if !root_or_skip("malformed_frames_are_refused_and_the_helper_keeps_serving") {
        return;
    }
    use protocol::ErrorCode as E;
    let mut helper = Helper::start(None, None);
    let s = helper.socket.clone();
    let good = protocol::encode_request(&protocol::Request::GetKey);

    let mut bad_version = good.clone();
    bad_version[4] = 99;
    assert_eq!(code_of(raw(&s, &bad_version, false)), E::UnsupportedVersion);

    let mut unknown = good.clone();
    unknown[5] = 0x55;
    assert_eq!(code_of(raw(&s, &unknown, true)), E::BadFrame);

    let oversize = [0xff, 0xff, 0xff, 0xff, 1, 3];
    assert_eq!(code_of(raw(&s, &oversize, false)), E::BadFrame);

    let mut trailing = good.clone();
    trailing[3] += 3;
    trailing.extend_from_slice(&[1, 2, 3]);
    assert_eq!(code_of(raw(&s, &trailing, true)), E::BadFrame);

    // Hello must come first.
    assert_eq!(code_of(raw(&s, &good, false)), E::BadSequence);

    // Hello with no common version.
    let hello9 = [0, 0, 0, 4, 1, 1, 9, 9];
    assert_eq!(code_of(raw(&s, &hello9, false)), E::UnsupportedVersion);

    // Truncated frames: the caller disconnects mid-request.
    for cut in [1, 3, 5, good.len() - 1] {
        let mut st = UnixStream::connect(&s).unwrap();
        st.write_all(&good[..cut]).unwrap();
        drop(st);
    }
    let tun = protocol::encode_request(&protocol::Request::CreateTun(params(
        "coral-x",
        [100, 64, 0, 9],
        10,
        1420,
    )));
    let mut st = UnixStream::connect(&s).unwrap();
    st.write_all(&tun[..tun.len() - 2]).unwrap();
    st.shutdown(std::net::Shutdown::Write).unwrap();
    drop(st);

    // Garbage.
    let garbage: Vec<u8> = (0..2000u32).map(|i| (i * 7919 % 251) as u8).collect();
    let _ = raw(&s, &garbage, false);

    assert!(helper.alive(), "helper died");
    let mut c = Client::connect(&s).unwrap();
    c.get_key().unwrap();
    let log = helper.stop(&["outcome=bad_frame"]);
    assert!(log.contains("outcome=bad_frame"), "{log}");
}

/// Encodes a CreateTun frame with an arbitrary (possibly invalid) name.
fn tun_frame_with_name(name: &[u8]) -> Vec<u8> {
    let mut pl = vec![name.len() as u8];
    pl.extend_from_slice(name);
    pl.extend_from_slice(&[100, 64, 0, 1, 10, 0x05, 0x8c]);
    let mut f = ((pl.len() + 2) as u32).to_be_bytes().to_vec();
    f.extend_from_slice(&[protocol::VERSION, 0x02]);
    f.extend_from_slice(&pl);
    f
}

#[test]
fn bad_interface_names_and_arguments_are_refused() {
    if !root_or_skip("bad_interface_names_and_arguments_are_refused") {
        return;
    }
    use protocol::ErrorCode as E;
    let ns = NetNs::new();
    let mut helper = Helper::start(Some(&ns), None);
    let s = helper.socket.clone();
    for name in [
        &b"coral/x"[..],
        b"",
        b"coral0123456789ab",
        b"coral%d",
        b"..",
        b"coral x",
        b"coral\0",
    ] {
        assert_eq!(
            code_of(raw(&s, &tun_frame_with_name(name), true)),
            E::BadFrame,
            "name {name:?}"
        );
    }
    let mut c = Client::connect(&s).unwrap();
    for (p, what) in [
        (params("eth9", [100, 64, 0, 1], 10, 1420), "prefix"),
        (params("coral-a", [10, 0, 0, 1], 8, 1420), "mesh range"),
        (params("coral-a", [100, 64, 0, 1], 9, 1420), "mesh range"),
        (params("coral-a", [100, 64, 0, 1], 10, 68), "MTU"),
    ] {
        let e = c.create_tun(&p).unwrap_err();
        assert!(matches!(e, ClientError::Invalid(_)), "{what}: {e}");
    }
    assert!(helper.alive());
    assert!(!ns.sh(&["ls", "/sys/class/net"]).contains("coral"));
}

#[test]
fn open_tun_uses_the_helper_or_creates_directly() {
    if !root_or_skip("open_tun_uses_the_helper_or_creates_directly") {
        return;
    }
    let ns = NetNs::new();
    let helper = Helper::start(Some(&ns), None);
    let sock = helper.socket.clone();
    let (name, how) = ns.run(move || {
        let (t, how) = open_tun(&sock, &params("coral-h", [100, 64, 1, 1], 16, 1420)).unwrap();
        (t.name.to_string(), how)
    });
    assert_eq!((name.as_str(), how), ("coral-h", TunPath::Helper));

    let missing = helper.dir.path().join("nope.sock");
    let (name, how, up) = ns.run(move || {
        let (t, how) = open_tun(&missing, &params("coral-d", [100, 64, 2, 1], 16, 1300)).unwrap();
        let mtu = fs::read_to_string("/proc/thread-self/net/dev").unwrap();
        (t.name.to_string(), how, mtu.contains("coral-d"))
    });
    assert_eq!((name.as_str(), how), ("coral-d", TunPath::Direct));
    assert!(up);
}

#[test]
fn unreachable_helper_error_says_what_to_run() {
    let e = Client::connect(Path::new("/nonexistent/coral/privhelper.sock")).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.starts_with(
            "cannot reach coral-privhelper at /nonexistent/coral/privhelper.sock: no such file"
        ),
        "{msg}"
    );
    // Issue 13: the hint names the doctor and the group, never setcap
    // (which would undo the privilege separation and grants no BPF).
    assert!(msg.contains("coral doctor"), "{msg}");
    assert!(msg.contains("group 'coral'"), "{msg}");
    assert!(!msg.contains("setcap"), "{msg}");
}

#[test]
fn group_hints_say_what_to_do() {
    use coral_privhelper::client::Membership;
    let g = "coral".to_string();
    assert!(
        Membership::NotInSession(g.clone())
            .hint()
            .contains("log in again or run 'newgrp coral'")
    );
    assert!(
        Membership::NotMember(g.clone())
            .hint()
            .contains("sudo usermod -aG coral $USER")
    );
    assert!(
        Membership::NoGroup(g)
            .hint()
            .contains("install the coral package")
    );
}

#[test]
fn socket_activation_and_inherited_fds_are_handled() {
    if !root_or_skip("socket_activation_and_inherited_fds_are_handled") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("activated.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let unused = dir.path().join("unused.sock");
    // The listener arrives as stdin; the shell moves it to fd 3, leaves an
    // extra fd 5 open, sets LISTEN_PID to its own pid and execs the helper.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(
            "exec 3<&0 0</dev/null 5</etc/hostname; \
             LISTEN_PID=$$ LISTEN_FDS=1 SECRET_ENV=x exec \"$0\" --socket \"$1\" --state-dir \"$2\" --config \"$3\"",
        )
        .arg(env!("CARGO_BIN_EXE_coral-privhelper"))
        .arg(&unused)
        .arg(dir.path().join("state"))
        .arg(dir.path().join("none.conf"))
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(listener)))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let c = (0..100).find_map(|_| {
        std::thread::sleep(Duration::from_millis(20));
        Client::connect(&path).ok()
    });
    let fds: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    // What each fd is: fd 5 may now be an accepted connection (fd 4 is the
    // target process's socket), never the inherited /etc/hostname.
    let hostname_open = fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| fs::read_link(e.unwrap().path()).ok())
        .any(|l| l == Path::new("/etc/hostname"));
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(c.is_some(), "helper did not serve the activation socket");
    assert!(!unused.exists(), "helper bound --socket despite activation");
    let mut fds = fds;
    fds.sort();
    // 0-2, the activation socket, and nothing inherited; the accepted
    // connection may or may not still be open.
    assert!(
        fds.starts_with(&["0".into(), "1".into(), "2".into(), "3".into()]) && !hostname_open,
        "open fds: {fds:?}"
    );
    assert!(status.contains("Umask:\t0077"), "{status}");
}

/// Issue 16 item 6: a refused local user held the same 16 slots as allowed
/// callers (root got 32 of 200 Hellos through while it flooded), and a
/// caller that found every slot taken was closed without reading its `Busy`
/// reply, unlogged. Refusals now take no slot, and `Busy` is answered (after
/// the caller could read it) and logged.
#[test]
fn issue16_refused_callers_take_no_slot_and_busy_is_answered() {
    if !root_or_skip("issue16_refused_callers_take_no_slot_and_busy_is_answered") {
        return;
    }
    // No config file: group coral (+ root). Nobody is not in it.
    let helper = Helper::start(None, None);
    let flood = r#"
import socket, sys, threading, time
path, end = sys.argv[1], time.time() + float(sys.argv[2])
def run():
    while time.time() < end:
        held = []
        for _ in range(32):
            try:
                s = socket.socket(socket.AF_UNIX)
                s.connect(path)
                held.append(s)
            except OSError:
                pass
        time.sleep(0.05)
        for s in held:
            s.close()
ts = [threading.Thread(target=run) for _ in range(4)]
[t.start() for t in ts]
[t.join() for t in ts]
"#;
    let mut flooder = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
        ])
        .arg(flood)
        .arg(&helper.socket)
        .arg("60")
        .spawn()
        .expect("run the flood as nobody");
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let ok = (0..200)
        .filter(|_| Client::connect(&helper.socket).is_ok())
        .count();
    let took = t.elapsed();
    let flooding = flooder.try_wait().unwrap().is_none();
    let _ = flooder.kill();
    let _ = flooder.wait();
    eprintln!("root: {ok}/200 Hellos answered in {took:?} while nobody flooded");
    assert!(flooding, "the flood ended before root's Hellos were done");
    assert_eq!(ok, 200, "a refused user's flood starved root");

    // Every slot held by allowed callers: the next one reads Busy.
    let held: Vec<Client> = (0..16)
        .map(|_| Client::connect(&helper.socket).unwrap())
        .collect();
    let hello = protocol::encode_request(&protocol::Request::Hello {
        min_version: 1,
        max_version: 1,
    });
    assert_eq!(
        code_of(raw(&helper.socket, &hello, false)),
        protocol::ErrorCode::Busy
    );
    drop(held);
    let log = helper.stop(&["busy: all 16 connections in use", "uid=65534"]);
    assert!(log.contains("busy: all 16 connections in use"), "{log}");
    assert!(log.contains("uid=65534 pid="), "{log}");
}
