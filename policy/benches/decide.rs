//! Policy decision time for a 1,000-rule policy (issue 4: target < 10 µs),
//! with the index and, in the same run, with a linear scan over the same
//! rules. Prints a markdown table for docs/benchmarks.md.
//!
//! `cargo bench -p coral-policy --bench decide`. Without `--bench` (as when
//! `cargo test --all-targets` runs it once) it does nothing.

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::{Duration, Instant};

use coral_policy::{Caller, Policy, Request};

const PROGRAMS: usize = 200;
const ROUNDS: usize = 200;

/// 200 programs × 4 rules (exact and glob services, regex, range, glob, path
/// matchers, rest) + 180 single rules + 20 program-glob rules = 1,000.
fn policy_text() -> String {
    let mut t = String::from("[defaults]\ntimeout = \"10s\"\nenv = [\"LANG\"]\n\n");
    for p in 0..PROGRAMS {
        let _ = write!(
            t,
            r#"[[rule]]
name = "tool{p}-count"
callers = ["role:oncall"]
services = ["svc{s0}"]
program = "/usr/bin/tool{p}"
args = ["-a", {{ range = [1, 1000] }}]

[[rule]]
name = "tool{p}-query"
callers = ["identity:agent-*"]
services = ["svc{s1}", "svc{s2}"]
program = "/usr/bin/tool{p}"
args = [{{ regex = '--query=[a-z]{{1,20}}' }}]

[[rule]]
name = "tool{p}-flags"
callers = ["uid:1000", "group:ops"]
program = "/usr/bin/tool{p}"
args = [{{ glob = "-[xyz]*" }}]
rest = {{ any_of = ["-v", "-q"] }}

[[rule]]
name = "tool{p}-logs"
callers = ["*"]
services = ["db-*"]
program = "/usr/bin/tool{p}"
args = [{{ path = "/var/log/tool{p}/*.log" }}]

"#,
            s0 = p % 20,
            s1 = (p + 1) % 20,
            s2 = (p + 2) % 20,
        );
    }
    for i in 0..180 {
        let _ = write!(
            t,
            "[[rule]]\nname = \"extra{i}\"\ncallers = [\"role:oncall\"]\nprogram = \"/opt/extra/bin/x{i}\"\nargs = [\"--once\"]\n\n"
        );
    }
    for i in 0..20 {
        let _ = write!(
            t,
            "[[rule]]\nname = \"glob{i}\"\ncallers = [\"role:oncall\"]\nprogram = {{ glob = \"/opt/glob{i}/bin/*\" }}\nrest = \"any\"\n\n"
        );
    }
    t
}

struct Case {
    caller: Caller,
    service: String,
    program: String,
    args: Vec<String>,
}

fn case(caller: &[&str], service: &str, program: &str, args: &[&str]) -> Case {
    Case {
        caller: Caller::from_specs(caller).unwrap(),
        service: service.to_owned(),
        program: program.to_owned(),
        args: args.iter().map(|s| s.to_string()).collect(),
    }
}

