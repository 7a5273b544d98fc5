//! The policy in force: loaded from `agent.exec.policy`, reloaded on SIGHUP
//! and when the file changes. A missing file denies everything (said once);
//! an invalid file keeps the policy in force and says so (log and status).

use coral_policy::Policy;
use coral_proto::PolicyStatus;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

/// What identifies a version of the file: changes when it is edited,
/// replaced (rename) or removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
    })
}

pub(crate) struct PolicyHolder {
    path: PathBuf,
    current: RwLock<Arc<Policy>>,
    status: Mutex<PolicyStatus>,
    /// The stamp of the file as last looked at (`None`: missing).
    seen: Mutex<Option<Option<Stamp>>>,
}

impl PolicyHolder {
    /// Loads the file now. Never fails: a missing or invalid file leaves a
    /// policy that denies everything, and says why.
    pub(crate) fn open(path: PathBuf) -> PolicyHolder {
        let empty = Policy::parse(&path.display().to_string(), "").expect("empty policy parses");
        let holder = PolicyHolder {
            status: Mutex::new(PolicyStatus {
                path: path.display().to_string(),
                ..Default::default()
            }),
            path,
            current: RwLock::new(Arc::new(empty)),
            seen: Mutex::new(None),
        };
        holder.reload("start");
        holder
    }

    pub(crate) fn current(&self) -> Arc<Policy> {
        self.current.read().expect("policy lock").clone()
    }

    pub(crate) fn status(&self) -> PolicyStatus {
        self.status.lock().expect("policy status lock").clone()
    }

    /// Reloads if the file changed since it was last looked at; says
    /// whether it read the file.
    pub(crate) fn reload_if_changed(&self) -> bool {
        let now = stamp(&self.path);
        let changed = *self.seen.lock().expect("policy seen lock") != Some(now);
        if changed {
            self.reload("file changed");
        }
        changed
    }

    /// Reads the file again, whatever its stamp.
    pub(crate) fn reload(&self, why: &str) {
        let before = stamp(&self.path);
        let was_missing = self.status.lock().expect("policy status lock").missing;
        let result = if before.is_none() {
            None
        } else {
            Some(Policy::load(&self.path))
        };
        // The stamp taken before reading: an edit racing the read is seen
        // again on the next check.
        *self.seen.lock().expect("policy seen lock") = Some(before);
        let mut st = self.status.lock().expect("policy status lock");
        match result {
            None => {
                let empty = Policy::parse(&self.path.display().to_string(), "")
                    .expect("empty policy parses");
                *self.current.write().expect("policy lock") = Arc::new(empty);
                if !was_missing || st.loaded_at_ms.is_none() {
                    tracing::warn!(
                        policy = %self.path.display(),
                        "exec policy file is missing: every exec is denied (create it; see docs/policy.md)"
                    );
                }
                st.missing = true;
                st.rules = 0;
                st.error = None;
                st.loaded_at_ms = Some(coral_proto::now_ms());
            }
            Some(Ok(policy)) => {
                let failing = policy.run_tests().into_iter().filter(|t| !t.passed).count();
                tracing::info!(
                    policy = %self.path.display(),
                    rules = policy.rule_count(),
                    tests = policy.test_count(),
                    failing_tests = failing,
                    why,
                    "exec policy loaded"
                );
                st.missing = false;
                st.rules = policy.rule_count() as u64;
                st.error = None;
                st.loaded_at_ms = Some(coral_proto::now_ms());
                *self.current.write().expect("policy lock") = Arc::new(policy);
            }
            Some(Err(e)) => {
                let msg = sandbox_hint(&self.path, e).to_string();
                if st.error.as_deref() != Some(msg.as_str()) {
                    tracing::error!(
                        error = %msg,
                        rules_in_force = st.rules,
                        "exec policy not reloaded: the file is invalid; the previous policy stays in force"
                    );
                }
                st.error = Some(msg);
            }
        }
    }
}

/// A read refused although the file's permissions allow it was refused by
/// the agent's sandbox. Issue 16: the message then said to make the file
/// readable, which it was; it says what the sandbox allows instead.
fn sandbox_hint(path: &Path, e: coral_policy::PolicyError) -> coral_policy::PolicyError {
    match e {
        coral_policy::PolicyError::Read {
            path: shown,
            message,
            source,
            ..
        } if source
            .as_ref()
            .is_some_and(|s| s.kind() == std::io::ErrorKind::PermissionDenied)
            && nix::unistd::access(path, nix::unistd::AccessFlags::R_OK).is_ok() =>
        {
            coral_policy::PolicyError::Read {
                path: shown,
                message: format!("{message}, although its permissions allow reading"),
                hint: "the agent's sandbox (landlock) reads policy files only in the directory the file was in when the agent started, and where its symlink pointed then; keep it there, or restart the agent to follow it".into(),
                source,
            }
        }
        e => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: &str = "[[rule]]\nname = \"a\"\ncallers = [\"*\"]\nprogram = \"/usr/bin/true\"\n";

    #[test]
    fn missing_denies_invalid_keeps_the_old_policy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        let h = PolicyHolder::open(path.clone());
        assert!(h.status().missing);
        assert_eq!(h.current().rule_count(), 0);

        std::fs::write(&path, ONE).unwrap();
        h.reload_if_changed();
        let st = h.status();
        assert!(!st.missing && st.error.is_none() && st.rules == 1, "{st:?}");

        std::fs::write(&path, "[[rule]]\nname = \n").unwrap();
        h.reload_if_changed();
        let st = h.status();
        assert!(
            st.error.as_deref().unwrap().contains("policy.toml:2:"),
            "{st:?}"
        );
        assert_eq!(h.current().rule_count(), 1, "the old policy stays");

        std::fs::remove_file(&path).unwrap();
        h.reload_if_changed();
        assert!(h.status().missing);
        assert_eq!(h.current().rule_count(), 0, "a removed file allows nothing");
    }
}
