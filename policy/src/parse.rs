//! From TOML text to a checked, compiled policy. Every error points at the
//! line and column of the offending key or value.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::caller::{Caller, CallerPattern};
use crate::decide::{Index, Limits, ProgramPattern, Rest, Rule, ServicePattern, Verdict, is_shell};
use crate::env::EnvAllowlist;
use crate::error::{ErrorKind, PolicyError, Source, closest};
use crate::matcher::{ArgMatcher, Glob, anchored_regex, has_glob_meta};
use crate::path::{is_normalized, normalize_path};
use crate::split::split_command_line;
use crate::testrun::TestCase;

type Result<T> = std::result::Result<T, PolicyError>;
type Value<'i> = Spanned<DeValue<'i>>;
/// Strings with their spans.
type Spans<'a> = Vec<(&'a str, Range<usize>)>;

const TOP_KEYS: &[&str] = &["version", "defaults", "rule", "test", "debug"];
const DEBUG_KEYS: &[&str] = &["name", "services", "functions", "args"];
const DEFAULT_KEYS: &[&str] = &["timeout", "max_output_bytes", "env", "cwd"];
const LIMIT_KEYS: &[&str] = &["timeout", "max_output_bytes", "env", "cwd", "shell"];
const RULE_KEYS: &[&str] = &[
    "name",
    "description",
    "action",
    "callers",
    "services",
    "program",
    "args",
    "rest",
    "max_rest",
    "timeout",
    "max_output_bytes",
    "env",
    "cwd",
    "shell",
];
const TEST_KEYS: &[&str] = &[
    "name", "caller", "service", "argv", "command", "expect", "rule",
];
const MATCHERS: &[&str] = &["exact", "glob", "regex", "range", "any_of", "path"];
const MATCHER_HINT: &str = "a matcher is a string (exact) or a table with one key: exact, glob, regex, range, any_of or path";
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

pub(crate) struct Parsed {
    pub(crate) rules: Vec<Rule>,
    pub(crate) index: Index,
    pub(crate) tests: Vec<TestCase>,
    pub(crate) debug: Vec<DebugRule>,
}

/// A `[[debug]]` rule (issue 12): which services' functions may be probed
/// live, and whether argument values may be captured.
#[derive(Debug)]
pub(crate) struct DebugRule {
    pub(crate) name: String,
    /// Empty: every service.
    pub(crate) services: Vec<ServicePattern>,
    /// Globs over the function's display name; at least one.
    pub(crate) functions: Vec<Glob>,
    pub(crate) args: bool,
}

fn debug_rule(src: &Source<'_>, item: &Value<'_>) -> Result<DebugRule> {
    let t = Table::of(src, item, "a [[debug]] rule".to_owned())?;
    t.check_keys(DEBUG_KEYS)?;
    let name = match t.str("name")? {
        Some((n, _)) if !n.is_empty() => n.to_owned(),
        _ => return Err(t.missing("name", "name the rule, e.g. name = \"api-handlers\"")),
    };
    let mut services = Vec::new();
    for (s, span) in t.str_list("services")?.unwrap_or_default() {
        if s.is_empty() {
            return Err(t.bad_value(span, "empty service name".to_owned(), None));
        }
        services.push(if has_glob_meta(s) {
            ServicePattern::Glob(Glob::new(s).map_err(|e| glob_error(src, span, &e))?)
        } else {
            ServicePattern::Exact(s.to_owned())
        });
    }
    let mut functions = Vec::new();
    for (f, span) in t.str_list("functions")?.unwrap_or_default() {
        functions.push(Glob::new_name(f).map_err(|e| glob_error(src, span, &e))?);
    }
    if functions.is_empty() {
        return Err(t.missing(
            "functions",
            "list the functions that may be probed, e.g. functions = [\"main.handle*\"] (\"*\" for all)",
        ));
    }
    Ok(DebugRule {
        name,
        services,
        functions,
        args: t.bool("args")?.unwrap_or(false),
    })
}

