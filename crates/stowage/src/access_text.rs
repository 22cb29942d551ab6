//! The human forms of `stowage user list`, `stowage robot list` and `stowage project list`:
//! one header line, then one row per account or project, columns as wide as their widest
//! cell (a long robot account never runs into the next column).

use stowage_rpc::v1 as pb;

use crate::cli_table::table;

fn yes(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

/// Users with their system-admin flag, where they come from and their project roles.
pub(crate) fn users_text(users: &[pb::UserInfo]) -> String {
    let rows: Vec<[String; 4]> = users
        .iter()
        .map(|u| {
            let roles: Vec<String> = u
                .roles
                .iter()
                .map(|r| format!("{}:{}", r.project, r.role))
                .collect();
            [
                u.name.clone(),
                yes(u.system_admin),
                u.source.clone(),
                roles.join(" "),
            ]
        })
        .collect();
    table(
        &["USER", "SYSTEM-ADMIN", "SOURCE", "ROLES"],
        &rows,
        &[false; 4],
    )
}

/// Robot accounts (never their secrets) with project, actions and expiry.
pub(crate) fn robots_text(robots: &[pb::RobotInfo]) -> String {
    let rows: Vec<[String; 4]> = robots
        .iter()
        .map(|r| {
            [
                r.account.clone(),
                r.project.clone(),
                r.actions.join(","),
                r.expires_ms
                    .map(crate::gc_cli::timestamp)
                    .unwrap_or_else(|| "never".into()),
            ]
        })
        .collect();
    table(
        &["ACCOUNT", "PROJECT", "ACTIONS", "EXPIRES"],
        &rows,
        &[false; 4],
    )
}

/// Projects with their settings.
pub(crate) fn projects_text(projects: &[pb::ProjectInfo]) -> String {
    let rows: Vec<[String; 3]> = projects
        .iter()
        .map(|p| [p.project.clone(), yes(p.public), yes(p.sparse_manifests)])
        .collect();
    table(&["PROJECT", "PUBLIC", "SPARSE"], &rows, &[false; 3])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The cells of each line, split on runs of two or more spaces (cells hold single spaces).
    fn cells(text: &str) -> Vec<Vec<String>> {
        text.lines()
            .map(|l| {
                l.split("  ")
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .collect()
    }

    #[test]
    fn a_long_robot_account_keeps_its_own_column() {
        let robots = [
            pb::RobotInfo {
                account: "robot$platform-team+ci-deployer-production".into(),
                project: "platform-team-with-a-long-name".into(),
                actions: vec!["pull".into(), "push".into(), "delete".into()],
                created_ms: 1,
                expires_ms: None,
                created_by: "user:root".into(),
            },
            pb::RobotInfo {
                account: "robot$a+b".into(),
                project: "a".into(),
                actions: vec!["pull".into()],
                created_ms: 1,
                expires_ms: Some(1_700_000_000_000),
                created_by: "user:root".into(),
            },
        ];
        let text = robots_text(&robots);
        assert_eq!(
            cells(&text),
            [
                vec!["ACCOUNT", "PROJECT", "ACTIONS", "EXPIRES"],
                vec![
                    "robot$platform-team+ci-deployer-production",
                    "platform-team-with-a-long-name",
                    "pull,push,delete",
                    "never"
                ],
                vec!["robot$a+b", "a", "pull", "2023-11-14T22:13:20Z"],
            ],
            "{text}"
        );
        // Every column starts at the same place on every line.
        let at = |line: &str, cell: &str| line.find(cell).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(at(lines[0], "PROJECT"), at(lines[1], "platform-team-with"));
        assert_eq!(at(lines[0], "EXPIRES"), at(lines[2], "2023-"), "{text}");
        assert!(lines.iter().all(|l| !l.ends_with(' ')), "{text:?}");
    }

    #[test]
    fn users_and_projects() {
        let users = [pb::UserInfo {
            name: "a-user-with-a-name-longer-than-24".into(),
            system_admin: true,
            created_ms: 1,
            updated_ms: 1,
            roles: vec![
                pb::RoleInProject {
                    project: "team".into(),
                    role: "developer".into(),
                },
                pb::RoleInProject {
                    project: "ops".into(),
                    role: "guest".into(),
                },
            ],
            source: "index".into(),
        }];
        assert_eq!(
            cells(&users_text(&users)),
            [
                vec!["USER", "SYSTEM-ADMIN", "SOURCE", "ROLES"],
                vec![
                    "a-user-with-a-name-longer-than-24",
                    "yes",
                    "index",
                    "team:developer ops:guest"
                ],
            ]
        );
        let projects = [pb::ProjectInfo {
            project: "a-project-whose-name-is-longer-than-32".into(),
            public: true,
            created_ms: 1,
            sparse_manifests: false,
        }];
        assert_eq!(
            cells(&projects_text(&projects)),
            [
                vec!["PROJECT", "PUBLIC", "SPARSE"],
                vec!["a-project-whose-name-is-longer-than-32", "yes", "no"],
            ]
        );
        // An empty list is the header alone.
        assert_eq!(projects_text(&[]), "PROJECT  PUBLIC  SPARSE\n");
    }
}
