//! `stowage user`, `stowage robot`, `stowage project`, `stowage audit` and `stowage token`:
//! accounts and the audit log, on a running daemon (admin gRPC) or, with `--data-dir`, on a
//! stopped one's data directory (how the first admin is created: no default password exists).
//!
//! A new password is read from `STOWAGE_NEW_PASSWORD` or standard input, hashed here
//! (argon2id), and only the hash travels; `STOWAGE_PASSWORD` is the caller's own (`--user`). A robot's secret is printed once and kept nowhere.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use futures::StreamExt;
use stowage_core::{Action, Actor, Role};
use stowage_rpc::v1 as pb;
use stowage_rpc::v1::access_client::AccessClient;
use stowage_store::{Store, StoreConfig};

use crate::access_rpc::{filter_of, record_to_proto, verify_to_proto};
use crate::admin::{cli_runtime, emit, rpc_error};
use crate::client::{read_password, AdminChannel, ClientArgs};

/// Where the accounts are: a running daemon, or a stopped one's data directory.
#[derive(Args, Debug, Clone)]
pub struct TargetArgs {
    #[command(flatten)]
    conn: ClientArgs,
    /// Work on this data directory directly instead of a running daemon (the daemon must be
    /// stopped: its index is locked while it runs). How the first admin is created.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct UserArgs {
    #[command(subcommand)]
    command: UserCommand,
}

