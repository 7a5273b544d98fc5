//! Deterministic randomized robustness test (issue 4, "Fuzzing"): 50 000
//! random and mutated policy texts and requests through the parser and the
//! matcher. Nothing may panic, errors stay one line with a real position,
//! and the index always agrees with a linear scan. The cargo-fuzz targets in
//! `policy/fuzz` explore the same entry points without a bound.

mod common;

use coral_policy::{Caller, Policy, Request};

/// splitmix64: small, deterministic, good enough to drive mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

const SEEDS: &[&str] = &[
    r#"[[rule]]
name = "ss"
callers = ["role:oncall", "uid:1000"]
program = "/usr/bin/ss"
args = [{ any_of = ["-tnp", { glob = "-[tu]*" }] }]
"#,
    r#"[defaults]
timeout = "5s"
env = ["LANG", "LC_*"]
[[rule]]
name = "psql"
callers = ["identity:dba-*"]
services = ["db-*", "api"]
program = { glob = "/usr/lib/postgresql/*/bin/psql" }
args = ["-c", { regex = '(?i)EXPLAIN [^;\n]*' }]
max_output_bytes = 4096
"#,
    r#"[[rule]]
name = "tcpdump"
callers = ["*"]
program = "/usr/bin/tcpdump"
args = ["-c", { range = [1, 1000] }]
rest = { path = "/var/log/**" }
max_rest = 2
[[rule]]
name = "deny"
action = "deny"
callers = ["role:x"]
program = "/usr/bin/tcpdump"
rest = "any"
[[test]]
caller = ["role:oncall"]
command = "/usr/bin/tcpdump -c 5"
expect = "allow"
rule = "tcpdump"
"#,
    r#"[[rule]]
name = "sh"
callers = ["gid:10", "group:wheel", "user:root"]
program = "/bin/sh"
shell = true
args = ["-c", "uptime"]
cwd = "/tmp/../var"
[[test]]
argv = ["/bin/sh", "-c", "uptime"]
expect = "deny"
"#,
];

const TOKENS: &[&str] = &[
    "[[rule]]\n",
    "[[test]]\n",
    "[defaults]\n",
    "[rule]\n",
    "{",
    "}",
    "[",
    "]",
    "\"",
    "'",
    "=",
    ",",
    "\n",
    "name = \"n\"\n",
    "callers = [\"*\"]\n",
    "program = \"/bin/x\"\n",
    "args = [",
    "rest = \"any\"\n",
    "{ regex = '(' }",
    "{ regex = 'a|b' }",
    "{ range = [9, 1] }",
    "{ range = [1, 9] }",
    "{ glob = \"[\" }",
    "{ glob = \"*\" }",
    "{ any_of = [] }",
    "{ path = \"/a/**\" }",
    "{ exact = 1 }",
    "{ nope = 1 }",
    "\"/../..\"",
    "..",
    "//",
    "/./",
    "-9223372036854775808",
    "99999999999999999999",
    "0x1F",
    "1e9",
    "true",
    "timeout = \"1ns\"\n",
    "timeout = \"25h\"\n",
    "env = [\"LD_*\"]\n",
    "é",
    "\u{0}",
    "\\u0000",
    "\t",
    "#",
    "action = \"deny\"\n",
    "shell = true\n",
    "services = [\"a*\", \"b\"]\n",
    "expect = \"allow\"\n",
    "command = \"/bin/x 'a\"\n",
    "caller = [\"role:a\"]\n",
    "rule = \"n\"\n",
    "max_rest = -1\n",
];

const WORDS: &[&str] = &[
    "-tnp",
    "-tnp;",
    "-t",
    "-c",
    "5",
    "010",
    "0x10",
    "1000",
    "1001",
    "-1",
    "EXPLAIN SELECT 1",
    "EXPLAIN SELECT 1; DROP TABLE t",
    "$(id)",
    "`id`",
    "|",
    "&&",
    ">",
    "a\nb",
    "/var/log/a",
    "/var/log/../etc",
    "",
    " ",
    "é",
    "\u{0}",
    "uptime",
    "*",
    "../../x",
    "\\",
];

