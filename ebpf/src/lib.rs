//! Coral's BPF objects, compiled from `ebpf/bpf/*.bpf.c` by `build.rs` and
//! embedded here with their SHA-256 (computed at build time).
//!
//! Both `coral-privhelper` (which loads them as root) and `coral-agent`
//! (which asks for them by name and hash, or loads them itself when it holds
//! `CAP_BPF`) link this crate, so they agree on the bytes, the program list
//! and the order in which file descriptors are passed.
//!
//! This crate has no dependencies: the root helper links it.

/// 8-byte alignment for the embedded ELF (the object parser reads it in place).
#[repr(C, align(8))]
pub struct Aligned<B: ?Sized>(pub B);

/// One embedded BPF object.
#[derive(Debug)]
pub struct Object {
    pub name: &'static str,
    pub bytes: &'static [u8],
    pub sha256: [u8; 32],
}

include!(concat!(env!("OUT_DIR"), "/objects.rs"));

/// The embedded object called `name`.
pub fn object(name: &str) -> Option<&'static Object> {
    OBJECTS.iter().find(|o| o.name == name)
}

/// A program of an object and the tracepoint it attaches to. The table is
/// the only source of attach points: nothing a caller sends names one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Program {
    /// The C function (and aya program) name.
    pub name: &'static str,
    /// The tracepoint's event group (`sock` of `sock:inet_sock_set_state`),
    /// for log lines only: a BTF tracepoint is found by its BTF name.
    pub category: &'static str,
    pub tracepoint: &'static str,
    pub attach: Attach,
}

/// How a program attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// A BTF-typed raw tracepoint (`tp_btf`, `BPF_RAW_TRACEPOINT_OPEN`
    /// with no name: the kernel takes it from the program's BTF id).
    BtfRawTracepoint,
    /// A uprobe at a point the caller names and the helper re-checks
    /// (`UprobeAttach`); never from this table.
    Uprobe,
}

/// The RED + connection-map object.
pub const RED: &str = "coral";

/// Programs of [`RED`], in the order their fds are passed.
pub const RED_PROGRAMS: &[Program] = &[
    Program {
        name: "sock_recv",
        category: "sock",
        tracepoint: "sock_recv_length",
        attach: Attach::BtfRawTracepoint,
    },
    Program {
        name: "sock_send",
        category: "sock",
        tracepoint: "sock_send_length",
        attach: Attach::BtfRawTracepoint,
    },
    Program {
        name: "set_state",
        category: "sock",
        tracepoint: "inet_sock_set_state",
        attach: Attach::BtfRawTracepoint,
    },
];

/// The outer ARRAY_OF_MAPS: slot `cpu` holds that CPU's ring buffer.
pub const RINGS_MAP: &str = "rings";
/// Per-CPU counters, slots below.
pub const STATS_MAP: &str = "stats";
/// The set of listening ports to follow, one [`PortSet`] at key 0.
pub const PORTS_MAP: &str = "ports";

/// A [`PORTS_MAP`] value (`struct port_set`): a bitmap of 1024 words, one
/// bit per port.
pub type PortSet = [u64; 1024];

/// Sets `port` in a [`PortSet`].
pub fn set_port(set: &mut PortSet, port: u16) {
    set[usize::from(port >> 6)] |= 1 << (port & 63);
}
/// The global the loader sets to the agent's pid (its events are skipped).
pub const SELF_TGID_GLOBAL: &str = "coral_self_tgid";
/// Most CPUs the object serves (`MAX_CPUS` in the C source).
pub const MAX_CPUS: usize = 128;
/// Bytes captured per read (`CAP` in the C source): enough for a burst of
/// pipelined requests.
pub const CAPTURE_IN_BYTES: usize = 4096;
/// Bytes captured per write (`CAP_OUT`): response heads, and the frame
/// headers of an HTTP/2 write.
pub const CAPTURE_OUT_BYTES: usize = 4096;
/// iovecs of a vectored read or write captured, in order (`MAX_IOV`).
pub const CAPTURE_IOVECS: usize = 128;

/// Slots of [`STATS_MAP`].
pub const STAT_EVENTS: u32 = 0;
pub const STAT_DROPS: u32 = 1;
pub const STAT_NO_RING: u32 = 2;
pub const STAT_CONNS_FULL: u32 = 3;

/// Smallest and largest ring buffer per CPU the loaders accept (bytes; a
/// power of two and a multiple of the page size).
pub const MIN_RING_BYTES: u32 = 4096;
pub const MAX_RING_BYTES: u32 = 64 << 20;

/// Checks a ring size: a power of two in `MIN_RING_BYTES..=MAX_RING_BYTES`.
pub fn check_ring_bytes(n: u32) -> Result<(), String> {
    if !n.is_power_of_two() || !(MIN_RING_BYTES..=MAX_RING_BYTES).contains(&n) {
        return Err(format!(
            "ring buffer size {n} must be a power of two between {MIN_RING_BYTES} and {MAX_RING_BYTES} bytes"
        ));
    }
    Ok(())
}

