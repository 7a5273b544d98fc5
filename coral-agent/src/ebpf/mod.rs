//! Zero-config RED metrics and the connection map, from Coral's BPF object
//! (`ebpf/bpf/coral.bpf.c`, embedded by `coral-ebpf`).
//!
//! The agent never needs privilege for this: `coral-privhelper` loads and
//! attaches the object and passes back file descriptors (maps, programs,
//! links); an agent that is root or holds `CAP_BPF` loads it itself. Either
//! way this process then holds the only references, so when it stops (or
//! dies) the kernel detaches and frees everything.
//!
//! One thread reads the per-CPU ring buffers every 100 ms, or sooner when
//! the programs wake it (a record fills a ring past a quarter, a half or
//! three quarters: once per crossing), merges the records by
//! timestamp, and feeds the [`tracker::Tracker`]. On the common path a
//! record costs no allocation (record buffers are reused) and an HTTP/1.x
//! request one, its target (methods are static strings, a request's row
//! and edge are found from borrowed parts); what remains per request is
//! reading the ring and parsing the heads (issue 14). It rewrites the kernel's
//! set of followed ports when [`Follow::request`] wakes it (`coral connect`
//! and `coral disconnect` wait for that, so they take effect before they
//! return) and at every flush;
//! every `ebpf.flush_interval` the aggregates go to the telemetry store as
//! `http_red` and `conn_edges` rows, which the link forwards to the colony
//! with the same seq checkpoints as OTLP rows.

pub mod event;
pub mod h2;
pub mod http;
pub mod pg;
pub mod redis;
pub mod tap;
pub mod tracker;

use anyhow::{anyhow, bail};
use aya::maps::{Array, Map, MapData, PerCpuArray, RingBuf};
use coral_proto::EbpfStatus;
use coral_store::telemetry::{Batch, Telemetry};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The `[agent.ebpf]` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EbpfConfig {
    /// Capture RED metrics and connections with eBPF.
    pub enabled: bool,
    /// Bytes of ring buffer per CPU (a power of two, 4 KiB to 64 MiB).
    pub ring_bytes: u32,
    /// How often aggregates are written to the store.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// The helper's socket.
    pub helper_socket: PathBuf,
}

impl Default for EbpfConfig {
    fn default() -> Self {
        EbpfConfig {
            enabled: true,
            ring_bytes: 1 << 20,
            flush_interval: Duration::from_secs(1),
            helper_socket: PathBuf::from("/run/coral/privhelper.sock"),
        }
    }
}

impl EbpfConfig {
    pub fn validate(&self) -> Result<(), String> {
        coral_ebpf::check_ring_bytes(self.ring_bytes)
            .map_err(|e| format!("agent.ebpf.ring_bytes: {e}"))?;
        if self.flush_interval < Duration::from_millis(100)
            || self.flush_interval > Duration::from_secs(60)
        {
            return Err("agent.ebpf.flush_interval must be between 100ms and 60s".into());
        }
        Ok(())
    }
}

/// Records newer than this are held back one read, so records of other
/// CPUs written just before them are merged in order.
const REORDER_NS: u64 = 5_000_000;
/// Longest wait between reads when no ring asks for one (the programs wake
/// the reader when a record fills a ring past a quarter).
const READ_EVERY: Duration = Duration::from_millis(100);

fn mono_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(t) => t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64,
        Err(_) => 0,
    }
}

fn wall_offset_ns() -> i64 {
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as i64;
    wall - mono_ns() as i64
}

/// Connected services as (port, name).
pub type Services = Arc<dyn Fn() -> Vec<(u16, String)> + Send + Sync>;

/// Wakes the capture to re-read the connected services now, and lets the
/// caller wait until the kernel follows them.
pub struct Follow {
    wake_tx: UnixStream,
    wake_rx: UnixStream,
    requested: AtomicU64,
    applied: tokio::sync::watch::Sender<u64>,
    running: AtomicBool,
}

impl Follow {
    pub fn new() -> std::io::Result<Self> {
        let (wake_tx, wake_rx) = UnixStream::pair()?;
        wake_tx.set_nonblocking(true)?;
        wake_rx.set_nonblocking(true)?;
        Ok(Follow {
            wake_tx,
            wake_rx,
            requested: AtomicU64::new(0),
            applied: tokio::sync::watch::Sender::new(0),
            running: AtomicBool::new(false),
        })
    }

    /// Asks the capture to follow the current services; returns the ticket
    /// [`Follow::applied`] waits for.
    pub fn request(&self) -> u64 {
        let ticket = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        // A full socket buffer means a wakeup is already pending.
        let _ = (&self.wake_tx).write(&[1]);
        ticket
    }

