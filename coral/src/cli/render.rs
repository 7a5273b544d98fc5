//! Human output: aligned tables and short relative times.

use comfy_table::{Table, presets};
use coral_proto::{AgentStatus, ColonyStatus, ServiceHealth};
use std::time::Duration;

pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(presets::NOTHING);
    t.set_header(header.iter().map(|h| h.to_string()));
    t
}

/// `3m 12s` for a span in milliseconds.
pub fn span(ms: i64) -> String {
    if ms < 0 {
        return "-".into();
    }
    if ms < 1000 {
        return "0s".into();
    }
    humantime::format_duration(Duration::from_secs((ms / 1000) as u64)).to_string()
}

pub fn ago(now: i64, then: Option<i64>) -> String {
    match then {
        Some(t) => format!("{} ago", span(now - t)),
        None => "never".into(),
    }
}

pub fn latency(us: Option<u64>) -> String {
    match us {
        Some(us) if us >= 1_000_000 => format!("{:.2}s", us as f64 / 1e6),
        Some(us) if us >= 1_000 => format!("{:.1}ms", us as f64 / 1e3),
        Some(us) => format!("{us}µs"),
        None => "-".into(),
    }
}

fn uptime(now: i64, s: &ServiceHealth) -> String {
    match (s.health, s.since_ms) {
        (coral_proto::Health::Up, Some(since)) => span(now - since),
        _ => "-".into(),
    }
}

fn service_row(now: i64, s: &ServiceHealth) -> Vec<String> {
    vec![
        s.spec.name.clone(),
        s.spec.port.to_string(),
        s.spec.kind.to_string(),
        s.spec
            .health_path
            .clone()
            .unwrap_or_else(|| "tcp connect".into()),
        s.health.as_str().to_string(),
        latency(s.latency_us),
        ago(now, s.last_checked_ms),
        uptime(now, s),
        s.last_error.clone().unwrap_or_else(|| "-".into()),
    ]
}

const SERVICE_HEADER: [&str; 9] = [
    "SERVICE", "PORT", "TYPE", "PROBE", "HEALTH", "LATENCY", "CHECKED", "UPTIME", "ERROR",
];

pub fn colony_status(s: &ColonyStatus) -> String {
    let now = s.now_ms;
    let mut out = format!(
        "Colony {}  (coral {}, pid {}, up {})\nListening on {}, state in {}\nStored: {} health samples, {} spans, {} metric points, {} log records\n",
        s.colony_id,
        s.version,
        s.pid,
        span(now - s.started_at_ms),
        s.rpc_addr,
        s.state_dir,
        s.stored_samples,
        s.stored_spans,
        s.stored_metric_points,
        s.stored_logs
    );
    if s.agents.is_empty() {
        out.push_str("\nNo agents yet: run 'coral agent start' on a host.\n");
        return out;
    }
    let mut agents = table(&[
        "AGENT",
        "ID",
        "STATE",
        "ADDRESS",
        "LAST SEEN",
        "UPTIME",
        "SERVICES",
    ]);
    for a in &s.agents {
        let up = a
            .services
            .iter()
            .filter(|x| x.health == coral_proto::Health::Up)
            .count();
        agents.add_row(vec![
            a.name.clone(),
            a.id.chars().take(8).collect(),
            a.state.as_str().to_string(),
            a.addr.clone(),
            ago(now, Some(a.last_seen_ms)),
            if a.state == coral_proto::AgentState::Online {
                span(now - a.started_at_ms)
            } else {
                "-".into()
            },
            format!("{up}/{} up", a.services.len()),
        ]);
    }
    out.push('\n');
    out.push_str(&agents.to_string());
    out.push('\n');
    let mut header = vec!["AGENT"];
    header.extend(SERVICE_HEADER);
    let mut services = table(&header);
    let mut any = false;
    for a in &s.agents {
        for svc in &a.services {
            any = true;
            let mut row = vec![a.name.clone()];
            row.extend(service_row(now, svc));
            services.add_row(row);
        }
    }
    if any {
        out.push('\n');
        out.push_str(&services.to_string());
        out.push('\n');
    } else {
        out.push_str("\nNo services yet: run 'coral connect NAME:PORT' next to an agent.\n");
    }
    out
}

pub fn agent_status(s: &AgentStatus) -> String {
    let now = s.now_ms;
    let link = &s.colony;
    let link_line = match link.state {
        coral_proto::LinkState::Connected => format!(
            "connected to colony {} at {} for {} (last heartbeat {})",
            link.colony_id.as_deref().unwrap_or("?"),
            link.addr,
            span(now - link.since_ms),
            ago(now, link.last_heartbeat_ms)
        ),
        coral_proto::LinkState::Connecting => format!(
            "connecting to the colony for {} ({} attempts; last error: {})",
            span(now - link.since_ms),
            link.attempts,
            link.last_error.as_deref().unwrap_or("none")
        ),
    };
    let mut out = format!(
        "Agent {}  (id {}, coral {}, pid {}, up {})\nColony: {}\nSamples: {} stored, {} waiting for the colony, {} dropped\nOTLP: {}; stored {} spans, {} metric points, {} log records\n",
        s.name,
        s.agent_id,
        s.version,
        s.pid,
        span(now - s.started_at_ms),
        link_line,
        s.stored_samples,
        s.pending_samples,
        s.dropped_samples,
        match (&s.otlp_grpc, &s.otlp_http) {
            (Some(g), Some(h)) => format!("gRPC on {g}, HTTP on {h}"),
            _ => "receiver off".to_string(),
        },
        s.stored_spans,
        s.stored_metric_points,
        s.stored_logs
    );
    if s.services.is_empty() {
        out.push_str("\nNo services: add one with 'coral connect NAME:PORT[:HEALTH]'.\n");
        return out;
    }
    let mut t = table(&SERVICE_HEADER);
    for svc in &s.services {
        t.add_row(service_row(now, svc));
    }
    out.push('\n');
    out.push_str(&t.to_string());
    out.push('\n');
    out
}
