//! Registries: references, exact `host[:port]` identity, the transport policy, mirrors and
//! name resolution.

pub mod endpoints;
pub mod host;
pub mod mirrors;
mod pinned;
pub mod policy;
pub mod proxy;
pub mod reference;
pub mod resolver;
pub mod transport;
