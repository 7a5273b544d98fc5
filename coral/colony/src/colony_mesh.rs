//! The colony's side of the mesh: its key, its TUN device and WireGuard
//! device, the /32 allocations, the join exchange, revocation, and
//! publishing its endpoints to discovery.
//!
//! Keys: the WireGuard (X25519) key comes from coral-privhelper (`GetKey`)
//! or, without the helper, from `wg.key` (0600) in the state dir; the choice
//! is made once and kept in colony.db, so a restart never silently changes
//! the colony's key. The Ed25519 key that signs grants and discovery records
//! is always `sign.key` (0600) in the state dir: the helper holds no Ed25519
//! key.

use super::ColonyError;
use super::config::{ColonyConfig, KeySource};
use super::registry::{RedeemError, Redemption, Registry, TokenRefusal};
use coral_mesh::device::{Device, PeerConfig};
use coral_mesh::membership::{self as ms, hex};
use coral_proto::{JoinError, JoinRequest, MeshGrant, SignedGrant};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

pub(crate) struct ColonyMesh {
    pub device: Arc<Device>,
    pub ifname: String,
    pub mesh_ip: Ipv4Addr,
    pub subnet: (Ipv4Addr, u8),
    private: [u8; 32],
    pub public: [u8; 32],
    pub sign: ed25519_dalek::SigningKey,
    pub endpoints: Vec<String>,
    /// Where the WireGuard key came from, for logs and status.
    pub key_source: &'static str,
    /// How the TUN device was made.
    pub tun_path: coral_privhelper::TunPath,
    join: Mutex<Option<std::net::TcpListener>>,
    rpc: Mutex<Option<tokio::net::TcpListener>>,
    /// The control plane's address on the mesh.
    pub rpc_addr: SocketAddr,
    /// Stops the WireGuard device: after the colony's other tasks, so
    /// closing connections reach the agents.
    pub device_stop: tokio_util::sync::CancellationToken,
    /// Open control-plane connections per caller address, cancelled on revoke.
    conns: Mutex<Vec<(Ipv4Addr, CancellationToken)>>,
}

fn mesh_err(msg: impl Into<String>) -> ColonyError {
    ColonyError::Mesh(msg.into())
}

/// A random /20 inside 100.64.0.0/10.
fn random_subnet() -> (Ipv4Addr, u8) {
    let r = ms::random32();
    let block = u32::from(u16::from_le_bytes([r[0], r[1]]) & 0x3ff);
    (Ipv4Addr::from(0x6440_0000 | (block << 12)), 20)
}

/// `coral` + a letter + 8 hex digits of `id`: unique per colony/agent.
pub fn default_ifname(role: char, id: &str) -> String {
    use sha2::Digest as _;
    let h = sha2::Sha256::digest(id.as_bytes());
    format!("coral{role}{}", &hex(&h[..4]))
}

/// This host's IPv4 address on the default route (no packet is sent).
fn default_route_ip() -> Option<std::net::IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    Some(s.local_addr().ok()?.ip())
}

fn wg_key(
    cfg: &ColonyConfig,
    registry: &Registry,
    state_dir: &Path,
) -> Result<([u8; 32], &'static str), ColonyError> {
    let file = state_dir.join("wg.key");
    let stored = registry.meta("mesh_key_source")?;
    let choice = match (stored.as_deref(), cfg.mesh.key) {
        (Some("helper"), _) | (None, KeySource::Helper) => "helper",
        (Some("file"), _) | (None, KeySource::File) => "file",
        _ if file.exists() => "file",
        _ => match coral_privhelper::Client::connect(&cfg.mesh.helper_socket) {
            Ok(_) => "helper",
            Err(e) => {
                tracing::info!(reason = %e, "coral-privhelper not usable; the colony keeps its own key file");
                "file"
            }
        },
    };
    let key = if choice == "helper" {
        let k = coral_privhelper::Client::connect(&cfg.mesh.helper_socket)
            .and_then(|mut c| c.get_key())
            .map_err(|e| {
                mesh_err(format!(
                    "the colony's WireGuard key is held by coral-privhelper: {e}"
                ))
            })?;
        (*k.secret, "coral-privhelper")
    } else {
        (
            ms::load_or_create_secret(&file).map_err(|e| mesh_err(e.to_string()))?,
            "key file (0600) in the state dir",
        )
    };
    if stored.is_none() {
        registry.set_meta("mesh_key_source", choice)?;
    }
    Ok(key)
}

