//! HTTP/2 (cleartext, prior knowledge: h2c as gRPC uses it) for one
//! server-side connection: the frames the server read and wrote, as the BPF
//! programs saw them (each syscall's byte count and its first bytes),
//! become one exchange per stream.
//!
//! - Frames are followed in each direction by their 9-byte headers; a
//!   payload that is not needed (DATA, WINDOW_UPDATE, ...) is skipped by
//!   length, so it need not have been captured. Header blocks (HEADERS and
//!   CONTINUATION) must be captured whole: they are HPACK-decoded with a
//!   decoder per direction whose dynamic table lives as long as the
//!   connection (`httlib-hpack`: its Huffman decoding is table-driven;
//!   `loona-hpack`, used before, built a hash map of the Huffman code for
//!   every string it decoded: 5-7 µs of the agent's CPU per request).
//! - A request is a client stream: `:method`, `:path` (the route; gRPC's
//!   `/package.Service/Method`) and its start, the read that brought its
//!   first HEADERS frame. It ends with the server's frame that carries
//!   END_STREAM (the last DATA frame, or the trailers) or a RST_STREAM in
//!   either direction.
//! - Status: `:status`; for gRPC (`content-type: application/grpc...`) the
//!   `grpc-status` of the trailers (or of a trailers-only response) wins.
//!   gRPC codes that count as server errors are those the OpenTelemetry
//!   semantic conventions mark as errors for servers: UNKNOWN (2),
//!   DEADLINE_EXCEEDED (4), UNIMPLEMENTED (12), INTERNAL (13), UNAVAILABLE
//!   (14), DATA_LOSS (15); any other non-OK code counts as a client error.
//!   A stream the server resets is a server error; one the client resets,
//!   a client error (CANCELLED).
//! - What cannot be known is never guessed: once a header block of a
//!   direction is missed (not captured, or the connection was picked up
//!   mid-stream so the tables' history is unknown), that direction's
//!   dynamic table cannot be trusted again, and every later stream is
//!   reported under the route `{unparsed}` with no status, so it counts as
//!   a request but never as another route's request or error.

use super::http::Exchange;
use httlib_hpack::Decoder;
use rustc_hash::FxHashMap as HashMap;

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The route of a stream whose headers could not be decoded.
pub const UNPARSED: &str = "{unparsed}";
/// Streams open at once on one connection that are tracked; more are
/// counted as unparsed when they end.
const MAX_STREAMS: usize = 1024;
/// Longest header block kept (HEADERS plus CONTINUATION).
const MAX_BLOCK: usize = 64 * 1024;
/// Longest route kept.
const MAX_PATH: usize = 256;
/// HPACK table size a decoder accepts (SETTINGS may raise the 4096 default).
const MAX_TABLE: u32 = 1 << 20;

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const PUSH_PROMISE: u8 = 5;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// gRPC status codes that are server errors (OpenTelemetry, servers).
pub fn grpc_is_server_error(code: u32) -> bool {
    matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
}

/// The HTTP-like status an exchange carries for a gRPC code: 200 for OK,
/// 500 for a server error, 400 for any other code (the RED rows count 5xx
/// as errors and 4xx as client errors).
fn grpc_class(code: u32) -> u16 {
    match code {
        0 => 200,
        c if grpc_is_server_error(c) => 500,
        _ => 400,
    }
}

#[derive(Debug, Default)]
struct Stream {
    /// `None`: the request headers were not decoded.
    method: Option<String>,
    path: String,
    grpc: bool,
    start_ns: u64,
    end_ns: u64,
    status: Option<u16>,
    grpc_status: Option<u32>,
    /// The response headers (or trailers) could not be decoded.
    response_unknown: bool,
    bytes_in: u64,
    bytes_out: u64,
}

/// Where one direction's frame parser is.
#[derive(Debug)]
enum At {
    /// The client preface: this many bytes of it still to come.
    Preface(usize),
    /// A frame header: the bytes of it so far.
    Header(Vec<u8>),
    /// A frame payload: the header, and its bytes so far if it is a
    /// header block (else they are skipped).
    Payload {
        kind: u8,
        flags: u8,
        stream: u32,
        left: u32,
        keep: Option<Vec<u8>>,
    },
    /// Lost the frame boundaries: wait for a syscall that starts with a
    /// plausible frame header.
    Lost,
}

