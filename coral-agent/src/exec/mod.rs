//! `coral exec` on the agent: decide under the host's policy, write the
//! audit record (fsync) before anything runs, have the exec spawner run
//! argv directly (no shell unless a rule allows one) in its own process
//! group, cgroup and landlock domain, with the rule's environment
//! allowlist, working directory, timeout and output cap, then record how
//! it ended. The agent itself cannot run programs (issue 16): see
//! [`spawner`].

mod audit;
mod cgroup;
mod policy;
mod run;
mod shim;
pub mod spawner;

pub use shim::{SHIM_ARG, shim_main};
pub use spawner::{SPAWNER_ARG, Spawner, spawner_main};

use crate::config::{ExecConfig, Isolation};
use audit::{AuditLog, Begin};
use cgroup::Cgroups;
use coral_policy::{Caller, Request};
use coral_proto::{
    AuditQuery, ExecAuditRecord, ExecCaller, ExecError, ExecOutcome, ExecPoll, ExecRequest,
    ExecStarted, ExecStatus, ExecVerdict,
};
use policy::PolicyHolder;
use run::Output;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Where a bare program name is looked up. Fixed: neither the caller nor
/// the agent's own `PATH` decides which binary `ss` is.
pub const SEARCH_PATH: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

const MAX_ARGS: usize = 1024;
const MAX_ARGV_BYTES: usize = 256 << 10;
const MAX_CALLER_TEXT: usize = 256;
/// A running command nobody polls for this long is killed; a finished one
/// nobody collects is forgotten.
const ORPHAN_AFTER: Duration = Duration::from_secs(60);
const MAX_WAIT: Duration = Duration::from_secs(5);

struct ExecJob {
    output: Arc<Output>,
    cancel: CancellationToken,
}

/// What runs, once judged.
struct Launch {
    id: String,
    caller: ExecCaller,
    service: String,
    /// As resolved (judged).
    program: String,
    /// The path executed.
    launch: String,
    argv0: String,
    args: Vec<String>,
    rule: String,
}

pub(crate) struct Exec {
    config: ExecConfig,
    policy: PolicyHolder,
    audit: Arc<AuditLog>,
    cgroups: Option<Cgroups>,
    isolation: String,
    /// The process that runs commands; without one (the library used on
    /// its own, in tests) the agent starts them itself, unconfined.
    spawner: Option<Arc<Spawner>>,
    jobs: Mutex<HashMap<String, Arc<ExecJob>>>,
    /// `agent.exec.max_running` permits; a command holds one while it runs.
    slots: Arc<tokio::sync::Semaphore>,
}

/// The policy's view of a caller the colony vouches for.
fn policy_caller(c: &ExecCaller) -> Caller {
    Caller {
        identity: c.identity.clone(),
        roles: c.roles.clone(),
        uid: c.uid,
        user: c.user.clone(),
        gids: c.gids.clone(),
        groups: c.groups.clone(),
    }
}

/// Finds the program: a path as given (made absolute only if it already
/// is), a bare name along [`SEARCH_PATH`]; then symlinks are resolved, so
/// the policy sees, and the agent runs, the real file.
/// The path to execute for a checked program: a bare name found on the
/// fixed search path runs by the path it was found at (so a `#!` script
/// reached through a link sees its own name, e.g. Debian's `psql` link to
/// `pg_wrapper`), since the search path's directories belong to root; a
/// path the caller gave runs as resolved, so a link the caller controls
/// cannot be swapped between the check and the exec.
fn launch_path(cmd: &str, resolved: &str) -> String {
    if cmd.contains('/') {
        return resolved.to_string();
    }
    SEARCH_PATH
        .iter()
        .map(|dir| Path::new(dir).join(cmd))
        .find(|p| std::fs::canonicalize(p).is_ok_and(|r| r == Path::new(resolved)))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| resolved.to_string())
}

