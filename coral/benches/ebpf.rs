//! eBPF RED capture overhead (issue 5), measured as users measure it: the
//! throughput and p99 of an HTTP server (Go net/http, `/hello`) under `wrk`,
//! without and with a Coral agent tracing it, alternated in one run; the
//! agent's CPU and RSS at a paced 1,000 req/s; the BPF programs' run time per
//! request from the kernel's BPF stats; events dropped at the top load.
//!
//! Needs root (the agent loads BPF directly), `wrk`, `go`, `taskset`.
//! Writes the `ebpf` section of docs/benchmarks.md.

#[path = "common/mod.rs"]
mod common;

use common::{Daemons, EPHEMERAL_OTLP, write_section};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WRK_SECS: u64 = 5;
const ROUNDS: usize = 6;
const PACED_RPS: u64 = 1000;
const PACED_SECS: u64 = 20;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn go_server(dir: &Path) -> PathBuf {
    let bin = dir.join("server");
    let out = Command::new("go")
        .args(["build", "-o"])
        .arg(&bin)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/ebpf/server.go"))
        .env("HOME", dir)
        .env("GOCACHE", dir.join("gocache"))
        .env("GO111MODULE", "off")
        .output()
        .expect("go");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

/// The server on core 0.
fn start_server(bin: &Path, dir: &Path) -> (Proc, u16) {
    let port_file = dir.join("server.port");
    let _ = std::fs::remove_file(&port_file);
    let child = Proc(
        Command::new("taskset")
            .args(["-c", "0"])
            .arg(bin)
            .arg(&port_file)
            .env("GOMAXPROCS", "1")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(p) = std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return (child, p);
        }
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Wrk {
    rps: f64,
    p99_ms: f64,
    requests: u64,
}

fn parse_ms(s: &str) -> f64 {
    let s = s.trim();
    if let Some(v) = s.strip_suffix("us") {
        v.parse::<f64>().unwrap() / 1000.0
    } else if let Some(v) = s.strip_suffix("ms") {
        v.parse().unwrap()
    } else if let Some(v) = s.strip_suffix('s') {
        v.parse::<f64>().unwrap() * 1000.0
    } else {
        f64::NAN
    }
}

/// wrk on core 1: one thread, 32 connections, GET `path`.
fn wrk(port: u16, path: &str) -> Wrk {
    let out = Command::new("taskset")
        .args(["-c", "1", "wrk", "-t1", "-c32", "--latency"])
        .arg(format!("-d{WRK_SECS}s"))
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .expect("wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut w = Wrk {
        rps: 0.0,
        p99_ms: f64::NAN,
        requests: 0,
    };
    for line in text.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            w.rps = v.trim().parse().unwrap();
        } else if let Some(v) = t.strip_prefix("99%") {
            w.p99_ms = parse_ms(v);
        } else if t.contains("requests in") {
            w.requests = t.split_whitespace().next().unwrap().parse().unwrap();
        }
    }
    assert!(w.rps > 0.0, "wrk output: {text}");
    w
}

