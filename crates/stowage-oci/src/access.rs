//! Access control on the OCI API: one decision per request, made before the store is called.
//!
//! The route alone (repository and method) says what a request needs: pull, push or delete
//! in one repository. Whether the repository exists plays no part, so a client that may not
//! read a private repository gets the same answer whether it exists or not. Trailing slashes,
//! doubled slashes and percent-encoding reach the same parsed name the handler uses (or are
//! refused as invalid names), so no spelling gets a different decision than the handler acts
//! on. Unknown methods need the same access as the route's reads (or pushes, for uploads), so
//! a caller who may not use a route learns nothing from trying other methods on it.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use governor::{DefaultKeyedRateLimiter, Quota};
use stowage_auth::authority::{AuthFailure, Identity};
use stowage_auth::challenge::ChallengeError;
use stowage_auth::net::ConnInfo;
use stowage_core::{Action, RepoName};
use stowage_index::{AuditAction, AuditOutcome};

use crate::error::{ApiError, Code};
use crate::{AppState, Target};

/// What one request needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Need {
    /// Nothing (the base endpoint: only who the caller is).
    Nothing,
    /// An action in a repository (recorded as `audit` when refused).
    Repo(RepoName, Action, AuditAction),
    /// The catalog: any authenticated caller, filtered by what it may pull.
    Catalog,
}

/// What the route and method need. `Err` when the name in the path is not a valid
/// repository name.
pub(crate) fn need(target: &Target<'_>, method: &Method) -> Result<Need, ApiError> {
    Ok(match target {
        Target::Catalog => Need::Catalog,
        Target::Tags(name) => Need::Repo(crate::parse_repo(name)?, Action::Pull, AuditAction::List),
        Target::Referrers(name, _) => {
            Need::Repo(crate::parse_repo(name)?, Action::Pull, AuditAction::List)
        }
        Target::Manifest(name, _) => {
            let action = match *method {
                Method::PUT => Action::Push,
                Method::DELETE => Action::Delete,
                _ => Action::Pull,
            };
            let audit = match action {
                Action::Pull => AuditAction::ManifestPull,
                Action::Push => AuditAction::ManifestPush,
                Action::Delete => AuditAction::ManifestDelete,
            };
            Need::Repo(crate::parse_repo(name)?, action, audit)
        }
        Target::Blob(name, _) => {
            let (action, audit) = match *method {
                Method::DELETE => (Action::Delete, AuditAction::BlobDelete),
                _ => (Action::Pull, AuditAction::BlobPull),
            };
            Need::Repo(crate::parse_repo(name)?, action, audit)
        }
        // Every method on an upload needs push: status and cancel reveal or end pushes.
        Target::UploadStart(name) | Target::Upload(name, _) => Need::Repo(
            crate::parse_repo(name)?,
            Action::Push,
            AuditAction::UploadStart,
        ),
    })
}

/// The connection facts of a request (absent when the router is driven in-process).
pub(crate) fn conn(req: &Request<Body>) -> (Option<SocketAddr>, bool) {
    match req.extensions().get::<ConnInfo>() {
        Some(c) => (Some(c.remote), c.tls),
        None => (None, false),
    }
}

/// What the decision reads of a request: its headers and connection facts. (A request body
/// is not `Sync`, so a reference to the request cannot be held across an await.)
#[derive(Clone, Copy, Debug)]
pub(crate) struct Asking<'a> {
    pub(crate) headers: &'a HeaderMap,
    pub(crate) addr: Option<SocketAddr>,
    pub(crate) tls: bool,
    /// The request ends work already started and counted (finishing or cancelling an
    /// upload session): not held to the request rate, so a session opened under the rate
    /// is never left open by it.
    pub(crate) ends_work: bool,
}

