//! Coral's exec policy: which commands `coral exec` may run on a host.
//!
//! The policy is a TOML file the host's admin owns (format: `docs/policy.md`).
//! [`Policy::parse`] checks and compiles it (regexes and globs once, rules
//! indexed by program and service); [`Policy::decide`] is a pure function from
//! (policy, [`Request`]) to a [`Decision`]: allow with [`Limits`], or deny, and
//! in both cases which rule decided and why. Everything not allowed is denied.
//!
//! The crate does no I/O except [`Policy::load`], which reads the file, and it
//! spawns nothing. Running the command, the audit log and reloading are the
//! agent's job.
//!
//! ```
//! use coral_policy::{Caller, Policy, Request};
//!
//! let policy = Policy::parse("policy.toml", r#"
//!     [[rule]]
//!     name = "ss"
//!     callers = ["role:oncall"]
//!     program = "/usr/bin/ss"
//!     args = ["-tnp"]
//! "#).unwrap();
//! let caller = Caller::from_specs(&["role:oncall"]).unwrap();
//! let args = vec!["-tnp".to_string()];
//! let decision = policy.decide(&Request { caller: &caller, service: "api", program: "/usr/bin/ss", args: &args });
//! assert!(decision.is_allowed());
//! let args = vec!["-tnp;".to_string(), "id".to_string()];
//! let decision = policy.decide(&Request { caller: &caller, service: "api", program: "/usr/bin/ss", args: &args });
//! assert!(!decision.is_allowed());
//! ```

mod caller;
mod decide;
mod env;
mod error;
mod matcher;
mod parse;
mod path;
mod split;
mod testrun;

use std::io::Read as _;
use std::path::Path;
use std::sync::Arc;

pub use caller::Caller;
pub use decide::{Decision, Failure, Limits, NearMiss, Reason, Request, RuleRef, Verdict};
pub use env::EnvAllowlist;
pub use error::{ErrorKind, PolicyError};
pub use path::{PathError, normalize_path};
pub use split::{SplitError, split_command_line};
pub use testrun::TestOutcome;

/// The default location of the policy file.
pub const DEFAULT_PATH: &str = "/etc/coral/policy.toml";

/// Largest policy file [`Policy::load`] reads.
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// A parsed, checked and indexed policy. Cheap to share (`Arc<Policy>`);
/// `Send + Sync`.
#[derive(Debug)]
pub struct Policy {
    path: String,
    rules: Vec<decide::Rule>,
    index: decide::Index,
    tests: Vec<testrun::TestCase>,
    debug: Vec<parse::DebugRule>,
}

/// What the policy says about probing one function live (issue 12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DebugDecision {
    /// Allowed by the named `[[debug]]` rule; `args`: argument values may
    /// be captured.
    Allowed { rule: String, args: bool },
    /// No `[[debug]]` rule matches (the default: nothing may be probed).
    Denied,
}

/// A rule as listed by [`Policy::rules`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSummary {
    /// The rule's `name`.
    pub name: Arc<str>,
    /// 1-based line of its `[[rule]]` header.
    pub line: usize,
    /// `allow` or `deny`.
    pub action: Verdict,
    /// The program path, or `glob PATTERN`.
    pub program: String,
    /// The rule's `description`, if any.
    pub description: Option<String>,
}

impl Policy {
    /// Parse and check policy text. `path` is only used in messages.
    /// An empty text is a valid policy that denies everything.
    pub fn parse(path: &str, text: &str) -> Result<Policy, PolicyError> {
        let parsed = parse::parse(path, text)?;
        Ok(Policy {
            path: path.to_owned(),
            rules: parsed.rules,
            index: parsed.index,
            tests: parsed.tests,
            debug: parsed.debug,
        })
    }

