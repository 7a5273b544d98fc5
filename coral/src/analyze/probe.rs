//! The built-in analyzer's escalation to live probes (issue 12). When the
//! metrics and traces say that a service got slower in its own code — one
//! route slower, nothing under its requests explaining it — but not in
//! which function, the analyzer probes the candidates for a few seconds
//! (`coral_debug_probe`: attach, collect, detach), and the answer names
//! the function where the time is spent with its measured durations.
//!
//! Gated like every debug tool: `coral_debug_probe` is listed only with
//! `[colony.mcp] allow_debug`, the agent's host policy (`[[debug]]`) must
//! allow each function, and the colony audits the attach and the detach.
//! Candidates, best first: the functions the service's recent spans name
//! in their code attributes (`code.function.name`, or `code.namespace` +
//! `code.function`) that are in its binary, then its own functions whose
//! name matches a word of the slow route (`/api/checkout` →
//! `main.handleCheckout`, case aside), then those matching an operation the
//! hotspots named, then the rest of its own code (Go: package `main`), at
//! most [`MAX_CANDIDATES`].

use super::{Evidence, RootCause, Tools};
use serde_json::{Value, json};

/// Functions probed at once (the agent's default per-session limit).
pub const MAX_CANDIDATES: usize = 8;
/// Recent traces of the service whose spans are read for code attributes.
pub const CODE_TRACES: usize = 4;
/// How long the probes collect.
pub const PROBE_SECONDS: u64 = 5;

/// Calls `tool` and keeps the evidence (ids continue the analyzer's).
async fn call(
    tools: &impl Tools,
    evidence: &mut Vec<Evidence>,
    tool: &str,
    args: Value,
) -> anyhow::Result<Value> {
    let text = tools.call(tool, args.clone()).await;
    let bytes = text.as_ref().map_or(0, String::len);
    let v = text.and_then(|t| {
        serde_json::from_str::<Value>(&t)
            .map_err(|e| anyhow::anyhow!("tool {tool} returned invalid JSON: {e}"))
    });
    evidence.push(Evidence {
        id: format!("e{}", evidence.len() + 1),
        tool: tool.to_string(),
        args,
        summary: match &v {
            Ok(_) => "ok".into(),
            Err(e) => format!("error: {e}"),
        },
        bytes,
    });
    v
}

fn note(evidence: &mut [Evidence], summary: String) {
    if let Some(e) = evidence.last_mut() {
        e.summary = summary;
    }
}

/// Lowercase words of a route or operation worth matching against function
/// names: path segments and identifiers of three letters or more, without
/// parameters (`{id}`, `:id`, numbers) or the method.
pub fn route_words(component: &str) -> Vec<String> {
    const SKIP: [&str; 8] = [
        "get", "post", "put", "delete", "patch", "head", "http", "https",
    ];
    component
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '{' || c == ':'))
        .filter(|w| !w.starts_with('{') && !w.starts_with(':'))
        .map(str::to_ascii_lowercase)
        .filter(|w| w.len() >= 3 && !w.bytes().all(|b| b.is_ascii_digit()))
        .filter(|w| !SKIP.contains(&w.as_str()))
        .collect()
}

/// Whether `name` is the service's own code (Go: package `main`, not the
/// runtime's entry points).
fn own_code(name: &str, lang: &str) -> bool {
    match lang {
        "go" => {
            name.starts_with("main.")
                && name != "main.main"
                && !name.starts_with("main.init")
                && !name.contains("..")
        }
        _ => false,
    }
}

/// The functions to probe, best first: `code` (functions the spans named,
/// already resolved in the binary), then those matching the route's words
/// (the last segment counts most), then those matching other hints, then
/// the rest of the service's own code.
pub fn candidates(
    functions: &[String],
    lang: &str,
    code: &[String],
    route: &[String],
    hints: &[String],
) -> Vec<String> {
    let score = |name: &str| -> u32 {
        if let Some(i) = code.iter().position(|c| c == name) {
            // In the spans' order (most often named first).
            return 1000 - i.min(900) as u32;
        }
        let short = name.rsplit('.').next().unwrap_or(name).to_ascii_lowercase();
        let mut s = 0;
        for (i, w) in route.iter().enumerate() {
            if short.contains(w.as_str()) {
                s = s.max(if i + 1 == route.len() { 30 } else { 20 });
            }
        }
        if hints.iter().any(|h| short.contains(h.as_str())) {
            s = s.max(10);
        }
        s
    };
    let mut ranked: Vec<(u32, &String)> = functions
        .iter()
        .chain(code.iter().filter(|c| !functions.contains(c)))
        .map(|f| (score(f), f))
        .filter(|(s, f)| *s > 0 || own_code(f, lang))
        .collect();
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    ranked
        .into_iter()
        .take(MAX_CANDIDATES)
        .map(|(_, f)| f.clone())
        .collect()
}

