//! Mesh figures (issue 3), measured in one run on real processes: a colony
//! in one network namespace, agents in another, a veth pair between them.
//!
//! - join time: `coral agent start --join TOKEN` (token redeemed) until the
//!   agent's first tarpc call over the mesh is answered, fresh agent state
//!   each time;
//! - the `coral exec` round trip over the mesh beside the same through a
//!   colony with `[colony.mesh] enabled = false` (plain TCP on the same
//!   veth), and spawning `/usr/bin/true` locally (the floor);
//! - recovery after a colony restart: until the agent is back online.
//!
//! Needs root (netns, TUN). Writes its section of docs/benchmarks.md.
//! Run: `cargo bench -p coral --bench mesh_join`.

use coral_proto::services::ColonyControlClient;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{CORAL, ms, percentile, write_section};

const COLONY_IP: &str = "10.202.1.1";
const AGENT_IP: &str = "10.202.1.2";
const PLAIN_PORT: u16 = 9100;
const SVC_PORT: u16 = 18080;

const POLICY: &str = r#"
[[rule]]
name = "true"
callers = ["*"]
program = "/usr/bin/true"
"#;

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One coral node: a namespace and a private set of XDG dirs.
struct Node {
    ns: String,
    dir: PathBuf,
}

impl Node {
    fn new(ns: &str, dir: PathBuf, config: &str) -> Node {
        std::fs::create_dir_all(dir.join("config/coral")).unwrap();
        std::fs::create_dir_all(dir.join("run")).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir.join("run"), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(dir.join("config/coral/config.toml"), config).unwrap();
        Node {
            ns: ns.to_string(),
            dir,
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.ns, CORAL])
            .args(args)
            .env("XDG_RUNTIME_DIR", self.dir.join("run"))
            .env("XDG_STATE_HOME", self.dir.join("state"))
            .env("XDG_CONFIG_HOME", self.dir.join("config"))
            .env("CORAL_LOG", "warn,coral_agent::link=debug")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "coral {args:?} in {} failed ({}):\n{}\n{}",
            self.ns,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }

    fn socket(&self, role: &str) -> PathBuf {
        self.dir.join(format!("run/coral/{role}.sock"))
    }

    fn stop(&self, role: &str) {
        let _ = self.run(&[role, "stop"]);
    }

    fn connected(&self) -> bool {
        let out = self.run(&["agent", "status", "--json"]);
        out.status.success()
            && serde_json::from_slice::<Value>(&out.stdout)
                .is_ok_and(|s| s["colony"]["state"] == "connected")
    }
}

