//! The built-in analyzer: what `coral ask` answers with when no LLM provider
//! is configured. It uses the colony's MCP tools, like a model would, and is
//! deterministic: the same data gives the same answer.
//!
//! The method: compare recent RED metrics with a baseline to find the
//! services (and their routes) whose latency or errors moved — from eBPF
//! when the service is only connected, from OTLP spans when it sends them —
//! walk the service map to separate cause from symptom (a service is a
//! symptom when something it calls moved too), break the cause's requests
//! down to the route or operation that carries the added time, confirm a
//! slow query with `EXPLAIN` where the exec tool is enabled, and answer:
//! what changed, when, by how much, where the time goes, the likely root
//! cause with a confidence, and a recommendation. Every tool answer carries
//! the colony's coverage; when something was out of sight (an agent
//! offline, rows in flight) the answer says so instead of "no problem".

mod explain;
mod probe;

pub use crate::tools::{Recorded, Recorder, Replay, Tools};

use serde::Serialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// The recent windows compared against the baseline before each, largest
/// first: the first pair in which something moved is used, so a young
/// deployment (or a demo) minutes old is still compared with its own past.
const WINDOWS: [(&str, &str); 3] = [("5m", "1h"), ("1m", "15m"), ("20s", "5m")];

/// One tool call the answer rests on.
#[derive(Debug, Clone, Serialize)]
pub struct Evidence {
    pub id: String,
    pub tool: String,
    pub args: Value,
    pub summary: String,
    /// Size of the tool's output.
    pub bytes: usize,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RootCause {
    /// The service (or database) at fault.
    pub service: String,
    /// missing_index, slow_query, slow_dependency, latency_regression,
    /// error_burst or dependency_down.
    pub kind: String,
    pub summary: String,
    /// The specific part at fault, when known: a route, an operation, a
    /// statement.
    pub component: Option<String>,
    /// 0–100.
    pub confidence: u8,
    pub recommendation: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Analysis {
    pub answer: String,
    pub root_cause: Option<RootCause>,
    pub evidence: Vec<Evidence>,
}

/// Calls tools and keeps the evidence.
struct Session<'a, T: Tools> {
    tools: &'a T,
    available: BTreeSet<String>,
    evidence: Vec<Evidence>,
    /// What the colony said it could not see, per tool answer.
    gaps: BTreeSet<String>,
}

impl<T: Tools> Session<'_, T> {
    async fn call(&mut self, tool: &str, args: Value) -> anyhow::Result<Value> {
        let text = self.tools.call(tool, args.clone()).await;
        let bytes = text.as_ref().map_or(0, String::len);
        let v = text.and_then(|t| {
            serde_json::from_str::<Value>(&t)
                .map_err(|e| anyhow::anyhow!("tool {tool} returned invalid JSON: {e}"))
        });
        let summary = match &v {
            Ok(_) => "ok".to_string(),
            Err(e) => format!("error: {e}"),
        };
        if let Ok(v) = &v
            && v["coverage"]["complete"] == false
        {
            let gap = v["coverage"]["missing"]
                .as_str()
                .unwrap_or("some data may be missing");
            self.gaps.insert(gap.to_string());
        }
        self.evidence.push(Evidence {
            id: format!("e{}", self.evidence.len() + 1),
            tool: tool.to_string(),
            args,
            summary,
            bytes,
        });
        v
    }

    fn note(&mut self, summary: String) {
        if let Some(e) = self.evidence.last_mut() {
            e.summary = summary;
        }
    }

    fn last_id(&self) -> String {
        self.evidence
            .last()
            .map(|e| e.id.clone())
            .unwrap_or_default()
    }
}

/// A service whose RED figures moved against the baseline.
#[derive(Debug, Clone)]
struct Moved {
    service: String,
    base_p95: f64,
    recent_p95: f64,
    base_p50: f64,
    recent_p50: f64,
    base_err: f64,
    recent_err: f64,
    latency: bool,
    errors: bool,
    evidence: String,
    window: String,
    baseline: String,
    /// `ebpf` or `otlp`: where the figures come from.
    source: String,
    /// The route that moved most, with its p95 before and now (ms).
    route: Option<(String, f64, f64)>,
    moved_s_ago: Option<i64>,
}