/// The function a span's code attributes name: `code.function.name` (or
/// the older `code.function`), qualified by `code.namespace` unless it
/// already is.
pub fn code_name(function: &str, namespace: Option<&str>) -> String {
    match namespace.filter(|ns| !ns.is_empty()) {
        Some(ns) if !function.starts_with(&format!("{ns}.")) => format!("{ns}.{function}"),
        _ => function.to_string(),
    }
}

/// The name in `functions` that `name` stands for: itself, or the one
/// function whose name ends with `.name` (`handleCheckout` →
/// `main.handleCheckout`).
pub fn resolve_in(name: &str, functions: &[String]) -> Option<String> {
    if functions.iter().any(|f| f == name) {
        return Some(name.to_string());
    }
    let mut hits = functions.iter().filter(|f| {
        f.strip_suffix(name)
            .is_some_and(|head| head.ends_with('.') || head.ends_with("::"))
    });
    match (hits.next(), hits.next()) {
        (Some(f), None) => Some(f.clone()),
        _ => None,
    }
}

/// Functions the service's recent spans name in their code attributes,
/// most often named first (from [`CODE_TRACES`] recent traces).
async fn span_code_names(
    tools: &impl Tools,
    evidence: &mut Vec<Evidence>,
    service: &str,
) -> Vec<String> {
    let Ok(list) = call(
        tools,
        evidence,
        "coral_traces",
        json!({"service": service, "since": "5m", "limit": CODE_TRACES}),
    )
    .await
    else {
        return Vec::new();
    };
    let ids: Vec<String> = list["traces"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["trace_id"].as_str().map(str::to_string))
        .take(CODE_TRACES)
        .collect();
    note(
        evidence,
        format!("{} recent traces of {service}", ids.len()),
    );
    let mut counts: Vec<(String, usize)> = Vec::new();
    for id in ids {
        let Ok(t) = call(tools, evidence, "coral_trace", json!({"trace_id": id})).await else {
            continue;
        };
        let mut named = Vec::new();
        for s in t["spans"].as_array().into_iter().flatten() {
            if s["service"] != service {
                continue;
            }
            let Some(f) = s["code_function"].as_str().filter(|f| !f.is_empty()) else {
                continue;
            };
            let name = code_name(f, s["code_namespace"].as_str());
            match counts.iter_mut().find(|(n, _)| *n == name) {
                Some((_, k)) => *k += 1,
                None => counts.push((name.clone(), 1)),
            }
            named.push(name);
        }
        note(
            evidence,
            if named.is_empty() {
                "no span code attributes".to_string()
            } else {
                format!("span code attributes: {}", named.join(", "))
            },
        );
    }
    counts.sort_by_key(|c| std::cmp::Reverse(c.1));
    counts.into_iter().map(|(n, _)| n).collect()
}

fn ms(v: &Value) -> String {
    let v = v.as_f64().unwrap_or(0.0);
    if v >= 100.0 {
        format!("{v:.0} ms")
    } else {
        format!("{v:.1} ms")
    }
}

