//! TLS for every listener, and the client side used to reach peers.
//!
//! * [`ReloadableTls`]: the server configuration of one listener, built from a certificate,
//!   its key and (for client certificates) a CA bundle; [`ReloadableTls::reload`] and
//!   [`ReloadableTls::spawn_watcher`] swap in new files without touching live connections.
//! * [`CertIdentity`]: what an end-entity certificate says about its holder (DNS and URI
//!   subject alternative names), recorded for every verified client certificate.
//! * [`client_config`] and [`PeerConnector`]: a client configuration that can pin a peer to
//!   an expected identity (DNS name or URI such as `spiffe://stowage/site-a`) instead of its
//!   host name, and a connector that tonic channels use to dial peers over it.
//!
//! Every configuration is built with the aws-lc-rs provider explicitly ([`crypto_provider`]):
//! the workspace compiles both rustls providers, so the process default is never relied on.
//!
//! Errors name the file and what was wrong with it; they never contain key material (PEM
//! parse errors are reduced to a fixed description for that reason).

mod client;
mod identity;
mod server;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub use client::{client_config, PeerConnectError, PeerConnector};
pub use identity::{CertIdentity, CertParseError};
pub use server::{ClientAuth, ReloadableTls, TlsFiles};

/// ALPN protocol id of HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN protocol id of HTTP/1.1.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// ALPN list for an HTTP listener that serves both HTTP/2 and HTTP/1.1 (preferring h2).
pub fn alpn_http() -> Vec<Vec<u8>> {
    vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()]
}

/// ALPN list for gRPC (HTTP/2 only), on both the listener and the peer client.
pub fn alpn_grpc() -> Vec<Vec<u8>> {
    vec![ALPN_H2.to_vec()]
}

/// The crypto provider every configuration of this crate is built with (aws-lc-rs).
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Which file of a TLS configuration an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileRole {
    /// The listener's certificate chain.
    Certificate,
    /// The listener's private key.
    PrivateKey,
    /// The CA bundle client certificates are verified against.
    ClientCa,
    /// The CA bundle a peer's server certificate is verified against.
    ServerCa,
    /// The certificate chain this process presents to peers.
    ClientCertificate,
    /// The private key of [`FileRole::ClientCertificate`].
    ClientKey,
}

impl fmt::Display for FileRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileRole::Certificate => "certificate",
            FileRole::PrivateKey => "private key",
            FileRole::ClientCa => "client CA bundle",
            FileRole::ServerCa => "CA bundle",
            FileRole::ClientCertificate => "client certificate",
            FileRole::ClientKey => "client private key",
        })
    }
}

