//! Turns decoded events (in timestamp order) into RED aggregates per
//! service, method, route and second, and connection-map edges.
//!
//! Each followed connection's protocol is told from the first bytes the
//! client sent: the HTTP/2 client preface ([`h2`]; also a server that
//! speaks first with a SETTINGS frame), a PostgreSQL startup or SSLRequest
//! message ([`pg`]), a RESP array of bulk strings ([`redis`]); for a
//! connection picked up mid-stream, a plausible HTTP/2 frame or PostgreSQL
//! message. Anything else is parsed as HTTP/1.x ([`http`]), which skips
//! what it cannot parse.
//!
//! A server-side connection is followed only if its local port is the port
//! of a connected service; the process that serves it is then known to be
//! that service, which names the source of its outgoing connections. Edges
//! are kept when either end is a connected service. When the client end of
//! a followed connection is an edge seen opening on this host (its address
//! is the accepted socket's peer), the requests parsed on the server side
//! are added to that edge, with their protocol.

use super::event::{ConnId, Dir, EdgeKind, Event};
use super::{h2, http, pg, redis};
use coral_proto::{EdgeRecord, RedRecord};
use coral_store::hist::Hist;
use rustc_hash::FxHashMap as HashMap;
use std::net::IpAddr;
use std::sync::Arc;

/// Most connections followed at once.
const MAX_CONNS: usize = 65_536;
/// Most distinct routes per service and flush; the rest become `{other}`.
const MAX_ROUTES: usize = 500;
/// Most processes remembered as services.
const MAX_PROCS: usize = 4_096;
/// Distinct error codes kept per row; the rest are counted as `other`.
const MAX_CODES: usize = 16;
/// A response of unknown length ends after this long without writes.
const OPEN_IDLE_NS: u64 = 2_000_000_000;

#[derive(Debug, Default)]
struct RedAgg {
    count: u64,
    errors: u64,
    client_errors: u64,
    bytes_in: u64,
    bytes_out: u64,
    sum_us: u64,
    max_us: u64,
    hist: Hist,
    /// Failed requests by the protocol's own code (at most `MAX_CODES`).
    codes: std::collections::BTreeMap<String, u64>,
}

#[derive(Debug, Default)]
struct EdgeAgg {
    connections: u64,
    failures: u64,
    bytes_sent: u64,
    bytes_received: u64,
    rtt_sum_us: u64,
    rtt_count: u64,
    rtt_max_us: u64,
    protocol: &'static str,
    requests: u64,
    request_errors: u64,
    request_sum_us: u64,
    request_max_us: u64,
}

/// An edge without its second: source, its pid, peer address, service.
type EdgeId = (String, u32, String, Option<String>);

/// Second, service, method, route, and PostgreSQL's user and database.
type RedKey = (i64, Arc<str>, String, String, Option<Arc<pg::DbId>>);
/// Second and edge.
type EdgeKey = (i64, Arc<EdgeId>);

/// A [`RedKey`] borrowed from a request, to find its row without building
/// the key: it hashes as the key does (a tuple hashes its fields in order,
/// and `&T`, `Arc<T>` and `String`/`str` hash as what they point to).
#[derive(Hash)]
struct RedRef<'a>(i64, &'a str, &'a str, &'a str, Option<&'a pg::DbId>);

impl hashbrown::Equivalent<RedKey> for RedRef<'_> {
    fn equivalent(&self, k: &RedKey) -> bool {
        self.0 == k.0
            && self.1 == &*k.1
            && self.2 == k.2
            && self.3 == k.3
            && self.4 == k.4.as_deref()
    }
}

struct Followed {
    service: Arc<str>,
    /// The client's edge, when its connect was seen on this host.
    edge: Option<Arc<EdgeId>>,
    /// Open before it was followed (picked up at a read or write).
    existing: bool,
    /// `None` until the first bytes tell the protocol.
    proto: Option<Proto>,
}

enum Proto {
    Http1(http::Conn),
    Http2(Box<h2::Conn>),
    Postgres(Box<pg::Conn>),
    Redis(Box<redis::Conn>),
}

