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
    /// The tracefs category (for a BTF raw tracepoint, informational).
    pub category: &'static str,
    pub tracepoint: &'static str,
    pub attach: Attach,
}

/// How a program attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// A perf tracepoint event (`perf_event_open` + `BPF_LINK_CREATE`).
    Tracepoint,
    /// A BTF-typed raw tracepoint (`tp_btf`, `BPF_RAW_TRACEPOINT_OPEN`
    /// with no name: the kernel takes it from the program's BTF id).
    BtfRawTracepoint,
}

/// The RED + connection-map object.
pub const RED: &str = "coral";

/// Programs of [`RED`], in the order their fds are passed.
pub const RED_PROGRAMS: &[Program] = &[
    Program {
        name: "sys_exit",
        category: "raw_syscalls",
        tracepoint: "sys_exit",
        attach: Attach::BtfRawTracepoint,
    },
    Program {
        name: "set_state",
        category: "sock",
        tracepoint: "inet_sock_set_state",
        attach: Attach::Tracepoint,
    },
];

/// The outer ARRAY_OF_MAPS: slot `cpu` holds that CPU's ring buffer.
pub const RINGS_MAP: &str = "rings";
/// Per-CPU counters, slots below.
pub const STATS_MAP: &str = "stats";
/// The set of listening ports to follow: one `[u64; 1024]` bitmap at key 0.
pub const PORTS_MAP: &str = "ports";

/// Sets `port` in a [`PORTS_MAP`] bitmap.
pub fn set_port(bits: &mut [u64; 1024], port: u16) {
    bits[usize::from(port >> 6)] |= 1 << (port & 63);
}
/// The global the loader sets to the agent's pid (its events are skipped).
pub const SELF_TGID_GLOBAL: &str = "coral_self_tgid";
/// Most CPUs the object serves (`MAX_CPUS` in the C source).
pub const MAX_CPUS: usize = 128;
/// Bytes captured per read (`CAP` in the C source): enough for a burst of
/// pipelined requests.
pub const CAPTURE_IN_BYTES: usize = 4096;
/// Bytes captured per write (`CAP_OUT`): the response head.
pub const CAPTURE_OUT_BYTES: usize = 512;

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
        assert!(object("nope").is_none());
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
