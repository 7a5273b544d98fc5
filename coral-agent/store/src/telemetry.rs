//! The DuckDB telemetry store, used by the agent (its recent window) and by
//! the colony (the aggregate). One writer thread owns the connection: rows
//! arrive over a channel, are appended in batches, and each caller's future
//! resolves only once its rows are committed. A retention pass deletes rows
//! older than the window.
//!
//! Tables: health-probe samples, and the OTLP signals (spans, metric points,
//! log records). Each kind has its own row type and appender.

use coral_proto::HealthSample;
use duckdb::arrow::array::{
    ArrayRef, Float64Array, Int32Array, Int64Array, StringArray, TimestampMicrosecondArray,
    UInt64Array,
};
use duckdb::arrow::record_batch::RecordBatch;
use duckdb::types::{TimeUnit, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
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
    // 2: OTLP spans, metric points and log records. Ids are lowercase hex;
    // attributes, events and resources are JSON text. `seq` numbers each
    // agent's rows per kind, for forwarding to the colony exactly once.
    "CREATE TABLE spans (
        agent_id       VARCHAR NOT NULL,
        seq            UBIGINT NOT NULL,
        trace_id       VARCHAR NOT NULL,
        span_id        VARCHAR NOT NULL,
        parent_span_id VARCHAR,
        service        VARCHAR NOT NULL,
        name           VARCHAR NOT NULL,
        kind           VARCHAR NOT NULL,
        start_ts       TIMESTAMP NOT NULL,
        duration_us    BIGINT NOT NULL,
        status_code    VARCHAR NOT NULL,
        status_message VARCHAR NOT NULL,
        attributes     VARCHAR NOT NULL,
        events         VARCHAR NOT NULL,
        resource       VARCHAR NOT NULL,
        scope          VARCHAR NOT NULL
    );
    CREATE TABLE metric_points (
        agent_id   VARCHAR NOT NULL,
        seq        UBIGINT NOT NULL,
        service    VARCHAR NOT NULL,
        name       VARCHAR NOT NULL,
        unit       VARCHAR NOT NULL,
        kind       VARCHAR NOT NULL,
        ts         TIMESTAMP NOT NULL,
        value      DOUBLE,
        count      UBIGINT,
        sum        DOUBLE,
        attributes VARCHAR NOT NULL
    );
    CREATE TABLE log_records (
        agent_id        VARCHAR NOT NULL,
        seq             UBIGINT NOT NULL,
        service         VARCHAR NOT NULL,
        ts              TIMESTAMP NOT NULL,
        severity_number INTEGER NOT NULL,
        severity_text   VARCHAR NOT NULL,
        body            VARCHAR NOT NULL,
        trace_id        VARCHAR,
        span_id         VARCHAR,
        attributes      VARCHAR NOT NULL
    );
    -- The last seq given to each kind, so numbering survives retention.
    CREATE TABLE seq_counters (kind VARCHAR PRIMARY KEY, last UBIGINT NOT NULL);",
    // 3: eBPF HTTP RED aggregates per service, method, route and second
    // (minutes before version 0.2; partial rows of one bucket add up), and
    // connection-map edges.
    "CREATE TABLE http_red (
        agent_id      VARCHAR NOT NULL,
        seq           UBIGINT NOT NULL,
        ts            TIMESTAMP NOT NULL,
        service       VARCHAR NOT NULL,
        method        VARCHAR NOT NULL,
        route         VARCHAR NOT NULL,
        count         UBIGINT NOT NULL,
        errors        UBIGINT NOT NULL,
        client_errors UBIGINT NOT NULL,
        bytes_in      UBIGINT NOT NULL,
        bytes_out     UBIGINT NOT NULL,
        sum_us        UBIGINT NOT NULL,
        max_us        UBIGINT NOT NULL,
        hist          VARCHAR NOT NULL
    );
    CREATE TABLE conn_edges (
        agent_id       VARCHAR NOT NULL,
        seq            UBIGINT NOT NULL,
        ts             TIMESTAMP NOT NULL,
        src            VARCHAR NOT NULL,
        src_pid        UINTEGER NOT NULL,
        dst_addr       VARCHAR NOT NULL,
        dst_service    VARCHAR,
        connections    UBIGINT NOT NULL,
        failures       UBIGINT NOT NULL,
        bytes_sent     UBIGINT NOT NULL,
        bytes_received UBIGINT NOT NULL,
        rtt_sum_us     UBIGINT NOT NULL,
        rtt_count      UBIGINT NOT NULL,
        rtt_max_us     UBIGINT NOT NULL
    );",
    // 4: calls seen by live-debugging probes (issue 12). `ts` is the entry
    // (for retention and time ranges); `start_ns` keeps its nanoseconds.
    // Values and stacks are JSON text.
    "CREATE TABLE debug_calls (
        agent_id    VARCHAR NOT NULL,
        seq         UBIGINT NOT NULL,
        ts          TIMESTAMP NOT NULL,
        service     VARCHAR NOT NULL,
        session     VARCHAR NOT NULL,
        call_seq    UBIGINT NOT NULL,
        pid         UINTEGER NOT NULL,
        function    VARCHAR NOT NULL,
        tid         UINTEGER NOT NULL,
        goroutine   UBIGINT NOT NULL,
        start_ns    BIGINT NOT NULL,
        duration_ns UBIGINT,
        args        VARCHAR NOT NULL,
        results     VARCHAR NOT NULL,
        stack       VARCHAR NOT NULL
    );",
    // 5: failed requests by the protocol's own code (gRPC status,
    // SQLSTATE), issue 14.
    // Edges gain the parsed protocol and the requests on them.
    "ALTER TABLE http_red ADD COLUMN error_codes VARCHAR NOT NULL DEFAULT '';
    ALTER TABLE conn_edges ADD COLUMN protocol VARCHAR NOT NULL DEFAULT '';
    ALTER TABLE conn_edges ADD COLUMN requests UBIGINT NOT NULL DEFAULT 0;
    ALTER TABLE conn_edges ADD COLUMN request_errors UBIGINT NOT NULL DEFAULT 0;
    ALTER TABLE conn_edges ADD COLUMN request_sum_us UBIGINT NOT NULL DEFAULT 0;
    ALTER TABLE conn_edges ADD COLUMN request_max_us UBIGINT NOT NULL DEFAULT 0;",
    // 6: PostgreSQL rows carry the connection's user and database, so a
    // slow statement seen on the wire can be planned as them (issue 14).
    "ALTER TABLE http_red ADD COLUMN db_user VARCHAR NOT NULL DEFAULT '';
    ALTER TABLE http_red ADD COLUMN db_name VARCHAR NOT NULL DEFAULT '';",
];