/// A PostgreSQL frontend message an established session sends first.
fn pg_message(data: &[u8]) -> bool {
    data.len() >= 5
        && matches!(
            data[0],
            b'Q' | b'P' | b'B' | b'E' | b'S' | b'D' | b'C' | b'H' | b'X' | b'F'
        )
        && (4..=1 << 20).contains(&u32::from_be_bytes([data[1], data[2], data[3], data[4]]))
}

impl Proto {
    /// The protocol's name on edges (`grpc` is decided per request).
    fn name(&self) -> &'static str {
        match self {
            Proto::Http1(_) => "http",
            Proto::Http2(_) => "http2",
            Proto::Postgres(_) => "postgres",
            Proto::Redis(_) => "redis",
        }
    }

    /// The protocol of a connection, from the first bytes seen on it.
    fn detect(existing: bool, dir: Dir, data: &[u8]) -> Option<Proto> {
        let n = data.len().min(h2::PREFACE.len());
        let h2 = |from_start| Some(Proto::Http2(Box::new(h2::Conn::new(from_start))));
        match dir {
            Dir::In if n >= 3 && data[..n] == h2::PREFACE[..n] => h2(true),
            // Also for an "existing" connection: one open before `coral
            // connect` whose client has not sent its startup yet.
            Dir::In if pg::looks_like(data) => Some(Proto::Postgres(Box::new(pg::Conn::new(true)))),
            Dir::In if redis::looks_like(data) => Some(Proto::Redis(Box::default())),
            Dir::In if existing && h2::plausible_frame(data) => h2(false),
            Dir::In if existing && pg_message(data) => {
                Some(Proto::Postgres(Box::new(pg::Conn::new(false))))
            }
            // An HTTP/2 server may send its SETTINGS first.
            Dir::Out if h2::plausible_frame(data) => h2(!existing),
            // Wait for the client's first bytes.
            Dir::Out => None,
            Dir::In => Some(Proto::Http1(http::Conn::default())),
        }
    }
}

pub struct Tracker {
    agent_id: String,
    /// Listening port → connected service.
    ports: HashMap<u16, Arc<str>>,
    /// Process → the service it serves (learned from accept records).
    procs: HashMap<u32, Arc<str>>,
    conns: HashMap<ConnId, Followed>,
    red: hashbrown::HashMap<RedKey, RedAgg, rustc_hash::FxBuildHasher>,
    routes: HashMap<Arc<str>, usize>,
    edges: HashMap<EdgeKey, EdgeAgg>,
    /// Client sockets of open edges, by local address.
    clients: HashMap<(IpAddr, u16), Arc<EdgeId>>,
    /// Wall clock minus the BPF clock (CLOCK_MONOTONIC), ns.
    wall_offset_ns: i64,
    exchanges: Vec<http::Exchange>,
    /// Requests paired since start.
    pub requests: u64,
    /// Where `coral debug trace` reads individual requests (issue 12).
    pub tap: Option<Arc<super::tap::RequestTap>>,
}

/// The start of the second holding `wall_ns`, in ms: rows are per second,
/// so any window the read layer is asked about is resolved to the second.
fn second_ms(wall_ns: i64) -> i64 {
    let ms = wall_ns.div_euclid(1_000_000);
    ms - ms.rem_euclid(1_000)
}

fn addr_string(a: Option<(IpAddr, u16)>) -> String {
    match a {
        Some((IpAddr::V6(ip), port)) => format!("[{ip}]:{port}"),
        Some((ip, port)) => format!("{ip}:{port}"),
        None => "?".into(),
    }
}

impl Tracker {
    pub fn new(agent_id: &str, wall_offset_ns: i64) -> Self {
        Tracker {
            agent_id: agent_id.to_string(),
            ports: HashMap::default(),
            procs: HashMap::default(),
            conns: HashMap::default(),
            red: hashbrown::HashMap::default(),
            routes: HashMap::default(),
            edges: HashMap::default(),
            clients: HashMap::default(),
            wall_offset_ns,
            exchanges: Vec::new(),
            requests: 0,
            tap: None,
        }
    }

    pub fn set_wall_offset(&mut self, ns: i64) {
        self.wall_offset_ns = ns;
    }

    /// The connected services, as (port, name).
    pub fn set_services(&mut self, services: impl IntoIterator<Item = (u16, String)>) {
        self.ports = services
            .into_iter()
            .map(|(port, name)| (port, Arc::from(name)))
            .collect();
    }

