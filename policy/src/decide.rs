//! The policy, its index, and decisions.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::sync::Arc;
use std::time::Duration;

use crate::caller::{Caller, CallerPattern};
use crate::env::EnvAllowlist;
use crate::matcher::{ArgMatcher, Glob};
use crate::path::{PathError, basename, normalize_path};

/// Programs that are command interpreters: an allow rule may name one only
/// with `shell = true`.
pub(crate) const SHELLS: &[&str] = &[
    "sh", "bash", "dash", "zsh", "ksh", "ksh93", "mksh", "pdksh", "oksh", "ash", "csh", "tcsh",
    "fish", "rbash", "yash", "posh", "busybox", "toybox",
];

pub(crate) fn is_shell(program: &str) -> bool {
    SHELLS.contains(&basename(program))
}

/// One request to run a program.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Who asks. See [`Caller`] for where each field must come from.
    pub caller: &'a Caller,
    /// The service the command is run for (`coral exec <service> ...`).
    pub service: &'a str,
    /// The program as an absolute path, with symlinks already resolved by
    /// the caller (`realpath`). It is normalised lexically again here.
    pub program: &'a str,
    /// The arguments after the program (`argv[1..]`).
    pub args: &'a [String],
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// The command may run, under the decision's limits.
    Allow,
    /// The command must not run.
    Deny,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        })
    }
}

/// What an allowed command runs under. Every field has a value: a rule's own
/// setting, else the file's `[defaults]`, else the built-in default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Kill the process group after this long. Built-in default 30 s.
    pub timeout: Duration,
    /// Cut stdout+stderr after this many bytes. Built-in default 1 MiB.
    pub max_output_bytes: u64,
    /// The only environment variables the command gets. Built-in default: none.
    pub env: EnvAllowlist,
    /// Working directory, absolute and normal. Built-in default `/`.
    pub cwd: String,
    /// True when the rule runs a shell (`shell = true`). Built-in default false.
    pub shell: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(30),
            max_output_bytes: 1 << 20,
            env: EnvAllowlist::default(),
            cwd: "/".to_owned(),
            shell: false,
        }
    }
}

impl Limits {
    /// The environment for the command: only the allowlisted variables of
    /// `vars`. `PATH`, `LD_PRELOAD` and everything else not listed is dropped.
    pub fn filter_env<I, K, V>(&self, vars: I) -> std::collections::BTreeMap<String, String>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        self.env.filter(vars)
    }
}

impl fmt::Display for Limits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "timeout {}, max output {} bytes, env {}, cwd {}, shell {}",
            humantime::format_duration(self.timeout),
            self.max_output_bytes,
            self.env,
            self.cwd,
            if self.shell { "yes" } else { "no" }
        )
    }
}

/// A rule, by name and line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRef {
    /// The rule's `name`.
    pub name: Arc<str>,
    /// 1-based line of the rule's `[[rule]]` header.
    pub line: usize,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rule {:?} (line {})", self.name, self.line)
    }
}

/// Why the nearest rule did not match.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// The rule is for other services.
    Service {
        /// The requested service.
        service: String,
        /// The rule's service patterns.
        expected: Vec<String>,
    },
    /// The rule does not name this caller.
    Caller {
        /// The caller, as `kind:value` words.
        caller: String,
        /// The rule's caller patterns.
        expected: Vec<String>,
    },
    /// The program is a shell and the rule does not say `shell = true`.
    Shell,
    /// An argument does not match its matcher. `index` is the argv index (1 = first argument).
    Arg {
        /// argv index, 1-based.
        index: usize,
        /// The argument, escaped and shortened for display.
        value: String,
        /// The matcher.
        expected: String,
    },
    /// Fewer arguments than the rule's `args`.
    MissingArg {
        /// argv index, 1-based.
        index: usize,
        /// The matcher that had nothing to match.
        expected: String,
    },
    /// An argument beyond the rule's `args` where `rest = "none"`.
    ExtraArg {
        /// argv index, 1-based.
        index: usize,
        /// The argument, escaped and shortened.
        value: String,
    },
    /// A further argument does not match the rule's `rest` matcher.
    RestArg {
        /// argv index, 1-based.
        index: usize,
        /// The argument, escaped and shortened.
        value: String,
        /// The `rest` matcher.
        expected: String,
    },
    /// More further arguments than `max_rest`.
    TooManyArgs {
        /// How many further arguments there were.
        got: usize,
        /// The rule's `max_rest`.
        max: usize,
    },
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Service { service, expected } => {
                write!(f, "service {service} is not one of {expected:?}")
            }
            Failure::Caller { caller, expected } => {
                write!(f, "caller {caller} is not named in callers {expected:?}")
            }
            Failure::Shell => {
                f.write_str("the program is a shell and the rule does not set shell = true")
            }
            Failure::Arg {
                index,
                value,
                expected,
            } => write!(f, "argument {index} {value} does not match {expected}"),
            Failure::MissingArg { index, expected } => {
                write!(f, "argument {index} is missing (expected {expected})")
            }
            Failure::ExtraArg { index, value } => write!(
                f,
                "argument {index} {value} is one too many (the rule takes no further arguments)"
            ),
            Failure::RestArg {
                index,
                value,
                expected,
            } => write!(
                f,
                "argument {index} {value} does not match rest = {expected}"
            ),
            Failure::TooManyArgs { got, max } => {
                write!(f, "{got} further arguments; the rule allows at most {max}")
            }
        }
    }
}