impl<'a> Asking<'a> {
    pub(crate) fn of(req: &'a Request<Body>) -> Asking<'a> {
        let (addr, tls) = conn(req);
        Asking {
            headers: req.headers(),
            addr,
            tls,
            ends_work: false,
        }
    }
}

fn host(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .map(str::to_string)
}

/// The scope string a refused request names in its challenge.
fn scope_of(need: &Need) -> Vec<String> {
    match need {
        Need::Nothing => Vec::new(),
        Need::Catalog => vec!["registry:catalog:*".to_string()],
        Need::Repo(repo, action, _) => {
            // Docker and podman ask for pull with push, as Distribution's challenges do.
            let actions = match action {
                Action::Pull => "pull",
                Action::Push => "pull,push",
                Action::Delete => "delete",
            };
            vec![format!("repository:{repo}:{actions}")]
        }
    }
}

/// A 401 with the challenge for `need`.
fn unauthorized(
    app: &AppState,
    headers: &HeaderMap,
    tls: bool,
    need: &Need,
    error: Option<ChallengeError>,
    message: &str,
) -> Response {
    let mut resp =
        ApiError::new(StatusCode::UNAUTHORIZED, Code::Unauthorized, message).into_response();
    if let Some(v) = app
        .auth
        .challenge(host(headers).as_deref(), tls, &scope_of(need), error)
    {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

/// A plain 401 with the challenge for `need` (no error: the caller gave no credentials).
pub(crate) fn challenge_response(
    app: &AppState,
    headers: &HeaderMap,
    tls: bool,
    need: &Need,
) -> Response {
    unauthorized(app, headers, tls, need, None, "authentication required")
}

/// The decision for one request: `Ok(identity)` to go on, `Err(response)` to answer at once
/// (and the refusal is audited).
pub(crate) async fn decide(
    app: &AppState,
    asking: Asking<'_>,
    need: &Need,
) -> Result<Identity, Response> {
    let (addr, tls, headers) = (asking.addr, asking.tls, asking.headers);
    let id = match app.auth.authenticate(headers, addr).await {
        Ok(id) => id,
        Err(failure) => {
            let (error, user) = match &failure {
                AuthFailure::InvalidToken(_) => (Some(ChallengeError::InvalidToken), None),
                AuthFailure::BadCredentials { user } => (None, Some(user.clone())),
                AuthFailure::Malformed(_) => (None, None),
                AuthFailure::Throttled(secs) => {
                    // Not audited per attempt: the failures that led here were.
                    return Err(ApiError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        Code::TooManyRequests,
                        "too many failed logins from this address: retry later",
                    )
                    .with_header("retry-after", secs.to_string())
                    .into_response());
                }
                AuthFailure::Busy => {
                    return Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        Code::TooManyRequests,
                        "too many logins at once: retry shortly",
                    )
                    .with_header("retry-after", "1".to_string())
                    .into_response());
                }
                AuthFailure::Directory(e) => {
                    tracing::error!(error = %e, "authenticating a request");
                    return Err(ApiError::internal("authenticating the request").into_response());
                }
            };
            let mut entry = app
                .store
                .audit_entry(&stowage_core::Actor::anonymous(addr), AuditAction::Login)
                .outcome(AuditOutcome::Denied)
                .detail(failure.to_string());
            if let Some(u) = user {
                entry.actor = format!("user:{u}");
            }
            app.store.auditor().record(entry).await;
            return Err(unauthorized(
                app,
                headers,
                tls,
                need,
                error,
                "authentication required: the credentials were refused",
            ));
        }
    };
    if !asking.ends_work {
        if let Some(r) = app.rate_limited(&id) {
            return Err(r);
        }
    }
    match need {
        Need::Nothing => Ok(id),
        Need::Catalog => {
            if id.authenticated() || app.auth.mode() == stowage_auth::authority::Mode::Open {
                Ok(id)
            } else {
                Err(unauthorized(
                    app,
                    headers,
                    tls,
                    need,
                    None,
                    "authentication required",
                ))
            }
        }
        Need::Repo(repo, action, audit) => {
            let allowed = app.auth.allowed(&id, repo, *action).map_err(|e| {
                tracing::error!(error = %e, "deciding access");
                ApiError::internal("deciding access").into_response()
            })?;
            if allowed {
                return Ok(id);
            }
            let actor = id.actor();
            app.store
                .auditor()
                .record(
                    app.store
                        .audit_entry(&actor, *audit)
                        .repo(repo.as_str())
                        .outcome(AuditOutcome::Denied)
                        .detail(format!("{action} not allowed")),
                )
                .await;
            Err(deny(app, headers, tls, &id, need))
        }
    }
}

