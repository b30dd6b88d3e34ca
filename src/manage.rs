//! The store by hand (SPEC §11): `images` lists what is in the store, `rmi` removes
//! references, `prune` removes what nothing uses, `df` shows the space taken. `rmi` and
//! `prune` hold the stores' locks (a running pull waits, or makes them wait); every removal
//! is one unlink or one rename, so a kill at any point leaves stores `store-check` accepts.
//! A layer a prepared bundle mounts is never removed.

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::bundle::Paths;
use crate::layers::store::LayerStore;
use crate::oci::Digest;
use crate::oci::manifest::Descriptor;
use crate::store::Store;
use crate::store::resolved_of;

/// One image of the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageRow {
    pub reference: String,
    /// The stored manifest.
    pub digest: String,
    /// Bytes of its config and layer blobs.
    pub size: u64,
    pub layers: usize,
    /// Of those, how many are unpacked in the layer store or an image cache of this boot.
    pub layers_unpacked: usize,
    /// Prepared bundles that mount its layers.
    pub bundles: Vec<String>,
    /// Whether every blob it needs is in the store.
    pub complete: bool,
}

/// What one image needs: its blobs and the chain IDs of its layers (`None` when its
/// manifest or config is missing).
struct Needs {
    blobs: Vec<Descriptor>,
    chains: Option<Vec<Digest>>,
}

fn needs(store: &Store, manifest: &Digest) -> Needs {
    let Some(blobs) = store.manifest_blobs(manifest) else {
        return Needs {
            blobs: Vec::new(),
            chains: None,
        };
    };
    let chains = blobs
        .split_first()
        .and_then(|(config, layers)| store.chain_ids(&config.digest, layers.len()));
    Needs { blobs, chains }
}

/// The layers each prepared bundle mounts (by its checked `mounts.json`). A bundle whose
/// `mounts.json` cannot be read is an error: what it uses cannot be known.
fn bundle_layers(paths: &Paths, layers: &Path) -> Result<BTreeMap<String, Vec<Digest>>, String> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(&paths.bundles) else {
        return Ok(out);
    };
    for e in entries.flatten() {
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        if !e.path().join("mounts.json").exists() {
            continue;
        }
        let overlay = crate::bundle::read_mounts(paths, layers, &name)?;
        let chains = overlay
            .lower
            .iter()
            .filter_map(|fs| fs.parent()?.file_name()?.to_str())
            .filter_map(|hex| Digest::parse(&format!("sha256:{hex}")).ok())
            .collect();
        out.insert(name, chains);
    }
    Ok(out)
}

/// The images of the store, in `index.json` order.
pub fn images(
    store: &Store,
    layers: Option<&LayerStore>,
    paths: &Paths,
    layers_root: &Path,
) -> io::Result<Vec<ImageRow>> {
    let bundles = bundle_layers(paths, layers_root).unwrap_or_default();
    let mut out = Vec::new();
    for (reference, d) in store.refs()? {
        let n = needs(store, &d.digest);
        let chains = n.chains.clone().unwrap_or_default();
        let cached = |c: &Digest| {
            paths.caches.iter().any(|dir| {
                dir.join("layers/sha256")
                    .join(c.hex())
                    .join("layer.json")
                    .is_file()
            })
        };
        let unpacked = chains
            .iter()
            .filter(|c| layers.is_some_and(|l| l.get(c).is_some()) || cached(c))
            .count();
        let using = bundles
            .iter()
            .filter(|(_, used)| !chains.is_empty() && used.iter().rev().eq(chains.iter()))
            .map(|(b, _)| b.clone())
            .collect();
        out.push(ImageRow {
            reference,
            digest: d.digest.to_string(),
            size: n.blobs.iter().map(|b| b.size).sum(),
            layers: n.blobs.len().saturating_sub(1),
            layers_unpacked: unpacked,
            bundles: using,
            complete: store.is_complete_with(&d.digest, &|c| {
                paths.caches.iter().any(|dir| {
                    dir.join("layers/sha256")
                        .join(c.hex())
                        .join("layer.json")
                        .is_file()
                })
            }),
        });
    }
    Ok(out)
}

