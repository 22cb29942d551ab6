//! The built-in token service (Distribution token specification), at the authority's token
//! path:
//!
//! * `GET` with optional Basic credentials and `service`, `scope` (repeatable, each possibly
//!   several scopes separated by spaces), `account`, `offline_token`, `client_id`;
//! * `POST` (`application/x-www-form-urlencoded`, the OAuth2 flow): `grant_type=password` with
//!   `username` and `password`, or `grant_type=refresh_token` with `refresh_token`; plus
//!   `service`, `scope`, `client_id`, `access_type=offline`.
//!
//! The answer is `{token, access_token, expires_in, issued_at[, refresh_token]}`. What is
//! granted is the intersection of what was asked and what the subject may do; a partial or
//! empty grant is not an error (the registry then refuses what the token lacks). Every issue
//! and every refused login is audited; credentials never are.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use stowage_auth::authority::{AuthFailure, TokenGrant, TokenRequest, TokenServiceError};
use stowage_auth::challenge::{parse_authorization, Credentials};
use stowage_core::{Actor, Principal};
use stowage_index::{AuditAction, AuditOutcome};

use crate::error::{ApiError, Code};
use crate::{access, AppState};

/// Largest form body accepted.
const MAX_FORM: usize = 16 * 1024;

fn pairs(text: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(text)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn first(pairs: &[(String, String)], key: &str) -> Option<String> {
    pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
}

fn all(pairs: &[(String, String)], key: &str) -> Vec<String> {
    pairs
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .collect()
}

/// `GET /token`.
pub(crate) async fn get(State(app): State<AppState>, req: Request<Body>) -> Response {
    let q = pairs(req.uri().query().unwrap_or("").as_bytes());
    let credentials = match req.headers().get(header::AUTHORIZATION) {
        None => None,
        Some(v) => match parse_authorization(v) {
            Ok(Credentials::Basic { user, password }) => Some((user, password)),
            // A bearer token is no credential for the token service.
            Ok(Credentials::Bearer(_)) => None,
            Err(e) => {
                let (addr, _) = access::conn(&req);
                return refused(&app, addr, None, &format!("malformed credentials: {e}")).await;
            }
        },
    };
    // `account` names who the client logs in as; it must be the Basic user when both are
    // given (a client cannot ask for a token for someone else).
    if let (Some(account), Some((user, _))) = (first(&q, "account"), credentials.as_ref()) {
        if !account.is_empty() && &account != user {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                Code::Unsupported,
                "account does not match the credentials",
            )
            .into_response();
        }
    }
    let (addr, _) = access::conn(&req);
    let tr = TokenRequest {
        credentials,
        refresh_token: None,
        from: addr.map(|a| a.ip()),
        service: first(&q, "service"),
        scopes: all(&q, "scope"),
        offline: first(&q, "offline_token").is_some_and(|v| v == "true"),
    };
    serve(&app, addr, tr, false).await
}

/// `POST /token` (OAuth2).
pub(crate) async fn post(State(app): State<AppState>, req: Request<Body>) -> Response {
    let (parts, body) = req.into_parts();
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) if buf.len() + c.len() <= MAX_FORM => buf.extend_from_slice(&c),
            Ok(_) => {
                return oauth_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "invalid_request",
                    "form too large",
                )
            }
            Err(_) => {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "body broke off")
            }
        }
    }
    let addr = parts
        .extensions
        .get::<stowage_auth::net::ConnInfo>()
        .map(|c| c.remote);
    let f = pairs(&buf);
    let scopes = all(&f, "scope");
    let base = TokenRequest {
        service: first(&f, "service"),
        scopes,
        offline: first(&f, "access_type").is_some_and(|v| v == "offline"),
        from: addr.map(|a| a.ip()),
        ..TokenRequest::default()
    };
    let tr = match first(&f, "grant_type").as_deref() {
        Some("password") => {
            let (Some(user), Some(password)) = (first(&f, "username"), first(&f, "password"))
            else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "grant_type=password needs username and password",
                );
            };
            TokenRequest {
                credentials: Some((user, password)),
                ..base
            }
        }
        Some("refresh_token") => {
            let Some(rt) = first(&f, "refresh_token") else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "grant_type=refresh_token needs refresh_token",
                );
            };
            TokenRequest {
                refresh_token: Some(rt),
                ..base
            }
        }
        _ => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "grant_type must be password or refresh_token",
            )
        }
    };
    serve(&app, addr, tr, true).await
}

