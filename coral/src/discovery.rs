//! `coral discovery start`: a small registry of colony endpoints. A colony
//! publishes its current endpoints signed with its Ed25519 key; agents look
//! them up by colony id and check the signature against the key they hold
//! from their token, so discovery is trusted for nothing but availability.
//!
//! Records live in memory (colonies republish every 30 s). The first key
//! seen for a colony id is pinned for the registry's lifetime: another key
//! cannot replace the record, and an older record cannot replace a newer one.

use coral_mesh::membership as ms;
use coral_proto::services::Discovery;
use coral_proto::{DiscoveryError, SignedEndpoints};
use futures::StreamExt as _;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tarpc::context::Context;
use tarpc::server::{BaseChannel, Channel as _};
use tokio::net::TcpListener;

/// At most this many colonies are kept.
const MAX_COLONIES: usize = 10_000;
const MAX_FRAME: usize = 16 * 1024;

/// The signed endpoint records, by colony id, with the issue time of each.
#[derive(Clone, Default)]
pub struct EndpointRecords {
    records: Arc<Mutex<HashMap<String, (SignedEndpoints, i64)>>>,
}

impl EndpointRecords {
    pub fn publish(&self, rec: SignedEndpoints) -> Result<(), DiscoveryError> {
        if rec.record.len() > 4096 {
            return Err(DiscoveryError::Invalid("record too large".into()));
        }
        let body = ms::verify_endpoints(&rec.sign_key, &rec).map_err(|e| match e {
            ms::MembershipError::BadSignature(_) => DiscoveryError::BadSignature,
            other => DiscoveryError::Invalid(other.to_string()),
        })?;
        coral_proto::spec::validate_colony_id(&body.colony_id)
            .map_err(|e| DiscoveryError::Invalid(e.to_string()))?;
        if body.endpoints.is_empty() || body.endpoints.len() > 16 {
            return Err(DiscoveryError::Invalid("1 to 16 endpoints".into()));
        }
        let mut records = self.records.lock().expect("records lock");
        if let Some((old, issued)) = records.get(&body.colony_id) {
            if old.sign_key != rec.sign_key {
                return Err(DiscoveryError::KeyMismatch(body.colony_id));
            }
            if body.issued_at_ms < *issued {
                return Err(DiscoveryError::Stale);
            }
        } else if records.len() >= MAX_COLONIES {
            return Err(DiscoveryError::Invalid("registry full".into()));
        }
        tracing::info!(colony_id = %body.colony_id, endpoints = ?body.endpoints, "published");
        records.insert(body.colony_id, (rec, body.issued_at_ms));
        Ok(())
    }

    pub fn lookup(&self, colony_id: &str) -> Option<SignedEndpoints> {
        self.records
            .lock()
            .expect("records lock")
            .get(colony_id)
            .map(|(r, _)| r.clone())
    }
}

/// The tarpc `Discovery` service over the records.
#[derive(Clone)]
struct DiscoveryService {
    records: EndpointRecords,
}

impl Discovery for DiscoveryService {
    async fn publish(self, _: Context, rec: SignedEndpoints) -> Result<(), DiscoveryError> {
        self.records.publish(rec)
    }

    async fn lookup(self, _: Context, colony_id: String) -> Option<SignedEndpoints> {
        self.records.lookup(&colony_id)
    }
}

/// Serves the registry on `listener` until `shutdown` resolves.
pub async fn run(listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let server = DiscoveryService {
        records: EndpointRecords::default(),
    };
    let accept = async {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let codec = tokio_util::codec::LengthDelimitedCodec::builder()
                .max_frame_length(MAX_FRAME)
                .new_codec();
            let transport = tarpc::serde_transport::new(
                tarpc::tokio_util::codec::Framed::new(stream, codec),
                tarpc::tokio_serde::formats::Json::default(),
            );
            let s = server.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(
                    Duration::from_secs(30),
                    BaseChannel::with_defaults(transport)
                        .execute(s.serve())
                        .for_each(|call| call),
                )
                .await;
            });
        }
    };
    tokio::select! {
        _ = accept => {}
        _ = shutdown => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coral_proto::EndpointRecord;

    fn rec(key: &ed25519_dalek::SigningKey, at: i64) -> SignedEndpoints {
        ms::sign_endpoints(
            key,
            &EndpointRecord {
                colony_id: "shop".into(),
                endpoints: vec!["192.0.2.1:51820".into()],
                issued_at_ms: at,
            },
        )
    }

    #[test]
    fn pins_the_first_key_and_refuses_forgeries_and_stale_records() {
        let r = EndpointRecords::default();
        let k = ms::signing_key(&[1; 32]);
        r.publish(rec(&k, 10)).unwrap();
        let other = ms::signing_key(&[2; 32]);
        assert_eq!(
            r.publish(rec(&other, 20)),
            Err(DiscoveryError::KeyMismatch("shop".into()))
        );
        assert_eq!(r.publish(rec(&k, 5)), Err(DiscoveryError::Stale));
        let mut forged = rec(&k, 30);
        forged.record = forged.record.replace("192.0.2.1", "192.0.2.66");
        assert_eq!(r.publish(forged), Err(DiscoveryError::BadSignature));
        let got = r.lookup("shop").unwrap();
        let body = ms::verify_endpoints(&ms::hex(k.verifying_key().as_bytes()), &got).unwrap();
        assert_eq!(body.issued_at_ms, 10);
    }
}
