//! Debug sessions (issue 12): each one is its own uprobe object (ring, probe
//! configs, hit counters) loaded through `coral-privhelper` or directly, and
//! the link fds of its attach points. Dropping a session closes them, which
//! removes every probe; sessions end by `detach`, at their TTL (checked on
//! every [`Debugger::poll`]), or with the agent's process.
//!
//! Pairing: Go calls by (goroutine, depth from the goroutine's stack top,
//! function): the depth is the same at the entry and at the return
//! instructions and survives stack copies; an entry seen again at an open
//! key is the prologue re-run after `morestack`, so the open call is kept.
//! Native calls by (thread, function), a stack each for recursion.

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData, PerCpuArray, RingBuf};
use coral_ebpf::{
    CFG_ARGS, CFG_GO, CFG_STACK, KIND_ENTRY, KIND_RET_INSN, KIND_URETPROBE, LEN_CSTR,
    UPROBE_CFG_BYTES, UprobeEvent, uprobe_config,
};
use coral_privhelper::{UprobeObject, UprobePoint};
use coral_proto::debug::{
    DEFAULT_DEBUG_TTL_MS, DebugAttachRequest, DebugCall, DebugError, DebugFunction, DebugFunctions,
    DebugLogs, DebugLogsRequest, DebugProbe, DebugSession, DebugTarget, DebugValue,
    MAX_DEBUG_TTL_MS,
};

use super::index::{FunctionInfo, Index, Lang, Location, Param, ValueKind};

/// Limits of one agent (`coral agent status` shows them).
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_sessions: usize,
    pub max_functions_per_session: usize,
    pub max_points_per_agent: usize,
    pub ring_bytes: u32,
    /// Calls kept per session for `debug logs`.
    pub max_calls_kept: usize,
    /// Ended sessions kept for `debug logs`.
    pub max_ended_kept: usize,
    /// What one probe hit costs the traced program (the uprobe trap and
    /// the program), in ns; about 15 µs on the VMs Coral is tested on.
    pub hit_cost_ns: u64,
    /// A probe whose hits cost more than this many µs of CPU per second
    /// (1,000 = 0.1 % of one CPU) over a window is detached.
    pub budget_us_per_s: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_sessions: 4,
            max_functions_per_session: 8,
            max_points_per_agent: 256,
            ring_bytes: 1 << 20,
            max_calls_kept: 10_000,
            max_ended_kept: 16,
            hit_cost_ns: 15_000,
            budget_us_per_s: 20_000,
        }
    }
}

/// One probed function inside a session.
struct Probe {
    func: FunctionInfo,
    return_offsets: Vec<u64>,
    /// String slot of each param / result (`None`: not a captured string).
    arg_slots: Vec<Option<usize>>,
    res_slots: Vec<Option<usize>>,
}

struct Open {
    start_ns: u64,
    /// The session's event count when it opened (see `go_last`).
    at: u64,
    ev: UprobeEvent,
}

/// The kernel side of an active session; dropping it detaches.
struct Live {
    /// Each attach point's link, with the index of its probe.
    links: Vec<(usize, OwnedFd)>,
    ring: RingBuf<MapData>,
    hits: Array<MapData, u64>,
    stats: PerCpuArray<MapData, u64>,
}

struct Session {
    info: DebugSession,
    live: Option<Live>,
    lang: Lang,
    capture: bool,
    stack: bool,
    /// (address, size, name) of the binary's functions, by address: stacks
    /// are symbolized with it.
    symbols: Vec<(u64, u64, String)>,
    probes: Vec<Probe>,
    expires: Instant,
    clock_offset_ns: i128,
    go_open: HashMap<(u64, u64, usize), Open>,
    /// Per goroutine, the session's event count at its last event: an
    /// entry at an open key right after that key's own entry, on a moved
    /// stack, is the prologue re-run after `morestack`; otherwise the open
    /// call was left by a panic (or its goroutine ended and `g` was reused)
    /// and the new entry replaces it.
    go_last: HashMap<u64, u64>,
    events_seen: u64,
    native_open: HashMap<(u32, usize), Vec<Open>>,
    calls: VecDeque<DebugCall>,
    /// Calls not yet handed to the telemetry store ([`Debugger::take_unsaved`]).
    unsaved: Vec<DebugCall>,
    /// The budget window: when it started and each probe's hits then.
    window: (Instant, Vec<u64>),
}

