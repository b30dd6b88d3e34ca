//! A container's OCI runtime spec (`config.json`) from its image's config and the pod
//! (SPEC §8): the process with Kubernetes' rules for `command`/`args` and `$(VAR)`, its
//! environment, working directory and user, the pod's name as hostname, the usual mounts
//! and the pid, ipc, uts and mount namespaces (the network is the instance's own).

use oci_spec::runtime::{LinuxNamespaceType, Spec, User};

use super::caps::{ALL_CAPS, capabilities, linux_capabilities};

use crate::config::pod::PodContainer;
use crate::oci::config::RunConfig;

/// Why a container's spec cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error(
        "the container has nothing to run: no command or args in the pod, no Entrypoint or Cmd in the image"
    )]
    NoCommand,
    #[error("user {user:?}: {why}")]
    User { user: String, why: String },
    #[error("securityContext.capabilities: {0:?} is not a Linux capability")]
    Capability(String),
}

impl From<super::caps::UnknownCapability> for SpecError {
    fn from(e: super::caps::UnknownCapability) -> SpecError {
        SpecError::Capability(e.0)
    }
}

/// containerd's masked and read-only `/proc` and `/sys` paths for a container that is not
/// privileged.
pub const MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/proc/scsi",
];
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The `PATH` a container gets when neither its image nor its pod sets one (containerd's).
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Puts what `config.json` holds as sets (the capabilities) in kernel order: a rerun writes
/// the same bytes.
pub fn fixed_order(spec: &mut serde_json::Value) {
    let Some(caps) = spec
        .pointer_mut("/process/capabilities")
        .and_then(|c| c.as_object_mut())
    else {
        return;
    };
    for set in caps.values_mut() {
        if let Some(list) = set.as_array_mut() {
            list.sort_by_key(|v| {
                let n = v.as_str().unwrap_or_default();
                ALL_CAPS
                    .iter()
                    .position(|c| n.strip_prefix("CAP_") == Some(*c))
                    .unwrap_or(usize::MAX)
            });
        }
    }
}

/// Kubernetes' expansion of `$(VAR)` in commands, args and env values: a defined variable is
/// replaced, an undefined reference is kept as written, `$$` is a literal `$`.
pub fn expand(s: &str, vars: &[(String, String)]) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = after.strip_prefix('(') {
            match r.find(')') {
                Some(end) => {
                    let name = &r[..end];
                    match vars.iter().rev().find(|(k, _)| k == name) {
                        Some((_, v)) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &r[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = r;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The container's own env, each value expanded against the entries before it.
pub fn container_env(c: &PodContainer) -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = Vec::new();
    for (k, v) in &c.env {
        let v = expand(v, &vars);
        vars.push((k.clone(), v));
    }
    vars
}

/// `process.args`: `command` replaces the Entrypoint and drops Cmd, `args` replaces Cmd;
/// `$(VAR)` refers to the container's env.
pub fn process_args(image: &RunConfig, c: &PodContainer) -> Result<Vec<String>, SpecError> {
    let vars = container_env(c);
    let exp = |v: &[String]| v.iter().map(|s| expand(s, &vars)).collect::<Vec<_>>();
    let args = match (&c.command, &c.args) {
        (Some(cmd), args) if !cmd.is_empty() => {
            let mut a = exp(cmd);
            a.extend(exp(args.as_deref().unwrap_or_default()));
            a
        }
        (_, Some(args)) if !args.is_empty() => {
            let mut a = image.entrypoint.clone().unwrap_or_default();
            a.extend(exp(args));
            a
        }
        _ => {
            let mut a = image.entrypoint.clone().unwrap_or_default();
            a.extend(image.cmd.clone().unwrap_or_default());
            a
        }
    };
    if args.is_empty() {
        return Err(SpecError::NoCommand);
    }
    Ok(args)
}

/// `process.env`: the image's `Env`, overlaid by the container's literal values (same name:
/// replaced in place; new: appended).
pub fn process_env(image: &RunConfig, c: &PodContainer, hostname: &str) -> Vec<String> {
    // As containerd builds it: HOSTNAME first, the image's Env (a default PATH if it has
    // none), then the container's own values.
    let mut env: Vec<(String, String)> = vec![("HOSTNAME".into(), hostname.into())];
    let pair = |e: &str| match e.split_once('=') {
        Some((k, v)) => (k.to_string(), v.to_string()),
        None => (e.to_string(), String::new()),
    };
    for (k, v) in image.env.iter().flatten().map(|e| pair(e)) {
        match env.iter_mut().find(|(ek, _)| *ek == k) {
            Some(slot) => slot.1 = v,
            None => env.push((k, v)),
        }
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(pair(DEFAULT_PATH));
    }
    for (k, v) in container_env(c) {
        match env.iter_mut().find(|(ek, _)| *ek == k) {
            Some(slot) => slot.1 = v,
            None => env.push((k, v)),
        }
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// `uid` and `gid` of a user spec (`uid`, `uid:gid`, `name`, `name:group`, mixed) looked up in
/// the image's `/etc/passwd` and `/etc/group` (their text; `None` when the image has none).
pub fn resolve_user(
    spec: &str,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<(u32, u32), SpecError> {
    let err = |why: String| SpecError::User {
        user: spec.to_string(),
        why,
    };
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() {
        return Ok((0, 0));
    }
    // name:x:uid:gid:...
    let entries = |text: Option<&str>| -> Vec<Vec<String>> {
        text.unwrap_or("")
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split(':').map(str::to_string).collect::<Vec<_>>())
            .filter(|f| f.len() >= 3)
            .collect()
    };
    let users = entries(passwd);
    let (uid, primary) = match user.parse::<u32>() {
        Ok(uid) => {
            let gid = users
                .iter()
                .find(|f| f[2].parse::<u32>().ok() == Some(uid))
                .and_then(|f| f.get(3)?.parse().ok());
            (uid, gid)
        }
        Err(_) => {
            let f = users.iter().find(|f| f[0] == user).ok_or_else(|| {
                err(format!(
                    "no such user in the image's /etc/passwd{}",
                    if passwd.is_none() {
                        " (it has none)"
                    } else {
                        ""
                    }
                ))
            })?;
            let uid = f[2]
                .parse()
                .map_err(|_| err("its /etc/passwd entry has no numeric uid".into()))?;
            (uid, f.get(3).and_then(|g| g.parse().ok()))
        }
    };
    let gid = match grp {
        None => primary.unwrap_or(0),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => entries(group)
                .iter()
                .find(|f| f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| {
                    err(format!(
                        "no such group {g:?} in the image's /etc/group{}",
                        if group.is_none() {
                            " (it has none)"
                        } else {
                            ""
                        }
                    ))
                })?,
        },
    };
    Ok((uid, gid))
}

/// The additional groups of a process running as `uid` (named `name` in the image, if it
/// is): the image's `/etc/group` entries that list it (as containerd adds them), then the
/// pod's `supplementalGroups` and `fsGroup`; each once, never the primary group.
pub fn additional_gids(
    c: &PodContainer,
    (uid, gid): (u32, u32),
    passwd: Option<&str>,
    group: Option<&str>,
) -> Vec<u32> {
    let name = passwd.unwrap_or("").lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 3 && f[2].parse::<u32>().ok() == Some(uid)).then(|| f[0].to_string())
    });
    let mut out: Vec<u32> = Vec::new();
    if let Some(name) = name {
        for l in group.unwrap_or("").lines() {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() >= 4
                && f[3].split(',').any(|m| m == name)
                && let Ok(g) = f[2].parse::<u32>()
            {
                out.push(g);
            }
        }
    }
    out.extend(&c.extra_gids);
    let mut seen = std::collections::HashSet::new();
    out.retain(|g| *g != gid && seen.insert(*g));
    out
}

/// The runtime spec of container `c` of the pod named `hostname`, from its image's run
/// configuration; `user` is the (uid, gid) already resolved, `gids` its additional groups.
pub fn spec(
    image: &RunConfig,
    c: &PodContainer,
    hostname: Option<&str>,
    user: (u32, u32),
    gids: Vec<u32>,
) -> Result<Spec, SpecError> {
    let mut spec = Spec::default();
    spec.set_version("1.0.2".into());
    let hostname = hostname.unwrap_or(&c.name);
    spec.set_hostname(Some(hostname.to_string()));
    let caps = capabilities(c)?;
    if let Some(p) = spec.process_mut().as_mut() {
        p.set_terminal(Some(false));
        p.set_args(Some(process_args(image, c)?));
        p.set_env(Some(process_env(image, c, hostname)));
        p.set_capabilities(Some(linux_capabilities(&caps)));
        p.set_no_new_privileges(Some(c.no_new_privileges));
        let cwd = c
            .working_dir
            .clone()
            .or_else(|| image.working_dir.clone().filter(|w| !w.is_empty()))
            .unwrap_or_else(|| "/".into());
        p.set_cwd(cwd.into());
        let mut u = User::default();
        u.set_uid(user.0);
        u.set_gid(user.1);
        if !gids.is_empty() {
            u.set_additional_gids(Some(gids));
        }
        p.set_user(u);
    }
    if let Some(root) = spec.root_mut().as_mut() {
        root.set_path("rootfs".into());
        root.set_readonly(Some(c.read_only_root));
    }
    if let Some(linux) = spec.linux_mut().as_mut() {
        let mut res = linux.resources().clone().unwrap_or_default();
        let (memory, cpu) = resources(c);
        res.set_memory(memory);
        res.set_cpu(cpu);
        linux.set_resources(Some(res));
        let (masked, readonly): (&[&str], &[&str]) = if c.privileged {
            (&[], &[])
        } else {
            (&MASKED_PATHS, &READONLY_PATHS)
        };
        linux.set_masked_paths(Some(masked.iter().map(|p| p.to_string()).collect()));
        linux.set_readonly_paths(Some(readonly.iter().map(|p| p.to_string()).collect()));
    }
    if let Some(linux) = spec.linux_mut().as_mut()
        && let Some(ns) = linux.namespaces_mut().as_mut()
    {
        ns.retain(|n| {
            matches!(
                n.typ(),
                LinuxNamespaceType::Pid
                    | LinuxNamespaceType::Ipc
                    | LinuxNamespaceType::Uts
                    | LinuxNamespaceType::Mount
                    | LinuxNamespaceType::Cgroup
            )
        });
    }
    Ok(spec)
}

/// `linux.resources` of container `c` as the kubelet and containerd set them: the memory
/// limit in bytes; a CPU limit as a quota of the 100 ms period (at least 1 ms), CPU requests
/// as shares (1024 per core, at least 2).
pub fn resources(
    c: &PodContainer,
) -> (
    Option<oci_spec::runtime::LinuxMemory>,
    Option<oci_spec::runtime::LinuxCpu>,
) {
    use crate::config::quantity::Quantity;
    const PERIOD: u64 = 100_000;
    let q = |m: &std::collections::BTreeMap<String, String>, k: &str| {
        m.get(k).and_then(|v| Quantity::parse(v))
    };
    let memory = q(&c.resources.limits, "memory").map(|m| {
        let mut mem = oci_spec::runtime::LinuxMemory::default();
        mem.set_limit(Some(m.units().min(i64::MAX as u128) as i64));
        mem
    });
    let limit = q(&c.resources.limits, "cpu").map(|q| q.millis());
    let request = q(&c.resources.requests, "cpu").map(|q| q.millis());
    let cpu = (limit.is_some() || request.is_some()).then(|| {
        let mut cpu = oci_spec::runtime::LinuxCpu::default();
        if let Some(m) = limit {
            let quota = (m.saturating_mul(PERIOD as u128) / 1000).clamp(1000, i64::MAX as u128);
            cpu.set_quota(Some(quota as i64));
            cpu.set_period(Some(PERIOD));
        }
        if let Some(m) = request {
            cpu.set_shares(Some(
                (m.saturating_mul(1024) / 1000).clamp(2, u64::MAX as u128) as u64,
            ));
        }
        cpu
    });
    (memory, cpu)
}

/// The user of container `c`: the pod's `runAsUser`/`runAsGroup`, else the image's `User`
/// resolved in the image's files, else 0:0.
pub fn user(
    image: &RunConfig,
    c: &PodContainer,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<(u32, u32), SpecError> {
    let from_image = match image.user.as_deref().filter(|u| !u.is_empty()) {
        Some(u) => resolve_user(u, passwd, group)?,
        None => (0, 0),
    };
    match (c.run_as_user, c.run_as_group) {
        (Some(uid), Some(gid)) => Ok((uid, gid)),
        (Some(uid), None) => {
            // The primary group of that uid in the image, else 0 (as the kubelet leaves it).
            let gid = resolve_user(&uid.to_string(), passwd, group)?.1;
            Ok((uid, gid))
        }
        (None, Some(gid)) => Ok((from_image.0, gid)),
        (None, None) => Ok(from_image),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::caps::DEFAULT_CAPS;

    fn container() -> PodContainer {
        PodContainer {
            name: "app".into(),
            init: false,
            image: "x".into(),
            command: None,
            args: None,
            env: Vec::new(),
            skipped_env: Vec::new(),
            working_dir: None,
            run_as_user: None,
            run_as_group: None,
            read_only_root: false,
            run_as_non_root: false,
            privileged: false,
            no_new_privileges: false,
            caps_add: Vec::new(),
            caps_drop: Vec::new(),
            extra_gids: Vec::new(),
            termination_message_path: "/dev/termination-log".into(),
            resources: Default::default(),
            volume_mounts: Vec::new(),
        }
    }

    fn v(s: &[&str]) -> Option<Vec<String>> {
        Some(s.iter().map(|x| x.to_string()).collect())
    }

    #[test]
    fn expansion_follows_kubernetes() {
        let vars = vec![
            ("A".to_string(), "1".to_string()),
            ("B".into(), "two".into()),
        ];
        for (input, want) in [
            ("$(A)", "1"),
            ("x$(B)y", "xtwoy"),
            ("$(C)", "$(C)"),
            ("$$(A)", "$(A)"),
            ("$$", "$"),
            ("$A", "$A"),
            ("$(A", "$(A"),
            ("tail$", "tail$"),
            ("$(A)$(B)$$(B)", "1two$(B)"),
        ] {
            assert_eq!(expand(input, &vars), want, "{input}");
        }
        let mut c = container();
        c.env = vec![("A".into(), "a".into()), ("B".into(), "$(A)-b".into())];
        assert_eq!(
            container_env(&c)[1].1,
            "a-b",
            "env values see earlier entries"
        );
    }

    #[test]
    fn command_and_args_against_entrypoint_and_cmd() {
        let image = RunConfig {
            entrypoint: v(&["/entry"]),
            cmd: v(&["--default"]),
            ..Default::default()
        };
        let mut c = container();
        assert_eq!(
            process_args(&image, &c).unwrap(),
            vec!["/entry", "--default"]
        );
        c.args = v(&["--mine", "$(X)"]);
        c.env = vec![("X".into(), "ex".into())];
        assert_eq!(
            process_args(&image, &c).unwrap(),
            vec!["/entry", "--mine", "ex"]
        );
        c.command = v(&["/bin/own"]);
        assert_eq!(
            process_args(&image, &c).unwrap(),
            vec!["/bin/own", "--mine", "ex"]
        );
        c.args = None;
        assert_eq!(
            process_args(&image, &c).unwrap(),
            vec!["/bin/own"],
            "Cmd dropped"
        );
        assert_eq!(
            process_args(&RunConfig::default(), &container()),
            Err(SpecError::NoCommand)
        );
    }

    #[test]
    fn env_overlays_the_image() {
        let image = RunConfig {
            env: v(&["PATH=/bin", "KEEP=1", "ODD"]),
            ..Default::default()
        };
        let mut c = container();
        c.env = vec![
            ("PATH".into(), "/usr/bin:$(KEEP)".into()),
            ("NEW".into(), "n".into()),
        ];
        assert_eq!(
            process_env(&image, &c, "web-0"),
            vec![
                "HOSTNAME=web-0",
                "PATH=/usr/bin:$(KEEP)",
                "KEEP=1",
                "ODD=",
                "NEW=n"
            ],
            "image env is not visible to $(VAR), as in Kubernetes"
        );
        // No PATH from the image or the pod: containerd's default.
        let bare = RunConfig::default();
        assert_eq!(
            process_env(&bare, &container(), "h"),
            vec!["HOSTNAME=h", DEFAULT_PATH]
        );
    }

    #[test]
    fn additional_groups_from_the_image_and_the_pod() {
        let passwd = "root:x:0:0::/:/bin/sh\napp:x:1000:1001::/:/bin/sh\n";
        let group = "root:x:0:\nstaff:x:1001:app\nwheel:x:10:root,app\naudio:x:29:other\n";
        let mut c = container();
        c.extra_gids = vec![2000, 10, 3000];
        assert_eq!(
            additional_gids(&c, (1000, 1001), Some(passwd), Some(group)),
            vec![10, 2000, 3000],
            "member of wheel; staff is the primary group; each once"
        );
        assert_eq!(
            additional_gids(&container(), (4242, 0), Some(passwd), Some(group)),
            Vec::<u32>::new()
        );
    }

    #[test]
    fn resources_become_cgroup_limits() {
        let mut c = container();
        assert_eq!(resources(&c), (None, None));
        c.resources.limits = [
            ("cpu".into(), "500m".into()),
            ("memory".into(), "64Mi".into()),
        ]
        .into_iter()
        .collect();
        c.resources.requests = [("cpu".into(), "250m".into())].into_iter().collect();
        let (m, cpu) = resources(&c);
        assert_eq!(m.unwrap().limit(), Some(64 << 20));
        let cpu = cpu.unwrap();
        assert_eq!(
            (cpu.quota(), cpu.period(), cpu.shares()),
            (Some(50_000), Some(100_000), Some(256))
        );
        c.resources.limits = [("cpu".into(), "1m".into())].into_iter().collect();
        c.resources.requests.clear();
        let cpu = resources(&c).1.unwrap();
        assert_eq!(
            (cpu.quota(), cpu.shares()),
            (Some(1000), None),
            "a quota of 1 ms at least"
        );
    }

    /// containerd's 14 capabilities by default, in bounding, effective and permitted only;
    /// add/drop with or without `CAP_`, `ALL` first; masked paths; a fixed order.
    #[test]
    fn capabilities_and_paths_as_containerd_sets_them() {
        let image = RunConfig {
            entrypoint: v(&["/bin/sh"]),
            ..Default::default()
        };
        let mut c = container();
        let j = |c: &PodContainer| {
            let mut j =
                serde_json::to_value(spec(&image, c, Some("p"), (0, 0), Vec::new()).unwrap())
                    .unwrap();
            fixed_order(&mut j);
            j
        };
        let caps = |j: &serde_json::Value, set: &str| -> Vec<String> {
            j["process"]["capabilities"][set]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect()
        };
        let d = j(&c);
        let mut want: Vec<String> = DEFAULT_CAPS.iter().map(|n| format!("CAP_{n}")).collect();
        want.sort_by_key(|n| ALL_CAPS.iter().position(|c| n[4..] == **c));
        for set in ["bounding", "effective", "permitted"] {
            assert_eq!(caps(&d, set), want, "{set}");
        }
        assert!(caps(&d, "inheritable").is_empty() && caps(&d, "ambient").is_empty());
        assert_eq!(d["process"]["noNewPrivileges"], false);
        assert_eq!(d["linux"]["maskedPaths"].as_array().unwrap().len(), 11);
        assert_eq!(d["linux"]["readonlyPaths"][3], "/proc/sys");
        // The same bytes every time (the sets are hash sets inside).
        for _ in 0..5 {
            assert_eq!(j(&c).to_string(), d.to_string());
        }
        c.caps_add = vec!["NET_ADMIN".into(), "cap_sys_time".into()];
        c.caps_drop = vec!["CAP_MKNOD".into(), "net_raw".into()];
        c.no_new_privileges = true;
        let e = j(&c);
        let got = caps(&e, "effective");
        assert!(got.contains(&"CAP_NET_ADMIN".into()) && got.contains(&"CAP_SYS_TIME".into()));
        assert!(!got.contains(&"CAP_MKNOD".into()) && !got.contains(&"CAP_NET_RAW".into()));
        assert_eq!(got.len(), 14);
        assert_eq!(e["process"]["noNewPrivileges"], true);
        c.caps_add = vec!["CHOWN".into()];
        c.caps_drop = vec!["ALL".into()];
        assert_eq!(caps(&j(&c), "bounding"), vec!["CAP_CHOWN"]);
        c.caps_drop = vec!["CAP_NOPE".into()];
        assert!(matches!(
            spec(&image, &c, None, (0, 0), Vec::new()),
            Err(SpecError::Capability(_))
        ));
        c.caps_drop.clear();
        c.privileged = true;
        let p = j(&c);
        assert!(
            caps(&p, "bounding").len() >= 14,
            "every capability the agent holds"
        );
        assert!(p["linux"]["maskedPaths"].as_array().unwrap().is_empty());
    }

    #[test]
    fn users_resolve_against_the_images_files() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n";
        let group = "root:x:0:\nstaff:x:50:app\n";
        let r = |u: &str| resolve_user(u, Some(passwd), Some(group));
        assert_eq!(r("app"), Ok((1000, 1001)));
        assert_eq!(r("app:staff"), Ok((1000, 50)));
        assert_eq!(
            r("1000"),
            Ok((1000, 1001)),
            "a known uid gets its primary group"
        );
        assert_eq!(r("4242"), Ok((4242, 0)));
        assert_eq!(r("4242:7"), Ok((4242, 7)));
        assert_eq!(r(""), Ok((0, 0)));
        assert!(
            r("nobody")
                .unwrap_err()
                .to_string()
                .contains("no such user")
        );
        assert!(
            r("app:wheel")
                .unwrap_err()
                .to_string()
                .contains("no such group")
        );
        assert!(
            resolve_user("app", None, None)
                .unwrap_err()
                .to_string()
                .contains("it has none")
        );

        let image = RunConfig {
            user: Some("app".into()),
            ..Default::default()
        };
        let mut c = container();
        assert_eq!(
            user(&image, &c, Some(passwd), Some(group)),
            Ok((1000, 1001))
        );
        c.run_as_user = Some(0);
        assert_eq!(user(&image, &c, Some(passwd), Some(group)), Ok((0, 0)));
        c.run_as_group = Some(9);
        assert_eq!(user(&image, &c, Some(passwd), Some(group)), Ok((0, 9)));
    }

    #[test]
    fn the_spec_is_what_runc_expects() {
        let image = RunConfig {
            entrypoint: v(&["/bin/sh"]),
            working_dir: Some("/srv".into()),
            ..Default::default()
        };
        let mut c = container();
        c.read_only_root = true;
        let s = spec(&image, &c, Some("web-0"), (1000, 1001), vec![50]).unwrap();
        let j = serde_json::to_value(&s).unwrap();
        assert_eq!(j["ociVersion"], "1.0.2");
        assert_eq!(j["hostname"], "web-0");
        assert_eq!(j["root"]["path"], "rootfs");
        assert_eq!(j["root"]["readonly"], true);
        assert_eq!(j["process"]["terminal"], false);
        assert_eq!(j["process"]["cwd"], "/srv");
        assert_eq!(j["process"]["user"]["uid"], 1000);
        assert_eq!(
            j["process"]["user"]["additionalGids"],
            serde_json::json!([50])
        );
        assert_eq!(j["process"]["args"][0], "/bin/sh");
        let ns: Vec<&str> = j["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(ns.len(), 5, "{ns:?}");
        assert!(ns.contains(&"cgroup"), "the container sees its own cgroup");
        assert!(!ns.contains(&"network"));
        let mounts: Vec<&str> = j["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        for m in [
            "/proc",
            "/dev",
            "/dev/pts",
            "/dev/shm",
            "/dev/mqueue",
            "/sys",
        ] {
            assert!(mounts.contains(&m), "{m}: {mounts:?}");
        }
    }
}
