//! The agent's side of the mesh: joining with a token, the cached
//! colony-signed membership (`membership.json`, 0600, in the state dir), and
//! bringing up the agent's TUN and WireGuard device from it.
//!
//! The cache is what lets an agent restart while its colony is down: the
//! grant is verified against the colony's signing key from the token on
//! every start, so a tampered file is refused.

use crate::config::{AgentConfig, KeySource};
use anyhow::{anyhow, bail};
use coral_mesh::device::{Device, PeerConfig};
use coral_mesh::membership::{self as ms, hex};
use coral_proto::services::{ColonyJoinClient, DiscoveryClient};
use coral_proto::{JoinError, JoinRequest, MeshGrant, SignedGrant};
use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const FILE: &str = "membership.json";
const JOIN_TIMEOUT: Duration = Duration::from_secs(5);

/// What the agent keeps after joining.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedMembership {
    /// The colony's Ed25519 key (from the token): grants and discovery
    /// records must verify with it.
    pub colony_sign_key: String,
    pub grant: SignedGrant,
    /// SHA-256 of the token redeemed, so starting again with the same
    /// `--join` does not try to redeem it twice.
    pub token_hash: String,
    /// `helper` or `file`: where the agent's WireGuard key is.
    pub key: String,
    /// Endpoints learned from discovery since the grant (signed records).
    #[serde(default)]
    pub endpoints: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum JoinFailure {
    /// The token itself is bad (a usage error).
    #[error("{0}")]
    Token(String),
    #[error("cannot join colony {colony}: {source}")]
    Refused { colony: String, source: JoinError },
    #[error("cannot reach colony {colony} at {endpoints}: {reason}")]
    Unreachable {
        colony: String,
        endpoints: String,
        reason: String,
    },
    #[error("{0}")]
    Local(String),
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

impl SavedMembership {
    /// The cached membership with its verified grant, if any.
    pub fn load(state_dir: &Path) -> anyhow::Result<Option<(SavedMembership, MeshGrant)>> {
        let p = path(state_dir);
        let text = match std::fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => bail!("cannot read {}: {e}", p.display()),
        };
        let m: SavedMembership = serde_json::from_str(&text)
            .map_err(|e| anyhow!("{} is damaged ({e}); join again with --join", p.display()))?;
        let g = ms::verify_grant(&m.colony_sign_key, &m.grant)
            .map_err(|e| anyhow!("{}: {e}; join again with --join", p.display()))?;
        Ok(Some((m, g)))
    }

    pub fn save(&self, state_dir: &Path) -> anyhow::Result<()> {
        let p = path(state_dir);
        ms::write_private(&p, &serde_json::to_vec_pretty(self).expect("serialises"))
            .map_err(|e| anyhow!("cannot write {}: {e}", p.display()))
    }
}

/// The agent's WireGuard key, from the helper or its key file.
pub fn agent_key(config: &AgentConfig, choice: &str) -> anyhow::Result<[u8; 32]> {
    if choice == "helper" {
        let k = coral_privhelper::Client::connect(&config.mesh.helper_socket)
            .and_then(|mut c| c.get_key())
            .map_err(|e| anyhow!("the agent's WireGuard key is held by coral-privhelper: {e}"))?;
        Ok(*k.secret)
    } else {
        Ok(ms::load_or_create_secret(
            &config.state_dir().join("wg.key"),
        )?)
    }
}

fn key_choice(config: &AgentConfig) -> &'static str {
    let file = config.state_dir().join("wg.key");
    match config.mesh.key {
        KeySource::Helper => "helper",
        KeySource::File => "file",
        KeySource::Auto if file.exists() => "file",
        KeySource::Auto => match coral_privhelper::Client::connect(&config.mesh.helper_socket) {
            Ok(_) => "helper",
            Err(_) => "file",
        },
    }
}

