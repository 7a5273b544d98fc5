//! HTTP/1.x reassembly for one server-side connection: the bytes the
//! server read (requests) and wrote (responses), as the BPF programs saw
//! them (each syscall's byte count and its first bytes), become exchanges:
//! method, route, status, duration, bytes.
//!
//! Requests queue in arrival order and responses take them in order, which
//! is what HTTP/1.1 keep-alive and pipelining guarantee. Message bodies are
//! skipped by `Content-Length`, so bytes beyond what was captured are
//! counted, not needed. A chunked or close-delimited response ends at the
//! next request, at a final `0\r\n\r\n` chunk, or when the connection
//! closes. Whatever cannot be parsed puts the stream in `Lost` until a
//! syscall starts with a new message.

use std::borrow::Cow;
use std::collections::VecDeque;

/// Longest request or response head kept while waiting for its end.
const MAX_HEAD: usize = 16 * 1024;
/// Requests waiting for a response on one connection.
const MAX_PENDING: usize = 256;
const MAX_HEADERS: usize = 64;

/// One request and its response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// The HTTP method, or the protocol's stand-in (`GRPC`, `SQL`, `REDIS`,
    /// `?`): static for the usual ones, so a request allocates none.
    pub method: Cow<'static, str>,
    pub target: String,
    pub status: u16,
    /// Start of the request (the read that brought its first bytes).
    pub start_ns: u64,
    /// The write that finished the response.
    pub end_ns: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// The protocol's own error code, when it failed: a gRPC status code,
    /// a PostgreSQL SQLSTATE.
    pub error_code: Option<String>,
    /// PostgreSQL: the connection's user and database, when its startup
    /// was seen.
    pub db: Option<std::sync::Arc<super::pg::DbId>>,
}

impl Exchange {
    pub fn duration_us(&self) -> u64 {
        self.duration_ns() / 1000
    }

    pub fn duration_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    /// Waiting for (the rest of) a head; the bytes so far.
    Head(Vec<u8>),
    /// Skipping this many body bytes.
    Body(u64),
    /// A body whose end is not known from its head (chunked, or until close).
    Open,
    /// Lost track: wait for a syscall that starts a new message.
    Lost,
}

#[derive(Debug)]
struct Request {
    method: Cow<'static, str>,
    target: String,
    start_ns: u64,
    bytes: u64,
}

#[derive(Debug)]
struct Response {
    req: Request,
    status: u16,
    bytes: u64,
    end_ns: u64,
}

enum Head<T> {
    Done(T, usize),
    Partial,
    Bad,
}

struct ReqHead {
    method: Cow<'static, str>,
    target: String,
    body: Body,
}

struct RespHead {
    status: u16,
    body: Body,
}

#[derive(Clone, Copy)]
enum Body {
    Len(u64),
    Chunked,
    /// No length: until the connection closes (responses only).
    Unbounded,
}

fn body_of(headers: &[httparse::Header<'_>]) -> Option<Body> {
    let mut body = None;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if std::str::from_utf8(h.value)
                .ok()?
                .to_ascii_lowercase()
                .contains("chunked")
            {
                return Some(Body::Chunked);
            }
        } else if h.name.eq_ignore_ascii_case("content-length") {
            body = Some(Body::Len(
                std::str::from_utf8(h.value).ok()?.trim().parse().ok()?,
            ));
        }
    }
    Some(body.unwrap_or(Body::Len(0)))
}

/// A method as a static string when it is a standard one.
fn method_name(m: &str) -> Cow<'static, str> {
    const KNOWN: &[&str] = &[
        "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE",
    ];
    match KNOWN.iter().find(|k| **k == m) {
        Some(k) => Cow::Borrowed(k),
        None => Cow::Owned(m.to_string()),
    }
}

