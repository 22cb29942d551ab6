//! Blob endpoints: HEAD/GET (with `Range`), DELETE, and upload sessions (POST, PATCH, PUT,
//! GET status, DELETE cancel, cross-repository mount).

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use stowage_core::{Actor, Digest, RepoName};
use stowage_store::UploadStatus;

use crate::error::{ApiError, ApiResult, Code};
use crate::{method_not_allowed, parse_digest, parse_repo, query_param, AppState};

pub(crate) async fn handle_blob(
    app: &AppState,
    actor: &Actor,
    repo: &RepoName,
    digest: &Digest,
    req: Request<Body>,
) -> ApiResult {
    match *req.method() {
        Method::HEAD => {
            let info = app.store.stat_blob(repo, digest).await?;
            Ok((
                StatusCode::OK,
                [
                    (header::CONTENT_LENGTH, info.size.to_string()),
                    (header::CONTENT_TYPE, "application/octet-stream".into()),
                    (header::ACCEPT_RANGES, "bytes".into()),
                    (header::ETAG, format!("\"{digest}\"")),
                    (
                        header::HeaderName::from_static("docker-content-digest"),
                        digest.to_string(),
                    ),
                ],
            )
                .into_response())
        }
        Method::GET => get_blob(app, repo, digest, req.headers()).await,
        Method::DELETE => {
            app.store.delete_blob(actor, repo, digest).await?;
            Ok((StatusCode::ACCEPTED, [(header::CONTENT_LENGTH, "0")]).into_response())
        }
        ref m => Err(method_not_allowed(m)),
    }
}

/// Parses a `Range` header against a blob of `size` bytes (see [`stowage_core::range::blob_range`]).
fn parse_range(headers: &HeaderMap, size: u64) -> ApiResult<Option<std::ops::Range<u64>>> {
    let Some(value) = headers.get(header::RANGE) else {
        return Ok(None);
    };
    let bad = || {
        ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            Code::RangeInvalid,
            format!("unsatisfiable range {value:?} for a blob of {size} bytes"),
        )
        .with_header("content-range", format!("bytes */{size}"))
    };
    let text = value.to_str().map_err(|_| bad())?;
    stowage_core::range::blob_range(text, size).map_err(|_| bad())
}

async fn get_blob(
    app: &AppState,
    repo: &RepoName,
    digest: &Digest,
    headers: &HeaderMap,
) -> ApiResult {
    let info = app.store.stat_blob(repo, digest).await?;
    let range = parse_range(headers, info.size)?;
    let read = app.store.read_stat_blob(&info, range.clone()).await?;
    let len = read.range.end - read.range.start;
    let mut builder = Response::builder()
        .header(header::CONTENT_LENGTH, len)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, format!("\"{digest}\""))
        .header("docker-content-digest", digest.to_string());
    builder = match range {
        Some(r) => builder.status(StatusCode::PARTIAL_CONTENT).header(
            header::CONTENT_RANGE,
            format!("bytes {}-{}/{}", r.start, r.end - 1, read.size),
        ),
        None => builder.status(StatusCode::OK),
    };
    builder.body(Body::from_stream(read.stream)).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            Code::Unknown,
            e.to_string(),
        )
    })
}

fn upload_location(repo: &RepoName, id: &str) -> String {
    format!("/v2/{repo}/blobs/uploads/{id}")
}

fn range_header(size: u64) -> String {
    // The spec's Range is inclusive; an empty upload reports 0-0 (as Distribution does).
    if size == 0 {
        "0-0".into()
    } else {
        format!("0-{}", size - 1)
    }
}

fn upload_response(status: StatusCode, repo: &RepoName, st: &UploadStatus) -> Response {
    (
        status,
        [
            (header::LOCATION, upload_location(repo, &st.id)),
            (header::RANGE, range_header(st.size)),
            (header::CONTENT_LENGTH, "0".into()),
            (
                header::HeaderName::from_static("docker-upload-uuid"),
                st.id.clone(),
            ),
        ],
    )
        .into_response()
}

fn created_blob(repo: &RepoName, digest: &Digest) -> Response {
    (
        StatusCode::CREATED,
        [
            (header::LOCATION, format!("/v2/{repo}/blobs/{digest}")),
            (header::CONTENT_LENGTH, "0".into()),
            (
                header::HeaderName::from_static("docker-content-digest"),
                digest.to_string(),
            ),
        ],
    )
        .into_response()
}

/// Checks a declared `Content-Length` against what a `Content-Range` says.
fn content_length(headers: &HeaderMap) -> ApiResult<Option<u64>> {
    match headers.get(header::CONTENT_LENGTH) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .map(Some)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    Code::SizeInvalid,
                    "Content-Length is not a number",
                )
            }),
    }
}

