//! The OCI Distribution Spec v1.1 HTTP API over [`stowage_store::Store`].
//!
//! Repository names contain slashes, so every `/v2/...` path goes to one handler that splits
//! the path from its end (`.../blobs/<digest>`, `.../blobs/uploads/<id>`, `.../manifests/<ref>`,
//! `.../tags/list`, `.../referrers/<digest>`) and dispatches on method. Errors are
//! [`error::ApiError`], rendered as the spec's JSON with its codes.

mod access;
mod blobs;
mod directory;
pub mod error;
mod manifests;
mod paging;
mod token;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use std::sync::Arc;
use stowage_auth::authority::{Authority, Identity, Mode};
use stowage_core::{Actor, Digest, DigestError, RepoName};
use stowage_index::{AuditAction, AuditOutcome};
use stowage_store::ClientStore;

pub use access::Limits;
pub use directory::StoreDirectory;
use error::{ApiError, ApiResult, Code};

/// API settings.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// Default and maximum page size for tag lists and the catalog.
    pub max_page: usize,
    /// Record every manifest pull in the audit log (refused pulls are always recorded).
    pub audit_pulls: bool,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_page: 1000,
            audit_pulls: false,
        }
    }
}

#[derive(Clone, Debug)]
struct AppState {
    store: ClientStore,
    config: ApiConfig,
    auth: Arc<Authority>,
    limits: Arc<Limits>,
}

/// Builds the router for the whole `/v2/` API, with the built-in token service at the
/// authority's token path when it runs one. Every request is decided by `auth` before the
/// store is called.
pub fn router(
    store: ClientStore,
    config: ApiConfig,
    auth: Arc<Authority>,
    limits: Arc<Limits>,
) -> Router {
    let token_path = auth.settings().token_path.clone();
    let offers_tokens = auth.mode() == Mode::Token;
    let state = AppState {
        store,
        config,
        auth,
        limits,
    };
    let mut r = Router::new()
        .route("/v2", any(base))
        .route("/v2/", any(base))
        .route("/v2/{*rest}", any(dispatch));
    if offers_tokens {
        r = r.route(&token_path, get(token::get).post(token::post));
    }
    r.fallback(not_found)
        .layer(axum::middleware::map_response(api_version_header))
        .layer(
            tower_http::trace::TraceLayer::new_for_http().make_span_with(
                |req: &Request| {
                    tracing::info_span!("http", method = %req.method(), path = %req.uri().path())
                },
            ),
        )
        .with_state(state)
}

async fn api_version_header(mut resp: Response) -> Response {
    resp.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    resp
}

/// `/v2/`: answers 200 to a caller the registry accepts (the check clients make before
/// anything else, and `docker login`'s test of Basic credentials), 401 with the challenge
/// otherwise.
async fn base(State(app): State<AppState>, req: Request<Body>) -> Response {
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return method_not_allowed(req.method()).into_response();
    }
    let need = access::Need::Nothing;
    let id = match access::decide(&app, access::Asking::of(&req), &need).await {
        Ok(id) => id,
        Err(resp) => return resp,
    };
    if app.auth.mode() != Mode::Open && !id.authenticated() {
        let (_, tls) = access::conn(&req);
        return access::challenge_response(&app, req.headers(), tls, &need);
    }
    if matches!(
        id.caller,
        stowage_auth::authority::Caller::User { .. }
            | stowage_auth::authority::Caller::Robot { .. }
    ) {
        // Basic credentials checked at the base endpoint: a login.
        app.store
            .auditor()
            .record(app.store.audit_entry(&id.actor(), AuditAction::Login))
            .await;
    }
    (StatusCode::OK, [("content-type", "application/json")], "{}").into_response()
}

async fn not_found() -> Response {
    ApiError::new(StatusCode::NOT_FOUND, Code::Unsupported, "no such endpoint").into_response()
}

/// What a `/v2/` path addresses.
#[derive(Debug, PartialEq, Eq)]
enum Target<'a> {
    Catalog,
    Tags(&'a str),
    Referrers(&'a str, &'a str),
    Manifest(&'a str, &'a str),
    Blob(&'a str, &'a str),
    UploadStart(&'a str),
    Upload(&'a str, &'a str),
}

/// Splits a path below `/v2/` from its end. Digests, references and upload ids never contain
/// `/`, so the last one or two segments decide, and whatever precedes them is the name.
fn route(rest: &str) -> Option<Target<'_>> {
    if rest == "_catalog" {
        return Some(Target::Catalog);
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Some(Target::Tags(name));
    }
    if let Some(name) = rest.strip_suffix("/blobs/uploads") {
        return Some(Target::UploadStart(name));
    }
    let (head, last) = rest.rsplit_once('/')?;
    let (name, kind) = head.rsplit_once('/')?;
    match kind {
        "manifests" => Some(Target::Manifest(name, last)),
        "referrers" => Some(Target::Referrers(name, last)),
        "blobs" => Some(Target::Blob(name, last)),
        "uploads" => {
            let name = name.strip_suffix("/blobs")?;
            Some(Target::Upload(name, last))
        }
        _ => None,
    }
}

