//! Loading and attaching Coral's embedded BPF objects (`coral-ebpf`).
//!
//! Used by the helper for `BpfLoad`/`BpfAttach`, and directly by a daemon
//! that already holds the privilege (root or `CAP_BPF` + `CAP_PERFMON`),
//! like [`crate::tun::create`]. Only objects compiled into this binary are
//! loaded, and only after the caller's SHA-256 matches the embedded one; the
//! attach points come from the embedded program table, never from a caller.
//!
//! The result is plain file descriptors: maps (stats, ports, then one ring
//! buffer per CPU), programs, and one BPF link per attached program. Whoever holds
//! them keeps the objects alive; when the last fd closes the kernel detaches
//! and frees everything, so a crashed agent leaves nothing behind.

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use aya::Btf;
use aya::maps::{ArrayOfMaps, Map, MapData};
use aya::programs::{BtfTracePoint, UProbe};
use coral_ebpf::Attach;
use coral_ebpf::{Object, Program};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum BpfError {
    #[error("no embedded BPF object named '{0}'")]
    UnknownObject(String),
    #[error(
        "BPF object '{name}' has hash {embedded}, the caller asked for {asked} (mismatched coral and coral-privhelper versions?)"
    )]
    HashMismatch {
        name: String,
        embedded: String,
        asked: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("{what}: {reason}")]
    Failed { what: String, reason: String },
}

pub(crate) fn failed(what: impl Into<String>, e: impl std::fmt::Display) -> BpfError {
    // aya errors nest their cause; keep the whole chain on one line.
    BpfError::Failed {
        what: what.into(),
        reason: e.to_string(),
    }
}

/// A loaded (not yet attached) object with its fds.
pub struct Loaded {
    object: &'static Object,
    programs: &'static [Program],
    /// Stats map, ports map, then one ring buffer per CPU.
    pub maps: Vec<OwnedFd>,
    /// One per program, in `programs` order.
    pub progs: Vec<OwnedFd>,
    /// Keeps aya's view alive while attaching; dropping it only closes
    /// this process's copies.
    _ebpf: aya::Ebpf,
}

impl Loaded {
    pub fn name(&self) -> &'static str {
        self.object.name
    }

    pub fn programs(&self) -> &'static [Program] {
        self.programs
    }
}

/// The program table of an embedded object.
pub fn programs_of(name: &str) -> Option<&'static [Program]> {
    match name {
        coral_ebpf::RED => Some(coral_ebpf::RED_PROGRAMS),
        coral_ebpf::UPROBE => Some(coral_ebpf::UPROBE_PROGRAMS),
        _ => None,
    }
}

/// Number of possible CPUs (`/sys/devices/system/cpu/possible`, e.g. `0-1`).
pub fn possible_cpus() -> Result<usize, BpfError> {
    let s = fs::read_to_string("/sys/devices/system/cpu/possible")
        .map_err(|e| failed("read /sys/devices/system/cpu/possible", e))?;
    parse_cpu_list(s.trim())
        .ok_or_else(|| BpfError::Invalid(format!("cannot parse CPU list '{}'", s.trim())))
}

fn parse_cpu_list(s: &str) -> Option<usize> {
    let mut max = None;
    for part in s.split(',') {
        let hi = match part.split_once('-') {
            Some((_, hi)) => hi.parse::<usize>().ok()?,
            None => part.parse::<usize>().ok()?,
        };
        max = Some(max.map_or(hi, |m: usize| m.max(hi)));
    }
    max.map(|m| m + 1)
}

