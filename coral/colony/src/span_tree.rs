//! The shape of one trace: its span tree and its critical path (from the
//! root that ends last, repeatedly the child that ends last). The
//! `coral_trace` tool marks the path for the LLM; the CLI's `coral query
//! trace` table stars it.

use coral_proto::SpanRecord;
use std::collections::{HashMap, HashSet};

pub type Children<'a> = HashMap<&'a str, Vec<&'a SpanRecord>>;

/// Root spans (no parent, or a parent not in the set) and each span's children.
pub fn tree(spans: &[SpanRecord]) -> (Vec<&SpanRecord>, Children<'_>) {
    let ids: HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let mut children: HashMap<&str, Vec<&SpanRecord>> = HashMap::new();
    let mut roots = Vec::new();
    for s in spans {
        match s.parent_span_id.as_deref().filter(|p| ids.contains(p)) {
            Some(p) => children.entry(p).or_default().push(s),
            None => roots.push(s),
        }
    }
    (roots, children)
}

/// The spans on the critical path: from each root, repeatedly the child
/// that ends last.
pub fn critical_path(roots: &[&SpanRecord], children: &Children<'_>) -> HashSet<String> {
    let mut path = HashSet::new();
    // The root that ends last carries the trace's duration.
    let mut cur = roots
        .iter()
        .copied()
        .max_by_key(|s| s.start_us + s.duration_us);
    while let Some(s) = cur {
        path.insert(s.span_id.clone());
        cur = children
            .get(s.span_id.as_str())
            .and_then(|c| c.iter().copied().max_by_key(|c| c.start_us + c.duration_us));
    }
    path
}

/// The span ids on the critical path of a trace.
pub fn critical_span_ids(spans: &[SpanRecord]) -> HashSet<String> {
    let (roots, children) = tree(spans);
    critical_path(&roots, &children)
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
        let mut p: Vec<_> = critical_span_ids(&spans).into_iter().collect();
        p.sort();
        assert_eq!(p, ["b", "b2", "root"]);
    }
}
