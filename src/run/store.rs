//! `store-check`: the image store and the layer store checked, problems printed.

use std::io::Write;
use std::path::Path;

use tracing::info;

use crate::cli::OutputFormat;
use crate::error::Error;
use crate::layers::store::LayerProblemKind;

pub(super) fn store_check(
    root: &Path,
    path: &Path,
    layers: &Path,
    caches: &[std::path::PathBuf],
    fix: bool,
    output: OutputFormat,
) -> Result<(), Error> {
    // Only looks (nothing is created or cleaned up) unless --fix is given.
    let store = crate::store::Store::open_existing(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::Usage(format!(
                "{e}; check --store (default <root>/{})",
                super::DEFAULT_STORE
            ))
        } else {
            Error::Inconsistent(format!("cannot open the store {}: {e}", path.display()))
        }
    })?;
    // The image caches, read-only: each read as a run reads it, then its blobs and images.
    let mut problems = Vec::new();
    let mut cached = std::collections::HashSet::new();
    for (source, opened) in crate::cache::Caches::open_each(root, caches) {
        let checked = opened.and_then(|c| {
            cached.extend(c.layers.iter().map(|l| l.chain_id.clone()));
            c.check()
        });
        match checked {
            Ok(found) => problems.extend(found),
            Err(why) => problems.push(crate::store::Problem {
                kind: crate::store::ProblemKind::BadCache,
                path: source.display().to_string(),
                detail: format!("{why}; it is not used: rebuild it with `cache build`"),
                fixed: false,
            }),
        }
    }
    problems.extend(store.check(fix, &|c| cached.contains(c)).map_err(|e| {
        Error::Inconsistent(format!("cannot check the store {}: {e}", path.display()))
    })?);
    // The layer store too, if there is one.
    let layer_problems = crate::layers::store::LayerStore::open_existing(layers)
        .and_then(|l| l.map(|l| l.check(fix)).transpose())
        .map_err(|e| {
            Error::Inconsistent(format!(
                "cannot check the layer store {}: {e}",
                layers.display()
            ))
        })?;
    for p in layer_problems.into_iter().flatten() {
        problems.push(crate::store::Problem {
            kind: match p.kind {
                LayerProblemKind::Leftover => crate::store::ProblemKind::StrayFile,
                LayerProblemKind::BrokenLayer => crate::store::ProblemKind::BrokenLayer,
            },
            path: p.path.display().to_string(),
            detail: p.detail,
            fixed: p.fixed,
        });
    }
    let mut stdout = std::io::stdout().lock();
    for p in &problems {
        let line = match output {
            OutputFormat::Json => serde_json::to_string(p).unwrap_or_default(),
            OutputFormat::Text => format!(
                "{}{}: {} ({})",
                if p.fixed { "fixed " } else { "" },
                p.kind,
                p.path,
                p.detail
            ),
        };
        let _ = writeln!(stdout, "{line}");
    }
    let open = problems.iter().filter(|p| !p.fixed).count();
    info!(store = %path.display(), problems = problems.len(), remaining = open, "store checked");
    if open > 0 {
        return Err(Error::Inconsistent(format!(
            "{open} problem(s) in the store {}",
            path.display()
        )));
    }
    Ok(())
}
