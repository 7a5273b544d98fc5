//! The functions and instruction boundaries of an x86-64 ELF executable:
//! the one decode of a probe target that both the helper (to re-check every
//! uprobe offset a caller sends) and the agent (to index a binary for
//! `coral debug functions` and find a Go function's return instructions)
//! use.
//!
//! Functions come from `.gopclntab` for Go (present even in stripped
//! binaries; Go 1.18+ layout), else from `.symtab`/`.dynsym`. Instructions
//! come from a linear sweep with a real x86 decoder (iced-x86) from a
//! function's entry to its end, never from a byte scan. Addresses are link-time
//! virtual addresses; [`Binary::file_offset`] turns one into the file offset
//! the kernel's uprobe wants (`vaddr - p_vaddr + p_offset` of the executable
//! `PT_LOAD` segment that holds it).
//!
//! The input is untrusted (any file the caller names): every read is
//! bounds-checked and errors are typed; nothing panics or allocates more
//! than a small multiple of the file's size.

use iced_x86::{Decoder, DecoderOptions, FlowControl, Instruction, Mnemonic};
use object::elf::{PF_X, PT_LOAD};
use object::read::elf::{ElfFile64, FileHeader, ProgramHeader};
use object::{Endianness, Object, ObjectSection, ObjectSymbol, SymbolKind};
use thiserror::Error;

/// Largest binary either side reads.
pub const MAX_BINARY_BYTES: u64 = 1 << 30;
/// Largest function that is decoded (bytes); larger ones have no return
/// points and no boundaries but their entry.
pub const MAX_FUNCTION_BYTES: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CodeError {
    #[error("not an x86-64 ELF executable: {0}")]
    NotElf(String),
    #[error("the binary has no function table (no .gopclntab, no symbols)")]
    NoFunctions,
    #[error("malformed .gopclntab: {0}")]
    BadPclntab(&'static str),
    #[error("offset {0:#x} is not inside any function")]
    NotInFunction(u64),
    #[error("offset {offset:#x} is not an instruction boundary of {function}")]
    NotBoundary { offset: u64, function: String },
    #[error("offset {offset:#x} is not the entry of a function (it is inside {function})")]
    NotEntry { offset: u64, function: String },
    #[error(
        "return probes (uretprobes) are refused on Go binaries: the Go runtime moves stacks; probe the return instructions instead"
    )]
    UretprobeOnGo,
}

/// The language runtime a binary was built with, as far as uprobes care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// Go with the 1.18/1.19 (`0xFFFFFFF0`) or 1.20+ (`0xFFFFFFF1`) pclntab.
    Go { pclntab_magic: u32 },
    /// Anything else (C, C++, Rust, ...): SysV ABI, uretprobes are fine.
    Native,
}

/// One function of the binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    /// The symbol as stored (mangled for C++/Rust).
    pub name: String,
    /// Link-time virtual address of the entry.
    pub addr: u64,
    /// Size in bytes (for Go from `.gopclntab`: up to the next function).
    pub size: u64,
    /// File offset of the entry (what a uprobe attaches to).
    pub offset: u64,
}

#[derive(Debug, Clone, Copy)]
struct Segment {
    vaddr: u64,
    memsz: u64,
    offset: u64,
    filesz: u64,
}

/// A parsed binary: its runtime and function table (sorted by address).
#[derive(Debug, Clone)]
pub struct Binary {
    pub runtime: Runtime,
    /// `ET_DYN` (PIE or shared object).
    pub pie: bool,
    pub functions: Vec<Function>,
    segments: Vec<Segment>,
}

/// What a probe at an offset is for; the check differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PointKind {
    /// A uprobe at a function's entry.
    Entry,
    /// A uprobe at any instruction of a function (Go return instructions).
    Instruction,
    /// A uretprobe on a function (its entry); refused on Go.
    Return,
}

