//! The pod object (`kubectl get pod -o json`): annotations and container images. Unknown
//! fields are ignored.

use std::collections::BTreeMap;
use std::path::Path;

use super::podjson::PodJson;
pub use super::podjson::Resources;
use super::podnet::pod_net;
pub use super::podnet::{DnsPolicy, PodNet};
use crate::diag::{InputError, Origin};

/// What backs a volume a container mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeKind {
    /// `emptyDir`: a directory of the pod's (`medium: Memory`: a tmpfs, `sizeLimit` as
    /// written).
    EmptyDir {
        memory: bool,
        size_limit: Option<String>,
    },
    /// Any other type (`configMap`, `secret`, `persistentVolumeClaim`, ...), or none found.
    Other(String),
}

/// One of a container's `volumeMounts`, with the kind of its volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMount {
    pub volume: String,
    pub kind: VolumeKind,
    pub mount_path: String,
    pub read_only: bool,
    pub sub_path: Option<String>,
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
    /// `terminationMessagePath` (default `/dev/termination-log`).
    pub termination_message_path: String,
    pub resources: Resources,
    /// `emptyDir` mounts (others are listed in `skipped_env` and not mounted).
    pub volume_mounts: Vec<VolumeMount>,
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
    /// What the pod's `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf` are made of.
    pub net: PodNet,
}

impl Pod {
    /// Parses the pod object; `instance_ip` (the instance's primary address) stands in for
    /// `status.podIP` when the pod object has none.
    pub fn parse(text: &str, path: &Path, instance_ip: Option<&str>) -> Result<Pod, InputError> {
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
        let mut status = raw.status.unwrap_or_default();
        if status.pod_ip.as_deref().is_none_or(str::is_empty) {
            status.pod_ip = instance_ip.map(str::to_string);
        }
        let spec = raw.spec.unwrap_or_default();
        let mut envs_of = super::downward::resolve_env(&spec, &meta, &status).into_iter();
        let pod_name = meta.name.clone();
        let name = match (meta.namespace.clone(), meta.name.clone()) {
            (Some(ns), Some(n)) => Some(format!("{ns}/{n}")),
            (None, Some(n)) => Some(n),
            _ => None,
        };
        let pod_security = spec.security_context.clone().unwrap_or_default();
        let volumes = spec.volumes.clone().unwrap_or_default();
        let net = pod_net(&spec, &meta, &status, pod_name.as_deref(), &origin)?;
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
                let (env, mut skipped_env) = envs_of.next().unwrap_or_default();
                let mut mounts = Vec::new();
                for m in c.volume_mounts.clone().unwrap_or_default() {
                    let kind = match volumes
                        .iter()
                        .find(|v| v.get("name").and_then(|n| n.as_str()) == Some(m.name.as_str()))
                    {
                        Some(v) if v.get("emptyDir").is_some() => VolumeKind::EmptyDir {
                            memory: v.pointer("/emptyDir/medium").and_then(|x| x.as_str())
                                == Some("Memory"),
                            size_limit: match v.pointer("/emptyDir/sizeLimit") {
                                Some(serde_json::Value::String(s)) => Some(s.clone()),
                                Some(serde_json::Value::Number(n)) => Some(n.to_string()),
                                _ => None,
                            },
                        },
                        Some(v) => VolumeKind::Other(
                            v.as_object()
                                .and_then(|o| o.keys().find(|k| *k != "name").cloned())
                                .unwrap_or_else(|| "no type".into()),
                        ),
                        None => VolumeKind::Other("not in spec.volumes".into()),
                    };
                    if let VolumeKind::Other(t) = &kind {
                        skipped_env.push(format!("volume {} ({t}) at {}", m.name, m.mount_path));
                        continue;
                    }
                    // Expanded from the environment by the kubelet; not mounted whole instead.
                    if m.sub_path_expr.as_deref().is_some_and(|e| !e.is_empty()) {
                        skipped_env.push(format!(
                            "volume {} (subPathExpr) at {}",
                            m.name, m.mount_path
                        ));
                        continue;
                    }
                    mounts.push(VolumeMount {
                        volume: m.name,
                        kind,
                        mount_path: m.mount_path,
                        read_only: m.read_only.unwrap_or(false),
                        sub_path: m.sub_path.filter(|p| !p.is_empty()),
                    });
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
                    resources: c.resources.clone().unwrap_or_default().resources(),
                    volume_mounts: mounts,
                    termination_message_path: c
                        .termination_message_path
                        .clone()
                        .filter(|p| p.starts_with('/'))
                        .unwrap_or_else(|| "/dev/termination-log".into()),
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
            net,
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
        Pod::parse(text, Path::new("/run/kci/pod.json"), None)
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
        assert_eq!(
            parse("{}").unwrap(),
            Pod {
                net: PodNet {
                    namespace: "default".into(),
                    ..PodNet::default()
                },
                ..Pod::default()
            }
        );
    }

    #[test]
    fn volume_mounts_the_agent_cannot_make_are_listed_not_mounted() {
        let pod = parse(
            r#"{"metadata":{"name":"p"},"spec":{
                "volumes":[{"name":"a","emptyDir":{"medium":"Memory","sizeLimit":"1Gi"}},
                           {"name":"s","secret":{"secretName":"x"}}],
                "containers":[{"name":"c","image":"i","volumeMounts":[
                    {"name":"a","mountPath":"/a","subPath":"x/y","readOnly":true},
                    {"name":"a","mountPath":"/e","subPathExpr":"$(POD)"},
                    {"name":"s","mountPath":"/s"},
                    {"name":"gone","mountPath":"/g"}]}]}}"#,
        )
        .unwrap();
        let c = &pod.containers[0];
        assert_eq!(
            c.volume_mounts,
            vec![VolumeMount {
                volume: "a".into(),
                kind: VolumeKind::EmptyDir {
                    memory: true,
                    size_limit: Some("1Gi".into())
                },
                mount_path: "/a".into(),
                read_only: true,
                sub_path: Some("x/y".into()),
            }]
        );
        assert_eq!(
            c.skipped_env,
            vec![
                "volume a (subPathExpr) at /e",
                "volume s (secret) at /s",
                "volume gone (not in spec.volumes) at /g"
            ]
        );
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

#[cfg(test)]
mod downward_tests {
    use super::*;

