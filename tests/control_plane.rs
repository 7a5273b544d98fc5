//! Issue 2: the colony/agent control plane, end to end with real processes,
//! real HTTP and TCP services, real SQLite and DuckDB files.

mod common;

use common::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

fn one_line_usage_error(env: &Env, args: &[&str], want: &str) {
    let out = env.run(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(64), "coral {args:?}: {err}");
    assert!(
        err.contains(want),
        "coral {args:?}: want '{want}' in: {err}"
    );
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one line expected: {err}"
    );
}

#[test]
fn malformed_service_specs_are_usage_errors() {
    let env = Env::new(FAST_CONFIG);
    one_line_usage_error(&env, &["connect", "api:abc"], "port 'abc' is not a number");
    one_line_usage_error(
        &env,
        &["connect", "api:70000"],
        "port 70000 is out of range 1-65535",
    );
    one_line_usage_error(&env, &["connect", ":8080"], "service name is empty");
    one_line_usage_error(&env, &["connect", ""], "missing ':port'");
    one_line_usage_error(
        &env,
        &["connect", "api:80", "web:81", "api:82"],
        "service 'api' is given more than once",
    );
    one_line_usage_error(&env, &["connect", "api", "--port", "70000"], "out of range");
    one_line_usage_error(
        &env,
        &["connect", "api:80:nonsense"],
        "neither a health path",
    );
}

#[test]
fn connect_without_an_agent_says_what_to_run() {
    let env = Env::new(FAST_CONFIG);
    let out = env.run(&["connect", "api:8080"]);
    assert_eq!(out.status.code(), Some(69));
    assert!(
        stderr(&out).contains("is 'coral agent start' running?"),
        "{}",
        stderr(&out)
    );
    let out = env.run(&["colony", "status"]);
    assert_eq!(out.status.code(), Some(69));
    assert!(
        stderr(&out).contains("is 'coral colony start' running?"),
        "{}",
        stderr(&out)
    );
    // Stopping what is not running is not an error.
    assert!(env.ok(&["colony", "stop"]).contains("not running"));
}