    pub fn handle(&mut self, ev: &Event) {
        match *ev {
            Event::Accept {
                conn,
                lport,
                existing,
                peer,
                ..
            } => {
                let Some(service) = self.ports.get(&lport).cloned() else {
                    return;
                };
                if self.procs.len() < MAX_PROCS || self.procs.contains_key(&conn.tgid) {
                    self.procs.insert(conn.tgid, service.clone());
                }
                if self.conns.len() < MAX_CONNS {
                    self.conns.insert(
                        conn,
                        Followed {
                            service,
                            edge: peer.and_then(|p| self.clients.get(&p).cloned()),
                            existing,
                            proto: None,
                        },
                    );
                }
            }
            Event::Data {
                conn,
                dir,
                len,
                ref data,
                ref more,
                ts_ns,
                ..
            } => {
                let Some(f) = self.conns.get_mut(&conn) else {
                    return;
                };
                if f.proto.is_none() {
                    f.proto = Proto::detect(f.existing, dir, data);
                }
                let mut out = std::mem::take(&mut self.exchanges);
                match (&mut f.proto, dir) {
                    (Some(Proto::Http1(c)), Dir::In) => c.on_read(ts_ns, len, data, &mut out),
                    (Some(Proto::Http1(c)), Dir::Out) => c.on_write(ts_ns, len, data, &mut out),
                    (Some(Proto::Http2(c)), Dir::In) => c.on_read(ts_ns, len, data, more, &mut out),
                    (Some(Proto::Http2(c)), Dir::Out) => {
                        c.on_write(ts_ns, len, data, more, &mut out)
                    }
                    (Some(Proto::Postgres(c)), Dir::In) => c.on_read(ts_ns, len, data),
                    (Some(Proto::Postgres(c)), Dir::Out) => c.on_write(ts_ns, len, data, &mut out),
                    (Some(Proto::Redis(c)), Dir::In) => c.on_read(ts_ns, len, data),
                    (Some(Proto::Redis(c)), Dir::Out) => c.on_write(ts_ns, len, data, &mut out),
                    (None, _) => {}
                }
                let (service, edge) = (f.service.clone(), f.edge.clone());
                let proto = f.proto.as_ref().map_or("", Proto::name);
                self.record(&service, edge.as_ref(), proto, &mut out);
                self.exchanges = out;
            }
            Event::Close { conn, .. } => {
                if let Some(mut f) = self.conns.remove(&conn) {
                    let mut out = std::mem::take(&mut self.exchanges);
                    match &mut f.proto {
                        Some(Proto::Http1(c)) => c.on_close(&mut out),
                        Some(Proto::Http2(c)) => c.on_close(),
                        Some(Proto::Postgres(_) | Proto::Redis(_)) | None => {}
                    }
                    let proto = f.proto.as_ref().map_or("", Proto::name);
                    self.record(&f.service, f.edge.as_ref(), proto, &mut out);
                    self.exchanges = out;
                }
            }
            Event::Edge {
                kind,
                tgid,
                ref comm,
                src: client,
                dst,
                srtt_us,
                bytes_acked,
                bytes_received,
                ts_ns,
            } => {
                let dst_service =
                    dst.and_then(|(_, port)| Some(self.ports.get(&port)?.to_string()));
                let src = match self.procs.get(&tgid) {
                    Some(s) => s.to_string(),
                    None if dst_service.is_some() => comm.clone(),
                    None => return,
                };
                if let Some(c) = client {
                    if kind == EdgeKind::Open && dst_service.is_some() {
                        if self.clients.len() < MAX_CONNS {
                            let id = (src.clone(), tgid, addr_string(dst), dst_service.clone());
                            self.clients.insert(c, Arc::new(id));
                        }
                    } else if kind != EdgeKind::Open {
                        self.clients.remove(&c);
                    }
                }
                let key = (
                    second_ms(ts_ns as i64 + self.wall_offset_ns),
                    Arc::new((src, tgid, addr_string(dst), dst_service)),
                );
                let e = self.edges.entry(key).or_default();
                match kind {
                    EdgeKind::Open => e.connections += 1,
                    EdgeKind::Fail => e.failures += 1,
                    EdgeKind::Close => {
                        e.bytes_sent += bytes_acked;
                        e.bytes_received += bytes_received;
                        if srtt_us > 0 {
                            e.rtt_sum_us += u64::from(srtt_us);
                            e.rtt_count += 1;
                            e.rtt_max_us = e.rtt_max_us.max(u64::from(srtt_us));
                        }
                    }
                }
            }
        }
    }

