//! The colony's control-plane state in SQLite (`colony.db`): its identity,
//! the agents, their services with current health, and health transitions.

use coral_proto::{
    AgentState, AgentSummary, Health, Registration, ServiceHealth, ServiceKind, ServiceSpec,
};
use coral_store::sqlite::{StoreError, open_migrated};
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use std::collections::HashMap;
use std::path::Path;

/// The longest agent id the colony accepts.
const MAX_AGENT_ID: usize = 128;

/// An agent id the colony stores: 1-128 characters, none a control character.
pub(crate) fn check_agent_id(id: &str) -> Result<(), coral_proto::ColonyError> {
    if id.is_empty() || id.len() > MAX_AGENT_ID || id.chars().any(|c| c.is_control()) {
        return Err(coral_proto::ColonyError::Invalid(
            "agent id must be 1-128 printable characters".into(),
        ));
    }
    Ok(())
}

const MIGRATIONS: &[&str] = &[
    // 1: identity, agents, services, health history.
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
     CREATE TABLE agents (
        id            TEXT PRIMARY KEY,
        name          TEXT NOT NULL,
        hostname      TEXT NOT NULL,
        version       TEXT NOT NULL,
        addr          TEXT NOT NULL,
        pid           INTEGER NOT NULL,
        started_at    INTEGER NOT NULL,
        registered_at INTEGER NOT NULL,
        first_seen    INTEGER NOT NULL,
        last_seen     INTEGER NOT NULL,
        left_at       INTEGER,
        last_seq      INTEGER NOT NULL DEFAULT 0
     );
     CREATE TABLE services (
        agent_id     TEXT NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
        name         TEXT NOT NULL,
        port         INTEGER NOT NULL,
        health_path  TEXT,
        kind         TEXT NOT NULL,
        health       TEXT NOT NULL,
        since        INTEGER,
        last_checked INTEGER,
        latency_us   INTEGER,
        last_error   TEXT,
        added_at     INTEGER NOT NULL,
        PRIMARY KEY (agent_id, name)
     );
     CREATE TABLE health_history (
        id       INTEGER PRIMARY KEY,
        agent_id TEXT NOT NULL,
        service  TEXT NOT NULL,
        ts       INTEGER NOT NULL,
        health   TEXT NOT NULL,
        error    TEXT
     );
     CREATE INDEX health_history_by_service ON health_history (agent_id, service, ts);",
    // 2: the mesh (issue 3): members, their address allocations, join tokens.
    // `meta` gains mesh_subnet (chosen at random on first start).
    "CREATE TABLE members (
        agent_id   TEXT PRIMARY KEY,
        name       TEXT NOT NULL,
        public_key TEXT UNIQUE,
        mesh_ip    INTEGER UNIQUE,
        endpoint   TEXT,
        joined_at  INTEGER NOT NULL,
        revoked_at INTEGER
     );
     -- Every address ever handed out; a retired one is never reused.
     CREATE TABLE mesh_ips (
        ip           INTEGER PRIMARY KEY,
        agent_id     TEXT NOT NULL,
        allocated_at INTEGER NOT NULL,
        retired_at   INTEGER
     );
     CREATE TABLE join_tokens (
        hash       TEXT PRIMARY KEY,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        uses_left  INTEGER NOT NULL
     );",
    // 3: where the colony reaches each agent (AgentRpc), and the colony's
    // own audit table (exec requests it forwarded, MCP tool calls).
    "ALTER TABLE agents ADD COLUMN rpc_addr TEXT;
     CREATE TABLE audit (
        id             INTEGER PRIMARY KEY,
        ts             INTEGER NOT NULL,
        actor          TEXT NOT NULL,
        action         TEXT NOT NULL,
        detail         TEXT NOT NULL,
        cli_equivalent TEXT
     );
     CREATE INDEX audit_by_ts ON audit (ts);",
];

/// A member of the mesh as stored.
#[derive(Debug, Clone)]
pub struct MemberRow {
    pub agent_id: String,
    pub name: String,
    pub public_key: Option<String>,
    pub mesh_ip: Option<std::net::Ipv4Addr>,
    pub endpoint: Option<String>,
    pub joined_at: i64,
    pub revoked_at: Option<i64>,
    pub last_seen: Option<i64>,
    pub left_at: Option<i64>,
}