/// Loads the embedded object `name` if `sha256` is its hash: creates its
/// maps, one ring buffer of `ring_bytes` per possible CPU, and loads every
/// program. `self_tgid` (the caller's pid) is never traced.
pub fn load(
    name: &str,
    sha256: &[u8; 32],
    ring_bytes: u32,
    self_tgid: u32,
) -> Result<Loaded, BpfError> {
    let object =
        coral_ebpf::object(name).ok_or_else(|| BpfError::UnknownObject(name.to_string()))?;
    if &object.sha256 != sha256 {
        return Err(BpfError::HashMismatch {
            name: name.to_string(),
            embedded: coral_ebpf::hex(&object.sha256),
            asked: coral_ebpf::hex(sha256),
        });
    }
    let programs = programs_of(name).ok_or_else(|| BpfError::UnknownObject(name.to_string()))?;
    coral_ebpf::check_ring_bytes(ring_bytes).map_err(BpfError::Invalid)?;
    if name == coral_ebpf::UPROBE {
        return load_uprobe(object, programs, ring_bytes);
    }
    let cpus = possible_cpus()?;
    if cpus > coral_ebpf::MAX_CPUS {
        return Err(BpfError::Invalid(format!(
            "{cpus} CPUs; the BPF object serves at most {}",
            coral_ebpf::MAX_CPUS
        )));
    }
    let mut ebpf = aya::EbpfLoader::new()
        .override_global(coral_ebpf::SELF_TGID_GLOBAL, &self_tgid, true)
        .load(object.bytes)
        .map_err(|e| failed(format!("load BPF object '{name}'"), chain(&e)))?;

    // One ring buffer per CPU, placed in the outer array.
    let mut rings = Vec::with_capacity(cpus);
    for _ in 0..cpus {
        let def = aya_obj::Map::new_from_params(
            aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_RINGBUF as u32,
            0,
            0,
            ring_bytes,
            0,
        );
        rings.push(
            MapData::create(def, "coral_ring", None)
                .map_err(|e| failed("create ring buffer", chain(&e)))?,
        );
    }
    {
        let outer = ebpf
            .map_mut(coral_ebpf::RINGS_MAP)
            .ok_or_else(|| BpfError::Invalid("object has no rings map".into()))?;
        let mut outer: ArrayOfMaps<&mut MapData> =
            ArrayOfMaps::try_from(outer).map_err(|e| failed("open rings map", chain(&e)))?;
        for (cpu, ring) in rings.iter().enumerate() {
            outer
                .set(cpu as u32, ring, 0)
                .map_err(|e| failed("fill rings map", chain(&e)))?;
        }
    }
    let mut maps = Vec::with_capacity(cpus + 2);
    let stats = match ebpf.map(coral_ebpf::STATS_MAP) {
        Some(Map::PerCpuArray(m)) => m.fd().as_fd().try_clone_to_owned(),
        _ => return Err(BpfError::Invalid("object has no stats map".into())),
    };
    maps.push(stats.map_err(|e| failed("dup stats map fd", e))?);
    let ports = match ebpf.map(coral_ebpf::PORTS_MAP) {
        Some(Map::Array(m)) => m.fd().as_fd().try_clone_to_owned(),
        _ => return Err(BpfError::Invalid("object has no ports map".into())),
    };
    maps.push(ports.map_err(|e| failed("dup ports map fd", e))?);
    for r in &rings {
        maps.push(
            r.fd()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| failed("dup ring fd", e))?,
        );
    }

    let mut progs = Vec::with_capacity(programs.len());
    let mut btf = None;
    for p in programs {
        let prog = ebpf
            .program_mut(p.name)
            .ok_or_else(|| BpfError::Invalid(format!("object has no program {}", p.name)))?;
        let what = |e: &dyn std::error::Error| failed(format!("program {}", p.name), chain(e));
        let btf = match &btf {
            Some(b) => b,
            None => btf.insert(
                Btf::from_sys_fs().map_err(|e| failed("read the kernel's BTF", chain(&e)))?,
            ),
        };
        let prog: &mut BtfTracePoint = prog.try_into().map_err(|e| what(&e))?;
        prog.load(p.tracepoint, btf)
            .map_err(|e| failed(format!("verify program {}", p.name), chain(&e)))?;
        let fd = prog
            .fd()
            .map_err(|e| what(&e))?
            .as_fd()
            .try_clone_to_owned();
        progs.push(fd.map_err(|e| failed("dup program fd", e))?);
    }
    Ok(Loaded {
        object,
        programs,
        maps,
        progs,
        _ebpf: ebpf,
    })
}

/// Loads the live-debugging object (issue 12): one event ring of
/// `ring_bytes`, its maps in [`coral_ebpf::UPROBE_MAPS`] order, and its one
/// program. Nothing is attached: attach points come one by one through
/// [`crate::uprobe::attach`].
fn load_uprobe(
    object: &'static Object,
    programs: &'static [Program],
    ring_bytes: u32,
) -> Result<Loaded, BpfError> {
    let mut ebpf = aya::EbpfLoader::new()
        .map_max_entries("events", ring_bytes)
        .load(object.bytes)
        .map_err(|e| failed("load BPF object 'uprobe'", chain(&e)))?;
    let mut maps = Vec::with_capacity(coral_ebpf::UPROBE_MAPS.len());
    for name in coral_ebpf::UPROBE_MAPS {
        let fd = match ebpf.map(name) {
            Some(Map::RingBuf(m) | Map::HashMap(m) | Map::Array(m) | Map::PerCpuArray(m)) => {
                m.fd().as_fd().try_clone_to_owned()
            }
            _ => return Err(BpfError::Invalid(format!("object has no map {name}"))),
        };
        maps.push(fd.map_err(|e| failed("dup map fd", e))?);
    }
    let prog: &mut UProbe = ebpf
        .program_mut(coral_ebpf::UPROBE_PROGRAM)
        .ok_or_else(|| BpfError::Invalid("object has no uprobe program".into()))?
        .try_into()
        .map_err(|e| failed("uprobe program", chain(&e)))?;
    prog.load()
        .map_err(|e| failed("verify program coral_uprobe", chain(&e)))?;
    let fd = prog
        .fd()
        .map_err(|e| failed("uprobe program", chain(&e)))?
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| failed("dup program fd", e))?;
    Ok(Loaded {
        object,
        programs,
        maps,
        progs: vec![fd],
        _ebpf: ebpf,
    })
}

