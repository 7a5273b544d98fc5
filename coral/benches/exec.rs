//! `coral exec` figures (issue 4), measured on real processes in one run:
//! the round trip CLI → colony → agent → command → back, beside spawning
//! the same command locally (the floor), with the agent's cgroup shim and
//! without it (`agent.exec.isolation = "none"`), and the whole CLI command.
//!
//! Writes its section of docs/benchmarks.md. Run: `make bench`.

use coral_proto::services::ColonyControlClient;
use std::time::{Duration, Instant};

mod common;

use common::{Daemons, EPHEMERAL_OTLP, ms, percentile, write_section};

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

const POLICY: &str = r#"
[[rule]]
name = "true"
callers = ["*"]
program = "/usr/bin/true"
"#;

/// A colony and an agent hosting `api`, under a policy that allows `true`.
fn daemons(isolation: &str) -> (Daemons, std::net::TcpListener) {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let config = format!(
        "{EPHEMERAL_OTLP}\n[colony]\nheartbeat_interval = \"200ms\"\nagent_timeout = \"2s\"\n\
         [agent.exec]\npolicy = \"{}\"\nisolation = \"{isolation}\"\n",
        policy.display()
    );
    let env = Daemons::new(&config, false);
    // Keep the policy file alive as long as the daemons.
    std::mem::forget(dir);
    env.ok(&["colony", "start", "--daemon", "--port", "0"]);
    env.ok(&["agent", "start", "--daemon"]);
    let svc = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    env.ok(&[
        "connect",
        &format!("api:{}:tcp", svc.local_addr().unwrap().port()),
    ]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = env.json(&["colony", "status", "--json"]);
        if s["agents"][0]["services"]
            .as_array()
            .is_some_and(|v| !v.is_empty())
        {
            break;
        }
        assert!(Instant::now() < deadline, "the agent never reported api");
        std::thread::sleep(Duration::from_millis(50));
    }
    (env, svc)
}

/// exec_start + exec_poll until done, from a connected colony client.
fn rpc_round_trips(rt: &tokio::runtime::Runtime, env: &Daemons, n: usize) -> Vec<Duration> {
    rt.block_on(async {
        let stream = coral_proto::local::connect(&env.socket("colony"))
            .await
            .unwrap();
        let client =
            ColonyControlClient::new(Default::default(), coral_proto::local::framed(stream))
                .spawn();
        let one = || common::exec_true(&client);
        for _ in 0..20 {
            one().await;
        }
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            one().await;
            v.push(t.elapsed());
        }
        v.sort();
        v
    })
}

fn main() {
    // `cargo test --all-targets` runs benches once as tests: nothing to do then.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("exec: run with `make bench` (cargo bench) to measure");
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let n = 300;
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into());

    // The floor: spawn and wait for the same program locally.
    let mut local: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            let st = std::process::Command::new("/usr/bin/true")
                .status()
                .unwrap();
            assert!(st.success());
            t.elapsed()
        })
        .collect();
    local.sort();

    let (with_cg, _svc1) = daemons("auto");
    let isolation = with_cg.json(&["agent", "status", "--json"])["exec"]["isolation"]
        .as_str()
        .unwrap_or("?")
        .to_string();
    let cg = rpc_round_trips(&rt, &with_cg, n);
    let mut cli: Vec<Duration> = (0..50)
        .map(|_| {
            let t = Instant::now();
            with_cg.ok(&["exec", "api", "true"]);
            t.elapsed()
        })
        .collect();
    cli.sort();
    drop(with_cg);

    let (plain, _svc2) = daemons("none");
    let none = rpc_round_trips(&rt, &plain, n);
    drop(plain);

    let profile = common::build_profile();
    let kernel = common::kernel_release();
    let section = format!(
        "## coral exec (issue 4)\n\n\
Reproduce: `make bench` (runs `cargo bench -p coral --bench exec`).\n\
Measured {date} on Linux {kernel}, {cores} cores, build profile: {profile},\n\
load average {load} when it started (other builds share the machine).\n\
The command is `/usr/bin/true`; the colony and agent run on this machine and\n\
talk tarpc over loopback TCP (the `join` section below has the same round trip over the mesh, between network namespaces). A round trip is\n\
`exec_start` + `exec_poll` until done over the colony's local socket: the\n\
colony finds the agent, the agent decides, writes its audit record with\n\
fsync, spawns, waits, writes the completion record, and the answer comes back.\n\n\
| figure | p50 | p99 |\n|---|---|---|\n\
| spawn + wait locally (`std::process::Command`, the floor), {n} runs | {l50} | {l99} |\n\
| `coral exec` round trip, {isolation}, {n} runs | {g50} | {g99} |\n\
| `coral exec` round trip, process group only (`isolation = \"none\"`), {n} runs | {p50} | {p99} |\n\
| `coral exec api true` as a command (CLI process start included), 50 runs | {c50} | {c99} |\n\n\
The difference between the two round trips is the cgroup: creating and removing\n\
it, and starting the command through the `coral` binary as a shim that joins it\n\
before `execve`. Two fsyncs (the write-ahead record and the completion) are in\n\
both.\n",
        date = humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        load = load,
        cores = common::cores(),
        l50 = us(percentile(&local, 0.5)),
        l99 = us(percentile(&local, 0.99)),
        g50 = ms(percentile(&cg, 0.5)),
        g99 = ms(percentile(&cg, 0.99)),
        p50 = ms(percentile(&none, 0.5)),
        p99 = ms(percentile(&none, 0.99)),
        c50 = ms(percentile(&cli, 0.5)),
        c99 = ms(percentile(&cli, 0.99)),
    );
    print!("{section}");
    write_section("exec", &section);
}