impl Moved {
    fn p95_ratio(&self) -> f64 {
        if self.base_p95 > 0.0 {
            self.recent_p95 / self.base_p95
        } else {
            0.0
        }
    }
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

/// Whether a RED row's latency and errors moved against its baseline.
fn movement(s: &Value) -> (bool, bool) {
    let (r, b) = (&s["recent"], &s["baseline"]);
    let (rn, bn) = (f(&r["requests"]), f(&b["requests"]));
    if rn < 3.0 {
        return (false, false);
    }
    let (rp, bp) = (f(&r["p95_ms"]), f(&b["p95_ms"]));
    let (r50, b50) = (f(&r["p50_ms"]), f(&b["p50_ms"]));
    let (re, be) = (f(&r["error_pct"]), f(&b["error_pct"]));
    // With few requests the p95 is one request's latency: the tail counts
    // only when the mean moved with it (issue 15: one slow outlier among
    // eight requests is noise, not an incident).
    let (rm, bm) = (r["mean_ms"].as_f64(), b["mean_ms"].as_f64());
    let mean_moved = match (rm, bm) {
        (Some(rm), Some(bm)) if bm > 0.0 && rn >= 20.0 => rm / bm >= 1.2 && rm - bm >= 5.0,
        (Some(rm), Some(bm)) => bm > 0.0 && rm / bm >= 1.5 && rm - bm >= 10.0,
        _ => true,
    };
    // The tail moved with the mean (or over many requests), or the middle
    // did (a baseline that caught the start of the change has a high p95,
    // but its p50 stays put) over enough requests not to be the route mix.
    let tail = bp > 0.0 && rp / bp >= 1.5 && rp - bp >= 10.0 && (rn >= 50.0 || mean_moved);
    let middle = b50 > 0.0 && r50 / b50 >= 2.0 && r50 - b50 >= 10.0 && rn >= 20.0 && mean_moved;
    let latency = bn >= 5.0 && (tail || middle);
    let errors = re - be >= 5.0 && f(&r["errors"]) >= 3.0;
    (latency, errors)
}

fn moved(red: &Value, evidence: &str, window: &str, baseline: &str) -> Vec<Moved> {
    let mut out = Vec::new();
    for s in red["services"].as_array().into_iter().flatten() {
        let (mut latency, mut errors) = movement(s);
        // The route that moved most: the largest p95 rise (then errors)
        // among the routes that moved (the tool lists the most moved first).
        let route = s["routes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|x| {
                let (l, e) = movement(x);
                l || e
            })
            .max_by(|x, y| {
                let rise = |v: &Value| f(&v["recent"]["p95_ms"]) - f(&v["baseline"]["p95_ms"]);
                let errs = |v: &Value| f(&v["recent"]["errors"]);
                (rise(x), errs(x))
                    .partial_cmp(&(rise(y), errs(y)))
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
        // A slow route of a busy service moves the service's figures
        // little: the service moved when one of its routes did.
        let mut figures = s;
        if !latency
            && !errors
            && let Some(r) = route
        {
            (latency, errors) = movement(r);
            figures = r;
        }
        if !(latency || errors) {
            continue;
        }
        let (r, b) = (&figures["recent"], &figures["baseline"]);
        out.push(Moved {
            service: s["service"].as_str().unwrap_or("?").to_string(),
            base_p95: f(&b["p95_ms"]),
            recent_p95: f(&r["p95_ms"]),
            base_p50: f(&b["p50_ms"]),
            recent_p50: f(&r["p50_ms"]),
            base_err: f(&b["error_pct"]),
            recent_err: f(&r["error_pct"]),
            latency,
            errors,
            evidence: evidence.to_string(),
            window: window.to_string(),
            baseline: baseline.to_string(),
            source: s["source"].as_str().unwrap_or("otlp").to_string(),
            route: route.and_then(|x| {
                Some((
                    x["route"].as_str()?.to_string(),
                    f(&x["baseline"]["p95_ms"]),
                    f(&x["recent"]["p95_ms"]),
                ))
            }),
            moved_s_ago: figures["moved_s_ago"].as_i64(),
        });
    }
    out
}

/// A service that is down now.
#[derive(Debug, Clone)]
struct Down {
    service: String,
    since_s: i64,
    error: String,
}

fn fmt_ms(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else if ms >= 10.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

fn ago(s: i64) -> String {
    if s < 90 {
        format!("{s} s ago")
    } else if s < 5400 {
        format!("{} min ago", (s + 30) / 60)
    } else {
        format!("{:.1} h ago", s as f64 / 3600.0)
    }
}

/// Placeholders of a parameterised statement replaced by a literal of
/// unknown type (PostgreSQL resolves `'1'` to the column's type), so the
/// statement can be planned with `EXPLAIN`.
pub fn explainable(statement: &str) -> String {
    let mut out = String::with_capacity(statement.len());
    let mut chars = statement.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '$' if chars.peek().is_some_and(|d| d.is_ascii_digit()) => {
                while chars.peek().is_some_and(|d| d.is_ascii_digit()) {
                    chars.next();
                }
                out.push_str("'1'");
            }
            '%' if chars.peek() == Some(&'s') => {
                chars.next();
                out.push_str("'1'");
            }
            '?' => out.push_str("'1'"),
            c => out.push(c),
        }
    }
    out.trim().trim_end_matches(';').to_string()
}

/// What an `EXPLAIN` plan says about a scan: the table scanned
/// sequentially and the column it filters on, if any.
pub fn seq_scan(plan: &str) -> Option<(String, Option<String>)> {
    let mut lines = plan.lines().map(str::trim);
    while let Some(line) = lines.next() {
        let line = line.trim_start_matches("->").trim();
        let Some(rest) = line
            .strip_prefix("Seq Scan on ")
            .or_else(|| line.strip_prefix("Parallel Seq Scan on "))
        else {
            continue;
        };
        let table = rest.split_whitespace().next()?.to_string();
        // The filter is on one of the next lines: "Filter: (user_id = 1)".
        let column = lines
            .clone()
            .take(4)
            .find_map(|l| l.trim().strip_prefix("Filter: "))
            .and_then(|f| {
                f.trim_start_matches('(')
                    .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.'))
                    .next()
                    .map(|c| c.rsplit('.').next().unwrap_or(c).to_string())
            })
            .filter(|c| !c.is_empty());
        return Some((table, column));
    }
    None
}

/// Answers `question` from the colony's tools.
pub async fn analyze<T: Tools>(tools: &T, question: &str) -> anyhow::Result<Analysis> {
    let available = tools.list().await?.into_iter().map(|t| t.name).collect();
    let mut s = Session {
        tools,
        available,
        evidence: Vec::new(),
        gaps: BTreeSet::new(),
    };
    let health = health(&mut s).await?;
    let red = red_until_moved(&mut s).await?;
    let map = service_map(&mut s, red.base).await?;
    let troubled: BTreeSet<String> = red
        .moved
        .iter()
        .map(|m| m.service.clone())
        .chain(health.down.iter().map(|d| d.service.clone()))
        .collect();
    if troubled.is_empty() {
        return Ok(Analysis {
            answer: no_problem(&s.gaps, &health, &red, &map),
            root_cause: None,
            evidence: s.evidence,
        });
    }
    let mut d = diagnose(&mut s, &health, &red, &map, &troubled).await?;
    // Live probes when the data points into the service's own code (issue 12).
    probe::escalate(tools, &mut s.evidence, &mut d.root, &mut d.where_time).await;
    let focus = focus_line(question, &health, &red, &map, &troubled, d.root.as_ref());
    Ok(Analysis {
        answer: answer(focus, &d, &map, &s.gaps),
        root_cause: d.root,
        evidence: s.evidence,
    })
}

/// Step 1, health: the connected services and those down.
struct Health {
    /// Every connected service and its port.
    known: BTreeMap<String, u16>,
    down: Vec<Down>,
    /// The evidence id of `coral_services`.
    ev: String,
}

async fn health<T: Tools>(s: &mut Session<'_, T>) -> anyhow::Result<Health> {
    let services = s.call("coral_services", json!({})).await?;
    let mut known: BTreeMap<String, u16> = BTreeMap::new();
    let mut down = Vec::new();
    for a in services["agents"].as_array().into_iter().flatten() {
        for svc in a["services"].as_array().into_iter().flatten() {
            let name = svc["name"].as_str().unwrap_or("?").to_string();
            known.insert(name.clone(), svc["port"].as_u64().unwrap_or(0) as u16);
            if svc["health"] == "down" {
                down.push(Down {
                    service: name,
                    since_s: svc["since_s_ago"].as_i64().unwrap_or(0),
                    error: svc["last_error"].as_str().unwrap_or("").to_string(),
                });
            }
        }
    }
    let ev = s.last_id();
    s.note(format!(
        "{} services, {} down{}",
        known.len(),
        down.len(),
        down.iter()
            .map(|d| format!(": {} ({})", d.service, d.error))
            .collect::<String>()
    ));
    Ok(Health { known, down, ev })
}

/// Step 2, RED against the baseline: the first window pair in which
/// something moved (the last pair if nothing did).
struct Red {
    /// The `coral_red_metrics` answer.
    red: Value,
    ev: String,
    moved: Vec<Moved>,
    win: &'static str,
    base: &'static str,
}

async fn red_until_moved<T: Tools>(s: &mut Session<'_, T>) -> anyhow::Result<Red> {
    let mut chosen = None;
    for (win, base) in WINDOWS {
        let red = s
            .call(
                "coral_red_metrics",
                json!({"window": win, "baseline": base}),
            )
            .await?;
        let ev = s.last_id();
        let moved = moved(&red, &ev, win, base);
        s.note(format!(
            "{} services with requests; moved: {}",
            red["services"].as_array().map_or(0, Vec::len),
            if moved.is_empty() {
                "none".to_string()
            } else {
                moved
                    .iter()
                    .map(|m| m.service.clone())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ));
        let found = !moved.is_empty();
        if chosen.is_none() || found {
            chosen = Some(Red {
                red,
                ev,
                moved,
                win,
                base,
            });
        }
        if found {
            break;
        }
    }
    Ok(chosen.expect("WINDOWS is not empty"))
}

/// Step 3, the map: who calls whom.
struct ServiceMap {
    calls: BTreeMap<String, BTreeSet<String>>,
    ev: String,
}

async fn service_map<T: Tools>(s: &mut Session<'_, T>, since: &str) -> anyhow::Result<ServiceMap> {
    let map = s.call("coral_service_map", json!({"since": since})).await?;
    let ev = s.last_id();
    let mut calls: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for e in map["edges"].as_array().into_iter().flatten() {
        if let (Some(a), Some(b)) = (e["from"].as_str(), e["to"].as_str()) {
            calls
                .entry(a.to_string())
                .or_default()
                .insert(b.to_string());
        }
    }
    s.note(format!(
        "{} edges: {}",
        map["edges"].as_array().map_or(0, Vec::len),
        calls
            .iter()
            .flat_map(|(a, bs)| bs.iter().map(move |b| format!("{a}→{b}")))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    Ok(ServiceMap { calls, ev })
}

/// The answer when nothing moved and nothing is down: what was compared,
/// what was not, and what the colony could not see.
fn no_problem(gaps: &BTreeSet<String>, health: &Health, red: &Red, map: &ServiceMap) -> String {
    let (health_ev, red_ev, map_ev, win, base) = (&health.ev, &red.ev, &map.ev, red.win, red.base);
    let n = red.red["services"].as_array().map_or(0, Vec::len);
    let sources: BTreeSet<&str> = red.red["services"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|x| x["sources"].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .collect();
    let seen = format!(
        "{} connected service(s), all up [{health_ev}]; latency and errors of the {n} service(s) with requests{} are within their baseline (last {win} vs the {base} before) [{red_ev}].",
        health.known.len(),
        if sources.is_empty() {
            String::new()
        } else {
            format!(
                " ({})",
                sources.iter().copied().collect::<Vec<_>>().join(" and ")
            )
        }
    );
    // Processes that connect to peers but serve no requests the
    // colony measures (queue consumers, jobs): their own work is
    // compared with nothing, so say so rather than vouch for it.
    let measured: BTreeSet<&str> = red.red["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x["service"].as_str())
        .collect();
    let unmeasured: Vec<&str> = map
        .calls
        .keys()
        .map(String::as_str)
        .filter(|a| !measured.contains(a))
        .collect();
    let seen = if unmeasured.is_empty() {
        seen
    } else {
        format!(
            "{seen} Not compared: {} connect to other services or databases [{map_ev}] but serve no requests the colony measures (queue consumers and jobs work outside requests); a backlog or slowdown in their own work does not show here, their OTLP spans or metrics (consumer lag, job duration) would show it.",
            if unmeasured.len() > 5 {
                format!(
                    "{} and {} more",
                    unmeasured[..5].join(", "),
                    unmeasured.len() - 5
                )
            } else {
                unmeasured.join(", ")
            }
        )
    };
    // Never "no problem" about data the colony could not see.
    if gaps.is_empty() {
        format!("No problem found. {seen}")
    } else {
        format!(
            "Nothing moved in what the colony could see, but it could not see everything: {}. So far: {seen} Ask again once the missing data has arrived.",
            gaps.iter().cloned().collect::<Vec<_>>().join("; ")
        )
    }
}

/// Step 4: what changed, cause and symptom, and the likely root cause.
struct Diagnosis {
    /// One line per moved or down service.
    what: Vec<String>,
    /// Moved services that call a troubled service, and which.
    symptoms: Vec<(Moved, String)>,
    when: Option<String>,
    where_time: Vec<String>,
    /// The mechanism (`coral_breakdown`), when one explains the change.
    explains: Vec<String>,
    root: Option<RootCause>,
}

/// A troubled service that calls a troubled service is a symptom of it;
/// the primary cause is a down service first, then the moved service that
/// is not a symptom with the largest change.
async fn diagnose<T: Tools>(
    s: &mut Session<'_, T>,
    health: &Health,
    red: &Red,
    map: &ServiceMap,
    troubled: &BTreeSet<String>,
) -> anyhow::Result<Diagnosis> {
    let health_ev = &health.ev;
    // How much each moved service's own latency rose (ms).
    let rises: BTreeMap<String, f64> = red
        .moved
        .iter()
        .map(|m| {
            let rise = (m.recent_p95 - m.base_p95).max(m.recent_p50 - m.base_p50);
            (m.service.clone(), rise)
        })
        .collect();
    let symptom_of = |svc: &str| -> Option<String> {
        map.calls
            .get(svc)
            .and_then(|ds| ds.iter().find(|d| troubled.contains(*d)).cloned())
    };
    let mut moved = red.moved.clone();
    moved.sort_by(|a, b| {
        b.p95_ratio()
            .partial_cmp(&a.p95_ratio())
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.service.cmp(&b.service))
    });
    let symptoms: Vec<(Moved, String)> = moved
        .iter()
        .filter_map(|m| symptom_of(&m.service).map(|d| (m.clone(), d)))
        .collect();

    let mut what = Vec::new();
    for m in &moved {
        what.push(describe_move(m));
    }
    for d in &health.down {
        what.push(format!(
            "{} is down since {} ({}) [{health_ev}]",
            d.service,
            ago(d.since_s),
            d.error
        ));
    }

    let cause_down = health
        .down
        .iter()
        .find(|d| symptoms.iter().any(|(_, to)| to == &d.service) || moved.is_empty())
        .or(health.down.first());
    let cause_moved = moved
        .iter()
        .find(|m| symptom_of(&m.service).is_none())
        .cloned();

    let mut where_time = Vec::new();
    let mut when = None;
    let mut explains: Vec<String> = Vec::new();
    let root = if let Some(d) = cause_down.filter(|_| cause_moved.is_none() || !symptoms.is_empty())
    {
        when = Some(format!("{} went down {}", d.service, ago(d.since_s)));
        Some(dependency_down(d, map))
    } else if let Some(m) = cause_moved {
        let drilled = drill(s, &m, &health.known).await?;
        let mut rc = drilled.root;
        where_time = drilled.where_time;
        when = drilled.when;
        // The mechanism, from every dimension the data has (issue 15). A
        // plan the database itself showed (EXPLAIN: a sequential scan where
        // an index was expected) is direct evidence and stands against any
        // inference from timings.
        if let Some(f) = mechanism(s, red.win, red.base, troubled, &rises).await
            && rc.kind != "missing_index"
        {
            rc = f.root;
            explains = f.lines;
        }
        Some(rc)
    } else {
        None
    };
    Ok(Diagnosis {
        what,
        symptoms,
        when,
        where_time,
        explains,
        root,
    })
}

/// The root cause when a service is down: its callers suffer.
fn dependency_down(d: &Down, map: &ServiceMap) -> RootCause {
    let dependents: Vec<String> = map
        .calls
        .iter()
        .filter(|(_, ds)| ds.contains(&d.service))
        .map(|(a, _)| a.clone())
        .collect();
    let hit = if dependents.is_empty() {
        String::new()
    } else {
        format!(" {} call(s) it [{}]", dependents.join(", "), map.ev)
    };
    RootCause {
        service: d.service.clone(),
        component: None,
        kind: "dependency_down".into(),
        summary: format!("{} is down ({}).{hit}", d.service, d.error),
        confidence: if dependents.is_empty() { 70 } else { 90 },
        recommendation: format!(
            "Bring {} back (check its process and logs: 'coral exec {} \"ss -tlnp\"'); its callers recover when it answers again.",
            d.service, d.service
        ),
    }
}

/// The answer's first line when the question names a service (or a route
/// of the root cause's service): whether that is where the problem is.
fn focus_line(
    question: &str,
    health: &Health,
    red: &Red,
    map: &ServiceMap,
    troubled: &BTreeSet<String>,
    root: Option<&RootCause>,
) -> Option<String> {
    let words: BTreeSet<String> = question
        .split(|c: char| !(c.is_alphanumeric() || c == '-' || c == '_'))
        .map(str::to_ascii_lowercase)
        .collect();
    let mut names: BTreeSet<String> = health.known.keys().cloned().collect();
    names.extend(
        red.red["services"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x["service"].as_str().map(str::to_string)),
    );
    names.extend(
        map.calls
            .iter()
            .flat_map(|(a, bs)| std::iter::once(a.clone()).chain(bs.iter().cloned())),
    );
    if let Some(focus) = names
        .iter()
        .find(|k| words.contains(&k.to_ascii_lowercase()))
    {
        let line = match root {
            Some(rc) if &rc.service == focus => format!("{focus} is where the problem is."),
            Some(rc) if troubled.contains(focus) => {
                format!("{focus} is affected; the cause is in {}.", rc.service)
            }
            _ if troubled.contains(focus) => format!("{focus} is affected."),
            _ => format!("{focus} looks healthy: its latency and errors did not move."),
        };
        Some(format!("{line}\n"))
    } else if let Some(rc) = root
        && let Some(component) = &rc.component
        && component
            .split(|c: char| !(c.is_alphanumeric() || c == '-' || c == '_'))
            .any(|part| part.len() >= 3 && words.contains(&part.to_ascii_lowercase()))
    {
        // "Why is checkout slow?" names a route, not a service.
        Some(format!(
            "{component} of {} is where the problem is.\n",
            rc.service
        ))
    } else {
        None
    }
}

/// Step 5, the answer: led by the focus line, then what changed, when,
/// where the time goes, what explains it, the root cause, and what was not
/// seen.
fn answer(
    focus: Option<String>,
    d: &Diagnosis,
    map: &ServiceMap,
    gaps: &BTreeSet<String>,
) -> String {
    let map_ev = &map.ev;
    let mut answer = focus.unwrap_or_default();
    answer.push_str("What changed:\n");
    for w in &d.what {
        answer.push_str(&format!("  - {w}\n"));
    }
    for (m, to) in &d.symptoms {
        answer.push_str(&format!(
            "  - {} is a symptom: it calls {to}, which moved too [{map_ev}]\n",
            m.service
        ));
    }
    if let Some(w) = &d.when {
        answer.push_str(&format!("When: {w}.\n"));
    }
    if !d.where_time.is_empty() {
        answer.push_str("Where the time goes:\n");
        for w in &d.where_time {
            answer.push_str(&format!("  - {w}\n"));
        }
    }
    if !d.explains.is_empty() {
        answer.push_str("What explains it:\n");
        for w in &d.explains {
            answer.push_str(&format!("  - {w}\n"));
        }
    }
    if let Some(rc) = &d.root {
        answer.push_str(&format!(
            "Likely root cause ({}% confidence): {}\nRecommendation: {}\n",
            rc.confidence, rc.summary, rc.recommendation
        ));
    }
    if !gaps.is_empty() {
        answer.push_str(&format!(
            "Not seen: {}.\n",
            gaps.iter().cloned().collect::<Vec<_>>().join("; ")
        ));
    }
    answer
}

fn minutes(w: &str) -> f64 {
    humantime::parse_duration(w).map_or(0.0, |d| d.as_secs_f64() / 60.0)
}

/// Breaks the change down along every dimension (`coral_breakdown`), then
/// drills into the service that owns the operation that explains most of
/// it; with eBPF data only, reads the connection edges.
async fn mechanism<T: Tools>(
    s: &mut Session<'_, T>,
    win: &str,
    base: &str,
    moved: &BTreeSet<String>,
    rises: &BTreeMap<String, f64>,
) -> Option<explain::Finding> {
    if !s.available.contains("coral_breakdown") {
        return None;
    }
    let v = s
        .call("coral_breakdown", json!({"window": win, "baseline": base}))
        .await
        .ok()?;
    let ev = s.last_id();
    let b = explain::Breakdown::parse(&v, (minutes(win), minutes(base)));
    if b.ops.is_empty() {
        let f = explain::passive(&b, moved, rises, &ev);
        s.note(format!(
            "{} eBPF edges; {}",
            b.edges.len(),
            f.as_ref()
                .map_or("no edge explains it".into(), |f| f.root.summary.clone())
        ));
        return f;
    }
    let (op, errors) = explain::primary(&b)?;
    s.note(format!(
        "{} operations; most of the change ({}): {} {}",
        b.ops.len(),
        if errors { "errors" } else { "time" },
        op.service,
        op.name
    ));
    let d = s
        .call(
            "coral_breakdown",
            json!({"window": win, "baseline": base, "service": op.service}),
        )
        .await
        .ok();
    let drill_ev = s.last_id();
    let facets: Vec<explain::Facet> = d
        .as_ref()
        .and_then(|d| d["facets"].as_array())
        .into_iter()
        .flatten()
        .map(explain::Facet::parse)
        .collect();
    s.note(format!("{} facets of {}", facets.len(), op.service));
    explain::diagnose(&b, &facets, &ev, &drill_ev)
}

fn describe_move(m: &Moved) -> String {
    let mut parts = Vec::new();
    if m.latency {
        parts.push(format!(
            "latency rose: p50 from {} to {}, p95 from {} to {} ({:.1}x)",
            fmt_ms(m.base_p50),
            fmt_ms(m.recent_p50),
            fmt_ms(m.base_p95),
            fmt_ms(m.recent_p95),
            m.p95_ratio()
        ));
    }
    if m.errors {
        parts.push(format!(
            "errors rose from {:.1}% to {:.1}% of requests",
            m.base_err, m.recent_err
        ));
    }
    let route = m
        .route
        .as_ref()
        .map(|(r, b, now)| format!("; most on {r} (p95 {} → {})", fmt_ms(*b), fmt_ms(*now)))
        .unwrap_or_default();
    let since = m
        .moved_s_ago
        .map(|s| format!(", since about {}", ago(s)))
        .unwrap_or_default();
    format!(
        "{}: {}{route}{since} in the last {} against the {} before, from {} [{}]",
        m.service,
        parts.join(", "),
        m.window,
        m.baseline,
        match m.source.as_str() {
            "ebpf" => "eBPF (requests on the wire)",
            _ => "OTLP server spans",
        },
        m.evidence
    )
}

/// What [`drill`] found in the moved service's requests.
struct Drilled {
    root: RootCause,
    /// The three operations that carry most of the request time.
    where_time: Vec<String>,
    /// When the slow requests began.
    when: Option<String>,
}

/// Breaks the moved service's requests down and names the root cause.
async fn drill<T: Tools>(
    s: &mut Session<'_, T>,
    m: &Moved,
    known: &BTreeMap<String, u16>,
) -> anyhow::Result<Drilled> {
    let hot = s
        .call(
            "coral_hotspots",
            json!({"service": m.service, "window": m.window, "baseline": m.baseline}),
        )
        .await?;
    let hot_ev = s.last_id();
    let ops = hot["operations"].as_array().cloned().unwrap_or_default();
    // Routes (kind "route": where, seen on the wire or in server spans)
    // and operations under the requests (why: a query, a call, own work)
    // are picked apart: the deeper one wins when it explains the change.
    let (deep, route) = (heaviest(&ops, m, false), heaviest(&ops, m, true));
    let top = deep.as_ref().or(route.as_ref());
    let where_time = where_time(&ops, m, &hot_ev);
    s.note(format!(
        "{} operations under {}; top: {}",
        ops.len(),
        m.service,
        top.and_then(|o| o["operation"].as_str()).unwrap_or("none")
    ));
    let threshold = f(&hot["slow_threshold_ms"]).ceil() as u64;
    let when = slow_since(&hot, m, threshold, &hot_ev);
    let explains = |o: &Value| explains_change(&hot, m, o);
    let route = route.filter(explains);
    let root = match deep.filter(explains).or(route) {
        None => own_change(m, &hot_ev),
        // A database's own statement, seen on the wire (passive mode):
        // it can be planned like a client span's.
        Some(top) if top["kind"] == "route" && top["statement"].is_string() && m.latency => {
            slow_query(s, m, &top, known, &hot_ev).await
        }
        Some(top) if top["kind"] == "route" => route_cause(m, &top, &hot_ev),
        Some(top) if m.errors && !m.latency => failing_call(s, m, &top, &hot_ev).await?,
        Some(top) if top["statement"].is_string() && top["kind"] == "client" => {
            slow_query(s, m, &top, known, &hot_ev).await
        }
        Some(top) => slow_operation(m, &top, threshold, &hot_ev),
    };
    Ok(Drilled {
        root,
        where_time,
        when,
    })
}

/// The time an operation added per request (or, with no baseline for it,
/// the time it carries).
fn added(o: &Value) -> f64 {
    let per = f(&o["per_request"]);
    match o["baseline_mean_ms"].as_f64() {
        Some(b) => per * (f(&o["mean_ms"]) - b),
        None => per * f(&o["mean_ms"]),
    }
}

/// The route (`routes`) or the operation under the requests that added the
/// most time per request; for errors alone, only failing ones.
fn heaviest(ops: &[Value], m: &Moved, routes: bool) -> Option<Value> {
    ops.iter()
        .filter(|o| (o["kind"] == "route") == routes)
        .filter(|o| !m.errors || m.latency || f(&o["errors"]) > 0.0)
        .max_by(|a, b| {
            added(a)
                .partial_cmp(&added(b))
                .unwrap_or(std::cmp::Ordering::Equal)
        })
        .cloned()
}

/// An operation explains a slowdown only if it added at least half of the
/// service's added time per request; otherwise the time is the service's
/// own.
fn explains_change(hot: &Value, m: &Moved, o: &Value) -> bool {
    let service_added = hot["baseline_mean_request_ms"]
        .as_f64()
        .map(|b| f(&hot["mean_request_ms"]) - b);
    !m.latency || m.errors || service_added.is_none_or(|sa| sa <= 0.0 || added(o) >= sa / 2.0)
}

/// One line for each of the first three operations: their share of the
/// request time, now and at baseline.
fn where_time(ops: &[Value], m: &Moved, hot_ev: &str) -> Vec<String> {
    ops.iter()
        // A route seen only in the baseline carries none of the time now.
        .filter(|o| f(&o["count"]) > 0.0 || o["kind"] != "route")
        .take(3)
        .map(|o| {
            let baseline = o["baseline_mean_ms"]
                .as_f64()
                .map_or("none".to_string(), fmt_ms);
            if o["kind"] == "route" {
                format!(
                    "route {}: {}% of {}'s request time, mean {} (baseline {baseline}), p95 {}, {} requests, from {} [{hot_ev}]",
                    o["operation"].as_str().unwrap_or("?"),
                    f(&o["share_pct"]),
                    m.service,
                    fmt_ms(f(&o["mean_ms"])),
                    fmt_ms(f(&o["p95_ms"])),
                    f(&o["count"]),
                    o["source"].as_str().unwrap_or("?"),
                )
            } else {
                format!(
                    "{} {}: {}% of {}'s request time, mean {} (baseline {baseline}), {} per request [{hot_ev}]",
                    o["service"].as_str().unwrap_or("?"),
                    o["statement"]
                        .as_str()
                        .or(o["operation"].as_str())
                        .unwrap_or("?"),
                    f(&o["share_pct"]),
                    m.service,
                    fmt_ms(f(&o["mean_ms"])),
                    f(&o["per_request"]),
                )
            }
        })
        .collect()
}

/// When: the oldest slow request in the window.
fn slow_since(hot: &Value, m: &Moved, threshold: u64, hot_ev: &str) -> Option<String> {
    match hot["slow_since_s_ago"].as_i64() {
        Some(since) if m.latency => Some(format!(
            "requests of {} over {threshold} ms began about {} [{hot_ev}]",
            m.service,
            ago(since)
        )),
        _ => None,
    }
}

/// The cause when no operation under the requests explains the change.
fn own_change(m: &Moved, hot_ev: &str) -> RootCause {
    RootCause {
        service: m.service.clone(),
        component: None,
        kind: if m.latency {
            "latency_regression"
        } else {
            "error_burst"
        }
        .into(),
        summary: format!(
            "{} itself got slower or started failing; no downstream operation explains it [{hot_ev}]",
            m.service
        ),
        confidence: 50,
        recommendation: format!(
            "Look at what changed in {} (recent deploys, config, resources): 'coral query traces --service {}'",
            m.service, m.service
        ),
    }
}

/// Errors without a slowdown: the failing call, with the latest log line.
async fn failing_call<T: Tools>(
    s: &mut Session<'_, T>,
    m: &Moved,
    top: &Value,
    hot_ev: &str,
) -> anyhow::Result<RootCause> {
    let op_service = top["service"].as_str().unwrap_or("?").to_string();
    let op_name = top["operation"].as_str().unwrap_or("?").to_string();
    let logs = s
        .call(
            "coral_logs",
            json!({"service": m.service, "since": m.window, "limit": 20}),
        )
        .await?;
    let first = logs["logs"]
        .as_array()
        .and_then(|l| l.first())
        .and_then(|l| l["body"].as_str())
        .unwrap_or("")
        .to_string();
    s.note(format!("latest log: {first}"));
    let at = top["peer"].as_str().map_or(op_service, str::to_string);
    Ok(RootCause {
        service: at.clone(),
        component: Some(op_name.clone()),
        kind: "error_burst".into(),
        summary: format!(
            "the errors come from {op_name} ({} errors) called by {} [{hot_ev}]{}",
            f(&top["errors"]),
            m.service,
            if first.is_empty() {
                String::new()
            } else {
                format!("; latest log: \"{first}\" [{}]", s.last_id())
            }
        ),
        confidence: 75,
        recommendation: format!(
            "Check {at}: 'coral query traces --service {}' and 'coral query logs --service {}' show the failing calls.",
            m.service, m.service
        ),
    })
}

/// A database query carries the change: a slow query, confirmed by its
/// plan where the exec tool is enabled and the database is a connected
/// service.
async fn slow_query<T: Tools>(
    s: &mut Session<'_, T>,
    m: &Moved,
    top: &Value,
    known: &BTreeMap<String, u16>,
    hot_ev: &str,
) -> RootCause {
    let statement = top["statement"].as_str().unwrap_or_default().to_string();
    // A client span's peer, or the database itself for its own route.
    let db = match top["peer"].as_str() {
        Some(p) => p.to_string(),
        None if top["kind"] == "route" => m.service.clone(),
        None => "the database".to_string(),
    };
    let mut rc = RootCause {
        service: db.clone(),
        component: Some(statement.clone()),
        kind: "slow_query".into(),
        summary: format!(
            "the query `{statement}` on {db} now takes {} on average (baseline {}), {:.1}% of {}'s time [{hot_ev}]",
            fmt_ms(f(&top["mean_ms"])),
            top["baseline_mean_ms"]
                .as_f64()
                .map_or("none".to_string(), fmt_ms),
            f(&top["share_pct"]),
            m.service
        ),
        confidence: 70,
        recommendation: format!(
            "Run EXPLAIN on the query ('coral exec {db} \"psql -c ...\"'); a sequential scan on a filtered column means a missing index."
        ),
    };
    if s.available.contains("coral_agent_exec")
        && let Some(port) = known.get(&db)
    {
        let user = top["db_user"].as_str().unwrap_or("postgres");
        let name = top["db_name"].as_str().unwrap_or(user);
        let sql = format!("EXPLAIN {}", explainable(&statement));
        let command = format!(
            "psql -X -h 127.0.0.1 -p {port} -U {} -d {} -c {}",
            shell_words::quote(user),
            shell_words::quote(name),
            shell_words::quote(&sql)
        );
        explain_plan(s, &mut rc, &db, &command).await;
    }
    rc
}

/// Runs `EXPLAIN` on the database's host and reads the plan into `rc`: a
/// sequential scan makes it a missing index; a plan without one points at
/// locks and load.
async fn explain_plan<T: Tools>(
    s: &mut Session<'_, T>,
    rc: &mut RootCause,
    db: &str,
    command: &str,
) {
    let out = s
        .call(
            "coral_agent_exec",
            json!({"service": db, "command": command, "timeout": "10s"}),
        )
        .await;
    // Only a plan from a command that succeeded counts.
    let ran = out.as_ref().ok().filter(|v| v["exit_code"] == 0);
    let plan = ran
        .and_then(|v| v["stdout"].as_str())
        .unwrap_or("")
        .to_string();
    let exec_ev = s.last_id();
    let failed = match &out {
        Ok(v) if ran.is_none() => Some(format!(
            "exit {}: {}",
            v["exit_code"],
            v["stderr"].as_str().unwrap_or("").trim()
        )),
        Err(e) => Some(e.to_string()),
        Ok(_) => None,
    };
    if let Some(why) = &failed {
        let why: String = why.lines().next().unwrap_or("").chars().take(200).collect();
        s.note(format!("EXPLAIN failed: {why}"));
        rc.summary = format!("{}; EXPLAIN could not run [{exec_ev}]: {why}", rc.summary);
    }
    match seq_scan(&plan) {
        Some((table, column)) => {
            s.note(format!("plan: Seq Scan on {table}"));
            rc.kind = "missing_index".into();
            rc.confidence = if column.is_some() { 90 } else { 80 };
            rc.summary = format!(
                "{}; EXPLAIN shows a sequential scan on {table}{} [{exec_ev}]: the table has no usable index for this query",
                rc.summary,
                column
                    .as_ref()
                    .map(|c| format!(" filtering on {c}"))
                    .unwrap_or_default()
            );
            rc.recommendation = match column {
                Some(c) => format!(
                    "CREATE INDEX CONCURRENTLY ON {table} ({c}); then re-check with 'coral ask'."
                ),
                None => format!("Add an index on {table} that matches the query's filter."),
            };
        }
        None if ran.is_some() => {
            s.note("plan: no sequential scan".into());
            rc.summary = format!(
                "{}; its plan uses no sequential scan [{exec_ev}], so look at locks, load and the rows it returns",
                rc.summary
            );
            rc.recommendation = format!(
                "Check {db} for lock waits and load ('coral exec {db} \"ps aux\"'), and the query's row count."
            );
        }
        None => {}
    }
}

/// A slow operation that is not a query: another service's (a slow
/// dependency) or the moved service's own work.
fn slow_operation(m: &Moved, top: &Value, threshold: u64, hot_ev: &str) -> RootCause {
    let op_service = top["service"].as_str().unwrap_or("?").to_string();
    let op_name = top["operation"].as_str().unwrap_or("?").to_string();
    let baseline = top["baseline_mean_ms"]
        .as_f64()
        .map_or("none".to_string(), fmt_ms);
    if op_service != m.service {
        return RootCause {
            service: op_service.clone(),
            component: Some(op_name.clone()),
            kind: "slow_dependency".into(),
            summary: format!(
                "{}'s time goes to {op_service} ({op_name}), mean {} (baseline {baseline}) [{hot_ev}]",
                m.service,
                fmt_ms(f(&top["mean_ms"])),
            ),
            confidence: 75,
            recommendation: format!(
                "Look into {op_service}: 'coral query traces --service {op_service} --min-duration {threshold}ms'."
            ),
        };
    }
    RootCause {
        service: m.service.clone(),
        component: Some(op_name.clone()),
        kind: "latency_regression".into(),
        summary: format!(
            "{} got slower in its own work ({op_name}, mean {}; baseline {baseline}) [{hot_ev}]",
            m.service,
            fmt_ms(f(&top["mean_ms"])),
        ),
        confidence: 65,
        recommendation: format!(
            "Compare a slow and a fast trace of {} ('coral query traces --service {} --min-duration {threshold}ms') and check recent changes to it.",
            m.service, m.service
        ),
    }
}

/// The cause when the change sits in one of the service's own routes and
/// nothing under its requests explains it (passive mode: eBPF sees the
/// requests on the wire, not what the code does inside).
fn route_cause(m: &Moved, route: &Value, hot_ev: &str) -> RootCause {
    let name = route["operation"].as_str().unwrap_or("?").to_string();
    let source = match route["source"].as_str() {
        Some("ebpf") => "seen by eBPF on the wire",
        _ => "from its server spans",
    };
    let since = route["slow_since_s_ago"]
        .as_i64()
        .map(|s| format!(", since about {}", ago(s)))
        .unwrap_or_default();
    let baseline = route["baseline_mean_ms"]
        .as_f64()
        .map_or("none".to_string(), fmt_ms);
    if m.errors && !m.latency {
        return RootCause {
            service: m.service.clone(),
            component: Some(name.clone()),
            kind: "error_burst".into(),
            summary: format!(
                "{}'s route {name} answers with errors: {} of {} requests failed{since}, {source} [{hot_ev}]",
                m.service,
                f(&route["errors"]),
                f(&route["count"]),
            ),
            confidence: 70,
            recommendation: format!(
                "Look at {}'s handler for {name} and its logs ('coral exec {} \"journalctl -n 50\"' where the policy allows, or 'coral query logs --service {}' when it sends logs).",
                m.service, m.service, m.service
            ),
        };
    }
    RootCause {
        service: m.service.clone(),
        component: Some(name.clone()),
        kind: "latency_regression".into(),
        summary: format!(
            "{}'s route {name} got slower: mean {} (baseline {baseline}), p95 {} (baseline {}), {}% of its request time{since}, {source} [{hot_ev}]; no trace says what inside it is slow",
            m.service,
            fmt_ms(f(&route["mean_ms"])),
            fmt_ms(f(&route["p95_ms"])),
            route["baseline_p95_ms"]
                .as_f64()
                .map_or("none".to_string(), fmt_ms),
            f(&route["share_pct"]),
        ),
        confidence: 70,
        recommendation: format!(
            "Look inside {}'s handler for {name}: what changed (deploys, config, data), and what it waits on ('coral query map' shows its connections). Sending OTLP traces from {} would show which call is slow.",
            m.service, m.service
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(tool: &str, args: Value, out: Value) -> Recorded {
        Recorded {
            tool: tool.into(),
            args,
            output: Ok(out.to_string()),
        }
    }

    /// Issue 15: the analyzer runs on recorded tool output, no process.
    #[tokio::test]
    async fn replayed_quiet_tools_give_no_problem() {
        let ok = json!({"complete": true});
        let mut calls = vec![
            rec(
                "coral_services",
                json!({}),
                json!({"agents": [], "coverage": ok}),
            ),
            rec(
                "coral_service_map",
                json!({"since": "1h"}),
                json!({"edges": [], "coverage": ok}),
            ),
        ];
        for (w, b) in WINDOWS {
            calls.push(rec(
                "coral_red_metrics",
                json!({"window": w, "baseline": b}),
                json!({"services": [], "coverage": ok}),
            ));
        }
        let tools = Replay {
            names: vec![
                "coral_services".into(),
                "coral_red_metrics".into(),
                "coral_service_map".into(),
            ],
            calls,
        };
        let a = analyze(&tools, "anything wrong?").await.unwrap();
        assert!(a.answer.starts_with("No problem found"), "{}", a.answer);
        assert!(a.root_cause.is_none());
    }

    #[test]
    fn statements_become_explainable() {
        assert_eq!(
            explainable("SELECT * FROM orders WHERE user_id = $1 AND s = $12;"),
            "SELECT * FROM orders WHERE user_id = '1' AND s = '1'"
        );
        assert_eq!(
            explainable("select 1 from t where a = %s"),
            "select 1 from t where a = '1'"
        );
        assert_eq!(explainable("SELECT $x"), "SELECT $x");
    }

    #[test]
    fn plans_reveal_sequential_scans() {
        let plan = "                          QUERY PLAN
------------------------------------------------------------------
 Gather  (cost=1000.00..5417.33 rows=10 width=20)
   Workers Planned: 1
   ->  Parallel Seq Scan on orders  (cost=0.00..4416.33 rows=6 width=20)
         Filter: (user_id = 1)
(4 rows)";
        assert_eq!(
            seq_scan(plan),
            Some(("orders".into(), Some("user_id".into())))
        );
        let indexed =
            " Index Scan using orders_user_id_idx on orders  (cost=0.29..8.31 rows=1 width=20)
   Index Cond: (user_id = 1)";
        assert_eq!(seq_scan(indexed), None);
        assert_eq!(
            seq_scan(" Seq Scan on t  (cost=0.00..1.01 rows=1 width=4)"),
            Some(("t".into(), None))
        );
    }
}
