//! Mesh membership, shared by the colony and the agent: join tokens, the
//! sealed token secret, colony-signed grants and discovery records, and the
//! 0600 key files a daemon keeps when it runs without coral-privhelper.
//!
//! Crypto comes from maintained crates only: Ed25519 signatures
//! (`ed25519-dalek`), sealed boxes to the colony's X25519 key (`crypto_box`),
//! SHA-256 of token secrets (`sha2`).

use base64::Engine as _;
use coral_proto::{EndpointRecord, JoinToken, MeshGrant, SignedEndpoints, SignedGrant};
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use sha2::Digest as _;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::Path;

pub const TOKEN_PREFIX: &str = "coral-join-v1.";
const GRANT_CONTEXT: &[u8] = b"coral-grant-v1\n";
const ENDPOINTS_CONTEXT: &[u8] = b"coral-endpoints-v1\n";
/// Longest token accepted (a token is a few hundred bytes).
const MAX_TOKEN: usize = 8 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error(
        "not a Coral join token (it should start with '{TOKEN_PREFIX}'; copy it whole from 'coral colony token create')"
    )]
    NotAToken,
    #[error("the join token is damaged ({0}); copy it whole from 'coral colony token create'")]
    BadToken(String),
    #[error("bad signature on the {0} from the colony")]
    BadSignature(&'static str),
    #[error("invalid {what}: {why}")]
    Invalid { what: &'static str, why: String },
    #[error("key file {path}: {why}")]
    KeyFile { path: String, why: String },
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// 32 bytes from 64 hex digits.
pub fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

pub fn random32() -> [u8; 32] {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the OS random source failed");
    b
}

pub fn encode_token(t: &JoinToken) -> String {
    let json = serde_json::to_vec(t).expect("token serialises");
    format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    )
}

pub fn decode_token(s: &str) -> Result<JoinToken, MembershipError> {
    let s = s.trim();
    if s.len() > MAX_TOKEN {
        return Err(MembershipError::BadToken("too long".into()));
    }
    let body = s
        .strip_prefix(TOKEN_PREFIX)
        .ok_or(MembershipError::NotAToken)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|_| MembershipError::BadToken("not base64url".into()))?;
    let t: JoinToken = serde_json::from_slice(&json)
        .map_err(|_| MembershipError::BadToken("not a token record".into()))?;
    let bad = |w: &str| MembershipError::BadToken(w.into());
    coral_proto::spec::validate_colony_id(&t.colony_id).map_err(|_| bad("bad colony id"))?;
    unhex32(&t.colony_public_key).ok_or_else(|| bad("bad colony key"))?;
    verifying_key(&t.colony_sign_key).map_err(|_| bad("bad signing key"))?;
    unhex32(&t.secret).ok_or_else(|| bad("bad secret"))?;
    if t.endpoints.is_empty() || t.endpoints.len() > 16 {
        return Err(bad("no endpoints"));
    }
    Ok(t)
}

/// Hex SHA-256 of a token secret: what the colony stores.
pub fn secret_hash(secret: &[u8; 32]) -> String {
    hex(&sha2::Sha256::digest(secret))
}

/// Seals `secret || agent_public` to the colony's X25519 key.
pub fn seal_secret(
    colony_public: &[u8; 32],
    secret: &[u8; 32],
    agent_public: &[u8; 32],
) -> Vec<u8> {
    let mut msg = Vec::with_capacity(64);
    msg.extend_from_slice(secret);
    msg.extend_from_slice(agent_public);
    crypto_box::PublicKey::from(*colony_public)
        .seal(&mut crypto_box::aead::OsRng, &msg)
        .expect("sealing cannot fail for 64 bytes")
}

/// Opens a sealed secret; returns (secret, agent public key it is bound to).
pub fn open_secret(colony_private: &[u8; 32], sealed: &[u8]) -> Option<([u8; 32], [u8; 32])> {
    if sealed.len() > 256 {
        return None;
    }
    let msg = crypto_box::SecretKey::from(*colony_private)
        .unseal(sealed)
        .ok()?;
    if msg.len() != 64 {
        return None;
    }
    Some((msg[..32].try_into().ok()?, msg[32..].try_into().ok()?))
}

pub fn verifying_key(hex_key: &str) -> Result<VerifyingKey, MembershipError> {
    let b = unhex32(hex_key).ok_or(MembershipError::Invalid {
        what: "signing key",
        why: "not 64 hex digits".into(),
    })?;
    VerifyingKey::from_bytes(&b).map_err(|e| MembershipError::Invalid {
        what: "signing key",
        why: e.to_string(),
    })
}

fn sign(key: &SigningKey, context: &[u8], text: &str) -> String {
    let mut msg = context.to_vec();
    msg.extend_from_slice(text.as_bytes());
    hex(&key.sign(&msg).to_bytes())
}

fn verify(
    key: &VerifyingKey,
    context: &[u8],
    text: &str,
    sig_hex: &str,
    what: &'static str,
) -> Result<(), MembershipError> {
    let bad = || MembershipError::BadSignature(what);
    if sig_hex.len() != 128 {
        return Err(bad());
    }
    let mut sig = [0u8; 64];
    for (i, b) in sig.iter_mut().enumerate() {
        *b = u8::from_str_radix(sig_hex.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16)
            .map_err(|_| bad())?;
    }
    let mut msg = context.to_vec();
    msg.extend_from_slice(text.as_bytes());
    key.verify(&msg, &Signature::from_bytes(&sig))
        .map_err(|_| bad())
}

