//! Argument matchers, compiled once when the policy is parsed.

use std::fmt;

use globset::{GlobBuilder, GlobMatcher};
use regex::{Regex, RegexBuilder};

use crate::path::is_normalized;

/// Upper bound on the compiled size of one regex, so a policy cannot make the
/// evaluator allocate without bound.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Matches one argument.
#[derive(Debug, Clone)]
pub(crate) enum ArgMatcher {
    /// The argument is exactly this text.
    Exact(String),
    /// Shell-style glob over the whole argument; `*` and `?` do not match `/`.
    Glob(Glob),
    /// Regex over the whole argument (always anchored at both ends).
    Regex { pattern: String, regex: Regex },
    /// A decimal integer in `min..=max`.
    Range { min: i64, max: i64 },
    /// Any of the inner matchers.
    AnyOf(Vec<ArgMatcher>),
    /// An absolute path already in normal form (no `.`, `..`, `//`) that
    /// matches the glob.
    Path(Glob),
}

/// A compiled glob with the text it came from.
#[derive(Debug, Clone)]
pub(crate) struct Glob {
    pub(crate) pattern: String,
    matcher: GlobMatcher,
}

impl Glob {
    pub(crate) fn new(pattern: &str) -> Result<Glob, globset::Error> {
        let glob = GlobBuilder::new(pattern)
            .literal_separator(true)
            .backslash_escape(true)
            .empty_alternates(true)
            .build()?;
        Ok(Glob {
            pattern: pattern.to_owned(),
            matcher: glob.compile_matcher(),
        })
    }

    pub(crate) fn is_match(&self, text: &str) -> bool {
        self.matcher.is_match(text)
    }

    /// A glob whose `*` also crosses `/` (function names such as
    /// `github.com/org/pkg.(*T).Serve` are not paths).
    pub(crate) fn new_name(pattern: &str) -> Result<Glob, globset::Error> {
        let glob = GlobBuilder::new(pattern)
            .backslash_escape(true)
            .empty_alternates(true)
            .build()?;
        Ok(Glob {
            pattern: pattern.to_owned(),
            matcher: glob.compile_matcher(),
        })
    }
}

/// True when the text has characters a glob treats specially.
pub(crate) fn has_glob_meta(text: &str) -> bool {
    text.contains(['*', '?', '[', ']', '{', '}', '\\'])
}

/// Compile a regex that must match the whole argument.
pub(crate) fn anchored_regex(pattern: &str) -> Result<Regex, regex::Error> {
    // Compile the pattern alone first, so that text like `a)|(b` cannot
    // break out of the anchoring group below.
    RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()?;
    RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
}

/// Parse a strictly decimal integer: an optional `-`, then digits, with no
/// leading zero (so `010` and `0x10`, which `strtol(.., 0)` reads as octal
/// and hex, never pass a range check), no `+`, no spaces.
pub(crate) fn parse_decimal(text: &str) -> Option<i64> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if digits.len() > 1 && digits.starts_with('0') {
        return None;
    }
    if text == "-0" {
        return None;
    }
    text.parse().ok()
}

impl ArgMatcher {
    pub(crate) fn matches(&self, arg: &str) -> bool {
        match self {
            ArgMatcher::Exact(want) => arg == want,
            ArgMatcher::Glob(glob) => glob.is_match(arg),
            ArgMatcher::Regex { regex, .. } => regex.is_match(arg),
            ArgMatcher::Range { min, max } => {
                parse_decimal(arg).is_some_and(|n| (*min..=*max).contains(&n))
            }
            ArgMatcher::AnyOf(inner) => inner.iter().any(|m| m.matches(arg)),
            ArgMatcher::Path(glob) => is_normalized(arg) && glob.is_match(arg),
        }
    }
}

