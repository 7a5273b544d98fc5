//! Redis (RESP2 and RESP3) for one server-side connection: commands the
//! server read and replies it wrote, as the BPF programs saw them, become
//! one exchange per command: the command name (`GET`, `SET`, `CLIENT`...),
//! an error when the reply is an error (`-ERR ...`, `-WRONGTYPE ...`, a
//! RESP3 blob error; its first word is the error code), and the time from the read that brought the command
//! to the write that finished its reply.
//!
//! Replies come in command order (pipelining included), so commands queue
//! and replies take them in order. RESP3 push messages (`>`) are not
//! replies and are skipped. Bulk strings are skipped by length, so values
//! beyond the capture are not needed; anything else that cannot be parsed
//! stops the connection's parsing (its later commands are counted in
//! `unparsed`, never paired with the wrong reply). Pub/sub and MONITOR
//! connections, whose replies do not follow commands one to one, stop
//! being parsed too.

use super::http::Exchange;
use std::collections::VecDeque;

/// Longest line (type byte, text, CRLF) kept while waiting for its end.
const MAX_LINE: usize = 4096;
/// Deepest nesting of aggregates followed.
const MAX_DEPTH: usize = 32;
/// Commands waiting for a reply on one connection.
const MAX_PENDING: usize = 4096;
/// Longest command name kept.
const MAX_NAME: usize = 32;

/// A complete top-level RESP value, as much as the parser keeps of it.
#[derive(Debug, Default, PartialEq)]
struct Value {
    /// The first string of a command (its name), uppercased.
    name: Option<String>,
    /// An error reply.
    error: bool,
    /// Its code: the first word of a simple error (`ERR`, `WRONGTYPE`).
    code: Option<String>,
    /// An out-of-band RESP3 push.
    push: bool,
}

#[derive(Debug, Default)]
struct Scanner {
    /// The current line, when one is being gathered.
    line: Vec<u8>,
    /// Bytes of a bulk payload (and its CRLF) still to come; `keep` when
    /// it is the command name.
    bulk: Option<(u64, bool)>,
    /// Elements left in each open aggregate.
    stack: Vec<u64>,
    value: Value,
    /// Bytes of the name bulk gathered so far.
    name: Vec<u8>,
    /// Whether this side carries commands (arrays of bulks, or inline).
    commands: bool,
    lost: bool,
}

impl Scanner {
    fn new(commands: bool) -> Self {
        Scanner {
            commands,
            ..Scanner::default()
        }
    }

    /// Ends an element; returns whether a top-level value is complete.
    fn element_done(&mut self) -> bool {
        loop {
            match self.stack.last_mut() {
                None => return true,
                Some(n) => {
                    *n -= 1;
                    if *n > 0 {
                        return false;
                    }
                    self.stack.pop();
                }
            }
        }
    }

    fn at_top(&self) -> bool {
        self.stack.is_empty() && self.bulk.is_none() && self.line.is_empty()
    }

    /// One complete line (without CRLF); returns whether a top-level value
    /// is complete.
    fn on_line(&mut self, line: &[u8]) -> Result<bool, ()> {
        let top = self.stack.is_empty();
        let first_of_command = self.commands && self.stack.len() == 1 && self.value.name.is_none();
        let (&t, rest) = line.split_first().ok_or(())?;
        let num = || -> Result<i64, ()> {
            std::str::from_utf8(rest)
                .map_err(|_| ())?
                .parse::<i64>()
                .map_err(|_| ())
        };
        match t {
            b'+' | b':' | b',' | b'(' | b'#' | b'_' => {
                if first_of_command && t == b'+' {
                    self.value.name = Some(name_of(rest));
                }
            }
            b'-' => {
                if top {
                    self.value.error = true;
                    let word = rest.split(|c| *c == b' ').next().unwrap_or_default();
                    self.value.code = Some(name_of(word));
                }
            }
            b'$' | b'!' | b'=' => {
                let n = num()?;
                if top && t == b'!' {
                    self.value.error = true;
                }
                if n >= 0 {
                    self.bulk = Some((n as u64 + 2, first_of_command));
                    self.name.clear();
                    return Ok(false);
                }
            }
            b'*' | b'~' | b'%' | b'>' | b'|' => {
                let n = num()?;
                if top && t == b'>' {
                    self.value.push = true;
                }
                let n = if t == b'%' || t == b'|' { n * 2 } else { n };
                if t == b'|' {
                    // Attributes precede the value they describe: one
                    // more element follows them at this level.
                    if n > 0 {
                        if self.stack.len() >= MAX_DEPTH {
                            return Err(());
                        }
                        self.stack.push(n as u64 + 1);
                        return Ok(false);
                    }
                    return Ok(false);
                }
                if n > 0 {
                    if self.stack.len() >= MAX_DEPTH {
                        return Err(());
                    }
                    self.stack.push(n as u64);
                    return Ok(false);
                }
            }
            _ if top && self.commands => {
                // An inline command: words separated by spaces.
                let word = line.split(|c| *c == b' ').find(|w| !w.is_empty());
                self.value.name = Some(name_of(word.ok_or(())?));
            }
            _ => return Err(()),
        }
        Ok(self.element_done())
    }