struct Side {
    at: At,
    hpack: Decoder<'static>,
    /// Headers decoded from a block (reused).
    decoded: Vec<(Vec<u8>, Vec<u8>, u8)>,
    /// The dynamic table can be trusted (no header block was missed).
    hpack_ok: bool,
    /// A header block in progress (HEADERS without END_HEADERS), with
    /// when its HEADERS frame began.
    block: Option<(u32, u8, Vec<u8>, u64)>,
    /// When the frame being read began (its first byte's syscall).
    frame_ns: u64,
}

impl Side {
    fn new(at: At, hpack_ok: bool) -> Self {
        // The table starts at HPACK's 4096 bytes; the encoder may grow it
        // up to MAX_TABLE (SETTINGS).
        let mut hpack = Decoder::default();
        hpack.set_max_dynamic_size(MAX_TABLE);
        quiet_decoder_panics();
        Side {
            at,
            hpack,
            decoded: Vec::new(),
            hpack_ok,
            block: None,
            frame_ns: 0,
        }
    }

    /// Lost track of the frames: any header block may have been missed.
    fn lose(&mut self) {
        self.at = At::Lost;
        self.hpack_ok = false;
        self.block = None;
    }
}

/// One HTTP/2 connection, server side.
pub struct Conn {
    input: Side,
    output: Side,
    streams: HashMap<u32, Stream>,
    /// Streams that ended without a decoded request or response.
    pub unparsed: u64,
}

/// A complete header block: stream, HEADERS flags, the headers kept (None:
/// not decodable), when its HEADERS frame began.
type Block = (u32, u8, Option<Vec<(String, String)>>, u64);

/// A frame, parsed from one direction.
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    /// The payload, for header blocks and RST_STREAM.
    payload: Vec<u8>,
    /// When its first byte was read or written.
    start_ns: u64,
}

fn frame_header(h: &[u8]) -> (u32, u8, u8, u32) {
    let len = u32::from_be_bytes([0, h[0], h[1], h[2]]);
    let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
    (len, h[3], h[4], stream)
}

/// Whether `b` starts with a frame header an HTTP/2 peer could send.
pub fn plausible_frame(b: &[u8]) -> bool {
    if b.len() < 9 {
        return false;
    }
    let (len, kind, _, stream) = frame_header(b);
    let reserved = b[5] & 0x80 != 0;
    !reserved
        && kind <= CONTINUATION
        && len <= 1 << 20
        && match kind {
            // SETTINGS, PING, GOAWAY: connection frames.
            4 | 6 | 7 => stream == 0,
            // WINDOW_UPDATE: either.
            8 => true,
            // Stream frames on client-initiated (odd) streams; PUSH_PROMISE
            // is not expected.
            5 => false,
            _ => stream % 2 == 1,
        }
}

fn needed(kind: u8) -> bool {
    matches!(kind, HEADERS | CONTINUATION | RST_STREAM)
}

impl Side {
    /// Feeds one syscall's bytes: `data` (its first bytes) and `more`
    /// (further pieces, each with where it begins) captured out of `len`
    /// moved. Bytes between the pieces and after the last one were not
    /// captured: they can only be a payload that is not needed (the
    /// programs send every frame header and every payload but DATA's).
    fn feed(
        &mut self,
        ts_ns: u64,
        len: u32,
        data: &[u8],
        more: &[(u32, Vec<u8>)],
        frames: &mut Vec<Frame>,
    ) {
        if matches!(self.at, At::Lost) {
            if plausible_frame(data) {
                self.at = At::Header(Vec::new());
            } else {
                return;
            }
        }
        self.bytes(ts_ns, data, frames);
        let mut at = data.len() as u64;
        for (off, piece) in more {
            if !self.skip(u64::from(*off).saturating_sub(at), frames) {
                return;
            }
            self.bytes(ts_ns, piece, frames);
            at = u64::from(*off) + piece.len() as u64;
        }
        self.skip(u64::from(len).saturating_sub(at), frames);
    }