pub(crate) fn parse(path: &str, text: &str) -> Result<Parsed> {
    let src = Source { path, text };
    let doc = DeTable::parse(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        src.error(
            span,
            ErrorKind::Syntax,
            format!("invalid TOML: {}", e.message()),
            Some(
                "check quotes and brackets here; single quotes ('...') keep backslashes in regexes literal"
                    .to_owned(),
            ),
        )
    })?;
    let top = Table {
        src: &src,
        table: doc.get_ref(),
        span: doc.span(),
        what: "the top level".to_owned(),
    };
    top.check_keys(TOP_KEYS)?;
    if let Some(v) = top.get("version") {
        let (n, span) = top.int_of(v, "version")?;
        if n != 1 {
            return Err(src.error(
                span,
                ErrorKind::BadValue,
                format!("unknown policy version {n}"),
                Some("this build reads version = 1".to_owned()),
            ));
        }
    }
    let defaults = match top.get("defaults") {
        Some(v) => {
            let t = Table::of(&src, v, "[defaults]".to_owned())?;
            t.check_keys(DEFAULT_KEYS)?;
            limits(&t, &Limits::default())?
        }
        None => Limits::default(),
    };
    let mut rules = Vec::new();
    if let Some(v) = top.get("rule") {
        let mut names: HashMap<Arc<str>, usize> = HashMap::new();
        for item in top.array_of_tables(v, "rule")? {
            let rule = rule(&src, item, &defaults)?;
            if let Some(first) = names.insert(Arc::clone(&rule.name), rule.line) {
                let t = Table::of(&src, item, String::new())?;
                let span = t.get("name").map_or(item.span(), |v| v.span());
                return Err(src.error(
                    span,
                    ErrorKind::DuplicateRule,
                    format!("duplicate rule name {:?}", rule.name),
                    Some(format!(
                        "the first rule with this name is at line {first}; names must be unique"
                    )),
                ));
            }
            rules.push(rule);
        }
    }
    let mut tests = Vec::new();
    if let Some(v) = top.get("test") {
        for item in top.array_of_tables(v, "test")? {
            tests.push(test(&src, item, &rules)?);
        }
    }
    let mut debug = Vec::new();
    if let Some(v) = top.get("debug") {
        for item in top.array_of_tables(v, "debug")? {
            debug.push(debug_rule(&src, item)?);
        }
    }
    let index = Index::build(&rules);
    Ok(Parsed {
        rules,
        index,
        tests,
        debug,
    })
}

/// A TOML table with what it is called in messages.
struct Table<'a, 'i> {
    src: &'a Source<'a>,
    table: &'a DeTable<'i>,
    span: Range<usize>,
    what: String,
}

fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

impl<'a, 'i> Table<'a, 'i> {
    fn of(src: &'a Source<'a>, v: &'a Value<'i>, what: String) -> Result<Table<'a, 'i>> {
        match v.get_ref() {
            DeValue::Table(table) => Ok(Table {
                src,
                table,
                span: v.span(),
                what,
            }),
            other => Err(src.error(
                v.span(),
                ErrorKind::WrongType,
                format!("{what} must be a table, not {}", type_name(other)),
                None,
            )),
        }
    }

    fn check_keys(&self, allowed: &[&str]) -> Result<()> {
        for (key, _) in self.table.iter() {
            let name: &str = key.get_ref();
            if !allowed.contains(&name) {
                let hint = match closest(name, allowed) {
                    Some(c) => format!("did you mean `{c}`? known keys: {}", allowed.join(", ")),
                    None => format!("known keys: {}", allowed.join(", ")),
                };
                return Err(self.src.error(
                    key.span(),
                    ErrorKind::UnknownKey,
                    format!("unknown key `{name}` in {}", self.what),
                    Some(hint),
                ));
            }
        }
        Ok(())
    }

    fn get(&self, key: &str) -> Option<&'a Value<'i>> {
        self.table.get(key)
    }

    fn wrong_type(
        &self,
        v: &Value<'_>,
        key: &str,
        want: &str,
        hint: Option<String>,
    ) -> PolicyError {
        self.src.error(
            v.span(),
            ErrorKind::WrongType,
            format!(
                "`{key}` in {} must be {want}, not {}",
                self.what,
                type_name(v.get_ref())
            ),
            hint,
        )
    }

