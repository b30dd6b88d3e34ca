//! `store-check`: re-verifies the whole store. Without `fix` it only looks.

use std::io::{self, Read};
use std::os::fd::AsFd;
use std::path::Path;

use rustix::fs::FileType;

use super::Store;
use crate::fsutil;
use crate::oci::{Algorithm, Digest};

/// What kind of inconsistency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProblemKind {
    /// A blob whose content does not hash to its name.
    CorruptBlob,
    /// A file that is not the store's: a leftover, a temporary file, not a blob.
    StrayFile,
    /// An image of `index.json` whose manifest or a blob is missing or corrupt.
    IncompleteImage,
    /// `index.json` cannot be read.
    BadIndex,
    /// A directory of the layer store whose `layer.json` is missing or disagrees with it.
    BrokenLayer,
    /// An image cache that cannot be used (SPEC §12): not mounted, not a cache, or a record
    /// that does not match what it describes.
    BadCache,
}

impl std::fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProblemKind::CorruptBlob => "corrupt-blob",
            ProblemKind::StrayFile => "stray-file",
            ProblemKind::IncompleteImage => "incomplete-image",
            ProblemKind::BadIndex => "bad-index",
            ProblemKind::BrokenLayer => "broken-layer",
            ProblemKind::BadCache => "bad-cache",
        })
    }
}

/// One inconsistency found by [`Store::check`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub kind: ProblemKind,
    pub path: String,
    pub detail: String,
    /// Whether `--fix` removed it.
    pub fixed: bool,
}

