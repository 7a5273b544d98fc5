//! Regression (issue 2): a flattened ServiceSpec once collided with ServiceHealth.health on the wire.
use coral_proto::*;

#[test]
fn heartbeat_round_trips_through_json() {
    let spec = ServiceSpec::parse("web:8080:/health").unwrap();
    let mut h = ServiceHealth::new(spec);
    h.health = Health::Down;
    h.since_ms = Some(1);
    h.latency_us = Some(1234);
    h.last_error = Some("tcp connect: Connection refused (os error 111)".into());
    let hb = Heartbeat {
        agent_id: "a".into(),
        services: vec![h],
        samples: vec![HealthSample {
            seq: 4294967297,
            ts_ms: 5,
            service: "web".into(),
            up: false,
            latency_us: 3,
            error: Some("x".into()),
        }],
        dropped_samples: 0,
    };
    let s = serde_json::to_string(&hb).unwrap();
    println!("{s}");
    let back: Heartbeat = serde_json::from_str(&s).unwrap();
    assert_eq!(back.services, hb.services);
    assert_eq!(back.samples, hb.samples);
}

/// Issue 4: exec output crosses JSON as base64, and a registration from an
/// agent that predates `rpc_addr` still parses.
#[test]
fn exec_chunks_are_base64_and_old_registrations_parse() {
    let chunk = ExecChunk {
        stream: OutputStream::Stdout,
        data: vec![0, 159, 146, 150, b'\n'],
    };
    let s = serde_json::to_string(&chunk).unwrap();
    assert_eq!(s, r#"{"stream":"stdout","data":"AJ+Slgo="}"#);
    assert_eq!(serde_json::from_str::<ExecChunk>(&s).unwrap(), chunk);
    assert!(serde_json::from_str::<ExecChunk>(r#"{"stream":"stdout","data":"%%"}"#).is_err());

    let old = r#"{"agent_id":"a","name":"n","hostname":"h","version":"0","pid":1,
        "started_at_ms":0,"colony_id":null,"services":[]}"#;
    let reg: Registration = serde_json::from_str(old).unwrap();
    assert_eq!(reg.rpc_addr, None);
}