    fn bad_value(&self, span: Range<usize>, message: String, hint: Option<String>) -> PolicyError {
        self.src.error(span, ErrorKind::BadValue, message, hint)
    }

    fn missing(&self, key: &str, hint: &str) -> PolicyError {
        self.src.error(
            self.span.clone(),
            ErrorKind::MissingKey,
            format!("{} has no `{key}`", self.what),
            Some(hint.to_owned()),
        )
    }

    fn str_of(&self, v: &'a Value<'i>, key: &str) -> Result<(&'a str, Range<usize>)> {
        match v.get_ref() {
            DeValue::String(s) => Ok((s.as_ref(), v.span())),
            _ => Err(self.wrong_type(v, key, "a string", None)),
        }
    }

    fn str(&self, key: &str) -> Result<Option<(&'a str, Range<usize>)>> {
        self.get(key).map(|v| self.str_of(v, key)).transpose()
    }

    fn int_of(&self, v: &Value<'_>, key: &str) -> Result<(i64, Range<usize>)> {
        match v.get_ref() {
            DeValue::Integer(n) => i64::from_str_radix(n.as_str(), n.radix())
                .map(|n| (n, v.span()))
                .map_err(|_| self.bad_value(v.span(), format!("`{key}` is out of range"), None)),
            _ => Err(self.wrong_type(v, key, "an integer", None)),
        }
    }

    fn non_negative(&self, key: &str) -> Result<Option<u64>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let (n, span) = self.int_of(v, key)?;
        u64::try_from(n)
            .map(Some)
            .map_err(|_| self.bad_value(span, format!("`{key}` must not be negative"), None))
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.get_ref() {
                DeValue::Boolean(b) => Ok(Some(*b)),
                _ => Err(self.wrong_type(v, key, "true or false", None)),
            },
        }
    }

    /// A string or an array of strings.
    fn str_list(&self, key: &str) -> Result<Option<Spans<'a>>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        match v.get_ref() {
            DeValue::String(s) => Ok(Some(vec![(s.as_ref(), v.span())])),
            DeValue::Array(items) => items
                .iter()
                .map(|item| match item.get_ref() {
                    DeValue::String(s) => Ok((s.as_ref(), item.span())),
                    _ => Err(self.wrong_type(item, key, "an array of strings", None)),
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            _ => Err(self.wrong_type(v, key, "an array of strings", None)),
        }
    }

    fn array_of_tables(&self, v: &'a Value<'i>, key: &str) -> Result<&'a [Value<'i>]> {
        match v.get_ref() {
            DeValue::Array(items) => Ok(items.as_ref()),
            _ => Err(self.wrong_type(
                v,
                key,
                "an array of tables",
                Some(format!(
                    "write [[{key}]] (double brackets) before each entry"
                )),
            )),
        }
    }
}

/// Read the limit keys present in `t`, falling back to `base`.
fn limits(t: &Table<'_, '_>, base: &Limits) -> Result<Limits> {
    let mut out = base.clone();
    if let Some((text, span)) = t.str("timeout")? {
        let d = humantime::parse_duration(text).map_err(|e| {
            t.bad_value(
                span.clone(),
                format!("bad timeout {text:?}: {e}"),
                Some("write a duration such as \"10s\", \"2m\" or \"1h 30m\"".to_owned()),
            )
        })?;
        if d.is_zero() || d > MAX_TIMEOUT {
            return Err(t.bad_value(
                span,
                format!("timeout {text:?} is out of range"),
                Some("use a duration above 0 and at most 24h".to_owned()),
            ));
        }
        out.timeout = d;
    }
    if let Some(n) = t.non_negative("max_output_bytes")? {
        out.max_output_bytes = n;
    }
    if let Some(entries) = t.str_list("env")? {
        for (entry, span) in &entries {
            EnvAllowlist::new(&[entry]).map_err(|e| {
                t.bad_value(
                    span.clone(),
                    format!("bad env entry: {e}"),
                    Some(
                        "list variable names such as \"LANG\" or prefixes such as \"LC_*\""
                            .to_owned(),
                    ),
                )
            })?;
        }
        let names: Vec<&str> = entries.iter().map(|(e, _)| *e).collect();
        out.env = EnvAllowlist::new(&names).unwrap_or_default();
    }
    if let Some((text, span)) = t.str("cwd")? {
        out.cwd = absolute(t, text, span, "cwd")?;
    }
    if let Some(shell) = t.bool("shell")? {
        out.shell = shell;
    }
    Ok(out)
}

