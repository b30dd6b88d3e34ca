//! The pod's names and DNS from its object (`hostname`, `subdomain`, `hostAliases`,
//! `dnsPolicy`, `dnsConfig`, pod IPs), validated as the API server validates them.

use super::dns::{DnsConfig, parse_dns_config};
use super::hostalias::{HostAlias, parse_host_aliases};
use super::podjson::{MetaJson, SpecJson, StatusJson};
use crate::diag::{InputError, Origin};

/// `spec.dnsPolicy` (the API server's default is `ClusterFirst`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DnsPolicy {
    #[default]
    ClusterFirst,
    ClusterFirstWithHostNet,
    Default,
    None,
}

/// The pod's names and DNS, as the kubelet builds its containers' files from them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodNet {
    /// `metadata.namespace` (`default` when absent).
    pub namespace: String,
    /// `spec.hostname`, else `metadata.name`, cut to 63 characters as the kubelet cuts it.
    pub hostname: Option<String>,
    pub subdomain: Option<String>,
    /// `spec.setHostnameAsFQDN`.
    pub hostname_as_fqdn: bool,
    /// `status.podIPs` (else `status.podIP`, else the instance's primary address).
    pub ips: Vec<String>,
    /// `spec.hostAliases`, validated.
    pub host_aliases: Vec<HostAlias>,
    pub dns_policy: DnsPolicy,
    /// `spec.dnsConfig`, validated.
    pub dns_config: Option<DnsConfig>,
    pub host_network: bool,
}

impl PodNet {
    /// The pod's domain when it has a `subdomain`: `<subdomain>.<namespace>.svc.<domain>`.
    pub fn domain(&self, cluster_domain: &str) -> Option<String> {
        let sub = self.subdomain.as_ref()?;
        Some(format!("{sub}.{}.svc.{cluster_domain}", self.namespace))
    }

    /// Its FQDN (`<hostname>.<domain>`), when it has a subdomain.
    pub fn fqdn(&self, cluster_domain: &str) -> Option<String> {
        Some(format!(
            "{}.{}",
            self.hostname.as_ref()?,
            self.domain(cluster_domain)?
        ))
    }

    /// The containers' hostname (UTS, `/etc/hostname`, `$HOSTNAME`): the hostname, or the
    /// FQDN with `setHostnameAsFQDN` (refused past 64 characters, as the kubelet does).
    pub fn uts_hostname(&self, cluster_domain: &str) -> Result<Option<String>, String> {
        match self.fqdn(cluster_domain) {
            Some(fqdn) if self.hostname_as_fqdn => {
                if fqdn.len() > 64 {
                    return Err(format!(
                        "the FQDN {fqdn:?} is {} characters long; a hostname has at most 64 \
                         (shorten spec.hostname or spec.subdomain, or unset setHostnameAsFQDN)",
                        fqdn.len()
                    ));
                }
                Ok(Some(fqdn))
            }
            _ => Ok(self.hostname.clone()),
        }
    }
}

/// The pod's names and DNS from its object, checked as the API server checks them.
pub(super) fn pod_net(
    spec: &SpecJson,
    meta: &MetaJson,
    status: &StatusJson,
    pod_name: Option<&str>,
    origin: &dyn Fn(&str) -> Origin,
) -> Result<PodNet, InputError> {
    // The kubelet's truncatePodHostnameIfNeeded: 63 characters, no trailing '-' or '.'.
    let hostname = spec
        .hostname
        .as_deref()
        .filter(|h| !h.is_empty())
        .or(pod_name)
        .map(|h| {
            let cut = h.char_indices().nth(63).map_or(h, |(i, _)| &h[..i]);
            cut.trim_end_matches(['-', '.']).to_string()
        });
    let mut ips: Vec<String> = status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|v| v.get("ip").and_then(|i| i.as_str()).map(str::to_string))
        .collect();
    if ips.is_empty() {
        ips.extend(status.pod_ip.clone().filter(|ip| !ip.is_empty()));
    }
    for ip in &ips {
        if ip.parse::<std::net::IpAddr>().is_err() {
            return Err(InputError::new(
                origin("status.podIPs"),
                format!("{ip:?} is not an IP address"),
            ));
        }
    }
    let dns_policy = match spec.dns_policy.as_deref().unwrap_or("") {
        "" | "ClusterFirst" => DnsPolicy::ClusterFirst,
        "ClusterFirstWithHostNet" => DnsPolicy::ClusterFirstWithHostNet,
        "Default" => DnsPolicy::Default,
        "None" => DnsPolicy::None,
        other => {
            return Err(InputError::new(
                origin("spec.dnsPolicy"),
                format!(
                    "{other:?} is not a DNS policy (ClusterFirst, ClusterFirstWithHostNet, \
                     Default or None)"
                ),
            ));
        }
    };
    let dns_config = match &spec.dns_config {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(parse_dns_config(&v.to_string(), &origin("spec.dnsConfig"))?),
    };
    if dns_policy == DnsPolicy::None && dns_config.as_ref().is_none_or(|d| d.nameservers.is_empty())
    {
        return Err(InputError::new(
            origin("spec.dnsConfig"),
            "dnsPolicy None needs spec.dnsConfig with at least one nameserver (the API server \
             refuses such a pod too)",
        ));
    }
    Ok(PodNet {
        namespace: meta
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into()),
        hostname,
        subdomain: spec.subdomain.clone().filter(|s| !s.is_empty()),
        hostname_as_fqdn: spec.set_hostname_as_fqdn.unwrap_or(false),
        ips,
        host_aliases: match &spec.host_aliases {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(v) => parse_host_aliases(&v.to_string(), &origin("spec.hostAliases"))?,
        },
        dns_policy,
        dns_config,
        host_network: spec.host_network.unwrap_or(false),
    })
}
