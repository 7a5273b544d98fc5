//! Individual requests for `coral debug trace` (issue 12): the capture
//! aggregates requests into RED rows and keeps none; while a trace runs on
//! a service and path, the requests that match are also copied here, with
//! their wall-clock start and end. Idle (no trace), offering a request
//! costs one atomic load.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Requests kept per trace (the oldest go first).
const MAX_KEPT: usize = 10_000;

/// One request as the capture saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct TappedRequest {
    pub method: String,
    pub target: String,
    pub status: u16,
    pub start_wall_ns: i64,
    pub end_wall_ns: i64,
}

/// A request the capture offers, borrowed: nothing is copied unless a
/// trace keeps it.
#[derive(Debug, Clone, Copy)]
pub struct Offered<'a> {
    pub service: &'a str,
    pub method: &'a str,
    pub target: &'a str,
    pub status: u16,
    pub start_wall_ns: i64,
    pub end_wall_ns: i64,
}

struct Tap {
    id: String,
    service: String,
    path: String,
    until: Instant,
    kept: VecDeque<TappedRequest>,
}

#[derive(Default)]
pub struct RequestTap {
    any: AtomicBool,
    taps: Mutex<Vec<Tap>>,
}

/// Whether `target` (path and query) is on `path` (a trailing `*` matches
/// a prefix).
pub fn on_path(target: &str, path: &str) -> bool {
    let p = target.split(['?', '#']).next().unwrap_or(target);
    match path.strip_suffix('*') {
        Some(prefix) => p.starts_with(prefix),
        None => p == path,
    }
}

impl RequestTap {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Tap>> {
        self.taps.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts keeping the requests of `service` on `path` until `until`.
    pub fn start(&self, id: &str, service: &str, path: &str, until: Instant) {
        let mut taps = self.lock();
        taps.retain(|t| t.until > Instant::now());
        taps.push(Tap {
            id: id.into(),
            service: service.into(),
            path: path.into(),
            until,
            kept: VecDeque::new(),
        });
        self.any.store(true, Ordering::Release);
    }

    /// Ends a trace now (its requests stay readable).
    pub fn stop(&self, id: &str) {
        let now = Instant::now();
        for t in self.lock().iter_mut().filter(|t| t.id == id) {
            t.until = t.until.min(now);
        }
    }

    /// The capture offers every request it paired.
    pub fn offer(&self, r: &Offered<'_>) {
        if !self.any.load(Ordering::Acquire) {
            return;
        }
        let now = Instant::now();
        let mut taps = self.lock();
        for t in taps.iter_mut() {
            if t.until > now && t.service == r.service && on_path(r.target, &t.path) {
                if t.kept.len() >= MAX_KEPT {
                    t.kept.pop_front();
                }
                t.kept.push_back(TappedRequest {
                    method: r.method.into(),
                    target: r.target.into(),
                    status: r.status,
                    start_wall_ns: r.start_wall_ns,
                    end_wall_ns: r.end_wall_ns,
                });
            }
        }
    }

    /// The requests of trace `id` that ended after `after_ns`, and whether
    /// the trace still runs; `None` for an unknown trace.
    pub fn read(&self, id: &str, after_ns: i64) -> Option<(Vec<TappedRequest>, bool)> {
        let taps = self.lock();
        let t = taps.iter().find(|t| t.id == id)?;
        Some((
            t.kept
                .iter()
                .filter(|r| r.end_wall_ns > after_ns)
                .cloned()
                .collect(),
            t.until > Instant::now(),
        ))
    }

    /// Forgets traces that ended more than `keep` ago.
    pub fn trim(&self, keep: std::time::Duration) {
        let now = Instant::now();
        let mut taps = self.lock();
        taps.retain(|t| t.until + keep > now);
        self.any
            .store(taps.iter().any(|t| t.until > now), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_requests_of_the_traced_service_and_path() {
        let tap = RequestTap::default();
        let offer = |service, method, target, status, start_wall_ns, end_wall_ns| {
            tap.offer(&Offered {
                service,
                method,
                target,
                status,
                start_wall_ns,
                end_wall_ns,
            })
        };
        offer("api", "GET", "/x", 200, 1, 2);
        let until = Instant::now() + std::time::Duration::from_secs(60);
        tap.start("t1", "api", "/api/checkout", until);
        offer("api", "GET", "/api/checkout?id=3", 200, 10, 20);
        offer("api", "GET", "/api/checkout/3", 200, 10, 20);
        offer("web", "GET", "/api/checkout", 200, 10, 20);
        offer("api", "POST", "/api/checkout", 500, 30, 40);
        let (got, active) = tap.read("t1", 0).unwrap();
        assert!(active);
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].status, 500);
        assert_eq!(tap.read("t1", 20).unwrap().0.len(), 1);
        assert!(on_path("/api/checkout/3", "/api/*"));
        tap.stop("t1");
        assert!(!tap.read("t1", 0).unwrap().1);
    }
}
