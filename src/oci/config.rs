//! The parts of an image config a puller needs: the layers' diff_ids, and their chain IDs.

use serde::Deserialize;

use super::digest::{Algorithm, Digest};

/// Largest image config read (configs are a few KiB; history can grow).
pub const MAX_CONFIG: u64 = 8 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("the image config is not valid JSON with rootfs.diff_ids: {0}")]
    Json(String),
    #[error("the image config lists {diff_ids} diff_ids for {layers} layers")]
    Count { diff_ids: usize, layers: usize },
    #[error("the image config's rootfs type is {0:?}, not \"layers\"")]
    RootfsType(String),
}

#[derive(Deserialize)]
struct Config {
    rootfs: Rootfs,
}

#[derive(Deserialize)]
struct Rootfs {
    #[serde(rename = "type")]
    kind: String,
    diff_ids: Vec<Digest>,
}

/// The diff_ids of an image config, checked against the number of layers of its manifest.
pub fn diff_ids(config: &[u8], layers: usize) -> Result<Vec<Digest>, ConfigError> {
    let c: Config = serde_json::from_slice(config).map_err(|e| ConfigError::Json(e.to_string()))?;
    if c.rootfs.kind != "layers" {
        return Err(ConfigError::RootfsType(c.rootfs.kind));
    }
    if c.rootfs.diff_ids.len() != layers {
        return Err(ConfigError::Count {
            diff_ids: c.rootfs.diff_ids.len(),
            layers,
        });
    }
    Ok(c.rootfs.diff_ids)
}

/// What an image config says about how its process runs (`config` of the image config).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: Option<Vec<String>>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}

/// The run configuration of an image config (empty if it has none).
pub fn run_config(config: &[u8]) -> Result<RunConfig, ConfigError> {
    #[derive(Deserialize)]
    struct Outer {
        config: Option<RunConfig>,
    }
    let o: Outer = serde_json::from_slice(config).map_err(|e| ConfigError::Json(e.to_string()))?;
    Ok(o.config.unwrap_or_default())
}

/// Chain IDs as the OCI image spec defines them: ChainID(L0) = DiffID(L0),
/// ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln)).
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(parent) => Digest::of(Algorithm::Sha256, format!("{parent} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_spec() {
        let a = Digest::sha256(b"a");
        let b = Digest::sha256(b"b");
        let ids = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(ids[0], a);
        assert_eq!(ids[1], Digest::sha256(format!("{a} {b}").as_bytes()));
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn the_run_config_is_read() {
        let c = run_config(
            br#"{"config":{"Entrypoint":["/bin/sh","-c"],"Cmd":["echo hi"],"Env":["A=1"],"WorkingDir":"/w","User":"app:staff","Labels":{}}}"#,
        )
        .unwrap();
        assert_eq!(c.entrypoint.unwrap(), vec!["/bin/sh", "-c"]);
        assert_eq!(c.user.as_deref(), Some("app:staff"));
        assert_eq!(run_config(b"{}").unwrap(), RunConfig::default());
    }

    #[test]
    fn diff_ids_are_read_and_checked() {
        let d = Digest::sha256(b"x");
        let cfg = format!(
            r#"{{"architecture":"amd64","rootfs":{{"type":"layers","diff_ids":["{d}"]}}}}"#
        );
        assert_eq!(diff_ids(cfg.as_bytes(), 1).unwrap(), vec![d]);
        assert!(matches!(
            diff_ids(cfg.as_bytes(), 2),
            Err(ConfigError::Count { .. })
        ));
        assert!(
            diff_ids(
                br#"{"rootfs":{"type":"layers","diff_ids":["sha256:../x"]}}"#,
                1
            )
            .is_err()
        );
        assert!(diff_ids(b"{}", 0).is_err());
    }
}
