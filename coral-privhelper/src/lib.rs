//! coral-privhelper
