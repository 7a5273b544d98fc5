//! Issue 3 (the WireGuard data path): three nodes in three network
//! namespaces joined by veth pairs, real TUN devices, boringtun over UDP.
//! A and C (agents) know B (the colony) and its endpoint; B learns theirs
//! from their handshakes. Traffic flows A <-> B and C <-> B, and C cannot
//! send as A.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

fn root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn hex(b: &[u8; 32]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn node_binary() -> std::path::PathBuf {
    // target/<profile>/deps/<test> -> target/<profile>/examples/mesh_node
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/mesh_node")
}

/// Namespaces and the processes in them, removed on drop.
struct Lab {
    ns: Vec<String>,
    nodes: Vec<Child>,
}

impl Lab {
    fn exec(&self, ns: &str, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .output()
            .unwrap()
    }

    fn start(&mut self, ns: &str, args: &[String]) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(node_binary())
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "node in {ns} did not start");
        self.nodes.push(child);
    }

    /// Stops every node (SIGTERM) and returns what each printed after ready.
    fn stop(&mut self) -> Vec<String> {
        self.nodes
            .drain(..)
            .map(|c| {
                let _ = Command::new("kill").arg(c.id().to_string()).status();
                let out = c.wait_with_output().unwrap();
                String::from_utf8_lossy(&out.stdout).to_string()
            })
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop();
        for ns in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

#[test]
fn peers_talk_over_the_mesh_and_cannot_send_as_each_other() {
    if std::env::var_os("CI").is_some() {
        assert!(root(), "CI runs as root: the mesh test must run");
        assert!(
            node_binary().exists(),
            "build examples too: cargo test --workspace"
        );
    }
    if !root() || !node_binary().exists() {
        eprintln!(
            "SKIP peers_talk_over_the_mesh...: needs root (netns, TUN) and the mesh_node example"
        );
        return;
    }
    let id = std::process::id() % 100_000;
    let ns: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|n| format!("coralt-{n}-{id}"))
        .collect();
    let mut lab = Lab {
        ns: ns.clone(),
        nodes: Vec::new(),
    };
    for n in &ns {
        ip(&["netns", "add", n]);
        ip(&["-n", n, "link", "set", "lo", "up"]);
    }
    // B is the hub: veth pairs A-B and C-B on TEST-NET-1 addresses that
    // exist only inside these namespaces.
    for (i, spoke) in [(1, &ns[0]), (2, &ns[2])] {
        let (x, y) = (format!("cx{i}{id}"), format!("cy{i}{id}"));
        ip(&["link", "add", &x, "type", "veth", "peer", "name", &y]);
        ip(&["link", "set", &x, "netns", spoke]);
        ip(&["link", "set", &y, "netns", &ns[1]]);
        let (sx, sy) = (
            format!("192.0.2.{}/30", i * 4 + 1),
            format!("192.0.2.{}/30", i * 4 + 2),
        );
        ip(&["-n", spoke, "addr", "add", &sx, "dev", &x]);
        ip(&["-n", &ns[1], "addr", "add", &sy, "dev", &y]);
        ip(&["-n", spoke, "link", "set", &x, "up"]);
        ip(&["-n", &ns[1], "link", "set", &y, "up"]);
    }
    let (ka, pa) = coral_mesh::device::generate_keypair();
    let (kb, pb) = coral_mesh::device::generate_keypair();
    let (kc, pc) = coral_mesh::device::generate_keypair();
    let node = |addr: &str, key: &[u8; 32], peers: Vec<String>| {
        let mut v = vec![
            "coral0".to_string(),
            addr.to_string(),
            "0.0.0.0:51820".to_string(),
            hex(key),
        ];
        v.extend(peers);
        v
    };
    // B knows A and C by key and mesh address only; endpoints are learned.
    lab.start(
        &ns[1],
        &node(
            "100.64.0.1",
            &kb,
            vec![
                format!("{},100.64.0.2,-", hex(&pa)),
                format!("{},100.64.0.3,-", hex(&pc)),
            ],
        ),
    );
    lab.start(
        &ns[0],
        &node(
            "100.64.0.2",
            &ka,
            vec![format!("{},100.64.0.1,192.0.2.6:51820", hex(&pb))],
        ),
    );
    lab.start(
        &ns[2],
        &node(
            "100.64.0.3",
            &kc,
            vec![format!("{},100.64.0.1,192.0.2.10:51820", hex(&pb))],
        ),
    );

    // A reaches B, and B (which learned A's endpoint) answers.
    let out = lab.exec(&ns[0], &["ping", "-c", "3", "-W", "3", "100.64.0.1"]);
    assert!(
        out.status.success(),
        "A cannot reach B: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // C reaches B with its own address.
    let out = lab.exec(&ns[2], &["ping", "-c", "2", "-W", "3", "100.64.0.1"]);
    assert!(
        out.status.success(),
        "C cannot reach B: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // C sends as A (A's address added to C's own TUN): B must drop it all.
    ip(&[
        "-n",
        &ns[2],
        "addr",
        "add",
        "100.64.0.2/32",
        "dev",
        "coral0",
    ]);
    let out = lab.exec(
        &ns[2],
        &[
            "ping",
            "-c",
            "3",
            "-W",
            "1",
            "-I",
            "100.64.0.2",
            "100.64.0.1",
        ],
    );
    assert!(
        !out.status.success(),
        "spoofed pings were answered: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    let printed = lab.stop();
    let b = &printed[0];
    let spoofed: u64 = b
        .split_whitespace()
        .find_map(|w| w.strip_prefix("spoofed_dropped="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no stats from B: {b}"));
    assert!(spoofed >= 3, "B dropped {spoofed} spoofed packets: {b}");
}