/// The rule that came closest to allowing a denied request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NearMiss {
    /// The rule.
    pub rule: RuleRef,
    /// The first of its checks that failed.
    pub failure: Failure,
}

/// Why a decision came out as it did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// An allow rule matched (the decision's `rule`).
    Matched,
    /// A deny rule matched (the decision's `rule`).
    DenyRule,
    /// The program is not a usable absolute path.
    InvalidProgram(PathError),
    /// An argument contains a NUL byte. `index` is the argv index (1-based).
    NulInArgument {
        /// argv index, 1-based.
        index: usize,
    },
    /// No rule names this program: default deny.
    NoRuleForProgram,
    /// Rules name this program but none matched: default deny.
    NoRuleMatched {
        /// The rule that got furthest, and where it failed.
        nearest: NearMiss,
    },
}

/// The outcome of [`crate::Policy::decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Allow or deny.
    pub verdict: Verdict,
    /// The rule that decided: the allow or deny rule that matched. `None` for
    /// a default deny (see `reason` for the nearest rule).
    pub rule: Option<RuleRef>,
    /// Why.
    pub reason: Reason,
    /// What the command runs under; `Some` exactly when allowed.
    pub limits: Option<Arc<Limits>>,
    /// The program after lexical normalisation (as given if it was invalid).
    pub program: String,
}

impl Decision {
    /// True when the command may run.
    pub fn is_allowed(&self) -> bool {
        self.verdict == Verdict::Allow
    }

    /// The rule a `[[test]]` `rule = "..."` is compared with: the rule that
    /// decided, or for a default deny the nearest rule.
    pub fn deciding_or_nearest_rule(&self) -> Option<&RuleRef> {
        match (&self.rule, &self.reason) {
            (Some(rule), _) => Some(rule),
            (None, Reason::NoRuleMatched { nearest }) => Some(&nearest.rule),
            (None, _) => None,
        }
    }

    /// A multi-line explanation for people (`coral policy explain`).
    pub fn explain(&self) -> String {
        let mut out = String::new();
        let _ = self.write_explanation(&mut out);
        out
    }

    fn write_explanation(&self, out: &mut String) -> fmt::Result {
        let program = self.program.escape_debug();
        match &self.reason {
            Reason::Matched => {
                writeln!(out, "decision: allow")?;
                if let Some(rule) = &self.rule {
                    writeln!(out, "rule:     {rule} matched")?;
                }
                writeln!(out, "program:  {program}")?;
                writeln!(
                    out,
                    "why:      it is the first rule in the file whose program, services, callers and arguments all match"
                )?;
                if let Some(limits) = &self.limits {
                    writeln!(out, "limits:   {limits}")?;
                }
            }
            Reason::DenyRule => {
                writeln!(out, "decision: deny")?;
                if let Some(rule) = &self.rule {
                    writeln!(out, "rule:     {rule} (action = \"deny\") matched")?;
                }
                writeln!(out, "program:  {program}")?;
                writeln!(
                    out,
                    "why:      it is the first rule in the file that matches, and it denies"
                )?;
            }
            Reason::InvalidProgram(e) => {
                writeln!(out, "decision: deny")?;
                writeln!(out, "program:  {program}")?;
                writeln!(
                    out,
                    "why:      the program {e}; give its absolute path (symlinks resolved)"
                )?;
            }
            Reason::NulInArgument { index } => {
                writeln!(out, "decision: deny")?;
                writeln!(out, "program:  {program}")?;
                writeln!(out, "why:      argument {index} contains a NUL byte")?;
            }
            Reason::NoRuleForProgram => {
                writeln!(out, "decision: deny (default)")?;
                writeln!(out, "program:  {program}")?;
                writeln!(
                    out,
                    "why:      no rule names this program, and everything not allowed is denied"
                )?;
            }
            Reason::NoRuleMatched { nearest } => {
                writeln!(out, "decision: deny (default)")?;
                writeln!(out, "program:  {program}")?;
                writeln!(
                    out,
                    "why:      rules name this program but none matches, and everything not allowed is denied"
                )?;
                writeln!(out, "nearest:  {}", nearest.rule)?;
                writeln!(out, "failed:   {}", nearest.failure)?;
            }
        }
        Ok(())
    }
}