/// Removes these references (normalised as a pull normalises them) from `index.json`; a name
/// that is not there is an error and nothing is removed.
pub fn rmi(store: &Store, names: &[String]) -> Result<Vec<String>, String> {
    let refs = store.refs().map_err(|e| e.to_string())?;
    let mut remove = Vec::new();
    for n in names {
        let normal = crate::registry::reference::Reference::parse(n)
            .map(|r| r.to_string())
            .map_err(|why| format!("{n:?} is not an image reference: {why}"))?;
        if !refs.iter().any(|(r, _)| *r == normal) {
            return Err(format!(
                "{normal} is not in the store {} (see `kci-pull-agent images`); nothing was removed",
                store.root().display()
            ));
        }
        if !remove.contains(&normal) {
            remove.push(normal);
        }
    }
    store.remove_refs(&remove).map_err(|e| e.to_string())?;
    Ok(remove)
}

/// What a prune removed (or, for `df`, would remove).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Pruned {
    pub blobs: usize,
    pub blob_bytes: u64,
    pub layers: usize,
    pub layer_bytes: u64,
}

/// Blobs (with their sizes) and layers (chain IDs) nothing uses.
type Unused = (Vec<(Digest, u64)>, Vec<Digest>);

/// What is in the stores: the references, every blob with its size, every layer.
struct Listing {
    refs: Vec<(String, Descriptor)>,
    blobs: Vec<(Digest, u64)>,
    /// `None` without a layer store.
    chains: Option<Vec<Digest>>,
}

fn list(store: &Store, layers: Option<&LayerStore>) -> Result<Listing, String> {
    Ok(Listing {
        refs: store.refs().map_err(|e| e.to_string())?,
        blobs: store.blobs().map_err(|e| e.to_string())?,
        chains: layers
            .map(|l| l.chains().map_err(|e| e.to_string()))
            .transpose()?,
    })
}

/// The blobs and layers of `all` nothing uses: not referenced by an image of `index.json`
/// (its manifest, the index it was resolved from, its config and layers; its layers' chain
/// IDs) and, for layers, not mounted by a prepared bundle.
fn unused(
    store: &Store,
    all: &Listing,
    paths: &Paths,
    layers_root: &Path,
) -> Result<Unused, String> {
    let mut keep_blobs: HashSet<Digest> = HashSet::new();
    let mut keep_layers: HashSet<Digest> = HashSet::new();
    for (_, d) in &all.refs {
        keep_blobs.insert(d.digest.clone());
        if let Some(resolved) = resolved_of(d).and_then(|s| Digest::parse(s).ok()) {
            keep_blobs.insert(resolved);
        }
        let n = needs(store, &d.digest);
        keep_blobs.extend(n.blobs.into_iter().map(|b| b.digest));
        keep_layers.extend(n.chains.into_iter().flatten());
    }
    let blobs = all
        .blobs
        .iter()
        .filter(|(d, _)| !keep_blobs.contains(d))
        .cloned()
        .collect();
    let Some(chains) = &all.chains else {
        return Ok((blobs, Vec::new()));
    };
    let mounted = bundle_layers(paths, layers_root).map_err(|why| {
        format!("{why}; no layer can be pruned while what a bundle mounts is unknown")
    })?;
    keep_layers.extend(mounted.into_values().flatten());
    let unused_layers = chains
        .iter()
        .filter(|c| !keep_layers.contains(c))
        .cloned()
        .collect();
    Ok((blobs, unused_layers))
}

