//! The binary decode on real programs built here (issue 12): Go 1.19 default,
//! stripped (`-s -w`, functions only from `.gopclntab`) and PIE, and C from
//! gcc. Skips with a message when `go` or `gcc` is missing.

use std::path::Path;
use std::process::Command;

use coral_privhelper::elfcode::{Binary, CodeError, PointKind, Runtime};

mod support;
use support::{C_SRC, go_build, have};

fn check_go(bin: &Path, want_pie: bool) {
    let data = std::fs::read(bin).unwrap();
    let b = Binary::parse(&data).unwrap();
    assert_eq!(
        b.runtime,
        Runtime::Go {
            pclntab_magic: 0xFFFF_FFF0
        },
        "{}",
        bin.display()
    );
    assert_eq!(b.pie, want_pie);
    assert!(b.functions.len() > 500, "{} functions", b.functions.len());
    // Classify has four `return`s; each compiles to its own RET (or shares
    // an epilogue): at least two, and every one decodes as a boundary.
    let f = b.by_name("main.Classify").expect("main.Classify");
    assert_eq!(b.file_offset(f.addr), Some(f.offset));
    let rets = b.return_offsets(&data, f);
    assert!(rets.len() >= 2, "Classify returns: {rets:?}");
    for r in &rets {
        assert_eq!(data[*r as usize], 0xC3, "RET at {r:#x}");
        assert!(b.check_point(&data, *r, PointKind::Instruction).is_ok());
        assert!(matches!(
            b.check_point(&data, *r, PointKind::Entry),
            Err(CodeError::NotEntry { .. })
        ));
    }
    assert!(b.check_point(&data, f.offset, PointKind::Entry).is_ok());
    assert_eq!(
        b.check_point(&data, f.offset, PointKind::Return),
        Err(CodeError::UretprobeOnGo)
    );
    // No 0xC3 byte scan: every RET found is an instruction start, and a
    // 0xC3 byte inside another instruction (if any) is refused.
    let ins = b.decode(&data, f);
    let code = &data[f.offset as usize..(f.offset + f.size) as usize];
    for (i, byte) in code.iter().enumerate() {
        let off = f.offset + i as u64;
        let vaddr = f.addr + i as u64;
        let is_start = ins.iter().any(|&(ip, _)| ip == vaddr);
        if *byte == 0xC3 && !is_start {
            assert!(b.check_point(&data, off, PointKind::Instruction).is_err());
        }
    }
    let fib = b.by_name("main.Fib").expect("main.Fib");
    assert!(!b.return_offsets(&data, fib).is_empty());
    assert!(b.by_name("main.Greet").is_some());
    assert!(b.by_name("runtime.morestack").is_some());
}

#[test]
fn go_default_stripped_and_pie() {
    if !have("go") {
        eprintln!("SKIP: go is not installed (apt-get install golang-go)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    check_go(&go_build(dir.path(), "default", &[]), false);
    check_go(
        &go_build(dir.path(), "stripped", &["-ldflags=-s -w"]),
        false,
    );
    check_go(&go_build(dir.path(), "pie", &["-buildmode=pie"]), true);
}

#[test]
fn c_from_gcc() {
    if !have("gcc") {
        eprintln!("SKIP: gcc is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("debugee.c");
    std::fs::write(&src, C_SRC).unwrap();
    for (name, flags) in [("o0", &["-O0", "-g"][..]), ("o2", &["-O2"][..])] {
        let bin = dir.path().join(name);
        let st = Command::new("gcc")
            .args(flags)
            .arg("-o")
            .arg(&bin)
            .arg(&src)
            .status()
            .unwrap();
        assert!(st.success());
        let data = std::fs::read(&bin).unwrap();
        let b = Binary::parse(&data).unwrap();
        assert_eq!(b.runtime, Runtime::Native);
        assert!(b.pie, "Debian gcc builds PIE by default");
        let f = b.by_name("classify").expect("classify");
        assert!(b.check_point(&data, f.offset, PointKind::Entry).is_ok());
        assert!(b.check_point(&data, f.offset, PointKind::Return).is_ok());
        assert!(!b.return_offsets(&data, f).is_empty());
    }
    // Stripped C has no function table to probe by name.
    let bin = dir.path().join("o2");
    assert!(Command::new("strip").arg(&bin).status().unwrap().success());
    let data = std::fs::read(&bin).unwrap();
    match Binary::parse(&data) {
        Err(CodeError::NoFunctions) => {}
        Ok(b) => assert!(b.by_name("classify").is_none()),
        Err(e) => panic!("{e}"),
    }
}