/// One line, for logs and the audit record.
impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.reason, &self.rule) {
            (Reason::Matched, Some(rule)) => write!(f, "allow by {rule}"),
            (Reason::DenyRule, Some(rule)) => write!(f, "deny by {rule}"),
            (Reason::InvalidProgram(e), _) => write!(f, "deny: program {:?}: {e}", self.program),
            (Reason::NulInArgument { index }, _) => {
                write!(f, "deny: argument {index} contains a NUL byte")
            }
            (Reason::NoRuleMatched { nearest }, _) => write!(
                f,
                "deny: no rule matched; nearest {}: {}",
                nearest.rule, nearest.failure
            ),
            _ => write!(f, "deny: no rule names program {:?}", self.program),
        }
    }
}

/// Which programs a rule applies to.
#[derive(Debug, Clone)]
pub(crate) enum ProgramPattern {
    Exact(String),
    Glob(Glob),
}

impl fmt::Display for ProgramPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProgramPattern::Exact(p) => f.write_str(p),
            ProgramPattern::Glob(g) => write!(f, "glob {}", g.pattern),
        }
    }
}

/// One service pattern: exact names are indexed, globs are not.
#[derive(Debug, Clone)]
pub(crate) enum ServicePattern {
    Exact(String),
    Glob(Glob),
}

impl ServicePattern {
    pub(crate) fn matches(&self, service: &str) -> bool {
        match self {
            ServicePattern::Exact(s) => s == service,
            ServicePattern::Glob(g) => g.is_match(service),
        }
    }
}

impl fmt::Display for ServicePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServicePattern::Exact(s) => f.write_str(s),
            ServicePattern::Glob(g) => f.write_str(&g.pattern),
        }
    }
}

/// What may follow the positional arguments.
#[derive(Debug, Clone)]
pub(crate) enum Rest {
    /// Nothing.
    None,
    /// Anything.
    Any,
    /// Each further argument must match.
    Each(ArgMatcher),
}

#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub(crate) name: Arc<str>,
    pub(crate) line: usize,
    pub(crate) action: Verdict,
    pub(crate) description: Option<String>,
    pub(crate) callers: Vec<CallerPattern>,
    /// Empty: every service.
    pub(crate) services: Vec<ServicePattern>,
    pub(crate) program: ProgramPattern,
    pub(crate) args: Vec<ArgMatcher>,
    pub(crate) rest: Rest,
    pub(crate) max_rest: Option<usize>,
    pub(crate) limits: Arc<Limits>,
}

/// Where a rule stopped matching; cheap to produce, turned into a
/// [`Failure`] only for the nearest rule of a denied request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Miss {
    Program,
    Service,
    Caller,
    Shell,
    /// 0-based index into `args`.
    Arg(usize),
    Missing(usize),
    Extra(usize),
    Rest(usize),
    TooMany,
}

impl Miss {
    /// How far the request got through the rule: higher is nearer.
    fn progress(self, rule: &Rule) -> usize {
        match self {
            Miss::Program => 0,
            Miss::Service => 1,
            Miss::Caller => 2,
            Miss::Shell => 3,
            Miss::Arg(i) | Miss::Missing(i) | Miss::Extra(i) | Miss::Rest(i) => 4 + i,
            Miss::TooMany => 4 + rule.args.len(),
        }
    }
}

/// Longest argument text shown in an explanation.
const SHOW_MAX: usize = 120;

fn show(value: &str) -> String {
    if value.chars().count() <= SHOW_MAX {
        format!("{value:?}")
    } else {
        let cut: String = value.chars().take(SHOW_MAX).collect();
        format!("{cut:?}...")
    }
}

