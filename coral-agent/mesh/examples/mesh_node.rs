//! One mesh node for tests: creates a TUN device directly (needs
//! CAP_NET_ADMIN), binds UDP and runs the WireGuard device until SIGTERM.
//! Prints `ready` once serving, and its counters when it ends.
//!
//! usage: mesh_node TUN_NAME MESH_IP LISTEN PRIVATE_HEX [PEER_HEX,PEER_IP,ENDPOINT|-]...

use coral_mesh::device::{Device, PeerConfig};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

fn hex32(s: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex key");
    }
    out
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (name, ip, listen, key) = (&args[0], &args[1], &args[2], &args[3]);
    let mut peers = Vec::new();
    for a in &args[4..] {
        let f: Vec<&str> = a.split(',').collect();
        peers.push(PeerConfig {
            public_key: hex32(f[0]),
            mesh_ip: f[1].parse().unwrap(),
            endpoint: (f[2] != "-").then(|| f[2].parse::<SocketAddr>().unwrap()),
            persistent_keepalive: Some(1),
        });
    }
    let params = coral_privhelper::protocol::TunParams {
        name: coral_privhelper::protocol::IfName::new(name).unwrap(),
        addr: ip.parse().unwrap(),
        prefix: 10,
        mtu: 1380,
    };
    let tun = coral_privhelper::tun::create(&params).expect("create TUN");
    let udp = tokio::net::UdpSocket::bind(listen.as_str())
        .await
        .expect("bind UDP");
    let device = Device::new(hex32(key), &peers, tun.fd, udp).expect("device");
    let stats = device.stats.clone();
    let stop = tokio_util::sync::CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        term.recv().await;
        s.cancel();
    });
    println!("ready");
    std::sync::Arc::new(device).run(stop).await.expect("device");
    println!(
        "stats tx={} rx={} spoofed_dropped={} no_route={}",
        stats.tx_packets.load(Ordering::Relaxed),
        stats.rx_packets.load(Ordering::Relaxed),
        stats.spoofed_dropped.load(Ordering::Relaxed),
        stats.no_route_dropped.load(Ordering::Relaxed)
    );
}