fn parse_request(buf: &[u8]) -> Head<ReqHead> {
    // Uninitialised: parsing a head does not first write 64 empty headers.
    let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) => {
            let (Some(method), Some(target)) = (req.method, req.path) else {
                return Head::Bad;
            };
            match body_of(req.headers) {
                // A request without a length has no body (RFC 9112 6.3).
                Some(body) => Head::Done(
                    ReqHead {
                        method: method_name(method),
                        target: target.to_string(),
                        body,
                    },
                    n,
                ),
                None => Head::Bad,
            }
        }
        Ok(httparse::Status::Partial) => Head::Partial,
        Err(_) => Head::Bad,
    }
}

fn parse_response(buf: &[u8]) -> Head<RespHead> {
    let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut headers,
    ) {
        Ok(httparse::Status::Complete(n)) => {
            let Some(status) = resp.code else {
                return Head::Bad;
            };
            let explicit = resp.headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case("content-length")
                    || h.name.eq_ignore_ascii_case("transfer-encoding")
            });
            match body_of(resp.headers) {
                Some(body) => Head::Done(
                    RespHead {
                        status,
                        body: if explicit { body } else { Body::Unbounded },
                    },
                    n,
                ),
                None => Head::Bad,
            }
        }
        Ok(httparse::Status::Partial) => Head::Partial,
        Err(_) => Head::Bad,
    }
}

/// Offers `more` to a head gathered in `buf`. A head that starts here is
/// parsed in place (the common case: one syscall holds it) and kept only
/// if incomplete; one split across syscalls is parsed from `buf`.
fn gather<T>(buf: &mut Vec<u8>, more: &[u8], parse: fn(&[u8]) -> Head<T>) -> Head<T> {
    if buf.is_empty() {
        let head = parse(more);
        if matches!(head, Head::Partial) {
            buf.extend_from_slice(more);
        }
        head
    } else {
        buf.extend_from_slice(more);
        parse(buf)
    }
}

const METHODS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"PATCH ",
    b"HEAD ",
    b"OPTIONS ",
    b"CONNECT ",
    b"TRACE ",
];

fn starts_request(data: &[u8]) -> bool {
    METHODS.iter().any(|m| data.starts_with(m))
}

fn starts_response(data: &[u8]) -> bool {
    data.starts_with(b"HTTP/1.")
}

/// The state of one connection.
#[derive(Debug)]
pub struct Conn {
    input: State,
    output: State,
    pending: VecDeque<Request>,
    /// When the request head being read began.
    head_start_ns: u64,
    /// The response being written.
    current: Option<Response>,
    /// Responses with no request to pair (connection older than the capture).
    pub unpaired: u64,
}

impl Default for Conn {
    fn default() -> Self {
        Conn {
            input: State::Head(Vec::new()),
            output: State::Head(Vec::new()),
            pending: VecDeque::new(),
            head_start_ns: 0,
            current: None,
            unpaired: 0,
        }
    }
}

impl Conn {
    /// Bytes the server read: `len` moved, `data` its first bytes.
    pub fn on_read(&mut self, ts_ns: u64, len: u32, data: &[u8], out: &mut Vec<Exchange>) {
        // A new request ends a response whose length was not known.
        if matches!(self.output, State::Open) {
            self.finish(out);
            self.output = State::Head(Vec::new());
        }
        if matches!(self.input, State::Lost | State::Open) && starts_request(data) {
            self.input = State::Head(Vec::new());
        }
        let mut rest = data;
        while !rest.is_empty() {
            match &mut self.input {
                State::Head(buf) => {
                    let before = buf.len();
                    if before == 0 {
                        self.head_start_ns = ts_ns;
                    }
                    let take = rest.len().min(MAX_HEAD - before);
                    match gather(buf, &rest[..take], parse_request) {
                        Head::Done(h, n) => {
                            let used = n - before;
                            rest = &rest[used..];
                            let mut req = Request {
                                method: h.method,
                                target: h.target,
                                start_ns: self.head_start_ns,
                                bytes: n as u64,
                            };
                            self.input = match h.body {
                                Body::Len(0) => State::Head(Vec::new()),
                                Body::Len(n) => State::Body(n),
                                Body::Chunked | Body::Unbounded => State::Open,
                            };
                            if let Body::Len(n) = h.body {
                                req.bytes += n;
                            }
                            if self.pending.len() < MAX_PENDING {
                                self.pending.push_back(req);
                            }
                        }
                        Head::Partial if take == rest.len() && buf.len() < MAX_HEAD => {
                            rest = &[];
                        }
                        _ => {
                            self.input = State::Lost;
                            rest = &[];
                        }
                    }
                }
                State::Body(n) => {
                    let take = (*n).min(rest.len() as u64);
                    *n -= take;
                    rest = &rest[take as usize..];
                    if *n == 0 {
                        self.input = State::Head(Vec::new());
                    }
                }
                State::Open | State::Lost => rest = &[],
            }
        }
        let gap = u64::from(len).saturating_sub(data.len() as u64);
        if gap > 0 {
            self.input = match std::mem::replace(&mut self.input, State::Lost) {
                State::Body(n) if n > gap => State::Body(n - gap),
                State::Body(n) if n == gap => State::Head(Vec::new()),
                State::Open => State::Open,
                _ => State::Lost,
            };
        }
    }