/// (label, expected allowed, requests)
fn workloads() -> Vec<(&'static str, bool, Vec<Case>)> {
    let mut hits = Vec::new();
    let mut miss_args = Vec::new();
    let mut miss_program = Vec::new();
    let mut miss_caller = Vec::new();
    let mut last = Vec::new();
    for p in (0..PROGRAMS).step_by(7) {
        let prog = format!("/usr/bin/tool{p}");
        let s0 = format!("svc{}", p % 20);
        let s1 = format!("svc{}", (p + 1) % 20);
        hits.push(case(&["role:oncall"], &s0, &prog, &["-a", "500"]));
        hits.push(case(&["identity:agent-7"], &s1, &prog, &["--query=orders"]));
        hits.push(case(&["uid:1000"], "web", &prog, &["-x1", "-v", "-q"]));
        hits.push(case(
            &["uid:5"],
            "db-main",
            &prog,
            &[&format!("/var/log/tool{p}/a.log")],
        ));
        miss_args.push(case(&["role:oncall"], &s0, &prog, &["-a", "5000"]));
        miss_args.push(case(&["role:oncall"], &s0, &prog, &["-a", "5; rm -rf /"]));
        miss_args.push(case(
            &["uid:5"],
            "db-main",
            &prog,
            &[&format!("/var/log/tool{p}/../../../etc/shadow.log")],
        ));
        miss_program.push(case(
            &["role:oncall"],
            &s0,
            &format!("/usr/sbin/tool{p}"),
            &["-a", "5"],
        ));
        miss_program.push(case(
            &["role:oncall"],
            &s0,
            &format!("/usr/bin/../../tmp/tool{p}"),
            &["-a", "5"],
        ));
        miss_caller.push(case(&["role:dev"], &s0, &prog, &["-a", "5"]));
    }
    for i in 0..20 {
        last.push(case(
            &["role:oncall"],
            "api",
            &format!("/opt/glob{i}/bin/thing"),
            &["x"],
        ));
        last.push(case(
            &["role:oncall"],
            "api",
            "/opt/extra/bin/x179",
            &["--once"],
        ));
    }
    vec![
        ("hit", true, hits),
        ("hit, last rules in the file", true, last),
        ("miss: arguments", false, miss_args),
        ("miss: unknown program", false, miss_program),
        ("miss: caller not named", false, miss_caller),
    ]
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn fmt(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns >= 10_000 {
        format!("{:.1} µs", ns as f64 / 1000.0)
    } else {
        format!("{:.2} µs", ns as f64 / 1000.0)
    }
}

fn measure(cases: &[Case], mut f: impl FnMut(&Request<'_>) -> bool) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(cases.len() * ROUNDS);
    for _ in 0..ROUNDS {
        for c in cases {
            let request = Request {
                caller: &c.caller,
                service: &c.service,
                program: &c.program,
                args: &c.args,
            };
            let start = Instant::now();
            let allowed = f(black_box(&request));
            samples.push(start.elapsed());
            black_box(allowed);
        }
    }
    samples.sort();
    samples
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let text = policy_text();
    let started = Instant::now();
    let policy = Policy::parse("bench.toml", &text).expect("benchmark policy parses");
    let parse_time = started.elapsed();
    assert_eq!(policy.rule_count(), 1000);

    let mut table = String::new();
    let _ = writeln!(
        table,
        "Policy decision time, {} rules ({} KiB of TOML, parsed and compiled in {:.1} ms), \
         {ROUNDS} rounds over each set of requests, one `Instant` pair per decision. \
         `index` is `Policy::decide`; `linear` checks every rule in file order (same rules, same run).\n",
        policy.rule_count(),
        text.len() / 1024,
        parse_time.as_secs_f64() * 1000.0
    );
    let _ = writeln!(
        table,
        "| requests | decisions | index p50 | index p99 | linear p50 | linear p99 | p50 speed-up |"
    );
    let _ = writeln!(table, "|---|---:|---:|---:|---:|---:|---:|");
    for (label, allowed, cases) in workloads() {
        for c in &cases {
            let request = Request {
                caller: &c.caller,
                service: &c.service,
                program: &c.program,
                args: &c.args,
            };
            let d = policy.decide(&request);
            assert_eq!(
                d.is_allowed(),
                allowed,
                "{label}: {} {:?}: {d}",
                c.program,
                c.args
            );
            assert_eq!(d, policy.decide_linear_scan(&request), "{label}");
        }
        // Warm up both paths.
        measure(&cases, |r| policy.decide(r).is_allowed());
        measure(&cases, |r| policy.decide_linear_scan(r).is_allowed());
        let index = measure(&cases, |r| policy.decide(r).is_allowed());
        let linear = measure(&cases, |r| policy.decide_linear_scan(r).is_allowed());
        let (i50, i99) = (percentile(&index, 0.5), percentile(&index, 0.99));
        let (l50, l99) = (percentile(&linear, 0.5), percentile(&linear, 0.99));
        let _ = writeln!(
            table,
            "| {label} | {} | {} | {} | {} | {} | {:.0}× |",
            index.len(),
            fmt(i50),
            fmt(i99),
            fmt(l50),
            fmt(l99),
            l50.as_secs_f64() / i50.as_secs_f64().max(1e-9)
        );
    }
    print!("{table}");
}
