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

/// Where per-registry configuration lives under `--root`: `<root>/etc/kci/certs.d/<host[:port]>/`
/// (CA files, `hosts.toml`).
pub const CERTS_D: &str = "etc/kci/certs.d";
