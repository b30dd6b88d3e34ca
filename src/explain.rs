//! `explain`: what the agent would do for each image, from the same function `pull` opens its
//! sessions from ([`crate::registry::endpoints::endpoints`]).

use std::collections::HashMap;
use std::path::Path;

use serde_json::{Value, json};

use crate::config::{Config, ImageRequest};
use crate::registry::endpoints::{Endpoint, EndpointError, Role, endpoints};
use crate::registry::host::RegistryHost;
use crate::registry::mirrors::Mirror;
use crate::registry::policy::Transport;

/// One image's decision.
pub struct Explanation<'a> {
    pub request: &'a ImageRequest,
    /// The hosts it would be fetched from, in order: mirrors, then the origin (last).
    pub endpoints: Vec<Endpoint>,
}

pub fn explain<'a>(
    cfg: &'a Config,
    mirrors: &HashMap<RegistryHost, Vec<Mirror>>,
    root: &Path,
) -> Result<Vec<Explanation<'a>>, EndpointError> {
    cfg.images
        .iter()
        .map(|request| {
            let registry = &request.reference.registry;
            let route = cfg.policy.route(registry);
            let mirrors = mirrors.get(registry).map(Vec::as_slice).unwrap_or_default();
            Ok(Explanation {
                request,
                endpoints: endpoints(root, &route, mirrors)?,
            })
        })
        .collect()
}

fn capabilities(e: &Endpoint) -> Vec<&'static str> {
    let (pull, resolve) = match e.role {
        Role::Origin => (true, true),
        Role::Mirror { resolve, pull } => (pull, resolve),
    };
    let mut c = Vec::new();
    if pull {
        c.push("pull");
    }
    if resolve {
        c.push("resolve");
    }
    c
}

fn role(e: &Endpoint) -> &'static str {
    match e.role {
        Role::Origin => "origin",
        Role::Mirror { .. } => "mirror",
    }
}

impl Explanation<'_> {
    /// The origin: the registry itself, always the last endpoint.
    pub fn origin(&self) -> &Endpoint {
        self.endpoints
            .last()
            .expect("the origin is always an endpoint")
    }

    fn mirrors(&self) -> &[Endpoint] {
        &self.endpoints[..self.endpoints.len() - 1]
    }

    /// One line of `explain --output json` (SPEC §6, plus `transport`, `endpoint`, `notes`).
    pub fn to_json(&self) -> Value {
        let r = &self.origin().route;
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
            "hosts": self.endpoints.iter().map(|e| json!({
                "url": e.api_url(),
                "role": role(e),
                "capabilities": capabilities(e),
                "tls_verify": e.route.transport.tls_verify(),
            })).collect::<Vec<_>>(),
            "notes": r.notes(),
        })
    }

    /// The human-readable block.
    pub fn to_text(&self) -> String {
        let origin = self.origin();
        let r = &origin.route;
        let transport = match r.transport {
            Transport::Http => "http (plain HTTP, no TLS)".to_string(),
            Transport::HttpsInsecure => {
                "https, certificate NOT verified (any certificate and host name accepted)"
                    .to_string()
            }
            Transport::Https => format!(
                "https, certificate verified (system roots + {}/*.crt)",
                origin.ca_dir.as_deref().unwrap_or(Path::new("")).display()
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
        let mirrors = self.mirrors();
        if !mirrors.is_empty() {
            for (i, m) in mirrors.iter().enumerate() {
                let tls = match m.route.transport {
                    Transport::Http => "plain HTTP",
                    Transport::HttpsInsecure => "certificate NOT verified",
                    Transport::Https => "certificate verified",
                };
                out.push_str(&format!(
                    "  {}  {}. {} (mirror: {}; {tls})\n",
                    if i == 0 { "hosts    " } else { "         " },
                    i + 1,
                    m.api_url(),
                    capabilities(m).join(", ")
                ));
            }
            out.push_str(&format!(
                "             {}. {} (origin)\n",
                mirrors.len() + 1,
                origin.api_url()
            ));
        }
        for n in &r.notes() {
            out.push_str(&format!("  note       {n}\n"));
        }
        out
    }
}
