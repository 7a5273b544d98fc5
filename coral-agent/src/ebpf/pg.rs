//! PostgreSQL (frontend/backend protocol 3) for one server-side
//! connection: the messages the server read and wrote, as the BPF programs
//! saw them, become one exchange per statement: the normalised SQL (string
//! and number literals replaced by `?`), an error when the server answered
//! with an ErrorResponse (its SQLSTATE is kept in the exchange), and the
//! time from the read that brought the statement to the write that
//! completed it.
//!
//! - Simple query protocol: a `Query` ends at its `ReadyForQuery`.
//! - Extended protocol: `Parse` names the SQL of a statement, `Bind` a
//!   portal of it, each `Execute` is a statement that ends at its
//!   `CommandComplete` (or `EmptyQueryResponse`, `PortalSuspended`, or an
//!   `ErrorResponse`, after which the server skips to `Sync` and the
//!   skipped `Execute`s are not counted). Pipelined `Sync`s are followed in
//!   order.
//! - Messages are followed by their 5-byte headers and skipped by length,
//!   so rows beyond the capture are not needed. A header that was not
//!   captured, a TLS connection (`SSLRequest` answered `S`) or replies out
//!   of step stop the connection's parsing; statements then pending are
//!   counted in `unparsed`, never paired with another statement's reply.

use super::http::Exchange;
use rustc_hash::FxHashMap as HashMap;
use std::collections::VecDeque;
use std::sync::Arc;

/// Payload bytes kept of a message (the SQL of a long statement is cut).
const KEEP: usize = 2048;
/// Longest normalised statement.
const MAX_SQL: usize = 200;
/// Prepared statements and portals remembered per connection.
const MAX_NAMES: usize = 256;
/// Statements waiting for the server on one connection.
const MAX_PENDING: usize = 4096;

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const PROTOCOL_3: u32 = 196_608;

/// Replaces literals with `?`, drops comments, collapses whitespace and
/// lists of placeholders; at most `MAX_SQL` bytes.
pub fn normalise_sql(sql: &str) -> String {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len().min(MAX_SQL));
    let mut i = 0;
    let mut space = false;
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
    while i < b.len() && out.len() < MAX_SQL {
        let c = b[i];
        if c.is_ascii_whitespace() {
            space = !out.is_empty();
            i += 1;
            continue;
        }
        if c == b'-' && b.get(i + 1) == Some(&b'-') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            space = !out.is_empty();
            continue;
        }
        if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                i += 1;
            }
            i += 2;
            space = !out.is_empty();
            continue;
        }
        if space {
            out.push(' ');
            space = false;
        }
        let prev = out.as_bytes().last().copied();
        if c == b'\'' {
            // A string literal ('' escapes a quote).
            i += 1;
            while i < b.len() {
                if b[i] == b'\'' {
                    if b.get(i + 1) == Some(&b'\'') {
                        i += 2;
                        continue;
                    }
                    break;
                }
                i += 1;
            }
            i += 1;
            out.push('?');
        } else if c.is_ascii_digit() && !prev.is_some_and(word) {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                i += 1;
            }
            // A unary minus is part of the literal: `+ -5` and `+ 5` are
            // one statement shape.
            if out.ends_with('-') {
                let before = out[..out.len() - 1].trim_end();
                if before.is_empty()
                    || before.ends_with(['+', '-', '*', '/', '=', '<', '>', '(', ','])
                    || before.to_ascii_uppercase().ends_with(" THEN")
                {
                    out.pop();
                }
            }
            out.push('?');
        } else {
            // A whole word or one other character (UTF-8 kept whole).
            let start = i;
            if word(c) {
                while i < b.len() && word(b[i]) {
                    i += 1;
                }
            } else {
                i += 1;
                while i < b.len() && (b[i] & 0xc0) == 0x80 {
                    i += 1;
                }
            }
            out.push_str(&String::from_utf8_lossy(&b[start..i]));
        }
        // `(?, ?, ?)` → `(?)`.
        while out.ends_with("?, ?") || out.ends_with("?,?") {
            let cut = if out.ends_with("?, ?") { 3 } else { 2 };
            out.truncate(out.len() - cut);
        }
    }
    let mut end = out.len().min(MAX_SQL);
    while !out.is_char_boundary(end) {
        end -= 1;
    }
    out.truncate(end);
    let t = out.trim_end_matches([';', ' ']);
    t.to_string()
}

