//! Compiles the BPF programs in `bpf/` with clang (`-target bpf -O2 -g`),
//! against a `vmlinux.h` that bpftool dumps from the build machine's BTF
//! (`/sys/kernel/btf/vmlinux`), so field accesses are CO-RE relocated at load
//! time. Writes `objects.rs` with each object's bytes and SHA-256.
//!
//! Tools: `CLANG` (default `clang`), `BPFTOOL` (default `bpftool`, then
//! `/usr/sbin/bpftool`), `LLVM_STRIP` (optional, strips DWARF but keeps BTF),
//! `sha256sum`. `packaging/dev/deps.sh` installs them.

use std::path::{Path, PathBuf};
use std::process::Command;

const OBJECTS: &[&str] = &["coral", "uprobe"];

fn run(cmd: &mut Command, what: &str) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!(
            "{what}: cannot run {:?}: {e} (run packaging/dev/deps.sh)",
            cmd.get_program()
        )
    });
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out.stdout
}

fn tool(env: &str, candidates: &[&str]) -> String {
    if let Ok(v) = std::env::var(env) {
        return v;
    }
    for c in candidates {
        if c.starts_with('/') && Path::new(c).exists() {
            return c.to_string();
        }
        if !c.starts_with('/')
            && Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        {
            return c.to_string();
        }
    }
    candidates[0].to_string()
}

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let src = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("bpf");
    println!("cargo:rerun-if-changed=bpf");
    for env in ["CLANG", "BPFTOOL", "LLVM_STRIP", "CORAL_VMLINUX_BTF"] {
        println!("cargo:rerun-if-env-changed={env}");
    }
    let btf =
        std::env::var("CORAL_VMLINUX_BTF").unwrap_or_else(|_| "/sys/kernel/btf/vmlinux".into());
    let bpftool = tool("BPFTOOL", &["bpftool", "/usr/sbin/bpftool"]);
    let vmlinux = run(
        Command::new(&bpftool).args(["btf", "dump", "file", &btf, "format", "c"]),
        "bpftool btf dump (needs a kernel with BTF)",
    );
    std::fs::write(out.join("vmlinux.h"), vmlinux).unwrap();

    let arch = match std::env::var("CARGO_CFG_TARGET_ARCH").unwrap().as_str() {
        "x86_64" => "x86",
        "aarch64" => "arm64",
        other => other,
    }
    .to_string();
    let multiarch = format!(
        "/usr/include/{}-linux-gnu",
        std::env::var("CARGO_CFG_TARGET_ARCH").unwrap()
    );
    let clang = tool("CLANG", &["clang"]);
    let strip = tool(
        "LLVM_STRIP",
        &["llvm-strip", "llvm-strip-14", "llvm-strip-16"],
    );
    let mut table = String::from("pub const OBJECTS: &[Object] = &[\n");
    for name in OBJECTS {
        let c = src.join(format!("{name}.bpf.c"));
        let o = out.join(format!("{name}.bpf.o"));
        run(
            Command::new(&clang)
                .args(["-target", "bpf", "-O2", "-g", "-Wall", "-Werror"])
                .arg(format!("-D__TARGET_ARCH_{arch}"))
                .arg("-I")
                .arg(&out)
                .arg("-I")
                .arg(&multiarch)
                .arg("-c")
                .arg(&c)
                .arg("-o")
                .arg(&o),
            "clang -target bpf",
        );
        // DWARF is large and unused at load time; .BTF and .BTF.ext stay.
        let _ = Command::new(&strip).arg("--strip-debug").arg(&o).status();
        let sum = run(Command::new("sha256sum").arg(&o), "sha256sum");
        let hex = String::from_utf8_lossy(&sum);
        let hex = hex.split_whitespace().next().unwrap_or_default();
        assert_eq!(hex.len(), 64, "sha256sum printed {hex:?}");
        let bytes: Vec<String> = (0..32)
            .map(|i| format!("0x{}", &hex[2 * i..2 * i + 2]))
            .collect();
        table.push_str(&format!(
            "    Object {{ name: {name:?}, bytes: &Aligned(*include_bytes!({:?})).0, sha256: [{}] }},\n",
            o.display(),
            bytes.join(", ")
        ));
    }
    table.push_str("];\n");
    std::fs::write(out.join("objects.rs"), table).unwrap();
}
