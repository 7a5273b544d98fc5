//! The agent's own control-plane state (`agent.db`): its identity, its boot
//! counter (so sample sequence numbers grow across restarts) and the services
//! it watches (so they survive agent restarts).

use coral_proto::{ServiceKind, ServiceSpec};
use coral_store::sqlite::{StoreError, open_migrated};
use rusqlite::{Connection, OptionalExtension, params};
use std::path::Path;

pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: identity and services.
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
     CREATE TABLE services (
        name     TEXT PRIMARY KEY,
        port     INTEGER NOT NULL,
        health   TEXT,
        kind     TEXT NOT NULL,
        added_at INTEGER NOT NULL
     );",
    // 2: the exec audit log (write-ahead: a row is committed before the
    // command runs; the completion columns are filled when it ends).
    "CREATE TABLE exec_audit (
        exec_id          TEXT PRIMARY KEY,
        ts               INTEGER NOT NULL,
        caller           TEXT NOT NULL,
        origin           TEXT NOT NULL,
        service          TEXT NOT NULL,
        argv             TEXT NOT NULL,
        program          TEXT,
        decision         TEXT NOT NULL,
        rule             TEXT,
        reason           TEXT NOT NULL,
        timeout_ms       INTEGER,
        max_output_bytes INTEGER,
        finished         INTEGER,
        exit_code        INTEGER,
        signal           INTEGER,
        duration_us      INTEGER,
        output_bytes     INTEGER,
        truncated        INTEGER,
        timed_out        INTEGER,
        cancelled        INTEGER,
        error            TEXT,
        interrupted      INTEGER NOT NULL DEFAULT 0
     );
     CREATE INDEX exec_audit_by_ts ON exec_audit (ts);",
];

pub struct AgentDb {
    conn: Connection,
}

impl AgentDb {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(AgentDb {
            conn: open_migrated(path, MIGRATIONS)?,
        })
    }

    fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    /// The agent's stable id, created on first start.
    pub fn agent_id(&self) -> Result<String, StoreError> {
        if let Some(id) = self.meta("agent_id")? {
            return Ok(id);
        }
        let id = uuid::Uuid::new_v4().to_string();
        self.set_meta("agent_id", &id)?;
        Ok(id)
    }

    /// Increments and returns the boot counter.
    pub fn next_boot(&self) -> Result<u64, StoreError> {
        let boot = self
            .meta("boot")?
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            + 1;
        self.set_meta("boot", &boot.to_string())?;
        Ok(boot)
    }

    pub fn services(&self) -> Result<Vec<ServiceSpec>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, port, health, kind FROM services ORDER BY name")?;
        let rows = stmt.query_map([], |r| {
            Ok(ServiceSpec {
                name: r.get(0)?,
                port: r.get(1)?,
                health_path: r.get(2)?,
                kind: ServiceKind::parse(&r.get::<_, String>(3)?).unwrap_or(ServiceKind::Tcp),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Adds all of `specs` in one transaction.
    pub fn add_services(&mut self, specs: &[ServiceSpec]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        for s in specs {
            tx.execute(
                "INSERT INTO services (name, port, health, kind, added_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![s.name, s.port, s.health_path, s.kind.as_str(), coral_proto::now_ms()],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn remove_service(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .execute("DELETE FROM services WHERE name = ?1", [name])?
            > 0)
    }
}