/// Rows gathered into one append before committing.
const MAX_BATCH_ROWS: usize = 10_000;
/// How long the writer waits for more rows before committing a batch.
const BATCH_WINDOW: Duration = Duration::from_millis(50);
/// An insert at least this large is a batch already (a forwarded push):
/// it commits without waiting for more.
const BATCH_ALREADY: usize = 1_000;
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

pub use coral_proto::{
    EdgeRecord, LogRecord, MetricRecord, ProbeCallRecord, RedRecord, SignalKind, SpanRecord,
};

/// Rows of one kind, appended together.
#[derive(Debug, Clone)]
pub enum Batch {
    Samples(Vec<SampleRow>),
    Spans(Vec<SpanRecord>),
    Metrics(Vec<MetricRecord>),
    Logs(Vec<LogRecord>),
    Red(Vec<RedRecord>),
    Edges(Vec<EdgeRecord>),
    Calls(Vec<ProbeCallRecord>),
}

impl From<coral_proto::Signals> for Batch {
    fn from(s: coral_proto::Signals) -> Batch {
        match s {
            coral_proto::Signals::Spans(v) => Batch::Spans(v),
            coral_proto::Signals::Metrics(v) => Batch::Metrics(v),
            coral_proto::Signals::Logs(v) => Batch::Logs(v),
            coral_proto::Signals::Red(v) => Batch::Red(v),
            coral_proto::Signals::Edges(v) => Batch::Edges(v),
            coral_proto::Signals::Calls(v) => Batch::Calls(v),
        }
    }
}

