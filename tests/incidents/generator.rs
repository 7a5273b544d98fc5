//! The incident generator (issue 15): production incident classes as code,
//! randomized per seed — service, pod, node, host and table names, the
//! runtime (and so the OpenTelemetry semantic conventions and exception
//! names) of each service, rates, timings and noise — never hand-edited
//! data files.
//!
//! One model of a system (a gateway in front of a shop of services, two
//! databases, a cache, an external API, a queue and its worker) produces
//! traces; a class changes the traces of its incident window (and adds the
//! logs and metrics it would produce). The same traces give both forms of a
//! case: OTLP (spans, logs, metrics as an application sends them) and
//! passive (what the agent's eBPF capture would record: HTTP RED per
//! service, method, route and second from the server side, and connection
//! edges with failed connects and RTT from the client side).
//!
//! Every case also carries red herrings: a harmless rollout of an
//! unrelated service, an endpoint with pre-existing errors, a resolved
//! error blip in the baseline and a cron job that runs in both windows.

#![allow(dead_code)]

use coral_proto::{EdgeRecord, RedRecord};
use coral_store::hist::Hist;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// SplitMix64: a small deterministic generator (no dependency needed).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.f64()
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    pub fn chance(&mut self, p: f64) -> bool {
        self.f64() < p
    }
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
    pub fn hex(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| b"0123456789abcdef"[self.below(16)] as char)
            .collect()
    }
    pub fn alnum(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| b"bcdfghjklmnpqrstvwxz2456789"[self.below(27)] as char)
            .collect()
    }
    /// A duration around `mean` with a long-ish tail.
    pub fn jitter(&mut self, mean: f64) -> f64 {
        let u = self.f64();
        mean * (0.6 + 0.8 * u + if self.chance(0.05) { 1.5 } else { 0.0 })
    }
    /// Distinct picks.
    pub fn sample<T: Clone>(&mut self, v: &[T], n: usize) -> Vec<T> {
        let mut idx: Vec<usize> = (0..v.len()).collect();
        for i in (1..idx.len()).rev() {
            let j = self.below(i + 1);
            idx.swap(i, j);
        }
        idx.into_iter().take(n).map(|i| v[i].clone()).collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    Otlp,
    Passive,
}

impl Form {
    pub fn as_str(self) -> &'static str {
        match self {
            Form::Otlp => "otlp",
            Form::Passive => "passive",
        }
    }
}

/// What a correct diagnosis names.
#[derive(Debug, Clone)]
pub struct Truth {
    /// The root-cause entity (service, instance, node, database, external
    /// host, job); any one of these at rank 1 is right.
    pub entities: Vec<String>,
    pub kind: &'static str,
    /// The identifying detail of the mechanism: each must appear in the
    /// answer (case-insensitive).
    pub details: Vec<String>,
}

/// The runtime a service is written in: its semantic conventions and the
/// names its exceptions carry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Lang {
    Java,
    Python,
    Go,
    Node,
}

impl Lang {
    fn sdk(self) -> &'static str {
        match self {
            Lang::Java => "java",
            Lang::Python => "python",
            Lang::Go => "go",
            Lang::Node => "nodejs",
        }
    }
    /// Old (http.method, db.statement, net.peer.name) or new (stable)
    /// semantic conventions.
    fn new_semconv(self) -> bool {
        matches!(self, Lang::Java | Lang::Go)
    }
    fn bug(self) -> (&'static str, &'static str) {
        match self {
            Lang::Java => (
                "java.lang.NullPointerException",
                "Cannot invoke \"Discount.rate()\" because \"d\" is null",
            ),
            Lang::Python => ("KeyError", "'shipping_zone'"),
            Lang::Go => (
                "*errors.errorString",
                "invalid memory address or nil pointer dereference",
            ),
            Lang::Node => (
                "TypeError",
                "Cannot read properties of undefined (reading 'sku')",
            ),
        }
    }
    fn refused(self, addr: &str) -> (String, String) {
        match self {
            Lang::Java => (
                "java.net.ConnectException".into(),
                "Connection refused".into(),
            ),
            Lang::Python => (
                "ConnectionRefusedError".into(),
                "[Errno 111] Connection refused".into(),
            ),
            Lang::Go => (
                "*net.OpError".into(),
                format!("dial tcp {addr}: connect: connection refused"),
            ),
            Lang::Node => ("Error".into(), format!("connect ECONNREFUSED {addr}")),
        }
    }
    fn timeout(self) -> (&'static str, &'static str) {
        match self {
            Lang::Java => ("java.net.SocketTimeoutException", "Read timed out"),
            Lang::Python => ("TimeoutError", "timed out"),
            Lang::Go => ("context.deadlineExceededError", "context deadline exceeded"),
            Lang::Node => ("TimeoutError", "The operation was aborted due to timeout"),
        }
    }
    fn dns(self, host: &str) -> (String, String) {
        match self {
            Lang::Java => ("java.net.UnknownHostException".into(), host.into()),
            Lang::Python => (
                "socket.gaierror".into(),
                format!("[Errno -2] Name or service not known: '{host}'"),
            ),
            Lang::Go => (
                "*net.DNSError".into(),
                format!("lookup {host}: no such host"),
            ),
            Lang::Node => ("Error".into(), format!("getaddrinfo ENOTFOUND {host}")),
        }
    }
    fn fds(self) -> (&'static str, &'static str) {
        match self {
            Lang::Java => ("java.io.IOException", "Too many open files"),
            Lang::Python => ("OSError", "[Errno 24] Too many open files"),
            Lang::Go => ("*net.OpError", "accept4: too many open files"),
            Lang::Node => ("Error", "EMFILE: too many open files"),
        }
    }
    fn disk(self) -> (&'static str, &'static str) {
        match self {
            Lang::Java => ("java.io.IOException", "No space left on device"),
            Lang::Python => ("OSError", "[Errno 28] No space left on device"),
            Lang::Go => (
                "*fs.PathError",
                "write /var/lib/app/spool: no space left on device",
            ),
            Lang::Node => ("Error", "ENOSPC: no space left on device, write"),
        }
    }
    fn memory_metric(self) -> &'static str {
        match self {
            Lang::Java => "jvm.memory.used",
            Lang::Python => "process.runtime.cpython.memory",
            Lang::Go => "process.runtime.go.mem.heap_alloc",
            Lang::Node => "nodejs.memory.heap.used",
        }
    }
    fn cpu_metric(self) -> &'static str {
        match self {
            Lang::Java => "jvm.cpu.recent_utilization",
            Lang::Python => "process.runtime.cpython.cpu.utilization",
            Lang::Go => "process.cpu.utilization",
            Lang::Node => "process.cpu.utilization",
        }
    }
    fn pool_span(self) -> &'static str {
        match self {
            Lang::Java => "HikariPool.getConnection",
            Lang::Python => "sqlalchemy.pool.checkout",
            Lang::Go => "sql.conn.acquire",
            Lang::Node => "pg-pool.connect",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Pod {
    pub name: String,
    pub node: String,
    pub version: String,
    pub pid: u32,
    pub ip: String,
}

#[derive(Debug, Clone)]
pub struct Svc {
    pub name: String,
    pub lang: Lang,
    pub pods: Vec<Pod>,
    pub port: u16,
    /// Speaks HTTP (the eBPF capture sees its requests).
    pub http: bool,
}

/// A peer that sends no telemetry: a database, a cache, an external API.
#[derive(Debug, Clone)]
pub struct Peer {
    pub name: String,
    pub host: String,
    pub addr: String,
}

/// The roles of the model's services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Gw,
    Orders,
    Checkout,
    Payments,
    Inventory,
    Users,
    Search,
    Reviews,
    Worker,
}

const ROLES: [Role; 9] = [
    Role::Gw,
    Role::Orders,
    Role::Checkout,
    Role::Payments,
    Role::Inventory,
    Role::Users,
    Role::Search,
    Role::Reviews,
    Role::Worker,
];

pub struct World {
    pub svcs: Vec<Svc>,
    pub nodes: Vec<String>,
    pub db1: Peer,
    pub db2: Peer,
    pub cache: Peer,
    pub ext: Peer,
    pub queue: String,
    pub job: String,
    pub herring_job: String,
    pub t_orders: String,
    pub t_users: String,
    pub t_stock: String,
    pub t_audit: String,
    pub fn_orders: String,
    pub fn_search: String,
}