/// Why a token cannot be redeemed.
#[derive(Debug, PartialEq, Eq)]
pub enum TokenRefusal {
    Unknown,
    Expired,
    Used,
}

/// An agent that hosts a service, as `coral exec` needs it.
#[derive(Debug, Clone)]
pub struct ExecTarget {
    pub agent_id: String,
    pub name: String,
    pub rpc_addr: Option<String>,
    pub state: AgentState,
    pub last_seen_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "{path} belongs to colony '{existing}', not '{requested}' (use another state_dir for another colony)"
    )]
    ColonyMismatch {
        path: String,
        existing: String,
        requested: String,
    },
}

impl From<rusqlite::Error> for RegistryError {
    fn from(e: rusqlite::Error) -> Self {
        RegistryError::Store(StoreError::Sql(e))
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum RedeemError {
    Token(TokenRefusal),
    /// Another active member holds this agent id with another key.
    AlreadyMember,
    /// Another active member holds this public key.
    KeyInUse,
    Full,
}

/// A join to record: who redeems which token, and the mesh addresses
/// agents get.
pub struct Redemption<'a> {
    /// The SHA-256 of the token's secret, hex.
    pub token_hash: &'a str,
    pub agent_id: &'a str,
    pub name: &'a str,
    /// The agent's WireGuard public key, hex.
    pub public_key: &'a str,
    /// The range allocations are made from (IPv4 addresses as `u32`).
    pub ips: std::ops::RangeInclusive<u32>,
}

pub struct Registry {
    conn: Connection,
}

impl Registry {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(Registry {
            conn: open_migrated(path, MIGRATIONS)?,
        })
    }

    /// Opens another connection to the same file (migrated already).
    pub(crate) fn open_connection(path: &Path) -> Result<Connection, StoreError> {
        open_migrated(path, MIGRATIONS)
    }