impl Batch {
    pub fn len(&self) -> usize {
        match self {
            Batch::Samples(v) => v.len(),
            Batch::Spans(v) => v.len(),
            Batch::Metrics(v) => v.len(),
            Batch::Logs(v) => v.len(),
            Batch::Red(v) => v.len(),
            Batch::Edges(v) => v.len(),
            Batch::Calls(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

type ReadJob = Box<dyn FnOnce(&duckdb::Connection) + Send>;

/// Kept by the writer, read without a query: rows per table (samples,
/// spans, metric points, logs, RED rows, edges, debug calls) and the last
/// seq given out per kind (in `SignalKind::ALL` order).
#[derive(Default)]
struct Tally {
    rows: [AtomicU64; 7],
    last_seq: [AtomicU64; 6],
    /// Signalled after each commit of forwarded kinds (not samples).
    committed: tokio::sync::Notify,
}

/// Tables in `Tally::rows` order, with their time column.
const TABLES: [(&str, &str); 7] = [
    ("health_samples", "ts"),
    ("spans", "start_ts"),
    ("metric_points", "ts"),
    ("log_records", "ts"),
    ("http_red", "ts"),
    ("conn_edges", "ts"),
    ("debug_calls", "ts"),
];

impl Tally {
    fn load(conn: &duckdb::Connection, seqs: Seqs) -> duckdb::Result<Tally> {
        let t = Tally::default();
        for (i, (table, _)) in TABLES.iter().enumerate() {
            let n: u64 =
                conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))?;
            t.rows[i].store(n, Ordering::Relaxed);
        }
        t.set_seqs(seqs);
        Ok(t)
    }

    fn set_seqs(&self, s: Seqs) {
        for (i, v) in [s.spans, s.metrics, s.logs, s.red, s.edges, s.calls]
            .into_iter()
            .enumerate()
        {
            self.last_seq[i].store(v, Ordering::Relaxed);
        }
    }
}

enum Cmd {
    Insert(Batch, oneshot::Sender<Result<(), String>>),
    /// Delete rows older than the window now; answers how many.
    Retain(Duration, oneshot::Sender<Result<u64, String>>),
    /// Commit what is queued before this and stop.
    Shutdown,
}

/// Handle to the store; cheap to clone, the writer stops when the last
/// handle is dropped (after committing what it holds).
#[derive(Clone)]
pub struct Telemetry {
    tx: mpsc::Sender<Cmd>,
    /// Reads go to their own thread and connection, so a long query never
    /// holds up ingestion; they see everything committed before they start.
    reads: mpsc::Sender<Option<ReadJob>>,
    tally: Arc<Tally>,
}

/// Joins the writer thread when dropped by its owner.
pub struct TelemetryGuard {
    tx: mpsc::Sender<Cmd>,
    reads: mpsc::Sender<Option<ReadJob>>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        let _ = self.tx.send(Cmd::Shutdown);
        let _ = self.reads.send(None);
        for t in self.threads.drain(..) {
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
        Self::open_with(path, retention, None)
    }

    /// [`Telemetry::open`] with DuckDB limited to `threads` worker threads
    /// (the agent runs with one: it is a guest on its host, and one thread
    /// appends faster on a busy core than a pool that contends for it).
    pub fn open_with(
        path: &Path,
        retention: Duration,
        threads: Option<usize>,
    ) -> Result<(Telemetry, TelemetryGuard), TelemetryError> {
        let open_err = |e: duckdb::Error| TelemetryError::Open {
            path: path.to_path_buf(),
            reason: e.to_string().lines().next().unwrap_or("").to_string(),
        };
        let conn = duckdb::Connection::open(path).map_err(open_err)?;
        // Checkpoint (compress the appended rows into the file) every 64 MB
        // of WAL rather than DuckDB's 16 MB: fewer, larger checkpoints
        // under sustained ingestion.
        conn.execute_batch("SET checkpoint_threshold = '64MB';")
            .map_err(open_err)?;
        if let Some(n) = threads {
            conn.execute_batch(&format!("SET threads = {};", n.max(1)))
                .map_err(open_err)?;
        }
        migrate(&conn, path).map_err(|e| match e {
            MigrateError::Db(e) => open_err(e),
            MigrateError::TooNew(found) => TelemetryError::TooNew {
                path: path.to_path_buf(),
                found,
                known: MIGRATIONS.len(),
            },
        })?;
        let seqs = Seqs::load(&conn).map_err(open_err)?;
        let tally = Arc::new(Tally::load(&conn, seqs).map_err(open_err)?);
        let writer_tally = tally.clone();
        let reader = conn.try_clone().map_err(open_err)?;
        let (reads, read_rx) = mpsc::channel::<Option<ReadJob>>();
        let read_thread = std::thread::Builder::new()
            .name("telemetry-reader".into())
            .spawn(move || {
                // `None` (from the guard) or no handles left: stop.
                while let Ok(Some(job)) = read_rx.recv() {
                    job(&reader);
                }
            })
            .map_err(|e| TelemetryError::Write(e.to_string()))?;
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("telemetry-writer".into())
            .spawn(move || writer(conn, rx, retention, seqs, writer_tally))
            .map_err(|e| TelemetryError::Write(e.to_string()))?;
        Ok((
            Telemetry {
                tx: tx.clone(),
                reads: reads.clone(),
                tally,
            },
            TelemetryGuard {
                tx,
                reads: reads.clone(),
                threads: vec![thread, read_thread],
            },
        ))
    }

    /// Appends health samples; resolves once they are committed.
    pub async fn insert(&self, rows: Vec<SampleRow>) -> Result<(), TelemetryError> {
        self.insert_batch(Batch::Samples(rows)).await
    }

    /// Appends rows of any kind; resolves once they are committed.
    pub async fn insert_batch(&self, batch: Batch) -> Result<(), TelemetryError> {
        if batch.is_empty() {
            return Ok(());
        }
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Cmd::Insert(batch, done))
            .map_err(|_| TelemetryError::Closed)?;
        wait.await
            .map_err(|_| TelemetryError::Closed)?
            .map_err(TelemetryError::Write)
    }

    /// Runs `f` against the store on the reader thread and returns its answer.
    pub async fn query<T: Send + 'static>(
        &self,
        f: impl FnOnce(&duckdb::Connection) -> duckdb::Result<T> + Send + 'static,
    ) -> Result<T, TelemetryError> {
        let (done, wait) = oneshot::channel();
        let job: ReadJob = Box::new(move |conn| {
            let _ = done.send(f(conn).map_err(|e| e.to_string()));
        });
        self.reads
            .send(Some(job))
            .map_err(|_| TelemetryError::Closed)?;
        wait.await
            .map_err(|_| TelemetryError::Closed)?
            .map_err(TelemetryError::Write)
    }

    /// Rows held per table (kept by the writer: no query).
    pub fn counts(&self) -> coral_proto::StoredCounts {
        let n = |i: usize| self.tally.rows[i].load(Ordering::Relaxed);
        coral_proto::StoredCounts {
            samples: n(0),
            spans: n(1),
            metric_points: n(2),
            logs: n(3),
            red: n(4),
            edges: n(5),
            calls: n(6),
        }
    }

    /// Resolves once rows of a forwarded kind were committed since the last
    /// call resolved (a commit with nobody waiting is remembered). For one
    /// waiter: the agent's forwarder.
    pub async fn committed(&self) {
        self.tally.committed.notified().await
    }

    /// The last seq this store gave to a row of `kind` (no query).
    pub fn last_seq(&self, kind: SignalKind) -> u64 {
        let i = match kind {
            SignalKind::Spans => 0,
            SignalKind::Metrics => 1,
            SignalKind::Logs => 2,
            SignalKind::Red => 3,
            SignalKind::Edges => 4,
            SignalKind::Calls => 5,
        };
        self.tally.last_seq[i].load(Ordering::Relaxed)
    }

