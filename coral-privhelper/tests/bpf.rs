//! BPF load/attach through the real helper binary and directly, checked
//! with bpftool: what a caller holds is all there is, and once it closes its
//! fds (or dies) no Coral program, map or link is left in the kernel.
//! Issue 5.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use coral_privhelper::protocol::{self, ErrorCode, ObjectName, Request, Response};
use coral_privhelper::{BpfPath, Client, bpf, open_bpf, wire};

fn root_or_skip(test: &str) -> bool {
    let ok = nix::unistd::geteuid().is_root()
        && Path::new("/sys/kernel/btf/vmlinux").exists()
        && Command::new("bpftool").arg("version").output().is_ok();
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test}: needs root, BTF and bpftool (CI=true: failing instead of skipping)"
        );
        eprintln!("SKIP {test}: needs root, /sys/kernel/btf/vmlinux and bpftool");
    }
    ok
}

/// Ids of the BPF programs, maps and links whose fds `pid` holds, from
/// `/proc/PID/fdinfo` (this bpftool has no pid iterator).
#[derive(Debug, Default, PartialEq)]
struct Held {
    progs: Vec<u64>,
    maps: Vec<u64>,
    links: Vec<u64>,
}

fn held_by(pid: u32) -> Held {
    let mut h = Held::default();
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return h;
    };
    for e in dir.flatten() {
        let info = fs::read_to_string(e.path()).unwrap_or_default();
        for line in info.lines() {
            let mut kv = line.split(':');
            let (Some(k), Some(v)) = (kv.next(), kv.next()) else {
                continue;
            };
            let Ok(id) = v.trim().parse::<u64>() else {
                continue;
            };
            match k {
                "prog_id" => h.progs.push(id),
                "map_id" => h.maps.push(id),
                "link_id" => h.links.push(id),
                _ => {}
            }
        }
    }
    for v in [&mut h.progs, &mut h.maps, &mut h.links] {
        v.sort_unstable();
        v.dedup();
    }
    h
}

