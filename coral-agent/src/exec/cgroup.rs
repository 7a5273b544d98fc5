//! A cgroup per command, so that a timeout or cancel kills every process
//! the command started (`cgroup.kill`), and a fork bomb hits `pids.max`
//! instead of the host. The agent makes `coral-exec-<its pid>` under its own
//! cgroup in the v2 hierarchy (for `cgroup.kill`, and `pids` when it can
//! enable that controller there) and, on hybrid hosts where `pids` is a v1
//! controller, in the v1 `pids` hierarchy too. Directories left by an agent
//! that died are emptied (their processes killed) and removed at start.
//! The name carries the agent's pid namespace as well as its pid
//! (`coral-exec-<pidns inode>-<pid>`): agents in different pid namespaces
//! can share a cgroup, and one must never take the other's live pid for a
//! dead one of its own.

use std::path::{Path, PathBuf};
use std::time::Duration;

const PREFIX: &str = "coral-exec-";

/// The parent cgroups of this agent's commands.
#[derive(Debug)]
pub(crate) struct Cgroups {
    /// v2: `<mount>/<own cgroup>/coral-exec-<pid>`, with `cgroup.kill`.
    v2: Option<PathBuf>,
    /// `pids` is enabled for the children of `v2`.
    v2_pids: bool,
    /// v1 `pids` hierarchy: `<mount>/<own cgroup>/coral-exec-<pid>`.
    v1_pids: Option<PathBuf>,
    max_pids: u32,
}

/// One command's cgroup directories.
#[derive(Debug)]
pub(crate) struct ExecCgroup {
    v2: Option<PathBuf>,
    v1_pids: Option<PathBuf>,
}

struct Mounts {
    /// (mount root, mount point)
    v2: Option<(String, PathBuf)>,
    v1_pids: Option<(String, PathBuf)>,
}

fn mounts() -> Mounts {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut m = Mounts {
        v2: None,
        v1_pids: None,
    };
    for line in text.lines() {
        let Some((before, after)) = line.split_once(" - ") else {
            continue;
        };
        let pre: Vec<&str> = before.split(' ').collect();
        let post: Vec<&str> = after.split(' ').collect();
        if pre.len() < 5 || post.len() < 3 {
            continue;
        }
        let (root, point) = (pre[3].to_string(), PathBuf::from(unescape(pre[4])));
        match post[0] {
            "cgroup2" if m.v2.is_none() => m.v2 = Some((root, point)),
            "cgroup" if m.v1_pids.is_none() && post[2].split(',').any(|o| o == "pids") => {
                m.v1_pids = Some((root, point))
            }
            _ => {}
        }
    }
    m
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// This process's cgroup paths: (v2 path, v1 pids path).
fn own_paths() -> (Option<String>, Option<String>) {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let (mut v2, mut v1) = (None, None);
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(h), Some(ctrl), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if h == "0" && ctrl.is_empty() {
            v2 = Some(path.to_string());
        } else if ctrl.split(',').any(|c| c == "pids") {
            v1 = Some(path.to_string());
        }
    }
    (v2, v1)
}

fn join(mount: &(String, PathBuf), own: &str) -> PathBuf {
    let rel = own.strip_prefix(mount.0.as_str()).unwrap_or(own);
    mount.1.join(rel.trim_start_matches('/'))
}

fn pid_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The inode of this process's pid namespace (0 if it cannot be read).
fn pid_namespace() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/pid")
        .map(|m| m.ino())
        .unwrap_or(0)
}

/// This agent's directory name in `pidns`.
fn dir_name(pidns: u64, pid: u32) -> String {
    format!("{PREFIX}{pidns}-{pid}")
}

/// The pid of the agent that made `name`, if it was made in `pidns`.
/// Names from before the namespace was part of them (`coral-exec-<pid>`)
/// are taken as this namespace's.
fn owner_in(name: &str, pidns: u64) -> Option<i32> {
    let rest = name.strip_prefix(PREFIX)?;
    match rest.split_once('-') {
        Some((ns, pid)) if ns.parse::<u64>().ok()? == pidns => pid.parse().ok(),
        Some(_) => None,
        None => rest.parse().ok(),
    }
}

