//! `coral exec` through the colony: find the agent hosting the service,
//! dial its `AgentRpc` (the address it registered), and forward the request
//! with the caller the colony authenticated. Also gathers `coral audit`.

use super::Shared;
use coral_proto::services::AgentRpcClient;
use coral_proto::{
    AgentState, AuditQuery, AuditReport, ExecCaller, ExecError, ExecPoll, ExecRequest,
    ExecStartRequest, ExecStarted, QueryError,
};
use std::time::{Duration, Instant};
use tarpc::context;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const RPC_TIMEOUT: Duration = Duration::from_secs(10);

fn ctx(extra: Duration) -> context::Context {
    let mut c = context::current();
    c.deadline = Instant::now() + RPC_TIMEOUT + extra;
    c
}

/// A word for the audit's `cli_equivalent`: quoted when the shell would
/// otherwise read it differently.
pub(crate) fn quote(w: &str) -> String {
    let plain = !w.is_empty()
        && w.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c));
    if plain {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', "'\\''"))
    }
}

pub(crate) fn command_line(argv: &[String]) -> String {
    argv.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" ")
}

/// The caller as the colony knows it: the peer of the local socket.
pub(crate) fn caller_from_cred(
    cred: Option<&tokio::net::unix::UCred>,
    colony_id: &str,
) -> ExecCaller {
    use nix::unistd::{Gid, Group, Uid, User};
    let mut c = ExecCaller {
        identity: Some(colony_id.to_string()),
        ..Default::default()
    };
    let Some(cred) = cred else {
        return c;
    };
    c.uid = Some(cred.uid());
    c.pid = cred.pid().map(|p| p as u32);
    let mut gids = vec![cred.gid()];
    if let Ok(Some(user)) = User::from_uid(Uid::from_raw(cred.uid())) {
        if let Ok(cname) = std::ffi::CString::new(user.name.clone())
            && let Ok(list) = nix::unistd::getgrouplist(&cname, Gid::from_raw(cred.gid()))
        {
            gids.extend(list.iter().map(|g| g.as_raw()));
        }
        c.user = Some(user.name);
    }
    gids.sort_unstable();
    gids.dedup();
    c.groups = gids
        .iter()
        .filter_map(|g| {
            Group::from_gid(Gid::from_raw(*g))
                .ok()
                .flatten()
                .map(|g| g.name)
        })
        .collect();
    c.gids = gids;
    c
}

fn ago(now: i64, then: i64) -> String {
    let s = ((now - then).max(0) / 1000) as u64;
    humantime::format_duration(Duration::from_secs(s)).to_string()
}

/// Why the colony could not open a connection to an agent's `AgentRpc`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DialError {
    #[error("no answer from {addr} within {CONNECT_TIMEOUT:?}")]
    Timeout { addr: String },
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
}

impl Shared {
    /// A client for an agent's `AgentRpc`, reusing a live connection.
    pub(crate) async fn agent_client(
        &self,
        agent_id: &str,
        addr: &str,
    ) -> Result<AgentRpcClient, DialError> {
        if let Some((a, c)) = self
            .agent_clients
            .lock()
            .expect("agent_clients lock")
            .get(agent_id)
            && a == addr
        {
            return Ok(c.clone());
        }
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| DialError::Timeout {
                addr: addr.to_string(),
            })?
            .map_err(|source| DialError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        let client =
            AgentRpcClient::new(Default::default(), coral_proto::local::framed(stream)).spawn();
        self.agent_clients
            .lock()
            .expect("agent_clients lock")
            .insert(agent_id.to_string(), (addr.to_string(), client.clone()));
        Ok(client)
    }

    pub(crate) fn forget_client(&self, agent_id: &str) {
        self.agent_clients
            .lock()
            .expect("agent_clients lock")
            .remove(agent_id);
    }

    fn agent_addr(&self, agent_id: &str) -> Result<(String, String), ExecError> {
        let agents = self
            .registry
            .lock()
            .expect("registry lock")
            .rpc_agents()
            .map_err(|e| ExecError::Storage(e.to_string()))?;
        agents
            .into_iter()
            .find(|(id, _, _)| id == agent_id)
            .map(|(_, name, addr)| (name, addr))
            .ok_or_else(|| {
                ExecError::Unavailable(format!("agent {agent_id} is not known to this colony"))
            })
    }

