//! The `Access` gRPC service (`proto/stowage/v1/access.proto`): users, roles, robots, project
//! settings and the audit log, for system admins (the [`crate::admin_auth`] gate runs first),
//! and the [`Directory`] that access control reads accounts through.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use stowage_auth::authority::Authority;
use stowage_auth::password;
use stowage_core::{Action, Role, UserRecord};
use stowage_index::{AuditAction, AuditFilter, AuditProblem, Index};
use stowage_rpc::v1 as pb;
use stowage_rpc::v1::access_server::{Access, AccessServer};
use stowage_store::{AccountStore, StoreError};
use tonic::{Request, Response, Status};

use crate::admin_auth::actor_of;

pub use stowage_oci::StoreDirectory;

/// The service.
#[derive(Debug, Clone)]
pub struct AccessService {
    accounts: AccountStore,
    authority: Arc<Authority>,
    /// Read access to the audit log.
    index: Arc<IndexReader>,
}

/// Reads the audit log on blocking threads.
#[derive(Debug)]
pub struct IndexReader(pub stowage_store::Store);

impl IndexReader {
    fn index(&self) -> &Index {
        self.0.index()
    }
}

/// The status for a store error, saying what was being done.
fn status(doing: &str, e: StoreError) -> Status {
    let msg = format!("{doing}: {e}");
    match e {
        StoreError::NameInvalid(_) => Status::invalid_argument(msg),
        StoreError::Conflict(_) => Status::already_exists(msg),
        StoreError::NotFound(_) => Status::not_found(msg),
        _ => {
            tracing::error!(error = %msg, "access request failed");
            Status::internal(format!("{doing}: internal error (see the daemon's log)"))
        }
    }
}

fn role_of(s: &str) -> Result<Role, Status> {
    Role::parse(s).ok_or_else(|| {
        Status::invalid_argument(format!(
            "role {s:?} is not guest, developer, maintainer or admin"
        ))
    })
}

impl AccessService {
    /// The service over the daemon's accounts.
    pub fn new(store: stowage_store::Store, authority: Arc<Authority>) -> Self {
        Self {
            accounts: store.accounts(),
            authority,
            index: Arc::new(IndexReader(store)),
        }
    }

    /// The tonic service.
    pub fn into_server(self) -> AccessServer<Self> {
        AccessServer::new(self)
    }

    fn user_info(&self, name: &str, rec: Option<&UserRecord>) -> Result<pb::UserInfo, Status> {
        let roles = self
            .accounts
            .grants_of(name)
            .map_err(|e| status("reading roles", e))?
            .into_iter()
            .map(|(project, role)| pb::RoleInProject {
                project,
                role: role.to_string(),
            })
            .collect();
        Ok(match rec {
            Some(r) => pb::UserInfo {
                name: name.to_string(),
                system_admin: r.system_admin,
                created_ms: r.created_ms,
                updated_ms: r.updated_ms,
                roles,
                source: "index".into(),
            },
            None => pb::UserInfo {
                name: name.to_string(),
                system_admin: false,
                created_ms: 0,
                updated_ms: 0,
                roles,
                source: "htpasswd".into(),
            },
        })
    }
}

type AuditStream = Pin<Box<dyn Stream<Item = Result<pb::AuditRecord, Status>> + Send>>;

/// An audit record as the RPC returns it (shared with the offline CLI).
pub fn record_to_proto(r: stowage_index::AuditRecord) -> pb::AuditRecord {
    let e = r.entry;
    pb::AuditRecord {
        seq: r.seq,
        ts_ms: e.ts_ms,
        actor: e.actor,
        addr: e.addr.unwrap_or_default(),
        action: e.action.as_str().to_string(),
        repository: e.repo.unwrap_or_default(),
        target: e.target.unwrap_or_default(),
        outcome: e.outcome.as_str().to_string(),
        detail: e.detail.unwrap_or_default(),
        prev_hash: hex::encode(r.prev),
        hash: hex::encode(r.hash),
    }
}

