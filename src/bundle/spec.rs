//! A container's OCI runtime spec (`config.json`) from its image's config and the pod
//! (SPEC §8): the process with Kubernetes' rules for `command`/`args` and `$(VAR)`, its
//! environment, working directory and user, the pod's name as hostname, the usual mounts
//! and the pid, ipc, uts and mount namespaces (the network is the instance's own).

use oci_spec::runtime::{LinuxNamespaceType, Spec, User};

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
pub fn process_env(image: &RunConfig, c: &PodContainer) -> Vec<String> {
    let mut env: Vec<(String, String)> = image
        .env
        .iter()
        .flatten()
        .map(|e| match e.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (e.clone(), String::new()),
        })
        .collect();
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

/// The runtime spec of container `c` of the pod named `hostname`, from its image's run
/// configuration; `user` is the (uid, gid) already resolved.
pub fn spec(
    image: &RunConfig,
    c: &PodContainer,
    hostname: Option<&str>,
    user: (u32, u32),
) -> Result<Spec, SpecError> {
    let mut spec = Spec::default();
    spec.set_version("1.0.2".into());
    spec.set_hostname(Some(hostname.unwrap_or(&c.name).to_string()));
    if let Some(p) = spec.process_mut().as_mut() {
        p.set_terminal(Some(false));
        p.set_args(Some(process_args(image, c)?));
        p.set_env(Some(process_env(image, c)));
        let cwd = c
            .working_dir
            .clone()
            .or_else(|| image.working_dir.clone().filter(|w| !w.is_empty()))
            .unwrap_or_else(|| "/".into());
        p.set_cwd(cwd.into());
        let mut u = User::default();
        u.set_uid(user.0);
        u.set_gid(user.1);
        p.set_user(u);
    }
    if let Some(root) = spec.root_mut().as_mut() {
        root.set_path("rootfs".into());
        root.set_readonly(Some(c.read_only_root));
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
            )
        });
    }
    Ok(spec)
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
            process_env(&image, &c),
            vec!["PATH=/usr/bin:$(KEEP)", "KEEP=1", "ODD=", "NEW=n"],
            "image env is not visible to $(VAR), as in Kubernetes"
        );
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
        let s = spec(&image, &c, Some("web-0"), (1000, 1001)).unwrap();
        let j = serde_json::to_value(&s).unwrap();
        assert_eq!(j["ociVersion"], "1.0.2");
        assert_eq!(j["hostname"], "web-0");
        assert_eq!(j["root"]["path"], "rootfs");
        assert_eq!(j["root"]["readonly"], true);
        assert_eq!(j["process"]["terminal"], false);
        assert_eq!(j["process"]["cwd"], "/srv");
        assert_eq!(j["process"]["user"]["uid"], 1000);
        assert_eq!(j["process"]["args"][0], "/bin/sh");
        let ns: Vec<&str> = j["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(ns.len(), 4, "{ns:?}");
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
