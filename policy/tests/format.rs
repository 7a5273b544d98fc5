//! The file format: parsing, errors with line and column, `[[test]]` entries,
//! and the example in docs/policy.md (issue 4).

mod common;

use common::{caller, decide, doc_example, policy};
use coral_policy::{ErrorKind, Failure, Policy, PolicyError, Reason, Verdict};

fn error(text: &str) -> PolicyError {
    match Policy::parse("policy.toml", text) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => e,
    }
}

fn assert_error(text: &str, kind: ErrorKind, line: usize, column: usize, needle: &str) {
    let e = error(text);
    let shown = e.to_string();
    assert_eq!(e.kind(), Some(kind), "{shown}");
    assert_eq!(
        (e.line(), e.column()),
        (Some(line), Some(column)),
        "{shown}"
    );
    assert!(shown.contains(needle), "{shown:?} lacks {needle:?}");
    assert!(!shown.contains('\n'), "not one line: {shown:?}");
    assert!(
        shown.starts_with(&format!("policy.toml:{line}:{column}: ")),
        "{shown}"
    );
}

const RULE_HEAD: &str = "[[rule]]\nname = \"r\"\ncallers = [\"*\"]\n";

#[test]
fn doc_example_parses_and_its_tests_pass() {
    let text = doc_example();
    let p = policy(&text);
    assert_eq!(p.rule_count(), 7);
    assert_eq!(p.test_count(), 9);
    for outcome in p.run_tests() {
        assert!(outcome.passed, "{outcome}");
    }
    // The explanation shown in docs/policy.md is the real one.
    let d = decide(
        &p,
        &caller(&["role:oncall"]),
        "api",
        &["/usr/bin/ss", "-tnp;", "rm"],
    );
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/policy.md")).unwrap();
    assert!(
        doc.contains(&d.explain()),
        "docs/policy.md lacks:\n{}",
        d.explain()
    );
}

#[test]
fn empty_policy_denies_everything() {
    for text in [
        "",
        "# nothing\n",
        "version = 1\n",
        "[defaults]\ntimeout = \"5s\"\n",
    ] {
        let p = policy(text);
        assert_eq!(p.rule_count(), 0);
        let d = decide(
            &p,
            &caller(&["role:oncall", "uid:0"]),
            "api",
            &["/usr/bin/ss", "-tnp"],
        );
        assert_eq!(d.verdict, Verdict::Deny);
        assert_eq!(d.reason, Reason::NoRuleForProgram);
        assert!(
            d.explain().contains("no rule names this program"),
            "{}",
            d.explain()
        );
    }
}

#[test]
fn syntax_error_has_line_column_and_hint() {
    let e = error("[[rule]]\nname = \"x\nprogram = \"/bin/ls\"\n");
    assert_eq!(e.kind(), Some(ErrorKind::Syntax));
    assert_eq!(e.line(), Some(2));
    assert!(e.hint().is_some());
    let shown = e.to_string();
    assert!(shown.starts_with("policy.toml:2:"), "{shown}");
    assert!(!shown.contains('\n'), "{shown:?}");
}

#[test]
fn bad_regex_points_at_the_value() {
    let text =
        format!("{RULE_HEAD}program = \"/usr/bin/psql\"\nargs = [{{ regex = 'EXPLAIN (' }}]\n");
    assert_error(&text, ErrorKind::BadRegex, 5, 19, "bad regex \"EXPLAIN (\"");
}

#[test]
fn regex_that_escapes_its_anchor_group_is_refused() {
    let text = format!("{RULE_HEAD}program = \"/bin/echo\"\nargs = [{{ regex = 'a)|(.*' }}]\n");
    assert_error(&text, ErrorKind::BadRegex, 5, 19, "bad regex");
}

#[test]
fn unknown_matcher_suggests_the_right_one() {
    let text = format!("{RULE_HEAD}program = \"/bin/ls\"\nargs = [{{ globb = \"*\" }}]\n");
    assert_error(
        &text,
        ErrorKind::UnknownMatcher,
        5,
        11,
        "unknown matcher `globb`",
    );
    assert!(error(&text).hint().unwrap().contains("did you mean `glob`"));
}

#[test]
fn matcher_table_with_two_keys_is_refused() {
    let text =
        format!("{RULE_HEAD}program = \"/bin/ls\"\nargs = [{{ glob = \"*\", regex = \"a\" }}]\n");
    assert_error(&text, ErrorKind::UnknownMatcher, 5, 9, "exactly one key");
}