impl Store {
    /// Verifies the whole store: every blob is a regular file that hashes to its name, nothing
    /// stray is left in `ingest/` or as a temporary file, `index.json` parses and each of its
    /// images is complete. With `fix`, removes what is wrong (blobs, stray files, index entries
    /// of incomplete images); blobs of complete images are never touched. Without `fix`,
    /// nothing is changed. A layer blob an image lacks is no problem when `cached` says (by
    /// chain ID) an image cache holds its layer.
    pub fn check(&self, fix: bool, cached: &dyn Fn(&Digest) -> bool) -> io::Result<Vec<Problem>> {
        let mut problems = Vec::new();
        let mut corrupt: Vec<Digest> = Vec::new();
        let mut note =
            |kind, dir: std::os::fd::BorrowedFd<'_>, name: &str, path: &Path, detail: String| {
                let fixed = fix && fsutil::remove(dir, name).is_ok();
                problems.push(Problem {
                    kind,
                    path: path.display().to_string(),
                    detail,
                    fixed,
                });
            };
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            let Ok(dir) = self.alg_dir(alg) else { continue };
            for (name, ty) in fsutil::list(dir)? {
                let p = self.root.join("blobs").join(alg.name()).join(&name);
                let digest = match Digest::parse(&format!("{}:{name}", alg.name())) {
                    Ok(d) if ty == FileType::RegularFile => d,
                    Ok(_) => {
                        note(
                            ProblemKind::StrayFile,
                            dir,
                            &name,
                            &p,
                            format!("not a regular file but {ty:?}"),
                        );
                        continue;
                    }
                    Err(_) => {
                        note(
                            ProblemKind::StrayFile,
                            dir,
                            &name,
                            &p,
                            "not a blob name".into(),
                        );
                        continue;
                    }
                };
                let Some(mut f) = fsutil::open_file(dir, &name, &p)? else {
                    continue;
                };
                let mut h = alg.hasher();
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = f.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                }
                let actual = h.finish();
                if actual != digest {
                    note(
                        ProblemKind::CorruptBlob,
                        dir,
                        &name,
                        &p,
                        format!("content hashes to {actual}"),
                    );
                    corrupt.push(digest);
                }
            }
        }
        if let Ok(dir) = self.ingest_dir() {
            for (name, ty) in fsutil::list(dir)? {
                // Kept by a stopped run for the next one to resume: expected, not a stray.
                if ty == rustix::fs::FileType::RegularFile && super::is_resume_name(&name) {
                    continue;
                }
                let p = self.root.join("ingest").join(&name);
                note(
                    ProblemKind::StrayFile,
                    dir,
                    &name,
                    &p,
                    "left over from an interrupted pull".into(),
                );
            }
        }
        let root = self.root_fd.as_fd();
        for (name, _) in fsutil::list(root)? {
            if name.contains(fsutil::TEMP_MARK) {
                let p = self.root.join(&name);
                note(
                    ProblemKind::StrayFile,
                    root,
                    &name,
                    &p,
                    "temporary file of an interrupted write".into(),
                );
            }
        }
        let index = match self.read_index() {
            Ok(v) => v,
            Err(e) => {
                problems.push(Problem {
                    kind: ProblemKind::BadIndex,
                    path: self.root.join("index.json").display().to_string(),
                    detail: e.to_string(),
                    fixed: false,
                });
                return Ok(problems);
            }
        };
        let mut incomplete = Vec::new();
        for entry in index.entries() {
            let ok = entry.descriptor.is_ok_and(|d| {
                !corrupt.contains(&d.digest)
                    && self.is_complete_with(&d.digest, cached)
                    && self
                        .manifest_blobs(&d.digest)
                        .is_some_and(|blobs| blobs.iter().all(|x| !corrupt.contains(&x.digest)))
            });
            if !ok {
                incomplete.push(entry.name.unwrap_or_default());
            }
        }
        if !incomplete.is_empty() {
            let fixed = fix && self.remove_refs(&incomplete).is_ok();
            for name in incomplete {
                problems.push(Problem {
                    kind: ProblemKind::IncompleteImage,
                    path: self.root.join("index.json").display().to_string(),
                    detail: format!(
                        "{name:?}: its digest is invalid, or its manifest or a blob is missing or corrupt"
                    ),
                    fixed,
                });
            }
        }
        Ok(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// SPEC §9: without --fix, store-check changes nothing (the old check emptied ingest/).
    #[test]
    fn a_check_without_fix_changes_nothing_and_with_fix_removes_strays() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        fs::write(dir.path().join("ingest/abc.1.partial"), "part").unwrap();
        fs::write(dir.path().join("blobs/sha256/not-a-digest"), "x").unwrap();
        let store = Store::open_existing(dir.path()).unwrap();
        let problems = store.check(false, &|_| false).unwrap();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems.iter().all(|p| !p.fixed));
        assert!(dir.path().join("ingest/abc.1.partial").exists());
        assert!(dir.path().join("blobs/sha256/not-a-digest").exists());
        let problems = store.check(true, &|_| false).unwrap();
        assert!(problems.iter().all(|p| p.fixed), "{problems:?}");
        assert!(!dir.path().join("ingest/abc.1.partial").exists());
    }

    /// A partial blob a stopped run kept (`<hex>.resume`) survives the next open and is not
    /// a problem; anything else in ingest/ is a leftover and goes at open.
    #[test]
    fn a_kept_partial_blob_survives_and_is_not_a_stray() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let kept = format!("{}.resume", "ab".repeat(32));
        fs::write(dir.path().join("ingest").join(&kept), "part").unwrap();
        fs::write(dir.path().join("ingest/zz.resume"), "x").unwrap();
        fs::write(dir.path().join("ingest/abc.1.partial"), "part").unwrap();
        drop(Store::open(dir.path()).unwrap());
        assert!(dir.path().join("ingest").join(&kept).exists());
        assert!(!dir.path().join("ingest/zz.resume").exists());
        assert!(!dir.path().join("ingest/abc.1.partial").exists());
        let store = Store::open_existing(dir.path()).unwrap();
        assert!(store.check(false, &|_| false).unwrap().is_empty());
    }

    #[test]
    fn a_missing_store_is_an_error_and_is_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let typo = dir.path().join("imgaes");
        let e = Store::open_existing(&typo).unwrap_err();
        assert!(e.to_string().contains("no image store"), "{e}");
        assert!(!typo.exists());
        let e = Store::open_existing(dir.path()).unwrap_err();
        assert!(e.to_string().contains("not an image store"), "{e}");
    }
}
