//! Issue 4 (the policy part): `coral policy check` and `coral policy explain`
//! on real files, resolving real programs.

mod common;

use common::*;

const POLICY: &str = r#"
version = 1

[[rule]]
name = "echo-hello"
callers = ["role:oncall"]
services = ["api"]
program = "/usr/bin/echo"
args = ["hello", { any_of = ["world", "there"] }]

[[test]]
name = "oncall may greet"
caller = ["role:oncall"]
service = "api"
argv = ["/usr/bin/echo", "hello", "world"]
expect = "allow"
rule = "echo-hello"

[[test]]
name = "metacharacters stay literal"
caller = ["role:oncall"]
service = "api"
argv = ["/usr/bin/echo", "hello", "world; rm -rf /tmp/x"]
expect = "deny"
"#;

#[test]
fn check_runs_the_policy_tests_and_explain_names_the_rule() {
    let env = Env::new(FAST_CONFIG);
    let file = env.root().join("policy.toml");
    std::fs::write(&file, POLICY).unwrap();
    let f = file.to_str().unwrap();
    let out = env.ok(&["policy", "check", f]);
    assert!(out.contains("1 rules, 2 tests, all pass"), "{out}");

    // `echo` is found along PATH and resolved, as the agent will resolve it.
    let out = env.ok(&[
        "policy",
        "explain",
        f,
        "--service",
        "api",
        "--as",
        "role:oncall",
        "--",
        "echo",
        "hello",
        "there",
    ]);
    assert!(out.contains("allow") && out.contains("echo-hello"), "{out}");
    let out = env.ok(&[
        "policy",
        "explain",
        f,
        "--service",
        "api",
        "--as",
        "role:intern",
        "--",
        "echo",
        "hello",
        "there",
    ]);
    assert!(out.contains("deny"), "{out}");
    let out = env.ok(&[
        "policy",
        "explain",
        f,
        "--service",
        "api",
        "--as",
        "role:oncall",
        "--",
        "echo",
        "hello",
        "$(id)",
    ]);
    assert!(out.contains("deny"), "{out}");

    // A failing [[test]] fails the check (exit 1), naming the test's line.
    std::fs::write(
        &file,
        POLICY.replace("expect = \"deny\"", "expect = \"allow\""),
    )
    .unwrap();
    let out = env.run(&["policy", "check", f]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("metacharacters stay literal"));

    // A broken file is a usage error with file, line and column.
    std::fs::write(
        &file,
        "[[rule]]\nname = \"x\"\ncallers = [\"*\"]\nprogram = \"echo\"\n",
    )
    .unwrap();
    let out = env.run(&["policy", "check", f]);
    assert_eq!(out.status.code(), Some(64));
    let err = stderr(&out);
    assert!(
        err.contains("policy.toml:4:") && err.trim_end().lines().count() == 1,
        "{err}"
    );
    // Unknown commands are usage errors too.
    std::fs::write(&file, POLICY).unwrap();
    let out = env.run(&[
        "policy",
        "explain",
        f,
        "--service",
        "api",
        "--",
        "no-such-command-xyz",
    ]);
    assert_eq!(out.status.code(), Some(64));
    assert!(stderr(&out).contains("not found in PATH"));
}
