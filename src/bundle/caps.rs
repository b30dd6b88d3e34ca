//! A container's Linux capabilities as containerd's CRI gives them (SPEC §10): its default
//! 14, `capabilities.add`/`drop` (`ALL`, names with or without `CAP_`), everything the agent
//! holds for `privileged`; inheritable and ambient always empty (CVE-2022-24769).

use oci_spec::runtime::{Capability, LinuxCapabilities};

use crate::config::pod::PodContainer;

/// A name in `capabilities.add`/`drop` that is not a Linux capability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownCapability(pub String);

/// The capabilities a container gets by default: containerd's (`oci/spec.go`).
pub const DEFAULT_CAPS: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// Linux's capabilities by number.
pub const ALL_CAPS: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// The capabilities this process holds in its bounding set (what `privileged` and `ALL`
/// give), in kernel order.
fn held_caps() -> Vec<&'static str> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let bits = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .unwrap_or(0);
    ALL_CAPS
        .iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, n)| *n)
        .collect()
}

/// The capabilities of container `c`, in kernel order: containerd's defaults, then
/// `capabilities.add` and `.drop` as the CRI applies them (`ALL` first, then the names); all
/// the agent holds when `privileged`.
pub fn capabilities(c: &PodContainer) -> Result<Vec<&'static str>, UnknownCapability> {
    if c.privileged {
        return Ok(held_caps());
    }
    let name = |n: &str| -> Result<&'static str, UnknownCapability> {
        let up = n.to_ascii_uppercase();
        let bare = up.strip_prefix("CAP_").unwrap_or(&up);
        ALL_CAPS
            .iter()
            .find(|c| **c == bare)
            .copied()
            .ok_or_else(|| UnknownCapability(n.to_string()))
    };
    let is_all = |n: &String| n.eq_ignore_ascii_case("ALL");
    let mut caps: Vec<&'static str> = DEFAULT_CAPS.to_vec();
    if c.caps_add.iter().any(is_all) {
        caps = held_caps();
    }
    if c.caps_drop.iter().any(is_all) {
        caps.clear();
    }
    for n in c.caps_add.iter().filter(|n| !is_all(n)) {
        let n = name(n)?;
        if !caps.contains(&n) {
            caps.push(n);
        }
    }
    for n in c.caps_drop.iter().filter(|n| !is_all(n)) {
        let n = name(n)?;
        caps.retain(|c| *c != n);
    }
    caps.sort_by_key(|n| ALL_CAPS.iter().position(|c| c == n));
    Ok(caps)
}

/// `process.capabilities`: `caps` bounding, effective and permitted; inheritable and ambient
/// empty (CVE-2022-24769: a non-root process must not keep any).
pub(super) fn linux_capabilities(caps: &[&str]) -> LinuxCapabilities {
    let set: std::collections::HashSet<Capability> = caps
        .iter()
        .filter_map(|n| serde_json::from_value(serde_json::json!(format!("CAP_{n}"))).ok())
        .collect();
    let mut lc = LinuxCapabilities::default();
    lc.set_bounding(Some(set.clone()));
    lc.set_effective(Some(set.clone()));
    lc.set_permitted(Some(set));
    lc.set_inheritable(Some(Default::default()));
    lc.set_ambient(Some(Default::default()));
    lc
}
