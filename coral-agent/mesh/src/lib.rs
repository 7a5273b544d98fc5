//! Coral's WireGuard mesh, shared by the agent and the colony: the
//! userspace device that carries it ([`device`]) and who may be in it
//! ([`membership`]: join tokens, colony-signed grants and discovery
//! records, key files). How each side joins or admits lives with it (the
//! agent's `join`, the colony's mesh module).

pub mod device;
pub mod membership;
