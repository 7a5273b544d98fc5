//! Issue 12: `coral debug` end to end on a running Go 1.19 program connected
//! as a service: real colony and agent processes (the agent loads the uprobe
//! object itself as root; without its sandbox, see `setup`), the CLI's JSON output,
//! calls with arguments, results and durations, the colony's audit records,
//! and nothing left in the kernel after detach and after `kill -9` of the
//! agent (bpftool). Skips without root, the uprobe PMU, bpftool or go, and
//! fails instead when CI=true.

mod common;

use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(20);

fn root_or_skip(test: &str) -> bool {
    let ok = nix::unistd::geteuid().is_root()
        && Path::new("/sys/bus/event_source/devices/uprobe/type").exists()
        && Command::new("bpftool").arg("version").output().is_ok()
        && Command::new("go").arg("version").output().is_ok();
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test}: needs root, the uprobe PMU, bpftool and go (CI=true: failing instead of skipping)"
        );
        eprintln!("SKIP {test}: needs root, the uprobe PMU, bpftool and go");
    }
    ok
}

/// Builds tests/targets/debugee.go into `dir` (which the agent may read:
/// its policy file lives there too).
fn build_debugee(dir: &Path) -> PathBuf {
    let src = dir.join("debugee.go");
    std::fs::write(&src, include_str!("targets/debugee.go")).unwrap();
    let bin = dir.join("debugee");
    let st = Command::new("go")
        .args(["build", "-o"])
        .arg(&bin)
        .arg(&src)
        .env("GOCACHE", dir.join("gocache"))
        .env("GOPATH", dir.join("gopath"))
        .env("GO111MODULE", "off")
        .env("CGO_ENABLED", "0")
        .status()
        .unwrap();
    assert!(st.success(), "go build");
    bin
}

struct App {
    child: Child,
    port: u16,
}

