//! Indexing real programs built here (issue 12): Go 1.19 (DWARF, stripped,
//! PIE) and C from gcc. Skips when `go` or `gcc` is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::index::{Index, Lang, Location, ValueKind};

const GO_SRC: &str = include_str!("../../../tests/targets/debugee.go");
const C_SRC: &str = include_str!("../../../tests/targets/debugee.c");

fn have(tool: &str) -> bool {
    Command::new(tool).arg("version").output().is_ok()
        || Command::new(tool).arg("--version").output().is_ok()
}

pub(crate) fn go_build(dir: &Path, out: &str, extra: &[&str]) -> PathBuf {
    let src = dir.join("debugee.go");
    std::fs::write(&src, GO_SRC).unwrap();
    let bin = dir.join(out);
    let st = Command::new("go")
        .arg("build")
        .args(extra)
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .env("GOCACHE", dir.join("gocache"))
        .env("GOPATH", dir.join("gopath"))
        .env("GO111MODULE", "off")
        .env("CGO_ENABLED", "0")
        .status()
        .unwrap();
    assert!(st.success(), "go build {extra:?}");
    bin
}

#[test]
fn go_with_dwarf_has_arguments_and_results_in_abi_registers() {
    if !have("go") {
        eprintln!("SKIP: go is not installed (apt-get install golang-go)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (name, flags, pie) in [
        ("default", &[][..], false),
        ("pie", &["-buildmode=pie"][..], true),
    ] {
        let idx = Index::open(&go_build(dir.path(), name, flags)).unwrap();
        assert_eq!(idx.lang, Lang::Go);
        assert_eq!(idx.pie, pie);
        assert!(idx.has_dwarf, "Go 1.19's compressed DWARF is read");
        let greet = idx.resolve("Greet").unwrap();
        assert_eq!(greet.name, "main.Greet");
        let p: Vec<_> = greet
            .params
            .iter()
            .map(|p| (p.name.as_str(), p.type_name.as_str(), &p.location))
            .collect();
        assert_eq!(
            p,
            [
                ("name", "string", &Location::Regs(vec![0, 1])),
                ("times", "int", &Location::Regs(vec![2])),
                ("loud", "bool", &Location::Regs(vec![3])),
            ]
        );
        assert_eq!(greet.params[0].kind, ValueKind::String);
        assert_eq!(greet.results.len(), 2);
        assert_eq!(greet.results[0].location, Location::Regs(vec![0, 1]));
        assert_eq!(greet.results[1].type_name, "error");
        assert_eq!(greet.results[1].kind, ValueKind::Interface);
        assert_eq!(greet.results[1].location, Location::Regs(vec![2, 3]));
        let sum = idx.resolve("main.Checksum").unwrap();
        assert_eq!(sum.params[0].kind, ValueKind::Slice { bytes: true });
        assert!(idx.return_offsets(&idx.resolve("Classify").unwrap()).len() >= 2);
        assert!(idx.matching("main.").count() >= 6);
    }
}

#[test]
fn stripped_go_still_lists_functions_without_arguments() {
    if !have("go") {
        eprintln!("SKIP: go is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let idx = Index::open(&go_build(dir.path(), "stripped", &["-ldflags=-s -w"])).unwrap();
    assert_eq!(idx.lang, Lang::Go);
    assert!(!idx.has_dwarf);
    let f = idx.resolve("Add").unwrap();
    assert!(f.params.is_empty());
    assert!(!idx.return_offsets(&f).is_empty());
    assert!(
        idx.resolve("Nope")
            .unwrap_err()
            .to_string()
            .contains("no function")
    );
}

#[test]
fn c_with_dwarf_uses_sysv_registers() {
    if !have("gcc") {
        eprintln!("SKIP: gcc is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("debugee.c");
    std::fs::write(&src, C_SRC).unwrap();
    let bin = dir.path().join("c");
    assert!(
        Command::new("gcc")
            .args(["-O0", "-g", "-o"])
            .arg(&bin)
            .arg(&src)
            .status()
            .unwrap()
            .success()
    );
    let idx = Index::open(&bin).unwrap();
    assert_eq!(idx.lang, Lang::Native);
    let g = idx.resolve("greet").unwrap();
    assert_eq!(g.params[0].name, "name");
    assert_eq!(g.params[0].kind, ValueKind::CString);
    assert_eq!(g.params[0].location, Location::Regs(vec![3]));
    assert_eq!(g.params[1].location, Location::Regs(vec![4]));
    let add = idx.resolve("add").unwrap();
    assert_eq!(
        add.params[0].kind,
        ValueKind::Int {
            signed: true,
            bytes: 8
        }
    );
}

mod live {
    //! Sessions on a running Go program (root, uprobe PMU; skipped
    //! otherwise): calls with arguments, results and durations, recursion,
    //! TTL expiry that closes the links, detach, limits.

    use std::io::{BufRead, BufReader};
    use std::path::Path;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use coral_proto::debug::{DebugAttachRequest, DebugLogsRequest, DebugTarget};

    use super::go_build;
    use crate::debug::{Debugger, Limits};

    /// The tests count this process's BPF links: one at a time.
    pub(super) static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn root_or_skip(test: &str) -> bool {
        let ok = nix::unistd::geteuid().is_root()
            && Path::new("/sys/bus/event_source/devices/uprobe/type").exists()
            && super::have("go");
        if !ok {
            eprintln!("SKIP {test}: needs root, the uprobe PMU and go");
        }
        ok
    }

    struct App(Child);

    impl App {
        fn start(bin: &Path, period_ms: u32) -> Self {
            let mut c = Command::new(bin)
                .args([period_ms.to_string(), "60".into()])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let mut line = String::new();
            BufReader::new(c.stdout.take().unwrap())
                .read_line(&mut line)
                .unwrap();
            assert!(line.starts_with("ready"));
            App(c)
        }
    }

    impl Drop for App {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn link_ids() -> Vec<u64> {
        let mut ids = Vec::new();
        for e in std::fs::read_dir("/proc/self/fdinfo").unwrap().flatten() {
            let info = std::fs::read_to_string(e.path()).unwrap_or_default();
            ids.extend(
                info.lines()
                    .filter_map(|l| l.strip_prefix("link_id:"))
                    .filter_map(|v| v.trim().parse::<u64>().ok()),
            );
        }
        ids
    }

    fn req(functions: &[&str], ttl_ms: u64) -> DebugAttachRequest {
        DebugAttachRequest {
            target: DebugTarget::Pid(0),
            functions: functions.iter().map(|s| s.to_string()).collect(),
            ttl_ms,
            capture_args: true,
            stack: true,
        }
    }

    #[test]
    fn go_session_sees_calls_with_args_results_durations_then_expires() {
        if !root_or_skip("go_session_sees_calls_with_args_results_durations_then_expires") {
            return;
        }
        let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let bin = go_build(dir.path(), "debugee", &[]);
        let app = App::start(&bin, 10);
        let pid = app.0.id();
        // Fib(5) runs ~1,500 times a second here: no budget in this test.
        let d = Debugger::new(
            "/nonexistent/cdebug.sock".into(),
            Limits {
                budget_us_per_s: u64::MAX,
                ..Limits::default()
            },
        );
        let before = link_ids();
        let t0 = Instant::now();
        let s = d
            .attach(pid, &req(&["Greet", "Classify", "Fib", "Nap"], 3_000))
            .unwrap();
        let attach_ms = t0.elapsed().as_millis();
        assert_eq!(s.lang, "go");
        assert_eq!(s.probes.len(), 4);
        assert!(s.attach_points >= 8, "{s:?}");
        assert!(link_ids().len() >= before.len() + s.attach_points as usize);
        std::thread::sleep(Duration::from_millis(800));
        let logs = d
            .logs(&DebugLogsRequest {
                session: Some(s.id.clone()),
                after_seq: 0,
                limit: 10_000,
            })
            .unwrap();
        let of = |f: &str| {
            logs.calls
                .iter()
                .filter(|c| c.function == f)
                .collect::<Vec<_>>()
        };
        let greets = of("main.Greet");
        assert!(greets.len() >= 5, "{} Greet calls", greets.len());
        for c in &greets {
            // The stack: Greet itself, its caller, and on to the runtime.
            assert!(c.stack[0].starts_with("main.Greet+0x0"), "{:?}", c.stack);
            assert!(c.stack[1].starts_with("main.main+"), "{:?}", c.stack);
            assert!(
                c.stack.iter().any(|f| f.starts_with("runtime.main+")),
                "{:?}",
                c.stack
            );
            assert_eq!(c.args[0].value, "\"coral\"", "{c:?}");
            let times: u64 = c.args[1].value.parse().unwrap();
            assert!(times < 3);
            assert!(c.args[2].value == "true" || c.args[2].value == "false");
            assert_eq!(
                c.results[0].value,
                format!(
                    "{:?}",
                    "coral".repeat(times as usize)
                        + if c.args[2].value == "true" { "!" } else { "" }
                )
            );
            assert_eq!(c.results[1].value, "nil");
            assert!(c.goroutine != 0);
        }
        let naps = of("main.Nap");
        assert!(!naps.is_empty());
        for c in &naps {
            let ns = c.duration_ns.unwrap();
            assert!(
                (10_000_000..1_000_000_000).contains(&ns),
                "Nap(10ms) took {ns} ns"
            );
            assert_eq!(c.args[0].value, "10");
        }
        // Fib(5) recurses: 15 calls per Fib(5), each paired at its depth.
        let fibs = of("main.Fib");
        assert!(fibs.len() >= 15, "{}", fibs.len());
        assert!(fibs.iter().any(|c| c.args[0].value == "5"));
        assert!(fibs.iter().any(|c| c.args[0].value == "0"));
        let classify = of("main.Classify");
        assert!(classify.iter().all(|c| {
            ["\"negative\"", "\"zero\"", "\"even\"", "\"odd\""]
                .contains(&c.results[0].value.as_str())
        }));
        // Wall clock: within a few seconds of now.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64;
        assert!((now - greets[0].start_unix_ns).abs() < 5_000_000_000);
        // Expiry closes the links.
        std::thread::sleep(Duration::from_millis(2_500));
        d.poll();
        let listed = d.list();
        assert_eq!(listed[0].state, "expired");
        assert!(listed[0].probes.iter().all(|p| p.hits > 0));
        let after = link_ids();
        assert!(
            after.len() <= before.len(),
            "links left: {after:?} (before {before:?})"
        );
        eprintln!(
            "attach of 4 functions ({} points): {attach_ms} ms",
            s.attach_points
        );
        drop(app);
    }

    /// Issue 12 (attach p95 ≤ 1 s): the agent indexes a binary once and
    /// keeps it across attaches; another file (a copy, a rebuild) is
    /// indexed anew, and arguments come from DWARF on demand.
    #[test]
    fn an_index_is_kept_per_binary_file() {
        if !super::have("go") {
            eprintln!("SKIP an_index_is_kept_per_binary_file: needs go");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let bin = go_build(dir.path(), "debugee", &[]);
        let copy = dir.path().join("copy");
        std::fs::copy(&bin, &copy).unwrap();
        let (a, b) = (App::start(&bin, 1000), App::start(&copy, 1000));
        let d = Debugger::new("/nonexistent/cdebug.sock".into(), Limits::default());
        let (_, first) = d.index_of(a.0.id()).unwrap();
        let (_, again) = d.index_of(a.0.id()).unwrap();
        assert!(std::sync::Arc::ptr_eq(&first, &again), "indexed twice");
        let (_, other) = d.index_of(b.0.id()).unwrap();
        assert!(
            !std::sync::Arc::ptr_eq(&first, &other),
            "a copy is another file"
        );
        assert!(first.functions.iter().all(|f| f.params.is_empty()));
        let greet = first.resolve("Greet").unwrap();
        assert_eq!(greet.params[0].name, "name", "{greet:?}");
        assert_eq!(other.detailed(&greet).params, greet.params);
        // `coral debug functions` details a whole list in one pass.
        let mains: Vec<_> = other.matching("main.").collect();
        let listed = other.detailed_all(&mains);
        assert_eq!(listed.len(), mains.len());
        let g = listed.iter().find(|f| f.name == "main.Greet").unwrap();
        assert_eq!(g.params, greet.params);
    }

    #[test]
    fn stripped_go_durations_detach_and_limits() {
        if !root_or_skip("stripped_go_durations_detach_and_limits") {
            return;
        }
        let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let bin = go_build(dir.path(), "stripped", &["-ldflags=-s -w"]);
        let app = App::start(&bin, 5);
        let pid = app.0.id();
        let limits = Limits {
            max_sessions: 1,
            ..Limits::default()
        };
        let d = Debugger::new("/nonexistent/cdebug.sock".into(), limits);
        let before = link_ids();
        let s = d.attach(pid, &req(&["Nap", "Add"], 60_000)).unwrap();
        let e = d.attach(pid, &req(&["Add"], 1_000)).unwrap_err();
        assert!(e.to_string().contains("at most 1"), "{e}");
        let e = d.attach(pid, &req(&["NoSuchFunction"], 1_000)).unwrap_err();
        assert!(e.to_string().contains("at most 1") || e.to_string().contains("no function"));
        std::thread::sleep(Duration::from_millis(500));
        let logs = d
            .logs(&DebugLogsRequest {
                session: None,
                after_seq: 0,
                limit: 100,
            })
            .unwrap();
        let naps: Vec<_> = logs
            .calls
            .iter()
            .filter(|c| c.function == "main.Nap")
            .collect();
        assert!(!naps.is_empty());
        assert!(naps.iter().all(|c| c.duration_ns.unwrap() >= 5_000_000));
        assert!(naps.iter().all(|c| c.args.is_empty()), "no DWARF, no args");
        let ended = d.detach(Some(&s.id)).unwrap();
        assert_eq!(ended[0].state, "detached");
        assert!(d.detach(Some(&s.id)).is_err());
        assert!(link_ids().len() <= before.len());
        // A Python process is refused, naming what is supported.
        // (Debian's, not a version manager's shell shim.)
        if Path::new("/usr/bin/python3").exists() {
            let mut py = Command::new("/usr/bin/python3")
                .args(["-c", "import time; time.sleep(30)"])
                .spawn()
                .unwrap();
            let e = d.attach(py.id(), &req(&["main"], 1_000)).unwrap_err();
            let _ = py.kill();
            let _ = py.wait();
            assert!(
                e.to_string().contains("Python programs cannot be probed"),
                "{e}"
            );
            assert!(e.to_string().contains("Go (1.17 or newer)"), "{e}");
        }
    }
}

mod budget {
    //! Issue 12: the CPU budget breaker detaches a probe whose measured
    //! cost is over budget, within 2 s, and says so.

    use std::time::{Duration, Instant};

    use coral_proto::debug::{DebugAttachRequest, DebugTarget};

    use crate::debug::{Debugger, Limits};

    #[test]
    fn a_probe_over_its_budget_is_detached_within_two_seconds() {
        if !nix::unistd::geteuid().is_root()
            || !std::path::Path::new("/sys/bus/event_source/devices/uprobe/type").exists()
            || !super::have("go")
        {
            eprintln!("SKIP: needs root, the uprobe PMU and go");
            return;
        }
        let _serial = super::live::SERIAL
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let bin = super::go_build(dir.path(), "debugee", &[]);
        let mut app = std::process::Command::new(&bin)
            .args(["2", "60"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        // Nap runs up to 500 times a second here (entry + return hits):
        // at 15 µs a hit that is up to 15 ms/s, far over a 0.1 ms/s
        // budget even on a loaded machine.
        let d = Debugger::new(
            "/nonexistent/cdebug.sock".into(),
            Limits {
                budget_us_per_s: 100,
                ..Limits::default()
            },
        );
        let s = d
            .attach(
                app.id(),
                &DebugAttachRequest {
                    target: DebugTarget::Pid(app.id()),
                    functions: vec!["Nap".into()],
                    ttl_ms: 30_000,
                    capture_args: false,
                    stack: false,
                },
            )
            .unwrap();
        let t0 = Instant::now();
        let tripped = loop {
            d.poll();
            let l = d.list();
            let p = &l.iter().find(|x| x.id == s.id).unwrap().probes[0];
            if p.state.starts_with("detached: over budget") {
                break t0.elapsed();
            }
            assert!(t0.elapsed() < Duration::from_secs(2), "not tripped: {p:?}");
            std::thread::sleep(Duration::from_millis(100));
        };
        eprintln!("budget breaker tripped after {tripped:?}");
        // Its links are closed: hits stop growing.
        let hits = |d: &Debugger| d.list()[0].probes[0].hits;
        let h1 = hits(&d);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(hits(&d), h1, "hits grow after the breaker tripped");
        assert_eq!(d.list()[0].state, "active");
        let _ = app.kill();
        let _ = app.wait();
    }
}

mod pairing {
    //! Issue 12: entry/return pairing under 1,000 goroutines whose stacks
    //! grow (copied by the runtime mid-call, the entry probe firing twice),
    //! and calls abandoned by a panic that must not swallow the next call.

    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use coral_proto::debug::{DebugAttachRequest, DebugLogsRequest, DebugTarget};

    use crate::debug::{Debugger, Limits};

    #[test]
    fn thousand_goroutines_with_stack_growth_and_panics_pair_right() {
        if !nix::unistd::geteuid().is_root()
            || !std::path::Path::new("/sys/bus/event_source/devices/uprobe/type").exists()
            || !super::have("go")
        {
            eprintln!("SKIP: needs root, the uprobe PMU and go");
            return;
        }
        let _serial = super::live::SERIAL
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("goroutines.go");
        std::fs::write(&src, include_str!("../../../tests/targets/goroutines.go")).unwrap();
        let bin = dir.path().join("goroutines");
        assert!(
            Command::new("go")
                .args(["build", "-o"])
                .arg(&bin)
                .arg(&src)
                .env("GOCACHE", dir.path().join("gocache"))
                .env("GOPATH", dir.path().join("gopath"))
                .env("GO111MODULE", "off")
                .env("CGO_ENABLED", "0")
                .status()
                .unwrap()
                .success()
        );
        const ROUNDS: u64 = 3;
        let mut app = Command::new(&bin)
            .args([ROUNDS.to_string(), "1500".into()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(app.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let d = Debugger::new(
            "/nonexistent/cdebug.sock".into(),
            Limits {
                budget_us_per_s: u64::MAX,
                ring_bytes: 16 << 20,
                ..Limits::default()
            },
        );
        let s = d
            .attach(
                app.id(),
                &DebugAttachRequest {
                    target: DebugTarget::Pid(app.id()),
                    functions: vec!["Work".into(), "Risky".into()],
                    ttl_ms: 60_000,
                    capture_args: true,
                    stack: false,
                },
            )
            .unwrap();
        // Poll while the rounds run, until the program says done.
        line.clear();
        let deadline = Instant::now() + Duration::from_secs(30);
        let reader = std::thread::spawn(move || {
            let mut l = String::new();
            out.read_line(&mut l).unwrap();
            l
        });
        while !reader.is_finished() {
            assert!(Instant::now() < deadline, "the program did not finish");
            d.poll();
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(reader.join().unwrap().starts_with("done"));
        d.poll();
        let logs = d
            .logs(&DebugLogsRequest {
                session: Some(s.id.clone()),
                after_seq: 0,
                limit: 10_000,
            })
            .unwrap();
        let sess = &logs.sessions[0];
        assert_eq!(sess.dropped, 0, "ring too small for the test");
        let work: Vec<_> = logs
            .calls
            .iter()
            .filter(|c| c.function == "main.Work")
            .collect();
        let risky: Vec<_> = logs
            .calls
            .iter()
            .filter(|c| c.function == "main.Risky")
            .collect();
        let want = ROUNDS * 1000;
        eprintln!(
            "Work: {} paired of {want}; Risky: {} returned of {} calls (1/3 panic)",
            work.len(),
            risky.len(),
            want * 3
        );
        // Every Work call paired, once, with its own argument.
        assert_eq!(work.len() as u64, want);
        let mut ids: Vec<i64> = work
            .iter()
            .map(|c| c.args[0].value.parse().unwrap())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 1000);
        // Risky returns only when i % 3 != 0; the panicked calls never
        // pair, and never swallow the next call on their goroutine.
        assert_eq!(risky.len() as u64, want * 2);
        for c in &risky {
            let i: i64 = c.args[0].value.parse().unwrap();
            assert_ne!(i % 3, 0, "a panicked call paired: {c:?}");
            assert_eq!(c.results[0].value, i.to_string(), "{c:?}");
            // Wall time: 1,000 goroutines on 2 cores can wait long.
            assert!(c.duration_ns.unwrap() < 5_000_000_000, "{c:?}");
        }
        let _ = app.kill();
        let _ = app.wait();
    }
}

mod measure {
    //! Issue 12's figures, side by side with bpftrace in the same run (run
    //! by hand, in either profile: `cargo test [--release] -p coral-agent
    //! --lib debug::tests::measure -- --ignored --nocapture`; needs root,
    //! go and bpftrace). Each line says which build it measured.

    use std::fmt::Write as _;
    use std::io::{BufRead, BufReader, Write};
    use std::path::Path;
    use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
    use std::time::{Duration, Instant};

    use coral_proto::debug::{DebugAttachRequest, DebugLogsRequest, DebugTarget};

    use crate::debug::index::Index;
    use crate::debug::{Debugger, Limits};

    /// Functions of the generated package: with the standard packages
    /// bigbench.go links, the binary is over 20 MB (issue 12's size).
    const GEN_FUNCTIONS: usize = 15_000;

    /// The package `bigbench/gen`: `n` distinct functions (constants differ,
    /// so none is folded into another) kept alive by `Table`.
    pub(super) fn gen_package(n: usize) -> String {
        let mut s = String::from(
            "// Generated by coral-agent/src/debug/tests.rs (gen_package).\npackage gen\n\n",
        );
        for i in 0..n {
            let (a, b, c) = (
                (i * 7 + 3) % 13 + 1,
                (i * 11 + 5) % 17 + 2,
                (i * 13 + 1) % 29 + 3,
            );
            let _ = write!(
                s,
                "func Gen{i:05}(s []int, k int) int {{\n\tt := k ^ {i}\n\tfor j, v := range s {{\n\t\tswitch (v + j + t) % {m} {{\n\t\tcase 0:\n\t\t\tt += v*{b} + {c}\n\t\tcase 1:\n\t\t\tt ^= v << {sh}\n\t\tcase 2:\n\t\t\tt -= (v >> 1) * {c}\n\t\tcase 3:\n\t\t\tt = t*{b} - v*{a}\n\t\tcase 4:\n\t\t\ts[j] = v ^ (t >> {sh2})\n\t\tcase 5:\n\t\t\tt += len(s) * {ca}\n\t\tdefault:\n\t\t\tif v > {bc} {{\n\t\t\t\tt = t*{a} + j\n\t\t\t}} else {{\n\t\t\t\ts[j] = t % {bpc}\n\t\t\t}}\n\t\t}}\n\t}}\n\treturn t\n}}\n\n",
                m = a + 6,
                sh = a % 7 + 1,
                sh2 = a % 5 + 1,
                ca = c + a,
                bc = b * c,
                bpc = b + c,
            );
        }
        s.push_str(
            "// Table keeps every function in the binary.\nvar Table = []func([]int, int) int{\n",
        );
        for i in 0..n {
            let _ = writeln!(s, "\tGen{i:05},");
        }
        s.push_str("}\n");
        s
    }

    fn build(dir: &Path) -> std::path::PathBuf {
        let gopath = dir.join("gopath");
        let gen_dir = gopath.join("src/bigbench/gen");
        std::fs::create_dir_all(&gen_dir).unwrap();
        std::fs::write(gen_dir.join("gen.go"), gen_package(GEN_FUNCTIONS)).unwrap();
        let src = dir.join("bigbench.go");
        std::fs::write(&src, include_str!("../../../tests/targets/bigbench.go")).unwrap();
        let bin = dir.join("bigbench");
        let st = Command::new("go")
            .args(["build", "-o"])
            .arg(&bin)
            .arg(&src)
            .env("GOCACHE", dir.join("gocache"))
            .env("GOPATH", &gopath)
            .env("GO111MODULE", "off")
            .env("CGO_ENABLED", "0")
            .status()
            .unwrap();
        assert!(st.success(), "go build bigbench");
        bin
    }

    struct Bench {
        child: Child,
        stdin: ChildStdin,
        stdout: BufReader<ChildStdout>,
    }

    impl Bench {
        fn line(&mut self, cmd: &str) -> String {
            writeln!(self.stdin, "{cmd}").unwrap();
            let mut l = String::new();
            self.stdout.read_line(&mut l).unwrap();
            l
        }

        fn ns_per_call(&mut self, runs: usize) -> f64 {
            let mut v: Vec<f64> = (0..runs)
                .map(|_| {
                    let l = self.line("go");
                    l.split_whitespace().next().unwrap().parse().unwrap()
                })
                .collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        }

        /// Nap(id, us); its own measure of the call, in ns.
        fn nap(&mut self, id: u64, us: u64) -> f64 {
            let l = self.line(&format!("nap {id} {us}"));
            l.split_whitespace().next().unwrap().parse().unwrap()
        }
    }

    fn q(v: &mut [f64], p: f64) -> f64 {
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * p).round() as usize]
    }

    fn p50_p95(v: &mut [f64]) -> String {
        format!("{:.0} / {:.0}", q(v, 0.5), q(v, 0.95))
    }

    /// Duration error of `calls` naps (1, 5, 20 ms in turn) against Nap's
    /// own clock, call by call (matched by the id argument): p50 / p99 /
    /// max in µs, the largest as a share, and how many exceed
    /// max(5 %, 50 µs).
    fn duration_error(b: &mut Bench, d: &Debugger, pid: u32, first_id: u64, calls: u64) -> String {
        let req = DebugAttachRequest {
            target: DebugTarget::Pid(pid),
            functions: vec!["Nap".into()],
            ttl_ms: 600_000,
            capture_args: true,
            stack: false,
        };
        let s = d.attach(pid, &req).unwrap();
        let own: Vec<(u64, f64)> = (first_id..first_id + calls)
            .map(|id| (id, b.nap(id, [1_000, 5_000, 20_000][(id % 3) as usize])))
            .collect();
        let mut probed = std::collections::HashMap::new();
        let t = Instant::now();
        while probed.len() < own.len() && t.elapsed() < Duration::from_secs(10) {
            let logs = d
                .logs(&DebugLogsRequest {
                    session: Some(s.id.clone()),
                    after_seq: 0,
                    limit: 10_000,
                })
                .unwrap();
            for c in logs.calls {
                let id: u64 = c.args[0].value.parse().unwrap();
                if let Some(ns) = c.duration_ns {
                    probed.insert(id, ns as f64);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        d.detach(None).unwrap();
        let (mut err_us, mut err_pct, mut signed_us) = (Vec::new(), Vec::new(), Vec::new());
        let mut over = 0;
        for (id, own_ns) in &own {
            let p = probed[id];
            let e = (p - own_ns).abs();
            err_us.push(e / 1e3);
            err_pct.push(e / own_ns * 100.0);
            signed_us.push((p - own_ns) / 1e3);
            if e > (0.05 * own_ns).max(50_000.0) {
                over += 1;
            }
        }
        format!(
            "{} calls matched by id; error p50 {:.1} / p99 {:.1} / max {:.1} µs (max {:.2} %), probe minus own p50 {:+.1} µs; over max(5 %, 50 µs): {over}",
            own.len(),
            q(&mut err_us, 0.5),
            q(&mut err_us, 0.99),
            q(&mut err_us, 1.0),
            q(&mut err_pct, 1.0),
            q(&mut signed_us, 0.5),
        )
    }

    #[test]
    #[ignore]
    fn figures() {
        let _serial = super::live::SERIAL
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let profile = if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        };
        let dir = tempfile::tempdir().unwrap();
        let t = Instant::now();
        let bin = build(dir.path());
        let size = std::fs::metadata(&bin).unwrap().len();
        eprintln!(
            "FIGURES [{profile}] built bigbench in {:.0} s: {:.1} MB",
            t.elapsed().as_secs_f64(),
            size as f64 / 1e6
        );
        assert!(size >= 20_000_000, "bigbench is {size} bytes, under 20 MB");
        let mut child = Command::new(&bin)
            .arg("20000")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut l = String::new();
        stdout.read_line(&mut l).unwrap();
        let mut b = Bench {
            child,
            stdin,
            stdout,
        };
        let pid = b.child.id();
        let base = b.ns_per_call(7);

        // Indexing alone: the function table, then main.Add's arguments
        // (the DWARF unit that holds it).
        let (mut table_ms, mut args_ms) = (Vec::new(), Vec::new());
        let mut functions = 0;
        let mut rets = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            let idx = Index::open(&bin).unwrap();
            table_ms.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            let add = idx.resolve("main.Add").unwrap();
            args_ms.push(t.elapsed().as_secs_f64() * 1e3);
            assert_eq!(add.params.len(), 2, "{add:?}");
            functions = idx.functions.len();
            rets = idx.return_offsets(&add);
        }

        // The rest of a cold attach: the helper's own check of an offset
        // (it reads the binary and parses its function table itself, then
        // decodes the function), and loading the uprobe object.
        let (mut check_ms, mut load_ms) = (Vec::new(), Vec::new());
        let exe = format!("/proc/{pid}/exe");
        for _ in 0..5 {
            let t = Instant::now();
            coral_privhelper::uprobe::Checker::default()
                .check(
                    &coral_privhelper::uprobe::Target {
                        probe_id: 0,
                        kind: coral_ebpf::KIND_RET_INSN,
                        pid,
                        path: Path::new(&exe),
                        offset: rets[0],
                    },
                    0,
                )
                .unwrap();
            check_ms.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            let obj = coral_privhelper::UprobeObject::open(Path::new("/nonexistent"), 1 << 20);
            load_ms.push(t.elapsed().as_secs_f64() * 1e3);
            drop(obj.unwrap());
        }

        let limits = Limits {
            budget_us_per_s: u64::MAX,
            ..Limits::default()
        };
        let req = DebugAttachRequest {
            target: DebugTarget::Pid(pid),
            functions: vec!["Add".into()],
            ttl_ms: 600_000,
            capture_args: true,
            stack: false,
        };
        // Cold: a new agent each time (nothing indexed yet); warm: the
        // agent has indexed this binary before.
        let (mut cold, mut warm) = (Vec::new(), Vec::new());
        let d = Debugger::new("/nonexistent/cdebug.sock".into(), limits.clone());
        for _ in 0..20 {
            let fresh = Debugger::new("/nonexistent/cdebug.sock".into(), limits.clone());
            let t = Instant::now();
            fresh.attach(pid, &req).unwrap();
            cold.push(t.elapsed().as_secs_f64() * 1e3);
            fresh.detach(None).unwrap();
            let t = Instant::now();
            d.attach(pid, &req).unwrap();
            warm.push(t.elapsed().as_secs_f64() * 1e3);
            d.detach(None).unwrap();
        }
        eprintln!(
            "FIGURES [{profile}] {:.1} MB, {functions} functions; index: function table p50/p95 {} ms, main.Add's arguments (its DWARF unit) p50/p95 {} ms; the helper's check of a return point {} ms; loading the uprobe object {} ms (5 runs each); attach main.Add (entry + {} return point(s)) p50/p95 of 20: cold (new agent: index + attach) {} ms, warm (index kept) {} ms",
            size as f64 / 1e6,
            p50_p95(&mut table_ms),
            p50_p95(&mut args_ms),
            p50_p95(&mut check_ms),
            p50_p95(&mut load_ms),
            rets.len(),
            p50_p95(&mut cold),
            p50_p95(&mut warm),
        );

        d.attach(pid, &req).unwrap();
        let coral = b.ns_per_call(7);
        d.detach(None).unwrap();
        // bpftrace on the entry (Debian's 0.17 is built without uprobe
        // offset support: it cannot probe the return instruction), so the
        // comparison is per hit.
        let prog = format!("uprobe:{}:main.Add {{ @ = count(); }}", bin.display());
        let bt_err = dir.path().join("bpftrace.err");
        let mut bt = Command::new("bpftrace")
            .args(["-e", &prog])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&bt_err).unwrap())
            .spawn()
            .expect("bpftrace");
        let mut bt_out = BufReader::new(bt.stdout.take().unwrap());
        let mut line = String::new();
        bt_out.read_line(&mut line).unwrap();
        assert!(line.contains("Attaching"), "bpftrace: {line}");
        // It prints that line before it attaches: wait until the calls
        // slow down (or 10 s).
        let t = Instant::now();
        while b.ns_per_call(1) < base * 4.0 + 100.0 && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(200));
        }
        let bpftrace = b.ns_per_call(7);
        let _ = bt.kill();
        let _ = bt.wait();
        let after = b.ns_per_call(7);
        let hits = (1 + rets.len()) as f64;
        eprintln!(
            "FIGURES [{profile}] ns per call of main.Add (median of 7 x 20,000 calls): unprobed {base:.0} (after: {after:.0}); coral, entry with args + {} return point(s): {coral:.0} (+{:.0}, +{:.0} per hit); bpftrace 0.17 uprobe count() on the entry: {bpftrace:.0} (+{:.0} per hit); per-hit ratio coral/bpftrace {:.2}",
            rets.len(),
            coral - base,
            (coral - base) / hits,
            bpftrace - base,
            (coral - base) / hits / (bpftrace - base)
        );

        // First event: the call returned → visible in logs.
        let nap_req = DebugAttachRequest {
            functions: vec!["Nap".into()],
            ..req.clone()
        };
        let s = d.attach(pid, &nap_req).unwrap();
        let mut first_ms = Vec::new();
        let mut after = 0;
        for id in 0..30u64 {
            b.nap(id, 1_000);
            let call = loop {
                let logs = d
                    .logs(&DebugLogsRequest {
                        session: Some(s.id.clone()),
                        after_seq: after,
                        limit: 10,
                    })
                    .unwrap();
                if let Some(c) = logs.calls.into_iter().next() {
                    break c;
                }
                std::thread::sleep(Duration::from_micros(200));
            };
            let seen_ns = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as f64;
            after = call.seq;
            let dur = call.duration_ns.unwrap() as f64;
            first_ms.push((seen_ns - (call.start_unix_ns as f64 + dur)) / 1e6);
        }
        d.detach(None).unwrap();
        eprintln!(
            "FIGURES [{profile}] first event after the return p50 {:.1} / p95 {:.1} ms (30 calls; this test polls every 0.2 ms, the agent every 100 ms)",
            q(&mut first_ms, 0.5),
            q(&mut first_ms, 0.95),
        );

        // Duration error against Nap's own clock, call by call: as the
        // machine is, then with two goroutines spinning in the target.
        let quiet = duration_error(&mut b, &d, pid, 100, 180);
        eprintln!("FIGURES [{profile}] duration error, 1/5/20 ms naps: {quiet}");
        assert_eq!(b.line("spin 2").trim(), "spinning");
        let loaded = duration_error(&mut b, &d, pid, 1_000, 180);
        eprintln!(
            "FIGURES [{profile}] duration error, 1/5/20 ms naps, two goroutines spinning in the target: {loaded}"
        );
        let _ = b.child.kill();
        let _ = b.child.wait();
    }
}

mod native {
    //! Issue 12: a C program (gcc -O0 -g): entry uprobes + uretprobes,
    //! SysV arguments with DWARF names, C strings, return values.

    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::time::Duration;

    use coral_proto::debug::{DebugAttachRequest, DebugLogsRequest, DebugTarget};

    use crate::debug::{Debugger, Limits};

    #[test]
    fn c_calls_have_sysv_args_strings_and_return_values() {
        if !nix::unistd::geteuid().is_root()
            || !std::path::Path::new("/sys/bus/event_source/devices/uprobe/type").exists()
            || !super::have("gcc")
        {
            eprintln!("SKIP: needs root, the uprobe PMU and gcc");
            return;
        }
        let _serial = super::live::SERIAL
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("debugee.c");
        std::fs::write(&src, super::C_SRC).unwrap();
        let bin = dir.path().join("c");
        assert!(
            Command::new("gcc")
                .args(["-O0", "-g", "-o"])
                .arg(&bin)
                .arg(&src)
                .status()
                .unwrap()
                .success()
        );
        let mut app = Command::new(&bin)
            .args(["5", "60"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(app.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let d = Debugger::new("/nonexistent/cdebug.sock".into(), Limits::default());
        let s = d
            .attach(
                app.id(),
                &DebugAttachRequest {
                    target: DebugTarget::Pid(app.id()),
                    functions: vec!["add".into(), "greet".into(), "classify".into()],
                    ttl_ms: 30_000,
                    capture_args: true,
                    stack: false,
                },
            )
            .unwrap();
        assert_eq!(s.lang, "native");
        assert_eq!(s.attach_points, 6, "entry + uretprobe each");
        std::thread::sleep(Duration::from_millis(700));
        let logs = d
            .logs(&DebugLogsRequest {
                session: None,
                after_seq: 0,
                limit: 1000,
            })
            .unwrap();
        let of = |f: &str| -> Vec<_> { logs.calls.iter().filter(|c| c.function == f).collect() };
        let adds = of("add");
        assert!(adds.len() >= 5, "{}", adds.len());
        for c in &adds {
            let a: i64 = c.args[0].value.parse().unwrap();
            assert_eq!(c.args[0].name, "a");
            assert_eq!(c.args[1].value, "2");
            assert_eq!(c.results[0].value, (a + 2).to_string(), "{c:?}");
            assert_eq!(c.goroutine, 0);
        }
        let greets = of("greet");
        assert!(!greets.is_empty());
        for c in &greets {
            assert_eq!(c.args[0].value, "\"coral\"", "{c:?}");
            let times: i64 = c.args[1].value.parse().unwrap();
            assert_eq!(c.results[0].value, (5 * times).to_string(), "{c:?}");
        }
        let classes = of("classify");
        assert!(classes.iter().all(|c| {
            let n: i64 = c.args[0].value.parse().unwrap();
            let want = if n < 0 {
                -1
            } else if n == 0 {
                0
            } else if n % 2 == 1 {
                1
            } else {
                2
            };
            c.results[0].value == want.to_string()
        }));
        d.detach(None).unwrap();
        let _ = app.kill();
        let _ = app.wait();
    }
}

mod variants {
    //! Issue 12: the build variants people ship. Go with optimisations off
    //! (`-gcflags=all=-N -l`), C at -O2 with and without frame pointers, a
    //! stripped C binary (refused with the reason), and Rust release; each
    //! one really probed: calls paired, values right.

    use std::io::{BufRead, BufReader};
    use std::path::Path;
    use std::process::{Child, Command, Stdio};
    use std::time::Duration;

    use coral_proto::debug::{DebugAttachRequest, DebugCall, DebugLogsRequest, DebugTarget};

    use crate::debug::{Debugger, Limits};

    fn ready_or_skip(test: &str, tool: &str) -> bool {
        let ok = nix::unistd::geteuid().is_root()
            && Path::new("/sys/bus/event_source/devices/uprobe/type").exists()
            && super::have(tool);
        if !ok {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{test}: needs root, the uprobe PMU and {tool} (CI=true: failing instead of skipping)"
            );
            eprintln!("SKIP {test}: needs root, the uprobe PMU and {tool}");
        }
        ok
    }

    struct Running(Child);

    impl Running {
        fn start(bin: &Path, args: &[&str]) -> Running {
            let mut c = Command::new(bin)
                .args(args)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let mut line = String::new();
            BufReader::new(c.stdout.take().unwrap())
                .read_line(&mut line)
                .unwrap();
            assert!(line.starts_with("ready"), "{line:?}");
            Running(c)
        }
    }

    impl Drop for Running {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// Probes `functions` of `pid` for 700 ms; the calls seen.
    fn probe(pid: u32, functions: &[&str], stack: bool) -> Vec<DebugCall> {
        let d = Debugger::new("/nonexistent/cdebug.sock".into(), Limits::default());
        let s = d
            .attach(
                pid,
                &DebugAttachRequest {
                    target: DebugTarget::Pid(pid),
                    functions: functions.iter().map(|f| f.to_string()).collect(),
                    ttl_ms: 30_000,
                    capture_args: true,
                    stack,
                },
            )
            .unwrap_or_else(|e| panic!("attach {functions:?}: {e}"));
        std::thread::sleep(Duration::from_millis(700));
        let logs = d
            .logs(&DebugLogsRequest {
                session: Some(s.id.clone()),
                after_seq: 0,
                limit: 10_000,
            })
            .unwrap();
        d.detach(None).unwrap();
        logs.calls
    }

    fn gcc(dir: &Path, out: &str, flags: &[&str]) -> std::path::PathBuf {
        let src = dir.join("debugee.c");
        std::fs::write(&src, super::C_SRC).unwrap();
        let bin = dir.join(out);
        let st = Command::new("gcc")
            .args(flags)
            .arg("-o")
            .arg(&bin)
            .arg(&src)
            .status()
            .unwrap();
        assert!(st.success(), "gcc {flags:?}");
        bin
    }

    #[test]
    fn go_without_optimisations_keeps_its_arguments() {
        if !ready_or_skip("go_without_optimisations_keeps_its_arguments", "go") {
            return;
        }
        let _serial = super::live::SERIAL
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let bin = super::go_build(dir.path(), "noopt", &["-gcflags=all=-N -l"]);
        let app = Running::start(&bin, &["5", "60"]);
        let calls = probe(app.0.id(), &["Greet", "Add"], true);
        let greets: Vec<_> = calls
            .iter()
            .filter(|c| c.function == "main.Greet")
            .collect();
        assert!(greets.len() >= 3, "{calls:?}");
        for c in &greets {
            assert_eq!(c.args[0].value, "\"coral\"", "{c:?}");
            assert_eq!(c.results[1].value, "nil", "{c:?}");
            assert!(c.stack[1].starts_with("main.main+"), "{:?}", c.stack);
        }
        let adds: Vec<_> = calls.iter().filter(|c| c.function == "main.Add").collect();
        assert!(!adds.is_empty());
        for c in adds {
            let a: i64 = c.args[0].value.parse().unwrap();
            assert_eq!(c.results[0].value, (a + 2).to_string(), "{c:?}");
        }
    }

    #[test]
    fn c_at_o2_with_and_without_frame_pointers() {
        if !ready_or_skip("c_at_o2_with_and_without_frame_pointers", "gcc") {
            return;
        }
        let _serial = super::live::SERIAL
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let dir = tempfile::tempdir().unwrap();
        for (name, fp) in [
            ("o2-fp", "-fno-omit-frame-pointer"),
            ("o2-nofp", "-fomit-frame-pointer"),
        ] {
            let bin = gcc(dir.path(), name, &["-O2", "-g", fp]);
            let app = Running::start(&bin, &["5", "60"]);
            let calls = probe(app.0.id(), &["add", "classify"], true);
            let adds: Vec<_> = calls.iter().filter(|c| c.function == "add").collect();
            assert!(adds.len() >= 5, "{name}: {calls:?}");
            for c in &adds {
                let a: i64 = c.args[0].value.parse().unwrap();
                assert_eq!(c.results[0].value, (a + 2).to_string(), "{name}: {c:?}");
                // The caller comes from the return address at the entry's
                // stack pointer, frame pointers or not.
                assert!(c.stack[0].starts_with("add+0x0"), "{name}: {:?}", c.stack);
                assert!(c.stack[1].starts_with("main+"), "{name}: {:?}", c.stack);
            }
            assert!(calls.iter().any(|c| c.function == "classify"), "{name}");
        }
    }

    #[test]
    fn stripped_c_is_refused_with_the_reason() {
        if !ready_or_skip("stripped_c_is_refused_with_the_reason", "gcc") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let bin = gcc(dir.path(), "c-stripped", &["-O2", "-s"]);
        let app = Running::start(&bin, &["5", "60"]);
        let d = Debugger::new("/nonexistent/cdebug.sock".into(), Limits::default());
        let e = d
            .attach(
                app.0.id(),
                &DebugAttachRequest {
                    target: DebugTarget::Pid(app.0.id()),
                    functions: vec!["add".into()],
                    ttl_ms: 5_000,
                    capture_args: false,
                    stack: false,
                },
            )
            .unwrap_err();
        // No symbols at all: the index says so; with a few exported ones,
        // a missing name says the binary is stripped.
        let e = e.to_string();
        assert!(
            e.contains("no function table (no .gopclntab, no symbols)")
                || e.contains("the binary is stripped"),
            "{e}"
        );
    }

    #[test]
    fn rust_release_is_probed_by_its_demangled_name() {
        let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
        if !ready_or_skip("rust_release_is_probed_by_its_demangled_name", &rustc) {
            return;
        }
        let _serial = super::live::SERIAL
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("shop.rs");
        std::fs::write(
            &src,
            r#"use std::hint::black_box;
use std::io::Write;
#[inline(never)]
fn add(a: u64, b: u64) -> u64 { a.wrapping_add(b) }
#[inline(never)]
fn checksum(s: &str) -> u64 { s.bytes().map(u64::from).sum() }
fn main() {
    println!("ready {}", std::process::id());
    std::io::stdout().flush().unwrap();
    let end = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut i = 0u64;
    while std::time::Instant::now() < end {
        black_box(add(black_box(i), black_box(2)));
        black_box(checksum(black_box("coral")));
        i += 1;
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
"#,
        )
        .unwrap();
        let bin = dir.path().join("shop");
        let st = Command::new(&rustc)
            .args(["--edition", "2021", "-C", "opt-level=3", "-o"])
            .arg(&bin)
            .arg(&src)
            .status()
            .unwrap();
        assert!(st.success(), "rustc");
        let app = Running::start(&bin, &[]);
        // `add` alone is ambiguous here (`<Instant as Add<Duration>>::add`):
        // the error lists both, so name it fully.
        let calls = probe(app.0.id(), &["shop::add", "checksum"], false);
        let adds: Vec<_> = calls.iter().filter(|c| c.function == "shop::add").collect();
        assert!(adds.len() >= 5, "{calls:?}");
        for w in adds.windows(2) {
            // Return values (RAX) count up by one per loop: i + 2.
            let v = |c: &DebugCall| -> i64 {
                c.results[0]
                    .value
                    .split(' ')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            };
            assert_eq!(v(w[1]), v(w[0]) + 1, "{w:?}");
        }
        let sums: Vec<_> = calls
            .iter()
            .filter(|c| c.function == "shop::checksum")
            .collect();
        assert!(!sums.is_empty());
        assert!(
            sums.iter().all(|c| c.results[0].value.starts_with("529 ")),
            "{sums:?}"
        );
    }
}
