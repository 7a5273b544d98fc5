//! One running command: its output buffer (bounded, acknowledged by the
//! poller's offset) and the task that pumps output, enforces the timeout
//! and kills the whole process group (and cgroup) at the end.

use coral_proto::{ExecChunk, ExecOutcome, OutputStream};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Output held for the poller beyond this stops the reader (back-pressure
/// on the pipe), so a slow client never grows the agent's memory.
pub(crate) const WINDOW: usize = 4 << 20;
/// At most this much output per poll answer.
const MAX_POLL_BYTES: usize = 1 << 20;
const READ_CHUNK: usize = 64 << 10;

struct Buf {
    /// Offset of the first byte held.
    base: u64,
    chunks: VecDeque<ExecChunk>,
    buffered: usize,
    /// Offset after the last byte held.
    end: u64,
    /// Bytes of output kept (the marker is not counted).
    kept: u64,
    truncated: bool,
    done: Option<ExecOutcome>,
    last_poll: Instant,
}

/// A command's output as the poller sees it.
pub(crate) struct Output {
    buf: Mutex<Buf>,
    /// Bumped when data arrives or the command is done.
    changed: watch::Sender<u64>,
    /// Bumped when the poller acknowledges data.
    drained: watch::Sender<u64>,
}

pub(crate) enum PollError {
    BadOffset { offset: u64, base: u64, end: u64 },
}

impl Output {
    pub(crate) fn new() -> Output {
        Output {
            buf: Mutex::new(Buf {
                base: 0,
                chunks: VecDeque::new(),
                buffered: 0,
                end: 0,
                kept: 0,
                truncated: false,
                done: None,
                last_poll: Instant::now(),
            }),
            changed: watch::channel(0).0,
            drained: watch::channel(0).0,
        }
    }

    fn push(&self, stream: OutputStream, data: Vec<u8>, counted: bool) {
        {
            let mut b = self.buf.lock().expect("output lock");
            b.end += data.len() as u64;
            b.buffered += data.len();
            if counted {
                b.kept += data.len() as u64;
            }
            b.chunks.push_back(ExecChunk { stream, data });
        }
        self.changed.send_modify(|v| *v += 1);
    }

    pub(crate) fn finish(&self, outcome: ExecOutcome) {
        self.buf.lock().expect("output lock").done = Some(outcome);
        self.changed.send_modify(|v| *v += 1);
    }

    /// (bytes kept, truncated) so far.
    pub(crate) fn totals(&self) -> (u64, bool) {
        let b = self.buf.lock().expect("output lock");
        (b.kept, b.truncated)
    }

    /// (end offset, bytes waiting for the poller).
    fn progress(&self) -> (u64, usize) {
        let b = self.buf.lock().expect("output lock");
        (b.end, b.buffered)
    }

    /// When the poller last asked, and whether the command is done.
    pub(crate) fn idle(&self) -> (Duration, bool) {
        let b = self.buf.lock().expect("output lock");
        (b.last_poll.elapsed(), b.done.is_some())
    }

    /// Waits until the poller has taken enough that the buffer is below
    /// the window.
    async fn wait_space(&self, cancel: &CancellationToken) {
        loop {
            let mut rx = self.drained.subscribe();
            if self.buf.lock().expect("output lock").buffered < WINDOW {
                return;
            }
            tokio::select! {
                _ = rx.changed() => {}
                _ = cancel.cancelled() => return,
            }
        }
    }

    /// Everything after `offset` (up to a limit), waiting up to `wait` for
    /// something to arrive. Data before `offset` is dropped: the poller has it.
    pub(crate) async fn poll(
        &self,
        offset: u64,
        wait: Duration,
    ) -> Result<coral_proto::ExecPoll, PollError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let mut rx = self.changed.subscribe();
            {
                let mut b = self.buf.lock().expect("output lock");
                b.last_poll = Instant::now();
                if offset < b.base || offset > b.end {
                    return Err(PollError::BadOffset {
                        offset,
                        base: b.base,
                        end: b.end,
                    });
                }
                let mut acked = false;
                while b.base < offset {
                    let need = (offset - b.base) as usize;
                    let front = b.chunks.front_mut().expect("bytes below end are held");
                    if front.data.len() <= need {
                        let n = front.data.len();
                        b.chunks.pop_front();
                        b.base += n as u64;
                        b.buffered -= n;
                    } else {
                        front.data.drain(..need);
                        b.base += need as u64;
                        b.buffered -= need;
                    }
                    acked = true;
                }
                if acked {
                    self.drained.send_modify(|v| *v += 1);
                }
                if !b.chunks.is_empty() || b.done.is_some() {
                    let mut chunks = Vec::new();
                    let mut size = 0;
                    for c in &b.chunks {
                        if size > 0 && size + c.data.len() > MAX_POLL_BYTES {
                            break;
                        }
                        let take = c.data.len().min(MAX_POLL_BYTES - size);
                        chunks.push(ExecChunk {
                            stream: c.stream,
                            data: c.data[..take].to_vec(),
                        });
                        size += take;
                        if size >= MAX_POLL_BYTES {
                            break;
                        }
                    }
                    let next_offset = offset + size as u64;
                    let done = if next_offset == b.end {
                        b.done.clone()
                    } else {
                        None
                    };
                    return Ok(coral_proto::ExecPoll {
                        chunks,
                        next_offset,
                        done,
                    });
                }
            }
            tokio::select! {
                _ = rx.changed() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Ok(coral_proto::ExecPoll { chunks: Vec::new(), next_offset: offset, done: None });
                }
            }
        }
    }
}

