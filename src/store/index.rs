//! `index.json`: the store's list of images, one descriptor per reference name
//! (`org.opencontainers.image.ref.name`). Entries are read as typed descriptors; an entry
//! that is not one (a digest that is not a digest, say) is reported as invalid and never
//! becomes a path. Keys the agent does not know, on the index or its entries, are kept.

use std::io::{self, ErrorKind};
use std::path::Path;

use serde_json::{Value, json};

use crate::oci::manifest::{Descriptor, OCI_INDEX};

pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// What the reference resolved to at the registry (the index for a multi-platform image):
/// lets a later pull of a tag decide "present" from a HEAD request alone.
pub const RESOLVED: &str = "com.ksyun.kci.resolved-digest";

/// The digest a stored image's reference resolved to at the registry ([`RESOLVED`]), as
/// written; `None` for an entry without one.
pub fn resolved_of(d: &Descriptor) -> Option<&str> {
    d.annotations.as_ref()?.get(RESOLVED)?.as_str()
}

/// A parsed `index.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Index {
    /// The whole document, checked to be an object with a `manifests` array.
    doc: Value,
}

/// One entry: its reference name (if any) and its descriptor, or why it is not one.
pub struct Entry {
    pub name: Option<String>,
    pub descriptor: Result<Descriptor, String>,
}

impl Index {
    /// An index with no images.
    pub fn empty() -> Index {
        Index {
            doc: json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}),
        }
    }

    /// Parses `bytes` read from `path` (named in errors, with what to do).
    pub fn parse(bytes: &[u8], path: &Path) -> io::Result<Index> {
        let doc: Value = serde_json::from_slice(bytes).map_err(|e| {
            io::Error::new(
                ErrorKind::InvalidData,
                format!(
                    "{} is not valid JSON ({e}); move it aside to start a fresh index",
                    path.display()
                ),
            )
        })?;
        if !doc.get("manifests").is_some_and(Value::is_array) {
            return Err(io::Error::new(
                ErrorKind::InvalidData,
                format!("{} has no manifests array", path.display()),
            ));
        }
        Ok(Index { doc })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(&self.doc).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }

    fn manifests(&self) -> &[Value] {
        self.doc["manifests"].as_array().map_or(&[], Vec::as_slice)
    }

    fn manifests_mut(&mut self) -> &mut Vec<Value> {
        self.doc["manifests"]
            .as_array_mut()
            .expect("checked when parsed")
    }

    /// Every entry, in order.
    pub fn entries(&self) -> impl Iterator<Item = Entry> + '_ {
        self.manifests().iter().map(|m| Entry {
            name: name_of(m).map(str::to_string),
            descriptor: serde_json::from_value(m.clone()).map_err(|e| e.to_string()),
        })
    }

    /// The entry of a reference name.
    pub fn find(&self, name: &str) -> Option<Entry> {
        self.entries().find(|e| e.name.as_deref() == Some(name))
    }

    /// Replaces the entry of `d`'s reference name, or adds it.
    pub fn set(&mut self, d: &Descriptor) -> io::Result<()> {
        let value = serde_json::to_value(d)?;
        let name = d
            .annotations
            .as_ref()
            .and_then(|a| a.get(REF_NAME))
            .and_then(Value::as_str)
            .map(str::to_string);
        let manifests = self.manifests_mut();
        match manifests
            .iter_mut()
            .find(|m| name.is_some() && name_of(m) == name.as_deref())
        {
            Some(slot) => *slot = value,
            None => manifests.push(value),
        }
        Ok(())
    }

    /// Removes the entries of these reference names.
    pub fn remove(&mut self, names: &[String]) {
        self.manifests_mut()
            .retain(|m| !names.iter().any(|n| name_of(m) == Some(n.as_str())));
    }
}

fn name_of(m: &Value) -> Option<&str> {
    m.get("annotations")?.get(REF_NAME)?.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_typed_invalid_ones_reported_unknown_keys_kept() {
        let text = format!(
            r#"{{"schemaVersion":2,"x-extra":1,"manifests":[
                {{"mediaType":"m","digest":"sha256:{}","size":3,"annotations":{{"{REF_NAME}":"a"}},"artifactType":"t"}},
                {{"mediaType":"m","digest":"sha256:../../dev/zero","size":1,"annotations":{{"{REF_NAME}":"b"}}}}]}}"#,
            "1".repeat(64)
        );
        let mut idx = Index::parse(text.as_bytes(), Path::new("index.json")).unwrap();
        assert_eq!(idx.find("a").unwrap().descriptor.unwrap().size, 3);
        let bad = idx.find("b").unwrap().descriptor.unwrap_err();
        assert!(bad.contains("invalid digest"), "{bad}");
        idx.remove(&["b".to_string()]);
        let out = String::from_utf8(idx.to_bytes()).unwrap();
        assert!(
            out.contains("x-extra") && out.contains("artifactType"),
            "{out}"
        );
        assert!(!out.contains("dev/zero"));
        assert!(Index::parse(b"{}", Path::new("i")).is_err());
        assert!(
            Index::parse(b"nope", Path::new("i"))
                .unwrap_err()
                .to_string()
                .contains("move it aside")
        );
    }
}
