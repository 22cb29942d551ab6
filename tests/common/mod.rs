//! Shared harness for end-to-end tests: starts the real `stowage serve` binary on ephemeral
//! loopback ports and talks to it over HTTP.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::Digest as _;

pub mod auth;
#[path = "../../crates/stowage-cas/src/azurite.rs"]
pub mod azurite;
pub mod image;
pub mod layout;
#[path = "../../crates/stowage-cas/src/moto.rs"]
pub mod moto;
pub mod pki;
pub mod sites;
#[path = "../../crates/stowage-cas/src/testserver.rs"]
pub mod testserver;

/// Environment for a daemon using the moto server as its S3 backend (any credentials work).
pub const S3_ENV: [(&str, &str); 2] = [
    ("AWS_ACCESS_KEY_ID", "test"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
];

/// `stowage serve` flags for an S3 backend on the moto server, in a fresh bucket.
pub fn s3_args() -> Vec<String> {
    vec![
        "--storage-backend".into(),
        "s3".into(),
        "--storage-bucket".into(),
        moto::bucket(),
        "--storage-endpoint".into(),
        moto::endpoint(),
        "--storage-region".into(),
        "us-east-1".into(),
        "--storage-path-style".into(),
        "true".into(),
        "--storage-allow-http".into(),
        "true".into(),
    ]
}

/// A running daemon.
pub struct Daemon {
    pub child: Child,
    pub base: String,
    pub host: String,
    pub admin: String,
    /// The replication listener (`http://127.0.0.1:PORT`), where peers connect.
    pub repl: String,
    pub data_dir: PathBuf,
}

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

impl Daemon {
    /// Starts `stowage serve` on `data_dir` with ephemeral ports and waits until `/v2/` answers.
    pub fn start(data_dir: &Path) -> Daemon {
        Self::start_with(data_dir, &[])
    }

    pub fn start_with(data_dir: &Path, extra: &[&str]) -> Daemon {
        Self::start_on(data_dir, "127.0.0.1:0", extra)
    }

    /// Starts with the replication service on `repl_listen` (a restart that peers must find
    /// again).
    pub fn start_on(data_dir: &Path, repl_listen: &str, extra: &[&str]) -> Daemon {
        let mut args = vec!["--repl-listen", repl_listen];
        args.extend_from_slice(extra);
        Self::start_full(data_dir, "127.0.0.1:0", &args, &[])
    }

    /// Starts on the S3 backend of the tests' moto server (a fresh bucket).
    pub fn start_s3(data_dir: &Path, extra: &[&str]) -> Daemon {
        let mut args = s3_args();
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Self::start_full(data_dir, "127.0.0.1:0", &args, &S3_ENV)
    }

    /// Starts with `extra` flags and `envs` set for the daemon.
    pub fn start_full(
        data_dir: &Path,
        admin_listen: &str,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> Daemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_stowage"))
            .envs(envs.iter().copied())
            .args(["serve", "--data-dir"])
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", admin_listen])
            .args(["--log-level", "warn"])
            .args(if extra.contains(&"--repl-listen") {
                &[][..]
            } else {
                &["--repl-listen", "127.0.0.1:0"][..]
            })
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning stowage");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let mut base = None;
        let mut admin = None;
        let mut repl = None;
        while base.is_none() || admin.is_none() || repl.is_none() {
            let line = match lines.next() {
                Some(Ok(l)) => l,
                _ => {
                    let status = child.wait().unwrap();
                    panic!("stowage exited before listening: {status}");
                }
            };
            if let Some(a) = line.strip_prefix("stowage listening on ") {
                base = Some(a.trim().to_string());
            } else if let Some(a) = line.strip_prefix("stowage admin listening on ") {
                admin = Some(a.trim().to_string());
            } else if let Some(a) = line.strip_prefix("stowage replication listening on ") {
                repl = Some(a.trim().to_string());
            }
        }
        // Keep draining stdout so the daemon never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let base = base.unwrap();
        let host = base
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .to_string();
        let d = Daemon {
            child,
            base,
            host,
            admin: admin.unwrap(),
            repl: repl.unwrap(),
            data_dir: data_dir.to_path_buf(),
        };
        d.wait_ready();
        d
    }

    fn wait_ready(&self) {
        // Listeners are bound before the start lines are printed; over TLS there is nothing
        // more this plain-HTTP probe could tell.
        if self.base.starts_with("https://") {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = ureq_get(&format!("{}/v2/", self.base)) {
                // 401: authentication is on and the API answers.
                if r == 200 || r == 401 {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "daemon not ready in 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9`.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, and the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        // Our own child, by PID (the workspace forbids unsafe code, so no libc::kill).
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "sending SIGTERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Minimal blocking GET returning the status (used before the async client exists).
fn ureq_get(url: &str) -> Result<u16, String> {
    use std::io::{Read, Write};
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut s = std::net::TcpStream::connect(host).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok();
    write!(
        s,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).map_err(|e| e.to_string())?;
    let code = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("no status")?;
    Ok(code)
}

/// Runs a command, panicking with its output when it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed: {}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts a tool is installed (the project's scripts install it; see scripts/install-test-deps.sh).
pub fn require_tool(name: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{name} is not installed: run scripts/install-test-deps.sh (CI does this in .ci/run)"
    );
}

/// Deterministic pseudo-random bytes.
pub fn data(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