async fn read_opt<R: AsyncRead + Unpin>(
    r: &mut Option<R>,
    buf: &mut [u8],
) -> std::io::Result<usize> {
    match r {
        Some(r) => r.read(buf).await,
        None => std::future::pending().await,
    }
}

/// Reads stdout and stderr into `out` until both close, or until `cap`
/// bytes were kept: then both pipes are closed (the command gets SIGPIPE
/// on its next write) and a marker is added.
async fn pump(
    out: &Output,
    stdout: Option<Reader>,
    stderr: Option<Reader>,
    cap: u64,
    cancel: CancellationToken,
) {
    let (mut so, mut se) = (stdout, stderr);
    let mut b1 = vec![0u8; READ_CHUNK];
    let mut b2 = vec![0u8; READ_CHUNK];
    let mut kept = 0u64;
    while so.is_some() || se.is_some() {
        out.wait_space(&cancel).await;
        let (stream, r) = tokio::select! {
            r = read_opt(&mut so, &mut b1) => (OutputStream::Stdout, r),
            r = read_opt(&mut se, &mut b2) => (OutputStream::Stderr, r),
            _ = cancel.cancelled() => break,
        };
        let n = match r {
            Ok(0) | Err(_) => {
                match stream {
                    OutputStream::Stdout => so = None,
                    OutputStream::Stderr => se = None,
                }
                continue;
            }
            Ok(n) => n,
        };
        let data = match stream {
            OutputStream::Stdout => &b1[..n],
            OutputStream::Stderr => &b2[..n],
        };
        let room = (cap - kept) as usize;
        if n > room {
            if room > 0 {
                out.push(stream, data[..room].to_vec(), true);
            }
            out.buf.lock().expect("output lock").truncated = true;
            out.push(
                OutputStream::Stderr,
                format!("\n[coral: output cut at {cap} bytes (the rule's max_output_bytes)]\n")
                    .into_bytes(),
                false,
            );
            break; // dropping the pipes closes them
        }
        kept += n as u64;
        out.push(stream, data.to_vec(), true);
    }
}

/// One of a command's output pipes.
pub(crate) type Reader = Box<dyn AsyncRead + Unpin + Send>;

/// A command that has started: its output pipes and how it ends.
pub(crate) struct Started {
    pub stdout: Option<Reader>,
    pub stderr: Option<Reader>,
    /// Resolves when the command has ended: (exit code, signal).
    pub exit: Pin<Box<dyn Future<Output = super::spawner::Exit> + Send>>,
}

/// Supervises a started command until it ends; returns how. `kill` kills
/// its process group and cgroup.
pub(crate) async fn supervise(
    out: &Output,
    cmd: Started,
    kill: &(dyn Fn() + Sync),
    timeout: Duration,
    cap: u64,
    cancel: CancellationToken,
) -> ExecOutcome {
    let started = Instant::now();
    let stop_pump = CancellationToken::new();
    let pump_fut = pump(out, cmd.stdout, cmd.stderr, cap, stop_pump.clone());
    tokio::pin!(pump_fut);
    let mut exit = cmd.exit;
    let mut pump_done = false;
    let mut timed_out = false;
    let mut cancelled = false;
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let status = loop {
        tokio::select! {
            s = &mut exit => break s,
            _ = &mut pump_fut, if !pump_done => pump_done = true,
            _ = &mut deadline, if !timed_out && !cancelled => {
                timed_out = true;
                kill();
            }
            _ = cancel.cancelled(), if !timed_out && !cancelled => {
                cancelled = true;
                kill();
            }
        }
    };
    // Whatever the command left behind in its group goes too; then the
    // pipes close and the pump ends. A process that escaped both (no
    // cgroup, and it changed its process group) only keeps a pipe open
    // until the grace period ends.
    kill();
    // The grace restarts while output still flows or waits for the poller.
    while !pump_done {
        let before = out.progress();
        tokio::select! {
            _ = &mut pump_fut => pump_done = true,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {
                let now = out.progress();
                if (now == before && now.1 < WINDOW) || cancel.is_cancelled() {
                    stop_pump.cancel();
                    (&mut pump_fut).await;
                    pump_done = true;
                }
            }
        }
    }
    let (kept, truncated) = out.totals();
    let mut outcome = ExecOutcome {
        timed_out,
        cancelled,
        truncated,
        output_bytes: kept,
        duration_us: started.elapsed().as_micros() as u64,
        ..Default::default()
    };
    match status {
        Ok((code, signal)) => {
            outcome.exit_code = code;
            outcome.signal = signal;
        }
        Err(e) => outcome.error = Some(format!("cannot wait for the command: {e}")),
    }
    outcome
}