/// One message: its type (0 for a startup-phase message) and kept payload.
struct Msg {
    kind: u8,
    payload: Vec<u8>,
}

enum At {
    /// Header bytes so far (4 in the startup phase, else 5).
    Header(Vec<u8>),
    Payload {
        kind: u8,
        left: u32,
        keep: Vec<u8>,
    },
}

struct Reader {
    at: At,
    /// Startup phase: messages have no type byte.
    startup: bool,
    lost: bool,
}

impl Reader {
    fn new(startup: bool) -> Self {
        Reader {
            at: At::Header(Vec::new()),
            startup,
            lost: false,
        }
    }

    fn header_len(&self) -> usize {
        if self.startup { 4 } else { 5 }
    }

    fn feed(&mut self, len: u32, data: &[u8], out: &mut Vec<Msg>, single_bytes: &mut usize) {
        if self.lost {
            return;
        }
        let mut rest = data;
        let mut moved = u64::from(len);
        while !rest.is_empty() {
            // The one-byte answers to SSLRequest / GSSENCRequest.
            if *single_bytes > 0 && matches!(&self.at, At::Header(h) if h.is_empty()) {
                *single_bytes -= 1;
                out.push(Msg {
                    kind: rest[0],
                    payload: Vec::new(),
                });
                rest = &rest[1..];
                moved = moved.saturating_sub(1);
                continue;
            }
            let hl = self.header_len();
            match &mut self.at {
                At::Header(h) => {
                    let n = (hl - h.len()).min(rest.len());
                    h.extend_from_slice(&rest[..n]);
                    rest = &rest[n..];
                    moved = moved.saturating_sub(n as u64);
                    if h.len() == hl {
                        let (kind, l) = if hl == 4 {
                            (0, u32::from_be_bytes([h[0], h[1], h[2], h[3]]))
                        } else {
                            (h[0], u32::from_be_bytes([h[1], h[2], h[3], h[4]]))
                        };
                        if !(4..=1 << 30).contains(&l) {
                            self.lost = true;
                            return;
                        }
                        self.at = At::Payload {
                            kind,
                            left: l - 4,
                            keep: Vec::new(),
                        };
                        self.done(out);
                    }
                }
                At::Payload { left, keep, .. } => {
                    let n = (*left as usize).min(rest.len());
                    let k = n.min(KEEP.saturating_sub(keep.len()));
                    keep.extend_from_slice(&rest[..k]);
                    *left -= n as u32;
                    rest = &rest[n..];
                    moved = moved.saturating_sub(n as u64);
                    self.done(out);
                }
            }
        }
        if moved > 0 {
            match &mut self.at {
                At::Payload { left, .. } if u64::from(*left) >= moved => {
                    *left -= moved as u32;
                    self.done(out);
                }
                _ => self.lost = true,
            }
        }
    }