/// Removes what nothing uses ([`unused`]).
pub fn prune(
    store: &Store,
    layers: Option<&LayerStore>,
    paths: &Paths,
    layers_root: &Path,
) -> Result<Pruned, String> {
    let (blobs, chains) = unused(store, &list(store, layers)?, paths, layers_root)?;
    let mut out = Pruned::default();
    for (d, size) in blobs {
        store.remove_blob(&d).map_err(|e| e.to_string())?;
        out.blobs += 1;
        out.blob_bytes += size;
    }
    if let Some(l) = layers {
        for c in chains {
            let bytes = disk_usage(&l.layer_dir(&c));
            l.remove(&c)
                .map_err(|e| format!("cannot remove layer {c}: {e}"))?;
            out.layers += 1;
            out.layer_bytes += bytes;
        }
    }
    Ok(out)
}

/// The space the stores take (`df`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub store: PathBuf,
    pub images: usize,
    pub blobs: usize,
    pub blob_bytes: u64,
    pub layers_dir: PathBuf,
    pub layers: usize,
    pub layer_bytes: u64,
    /// What `prune` would remove.
    pub reclaimable: Pruned,
}

pub fn df(
    store: &Store,
    layers: Option<&LayerStore>,
    paths: &Paths,
    layers_root: &Path,
) -> Result<Usage, String> {
    let all = list(store, layers)?;
    let (unused_blobs, unused_layers) = unused(store, &all, paths, layers_root)?;
    // Each layer walked once.
    let chains = all.chains.as_deref().unwrap_or_default();
    let sizes: std::collections::HashMap<&Digest, u64> = match layers {
        Some(l) => chains
            .iter()
            .map(|c| (c, disk_usage(&l.layer_dir(c))))
            .collect(),
        None => Default::default(),
    };
    Ok(Usage {
        store: store.root().to_path_buf(),
        images: all.refs.len(),
        blobs: all.blobs.len(),
        blob_bytes: all.blobs.iter().map(|(_, s)| s).sum(),
        layers_dir: layers_root.to_path_buf(),
        layers: chains.len(),
        layer_bytes: sizes.values().sum(),
        reclaimable: Pruned {
            blobs: unused_blobs.len(),
            blob_bytes: unused_blobs.iter().map(|(_, s)| s).sum(),
            layers: unused_layers.len(),
            layer_bytes: unused_layers.iter().filter_map(|c| sizes.get(c)).sum(),
        },
    })
}

/// Bytes a directory tree takes on disk (allocated blocks; a file with several links once),
/// never following a link.
pub fn disk_usage(path: &Path) -> u64 {
    fn walk(p: &Path, seen: &mut HashSet<(u64, u64)>) -> u64 {
        let Ok(m) = std::fs::symlink_metadata(p) else {
            return 0;
        };
        if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
            return 0;
        }
        let mut total = m.blocks() * 512;
        if m.is_dir()
            && let Ok(entries) = std::fs::read_dir(p)
        {
            for e in entries.flatten() {
                total += walk(&e.path(), seen);
            }
        }
        total
    }
    walk(path, &mut HashSet::new())
}

