//! The server side: one listener's TLS configuration, reloadable from its files.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use super::{
    crypto_provider, key_error, parse_certs, parse_key, parse_roots, read_file, CertIdentity,
    FileRole, TlsError,
};

/// Whether a listener asks for client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// No client certificate is requested.
    #[default]
    None,
    /// A client certificate is requested; a client without one is served (without a
    /// certificate identity), a client with one that does not verify is refused.
    Optional,
    /// Every client must present a certificate that verifies against the client CA.
    Required,
}

impl fmt::Display for ClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClientAuth::None => "none",
            ClientAuth::Optional => "optional",
            ClientAuth::Required => "required",
        })
    }
}

/// The files of one listener's TLS configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, end-entity first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM bundle of the CAs client certificates must chain to.
    pub client_ca: Option<PathBuf>,
    /// Whether client certificates are requested.
    pub client_auth: ClientAuth,
}

impl TlsFiles {
    /// Checks the combination: client certificates need a client CA.
    pub fn validate(&self) -> Result<(), TlsError> {
        match (self.client_auth, &self.client_ca) {
            (ClientAuth::Optional | ClientAuth::Required, None) => Err(TlsError::MissingClientCa {
                mode: self.client_auth,
            }),
            _ => Ok(()),
        }
    }
}

/// A listener's TLS configuration that can be swapped at run time. Cheap to clone.
///
/// [`ReloadableTls::acceptor`] hands out an acceptor for the configuration current at that
/// moment: a reload affects new connections only, live ones keep the configuration they
/// were accepted with.
#[derive(Clone)]
pub struct ReloadableTls {
    inner: Arc<Inner>,
}

struct Inner {
    files: TlsFiles,
    alpn: Vec<Vec<u8>>,
    current: ArcSwap<Loaded>,
    /// Serialises reloads (the watcher and SIGHUP may race); never held across an await.
    reload_lock: Mutex<()>,
}

struct Loaded {
    config: Arc<ServerConfig>,
    /// SHA-256 over the files' contents, to tell whether a reload changes anything.
    digest: [u8; 32],
    identity: Arc<CertIdentity>,
}

impl fmt::Debug for ReloadableTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadableTls")
            .field("files", &self.inner.files)
            .field("identity", &self.identity().to_string())
            .finish_non_exhaustive()
    }
}

impl ReloadableTls {
    /// Builds the configuration from `files` (TLS 1.2 and 1.3, aws-lc-rs), advertising
    /// `alpn` (see [`super::alpn_http`] and [`super::alpn_grpc`]).
    pub fn load(files: TlsFiles, alpn: Vec<Vec<u8>>) -> Result<Self, TlsError> {
        files.validate()?;
        if files.client_auth == ClientAuth::None && files.client_ca.is_some() {
            tracing::warn!(
                cert = %files.cert.display(),
                "client_ca is set but client_auth is none: client certificates are not requested"
            );
        }
        let loaded = build(&files, &alpn)?;
        Ok(ReloadableTls {
            inner: Arc::new(Inner {
                files,
                alpn,
                current: ArcSwap::from_pointee(loaded),
                reload_lock: Mutex::new(()),
            }),
        })
    }

