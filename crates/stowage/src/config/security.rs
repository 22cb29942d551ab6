//! The security settings of `stowage serve`: TLS per listener, authentication, the audit log
//! and the limits that protect the daemon from any one client.
//!
//! The rules a start must pass (checked in [`check_exposure`]):
//! * the OCI API on a non-loopback address serves TLS, unless `allow_insecure = true` says
//!   plain HTTP is wanted there;
//! * the admin and replication listeners on a non-loopback address always serve TLS (they
//!   carry admin credentials and peer identities), and the replication listener requires
//!   client certificates (mutual TLS);
//! * the OCI API on a non-loopback address has authentication (`[auth] mode`); `none` is only
//!   accepted there when `[tls] client_auth = "required"` lets only holders of a client
//!   certificate in (a registry front end that does its own authentication);
//! * the admin listener on a non-loopback address has a way to authenticate admins.
//!
//! On loopback nothing is needed: `stowage serve` with no configuration stays usable.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use stowage_auth::authority::{AuthSettings, ExternalIssuer, Mode};
use stowage_auth::tls::{ClientAuth, TlsFiles};

use super::{parse_duration, parse_size};

/// A `[tls]`-shaped table (the API's, `[admin.tls]`, `[replication.tls]`).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsFile {
    pub(crate) cert: Option<PathBuf>,
    pub(crate) key: Option<PathBuf>,
    pub(crate) client_ca: Option<PathBuf>,
    /// none | optional | required
    pub(crate) client_auth: Option<String>,
}

/// `[auth.external]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExternalFile {
    issuer: Option<String>,
    realm: Option<String>,
    rootcertbundle: Option<PathBuf>,
    jwks: Option<PathBuf>,
    #[serde(default)]
    algorithms: Vec<String>,
}

/// `[auth]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuthFile {
    pub(crate) mode: Option<String>,
    realm: Option<String>,
    token_path: Option<String>,
    service: Option<String>,
    issuer: Option<String>,
    token_ttl: Option<String>,
    refresh_ttl: Option<String>,
    token_key: Option<PathBuf>,
    pub(crate) htpasswd: Option<PathBuf>,
    audit_pulls: Option<bool>,
    failed_logins_per_minute: Option<u32>,
    failed_logins_per_address_per_minute: Option<u32>,
    metrics_public: Option<bool>,
    #[serde(default)]
    metrics_readers: Vec<String>,
    external: Option<ExternalFile>,
}

/// `[[admin.cert_users]]`: a client certificate identity (DNS or URI SAN) that acts as a user.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CertUserFile {
    identity: String,
    user: String,
}

/// `[admin]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdminFile {
    pub(crate) tls: Option<TlsFile>,
    #[serde(default)]
    cert_users: Vec<CertUserFile>,
}

/// `[audit]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditFile {
    retention: Option<String>,
    export: Option<PathBuf>,
}

/// `[limits]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsFile {
    max_connections: Option<usize>,
    handshake_timeout: Option<String>,
    header_read_timeout: Option<String>,
    idle_timeout: Option<String>,
    body_timeout: Option<String>,
    max_header_bytes: Option<toml::Value>,
    max_headers: Option<usize>,
    max_uploads: Option<usize>,
    max_uploads_per_actor: Option<usize>,
    max_staged_bytes: Option<toml::Value>,
    max_staged_bytes_per_actor: Option<toml::Value>,
    max_pins: Option<usize>,
    requests_per_second: Option<u32>,
    request_burst: Option<u32>,
}

/// Resolved audit settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSettings {
    /// Entries older than this are removed (the chain's anchor moves past them); `None`:
    /// kept forever.
    pub retention: Option<Duration>,
    /// A file every committed entry is appended to as one JSON line (for a SIEM).
    pub export: Option<PathBuf>,
    /// Record every manifest pull.
    pub pulls: bool,
}

