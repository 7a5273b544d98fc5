//! A userspace WireGuard device: boringtun's Noise state machines over a TUN
//! fd and one UDP socket, for the colony/agent mesh (addresses from
//! 100.64.0.0/10, one /32 per node).
//!
//! Peers are found by the receiver index of data and response packets, or,
//! for a handshake initiation, by the initiator's static key. Every decrypted
//! packet must come from the /32 of the peer that sent it (the device-wide
//! allowed-IPs check): a peer cannot send as another, and such packets are
//! dropped and counted. A peer's endpoint is learned from its authenticated
//! packets, so nodes behind NAT keep working (with persistent keepalive).
//!
//! Peers can be added and removed while the device runs (the colony adds an
//! agent when it joins and removes it when it is revoked). A removed peer's
//! slot is never reused, so a stale receiver index cannot reach a new peer.

use boringtun::noise::{Packet, Tunn, TunnResult, handshake::parse_handshake_anon};
use boringtun::x25519::{PublicKey, StaticSecret};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

/// Largest packet handled (TUN MTU plus WireGuard overhead, with room).
const BUF: usize = 65_536;
const TIMER_TICK: Duration = Duration::from_millis(250);

#[derive(Debug, Clone)]
pub struct PeerConfig {
    pub public_key: [u8; 32],
    /// The peer's mesh address: the only source accepted from it.
    pub mesh_ip: Ipv4Addr,
    /// Where to reach it first; learned from its packets if unset.
    pub endpoint: Option<SocketAddr>,
    pub persistent_keepalive: Option<u16>,
}

#[derive(Debug, Default)]
pub struct Stats {
    pub tx_packets: AtomicU64,
    pub rx_packets: AtomicU64,
    /// Decrypted packets whose source was not the sending peer's address.
    pub spoofed_dropped: AtomicU64,
    /// TUN packets to an address no peer owns.
    pub no_route_dropped: AtomicU64,
}

struct Peer {
    mesh_ip: Ipv4Addr,
    public_key: [u8; 32],
    tunn: Mutex<Tunn>,
    endpoint: Mutex<Option<SocketAddr>>,
}

/// A peer as the device sees it now.
#[derive(Debug, Clone)]
pub struct PeerStatus {
    pub public_key: [u8; 32],
    pub mesh_ip: Ipv4Addr,
    pub endpoint: Option<SocketAddr>,
    /// Time since the last completed handshake.
    pub since_handshake: Option<Duration>,
}

pub struct Device {
    private: StaticSecret,
    public: PublicKey,
    /// Indexed by slot (the high 24 bits of boringtun's receiver index);
    /// `None` once removed.
    peers: RwLock<Vec<Option<Arc<Peer>>>>,
    tun: AsyncFd<OwnedFd>,
    udp: UdpSocket,
    pub stats: Arc<Stats>,
    started: Instant,
}

impl Device {
    /// `tun` is a TUN fd (IFF_TUN | IFF_NO_PI), made non-blocking here.
    pub fn new(
        private_key: [u8; 32],
        peers: &[PeerConfig],
        tun: OwnedFd,
        udp: UdpSocket,
    ) -> io::Result<Device> {
        use nix::fcntl::{FcntlArg, OFlag, fcntl};
        let flags = OFlag::from_bits_truncate(fcntl(tun.as_fd(), FcntlArg::F_GETFL)?);
        fcntl(tun.as_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        let private = StaticSecret::from(private_key);
        let public = PublicKey::from(&private);
        // `AsyncFd::new` is deprecated because a type's raw fd may change
        // while registered; an `OwnedFd`'s fd is fixed for its lifetime, so
        // the requirement behind the unsafe `register` holds.
        #[allow(deprecated)]
        let tun = AsyncFd::new(tun)?;
        let device = Device {
            private,
            public,
            peers: RwLock::new(Vec::new()),
            tun,
            udp,
            stats: Arc::new(Stats::default()),
            started: Instant::now(),
        };
        for p in peers {
            device.add_peer(p);
        }
        Ok(device)
    }

    /// This node's public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.public.to_bytes()
    }