    /// The highest sample seq stored for `agent_id` (0 if none).
    pub async fn max_seq(&self, agent_id: &str) -> Result<u64, TelemetryError> {
        let agent = agent_id.to_string();
        self.query(move |c| {
            c.query_row(
                "SELECT coalesce(max(seq), 0) FROM health_samples WHERE agent_id = ?",
                duckdb::params![agent],
                |r| r.get(0),
            )
        })
        .await
    }

    /// Up to `limit` rows of `kind` with `seq > after`, in seq order.
    ///
    /// Seqs are dense, so the next `limit` rows are those up to
    /// `after + limit`: bounding the range lets DuckDB skip every row group
    /// outside it, so a long backlog is not scanned and sorted again for
    /// each push. Only past a gap that wide (rows retention deleted before
    /// they were forwarded) is the open range read.
    pub async fn rows_after(
        &self,
        kind: SignalKind,
        after: u64,
        limit: usize,
    ) -> Result<coral_proto::Signals, TelemetryError> {
        let last = self.last_seq(kind);
        self.query(move |c| {
            let upper = after.saturating_add(limit as u64);
            let rows = read_after(c, kind, after, Some(upper), limit)?;
            if rows.is_empty() && last > upper {
                return read_after(c, kind, after, None, limit);
            }
            Ok(rows)
        })
        .await
    }

    /// Per kind, the highest seq stored for `agent_id`.
    pub async fn checkpoints(
        &self,
        agent_id: &str,
    ) -> Result<coral_proto::Checkpoints, TelemetryError> {
        let agent = agent_id.to_string();
        self.query(move |c| {
            let max = |table: &str| -> duckdb::Result<u64> {
                c.query_row(
                    &format!("SELECT coalesce(max(seq), 0) FROM {table} WHERE agent_id = ?"),
                    duckdb::params![agent],
                    |r| r.get(0),
                )
            };
            Ok(coral_proto::Checkpoints {
                spans: max("spans")?,
                metrics: max("metric_points")?,
                logs: max("log_records")?,
                red: max("http_red")?,
                edges: max("conn_edges")?,
                calls: max("debug_calls")?,
            })
        })
        .await
    }

    /// Deletes rows older than the retention window now; returns how many.
    pub async fn apply_retention(&self, retention: Duration) -> Result<u64, TelemetryError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Cmd::Retain(retention, done))
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

/// Rows gathered for one commit.
#[derive(Default)]
struct RowsToCommit {
    samples: Vec<SampleRow>,
    spans: Vec<SpanRecord>,
    metrics: Vec<MetricRecord>,
    logs: Vec<LogRecord>,
    red: Vec<RedRecord>,
    edges: Vec<EdgeRecord>,
    calls: Vec<ProbeCallRecord>,
    rows: usize,
}

impl RowsToCommit {
    fn add(&mut self, batch: Batch) {
        self.rows += batch.len();
        match batch {
            Batch::Samples(mut v) => self.samples.append(&mut v),
            Batch::Spans(mut v) => self.spans.append(&mut v),
            Batch::Metrics(mut v) => self.metrics.append(&mut v),
            Batch::Logs(mut v) => self.logs.append(&mut v),
            Batch::Red(mut v) => self.red.append(&mut v),
            Batch::Edges(mut v) => self.edges.append(&mut v),
            Batch::Calls(mut v) => self.calls.append(&mut v),
        }
    }

    /// Numbers unnumbered rows and appends everything in one transaction.
    /// The seq counters are not written here: the rows hold the highest
    /// seqs, and retention writes the counters before it deletes any.
    fn append(&mut self, conn: &duckdb::Connection, seqs: &mut Seqs) -> duckdb::Result<()> {
        let mut next = *seqs;
        number(&mut self.spans, &mut next.spans, |r| &mut r.seq);
        number(&mut self.metrics, &mut next.metrics, |r| &mut r.seq);
        number(&mut self.logs, &mut next.logs, |r| &mut r.seq);
        number(&mut self.red, &mut next.red, |r| &mut r.seq);
        number(&mut self.edges, &mut next.edges, |r| &mut r.seq);
        number(&mut self.calls, &mut next.calls, |r| &mut r.seq);
        conn.execute_batch("BEGIN TRANSACTION")?;
        let result = (|| {
            if !self.samples.is_empty() {
                append_samples(conn, &self.samples)?;
            }
            if !self.spans.is_empty() {
                append_spans(conn, &self.spans)?;
            }
            if !self.metrics.is_empty() {
                append_metrics(conn, &self.metrics)?;
            }
            if !self.logs.is_empty() {
                append_logs(conn, &self.logs)?;
            }
            if !self.red.is_empty() {
                append_red(conn, &self.red)?;
            }
            if !self.edges.is_empty() {
                append_edges(conn, &self.edges)?;
            }
            if !self.calls.is_empty() {
                append_calls(conn, &self.calls)?;
            }
            conn.execute_batch("COMMIT")
        })();
        match result {
            Ok(()) => {
                *seqs = next;
                Ok(())
            }
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }
}

/// The last seq given out per kind (rows forwarded by agents keep theirs).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct Seqs {
    spans: u64,
    metrics: u64,
    logs: u64,
    red: u64,
    edges: u64,
    calls: u64,
}

