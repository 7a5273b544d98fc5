//! `coral debug trace SERVICE --path PATH` (issue 12): the requests on a
//! path, from the eBPF HTTP capture, each with the calls of the probed
//! functions that ran on the goroutine serving it.
//!
//! Go's `net/http` serves each request on one goroutine inside
//! `net/http.serverHandler.ServeHTTP`; the trace probes it (the anchor) with
//! the chosen functions. A request is matched to the anchor call that
//! started after its first bytes were read and returned before its
//! response was written (net/http writes a buffered response after the
//! handler returns), the closest in start; its tree is every probed call on
//! that anchor's goroutine within it, nested by time. Other runtimes, and
//! Go programs that are not net/http servers, get the requests alone.

use std::time::{Duration, Instant};

use coral_proto::debug::{
    DebugAttachRequest, DebugCall, DebugError, DebugRequest, DebugRequests, DebugTarget,
    DebugTrace, DebugTraceRequest, DebugTreeCall,
};

use super::Debugger;
use crate::ebpf::tap::{RequestTap, TappedRequest};

/// The function net/http serves each request in.
pub const ANCHOR: &str = "net/http.serverHandler.ServeHTTP";
/// A request is reported this long after it ended, so that the probes'
/// events for it have been read.
const SETTLE_NS: i64 = 400_000_000;
/// Slack when fitting an anchor call inside a request (clock conversions).
const SLACK_NS: i64 = 2_000_000;

/// Lowercase words of a path worth matching against function names.
fn path_words(path: &str) -> Vec<String> {
    path.split(|c: char| !c.is_ascii_alphanumeric())
        .map(str::to_ascii_lowercase)
        .filter(|w| w.len() >= 3 && !w.bytes().all(|b| b.is_ascii_digit()))
        .collect()
}

impl Debugger {
    /// Starts a trace: the request tap, and (Go) the probe session.
    pub fn start_trace(
        &self,
        tap: &RequestTap,
        service: &str,
        pid: Result<u32, DebugError>,
        req: &DebugTraceRequest,
        allow: &dyn Fn(&str) -> Result<bool, DebugError>,
    ) -> Result<DebugTrace, DebugError> {
        if !req.path.starts_with('/') {
            return Err(DebugError::Invalid(format!(
                "--path '{}' must start with '/'",
                req.path
            )));
        }
        let ttl = super::session::session_ttl(req.ttl_ms)?;
        let (session, note) =
            match pid.and_then(|pid| self.trace_session(pid, service, req, ttl, allow)) {
                Ok(s) => (Some(s), None),
                Err(DebugError::Refused(e)) => return Err(DebugError::Refused(e)),
                Err(DebugError::Limit(e)) => return Err(DebugError::Limit(e)),
                Err(e) => (None, Some(format!("requests only, no function calls: {e}"))),
            };
        let id = {
            let mut st = self.lock();
            st.next_trace += 1;
            format!("trace-{}", st.next_trace)
        };
        tap.start(
            &id,
            service,
            &req.path,
            Instant::now() + Duration::from_millis(ttl),
        );
        let trace = DebugTrace {
            id,
            service: service.to_string(),
            path: req.path.clone(),
            expires_ms: coral_proto::now_ms() + ttl as i64,
            session,
            note,
        };
        let mut st = self.lock();
        st.traces.push(trace.clone());
        let extra = st.traces.len().saturating_sub(32);
        st.traces.drain(..extra);
        Ok(trace)
    }

    fn trace_session(
        &self,
        pid: u32,
        service: &str,
        req: &DebugTraceRequest,
        ttl: u64,
        allow: &dyn Fn(&str) -> Result<bool, DebugError>,
    ) -> Result<coral_proto::debug::DebugSession, DebugError> {
        let (_, idx) = self.index_of(pid)?;
        if idx.lang != super::index::Lang::Go {
            return Err(DebugError::Unsupported(
                "the serving goroutine is found for Go net/http servers only".into(),
            ));
        }
        idx.resolve(ANCHOR).map_err(|_| {
            DebugError::NotFound(format!(
                "{ANCHOR} is not in the binary: not a Go net/http server"
            ))
        })?;
        let mut functions = vec![ANCHOR.to_string()];
        if req.functions.is_empty() {
            let words = path_words(&req.path);
            let max = self.limits().max_functions_per_session.saturating_sub(1);
            functions.extend(
                idx.functions
                    .iter()
                    .filter(|f| f.name.starts_with("main.") && f.name != "main.main")
                    .filter(|f| {
                        let short = f.name.rsplit('.').next().unwrap_or("").to_ascii_lowercase();
                        words.iter().any(|w| short.contains(w.as_str()))
                    })
                    .take(max)
                    .map(|f| f.name.clone()),
            );
        } else {
            functions.extend(req.functions.iter().cloned());
        }
        self.attach_checked(
            pid,
            &DebugAttachRequest {
                target: DebugTarget::Service(service.to_string()),
                functions,
                ttl_ms: ttl,
                capture_args: false,
                stack: false,
            },
            allow,
        )
    }