impl Rule {
    fn program_matches(&self, program: &str) -> bool {
        match &self.program {
            ProgramPattern::Exact(p) => p == program,
            ProgramPattern::Glob(g) => g.is_match(program),
        }
    }

    /// Check everything; the program is already normal.
    fn check(&self, req: &Request<'_>, program: &str, program_is_shell: bool) -> Result<(), Miss> {
        if !self.program_matches(program) {
            return Err(Miss::Program);
        }
        if !self.services.is_empty() && !self.services.iter().any(|s| s.matches(req.service)) {
            return Err(Miss::Service);
        }
        if !self.callers.iter().any(|c| c.matches(req.caller)) {
            return Err(Miss::Caller);
        }
        if program_is_shell && self.action == Verdict::Allow && !self.limits.shell {
            return Err(Miss::Shell);
        }
        for (i, matcher) in self.args.iter().enumerate() {
            match req.args.get(i) {
                None => return Err(Miss::Missing(i)),
                Some(arg) if !matcher.matches(arg) => return Err(Miss::Arg(i)),
                Some(_) => {}
            }
        }
        let extra = req.args.get(self.args.len()..).unwrap_or_default();
        if let Some(max) = self.max_rest
            && extra.len() > max
        {
            return Err(Miss::TooMany);
        }
        match &self.rest {
            Rest::None if !extra.is_empty() => Err(Miss::Extra(self.args.len())),
            Rest::None | Rest::Any => Ok(()),
            Rest::Each(matcher) => match extra.iter().position(|a| !matcher.matches(a)) {
                Some(j) => Err(Miss::Rest(self.args.len() + j)),
                None => Ok(()),
            },
        }
    }

    fn rule_ref(&self) -> RuleRef {
        RuleRef {
            name: Arc::clone(&self.name),
            line: self.line,
        }
    }

    fn failure(&self, req: &Request<'_>, miss: Miss) -> Failure {
        let arg = |i: usize| req.args.get(i).map_or_else(String::new, |a| show(a));
        match miss {
            // Near misses are only computed among rules whose program matched.
            Miss::Program | Miss::Service => Failure::Service {
                service: show(req.service),
                expected: self.services.iter().map(|s| s.to_string()).collect(),
            },
            Miss::Caller => Failure::Caller {
                caller: req.caller.to_string(),
                expected: self.callers.iter().map(|c| c.to_string()).collect(),
            },
            Miss::Shell => Failure::Shell,
            Miss::Arg(i) => Failure::Arg {
                index: i + 1,
                value: arg(i),
                expected: self.args[i].to_string(),
            },
            Miss::Missing(i) => Failure::MissingArg {
                index: i + 1,
                expected: self.args[i].to_string(),
            },
            Miss::Extra(i) => Failure::ExtraArg {
                index: i + 1,
                value: arg(i),
            },
            Miss::Rest(i) => Failure::RestArg {
                index: i + 1,
                value: arg(i),
                expected: match &self.rest {
                    Rest::Each(m) => m.to_string(),
                    Rest::Any => "any".to_owned(),
                    Rest::None => "none".to_owned(),
                },
            },
            Miss::TooMany => Failure::TooManyArgs {
                got: req.args.len().saturating_sub(self.args.len()),
                max: self.max_rest.unwrap_or(0),
            },
        }
    }
}

/// Rules by program, then by service. Lists hold rule indices in file order.
#[derive(Debug, Default)]
pub(crate) struct Index {
    programs: HashMap<String, Bucket>,
    /// Rules whose program is a glob: checked for every request.
    glob_programs: Vec<usize>,
}

#[derive(Debug, Default)]
struct Bucket {
    /// Rules naming this exact service (a rule with several appears in each).
    by_service: HashMap<String, Vec<usize>>,
    /// Rules for every service, or with a service glob.
    other: Vec<usize>,
    /// Every rule of this program, for near misses.
    all: Vec<usize>,
}

impl Index {
    pub(crate) fn build(rules: &[Rule]) -> Index {
        let mut index = Index::default();
        for (i, rule) in rules.iter().enumerate() {
            let ProgramPattern::Exact(program) = &rule.program else {
                index.glob_programs.push(i);
                continue;
            };
            let bucket = index.programs.entry(program.clone()).or_default();
            bucket.all.push(i);
            let exact: Option<Vec<&str>> = rule
                .services
                .iter()
                .map(|s| match s {
                    ServicePattern::Exact(name) => Some(name.as_str()),
                    ServicePattern::Glob(_) => None,
                })
                .collect();
            match exact {
                Some(names) if !names.is_empty() => {
                    for name in names {
                        let list = bucket.by_service.entry(name.to_owned()).or_default();
                        if list.last() != Some(&i) {
                            list.push(i);
                        }
                    }
                }
                _ => bucket.other.push(i),
            }
        }
        index
    }
}

