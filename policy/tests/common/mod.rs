#![allow(dead_code)]

use coral_policy::{Caller, Decision, Policy, Request};

pub fn policy(text: &str) -> Policy {
    match Policy::parse("policy.toml", text) {
        Ok(p) => p,
        Err(e) => panic!("policy does not parse: {e}"),
    }
}

pub fn caller(specs: &[&str]) -> Caller {
    Caller::from_specs(specs).unwrap()
}

/// Decide with the index, check the linear scan agrees, return the decision.
pub fn decide(policy: &Policy, caller: &Caller, service: &str, argv: &[&str]) -> Decision {
    let (program, args) = argv.split_first().expect("argv has a program");
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let request = Request {
        caller,
        service,
        program,
        args: &args,
    };
    let decision = policy.decide(&request);
    assert_eq!(
        decision,
        policy.decide_linear_scan(&request),
        "index and linear scan disagree for {argv:?}"
    );
    decision
}

/// The TOML block of docs/policy.md that follows the marker comment.
pub fn doc_example() -> String {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/policy.md"))
        .expect("docs/policy.md exists");
    let start = doc
        .find("```toml\n# /etc/coral/policy.toml")
        .expect("docs/policy.md has the example block");
    let body = &doc[start + "```toml\n".len()..];
    let end = body.find("\n```").expect("example block is closed");
    body[..end].to_owned()
}
