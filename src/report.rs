//! The JSON report of a pull (SPEC §6): one record per distinct image, plus totals.

use std::path::Path;

use serde::Serialize;
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The reference's manifest was already in the store.
    Present,
    /// The reference is new or changed in the store.
    Pulled,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Present => "present",
            Status::Pulled => "pulled",
            Status::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageReport {
    /// As given.
    pub image: String,
    /// Normalised.
    pub reference: String,
    pub registry: String,
    /// `http`, `https-insecure` or `https`.
    pub transport: &'static str,
    /// Digest of the stored manifest.
    pub digest: Option<String>,
    /// Bytes fetched over the network in this run.
    pub bytes: u64,
    pub seconds: f64,
    pub status: Status,
    pub error: Option<String>,
    /// With mirrors configured: the host that served (most of) the image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub served_by: Option<String>,
    /// Unpacked layers (absent with `--no-unpack`), bottom first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<LayerReport>>,
    /// Bytes of uncompressed layer streams unpacked in this run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unpacked_bytes: Option<u64>,
}

/// One layer of an image in the layer store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LayerReport {
    /// The compressed blob.
    pub digest: String,
    pub diff_id: String,
    pub chain_id: String,
    /// Uncompressed bytes.
    pub size: u64,
    /// Whether it was unpacked in this run (else it was already in the layer store).
    pub unpacked: bool,
}

/// The whole report: `images`, `totals`, and any extra sections (`network` for `boot`).
pub fn to_json(images: &[ImageReport], seconds: f64, extra: Vec<(&str, Value)>) -> Value {
    let count = |s: Status| images.iter().filter(|i| i.status == s).count();
    let mut v = json!({
        "images": images,
        "totals": {
            "images": images.len(),
            "pulled": count(Status::Pulled),
            "present": count(Status::Present),
            "failed": count(Status::Failed),
            "bytes": images.iter().map(|i| i.bytes).sum::<u64>(),
            "seconds": seconds,
        },
    });
    for (k, x) in extra {
        v[k] = x;
    }
    v
}

/// Writes the report atomically (temporary file, fsync, rename), creating its directory.
pub fn write(path: &Path, report: &Value) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut bytes = serde_json::to_vec_pretty(report)?;
    bytes.push(b'\n');
    crate::fsutil::atomic::write_file(path, path, &bytes).map(|_| ())
}

/// The one-line summary printed at the end of a run.
pub fn summary(images: &[ImageReport], seconds: f64) -> String {
    let failed = images.iter().filter(|i| i.status == Status::Failed).count();
    let bytes: u64 = images.iter().map(|i| i.bytes).sum();
    format!(
        "{} image(s): {} pulled, {} present, {} failed; {:.1} MB fetched in {:.2} s",
        images.len(),
        images.iter().filter(|i| i.status == Status::Pulled).count(),
        images
            .iter()
            .filter(|i| i.status == Status::Present)
            .count(),
        failed,
        bytes as f64 / 1e6,
        seconds
    )
}