/// Who may read `/metrics` when authentication is on (system admins always may).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsAccess {
    /// Anyone who reaches the API listener.
    pub public: bool,
    /// These users too (a Prometheus scraping with its own account).
    pub readers: Vec<String>,
}

/// Resolved limits.
#[derive(Debug, Clone)]
pub struct LimitSettings {
    /// Connection limits and timeouts of every listener.
    pub net: stowage_auth::net::Limits,
    /// A request body that sends nothing for this long is cut.
    pub body_timeout: Duration,
    /// Upload sessions, staged bytes, pins.
    pub store: stowage_store::StoreLimits,
    /// Requests per second and burst per actor; `None`: off.
    pub rate: Option<(u32, u32)>,
}

/// Resolved security settings.
#[derive(Debug, Clone)]
pub struct Security {
    /// TLS of the OCI API.
    pub api_tls: Option<TlsFiles>,
    /// TLS of the admin listener.
    pub admin_tls: Option<TlsFiles>,
    /// TLS of the replication listener (its certificate is also this site's client
    /// certificate towards peers, and its client CA the CA peers are checked against).
    pub repl_tls: Option<TlsFiles>,
    /// Plain HTTP on non-loopback addresses was asked for explicitly.
    pub allow_insecure: bool,
    /// Authentication.
    pub auth: AuthSettings,
    /// Who may read `/metrics`.
    pub metrics: MetricsAccess,
    /// `[auth] mode` was given (rather than defaulted).
    pub auth_explicit: bool,
    /// Client certificate identities that act as users on the admin listener.
    pub admin_cert_users: Vec<(String, String)>,
    /// The audit log.
    pub audit: AuditSettings,
    /// Limits.
    pub limits: LimitSettings,
}

/// Requests per second allowed per actor when authentication is on and nothing is configured.
const DEFAULT_RATE: u32 = 1000;

fn tls_files(t: Option<TlsFile>, what: &str) -> Result<Option<TlsFiles>, String> {
    let Some(t) = t else { return Ok(None) };
    let (cert, key) = match (t.cert, t.key) {
        (Some(c), Some(k)) => (c, k),
        (None, None) if t.client_ca.is_none() && t.client_auth.is_none() => return Ok(None),
        _ => return Err(format!("{what}: cert and key are both required")),
    };
    let client_auth = match t.client_auth.as_deref() {
        None if t.client_ca.is_some() => ClientAuth::Required,
        None | Some("none") => ClientAuth::None,
        Some("optional") => ClientAuth::Optional,
        Some("required") => ClientAuth::Required,
        Some(other) => {
            return Err(format!(
                "{what}: client_auth {other:?} is not none, optional or required"
            ))
        }
    };
    if client_auth != ClientAuth::None && t.client_ca.is_none() {
        return Err(format!(
            "{what}: client_auth {} needs client_ca (the CA client certificates are checked against)",
            t.client_auth.as_deref().unwrap_or("required")
        ));
    }
    Ok(Some(TlsFiles {
        cert,
        key,
        client_ca: t.client_ca,
        client_auth,
    }))
}

fn duration(text: Option<String>, key: &str) -> Result<Option<Duration>, String> {
    text.map(|t| parse_duration(&t).map_err(|e| format!("{key}: {e}")))
        .transpose()
}

fn size(v: Option<toml::Value>, key: &str) -> Result<Option<u64>, String> {
    match v {
        None => Ok(None),
        Some(toml::Value::Integer(i)) => u64::try_from(i)
            .map(Some)
            .map_err(|_| format!("{key}: {i} is negative")),
        Some(toml::Value::String(s)) => parse_size(&s).map(Some).map_err(|e| format!("{key}: {e}")),
        Some(other) => Err(format!("{key}: unexpected {other}")),
    }
}