/// Every cause of an error, joined, so "verify program" shows the
/// verifier's reason.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    // The verifier log can be long; the first lines name the problem.
    s.chars().take(2000).collect()
}

/// `perf_event_attr` up to `config3` (PERF_ATTR_SIZE_VER8, 136 bytes); only
/// the fields a uprobe event needs are named ([`crate::uprobe`]).
#[repr(C)]
#[derive(Default)]
pub(crate) struct PerfEventAttr {
    pub(crate) type_: u32,
    pub(crate) size: u32,
    pub(crate) config: u64,
    pub(crate) sample_period: u64,
    pub(crate) sample_type: u64,
    pub(crate) read_format: u64,
    pub(crate) flags: u64,
    pub(crate) wakeup_events: u32,
    pub(crate) bp_type: u32,
    pub(crate) rest: [u64; 10],
}

/// The `link_create` member of `union bpf_attr` (the rest must be zero).
#[repr(C)]
#[derive(Default)]
pub(crate) struct LinkCreateAttr {
    pub(crate) prog_fd: u32,
    pub(crate) target_fd: u32,
    pub(crate) attach_type: u32,
    pub(crate) flags: u32,
    pub(crate) rest: [u64; 4],
}

/// The `raw_tracepoint` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct RawTracepointAttr {
    name: u64,
    prog_fd: u32,
    _pad: u32,
    cookie: u64,
}

const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
pub(crate) const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
pub(crate) const BPF_LINK_CREATE: libc::c_long = 28;
pub(crate) const BPF_PERF_EVENT: u32 = 41;

/// Attaches program `index` of `loaded` to its tracepoint from the embedded
/// table with `BPF_RAW_TRACEPOINT_OPEN` (no name: the kernel takes the
/// tracepoint from the program's BTF id, fixed at load); returns the BPF
/// link fd (closing it detaches).
pub fn attach(loaded: &Loaded, index: usize) -> Result<OwnedFd, BpfError> {
    let p = loaded
        .programs
        .get(index)
        .ok_or_else(|| BpfError::Invalid(format!("program index {index} out of range")))?;
    if p.attach == Attach::Uprobe {
        return Err(BpfError::Invalid(
            "uprobe programs attach with UprobeAttach".into(),
        ));
    }
    let attr = RawTracepointAttr {
        name: 0,
        prog_fd: loaded.progs[index].as_raw_fd() as u32,
        ..Default::default()
    };
    // SAFETY: bpf(BPF_RAW_TRACEPOINT_OPEN) reads `size` bytes from a valid
    // attr that outlives the call.
    let link = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_RAW_TRACEPOINT_OPEN,
            &attr as *const RawTracepointAttr,
            std::mem::size_of::<RawTracepointAttr>() as libc::c_uint,
        )
    };
    if link < 0 {
        return Err(failed(
            format!("attach {} to raw tracepoint {}", p.name, p.tracepoint),
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: the syscall just returned this new fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(link as libc::c_int) })
}

/// Loads `name` and attaches every program: what a privileged daemon does
/// without the helper. Returns the loaded fds and the link fds.
pub fn load_and_attach(
    name: &str,
    sha256: &[u8; 32],
    ring_bytes: u32,
    self_tgid: u32,
) -> Result<(Loaded, Vec<OwnedFd>), BpfError> {
    let loaded = load(name, sha256, ring_bytes, self_tgid)?;
    let links = (0..loaded.programs.len())
        .map(|i| attach(&loaded, i))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((loaded, links))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0"), Some(1));
        assert_eq!(parse_cpu_list("0-1"), Some(2));
        assert_eq!(parse_cpu_list("0-3,8-11"), Some(12));
        assert_eq!(parse_cpu_list("x"), None);
    }

    #[test]
    fn attr_sizes_match_the_kernel_abi() {
        assert_eq!(std::mem::size_of::<PerfEventAttr>(), 136);
        assert_eq!(std::mem::size_of::<LinkCreateAttr>(), 48);
        assert_eq!(std::mem::size_of::<RawTracepointAttr>(), 24);
    }

    #[test]
    fn wrong_name_or_hash_is_refused_before_anything_is_loaded() {
        assert!(matches!(
            load("nope", &[0; 32], 4096, 1),
            Err(BpfError::UnknownObject(_))
        ));
        assert!(matches!(
            load(coral_ebpf::RED, &[0; 32], 4096, 1),
            Err(BpfError::HashMismatch { .. })
        ));
    }
}
