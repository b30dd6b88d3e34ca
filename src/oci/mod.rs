//! OCI content types shared by the registry client and the stores.

pub mod digest;

pub use digest::{Algorithm, Digest, DigestError, Hasher};
