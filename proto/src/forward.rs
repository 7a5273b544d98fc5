//! Keeping a push inside the frame: rows an agent forwards are sized as
//! the JSON they become, batches are cut by bytes, and a row too large for
//! any batch has its largest text cut, with a marker, rather than block
//! the queue behind it.

use crate::types::{
    EdgeRecord, LogRecord, MetricRecord, ProbeCallRecord, RedRecord, Signals, SpanRecord,
};

/// JSON keys, numbers and punctuation of one row, beyond its text.
const ROW_OVERHEAD: usize = 320;

/// Bytes `s` takes as a JSON string.
pub fn json_len(s: &str) -> usize {
    2 + s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
}

/// A text field of a row, and whether it holds JSON (cut to a JSON marker)
/// or plain text (cut to a prefix).
enum Field<'a> {
    Text(&'a mut String),
    Json(&'a mut String),
}

impl Field<'_> {
    fn len(&self) -> usize {
        match self {
            Field::Text(s) | Field::Json(s) => json_len(s),
        }
    }

    /// Shrinks the field to about `keep` bytes of JSON.
    fn cut(&mut self, keep: usize) {
        match self {
            Field::Json(s) => {
                let was = s.len();
                **s = format!(r#"{{"coral.cut":"{was} bytes cut: too large to forward"}}"#);
            }
            Field::Text(s) => {
                let was = s.len();
                let mut at = keep.min(s.len()) / 6; // worst-case escaping
                while !s.is_char_boundary(at) {
                    at -= 1;
                }
                s.truncate(at);
                s.push_str(&format!("…[{} bytes cut]", was - at));
            }
        }
    }
}

trait Row {
    fn fields(&mut self) -> Vec<Field<'_>>;

    fn wire_len(&mut self) -> usize {
        ROW_OVERHEAD + self.fields().iter().map(Field::len).sum::<usize>()
    }

    /// Cuts the largest fields until the row is at most `max` bytes;
    /// true if anything was cut.
    fn fit(&mut self, max: usize) -> bool {
        let mut cut = false;
        while self.wire_len() > max {
            let mut fields = self.fields();
            let Some(big) = fields.iter_mut().max_by_key(|f| f.len()) else {
                break;
            };
            if big.len() <= 64 {
                break;
            }
            let keep = big.len().saturating_sub(self_excess(big.len(), max));
            big.cut(keep);
            cut = true;
        }
        cut
    }
}

/// How much a field of `len` bytes must lose so its row fits in `max`
/// (it keeps at most half of `max`).
fn self_excess(len: usize, max: usize) -> usize {
    len.saturating_sub(max / 2)
}

impl Row for SpanRecord {
    fn fields(&mut self) -> Vec<Field<'_>> {
        vec![
            Field::Text(&mut self.service),
            Field::Text(&mut self.name),
            Field::Text(&mut self.status_message),
            Field::Json(&mut self.attributes),
            Field::Json(&mut self.events),
            Field::Json(&mut self.resource),
            Field::Text(&mut self.scope),
        ]
    }
}

impl Row for MetricRecord {
    fn fields(&mut self) -> Vec<Field<'_>> {
        vec![
            Field::Text(&mut self.service),
            Field::Text(&mut self.name),
            Field::Text(&mut self.unit),
            Field::Json(&mut self.attributes),
        ]
    }
}

impl Row for LogRecord {
    fn fields(&mut self) -> Vec<Field<'_>> {
        vec![
            Field::Text(&mut self.service),
            Field::Text(&mut self.severity_text),
            Field::Text(&mut self.body),
            Field::Json(&mut self.attributes),
        ]
    }
}

impl Row for RedRecord {
    fn fields(&mut self) -> Vec<Field<'_>> {
        vec![
            Field::Text(&mut self.service),
            Field::Text(&mut self.method),
            Field::Text(&mut self.route),
            Field::Text(&mut self.hist),
            Field::Text(&mut self.error_codes),
            Field::Text(&mut self.db_user),
            Field::Text(&mut self.db_name),
        ]
    }
}

impl Row for EdgeRecord {
    fn fields(&mut self) -> Vec<Field<'_>> {
        vec![
            Field::Text(&mut self.src),
            Field::Text(&mut self.dst_addr),
            Field::Text(&mut self.protocol),
        ]
    }
}

