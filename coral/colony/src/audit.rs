//! The colony's own audit table in `colony.db`: what the colony did on
//! someone's behalf (exec requests it forwarded; MCP tool calls). Rows are
//! committed with `synchronous = FULL` before the action is taken.
//! `coral audit` shows them beside the agents' exec audit logs.

use coral_proto::ColonyAuditRecord;
use coral_store::sqlite::StoreError;
use rusqlite::{Connection, params};
use std::path::Path;
use std::sync::Mutex;

pub struct AuditLog {
    conn: Mutex<Connection>,
}

impl AuditLog {
    /// Opens its own connection to `colony.db` (migrated by `Registry::open`).
    pub fn open(path: &Path) -> Result<AuditLog, StoreError> {
        let conn = super::registry::Registry::open_connection(path)?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        Ok(AuditLog {
            conn: Mutex::new(conn),
        })
    }

    /// Records one action durably and returns its id. `actor` is who asked
    /// (e.g. `uid:1000 user:alice`), `action` what (e.g. `exec`,
    /// `mcp:coral_exec`), `detail` the particulars, `cli_equivalent` the
    /// `coral ...` command that does the same, when there is one.
    pub fn record(
        &self,
        actor: &str,
        action: &str,
        detail: &str,
        cli_equivalent: Option<&str>,
    ) -> Result<i64, StoreError> {
        let conn = self.conn.lock().expect("audit lock");
        conn.execute(
            "INSERT INTO audit (ts, actor, action, detail, cli_equivalent) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![coral_proto::now_ms(), actor, action, detail, cli_equivalent],
        )?;
        Ok(conn.last_insert_rowid())
    }

    /// Rows since `since_ms`, newest first.
    pub fn since(&self, since_ms: i64, limit: u32) -> Result<Vec<ColonyAuditRecord>, StoreError> {
        let conn = self.conn.lock().expect("audit lock");
        let mut stmt = conn.prepare(
            "SELECT id, ts, actor, action, detail, cli_equivalent FROM audit
             WHERE ts >= ?1 ORDER BY ts DESC, id DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![since_ms, limit], |r| {
            Ok(ColonyAuditRecord {
                id: r.get(0)?,
                ts_ms: r.get(1)?,
                actor: r.get(2)?,
                action: r.get(3)?,
                detail: r.get(4)?,
                cli_equivalent: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_lists_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("colony.db");
        super::super::registry::Registry::open(&path).unwrap();
        let log = AuditLog::open(&path).unwrap();
        let a = log
            .record(
                "uid:1000",
                "mcp:coral_query",
                "traces of api",
                Some("coral query traces --service api"),
            )
            .unwrap();
        let b = log
            .record("uid:1000", "exec", "api: ss -tnp", None)
            .unwrap();
        assert!(b > a);
        let rows = log.since(0, 10).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].id, b);
        assert_eq!(
            rows[1].cli_equivalent.as_deref(),
            Some("coral query traces --service api")
        );
    }
}
