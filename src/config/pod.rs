//! The pod object (`kubectl get pod -o json`): annotations and container images. Unknown
//! fields are ignored.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::error::{InputError, Origin};

#[derive(Debug, Default, Deserialize)]
struct PodJson {
    metadata: Option<MetaJson>,
    spec: Option<SpecJson>,
}

#[derive(Debug, Default, Deserialize)]
struct MetaJson {
    name: Option<String>,
    namespace: Option<String>,
    annotations: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpecJson {
    init_containers: Option<Vec<ContainerJson>>,
    containers: Option<Vec<ContainerJson>>,
    ephemeral_containers: Option<Vec<ContainerJson>>,
    security_context: Option<SecurityJson>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerJson {
    name: Option<String>,
    image: Option<String>,
    command: Option<Vec<String>>,
    args: Option<Vec<String>>,
    env: Option<Vec<EnvJson>>,
    env_from: Option<Vec<serde_json::Value>>,
    working_dir: Option<String>,
    security_context: Option<SecurityJson>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnvJson {
    name: String,
    value: Option<String>,
    value_from: Option<serde_json::Value>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SecurityJson {
    run_as_user: Option<u32>,
    run_as_group: Option<u32>,
    run_as_non_root: Option<bool>,
    read_only_root_filesystem: Option<bool>,
    privileged: Option<bool>,
    allow_privilege_escalation: Option<bool>,
    capabilities: Option<CapabilitiesJson>,
    supplemental_groups: Option<Vec<u32>>,
    fs_group: Option<u32>,
}

#[derive(Debug, Default, Clone, Deserialize)]
struct CapabilitiesJson {
    add: Option<Vec<String>>,
    drop: Option<Vec<String>>,
}

/// A container of the pod, as far as its runtime bundle needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodContainer {
    pub name: String,
    pub init: bool,
    pub image: String,
    pub command: Option<Vec<String>>,
    pub args: Option<Vec<String>>,
    /// Literal `env` values in order (`valueFrom` entries are in `skipped_env`).
    pub env: Vec<(String, String)>,
    /// `valueFrom` entries and `envFrom` sources, which the agent cannot resolve.
    pub skipped_env: Vec<String>,
    pub working_dir: Option<String>,
    /// The container's securityContext over the pod's.
    pub run_as_user: Option<u32>,
    pub run_as_group: Option<u32>,
    pub read_only_root: bool,
    /// `runAsNonRoot` (the container's over the pod's).
    pub run_as_non_root: bool,
    pub privileged: bool,
    /// `allowPrivilegeEscalation: false`.
    pub no_new_privileges: bool,
    /// `capabilities.add` and `.drop`, as written (`CHOWN`, `CAP_CHOWN`, `ALL`).
    pub caps_add: Vec<String>,
    pub caps_drop: Vec<String>,
    /// The pod's `supplementalGroups`, then its `fsGroup`.
    pub extra_gids: Vec<u32>,
}

/// A container image as the pod lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodImage {
    /// e.g. `spec.containers[1]` (`app`).
    pub field: String,
    pub image: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pod {
    /// `namespace/name`, for logs.
    pub name: Option<String>,
    /// `metadata.name` alone (a container's hostname).
    pub pod_name: Option<String>,
    /// initContainers, then containers (what gets a runtime bundle).
    pub containers: Vec<PodContainer>,
    pub annotations: BTreeMap<String, String>,
    /// initContainers, then containers, then ephemeralContainers, in pod order.
    pub images: Vec<PodImage>,
}

impl Pod {
    pub fn parse(text: &str, path: &Path) -> Result<Pod, InputError> {
        let origin = |field: &str| Origin::Spec {
            path: path.to_path_buf(),
            field: field.to_string(),
        };
        let raw: PodJson = serde_json::from_str(text).map_err(|e| {
            InputError::new(
                origin(""),
                format!("not a Kubernetes Pod object in JSON ({e})"),
            )
        })?;
        let meta = raw.metadata.unwrap_or_default();
        let pod_name = meta.name.clone();
        let name = match (meta.namespace, meta.name) {
            (Some(ns), Some(n)) => Some(format!("{ns}/{n}")),
            (None, Some(n)) => Some(n),
            _ => None,
        };
        let spec = raw.spec.unwrap_or_default();
        let pod_security = spec.security_context.unwrap_or_default();
        let mut images = Vec::new();
        let mut bundled = Vec::new();
        for (list, containers) in [
            ("initContainers", spec.init_containers),
            ("containers", spec.containers),
            ("ephemeralContainers", spec.ephemeral_containers),
        ] {
            for (i, c) in containers.unwrap_or_default().into_iter().enumerate() {
                let field = match &c.name {
                    Some(n) => format!("spec.{list}[{i}] ({n})"),
                    None => format!("spec.{list}[{i}]"),
                };
                let image = match &c.image {
                    Some(image) if !image.is_empty() => image.clone(),
                    _ => {
                        return Err(InputError::new(
                            origin(&field),
                            "the container has no image",
                        ));
                    }
                };
                images.push(PodImage {
                    field: field.clone(),
                    image: image.clone(),
                });
                if list == "ephemeralContainers" {
                    continue;
                }
                // Checked when its bundle is made (a bad name fails that container only).
                let name = c.name.clone().unwrap_or_default();
                let sc = c.security_context.unwrap_or_default();
                let caps = sc.capabilities.clone().unwrap_or_default();
                let mut env = Vec::new();
                let mut skipped_env = Vec::new();
                for e in c.env.unwrap_or_default() {
                    match (e.value, e.value_from) {
                        (_, Some(_)) => skipped_env.push(format!("env {} (valueFrom)", e.name)),
                        (v, None) => env.push((e.name, v.unwrap_or_default())),
                    }
                }
                if let Some(from) = &c.env_from
                    && !from.is_empty()
                {
                    skipped_env.push(format!("envFrom ({} sources)", from.len()));
                }
                bundled.push(PodContainer {
                    name,
                    init: list == "initContainers",
                    image,
                    command: c.command,
                    args: c.args,
                    env,
                    skipped_env,
                    working_dir: c.working_dir.filter(|w| !w.is_empty()),
                    run_as_user: sc.run_as_user.or(pod_security.run_as_user),
                    run_as_group: sc.run_as_group.or(pod_security.run_as_group),
                    read_only_root: sc.read_only_root_filesystem.unwrap_or(false),
                    run_as_non_root: sc
                        .run_as_non_root
                        .or(pod_security.run_as_non_root)
                        .unwrap_or(false),
                    privileged: sc.privileged.unwrap_or(false),
                    no_new_privileges: sc.allow_privilege_escalation == Some(false),
                    caps_add: caps.add.unwrap_or_default(),
                    caps_drop: caps.drop.unwrap_or_default(),
                    extra_gids: pod_security
                        .supplemental_groups
                        .clone()
                        .unwrap_or_default()
                        .into_iter()
                        .chain(pod_security.fs_group)
                        .collect(),
                });
            }
        }
        Ok(Pod {
            name,
            pod_name,
            containers: bundled,
            annotations: meta.annotations.unwrap_or_default(),
            images,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Pod, InputError> {
        Pod::parse(text, Path::new("/run/kci/pod.json"))
    }

    #[test]
    fn reads_images_in_order_and_annotations() {
        let pod = parse(
            r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web","namespace":"prod",
               "annotations":{"k8s.ksyun.com/kci-http-registry":"10.0.0.5:5000","other":"x"},
               "labels":{"a":"b"}},
               "spec":{"containers":[{"name":"app","image":"10.0.0.5:5000/app:v1","ports":[]}],
                       "initContainers":[{"name":"init","image":"busybox"}],
                       "ephemeralContainers":[{"name":"debug","image":"alpine"}]},
               "status":{"phase":"Pending"}}"#,
        )
        .unwrap();
        assert_eq!(pod.name.as_deref(), Some("prod/web"));
        assert_eq!(
            pod.images
                .iter()
                .map(|i| i.image.as_str())
                .collect::<Vec<_>>(),
            vec!["busybox", "10.0.0.5:5000/app:v1", "alpine"]
        );
        assert_eq!(pod.images[1].field, "spec.containers[0] (app)");
        assert_eq!(
            pod.annotations["k8s.ksyun.com/kci-http-registry"],
            "10.0.0.5:5000"
        );
        assert_eq!(parse("{}").unwrap(), Pod::default());
    }

    #[test]
    fn rejects_malformed_pods() {
        let cases = [
            ("", "not a Kubernetes Pod"),
            ("[]", "not a Kubernetes Pod"),
            (r#"{"metadata":{"annotations":{"a":5}}}"#, "invalid type"),
            (
                r#"{"spec":{"containers":[{"name":"a"}]}}"#,
                "spec.containers[0] (a)",
            ),
            (r#"{"spec":{"containers":[{"image":""}]}}"#, "no image"),
            (r#"{"spec":{"containers":{"image":"x"}}}"#, "invalid type"),
        ];
        for (text, want) in cases {
            let msg = parse(text).expect_err(text).to_string();
            assert!(msg.contains("/run/kci/pod.json"), "{msg}");
            assert!(msg.contains(want), "{text}: {msg}");
        }
    }
}
