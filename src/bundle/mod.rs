//! Runtime bundles (SPEC §8): one per container of the pod, `config.json` plus a `rootfs/`
//! that is an overlay of the image's layers.

pub mod spec;
