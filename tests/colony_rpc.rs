//! Issue 2: the colony's agent-facing RPC, in process (`Colony::run` on
//! 127.0.0.1:0 with a temp state dir), driven by a real tarpc client.

use coral_colony::{Colony, ColonyConfig, registry::Registry};
use coral_proto::services::ColonyLinkClient;
use coral_proto::{ColonyError, HealthSample, Heartbeat, Registration, ServiceHealth, ServiceSpec};
use coral_store::telemetry::{SampleRow, Telemetry};
use std::time::Duration;

fn sample(seq: u64) -> HealthSample {
    HealthSample {
        seq,
        ts_ms: coral_proto::now_ms(),
        service: "api".into(),
        up: true,
        latency_us: 100,
        error: None,
    }
}

fn registration(agent_id: &str) -> Registration {
    Registration {
        agent_id: agent_id.into(),
        name: "host-a".into(),
        hostname: "host-a".into(),
        version: "test".into(),
        pid: 1,
        started_at_ms: coral_proto::now_ms(),
        colony_id: None,
        services: vec![ServiceHealth::new(
            ServiceSpec::parse("api:8080:/health").unwrap(),
        )],
        rpc_addr: None,
    }
}

fn heartbeat(agent_id: &str, seqs: std::ops::RangeInclusive<u64>) -> Heartbeat {
    Heartbeat {
        agent_id: agent_id.into(),
        services: registration(agent_id).services,
        samples: seqs.map(sample).collect(),
        dropped_samples: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_are_stored_exactly_once_even_after_a_crash_between_commits() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("colony");
    std::fs::create_dir_all(&state).unwrap();

    // A colony that died after committing samples 1..=10 to DuckDB but
    // before recording them in SQLite.
    {
        let mut reg = Registry::open(&state.join("colony.db")).unwrap();
        reg.colony_id(Some("c1")).unwrap();
        assert_eq!(
            reg.register(&registration("a1"), "127.0.0.1:1", None, 1)
                .unwrap(),
            0
        );
        let (t, _g) =
            Telemetry::open(&state.join("telemetry.duckdb"), Duration::from_secs(3600)).unwrap();
        let rows = (1..=10)
            .map(|s| SampleRow {
                agent_id: "a1".into(),
                sample: sample(s),
            })
            .collect();
        t.insert(rows).await.unwrap();
    }

    let config = ColonyConfig {
        colony_id: Some("c1".into()),
        listen: "127.0.0.1:0".into(),
        state_dir: Some(state.clone()),
        mesh: coral_colony::config::MeshConfig {
            enabled: false,
            ..Default::default()
        },
        ..ColonyConfig::default()
    };
    let colony = Colony::open(config).unwrap();
    let rpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = rpc.local_addr().unwrap();
    let control = tokio::net::UnixListener::bind(dir.path().join("colony.sock")).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(colony.run(Some(rpc), control, async {
        let _ = stopped.await;
    }));

    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let client =
        ColonyLinkClient::new(Default::default(), coral_proto::local::framed(stream)).spawn();
    let ctx = tarpc::context::current;

    // Unknown agents and forged requests are refused with typed errors.
    let err = client
        .heartbeat(ctx(), heartbeat("nobody", 1..=1))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err, ColonyError::UnknownAgent("nobody".into()));
    let mut wrong = registration("a1");
    wrong.colony_id = Some("other".into());
    assert!(matches!(
        client.register(ctx(), wrong).await.unwrap(),
        Err(ColonyError::WrongColony { .. })
    ));
    let mut forged = registration("a1");
    forged.services[0].spec.name = "../../etc".into();
    assert!(matches!(
        client.register(ctx(), forged).await.unwrap(),
        Err(ColonyError::Invalid(_))
    ));

    // Registration reports what DuckDB holds, not the lagging registry.
    let registered = client
        .register(ctx(), registration("a1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(registered.last_seq, 10);

    // Overlapping resends, some of them concurrent, store each seq once.
    let ack = client
        .heartbeat(ctx(), heartbeat("a1", 5..=15))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ack.last_seq, 15);
    let (a, b) = tokio::join!(
        client.heartbeat(ctx(), heartbeat("a1", 12..=20)),
        client.heartbeat(ctx(), heartbeat("a1", 14..=20)),
    );
    assert_eq!(a.unwrap().unwrap().last_seq, 20);
    assert_eq!(b.unwrap().unwrap().last_seq, 20);

    let _ = stop.send(());
    server.await.unwrap();
    let db = duckdb::Connection::open(state.join("telemetry.duckdb")).unwrap();
    let (n, distinct): (i64, i64) = db
        .query_row(
            "SELECT count(*), count(DISTINCT seq) FROM health_samples WHERE agent_id = 'a1'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((n, distinct), (20, 20));
}