/// The live-debugging object (`bpf/uprobe.bpf.c`, issue 12): one program
/// attached at many points, told apart by their BPF cookies.
pub const UPROBE: &str = "uprobe";
/// Its only program.
pub const UPROBE_PROGRAM: &str = "coral_uprobe";
/// Programs of [`UPROBE`].
pub const UPROBE_PROGRAMS: &[Program] = &[Program {
    name: UPROBE_PROGRAM,
    category: "uprobe",
    tracepoint: "",
    attach: Attach::Uprobe,
}];
/// Its maps, in the order their fds are passed: the event ring, the probe
/// configs, the per-probe hit counters, the per-CPU stats.
pub const UPROBE_MAPS: &[&str] = &["events", "probes", "hits", "stats"];
/// Most probe ids (`MAX_PROBES`).
pub const UPROBE_MAX_PROBES: u32 = 1024;
/// Strings captured per hit and bytes per string (`MAX_STRS`, `STR_CAP`).
pub const UPROBE_MAX_STRS: usize = 4;
pub const UPROBE_STR_CAP: usize = 128;
/// Argument registers captured (`NREGS`): rax, rbx, rcx, rdi, rsi, r8, r9,
/// r10, r11, rdx.
pub const UPROBE_NREGS: usize = 10;
/// Size of `struct event`.
pub const UPROBE_EVENT_BYTES: usize = 8
    + 8
    + 4
    + 4
    + 8 * UPROBE_NREGS
    + 5 * 8
    + 2 * UPROBE_MAX_STRS
    + UPROBE_MAX_STRS * UPROBE_STR_CAP
    + 8
    + 8
    + 8 * UPROBE_MAX_STACK;
/// User stack frames captured at an entry (`MAX_STACK`).
pub const UPROBE_MAX_STACK: usize = 32;
/// Attach-point kinds, the low byte of the cookie (`KIND_*`).
pub const KIND_ENTRY: u8 = 0;
pub const KIND_RET_INSN: u8 = 1;
pub const KIND_URETPROBE: u8 = 2;
/// `probe_cfg.flags` bits (`CFG_*`).
pub const CFG_ARGS: u32 = 1;
pub const CFG_GO: u32 = 2;
pub const CFG_STACK: u32 = 4;
/// `probe_cfg` string slots: no string, and "the pointer is a C string".
pub const REG_NONE: u8 = 0xff;
pub const LEN_CSTR: u8 = 0xfe;
/// Size of `struct probe_cfg`.
pub const UPROBE_CFG_BYTES: usize = 4 + 2 * UPROBE_MAX_STRS;
/// Stats slots of the uprobe object (`ST_*` in its source).
pub const UPROBE_STAT_EVENTS: u32 = 0;
pub const UPROBE_STAT_DROPS: u32 = 1;
pub const UPROBE_STAT_NO_CONFIG: u32 = 2;

/// A BPF cookie for probe `id` at a point of `kind`.
pub fn uprobe_cookie(id: u32, kind: u8) -> u64 {
    (u64::from(id) << 8) | u64::from(kind)
}

/// One event of the uprobe object (`struct event`), decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UprobeEvent {
    pub ktime_ns: u64,
    pub probe_id: u32,
    pub kind: u8,
    pub tgid: u32,
    pub tid: u32,
    /// rax, rbx, rcx, rdi, rsi, r8, r9, r10, r11, rdx (zero unless the
    /// probe captures arguments).
    pub regs: [u64; UPROBE_NREGS],
    /// Go: the goroutine (R14) and the top of its stack; else 0.
    pub g: u64,
    pub stack_hi: u64,
    pub sp: u64,
    pub ip: u64,
    pub bp: u64,
    /// Captured strings: `None` for an unreadable one.
    pub strs: [Option<Vec<u8>>; UPROBE_MAX_STRS],
    /// With `CFG_STACK`, at an entry: the return address and the user
    /// stack (frame pointers; its first frame is the probed function).
    pub ret_addr: u64,
    pub stack: Vec<u64>,
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

