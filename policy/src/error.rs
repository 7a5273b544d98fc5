//! Errors of loading and parsing a policy file.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

/// What kind of mistake a [`PolicyError::Invalid`] reports. Stable, so callers
/// and tests can match on it instead of on the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The text is not valid TOML.
    Syntax,
    /// A key this format does not know (typo, or a field of another table).
    UnknownKey,
    /// A required key is absent.
    MissingKey,
    /// A value has the wrong TOML type (e.g. a number where a string belongs).
    WrongType,
    /// A value has the right type but is not acceptable (empty name, bad duration...).
    BadValue,
    /// An argument matcher table names no known matcher.
    UnknownMatcher,
    /// A regex does not compile.
    BadRegex,
    /// A glob does not compile.
    BadGlob,
    /// A numeric range whose minimum is above its maximum.
    InvertedRange,
    /// A program, cwd or path pattern that is not absolute.
    RelativePath,
    /// Two rules share a name.
    DuplicateRule,
    /// A `[[test]]` names a rule that does not exist.
    UnknownRule,
}

/// An error from [`crate::Policy::load`] or [`crate::Policy::parse`].
///
/// `Display` is always a single line:
/// `FILE:LINE:COLUMN: message (hint: ...)`.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read policy {path}: {message} (hint: {hint})")]
    Read {
        /// The path as given.
        path: String,
        /// What went wrong, one line.
        message: String,
        /// What to do about it.
        hint: String,
        /// The underlying I/O error, when there is one.
        #[source]
        source: Option<Arc<std::io::Error>>,
    },
    /// The text is not a valid policy.
    #[error("{}", Located(self))]
    Invalid {
        /// The path used in messages.
        path: String,
        /// 1-based line.
        line: usize,
        /// 1-based column, in characters.
        column: usize,
        /// What kind of mistake.
        kind: ErrorKind,
        /// What is wrong, one line.
        message: String,
        /// What to do about it, one line, when we know.
        hint: Option<String>,
    },
}

struct Located<'a>(&'a PolicyError);

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let PolicyError::Invalid {
            path,
            line,
            column,
            message,
            hint,
            ..
        } = self.0
        {
            write!(f, "{path}:{line}:{column}: {message}")?;
            if let Some(hint) = hint {
                write!(f, " (hint: {hint})")?;
            }
        }
        Ok(())
    }
}

impl PolicyError {
    /// The kind of an `Invalid` error; `None` for a read error.
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            PolicyError::Invalid { kind, .. } => Some(*kind),
            PolicyError::Read { .. } => None,
        }
    }

    /// The 1-based line of an `Invalid` error.
    pub fn line(&self) -> Option<usize> {
        match self {
            PolicyError::Invalid { line, .. } => Some(*line),
            PolicyError::Read { .. } => None,
        }
    }

    /// The 1-based column of an `Invalid` error.
    pub fn column(&self) -> Option<usize> {
        match self {
            PolicyError::Invalid { column, .. } => Some(*column),
            PolicyError::Read { .. } => None,
        }
    }

    /// The hint, if any.
    pub fn hint(&self) -> Option<&str> {
        match self {
            PolicyError::Invalid { hint, .. } => hint.as_deref(),
            PolicyError::Read { hint, .. } => Some(hint),
        }
    }
}

/// Builds located errors for one source text.
pub(crate) struct Source<'t> {
    pub(crate) path: &'t str,
    pub(crate) text: &'t str,
}

impl Source<'_> {
    pub(crate) fn error(
        &self,
        span: Range<usize>,
        kind: ErrorKind,
        message: impl Into<String>,
        hint: Option<String>,
    ) -> PolicyError {
        let (line, column) = line_col(self.text, span.start);
        PolicyError::Invalid {
            path: one_line(self.path),
            line,
            column,
            kind,
            message: one_line(&message.into()),
            hint: hint.map(|h| one_line(&h)),
        }
    }

    pub(crate) fn line_of(&self, offset: usize) -> usize {
        line_col(self.text, offset).0
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// Collapse a message onto one line: library messages (regex) can span several.
pub(crate) fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for part in s
        .split(['\n', '\r'])
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(part.chars().map(|c| if c.is_control() { ' ' } else { c }));
    }
    out
}

/// The most similar candidate, for "did you mean" hints.
pub(crate) fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().take(64).collect();
    let b: Vec<char> = b.chars().take(64).collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 6), (2, 1));
        // 'é' is two bytes; the '=' after "bé " is the 4th character.
        assert_eq!(line_col(text, 10), (2, 4));
        assert_eq!(line_col(text, 999), (3, 1));
    }

    #[test]
    fn one_line_joins_lines_and_drops_controls() {
        assert_eq!(
            one_line("regex parse error:\n    (\n    ^\nerror: unclosed group"),
            "regex parse error: ( ^ error: unclosed group"
        );
        assert_eq!(one_line("a\tb"), "a b");
    }

    #[test]
    fn closest_suggests_typos_only() {
        assert_eq!(
            closest("servces", &["services", "callers"]),
            Some("services")
        );
        assert_eq!(closest("zzzzzz", &["services", "callers"]), None);
    }
}