fn proc_cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Paced keep-alive load: `rps` requests per second for `secs`.
fn paced(port: u16, rps: u64, secs: u64) -> u64 {
    let conns = 4;
    let per = rps / conns;
    let threads: Vec<_> = (0..conns)
        .map(|_| {
            std::thread::spawn(move || {
                let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                s.set_nodelay(true).unwrap();
                let mut s = BufReader::new(s);
                let start = Instant::now();
                let mut n = 0u64;
                while start.elapsed() < Duration::from_secs(secs) {
                    let due = start + Duration::from_secs_f64(n as f64 / per as f64);
                    if let Some(d) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(d);
                    }
                    s.get_mut()
                        .write_all(b"GET /hello HTTP/1.1\r\nHost: b\r\n\r\n")
                        .unwrap();
                    let mut line = String::new();
                    loop {
                        line.clear();
                        s.read_line(&mut line).unwrap();
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let mut body = [0u8; 6];
                    s.read_exact(&mut body).unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).sum()
}

/// Sum of run_time_ns and run_cnt over the BPF programs `pid` holds.
fn bpf_run_time(pid: u32) -> (u64, u64) {
    let mut ids = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
    {
        let info = std::fs::read_to_string(e.path()).unwrap_or_default();
        if let Some(id) = info
            .lines()
            .find_map(|l| l.strip_prefix("prog_id:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    ids.dedup();
    let (mut ns, mut cnt) = (0, 0);
    for id in ids {
        let out = Command::new("bpftool")
            .args(["prog", "show", "id", &id.to_string(), "-j"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        ns += v["run_time_ns"].as_u64().unwrap_or(0);
        cnt += v["run_cnt"].as_u64().unwrap_or(0);
    }
    (ns, cnt)
}

fn sysctl(key: &str, value: &str) -> String {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let _ = std::fs::write(&path, value);
    old.trim().to_string()
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP ebpf bench: needs root");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let bin = go_server(work.path());
    let (_server, port) = start_server(&bin, work.path());
    // Warm up.
    let _ = Command::new("wrk")
        .args(["-t1", "-c8", "-d2s"])
        .arg(format!("http://127.0.0.1:{port}/hello"))
        .output();

    let d = Daemons::new(
        &format!("{EPHEMERAL_OTLP}[agent.ebpf]\nflush_interval = \"1s\"\n"),
        false,
    );
    let mut without = Vec::new();
    let mut with = Vec::new();
    let mut without_work = Vec::new();
    let mut with_work = Vec::new();
    let mut bpf = (0u64, 0u64, 0u64); // run ns, run count, requests
    let mut dropped = 0;
    let mut top_cpu = Vec::new();
    d.ok(&["colony", "start", "--daemon", "--port", "0"]);
    for round in 0..ROUNDS {
        without.push(wrk(port, "/hello"));
        without_work.push(wrk(port, "/work"));
        d.ok(&["agent", "start", "--daemon"]);
        let deadline = Instant::now() + Duration::from_secs(20);
        while d.json(&["agent", "status", "--json"])["ebpf"]["running"] != true {
            assert!(Instant::now() < deadline, "eBPF capture did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        if round == 0 {
            d.ok(&["connect", &format!("hello:{port}:tcp")]);
        }
        std::thread::sleep(Duration::from_millis(1500));
        let agent = d.pid("agent");
        let ticks = proc_cpu_ticks(agent);
        let t = Instant::now();
        let w = wrk(port, "/hello");
        top_cpu.push((proc_cpu_ticks(agent) - ticks) as f64 / t.elapsed().as_secs_f64());
        with.push(w);
        with_work.push(wrk(port, "/work"));
        if round + 1 == ROUNDS {
            // BPF run time from the kernel's stats, in a run of its own:
            // collecting them costs two clock reads per program run.
            let old = sysctl("kernel.bpf_stats_enabled", "1");
            let before = bpf_run_time(agent);
            let w = wrk(port, "/hello");
            let after = bpf_run_time(agent);
            sysctl("kernel.bpf_stats_enabled", &old);
            bpf = (after.0 - before.0, after.1 - before.1, w.requests);
        }
        std::thread::sleep(Duration::from_millis(1500));
        let st = d.json(&["agent", "status", "--json"]);
        dropped += st["ebpf"]["dropped"].as_u64().unwrap_or(0);
        d.ok(&["agent", "stop"]);
    }
    // Paced load with the agent running: its CPU and memory.
    d.ok(&["agent", "start", "--daemon"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while d.json(&["agent", "status", "--json"])["ebpf"]["running"] != true {
        assert!(Instant::now() < deadline, "eBPF capture did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let agent = d.pid("agent");
    let ticks0 = proc_cpu_ticks(agent);
    let t0 = Instant::now();
    let sent = paced(port, PACED_RPS, PACED_SECS);
    let cpu_pct =
        (proc_cpu_ticks(agent) - ticks0) as f64 / 100.0 / t0.elapsed().as_secs_f64() * 100.0;
    let rss_mb = status_kb(agent, "VmRSS:") as f64 / 1024.0;
    let anon_mb = status_kb(agent, "RssAnon:") as f64 / 1024.0;
    std::thread::sleep(Duration::from_millis(2500));
    let seen = d.json(&["agent", "status", "--json"])["ebpf"]["requests"]
        .as_u64()
        .unwrap_or(0);
    d.ok(&["agent", "stop"]);

    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    };
    let best = |v: &[Wrk]| median(v.iter().map(|w| w.rps).collect());
    let p99 = |v: &[Wrk]| median(v.iter().map(|w| w.p99_ms).collect());
    let (rps0, rps1) = (best(&without), best(&with));
    let loss = (1.0 - rps1 / rps0) * 100.0;
    // The server saturates core 0, so 1/rps is its CPU time per request.
    let added_us = 1e6 / rps1 - 1e6 / rps0;
    let (work0, work1) = (best(&without_work), best(&with_work));
    let work_loss = (1.0 - work1 / work0) * 100.0;
    let per_req_ns = bpf.0 as f64 / bpf.2.max(1) as f64;
    let kernel = common::kernel_release();
    let all = |v: &[Wrk]| {
        v.iter()
            .map(|w| format!("{:.0}", w.rps))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let section = format!(
        "## eBPF RED capture overhead (issue 5)\n\n\
Reproduce: `make bench` (runs `cargo bench -p coral --bench ebpf`; needs root, wrk, go).\n\
Measured {} on Linux {}, 2 cores shared with other jobs (expect noise between runs). The traced app is the Go `net/http`\n\
server of `tests/ebpf/server.go` (`GET /hello`, `GOMAXPROCS=1`) pinned to core 0; `wrk -t1 -c32`\n\
runs on core 1 for {WRK_SECS} s; runs without and with the agent alternate, {ROUNDS} rounds, median of each.\n\
The agent loads Coral's BPF object directly (root), follows the server as a connected service, and\n\
flushes its aggregates every second (`agent.ebpf.flush_interval = \"1s\"`; the default is 5 s).\n\n\
| figure | result | target |\n|---|---|---|\n\
| `/hello` (no work): max throughput without / with the agent (req/s) | {rps0:.0} / {rps1:.0} (runs: {} / {}) | — |\n\
| `/hello`: throughput loss with the agent | {loss:.1} % | ≤ 5 % |\n\
| `/hello`: p99 latency without / with the agent | {:.2} ms / {:.2} ms | — |\n\
| server CPU added per traced request (1/rps with − 1/rps without) | {added_us:.2} µs | — |\n\
| `/work` (64 SHA-256 rounds): max throughput without / with the agent (req/s) | {work0:.0} / {work1:.0} (runs: {} / {}) | — |\n\
| `/work`: throughput loss with the agent | {work_loss:.1} % | ≤ 5 % |\n\
| `/work`: p99 latency without / with the agent | {:.2} ms / {:.2} ms | — |\n\
| BPF program run time per request (kernel BPF stats, all Coral programs) | {per_req_ns:.0} ns ({} program runs per request) | — |\n\
| events dropped at the top load (ring buffers full) | {dropped} | 0 |\n\
| agent CPU at the top load | {:.0} % of a core | — |\n\
| agent CPU at {PACED_RPS} req/s (paced, {PACED_SECS} s) | {cpu_pct:.2} % of a core | ≤ 2 % |\n\
| agent RSS at {PACED_RPS} req/s, total / private | {rss_mb:.1} MB / {anon_mb:.1} MB | ≤ 100 MB |\n\
| requests sent / paired by the agent in the paced run | {sent} / {seen} | equal |\n\n\
BPF run time counts every Coral program run on the machine during one extra `/hello` run with\n\
`kernel.bpf_stats_enabled=1` (the socket tracepoints run for every socket read and write on the\n\
machine, wrk's included, and collecting the stats adds two clock reads per run), divided by the requests wrk\n\
completed in it.\n\n\
Where the loss comes from: server and wrk saturate both cores, so every cycle the agent or the\n\
BPF programs take is a cycle the app does not get. Tracing costs the server about the added CPU\n\
per request above (two ring records with the captured head bytes, a port test on every\n\
socket read and write, the tracepoints themselves); the agent's reader takes the rest, on either core. `/hello` does\n\
no work at all, so that fixed cost is a large share of each request: it is the worst case. A\n\
handler that does some work (`/work`) pays the same fixed cost over a longer request.\n",
        now_utc(),
        kernel,
        all(&without),
        all(&with),
        p99(&without),
        p99(&with),
        all(&without_work),
        all(&with_work),
        p99(&without_work),
        p99(&with_work),
        bpf.1 / bpf.2.max(1),
        median(top_cpu.clone()),
    );
    print!("{section}");
    write_section("ebpf", &section);
}

fn now_utc() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