#[test]
fn inverted_range_is_refused() {
    let text = format!(
        "{RULE_HEAD}program = \"/usr/bin/tcpdump\"\nargs = [\"-c\", {{ range = [100, 1] }}]\n"
    );
    assert_error(
        &text,
        ErrorKind::InvertedRange,
        5,
        25,
        "range [100, 1] is inverted",
    );
}

#[test]
fn number_as_matcher_gets_a_hint() {
    let text = format!("{RULE_HEAD}program = \"/usr/bin/tcpdump\"\nargs = [\"-c\", 10]\n");
    let e = error(&text);
    assert_eq!(e.kind(), Some(ErrorKind::WrongType));
    assert!(e.hint().unwrap().contains("range = [10, 10]"), "{e}");
}

#[test]
fn relative_program_is_refused() {
    let text = format!("{RULE_HEAD}program = \"ss\"\n");
    assert_error(&text, ErrorKind::RelativePath, 4, 11, "not absolute");
    let text = format!("{RULE_HEAD}program = \"./bin/ss\"\n");
    assert_error(&text, ErrorKind::RelativePath, 4, 11, "not absolute");
    let text = format!("{RULE_HEAD}program = {{ glob = \"bin/*\" }}\n");
    assert_error(&text, ErrorKind::RelativePath, 4, 20, "not absolute");
    let text = format!("{RULE_HEAD}program = \"/bin/ls\"\ncwd = \"tmp\"\n");
    assert_error(&text, ErrorKind::RelativePath, 5, 7, "not absolute");
}

#[test]
fn program_glob_must_be_normal() {
    let text = format!("{RULE_HEAD}program = {{ glob = \"/usr/bin/../*\" }}\n");
    assert_error(
        &text,
        ErrorKind::BadValue,
        4,
        20,
        "normal".trim_end_matches('l'),
    );
}

#[test]
fn duplicate_rule_name_points_at_the_second() {
    let text = "[[rule]]\nname = \"a\"\ncallers = [\"*\"]\nprogram = \"/bin/ls\"\n\n[[rule]]\nname = \"a\"\ncallers = [\"*\"]\nprogram = \"/bin/ps\"\n";
    assert_error(
        text,
        ErrorKind::DuplicateRule,
        7,
        8,
        "duplicate rule name \"a\"",
    );
    assert!(error(text).hint().unwrap().contains("line 1"));
}

#[test]
fn unknown_key_suggests_a_fix() {
    let text = format!("{RULE_HEAD}program = \"/bin/ls\"\nservces = [\"api\"]\n");
    assert_error(
        &text,
        ErrorKind::UnknownKey,
        5,
        1,
        "unknown key `servces` in rule \"r\"",
    );
    assert!(
        error(&text)
            .hint()
            .unwrap()
            .contains("did you mean `services`")
    );
    assert_error(
        "[[rules]]\nname = \"x\"\n",
        ErrorKind::UnknownKey,
        1,
        3,
        "unknown key `rules`",
    );
}

#[test]
fn missing_required_keys_are_named() {
    assert_error(
        "[[rule]]\nname = \"r\"\nprogram = \"/bin/ls\"\n",
        ErrorKind::MissingKey,
        1,
        1,
        "has no `callers`",
    );
    assert_error(
        "[[rule]]\nname = \"r\"\ncallers = [\"*\"]\n",
        ErrorKind::MissingKey,
        1,
        1,
        "has no `program`",
    );
    assert_error(
        "[[rule]]\ncallers = [\"*\"]\n",
        ErrorKind::MissingKey,
        1,
        1,
        "has no `name`",
    );
}

#[test]
fn rule_table_instead_of_array_gets_a_hint() {
    let e = error("[rule]\nname = \"r\"\n");
    assert_eq!(e.kind(), Some(ErrorKind::WrongType));
    assert!(e.hint().unwrap().contains("[[rule]]"), "{e}");
}

#[test]
fn bad_values_are_refused() {
    let cases = [
        ("timeout = \"soon\"", "bad timeout"),
        ("timeout = \"0s\"", "out of range"),
        ("timeout = \"48h\"", "out of range"),
        ("max_output_bytes = -1", "must not be negative"),
        ("env = [\"*\"]", "bad env entry"),
        ("env = [\"A-B\"]", "bad env entry"),
        ("action = \"maybe\"", "unknown action"),
        ("rest = \"some\"", "unknown rest"),
        ("callers = []", "never match"),
        ("shell = \"yes\"", "must be true or false"),
    ];
    for (line, needle) in cases {
        let text = format!("[[rule]]\nname = \"r\"\nprogram = \"/bin/ls\"\n{line}\n");
        let text = if line.starts_with("callers") {
            text
        } else {
            format!("{text}callers = [\"*\"]\n")
        };
        let e = error(&text);
        assert_eq!(e.line(), Some(4), "{line}: {e}");
        assert!(e.to_string().contains(needle), "{line}: {e}");
    }
}