    /// Skips `n` bytes that were not captured: only a payload that is
    /// not needed can be skipped. False if the frames were lost.
    fn skip(&mut self, n: u64, frames: &mut Vec<Frame>) -> bool {
        if n == 0 {
            return !matches!(self.at, At::Lost);
        }
        match &mut self.at {
            At::Payload {
                left, keep: None, ..
            } if u64::from(*left) >= n => {
                *left -= n as u32;
                self.finish_payload(frames);
                true
            }
            At::Lost => false,
            // A frame header (or a needed payload) was not captured.
            _ => {
                self.lose();
                false
            }
        }
    }

    /// Parses captured bytes that follow the last ones parsed.
    fn bytes(&mut self, ts_ns: u64, data: &[u8], frames: &mut Vec<Frame>) {
        let mut rest = data;
        loop {
            if rest.is_empty() {
                break;
            }
            match &mut self.at {
                At::Preface(left) => {
                    let n = (*left).min(rest.len());
                    let at = PREFACE.len() - *left;
                    if rest[..n] != PREFACE[at..at + n] {
                        self.lose();
                        return;
                    }
                    *left -= n;
                    rest = &rest[n..];
                    if *left == 0 {
                        self.at = At::Header(Vec::new());
                    }
                }
                At::Header(buf) => {
                    if buf.is_empty() {
                        self.frame_ns = ts_ns;
                    }
                    let n = (9 - buf.len()).min(rest.len());
                    buf.extend_from_slice(&rest[..n]);
                    rest = &rest[n..];
                    if buf.len() == 9 {
                        let (left, kind, flags, stream) = frame_header(buf);
                        let keep = needed(kind).then(Vec::new);
                        if keep.is_some() && left as usize > MAX_BLOCK {
                            self.lose();
                            return;
                        }
                        self.at = At::Payload {
                            kind,
                            flags,
                            stream,
                            left,
                            keep,
                        };
                        self.finish_payload(frames);
                    }
                }
                At::Payload { left, keep, .. } => {
                    let n = (*left as usize).min(rest.len());
                    if let Some(k) = keep {
                        k.extend_from_slice(&rest[..n]);
                    }
                    *left -= n as u32;
                    rest = &rest[n..];
                    self.finish_payload(frames);
                }
                At::Lost => return,
            }
        }
    }

    /// Emits the frame whose payload is complete.
    fn finish_payload(&mut self, frames: &mut Vec<Frame>) {
        if let At::Payload {
            kind,
            flags,
            stream,
            left: 0,
            keep,
        } = &mut self.at
        {
            let payload = keep.take().unwrap_or_default();
            frames.push(Frame {
                kind: *kind,
                flags: *flags,
                stream: *stream,
                payload,
                start_ns: self.frame_ns,
            });
            self.at = At::Header(Vec::new());
        }
    }

    /// Collects a header block across HEADERS and CONTINUATION frames;
    /// returns (stream, HEADERS flags, decoded headers or None, when the
    /// HEADERS frame began) when a block is complete.
    fn header_block(&mut self, f: Frame) -> Option<Block> {
        let (stream, flags, mut block, start_ns) = match f.kind {
            HEADERS => {
                let mut p = &f.payload[..];
                let mut pad = 0usize;
                if f.flags & PADDED != 0 {
                    pad = usize::from(*p.first()?);
                    p = &p[1..];
                }
                if f.flags & PRIORITY != 0 {
                    p = p.get(5..)?;
                }
                let p = p.get(..p.len().checked_sub(pad)?)?;
                (f.stream, f.flags, p.to_vec(), f.start_ns)
            }
            CONTINUATION => {
                let (stream, flags, mut b, start_ns) = self.block.take()?;
                if stream != f.stream || b.len() + f.payload.len() > MAX_BLOCK {
                    self.hpack_ok = false;
                    return Some((stream, flags, None, start_ns));
                }
                b.extend_from_slice(&f.payload);
                (stream, flags | (f.flags & END_HEADERS), b, start_ns)
            }
            _ => return None,
        };
        if flags & END_HEADERS == 0 {
            self.block = Some((stream, flags, std::mem::take(&mut block), start_ns));
            return None;
        }
        if !self.hpack_ok {
            return Some((stream, flags, None, start_ns));
        }
        self.decoded.clear();
        // The decoder panics on some malformed blocks (an integer or a
        // string cut short: an index out of bounds) instead of returning
        // an error; either way this direction's table is lost.
        let (hpack, decoded) = (&mut self.hpack, &mut self.decoded);
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            hpack.decode(&mut block, decoded).is_ok()
        }));
        if !matches!(ok, Ok(true)) {
            self.hpack_ok = false;
            return Some((stream, flags, None, start_ns));
        }
        let headers = self
            .decoded
            .iter()
            .filter(|(name, _, _)| {
                name.starts_with(b":") || name == b"content-type" || name == b"grpc-status"
            })
            .map(|(name, value, _)| {
                (
                    String::from_utf8_lossy(name).into_owned(),
                    String::from_utf8_lossy(value).into_owned(),
                )
            })
            .collect();
        Some((stream, flags, Some(headers), start_ns))
    }
}