const SERVICE_WORDS: &[&str] = &[
    "orders",
    "cart",
    "checkout",
    "payments",
    "billing",
    "inventory",
    "catalog",
    "users",
    "accounts",
    "search",
    "shipping",
    "pricing",
    "reviews",
    "ledger",
    "notify",
    "profile",
    "wallet",
    "quotes",
    "fulfil",
    "returns",
    "loyalty",
    "coupons",
    "stock",
    "invoices",
];
const GW_WORDS: &[&str] = &["gateway", "edge", "frontend", "web", "bff", "storefront"];
const TABLE_WORDS: &[&str] = &[
    "order_lines",
    "customers",
    "stock_levels",
    "audit_log",
    "shipments",
    "payments_log",
    "line_items",
    "addresses",
    "carts_saved",
    "price_rules",
    "sessions_kv",
    "events_out",
];
const FN_WORDS: &[&str] = &[
    "compute_discounts",
    "render_summary",
    "score_candidates",
    "apply_tax_rules",
    "merge_variants",
    "rank_results",
    "build_index_view",
    "expand_bundles",
];
const EXT_WORDS: &[&str] = &[
    "stripe",
    "adyen",
    "paybright",
    "shipfast",
    "taxly",
    "geocodr",
];
const JOB_WORDS: &[&str] = &[
    "reindex",
    "nightly-export",
    "ledger-reconcile",
    "stock-sync",
    "purge-carts",
    "vacuum-report",
];

impl World {
    pub fn new(rng: &mut Rng) -> World {
        let names = rng.sample(SERVICE_WORDS, 8);
        let nodes: Vec<String> = (0..5)
            .map(|_| {
                format!(
                    "ip-10-{}-{}-{}",
                    rng.below(4),
                    rng.below(250) + 2,
                    rng.below(250) + 2
                )
            })
            .collect();
        let langs = [Lang::Java, Lang::Python, Lang::Go, Lang::Node];
        let mut svcs = Vec::new();
        for (i, role) in ROLES.iter().enumerate() {
            let name = match role {
                Role::Gw => rng.pick(GW_WORDS).to_string(),
                _ => names[i - 1].to_string(),
            };
            let version = format!("1.{}.{}", rng.below(30), rng.below(10));
            let rs = rng.alnum(5);
            let pods = (0..3)
                .map(|p| Pod {
                    name: format!("{name}-{rs}-{}", rng.alnum(5)),
                    node: nodes[(i + p) % nodes.len()].clone(),
                    version: version.clone(),
                    pid: 1000 + rng.below(60000) as u32,
                    ip: format!("10.1.{}.{}", i + 1, p + 10),
                })
                .collect();
            svcs.push(Svc {
                name,
                lang: *rng.pick(&langs),
                pods,
                port: 8080,
                http: *role != Role::Worker,
            });
        }
        let tables = rng.sample(TABLE_WORDS, 4);
        let fns = rng.sample(FN_WORDS, 2);
        let dbw = rng.sample(&["shop", "core", "main", "commerce", "sales", "app"], 2);
        let ext = rng.pick(EXT_WORDS).to_string();
        let jobs = rng.sample(JOB_WORDS, 2);
        World {
            svcs,
            nodes,
            db1: Peer {
                name: format!("{}db", dbw[0]),
                host: format!("pg-{}-{}", dbw[0], rng.alnum(3)),
                addr: format!("10.2.0.{}:5432", rng.below(200) + 10),
            },
            db2: Peer {
                name: format!("{}db", dbw[1]),
                host: format!("pg-{}-{}", dbw[1], rng.alnum(3)),
                addr: format!("10.2.1.{}:5432", rng.below(200) + 10),
            },
            cache: Peer {
                name: format!("redis-{}", rng.alnum(4)),
                host: format!("redis-{}", rng.alnum(4)),
                addr: format!("10.3.0.{}:6379", rng.below(200) + 10),
            },
            ext: Peer {
                name: format!("api.{ext}.com"),
                host: format!("api.{ext}.com"),
                addr: format!(
                    "52.{}.{}.{}:443",
                    rng.below(200),
                    rng.below(200),
                    rng.below(200)
                ),
            },
            queue: format!(
                "{}-events",
                rng.pick(&["order", "payment", "stock", "user"])
            ),
            job: jobs[0].to_string(),
            herring_job: jobs[1].to_string(),
            t_orders: tables[0].to_string(),
            t_users: tables[1].to_string(),
            t_stock: tables[2].to_string(),
            t_audit: tables[3].to_string(),
            fn_orders: fns[0].to_string(),
            fn_search: fns[1].to_string(),
        }
    }

    pub fn svc(&self, r: Role) -> &Svc {
        &self.svcs[ROLES.iter().position(|x| *x == r).unwrap()]
    }
    pub fn name(&self, r: Role) -> String {
        self.svc(r).name.clone()
    }
    fn stmt_orders(&self) -> String {
        format!(
            "SELECT id, status, total FROM {} WHERE customer_id = $1 ORDER BY created_at DESC",
            self.t_orders
        )
    }
    fn stmt_users(&self) -> String {
        format!("SELECT id, email, tier FROM {} WHERE id = $1", self.t_users)
    }
    fn stmt_stock(&self) -> String {
        format!(
            "UPDATE {} SET reserved = reserved + $1 WHERE sku = $2",
            self.t_stock
        )
    }
    fn stmt_audit(&self) -> String {
        format!(
            "INSERT INTO {} (kind, ref, at) VALUES ($1, $2, now())",
            self.t_audit
        )
    }
}

/// An error on a span: the HTTP status it answers with (server spans) or
/// got (client spans), and the exception it recorded.
#[derive(Debug, Clone, Default)]
pub struct Fail {
    pub status: Option<u16>,
    pub exception: Option<(String, String)>,
}

/// The connection an eBPF capture sees under a client span.
#[derive(Debug, Clone)]
pub struct Conn {
    pub addr: String,
    pub service: Option<String>,
    pub failed: bool,
    pub rtt_us: u64,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub service: String,
    pub pod: usize,
    pub name: String,
    /// OTLP span kind: 1 internal, 2 server, 3 client, 4 producer, 5 consumer.
    pub kind: i32,
    pub self_us: f64,
    pub attrs: Vec<(String, Value)>,
    pub fail: Option<Fail>,
    pub children: Vec<Node>,
    /// Server spans of HTTP services: method and path.
    pub http: Option<(String, String)>,
    pub conn: Option<Conn>,
    /// The peer this client span calls (`db1`, `ext`, a service...).
    pub peer: Option<String>,
    /// Spans whose error does not travel to the caller (handled).
    pub handled: bool,
    /// An ERROR record the service logs for this span (nothing on the
    /// span itself says why it failed).
    pub log: Option<String>,
}

/// A flattened span.
#[derive(Debug, Clone)]
pub struct SpanOut {
    pub trace: u128,
    pub id: u64,
    pub parent: Option<u64>,
    pub service: String,
    pub pod: Pod,
    pub lang: Lang,
    pub name: String,
    pub kind: i32,
    pub start_ago_us: i64,
    pub dur_us: i64,
    pub error: bool,
    pub attrs: Vec<(String, Value)>,
    pub exception: Option<(String, String)>,
    pub http: Option<(String, String, u16)>,
    pub conn: Option<Conn>,
    pub log: Option<String>,
}

pub struct LogOut {
    pub service: String,
    pub pod: Pod,
    pub ago_us: i64,
    pub severity: (i32, &'static str),
    pub body: String,
    pub trace: Option<u128>,
}

pub struct MetricOut {
    pub service: String,
    pub pod: Pod,
    pub name: String,
    pub unit: &'static str,
    pub ago_us: i64,
    pub value: f64,
}

pub struct Case {
    pub class: &'static str,
    pub form: Form,
    pub seed: u64,
    /// `None`: a no-fault case, the answer must be "no problem".
    pub truth: Option<Truth>,
    pub spans: Vec<SpanOut>,
    pub logs: Vec<LogOut>,
    pub metrics: Vec<MetricOut>,
}

/// The model's clock: the baseline hour and the incident window, µs ago.
pub const BASE_FROM: i64 = 62 * 60_000_000;
pub const BASE_TO: i64 = 5 * 60_000_000 + 30_000_000;
pub const INC_FROM: i64 = 4 * 60_000_000 + 20_000_000;
pub const INC_TO: i64 = 8_000_000;
/// Gateway requests per minute.
pub const RATE: f64 = 20.0;

/// The incident classes (issue 15's taxonomy).
pub const CLASSES: &[&str] = &[
    "cpu_saturation",
    "memory_leak_oom",
    "fd_exhaustion",
    "disk_full",
    "network_latency",
    "packet_loss",
    "connection_refused",
    "dns_failure",
    "exception_on_route",
    "slow_function_after_deploy",
    "n_plus_one",
    "deadlock",
    "bad_credentials",
    "rate_limited",
    "timeout_too_short",
    "slow_external_api",
    "cache_down",
    "missing_index",
    "lock_contention",
    "pool_exhaustion",
    "db_failover",
    "queue_consumer_lag",
    "bad_instance",
    "bad_node",
    "traffic_surge",
    "retry_storm",
    "thundering_herd",
    "bad_version",
    "partial_rollout",
    "batch_job_load",
];

/// No-fault variants per seed (each in both forms).
pub const NO_FAULT: &[&str] = &["no_fault_quiet", "no_fault_deploy", "no_fault_noisy"];

struct Gen<'a> {
    w: &'a World,
    rng: Rng,
    class: &'static str,
    spans: Vec<SpanOut>,
    logs: Vec<LogOut>,
    metrics: Vec<MetricOut>,
    next_id: u64,
    /// The pods of the harmless rollout (red herring), by service.
    rollout: Option<(Role, String)>,
}

