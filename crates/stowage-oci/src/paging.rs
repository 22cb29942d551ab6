//! Paged listings: `/v2/<name>/tags/list` and `/v2/_catalog`, with `n`, `last` and `Link`.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use stowage_core::RepoName;

use crate::error::{ApiError, ApiResult, Code};
use crate::{query_param, AppState};

/// `n` and `last` from the query. `n` is capped at the configured maximum.
pub(crate) fn page_params(
    app: &AppState,
    req: &Request<Body>,
) -> ApiResult<(usize, Option<String>)> {
    let n = match query_param(req, "n") {
        None => app.config.max_page,
        Some(s) => s.parse::<usize>().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                Code::Unsupported,
                format!("n must be a non-negative integer, got {s:?}"),
            )
        })?,
    };
    let last = query_param(req, "last").filter(|s| !s.is_empty());
    Ok((n.min(app.config.max_page), last))
}

fn link(path: &str, n: usize, last: &str) -> String {
    format!("<{path}?n={n}&last={last}>; rel=\"next\"")
}

fn json_page(body: serde_json::Value, next: Option<String>) -> Response {
    let mut resp = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response();
    if let Some(l) = next.and_then(|l| l.parse().ok()) {
        resp.headers_mut().insert(header::LINK, l);
    }
    resp
}

/// GET `/v2/<name>/tags/list` with its page parameters (`n`, `last`) already read.
pub(crate) async fn tags(
    app: &AppState,
    repo: &RepoName,
    n: usize,
    last: Option<String>,
) -> ApiResult {
    // Ask for one more than the page to know whether a next page exists.
    let mut tags = app
        .store
        .tags(repo, last.as_deref(), n.saturating_add(1))
        .await?;
    let more = tags.len() > n;
    tags.truncate(n);
    let next = match (more, tags.last()) {
        (true, Some(l)) => Some(link(&format!("/v2/{repo}/tags/list"), n, l)),
        _ => None,
    };
    Ok(json_page(
        serde_json::json!({"name": repo.as_str(), "tags": tags}),
        next,
    ))
}

pub(crate) async fn catalog(
    app: &AppState,
    id: &stowage_auth::authority::Identity,
    (n, last): (usize, Option<String>),
) -> ApiResult {
    if app.auth.catalog_filter(id).is_none() {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            Code::Unauthorized,
            "authentication required",
        ));
    }
    // The listing reads the index and the accounts (one decision per project): off the
    // async threads.
    let (app2, id) = (app.clone(), id.clone());
    let mut repos = tokio::task::spawn_blocking(move || {
        let filter = app2
            .auth
            .catalog_filter(&id)
            .ok_or_else(|| ApiError::internal("listing repositories"))?;
        app2.store
            .catalog_where(
                last.as_deref(),
                n.saturating_add(1),
                |p| filter.project(p),
                |r| filter.visible(r),
            )
            .map_err(ApiError::from)
    })
    .await
    .map_err(|e| {
        tracing::error!(error = %e, "catalog task");
        ApiError::internal("listing repositories")
    })??;
    let more = repos.len() > n;
    repos.truncate(n);
    let next = match (more, repos.last()) {
        (true, Some(l)) => Some(link("/v2/_catalog", n, l)),
        _ => None,
    };
    Ok(json_page(serde_json::json!({"repositories": repos}), next))
}