    /// Waits until the ports map reflects request `ticket`; false when the
    /// capture is not running or did not get to it in `timeout`.
    pub async fn applied(&self, ticket: u64, timeout: Duration) -> bool {
        if !self.running.load(Ordering::SeqCst) {
            return false;
        }
        let mut rx = self.applied.subscribe();
        matches!(
            tokio::time::timeout(timeout, rx.wait_for(|a| *a >= ticket)).await,
            Ok(Ok(_))
        )
    }

    /// The requests made so far, after draining the wakeups.
    fn take(&self) -> u64 {
        let mut buf = [0u8; 64];
        while matches!((&self.wake_rx).read(&mut buf), Ok(n) if n > 0) {}
        self.requested.load(Ordering::SeqCst)
    }
}

/// Where the reader thread's results go: the store, the status that
/// `coral agent status` shows, and the request tap of `coral debug trace`.
pub struct Sinks {
    pub telemetry: Telemetry,
    pub status: Arc<Mutex<Option<EbpfStatus>>>,
    pub tap: Arc<tap::RequestTap>,
}

/// The running capture; stopping it (or dropping it) closes every fd.
pub struct Capture {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Capture {
    /// Loads the object (helper first, then directly) and starts the
    /// reader thread. Failure to load is reported in `status`, not fatal.
    pub fn start(
        config: EbpfConfig,
        agent_id: String,
        services: Services,
        follow: Arc<Follow>,
        sinks: Sinks,
        rt: tokio::runtime::Handle,
    ) -> Capture {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("ebpf-reader".into())
            .spawn(move || {
                let Sinks {
                    telemetry,
                    status,
                    tap,
                } = sinks;
                let set = |s: EbpfStatus| *status.lock().expect("ebpf status") = Some(s);
                let (fds, path) = match coral_privhelper::open_bpf(
                    &config.helper_socket,
                    coral_ebpf::RED,
                    config.ring_bytes,
                ) {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "eBPF capture is off (RED metrics and the connection map need coral-privhelper or CAP_BPF)");
                        set(EbpfStatus {
                            path: String::new(),
                            running: false,
                            error: Some(e.to_string()),
                            events: 0,
                            dropped: 0,
                            requests: 0,
                        });
                        return;
                    }
                };
                tracing::info!(path = %path, cpus = fds.maps.len() - 2, ring_bytes = config.ring_bytes, "eBPF capture running");
                let mut st = EbpfStatus {
                    path: path.to_string(),
                    running: true,
                    error: None,
                    events: 0,
                    dropped: 0,
                    requests: 0,
                };
                set(st.clone());
                let r = read_loop(
                    Reader {
                        config: &config,
                        agent_id: &agent_id,
                        telemetry: &telemetry,
                        services: &services,
                        wake: &follow,
                        fds: &fds,
                        stop: &stop2,
                        rt: &rt,
                        set: &set,
                        tap,
                    },
                    &mut st,
                );
                follow.running.store(false, Ordering::SeqCst);
                if let Err(e) = r {
                    tracing::error!(error = %e, "eBPF capture stopped");
                    st.running = false;
                    st.error = Some(e.to_string());
                    set(st);
                }
                // `fds` drops here: links, programs and maps are released.
            })
            .ok();
        Capture { stop, thread }
    }

    /// Stops the reader (after a last flush) and releases the BPF objects.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.halt();
    }
}

/// What the reader thread works with.
struct Reader<'a> {
    config: &'a EbpfConfig,
    agent_id: &'a str,
    telemetry: &'a Telemetry,
    services: &'a Services,
    wake: &'a Follow,
    fds: &'a coral_privhelper::BpfFds,
    stop: &'a AtomicBool,
    rt: &'a tokio::runtime::Handle,
    /// Publishes the status `coral agent status` shows.
    set: &'a dyn Fn(EbpfStatus),
    tap: Arc<tap::RequestTap>,
}

