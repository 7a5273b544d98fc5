//! The node's WireGuard (X25519) static key: generated on first use, stored
//! 0600 in a 0700 state dir owned by the running user, handed out as a sealed
//! memfd. The private key is never logged and never put in argv or env.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::libc;
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::unistd::geteuid;
use thiserror::Error;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

/// Name of the private key file in the state dir.
pub const KEY_FILE: &str = "wg-private.key";

/// Seals every key memfd carries.
pub fn key_seals() -> SealFlag {
    SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_SEAL
}

#[derive(Debug, Error)]
pub enum KeyError {
    #[error("state dir {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "state dir {0} must be a directory owned by uid {1} and not accessible by group or others (chmod 700 it)"
    )]
    StateDirUnsafe(PathBuf, u32),
    #[error("key file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "key file {0} is damaged or unsafe (must be 32 bytes, mode 0600, owned by uid {1}); move it aside to generate a new key"
    )]
    Unsafe(PathBuf, u32),
    #[error("cannot make the key memfd: {0}")]
    Memfd(nix::Error),
    #[error("key memfd is not sealed as expected")]
    NotSealed,
    #[error("public key does not match the private key")]
    Mismatch,
}

/// A key pair; the secret is wiped on drop.
pub struct NodeKey {
    pub public: [u8; 32],
    pub secret: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeKey")
            .field("public", &self.public)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Public key of a secret.
pub fn public_of(secret: &[u8; 32]) -> [u8; 32] {
    let s = StaticSecret::from(*secret);
    PublicKey::from(&s).to_bytes()
}

/// Ensures `dir` exists, is a directory owned by the euid, mode 0700.
pub fn ensure_state_dir(dir: &Path) -> Result<(), KeyError> {
    let err = |source| KeyError::StateDir {
        path: dir.to_owned(),
        source,
    };
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(err)?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(err)?;
        }
        Err(e) => return Err(err(e)),
        Ok(_) => {}
    }
    let md = fs::symlink_metadata(dir).map_err(err)?;
    let euid = geteuid().as_raw();
    if !md.is_dir() || md.uid() != euid || md.mode() & 0o077 != 0 {
        return Err(KeyError::StateDirUnsafe(dir.to_owned(), euid));
    }
    Ok(())
}

/// Loads the key from `dir`, or generates and stores one if there is none.
/// A file that is present but wrong is refused, never overwritten.
pub fn load_or_generate(dir: &Path) -> Result<NodeKey, KeyError> {
    ensure_state_dir(dir)?;
    let path = dir.join(KEY_FILE);
    let euid = geteuid().as_raw();
    let file_err = |source| KeyError::File {
        path: path.clone(),
        source,
    };
    match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
    {
        Ok(mut f) => {
            let md = f.metadata().map_err(file_err)?;
            if !md.is_file() || md.uid() != euid || md.mode() & 0o077 != 0 || md.len() != 32 {
                return Err(KeyError::Unsafe(path, euid));
            }
            let mut secret = Zeroizing::new([0u8; 32]);
            f.read_exact(&mut secret[..]).map_err(file_err)?;
            Ok(NodeKey {
                public: public_of(&secret),
                secret,
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let s = StaticSecret::random();
            let secret = Zeroizing::new(s.to_bytes());
            let tmp = dir.join(format!("{KEY_FILE}.tmp"));
            let _ = fs::remove_file(&tmp);
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&tmp)
                .map_err(file_err)?;
            f.write_all(&secret[..]).map_err(file_err)?;
            f.sync_all().map_err(file_err)?;
            drop(f);
            fs::rename(&tmp, &path).map_err(file_err)?;
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
            Ok(NodeKey {
                public: PublicKey::from(&s).to_bytes(),
                secret,
            })
        }
        Err(e) => Err(file_err(e)),
    }
}

/// Puts the secret in a new memfd and seals it against any change.
pub fn sealed_memfd(secret: &[u8; 32]) -> Result<OwnedFd, KeyError> {
    let fd = memfd_create(
        c"coral-wg-key",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )
    .map_err(KeyError::Memfd)?;
    let mut f = File::from(fd);
    f.write_all(secret)
        .and_then(|()| f.seek(SeekFrom::Start(0)).map(|_| ()))
        .map_err(|e| KeyError::Memfd(nix::Error::from_raw(e.raw_os_error().unwrap_or(0))))?;
    fcntl(&f, FcntlArg::F_ADD_SEALS(key_seals())).map_err(KeyError::Memfd)?;
    Ok(OwnedFd::from(f))
}

/// Reads a key pair from a sealed memfd, checking the seals and that the
/// public key matches.
pub fn read_sealed(fd: OwnedFd, public: [u8; 32]) -> Result<NodeKey, KeyError> {
    let seals = fcntl(&fd, FcntlArg::F_GET_SEALS).map_err(KeyError::Memfd)?;
    let seals = SealFlag::from_bits_truncate(seals);
    if !seals.contains(key_seals()) {
        return Err(KeyError::NotSealed);
    }
    let f = File::from(fd);
    let mut secret = Zeroizing::new([0u8; 32]);
    f.read_exact_at(&mut secret[..], 0)
        .map_err(|e| KeyError::Memfd(nix::Error::from_raw(e.raw_os_error().unwrap_or(0))))?;
    if public_of(&secret) != public {
        return Err(KeyError::Mismatch);
    }
    Ok(NodeKey { public, secret })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_then_load_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let a = load_or_generate(&state).unwrap();
        let b = load_or_generate(&state).unwrap();
        assert_eq!(a.public, b.public);
        assert_eq!(*a.secret, *b.secret);
        let md = fs::metadata(state.join(KEY_FILE)).unwrap();
        assert_eq!(md.mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(&state).unwrap().mode() & 0o777, 0o700);
    }

    #[test]
    fn unsafe_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        load_or_generate(&state).unwrap();
        let p = state.join(KEY_FILE);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            load_or_generate(&state),
            Err(KeyError::Unsafe(..))
        ));
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&p, b"short").unwrap();
        assert!(matches!(
            load_or_generate(&state),
            Err(KeyError::Unsafe(..))
        ));
    }

    #[test]
    fn memfd_is_sealed_and_round_trips() {
        let secret = [7u8; 32];
        let fd = sealed_memfd(&secret).unwrap();
        let k = read_sealed(fd, public_of(&secret)).unwrap();
        assert_eq!(*k.secret, secret);
        let fd = sealed_memfd(&secret).unwrap();
        assert!(matches!(read_sealed(fd, [0; 32]), Err(KeyError::Mismatch)));
        let fd = sealed_memfd(&secret).unwrap();
        let mut f = File::from(fd);
        assert!(
            f.write_all(b"x").is_err(),
            "sealed memfd must refuse writes"
        );
    }
}
