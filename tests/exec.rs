//! Issue 4: `coral exec` under the host's policy, end to end: real colony
//! and agent processes, real commands, the agent's real SQLite audit log.
//! Every security case asserts the outcome AND that the attempt is in the
//! audit log (`coral audit --json`, or agent.db itself after a `kill -9`).
//!
//! Tests that need a cgroup (fork bomb, escape from the process group, the
//! cleanup after `kill -9`) skip without one, and fail instead when CI=true.

mod common;

use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(15);

fn config(policy: &Path, extra_exec: &str) -> String {
    format!(
        "{FAST_CONFIG}\n[agent.exec]\npolicy = \"{}\"\n{extra_exec}\n",
        policy.display()
    )
}

/// A colony and an agent hosting service `api`, running under `policy`
/// (`{ROOT}` in it is replaced by the test's private directory).
struct Exec {
    env: Env,
    _svc: TcpService,
}

impl Exec {
    fn start(policy: &str, extra_exec: &str) -> Exec {
        Self::start_with(policy, extra_exec, |_| {})
    }

    fn start_with(
        policy: &str,
        extra_exec: &str,
        agent_env: impl FnOnce(&mut std::process::Command),
    ) -> Exec {
        let env = Env::new("");
        let path = env.root().join("policy.toml");
        let root = env.root().display().to_string();
        std::fs::write(&path, policy.replace("{ROOT}", &root)).unwrap();
        std::fs::write(
            env.config_dir().join("config.toml"),
            config(&path, extra_exec),
        )
        .unwrap();
        env.start_colony();
        let mut cmd = env.command(&["agent", "start", "--daemon"]);
        agent_env(&mut cmd);
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "agent start: {}", stderr(&out));
        let svc = TcpService::start();
        env.ok(&["connect", &format!("api:{}:tcp", svc.port)]);
        wait_service_known(&env, "api", T);
        Exec { env, _svc: svc }
    }

    fn root(&self) -> String {
        self.env.root().display().to_string()
    }

    fn exec(&self, line: &str) -> std::process::Output {
        self.env.run(&["exec", "api", line])
    }

    fn audit(&self) -> Value {
        self.env.json(&["audit", "--json", "--since", "1h"])
    }

    /// The agent's audit record of the attempt with exactly this argv.
    fn record(&self, argv: &[&str]) -> Value {
        let audit = self.audit();
        audit["exec"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| {
                r["argv"].as_array().is_some_and(|a| {
                    a.iter()
                        .map(|v| v.as_str().unwrap())
                        .eq(argv.iter().copied())
                })
            })
            .cloned()
            .unwrap_or_else(|| panic!("no audit record of {argv:?} in {audit:#}"))
    }

    fn agent_status(&self) -> Value {
        self.env.json(&["agent", "status", "--json"])
    }

    fn agent_rss_kb(&self) -> u64 {
        let pid = self.env.pid_of("agent").unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .unwrap()
            .parse()
            .unwrap()
    }

    /// True when commands get a cgroup with a pids limit. Without one:
    /// false (the caller skips), or a failure when CI=true.
    fn has_cgroup(&self, test: &str) -> bool {
        let iso = self.agent_status()["exec"]["isolation"]
            .as_str()
            .unwrap()
            .to_string();
        let ok = iso.contains("cgroup.kill") && iso.contains("pids.max");
        if !ok {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{test}: CI needs a cgroup for commands, the agent has: {iso}"
            );
            eprintln!("SKIP {test}: no cgroup for commands here ({iso})");
        }
        ok
    }
}

fn code(out: &std::process::Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn one_line_error(out: &std::process::Output, want: &str) {
    let err = stderr(out);
    assert!(err.contains(want), "want '{want}' in: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("error: "), "{err}");
}

/// Processes whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let argv0 = cmd.split(|b| *b == 0).next().unwrap_or_default().to_vec();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            // Not the `coral exec ...` CLI (or the shim) naming the command.
            if cmd.contains(needle) && !String::from_utf8_lossy(&argv0).ends_with("/coral") {
                found.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
            }
        }
    }
    found
}

