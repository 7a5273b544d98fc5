//! Human output: aligned tables and short relative times. Every string a
//! peer supplied (service, span and route names, log bodies, error messages)
//! goes through [`esc`] before it reaches the terminal: every table cell via
//! [`add_row`], and the text around the tables by hand.

use comfy_table::{Table, presets};
use coral_proto::span_tree;
use coral_proto::{
    AgentStatus, ColonyStatus, LogRecord, Member, ServiceHealth, SpanRecord, TokenCreated,
    TraceSummary,
};
use std::borrow::Cow;
use std::time::Duration;

/// Untrusted text made safe for a terminal (issue 16): control characters
/// (C0 such as ESC, BEL, CR and backspace; DEL; C1) are shown escaped
/// (`\u{1b}`), so no OTLP client, agent or captured request can move the
/// cursor, set the window title or clear the screen. `coral audit` escapes
/// the same way.
pub fn esc(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Adds a row with every cell escaped.
pub fn add_row(t: &mut Table, cells: Vec<String>) {
    t.add_row(
        cells
            .iter()
            .map(|c| esc(c).into_owned())
            .collect::<Vec<_>>(),
    );
}

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
        esc(&s.colony_id),
        s.version,
        s.pid,
        span(now - s.started_at_ms),
        esc(&s.rpc_addr),
        esc(&s.state_dir),
        s.stored_samples,
        s.stored_spans,
        s.stored_metric_points,
        s.stored_logs
    );
    if let Some(m) = &s.mesh {
        out.push_str(&format!(
            "Mesh: {} on {} (subnet {}), endpoints {}; key from {}, TUN {}\n",
            m.mesh_ip,
            m.interface,
            m.subnet,
            if m.endpoints.is_empty() {
                "none (set colony.mesh.endpoints)".to_string()
            } else {
                m.endpoints.join(", ")
            },
            m.key_source,
            m.tun_path
        ));
    } else {
        out.push_str("Mesh: off (colony.mesh.enabled = false: plain TCP, development only)\n");
    }
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
        add_row(
            &mut agents,
            vec![
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
            ],
        );
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
            add_row(&mut services, row);
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
            esc(link.colony_id.as_deref().unwrap_or("?")),
            esc(&link.addr),
            span(now - link.since_ms),
            ago(now, link.last_heartbeat_ms)
        ),
        coral_proto::LinkState::Connecting => format!(
            "connecting to the colony for {} ({} attempts; last error: {})",
            span(now - link.since_ms),
            link.attempts,
            esc(link.last_error.as_deref().unwrap_or("none"))
        ),
    };
    let mesh = match (&s.mesh_ip, &s.mesh_interface) {
        (Some(ip), Some(i)) => format!("Mesh: {ip} on {i}\n"),
        _ => String::new(),
    };
    let mut out = format!(
        "Agent {}  (id {}, coral {}, pid {}, up {})\nColony: {}\n{mesh}Samples: {} stored, {} waiting for the colony, {} dropped\nOTLP: {}; stored {} spans, {} metric points, {} log records\n",
        esc(&s.name),
        esc(&s.agent_id),
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
    if let Some(rpc) = &s.rpc_addr {
        out.push_str(&format!("Agent RPC (colony → agent): {rpc}\n"));
    }
    if let Some(e) = &s.exec {
        let p = &e.policy;
        let state = if p.missing {
            "missing: every exec is denied".to_string()
        } else {
            format!("{} rules, loaded {}", p.rules, ago(now, p.loaded_at_ms))
        };
        out.push_str(&format!("Exec policy: {} ({state})\n", esc(&p.path)));
        if let Some(err) = &p.error {
            out.push_str(&format!(
                "Exec policy NOT reloaded, the previous one stays in force: {}\n",
                esc(err)
            ));
        }
        out.push_str(&format!(
            "Exec isolation: {}; {} running\n",
            e.isolation, e.running
        ));
    }
    out.push_str(&match &s.ebpf {
        Some(e) if e.running => format!(
            "eBPF: running via {}; {} events, {} requests, {} dropped\n",
            e.path, e.events, e.requests, e.dropped
        ),
        Some(e) => format!(
            "eBPF: off ({})\n",
            esc(e.error.as_deref().unwrap_or("stopped"))
        ),
        None => "eBPF: off\n".to_string(),
    });
    if let Some(d) = &s.debug {
        let l = &d.limits;
        out.push_str(&format!(
            "Debug: {}/{} sessions, {}/{} attach points, {} calls stored; per session at most {} functions and {} s; per probe at most {} µs/s of CPU (about {} events/s at {} µs a hit)\n",
            d.active_sessions,
            l.max_sessions,
            d.attach_points,
            l.max_points_per_agent,
            d.stored_calls,
            l.max_functions_per_session,
            l.max_ttl_s,
            l.budget_us_per_s,
            l.max_events_per_s_per_probe,
            l.hit_cost_ns / 1000,
        ));
        for sess in &d.sessions {
            for p in &sess.probes {
                out.push_str(&format!(
                    "  {} {} (pid {}): {} hits, {} events/s, {} µs/s of CPU, {}, {} left\n",
                    esc(&sess.id),
                    esc(&p.function),
                    sess.pid,
                    p.hits,
                    p.events_per_s,
                    p.cost_us_per_s,
                    esc(&p.state),
                    span((sess.expires_ms - now).max(0)),
                ));
            }
        }
    }
    if s.services.is_empty() {
        out.push_str("\nNo services: add one with 'coral connect NAME:PORT[:HEALTH]'.\n");
        return out;
    }
    let mut t = table(&SERVICE_HEADER);
    for svc in &s.services {
        add_row(&mut t, service_row(now, svc));
    }
    out.push('\n');
    out.push_str(&t.to_string());
    out.push('\n');
    out
}

