//! The one place that decides who a caller is and what it may do.
//!
//! Every listener asks the [`Authority`]: the OCI API before it calls the store (one decision
//! per request, made from the repository and action the route names, never from what exists),
//! the built-in token service when it mints a token, and the admin service. Account data comes
//! from a [`Directory`] that the daemon implements over the store.
//!
//! Modes ([`Mode`]):
//! * `open`: no authentication (only allowed on loopback listeners): every caller may do
//!   everything and is recorded as `anonymous` with its address.
//! * `basic`: HTTP Basic credentials on every request: users (argon2id hashes in the index),
//!   robots (`robot$project+name` with a random secret), and the htpasswd file (bcrypt).
//! * `token`: the Distribution token flow with the built-in token service: clients trade
//!   credentials for a short-lived ES256 JWT at the realm and present it as a bearer token.
//! * `external`: bearer tokens from another token service (a Harbor core, a docker token
//!   service), verified against its certificates or JWKS; no built-in token service.
//!
//! Anonymous callers may pull from projects marked public, and nothing else.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use stowage_core::{
    Action, Actor, Clock, Principal, ProjectRecord, RepoName, RobotRecord, Role, UserRecord,
};

use crate::challenge::{
    basic_challenge, bearer_challenge, parse_authorization, ChallengeError, Credentials,
};
use crate::guard::{GuardSettings, LoginGuard, Refusal};
use crate::password::{self, CredentialCache, Htpasswd};
use crate::token::{
    parse_scope_params, AccessEntry, Claims, Scope, SigningKey, TokenError, TokenIssuer, Verifier,
};

/// How the API authenticates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// No authentication (loopback only).
    Open,
    /// HTTP Basic on every request.
    Basic,
    /// Bearer tokens from the built-in token service.
    Token,
    /// Bearer tokens from an external token service.
    External,
}

impl Mode {
    /// Parses `none`/`open`, `basic`, `token`, `external`.
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "none" | "open" => Some(Mode::Open),
            "basic" => Some(Mode::Basic),
            "token" => Some(Mode::Token),
            "external" => Some(Mode::External),
            _ => None,
        }
    }

    /// The config word.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Open => "none",
            Mode::Basic => "basic",
            Mode::Token => "token",
            Mode::External => "external",
        }
    }
}

/// Where the accounts live (the daemon implements it over the store).
pub trait Directory: Send + Sync + fmt::Debug {
    /// A user of the index.
    fn user(&self, name: &str) -> Result<Option<UserRecord>, DirectoryError>;
    /// A robot account.
    fn robot(&self, account: &str) -> Result<Option<RobotRecord>, DirectoryError>;
    /// `user`'s role in `project`.
    fn grant(&self, user: &str, project: &str) -> Result<Option<Role>, DirectoryError>;
    /// Every role of `user`: `(project, role)`.
    fn grants_of(&self, user: &str) -> Result<Vec<(String, Role)>, DirectoryError>;
    /// A project's settings.
    fn project(&self, name: &str) -> Result<Option<ProjectRecord>, DirectoryError>;
}

/// Account data could not be read.
#[derive(Debug, thiserror::Error)]
#[error("reading accounts: {0}")]
pub struct DirectoryError(pub String);

/// An external token service (`external` mode), configured as Distribution configures one.
#[derive(Clone, Debug, Default)]
pub struct ExternalIssuer {
    /// The `iss` its tokens carry.
    pub issuer: String,
    /// Its realm (where clients get tokens).
    pub realm: String,
    /// Root certificate bundle (PEM): trusted keys by libtrust kid and anchors for `x5c`.
    pub root_bundle: Option<PathBuf>,
    /// JWKS file: trusted keys by kid.
    pub jwks: Option<PathBuf>,
    /// Allowed algorithms (names such as `ES256`, `RS256`); empty: the defaults.
    pub algorithms: Vec<String>,
}