fn kv(k: &str, v: impl Into<Value>) -> (String, Value) {
    (k.to_string(), v.into())
}

impl Gen<'_> {
    fn svc_node(&mut self, role: Role, name: &str, kind: i32, self_ms: f64) -> Node {
        let w = self.w;
        let s = w.svc(role);
        Node {
            service: s.name.clone(),
            pod: self.rng.below(s.pods.len()),
            name: name.to_string(),
            kind,
            self_us: self.rng.jitter(self_ms * 1000.0),
            attrs: Vec::new(),
            fail: None,
            children: Vec::new(),
            http: None,
            conn: None,
            peer: None,
            handled: false,
            log: None,
        }
    }

    /// A server span of `role` for `method path` (route template `route`).
    fn server(&mut self, role: Role, method: &str, route: &str, path: &str, self_ms: f64) -> Node {
        let w = self.w;
        let new = w.svc(role).lang.new_semconv();
        let mut n = self.svc_node(role, &format!("{method} {route}"), 2, self_ms);
        n.attrs.push(kv(
            if new {
                "http.request.method"
            } else {
                "http.method"
            },
            method,
        ));
        n.attrs.push(kv("http.route", route));
        n.attrs
            .push(kv(if new { "url.path" } else { "http.target" }, path));
        n.http = Some((method.into(), path.into()));
        n
    }

    /// A call from `from` to service `to` (client span, then its server span).
    fn call(&mut self, from: Role, to: Role, server: Node) -> Node {
        let w = self.w;
        let new = w.svc(from).lang.new_semconv();
        let to_svc = w.svc(to);
        let (method, path) = server.http.clone().unwrap_or_default();
        let mut c = self.svc_node(from, &method, 3, 0.2);
        c.name = method.clone();
        c.attrs.push(kv(
            if new {
                "server.address"
            } else {
                "net.peer.name"
            },
            to_svc.name.clone(),
        ));
        c.attrs.push(kv(
            if new {
                "http.request.method"
            } else {
                "http.method"
            },
            method,
        ));
        c.attrs.push(kv(
            if new { "url.full" } else { "http.url" },
            format!("http://{}:{}{}", to_svc.name, to_svc.port, path),
        ));
        let pod = &to_svc.pods[server.pod];
        c.conn = Some(Conn {
            addr: format!("{}:{}", pod.ip, to_svc.port),
            service: Some(to_svc.name.clone()),
            failed: false,
            rtt_us: 200 + self.rng.below(150) as u64,
        });
        c.peer = Some(to_svc.name.clone());
        c.children.push(server);
        c
    }

    fn db(&mut self, from: Role, which: u8, op: &str, stmt: String, ms: f64) -> Node {
        let w = self.w;
        let new = w.svc(from).lang.new_semconv();
        let p = if which == 1 { &w.db1 } else { &w.db2 };
        let table = stmt
            .split_whitespace()
            .skip_while(|w| !matches!(*w, "FROM" | "UPDATE" | "INTO"))
            .nth(1)
            .unwrap_or("t")
            .to_string();
        let mut n = self.svc_node(from, &format!("{op} {}.{table}", p.name), 3, ms);
        let (name, host, addr) = (p.name.clone(), p.host.clone(), p.addr.clone());
        n.attrs.push(kv(
            if new { "db.system.name" } else { "db.system" },
            "postgresql",
        ));
        n.attrs.push(kv(
            if new { "db.namespace" } else { "db.name" },
            name.clone(),
        ));
        n.attrs
            .push(kv(if new { "db.query.text" } else { "db.statement" }, stmt));
        n.attrs.push(kv(
            if new {
                "server.address"
            } else {
                "net.peer.name"
            },
            host,
        ));
        n.conn = Some(Conn {
            addr,
            service: None,
            failed: false,
            rtt_us: 250 + self.rng.below(150) as u64,
        });
        n.peer = Some(format!("db{which}"));
        n
    }

    fn cache_get(&mut self, from: Role) -> Node {
        let w = self.w;
        let new = w.svc(from).lang.new_semconv();
        let mut n = self.svc_node(from, "GET", 3, 0.4);
        n.attrs.push(kv(
            if new { "db.system.name" } else { "db.system" },
            "redis",
        ));
        n.attrs.push(kv(
            if new {
                "server.address"
            } else {
                "net.peer.name"
            },
            w.cache.host.clone(),
        ));
        n.attrs.push(kv(
            if new { "db.query.text" } else { "db.statement" },
            "GET session:?",
        ));
        n.conn = Some(Conn {
            addr: w.cache.addr.clone(),
            service: None,
            failed: false,
            rtt_us: 150 + self.rng.below(100) as u64,
        });
        n.peer = Some("cache".into());
        n
    }

    fn ext_call(&mut self, from: Role) -> Node {
        let w = self.w;
        let new = w.svc(from).lang.new_semconv();
        let mut n = self.svc_node(from, "POST", 3, 45.0);
        n.attrs.push(kv(
            if new {
                "server.address"
            } else {
                "net.peer.name"
            },
            w.ext.host.clone(),
        ));
        n.attrs.push(kv(
            if new {
                "http.request.method"
            } else {
                "http.method"
            },
            "POST",
        ));
        n.attrs.push(kv(
            if new { "url.full" } else { "http.url" },
            format!("https://{}/v1/charges", w.ext.host),
        ));
        n.attrs.push(kv(
            if new {
                "http.response.status_code"
            } else {
                "http.status_code"
            },
            200,
        ));
        n.conn = Some(Conn {
            addr: w.ext.addr.clone(),
            service: None,
            failed: false,
            rtt_us: 18_000 + self.rng.below(4000) as u64,
        });
        n.peer = Some("ext".into());
        n
    }

    fn internal(&mut self, role: Role, name: &str, ms: f64) -> Node {
        self.svc_node(role, name, 1, ms)
    }

    /// One gateway request: a route of the shop, with its calls.
    fn request(&mut self, only_search: bool) -> (Node, &'static str) {
        let w = self.w;
        let r = if only_search { 0.8 } else { self.rng.f64() };
        let id = 1000 + self.rng.below(90000);
        let (route, inner): (&'static str, Node) = if r < 0.32 {
            let o = w.name(Role::Orders);
            let mut s = self.server(
                Role::Orders,
                "GET",
                &format!("/{o}/{{id}}"),
                &format!("/{o}/{id}"),
                2.0,
            );
            s.children.push(self.cache_get(Role::Orders));
            let q = self.db(Role::Orders, 1, "SELECT", w.stmt_orders(), 3.0);
            s.children.push(q);
            let f = self.internal(Role::Orders, &w.fn_orders, 1.5);
            s.children.push(f);
            ("orders", self.call(Role::Gw, Role::Orders, s))
        } else if r < 0.50 {
            let mut s = self.server(Role::Checkout, "POST", "/checkout", "/checkout", 3.0);
            let mut pay = self.server(Role::Payments, "POST", "/charge", "/charge", 2.0);
            pay.children.push(self.ext_call(Role::Payments));
            s.children
                .push(self.call(Role::Checkout, Role::Payments, pay));
            let mut inv = self.server(Role::Inventory, "POST", "/reserve", "/reserve", 1.5);
            let q = self.db(Role::Inventory, 2, "UPDATE", w.stmt_stock(), 3.0);
            inv.children.push(q);
            s.children
                .push(self.call(Role::Checkout, Role::Inventory, inv));
            let mut p = self.svc_node(Role::Checkout, &format!("{} publish", w.queue), 4, 0.4);
            let new = w.svc(Role::Checkout).lang.new_semconv();
            p.attrs.push(kv(
                if new {
                    "messaging.destination.name"
                } else {
                    "messaging.destination"
                },
                w.queue.clone(),
            ));
            s.children.push(p);
            ("checkout", self.call(Role::Gw, Role::Checkout, s))
        } else if r < 0.74 {
            let u = w.name(Role::Users);
            let mut s = self.server(
                Role::Users,
                "GET",
                &format!("/{u}/{{id}}"),
                &format!("/{u}/{id}"),
                1.5,
            );
            let q = self.db(Role::Users, 1, "SELECT", w.stmt_users(), 2.0);
            s.children.push(q);
            ("users", self.call(Role::Gw, Role::Users, s))
        } else if r < 0.90 {
            let mut s = self.server(Role::Search, "GET", "/search", "/search", 2.0);
            let f = self.internal(Role::Search, &w.fn_search, 12.0);
            s.children.push(f);
            ("search", self.call(Role::Gw, Role::Search, s))
        } else {
            let rv = w.name(Role::Reviews);
            let mut s = self.server(
                Role::Reviews,
                "GET",
                &format!("/{rv}"),
                &format!("/{rv}"),
                2.0,
            );
            s.children.push(self.cache_get(Role::Reviews));
            ("reviews", self.call(Role::Gw, Role::Reviews, s))
        };
        let (m, p) = match route {
            "orders" => ("GET", format!("/api/{}/{id}", w.name(Role::Orders))),
            "checkout" => ("POST", "/api/checkout".to_string()),
            "users" => ("GET", format!("/api/{}/{id}", w.name(Role::Users))),
            "search" => ("GET", "/api/search".to_string()),
            _ => ("GET", format!("/api/{}", w.name(Role::Reviews))),
        };
        let tmpl = match route {
            "orders" => format!("/api/{}/{{id}}", w.name(Role::Orders)),
            "users" => format!("/api/{}/{{id}}", w.name(Role::Users)),
            _ => p.clone(),
        };
        let mut g = self.server(Role::Gw, m, &tmpl, &p, 0.8);
        g.children.push(inner);
        (g, route)
    }

    /// One message the worker consumes.
    fn consume(&mut self) -> Node {
        let w = self.w;
        let mut c = self.svc_node(Role::Worker, &format!("{} process", w.queue), 5, 6.0);
        let new = w.svc(Role::Worker).lang.new_semconv();
        c.attrs.push(kv(
            if new {
                "messaging.destination.name"
            } else {
                "messaging.destination"
            },
            w.queue.clone(),
        ));
        c.attrs.push(kv("messaging.system", "kafka"));
        let q = self.db(Role::Worker, 2, "INSERT", w.stmt_audit(), 2.0);
        c.children.push(q);
        c
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Flattens a tree starting `start_ago_us`; returns its duration,
    /// whether it failed and the HTTP status it answered with.
    fn emit(
        &mut self,
        trace: u128,
        parent: Option<u64>,
        n: &Node,
        start_ago_us: i64,
    ) -> (i64, bool, u16) {
        let id = self.id();
        let w = self.w;
        let svc = w
            .svcs
            .iter()
            .find(|s| s.name == n.service)
            .expect("a known service");
        let lang = svc.lang;
        let new = lang.new_semconv();
        let pod = svc.pods[n.pod].clone();
        let pod = match &self.rollout {
            Some((r, v)) if w.name(*r) == n.service && start_ago_us < INC_FROM => Pod {
                version: v.clone(),
                name: format!("{}-r", pod.name),
                ..pod
            },
            _ => pod,
        };
        let idx = self.spans.len();
        self.spans.push(SpanOut {
            trace,
            id,
            parent,
            service: n.service.clone(),
            pod,
            lang,
            name: n.name.clone(),
            kind: n.kind,
            start_ago_us,
            dur_us: 0,
            error: false,
            attrs: n.attrs.clone(),
            exception: n.fail.as_ref().and_then(|f| f.exception.clone()),
            http: None,
            conn: n.conn.clone(),
            log: n.log.clone(),
        });
        let mut t = start_ago_us - (n.self_us * 0.3) as i64;
        let mut child_err = false;
        let mut child_status = None;
        for c in &n.children {
            let (d, e, st) = self.emit(trace, Some(id), c, t);
            t -= d;
            if e && !c.handled {
                child_err = true;
                child_status.get_or_insert(st);
            }
        }
        let dur = ((start_ago_us - t) + (n.self_us * 0.7) as i64).max(20);
        let error = n.fail.is_some() || child_err;
        let own = n.fail.as_ref().and_then(|f| f.status);
        let status = match n.kind {
            2 => own.unwrap_or(if error { 500 } else { 200 }),
            3 => own.or(child_status).unwrap_or(200),
            _ => own.unwrap_or(200),
        };
        let s = &mut self.spans[idx];
        s.dur_us = dur;
        s.error = error;
        let has_url = s.attrs.iter().any(|(k, _)| k.contains("url"));
        if n.kind == 2 || (n.kind == 3 && has_url) {
            let key = if new {
                "http.response.status_code"
            } else {
                "http.status_code"
            };
            s.attrs.retain(|(k, _)| k != key);
            if !(n.kind == 3
                && n.fail.as_ref().is_some_and(|f| f.status.is_none())
                && child_status.is_none())
            {
                s.attrs.push(kv(key, status as i64));
            }
        }
        if let Some((m, p)) = &n.http {
            s.http = Some((m.clone(), p.clone(), status));
        }
        (dur, error, status)
    }
}