fn absolute(t: &Table<'_, '_>, text: &str, span: Range<usize>, key: &str) -> Result<String> {
    normalize_path(text).map(|p| p.into_owned()).map_err(|e| {
        t.src.error(
            span,
            ErrorKind::RelativePath,
            format!("`{key}` {text:?}: {e}"),
            Some("give an absolute path starting with /".to_owned()),
        )
    })
}

fn rule(src: &Source<'_>, item: &Value<'_>, defaults: &Limits) -> Result<Rule> {
    let line = src.line_of(item.span().start);
    let mut t = Table::of(src, item, format!("the rule at line {line}"))?;
    let (name, name_span) = t.str("name")?.ok_or_else(|| {
        t.missing(
            "name",
            "give every rule a unique name, e.g. name = \"ss-sockets\"",
        )
    })?;
    if name.trim().is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
        return Err(t.bad_value(
            name_span,
            format!("rule name {name:?} is not usable"),
            Some("use 1 to 128 printable characters".to_owned()),
        ));
    }
    t.what = format!("rule {name:?}");
    t.check_keys(RULE_KEYS)?;

    let action = match t.str("action")? {
        None | Some(("allow", _)) => Verdict::Allow,
        Some(("deny", _)) => Verdict::Deny,
        Some((other, span)) => {
            return Err(t.bad_value(
                span,
                format!("unknown action {other:?}"),
                Some("action is \"allow\" (the default) or \"deny\"".to_owned()),
            ));
        }
    };
    let description = t.str("description")?.map(|(d, _)| d.to_owned());

    let caller_list = t.str_list("callers")?.ok_or_else(|| {
        t.missing(
            "callers",
            "name who may use the rule, e.g. callers = [\"role:oncall\", \"uid:1000\"]; \"*\" is everyone",
        )
    })?;
    if caller_list.is_empty() {
        return Err(t.bad_value(
            t.get("callers").map_or(t.span.clone(), |v| v.span()),
            "`callers` is empty, so the rule can never match".to_owned(),
            Some("name at least one caller, e.g. \"role:oncall\"".to_owned()),
        ));
    }
    let mut callers = Vec::with_capacity(caller_list.len());
    for (spec, span) in caller_list {
        callers.push(CallerPattern::parse(spec).map_err(|(message, hint)| {
            src.error(span, ErrorKind::BadValue, message, Some(hint))
        })?);
    }

    let mut services = Vec::new();
    for (s, span) in t.str_list("services")?.unwrap_or_default() {
        if s.is_empty() {
            return Err(t.bad_value(span, "empty service name".to_owned(), None));
        }
        services.push(if has_glob_meta(s) {
            ServicePattern::Glob(Glob::new(s).map_err(|e| glob_error(src, span, &e))?)
        } else {
            ServicePattern::Exact(s.to_owned())
        });
    }

    let program_value = t.get("program").ok_or_else(|| {
        t.missing(
            "program",
            "give the program's absolute path, e.g. program = \"/usr/bin/ss\"",
        )
    })?;
    let program = program(&t, program_value)?;

    let args = match t.get("args") {
        None => Vec::new(),
        Some(v) => match v.get_ref() {
            DeValue::Array(items) => items
                .iter()
                .map(|item| matcher(src, item))
                .collect::<Result<Vec<_>>>()?,
            _ => {
                return Err(t.wrong_type(
                    v,
                    "args",
                    "an array of matchers",
                    Some(MATCHER_HINT.to_owned()),
                ));
            }
        },
    };
    let rest = match t.get("rest") {
        None => Rest::None,
        Some(v) => match v.get_ref() {
            DeValue::String(s) if s == "none" => Rest::None,
            DeValue::String(s) if s == "any" => Rest::Any,
            DeValue::String(s) => {
                return Err(t.bad_value(
                    v.span(),
                    format!("unknown rest {s:?}"),
                    Some("rest is \"none\" (default), \"any\", or a matcher table such as { glob = \"*\" }".to_owned()),
                ));
            }
            DeValue::Table(_) => Rest::Each(matcher(src, v)?),
            _ => {
                return Err(t.wrong_type(v, "rest", "\"none\", \"any\" or a matcher table", None));
            }
        },
    };
    let max_rest = t
        .non_negative("max_rest")?
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX));

    let limits = limits(&t, defaults)?;
    if action == Verdict::Deny {
        if let Some((key, _)) = t
            .table
            .iter()
            .find(|(k, _)| LIMIT_KEYS.contains(&k.get_ref().as_ref()))
        {
            return Err(t.bad_value(
                key.span(),
                format!("`{}` has no effect on a deny rule", key.get_ref()),
                Some("remove it, or make the rule action = \"allow\"".to_owned()),
            ));
        }
    } else if let ProgramPattern::Exact(p) = &program
        && is_shell(p)
        && !limits.shell
    {
        return Err(t.bad_value(
            program_value.span(),
            format!("{p} is a shell, and the rule does not set shell = true"),
            Some(
                "add shell = true if this rule is meant to run a shell, and restrict its arguments"
                    .to_owned(),
            ),
        ));
    }

    Ok(Rule {
        name: Arc::from(name),
        line,
        action,
        description,
        callers,
        services,
        program,
        args,
        rest,
        max_rest,
        limits: Arc::new(limits),
    })
}

