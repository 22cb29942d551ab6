//! The OCI Distribution Spec v1.1 HTTP API over [`stowage_store::Store`].
//!
//! Repository names contain slashes, so every `/v2/...` path goes to one handler that splits
//! the path from its end (`.../blobs/<digest>`, `.../blobs/uploads/<id>`, `.../manifests/<ref>`,
//! `.../tags/list`, `.../referrers/<digest>`) and dispatches on method. Errors are
//! [`error::ApiError`], rendered as the spec's JSON with its codes.

mod blobs;
pub mod error;
mod manifests;
mod paging;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use stowage_core::{Digest, DigestError, RepoName};
use stowage_store::Store;

use error::{ApiError, ApiResult, Code};

/// API settings.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// Default and maximum page size for tag lists and the catalog.
    pub max_page: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self { max_page: 1000 }
    }
}

#[derive(Clone, Debug)]
struct AppState {
    store: Store,
    config: ApiConfig,
}

/// Builds the router for the whole `/v2/` API.
pub fn router(store: Store, config: ApiConfig) -> Router {
    let state = AppState { store, config };
    Router::new()
        .route("/v2", get(base))
        .route("/v2/", get(base))
        .route("/v2/{*rest}", any(dispatch))
        .fallback(not_found)
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

async fn base() -> Response {
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
    let result = match route(rest) {
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            Code::Unsupported,
            format!("no such endpoint: {path}"),
        )),
        Some(target) => handle(&app, target, req).await,
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn handle(app: &AppState, target: Target<'_>, req: Request<Body>) -> ApiResult {
    let method = req.method().clone();
    match target {
        Target::Catalog => match method {
            Method::GET => paging::catalog(app, &req),
            m => Err(method_not_allowed(&m)),
        },
        Target::Tags(name) => {
            let repo = parse_repo(name)?;
            match method {
                Method::GET => paging::tags(app, &repo, &req),
                m => Err(method_not_allowed(&m)),
            }
        }
        Target::Referrers(name, digest) => {
            let repo = parse_repo(name)?;
            let digest = parse_digest(digest)?;
            match method {
                Method::GET => manifests::referrers(app, &repo, &digest, &req),
                m => Err(method_not_allowed(&m)),
            }
        }
        Target::Manifest(name, reference) => {
            let repo = parse_repo(name)?;
            manifests::handle(app, &repo, reference, req).await
        }
        Target::Blob(name, digest) => {
            let repo = parse_repo(name)?;
            let digest = parse_digest(digest)?;
            blobs::handle_blob(app, &repo, &digest, req).await
        }
        Target::UploadStart(name) => {
            let repo = parse_repo(name)?;
            match method {
                Method::POST => blobs::start_upload(app, &repo, req).await,
                m => Err(method_not_allowed(&m)),
            }
        }
        Target::Upload(name, id) => {
            let repo = parse_repo(name)?;
            blobs::handle_upload(app, &repo, id, req).await
        }
    }
}

/// Query string parameters as pairs (percent-decoded).
pub(crate) fn query_pairs(req: &Request<Body>) -> Vec<(String, String)> {
    let q = req.uri().query().unwrap_or("");
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

pub(crate) fn query_param(req: &Request<Body>, key: &str) -> Option<String> {
    query_pairs(req)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests;
