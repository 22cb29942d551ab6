//! Manifest endpoints (HEAD/GET/PUT/DELETE by tag or digest) and the referrers API.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use stowage_core::{Actor, Digest, Reference, RepoName, Tag, MAX_MANIFEST_BYTES};

use crate::error::{ApiError, ApiResult, Code};
use crate::{method_not_allowed, parse_digest, query_pairs, AppState};

/// Most `tag` parameters one manifest push takes (the spec asks for at least 10).
pub(crate) const MAX_TAG_PARAMS: usize = 64;

fn parse_reference(s: &str, for_put: bool) -> ApiResult<Reference> {
    if s.contains(':') {
        return Ok(Reference::Digest(parse_digest(s)?));
    }
    Reference::parse(s).map_err(|e| {
        if for_put {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                Code::ManifestInvalid,
                e.to_string(),
            )
        } else {
            ApiError::new(StatusCode::NOT_FOUND, Code::ManifestUnknown, e.to_string())
        }
    })
}

pub(crate) async fn handle(
    app: &AppState,
    actor: &Actor,
    repo: &RepoName,
    reference: &str,
    req: Request<Body>,
) -> ApiResult {
    let method = req.method().clone();
    let reference = parse_reference(reference, method == Method::PUT)?;
    match method {
        Method::HEAD => {
            let (digest, media_type, size) = app.store.stat_manifest(repo, &reference).await?;
            Ok(manifest_headers(StatusCode::OK, &digest, &media_type, size).into_response())
        }
        Method::GET => {
            let m = app.store.get_manifest(repo, &reference).await?;
            let size = m.bytes.len() as u64;
            let mut resp =
                manifest_headers(StatusCode::OK, &m.digest, &m.media_type, size).into_response();
            *resp.body_mut() = Body::from(m.bytes);
            Ok(resp)
        }
        Method::PUT => put(app, actor, repo, &reference, req).await,
        Method::DELETE => {
            app.store.delete_manifest(actor, repo, &reference).await?;
            Ok((StatusCode::ACCEPTED, [(header::CONTENT_LENGTH, "0")]).into_response())
        }
        m => Err(method_not_allowed(&m)),
    }
}

fn manifest_headers(
    status: StatusCode,
    digest: &Digest,
    media_type: &str,
    size: u64,
) -> (StatusCode, [(header::HeaderName, String); 4]) {
    (
        status,
        [
            (header::CONTENT_TYPE, media_type.to_string()),
            (header::CONTENT_LENGTH, size.to_string()),
            (header::ETAG, format!("\"{digest}\"")),
            (
                header::HeaderName::from_static("docker-content-digest"),
                digest.to_string(),
            ),
        ],
    )
}

async fn put(
    app: &AppState,
    actor: &Actor,
    repo: &RepoName,
    reference: &Reference,
    req: Request<Body>,
) -> ApiResult {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            Code::ManifestInvalid,
            format!("manifest exceeds the limit of {MAX_MANIFEST_BYTES} bytes"),
        )
    };
    let tags = tag_params(&req, reference)?;
    let bytes = read_limited(req.into_body(), MAX_MANIFEST_BYTES)
        .await?
        .ok_or_else(too_large)?;
    let out = match reference {
        Reference::Digest(d) if !tags.is_empty() => {
            app.store
                .put_manifest_tagged(actor, repo, d, &tags, content_type.as_deref(), bytes)
                .await?
        }
        _ => {
            app.store
                .put_manifest(actor, repo, reference, content_type.as_deref(), bytes)
                .await?
        }
    };
    let mut resp = (
        StatusCode::CREATED,
        [
            (
                header::LOCATION,
                format!("/v2/{repo}/manifests/{}", out.digest),
            ),
            (header::CONTENT_LENGTH, "0".to_string()),
            (
                header::HeaderName::from_static("docker-content-digest"),
                out.digest.to_string(),
            ),
        ],
    )
        .into_response();
    if !tags.is_empty() {
        // The tags applied, so that a client knows the registry took the parameters (one
        // that does not see the header falls back to pushing each tag).
        let names: Vec<&str> = tags.iter().map(Tag::as_str).collect();
        if let Ok(v) = names.join(", ").parse() {
            resp.headers_mut().insert("oci-tag", v);
        }
    }
    if let Some(subject) = out.subject {
        if let Ok(v) = subject.to_string().parse() {
            resp.headers_mut().insert("oci-subject", v);
        }
    }
    Ok(resp)
}

/// The `tag` query parameters of a manifest push, validated and without repeats. They are
/// taken only with a push by digest (a push by tag names its one tag in the path); a bad one
/// refuses the whole push (`TAG_INVALID`), more than [`MAX_TAG_PARAMS`] answers 414.
fn tag_params(req: &Request<Body>, reference: &Reference) -> ApiResult<Vec<Tag>> {
    let raw: Vec<String> = query_pairs(req)
        .into_iter()
        .filter(|(k, _)| k == "tag")
        .map(|(_, v)| v)
        .collect();
    if raw.is_empty() {
        return Ok(Vec::new());
    }
    let invalid = |status, msg: String| ApiError::new(status, Code::TagInvalid, msg);
    if let Reference::Tag(t) = reference {
        return Err(invalid(
            StatusCode::BAD_REQUEST,
            format!("tag parameters are taken only with a push by digest, not with tag {t}"),
        ));
    }
    if raw.len() > MAX_TAG_PARAMS {
        return Err(invalid(
            StatusCode::URI_TOO_LONG,
            format!(
                "{} tag parameters; a push takes at most {MAX_TAG_PARAMS}",
                raw.len()
            ),
        ));
    }
    let mut tags: Vec<Tag> = Vec::with_capacity(raw.len());
    for v in raw {
        let t = Tag::parse(&v).map_err(|e| invalid(StatusCode::BAD_REQUEST, e.to_string()))?;
        if !tags.contains(&t) {
            tags.push(t);
        }
    }
    Ok(tags)
}

/// GET `/v2/<name>/referrers/<digest>[?artifactType=...]`: an image index of referrers.
/// GET `/v2/<name>/referrers/<digest>` with its `artifactType` filter already read.
pub(crate) async fn referrers(
    app: &AppState,
    repo: &RepoName,
    subject: &Digest,
    filter: Option<String>,
) -> ApiResult {
    let manifests = app
        .store
        .referrers(repo, subject, filter.as_deref())
        .await?;
    let body = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": stowage_core::media::OCI_INDEX,
        "manifests": manifests,
    });
    let mut resp = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, stowage_core::media::OCI_INDEX);
    if filter.is_some() {
        resp = resp.header("oci-filters-applied", "artifactType");
    }
    resp.body(Body::from(body.to_string())).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            Code::Unknown,
            e.to_string(),
        )
    })
}

/// Bodies this far past the limit are still read (and discarded) before answering 413, so that
/// the client, which is still sending, reads the error instead of a reset connection. Beyond it
/// the connection is dropped.
const DRAIN_LIMIT: usize = 64 * 1024 * 1024;

/// Reads a body of at most `limit` bytes; `Ok(None)` when it is larger.
async fn read_limited(body: Body, limit: usize) -> ApiResult<Option<Vec<u8>>> {
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                Code::ManifestInvalid,
                format!("reading manifest body: {e}"),
            )
        })?;
        total += chunk.len();
        if total <= limit {
            buf.extend_from_slice(&chunk);
        } else if total > DRAIN_LIMIT {
            break;
        }
    }
    Ok((total <= limit).then_some(buf))
}
