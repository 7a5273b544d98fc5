//! The environment allowlist of a rule.

use std::collections::BTreeMap;
use std::fmt;

/// Variable name prefixes that change how the dynamic loader or the
/// program's runtime behaves. A prefix pattern (`LD*`) never lets them
/// through: only a listed exact name does.
const LOADER_PREFIXES: &[&str] = &["LD_", "DYLD_"];

/// Which environment variables a command may receive. Everything else is
/// dropped, `PATH` and `LD_PRELOAD` included, unless listed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvAllowlist {
    names: Vec<String>,
    prefixes: Vec<String>,
}

impl EnvAllowlist {
    /// Build from entries: exact names (`LANG`) or prefixes ending in `*`
    /// (`LC_*`). Refuses `*` alone, empty entries and names that are not
    /// `[A-Za-z_][A-Za-z0-9_]*`.
    pub fn new<S: AsRef<str>>(entries: &[S]) -> Result<EnvAllowlist, String> {
        let mut list = EnvAllowlist::default();
        for entry in entries {
            let entry = entry.as_ref();
            let (name, prefix) = match entry.strip_suffix('*') {
                Some(p) => (p, true),
                None => (entry, false),
            };
            if prefix && name.is_empty() {
                return Err("\"*\" would pass every variable; list the names".to_owned());
            }
            let valid = name
                .chars()
                .enumerate()
                .all(|(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()));
            if name.is_empty() || !valid {
                return Err(format!(
                    "{entry:?} is not a variable name (letters, digits and _, optionally ending in *)"
                ));
            }
            let target = if prefix {
                &mut list.prefixes
            } else {
                &mut list.names
            };
            if !target.iter().any(|n| n == name) {
                target.push(name.to_owned());
            }
        }
        list.names.sort();
        list.prefixes.sort();
        Ok(list)
    }

    /// True when a variable of this name may pass.
    pub fn allows(&self, name: &str) -> bool {
        if self
            .names
            .binary_search_by(|n| n.as_str().cmp(name))
            .is_ok()
        {
            return true;
        }
        if LOADER_PREFIXES.iter().any(|p| name.starts_with(p)) {
            return false;
        }
        self.prefixes.iter().any(|p| name.starts_with(p.as_str()))
    }

    /// Keep only the allowed variables. Pass the agent's environment (or an
    /// empty one): the result is the whole environment of the command.
    ///
    /// ```
    /// use coral_policy::EnvAllowlist;
    /// let allow = EnvAllowlist::new(&["LANG", "LC_*"]).unwrap();
    /// let env = allow.filter([("LANG", "C"), ("LC_ALL", "C"), ("PATH", "/tmp"), ("LD_PRELOAD", "/x.so")]);
    /// assert_eq!(env.keys().collect::<Vec<_>>(), ["LANG", "LC_ALL"]);
    /// ```
    pub fn filter<I, K, V>(&self, vars: I) -> BTreeMap<String, String>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        vars.into_iter()
            .filter(|(k, _)| self.allows(k.as_ref()))
            .map(|(k, v)| (k.as_ref().to_owned(), v.as_ref().to_owned()))
            .collect()
    }

    /// True when nothing is allowed.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty() && self.prefixes.is_empty()
    }
}

impl fmt::Display for EnvAllowlist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        let all = self
            .names
            .iter()
            .map(|n| n.to_string())
            .chain(self.prefixes.iter().map(|p| format!("{p}*")));
        for (i, entry) in all.enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(&entry)?;
        }
        f.write_str("]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vec<(&'static str, &'static str)> {
        vec![
            ("LANG", "C.UTF-8"),
            ("LC_ALL", "C"),
            ("PATH", "/tmp/evil:/usr/bin"),
            ("LD_PRELOAD", "/tmp/evil.so"),
            ("LD_LIBRARY_PATH", "/tmp"),
            ("DYLD_INSERT_LIBRARIES", "/tmp/x"),
            ("PGHOST", "db"),
            ("HOME", "/root"),
        ]
    }

    #[test]
    fn strips_loader_and_path_unless_listed() {
        let allow = EnvAllowlist::new(&["LANG", "PGHOST"]).unwrap();
        let env = allow.filter(vars());
        assert_eq!(env.keys().collect::<Vec<_>>(), ["LANG", "PGHOST"]);
        assert!(!env.contains_key("PATH"));
        assert!(!env.contains_key("LD_PRELOAD"));
    }

    #[test]
    fn listed_names_pass_even_path_and_ld_preload() {
        let allow = EnvAllowlist::new(&["PATH", "LD_PRELOAD"]).unwrap();
        let env = allow.filter(vars());
        assert_eq!(env.keys().collect::<Vec<_>>(), ["LD_PRELOAD", "PATH"]);
    }

    #[test]
    fn prefixes_never_pass_loader_variables() {
        let allow = EnvAllowlist::new(&["L*", "D*"]).unwrap();
        let env = allow.filter(vars());
        assert_eq!(env.keys().collect::<Vec<_>>(), ["LANG", "LC_ALL"]);
    }

    #[test]
    fn empty_allowlist_passes_nothing() {
        let allow = EnvAllowlist::default();
        assert!(allow.is_empty());
        assert!(allow.filter(vars()).is_empty());
    }

    #[test]
    fn bad_entries_are_refused() {
        for bad in ["*", "", "1X", "A-B", "A B", "A=B", "**"] {
            assert!(EnvAllowlist::new(&[bad]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn display_lists_entries() {
        let allow = EnvAllowlist::new(&["TZ", "LANG", "LC_*"]).unwrap();
        assert_eq!(allow.to_string(), "[LANG, TZ, LC_*]");
    }
}
