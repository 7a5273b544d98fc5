//! Security properties of the policy (issue 4, "Security tests").

mod common;

use common::{caller, decide, doc_example, policy};
use coral_policy::{Caller, EnvAllowlist, PathError, Reason, Verdict, split_command_line};

const POLICY: &str = r#"
[[rule]]
name = "ss"
callers = ["role:oncall", "uid:1000"]
program = "/usr/bin/ss"
args = ["-tnp"]

[[rule]]
name = "echo-any-word"
callers = ["role:oncall"]
program = "/bin/echo"
args = [{ glob = "*" }]

[[rule]]
name = "echo-semicolon"
callers = ["role:oncall"]
program = "/usr/bin/echo"
args = ["a;b"]

[[rule]]
name = "logs"
callers = ["role:oncall"]
program = "/usr/bin/cat"
args = [{ path = "/var/log/app/*" }]

[[rule]]
name = "bin-glob"
callers = ["role:oncall"]
program = { glob = "/opt/tools/bin/*" }
rest = "any"
"#;

fn oncall() -> Caller {
    caller(&["role:oncall"])
}

/// `coral exec api "<line>"` as the agent would decide it: split, then
/// decide with argv[0] as the (already resolved) program.
fn decide_line(line: &str) -> coral_policy::Decision {
    let p = policy(POLICY);
    let argv = split_command_line(line).unwrap();
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    decide(&p, &oncall(), "api", &argv)
}

#[test]
fn shell_metacharacters_are_literal_and_denied() {
    let attacks = [
        "/usr/bin/ss -tnp; rm -rf /tmp/x",
        "/usr/bin/ss -tnp ; rm -rf /tmp/x",
        "/usr/bin/ss -tnp && id",
        "/usr/bin/ss -tnp || id",
        "/usr/bin/ss -tnp | sh",
        "/usr/bin/ss -tnp > /etc/passwd",
        "/usr/bin/ss -tnp >> /tmp/x",
        "/usr/bin/ss -tnp < /etc/shadow",
        "/usr/bin/ss $(id)",
        "/usr/bin/ss -tnp$(id)",
        "/usr/bin/ss `id`",
        "/usr/bin/ss '-tnp;id'",
        "/usr/bin/ss \"-tnp\nid\"",
        "/usr/bin/ss -tnp\nid",
        "/usr/bin/ss -tnp &",
        "/usr/bin/ss -tnp#",
        "/usr/bin/ss ${IFS}-tnp",
    ];
    for line in attacks {
        let d = decide_line(line);
        assert_eq!(d.verdict, Verdict::Deny, "{line:?} was allowed: {d}");
    }
    // The plain command is allowed, so the denials above are about the text.
    assert!(decide_line("/usr/bin/ss -tnp").is_allowed());
}

#[test]
fn metacharacters_pass_only_where_exactly_allowed() {
    // The argument `a;b` is literal text and this rule allows exactly it.
    assert!(decide_line("/usr/bin/echo 'a;b'").is_allowed());
    assert!(decide_line("/usr/bin/echo a\\;b").is_allowed());
    assert!(!decide_line("/usr/bin/echo a;b;c").is_allowed());
    assert!(!decide_line("/usr/bin/echo a ; b").is_allowed());
    // A glob `*` is one word without `/`: a `;` inside a word is still one
    // argument, and the second command is a denied extra argument.
    assert!(
        decide_line("/bin/echo $(id)").is_allowed(),
        "one literal word"
    );
    assert!(!decide_line("/bin/echo x; rm -rf /tmp/x").is_allowed());
    assert!(!decide_line("/bin/echo x | sh").is_allowed());
    assert!(!decide_line("/bin/echo ../../etc/passwd").is_allowed());
}

