//! Sites for replication tests: daemons with a site name and replication peers, and waiting
//! for them to agree.
#![allow(dead_code, clippy::unwrap_used)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{run, Daemon};

/// One `[[replication.peers]]` entry: name, endpoint, direction, extra TOML lines.
pub struct Peer<'a>(pub &'a str, pub &'a str, pub &'a str, pub &'a str);

/// Writes a config file for site `site` with `peers` and returns its path.
pub fn config(dir: &Path, site: &str, peers: &[Peer<'_>]) -> PathBuf {
    let mut text = format!("[site]\nname = \"{site}\"\n");
    for Peer(name, endpoint, direction, extra) in peers {
        text.push_str(&format!(
            "\n[[replication.peers]]\nname = \"{name}\"\nendpoint = \"{endpoint}\"\ndirection = \"{direction}\"\n{extra}\n"
        ));
    }
    let path = dir.join(format!("{site}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts site `name` with its config (data in `root/<name>`).
pub fn site(root: &Path, name: &str, peers: &[Peer<'_>]) -> Daemon {
    site_on(root, name, "127.0.0.1:0", peers)
}

/// [`site`] with its replication listener on `repl` (to restart a site on the same address).
pub fn site_on(root: &Path, name: &str, repl: &str, peers: &[Peer<'_>]) -> Daemon {
    let cfg = config(root, name, peers);
    Daemon::start_on(&root.join(name), repl, &["--config", cfg.to_str().unwrap()])
}

/// Polls `check` until it holds, failing after `secs` seconds with `what`. (Another process's
/// state has no signal to wait on here.)
pub async fn wait_for<F, Fut>(what: &str, secs: u64, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `stowage repl status --json` of a daemon.
pub fn status(d: &Daemon) -> serde_json::Value {
    let out = run(Command::new(env!("CARGO_BIN_EXE_stowage"))
        .args(["repl", "status", "--json", "--server", &d.admin]));
    serde_json::from_str(&out).unwrap()
}

/// [`status`], for one peer.
pub fn peer_status(d: &Daemon, peer: &str) -> serde_json::Value {
    let s = status(d);
    s["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == peer)
        .cloned()
        .unwrap_or_else(|| panic!("no peer {peer} in {s}"))
}

/// Waits until the peer reports nothing left to do.
pub async fn wait_in_sync(d: &Daemon, peer: &str, secs: u64) {
    wait_for(&format!("{peer} in sync"), secs, || async {
        let p = peer_status(d, peer);
        p["state"] == "in_sync" && p["lag_events"].as_u64() == Some(0)
    })
    .await;
}

/// `stowage repl sync PEER --json` (anti-entropy now).
pub fn sync(d: &Daemon, peer: &str) -> serde_json::Value {
    let out = run(Command::new(env!("CARGO_BIN_EXE_stowage"))
        .args(["repl", "sync", peer, "--json", "--server", &d.admin]));
    serde_json::from_str(&out).unwrap()
}