pub fn sign_grant(key: &SigningKey, grant: &MeshGrant) -> SignedGrant {
    let text = serde_json::to_string(grant).expect("grant serialises");
    SignedGrant {
        signature: sign(key, GRANT_CONTEXT, &text),
        grant: text,
    }
}

/// Checks the colony's signature and returns the grant.
pub fn verify_grant(sign_key: &str, signed: &SignedGrant) -> Result<MeshGrant, MembershipError> {
    verify(
        &verifying_key(sign_key)?,
        GRANT_CONTEXT,
        &signed.grant,
        &signed.signature,
        "peer config",
    )?;
    serde_json::from_str(&signed.grant).map_err(|e| MembershipError::Invalid {
        what: "peer config",
        why: e.to_string(),
    })
}

pub fn sign_endpoints(key: &SigningKey, rec: &EndpointRecord) -> SignedEndpoints {
    let text = serde_json::to_string(rec).expect("record serialises");
    SignedEndpoints {
        signature: sign(key, ENDPOINTS_CONTEXT, &text),
        sign_key: hex(key.verifying_key().as_bytes()),
        record: text,
    }
}

/// Checks a discovery record against `sign_key` (the key the verifier
/// already trusts, never the one the record names).
pub fn verify_endpoints(
    sign_key: &str,
    signed: &SignedEndpoints,
) -> Result<EndpointRecord, MembershipError> {
    verify(
        &verifying_key(sign_key)?,
        ENDPOINTS_CONTEXT,
        &signed.record,
        &signed.signature,
        "endpoint record",
    )?;
    serde_json::from_str(&signed.record).map_err(|e| MembershipError::Invalid {
        what: "endpoint record",
        why: e.to_string(),
    })
}

/// A 32-byte secret kept in a file of its own, mode 0600, owned by this
/// user: read if present (refused if readable by others or the wrong size),
/// created from the OS random source if not.
pub fn load_or_create_secret(path: &Path) -> Result<[u8; 32], MembershipError> {
    let err = |why: String| MembershipError::KeyFile {
        path: path.display().to_string(),
        why,
    };
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(mut f) => {
            let md = f.metadata().map_err(|e| err(e.to_string()))?;
            if md.mode() & 0o077 != 0 || md.uid() != nix::unistd::geteuid().as_raw() {
                return Err(err("must be owned by this user with mode 0600".into()));
            }
            let mut b = [0u8; 32];
            if md.len() != 32 {
                return Err(err("must hold exactly 32 bytes".into()));
            }
            f.read_exact(&mut b).map_err(|e| err(e.to_string()))?;
            Ok(b)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let b = random32();
            let tmp = path.with_extension("tmp");
            let _ = std::fs::remove_file(&tmp);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .open(&tmp)
                .map_err(|e| err(e.to_string()))?;
            f.write_all(&b).map_err(|e| err(e.to_string()))?;
            f.sync_all().map_err(|e| err(e.to_string()))?;
            std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))?;
            Ok(b)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

/// Writes `data` to `path` atomically with mode 0600.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

pub fn signing_key(seed: &[u8; 32]) -> SigningKey {
    SigningKey::from_bytes(seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> JoinToken {
        JoinToken {
            colony_id: "shop".into(),
            colony_public_key: hex(&[1; 32]),
            colony_sign_key: hex(signing_key(&[2; 32]).verifying_key().as_bytes()),
            endpoints: vec!["192.0.2.1:51820".into()],
            secret: hex(&[3; 32]),
        }
    }

    #[test]
    fn tokens_round_trip_and_garbage_is_named() {
        let t = token();
        assert_eq!(decode_token(&encode_token(&t)).unwrap(), t);
        assert!(matches!(
            decode_token("hello"),
            Err(MembershipError::NotAToken)
        ));
        let s = encode_token(&t);
        let cut = &s[..s.len() - 10];
        assert!(matches!(
            decode_token(cut),
            Err(MembershipError::BadToken(_))
        ));
    }

    #[test]
    fn sealed_secret_opens_only_with_the_colony_key() {
        let colony = random32();
        let public = crate::device::public_key(&colony);
        let sealed = seal_secret(&public, &[7; 32], &[8; 32]);
        assert_eq!(open_secret(&colony, &sealed), Some(([7; 32], [8; 32])));
        assert_eq!(open_secret(&random32(), &sealed), None);
    }

    #[test]
    fn grants_verify_only_unchanged_and_with_the_right_key() {
        let k = signing_key(&[5; 32]);
        let g = MeshGrant {
            colony_id: "shop".into(),
            agent_id: "a".into(),
            agent_public_key: hex(&[1; 32]),
            mesh_ip: "100.64.0.2".into(),
            subnet: "100.64.0.0/20".into(),
            colony_mesh_ip: "100.64.0.1".into(),
            colony_public_key: hex(&[2; 32]),
            endpoints: vec!["192.0.2.1:51820".into()],
            rpc_port: 9000,
            issued_at_ms: 1,
        };
        let s = sign_grant(&k, &g);
        let pk = hex(k.verifying_key().as_bytes());
        assert_eq!(verify_grant(&pk, &s).unwrap(), g);
        let mut forged = s.clone();
        forged.grant = forged.grant.replace("100.64.0.2", "100.64.0.3");
        assert!(verify_grant(&pk, &forged).is_err());
        let other = hex(signing_key(&[6; 32]).verifying_key().as_bytes());
        assert!(verify_grant(&other, &s).is_err());
    }
}
