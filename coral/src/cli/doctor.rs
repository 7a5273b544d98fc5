//! `coral doctor`: is this machine ready for a colony and an agent without
//! sudo? One line per check (ok / warn / fail), each failure with the exact
//! command that fixes it; `--json` for scripts. Exit 1 when a check fails.
//!
//! The checks read the kernel's interfaces (BPF, BTF, uprobes,
//! `/dev/net/tun`, landlock, seccomp), the helper's socket and a `Hello` to
//! it, the helper binary's version, the ports the daemons will bind and the
//! routes overlapping the mesh range. Nothing here needs root, and nothing
//! is changed.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use coral_privhelper::client::{Membership, group_membership};
use serde::Serialize;

use super::args::DoctorArgs;
use super::config::load_config;
use super::output::out;
use coral_proto::exit::Coded;

/// The group the packaged helper's socket belongs to.
const GROUP: &str = coral_privhelper::config::DEFAULT_GROUP;
/// The mesh range every colony subnet lies in (100.64.0.0/10).
const MESH_RANGE: (Ipv4Addr, u8) = (Ipv4Addr::new(100, 64, 0, 0), 10);
/// Where the packages put the units (and `make build-dev` in /etc).
const UNIT_DIRS: &[&str] = &[
    "/etc/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Status {
    Ok,
    Warn,
    Fail,
}

/// One check: `fix` is set for every warn and fail.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Check {
    pub name: String,
    pub status: Status,
    pub detail: String,
    pub fix: Option<String>,
}

fn ok(name: &str, detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        status: Status::Ok,
        detail: detail.into(),
        fix: None,
    }
}