/// Probes the candidates when `root` is a latency regression in the
/// service's own code, and puts what the probes measured into the root
/// cause and the "where the time goes" lines. Any failure (tool not
/// enabled, policy refusal, unsupported runtime) becomes a line of the
/// answer, never an error of the analysis.
pub async fn escalate(
    tools: &impl Tools,
    evidence: &mut Vec<Evidence>,
    root: &mut Option<RootCause>,
    where_time: &mut Vec<String>,
) {
    let Some(rc) = root.as_mut() else {
        return;
    };
    if rc.kind != "latency_regression" {
        return;
    }
    let service = rc.service.clone();
    let listed = match tools.list().await {
        Ok(l) => l.into_iter().any(|t| t.name == "coral_debug_probe"),
        Err(_) => false,
    };
    if !listed {
        rc.recommendation.push_str(&format!(
            " Live probes would name the function: with '[colony.mcp] allow_debug = true' and a [[debug]] rule for {service} in the host's policy, 'coral ask' probes its functions itself ('coral debug functions {service}' lists them)."
        ));
        return;
    }
    // Go's own code is package `main`; any other binary is listed whole
    // (up to 1,000 names) and matched against the route here.
    let mut funcs = call(
        tools,
        evidence,
        "coral_debug_functions",
        json!({"service": service, "pattern": "main.", "limit": 1000}),
    )
    .await;
    if funcs.as_ref().is_ok_and(|v| v["lang"] != "go") {
        funcs = call(
            tools,
            evidence,
            "coral_debug_functions",
            json!({"service": service, "limit": 1000}),
        )
        .await;
    }
    let funcs = match funcs {
        Ok(v) => v,
        Err(e) => {
            let why = e.to_string();
            note(evidence, format!("error: {why}"));
            rc.summary
                .push_str(&format!("; its functions cannot be probed: {why}"));
            return;
        }
    };
    let lang = funcs["lang"].as_str().unwrap_or("").to_string();
    let names: Vec<String> = funcs["functions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["name"].as_str().map(str::to_string))
        .collect();
    let functions_ev = evidence.last().map(|e| e.id.clone()).unwrap_or_default();
    // Functions the spans' code attributes name, kept when the binary has
    // them (looked up by name when the list above does not hold them).
    let mut code = Vec::new();
    let mut dropped = Vec::new();
    for name in span_code_names(tools, evidence, &service).await {
        let found = match resolve_in(&name, &names) {
            Some(f) => Some(f),
            None => call(
                tools,
                evidence,
                "coral_debug_functions",
                json!({"service": service, "pattern": name, "limit": 20}),
            )
            .await
            .ok()
            .and_then(|v| {
                let listed: Vec<String> = v["functions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|f| f["name"].as_str().map(str::to_string))
                    .collect();
                resolve_in(&name, &listed)
            }),
        };
        match found {
            Some(f) if !code.contains(&f) => code.push(f),
            Some(_) => {}
            None => dropped.push(name),
        }
        if code.len() >= MAX_CANDIDATES {
            break;
        }
    }
    let route = rc.component.as_deref().map(route_words).unwrap_or_default();
    // Operations the hotspots named (span code attributes, own work).
    let hints: Vec<String> = evidence
        .iter()
        .filter(|e| e.tool == "coral_hotspots")
        .flat_map(|e| route_words(&e.summary))
        .filter(|w| !route.contains(w) && w != "operations" && w != "under" && w != "top")
        .collect();
    let chosen = candidates(&names, &lang, &code, &route, &hints);
    let from_spans = match (code.is_empty(), dropped.is_empty()) {
        (true, true) => String::new(),
        _ => format!(
            "; from span code attributes: {}{}",
            if code.is_empty() {
                "none".into()
            } else {
                code.join(", ")
            },
            if dropped.is_empty() {
                String::new()
            } else {
                format!(" (not in the binary, dropped: {})", dropped.join(", "))
            }
        ),
    };
    if let Some(e) = evidence.iter_mut().find(|e| e.id == functions_ev) {
        e.summary = format!(
            "{} functions ({lang}); candidates: {}{from_spans}",
            names.len(),
            if chosen.is_empty() {
                "none".into()
            } else {
                chosen.join(", ")
            }
        );
    }
    if chosen.is_empty() {
        rc.summary.push_str(&format!(
            "; no function of {service} matches the route or is its own code to probe [{functions_ev}]"
        ));
        return;
    }
    let probe = call(
        tools,
        evidence,
        "coral_debug_probe",
        json!({"service": service, "functions": chosen, "seconds": PROBE_SECONDS}),
    )
    .await;
    let probe_ev = evidence.last().map(|e| e.id.clone()).unwrap_or_default();
    let probe = match probe {
        Ok(v) => v,
        Err(e) => {
            let why = e.to_string();
            rc.summary
                .push_str(&format!("; live probes could not run [{probe_ev}]: {why}"));
            return;
        }
    };
    let figures = probe["functions"].as_array().cloned().unwrap_or_default();
    note(
        evidence,
        format!(
            "probed {} functions for {} s ({} attach points), detached: {}; calls: {}",
            chosen.len(),
            PROBE_SECONDS,
            probe["attach_points"],
            probe["detached"],
            figures
                .iter()
                .map(|f| format!(
                    "{} ×{} self {}",
                    f["function"].as_str().unwrap_or("?"),
                    f["calls"],
                    ms(&f["self_mean_ms"])
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    let Some(top) = figures.first() else {
        rc.summary.push_str(&format!(
            "; live probes on {} saw no call in {PROBE_SECONDS} s [{probe_ev}]",
            chosen.join(", ")
        ));
        return;
    };
    for f in figures.iter().take(3) {
        where_time.push(format!(
            "{} (live probes): {} calls in {PROBE_SECONDS} s, mean {}, p95 {}, max {}; own time {} per call [{probe_ev}]",
            f["function"].as_str().unwrap_or("?"),
            f["calls"],
            ms(&f["mean_ms"]),
            ms(&f["p95_ms"]),
            ms(&f["max_ms"]),
            ms(&f["self_mean_ms"]),
        ));
    }
    let function = top["function"].as_str().unwrap_or("?").to_string();
    // The probes now say what inside the route is slow.
    rc.summary = rc
        .summary
        .replace("; no trace says what inside it is slow", "");
    rc.summary.push_str(&format!(
        "; live probes for {PROBE_SECONDS} s [{probe_ev}] show the time is spent in {function}: {} calls, mean {}, p95 {}, {} of it its own work per call",
        top["calls"],
        ms(&top["mean_ms"]),
        ms(&top["p95_ms"]),
        ms(&top["self_mean_ms"]),
    ));
    rc.component = Some(match rc.component.take() {
        Some(route) => format!("{function} (in {route})"),
        None => function.clone(),
    });
    rc.confidence = rc.confidence.max(85);
    rc.recommendation = format!(
        "Look at {function} in {service}: it carries the added time. 'coral debug attach {service} --function {function} --args --duration 60s' shows its arguments and durations call by call."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_words_drop_methods_and_parameters() {
        assert_eq!(
            route_words("GET /api/checkout/{id}"),
            vec!["api".to_string(), "checkout".to_string()]
        );
        assert_eq!(
            route_words("POST /v1/users/:id/42"),
            vec!["users".to_string()]
        );
    }

    #[test]
    fn candidates_put_the_route_handler_first_then_own_code() {
        let f: Vec<String> = [
            "runtime.mallocgc",
            "net/http.(*conn).serve",
            "main.main",
            "main.init.0",
            "main.handleHealth",
            "main.lookupPrices",
            "main.handleCheckout",
            "main.checkoutTotal",
        ]
        .map(String::from)
        .to_vec();
        let c = candidates(&f, "go", &[], &route_words("GET /api/checkout"), &[]);
        assert_eq!(
            c,
            vec![
                "main.checkoutTotal",
                "main.handleCheckout",
                "main.handleHealth",
                "main.lookupPrices"
            ]
        );
    }

    /// Issue 12: functions the spans' code attributes name come first,
    /// once resolved in the binary; a name it does not have is dropped.
    #[test]
    fn span_code_functions_come_first_and_unknown_names_drop() {
        assert_eq!(code_name("serveStock", Some("main")), "main.serveStock");
        assert_eq!(
            code_name("main.serveStock", Some("main")),
            "main.serveStock"
        );
        assert_eq!(code_name("main.gone", None), "main.gone");
        let f: Vec<String> = [
            "main.checkA",
            "main.checkB",
            "main.checkC",
            "main.checkD",
            "main.checkE",
            "main.checkF",
            "main.checkG",
            "main.checkH",
            "main.checkI",
            "main.serveStock",
            "main.(*Shop).serveStock",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            resolve_in("main.serveStock", &f).as_deref(),
            Some("main.serveStock")
        );
        assert_eq!(resolve_in("checkA", &f).as_deref(), Some("main.checkA"));
        // Ambiguous or absent: dropped.
        assert_eq!(resolve_in("serveStock", &f), None);
        assert_eq!(resolve_in("main.gone", &f), None);
        let route = route_words("GET /api/inventory");
        let without = candidates(&f, "go", &[], &route, &[]);
        assert_eq!(without.len(), MAX_CANDIDATES);
        assert!(
            !without.contains(&"main.serveStock".to_string()),
            "{without:?}"
        );
        let code = vec![
            "main.serveStock".to_string(),
            "net/http.(*conn).serve".to_string(),
        ];
        let with = candidates(&f, "go", &code, &route, &[]);
        assert_eq!(with[..2], code[..], "{with:?}");
        assert_eq!(with.len(), MAX_CANDIDATES);
    }
}
