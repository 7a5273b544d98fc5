//! The DuckDB telemetry store, used by the agent (its recent window) and by
//! the colony (the aggregate). One writer thread owns the connection: rows
//! arrive over a channel, are appended in batches, and each caller's future
//! resolves only once its rows are committed. A retention pass deletes rows
//! older than the window.
//!
//! Health-probe samples are the first telemetry; later kinds get their own
//! tables and migrations here.

use coral_proto::HealthSample;
use duckdb::types::{TimeUnit, Value};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Schema versions, applied in order; the store records the highest applied.
const MIGRATIONS: &[&str] = &[
    // 1: health-probe samples.
    "CREATE TABLE health_samples (
        agent_id   VARCHAR NOT NULL,
        seq        UBIGINT NOT NULL,
        ts         TIMESTAMP NOT NULL,
        service    VARCHAR NOT NULL,
        up         BOOLEAN NOT NULL,
        latency_us UBIGINT NOT NULL,
        error      VARCHAR
    );",
];

/// Rows gathered into one append before committing.
const MAX_BATCH_ROWS: usize = 10_000;
/// How long the writer waits for more rows before committing a batch.
const BATCH_WINDOW: Duration = Duration::from_millis(50);
/// How often rows past the retention window are deleted.
const RETENTION_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error(
        "telemetry store {path} cannot be opened: {reason} (if it is damaged, move it aside; Coral never overwrites it)"
    )]
    Open { path: PathBuf, reason: String },
    #[error(
        "telemetry store {path} has schema version {found}, newer than this coral ({known}); upgrade coral"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        known: usize,
    },
    #[error("telemetry write failed: {0}")]
    Write(String),
    #[error("telemetry store is closed")]
    Closed,
}

/// One sample attributed to an agent.
#[derive(Debug, Clone)]
pub struct SampleRow {
    pub agent_id: String,
    pub sample: HealthSample,
}

enum Cmd {
    Insert(Vec<SampleRow>, oneshot::Sender<Result<(), String>>),
    Count(oneshot::Sender<Result<u64, String>>),
    Retain(oneshot::Sender<Result<u64, String>>),
    MaxSeq(String, oneshot::Sender<Result<u64, String>>),
    /// Commit what is queued before this and stop.
    Shutdown,
}

/// Handle to the store; cheap to clone, the writer stops when the last
/// handle is dropped (after committing what it holds).
#[derive(Clone)]
pub struct Telemetry {
    tx: mpsc::Sender<Cmd>,
    path: PathBuf,
}

