//! OCI content types shared by the registry client and the stores.

pub mod config;
pub mod digest;
pub mod manifest;
pub mod platform;

pub use digest::{Algorithm, Digest, DigestError, Hasher};
