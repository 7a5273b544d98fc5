//! Discovery end to end with the real `coral` binary: a colony publishes its
//! signed endpoints to `coral discovery start`, then moves (its WireGuard
//! port changes), so the endpoint in the agent's token and cache is stale.
//! An agent pointed at a rogue registry holding a forged record for the
//! colony refuses it and stays away; pointed at the real registry it
//! verifies the colony's signature, follows the record and is back on the
//! mesh. The registry itself refuses a record under another key and a
//! tampered one.
//!
//! Topology (only inside these namespaces): colony 10.203.1.1, agent
//! 10.203.1.2, on a veth pair. The agent's namespace drops UDP it did not
//! ask for (`ct state new`), like a host behind a stateful firewall: the
//! moved colony cannot reach out to it, so only discovery brings it back.

mod common;

use common::CORAL;
use common::netns::{Node, have, sh};
use coral_mesh::membership as ms;
use coral_proto::services::DiscoveryClient;
use coral_proto::{DiscoveryError, EndpointRecord, SignedEndpoints};
use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const COLONY_IP: &str = "10.203.1.1";
const AGENT_IP: &str = "10.203.1.2";
const COLONY_ID: &str = "cbench-disc";

/// Runs `f` on a thread that has entered network namespace `ns`.
fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let fd = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
            nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap()
    })
}

/// A discovery call from inside namespace `ns`.
fn discovery<T: Send>(ns: &str, addr: &str, f: impl AsyncFnOnce(DiscoveryClient) -> T + Send) -> T {
    in_ns(ns, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let s = tokio::net::TcpStream::connect(addr).await.unwrap();
            f(DiscoveryClient::new(Default::default(), coral_proto::local::framed(s)).spawn()).await
        })
    })
}

fn publish(ns: &str, addr: &str, rec: SignedEndpoints) -> Result<(), DiscoveryError> {
    discovery(ns, addr, async |c| {
        c.publish(tarpc::context::current(), rec).await.unwrap()
    })
}

fn lookup(ns: &str, addr: &str) -> Option<SignedEndpoints> {
    discovery(ns, addr, async |c| {
        c.lookup(tarpc::context::current(), COLONY_ID.into())
            .await
            .unwrap()
    })
}