impl ColonyMesh {
    /// Sets the mesh up: key, subnet, TUN, WireGuard device with every
    /// active member as a peer, the UDP socket and the join listener. Must
    /// run inside a tokio runtime.
    pub(crate) fn open(
        cfg: &ColonyConfig,
        registry: &Registry,
        state_dir: &Path,
        colony_id: &str,
    ) -> Result<ColonyMesh, ColonyError> {
        let m = &cfg.mesh;
        let (private, key_source) = wg_key(cfg, registry, state_dir)?;
        let public = coral_mesh::device::public_key(&private);
        let sign_seed = ms::load_or_create_secret(&state_dir.join("sign.key"))
            .map_err(|e| mesh_err(e.to_string()))?;
        let sign = ms::signing_key(&sign_seed);
        let subnet = match &m.subnet {
            Some(s) => {
                let want = super::config::parse_subnet(s).map_err(ColonyError::Config)?;
                registry.mesh_subnet(|| want)?
            }
            None => registry.mesh_subnet(random_subnet)?,
        };
        let mesh_ip = Ipv4Addr::from(u32::from(subnet.0) + 1);
        let ifname = m
            .interface
            .clone()
            .unwrap_or_else(|| default_ifname('c', colony_id));
        let params = coral_privhelper::TunParams {
            name: coral_privhelper::IfName::new(&ifname)
                .map_err(|e| mesh_err(format!("interface name {ifname}: {e}")))?,
            addr: mesh_ip,
            prefix: subnet.1,
            mtu: m.mtu,
        };
        let (tun, tun_path) = coral_privhelper::open_tun(&m.helper_socket, &params)
            .map_err(|e| mesh_err(e.to_string()))?;
        let listen: SocketAddr = m
            .listen
            .parse()
            .map_err(|_| mesh_err("bad colony.mesh.listen"))?;
        let udp = std::net::UdpSocket::bind(listen)
            .map_err(|e| mesh_err(format!("cannot bind UDP {listen}: {e}")))?;
        let bound = udp.local_addr().map_err(|e| mesh_err(e.to_string()))?;
        let join = std::net::TcpListener::bind(bound)
            .map_err(|e| mesh_err(format!("cannot listen on TCP {bound} (join exchange): {e}")))?;
        join.set_nonblocking(true)
            .map_err(|e| mesh_err(e.to_string()))?;
        udp.set_nonblocking(true)
            .map_err(|e| mesh_err(e.to_string()))?;
        let endpoints = if !m.endpoints.is_empty() {
            m.endpoints.clone()
        } else if !bound.ip().is_unspecified() {
            vec![bound.to_string()]
        } else {
            default_route_ip()
                .map(|ip| vec![SocketAddr::new(ip, bound.port()).to_string()])
                .unwrap_or_default()
        };
        let peers: Vec<PeerConfig> = registry
            .members()?
            .into_iter()
            .filter(|r| r.revoked_at.is_none())
            .filter_map(|r| {
                Some(PeerConfig {
                    public_key: ms::unhex32(r.public_key.as_deref()?)?,
                    mesh_ip: r.mesh_ip?,
                    endpoint: r.endpoint.as_deref().and_then(|e| e.parse().ok()),
                    persistent_keepalive: None,
                })
            })
            .collect();
        let udp = tokio::net::UdpSocket::from_std(udp).map_err(|e| mesh_err(e.to_string()))?;
        let device = Device::new(private, &peers, tun.fd, udp)
            .map_err(|e| mesh_err(format!("cannot start the WireGuard device: {e}")))?;
        let port = cfg
            .listen
            .parse::<SocketAddr>()
            .map(|a| a.port())
            .unwrap_or(super::config::DEFAULT_PORT);
        let rpc =
            coral_mesh::device::listen_on_device(SocketAddr::new(mesh_ip.into(), port), &ifname)
                .map_err(|e| mesh_err(format!("cannot listen on {mesh_ip}:{port}: {e}")))?;
        let rpc_addr = rpc.local_addr().map_err(|e| mesh_err(e.to_string()))?;
        tracing::info!(interface = %ifname, %mesh_ip, subnet = %format!("{}/{}", subnet.0, subnet.1),
            udp = %bound, tun = %tun_path, key = key_source, peers = peers.len(), "colony mesh up");
        Ok(ColonyMesh {
            device: Arc::new(device),
            ifname,
            mesh_ip,
            subnet,
            private,
            public,
            sign,
            endpoints,
            key_source,
            tun_path,
            join: Mutex::new(Some(join)),
            rpc: Mutex::new(Some(rpc)),
            rpc_addr,
            device_stop: tokio_util::sync::CancellationToken::new(),
            conns: Mutex::new(Vec::new()),
        })
    }

    pub(crate) fn take_join_listener(&self) -> Option<std::net::TcpListener> {
        self.join.lock().expect("join lock").take()
    }

    pub(crate) fn take_rpc_listener(&self) -> Option<tokio::net::TcpListener> {
        self.rpc.lock().expect("rpc lock").take()
    }

    pub(crate) fn sign_key_hex(&self) -> String {
        hex(self.sign.verifying_key().as_bytes())
    }

