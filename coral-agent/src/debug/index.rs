//! What can be probed in a binary (issue 12): its functions (from
//! [`coral_privhelper::elfcode`], the same decode the helper re-checks
//! offsets with), their display names (Go as is, Rust and C++ demangled),
//! and, when DWARF is present, each parameter's name, type and where its
//! value is at the entry (Go register ABI or SysV) and, for Go results, at
//! the return instructions.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use coral_privhelper::elfcode::{Binary, CodeError, MAX_BINARY_BYTES, Runtime};
use gimli::{AttributeValue, EndianSlice, LittleEndian};
use object::{Object, ObjectSection};

/// The language runtime, as the probes care.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lang {
    /// Go ≥ 1.17 register ABI: entries and return instructions, never
    /// uretprobes.
    Go,
    /// C, C++, Rust: SysV ABI, entry uprobe + uretprobe.
    Native,
}

/// What a value is, enough to read it from registers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ValueKind {
    Int {
        signed: bool,
        bytes: u8,
    },
    Bool,
    Pointer,
    /// A C `char *` (read up to NUL).
    CString,
    /// Go string: (ptr, len).
    String,
    /// Go slice: (ptr, len, cap); `bytes` for `[]byte`.
    Slice {
        bytes: bool,
    },
    /// Go interface (`error` included): (type, data).
    Interface,
    Float,
    /// Anything else (structs, arrays): not read.
    Other,
}

impl ValueKind {
    /// Integer registers it takes under the Go ABI (`None`: float or not
    /// register-assignable here).
    fn go_words(&self) -> Option<usize> {
        match self {
            ValueKind::Int { .. } | ValueKind::Bool | ValueKind::Pointer | ValueKind::CString => {
                Some(1)
            }
            ValueKind::String | ValueKind::Interface => Some(2),
            ValueKind::Slice { .. } => Some(3),
            ValueKind::Float | ValueKind::Other => None,
        }
    }
}

/// Where a value is when the probe fires.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Location {
    /// Indices into the event's registers (`coral_ebpf::UprobeEvent::regs`).
    Regs(Vec<u8>),
    /// Float registers, the stack or a layout not followed: not captured.
    Unavailable(String),
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Param {
    pub name: String,
    pub type_name: String,
    pub kind: ValueKind,
    pub location: Location,
}

/// One probe-able function.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FunctionInfo {
    /// Display name: Go's as is, C++ and Rust demangled (Rust without hash).
    pub name: String,
    /// The symbol as stored.
    pub symbol: String,
    pub addr: u64,
    pub size: u64,
    /// File offset of the entry.
    pub offset: u64,
    /// Arguments (from DWARF; empty without it).
    pub params: Vec<Param>,
    /// Go results, located at the return instructions (from DWARF).
    pub results: Vec<Param>,
}

/// Why no single function answers to a name.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(
        "no function '{name}' in {}: the binary is stripped (no symbol table), so only its exported functions have names; probe a build that keeps its symbols (no 'strip' or '-s')",
        path.display()
    )]
    Stripped { name: String, path: PathBuf },
    #[error("no function '{name}' in {} (see 'coral debug functions')", path.display())]
    Missing { name: String, path: PathBuf },
    #[error("'{name}' is ambiguous in {}: {}", path.display(), candidates.join(", "))]
    Ambiguous {
        name: String,
        path: PathBuf,
        /// The first five.
        candidates: Vec<String>,
    },
}

/// An indexed binary.
#[derive(Debug)]
pub struct Index {
    pub path: PathBuf,
    pub lang: Lang,
    pub pie: bool,
    pub has_dwarf: bool,
    /// A native binary without a symbol table (`strip`): only exported
    /// functions have names.
    pub stripped: bool,
    /// Every function, without `params`/`results` (see [`Index::detailed`]).
    pub functions: Vec<FunctionInfo>,
    code: Binary,
    data: Vec<u8>,
    /// DWARF, read on first use: the sections a parameter lookup needs
    /// (decompressed), and the parameters of the units walked so far.
    dwarf: std::sync::OnceLock<Option<gimli::DwarfSections<Vec<u8>>>>,
    walked: std::sync::Mutex<Walked>,
}