/// Namespaces, nodes and registries; all removed on drop.
struct Lab {
    c: Node,
    a: Node,
    registries: Vec<Child>,
    _tmp: tempfile::TempDir,
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.a.stop("agent");
        self.c.stop("colony");
        for r in &mut self.registries {
            let _ = r.kill();
            let _ = r.wait();
        }
        for ns in [&self.c.ns, &self.a.ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

impl Lab {
    fn build() -> Lab {
        let id = format!("{}", std::process::id() % 100_000);
        let tmp = tempfile::tempdir().unwrap();
        let lab = Lab {
            c: Node {
                ns: format!("cbench-dc-{id}"),
                dir: tmp.path().join("c"),
            },
            a: Node {
                ns: format!("cbench-da-{id}"),
                dir: tmp.path().join("a"),
            },
            registries: Vec::new(),
            _tmp: tmp,
        };
        let (c, a) = (lab.c.ns.as_str(), lab.a.ns.as_str());
        for ns in [c, a] {
            sh(&["ip", "netns", "add", ns]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        let (x, y) = (format!("cdx{id}"), format!("cdy{id}"));
        sh(&["ip", "link", "add", &x, "type", "veth", "peer", "name", &y]);
        sh(&["ip", "link", "set", &x, "netns", c]);
        sh(&["ip", "link", "set", &y, "netns", a]);
        sh(&[
            "ip",
            "-n",
            c,
            "addr",
            "add",
            &format!("{COLONY_IP}/30"),
            "dev",
            &x,
        ]);
        sh(&[
            "ip",
            "-n",
            a,
            "addr",
            "add",
            &format!("{AGENT_IP}/30"),
            "dev",
            &y,
        ]);
        sh(&["ip", "-n", c, "link", "set", &x, "up"]);
        sh(&["ip", "-n", a, "link", "set", &y, "up"]);
        sh(&[
            "ip",
            "netns",
            "exec",
            a,
            "nft",
            "add table inet cbench; add chain inet cbench in { type filter hook input priority 0; }; add rule inet cbench in meta l4proto udp ct state new drop",
        ]);
        lab
    }

    /// `coral discovery start` in the colony's namespace, once it answers.
    fn registry(&mut self, addr: &str) {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.c.ns, CORAL, "discovery", "start"])
            .args(["--listen", addr])
            .env("CORAL_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        self.registries.push(child);
        let t0 = Instant::now();
        while in_ns(&self.c.ns, || std::net::TcpStream::connect(addr).is_err()) {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{addr} never answered"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn colony_config(mesh_port: u16, helper: &str) -> String {
    format!(
        r#"
[colony]
colony_id = "{COLONY_ID}"
listen = "0.0.0.0:9000"
heartbeat_interval = "200ms"
agent_timeout = "2s"

[colony.mesh]
listen = "{COLONY_IP}:{mesh_port}"
discovery = "{COLONY_IP}:41580"
helper_socket = "{helper}"
"#
    )
}

fn agent_config(discovery: &str, helper: &str) -> String {
    format!(
        r#"
[agent]
name = "d1"
probe_interval = "200ms"
probe_timeout = "150ms"

[agent.otlp]
grpc_listen = "127.0.0.1:0"
http_listen = "127.0.0.1:0"

[agent.mesh]
keepalive = "1s"
discovery = "{discovery}"
helper_socket = "{helper}"
"#
    )
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_agent_finds_a_moved_colony_through_discovery_and_refuses_a_forged_record() {
    let ci = std::env::var_os("CI").is_some();
    let missing: Vec<&str> = ["ip", "nft"].into_iter().filter(|c| !have(c)).collect();
    if !nix::unistd::geteuid().is_root() || !missing.is_empty() {
        assert!(
            !ci,
            "CI runs as root with packaging/dev/deps.sh: this test must run (missing {missing:?})"
        );
        eprintln!("SKIP discovery: needs root (netns, TUN) and {missing:?}");
        return;
    }
    let mut lab = Lab::build();
    let helper = lab._tmp.path().join("no-helper.sock"); // direct TUN (root)
    let helper = helper.to_str().unwrap().to_string();
    let (real, rogue) = (format!("{COLONY_IP}:41580"), format!("{COLONY_IP}:41581"));
    lab.registry(&real);
    lab.registry(&rogue);
    let cns = lab.c.ns.clone();

    // An attacker publishes a record for the colony, under its own key, to
    // the rogue registry first (the registry pins that key).
    let attacker = ms::signing_key(&[7; 32]);
    let forged = |at: i64| {
        ms::sign_endpoints(
            &attacker,
            &EndpointRecord {
                colony_id: COLONY_ID.into(),
                endpoints: vec![format!("{COLONY_IP}:51899")],
                issued_at_ms: at,
            },
        )
    };
    publish(&cns, &rogue, forged(coral_proto::now_ms())).unwrap();

    // The colony starts and publishes to the real registry.
    lab.c.write_config(&colony_config(51820, &helper));
    lab.c.ok(&["colony", "start", "--daemon"]);
    let token = serde_json::from_str::<Value>(&lab.c.ok(&["colony", "token", "create", "--json"]))
        .unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let t = ms::decode_token(&token).unwrap();
    assert_eq!(t.endpoints, vec![format!("{COLONY_IP}:51820")]);
    wait_until("the colony's record", Duration::from_secs(10), || {
        lookup(&cns, &real).is_some()
    });
    let genuine = lookup(&cns, &real).unwrap();
    let body = ms::verify_endpoints(&t.colony_sign_key, &genuine).unwrap();
    assert_eq!(body.endpoints, t.endpoints);

    // The real registry refuses a record under another key and a tampered
    // one, and keeps the colony's.
    assert_eq!(
        publish(&cns, &real, forged(coral_proto::now_ms() + 1000)),
        Err(DiscoveryError::KeyMismatch(COLONY_ID.into()))
    );
    let mut tampered = genuine.clone();
    tampered.record = tampered.record.replace(":51820", ":51899");
    assert_ne!(tampered.record, genuine.record);
    assert_eq!(
        publish(&cns, &real, tampered),
        Err(DiscoveryError::BadSignature)
    );
    assert_eq!(lookup(&cns, &real).unwrap().record, genuine.record);

    // The agent joins with the token; it asks the rogue registry when the
    // colony is unreachable.
    lab.a.write_config(&agent_config(&rogue, &helper));
    lab.a.ok(&["agent", "start", "--daemon", "--join", &token]);
    wait_until("the agent on the mesh", Duration::from_secs(15), || {
        lab.a.connected()
    });

    // The colony moves to another port: the token's endpoint and the
    // agent's cached one are stale.
    lab.c.stop("colony");
    lab.c.write_config(&colony_config(51830, &helper));
    lab.c.ok(&["colony", "start", "--daemon"]);
    wait_until("the moved colony's record", Duration::from_secs(10), || {
        lookup(&cns, &real).is_some_and(|r| r.record.contains(":51830"))
    });

    // The rogue registry's forged record is refused: the agent stays away.
    wait_until(
        "the agent to refuse the forged record",
        Duration::from_secs(60),
        || {
            lab.a.log("agent").lines().any(|l| {
                l.contains("discovery lookup failed")
                    && l.contains("bad signature on the endpoint record")
            })
        },
    );
    assert!(!lab.a.connected(), "the agent reached the moved colony");
    assert!(
        !lab.a
            .log("agent")
            .contains("colony endpoint from discovery"),
        "the agent followed a forged record"
    );

    // Pointed at the real registry, it verifies the colony's record and
    // follows it to the new port.
    lab.a.stop("agent");
    lab.a.write_config(&agent_config(&real, &helper));
    lab.a.ok(&["agent", "start", "--daemon"]);
    wait_until(
        "the agent back on the mesh through discovery",
        Duration::from_secs(60),
        || lab.a.connected(),
    );
    let log = lab.a.log("agent");
    assert!(
        log.lines()
            .any(|l| l.contains("colony endpoint from discovery")
                && l.contains(&format!("{COLONY_IP}:51830"))),
        "agent log:\n{log}"
    );
    let members: Value = serde_json::from_str(&lab.c.ok(&["colony", "agents", "--json"])).unwrap();
    assert!(
        members
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "d1" && m["online"] == true),
        "{members:#}"
    );
    // The cached membership now holds the discovered endpoint.
    let cached = std::fs::read_to_string(coral_agent::join::path(
        &lab.a.dir.join("state/coral/agent"),
    ))
    .unwrap();
    assert!(cached.contains(":51830"), "{cached}");
}
