//! Any command line against a fixed policy: no panic, and the index agrees
//! with a linear scan.
#![no_main]

use std::sync::LazyLock;

use coral_policy::{Caller, Policy, Request, split_command_line};
use libfuzzer_sys::fuzz_target;

const POLICY: &str = r#"
[[rule]]
name = "ss"
callers = ["role:oncall"]
program = "/usr/bin/ss"
args = [{ any_of = ["-tnp", { glob = "-[tu]*" }] }]

[[rule]]
name = "psql"
callers = ["*"]
services = ["db-*"]
program = { glob = "/usr/lib/postgresql/*/bin/psql" }
args = ["-c", { regex = '(?i)EXPLAIN [^;\n]*' }]

[[rule]]
name = "tail"
callers = ["uid:1000"]
program = "/usr/bin/tail"
args = ["-n", { range = [1, 1000] }]
rest = { path = "/var/log/**" }
max_rest = 3
"#;

static COMPILED: LazyLock<Policy> = LazyLock::new(|| Policy::parse("fuzz.toml", POLICY).unwrap());

fuzz_target!(|input: (u8, &str, &str)| {
    let (who, service, line) = input;
    let caller = match who % 3 {
        0 => Caller::from_specs(&["role:oncall"]).unwrap(),
        1 => Caller::from_specs(&["uid:1000"]).unwrap(),
        _ => Caller::default(),
    };
    let Ok(argv) = split_command_line(line) else {
        return;
    };
    let request = Request { caller: &caller, service, program: &argv[0], args: &argv[1..] };
    let decision = COMPILED.decide(&request);
    assert_eq!(decision, COMPILED.decide_linear_scan(&request));
    let _ = decision.explain();
});
