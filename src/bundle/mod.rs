//! Runtime bundles (SPEC §8): for each init container and container of the pod,
//! `<root>/run/kci/bundles/<name>/` holds `config.json` (an OCI runtime spec `runc run`
//! accepts), `rootfs/` (an overlay of the image's layers with the container's own upper and
//! work directories under `<root>/var/lib/kci/containers/<name>/`) and `mounts.json` (that
//! mount, for a runtime that mounts by itself).

pub mod caps;
pub mod devices;
pub mod mount;
pub mod namefiles;
pub mod podmounts;
pub mod spec;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::Config;
use crate::config::pod::PodContainer;
use crate::fsutil::atomic::under_root;
use crate::layers::lower::read_merged;
use crate::layers::store::LayerStore;
use crate::oci;
use crate::registry::reference::Reference;
use crate::report::{ImageReport, Status};
use crate::store::Store;

pub const BUNDLES: &str = "run/kci/bundles";
pub const CONTAINERS: &str = "var/lib/kci/containers";
pub const POD: &str = "run/kci/pod";

/// What happened to one container's bundle (the report's `containers`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerReport {
    pub name: String,
    pub image: String,
    pub bundle: String,
    /// `ready` or `failed`.
    pub status: &'static str,
    pub error: Option<String>,
    /// What of the container the agent cannot resolve and left out (SPEC §10): `env X
    /// (valueFrom)`, `envFrom (N sources)`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unresolved: Vec<String>,
}

/// Where bundles go and whether their rootfs is mounted.
pub struct Paths {
    pub bundles: PathBuf,
    pub containers: PathBuf,
    /// The pod's own directory (its name files, volumes, `/dev/shm`, IPC namespace).
    pub pod: PathBuf,
    /// The instance's own `/etc/hosts` and `/etc/resolv.conf` (SPEC §3).
    pub instance_hosts: PathBuf,
    pub instance_resolv: PathBuf,
    pub mount: bool,
    /// The trees of the image caches whose layers bundles may use (none by default).
    pub caches: Vec<PathBuf>,
}

impl Paths {
    /// The default places under `root` (each resolved inside it).
    pub fn under(root: &Path, mount: bool) -> Paths {
        Paths {
            bundles: under_root(root, BUNDLES),
            containers: under_root(root, CONTAINERS),
            pod: under_root(root, POD),
            instance_hosts: under_root(root, "etc/hosts"),
            instance_resolv: under_root(root, "etc/resolv.conf"),
            mount,
            caches: Vec::new(),
        }
    }
}

/// Prepares the bundle of every container of `cfg`: a container whose image failed, or whose
/// bundle cannot be made, is `failed` with the reason; the others go on.
pub fn prepare(
    cfg: &Config,
    store: &Store,
    layers: &LayerStore,
    images: &[ImageReport],
    paths: &Paths,
) -> Vec<ContainerReport> {
    let mut subpaths_failed = Vec::new();
    let names = pod_files(cfg, paths).and_then(|names| {
        let plan = podmounts::plan(cfg);
        podmounts::write_plan(&paths.pod, &plan)?;
        if paths.mount {
            subpaths_failed = podmounts::apply(&paths.pod, &plan)?;
        }
        Ok(names)
    });
    cfg.containers
        .iter()
        .map(|c| {
            let bundle = paths.bundles.join(&c.name);
            let result = names.clone().and_then(|names| {
                if let Some((_, why)) = subpaths_failed.iter().find(|(n, _)| *n == c.name) {
                    return Err(why.clone());
                }
                prepare_one(cfg, c, store, layers, images, paths, &bundle, &names)
            });
            if let Err(e) = &result {
                tracing::error!(container = %c.name, "container {}: {e}", c.name);
            }
            ContainerReport {
                name: c.name.clone(),
                image: c.image.clone(),
                bundle: bundle.display().to_string(),
                status: if result.is_ok() { "ready" } else { "failed" },
                error: result.err(),
                unresolved: c.skipped_env.clone(),
            }
        })
        .collect()
}

