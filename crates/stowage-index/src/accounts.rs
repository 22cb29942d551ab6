//! Accounts: users, robots, project roles and project settings, in the `accounts` column
//! family. Changes go through a [`Batch`] like every other change, so the account change and
//! its audit entry commit together.
//!
//! Keys (one kind byte, then names; names never contain `0x00`):
//!
//! ```text
//! u <user>                 -> UserRecord
//! r <robot account name>   -> RobotRecord
//! g <user> \0 <project>    -> Role      (user-major: a request looks up one user's roles)
//! p <project>              -> ProjectRecord
//! ```

use stowage_core::{ProjectRecord, RobotRecord, Role, UserRecord};

use crate::{cf, decode, encode_checked, Batch, Index, IndexError};

const USER: u8 = b'u';
const ROBOT: u8 = b'r';
const GRANT: u8 = b'g';
const PROJECT: u8 = b'p';

fn key(kind: u8, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(kind);
    k.extend_from_slice(name.as_bytes());
    k
}

fn grant_key(user: &str, project: &str) -> Vec<u8> {
    let mut k = key(GRANT, user);
    k.push(0);
    k.extend_from_slice(project.as_bytes());
    k
}

fn name_of(k: &[u8]) -> Result<String, IndexError> {
    String::from_utf8(k[1..].to_vec())
        .map_err(|e| IndexError::Corrupt(format!("account key not UTF-8: {e}")))
}

impl Batch {
    /// Creates or replaces a user.
    pub fn put_user(&mut self, name: &str, rec: &UserRecord) -> Result<(), IndexError> {
        let v = encode_checked("user", rec)?;
        self.put(cf::ACCOUNTS, key(USER, name), v);
        Ok(())
    }

    /// Removes a user (its grants are removed by the caller, which knows them).
    pub fn delete_user(&mut self, name: &str) {
        self.del(cf::ACCOUNTS, key(USER, name));
    }

    /// Creates or replaces a robot account.
    pub fn put_robot(&mut self, account: &str, rec: &RobotRecord) -> Result<(), IndexError> {
        let v = encode_checked("robot", rec)?;
        self.put(cf::ACCOUNTS, key(ROBOT, account), v);
        Ok(())
    }

    /// Removes a robot account.
    pub fn delete_robot(&mut self, account: &str) {
        self.del(cf::ACCOUNTS, key(ROBOT, account));
    }

    /// Gives `user` `role` in `project` (replacing any role it had there).
    pub fn put_grant(&mut self, user: &str, project: &str, role: Role) -> Result<(), IndexError> {
        let v = encode_checked("grant", &role)?;
        self.put(cf::ACCOUNTS, grant_key(user, project), v);
        Ok(())
    }

    /// Takes `user`'s role in `project` away.
    pub fn delete_grant(&mut self, user: &str, project: &str) {
        self.del(cf::ACCOUNTS, grant_key(user, project));
    }

    /// Sets a project's settings.
    pub fn put_project(&mut self, project: &str, rec: &ProjectRecord) -> Result<(), IndexError> {
        let v = encode_checked("project", rec)?;
        self.put(cf::ACCOUNTS, key(PROJECT, project), v);
        Ok(())
    }
}

impl Index {
    /// A user.
    pub fn user(&self, name: &str) -> Result<Option<UserRecord>, IndexError> {
        self.get(cf::ACCOUNTS, &key(USER, name))
    }

    /// Every user, by name.
    pub fn users(&self) -> Result<Vec<(String, UserRecord)>, IndexError> {
        self.accounts_of(USER, "user")
    }

    /// A robot account.
    pub fn robot(&self, account: &str) -> Result<Option<RobotRecord>, IndexError> {
        self.get(cf::ACCOUNTS, &key(ROBOT, account))
    }

    /// Every robot account, by account name.
    pub fn robots(&self) -> Result<Vec<(String, RobotRecord)>, IndexError> {
        self.accounts_of(ROBOT, "robot")
    }

    /// `user`'s role in `project`, if it has one.
    pub fn grant(&self, user: &str, project: &str) -> Result<Option<Role>, IndexError> {
        self.get(cf::ACCOUNTS, &grant_key(user, project))
    }