    fn done(&mut self, out: &mut Vec<Msg>) {
        if let At::Payload {
            kind,
            left: 0,
            keep,
        } = &mut self.at
        {
            let payload = std::mem::take(keep);
            if *kind == 0 {
                // The startup message ends the startup phase; SSLRequest
                // and GSSENCRequest do not.
                let code = payload
                    .get(..4)
                    .map_or(0, |c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
                if !matches!(code, SSL_REQUEST | GSSENC_REQUEST) {
                    self.startup = false;
                }
            }
            out.push(Msg {
                kind: *kind,
                payload,
            });
            self.at = At::Header(Vec::new());
        }
    }
}

/// A C string at the start of `b`, and the rest after its NUL.
fn cstr(b: &[u8]) -> (String, &[u8]) {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    (
        String::from_utf8_lossy(&b[..end]).into_owned(),
        b.get(end + 1..).unwrap_or(&[]),
    )
}

#[derive(Debug)]
enum Item {
    Query {
        sql: String,
        start_ns: u64,
        error: Option<String>,
    },
    Exec {
        sql: String,
        start_ns: u64,
    },
    Sync,
}

/// Who a connection's statements run as: the startup message's `user` and
/// `database` (which defaults to the user). Kept with its RED rows, so
/// that a slow statement seen on the wire can be planned with `EXPLAIN` as
/// the same user on the same database.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DbId {
    pub user: String,
    pub name: String,
}

impl DbId {
    /// From a startup message's payload (after its protocol code):
    /// `name\0value\0` pairs ended by an empty name.
    fn from_startup(params: &[u8]) -> Option<DbId> {
        let (mut user, mut name) = (None, None);
        let mut rest = params;
        while !rest.is_empty() {
            let (k, r) = cstr(rest);
            if k.is_empty() {
                break;
            }
            let (v, r) = cstr(r);
            match k.as_str() {
                "user" => user = Some(v),
                "database" => name = Some(v),
                _ => {}
            }
            rest = r;
        }
        let user = user.filter(|u| !u.is_empty())?;
        let name = name
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| user.clone());
        Some(DbId { user, name })
    }
}

/// One PostgreSQL connection, server side.
pub struct Conn {
    input: Reader,
    output: Reader,
    /// SSLRequest/GSSENCRequest answers still to come.
    answers: usize,
    statements: HashMap<String, String>,
    portals: HashMap<String, String>,
    pending: VecDeque<Item>,
    /// When the extended-protocol messages of the current cycle began.
    cycle_start: Option<u64>,
    /// The startup message's user and database (unknown on a connection
    /// picked up after it).
    db: Option<Arc<DbId>>,
    /// Statements that could not be followed to their end.
    pub unparsed: u64,
    stopped: bool,
}

impl Default for Conn {
    fn default() -> Self {
        Conn::new(true)
    }
}

/// Whether the first bytes a client sent are a PostgreSQL startup,
/// SSLRequest or GSSENCRequest message.
pub fn looks_like(data: &[u8]) -> bool {
    if data.len() < 8 {
        return false;
    }
    let len = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
    let code = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
    (8..=10_000).contains(&len) && matches!(code, PROTOCOL_3 | SSL_REQUEST | GSSENC_REQUEST)
}

/// The SQLSTATE field of an ErrorResponse payload.
fn sqlstate(p: &[u8]) -> String {
    let mut rest = p;
    while let Some((&t, r)) = rest.split_first() {
        if t == 0 {
            break;
        }
        let (v, r) = cstr(r);
        if t == b'C' {
            return v;
        }
        rest = r;
    }
    "?????".into()
}

impl Conn {
    /// A connection seen from its startup message, or (`false`) picked up
    /// later (already in the typed-message phase).
    pub fn new(from_start: bool) -> Self {
        Conn {
            input: Reader::new(from_start),
            output: Reader::new(false),
            answers: 0,
            statements: HashMap::default(),
            portals: HashMap::default(),
            pending: VecDeque::new(),
            cycle_start: None,
            db: None,
            unparsed: 0,
            stopped: false,
        }
    }

    fn stop(&mut self) {
        if !self.stopped {
            self.stopped = true;
            self.unparsed += self
                .pending
                .iter()
                .filter(|i| !matches!(i, Item::Sync))
                .count() as u64;
            self.pending.clear();
        }
    }

    fn remember(map: &mut HashMap<String, String>, k: String, v: String) {
        if map.len() >= MAX_NAMES && !map.contains_key(&k) {
            map.clear();
        }
        map.insert(k, v);
    }