impl Binary {
    /// Parses the ELF headers and the function table of `data`.
    pub fn parse(data: &[u8]) -> Result<Self, CodeError> {
        let elf =
            ElfFile64::<Endianness>::parse(data).map_err(|e| CodeError::NotElf(e.to_string()))?;
        if elf.architecture() != object::Architecture::X86_64 {
            return Err(CodeError::NotElf(format!(
                "architecture {:?}",
                elf.architecture()
            )));
        }
        let endian = elf.endian();
        let header = elf.elf_header();
        let pie = header.e_type(endian) == object::elf::ET_DYN;
        let mut segments = Vec::new();
        for ph in elf.elf_program_headers() {
            if ph.p_type(endian) == PT_LOAD && ph.p_flags(endian) & PF_X != 0 {
                segments.push(Segment {
                    vaddr: ph.p_vaddr(endian),
                    memsz: ph.p_memsz(endian),
                    offset: ph.p_offset(endian),
                    filesz: ph.p_filesz(endian),
                });
            }
        }
        if segments.is_empty() {
            return Err(CodeError::NotElf("no executable segment".into()));
        }
        let mut b = Binary {
            runtime: Runtime::Native,
            pie,
            functions: Vec::new(),
            segments,
        };
        let is_go = elf.section_by_name(".go.buildinfo").is_some()
            || elf.section_by_name(".gopclntab").is_some()
            || elf.section_by_name(".note.go.buildid").is_some();
        let mut raw: Vec<RawFunction> = Vec::new();
        if is_go {
            let (magic, funcs) = go_functions(&elf)?;
            b.runtime = Runtime::Go {
                pclntab_magic: magic,
            };
            raw = funcs;
        } else {
            for sym in elf.symbols().chain(elf.dynamic_symbols()) {
                if sym.kind() == SymbolKind::Text
                    && sym.size() > 0
                    && sym.is_definition()
                    && let Ok(name) = sym.name()
                {
                    raw.push((name.to_owned(), sym.address(), sym.size()));
                }
            }
        }
        raw.sort_by(|a, c| a.1.cmp(&c.1).then(a.0.cmp(&c.0)));
        raw.dedup_by(|a, c| a.1 == c.1);
        for (name, addr, size) in raw {
            if let Some(offset) = b.file_offset(addr) {
                b.functions.push(Function {
                    name,
                    addr,
                    size,
                    offset,
                });
            }
        }
        if b.functions.is_empty() {
            return Err(CodeError::NoFunctions);
        }
        Ok(b)
    }

    pub fn is_go(&self) -> bool {
        matches!(self.runtime, Runtime::Go { .. })
    }

    /// File offset of a virtual address inside an executable segment.
    pub fn file_offset(&self, vaddr: u64) -> Option<u64> {
        self.segments.iter().find_map(|s| {
            let rel = vaddr.checked_sub(s.vaddr)?;
            (rel < s.memsz.min(s.filesz)).then(|| s.offset + rel)
        })
    }

    /// Virtual address of a file offset inside an executable segment.
    pub fn vaddr_of_offset(&self, offset: u64) -> Option<u64> {
        self.segments.iter().find_map(|s| {
            let rel = offset.checked_sub(s.offset)?;
            (rel < s.memsz.min(s.filesz)).then(|| s.vaddr + rel)
        })
    }

    /// The function whose `[addr, addr + size)` holds `vaddr`.
    pub fn function_at(&self, vaddr: u64) -> Option<&Function> {
        let i = self.functions.partition_point(|f| f.addr <= vaddr);
        let f = self.functions.get(i.checked_sub(1)?)?;
        (vaddr - f.addr < f.size.max(1)).then_some(f)
    }

    /// Functions whose name is exactly `name`.
    pub fn by_name(&self, name: &str) -> Option<&Function> {
        self.functions.iter().find(|f| f.name == name)
    }

