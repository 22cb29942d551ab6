//! Who may use the admin listener, decided once per call before any admin, account or
//! operator replication handler runs.
//!
//! An admin identity is one of:
//! * a client certificate (verified against `[admin.tls] client_ca`) whose identity
//!   `[[admin.cert_users]]` maps to a user with the system-admin flag;
//! * a bearer token from the built-in token service whose subject has the flag now;
//! * Basic credentials of such a user (for `basic` mode, where no token service runs).
//!
//! With authentication off (`[auth] mode = "none"`, only accepted on loopback) and the admin
//! listener on loopback, calls without credentials are accepted as `anonymous`, as before.
//! Every refused call is audited.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use stowage_auth::authority::{AuthFailure, Authority, Caller, Identity, Mode};
use stowage_auth::challenge::{parse_authorization, Credentials};
use stowage_auth::net::ConnInfo;
use stowage_core::Actor;
use stowage_index::{AuditAction, AuditOutcome};
use stowage_store::AccountStore;
use tonic::Status;

/// Decides admin calls.
#[derive(Debug)]
pub struct AdminGate {
    authority: Arc<Authority>,
    accounts: AccountStore,
    /// `(certificate identity, user)` pairs.
    cert_users: Vec<(String, String)>,
    /// Calls without credentials are accepted (auth off, loopback listener).
    open: bool,
}

impl AdminGate {
    /// A gate; `listener_loopback` says whether the admin listener is on loopback.
    pub fn new(
        authority: Arc<Authority>,
        accounts: AccountStore,
        cert_users: Vec<(String, String)>,
        listener_loopback: bool,
    ) -> Self {
        let open = authority.mode() == Mode::Open && listener_loopback;
        Self {
            authority,
            accounts,
            cert_users,
            open,
        }
    }

    fn is_admin_user(&self, user: &str) -> Result<bool, Status> {
        self.accounts
            .user(user)
            .map(|u| u.is_some_and(|u| u.system_admin))
            .map_err(|e| {
                tracing::error!(error = %e, "reading a user for the admin check");
                Status::internal("checking the caller's identity")
            })
    }

    /// The admin actor behind a call, or the status refusing it.
    pub async fn check(
        &self,
        headers: &http::HeaderMap,
        conn: Option<&ConnInfo>,
    ) -> Result<Actor, Status> {
        let addr = conn.map(|c| c.remote);
        if let Some(cert) = conn.and_then(|c| c.client_cert.as_ref()) {
            if let Some((_, user)) = self.cert_users.iter().find(|(id, _)| cert.matches(id)) {
                if self.is_admin_user(user)? {
                    return Ok(Actor::new(
                        stowage_core::Principal::User(user.clone()),
                        addr,
                    ));
                }
                return Err(Status::permission_denied(format!(
                    "certificate {cert} maps to user {user}, who is not a system admin"
                )));
            }
        }
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            if self.open {
                return Ok(Actor::anonymous(addr));
            }
            return Err(Status::unauthenticated(
                "the admin service needs an admin identity: a token (--token), a password \
                 (--user), or a mapped client certificate (--cert/--key)",
            ));
        };
        let creds = parse_authorization(value)
            .map_err(|e| Status::unauthenticated(format!("malformed credentials: {e}")))?;
        let caller = match creds {
            Credentials::Bearer(token) => self
                .authority
                .check_bearer(&token)
                .map_err(|e| Status::unauthenticated(e.to_string()))?,
            Credentials::Basic { user, password } => self
                .authority
                .check_password(&user, &password, addr.map(|a| a.ip()))
                .await
                .map_err(|e| match e {
                    AuthFailure::Throttled(_) | AuthFailure::Busy => {
                        Status::resource_exhausted(e.to_string())
                    }
                    other => Status::unauthenticated(other.to_string()),
                })?,
        };
        let id = Identity { caller, addr };
        let admin = self.authority.is_system_admin(&id).map_err(|e| {
            tracing::error!(error = %e, "admin check");
            Status::internal("checking the caller's identity")
        })?;
        if !admin {
            let who = match &id.caller {
                Caller::Token { claims, .. } if !claims.allows("registry", "admin", "*") => {
                    return Err(Status::permission_denied(
                        "the token does not grant registry:admin:* (`stowage token` without \
                         --scope asks for it; it is granted to system admins only)",
                    ));
                }
                Caller::Token { claims, .. } => claims.sub.clone(),
                _ => id.actor().principal.name().to_string(),
            };
            return Err(Status::permission_denied(format!(
                "{who} is not a system admin"
            )));
        }
        Ok(id.actor())
    }

    async fn refused(&self, conn: Option<&ConnInfo>, path: &str, status: &Status) {
        let addr = conn.map(|c| c.remote);
        let auditor = self.accounts.auditor();
        auditor
            .record(
                self.accounts
                    .audit_entry(&Actor::anonymous(addr), AuditAction::Admin)
                    .target(path.to_string())
                    .outcome(AuditOutcome::Denied)
                    .detail(status.message().to_string()),
            )
            .await;
    }
}

/// A gRPC service behind the [`AdminGate`]: the caller's actor is put in the request's
/// extensions for the handler; a refused call never reaches it.
#[derive(Clone, Debug)]
pub struct Gated<S> {
    inner: S,
    gate: Arc<AdminGate>,
}

impl<S> Gated<S> {
    /// `inner` behind `gate`.
    pub fn new(inner: S, gate: Arc<AdminGate>) -> Self {
        Self { inner, gate }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for Gated<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower::Service<http::Request<B>> for Gated<S>
where
    S: tower::Service<
            http::Request<B>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        // The clone that was polled ready serves this call; a fresh clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let gate = self.gate.clone();
        Box::pin(async move {
            let conn = req.extensions().get::<ConnInfo>().cloned();
            match gate.check(req.headers(), conn.as_ref()).await {
                Ok(actor) => {
                    req.extensions_mut().insert(actor);
                    inner.call(req).await
                }
                Err(status) => {
                    gate.refused(conn.as_ref(), req.uri().path(), &status).await;
                    Ok(status.into_http())
                }
            }
        })
    }
}

/// The admin actor the gate put on a request (a handler reached without the gate, which
/// only tests do, acts as the daemon).
pub fn actor_of<T>(req: &tonic::Request<T>) -> Actor {
    req.extensions()
        .get::<Actor>()
        .cloned()
        .unwrap_or_else(|| Actor::system("admin"))
}