    /// Bytes the server read: the client's messages.
    pub fn on_read(&mut self, ts_ns: u64, len: u32, data: &[u8]) {
        if self.stopped {
            return;
        }
        let mut msgs = Vec::new();
        let mut none = 0;
        self.input.feed(len, data, &mut msgs, &mut none);
        for m in msgs {
            if self.pending.len() >= MAX_PENDING {
                self.stop();
                return;
            }
            match m.kind {
                0 => {
                    let code = m
                        .payload
                        .get(..4)
                        .map_or(0, |c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
                    if matches!(code, SSL_REQUEST | GSSENC_REQUEST) {
                        self.answers += 1;
                    } else if code == PROTOCOL_3 {
                        self.db =
                            DbId::from_startup(m.payload.get(4..).unwrap_or(&[])).map(Arc::new);
                    }
                }
                b'Q' => {
                    let (sql, _) = cstr(&m.payload);
                    self.pending.push_back(Item::Query {
                        sql: normalise_sql(&sql),
                        start_ns: ts_ns,
                        error: None,
                    });
                }
                b'P' => {
                    self.cycle_start.get_or_insert(ts_ns);
                    let (name, rest) = cstr(&m.payload);
                    let (sql, _) = cstr(rest);
                    Self::remember(&mut self.statements, name, normalise_sql(&sql));
                }
                b'B' => {
                    self.cycle_start.get_or_insert(ts_ns);
                    let (portal, rest) = cstr(&m.payload);
                    let (stmt, _) = cstr(rest);
                    let sql = self
                        .statements
                        .get(&stmt)
                        .cloned()
                        .unwrap_or_else(|| "?".into());
                    Self::remember(&mut self.portals, portal, sql);
                }
                b'E' => {
                    let (portal, _) = cstr(&m.payload);
                    let sql = self
                        .portals
                        .get(&portal)
                        .cloned()
                        .unwrap_or_else(|| "?".into());
                    let start_ns = *self.cycle_start.get_or_insert(ts_ns);
                    self.pending.push_back(Item::Exec { sql, start_ns });
                }
                b'S' => {
                    self.cycle_start = None;
                    self.pending.push_back(Item::Sync);
                }
                _ => {}
            }
        }
        if self.input.lost {
            self.stop();
        }
    }

    /// Bytes the server wrote: its messages.
    pub fn on_write(&mut self, ts_ns: u64, len: u32, data: &[u8], out: &mut Vec<Exchange>) {
        if self.stopped {
            return;
        }
        let mut msgs = Vec::new();
        let mut answers = self.answers;
        self.output.feed(len, data, &mut msgs, &mut answers);
        let answered = self.answers - answers;
        self.answers = answers;
        for (i, m) in msgs.into_iter().enumerate() {
            if i < answered {
                if m.kind == b'S' {
                    // TLS from here on: nothing to parse.
                    self.stop();
                    return;
                }
                continue;
            }
            match m.kind {
                b'C' | b'I' | b's' => match self.pending.front_mut() {
                    Some(Item::Exec { .. }) => {
                        if let Some(Item::Exec { sql, start_ns }) = self.pending.pop_front() {
                            out.push(exchange(sql, start_ns, ts_ns, None, &self.db));
                        }
                    }
                    Some(Item::Query { .. }) => {}
                    _ => {
                        self.stop();
                        return;
                    }
                },
                b'E' => {
                    let code = sqlstate(&m.payload);
                    match self.pending.front_mut() {
                        Some(Item::Exec { .. }) => {
                            if let Some(Item::Exec { sql, start_ns }) = self.pending.pop_front() {
                                out.push(exchange(sql, start_ns, ts_ns, Some(code), &self.db));
                            }
                            // The server skips to the next Sync.
                            while matches!(self.pending.front(), Some(Item::Exec { .. })) {
                                self.pending.pop_front();
                            }
                        }
                        Some(Item::Query { error, .. }) => {
                            error.get_or_insert(code);
                        }
                        _ => {}
                    }
                }
                b'Z' => {
                    while matches!(self.pending.front(), Some(Item::Exec { .. })) {
                        self.pending.pop_front();
                        self.unparsed += 1;
                    }
                    if let Some(Item::Query {
                        sql,
                        start_ns,
                        error,
                    }) = self.pending.pop_front()
                    {
                        out.push(exchange(sql, start_ns, ts_ns, error, &self.db));
                    }
                }
                _ => {}
            }
        }
        if self.output.lost {
            self.stop();
        }
    }
}

fn exchange(
    sql: String,
    start_ns: u64,
    end_ns: u64,
    error: Option<String>,
    db: &Option<Arc<DbId>>,
) -> Exchange {
    Exchange {
        method: "SQL".into(),
        target: sql,
        status: if error.is_some() { 500 } else { 200 },
        start_ns,
        end_ns,
        bytes_in: 0,
        bytes_out: 0,
        error_code: error,
        db: db.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut m = vec![kind];
        m.extend_from_slice(&(payload.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(payload);
        m
    }

    fn z() -> Vec<u8> {
        msg(b'Z', b"I")
    }

    fn error(code: &str) -> Vec<u8> {
        msg(b'E', format!("SERROR\0C{code}\0Mboom\0\0").as_bytes())
    }

    fn read(c: &mut Conn, ts: u64, b: &[u8]) {
        c.on_read(ts, b.len() as u32, b);
    }

    fn write(c: &mut Conn, ts: u64, b: &[u8], out: &mut Vec<Exchange>) {
        c.on_write(ts, b.len() as u32, b, out);
    }

    #[test]
    fn normalises_literals_comments_and_lists() {
        assert_eq!(
            normalise_sql(
                "UPDATE pgbench_accounts SET abalance = abalance + -4321 WHERE aid = 12345;"
            ),
            "UPDATE pgbench_accounts SET abalance = abalance + ? WHERE aid = ?"
        );
        assert_eq!(
            normalise_sql(
                "select * from t1 -- c\n where name = 'o''brien' and id in (1, 2,3) /* x */ and v = $1"
            ),
            "select * from t1 where name = ? and id in (?) and v = $1"
        );
        assert_eq!(normalise_sql("  SELECT   1.5e3  "), "SELECT ?");
        // A unary minus goes with its literal; a list of literals is one.
        assert_eq!(normalise_sql("SELECT a-1, -2, b - 3"), "SELECT a-?, b - ?");
        assert!(normalise_sql(&"select 1, ".repeat(100)).len() <= MAX_SQL);
    }

    #[test]
    fn simple_queries_with_ssl_refused_and_an_error() {
        let mut c = Conn::new(true);
        let mut out = Vec::new();
        let mut ssl = 8u32.to_be_bytes().to_vec();
        ssl.extend_from_slice(&SSL_REQUEST.to_be_bytes());
        assert!(looks_like(&ssl));
        read(&mut c, 0, &ssl);
        write(&mut c, 1, b"N", &mut out);
        let mut startup = Vec::new();
        let body = b"\x00\x03\x00\x00user\0shop\0application_name\0psql\0\0";
        startup.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        startup.extend_from_slice(body);
        read(&mut c, 2, &startup);
        let mut hello = msg(b'R', &[0, 0, 0, 0]);
        hello.extend(msg(b'S', b"a\0b\0"));
        hello.extend(z());
        write(&mut c, 3, &hello, &mut out);
        read(&mut c, 10, &msg(b'Q', b"SELECT 1\0"));
        let mut r = msg(b'T', &[0, 0]);
        r.extend(msg(b'D', &[0, 0]));
        r.extend(msg(b'C', b"SELECT 1\0"));
        r.extend(z());
        write(&mut c, 30, &r, &mut out);
        read(&mut c, 40, &msg(b'Q', b"SELECT * FROM nope\0"));
        let mut r = error("42P01");
        r.extend(z());
        write(&mut c, 45, &r, &mut out);
        let got: Vec<_> = out
            .iter()
            .map(|x| {
                (
                    x.target.as_str(),
                    x.status,
                    x.duration_ns(),
                    x.error_code.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("SELECT ?", 200, 20, None),
                ("SELECT * FROM nope", 500, 5, Some("42P01"))
            ]
        );
        // The database defaults to the user's name.
        let db = DbId {
            user: "shop".into(),
            name: "shop".into(),
        };
        assert!(out.iter().all(|x| x.db.as_deref() == Some(&db)));
        assert_eq!(
            DbId::from_startup(b"database\0orders\0user\0app\0\0"),
            Some(DbId {
                user: "app".into(),
                name: "orders".into()
            })
        );
        assert_eq!(DbId::from_startup(b"database\0orders\0\0"), None);
    }

    #[test]
    fn extended_protocol_pipelined_with_an_error_that_skips_to_sync() {
        let mut c = Conn::new(false);
        let mut out = Vec::new();
        let mut b = Vec::new();
        // Cycle 1: a named statement, two executes.
        b.extend(msg(b'P', b"s1\0INSERT INTO t VALUES ($1)\0\0\0"));
        b.extend(msg(b'B', b"\0s1\0\0\0\0\0\0\0"));
        b.extend(msg(b'E', b"\0\0\0\0\0"));
        b.extend(msg(b'B', b"\0s1\0\0\0\0\0\0\0"));
        b.extend(msg(b'E', b"\0\0\0\0\0"));
        b.extend(msg(b'S', b""));
        // Cycle 2: the first execute fails, the second is skipped.
        b.extend(msg(b'B', b"\0s1\0\0\0\0\0\0\0"));
        b.extend(msg(b'E', b"\0\0\0\0\0"));
        b.extend(msg(b'E', b"\0\0\0\0\0"));
        b.extend(msg(b'S', b""));
        read(&mut c, 100, &b);
        let mut r = msg(b'1', b"");
        r.extend(msg(b'2', b""));
        r.extend(msg(b'C', b"INSERT 0 1\0"));
        r.extend(msg(b'2', b""));
        r.extend(msg(b'C', b"INSERT 0 1\0"));
        r.extend(z());
        write(&mut c, 200, &r, &mut out);
        let mut r = msg(b'2', b"");
        r.extend(error("23505"));
        r.extend(z());
        write(&mut c, 300, &r, &mut out);
        let got: Vec<_> = out
            .iter()
            .map(|x| (x.target.as_str(), x.status, x.error_code.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                ("INSERT INTO t VALUES ($1)", 200, None),
                ("INSERT INTO t VALUES ($1)", 200, None),
                ("INSERT INTO t VALUES ($1)", 500, Some("23505")),
            ]
        );
        assert_eq!(c.unparsed, 0);
    }

    #[test]
    fn rows_beyond_the_capture_are_skipped_and_lost_headers_stop_the_parse() {
        let mut c = Conn::new(false);
        let mut out = Vec::new();
        read(&mut c, 0, &msg(b'Q', b"SELECT big\0"));
        let row = msg(b'D', &vec![7u8; 100_000]);
        let mut w = row.clone();
        w.extend(msg(b'C', b"SELECT 1\0"));
        w.extend(z());
        // Only the first 4 KiB captured: the row is skipped by length but
        // the C and Z headers after it are not captured.
        c.on_write(10, w.len() as u32, &w[..4096], &mut out);
        assert!(out.is_empty());
        assert_eq!(c.unparsed, 1);
        // A row split across writes, all captured.
        let mut c = Conn::new(false);
        read(&mut c, 0, &msg(b'Q', b"SELECT big\0"));
        c.on_write(10, 100_005, &row[..4096], &mut out);
        let mut w = msg(b'C', b"SELECT 1\0");
        w.extend(z());
        write(&mut c, 20, &w, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].end_ns, 20);
    }
}
