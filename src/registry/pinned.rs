//! A registry's own self-signed certificate as a trust anchor (SPEC §11). `openssl req -x509`
//! makes `CA:TRUE` certificates; put in `certs.d/<host[:port]>/` and presented by the registry
//! itself, webpki refuses them (`CaUsedAsEndEntity`) where Go's crypto/x509, curl and
//! containerd accept them. The rule is narrow: the server's certificate must be byte-identical
//! to a configured anchor, name the host and be within its validity period; every other
//! certificate goes through webpki unchanged. The same verifier, without anchors, is the
//! `kci-insecure-registry` check (any certificate, the handshake signature still verified).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{WebPkiServerVerifier, verify_server_name};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{DigitallySignedStruct, SignatureScheme};

/// The certificate check of the two TLS transports that are not plain webpki: any
/// certificate (`kci-insecure-registry`; `pinned` is `None`), or webpki then the configured
/// anchors taken as they are. Either way the server must hold the key of the certificate it
/// presented (the handshake signature is verified).
#[derive(Debug)]
pub struct Verifier {
    pub provider: Arc<CryptoProvider>,
    pub pinned: Option<Pinned>,
}

/// webpki, and the anchors a registry's own certificate may be.
#[derive(Debug)]
pub struct Pinned {
    pub webpki: Arc<WebPkiServerVerifier>,
    pub anchors: Vec<CertificateDer<'static>>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(p) = &self.pinned else {
            return Ok(ServerCertVerified::assertion());
        };
        let refused =
            match p
                .webpki
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            {
                Ok(ok) => return Ok(ok),
                Err(e) => e,
            };
        if !p.anchors.iter().any(|a| a.as_ref() == end_entity.as_ref()) {
            return Err(refused);
        }
        // The anchor itself: it must still name the host and be valid now.
        verify_server_name(&ParsedCertificate::try_from(end_entity)?, server_name)?;
        match validity(end_entity.as_ref()) {
            Some((from, until)) if from <= now.as_secs() && now.as_secs() <= until => {
                Ok(ServerCertVerified::assertion())
            }
            Some(_) => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Expired,
            )),
            None => Err(refused),
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// One DER element: (tag, content, rest).
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, &b| (a << 8) | b as usize);
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// A certificate's validity period (notBefore, notAfter) in Unix seconds.
fn validity(cert: &[u8]) -> Option<(u64, u64)> {
    let (_, certificate, _) = der(cert)?;
    let (_, mut tbs, _) = der(certificate)?;
    // [0] version (optional), serial, signature algorithm, issuer, then validity.
    let (tag, _, rest) = der(tbs)?;
    if tag == 0xa0 {
        tbs = rest;
    }
    for _ in 0..3 {
        tbs = der(tbs)?.2;
    }
    let (_, period, _) = der(tbs)?;
    let (t1, from, rest) = der(period)?;
    let (t2, until, _) = der(rest)?;
    Some((time(t1, from)?, time(t2, until)?))
}

/// UTCTime (`YYMMDDHHMMSSZ`, 0x17) or GeneralizedTime (`YYYYMMDDHHMMSSZ`, 0x18) to Unix seconds.
fn time(tag: u8, text: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(text).ok()?.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 if text.len() == 12 => {
            let yy: i64 = text[..2].parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &text[2..])
        }
        0x18 if text.len() == 14 => (text[..4].parse().ok()?, &text[4..]),
        _ => return None,
    };
    let n = |i: usize| rest.get(i..i + 2)?.parse::<i64>().ok();
    let (month, day, h, m, s) = (n(0)?, n(2)?, n(4)?, n(6)?, n(8)?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + h * 3600 + m * 60 + s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asn1_times_to_unix_seconds() {
        assert_eq!(time(0x17, b"700101000000Z"), Some(0));
        assert_eq!(time(0x17, b"261204093000Z"), Some(1_796_376_600));
        assert_eq!(time(0x18, b"20261204093000Z"), Some(1_796_376_600));
        assert_eq!(time(0x18, b"99991231235959Z"), Some(253_402_300_799));
        assert_eq!(time(0x17, b"2612040930Z"), None);
        assert_eq!(time(0x17, b"261204093000+0100"), None);
    }
}
