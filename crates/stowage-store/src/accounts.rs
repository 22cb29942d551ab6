//! Account changes: users, robots, project roles and project settings. Each change and its
//! audit entry go in one batch. Passwords and secrets never reach this module: callers pass
//! hashes (argon2id for passwords, SHA-256 for robot secrets).

use stowage_core::{
    Action, Actor, ProjectChange, ProjectRecord, RepoName, RobotRecord, Role, UserRecord,
};
use stowage_index::{AuditAction, Batch};

use crate::{Result, Store, StoreError};

/// Longest user or robot name.
const MAX_NAME: usize = 64;

/// Checks a user name: 1 to 64 of `a-z A-Z 0-9 . _ - @`, starting with a letter or digit. No
/// `:` (it would break Basic credentials), no `$` or `+` (robot names use them).
pub fn check_user_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c));
    if ok {
        Ok(())
    } else {
        Err(StoreError::NameInvalid(format!(
            "user name {name:?}: use 1 to {MAX_NAME} letters, digits, '.', '_', '-' or '@', \
             starting with a letter or digit"
        )))
    }
}

/// Checks a project name: a valid single repository path component.
pub fn check_project_name(project: &str) -> Result<()> {
    if project.contains('/') {
        return Err(StoreError::NameInvalid(format!(
            "project {project:?}: a project is one path component (no '/')"
        )));
    }
    RepoName::parse(project)
        .map(|_| ())
        .map_err(|e| StoreError::NameInvalid(format!("project {project:?}: {e}")))
}

impl Store {
    fn account_audit(
        &self,
        actor: &Actor,
        action: AuditAction,
        target: &str,
    ) -> stowage_index::AuditEntry {
        self.audit_entry(actor, action).target(target)
    }

    /// Creates user `name`. Fails with [`StoreError::Conflict`] when it exists.
    pub(crate) async fn add_user(
        &self,
        actor: &Actor,
        name: &str,
        password_hash: String,
        system_admin: bool,
    ) -> Result<()> {
        check_user_name(name)?;
        let _g = self.inner.account_lock.lock().await;
        if self.inner.index.user(name)?.is_some() {
            return Err(StoreError::Conflict(format!("user {name} exists")));
        }
        let now = self.now_ms();
        let mut batch = Batch::new();
        batch.put_user(
            name,
            &UserRecord {
                password_hash,
                system_admin,
                created_ms: now,
                updated_ms: now,
                generation: fresh_generation(),
            },
        )?;
        let mut e = self.account_audit(actor, AuditAction::UserAdd, name);
        if system_admin {
            e = e.detail("system-admin");
        }
        batch.audit(e);
        self.commit(batch).await?;
        Ok(())
    }

    /// Changes user `name`'s password (a new hash and a new generation, which ends its
    /// refresh tokens and cached logins) and/or its system-admin flag.
    pub(crate) async fn update_user(
        &self,
        actor: &Actor,
        name: &str,
        password_hash: Option<String>,
        system_admin: Option<bool>,
    ) -> Result<UserRecord> {
        let _g = self.inner.account_lock.lock().await;
        let mut rec = self
            .inner
            .index
            .user(name)?
            .ok_or_else(|| StoreError::NotFound(format!("user {name}")))?;
        let mut changed = Vec::new();
        if let Some(h) = password_hash {
            rec.password_hash = h;
            rec.generation = fresh_generation();
            changed.push("password".to_string());
        }
        if let Some(a) = system_admin {
            if a != rec.system_admin {
                rec.system_admin = a;
                changed.push(format!("system-admin {a}"));
            }
        }
        rec.updated_ms = self.now_ms();
        let mut batch = Batch::new();
        batch.put_user(name, &rec)?;
        batch.audit(
            self.account_audit(actor, AuditAction::UserUpdate, name)
                .detail(changed.join(", ")),
        );
        self.commit(batch).await?;
        Ok(rec)
    }

    /// Removes user `name` and every role it holds.
    pub(crate) async fn delete_user(&self, actor: &Actor, name: &str) -> Result<()> {
        let _g = self.inner.account_lock.lock().await;
        let idx = &self.inner.index;
        if idx.user(name)?.is_none() {
            return Err(StoreError::NotFound(format!("user {name}")));
        }
        let mut batch = Batch::new();
        batch.delete_user(name);
        let grants = idx.grants_of(name)?;
        for (project, _) in &grants {
            batch.delete_grant(name, project);
        }
        batch.audit(
            self.account_audit(actor, AuditAction::UserDelete, name)
                .detail(format!("with {} roles", grants.len())),
        );
        self.commit(batch).await?;
        Ok(())
    }

    /// Gives `user` `role` in `project`.
    pub(crate) async fn grant(
        &self,
        actor: &Actor,
        user: &str,
        project: &str,
        role: Role,
    ) -> Result<()> {
        check_user_name(user)?;
        check_project_name(project)?;
        let _g = self.inner.account_lock.lock().await;
        let before = self.inner.index.grant(user, project)?;
        let mut batch = Batch::new();
        batch.put_grant(user, project, role)?;
        batch.audit(
            self.account_audit(actor, AuditAction::RoleGrant, user)
                .repo(project)
                .detail(match before {
                    Some(b) => format!("{role} (was {b})"),
                    None => role.to_string(),
                }),
        );
        self.commit(batch).await?;
        Ok(())
    }

