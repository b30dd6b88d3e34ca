//! Manifests and indexes, OCI and Docker schema 2: just the fields a puller needs, and the
//! platform choice.

use serde::{Deserialize, Serialize};

use crate::oci::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1";

/// The `Accept` header for manifest requests.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// Largest manifest accepted (the distribution spec suggests registries cap at 4 MiB).
pub const MAX_MANIFEST: u64 = 8 << 20;
/// Most layers accepted in one image manifest (SPEC §9).
pub const MAX_LAYERS: usize = 1000;
/// Most entries accepted in one index (SPEC §9).
pub const MAX_INDEX_ENTRIES: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformJson {
    pub os: String,
    pub architecture: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(rename = "os.version", skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
}

/// An OCI content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    /// Validated when the document is parsed: nothing else than a digest can reach a path.
    pub digest: Digest,
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<PlatformJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub annotations: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Any {
    schema_version: Option<u32>,
    media_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
}

/// A parsed manifest document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Document {
    Manifest {
        media_type: String,
        config: Box<Descriptor>,
        layers: Vec<Descriptor>,
    },
    Index {
        media_type: String,
        manifests: Vec<Descriptor>,
    },
}

/// Why a document is not a manifest or index the agent can pull.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error(
        "the registry serves a Docker schema 1 manifest, which is deprecated and not supported; push the image again with a current client"
    )]
    Schema1,
    #[error("invalid manifest JSON: {0}")]
    Json(String),
    #[error("unsupported {kind} media type {media_type:?}")]
    MediaType {
        kind: &'static str,
        media_type: String,
    },
    #[error("the index lists {0} manifests; at most {MAX_INDEX_ENTRIES} are accepted")]
    TooManyEntries(usize),
    #[error("the manifest lists {0} layers; at most {MAX_LAYERS} are accepted")]
    TooManyLayers(usize),
    #[error("the sizes of the manifest's blobs add up to more than 2^64 bytes")]
    SizeOverflow,
    #[error("the document is neither an image manifest nor an index")]
    Neither,
}

/// Parses a manifest or index; `content_type` is the response's `Content-Type`, used when the
/// document has no `mediaType` of its own.
pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Document, ManifestError> {
    let ct = content_type
        .map(|c| c.split(';').next().unwrap_or("").trim())
        .filter(|c| !c.is_empty());
    if ct.is_some_and(|c| c.starts_with(DOCKER_SCHEMA1)) {
        return Err(ManifestError::Schema1);
    }
    let doc: Any = serde_json::from_slice(bytes).map_err(|e| ManifestError::Json(e.to_string()))?;
    if doc.schema_version == Some(1) {
        return Err(ManifestError::Schema1);
    }
    let media_type = doc
        .media_type
        .clone()
        .or_else(|| ct.map(str::to_string))
        .unwrap_or_default();
    match (doc.manifests, doc.config, doc.layers) {
        (Some(manifests), None, _) => {
            let media_type = if media_type.is_empty() || media_type == "application/json" {
                OCI_INDEX.to_string()
            } else {
                media_type
            };
            if media_type != OCI_INDEX && media_type != DOCKER_LIST {
                return Err(ManifestError::MediaType {
                    kind: "index",
                    media_type,
                });
            }
            if manifests.len() > MAX_INDEX_ENTRIES {
                return Err(ManifestError::TooManyEntries(manifests.len()));
            }
            Ok(Document::Index {
                media_type,
                manifests,
            })
        }
        (None, Some(config), layers) => {
            let media_type = if media_type.is_empty() || media_type == "application/json" {
                OCI_MANIFEST.to_string()
            } else {
                media_type
            };
            if media_type != OCI_MANIFEST && media_type != DOCKER_MANIFEST {
                return Err(ManifestError::MediaType {
                    kind: "manifest",
                    media_type,
                });
            }
            let layers = layers.unwrap_or_default();
            if layers.len() > MAX_LAYERS {
                return Err(ManifestError::TooManyLayers(layers.len()));
            }
            // The sum of the sizes must not overflow (it is what the pull expects to fetch).
            std::iter::once(&config)
                .chain(&layers)
                .try_fold(0u64, |acc, d| acc.checked_add(d.size))
                .ok_or(ManifestError::SizeOverflow)?;
            Ok(Document::Manifest {
                media_type,
                config: Box::new(config),
                layers,
            })
        }
        _ => Err(ManifestError::Neither),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_formats() {
        let d = "sha256:".to_string() + &"a".repeat(64);
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"x","digest":"{d}","size":3}},"layers":[{{"mediaType":"y","digest":"{d}","size":4}}]}}"#
        );
        match parse(m.as_bytes(), None).unwrap() {
            Document::Manifest {
                media_type, layers, ..
            } => {
                assert_eq!(media_type, DOCKER_MANIFEST);
                assert_eq!(layers.len(), 1);
            }
            other => panic!("{other:?}"),
        }
        let oci_no_type = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"x","digest":"{d}","size":3}},"layers":[]}}"#
        );
        assert!(matches!(
            parse(oci_no_type.as_bytes(), Some(OCI_MANIFEST)).unwrap(),
            Document::Manifest { .. }
        ));
        let idx = r#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(matches!(
            parse(idx.as_bytes(), Some(DOCKER_LIST)),
            Ok(Document::Index { media_type, .. }) if media_type == DOCKER_LIST
        ));
        assert!(
            parse(br#"{"schemaVersion":1,"fsLayers":[]}"#, None)
                .unwrap_err()
                .to_string()
                .contains("schema 1")
        );
        assert!(
            parse(
                b"{}",
                Some("application/vnd.docker.distribution.manifest.v1+prettyjws")
            )
            .is_err()
        );
        assert!(parse(b"not json", None).is_err());
        let bad_digest = r#"{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:../../etc","size":3},"layers":[]}"#;
        assert!(parse(bad_digest.as_bytes(), None).is_err());
    }

    /// SPEC §9: at most 1,000 layers per manifest and 10,000 entries per index; the sizes of
    /// a manifest's blobs cannot overflow.
    #[test]
    fn limits_on_layers_entries_and_sizes() {
        let d = "sha256:".to_string() + &"a".repeat(64);
        let layer = format!(r#"{{"mediaType":"y","digest":"{d}","size":1}}"#);
        let manifest = |n: usize| {
            format!(
                r#"{{"schemaVersion":2,"config":{{"mediaType":"x","digest":"{d}","size":3}},"layers":[{}]}}"#,
                vec![layer.as_str(); n].join(",")
            )
        };
        assert!(parse(manifest(MAX_LAYERS).as_bytes(), None).is_ok());
        let e = parse(manifest(MAX_LAYERS + 1).as_bytes(), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("1001 layers"), "{e}");
        let entry = format!(r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{d}","size":1}}"#);
        let index = |n: usize| {
            format!(
                r#"{{"schemaVersion":2,"manifests":[{}]}}"#,
                vec![entry.as_str(); n].join(",")
            )
        };
        assert!(parse(index(MAX_INDEX_ENTRIES).as_bytes(), None).is_ok());
        assert!(
            parse(index(MAX_INDEX_ENTRIES + 1).as_bytes(), None)
                .unwrap_err()
                .to_string()
                .contains("10001")
        );
        let huge = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"x","digest":"{d}","size":{}}},"layers":[{{"mediaType":"y","digest":"{d}","size":{}}}]}}"#,
            u64::MAX,
            2
        );
        assert_eq!(
            parse(huge.as_bytes(), None).unwrap_err(),
            ManifestError::SizeOverflow
        );
    }
}