fn read_loop(r: Reader<'_>, st: &mut EbpfStatus) -> anyhow::Result<()> {
    let Reader {
        config,
        agent_id,
        telemetry,
        services,
        wake,
        fds,
        stop,
        rt,
        set,
        tap,
    } = r;
    let open = |i: usize| -> anyhow::Result<MapData> {
        let fd = fds.maps[i].try_clone()?;
        MapData::from_fd(fd).map_err(|e| anyhow!("open BPF map: {e}"))
    };
    let stats: PerCpuArray<MapData, u64> = PerCpuArray::try_from(Map::PerCpuArray(open(0)?))?;
    let mut ports: Array<MapData, coral_ebpf::PortSet> = Array::try_from(Map::Array(open(1)?))?;
    let mut followed: Option<Vec<u16>> = None;
    let mut follow = |services: &[(u16, String)]| -> anyhow::Result<()> {
        let mut want: Vec<u16> = services.iter().map(|(p, _)| *p).collect();
        want.sort_unstable();
        want.dedup();
        if followed.as_ref() != Some(&want) {
            let mut set = [0u64; 1024];
            for p in &want {
                coral_ebpf::set_port(&mut set, *p);
            }
            ports
                .set(0, set, 0)
                .map_err(|e| anyhow!("update the ports map: {e}"))?;
            followed = Some(want);
        }
        Ok(())
    };
    let mut rings = Vec::new();
    for i in 2..fds.maps.len() {
        rings.push(RingBuf::try_from(Map::RingBuf(open(i)?))?);
    }
    let mut tracker = tracker::Tracker::new(agent_id, wall_offset_ns());
    tracker.tap = Some(tap);
    let ticket = wake.take();
    let svcs = services();
    follow(&svcs)?;
    tracker.set_services(svcs);
    wake.running.store(true, Ordering::SeqCst);
    wake.applied.send_replace(ticket);
    let mut held: Vec<event::Event> = Vec::new();
    // Record buffers handed back by handled events, for the next records.
    let mut spare = event::Spare::default();
    let mut last_flush = Instant::now();
    let mut dropped_logged = 0;
    // Further records whose first was not there to join.
    let mut orphans = 0u64;
    let mut orphans_logged = 0u64;
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        let now = mono_ns();
        for ring in &mut rings {
            while let Some(item) = ring.next() {
                st.events += 1;
                if let Some(mut ev) = event::decode_into(&item, &mut spare) {
                    // A further record of an HTTP/2 syscall joins its first
                    // (written just before it to the same ring, so it is
                    // still held: records wait REORDER_NS). One whose first
                    // is not there (dropped) is dropped too: the parser
                    // sees a syscall it did not get all of.
                    if ev.is_more() {
                        if !held.iter_mut().rev().any(|e| e.extend(&mut ev)) {
                            orphans += 1;
                        }
                        ev.recycle(&mut spare);
                        continue;
                    }
                    held.push(ev);
                }
            }
        }
        // Records of one ring are in order; only several rings' need
        // merging.
        if !held.is_sorted_by_key(event::Event::ts_ns) {
            held.sort_by_key(event::Event::ts_ns);
        }
        let ready = if stopping {
            held.len()
        } else {
            held.partition_point(|e| e.ts_ns() + REORDER_NS < now)
        };
        for ev in held.drain(..ready) {
            tracker.handle(&ev);
            ev.recycle(&mut spare);
        }
        let requested = wake.requested.load(Ordering::SeqCst);
        if requested > *wake.applied.borrow() {
            let ticket = wake.take();
            let svcs = services();
            follow(&svcs)?;
            tracker.set_services(svcs);
            wake.applied.send_replace(ticket);
        }
        if stopping || last_flush.elapsed() >= config.flush_interval {
            last_flush = Instant::now();
            let svcs = services();
            follow(&svcs)?;
            tracker.set_services(svcs);
            tracker.set_wall_offset(wall_offset_ns());
            tracker.expire(now);
            let (red, edges) = tracker.drain();
            // Stored by the runtime: the reader never waits for the store
            // while the rings fill (except for the last flush, which must
            // be stored before the agent closes its store).
            let telemetry = telemetry.clone();
            let store = async move {
                for batch in [Batch::Red(red), Batch::Edges(edges)] {
                    if let Err(e) = telemetry.insert_batch(batch).await {
                        tracing::warn!(error = %e, "cannot store eBPF aggregates");
                    }
                }
            };
            if stopping {
                rt.block_on(store);
            } else {
                rt.spawn(store);
            }
            let sum =
                |slot: u32| -> u64 { stats.get(&slot, 0).map(|v| v.iter().sum()).unwrap_or(0) };
            st.dropped = sum(coral_ebpf::STAT_DROPS) + sum(coral_ebpf::STAT_NO_RING);
            st.requests = tracker.requests;
            if st.dropped > dropped_logged {
                tracing::warn!(
                    dropped = st.dropped,
                    "eBPF ring buffers were full: events dropped (raise agent.ebpf.ring_bytes)"
                );
                dropped_logged = st.dropped;
            }
            if orphans > orphans_logged {
                tracing::warn!(
                    orphans,
                    "HTTP/2 capture records arrived without the first record of their syscall (dropped): their connections' later streams count as unparsed"
                );
                orphans_logged = orphans;
            }
            set(st.clone());
        }
        if stopping {
            return Ok(());
        }
        let wait = READ_EVERY.min(config.flush_interval.saturating_sub(last_flush.elapsed()));
        let mut ready: Vec<PollFd> = rings
            .iter()
            .map(|r| PollFd::new(r.as_fd(), PollFlags::POLLIN))
            .collect();
        ready.push(PollFd::new(wake.wake_rx.as_fd(), PollFlags::POLLIN));
        let ms = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX);
        match nix::poll::poll(&mut ready, PollTimeout::from(ms)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => bail!("wait for the BPF ring buffers: {e}"),
        }
    }
}