/// A panic inside the HPACK decoder is a malformed block a client sent,
/// caught in [`Side::header_block`] (set up once, by the first decoder):
/// one debug line, not the default
/// hook's "panicked" message and backtrace hint in the agent's log. Other
/// panics reach the hook that was there.
fn quiet_decoder_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info
                .location()
                .is_some_and(|l| l.file().contains("httlib-hpack"))
            {
                tracing::debug!(%info, "malformed HPACK block (its connection's headers are unparsed from now on)");
            } else {
                previous(info);
            }
        }));
    });
}

impl Conn {
    /// A connection seen from its start (`preface`: the client preface is
    /// still to come), or picked up mid-stream (header tables unknown).
    pub fn new(from_start: bool) -> Self {
        let input_at = if from_start {
            At::Preface(PREFACE.len())
        } else {
            At::Lost
        };
        let output_at = if from_start {
            At::Header(Vec::new())
        } else {
            At::Lost
        };
        Conn {
            input: Side::new(input_at, from_start),
            output: Side::new(output_at, from_start),
            streams: HashMap::default(),
            unparsed: 0,
        }
    }

    /// Bytes the server read: the client's frames.
    pub fn on_read(
        &mut self,
        ts_ns: u64,
        len: u32,
        data: &[u8],
        more: &[(u32, Vec<u8>)],
        out: &mut Vec<Exchange>,
    ) {
        let mut frames = Vec::new();
        self.input.feed(ts_ns, len, data, more, &mut frames);
        let mut wire = u64::from(len);
        for f in frames {
            let (kind, stream) = (f.kind, f.stream);
            match kind {
                HEADERS | CONTINUATION => {
                    let Some((stream, _, headers, start_ns)) = self.input.header_block(f) else {
                        continue;
                    };
                    if self.streams.contains_key(&stream) {
                        continue; // request trailers
                    }
                    if self.streams.len() >= MAX_STREAMS {
                        self.unparsed += 1;
                        continue;
                    }
                    let mut s = Stream {
                        start_ns,
                        ..Stream::default()
                    };
                    if let Some(h) = headers {
                        for (k, v) in h {
                            match k.as_str() {
                                ":method" => s.method = Some(v),
                                ":path" => s.path = v.chars().take(MAX_PATH).collect(),
                                "content-type" => s.grpc = v.starts_with("application/grpc"),
                                _ => {}
                            }
                        }
                        if s.path.is_empty() {
                            s.method = None;
                        }
                    }
                    // Request bytes are credited to the first stream of
                    // the read, an approximation when reads interleave.
                    s.bytes_in = std::mem::take(&mut wire);
                    self.streams.insert(stream, s);
                }
                RST_STREAM => {
                    if let Some(mut s) = self.streams.remove(&stream) {
                        // The client cancelled.
                        s.end_ns = ts_ns;
                        s.status.get_or_insert(499);
                        if s.grpc {
                            s.grpc_status.get_or_insert(1);
                        }
                        self.finish(s, out);
                    }
                }
                _ => {}
            }
        }
        if wire > 0 {
            // Bytes of a read that started no stream (request bodies).
            if let Some(s) = self.streams.values_mut().next() {
                s.bytes_in += wire;
            }
        }
    }

