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
use coral_policy::{Caller, Decision, Limits, Request};
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

/// What runs, once judged and recorded.
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
    /// The allowing rule's environment, working directory and limits.
    limits: Arc<Limits>,
    /// The rule's timeout, or the caller's if shorter.
    timeout: Duration,
    max_output_bytes: u64,
}

impl Launch {
    /// What runs for an allowed request; `None` for a refused one.
    fn allowed(id: String, req: ExecRequest, judged: Judgement) -> Option<Launch> {
        let (Some(limits), Some(program)) = (judged.limits, judged.program) else {
            return None;
        };
        // The program runs as resolved (checked) but sees the name it was
        // asked by, as from a shell: multi-call programs (Debian's psql
        // wrapper, busybox) dispatch on it.
        Some(Launch {
            id,
            launch: launch_path(&req.argv[0], &program),
            program,
            argv0: req.argv[0].clone(),
            args: req.argv[1..].to_vec(),
            caller: req.caller,
            service: req.service,
            rule: judged.rule.unwrap_or_default(),
            limits,
            timeout: judged.timeout,
            max_output_bytes: judged.max_output_bytes,
        })
    }
}

/// What [`judge`] weighs: the facts about one request, gathered before
/// anything is recorded or run.
struct Facts<'a> {
    /// The program as resolved on this host, or why it cannot be.
    resolved: &'a Result<String, ResolveError>,
    service: &'a str,
    /// The service is connected to this agent.
    service_connected: bool,
    /// The policy's decision; asked only when the program was found and
    /// the service is connected.
    decision: Option<&'a Decision>,
    /// A running slot was free (one is taken only when the policy allows).
    slot_taken: bool,
    /// `agent.exec.max_running`.
    max_running: usize,
    /// This agent's containment, when `agent.exec.isolation = cgroup`
    /// requires a cgroup it does not have.
    missing_cgroup: Option<&'a str>,
    /// The timeout the caller asked for.
    asked_timeout: Option<Duration>,
}

/// What the agent decided about one request: what the audit records and
/// the caller is told.
#[derive(Debug, Clone, PartialEq)]
struct Judgement {
    verdict: ExecVerdict,
    /// As resolved; `None` when it was not found.
    program: Option<String>,
    /// The rule that decided.
    rule: Option<String>,
    reason: String,
    /// What the command runs under; `Some` exactly when allowed.
    limits: Option<Arc<Limits>>,
    /// Zero unless allowed.
    timeout: Duration,
    max_output_bytes: u64,
}