impl fmt::Display for ArgMatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgMatcher::Exact(want) => write!(f, "exact {want:?}"),
            ArgMatcher::Glob(glob) => write!(f, "glob {:?}", glob.pattern),
            ArgMatcher::Regex { pattern, .. } => write!(f, "regex {pattern:?}"),
            ArgMatcher::Range { min, max } => write!(f, "integer in {min}..={max}"),
            ArgMatcher::AnyOf(inner) => {
                f.write_str("any of [")?;
                for (i, m) in inner.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{m}")?;
                }
                f.write_str("]")
            }
            ArgMatcher::Path(glob) => write!(f, "normal absolute path like {:?}", glob.pattern),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glob(p: &str) -> ArgMatcher {
        ArgMatcher::Glob(Glob::new(p).unwrap())
    }

    fn regex(p: &str) -> ArgMatcher {
        ArgMatcher::Regex {
            pattern: p.to_owned(),
            regex: anchored_regex(p).unwrap(),
        }
    }

    #[test]
    fn exact_matches_only_identical_text() {
        let m = ArgMatcher::Exact("-tnp".into());
        assert!(m.matches("-tnp"));
        for other in ["-tnp;", " -tnp", "-tnp ", "-TNP", "-tn", "", "-tnp\n"] {
            assert!(!m.matches(other), "{other:?}");
        }
    }

    #[test]
    fn glob_matches_whole_argument_and_not_across_slash() {
        let m = glob("*.log");
        assert!(m.matches("app.log"));
        assert!(m.matches(".log"));
        assert!(!m.matches("app.log.gz"));
        assert!(!m.matches("dir/app.log"));
        let m = glob("--format=*");
        assert!(m.matches("--format=json"));
        assert!(!m.matches("-x--format=json"));
        let m = glob("port-[0-9]");
        assert!(m.matches("port-7"));
        assert!(!m.matches("port-77"));
        let m = glob("{a,b}c?");
        assert!(m.matches("bcx"));
        assert!(!m.matches("ccx"));
        let m = glob(r"\*");
        assert!(m.matches("*"));
        assert!(!m.matches("x"));
    }

    #[test]
    fn regex_is_anchored_at_both_ends() {
        let m = regex("EXPLAIN [^;]*");
        assert!(m.matches("EXPLAIN SELECT 1"));
        assert!(!m.matches("x EXPLAIN SELECT 1"));
        assert!(!m.matches("EXPLAIN SELECT 1; DROP TABLE t"));
        // `.` does not match a newline.
        let m = regex("EXPLAIN .*");
        assert!(!m.matches("EXPLAIN x\nDROP TABLE t"));
        // Alternation stays inside the anchors.
        let m = regex("a|b");
        assert!(m.matches("a"));
        assert!(!m.matches("ab"));
        assert!(!m.matches("xa"));
    }

    #[test]
    fn regex_cannot_break_out_of_the_anchor_group() {
        assert!(anchored_regex("a)|(.*").is_err());
        assert!(anchored_regex("(").is_err());
    }

    #[test]
    fn range_needs_a_strict_decimal_in_bounds() {
        let m = ArgMatcher::Range { min: 1, max: 1000 };
        assert!(m.matches("1"));
        assert!(m.matches("1000"));
        assert!(m.matches("77"));
        for bad in [
            "0",
            "1001",
            "-1",
            "010",
            "0x10",
            "+5",
            " 5",
            "5 ",
            "5;",
            "",
            "1e3",
            "99999999999999999999",
        ] {
            assert!(!m.matches(bad), "{bad:?}");
        }
        let m = ArgMatcher::Range { min: -5, max: 5 };
        assert!(m.matches("-5"));
        assert!(m.matches("0"));
        assert!(!m.matches("-0"));
        assert!(!m.matches("-"));
    }

    #[test]
    fn parse_decimal_limits() {
        assert_eq!(parse_decimal("9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_decimal("-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_decimal("9223372036854775808"), None);
    }

    #[test]
    fn any_of_matches_if_one_matches() {
        let m = ArgMatcher::AnyOf(vec![
            ArgMatcher::Exact("-t".into()),
            glob("-[un]"),
            ArgMatcher::Range { min: 1, max: 3 },
        ]);
        for good in ["-t", "-u", "-n", "2"] {
            assert!(m.matches(good), "{good}");
        }
        for bad in ["-x", "4", "-t;"] {
            assert!(!m.matches(bad), "{bad}");
        }
        assert!(!ArgMatcher::AnyOf(vec![]).matches("x"));
    }

    #[test]
    fn path_requires_normal_absolute_form() {
        let m = ArgMatcher::Path(Glob::new("/var/log/*.log").unwrap());
        assert!(m.matches("/var/log/syslog.log"));
        for bad in [
            "/var/log/../../etc/shadow.log",
            "/var/log/./x.log",
            "/var/log//x.log",
            "var/log/x.log",
            "/var/log/sub/x.log",
            "/var/log/x.log/",
        ] {
            assert!(!m.matches(bad), "{bad}");
        }
        let m = ArgMatcher::Path(Glob::new("/var/log/**").unwrap());
        assert!(m.matches("/var/log/a/b.log"));
        assert!(!m.matches("/var/log/a/../../../etc/shadow"));
    }

    #[test]
    fn display_names_the_matcher() {
        assert_eq!(ArgMatcher::Exact("-c".into()).to_string(), "exact \"-c\"");
        assert_eq!(
            ArgMatcher::Range { min: 1, max: 9 }.to_string(),
            "integer in 1..=9"
        );
        assert_eq!(regex("a+").to_string(), "regex \"a+\"");
    }
}
