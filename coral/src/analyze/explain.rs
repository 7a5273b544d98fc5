//! The mechanism behind a change (issue 15): from `coral_breakdown` (the
//! window against its baseline along every dimension the data has), rank
//! the candidate causes by how much of the change each explains, take the
//! deepest component that explains it, and say what identifies the
//! mechanism — the instance, node or version that carries it, the status
//! code or exception, the calls per request, the retries, the metric that
//! moved, the new workload on a shared dependency.
//!
//! Pure functions over the tools' JSON: the analyzer calls the tools, this
//! module reasons, so it is tested on recorded answers.

use super::RootCause;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// `[recent, baseline]` as numbers.
fn pair(v: &Value) -> (f64, f64) {
    (
        v.get(0).and_then(Value::as_f64).unwrap_or(0.0),
        v.get(1).and_then(Value::as_f64).unwrap_or(0.0),
    )
}

fn opt_pair(v: &Value) -> (Option<f64>, Option<f64>) {
    (
        v.get(0).and_then(Value::as_f64),
        v.get(1).and_then(Value::as_f64),
    )
}

fn s(v: &Value, k: &str) -> String {
    v[k].as_str().unwrap_or("").to_string()
}

fn fmt_ms(ms: f64) -> String {
    super::fmt_ms(ms)
}

/// One operation of the breakdown.
#[derive(Debug, Clone)]
pub struct Op {
    pub service: String,
    pub kind: String,
    pub name: String,
    pub peer: Option<String>,
    pub db: Option<String>,
    pub statement: Option<String>,
    pub calls: (f64, f64),
    pub per_request: (f64, f64),
    pub own_errors: (f64, f64),
    pub self_per_request: (f64, f64),
    pub mean: (Option<f64>, Option<f64>),
}

impl Op {
    fn parse(v: &Value) -> Op {
        Op {
            service: s(v, "service"),
            kind: s(v, "kind"),
            name: s(v, "name"),
            peer: v["peer"].as_str().map(str::to_string),
            db: v["db"].as_str().map(str::to_string),
            statement: v["statement"].as_str().map(str::to_string),
            calls: pair(&v["calls"]),
            per_request: pair(&v["calls_per_request"]),
            own_errors: pair(&v["own_errors"]),
            self_per_request: pair(&v["self_ms_per_request"]),
            mean: opt_pair(&v["mean_ms"]),
        }
    }
    fn is_call(&self) -> bool {
        matches!(self.kind.as_str(), "client" | "producer") && self.peer.is_some()
    }
    /// Own time added per request, ms.
    fn added_time(&self) -> f64 {
        self.self_per_request.0 - self.self_per_request.1
    }
    /// Originated errors added per request.
    fn added_errors(&self, reqs: (f64, f64)) -> f64 {
        self.own_errors.0 / reqs.0.max(1.0) - self.own_errors.1 / reqs.1.max(1.0)
    }
    fn label(&self) -> String {
        match (&self.statement, &self.peer) {
            (Some(st), Some(p)) => format!("`{st}` on {p}"),
            (None, Some(p)) if self.is_call() => format!("{} → {p} ({})", self.service, self.name),
            _ => format!("{} {}", self.service, self.name),
        }
    }
}

/// One value of one dimension.
#[derive(Debug, Clone)]
pub struct Facet {
    pub service: String,
    pub kind: String,
    pub dimension: String,
    pub value: String,
    pub calls: (f64, f64),
    pub errors: (f64, f64),
    pub mean: (Option<f64>, Option<f64>),
    /// Own time per span (without children).
    pub self_mean: (Option<f64>, Option<f64>),
}

impl Facet {
    pub fn parse(v: &Value) -> Facet {
        Facet {
            service: s(v, "service"),
            kind: s(v, "kind"),
            dimension: s(v, "dimension"),
            value: s(v, "value"),
            calls: pair(&v["calls"]),
            errors: pair(&v["errors"]),
            mean: opt_pair(&v["mean_ms"]),
            self_mean: opt_pair(&v["self_mean_ms"]),
        }
    }
}

/// What the diagnosis found.
#[derive(Debug, Clone)]
pub struct Finding {
    pub root: RootCause,
    /// Lines for "What explains it" in the answer.
    pub lines: Vec<String>,
}

/// The breakdown as read.
pub struct Breakdown {
    pub reqs: (f64, f64),
    pub ops: Vec<Op>,
    pub nodes: Vec<Facet>,
    pub metrics: Vec<Value>,
    pub edges: Vec<Value>,
    /// Log messages by service, severity and template.
    pub logs: Vec<LogMsg>,
    /// Minutes in the window and the baseline.
    pub minutes: (f64, f64),
}

/// One log message template of one service.
#[derive(Debug, Clone)]
pub struct LogMsg {
    pub service: String,
    pub severity: String,
    pub template: String,
    pub example: String,
    pub count: (f64, f64),
}

impl LogMsg {
    fn parse(v: &Value) -> LogMsg {
        LogMsg {
            service: s(v, "service"),
            severity: s(v, "severity"),
            template: s(v, "template"),
            example: s(v, "example"),
            count: pair(&v["count"]),
        }
    }
    /// WARN and above (OTLP severity names; `SEVERITY17`... when unnamed).
    fn is_problem(&self) -> bool {
        let sev = self.severity.to_ascii_uppercase();
        ["WARN", "ERROR", "FATAL", "CRIT", "ALERT", "EMERG"]
            .iter()
            .any(|k| sev.starts_with(k))
            || sev
                .strip_prefix("SEVERITY")
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|n| n >= 13)
    }
}

