//! Local Unix sockets between the CLI and the daemons: where they live and how
//! connections are framed and authenticated.
//!
//! Sockets live in `$XDG_RUNTIME_DIR/coral/` (or `/tmp/coral-<uid>/` when
//! there is no runtime dir), a directory created 0700 and required to be owned
//! by the current user. Both ends check the peer's uid with `SO_PEERCRED`:
//! a daemon serves only its own user, and a client talks only to a daemon of
//! its own user.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tarpc::serde_transport::Transport;
use tarpc::tokio_serde::formats::Json;
use tarpc::tokio_util::codec::LengthDelimitedCodec;
use tokio::net::{UnixListener, UnixStream};

/// Largest frame accepted on a local socket.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// The current real uid.
pub fn current_uid() -> u32 {
    nix::unistd::getuid().as_raw()
}

/// The per-user runtime directory for Coral's sockets and pid files, created
/// 0700 if missing. Refuses a directory owned by someone else.
pub fn runtime_dir() -> io::Result<PathBuf> {
    let base = match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("coral"),
        _ => std::env::temp_dir().join(format!("coral-{}", current_uid())),
    };
    ensure_private_dir(&base)?;
    Ok(base)
}

/// Creates `dir` (and parents) with mode 0700 if missing; refuses an existing
/// directory owned by another user or writable by others.
pub fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("cannot create {}: {e}", dir.display()),
            ));
        }
    }
    let meta = std::fs::metadata(dir)?;
    if meta.uid() != current_uid() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is owned by uid {}, not by you (uid {}); remove it or set XDG_RUNTIME_DIR",
                dir.display(),
                meta.uid(),
                current_uid()
            ),
        ));
    }
    if meta.permissions().mode() & 0o022 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

pub fn colony_socket() -> io::Result<PathBuf> {
    Ok(runtime_dir()?.join("colony.sock"))
}

pub fn agent_socket() -> io::Result<PathBuf> {
    Ok(runtime_dir()?.join("agent.sock"))
}

/// The colony's MCP socket that belongs with its control socket `control`
/// (the colony serves it, `coral ask` and `coral mcp` connect to it).
pub fn mcp_socket_beside(control: &Path) -> PathBuf {
    control.with_file_name("colony-mcp.sock")
}

/// A JSON, length-delimited transport over a stream.
pub type JsonTransport<S, Req, Resp> = Transport<S, Req, Resp, Json<Req, Resp>>;

/// Frames a connected stream (Unix or TCP) for tarpc: length-delimited JSON
/// frames of at most [`MAX_FRAME`] bytes.
pub fn framed<S, Req, Resp>(stream: S) -> JsonTransport<S, Req, Resp>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite,
    Req: for<'de> serde::Deserialize<'de>,
    Resp: serde::Serialize,
{
    let codec = LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME)
        .new_codec();
    tarpc::serde_transport::new(
        tarpc::tokio_util::codec::Framed::new(stream, codec),
        Json::default(),
    )
}

/// Returns an error unless the peer of `stream` runs as `uid`.
pub fn check_peer(stream: &UnixStream, uid: u32) -> io::Result<()> {
    let cred = stream.peer_cred()?;
    if cred.uid() != uid {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "peer uid {} (pid {}) is not the owner uid {uid}",
                cred.uid(),
                cred.pid().unwrap_or(0)
            ),
        ));
    }
    Ok(())
}

/// Connects to a daemon's local socket and checks that the daemon runs as
/// the current user.
pub async fn connect(path: &Path) -> io::Result<UnixStream> {
    let stream = UnixStream::connect(path).await?;
    check_peer(&stream, current_uid())?;
    Ok(stream)
}

/// Accepts connections on `listener` and hands each one whose peer runs as
/// the current user to `on_conn`; other peers are dropped (and logged, at
/// most once a second). Runs until the task is aborted.
pub async fn serve_local(listener: UnixListener, on_conn: impl Fn(UnixStream)) {
    let uid = current_uid();
    let refusals = RateLimited::new(Duration::from_secs(1));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "local accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match check_peer(&stream, uid) {
            Ok(()) => on_conn(stream),
            Err(e) => {
                if let Some(suppressed) = refusals.allow() {
                    tracing::warn!(error = %e, suppressed, "refused local connection");
                }
            }
        }
    }
}

/// Serves a tarpc service on one connection, each call in its own task.
#[macro_export]
macro_rules! spawn_channel {
    ($transport:expr, $serve:expr) => {{
        use $crate::reexport::{Channel as _, StreamExt as _};
        let channel = $crate::reexport::BaseChannel::with_defaults($transport);
        ::tokio::spawn(channel.execute($serve).for_each(|call| async {
            ::tokio::spawn(call);
        }));
    }};
}

/// Lets an event through at most once per period, counting the rest.
pub struct RateLimited {
    period: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl RateLimited {
    pub fn new(period: Duration) -> Self {
        RateLimited {
            period,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(n)` if the event may be logged now, `n` being how many were
    /// suppressed since the last one; `None` to stay quiet.
    pub fn allow(&self) -> Option<u64> {
        let mut st = self.state.lock().expect("rate limiter lock");
        let now = Instant::now();
        match st.0 {
            Some(last) if now.duration_since(last) < self.period => {
                st.1 += 1;
                None
            }
            _ => {
                let n = st.1;
                *st = (Some(now), 0);
                Some(n)
            }
        }
    }
}