    /// An acceptor for the current configuration.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config())
    }

    /// The current server configuration.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.inner.current.load().config.clone()
    }

    /// The identity of the certificate currently served.
    pub fn identity(&self) -> Arc<CertIdentity> {
        self.inner.current.load().identity.clone()
    }

    /// The files this configuration is read from.
    pub fn files(&self) -> &TlsFiles {
        &self.inner.files
    }

    /// Re-reads the files. If their contents changed and they make a valid configuration,
    /// it replaces the current one and `Ok(true)` is returned; if nothing changed,
    /// `Ok(false)`. On error the current configuration keeps serving; the caller logs the
    /// error (it names the file and the problem, never key material).
    pub fn reload(&self) -> Result<bool, TlsError> {
        let _serial = self
            .inner
            .reload_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let material = Material::read(&self.inner.files)?;
        if material.digest == self.inner.current.load().digest {
            return Ok(false);
        }
        let loaded = material.build(&self.inner.files, &self.inner.alpn)?;
        self.inner.current.store(Arc::new(loaded));
        Ok(true)
    }

    /// Starts a task (`tls-reload-watcher`) that polls the files' metadata every `interval`
    /// and reloads once a change has been stable for one poll (so a cert and key written one
    /// after the other are picked up together). Success and failure are logged. The task
    /// ends when `stop` turns true or its sender is dropped.
    pub fn spawn_watcher(
        &self,
        interval: Duration,
        mut stop: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        let this = self.clone();
        let span = tracing::info_span!(
            "task",
            name = "tls-reload-watcher",
            cert = %self.inner.files.cert.display()
        );
        tokio::spawn(
            async move {
                let mut ticker = tokio::time::interval(interval);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ticker.tick().await;
                // Start from "unknown" so a change between `load` and now is not missed
                // (it costs one no-op reload).
                let mut seen = Stamps(Vec::new());
                let mut pending: Option<Stamps> = None;
                loop {
                    tokio::select! {
                        _ = ticker.tick() => {}
                        _ = stop.wait_for(|stop| *stop) => break,
                    }
                    let now = Stamps::read(&this.inner.files);
                    if now == seen {
                        pending = None;
                        continue;
                    }
                    if pending.as_ref() != Some(&now) {
                        // Changed since the last poll: wait one more poll for it to settle.
                        pending = Some(now);
                        continue;
                    }
                    pending = None;
                    seen = now;
                    match this.reload() {
                        Ok(true) => tracing::info!(
                            identity = %this.identity(),
                            "TLS certificate reloaded"
                        ),
                        Ok(false) => tracing::debug!("TLS files touched but unchanged"),
                        Err(error) => tracing::warn!(
                            %error,
                            "TLS reload failed; the previous certificate keeps serving"
                        ),
                    }
                }
                tracing::debug!("TLS reload watcher stopped");
            }
            .instrument(span),
        )
    }
}

/// The raw contents of a configuration's files.
struct Material {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
    digest: [u8; 32],
}

impl Material {
    fn read(files: &TlsFiles) -> Result<Self, TlsError> {
        let cert = read_file(FileRole::Certificate, &files.cert)?;
        let key = read_file(FileRole::PrivateKey, &files.key)?;
        let client_ca = match (&files.client_ca, files.client_auth) {
            (Some(path), ClientAuth::Optional | ClientAuth::Required) => {
                Some(read_file(FileRole::ClientCa, path)?)
            }
            _ => None,
        };
        let mut hasher = Sha256::new();
        for part in [Some(&cert), Some(&key), client_ca.as_ref()] {
            let part = part.map(Vec::as_slice).unwrap_or_default();
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
        Ok(Material {
            cert,
            key,
            client_ca,
            digest: hasher.finalize().into(),
        })
    }

    fn build(self, files: &TlsFiles, alpn: &[Vec<u8>]) -> Result<Loaded, TlsError> {
        let chain = parse_certs(FileRole::Certificate, &files.cert, &self.cert)?;
        let key = parse_key(FileRole::PrivateKey, &files.key, &self.key)?;
        let identity = CertIdentity::from_der(chain[0].as_ref()).map_err(|source| {
            TlsError::BadCertificate {
                role: FileRole::Certificate,
                path: files.cert.clone(),
                source,
            }
        })?;
        let provider = crypto_provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|source| TlsError::ProtocolVersions { source })?;
        let builder = match (&files.client_ca, &self.client_ca) {
            (Some(ca_path), Some(ca_pem)) => {
                let roots = parse_roots(FileRole::ClientCa, ca_path, ca_pem)?;
                let mut verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                if files.client_auth == ClientAuth::Optional {
                    verifier = verifier.allow_unauthenticated();
                }
                let verifier = verifier.build().map_err(|source| TlsError::Verifier {
                    role: FileRole::ClientCa,
                    path: ca_path.clone(),
                    source,
                })?;
                builder.with_client_cert_verifier(verifier)
            }
            _ => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| key_error(e, &files.cert, &files.key))?;
        config.alpn_protocols = alpn.to_vec();
        Ok(Loaded {
            config: Arc::new(config),
            digest: self.digest,
            identity: Arc::new(identity),
        })
    }
}

fn build(files: &TlsFiles, alpn: &[Vec<u8>]) -> Result<Loaded, TlsError> {
    Material::read(files)?.build(files, alpn)
}

/// Metadata of the watched files; `None` for a file that cannot be stat'ed right now.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamps(Vec<Option<Stamp>>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl Stamps {
    fn read(files: &TlsFiles) -> Self {
        let mut paths: Vec<&Path> = vec![&files.cert, &files.key];
        if let Some(ca) = &files.client_ca {
            paths.push(ca);
        }
        Stamps(paths.into_iter().map(stamp).collect())
    }
}

fn stamp(path: &Path) -> Option<Stamp> {
    // `metadata` follows symlinks, so a Kubernetes secret's `..data` swap is seen.
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode,
    })
}