/// The problem message (WARN or worse) of `service` that appeared in the
/// window, or whose rate grew at least threefold, with the most records:
/// what the service itself says went wrong.
fn new_log_message<'a>(b: &'a Breakdown, service: &str) -> Option<&'a LogMsg> {
    let (m_r, m_b) = (b.minutes.0.max(1e-9), b.minutes.1.max(1e-9));
    b.logs
        .iter()
        .filter(|l| l.service == service && l.is_problem() && l.count.0 >= 3.0)
        .filter(|l| l.count.1 == 0.0 || l.count.0 / m_r >= 3.0 * l.count.1 / m_b)
        .max_by(|x, y| x.count.0.total_cmp(&y.count.0))
}

impl Breakdown {
    pub fn parse(v: &Value, minutes: (f64, f64)) -> Breakdown {
        let list = |k: &str| v[k].as_array().cloned().unwrap_or_default();
        Breakdown {
            reqs: pair(&v["requests"]),
            ops: list("operations").iter().map(Op::parse).collect(),
            nodes: list("facets").iter().map(Facet::parse).collect(),
            metrics: list("metrics"),
            edges: list("edges"),
            logs: list("logs").iter().map(LogMsg::parse).collect(),
            minutes,
        }
    }

    fn services(&self) -> BTreeSet<String> {
        self.ops.iter().map(|o| o.service.clone()).collect()
    }
}

/// The operation that explains most of the change, and whether errors
/// (rather than time) are the change.
pub fn primary(b: &Breakdown) -> Option<(Op, bool)> {
    let reqs = b.reqs;
    let added_err: f64 = b.ops.iter().map(|o| o.added_errors(reqs).max(0.0)).sum();
    let added_time: f64 = b.ops.iter().map(|o| o.added_time().max(0.0)).sum();
    let top_err = b
        .ops
        .iter()
        .filter(|o| o.own_errors.0 >= 3.0)
        .max_by(|x, y| x.added_errors(reqs).total_cmp(&y.added_errors(reqs)));
    let top_time = b
        .ops
        .iter()
        .max_by(|x, y| x.added_time().total_cmp(&y.added_time()));
    if let Some(o) = top_err
        && added_err >= 0.02
        && o.added_errors(reqs) >= added_err * 0.3
    {
        return Some((o.clone(), true));
    }
    match top_time {
        Some(o) if added_time > 0.0 && o.added_time() >= 2.0 => Some((o.clone(), false)),
        _ => None,
    }
}

/// Per (service, node): the mean of the requests it served, window and
/// baseline. A node is bad when it is slow for two or more services whose
/// other nodes are not.
fn bad_node(b: &Breakdown) -> Option<(String, Vec<String>)> {
    let mut slow: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut by_service: BTreeMap<&str, Vec<&Facet>> = BTreeMap::new();
    for f in &b.nodes {
        by_service.entry(&f.service).or_default().push(f);
    }
    for (svc, facets) in by_service {
        // Own time: a caller that waits on a slow node elsewhere is not
        // slow on its own node.
        let moved = |f: &&&Facet| match f.self_mean {
            (Some(r), Some(base)) => f.calls.0 >= 2.0 && r >= base * 2.0 && r - base >= 20.0,
            _ => false,
        };
        let bad: Vec<&&Facet> = facets.iter().filter(moved).collect();
        if bad.len() == 1 && facets.len() >= 2 {
            slow.entry(bad[0].value.clone())
                .or_default()
                .push(svc.to_string());
        }
    }
    slow.into_iter()
        .filter(|(_, svcs)| svcs.len() >= 2)
        .max_by_key(|(_, svcs)| svcs.len())
}

/// The metrics of `service` whose level moved, largest change first.
fn moved_metrics(b: &Breakdown, service: &str) -> Vec<(String, f64, f64)> {
    let mut v: Vec<(String, f64, f64, f64)> = b
        .metrics
        .iter()
        .filter(|m| m["service"] == service)
        .filter_map(|m| {
            let (r, base) = opt_pair(&m["mean"]);
            let (r, base) = (r?, base?);
            let ratio = if base.abs() > 1e-9 {
                r / base
            } else if r > 0.0 {
                10.0
            } else {
                1.0
            };
            (ratio >= 1.5 && r - base > 0.0).then(|| (s(m, "name"), r, base, ratio))
        })
        .collect();
    v.sort_by(|x, y| y.3.total_cmp(&x.3));
    v.into_iter().map(|(n, r, b, _)| (n, r, b)).collect()
}