impl Seqs {
    fn load(conn: &duckdb::Connection) -> duckdb::Result<Seqs> {
        let last = |kind: &str, table: &str| -> duckdb::Result<u64> {
            let counted: u64 = conn.query_row(
                "SELECT coalesce(max(last), 0) FROM seq_counters WHERE kind = ?",
                duckdb::params![kind],
                |r| r.get(0),
            )?;
            let stored: u64 = conn.query_row(
                &format!("SELECT coalesce(max(seq), 0) FROM {table}"),
                [],
                |r| r.get(0),
            )?;
            Ok(counted.max(stored))
        };
        Ok(Seqs {
            spans: last("spans", "spans")?,
            metrics: last("metrics", "metric_points")?,
            logs: last("logs", "log_records")?,
            red: last("red", "http_red")?,
            edges: last("edges", "conn_edges")?,
            calls: last("calls", "debug_calls")?,
        })
    }
}

fn number<T>(rows: &mut [T], last: &mut u64, seq: impl Fn(&mut T) -> &mut u64) {
    for r in rows {
        let s = seq(r);
        if *s == 0 {
            *last += 1;
            *s = *last;
        }
    }
}

fn writer(
    conn: duckdb::Connection,
    rx: mpsc::Receiver<Cmd>,
    retention: Duration,
    mut seqs: Seqs,
    tally: Arc<Tally>,
) {
    let mut last_retention = Instant::now();
    let mut stopping = false;
    while !stopping {
        let first = match rx.recv_timeout(RETENTION_EVERY) {
            Ok(cmd) => Some(cmd),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let mut pending = RowsToCommit::default();
        let mut waiters = Vec::new();
        let mut retains = Vec::new();
        let deadline = Instant::now() + BATCH_WINDOW;
        let mut next = first;
        while let Some(cmd) = next.take() {
            let mut big = false;
            match cmd {
                Cmd::Insert(batch, done) => {
                    big = batch.len() >= BATCH_ALREADY;
                    pending.add(batch);
                    waiters.push(done);
                }
                Cmd::Retain(window, done) => retains.push((window, done)),
                Cmd::Shutdown => {
                    stopping = true;
                    break;
                }
            }
            if pending.rows >= MAX_BATCH_ROWS || pending.rows == 0 || big {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            next = rx.recv_timeout(left).ok();
        }
        if pending.rows > 0 {
            let result = pending.append(&conn, &mut seqs).map_err(|e| e.to_string());
            match &result {
                Ok(()) => {
                    let added = [
                        pending.samples.len(),
                        pending.spans.len(),
                        pending.metrics.len(),
                        pending.logs.len(),
                        pending.red.len(),
                        pending.edges.len(),
                        pending.calls.len(),
                    ];
                    for (i, n) in added.into_iter().enumerate() {
                        tally.rows[i].fetch_add(n as u64, Ordering::Relaxed);
                    }
                    tally.set_seqs(seqs);
                    if pending.rows > pending.samples.len() {
                        tally.committed.notify_one();
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, rows = pending.rows, "telemetry append failed")
                }
            }
            for w in waiters {
                let _ = w.send(result.clone());
            }
        }
        for (window, done) in retains {
            let _ = done.send(retain(&conn, window, &tally, &seqs).map_err(|e| e.to_string()));
        }
        if last_retention.elapsed() >= RETENTION_EVERY {
            if let Err(e) = retain(&conn, retention, &tally, &seqs) {
                tracing::warn!(error = %e, "telemetry retention failed");
            }
            last_retention = Instant::now();
        }
    }
    if let Err(e) = conn.execute_batch("CHECKPOINT;") {
        tracing::warn!(error = %e, "telemetry checkpoint at close failed");
    }
}

/// The columns [`span_row`] reads, in order (`epoch_us` turns a TIMESTAMP
/// back into µs since the epoch). Queries select these and map with it.
pub const SPAN_COLUMNS: &str = "agent_id, seq, trace_id, span_id, parent_span_id, service, name, kind, \
     epoch_us(start_ts), duration_us, status_code, status_message, attributes, events, resource, scope";

pub fn span_row(r: &duckdb::Row<'_>) -> duckdb::Result<SpanRecord> {
    Ok(SpanRecord {
        agent_id: r.get(0)?,
        seq: r.get(1)?,
        trace_id: r.get(2)?,
        span_id: r.get(3)?,
        parent_span_id: r.get(4)?,
        service: r.get(5)?,
        name: r.get(6)?,
        kind: r.get(7)?,
        start_us: r.get(8)?,
        duration_us: r.get(9)?,
        status_code: r.get(10)?,
        status_message: r.get(11)?,
        attributes: r.get(12)?,
        events: r.get(13)?,
        resource: r.get(14)?,
        scope: r.get(15)?,
    })
}

/// The columns [`metric_row`] reads, in order.
pub const METRIC_COLUMNS: &str =
    "agent_id, seq, service, name, unit, kind, epoch_us(ts), value, count, sum, attributes";

pub fn metric_row(r: &duckdb::Row<'_>) -> duckdb::Result<MetricRecord> {
    Ok(MetricRecord {
        agent_id: r.get(0)?,
        seq: r.get(1)?,
        service: r.get(2)?,
        name: r.get(3)?,
        unit: r.get(4)?,
        kind: r.get(5)?,
        ts_us: r.get(6)?,
        value: r.get(7)?,
        count: r.get(8)?,
        sum: r.get(9)?,
        attributes: r.get(10)?,
    })
}

/// The columns [`log_row`] reads, in order.
pub const LOG_COLUMNS: &str = "agent_id, seq, service, epoch_us(ts), severity_number, severity_text, body, trace_id, span_id, attributes";

pub fn log_row(r: &duckdb::Row<'_>) -> duckdb::Result<LogRecord> {
    Ok(LogRecord {
        agent_id: r.get(0)?,
        seq: r.get(1)?,
        service: r.get(2)?,
        ts_us: r.get(3)?,
        severity_number: r.get(4)?,
        severity_text: r.get(5)?,
        body: r.get(6)?,
        trace_id: r.get(7)?,
        span_id: r.get(8)?,
        attributes: r.get(9)?,
    })
}

/// The columns [`red_row`] reads, in order.
pub const RED_COLUMNS: &str = "agent_id, seq, epoch_ms(ts), service, method, route, count, errors, \
     client_errors, bytes_in, bytes_out, sum_us, max_us, hist, error_codes, db_user, db_name";

pub fn red_row(r: &duckdb::Row<'_>) -> duckdb::Result<RedRecord> {
    Ok(RedRecord {
        agent_id: r.get(0)?,
        seq: r.get(1)?,
        ts_ms: r.get(2)?,
        service: r.get(3)?,
        method: r.get(4)?,
        route: r.get(5)?,
        count: r.get(6)?,
        errors: r.get(7)?,
        client_errors: r.get(8)?,
        bytes_in: r.get(9)?,
        bytes_out: r.get(10)?,
        sum_us: r.get(11)?,
        max_us: r.get(12)?,
        hist: r.get(13)?,
        error_codes: r.get(14)?,
        db_user: r.get(15)?,
        db_name: r.get(16)?,
    })
}

/// The columns [`edge_row`] reads, in order.
pub const EDGE_COLUMNS: &str = "agent_id, seq, epoch_ms(ts), src, src_pid, dst_addr, dst_service, \
     connections, failures, bytes_sent, bytes_received, rtt_sum_us, rtt_count, rtt_max_us, \
     protocol, requests, request_errors, request_sum_us, request_max_us";

pub fn edge_row(r: &duckdb::Row<'_>) -> duckdb::Result<EdgeRecord> {
    Ok(EdgeRecord {
        agent_id: r.get(0)?,
        seq: r.get(1)?,
        ts_ms: r.get(2)?,
        src: r.get(3)?,
        src_pid: r.get(4)?,
        dst_addr: r.get(5)?,
        dst_service: r.get(6)?,
        connections: r.get(7)?,
        failures: r.get(8)?,
        bytes_sent: r.get(9)?,
        bytes_received: r.get(10)?,
        rtt_sum_us: r.get(11)?,
        rtt_count: r.get(12)?,
        rtt_max_us: r.get(13)?,
        protocol: r.get(14)?,
        requests: r.get(15)?,
        request_errors: r.get(16)?,
        request_sum_us: r.get(17)?,
        request_max_us: r.get(18)?,
    })
}

/// The columns [`call_row`] reads, in order.
pub const CALL_COLUMNS: &str = "agent_id, seq, service, session, call_seq, pid, function, tid, \
     goroutine, start_ns, duration_ns, args, results, stack";

pub fn call_row(r: &duckdb::Row<'_>) -> duckdb::Result<ProbeCallRecord> {
    Ok(ProbeCallRecord {
        agent_id: r.get(0)?,
        seq: r.get(1)?,
        service: r.get(2)?,
        session: r.get(3)?,
        call_seq: r.get(4)?,
        pid: r.get(5)?,
        function: r.get(6)?,
        tid: r.get(7)?,
        goroutine: r.get(8)?,
        start_ns: r.get(9)?,
        duration_ns: r.get(10)?,
        args: r.get(11)?,
        results: r.get(12)?,
        stack: r.get(13)?,
    })
}

/// Rows of `kind` past `after` (and at most `upper`), in seq order: what
/// forwarding sends.
fn read_after(
    c: &duckdb::Connection,
    kind: SignalKind,
    after: u64,
    upper: Option<u64>,
    limit: usize,
) -> duckdb::Result<coral_proto::Signals> {
    use coral_proto::Signals;
    let params = duckdb::params![after, upper.unwrap_or(u64::MAX), limit as u64];
    let sql = |columns: &str, table: &str| {
        format!("SELECT {columns} FROM {table} WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?")
    };
    Ok(match kind {
        SignalKind::Spans => Signals::Spans(
            c.prepare_cached(&sql(SPAN_COLUMNS, "spans"))?
                .query_map(params, span_row)?
                .collect::<Result<_, _>>()?,
        ),
        SignalKind::Metrics => Signals::Metrics(
            c.prepare_cached(&sql(METRIC_COLUMNS, "metric_points"))?
                .query_map(params, metric_row)?
                .collect::<Result<_, _>>()?,
        ),
        SignalKind::Logs => Signals::Logs(
            c.prepare_cached(&sql(LOG_COLUMNS, "log_records"))?
                .query_map(params, log_row)?
                .collect::<Result<_, _>>()?,
        ),
        SignalKind::Red => Signals::Red(
            c.prepare_cached(&sql(RED_COLUMNS, "http_red"))?
                .query_map(params, red_row)?
                .collect::<Result<_, _>>()?,
        ),
        SignalKind::Edges => Signals::Edges(
            c.prepare_cached(&sql(EDGE_COLUMNS, "conn_edges"))?
                .query_map(params, edge_row)?
                .collect::<Result<_, _>>()?,
        ),
        SignalKind::Calls => Signals::Calls(
            c.prepare_cached(&sql(CALL_COLUMNS, "debug_calls"))?
                .query_map(params, call_row)?
                .collect::<Result<_, _>>()?,
        ),
    })
}

fn append_samples(conn: &duckdb::Connection, rows: &[SampleRow]) -> duckdb::Result<()> {
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

/// Appends whole columns at once: an Arrow record batch becomes DuckDB
/// data chunks, which is several times faster than appending value by
/// value (the high-volume OTLP tables go this way).
fn append_columns(
    conn: &duckdb::Connection,
    table: &str,
    columns: Vec<(&str, ArrayRef)>,
) -> duckdb::Result<()> {
    let batch = RecordBatch::try_from_iter(columns)
        .map_err(|e| duckdb::Error::ToSqlConversionFailure(Box::new(e)))?;
    let mut app = conn.appender(table)?;
    app.append_record_batch(batch)?;
    app.flush()
}

fn strs<'a, T: 'a>(rows: &'a [T], f: impl Fn(&'a T) -> &'a str) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
}

fn opt_strs<'a, T: 'a>(rows: &'a [T], f: impl Fn(&'a T) -> Option<&'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter(rows.iter().map(f)))
}

fn u64s<T>(rows: &[T], f: impl Fn(&T) -> u64) -> ArrayRef {
    Arc::new(UInt64Array::from_iter_values(rows.iter().map(f)))
}

fn i64s<T>(rows: &[T], f: impl Fn(&T) -> i64) -> ArrayRef {
    Arc::new(Int64Array::from_iter_values(rows.iter().map(f)))
}

fn timestamps_us<T>(rows: &[T], f: impl Fn(&T) -> i64) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from_iter_values(
        rows.iter().map(f),
    ))
}

