//! Deterministic property test: 100 000 random and mutated frames through
//! every decoder; none may panic, and whatever decodes must re-encode to the
//! same bytes. Issue 3 (the helper survives a fuzzed request stream).

use std::net::Ipv4Addr;

use coral_privhelper::protocol::{
    self, ErrorCode, HEADER_LEN, IfName, Request, Response, TunParams,
};

/// xorshift64*: reproducible without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = [
        Request::Hello {
            min_version: 1,
            max_version: 1,
        },
        Request::GetKey,
        Request::CreateTun(TunParams {
            name: IfName::new("coral0").unwrap(),
            addr: Ipv4Addr::new(100, 64, 0, 1),
            prefix: 10,
            mtu: 1420,
        }),
    ]
    .iter()
    .map(protocol::encode_request)
    .collect();
    v.extend(
        [
            Response::HelloOk { version: 1 },
            Response::Key { public: [3; 32] },
            Response::TunCreated {
                name: IfName::new("coral0").unwrap(),
                ifindex: 4,
            },
            Response::Error {
                code: ErrorCode::Failed,
                message: "nope".into(),
            },
        ]
        .iter()
        .map(protocol::encode_response),
    );
    v
}

#[test]
fn decoders_survive_100k_random_and_mutated_frames() {
    let seeds = seeds();
    let mut rng = Rng(0x00C0_7A1D_5EED_0003);
    let mut decoded = 0;
    for i in 0..100_000 {
        let mut f = if i % 4 == 0 {
            let n = rng.below(64);
            (0..n).map(|_| rng.next() as u8).collect()
        } else {
            seeds[rng.below(seeds.len())].clone()
        };
        for _ in 0..=rng.below(4) {
            match rng.below(5) {
                0 if !f.is_empty() => {
                    let at = rng.below(f.len());
                    f[at] = rng.next() as u8;
                }
                1 if !f.is_empty() => {
                    let at = rng.below(f.len());
                    f.truncate(at);
                }
                2 => {
                    let at = rng.below(f.len() + 1);
                    f.insert(at, rng.next() as u8);
                }
                3 if f.len() >= HEADER_LEN => {
                    // Make the length prefix agree with the body, so the
                    // payload decoders get exercised.
                    let n = (f.len() - HEADER_LEN) as u32;
                    f[..HEADER_LEN].copy_from_slice(&n.to_be_bytes());
                }
                _ => f.extend((0..rng.below(8)).map(|_| rng.next() as u8)),
            }
        }
        if let Ok((req, used)) = protocol::decode_request_frame(&f) {
            decoded += 1;
            assert_eq!(protocol::encode_request(&req), f[..used]);
        }
        let body = f.get(HEADER_LEN..).unwrap_or(&[]);
        let _ = protocol::decode_request(body);
        if let Ok(resp) = protocol::decode_response(body) {
            // Error messages are decoded lossily; everything else round-trips.
            if !matches!(resp, Response::Error { .. }) {
                assert_eq!(protocol::encode_response(&resp)[HEADER_LEN..], *body);
            }
        }
        if f.len() >= HEADER_LEN {
            let mut p = [0u8; HEADER_LEN];
            p.copy_from_slice(&f[..HEADER_LEN]);
            if let Ok(n) = protocol::check_len(p) {
                assert!((2..=protocol::MAX_BODY).contains(&n));
            }
        }
    }
    assert!(
        decoded > 1000,
        "mutations too destructive: {decoded} decoded"
    );
}

/// Issue 16: the target process's request and reply decoders take 100 000
/// random and mutated messages without a panic; whatever decodes
/// re-encodes to the same bytes (the main process could be the attacker).
#[test]
fn target_process_decoders_survive_100k_random_and_mutated_messages_issue_16() {
    use coral_privhelper::target::{self, Reply, Request as T};
    let seeds: Vec<Vec<u8>> = [
        T::CheckUser { uid: 1000 },
        T::OpenTarget { pid: 0, port: 8080 },
        T::OpenBinary {
            pid: 42,
            path: "/usr/bin/app".into(),
        },
        T::PerfUprobe {
            pid: 42,
            offset: 0x1234,
            kind: 2,
        },
    ]
    .iter()
    .map(T::encode)
    .chain(
        [
            Reply::Ok {
                number: 3,
                text: "coral".into(),
            },
            Reply::Invalid("no".into()),
        ]
        .iter()
        .map(Reply::encode),
    )
    .collect();
    let mut rng = Rng(0x00C0_7A1D_5EED_0016);
    let (mut requests, mut replies) = (0, 0);
    for i in 0..100_000 {
        let mut m = if i % 4 == 0 {
            let n = rng.below(target::MAX_REQUEST + 8);
            (0..n).map(|_| rng.next() as u8).collect()
        } else {
            seeds[rng.below(seeds.len())].clone()
        };
        for _ in 0..=rng.below(3) {
            match rng.below(4) {
                0 if !m.is_empty() => {
                    let at = rng.below(m.len());
                    m[at] = rng.next() as u8;
                }
                1 if !m.is_empty() => {
                    let at = rng.below(m.len());
                    m.truncate(at);
                }
                2 => {
                    let at = rng.below(m.len() + 1);
                    m.insert(at, rng.next() as u8);
                }
                _ => {}
            }
        }
        if let Ok(r) = T::decode(&m) {
            requests += 1;
            assert_eq!(r.encode(), m);
        }
        if let Ok(r) = Reply::decode(&m) {
            replies += 1;
            assert_eq!(r.encode(), m);
        }
    }
    assert!(requests > 1000 && replies > 100, "{requests} {replies}");
}