/// The refusal of an authenticated or anonymous caller that may not do what it asked.
fn deny(app: &AppState, headers: &HeaderMap, tls: bool, id: &Identity, need: &Need) -> Response {
    use stowage_auth::authority::Caller;
    match &id.caller {
        // Anonymous: authenticate first.
        Caller::Anonymous | Caller::Open => {
            unauthorized(app, headers, tls, need, None, "authentication required")
        }
        // A token without the scope: the client may ask for a token with it.
        Caller::Token { .. } => unauthorized(
            app,
            headers,
            tls,
            need,
            Some(ChallengeError::InsufficientScope),
            "requested access to the resource is denied",
        ),
        // Basic credentials that do not allow it.
        Caller::User { .. } | Caller::Robot { .. } => ApiError::new(
            StatusCode::FORBIDDEN,
            Code::Denied,
            "requested access to the resource is denied",
        )
        .into_response(),
    }
}

/// Per-actor request rate limit.
#[derive(Debug)]
pub(crate) struct RateLimit {
    limiter: DefaultKeyedRateLimiter<String>,
    checks: AtomicU64,
    /// Requests refused by the limit (for metrics).
    pub(crate) refused: AtomicU64,
}

impl RateLimit {
    pub(crate) fn new(per_second: NonZeroU32, burst: NonZeroU32) -> RateLimit {
        RateLimit {
            limiter: governor::RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
            checks: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// `Err(seconds to wait)` when `key` is over its rate.
    pub(crate) fn check(&self, key: &str) -> Result<(), u64> {
        // Forget idle keys now and then (anonymous callers are keyed by address).
        if self.checks.fetch_add(1, Ordering::Relaxed) % 4096 == 4095 {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        match self.limiter.check_key(&key.to_string()) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                let wait = not_until.wait_time_from(governor::clock::Clock::now(
                    &governor::clock::DefaultClock::default(),
                ));
                Err(wait.as_secs().max(1))
            }
        }
    }
}

impl AppState {
    /// A 429 when the caller is over its request rate.
    pub(crate) fn rate_limited(&self, id: &Identity) -> Option<Response> {
        let limit = self.limits.rate.as_ref()?;
        let key = match id.addr {
            Some(a) if !id.authenticated() => format!("ip:{}", a.ip()),
            _ => id.actor().to_string(),
        };
        limit.check(&key).err().map(|wait| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                Code::TooManyRequests,
                "too many requests: slow down",
            )
            .with_header("retry-after", wait.to_string())
            .into_response()
        })
    }
}

/// Shared limits state of the API.
#[derive(Debug, Default)]
pub struct Limits {
    pub(crate) rate: Option<RateLimit>,
}

impl Limits {
    /// Limits with a per-actor rate of `per_second` requests and bursts of `burst`; `None`
    /// turns the rate limit off.
    pub fn new(rate: Option<(NonZeroU32, NonZeroU32)>) -> Arc<Limits> {
        Arc::new(Limits {
            rate: rate.map(|(r, b)| RateLimit::new(r, b)),
        })
    }

    /// Requests refused for going over the rate.
    pub fn rate_refused(&self) -> u64 {
        self.rate
            .as_ref()
            .map(|r| r.refused.load(Ordering::Relaxed))
            .unwrap_or(0)
    }
}