/// The audit filter of a query (shared with the offline CLI).
pub fn filter_of(q: &pb::QueryAuditRequest) -> Result<AuditFilter, String> {
    let action = match q.action.as_str() {
        "" => None,
        a => Some(AuditAction::parse(a).ok_or_else(|| {
            format!(
                "unknown action {a:?} (one of: {})",
                stowage_index::audit::ALL_ACTIONS
                    .iter()
                    .map(|(_, n)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?),
    };
    Ok(AuditFilter {
        since_ms: q.since_ms,
        until_ms: q.until_ms,
        actor: (!q.actor.is_empty()).then(|| q.actor.clone()),
        repo: (!q.repository.is_empty()).then(|| q.repository.clone()),
        action,
        after_seq: q.after_seq,
        limit: usize::try_from(q.limit).unwrap_or(usize::MAX),
    })
}

/// The verification report as the RPC returns it (shared with the offline CLI).
pub fn verify_to_proto(r: stowage_index::AuditVerifyReport) -> pb::VerifyAuditResponse {
    pb::VerifyAuditResponse {
        checked: r.checked,
        first_seq: r.first_seq,
        last_seq: r.last_seq,
        problems: r
            .problems
            .into_iter()
            .map(|p| match p {
                AuditProblem::Altered { seq } => pb::AuditProblem {
                    kind: "altered".into(),
                    seq,
                    to_seq: seq,
                    detail: "its bytes or its position do not match its hash".into(),
                },
                AuditProblem::Missing { from, to } => pb::AuditProblem {
                    kind: "missing".into(),
                    seq: from,
                    to_seq: to,
                    detail: "removed from the log".into(),
                },
                AuditProblem::BrokenLink { seq } => pb::AuditProblem {
                    kind: "broken_link".into(),
                    seq,
                    to_seq: seq,
                    detail: "its link to the entry before does not match".into(),
                },
                AuditProblem::Unreadable { seq, reason } => pb::AuditProblem {
                    kind: "unreadable".into(),
                    seq,
                    to_seq: seq,
                    detail: reason,
                },
                AuditProblem::BeyondHead { from, to } => pb::AuditProblem {
                    kind: "beyond_head".into(),
                    seq: from,
                    to_seq: to,
                    detail: "stored past the recorded end of the chain: the head was removed or rolled back".into(),
                },
                AuditProblem::AnchorUnexplained { seq } => pb::AuditProblem {
                    kind: "anchor_unexplained".into(),
                    seq,
                    to_seq: seq,
                    detail: "the chain starts after this entry but no audit_prune entry records removing the ones before".into(),
                },
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl Access for AccessService {
    async fn add_user(
        &self,
        req: Request<pb::AddUserRequest>,
    ) -> Result<Response<pb::UserInfo>, Status> {
        let actor = actor_of(&req);
        let r = req.into_inner();
        if !password::is_argon2id_hash(&r.password_hash) {
            return Err(Status::invalid_argument(
                "adding a user: password_hash must be an argon2id hash in PHC form",
            ));
        }
        self.accounts
            .add_user(&actor, &r.name, r.password_hash, r.system_admin)
            .await
            .map_err(|e| status(&format!("adding user {}", r.name), e))?;
        let rec = self
            .accounts
            .user(&r.name)
            .map_err(|e| status("reading the new user", e))?;
        Ok(Response::new(self.user_info(&r.name, rec.as_ref())?))
    }

    async fn update_user(
        &self,
        req: Request<pb::UpdateUserRequest>,
    ) -> Result<Response<pb::UserInfo>, Status> {
        let actor = actor_of(&req);
        let r = req.into_inner();
        if let Some(h) = &r.password_hash {
            if !password::is_argon2id_hash(h) {
                return Err(Status::invalid_argument(
                    "changing a user: password_hash must be an argon2id hash in PHC form",
                ));
            }
        }
        if r.system_admin == Some(false) && actor.principal.name() == r.name {
            return Err(Status::failed_precondition(
                "an admin cannot take its own system-admin flag away (ask another admin)",
            ));
        }
        let rec = self
            .accounts
            .update_user(&actor, &r.name, r.password_hash, r.system_admin)
            .await
            .map_err(|e| status(&format!("changing user {}", r.name), e))?;
        Ok(Response::new(self.user_info(&r.name, Some(&rec))?))
    }

    async fn delete_user(
        &self,
        req: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::AccessEmpty>, Status> {
        let actor = actor_of(&req);
        let r = req.into_inner();
        if actor.principal.name() == r.name {
            return Err(Status::failed_precondition(
                "an admin cannot remove itself (ask another admin)",
            ));
        }
        self.accounts
            .delete_user(&actor, &r.name)
            .await
            .map_err(|e| status(&format!("removing user {}", r.name), e))?;
        Ok(Response::new(pb::AccessEmpty {}))
    }

    async fn list_users(
        &self,
        _req: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let mut users = Vec::new();
        let listed = self
            .accounts
            .users()
            .map_err(|e| status("listing users", e))?;
        for (name, rec) in &listed {
            users.push(self.user_info(name, Some(rec))?);
        }
        if let Some(h) = self.authority.htpasswd() {
            for name in h.users() {
                if !listed.iter().any(|(n, _)| *n == name) {
                    users.push(self.user_info(&name, None)?);
                }
            }
        }
        Ok(Response::new(pb::ListUsersResponse { users }))
    }

    async fn grant_role(
        &self,
        req: Request<pb::GrantRoleRequest>,
    ) -> Result<Response<pb::AccessEmpty>, Status> {
        let actor = actor_of(&req);
        let r = req.into_inner();
        let role = role_of(&r.role)?;
        let known = self.authority.knows_user(&r.user).map_err(|e| {
            tracing::error!(error = %e, "granting a role");
            Status::internal("granting a role: reading accounts failed")
        })?;
        if !known {
            return Err(Status::not_found(format!(
                "granting a role: no user {} (in the index or the htpasswd file)",
                r.user
            )));
        }
        self.accounts
            .set_grant(&actor, &r.user, &r.project, role)
            .await
            .map_err(|e| {
                status(
                    &format!("granting {role} in {} to {}", r.project, r.user),
                    e,
                )
            })?;
        Ok(Response::new(pb::AccessEmpty {}))
    }

    async fn revoke_role(
        &self,
        req: Request<pb::RevokeRoleRequest>,
    ) -> Result<Response<pb::AccessEmpty>, Status> {
        let actor = actor_of(&req);
        let r = req.into_inner();
        self.accounts
            .revoke(&actor, &r.user, &r.project)
            .await
            .map_err(|e| status(&format!("revoking {}'s role in {}", r.user, r.project), e))?;
        Ok(Response::new(pb::AccessEmpty {}))
    }

    async fn create_robot(
        &self,
        req: Request<pb::CreateRobotRequest>,
    ) -> Result<Response<pb::CreateRobotResponse>, Status> {
        let actor = actor_of(&req);
        let r = req.into_inner();
        let actions = r
            .actions
            .iter()
            .map(|a| {
                Action::parse(a).ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "creating a robot: action {a:?} is not pull, push or delete"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let expires_ms = r.expires_in_ms.map(|ms| {
            self.accounts
                .now_ms()
                .saturating_add(ms.min(Duration::from_secs(10 * 365 * 86400).as_millis() as u64))
        });
        let secret = password::generate_secret().map_err(|e| {
            tracing::error!(error = %e, "making a robot secret");
            Status::internal("creating a robot: no secret could be made")
        })?;
        let account = self
            .accounts
            .create_robot(
                &actor,
                &r.project,
                &r.name,
                actions,
                expires_ms,
                password::secret_sha256(&secret),
            )
            .await
            .map_err(|e| status(&format!("creating robot {} in {}", r.name, r.project), e))?;
        Ok(Response::new(pb::CreateRobotResponse {
            account,
            secret,
            expires_ms,
        }))
    }

    async fn delete_robot(
        &self,
        req: Request<pb::DeleteRobotRequest>,
    ) -> Result<Response<pb::AccessEmpty>, Status> {
        let actor = actor_of(&req);
        let r = req.into_inner();
        self.accounts
            .delete_robot(&actor, &r.account)
            .await
            .map_err(|e| status(&format!("removing robot {}", r.account), e))?;
        Ok(Response::new(pb::AccessEmpty {}))
    }

    async fn list_robots(
        &self,
        _req: Request<pb::ListRobotsRequest>,
    ) -> Result<Response<pb::ListRobotsResponse>, Status> {
        let robots = self
            .accounts
            .robots()
            .map_err(|e| status("listing robots", e))?
            .into_iter()
            .map(|(account, r)| pb::RobotInfo {
                account,
                project: r.project,
                actions: r.actions.iter().map(|a| a.to_string()).collect(),
                created_ms: r.created_ms,
                expires_ms: r.expires_ms,
                created_by: r.created_by,
            })
            .collect();
        Ok(Response::new(pb::ListRobotsResponse { robots }))
    }

    async fn set_project(
        &self,
        req: Request<pb::SetProjectRequest>,
    ) -> Result<Response<pb::AccessEmpty>, Status> {
        let actor = actor_of(&req);
        let r = req.into_inner();
        let mut change = stowage_core::ProjectChange {
            public: r.public,
            sparse_manifests: r.sparse_manifests,
        };
        if change.is_empty() {
            // A client from before the optional fields, asking for `public = false`.
            change.public = Some(false);
        }
        self.accounts
            .set_project(&actor, &r.project, change)
            .await
            .map_err(|e| status(&format!("setting project {}", r.project), e))?;
        Ok(Response::new(pb::AccessEmpty {}))
    }

    async fn list_projects(
        &self,
        _req: Request<pb::ListProjectsRequest>,
    ) -> Result<Response<pb::ListProjectsResponse>, Status> {
        let projects = self
            .accounts
            .projects()
            .map_err(|e| status("listing projects", e))?
            .into_iter()
            .map(|(project, p)| pb::ProjectInfo {
                project,
                public: p.public,
                created_ms: p.created_ms,
                sparse_manifests: p.sparse_manifests,
            })
            .collect();
        Ok(Response::new(pb::ListProjectsResponse { projects }))
    }

    type QueryAuditStream = AuditStream;

    async fn query_audit(
        &self,
        req: Request<pb::QueryAuditRequest>,
    ) -> Result<Response<Self::QueryAuditStream>, Status> {
        let q = req.into_inner();
        let filter = filter_of(&q).map_err(Status::invalid_argument)?;
        let index = self.index.clone();
        // Pages of 1000 read on blocking threads, sent as they come.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        stowage_store::task::spawn_named("audit_query", async move {
            let mut filter = filter;
            let mut left = if filter.limit == 0 {
                usize::MAX
            } else {
                filter.limit
            };
            loop {
                let mut page_filter = filter.clone();
                page_filter.limit = left.min(1000);
                let idx = index.clone();
                let scanned = tokio::task::spawn_blocking(move || {
                    // Page by sequence so a filter that matches little still moves on.
                    let last = idx.index().audit_last_seq()?;
                    let recs = idx.index().audit_query(&page_filter)?;
                    Ok::<_, stowage_index::IndexError>((recs, last))
                })
                .await;
                let (recs, last) = match scanned {
                    Ok(Ok(r)) => r,
                    Ok(Err(e)) => {
                        let _ = tx
                            .send(Err(Status::internal(format!("reading the audit log: {e}"))))
                            .await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx
                            .send(Err(Status::internal(format!("audit read task: {e}"))))
                            .await;
                        return;
                    }
                };
                let n = recs.len();
                let next = recs.last().map(|r| r.seq);
                for r in recs {
                    if tx.send(Ok(record_to_proto(r))).await.is_err() {
                        return;
                    }
                }
                left = left.saturating_sub(n);
                match next {
                    Some(seq) if left > 0 && n == 1000 && seq < last => filter.after_seq = seq,
                    _ => return,
                }
            }
        });
        let stream = tokio_stream_from(rx);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn verify_audit(
        &self,
        _req: Request<pb::VerifyAuditRequest>,
    ) -> Result<Response<pb::VerifyAuditResponse>, Status> {
        let index = self.index.clone();
        let report = tokio::task::spawn_blocking(move || index.index().audit_verify())
            .await
            .map_err(|e| Status::internal(format!("audit verification task: {e}")))?
            .map_err(|e| Status::internal(format!("verifying the audit log: {e}")))?;
        Ok(Response::new(verify_to_proto(report)))
    }
}

/// A stream over a channel's receiver.
fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