/// A cron job: three statements per run, every `every` µs from `from`
/// back to `to`.
struct CronJob<'a> {
    name: &'a str,
    from: i64,
    to: i64,
    every: i64,
    /// Each statement's duration.
    ms: f64,
    stmt: &'a str,
    /// Which database the statements go to.
    which: u8,
}

/// A cron job's runs: a root span and three statements each.
fn job_spans(g: &mut Gen<'_>, job: &CronJob<'_>) {
    let mut at = job.from;
    while at > job.to {
        let mut root = g.svc_node(Role::Worker, &format!("job {}", job.name), 1, 1.0);
        root.service = job.name.to_string();
        for _ in 0..3 {
            let mut q = g.db(
                Role::Worker,
                job.which,
                "UPDATE",
                job.stmt.to_string(),
                job.ms,
            );
            q.service = job.name.to_string();
            root.children.push(q);
        }
        let trace = ((g.rng.next_u64() as u128) << 64) | g.rng.next_u64() as u128;
        g.emit(trace, None, &root, at);
        at -= job.every;
    }
}

/// Ground truth: `truth!([entities], kind, [details])`.
macro_rules! truth {
    ([$($e:expr),*], $k:expr, [$($d:expr),*]) => {
        Some(Truth {
            entities: vec![$($e.to_string()),*],
            kind: $k,
            details: vec![$($d.to_string()),*],
        })
    };
}

