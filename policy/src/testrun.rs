//! `[[test]]` entries: expected decisions stated in the policy file itself.

use std::fmt;

use crate::caller::Caller;
use crate::decide::{Decision, Request, Verdict};

/// One `[[test]]` entry, parsed.
#[derive(Debug, Clone)]
pub(crate) struct TestCase {
    pub(crate) name: String,
    pub(crate) line: usize,
    pub(crate) caller: Caller,
    pub(crate) service: String,
    pub(crate) argv: Vec<String>,
    pub(crate) expect: Verdict,
    pub(crate) rule: Option<String>,
}

/// The result of running one `[[test]]`.
#[derive(Debug, Clone)]
pub struct TestOutcome {
    /// The policy path used in messages.
    pub path: String,
    /// The test's `name`, or `test at line N`.
    pub name: String,
    /// 1-based line of the test's `[[test]]` header.
    pub line: usize,
    /// The expected verdict.
    pub expected: Verdict,
    /// The expected deciding (or, for a default deny, nearest) rule.
    pub expected_rule: Option<String>,
    /// What the policy decided.
    pub decision: Decision,
    /// True when the decision is what the test expects.
    pub passed: bool,
}

impl TestOutcome {
    /// Why the test failed, one line; `None` when it passed.
    pub fn failure(&self) -> Option<String> {
        if self.passed {
            return None;
        }
        let expected = match &self.expected_rule {
            Some(rule) => format!("{} by rule {rule:?}", self.expected),
            None => self.expected.to_string(),
        };
        Some(format!("expected {expected}, got {}", self.decision))
    }
}

/// `FILE:LINE: test "NAME": ok` or `... failed: expected ..., got ...`.
impl fmt::Display for TestOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: test {:?}", self.path, self.line, self.name)?;
        match self.failure() {
            None => f.write_str(": ok"),
            Some(why) => write!(f, " failed: {why}"),
        }
    }
}

pub(crate) fn run(policy: &crate::Policy, case: &TestCase) -> TestOutcome {
    let (program, args) = case
        .argv
        .split_first()
        .map_or(("", &[][..]), |(p, a)| (p.as_str(), a));
    let decision = policy.decide(&Request {
        caller: &case.caller,
        service: &case.service,
        program,
        args,
    });
    let rule_ok = match &case.rule {
        None => true,
        Some(want) => decision
            .deciding_or_nearest_rule()
            .is_some_and(|r| &*r.name == want),
    };
    TestOutcome {
        path: policy.path().to_owned(),
        name: case.name.clone(),
        line: case.line,
        expected: case.expect,
        expected_rule: case.rule.clone(),
        passed: decision.verdict == case.expect && rule_ok,
        decision,
    }
}
