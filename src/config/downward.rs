//! The downward API (SPEC §10): `valueFrom.fieldRef` and `resourceFieldRef` resolved from the
//! pod object as the kubelet resolves them.

use super::podjson::{ContainerJson, MetaJson, Resources, SpecJson, StatusJson};

/// One container's environment: the values, in order, and what the agent cannot resolve.
pub(super) type Env = (Vec<(String, String)>, Vec<String>);

/// Each init container's and container's environment (literal values and the `valueFrom`
/// the agent can resolve, in order) and what it cannot resolve, in pod order.
pub(super) fn resolve_env(spec: &SpecJson, meta: &MetaJson, status: &StatusJson) -> Vec<Env> {
    // The downward API's fields (`valueFrom.fieldRef`), as the kubelet resolves them.
    let field = |path: &str| -> Option<String> {
        let key = |prefix: &str| {
            path.strip_prefix(prefix)?
                .strip_suffix("']")
                .map(str::to_string)
        };
        match path {
            "metadata.name" => meta.name.clone(),
            "metadata.namespace" => meta.namespace.clone(),
            "metadata.uid" => meta.uid.clone(),
            "spec.nodeName" => spec.node_name.clone(),
            "spec.serviceAccountName" => spec.service_account_name.clone(),
            "status.podIP" => status.pod_ip.clone(),
            "status.hostIP" => status.host_ip.clone(),
            _ => {
                if let Some(k) = key("metadata.labels['") {
                    Some(meta.labels.as_ref()?.get(&k).cloned().unwrap_or_default())
                } else if let Some(k) = key("metadata.annotations['") {
                    Some(
                        meta.annotations
                            .as_ref()?
                            .get(&k)
                            .cloned()
                            .unwrap_or_default(),
                    )
                } else {
                    None
                }
            }
        }
    };
    let all: Vec<&ContainerJson> = [&spec.init_containers, &spec.containers]
        .into_iter()
        .flatten()
        .flatten()
        .collect();
    let mut envs_of = Vec::new();
    for list in [&spec.init_containers, &spec.containers] {
        for c in list.iter().flatten() {
            let resource = |v: &serde_json::Value| -> Option<String> {
                let r = v.get("resourceFieldRef")?;
                let of = match r.get("containerName").and_then(|n| n.as_str()) {
                    Some(n) if !n.is_empty() => {
                        *all.iter().find(|o| o.name.as_deref() == Some(n))?
                    }
                    _ => c,
                };
                let divisor = match r.get("divisor") {
                    Some(serde_json::Value::String(s)) => Some(s.clone()),
                    Some(serde_json::Value::Number(n)) => Some(n.to_string()),
                    _ => None,
                };
                resource_field(
                    &of.resources.clone().unwrap_or_default().resources(),
                    r.get("resource")?.as_str()?,
                    divisor.as_deref(),
                )
            };
            let mut env = Vec::new();
            let mut skipped_env = Vec::new();
            for e in c.env.iter().flatten() {
                let field_path = e
                    .value_from
                    .as_ref()
                    .and_then(|v| v.pointer("/fieldRef/fieldPath"))
                    .and_then(|p| p.as_str());
                let resolved = field_path
                    .and_then(&field)
                    .or_else(|| e.value_from.as_ref().and_then(&resource));
                match (&e.value, &e.value_from, resolved) {
                    // Not expanded again: `$` stays literal.
                    (_, Some(_), Some(v)) => env.push((e.name.clone(), v.replace('$', "$$"))),
                    (_, Some(_), None) => skipped_env.push(format!("env {} (valueFrom)", e.name)),
                    (v, None, _) => env.push((e.name.clone(), v.clone().unwrap_or_default())),
                }
            }
            envs_of.push((env, skipped_env));
        }
    }
    envs_of
}

/// The downward API's `resourceFieldRef`: `limits.cpu`, `requests.memory`, ... of `r`,
/// divided by `divisor` and rounded up as the kubelet does; an unset limit is the instance's
/// capacity (the pod's node is this instance), an unset request 0.
fn resource_field(r: &Resources, resource: &str, divisor: Option<&str>) -> Option<String> {
    use super::quantity::Quantity;
    let (kind, name) = resource.split_once('.')?;
    let set = match kind {
        "limits" => &r.limits,
        "requests" => &r.requests,
        _ => return None,
    };
    let value = match (set.get(name), kind, name) {
        (Some(q), _, _) => Quantity::parse(q)?,
        (None, "requests", _) => Quantity::parse("0")?,
        (None, _, "cpu") => Quantity::parse(
            &std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .to_string(),
        )?,
        (None, _, "memory") => Quantity::parse(&super::quantity::instance_memory()?.to_string())?,
        _ => return None,
    };
    let divisor = Quantity::parse(divisor.filter(|d| !d.is_empty()).unwrap_or("1"))?;
    Some(value.div_ceil(&divisor)?.to_string())
}
