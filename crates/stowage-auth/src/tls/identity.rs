//! The identity an end-entity certificate carries.

use std::fmt;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Why a certificate's identity could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CertParseError {
    /// The bytes are not a DER X.509 certificate.
    #[error("not a DER X.509 certificate: {0}")]
    Der(String),
    /// The subject alternative name extension is malformed or repeated.
    #[error("malformed subjectAltName extension: {0}")]
    SubjectAltName(String),
    /// Bytes follow the certificate.
    #[error("{0} trailing bytes after the certificate")]
    TrailingBytes(usize),
}

/// What an end-entity certificate says about its holder.
///
/// Only the subject alternative names are used for matching ([`CertIdentity::matches`]);
/// the common name is recorded for logs and audit only.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CertIdentity {
    /// DNS subject alternative names, as written in the certificate.
    pub dns: Vec<String>,
    /// URI subject alternative names (e.g. SPIFFE ids such as `spiffe://stowage/site-a`).
    pub uris: Vec<String>,
    /// The subject's first common name, if any and if it is valid text.
    pub common_name: Option<String>,
}

impl CertIdentity {
    /// Reads the identity of a DER end-entity certificate.
    ///
    /// This does not verify anything: call it on certificates a verifier has accepted.
    pub fn from_der(der: &[u8]) -> Result<Self, CertParseError> {
        let (rest, cert) =
            X509Certificate::from_der(der).map_err(|e| CertParseError::Der(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CertParseError::TrailingBytes(rest.len()));
        }
        let mut identity = CertIdentity {
            common_name: cert
                .subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .map(str::to_owned),
            ..CertIdentity::default()
        };
        let san = cert
            .subject_alternative_name()
            .map_err(|e| CertParseError::SubjectAltName(e.to_string()))?;
        if let Some(san) = san {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(dns) => identity.dns.push((*dns).to_owned()),
                    GeneralName::URI(uri) => identity.uris.push((*uri).to_owned()),
                    _ => {}
                }
            }
        }
        Ok(identity)
    }

    /// Whether the certificate is valid for `expected`.
    ///
    /// `expected` is either a URI (it contains `:`, e.g. `spiffe://stowage/site-a`), matched
    /// exactly against the URI SANs, or a DNS name, matched ASCII-case-insensitively and
    /// exactly (no wildcards) against the DNS SANs. The common name is never used.
    pub fn matches(&self, expected: &str) -> bool {
        if expected.is_empty() {
            return false;
        }
        if is_uri(expected) {
            self.uris.iter().any(|uri| uri == expected)
        } else {
            self.dns
                .iter()
                .any(|dns| dns.eq_ignore_ascii_case(expected))
        }
    }
}

/// A DNS name never contains `:`; every URI has a scheme followed by `:`.
pub(crate) fn is_uri(expected: &str) -> bool {
    expected.contains(':')
}

/// Whether `expected` is usable as an expected identity: a URI with a scheme, or a DNS name.
pub(crate) fn is_valid_expected(expected: &str) -> bool {
    if expected.is_empty()
        || expected
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return false;
    }
    if is_uri(expected) {
        match expected.split_once(':') {
            Some((scheme, rest)) => {
                !rest.is_empty()
                    && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                    && scheme
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
            }
            None => false,
        }
    } else {
        rustls_pki_types::DnsName::try_from(expected).is_ok()
    }
}

impl fmt::Display for CertIdentity {
    /// A short text for logs and audit, e.g. `uri=spiffe://stowage/site-a dns=localhost`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut item = |f: &mut fmt::Formatter<'_>, key: &str, value: &str| {
            let sep = if first { "" } else { " " };
            first = false;
            write!(f, "{sep}{key}={value}")
        };
        for uri in &self.uris {
            item(f, "uri", uri)?;
        }
        for dns in &self.dns {
            item(f, "dns", dns)?;
        }
        if let Some(cn) = &self.common_name {
            item(f, "cn", cn)?;
        }
        if first {
            f.write_str("(no names)")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn cert(sans: &[rcgen::SanType], cn: Option<&str>) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = sans.to_vec();
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn reads_sans_and_cn() {
        let der = cert(
            &[
                rcgen::SanType::DnsName("Registry.Example".try_into().unwrap()),
                rcgen::SanType::URI("spiffe://stowage/site-a".try_into().unwrap()),
                rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()),
            ],
            Some("site-a"),
        );
        let id = CertIdentity::from_der(&der).unwrap();
        assert_eq!(id.dns, vec!["Registry.Example".to_owned()]);
        assert_eq!(id.uris, vec!["spiffe://stowage/site-a".to_owned()]);
        assert_eq!(id.common_name.as_deref(), Some("site-a"));
        assert_eq!(
            id.to_string(),
            "uri=spiffe://stowage/site-a dns=Registry.Example cn=site-a"
        );

        assert!(id.matches("registry.example"));
        assert!(id.matches("REGISTRY.EXAMPLE"));
        assert!(id.matches("spiffe://stowage/site-a"));
        assert!(!id.matches("spiffe://stowage/site-b"));
        assert!(!id.matches("spiffe://stowage/site-a/"));
        assert!(!id.matches("SPIFFE://stowage/site-a"), "URIs match exactly");
        assert!(!id.matches("site-a"), "the common name is never matched");
        assert!(!id.matches("other.example"));
        assert!(!id.matches("127.0.0.1"), "IP SANs are not identities here");
        assert!(!id.matches(""));
    }

    #[test]
    fn no_names() {
        let id = CertIdentity::from_der(&cert(&[], None)).unwrap();
        assert_eq!(id, CertIdentity::default());
        assert_eq!(id.to_string(), "(no names)");
        assert!(!id.matches("localhost"));
    }

    #[test]
    fn rejects_garbage_and_trailing_bytes() {
        assert!(matches!(
            CertIdentity::from_der(b"not a certificate"),
            Err(CertParseError::Der(_))
        ));
        let mut der = cert(&[], Some("x"));
        der.extend_from_slice(b"junk");
        assert!(matches!(
            CertIdentity::from_der(&der),
            Err(CertParseError::TrailingBytes(4))
        ));
    }

    #[test]
    fn expected_identity_syntax() {
        assert!(is_valid_expected("localhost"));
        assert!(is_valid_expected("peer.example.org"));
        assert!(is_valid_expected("spiffe://stowage/site-a"));
        assert!(!is_valid_expected(""));
        assert!(!is_valid_expected("two words"));
        assert!(!is_valid_expected("://no-scheme"));
        assert!(!is_valid_expected("spiffe:"));
        assert!(!is_valid_expected("bad_dns!name"));
    }
}