fn bad(name: &str, status: Status, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        status,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

pub(crate) fn run(args: DoctorArgs) -> anyhow::Result<()> {
    let file = load_config(args.config.as_deref())?;
    let colony = file.colony.unwrap_or_default();
    let agent = file.agent.unwrap_or_default();
    let mut checks = kernel_checks();
    checks.extend(helper_checks(&colony.mesh.helper_socket));
    checks.extend(port_checks(&colony, &agent));
    checks.push(subnet_check(
        colony.mesh.subnet.as_deref(),
        &std::fs::read_to_string("/proc/net/route").unwrap_or_default(),
    ));
    let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
    if args.json {
        let v = serde_json::json!({ "ok": failed == 0, "checks": checks });
        out(&(serde_json::to_string_pretty(&v)? + "\n"))?;
    } else {
        out(&render(&checks))?;
    }
    if failed > 0 {
        return Err(Coded {
            code: 1,
            msg: format!("{failed} check(s) failed; each line above says how to fix it"),
        }
        .into());
    }
    Ok(())
}

fn render(checks: &[Check]) -> String {
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let mut s = String::new();
    for c in checks {
        let tag = match c.status {
            Status::Ok => "ok  ",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        };
        let (name, detail) = (&c.name, &c.detail);
        s.push_str(&format!("{tag}  {name:width$}  {detail}"));
        if let Some(f) = &c.fix {
            s.push_str(&format!(" -- fix: {f}"));
        }
        s.push('\n');
    }
    s
}

fn exists(p: &str) -> bool {
    Path::new(p).exists()
}

fn kernel_checks() -> Vec<Check> {
    let bpf = if exists("/proc/sys/kernel/unprivileged_bpf_disabled") {
        ok("kernel BPF", "the bpf() syscall is built in")
    } else {
        bad(
            "kernel BPF",
            Status::Fail,
            "this kernel has no bpf() syscall (CONFIG_BPF_SYSCALL)",
            "use a kernel built with CONFIG_BPF_SYSCALL=y (every major distribution's is)",
        )
    };
    let btf = if exists("/sys/kernel/btf/vmlinux") {
        ok("BTF", "/sys/kernel/btf/vmlinux")
    } else {
        bad(
            "BTF",
            Status::Fail,
            "no /sys/kernel/btf/vmlinux: Coral's BPF programs need the kernel's BTF",
            "use a kernel built with CONFIG_DEBUG_INFO_BTF=y",
        )
    };
    let uprobes = if exists("/sys/bus/event_source/devices/uprobe/type") {
        ok("uprobes", "the uprobe PMU is there ('coral debug')")
    } else {
        bad(
            "uprobes",
            Status::Warn,
            "no uprobe PMU: 'coral debug attach' cannot work here",
            "use a kernel built with CONFIG_UPROBE_EVENTS=y",
        )
    };
    let tun = match std::fs::metadata("/dev/net/tun") {
        Ok(m) if m.file_type().is_char_device() => {
            ok("/dev/net/tun", "present (the mesh's TUN device)")
        }
        _ => bad(
            "/dev/net/tun",
            Status::Fail,
            "missing: the mesh cannot create its TUN device",
            "sudo modprobe tun (in a container: pass the device through, e.g. --device /dev/net/tun)",
        ),
    };
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let seccomp = if status.lines().any(|l| l.starts_with("Seccomp:")) {
        ok("seccomp", "supported (the daemons' syscall allowlists)")
    } else {
        bad(
            "seccomp",
            Status::Warn,
            "no seccomp: the colony and agent run without their syscall allowlists",
            "use a kernel built with CONFIG_SECCOMP_FILTER=y",
        )
    };
    vec![bpf, btf, uprobes, tun, landlock_check(), seccomp]
}

fn landlock_check() -> Check {
    use landlock::{ABI, Access, AccessFs, CompatLevel, Compatible, Ruleset, RulesetAttr};
    // Creating a ruleset (never enforced) tells whether the kernel has this
    // ABI; the daemons use ABI 3.
    let has = |abi: ABI| {
        Ruleset::default()
            .set_compatibility(CompatLevel::HardRequirement)
            .handle_access(AccessFs::from_all(abi))
            .and_then(|r| r.create())
            .is_ok()
    };
    if has(ABI::V3) {
        ok(
            "landlock",
            "ABI 3 or newer (the colony and agent use ABI 3)",
        )
    } else if has(ABI::V1) {
        bad(
            "landlock",
            Status::Warn,
            "an ABI older than 3: the daemons confine less (no truncate rule)",
            "use Linux 6.2 or newer",
        )
    } else {
        bad(
            "landlock",
            Status::Warn,
            "not enabled: the colony and agent run without their path rules",
            "boot with landlock among the LSMs (lsm=landlock,... on the kernel command line)",
        )
    }
}

/// The helper's socket: its file, then a `Hello`, then the version of the
/// helper binary its unit runs.
fn helper_checks(socket: &Path) -> Vec<Check> {
    use coral_privhelper::ClientError as E;
    let unit = installed_unit("coral-privhelper.socket");
    let group_gid = nix::unistd::Group::from_name(GROUP)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw());
    let file = match std::fs::metadata(socket) {
        Ok(m) => socket_check(
            socket,
            m.file_type().is_socket(),
            m.uid(),
            m.gid(),
            m.mode() & 0o7777,
            group_gid,
        ),
        Err(_) => match &unit {
            Some(u) => bad(
                "helper socket",
                Status::Fail,
                format!(
                    "{} is missing; the unit {} is installed but not listening",
                    socket.display(),
                    u.display()
                ),
                "sudo systemctl enable --now coral-privhelper.socket",
            ),
            None => bad(
                "helper socket",
                Status::Fail,
                format!(
                    "{} is missing: coral-privhelper is not installed",
                    socket.display()
                ),
                "install the coral package (.deb/.rpm), or run 'make build-dev' in a source tree",
            ),
        },
    };
    let hello = match coral_privhelper::Client::connect(socket) {
        Ok(c) => ok(
            "helper connect",
            format!(
                "coral-privhelper answers (protocol v{}, this coral speaks up to v{})",
                c.version(),
                coral_privhelper::protocol::VERSION
            ),
        ),
        Err(e) => {
            let fix = match &e {
                E::Unreachable { reason, .. } if reason.starts_with("permission denied") => {
                    group_membership(GROUP).hint()
                }
                E::Unreachable { reason, .. } if reason.starts_with("connection refused") => {
                    "sudo systemctl restart coral-privhelper.socket; see 'journalctl -u coral-privhelper'"
                        .into()
                }
                E::Unreachable { .. } => "sudo systemctl enable --now coral-privhelper.socket".into(),
                E::Refused(_) => format!(
                    "'sudo usermod -aG {GROUP} $USER' (then log in again), or allow your uid in /etc/coral/privhelper.conf"
                ),
                _ => "see 'journalctl -u coral-privhelper'".into(),
            };
            let detail = match &e {
                E::Unreachable { path, reason } => {
                    format!("cannot connect to {}: {reason}", path.display())
                }
                other => other.to_string(),
            };
            bad("helper connect", Status::Fail, detail, fix)
        }
    };
    vec![
        file,
        membership_check(group_membership(GROUP)),
        hello,
        version_check(helper_binary(unit.as_deref()).as_deref()),
    ]
}