/// The namespaces, nodes and the service listener; removed on drop.
struct Lab {
    namespaces: Vec<String>,
    nodes: Vec<(Node, &'static str)>,
    listener: Option<Child>,
    tmp: tempfile::TempDir,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (n, role) in &self.nodes {
            n.stop(role);
        }
        if let Some(mut c) = self.listener.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

impl Lab {
    fn build() -> Lab {
        let id = format!("{}", std::process::id() % 100_000);
        let (c, a) = (format!("cbench-c-{id}"), format!("cbench-a-{id}"));
        let mut lab = Lab {
            namespaces: vec![c.clone(), a.clone()],
            nodes: Vec::new(),
            listener: None,
            tmp: tempfile::tempdir().unwrap(),
        };
        for ns in [&c, &a] {
            sh(&["ip", "netns", "add", ns]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        let (x, y) = (format!("cbx{id}"), format!("cby{id}"));
        sh(&["ip", "link", "add", &x, "type", "veth", "peer", "name", &y]);
        sh(&["ip", "link", "set", &x, "netns", &c]);
        sh(&["ip", "link", "set", &y, "netns", &a]);
        sh(&[
            "ip",
            "-n",
            &c,
            "addr",
            "add",
            &format!("{COLONY_IP}/30"),
            "dev",
            &x,
        ]);
        sh(&[
            "ip",
            "-n",
            &a,
            "addr",
            "add",
            &format!("{AGENT_IP}/30"),
            "dev",
            &y,
        ]);
        sh(&["ip", "-n", &c, "link", "set", &x, "up"]);
        sh(&["ip", "-n", &a, "link", "set", &y, "up"]);
        // The service the agents host (`coral exec api ...` finds its agent
        // by service): a listener in the agents' namespace.
        lab.listener = Some(
            Command::new("ip")
                .args(["netns", "exec", &a, "python3", "-c"])
                .arg(format!(
                    "import socket,time\ns=socket.socket()\ns.bind(('127.0.0.1',{SVC_PORT}))\ns.listen()\nwhile True:\n c,_=s.accept(); c.close()"
                ))
                .stdin(Stdio::null())
                .spawn()
                .unwrap(),
        );
        std::fs::write(lab.tmp.path().join("policy.toml"), POLICY).unwrap();
        lab
    }

    fn colony_ns(&self) -> &str {
        &self.namespaces[0]
    }
    fn agent_ns(&self) -> &str {
        &self.namespaces[1]
    }

    fn add(&mut self, name: &str, role: &'static str, config: &str) -> usize {
        let node = Node::new(
            if role == "colony" {
                self.colony_ns()
            } else {
                self.agent_ns()
            },
            self.tmp.path().join(name),
            config,
        );
        self.nodes.push((node, role));
        self.nodes.len() - 1
    }

    fn agent_config(&self, name: &str, extra: &str) -> String {
        format!(
            r#"
[agent]
name = "{name}"
probe_interval = "200ms"
probe_timeout = "150ms"
services = ["api:{SVC_PORT}:tcp"]
{extra}

[agent.otlp]
grpc_listen = "127.0.0.1:0"
http_listen = "127.0.0.1:0"

[agent.exec]
policy = "{}"
isolation = "none"

[agent.mesh]
keepalive = "1s"
helper_socket = "{}"
"#,
            self.tmp.path().join("policy.toml").display(),
            self.tmp.path().join("no-helper.sock").display(),
        )
    }
}

fn colony_config(id: &str, mesh: &str) -> String {
    format!(
        r#"
[colony]
colony_id = "{id}"
listen = "0.0.0.0:9000"
heartbeat_interval = "200ms"
agent_timeout = "2s"

[colony.mesh]
{mesh}
"#
    )
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if f() {
            return t0.elapsed();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

fn members(colony: &Node) -> Vec<Value> {
    colony
        .json(&["colony", "agents", "--json"])
        .as_array()
        .cloned()
        .unwrap()
}

/// Waits until the colony lists `api` on one online agent.
fn wait_service(colony: &Node) {
    wait_until("the agent to report api", Duration::from_secs(20), || {
        let s = colony.json(&["colony", "status", "--json"]);
        s["agents"].as_array().is_some_and(|a| {
            a.iter()
                .any(|a| a["services"].as_array().is_some_and(|v| !v.is_empty()))
        })
    });
}

/// `exec_start` + `exec_poll` until done over each colony's local socket,
/// in alternating batches of 10 (so a load spike from the machine's other
/// work falls on both), `n` each after a warm-up.
fn exec_round_trips(
    rt: &tokio::runtime::Runtime,
    sockets: [&Path; 2],
    n: usize,
) -> [Vec<Duration>; 2] {
    rt.block_on(async {
        let mut clients = Vec::new();
        for s in sockets {
            let stream = coral_proto::local::connect(s).await.unwrap();
            clients.push(
                ColonyControlClient::new(Default::default(), coral_proto::local::framed(stream))
                    .spawn(),
            );
        }
        let one = common::exec_true;
        for c in &clients {
            for _ in 0..10 {
                one(c).await;
            }
        }
        let mut out = [Vec::with_capacity(n), Vec::with_capacity(n)];
        for _ in 0..n.div_ceil(10) {
            for (i, c) in clients.iter().enumerate() {
                for _ in 0..10 {
                    let t = Instant::now();
                    one(c).await;
                    out[i].push(t.elapsed());
                }
            }
        }
        for v in &mut out {
            v.sort();
        }
        out
    })
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn main() {
    // `cargo test --all-targets` runs benches once as tests: nothing to do then.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("mesh_join: run with `cargo bench -p coral --bench mesh_join` to measure");
        return;
    }
    let have_python = Command::new("python3")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !nix::unistd::geteuid().is_root() || !have_python {
        eprintln!(
            "SKIP mesh_join bench: needs root (network namespaces, TUN) and python3; nothing measured"
        );
        return;
    }
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let n = 100;
    let joins = 5;
    let restarts = 3;

    let mut lab = Lab::build();
    let helper = lab.tmp.path().join("no-helper.sock");
    let colony = lab.add(
        "colony",
        "colony",
        &colony_config(
            "cbench-mesh",
            &format!(
                "listen = \"{COLONY_IP}:51820\"\nhelper_socket = \"{}\"\n",
                helper.display()
            ),
        ),
    );
    lab.nodes[colony].0.ok(&["colony", "start", "--daemon"]);

    // Join: token redeemed → the agent's first tarpc call over the mesh
    // answered (its link `connected`), fresh agent state each time. All
    // but the last are stopped and revoked.
    let mut join_times = Vec::new();
    let mut agent = 0;
    for i in 0..joins {
        let name = format!("j{i}");
        let cfg = lab.agent_config(&name, "");
        agent = lab.add(&name, "agent", &cfg);
        let (c, a) = (&lab.nodes[colony].0, &lab.nodes[agent].0);
        let token = c.json(&["colony", "token", "create", "--json"])["token"]
            .as_str()
            .unwrap()
            .to_string();
        let t0 = Instant::now();
        a.ok(&["agent", "start", "--daemon", "--join", &token]);
        wait_until(
            "the agent to connect over the mesh",
            Duration::from_secs(20),
            || a.connected(),
        );
        join_times.push(t0.elapsed());
        assert!(
            members(c)
                .iter()
                .any(|m| m["name"] == name.as_str() && m["online"] == true)
        );
        if i + 1 < joins {
            a.stop("agent");
            c.ok(&["colony", "revoke", &name]);
        }
    }
    join_times.sort();
    eprintln!("join times: {join_times:?}");

    // Recovery: colony stopped and started again → the agent back online
    // (seen by the colony after the restart).
    let mut recovery = Vec::new();
    let mut starts = Vec::new();
    for _ in 0..restarts {
        let (c, a) = (&lab.nodes[colony].0, &lab.nodes[agent].0);
        c.ok(&["colony", "stop"]);
        let t0 = Instant::now();
        c.ok(&["colony", "start", "--daemon"]);
        starts.push(t0.elapsed());
        let restarted_at = coral_proto::now_ms();
        wait_until("the agent back online", Duration::from_secs(30), || {
            members(c).iter().any(|m| {
                m["online"] == true && m["last_seen_ms"].as_i64().is_some_and(|t| t > restarted_at)
            }) && a.connected()
        });
        recovery.push(t0.elapsed());
        if t0.elapsed() > Duration::from_secs(5) {
            let log = std::fs::read_to_string(a.dir.join("state/coral/agent/agent.log"))
                .unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            eprintln!(
                "slow recovery; agent log (newest first):\n{}",
                tail.join("\n")
            );
        }
    }
    starts.sort();
    eprintln!("colony start: {starts:?}");
    let recovery_each: Vec<String> = recovery.iter().map(|d| ms(*d)).collect();
    recovery.sort();
    eprintln!("recovery: {recovery:?}");
    // The same exec through plain TCP on the same veth.
    let plain_colony = lab.add(
        "plain-colony",
        "colony",
        &colony_config("cbench-plain", "enabled = false\n".trim_end())
            .replace("0.0.0.0:9000", &format!("{COLONY_IP}:{PLAIN_PORT}")),
    );
    let cfg = lab.agent_config(
        "plain",
        &format!("colony = \"{COLONY_IP}:{PLAIN_PORT}\"\nrpc_listen = \"{AGENT_IP}:0\""),
    );
    let plain_agent = lab.add("plain-agent", "agent", &cfg);
    lab.nodes[plain_colony]
        .0
        .ok(&["colony", "start", "--daemon"]);
    lab.nodes[plain_agent].0.ok(&["agent", "start", "--daemon"]);
    wait_service(&lab.nodes[plain_colony].0);
    wait_service(&lab.nodes[colony].0);
    let [mesh_rtt, tcp_rtt] = exec_round_trips(
        &rt,
        [
            &lab.nodes[colony].0.socket("colony"),
            &lab.nodes[plain_colony].0.socket("colony"),
        ],
        n,
    );

    // The floor: spawn and wait for the same program locally.
    let mut local: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            assert!(Command::new("/usr/bin/true").status().unwrap().success());
            t.elapsed()
        })
        .collect();
    local.sort();
    drop(lab);

    let profile = common::build_profile();
    let kernel = common::kernel_release();
    let section = format!(
        "## The mesh: join, RPC over WireGuard, recovery (issue 3)\n\n\
Reproduce: `cargo bench -p coral --bench mesh_join` (root: it\n\
creates two network namespaces joined by a veth pair).\n\
Measured {date} on Linux {kernel}, {cores} cores, build profile: {profile},\n\
load average {load} when it started (other builds share the machine).\n\
The colony runs in one namespace, the agents in the other; WireGuard is the\n\
userspace implementation (boringtun) on TUN devices, UDP over the veth.\n\n\
| figure | p50 | max / p99 |\n|---|---|---|\n\
| join: `coral agent start --join TOKEN` → first tarpc call answered over the mesh, {joins} joins, fresh agent state each | {j50} | {jmax} (max) |\n\
| `coral exec` round trip over the mesh, {n} runs | {m50} | {m99} (p99) |\n\
| `coral exec` round trip, plain TCP on the same veth (`[colony.mesh] enabled = false`), {n} runs | {t50} | {t99} (p99) |\n\
| spawn + wait `/usr/bin/true` locally (the floor), {n} runs | {l50} | {l99} (p99) |\n\
| recovery: `coral colony start` after `coral colony stop` → agent back online, {restarts} restarts (each: {rall}) | {r50} | {rmax} (max) |\n\n\
Join time includes the CLI starting the daemon, the join exchange (TCP to\n\
the token's endpoint), creating the TUN device, the WireGuard handshake and\n\
the agent's registration over the mesh. An exec round trip is `exec_start` +\n\
`exec_poll` until done over the colony's local socket: colony → agent call\n\
(`AgentRpc` on the agent's mesh address, or on the veth address without the\n\
mesh), the policy decision, two fsynced audit records, spawn and wait\n\
(`isolation = \"none\"`); the two colonies run side by side and are\n\
measured in alternating batches of 10. Recovery: a stopping colony closes\n\
the agents' connections before its WireGuard device stops, so each agent\n\
sees the link end at once, and an agent whose link failed forces a fresh\n\
WireGuard handshake before each reconnect (the restarted colony has no\n\
session); what remains is the colony's own start and the agent's reconnect\n\
backoff (200 ms, with jitter). Before these two changes recovery was bimodal\n\
(0.5 s, or 5 to 17 s waiting for a call's deadline and a boringtun rekey).\n\
Targets: join p50 < 1 s, recovery p50 < 5 s.\n",
        date = humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        cores = common::cores(),
        j50 = ms(percentile(&join_times, 0.5)),
        jmax = ms(*join_times.last().unwrap()),
        m50 = ms(percentile(&mesh_rtt, 0.5)),
        m99 = ms(percentile(&mesh_rtt, 0.99)),
        t50 = ms(percentile(&tcp_rtt, 0.5)),
        t99 = ms(percentile(&tcp_rtt, 0.99)),
        l50 = us(percentile(&local, 0.5)),
        l99 = us(percentile(&local, 0.99)),
        r50 = ms(percentile(&recovery, 0.5)),
        rmax = ms(*recovery.last().unwrap()),
        rall = recovery_each.join(", "),
    );
    print!("{section}");
    write_section("join", &section);
}
