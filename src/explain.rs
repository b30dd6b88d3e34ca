//! `explain`: what the agent would do for each image, from the same routing function `pull`
//! uses.

use std::path::Path;

use serde_json::{Value, json};

use crate::config::{Config, ImageRequest};
use crate::registry::policy::{Route, Transport};

/// One image's decision.
pub struct Explanation<'a> {
    pub request: &'a ImageRequest,
    pub route: Route,
}

pub fn explain(cfg: &Config) -> Vec<Explanation<'_>> {
    cfg.images
        .iter()
        .map(|request| Explanation {
            request,
            route: cfg.policy.route(&request.reference.registry),
        })
        .collect()
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
            "notes": r.notes,
        })
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
        for n in &r.notes {
            out.push_str(&format!("  note       {n}\n"));
        }
        out
    }
}