/// Applies the class to one node tree of the incident window. `k` counts
/// the incident's requests (for classes that hit a share of them).
fn fault(g: &mut Gen<'_>, n: &mut Node, ctx: &FaultCtx) {
    let w = g.w;
    let name_of = |r: Role| w.name(r);
    let lang = w.svcs.iter().find(|s| s.name == n.service).unwrap().lang;
    let class = g.class;
    match class {
        "cpu_saturation" if n.service == name_of(ctx.role) && n.kind != 3 => {
            // Every span waits for a CPU: more own time, and run-queue
            // waits on each request.
            n.self_us *= 6.0;
            if n.kind == 2 {
                n.self_us += g.rng.jitter(60_000.0);
            }
        }
        "memory_leak_oom" if n.service == name_of(ctx.role) && n.kind == 2 => {
            // GC thrash before each kill, and requests that die with the pod.
            n.self_us = n.self_us * 3.0 + g.rng.jitter(50_000.0);
            if g.rng.chance(0.25) {
                n.fail = Some(Fail {
                    status: Some(503),
                    exception: None,
                });
            }
        }
        "disk_full" if n.service == name_of(ctx.role) && n.kind == 2 && g.rng.chance(0.45) => {
            // The handler catches the write error, logs it and answers
            // 500: the span says only that it failed (no exception event,
            // no status message); the log says why (issue 15: the log
            // message dimension).
            let (t, m) = lang.disk();
            let spool = format!(
                "/var/lib/{}/spool/seg-{:06}.tmp",
                n.service,
                g.rng.below(999_999)
            );
            n.fail = Some(Fail {
                status: Some(500),
                exception: None,
            });
            n.log = Some(format!(
                "request {} failed: could not write {spool}: {t}: {m}",
                g.rng.hex(16)
            ));
        }
        "fd_exhaustion" | "exception_on_route" | "bad_version"
            if n.service == name_of(ctx.role) && n.kind == 2 && g.rng.chance(0.45) =>
        {
            let (t, m) = match class {
                "fd_exhaustion" => lang.fds(),
                _ => lang.bug(),
            };
            n.fail = Some(Fail {
                status: Some(500),
                exception: Some((t.into(), m.into())),
            });
        }
        "network_latency" if n.peer.as_deref() == Some(name_of(ctx.role).as_str()) => {
            n.self_us += 180_000.0;
            if let Some(c) = &mut n.conn {
                c.rtt_us = 90_000 + g.rng.below(30_000) as u64;
            }
        }
        "packet_loss" if n.peer.as_deref() == Some(name_of(ctx.role).as_str()) => {
            if let Some(c) = &mut n.conn {
                c.rtt_us = 3_000 + g.rng.below(2_000) as u64;
            }
            if g.rng.chance(0.3) {
                n.self_us += 200_000.0 * (1 + g.rng.below(3)) as f64;
            }
        }
        "connection_refused" if n.peer.as_deref() == Some(name_of(ctx.role).as_str()) => {
            let addr = n.conn.as_ref().map(|c| c.addr.clone()).unwrap_or_default();
            let (t, m) = w
                .svcs
                .iter()
                .find(|s| s.name == n.service)
                .unwrap()
                .lang
                .refused(&addr);
            n.children.clear();
            n.self_us = 1_000.0;
            n.fail = Some(Fail {
                status: None,
                exception: Some((t, m)),
            });
            if let Some(c) = &mut n.conn {
                c.failed = true;
            }
        }
        "dns_failure" if n.peer.as_deref() == Some("ext") => {
            let (t, m) = lang.dns(&w.ext.host);
            n.self_us = 5_000.0;
            n.fail = Some(Fail {
                status: None,
                exception: Some((t, m)),
            });
            n.conn = None;
        }
        "slow_function_after_deploy"
            if n.service == name_of(Role::Orders) && n.name == w.fn_orders =>
        {
            n.self_us *= 40.0;
        }
        "n_plus_one" if n.service == name_of(Role::Orders) && n.kind == 2 => {
            if let Some(q) = n
                .children
                .iter()
                .find(|c| c.peer.as_deref() == Some("db1"))
                .cloned()
            {
                for _ in 0..ctx.n {
                    let mut q = q.clone();
                    q.self_us = g.rng.jitter(2_500.0);
                    n.children.push(q);
                }
            }
        }
        "deadlock" if n.peer.as_deref() == Some("db2") && n.service == name_of(Role::Inventory) => {
            n.self_us += 1_000_000.0;
            if g.rng.chance(0.4) {
                n.fail = Some(Fail {
                    status: None,
                    exception: Some((
                        "PSQLException".into(),
                        "ERROR: deadlock detected (SQLSTATE 40P01)".into(),
                    )),
                });
            }
        }
        "bad_credentials" if n.peer.as_deref() == Some("ext") => {
            n.self_us = 30_000.0;
            n.fail = Some(Fail {
                status: Some(401),
                exception: None,
            });
        }
        "rate_limited" if n.kind == 2 && n.service == name_of(Role::Payments) => {
            // The API answers 429 to most calls; the client retries.
            let tmpl = n
                .children
                .iter()
                .find(|c| c.peer.as_deref() == Some("ext"))
                .cloned();
            if let Some(t) = tmpl {
                n.children.retain(|c| c.peer.as_deref() != Some("ext"));
                let tries = 1 + g.rng.below(3);
                for i in 0..=tries {
                    let mut c = t.clone();
                    let last = i == tries;
                    c.attrs.push(kv("http.request.resend_count", i as i64));
                    if !last || g.rng.chance(0.5) {
                        c.self_us = 8_000.0;
                        c.fail = Some(Fail {
                            status: Some(429),
                            exception: None,
                        });
                        c.handled = !last;
                    }
                    n.children.push(c);
                }
            }
        }
        "timeout_too_short"
            if n.kind == 3
                && n.service == name_of(Role::Checkout)
                && n.peer.as_deref() == Some(name_of(Role::Payments).as_str())
                && (n.children.first().is_some_and(|c| c.self_us > 5_000.0)
                    || g.rng.chance(0.6)) =>
        {
            // The payments call takes ~50 ms; the new timeout is 40 ms.
            let (t, m) = lang.timeout();
            n.self_us = 40_000.0;
            n.children.clear();
            n.fail = Some(Fail {
                status: None,
                exception: Some((t.into(), m.into())),
            });
        }
        "slow_external_api" if n.peer.as_deref() == Some("ext") => n.self_us *= 12.0,
        "cache_down" if n.peer.as_deref() == Some("cache") => {
            let (t, m) = lang.refused(&w.cache.addr);
            n.self_us = 900.0;
            n.fail = Some(Fail {
                status: None,
                exception: Some((t, m)),
            });
            n.handled = true;
            if let Some(c) = &mut n.conn {
                c.failed = true;
            }
        }
        "cache_down"
            if n.kind == 2
                && n.children
                    .iter()
                    .any(|c| c.peer.as_deref() == Some("cache")) =>
        {
            // The fallback: the database on every request.
            let role = if n.service == name_of(Role::Orders) {
                Role::Orders
            } else {
                Role::Reviews
            };
            let q = g.db(role, 1, "SELECT", w.stmt_orders(), 25.0);
            n.children.push(q);
        }
        "missing_index"
            if n.peer.as_deref() == Some("db1") && n.service == name_of(Role::Orders) =>
        {
            n.self_us = g.rng.jitter(ctx.ms * 1000.0);
        }
        "lock_contention" | "batch_job_load" if n.peer.as_deref() == Some("db2") => {
            n.self_us += g.rng.jitter(ctx.ms * 1000.0);
        }
        "pool_exhaustion" if n.service == name_of(Role::Users) && n.kind == 2 => {
            let mut p = Node {
                name: lang.pool_span().into(),
                kind: 1,
                self_us: g.rng.jitter(ctx.ms * 1000.0),
                children: Vec::new(),
                attrs: Vec::new(),
                conn: None,
                http: None,
                peer: None,
                fail: None,
                handled: false,
                ..n.clone()
            };
            p.attrs
                .push(kv("db.client.connection.pool.name", "primary"));
            n.children.insert(0, p);
        }
        "db_failover" if n.peer.as_deref() == Some("db1") => {
            if ctx.at > INC_FROM - 70_000_000 {
                n.self_us = 2_000.0;
                n.fail = Some(Fail {
                    status: None,
                    exception: Some((
                        "PSQLException".into(),
                        "FATAL: the database system is starting up".into(),
                    )),
                });
                if let Some(c) = &mut n.conn {
                    c.failed = g.rng.chance(0.5);
                }
            } else {
                n.self_us *= 4.0;
            }
        }
        "queue_consumer_lag" if n.service == name_of(Role::Worker) && n.kind == 5 => {
            n.self_us *= 9.0
        }
        "bad_instance" if n.service == name_of(ctx.role) && n.pod == ctx.pod && n.kind == 2 => {
            n.self_us += 250_000.0;
        }
        "bad_node"
            if n.kind == 2 && {
                let s = w.svcs.iter().find(|s| s.name == n.service).unwrap();
                s.pods[n.pod].node == w.nodes[ctx.pod]
            } =>
        {
            n.self_us += 200_000.0;
        }
        "traffic_surge" if n.kind == 2 && n.service == name_of(Role::Search) => n.self_us *= 5.0,
        "retry_storm"
            if n.kind == 3
                && n.service == name_of(Role::Gw)
                && n.peer.as_deref() == Some(name_of(Role::Orders).as_str()) =>
        {
            // Added by the caller: see `retry_storm` in `request_at`.
        }
        "thundering_herd" if n.peer.as_deref() == Some("cache") => {
            n.attrs.push(kv("cache.hit", false));
        }
        "thundering_herd"
            if n.peer.as_deref() == Some("db1") && ctx.at > INC_FROM - 100_000_000 =>
        {
            n.self_us = g.rng.jitter(300_000.0);
        }
        "partial_rollout"
            if n.service == name_of(ctx.role) && n.pod == 0 && n.kind == 2 && g.rng.chance(0.9) =>
        {
            let (t, m) = lang.bug();
            n.fail = Some(Fail {
                status: Some(500),
                exception: Some((t.into(), m.into())),
            });
        }
        _ => {}
    }
    for c in &mut n.children {
        fault(g, c, ctx);
    }
}

struct FaultCtx {
    role: Role,
    pod: usize,
    n: usize,
    ms: f64,
    /// µs ago this request started.
    at: i64,
}