fn append_spans(conn: &duckdb::Connection, rows: &[SpanRecord]) -> duckdb::Result<()> {
    append_columns(
        conn,
        "spans",
        vec![
            ("agent_id", strs(rows, |r| &r.agent_id)),
            ("seq", u64s(rows, |r| r.seq)),
            ("trace_id", strs(rows, |r| &r.trace_id)),
            ("span_id", strs(rows, |r| &r.span_id)),
            (
                "parent_span_id",
                opt_strs(rows, |r| r.parent_span_id.as_deref()),
            ),
            ("service", strs(rows, |r| &r.service)),
            ("name", strs(rows, |r| &r.name)),
            ("kind", strs(rows, |r| &r.kind)),
            ("start_ts", timestamps_us(rows, |r| r.start_us)),
            ("duration_us", i64s(rows, |r| r.duration_us)),
            ("status_code", strs(rows, |r| &r.status_code)),
            ("status_message", strs(rows, |r| &r.status_message)),
            ("attributes", strs(rows, |r| &r.attributes)),
            ("events", strs(rows, |r| &r.events)),
            ("resource", strs(rows, |r| &r.resource)),
            ("scope", strs(rows, |r| &r.scope)),
        ],
    )
}

fn append_metrics(conn: &duckdb::Connection, rows: &[MetricRecord]) -> duckdb::Result<()> {
    append_columns(
        conn,
        "metric_points",
        vec![
            ("agent_id", strs(rows, |r| &r.agent_id)),
            ("seq", u64s(rows, |r| r.seq)),
            ("service", strs(rows, |r| &r.service)),
            ("name", strs(rows, |r| &r.name)),
            ("unit", strs(rows, |r| &r.unit)),
            ("kind", strs(rows, |r| &r.kind)),
            ("ts", timestamps_us(rows, |r| r.ts_us)),
            (
                "value",
                Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.value))),
            ),
            (
                "count",
                Arc::new(UInt64Array::from_iter(rows.iter().map(|r| r.count))),
            ),
            (
                "sum",
                Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.sum))),
            ),
            ("attributes", strs(rows, |r| &r.attributes)),
        ],
    )
}

