//! How the operator's CLI reaches a daemon's admin listener: the address, TLS (the CA to trust
//! and an optional client certificate), and the admin identity it presents (a bearer token,
//! a user's password, or the client certificate itself).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::admin::error_chain;

/// Connection options shared by every command that talks to a running daemon.
#[derive(Args, Debug, Clone, Default)]
pub struct ClientArgs {
    /// Admin address of the daemon (its --admin-listen), `host:port` or a URL; with --ca the
    /// connection uses TLS.
    #[arg(
        long,
        env = "STOWAGE_SERVER",
        default_value = "127.0.0.1:5001",
        value_name = "ADDR"
    )]
    pub server: String,
    /// CA certificate (PEM) that signed the admin listener's certificate; turns TLS on.
    #[arg(long, env = "STOWAGE_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) to present (an identity `[[admin.cert_users]]` maps to an
    /// admin).
    #[arg(long, env = "STOWAGE_CERT", value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "STOWAGE_KEY", value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// A bearer token of a system-admin user (from the daemon's token service).
    #[arg(
        long,
        env = "STOWAGE_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// A system-admin user; its password is read from STOWAGE_PASSWORD or standard input.
    #[arg(
        long,
        env = "STOWAGE_USER",
        value_name = "NAME",
        conflicts_with = "token"
    )]
    pub user: Option<String>,
}

/// Adds the admin identity to every call.
#[derive(Clone)]
pub struct AuthInterceptor {
    header: Option<Arc<MetadataValue<tonic::metadata::Ascii>>>,
}

impl std::fmt::Debug for AuthInterceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthInterceptor")
            .field("header", &self.header.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl tonic::service::Interceptor for AuthInterceptor {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(h) = &self.header {
            req.metadata_mut()
                .insert("authorization", h.as_ref().clone());
        }
        Ok(req)
    }
}

/// A channel to the admin listener with the identity attached.
pub type AdminChannel = InterceptedService<Channel, AuthInterceptor>;

/// Reads the caller's password: `STOWAGE_PASSWORD`, else one line of standard input.
pub fn read_password(prompt_for: &str) -> Result<String, String> {
    if let Ok(p) = std::env::var("STOWAGE_PASSWORD") {
        if !p.is_empty() {
            return Ok(p);
        }
    }
    read_line(&format!("password for {prompt_for}"))
}

/// Reads one secret line from standard input (prompting on a terminal).
pub fn read_line(what: &str) -> Result<String, String> {
    use std::io::BufRead as _;
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        eprint!("{what}: ");
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("reading the {what} from standard input: {e}"))?;
    let p = line.trim_end_matches(['\n', '\r']).to_string();
    if p.is_empty() {
        return Err(format!(
            "no {what}: set it in the environment or pass it on standard input"
        ));
    }
    Ok(p)
}

impl ClientArgs {
    /// The URL of the admin listener.
    pub fn url(&self) -> String {
        if self.server.contains("://") {
            self.server.clone()
        } else if self.ca.is_some() {
            format!("https://{}", self.server)
        } else {
            format!("http://{}", self.server)
        }
    }

    fn interceptor(&self) -> Result<AuthInterceptor, String> {
        use base64::Engine as _;
        let value = match (&self.token, &self.user) {
            (Some(t), _) => Some(format!("Bearer {}", t.trim())),
            (None, Some(u)) => {
                let p = read_password(u)?;
                let enc = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
                Some(format!("Basic {enc}"))
            }
            (None, None) => None,
        };
        let header = match value {
            Some(v) => Some(Arc::new(
                v.parse::<MetadataValue<tonic::metadata::Ascii>>()
                    .map_err(|_| "the token or password holds characters a header cannot carry")?,
            )),
            None => None,
        };
        Ok(AuthInterceptor { header })
    }

    /// Connects to the admin listener.
    pub async fn channel(&self) -> Result<AdminChannel, String> {
        let url = self.url();
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| {
                format!(
                    "admin service address {:?}: {}",
                    self.server,
                    error_chain(&e)
                )
            })?
            .connect_timeout(Duration::from_secs(10));
        let connected = if url.starts_with("https://") {
            let ca = self.ca.as_ref().ok_or_else(|| {
                format!("{url} uses TLS: give the CA that signed its certificate with --ca")
            })?;
            let client = match (&self.cert, &self.key) {
                (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
                _ => None,
            };
            let cfg =
                stowage_auth::tls::client_config(ca, client, None, stowage_auth::tls::alpn_grpc())
                    .map_err(|e| format!("TLS for {url}: {e}"))?;
            endpoint
                .connect_with_connector(stowage_auth::tls::PeerConnector::new(cfg))
                .await
        } else {
            endpoint.connect().await
        };
        let channel = connected.map_err(|e| {
            format!(
                "connecting to the admin service at {url}: {} (is the daemon running, and is --server / STOWAGE_SERVER its --admin-listen address?)",
                error_chain(&e)
            )
        })?;
        Ok(InterceptedService::new(channel, self.interceptor()?))
    }
}
