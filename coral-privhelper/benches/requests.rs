//! Helper request latency (issue 3), in one run: `Hello` (connect, version
//! negotiation), `GetKey` (the key handed over as a sealed memfd with
//! SCM_RIGHTS) and `OpenTarget` (issue 16: answered by the target process,
//! one more hop) against the real helper binary, beside a plain Unix-socket
//! echo round trip and the `OpenTarget` steps run in-process as floors. Needs root (the helper's key file is
//! root-owned). Run: `cargo bench -p coral-privhelper --bench requests`.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("requests: run with `cargo bench` to measure");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let n = 1000;
    let me = std::process::id();
    // The target process's hop alone (issue 16): the same OpenTarget
    // through a target process of this bench (unconfined), on a connection
    // accepted on a socket of its own. Forked first, while this process has
    // one thread.
    let hop_path = dir.path().join("hop.sock");
    let hop_listener = UnixListener::bind(&hop_path).unwrap();
    let tp = coral_privhelper::target::spawn(
        &hop_listener,
        coral_privhelper::config::Allow::default(),
        coral_privhelper::target::Confine::No,
    )
    .unwrap();
    // The caller is another process: the target process refuses a
    // connection whose peer is its parent.
    let mut hop_client = Command::new("python3")
        .args([
            "-c",
            "import socket,sys,time; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); time.sleep(60)",
        ])
        .arg(&hop_path)
        .spawn()
        .unwrap();
    let (hop_conn, _) = hop_listener.accept().unwrap();
    let mut hop: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            tp.open_target(std::os::fd::AsFd::as_fd(&hop_conn), me, 0)
                .unwrap();
            t.elapsed()
        })
        .collect();
    drop(tp);
    let _ = hop_client.kill();
    let _ = hop_client.wait();
    let socket = dir.path().join("helper.sock");
    let config = dir.path().join("helper.conf");
    std::fs::write(&config, "allow_uid = 0\n").unwrap();
    let mut helper = Command::new(env!("CARGO_BIN_EXE_coral-privhelper"))
        .arg("--socket")
        .arg(&socket)
        .arg("--config")
        .arg(&config)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while coral_privhelper::Client::connect(&socket).is_err() {
        assert!(Instant::now() < deadline, "helper did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut hello: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            coral_privhelper::Client::connect(&socket).unwrap();
            t.elapsed()
        })
        .collect();
    let mut client = coral_privhelper::Client::connect(&socket).unwrap();
    client.get_key().unwrap(); // first use generates the key
    let mut get_key: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            client.get_key().unwrap();
            t.elapsed()
        })
        .collect();
    // OpenTarget of this process by pid: the helper asks its target process
    // (issue 16), which reads /proc and opens the executable.
    let mut open_target: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            client.open_target(me, 0).unwrap();
            t.elapsed()
        })
        .collect();
    // The same steps in this process, without the helper: what the hop and
    // the request cost on top.
    let mut open_direct: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            coral_privhelper::uprobe::open_target(me, 0, 0).unwrap();
            t.elapsed()
        })
        .collect();
    let _ = Command::new("kill").arg(helper.id().to_string()).status();
    let _ = helper.wait();

    // The floor: connect + one 16-byte round trip on a plain Unix socket.
    let echo_path = dir.path().join("echo.sock");
    let l = UnixListener::bind(&echo_path).unwrap();
    let server = std::thread::spawn(move || {
        for _ in 0..n {
            let (mut s, _) = l.accept().unwrap();
            let mut b = [0u8; 16];
            s.read_exact(&mut b).unwrap();
            s.write_all(&b).unwrap();
        }
    });
    let mut echo: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            let mut s = UnixStream::connect(&echo_path).unwrap();
            s.write_all(&[7u8; 16]).unwrap();
            let mut b = [0u8; 16];
            s.read_exact(&mut b).unwrap();
            t.elapsed()
        })
        .collect();
    server.join().unwrap();

    println!("## coral-privhelper requests (issue 3)\n");
    println!(
        "Reproduce: `cargo bench -p coral-privhelper --bench requests` (release profile, as root). {n} of each.\n"
    );
    println!("| request | p50 | p99 |\n|---|---|---|");
    println!(
        "| connect + `Hello` (version negotiation, SO_PEERCRED check, config lookup) | {} | {} |",
        us(pct(&mut hello, 0.5)),
        us(pct(&mut hello, 0.99))
    );
    println!(
        "| `GetKey` (key as a sealed memfd over SCM_RIGHTS, client checks the seals) | {} | {} |",
        us(pct(&mut get_key, 0.5)),
        us(pct(&mut get_key, 0.99))
    );
    println!(
        "| `OpenTarget` by pid (issue 16: the helper asks its target process, which reads /proc and opens the executable; fd passed twice) | {} | {} |",
        us(pct(&mut open_target, 0.5)),
        us(pct(&mut open_target, 0.99))
    );
    println!(
        "| the same `OpenTarget` through a target process alone, no helper (the hop: socketpair round trip, caller's connection in, executable out) | {} | {} |",
        us(pct(&mut hop, 0.5)),
        us(pct(&mut hop, 0.99))
    );
    println!(
        "| the same `OpenTarget` steps in-process, no helper (the floor, same run) | {} | {} |",
        us(pct(&mut open_direct, 0.5)),
        us(pct(&mut open_direct, 0.99))
    );
    println!(
        "| plain Unix socket: connect + 16-byte echo (the floor, same run) | {} | {} |",
        us(pct(&mut echo, 0.5)),
        us(pct(&mut echo, 0.99))
    );
}