    /// Bytes the server wrote.
    pub fn on_write(&mut self, ts_ns: u64, len: u32, data: &[u8], out: &mut Vec<Exchange>) {
        if matches!(self.input, State::Open) {
            // The request body (chunked) ended before the response began.
            self.input = State::Head(Vec::new());
        }
        if matches!(self.output, State::Lost) && starts_response(data) {
            self.output = State::Head(Vec::new());
        }
        let mut rest = data;
        let mut moved = u64::from(len);
        while !rest.is_empty() {
            match &mut self.output {
                State::Head(buf) => {
                    let before = buf.len();
                    let take = rest.len().min(MAX_HEAD - before);
                    match gather(buf, &rest[..take], parse_response) {
                        Head::Done(h, n) => {
                            let used = n - before;
                            rest = &rest[used..];
                            moved = moved.saturating_sub(used as u64);
                            if h.status < 200 {
                                // 1xx: an interim response; the final one follows.
                                self.output = State::Head(Vec::new());
                                continue;
                            }
                            let Some(req) = self.pending.pop_front() else {
                                self.unpaired += 1;
                                self.output = State::Lost;
                                break;
                            };
                            let no_body =
                                req.method == "HEAD" || h.status == 204 || h.status == 304;
                            self.current = Some(Response {
                                req,
                                status: h.status,
                                bytes: n as u64,
                                end_ns: ts_ns,
                            });
                            self.output = match h.body {
                                _ if no_body => State::Head(Vec::new()),
                                Body::Len(0) => State::Head(Vec::new()),
                                Body::Len(n) => State::Body(n),
                                Body::Chunked | Body::Unbounded => State::Open,
                            };
                            if matches!(self.output, State::Head(_)) {
                                self.finish(out);
                            }
                        }
                        Head::Partial if take == rest.len() && buf.len() < MAX_HEAD => {
                            moved = moved.saturating_sub(rest.len() as u64);
                            rest = &[];
                        }
                        _ => {
                            self.output = State::Lost;
                            rest = &[];
                        }
                    }
                }
                State::Body(n) => {
                    // Skip by the syscall's byte count: the capture may be short.
                    let take = (*n).min(moved);
                    *n -= take;
                    moved -= take;
                    let captured = (take as usize).min(rest.len());
                    rest = &rest[captured..];
                    if let Some(c) = &mut self.current {
                        c.bytes += take;
                        c.end_ns = ts_ns;
                    }
                    if *n == 0 {
                        self.output = State::Head(Vec::new());
                        self.finish(out);
                    } else if rest.is_empty() {
                        moved = 0;
                    }
                }
                State::Open => {
                    if let Some(c) = &mut self.current {
                        c.bytes += moved;
                        c.end_ns = ts_ns;
                    }
                    // A chunked body's last chunk, fully captured, ends it.
                    if u64::from(len) == data.len() as u64 && rest.ends_with(b"0\r\n\r\n") {
                        self.output = State::Head(Vec::new());
                        self.finish(out);
                    }
                    moved = 0;
                    rest = &[];
                }
                State::Lost => {
                    moved = 0;
                    rest = &[];
                }
            }
        }
        // Bytes beyond the capture.
        if moved > 0 {
            match &mut self.output {
                State::Body(n) => {
                    let take = (*n).min(moved);
                    *n -= take;
                    if let Some(c) = &mut self.current {
                        c.bytes += take;
                        c.end_ns = ts_ns;
                    }
                    if *n == 0 {
                        self.output = State::Head(Vec::new());
                        self.finish(out);
                    }
                }
                State::Open => {
                    if let Some(c) = &mut self.current {
                        c.bytes += moved;
                        c.end_ns = ts_ns;
                    }
                }
                State::Head(buf) if buf.is_empty() => {}
                _ => self.output = State::Lost,
            }
        }
    }