    /// The bytes of `f` in `data` (at most [`MAX_FUNCTION_BYTES`]).
    fn code<'a>(&self, data: &'a [u8], f: &Function) -> &'a [u8] {
        let start = usize::try_from(f.offset).unwrap_or(usize::MAX);
        let len = usize::try_from(f.size.min(MAX_FUNCTION_BYTES)).unwrap_or(0);
        data.get(start..start.saturating_add(len))
            .or_else(|| data.get(start..))
            .unwrap_or(&[])
    }

    /// Decodes `f` in a linear sweep from its entry: every instruction's
    /// virtual address and whether it returns. Stops at the function's end
    /// or at the first byte that does not decode.
    pub fn decode(&self, data: &[u8], f: &Function) -> Vec<(u64, bool)> {
        let code = self.code(data, f);
        let mut d = Decoder::with_ip(64, code, f.addr, DecoderOptions::NONE);
        let mut out = Vec::new();
        let mut ins = Instruction::default();
        while d.can_decode() {
            d.decode_out(&mut ins);
            if ins.is_invalid() {
                break;
            }
            let ret = ins.flow_control() == FlowControl::Return
                && matches!(ins.mnemonic(), Mnemonic::Ret);
            out.push((ins.ip(), ret));
        }
        out
    }

    /// File offsets of `f`'s near return instructions (`ret`), from a
    /// linear sweep.
    pub fn return_offsets(&self, data: &[u8], f: &Function) -> Vec<u64> {
        self.decode(data, f)
            .into_iter()
            .filter(|&(_, ret)| ret)
            .filter_map(|(ip, _)| self.file_offset(ip))
            .collect()
    }

    /// Checks that a probe of `kind` may be placed at file `offset`; returns
    /// the function it belongs to. This is the helper's own re-derivation:
    /// an entry must be a function's first byte, an instruction probe must
    /// start an instruction of the linear sweep from that function's entry.
    pub fn check_point(
        &self,
        data: &[u8],
        offset: u64,
        kind: PointKind,
    ) -> Result<&Function, CodeError> {
        let vaddr = self
            .vaddr_of_offset(offset)
            .ok_or(CodeError::NotInFunction(offset))?;
        let f = self
            .function_at(vaddr)
            .ok_or(CodeError::NotInFunction(offset))?;
        match kind {
            PointKind::Return if self.is_go() => Err(CodeError::UretprobeOnGo),
            PointKind::Entry | PointKind::Return => {
                if f.addr == vaddr {
                    Ok(f)
                } else {
                    Err(CodeError::NotEntry {
                        offset,
                        function: f.name.clone(),
                    })
                }
            }
            PointKind::Instruction => {
                if f.addr == vaddr || self.decode(data, f).iter().any(|&(ip, _)| ip == vaddr) {
                    Ok(f)
                } else {
                    Err(CodeError::NotBoundary {
                        offset,
                        function: f.name.clone(),
                    })
                }
            }
        }
    }
}

/// (name, entry address, size) before file offsets are known.
type RawFunction = (String, u64, u64);

fn rd_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn rd_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Where `.gopclntab` is: its own section, or (some PIE and externally linked
/// builds) inside `.data.rel.ro`, found by its header.
fn pclntab<'a>(elf: &ElfFile64<'a, Endianness>) -> Option<&'a [u8]> {
    if let Some(s) = elf.section_by_name(".gopclntab") {
        return s.data().ok();
    }
    for name in [".data.rel.ro.gopclntab", ".data.rel.ro"] {
        let Some(s) = elf.section_by_name(name) else {
            continue;
        };
        let d = s.data().ok()?;
        let mut at = 0;
        while at + 8 <= d.len() {
            let m = rd_u32(d, at)?;
            if (m == 0xFFFF_FFF0 || m == 0xFFFF_FFF1) && d[at + 4..at + 8] == [0, 0, 1, 8] {
                return Some(&d[at..]);
            }
            at += 8;
        }
    }
    None
}

