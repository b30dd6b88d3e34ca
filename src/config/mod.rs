//! All input, parsed and validated in one place before anything is written.
//!
//! Two levels feed the configuration: the virtual-kubelet level (environment, the same on every
//! instance) and the pod level (annotations of `--spec`, or the flags that stand in for them).
//! The pod level wins on conflict.

pub mod auth;
pub mod dns;
mod downward;
pub mod hostalias;
pub mod names;
pub mod pod;
mod podjson;
pub mod podnet;
pub mod quantity;

use std::path::PathBuf;

use crate::diag::{InputError, Notes, Origin};
use crate::oci::platform::Platform;
use crate::registry::policy::{ListKind, Policy, RegistryList};
use crate::registry::reference::Reference;
use auth::{AuthFile, parse_auth_file};
use dns::{DnsConfig, merge_dns, parse_dns_config};
use hostalias::{HostsEntry, merge_host_aliases, parse_host_aliases};
use pod::Pod;

pub const ENV_HOST_ALIASES: &str = "KCI_HOST_ALIASES";
pub const ENV_DNS_CONFIG: &str = "KCI_DNS_CONFIG";
pub const ENV_CLUSTER_DNS: &str = "KCI_CLUSTER_DNS";
pub const ENV_CLUSTER_DOMAIN: &str = "KCI_CLUSTER_DOMAIN";
pub const HOST_ALIASES_ANNOTATION: &str = "k8s.ksyun.com/kci-host-aliases";
pub const DNS_CONFIG_ANNOTATION: &str = "k8s.ksyun.com/kci-dns-config";

/// Raw input, gathered by the shell (environment, files, flags); no I/O happens past here.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub env_host_aliases: Option<String>,
    pub env_dns_config: Option<String>,
    /// The `--spec` path and its content.
    pub spec: Option<(PathBuf, String)>,
    pub flag_host_aliases: Option<String>,
    pub flag_dns_config: Option<String>,
    pub flag_http_registry: Option<Vec<String>>,
    pub flag_insecure_registry: Option<Vec<String>>,
    /// IMAGE arguments; when empty, the pod's images are used.
    pub images: Vec<String>,
    pub platform: Option<String>,
    /// The auth file (`--auth-file` or `REGISTRY_AUTH_FILE`) and its content.
    pub auth_file: Option<(PathBuf, String)>,
    /// `--cluster-dns`, else `KCI_CLUSTER_DNS`: the cluster DNS service's addresses.
    pub flag_cluster_dns: Option<String>,
    pub env_cluster_dns: Option<String>,
    pub env_cluster_domain: Option<String>,
    /// The instance's primary address (the pod IP when the pod object has none).
    pub instance_ip: Option<String>,
}

/// The cluster's DNS service, as the kubelet's `clusterDNS` and `clusterDomain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterDns {
    pub servers: Vec<std::net::IpAddr>,
    pub domain: String,
}

impl Default for ClusterDns {
    fn default() -> ClusterDns {
        ClusterDns {
            servers: Vec::new(),
            domain: "cluster.local".into(),
        }
    }
}

impl ClusterDns {
    /// `--cluster-dns` (else `KCI_CLUSTER_DNS`): addresses separated by commas or spaces;
    /// `KCI_CLUSTER_DOMAIN`: the cluster domain (default `cluster.local`).
    fn parse(src: &Sources) -> Result<ClusterDns, InputError> {
        let mut out = ClusterDns::default();
        let given = match (&src.flag_cluster_dns, &src.env_cluster_dns) {
            (Some(v), _) => Some((v, Origin::Flag("--cluster-dns"))),
            (None, Some(v)) => Some((v, Origin::Env(ENV_CLUSTER_DNS))),
            _ => None,
        };
        if let Some((text, origin)) = given {
            for part in text.split([',', ' ']).filter(|p| !p.is_empty()) {
                let ip = part.parse().map_err(|_| {
                    InputError::new(
                        origin.clone(),
                        format!("{part:?} is not an IP address; give the cluster DNS service's addresses, e.g. 10.96.0.10"),
                    )
                })?;
                if !out.servers.contains(&ip) {
                    out.servers.push(ip);
                }
            }
        }
        if let Some(d) = &src.env_cluster_domain {
            let d = d.trim().trim_end_matches('.');
            names::check_search_domain(d).map_err(|why| {
                InputError::new(
                    Origin::Env(ENV_CLUSTER_DOMAIN),
                    format!("{d:?} {why}; give a domain such as cluster.local"),
                )
            })?;
            out.domain = d.to_string();
        }
        Ok(out)
    }
}

