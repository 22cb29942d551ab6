//! Who asks for a change: the [`Actor`] every mutating store call carries, and the account
//! records access control keeps (users, robots, project roles and settings).
//!
//! The store never authenticates anyone: the edge that received the request (the OCI API, the
//! admin service, the replication service, the collector) decides who the actor is and hands
//! it down, and the store writes its name into the change feed and the audit log together with
//! the change.

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// The authenticated identity behind a request.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", content = "name", rename_all = "snake_case")]
pub enum Principal {
    /// No credentials (only ever allowed to pull from public projects, or everything when the
    /// daemon runs without authentication on loopback).
    Anonymous,
    /// A user account (from the index or the htpasswd file), or the subject of a token issued
    /// by an external token service.
    User(String),
    /// A robot account (`robot$<project>+<name>`).
    Robot(String),
    /// A replication peer site, identified by its certificate.
    Peer(String),
    /// The daemon itself: `gc`, `startup`, `retention`, ...
    System(String),
}

impl Principal {
    /// The name without its kind (`anonymous` for [`Principal::Anonymous`]).
    pub fn name(&self) -> &str {
        match self {
            Principal::Anonymous => "anonymous",
            Principal::User(n)
            | Principal::Robot(n)
            | Principal::Peer(n)
            | Principal::System(n) => n,
        }
    }

    /// The kind as a word (`user`, `robot`, `peer`, `system`, `anonymous`).
    pub fn kind(&self) -> &'static str {
        match self {
            Principal::Anonymous => "anonymous",
            Principal::User(_) => "user",
            Principal::Robot(_) => "robot",
            Principal::Peer(_) => "peer",
            Principal::System(_) => "system",
        }
    }
}

impl fmt::Display for Principal {
    /// `user:alice`, `robot:robot$team+ci`, `peer:cloud`, `system:gc`, `anonymous`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Anonymous => f.write_str("anonymous"),
            p => write!(f, "{}:{}", p.kind(), p.name()),
        }
    }
}

/// A principal and where its request came from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Actor {
    /// Who.
    pub principal: Principal,
    /// The client's address, when the request came over the network.
    pub addr: Option<SocketAddr>,
}

impl Actor {
    /// An actor for `principal` at `addr`.
    pub fn new(principal: Principal, addr: Option<SocketAddr>) -> Actor {
        Actor { principal, addr }
    }

    /// The daemon's own work (`gc`, `startup`, ...), with no client address.
    pub fn system(name: &str) -> Actor {
        Actor::new(Principal::System(name.to_string()), None)
    }

    /// A user with no known address (tools, tests).
    pub fn user(name: &str) -> Actor {
        Actor::new(Principal::User(name.to_string()), None)
    }

    /// Anonymous, from `addr`.
    pub fn anonymous(addr: Option<SocketAddr>) -> Actor {
        Actor::new(Principal::Anonymous, addr)
    }

    /// A replication peer.
    pub fn peer(name: &str, addr: Option<SocketAddr>) -> Actor {
        Actor::new(Principal::Peer(name.to_string()), addr)
    }

    /// The client address as text, if any.
    pub fn addr_text(&self) -> Option<String> {
        self.addr.map(|a| a.to_string())
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.principal.fmt(f)
    }
}

/// What a principal may do in a repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Read manifests and blobs, list tags and referrers.
    Pull,
    /// Upload blobs, put manifests, move tags.
    Push,
    /// Delete manifests, tags and blob links.
    Delete,
}

impl Action {
    /// Every action.
    pub const ALL: [Action; 3] = [Action::Pull, Action::Push, Action::Delete];

    /// The wire word (as in a token scope).
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }

    /// Parses `pull`, `push` or `delete`.
    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "pull" => Some(Action::Pull),
            "push" => Some(Action::Push),
            "delete" => Some(Action::Delete),
            _ => None,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A user's role in one project.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Pull.
    Guest,
    /// Pull and push.
    Developer,
    /// Pull, push and delete.
    Maintainer,
    /// Everything in the project (and, later, its policies).
    Admin,
}

impl Role {
    /// Every role, weakest first.
    pub const ALL: [Role; 4] = [Role::Guest, Role::Developer, Role::Maintainer, Role::Admin];

    /// The word used in the CLI and the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Guest => "guest",
            Role::Developer => "developer",
            Role::Maintainer => "maintainer",
            Role::Admin => "admin",
        }
    }

    /// Parses a role word.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether the role allows `action`.
    pub fn allows(self, action: Action) -> bool {
        match (self, action) {
            (_, Action::Pull) => true,
            (Role::Guest, _) => false,
            (Role::Developer, Action::Push) => true,
            (Role::Developer, Action::Delete) => false,
            (Role::Maintainer | Role::Admin, _) => true,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A user account kept in the index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// Argon2id hash of the password in PHC string form (never the password).
    #[serde(rename = "h")]
    pub password_hash: String,
    /// `system-admin`: every action in every project, and the admin API.
    #[serde(rename = "sa", default)]
    pub system_admin: bool,
    /// Created (unix ms).
    #[serde(rename = "c")]
    pub created_ms: u64,
    /// Last changed (unix ms).
    #[serde(rename = "u")]
    pub updated_ms: u64,
    /// Changed (to a fresh random value) on creation and on every password change: refresh
    /// tokens and cached logins of another generation stop working, also those of an
    /// earlier account of the same name.
    #[serde(rename = "g", default)]
    pub generation: u64,
}

/// A robot account: a machine credential bound to one project with explicit actions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RobotRecord {
    /// The project it may act in.
    #[serde(rename = "p")]
    pub project: String,
    /// What it may do there.
    #[serde(rename = "a")]
    pub actions: Vec<Action>,
    /// SHA-256 (hex) of its secret. The secret is 256 random bits, so a fast hash suffices.
    #[serde(rename = "h")]
    pub secret_sha256: String,
    /// Created (unix ms).
    #[serde(rename = "c")]
    pub created_ms: u64,
    /// Stops working at (unix ms); `None`: never.
    #[serde(rename = "x", default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
    /// Who created it.
    #[serde(rename = "by", default)]
    pub created_by: String,
}