    /// A token for the connection of a caller at `ip`, cancelled if that
    /// caller is revoked.
    pub(crate) fn conn_token(&self, ip: Ipv4Addr) -> CancellationToken {
        let t = CancellationToken::new();
        let mut conns = self.conns.lock().expect("conns lock");
        conns.retain(|(_, t)| !t.is_cancelled());
        conns.push((ip, t.clone()));
        t
    }

    /// Closes every open connection from `ip`, then drops the peer (after
    /// a moment, so the agent still gets the close and stops at once).
    pub(crate) async fn cut(&self, public_key: Option<&str>, ip: Option<Ipv4Addr>) {
        self.close_conns(ip);
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        if let Some(k) = public_key.and_then(ms::unhex32) {
            self.device.remove_peer(&k);
        }
        // Anything that connected in between.
        self.close_conns(ip);
    }

    /// Closes every agent connection (the colony is stopping).
    pub(crate) fn close_all_conns(&self) {
        for (_, t) in self.conns.lock().expect("conns lock").iter() {
            t.cancel();
        }
    }

    fn close_conns(&self, ip: Option<Ipv4Addr>) {
        if let Some(ip) = ip {
            for (_, t) in self
                .conns
                .lock()
                .expect("conns lock")
                .iter()
                .filter(|(i, _)| *i == ip)
            {
                t.cancel();
            }
        }
    }

    /// The join exchange: checks the sealed token secret, allocates the
    /// agent's address, adds it as a peer and returns its signed grant.
    pub(crate) fn join(
        &self,
        registry: &Mutex<Registry>,
        colony_id: &str,
        rpc_port: u16,
        req: JoinRequest,
    ) -> Result<SignedGrant, JoinError> {
        if req.colony_id != colony_id {
            // Not named: the caller is not authenticated yet (issue 16).
            return Err(JoinError::WrongColony {
                wanted: req.colony_id,
                actual: String::new(),
            });
        }
        super::registry::check_agent_id(&req.agent_id)
            .map_err(|e| JoinError::Invalid(e.to_string()))?;
        if req.name.is_empty() || req.name.len() > 128 || req.name.chars().any(char::is_control) {
            return Err(JoinError::Invalid(
                "name must be 1-128 printable characters".into(),
            ));
        }
        let pk = ms::unhex32(&req.public_key)
            .ok_or_else(|| JoinError::Invalid("public key must be 64 hex digits".into()))?;
        if pk == self.public {
            return Err(JoinError::Invalid(
                "the agent's key is the colony's own key (they share this host's coral-privhelper key); an agent on the colony's machine joins without a token".into(),
            ));
        }
        // A secret that does not open with our key was made for another colony.
        let (secret, bound) =
            ms::open_secret(&self.private, &req.sealed_secret).ok_or(JoinError::UnknownToken)?;
        if bound != pk {
            return Err(JoinError::Invalid(
                "the sealed secret is bound to another key".into(),
            ));
        }
        let base = u32::from(self.subnet.0);
        let size = 1u32 << (32 - self.subnet.1);
        let now = coral_proto::now_ms();
        let ip = registry
            .lock()
            .expect("registry lock")
            .redeem(
                &Redemption {
                    token_hash: &ms::secret_hash(&secret),
                    agent_id: &req.agent_id,
                    name: &req.name,
                    public_key: &req.public_key,
                    ips: base + 2..=base + size - 2,
                },
                now,
            )
            .map_err(|e| JoinError::Storage(e.to_string()))?
            .map_err(|e| match e {
                RedeemError::Token(TokenRefusal::Unknown) => JoinError::UnknownToken,
                RedeemError::Token(TokenRefusal::Expired) => JoinError::Expired,
                RedeemError::Token(TokenRefusal::Used) => JoinError::Used,
                RedeemError::AlreadyMember => JoinError::Invalid(format!(
                    "agent {} is already a member with another key (revoke it first)",
                    req.agent_id
                )),
                RedeemError::KeyInUse => {
                    JoinError::Invalid("this key belongs to another member".into())
                }
                RedeemError::Full => JoinError::Full,
            })?;
        self.device.add_peer(&PeerConfig {
            public_key: pk,
            mesh_ip: ip,
            endpoint: None,
            persistent_keepalive: None,
        });
        tracing::info!(agent = %req.name, agent_id = %req.agent_id, mesh_ip = %ip, "agent joined the mesh");
        let grant = MeshGrant {
            colony_id: colony_id.to_string(),
            agent_id: req.agent_id,
            agent_public_key: req.public_key,
            mesh_ip: ip.to_string(),
            subnet: format!("{}/{}", self.subnet.0, self.subnet.1),
            colony_mesh_ip: self.mesh_ip.to_string(),
            colony_public_key: hex(&self.public),
            endpoints: self.endpoints.clone(),
            rpc_port,
            issued_at_ms: now,
        };
        Ok(ms::sign_grant(&self.sign, &grant))
    }
}