    /// Bytes the server wrote: its frames.
    pub fn on_write(
        &mut self,
        ts_ns: u64,
        len: u32,
        data: &[u8],
        more: &[(u32, Vec<u8>)],
        out: &mut Vec<Exchange>,
    ) {
        let mut frames = Vec::new();
        self.output.feed(ts_ns, len, data, more, &mut frames);
        let mut credited = false;
        for f in frames {
            let (kind, flags, stream) = (f.kind, f.flags, f.stream);
            let ended = match kind {
                HEADERS | CONTINUATION => {
                    let Some((stream, hflags, headers, _)) = self.output.header_block(f) else {
                        continue;
                    };
                    if let Some(s) = self.streams.get_mut(&stream) {
                        match headers {
                            Some(h) => {
                                for (k, v) in h {
                                    match k.as_str() {
                                        ":status" => s.status = v.parse().ok(),
                                        "grpc-status" => s.grpc_status = v.parse().ok(),
                                        "content-type" if v.starts_with("application/grpc") => {
                                            s.grpc = true
                                        }
                                        _ => {}
                                    }
                                }
                            }
                            None => s.response_unknown = true,
                        }
                    }
                    (hflags & END_STREAM != 0).then_some(stream)
                }
                DATA => (flags & END_STREAM != 0).then_some(stream),
                PUSH_PROMISE => {
                    // Its header block (not followed) changes the table.
                    self.output.hpack_ok = false;
                    None
                }
                RST_STREAM => {
                    if let Some(s) = self.streams.get_mut(&stream) {
                        // The server reset the stream.
                        s.status = Some(500);
                        if s.grpc {
                            s.grpc_status = Some(13);
                        }
                    }
                    Some(stream)
                }
                _ => None,
            };
            if let Some(s) = self.streams.get_mut(&stream)
                && !credited
            {
                s.bytes_out += u64::from(len);
                credited = true;
            }
            if let Some(id) = ended
                && let Some(mut s) = self.streams.remove(&id)
            {
                s.end_ns = ts_ns;
                self.finish(s, out);
            }
        }
    }

    fn finish(&mut self, s: Stream, out: &mut Vec<Exchange>) {
        let parsed = s.method.is_some() && !s.response_unknown;
        let status = match (s.grpc, s.grpc_status, s.status) {
            (true, Some(code), _) => grpc_class(code),
            (_, _, Some(st)) => st,
            _ => 0,
        };
        if !parsed || status == 0 {
            self.unparsed += 1;
        }
        let (method, target, status) = match (parsed, s.method) {
            (true, Some(m)) if status != 0 => (
                if s.grpc { "GRPC".into() } else { m.into() },
                s.path,
                status,
            ),
            _ => ("?".into(), UNPARSED.to_string(), 0),
        };
        let error_code = match s.grpc_status {
            Some(c) if s.grpc && c != 0 && status != 0 => Some(c.to_string()),
            _ => None,
        };
        out.push(Exchange {
            method,
            target,
            status,
            start_ns: s.start_ns,
            end_ns: s.end_ns,
            bytes_in: s.bytes_in,
            bytes_out: s.bytes_out,
            error_code,
            db: None,
        });
    }