/// Redeems `token` with its colony (unless this agent already redeemed
/// it), verifies the signed grant and caches it. Returns the grant and
/// whether a join happened now.
pub async fn redeem(
    config: &AgentConfig,
    agent_id: &str,
    name: &str,
    hostname: &str,
    token: &str,
) -> Result<(MeshGrant, bool), JoinFailure> {
    let t = ms::decode_token(token).map_err(|e| JoinFailure::Token(e.to_string()))?;
    if let Some(want) = &config.colony_id
        && want != &t.colony_id
    {
        return Err(JoinError::WrongColony {
            wanted: want.clone(),
            actual: t.colony_id.clone(),
        })
        .map_err(|source| JoinFailure::Refused {
            colony: t.colony_id.clone(),
            source,
        });
    }
    let secret = ms::unhex32(&t.secret).expect("checked by decode_token");
    let token_hash = ms::secret_hash(&secret);
    let state_dir = config.state_dir();
    if let Ok(Some((m, g))) = SavedMembership::load(&state_dir)
        && m.token_hash == token_hash
    {
        return Ok((g, false));
    }
    let choice = key_choice(config);
    let private = agent_key(config, choice).map_err(|e| JoinFailure::Local(e.to_string()))?;
    let public = coral_mesh::device::public_key(&private);
    let colony_public = ms::unhex32(&t.colony_public_key).expect("checked by decode_token");
    let req = JoinRequest {
        colony_id: t.colony_id.clone(),
        agent_id: agent_id.to_string(),
        name: name.to_string(),
        hostname: hostname.to_string(),
        public_key: hex(&public),
        sealed_secret: ms::seal_secret(&colony_public, &secret, &public),
    };
    let mut last = String::new();
    let mut signed = None;
    for ep in &t.endpoints {
        match call_join(ep, req.clone()).await {
            Ok(Ok(g)) => {
                signed = Some(g);
                break;
            }
            Ok(Err(source)) => {
                return Err(JoinFailure::Refused {
                    colony: t.colony_id.clone(),
                    source,
                });
            }
            Err(e) => last = e.to_string(),
        }
    }
    let Some(signed) = signed else {
        return Err(JoinFailure::Unreachable {
            colony: t.colony_id.clone(),
            endpoints: t.endpoints.join(", "),
            reason: last,
        });
    };
    let bad = |why: String| JoinFailure::Local(format!("the colony's answer is not valid: {why}"));
    let grant = ms::verify_grant(&t.colony_sign_key, &signed).map_err(|e| bad(e.to_string()))?;
    if grant.colony_id != t.colony_id
        || grant.agent_public_key != hex(&public)
        || grant.colony_public_key != t.colony_public_key
        || grant.agent_id != agent_id
    {
        return Err(bad("it is for another colony, agent or key".into()));
    }
    SavedMembership {
        colony_sign_key: t.colony_sign_key,
        grant: signed,
        token_hash,
        key: choice.to_string(),
        endpoints: Vec::new(),
    }
    .save(&state_dir)
    .map_err(|e| JoinFailure::Local(e.to_string()))?;
    Ok((grant, true))
}

async fn call_join(ep: &str, req: JoinRequest) -> anyhow::Result<Result<SignedGrant, JoinError>> {
    let s = tokio::time::timeout(JOIN_TIMEOUT, tokio::net::TcpStream::connect(ep))
        .await
        .map_err(|_| anyhow!("no answer from {ep} within {JOIN_TIMEOUT:?}"))?
        .map_err(|e| anyhow!("{ep}: {e}"))?;
    let _ = s.set_nodelay(true);
    let c = ColonyJoinClient::new(Default::default(), coral_proto::local::framed(s)).spawn();
    let mut ctx = tarpc::context::current();
    ctx.deadline = std::time::Instant::now() + JOIN_TIMEOUT;
    c.join(ctx, req).await.map_err(|e| anyhow!("{ep}: {e}"))
}

/// The agent's running mesh.
pub struct AgentMesh {
    pub device: Arc<Device>,
    pub grant: MeshGrant,
    pub mesh_ip: Ipv4Addr,
    pub colony_mesh_ip: Ipv4Addr,
    pub colony_public: [u8; 32],
    pub interface: String,
    pub membership: SavedMembership,
    /// Where the TUN device came from.
    pub tun_path: coral_privhelper::TunPath,
    keepalive: u16,
}

fn resolve(ep: &str) -> Option<SocketAddr> {
    ep.to_socket_addrs().ok()?.find(|a| a.is_ipv4())
}