/// Generates one case.
pub fn case(class: &'static str, form: Form, seed: u64) -> Case {
    let mut rng = Rng::new(seed ^ fxhash(class));
    let w = World::new(&mut rng);
    let mut g = Gen {
        w: &w,
        rng: Rng::new(rng.next_u64()),
        class,
        spans: Vec::new(),
        logs: Vec::new(),
        metrics: Vec::new(),
        next_id: 0,
        rollout: None,
    };
    // The class's target, among the roles it can hit.
    let hit = |rng: &mut Rng, roles: &[Role]| *rng.pick(roles);
    let role = match class {
        "cpu_saturation" | "memory_leak_oom" | "fd_exhaustion" | "bad_instance" => hit(
            &mut g.rng,
            &[Role::Orders, Role::Users, Role::Search, Role::Payments],
        ),
        "disk_full" | "exception_on_route" | "bad_version" | "partial_rollout" => hit(
            &mut g.rng,
            &[Role::Orders, Role::Users, Role::Inventory, Role::Checkout],
        ),
        "network_latency" | "packet_loss" | "connection_refused" => hit(
            &mut g.rng,
            &[Role::Orders, Role::Users, Role::Inventory, Role::Payments],
        ),
        _ => Role::Orders,
    };
    let ctx_pod = match class {
        "bad_node" => g.rng.below(w.nodes.len()),
        _ => g.rng.below(3),
    };
    let n_plus = 20 + g.rng.below(40);
    let ms = g.rng.range(150.0, 600.0);
    // A harmless rollout at the incident's start (a red herring), on a
    // service the class does not involve.
    let herring_role = *g
        .rng
        .pick(&[Role::Reviews, Role::Search, Role::Users, Role::Payments]);
    let herring_role = if herring_role == role || matches!(class, "traffic_surge") {
        Role::Reviews
    } else {
        herring_role
    };
    if class != "no_fault_quiet" {
        g.rollout = Some((herring_role, format!("2.{}.0", g.rng.below(9))));
    }
    // Rolled out versions: the class's own deploy.
    let deploy_version = format!(
        "{}.{}.{}",
        2 + g.rng.below(3),
        g.rng.below(20),
        g.rng.below(9)
    );

    // Baseline and incident traffic.
    let base_n = (RATE * (BASE_FROM - BASE_TO) as f64 / 60e6) as usize;
    let inc_n = (RATE * (INC_FROM - INC_TO) as f64 / 60e6) as usize;
    let mut starts: Vec<(i64, bool)> = Vec::new();
    for i in 0..base_n {
        starts.push((
            BASE_FROM - (BASE_FROM - BASE_TO) * i as i64 / base_n as i64,
            false,
        ));
    }
    for i in 0..inc_n {
        starts.push((
            INC_FROM - (INC_FROM - INC_TO) * i as i64 / inc_n as i64,
            true,
        ));
    }
    let faulty = !class.starts_with("no_fault");
    let blip_at = BASE_FROM / 2;
    for (at, incident) in starts {
        // A surge: the search route gets several times its traffic.
        let extra = if incident && faulty && class == "traffic_surge" {
            3
        } else {
            0
        };
        let mut route = "";
        for k in 0..=extra {
            let at = at - k as i64 * 1_500_000;
            let (mut root, r) = g.request(k > 0);
            if k == 0 {
                route = r;
            }
            if incident && faulty {
                fault(
                    &mut g,
                    &mut root,
                    &FaultCtx {
                        role,
                        pod: ctx_pod,
                        n: n_plus,
                        ms,
                        at,
                    },
                );
                if class == "retry_storm" && r == "orders" {
                    // Orders answers 503 under load; the gateway retries up to
                    // three times, which keeps it overloaded.
                    let call = root.children[0].clone();
                    root.children.clear();
                    for i in 0..4 {
                        let mut c = call.clone();
                        c.attrs.push(kv("http.request.resend_count", i as i64));
                        if let Some(s) = c.children.first_mut() {
                            s.self_us += 60_000.0;
                            if i < 3 {
                                s.fail = Some(Fail {
                                    status: Some(503),
                                    exception: None,
                                });
                            }
                        }
                        c.handled = i < 3;
                        root.children.push(c);
                    }
                }
            }
            // Red herrings: pre-existing errors on search (both windows),
            // and a blip in the baseline that resolved.
            if r == "search" && g.rng.chance(0.04) {
                let f = &mut root.children[0].children[0];
                f.fail = Some(Fail {
                    status: Some(400),
                    exception: Some(("ValidationError".into(), "query too short".into())),
                });
                f.handled = true;
            }
            if !incident && (blip_at - at).abs() < 40_000_000 && r == "users" {
                root.children[0].children[0].fail = Some(Fail {
                    status: Some(503),
                    exception: None,
                });
            }
            let trace = ((g.rng.next_u64() as u128) << 64) | g.rng.next_u64() as u128;
            g.emit(trace, None, &root, at);
        }
        if route == "checkout" {
            // The worker consumes what checkout published.
            let mut c = g.consume();
            if incident && faulty {
                fault(
                    &mut g,
                    &mut c,
                    &FaultCtx {
                        role,
                        pod: ctx_pod,
                        n: n_plus,
                        ms,
                        at,
                    },
                );
            }
            let trace = ((g.rng.next_u64() as u128) << 64) | g.rng.next_u64() as u128;
            g.emit(trace, None, &c, at - 30_000);
        }
    }
    // Deploys: the class's own.
    if matches!(
        class,
        "slow_function_after_deploy" | "n_plus_one" | "bad_version"
    ) {
        let target = if class == "bad_version" {
            w.name(role)
        } else {
            w.name(Role::Orders)
        };
        for s in g
            .spans
            .iter_mut()
            .filter(|s| s.service == target && s.start_ago_us < INC_FROM)
        {
            s.pod.version = deploy_version.clone();
            s.pod.name = format!("{}-{}", s.pod.name, "v2");
        }
    }
    if class == "partial_rollout" {
        let target = w.name(role);
        let canary = w.svc(role).pods[0].name.clone();
        for s in g
            .spans
            .iter_mut()
            .filter(|s| s.service == target && s.start_ago_us < INC_FROM && s.pod.name == canary)
        {
            s.pod.version = deploy_version.clone();
        }
    }
    // Memory: the pods restart (new instance names) and memory climbs.
    if class == "memory_leak_oom" {
        let target = w.name(role);
        let restart = g.rng.alnum(3);
        for s in g
            .spans
            .iter_mut()
            .filter(|s| s.service == target && s.start_ago_us < INC_FROM)
        {
            let k = (INC_FROM - s.start_ago_us) / 60_000_000;
            s.pod.name = format!("{}-{restart}{k}", s.pod.name);
        }
    }
    // Metrics every 30 s per pod: cpu and memory of every service, pool
    // waits of users, consumer lag of the worker.
    let mut t = BASE_FROM;
    let w2 = &w;
    while t > INC_TO {
        let inc = t < INC_FROM && faulty;
        for s in &w2.svcs {
            let target = s.name == w2.name(role);
            for p in &s.pods {
                let cpu_high = inc && class == "cpu_saturation" && target;
                let cpu = if cpu_high {
                    g.rng.range(0.93, 0.99)
                } else {
                    g.rng.range(0.15, 0.40)
                };
                g.metrics.push(MetricOut {
                    service: s.name.clone(),
                    pod: p.clone(),
                    name: s.lang.cpu_metric().into(),
                    unit: "1",
                    ago_us: t,
                    value: cpu,
                });
                let mem_high = inc && class == "memory_leak_oom" && target;
                let base = 300e6 + g.rng.range(0.0, 20e6);
                let mem = if mem_high {
                    base + 1.4e9 * ((INC_FROM - t) % 60_000_000) as f64 / 60e6
                } else {
                    base
                };
                g.metrics.push(MetricOut {
                    service: s.name.clone(),
                    pod: p.clone(),
                    name: s.lang.memory_metric().into(),
                    unit: "By",
                    ago_us: t,
                    value: mem,
                });
            }
        }
        let lag = if inc && class == "queue_consumer_lag" {
            (INC_FROM - t) as f64 / 1e6 * 8.0
        } else {
            g.rng.range(0.0, 6.0).floor()
        };
        let wk = w2.svc(Role::Worker);
        g.metrics.push(MetricOut {
            service: wk.name.clone(),
            pod: wk.pods[0].clone(),
            name: "messaging.kafka.consumer.records_lag".into(),
            unit: "{message}",
            ago_us: t,
            value: lag,
        });
        t -= 30_000_000;
    }
    // Logs: errors the services would log, with and without a fault.
    let err_spans: Vec<(String, Pod, i64, String, u128)> = g
        .spans
        .iter()
        .filter_map(|s| {
            let body = match (&s.log, &s.exception) {
                (Some(l), _) => l.clone(),
                (None, Some((t, m))) => format!("{t}: {m}"),
                (None, None) => return None,
            };
            Some((
                s.service.clone(),
                s.pod.clone(),
                s.start_ago_us,
                body,
                s.trace,
            ))
        })
        .collect();
    for (svc, pod, at, body, trace) in err_spans {
        g.logs.push(LogOut {
            service: svc,
            pod,
            ago_us: at,
            severity: (17, "ERROR"),
            body,
            trace: Some(trace),
        });
    }
    if class == "memory_leak_oom" && faulty {
        let s = w.svc(role).clone();
        for k in 0..4 {
            g.logs.push(LogOut {
                service: s.name.clone(),
                pod: s.pods[k % 3].clone(),
                ago_us: INC_FROM - k as i64 * 60_000_000,
                severity: (13, "WARN"),
                body: "heap usage above 90%, full GC did not free memory".into(),
                trace: None,
            });
        }
    }
    // The jobs: a harmless cron job in both windows; the class's job in the
    // incident window.
    let herring = w.herring_job.clone();
    let stock_stmt = format!(
        "UPDATE {} SET reported = true WHERE day = current_date - 1",
        w.t_audit
    );
    let job_stmt = match class {
        "lock_contention" => format!("LOCK TABLE {} IN EXCLUSIVE MODE", w.t_stock),
        _ => format!(
            "UPDATE {} SET synced_at = now() WHERE synced_at < $1",
            w.t_stock
        ),
    };
    let job = w.job.clone();
    let mut w_jobs = w.svcs.clone();
    for name in [&herring, &job] {
        let mut s = w.svc(Role::Worker).clone();
        s.name = name.clone();
        s.http = false;
        w_jobs.push(s);
    }
    let world_jobs = World {
        svcs: w_jobs,
        nodes: w.nodes.clone(),
        db1: w.db1.clone(),
        db2: w.db2.clone(),
        cache: w.cache.clone(),
        ext: w.ext.clone(),
        queue: w.queue.clone(),
        job: w.job.clone(),
        herring_job: w.herring_job.clone(),
        t_orders: w.t_orders.clone(),
        t_users: w.t_users.clone(),
        t_stock: w.t_stock.clone(),
        t_audit: w.t_audit.clone(),
        fn_orders: w.fn_orders.clone(),
        fn_search: w.fn_search.clone(),
    };
    {
        let mut g2 = Gen {
            w: &world_jobs,
            rng: Rng::new(g.rng.next_u64()),
            class: "none",
            spans: Vec::new(),
            logs: Vec::new(),
            metrics: Vec::new(),
            next_id: g.next_id + 1_000_000,
            rollout: None,
        };
        job_spans(
            &mut g2,
            &CronJob {
                name: &herring,
                from: BASE_FROM - 60_000_000,
                to: INC_TO,
                every: 5 * 60_000_000,
                ms: 40.0,
                stmt: &stock_stmt,
                which: 2,
            },
        );
        if matches!(class, "lock_contention" | "batch_job_load") {
            job_spans(
                &mut g2,
                &CronJob {
                    name: &job,
                    from: INC_FROM + 10_000_000,
                    to: INC_TO,
                    every: 20_000_000,
                    ms: ms * 1.5,
                    stmt: &job_stmt,
                    which: 2,
                },
            );
        }
        g.spans.append(&mut g2.spans);
    }

    let n = |r: Role| w.name(r);
    let pod_of = |r: Role, i: usize| w.svc(r).pods[i].name.clone();
    let otlp = form == Form::Otlp;
    let route_of = |r: Role| -> String {
        match r {
            Role::Orders => format!("/{}/{{id}}", n(Role::Orders)),
            Role::Users => format!("/{}/{{id}}", n(Role::Users)),
            Role::Search => "/search".into(),
            Role::Payments => "/charge".into(),
            Role::Inventory => "/reserve".into(),
            Role::Checkout => "/checkout".into(),
            Role::Reviews => format!("/{}", n(Role::Reviews)),
            _ => String::new(),
        }
    };
    let target = n(role);
    let route = route_of(role);
    let (db1, db1h) = (w.db1.name.clone(), w.db1.host.clone());
    let (db2, db2h) = (w.db2.name.clone(), w.db2.host.clone());
    let tr = match class {
        c if c.starts_with("no_fault") => None,
        "cpu_saturation" if otlp => {
            truth!([&target], "cpu_saturation", [w.svc(role).lang.cpu_metric()])
        }
        "memory_leak_oom" if otlp => {
            truth!([&target], "memory", [w.svc(role).lang.memory_metric()])
        }
        "fd_exhaustion" if otlp => {
            truth!([&target], "resource_exhaustion", ["too many open files"])
        }
        "disk_full" if otlp => truth!(
            [&target],
            "resource_exhaustion",
            ["no space left on device"]
        ),
        "cpu_saturation" | "memory_leak_oom" | "bad_instance" | "bad_version"
        | "partial_rollout" | "exception_on_route" | "fd_exhaustion" | "disk_full" => {
            truth!([&target], "service", [&route])
        }
        "network_latency" | "packet_loss" => truth!([&target], "network", []),
        "connection_refused" if otlp => truth!([&target], "connection_refused", ["refused"]),
        "connection_refused" => truth!([&target], "connection_refused", []),
        "dns_failure" if otlp => truth!([&w.ext.host], "dns", [&w.ext.host]),
        "dns_failure" => truth!([&n(Role::Payments)], "errors", ["/charge"]),
        "slow_function_after_deploy" if otlp => {
            truth!([&n(Role::Orders)], "code", [&w.fn_orders, &deploy_version])
        }
        "n_plus_one" if otlp => truth!(
            [&n(Role::Orders)],
            "n_plus_one",
            [&w.t_orders, "per request"]
        ),
        "slow_function_after_deploy" | "n_plus_one" => {
            truth!([&n(Role::Orders)], "service", [&route_of(Role::Orders)])
        }
        "deadlock" if otlp => truth!([&db2, &db2h], "deadlock", ["deadlock"]),
        "deadlock" => truth!([&n(Role::Inventory)], "service", ["/reserve"]),
        "bad_credentials" if otlp => truth!([&w.ext.host, &n(Role::Payments)], "auth", ["401"]),
        "bad_credentials" => truth!([&n(Role::Payments)], "errors", ["/charge"]),
        "rate_limited" if otlp => truth!([&w.ext.host], "rate_limited", ["429"]),
        "rate_limited" => truth!([&n(Role::Payments)], "errors", ["/charge"]),
        "timeout_too_short" if otlp => {
            let (t, _) = w.svc(Role::Checkout).lang.timeout();
            truth!([&n(Role::Checkout), &n(Role::Payments)], "timeout", [t])
        }
        "timeout_too_short" => truth!([&n(Role::Checkout)], "errors", ["/checkout"]),
        "slow_external_api" if otlp => truth!([&w.ext.host, &w.ext.addr], "slow_dependency", []),
        // eBPF sees the connections, not the time the API takes to answer:
        // the deepest moved service is the caller.
        "slow_external_api" => truth!([&w.ext.addr, &n(Role::Payments)], "slow_dependency", []),
        "cache_down" => truth!([&w.cache.host, &w.cache.addr], "dependency_down", []),
        "missing_index" if otlp => truth!([&db1, &db1h], "slow_query", [&w.t_orders]),
        "missing_index" => truth!([&n(Role::Orders)], "service", [&route_of(Role::Orders)]),
        "lock_contention" | "batch_job_load" if otlp => truth!([&job], "job", [&db2]),
        "lock_contention" | "batch_job_load" => truth!([&job], "job", [&w.db2.addr]),
        "pool_exhaustion" if otlp => truth!(
            [&n(Role::Users)],
            "pool_exhaustion",
            [w.svc(Role::Users).lang.pool_span()]
        ),
        "pool_exhaustion" => truth!([&n(Role::Users)], "service", [&route_of(Role::Users)]),
        "db_failover" if otlp => truth!([&db1, &db1h], "db_restart", ["starting up"]),
        "db_failover" => truth!([&db1, &w.db1.addr], "db_restart", []),
        "queue_consumer_lag" => truth!([&n(Role::Worker)], "consumer_lag", [&w.queue]),
        "bad_node" if otlp => truth!([&w.nodes[ctx_pod]], "bad_node", [&w.nodes[ctx_pod]]),
        "bad_node" => {
            // eBPF has no node per request: any service with a pod there.
            let on: Vec<String> = w
                .svcs
                .iter()
                .filter(|s| s.http && s.pods.iter().any(|p| p.node == w.nodes[ctx_pod]))
                .map(|s| s.name.clone())
                .collect();
            Some(Truth {
                entities: on,
                kind: "service",
                details: Vec::new(),
            })
        }
        "traffic_surge" => truth!(
            [&n(Role::Search), &n(Role::Gw)],
            "traffic_surge",
            ["/search"]
        ),
        "retry_storm" if otlp => truth!([&n(Role::Gw), &n(Role::Orders)], "retry_storm", ["retr"]),
        "retry_storm" => truth!([&n(Role::Orders)], "errors", [&route_of(Role::Orders)]),
        "thundering_herd" if otlp => truth!([&w.cache.host, &db1, &db1h], "thundering_herd", []),
        "thundering_herd" => truth!([&n(Role::Orders), &n(Role::Users)], "service", []),
        _ => None,
    };
    // bad_version / partial_rollout / exception_on_route in OTLP form
    let tr = match (class, otlp) {
        ("exception_on_route", true) => {
            let (t, _) = w.svc(role).lang.bug();
            truth!([&target], "exception", [t, &route])
        }
        ("bad_version", true) => truth!([&target], "bad_deploy", [&deploy_version]),
        ("partial_rollout", true) => truth!([&target], "bad_deploy", [&deploy_version]),
        ("bad_instance", true) => truth!([&target], "bad_instance", [&pod_of(role, ctx_pod)]),
        _ => tr,
    };
    Case {
        class,
        form,
        seed,
        truth: tr,
        spans: g.spans,
        logs: g.logs,
        metrics: g.metrics,
    }
}