async fn serve(
    app: &AppState,
    addr: Option<std::net::SocketAddr>,
    tr: TokenRequest,
    oauth: bool,
) -> Response {
    // The token service answers under the API's request rate, keyed by address: every
    // request to it may cost a password check and an audit entry.
    let asking = stowage_auth::authority::Identity {
        caller: stowage_auth::authority::Caller::Anonymous,
        addr,
    };
    if let Some(r) = app.rate_limited(&asking) {
        return r;
    }
    let user = tr.credentials.as_ref().map(|(u, _)| u.clone());
    match app.auth.issue(&tr).await {
        Ok(grant) if grant.subject.is_empty() && grant.granted.is_empty() => {
            // Nobody asked for nothing: no operation to audit.
            respond(&grant)
        }
        Ok(grant) => {
            let actor = Actor::new(
                if grant.subject.is_empty() {
                    Principal::Anonymous
                } else if grant.subject.starts_with("robot$") {
                    Principal::Robot(grant.subject.clone())
                } else {
                    Principal::User(grant.subject.clone())
                },
                addr,
            );
            let scopes: Vec<String> = grant
                .granted
                .iter()
                .map(|a| format!("{}:{}:{}", a.typ, a.name, a.actions.join(",")))
                .collect();
            app.store
                .auditor()
                .record(
                    app.store
                        .audit_entry(&actor, AuditAction::TokenIssue)
                        .detail(if scopes.is_empty() {
                            "no access".to_string()
                        } else {
                            scopes.join(" ")
                        }),
                )
                .await;
            respond(&grant)
        }
        Err(TokenServiceError::Unauthorized(
            f @ (AuthFailure::Throttled(_) | AuthFailure::Busy),
        )) => {
            let (status, wait) = match f {
                AuthFailure::Throttled(secs) => (StatusCode::TOO_MANY_REQUESTS, secs),
                _ => (StatusCode::SERVICE_UNAVAILABLE, 1),
            };
            ApiError::new(status, Code::TooManyRequests, f.to_string())
                .with_header("retry-after", wait.to_string())
                .into_response()
        }
        Err(TokenServiceError::Unauthorized(f)) => {
            let why = match &f {
                AuthFailure::InvalidToken(e) => format!("refresh token refused: {e}"),
                other => other.to_string(),
            };
            if oauth {
                let _ = refused(app, addr, user.as_deref(), &why).await;
                oauth_error(StatusCode::UNAUTHORIZED, "invalid_grant", &f.to_string())
            } else {
                refused(app, addr, user.as_deref(), &why).await
            }
        }
        Err(TokenServiceError::InvalidRequest(m)) => {
            if oauth {
                oauth_error(StatusCode::BAD_REQUEST, "invalid_request", &m)
            } else {
                ApiError::new(StatusCode::BAD_REQUEST, Code::Unsupported, m).into_response()
            }
        }
        Err(TokenServiceError::NotOffered) => ApiError::new(
            StatusCode::NOT_FOUND,
            Code::Unsupported,
            "no token service here",
        )
        .into_response(),
        Err(TokenServiceError::Internal(m)) => {
            let e = ApiError::internal("issuing a token");
            tracing::error!(error = %m, reference = e.reference.as_deref().unwrap_or_default(), "token service");
            e.into_response()
        }
    }
}

/// A refused login: audited (with the account name given, never the password) and answered
/// 401 with a Basic challenge, which is what clients expect from a token endpoint.
async fn refused(
    app: &AppState,
    addr: Option<std::net::SocketAddr>,
    user: Option<&str>,
    why: &str,
) -> Response {
    let mut entry = app
        .store
        .audit_entry(&Actor::anonymous(addr), AuditAction::Login)
        .outcome(AuditOutcome::Denied)
        .detail(why.to_string());
    if let Some(u) = user {
        entry.actor = format!(
            "user:{}",
            u.chars()
                .filter(|c| !c.is_control())
                .take(128)
                .collect::<String>()
        );
    }
    app.store.auditor().record(entry).await;
    let mut resp = ApiError::new(
        StatusCode::UNAUTHORIZED,
        Code::Unauthorized,
        "authentication required: the credentials were refused",
    )
    .into_response();
    if let Ok(v) = format!(
        "Basic realm=\"{} token service\"",
        app.auth.settings().service
    )
    .parse()
    {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

fn respond(grant: &TokenGrant) -> Response {
    let mut body = serde_json::json!({
        "token": grant.token,
        "access_token": grant.token,
        "expires_in": grant.expires_in,
        "issued_at": grant.issued_at,
    });
    if let Some(rt) = &grant.refresh_token {
        body["refresh_token"] = serde_json::Value::String(rt.clone());
    }
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body.to_string(),
    )
        .into_response()
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({"error": error, "error_description": description}).to_string(),
    )
        .into_response()
}