fn micros(us: i64) -> String {
    latency(Some(us.max(0) as u64))
}

pub fn traces(now_ms: i64, traces: &[TraceSummary]) -> String {
    if traces.is_empty() {
        return "No traces in that window. Point an OTLP exporter at an agent (4317 gRPC, 4318 HTTP).\n".into();
    }
    let mut t = table(&[
        "TRACE", "ROOT", "SERVICES", "SPANS", "ERRORS", "DURATION", "STARTED",
    ]);
    for tr in traces {
        add_row(
            &mut t,
            vec![
                tr.trace_id.clone(),
                format!("{}: {}", tr.service, tr.name),
                tr.services.join(","),
                tr.spans.to_string(),
                tr.errors.to_string(),
                micros(tr.duration_us),
                ago(now_ms, Some(tr.start_us / 1000)),
            ],
        );
    }
    t.to_string() + "\n"
}

pub fn trace_tree(spans: &[SpanRecord]) -> String {
    let (mut roots, children) = span_tree::tree(spans);
    let start = spans.iter().map(|s| s.start_us).min().unwrap_or(0);
    let end = spans
        .iter()
        .map(|s| s.start_us + s.duration_us)
        .max()
        .unwrap_or(0);
    let path = span_tree::critical_path(&roots, &children);
    let errors = spans.iter().filter(|s| s.status_code == "error").count();
    let out = format!(
        "Trace {}  ({} spans, {}, {} error{})\n\n",
        esc(&spans[0].trace_id),
        spans.len(),
        micros(end - start),
        errors,
        if errors == 1 { "" } else { "s" }
    );
    let mut t = table(&["", "SPAN", "SERVICE", "KIND", "START", "DURATION", "STATUS"]);
    fn walk<'a>(
        s: &'a SpanRecord,
        depth: usize,
        children: &span_tree::Children<'a>,
        rows: &mut Vec<(usize, &'a SpanRecord)>,
    ) {
        rows.push((depth, s));
        if let Some(c) = children.get(s.span_id.as_str()) {
            let mut c = c.clone();
            c.sort_by_key(|x| x.start_us);
            for x in c {
                walk(x, depth + 1, children, rows);
            }
        }
    }
    let mut rows = Vec::new();
    roots.sort_by_key(|s| s.start_us);
    for r in roots {
        walk(r, 0, &children, &mut rows);
    }
    for (depth, s) in rows {
        let status = match (s.status_code.as_str(), s.status_message.is_empty()) {
            ("error", false) => format!("error: {}", s.status_message),
            (code, _) => code.to_string(),
        };
        add_row(
            &mut t,
            vec![
                if path.contains(&s.span_id) {
                    "*".into()
                } else {
                    String::new()
                },
                format!("{}{}", "  ".repeat(depth), s.name),
                s.service.clone(),
                s.kind.clone(),
                format!("+{}", micros(s.start_us - start)),
                micros(s.duration_us),
                status,
            ],
        );
    }
    out + &t.to_string()
        + "\n\n* critical path: from the root, the child that ends last, down to a leaf.\n"
}

