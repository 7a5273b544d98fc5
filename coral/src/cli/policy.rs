//! `coral policy check | explain`: the exec policy, checked and explained
//! on this machine (nothing runs).

use super::output::out;
use anyhow::anyhow;
use coral_proto::exit::Usage;
use std::path::{Path, PathBuf};

pub(super) fn check(file: Option<PathBuf>) -> anyhow::Result<()> {
    let path = file.unwrap_or_else(|| PathBuf::from(coral_policy::DEFAULT_PATH));
    let policy = coral_policy::Policy::load(&path).map_err(|e| Usage(e.to_string()))?;
    let outcomes = policy.run_tests();
    let mut text = String::new();
    for o in &outcomes {
        text.push_str(&format!("{o}\n"));
    }
    let failed = outcomes.iter().filter(|o| !o.passed).count();
    text.push_str(&format!(
        "{}: {} rules, {} tests, {}\n",
        path.display(),
        policy.rule_count(),
        outcomes.len(),
        if failed == 0 {
            "all pass".to_string()
        } else {
            format!("{failed} failed")
        }
    ));
    out(&text)?;
    if failed > 0 {
        return Err(anyhow!(
            "{failed} of {} policy tests failed",
            outcomes.len()
        ));
    }
    Ok(())
}

/// Finds `cmd` as a shell would (a path as given, else along PATH) and
/// resolves symlinks, so the policy sees the program that would really run.
fn resolve_program(cmd: &str) -> anyhow::Result<String> {
    let found = if cmd.contains('/') {
        Some(PathBuf::from(cmd))
    } else {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(cmd))
                .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file()))
        })
    };
    let path = found.ok_or_else(|| Usage(format!("command '{cmd}' is not found in PATH")))?;
    let real = std::fs::canonicalize(&path)
        .map_err(|e| Usage(format!("cannot resolve {}: {e}", path.display())))?;
    Ok(real.to_string_lossy().into_owned())
}

/// The user running the CLI, as a policy caller.
fn local_caller() -> coral_policy::Caller {
    use nix::unistd::{Gid, Group, Uid, User, getgroups};
    let uid = Uid::current();
    let mut gids: Vec<Gid> = getgroups().unwrap_or_default();
    gids.push(Gid::current());
    gids.dedup();
    coral_policy::Caller {
        uid: Some(uid.as_raw()),
        user: User::from_uid(uid).ok().flatten().map(|u| u.name),
        groups: gids
            .iter()
            .filter_map(|g| Group::from_gid(*g).ok().flatten().map(|g| g.name))
            .collect(),
        gids: gids.iter().map(|g| g.as_raw()).collect(),
        ..Default::default()
    }
}

pub(super) fn explain(
    file: &Path,
    service: &str,
    callers: &[String],
    command: &[String],
) -> anyhow::Result<()> {
    let policy = coral_policy::Policy::load(file).map_err(|e| Usage(e.to_string()))?;
    let caller = if callers.is_empty() {
        local_caller()
    } else {
        coral_policy::Caller::from_specs(callers).map_err(Usage)?
    };
    let program = resolve_program(&command[0])?;
    let args = command[1..].to_vec();
    let decision = policy.decide(&coral_policy::Request {
        caller: &caller,
        service,
        program: &program,
        args: &args,
    });
    out(&format!("{}\n", decision.explain()))
}