fn glob_error(src: &Source<'_>, span: Range<usize>, e: &globset::Error) -> PolicyError {
    src.error(
        span,
        ErrorKind::BadGlob,
        format!("bad glob: {}", e.kind()),
        Some("globs use *, ?, [abc] and {a,b}; escape a literal one with \\".to_owned()),
    )
}

fn program(t: &Table<'_, '_>, v: &Value<'_>) -> Result<ProgramPattern> {
    let src = t.src;
    match v.get_ref() {
        DeValue::String(text) => {
            if has_glob_meta(text) {
                return Err(t.bad_value(
                    v.span(),
                    format!("program {text:?} has glob characters"),
                    Some(format!(
                        "for a pattern write program = {{ glob = {text:?} }}"
                    )),
                ));
            }
            Ok(ProgramPattern::Exact(absolute(
                t,
                text,
                v.span(),
                "program",
            )?))
        }
        DeValue::Table(table) => {
            let inner = Table {
                src,
                table,
                span: v.span(),
                what: format!("the program of {}", t.what),
            };
            inner.check_keys(&["glob"])?;
            let (pattern, span) = inner.str("glob")?.ok_or_else(|| {
                inner.missing(
                    "glob",
                    "write program = { glob = \"/usr/lib/postgresql/*/bin/psql\" }",
                )
            })?;
            if !pattern.starts_with('/') {
                return Err(src.error(
                    span,
                    ErrorKind::RelativePath,
                    format!("program glob {pattern:?} is not absolute"),
                    Some("start it with /".to_owned()),
                ));
            }
            if !is_normalized(pattern) {
                return Err(src.error(
                    span,
                    ErrorKind::BadValue,
                    format!("program glob {pattern:?} has `.`, `..`, `//` or a trailing `/`"),
                    Some("write the pattern in normal form".to_owned()),
                ));
            }
            Ok(ProgramPattern::Glob(
                Glob::new(pattern).map_err(|e| glob_error(src, span, &e))?,
            ))
        }
        other => Err(src.error(
            v.span(),
            ErrorKind::WrongType,
            format!(
                "`program` in {} must be a path string or {{ glob = ... }}, not {}",
                t.what,
                type_name(other)
            ),
            None,
        )),
    }
}