    /// Calls an agent, redialling once if a cached connection has died.
    async fn call_agent<T, F, Fut>(
        &self,
        agent_id: &str,
        name: &str,
        addr: &str,
        f: F,
    ) -> Result<T, ExecError>
    where
        F: Fn(AgentRpcClient) -> Fut,
        Fut: std::future::Future<Output = Result<Result<T, ExecError>, tarpc::client::RpcError>>,
    {
        let unreachable = |why: String| {
            ExecError::Unavailable(format!(
                "cannot reach agent {name} at {addr}: {why} (is it running? see 'coral colony status')"
            ))
        };
        for attempt in 0..2 {
            let client = self
                .agent_client(agent_id, addr)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            match f(client).await {
                Ok(r) => return r,
                Err(tarpc::client::RpcError::DeadlineExceeded) => {
                    return Err(unreachable("it did not answer in time".into()));
                }
                Err(e) => {
                    self.forget_client(agent_id);
                    if attempt == 1 {
                        return Err(unreachable(e.to_string()));
                    }
                }
            }
        }
        unreachable!("the loop returns")
    }

    pub(crate) async fn exec_start(
        &self,
        req: ExecStartRequest,
        caller: ExecCaller,
    ) -> Result<ExecStarted, ExecError> {
        if req.argv.is_empty() {
            return Err(ExecError::Invalid("empty command".into()));
        }
        coral_proto::spec::validate_name(&req.service).map_err(ExecError::Invalid)?;
        let now = coral_proto::now_ms();
        let targets = self
            .registry
            .lock()
            .expect("registry lock")
            .exec_targets(
                &req.service,
                now,
                self.config.agent_timeout.as_millis() as i64,
            )
            .map_err(|e| ExecError::Storage(e.to_string()))?;
        let mut targets: Vec<_> = match &req.agent {
            Some(a) => targets
                .into_iter()
                .filter(|t| &t.name == a || &t.agent_id == a)
                .collect(),
            None => targets,
        };
        if targets.is_empty() {
            return Err(match &req.agent {
                Some(a) => ExecError::UnknownService(format!("{}' on agent '{a}", req.service)),
                None => ExecError::UnknownService(req.service.clone()),
            });
        }
        if targets.len() > 1 {
            let online: Vec<_> = targets
                .iter()
                .filter(|t| t.state == AgentState::Online)
                .cloned()
                .collect();
            if online.len() != 1 {
                return Err(ExecError::Ambiguous {
                    service: req.service.clone(),
                    agents: targets.iter().map(|t| t.name.clone()).collect(),
                });
            }
            targets = online;
        }
        let t = targets.remove(0);
        let cli = format!(
            "coral exec {} {}",
            quote(&req.service),
            quote(&command_line(&req.argv))
        );
        let actor = {
            let c = coral_policy::Caller {
                identity: None,
                roles: caller.roles.clone(),
                uid: caller.uid,
                user: caller.user.clone(),
                gids: Vec::new(),
                groups: Vec::new(),
            };
            match caller.pid {
                Some(p) => format!("{c} pid:{p}"),
                None => c.to_string(),
            }
        };
        let detail = format!(
            "{} on agent {} ({}): {}",
            req.service,
            t.name,
            t.state.as_str(),
            command_line(&req.argv)
        );
        if let Err(e) = self.audit.record(&actor, "exec", &detail, Some(&cli)) {
            tracing::error!(error = %e, "cannot write the colony audit record; not forwarding the exec");
            return Err(ExecError::Storage(e.to_string()));
        }
        match t.state {
            AgentState::Online => {}
            AgentState::Stopped => {
                return Err(ExecError::Unavailable(format!(
                    "agent {} hosting '{}' is stopped (it left {} ago)",
                    t.name,
                    req.service,
                    ago(now, t.last_seen_ms)
                )));
            }
            AgentState::Offline => {
                return Err(ExecError::Unavailable(format!(
                    "agent {} hosting '{}' is offline (last seen {} ago)",
                    t.name,
                    req.service,
                    ago(now, t.last_seen_ms)
                )));
            }
        }
        let Some(addr) = t.rpc_addr.clone() else {
            return Err(ExecError::Unavailable(format!(
                "agent {} does not serve exec (it registered without an rpc address; upgrade it)",
                t.name
            )));
        };
        let origin = format!(
            "colony {} local socket{}",
            self.colony_id,
            caller.pid.map(|p| format!(" pid {p}")).unwrap_or_default()
        );
        let areq = ExecRequest {
            service: req.service,
            argv: req.argv,
            timeout_ms: req.timeout_ms,
            caller,
            origin,
        };
        self.call_agent(&t.agent_id, &t.name, &addr, |c| {
            let r = areq.clone();
            async move { c.exec_start(ctx(Duration::ZERO), r).await }
        })
        .await
    }