#[derive(Subcommand, Debug)]
enum UserCommand {
    /// Create a user (password from STOWAGE_NEW_PASSWORD or standard input).
    Add {
        name: String,
        /// Give it the system-admin role (every project, and the admin API).
        #[arg(long)]
        admin: bool,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Change a user's password (from STOWAGE_NEW_PASSWORD or standard input). Its refresh
    /// tokens stop working.
    Passwd {
        name: String,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Give or take a user's system-admin role.
    Admin {
        name: String,
        /// true or false.
        #[arg(action = clap::ArgAction::Set)]
        on: bool,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Remove a user and its roles.
    Del {
        name: String,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Every user with its roles.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Give a user a role in a project: guest (pull), developer (pull, push), maintainer
    /// (pull, push, delete) or admin (everything in the project).
    Grant {
        name: String,
        project: String,
        role: String,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Take a user's role in a project away.
    Revoke {
        name: String,
        project: String,
        #[command(flatten)]
        target: TargetArgs,
    },
}

#[derive(Args, Debug)]
pub struct RobotArgs {
    #[command(subcommand)]
    command: RobotCommand,
}

#[derive(Subcommand, Debug)]
enum RobotCommand {
    /// Create a robot account bound to one project; prints its secret once.
    Create {
        name: String,
        /// The project it acts in.
        #[arg(long)]
        project: String,
        /// What it may do there: pull, push, delete (comma separated).
        #[arg(long, value_delimiter = ',', required = true)]
        actions: Vec<String>,
        /// Lifetime (30d, 12h); default: never expires.
        #[arg(long, value_parser = crate::config::parse_duration)]
        expires: Option<Duration>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Every robot account (never their secrets).
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Remove a robot account (`robot$project+name`).
    Del {
        account: String,
        #[command(flatten)]
        target: TargetArgs,
    },
}

#[derive(Args, Debug)]
pub struct ProjectArgs {
    #[command(subcommand)]
    command: ProjectCommand,
}

#[derive(Subcommand, Debug)]
enum ProjectCommand {
    /// Change a project's settings: public (anyone may pull, without credentials) or
    /// private; whether it accepts sparse image indexes. Settings not named stay as they are.
    #[command(group(clap::ArgGroup::new("setting").required(true).multiple(true)))]
    Set {
        project: String,
        /// true or false.
        #[arg(long, action = clap::ArgAction::Set, group = "setting")]
        public: Option<bool>,
        /// true: image indexes may name child manifests the project does not hold (to mirror
        /// some platforms of an index without changing its digest); false: refused.
        #[arg(long, alias = "sparse", action = clap::ArgAction::Set, group = "setting")]
        sparse_manifests: Option<bool>,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Every project with settings.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: TargetArgs,
    },
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AuditArgs {
    #[command(subcommand)]
    command: Option<AuditCommand>,
    #[command(flatten)]
    query: AuditQuery,
}

#[derive(Args, Debug)]
struct AuditQuery {
    /// Entries at or after: RFC 3339 time (2026-12-01T10:00:00Z) or a duration ago (2h).
    #[arg(long)]
    since: Option<String>,
    /// Entries before: RFC 3339 time or a duration ago.
    #[arg(long)]
    until: Option<String>,
    /// Actor (`user:alice`, or a bare name of any kind).
    #[arg(long)]
    actor: Option<String>,
    /// Repository, or a project followed by `/`.
    #[arg(long)]
    repo: Option<String>,
    /// Action (manifest_push, login, token_issue, ...).
    #[arg(long)]
    action: Option<String>,
    /// At most this many entries.
    #[arg(long)]
    limit: Option<u64>,
    /// One JSON object per line (with each entry's hashes).
    #[arg(long)]
    json: bool,
    /// Append the entries as JSON lines to this file (for a SIEM) instead of printing them.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    #[command(flatten)]
    target: TargetArgs,
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// Check the whole hash chain: names every altered, missing or moved entry. Exits
    /// non-zero when something is wrong.
    Verify {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: TargetArgs,
    },
}

/// `stowage token`: fetch a bearer token from a registry's token service.
#[derive(Args, Debug)]
pub struct TokenArgs {
    /// The registry's base URL (https://registry.example.com:5000).
    #[arg(long, env = "STOWAGE_REGISTRY", value_name = "URL")]
    registry: String,
    /// The account; its password (or robot secret) from STOWAGE_PASSWORD or standard input.
    #[arg(long, env = "STOWAGE_USER", value_name = "NAME")]
    user: String,
    /// Scopes to ask for (repository:team/app:pull,push); none: a token for the admin API
    /// (registry:admin:*, granted to system admins only).
    #[arg(long)]
    scope: Vec<String>,
    /// CA that signed the registry's certificate.
    #[arg(long, env = "STOWAGE_CA", value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Token path of the registry.
    #[arg(long, default_value = "/token")]
    path: String,
}

enum Target {
    Online(AccessClient<AdminChannel>, String),
    Offline(Store),
}

/// What offline changes are recorded as.
fn offline_actor() -> Actor {
    Actor::system("offline-cli")
}

async fn open(t: &TargetArgs) -> Result<Target, String> {
    match &t.data_dir {
        Some(dir) => {
            if !dir.join("index").exists() {
                // The first admin is usually made before the first start.
                eprintln!("creating a new data directory in {}", dir.display());
            }
            let store = Store::open(StoreConfig::new(dir)).await.map_err(|e| {
                let text = e.to_string();
                if text.contains("lock") {
                    format!(
                        "the index in {} is in use (is the daemon running? then use --server): {text}",
                        dir.display()
                    )
                } else {
                    format!("opening {}: {text}", dir.display())
                }
            })?;
            Ok(Target::Offline(store))
        }
        None => Ok(Target::Online(
            AccessClient::new(t.conn.channel().await?),
            t.conn.server.clone(),
        )),
    }
}

/// The new password of `name`: `STOWAGE_NEW_PASSWORD`, else one line of standard input.
/// (`STOWAGE_PASSWORD` is the caller's own password, for `--user`.)
fn hash_new_password(name: &str) -> Result<String, String> {
    let p = match std::env::var("STOWAGE_NEW_PASSWORD") {
        Ok(p) if !p.is_empty() => p,
        _ => crate::client::read_line(&format!("new password for {name}"))?,
    };
    stowage_auth::password::check_new_password(&p).map_err(|e| e.to_string())?;
    stowage_auth::password::hash_password(&p).map_err(|e| format!("hashing the password: {e}"))
}

fn done(what: &str) -> Result<(), String> {
    emit(&format!("{what}\n"))
}

/// Runs `stowage user ...`.
pub fn user(args: UserArgs) -> Result<(), String> {
    cli_runtime()?.block_on(user_async(args))
}

async fn user_async(args: UserArgs) -> Result<(), String> {
    match args.command {
        UserCommand::Add {
            name,
            admin,
            target,
        } => {
            let hash = hash_new_password(&name)?;
            match open(&target).await? {
                Target::Online(mut c, server) => {
                    c.add_user(pb::AddUserRequest {
                        name: name.clone(),
                        password_hash: hash,
                        system_admin: admin,
                    })
                    .await
                    .map_err(|s| rpc_error(&format!("adding user {name}"), &server, &s))?;
                }
                Target::Offline(store) => {
                    stowage_store::check_user_name(&name).map_err(|e| e.to_string())?;
                    store
                        .accounts()
                        .add_user(&offline_actor(), &name, hash, admin)
                        .await
                        .map_err(|e| format!("adding user {name}: {e}"))?;
                }
            }
            done(&format!(
                "user {name} added{}",
                if admin { " (system-admin)" } else { "" }
            ))
        }
        UserCommand::Passwd { name, target } => {
            let hash = hash_new_password(&name)?;
            update(&target, &name, Some(hash), None).await?;
            done(&format!("password of {name} changed"))
        }
        UserCommand::Admin { name, on, target } => {
            update(&target, &name, None, Some(on)).await?;
            done(&format!(
                "{name} {} system-admin",
                if on { "is now" } else { "is no longer" }
            ))
        }
        UserCommand::Del { name, target } => {
            match open(&target).await? {
                Target::Online(mut c, server) => {
                    c.delete_user(pb::DeleteUserRequest { name: name.clone() })
                        .await
                        .map_err(|s| rpc_error(&format!("removing user {name}"), &server, &s))?;
                }
                Target::Offline(store) => store
                    .accounts()
                    .delete_user(&offline_actor(), &name)
                    .await
                    .map_err(|e| format!("removing user {name}: {e}"))?,
            }
            done(&format!("user {name} removed"))
        }
        UserCommand::List { json, target } => {
            let users = match open(&target).await? {
                Target::Online(mut c, server) => {
                    c.list_users(pb::ListUsersRequest {})
                        .await
                        .map_err(|s| rpc_error("listing users", &server, &s))?
                        .into_inner()
                        .users
                }
                Target::Offline(store) => {
                    let a = store.accounts();
                    let mut out = Vec::new();
                    for (name, r) in a.users().map_err(|e| e.to_string())? {
                        let roles = a
                            .grants_of(&name)
                            .map_err(|e| e.to_string())?
                            .into_iter()
                            .map(|(project, role)| pb::RoleInProject {
                                project,
                                role: role.to_string(),
                            })
                            .collect();
                        out.push(pb::UserInfo {
                            name,
                            system_admin: r.system_admin,
                            created_ms: r.created_ms,
                            updated_ms: r.updated_ms,
                            roles,
                            source: "index".into(),
                        });
                    }
                    out
                }
            };
            if json {
                let v: Vec<_> = users
                    .iter()
                    .map(|u| {
                        serde_json::json!({
                            "name": u.name, "system_admin": u.system_admin, "source": u.source,
                            "created_ms": u.created_ms,
                            "roles": u.roles.iter().map(|r| serde_json::json!({"project": r.project, "role": r.role})).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                emit(&format!("{}\n", serde_json::Value::Array(v)))
            } else {
                emit(&crate::access_text::users_text(&users))
            }
        }
        UserCommand::Grant {
            name,
            project,
            role,
            target,
        } => {
            let r = Role::parse(&role).ok_or_else(|| {
                format!("role {role:?} is not guest, developer, maintainer or admin")
            })?;
            match open(&target).await? {
                Target::Online(mut c, server) => {
                    c.grant_role(pb::GrantRoleRequest {
                        user: name.clone(),
                        project: project.clone(),
                        role: role.clone(),
                    })
                    .await
                    .map_err(|s| {
                        rpc_error(
                            &format!("granting {role} in {project} to {name}"),
                            &server,
                            &s,
                        )
                    })?;
                }
                Target::Offline(store) => store
                    .accounts()
                    .set_grant(&offline_actor(), &name, &project, r)
                    .await
                    .map_err(|e| format!("granting {role} in {project} to {name}: {e}"))?,
            }
            done(&format!("{name} is {role} in {project}"))
        }
        UserCommand::Revoke {
            name,
            project,
            target,
        } => {
            match open(&target).await? {
                Target::Online(mut c, server) => {
                    c.revoke_role(pb::RevokeRoleRequest {
                        user: name.clone(),
                        project: project.clone(),
                    })
                    .await
                    .map_err(|s| {
                        rpc_error(&format!("revoking {name}'s role in {project}"), &server, &s)
                    })?;
                }
                Target::Offline(store) => store
                    .accounts()
                    .revoke(&offline_actor(), &name, &project)
                    .await
                    .map_err(|e| format!("revoking {name}'s role in {project}: {e}"))?,
            }
            done(&format!("{name} has no role in {project} any more"))
        }
    }
}

async fn update(
    target: &TargetArgs,
    name: &str,
    hash: Option<String>,
    admin: Option<bool>,
) -> Result<(), String> {
    match open(target).await? {
        Target::Online(mut c, server) => {
            c.update_user(pb::UpdateUserRequest {
                name: name.to_string(),
                password_hash: hash,
                system_admin: admin,
            })
            .await
            .map_err(|s| rpc_error(&format!("changing user {name}"), &server, &s))?;
        }
        Target::Offline(store) => {
            store
                .accounts()
                .update_user(&offline_actor(), name, hash, admin)
                .await
                .map_err(|e| format!("changing user {name}: {e}"))?;
        }
    }
    Ok(())
}

/// Runs `stowage robot ...`.
pub fn robot(args: RobotArgs) -> Result<(), String> {
    cli_runtime()?.block_on(robot_async(args))
}

async fn robot_async(args: RobotArgs) -> Result<(), String> {
    match args.command {
        RobotCommand::Create {
            name,
            project,
            actions,
            expires,
            json,
            target,
        } => {
            let parsed = actions
                .iter()
                .map(|a| {
                    Action::parse(a.trim())
                        .ok_or_else(|| format!("action {a:?} is not pull, push or delete"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let expires_in_ms = expires.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            let r = match open(&target).await? {
                Target::Online(mut c, server) => c
                    .create_robot(pb::CreateRobotRequest {
                        name: name.clone(),
                        project: project.clone(),
                        actions: parsed.iter().map(|a| a.to_string()).collect(),
                        expires_in_ms,
                    })
                    .await
                    .map_err(|s| rpc_error(&format!("creating robot {name}"), &server, &s))?
                    .into_inner(),
                Target::Offline(store) => {
                    let a = store.accounts();
                    let secret = stowage_auth::password::generate_secret()
                        .map_err(|e| format!("making a robot secret: {e}"))?;
                    let expires_ms = expires_in_ms.map(|ms| a.now_ms().saturating_add(ms));
                    let account = a
                        .create_robot(
                            &offline_actor(),
                            &project,
                            &name,
                            parsed,
                            expires_ms,
                            stowage_auth::password::secret_sha256(&secret),
                        )
                        .await
                        .map_err(|e| format!("creating robot {name}: {e}"))?;
                    pb::CreateRobotResponse {
                        account,
                        secret,
                        expires_ms,
                    }
                }
            };
            if json {
                emit(&format!(
                    "{}\n",
                    serde_json::json!({"account": r.account, "secret": r.secret, "expires_ms": r.expires_ms})
                ))
            } else {
                emit(&format!(
                    "robot account: {}\nsecret:        {}\n(the secret is shown once: store it now)\n",
                    r.account, r.secret
                ))
            }
        }
        RobotCommand::List { json, target } => {
            let robots = match open(&target).await? {
                Target::Online(mut c, server) => {
                    c.list_robots(pb::ListRobotsRequest {})
                        .await
                        .map_err(|s| rpc_error("listing robots", &server, &s))?
                        .into_inner()
                        .robots
                }
                Target::Offline(store) => store
                    .accounts()
                    .robots()
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .map(|(account, r)| pb::RobotInfo {
                        account,
                        project: r.project,
                        actions: r.actions.iter().map(|a| a.to_string()).collect(),
                        created_ms: r.created_ms,
                        expires_ms: r.expires_ms,
                        created_by: r.created_by,
                    })
                    .collect(),
            };
            if json {
                let v: Vec<_> = robots
                    .iter()
                    .map(|r| serde_json::json!({"account": r.account, "project": r.project, "actions": r.actions, "created_ms": r.created_ms, "expires_ms": r.expires_ms, "created_by": r.created_by}))
                    .collect();
                emit(&format!("{}\n", serde_json::Value::Array(v)))
            } else {
                emit(&crate::access_text::robots_text(&robots))
            }
        }
        RobotCommand::Del { account, target } => {
            match open(&target).await? {
                Target::Online(mut c, server) => {
                    c.delete_robot(pb::DeleteRobotRequest {
                        account: account.clone(),
                    })
                    .await
                    .map_err(|s| rpc_error(&format!("removing robot {account}"), &server, &s))?;
                }
                Target::Offline(store) => store
                    .accounts()
                    .delete_robot(&offline_actor(), &account)
                    .await
                    .map_err(|e| format!("removing robot {account}: {e}"))?,
            }
            done(&format!("robot {account} removed"))
        }
    }
}

/// Runs `stowage project ...`.
pub fn project(args: ProjectArgs) -> Result<(), String> {
    cli_runtime()?.block_on(async {
        match args.command {
            ProjectCommand::Set {
                project,
                public,
                sparse_manifests,
                target,
            } => {
                let change = stowage_core::ProjectChange {
                    public,
                    sparse_manifests,
                };
                match open(&target).await? {
                    Target::Online(mut c, server) => {
                        c.set_project(pb::SetProjectRequest {
                            project: project.clone(),
                            public,
                            sparse_manifests,
                        })
                        .await
                        .map_err(|s| {
                            rpc_error(&format!("setting project {project}"), &server, &s)
                        })?;
                    }
                    Target::Offline(store) => {
                        store
                            .accounts()
                            .set_project(&offline_actor(), &project, change)
                            .await
                            .map_err(|e| format!("setting project {project}: {e}"))?;
                    }
                }
                done(&format!("project {project}: {}", change.describe()))
            }
            ProjectCommand::List { json, target } => {
                let projects = match open(&target).await? {
                    Target::Online(mut c, server) => {
                        c.list_projects(pb::ListProjectsRequest {})
                            .await
                            .map_err(|s| rpc_error("listing projects", &server, &s))?
                            .into_inner()
                            .projects
                    }
                    Target::Offline(store) => store
                        .accounts()
                        .projects()
                        .map_err(|e| e.to_string())?
                        .into_iter()
                        .map(|(project, p)| pb::ProjectInfo {
                            project,
                            public: p.public,
                            created_ms: p.created_ms,
                            sparse_manifests: p.sparse_manifests,
                        })
                        .collect(),
                };
                if json {
                    let v: Vec<_> = projects
                        .iter()
                        .map(|p| {
                            serde_json::json!({"project": p.project, "public": p.public,
                                               "sparse_manifests": p.sparse_manifests})
                        })
                        .collect();
                    emit(&format!("{}\n", serde_json::Value::Array(v)))
                } else {
                    emit(&crate::access_text::projects_text(&projects))
                }
            }
        }
    })
}

/// `--since`/`--until`: an RFC 3339 time or a duration before now.
fn when(text: &str, what: &str) -> Result<u64, String> {
    if let Ok(t) = humantime::parse_rfc3339_weak(text) {
        return t
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .map_err(|_| format!("{what} {text:?} is before 1970"));
    }
    let ago = crate::config::parse_duration(text)
        .map_err(|_| format!("{what} {text:?} is neither an RFC 3339 time nor a duration ago"))?;
    let now = stowage_core::Clock::now_millis(&stowage_core::SystemClock);
    Ok(now.saturating_sub(u64::try_from(ago.as_millis()).unwrap_or(u64::MAX)))
}

fn record_json(r: &pb::AuditRecord) -> serde_json::Value {
    let mut v = serde_json::json!({
        "seq": r.seq,
        "time": crate::gc_cli::timestamp(r.ts_ms),
        "ts_ms": r.ts_ms,
        "actor": r.actor,
        "action": r.action,
        "outcome": r.outcome,
        "prev_hash": r.prev_hash,
        "hash": r.hash,
    });
    for (k, val) in [
        ("addr", &r.addr),
        ("repository", &r.repository),
        ("target", &r.target),
        ("detail", &r.detail),
    ] {
        if !val.is_empty() {
            v[k] = serde_json::Value::String(val.clone());
        }
    }
    v
}

/// Runs `stowage audit ...`.
pub fn audit(args: AuditArgs) -> Result<(), String> {
    cli_runtime()?.block_on(async {
        match args.command {
            Some(AuditCommand::Verify { json, target }) => {
                let r = match open(&target).await? {
                    Target::Online(_, server) => {
                        let mut c = AccessClient::new(target.conn.channel().await?);
                        c.verify_audit(pb::VerifyAuditRequest {})
                            .await
                            .map_err(|s| rpc_error("verifying the audit log", &server, &s))?
                            .into_inner()
                    }
                    Target::Offline(store) => {
                        let report = store
                            .index()
                            .audit_verify()
                            .map_err(|e| format!("verifying the audit log: {e}"))?;
                        verify_to_proto(report)
                    }
                };
                let text = if json {
                    let v = serde_json::json!({
                        "checked": r.checked, "first_seq": r.first_seq, "last_seq": r.last_seq,
                        "intact": r.problems.is_empty(),
                        "problems": r.problems.iter().map(|p| serde_json::json!({"kind": p.kind, "seq": p.seq, "to_seq": p.to_seq, "detail": p.detail})).collect::<Vec<_>>(),
                    });
                    format!("{v}\n")
                } else {
                    let mut t = format!(
                        "checked {} entries ({}..={})\n",
                        r.checked, r.first_seq, r.last_seq
                    );
                    for p in &r.problems {
                        if p.kind == "missing" && p.to_seq != p.seq {
                            t.push_str(&format!("entries {}-{}: missing: {}\n", p.seq, p.to_seq, p.detail));
                        } else {
                            t.push_str(&format!("entry {}: {}: {}\n", p.seq, p.kind, p.detail));
                        }
                    }
                    if r.problems.is_empty() {
                        t.push_str("the audit log is intact\n");
                    }
                    t
                };
                emit(&text)?;
                if r.problems.is_empty() {
                    Ok(())
                } else {
                    Err(format!(
                        "the audit log has {} problem(s): it was changed outside the daemon",
                        r.problems.len()
                    ))
                }
            }
            None => query(args.query).await,
        }
    })
}

async fn query(q: AuditQuery) -> Result<(), String> {
    let req = pb::QueryAuditRequest {
        since_ms: q.since.as_deref().map(|s| when(s, "--since")).transpose()?,
        until_ms: q.until.as_deref().map(|s| when(s, "--until")).transpose()?,
        actor: q.actor.unwrap_or_default(),
        repository: q.repo.unwrap_or_default(),
        action: q.action.unwrap_or_default(),
        after_seq: 0,
        limit: q.limit.unwrap_or(0),
    };
    let target = q.target;
    let records: Vec<pb::AuditRecord> = match open(&target).await? {
        Target::Online(mut c, server) => {
            let mut stream = c
                .query_audit(req)
                .await
                .map_err(|s| rpc_error("reading the audit log", &server, &s))?
                .into_inner();
            let mut out = Vec::new();
            while let Some(item) = stream.next().await {
                out.push(item.map_err(|s| rpc_error("reading the audit log", &server, &s))?);
            }
            out
        }
        Target::Offline(store) => {
            let filter = filter_of(&req)?;
            store
                .index()
                .audit_query(&filter)
                .map_err(|e| format!("reading the audit log: {e}"))?
                .into_iter()
                .map(record_to_proto)
                .collect()
        }
    };
    if let Some(path) = q.output {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("opening {}: {e}", path.display()))?;
        let mut text = String::new();
        for r in &records {
            text.push_str(&record_json(r).to_string());
            text.push('\n');
        }
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        eprintln!("{} entries appended to {}", records.len(), path.display());
        return Ok(());
    }
    let mut text = String::new();
    if q.json {
        for r in &records {
            text.push_str(&record_json(r).to_string());
            text.push('\n');
        }
    } else {
        for r in &records {
            text.push_str(&format!(
                "{:>6} {} {:<28} {:<16} {:<7} {}{}{}{}\n",
                r.seq,
                crate::gc_cli::timestamp(r.ts_ms),
                r.actor,
                r.action,
                r.outcome,
                if r.repository.is_empty() {
                    String::new()
                } else {
                    format!("{} ", r.repository)
                },
                r.target,
                if r.detail.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", r.detail)
                },
                if r.addr.is_empty() {
                    String::new()
                } else {
                    format!(" from {}", r.addr)
                },
            ));
        }
    }
    emit(&text)
}

/// Runs `stowage token`: prints a bearer token (for `--token` of the admin commands, or curl).
pub fn token(args: TokenArgs) -> Result<(), String> {
    let password = read_password(&args.user)?;
    cli_runtime()?.block_on(async {
        let mut b = reqwest::Client::builder().timeout(Duration::from_secs(30));
        if let Some(ca) = &args.ca {
            let pem = std::fs::read(ca).map_err(|e| format!("reading {}: {e}", ca.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| format!("{}: {e}", ca.display()))?;
            b = b.add_root_certificate(cert);
        }
        let client = b.build().map_err(|e| format!("HTTP client: {e}"))?;
        let mut url = format!(
            "{}{}?service=stowage",
            args.registry.trim_end_matches('/'),
            args.path
        );
        let admin = ["registry:admin:*".to_string()];
        let scopes = if args.scope.is_empty() {
            &admin[..]
        } else {
            &args.scope[..]
        };
        for s in scopes {
            url.push_str("&scope=");
            url.push_str(&form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>());
        }
        let resp = client
            .get(&url)
            .basic_auth(&args.user, Some(&password))
            .send()
            .await
            .map_err(|e| format!("asking {url} for a token: {e}"))?;
        let status = resp.status();
        let body: serde_json::Value = resp
            .json()
            .await
            .map_err(|e| format!("reading the token service's answer: {e}"))?;
        if !status.is_success() {
            return Err(format!("the token service refused ({status}): {body}"));
        }
        let token = body["token"]
            .as_str()
            .ok_or("the token service's answer has no token")?;
        emit(&format!("{token}\n"))
    })
}