fn matcher(src: &Source<'_>, v: &Value<'_>) -> Result<ArgMatcher> {
    let table = match v.get_ref() {
        DeValue::String(s) => return Ok(ArgMatcher::Exact(s.to_string())),
        DeValue::Table(table) => table,
        DeValue::Integer(n) => {
            return Err(src.error(
                v.span(),
                ErrorKind::WrongType,
                format!("matcher {n} is a number"),
                Some(format!(
                    "write \"{n}\" for exactly that text, or {{ range = [{n}, {n}] }}"
                )),
            ));
        }
        other => {
            return Err(src.error(
                v.span(),
                ErrorKind::WrongType,
                format!("a matcher cannot be {}", type_name(other)),
                Some(MATCHER_HINT.to_owned()),
            ));
        }
    };
    let mut entries = table.iter();
    let (Some((key, value)), None) = (entries.next(), entries.next()) else {
        return Err(src.error(
            v.span(),
            ErrorKind::UnknownMatcher,
            format!(
                "a matcher table has exactly one key, this one has {}",
                table.len()
            ),
            Some(MATCHER_HINT.to_owned()),
        ));
    };
    let kind: &str = key.get_ref();
    let string = |what: &str| -> Result<&str> {
        match value.get_ref() {
            DeValue::String(s) => Ok(s.as_ref()),
            other => Err(src.error(
                value.span(),
                ErrorKind::WrongType,
                format!("`{what}` takes a string, not {}", type_name(other)),
                None,
            )),
        }
    };
    match kind {
        "exact" => Ok(ArgMatcher::Exact(string(kind)?.to_owned())),
        "glob" => Ok(ArgMatcher::Glob(
            Glob::new(string(kind)?).map_err(|e| glob_error(src, value.span(), &e))?,
        )),
        "path" => {
            let pattern = string(kind)?;
            if !pattern.starts_with('/') {
                return Err(src.error(
                    value.span(),
                    ErrorKind::RelativePath,
                    format!("path pattern {pattern:?} is not absolute"),
                    Some("start it with /".to_owned()),
                ));
            }
            if !is_normalized(pattern) {
                return Err(src.error(
                    value.span(),
                    ErrorKind::BadValue,
                    format!("path pattern {pattern:?} has `.`, `..`, `//` or a trailing `/`"),
                    Some("write the pattern in normal form".to_owned()),
                ));
            }
            Ok(ArgMatcher::Path(
                Glob::new(pattern).map_err(|e| glob_error(src, value.span(), &e))?,
            ))
        }
        "regex" => {
            let pattern = string(kind)?;
            let regex = anchored_regex(pattern).map_err(|e| {
                src.error(
                    value.span(),
                    ErrorKind::BadRegex,
                    format!("bad regex {pattern:?}: {e}"),
                    Some("regexes use Rust syntax and are anchored at both ends; write them in single quotes".to_owned()),
                )
            })?;
            Ok(ArgMatcher::Regex {
                pattern: pattern.to_owned(),
                regex,
            })
        }
        "range" => {
            let bounds = match value.get_ref() {
                DeValue::Array(items) if items.len() == 2 => items,
                _ => {
                    return Err(src.error(
                        value.span(),
                        ErrorKind::WrongType,
                        "`range` takes two integers, [min, max]".to_owned(),
                        Some("e.g. { range = [1, 1000] }; both ends are included".to_owned()),
                    ));
                }
            };
            let int = |v: &Value<'_>| -> Result<i64> {
                match v.get_ref() {
                    DeValue::Integer(n) => {
                        i64::from_str_radix(n.as_str(), n.radix()).map_err(|_| {
                            src.error(
                                v.span(),
                                ErrorKind::BadValue,
                                "range bound is out of range".to_owned(),
                                None,
                            )
                        })
                    }
                    other => Err(src.error(
                        v.span(),
                        ErrorKind::WrongType,
                        format!("range bound must be an integer, not {}", type_name(other)),
                        None,
                    )),
                }
            };
            let (min, max) = (int(&bounds[0])?, int(&bounds[1])?);
            if min > max {
                return Err(src.error(
                    value.span(),
                    ErrorKind::InvertedRange,
                    format!("range [{min}, {max}] is inverted"),
                    Some(format!(
                        "write [{max}, {min}]: the smaller bound comes first"
                    )),
                ));
            }
            Ok(ArgMatcher::Range { min, max })
        }
        "any_of" => match value.get_ref() {
            DeValue::Array(items) if !items.is_empty() => Ok(ArgMatcher::AnyOf(
                items
                    .iter()
                    .map(|item| matcher(src, item))
                    .collect::<Result<Vec<_>>>()?,
            )),
            _ => Err(src.error(
                value.span(),
                ErrorKind::WrongType,
                "`any_of` takes a non-empty array of matchers".to_owned(),
                Some(MATCHER_HINT.to_owned()),
            )),
        },
        other => {
            let hint = match closest(other, MATCHERS) {
                Some(c) => format!("did you mean `{c}`? {MATCHER_HINT}"),
                None => MATCHER_HINT.to_owned(),
            };
            Err(src.error(
                key.span(),
                ErrorKind::UnknownMatcher,
                format!("unknown matcher `{other}`"),
                Some(hint),
            ))
        }
    }
}

