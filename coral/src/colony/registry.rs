//! The colony's control-plane state in SQLite (`colony.db`): its identity,
//! the agents, their services with current health, and health transitions.

use coral_agent::sqlite::{StoreError, open_migrated};
use coral_proto::{
    AgentState, AgentSummary, Health, Registration, ServiceHealth, ServiceKind, ServiceSpec,
};
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use std::collections::HashMap;
use std::path::Path;

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
    // 2: where the colony reaches each agent (AgentRpc), and the colony's
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