/// Why a TLS configuration could not be built. Paths are always named; key material never is.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read the {role} file {path}: {source}")]
    Read {
        /// Which file.
        role: FileRole,
        /// Its path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file is not well-formed PEM.
    #[error("the {role} file {path} is not valid PEM: {problem}")]
    MalformedPem {
        /// Which file.
        role: FileRole,
        /// Its path.
        path: PathBuf,
        /// What is wrong, without quoting the file.
        problem: &'static str,
    },
    /// A file meant to hold certificates holds none.
    #[error("no PEM certificate in the {role} file {path}")]
    NoCertificate {
        /// Which file.
        role: FileRole,
        /// Its path.
        path: PathBuf,
    },
    /// A key file holds no private key (PKCS#8, PKCS#1 or SEC1).
    #[error("no PEM private key (PKCS#8, PKCS#1 or SEC1) in the {role} file {path}")]
    NoPrivateKey {
        /// Which file.
        role: FileRole,
        /// Its path.
        path: PathBuf,
    },
    /// The private key is of a kind the provider cannot use.
    #[error("the private key in {path} cannot be used: {source}")]
    UnusableKey {
        /// The key file.
        path: PathBuf,
        /// What rustls reported (never the key itself).
        source: rustls::Error,
    },
    /// The private key does not belong to the certificate.
    #[error("the private key in {key} does not match the certificate in {cert}")]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// A certificate could not be parsed as X.509.
    #[error("the first certificate in the {role} file {path} cannot be parsed: {source}")]
    BadCertificate {
        /// Which file.
        role: FileRole,
        /// Its path.
        path: PathBuf,
        /// The parse failure.
        source: CertParseError,
    },
    /// A CA certificate cannot be used as a trust anchor.
    #[error("a certificate in the {role} file {path} is not a usable trust anchor: {source}")]
    BadTrustAnchor {
        /// Which file.
        role: FileRole,
        /// Its path.
        path: PathBuf,
        /// What rustls reported.
        source: rustls::Error,
    },
    /// Client certificates were asked for without a CA to verify them against.
    #[error("client_auth = {mode} needs a client CA bundle (client_ca)")]
    MissingClientCa {
        /// The configured mode.
        mode: ClientAuth,
    },
    /// The certificate verifier could not be built from the CA bundle.
    #[error("cannot build a certificate verifier from the {role} file {path}: {source}")]
    Verifier {
        /// Which file.
        role: FileRole,
        /// Its path.
        path: PathBuf,
        /// What rustls reported.
        source: rustls::server::VerifierBuilderError,
    },
    /// The provider does not support the protocol versions asked for (TLS 1.2 and 1.3).
    #[error("the aws-lc-rs provider rejects TLS 1.2/1.3: {source}")]
    ProtocolVersions {
        /// What rustls reported.
        source: rustls::Error,
    },
    /// The expected peer identity is not a DNS name or a URI.
    #[error("the expected peer identity {expected:?} is neither a DNS name nor a URI")]
    InvalidExpectedIdentity {
        /// What was given.
        expected: String,
    },
}

/// Reads a whole file, naming it on failure.
fn read_file(role: FileRole, path: &std::path::Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        role,
        path: path.to_path_buf(),
        source,
    })
}

/// A fixed description of a PEM error: the error's own text may quote lines of the file,
/// which for a key file would be key material.
fn pem_problem(err: &rustls_pki_types::pem::Error) -> &'static str {
    use rustls_pki_types::pem::Error as E;
    match err {
        E::MissingSectionEnd { .. } => "a section has no END line",
        E::IllegalSectionStart { .. } => "a BEGIN line is malformed",
        E::Base64Decode(_) => "a section is not valid base64",
        E::Io(_) => "I/O error while parsing",
        E::NoItemsFound => "no items found",
        E::SectionTooLarge => "a section is too large",
        _ => "unrecognised PEM error",
    }
}

/// Parses every certificate of a PEM file; at least one is required.
fn parse_certs(
    role: FileRole,
    path: &std::path::Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::MalformedPem {
            role,
            path: path.to_path_buf(),
            problem: pem_problem(&e),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            role,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// Parses the first private key of a PEM file.
fn parse_key(
    role: FileRole,
    path: &std::path::Path,
    pem: &[u8],
) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::NoPrivateKey {
            role,
            path: path.to_path_buf(),
        },
        other => TlsError::MalformedPem {
            role,
            path: path.to_path_buf(),
            problem: pem_problem(&other),
        },
    })
}

/// Builds a root store from a PEM CA bundle.
fn parse_roots(
    role: FileRole,
    path: &std::path::Path,
    pem: &[u8],
) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in parse_certs(role, path, pem)? {
        roots.add(cert).map_err(|source| TlsError::BadTrustAnchor {
            role,
            path: path.to_path_buf(),
            source,
        })?;
    }
    Ok(roots)
}

/// Maps the key errors of `with_single_cert` / `with_client_auth_cert`.
fn key_error(err: rustls::Error, cert: &std::path::Path, key: &std::path::Path) -> TlsError {
    match err {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
            TlsError::KeyMismatch {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            }
        }
        source => TlsError::UnusableKey {
            path: key.to_path_buf(),
            source,
        },
    }
}