/// Settings of the [`Authority`].
#[derive(Clone, Debug)]
pub struct AuthSettings {
    /// Mode.
    pub mode: Mode,
    /// The realm clients are sent to (absolute URL). `None`: derived per request from the
    /// `Host` the client used, the scheme of the listener, and [`AuthSettings::token_path`].
    pub realm: Option<String>,
    /// Path of the built-in token service.
    pub token_path: String,
    /// The service name (`aud` of tokens, `service` of challenges).
    pub service: String,
    /// The issuer name of the built-in token service.
    pub issuer: String,
    /// Lifetime of access tokens.
    pub token_ttl: Duration,
    /// Lifetime of refresh (offline) tokens.
    pub refresh_ttl: Duration,
    /// The built-in token service's key (created at first start when absent).
    pub signing_key: PathBuf,
    /// An htpasswd file (bcrypt), for operators migrating from Distribution.
    pub htpasswd: Option<PathBuf>,
    /// `external` mode's issuer.
    pub external: Option<ExternalIssuer>,
    /// How long a verified password is remembered (so Basic auth does not run argon2 or
    /// bcrypt on every request).
    pub credential_cache_ttl: Duration,
    /// The cap on concurrent password checks and refused logins per address.
    pub guard: GuardSettings,
}

impl AuthSettings {
    /// Defaults for `mode`, with the signing key at `key`.
    pub fn new(mode: Mode, signing_key: PathBuf) -> AuthSettings {
        AuthSettings {
            mode,
            realm: None,
            token_path: "/token".into(),
            service: "stowage".into(),
            issuer: "stowage".into(),
            token_ttl: Duration::from_secs(300),
            refresh_ttl: Duration::from_secs(7 * 24 * 3600),
            signing_key,
            htpasswd: None,
            external: None,
            credential_cache_ttl: Duration::from_secs(300),
            guard: GuardSettings::default(),
        }
    }
}

/// Errors setting the authority up.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    /// The signing key could not be loaded or created.
    #[error("token signing key {path}: {source}")]
    SigningKey {
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: crate::token::KeyError,
    },
    /// The external issuer's keys could not be loaded.
    #[error("external token issuer: {0}")]
    External(#[source] crate::token::KeyError),
    /// `external` mode without its settings, or an unknown algorithm.
    #[error("external token issuer: {0}")]
    ExternalSettings(String),
    /// The htpasswd file could not be read.
    #[error("htpasswd file: {0}")]
    Htpasswd(#[source] password::PasswordError),
}

/// Who the caller is, as authentication found.
#[derive(Clone, Debug)]
pub enum Caller {
    /// `open` mode: anyone may do anything.
    Open,
    /// No credentials.
    Anonymous,
    /// A user (of the index or the htpasswd file) who gave a password.
    User {
        /// Name.
        name: String,
        /// Has the system-admin flag (htpasswd users never do).
        system_admin: bool,
    },
    /// A robot account that gave its secret.
    Robot {
        /// Account name.
        name: String,
        /// Its record.
        record: RobotRecord,
    },
    /// A bearer token.
    Token {
        /// Its verified claims.
        claims: Claims,
        /// Issued by the built-in token service (its subject is one of our accounts).
        own: bool,
    },
}

/// An authenticated caller and where it came from.
#[derive(Clone, Debug)]
pub struct Identity {
    /// Who.
    pub caller: Caller,
    /// From where.
    pub addr: Option<SocketAddr>,
}

impl Identity {
    /// The actor recorded for this caller's changes.
    pub fn actor(&self) -> Actor {
        let principal = match &self.caller {
            Caller::Open | Caller::Anonymous => Principal::Anonymous,
            Caller::User { name, .. } => Principal::User(name.clone()),
            Caller::Robot { name, .. } => Principal::Robot(name.clone()),
            Caller::Token { claims, .. } if claims.sub.is_empty() => Principal::Anonymous,
            Caller::Token { claims, .. } if claims.sub.starts_with("robot$") => {
                Principal::Robot(claims.sub.clone())
            }
            Caller::Token { claims, .. } => Principal::User(claims.sub.clone()),
        };
        Actor::new(principal, self.addr)
    }

    /// Whether the caller presented credentials of some kind (a refusal is then
    /// `insufficient_scope` or 403, not a plain challenge).
    pub fn authenticated(&self) -> bool {
        match &self.caller {
            Caller::Anonymous | Caller::Open => false,
            // A token the service issued to nobody in particular.
            Caller::Token { claims, .. } => !claims.sub.is_empty(),
            Caller::User { .. } | Caller::Robot { .. } => true,
        }
    }
}

/// Why authentication failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthFailure {
    /// The `Authorization` header is malformed.
    #[error("malformed credentials: {0}")]
    Malformed(String),
    /// Unknown user, wrong password or secret, expired robot.
    #[error("invalid username or password")]
    BadCredentials {
        /// The account name given (for the audit log; never the password).
        user: String,
    },
    /// The bearer token was refused.
    #[error("invalid token: {0}")]
    InvalidToken(#[from] TokenError),
    /// Too many refused logins came from the caller's address; its passwords are not
    /// checked for this many seconds.
    #[error("too many failed logins from this address: retry in {0} s")]
    Throttled(u64),
    /// Every password check slot stayed busy.
    #[error("too many logins at once: retry shortly")]
    Busy,
    /// Account data could not be read.
    #[error(transparent)]
    Directory(#[from] DirectoryError),
}

impl From<Refusal> for AuthFailure {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Throttled(s) => AuthFailure::Throttled(s),
            Refusal::Busy => AuthFailure::Busy,
        }
    }
}