impl RobotRecord {
    /// The robot's account name: `robot$<project>+<name>`.
    pub fn account_name(project: &str, name: &str) -> String {
        format!("robot${project}+{name}")
    }

    /// Whether it has expired at `now_ms`.
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires_ms.is_some_and(|x| now_ms >= x)
    }
}

/// Settings of one project (a repository's first path component).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectRecord {
    /// Anyone, even without credentials, may pull.
    #[serde(rename = "pub", default)]
    pub public: bool,
    /// Created (unix ms).
    #[serde(rename = "c", default)]
    pub created_ms: u64,
    /// Image indexes pushed to the project may name child manifests it does not hold (sparse
    /// indexes: a mirror of some platforms of a signed index, whose digest must not change).
    /// Off unless the operator turns it on; everywhere else a missing child refuses the push.
    #[serde(rename = "sp", default)]
    pub sparse_manifests: bool,
}

/// A change to a project's settings; `None` leaves a setting as it is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProjectChange {
    /// Anyone may pull (true) or only those with a role (false).
    pub public: Option<bool>,
    /// Sparse image indexes are accepted (true) or refused (false).
    pub sparse_manifests: Option<bool>,
}

impl ProjectChange {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.public.is_none() && self.sparse_manifests.is_none()
    }

    /// Applies the change to `rec`.
    pub fn apply(&self, rec: &mut ProjectRecord) {
        if let Some(p) = self.public {
            rec.public = p;
        }
        if let Some(s) = self.sparse_manifests {
            rec.sparse_manifests = s;
        }
    }

    /// What it sets, for the audit log (`public, sparse manifests allowed`).
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        match self.public {
            Some(true) => parts.push("public"),
            Some(false) => parts.push("private"),
            None => {}
        }
        match self.sparse_manifests {
            Some(true) => parts.push("sparse manifests allowed"),
            Some(false) => parts.push("sparse manifests refused"),
            None => {}
        }
        parts.join(", ")
    }
}

/// How a whole project shows in a listing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProjectView {
    /// Every repository of it.
    All,
    /// None of it (a listing skips the project without looking at its repositories).
    Nothing,
    /// Decided per repository.
    EachRepo,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn project_changes_touch_only_what_they_name() {
        let mut rec = ProjectRecord {
            public: true,
            created_ms: 1,
            sparse_manifests: false,
        };
        let change = ProjectChange {
            public: None,
            sparse_manifests: Some(true),
        };
        change.apply(&mut rec);
        assert!(rec.public && rec.sparse_manifests);
        assert_eq!(change.describe(), "sparse manifests allowed");
        assert!(ProjectChange::default().is_empty());
        // Records stored before the setting existed read as "refused".
        let old: ProjectRecord = serde_json::from_str(r#"{"pub":true,"c":5}"#).unwrap();
        assert!(old.public && !old.sparse_manifests);
    }

    #[test]
    fn roles_allow_what_they_say() {
        use Action::*;
        let table = [
            (Role::Guest, [true, false, false]),
            (Role::Developer, [true, true, false]),
            (Role::Maintainer, [true, true, true]),
            (Role::Admin, [true, true, true]),
        ];
        for (role, expect) in table {
            for (action, want) in [Pull, Push, Delete].into_iter().zip(expect) {
                assert_eq!(role.allows(action), want, "{role} {action}");
            }
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::parse("owner"), None);
    }

    #[test]
    fn principals_print_with_their_kind() {
        assert_eq!(Principal::User("alice".into()).to_string(), "user:alice");
        assert_eq!(
            Principal::Robot("robot$p+ci".into()).to_string(),
            "robot:robot$p+ci"
        );
        assert_eq!(Principal::Anonymous.to_string(), "anonymous");
        assert_eq!(Actor::system("gc").to_string(), "system:gc");
        let json = serde_json::to_string(&Principal::Peer("cloud".into())).unwrap();
        assert_eq!(json, r#"{"kind":"peer","name":"cloud"}"#);
        let back: Principal = serde_json::from_str(&json).unwrap();
        assert_eq!(back, Principal::Peer("cloud".into()));
    }

    #[test]
    fn robots_expire() {
        let r = RobotRecord {
            project: "p".into(),
            actions: vec![Action::Pull],
            secret_sha256: String::new(),
            created_ms: 0,
            expires_ms: Some(10),
            created_by: "admin".into(),
        };
        assert!(!r.expired(9));
        assert!(r.expired(10));
        assert_eq!(RobotRecord::account_name("p", "ci"), "robot$p+ci");
    }
}
