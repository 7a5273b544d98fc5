//! Uprobes on a running Go program (issue 12), directly and through the real
//! helper binary: entry arguments and return-instruction events arrive with
//! the goroutine and its stack depth, offsets the helper's own decode does
//! not allow are refused, and once the caller closes its fds nothing is left
//! in the kernel and the program's text is unchanged.

mod support;

use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aya::maps::{HashMap, Map, MapData, RingBuf};
use coral_ebpf::{
    CFG_ARGS, CFG_GO, KIND_ENTRY, KIND_RET_INSN, KIND_URETPROBE, UprobeEvent, uprobe_config,
};
use coral_privhelper::elfcode::Binary;
use coral_privhelper::{BpfPath, ClientError, UprobeObject, UprobePoint};
use support::{Running, go_build, have};

fn root_or_skip(test: &str) -> bool {
    let ok = nix::unistd::geteuid().is_root()
        && Path::new("/sys/bus/event_source/devices/uprobe/type").exists()
        && Command::new("bpftool").arg("version").output().is_ok()
        && have("go");
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test}: needs root, the uprobe PMU, bpftool and go (CI=true: failing instead of skipping)"
        );
        eprintln!("SKIP {test}: needs root, the uprobe PMU, bpftool and go");
    }
    ok
}

fn configure(obj: &UprobeObject, id: u32, cfg: [u8; coral_ebpf::UPROBE_CFG_BYTES]) {
    let fd: OwnedFd = obj.maps[1].try_clone().unwrap();
    let mut probes: HashMap<MapData, u32, [u8; coral_ebpf::UPROBE_CFG_BYTES]> =
        HashMap::try_from(Map::HashMap(MapData::from_fd(fd).unwrap())).unwrap();
    probes.insert(id, cfg, 0).unwrap();
}

