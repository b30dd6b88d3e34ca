//! The pod object as JSON (`kubectl get pod -o json`): the fields the agent reads, as
//! serde reads them. Unknown fields are ignored. A leaf: `pod`, `podnet` and `downward`
//! build on it.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
pub(super) struct PodJson {
    pub(super) metadata: Option<MetaJson>,
    pub(super) spec: Option<SpecJson>,
    pub(super) status: Option<StatusJson>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct StatusJson {
    #[serde(rename = "podIP")]
    pub(super) pod_ip: Option<String>,
    #[serde(rename = "podIPs")]
    pub(super) pod_ips: Option<Vec<serde_json::Value>>,
    #[serde(rename = "hostIP")]
    pub(super) host_ip: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct MetaJson {
    pub(super) name: Option<String>,
    pub(super) namespace: Option<String>,
    pub(super) uid: Option<String>,
    pub(super) labels: Option<BTreeMap<String, String>>,
    pub(super) annotations: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct SpecJson {
    pub(super) init_containers: Option<Vec<ContainerJson>>,
    pub(super) containers: Option<Vec<ContainerJson>>,
    pub(super) ephemeral_containers: Option<Vec<ContainerJson>>,
    pub(super) security_context: Option<SecurityJson>,
    pub(super) node_name: Option<String>,
    pub(super) service_account_name: Option<String>,
    pub(super) volumes: Option<Vec<serde_json::Value>>,
    pub(super) host_aliases: Option<serde_json::Value>,
    pub(super) hostname: Option<String>,
    pub(super) subdomain: Option<String>,
    #[serde(rename = "setHostnameAsFQDN")]
    pub(super) set_hostname_as_fqdn: Option<bool>,
    pub(super) host_network: Option<bool>,
    pub(super) dns_policy: Option<String>,
    pub(super) dns_config: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct VolumeMountJson {
    pub(super) name: String,
    pub(super) mount_path: String,
    pub(super) read_only: Option<bool>,
    pub(super) sub_path: Option<String>,
    pub(super) sub_path_expr: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ContainerJson {
    pub(super) name: Option<String>,
    pub(super) image: Option<String>,
    pub(super) command: Option<Vec<String>>,
    pub(super) args: Option<Vec<String>>,
    pub(super) env: Option<Vec<EnvJson>>,
    pub(super) env_from: Option<Vec<serde_json::Value>>,
    pub(super) working_dir: Option<String>,
    pub(super) security_context: Option<SecurityJson>,
    pub(super) termination_message_path: Option<String>,
    pub(super) resources: Option<ResourcesJson>,
    pub(super) volume_mounts: Option<Vec<VolumeMountJson>>,
}

#[derive(Debug, Default, Clone, Deserialize)]
pub(super) struct ResourcesJson {
    pub(super) limits: Option<BTreeMap<String, serde_json::Value>>,
    pub(super) requests: Option<BTreeMap<String, serde_json::Value>>,
}

/// A container's `resources`: quantities by name (`cpu`, `memory`, `ephemeral-storage`), as
/// written; requests default to the limits (as the API server defaults them).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Resources {
    pub limits: BTreeMap<String, String>,
    pub requests: BTreeMap<String, String>,
}

impl ResourcesJson {
    pub(super) fn resources(&self) -> Resources {
        let text = |m: &Option<BTreeMap<String, serde_json::Value>>| -> BTreeMap<String, String> {
            m.iter()
                .flatten()
                .map(|(k, v)| {
                    let v = match v {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (k.clone(), v)
                })
                .collect()
        };
        let limits = text(&self.limits);
        let mut requests = text(&self.requests);
        for (k, v) in &limits {
            requests.entry(k.clone()).or_insert_with(|| v.clone());
        }
        Resources { limits, requests }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct EnvJson {
    pub(super) name: String,
    pub(super) value: Option<String>,
    pub(super) value_from: Option<serde_json::Value>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct SecurityJson {
    pub(super) run_as_user: Option<u32>,
    pub(super) run_as_group: Option<u32>,
    pub(super) run_as_non_root: Option<bool>,
    pub(super) read_only_root_filesystem: Option<bool>,
    pub(super) privileged: Option<bool>,
    pub(super) allow_privilege_escalation: Option<bool>,
    pub(super) capabilities: Option<CapabilitiesJson>,
    pub(super) supplemental_groups: Option<Vec<u32>>,
    pub(super) fs_group: Option<u32>,
}

#[derive(Debug, Default, Clone, Deserialize)]
pub(super) struct CapabilitiesJson {
    pub(super) add: Option<Vec<String>>,
    pub(super) drop: Option<Vec<String>>,
}
