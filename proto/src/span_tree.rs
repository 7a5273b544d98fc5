//! The shape of one trace: its span tree and its critical path (from the
//! root that ends last, repeatedly the child that ends last). The
//! `coral_trace` tool marks the path for the LLM; the CLI's `coral query
//! trace` table stars it (tested there, `cli::render`).

use crate::SpanRecord;
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