/// Validate what every path through `decide` needs; on success the program
/// in normal form.
fn precheck<'a>(req: &Request<'a>) -> Result<std::borrow::Cow<'a, str>, Box<Decision>> {
    let deny = |reason: Reason, program: String| {
        Box::new(Decision {
            verdict: Verdict::Deny,
            rule: None,
            reason,
            limits: None,
            program,
        })
    };
    let program = normalize_path(req.program)
        .map_err(|e| deny(Reason::InvalidProgram(e), req.program.to_owned()))?;
    if let Some(i) = req.args.iter().position(|a| a.contains('\0')) {
        return Err(deny(
            Reason::NulInArgument { index: i + 1 },
            program.into_owned(),
        ));
    }
    Ok(program)
}

fn matched(rule: &Rule, program: &str) -> Decision {
    match rule.action {
        Verdict::Allow => Decision {
            verdict: Verdict::Allow,
            rule: Some(rule.rule_ref()),
            reason: Reason::Matched,
            limits: Some(Arc::clone(&rule.limits)),
            program: program.to_owned(),
        },
        Verdict::Deny => Decision {
            verdict: Verdict::Deny,
            rule: Some(rule.rule_ref()),
            reason: Reason::DenyRule,
            limits: None,
            program: program.to_owned(),
        },
    }
}

/// Default deny, naming the candidate that got furthest.
fn default_deny<'r>(
    candidates: impl Iterator<Item = &'r Rule>,
    req: &Request<'_>,
    program: &str,
    program_is_shell: bool,
) -> Decision {
    let mut best: Option<(&Rule, Miss, usize)> = None;
    for rule in candidates {
        if let Err(miss) = rule.check(req, program, program_is_shell) {
            if miss == Miss::Program {
                continue;
            }
            let progress = miss.progress(rule);
            // Ties go to the rule earlier in the file.
            if best.is_none_or(|(b, _, p)| progress > p || (progress == p && rule.line < b.line)) {
                best = Some((rule, miss, progress));
            }
        }
    }
    let reason = match best {
        Some((rule, miss, _)) => Reason::NoRuleMatched {
            nearest: NearMiss {
                rule: rule.rule_ref(),
                failure: rule.failure(req, miss),
            },
        },
        None => Reason::NoRuleForProgram,
    };
    Decision {
        verdict: Verdict::Deny,
        rule: None,
        reason,
        limits: None,
        program: program.to_owned(),
    }
}

pub(crate) fn decide(rules: &[Rule], index: &Index, req: &Request<'_>) -> Decision {
    let program = match precheck(req) {
        Ok(p) => p,
        Err(d) => return *d,
    };
    let program_is_shell = is_shell(&program);
    let bucket = index.programs.get(program.as_ref());
    let lists: [&[usize]; 3] = [
        bucket
            .and_then(|b| b.by_service.get(req.service))
            .map_or(&[], Vec::as_slice),
        bucket.map_or(&[], |b| b.other.as_slice()),
        &index.glob_programs,
    ];
    // First match in file order: the smallest index that matches across
    // the (each sorted) lists.
    let mut best: Option<usize> = None;
    for list in lists {
        for &i in list {
            if best.is_some_and(|b| i >= b) {
                break;
            }
            if rules[i].check(req, &program, program_is_shell).is_ok() {
                best = Some(i);
                break;
            }
        }
    }
    if let Some(i) = best {
        return matched(&rules[i], &program);
    }
    let all = bucket.map_or(&[][..], |b| b.all.as_slice());
    let candidates = all.iter().chain(&index.glob_programs).map(|&i| &rules[i]);
    default_deny(candidates, req, &program, program_is_shell)
}

/// The same decision by checking every rule in order: the baseline the
/// benchmark and the tests compare the index with.
pub(crate) fn decide_linear(rules: &[Rule], req: &Request<'_>) -> Decision {
    let program = match precheck(req) {
        Ok(p) => p,
        Err(d) => return *d,
    };
    let program_is_shell = is_shell(&program);
    for rule in rules {
        if rule.check(req, &program, program_is_shell).is_ok() {
            return matched(rule, &program);
        }
    }
    default_deny(rules.iter(), req, &program, program_is_shell)
}
