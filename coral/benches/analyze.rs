//! The built-in analyzer and the MCP gateway, measured (issue 7):
//! - analysis time on a colony holding 1 million spans (a day of a
//!   frontend → api → db shop, the last minutes with a slow query) and a
//!   day of metric points and health samples;
//! - MCP tool call latency over the local socket, next to the tarpc status
//!   call on the control socket in the same run.
//!
//! Run: `cargo bench -p coral --bench analyze`

mod common;

use common::{Daemons, ms, percentile, write_section};
use coral_store::telemetry::Telemetry;
use std::time::{Duration, Instant};

const SPANS: u64 = 1_000_000;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let d = Daemons::new("", false);
    let state = d.dir.path().join("state/coral/colony");
    std::fs::create_dir_all(&state).unwrap();
    {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (_t, _g) = rt
            .block_on(async {
                Telemetry::open(
                    &state.join("telemetry.duckdb"),
                    Duration::from_secs(7 * 86400),
                )
            })
            .unwrap();
    }
    let db = duckdb::Connection::open(state.join("telemetry.duckdb")).unwrap();
    let t = Instant::now();
    // Trace k = i / 3 has a frontend root, an api server span under it and
    // the api's query under that; traces spread over 24 h, the newest
    // 4 minutes with the query 200x slower.
    db.execute_batch(&format!(
        "CREATE TEMP TABLE g AS SELECT i, i // 3 AS k, i % 3 AS p,
             (i // 3) * (86400000000 // ({SPANS} // 3)) AS ago_us FROM range({SPANS}) t(i);
         INSERT INTO spans SELECT 'bench-agent', i + 1, lpad(to_hex(k), 32, '0'), lpad(to_hex(i), 16, '0'),
            CASE p WHEN 0 THEN NULL ELSE lpad(to_hex(i - 1), 16, '0') END,
            CASE p WHEN 0 THEN 'frontend' ELSE 'api' END,
            CASE p WHEN 0 THEN 'GET /checkout' WHEN 1 THEN 'GET /orders' ELSE 'SELECT orders' END,
            CASE p WHEN 2 THEN 'client' ELSE 'server' END,
            now()::TIMESTAMP - to_microseconds(ago_us::BIGINT),
            CASE WHEN p = 2 AND ago_us < 240000000 THEN 400000 + k % 50000
                 WHEN p = 2 THEN 2000 + k % 500
                 WHEN ago_us < 240000000 THEN 412000 + k % 50000
                 ELSE 12000 + k % 3000 END,
            'ok', '',
            CASE p WHEN 2 THEN '{{\"db.system\":\"postgresql\",\"peer.service\":\"db\",\"db.statement\":\"SELECT id, total FROM orders WHERE user_id = $1\"}}'
                   ELSE '{{}}' END,
            '[]', '{{}}', 'bench'
         FROM g;
         INSERT INTO metric_points SELECT 'bench-agent', i + 1, 'api', 'metric_' || (i % 20), 'ms', 'gauge',
            now()::TIMESTAMP - to_microseconds(((i // 20) * 10000000)::BIGINT), (i % 100)::DOUBLE, NULL, NULL, '{{}}'
         FROM range(20 * 8640) t(i);
         INSERT INTO health_samples SELECT 'bench-agent', i + 1, now()::TIMESTAMP - to_microseconds(((i // 3) * 5000000)::BIGINT),
            CASE i % 3 WHEN 0 THEN 'frontend' WHEN 1 THEN 'api' ELSE 'db' END, true, 500, NULL
         FROM range(3 * 17280) t(i);
         CHECKPOINT;"
    ))
    .unwrap();
    eprintln!(
        "loaded {SPANS} spans and a day of metrics in {:?}",
        t.elapsed()
    );
    drop(db);
    d.ok(&["colony", "start", "--daemon", "--port", "0"]);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (analysis, (answer, calls), services, red, status) = rt.block_on(async {
        let mcp = d.dir.path().join("run/coral/colony-mcp.sock");
        let tools = coral::mcp::McpTools::connect_at(&mcp).await.unwrap();
        // Analysis: warm once, then the median of 5.
        let first = coral::analyze::analyze(&tools, "What's wrong with the API?")
            .await
            .unwrap();
        let mut runs = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            coral::analyze::analyze(&tools, "What's wrong with the API?")
                .await
                .unwrap();
            runs.push(t.elapsed());
        }
        runs.sort();
        let time_calls = |name: &'static str, args: serde_json::Value, n: usize| {
            let tools = &tools;
            async move {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    let t = Instant::now();
                    tools.call(name, args.clone()).await.unwrap();
                    v.push(t.elapsed());
                }
                v.sort();
                v
            }
        };
        let services = time_calls("coral_services", serde_json::json!({}), 200).await;
        let red = time_calls(
            "coral_red_metrics",
            serde_json::json!({"window": "5m", "baseline": "1h"}),
            50,
        )
        .await;
        let sock = tokio::net::UnixStream::connect(d.dir.path().join("run/coral/colony.sock"))
            .await
            .unwrap();
        let client = coral_proto::services::ColonyControlClient::new(
            Default::default(),
            coral_proto::local::framed(sock),
        )
        .spawn();
        let mut status = Vec::new();
        for _ in 0..200 {
            let t = Instant::now();
            client.status(tarpc::context::current()).await.unwrap();
            status.push(t.elapsed());
        }
        status.sort();
        (
            runs,
            (first.answer, first.evidence.len()),
            services,
            red,
            status,
        )
    });
    eprintln!("{answer}");
    assert!(answer.contains("SELECT id, total FROM orders"), "{answer}");
    let p = |v: &[Duration]| format!("{} | {}", ms(percentile(v, 0.5)), ms(percentile(v, 0.99)));
    let section = format!(
        "## Built-in analyzer and MCP gateway\n\n\
         `cargo bench -p coral --bench analyze` ({profile} build, 2-core VM). A colony \
         holding {SPANS} spans (a day of a frontend → api → db shop, the last 4 minutes with a \
         slow query), a day of metric points (172,800) and health samples (51,840).\n\n\
         | what | p50 | p99 |\n|---|---|---|\n\
         | whole analysis (`coral ask` with no provider), {} tool calls over MCP | {} | {} (max of 5) |\n\
         | MCP `coral_services` call over the local socket | {} |\n\
         | MCP `coral_red_metrics` call (5m vs 1h over 1M spans) | {} |\n\
         | tarpc `status` on the control socket (same data), for comparison | {} |\n\n\
         The analysis found the slow query on the database (target: under 1 s).\n\n",
        calls,
        ms(percentile(&analysis, 0.5)),
        ms(analysis[analysis.len() - 1]),
        p(&services),
        p(&red),
        p(&status),
        profile = common::build_profile(),
    );
    write_section("analyze", &section);
}