/// Inputs of [`resolve`] from the command line and environment.
#[derive(Debug, Default, Clone)]
pub(crate) struct SecurityFlags {
    pub(crate) tls_cert: Option<PathBuf>,
    pub(crate) tls_key: Option<PathBuf>,
    pub(crate) tls_client_ca: Option<PathBuf>,
    pub(crate) tls_client_auth: Option<String>,
    pub(crate) allow_insecure: Option<bool>,
    pub(crate) auth_mode: Option<String>,
    pub(crate) auth_htpasswd: Option<PathBuf>,
    pub(crate) auth_realm: Option<String>,
}

/// Inputs of [`resolve`] from the config file.
#[derive(Debug, Default)]
pub(crate) struct SecurityFile {
    pub(crate) tls: Option<TlsFile>,
    pub(crate) allow_insecure: Option<bool>,
    pub(crate) auth: Option<AuthFile>,
    pub(crate) admin: Option<AdminFile>,
    pub(crate) repl_tls: Option<TlsFile>,
    pub(crate) audit: Option<AuditFile>,
    pub(crate) limits: Option<LimitsFile>,
}

/// Merges flags, file and defaults.
pub(crate) fn resolve(
    flags: SecurityFlags,
    file: SecurityFile,
    data_dir: &Path,
) -> Result<Security, String> {
    let mut api = file.tls.unwrap_or_default();
    if flags.tls_cert.is_some() {
        api.cert = flags.tls_cert;
    }
    if flags.tls_key.is_some() {
        api.key = flags.tls_key;
    }
    if flags.tls_client_ca.is_some() {
        api.client_ca = flags.tls_client_ca;
    }
    if flags.tls_client_auth.is_some() {
        api.client_auth = flags.tls_client_auth;
    }
    let api_tls = tls_files(Some(api), "[tls]")?;
    let admin_file = file.admin.unwrap_or_default();
    let admin_tls = tls_files(admin_file.tls, "[admin.tls]")?;
    let repl_tls = tls_files(file.repl_tls, "[replication.tls]")?;
    let af = file.auth.unwrap_or_default();
    let mode_text = flags.auth_mode.or(af.mode);
    let auth_explicit = mode_text.is_some();
    let mode = match mode_text.as_deref() {
        None => Mode::Open,
        Some(m) => Mode::parse(m)
            .ok_or_else(|| format!("[auth] mode {m:?} is not none, basic, token or external"))?,
    };
    let mut auth = AuthSettings::new(
        mode,
        af.token_key
            .unwrap_or_else(|| data_dir.join("auth").join("token-signing-key.pem")),
    );
    auth.realm = flags.auth_realm.or(af.realm);
    if let Some(p) = af.token_path {
        if !p.starts_with('/') || p.starts_with("/v2") {
            return Err(format!(
                "[auth] token_path {p:?} must start with '/' and be outside /v2/"
            ));
        }
        auth.token_path = p;
    }
    if let Some(s) = af.service {
        auth.service = s;
    }
    if let Some(i) = af.issuer {
        auth.issuer = i;
    }
    if let Some(t) = duration(af.token_ttl, "[auth] token_ttl")? {
        if t < Duration::from_secs(10) || t > Duration::from_secs(24 * 3600) {
            return Err("[auth] token_ttl must be between 10s and 24h".into());
        }
        auth.token_ttl = t;
    }
    if let Some(t) = duration(af.refresh_ttl, "[auth] refresh_ttl")? {
        auth.refresh_ttl = t;
    }
    auth.htpasswd = flags.auth_htpasswd.or(af.htpasswd);
    if let Some(n) = af.failed_logins_per_minute {
        auth.guard.failures_per_minute = std::num::NonZeroU32::new(n);
    }
    if let Some(n) = af.failed_logins_per_address_per_minute {
        auth.guard.address_failures_per_minute = std::num::NonZeroU32::new(n);
    }
    let metrics = MetricsAccess {
        public: af.metrics_public.unwrap_or(false),
        readers: af.metrics_readers,
    };
    if let Some(e) = af.external {
        auth.external = Some(ExternalIssuer {
            issuer: e
                .issuer
                .ok_or("[auth.external] issuer is required (the iss its tokens carry)")?,
            realm: e
                .realm
                .ok_or("[auth.external] realm is required (where clients get tokens)")?,
            root_bundle: e.rootcertbundle,
            jwks: e.jwks,
            algorithms: e.algorithms,
        });
    }
    if mode == Mode::External {
        match &auth.external {
            None => return Err("[auth] mode = \"external\" needs an [auth.external] table".into()),
            Some(e) if e.root_bundle.is_none() && e.jwks.is_none() => return Err(
                "[auth.external] needs rootcertbundle or jwks: the keys its tokens are signed with"
                    .into(),
            ),
            Some(_) => {}
        }
    }
    let admin_cert_users = admin_file
        .cert_users
        .into_iter()
        .map(|c| (c.identity, c.user))
        .collect();
    let au = file.audit.unwrap_or_default();
    let audit = AuditSettings {
        retention: duration(au.retention, "[audit] retention")?.filter(|d| !d.is_zero()),
        export: au.export,
        pulls: af.audit_pulls.unwrap_or(false),
    };
    let lf = file.limits.unwrap_or_default();
    let mut net = stowage_auth::net::Limits::default();
    if let Some(n) = lf.max_connections {
        if n == 0 {
            return Err("[limits] max_connections must be at least 1".into());
        }
        net.max_connections = n;
    }
    if let Some(d) = duration(lf.handshake_timeout, "[limits] handshake_timeout")? {
        net.handshake_timeout = d;
    }
    if let Some(d) = duration(lf.header_read_timeout, "[limits] header_read_timeout")? {
        net.header_read_timeout = d;
    }
    if let Some(d) = duration(lf.idle_timeout, "[limits] idle_timeout")? {
        net.idle_timeout = d;
    }
    if let Some(n) = size(lf.max_header_bytes, "[limits] max_header_bytes")? {
        net.max_header_bytes = usize::try_from(n).unwrap_or(usize::MAX).max(8192);
    }
    if let Some(n) = lf.max_headers {
        net.max_headers = n.max(16);
    }
    let body_timeout =
        duration(lf.body_timeout, "[limits] body_timeout")?.unwrap_or(Duration::from_secs(60));
    let mut store = stowage_store::StoreLimits::default();
    if let Some(n) = lf.max_uploads {
        store.max_sessions = n;
    }
    if let Some(n) = lf.max_uploads_per_actor {
        store.max_sessions_per_actor = n;
    }
    if let Some(n) = size(lf.max_staged_bytes, "[limits] max_staged_bytes")? {
        store.max_staged_bytes = n;
        // One actor may hold half of a smaller pool by default, as of the default one.
        store.max_staged_bytes_per_actor = store.max_staged_bytes_per_actor.min(n / 2).max(1);
    }
    if let Some(n) = size(
        lf.max_staged_bytes_per_actor,
        "[limits] max_staged_bytes_per_actor",
    )? {
        store.max_staged_bytes_per_actor = n;
    }
    if let Some(n) = lf.max_pins {
        store.max_pins = n;
    }
    // Without authentication every caller is the same anonymous actor on loopback, so the
    // per-actor rate only applies there when it is asked for; with authentication it is on by
    // default (anonymous callers are then keyed by address).
    let rate = match (lf.requests_per_second, lf.request_burst) {
        (Some(0), _) => None,
        (None, None) if mode == Mode::Open => None,
        (r, b) => {
            let r = r.unwrap_or(DEFAULT_RATE);
            Some((r, b.unwrap_or(r.saturating_mul(2)).max(1)))
        }
    };
    Ok(Security {
        api_tls,
        admin_tls,
        repl_tls,
        allow_insecure: flags
            .allow_insecure
            .or(file.allow_insecure)
            .unwrap_or(false),
        auth,
        metrics,
        auth_explicit,
        admin_cert_users,
        audit,
        limits: LimitSettings {
            net,
            body_timeout,
            store,
            rate,
        },
    })
}