/// An image to pull, as given and normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRequest {
    /// As given (the IMAGE argument or the container's `image`).
    pub image: String,
    pub reference: Reference,
}

/// The validated, merged configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub pod_name: Option<String>,
    /// The pod's `spec.hostname`, else `metadata.name`: its containers' hostname.
    pub hostname: Option<String>,
    /// The containers' `/etc/hosts` as the kubelet writes it (`None` without a pod).
    /// The pod's names and DNS (its containers' `/etc/hosts` and `/etc/resolv.conf`).
    pub pod_net: Option<pod::PodNet>,
    pub cluster: ClusterDns,
    /// The pod's init containers and containers (what gets a runtime bundle).
    pub containers: Vec<pod::PodContainer>,
    /// The managed hosts block, one entry per address.
    pub hosts: Vec<HostsEntry>,
    /// The injected DNS config, both levels merged (not yet capped).
    pub dns: DnsConfig,
    pub policy: Policy,
    /// Distinct images, in pull order (init containers, containers, ephemeral containers).
    pub images: Vec<ImageRequest>,
    pub platform: Platform,
    pub auth: AuthFile,
}

impl Config {
    /// Validates every input given and merges the two levels, or fails on the first bad value
    /// with an error naming its source.
    pub fn load(src: &Sources) -> Result<(Config, Notes), InputError> {
        let mut notes = Notes::default();
        let pod = match &src.spec {
            Some((path, text)) => Some((
                path.clone(),
                Pod::parse(text, path, src.instance_ip.as_deref())?,
            )),
            None => None,
        };
        // A pod-level value: the flag if given, else the annotation of --spec.
        let pod_value = |flag: &Option<String>, flag_name: &'static str, key: &'static str| {
            if let Some(v) = flag {
                return Some((v.clone(), Origin::Flag(flag_name)));
            }
            let (path, pod) = pod.as_ref()?;
            let v = pod.annotations.get(key)?;
            Some((
                v.clone(),
                Origin::Annotation {
                    key,
                    spec: path.clone(),
                },
            ))
        };

        // Host aliases.
        let vk_alias_origin = Origin::Env(ENV_HOST_ALIASES);
        let vk_aliases = match &src.env_host_aliases {
            Some(t) => parse_host_aliases(t, &vk_alias_origin)?,
            None => Vec::new(),
        };
        let (pod_aliases, pod_alias_origin) = match pod_value(
            &src.flag_host_aliases,
            "--host-aliases",
            HOST_ALIASES_ANNOTATION,
        ) {
            Some((t, o)) => (parse_host_aliases(&t, &o)?, o),
            None => (Vec::new(), Origin::Flag("--host-aliases")),
        };
        let hosts = merge_host_aliases(
            (&pod_aliases, &pod_alias_origin),
            (&vk_aliases, &vk_alias_origin),
            &mut notes,
        );

        // DNS config.
        let vk_dns = match &src.env_dns_config {
            Some(t) => parse_dns_config(t, &Origin::Env(ENV_DNS_CONFIG))?,
            None => DnsConfig::default(),
        };
        let pod_dns = match pod_value(&src.flag_dns_config, "--dns-config", DNS_CONFIG_ANNOTATION) {
            Some((t, o)) => parse_dns_config(&t, &o)?,
            None => DnsConfig::default(),
        };
        let dns = merge_dns(&pod_dns, &vk_dns);

        // Registry lists: a flag (possibly repeated) replaces the annotation.
        let mut list = |kind: ListKind,
                        flag: &Option<Vec<String>>,
                        flag_name: &'static str|
         -> Result<RegistryList, InputError> {
            let (values, origin) = match flag {
                Some(v) => (v.clone(), Origin::Flag(flag_name)),
                None => match pod_value(&None, flag_name, kind.annotation()) {
                    Some((v, o)) => (vec![v], o),
                    None => return Ok(RegistryList::empty(kind)),
                },
            };
            RegistryList::parse(kind, &values, origin, &mut notes)
        };
        let http = list(ListKind::Http, &src.flag_http_registry, "--http-registry")?;
        let insecure = list(
            ListKind::Insecure,
            &src.flag_insecure_registry,
            "--insecure-registry",
        )?;
        let policy = Policy::new(http, insecure, &mut notes);

        // Images: every image given is validated, the pod's too when IMAGE arguments are given.
        let mut pod_images = Vec::new();
        if let Some((path, pod)) = &pod {
            for pi in &pod.images {
                let reference = Reference::parse(&pi.image).map_err(|why| {
                    InputError::new(
                        Origin::Spec {
                            path: path.clone(),
                            field: format!("image {:?} of {}", pi.image, pi.field),
                        },
                        why,
                    )
                })?;
                pod_images.push(ImageRequest {
                    image: pi.image.clone(),
                    reference,
                });
            }
        }
        let arg_images = src
            .images
            .iter()
            .map(|image| {
                Reference::parse(image)
                    .map(|reference| ImageRequest {
                        image: image.clone(),
                        reference,
                    })
                    .map_err(|why| InputError::new(Origin::ImageArg, format!("{image:?}: {why}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let chosen = if arg_images.is_empty() {
            pod_images
        } else {
            arg_images
        };
        let mut images: Vec<ImageRequest> = Vec::new();
        for req in chosen {
            if !images.iter().any(|i| i.reference == req.reference) {
                images.push(req);
            }
        }

        let platform = match &src.platform {
            Some(p) => p
                .parse()
                .map_err(|why| InputError::new(Origin::Platform, why))?,
            None => Platform::host(),
        };

        let auth = match &src.auth_file {
            Some((path, text)) => parse_auth_file(text, path, &mut notes)?,
            None => AuthFile::default(),
        };

        let cluster = ClusterDns::parse(src)?;
        let containers = pod
            .as_ref()
            .map(|(_, p)| p.containers.clone())
            .unwrap_or_default();
        let pod_net = pod.as_ref().map(|(_, p)| p.net.clone());
        let hostname = match &pod_net {
            Some(net) => net.uts_hostname(&cluster.domain).map_err(|why| {
                InputError::new(
                    Origin::Spec {
                        path: pod.as_ref().map(|(p, _)| p.clone()).unwrap_or_default(),
                        field: "spec.setHostnameAsFQDN".into(),
                    },
                    why,
                )
            })?,
            None => None,
        };
        Ok((
            Config {
                pod_name: pod.and_then(|(_, p)| p.name),
                hostname,
                pod_net,
                cluster,
                containers,
                auth,
                hosts,
                dns,
                policy,
                images,
                platform,
            },
            notes,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::policy::Transport;

    fn spec(annotations: &str, images: &[&str]) -> Option<(PathBuf, String)> {
        let containers = images
            .iter()
            .map(|i| format!(r#"{{"name":"c","image":{i:?}}}"#))
            .collect::<Vec<_>>()
            .join(",");
        Some((
            PathBuf::from("pod.json"),
            format!(
                r#"{{"metadata":{{"name":"p","annotations":{annotations}}},"spec":{{"containers":[{containers}]}}}}"#
            ),
        ))
    }

    #[test]
    fn flags_replace_annotations_and_pod_beats_vk() {
        let src = Sources {
            env_host_aliases: Some(
                r#"[{"ip":"10.9.9.9","hostnames":["reg.example.com","vk.example.com"]}]"#.into(),
            ),
            env_dns_config: Some(
                r#"{"nameservers":["10.9.9.10"],"options":[{"name":"ndots","value":"5"}]}"#.into(),
            ),
            spec: spec(
                r#"{"k8s.ksyun.com/kci-host-aliases":"[{\"ip\":\"10.0.0.1\",\"hostnames\":[\"reg.example.com\"]}]",
                    "k8s.ksyun.com/kci-dns-config":"{\"options\":[{\"name\":\"ndots\",\"value\":\"2\"}]}",
                    "k8s.ksyun.com/kci-http-registry":"reg.example.com:5000",
                    "k8s.ksyun.com/kci-insecure-registry":"reg.example.com"}"#,
                &[
                    "reg.example.com:5000/app:v1",
                    "reg.example.com/app:v1",
                    "reg.example.com:5000/app:v1",
                ],
            ),
            flag_insecure_registry: Some(vec!["other.example.com".into(), "".into()]),
            ..Default::default()
        };
        let (cfg, _) = Config::load(&src).unwrap();
        assert_eq!(cfg.pod_name.as_deref(), Some("p"));
        assert_eq!(cfg.hosts.len(), 2);
        assert_eq!(cfg.hosts[0].ip.to_string(), "10.0.0.1");
        assert_eq!(cfg.hosts[0].hostnames, vec!["reg.example.com"]);
        assert_eq!(cfg.hosts[1].hostnames, vec!["vk.example.com"]);
        assert_eq!(cfg.dns.options[0].to_string(), "ndots:2");
        assert_eq!(cfg.dns.nameservers[0].to_string(), "10.9.9.10");
        assert_eq!(cfg.images.len(), 2, "duplicates removed");
        let routes: Vec<Transport> = cfg
            .images
            .iter()
            .map(|i| cfg.policy.route(&i.reference.registry).transport)
            .collect();
        // The insecure flag replaced the annotation, so reg.example.com is verified HTTPS.
        assert_eq!(routes, vec![Transport::Http, Transport::Https]);
    }

    #[test]
    fn errors_name_the_source() {
        let bad_annotation = Sources {
            spec: spec(
                r#"{"k8s.ksyun.com/kci-http-registry":"reg.example.com/lib"}"#,
                &[],
            ),
            ..Default::default()
        };
        let msg = Config::load(&bad_annotation).unwrap_err().to_string();
        assert!(
            msg.contains("annotation k8s.ksyun.com/kci-http-registry"),
            "{msg}"
        );
        assert!(msg.contains("pod.json"), "{msg}");

        let bad_env = Sources {
            env_dns_config: Some("{nope".into()),
            ..Default::default()
        };
        let msg = Config::load(&bad_env).unwrap_err().to_string();
        assert!(msg.contains("environment variable KCI_DNS_CONFIG"), "{msg}");

        let bad_image = Sources {
            spec: spec("{}", &["Bad/Image"]),
            images: vec!["nginx".into()],
            ..Default::default()
        };
        let msg = Config::load(&bad_image).unwrap_err().to_string();
        assert!(msg.contains("\"Bad/Image\" of spec.containers[0]"), "{msg}");

        let bad_arg = Sources {
            images: vec!["nginx".into(), "reg:99999/x".into()],
            ..Default::default()
        };
        let msg = Config::load(&bad_arg).unwrap_err().to_string();
        assert!(msg.contains("IMAGE argument"), "{msg}");
        assert!(msg.contains("reg:99999/x"), "{msg}");

        let bad_platform = Sources {
            platform: Some("amd64".into()),
            ..Default::default()
        };
        assert!(Config::load(&bad_platform).is_err());
    }

    #[test]
    fn image_arguments_replace_pod_images() {
        let src = Sources {
            spec: spec("{}", &["busybox"]),
            images: vec!["nginx".into(), "docker.io/library/nginx:latest".into()],
            ..Default::default()
        };
        let (cfg, _) = Config::load(&src).unwrap();
        assert_eq!(cfg.images.len(), 1);
        assert_eq!(cfg.images[0].image, "nginx");
    }
}