    /// Ends a trace now: its tap and its session.
    pub fn stop_trace(
        &self,
        tap: &RequestTap,
        id: &str,
    ) -> Result<Vec<coral_proto::debug::DebugSession>, DebugError> {
        let session = self
            .lock()
            .traces
            .iter()
            .find(|t| t.id == id)
            .map(|t| t.session.as_ref().map(|s| s.id.clone()))
            .ok_or_else(|| DebugError::NotFound(format!("no trace '{id}'")))?;
        tap.stop(id);
        match session {
            Some(s) => self.detach(Some(&s)).or_else(|e| match e {
                DebugError::NotFound(_) => Ok(Vec::new()), // it expired
                e => Err(e),
            }),
            None => Ok(Vec::new()),
        }
    }

    /// The trace's requests that ended after `after_ns` (and long enough
    /// ago for their calls to be read), with their call trees.
    pub fn trace_requests(
        &self,
        tap: &RequestTap,
        id: &str,
        after_ns: i64,
    ) -> Result<DebugRequests, DebugError> {
        self.poll();
        let trace = self
            .lock()
            .traces
            .iter()
            .find(|t| t.id == id)
            .cloned()
            .ok_or_else(|| DebugError::NotFound(format!("no trace '{id}'")))?;
        let (mut reqs, active) = tap
            .read(id, after_ns)
            .ok_or_else(|| DebugError::NotFound(format!("trace '{id}' is over and forgotten")))?;
        let settled = coral_proto::now_ms() * 1_000_000 - SETTLE_NS;
        reqs.retain(|r| r.end_wall_ns <= settled);
        reqs.sort_by_key(|r| r.start_wall_ns);
        let calls = match &trace.session {
            Some(s) => self.session_calls(&s.id),
            None => Vec::new(),
        };
        let anchor = trace
            .session
            .as_ref()
            .and_then(|s| s.probes.first())
            .map(|p| p.function.clone())
            .unwrap_or_default();
        let requests = trees(&reqs, &calls, &anchor);
        Ok(DebugRequests {
            trace,
            requests,
            active,
        })
    }
}

fn end_ns(c: &DebugCall) -> Option<i64> {
    Some(c.start_unix_ns + c.duration_ns? as i64)
}