/// Parameters found so far, and which units were walked for them.
#[derive(Debug, Default)]
struct Walked {
    units: std::collections::HashSet<u64>,
    params: ParamsByAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}: {source}")]
    Code { path: String, source: CodeError },
}

/// Integer argument registers, as indices into the event's registers.
/// Go: RAX, RBX, RCX, RDI, RSI, R8, R9, R10, R11 (indices 0..9).
const GO_INT_REGS: [u8; 9] = [0, 1, 2, 3, 4, 5, 6, 7, 8];
/// SysV: RDI, RSI, RDX, RCX, R8, R9.
const SYSV_INT_REGS: [u8; 6] = [3, 4, 9, 2, 5, 6];

/// Display name of a symbol: Rust demangled without its hash, C++
/// demangled, anything else as is.
pub fn display_name(sym: &str) -> String {
    if let Ok(d) = rustc_demangle::try_demangle(sym) {
        return format!("{d:#}");
    }
    if sym.starts_with("_Z")
        && let Ok(s) = cpp_demangle::Symbol::new(sym)
        && let Ok(d) = s.demangle(&cpp_demangle::DemangleOptions::default())
    {
        return d;
    }
    sym.to_owned()
}

impl Index {
    /// Reads and indexes the binary at `path`.
    pub fn open(path: &Path) -> Result<Self, IndexError> {
        let read_err = |reason: String| IndexError::Read {
            path: path.display().to_string(),
            reason,
        };
        let md = std::fs::metadata(path).map_err(|e| read_err(e.to_string()))?;
        if md.len() > MAX_BINARY_BYTES {
            return Err(read_err(format!("larger than {MAX_BINARY_BYTES} bytes")));
        }
        let data = std::fs::read(path).map_err(|e| read_err(e.to_string()))?;
        Self::from_bytes(path, data)
    }

    pub fn from_bytes(path: &Path, data: Vec<u8>) -> Result<Self, IndexError> {
        let code = Binary::parse(&data).map_err(|source| IndexError::Code {
            path: path.display().to_string(),
            source,
        })?;
        let lang = match code.runtime {
            Runtime::Go { .. } => Lang::Go,
            Runtime::Native => Lang::Native,
        };
        let has_dwarf = object::File::parse(&*data)
            .ok()
            .and_then(|f| f.section_by_name(".debug_info").map(|s| s.size() > 0))
            .unwrap_or(false);
        let stripped = lang == Lang::Native && {
            use object::{Object, ObjectSection};
            object::File::parse(&*data)
                .map(|f| f.section_by_name(".symtab").is_none_or(|s| s.size() == 0))
                .unwrap_or(false)
        };
        let functions = code
            .functions
            .iter()
            .map(|f| FunctionInfo {
                name: display_name(&f.name),
                symbol: f.name.clone(),
                addr: f.addr,
                size: f.size,
                offset: f.offset,
                params: Vec::new(),
                results: Vec::new(),
            })
            .collect();
        Ok(Index {
            path: path.to_owned(),
            lang,
            pie: code.pie,
            has_dwarf,
            stripped,
            functions,
            code,
            data,
            dwarf: std::sync::OnceLock::new(),
            walked: std::sync::Mutex::new(Walked::default()),
        })
    }

    /// `f` with its parameters and results from DWARF (none without it).
    /// Only the compilation unit that holds `f` is read, once per unit.
    pub fn detailed(&self, f: &FunctionInfo) -> FunctionInfo {
        self.detailed_all(std::slice::from_ref(&f)).remove(0)
    }