fn fxhash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

fn any_str(v: &Value) -> Value {
    match v {
        Value::String(s) => json!({"stringValue": s}),
        Value::Bool(b) => json!({"boolValue": b}),
        Value::Number(n) if n.is_i64() => json!({"intValue": n.as_i64().unwrap().to_string()}),
        Value::Number(n) => json!({"doubleValue": n.as_f64().unwrap()}),
        other => json!({"stringValue": other.to_string()}),
    }
}

fn attrs(list: &[(String, Value)]) -> Vec<Value> {
    list.iter()
        .map(|(k, v)| json!({"key": k, "value": any_str(v)}))
        .collect()
}

fn resource(service: &str, pod: &Pod, lang: Lang) -> Value {
    let mut r = vec![
        kv("service.name", service),
        kv("service.instance.id", pod.name.clone()),
        kv("k8s.pod.name", pod.name.clone()),
        kv("k8s.node.name", pod.node.clone()),
        kv("service.version", pod.version.clone()),
        kv("telemetry.sdk.language", lang.sdk()),
    ];
    if pod.version.is_empty() {
        r.retain(|(k, _)| k != "service.version");
    }
    json!({"attributes": attrs(&r)})
}

impl Case {
    pub fn name(&self) -> String {
        format!("{}/{}/{}", self.class, self.form.as_str(), self.seed)
    }

