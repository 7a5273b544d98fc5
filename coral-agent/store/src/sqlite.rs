//! Opening a control-plane SQLite file: refuse damaged or too-new files
//! (never overwrite them), apply versioned migrations in order.

use rusqlite::Connection;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "state file {path} cannot be used: {reason} (if it is damaged, move it aside; Coral never overwrites it)"
    )]
    Open { path: PathBuf, reason: String },
    #[error(
        "state file {path} has schema version {found}, newer than this coral ({known}); upgrade coral"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        known: usize,
    },
    #[error("state store failed: {0}")]
    Sql(#[from] rusqlite::Error),
}

/// Opens `path` (creating it if missing) and brings its schema to the latest
/// of `migrations` (version N is `migrations[N-1]`, tracked in `user_version`).
pub fn open_migrated(path: &Path, migrations: &[&str]) -> Result<Connection, StoreError> {
    let bad = |e: rusqlite::Error| StoreError::Open {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut conn = Connection::open(path).map_err(bad)?;
    // The first read fails on a file that is not a SQLite database.
    let found: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(bad)?;
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(bad)?;
    if check != "ok" {
        return Err(StoreError::Open {
            path: path.to_path_buf(),
            reason: format!("integrity check failed: {check}"),
        });
    }
    if found > migrations.len() as i64 {
        return Err(StoreError::TooNew {
            path: path.to_path_buf(),
            found,
            known: migrations.len(),
        });
    }
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(bad)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(bad)?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(bad)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    for (i, sql) in migrations.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
        tx.commit()?;
        tracing::info!(file = %path.display(), version = i + 1, "state schema migrated");
    }
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_once_and_refuses_junk_without_touching_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let m = ["CREATE TABLE a (x INTEGER);", "CREATE TABLE b (y INTEGER);"];
        open_migrated(&path, &m[..1]).unwrap();
        let c = open_migrated(&path, &m).unwrap();
        let v: i64 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, 2);
        drop(c);
        assert!(matches!(
            open_migrated(&path, &m[..1]),
            Err(StoreError::TooNew { found: 2, .. })
        ));

        let junk_path = dir.path().join("junk.db");
        let junk = b"this is not a database, it is a text file that is long enough".repeat(100);
        std::fs::write(&junk_path, &junk).unwrap();
        let err = open_migrated(&junk_path, &m).unwrap_err().to_string();
        assert!(
            err.contains("junk.db") && err.contains("move it aside"),
            "{err}"
        );
        assert_eq!(std::fs::read(&junk_path).unwrap(), junk);
    }
}