/// The agent's debug sessions.
pub struct Debugger {
    helper_socket: PathBuf,
    limits: Limits,
    state: Mutex<SessionTable>,
    /// Indexed binaries by file identity, least recently used first.
    indexes: Mutex<Vec<(FileKey, Arc<Index>)>>,
}

/// (device, inode, size, mtime s, mtime ns) of a binary.
type FileKey = (u64, u64, u64, i64, i64);

/// Binaries whose index is kept.
const INDEXES_KEPT: usize = 4;

/// The agent's debug sessions and traces, behind one lock.
#[derive(Default)]
pub(super) struct SessionTable {
    sessions: Vec<Session>,
    next_id: u64,
    seq: u64,
    pub(super) next_trace: u64,
    pub(super) traces: Vec<coral_proto::debug::DebugTrace>,
}

fn realtime_minus_monotonic_ns() -> i128 {
    use nix::time::{ClockId, clock_gettime};
    let t = |c| {
        clock_gettime(c)
            .map(|ts| i128::from(ts.tv_sec()) * 1_000_000_000 + i128::from(ts.tv_nsec()))
            .unwrap_or(0)
    };
    let m1 = t(ClockId::CLOCK_MONOTONIC);
    let r = t(ClockId::CLOCK_REALTIME);
    let m2 = t(ClockId::CLOCK_MONOTONIC);
    r - (m1 + m2) / 2
}

/// Refuses runtimes the probes cannot follow, naming what is supported.
fn check_runtime(exe: &Path) -> Result<(), DebugError> {
    let name = exe
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let runtime = if name.starts_with("python") {
        Some("Python")
    } else if name == "node" || name == "nodejs" {
        Some("Node.js")
    } else if name == "java" {
        Some("Java")
    } else if name.starts_with("ruby") {
        Some("Ruby")
    } else if name.starts_with("php") {
        Some("PHP")
    } else {
        None
    };
    match runtime {
        Some(r) => Err(DebugError::Unsupported(format!(
            "{r} programs cannot be probed ({} is an interpreter): coral debug probes Go (1.17 or newer) and C, C++ and Rust binaries on x86_64; 'coral debug trace' shows {r} requests from the HTTP capture",
            exe.display()
        ))),
        None => Ok(()),
    }
}

/// Formats a value captured from registers.
fn format_value(p: &Param, ev: &UprobeEvent, slot: Option<usize>) -> String {
    let regs = match &p.location {
        Location::Regs(r) => r,
        Location::Unavailable(why) => return format!("<unavailable: {why}>"),
    };
    let reg = |i: usize| {
        regs.get(i)
            .and_then(|r| ev.regs.get(usize::from(*r)))
            .copied()
            .unwrap_or(0)
    };
    let text = |slot: Option<usize>, total: u64| match slot.map(|s| &ev.strs[s]) {
        Some(Some(b)) => {
            let s = String::from_utf8_lossy(b);
            if total > b.len() as u64 {
                format!("{s:?}… ({total} bytes)")
            } else {
                format!("{s:?}")
            }
        }
        Some(None) => "<unreadable>".into(),
        None => String::new(),
    };
    match &p.kind {
        ValueKind::Int { signed, bytes } => {
            let bits = u32::from(*bytes).clamp(1, 8) * 8;
            let v = reg(0);
            let v = if bits == 64 {
                v
            } else {
                v & ((1u64 << bits) - 1)
            };
            if *signed {
                let shift = 64 - bits;
                (((v << shift) as i64) >> shift).to_string()
            } else {
                v.to_string()
            }
        }
        ValueKind::Bool => (reg(0) & 0xff != 0).to_string(),
        ValueKind::Pointer => format!("{:#x}", reg(0)),
        ValueKind::CString => match slot.map(|s| &ev.strs[s]) {
            Some(Some(b)) => format!("{:?}", String::from_utf8_lossy(b)),
            _ if reg(0) == 0 => "NULL".into(),
            _ => format!("{:#x}", reg(0)),
        },
        ValueKind::String => text(slot, reg(1)),
        ValueKind::Slice { bytes } => {
            let (len, cap) = (reg(1), reg(2));
            if *bytes && slot.is_some() {
                format!("{} len={len} cap={cap}", text(slot, len))
            } else {
                format!("len={len} cap={cap}")
            }
        }
        ValueKind::Interface => {
            if reg(0) == 0 {
                "nil".into()
            } else {
                format!("non-nil (type {:#x})", reg(0))
            }
        }
        ValueKind::Float | ValueKind::Other => "<unavailable>".into(),
    }
}

