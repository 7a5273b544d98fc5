//! coral-privhelper: the only root code of Coral.
//!
//! The binary (`src/main.rs`) is a thin `main` around [`server::run`]. The
//! library also holds what the unprivileged colony and agent use: the
//! [`client::Client`], [`client::open_tun`] (helper first, then direct
//! creation with `CAP_NET_ADMIN`) and [`tun::create`].
//!
//! `unsafe` is allowed here (it is denied in the rest of the workspace) for
//! ioctls, fd adoption and process hygiene; every block has a `SAFETY:` note.
#![allow(unsafe_code)]

pub mod bpf;
pub mod client;
pub mod config;
pub mod elfcode;
pub mod keys;
pub mod protocol;
pub mod sandbox;
pub mod server;
pub mod startup;
pub mod target;
pub mod tun;
pub mod uprobe;
pub mod wire;

pub use client::{
    BpfFds, BpfPath, Client, ClientError, OpenBpfError, TunPath, UprobeObject, open_bpf, open_tun,
};
pub use protocol::{IfName, TunParams, UprobePoint};
