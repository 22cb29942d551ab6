//! The client side: reaching peers over TLS, optionally pinned to an expected identity.

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;

use super::identity::is_valid_expected;
use super::{
    crypto_provider, key_error, parse_certs, parse_key, parse_roots, read_file, CertIdentity,
    FileRole, TlsError,
};

/// Builds the client configuration used to reach a peer.
///
/// * `ca_pem`: the CA bundle the peer's certificate must chain to (no system roots).
/// * `client`: this process's certificate chain and key, for listeners that want one.
/// * `expected`: when given, the peer's end-entity certificate must carry this identity (a
///   DNS SAN, compared case-insensitively, or a URI SAN such as `spiffe://stowage/site-a`,
///   compared exactly) *instead of* the host name dialled; the chain is still verified to
///   `ca_pem` for server-auth usage. When absent, the usual host-name verification applies.
/// * `alpn`: e.g. [`super::alpn_grpc`] for tonic.
pub fn client_config(
    ca_pem: &Path,
    client: Option<(&Path, &Path)>,
    expected: Option<&str>,
    alpn: Vec<Vec<u8>>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let ca = read_file(FileRole::ServerCa, ca_pem)?;
    let roots = parse_roots(FileRole::ServerCa, ca_pem, &ca)?;
    let provider = crypto_provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|source| TlsError::ProtocolVersions { source })?;
    let builder = match expected {
        Some(expected) => {
            if !is_valid_expected(expected) {
                return Err(TlsError::InvalidExpectedIdentity {
                    expected: expected.to_owned(),
                });
            }
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ExpectedIdentityVerifier {
                    roots: Arc::new(roots),
                    expected: expected.to_owned(),
                    algorithms: provider.signature_verification_algorithms,
                }))
        }
        None => builder.with_root_certificates(roots),
    };
    let mut config = match client {
        Some((cert_path, key_path)) => {
            let cert = read_file(FileRole::ClientCertificate, cert_path)?;
            let chain = parse_certs(FileRole::ClientCertificate, cert_path, &cert)?;
            let key = read_file(FileRole::ClientKey, key_path)?;
            let key = parse_key(FileRole::ClientKey, key_path, &key)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| key_error(e, cert_path, key_path))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn;
    Ok(Arc::new(config))
}

/// Verifies a server certificate chain to a CA and pins the end entity to an expected
/// identity (DNS or URI SAN) instead of the host name.
#[derive(Debug)]
struct ExpectedIdentityVerifier {
    roots: Arc<RootCertStore>,
    expected: String,
    algorithms: WebPkiSupportedAlgorithms,
}

/// The peer's certificate is valid but for someone else.
#[derive(Debug, thiserror::Error)]
#[error("peer certificate ({presented}) does not carry the expected identity {expected}")]
struct IdentityMismatch {
    expected: String,
    presented: String,
}

impl ServerCertVerifier for ExpectedIdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(pki_error)?;
        cert.verify_for_usage(
            self.algorithms.all,
            &self.roots.roots,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(pki_error)?;
        let identity = CertIdentity::from_der(end_entity.as_ref())
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if identity.matches(&self.expected) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(IdentityMismatch {
                    expected: self.expected.clone(),
                    presented: identity.to_string(),
                })),
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Maps a path-building failure to the rustls error a handshake reports.
fn pki_error(err: webpki::Error) -> rustls::Error {
    use webpki::Error as E;
    let cert_error = match err {
        E::BadDer | E::BadDerTime | E::TrailingData(_) => CertificateError::BadEncoding,
        E::CertExpired { .. } | E::InvalidCertValidity => CertificateError::Expired,
        E::CertNotValidYet { .. } => CertificateError::NotValidYet,
        E::CertRevoked => CertificateError::Revoked,
        E::UnknownIssuer => CertificateError::UnknownIssuer,
        E::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        E::RequiredEkuNotFoundContext(_) => CertificateError::InvalidPurpose,
        E::CaUsedAsEndEntity | E::EndEntityUsedAsCa => CertificateError::UnknownIssuer,
        other => CertificateError::Other(rustls::OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(cert_error)
}

/// A connector that dials `host:port` of a URI over TCP (`TCP_NODELAY` on) and performs the
/// TLS handshake with a client configuration from [`client_config`].
///
/// It is what `tonic::transport::Endpoint::connect_with_connector[_lazy]` takes. The server
/// name sent (SNI) is the URI host when it is a DNS name; an IP host is verified as an IP
/// server name (and no SNI is sent). When the configuration pins an expected identity, the
/// host name is not checked against the certificate. A URI without a port means 443 (80 for
/// `http`). Keep tonic's own TLS features off: with them on, tonic refuses `https` URIs that
/// it does not secure itself (use `http://` URIs with this connector in that case).
/// Timeouts: use `Endpoint::connect_timeout`, which tonic applies around the connector.
#[derive(Clone)]
pub struct PeerConnector {
    tls: tokio_rustls::TlsConnector,
}

impl fmt::Debug for PeerConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerConnector").finish_non_exhaustive()
    }
}

impl PeerConnector {
    /// A connector over `config` (which should advertise ALPN `h2` for gRPC).
    pub fn new(config: Arc<ClientConfig>) -> Self {
        PeerConnector {
            tls: tokio_rustls::TlsConnector::from(config),
        }
    }
}

/// Why a peer connection could not be established.
#[derive(Debug, thiserror::Error)]
pub enum PeerConnectError {
    /// The URI has no host.
    #[error("peer URI {uri} has no host")]
    MissingHost {
        /// The URI.
        uri: String,
    },
    /// The host is neither an IP address nor a valid DNS name.
    #[error("peer host {host:?} is not a valid DNS name or IP address")]
    InvalidHost {
        /// The host.
        host: String,
    },
    /// The TCP connection failed.
    #[error("cannot connect to peer {host}:{port}: {source}")]
    Connect {
        /// The host dialled.
        host: String,
        /// The port dialled.
        port: u16,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TLS handshake failed (certificate refused, wrong identity, protocol error).
    #[error("TLS handshake with peer {host}:{port} failed: {source}")]
    Handshake {
        /// The host dialled.
        host: String,
        /// The port dialled.
        port: u16,
        /// The handshake error (wraps the rustls error).
        source: std::io::Error,
    },
}

impl tower::Service<Uri> for PeerConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = PeerConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.tls.clone();
        Box::pin(async move {
            let raw_host = uri.host().ok_or_else(|| PeerConnectError::MissingHost {
                uri: uri.to_string(),
            })?;
            let host = raw_host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(raw_host)
                .to_owned();
            let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
                Some("http") => 80,
                _ => 443,
            });
            let server_name = match host.parse::<IpAddr>() {
                Ok(ip) => ServerName::IpAddress(ip.into()),
                Err(_) => ServerName::try_from(host.clone())
                    .map_err(|_| PeerConnectError::InvalidHost { host: host.clone() })?,
            };
            let tcp = TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|source| PeerConnectError::Connect {
                    host: host.clone(),
                    port,
                    source,
                })?;
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(%error, "cannot set TCP_NODELAY on a peer connection");
            }
            let stream = tls
                .connect(server_name, tcp)
                .await
                .map_err(|source| PeerConnectError::Handshake { host, port, source })?;
            Ok(TokioIo::new(stream))
        })
    }
}
