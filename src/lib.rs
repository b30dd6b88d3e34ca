//! kci-pull-agent: the boot-time agent of a container instance.
//!
//! A pure core (configuration, network-file planning, registry policy) and a thin shell
//! (`main.rs`, file writes). See `README.md` for how operators use it.

pub mod bundle;
pub mod cache;
pub mod cli;
pub mod config;
pub mod diag;
pub mod error;
pub mod explain;
pub mod fsutil;
pub mod layers;
pub mod manage;
pub mod netfiles;
pub mod oci;
pub mod pull;
pub mod registry;
pub mod report;
pub mod run;
pub mod store;