    /// The connection closed: streams still open are dropped (they have no
    /// end to measure).
    pub fn on_close(&mut self) {
        self.streams.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use httlib_hpack::Encoder;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.push(kind);
        f.push(flags);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// A header block as real clients and servers write it: indexed where
    /// the tables have the field, Huffman-coded literals otherwise.
    fn headers(enc: &mut Encoder<'static>, h: &[(&str, &str)]) -> Vec<u8> {
        let mut block = Vec::new();
        let flags = Encoder::HUFFMAN_NAME
            | Encoder::HUFFMAN_VALUE
            | Encoder::WITH_INDEXING
            | Encoder::BEST_FORMAT;
        for (k, v) in h {
            enc.encode(
                (k.as_bytes().to_vec(), v.as_bytes().to_vec(), flags),
                &mut block,
            )
            .expect("encode a header");
        }
        block
    }

    fn read(c: &mut Conn, ts: u64, b: &[u8], out: &mut Vec<Exchange>) {
        c.on_read(ts, b.len() as u32, b, &[], out);
    }

    fn write(c: &mut Conn, ts: u64, b: &[u8], out: &mut Vec<Exchange>) {
        c.on_write(ts, b.len() as u32, b, &[], out);
    }

    fn settings() -> Vec<u8> {
        frame(4, 0, 0, &[])
    }

    #[test]
    fn grpc_unary_calls_with_trailers_and_concurrent_streams() {
        let mut c = Conn::new(true);
        let (mut req, mut resp) = (Encoder::default(), Encoder::default());
        let mut out = Vec::new();
        let mut first = PREFACE.to_vec();
        first.extend(settings());
        read(&mut c, 0, &first, &mut out);
        write(&mut c, 1, &settings(), &mut out);
        // Three streams in one read; the dynamic table is used from the
        // second on.
        let mut burst = Vec::new();
        for (i, m) in ["Get", "Get", "Put"].iter().enumerate() {
            let path = format!("/shop.Orders/{m}");
            let h = headers(
                &mut req,
                &[
                    (":method", "POST"),
                    (":path", &path),
                    ("content-type", "application/grpc"),
                ],
            );
            burst.extend(frame(HEADERS, END_HEADERS, 1 + 2 * i as u32, &h));
            burst.extend(frame(DATA, END_STREAM, 1 + 2 * i as u32, b"\0\0\0\0\x01x"));
        }
        read(&mut c, 1_000, &burst, &mut out);
        // Responses out of order, each headers + data + trailers.
        for (ts, id, code) in [(5_000, 3u32, "0"), (7_000, 1, "13"), (9_000, 5, "5")] {
            let mut w = frame(
                HEADERS,
                END_HEADERS,
                id,
                &headers(
                    &mut resp,
                    &[(":status", "200"), ("content-type", "application/grpc")],
                ),
            );
            w.extend(frame(DATA, 0, id, b"\0\0\0\0\x01y"));
            w.extend(frame(
                HEADERS,
                END_HEADERS | END_STREAM,
                id,
                &headers(&mut resp, &[("grpc-status", code)]),
            ));
            write(&mut c, ts, &w, &mut out);
        }
        let got: Vec<_> = out
            .iter()
            .map(|x| (&*x.method, x.target.as_str(), x.status, x.duration_us()))
            .collect();
        assert_eq!(
            got,
            [
                ("GRPC", "/shop.Orders/Get", 200, 4),
                ("GRPC", "/shop.Orders/Get", 500, 6),
                ("GRPC", "/shop.Orders/Put", 400, 8),
            ]
        );
        assert_eq!(c.unparsed, 0);
    }

    #[test]
    fn frames_split_across_syscalls_and_payloads_beyond_the_capture() {
        let mut c = Conn::new(true);
        let (mut req, mut resp) = (Encoder::default(), Encoder::default());
        let mut out = Vec::new();
        let mut b = PREFACE.to_vec();
        b.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            1,
            &headers(&mut req, &[(":method", "GET"), (":path", "/big")]),
        ));
        // Byte by byte.
        for (i, x) in b.iter().enumerate() {
            read(&mut c, 10 + i as u64, std::slice::from_ref(x), &mut out);
        }
        let mut w = frame(
            HEADERS,
            END_HEADERS,
            1,
            &headers(&mut resp, &[(":status", "503")]),
        );
        // A 100 000-byte DATA frame of which only 10 bytes are captured.
        let mut data_head = frame(DATA, END_STREAM, 1, &[]);
        data_head[..3].copy_from_slice(&100_000u32.to_be_bytes()[1..]);
        w.extend(&data_head);
        let captured = w.len() + 10;
        w.extend(std::iter::repeat_n(b'x', 10));
        c.on_write(
            50_000,
            (captured - 10 + 60_000) as u32,
            &w[..captured],
            &[],
            &mut out,
        );
        assert!(out.is_empty());
        c.on_write(90_000, 40_000, b"", &[], &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].target.as_str(), out[0].status), ("/big", 503));
        // From the first byte of the request's HEADERS frame.
        assert_eq!(out[0].start_ns, 10 + PREFACE.len() as u64);
        assert_eq!(out[0].end_ns, 90_000);
    }

    /// Issue 14: a write larger than the first capture, as the programs
    /// send it: the first 4 KiB, then the frame headers and non-DATA
    /// payloads beyond, not the DATA payloads between them.
    #[test]
    fn header_blocks_behind_a_large_data_frame_are_parsed_from_further_pieces() {
        let mut c = Conn::new(true);
        let (mut req, mut resp) = (Encoder::default(), Encoder::default());
        let mut out = Vec::new();
        let mut b = PREFACE.to_vec();
        for id in [1u32, 3] {
            b.extend(frame(
                HEADERS,
                END_HEADERS | END_STREAM,
                id,
                &headers(&mut req, &[(":method", "GET"), (":path", "/p")]),
            ));
        }
        read(&mut c, 1, &b, &mut out);
        // Stream 1: headers, 100 000 bytes of DATA, then stream 3's whole
        // response and stream 1's trailers, all in one write.
        let mut w = frame(
            HEADERS,
            END_HEADERS,
            1,
            &headers(&mut resp, &[(":status", "200")]),
        );
        w.extend(frame(DATA, 0, 1, &vec![b'x'; 100_000]));
        let tail_at = w.len();
        w.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            3,
            &headers(&mut resp, &[(":status", "404")]),
        ));
        w.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            1,
            &headers(&mut resp, &[("x-trailer", "1")]),
        ));
        let cap = 4096;
        let more = vec![(tail_at as u32, w[tail_at..].to_vec())];
        c.on_write(5, w.len() as u32, &w[..cap], &more, &mut out);
        let mut got: Vec<_> = out.iter().map(|x| (x.target.clone(), x.status)).collect();
        got.sort();
        assert_eq!(got, [("/p".to_string(), 200), ("/p".to_string(), 404)]);
        assert_eq!(c.unparsed, 0);
        // The same write with a frame header missing from the pieces:
        // lost, and later streams are unparsed, never misattributed.
        let mut c2 = Conn::new(true);
        let mut out2 = Vec::new();
        let mut req2 = Encoder::default();
        let mut b2 = PREFACE.to_vec();
        b2.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            1,
            &headers(&mut req2, &[(":method", "GET"), (":path", "/p")]),
        ));
        read(&mut c2, 1, &b2, &mut out2);
        c2.on_write(5, w.len() as u32, &w[..cap], &[], &mut out2);
        assert!(out2.is_empty());
        assert!(matches!(c2.output.at, At::Lost));
    }

    #[test]
    fn a_missed_header_block_makes_later_streams_unparsed_never_misattributed() {
        let mut c = Conn::new(true);
        let (mut req, mut resp) = (Encoder::default(), Encoder::default());
        let mut out = Vec::new();
        read(&mut c, 0, PREFACE, &mut out);
        let h1 = frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            1,
            &headers(&mut req, &[(":method", "GET"), (":path", "/a")]),
        );
        // Captured only in part: the block is missed.
        c.on_read(1, h1.len() as u32, &h1[..12], &[], &mut out);
        let h3 = frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            3,
            &headers(&mut req, &[(":method", "GET"), (":path", "/a")]),
        );
        read(&mut c, 2, &h3, &mut out);
        let r = frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            3,
            &headers(&mut resp, &[(":status", "500")]),
        );
        write(&mut c, 3, &r, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(
            (&*out[0].method, out[0].target.as_str(), out[0].status),
            ("?", UNPARSED, 0)
        );
        assert_eq!(c.unparsed, 1);
    }

    #[test]
    fn a_malformed_header_block_loses_its_direction_and_nothing_else() {
        // A literal whose name index is cut short (the decoder panics on
        // it), then a well-formed stream: counted, as unparsed.
        let mut c = Conn::new(true);
        let mut out = Vec::new();
        read(&mut c, 0, PREFACE, &mut out);
        read(
            &mut c,
            1,
            &frame(HEADERS, END_HEADERS | END_STREAM, 1, &[0x7f]),
            &mut out,
        );
        let mut req = Encoder::default();
        let h3 = frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            3,
            &headers(&mut req, &[(":method", "GET"), (":path", "/a")]),
        );
        read(&mut c, 2, &h3, &mut out);
        let mut resp = Encoder::default();
        for stream in [1, 3] {
            let r = frame(
                HEADERS,
                END_HEADERS | END_STREAM,
                stream,
                &headers(&mut resp, &[(":status", "200")]),
            );
            write(&mut c, 3, &r, &mut out);
        }
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|e| e.target == UNPARSED), "{out:?}");
    }

    #[test]
    fn mangled_connections_never_take_the_parser_down() {
        // A connection as a client and server write it (Huffman-coded
        // headers, the tables in use), then thousands of copies with bytes
        // flipped, dropped or cut, fed in pieces of random sizes: whatever
        // the frames and header blocks turn into, nothing panics out of the
        // parser.
        let (mut req, mut resp) = (Encoder::default(), Encoder::default());
        let mut input = PREFACE.to_vec();
        input.extend(settings());
        let mut output = settings();
        for id in (1..40u32).step_by(2) {
            let path = format!("/shop.Orders/M{}", id % 7);
            let h = [
                (":method", "POST"),
                (":path", path.as_str()),
                ("content-type", "application/grpc"),
            ];
            input.extend(frame(HEADERS, END_HEADERS, id, &headers(&mut req, &h)));
            input.extend(frame(DATA, END_STREAM, id, b"\0\0\0\0\x01x"));
            let status = [(":status", "200"), ("content-type", "application/grpc")];
            output.extend(frame(
                HEADERS,
                END_HEADERS,
                id,
                &headers(&mut resp, &status),
            ));
            let code = (id % 17).to_string();
            let trailers = headers(&mut resp, &[("grpc-status", code.as_str())]);
            output.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &trailers));
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let (mut lost, mut parsed) = (0, 0);
        for _ in 0..3000 {
            let mut c = Conn::new(true);
            let mut out = Vec::new();
            let (mut i, mut o) = (input.clone(), output.clone());
            for b in [&mut i, &mut o] {
                for _ in 0..1 + next(4) {
                    let at = next(b.len());
                    match next(3) {
                        0 => b[at] ^= 1 << next(8),
                        1 => drop(b.remove(at)),
                        _ => b.truncate(at.max(PREFACE.len())),
                    }
                }
            }
            let (mut pi, mut po, mut ts) = (0, 0, 0);
            while pi < i.len() || po < o.len() {
                ts += 1;
                if pi < i.len() {
                    let n = (1 + next(200)).min(i.len() - pi);
                    read(&mut c, ts, &i[pi..pi + n], &mut out);
                    pi += n;
                }
                if po < o.len() {
                    let n = (1 + next(200)).min(o.len() - po);
                    write(&mut c, ts, &o[po..po + n], &mut out);
                    po += n;
                }
            }
            c.on_close();
            lost += usize::from(!c.input.hpack_ok || !c.output.hpack_ok);
            parsed += out.iter().filter(|e| e.target != UNPARSED).count();
        }
        // Both ways were taken many times: tables lost to bad blocks, and
        // streams decoded.
        assert!(lost > 1000 && parsed > 1000, "{lost} lost, {parsed} parsed");
    }

    #[test]
    fn a_connection_picked_up_mid_stream_counts_streams_as_unparsed() {
        let mut c = Conn::new(false);
        let mut req = Encoder::default();
        let mut out = Vec::new();
        // Garbage (the middle of a frame) is skipped.
        read(&mut c, 0, b"\x00\x01garbage", &mut out);
        let h = frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            41,
            &headers(&mut req, &[(":method", "GET"), (":path", "/a")]),
        );
        read(&mut c, 1, &h, &mut out);
        write(
            &mut c,
            2,
            &frame(RST_STREAM, 0, 41, &[0, 0, 0, 2]),
            &mut out,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].target, UNPARSED);
        assert!(plausible_frame(&h));
        assert!(!plausible_frame(b"GET / HTTP/1.1\r\n"));
    }

    #[test]
    fn grpc_codes_that_are_server_errors() {
        let errors: Vec<u32> = (0..17).filter(|c| grpc_is_server_error(*c)).collect();
        assert_eq!(errors, [2, 4, 12, 13, 14, 15]);
        assert_eq!(grpc_class(0), 200);
        assert_eq!(grpc_class(5), 400);
        assert_eq!(grpc_class(14), 500);
    }
}