/// Refuses a start that would expose a listener without the protection the module docs
/// describe, saying why and what to set.
pub(crate) fn check_exposure(
    sec: &Security,
    api: SocketAddr,
    admin: SocketAddr,
    repl: SocketAddr,
) -> Result<(), String> {
    let plain = |addr: SocketAddr, tls: &Option<TlsFiles>, what: &str, section: &str| {
        if !addr.ip().is_loopback() && tls.is_none() {
            Err(format!(
                "the {what} would listen on {addr} in plain HTTP: anyone on the network could read \
                 and forge its traffic. Configure {section} cert and key, or listen on a loopback \
                 address"
            ))
        } else {
            Ok(())
        }
    };
    if !sec.allow_insecure {
        plain(api, &sec.api_tls, "OCI API", "[tls]").map_err(|e| {
            format!("{e} (or set allow_insecure = true to accept plain HTTP there)")
        })?;
    }
    // Admin credentials and peer identities never travel in plain text off loopback.
    plain(admin, &sec.admin_tls, "admin service", "[admin.tls]")?;
    plain(
        repl,
        &sec.repl_tls,
        "replication service",
        "[replication.tls]",
    )?;
    if !api.ip().is_loopback() && sec.auth.mode == Mode::Open {
        let fenced = sec
            .api_tls
            .as_ref()
            .is_some_and(|t| t.client_auth == ClientAuth::Required);
        if !sec.auth_explicit || !fenced {
            return Err(format!(
                "the OCI API would listen on {api} without authentication: anyone who reaches it \
                 could read, push and delete everything. Set [auth] mode to token, basic or \
                 external; mode \"none\" off loopback is only accepted behind [tls] \
                 client_auth = \"required\" (only holders of a client certificate get in)"
            ));
        }
    }
    if !admin.ip().is_loopback() && sec.auth.mode == Mode::Open && sec.admin_cert_users.is_empty() {
        return Err(format!(
            "the admin service would listen on {admin} with no way to authenticate admins: set \
             [auth] mode (admins then use tokens or passwords) or [[admin.cert_users]] with \
             [admin.tls] client_ca"
        ));
    }
    if !repl.ip().is_loopback() {
        let mtls = sec
            .repl_tls
            .as_ref()
            .is_some_and(|t| t.client_auth == ClientAuth::Required);
        if !mtls {
            return Err(format!(
                "the replication service would listen on {repl} without mutual TLS: peers are \
                 identified by their certificates. Set [replication.tls] cert, key and client_ca"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sec(text: &str) -> Result<Security, String> {
        #[derive(Deserialize, Default)]
        struct F {
            tls: Option<TlsFile>,
            allow_insecure: Option<bool>,
            auth: Option<AuthFile>,
            admin: Option<AdminFile>,
            audit: Option<AuditFile>,
            limits: Option<LimitsFile>,
        }
        let f: F = toml::from_str(text).map_err(|e| e.to_string())?;
        resolve(
            SecurityFlags::default(),
            SecurityFile {
                tls: f.tls,
                allow_insecure: f.allow_insecure,
                auth: f.auth,
                admin: f.admin,
                repl_tls: None,
                audit: f.audit,
                limits: f.limits,
            },
            Path::new("/data"),
        )
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn loopback_needs_nothing() {
        let s = sec("").unwrap();
        assert_eq!(s.auth.mode, Mode::Open);
        check_exposure(
            &s,
            addr("127.0.0.1:5000"),
            addr("[::1]:5001"),
            addr("127.0.0.1:5002"),
        )
        .unwrap();
        assert_eq!(
            s.auth.signing_key,
            PathBuf::from("/data/auth/token-signing-key.pem")
        );
    }

    #[test]
    fn exposure_without_tls_or_auth_is_refused_with_the_reason() {
        let s = sec("").unwrap();
        let err = check_exposure(
            &s,
            addr("0.0.0.0:5000"),
            addr("127.0.0.1:5001"),
            addr("127.0.0.1:5002"),
        )
        .unwrap_err();
        assert!(
            err.contains("plain HTTP") && err.contains("allow_insecure"),
            "{err}"
        );
        let s = sec("allow_insecure = true\n").unwrap();
        let err = check_exposure(
            &s,
            addr("0.0.0.0:5000"),
            addr("127.0.0.1:5001"),
            addr("127.0.0.1:5002"),
        )
        .unwrap_err();
        assert!(err.contains("without authentication"), "{err}");
        let s = sec("allow_insecure = true\n[auth]\nmode = \"basic\"\n").unwrap();
        check_exposure(
            &s,
            addr("0.0.0.0:5000"),
            addr("127.0.0.1:5001"),
            addr("127.0.0.1:5002"),
        )
        .unwrap();
        // allow_insecure covers the OCI API only: admin and replication listeners off loopback
        // need TLS regardless, and replication needs client certificates.
        for (admin, repl, what) in [
            ("10.0.0.1:5001", "127.0.0.1:5002", "admin service"),
            ("127.0.0.1:5001", "10.0.0.1:5002", "replication service"),
        ] {
            let err =
                check_exposure(&s, addr("127.0.0.1:5000"), addr(admin), addr(repl)).unwrap_err();
            assert!(err.contains(what) && err.contains("plain HTTP"), "{err}");
            assert!(!err.contains("allow_insecure"), "{err}");
        }
        let s = sec("[tls]\ncert = \"c\"\nkey = \"k\"\n[auth]\nmode = \"token\"\n").unwrap();
        let err = check_exposure(
            &s,
            addr("0.0.0.0:5000"),
            addr("127.0.0.1:5001"),
            addr("10.0.0.1:5002"),
        )
        .unwrap_err();
        assert!(err.contains("replication service"), "{err}");
    }

    #[test]
    fn mode_none_off_loopback_only_behind_required_client_certificates() {
        // Explicit "none" with TLS but no client certificates: refused.
        let s = sec("[tls]\ncert = \"c\"\nkey = \"k\"\n[auth]\nmode = \"none\"\n").unwrap();
        let err = check_exposure(
            &s,
            addr("0.0.0.0:5000"),
            addr("127.0.0.1:5001"),
            addr("127.0.0.1:5002"),
        )
        .unwrap_err();
        assert!(err.contains("without authentication"), "{err}");
        // Optional client certificates do not fence anything.
        let s = sec("[tls]\ncert = \"c\"\nkey = \"k\"\nclient_ca = \"ca\"\nclient_auth = \"optional\"\n[auth]\nmode = \"none\"\n").unwrap();
        assert!(check_exposure(
            &s,
            addr("0.0.0.0:5000"),
            addr("127.0.0.1:5001"),
            addr("127.0.0.1:5002"),
        )
        .is_err());
        // Required ones do.
        let s =
            sec("[tls]\ncert = \"c\"\nkey = \"k\"\nclient_ca = \"ca\"\n[auth]\nmode = \"none\"\n")
                .unwrap();
        check_exposure(
            &s,
            addr("0.0.0.0:5000"),
            addr("127.0.0.1:5001"),
            addr("127.0.0.1:5002"),
        )
        .unwrap();
        // But not when "none" is only the default.
        let s = sec("[tls]\ncert = \"c\"\nkey = \"k\"\nclient_ca = \"ca\"\n").unwrap();
        assert!(check_exposure(
            &s,
            addr("0.0.0.0:5000"),
            addr("127.0.0.1:5001"),
            addr("127.0.0.1:5002"),
        )
        .is_err());
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let err = sec("[auth]\nmode = \"magic\"\n").unwrap_err();
        assert!(err.contains("magic"), "{err}");
        let err = sec("[tls]\ncert = \"c\"\n").unwrap_err();
        assert!(err.contains("cert and key"), "{err}");
        let err =
            sec("[tls]\ncert = \"c\"\nkey = \"k\"\nclient_auth = \"required\"\n").unwrap_err();
        assert!(err.contains("client_ca"), "{err}");
        let err = sec("[auth]\nmode = \"external\"\n").unwrap_err();
        assert!(err.contains("[auth.external]"), "{err}");
        let err =
            sec("[auth]\nmode = \"external\"\n[auth.external]\nissuer = \"i\"\nrealm = \"r\"\n")
                .unwrap_err();
        assert!(err.contains("rootcertbundle"), "{err}");
        let err = sec("[auth]\ntoken_path = \"/v2/token\"\n").unwrap_err();
        assert!(err.contains("outside /v2/"), "{err}");
        let err = sec("[limits]\nmax_connections = 0\n").unwrap_err();
        assert!(err.contains("max_connections"), "{err}");
        let err = sec("[limits]\nmax_conections = 5\n").unwrap_err();
        assert!(err.contains("max_conections"), "{err}");
    }

    #[test]
    fn limits_and_audit_parse() {
        let s = sec(
            "[limits]\nmax_connections = 10\nheader_read_timeout = \"2s\"\nmax_uploads_per_actor = 7\nmax_staged_bytes = \"1G\"\nrequests_per_second = 5\n[audit]\nretention = \"30d\"\nexport = \"/var/log/a.jsonl\"\n[auth]\naudit_pulls = true\n",
        )
        .unwrap();
        assert_eq!(s.limits.net.max_connections, 10);
        assert_eq!(s.limits.net.header_read_timeout, Duration::from_secs(2));
        assert_eq!(s.limits.store.max_sessions_per_actor, 7);
        assert_eq!(s.limits.store.max_staged_bytes, 1 << 30);
        assert_eq!(s.limits.store.max_staged_bytes_per_actor, 1 << 29);
        let s2 = sec("[limits]\nmax_staged_bytes_per_actor = \"100M\"\n").unwrap();
        assert_eq!(s2.limits.store.max_staged_bytes_per_actor, 100 << 20);
        assert_eq!(s.limits.rate, Some((5, 10)));
        // Off by default without authentication, on with it.
        assert_eq!(sec("").unwrap().limits.rate, None);
        assert_eq!(
            sec("[auth]\nmode = \"basic\"\n").unwrap().limits.rate,
            Some((DEFAULT_RATE, 2 * DEFAULT_RATE))
        );
        assert_eq!(s.audit.retention, Some(Duration::from_secs(30 * 86400)));
        assert!(s.audit.pulls);
        let s = sec("[limits]\nrequests_per_second = 0\n").unwrap();
        assert_eq!(s.limits.rate, None);
    }

    #[test]
    fn login_failures_and_metrics_readers_parse() {
        let s = sec("").unwrap();
        assert_eq!(s.auth.guard.failures_per_minute.map(|n| n.get()), Some(10));
        assert_eq!(
            s.auth.guard.address_failures_per_minute.map(|n| n.get()),
            Some(50)
        );
        assert_eq!(s.metrics, MetricsAccess::default());
        let s = sec(
            "[auth]\nmode = \"basic\"\nfailed_logins_per_minute = 0\nfailed_logins_per_address_per_minute = 0\nmetrics_readers = [\"prom\"]\nmetrics_public = true\n",
        )
        .unwrap();
        assert_eq!(s.auth.guard.failures_per_minute, None);
        assert_eq!(s.auth.guard.address_failures_per_minute, None);
        assert_eq!(
            s.metrics,
            MetricsAccess {
                public: true,
                readers: vec!["prom".into()]
            }
        );
    }
}