pub fn logs(logs: &[LogRecord]) -> String {
    if logs.is_empty() {
        return "No log records in that window.\n".into();
    }
    let mut t = table(&["TIME", "SERVICE", "SEVERITY", "TRACE", "BODY"]);
    for l in logs {
        let time = std::time::UNIX_EPOCH + std::time::Duration::from_micros(l.ts_us.max(0) as u64);
        add_row(
            &mut t,
            vec![
                humantime::format_rfc3339_millis(time).to_string(),
                l.service.clone(),
                if l.severity_text.is_empty() {
                    l.severity_number.to_string()
                } else {
                    l.severity_text.clone()
                },
                l.trace_id.clone().unwrap_or_else(|| "-".into()),
                l.body.clone(),
            ],
        );
    }
    t.to_string() + "\n"
}

pub fn token(t: &TokenCreated) -> String {
    let now = coral_proto::now_ms();
    format!(
        "{}\n\nJoin token {} for colony {} (endpoints {}): valid for {}, {} use{}.\nOn each host: coral agent start --join <token>\n",
        t.token,
        t.id,
        t.colony_id,
        t.endpoints.join(", "),
        span(t.expires_at_ms - now),
        t.uses,
        if t.uses == 1 { "" } else { "s" }
    )
}

pub fn members(now: i64, members: &[Member]) -> String {
    if members.is_empty() {
        return "No agents have joined: create a token with 'coral colony token create'.\n".into();
    }
    let mut t = table(&[
        "AGENT",
        "ID",
        "MESH IP",
        "ENDPOINT",
        "HANDSHAKE",
        "LAST SEEN",
        "ONLINE",
    ]);
    for m in members {
        add_row(
            &mut t,
            vec![
                m.name.clone(),
                m.agent_id.chars().take(8).collect(),
                m.mesh_ip.clone().unwrap_or_else(|| "local".into()),
                m.endpoint.clone().unwrap_or_else(|| "-".into()),
                match (&m.mesh_ip, m.last_handshake_ms) {
                    (None, _) => "-".into(),
                    (_, h) => ago(now, h),
                },
                ago(now, m.last_seen_ms),
                if m.online { "yes" } else { "no" }.into(),
            ],
        );
    }
    t.to_string() + "\n"
}

fn pct(p: f64) -> String {
    format!("{p:.1}%")
}

fn red_cells(f: &coral_proto::RedFigures) -> Vec<String> {
    vec![
        format!("{:.1}", f.rps),
        f.count.to_string(),
        f.errors.to_string(),
        pct(f.error_pct),
        latency(Some(f.p50_us)),
        latency(Some(f.p95_us)),
        latency(Some(f.p99_us)),
    ]
}

fn sources(r: &coral_proto::RedRow) -> String {
    r.sources
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join("+")
}

/// One row: the primary source's figures, the baseline p95 and the change
/// when a baseline was asked for, and OTLP's figures beside eBPF's.
fn red_line(r: &coral_proto::RedRow, first: Vec<String>, baseline: bool) -> Vec<String> {
    let mut row = first;
    let Some((source, main)) = r.primary() else {
        return row;
    };
    row.push(sources(r));
    row.extend(red_cells(&main.recent));
    if baseline {
        match main.baseline.as_ref().filter(|b| b.count > 0) {
            Some(b) => {
                row.push(latency(Some(b.p95_us)));
                row.push(if b.p95_us > 0 {
                    format!("{:.1}x", main.recent.p95_us as f64 / b.p95_us as f64)
                } else {
                    "-".into()
                });
            }
            None => row.extend(["-".to_string(), "new".to_string()]),
        }
    }
    match (&r.otlp, source) {
        (Some(o), coral_proto::Source::Ebpf) => row.extend([
            o.recent.count.to_string(),
            latency(Some(o.recent.p50_us)),
            latency(Some(o.recent.p95_us)),
        ]),
        _ => row.extend(["-".to_string(), "-".to_string(), "-".to_string()]),
    }
    row
}

const NO_RED: &str = "No requests seen in that window. Connect a service ('coral connect api:8080'); \
the agent captures its HTTP traffic with eBPF (see 'coral agent status'), and apps that send OTLP \
traces are counted from their server spans.\n";