fn fmt_num(v: f64) -> String {
    if v.abs() >= 1e9 {
        format!("{:.2} G", v / 1e9)
    } else if v.abs() >= 1e6 {
        format!("{:.0} M", v / 1e6)
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// The values of one dimension of `service`'s spans of `kinds` that carry
/// the change: (value, share of the change, share of the calls, new).
fn carriers<'a>(
    facets: &'a [Facet],
    service: &str,
    kinds: &[&str],
    dimension: &str,
    errors: bool,
) -> Vec<(&'a Facet, f64, f64, bool)> {
    let fs: Vec<&Facet> = facets
        .iter()
        .filter(|f| f.service == service && f.dimension == dimension)
        .filter(|f| kinds.contains(&f.kind.as_str()))
        .collect();
    let calls: f64 = fs.iter().map(|f| f.calls.0).sum();
    let base_calls: f64 = fs.iter().map(|f| f.calls.1).sum();
    let base_mean = {
        let t: f64 = fs.iter().map(|f| f.calls.1 * f.mean.1.unwrap_or(0.0)).sum();
        if base_calls > 0.0 {
            t / base_calls
        } else {
            0.0
        }
    };
    let base_err = fs.iter().map(|f| f.errors.1).sum::<f64>() / base_calls.max(1.0);
    let change = |f: &Facet| {
        if errors {
            (f.errors.0 - f.calls.0 * base_err).max(0.0)
        } else {
            (f.calls.0 * (f.mean.0.unwrap_or(0.0) - base_mean)).max(0.0)
        }
    };
    let total: f64 = fs.iter().map(|f| change(f)).sum();
    if total <= 0.0 || calls <= 0.0 {
        return Vec::new();
    }
    let mut v: Vec<(&Facet, f64, f64, bool)> = fs
        .iter()
        .map(|f| (*f, change(f) / total, f.calls.0 / calls, f.calls.1 == 0.0))
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v
}

/// The most frequent value of a dimension among the errors of `service`'s
/// spans of `kinds` that is new or grew.
fn top_error_value(
    facets: &[Facet],
    service: &str,
    kinds: &[&str],
    dimension: &str,
) -> Option<(String, f64)> {
    facets
        .iter()
        .filter(|f| f.service == service && f.dimension == dimension)
        .filter(|f| kinds.contains(&f.kind.as_str()))
        .filter(|f| f.errors.0 > 0.0)
        .filter(|f| f.errors.0 / f.calls.0.max(1.0) > f.errors.1 / f.calls.1.max(1.0) + 0.02)
        .max_by(|a, b| a.errors.0.total_cmp(&b.errors.0))
        .map(|f| (f.value.clone(), f.errors.0))
}

/// Diagnoses from the breakdown (`global`) and the drill into the
/// service that owns the primary operation (`drill`, its facets).
pub fn diagnose(b: &Breakdown, drill: &[Facet], ev: &str, drill_ev: &str) -> Option<Finding> {
    let (op, errors) = primary(b)?;
    let services = b.services();
    let reqs = b.reqs;
    let mut lines = Vec::new();
    let mut confidence = 70u8;
    let mut component = Some(op.name.clone());
    let mut kind: String;
    let mut entity: String;
    let mut summary: String;
    let recommendation: String;

    // Where the change sits: a call's peer (what it waits on) or the
    // service's own work.
    let call = op.is_call();
    let peer = op.peer.clone().unwrap_or_default();
    let peer_instrumented = services.contains(&peer);
    let calls_grew = op.per_request.0 >= (op.per_request.1 * 2.5).max(op.per_request.1 + 1.5);
    let cost_same = match op.mean {
        (Some(r), Some(base)) => r <= base * 2.0 + 2.0,
        _ => false,
    };
    let own_errs = |o: &Op| {
        format!(
            "{:.0} errors originate there (baseline {:.0})",
            o.own_errors.0, o.own_errors.1
        )
    };

    // A new operation on a shared dependency, while the calls that were
    // there before slowed: the new workload is the cause.
    let victim = |o: &Op| {
        o.service != op.service
            && o.is_call()
            && (o.peer == op.peer || (o.db.is_some() && o.db == op.db))
            && o.calls.1 > 0.0
            && o.added_time() > 0.0
            && matches!(o.mean, (Some(r), Some(base)) if r >= base * 1.5 && r - base >= 5.0)
    };
    if call
        && !errors
        && op.calls.1 == 0.0
        && let Some(v) = b
            .ops
            .iter()
            .filter(|o| victim(o))
            .max_by(|x, y| x.added_time().total_cmp(&y.added_time()))
    {
        let what = op
            .statement
            .as_deref()
            .map_or(op.name.clone(), |s| format!("`{s}`"));
        lines.push(format!(
            "{} is new in this window on {peer}: {what} ({:.0} calls, mean {}) [{ev}]",
            op.service,
            op.calls.0,
            op.mean.0.map_or("?".into(), fmt_ms)
        ));
        lines.push(format!(
            "meanwhile {} slowed from {} to {} per call [{ev}]",
            v.label(),
            v.mean.1.map_or("?".into(), fmt_ms),
            v.mean.0.map_or("?".into(), fmt_ms)
        ));
        return Some(Finding {
            root: RootCause {
                service: op.service.clone(),
                kind: "contention".into(),
                summary: format!(
                    "{} started working on {peer}{} in this window ({what}), and {} on the same database slowed from {} to {} per call: they contend for {peer} [{ev}]",
                    op.service,
                    op.db
                        .as_ref()
                        .map(|d| format!(" (database {d})"))
                        .unwrap_or_default(),
                    v.label(),
                    v.mean.1.map_or("?".into(), fmt_ms),
                    v.mean.0.map_or("?".into(), fmt_ms),
                ),
                component: Some(op.statement.clone().unwrap_or_else(|| op.name.clone())),
                confidence: 75,
                recommendation: format!(
                    "Move {} out of peak hours or make it take smaller locks and batches; check {peer} for lock waits.",
                    op.service
                ),
            },
            lines,
        });
    }
    if call && !errors && calls_grew && cost_same {
        // The caller changed: more calls per request at the same cost.
        entity = op.service.clone();
        kind = if op.statement.is_some() {
            "n_plus_one"
        } else {
            "call_amplification"
        }
        .into();
        component = Some(op.statement.clone().unwrap_or_else(|| op.name.clone()));
        summary = format!(
            "{} now calls {} {:.1} times per request (baseline {:.1}) at about the same cost per call ({} vs {}), adding {} per request [{ev}]",
            op.service,
            op.label(),
            op.per_request.0,
            op.per_request.1,
            fmt_ms(op.mean.0.unwrap_or(0.0)),
            fmt_ms(op.mean.1.unwrap_or(0.0)),
            fmt_ms(op.added_time()),
        );
        recommendation = format!(
            "Look at the code path in {} that issues this call in a loop (an N+1 query, a retry or fallback loop); batch it or cache it.",
            op.service
        );
        confidence = 80;
    } else if call && !peer_instrumented {
        entity = peer.clone();
        if errors {
            kind = "error_burst".into();
            summary = format!(
                "calls from {} to {peer} fail: {} [{ev}]",
                op.service,
                own_errs(&op)
            );
        } else {
            kind = if op.statement.is_some() {
                "slow_query"
            } else {
                "slow_dependency"
            }
            .into();
            summary = format!(
                "{} now takes {} per call (baseline {}), {:.1} calls per request: {} of the {} added per request [{ev}]",
                op.label(),
                op.mean.0.map_or("?".into(), fmt_ms),
                op.mean.1.map_or("none".into(), fmt_ms),
                op.per_request.0,
                fmt_ms(op.added_time()),
                fmt_ms(b.ops.iter().map(|o| o.added_time().max(0.0)).sum()),
            );
        }
        component = Some(op.statement.clone().unwrap_or_else(|| op.name.clone()));
        if let Some(db) = &op.db
            && db != &peer
        {
            summary.push_str(&format!(" (database {db})"));
        }
        recommendation = format!(
            "Check {peer}: its load, locks and recent changes; the calls come from {} ('coral query traces --service {}').",
            op.service, op.service
        );
        // A new workload on the same dependency explains a slowdown of
        // the calls that were there before.
        if !errors
            && let Some(new) = b
                .ops
                .iter()
                .filter(|o| {
                    o.service != op.service && o.is_call() && o.calls.1 == 0.0 && o.calls.0 > 0.0
                })
                .filter(|o| o.peer == op.peer || (o.db.is_some() && o.db == op.db))
                .max_by(|x, y| x.self_per_request.0.total_cmp(&y.self_per_request.0))
        {
            lines.push(format!(
                "{} slowed while a new workload appeared on {peer}: {} runs {} ({:.0} calls, mean {}) only in this window [{ev}]",
                op.label(),
                new.service,
                new.statement.as_deref().map_or(new.name.clone(), |s| format!("`{s}`")),
                new.calls.0,
                new.mean.0.map_or("?".into(), fmt_ms),
            ));
            entity = new.service.clone();
            kind = "contention".into();
            component = new.statement.clone().or(Some(new.name.clone()));
            summary = format!(
                "{} started working on {peer}{} in this window ({}), and {} on the same database slowed from {} to {} per call: contention for {peer} [{ev}]",
                new.service,
                op.db
                    .as_ref()
                    .map(|d| format!(" (database {d})"))
                    .unwrap_or_default(),
                new.statement
                    .as_deref()
                    .map_or(new.name.clone(), |s| format!("`{s}`")),
                op.label(),
                op.mean.1.map_or("?".into(), fmt_ms),
                op.mean.0.map_or("?".into(), fmt_ms),
            );
            confidence = 75;
            return Some(Finding {
                root: RootCause {
                    service: entity,
                    kind,
                    summary,
                    component,
                    confidence,
                    recommendation: format!(
                        "Move {} out of peak hours or make it take smaller locks and batches; check {peer} for lock waits.",
                        new.service
                    ),
                },
                lines,
            });
        }
    } else if call && peer_instrumented {
        // The time or the errors sit between the two: the callee's own
        // requests did not explain them.
        entity = peer.clone();
        kind = if errors {
            "call_failures"
        } else {
            "network_latency"
        }
        .into();
        summary = if errors {
            format!(
                "calls from {} to {peer} fail before {peer} answers: {} [{ev}]",
                op.service,
                own_errs(&op)
            )
        } else {
            format!(
                "calls from {} to {peer} take {} longer per request than {peer}'s own handling of them (client {} per call, baseline {}): the time is spent between the two — network, connection setup or queuing [{ev}]",
                op.service,
                fmt_ms(op.added_time()),
                op.mean.0.map_or("?".into(), fmt_ms),
                op.mean.1.map_or("?".into(), fmt_ms),
            )
        };
        recommendation = format!(
            "Check the path from {} to {peer}: connection errors, DNS, timeouts, retransmits ('coral query map' shows its connections).",
            op.service
        );
    } else {
        entity = op.service.clone();
        kind = if errors {
            "error_burst"
        } else {
            "latency_regression"
        }
        .into();
        summary = if errors {
            format!("{} {} fails: {} [{ev}]", op.service, op.name, own_errs(&op))
        } else {
            format!(
                "{} spends {} more per request in its own work in {} ({} per call, baseline {}) [{ev}]",
                op.service,
                fmt_ms(op.added_time()),
                op.name,
                op.mean.0.map_or("?".into(), fmt_ms),
                op.mean.1.map_or("none: new in this window".into(), fmt_ms),
            )
        };
        recommendation = format!(
            "Look at what changed in {} ('coral query traces --service {}').",
            op.service, op.service
        );
    }

    // The dimensions of the spans of the service that owns the operation.
    let own_kinds: &[&str] = if call {
        &["client", "producer"]
    } else {
        &["server", "consumer", "internal"]
    };
    if let Some((status, n)) = top_error_value(drill, &op.service, own_kinds, "status") {
        lines.push(format!(
            "status {status} on {n:.0} of {}'s failed spans [{drill_ev}]",
            op.service
        ));
        summary.push_str(&format!("; status {status}"));
        if status == "429" {
            kind = "rate_limited".into();
        } else if status == "401" || status == "403" {
            kind = "auth_failure".into();
        }
    }
    if let Some((exc, n)) = top_error_value(drill, &op.service, own_kinds, "exception") {
        let msg = top_error_value(drill, &op.service, own_kinds, "message").map(|m| m.0);
        lines.push(format!(
            "{n:.0} spans raised {exc}{} [{drill_ev}]",
            msg.as_ref().map(|m| format!(": {m}")).unwrap_or_default()
        ));
        summary.push_str(&format!(
            "; exception {exc}{}",
            msg.map(|m| format!(": {m}")).unwrap_or_default()
        ));
    } else if let Some((msg, n)) = top_error_value(drill, &op.service, own_kinds, "message") {
        lines.push(format!("{n:.0} spans failed with \"{msg}\" [{drill_ev}]"));
        summary.push_str(&format!("; error \"{msg}\""));
    } else if let Some(l) = new_log_message(b, &op.service).or_else(|| {
        // What the entity logs (a peer that sends telemetry) when the
        // failing spans carry no exception.
        (entity != op.service)
            .then(|| new_log_message(b, &entity))
            .flatten()
    }) {
        // The spans say only that they failed; the service's own log
        // says why.
        lines.push(format!(
            "{} logged {:.0} {} records \"{}\" in the window ({}; baseline {:.0}) [{ev}]",
            l.service,
            l.count.0,
            l.severity,
            l.template,
            if l.count.1 == 0.0 {
                "a new message"
            } else {
                "more often"
            },
            l.count.1
        ));
        summary.push_str(&format!(
            "; {} logs \"{}\" ({:.0} times in the window, baseline {:.0})",
            l.service, l.example, l.count.0, l.count.1
        ));
        confidence = confidence.max(75);
    }
    // Retries: resends by the service or by the callers of the entity.
    let resends: f64 = drill
        .iter()
        .filter(|f| f.dimension == "resend" && f.value != "0")
        .map(|f| f.calls.0)
        .sum();
    if resends > 0.0 {
        lines.push(format!(
            "{} retries: {resends:.0} calls in the window are resends [{drill_ev}]",
            op.service
        ));
        summary.push_str(&format!(
            "; {} retries ({resends:.0} resent calls)",
            op.service
        ));
    }
    if errors {
        for c in b
            .ops
            .iter()
            .filter(|o| o.is_call() && o.peer.as_deref() == Some(entity.as_str()))
        {
            // Calls per request at least doubled, by at least ten calls
            // (relative: a caller whose calls to the entity are a small
            // share of its requests retries just the same).
            let extra = c.calls.0 - c.per_request.1 * reqs.0;
            if c.calls.1 > 0.0 && c.per_request.0 >= c.per_request.1 * 2.0 && extra >= 10.0 {
                lines.push(format!(
                    "{} retries its calls to {entity}: {:.1} per request (baseline {:.1}) [{ev}]",
                    c.service, c.per_request.0, c.per_request.1
                ));
                summary.push_str(&format!(
                    "; {} retries the failed calls ({:.1} per request, baseline {:.1}), which adds load",
                    c.service, c.per_request.0, c.per_request.1
                ));
                kind = "retry_storm".into();
            }
        }
    }

    // The service's own dimensions: a version, an instance or a node that
    // carries the change.
    if entity == op.service && !call {
        let kinds: &[&str] = &["server", "consumer"];
        let v = carriers(drill, &op.service, kinds, "version", errors);
        if let Some((f, share, _, true)) = v.first()
            && *share >= 0.75
        {
            lines.push(format!(
                "version {} of {} (new in this window, on {:.0} of its {:.0} requests) carries {:.0}% of the change [{drill_ev}]",
                f.value,
                op.service,
                f.calls.0,
                v.iter().map(|x| x.0.calls.0).sum::<f64>(),
                share * 100.0
            ));
            summary.push_str(&format!(
                "; it started with the deploy of version {}",
                f.value
            ));
            kind = if errors {
                "bad_deploy".into()
            } else {
                format!("{kind}_after_deploy")
            };
            confidence = confidence.max(80);
        } else {
            for dim in ["instance", "node"] {
                let c = carriers(drill, &op.service, kinds, dim, errors);
                if c.len() >= 2
                    && let Some((f, share, traffic, _)) = c.first()
                    && *share >= 0.75
                    && *traffic <= 0.6
                {
                    lines.push(format!(
                        "{dim} {} carries {:.0}% of the change with {:.0}% of {}'s requests [{drill_ev}]",
                        f.value,
                        share * 100.0,
                        traffic * 100.0,
                        op.service
                    ));
                    summary.push_str(&format!("; one {dim} carries it: {}", f.value));
                    component = Some(f.value.clone());
                    kind = format!("bad_{dim}");
                    confidence = 80;
                    break;
                }
            }
        }
        // Instances that appeared in the window: restarts or a rollout.
        let new_instances: Vec<&Facet> = drill
            .iter()
            .filter(|f| {
                f.service == op.service
                    && f.dimension == "instance"
                    && kinds.contains(&f.kind.as_str())
            })
            .filter(|f| f.calls.1 == 0.0 && f.calls.0 > 0.0)
            .collect();
        if new_instances.len() >= 2 {
            lines.push(format!(
                "{} new instances of {} appeared in the window (restarts or a rollout) [{drill_ev}]",
                new_instances.len(),
                op.service
            ));
            summary.push_str(&format!(
                "; {} instances restarted or were replaced",
                new_instances.len()
            ));
        }
        // Traffic: more requests per minute at this operation (not the
        // callers' own retries, found above).
        let (m_r, m_b) = b.minutes;
        if m_r > 0.0 && m_b > 0.0 && op.calls.1 > 0.0 && kind != "retry_storm" {
            let (rate, base) = (op.calls.0 / m_r, op.calls.1 / m_b);
            // A surge is traffic to this operation growing faster than the
            // rest (its share per request grew), not the whole system busier.
            if rate >= base * 2.0
                && rate - base >= 2.0
                && op.per_request.0 >= op.per_request.1 * 1.5
            {
                lines.push(format!(
                    "{} {} gets {rate:.0} requests/min (baseline {base:.0}) [{ev}]",
                    op.service, op.name
                ));
                summary.push_str(&format!(
                    "; traffic surge: {rate:.0} requests/min against {base:.0} before"
                ));
                kind = "traffic_surge".into();
            }
        }
        // Saturation: a metric of the service that moved.
        for (name, r, base) in moved_metrics(b, &op.service).into_iter().take(2) {
            lines.push(format!(
                "{} metric {name} rose to {} (baseline {}) [{ev}]",
                op.service,
                fmt_num(r),
                fmt_num(base)
            ));
            summary.push_str(&format!(
                "; {name} rose from {} to {}",
                fmt_num(base),
                fmt_num(r)
            ));
            let n = name.to_ascii_lowercase();
            if n.contains("cpu") {
                kind = "cpu_saturation".into();
            } else if n.contains("mem") || n.contains("heap") {
                kind = "memory_pressure".into();
            } else if n.contains("lag") {
                kind = "consumer_lag".into();
            }
        }
    }
    // A node slow for several services: the node is the cause.
    if !errors && let Some((node, svcs)) = bad_node(b) {
        lines.push(format!(
            "node {node} is slow for {} ({}) while their other nodes are not [{ev}]",
            svcs.len(),
            svcs.join(", ")
        ));
        return Some(Finding {
            root: RootCause {
                service: svcs.first().cloned().unwrap_or_default(),
                kind: "bad_node".into(),
                summary: format!(
                    "requests served on node {node} got slow across {} services ({}); the same services on other nodes did not [{ev}]",
                    svcs.len(),
                    svcs.join(", ")
                ),
                component: Some(node.clone()),
                confidence: 80,
                recommendation: format!(
                    "Check node {node}: CPU steal, disk, noisy neighbours; cordon and drain it if needed."
                ),
            },
            lines,
        });
    }
    Some(Finding {
        root: RootCause {
            service: entity,
            kind,
            summary,
            component,
            confidence,
            recommendation,
        },
        lines,
    })
}

/// The passive view (eBPF only): connects that started failing, RTT that
/// rose, or a new process connecting to a peer a moved service uses.
/// `rises` is how much each moved service's own (server-side) latency
/// rose, in ms: a round trip to a server that grew by a small part of the
/// server's own slowdown is the busy server's symptom (its accept queue,
/// delayed ACKs), not the network's.
pub fn passive(
    b: &Breakdown,
    moved: &BTreeSet<String>,
    rises: &BTreeMap<String, f64>,
    ev: &str,
) -> Option<Finding> {
    let mut fails: Vec<(&Value, f64, f64)> = Vec::new();
    let mut slow: Vec<(&Value, f64, f64)> = Vec::new();
    for e in &b.edges {
        let (c_r, c_b) = pair(&e["connections"]);
        let (f_r, f_b) = pair(&e["failed_connects"]);
        let rate_r = f_r / c_r.max(1.0);
        let rate_b = f_b / c_b.max(1.0);
        if f_r >= 3.0 && rate_r >= rate_b + 0.05 {
            fails.push((e, f_r, rate_r));
        }
        let (rtt_r, rtt_b) = pair(&e["rtt_ms"]);
        if c_b > 0.0
            && rtt_r >= rtt_b * 3.0
            && rtt_r - rtt_b >= 1.0
            && rtt_r - rtt_b >= 0.5 * rises.get(&s(e, "to")).copied().unwrap_or(0.0)
        {
            slow.push((e, rtt_r, rtt_b));
        }
    }
    // Group by peer: the peer that most callers fail to reach.
    let mut by_peer: BTreeMap<String, (f64, BTreeSet<String>, String)> = BTreeMap::new();
    for (e, n, _) in &fails {
        let p = by_peer.entry(s(e, "to")).or_default();
        p.0 += n;
        p.1.insert(s(e, "from"));
        p.2 = s(e, "addr");
    }
    if let Some((peer, (n, from, addr))) =
        by_peer.into_iter().max_by(|a, b| a.1.0.total_cmp(&b.1.0))
    {
        return Some(Finding {
            root: RootCause {
                service: peer.clone(),
                kind: "connect_failures".into(),
                summary: format!(
                    "connections to {peer} ({addr}) fail: {n:.0} failed connects in the window from {} (refused or timed out), seen by eBPF [{ev}]",
                    from.into_iter().collect::<Vec<_>>().join(", ")
                ),
                component: Some(addr),
                confidence: 80,
                recommendation: format!(
                    "Check that {peer} is up and listening and reachable from its callers."
                ),
            },
            lines: Vec::new(),
        });
    }
    let mut by_peer: BTreeMap<String, (f64, f64, BTreeSet<String>, String)> = BTreeMap::new();
    for (e, r, base) in &slow {
        let p = by_peer.entry(s(e, "to")).or_default();
        p.0 = p.0.max(*r);
        p.1 = if p.1 == 0.0 { *base } else { p.1.min(*base) };
        p.2.insert(s(e, "from"));
        p.3 = s(e, "addr");
    }
    if let Some((peer, (r, base, from, addr))) =
        by_peer.into_iter().max_by(|a, b| a.1.0.total_cmp(&b.1.0))
    {
        return Some(Finding {
            root: RootCause {
                service: peer.clone(),
                kind: "network_latency".into(),
                summary: format!(
                    "the network round trip to {peer} ({addr}) rose to {} (baseline {}) for {}, seen by eBPF on the connections [{ev}]",
                    fmt_ms(r),
                    fmt_ms(base),
                    from.into_iter().collect::<Vec<_>>().join(", ")
                ),
                component: Some(addr),
                confidence: 75,
                recommendation: format!(
                    "Check the network path to {peer}: retransmits, packet loss, a saturated link or node."
                ),
            },
            lines: Vec::new(),
        });
    }
    // A process that connects only in this window, to a peer a moved
    // service uses too.
    let known_before: BTreeSet<String> = b
        .edges
        .iter()
        .filter(|e| pair(&e["connections"]).1 > 0.0)
        .map(|e| s(e, "from"))
        .collect();
    for e in &b.edges {
        let from = s(e, "from");
        if known_before.contains(&from) || pair(&e["connections"]).0 == 0.0 {
            continue;
        }
        let addr = s(e, "addr");
        let shared_with: Vec<String> = b
            .edges
            .iter()
            .filter(|x| s(x, "addr") == addr && moved.contains(&s(x, "from")))
            .map(|x| s(x, "from"))
            .collect();
        if let Some(victim) = shared_with.first() {
            return Some(Finding {
                root: RootCause {
                    service: from.clone(),
                    kind: "contention".into(),
                    summary: format!(
                        "{from} started connecting to {addr} in this window ({:.0} connections), the peer {victim} uses, and {victim} got slower: contention on {addr}, seen by eBPF [{ev}]",
                        pair(&e["connections"]).0
                    ),
                    component: Some(addr.clone()),
                    confidence: 65,
                    recommendation: format!(
                        "Check what {from} runs against {addr} (a batch or cron job?) and move it off peak."
                    ),
                },
                lines: Vec::new(),
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// One `coral_breakdown` operation: each pair is (recent, baseline).
    struct OpRow<'a> {
        service: &'a str,
        kind: &'a str,
        name: &'a str,
        /// A database peer (the row gets a statement).
        peer: Option<&'a str>,
        calls: [f64; 2],
        own_errors: [f64; 2],
        self_ms_per_request: [f64; 2],
        mean_ms: [f64; 2],
    }

    fn op(o: OpRow<'_>) -> Value {
        let calls = o.calls;
        let mut v = json!({
            "service": o.service, "kind": o.kind, "name": o.name,
            "calls": calls, "calls_per_request": [calls[0] / 100.0, calls[1] / 1000.0],
            "errors": o.own_errors, "own_errors": o.own_errors,
            "self_ms_per_request": o.self_ms_per_request, "mean_ms": o.mean_ms,
        });
        if let Some(p) = o.peer {
            v["peer"] = json!(p);
            v["statement"] = json!("SELECT * FROM t WHERE id = $1");
        }
        v
    }

    fn facet(dimension: &str, value: &str, calls: [f64; 2], mean: [f64; 2]) -> Facet {
        Facet::parse(&json!({
            "service": "api", "kind": "server", "dimension": dimension, "value": value,
            "calls": calls, "errors": [0, 0], "mean_ms": mean, "self_mean_ms": mean,
        }))
    }

    /// Issue 15: more calls per request at the same cost per call is the
    /// caller's change (N+1), not the database's.
    #[test]
    fn more_calls_at_the_same_cost_blame_the_caller() {
        let b = Breakdown::parse(
            &json!({"requests": [100, 1000], "operations": [
                op(OpRow { service: "api", kind: "client", name: "SELECT t", peer: Some("db"), calls: [4000.0, 1000.0], own_errors: [0.0, 0.0], self_ms_per_request: [120.0, 3.0], mean_ms: [3.0, 3.0] }),
                op(OpRow { service: "api", kind: "server", name: "GET /x", peer: None, calls: [100.0, 1000.0], own_errors: [0.0, 0.0], self_ms_per_request: [2.0, 2.0], mean_ms: [125.0, 6.0] }),
            ]}),
            (5.0, 60.0),
        );
        let f = diagnose(&b, &[], "e1", "e2").unwrap();
        assert_eq!(f.root.service, "api");
        assert_eq!(f.root.kind, "n_plus_one");
        assert!(
            f.root.summary.contains("40.0 times per request"),
            "{}",
            f.root.summary
        );
    }

    /// A slow database call with the same number of calls blames the
    /// database; one instance carrying the change is named.
    #[test]
    fn own_time_names_the_deepest_component_and_the_instance_that_carries_it() {
        let b = Breakdown::parse(
            &json!({"requests": [100, 1000], "operations": [
                op(OpRow { service: "api", kind: "client", name: "SELECT t", peer: Some("db"), calls: [100.0, 1000.0], own_errors: [0.0, 0.0], self_ms_per_request: [300.0, 3.0], mean_ms: [300.0, 3.0] }),
            ]}),
            (5.0, 60.0),
        );
        let f = diagnose(&b, &[], "e1", "e2").unwrap();
        assert_eq!(
            (f.root.service.as_str(), f.root.kind.as_str()),
            ("db", "slow_query")
        );

        let b = Breakdown::parse(
            &json!({"requests": [100, 1000], "operations": [
                op(OpRow { service: "api", kind: "server", name: "GET /x", peer: None, calls: [100.0, 1000.0], own_errors: [0.0, 0.0], self_ms_per_request: [90.0, 5.0], mean_ms: [90.0, 5.0] }),
            ]}),
            (5.0, 60.0),
        );
        let drill = [
            facet("instance", "api-a", [33.0, 330.0], [250.0, 5.0]),
            facet("instance", "api-b", [33.0, 330.0], [5.0, 5.0]),
            facet("instance", "api-c", [34.0, 340.0], [5.0, 5.0]),
            facet("version", "1.2.0", [100.0, 1000.0], [90.0, 5.0]),
        ];
        let f = diagnose(&b, &drill, "e1", "e2").unwrap();
        assert_eq!(f.root.service, "api");
        assert_eq!(f.root.kind, "bad_instance");
        assert_eq!(f.root.component.as_deref(), Some("api-a"));
    }

    /// Issue 15: spans that fail with nothing but a status; the message
    /// the service started logging in the window names the mechanism.
    #[test]
    fn a_new_error_message_in_the_logs_names_the_mechanism() {
        let b = Breakdown::parse(
            &json!({"requests": [100, 1000], "operations": [
                op(OpRow { service: "api", kind: "server", name: "GET /x", peer: None, calls: [100.0, 1000.0], own_errors: [40.0, 0.0], self_ms_per_request: [5.0, 5.0], mean_ms: [5.0, 5.0] }),
            ], "logs": [
                {"service": "api", "severity": "INFO", "template": "served ? in ? ms",
                 "example": "served 7 in 3 ms", "count": [100, 1000]},
                {"service": "api", "severity": "ERROR", "template": "request ? failed: could not write /spool/seg-?.tmp: No space left on device",
                 "example": "request 9f2c0e4d1a7b3c5e failed: could not write /spool/seg-000042.tmp: No space left on device", "count": [40, 0]},
                {"service": "api", "severity": "ERROR", "template": "cache miss for ?",
                 "example": "cache miss for 12", "count": [3, 40]},
            ]}),
            (5.0, 60.0),
        );
        let f = diagnose(&b, &[], "e1", "e2").unwrap();
        assert_eq!(f.root.service, "api");
        assert!(
            f.root
                .summary
                .contains("seg-000042.tmp: No space left on device"),
            "{}",
            f.root.summary
        );
        assert!(
            f.lines
                .iter()
                .any(|l| l.contains("40 ERROR records") && l.contains("a new message")),
            "{:?}",
            f.lines
        );
        // A message that was as frequent before is not the change.
        assert!(!f.root.summary.contains("cache miss"));
    }

    /// Issue 15 (retry_storm, seed 3): a caller whose calls to the failing
    /// service are a small share of its requests still retries them; its
    /// calls per request doubled.
    #[test]
    fn retries_of_a_small_share_of_requests_are_a_retry_storm() {
        let b = Breakdown::parse(
            &json!({"requests": [100, 1340], "operations": [
                op(OpRow { service: "wallet", kind: "server", name: "GET /wallet/{id}", peer: None, calls: [70.0, 339.0], own_errors: [52.0, 0.0], self_ms_per_request: [4.0, 2.0], mean_ms: [60.0, 7.0] }),
                {"service": "front", "kind": "client", "name": "GET", "peer": "wallet",
                 "calls": [70, 339], "calls_per_request": [0.7, 0.25], "errors": [52, 0],
                 "own_errors": [0, 0], "self_ms_per_request": [0.1, 0.1], "mean_ms": [61.0, 8.0]},
            ]}),
            (5.0, 60.0),
        );
        let f = diagnose(&b, &[], "e1", "e2").unwrap();
        assert_eq!(f.root.service, "wallet");
        assert_eq!(f.root.kind, "retry_storm");
        assert!(
            f.root.summary.contains("front retries"),
            "{}",
            f.root.summary
        );
    }

    /// eBPF only: failed connects name the peer.
    #[test]
    fn failed_connects_name_the_peer() {
        let b = Breakdown::parse(
            &json!({"requests": [0, 0], "operations": [], "edges": [
                {"from": "api", "to": "10.0.0.9:5432", "addr": "10.0.0.9:5432",
                 "connections": [50, 500], "failed_connects": [40, 0], "rtt_ms": [0.3, 0.3]},
            ]}),
            (5.0, 60.0),
        );
        let f = passive(&b, &BTreeSet::new(), &BTreeMap::new(), "e1").unwrap();
        assert_eq!(f.root.service, "10.0.0.9:5432");
        assert_eq!(f.root.kind, "connect_failures");
    }
}