fn wait_no_processes(needle: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let left = processes_with(needle);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "still running: {left:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

const ECHO: &str = r#"
[[rule]]
name = "echo"
callers = ["uid:0", "user:root"]
program = "/usr/bin/echo"
rest = "any"
"#;

#[test]
fn shell_metacharacters_never_reach_a_shell() {
    let x = Exec::start(ECHO, "");
    let root = x.root();
    let sentinel = format!("{root}/cexec-sentinel");
    let outfile = format!("{root}/cexec-out");
    std::fs::write(&sentinel, "keep me").unwrap();

    let cases: Vec<(String, Vec<String>, String)> = vec![
        (
            format!("echo hi; rm -rf {sentinel}"),
            vec!["hi;".into(), "rm".into(), "-rf".into(), sentinel.clone()],
            format!("hi; rm -rf {sentinel}\n"),
        ),
        ("echo $(id)".into(), vec!["$(id)".into()], "$(id)\n".into()),
        ("echo `id`".into(), vec!["`id`".into()], "`id`\n".into()),
        (
            "echo a | id".into(),
            vec!["a".into(), "|".into(), "id".into()],
            "a | id\n".into(),
        ),
        (
            "echo a && id".into(),
            vec!["a".into(), "&&".into(), "id".into()],
            "a && id\n".into(),
        ),
        (
            "echo a\nid".into(),
            vec!["a".into(), "id".into()],
            "a id\n".into(),
        ),
        (
            format!("echo x > {outfile}"),
            vec!["x".into(), ">".into(), outfile.clone()],
            format!("x > {outfile}\n"),
        ),
    ];
    for (line, args, want) in &cases {
        let out = x.exec(line);
        assert_eq!(code(&out), 0, "{line:?}: {}", stderr(&out));
        assert_eq!(stdout(&out), *want, "{line:?}");
        assert!(!stdout(&out).contains("uid="), "id ran: {line:?}");
        let mut argv = vec!["echo"];
        argv.extend(args.iter().map(String::as_str));
        let r = x.record(&argv);
        assert_eq!(r["decision"], "allow");
        assert_eq!(r["program"], "/usr/bin/echo");
        assert_eq!(r["state"], "finished");
        assert_eq!(r["outcome"]["exit_code"], 0);
    }
    assert!(Path::new(&sentinel).exists(), "rm ran");
    assert!(!Path::new(&outfile).exists(), "a redirection happened");

    // A shell is a program like any other: no rule names it, so no.
    let out = x.exec("sh -c id");
    assert_eq!(code(&out), 77, "{}", stderr(&out));
    one_line_error(&out, "denied by the policy");
    assert!(!stdout(&out).contains("uid="));
    let r = x.record(&["sh", "-c", "id"]);
    assert_eq!(r["decision"], "deny");
    assert_eq!(r["state"], "denied");
    assert!(r["outcome"].is_null());
}

#[test]
fn dot_dot_and_symlinks_do_not_escape_a_path_rule() {
    let policy = r#"
[[rule]]
name = "app-logs"
callers = ["uid:0"]
program = "/usr/bin/cat"
args = [{ path = "{ROOT}/logs/*.log" }]
"#;
    let x = Exec::start(policy, "");
    let root = x.root();
    std::fs::create_dir_all(format!("{root}/logs")).unwrap();
    std::fs::create_dir_all(format!("{root}/bin")).unwrap();
    std::fs::write(format!("{root}/logs/a.log"), "LOG-A\n").unwrap();
    std::fs::write(format!("{root}/secret.log"), "SECRET\n").unwrap();
    std::os::unix::fs::symlink("/bin/sh", format!("{root}/bin/cat")).unwrap();
    std::os::unix::fs::symlink("/usr/bin/cat", format!("{root}/bin/mycat")).unwrap();

    let out = x.exec(&format!("cat {root}/logs/a.log"));
    assert_eq!(
        (code(&out), stdout(&out).as_str()),
        (0, "LOG-A\n"),
        "{}",
        stderr(&out)
    );

    for arg in [
        format!("{root}/logs/../secret.log"),
        format!("{root}/logs/./a.log"),
        format!("{root}//logs/a.log"),
        format!(
            "{root}/logs/../../{}/secret.log",
            root.trim_start_matches('/')
        ),
    ] {
        let out = x.exec(&format!("cat {arg}"));
        assert_eq!(code(&out), 77, "{arg}: {}", stderr(&out));
        assert!(!stdout(&out).contains("SECRET"));
        let r = x.record(&["cat", &arg]);
        assert_eq!(r["decision"], "deny", "{arg}");
        assert!(r["reason"].as_str().unwrap().contains("app-logs"), "{r}");
    }

    // A symlink named like an allowed program is checked as what it points
    // to (here a shell, which no rule names), however it is spelled.
    for prog in [
        format!("{root}/bin/cat"),
        format!("/usr/bin/../..{root}/bin/cat"),
    ] {
        let out = x.exec(&format!("{prog} -c 'echo PWNED'"));
        assert_eq!(code(&out), 77, "{prog}: {}", stderr(&out));
        assert!(!stdout(&out).contains("PWNED"));
        let r = x.record(&[&prog, "-c", "echo PWNED"]);
        assert_eq!(r["decision"], "deny");
        let real = std::fs::canonicalize("/bin/sh").unwrap();
        assert_eq!(r["program"], real.to_str().unwrap(), "{r}");
    }
    // A symlink to the allowed program runs the allowed program.
    let out = x.exec(&format!("{root}/bin/mycat {root}/logs/a.log"));
    assert_eq!(stdout(&out), "LOG-A\n", "{}", stderr(&out));
    let r = x.record(&[&format!("{root}/bin/mycat"), &format!("{root}/logs/a.log")]);
    assert_eq!(
        (r["decision"].as_str(), r["program"].as_str()),
        (Some("allow"), Some("/usr/bin/cat"))
    );
}

#[test]
fn ld_preload_and_path_injection_are_stripped() {
    let policy = r#"
[[rule]]
name = "env"
callers = ["uid:0"]
program = "/usr/bin/env"
env = ["LANG", "CEXEC_OK"]
"#;
    let root_dir = tempfile::tempdir().unwrap();
    let evil = root_dir.path().join("evilbin");
    std::fs::create_dir_all(&evil).unwrap();
    let marker = root_dir.path().join("cexec-evil-ran");
    std::fs::write(
        evil.join("env"),
        format!("#!/bin/sh\ntouch {}\n", marker.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(evil.join("env"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let preload = root_dir.path().join("cexec-evil.so");
    let x = Exec::start_with(policy, "", |c| {
        c.env("PATH", format!("{}:/usr/bin:/bin", evil.display()))
            .env("LD_PRELOAD", &preload)
            .env("LD_LIBRARY_PATH", root_dir.path())
            .env("CEXEC_OK", "yes")
            .env("CEXEC_SECRET", "no")
            .env("LANG", "C.UTF-8");
    });
    let out = x.exec("env");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let mut lines: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
    lines.sort();
    assert_eq!(lines, ["CEXEC_OK=yes", "LANG=C.UTF-8"]);
    assert!(!marker.exists(), "the agent's PATH chose the program");
    let r = x.record(&["env"]);
    assert_eq!(
        (r["decision"].as_str(), r["program"].as_str()),
        (Some("allow"), Some("/usr/bin/env"))
    );

    // The caller cannot pass variables either: these are program names.
    let out = x.exec("LD_PRELOAD=/tmp/x.so env");
    assert_eq!(code(&out), 77, "{}", stderr(&out));
    one_line_error(&out, "path is not absolute");
    let out = x.exec("PATH=x env");
    assert_eq!(code(&out), 127, "{}", stderr(&out));
    one_line_error(&out, "is not found on this host");
    assert_eq!(x.record(&["PATH=x", "env"])["decision"], "deny");
    let r = x.record(&["LD_PRELOAD=/tmp/x.so", "env"]);
    assert_eq!(r["decision"], "deny");
}

#[test]
fn gigabytes_of_output_are_capped_without_the_agent_growing() {
    let policy = r#"
[[rule]]
name = "yes"
callers = ["uid:0"]
program = "/usr/bin/yes"
max_output_bytes = 1048576
timeout = "20s"

[[rule]]
name = "zeros"
callers = ["uid:0"]
program = "/usr/bin/head"
args = ["-c", { range = [1, 8000000000] }, "/dev/zero"]
max_output_bytes = 1048576
timeout = "20s"

[[rule]]
name = "zeros-big-cap"
callers = ["uid:0"]
program = "/usr/bin/cat"
args = ["/dev/zero"]
max_output_bytes = 4000000000
timeout = "60s"
"#;
    let x = Exec::start(policy, "");
    x.exec("yes"); // warm up allocations once
    let before = x.agent_rss_kb();
    for line in ["yes", "head -c 4000000000 /dev/zero", "yes"] {
        let t = Instant::now();
        let out = x.exec(line);
        assert_eq!(out.stdout.len(), 1_048_576, "{line}");
        assert!(
            stderr(&out).contains("[coral: output cut at 1048576 bytes"),
            "{}",
            stderr(&out)
        );
        assert_eq!(code(&out), 141, "SIGPIPE: {}", stderr(&out));
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{line} took {:?}",
            t.elapsed()
        );
    }
    let r = x.record(&["head", "-c", "4000000000", "/dev/zero"]);
    assert_eq!(r["outcome"]["truncated"], true);
    assert_eq!(r["outcome"]["output_bytes"], 1_048_576);
    assert_eq!(r["outcome"]["timed_out"], false);

    // A client that stops reading: the agent stops reading too (bounded
    // window), instead of buffering gigabytes.
    let mut cli: Child = x
        .env
        .command(&["exec", "api", "cat /dev/zero"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut pipe = cli.stdout.take().unwrap();
    let mut first = vec![0u8; 1 << 20];
    pipe.read_exact(&mut first).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let after = x.agent_rss_kb();
    assert!(
        after < before + 40_000,
        "agent RSS grew from {before} kB to {after} kB"
    );
    let _ = cli.kill();
    let _ = cli.wait();
    drop(pipe);
}

const SHELLS: &str = r#"
[[rule]]
name = "sleep"
callers = ["uid:0"]
program = "/usr/bin/sleep"
args = [{ range = [1, 999999] }]
timeout = "1s"

[[rule]]
name = "background-sleeps"
callers = ["uid:0"]
program = { glob = "/usr/bin/*sh" }
shell = true
args = ["-c", "sleep 987655 & sleep 987656; wait"]
timeout = "1s"

[[rule]]
name = "setsid-escape"
callers = ["uid:0"]
program = "/usr/bin/setsid"
args = ["sleep", "987657"]
timeout = "5s"

# A fork bomb that stops doubling at depth 12 (4096 processes) even if
# nothing else bounded it; with the cgroup it hits pids.max long before.
[[rule]]
name = "fork-bomb"
callers = ["uid:0"]
program = { glob = "/usr/bin/*sh" }
shell = true
args = ["-c", 'f() { [ "$1" -lt 12 ] || exec sleep 987658; f $(($1+1)) & f $(($1+1)); wait; }; f 0']
timeout = "3s"
"#;

#[test]
fn hang_and_fork_bomb_are_killed_at_their_timeout() {
    let x = Exec::start(SHELLS, "max_pids = 64");
    let t = Instant::now();
    let out = x.exec("sleep 987654");
    assert_eq!(code(&out), 124, "{}", stderr(&out));
    one_line_error(&out, "timed out after 1s");
    assert!(t.elapsed() < Duration::from_secs(5));
    wait_no_processes("sleep 987654", Duration::from_secs(3));
    let r = x.record(&["sleep", "987654"]);
    assert_eq!(r["outcome"]["timed_out"], true);
    assert_eq!(r["outcome"]["signal"], 9);

    // Background children die with the group.
    let out = x.exec("sh -c 'sleep 987655 & sleep 987656; wait'");
    assert_eq!(code(&out), 124, "{}", stderr(&out));
    wait_no_processes("sleep 98765", Duration::from_secs(3));
    assert_eq!(
        x.record(&["sh", "-c", "sleep 987655 & sleep 987656; wait"])["outcome"]["timed_out"],
        true
    );

    if !x.has_cgroup("hang_and_fork_bomb_are_killed_at_their_timeout") {
        return;
    }
    // A child that leaves the process group is still in the cgroup.
    let out = x.exec("setsid sleep 987657");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    wait_no_processes("sleep 987657", Duration::from_secs(3));
    assert_eq!(
        x.record(&["setsid", "sleep", "987657"])["state"],
        "finished"
    );

    // The fork bomb: never more than pids.max processes, all gone at the
    // timeout, and the agent still answers.
    let agent_pid = x.env.pid_of("agent").unwrap();
    // The agent's parent cgroup for commands; each command has its own below.
    let current = [
        format!("/sys/fs/cgroup/pids/{}", exec_cgroup(agent_pid)),
        format!("/sys/fs/cgroup/{}", exec_cgroup(agent_pid)),
    ]
    .into_iter()
    .find(|p| Path::new(p).join("pids.current").exists());
    let bomb = x.env.command(&[
        "exec",
        "api",
        r#"sh -c 'f() { [ "$1" -lt 12 ] || exec sleep 987658; f $(($1+1)) & f $(($1+1)); wait; }; f 0'"#,
    ]);
    let mut bomb = {
        let mut b = bomb;
        b.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut peak = 0;
    let t = Instant::now();
    while bomb.try_wait().unwrap().is_none() {
        if let Some(p) = &current {
            for d in std::fs::read_dir(p)
                .unwrap()
                .flatten()
                .filter(|d| d.path().is_dir())
            {
                if let Ok(v) = std::fs::read_to_string(d.path().join("pids.current")) {
                    peak = peak.max(v.trim().parse::<u64>().unwrap_or(0));
                }
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "the fork bomb outlived its timeout"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // The shell either gives up when fork fails at pids.max (dash exits 2)
    // or is killed at its timeout (124); either way nothing is left.
    let status = bomb.wait().unwrap().code();
    assert!(matches!(status, Some(2) | Some(124)), "{status:?}");
    // Never above pids.max. (Sampling every 5 ms on a loaded machine can
    // miss a bomb that hit the limit and gave up at once: 0 means unseen.)
    if current.is_some() {
        assert!(peak <= 64, "pids in the command's cgroup peaked at {peak}");
    }
    eprintln!(
        "fork bomb: exit {status:?}, peak {peak} processes, {:?}",
        t.elapsed()
    );
    wait_no_processes("sleep 987658", Duration::from_secs(3));
    assert_eq!(x.agent_status()["exec"]["running"], 0);
    let r = x.record(&[
        "sh",
        "-c",
        r#"f() { [ "$1" -lt 12 ] || exec sleep 987658; f $(($1+1)) & f $(($1+1)); wait; }; f 0"#,
    ]);
    assert_eq!(
        (r["decision"].as_str(), r["state"].as_str()),
        (Some("allow"), Some("finished"))
    );
    assert_eq!(r["outcome"]["timed_out"], status == Some(124));
}

#[test]
fn a_caller_not_named_by_any_rule_is_denied() {
    let policy = r#"
[[rule]]
name = "echo-for-4242"
callers = ["uid:4242", "group:cexec-nobody"]
program = "/usr/bin/echo"
rest = "any"

[[rule]]
name = "true-for-another-colony"
callers = ["identity:other-colony"]
program = "/usr/bin/true"

[[rule]]
name = "date-for-this-colony"
callers = ["identity:test-*"]
program = "/usr/bin/date"
args = ["+%Y"]
"#;
    let x = Exec::start(policy, "");
    let out = x.exec("echo hello");
    assert_eq!(code(&out), 77, "{}", stderr(&out));
    one_line_error(&out, "is not named in callers");
    assert!(stdout(&out).is_empty());
    let r = x.record(&["echo", "hello"]);
    assert_eq!(r["decision"], "deny");
    assert!(r["caller"].as_str().unwrap().contains("uid:0"), "{r}");
    assert!(
        r["caller"]
            .as_str()
            .unwrap()
            .contains("identity:test-colony"),
        "{r}"
    );
    assert!(
        r["origin"].as_str().unwrap().contains("colony test-colony"),
        "{r}"
    );

    let out = x.exec("true");
    assert_eq!(code(&out), 77);
    assert_eq!(x.record(&["true"])["decision"], "deny");

    // The colony's identity is what the agent sees as the mesh identity.
    let out = x.exec("date +%Y");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(x.record(&["date", "+%Y"])["rule"], "date-for-this-colony");
}

#[test]
fn every_attempt_is_audited_even_after_kill_9_of_the_agent() {
    let x = Exec::start(
        r#"
[[rule]]
name = "sleep"
callers = ["uid:0"]
program = "/usr/bin/sleep"
args = ["987659"]
timeout = "60s"
"#,
        "",
    );
    let cli = x
        .env
        .command(&["exec", "api", "sleep 987659"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + T;
    while processes_with("sleep 987659").is_empty() {
        assert!(Instant::now() < deadline, "the command never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let agent_pid = x.env.pid_of("agent").unwrap();
    kill(agent_pid, 9);
    wait_dead(agent_pid, T);
    let out = cli.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(69), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot reach agent"),
        "{}",
        stderr(&out)
    );

    // The write-ahead record is on disk, with no completion.
    let db = rusqlite::Connection::open(x.env.agent_state().join("agent.db")).unwrap();
    let (decision, finished, argv): (String, Option<i64>, String) = db
        .query_row(
            "SELECT decision, finished, argv FROM exec_audit WHERE argv LIKE '%987659%'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!((decision.as_str(), finished), ("allow", None));
    assert_eq!(argv, r#"["sleep","987659"]"#);
    drop(db);

    // A restarted agent marks it interrupted, and (with a cgroup) kills
    // what the dead agent left running.
    x.env.start_agent();
    let r = x.record(&["sleep", "987659"]);
    assert_eq!(r["state"], "interrupted");
    assert!(r["outcome"].is_null());
    if x.has_cgroup("every_attempt_is_audited_even_after_kill_9_of_the_agent") {
        wait_no_processes("sleep 987659", Duration::from_secs(5));
        // The dead agent's cgroups are gone. Any agent that starts removes
        // them (when commands run in the root cgroup, another test's agent
        // may get there first), so the check is on the tree, not one log.
        let stale = exec_cgroup(agent_pid);
        let left: Vec<String> = [
            "/sys/fs/cgroup",
            "/sys/fs/cgroup/unified",
            "/sys/fs/cgroup/pids",
        ]
        .iter()
        .flat_map(|root| walk_dirs(Path::new(root), 3))
        .filter(|d| d.ends_with(&stale))
        .collect();
        assert!(
            left.is_empty(),
            "left behind: {left:?}\n{}",
            x.env.log("agent")
        );
    } else {
        for p in processes_with("sleep 987659") {
            kill(p.split(':').next().unwrap().parse().unwrap(), 9);
        }
    }
}

/// The name of an agent's parent cgroup for its commands: its pid
/// namespace and pid (the agent runs in the test's pid namespace).
fn exec_cgroup(agent_pid: i32) -> String {
    use std::os::unix::fs::MetadataExt;
    let pidns = std::fs::metadata("/proc/self/ns/pid").unwrap().ino();
    format!("coral-exec-{pidns}-{agent_pid}")
}

#[test]
fn output_streams_and_the_exit_code_passes_through() {
    let policy = r#"
[[rule]]
name = "sh-demo"
callers = ["uid:0"]
program = { glob = "/usr/bin/*sh" }
shell = true
args = ["-c", { any_of = ["echo out; echo err >&2; exit 3", "echo first; sleep 2; echo second"] }]
"#;
    let x = Exec::start(policy, "");
    let out = x.exec("sh -c 'echo out; echo err >&2; exit 3'");
    assert_eq!(code(&out), 3);
    assert_eq!(stdout(&out), "out\n");
    assert_eq!(stderr(&out), "err\n");
    let r = x.record(&["sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(
        (
            r["outcome"]["exit_code"].as_i64(),
            r["outcome"]["output_bytes"].as_u64()
        ),
        (Some(3), Some(8))
    );

    // The first line arrives while the command still runs.
    let mut child = x
        .env
        .command(&["exec", "api", "sh -c 'echo first; sleep 2; echo second'"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "first");
    assert!(
        t.elapsed() < Duration::from_millis(1800),
        "not streamed: {:?}",
        t.elapsed()
    );
    assert_eq!(lines.next().unwrap().unwrap(), "second");
    assert!(child.wait().unwrap().success());

    // --json: one document, same exit code.
    let out = x.env.run(&[
        "exec",
        "api",
        "sh -c 'echo out; echo err >&2; exit 3'",
        "--json",
    ]);
    assert_eq!(code(&out), 3);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["stdout"], "out\n");
    assert_eq!(doc["stderr"], "err\n");
    assert_eq!(doc["verdict"], "allowed");
    assert_eq!(doc["rule"], "sh-demo");
    assert_eq!(doc["outcome"]["exit_code"], 3);
}

#[test]
fn policy_reloads_on_change_and_sighup_and_an_invalid_file_keeps_the_old_one() {
    let x = Exec::start(ECHO, "");
    let policy = x.env.root().join("policy.toml");
    assert_eq!(code(&x.exec("echo one")), 0);

    std::fs::write(&policy, "[[rule]]\nname = \n").unwrap();
    let st = x
        .env
        .wait_json(&["agent", "status", "--json"], T, "the error shown", |s| {
            s["exec"]["policy"]["error"].is_string()
        });
    assert!(
        st["exec"]["policy"]["error"]
            .as_str()
            .unwrap()
            .contains("policy.toml:2:"),
        "{st}"
    );
    let human = x.env.ok(&["agent", "status"]);
    assert!(human.contains("NOT reloaded"), "{human}");
    assert_eq!(
        code(&x.exec("echo still")),
        0,
        "the old policy stays in force"
    );
    assert!(
        x.env
            .log("agent")
            .contains("previous policy stays in force")
    );

    std::fs::write(
        &policy,
        "[[rule]]\nname = \"true\"\ncallers = [\"uid:0\"]\nprogram = \"/usr/bin/true\"\n",
    )
    .unwrap();
    x.env
        .wait_json(&["agent", "status", "--json"], T, "the new policy", |s| {
            s["exec"]["policy"]["error"].is_null() && s["exec"]["policy"]["rules"] == 1
        });
    assert_eq!(code(&x.exec("echo gone")), 77);
    assert_eq!(code(&x.exec("true")), 0);

    std::fs::remove_file(&policy).unwrap();
    x.env
        .wait_json(&["agent", "status", "--json"], T, "missing", |s| {
            s["exec"]["policy"]["missing"] == true
        });
    assert_eq!(
        code(&x.exec("true")),
        77,
        "a missing file denies everything"
    );
    assert_eq!(x.audit()["exec"].as_array().unwrap().len(), 5);

    // SIGHUP, with the file watch slowed down to an hour.
    let y = Exec::start(ECHO, "policy_watch_interval = \"1h\"");
    let path = y.env.root().join("policy.toml");
    std::fs::write(
        &path,
        "[[rule]]\nname = \"true\"\ncallers = [\"uid:0\"]\nprogram = \"/usr/bin/true\"\n",
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(code(&y.exec("echo before-hup")), 0);
    kill(y.env.pid_of("agent").unwrap(), 1);
    y.env.wait_json(
        &["agent", "status", "--json"],
        T,
        "reloaded by SIGHUP",
        |s| s["exec"]["policy"]["rules"] == 1,
    );
    assert_eq!(code(&y.exec("echo after-hup")), 77);
    assert!(y.env.log("agent").contains("SIGHUP"));
}

#[test]
fn missing_policy_file_denies_everything_and_says_so_once() {
    let env = Env::new("");
    let missing = env.root().join("no-such-policy.toml");
    std::fs::write(env.config_dir().join("config.toml"), config(&missing, "")).unwrap();
    env.start_colony();
    env.start_agent();
    let svc = TcpService::start();
    env.ok(&["connect", &format!("api:{}:tcp", svc.port)]);
    env.wait_json(&["colony", "status", "--json"], T, "api", |s| {
        s["agents"][0]["services"]
            .as_array()
            .is_some_and(|v| !v.is_empty())
    });
    let out = env.run(&["exec", "api", "true"]);
    assert_eq!(code(&out), 77, "{}", stderr(&out));
    let st = env.json(&["agent", "status", "--json"]);
    assert_eq!(st["exec"]["policy"]["missing"], true);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        env.log("agent")
            .matches("exec policy file is missing")
            .count(),
        1
    );
    let audit = env.json(&["audit", "--json"]);
    assert_eq!(audit["exec"][0]["decision"], "deny");
}

#[test]
fn unknown_service_dead_agent_and_no_colony_have_clear_errors() {
    let x = Exec::start(ECHO, "");
    let out = x.env.run(&["exec", "nosuch", "echo hi"]);
    assert_eq!(code(&out), 64);
    one_line_error(&out, "no agent hosts a service named 'nosuch'");
    let out = x.env.run(&["exec", "api", "echo 'unterminated"]);
    assert_eq!(code(&out), 64);
    one_line_error(&out, "unterminated quote");
    let out = x.env.run(&["exec", "api", "echo", "--timeout", "0s"]);
    assert_eq!(code(&out), 64);

    x.env.ok(&["agent", "stop"]);
    let out = x.exec("echo hi");
    assert_eq!(code(&out), 69, "{}", stderr(&out));
    one_line_error(&out, "is stopped");
    // The colony recorded the request it could not forward.
    let audit = x.audit();
    assert!(
        audit["colony"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["action"] == "exec" && r["cli_equivalent"] == "coral exec api 'echo hi'"),
        "{audit:#}"
    );
    assert!(!audit["unreachable"].as_array().unwrap().is_empty());

    x.env.ok(&["colony", "stop"]);
    let out = x.exec("echo hi");
    assert_eq!(code(&out), 69);
    one_line_error(&out, "is 'coral colony start' running?");
}

#[test]
fn agent_rpc_refuses_callers_other_than_its_colony() {
    let x = Exec::start(ECHO, "");
    let addr: std::net::SocketAddr = x.agent_status()["rpc_addr"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let refused = rt.block_on(async {
        // Same host, another source address: not the colony.
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let stream = sock.connect(addr).await.unwrap();
        let client = coral_proto::services::AgentRpcClient::new(
            Default::default(),
            coral_proto::local::framed(stream),
        )
        .spawn();
        let req = coral_proto::ExecRequest {
            service: "api".into(),
            argv: vec!["echo".into(), "forged".into()],
            timeout_ms: None,
            caller: coral_proto::ExecCaller {
                uid: Some(0),
                ..Default::default()
            },
            origin: "forged".into(),
        };
        let mut ctx = tarpc::context::current();
        ctx.deadline = Instant::now() + Duration::from_secs(5);
        client.exec_start(ctx, req).await
    });
    assert!(!matches!(refused, Ok(Ok(_))), "{refused:?}");
    assert!(
        x.env
            .log("agent")
            .contains("refused an agent rpc connection")
    );
    let audit = x.audit();
    assert!(audit["exec"].as_array().unwrap().is_empty(), "{audit:#}");
}

/// Directories under `root`, `depth` levels down (cgroup trees).
fn walk_dirs(root: &Path, depth: u32) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(root) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir() && !t.is_symlink()) {
            out.push(p.display().to_string());
            if depth > 1 {
                out.extend(walk_dirs(&p, depth - 1));
            }
        }
    }
    out
}

/// A directory under /var/log for one test, removed at the end.
struct VarLogDir(std::path::PathBuf);

impl VarLogDir {
    /// `None` (after saying why) when this user cannot write /var/log;
    /// CI runs as root, so there it must work.
    fn new(test: &str) -> Option<VarLogDir> {
        let dir = std::path::PathBuf::from(format!(
            "/var/log/coral-test-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        match std::fs::create_dir(&dir) {
            Ok(()) => Some(VarLogDir(dir)),
            Err(e) => {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "{test}: cannot create {}: {e}",
                    dir.display()
                );
                eprintln!("SKIP {test}: cannot create {}: {e}", dir.display());
                None
            }
        }
    }
}

impl Drop for VarLogDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Issue 16: commands inherited the agent's landlock set, so the policy
/// doc's own `tail` of a log under /var/log failed with EACCES. Now the
/// spawner runs them, each confined to the system paths and the paths its
/// allowed arguments name: the log reads, through `coral exec` and MCP;
/// a symlink the rule's glob lets through, and a shell reading a file no
/// argument names, are refused by the command's own landlock.
#[test]
fn the_policy_docs_tail_of_var_log_runs_and_each_command_is_confined_issue_16() {
    let Some(logs) = VarLogDir::new("tail_of_var_log") else {
        return;
    };
    let dir = logs.0.display().to_string();
    // docs/policy.md's rule, with this test's directory.
    let policy = format!(
        r#"
[[rule]]
name = "tail-app-logs"
callers = ["role:oncall", "uid:0"]
program = "/usr/bin/tail"
args = ["-n", {{ range = [1, 5000] }}, {{ path = "{dir}/*.log" }}]

[[rule]]
name = "sh-cat"
callers = ["uid:0"]
program = {{ glob = "/usr/bin/*sh" }}
shell = true
args = ["-c", {{ regex = 'cat [^;&|$`]*' }}]
"#
    );
    let x = Exec::start(&policy, "\n[colony.mcp]\nallow_exec = true\n");
    let root = x.root();
    std::fs::write(format!("{dir}/app.log"), "one\ntwo\nthree\n").unwrap();
    std::fs::write(format!("{root}/secret.txt"), "SECRET\n").unwrap();
    std::os::unix::fs::symlink(format!("{root}/secret.txt"), format!("{dir}/evil.log")).unwrap();

    let out = x.exec(&format!("tail -n 2 {dir}/app.log"));
    assert_eq!(
        (code(&out), stdout(&out).as_str()),
        (0, "two\nthree\n"),
        "{}",
        stderr(&out)
    );
    let v: Value = serde_json::from_str(
        &x.env.ok(&[
            "mcp",
            "call",
            "coral_agent_exec",
            &serde_json::json!({"service": "api", "command": format!("tail -n 1 {dir}/app.log")})
                .to_string(),
        ]),
    )
    .unwrap();
    assert_eq!(
        (v["exit_code"].as_i64(), v["stdout"].as_str()),
        (Some(0), Some("three\n")),
        "{v}"
    );
    assert_eq!(v["rule"], "tail-app-logs");

    // The policy allows the name; the command's landlock refuses where the
    // symlink leads, even though the command runs as root.
    let out = x.exec(&format!("tail -n 1 {dir}/evil.log"));
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(!stdout(&out).contains("SECRET"));
    assert!(
        stderr(&out).contains("Permission denied"),
        "{}",
        stderr(&out)
    );
    let r = x.record(&["tail", "-n", "1", &format!("{dir}/evil.log")]);
    assert_eq!(r["decision"], "allow", "{r}");
    assert_eq!(r["outcome"]["exit_code"], 1, "{r}");

    // A shell's script names no path argument: it reads system files only.
    let out = x.exec(&format!("sh -c 'cat {root}/secret.txt'"));
    assert_ne!(code(&out), 0);
    assert!(!stdout(&out).contains("SECRET"));
    assert!(
        stderr(&out).contains("Permission denied"),
        "{}",
        stderr(&out)
    );
    let out = x.exec("sh -c 'cat /etc/hostname'");
    assert_eq!(code(&out), 0, "{}", stderr(&out));

    // The agent's status says how commands are confined.
    let iso = x.agent_status()["exec"]["isolation"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(iso.contains("landlock: system paths"), "{iso}");
}

/// Issue 16: a policy file the agent's sandbox cannot read (here replaced
/// by a symlink to a file outside the directory it was in at start) said
/// "make it readable by the user the agent runs as", although it was. The
/// error now names the sandbox, and the previous policy stays in force.
#[test]
fn a_policy_the_sandbox_cannot_read_says_so_issue_16() {
    let x = Exec::start(ECHO, "");
    let policy = x.env.root().join("policy.toml");
    let elsewhere = tempfile::tempdir().unwrap();
    let target = elsewhere.path().join("policy.toml");
    std::fs::write(&target, ECHO).unwrap();
    std::fs::remove_file(&policy).unwrap();
    std::os::unix::fs::symlink(&target, &policy).unwrap();
    let st = x
        .env
        .wait_json(&["agent", "status", "--json"], T, "the error shown", |s| {
            s["exec"]["policy"]["error"].is_string()
        });
    let err = st["exec"]["policy"]["error"].as_str().unwrap();
    assert!(err.contains("sandbox (landlock)"), "{err}");
    assert!(!err.contains("make it readable"), "{err}");
    assert_eq!(
        code(&x.exec("echo still")),
        0,
        "the old policy stays in force"
    );
}