fn installed_unit(name: &str) -> Option<PathBuf> {
    UNIT_DIRS
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

/// The socket file: a socket, owned by root, group `coral`, mode 0660 (the
/// package's unit). A 0666 socket of a helper started by hand works but is
/// not the package's.
pub(crate) fn socket_check(
    path: &Path,
    is_socket: bool,
    uid: u32,
    gid: u32,
    mode: u32,
    group_gid: Option<u32>,
) -> Check {
    let name = "helper socket";
    let what = format!("{} (uid {uid}, gid {gid}, mode {mode:04o})", path.display());
    if !is_socket {
        return bad(
            name,
            Status::Fail,
            format!("{} is not a socket", path.display()),
            format!(
                "remove it: sudo rm {}; then sudo systemctl restart coral-privhelper.socket",
                path.display()
            ),
        );
    }
    if uid != 0 {
        return bad(
            name,
            Status::Fail,
            format!("{what} is not owned by root: not coral-privhelper's"),
            "stop whatever created it, then sudo systemctl restart coral-privhelper.socket",
        );
    }
    if Some(gid) == group_gid && mode == 0o660 {
        return ok(name, format!("{} root:{GROUP} 0660", path.display()));
    }
    bad(
        name,
        Status::Warn,
        format!("{what}: not the package's root:{GROUP} 0660 socket (a helper started by hand?)"),
        "stop the hand-started helper, then sudo systemctl enable --now coral-privhelper.socket",
    )
}

fn membership_check(m: Membership) -> Check {
    match m {
        Membership::Active => ok("group coral", "this login session may use the helper"),
        other => bad("group coral", Status::Fail, other.hint(), other.hint()),
    }
}

/// The helper binary the unit runs (`ExecStart=`), else the packaged path,
/// else one next to this `coral`.
fn helper_binary(unit_socket: Option<&Path>) -> Option<PathBuf> {
    let from_unit = unit_socket
        .and_then(|s| std::fs::read_to_string(s.with_file_name("coral-privhelper.service")).ok())
        .and_then(|t| exec_start(&t));
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("coral-privhelper")));
    from_unit
        .into_iter()
        .chain([PathBuf::from("/usr/libexec/coral/coral-privhelper")])
        .chain(beside)
        .find(|p| p.exists())
}

/// The program of a unit's `ExecStart=` line (prefixes like `-` or `!` stripped).
pub(crate) fn exec_start(unit: &str) -> Option<PathBuf> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix("ExecStart="))
        .filter_map(|v| v.split_whitespace().next())
        .map(|p| p.trim_start_matches(['-', '@', ':', '+', '!']))
        .find(|p| p.starts_with('/'))
        .map(PathBuf::from)
}

fn version_check(bin: Option<&Path>) -> Check {
    let mine = env!("CARGO_PKG_VERSION");
    let Some(bin) = bin else {
        return bad(
            "helper version",
            Status::Fail,
            "no coral-privhelper binary found",
            "install the coral package",
        );
    };
    let out = std::process::Command::new(bin).arg("--version").output();
    let text = out
        .as_ref()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    match text.strip_prefix("coral-privhelper ") {
        Some(v) if v == mine => ok(
            "helper version",
            format!("{} {v} = coral {mine}", bin.display()),
        ),
        Some(v) => bad(
            "helper version",
            Status::Fail,
            format!("{} is {v}, this coral is {mine}", bin.display()),
            "install coral and its helper from the same package (then 'sudo systemctl restart coral-privhelper')",
        ),
        None => bad(
            "helper version",
            Status::Fail,
            format!("cannot run {} --version", bin.display()),
            "reinstall the coral package",
        ),
    }
}