/// String slots for `params` (at most `UPROBE_MAX_STRS`), and the config
/// pairs (pointer register, length register) for the BPF side.
fn string_slots(params: &[Param]) -> (Vec<Option<usize>>, Vec<(u8, u8)>) {
    let mut slots = Vec::new();
    let mut pairs = Vec::new();
    for p in params {
        let pair = match (&p.kind, &p.location) {
            (ValueKind::String | ValueKind::Slice { bytes: true }, Location::Regs(r)) => {
                Some((r[0], r[1]))
            }
            (ValueKind::CString, Location::Regs(r)) => Some((r[0], LEN_CSTR)),
            _ => None,
        };
        match pair {
            Some(pair) if pairs.len() < coral_ebpf::UPROBE_MAX_STRS => {
                slots.push(Some(pairs.len()));
                pairs.push(pair);
            }
            _ => slots.push(None),
        }
    }
    (slots, pairs)
}

fn describe(p: &Param) -> String {
    format!("{} {}", p.name, p.type_name)
}

fn open_map(fd: &OwnedFd) -> Result<MapData, DebugError> {
    let fd = fd
        .try_clone()
        .map_err(|e| DebugError::Failed(format!("dup map fd: {e}")))?;
    MapData::from_fd(fd).map_err(|e| DebugError::Failed(format!("open BPF map: {e}")))
}