/// POST `/v2/<name>/blobs/uploads/`: monolithic (`?digest=`), mount (`?mount=&from=`), or a
/// new session.
pub(crate) async fn start_upload(
    app: &AppState,
    id: &stowage_auth::authority::Identity,
    actor: &Actor,
    repo: &RepoName,
    req: Request<Body>,
) -> ApiResult {
    if let Some(mount) = query_param(&req, "mount") {
        let digest = parse_digest(&mount)?;
        // A mount needs pull on the source: without it the client gets a fresh upload, exactly
        // as when the source lacks the blob, so nothing about the source is revealed.
        let from = match query_param(&req, "from") {
            Some(f) => match parse_repo(&f) {
                Ok(from) => {
                    let may = app
                        .auth
                        .allowed(id, &from, stowage_core::Action::Pull)
                        .map_err(|e| {
                            tracing::error!(error = %e, "deciding mount access");
                            ApiError::internal("deciding access")
                        })?;
                    may.then_some(from)
                }
                Err(_) => None,
            },
            None => None,
        };
        if let Some(from) = from {
            if app
                .store
                .mount_blob(actor, repo, &from, &digest)
                .await?
                .is_some()
            {
                return Ok(created_blob(repo, &digest));
            }
        }
        // Fall back to a normal upload session (202), as the spec allows.
        let st = app.store.start_upload(actor, repo).await?;
        return Ok(upload_response(StatusCode::ACCEPTED, repo, &st));
    }
    if let Some(d) = query_param(&req, "digest") {
        let digest = parse_digest(&d)?;
        let declared = content_length(req.headers())?;
        let body = req.into_body().into_data_stream();
        let info = app.store.put_blob(actor, repo, &digest, body).await?;
        if let Some(n) = declared {
            if n != info.size {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    Code::SizeInvalid,
                    format!("Content-Length {n} but {} bytes received", info.size),
                ));
            }
        }
        return Ok(created_blob(repo, &digest));
    }
    let st = app.store.start_upload(actor, repo).await?;
    Ok(upload_response(StatusCode::ACCEPTED, repo, &st))
}

/// Parses an upload chunk's `Content-Range` (see [`stowage_core::range::content_range`]).
fn content_range(headers: &HeaderMap) -> ApiResult<Option<(u64, u64)>> {
    let Some(v) = headers.get(header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let bad = || {
        ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            Code::RangeInvalid,
            format!("malformed Content-Range {v:?}"),
        )
    };
    let s = v.to_str().map_err(|_| bad())?;
    stowage_core::range::content_range(s)
        .map(Some)
        .map_err(|_| bad())
}

/// `/v2/<name>/blobs/uploads/<id>`: GET status, PATCH chunk, PUT finish, DELETE cancel.
pub(crate) async fn handle_upload(
    app: &AppState,
    actor: &Actor,
    repo: &RepoName,
    id: &str,
    req: Request<Body>,
) -> ApiResult {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            Code::BlobUploadUnknown,
            format!("upload {id:?} unknown"),
        ));
    }
    match req.method().clone() {
        Method::GET => {
            let st = app.store.upload_status(actor, repo, id).await?;
            Ok(upload_response(StatusCode::NO_CONTENT, repo, &st))
        }
        Method::PATCH => {
            let range = content_range(req.headers())?;
            let declared = content_length(req.headers())?;
            if let (Some((a, b)), Some(n)) = (range, declared) {
                // b >= a is checked by the parser; the length may still not fit in a u64.
                if (b - a).checked_add(1) != Some(n) {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        Code::SizeInvalid,
                        format!("Content-Range {a}-{b} does not match Content-Length {n}"),
                    ));
                }
            }
            let body = req.into_body().into_data_stream();
            let st = app
                .store
                .append_upload(actor, repo, id, range.map(|(a, _)| a), body)
                .await?;
            Ok(upload_response(StatusCode::ACCEPTED, repo, &st))
        }
        Method::PUT => {
            let d = query_param(&req, "digest").ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    Code::DigestInvalid,
                    "the digest query parameter is required to finish an upload",
                )
            })?;
            let digest = parse_digest(&d)?;
            let range = content_range(req.headers())?;
            let body = req.into_body().into_data_stream();
            if let Some((a, _)) = range {
                let st = app.store.upload_status(actor, repo, id).await?;
                if a != st.size {
                    return Err(stowage_store::StoreError::RangeInvalid {
                        got: a,
                        expected: st.size,
                    }
                    .into());
                }
            }
            app.store
                .finish_upload(actor, repo, id, &digest, Some(body))
                .await?;
            Ok(created_blob(repo, &digest))
        }
        Method::DELETE => {
            app.store.cancel_upload(actor, repo, id).await?;
            Ok((StatusCode::NO_CONTENT, [(header::CONTENT_LENGTH, "0")]).into_response())
        }
        m => Err(method_not_allowed(&m)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn h(range: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(header::RANGE, range.parse().unwrap());
        m
    }

    /// The header wrapper: no header is no range, a parsed one passes through, and a bad
    /// one is 416 with the blob's size (the grammar itself is tested in `stowage_core::range`).
    #[test]
    fn range_header_maps_to_http() {
        assert_eq!(parse_range(&HeaderMap::new(), 10).unwrap(), None);
        assert_eq!(parse_range(&h("bytes=0-4"), 10).unwrap(), Some(0..5));
        let e = parse_range(&h("bytes=10-"), 10).unwrap_err();
        assert_eq!(e.status, StatusCode::RANGE_NOT_SATISFIABLE);
        assert!(e
            .headers
            .iter()
            .any(|(n, v)| *n == "content-range" && v == "bytes */10"));
    }
}