/// A request to the built-in token service, as the HTTP layer parsed it.
#[derive(Clone, Default)]
pub struct TokenRequest {
    /// Basic credentials (GET) or `username`/`password` (POST, grant_type=password).
    pub credentials: Option<(String, String)>,
    /// `refresh_token` (POST, grant_type=refresh_token).
    pub refresh_token: Option<String>,
    /// The client's address (refused logins are counted per address).
    pub from: Option<IpAddr>,
    /// `service`.
    pub service: Option<String>,
    /// Every `scope` value.
    pub scopes: Vec<String>,
    /// `offline_token=true` (GET) or `access_type=offline` (POST): also return a refresh
    /// token.
    pub offline: bool,
}

impl fmt::Debug for TokenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenRequest")
            .field("user", &self.credentials.as_ref().map(|(u, _)| u))
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "<redacted>"),
            )
            .field("service", &self.service)
            .field("scopes", &self.scopes)
            .field("offline", &self.offline)
            .finish()
    }
}

/// What the token service hands out.
#[derive(Clone)]
pub struct TokenGrant {
    /// Who it is for (empty: anonymous).
    pub subject: String,
    /// The access token.
    pub token: String,
    /// Seconds until it expires.
    pub expires_in: u64,
    /// RFC 3339.
    pub issued_at: String,
    /// A refresh token, when asked for offline access with a password.
    pub refresh_token: Option<String>,
    /// What was granted (for the audit log).
    pub granted: Vec<AccessEntry>,
}

impl fmt::Debug for TokenGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenGrant")
            .field("subject", &self.subject)
            .field("expires_in", &self.expires_in)
            .field("granted", &self.granted)
            .finish_non_exhaustive()
    }
}

/// Why the token service refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenServiceError {
    /// This daemon runs no token service (not `token` mode).
    #[error("this registry does not issue tokens")]
    NotOffered,
    /// The request is malformed (bad scope, unknown service, unknown grant type).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Credentials or the refresh token were refused.
    #[error("{0}")]
    Unauthorized(AuthFailure),
    /// Signing failed or accounts could not be read.
    #[error("token service failure: {0}")]
    Internal(String),
}

/// The decision maker. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct Authority {
    settings: AuthSettings,
    dir: Arc<dyn Directory>,
    clock: Arc<dyn Clock>,
    issuer: Option<TokenIssuer>,
    verifier: Option<Verifier>,
    htpasswd: Option<Arc<Htpasswd>>,
    cache: CredentialCache,
    guard: LoginGuard,
}

/// A password check waiting to run off the async threads.
enum Check {
    Argon(String),
    Htpasswd,
    /// No such account: a decoy check of the same cost.
    Unknown,
}

fn algorithm(name: &str) -> Option<jsonwebtoken::Algorithm> {
    use jsonwebtoken::Algorithm as A;
    Some(match name {
        "ES256" => A::ES256,
        "ES384" => A::ES384,
        "RS256" => A::RS256,
        "RS384" => A::RS384,
        "RS512" => A::RS512,
        "PS256" => A::PS256,
        "PS384" => A::PS384,
        "PS512" => A::PS512,
        "EdDSA" => A::EdDSA,
        _ => return None,
    })
}