    fn record(
        &mut self,
        service: &Arc<str>,
        edge: Option<&Arc<EdgeId>>,
        proto: &'static str,
        out: &mut Vec<http::Exchange>,
    ) {
        for x in out.drain(..) {
            self.requests += 1;
            if let Some(t) = &self.tap {
                t.offer(&super::tap::Offered {
                    service,
                    method: &x.method,
                    target: &x.target,
                    status: x.status,
                    start_wall_ns: x.start_ns as i64 + self.wall_offset_ns,
                    end_wall_ns: x.end_ns as i64 + self.wall_offset_ns,
                });
            }
            let second = second_ms(x.start_ns as i64 + self.wall_offset_ns);
            let us = x.duration_us();
            if let Some(edge) = edge {
                let e = self.edges.entry((second, edge.clone())).or_default();
                e.protocol = if x.method == "GRPC" { "grpc" } else { proto };
                e.requests += 1;
                e.request_errors += u64::from(x.status >= 500);
                e.request_sum_us += us;
                e.request_max_us = e.request_max_us.max(us);
            }
            // HTTP targets are normalised here; the other protocols'
            // parsers give their route (gRPC method, normalised SQL, Redis
            // command) ready.
            let route = match &*x.method {
                "GRPC" | "SQL" | "REDIS" | "?" => std::borrow::Cow::Borrowed(x.target.as_str()),
                _ => coral_store::route::normalised(&x.target),
            };
            // The row is found from borrowed parts; a key is built only
            // for a new row.
            let mut probe = RedRef(second, service, &x.method, &route, x.db.as_deref());
            if !self.red.contains_key(&probe) {
                let n = self.routes.entry(service.clone()).or_default();
                if *n >= MAX_ROUTES {
                    probe.3 = "{other}";
                } else {
                    *n += 1;
                }
                if !self.red.contains_key(&probe) {
                    let key = (
                        second,
                        service.clone(),
                        x.method.to_string(),
                        probe.3.to_string(),
                        x.db.clone(),
                    );
                    self.red.insert(key, RedAgg::default());
                }
            }
            let Some(a) = self.red.get_mut(&probe) else {
                continue;
            };
            a.count += 1;
            a.errors += u64::from((500..600).contains(&x.status));
            a.client_errors += u64::from((400..500).contains(&x.status));
            a.bytes_in += x.bytes_in;
            a.bytes_out += x.bytes_out;
            a.sum_us += us;
            a.max_us = a.max_us.max(us);
            a.hist.record(us);
            if let Some(code) = x.error_code {
                let code = if a.codes.len() < MAX_CODES || a.codes.contains_key(&code) {
                    code
                } else {
                    "other".into()
                };
                *a.codes.entry(code).or_default() += 1;
            }
        }
    }

    /// Ends responses of unknown length that went idle.
    pub fn expire(&mut self, now_ns: u64) {
        let mut out = std::mem::take(&mut self.exchanges);
        type Done = (Arc<str>, Option<Arc<EdgeId>>, Vec<http::Exchange>);
        let mut done: Vec<Done> = Vec::new();
        for f in self.conns.values_mut() {
            if let Some(Proto::Http1(c)) = &mut f.proto {
                c.expire(now_ns, OPEN_IDLE_NS, &mut out);
            }
            if !out.is_empty() {
                done.push((f.service.clone(), f.edge.clone(), std::mem::take(&mut out)));
            }
        }
        for (service, edge, mut xs) in done {
            self.record(&service, edge.as_ref(), "http", &mut xs);
        }
        self.exchanges = out;
    }