    /// [`Index::detailed`] for several functions, reading the units that
    /// hold them in one pass.
    pub fn detailed_all(&self, fs: &[&FunctionInfo]) -> Vec<FunctionInfo> {
        let mut out: Vec<FunctionInfo> = fs.iter().map(|f| (*f).clone()).collect();
        if !self.has_dwarf {
            return out;
        }
        let Some(sections) = self.dwarf.get_or_init(|| load_dwarf(&self.data)).as_ref() else {
            return out;
        };
        let mut w = self.walked.lock().unwrap_or_else(|p| p.into_inner());
        let mut missing: Vec<u64> = fs
            .iter()
            .map(|f| f.addr)
            .filter(|a| !w.params.contains_key(a))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if !missing.is_empty() {
            let Walked { units, params } = &mut *w;
            walk_units_holding(sections, self.lang, &missing, units, params);
            // Not in the DWARF (assembly, or no unit holds it): asked once.
            for a in missing {
                params.entry(a).or_default();
            }
        }
        for f in &mut out {
            if let Some((p, r)) = w.params.get(&f.addr) {
                f.params = p.clone();
                f.results = r.clone();
            }
        }
        out
    }

    /// Functions whose display name contains `pattern` (all when empty).
    pub fn matching<'a>(&'a self, pattern: &'a str) -> impl Iterator<Item = &'a FunctionInfo> {
        self.functions
            .iter()
            .filter(move |f| pattern.is_empty() || f.name.contains(pattern))
    }

    /// The function called `name`: exactly, or as the last path element
    /// (`handleCheckout` finds `main.handleCheckout`,
    /// `main.(*Server).handleCheckout` and `shop::handle_checkout`'s kin).
    /// Ambiguous short names are an error listing the candidates.
    /// The function comes with its parameters ([`Index::detailed`]).
    pub fn resolve(&self, name: &str) -> Result<FunctionInfo, ResolveError> {
        self.resolve_plain(name).map(|f| self.detailed(f))
    }

    fn resolve_plain(&self, name: &str) -> Result<&FunctionInfo, ResolveError> {
        if let Some(f) = self.functions.iter().find(|f| f.name == name) {
            return Ok(f);
        }
        let hits: Vec<_> = self
            .functions
            .iter()
            .filter(|f| {
                f.name
                    .strip_suffix(name)
                    .is_some_and(|head| head.ends_with('.') || head.ends_with("::"))
            })
            .collect();
        // A short Go name found in several packages: the program's own
        // (package main) wins.
        let main: Vec<_> = hits
            .iter()
            .filter(|f| f.name.starts_with("main."))
            .copied()
            .collect();
        let hits = if hits.len() > 1 && main.len() == 1 {
            main
        } else {
            hits
        };
        match hits.as_slice() {
            [f] => Ok(f),
            [] if self.stripped => Err(ResolveError::Stripped {
                name: name.to_string(),
                path: self.path.clone(),
            }),
            [] => Err(ResolveError::Missing {
                name: name.to_string(),
                path: self.path.clone(),
            }),
            many => Err(ResolveError::Ambiguous {
                name: name.to_string(),
                path: self.path.clone(),
                candidates: many.iter().take(5).map(|f| f.name.clone()).collect(),
            }),
        }
    }

    /// File offsets of `f`'s return instructions (linear sweep).
    pub fn return_offsets(&self, f: &FunctionInfo) -> Vec<u64> {
        match self.code.functions.iter().find(|c| c.addr == f.addr) {
            Some(c) => self.code.return_offsets(&self.data, c),
            None => Vec::new(),
        }
    }
}

type ParamsByAddr = HashMap<u64, (Vec<Param>, Vec<Param>)>;