impl Authority {
    /// Sets the authority up: loads (or creates) the token service's key in `token` mode,
    /// the external issuer's keys in `external` mode, the htpasswd file when configured.
    pub fn new(
        settings: AuthSettings,
        dir: Arc<dyn Directory>,
        clock: Arc<dyn Clock>,
    ) -> Result<Authority, AuthSetupError> {
        let (issuer, verifier) = match settings.mode {
            Mode::Token => {
                let key =
                    SigningKey::load_or_generate(&settings.signing_key).map_err(|source| {
                        AuthSetupError::SigningKey {
                            path: settings.signing_key.clone(),
                            source,
                        }
                    })?;
                let issuer = TokenIssuer::new(
                    Arc::new(key),
                    &settings.issuer,
                    &settings.service,
                    settings.token_ttl,
                );
                let verifier = issuer.verifier();
                (Some(issuer), Some(verifier))
            }
            Mode::External => {
                let ext = settings.external.as_ref().ok_or_else(|| {
                    AuthSetupError::ExternalSettings(
                        "external mode needs [auth.external] issuer and keys".into(),
                    )
                })?;
                let mut b = Verifier::builder(&ext.issuer, &settings.service);
                if !ext.algorithms.is_empty() {
                    let algs = ext
                        .algorithms
                        .iter()
                        .map(|a| {
                            algorithm(a).ok_or_else(|| {
                                AuthSetupError::ExternalSettings(format!(
                                    "unknown or refused algorithm {a:?} (allowed: ES256, ES384, RS256, RS384, RS512, PS256, PS384, PS512, EdDSA)"
                                ))
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    b = b.algorithms(&algs);
                }
                if let Some(p) = &ext.root_bundle {
                    b = b.root_bundle_file(p).map_err(AuthSetupError::External)?;
                }
                if let Some(p) = &ext.jwks {
                    b = b.jwks_file(p).map_err(AuthSetupError::External)?;
                }
                (None, Some(b.build().map_err(AuthSetupError::External)?))
            }
            Mode::Open | Mode::Basic => (None, None),
        };
        let htpasswd = match &settings.htpasswd {
            Some(p) => Some(Arc::new(
                Htpasswd::load(p).map_err(AuthSetupError::Htpasswd)?,
            )),
            None => None,
        };
        let cache = CredentialCache::new(4096, settings.credential_cache_ttl);
        let guard = LoginGuard::new(settings.guard);
        Ok(Authority {
            guard,
            settings,
            dir,
            clock,
            issuer,
            verifier,
            htpasswd,
            cache,
        })
    }

    /// The mode.
    pub fn mode(&self) -> Mode {
        self.settings.mode
    }

    /// The settings.
    pub fn settings(&self) -> &AuthSettings {
        &self.settings
    }

    /// The password check guard (for its counters).
    pub fn guard(&self) -> &LoginGuard {
        &self.guard
    }

    /// The htpasswd file, if one is configured.
    pub fn htpasswd(&self) -> Option<&Htpasswd> {
        self.htpasswd.as_deref()
    }

    /// Re-reads the htpasswd file if it changed (SIGHUP). Remembered logins of every user it
    /// named before or names now are forgotten, so a changed or removed password stops
    /// working at once. A file that no longer parses leaves the old users in place.
    pub fn reload_htpasswd(&self) -> Result<bool, password::PasswordError> {
        let Some(h) = &self.htpasswd else {
            return Ok(false);
        };
        let before = h.users();
        let changed = h.reload_if_changed()?;
        if changed {
            for u in before.iter().chain(h.users().iter()) {
                self.cache.forget_user(u);
            }
        }
        Ok(changed)
    }

    fn now_secs(&self) -> u64 {
        self.clock.now_millis() / 1000
    }

    /// Who is asking. No credentials is [`Caller::Anonymous`] (or [`Caller::Open`] in open
    /// mode); credentials of a kind this mode does not take are ignored, so the client gets
    /// the challenge it expects; wrong credentials are an error.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        addr: Option<SocketAddr>,
    ) -> Result<Identity, AuthFailure> {
        let identity = |caller| Identity { caller, addr };
        if self.settings.mode == Mode::Open {
            return Ok(identity(Caller::Open));
        }
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            return Ok(identity(Caller::Anonymous));
        };
        let creds =
            parse_authorization(value).map_err(|e| AuthFailure::Malformed(e.to_string()))?;
        match (self.settings.mode, creds) {
            (Mode::Basic, Credentials::Basic { user, password }) => {
                let caller = self
                    .check_password(&user, &password, addr.map(|a| a.ip()))
                    .await?;
                Ok(identity(caller))
            }
            (Mode::Token | Mode::External, Credentials::Bearer(token)) => {
                let caller = self.check_bearer(&token)?;
                Ok(identity(caller))
            }
            _ => Ok(identity(Caller::Anonymous)),
        }
    }

    /// Verifies a bearer token (access tokens only).
    pub fn check_bearer(&self, token: &str) -> Result<Caller, AuthFailure> {
        let verifier = self
            .verifier
            .as_ref()
            .ok_or(AuthFailure::InvalidToken(TokenError::MissingKeyId))?;
        let claims = verifier.verify(token, self.now_secs())?;
        Ok(Caller::Token {
            claims,
            own: self.settings.mode == Mode::Token,
        })
    }

    /// Checks a name and password (or robot secret) from address `from`: robots by the
    /// SHA-256 of their secret, users of the index by argon2id, then the htpasswd file by
    /// bcrypt. A name that matches no account costs the same argon2id run as one that does.
    /// Verified passwords are remembered for a while (keyed by a hash, with the user's
    /// generation, so a password change ends them). An address with too many refused logins
    /// is refused unchecked for a while ([`AuthFailure::Throttled`]), and at most a few
    /// checks run at once.
    pub async fn check_password(
        &self,
        user: &str,
        secret: &str,
        from: Option<IpAddr>,
    ) -> Result<Caller, AuthFailure> {
        let name = clip(user);
        self.guard.admit(from, &name)?;
        let bad = || {
            self.guard.failed(from, &name);
            AuthFailure::BadCredentials { user: name.clone() }
        };
        if user.starts_with("robot$") {
            let Some(record) = self.dir.robot(user)? else {
                return Err(bad());
            };
            if record.expired(self.clock.now_millis())
                || !password::verify_secret(&record.secret_sha256, secret)
            {
                return Err(bad());
            }
            return Ok(Caller::Robot {
                name: user.to_string(),
                record,
            });
        }
        let now = std::time::Instant::now();
        let record = self.dir.user(user)?;
        let htpasswd_entry = || self.htpasswd.as_ref().and_then(|h| h.fingerprint(user));
        let (generation, check) = match &record {
            Some(r) => (r.generation, Check::Argon(r.password_hash.clone())),
            None => match htpasswd_entry() {
                Some(fingerprint) => (fingerprint, Check::Htpasswd),
                None => (0, Check::Unknown),
            },
        };
        let system_admin = record.as_ref().is_some_and(|r| r.system_admin);
        let caller = Caller::User {
            name: user.to_string(),
            system_admin,
        };
        if !matches!(check, Check::Unknown) && self.cache.check(user, secret, generation, now) {
            return Ok(caller);
        }
        // One check of this account from this address at a time; the limits are looked at
        // again when its turn comes, and a check that waited behind one with the same
        // password finds it remembered.
        let _turn = self.guard.turn(from, &name).await?;
        if !matches!(check, Check::Unknown) && self.cache.check(user, secret, generation, now) {
            return Ok(caller);
        }
        let slot = self.guard.slot().await?;
        let candidate = secret.to_string();
        let ok = match check {
            Check::Argon(hash) => {
                tokio::task::spawn_blocking(move || password::verify_password(&hash, &candidate))
                    .await
                    .unwrap_or(false)
            }
            Check::Unknown => {
                tokio::task::spawn_blocking(move || password::verify_unknown_user(&candidate))
                    .await
                    .unwrap_or(false)
            }
            Check::Htpasswd => match &self.htpasswd {
                Some(h) => {
                    let h = h.clone();
                    let u = user.to_string();
                    tokio::task::spawn_blocking(move || h.verify(&u, &candidate) == Some(true))
                        .await
                        .unwrap_or(false)
                }
                None => false,
            },
        };
        drop(slot);
        if !ok {
            return Err(bad());
        }
        self.cache.insert(user, secret, generation, now);
        Ok(caller)
    }

    /// Whether `id` may do `action` in `repo`. Decided from the project's settings and the
    /// caller's roles or token, never from whether the repository exists.
    pub fn allowed(
        &self,
        id: &Identity,
        repo: &RepoName,
        action: Action,
    ) -> Result<bool, DirectoryError> {
        if let Caller::Token { claims, .. } = &id.caller {
            if claims.allows("repository", repo.as_str(), action.as_str()) {
                return Ok(true);
            }
            return Ok(action == Action::Pull && self.public(repo.project())?);
        }
        self.allowed_in_project(&id.caller, repo.project(), action)
    }

    /// The decision for callers whose rights are per project (everyone but token holders):
    /// their roles, robot record or open mode, then the project's public flag for pulls.
    fn allowed_in_project(
        &self,
        caller: &Caller,
        project: &str,
        action: Action,
    ) -> Result<bool, DirectoryError> {
        match caller {
            Caller::Open => return Ok(true),
            Caller::User { name, system_admin } => {
                if *system_admin {
                    return Ok(true);
                }
                if self
                    .dir
                    .grant(name, project)?
                    .is_some_and(|r| r.allows(action))
                {
                    return Ok(true);
                }
            }
            Caller::Robot { record, .. } => {
                if record.project == project
                    && record.actions.contains(&action)
                    && !record.expired(self.clock.now_millis())
                {
                    return Ok(true);
                }
            }
            Caller::Anonymous | Caller::Token { .. } => {}
        }
        Ok(action == Action::Pull && self.public(project)?)
    }

    fn public(&self, project: &str) -> Result<bool, DirectoryError> {
        Ok(self.dir.project(project)?.is_some_and(|p| p.public))
    }

    /// What `subject` (one of our accounts) may do in `project` right now: the actions its
    /// roles, its robot record or the project's public flag allow.
    fn live_actions(
        &self,
        subject: &str,
        project: &str,
    ) -> Result<BTreeSet<Action>, DirectoryError> {
        let mut out = BTreeSet::new();
        if subject.starts_with("robot$") {
            if let Some(r) = self.dir.robot(subject)? {
                if r.project == project && !r.expired(self.clock.now_millis()) {
                    out.extend(r.actions.iter().copied());
                }
            }
        } else if !subject.is_empty() {
            let admin = self.dir.user(subject)?.is_some_and(|u| u.system_admin);
            if admin {
                out.extend(Action::ALL);
            } else if let Some(role) = self.dir.grant(subject, project)? {
                out.extend(Action::ALL.into_iter().filter(|a| role.allows(*a)));
            }
        }
        if self.public(project)? {
            out.insert(Action::Pull);
        }
        Ok(out)
    }

    /// Which repositories `id` sees in the catalog: `None` when the catalog is refused
    /// altogether (anonymous callers outside open mode), else a filter.
    pub fn catalog_filter(&self, id: &Identity) -> Option<CatalogFilter<'_>> {
        match &id.caller {
            Caller::Open => Some(CatalogFilter::All),
            Caller::Anonymous => Some(CatalogFilter::Check {
                authority: self,
                id: id.clone(),
            }),
            Caller::Token { claims, own: false } => {
                if claims.allows("registry", "catalog", "*") {
                    Some(CatalogFilter::All)
                } else {
                    Some(CatalogFilter::Check {
                        authority: self,
                        id: id.clone(),
                    })
                }
            }
            Caller::Token { claims, own: true } => Some(CatalogFilter::Subject {
                authority: self,
                subject: claims.sub.clone(),
            }),
            Caller::User { .. } | Caller::Robot { .. } => Some(CatalogFilter::Check {
                authority: self,
                id: id.clone(),
            }),
        }
    }

    /// Whether `id` may use the admin API: a system-admin user (its flag read now), by
    /// password or by a token of the built-in service that was granted `registry:admin:*`
    /// (a token asked for pulls and pushes does not open the admin API).
    pub fn is_system_admin(&self, id: &Identity) -> Result<bool, DirectoryError> {
        match &id.caller {
            Caller::User { name, .. } => Ok(self.dir.user(name)?.is_some_and(|u| u.system_admin)),
            Caller::Token { claims, own: true }
                if !claims.sub.starts_with("robot$") && claims.allows("registry", "admin", "*") =>
            {
                Ok(self.dir.user(&claims.sub)?.is_some_and(|u| u.system_admin))
            }
            _ => Ok(false),
        }
    }

    /// Whether `user` names an account (index or htpasswd).
    pub fn knows_user(&self, user: &str) -> Result<bool, DirectoryError> {
        Ok(self.dir.user(user)?.is_some()
            || self.htpasswd.as_ref().is_some_and(|h| h.contains(user)))
    }

    /// The realm for a request that came to `host` over `tls`.
    pub fn realm(&self, host: Option<&str>, tls: bool) -> String {
        if let Some(r) = &self.settings.realm {
            return r.clone();
        }
        if let (Mode::External, Some(ext)) = (self.settings.mode, &self.settings.external) {
            return ext.realm.clone();
        }
        let scheme = if tls { "https" } else { "http" };
        format!(
            "{scheme}://{}{}",
            host.unwrap_or("localhost"),
            self.settings.token_path
        )
    }

    /// The `WWW-Authenticate` value for a refused request: `Bearer` with the scopes it needed
    /// (and `error` when a token was presented) in the token modes, `Basic` in basic mode.
    pub fn challenge(
        &self,
        host: Option<&str>,
        tls: bool,
        scopes: &[String],
        error: Option<ChallengeError>,
    ) -> Option<HeaderValue> {
        match self.settings.mode {
            Mode::Open => None,
            Mode::Basic => Some(basic_challenge(&self.realm_name())),
            Mode::Token | Mode::External => Some(bearer_challenge(
                &self.realm(host, tls),
                &self.settings.service,
                scopes,
                error,
            )),
        }
    }

    fn realm_name(&self) -> String {
        format!("{} registry", self.settings.service)
    }

    /// The built-in token service: authenticates the request's subject (password, robot
    /// secret, refresh token, or nobody), then grants the intersection of what each scope asks
    /// and what the subject may do. A partial (or empty) grant is not an error.
    pub async fn issue(&self, req: &TokenRequest) -> Result<TokenGrant, TokenServiceError> {
        let issuer = self.issuer.as_ref().ok_or(TokenServiceError::NotOffered)?;
        if let Some(s) = &req.service {
            if s != &self.settings.service {
                return Err(TokenServiceError::InvalidRequest(format!(
                    "unknown service {:?}",
                    clip(s)
                )));
            }
        }
        let scopes = parse_scope_params(req.scopes.iter().map(String::as_str))
            .map_err(|e| TokenServiceError::InvalidRequest(e.to_string()))?;
        let now = self.now_secs();
        // Who: a password or secret, a refresh token, or nobody.
        let (subject, generation, from_password) = if let Some((user, password)) = &req.credentials
        {
            let caller = self
                .check_password(user, password, req.from)
                .await
                .map_err(TokenServiceError::Unauthorized)?;
            let generation = match &caller {
                Caller::User { name, .. } => self
                    .generation(name)
                    .map_err(|e| TokenServiceError::Internal(e.to_string()))?,
                _ => None,
            };
            (user.clone(), generation, true)
        } else if let Some(rt) = &req.refresh_token {
            let claims = issuer
                .verifier()
                .verify_refresh(rt, now)
                .map_err(|e| TokenServiceError::Unauthorized(AuthFailure::InvalidToken(e)))?;
            self.check_refresh_subject(&claims)?;
            (claims.sub.clone(), claims.gen, false)
        } else {
            (String::new(), None, false)
        };
        let mut granted: Vec<AccessEntry> = Vec::new();
        for scope in scopes {
            if let Some(entry) = self
                .grant_scope(&subject, &scope)
                .map_err(|e| TokenServiceError::Internal(e.to_string()))?
            {
                match granted
                    .iter_mut()
                    .find(|g| g.typ == entry.typ && g.name == entry.name)
                {
                    Some(g) => {
                        for a in entry.actions {
                            if !g.actions.contains(&a) {
                                g.actions.push(a);
                            }
                        }
                    }
                    None => granted.push(entry),
                }
            }
        }
        let issued = issuer
            .access_token(&subject, granted.clone(), now)
            .map_err(|e| TokenServiceError::Internal(e.to_string()))?;
        // Refresh tokens go to users only (robots present their secret each time), bound to
        // the user's credential generation.
        let refresh_token = match generation {
            Some(generation) if req.offline && from_password => Some(
                issuer
                    .refresh_token(&subject, generation, now, self.settings.refresh_ttl)
                    .map_err(|e| TokenServiceError::Internal(e.to_string()))?
                    .token,
            ),
            _ => None,
        };
        Ok(TokenGrant {
            subject,
            token: issued.token,
            expires_in: issued.expires_in,
            issued_at: issued.issued_at,
            refresh_token,
            granted,
        })
    }

    /// The credential generation of user `name`: its record's for users of the index, the
    /// fingerprint of its entry for htpasswd users; `None` if there is no such user.
    fn generation(&self, name: &str) -> Result<Option<u64>, DirectoryError> {
        if let Some(u) = self.dir.user(name)? {
            return Ok(Some(u.generation));
        }
        Ok(self.htpasswd.as_ref().and_then(|h| h.fingerprint(name)))
    }

    /// A refresh token's subject must be a user that still exists, with the same credential
    /// generation (a changed password, or a user removed and created again, ends its refresh
    /// tokens). Robots get none.
    fn check_refresh_subject(&self, claims: &Claims) -> Result<(), TokenServiceError> {
        let refused = || {
            TokenServiceError::Unauthorized(AuthFailure::BadCredentials {
                user: clip(&claims.sub),
            })
        };
        if claims.sub.is_empty() || claims.sub.starts_with("robot$") {
            return Err(refused());
        }
        match self
            .generation(&claims.sub)
            .map_err(|e| TokenServiceError::Internal(e.to_string()))?
        {
            Some(g) if Some(g) == claims.gen => Ok(()),
            _ => Err(refused()),
        }
    }

    /// What one scope gets for `subject` (empty: anonymous).
    fn grant_scope(
        &self,
        subject: &str,
        scope: &Scope,
    ) -> Result<Option<AccessEntry>, DirectoryError> {
        match scope.typ.as_str() {
            "repository" => {
                let Ok(repo) = RepoName::parse(&scope.name) else {
                    return Ok(None);
                };
                let may = self.live_actions(subject, repo.project())?;
                let wants_all = scope.actions.iter().any(|a| a == "*");
                let actions: Vec<String> = Action::ALL
                    .into_iter()
                    .filter(|a| may.contains(a) && (wants_all || scope.wants(a.as_str())))
                    .map(|a| a.as_str().to_string())
                    .collect();
                Ok((!actions.is_empty()).then(|| AccessEntry {
                    typ: scope.typ.clone(),
                    class: scope.class.clone(),
                    name: scope.name.clone(),
                    actions,
                }))
            }
            "registry" if scope.name == "catalog" && !subject.is_empty() => Ok(scope
                .wants("*")
                .then(|| AccessEntry::new("registry", "catalog", &["*"]))),
            // The admin API: only for users with the system-admin flag now.
            "registry"
                if scope.name == "admin"
                    && scope.wants("*")
                    && !subject.is_empty()
                    && !subject.starts_with("robot$")
                    && self.dir.user(subject)?.is_some_and(|u| u.system_admin) =>
            {
                Ok(Some(AccessEntry::new("registry", "admin", &["*"])))
            }
            _ => Ok(None),
        }
    }
}

/// Which repositories a caller sees in listings.
#[derive(Debug)]
pub enum CatalogFilter<'a> {
    /// Everything.
    All,
    /// What the caller may pull.
    Check {
        /// The authority.
        authority: &'a Authority,
        /// The caller.
        id: Identity,
    },
    /// What a token's subject may pull now.
    Subject {
        /// The authority.
        authority: &'a Authority,
        /// The token's subject.
        subject: String,
    },
}