impl UprobeEvent {
    /// Decodes a ring record; `None` if it has the wrong size.
    pub fn parse(b: &[u8]) -> Option<Self> {
        if b.len() < UPROBE_EVENT_BYTES {
            return None;
        }
        let cookie = le64(b, 8);
        let tgid = u32::from_le_bytes([b[16], b[17], b[18], b[19]]);
        let tid = u32::from_le_bytes([b[20], b[21], b[22], b[23]]);
        let mut regs = [0u64; UPROBE_NREGS];
        for (i, r) in regs.iter_mut().enumerate() {
            *r = le64(b, 24 + 8 * i);
        }
        let w = 24 + 8 * UPROBE_NREGS;
        let lens = w + 40;
        let data = lens + 2 * UPROBE_MAX_STRS;
        let strs = std::array::from_fn(|i| {
            let n = u16::from_le_bytes([b[lens + 2 * i], b[lens + 2 * i + 1]]);
            if n == 0xffff {
                return None;
            }
            let at = data + i * UPROBE_STR_CAP;
            Some(b[at..at + usize::from(n).min(UPROBE_STR_CAP)].to_vec())
        });
        let tail = data + UPROBE_MAX_STRS * UPROBE_STR_CAP;
        let n = u32::from_le_bytes([b[tail + 8], b[tail + 9], b[tail + 10], b[tail + 11]]) as usize;
        let stack = (0..n.min(UPROBE_MAX_STACK))
            .map(|i| le64(b, tail + 16 + 8 * i))
            .collect();
        Some(UprobeEvent {
            ret_addr: le64(b, tail),
            stack,
            ktime_ns: le64(b, 0),
            probe_id: (cookie >> 8) as u32,
            kind: cookie as u8,
            tgid,
            tid,
            regs,
            g: le64(b, w),
            stack_hi: le64(b, w + 8),
            sp: le64(b, w + 16),
            ip: le64(b, w + 24),
            bp: le64(b, w + 32),
            strs,
        })
    }

    /// Go: the call depth on its goroutine (`stack_hi - sp`), the same at a
    /// call's entry and at its return instructions.
    pub fn go_depth(&self) -> u64 {
        self.stack_hi.wrapping_sub(self.sp)
    }
}

/// A `struct probe_cfg` value: `flags` (`CFG_*`) and up to
/// [`UPROBE_MAX_STRS`] strings as (pointer register, length register or
/// [`LEN_CSTR`]), register indices into [`UprobeEvent::regs`].
pub fn uprobe_config(flags: u32, strs: &[(u8, u8)]) -> [u8; UPROBE_CFG_BYTES] {
    let mut out = [REG_NONE; UPROBE_CFG_BYTES];
    out[..4].copy_from_slice(&flags.to_le_bytes());
    for (i, (p, l)) in strs.iter().take(UPROBE_MAX_STRS).enumerate() {
        out[4 + i] = *p;
        out[4 + UPROBE_MAX_STRS + i] = *l;
    }
    out
}

/// Lowercase hex of a hash, for logs.
pub fn hex(h: &[u8; 32]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    #[test]
    fn embedded_hashes_match_the_bytes() {
        assert!(!OBJECTS.is_empty());
        for o in OBJECTS {
            let h: [u8; 32] = sha2::Sha256::digest(o.bytes).into();
            assert_eq!(h, o.sha256, "{}", o.name);
            assert_eq!(&o.bytes[..4], b"\x7fELF", "{}", o.name);
            assert_eq!(o.bytes.as_ptr() as usize % 8, 0);
        }
        assert!(object(RED).is_some());
        assert!(object(UPROBE).is_some());
        assert!(object("nope").is_none());
    }

    #[test]
    fn uprobe_events_decode() {
        assert_eq!(UPROBE_EVENT_BYTES, 936);
        let mut b = vec![0u8; UPROBE_EVENT_BYTES];
        b[0..8].copy_from_slice(&5u64.to_le_bytes());
        b[8..16].copy_from_slice(&uprobe_cookie(7, KIND_RET_INSN).to_le_bytes());
        b[24..32].copy_from_slice(&42u64.to_le_bytes());
        let lens = 24 + 8 * UPROBE_NREGS + 40;
        b[lens..lens + 2].copy_from_slice(&3u16.to_le_bytes());
        b[lens + 2..lens + 4].copy_from_slice(&0xffffu16.to_le_bytes());
        let data = lens + 2 * UPROBE_MAX_STRS;
        b[data..data + 3].copy_from_slice(b"abc");
        let e = UprobeEvent::parse(&b).unwrap();
        assert_eq!((e.ktime_ns, e.probe_id, e.kind, e.regs[0]), (5, 7, 1, 42));
        assert_eq!(e.strs[0].as_deref(), Some(&b"abc"[..]));
        assert_eq!(e.strs[1], None);
        assert_eq!(e.strs[2].as_deref(), Some(&b""[..]));
        assert!(UprobeEvent::parse(&b[..100]).is_none());
        let c = uprobe_config(CFG_ARGS | CFG_GO, &[(0, 1)]);
        assert_eq!(c, [3, 0, 0, 0, 0, 0xff, 0xff, 0xff, 1, 0xff, 0xff, 0xff]);
    }

    #[test]
    fn ring_sizes_are_checked() {
        assert!(check_ring_bytes(4096).is_ok());
        assert!(check_ring_bytes(1 << 20).is_ok());
        assert!(check_ring_bytes(4095).is_err());
        assert!(check_ring_bytes(2048).is_err());
        assert!(check_ring_bytes(128 << 20).is_err());
    }
}