impl Row for ProbeCallRecord {
    fn fields(&mut self) -> Vec<Field<'_>> {
        vec![
            Field::Text(&mut self.service),
            Field::Text(&mut self.session),
            Field::Text(&mut self.function),
            Field::Json(&mut self.args),
            Field::Json(&mut self.results),
            Field::Json(&mut self.stack),
        ]
    }
}

/// Keeps the longest prefix of `rows` within `max_batch` bytes (at least
/// one row), after cutting any row over `max_row`. Returns the rows cut.
fn fit_rows<R: Row>(rows: &mut Vec<R>, max_batch: usize, max_row: usize) -> usize {
    let mut total = 0;
    let mut cut = 0;
    for (i, r) in rows.iter_mut().enumerate() {
        cut += usize::from(r.fit(max_row));
        total += r.wire_len();
        if total > max_batch && i > 0 {
            rows.truncate(i);
            break;
        }
    }
    cut
}

impl Signals {
    /// Shapes a batch for one push: rows over `max_row` bytes have their
    /// largest text cut (with a marker), and the batch keeps the longest
    /// prefix within `max_batch` bytes (always at least one row; the rest
    /// follow in the next push). Returns how many rows were cut.
    pub fn fit_bytes(&mut self, max_batch: usize, max_row: usize) -> usize {
        match self {
            Signals::Spans(v) => fit_rows(v, max_batch, max_row),
            Signals::Metrics(v) => fit_rows(v, max_batch, max_row),
            Signals::Logs(v) => fit_rows(v, max_batch, max_row),
            Signals::Red(v) => fit_rows(v, max_batch, max_row),
            Signals::Edges(v) => fit_rows(v, max_batch, max_row),
            Signals::Calls(v) => fit_rows(v, max_batch, max_row),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(attrs: String, name: String) -> SpanRecord {
        SpanRecord {
            agent_id: "a".into(),
            seq: 1,
            trace_id: "0".repeat(32),
            span_id: "0".repeat(16),
            parent_span_id: None,
            service: "svc".into(),
            name,
            kind: "server".into(),
            start_us: 0,
            duration_us: 1,
            status_code: "ok".into(),
            status_message: String::new(),
            attributes: attrs,
            events: "[]".into(),
            resource: "{}".into(),
            scope: String::new(),
        }
    }

    #[test]
    fn estimates_are_never_below_the_real_json() {
        let s = span(
            format!(r#"{{"k":"{}"}}"#, "\u{1}\"é".repeat(1000)),
            "€".repeat(300),
        );
        let real = serde_json::to_string(&s).unwrap().len();
        assert!(span_len(&s) >= real, "{} < {real}", span_len(&s));
    }

    fn span_len(s: &SpanRecord) -> usize {
        s.clone().wire_len()
    }

    #[test]
    fn batches_are_cut_by_bytes_and_huge_rows_by_field() {
        // 64 KB attributes: 100 rows are 6.4 MB; a 1 MB batch takes ~15.
        let rows: Vec<SpanRecord> = (0..100)
            .map(|_| span(format!(r#"{{"k":"{}"}}"#, "x".repeat(64_000)), "n".into()))
            .collect();
        let mut sig = Signals::Spans(rows);
        assert_eq!(sig.fit_bytes(1 << 20, 256 << 10), 0);
        let n = sig.len();
        assert!((10..=16).contains(&n), "{n}");
        assert!(serde_json::to_string(&sig).unwrap().len() <= 1 << 20);
        // One row larger than any batch: cut, marked, still valid JSON.
        let mut one = Signals::Spans(vec![span(
            format!(r#"{{"k":"{}"}}"#, "y".repeat(9 << 20)),
            "é".repeat(3 << 20),
        )]);
        assert_eq!(one.fit_bytes(4 << 20, 1 << 20), 1);
        let Signals::Spans(v) = &one else { panic!() };
        assert!(serde_json::to_string(&one).unwrap().len() <= 1 << 20);
        let attrs: serde_json::Value = serde_json::from_str(&v[0].attributes).unwrap();
        assert!(attrs["coral.cut"].as_str().unwrap().contains("bytes cut"));
        assert!(v[0].name.ends_with("bytes cut]"));
    }
}