#[test]
fn bad_caller_pattern_is_refused() {
    let text = "[[rule]]\nname = \"r\"\ncallers = [\"*\", \"oncall\"]\nprogram = \"/bin/ls\"\n";
    assert_error(text, ErrorKind::BadValue, 3, 17, "has no kind");
}

#[test]
fn shell_program_needs_shell_true() {
    let text = format!("{RULE_HEAD}program = \"/bin/bash\"\nargs = [\"-c\", \"uptime\"]\n");
    assert_error(&text, ErrorKind::BadValue, 4, 11, "is a shell");
    let ok =
        format!("{RULE_HEAD}program = \"/bin/bash\"\nshell = true\nargs = [\"-c\", \"uptime\"]\n");
    let p = policy(&ok);
    let d = decide(&p, &caller(&["uid:1"]), "", &["/bin/bash", "-c", "uptime"]);
    assert!(d.is_allowed());
    assert!(d.limits.as_ref().unwrap().shell);
}

#[test]
fn deny_rule_takes_no_limits() {
    let text = format!("{RULE_HEAD}action = \"deny\"\nprogram = \"/bin/ls\"\ntimeout = \"5s\"\n");
    assert_error(&text, ErrorKind::BadValue, 6, 1, "no effect on a deny rule");
}

#[test]
fn test_entry_errors_point_at_the_line() {
    let rules = format!("{RULE_HEAD}program = \"/bin/ls\"\n");
    assert_error(
        &format!("{rules}\n[[test]]\nargv = [\"/bin/ls\"]\nexpect = \"allow\"\nrule = \"nope\"\n"),
        ErrorKind::UnknownRule,
        9,
        8,
        "does not exist",
    );
    assert_error(
        &format!("{rules}\n[[test]]\nargv = [\"/bin/ls\"]\nexpect = \"maybe\"\n"),
        ErrorKind::BadValue,
        8,
        10,
        "unknown expectation",
    );
    assert_error(
        &format!("{rules}\n[[test]]\nexpect = \"allow\"\n"),
        ErrorKind::MissingKey,
        6,
        1,
        "has no `argv`",
    );
    assert_error(
        &format!("{rules}\n[[test]]\ncommand = \"/bin/ls 'x\"\nexpect = \"allow\"\n"),
        ErrorKind::BadValue,
        7,
        11,
        "unterminated quote",
    );
    assert_error(
        &format!(
            "{rules}\n[[test]]\ncaller = [\"team:x\"]\nargv = [\"/bin/ls\"]\nexpect = \"allow\"\n"
        ),
        ErrorKind::BadValue,
        7,
        10,
        "unknown kind",
    );
}

#[test]
fn test_runner_reports_failures_with_their_line() {
    let text = r#"
[[rule]]
name = "ls"
callers = ["role:oncall"]
program = "/bin/ls"
args = ["-l"]

[[test]]
name = "passes"
caller = ["role:oncall"]
command = "/bin/ls -l"
expect = "allow"
rule = "ls"

[[test]]
name = "wrong expectation"
caller = ["role:oncall"]
command = "/bin/ls -la"
expect = "allow"

[[test]]
name = "wrong rule"
caller = ["role:oncall"]
argv = ["/bin/ls", "-l"]
expect = "allow"
rule = "other"

[[rule]]
name = "other"
callers = ["*"]
program = "/bin/ps"
"#;
    let p = policy(text);
    let outcomes = p.run_tests();
    assert_eq!(outcomes.len(), 3);
    assert!(outcomes[0].passed, "{}", outcomes[0]);
    assert_eq!(
        outcomes[0].to_string(),
        "policy.toml:8: test \"passes\": ok"
    );

    let failed = &outcomes[1];
    assert!(!failed.passed);
    assert_eq!(failed.line, 15);
    let shown = failed.to_string();
    assert!(
        shown.starts_with(
            "policy.toml:15: test \"wrong expectation\" failed: expected allow, got deny"
        ),
        "{shown}"
    );
    assert!(
        shown.contains("argument 1 \"-la\" does not match exact \"-l\""),
        "{shown}"
    );

    let failed = &outcomes[2];
    assert!(!failed.passed);
    assert_eq!(failed.line, 21);
    assert!(
        failed
            .to_string()
            .contains("expected allow by rule \"other\", got allow by rule \"ls\" (line 2)"),
        "{failed}"
    );
}

