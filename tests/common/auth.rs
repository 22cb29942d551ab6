//! Accounts and credentials for end-to-end tests: users created with the real CLI (offline on
//! a stopped daemon's data directory, or online through the admin service), tokens fetched
//! from the daemon's own token service.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

use reqwest::StatusCode;

use super::Daemon;

/// The `stowage` binary.
pub fn stowage() -> Command {
    Command::new(env!("CARGO_BIN_EXE_stowage"))
}

/// Runs the CLI with `envs` set (and the CLI's other variables cleared); returns its output.
pub fn cli_env(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut c = stowage();
    c.args(args);
    for v in [
        "STOWAGE_PASSWORD",
        "STOWAGE_NEW_PASSWORD",
        "STOWAGE_TOKEN",
        "STOWAGE_USER",
        "STOWAGE_SERVER",
    ] {
        c.env_remove(v);
    }
    c.envs(envs.iter().copied());
    c.output().unwrap()
}

/// Runs the CLI and asserts it succeeded; its standard output.
pub fn cli_ok(args: &[&str], envs: &[(&str, &str)]) -> String {
    let out = cli_env(args, envs);
    assert!(
        out.status.success(),
        "stowage {args:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Creates a user on a stopped daemon's data directory (how the first admin is made).
pub fn add_user_offline(data_dir: &Path, name: &str, password: &str, admin: bool) {
    let dir = data_dir.to_str().unwrap();
    let mut args = vec!["user", "add", name, "--data-dir", dir];
    if admin {
        args.push("--admin");
    }
    cli_ok(&args, &[("STOWAGE_NEW_PASSWORD", password)]);
}

/// Runs an admin command on a running daemon as system admin `admin` (password `pw`), with
/// `new_password` for commands that set one.
pub fn admin_cli(
    d: &Daemon,
    admin: &str,
    pw: &str,
    args: &[&str],
    new_password: Option<&str>,
) -> String {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--server", &d.admin, "--user", admin]);
    let mut envs = vec![("STOWAGE_PASSWORD", pw)];
    if let Some(n) = new_password {
        envs.push(("STOWAGE_NEW_PASSWORD", n));
    }
    cli_ok(&all, &envs)
}

/// Starts a daemon in `mode` (basic or token) on `data_dir` with a system admin already
/// created offline.
pub fn start_with_admin(
    data_dir: &Path,
    mode: &str,
    admin: &str,
    pw: &str,
    extra: &[&str],
) -> Daemon {
    add_user_offline(data_dir, admin, pw, true);
    let mut args = vec!["--auth-mode", mode];
    args.extend_from_slice(extra);
    Daemon::start_with(data_dir, &args)
}

/// Asks the daemon's token service for a token for `scopes`, as `creds` (None: anonymous).
pub async fn token(
    c: &reqwest::Client,
    d: &Daemon,
    creds: Option<(&str, &str)>,
    scopes: &[&str],
) -> String {
    let mut url = format!("{}/token?service=stowage", d.base);
    for s in scopes {
        url.push_str("&scope=");
        url.push_str(
            &s.replace(':', "%3A")
                .replace(',', "%2C")
                .replace('/', "%2F"),
        );
    }
    let mut req = c.get(&url);
    if let Some((u, p)) = creds {
        req = req.basic_auth(u, Some(p));
    }
    let r = req.send().await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "token for {creds:?}: {:?}",
        r.text().await
    );
    let v: serde_json::Value = r.json().await.unwrap();
    v["token"].as_str().unwrap().to_string()
}

/// The `access` claim of a token (decoded without verifying: tests only read what was
/// granted).
pub fn granted(token: &str) -> serde_json::Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    v["access"].clone()
}