/// Which of `ids` still exist.
fn still_there(kind: &str, ids: &[u64]) -> Vec<u64> {
    ids.iter()
        .copied()
        .filter(|id| {
            Command::new("bpftool")
                .args([kind, "show", "id", &id.to_string()])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .collect()
}

fn assert_gone(h: &Held) {
    // The kernel frees programs and maps from a workqueue: allow a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = (
            still_there("prog", &h.progs),
            still_there("map", &h.maps),
            still_there("link", &h.links),
        );
        if left.0.is_empty() && left.1.is_empty() && left.2.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "left in the kernel: {left:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn client_example() -> PathBuf {
    // target/<profile>/deps/<test> -> target/<profile>/examples/privhelper-client
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .and_then(Path::parent)
        .unwrap()
        .join("examples/privhelper-client")
}

struct Helper {
    child: Child,
    dir: tempfile::TempDir,
    socket: PathBuf,
}

impl Helper {
    fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("cebpf-helper")
            .tempdir()
            .unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let socket = dir.path().join("privhelper.sock");
        let conf = dir.path().join("privhelper.conf");
        fs::write(&conf, "allow_uid = 65534\n").unwrap();
        fs::set_permissions(&conf, fs::Permissions::from_mode(0o600)).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_coral-privhelper"))
            .arg("--socket")
            .arg(&socket)
            .arg("--config")
            .arg(&conf)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.path().join("helper.log")).unwrap())
            .spawn()
            .expect("start helper");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "helper did not bind");
            std::thread::sleep(Duration::from_millis(20));
        }
        Helper { child, dir, socket }
    }

    fn log_until(&self, expect: &[&str]) -> String {
        let path = self.dir.path().join("helper.log");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let log = fs::read_to_string(&path).unwrap_or_default();
            if expect.iter().all(|e| log.contains(e)) || Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn direct_load_attaches_every_program_and_closing_leaves_nothing() {
    if !root_or_skip("direct_load_attaches_every_program_and_closing_leaves_nothing") {
        return;
    }
    let sock = Path::new("/nonexistent/cebpf.sock");
    let (fds, path) = open_bpf(sock, coral_ebpf::RED, 1 << 16).expect("load directly as root");
    assert_eq!(path, BpfPath::Direct);
    let cpus = bpf::possible_cpus().unwrap();
    assert_eq!(fds.maps.len(), 2 + cpus);
    assert_eq!(fds.progs.len(), coral_ebpf::RED_PROGRAMS.len());
    assert_eq!(fds.links.len(), coral_ebpf::RED_PROGRAMS.len());
    let held = held_by(std::process::id());
    assert!(
        held.progs.len() >= coral_ebpf::RED_PROGRAMS.len(),
        "{held:?}"
    );
    assert!(
        held.links.len() >= coral_ebpf::RED_PROGRAMS.len(),
        "{held:?}"
    );
    assert!(held.maps.len() > cpus, "{held:?}");
    drop(fds);
    assert_gone(&held);
}

#[test]
fn helper_loads_for_an_unprivileged_caller_and_nothing_outlives_it() {
    if !root_or_skip("helper_loads_for_an_unprivileged_caller_and_nothing_outlives_it") {
        return;
    }
    let helper = Helper::start();
    let mut client = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(client_example())
        .arg(&helper.socket)
        .arg("bpf-load")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run client as uid 65534");
    let mut out = BufReader::new(client.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    if line.is_empty() {
        let mut err = String::new();
        std::io::Read::read_to_string(client.stderr.as_mut().unwrap(), &mut err).unwrap();
        panic!("client failed: {err}");
    }
    let cpus = bpf::possible_cpus().unwrap();
    let n = coral_ebpf::RED_PROGRAMS.len();
    assert_eq!(
        line.trim(),
        format!("maps {} progs {n} links {n} stats-readable true", 2 + cpus)
    );
    let log = helper.log_until(&["req=bpf_release"]);
    assert!(log.contains("req=bpf_load name=coral"), "{log}");
    assert!(log.contains("outcome=ok maps="), "{log}");
    assert_eq!(log.matches("req=bpf_attach").count(), n, "{log}");
    assert!(
        log.contains("tp_btf=sock:inet_sock_set_state outcome=ok"),
        "{log}"
    );
    // Everything is held by the unprivileged client, nothing by the helper.
    let held = held_by(client.id());
    assert_eq!(held.progs.len(), n, "{held:?}");
    assert_eq!(held.links.len(), n, "{held:?}");
    assert_eq!(held_by(helper.child.id()), Held::default());
    // Kill the client (no goodbye): the kernel frees everything.
    client.kill().unwrap();
    client.wait().unwrap();
    assert_gone(&held);
}

#[test]
fn helper_refuses_a_wrong_hash_an_unknown_object_and_attach_before_load() {
    if !root_or_skip("helper_refuses_a_wrong_hash_an_unknown_object_and_attach_before_load") {
        return;
    }
    let helper = Helper::start();
    let raw = |req: &Request| {
        let s = std::os::unix::net::UnixStream::connect(&helper.socket).unwrap();
        for r in [
            Request::Hello {
                min_version: 1,
                max_version: 1,
            },
            req.clone(),
        ] {
            wire::send_frame(&s, &protocol::encode_request(&r), None).unwrap();
            let (resp, fds) = wire::recv_response(&s).unwrap();
            if !matches!(resp, Response::HelloOk { .. }) {
                assert!(fds.is_empty());
                return resp;
            }
        }
        unreachable!()
    };
    let mut wrong = coral_ebpf::object(coral_ebpf::RED).unwrap().sha256;
    wrong[0] ^= 1;
    let load = |name: &str, sha256, ring_bytes| Request::BpfLoad {
        name: ObjectName::new(name).unwrap(),
        sha256,
        ring_bytes,
    };
    match raw(&load("coral", wrong, 1 << 16)) {
        Response::Error { code, message } => {
            assert_eq!(code, ErrorCode::InvalidArgument);
            assert!(message.contains("hash"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let good = coral_ebpf::object(coral_ebpf::RED).unwrap().sha256;
    for (req, code) in [
        (load("other", good, 1 << 16), ErrorCode::InvalidArgument),
        (load("coral", good, 3000), ErrorCode::InvalidArgument),
        (Request::BpfAttach { prog: 0 }, ErrorCode::BadSequence),
    ] {
        match raw(&req) {
            Response::Error { code: c, .. } => assert_eq!(c, code, "{req:?}"),
            other => panic!("{req:?}: {other:?}"),
        }
    }
    // The helper still serves.
    let mut c = Client::connect(&helper.socket).unwrap();
    let fds = c.bpf_load_and_attach(coral_ebpf::RED, 1 << 16).unwrap();
    assert_eq!(fds.links.len(), coral_ebpf::RED_PROGRAMS.len());
    let log = helper.log_until(&["outcome=failed", "released=true"]);
    assert!(log.contains("has hash"), "{log}");
    let _ = std::io::stdout().flush();
}