#[test]
fn rule_lines_and_summaries() {
    let p = policy(&format!(
        "\n\n{RULE_HEAD}program = \"/usr/bin/../bin/ls\"\ndescription = \"list\"\n"
    ));
    let rules = p.rules();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].line, 3);
    assert_eq!(&*rules[0].name, "r");
    assert_eq!(rules[0].program, "/usr/bin/ls");
    assert_eq!(rules[0].description.as_deref(), Some("list"));
}

#[test]
fn defaults_apply_and_rules_override() {
    let text = r#"
[defaults]
timeout = "7s"
max_output_bytes = 100
env = ["LANG"]
cwd = "/tmp//x/.."

[[rule]]
name = "a"
callers = ["*"]
program = "/bin/a"

[[rule]]
name = "b"
callers = ["*"]
program = "/bin/b"
timeout = "1m"
env = []
"#;
    let p = policy(text);
    let c = caller(&["uid:1"]);
    let a = decide(&p, &c, "", &["/bin/a"]).limits.unwrap();
    assert_eq!(a.timeout.as_secs(), 7);
    assert_eq!(a.max_output_bytes, 100);
    assert_eq!(a.cwd, "/tmp");
    assert!(a.env.allows("LANG"));
    assert!(!a.shell);
    let b = decide(&p, &c, "", &["/bin/b"]).limits.unwrap();
    assert_eq!(b.timeout.as_secs(), 60);
    assert_eq!(b.max_output_bytes, 100);
    assert!(b.env.is_empty());
    assert!(
        error("[defaults]\nshell = true\n")
            .to_string()
            .contains("unknown key `shell`"),
        "shell is per rule only"
    );
}

#[test]
fn first_match_in_file_order_decides() {
    let text = r#"
[[rule]]
name = "deny-w"
action = "deny"
callers = ["*"]
program = "/usr/bin/tcpdump"
args = ["-w", { glob = "*" }]

[[rule]]
name = "any-service"
callers = ["*"]
program = "/usr/bin/tcpdump"
rest = "any"

[[rule]]
name = "api-only"
callers = ["*"]
services = ["api"]
program = "/usr/bin/tcpdump"
rest = "any"
"#;
    let p = policy(text);
    let c = caller(&["uid:5"]);
    let d = decide(&p, &c, "api", &["/usr/bin/tcpdump", "-w", "x.pcap"]);
    assert_eq!(d.verdict, Verdict::Deny);
    assert_eq!(d.reason, Reason::DenyRule);
    assert_eq!(&*d.rule.as_ref().unwrap().name, "deny-w");
    assert!(d.explain().contains("action = \"deny\""));
    let d = decide(&p, &c, "api", &["/usr/bin/tcpdump", "-n"]);
    assert_eq!(&*d.rule.unwrap().name, "any-service");
}

#[test]
fn explain_names_the_nearest_rule_and_failed_matcher() {
    let text = r#"
[[rule]]
name = "far"
callers = ["role:oncall"]
services = ["db"]
program = "/usr/bin/ss"
args = ["-tnp"]

[[rule]]
name = "near"
callers = ["role:oncall"]
program = "/usr/bin/ss"
args = ["-t", "-n", "-p"]
"#;
    let p = policy(text);
    let c = caller(&["role:oncall"]);
    let d = decide(&p, &c, "api", &["/usr/bin/ss", "-t", "-n", "-x"]);
    let Reason::NoRuleMatched { nearest } = &d.reason else {
        panic!("{d:?}");
    };
    assert_eq!(&*nearest.rule.name, "near");
    assert_eq!(nearest.rule.line, 9);
    assert_eq!(
        nearest.failure,
        Failure::Arg {
            index: 3,
            value: "\"-x\"".into(),
            expected: "exact \"-p\"".into()
        }
    );
    let text = d.explain();
    assert!(text.contains("nearest:  rule \"near\" (line 9)"), "{text}");
    assert!(
        text.contains("failed:   argument 3 \"-x\" does not match exact \"-p\""),
        "{text}"
    );

    // Wrong service: the rule for db is nearest when its args would match.
    let d = decide(&p, &c, "api", &["/usr/bin/ss", "-tnp"]);
    let Reason::NoRuleMatched { nearest } = &d.reason else {
        panic!("{d:?}");
    };
    assert_eq!(&*nearest.rule.name, "near");
    let d = decide(&p, &caller(&["role:dev"]), "db", &["/usr/bin/ss", "-tnp"]);
    let Reason::NoRuleMatched { nearest } = &d.reason else {
        panic!("{d:?}");
    };
    assert!(matches!(nearest.failure, Failure::Caller { .. }), "{d}");
    assert!(
        d.to_string().contains("caller role:dev is not named"),
        "{d}"
    );

    // Missing and extra arguments.
    let d = decide(&p, &c, "api", &["/usr/bin/ss", "-t"]);
    assert!(
        d.to_string()
            .contains("argument 2 is missing (expected exact \"-n\")"),
        "{d}"
    );
    let d = decide(&p, &c, "api", &["/usr/bin/ss", "-t", "-n", "-p", "-x"]);
    assert!(
        d.to_string().contains("argument 4 \"-x\" is one too many"),
        "{d}"
    );
}