#[test]
fn program_path_tricks_do_not_escape_a_path_rule() {
    let p = policy(POLICY);
    let c = oncall();
    let escapes = [
        "/usr/bin/../../tmp/evil/ss",
        "/usr/bin/../../../../../../tmp/ss",
        "/usr/bin/ss/../../../tmp/ss",
        "/opt/tools/bin/../../../tmp/x",
        "/opt/tools/bin/../evil",
        "/opt/tools/bin/sub/x",
        "/opt/tools/bin//../../x",
    ];
    for program in escapes {
        let d = decide(&p, &c, "api", &[program, "-tnp"]);
        assert_eq!(d.verdict, Verdict::Deny, "{program} allowed: {d}");
    }
    // Non-normal spellings of an allowed path reach the same rule, and the
    // decision carries the normal form.
    for program in [
        "/usr/bin//ss",
        "/usr/./bin/ss",
        "//usr/bin/./ss",
        "/usr/lib/../bin/ss",
        "/usr/bin/ss/",
    ] {
        let d = decide(&p, &c, "api", &[program, "-tnp"]);
        assert!(d.is_allowed(), "{program}: {d}");
        assert_eq!(d.program, "/usr/bin/ss");
    }
    let d = decide(&p, &c, "api", &["/opt/tools/bin/./x"]);
    assert!(d.is_allowed());
    assert_eq!(d.program, "/opt/tools/bin/x");
}

#[test]
fn relative_programs_are_denied() {
    let p = policy(POLICY);
    let c = oncall();
    for program in ["ss", "./ss", "../usr/bin/ss", "usr/bin/ss", ""] {
        let d = decide(&p, &c, "api", &[program, "-tnp"]);
        assert_eq!(d.verdict, Verdict::Deny);
        assert!(
            matches!(
                d.reason,
                Reason::InvalidProgram(PathError::Relative | PathError::Empty)
            ),
            "{program}: {d:?}"
        );
    }
}

#[test]
fn path_arguments_cannot_climb_out() {
    let p = policy(POLICY);
    let c = oncall();
    assert!(decide(&p, &c, "api", &["/usr/bin/cat", "/var/log/app/x.log"]).is_allowed());
    for arg in [
        "/var/log/app/../../../etc/shadow",
        "/var/log/app/./x.log",
        "/var/log/app//x.log",
        "/var/log/app/..",
        "var/log/app/x.log",
        "/var/log/app/a/b",
    ] {
        assert!(
            !decide(&p, &c, "api", &["/usr/bin/cat", arg]).is_allowed(),
            "{arg}"
        );
    }
}

#[test]
fn caller_named_by_no_rule_is_denied() {
    let p = policy(POLICY);
    let strangers = [
        Caller::default(),
        caller(&["role:dev"]),
        caller(&["uid:1001", "group:oncall"]),
        caller(&["identity:oncall", "user:oncall"]),
        caller(&["gid:1000"]),
    ];
    for c in &strangers {
        let d = decide(&p, c, "api", &["/usr/bin/ss", "-tnp"]);
        assert_eq!(d.verdict, Verdict::Deny, "{c}: {d}");
        assert!(d.to_string().contains("is not named in callers"), "{d}");
    }
    assert!(decide(&p, &caller(&["uid:1000"]), "api", &["/usr/bin/ss", "-tnp"]).is_allowed());
}

#[test]
fn unknown_program_is_denied_by_default() {
    let p = policy(POLICY);
    let d = decide(&p, &oncall(), "api", &["/usr/bin/rm", "-rf", "/"]);
    assert_eq!(d.verdict, Verdict::Deny);
    assert_eq!(d.reason, Reason::NoRuleForProgram);
}

#[test]
fn nul_bytes_are_denied() {
    let p = policy(POLICY);
    let d = decide(&p, &oncall(), "api", &["/bin/echo", "a\0b"]);
    assert_eq!(d.reason, Reason::NulInArgument { index: 1 });
    let d = decide(&p, &oncall(), "api", &["/usr/bin/ss\0", "-tnp"]);
    assert_eq!(d.reason, Reason::InvalidProgram(PathError::Nul));
}

