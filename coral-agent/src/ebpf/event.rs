//! The records the BPF programs write to the ring buffers
//! (`ebpf/bpf/coral.bpf.c`: `data_event`, `conn_event`, `edge_event`),
//! decoded from bytes with bounds checks. The C side asserts the offsets.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const EV_DATA: u8 = 1;
const EV_ACCEPT: u8 = 2;
const EV_CLOSE: u8 = 3;
const EV_EDGE_OPEN: u8 = 4;
const EV_EDGE_FAIL: u8 = 5;
const EV_EDGE_CLOSE: u8 = 6;
/// `conn_event.flags`: found open, not established while followed.
const CONN_EXISTING: u16 = 1;
const DATA_HEADER: usize = 40;
const CONN_SIZE: usize = 64;
const EDGE_SIZE: usize = 88;
const AF_INET: u8 = 2;
/// Bytes of record buffers the reader keeps for reuse: enough for the
/// records of one read at tens of thousands of requests per second.
const SPARE_BYTES: usize = 8 << 20;
/// A new record buffer's least capacity (a usual request or response head
/// fits, so a buffer reused for a longer record is rarely grown).
const MIN_BUFFER: usize = 256;

/// Record buffers handed back by handled events, for the next records.
#[derive(Default)]
pub struct Spare {
    bufs: Vec<Vec<u8>>,
    bytes: usize,
}

impl Spare {
    fn take(&mut self) -> Vec<u8> {
        match self.bufs.pop() {
            Some(b) => {
                self.bytes -= b.capacity();
                b
            }
            None => Vec::new(),
        }
    }

    fn give(&mut self, mut b: Vec<u8>) {
        if b.capacity() > 0 && self.bytes + b.capacity() <= SPARE_BYTES {
            b.clear();
            self.bytes += b.capacity();
            self.bufs.push(b);
        }
    }
}
const AF_INET6: u8 = 10;

/// A server-side connection: the process and fd of its first read or
/// write, and the time the programs began following it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    pub tgid: u32,
    pub fd: u32,
    pub start_ns: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Bytes the server read (requests).
    In,
    /// Bytes the server wrote (responses).
    Out,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeKind {
    Open,
    Fail,
    Close,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A connection followed from now on, sent at its first read or write:
    /// established while its port was followed, or (`existing`) open
    /// before that.
    Accept {
        conn: ConnId,
        lport: u16,
        existing: bool,
        peer: Option<(IpAddr, u16)>,
        comm: String,
        ts_ns: u64,
    },
    Data {
        conn: ConnId,
        lport: u16,
        dir: Dir,
        /// Bytes the syscall moved.
        len: u32,
        /// The first of them (at most `coral_ebpf::CAPTURE_IN_BYTES` of a read, `CAPTURE_OUT_BYTES` of a write).
        data: Vec<u8>,
        /// Where `data` begins in the syscall's bytes: 0, or more than 0
        /// for a further record of an HTTP/2 syscall, which the reader
        /// joins to its first ([`Event::extend`]).
        off: u32,
        /// On an HTTP/2 connection, what the programs sent of the bytes
        /// beyond `data` (frame headers and non-DATA payloads; the gaps
        /// are DATA payloads), in order, with where each begins.
        more: Vec<(u32, Vec<u8>)>,
        ts_ns: u64,
    },
    Close {
        conn: ConnId,
        ts_ns: u64,
    },
    Edge {
        kind: EdgeKind,
        tgid: u32,
        comm: String,
        src: Option<(IpAddr, u16)>,
        dst: Option<(IpAddr, u16)>,
        srtt_us: u32,
        bytes_acked: u64,
        bytes_received: u64,
        ts_ns: u64,
    },
}

impl Event {
    /// Joins `next`, a further record of the same syscall (same
    /// connection, direction and time, beginning after this one's bytes
    /// and any joined before it); false if it is not one.
    pub fn extend(&mut self, next: &mut Event) -> bool {
        match (self, next) {
            (
                Event::Data {
                    conn,
                    dir,
                    data,
                    off: 0,
                    more,
                    len,
                    ts_ns,
                    ..
                },
                Event::Data {
                    conn: c2,
                    dir: d2,
                    data: bytes,
                    off,
                    ts_ns: t2,
                    ..
                },
            ) if conn == c2 && dir == d2 && ts_ns == t2 => {
                let end = more
                    .last()
                    .map_or(data.len(), |(o, b)| *o as usize + b.len());
                if (*off as usize) < end || *off as usize + bytes.len() > *len as usize {
                    return false;
                }
                more.push((*off, std::mem::take(bytes)));
                true
            }
            _ => false,
        }
    }