fn collect(obj: &UprobeObject, want: impl Fn(&[UprobeEvent]) -> bool) -> Vec<UprobeEvent> {
    let fd = obj.maps[0].try_clone().unwrap();
    let mut ring = RingBuf::try_from(Map::RingBuf(MapData::from_fd(fd).unwrap())).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !want(&out) {
        while let Some(item) = ring.next() {
            out.push(UprobeEvent::parse(&item).expect("event size"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    out
}

fn link_ids_of(pid: u32) -> Vec<u64> {
    let mut ids = Vec::new();
    for e in fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
    {
        let info = fs::read_to_string(e.path()).unwrap_or_default();
        ids.extend(
            info.lines()
                .filter_map(|l| l.strip_prefix("link_id:"))
                .filter_map(|v| v.trim().parse::<u64>().ok()),
        );
    }
    ids
}

fn assert_links_gone(ids: &[u64]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left: Vec<_> = ids
            .iter()
            .filter(|id| {
                Command::new("bpftool")
                    .args(["link", "show", "id", &id.to_string()])
                    .output()
                    .is_ok_and(|o| o.status.success())
            })
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "links left: {left:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The byte at `vaddr` of a non-PIE process, read from its memory.
fn text_byte(pid: u32, vaddr: u64) -> u8 {
    let mem = fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut b = [0u8];
    mem.read_exact_at(&mut b, vaddr).unwrap();
    b[0]
}

struct Target {
    _dir: tempfile::TempDir,
    bin: PathBuf,
    data: Vec<u8>,
    code: Binary,
}

fn target() -> Target {
    let dir = tempfile::tempdir().unwrap();
    let bin = go_build(dir.path(), "debugee", &[]);
    let data = fs::read(&bin).unwrap();
    let code = Binary::parse(&data).unwrap();
    Target {
        _dir: dir,
        bin,
        data,
        code,
    }
}

/// Attaches Add's entry (args) and Classify's returns (result string), checks
/// the events; returns the link fds.
fn attach_and_check(obj: &mut UprobeObject, t: &Target, app: &mut Running) -> Vec<OwnedFd> {
    let pid = app.pid();
    let add = t.code.by_name("main.Add").unwrap().clone();
    let classify = t.code.by_name("main.Classify").unwrap().clone();
    configure(obj, 1, uprobe_config(CFG_ARGS | CFG_GO, &[]));
    // Classify returns a string: ptr in RAX (0), len in RBX (1).
    configure(obj, 2, uprobe_config(CFG_ARGS | CFG_GO, &[(0, 1)]));
    let point = |probe_id, kind, offset| UprobePoint {
        probe_id,
        kind,
        pid,
        offset,
        path: t.bin.display().to_string(),
    };
    let original = text_byte(pid, add.addr);
    let mut links = vec![obj.attach(&point(1, KIND_ENTRY, add.offset)).unwrap()];
    assert_eq!(text_byte(pid, add.addr), 0xCC, "int3 while attached");
    let rets = t.code.return_offsets(&t.data, &classify);
    assert!(rets.len() >= 2);
    for r in &rets {
        links.push(obj.attach(&point(2, KIND_RET_INSN, *r)).unwrap());
    }
    // Refused: inside an instruction, a uretprobe on Go, a process that
    // does not map the binary.
    let ins = t.code.decode(&t.data, &classify);
    let inside = (ins[0].0..ins[1].0)
        .nth(1)
        .map(|v| t.code.file_offset(v).unwrap());
    if let Some(inside) = inside {
        let e = obj.attach(&point(3, KIND_RET_INSN, inside)).unwrap_err();
        assert!(
            matches!(e, ClientError::Invalid(ref m) if m.contains("boundary")),
            "{e}"
        );
    }
    let e = obj
        .attach(&point(3, KIND_URETPROBE, add.offset))
        .unwrap_err();
    assert!(e.to_string().contains("refused on Go binaries"), "{e}");
    let e = obj
        .attach(&UprobePoint {
            pid: std::process::id(),
            ..point(3, KIND_ENTRY, add.offset)
        })
        .unwrap_err();
    assert!(e.to_string().contains("not mapped"), "{e}");

    let events = collect(obj, |ev| {
        ev.iter().filter(|e| e.probe_id == 1).count() >= 3
            && ev.iter().filter(|e| e.probe_id == 2).count() >= 3
    });
    let entries: Vec<_> = events.iter().filter(|e| e.probe_id == 1).collect();
    assert!(entries.len() >= 3, "{} entry events", entries.len());
    for e in &entries {
        assert_eq!(e.tgid, pid);
        assert_eq!(e.kind, KIND_ENTRY);
        assert_eq!(e.regs[1], 2, "Add(i, 2): b in RBX");
        assert!(e.g != 0 && e.stack_hi > e.sp, "{e:?}");
    }
    // Consecutive calls: a is i, counting up.
    assert!(entries.windows(2).all(|w| w[1].regs[0] > w[0].regs[0]));
    let results: Vec<String> = events
        .iter()
        .filter(|e| e.probe_id == 2)
        .map(|e| String::from_utf8_lossy(e.strs[0].as_deref().unwrap()).into_owned())
        .collect();
    assert!(
        results
            .iter()
            .all(|r| ["negative", "zero", "even", "odd"].contains(&r.as_str())),
        "{results:?}"
    );
    assert!(app.alive(), "the target crashed");
    assert_eq!(original, t.data[add.offset as usize]);
    links
}

#[test]
fn direct_attach_sees_args_and_returns_and_leaves_nothing() {
    if !root_or_skip("direct_attach_sees_args_and_returns_and_leaves_nothing") {
        return;
    }
    let t = target();
    let mut app = Running::start(&t.bin, 5, 60);
    let (mut obj, path) =
        UprobeObject::open(Path::new("/nonexistent/cuprobe.sock"), 1 << 16).unwrap();
    assert_eq!(path, BpfPath::Direct);
    let links = attach_and_check(&mut obj, &t, &mut app);
    obj.release();
    let ids = link_ids_of(std::process::id());
    assert!(ids.len() >= links.len(), "{ids:?}");
    let add = t.code.by_name("main.Add").unwrap();
    drop(links);
    drop(obj);
    assert_links_gone(&ids);
    assert_eq!(
        text_byte(app.pid(), add.addr),
        t.data[add.offset as usize],
        "text restored"
    );
    std::thread::sleep(Duration::from_millis(100));
    assert!(app.alive());
}

struct Helper {
    child: Child,
    _dir: tempfile::TempDir,
    socket: PathBuf,
    log: PathBuf,
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_helper() -> Helper {
    let dir = tempfile::Builder::new()
        .prefix("cuprobe-helper")
        .tempdir()
        .unwrap();
    let socket = dir.path().join("privhelper.sock");
    let conf = dir.path().join("privhelper.conf");
    fs::write(&conf, "allow_uid = 65534\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&conf, fs::Permissions::from_mode(0o600)).unwrap();
    let log = dir.path().join("helper.log");
    let child = Command::new(env!("CARGO_BIN_EXE_coral-privhelper"))
        .arg("--socket")
        .arg(&socket)
        .arg("--config")
        .arg(&conf)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "helper did not bind");
        std::thread::sleep(Duration::from_millis(20));
    }
    Helper {
        child,
        _dir: dir,
        socket,
        log,
    }
}

#[test]
fn helper_attaches_checked_points_and_keeps_nothing() {
    if !root_or_skip("helper_attaches_checked_points_and_keeps_nothing") {
        return;
    }
    let t = target();
    let mut app = Running::start(&t.bin, 5, 60);
    let helper = start_helper();
    if let Err(e) = coral_privhelper::client::Client::connect(&helper.socket) {
        let log = fs::read_to_string(&helper.log).unwrap_or_default();
        panic!("the helper does not answer: {e}\n{log}");
    }
    let (mut obj, path) = UprobeObject::open(&helper.socket, 1 << 16).unwrap();
    assert_eq!(path, BpfPath::Helper);
    let links = attach_and_check(&mut obj, &t, &mut app);
    obj.release();
    let log = fs::read_to_string(&helper.log).unwrap();
    assert!(log.contains("req=uprobe_attach"), "{log}");
    assert!(log.contains("function=\"main.Add\" outcome=ok"), "{log}");
    assert!(
        log.contains("not an instruction boundary") || log.contains("outcome=failed"),
        "{log}"
    );
    let ids = link_ids_of(std::process::id());
    assert!(ids.len() >= links.len());
    assert!(
        link_ids_of(helper.child.id()).is_empty(),
        "the helper keeps no link"
    );
    drop(links);
    drop(obj);
    assert_links_gone(&ids);
    assert!(app.alive());
}