/// Go functions from `.gopclntab` (Go 1.18+): (name, entry, size). The
/// functab is `nfunc + 1` pairs of (entry offset, func offset) relative to
/// the text start; a function ends where the next one starts.
fn go_functions(elf: &ElfFile64<'_, Endianness>) -> Result<(u32, Vec<RawFunction>), CodeError> {
    let t = pclntab(elf).ok_or(CodeError::BadPclntab("no .gopclntab"))?;
    let bad = CodeError::BadPclntab;
    let magic = rd_u32(t, 0).ok_or(bad("truncated header"))?;
    if magic != 0xFFFF_FFF0 && magic != 0xFFFF_FFF1 {
        return Err(bad("unsupported magic (Go 1.18 or newer is needed)"));
    }
    if t.get(4..8) != Some(&[0, 0, 1, 8]) {
        return Err(bad("not an amd64 table"));
    }
    let word = |i: usize| rd_u64(t, 8 + 8 * i).ok_or(bad("truncated header"));
    let nfunc = usize::try_from(word(0)?).map_err(|_| bad("nfunc"))?;
    let mut text_start = word(2)?;
    let funcname = usize::try_from(word(3)?).map_err(|_| bad("funcname offset"))?;
    let pcln = usize::try_from(word(7)?).map_err(|_| bad("pcln offset"))?;
    if text_start == 0 {
        // PIE: the field is filled by a dynamic relocation; runtime.text
        // is the start of .text.
        text_start = elf
            .section_by_name(".text")
            .map(|s| s.address())
            .ok_or(bad("no text start"))?;
    }
    if nfunc == 0 || nfunc > t.len() / 8 {
        return Err(bad("function count"));
    }
    let mut out = Vec::with_capacity(nfunc);
    for i in 0..nfunc {
        let at = pcln + 8 * i;
        let entry = rd_u32(t, at).ok_or(bad("truncated functab"))?;
        let funcoff = rd_u32(t, at + 4).ok_or(bad("truncated functab"))? as usize;
        let next = rd_u32(t, at + 8).ok_or(bad("truncated functab"))?;
        if next < entry {
            return Err(bad("functab not sorted"));
        }
        let fo = pcln.checked_add(funcoff).ok_or(bad("func offset"))?;
        let nameoff = rd_u32(t, fo + 4).ok_or(bad("truncated _func"))? as usize;
        let start = funcname.checked_add(nameoff).ok_or(bad("name offset"))?;
        let rest = t.get(start..).ok_or(bad("name out of range"))?;
        let end = rest
            .iter()
            .take(4096)
            .position(|&c| c == 0)
            .ok_or(bad("name"))?;
        let name = String::from_utf8_lossy(&rest[..end]).into_owned();
        out.push((name, text_start + u64::from(entry), u64::from(next - entry)));
    }
    Ok((magic, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_a_typed_error() {
        assert!(matches!(Binary::parse(b"nope"), Err(CodeError::NotElf(_))));
        assert!(matches!(Binary::parse(&[]), Err(CodeError::NotElf(_))));
        let mut elf = b"\x7fELF\x02\x01\x01".to_vec();
        elf.resize(64, 0);
        assert!(Binary::parse(&elf).is_err());
    }

    #[test]
    fn the_helper_binary_itself_decodes() {
        // This test binary is a (Rust) native ELF with symbols.
        let exe = std::fs::read("/proc/self/exe").unwrap();
        let b = Binary::parse(&exe).unwrap();
        assert_eq!(b.runtime, Runtime::Native);
        assert!(b.functions.len() > 100);
        let f = b
            .functions
            .iter()
            .find(|f| f.name.contains("check_point") && f.size > 16)
            .expect("check_point symbol");
        let ins = b.decode(&exe, f);
        assert!(ins.len() > 4);
        assert_eq!(b.check_point(&exe, f.offset, PointKind::Entry).unwrap(), f);
        let second = b.file_offset(ins[1].0).unwrap();
        assert!(b.check_point(&exe, second, PointKind::Instruction).is_ok());
        assert!(matches!(
            b.check_point(&exe, second, PointKind::Entry),
            Err(CodeError::NotEntry { .. })
        ));
        // Inside the first instruction (if it is longer than a byte).
        if ins[1].0 - ins[0].0 > 1 {
            assert!(matches!(
                b.check_point(&exe, f.offset + 1, PointKind::Instruction),
                Err(CodeError::NotBoundary { .. })
            ));
        }
    }
}