pub(crate) fn parse_repo(name: &str) -> ApiResult<RepoName> {
    RepoName::parse(name)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, Code::NameInvalid, e.to_string()))
}

pub(crate) fn parse_digest(s: &str) -> ApiResult<Digest> {
    Digest::parse(s).map_err(|e| {
        let msg = match &e {
            DigestError::Unsupported(_) => format!("unsupported digest algorithm: {e}"),
            DigestError::Invalid(_) => e.to_string(),
        };
        ApiError::new(StatusCode::BAD_REQUEST, Code::DigestInvalid, msg)
    })
}

pub(crate) fn method_not_allowed(method: &Method) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        Code::Unsupported,
        format!("method {method} is not supported on this endpoint"),
    )
}

async fn dispatch(State(app): State<AppState>, req: Request<Body>) -> Response {
    let path = req.uri().path().to_string();
    let rest = path.strip_prefix("/v2/").unwrap_or("");
    let Some(target) = route(rest) else {
        // Unknown endpoints are refused like everything else when the caller is not accepted.
        if let Err(resp) =
            access::decide(&app, access::Asking::of(&req), &access::Need::Nothing).await
        {
            return resp;
        }
        return ApiError::new(StatusCode::NOT_FOUND, Code::Unsupported, "no such endpoint")
            .into_response();
    };
    let need = match access::need(&target, req.method()) {
        Ok(n) => n,
        Err(e) => return e.into_response(),
    };
    let asking = access::Asking {
        ends_work: matches!(target, Target::Upload(..))
            && matches!(*req.method(), Method::PUT | Method::DELETE),
        ..access::Asking::of(&req)
    };
    let id = match access::decide(&app, asking, &need).await {
        Ok(id) => id,
        Err(resp) => return resp,
    };
    let actor = id.actor();
    let method = req.method().clone();
    let result = handle(&app, &id, &actor, target, req).await;
    match result {
        Ok(resp) => {
            if app.config.audit_pulls && method == Method::GET {
                if let access::Need::Repo(repo, _, AuditAction::ManifestPull) = &need {
                    let digest = resp
                        .headers()
                        .get("docker-content-digest")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    app.store
                        .auditor()
                        .record(
                            app.store
                                .audit_entry(&actor, AuditAction::ManifestPull)
                                .repo(repo.as_str())
                                .target(digest),
                        )
                        .await;
                }
            }
            resp
        }
        Err(e) => {
            // A write that failed is recorded with its code (the store recorded the ones that
            // changed something).
            if let access::Need::Repo(repo, action, audit) = &need {
                if *action != stowage_core::Action::Pull
                    && e.status != StatusCode::METHOD_NOT_ALLOWED
                {
                    app.store
                        .auditor()
                        .record(
                            app.store
                                .audit_entry(&actor, *audit)
                                .repo(repo.as_str())
                                .outcome(AuditOutcome::Failed)
                                .detail(format!("{} {}", e.status.as_u16(), e.code.as_str())),
                        )
                        .await;
                }
            }
            e.into_response()
        }
    }
}

async fn handle(
    app: &AppState,
    id: &Identity,
    actor: &Actor,
    target: Target<'_>,
    req: Request<Body>,
) -> ApiResult {
    let method = req.method().clone();
    match target {
        Target::Catalog => match method {
            Method::GET => {
                let page = paging::page_params(app, &req)?;
                paging::catalog(app, id, page).await
            }
            m => Err(method_not_allowed(&m)),
        },
        Target::Tags(name) => {
            let repo = parse_repo(name)?;
            match method {
                Method::GET => {
                    let (n, last) = paging::page_params(app, &req)?;
                    paging::tags(app, &repo, n, last).await
                }
                m => Err(method_not_allowed(&m)),
            }
        }
        Target::Referrers(name, digest) => {
            let repo = parse_repo(name)?;
            let digest = parse_digest(digest)?;
            match method {
                Method::GET => {
                    let filter = query_param(&req, "artifactType").filter(|s| !s.is_empty());
                    manifests::referrers(app, &repo, &digest, filter).await
                }
                m => Err(method_not_allowed(&m)),
            }
        }
        Target::Manifest(name, reference) => {
            let repo = parse_repo(name)?;
            manifests::handle(app, actor, &repo, reference, req).await
        }
        Target::Blob(name, digest) => {
            let repo = parse_repo(name)?;
            let digest = parse_digest(digest)?;
            blobs::handle_blob(app, actor, &repo, &digest, req).await
        }
        Target::UploadStart(name) => {
            let repo = parse_repo(name)?;
            match method {
                Method::POST => blobs::start_upload(app, id, actor, &repo, req).await,
                m => Err(method_not_allowed(&m)),
            }
        }
        Target::Upload(name, id) => {
            let repo = parse_repo(name)?;
            blobs::handle_upload(app, actor, &repo, id, req).await
        }
    }
}

/// Query string parameters as pairs (form-urlencoded: percent-decoded, `+` as space).
pub(crate) fn query_pairs(req: &Request<Body>) -> Vec<(String, String)> {
    let q = req.uri().query().unwrap_or("");
    form_urlencoded::parse(q.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

pub(crate) fn query_param(req: &Request<Body>, key: &str) -> Option<String> {
    query_pairs(req)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests;
