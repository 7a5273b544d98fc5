//! Live debugging (issue 12): uprobes attached to running code on this
//! host, through `coral-privhelper`'s `UprobeAttach` or directly with
//! `CAP_BPF`. `index` says what can be probed in a binary and where each
//! argument is.

pub mod index;
pub mod session;

pub use session::{Debugger, Limits};

#[cfg(test)]
mod tests;
