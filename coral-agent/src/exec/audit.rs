//! The write-ahead exec audit log in `agent.db`. Its connection runs with
//! `synchronous = FULL`: a record is on disk (WAL fsynced) when
//! [`AuditLog::begin`] returns, before the command is started.

use coral_proto::{ExecAuditRecord, ExecOutcome};
use coral_store::sqlite::{StoreError, open_migrated};
use rusqlite::{Connection, params};
use std::path::Path;
use std::sync::Mutex;

/// The first half of a record, written before anything runs.
pub(crate) struct Begin<'a> {
    pub exec_id: &'a str,
    pub ts_ms: i64,
    pub caller: &'a str,
    pub origin: &'a str,
    pub service: &'a str,
    pub argv: &'a [String],
    pub program: Option<&'a str>,
    pub allowed: bool,
    pub rule: Option<&'a str>,
    pub reason: &'a str,
    pub timeout_ms: u64,
    pub max_output_bytes: u64,
}

pub(crate) struct AuditLog {
    conn: Mutex<Connection>,
}

impl AuditLog {
    /// Opens the log (the schema is migrated by `AgentDb::open`) and
    /// marks records of commands that were running when a previous agent
    /// process died as interrupted. Returns how many were.
    pub(crate) fn open(path: &Path) -> Result<(AuditLog, usize), StoreError> {
        let conn = open_migrated(path, crate::state::MIGRATIONS)?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        let interrupted = conn.execute(
            "UPDATE exec_audit SET interrupted = 1
             WHERE decision = 'allow' AND finished IS NULL AND interrupted = 0",
            [],
        )?;
        Ok((
            AuditLog {
                conn: Mutex::new(conn),
            },
            interrupted,
        ))
    }

    /// Commits the attempt (allowed or denied) durably.
    pub(crate) fn begin(&self, b: &Begin<'_>) -> Result<(), StoreError> {
        let argv = serde_json::to_string(b.argv).expect("argv serialises");
        self.conn.lock().expect("audit lock").execute(
            "INSERT INTO exec_audit (exec_id, ts, caller, origin, service, argv, program, decision,
                rule, reason, timeout_ms, max_output_bytes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                b.exec_id,
                b.ts_ms,
                b.caller,
                b.origin,
                b.service,
                argv,
                b.program,
                if b.allowed { "allow" } else { "deny" },
                b.rule,
                b.reason,
                b.timeout_ms as i64,
                b.max_output_bytes as i64,
            ],
        )?;
        Ok(())
    }

    /// Commits how the command ended.
    pub(crate) fn finish(
        &self,
        exec_id: &str,
        finished_ms: i64,
        o: &ExecOutcome,
    ) -> Result<(), StoreError> {
        self.conn.lock().expect("audit lock").execute(
            "UPDATE exec_audit SET finished = ?2, exit_code = ?3, signal = ?4, duration_us = ?5,
                output_bytes = ?6, truncated = ?7, timed_out = ?8, cancelled = ?9, error = ?10
             WHERE exec_id = ?1",
            params![
                exec_id,
                finished_ms,
                o.exit_code,
                o.signal,
                o.duration_us as i64,
                o.output_bytes as i64,
                o.truncated,
                o.timed_out,
                o.cancelled,
                o.error,
            ],
        )?;
        Ok(())
    }

    /// Records since `since_ms`, newest first.
    pub(crate) fn query(
        &self,
        agent_id: &str,
        agent_name: &str,
        service: Option<&str>,
        since_ms: i64,
        limit: u32,
    ) -> Result<Vec<ExecAuditRecord>, StoreError> {
        let conn = self.conn.lock().expect("audit lock");
        let mut stmt = conn.prepare(
            "SELECT exec_id, ts, caller, origin, service, argv, program, decision, rule, reason,
                    finished, exit_code, signal, duration_us, output_bytes, truncated, timed_out,
                    cancelled, error, interrupted
             FROM exec_audit
             WHERE ts >= ?1 AND (?2 IS NULL OR service = ?2)
             ORDER BY ts DESC, rowid DESC LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![since_ms, service, limit], |r| {
            let argv: String = r.get(5)?;
            let decision: String = r.get(7)?;
            let finished: Option<i64> = r.get(10)?;
            let interrupted: bool = r.get(19)?;
            let state = match (decision.as_str(), finished, interrupted) {
                ("deny", _, _) => "denied",
                (_, Some(_), _) => "finished",
                (_, None, true) => "interrupted",
                _ => "running",
            };
            let outcome = match finished {
                Some(_) => Some(ExecOutcome {
                    exit_code: r.get(11)?,
                    signal: r.get(12)?,
                    duration_us: r.get::<_, Option<i64>>(13)?.unwrap_or(0) as u64,
                    output_bytes: r.get::<_, Option<i64>>(14)?.unwrap_or(0) as u64,
                    truncated: r.get::<_, Option<bool>>(15)?.unwrap_or(false),
                    timed_out: r.get::<_, Option<bool>>(16)?.unwrap_or(false),
                    cancelled: r.get::<_, Option<bool>>(17)?.unwrap_or(false),
                    error: r.get(18)?,
                }),
                None => None,
            };
            Ok(ExecAuditRecord {
                exec_id: r.get(0)?,
                agent_id: agent_id.to_string(),
                agent_name: agent_name.to_string(),
                ts_ms: r.get(1)?,
                caller: r.get(2)?,
                origin: r.get(3)?,
                service: r.get(4)?,
                argv: serde_json::from_str(&argv).unwrap_or_default(),
                program: r.get(6)?,
                decision,
                rule: r.get(8)?,
                reason: r.get(9)?,
                state: state.to_string(),
                finished_ms: finished,
                outcome,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn begin_is_durable_and_restart_marks_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.db");
        crate::state::AgentDb::open(&path).unwrap();
        let (log, n) = AuditLog::open(&path).unwrap();
        assert_eq!(n, 0);
        let argv = vec!["/usr/bin/sleep".to_string(), "9".to_string()];
        let b = Begin {
            exec_id: "e1",
            ts_ms: 10,
            caller: "uid:0",
            origin: "test",
            service: "api",
            argv: &argv,
            program: Some("/usr/bin/sleep"),
            allowed: true,
            rule: Some("sleep"),
            reason: "allow by rule",
            timeout_ms: 1000,
            max_output_bytes: 10,
        };
        log.begin(&b).unwrap();
        log.begin(&Begin {
            exec_id: "e2",
            allowed: false,
            ..b
        })
        .unwrap();
        let sync: i64 = log
            .conn
            .lock()
            .unwrap()
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2, "FULL");
        drop(log);
        let (log, n) = AuditLog::open(&path).unwrap();
        assert_eq!(n, 1);
        let rows = log.query("a", "h", Some("api"), 0, 10).unwrap();
        let states: Vec<_> = rows
            .iter()
            .map(|r| (r.exec_id.as_str(), r.state.as_str()))
            .collect();
        assert!(states.contains(&("e1", "interrupted")) && states.contains(&("e2", "denied")));
        assert_eq!(rows[0].argv.len(), 2);
    }
}
