//! Lexical path normalisation. Pure: it never looks at the file system, so it
//! cannot resolve symlinks. The caller resolves symlinks (`realpath`) before
//! asking for a decision; this is the second line of defence, so that `..`,
//! `.` and `//` can never walk a path out of the directory a rule names.

use std::borrow::Cow;

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path is empty.
    #[error("path is empty")]
    Empty,
    /// The path does not start with `/`.
    #[error("path is not absolute")]
    Relative,
    /// The path contains a NUL byte, which no exec call can carry.
    #[error("path contains a NUL byte")]
    Nul,
}

/// Normalise an absolute path lexically: repeated `/` collapse, `.` segments
/// go, `..` removes the segment before it (`/..` is `/`), and a trailing `/`
/// goes. Borrows when the path is already normal.
///
/// ```
/// use coral_policy::normalize_path;
/// assert_eq!(normalize_path("/usr/bin/../../tmp/./x//ss").unwrap(), "/tmp/x/ss");
/// assert_eq!(normalize_path("/../../usr/bin/ss").unwrap(), "/usr/bin/ss");
/// assert!(normalize_path("bin/ss").is_err());
/// ```
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if !path.starts_with('/') {
        return Err(PathError::Relative);
    }
    if path.contains('\0') {
        return Err(PathError::Nul);
    }
    if is_normalized(path) {
        return Ok(Cow::Borrowed(path));
    }
    let mut parts: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for part in &parts {
        out.push('/');
        out.push_str(part);
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

/// True when `path` is absolute and already in normal form.
pub(crate) fn is_normalized(path: &str) -> bool {
    if path == "/" {
        return true;
    }
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    rest.split('/')
        .all(|segment| !segment.is_empty() && segment != "." && segment != "..")
}

/// The last segment of a normal absolute path.
pub(crate) fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_paths_are_borrowed() {
        assert!(matches!(
            normalize_path("/usr/bin/ss"),
            Ok(Cow::Borrowed("/usr/bin/ss"))
        ));
        assert!(matches!(normalize_path("/"), Ok(Cow::Borrowed("/"))));
    }

    #[test]
    fn tricks_are_resolved_lexically() {
        let cases = [
            ("/usr/bin//ss", "/usr/bin/ss"),
            ("/usr/./bin/ss", "/usr/bin/ss"),
            ("/usr/bin/./ss", "/usr/bin/ss"),
            ("/usr/bin/../../tmp/ss", "/tmp/ss"),
            ("/usr/bin/../../../../../tmp/ss", "/tmp/ss"),
            ("/usr/bin/ss/", "/usr/bin/ss"),
            ("/usr/bin/ss/.", "/usr/bin/ss"),
            ("/usr/bin/ss/..", "/usr/bin"),
            ("//usr//bin//ss", "/usr/bin/ss"),
            ("/..", "/"),
            ("/./", "/"),
            ("/usr/bin/...", "/usr/bin/..."),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_path(input).unwrap(), want, "{input}");
            assert!(is_normalized(want), "{want}");
        }
    }

    #[test]
    fn relative_empty_and_nul_are_refused() {
        assert_eq!(normalize_path(""), Err(PathError::Empty));
        assert_eq!(normalize_path("ss"), Err(PathError::Relative));
        assert_eq!(normalize_path("./ss"), Err(PathError::Relative));
        assert_eq!(normalize_path("../usr/bin/ss"), Err(PathError::Relative));
        assert_eq!(normalize_path("/usr/bin/ss\0x"), Err(PathError::Nul));
    }

    #[test]
    fn basename_is_last_segment() {
        assert_eq!(basename("/usr/bin/bash"), "bash");
        assert_eq!(basename("/"), "");
    }
}