const PROGRAMS: &[&str] = &[
    "/usr/bin/ss",
    "/usr/bin//ss",
    "/usr/bin/../bin/ss",
    "/usr/bin/tcpdump",
    "/bin/sh",
    "/bin/x",
    "/usr/lib/postgresql/16/bin/psql",
    "/usr/lib/postgresql/16/../../../../bin/psql",
    "ss",
    "",
    "/",
    "/..",
    "/usr/bin/ss/",
    "/bin/bash",
    "/bin/x\u{0}",
];

const CALLERS: &[&[&str]] = &[
    &[],
    &["role:oncall"],
    &["uid:1000"],
    &["identity:dba-a"],
    &["gid:10", "group:wheel"],
    &["role:x"],
    &["user:root", "uid:0"],
];

fn mutate(rng: &mut Rng, text: &str) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for _ in 0..=rng.below(4) {
        let at = rng.below(chars.len() + 1);
        match rng.below(6) {
            0 => {
                let end = (at + rng.below(16)).min(chars.len());
                chars.drain(at..end);
            }
            1 | 2 => {
                let token: Vec<char> = rng.pick(TOKENS).chars().collect();
                chars.splice(at..at, token);
            }
            3 if at < chars.len() => {
                chars[at] = char::from_u32(rng.below(0x250) as u32).unwrap_or('x');
            }
            4 => {
                let end = (at + rng.below(40)).min(chars.len());
                let copy: Vec<char> = chars[at..end].to_vec();
                let to = rng.below(chars.len() + 1);
                chars.splice(to..to, copy);
            }
            _ => chars.truncate(at),
        }
    }
    chars.into_iter().collect()
}

fn random_text(rng: &mut Rng) -> String {
    match rng.below(10) {
        0 => (0..rng.below(30)).map(|_| rng.pick(TOKENS)).collect(),
        1 => {
            let a = rng.pick(SEEDS).to_owned();
            a + rng.pick(SEEDS)
        }
        _ => {
            let seed = rng.pick(SEEDS);
            mutate(rng, seed)
        }
    }
}

fn random_request(rng: &mut Rng, policy: &Policy) {
    let caller = Caller::from_specs(rng.pick(CALLERS)).unwrap();
    let program = rng.pick(PROGRAMS);
    let args: Vec<String> = (0..rng.below(5))
        .map(|_| rng.pick(WORDS).to_string())
        .collect();
    let service = rng.pick(&["", "api", "db-main", "web"]);
    let request = Request {
        caller: &caller,
        service,
        program,
        args: &args,
    };
    let decision = policy.decide(&request);
    assert_eq!(decision, policy.decide_linear_scan(&request), "{request:?}");
    assert!(!decision.to_string().contains('\n'));
    let _ = decision.explain();
}

#[test]
fn fifty_thousand_random_policies_and_requests_never_panic() {
    let mut rng = Rng(0x0000_c0a1_5eed);
    let (mut parsed, mut refused) = (0, 0);
    for _ in 0..25_000 {
        let text = random_text(&mut rng);
        match Policy::parse("fuzz.toml", &text) {
            Ok(policy) => {
                parsed += 1;
                for outcome in policy.run_tests() {
                    assert!(!outcome.to_string().contains('\n'));
                }
                random_request(&mut rng, &policy);
            }
            Err(e) => {
                refused += 1;
                let shown = e.to_string();
                assert!(!shown.contains('\n'), "{shown:?}");
                assert!(shown.starts_with("fuzz.toml:"), "{shown}");
                let (line, column) = (e.line().unwrap(), e.column().unwrap());
                assert!(
                    line >= 1 && line <= text.lines().count().max(1) + 1,
                    "{shown}\n{text}"
                );
                assert!(column >= 1, "{shown}");
            }
        }
    }
    assert!(
        parsed > 1_000 && refused > 1_000,
        "mutations too weak: {parsed} parsed, {refused} refused"
    );

    let policies: Vec<Policy> = SEEDS.iter().map(|s| common::policy(s)).collect();
    for _ in 0..25_000 {
        let policy = &policies[rng.below(policies.len())];
        random_request(&mut rng, policy);
        let line: String = (0..rng.below(6))
            .map(|_| rng.pick(WORDS))
            .collect::<Vec<_>>()
            .join(" ");
        let _ = coral_policy::split_command_line(&line);
    }
}
