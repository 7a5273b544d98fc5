//! coral-policy
