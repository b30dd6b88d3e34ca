//! Content digests (`sha256:<64 hex>`, `sha512:<128 hex>`): a [`Digest`] can hold nothing else,
//! so a digest that reaches a file name, from a registry or read back from disk, is safe as one.

use std::fmt;
use std::str::FromStr;

use ring::digest as ring_digest;

/// The digest algorithms the agent verifies. Anything else is refused where it is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }

    fn ring(self) -> &'static ring_digest::Algorithm {
        match self {
            Algorithm::Sha256 => &ring_digest::SHA256,
            Algorithm::Sha512 => &ring_digest::SHA512,
        }
    }

    fn from_name(name: &str) -> Option<Algorithm> {
        match name {
            "sha256" => Some(Algorithm::Sha256),
            "sha512" => Some(Algorithm::Sha512),
            _ => None,
        }
    }

    /// A streaming hash of this algorithm.
    pub fn hasher(self) -> Hasher {
        Hasher {
            ctx: ring_digest::Context::new(self.ring()),
            alg: self,
        }
    }
}

/// Why a string is not a [`Digest`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error(
        "digest {0:?} uses the algorithm {1:?}, which is not supported (only sha256 and sha512 are verified)"
    )]
    Algorithm(String, String),
    #[error(
        "invalid digest {0:?}: the form is sha256:<64 lower-case hex digits> or sha512:<128 lower-case hex digits>"
    )]
    Malformed(String),
}

/// A validated digest. Its text form is exactly what it was parsed from.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    pub fn parse(s: &str) -> Result<Digest, DigestError> {
        // Shown in errors: keep a hostile value short and printable.
        let shown = || s.chars().take(160).collect::<String>();
        let Some((alg, hex)) = s.split_once(':') else {
            return Err(DigestError::Malformed(shown()));
        };
        let Some(a) = Algorithm::from_name(alg) else {
            let known = alg.len() <= 16 && alg.bytes().all(|b| b.is_ascii_alphanumeric());
            return Err(if known {
                DigestError::Algorithm(shown(), alg.to_string())
            } else {
                DigestError::Malformed(shown())
            });
        };
        let hex_ok = hex.len() == a.hex_len()
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hex_ok {
            return Err(DigestError::Malformed(shown()));
        }
        Ok(Digest(s.to_string()))
    }

    /// The digest of `bytes` with `alg`.
    pub fn of(alg: Algorithm, bytes: &[u8]) -> Digest {
        let mut h = alg.hasher();
        h.update(bytes);
        h.finish()
    }

    pub fn sha256(bytes: &[u8]) -> Digest {
        Digest::of(Algorithm::Sha256, bytes)
    }

    /// Hashes `bytes` with this digest's algorithm: `Ok` if they match, else the actual digest.
    pub fn verify(&self, bytes: &[u8]) -> Result<(), Digest> {
        let actual = Digest::of(self.algorithm(), bytes);
        if &actual == self { Ok(()) } else { Err(actual) }
    }

    pub fn algorithm(&self) -> Algorithm {
        if self.0.starts_with("sha512:") {
            Algorithm::Sha512
        } else {
            Algorithm::Sha256
        }
    }

    /// The hex part: a safe file name.
    pub fn hex(&self) -> &str {
        &self.0[self.algorithm().name().len() + 1..]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Digest, DigestError> {
        Digest::parse(s)
    }
}

impl PartialEq<str> for Digest {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A streaming hash that ends in a [`Digest`].
pub struct Hasher {
    ctx: ring_digest::Context,
    alg: Algorithm,
}

impl Hasher {
    pub fn update(&mut self, bytes: &[u8]) {
        self.ctx.update(bytes);
    }

    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    pub fn finish(self) -> Digest {
        let d = self.ctx.finish();
        let mut s = String::with_capacity(7 + d.as_ref().len() * 2);
        s.push_str(self.alg.name());
        s.push(':');
        for b in d.as_ref() {
            use std::fmt::Write as _;
            let _ = write!(s, "{b:02x}");
        }
        Digest(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sha256_and_sha512_in_canonical_form_are_digests() {
        let ok256 = format!("sha256:{}", "a".repeat(64));
        let ok512 = format!("sha512:{}", "0".repeat(128));
        assert_eq!(Digest::parse(&ok256).unwrap().hex(), "a".repeat(64));
        assert_eq!(
            Digest::parse(&ok512).unwrap().algorithm(),
            Algorithm::Sha512
        );
        for bad in [
            "sha256:../../../../dev/zero".to_string(),
            format!("sha256:{}", "A".repeat(64)),
            format!("sha256:{}", "a".repeat(63)),
            format!("sha256:{}/x", "a".repeat(62)),
            format!("sha512:{}", "a".repeat(64)),
            format!("sha256:{}\n", "a".repeat(64)),
            String::new(),
            "sha256".into(),
        ] {
            assert!(
                matches!(Digest::parse(&bad), Err(DigestError::Malformed(_))),
                "{bad:?}"
            );
        }
        let e = Digest::parse(&format!("sha384:{}", "a".repeat(96))).unwrap_err();
        assert!(matches!(&e, DigestError::Algorithm(_, a) if a == "sha384"));
        assert!(e.to_string().contains("sha384"), "{e}");
        assert!(Digest::parse(&format!("md5:{}", "a".repeat(32))).is_err());
    }

    #[test]
    fn each_algorithm_hashes_with_its_own_function() {
        assert_eq!(
            Digest::sha256(b"abc").as_str(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let d512 = Digest::of(Algorithm::Sha512, b"abc");
        assert!(d512.as_str().starts_with("sha512:ddaf35a193617aba"));
        assert_eq!(d512.verify(b"abc"), Ok(()));
        assert_eq!(
            d512.verify(b"abd").unwrap_err().algorithm(),
            Algorithm::Sha512
        );
    }

    #[test]
    fn deserializing_validates() {
        let good = format!("\"sha256:{}\"", "b".repeat(64));
        assert!(serde_json::from_str::<Digest>(&good).is_ok());
        assert!(serde_json::from_str::<Digest>("\"sha256:../../x\"").is_err());
    }
}