fn red_header(first: &[&'static str], baseline: bool) -> Vec<&'static str> {
    let mut h = first.to_vec();
    h.extend([
        "SOURCE", "RPS", "REQUESTS", "ERRORS", "ERR%", "P50", "P95", "P99",
    ]);
    if baseline {
        h.extend(["BASE P95", "CHANGE"]);
    }
    h.extend(["SPANS", "SPAN P50", "SPAN P95"]);
    h
}

/// What the colony could not see, as a closing line.
fn coverage_note(c: &coral_proto::Coverage) -> String {
    c.gaps()
        .map(|g| format!("\nIncomplete: {g}.\n"))
        .unwrap_or_default()
}

pub fn metrics(m: &coral_proto::RedReport) -> String {
    if m.services.is_empty() {
        return NO_RED.to_string() + &coverage_note(&m.coverage);
    }
    let baseline = m.window.baseline_ms > 0;
    let mut t = table(&red_header(&["SERVICE"], baseline));
    for s in &m.services {
        add_row(&mut t, red_line(s, vec![s.service.clone()], baseline));
    }
    let mut r = table(&red_header(&["SERVICE", "ROUTE"], baseline));
    for s in &m.routes {
        let route = format!(
            "{} {}",
            s.method.as_deref().unwrap_or(""),
            s.route.as_deref().unwrap_or("")
        );
        add_row(
            &mut r,
            red_line(
                s,
                vec![s.service.clone(), route.trim().to_string()],
                baseline,
            ),
        );
    }
    format!("{t}\n\n{r}\n{}", coverage_note(&m.coverage))
}

pub fn top(m: &coral_proto::RedReport) -> String {
    let mut out = format!(
        "coral top — last {} (refreshing; Ctrl-C to stop)\n\n",
        span(m.window.until_ms - m.window.since_ms)
    );
    if m.services.is_empty() {
        out.push_str(NO_RED);
        return out;
    }
    let mut t = table(&[
        "SERVICE", "SOURCE", "RPS", "REQUESTS", "ERRORS", "ERR%", "P50", "P95", "P99",
    ]);
    for s in &m.services {
        let mut row = vec![s.service.clone()];
        if let Some((_, main)) = s.primary() {
            row.push(sources(s));
            row.extend(red_cells(&main.recent));
        }
        add_row(&mut t, row);
    }
    out.push_str(&t.to_string());
    out.push('\n');
    out.push_str(&coverage_note(&m.coverage));
    out
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1}GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1}MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1}KiB", n as f64 / 1024.0),
        n => format!("{n}B"),
    }
}

pub fn service_map(m: &coral_proto::ServiceMap) -> String {
    if m.edges.is_empty() {
        return "No connections seen in that window. Connect services ('coral connect api:8080'); \
the agent maps their connections with eBPF, and OTLP traces add the calls between services.\n"
            .to_string()
            + &coverage_note(&m.coverage);
    }
    let mut t = table(&[
        "FROM", "TO", "ADDRESS", "SOURCE", "CONNS", "FAILED", "SENT", "RECEIVED", "RTT AVG",
        "CALLS", "ERRORS", "MEAN",
    ]);
    for e in &m.edges {
        let ebpf = e.sources.contains(&coral_proto::Source::Ebpf);
        let otlp = e.sources.contains(&coral_proto::Source::Otlp);
        let dash = || "-".to_string();
        add_row(
            &mut t,
            vec![
                e.from.clone(),
                e.to.clone(),
                e.to_addr.clone().unwrap_or_else(dash),
                e.sources
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join("+"),
                if ebpf {
                    e.connections.to_string()
                } else {
                    dash()
                },
                if ebpf { e.failures.to_string() } else { dash() },
                if ebpf { bytes(e.bytes_sent) } else { dash() },
                if ebpf {
                    bytes(e.bytes_received)
                } else {
                    dash()
                },
                if ebpf {
                    latency(Some(e.rtt_avg_us))
                } else {
                    dash()
                },
                if otlp { e.calls.to_string() } else { dash() },
                if otlp { e.errors.to_string() } else { dash() },
                if otlp {
                    latency(Some(e.mean_us))
                } else {
                    dash()
                },
            ],
        );
    }
    t.to_string() + "\n" + &coverage_note(&m.coverage)
}

