//! Errors that carry an exit code, and the exit code of any error: the one
//! place the CLI (`coral/src/cli`) and the MCP client (`coral/src/mcp.rs`)
//! take them from, and the colony (`coral/colony`) would too (today it
//! answers with typed wire errors such as `ExecError` that the CLI maps).
//!
//! It lives in `coral-proto` because that is the one crate every process
//! depends on and it builds everywhere, also in a CLI-only build without the
//! daemon crates; and an exit code is part of Coral's contract with scripts
//! just as the wire types are with other processes.
//!
//! Exit codes follow sysexits: 0 success, 1 failure, 64 usage or config
//! error, 69 a daemon is not reachable. A closed stdout (`coral ... | head`)
//! is not an error. `coral exec` passes the remote command's exit code on
//! and adds 77 (denied by policy), 124 (timed out), 126 (cannot run), 127
//! (not found on the host), 128+N (killed by signal N), 130 (cancelled).

/// A usage or config error.
pub const EX_USAGE: i32 = 64;
/// A daemon (or provider) that is not there.
pub const EX_UNAVAILABLE: i32 = 69;
/// Denied by policy.
pub const EX_NOPERM: i32 = 77;

/// A usage or config error: exit 64.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

/// A daemon that is not there: exit 69.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

/// An error with its own exit code (printed as `error: ...`).
#[derive(Debug, thiserror::Error)]
#[error("{msg}")]
pub struct Coded {
    pub code: i32,
    pub msg: String,
}

/// Exit with this code and print nothing (the remote command's own code).
#[derive(Debug, thiserror::Error)]
#[error("exit status {0}")]
pub struct Exit(pub i32);

/// The exit code for `e`, and whether it is printed (`error: ...`): a
/// closed stdout exits 0 and an [`Exit`] exits with its code, both silently;
/// [`Coded`], [`Usage`] and [`Unavailable`] with theirs; anything else 1.
pub fn exit_code(e: &anyhow::Error) -> (i32, bool) {
    if e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    }) {
        return (0, false);
    }
    if let Some(Exit(code)) = e.downcast_ref::<Exit>() {
        return (*code, false);
    }
    let code = if let Some(c) = e.downcast_ref::<Coded>() {
        c.code
    } else if e.downcast_ref::<Usage>().is_some() {
        EX_USAGE
    } else if e.downcast_ref::<Unavailable>().is_some() {
        EX_UNAVAILABLE
    } else {
        1
    };
    (code, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context as _;

    #[test]
    fn each_error_keeps_its_exit_code_through_context() {
        let code = |e: anyhow::Error| exit_code(&e.context("while doing x"));
        assert_eq!(code(Usage("u".into()).into()), (EX_USAGE, true));
        assert_eq!(code(Unavailable("u".into()).into()), (EX_UNAVAILABLE, true));
        assert_eq!(
            code(
                Coded {
                    code: 77,
                    msg: "m".into()
                }
                .into()
            ),
            (77, true)
        );
        assert_eq!(code(Exit(3).into()), (3, false));
        assert_eq!(code(anyhow::anyhow!("plain")), (1, true));
        let pipe = Err::<(), _>(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
            .context("writing")
            .unwrap_err();
        assert_eq!(exit_code(&pipe), (0, false));
    }
}
