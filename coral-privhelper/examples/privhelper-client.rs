//! A tiny client used by the integration tests (run as another uid with
//! `setpriv`): `privhelper-client SOCKET hello|get-key|create-tun NAME ADDR PREFIX MTU|bpf-load`.
//! Prints one line; exit 0 on success, 3 when the helper refused.
//! `bpf-load` loads and attaches Coral's RED object through the helper,
//! reads its stats map from the passed fd, prints the fd counts, then holds
//! the fds until stdin closes.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::ExitCode;

use coral_privhelper::{Client, ClientError, IfName, TunParams};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(sock) = args.first() else {
        eprintln!("usage: privhelper-client SOCKET CMD ...");
        return ExitCode::from(64);
    };
    let result =
        Client::connect(Path::new(sock)).and_then(|mut c| match args.get(1).map(String::as_str) {
            Some("hello") => Ok(format!("version {}", c.version())),
            Some("get-key") => c.get_key().map(|k| format!("public {:02x?}", k.public)),
            Some("create-tun") => {
                let p = TunParams {
                    name: IfName::new(&args[2]).expect("name"),
                    addr: args[3].parse::<Ipv4Addr>().expect("addr"),
                    prefix: args[4].parse().expect("prefix"),
                    mtu: args[5].parse().expect("mtu"),
                };
                c.create_tun(&p).map(|t| format!("ifindex {}", t.ifindex))
            }
            Some("bpf-load") => c
                .bpf_load_and_attach(coral_ebpf::RED, 1 << 16)
                .and_then(|fds| {
                    use aya::maps::{Map, MapData, PerCpuArray};
                    let stats = fds.maps[0]
                        .try_clone()
                        .map_err(|e| ClientError::Protocol(e.to_string()))?;
                    let map = MapData::from_fd(stats)
                        .map_err(|e| ClientError::Protocol(e.to_string()))?;
                    let arr: PerCpuArray<MapData, u64> =
                        PerCpuArray::try_from(Map::PerCpuArray(map))
                            .map_err(|e| ClientError::Protocol(e.to_string()))?;
                    let events: u64 = arr
                        .get(&coral_ebpf::STAT_EVENTS, 0)
                        .map_err(|e| ClientError::Protocol(e.to_string()))?
                        .iter()
                        .sum();
                    println!(
                        "maps {} progs {} links {} stats-readable {}",
                        fds.maps.len(),
                        fds.progs.len(),
                        fds.links.len(),
                        events < u64::MAX
                    );
                    let mut line = String::new();
                    let _ = std::io::stdin().read_line(&mut line);
                    drop(fds);
                    Ok("released".to_string())
                }),
            // `open-target PID|self PORT`: OpenTarget, printing the pid and path.
            Some("open-target") => {
                let pid = match args.get(2).map(String::as_str) {
                    Some("self") => std::process::id(),
                    p => p.and_then(|p| p.parse().ok()).expect("pid"),
                };
                let port = args.get(3).and_then(|p| p.parse().ok()).unwrap_or(0);
                c.open_target(pid, port)
                    .map(|(pid, path, _)| format!("target {pid} {path}"))
            }
            _ => Err(ClientError::Protocol("unknown command".into())),
        });
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e @ ClientError::Refused(_)) => {
            eprintln!("error: {e}");
            ExitCode::from(3)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
