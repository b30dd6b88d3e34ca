//! `--platform os/arch[/variant]`, and the choice of a manifest for it from an index.

use std::fmt;
use std::str::FromStr;

use super::manifest::{DOCKER_MANIFEST, Descriptor, OCI_MANIFEST};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split('/').collect();
        if !(2..=3).contains(&parts.len()) {
            return Err(format!(
                "{s:?} is not os/arch[/variant], e.g. linux/amd64 or linux/arm64/v8"
            ));
        }
        for p in &parts {
            let ok = !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !ok {
                return Err(format!(
                    "{s:?}: {p:?} must be lower-case letters, digits or '_' (e.g. linux/amd64)"
                ));
            }
        }
        Ok(Platform {
            os: parts[0].to_string(),
            architecture: parts[1].to_string(),
            variant: parts.get(2).map(|v| v.to_string()),
        })
    }
}

impl Platform {
    /// This machine's platform in OCI terms (Go's GOOS/GOARCH names).
    pub fn host() -> Platform {
        let (arch, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "x86" => ("386", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            "loongarch64" => ("loong64", None),
            other => (other, None),
        };
        Platform {
            os: std::env::consts::OS.to_string(),
            architecture: arch.to_string(),
            variant: variant.map(str::to_string),
        }
    }
}

/// The architecture's default variant, as containerd normalises it.
fn default_variant(arch: &str) -> Option<&'static str> {
    match arch {
        "arm64" => Some("v8"),
        "arm" => Some("v7"),
        _ => None,
    }
}

/// Picks the manifest for `want` from an index: os and architecture must match; a variant
/// asked for must match (an absent variant counts as the architecture's default, so
/// `linux/arm64` is `linux/arm64/v8`). Attestation manifests (`unknown/unknown`) never match.
pub fn choose<'a>(manifests: &'a [Descriptor], want: &Platform) -> Option<&'a Descriptor> {
    let want_variant = want
        .variant
        .as_deref()
        .or_else(|| default_variant(&want.architecture));
    let candidates = manifests.iter().filter(|d| {
        d.platform
            .as_ref()
            .is_some_and(|p| p.os == want.os && p.architecture == want.architecture)
            && (d.media_type == OCI_MANIFEST || d.media_type == DOCKER_MANIFEST)
    });
    let mut fallback = None;
    for d in candidates {
        let p = d.platform.as_ref().expect("filtered");
        let variant = p
            .variant
            .as_deref()
            .or_else(|| default_variant(&p.architecture));
        if variant == want_variant {
            return Some(d);
        }
        // Nothing asked for and the architecture has no default: any variant will do.
        if want_variant.is_none() && fallback.is_none() {
            fallback = Some(d);
        }
    }
    fallback
}

/// The platforms an index offers, for an error message.
pub fn offered(manifests: &[Descriptor]) -> String {
    let list: Vec<String> = manifests
        .iter()
        .filter_map(|d| d.platform.as_ref())
        .map(|p| match &p.variant {
            Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
            None => format!("{}/{}", p.os, p.architecture),
        })
        .collect();
    if list.is_empty() {
        "none".into()
    } else {
        list.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Digest;
    use crate::oci::manifest::PlatformJson;

    fn desc(os: &str, arch: &str, variant: Option<&str>, n: u8) -> Descriptor {
        Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: Digest::parse(&format!("sha256:{}", format!("{n:02x}").repeat(32))).unwrap(),
            size: 1,
            platform: Some(PlatformJson {
                os: os.into(),
                architecture: arch.into(),
                variant: variant.map(str::to_string),
                os_version: None,
            }),
            annotations: None,
            urls: None,
        }
    }

    fn pick(list: &[Descriptor], want: &str) -> Option<u8> {
        let want: Platform = want.parse().unwrap();
        choose(list, &want).map(|d| u8::from_str_radix(&d.digest.hex()[..2], 16).unwrap())
    }

    #[test]
    fn platform_table() {
        let list = vec![
            desc("unknown", "unknown", None, 0),
            desc("linux", "amd64", None, 1),
            desc("linux", "arm", Some("v6"), 2),
            desc("linux", "arm", Some("v7"), 3),
            desc("linux", "arm64", None, 4),
            desc("windows", "amd64", None, 5),
            desc("linux", "ppc64le", None, 6),
        ];
        assert_eq!(pick(&list, "linux/amd64"), Some(1));
        assert_eq!(pick(&list, "linux/arm/v6"), Some(2));
        assert_eq!(pick(&list, "linux/arm/v7"), Some(3));
        assert_eq!(pick(&list, "linux/arm"), Some(3), "arm means arm/v7");
        assert_eq!(pick(&list, "linux/arm64"), Some(4));
        assert_eq!(
            pick(&list, "linux/arm64/v8"),
            Some(4),
            "absent variant is v8"
        );
        assert_eq!(pick(&list, "linux/arm64/v9"), None);
        assert_eq!(pick(&list, "windows/amd64"), Some(5));
        assert_eq!(pick(&list, "linux/s390x"), None);
        let only_v6 = vec![desc("linux", "arm", Some("v6"), 2)];
        assert_eq!(
            pick(&only_v6, "linux/arm"),
            None,
            "arm/v7 wanted, v6 offered"
        );
        let amd_variants = vec![desc("linux", "amd64", Some("v3"), 7)];
        assert_eq!(pick(&amd_variants, "linux/amd64"), Some(7));
        assert_eq!(pick(&amd_variants, "linux/amd64/v2"), None);
        assert!(offered(&list).contains("linux/arm/v7"));
    }

    #[test]
    fn parses() {
        assert_eq!(
            "linux/arm64/v8".parse::<Platform>().unwrap().to_string(),
            "linux/arm64/v8"
        );
        assert_eq!(
            "linux/amd64".parse::<Platform>().unwrap(),
            Platform {
                os: "linux".into(),
                architecture: "amd64".into(),
                variant: None
            }
        );
        for bad in [
            "linux",
            "linux/",
            "/amd64",
            "linux/amd64/v8/x",
            "Linux/amd64",
            "linux/amd 64",
        ] {
            assert!(bad.parse::<Platform>().is_err(), "{bad}");
        }
        assert_eq!(Platform::host().os, "linux");
    }
}
