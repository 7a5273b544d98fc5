//! Issue 3 (the mesh, end to end with the real `coral` binary): a colony in
//! one network namespace, three agents in others, one of them behind a NAT
//! namespace (nftables masquerade). All join with tokens and talk tarpc over
//! the mesh; a spoofed source is dropped; bad tokens get one clear line; the
//! agents survive a colony restart (and one restarts while the colony is
//! down); one agent is revoked.
//!
//! Topology (addresses exist only inside these namespaces):
//!
//! ```text
//!   a1 (10.201.1.2) ──┐
//!   a2 (10.201.2.2) ──┤ colony: 10.201.0.1 on lo, .1 of each /30
//!   nat (10.201.3.2) ─┘
//!    └─ a3 (10.201.4.2, default route via nat, masqueraded)
//! ```

mod common;

use common::netns::{Node, have, sh};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const COLONY_EP: &str = "10.201.0.1:51820";

fn root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Namespaces and the nodes in them; everything is removed on drop.
struct Lab {
    namespaces: Vec<String>,
    nodes: Vec<Node>,
    _tmp: tempfile::TempDir,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for n in &self.nodes {
            n.stop_all();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn ns_ip(ns: &str, args: &[&str]) {
    let mut v = vec!["ip", "-n", ns];
    v.extend_from_slice(args);
    sh(&v);
}

fn veth(lab_id: &str, n: u8, a: &str, a_addr: &str, b: &str, b_addr: &str) {
    let (x, y) = (format!("cmx{n}{lab_id}"), format!("cmy{n}{lab_id}"));
    sh(&["ip", "link", "add", &x, "type", "veth", "peer", "name", &y]);
    sh(&["ip", "link", "set", &x, "netns", a]);
    sh(&["ip", "link", "set", &y, "netns", b]);
    ns_ip(a, &["addr", "add", a_addr, "dev", &x]);
    ns_ip(b, &["addr", "add", b_addr, "dev", &y]);
    ns_ip(a, &["link", "set", &x, "up"]);
    ns_ip(b, &["link", "set", &y, "up"]);
}

fn colony_config(helper: &Path) -> String {
    format!(
        r#"
[colony]
colony_id = "mesh-test"
listen = "0.0.0.0:9000"
heartbeat_interval = "200ms"
agent_timeout = "2s"

[agent]
name = "local"
probe_interval = "200ms"
probe_timeout = "150ms"

[colony.mesh]
# Bound to the advertised address: replies must leave from the address the
# NAT mapped, or its conntrack drops them.
listen = "{COLONY_EP}"
helper_socket = "{}"
"#,
        helper.display()
    )
}

fn agent_config(name: &str, helper: &Path) -> String {
    format!(
        r#"
[agent]
name = "{name}"
probe_interval = "200ms"
probe_timeout = "150ms"

[agent.otlp]
grpc_listen = "127.0.0.1:0"
http_listen = "127.0.0.1:0"

[agent.mesh]
keepalive = "1s"
helper_socket = "{}"
"#,
        helper.display()
    )
}

fn build_lab() -> Lab {
    let id = format!("{}", std::process::id() % 100_000);
    let names = ["c", "a1", "a2", "nat", "a3"];
    let namespaces: Vec<String> = names.iter().map(|n| format!("cmesh-{n}-{id}")).collect();
    let tmp = tempfile::tempdir().unwrap();
    let mut lab = Lab {
        namespaces: namespaces.clone(),
        nodes: Vec::new(),
        _tmp: tmp,
    };
    for ns in &namespaces {
        sh(&["ip", "netns", "add", ns]);
        ns_ip(ns, &["link", "set", "lo", "up"]);
    }
    let [c, a1, a2, nat, a3] = [0, 1, 2, 3, 4].map(|i| namespaces[i].as_str());
    ns_ip(c, &["addr", "add", "10.201.0.1/32", "dev", "lo"]);
    veth(&id, 1, c, "10.201.1.1/30", a1, "10.201.1.2/30");
    veth(&id, 2, c, "10.201.2.1/30", a2, "10.201.2.2/30");
    veth(&id, 3, c, "10.201.3.1/30", nat, "10.201.3.2/30");
    veth(&id, 4, nat, "10.201.4.1/30", a3, "10.201.4.2/30");
    ns_ip(a1, &["route", "add", "10.201.0.1/32", "via", "10.201.1.1"]);
    ns_ip(a2, &["route", "add", "10.201.0.1/32", "via", "10.201.2.1"]);
    ns_ip(nat, &["route", "add", "10.201.0.1/32", "via", "10.201.3.1"]);
    ns_ip(a3, &["route", "add", "default", "via", "10.201.4.1"]);
    // The NAT: forward and masquerade everything a3 sends to the colony.
    // The colony has no route back to 10.201.4.0/30: only the NAT's
    // mapping (kept open by persistent keepalive) gets packets to a3.
    sh(&[
        "ip",
        "netns",
        "exec",
        nat,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ]);
    sh(&[
        "ip",
        "netns",
        "exec",
        nat,
        "nft",
        "add table ip cmesh; add chain ip cmesh post { type nat hook postrouting priority 100; }; add rule ip cmesh post oifname \"cmy3*\" masquerade",
    ]);
    let base = lab._tmp.path().to_path_buf();
    let helper = base.join("no-helper.sock"); // direct TUN creation (root)
    // a4 lives in the NAT namespace (a namespace of its own, so its mesh
    // routes do not mix with another agent's).
    for (i, name) in names.iter().enumerate() {
        let name = if *name == "nat" { "a4" } else { name };
        let node = Node {
            ns: namespaces[i].clone(),
            dir: base.join(name),
        };
        node.write_config(&if name == "c" {
            colony_config(&helper)
        } else {
            agent_config(name, &helper)
        });
        lab.nodes.push(node);
    }
    lab
}

fn members(colony: &Node) -> Vec<Value> {
    colony
        .json(&["colony", "agents", "--json"])
        .as_array()
        .cloned()
        .unwrap()
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if f() {
            return t0.elapsed();
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

fn token(colony: &Node, extra: &[&str]) -> String {
    let mut args = vec!["colony", "token", "create", "--json"];
    args.extend_from_slice(extra);
    colony.json(&args)["token"].as_str().unwrap().to_string()
}

fn connected(agent: &Node) -> bool {
    let out = agent.run(&["agent", "status", "--json"]);
    out.status.success()
        && serde_json::from_slice::<Value>(&out.stdout)
            .is_ok_and(|s| s["colony"]["state"] == "connected")
}

/// `coral agent start --join` must fail with one line containing `want`.
fn join_fails(agent: &Node, token: &str, want: &str, code: i32) {
    let out = agent.run(&["agent", "start", "--daemon", "--join", token]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "join with a bad token succeeded");
    assert_eq!(out.status.code(), Some(code), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "want one error line, got: {err}");
    assert!(lines[0].contains(want), "want '{want}' in: {err}");
}

#[test]
fn agents_join_with_tokens_talk_over_the_mesh_survive_restarts_and_are_revoked() {
    let ci = std::env::var_os("CI").is_some();
    let missing: Vec<&str> = ["ip", "nft", "python3"]
        .into_iter()
        .filter(|c| !have(c))
        .collect();
    if !root() || !missing.is_empty() {
        assert!(
            !ci,
            "CI runs as root with packaging/dev/deps.sh: this test must run (missing {missing:?})"
        );
        eprintln!("SKIP mesh_join: needs root (netns, TUN) and {missing:?}");
        return;
    }
    let lab = build_lab();
    // Nodes are in namespace order: c, a1, a2, a4 (in nat), a3.
    let [colony, a1, a2, a4, a3] = [0, 1, 2, 3, 4].map(|i| &lab.nodes[i]);

    colony.ok(&["colony", "start", "--daemon"]);
    let status = colony.json(&["colony", "status", "--json"]);
    let mesh = &status["mesh"];
    let colony_ip = mesh["mesh_ip"].as_str().unwrap().to_string();
    assert!(colony_ip.starts_with("100."), "{mesh}");
    assert_eq!(mesh["tun_path"], "direct (CAP_NET_ADMIN)");
    // No endpoints configured: the specific listen address is advertised.
    assert_eq!(mesh["endpoints"][0], COLONY_EP);
    // The control plane is on the mesh address only.
    assert_eq!(
        status["rpc_addr"].as_str().unwrap(),
        format!("{colony_ip}:9000")
    );

    // Journey 1: an agent of the same user on the colony's machine joins
    // without a token, over the local socket.
    colony.ok(&["agent", "start", "--daemon"]);
    wait_until("the local agent", Duration::from_secs(5), || {
        connected(colony)
    });
    let s = colony.json(&["agent", "status", "--json"]);
    assert!(
        s["colony"]["addr"].as_str().unwrap().starts_with("unix:"),
        "{s}"
    );
    assert!(s["mesh_ip"].is_null());
    let local = members(colony);
    assert_eq!(local.len(), 1);
    assert!(local[0]["mesh_ip"].is_null() && local[0]["name"] == "local");

    // Bad tokens: one clear line each, nothing joined.
    // Issue 16 item 13: a refused token exited 1 (now EX_NOPERM, 77), and
    // the wrong-colony reply named the colony to an unauthenticated caller.
    join_fails(a1, "hello", "not a Coral join token", 64);
    join_fails(a1, "coral-join-v1.AAAA", "damaged", 64);
    let short = token(colony, &["--ttl", "1s"]);
    std::thread::sleep(Duration::from_millis(1500));
    join_fails(a1, &short, "expired", 77);
    let mut other = coral_mesh::membership::decode_token(&token(colony, &[])).unwrap();
    let real_id = other.colony_id.clone();
    other.colony_id = "other-colony".into();
    let out = a1.run(&[
        "agent",
        "start",
        "--daemon",
        "--join",
        &coral_mesh::membership::encode_token(&other),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "{err}");
    assert!(err.contains("not 'other-colony'"), "{err}");
    assert!(
        !err.contains(&format!("'{real_id}'")),
        "the colony named itself to an unauthenticated caller: {err}"
    );
    assert_eq!(members(colony).len(), 1);

    // Three agents join, one behind the NAT; join time = token redeemed to
    // the first tarpc call answered over the mesh.
    let mut join_times = Vec::new();
    let mut tokens = Vec::new();
    for agent in [a1, a2, a3] {
        let t = token(colony, &[]);
        let t0 = Instant::now();
        agent.ok(&["agent", "start", "--daemon", "--join", &t]);
        let t1 = Instant::now();
        while !connected(agent) {
            assert!(
                t1.elapsed() < Duration::from_secs(10),
                "the agent did not connect over the mesh:\nagent log:\n{}\ncolony log:\n{}",
                agent.log("agent"),
                colony.log("colony")
            );
            std::thread::sleep(Duration::from_millis(25));
        }
        join_times.push(t0.elapsed());
        tokens.push(t);
    }
    eprintln!("join times: {join_times:?}");
    // A used token is refused.
    join_fails(a4, &tokens[0], "already used", 77);

    let ms = members(colony);
    assert_eq!(ms.len(), 4, "{ms:#?}");
    let ip_of = |name: &str| -> String {
        members(colony)
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("{name} not a member"))["mesh_ip"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let ips: Vec<String> = ["a1", "a2", "a3"].iter().map(|n| ip_of(n)).collect();
    let mut distinct = ips.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "overlapping addresses {ips:?}");
    for (agent, ip) in [a1, a2, a3].iter().zip(&ips) {
        let s = agent.json(&["agent", "status", "--json"]);
        assert_eq!(s["mesh_ip"].as_str(), Some(ip.as_str()));
        assert_eq!(s["colony"]["addr"], format!("{colony_ip}:9000"));
    }
    // a3 is seen from the NAT's address, not its own.
    wait_until("a3's NATed endpoint", Duration::from_secs(5), || {
        members(colony).iter().any(|m| {
            m["name"] == "a3"
                && m["endpoint"]
                    .as_str()
                    .is_some_and(|e| e.starts_with("10.201.3.2:"))
        })
    });
    assert!(members(colony).iter().all(|m| m["online"] == true));

    // One agent cannot send as another: a2 takes a1's address on its own
    // TUN and connects from it; the colony's device drops every packet.
    let py = |ns: &str, src: &str| {
        Command::new("ip")
            .args(["netns", "exec", ns, "python3", "-c"])
            .arg(format!(
                "import socket,sys\ns=socket.socket()\ns.settimeout(2)\ns.bind(('{src}',0))\ntry:\n s.connect(('{colony_ip}',9000)); print('connected')\nexcept Exception as e:\n print('failed', e); sys.exit(1)"
            ))
            .output()
            .unwrap()
    };
    let honest = py(&a1.ns, &ips[0]);
    assert!(
        honest.status.success(),
        "a1 cannot reach the colony: {honest:?}"
    );
    let a2_if = a2.json(&["agent", "status", "--json"])["mesh_interface"]
        .as_str()
        .unwrap()
        .to_string();
    ns_ip(
        &a2.ns,
        &["addr", "add", &format!("{}/32", ips[0]), "dev", &a2_if],
    );
    let spoofed = py(&a2.ns, &ips[0]);
    assert!(
        !spoofed.status.success(),
        "a2 connected to the colony as a1: {}",
        String::from_utf8_lossy(&spoofed.stdout)
    );
    ns_ip(
        &a2.ns,
        &["addr", "del", &format!("{}/32", ips[0]), "dev", &a2_if],
    );

    // A colony restart tears down no agent; they are back within 5 s.
    let agent_pids: Vec<i32> = [a1, a2, a3]
        .iter()
        .map(|a| a.pid("agent").unwrap())
        .collect();
    colony.ok(&["colony", "stop"]);
    let t0 = Instant::now();
    colony.ok(&["colony", "start", "--daemon"]);
    let restarted_at = coral_proto::now_ms();
    wait_until(
        "all agents back after a colony restart",
        Duration::from_secs(5),
        || {
            let ms = members(colony);
            ms.len() == 4
                && ms
                    .iter()
                    .all(|m| m["last_seen_ms"].as_i64().is_some_and(|t| t > restarted_at))
        },
    );
    let recovery = t0.elapsed();
    eprintln!("recovery after colony restart: {recovery:?}");
    for (a, pid) in [a1, a2, a3].iter().zip(&agent_pids) {
        assert_eq!(a.pid("agent"), Some(*pid), "an agent restarted");
    }
    assert_eq!(ip_of("a1"), ips[0], "addresses are stable across restarts");

    // An agent restarted while the colony is down resumes from its cached,
    // colony-signed peer config.
    colony.ok(&["colony", "stop"]);
    a1.ok(&["agent", "stop"]);
    a1.ok(&["agent", "start", "--daemon"]);
    assert!(!connected(a1));
    colony.ok(&["colony", "start", "--daemon"]);
    wait_until("a1 back from its cache", Duration::from_secs(5), || {
        connected(a1)
    });
    assert_eq!(
        a1.json(&["agent", "status", "--json"])["mesh_ip"].as_str(),
        Some(ips[0].as_str())
    );

    // Revoking a2 removes it within seconds; the others stay.
    let out = colony.ok(&["colony", "revoke", "a2"]);
    assert!(out.contains("Revoked a2"), "{out}");
    assert!(members(colony).iter().all(|m| m["name"] != "a2"));
    wait_until("a2 to lose the colony", Duration::from_secs(5), || {
        !connected(a2)
    });
    std::thread::sleep(Duration::from_secs(1));
    assert!(!connected(a2), "a revoked agent reconnected");
    let spoofed = py(&a2.ns, &ips[1]);
    assert!(
        !spoofed.status.success(),
        "a revoked agent still reaches the colony"
    );
    wait_until("a1 and a3 online", Duration::from_secs(5), || {
        let ms = members(colony);
        ms.len() == 3 && ms.iter().all(|m| m["online"] == true)
    });
    assert!(connected(a1) && connected(a3));
    // Its address is retired, never handed out again.
    let t = token(colony, &[]);
    a4.ok(&["agent", "start", "--daemon", "--join", &t]);
    wait_until("a4 to connect", Duration::from_secs(10), || connected(a4));
    let a4_ip = ip_of("a4");
    assert!(!ips.contains(&a4_ip), "{a4_ip} was reused");
}