    /// Takes the aggregates gathered since the last call, as rows.
    pub fn drain(&mut self) -> (Vec<RedRecord>, Vec<EdgeRecord>) {
        self.routes.clear();
        let red = self
            .red
            .drain()
            .map(|((ts_ms, service, method, route, db), a)| RedRecord {
                agent_id: self.agent_id.clone(),
                seq: 0,
                ts_ms,
                service: service.to_string(),
                method,
                route,
                count: a.count,
                errors: a.errors,
                client_errors: a.client_errors,
                bytes_in: a.bytes_in,
                bytes_out: a.bytes_out,
                sum_us: a.sum_us,
                max_us: a.max_us,
                hist: a.hist.encode(),
                error_codes: a
                    .codes
                    .iter()
                    .map(|(c, n)| format!("{c}:{n}"))
                    .collect::<Vec<_>>()
                    .join(","),
                db_user: db.as_ref().map(|d| d.user.clone()).unwrap_or_default(),
                db_name: db.as_ref().map(|d| d.name.clone()).unwrap_or_default(),
            })
            .collect();
        let edges = self
            .edges
            .drain()
            .map(|((ts_ms, id), e)| {
                let (src, src_pid, dst_addr, dst_service) =
                    Arc::try_unwrap(id).unwrap_or_else(|id| (*id).clone());
                EdgeRecord {
                    agent_id: self.agent_id.clone(),
                    seq: 0,
                    ts_ms,
                    src,
                    src_pid,
                    dst_addr,
                    dst_service,
                    connections: e.connections,
                    failures: e.failures,
                    bytes_sent: e.bytes_sent,
                    bytes_received: e.bytes_received,
                    rtt_sum_us: e.rtt_sum_us,
                    rtt_count: e.rtt_count,
                    rtt_max_us: e.rtt_max_us,
                    protocol: e.protocol.to_string(),
                    requests: e.requests,
                    request_errors: e.request_errors,
                    request_sum_us: e.request_sum_us,
                    request_max_us: e.request_max_us,
                }
            })
            .collect();
        (red, edges)
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(fd: u32) -> ConnId {
        ConnId {
            tgid: 100,
            fd,
            start_ns: 1,
        }
    }

    fn data(fd: u32, dir: Dir, ts_ns: u64, s: &str) -> Event {
        Event::Data {
            conn: conn(fd),
            lport: 8080,
            dir,
            len: s.len() as u32,
            data: s.as_bytes().to_vec(),
            off: 0,
            more: Vec::new(),
            ts_ns,
        }
    }

    fn accept(fd: u32, lport: u16) -> Event {
        Event::Accept {
            conn: conn(fd),
            lport,
            existing: false,
            peer: None,
            comm: "api".into(),
            ts_ns: 0,
        }
    }

    #[test]
    fn aggregates_per_route_and_second_with_errors_and_latency() {
        let mut t = Tracker::new("a1", 0);
        t.set_services([(8080, "api".to_string())]);
        t.handle(&accept(5, 8080));
        t.handle(&accept(6, 9999)); // not a connected service: ignored
        let ok = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        let err = "HTTP/1.1 503 No\r\nContent-Length: 0\r\n\r\n";
        for i in 0..10u64 {
            let ts = i * 1_000_000;
            t.handle(&data(
                5,
                Dir::In,
                ts,
                &format!("GET /api/orders/{i} HTTP/1.1\r\n\r\n"),
            ));
            t.handle(&data(6, Dir::In, ts, "GET /x HTTP/1.1\r\n\r\n"));
            let resp = if i < 2 { err } else { ok };
            t.handle(&data(5, Dir::Out, ts + 10_000_000, resp));
        }
        t.handle(&Event::Close {
            conn: conn(5),
            ts_ns: 0,
        });
        let (red, edges) = t.drain();
        assert!(edges.is_empty());
        assert_eq!(red.len(), 1);
        let r = &red[0];
        assert_eq!(
            (r.service.as_str(), r.method.as_str(), r.route.as_str()),
            ("api", "GET", "/api/orders/{id}")
        );
        assert_eq!((r.count, r.errors, r.client_errors), (10, 2, 0));
        assert_eq!(r.max_us, 10_000);
        assert_eq!(
            Hist::decode(&r.hist).quantile(0.5),
            coral_store::hist::value(coral_store::hist::bucket(10_000))
        );
        assert_eq!(t.connections(), 0);
        assert_eq!(t.drain().0.len(), 0);
    }

    #[test]
    fn edges_name_the_service_process_and_the_peer_service() {
        let mut t = Tracker::new("a1", 0);
        t.set_services([(8080, "api".to_string()), (9090, "db".to_string())]);
        t.handle(&accept(5, 8080)); // pid 100 is "api"
        let edge = |kind, tgid: u32, port: u16, bytes: u64| Event::Edge {
            kind,
            tgid,
            comm: "proc".into(),
            src: None,
            dst: Some(("127.0.0.1".parse().unwrap(), port)),
            srtt_us: 50,
            bytes_acked: bytes,
            bytes_received: bytes * 2,
            ts_ns: 5,
        };
        t.handle(&edge(EdgeKind::Open, 100, 9090, 0));
        t.handle(&edge(EdgeKind::Close, 100, 9090, 10));
        t.handle(&edge(EdgeKind::Fail, 100, 9091, 0));
        t.handle(&edge(EdgeKind::Open, 7, 8080, 0)); // a client of api
        t.handle(&edge(EdgeKind::Open, 8, 5555, 0)); // unrelated: dropped
        let (_, mut edges) = t.drain();
        edges.sort_by(|a, b| a.dst_addr.cmp(&b.dst_addr));
        let got: Vec<_> = edges
            .iter()
            .map(|e| {
                (
                    e.src.as_str(),
                    e.dst_addr.as_str(),
                    e.dst_service.as_deref(),
                    e.connections,
                    e.failures,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("proc", "127.0.0.1:8080", Some("api"), 1, 0),
                ("api", "127.0.0.1:9090", Some("db"), 1, 0),
                ("api", "127.0.0.1:9091", None, 0, 1),
            ]
        );
        assert_eq!(edges[1].bytes_sent, 10);
        assert_eq!(edges[1].bytes_received, 20);
        assert_eq!(edges[1].rtt_max_us, 50);
    }

    #[test]
    fn routes_beyond_the_limit_share_one_row_and_requests_count_on_their_edge() {
        let mut t = Tracker::new("a1", 0);
        t.set_services([(8080, "api".to_string())]);
        // The client's connect, seen on this host, then its accepted end.
        let client = ("127.0.0.1".parse().unwrap(), 40000);
        t.handle(&Event::Edge {
            kind: EdgeKind::Open,
            tgid: 7,
            comm: "curl".into(),
            src: Some(client),
            dst: Some(("127.0.0.1".parse().unwrap(), 8080)),
            srtt_us: 0,
            bytes_acked: 0,
            bytes_received: 0,
            ts_ns: 0,
        });
        t.handle(&Event::Accept {
            conn: conn(5),
            lport: 8080,
            existing: false,
            peer: Some(client),
            comm: "api".into(),
            ts_ns: 0,
        });
        let ok = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        let n = MAX_ROUTES as u64 + 100;
        for i in 0..n {
            t.handle(&data(
                5,
                Dir::In,
                i,
                &format!("GET /r{i}x HTTP/1.1\r\n\r\n"),
            ));
            t.handle(&data(5, Dir::Out, i + 1000, ok));
        }
        // Again, all within the same second: no new row.
        t.handle(&data(5, Dir::In, n, "GET /r1x HTTP/1.1\r\n\r\n"));
        t.handle(&data(5, Dir::Out, n + 1000, ok));
        let (red, edges) = t.drain();
        assert_eq!(red.len(), MAX_ROUTES + 1);
        let count = |route: &str| red.iter().find(|r| r.route == route).map(|r| r.count);
        assert_eq!(count("{other}"), Some(100));
        assert_eq!(count("/r1x"), Some(2));
        assert_eq!(red.iter().map(|r| r.count).sum::<u64>(), n + 1);
        let e = edges
            .iter()
            .find(|e| e.src == "curl")
            .expect("the client's edge");
        assert_eq!(
            (e.connections, e.requests, e.protocol.as_str()),
            (1, n + 1, "http")
        );
    }

    #[test]
    fn seconds_round_down() {
        assert_eq!(second_ms(0), 0);
        assert_eq!(second_ms(61_500_000_000), 61_000);
        assert_eq!(second_ms(119_999_999_999), 119_000);
    }
}