fn append_logs(conn: &duckdb::Connection, rows: &[LogRecord]) -> duckdb::Result<()> {
    append_columns(
        conn,
        "log_records",
        vec![
            ("agent_id", strs(rows, |r| &r.agent_id)),
            ("seq", u64s(rows, |r| r.seq)),
            ("service", strs(rows, |r| &r.service)),
            ("ts", timestamps_us(rows, |r| r.ts_us)),
            (
                "severity_number",
                Arc::new(Int32Array::from_iter_values(
                    rows.iter().map(|r| r.severity_number),
                )),
            ),
            ("severity_text", strs(rows, |r| &r.severity_text)),
            ("body", strs(rows, |r| &r.body)),
            ("trace_id", opt_strs(rows, |r| r.trace_id.as_deref())),
            ("span_id", opt_strs(rows, |r| r.span_id.as_deref())),
            ("attributes", strs(rows, |r| &r.attributes)),
        ],
    )
}

fn append_red(conn: &duckdb::Connection, rows: &[RedRecord]) -> duckdb::Result<()> {
    let mut app = conn.appender("http_red")?;
    for r in rows {
        app.append_row(duckdb::params![
            r.agent_id,
            r.seq,
            Value::Timestamp(TimeUnit::Millisecond, r.ts_ms),
            r.service,
            r.method,
            r.route,
            r.count,
            r.errors,
            r.client_errors,
            r.bytes_in,
            r.bytes_out,
            r.sum_us,
            r.max_us,
            r.hist,
            r.error_codes,
            r.db_user,
            r.db_name,
        ])?;
    }
    app.flush()
}