/// The DWARF sections a parameter lookup reads, decompressed (Go 1.19
/// compresses them). Line tables, location lists and frame tables are
/// never read (see [`unit_of`]).
fn load_dwarf(data: &[u8]) -> Option<gimli::DwarfSections<Vec<u8>>> {
    let elf = object::File::parse(data).ok()?;
    elf.section_by_name(".debug_info")?;
    gimli::DwarfSections::load(|id| -> Result<Vec<u8>, gimli::Error> {
        use gimli::SectionId::*;
        if !matches!(
            id,
            DebugInfo
                | DebugAbbrev
                | DebugStr
                | DebugStrOffsets
                | DebugLineStr
                | DebugRanges
                | DebugRngLists
                | DebugAddr
        ) {
            return Ok(Vec::new());
        }
        Ok(elf
            .section_by_name(id.name())
            .and_then(|s| s.uncompressed_data().ok())
            .map(Cow::into_owned)
            .unwrap_or_default())
    })
    .ok()
}

/// Walks the compilation units whose address ranges hold one of `addrs`
/// (sorted; every unit not walked yet when no unit has ranges) and records the
/// parameters of each subprogram in them, by address.
fn walk_units_holding(
    sections: &gimli::DwarfSections<Vec<u8>>,
    lang: Lang,
    addrs: &[u64],
    walked: &mut std::collections::HashSet<u64>,
    out: &mut ParamsByAddr,
) {
    let dwarf = sections.borrow(|s| EndianSlice::new(s, LittleEndian));
    let mut headers = dwarf.units();
    let mut units = Vec::new();
    while let Ok(Some(header)) = headers.next() {
        if let Ok(unit) = unit_of(&dwarf, header) {
            units.push(unit);
        }
    }
    let key = |u: &Unit<'_>| u.header.offset().0 as u64;
    let mut any_ranges = false;
    let mut holding = Vec::new();
    for (ui, unit) in units.iter().enumerate() {
        let Ok(mut ranges) = dwarf.unit_ranges(unit) else {
            continue;
        };
        while let Ok(Some(r)) = ranges.next() {
            any_ranges = true;
            let i = addrs.partition_point(|&a| a < r.begin);
            if addrs.get(i).is_some_and(|&a| a < r.end) {
                holding.push(ui);
                break;
            }
        }
    }
    if !any_ranges {
        holding = (0..units.len()).collect();
    }
    for ui in holding {
        if walked.insert(key(&units[ui])) {
            walk_unit(&dwarf, &units, ui, lang, out);
        }
    }
}

/// A unit as `gimli::Dwarf::unit` makes it, without its line program (the
/// only thing that needs `.debug_line`, a third of what would be
/// decompressed otherwise).
fn unit_of<'a>(
    dwarf: &Dw<'a>,
    header: gimli::UnitHeader<EndianSlice<'a, LittleEndian>>,
) -> gimli::Result<Unit<'a>> {
    let enc = header.encoding();
    let main = gimli::DwarfFileType::Main;
    let mut unit = gimli::Unit {
        abbreviations: dwarf.abbreviations(&header)?,
        name: None,
        comp_dir: None,
        low_pc: 0,
        str_offsets_base: gimli::DebugStrOffsetsBase::default_for_encoding_and_file(enc, main),
        addr_base: gimli::DebugAddrBase(0),
        loclists_base: gimli::DebugLocListsBase::default_for_encoding_and_file(enc, main),
        rnglists_base: gimli::DebugRngListsBase::default_for_encoding_and_file(enc, main),
        line_program: None,
        dwo_id: None,
        header,
    };
    let mut low_pc = None;
    {
        let mut cursor = unit.header.entries(&unit.abbreviations);
        cursor.next_dfs()?;
        let root = cursor.current().ok_or(gimli::Error::MissingUnitDie)?;
        for attr in root.attrs() {
            match (attr.name(), attr.value()) {
                (gimli::DW_AT_low_pc, v) => low_pc = Some(v),
                (gimli::DW_AT_str_offsets_base, AttributeValue::DebugStrOffsetsBase(b)) => {
                    unit.str_offsets_base = b;
                }
                (
                    gimli::DW_AT_addr_base | gimli::DW_AT_GNU_addr_base,
                    AttributeValue::DebugAddrBase(b),
                ) => unit.addr_base = b,
                (gimli::DW_AT_loclists_base, AttributeValue::DebugLocListsBase(b)) => {
                    unit.loclists_base = b;
                }
                (
                    gimli::DW_AT_rnglists_base | gimli::DW_AT_GNU_ranges_base,
                    AttributeValue::DebugRngListsBase(b),
                ) => unit.rnglists_base = b,
                _ => {}
            }
        }
    }
    if let Some(v) = low_pc
        && let Some(a) = dwarf.attr_address(&unit, v)?
    {
        unit.low_pc = a;
    }
    Ok(unit)
}