impl Debugger {
    pub fn new(helper_socket: PathBuf, limits: Limits) -> Self {
        Debugger {
            helper_socket,
            limits,
            state: Mutex::new(SessionTable::default()),
            indexes: Mutex::new(Vec::new()),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, SessionTable> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pid of a target; `port_of` maps a service name to its port. A
    /// sandboxed agent cannot see other processes' sockets (landlock scopes
    /// `/proc/PID/fd`), so then coral-privhelper finds the listener.
    pub fn target_pid(
        &self,
        target: &DebugTarget,
        port_of: impl Fn(&str) -> Option<u16>,
    ) -> Result<u32, DebugError> {
        match target {
            DebugTarget::Pid(p) => Ok(*p),
            DebugTarget::Service(s) => {
                let port = port_of(s).ok_or_else(|| {
                    DebugError::NotFound(format!("no service '{s}' on this agent"))
                })?;
                if let Some(pid) = coral_privhelper::uprobe::find_listener(port) {
                    return Ok(pid);
                }
                let helper = coral_privhelper::Client::connect(&self.helper_socket)
                    .and_then(|mut c| c.open_target(0, port));
                match helper {
                    Ok((pid, _, _)) => Ok(pid),
                    Err(e) => Err(DebugError::NotFound(format!(
                        "cannot find the process listening on port {port} (service '{s}'): {e}"
                    ))),
                }
            }
        }
    }

    /// The binary of `pid`, indexed: read directly, or (a sandboxed agent
    /// cannot open another process's `/proc/PID/exe`) from the fd
    /// coral-privhelper opens. Indexes are kept per file (device, inode,
    /// size, mtime) across attaches: a rebuilt binary is a new file.
    pub(super) fn index_of(&self, pid: u32) -> Result<(PathBuf, Arc<Index>), DebugError> {
        let exe = format!("/proc/{pid}/exe");
        let direct = std::fs::read_link(&exe)
            .map_err(|e| e.to_string())
            .and_then(|path| {
                check_runtime(&path).map_err(|e| format!("refused: {e}"))?;
                std::fs::File::open(&exe)
                    .map(|f| (path, f))
                    .map_err(|e| e.to_string())
            });
        let (path, file) = match direct {
            Ok(x) => x,
            Err(e) if e.starts_with("refused: ") => {
                return Err(DebugError::Unsupported(e["refused: ".len()..].to_string()));
            }
            Err(direct) => {
                let (_, path, fd) = coral_privhelper::Client::connect(&self.helper_socket)
                    .and_then(|mut c| c.open_target(pid, 0))
                    .map_err(|e| {
                        DebugError::NotFound(format!(
                            "cannot read process {pid}'s binary ({direct}), nor through coral-privhelper: {e}"
                        ))
                    })?;
                let path = PathBuf::from(path);
                check_runtime(&path)?;
                (path, std::fs::File::from(fd))
            }
        };
        let read_err =
            |e: std::io::Error| DebugError::Failed(format!("read {}: {e}", path.display()));
        let key = {
            use std::os::unix::fs::MetadataExt;
            let md = file.metadata().map_err(read_err)?;
            (md.dev(), md.ino(), md.len(), md.mtime(), md.mtime_nsec())
        };
        {
            let mut cache = self.indexes.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(i) = cache.iter().position(|(k, _)| *k == key) {
                let hit = cache.remove(i);
                let idx = hit.1.clone();
                cache.push(hit);
                return Ok((path, idx));
            }
        }
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut &file, &mut data).map_err(read_err)?;
        let idx = Arc::new(
            Index::from_bytes(&path, data).map_err(|e| DebugError::Unsupported(e.to_string()))?,
        );
        let mut cache = self.indexes.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= INDEXES_KEPT {
            cache.remove(0);
        }
        cache.push((key, idx.clone()));
        Ok((path, idx))
    }

    /// `coral debug functions`: what can be probed in `pid`'s binary.
    pub fn functions(
        &self,
        pid: u32,
        pattern: &str,
        limit: usize,
    ) -> Result<DebugFunctions, DebugError> {
        let (exe, idx) = self.index_of(pid)?;
        let all: Vec<_> = idx.matching(pattern).collect();
        let shown = idx.detailed_all(&all[..all.len().min(limit)]);
        Ok(DebugFunctions {
            pid,
            binary: exe.display().to_string(),
            lang: lang_name(idx.lang).into(),
            has_dwarf: idx.has_dwarf,
            total: all.len() as u64,
            functions: shown
                .into_iter()
                .map(|f| DebugFunction {
                    params: f.params.iter().map(describe).collect(),
                    name: f.name,
                    offset: f.offset,
                    size: f.size,
                })
                .collect(),
        })
    }

    /// Starts a session on `pid`: indexes its binary, loads a uprobe object,
    /// attaches every point (each re-checked by whoever attaches it).
    /// [`Debugger::attach_checked`] with every function allowed (tests and
    /// direct library use).
    pub fn attach(&self, pid: u32, req: &DebugAttachRequest) -> Result<DebugSession, DebugError> {
        self.attach_checked(pid, req, &|_| Ok(true))
    }

    /// Starts a session; `allow` says for each resolved function name
    /// whether it may be probed (an error refuses the whole session) and
    /// whether argument values may be captured.
    pub fn attach_checked(
        &self,
        pid: u32,
        req: &DebugAttachRequest,
        allow: &dyn Fn(&str) -> Result<bool, DebugError>,
    ) -> Result<DebugSession, DebugError> {
        if req.functions.is_empty() {
            return Err(DebugError::Invalid("name at least one function".into()));
        }
        if req.functions.len() > self.limits.max_functions_per_session {
            return Err(DebugError::Limit(format!(
                "{} functions asked; at most {} per session",
                req.functions.len(),
                self.limits.max_functions_per_session
            )));
        }
        let ttl = session_ttl(req.ttl_ms)?;
        {
            let st = self.lock();
            let active = st.sessions.iter().filter(|s| s.live.is_some()).count();
            if active >= self.limits.max_sessions {
                return Err(DebugError::Limit(format!(
                    "{active} sessions are active; at most {} per agent (detach one first)",
                    self.limits.max_sessions
                )));
            }
        }
        let (exe, idx) = self.index_of(pid)?;
        let mut probes = Vec::new();
        for name in &req.functions {
            let f = idx
                .resolve(name)
                .map_err(|e| DebugError::NotFound(e.to_string()))?;
            let args_ok = allow(&f.name)?;
            if req.capture_args && !args_ok {
                return Err(DebugError::Refused(format!(
                    "the host's policy allows probing {} but not capturing its arguments (attach without --args)",
                    f.name
                )));
            }
            let return_offsets = match idx.lang {
                Lang::Go => idx.return_offsets(&f),
                Lang::Native => vec![f.offset],
            };
            let (arg_slots, _) = string_slots(&f.params);
            let (res_slots, _) = string_slots(&f.results);
            probes.push(Probe {
                func: f,
                return_offsets,
                arg_slots,
                res_slots,
            });
        }
        let points: usize = probes.iter().map(|p| 1 + p.return_offsets.len()).sum();
        {
            let st = self.lock();
            let used: u32 = st
                .sessions
                .iter()
                .filter(|s| s.live.is_some())
                .map(|s| s.info.attach_points)
                .sum();
            if used as usize + points > self.limits.max_points_per_agent {
                return Err(DebugError::Limit(format!(
                    "{points} attach points asked, {used} in use; at most {} per agent",
                    self.limits.max_points_per_agent
                )));
            }
        }

        let (mut obj, via) = UprobeObject::open(&self.helper_socket, self.limits.ring_bytes)
            .map_err(|e| DebugError::Failed(e.to_string()))?;
        let mut cfgs: BpfHashMap<MapData, u32, [u8; UPROBE_CFG_BYTES]> =
            BpfHashMap::try_from(Map::HashMap(open_map(&obj.maps[1])?))
                .map_err(|e| DebugError::Failed(e.to_string()))?;
        let go = idx.lang == Lang::Go;
        let base = if go { CFG_GO } else { 0 }
            | if req.capture_args { CFG_ARGS } else { 0 }
            | if req.stack { CFG_STACK } else { 0 };
        // The helper (or this process) opens the binary through the
        // process itself, so a deleted or replaced file is still the one
        // mapped.
        let attach_path = format!("/proc/{pid}/exe");
        let path = exe.display().to_string();
        let mut links = Vec::with_capacity(points);
        for (i, p) in probes.iter().enumerate() {
            let (entry_id, ret_id) = (2 * i as u32, 2 * i as u32 + 1);
            let (_, arg_pairs) = string_slots(&p.func.params);
            let (_, res_pairs) = string_slots(&p.func.results);
            for (id, pairs) in [(entry_id, arg_pairs), (ret_id, res_pairs)] {
                cfgs.insert(id, uprobe_config(base, &pairs), 0)
                    .map_err(|e| DebugError::Failed(format!("configure probe: {e}")))?;
            }
            let point = |probe_id, kind, offset| UprobePoint {
                probe_id,
                kind,
                pid,
                offset,
                path: attach_path.clone(),
            };
            let attach = |obj: &mut UprobeObject, pt: UprobePoint| {
                obj.attach(&pt).map_err(|e| {
                    DebugError::Failed(format!("attach {} at {:#x}: {e}", p.func.name, pt.offset))
                })
            };
            links.push((
                i,
                attach(&mut obj, point(entry_id, KIND_ENTRY, p.func.offset))?,
            ));
            let kind = if go { KIND_RET_INSN } else { KIND_URETPROBE };
            for off in &p.return_offsets {
                links.push((i, attach(&mut obj, point(ret_id, kind, *off))?));
            }
        }
        obj.release();
        let live = Live {
            links,
            ring: RingBuf::try_from(Map::RingBuf(open_map(&obj.maps[0])?))
                .map_err(|e| DebugError::Failed(e.to_string()))?,
            hits: Array::try_from(Map::Array(open_map(&obj.maps[2])?))
                .map_err(|e| DebugError::Failed(e.to_string()))?,
            stats: PerCpuArray::try_from(Map::PerCpuArray(open_map(&obj.maps[3])?))
                .map_err(|e| DebugError::Failed(e.to_string()))?,
        };
        let now = coral_proto::now_ms();
        let mut st = self.lock();
        st.next_id += 1;
        let id = format!("dbg-{}", st.next_id);
        let info = DebugSession {
            id: id.clone(),
            pid,
            binary: path,
            lang: lang_name(idx.lang).into(),
            attached_via: via.to_string(),
            probes: probes
                .iter()
                .map(|p| DebugProbe {
                    function: p.func.name.clone(),
                    entry_offset: p.func.offset,
                    return_offsets: p.return_offsets.clone(),
                    params: p.func.params.iter().map(describe).collect(),
                    hits: 0,
                    cost_us_per_s: 0,
                    state: "attached".into(),
                    events_per_s: 0,
                })
                .collect(),
            attach_points: points as u32,
            started_ms: now,
            expires_ms: now + ttl as i64,
            calls: 0,
            dropped: 0,
            state: "active".into(),
            service: match &req.target {
                DebugTarget::Service(s) => s.clone(),
                DebugTarget::Pid(_) => String::new(),
            },
        };
        st.sessions.push(Session {
            info: info.clone(),
            live: Some(live),
            lang: idx.lang,
            capture: req.capture_args,
            stack: req.stack,
            symbols: if req.stack {
                idx.functions
                    .iter()
                    .map(|f| (f.addr, f.size, f.name.clone()))
                    .collect()
            } else {
                Vec::new()
            },
            probes,
            expires: Instant::now() + Duration::from_millis(ttl),
            clock_offset_ns: realtime_minus_monotonic_ns(),
            go_open: HashMap::new(),
            go_last: HashMap::new(),
            events_seen: 0,
            native_open: HashMap::new(),
            calls: VecDeque::new(),
            unsaved: Vec::new(),
            window: (Instant::now(), vec![0; req.functions.len()]),
        });
        Ok(info)
    }

    /// Reads every active session's ring, pairs events into calls, and ends
    /// the sessions past their TTL (closing their links). Call it often
    /// (the agent does every 100 ms).
    pub fn poll(&self) {
        let mut st = self.lock();
        let SessionTable { sessions, seq, .. } = &mut *st;
        let now = Instant::now();
        for s in sessions.iter_mut() {
            s.drain(seq, self.limits.max_calls_kept);
            s.check_budget(&self.limits);
            if s.live.is_some() && now >= s.expires {
                s.end("expired");
            }
        }
        trim_ended(sessions, self.limits.max_ended_kept);
    }

    /// Ends one session (or all, with `None`); returns the ended sessions.
    pub fn detach(&self, id: Option<&str>) -> Result<Vec<DebugSession>, DebugError> {
        let mut st = self.lock();
        let SessionTable { sessions, seq, .. } = &mut *st;
        let mut out = Vec::new();
        for s in sessions.iter_mut() {
            if s.live.is_some() && id.is_none_or(|i| i == s.info.id) {
                s.drain(seq, self.limits.max_calls_kept);
                s.end("detached");
                out.push(s.info.clone());
            }
        }
        if let Some(i) = id
            && out.is_empty()
        {
            return Err(DebugError::NotFound(format!("no active session '{i}'")));
        }
        Ok(out)
    }

    /// The calls paired since the last call, as rows for the telemetry
    /// store (which numbers them and forwards them to the colony).
    pub fn take_unsaved(&self) -> Vec<coral_proto::ProbeCallRecord> {
        let mut st = self.lock();
        let mut out = Vec::new();
        for s in st.sessions.iter_mut() {
            for c in s.unsaved.drain(..) {
                out.push(c.record(&s.info.service, s.info.pid));
            }
        }
        out
    }

    /// Continues session ids and call numbers after those already stored
    /// (by an earlier run of the agent), so stored calls keep their
    /// identity across restarts.
    pub fn resume_after(&self, last_session: u64, last_call_seq: u64) {
        let mut st = self.lock();
        st.next_id = st.next_id.max(last_session);
        st.seq = st.seq.max(last_call_seq);
    }

    /// The calls a session holds in memory.
    pub(super) fn session_calls(&self, session: &str) -> Vec<DebugCall> {
        self.lock()
            .sessions
            .iter()
            .find(|s| s.info.id == session)
            .map(|s| s.calls.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Sessions, attach points and limits, for `coral agent status`.
    pub fn status(&self, stored_calls: u64) -> coral_proto::debug::DebugStatus {
        let l = &self.limits;
        let sessions: Vec<DebugSession> = self
            .lock()
            .sessions
            .iter()
            .filter(|s| s.live.is_some())
            .map(|s| s.info.clone())
            .collect();
        coral_proto::debug::DebugStatus {
            active_sessions: sessions.len() as u32,
            attach_points: sessions.iter().map(|s| s.attach_points).sum(),
            stored_calls,
            sessions,
            limits: coral_proto::debug::DebugLimits {
                max_sessions: l.max_sessions as u32,
                max_functions_per_session: l.max_functions_per_session as u32,
                max_points_per_agent: l.max_points_per_agent as u32,
                budget_us_per_s: l.budget_us_per_s,
                hit_cost_ns: l.hit_cost_ns,
                max_events_per_s_per_probe: l.budget_us_per_s.saturating_mul(1000)
                    / l.hit_cost_ns.max(1),
                default_ttl_s: DEFAULT_DEBUG_TTL_MS / 1000,
                max_ttl_s: MAX_DEBUG_TTL_MS / 1000,
            },
        }
    }

    /// Active and recently ended sessions.
    pub fn list(&self) -> Vec<DebugSession> {
        self.poll();
        self.lock()
            .sessions
            .iter()
            .map(|s| s.info.clone())
            .collect()
    }

    /// Calls after `req.after_seq`, oldest first.
    pub fn logs(&self, req: &DebugLogsRequest) -> Result<DebugLogs, DebugError> {
        self.poll();
        let st = self.lock();
        if let Some(id) = &req.session
            && !st.sessions.iter().any(|s| &s.info.id == id)
        {
            return Err(DebugError::NotFound(format!("no session '{id}'")));
        }
        let limit = (req.limit.clamp(1, 10_000)) as usize;
        let chosen: Vec<_> = st
            .sessions
            .iter()
            .filter(|s| req.session.as_ref().is_none_or(|id| &s.info.id == id))
            .collect();
        let mut calls: Vec<DebugCall> = chosen
            .iter()
            .flat_map(|s| s.calls.iter().filter(|c| c.seq > req.after_seq).cloned())
            .collect();
        calls.sort_by_key(|c| c.seq);
        calls.truncate(limit);
        Ok(DebugLogs {
            calls,
            sessions: chosen.iter().map(|s| s.info.clone()).collect(),
        })
    }
}

fn trim_ended(sessions: &mut Vec<Session>, keep: usize) {
    let ended = sessions.iter().filter(|s| s.live.is_none()).count();
    let mut extra = ended.saturating_sub(keep);
    sessions.retain(|s| {
        if extra > 0 && s.live.is_none() && s.unsaved.is_empty() {
            extra -= 1;
            false
        } else {
            true
        }
    });
}

fn lang_name(l: Lang) -> &'static str {
    match l {
        Lang::Go => "go",
        Lang::Native => "native",
    }
}

impl Session {
    /// Detaches every probe whose cost over the last window (at least
    /// 500 ms) is above the budget: hits × the cost of one hit.
    fn check_budget(&mut self, limits: &Limits) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        let elapsed = self.window.0.elapsed();
        if elapsed < Duration::from_millis(500) {
            return;
        }
        for (i, p) in self.info.probes.iter_mut().enumerate() {
            let before = self.window.1.get(i).copied().unwrap_or(0);
            let hits = p.hits.saturating_sub(before);
            let cost_us = hits.saturating_mul(limits.hit_cost_ns) / 1000;
            p.cost_us_per_s = (cost_us as f64 / elapsed.as_secs_f64()) as u64;
            p.events_per_s = (hits as f64 / elapsed.as_secs_f64()) as u64;
            if p.state == "attached" && p.cost_us_per_s > limits.budget_us_per_s {
                live.links.retain(|(probe, _)| *probe != i);
                p.state = format!(
                    "detached: over budget ({} µs/s of CPU > {} µs/s)",
                    p.cost_us_per_s, limits.budget_us_per_s
                );
                tracing::info!(session = %self.info.id, function = %p.function, cost_us_per_s = p.cost_us_per_s, "debug probe over budget; detached");
            }
        }
        self.window = (
            Instant::now(),
            self.info.probes.iter().map(|p| p.hits).collect(),
        );
    }

    fn end(&mut self, why: &str) {
        // Dropping the links removes every probe of the session.
        self.live = None;
        self.info.state = why.into();
        self.go_open.clear();
        self.go_last.clear();
        self.native_open.clear();
    }

    /// The entry's stack as names: the probed function, its caller (the
    /// return address at the stack pointer), then the frame-pointer walk
    /// past them. Addresses are relocated by the load bias the entry's own
    /// ip gives (it is the function's entry).
    fn symbolize(&self, ev: &UprobeEvent, entry_addr: u64) -> Vec<String> {
        if ev.stack.is_empty() {
            return Vec::new();
        }
        let bias = ev.ip.wrapping_sub(entry_addr);
        let name = |addr: u64| {
            let v = addr.wrapping_sub(bias);
            let i = self.symbols.partition_point(|s| s.0 <= v);
            match i.checked_sub(1).map(|i| &self.symbols[i]) {
                Some((a, size, n)) if v - a < (*size).max(1) => format!("{n}+{:#x}", v - a),
                _ => format!("{addr:#x}"),
            }
        };
        let mut out = vec![name(ev.stack[0])];
        if ev.ret_addr != 0 {
            out.push(name(ev.ret_addr));
        }
        // The walk from the caller's frame pointer: its first frame past
        // the ip is the caller's caller (skip a duplicate of the caller).
        for (i, a) in ev.stack.iter().enumerate().skip(1) {
            if i == 1 && *a == ev.ret_addr {
                continue;
            }
            out.push(name(*a));
        }
        out.truncate(coral_ebpf::UPROBE_MAX_STACK);
        out
    }

    fn wall_ns(&self, ktime: u64) -> i64 {
        (i128::from(ktime) + self.clock_offset_ns) as i64
    }

    fn drain(&mut self, seq: &mut u64, keep: usize) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        let mut events = Vec::new();
        while let Some(item) = live.ring.next() {
            if let Some(ev) = UprobeEvent::parse(&item) {
                events.push(ev);
            }
        }
        for (i, p) in self.info.probes.iter_mut().enumerate() {
            p.hits = [2 * i as u32, 2 * i as u32 + 1]
                .iter()
                .filter_map(|id| live.hits.get(id, 0).ok())
                .sum();
        }
        self.info.dropped = live
            .stats
            .get(&coral_ebpf::UPROBE_STAT_DROPS, 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0);
        for ev in events {
            self.pair(ev, seq, keep);
        }
    }