    /// A further record of a syscall, to be appended to its first.
    pub fn is_more(&self) -> bool {
        matches!(self, Event::Data { off, .. } if *off > 0)
    }

    /// Gives this event's buffers back to `spare`.
    pub fn recycle(self, spare: &mut Spare) {
        if let Event::Data { data, more, .. } = self {
            spare.give(data);
            for (_, b) in more {
                spare.give(b);
            }
        }
    }

    pub fn ts_ns(&self) -> u64 {
        match self {
            Event::Accept { ts_ns, .. }
            | Event::Data { ts_ns, .. }
            | Event::Close { ts_ns, .. }
            | Event::Edge { ts_ns, .. } => *ts_ns,
        }
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn comm(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn addr(family: u8, raw: &[u8], port: u16) -> Option<(IpAddr, u16)> {
    match family {
        AF_INET => Some((
            IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3])),
            port,
        )),
        AF_INET6 => {
            let a: [u8; 16] = raw[..16].try_into().ok()?;
            let v6 = Ipv6Addr::from(a);
            Some((v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4), port))
        }
        _ => None,
    }
}

/// Decodes one ring buffer record; `None` for anything malformed.
pub fn decode(b: &[u8]) -> Option<Event> {
    decode_into(b, &mut Spare::default())
}

/// [`decode`], with a data record's bytes copied into buffers taken from
/// `spare` (the reader gives them back with [`Event::recycle`]), so a
/// record costs no allocation once the reader has run for a while.
pub fn decode_into(b: &[u8], spare: &mut Spare) -> Option<Event> {
    let kind = *b.first()?;
    match kind {
        EV_DATA => {
            if b.len() < DATA_HEADER {
                return None;
            }
            let cap = u32_at(b, 32) as usize;
            let bytes = b.get(DATA_HEADER..DATA_HEADER + cap)?;
            let mut data = spare.take();
            data.reserve(bytes.len().max(MIN_BUFFER));
            data.extend_from_slice(bytes);
            Some(Event::Data {
                conn: ConnId {
                    tgid: u32_at(b, 4),
                    fd: u32_at(b, 8),
                    start_ns: u64_at(b, 16),
                },
                lport: u16_at(b, 2),
                dir: if b[1] == 0 { Dir::In } else { Dir::Out },
                len: u32_at(b, 12),
                data,
                off: u32_at(b, 36),
                more: Vec::new(),
                ts_ns: u64_at(b, 24),
            })
        }
        EV_ACCEPT | EV_CLOSE => {
            if b.len() < CONN_SIZE {
                return None;
            }
            let conn = ConnId {
                tgid: u32_at(b, 4),
                fd: u32_at(b, 8),
                start_ns: u64_at(b, 16),
            };
            let ts_ns = u64_at(b, 24);
            Some(if kind == EV_ACCEPT {
                Event::Accept {
                    conn,
                    lport: u16_at(b, 2),
                    existing: u16_at(b, 14) & CONN_EXISTING != 0,
                    peer: addr(b[1], &b[32..48], u16_at(b, 12)),
                    comm: comm(&b[48..64]),
                    ts_ns,
                }
            } else {
                Event::Close { conn, ts_ns }
            })
        }
        EV_EDGE_OPEN | EV_EDGE_FAIL | EV_EDGE_CLOSE => {
            if b.len() < EDGE_SIZE {
                return None;
            }
            let family = b[1];
            Some(Event::Edge {
                kind: match kind {
                    EV_EDGE_OPEN => EdgeKind::Open,
                    EV_EDGE_FAIL => EdgeKind::Fail,
                    _ => EdgeKind::Close,
                },
                tgid: u32_at(b, 8),
                comm: comm(&b[72..88]),
                src: addr(family, &b[40..56], u16_at(b, 2)),
                dst: addr(family, &b[56..72], u16_at(b, 4)),
                srtt_us: u32_at(b, 12),
                bytes_acked: u64_at(b, 24),
                bytes_received: u64_at(b, 32),
                ts_ns: u64_at(b, 16),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_each_kind_and_refuses_short_records() {
        let mut d = vec![0u8; DATA_HEADER + 3];
        d[0] = EV_DATA;
        d[1] = 1;
        d[2..4].copy_from_slice(&8080u16.to_ne_bytes());
        d[4..8].copy_from_slice(&42u32.to_ne_bytes());
        d[8..12].copy_from_slice(&7u32.to_ne_bytes());
        d[12..16].copy_from_slice(&100u32.to_ne_bytes());
        d[16..24].copy_from_slice(&5u64.to_ne_bytes());
        d[24..32].copy_from_slice(&9u64.to_ne_bytes());
        d[32..36].copy_from_slice(&3u32.to_ne_bytes());
        d[40..43].copy_from_slice(b"HTT");
        let e = decode(&d).unwrap();
        assert_eq!(
            e,
            Event::Data {
                conn: ConnId {
                    tgid: 42,
                    fd: 7,
                    start_ns: 5
                },
                lport: 8080,
                dir: Dir::Out,
                len: 100,
                data: b"HTT".to_vec(),
                off: 0,
                more: Vec::new(),
                ts_ns: 9
            }
        );
        // cap says more bytes than the record has.
        assert!(decode(&d[..DATA_HEADER + 2]).is_none());
        assert!(decode(&d[..10]).is_none());

        let mut c = vec![0u8; CONN_SIZE];
        c[0] = EV_ACCEPT;
        c[1] = AF_INET;
        c[12..14].copy_from_slice(&5555u16.to_ne_bytes());
        c[14..16].copy_from_slice(&CONN_EXISTING.to_ne_bytes());
        c[32..36].copy_from_slice(&[127, 0, 0, 1]);
        c[48..53].copy_from_slice(b"curl\0");
        match decode(&c).unwrap() {
            Event::Accept {
                peer,
                comm,
                existing,
                ..
            } => {
                assert!(existing);
                assert_eq!(peer, Some(("127.0.0.1".parse().unwrap(), 5555)));
                assert_eq!(comm, "curl");
            }
            other => panic!("{other:?}"),
        }
        let mut e = vec![0u8; EDGE_SIZE];
        e[0] = EV_EDGE_FAIL;
        e[1] = AF_INET6;
        e[56 + 10] = 0xff;
        e[56 + 11] = 0xff;
        e[56 + 12..56 + 16].copy_from_slice(&[10, 0, 0, 2]);
        match decode(&e).unwrap() {
            Event::Edge { kind, dst, .. } => {
                assert_eq!(kind, EdgeKind::Fail);
                assert_eq!(dst.unwrap().0, "10.0.0.2".parse::<IpAddr>().unwrap());
            }
            other => panic!("{other:?}"),
        }
        assert!(decode(&[]).is_none());
        assert!(decode(&[99; 100]).is_none());
    }

    fn data(fd: u32, ts_ns: u64, len: u32, off: u32, bytes: &[u8]) -> Event {
        Event::Data {
            conn: ConnId {
                tgid: 1,
                fd,
                start_ns: 1,
            },
            lport: 80,
            dir: Dir::Out,
            len,
            data: bytes.to_vec(),
            off,
            more: Vec::new(),
            ts_ns,
        }
    }

    /// Issue 14: further records of an HTTP/2 syscall join its first in
    /// order; one of another syscall, out of order or past the syscall's
    /// end does not.
    #[test]
    fn further_records_join_their_first_in_order() {
        let mut first = data(5, 9, 20_000, 0, b"head");
        assert!(!first.is_more());
        let mut a = data(5, 9, 20_000, 4096, b"hdr-a");
        let mut b = data(5, 9, 20_000, 9000, b"hdr-b");
        assert!(a.is_more());
        assert!(!first.extend(&mut data(6, 9, 20_000, 4096, b"x")));
        assert!(!first.extend(&mut data(5, 10, 20_000, 4096, b"x")));
        assert!(first.extend(&mut a));
        assert!(!first.extend(&mut data(5, 9, 20_000, 4098, b"x")));
        assert!(!first.extend(&mut data(5, 9, 20_000, 19_999, b"xy")));
        assert!(first.extend(&mut b));
        match first {
            Event::Data { data, more, .. } => {
                assert_eq!(data, b"head");
                assert_eq!(
                    more,
                    vec![(4096, b"hdr-a".to_vec()), (9000, b"hdr-b".to_vec())]
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
