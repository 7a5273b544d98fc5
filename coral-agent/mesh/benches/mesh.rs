//! Mesh figures (issue 3), in one run on two network namespaces joined by a
//! veth pair: TCP throughput (iperf3, 5 s) and ping RTT over
//! - the plain veth (the floor),
//! - Coral's userspace WireGuard device (boringtun over TUN),
//! - wireguard-go, Debian's userspace WireGuard (the peer).
//!
//! Needs root, iproute2, iperf3, wireguard-go, wireguard-tools, ping, and
//! the mesh_node example (`make bench` builds it). Writes its section of
//! docs/benchmarks.md.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn in_ns(ns: &str, args: &[&str]) -> String {
    let mut v = vec!["ip", "netns", "exec", ns];
    v.extend_from_slice(args);
    sh(&v)
}

fn spawn_in(ns: &str, args: &[&str], envs: &[(&str, &str)]) -> Child {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// iperf3 client in `a` against a server in `b` listening on `addr`: Mbit/s.
fn iperf(a: &str, b: &str, addr: &str) -> f64 {
    let mut server = spawn_in(b, &["iperf3", "-s", "-1", "-B", addr], &[]);
    std::thread::sleep(Duration::from_millis(500));
    let out = in_ns(a, &["iperf3", "-c", addr, "-t", "5", "-J"]);
    let _ = server.wait();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap()
        / 1e6
}

/// Average ping RTT in ms over 20 pings.
fn rtt(ns: &str, addr: &str) -> f64 {
    let out = in_ns(ns, &["ping", "-c", "20", "-i", "0.05", "-q", addr]);
    // rtt min/avg/max/mdev = 0.031/0.045/0.071/0.010 ms
    let line = out.lines().find(|l| l.contains("min/avg/max")).unwrap();
    line.split('=')
        .nth(1)
        .unwrap()
        .trim()
        .split('/')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

fn hex(b: &[u8; 32]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

struct Lab {
    ns: [String; 2],
    procs: Vec<Child>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = Command::new("kill").arg(p.id().to_string()).status();
            let _ = p.wait();
        }
        for ns in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("mesh: run with `make bench` (cargo bench) to measure");
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let node = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/mesh_node");
    assert!(
        node.exists(),
        "build the example first: cargo build -p coral-mesh --examples"
    );
    let id = std::process::id() % 100_000;
    let ns = [format!("coralb-a-{id}"), format!("coralb-b-{id}")];
    let mut lab = Lab {
        ns: ns.clone(),
        procs: Vec::new(),
    };
    let (a, b) = (ns[0].as_str(), ns[1].as_str());
    for n in &ns {
        sh(&["ip", "netns", "add", n]);
        sh(&["ip", "-n", n, "link", "set", "lo", "up"]);
    }
    let (x, y) = (format!("bx{id}"), format!("by{id}"));
    sh(&["ip", "link", "add", &x, "type", "veth", "peer", "name", &y]);
    sh(&["ip", "link", "set", &x, "netns", a]);
    sh(&["ip", "link", "set", &y, "netns", b]);
    sh(&["ip", "-n", a, "addr", "add", "192.0.2.1/30", "dev", &x]);
    sh(&["ip", "-n", b, "addr", "add", "192.0.2.2/30", "dev", &y]);
    sh(&["ip", "-n", a, "link", "set", &x, "up"]);
    sh(&["ip", "-n", b, "link", "set", &y, "up"]);

    // Coral's device.
    let (ka, pa) = coral_mesh::device::generate_keypair();
    let (kb, pb) = coral_mesh::device::generate_keypair();
    let n = node.to_str().unwrap();
    for (ns, addr, key, peer) in [
        (b, "100.64.0.1", kb, format!("{},100.64.0.2,-", hex(&pa))),
        (
            a,
            "100.64.0.2",
            ka,
            format!("{},100.64.0.1,192.0.2.2:51820", hex(&pb)),
        ),
    ] {
        let mut c = spawn_in(
            ns,
            &[n, "coral0", addr, "0.0.0.0:51820", &hex(&key), &peer],
            &[],
        );
        let mut line = String::new();
        BufReader::new(c.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
        lab.procs.push(c);
    }

    // wireguard-go, configured with wg(8), on other addresses and ports.
    let dir = tempfile::tempdir().unwrap();
    let mut keys = Vec::new();
    for side in ["a", "b"] {
        let private = sh(&["wg", "genkey"]);
        let path = dir.path().join(format!("{side}.key"));
        std::fs::write(&path, &private).unwrap();
        let mut pubkey = Command::new("wg")
            .arg("pubkey")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(pubkey.stdin.as_mut().unwrap(), private.as_bytes()).unwrap();
        let public = String::from_utf8(pubkey.wait_with_output().unwrap().stdout).unwrap();
        keys.push((path, public.trim().to_string()));
    }
    let env = [("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1")];
    // Distinct names: wireguard-go's control socket, /var/run/wireguard/NAME.sock,
    // is not per network namespace.
    for (ns, i, other, endpoint) in [(a, 0, 1, Some("192.0.2.2:51821")), (b, 1, 0, None)] {
        let ifname = format!("wgb{i}{id}");
        let c = spawn_in(ns, &["wireguard-go", "-f", &ifname], &env);
        lab.procs.push(c);
        std::thread::sleep(Duration::from_millis(500));
        let mut args = vec![
            "wg".to_string(),
            "set".into(),
            ifname.clone(),
            "private-key".into(),
            keys[i].0.display().to_string(),
            "listen-port".into(),
            "51821".into(),
            "peer".into(),
            keys[other].1.clone(),
            "allowed-ips".into(),
            format!("100.65.0.{}/32", other + 1),
        ];
        if let Some(e) = endpoint {
            args.extend([
                "endpoint".into(),
                e.into(),
                "persistent-keepalive".into(),
                "1".into(),
            ]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        in_ns(ns, &args);
        sh(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("100.65.0.{}/24", i + 1),
            "dev",
            &ifname,
        ]);
        sh(&["ip", "-n", ns, "link", "set", &ifname, "mtu", "1380", "up"]);
    }
    // Let both tunnels finish their handshakes.
    in_ns(a, &["ping", "-c", "2", "-W", "3", "100.64.0.1"]);
    in_ns(a, &["ping", "-c", "2", "-W", "3", "100.65.0.2"]);

    let rows = [
        (
            "plain veth (no tunnel)",
            iperf(a, b, "192.0.2.2"),
            rtt(a, "192.0.2.2"),
        ),
        (
            "Coral mesh (boringtun over TUN)",
            iperf(a, b, "100.64.0.1"),
            rtt(a, "100.64.0.1"),
        ),
        (
            "wireguard-go (Debian)",
            iperf(a, b, "100.65.0.2"),
            rtt(a, "100.65.0.2"),
        ),
    ];
    drop(lab);

    let mut section = format!(
        "## Mesh data path (issue 3)\n\n\
Reproduce: `make bench` (runs `cargo bench -p coral-mesh --bench mesh` after building the\n\
`mesh_node` example). Measured {date} on {cores} cores, build profile: {profile}. Two network\n\
namespaces joined by a veth pair; iperf3 TCP for 5 s, and the mean of 20 pings; MTU 1380 on both tunnels.\n\n\
| path | TCP throughput | ping RTT |\n|---|---|---|\n",
        date = humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        profile = if cfg!(debug_assertions) {
            "dev (unoptimised Rust)"
        } else {
            "release"
        },
    );
    for (name, mbit, ms) in rows {
        section.push_str(&format!("| {name} | {mbit:.0} Mbit/s | {ms:.3} ms |\n"));
    }
    print!("{section}");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/benchmarks.md");
    let (begin, end) = ("<!-- bench:mesh:begin -->", "<!-- bench:mesh:end -->");
    let doc = std::fs::read_to_string(&path).unwrap_or_default();
    let block = format!("{begin}\n{section}{end}");
    let new = match (doc.find(begin), doc.find(end)) {
        (Some(s), Some(e)) => format!("{}{block}{}", &doc[..s], &doc[e + end.len()..]),
        _ => format!("{}\n\n{block}\n", doc.trim_end()),
    };
    std::fs::write(&path, new).unwrap();
}