    /// The agents that report `service`, with how to reach them.
    pub fn exec_targets(
        &self,
        service: &str,
        now: i64,
        timeout_ms: i64,
    ) -> Result<Vec<ExecTarget>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT a.id, a.name, a.rpc_addr, a.last_seen, a.left_at
             FROM services s JOIN agents a ON a.id = s.agent_id
             WHERE s.name = ?1 ORDER BY a.name, a.id",
        )?;
        let rows = stmt.query_map([service], |r| {
            let last_seen: i64 = r.get(3)?;
            let left_at: Option<i64> = r.get(4)?;
            Ok(ExecTarget {
                agent_id: r.get(0)?,
                name: r.get(1)?,
                rpc_addr: r.get(2)?,
                state: agent_state(now, last_seen, left_at, timeout_ms),
                last_seen_ms: last_seen,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every agent that can be asked for its audit log: (id, name, rpc_addr).
    pub fn rpc_agents(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, name, rpc_addr FROM agents WHERE rpc_addr IS NOT NULL ORDER BY name, id",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The colony's id: the stored one, created from `requested` (or
    /// generated) on first start. A different `requested` id is an error.
    pub fn colony_id(&self, requested: Option<&str>) -> Result<String, RegistryError> {
        let stored: Option<String> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'colony_id'", [], |r| {
                r.get(0)
            })
            .optional()?;
        match (stored, requested) {
            (Some(s), Some(r)) if s != r => Err(RegistryError::ColonyMismatch {
                path: self.conn.path().unwrap_or("colony.db").to_string(),
                existing: s,
                requested: r.to_string(),
            }),
            (Some(s), _) => Ok(s),
            (None, r) => {
                let id = match r {
                    Some(r) => r.to_string(),
                    None => format!("colony-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
                };
                self.conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('colony_id', ?1)",
                    [&id],
                )?;
                Ok(id)
            }
        }
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
            [key, value],
        )?;
        Ok(())
    }

    /// The colony's mesh subnet (network address, prefix), chosen with
    /// `pick` and stored on first use.
    pub fn mesh_subnet(
        &self,
        pick: impl FnOnce() -> (std::net::Ipv4Addr, u8),
    ) -> Result<(std::net::Ipv4Addr, u8), StoreError> {
        let stored: Option<String> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'mesh_subnet'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        if let Some((ip, prefix)) = stored.as_deref().and_then(|s| s.split_once('/'))
            && let (Ok(ip), Ok(prefix)) = (ip.parse(), prefix.parse())
        {
            return Ok((ip, prefix));
        }
        let (ip, prefix) = pick();
        self.conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('mesh_subnet', ?1)",
            [format!("{ip}/{prefix}")],
        )?;
        Ok((ip, prefix))
    }

    pub fn add_token(
        &self,
        hash: &str,
        now: i64,
        expires: i64,
        uses: u32,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO join_tokens (hash, created_at, expires_at, uses_left) VALUES (?1, ?2, ?3, ?4)",
            params![hash, now, expires, uses],
        )?;
        // Expired tokens are useless; keep the table small.
        self.conn.execute(
            "DELETE FROM join_tokens WHERE expires_at < ?1 - 86400000",
            [now],
        )?;
        Ok(())
    }

    /// Redeems a token for the joining agent and allocates (or keeps) its
    /// address, in one transaction.
    pub fn redeem(
        &mut self,
        join: &Redemption<'_>,
        now: i64,
    ) -> Result<Result<std::net::Ipv4Addr, RedeemError>, StoreError> {
        let Redemption {
            token_hash: hash,
            agent_id,
            name,
            public_key,
            ref ips,
        } = *join;
        let (first, last) = (*ips.start(), *ips.end());
        let tx = self.conn.transaction()?;
        let tok: Option<(i64, i64)> = tx
            .query_row(
                "SELECT expires_at, uses_left FROM join_tokens WHERE hash = ?1",
                [hash],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        match tok {
            None => return Ok(Err(RedeemError::Token(TokenRefusal::Unknown))),
            Some((exp, _)) if exp < now => {
                return Ok(Err(RedeemError::Token(TokenRefusal::Expired)));
            }
            Some((_, 0)) => return Ok(Err(RedeemError::Token(TokenRefusal::Used))),
            Some(_) => {}
        }
        let existing: Option<(Option<String>, Option<u32>, Option<i64>)> = tx
            .query_row(
                "SELECT public_key, mesh_ip, revoked_at FROM members WHERE agent_id = ?1",
                [agent_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let ip = match existing {
            // The same agent with the same key joins again: same address.
            Some((Some(k), Some(ip), None)) if k == public_key => ip,
            Some((_, _, None)) => return Ok(Err(RedeemError::AlreadyMember)),
            // New, or revoked before: a fresh address.
            _ => {
                let taken: Option<String> = tx
                    .query_row(
                        "SELECT agent_id FROM members WHERE public_key = ?1 AND agent_id != ?2 AND revoked_at IS NULL",
                        params![public_key, agent_id],
                        |r| r.get(0),
                    )
                    .optional()?;
                if taken.is_some() {
                    return Ok(Err(RedeemError::KeyInUse));
                }
                let mut used =
                    tx.prepare("SELECT ip FROM mesh_ips WHERE ip BETWEEN ?1 AND ?2 ORDER BY ip")?;
                let mut next = first;
                for ip in used.query_map([first, last], |r| r.get::<_, u32>(0))? {
                    if ip? == next {
                        next += 1;
                    } else {
                        break;
                    }
                }
                drop(used);
                if next > last {
                    return Ok(Err(RedeemError::Full));
                }
                tx.execute(
                    "UPDATE mesh_ips SET retired_at = ?2 WHERE agent_id = ?1 AND retired_at IS NULL",
                    params![agent_id, now],
                )?;
                tx.execute(
                    "INSERT INTO mesh_ips (ip, agent_id, allocated_at) VALUES (?1, ?2, ?3)",
                    params![next, agent_id, now],
                )?;
                // A revoked key may not come back under another id.
                tx.execute(
                    "UPDATE members SET public_key = NULL WHERE public_key = ?1 AND agent_id != ?2",
                    params![public_key, agent_id],
                )?;
                next
            }
        };
        tx.execute(
            "INSERT INTO members (agent_id, name, public_key, mesh_ip, joined_at)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(agent_id) DO UPDATE SET name = excluded.name, public_key = excluded.public_key,
                mesh_ip = excluded.mesh_ip, joined_at = excluded.joined_at, revoked_at = NULL, endpoint = NULL",
            params![agent_id, name, public_key, ip, now],
        )?;
        tx.execute(
            "UPDATE join_tokens SET uses_left = uses_left - 1 WHERE hash = ?1",
            [hash],
        )?;
        tx.commit()?;
        Ok(Ok(std::net::Ipv4Addr::from(ip)))
    }

    /// An agent on the colony's machine (or, with the mesh off, any agent)
    /// becomes a member without an address when it registers.
    pub fn ensure_local_member(
        &self,
        agent_id: &str,
        name: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO members (agent_id, name, joined_at) VALUES (?1, ?2, ?3)
             ON CONFLICT(agent_id) DO UPDATE SET name = excluded.name",
            params![agent_id, name, now],
        )?;
        Ok(())
    }

    /// Every member, revoked ones included, with its registry timestamps.
    pub fn members(&self) -> Result<Vec<MemberRow>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT m.agent_id, m.name, m.public_key, m.mesh_ip, m.endpoint, m.joined_at, m.revoked_at,
                    a.last_seen, a.left_at
             FROM members m LEFT JOIN agents a ON a.id = m.agent_id ORDER BY m.name, m.agent_id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(MemberRow {
                agent_id: r.get(0)?,
                name: r.get(1)?,
                public_key: r.get(2)?,
                mesh_ip: r.get::<_, Option<u32>>(3)?.map(std::net::Ipv4Addr::from),
                endpoint: r.get(4)?,
                joined_at: r.get(5)?,
                revoked_at: r.get(6)?,
                last_seen: r.get(7)?,
                left_at: r.get(8)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The active member at a mesh address: (agent id, revoked?).
    pub fn member_at(&self, ip: std::net::Ipv4Addr) -> Result<Option<(String, bool)>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT agent_id, revoked_at IS NOT NULL FROM members WHERE mesh_ip = ?1",
                [u32::from(ip)],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    pub fn is_revoked(&self, agent_id: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT revoked_at IS NOT NULL FROM members WHERE agent_id = ?1",
                [agent_id],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(false))
    }

    pub fn set_endpoint(
        &self,
        mesh_ip: std::net::Ipv4Addr,
        endpoint: &str,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE members SET endpoint = ?2 WHERE mesh_ip = ?1 AND revoked_at IS NULL",
            params![u32::from(mesh_ip), endpoint],
        )?;
        Ok(())
    }

    /// Revokes a member and retires its address.
    pub fn revoke(&mut self, agent_id: &str, now: i64) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "UPDATE members SET revoked_at = ?2 WHERE agent_id = ?1",
            params![agent_id, now],
        )?;
        tx.execute(
            "UPDATE mesh_ips SET retired_at = ?2 WHERE agent_id = ?1 AND retired_at IS NULL",
            params![agent_id, now],
        )?;
        tx.execute(
            "UPDATE agents SET left_at = ?2 WHERE id = ?1",
            params![agent_id, now],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Records a (re)registration; returns the highest sample seq stored.
    /// `rpc_addr` is where the colony reaches the agent's `AgentRpc`.
    pub fn register(
        &mut self,
        reg: &Registration,
        addr: &str,
        rpc_addr: Option<&str>,
        now: i64,
    ) -> Result<u64, StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO agents (id, name, hostname, version, addr, pid, started_at, registered_at, first_seen, last_seen, rpc_addr)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8, ?8, ?9)
             ON CONFLICT(id) DO UPDATE SET name = excluded.name, hostname = excluded.hostname,
                version = excluded.version, addr = excluded.addr, pid = excluded.pid,
                started_at = excluded.started_at, registered_at = excluded.registered_at,
                last_seen = excluded.last_seen, left_at = NULL, rpc_addr = excluded.rpc_addr",
            params![reg.agent_id, reg.name, reg.hostname, reg.version, addr, reg.pid, reg.started_at_ms, now, rpc_addr],
        )?;
        sync_services(&tx, &reg.agent_id, &reg.services, now)?;
        let last_seq: i64 = tx.query_row(
            "SELECT last_seq FROM agents WHERE id = ?1",
            [&reg.agent_id],
            |r| r.get(0),
        )?;
        tx.commit()?;
        Ok(last_seq as u64)
    }

    /// The highest stored sample seq of a known agent, `None` if unknown.
    pub fn last_seq(&self, agent_id: &str) -> Result<Option<u64>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT last_seq FROM agents WHERE id = ?1",
                [agent_id],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
            .map(|v| v as u64))
    }

    /// Records a heartbeat whose samples up to `last_seq` are stored.
    pub fn heartbeat(
        &mut self,
        agent_id: &str,
        services: &[ServiceHealth],
        last_seq: u64,
        now: i64,
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "UPDATE agents SET last_seen = ?2, last_seq = max(last_seq, ?3) WHERE id = ?1",
            params![agent_id, now, last_seq as i64],
        )?;
        sync_services(&tx, agent_id, services, now)?;
        tx.commit()?;
        Ok(())
    }

    pub fn leave(&self, agent_id: &str, now: i64) -> Result<bool, StoreError> {
        Ok(self.conn.execute(
            "UPDATE agents SET left_at = ?2, last_seen = ?2 WHERE id = ?1",
            params![agent_id, now],
        )? > 0)
    }

    /// Every agent with its services; `timeout` decides who is offline.
    pub fn agents(&self, now: i64, timeout_ms: i64) -> Result<Vec<AgentSummary>, StoreError> {
        let mut services: HashMap<String, Vec<ServiceHealth>> = HashMap::new();
        let mut stmt = self.conn.prepare(
            "SELECT agent_id, name, port, health_path, kind, health, since, last_checked, latency_us, last_error
             FROM services ORDER BY agent_id, name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                ServiceHealth {
                    spec: ServiceSpec {
                        name: r.get(1)?,
                        port: r.get(2)?,
                        health_path: r.get(3)?,
                        kind: ServiceKind::parse(&r.get::<_, String>(4)?)
                            .unwrap_or(ServiceKind::Tcp),
                    },
                    health: Health::parse(&r.get::<_, String>(5)?),
                    since_ms: r.get(6)?,
                    last_checked_ms: r.get(7)?,
                    latency_us: r.get::<_, Option<i64>>(8)?.map(|v| v as u64),
                    last_error: r.get(9)?,
                },
            ))
        })?;
        for row in rows {
            let (agent, svc) = row?;
            services.entry(agent).or_default().push(svc);
        }
        let mut stmt = self.conn.prepare(
            "SELECT id, name, hostname, version, addr, started_at, registered_at, last_seen, left_at, last_seq, rpc_addr
             FROM agents ORDER BY name, id",
        )?;
        let rows = stmt.query_map([], |r| {
            let id: String = r.get(0)?;
            let last_seen: i64 = r.get(7)?;
            let left_at: Option<i64> = r.get(8)?;
            let state = agent_state(now, last_seen, left_at, timeout_ms);
            Ok(AgentSummary {
                services: services.remove(&id).unwrap_or_default(),
                id,
                name: r.get(1)?,
                hostname: r.get(2)?,
                version: r.get(3)?,
                addr: r.get(4)?,
                state,
                started_at_ms: r.get(5)?,
                registered_at_ms: r.get(6)?,
                last_seen_ms: last_seen,
                last_seq: r.get::<_, i64>(9)? as u64,
                rpc_addr: r.get(10)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// One control-plane event, for "what changed".
#[derive(Debug, Clone)]
pub struct Change {
    pub ts_ms: i64,
    pub what: &'static str,
    pub agent: String,
    pub service: Option<String>,
    pub detail: Option<String>,
}

impl Registry {
    /// Agents that joined, restarted or left, services added, and health
    /// changes since `from_ms`, oldest first.
    pub fn changes(&self, from_ms: i64) -> Result<Vec<Change>, StoreError> {
        let mut out = Vec::new();
        let mut st = self.conn.prepare(
            "SELECT name, first_seen, started_at, registered_at, left_at FROM agents
             WHERE first_seen >= ?1 OR started_at >= ?1 OR coalesce(left_at, 0) >= ?1",
        )?;
        let rows = st.query_map([from_ms], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, Option<i64>>(4)?,
            ))
        })?;
        for row in rows {
            let (agent, first, started, _registered, left) = row?;
            let ev = |ts, what| Change {
                ts_ms: ts,
                what,
                agent: agent.clone(),
                service: None,
                detail: None,
            };
            if first >= from_ms {
                out.push(ev(first, "agent joined"));
            } else if started >= from_ms {
                out.push(ev(started, "agent restarted"));
            }
            if let Some(l) = left.filter(|l| *l >= from_ms) {
                out.push(ev(l, "agent left"));
            }
        }
        let mut st = self.conn.prepare(
            "SELECT a.name, s.name, s.added_at, s.port FROM services s JOIN agents a ON a.id = s.agent_id
             WHERE s.added_at >= ?1",
        )?;
        for row in st.query_map([from_ms], |r| {
            Ok(Change {
                agent: r.get(0)?,
                service: Some(r.get(1)?),
                ts_ms: r.get(2)?,
                what: "service added",
                detail: Some(format!("port {}", r.get::<_, i64>(3)?)),
            })
        })? {
            out.push(row?);
        }
        let mut st = self.conn.prepare(
            "SELECT coalesce(a.name, h.agent_id), h.service, h.ts, h.health, h.error
             FROM health_history h LEFT JOIN agents a ON a.id = h.agent_id
             WHERE h.ts >= ?1 ORDER BY h.ts LIMIT 500",
        )?;
        for row in st.query_map([from_ms], |r| {
            let health: String = r.get(3)?;
            Ok(Change {
                agent: r.get(0)?,
                service: Some(r.get(1)?),
                ts_ms: r.get(2)?,
                what: if health == "down" {
                    "service down"
                } else {
                    "service up"
                },
                detail: r.get(4)?,
            })
        })? {
            out.push(row?);
        }
        out.sort_by_key(|c| c.ts_ms);
        Ok(out)
    }
}

fn agent_state(now: i64, last_seen: i64, left_at: Option<i64>, timeout_ms: i64) -> AgentState {
    if left_at.is_some() {
        AgentState::Stopped
    } else if now - last_seen <= timeout_ms {
        AgentState::Online
    } else {
        AgentState::Offline
    }
}

/// Makes the stored services of `agent_id` equal to `services`, recording
/// every health change in the history.
fn sync_services(
    tx: &Transaction,
    agent_id: &str,
    services: &[ServiceHealth],
    now: i64,
) -> rusqlite::Result<()> {
    let mut previous: HashMap<String, String> = HashMap::new();
    {
        let mut stmt = tx.prepare("SELECT name, health FROM services WHERE agent_id = ?1")?;
        for row in stmt.query_map([agent_id], |r| Ok((r.get(0)?, r.get(1)?)))? {
            let (name, health) = row?;
            previous.insert(name, health);
        }
    }
    for s in services {
        let health = s.health.as_str();
        let changed = previous.get(&s.spec.name).map(String::as_str) != Some(health);
        if changed && s.health != Health::Unknown {
            tx.execute(
                "INSERT INTO health_history (agent_id, service, ts, health, error) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![agent_id, s.spec.name, s.since_ms.unwrap_or(now), health, s.last_error],
            )?;
        }
        tx.execute(
            "INSERT INTO services (agent_id, name, port, health_path, kind, health, since, last_checked, latency_us, last_error, added_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
             ON CONFLICT(agent_id, name) DO UPDATE SET port = excluded.port, health_path = excluded.health_path,
                kind = excluded.kind, health = excluded.health, since = excluded.since,
                last_checked = excluded.last_checked, latency_us = excluded.latency_us, last_error = excluded.last_error",
            params![
                agent_id,
                s.spec.name,
                s.spec.port,
                s.spec.health_path,
                s.spec.kind.as_str(),
                health,
                s.since_ms,
                s.last_checked_ms,
                s.latency_us.map(|v| v as i64),
                s.last_error,
                now
            ],
        )?;
        previous.remove(&s.spec.name);
    }
    for gone in previous.keys() {
        tx.execute(
            "DELETE FROM services WHERE agent_id = ?1 AND name = ?2",
            params![agent_id, gone],
        )?;
    }
    Ok(())
}