/// The ports the daemons will bind: free, or held by this user's running
/// colony/agent.
fn port_checks(
    colony: &coral_colony::ColonyConfig,
    agent: &coral_agent::AgentConfig,
) -> Vec<Check> {
    let running = |role: &str| {
        coral_proto::local::runtime_dir().ok().is_some_and(|d| {
            std::os::unix::net::UnixStream::connect(d.join(format!("{role}.sock"))).is_ok()
        })
    };
    let (colony_up, agent_up) = (running("colony"), running("agent"));
    let mut wanted: Vec<(String, &str, String, bool)> = Vec::new();
    if colony.mesh.enabled {
        wanted.push((
            "colony mesh".into(),
            "udp",
            colony.mesh.listen.clone(),
            colony_up,
        ));
        wanted.push((
            "colony join".into(),
            "tcp",
            colony.mesh.listen.clone(),
            colony_up,
        ));
    } else {
        wanted.push(("colony rpc".into(), "tcp", colony.listen.clone(), colony_up));
    }
    if agent.otlp.enabled {
        wanted.push((
            "agent OTLP gRPC".into(),
            "tcp",
            agent.otlp.grpc_listen.clone(),
            agent_up,
        ));
        wanted.push((
            "agent OTLP HTTP".into(),
            "tcp",
            agent.otlp.http_listen.clone(),
            agent_up,
        ));
    }
    wanted
        .into_iter()
        .map(|(what, proto, addr, ours)| {
            let name = format!("port {proto} {addr}");
            let Ok(sa) = addr.parse::<SocketAddr>() else {
                return bad(
                    &name,
                    Status::Fail,
                    format!("'{addr}' is not ip:port"),
                    "fix it in config.toml ('coral config validate')",
                );
            };
            if sa.port() == 0 {
                return ok(&name, format!("{what}: any free port"));
            }
            let free = match proto {
                "udp" => UdpSocket::bind(sa).map(drop),
                _ => TcpListener::bind(sa).map(drop),
            };
            match free {
                Ok(()) => ok(&name, format!("{what}: free")),
                Err(_) if ours => ok(
                    &name,
                    format!(
                        "{what}: in use by your running {}",
                        what.split(' ').next().unwrap_or("")
                    ),
                ),
                Err(e) => bad(
                    &name,
                    Status::Warn,
                    format!("{what}: {e}"),
                    "stop what holds it (ss -lntup), or pick another port in config.toml",
                ),
            }
        })
        .collect()
}

/// Routes (`/proc/net/route`) that overlap the mesh's subnet (the configured
/// one, else the whole mesh range) on an interface that is not Coral's.
pub(crate) fn subnet_check(configured: Option<&str>, routes: &str) -> Check {
    let name = "mesh subnet";
    let (net, prefix) = match configured {
        Some(s) => match coral_colony::config::parse_subnet(s) {
            Ok(x) => x,
            Err(e) => {
                return bad(
                    name,
                    Status::Fail,
                    e.to_string(),
                    "fix colony.mesh.subnet in config.toml",
                );
            }
        },
        None => MESH_RANGE,
    };
    let mut clashes = Vec::new();
    for l in routes.lines().skip(1) {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 8 || f[0].starts_with("coral") {
            continue;
        }
        let (Ok(dst), Ok(mask)) = (u32::from_str_radix(f[1], 16), u32::from_str_radix(f[7], 16))
        else {
            continue;
        };
        // /proc/net/route prints each address as a native-endian u32 of its
        // network-order bytes.
        let (dst, mask) = (
            u32::from_be_bytes(dst.to_ne_bytes()),
            u32::from_be_bytes(mask.to_ne_bytes()),
        );
        let rprefix = mask.leading_ones() as u8;
        if rprefix == 0 {
            continue; // the default route overlaps everything and routes nothing specific
        }
        let p = rprefix.min(prefix);
        let m = u32::MAX << (32 - u32::from(p));
        if dst & m == u32::from(net) & m {
            clashes.push(format!("{}/{} dev {}", Ipv4Addr::from(dst), rprefix, f[0]));
        }
    }
    let range = format!("{net}/{prefix}");
    if clashes.is_empty() {
        return ok(name, format!("{range} is free of other routes"));
    }
    let fix = if configured.is_some() {
        "set colony.mesh.subnet to a /20 inside 100.64.0.0/10 that no route uses".to_string()
    } else {
        "set colony.mesh.subnet in config.toml to a /20 inside 100.64.0.0/10 that none of these routes cover".to_string()
    };
    let status = if configured.is_some() {
        Status::Fail
    } else {
        Status::Warn
    };
    bad(
        name,
        status,
        format!("{range} overlaps {}", clashes.join(", ")),
        fix,
    )
}

