//! Registries: references, exact `host[:port]` identity, and the transport policy.

pub mod dns;
pub mod host;
pub mod hosts;
pub mod policy;
pub mod reference;
pub mod transport;