impl AgentMesh {
    /// Brings the mesh up from the cached membership. Must run inside a
    /// tokio runtime.
    pub fn open(
        config: &AgentConfig,
        agent_id: &str,
        m: SavedMembership,
        grant: MeshGrant,
    ) -> anyhow::Result<AgentMesh> {
        let private = agent_key(config, &m.key)?;
        if hex(&coral_mesh::device::public_key(&private)) != grant.agent_public_key {
            bail!("the agent's WireGuard key changed since it joined; join again with --join");
        }
        let bad = |w: &str| anyhow!("membership: bad {w}; join again with --join");
        let mesh_ip: Ipv4Addr = grant.mesh_ip.parse().map_err(|_| bad("mesh ip"))?;
        let colony_mesh_ip: Ipv4Addr =
            grant.colony_mesh_ip.parse().map_err(|_| bad("colony ip"))?;
        let prefix: u8 = grant
            .subnet
            .split_once('/')
            .and_then(|(_, p)| p.parse().ok())
            .ok_or_else(|| bad("subnet"))?;
        let colony_public =
            ms::unhex32(&grant.colony_public_key).ok_or_else(|| bad("colony key"))?;
        let interface = config
            .mesh
            .interface
            .clone()
            .unwrap_or_else(|| default_ifname(agent_id));
        let params = coral_privhelper::TunParams {
            name: coral_privhelper::IfName::new(&interface)
                .map_err(|e| anyhow!("interface name {interface}: {e}"))?,
            addr: mesh_ip,
            prefix,
            mtu: config.mesh.mtu,
        };
        let (tun, tun_path) = coral_privhelper::open_tun(&config.mesh.helper_socket, &params)?;
        let udp = std::net::UdpSocket::bind(&config.mesh.listen)
            .map_err(|e| anyhow!("cannot bind UDP {}: {e}", config.mesh.listen))?;
        udp.set_nonblocking(true)?;
        let udp = tokio::net::UdpSocket::from_std(udp)?;
        let endpoint = m
            .endpoints
            .iter()
            .chain(grant.endpoints.iter())
            .find_map(|e| resolve(e));
        let keepalive = config.mesh.keepalive.as_secs().clamp(1, 600) as u16;
        let device = Device::new(
            private,
            &[PeerConfig {
                public_key: colony_public,
                mesh_ip: colony_mesh_ip,
                endpoint,
                persistent_keepalive: Some(keepalive),
            }],
            tun.fd,
            udp,
        )
        .map_err(|e| anyhow!("cannot start the WireGuard device: {e}"))?;
        tracing::info!(%interface, %mesh_ip, colony = %grant.colony_id, endpoint = ?endpoint, tun = %tun_path, "agent mesh up");
        Ok(AgentMesh {
            device: Arc::new(device),
            grant,
            mesh_ip,
            colony_mesh_ip,
            colony_public,
            interface,
            membership: m,
            tun_path,
            keepalive,
        })
    }

    /// The colony's control plane on the mesh.
    pub fn colony_rpc(&self) -> String {
        format!("{}:{}", self.colony_mesh_ip, self.grant.rpc_port)
    }

    /// Asks discovery for the colony's current endpoints, verifies them with
    /// the colony's key and points the WireGuard peer there if they moved.
    pub async fn refresh_from_discovery(
        &self,
        discovery: &str,
        state_dir: &Path,
    ) -> anyhow::Result<bool> {
        let s = tokio::time::timeout(JOIN_TIMEOUT, tokio::net::TcpStream::connect(discovery))
            .await
            .map_err(|_| anyhow!("discovery {discovery}: no answer"))?
            .map_err(|e| anyhow!("discovery {discovery}: {e}"))?;
        let c = DiscoveryClient::new(Default::default(), coral_proto::local::framed(s)).spawn();
        let rec = c
            .lookup(tarpc::context::current(), self.grant.colony_id.clone())
            .await
            .map_err(|e| anyhow!("discovery {discovery}: {e}"))?
            .ok_or_else(|| {
                anyhow!(
                    "discovery {discovery} does not know colony {}",
                    self.grant.colony_id
                )
            })?;
        let rec = ms::verify_endpoints(&self.membership.colony_sign_key, &rec)?;
        if rec.colony_id != self.grant.colony_id {
            bail!("discovery answered for another colony");
        }
        let Some(ep) = rec.endpoints.iter().find_map(|e| resolve(e)) else {
            bail!("discovery lists no usable endpoint");
        };
        let current = self.device.peer_status().first().and_then(|p| p.endpoint);
        if current == Some(ep) {
            return Ok(false);
        }
        tracing::info!(endpoint = %ep, "colony endpoint from discovery");
        self.device.add_peer(&PeerConfig {
            public_key: self.colony_public,
            mesh_ip: self.colony_mesh_ip,
            endpoint: Some(ep),
            persistent_keepalive: Some(self.keepalive),
        });
        let mut m = self.membership.clone();
        m.endpoints = rec.endpoints;
        m.save(state_dir)?;
        Ok(true)
    }
}

pub fn default_ifname(agent_id: &str) -> String {
    use sha2::Digest as _;
    let h = sha2::Sha256::digest(agent_id.as_bytes());
    format!("corala{}", hex(&h[..4]))
}
