//! `stowage fsck` the way an operator runs it: the real daemon, blobs pushed over HTTP, the
//! data dir broken behind the daemon's back, and the command line talking to the admin gRPC
//! service with `--json`.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::process::{Command, Output};
use std::time::Duration;

use common::{data, sha256, Daemon};
use reqwest::StatusCode;
use serde_json::Value;

async fn push_blob(c: &reqwest::Client, d: &Daemon, repo: &str, bytes: &[u8]) -> String {
    let digest = sha256(bytes);
    let r = c
        .post(d.url(&format!("/v2/{repo}/blobs/uploads/?digest={digest}")))
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
    digest
}

/// Runs `stowage fsck --json ARGS` against `d` and returns its exit code and report.
async fn fsck(d: &Daemon, extra: &[&str]) -> (i32, Value) {
    let mut args: Vec<String> = ["fsck", "--json", "--server"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(d.admin.trim_start_matches("http://").to_string());
    args.extend(extra.iter().map(|s| s.to_string()));
    let out: Output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_stowage"))
            .args(&args)
            .env_remove("STOWAGE_SERVER")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "fsck printed no JSON ({e}): {stdout} / {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap(), report)
}

fn kinds(report: &Value) -> BTreeSet<String> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn fsck_cli_reports_repairs_and_exits_by_what_it_found() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let kept = push_blob(&c, &d, "app", &data(40_000, 1)).await;
    let lost = push_blob(&c, &d, "app", &data(30_000, 2)).await;

    let (code, clean) = fsck(&d, &["--verify-bytes", "--min-orphan-age", "0s"]).await;
    assert_eq!(code, 0, "{clean}");
    assert_eq!(clean["findings"], serde_json::json!([]));
    assert_eq!(clean["blobs"], 2);
    assert_eq!(clean["bytes_verified"], 70_000);

    let hex = lost.trim_start_matches("sha256:");
    let blobs = dir.path().join("cas/blobs/sha256");
    std::fs::remove_file(blobs.join(&hex[..2]).join(hex)).unwrap();
    std::fs::write(blobs.join(&hex[..2]).join("stray"), b"nobody's").unwrap();

    let (code, found) = fsck(&d, &["--min-orphan-age", "0s"]).await;
    assert_eq!(code, 2, "defects found: {found}");
    assert_eq!(
        kinds(&found),
        ["blob_missing", "orphan_bytes"].map(String::from).into()
    );
    let missing = found["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == "blob_missing")
        .unwrap();
    assert_eq!(missing["digest"], lost.as_str());
    assert_eq!(missing["repaired"], Value::Null);
    // Still served as present until repaired: the index has not changed.
    let head = c
        .head(d.url(&format!("/v2/app/blobs/{lost}")))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK);

    // With the default age bound, the fresh stray file is taken for an upload in flight.
    let (code, young) = fsck(&d, &[]).await;
    assert_eq!(code, 2);
    assert_eq!(kinds(&young), ["blob_missing"].map(String::from).into());
    assert_eq!(young["in_flight"], 1);

    let (code, repaired) = fsck(&d, &["--repair", "--min-orphan-age", "0s"]).await;
    assert_eq!(code, 2, "defects were found, and repaired: {repaired}");
    for f in repaired["findings"].as_array().unwrap() {
        assert!(f["repaired"].is_string(), "{f}");
    }

    let (code, after) = fsck(&d, &["--verify-bytes", "--min-orphan-age", "0s"]).await;
    assert_eq!(code, 0, "{after}");
    assert_eq!(after["findings"], serde_json::json!([]));
    let head = c
        .head(d.url(&format!("/v2/app/blobs/{lost}")))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::NOT_FOUND, "no longer served");
    let head = c
        .head(d.url(&format!("/v2/app/blobs/{kept}")))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK);
}