impl App {
    fn start(bin: &Path) -> App {
        let mut child = Command::new(bin)
            .args(["5", "120"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .split_whitespace()
            .nth(2)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("ready line {line:?}"));
        App { child, port }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The BPF links `pid` holds whose program is Coral's uprobe program (the
/// agent's RED capture holds links of its own).
fn link_ids(pid: i32) -> Vec<u64> {
    let mut ids = Vec::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return ids;
    };
    for e in dir.flatten() {
        let info = std::fs::read_to_string(e.path()).unwrap_or_default();
        let field = |k: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let (Some(link), Some(prog)) = (field("link_id:"), field("prog_id:")) else {
            continue;
        };
        let out = Command::new("bpftool")
            .args(["-j", "prog", "show", "id", &prog.to_string()])
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if v["name"] == "coral_uprobe" {
            ids.push(link);
        }
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
        assert!(
            Instant::now() < deadline,
            "links left in the kernel: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn setup() -> (Env, App) {
    setup_with("")
}

fn setup_with(extra: &str) -> (Env, App) {
    setup_full(extra, None)
}

/// With `helper`, the agent uses that coral-privhelper socket and keeps its
/// default sandbox; without, it has no helper and runs unsandboxed.
fn setup_full(extra: &str, helper: Option<&Path>) -> (Env, App) {
    let env = Env::new("");
    let policy = env.root().join("policy.toml");
    // Who may probe what: the host's policy (`[[debug]]`).
    std::fs::write(
        &policy,
        "version = 1\n\n[[debug]]\nname = \"debugee\"\nservices = [\"api\"]\nfunctions = [\"main.*\"]\nargs = true\n\n[[debug]]\nname = \"runtime-no-args\"\nservices = [\"api\"]\nfunctions = [\"runtime.nanotime*\"]\n",
    )
    .unwrap();
    std::fs::write(
        env.config_dir().join("config.toml"),
        format!(
            "{FAST_CONFIG}\n[agent.exec]\npolicy = \"{}\"\n\n[agent.mesh]\nhelper_socket = \"{}\"\n{extra}",
            policy.display(),
            helper
                .map(Path::to_path_buf)
                .unwrap_or_else(|| env.root().join("no-helper.sock"))
                .display()
        ),
    )
    .unwrap();
    let bin = build_debugee(env.root());
    let app = App::start(&bin);
    env.start_colony();
    // Landlock scopes ptrace-class access (/proc/PID/exe, fd, maps) to the
    // agent's own domain: a sandboxed agent finds and reads another
    // process's binary only through coral-privhelper (OpenTarget).
    let sandbox = if helper.is_some() { "enforce" } else { "off" };
    let out = env
        .command(&["agent", "start", "--daemon", "--sandbox", sandbox])
        .output()
        .unwrap();
    assert!(out.status.success(), "agent start: {}", stderr(&out));
    env.ok(&["connect", &format!("api:{}:tcp", app.port)]);
    wait_service_known(&env, "api", T);
    (env, app)
}

#[test]
fn debug_attach_logs_detach_through_the_colony_and_nothing_is_left() {
    if !root_or_skip("debug_attach_logs_detach_through_the_colony_and_nothing_is_left") {
        return;
    }
    let (env, app) = setup();
    let agent = env.pid_of("agent").expect("agent pid");

    let f = env.json(&["debug", "functions", "api", "main.", "--json"]);
    assert_eq!(f["pid"], app.child.id());
    assert_eq!(f["lang"], "go");
    assert_eq!(f["has_dwarf"], true);
    let greet = f["functions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "main.Greet")
        .expect("main.Greet listed");
    assert_eq!(greet["params"][0], "name string");

    let before = link_ids(agent);
    assert!(before.is_empty());
    let t0 = Instant::now();
    let s = env.json(&[
        "debug",
        "attach",
        "api",
        "--function",
        "Greet",
        "--function",
        "Nap",
        "--duration",
        "30s",
        "--args",
        "--stack",
        "--json",
    ]);
    eprintln!(
        "coral debug attach (CLI → colony → agent, 2 functions): {:?}",
        t0.elapsed()
    );
    let id = s["id"].as_str().unwrap().to_string();
    assert_eq!(s["state"], "active");
    assert_eq!(s["attached_via"], "direct (CAP_BPF)");
    let points = s["attach_points"].as_u64().unwrap();
    assert!(points >= 3, "{s}");
    let held: Vec<u64> = link_ids(agent)
        .into_iter()
        .filter(|l| !before.contains(l))
        .collect();
    assert_eq!(held.len() as u64, points, "{held:?}");

    // The calls arrive with arguments, results and durations.
    let deadline = Instant::now() + T;
    let calls: Vec<Value> = loop {
        let out = env.ok(&["debug", "logs", "api", "--session", &id, "--json"]);
        let calls: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if calls
            .iter()
            .filter(|c| c["function"] == "main.Greet")
            .count()
            >= 3
            && calls.iter().any(|c| c["function"] == "main.Nap")
        {
            break calls;
        }
        assert!(Instant::now() < deadline, "no calls: {out}");
        std::thread::sleep(Duration::from_millis(200));
    };
    for c in calls.iter().filter(|c| c["function"] == "main.Greet") {
        assert_eq!(c["args"][0]["value"], "\"coral\"", "{c}");
        assert_eq!(c["results"][1]["value"], "nil", "{c}");
    }
    for c in calls.iter().filter(|c| c["function"] == "main.Nap") {
        assert_eq!(c["args"][0]["value"], "5");
        assert!(c["duration_ns"].as_u64().unwrap() >= 5_000_000, "{c}");
    }
    let human = env.ok(&["debug", "logs", "api", "--session", &id]);
    assert!(human.contains("main.Greet(name=\"coral\""), "{human}");
    assert!(human.contains("      at main.main+0x"), "{human}");

    let list = env.json(&["debug", "list", "api", "--json"]);
    let row = &list.as_array().unwrap()[0];
    assert_eq!(row["id"], id.as_str());
    assert!(row["probes"][0]["hits"].as_u64().unwrap() > 0, "{row}");

    let ended = env.json(&["debug", "detach", "api", "--all", "--json"]);
    assert_eq!(ended[0]["state"], "detached");
    assert_links_gone(&held);
    let mut now = link_ids(agent);
    now.sort_unstable();
    let mut was = before.clone();
    was.sort_unstable();
    assert_eq!(now, was, "the agent still holds debug links");

    // The colony audited attach and detach with their CLI equivalents.
    let audit = env.json(&["audit", "--json", "--since", "1h"]);
    let text = audit.to_string();
    assert!(text.contains("debug_attach"), "{text}");
    assert!(
        text.contains(
            "coral debug attach api --function Greet --function Nap --duration 30s --args --stack"
        ),
        "{text}"
    );
    assert!(text.contains("debug_detach"), "{text}");

    // An unknown function and a Python-like refusal are usage errors (64).
    let out = env.run(&["debug", "attach", "api", "--function", "NoSuch"]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no function 'NoSuch'"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn kill_9_of_the_agent_leaves_no_probe() {
    if !root_or_skip("kill_9_of_the_agent_leaves_no_probe") {
        return;
    }
    let (env, app) = setup();
    let agent = env.pid_of("agent").expect("agent pid");
    env.json(&[
        "debug",
        "attach",
        "api",
        "--function",
        "Add",
        "--duration",
        "5m",
        "--json",
    ]);
    let held = link_ids(agent);
    assert!(!held.is_empty());
    kill(agent, 9);
    wait_dead(agent, T);
    assert_links_gone(&held);
    // The program runs on, its text restored.
    std::thread::sleep(Duration::from_millis(200));
    let mut app = app;
    assert!(
        app.child.try_wait().unwrap().is_none(),
        "the Go program died"
    );
}

#[test]
fn mcp_debug_tools_round_trip_only_with_allow_debug() {
    if !root_or_skip("mcp_debug_tools_round_trip_only_with_allow_debug") {
        return;
    }
    // FAST_CONFIG has [colony] and its tables; a second [colony.mcp] table
    // is its own section.
    let (env, _app) = setup_with("\n[colony.mcp]\nallow_debug = true\n");
    let call = |name: &str, args: &str| -> Value {
        let out = env.ok(&["mcp", "call", name, args]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{name}: {e}: {out}"))
    };
    let f = call(
        "coral_debug_functions",
        r#"{"service": "api", "pattern": "main.Classify"}"#,
    );
    assert_eq!(f["functions"][0]["name"], "main.Classify", "{f}");
    let a = call(
        "coral_debug_attach",
        r#"{"service": "api", "functions": ["Classify"], "duration": "20s", "capture_args": true}"#,
    );
    let id = a["sessions"][0]["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + T;
    loop {
        let l = call("coral_debug_logs", r#"{"service": "api"}"#);
        let calls = l["calls"].as_array().unwrap();
        if calls.len() >= 3 {
            let r = calls[0]["results"][0]["value"].as_str().unwrap();
            assert!(
                ["\"negative\"", "\"zero\"", "\"even\"", "\"odd\""].contains(&r),
                "{r}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no calls: {l}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let d = call(
        "coral_debug_detach",
        &format!(r#"{{"service": "api", "session": "{id}"}}"#),
    );
    assert_eq!(d["sessions"][0]["state"], "detached");
    // Every call is in the colony's audit log with its CLI equivalent.
    let audit = env.json(&["audit", "--json", "--since", "1h"]).to_string();
    assert!(audit.contains("mcp coral_debug_attach"), "{audit}");
    assert!(
        audit.contains("coral debug attach api --function Classify --duration 20s --args"),
        "{audit}"
    );
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

/// The real coral-privhelper next to the coral binary (`cargo test
/// --workspace` builds it), on a private socket.
fn start_helper(test: &str) -> Option<Helper> {
    use std::os::unix::fs::PermissionsExt;
    let bin = Path::new(CORAL).with_file_name("coral-privhelper");
    if !bin.exists() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test}: {} is not built (CI=true: failing instead of skipping)",
            bin.display()
        );
        eprintln!("SKIP {test}: build coral-privhelper first (cargo build -p coral-privhelper)");
        return None;
    }
    let dir = tempfile::Builder::new()
        .prefix("cdebug-helper")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.path().join("privhelper.sock");
    let conf = dir.path().join("privhelper.conf");
    std::fs::write(&conf, "allow_uid = 65534\n").unwrap();
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o600)).unwrap();
    let log = dir.path().join("helper.log");
    let child = Command::new(bin)
        .arg("--socket")
        .arg(&socket)
        .arg("--config")
        .arg(&conf)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + T;
    while !socket.exists() {
        assert!(Instant::now() < deadline, "helper did not bind");
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(Helper {
        child,
        _dir: dir,
        socket,
        log,
    })
}

#[test]
fn a_sandboxed_agent_debugs_through_the_helper() {
    if !root_or_skip("a_sandboxed_agent_debugs_through_the_helper") {
        return;
    }
    let Some(helper) = start_helper("a_sandboxed_agent_debugs_through_the_helper") else {
        return;
    };
    let (env, app) = setup_full("", Some(&helper.socket));
    let agent = env.pid_of("agent").expect("agent pid");
    let status = std::fs::read_to_string(format!("/proc/{agent}/status")).unwrap();
    assert!(status.contains("Seccomp:\t2"), "the agent is not sandboxed");
    let f = env.json(&["debug", "functions", "api", "main.Greet", "--json"]);
    assert_eq!(f["pid"], app.child.id());
    let s = env.json(&[
        "debug",
        "attach",
        "api",
        "--function",
        "Greet",
        "--duration",
        "20s",
        "--args",
        "--json",
    ]);
    assert_eq!(s["attached_via"], "coral-privhelper", "{s}");
    let id = s["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + T;
    loop {
        let out = env.ok(&["debug", "logs", "api", "--session", &id, "--json"]);
        if out.lines().count() >= 3 {
            let c: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
            assert_eq!(c["args"][0]["value"], "\"coral\"", "{c}");
            break;
        }
        assert!(Instant::now() < deadline, "no calls");
        std::thread::sleep(Duration::from_millis(200));
    }
    let held = link_ids(agent);
    assert_eq!(held.len() as u64, s["attach_points"].as_u64().unwrap());
    assert!(
        link_ids(helper.child.id() as i32).is_empty(),
        "the helper keeps no link"
    );
    env.ok(&["debug", "detach", "api", "--all"]);
    assert_links_gone(&held);
    let log = std::fs::read_to_string(&helper.log).unwrap();
    assert!(log.contains("req=open_target"), "{log}");
    assert!(log.contains("function=\"main.Greet\" outcome=ok"), "{log}");
}
