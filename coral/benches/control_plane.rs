//! Control-plane figures (issue 2), measured on real processes in one run:
//! - `coral colony status` round trip over the local socket (tarpc + JSON),
//!   beside a raw Unix-socket echo round trip as the floor;
//! - the whole CLI command, process start included;
//! - time from starting an agent to the colony listing it online;
//! - idle RSS and CPU of an agent watching two services, and of the colony.
//!
//! Writes its section of docs/benchmarks.md. Run: `make bench`.

use coral_proto::services::ColonyControlClient;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{Daemons, EPHEMERAL_OTLP, ms, percentile, write_section};

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

/// (utime + stime) in clock ticks, and (RSS, private anonymous RSS) in kB.
fn proc_stats(pid: u32) -> (u64, (u64, u64)) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = stat.rsplit_once(") ").unwrap().1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .unwrap()
            .parse()
            .unwrap()
    };
    (ticks, (field("VmRSS:"), field("RssAnon:")))
}

fn ticks_per_sec() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(100.0)
}

/// A raw Unix-socket echo: the floor under any local RPC.
fn echo_round_trips(dir: &Path, n: usize) -> Vec<Duration> {
    let path = dir.join("echo.sock");
    let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut buf = [0u8; 64];
        while let Ok(k) = s.read(&mut buf) {
            if k == 0 || s.write_all(&buf[..k]).is_err() {
                break;
            }
        }
    });
    let mut c = std::os::unix::net::UnixStream::connect(&path).unwrap();
    let mut out = Vec::with_capacity(n);
    let mut buf = [0u8; 64];
    for _ in 0..n {
        let t = Instant::now();
        c.write_all(b"ping").unwrap();
        c.read_exact(&mut buf[..4]).unwrap();
        out.push(t.elapsed());
    }
    drop(c);
    server.join().unwrap();
    out
}

fn main() {
    // `cargo test --all-targets` runs benches once as tests: nothing to do then.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("control_plane: run with `make bench` (cargo bench) to measure");
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let env = Daemons::new(EPHEMERAL_OTLP, false);
    env.ok(&["colony", "start", "--daemon", "--port", "0"]);

    // 1. Status round trip over the local socket, from a connected client.
    let n = 2000;
    let mut rpc: Vec<Duration> = rt.block_on(async {
        let stream = coral_proto::local::connect(&env.socket("colony"))
            .await
            .unwrap();
        let client =
            ColonyControlClient::new(Default::default(), coral_proto::local::framed(stream))
                .spawn();
        for _ in 0..100 {
            client.status(tarpc::context::current()).await.unwrap();
        }
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            client.status(tarpc::context::current()).await.unwrap();
            v.push(t.elapsed());
        }
        v
    });
    rpc.sort();
    let mut echo = echo_round_trips(env.dir.path(), n);
    echo.sort();

    // 2. The whole CLI command, as a user runs it.
    let mut cli: Vec<Duration> = (0..30)
        .map(|_| {
            let t = Instant::now();
            env.ok(&["colony", "status", "--json"]);
            t.elapsed()
        })
        .collect();
    cli.sort();

    // 3. Agent start → listed online by the colony (foreground agent process).
    let mut join: Vec<Duration> = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let spawned_ms = coral_proto::now_ms();
        let mut agent: Child = env
            .cmd(&["agent", "start"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        rt.block_on(async {
            let stream = coral_proto::local::connect(&env.socket("colony"))
                .await
                .unwrap();
            let client =
                ColonyControlClient::new(Default::default(), coral_proto::local::framed(stream))
                    .spawn();
            loop {
                let s = client.status(tarpc::context::current()).await.unwrap();
                if s.agents.iter().any(|a| {
                    a.state == coral_proto::AgentState::Online && a.registered_at_ms >= spawned_ms
                }) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        join.push(t.elapsed());
        env.ok(&["agent", "stop"]);
        let _ = agent.wait();
    }
    join.sort();

    // 4. Idle cost: an agent watching two services (default 10 s probes, 5 s heartbeats).
    let web = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let db = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    env.ok(&["agent", "start", "--daemon"]);
    env.ok(&[
        "connect",
        &format!("web:{}:tcp", web.local_addr().unwrap().port()),
        &format!("db:{}:tcp", db.local_addr().unwrap().port()),
    ]);
    std::thread::sleep(Duration::from_secs(5));
    let (agent_pid, colony_pid) = (env.pid("agent"), env.pid("colony"));
    let window = Duration::from_secs(60);
    let (a0, _) = proc_stats(agent_pid);
    let (c0, _) = proc_stats(colony_pid);
    std::thread::sleep(window);
    let (a1, agent_rss) = proc_stats(agent_pid);
    let (c1, colony_rss) = proc_stats(colony_pid);
    let hz = ticks_per_sec();
    let cpu = |t0: u64, t1: u64| (t1 - t0) as f64 / hz / window.as_secs_f64() * 100.0;

    let profile = common::build_profile();
    let kernel = common::kernel_release();
    let section = format!(
        "## Control plane (issue 2)\n\n\
Reproduce: `make bench` (runs `cargo bench -p coral --bench control_plane`).\n\
Measured {date} on Linux {kernel}, {cores} cores, build profile: {profile}.\n\n\
| figure | result | target |\n|---|---|---|\n\
| `colony status` round trip over the local socket (tarpc + JSON), p50 / p99 of {n} | {r50} / {r99} | p50 < 2 ms |\n\
| raw Unix-socket echo in the same run (the floor), p50 / p99 | {e50} / {e99} | — |\n\
| `coral colony status --json` as a command (process start included), p50 of 30 | {c50} | — |\n\
| `coral agent start` → colony lists the agent online, p50 / max of 10 | {j50} / {jmax} | — |\n\
| idle agent RSS, total / private (2 services, 10 s probes, 5 s heartbeats) | {arss:.1} MB / {apriv:.1} MB | < 30 MB |\n\
| idle agent CPU over {win} s | {acpu:.2} % of a core | — |\n\
| idle colony RSS total / private, CPU (1 agent) | {crss:.1} MB / {cpriv:.1} MB, {ccpu:.2} % | — |\n\n\
Total RSS counts the pages of the coral executable that the process has touched\n\
(file-backed, shared by every coral process and reclaimable; the one binary\n\
links DuckDB, tokio, boringtun and the CLI). Private is `RssAnon`: the heap,\n\
stacks and DuckDB buffers this process alone holds.\n",
        date = humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        cores = common::cores(),
        r50 = us(percentile(&rpc, 0.5)),
        r99 = us(percentile(&rpc, 0.99)),
        e50 = us(percentile(&echo, 0.5)),
        e99 = us(percentile(&echo, 0.99)),
        c50 = ms(percentile(&cli, 0.5)),
        j50 = ms(percentile(&join, 0.5)),
        jmax = ms(*join.last().unwrap()),
        arss = agent_rss.0 as f64 / 1024.0,
        apriv = agent_rss.1 as f64 / 1024.0,
        cpriv = colony_rss.1 as f64 / 1024.0,
        acpu = cpu(a0, a1),
        crss = colony_rss.0 as f64 / 1024.0,
        ccpu = cpu(c0, c1),
        win = window.as_secs(),
    );
    print!("{section}");
    write_section("control_plane", &section);
}