    /// The UDP address WireGuard listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.udp.local_addr()
    }

    /// Adds a peer, replacing any peer with the same key or mesh address.
    pub fn add_peer(&self, p: &PeerConfig) {
        let mut peers = self.peers.write().expect("peers lock");
        for slot in peers.iter_mut() {
            if slot
                .as_ref()
                .is_some_and(|q| q.public_key == p.public_key || q.mesh_ip == p.mesh_ip)
            {
                *slot = None;
            }
        }
        let index = peers.len() as u32;
        peers.push(Some(Arc::new(Peer {
            mesh_ip: p.mesh_ip,
            public_key: p.public_key,
            tunn: Mutex::new(Tunn::new(
                self.private.clone(),
                PublicKey::from(p.public_key),
                None,
                p.persistent_keepalive,
                index,
                None,
            )),
            endpoint: Mutex::new(p.endpoint),
        })));
    }

    /// Removes the peer with this key; its packets are dropped from now on.
    pub fn remove_peer(&self, public_key: &[u8; 32]) -> bool {
        let mut removed = false;
        for slot in self.peers.write().expect("peers lock").iter_mut() {
            if slot.as_ref().is_some_and(|q| &q.public_key == public_key) {
                *slot = None;
                removed = true;
            }
        }
        removed
    }

    pub fn peer_status(&self) -> Vec<PeerStatus> {
        self.peers
            .read()
            .expect("peers lock")
            .iter()
            .flatten()
            .map(|p| PeerStatus {
                public_key: p.public_key,
                mesh_ip: p.mesh_ip,
                endpoint: *p.endpoint.lock().expect("endpoint lock"),
                since_handshake: p.tunn.lock().expect("tunn lock").stats().0,
            })
            .collect()
    }

    /// How long the device has run.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Starts a handshake now with every peer whose endpoint is known (a
    /// restarted colony does this so its agents need not wait for their
    /// own rekey timers; an agent that lost its colony link does it so a
    /// restarted colony gets a fresh session at once). `force` starts one
    /// even if a handshake is already under way.
    pub async fn initiate_handshakes(&self, force: bool) {
        let mut out = vec![0u8; 256];
        let mut due = Vec::new();
        for peer in self.peers_snapshot() {
            let endpoint = *peer.endpoint.lock().expect("endpoint lock");
            let Some(to) = endpoint else { continue };
            if let TunnResult::WriteToNetwork(p) = peer
                .tunn
                .lock()
                .expect("tunn lock")
                .format_handshake_initiation(&mut out, force)
            {
                due.push((p.to_vec(), to));
            }
        }
        self.send(due).await;
    }

    fn peers_snapshot(&self) -> Vec<Arc<Peer>> {
        self.peers
            .read()
            .expect("peers lock")
            .iter()
            .flatten()
            .cloned()
            .collect()
    }

    /// Moves packets until `shutdown` is cancelled.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> io::Result<()> {
        tokio::select! {
            r = self.clone().tun_to_udp() => r,
            r = self.clone().udp_to_tun() => r,
            r = self.clone().timers() => r,
            _ = shutdown.cancelled() => Ok(()),
        }
    }

    async fn send(&self, packets: Vec<(Vec<u8>, SocketAddr)>) {
        for (p, to) in packets {
            if let Err(e) = self.udp.send_to(&p, to).await {
                tracing::debug!(error = %e, %to, "mesh send failed");
            }
        }
    }

    fn write_tun(&self, packet: &[u8]) {
        // A full TUN queue drops the packet, as a NIC would.
        let _ = nix::unistd::write(self.tun.get_ref(), packet);
    }

    async fn tun_to_udp(self: Arc<Self>) -> io::Result<()> {
        let mut buf = vec![0u8; BUF];
        let mut out = vec![0u8; BUF];
        loop {
            let mut guard = self.tun.readable().await?;
            let n = match guard
                .try_io(|fd| nix::unistd::read(fd.get_ref(), &mut buf).map_err(io::Error::from))
            {
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            };
            if n < 20 || buf[0] >> 4 != 4 {
                continue; // only IPv4 rides the mesh
            }
            let dst = Ipv4Addr::new(buf[16], buf[17], buf[18], buf[19]);
            let found = self
                .peers
                .read()
                .expect("peers lock")
                .iter()
                .flatten()
                .find(|p| p.mesh_ip == dst)
                .cloned();
            let Some(peer) = found else {
                self.stats.no_route_dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let endpoint = *peer.endpoint.lock().expect("endpoint lock");
            let packet = match peer
                .tunn
                .lock()
                .expect("tunn lock")
                .encapsulate(&buf[..n], &mut out)
            {
                TunnResult::WriteToNetwork(p) => Some(p.to_vec()),
                _ => None, // queued until the handshake completes
            };
            if let (Some(p), Some(to)) = (packet, endpoint) {
                self.stats.tx_packets.fetch_add(1, Ordering::Relaxed);
                self.send(vec![(p, to)]).await;
            }
        }
    }

    /// The peer a datagram belongs to.
    fn peer_for(&self, datagram: &[u8]) -> Option<Arc<Peer>> {
        let slot = |idx: u32| {
            self.peers
                .read()
                .expect("peers lock")
                .get((idx >> 8) as usize)
                .cloned()
                .flatten()
        };
        match Tunn::parse_incoming_packet(datagram).ok()? {
            Packet::HandshakeInit(h) => {
                let half = parse_handshake_anon(&self.private, &self.public, &h).ok()?;
                self.peers
                    .read()
                    .expect("peers lock")
                    .iter()
                    .flatten()
                    .find(|p| p.public_key == half.peer_static_public)
                    .cloned()
            }
            Packet::HandshakeResponse(p) => slot(p.receiver_idx),
            Packet::PacketCookieReply(p) => slot(p.receiver_idx),
            Packet::PacketData(p) => slot(p.receiver_idx),
        }
    }

    async fn udp_to_tun(self: Arc<Self>) -> io::Result<()> {
        let mut buf = vec![0u8; BUF];
        let mut out = vec![0u8; BUF];
        loop {
            let (n, from) = self.udp.recv_from(&mut buf).await?;
            let Some(peer) = self.peer_for(&buf[..n]) else {
                continue; // not for us: no answer, no state
            };
            let mut replies = Vec::new();
            let mut authenticated = false;
            {
                let mut tunn = peer.tunn.lock().expect("tunn lock");
                let mut result = tunn.decapsulate(Some(from.ip()), &buf[..n], &mut out);
                loop {
                    match result {
                        TunnResult::WriteToNetwork(p) => {
                            authenticated = true;
                            replies.push((p.to_vec(), from));
                            // Flush packets queued during the handshake.
                            result = tunn.decapsulate(None, &[], &mut out);
                        }
                        TunnResult::WriteToTunnelV4(p, src) => {
                            authenticated = true;
                            if src == peer.mesh_ip {
                                self.stats.rx_packets.fetch_add(1, Ordering::Relaxed);
                                self.write_tun(p);
                            } else {
                                self.stats.spoofed_dropped.fetch_add(1, Ordering::Relaxed);
                            }
                            break;
                        }
                        TunnResult::WriteToTunnelV6(..) => break,
                        TunnResult::Done => {
                            authenticated = true;
                            break;
                        }
                        TunnResult::Err(_) => break,
                    }
                }
            }
            if authenticated {
                // Roaming: the peer is where its last authentic packet came from.
                *peer.endpoint.lock().expect("endpoint lock") = Some(from);
            }
            self.send(replies).await;
        }
    }

    async fn timers(self: Arc<Self>) -> io::Result<()> {
        let mut out = vec![0u8; BUF];
        let mut tick = tokio::time::interval(TIMER_TICK);
        loop {
            tick.tick().await;
            let mut due = Vec::new();
            for peer in &self.peers_snapshot() {
                let endpoint = *peer.endpoint.lock().expect("endpoint lock");
                let mut tunn = peer.tunn.lock().expect("tunn lock");
                if let (TunnResult::WriteToNetwork(p), Some(to)) =
                    (tunn.update_timers(&mut out), endpoint)
                {
                    due.push((p.to_vec(), to));
                }
            }
            self.send(due).await;
        }
    }
}

/// The X25519 public key of a private key.
pub fn public_key(private: &[u8; 32]) -> [u8; 32] {
    PublicKey::from(&StaticSecret::from(*private)).to_bytes()
}

/// A new X25519 key pair: (private, public).
pub fn generate_keypair() -> ([u8; 32], [u8; 32]) {
    let private = StaticSecret::random();
    let public = PublicKey::from(&private);
    (private.to_bytes(), public.to_bytes())
}

/// A TCP listener on `addr` that accepts only connections that arrived
/// through the interface `ifname` (`SO_BINDTODEVICE`; unprivileged since
/// Linux 5.7). On a mesh address this means: only from the WireGuard
/// device, whose source check makes the peer address the caller's identity;
/// a local process cannot connect with a forged source address.
pub fn listen_on_device(addr: SocketAddr, ifname: &str) -> io::Result<tokio::net::TcpListener> {
    let sock = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    nix::sys::socket::setsockopt(
        &sock,
        nix::sys::socket::sockopt::BindToDevice,
        &std::ffi::OsString::from(ifname),
    )?;
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(256)
}