fn append_edges(conn: &duckdb::Connection, rows: &[EdgeRecord]) -> duckdb::Result<()> {
    let mut app = conn.appender("conn_edges")?;
    for r in rows {
        app.append_row(duckdb::params![
            r.agent_id,
            r.seq,
            Value::Timestamp(TimeUnit::Millisecond, r.ts_ms),
            r.src,
            r.src_pid,
            r.dst_addr,
            r.dst_service,
            r.connections,
            r.failures,
            r.bytes_sent,
            r.bytes_received,
            r.rtt_sum_us,
            r.rtt_count,
            r.rtt_max_us,
            r.protocol,
            r.requests,
            r.request_errors,
            r.request_sum_us,
            r.request_max_us,
        ])?;
    }
    app.flush()
}

fn append_calls(conn: &duckdb::Connection, rows: &[ProbeCallRecord]) -> duckdb::Result<()> {
    let mut app = conn.appender("debug_calls")?;
    for r in rows {
        app.append_row(duckdb::params![
            r.agent_id,
            r.seq,
            Value::Timestamp(TimeUnit::Microsecond, r.start_ns / 1000),
            r.service,
            r.session,
            r.call_seq,
            r.pid,
            r.function,
            r.tid,
            r.goroutine,
            r.start_ns,
            r.duration_ns,
            r.args,
            r.results,
            r.stack,
        ])?;
    }
    app.flush()
}

/// Deletes telemetry older than `retention` from every table, after
/// saving the last seq given out per kind (deleting a kind's newest rows
/// must not let its seqs be given out again).
fn retain(
    conn: &duckdb::Connection,
    retention: Duration,
    tally: &Tally,
    seqs: &Seqs,
) -> duckdb::Result<u64> {
    for (kind, last) in [
        ("spans", seqs.spans),
        ("metrics", seqs.metrics),
        ("logs", seqs.logs),
        ("red", seqs.red),
        ("edges", seqs.edges),
        ("calls", seqs.calls),
    ] {
        conn.prepare_cached("INSERT OR REPLACE INTO seq_counters (kind, last) VALUES (?, ?)")?
            .execute(duckdb::params![kind, last])?;
    }
    let cutoff_us = (coral_proto::now_ms() - retention.as_millis() as i64) * 1000;
    let mut n = 0;
    for (i, (table, column)) in TABLES.into_iter().enumerate() {
        let deleted = conn.execute(
            &format!("DELETE FROM {table} WHERE {column} < make_timestamp(?::BIGINT)"),
            duckdb::params![cutoff_us],
        )? as u64;
        tally.rows[i].fetch_sub(deleted, Ordering::Relaxed);
        n += deleted;
    }
    Ok(n)
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
            assert_eq!(t.counts().samples, 1001);
            assert_eq!(t.max_seq("a1").await.unwrap(), 1001);
            assert_eq!(t.max_seq("nobody").await.unwrap(), 0);
            assert_eq!(
                t.apply_retention(Duration::from_secs(3600)).await.unwrap(),
                1
            );
            assert_eq!(t.counts().samples, 1000);
            // The tally is derived state: it must agree with the table.
            let real: u64 = t
                .query(|c| c.query_row("SELECT count(*) FROM health_samples", [], |r| r.get(0)))
                .await
                .unwrap();
            assert_eq!(real, 1000);
        }
        // Reopening keeps the data and does not re-run migrations.
        let (t, _guard) = Telemetry::open(&path, Duration::from_secs(3600)).unwrap();
        assert_eq!(t.counts().samples, 1000);
    }

    fn red(ts_ms: i64) -> RedRecord {
        RedRecord {
            agent_id: "a1".into(),
            ts_ms,
            service: "api".into(),
            method: "GET".into(),
            route: "/hello".into(),
            count: 1,
            seq: 0,
            errors: 0,
            client_errors: 0,
            bytes_in: 0,
            bytes_out: 0,
            sum_us: 0,
            max_us: 0,
            hist: String::new(),
            error_codes: String::new(),
            db_user: String::new(),
            db_name: String::new(),
        }
    }

    #[tokio::test]
    async fn seqs_are_not_given_out_again_after_retention_deleted_the_newest_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.duckdb");
        let old = coral_proto::now_ms() - 2 * 3600 * 1000;
        {
            let (t, _guard) = Telemetry::open(&path, Duration::from_secs(3600)).unwrap();
            t.insert_batch(Batch::Red(vec![red(old), red(old), red(old)]))
                .await
                .unwrap();
            assert_eq!(t.last_seq(SignalKind::Red), 3);
            assert_eq!(
                t.apply_retention(Duration::from_secs(3600)).await.unwrap(),
                3
            );
        }
        // Every row is gone; the counter saved before the delete is not.
        let (t, _guard) = Telemetry::open(&path, Duration::from_secs(3600)).unwrap();
        assert_eq!(t.last_seq(SignalKind::Red), 3);
        t.insert_batch(Batch::Red(vec![red(coral_proto::now_ms())]))
            .await
            .unwrap();
        match t.rows_after(SignalKind::Red, 0, 10).await.unwrap() {
            coral_proto::Signals::Red(rows) => {
                assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), [4])
            }
            other => panic!("red rows expected, got {other:?}"),
        }
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
