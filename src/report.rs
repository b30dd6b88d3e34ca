//! The JSON report of a pull (SPEC §6): one record per distinct image, plus totals.

use std::path::Path;
use std::sync::OnceLock;
use std::time::SystemTime;

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
    /// Seconds from the image's start to its manifest, to the last byte of its blobs, and to
    /// its last layer committed (each absent when not reached or not needed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds_to_manifest: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds_to_last_byte: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds_to_committed: Option<f64>,
    /// The image cache its manifest and config came from (SPEC §12).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<String>,
    /// What the operator should know although the image did not fail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
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
    /// Where the layer came from: `cache` (an image cache's, used in place), `store` (the
    /// layer store had it, or its stored blob was unpacked) or `registry` (its blob was
    /// fetched in this run).
    pub from: &'static str,
}

/// The agent's version and the commit it is built from.
pub const AGENT_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("KCI_COMMIT"), ")");

static STARTED: OnceLock<SystemTime> = OnceLock::new();

/// Marks when the run started (the report's `started_at`).
pub fn mark_start() {
    STARTED.get_or_init(SystemTime::now);
}

/// `t` as RFC 3339 in UTC with milliseconds, e.g. `2026-12-04T09:30:00.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// The whole report: `images`, `totals`, and any extra sections (`network` for `boot`).
pub fn to_json(images: &[ImageReport], seconds: f64, extra: Vec<(&str, Value)>) -> Value {
    let count = |s: Status| images.iter().filter(|i| i.status == s).count();
    let now = SystemTime::now();
    let mut v = json!({
        "agent_version": AGENT_VERSION,
        "started_at": rfc3339(*STARTED.get().unwrap_or(&now)),
        "finished_at": rfc3339(now),
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

/// Writes the report: `-` to standard output; an existing file that is not a regular file
/// (a terminal, a pipe, `/dev/stdout`) written in place, never replaced; anything else
/// atomically (temporary file, fsync, rename), creating its directory.
pub fn write(path: &Path, report: &Value) -> std::io::Result<()> {
    use std::io::Write;
    let mut bytes = serde_json::to_vec_pretty(report)?;
    bytes.push(b'\n');
    if path == Path::new("-") {
        let mut out = std::io::stdout().lock();
        out.write_all(&bytes)?;
        return out.flush();
    }
    if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
        let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
        return f.write_all(&bytes);
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
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

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_times() {
        use std::time::{Duration, UNIX_EPOCH};
        assert_eq!(super::rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            super::rfc3339(UNIX_EPOCH + Duration::from_millis(1_796_376_600_123)),
            "2026-12-04T09:30:00.123Z"
        );
        assert_eq!(
            super::rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000Z"
        );
    }
}
