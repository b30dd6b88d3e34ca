//! The pod's name files, as the kubelet makes them for every container of a pod (SPEC §10):
//! `/etc/hosts` (`managedHostsFileContent`) and `/etc/resolv.conf` (`GetPodDNS`, written as
//! containerd writes a sandbox's DNS config).

use crate::config::ClusterDns;
use crate::config::dns::{MAX_NAMESERVERS, MAX_SEARCH_CHARS, MAX_SEARCHES};
use crate::config::pod::{DnsPolicy, PodNet};

/// The pod's `/etc/hosts`: the kubelet's header, localhost for IPv4 and IPv6, each pod IP with
/// the hostname (`<fqdn>\t<hostname>` when the pod has a subdomain), then `spec.hostAliases`.
/// A `hostNetwork` pod gets the instance's own hosts file with its aliases after it.
pub fn hosts_file(net: &PodNet, cluster_domain: &str, instance_hosts: Option<&str>) -> String {
    let mut out = String::new();
    if net.host_network {
        out.push_str(instance_hosts.unwrap_or_default());
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
    } else {
        out.push_str(
            "# Kubernetes-managed hosts file.\n\
             127.0.0.1\tlocalhost\n\
             ::1\tlocalhost ip6-localhost ip6-loopback\n\
             fe00::0\tip6-localnet\n\
             fe00::0\tip6-mcastprefix\n\
             fe00::1\tip6-allnodes\n\
             fe00::2\tip6-allrouters\n",
        );
        if let Some(h) = &net.hostname {
            let names = match net.fqdn(cluster_domain) {
                Some(fqdn) => format!("{fqdn}\t{h}"),
                None => h.clone(),
            };
            for ip in &net.ips {
                out.push_str(&format!("{ip}\t{names}\n"));
            }
        }
    }
    if !net.host_aliases.is_empty() {
        out.push_str("\n# Entries added by HostAliases.\n");
        for a in &net.host_aliases {
            out.push_str(&format!("{}\t{}\n", a.ip, a.hostnames.join("\t")));
        }
    }
    out
}

/// A resolver configuration as the kubelet hands it to the runtime.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Resolver {
    servers: Vec<String>,
    searches: Vec<String>,
    /// `name` or `name:value`.
    options: Vec<String>,
}

/// Appends what is not there yet (the kubelet's `omitDuplicates`).
fn append_new(to: &mut Vec<String>, from: impl IntoIterator<Item = String>) {
    for x in from {
        if !to.contains(&x) {
            to.push(x);
        }
    }
}

/// Options merged by name, later values winning (the kubelet's `mergeDNSOptions`; it leaves
/// the order to a Go map, this keeps the first place of each name).
fn merge_option(to: &mut Vec<String>, option: String) {
    let name = |o: &str| o.split_once(':').map_or(o, |(n, _)| n).to_string();
    match to.iter_mut().find(|o| name(o) == name(&option)) {
        Some(o) => *o = option,
        None => to.push(option),
    }
}

/// The instance's resolv.conf as the kubelet reads the node's (`parseResolvConf`):
/// nameservers, the last search line without `.`, every option.
fn instance_resolver(text: &str) -> Resolver {
    let rc = crate::netfiles::resolv::parse(text);
    let mut out = Resolver {
        servers: rc.nameservers,
        ..Resolver::default()
    };
    append_new(
        &mut out.searches,
        rc.searches
            .iter()
            .filter(|s| *s != ".")
            .map(|s| s.trim_end_matches('.').to_string()),
    );
    for o in rc.options {
        merge_option(&mut out.options, o.to_string());
    }
    out
}

/// The pod's `/etc/resolv.conf` by its `dnsPolicy` (the kubelet's `GetPodDNS`): `None` is
/// exactly `dnsConfig`; `Default` the instance's file (`instance`, as SPEC §3 wrote it) with
/// `dnsConfig` appended; `ClusterFirst` the cluster DNS with the kubelet's search list and
/// `ndots:5` (else `Default`, with a warning). Capped as the kubelet caps it: 3 nameservers,
/// 32 search domains, 2048 characters. Returns the file and the warnings to log.
pub fn resolv_file(
    net: &PodNet,
    cluster: &ClusterDns,
    instance: Option<&str>,
) -> (String, Vec<String>) {
    let mut warnings = Vec::new();
    let host = |warnings: &mut Vec<String>| match instance {
        Some(text) => instance_resolver(text),
        None => {
            warnings.push(
                "the instance has no /etc/resolv.conf: the pod's resolv.conf holds only its \
                 dnsConfig"
                    .to_string(),
            );
            Resolver::default()
        }
    };
    let cluster_first = match net.dns_policy {
        DnsPolicy::ClusterFirstWithHostNet => true,
        DnsPolicy::ClusterFirst => !net.host_network,
        DnsPolicy::Default | DnsPolicy::None => false,
    };
    let mut r = if net.dns_policy == DnsPolicy::None {
        Resolver::default()
    } else if cluster_first && !cluster.servers.is_empty() {
        let d = &cluster.domain;
        let ns = &net.namespace;
        let mut searches = vec![format!("{ns}.svc.{d}"), format!("svc.{d}"), d.clone()];
        append_new(&mut searches, host(&mut warnings).searches);
        Resolver {
            servers: cluster.servers.iter().map(|s| s.to_string()).collect(),
            searches,
            options: vec!["ndots:5".into()],
        }
    } else {
        if cluster_first {
            warnings.push(
                "dnsPolicy ClusterFirst, but no cluster DNS is known (set KCI_CLUSTER_DNS or \
                 --cluster-dns): the pod's resolv.conf falls back to the instance's (Default), \
                 as the kubelet does"
                    .to_string(),
            );
        }
        host(&mut warnings)
    };
    if let Some(c) = &net.dns_config {
        append_new(&mut r.servers, c.nameservers.iter().map(|s| s.to_string()));
        append_new(&mut r.searches, c.searches.iter().map(|s| s.to_string()));
        for o in &c.options {
            merge_option(&mut r.options, o.to_string());
        }
    }
    // The kubelet's formDNSConfigFitsLimits.
    if r.servers.len() > MAX_NAMESERVERS {
        warnings.push(format!(
            "nameservers {} dropped from the pod's resolv.conf: at most {MAX_NAMESERVERS}",
            r.servers[MAX_NAMESERVERS..].join(", ")
        ));
        r.servers.truncate(MAX_NAMESERVERS);
    }
    let before = r.searches.clone();
    r.searches.truncate(MAX_SEARCHES);
    r.searches.retain(|s| s.len() <= 253);
    while r.searches.join(" ").len() > MAX_SEARCH_CHARS {
        r.searches.pop();
    }
    if r.searches != before {
        warnings.push(format!(
            "search domains cut from the pod's resolv.conf (at most {MAX_SEARCHES} domains of \
             {MAX_SEARCH_CHARS} characters): {}",
            before
                .iter()
                .filter(|s| !r.searches.contains(s))
                .cloned()
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    // containerd's parseDNSOptions.
    let mut out = String::new();
    if !r.searches.is_empty() {
        out.push_str(&format!("search {}\n", r.searches.join(" ")));
    }
    for s in &r.servers {
        out.push_str(&format!("nameserver {s}\n"));
    }
    if !r.options.is_empty() {
        out.push_str(&format!("options {}\n", r.options.join(" ")));
    }
    (out, warnings)
}

#[cfg(test)]
#[path = "namefiles_tests.rs"]
mod tests;