/// The pod's name files, as the kubelet gives every container: `/etc/hosts` (its format,
/// the pod's IPs and hostAliases), `/etc/hostname` and `/etc/resolv.conf` (by `dnsPolicy`),
/// written once for the pod under its directory; each with where a container gets it.
fn pod_files(cfg: &Config, paths: &Paths) -> Result<Vec<(PathBuf, &'static str)>, String> {
    let (Some(net), Some(host)) = (&cfg.pod_net, &cfg.hostname) else {
        return Ok(Vec::new());
    };
    std::fs::create_dir_all(&paths.pod)
        .map_err(|e| format!("cannot create {}: {e}", paths.pod.display()))?;
    let instance = |p: &Path| std::fs::read_to_string(p).ok();
    let hosts = namefiles::hosts_file(
        net,
        &cfg.cluster.domain,
        instance(&paths.instance_hosts).as_deref(),
    );
    let (resolv, warnings) = namefiles::resolv_file(
        net,
        &cfg.cluster,
        instance(&paths.instance_resolv).as_deref(),
    );
    for w in warnings {
        tracing::warn!("{w}");
    }
    let mut out = Vec::new();
    for (name, content, at) in [
        ("hosts", hosts, "/etc/hosts"),
        ("hostname", format!("{host}\n"), "/etc/hostname"),
        ("resolv.conf", resolv, "/etc/resolv.conf"),
    ] {
        let file = paths.pod.join(name);
        crate::fsutil::atomic::write_file(&file, &file, content.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
        out.push((file, at));
    }
    Ok(out)
}

/// A bind mount of `source` at `destination` in the container.
fn bind(source: PathBuf, destination: &str, read_only: bool) -> oci_spec::runtime::Mount {
    let mut m = oci_spec::runtime::Mount::default();
    m.set_destination(destination.into());
    m.set_typ(Some("bind".into()));
    m.set_source(Some(source));
    let mode = if read_only { "ro" } else { "rw" };
    m.set_options(Some(vec!["rbind".into(), mode.into()]));
    m
}

#[allow(clippy::too_many_arguments)]
fn prepare_one(
    cfg: &Config,
    c: &PodContainer,
    store: &Store,
    layers: &LayerStore,
    images: &[ImageReport],
    paths: &Paths,
    bundle: &Path,
    pod_files: &[(PathBuf, &'static str)],
) -> Result<(), String> {
    crate::config::names::check_label(&c.name)
        .map_err(|why| format!("the container name {:?} {why}", c.name))?;
    for skipped in &c.skipped_env {
        tracing::warn!(container = %c.name, "{skipped} is not resolved by the agent: left out of the container");
    }
    let reference = Reference::parse(&c.image).map_err(|e| format!("image {:?}: {e}", c.image))?;
    let name = reference.to_string();
    if let Some(r) = images.iter().find(|r| r.reference == name)
        && r.status == Status::Failed
    {
        return Err(format!(
            "its image {name} was not pulled: {}",
            r.error.as_deref().unwrap_or("see above")
        ));
    }
    let desc = store
        .find_ref(&name)
        .map_err(|e| format!("cannot read the image store: {e}"))?
        .ok_or_else(|| format!("the image {name} is not in the store"))?;
    let blobs = store
        .manifest_blobs(&desc.digest)
        .ok_or_else(|| format!("the manifest of {name} is missing or corrupt in the store"))?;
    let (config, layer_descs) = blobs.split_first().expect("a manifest has a config");
    let config_bytes = store
        .read_blob(&config.digest, oci::config::MAX_CONFIG)
        .map_err(|e| format!("cannot read the image config of {name}: {e}"))?;
    let diff_ids =
        oci::config::diff_ids(&config_bytes, layer_descs.len()).map_err(|e| e.to_string())?;
    let chains = oci::config::chain_ids(&diff_ids);
    let mut lower: Vec<PathBuf> = Vec::with_capacity(chains.len());
    for chain in chains.iter().rev() {
        let found = layers.find(chain).ok_or_else(|| {
            format!(
                "layer {chain} of {name} is in neither the layer store nor an image cache \
                 (pulled with --no-unpack?)"
            )
        })?;
        lower.push(found.fs());
    }
    let run = oci::config::run_config(&config_bytes).map_err(|e| e.to_string())?;
    let text = |rel: &str| {
        read_merged(&lower, rel, 4 << 20).map(|b| String::from_utf8_lossy(&b).into_owned())
    };
    let (passwd, group) = (text("etc/passwd"), text("etc/group"));
    let user =
        spec::user(&run, c, passwd.as_deref(), group.as_deref()).map_err(|e| e.to_string())?;
    // The kubelet refuses to start such a container; so does the agent (the others of the
    // pod are still prepared).
    if c.run_as_non_root && user.0 == 0 {
        return Err(format!(
            "securityContext.runAsNonRoot is set, but the container would run as uid 0 (image \
             {name}, User {:?}); set runAsUser to a non-zero uid or use an image with a \
             non-root User",
            run.user.clone().unwrap_or_default()
        ));
    }
    let gids = spec::additional_gids(c, user, passwd.as_deref(), group.as_deref());
    let spec =
        spec::spec(&run, c, cfg.hostname.as_deref(), user, gids).map_err(|e| e.to_string())?;

    // The container's own directories and the bundle.
    let own = paths.containers.join(&c.name);
    let (upper, work) = (own.join("upper"), own.join("work"));
    let fresh = !upper.exists();
    for d in [&upper, &work, &bundle.join("rootfs")] {
        std::fs::create_dir_all(d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
    }
    // overlayfs shows the upper directory's own attributes as the container's `/`: a new one
    // takes the image's root (its top layer's). A rerun leaves what the container made of it.
    if fresh && let Some(top) = lower.first() {
        root_like(top, &upper)
            .map_err(|e| format!("cannot give {} its image's root: {e}", upper.display()))?;
    }
    let overlay = mount::Overlay { lower, upper, work };
    let write = |name: &str, value: serde_json::Value| {
        let path = bundle.join(name);
        let mut bytes = serde_json::to_vec_pretty(&value).unwrap_or_default();
        bytes.push(b'\n');
        crate::fsutil::atomic::write_file(&path, &path, &bytes)
            .map(|_| ())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    // The kubelet's termination log: a file of the container's own, 0666, bind-mounted
    // read-write where terminationMessagePath says.
    let log = own.join("termination-log");
    if !log.exists() {
        std::fs::write(&log, b"").map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    }
    std::fs::set_permissions(&log, std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .map_err(|e| format!("cannot make {} writable: {e}", log.display()))?;
    let mut spec = spec;
    if c.privileged {
        devices::privileged(&mut spec);
    }
    // The pod's IPC namespace and /dev/shm, shared by its containers.
    if let Some(ns) = spec
        .linux_mut()
        .as_mut()
        .and_then(|l| l.namespaces_mut().as_mut())
    {
        for n in ns.iter_mut() {
            if n.typ() == oci_spec::runtime::LinuxNamespaceType::Ipc {
                n.set_path(Some(podmounts::ipc_pin(&paths.pod)));
            }
        }
    }
    if let Some(mounts) = spec.mounts_mut().as_mut() {
        mounts.retain(|m| m.destination() != Path::new("/dev/shm"));
        mounts.push(bind(paths.pod.join("shm"), "/dev/shm", false));
        mounts.push(bind(log.clone(), &c.termination_message_path, false));
        for (file, at) in pod_files {
            mounts.push(bind(file.clone(), at, c.read_only_root));
        }
        for (i, v) in c.volume_mounts.iter().enumerate() {
            let source = volume_source(&paths.pod, v, &c.name, i)?;
            if !v.mount_path.starts_with('/') {
                return Err(format!(
                    "volumeMounts {}: mountPath {:?} is not absolute",
                    v.volume, v.mount_path
                ));
            }
            mounts.push(bind(source, &v.mount_path, v.read_only));
        }
    }
    let mut config = serde_json::to_value(&spec).map_err(|e| e.to_string())?;
    spec::fixed_order(&mut config);
    write("config.json", config)?;
    write("mounts.json", overlay.mounts_json())?;
    if paths.mount {
        ensure_mounted(bundle, &overlay)?;
    }
    Ok(())
}

/// What an `emptyDir` mount binds: the pod's `volumes/<name>` (0777, as the kubelet makes
/// it; a tmpfs for `medium: Memory`), or for a `subPath` the place the pod's mounts bind it on
/// (made safely when the pod is mounted: [`podmounts`]).
fn volume_source(
    pod: &Path,
    v: &crate::config::pod::VolumeMount,
    container: &str,
    index: usize,
) -> Result<PathBuf, String> {
    let vol = podmounts::make_volume(pod, &v.volume)?;
    match &v.sub_path {
        None => Ok(vol),
        Some(sub) => {
            podmounts::check_subpath(sub)
                .map_err(|why| format!("volumeMounts {}: {why}", v.volume))?;
            Ok(pod.join(podmounts::subpath_target(container, index)))
        }
    }
}

/// Gives the directory `to` the mode and owner of the directory `from`.
fn root_like(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let m = std::fs::symlink_metadata(from)?;
    std::os::unix::fs::lchown(to, Some(m.uid()), Some(m.gid()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(m.mode() & 0o7777))
}

/// Mounts `overlay` on the bundle's `rootfs/` unless the same overlay is mounted there
/// already (recorded in `.mounted`); a different one is unmounted first.
fn ensure_mounted(bundle: &Path, overlay: &mount::Overlay) -> Result<(), String> {
    let rootfs = bundle.join("rootfs");
    let marker = bundle.join(".mounted");
    let want = overlay.mounts_json();
    if mount::is_mounted(&rootfs) {
        let have = std::fs::read(&marker)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
        if have.as_ref() == Some(&want) {
            return Ok(()); // a correct mount from an earlier run stays
        }
        mount::unmount(&rootfs)
            .map_err(|e| format!("cannot unmount the stale {}: {e}", rootfs.display()))?;
    }
    overlay
        .mount(&rootfs)
        .map_err(|e| format!("cannot mount the overlay on {}: {e}", rootfs.display()))?;
    crate::fsutil::atomic::write_file(&marker, &marker, want.to_string().as_bytes())
        .map(|_| ())
        .map_err(|e| format!("cannot write {}: {e}", marker.display()))
}

/// Mounts the rootfs of every bundle from its `mounts.json` (for the systemd unit: `boot`
/// runs sandboxed in a mount namespace of its own with `--no-mount`, and this step, outside
/// it, makes the mounts the container runtime sees). `mounts.json` is checked before it is
/// trusted: one overlay whose lower directories are layer directories of `layers` or of the
/// image caches of `paths`, and whose upper and work directories are the
/// container's own.
pub fn mount_all(paths: &Paths, layers: &Path) -> Vec<(String, Result<(), String>)> {
    let mut out = Vec::new();
    // The pod's own mounts first: the bundles' config.json use them.
    match podmounts::read_plan(&paths.pod) {
        Ok(None) => {}
        Ok(Some(plan)) => match podmounts::apply(&paths.pod, &plan) {
            Ok(failed) => {
                for (container, why) in failed {
                    tracing::error!(container = %container, "container {container}: {why}");
                    out.push((container, Err(why)));
                }
            }
            Err(e) => out.push(("pod".to_string(), Err(e))),
        },
        Err(e) => out.push(("pod".to_string(), Err(e))),
    }
    if let Some((_, Err(e))) = out.first().filter(|(n, _)| n == "pod") {
        tracing::error!("the pod's mounts: {e}");
    }
    let Ok(entries) = std::fs::read_dir(&paths.bundles) else {
        return out;
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    out.extend(names.into_iter().map(|name| {
        let r = read_mounts(paths, layers, &name)
            .and_then(|o| ensure_mounted(&paths.bundles.join(&name), &o));
        if let Err(e) = &r {
            tracing::error!(container = %name, "bundle {name}: {e}");
        }
        (name, r)
    }));
    out
}

/// A bundle's `mounts.json`, checked: one overlay of layer directories of `layers` (or of
/// the image caches of `paths`) with the container's own upper and work directories.
pub fn read_mounts(paths: &Paths, layers: &Path, name: &str) -> Result<mount::Overlay, String> {
    let caches = &paths.caches;
    crate::config::names::check_label(name)
        .map_err(|why| format!("the bundle name {name:?} {why}"))?;
    let file = paths.bundles.join(name).join("mounts.json");
    let bytes = std::fs::read(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let v: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{} is not JSON: {e}", file.display()))?;
    let m = match v.as_array().map(Vec::as_slice) {
        Some([m]) if m["type"] == "overlay" && m["source"] == "overlay" => m,
        _ => return Err(format!("{} is not one overlay mount", file.display())),
    };
    let mut lower = Vec::new();
    let (mut upper, mut work) = (None, None);
    for o in m["options"].as_array().into_iter().flatten() {
        let o = o.as_str().unwrap_or("");
        if let Some(l) = o.strip_prefix("lowerdir=") {
            lower.extend(l.split(':').map(PathBuf::from));
        } else if let Some(u) = o.strip_prefix("upperdir=") {
            upper = Some(PathBuf::from(u));
        } else if let Some(w) = o.strip_prefix("workdir=") {
            work = Some(PathBuf::from(w));
        } else {
            return Err(format!(
                "{}: option {o:?} is not the agent's",
                file.display()
            ));
        }
    }
    let own = paths.containers.join(name);
    let plain = |p: &Path| {
        p.components().all(|c| {
            matches!(
                c,
                std::path::Component::RootDir | std::path::Component::Normal(_)
            )
        })
    };
    let layer_dir = |p: &Path| {
        let sha256 = p.parent().and_then(Path::parent);
        plain(p)
            && p.file_name().is_some_and(|f| f == "fs")
            && (sha256 == Some(&layers.join("sha256"))
                || caches
                    .iter()
                    .any(|c| sha256 == Some(&c.join("layers/sha256"))))
    };
    if lower.is_empty() || !lower.iter().all(|p| layer_dir(p)) {
        return Err(format!(
            "{}: a lower directory is not a layer of {} or of an image cache{}",
            file.display(),
            layers.display(),
            if caches.is_empty() {
                " (none is given: --image-cache, or KCI_IMAGE_CACHE as boot had it)"
            } else {
                ""
            }
        ));
    }
    let (Some(upper), Some(work)) = (upper, work) else {
        return Err(format!("{}: no upperdir or workdir", file.display()));
    };
    if upper != own.join("upper") || work != own.join("work") {
        return Err(format!(
            "{}: the upper and work directories are not the container's own ({})",
            file.display(),
            own.display()
        ));
    }
    Ok(mount::Overlay { lower, upper, work })
}