    /// The connection closed: a response without a known length ends here.
    pub fn on_close(&mut self, out: &mut Vec<Exchange>) {
        if matches!(self.output, State::Open) {
            self.finish(out);
        }
    }

    /// Ends a response whose length is unknown if nothing was written for
    /// `idle_ns` (so a chunked response on an idle keep-alive connection is
    /// not held forever).
    pub fn expire(&mut self, now_ns: u64, idle_ns: u64, out: &mut Vec<Exchange>) {
        if matches!(self.output, State::Open)
            && self
                .current
                .as_ref()
                .is_some_and(|c| now_ns.saturating_sub(c.end_ns) > idle_ns)
        {
            self.finish(out);
            self.output = State::Head(Vec::new());
        }
    }

    fn finish(&mut self, out: &mut Vec<Exchange>) {
        if let Some(r) = self.current.take() {
            out.push(Exchange {
                method: r.req.method,
                target: r.req.target,
                status: r.status,
                start_ns: r.req.start_ns,
                end_ns: r.end_ns,
                bytes_in: r.req.bytes,
                bytes_out: r.bytes,
                error_code: None,
                db: None,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, body: &str) -> String {
        format!(
            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    fn feed_in(c: &mut Conn, ts: u64, s: &str, out: &mut Vec<Exchange>) {
        c.on_read(ts, s.len() as u32, s.as_bytes(), out);
    }

    fn feed_out(c: &mut Conn, ts: u64, s: &str, out: &mut Vec<Exchange>) {
        c.on_write(ts, s.len() as u32, s.as_bytes(), out);
    }

    #[test]
    fn keep_alive_pairs_in_order() {
        let mut c = Conn::default();
        let mut out = Vec::new();
        for i in 0..3u64 {
            feed_in(
                &mut c,
                1000 * i,
                &format!("GET /api/orders/{i} HTTP/1.1\r\nHost: x\r\n\r\n"),
                &mut out,
            );
            feed_out(
                &mut c,
                1000 * i + 500_000,
                &resp(200 + i as u16, "hello"),
                &mut out,
            );
        }
        assert_eq!(out.len(), 3);
        assert_eq!(out[2].target, "/api/orders/2");
        assert_eq!(out[2].status, 202);
        assert_eq!(out[0].duration_us(), 500);
        assert_eq!(out[0].bytes_out, resp(200, "hello").len() as u64);
    }

    #[test]
    fn pipelined_requests_in_one_read_and_responses_in_one_write() {
        let mut c = Conn::default();
        let mut out = Vec::new();
        let reqs = "GET /a HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcHEAD /c HTTP/1.1\r\n\r\n";
        feed_in(&mut c, 10_000, reqs, &mut out);
        let head_c = "HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"; // HEAD: no body
        let all = format!("{}{}{}", resp(200, "x"), resp(500, "boom"), head_c);
        feed_out(&mut c, 20_000, &all, &mut out);
        let got: Vec<_> = out
            .iter()
            .map(|e| (&*e.method, e.target.as_str(), e.status))
            .collect();
        assert_eq!(
            got,
            [("GET", "/a", 200), ("POST", "/b", 500), ("HEAD", "/c", 200)]
        );
        assert_eq!(
            out[1].bytes_in,
            "POST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\n".len() as u64 + 3
        );
    }

    #[test]
    fn split_heads_and_bodies_beyond_the_capture() {
        let mut c = Conn::default();
        let mut out = Vec::new();
        feed_in(&mut c, 1_000, "GET /big HT", &mut out);
        feed_in(&mut c, 2_000, "TP/1.1\r\n\r\n", &mut out);
        let head = "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n";
        // Header and the start of the body captured; 100 000 bytes moved in
        // three writes, most of them not captured.
        let first = format!("{head}{}", "x".repeat(100));
        c.on_write(
            3_000_000,
            (head.len() + 60_000) as u32,
            first.as_bytes(),
            &mut out,
        );
        assert!(out.is_empty());
        c.on_write(4_000_000, 30_000, b"xxxx", &mut out);
        assert!(out.is_empty());
        c.on_write(5_000_000, 10_000, b"xxxx", &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].start_ns, 1_000);
        assert_eq!(out[0].end_ns, 5_000_000);
        assert_eq!(out[0].bytes_out, (head.len() + 100_000) as u64);
        // The connection goes on.
        feed_in(&mut c, 6_000_000, "GET /next HTTP/1.1\r\n\r\n", &mut out);
        feed_out(&mut c, 7_000_000, &resp(404, ""), &mut out);
        assert_eq!(out[1].status, 404);
    }

    #[test]
    fn chunked_and_close_delimited_responses() {
        let mut c = Conn::default();
        let mut out = Vec::new();
        feed_in(&mut c, 0, "GET /c HTTP/1.1\r\n\r\n", &mut out);
        feed_out(
            &mut c,
            1_000,
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
            &mut out,
        );
        assert!(out.is_empty());
        feed_out(&mut c, 2_000, "0\r\n\r\n", &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].end_ns, 2_000);
        // HTTP/1.0 style: no length, ends at close.
        feed_in(&mut c, 3_000, "GET /old HTTP/1.0\r\n\r\n", &mut out);
        feed_out(
            &mut c,
            4_000,
            "HTTP/1.0 200 OK\r\nServer: x\r\n\r\nbody",
            &mut out,
        );
        feed_out(&mut c, 5_000, "more", &mut out);
        assert_eq!(out.len(), 1);
        c.on_close(&mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].end_ns, 5_000);
        assert_eq!(out[1].target, "/old");
    }

    #[test]
    fn garbage_and_unpaired_responses_do_not_derail_the_stream() {
        let mut c = Conn::default();
        let mut out = Vec::new();
        feed_out(&mut c, 0, &resp(200, "orphan"), &mut out);
        assert_eq!(c.unpaired, 1);
        feed_in(&mut c, 1, "\x16\x03\x01 binary", &mut out);
        feed_in(&mut c, 2, "GET /ok HTTP/1.1\r\n\r\n", &mut out);
        feed_out(&mut c, 3, &resp(201, ""), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].status, 201);
        // An oversized head is dropped, not buffered forever.
        let huge = format!("GET /x HTTP/1.1\r\nA: {}", "y".repeat(20_000));
        feed_in(&mut c, 4, &huge, &mut out);
        assert!(matches!(c.input, State::Lost));
    }

    #[test]
    fn interim_responses_are_skipped() {
        let mut c = Conn::default();
        let mut out = Vec::new();
        feed_in(
            &mut c,
            0,
            "POST /u HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
            &mut out,
        );
        feed_out(&mut c, 1, "HTTP/1.1 100 Continue\r\n\r\n", &mut out);
        feed_in(&mut c, 2, "ab", &mut out);
        feed_out(&mut c, 3, &resp(200, "ok"), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].status, 200);
    }
}
