//! Indexing real programs built here (issue 12): Go 1.19 (DWARF, stripped,
//! PIE) and C from gcc. Skips when `go` or `gcc` is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::index::{Index, Lang, Location, ValueKind};

const GO_SRC: &str = include_str!("../../../tests/targets/debugee.go");
const C_SRC: &str = include_str!("../../../tests/targets/debugee.c");

fn have(tool: &str) -> bool {
    Command::new(tool).arg("version").output().is_ok()
        || Command::new(tool).arg("--version").output().is_ok()
}

pub(crate) fn go_build(dir: &Path, out: &str, extra: &[&str]) -> PathBuf {
    let src = dir.join("debugee.go");
    std::fs::write(&src, GO_SRC).unwrap();
    let bin = dir.join(out);
    let st = Command::new("go")
        .arg("build")
        .args(extra)
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .env("GOCACHE", dir.join("gocache"))
        .env("GOPATH", dir.join("gopath"))
        .env("GO111MODULE", "off")
        .env("CGO_ENABLED", "0")
        .status()
        .unwrap();
    assert!(st.success(), "go build {extra:?}");
    bin
}

#[test]
fn go_with_dwarf_has_arguments_and_results_in_abi_registers() {
    if !have("go") {
        eprintln!("SKIP: go is not installed (apt-get install golang-go)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (name, flags, pie) in [
        ("default", &[][..], false),
        ("pie", &["-buildmode=pie"][..], true),
    ] {
        let idx = Index::open(&go_build(dir.path(), name, flags)).unwrap();
        assert_eq!(idx.lang, Lang::Go);
        assert_eq!(idx.pie, pie);
        assert!(idx.has_dwarf, "Go 1.19's compressed DWARF is read");
        let greet = idx.resolve("Greet").unwrap();
        assert_eq!(greet.name, "main.Greet");
        let p: Vec<_> = greet
            .params
            .iter()
            .map(|p| (p.name.as_str(), p.type_name.as_str(), &p.location))
            .collect();
        assert_eq!(
            p,
            [
                ("name", "string", &Location::Regs(vec![0, 1])),
                ("times", "int", &Location::Regs(vec![2])),
                ("loud", "bool", &Location::Regs(vec![3])),
            ]
        );
        assert_eq!(greet.params[0].kind, ValueKind::String);
        assert_eq!(greet.results.len(), 2);
        assert_eq!(greet.results[0].location, Location::Regs(vec![0, 1]));
        assert_eq!(greet.results[1].type_name, "error");
        assert_eq!(greet.results[1].kind, ValueKind::Interface);
        assert_eq!(greet.results[1].location, Location::Regs(vec![2, 3]));
        let sum = idx.resolve("main.Checksum").unwrap();
        assert_eq!(sum.params[0].kind, ValueKind::Slice { bytes: true });
        assert!(idx.return_offsets(idx.resolve("Classify").unwrap()).len() >= 2);
        assert!(idx.matching("main.").count() >= 6);
    }
}

#[test]
fn stripped_go_still_lists_functions_without_arguments() {
    if !have("go") {
        eprintln!("SKIP: go is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let idx = Index::open(&go_build(dir.path(), "stripped", &["-ldflags=-s -w"])).unwrap();
    assert_eq!(idx.lang, Lang::Go);
    assert!(!idx.has_dwarf);
    let f = idx.resolve("Add").unwrap();
    assert!(f.params.is_empty());
    assert!(!idx.return_offsets(f).is_empty());
    assert!(idx.resolve("Nope").unwrap_err().contains("no function"));
}

#[test]
fn c_with_dwarf_uses_sysv_registers() {
    if !have("gcc") {
        eprintln!("SKIP: gcc is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("debugee.c");
    std::fs::write(&src, C_SRC).unwrap();
    let bin = dir.path().join("c");
    assert!(
        Command::new("gcc")
            .args(["-O0", "-g", "-o"])
            .arg(&bin)
            .arg(&src)
            .status()
            .unwrap()
            .success()
    );
    let idx = Index::open(&bin).unwrap();
    assert_eq!(idx.lang, Lang::Native);
    let g = idx.resolve("greet").unwrap();
    assert_eq!(g.params[0].name, "name");
    assert_eq!(g.params[0].kind, ValueKind::CString);
    assert_eq!(g.params[0].location, Location::Regs(vec![3]));
    assert_eq!(g.params[1].location, Location::Regs(vec![4]));
    let add = idx.resolve("add").unwrap();
    assert_eq!(
        add.params[0].kind,
        ValueKind::Int {
            signed: true,
            bytes: 8
        }
    );
}