    pub(crate) async fn exec_poll(
        &self,
        agent_id: &str,
        exec_id: String,
        offset: u64,
        wait_ms: u64,
    ) -> Result<ExecPoll, ExecError> {
        let (name, addr) = self.agent_addr(agent_id)?;
        let wait = wait_ms.min(5_000);
        self.call_agent(agent_id, &name, &addr, |c| {
            let id = exec_id.clone();
            async move {
                c.exec_poll(ctx(Duration::from_millis(wait)), id, offset, wait)
                    .await
            }
        })
        .await
    }

    pub(crate) async fn exec_cancel(
        &self,
        agent_id: &str,
        exec_id: String,
    ) -> Result<(), ExecError> {
        let (name, addr) = self.agent_addr(agent_id)?;
        self.call_agent(agent_id, &name, &addr, |c| {
            let id = exec_id.clone();
            async move { c.exec_cancel(ctx(Duration::ZERO), id).await }
        })
        .await
    }

    /// Every agent's exec audit log (asked in parallel) and the colony's table.
    pub(crate) async fn audit_report(&self, q: AuditQuery) -> Result<AuditReport, QueryError> {
        if q.limit == 0 || q.limit > 10_000 {
            return Err(QueryError::Invalid(
                "limit must be between 1 and 10000".into(),
            ));
        }
        let agents = self
            .registry
            .lock()
            .expect("registry lock")
            .rpc_agents()
            .map_err(|e| QueryError::Storage(e.to_string()))?;
        let asks = agents.iter().map(|(id, name, addr)| {
            let q = q.clone();
            async move {
                let r = self
                    .call_agent(id, name, addr, |c| {
                        let q = q.clone();
                        async move { c.audit(ctx(Duration::ZERO), q).await }
                    })
                    .await;
                (name.clone(), r)
            }
        });
        let mut report = AuditReport::default();
        for (name, r) in futures::future::join_all(asks).await {
            match r {
                Ok(rows) => report.exec.extend(rows),
                Err(e) => report.unreachable.push(format!("{name}: {e}")),
            }
        }
        report.exec.sort_by_key(|r| std::cmp::Reverse(r.ts_ms));
        report.exec.truncate(q.limit as usize);
        if q.service.is_none() {
            report.colony = self
                .audit
                .since(q.since_ms, q.limit)
                .map_err(|e| QueryError::Storage(e.to_string()))?;
        } else if let Some(s) = &q.service {
            // Colony rows name the service at the start of `detail`.
            report.colony = self
                .audit
                .since(q.since_ms, q.limit)
                .map_err(|e| QueryError::Storage(e.to_string()))?
                .into_iter()
                .filter(|r| r.detail.starts_with(&format!("{s} ")))
                .collect();
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_quote_what_the_shell_would_split() {
        let argv: Vec<String> = ["ss", "-tnp", "a b", "it's", "$(id)", ""]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(command_line(&argv), r#"ss -tnp 'a b' 'it'\''s' '$(id)' ''"#);
        assert_eq!(
            coral_policy::split_command_line(&command_line(&argv)).unwrap(),
            argv
        );
    }
}
