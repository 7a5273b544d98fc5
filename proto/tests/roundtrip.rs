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