    /// Read and parse a policy file (at most [`MAX_FILE_BYTES`]). The only
    /// I/O in this crate.
    pub fn load(path: impl AsRef<Path>) -> Result<Policy, PolicyError> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let read_error = |e: std::io::Error| {
            let hint = match e.kind() {
                std::io::ErrorKind::NotFound => {
                    format!(
                        "create it (see docs/policy.md), or pass another file; the default is {DEFAULT_PATH}"
                    )
                }
                std::io::ErrorKind::PermissionDenied => {
                    "make it readable by the user the agent runs as".to_owned()
                }
                std::io::ErrorKind::InvalidData => "save the file as UTF-8".to_owned(),
                _ => "check the path".to_owned(),
            };
            PolicyError::Read {
                path: shown.clone(),
                message: error::one_line(&e.to_string()),
                hint,
                source: Some(Arc::new(e)),
            }
        };
        let file = std::fs::File::open(path).map_err(read_error)?;
        let mut text = String::new();
        file.take(MAX_FILE_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(read_error)?;
        if text.len() as u64 > MAX_FILE_BYTES {
            return Err(PolicyError::Read {
                path: shown,
                message: format!("file is larger than {MAX_FILE_BYTES} bytes"),
                hint: "a policy is a short text file; check the path".to_owned(),
                source: None,
            });
        }
        Policy::parse(&shown, &text)
    }

    /// Decide a request: the first rule in file order whose program,
    /// services, callers and arguments all match decides (allow, or deny for
    /// `action = "deny"`). No match: deny, naming the nearest rule.
    /// Pure and allocation-light; safe to call from many threads.
    pub fn decide(&self, request: &Request<'_>) -> Decision {
        decide::decide(&self.rules, &self.index, request)
    }

    /// The same decision by scanning every rule in order, without the index.
    /// For the benchmark's baseline and for tests; use [`Policy::decide`].
    #[doc(hidden)]
    pub fn decide_linear_scan(&self, request: &Request<'_>) -> Decision {
        decide::decide_linear(&self.rules, request)
    }

    /// May `function` (its display name) of `service` be probed live? The
    /// first `[[debug]]` rule, in file order, whose services and functions
    /// match decides; none matching denies.
    pub fn decide_debug(&self, service: &str, function: &str) -> DebugDecision {
        for r in &self.debug {
            let service_ok = r.services.is_empty() || r.services.iter().any(|p| p.matches(service));
            if service_ok && r.functions.iter().any(|g| g.is_match(function)) {
                return DebugDecision::Allowed {
                    rule: r.name.clone(),
                    args: r.args,
                };
            }
        }
        DebugDecision::Denied
    }

    /// Run the file's `[[test]]` entries, in file order.
    pub fn run_tests(&self) -> Vec<TestOutcome> {
        self.tests.iter().map(|t| testrun::run(self, t)).collect()
    }

    /// The path used in messages.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Number of rules.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// Number of `[[test]]` entries.
    pub fn test_count(&self) -> usize {
        self.tests.len()
    }

    /// The rules in file order.
    pub fn rules(&self) -> Vec<RuleSummary> {
        self.rules
            .iter()
            .map(|r| RuleSummary {
                name: Arc::clone(&r.name),
                line: r.line,
                action: r.action,
                program: r.program.to_string(),
                description: r.description.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod debug_tests {
    use super::*;

    #[test]
    fn debug_rules_decide_in_file_order_and_deny_by_default() {
        let p = Policy::parse(
            "t.toml",
            r#"
[[debug]]
name = "api-handlers"
services = ["api"]
functions = ["main.handle*", "main.(*Server).*"]
args = true

[[debug]]
name = "anything-else-no-args"
services = ["web-*"]
functions = ["*"]
"#,
        )
        .unwrap();
        assert_eq!(
            p.decide_debug("api", "main.handleCheckout"),
            DebugDecision::Allowed {
                rule: "api-handlers".into(),
                args: true
            }
        );
        assert_eq!(
            p.decide_debug("api", "main.(*Server).Serve"),
            DebugDecision::Allowed {
                rule: "api-handlers".into(),
                args: true
            }
        );
        assert_eq!(
            p.decide_debug("api", "runtime.mallocgc"),
            DebugDecision::Denied
        );
        assert_eq!(
            p.decide_debug("web-1", "github.com/x/y.F"),
            DebugDecision::Allowed {
                rule: "anything-else-no-args".into(),
                args: false
            }
        );
        assert_eq!(p.decide_debug("db", "main.main"), DebugDecision::Denied);
        assert_eq!(
            Policy::parse("e.toml", "")
                .unwrap()
                .decide_debug("api", "main.x"),
            DebugDecision::Denied
        );
        let e = Policy::parse("b.toml", "[[debug]]\nname = \"x\"\n").unwrap_err();
        assert!(e.to_string().contains("functions"), "{e}");
        let e = Policy::parse(
            "b.toml",
            "[[debug]]\nname = \"x\"\nfunctions = [\"*\"]\nbogus = 1\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }
}