/// Issue 13: the checks' parsing and verdicts. `make package-test` runs the
/// whole command in a booted Debian with the package installed.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_package_socket_is_root_coral_0660() {
        let p = Path::new("/run/coral/privhelper.sock");
        assert_eq!(
            socket_check(p, true, 0, 997, 0o660, Some(997)).status,
            Status::Ok
        );
        // A helper started by hand (0666) works, but is not the package's.
        assert_eq!(
            socket_check(p, true, 0, 0, 0o666, Some(997)).status,
            Status::Warn
        );
        assert_eq!(
            socket_check(p, true, 1000, 997, 0o660, Some(997)).status,
            Status::Fail
        );
        assert_eq!(
            socket_check(p, false, 0, 997, 0o660, Some(997)).status,
            Status::Fail
        );
        assert_eq!(
            socket_check(p, true, 0, 997, 0o660, None).status,
            Status::Warn
        );
    }

    #[test]
    fn exec_start_gives_the_helper_path() {
        let unit =
            "[Service]\nType=simple\nExecStart=/usr/libexec/coral/coral-privhelper --config /x\n";
        assert_eq!(
            exec_start(unit),
            Some(PathBuf::from("/usr/libexec/coral/coral-privhelper"))
        );
        assert_eq!(
            exec_start("ExecStart=-/usr/local/libexec/coral/coral-privhelper"),
            Some(PathBuf::from("/usr/local/libexec/coral/coral-privhelper"))
        );
        assert_eq!(exec_start("[Service]\n"), None);
    }

    const ROUTES: &str = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
        eth0\t00000000\t0102A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
        eth0\t0002A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";

    #[test]
    fn mesh_subnet_clashes_are_found() {
        // Only the default route and 192.168.2.0/24: the mesh range is free.
        assert_eq!(subnet_check(None, ROUTES).status, Status::Ok);
        // A Tailscale-like 100.64.0.0/10 route on tailscale0.
        let ts =
            format!("{ROUTES}tailscale0\t00004064\t00000000\t0001\t0\t0\t0\t0000C0FF\t0\t0\t0\n");
        let c = subnet_check(None, &ts);
        assert_eq!(c.status, Status::Warn, "{c:?}");
        assert!(
            c.detail.contains("100.64.0.0/10 dev tailscale0"),
            "{}",
            c.detail
        );
        // Coral's own interfaces are not a clash.
        let own = format!(
            "{ROUTES}coralc1a2b3c4\t00105064\t00000000\t0001\t0\t0\t0\t00F0FFFF\t0\t0\t0\n"
        );
        assert_eq!(subnet_check(None, &own).status, Status::Ok);
        // A configured subnet clashes only with routes inside it.
        let other = format!("{ROUTES}eth1\t00105064\t00000000\t0001\t0\t0\t0\t00F0FFFF\t0\t0\t0\n");
        assert_eq!(
            subnet_check(Some("100.80.16.0/20"), &other).status,
            Status::Fail
        );
        assert_eq!(
            subnet_check(Some("100.80.32.0/20"), &other).status,
            Status::Ok
        );
        assert_eq!(
            subnet_check(Some("10.0.0.0/8"), &other).status,
            Status::Fail
        );
    }

    #[test]
    fn every_problem_has_a_fix_and_one_line() {
        let checks = vec![
            ok("a", "fine"),
            bad("longer name", Status::Fail, "broken", "do this"),
        ];
        let text = render(&checks);
        assert_eq!(text.lines().count(), 2);
        assert!(
            text.contains("FAIL  longer name  broken -- fix: do this"),
            "{text}"
        );
        assert!(text.starts_with("ok    a            fine"), "{text}");
    }
}