/// The decision on one request, from the facts alone (no I/O): not found,
/// service not connected, the policy's deny, no free running slot, and a
/// required cgroup missing each refuse it, in that order.
fn judge(f: &Facts<'_>) -> Judgement {
    let refused = |verdict, program: Option<&String>, rule: Option<String>, reason| Judgement {
        verdict,
        program: program.cloned(),
        rule,
        reason,
        limits: None,
        timeout: Duration::ZERO,
        max_output_bytes: 0,
    };
    let program = match f.resolved {
        Err(why) => return refused(ExecVerdict::NotFound, None, None, why.to_string()),
        Ok(program) => program,
    };
    let decision = match f.decision {
        Some(d) if f.service_connected => d,
        // Fail closed if the policy was not asked.
        _ => {
            return refused(
                ExecVerdict::Denied,
                Some(program),
                None,
                format!("service '{}' is not connected to this agent", f.service),
            );
        }
    };
    let rule = decision.rule.as_ref().map(|r| r.name.to_string());
    let limits = match &decision.limits {
        Some(limits) if decision.is_allowed() => limits,
        _ => {
            return refused(
                ExecVerdict::Denied,
                Some(program),
                rule,
                decision.to_string(),
            );
        }
    };
    if !f.slot_taken {
        let reason = format!(
            "{} commands are running (agent.exec.max_running); try again later",
            f.max_running
        );
        return refused(ExecVerdict::Denied, Some(program), rule, reason);
    }
    if let Some(isolation) = f.missing_cgroup {
        let reason = format!("agent.exec.isolation = cgroup but this agent has {isolation}");
        return refused(ExecVerdict::Denied, Some(program), rule, reason);
    }
    let asked = f.asked_timeout.unwrap_or(limits.timeout);
    Judgement {
        verdict: ExecVerdict::Allowed,
        program: Some(program.clone()),
        rule,
        reason: decision.to_string(),
        limits: Some(limits.clone()),
        timeout: asked.min(limits.timeout),
        max_output_bytes: limits.max_output_bytes,
    }
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

/// Why a program cannot be run on this host.
#[derive(Debug, thiserror::Error)]
enum ResolveError {
    #[error("program {cmd:?} cannot be resolved on this host: {source}")]
    Unresolvable { cmd: String, source: std::io::Error },
    #[error("program {cmd:?} is not found on this host (looked in {})", SEARCH_PATH.join(":"))]
    NotFound { cmd: String },
}

fn resolve(cmd: &str) -> Result<String, ResolveError> {
    if cmd.contains('/') {
        if !cmd.starts_with('/') {
            return Ok(cmd.to_string()); // the policy denies a relative path
        }
        return std::fs::canonicalize(cmd)
            .map(|p| p.to_string_lossy().into_owned())
            .map_err(|source| ResolveError::Unresolvable {
                cmd: cmd.to_string(),
                source,
            });
    }
    for dir in SEARCH_PATH {
        let p = Path::new(dir).join(cmd);
        if std::fs::metadata(&p).is_ok_and(|m| m.is_file())
            && let Ok(real) = std::fs::canonicalize(&p)
        {
            return Ok(real.to_string_lossy().into_owned());
        }
    }
    Err(ResolveError::NotFound {
        cmd: cmd.to_string(),
    })
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

    /// Judges, records, and spawns: [`judge`] the request (through
    /// `decide`), write its audit record (durable before anything runs),
    /// then spawn what was allowed. `services` are the services connected to this agent;
    /// `peer` is where the request came from.
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

        let (judged, slot) = self.decide(&req, &caller, services);
        self.record(&exec_id, &req, &caller_text, &origin, &judged)
            .await?;
        tracing::info!(exec_id = %exec_id, caller = %caller_text, origin = %origin, service = %req.service, argv = ?req.argv, verdict = ?judged.verdict, reason = %judged.reason, "exec");
        let started = ExecStarted {
            exec_id: exec_id.clone(),
            agent_id: agent.0.to_string(),
            agent_name: agent.1.to_string(),
            verdict: judged.verdict,
            program: judged.program.clone(),
            rule: judged.rule.clone(),
            reason: judged.reason.clone(),
            timeout_ms: judged.timeout.as_millis() as u64,
            max_output_bytes: judged.max_output_bytes,
        };
        if let (Some(slot), Some(launch)) = (slot, Launch::allowed(exec_id, req, judged)) {
            self.spawn(launch, slot);
        }
        Ok(started)
    }

    /// Gathers the facts about a request (where its program is, whether
    /// its service is here, the policy's decision, a free running slot,
    /// the containment) and [`judge`]s it. The running slot comes back
    /// only with an allowed request.
    fn decide(
        &self,
        req: &ExecRequest,
        caller: &Caller,
        services: &[String],
    ) -> (Judgement, Option<tokio::sync::OwnedSemaphorePermit>) {
        let resolved = resolve(&req.argv[0]);
        let service_connected = services.iter().any(|s| s == &req.service);
        let policy = self.policy.current();
        let decision = match &resolved {
            Ok(program) if service_connected => Some(policy.decide(&Request {
                caller,
                service: &req.service,
                program,
                args: &req.argv[1..],
            })),
            _ => None,
        };
        // A running slot, taken with the decision (issue 16: counting the
        // running jobs here let concurrent requests pass together while the
        // audit record of each was being written); held until it ends.
        let slot = decision
            .as_ref()
            .filter(|d| d.is_allowed())
            .and_then(|_| self.slots.clone().try_acquire_owned().ok());
        let missing_cgroup = (self.config.isolation == Isolation::Cgroup
            && !self.cgroups.as_ref().is_some_and(Cgroups::complete))
        .then_some(self.isolation.as_str());
        let judged = judge(&Facts {
            resolved: &resolved,
            service: &req.service,
            service_connected,
            decision: decision.as_ref(),
            slot_taken: slot.is_some(),
            max_running: self.config.max_running,
            missing_cgroup,
            asked_timeout: req.timeout_ms.map(Duration::from_millis),
        });
        let slot = slot.filter(|_| judged.verdict == ExecVerdict::Allowed);
        (judged, slot)
    }

    /// The write-ahead audit record of a judged request: durable before
    /// anything runs; if it cannot be written, nothing runs.
    async fn record(
        &self,
        exec_id: &str,
        req: &ExecRequest,
        caller: &str,
        origin: &str,
        judged: &Judgement,
    ) -> Result<(), ExecError> {
        let audit = self.audit.clone();
        let (id, caller, origin, service, argv) = (
            exec_id.to_string(),
            caller.to_string(),
            origin.to_string(),
            req.service.clone(),
            req.argv.clone(),
        );
        let (program, rule, reason) = (
            judged.program.clone(),
            judged.rule.clone(),
            judged.reason.clone(),
        );
        let allowed = judged.verdict == ExecVerdict::Allowed;
        let (timeout_ms, max_output_bytes) =
            (judged.timeout.as_millis() as u64, judged.max_output_bytes);
        tokio::task::spawn_blocking(move || {
            audit.begin(&Begin {
                exec_id: &id,
                ts_ms: coral_proto::now_ms(),
                caller: &caller,
                origin: &origin,
                service: &service,
                argv: &argv,
                program: program.as_deref(),
                allowed,
                rule: rule.as_deref(),
                reason: &reason,
                timeout_ms,
                max_output_bytes,
            })
        })
        .await
        .map_err(|e| ExecError::Storage(e.to_string()))?
        .map_err(|e| {
            tracing::error!(error = %e, "cannot write the exec audit record; not running the command");
            ExecError::Storage(e.to_string())
        })
    }

    /// Runs an allowed, recorded command in the background, holding its
    /// running slot until it ends, then records how it ended.
    fn spawn(self: &Arc<Self>, launch: Launch, slot: tokio::sync::OwnedSemaphorePermit) {
        let output = Arc::new(Output::new());
        let job = Arc::new(ExecJob {
            output: output.clone(),
            cancel: CancellationToken::new(),
        });
        self.jobs
            .lock()
            .expect("jobs lock")
            .insert(launch.id.clone(), job.clone());
        let me = self.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let outcome = me.run(&launch, &job).await;
            let audit = me.audit.clone();
            let exec_id = launch.id;
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

    async fn run(&self, l: &Launch, job: &ExecJob) -> ExecOutcome {
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
                            l.timeout,
                            l.max_output_bytes,
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
            None => self.run_here(l, cg.as_ref(), job).await,
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
        cg: Option<&cgroup::ExecCgroup>,
        job: &ExecJob,
    ) -> ExecOutcome {
        let limits = &l.limits;
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
            l.timeout,
            l.max_output_bytes,
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

    /// The decision on `program args` under a policy that allows only
    /// `/usr/bin/ss -tnp`, for on-call, for 30 s and 4 KiB of output.
    fn decided(program: &str, args: &[&str]) -> Decision {
        let policy = coral_policy::Policy::parse(
            "policy.toml",
            r#"
            [[rule]]
            name = "ss"
            callers = ["role:oncall"]
            program = "/usr/bin/ss"
            args = ["-tnp"]
            timeout = "30s"
            max_output_bytes = 4096
            "#,
        )
        .unwrap();
        let caller = Caller::from_specs(&["role:oncall"]).unwrap();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        policy.decide(&Request {
            caller: &caller,
            service: "api",
            program,
            args: &args,
        })
    }

    fn facts<'a>(resolved: &'a Result<String, ResolveError>, d: Option<&'a Decision>) -> Facts<'a> {
        Facts {
            resolved,
            service: "api",
            service_connected: true,
            decision: d,
            slot_taken: true,
            max_running: 4,
            missing_cgroup: None,
            asked_timeout: None,
        }
    }

    #[test]
    fn judge_allows_what_the_policy_allows_within_its_limits() {
        let ss = Ok("/usr/bin/ss".to_string());
        let d = decided("/usr/bin/ss", &["-tnp"]);
        let j = judge(&facts(&ss, Some(&d)));
        assert_eq!(j.verdict, ExecVerdict::Allowed);
        assert_eq!(j.program.as_deref(), Some("/usr/bin/ss"));
        assert_eq!(j.rule.as_deref(), Some("ss"));
        assert_eq!(j.reason, d.to_string());
        assert_eq!(
            (j.timeout, j.max_output_bytes),
            (Duration::from_secs(30), 4096)
        );
        assert!(j.limits.is_some());
        // The caller may ask for less time, never more.
        let shorter = Facts {
            asked_timeout: Some(Duration::from_secs(5)),
            ..facts(&ss, Some(&d))
        };
        assert_eq!(judge(&shorter).timeout, Duration::from_secs(5));
        let longer = Facts {
            asked_timeout: Some(Duration::from_secs(500)),
            ..facts(&ss, Some(&d))
        };
        assert_eq!(judge(&longer).timeout, Duration::from_secs(30));
    }

    #[test]
    fn judge_refuses_in_order_with_the_reason_and_no_limits() {
        let ss = Ok("/usr/bin/ss".to_string());
        let allowed = decided("/usr/bin/ss", &["-tnp"]);
        let refused = |f: &Facts<'_>, verdict, reason: &str, rule: Option<&str>| {
            let j = judge(f);
            assert_eq!(j.verdict, verdict, "{j:?}");
            assert_eq!(j.reason, reason);
            assert_eq!(j.rule.as_deref(), rule);
            assert_eq!(
                (j.limits, j.timeout, j.max_output_bytes),
                (None, Duration::ZERO, 0)
            );
        };
        // Not found: nothing else is looked at.
        let missing = Err(ResolveError::NotFound { cmd: "nope".into() });
        refused(
            &facts(&missing, None),
            ExecVerdict::NotFound,
            &format!(
                "program \"nope\" is not found on this host (looked in {})",
                SEARCH_PATH.join(":")
            ),
            None,
        );
        // The service is not connected (the policy was not asked).
        let elsewhere = Facts {
            service_connected: false,
            ..facts(&ss, None)
        };
        refused(
            &elsewhere,
            ExecVerdict::Denied,
            "service 'api' is not connected to this agent",
            None,
        );
        assert_eq!(judge(&elsewhere).program.as_deref(), Some("/usr/bin/ss"));
        // The policy denies: its reason, even with no slot and no cgroup.
        let denied = decided("/usr/bin/ss", &["-a"]);
        let busy = Facts {
            slot_taken: false,
            missing_cgroup: Some("process group only"),
            ..facts(&ss, Some(&denied))
        };
        refused(&busy, ExecVerdict::Denied, &denied.to_string(), None);
        // Allowed, but every running slot is taken (before the cgroup).
        let busy = Facts {
            slot_taken: false,
            missing_cgroup: Some("process group only"),
            ..facts(&ss, Some(&allowed))
        };
        refused(
            &busy,
            ExecVerdict::Denied,
            "4 commands are running (agent.exec.max_running); try again later",
            Some("ss"),
        );
        // Allowed, but the required cgroup is missing.
        let uncontained = Facts {
            missing_cgroup: Some("process group only (no cgroup: read-only)"),
            ..facts(&ss, Some(&allowed))
        };
        refused(
            &uncontained,
            ExecVerdict::Denied,
            "agent.exec.isolation = cgroup but this agent has process group only (no cgroup: read-only)",
            Some("ss"),
        );
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