/// Records the parameters of every subprogram with a `low_pc` in unit `ui`.
fn walk_unit(dwarf: &Dw<'_>, units: &[Unit<'_>], ui: usize, lang: Lang, out: &mut ParamsByAddr) {
    let unit = &units[ui];
    let mut cursor = unit.entries();
    // (address, depth) of the subprogram whose children are being read.
    let mut current: Option<(u64, isize)> = None;
    let mut raw: Vec<(String, String, ValueKind, bool)> = Vec::new();
    let mut flush = |addr: Option<(u64, isize)>, raw: &mut Vec<_>| {
        if let Some((a, _)) = addr {
            out.insert(a, locate(std::mem::take(raw), lang));
        }
        raw.clear();
    };
    while let Ok(Some(entry)) = cursor.next_dfs() {
        let depth = entry.depth();
        if let Some((_, d)) = current
            && depth <= d
        {
            flush(current.take(), &mut raw);
        }
        match entry.tag() {
            gimli::DW_TAG_subprogram => {
                if let Some(AttributeValue::Addr(a)) = entry.attr_value(gimli::DW_AT_low_pc) {
                    current = Some((a, depth));
                    // A native function's return type: its value is in
                    // RAX at the uretprobe.
                    if lang == Lang::Native
                        && let Some((u, o)) = type_ref(units, ui, entry)
                    {
                        let (type_name, kind) = type_of(dwarf, units, u, o, 0);
                        raw.push(("return".into(), type_name, kind, true));
                    }
                }
            }
            gimli::DW_TAG_formal_parameter if current.is_some_and(|(_, d)| depth == d + 1) => {
                let name = entry
                    .attr_value(gimli::DW_AT_name)
                    .and_then(|v| dwarf.attr_string(unit, v).ok())
                    .and_then(|s| s.to_string().ok().map(str::to_owned))
                    .unwrap_or_else(|| format!("arg{}", raw.len()));
                let output = matches!(
                    entry.attr_value(gimli::DW_AT_variable_parameter),
                    Some(AttributeValue::Flag(true))
                );
                let (type_name, kind) = match type_ref(units, ui, entry) {
                    Some((u, o)) => type_of(dwarf, units, u, o, 0),
                    None => ("?".into(), ValueKind::Other),
                };
                raw.push((name, type_name, kind, output));
            }
            _ => {}
        }
    }
    flush(current.take(), &mut raw);
}

type Dw<'a> = gimli::Dwarf<EndianSlice<'a, LittleEndian>>;
type Unit<'a> = gimli::Unit<EndianSlice<'a, LittleEndian>>;
type Die<'a> = gimli::DebuggingInformationEntry<EndianSlice<'a, LittleEndian>>;

