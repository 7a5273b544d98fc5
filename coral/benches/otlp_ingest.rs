//! OTLP figures (issue 6), in one run:
//! 1. spans/s ingested over OTLP/gRPC into the agent's DuckDB, the agent
//!    pinned to one core, sustained for a minute; beside it, the same rows
//!    appended straight into DuckDB (the store's ceiling);
//! 2. client-side export latency (p50/p99) at half that rate;
//! 3. agent RSS under a 2x overload, and that every accepted span is stored;
//! 4. `coral query traces` over 10 million spans in a colony.
//!
//! Writes its section of docs/benchmarks.md. Run: `make bench`.

use coral_store::telemetry::{Batch, Telemetry};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod common;

use common::{Daemons, EPHEMERAL_OTLP, ms, percentile, write_section};
const SPANS_PER_REQUEST: usize = 500;

/// A realistic request: HTTP server spans with a handful of attributes.
fn request(batch: u64) -> ExportTraceServiceRequest {
    common::server_spans(
        "bench-api",
        batch * SPANS_PER_REQUEST as u64,
        SPANS_PER_REQUEST,
        0,
    )
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

struct Counters {
    accepted: AtomicU64,
    refused: AtomicU64,
}

/// Closed loop: `conc` senders as fast as the agent answers, for `secs`.
async fn saturate(addr: &str, conc: usize, secs: u64) -> (f64, u64) {
    let c = Arc::new(Counters {
        accepted: AtomicU64::new(0),
        refused: AtomicU64::new(0),
    });
    let client = TraceServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let end = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..conc {
        let (mut client, c) = (client.clone(), c.clone());
        tasks.push(tokio::spawn(async move {
            let mut b = w as u64 * 1_000_000;
            while Instant::now() < end {
                b += 1;
                match client.export(request(b)).await {
                    Ok(_) => c
                        .accepted
                        .fetch_add(SPANS_PER_REQUEST as u64, Ordering::Relaxed),
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        c.refused.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let accepted = c.accepted.load(Ordering::Relaxed);
    (
        accepted as f64 / start.elapsed().as_secs_f64(),
        c.refused.load(Ordering::Relaxed),
    )
}

/// Open loop at `spans_per_sec`; returns per-request latencies, accepted
/// spans and refused requests.
async fn paced(
    addr: &str,
    spans_per_sec: f64,
    secs: u64,
    max_outstanding: usize,
) -> (Vec<Duration>, u64, u64) {
    let client = TraceServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let interval = Duration::from_secs_f64(SPANS_PER_REQUEST as f64 / spans_per_sec);
    let sem = Arc::new(tokio::sync::Semaphore::new(max_outstanding));
    let lat = Arc::new(std::sync::Mutex::new(Vec::new()));
    let c = Arc::new(Counters {
        accepted: AtomicU64::new(0),
        refused: AtomicU64::new(0),
    });
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let end = Instant::now() + Duration::from_secs(secs);
    let mut b = 50_000_000u64;
    let mut tasks = Vec::new();
    while Instant::now() < end {
        tick.tick().await;
        b += 1;
        let Ok(permit) = sem.clone().try_acquire_owned() else {
            c.refused.fetch_add(1, Ordering::Relaxed); // the client itself is saturated
            continue;
        };
        let (mut client, lat, c) = (client.clone(), lat.clone(), c.clone());
        let req = request(b);
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            match client.export(req).await {
                Ok(_) => {
                    lat.lock().unwrap().push(t.elapsed());
                    c.accepted
                        .fetch_add(SPANS_PER_REQUEST as u64, Ordering::Relaxed);
                }
                Err(_) => {
                    c.refused.fetch_add(1, Ordering::Relaxed);
                }
            }
            drop(permit);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut v = lat.lock().unwrap().clone();
    v.sort();
    (
        v,
        c.accepted.load(Ordering::Relaxed),
        c.refused.load(Ordering::Relaxed),
    )
}

/// The same rows appended straight into a DuckDB file: the store's ceiling.
async fn raw_append_rate(dir: &Path) -> f64 {
    // As the agent opens its store (one DuckDB thread).
    let (t, _g) =
        Telemetry::open_with(&dir.join("raw.duckdb"), Duration::from_secs(3600), Some(1)).unwrap();
    let rows = coral_agent::otlp::convert::spans("bench", &request(1)).rows;
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < Duration::from_secs(10) {
        // Many inserts in flight, as concurrent exports would have.
        let batch: Vec<_> = (0..8)
            .map(|_| t.insert_batch(Batch::Spans(rows.clone())))
            .collect();
        for r in futures::future::join_all(batch).await {
            r.unwrap();
            n += rows.len();
        }
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Builds a colony holding `n` spans, then times `coral query traces`.
fn query_times(n: u64) -> Vec<(String, Duration)> {
    let d = Daemons::new("", false);
    let state = d.dir.path().join("state/coral/colony");
    std::fs::create_dir_all(&state).unwrap();
    {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (_t, _g) = rt
            .block_on(async {
                Telemetry::open(&state.join("telemetry.duckdb"), Duration::from_secs(3600))
            })
            .unwrap();
    }
    let db = duckdb::Connection::open(state.join("telemetry.duckdb")).unwrap();
    let t = Instant::now();
    db.execute_batch(&format!(
        "INSERT INTO spans SELECT 'bench-agent', i + 1, lpad(to_hex(i // 5), 32, '0'), lpad(to_hex(i), 16, '0'),
            CASE WHEN i % 5 = 0 THEN NULL ELSE lpad(to_hex((i // 5) * 5), 16, '0') END,
            'svc-' || (i % 20), 'GET /api/orders/{{id}}', 'server',
            now()::TIMESTAMP - to_microseconds((i % 3000000)::BIGINT * 100),
            1000 + i % 500000, CASE WHEN i % 97 = 0 THEN 'error' ELSE 'ok' END, '',
            '{{\"http.route\":\"/api/orders/{{id}}\"}}', '[]', '{{}}', 'bench'
         FROM range({n}) t(i); CHECKPOINT;"
    ))
    .unwrap();
    eprintln!("loaded {n} spans in {:?}", t.elapsed());
    drop(db);
    d.ok(&["colony", "start", "--daemon", "--port", "0"]);
    let runs: [(&str, Vec<&str>); 3] = [
        (
            "`coral query traces` (last 10 min, newest 20)",
            vec!["query", "traces", "--json"],
        ),
        (
            "`--service svc-7 --since 1h`",
            vec![
                "query",
                "traces",
                "--service",
                "svc-7",
                "--since",
                "1h",
                "--json",
            ],
        ),
        (
            "`--min-duration 450ms --since 1h`",
            vec![
                "query",
                "traces",
                "--min-duration",
                "450ms",
                "--since",
                "1h",
                "--json",
            ],
        ),
    ];
    runs.into_iter()
        .map(|(name, args)| {
            d.ok(&args); // warm
            let mut v: Vec<Duration> = (0..5)
                .map(|_| {
                    let t = Instant::now();
                    d.ok(&args);
                    t.elapsed()
                })
                .collect();
            v.sort();
            (name.to_string(), v[2])
        })
        .collect()
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("otlp_ingest: run with `make bench` (cargo bench) to measure");
        return;
    }
    let cores = common::cores();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // The load generator runs on core 1, the agent on core 0.
    let _ = Command::new("taskset")
        .args(["-p", "-c", "1", &std::process::id().to_string()])
        .output();

    let d = Daemons::new(EPHEMERAL_OTLP, true);
    d.ok(&["agent", "start", "--daemon"]);
    let grpc = d.json(&["agent", "status", "--json"])["otlp_grpc"]
        .as_str()
        .unwrap()
        .to_string();
    let pid = d.pid("agent");

    let ceiling = rt.block_on(raw_append_rate(d.dir.path()));
    eprintln!("raw append: {ceiling:.0} spans/s");
    let (max_rate, refused_max) = rt.block_on(saturate(&grpc, 8, 60));
    eprintln!("sustained: {max_rate:.0} spans/s ({refused_max} refused)");
    let (lat, _, refused_half) = rt.block_on(paced(&grpc, max_rate / 2.0, 20, 64));
    eprintln!(
        "half rate: p50 {:?} p99 {:?}",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );

    let before = d.json(&["agent", "status", "--json"])["stored_spans"]
        .as_u64()
        .unwrap();
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let peak = peak.clone();
        std::thread::spawn(move || {
            let end = Instant::now() + Duration::from_secs(21);
            while Instant::now() < end {
                peak.fetch_max(rss_kb(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let (_, accepted_over, refused_over) = rt.block_on(paced(&grpc, max_rate * 2.0, 20, 512));
    sampler.join().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let after = d.json(&["agent", "status", "--json"])["stored_spans"]
        .as_u64()
        .unwrap();
    let lost = (before + accepted_over).saturating_sub(after);
    let idle_rss = rss_kb(pid);
    eprintln!(
        "overload: peak RSS {} kB, lost {lost}, refused {refused_over}",
        peak.load(Ordering::Relaxed)
    );
    drop(d);

    let queries = query_times(10_000_000);

    let mut section = format!(
        "## OTLP ingestion and queries (issue 6)\n\n\
Reproduce: `make bench` (runs `cargo bench -p coral --bench otlp_ingest`).\n\
Measured {date} on {cores} cores, build profile: {profile}. Requests are OTLP/gRPC exports of\n\
{SPANS_PER_REQUEST} server spans with 4 attributes each; the agent is pinned to core 0 with `taskset`,\n\
the load generator to core 1.\n\n\
| figure | result | target |\n|---|---|---|\n\
| spans/s stored by the agent over OTLP/gRPC, one core, sustained 60 s | {max_rate:.0} ({refused_max} requests refused) | ≥ 50,000 |\n\
| the same rows appended straight into DuckDB (the store's ceiling, same run) | {ceiling:.0} | — |\n\
| export latency seen by the client at half that rate, p50 / p99 | {l50} / {l99} ({refused_half} refused) | — |\n\
| agent RSS under a 2x overload, peak / after | {peak:.0} MB / {idle:.0} MB | bounded |\n\
| accepted spans lost under the 2x overload | {lost} of {accepted_over} ({refused_over} requests refused with RESOURCE_EXHAUSTED) | 0 |\n",
        date = humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        profile = common::build_profile(),
        l50 = ms(percentile(&lat, 0.5)),
        l99 = ms(percentile(&lat, 0.99)),
        peak = peak.load(Ordering::Relaxed) as f64 / 1024.0,
        idle = idle_rss as f64 / 1024.0,
    );
    for (name, t) in &queries {
        section.push_str(&format!(
            "| {name} over 10,000,000 spans, median of 5 (whole command) | {:.0} ms | — |\n",
            t.as_secs_f64() * 1e3
        ));
    }
    print!("{section}");
    write_section("otlp", &section);
}