fn resolve(cmd: &str) -> Result<String, String> {
    if cmd.contains('/') {
        if !cmd.starts_with('/') {
            return Ok(cmd.to_string()); // the policy denies a relative path
        }
        return std::fs::canonicalize(cmd)
            .map(|p| p.to_string_lossy().into_owned())
            .map_err(|e| format!("program {cmd:?} cannot be resolved on this host: {e}"));
    }
    for dir in SEARCH_PATH {
        let p = Path::new(dir).join(cmd);
        if std::fs::metadata(&p).is_ok_and(|m| m.is_file())
            && let Ok(real) = std::fs::canonicalize(&p)
        {
            return Ok(real.to_string_lossy().into_owned());
        }
    }
    Err(format!(
        "program {cmd:?} is not found on this host (looked in {})",
        SEARCH_PATH.join(":")
    ))
}

/// At most `max` characters of `s` (never cut inside one), `…` if cut.
fn cut(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// The first 32 arguments, each cut to 256 characters, and how many more:
/// what the audit keeps of a request too large to run.
fn summarise_argv(argv: &[String]) -> Vec<String> {
    const KEEP: usize = 32;
    let mut out: Vec<String> = argv.iter().take(KEEP).map(|a| cut(a, 256)).collect();
    if argv.len() > KEEP {
        out.push(format!("… {} more arguments", argv.len() - KEEP));
    }
    out
}

fn check_request(req: &ExecRequest) -> Result<(), ExecError> {
    let invalid = |m: &str| Err(ExecError::Invalid(m.to_string()));
    if req.argv.is_empty() || req.argv[0].is_empty() {
        return invalid("empty command");
    }
    if req.argv.len() > MAX_ARGS {
        return invalid("more than 1024 arguments");
    }
    if req.argv.iter().map(|a| a.len()).sum::<usize>() > MAX_ARGV_BYTES {
        return invalid("arguments longer than 256 KiB");
    }
    if req.argv.iter().any(|a| a.contains('\0')) {
        return invalid("an argument contains a NUL byte");
    }
    if req.timeout_ms == Some(0) {
        return invalid("timeout must be above 0");
    }
    coral_proto::spec::validate_name(&req.service).map_err(ExecError::Invalid)?;
    let c = &req.caller;
    let texts = c
        .identity
        .iter()
        .chain(c.user.iter())
        .chain(c.roles.iter())
        .chain(c.groups.iter())
        .chain(std::iter::once(&req.origin));
    for t in texts {
        if t.len() > MAX_CALLER_TEXT || t.chars().any(char::is_control) {
            return invalid("caller attributes must be short printable text");
        }
    }
    if c.roles.len() + c.groups.len() + c.gids.len() > 1024 {
        return invalid("too many caller attributes");
    }
    Ok(())
}

impl Exec {
    /// The exec policy in force (its `[[debug]]` rules decide live
    /// debugging, issue 12).
    pub(crate) fn policy(&self) -> std::sync::Arc<coral_policy::Policy> {
        self.policy.current()
    }

    /// Loads the policy, opens the audit log and sets up containment.
    pub(crate) fn open(
        config: &ExecConfig,
        agent_db: &Path,
        spawner: Option<Arc<Spawner>>,
    ) -> Result<Exec, crate::AgentError> {
        let (audit, interrupted) = AuditLog::open(agent_db)?;
        if interrupted > 0 {
            tracing::warn!(
                interrupted,
                "exec audit: commands were running when the agent last stopped without finishing them; their records are marked interrupted"
            );
        }
        let (cgroups, isolation) = match config.isolation {
            Isolation::None => (
                None,
                "process group only (agent.exec.isolation = none)".to_string(),
            ),
            _ => match (spawner.is_some(), Cgroups::detect(config.max_pids)) {
                (true, Ok(cg)) => {
                    let d = cg.describe();
                    (Some(cg), d)
                }
                (false, Ok(cg)) => {
                    cg.remove();
                    (None, "process group only (no exec spawner)".to_string())
                }
                (_, Err(why)) => (None, format!("process group only (no cgroup: {why})")),
            },
        };
        match (&cgroups, config.isolation) {
            (Some(cg), _) if cg.complete() => {
                tracing::info!(isolation = %isolation, "exec containment")
            }
            _ => tracing::warn!(
                isolation = %isolation,
                "exec containment is partial: a fork bomb is bounded only by its timeout"
            ),
        }
        let isolation = match spawner.as_ref().map(|s| s.mode()) {
            Some(coral_sandbox::Mode::Enforce) => {
                format!("{isolation}; landlock: system paths and the paths the arguments name")
            }
            Some(_) => format!("{isolation}; no landlock (agent sandbox not enforced)"),
            None => format!("{isolation}; no landlock (no exec spawner)"),
        };
        Ok(Exec {
            config: config.clone(),
            policy: PolicyHolder::open(config.policy.clone()),
            audit: Arc::new(audit),
            cgroups,
            isolation,
            spawner,
            jobs: Mutex::new(HashMap::new()),
            slots: Arc::new(tokio::sync::Semaphore::new(config.max_running)),
        })
    }

    pub(crate) fn status(&self) -> ExecStatus {
        ExecStatus {
            policy: self.policy.status(),
            isolation: self.isolation.clone(),
            running: self
                .jobs
                .lock()
                .expect("jobs lock")
                .values()
                .filter(|j| !j.output.idle().1)
                .count() as u64,
        }
    }

    /// Watches the policy file, SIGHUP, and jobs nobody polls, until `stop`.
    pub(crate) async fn background(self: Arc<Self>, stop: CancellationToken) {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = signal(SignalKind::hangup()).ok();
        let mut watch = tokio::time::interval(self.config.policy_watch_interval);
        watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reap = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending().await } } => {
                    tracing::info!("SIGHUP: reloading the exec policy");
                    self.policy.reload("SIGHUP");
                    self.spawner_reload("SIGHUP");
                }
                _ = watch.tick() => if self.policy.reload_if_changed() {
                    self.spawner_reload("file changed");
                },
                _ = reap.tick() => self.reap(),
            }
        }
        // Stop what still runs; the records get their completion.
        let jobs: Vec<Arc<ExecJob>> = self
            .jobs
            .lock()
            .expect("jobs lock")
            .values()
            .cloned()
            .collect();
        for j in &jobs {
            j.cancel.cancel();
        }
        for _ in 0..100 {
            if jobs.iter().all(|j| j.output.idle().1) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(cg) = &self.cgroups {
            cg.remove();
        }
    }

    /// The spawner judges requests again under its own copy of the policy
    /// file, which it reads again when the agent does.
    fn spawner_reload(&self, why: &str) {
        if let Some(s) = &self.spawner {
            s.reload(why);
        }
    }

    fn reap(&self) {
        let mut jobs = self.jobs.lock().expect("jobs lock");
        jobs.retain(|id, j| {
            let (idle, done) = j.output.idle();
            if idle < ORPHAN_AFTER {
                return true;
            }
            if done {
                return false;
            }
            if !j.cancel.is_cancelled() {
                tracing::warn!(exec_id = %id, "nobody polled a running command for 60s; killing it");
                j.cancel.cancel();
            }
            true
        });
    }

    /// Decides, records, and starts. `services` are the services connected
    /// to this agent; `peer` is where the request came from.
    pub(crate) async fn start(
        self: &Arc<Self>,
        req: ExecRequest,
        agent: (&str, &str),
        services: &[String],
        peer: &str,
    ) -> Result<ExecStarted, ExecError> {
        if let Err(e) = check_request(&req) {
            if let Err(store) = self.audit_invalid(&req, &e.to_string(), peer).await {
                tracing::error!(error = %store, "cannot write the exec audit record of an invalid request");
            }
            return Err(e);
        }
        let exec_id = uuid::Uuid::new_v4().simple().to_string();
        let caller = policy_caller(&req.caller);
        let mut caller_text = caller.to_string();
        if let Some(pid) = req.caller.pid {
            caller_text.push_str(&format!(" pid:{pid}"));
        }
        let origin = format!("{} via {peer}", req.origin);
        let policy = self.policy.current();

        let resolved = resolve(&req.argv[0]);
        let mut verdict = ExecVerdict::Denied;
        let mut rule = None;
        let mut limits = None;
        // A running slot, taken with the decision (issue 16: counting the
        // running jobs here let concurrent requests pass together while the
        // audit record of each was being written); held until it ends.
        let mut slot = None;
        let reason;
        let program = resolved.as_ref().ok().cloned();
        match &resolved {
            Err(why) => {
                verdict = ExecVerdict::NotFound;
                reason = why.clone();
            }
            Ok(program) if !services.iter().any(|s| s == &req.service) => {
                let _ = program;
                reason = format!("service '{}' is not connected to this agent", req.service);
            }
            Ok(program) => {
                let args = &req.argv[1..];
                let d = policy.decide(&Request {
                    caller: &caller,
                    service: &req.service,
                    program,
                    args,
                });
                rule = d.rule.as_ref().map(|r| r.name.to_string());
                if d.is_allowed() {
                    slot = self.slots.clone().try_acquire_owned().ok();
                }
                if !d.is_allowed() {
                    reason = d.to_string();
                } else if slot.is_none() {
                    reason = format!(
                        "{} commands are running (agent.exec.max_running); try again later",
                        self.config.max_running
                    );
                } else if self.config.isolation == Isolation::Cgroup
                    && !self.cgroups.as_ref().is_some_and(Cgroups::complete)
                {
                    reason = format!(
                        "agent.exec.isolation = cgroup but this agent has {}",
                        self.isolation
                    );
                    slot = None;
                } else {
                    verdict = ExecVerdict::Allowed;
                    reason = d.to_string();
                    limits = d.limits.clone();
                }
            }
        }
        let (timeout, cap) = match &limits {
            Some(l) => {
                let asked = req
                    .timeout_ms
                    .map(Duration::from_millis)
                    .unwrap_or(l.timeout);
                (asked.min(l.timeout), l.max_output_bytes)
            }
            None => (Duration::ZERO, 0),
        };
        // The write-ahead record: durable before anything runs.
        {
            let audit = self.audit.clone();
            let (id, caller_text, origin, service, argv, program, rule, reason) = (
                exec_id.clone(),
                caller_text.clone(),
                origin.clone(),
                req.service.clone(),
                req.argv.clone(),
                program.clone(),
                rule.clone(),
                reason.clone(),
            );
            let allowed = verdict == ExecVerdict::Allowed;
            tokio::task::spawn_blocking(move || {
                audit.begin(&Begin {
                    exec_id: &id,
                    ts_ms: coral_proto::now_ms(),
                    caller: &caller_text,
                    origin: &origin,
                    service: &service,
                    argv: &argv,
                    program: program.as_deref(),
                    allowed,
                    rule: rule.as_deref(),
                    reason: &reason,
                    timeout_ms: timeout.as_millis() as u64,
                    max_output_bytes: cap,
                })
            })
            .await
            .map_err(|e| ExecError::Storage(e.to_string()))?
            .map_err(|e| {
                tracing::error!(error = %e, "cannot write the exec audit record; not running the command");
                ExecError::Storage(e.to_string())
            })?;
        }
        tracing::info!(exec_id = %exec_id, caller = %caller_text, origin = %origin, service = %req.service, argv = ?req.argv, verdict = ?verdict, reason = %reason, "exec");
        let started = ExecStarted {
            exec_id: exec_id.clone(),
            agent_id: agent.0.to_string(),
            agent_name: agent.1.to_string(),
            verdict,
            program: program.clone(),
            rule,
            reason,
            timeout_ms: timeout.as_millis() as u64,
            max_output_bytes: cap,
        };
        let (Some(limits), Some(program)) = (limits, program) else {
            return Ok(started);
        };
        let program = launch_path(&req.argv[0], &program);
        let output = Arc::new(Output::new());
        let job = Arc::new(ExecJob {
            output: output.clone(),
            cancel: CancellationToken::new(),
        });
        self.jobs
            .lock()
            .expect("jobs lock")
            .insert(exec_id.clone(), job.clone());
        let me = self.clone();
        // The program runs as resolved (checked) but sees the name it was
        // asked by, as from a shell: multi-call programs (Debian's psql
        // wrapper, busybox) dispatch on it.
        let launch = Launch {
            id: exec_id.clone(),
            caller: req.caller.clone(),
            service: req.service.clone(),
            program: started.program.clone().unwrap_or_default(),
            launch: program,
            argv0: req.argv[0].clone(),
            args: req.argv[1..].to_vec(),
            rule: started.rule.clone().unwrap_or_default(),
        };
        tokio::spawn(async move {
            let _slot = slot;
            let outcome = me.run(&launch, &limits, timeout, cap, &job).await;
            let audit = me.audit.clone();
            let (id, o) = (exec_id.clone(), outcome.clone());
            let stored =
                tokio::task::spawn_blocking(move || audit.finish(&id, coral_proto::now_ms(), &o))
                    .await;
            if !matches!(stored, Ok(Ok(()))) {
                tracing::error!(exec_id = %exec_id, "cannot write the exec completion record");
            }
            tracing::info!(exec_id = %exec_id, exit_code = ?outcome.exit_code, signal = ?outcome.signal, timed_out = outcome.timed_out, truncated = outcome.truncated, bytes = outcome.output_bytes, "exec finished");
            output.finish(outcome);
        });
        Ok(started)
    }

    /// Records a request refused before the policy saw it (malformed: a NUL
    /// byte, too many or too long arguments, bad caller text), with a
    /// bounded copy of what it asked. Issue 16: these were missing from the
    /// audit log.
    async fn audit_invalid(
        &self,
        req: &ExecRequest,
        why: &str,
        peer: &str,
    ) -> Result<(), ExecError> {
        let audit = self.audit.clone();
        let exec_id = uuid::Uuid::new_v4().simple().to_string();
        let caller = cut(&policy_caller(&req.caller).to_string(), 1024);
        let origin = cut(&format!("{} via {peer}", req.origin), 1024);
        let service = cut(&req.service, 256);
        let argv = summarise_argv(&req.argv);
        let reason = format!("invalid request: {why}");
        tracing::info!(exec_id = %exec_id, caller = %caller, origin = %origin, service = %service, reason = %reason, "exec");
        tokio::task::spawn_blocking(move || {
            audit.begin(&Begin {
                exec_id: &exec_id,
                ts_ms: coral_proto::now_ms(),
                caller: &caller,
                origin: &origin,
                service: &service,
                argv: &argv,
                program: None,
                allowed: false,
                rule: None,
                reason: &reason,
                timeout_ms: 0,
                max_output_bytes: 0,
            })
        })
        .await
        .map_err(|e| ExecError::Storage(e.to_string()))?
        .map_err(|e| ExecError::Storage(e.to_string()))
    }

    async fn run(
        &self,
        l: &Launch,
        limits: &coral_policy::Limits,
        timeout: Duration,
        cap: u64,
        job: &ExecJob,
    ) -> ExecOutcome {
        let cg = match &self.cgroups {
            Some(c) => match c.create(&l.id) {
                Ok(cg) => Some(cg),
                Err(e) => {
                    return ExecOutcome {
                        error: Some(format!("cannot create the command's cgroup: {e}")),
                        ..Default::default()
                    };
                }
            },
            None => None,
        };
        let outcome = match &self.spawner {
            Some(spawner) => {
                let req = spawner::RunRequest {
                    id: l.id.clone(),
                    caller: l.caller.clone(),
                    service: l.service.clone(),
                    program: l.program.clone(),
                    launch: l.launch.clone(),
                    argv0: l.argv0.clone(),
                    args: l.args.clone(),
                    rule: l.rule.clone(),
                    cgroup_procs: cg.as_ref().map(|c| c.procs_files()).unwrap_or_default(),
                };
                match spawner.run(req).await {
                    Ok(r) => {
                        tracing::debug!(exec_id = %l.id, pid = r.pid, "command started");
                        let exited = r.exited;
                        let started = run::Started {
                            stdout: Some(Box::new(r.stdout)),
                            stderr: Some(Box::new(r.stderr)),
                            exit: Box::pin(async move {
                                exited
                                    .await
                                    .unwrap_or_else(|_| Err("the exec spawner has stopped".into()))
                            }),
                        };
                        let kill = || {
                            if let Some(cg) = &cg {
                                cg.kill();
                            }
                            spawner.kill(&l.id);
                        };
                        run::supervise(
                            &job.output,
                            started,
                            &kill,
                            timeout,
                            cap,
                            job.cancel.clone(),
                        )
                        .await
                    }
                    Err(e) => ExecOutcome {
                        error: Some(format!("cannot start {}: {e}", l.launch)),
                        ..Default::default()
                    },
                }
            }
            None => {
                self.run_here(l, limits, cg.as_ref(), timeout, cap, job)
                    .await
            }
        };
        if let Some(cg) = cg {
            cg.remove().await;
        }
        outcome
    }

    /// Without a spawner (the agent library used on its own): the agent
    /// starts the command itself, in its process group, without landlock.
    async fn run_here(
        &self,
        l: &Launch,
        limits: &coral_policy::Limits,
        cg: Option<&cgroup::ExecCgroup>,
        timeout: Duration,
        cap: u64,
        job: &ExecJob,
    ) -> ExecOutcome {
        let env = limits.filter_env(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        );
        let mut cmd = tokio::process::Command::new(&l.launch);
        cmd.arg0(&l.argv0)
            .args(&l.args)
            .env_clear()
            .envs(env)
            .current_dir(&limits.cwd)
            .process_group(0)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                return ExecOutcome {
                    error: Some(format!("cannot start {}: {e}", l.launch)),
                    ..Default::default()
                };
            }
        };
        let pgid = child.id();
        let started = run::Started {
            stdout: child.stdout.take().map(|s| Box::new(s) as run::Reader),
            stderr: child.stderr.take().map(|s| Box::new(s) as run::Reader),
            exit: Box::pin(async move {
                use std::os::unix::process::ExitStatusExt as _;
                child
                    .wait()
                    .await
                    .map(|st| (st.code(), st.signal()))
                    .map_err(|e| e.to_string())
            }),
        };
        let kill = || {
            if let Some(cg) = cg {
                cg.kill();
            }
            if let Some(pgid) = pgid {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pgid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        };
        run::supervise(
            &job.output,
            started,
            &kill,
            timeout,
            cap,
            job.cancel.clone(),
        )
        .await
    }

    fn job(&self, exec_id: &str) -> Result<Arc<ExecJob>, ExecError> {
        self.jobs
            .lock()
            .expect("jobs lock")
            .get(exec_id)
            .cloned()
            .ok_or_else(|| ExecError::UnknownExec(exec_id.to_string()))
    }

    pub(crate) async fn poll(
        &self,
        exec_id: &str,
        offset: u64,
        wait_ms: u64,
    ) -> Result<ExecPoll, ExecError> {
        let job = self.job(exec_id)?;
        let wait = Duration::from_millis(wait_ms).min(MAX_WAIT);
        let r = job.output.poll(offset, wait).await.map_err(
            |run::PollError::BadOffset { offset, base, end }| {
                ExecError::Invalid(format!(
                    "offset {offset} is outside the output held ({base}..={end})"
                ))
            },
        )?;
        if r.done.is_some() {
            // Collected: forget it.
            self.jobs.lock().expect("jobs lock").remove(exec_id);
        }
        Ok(r)
    }

    pub(crate) fn cancel(&self, exec_id: &str) -> Result<(), ExecError> {
        let job = self.job(exec_id)?;
        tracing::info!(exec_id, "exec cancelled by the caller");
        job.cancel.cancel();
        Ok(())
    }

    pub(crate) async fn audit(
        &self,
        agent: (&str, &str),
        q: AuditQuery,
    ) -> Result<Vec<ExecAuditRecord>, ExecError> {
        let audit = self.audit.clone();
        let (id, name) = (agent.0.to_string(), agent.1.to_string());
        tokio::task::spawn_blocking(move || {
            audit.query(
                &id,
                &name,
                q.service.as_deref(),
                q.since_ms,
                q.limit.clamp(1, 10_000),
            )
        })
        .await
        .map_err(|e| ExecError::Storage(e.to_string()))?
        .map_err(|e| ExecError::Storage(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_copies_of_huge_requests_are_bounded_and_cut_on_characters() {
        let argv: Vec<String> = (0..2000).map(|_| "€".repeat(1000)).collect();
        let s = summarise_argv(&argv);
        assert_eq!(s.len(), 33);
        assert_eq!(s[0].chars().count(), 257);
        assert_eq!(s[32], "… 1968 more arguments");
        assert_eq!(cut("ab", 2), "ab");
    }

    #[test]
    fn programs_resolve_along_the_fixed_path_only() {
        let sh = resolve("sh").unwrap();
        assert!(
            sh.starts_with("/usr/bin/") || sh.starts_with("/bin/"),
            "{sh}"
        );
        assert!(resolve("definitely-not-a-program-cexec").is_err());
        assert_eq!(resolve("./x").unwrap(), "./x");
        assert_eq!(
            resolve("/bin/../bin/true").unwrap(),
            std::fs::canonicalize("/bin/true")
                .unwrap()
                .to_string_lossy()
        );
    }
}