/// The unit and offset `DW_AT_type` of `e` points to: in its own unit, or
/// (Go puts types in their own unit) anywhere in `.debug_info`.
fn type_ref(units: &[Unit<'_>], cur: usize, e: &Die<'_>) -> Option<(usize, gimli::UnitOffset)> {
    match e.attr_value(gimli::DW_AT_type)? {
        AttributeValue::UnitRef(o) => Some((cur, o)),
        AttributeValue::DebugInfoRef(g) => {
            // Units are in section order: the last one starting at or
            // before `g`.
            let start = |u: &Unit<'_>| u.header.offset().0;
            let i = units.partition_point(|u| start(u) <= g.0).checked_sub(1)?;
            g.to_unit_offset(&units[i].header).map(|o| (i, o))
        }
        _ => None,
    }
}

/// The name and kind of the type at `off` of unit `ui` (typedefs and
/// qualifiers followed a few levels).
fn type_of(
    dwarf: &Dw<'_>,
    units: &[Unit<'_>],
    ui: usize,
    off: gimli::UnitOffset,
    depth: u8,
) -> (String, ValueKind) {
    let unit = &units[ui];
    let Ok(e) = unit.entry(off) else {
        return ("?".into(), ValueKind::Other);
    };
    let name = e
        .attr_value(gimli::DW_AT_name)
        .and_then(|v| dwarf.attr_string(unit, v).ok())
        .and_then(|s| s.to_string().ok().map(str::to_owned));
    let target = if depth < 8 {
        type_ref(units, ui, &e)
    } else {
        None
    };
    let bytes = match e.attr_value(gimli::DW_AT_byte_size) {
        Some(AttributeValue::Udata(n)) => n,
        Some(AttributeValue::Data1(n)) => u64::from(n),
        Some(AttributeValue::Data2(n)) => u64::from(n),
        Some(AttributeValue::Data4(n)) => u64::from(n),
        Some(AttributeValue::Data8(n)) => n,
        _ => 8,
    } as u8;
    let n = name.clone().unwrap_or_default();
    let kind = match e.tag() {
        gimli::DW_TAG_base_type => match e.attr_value(gimli::DW_AT_encoding) {
            Some(AttributeValue::Encoding(gimli::DW_ATE_boolean)) => ValueKind::Bool,
            Some(AttributeValue::Encoding(gimli::DW_ATE_float)) => ValueKind::Float,
            Some(AttributeValue::Encoding(gimli::DW_ATE_signed | gimli::DW_ATE_signed_char)) => {
                ValueKind::Int {
                    signed: true,
                    bytes,
                }
            }
            Some(AttributeValue::Encoding(_)) if n.starts_with("complex") => ValueKind::Other,
            Some(AttributeValue::Encoding(_)) => ValueKind::Int {
                signed: false,
                bytes,
            },
            _ => ValueKind::Other,
        },
        gimli::DW_TAG_pointer_type => {
            let pointee = target.map(|(u, o)| type_of(dwarf, units, u, o, depth + 1));
            match pointee {
                Some((p, ValueKind::Int { bytes: 1, .. }))
                    if p == "char" || p == "const char" || p == "unsigned char" =>
                {
                    ValueKind::CString
                }
                _ => ValueKind::Pointer,
            }
        }
        gimli::DW_TAG_structure_type if n == "string" => ValueKind::String,
        gimli::DW_TAG_structure_type if n.starts_with("[]") => ValueKind::Slice {
            bytes: n == "[]uint8",
        },
        gimli::DW_TAG_structure_type
            if n == "runtime.iface" || n == "runtime.eface" || n.starts_with("interface") =>
        {
            ValueKind::Interface
        }
        gimli::DW_TAG_typedef if n == "error" || n.starts_with("interface") => ValueKind::Interface,
        // Go maps, channels and funcs are pointers in DWARF typedefs.
        gimli::DW_TAG_typedef
            if n.starts_with("map[") || n.starts_with("chan ") || n.starts_with("func(") =>
        {
            ValueKind::Pointer
        }
        gimli::DW_TAG_typedef | gimli::DW_TAG_const_type | gimli::DW_TAG_volatile_type
            if depth < 8 =>
        {
            let inner = target.map(|(u, o)| type_of(dwarf, units, u, o, depth + 1));
            let (inner_name, kind) = inner.unwrap_or(("void".into(), ValueKind::Other));
            let shown = match (e.tag(), name) {
                (gimli::DW_TAG_const_type, _) => format!("const {inner_name}"),
                (_, Some(n)) => n,
                (_, None) => inner_name,
            };
            return (shown, kind);
        }
        _ => ValueKind::Other,
    };
    let shown = match (e.tag(), name) {
        (_, Some(n)) => n,
        (gimli::DW_TAG_pointer_type, None) => {
            let p = target
                .map(|(u, o)| type_of(dwarf, units, u, o, depth + 1).0)
                .unwrap_or_else(|| "void".into());
            format!("{p} *")
        }
        _ => "?".into(),
    };
    (shown, kind)
}

/// Assigns registers: Go's ABI for arguments (at the entry) and results
/// (at the returns, restarting at RAX); SysV for native arguments.
fn locate(raw: Vec<(String, String, ValueKind, bool)>, lang: Lang) -> (Vec<Param>, Vec<Param>) {
    let (mut params, mut results) = (Vec::new(), Vec::new());
    let (mut next_in, mut next_out) = (0usize, 0usize);
    for (name, type_name, kind, output) in raw {
        let (regs, next): (&[u8], &mut usize) = match (lang, output) {
            (Lang::Go, false) => (&GO_INT_REGS, &mut next_in),
            (Lang::Go, true) => (&GO_INT_REGS, &mut next_out),
            (Lang::Native, false) => (&SYSV_INT_REGS, &mut next_in),
            // The return value: RAX.
            (Lang::Native, true) => (&[0u8][..], &mut next_out),
        };
        let location = match (lang, kind.go_words()) {
            (_, None) => Location::Unavailable(match kind {
                ValueKind::Float => "float register (not captured)".into(),
                _ => "layout not followed".into(),
            }),
            (Lang::Native, Some(_))
                if !matches!(
                    kind,
                    ValueKind::String | ValueKind::Slice { .. } | ValueKind::Interface
                ) =>
            {
                match regs.get(*next) {
                    Some(r) => {
                        *next += 1;
                        Location::Regs(vec![*r])
                    }
                    None => Location::Unavailable("on the stack".into()),
                }
            }
            (Lang::Native, Some(_)) => Location::Unavailable("layout not followed".into()),
            (Lang::Go, Some(w)) => {
                if *next + w <= regs.len() {
                    let v = regs[*next..*next + w].to_vec();
                    *next += w;
                    Location::Regs(v)
                } else {
                    // Go: an argument that does not fit goes to the stack;
                    // the following ones may still use registers.
                    Location::Unavailable("on the stack".into())
                }
            }
        };
        let p = Param {
            name,
            type_name,
            kind,
            location,
        };
        if output {
            results.push(p);
        } else {
            params.push(p);
        }
    }
    (params, results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_demangle() {
        assert_eq!(
            display_name("_ZN4core3fmt5write17h0123456789abcdefE"),
            "core::fmt::write"
        );
        assert_eq!(display_name("_ZN3foo3barEv"), "foo::bar()");
        assert_eq!(display_name("main.Add"), "main.Add");
    }

    #[test]
    fn go_abi_assigns_registers_and_spills() {
        let s = |n: &str, k| (n.to_owned(), "t".to_owned(), k, false);
        let (p, _) = locate(
            vec![
                s("name", ValueKind::String),
                s(
                    "n",
                    ValueKind::Int {
                        signed: true,
                        bytes: 8,
                    },
                ),
                s("data", ValueKind::Slice { bytes: true }),
                s("err", ValueKind::Interface),
                s("x", ValueKind::Float),
                s("ok", ValueKind::Bool),
            ],
            Lang::Go,
        );
        assert_eq!(p[0].location, Location::Regs(vec![0, 1]));
        assert_eq!(p[1].location, Location::Regs(vec![2]));
        assert_eq!(p[2].location, Location::Regs(vec![3, 4, 5]));
        assert_eq!(p[3].location, Location::Regs(vec![6, 7]));
        assert!(matches!(p[4].location, Location::Unavailable(_)));
        assert_eq!(p[5].location, Location::Regs(vec![8]));
    }
}