    /// The pod of `json` and its first container's env, as pairs.
    fn first_env(json: serde_json::Value) -> (Pod, Vec<(String, String)>) {
        let p = Pod::parse(&json.to_string(), Path::new("pod.json"), None).unwrap();
        let env = p.containers[0].env.clone();
        (p, env)
    }

    fn pairs(env: &[(String, String)]) -> Vec<(&str, &str)> {
        env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    /// `valueFrom.fieldRef` is resolved from the pod object as the kubelet resolves it; what
    /// the agent cannot know stays unresolved.
    #[test]
    fn field_refs_come_from_the_pod_object() {
        let pod = serde_json::json!({
            "metadata": {"name": "web-0", "namespace": "prod", "uid": "u-1",
                         "labels": {"app": "web"}, "annotations": {"a/b": "x$y"}},
            "spec": {"nodeName": "vk-1", "serviceAccountName": "sa",
                "containers": [{"name": "c", "image": "i", "env": [
                    {"name": "LIT", "value": "1"},
                    {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                    {"name": "UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
                    {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                    {"name": "NONE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['none']"}}},
                    {"name": "ANN", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['a/b']"}}},
                    {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                    {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
                    {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
                    {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
                ]}]},
            "status": {"podIP": "10.1.2.3", "hostIP": "192.168.0.9"},
        });
        let (p, env) = first_env(pod);
        let c = &p.containers[0];
        assert_eq!(
            pairs(&env),
            vec![
                ("LIT", "1"),
                ("NAME", "web-0"),
                ("NS", "prod"),
                ("UID", "u-1"),
                ("APP", "web"),
                ("NONE", ""),
                ("ANN", "x$$y"),
                ("NODE", "vk-1"),
                ("SA", "sa"),
                ("IP", "10.1.2.3"),
                ("HOST", "192.168.0.9"),
            ]
        );
        assert_eq!(c.skipped_env, vec!["env SECRET (valueFrom)".to_string()]);
    }

    /// `resourceFieldRef` divides by its divisor and rounds up; requests default to limits.
    #[test]
    fn resource_field_refs_as_the_kubelet_rounds_them() {
        let pod = serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [
                {"name": "a", "image": "i",
                 "resources": {"limits": {"cpu": "1500m", "memory": "128Mi"}},
                 "env": [
                    {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
                    {"name": "CPU_M", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1m"}}},
                    {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                    {"name": "REQ", "valueFrom": {"resourceFieldRef": {"resource": "requests.memory"}}},
                    {"name": "B", "valueFrom": {"resourceFieldRef": {"containerName": "b", "resource": "requests.cpu", "divisor": 1}}},
                    {"name": "BAD", "valueFrom": {"resourceFieldRef": {"resource": "limits.gpu"}}},
                 ]},
                {"name": "b", "image": "i", "resources": {"requests": {"cpu": 2}}},
            ]},
        });
        let (p, env) = first_env(pod);
        assert_eq!(
            pairs(&env),
            vec![
                ("CPU", "2"),
                ("CPU_M", "1500"),
                ("MEM", "128"),
                ("REQ", "134217728"),
                ("B", "2")
            ]
        );
        assert_eq!(
            p.containers[0].skipped_env,
            vec!["env BAD (valueFrom)".to_string()]
        );
        assert_eq!(p.containers[0].resources.requests["cpu"], "1500m");
    }
}
