//! `explain`: what the agent would do for each image, from the same routing function `pull`
//! uses.

use std::path::Path;

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::registry::host::RegistryHost;
use crate::registry::mirrors::Mirror;

use crate::config::{Config, ImageRequest};
use crate::registry::policy::{Route, Transport};

/// One image's decision.
pub struct Explanation<'a> {
    pub request: &'a ImageRequest,
    pub route: Route,
    /// Mirrors tried before the origin (hosts.toml), in order.
    pub mirrors: Vec<Mirror>,
}

pub fn explain<'a>(
    cfg: &'a Config,
    mirrors: &HashMap<RegistryHost, Vec<Mirror>>,
) -> Vec<Explanation<'a>> {
    cfg.images
        .iter()
        .map(|request| Explanation {
            request,
            route: cfg.policy.route(&request.reference.registry),
            mirrors: mirrors
                .get(&request.reference.registry)
                .cloned()
                .unwrap_or_default(),
        })
        .collect()
}

fn mirror_url(m: &Mirror) -> String {
    format!("{}{}", m.url.as_str().trim_end_matches('/'), m.api_prefix)
}

fn capabilities(m: &Mirror) -> Vec<&'static str> {
    let mut c = Vec::new();
    if m.pull {
        c.push("pull");
    }
    if m.resolve {
        c.push("resolve");
    }
    c
}

/// The directory of extra CA files for a registry, under `root`.
pub fn certs_dir(root: &Path, e: &Explanation<'_>) -> std::path::PathBuf {
    root.join("etc/kci/certs.d")
        .join(e.route.registry.to_string())
}

impl Explanation<'_> {
    /// One line of `explain --output json` (SPEC §6, plus `transport`, `endpoint`, `notes`).
    pub fn to_json(&self) -> Value {
        let r = &self.route;
        json!({
            "image": self.request.image,
            "reference": self.request.reference.to_string(),
            "registry": r.registry.to_string(),
            "scheme": r.transport.scheme(),
            "tls_verify": r.transport.tls_verify(),
            "matched": r.matched.as_ref().map(|m| json!({
                "list": m.list.as_str(),
                "entry": m.entry.to_string(),
            })),
            "transport": r.transport.as_str(),
            "endpoint": r.endpoint(),
            "hosts": self.hosts_json(),
            "notes": r.notes(),
        })
    }

    /// The ordered hosts an image would be fetched from: mirrors, then the origin.
    fn hosts_json(&self) -> Value {
        let mut hosts: Vec<Value> = self
            .mirrors
            .iter()
            .map(|m| {
                json!({
                    "url": mirror_url(m),
                    "role": "mirror",
                    "capabilities": capabilities(m),
                    "tls_verify": (m.url.scheme() == "https").then_some(!m.skip_verify),
                })
            })
            .collect();
        hosts.push(json!({
            "url": format!("{}/v2", self.route.endpoint()),
            "role": "origin",
            "capabilities": ["pull", "resolve"],
            "tls_verify": self.route.transport.tls_verify(),
        }));
        Value::Array(hosts)
    }

    /// The human-readable block.
    pub fn to_text(&self, root: &Path) -> String {
        let r = &self.route;
        let transport = match r.transport {
            Transport::Http => "http (plain HTTP, no TLS)".to_string(),
            Transport::HttpsInsecure => {
                "https, certificate NOT verified (any certificate and host name accepted)"
                    .to_string()
            }
            Transport::Https => format!(
                "https, certificate verified (system roots + {}/*.crt)",
                certs_dir(root, self).display()
            ),
        };
        let matched = match &r.matched {
            Some(m) => format!("{} entry {}", m.list.annotation(), m.entry),
            None => "no entry of k8s.ksyun.com/kci-http-registry or \
                     k8s.ksyun.com/kci-insecure-registry"
                .to_string(),
        };
        let mut out = format!(
            "{}\n  reference  {}\n  registry   {}\n  endpoint   {}\n  transport  {}\n  matched    {}\n",
            self.request.image,
            self.request.reference,
            r.registry,
            r.endpoint(),
            transport,
            matched
        );
        if !self.mirrors.is_empty() {
            for (i, m) in self.mirrors.iter().enumerate() {
                let tls = match (m.url.scheme(), m.skip_verify) {
                    ("http", _) => "plain HTTP",
                    (_, true) => "certificate NOT verified",
                    _ => "certificate verified",
                };
                out.push_str(&format!(
                    "  {}  {}. {} (mirror: {}; {tls})\n",
                    if i == 0 { "hosts    " } else { "         " },
                    i + 1,
                    mirror_url(m),
                    capabilities(m).join(", ")
                ));
            }
            out.push_str(&format!(
                "             {}. {}/v2 (origin)\n",
                self.mirrors.len() + 1,
                r.endpoint()
            ));
        }
        for n in &r.notes() {
            out.push_str(&format!("  note       {n}\n"));
        }
        out
    }
}
