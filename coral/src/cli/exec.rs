//! `coral exec`: run a command on a service's host under its policy,
//! stream the output, and exit with the remote command's code.

use super::args::ExecArgs;
use super::client::{colony_client, colony_gone, ctx};
use super::output::out;
use anyhow::anyhow;
use coral_proto::exit::{Coded, EX_NOPERM, Exit, Unavailable, Usage};
use std::io::Write;
use std::time::Duration;

fn exec_error(e: coral_proto::ExecError) -> anyhow::Error {
    use coral_proto::ExecError as E;
    match e {
        E::UnknownService(_) | E::Ambiguous { .. } | E::Invalid(_) => Usage(e.to_string()).into(),
        E::Unavailable(_) | E::Refused(_) => Unavailable(e.to_string()).into(),
        other => anyhow!("{other}"),
    }
}

/// `coral exec`: start, stream output as it comes, return the remote code.
pub(super) async fn exec(args: ExecArgs) -> anyhow::Result<()> {
    use coral_proto::{ExecVerdict, OutputStream};
    let argv = coral_policy::split_command_line(&args.command).map_err(|e| Usage(e.to_string()))?;
    let timeout_ms = match args.timeout {
        Some(d) if d.is_zero() => return Err(Usage("--timeout must be above 0".into()).into()),
        Some(d) => Some(d.as_millis().min(u64::MAX as u128) as u64),
        None => None,
    };
    let c = colony_client().await?;
    let req = coral_proto::ExecStartRequest {
        service: args.service.clone(),
        agent: args.agent.clone(),
        argv: argv.clone(),
        timeout_ms,
    };
    let started = c
        .exec_start(ctx(), req)
        .await
        .map_err(|e| colony_gone(&e))?
        .map_err(exec_error)?;
    let mut doc = serde_json::json!({
        "service": args.service,
        "agent": started.agent_name,
        "agent_id": started.agent_id,
        "exec_id": started.exec_id,
        "argv": argv,
        "program": started.program,
        "verdict": started.verdict,
        "rule": started.rule,
        "reason": started.reason,
    });
    let refused = match started.verdict {
        ExecVerdict::Allowed => None,
        ExecVerdict::Denied => Some(Coded {
            code: EX_NOPERM,
            msg: format!(
                "denied by the policy on agent {}: {}",
                started.agent_name, started.reason
            ),
        }),
        ExecVerdict::NotFound => Some(Coded {
            code: 127,
            msg: format!("on agent {}: {}", started.agent_name, started.reason),
        }),
    };
    if let Some(err) = refused {
        if args.json {
            out(&(serde_json::to_string_pretty(&doc)? + "\n"))?;
            return Err(Exit(err.code).into());
        }
        return Err(err.into());
    }

    let (mut stdout_buf, mut stderr_buf) = (Vec::new(), Vec::new());
    let mut offset = 0;
    let mut cancelled = false;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let done = loop {
        let poll = c.exec_poll(
            ctx(),
            started.agent_id.clone(),
            started.exec_id.clone(),
            offset,
            500,
        );
        let p = tokio::select! {
            r = poll => r.map_err(|e| colony_gone(&e))?.map_err(exec_error)?,
            _ = &mut ctrl_c, if !cancelled => {
                cancelled = true;
                let _ = c.exec_cancel(ctx(), started.agent_id.clone(), started.exec_id.clone()).await;
                continue;
            }
        };
        offset = p.next_offset;
        for chunk in p.chunks {
            let written = match (args.json, chunk.stream) {
                (true, OutputStream::Stdout) => {
                    stdout_buf.extend_from_slice(&chunk.data);
                    Ok(())
                }
                (true, OutputStream::Stderr) => {
                    stderr_buf.extend_from_slice(&chunk.data);
                    Ok(())
                }
                (false, OutputStream::Stdout) => {
                    let mut o = std::io::stdout().lock();
                    o.write_all(&chunk.data).and_then(|()| o.flush())
                }
                (false, OutputStream::Stderr) => {
                    let mut o = std::io::stderr().lock();
                    o.write_all(&chunk.data).and_then(|()| o.flush())
                }
            };
            if let Err(e) = written {
                // Nobody reads our output any more: stop the command.
                let _ = c
                    .exec_cancel(ctx(), started.agent_id.clone(), started.exec_id.clone())
                    .await;
                return Err(e.into());
            }
        }
        if let Some(done) = p.done {
            break done;
        }
    };
    let (code, msg) = if let Some(e) = &done.error {
        (126, Some(format!("on agent {}: {e}", started.agent_name)))
    } else if done.timed_out {
        (
            124,
            Some(format!(
                "timed out after {}; the command's process group was killed",
                humantime::format_duration(Duration::from_millis(started.timeout_ms))
            )),
        )
    } else if done.cancelled {
        (
            130,
            Some("cancelled; the command's process group was killed".into()),
        )
    } else if let Some(sig) = done.signal {
        let why = if done.truncated && sig == 13 {
            format!(
                "output cut at {} bytes; the command was stopped by SIGPIPE",
                started.max_output_bytes
            )
        } else {
            format!("the command was killed by signal {sig}")
        };
        (128 + sig, Some(why))
    } else {
        (done.exit_code.unwrap_or(1), None)
    };
    if args.json {
        let obj = doc.as_object_mut().expect("object");
        obj.insert("outcome".into(), serde_json::to_value(&done)?);
        obj.insert("exit_code".into(), code.into());
        obj.insert("stdout".into(), String::from_utf8_lossy(&stdout_buf).into());
        obj.insert("stderr".into(), String::from_utf8_lossy(&stderr_buf).into());
        out(&(serde_json::to_string_pretty(&doc)? + "\n"))?;
        return if code == 0 {
            Ok(())
        } else {
            Err(Exit(code).into())
        };
    }
    match (code, msg) {
        (0, _) => Ok(()),
        (code, Some(msg)) => Err(Coded { code, msg }.into()),
        (code, None) => Err(Exit(code).into()),
    }
}
