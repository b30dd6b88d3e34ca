//! Image references, normalised by the Docker reference grammar
//! (`distribution/reference`: `ParseNormalizedNamed`), with bracketed IPv6 registries.

use std::fmt;

use super::host::{DOCKER_HUB, Host, RegistryHost};
use crate::oci::Digest;

/// The longest name (registry and repository) the grammar allows.
const NAME_MAX: usize = 255;
const TAG_MAX: usize = 128;

/// A fully normalised image reference. A digest, when present, wins over a tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    pub registry: RegistryHost,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        match (&self.digest, &self.tag) {
            (Some(d), _) => write!(f, "@{d}"),
            (None, Some(t)) => write!(f, ":{t}"),
            (None, None) => Ok(()),
        }
    }
}

impl Reference {
    /// Parses and normalises: `nginx` is `docker.io/library/nginx:latest`; the first path
    /// component is a registry only if it contains `.` or `:` or is `localhost`; a digest
    /// wins over a tag; upper case in the repository is an error.
    pub fn parse(input: &str) -> Result<Reference, String> {
        if input.is_empty() {
            return Err("the image reference is empty".into());
        }
        if let Some(c) = input.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("the image reference contains {c:?}"));
        }
        if let Some((scheme, _)) = input.split_once("://") {
            return Err(format!(
                "image references have no scheme; remove {:?}",
                format!("{scheme}://")
            ));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((n, d)) => (n, Some(Digest::parse(d).map_err(|e| e.to_string())?)),
            None => (input, None),
        };
        // A tag is a ':' after the last '/': earlier colons belong to a registry port.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let at = last_slash + i;
                (&rest[..at], Some(check_tag(&rest[at + 1..])?))
            }
            None => (rest, None),
        };
        let (registry, mut repository) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                let reg =
                    RegistryHost::parse(first).map_err(|e| format!("registry {first:?}: {e}"))?;
                (reg, path.to_string())
            }
            _ => (
                RegistryHost {
                    host: Host::Name(DOCKER_HUB.to_string()),
                    port: None,
                },
                name.to_string(),
            ),
        };
        if registry.is_docker_hub() && !repository.contains('/') {
            repository = format!("library/{repository}");
        }
        check_repository(&repository)?;
        let full = registry.to_string().len() + 1 + repository.len();
        if full > NAME_MAX {
            return Err(format!(
                "the image name is {full} characters long; at most {NAME_MAX} are allowed"
            ));
        }
        let tag = if digest.is_some() {
            None
        } else {
            Some(tag.unwrap_or_else(|| "latest".to_string()))
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

fn check_repository(repo: &str) -> Result<(), String> {
    if repo.is_empty() {
        return Err("the repository name is empty".into());
    }
    if repo.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(format!(
            "repository {repo:?} contains upper case; repository names must be lower case"
        ));
    }
    for comp in repo.split('/') {
        if !is_path_component(comp) {
            return Err(format!(
                "repository {repo:?}: component {comp:?} is not valid; a component is \
                 lower-case letters and digits, separated by '.', '_', '__' or dashes"
            ));
        }
    }
    Ok(())
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
fn is_path_component(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let b = c.as_bytes();
    let mut i = 0;
    loop {
        let start = i;
        while i < b.len() && alnum(b[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == b.len() {
            return true;
        }
        let sep_start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[sep_start..i];
        let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
}

fn check_tag(t: &str) -> Result<String, String> {
    let valid = !t.is_empty()
        && t.len() <= TAG_MAX
        && t.bytes().enumerate().all(|(i, b)| {
            b.is_ascii_alphanumeric() || b == b'_' || (i > 0 && (b == b'.' || b == b'-'))
        });
    if valid {
        Ok(t.to_string())
    } else {
        Err(format!(
            "tag {t:?} is not valid; a tag is up to 128 letters, digits, '_', '.' and '-', \
             not starting with '.' or '-'"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn norm(s: &str) -> String {
        match Reference::parse(s) {
            Ok(r) => r.to_string(),
            Err(e) => format!("ERR {e}"),
        }
    }

    #[test]
    fn normalisation_table() {
        let d = D;
        let cases: Vec<(String, String)> = vec![
            ("nginx".into(), "docker.io/library/nginx:latest".into()),
            ("nginx:1.25".into(), "docker.io/library/nginx:1.25".into()),
            (
                "library/nginx".into(),
                "docker.io/library/nginx:latest".into(),
            ),
            (
                "docker.io/nginx".into(),
                "docker.io/library/nginx:latest".into(),
            ),
            (
                "index.docker.io/nginx".into(),
                "docker.io/library/nginx:latest".into(),
            ),
            (
                "docker.io/bitnami/redis:7".into(),
                "docker.io/bitnami/redis:7".into(),
            ),
            ("user/app".into(), "docker.io/user/app:latest".into()),
            ("localhost/app".into(), "localhost/app:latest".into()),
            (
                "localhost:5000/app:v1".into(),
                "localhost:5000/app:v1".into(),
            ),
            (
                "192.168.1.10:5000/app:v1".into(),
                "192.168.1.10:5000/app:v1".into(),
            ),
            (
                "Harbor.Example.com/app:v1".into(),
                "harbor.example.com/app:v1".into(),
            ),
            (
                "harbor.example.com:8443/proj/app".into(),
                "harbor.example.com:8443/proj/app:latest".into(),
            ),
            ("[::1]:5000/app:v1".into(), "[::1]:5000/app:v1".into()),
            ("[::1]/app".into(), "[::1]/app:latest".into()),
            (
                "[2001:db8::1]:5000/a/b/c:tag".into(),
                "[2001:db8::1]:5000/a/b/c:tag".into(),
            ),
            (format!("nginx@{d}"), format!("docker.io/library/nginx@{d}")),
            (format!("reg.io/app:v1@{d}"), format!("reg.io/app@{d}")),
            (
                "reg.io/a.b/c_d/e__f/g---h:V1.0-rc_1".into(),
                "reg.io/a.b/c_d/e__f/g---h:V1.0-rc_1".into(),
            ),
            (
                "evil.io/harbor.example.com/x".into(),
                "evil.io/harbor.example.com/x:latest".into(),
            ),
            (
                "registry-1.docker.io/library/nginx".into(),
                "registry-1.docker.io/library/nginx:latest".into(),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(norm(&input), want, "{input}");
        }
        let r = Reference::parse("evil.io/harbor.example.com/x").unwrap();
        assert_eq!(r.registry.to_string(), "evil.io");
        let r = Reference::parse("harbor.example.com.evil.io/x").unwrap();
        assert_eq!(r.registry.to_string(), "harbor.example.com.evil.io");
    }

    #[test]
    fn rejection_table() {
        let cases = [
            ("", "empty"),
            ("Nginx", "upper case"),
            ("Foo/bar", "upper case"),
            ("reg.io/App", "upper case"),
            ("reg.io/app:", "tag \"\""),
            ("reg.io/app:-x", "tag"),
            ("reg.io/app:.x", "tag"),
            ("nginx@sha256:abc", "64"),
            ("nginx@md5:0123456789abcdef0123456789abcdef", "algorithm"),
            ("nginx@sha256", "form"),
            (
                "nginx@sha384:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "\"sha384\", which is not supported",
            ),
            (
                "nginx@SHA256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "algorithm",
            ),
            ("reg.io//app", "component"),
            ("reg.io/app/", "component"),
            ("reg.io/-app", "component"),
            ("reg.io/a..b", "component"),
            ("reg.io/a___b", "component"),
            ("reg.io:0/app", "port"),
            ("reg.io:99999/app", "port"),
            ("::1:5000/app", "registry"),
            ("reg io/app", "' '"),
            ("reg.io/app\n", "'\\n'"),
            ("reg_x.io/app", "'_'"),
            ("https://reg.io/app", "remove \"https://\""),
        ];
        for (input, want) in cases {
            let got = norm(input);
            assert!(
                got.starts_with("ERR") && got.contains(want),
                "{input:?}: {got}"
            );
        }
        let long = format!("reg.io/{}", "a".repeat(250));
        assert!(norm(&long).contains("at most 255"));
        let long_tag = format!("reg.io/app:{}", "a".repeat(129));
        assert!(norm(&long_tag).starts_with("ERR"));
    }
}