pub use stowage_core::ProjectView;

impl CatalogFilter<'_> {
    /// How `project` shows: decided once for the project where the caller's rights are per
    /// project, so a listing costs one decision per project, not per repository.
    pub fn project(&self, project: &str) -> ProjectView {
        let r = match self {
            CatalogFilter::All => Ok(ProjectView::All),
            CatalogFilter::Check { authority, id } => match &id.caller {
                Caller::Token { claims, .. } => authority.public(project).map(|public| {
                    let prefix = format!("{project}/");
                    if public {
                        ProjectView::All
                    } else if claims.access.iter().any(|e| {
                        e.typ == "repository" && (e.name == project || e.name.starts_with(&prefix))
                    }) {
                        ProjectView::EachRepo
                    } else {
                        ProjectView::Nothing
                    }
                }),
                caller => authority
                    .allowed_in_project(caller, project, Action::Pull)
                    .map(|yes| {
                        if yes {
                            ProjectView::All
                        } else {
                            ProjectView::Nothing
                        }
                    }),
            },
            CatalogFilter::Subject { authority, subject } => {
                authority.live_actions(subject, project).map(|a| {
                    if a.contains(&Action::Pull) {
                        ProjectView::All
                    } else {
                        ProjectView::Nothing
                    }
                })
            }
        };
        r.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "catalog filter: reading accounts failed; hiding project");
            ProjectView::Nothing
        })
    }

    /// Whether `repo` is listed.
    pub fn visible(&self, repo: &RepoName) -> bool {
        let r = match self {
            CatalogFilter::All => Ok(true),
            CatalogFilter::Check { authority, id } => authority.allowed(id, repo, Action::Pull),
            CatalogFilter::Subject { authority, subject } => authority
                .live_actions(subject, repo.project())
                .map(|a| a.contains(&Action::Pull)),
        };
        r.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "catalog filter: reading accounts failed; hiding repository");
            false
        })
    }
}

/// A name from a request, cut to a length safe to log and audit.
fn clip(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(128).collect()
}
