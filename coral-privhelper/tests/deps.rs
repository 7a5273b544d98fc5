//! Pins the helper's dependency tree: it is the only root code, so a new
//! crate in it must be a deliberate, reviewed change (edit the list here).
//! Issue 3.

use std::collections::BTreeSet;
use std::process::Command;

const PINNED: &[&str] = &[
    "bitflags",
    "cfg-if",
    "cfg_aliases",
    "coral-privhelper",
    "curve25519-dalek",
    "curve25519-dalek-derive",
    "getrandom",
    "libc",
    "memoffset",
    "nix",
    "proc-macro2",
    "quote",
    "rand_core",
    "rustc_version",
    "semver",
    "subtle",
    "syn",
    "thiserror",
    "thiserror-impl",
    "unicode-ident",
    "x25519-dalek",
    "zeroize",
    "zeroize_derive",
    "cpufeatures",
    "autocfg",
    // Issue 5: BPF load/attach. aya parses the embedded (never
    // caller-supplied) ELF, applies CO-RE relocations against the kernel's
    // BTF and creates maps and programs: not code to hand-roll in the root
    // process. The rest is aya's own tree (object, hashbrown, log, ...).
    // coral-ebpf has no dependencies; it only embeds the objects.
    "assert_matches",
    "aya",
    "aya-obj",
    "bytes",
    "coral-ebpf",
    "crc32fast",
    "equivalent",
    "foldhash",
    "hashbrown",
    "indexmap",
    "log",
    "memchr",
    "object",
    "once_cell",
    "scopeguard",
    // Issue 12: uprobe attach. The helper re-derives every uprobe offset
    // from its own decode of the target binary (src/elfcode.rs): object
    // (already above, now also used directly) reads the ELF and iced-x86
    // decodes x86 instructions (lazy_static is its table init).
    "iced-x86",
    "lazy_static",
    // Issue 16: the helper's own seccomp filter. seccompiler (Firecracker's
    // filter compiler, without its JSON frontend) depends on libc only.
    "seccompiler",
    // Issue 16: landlock for the helper's main process (the agent's crate;
    // enumflags2 is its flag set).
    "landlock",
    // Issue 16: capabilities dropped by the target and main processes
    // (libc and thiserror, already above).
    "caps",
    "enumflags2",
    "enumflags2_derive",
];

#[test]
fn dependency_tree_is_pinned() {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "-p",
            "coral-privhelper",
            "-e",
            "normal,build",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let found: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    let pinned: BTreeSet<String> = PINNED.iter().map(|s| (*s).to_owned()).collect();
    let added: Vec<_> = found.difference(&pinned).collect();
    let removed: Vec<_> = pinned.difference(&found).collect();
    assert!(
        added.is_empty() && removed.is_empty(),
        "the helper's dependency tree changed: added {added:?}, removed {removed:?}; \
         review the change and update PINNED in tests/deps.rs"
    );
}