#[test]
fn allow_explanation_lists_rule_and_limits() {
    let p = policy(&format!(
        "{RULE_HEAD}program = \"/bin/ls\"\ntimeout = \"5s\"\nenv = [\"LANG\"]\n"
    ));
    let d = decide(&p, &caller(&["uid:1"]), "", &["/bin/ls"]);
    let text = d.explain();
    assert!(text.starts_with("decision: allow\n"), "{text}");
    assert!(
        text.contains("rule:     rule \"r\" (line 1) matched"),
        "{text}"
    );
    assert!(
        text.contains("timeout 5s, max output 1048576 bytes, env [LANG], cwd /, shell no"),
        "{text}"
    );
    assert_eq!(d.to_string(), "allow by rule \"r\" (line 1)");
}

#[test]
fn rest_and_max_rest() {
    let text = r#"
[[rule]]
name = "tail"
callers = ["*"]
program = "/usr/bin/tail"
args = ["-n", { range = [1, 100] }]
rest = { path = "/var/log/**" }
max_rest = 2
"#;
    let p = policy(text);
    let c = caller(&["uid:1"]);
    assert!(decide(&p, &c, "", &["/usr/bin/tail", "-n", "5"]).is_allowed());
    assert!(
        decide(
            &p,
            &c,
            "",
            &["/usr/bin/tail", "-n", "5", "/var/log/a", "/var/log/b/c"]
        )
        .is_allowed()
    );
    let d = decide(
        &p,
        &c,
        "",
        &[
            "/usr/bin/tail",
            "-n",
            "5",
            "/var/log/a",
            "/var/log/b",
            "/var/log/c",
        ],
    );
    assert!(
        d.to_string()
            .contains("3 further arguments; the rule allows at most 2"),
        "{d}"
    );
    let d = decide(&p, &c, "", &["/usr/bin/tail", "-n", "5", "/etc/shadow"]);
    assert!(
        d.to_string()
            .contains("argument 3 \"/etc/shadow\" does not match rest = "),
        "{d}"
    );
}

#[test]
fn service_globs_and_program_globs() {
    let text = r#"
[[rule]]
name = "psql"
callers = ["*"]
services = ["db-*", "api"]
program = { glob = "/usr/lib/postgresql/*/bin/psql" }
rest = "any"
"#;
    let p = policy(text);
    let c = caller(&["uid:1"]);
    assert!(decide(&p, &c, "db-main", &["/usr/lib/postgresql/16/bin/psql"]).is_allowed());
    assert!(decide(&p, &c, "api", &["/usr/lib/postgresql/16/bin/psql", "-l"]).is_allowed());
    assert!(!decide(&p, &c, "web", &["/usr/lib/postgresql/16/bin/psql"]).is_allowed());
    assert!(!decide(&p, &c, "api", &["/usr/lib/postgresql/16/x/bin/psql"]).is_allowed());
    assert!(
        !decide(
            &p,
            &c,
            "api",
            &["/usr/lib/postgresql/16/bin/../../../../../tmp/bin/psql"]
        )
        .is_allowed()
    );
}

#[test]
fn load_reads_files_and_reports_missing_ones() {
    let dir = std::env::temp_dir().join(format!("coral-policy-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("policy.toml");
    std::fs::write(&file, format!("{RULE_HEAD}program = \"/bin/ls\"\n")).unwrap();
    let p = Policy::load(&file).unwrap();
    assert_eq!(p.path(), file.display().to_string());
    assert_eq!(p.rule_count(), 1);

    std::fs::write(&file, "[[rule]]\nname = 5\n").unwrap();
    let e = Policy::load(&file).unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("{}:2:8: ", file.display())),
        "{e}"
    );

    let e = Policy::load(dir.join("missing.toml")).unwrap_err();
    assert!(matches!(e, PolicyError::Read { .. }));
    assert!(e.to_string().contains("cannot read policy"), "{e}");
    assert!(!e.to_string().contains('\n'));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn policy_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Policy>();
    assert_send_sync::<coral_policy::Decision>();
}