/// Why there are no cgroups for commands, or one command's cgroup could
/// not be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CgroupError {
    #[error("{}", reasons.join("; "))]
    Unavailable { reasons: Vec<String> },
    #[error("cannot create {}: {source}", path.display())]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot set pids.max in {}: {source}", path.display())]
    Limit {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Cgroups {
    /// Finds and prepares the parent cgroups, after cleaning up what dead
    /// agents left. `Err` says why there is none.
    pub(crate) fn detect(max_pids: u32) -> Result<Cgroups, CgroupError> {
        let m = mounts();
        let (own_v2, own_v1) = own_paths();
        let pidns = pid_namespace();
        let name = dir_name(pidns, std::process::id());
        let mut why = Vec::new();

        let mut v2 = None;
        let mut v2_pids = false;
        match (&m.v2, &own_v2) {
            (Some(mount), Some(own)) => {
                let base = join(mount, own);
                clean_stale(&base, pidns);
                let dir = base.join(&name);
                match std::fs::create_dir(&dir) {
                    Ok(()) | Err(_) if dir.join("cgroup.kill").exists() => {
                        let controllers = std::fs::read_to_string(base.join("cgroup.controllers"))
                            .unwrap_or_default();
                        if controllers.split_whitespace().any(|c| c == "pids") {
                            // Works when the agent's cgroup may delegate pids
                            // (the root cgroup, or a delegated subtree).
                            let _ = std::fs::write(base.join("cgroup.subtree_control"), "+pids");
                            v2_pids =
                                std::fs::write(dir.join("cgroup.subtree_control"), "+pids").is_ok();
                        }
                        v2 = Some(dir);
                    }
                    Ok(()) => {
                        let _ = std::fs::remove_dir(&dir);
                        why.push("cgroup v2 has no cgroup.kill (kernel before 5.14)".to_string());
                    }
                    Err(e) => why.push(format!("cannot create {}: {e}", dir.display())),
                }
            }
            _ => why.push("no cgroup v2 hierarchy".to_string()),
        }
        let mut v1_pids = None;
        if !v2_pids && let (Some(mount), Some(own)) = (&m.v1_pids, &own_v1) {
            let base = join(mount, own);
            clean_stale(&base, pidns);
            let dir = base.join(&name);
            match std::fs::create_dir(&dir) {
                Ok(()) => v1_pids = Some(dir),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => v1_pids = Some(dir),
                Err(e) => why.push(format!("cannot create {}: {e}", dir.display())),
            }
        }
        if v2.is_none() && v1_pids.is_none() {
            return Err(CgroupError::Unavailable { reasons: why });
        }
        Ok(Cgroups {
            v2,
            v2_pids,
            v1_pids,
            max_pids,
        })
    }

    /// Both a group kill and a pids limit are in place.
    pub(crate) fn complete(&self) -> bool {
        self.v2.is_some() && (self.v2_pids || self.v1_pids.is_some())
    }

    pub(crate) fn describe(&self) -> String {
        let kill = if self.v2.is_some() {
            "cgroup.kill"
        } else {
            "kill each process"
        };
        let pids = if self.v2_pids {
            format!("pids.max {} (v2)", self.max_pids)
        } else if self.v1_pids.is_some() {
            format!("pids.max {} (v1)", self.max_pids)
        } else {
            "no pids limit".to_string()
        };
        format!("cgroup per command ({kill}, {pids})")
    }

    /// Makes the cgroup of one command, with its pids limit.
    pub(crate) fn create(&self, exec_id: &str) -> Result<ExecCgroup, CgroupError> {
        let mk = |parent: &Path| -> Result<PathBuf, CgroupError> {
            let dir = parent.join(exec_id);
            match std::fs::create_dir(&dir) {
                Ok(()) => Ok(dir),
                Err(source) => Err(CgroupError::Create { path: dir, source }),
            }
        };
        let limit = |dir: &Path| -> Result<(), CgroupError> {
            std::fs::write(dir.join("pids.max"), self.max_pids.to_string()).map_err(|source| {
                CgroupError::Limit {
                    path: dir.to_path_buf(),
                    source,
                }
            })
        };
        let cg = ExecCgroup {
            v2: self.v2.as_deref().map(mk).transpose()?,
            v1_pids: match self.v1_pids.as_deref().map(mk).transpose() {
                Ok(d) => d,
                Err(e) => {
                    if let Some(d) = &self.v2 {
                        let _ = std::fs::remove_dir(d.join(exec_id));
                    }
                    return Err(e);
                }
            },
        };
        let limited = if self.v2_pids {
            cg.v2.as_deref().map(limit)
        } else {
            cg.v1_pids.as_deref().map(limit)
        };
        if let Some(Err(e)) = limited {
            cg.kill();
            cg.remove_now();
            return Err(e);
        }
        Ok(cg)
    }

    /// Removes this agent's parent directories (at shutdown).
    pub(crate) fn remove(&self) {
        for d in [&self.v2, &self.v1_pids].into_iter().flatten() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

impl ExecCgroup {
    /// The `cgroup.procs` files the command joins before it runs.
    pub(crate) fn procs_files(&self) -> Vec<PathBuf> {
        [&self.v2, &self.v1_pids]
            .into_iter()
            .flatten()
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    /// Kills every process in the cgroup.
    pub(crate) fn kill(&self) {
        if let Some(d) = &self.v2
            && std::fs::write(d.join("cgroup.kill"), "1").is_ok()
        {
            return;
        }
        if let Some(d) = &self.v1_pids {
            kill_each(d);
        }
    }

    fn remove_now(&self) -> bool {
        let mut ok = true;
        for d in [&self.v2, &self.v1_pids].into_iter().flatten() {
            match std::fs::remove_dir(d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(_) => ok = false,
            }
        }
        ok
    }

    /// Kills what is left and removes the directories once empty (the
    /// kernel takes a moment to reap killed processes).
    pub(crate) async fn remove(self) {
        for _ in 0..300 {
            self.kill();
            if self.remove_now() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tracing::warn!(cgroup = ?self.v2.as_ref().or(self.v1_pids.as_ref()), "cannot remove a command's cgroup; it still has processes");
    }
}

/// SIGKILL every process listed in `dir/cgroup.procs`, until it is empty
/// (a process may fork between the read and the kill).
fn kill_each(dir: &Path) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    for _ in 0..1000 {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        let pids: Vec<i32> = procs
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        if pids.is_empty() {
            return;
        }
        for p in pids {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
    }
}

/// Removes what an agent that died left under `base`: kills the processes
/// of its commands and removes their directories.
fn clean_stale(base: &Path, pidns: u64) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = owner_in(&name, pidns) else {
            continue;
        };
        if pid_alive(pid) {
            continue;
        }
        let dir = e.path();
        let mut killed = 0;
        if let Ok(children) = std::fs::read_dir(&dir) {
            for c in children.flatten().filter(|c| c.path().is_dir()) {
                let p = c.path();
                killed += std::fs::read_to_string(p.join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                    .count();
                if std::fs::write(p.join("cgroup.kill"), "1").is_err() {
                    kill_each(&p);
                }
                for _ in 0..200 {
                    if std::fs::remove_dir(&p).is_ok() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        let _ = std::fs::remove_dir(&dir);
        tracing::warn!(cgroup = %dir.display(), dead_agent_pid = pid, killed, "removed the exec cgroup of an agent that died, killing what still ran in it");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_namespace_s_dead_agents_are_cleaned() {
        assert_eq!(owner_in(&dir_name(7, 42), 7), Some(42));
        assert_eq!(owner_in(&dir_name(8, 42), 7), None);
        assert_eq!(owner_in("coral-exec-42", 7), Some(42));
        assert_eq!(owner_in("coral-exec-x-42", 7), None);
        assert_eq!(owner_in("other", 7), None);

        // A directory of a dead agent of this namespace goes; one of
        // another namespace whose pid is dead here stays.
        let base = tempfile::tempdir().unwrap();
        let dead = i32::MAX as u32 - 1;
        let ours = base.path().join(dir_name(7, dead));
        let theirs = base.path().join(dir_name(8, dead));
        std::fs::create_dir(&ours).unwrap();
        std::fs::create_dir(&theirs).unwrap();
        clean_stale(base.path(), 7);
        assert!(!ours.exists());
        assert!(theirs.exists());
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape("/sys/fs/cgroup"), "/sys/fs/cgroup");
        assert_eq!(unescape("/a\\040b"), "/a b");
    }

    #[test]
    fn joins_relative_to_the_mount_root() {
        let m = ("/".to_string(), PathBuf::from("/sys/fs/cgroup/unified"));
        assert_eq!(
            join(&m, "/user.slice/x"),
            PathBuf::from("/sys/fs/cgroup/unified/user.slice/x")
        );
        assert_eq!(join(&m, "/"), PathBuf::from("/sys/fs/cgroup/unified/"));
        let m = ("/ns".to_string(), PathBuf::from("/sys/fs/cgroup"));
        assert_eq!(join(&m, "/ns/a"), PathBuf::from("/sys/fs/cgroup/a"));
    }
}
