//! Splitting a command line into argv without a shell.

/// Why a command line could not be split.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    /// A quote is not closed.
    #[error("cannot split command line: unterminated quote (hint: close every ' and \")")]
    Unterminated,
    /// Nothing but white space.
    #[error("command line is empty (hint: give a program, e.g. \"ss -tnp\")")]
    Empty,
    /// A NUL byte, which no argv can carry.
    #[error("command line contains a NUL byte (hint: remove it; an argument cannot carry NUL)")]
    Nul,
}

/// Split a command line into words with POSIX shell quoting rules (`'...'`,
/// `"..."`, `\`), and nothing else: no shell runs, nothing is expanded or
/// substituted. `;`, `|`, `&&`, `>`, `$(...)` and backticks stay literal text
/// inside the words, so they reach the program as argument text and a rule
/// must allow that exact text. An unquoted newline separates words like a
/// space; it never starts a second command.
///
/// ```
/// use coral_policy::split_command_line;
/// assert_eq!(split_command_line("ss -tnp; rm -rf /tmp/x").unwrap(), ["ss", "-tnp;", "rm", "-rf", "/tmp/x"]);
/// assert_eq!(split_command_line("psql -c 'EXPLAIN SELECT 1'").unwrap(), ["psql", "-c", "EXPLAIN SELECT 1"]);
/// assert_eq!(split_command_line("echo $(id)").unwrap(), ["echo", "$(id)"]);
/// ```
pub fn split_command_line(line: &str) -> Result<Vec<String>, SplitError> {
    if line.contains('\0') {
        return Err(SplitError::Nul);
    }
    let words = shell_words::split(line).map_err(|_| SplitError::Unterminated)?;
    if words.is_empty() {
        return Err(SplitError::Empty);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metacharacters_stay_literal() {
        let cases: &[(&str, &[&str])] = &[
            (
                "ss -tnp; rm -rf /tmp/x",
                &["ss", "-tnp;", "rm", "-rf", "/tmp/x"],
            ),
            (
                "ss -tnp ; rm -rf /tmp/x",
                &["ss", "-tnp", ";", "rm", "-rf", "/tmp/x"],
            ),
            ("ps aux | grep x", &["ps", "aux", "|", "grep", "x"]),
            ("true && id", &["true", "&&", "id"]),
            ("echo $(id)", &["echo", "$(id)"]),
            ("echo `id`", &["echo", "`id`"]),
            ("echo x > /tmp/y", &["echo", "x", ">", "/tmp/y"]),
            ("echo $HOME ~ *", &["echo", "$HOME", "~", "*"]),
            ("echo 'a; b' \"c | d\"", &["echo", "a; b", "c | d"]),
            ("echo 'line1\nline2'", &["echo", "line1\nline2"]),
            ("ss -tnp\nid", &["ss", "-tnp", "id"]),
            ("  ss   -t  ", &["ss", "-t"]),
            ("a\\ b", &["a b"]),
        ];
        for (line, want) in cases {
            assert_eq!(split_command_line(line).unwrap(), *want, "{line:?}");
        }
    }

    #[test]
    fn bad_lines_are_errors() {
        assert_eq!(split_command_line("echo 'x"), Err(SplitError::Unterminated));
        assert_eq!(
            split_command_line("echo \"x"),
            Err(SplitError::Unterminated)
        );
        // A trailing backslash stays literal text.
        assert_eq!(split_command_line("echo x\\").unwrap(), ["echo", "x\\"]);
        assert_eq!(split_command_line("   "), Err(SplitError::Empty));
        assert_eq!(split_command_line(""), Err(SplitError::Empty));
        assert_eq!(split_command_line("echo a\0b"), Err(SplitError::Nul));
    }

    #[test]
    fn errors_are_one_line() {
        for e in [SplitError::Unterminated, SplitError::Empty, SplitError::Nul] {
            assert!(!e.to_string().contains('\n'));
        }
    }
}
