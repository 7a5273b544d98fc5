//! The helper's own config: who may call it. A tiny line format parsed
//! strictly:
//!
//! ```text
//! # comment
//! allow_uid = 1000
//! allow_group = coral
//! ```
//!
//! Unknown keys, bad values and duplicate entries are errors with a line
//! number. Without a file the default is group `coral`. Root (uid 0) is
//! always allowed.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::libc;
use nix::unistd::{Group, Uid, User, geteuid};
use thiserror::Error;

/// Default config path.
pub const DEFAULT_CONFIG: &str = "/etc/coral/privhelper.conf";
/// Group allowed when there is no config file.
pub const DEFAULT_GROUP: &str = "coral";
const MAX_CONFIG: u64 = 64 * 1024;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{0} must be a regular file owned by uid {1}, not writable by group or others, at most 64 KiB"
    )]
    Unsafe(PathBuf, u32),
    #[error("{path}:{line}: {msg}")]
    Syntax {
        path: PathBuf,
        line: usize,
        msg: String,
    },
}

/// Who may call the helper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allow {
    pub uids: Vec<u32>,
    pub groups: Vec<String>,
}

impl Default for Allow {
    fn default() -> Self {
        Self {
            uids: Vec::new(),
            groups: vec![DEFAULT_GROUP.to_owned()],
        }
    }
}

fn valid_group(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Parses the config text.
pub fn parse(text: &str, path: &Path) -> Result<Allow, ConfigError> {
    let mut allow = Allow {
        uids: Vec::new(),
        groups: Vec::new(),
    };
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let err = |msg: String| ConfigError::Syntax {
            path: path.to_owned(),
            line,
            msg,
        };
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let Some((key, value)) = l.split_once('=') else {
            return Err(err("expected 'key = value'".into()));
        };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "allow_uid" => {
                let ok = !value.is_empty()
                    && value.len() <= 10
                    && value.bytes().all(|b| b.is_ascii_digit());
                let uid = ok
                    .then(|| value.parse::<u32>().ok())
                    .flatten()
                    .filter(|u| *u != u32::MAX)
                    .ok_or_else(|| err(format!("allow_uid: '{value}' is not a uid")))?;
                if allow.uids.contains(&uid) {
                    return Err(err(format!("allow_uid {uid} is listed twice")));
                }
                allow.uids.push(uid);
            }
            "allow_group" => {
                if !valid_group(value) {
                    return Err(err(format!("allow_group: '{value}' is not a group name")));
                }
                if allow.groups.iter().any(|g| g == value) {
                    return Err(err(format!("allow_group {value} is listed twice")));
                }
                allow.groups.push(value.to_owned());
            }
            other => {
                return Err(err(format!(
                    "unknown key '{other}' (known: allow_uid, allow_group)"
                )));
            }
        }
    }
    Ok(allow)
}

/// Loads the config at `path`: the default when it does not exist. The file
/// must be owned by the helper's euid and not writable by group or others.
pub fn load(path: &Path) -> Result<Allow, ConfigError> {
    let read_err = |source| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    let f = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Allow::default()),
        Err(e) => return Err(read_err(e)),
    };
    let md = f.metadata().map_err(read_err)?;
    let euid = geteuid().as_raw();
    if !md.is_file() || md.uid() != euid || md.mode() & 0o022 != 0 || md.len() > MAX_CONFIG {
        return Err(ConfigError::Unsafe(path.to_owned(), euid));
    }
    let mut text = String::new();
    f.take(MAX_CONFIG)
        .read_to_string(&mut text)
        .map_err(read_err)?;
    parse(&text, path)
}

/// Why a caller is (not) allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Root,
    Uid,
    Group(String),
    Denied,
}

impl Allow {
    /// Checks a caller's uid: root, a listed uid, or a user whose primary
    /// group or supplementary membership (the group's member list) is a
    /// listed group. Users and groups are resolved on every call so changes
    /// take effect without a restart.
    pub fn check(&self, uid: u32) -> Verdict {
        if uid == 0 {
            return Verdict::Root;
        }
        if self.uids.contains(&uid) {
            return Verdict::Uid;
        }
        let Ok(Some(user)) = User::from_uid(Uid::from_raw(uid)) else {
            return Verdict::Denied;
        };
        for name in &self.groups {
            let Ok(Some(group)) = Group::from_name(name) else {
                continue;
            };
            if group.gid == user.gid || group.mem.contains(&user.name) {
                return Verdict::Group(name.clone());
            }
        }
        Verdict::Denied
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Allow, ConfigError> {
        parse(s, Path::new("t.conf"))
    }

    #[test]
    fn parses_the_format() {
        let a = p("# hi\n\nallow_uid = 1000\n  allow_group=coral  \nallow_uid=0\n").unwrap();
        assert_eq!(a.uids, vec![1000, 0]);
        assert_eq!(a.groups, vec!["coral".to_owned()]);
        assert_eq!(p("").unwrap().groups, Vec::<String>::new());
    }

    #[test]
    fn rejects_anything_else() {
        for bad in [
            "allow_uid = -1",
            "allow_uid = 4294967295",
            "allow_uid = 99999999999",
            "allow_uid = 1e3",
            "allow_uid =",
            "allow_user = bob",
            "allow_group = -x",
            "allow_group = a b",
            "allow_group = ",
            "just words",
            "allow_uid = 5\nallow_uid = 5",
        ] {
            assert!(p(bad).is_err(), "{bad:?} should be refused");
        }
        let e = p("allow_uid = 1\nfoo = 2").unwrap_err().to_string();
        assert!(e.contains("t.conf:2"), "{e}");
    }

    #[test]
    fn root_is_always_allowed_and_nobody_is_not_by_default() {
        let a = Allow::default();
        assert_eq!(a.check(0), Verdict::Root);
        assert_eq!(a.check(65534), Verdict::Denied);
        let a = p("allow_uid = 65534").unwrap();
        assert_eq!(a.check(65534), Verdict::Uid);
    }
}