    /// Takes `user`'s role in `project` away.
    pub(crate) async fn revoke(&self, actor: &Actor, user: &str, project: &str) -> Result<()> {
        let _g = self.inner.account_lock.lock().await;
        let Some(before) = self.inner.index.grant(user, project)? else {
            return Err(StoreError::NotFound(format!(
                "user {user} has no role in project {project}"
            )));
        };
        let mut batch = Batch::new();
        batch.delete_grant(user, project);
        batch.audit(
            self.account_audit(actor, AuditAction::RoleRevoke, user)
                .repo(project)
                .detail(format!("was {before}")),
        );
        self.commit(batch).await?;
        Ok(())
    }

    /// Creates robot `name` in `project`; returns its account name (`robot$project+name`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn create_robot(
        &self,
        actor: &Actor,
        project: &str,
        name: &str,
        actions: Vec<Action>,
        expires_ms: Option<u64>,
        secret_sha256: String,
    ) -> Result<String> {
        check_user_name(name)?;
        check_project_name(project)?;
        if actions.is_empty() {
            return Err(StoreError::NameInvalid(
                "a robot needs at least one action".into(),
            ));
        }
        let account = RobotRecord::account_name(project, name);
        let _g = self.inner.account_lock.lock().await;
        if self.inner.index.robot(&account)?.is_some() {
            return Err(StoreError::Conflict(format!("robot {account} exists")));
        }
        let mut actions = actions;
        actions.sort();
        actions.dedup();
        let rec = RobotRecord {
            project: project.to_string(),
            actions,
            secret_sha256,
            created_ms: self.now_ms(),
            expires_ms,
            created_by: actor.to_string(),
        };
        let mut batch = Batch::new();
        batch.put_robot(&account, &rec)?;
        batch.audit(
            self.account_audit(actor, AuditAction::RobotCreate, &account)
                .repo(project)
                .detail(format!(
                    "actions {}{}",
                    rec.actions
                        .iter()
                        .map(|a| a.as_str())
                        .collect::<Vec<_>>()
                        .join(","),
                    match expires_ms {
                        Some(x) => format!(", expires at {x} ms"),
                        None => ", never expires".to_string(),
                    }
                )),
        );
        self.commit(batch).await?;
        Ok(account)
    }

    /// Removes a robot account.
    pub(crate) async fn delete_robot(&self, actor: &Actor, account: &str) -> Result<()> {
        let _g = self.inner.account_lock.lock().await;
        let Some(rec) = self.inner.index.robot(account)? else {
            return Err(StoreError::NotFound(format!("robot {account}")));
        };
        let mut batch = Batch::new();
        batch.delete_robot(account);
        batch.audit(
            self.account_audit(actor, AuditAction::RobotDelete, account)
                .repo(rec.project),
        );
        self.commit(batch).await?;
        Ok(())
    }

    /// Changes `project`'s settings (whether it is public, whether it takes sparse indexes),
    /// audited in the same batch; returns the settings now. An empty change writes nothing.
    pub(crate) async fn set_project(
        &self,
        actor: &Actor,
        project: &str,
        change: ProjectChange,
    ) -> Result<ProjectRecord> {
        check_project_name(project)?;
        let _g = self.inner.account_lock.lock().await;
        let mut rec = self
            .inner
            .index
            .project(project)?
            .unwrap_or_else(|| ProjectRecord {
                created_ms: self.now_ms(),
                ..ProjectRecord::default()
            });
        if change.is_empty() {
            return Ok(rec);
        }
        change.apply(&mut rec);
        let mut batch = Batch::new();
        batch.put_project(project, &rec)?;
        batch.audit(
            self.audit_entry(actor, AuditAction::ProjectUpdate)
                .repo(project)
                .target(project)
                .detail(change.describe()),
        );
        self.commit(batch).await?;
        Ok(rec)
    }
}

/// A credential generation no account has had: random, so that a user removed and created
/// again under the same name (or a password changed) never matches the refresh tokens and
/// remembered logins of before.
fn fresh_generation() -> u64 {
    uuid::Uuid::new_v4().as_u64_pair().0.max(1)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names() {
        for good in ["alice", "a", "ci-bot_1.x", "j@example.com", &"a".repeat(64)] {
            check_user_name(good).unwrap();
        }
        for bad in ["", "-a", "a:b", "robot$x+y", "a b", "ä", &"a".repeat(65)] {
            assert!(check_user_name(bad).is_err(), "{bad:?}");
        }
        check_project_name("team").unwrap();
        assert!(check_project_name("team/app").is_err());
        assert!(check_project_name("Team").is_err());
        assert!(check_project_name("").is_err());
    }
}