fn clip(s: &str, max: usize) -> String {
    let s = esc(s);
    if s.chars().count() <= max {
        return s.into_owned();
    }
    let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
    t.push('…');
    t
}

fn exec_result(r: &coral_proto::ExecAuditRecord) -> String {
    match (&r.outcome, r.state.as_str()) {
        (Some(o), _) => {
            let mut parts = Vec::new();
            if o.timed_out {
                parts.push("timed out".to_string());
            }
            if o.cancelled {
                parts.push("cancelled".to_string());
            }
            match (o.exit_code, o.signal, &o.error) {
                (_, _, Some(e)) => parts.push(clip(e, 40)),
                (Some(c), _, _) => parts.push(format!("exit {c}")),
                (_, Some(sig), _) => parts.push(format!("signal {sig}")),
                _ => {}
            }
            parts.push(format!("{} B", o.output_bytes));
            if o.truncated {
                parts.push("cut".to_string());
            }
            parts.push(latency(Some(o.duration_us)));
            parts.join(", ")
        }
        (None, "denied") => "-".to_string(),
        (None, "interrupted") => "interrupted (agent died)".to_string(),
        (None, other) => other.to_string(),
    }
}

/// `coral audit`: agents' exec records and the colony's own rows, newest first.
pub fn audit(now: i64, r: &coral_proto::AuditReport) -> String {
    let mut out = String::new();
    if r.exec.is_empty() && r.colony.is_empty() {
        out.push_str("No audit records in that window.\n");
    }
    if !r.exec.is_empty() {
        let mut t = table(&[
            "WHEN", "AGENT", "CALLER", "SERVICE", "COMMAND", "DECISION", "RULE", "RESULT",
        ]);
        for e in &r.exec {
            let cmd: Vec<String> = e
                .argv
                .iter()
                .map(|a| a.escape_debug().to_string())
                .collect();
            add_row(
                &mut t,
                vec![
                    ago(now, Some(e.ts_ms)),
                    e.agent_name.clone(),
                    clip(&e.caller, 28),
                    e.service.clone(),
                    clip(&cmd.join(" "), 40),
                    e.decision.clone(),
                    e.rule.clone().unwrap_or_else(|| "-".into()),
                    exec_result(e),
                ],
            );
        }
        out.push_str("Exec on agents:\n");
        out.push_str(&t.to_string());
        out.push('\n');
    }
    if !r.colony.is_empty() {
        let mut t = table(&["WHEN", "ACTOR", "ACTION", "DETAIL", "CLI"]);
        for c in &r.colony {
            add_row(
                &mut t,
                vec![
                    ago(now, Some(c.ts_ms)),
                    clip(&c.actor, 28),
                    c.action.clone(),
                    clip(&c.detail, 50),
                    clip(c.cli_equivalent.as_deref().unwrap_or("-"), 40),
                ],
            );
        }
        if !r.exec.is_empty() {
            out.push('\n');
        }
        out.push_str("Colony:\n");
        out.push_str(&t.to_string());
        out.push('\n');
    }
    out
}