    fn pair(&mut self, ev: UprobeEvent, seq: &mut u64, keep: usize) {
        let fi = (ev.probe_id / 2) as usize;
        if fi >= self.probes.len() {
            return;
        }
        let entry = ev.kind == KIND_ENTRY;
        self.events_seen += 1;
        let at = self.events_seen;
        let opened = match self.lang {
            Lang::Go => {
                let key = (ev.g, ev.go_depth(), fi);
                let last = self.go_last.insert(ev.g, at);
                if entry {
                    match self.go_open.get(&key) {
                        // The prologue re-ran after morestack: the stack
                        // moved (a new stack top) and nothing happened on
                        // the goroutine in between. Keep the call.
                        Some(open) if Some(open.at) == last && open.ev.stack_hi != ev.stack_hi => {
                            if let Some(o) = self.go_open.get_mut(&key) {
                                o.at = at;
                            }
                        }
                        // New, or the open one was abandoned by a panic.
                        _ => {
                            self.go_open.insert(
                                key,
                                Open {
                                    start_ns: ev.ktime_ns,
                                    at,
                                    ev,
                                },
                            );
                        }
                    }
                    return;
                }
                self.go_open.remove(&key)
            }
            Lang::Native => {
                let key = (ev.tid, fi);
                if entry {
                    self.native_open.entry(key).or_default().push(Open {
                        start_ns: ev.ktime_ns,
                        at,
                        ev,
                    });
                    return;
                }
                self.native_open.get_mut(&key).and_then(Vec::pop)
            }
        };
        let Some(open) = opened else {
            return; // a return whose entry came before the attach
        };
        let p = &self.probes[fi];
        let values = |params: &[Param], slots: &[Option<usize>], ev: &UprobeEvent| {
            params
                .iter()
                .zip(slots)
                .map(|(param, slot)| DebugValue {
                    name: param.name.clone(),
                    type_name: param.type_name.clone(),
                    value: format_value(param, ev, *slot),
                })
                .collect::<Vec<_>>()
        };
        let (args, results) = if self.capture {
            let mut results = values(&p.func.results, &p.res_slots, &ev);
            if self.lang == Lang::Native && p.func.results.is_empty() {
                results.push(DebugValue {
                    name: "return".into(),
                    type_name: "rax".into(),
                    value: format!("{} ({:#x})", ev.regs[0] as i64, ev.regs[0]),
                });
            }
            (values(&p.func.params, &p.arg_slots, &open.ev), results)
        } else {
            (Vec::new(), Vec::new())
        };
        let stack = if self.stack {
            self.symbolize(&open.ev, p.func.addr)
        } else {
            Vec::new()
        };
        *seq += 1;
        self.info.calls += 1;
        self.calls.push_back(DebugCall {
            seq: *seq,
            session: self.info.id.clone(),
            function: p.func.name.clone(),
            tid: open.ev.tid,
            goroutine: open.ev.g,
            start_unix_ns: self.wall_ns(open.start_ns),
            duration_ns: Some(ev.ktime_ns.saturating_sub(open.start_ns)),
            args,
            results,
            stack,
        });
        if let Some(c) = self.calls.back() {
            self.unsaved.push(c.clone());
        }
        while self.calls.len() > keep {
            self.calls.pop_front();
        }
    }
}

/// A session's lifetime from the requested one (0: the default), refused
/// above the limit. Attach and trace sessions share it.
pub(super) fn session_ttl(ttl_ms: u64) -> Result<u64, DebugError> {
    if ttl_ms > MAX_DEBUG_TTL_MS {
        return Err(DebugError::Invalid(format!(
            "duration {} s is above the {} s limit",
            ttl_ms / 1000,
            MAX_DEBUG_TTL_MS / 1000
        )));
    }
    Ok(if ttl_ms == 0 {
        DEFAULT_DEBUG_TTL_MS
    } else {
        ttl_ms
    })
}