/// `n` bytes for a person: `93.1 MB`.
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < UNITS.len() {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// Runs `images`, `rmi`, `prune` or `df` on the store at `store` and the layer store at
/// `layers_root`, printing to stdout.
pub fn command(
    cmd: &crate::cli::Command,
    store_root: &Path,
    layers_root: &Path,
    paths: &Paths,
    output: crate::cli::OutputFormat,
) -> Result<(), crate::error::Error> {
    use crate::cli::{Command, OutputFormat};
    use crate::error::Error;
    use std::io::Write;
    let json = output == OutputFormat::Json;
    let mut out = std::io::stdout().lock();
    let mut say = |text: String| {
        let _ = out.write_all(text.as_bytes());
    };
    let no_store = |e: io::Error| {
        Error::Usage(format!(
            "{e}; check --store (default <root>/var/lib/kci/images)"
        ))
    };
    let failed = |why: String| Error::Inconsistent(why);
    match cmd {
        Command::Images { .. } | Command::Df { .. } => {
            // Read only: nothing is created, no lock taken.
            let store = match Store::open_existing(store_root) {
                Ok(s) => s,
                Err(e)
                    if e.kind() == io::ErrorKind::NotFound
                        && matches!(cmd, Command::Images { .. }) =>
                {
                    if !json {
                        say(format!("no image store at {} yet\n", store_root.display()));
                    }
                    return Ok(());
                }
                Err(e) => return Err(no_store(e)),
            };
            let layers =
                LayerStore::open_existing(layers_root).map_err(|e| failed(e.to_string()))?;
            if let Command::Df { .. } = cmd {
                let u = df(&store, layers.as_ref(), paths, layers_root).map_err(failed)?;
                if json {
                    say(format!(
                        "{}\n",
                        serde_json::to_string(&u).unwrap_or_default()
                    ));
                } else {
                    say(format!(
                        "image store  {}  {} image(s), {} blob(s), {}; reclaimable {} blob(s), {}\n\
                         layer store  {}  {} layer(s), {}; reclaimable {} layer(s), {}\n",
                        u.store.display(),
                        u.images,
                        u.blobs,
                        human(u.blob_bytes),
                        u.reclaimable.blobs,
                        human(u.reclaimable.blob_bytes),
                        u.layers_dir.display(),
                        u.layers,
                        human(u.layer_bytes),
                        u.reclaimable.layers,
                        human(u.reclaimable.layer_bytes),
                    ));
                }
                return Ok(());
            }
            let rows = images(&store, layers.as_ref(), paths, layers_root)
                .map_err(|e| failed(e.to_string()))?;
            if json {
                for r in &rows {
                    say(format!(
                        "{}\n",
                        serde_json::to_string(r).unwrap_or_default()
                    ));
                }
                return Ok(());
            }
            let width = rows
                .iter()
                .map(|r| r.reference.len())
                .max()
                .unwrap_or(9)
                .max(9);
            say(format!(
                "{:width$}  {:19}  {:>9}  {:>6}  BUNDLES\n",
                "REFERENCE", "DIGEST", "SIZE", "LAYERS"
            ));
            for r in rows {
                let short = r.digest.get(..19).unwrap_or(&r.digest).to_string();
                say(format!(
                    "{:width$}  {short:19}  {:>9}  {:>6}  {}{}\n",
                    r.reference,
                    human(r.size),
                    format!("{}/{}", r.layers_unpacked, r.layers),
                    if r.bundles.is_empty() {
                        "-".to_string()
                    } else {
                        r.bundles.join(",")
                    },
                    if r.complete {
                        ""
                    } else {
                        "  (incomplete: pull it again)"
                    },
                ));
            }
            Ok(())
        }
        Command::Rmi { images: names } => {
            if !store_root.is_dir() {
                return Err(Error::Usage(format!(
                    "there is no image store at {}; check --store",
                    store_root.display()
                )));
            }
            let store = Store::open(store_root).map_err(no_store)?;
            let removed = rmi(&store, names).map_err(Error::Usage)?;
            for r in removed {
                say(format!("removed {r}\n"));
            }
            Ok(())
        }
        Command::Prune { .. } => {
            if !store_root.is_dir() {
                return Err(Error::Usage(format!(
                    "there is no image store at {}; check --store",
                    store_root.display()
                )));
            }
            let store = Store::open(store_root).map_err(no_store)?;
            let layers = if layers_root.is_dir() {
                Some(LayerStore::open(layers_root).map_err(|e| failed(e.to_string()))?)
            } else {
                None
            };
            let p = prune(&store, layers.as_ref(), paths, layers_root).map_err(failed)?;
            if json {
                say(format!(
                    "{}\n",
                    serde_json::to_string(&p).unwrap_or_default()
                ));
            } else {
                say(format!(
                    "removed {} blob(s) ({}) and {} layer(s) ({})\n",
                    p.blobs,
                    human(p.blob_bytes),
                    p.layers,
                    human(p.layer_bytes)
                ));
            }
            Ok(())
        }
        _ => Err(Error::Usage("not a store command".into())),
    }
}