    /// OTLP/JSON trace export requests, one per service and pod.
    pub fn otlp_traces(&self, now_ns: i64) -> Vec<Value> {
        let mut by: BTreeMap<(String, String), (Value, Vec<Value>)> = BTreeMap::new();
        for s in &self.spans {
            let start = now_ns - s.start_ago_us * 1000;
            let end = start + s.dur_us * 1000;
            let mut span = json!({
                "traceId": format!("{:032x}", s.trace),
                "spanId": format!("{:016x}", s.id),
                "name": s.name,
                "kind": s.kind,
                "startTimeUnixNano": start.to_string(),
                "endTimeUnixNano": end.to_string(),
                "attributes": attrs(&s.attrs),
                "status": {"code": if s.error { 2 } else { 0 }},
            });
            if let Some(p) = s.parent {
                span["parentSpanId"] = json!(format!("{p:016x}"));
            }
            if let Some((t, m)) = &s.exception {
                span["events"] = json!([{
                    "name": "exception",
                    "timeUnixNano": end.to_string(),
                    "attributes": attrs(&[kv("exception.type", t.clone()), kv("exception.message", m.clone())]),
                }]);
                span["status"]["message"] = json!(m);
            }
            // One resource per service, pod and version (a pod that is
            // redeployed is another resource).
            by.entry((
                s.service.clone(),
                format!("{}/{}", s.pod.name, s.pod.version),
            ))
            .or_insert_with(|| (resource(&s.service, &s.pod, s.lang), Vec::new()))
            .1
            .push(span);
        }
        by.into_values()
            .flat_map(|(res, spans)| {
                spans
                    .chunks(2000)
                    .map(|c| {
                        json!({"resourceSpans": [{
                            "resource": res,
                            "scopeSpans": [{"scope": {"name": "incident-gen"}, "spans": c}],
                        }]})
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    pub fn otlp_logs(&self, now_ns: i64) -> Vec<Value> {
        let mut by: BTreeMap<(String, String), (Value, Vec<Value>)> = BTreeMap::new();
        for l in &self.logs {
            let mut rec = json!({
                "timeUnixNano": (now_ns - l.ago_us * 1000).to_string(),
                "severityNumber": l.severity.0,
                "severityText": l.severity.1,
                "body": {"stringValue": l.body},
            });
            if let Some(t) = l.trace {
                rec["traceId"] = json!(format!("{t:032x}"));
            }
            by.entry((l.service.clone(), l.pod.name.clone()))
                .or_insert_with(|| (resource(&l.service, &l.pod, Lang::Go), Vec::new()))
                .1
                .push(rec);
        }
        by.into_values()
            .map(|(res, recs)| {
                json!({"resourceLogs": [{"resource": res, "scopeLogs": [{"scope": {"name": "incident-gen"}, "logRecords": recs}]}]})
            })
            .collect()
    }

    pub fn otlp_metrics(&self, now_ns: i64) -> Vec<Value> {
        type Points<'a> = BTreeMap<(String, &'a str), Vec<Value>>;
        let mut by: BTreeMap<(String, String), (Value, Points<'_>)> = BTreeMap::new();
        for m in &self.metrics {
            by.entry((m.service.clone(), m.pod.name.clone()))
                .or_insert_with(|| (resource(&m.service, &m.pod, Lang::Go), BTreeMap::new()))
                .1
                .entry((m.name.clone(), m.unit))
                .or_default()
                .push(json!({"timeUnixNano": (now_ns - m.ago_us * 1000).to_string(), "asDouble": m.value}));
        }
        by.into_values()
            .map(|(res, metrics)| {
                let ms: Vec<Value> = metrics
                    .into_iter()
                    .map(|((name, unit), points)| json!({"name": name, "unit": unit, "gauge": {"dataPoints": points}}))
                    .collect();
                json!({"resourceMetrics": [{"resource": res, "scopeMetrics": [{"scope": {"name": "incident-gen"}, "metrics": ms}]}]})
            })
            .collect()
    }

    /// What the agent's eBPF capture records: server-side HTTP RED per
    /// service, method, normalised route and second, and client-side
    /// connection edges per second.
    pub fn passive(&self, now_ms: i64) -> (Vec<RedRecord>, Vec<EdgeRecord>) {
        type RedKey = (i64, String, String, String);
        let mut red: BTreeMap<RedKey, (u64, u64, u64, u64, u64, Hist)> = BTreeMap::new();
        let http: std::collections::HashSet<&str> = self
            .spans
            .iter()
            .filter(|s| s.http.is_some())
            .map(|s| s.service.as_str())
            .collect();
        type EdgeKey = (i64, String, u32, String, Option<String>);
        let mut edges: BTreeMap<EdgeKey, (u64, u64, u64, u64, u64)> = BTreeMap::new();
        for s in &self.spans {
            let ts = now_ms - s.start_ago_us / 1000;
            let sec = ts - ts.rem_euclid(1000);
            if let Some((m, p, status)) = &s.http
                && s.kind == 2
            {
                let route = coral_store::route::normalise(p);
                let e = red
                    .entry((sec, s.service.clone(), m.clone(), route))
                    .or_insert_with(|| (0, 0, 0, 0, 0, Hist::default()));
                e.0 += 1;
                e.1 += (*status >= 500) as u64;
                e.2 += (400..500).contains(status) as u64;
                e.3 += s.dur_us as u64;
                e.4 = e.4.max(s.dur_us as u64);
                e.5.record(s.dur_us as u64);
            }
            if let Some(c) = &s.conn {
                // Calls to a service that speaks HTTP are its RED too; the
                // edge is the connection under them.
                let dst = c.service.clone().filter(|d| http.contains(d.as_str()));
                let e = edges
                    .entry((sec, s.service.clone(), s.pod.pid, c.addr.clone(), dst))
                    .or_default();
                e.0 += 1;
                e.1 += c.failed as u64;
                e.2 += 300;
                e.3 += if c.failed { 0 } else { 1200 };
                e.4 = e.4.max(c.rtt_us);
                let _ = &c.rtt_us;
            }
        }
        let mut rtt: BTreeMap<EdgeKey, (u64, u64)> = BTreeMap::new();
        for s in &self.spans {
            if let Some(c) = &s.conn
                && !c.failed
            {
                let ts = now_ms - s.start_ago_us / 1000;
                let sec = ts - ts.rem_euclid(1000);
                let dst = c.service.clone().filter(|d| http.contains(d.as_str()));
                let r = rtt
                    .entry((sec, s.service.clone(), s.pod.pid, c.addr.clone(), dst))
                    .or_default();
                r.0 += c.rtt_us;
                r.1 += 1;
            }
        }
        let red = red
            .into_iter()
            .map(
                |((ts, service, method, route), (n, e, ce, sum, max, h))| RedRecord {
                    agent_id: String::new(),
                    seq: 0,
                    ts_ms: ts,
                    service,
                    method,
                    route,
                    count: n,
                    errors: e,
                    client_errors: ce,
                    bytes_in: n * 420,
                    bytes_out: n * 1800,
                    sum_us: sum,
                    max_us: max,
                    hist: h.encode(),
                    error_codes: String::new(),
                    db_user: String::new(),
                    db_name: String::new(),
                },
            )
            .collect();
        let edges = edges
            .into_iter()
            .map(|(k, (n, f, sent, recv, max))| {
                let (rs, rn) = rtt.get(&k).copied().unwrap_or_default();
                let (ts, src, pid, addr, dst) = k;
                EdgeRecord {
                    agent_id: String::new(),
                    seq: 0,
                    ts_ms: ts,
                    src,
                    src_pid: pid,
                    dst_addr: addr,
                    dst_service: dst,
                    connections: n,
                    failures: f,
                    bytes_sent: sent,
                    bytes_received: recv,
                    rtt_sum_us: rs,
                    rtt_count: rn,
                    rtt_max_us: max,
                    protocol: String::new(),
                    requests: 0,
                    request_errors: 0,
                    request_sum_us: 0,
                    request_max_us: 0,
                }
            })
            .collect();
        (red, edges)
    }
}

/// Every case of one seed: each class in both forms, and the no-fault
/// variants in both forms.
pub fn suite(seed: u64) -> Vec<(&'static str, Form)> {
    let mut v = Vec::new();
    for c in CLASSES.iter().chain(NO_FAULT) {
        for f in [Form::Otlp, Form::Passive] {
            v.push((*c, f));
        }
    }
    let _ = seed;
    v
}