/// Each request with the call tree of the anchor call that served it: of
/// the anchor calls inside a request, the one whose start and end are
/// closest to the request's (another connection's shorter request can sit
/// inside it too); pairs are taken best first, each call at most once.
pub fn trees(reqs: &[TappedRequest], calls: &[DebugCall], anchor: &str) -> Vec<DebugRequest> {
    let mut anchors: Vec<&DebugCall> = calls
        .iter()
        .filter(|c| c.function == anchor && c.duration_ns.is_some())
        .collect();
    anchors.sort_by_key(|c| c.start_unix_ns);
    let mut pairs: Vec<(i64, usize, usize)> = Vec::new();
    for (ri, r) in reqs.iter().enumerate() {
        let from = anchors.partition_point(|a| a.start_unix_ns < r.start_wall_ns - SLACK_NS);
        for (ai, a) in anchors.iter().enumerate().skip(from) {
            if a.start_unix_ns > r.end_wall_ns {
                break;
            }
            if let Some(e) = end_ns(a)
                && e <= r.end_wall_ns + SLACK_NS
            {
                let score = (a.start_unix_ns - r.start_wall_ns).abs() + (r.end_wall_ns - e).abs();
                pairs.push((score, ri, ai));
            }
        }
    }
    pairs.sort_unstable();
    let mut served: Vec<Option<&DebugCall>> = vec![None; reqs.len()];
    let mut used = vec![false; anchors.len()];
    for (_, ri, ai) in pairs {
        if served[ri].is_none() && !used[ai] {
            served[ri] = Some(anchors[ai]);
            used[ai] = true;
        }
    }
    reqs.iter()
        .zip(served)
        .map(|(r, served)| {
            let mut tree = Vec::new();
            if let Some(a) = served {
                let a_end = end_ns(a).unwrap_or(a.start_unix_ns);
                let mut inside: Vec<&DebugCall> = calls
                    .iter()
                    .filter(|c| {
                        c.goroutine == a.goroutine
                            && c.start_unix_ns >= a.start_unix_ns
                            && end_ns(c).unwrap_or(c.start_unix_ns) <= a_end
                    })
                    .collect();
                inside.sort_by_key(|c| (c.start_unix_ns, std::cmp::Reverse(c.duration_ns)));
                let mut open: Vec<i64> = Vec::new();
                for c in inside {
                    while open.last().is_some_and(|e| *e <= c.start_unix_ns) {
                        open.pop();
                    }
                    tree.push(DebugTreeCall {
                        function: c.function.clone(),
                        depth: open.len() as u32,
                        offset_ns: c.start_unix_ns - r.start_wall_ns,
                        duration_ns: c.duration_ns,
                    });
                    open.push(end_ns(c).unwrap_or(c.start_unix_ns));
                }
            }
            DebugRequest {
                method: r.method.clone(),
                target: r.target.clone(),
                status: r.status,
                start_unix_ns: r.start_wall_ns,
                duration_ns: (r.end_wall_ns - r.start_wall_ns).max(0) as u64,
                goroutine: served.map(|a| a.goroutine),
                calls: tree,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(seq: u64, f: &str, g: u64, start: i64, dur: i64) -> DebugCall {
        DebugCall {
            seq,
            session: "dbg-1".into(),
            function: f.into(),
            tid: 1,
            goroutine: g,
            start_unix_ns: start,
            duration_ns: Some(dur as u64),
            args: Vec::new(),
            results: Vec::new(),
            stack: Vec::new(),
        }
    }

    fn req(start: i64, end: i64) -> TappedRequest {
        TappedRequest {
            method: "GET".into(),
            target: "/api/x".into(),
            status: 200,
            start_wall_ns: start,
            end_wall_ns: end,
        }
    }

    #[test]
    fn each_request_gets_the_calls_of_the_goroutine_that_served_it() {
        // Issue 12: two overlapping requests on two goroutines; each tree
        // holds only its own goroutine's calls, nested by time.
        let ms = 1_000_000;
        let calls = vec![
            call(1, ANCHOR, 7, 10 * ms, 80 * ms),
            call(2, "main.handle", 7, 11 * ms, 78 * ms),
            call(3, "main.lookup", 7, 12 * ms, 70 * ms),
            call(4, ANCHOR, 9, 31 * ms, 10 * ms),
            call(5, "main.handle", 9, 32 * ms, 8 * ms),
            call(6, "main.lookup", 9, 33 * ms, 5 * ms),
        ];
        let t = trees(
            &[req(9 * ms, 91 * ms), req(30 * ms, 42 * ms)],
            &calls,
            ANCHOR,
        );
        assert_eq!(t[0].goroutine, Some(7));
        assert_eq!(t[1].goroutine, Some(9));
        let shape = |r: &DebugRequest| {
            r.calls
                .iter()
                .map(|c| (c.function.clone(), c.depth))
                .collect::<Vec<_>>()
        };
        let want = vec![
            (ANCHOR.to_string(), 0),
            ("main.handle".to_string(), 1),
            ("main.lookup".to_string(), 2),
        ];
        assert_eq!(shape(&t[0]), want);
        assert_eq!(shape(&t[1]), want);
        assert_eq!(t[1].calls[2].duration_ns, Some(5 * ms as u64));
        assert_eq!(t[0].calls[0].offset_ns, ms);
        // Issue 12: a short request on another connection inside a long
        // one, its anchor starting closer to the long one's start: each
        // still gets its own (start and end both count).
        let mut more = calls.clone();
        more.push(call(7, ANCHOR, 11, 9 * ms + 50_000, 3 * ms));
        let t = trees(
            &[
                req(9 * ms, 91 * ms),
                req(9 * ms + 40_000, 12 * ms + 100_000),
            ],
            &more,
            ANCHOR,
        );
        assert_eq!(t[0].goroutine, Some(7));
        assert_eq!(t[1].goroutine, Some(11));
        // A request no anchor fits has no tree.
        let none = trees(&[req(100 * ms, 101 * ms)], &calls, ANCHOR);
        assert!(none[0].calls.is_empty() && none[0].goroutine.is_none());
    }
}