/// A Graphviz digraph: one node per caller and callee, one edge per pair.
pub fn service_map_dot(m: &coral_proto::ServiceMap) -> String {
    let q = |s: &str| format!("\"{}\"", esc(s).replace('\\', "\\\\").replace('"', "\\\""));
    let mut out = String::from("digraph coral {\n  rankdir=LR;\n");
    for e in &m.edges {
        let mut label = Vec::new();
        if e.sources.contains(&coral_proto::Source::Ebpf) {
            label.push(format!(
                "{} conns, {} failed, rtt {}",
                e.connections,
                e.failures,
                latency(Some(e.rtt_avg_us))
            ));
        }
        if e.sources.contains(&coral_proto::Source::Otlp) {
            label.push(format!(
                "{} calls, {} errors, mean {}",
                e.calls,
                e.errors,
                latency(Some(e.mean_us))
            ));
        }
        out.push_str(&format!(
            "  {} -> {} [label={}];\n",
            q(&e.from),
            q(&e.to),
            q(&label.join("; "))
        ));
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(id: &str, parent: Option<&str>, start: i64, dur: i64) -> SpanRecord {
        SpanRecord {
            agent_id: "a".into(),
            seq: 0,
            trace_id: "t".into(),
            span_id: id.into(),
            parent_span_id: parent.map(str::to_string),
            service: "svc".into(),
            name: id.into(),
            kind: "internal".into(),
            start_us: start,
            duration_us: dur,
            status_code: "unset".into(),
            status_message: String::new(),
            attributes: "{}".into(),
            events: "[]".into(),
            resource: "{}".into(),
            scope: String::new(),
        }
    }

    /// Issue 16 item 5: `coral query traces|trace|logs` printed OTLP-supplied
    /// names and bodies raw; a span name set the terminal title and a log
    /// body cleared the screen.
    #[test]
    fn issue16_human_output_escapes_terminal_control_sequences() {
        let evil = "x\u{1b}]0;pwned\u{7}\u{1b}[2J\u{9b}31m\r\u{8}";
        let mut s = span("root", None, 0, 100);
        s.name = evil.into();
        s.service = evil.into();
        s.status_code = "error".into();
        s.status_message = evil.into();
        s.trace_id = evil.into();
        let summary = TraceSummary {
            trace_id: evil.into(),
            service: evil.into(),
            name: evil.into(),
            start_us: 0,
            duration_us: 1,
            spans: 1,
            errors: 0,
            services: vec![evil.into()],
        };
        let log = LogRecord {
            agent_id: "a".into(),
            seq: 1,
            service: evil.into(),
            ts_us: 0,
            severity_number: 9,
            severity_text: evil.into(),
            body: evil.into(),
            trace_id: Some(evil.into()),
            span_id: None,
            attributes: "{}".into(),
        };
        let m = coral_proto::ServiceMap {
            window: coral_proto::Window::last(1000, 0, 1000),
            edges: vec![coral_proto::MapEdge {
                from: evil.into(),
                to: evil.into(),
                to_addr: Some(evil.into()),
                sources: vec![coral_proto::Source::Ebpf, coral_proto::Source::Otlp],
                connections: 1,
                rtt_avg_us: 1,
                rtt_max_us: 1,
                ..Default::default()
            }],
            coverage: coral_proto::Coverage::default(),
        };
        for out in [
            traces(0, &[summary]),
            trace_tree(&[s]),
            logs(&[log]),
            service_map(&m),
            service_map_dot(&m),
        ] {
            assert!(
                !out.chars().any(|c| c.is_control() && c != '\n'),
                "control characters reach the terminal: {out:?}"
            );
            assert!(out.contains("\\u{1b}]0;pwned"), "{out}");
        }
    }

    #[test]
    fn critical_path_follows_the_child_that_ends_last() {
        // root 0..100; a 0..30; b 10..90 (ends last); b1 10..20; b2 50..88 (ends last under b).
        let spans = vec![
            span("root", None, 0, 100),
            span("a", Some("root"), 0, 30),
            span("b", Some("root"), 10, 80),
            span("b1", Some("b"), 10, 10),
            span("b2", Some("b"), 50, 38),
        ];
        let text = trace_tree(&spans);
        assert!(text.contains("5 spans"), "{text}");
        // The starred rows: exactly the critical path (coral_proto::span_tree).
        let starred: Vec<&str> = text
            .lines()
            .filter(|l| l.trim_start().starts_with('*') && !l.contains("critical path"))
            .filter_map(|l| l.split_whitespace().nth(1))
            .collect();
        assert_eq!(starred, ["root", "b", "b2"], "{text}");
    }

    #[test]
    fn dot_quotes_names_and_falls_back_to_the_address() {
        let m = coral_proto::ServiceMap {
            window: coral_proto::Window::last(1000, 0, 1000),
            edges: vec![coral_proto::MapEdge {
                from: "we\"ird".into(),
                to: "10.0.0.1:80".into(),
                to_addr: Some("10.0.0.1:80".into()),
                sources: vec![coral_proto::Source::Ebpf],
                connections: 2,
                failures: 1,
                rtt_avg_us: 120,
                rtt_max_us: 300,
                ..Default::default()
            }],
            coverage: coral_proto::Coverage::default(),
        };
        let dot = super::service_map_dot(&m);
        assert!(dot.starts_with("digraph coral {"), "{dot}");
        assert!(dot.contains("\"we\\\"ird\" -> \"10.0.0.1:80\""), "{dot}");
        assert!(dot.contains("2 conns, 1 failed"), "{dot}");
    }
}