fn test(src: &Source<'_>, item: &Value<'_>, rules: &[Rule]) -> Result<TestCase> {
    let line = src.line_of(item.span().start);
    let mut t = Table::of(src, item, format!("the test at line {line}"))?;
    let name = t
        .str("name")?
        .map_or_else(|| format!("test at line {line}"), |(n, _)| n.to_owned());
    t.what = format!("test {name:?}");
    t.check_keys(TEST_KEYS)?;

    let specs = t.str_list("caller")?.unwrap_or_default();
    let spec_words: Vec<&str> = specs.iter().map(|(s, _)| *s).collect();
    let caller = Caller::from_specs(&spec_words).map_err(|e| {
        t.bad_value(
            t.get("caller").map_or(t.span.clone(), |v| v.span()),
            e,
            Some("e.g. caller = [\"role:oncall\", \"uid:1000\"]".to_owned()),
        )
    })?;
    let service = t.str("service")?.map_or("", |(s, _)| s).to_owned();

    let argv = match (t.get("argv"), t.str("command")?) {
        (Some(_), Some((_, span))) => {
            return Err(t.bad_value(
                span,
                "a test has `argv` or `command`, not both".to_owned(),
                None,
            ));
        }
        (Some(v), None) => {
            let words = t.str_list("argv")?.unwrap_or_default();
            if words.is_empty() {
                return Err(t.bad_value(
                    v.span(),
                    "`argv` is empty".to_owned(),
                    Some("argv[0] is the program's absolute path".to_owned()),
                ));
            }
            words.into_iter().map(|(w, _)| w.to_owned()).collect()
        }
        (None, Some((line_text, span))) => {
            split_command_line(line_text).map_err(|e| t.bad_value(span, e.to_string(), None))?
        }
        (None, None) => {
            return Err(t.missing(
                "argv",
                "give argv = [\"/usr/bin/ss\", \"-tnp\"] or command = \"/usr/bin/ss -tnp\"",
            ));
        }
    };

    let expect = match t.str("expect")? {
        Some(("allow", _)) => Verdict::Allow,
        Some(("deny", _)) => Verdict::Deny,
        Some((other, span)) => {
            return Err(t.bad_value(
                span,
                format!("unknown expectation {other:?}"),
                Some("expect is \"allow\" or \"deny\"".to_owned()),
            ));
        }
        None => return Err(t.missing("expect", "add expect = \"allow\" or expect = \"deny\"")),
    };
    let rule = match t.str("rule")? {
        None => None,
        Some((r, span)) => {
            if !rules.iter().any(|rule| &*rule.name == r) {
                let names: Vec<&str> = rules.iter().map(|r| &*r.name).collect();
                return Err(src.error(
                    span,
                    ErrorKind::UnknownRule,
                    format!("test names rule {r:?}, which does not exist"),
                    Some(match closest(r, &names) {
                        Some(c) => format!("did you mean {c:?}?"),
                        None => "use the `name` of a [[rule]]".to_owned(),
                    }),
                ));
            }
            Some(r.to_owned())
        }
    };
    Ok(TestCase {
        name,
        line,
        caller,
        service,
        argv,
        expect,
        rule,
    })
}
