//! The hosts of a registry for this run: one session per endpoint (mirrors, then the origin),
//! tried in order until one delivers, and which host served an image.

use std::sync::Arc;

use super::session::Session;
use super::{PullError, Shared, Why};
use crate::registry::host::RegistryHost;

/// The endpoints of a registry in the order they are tried: the mirrors of its hosts.toml,
/// then the origin (reached as the policy says).
pub(super) async fn endpoints(
    shared: &Shared,
    registry: &RegistryHost,
) -> Result<Arc<Vec<Arc<Session>>>, PullError> {
    let mut map = shared.sessions.lock().await;
    if let Some(s) = map.get(registry) {
        return Ok(s.clone());
    }
    let route = shared.policy.route(registry);
    let planned =
        crate::registry::endpoints::endpoints(&shared.root, &route, &shared.mirrors(registry))
            .map_err(|e| {
                PullError::Registry(Why {
                    message: e.to_string(),
                    hint: Some("fix the registry's hosts.toml".into()),
                })
            })?;
    let mut list = Vec::with_capacity(planned.len());
    for endpoint in planned {
        // Credentials by the endpoint's own host[:port], port-exact.
        let creds = shared.auth.lookup(endpoint.authority()).cloned();
        list.push(Arc::new(Session::new(
            endpoint,
            shared.transports.clone(),
            creds,
        )?));
    }
    let list = Arc::new(list);
    map.insert(registry.clone(), list.clone());
    Ok(list)
}

/// Runs `op` on each endpoint in turn until one succeeds; a failing mirror is logged and the
/// next one tried. Returns the value and the endpoint that produced it.
pub(super) async fn first_ok<T>(
    list: &[Arc<Session>],
    what: &str,
    op: impl AsyncFn(&Session) -> Result<T, PullError>,
) -> Result<(T, Arc<Session>), PullError> {
    let mut last = None;
    for (i, s) in list.iter().enumerate() {
        if s.is_unreachable() && i + 1 < list.len() {
            continue;
        }
        match op(s).await {
            Ok(v) => return Ok((v, s.clone())),
            Err(e) => {
                if i + 1 < list.len() && !s.is_unreachable() {
                    tracing::warn!(host = %s.label, "{what} from {} failed ({e}); trying the next host", s.label);
                }
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| PullError::new(format!("{what}: no host to try"))))
}

/// Bytes received per endpoint for one image: which host served it.
#[derive(Default)]
pub(super) struct Served(Vec<(String, u64)>);

impl Served {
    pub(super) fn add(&mut self, host: &str, n: u64) {
        match self.0.iter_mut().find(|(h, _)| h == host) {
            Some((_, b)) => *b += n,
            None => self.0.push((host.to_string(), n)),
        }
    }
    /// The host that delivered the most bytes.
    pub(super) fn main(&self) -> Option<String> {
        self.0
            .iter()
            .max_by_key(|(_, b)| *b)
            .map(|(h, _)| h.clone())
    }
}