#[test]
fn env_allowlist_strips_ld_preload_and_path() {
    let p = policy(
        r#"
[[rule]]
name = "plain"
callers = ["*"]
program = "/bin/a"
env = ["LANG", "LC_*", "L*"]

[[rule]]
name = "with-path"
callers = ["*"]
program = "/bin/b"
env = ["PATH", "LD_PRELOAD"]
"#,
    );
    let hostile = [
        ("LANG", "C"),
        ("LC_ALL", "C"),
        ("PATH", "/tmp/evil:/usr/bin"),
        ("LD_PRELOAD", "/tmp/evil.so"),
        ("LD_LIBRARY_PATH", "/tmp"),
        ("LD_AUDIT", "/tmp/a.so"),
        ("BASH_ENV", "/tmp/x"),
        ("IFS", ";"),
    ];
    let c = caller(&["uid:1"]);
    let limits = decide(&p, &c, "", &["/bin/a"]).limits.unwrap();
    let env = limits.filter_env(hostile);
    assert_eq!(env.keys().collect::<Vec<_>>(), ["LANG", "LC_ALL"]);
    let limits = decide(&p, &c, "", &["/bin/b"]).limits.unwrap();
    let env = limits.filter_env(hostile);
    assert_eq!(env.keys().collect::<Vec<_>>(), ["LD_PRELOAD", "PATH"]);
    // The built-in default passes nothing.
    assert!(EnvAllowlist::default().filter(hostile).is_empty());
}

#[test]
fn shells_need_an_explicit_rule() {
    // A program glob that covers a shell does not allow it without shell = true.
    let p = policy(
        r#"
[[rule]]
name = "all-bin"
callers = ["*"]
program = { glob = "/bin/*" }
rest = "any"
"#,
    );
    let c = caller(&["uid:1"]);
    assert!(decide(&p, &c, "", &["/bin/ls", "-l"]).is_allowed());
    for shell in [
        "/bin/sh",
        "/bin/bash",
        "/bin/dash",
        "/bin/busybox",
        "/bin/zsh",
    ] {
        let d = decide(&p, &c, "", &[shell, "-c", "id"]);
        assert_eq!(d.verdict, Verdict::Deny, "{shell}");
        assert!(d.to_string().contains("shell = true"), "{d}");
    }
}

#[test]
fn newline_in_regex_argument_is_denied() {
    let p = policy(&doc_example());
    let c = caller(&["identity:dba-x"]);
    let base = ["/usr/bin/psql", "-d", "app", "-c"];
    let ok: Vec<&str> = base.iter().copied().chain(["EXPLAIN SELECT 1"]).collect();
    assert!(decide(&p, &c, "db-1", &ok).is_allowed());
    for sql in [
        "EXPLAIN SELECT 1\nDROP TABLE orders",
        "EXPLAIN SELECT 1; DROP TABLE orders",
        "SELECT 1",
        "DELETE FROM orders; EXPLAIN SELECT 1",
    ] {
        let argv: Vec<&str> = base.iter().copied().chain([sql]).collect();
        assert!(!decide(&p, &c, "db-1", &argv).is_allowed(), "{sql:?}");
    }
}

#[test]
fn range_refuses_octal_and_hex_spellings() {
    let p = policy(&doc_example());
    let c = caller(&["role:oncall"]);
    assert!(decide(&p, &c, "", &["/usr/bin/tcpdump", "-c", "10", "-i", "eth0"]).is_allowed());
    for n in [
        "010", "0x10", "+10", "1e2", "10 ", "-1", "0", "1001", "10;id",
    ] {
        let d = decide(&p, &c, "", &["/usr/bin/tcpdump", "-c", n, "-i", "eth0"]);
        assert!(!d.is_allowed(), "{n:?}");
    }
}

#[test]
fn explanations_escape_control_characters() {
    let d = decide_line("/usr/bin/ss \"-tnp\nid\x1b[2J\"");
    let text = d.explain();
    let one = d.to_string();
    assert!(!one.contains('\n'), "{one:?}");
    assert!(!text.contains('\x1b'), "{text:?}");
    assert!(text.contains("\\n"), "{text}");
}