    /// Feeds one syscall's bytes; completed top-level values go to `out`.
    fn feed(&mut self, len: u32, data: &[u8], out: &mut Vec<Value>) {
        if self.lost {
            return;
        }
        let mut rest = data;
        let mut moved = u64::from(len);
        while !rest.is_empty() {
            if let Some((left, keep)) = &mut self.bulk {
                let n = (*left).min(rest.len() as u64) as usize;
                if *keep && self.name.len() < MAX_NAME + 2 {
                    let room = (MAX_NAME + 2 - self.name.len()).min(n);
                    self.name.extend_from_slice(&rest[..room]);
                }
                *left -= n as u64;
                rest = &rest[n..];
                moved = moved.saturating_sub(n as u64);
                if *left == 0 {
                    if *keep {
                        let body = self.name.strip_suffix(b"\r\n").unwrap_or(&self.name);
                        self.value.name = Some(name_of(body));
                    }
                    self.bulk = None;
                    if self.element_done() {
                        out.push(std::mem::take(&mut self.value));
                    }
                }
                continue;
            }
            match rest.iter().position(|&c| c == b'\n') {
                Some(i) => {
                    self.line.extend_from_slice(&rest[..=i]);
                    rest = &rest[i + 1..];
                    moved = moved.saturating_sub(i as u64 + 1);
                    let line = std::mem::take(&mut self.line);
                    let body = line
                        .strip_suffix(b"\r\n")
                        .or_else(|| line.strip_suffix(b"\n"))
                        .unwrap_or(&line);
                    match self.on_line(body) {
                        Ok(true) => out.push(std::mem::take(&mut self.value)),
                        Ok(false) => {}
                        Err(()) => {
                            self.lost = true;
                            return;
                        }
                    }
                }
                None => {
                    self.line.extend_from_slice(rest);
                    moved = moved.saturating_sub(rest.len() as u64);
                    rest = &[];
                    if self.line.len() > MAX_LINE {
                        self.lost = true;
                        return;
                    }
                }
            }
        }
        if moved > 0 {
            // Beyond the capture: only a bulk payload can be skipped.
            match &mut self.bulk {
                Some((left, false)) if *left >= moved => {
                    *left -= moved;
                    if *left == 0 {
                        self.bulk = None;
                        if self.element_done() {
                            out.push(std::mem::take(&mut self.value));
                        }
                    }
                }
                _ => self.lost = true,
            }
        }
    }
}

fn name_of(b: &[u8]) -> String {
    let b = &b[..b.len().min(MAX_NAME)];
    String::from_utf8_lossy(b).to_ascii_uppercase()
}

#[derive(Debug)]
struct Command {
    name: String,
    start_ns: u64,
    bytes_in: u64,
}

/// One Redis connection, server side.
#[derive(Debug)]
pub struct Conn {
    input: Scanner,
    output: Scanner,
    pending: VecDeque<Command>,
    /// Reply bytes written for the reply at the head of the queue.
    bytes_out: u64,
    /// Commands that could not be paired (the parse stopped).
    pub unparsed: u64,
    stopped: bool,
}

impl Default for Conn {
    fn default() -> Self {
        Conn {
            input: Scanner::new(true),
            output: Scanner::new(false),
            pending: VecDeque::new(),
            bytes_out: 0,
            unparsed: 0,
            stopped: false,
        }
    }
}

/// Whether the first bytes a client sent look like a Redis command (a
/// RESP array of bulk strings).
pub fn looks_like(data: &[u8]) -> bool {
    data.len() >= 4 && data[0] == b'*' && data[1].is_ascii_digit() && data.contains(&b'$')
}

impl Conn {
    fn stop(&mut self) {
        if !self.stopped {
            self.stopped = true;
            self.unparsed += self.pending.len() as u64;
            self.pending.clear();
        }
    }

    /// Bytes the server read: commands.
    pub fn on_read(&mut self, ts_ns: u64, len: u32, data: &[u8]) {
        if self.stopped {
            return;
        }
        let mut values = Vec::new();
        let fresh = self.input.at_top();
        self.input.feed(len, data, &mut values);
        let mut first = true;
        for v in values {
            let name = v.name.unwrap_or_else(|| "?".into());
            if matches!(
                name.as_str(),
                "SUBSCRIBE" | "PSUBSCRIBE" | "SSUBSCRIBE" | "MONITOR"
            ) {
                self.stop();
                return;
            }
            if self.pending.len() >= MAX_PENDING {
                self.unparsed += 1;
                continue;
            }
            self.pending.push_back(Command {
                name,
                // A command that began in an earlier read started there;
                // the approximation is the read that completed it.
                start_ns: ts_ns,
                bytes_in: if std::mem::take(&mut first) && fresh {
                    u64::from(len)
                } else {
                    0
                },
            });
        }
        if self.input.lost {
            self.stop();
        }
    }