/// Joins the writer thread when dropped by its owner.
pub struct TelemetryGuard {
    tx: mpsc::Sender<Cmd>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        let _ = self.tx.send(Cmd::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Telemetry {
    /// Opens (creating if missing) and migrates the store, then starts its
    /// writer thread. A file that is not a DuckDB database is refused, never
    /// rewritten.
    pub fn open(
        path: &Path,
        retention: Duration,
    ) -> Result<(Telemetry, TelemetryGuard), TelemetryError> {
        let open_err = |e: duckdb::Error| TelemetryError::Open {
            path: path.to_path_buf(),
            reason: e.to_string().lines().next().unwrap_or("").to_string(),
        };
        let conn = duckdb::Connection::open(path).map_err(open_err)?;
        migrate(&conn, path).map_err(|e| match e {
            MigrateError::Db(e) => open_err(e),
            MigrateError::TooNew(found) => TelemetryError::TooNew {
                path: path.to_path_buf(),
                found,
                known: MIGRATIONS.len(),
            },
        })?;
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("telemetry-writer".into())
            .spawn(move || writer(conn, rx, retention))
            .map_err(|e| TelemetryError::Write(e.to_string()))?;
        Ok((
            Telemetry {
                tx: tx.clone(),
                path: path.to_path_buf(),
            },
            TelemetryGuard {
                tx,
                thread: Some(thread),
            },
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends rows; resolves once they are committed.
    pub async fn insert(&self, rows: Vec<SampleRow>) -> Result<(), TelemetryError> {
        if rows.is_empty() {
            return Ok(());
        }
        self.ask(|done| Cmd::Insert(rows, done)).await
    }

    /// Number of health samples held.
    pub async fn sample_count(&self) -> Result<u64, TelemetryError> {
        self.ask(Cmd::Count).await
    }

    /// The highest sample seq stored for `agent_id` (0 if none).
    pub async fn max_seq(&self, agent_id: &str) -> Result<u64, TelemetryError> {
        let agent = agent_id.to_string();
        self.ask(|done| Cmd::MaxSeq(agent, done)).await
    }

    /// Deletes rows older than the retention window now; returns how many.
    pub async fn apply_retention(&self) -> Result<u64, TelemetryError> {
        self.ask(Cmd::Retain).await
    }

    /// Sends a command to the writer thread and waits for its answer.
    async fn ask<T>(
        &self,
        cmd: impl FnOnce(oneshot::Sender<Result<T, String>>) -> Cmd,
    ) -> Result<T, TelemetryError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(cmd(done))
            .map_err(|_| TelemetryError::Closed)?;
        wait.await
            .map_err(|_| TelemetryError::Closed)?
            .map_err(TelemetryError::Write)
    }
}

enum MigrateError {
    Db(duckdb::Error),
    TooNew(i64),
}

impl From<duckdb::Error> for MigrateError {
    fn from(e: duckdb::Error) -> Self {
        MigrateError::Db(e)
    }
}

fn migrate(conn: &duckdb::Connection, _path: &Path) -> Result<(), MigrateError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS coral_schema (version BIGINT NOT NULL, applied_at TIMESTAMP NOT NULL DEFAULT current_timestamp);",
    )?;
    let current: i64 = conn.query_row(
        "SELECT coalesce(max(version), 0) FROM coral_schema",
        [],
        |r| r.get(0),
    )?;
    if current > MIGRATIONS.len() as i64 {
        return Err(MigrateError::TooNew(current));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = i as i64 + 1;
        conn.execute_batch(&format!(
            "BEGIN; {sql} INSERT INTO coral_schema (version) VALUES ({version}); COMMIT;"
        ))?;
        tracing::info!(version, "telemetry schema migrated");
    }
    Ok(())
}

fn writer(conn: duckdb::Connection, rx: mpsc::Receiver<Cmd>, retention: Duration) {
    let mut last_retention = Instant::now();
    let mut stopping = false;
    while !stopping {
        let first = match rx.recv_timeout(RETENTION_EVERY) {
            Ok(cmd) => Some(cmd),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let mut rows: Vec<SampleRow> = Vec::new();
        let mut waiters = Vec::new();
        let mut others = Vec::new();
        let deadline = Instant::now() + BATCH_WINDOW;
        let mut next = first;
        while let Some(cmd) = next.take() {
            match cmd {
                Cmd::Insert(mut r, done) => {
                    rows.append(&mut r);
                    waiters.push(done);
                }
                Cmd::Shutdown => {
                    stopping = true;
                    break;
                }
                other => others.push(other),
            }
            if rows.len() >= MAX_BATCH_ROWS || rows.is_empty() {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            next = rx.recv_timeout(left).ok();
        }
        if !rows.is_empty() {
            let result = append(&conn, &rows).map_err(|e| e.to_string());
            if let Err(e) = &result {
                tracing::error!(error = %e, rows = rows.len(), "telemetry append failed");
            }
            for w in waiters {
                let _ = w.send(result.clone());
            }
        }
        for cmd in others {
            match cmd {
                Cmd::Count(done) => {
                    let n = conn
                        .query_row("SELECT count(*) FROM health_samples", [], |r| {
                            r.get::<_, i64>(0)
                        })
                        .map(|n| n as u64)
                        .map_err(|e| e.to_string());
                    let _ = done.send(n);
                }
                Cmd::MaxSeq(agent, done) => {
                    let n = conn
                        .query_row(
                            "SELECT coalesce(max(seq), 0) FROM health_samples WHERE agent_id = ?",
                            duckdb::params![agent],
                            |r| r.get::<_, u64>(0),
                        )
                        .map_err(|e| e.to_string());
                    let _ = done.send(n);
                }
                Cmd::Retain(done) => {
                    let _ = done.send(retain(&conn, retention));
                    last_retention = Instant::now();
                }
                Cmd::Insert(..) | Cmd::Shutdown => unreachable!("handled while batching"),
            }
        }
        if last_retention.elapsed() >= RETENTION_EVERY {
            if let Err(e) = retain(&conn, retention) {
                tracing::warn!(error = %e, "telemetry retention failed");
            }
            last_retention = Instant::now();
        }
    }
    if let Err(e) = conn.execute_batch("CHECKPOINT;") {
        tracing::warn!(error = %e, "telemetry checkpoint at close failed");
    }
}

fn append(conn: &duckdb::Connection, rows: &[SampleRow]) -> duckdb::Result<()> {
    let mut app = conn.appender("health_samples")?;
    for row in rows {
        let s = &row.sample;
        app.append_row(duckdb::params![
            row.agent_id,
            s.seq,
            Value::Timestamp(TimeUnit::Millisecond, s.ts_ms),
            s.service,
            s.up,
            s.latency_us,
            s.error,
        ])?;
    }
    app.flush()
}

fn retain(conn: &duckdb::Connection, retention: Duration) -> Result<u64, String> {
    let cutoff = coral_proto::now_ms() - retention.as_millis() as i64;
    conn.execute(
        "DELETE FROM health_samples WHERE ts < make_timestamp(?::BIGINT * 1000)",
        duckdb::params![cutoff],
    )
    .map(|n| n as u64)
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(seq: u64, ts_ms: i64) -> SampleRow {
        SampleRow {
            agent_id: "a1".into(),
            sample: HealthSample {
                seq,
                ts_ms,
                service: "api".into(),
                up: seq.is_multiple_of(2),
                latency_us: 100 + seq,
                error: None,
            },
        }
    }

    #[tokio::test]
    async fn rows_round_trip_and_retention_deletes_old_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.duckdb");
        let now = coral_proto::now_ms();
        {
            let (t, _guard) = Telemetry::open(&path, Duration::from_secs(3600)).unwrap();
            let rows: Vec<_> = (1..=1000).map(|i| sample(i, now - 10)).collect();
            t.insert(rows).await.unwrap();
            t.insert(vec![sample(1001, now - 2 * 3600 * 1000)])
                .await
                .unwrap();
            assert_eq!(t.sample_count().await.unwrap(), 1001);
            assert_eq!(t.max_seq("a1").await.unwrap(), 1001);
            assert_eq!(t.max_seq("nobody").await.unwrap(), 0);
            assert_eq!(t.apply_retention().await.unwrap(), 1);
            assert_eq!(t.sample_count().await.unwrap(), 1000);
        }
        // Reopening keeps the data and does not re-run migrations.
        let (t, _guard) = Telemetry::open(&path, Duration::from_secs(3600)).unwrap();
        assert_eq!(t.sample_count().await.unwrap(), 1000);
    }

    #[test]
    fn refuses_and_keeps_a_corrupt_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.duckdb");
        let junk = vec![0x5au8; 8192];
        std::fs::write(&path, &junk).unwrap();
        let err = Telemetry::open(&path, Duration::from_secs(60))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("move it aside"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), junk);
    }
}
