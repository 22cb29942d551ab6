//! An S3-compatible test server for the conformance suite: moto's server, installed by
//! `scripts/install-deps.sh --test` into `$HOME/.cache/stowage/venv` (or `STOWAGE_MOTO_SERVER`).
//! One server per test process, started on first use on a free loopback port; a watchdog shell
//! ends it when the test process exits. Each caller gets a bucket of its own.
#![allow(clippy::unwrap_used, dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use super::testserver;

/// The server's endpoint (`http://127.0.0.1:PORT`).
pub fn endpoint() -> String {
    static ENDPOINT: OnceLock<String> = OnceLock::new();
    ENDPOINT.get_or_init(start).clone()
}

fn binary() -> String {
    if let Ok(p) = std::env::var("STOWAGE_MOTO_SERVER") {
        return p;
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let p = format!("{home}/.cache/stowage/venv/bin/moto_server");
    assert!(
        std::path::Path::new(&p).exists(),
        "moto_server not found at {p}: run scripts/install-deps.sh --test (CI does this in .ci/run)"
    );
    p
}

fn start() -> String {
    let bin = binary();
    testserver::start("moto_server", |port| {
        format!("{bin} -H 127.0.0.1 -p {port}")
    })
}

fn port() -> u16 {
    testserver::port_of(&endpoint())
}

/// A new, empty bucket.
pub fn bucket() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "t{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let status = testserver::request("PUT", port(), &format!("/{name}"), &[]).unwrap();
    assert_eq!(status, 200, "creating bucket {name}");
    name
}

/// The keys of the incomplete multipart uploads in `bucket`, from moto's ListMultipartUploads
/// (read here with a plain request, independently of the code under test; moto does not check
/// signatures).
pub fn multipart_uploads(bucket: &str) -> Vec<String> {
    let (status, text) = testserver::get(port(), &format!("/{bucket}?uploads")).unwrap();
    assert_eq!(status, 200, "listing multipart uploads of {bucket}: {text}");
    text.split("<Key>")
        .skip(1)
        .map(|rest| rest.split("</Key>").next().unwrap().to_string())
        .collect()
}

/// Starts a multipart upload to `key` in `bucket` and leaves it incomplete, as a process that
/// died in the middle of a write does.
pub fn start_multipart(bucket: &str, key: &str) {
    let status =
        testserver::request("POST", port(), &format!("/{bucket}/{key}?uploads"), &[]).unwrap();
    assert_eq!(status, 200, "starting a multipart upload to {key}");
}