    /// Bytes the server wrote: replies.
    pub fn on_write(&mut self, ts_ns: u64, len: u32, data: &[u8], out: &mut Vec<Exchange>) {
        if self.stopped {
            return;
        }
        let mut values = Vec::new();
        self.output.feed(len, data, &mut values);
        self.bytes_out += u64::from(len);
        for v in values {
            if v.push {
                continue;
            }
            let Some(c) = self.pending.pop_front() else {
                // A reply with no command: out of step.
                self.stop();
                return;
            };
            out.push(Exchange {
                method: "REDIS".into(),
                target: c.name,
                status: if v.error { 500 } else { 200 },
                start_ns: c.start_ns,
                end_ns: ts_ns,
                bytes_in: c.bytes_in,
                bytes_out: std::mem::take(&mut self.bytes_out),
                error_code: if v.error {
                    Some(v.code.unwrap_or_else(|| "ERR".into()))
                } else {
                    None
                },
                db: None,
            });
        }
        if self.output.lost {
            self.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(args: &[&str]) -> String {
        let mut s = format!("*{}\r\n", args.len());
        for a in args {
            s.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s
    }

    fn read(c: &mut Conn, ts: u64, s: &str) {
        c.on_read(ts, s.len() as u32, s.as_bytes());
    }

    fn write(c: &mut Conn, ts: u64, s: &str, out: &mut Vec<Exchange>) {
        c.on_write(ts, s.len() as u32, s.as_bytes(), out);
    }

    #[test]
    fn pipelined_commands_pair_with_their_replies_in_order() {
        let mut c = Conn::default();
        let mut out = Vec::new();
        let burst = format!(
            "{}{}{}{}PING\r\n",
            cmd(&["set", "k", "v"]),
            cmd(&["GET", "k"]),
            cmd(&["LPUSH", "k", "x"]),
            cmd(&["HGETALL", "h"]),
        );
        assert!(looks_like(burst.as_bytes()));
        read(&mut c, 1_000, &burst);
        write(
            &mut c,
            5_000,
            "+OK\r\n$1\r\nv\r\n-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
            &mut out,
        );
        // RESP3: a push in between, a map reply, then the inline PING's.
        write(
            &mut c,
            7_000,
            ">2\r\n$7\r\nmessage\r\n$1\r\nx\r\n%1\r\n$1\r\na\r\n*2\r\n:1\r\n$-1\r\n+PONG\r\n",
            &mut out,
        );
        let got: Vec<_> = out
            .iter()
            .map(|x| (x.target.as_str(), x.status, x.end_ns - x.start_ns))
            .collect();
        assert_eq!(
            got,
            [
                ("SET", 200, 4_000),
                ("GET", 200, 4_000),
                ("LPUSH", 500, 4_000),
                ("HGETALL", 200, 6_000),
                ("PING", 200, 6_000),
            ]
        );
        assert_eq!(c.unparsed, 0);
    }

    #[test]
    fn values_beyond_the_capture_are_skipped_by_length() {
        let mut c = Conn::default();
        let mut out = Vec::new();
        let big = "x".repeat(100_000);
        let set = cmd(&["SET", "k", &big]);
        c.on_read(0, set.len() as u32, &set.as_bytes()[..4096]);
        read(&mut c, 1, &cmd(&["GET", "k"]));
        write(&mut c, 2, "+OK\r\n", &mut out);
        let reply = format!("${}\r\n{big}\r\n", big.len());
        c.on_write(3, reply.len() as u32, &reply.as_bytes()[..4096], &mut out);
        let got: Vec<_> = out.iter().map(|x| (x.target.as_str(), x.end_ns)).collect();
        assert_eq!(got, [("SET", 2), ("GET", 3)]);
    }

    #[test]
    fn what_cannot_be_parsed_is_never_paired() {
        let mut c = Conn::default();
        let mut out = Vec::new();
        read(&mut c, 0, &cmd(&["GET", "a"]));
        read(&mut c, 1, &cmd(&["GET", "b"]));
        // A reply head beyond the capture: the parse stops.
        c.on_write(2, 1000, b"$1\r\na\r\n", &mut out);
        assert_eq!(out.len(), 1);
        write(&mut c, 3, "$1\r\nb\r\n", &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(c.unparsed, 1);
        let mut s = Conn::default();
        read(&mut s, 0, &cmd(&["SUBSCRIBE", "ch"]));
        write(
            &mut s,
            1,
            "*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n",
            &mut out,
        );
        assert_eq!(out.len(), 1);
    }
}