#[test]
fn colony_and_agent_end_to_end_with_restarts() {
    let env = Env::new(FAST_CONFIG);
    let colony = env.start_colony();
    assert_eq!(colony["colony_id"], "test-colony");
    assert!(colony["agents"].as_array().unwrap().is_empty());
    let started = env.start_agent();
    assert!(
        started.contains("Registered with colony test-colony"),
        "{started}"
    );

    let web = HttpService::start();
    let mut db = TcpService::start();
    let out = env.ok(&[
        "connect",
        &format!("web:{}:/health", web.port),
        &format!("db:{}:tcp", db.port),
    ]);
    assert!(
        out.contains("Connected web") && out.contains("Connected db"),
        "{out}"
    );
    // The same name again is refused, and nothing changes.
    one_line_usage_error(
        &env,
        &["connect", &format!("web:{}", web.port)],
        "already connected",
    );

    // The colony sees both services up, with probe latency.
    let status = env.wait_json(
        &["colony", "status", "--json"],
        T,
        "both services up",
        |s| {
            let a = &s["agents"][0];
            a["state"] == "online"
                && a["services"]
                    .as_array()
                    .is_some_and(|v| v.len() == 2 && v.iter().all(|x| x["health"] == "up"))
        },
    );
    let agent = &status["agents"][0];
    assert_eq!(agent["name"], "test-host");
    assert_eq!(agent["version"], env!("CARGO_PKG_VERSION"));
    assert!(agent["addr"].as_str().unwrap().starts_with("127.0.0.1:"));
    let w = service(agent, "web").unwrap();
    assert_eq!(w["port"], web.port);
    assert_eq!(w["kind"], "http");
    assert_eq!(w["health_path"], "/health");
    assert!(w["latency_us"].as_u64().unwrap() > 0);
    assert!(w["since_ms"].as_i64().unwrap() <= status["now_ms"].as_i64().unwrap());
    assert!(w["last_error"].is_null());
    let d = service(agent, "db").unwrap();
    assert_eq!(
        (d["kind"].as_str(), d["health_path"].is_null()),
        (Some("tcp"), true)
    );

    // The agent's own view matches.
    let a = env.json(&["agent", "status", "--json"]);
    assert_eq!(a["colony"]["state"], "connected");
    assert_eq!(a["colony"]["colony_id"], "test-colony");
    assert_eq!(a["agent_id"], agent["id"]);
    assert_eq!(a["services"].as_array().unwrap().len(), 2);

    // Health changes reach the colony: HTTP 503, then a closed TCP port.
    web.set_healthy(false);
    db.stop();
    let status = env.wait_json(
        &["colony", "status", "--json"],
        T,
        "both services down",
        |s| {
            let a = &s["agents"][0];
            service(a, "web").is_some_and(|w| w["health"] == "down")
                && service(a, "db").is_some_and(|d| d["health"] == "down")
        },
    );
    let a = &status["agents"][0];
    assert_eq!(
        service(a, "web").unwrap()["last_error"],
        "GET /health: HTTP 503"
    );
    assert!(
        service(a, "db").unwrap()["last_error"]
            .as_str()
            .unwrap()
            .contains("connection refused")
    );
    web.set_healthy(true);

    // Disconnect propagates.
    assert!(env.ok(&["disconnect", "db"]).contains("Disconnected db"));
    env.wait_json(&["colony", "status", "--json"], T, "db removed", |s| {
        s["agents"][0]["services"]
            .as_array()
            .is_some_and(|v| v.len() == 1)
    });
    one_line_usage_error(&env, &["disconnect", "db"], "no service named 'db'");

    // Kill the colony hard; the agent notices and keeps its samples.
    let colony_pid = env.pid_of("colony").unwrap();
    kill(colony_pid, 9);
    wait_dead(colony_pid, T);
    env.wait_json(
        &["agent", "status", "--json"],
        T,
        "agent reconnecting",
        |a| a["colony"]["state"] == "connecting",
    );
    std::thread::sleep(Duration::from_millis(600)); // samples pile up meanwhile
    let restarted_at = std::time::Instant::now();
    env.start_colony();
    env.wait_json(
        &["colony", "status", "--json"],
        Duration::from_secs(5),
        "agent back within 5s",
        |s| {
            s["agents"][0]["state"] == "online"
                && service(&s["agents"][0], "web").is_some_and(|w| w["health"] == "up")
        },
    );
    let back = restarted_at.elapsed();
    assert!(
        back < Duration::from_secs(5),
        "agent took {back:?} to come back"
    );

    // Services survive an agent restart too.
    env.ok(&["agent", "stop"]);
    env.start_agent();
    let a = env.json(&["agent", "status", "--json"]);
    assert_eq!(a["services"][0]["name"], "web");

    // Nothing lost, nothing doubled: after a graceful agent stop (which flushes),
    // the colony holds exactly the samples the agent took.
    env.wait_json(&["agent", "status", "--json"], T, "agent registered", |a| {
        a["colony"]["state"] == "connected"
    });
    std::thread::sleep(Duration::from_millis(500));
    env.ok(&["agent", "stop"]);
    let colony_samples = env.json(&["colony", "status", "--json"])["stored_samples"]
        .as_u64()
        .unwrap();
    let agent_db = duckdb::Connection::open(env.agent_state().join("telemetry.duckdb")).unwrap();
    let agent_samples: i64 = agent_db
        .query_row("SELECT count(*) FROM health_samples", [], |r| r.get(0))
        .unwrap();
    let distinct: i64 = agent_db
        .query_row("SELECT count(DISTINCT seq) FROM health_samples", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(
        agent_samples, distinct,
        "sample seqs must be unique per agent"
    );
    assert!(agent_samples > 5, "too few samples: {agent_samples}");
    assert_eq!(
        colony_samples, agent_samples as u64,
        "colony and agent sample counts differ"
    );
    let s = env.json(&["colony", "status", "--json"]);
    assert_eq!(s["agents"][0]["state"], "stopped");
}

#[test]
fn agent_without_a_colony_keeps_retrying_and_joins_later() {
    let env = Env::new(FAST_CONFIG);
    let out = env.start_agent();
    assert!(
        out.contains("Not registered yet") && out.contains("keeps retrying"),
        "{out}"
    );
    let a = env.json(&["agent", "status", "--json"]);
    assert_eq!(a["colony"]["state"], "connecting");
    assert!(a["colony"]["attempts"].as_u64().unwrap() >= 1);
    assert!(
        a["colony"]["last_error"]
            .as_str()
            .unwrap()
            .contains("coral colony start"),
        "{a}"
    );
    env.start_colony();
    env.wait_json(
        &["agent", "status", "--json"],
        Duration::from_secs(5),
        "agent joined",
        |a| a["colony"]["state"] == "connected",
    );
}

#[test]
fn a_second_colony_on_a_busy_port_is_refused() {
    let env = Env::new(FAST_CONFIG);
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let out = env.run(&["colony", "start", "--daemon", "--port", &port]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("Address already in use") && err.contains("--port"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    // And a second colony in the same place is refused by its pid file.
    env.start_colony();
    let out = env.run(&["colony", "start", "--port", "0"]);
    assert!(stderr(&out).contains("already running"), "{}", stderr(&out));
}

#[test]
fn a_stale_pid_file_is_taken_over() {
    let env = Env::new(FAST_CONFIG);
    std::fs::create_dir_all(env.runtime_coral()).unwrap();
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = gone.id();
    gone.wait().unwrap();
    std::fs::write(
        env.runtime_coral().join("colony.pid"),
        format!("{dead_pid}\n"),
    )
    .unwrap();
    std::fs::write(env.runtime_coral().join("colony.sock"), "").unwrap();
    env.start_colony();
    let log = env.log("colony");
    assert!(log.contains("removed a stale pid file"), "{log}");
    assert_eq!(
        env.pid_of("colony").map(|p| p as u32 != dead_pid),
        Some(true)
    );
}

fn refuses_damaged(env: &Env, role: &str, file: &std::path::Path) {
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let junk = b"definitely not a database ".repeat(400);
    std::fs::write(file, &junk).unwrap();
    // Never the default port: a colony may be running on this machine.
    let out = match role {
        "colony" => env.run(&[role, "start", "--daemon", "--port", "0"]),
        _ => env.run(&[role, "start", "--daemon"]),
    };
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&file.display().to_string()) && err.contains("move it aside"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(file).unwrap(),
        junk,
        "{} was modified",
        file.display()
    );
    assert!(env.pid_of(role).is_none());
}

/// Also issue 16 item 14: this test started a colony on the default port
/// 9000, so it failed on a machine where a colony runs. It holds 9000 (or
/// finds it taken) to prove it no longer needs it.
#[test]
fn damaged_state_files_are_refused_and_never_overwritten() {
    let _default_port = std::net::TcpListener::bind("127.0.0.1:9000");
    let env = Env::new(FAST_CONFIG);
    refuses_damaged(&env, "colony", &env.colony_state().join("colony.db"));
    let env = Env::new(FAST_CONFIG);
    refuses_damaged(&env, "colony", &env.colony_state().join("telemetry.duckdb"));
    let env = Env::new(FAST_CONFIG);
    refuses_damaged(&env, "agent", &env.agent_state().join("agent.db"));
    let env = Env::new(FAST_CONFIG);
    refuses_damaged(&env, "agent", &env.agent_state().join("telemetry.duckdb"));
}

#[test]
fn daemons_survive_garbage_from_clients() {
    let env = Env::new(FAST_CONFIG);
    let status = env.start_colony();
    env.start_agent();
    let rpc = status["rpc_addr"].as_str().unwrap().to_string();
    let garbage: [&[u8]; 4] = [
        b"GET / HTTP/1.1\r\n\r\n",
        &[0xff; 64],
        &[0, 0, 0, 5, b'{', b'"', b'x', 0xff, b'}'],
        &[0x7f, 0xff, 0xff, 0xff], // a 2 GiB frame length
    ];
    for g in garbage {
        let s = std::net::TcpStream::connect(&rpc).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        poke(s, g);
        for sock in ["colony.sock", "agent.sock"] {
            let s =
                std::os::unix::net::UnixStream::connect(env.runtime_coral().join(sock)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            poke(s, g);
        }
    }
    env.ok(&["colony", "status"]);
    env.ok(&["agent", "status"]);
    env.wait_json(
        &["colony", "status", "--json"],
        T,
        "agent still online",
        |s| s["agents"][0]["state"] == "online",
    );
}

#[test]
fn other_users_are_refused_on_the_local_socket() {
    if !nix_is_root()
        || which("setpriv").is_none()
        || !std::path::Path::new("/usr/bin/python3").exists()
    {
        eprintln!(
            "SKIP other_users_are_refused_on_the_local_socket: needs root, setpriv (util-linux) and /usr/bin/python3"
        );
        return;
    }
    let env = Env::new(FAST_CONFIG);
    env.start_colony();
    // Open the door on purpose (directory and socket), so only the daemon's
    // SO_PEERCRED check stands between another user and the colony.
    use std::os::unix::fs::PermissionsExt;
    for p in [env.root().to_path_buf(), env.runtime(), env.runtime_coral()] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let sock = env.runtime_coral().join("colony.sock");
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    // The exact bytes the CLI sends for `coral colony status`, replayed as
    // nobody (refused) and as the owner (served).
    let frame = env.root().join("status.frame");
    std::fs::write(&frame, capture_status_frame()).unwrap();
    std::fs::set_permissions(&frame, std::fs::Permissions::from_mode(0o644)).unwrap();
    let script = format!(
        "import socket\n\
         s=socket.socket(socket.AF_UNIX); s.settimeout(3); s.connect('{}')\n\
         try:\n s.sendall(open('{}','rb').read()); print(len(s.recv(65536)))\n\
         except (ConnectionResetError, BrokenPipeError): print(0)",
        sock.display(),
        frame.display()
    );
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            &script,
        ])
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(
        answer,
        "0",
        "another uid got an answer: {answer} {}",
        stderr(&out)
    );
    // The owner, framing the same way, is served.
    let out = std::process::Command::new("/usr/bin/python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    let answer: usize = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    assert!(answer > 0, "the owner was not served: {}", stderr(&out));
    assert!(env.log("colony").contains("refused local connection"));
}

/// Lets the real CLI send `colony status` to a stub socket and keeps the frame.
fn capture_status_frame() -> Vec<u8> {
    use std::io::Read;
    let env = Env::new(FAST_CONFIG);
    std::fs::create_dir_all(env.runtime_coral()).unwrap();
    let stub =
        std::os::unix::net::UnixListener::bind(env.runtime_coral().join("colony.sock")).unwrap();
    let mut cli = env
        .command(&["colony", "status"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (mut conn, _) = stub.accept().unwrap();
    let mut len = [0u8; 4];
    conn.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    conn.read_exact(&mut body).unwrap();
    drop(conn);
    let _ = cli.wait();
    [len.to_vec(), body].concat()
}

fn nix_is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

fn which(cmd: &str) -> Option<()> {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| ())
}

#[test]
fn config_validate_reports_file_line_and_column() {
    let env = Env::new(FAST_CONFIG);
    let good = env.config_dir().join("config.toml");
    assert!(
        env.ok(&["config", "validate", good.to_str().unwrap()])
            .contains("ok ([colony] and [agent])")
    );
    let bad = env.root().join("bad.toml");
    std::fs::write(&bad, "[agent]\nname = \"x\"\nprobe_intervall = \"1s\"\n").unwrap();
    one_line_usage_error(
        &env,
        &["config", "validate", bad.to_str().unwrap()],
        ":3:1: unknown field `probe_intervall`",
    );
    std::fs::write(&bad, "[colony]\nlisten = \"nowhere\"\n").unwrap();
    one_line_usage_error(
        &env,
        &["config", "validate", bad.to_str().unwrap()],
        "must be ip:port",
    );
    // A daemon refuses to start on a bad config, with the same message.
    one_line_usage_error(
        &env,
        &["colony", "start", "--config", bad.to_str().unwrap()],
        "must be ip:port",
    );
}

#[test]
fn version_reports_build_facts() {
    let env = Env::new(FAST_CONFIG);
    let v = env.json(&["version", "--json"]);
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert!(!v["git_commit"].as_str().unwrap().is_empty());
    assert!(v["build_date"].as_str().unwrap().starts_with("20"));
    assert!(v["duckdb"].as_str().unwrap().starts_with('v'));
    assert!(v["features"].is_array());
}