    /// Every role `user` holds: `(project, role)`.
    pub fn grants_of(&self, user: &str) -> Result<Vec<(String, Role)>, IndexError> {
        let mut prefix = key(GRANT, user);
        prefix.push(0);
        let mut out = Vec::new();
        self.scan(cf::ACCOUNTS, &prefix, &prefix, |k, v| {
            let project = String::from_utf8(k[prefix.len()..].to_vec())
                .map_err(|e| IndexError::Corrupt(format!("grant key not UTF-8: {e}")))?;
            out.push((project, decode("grant", v)?));
            Ok(true)
        })?;
        Ok(out)
    }

    /// Every grant: `(user, project, role)`.
    pub fn grants(&self) -> Result<Vec<(String, String, Role)>, IndexError> {
        let prefix = [GRANT];
        let mut out = Vec::new();
        self.scan(cf::ACCOUNTS, &prefix, &prefix, |k, v| {
            let rest = std::str::from_utf8(&k[1..])
                .map_err(|e| IndexError::Corrupt(format!("grant key not UTF-8: {e}")))?;
            let (user, project) = rest
                .split_once('\0')
                .ok_or_else(|| IndexError::Corrupt("grant key without separator".into()))?;
            out.push((user.to_string(), project.to_string(), decode("grant", v)?));
            Ok(true)
        })?;
        Ok(out)
    }

    /// A project's settings, if any were set.
    pub fn project(&self, name: &str) -> Result<Option<ProjectRecord>, IndexError> {
        self.get(cf::ACCOUNTS, &key(PROJECT, name))
    }

    /// Every project with settings.
    pub fn projects(&self) -> Result<Vec<(String, ProjectRecord)>, IndexError> {
        self.accounts_of(PROJECT, "project")
    }

    fn accounts_of<T: serde::de::DeserializeOwned>(
        &self,
        kind: u8,
        what: &str,
    ) -> Result<Vec<(String, T)>, IndexError> {
        let prefix = [kind];
        let mut out = Vec::new();
        self.scan(cf::ACCOUNTS, &prefix, &prefix, |k, v| {
            out.push((name_of(k)?, decode(what, v)?));
            Ok(true)
        })?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use stowage_core::Action;

    use crate::{Batch, Index, IndexOptions};

    use super::*;

    #[test]
    fn accounts_round_trip_and_do_not_mix() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::open(dir.path(), IndexOptions::default()).unwrap();
        let user = UserRecord {
            password_hash: "$argon2id$...".into(),
            system_admin: true,
            created_ms: 1,
            updated_ms: 2,
            generation: 3,
        };
        let robot = RobotRecord {
            project: "team".into(),
            actions: vec![Action::Pull, Action::Push],
            secret_sha256: "ab".into(),
            created_ms: 1,
            expires_ms: Some(9),
            created_by: "alice".into(),
        };
        let mut b = Batch::new();
        b.put_user("alice", &user).unwrap();
        b.put_user("al", &user).unwrap();
        b.put_robot("robot$team+ci", &robot).unwrap();
        b.put_grant("alice", "team", Role::Developer).unwrap();
        b.put_grant("alice", "other", Role::Guest).unwrap();
        b.put_grant("al", "team", Role::Admin).unwrap();
        b.put_project(
            "team",
            &ProjectRecord {
                public: true,
                created_ms: 4,
                sparse_manifests: true,
            },
        )
        .unwrap();
        idx.commit(b).unwrap();
        assert_eq!(idx.user("alice").unwrap(), Some(user.clone()));
        assert_eq!(idx.user("bob").unwrap(), None);
        assert_eq!(idx.users().unwrap().len(), 2);
        assert_eq!(idx.robot("robot$team+ci").unwrap(), Some(robot));
        assert_eq!(idx.robots().unwrap().len(), 1);
        assert_eq!(idx.grant("alice", "team").unwrap(), Some(Role::Developer));
        // "al" is a prefix of "alice": the separator keeps their grants apart.
        assert_eq!(
            idx.grants_of("al").unwrap(),
            vec![("team".to_string(), Role::Admin)]
        );
        assert_eq!(idx.grants_of("alice").unwrap().len(), 2);
        assert_eq!(idx.grants().unwrap().len(), 3);
        assert!(idx.project("team").unwrap().unwrap().public);
        assert_eq!(idx.projects().unwrap().len(), 1);
        let mut b = Batch::new();
        b.delete_grant("alice", "team");
        b.delete_user("al");
        b.delete_robot("robot$team+ci");
        idx.commit(b).unwrap();
        assert_eq!(idx.grant("alice", "team").unwrap(), None);
        assert_eq!(idx.user("al").unwrap(), None);
        assert!(idx.robots().unwrap().is_empty());
    }
}
