//! Garbage collection driven the way an operator drives it: the real daemon, images pushed over
//! HTTP, and the `stowage gc` command line talking to the admin gRPC service.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::{data, sha256, Daemon};
use reqwest::StatusCode;
use serde_json::Value;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

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

async fn get(c: &reqwest::Client, d: &Daemon, path: &str) -> (StatusCode, Vec<u8>) {
    let r = c.get(d.url(path)).send().await.unwrap();
    (r.status(), r.bytes().await.unwrap().to_vec())
}

/// An image: its config and layers, and the manifest that references them.
struct Image {
    blobs: Vec<(String, Vec<u8>)>,
    manifest: Vec<u8>,
}

impl Image {
    fn new(seed: u64, layer_sizes: &[usize]) -> Image {
        let config = format!("{{\"architecture\":\"amd64\",\"seed\":{seed}}}").into_bytes();
        let mut blobs = vec![(sha256(&config), config)];
        for (i, &n) in layer_sizes.iter().enumerate() {
            let layer = data(n, seed * 100 + i as u64);
            blobs.push((sha256(&layer), layer));
        }
        let layers: Vec<Value> = blobs[1..]
            .iter()
            .map(|(d, b)| {
                serde_json::json!({
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": d,
                    "size": b.len(),
                })
            })
            .collect();
        let manifest = serde_json::to_vec_pretty(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": blobs[0].0,
                "size": blobs[0].1.len(),
            },
            "layers": layers,
        }))
        .unwrap();
        Image { blobs, manifest }
    }

    fn digest(&self) -> String {
        sha256(&self.manifest)
    }

    fn blob_bytes(&self) -> u64 {
        self.blobs.iter().map(|(_, b)| b.len() as u64).sum()
    }

    async fn push(&self, c: &reqwest::Client, d: &Daemon, repo: &str, tag: &str) {
        for (_, bytes) in &self.blobs {
            push_blob(c, d, repo, bytes).await;
        }
        let r = c
            .put(d.url(&format!("/v2/{repo}/manifests/{tag}")))
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(self.manifest.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
    }

    /// Every blob and the manifest pull byte-identical from `repo`.
    async fn assert_intact(&self, c: &reqwest::Client, d: &Daemon, repo: &str, tag: &str) {
        let (st, body) = get(c, d, &format!("/v2/{repo}/manifests/{tag}")).await;
        assert_eq!(st, StatusCode::OK, "{repo}:{tag}");
        assert!(body == self.manifest, "{repo}:{tag} manifest differs");
        for (digest, bytes) in &self.blobs {
            let (st, body) = get(c, d, &format!("/v2/{repo}/blobs/{digest}")).await;
            assert_eq!(st, StatusCode::OK, "{repo} {digest}");
            assert!(body == *bytes, "{repo} {digest} differs");
        }
    }
}

/// `stowage ARGS...` against the daemon's admin address, off the async runtime.
async fn stowage(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_stowage"))
            .args(&args)
            .env_remove("STOWAGE_SERVER")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn args(list: &[&str], server: &str) -> Vec<String> {
    list.iter()
        .map(|s| s.to_string())
        .chain(["--server".to_string(), server.to_string()])
        .collect()
}

fn admin(d: &Daemon) -> String {
    d.admin.trim_start_matches("http://").to_string()
}

/// Runs a command that must succeed and returns its stdout.
async fn ok(list: &[&str], server: &str) -> String {
    let out = stowage(args(list, server)).await;
    assert!(
        out.status.success(),
        "stowage {list:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a command whose stdout must be exactly one JSON document.
async fn ok_json(list: &[&str], server: &str) -> Value {
    let out = ok(list, server).await;
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("stdout of {list:?} is not one JSON document ({e}): {out:?}"))
}

/// Push, untag, dry run (nothing changes), real run (blobs stop being served), history, and
/// restore of one blob.
#[tokio::test]
async fn dry_run_then_real_run_then_restore() {
    let dir = tempfile::tempdir().unwrap();
    // The test collects right after pushing: no seen window.
    let d = Daemon::start_with(
        dir.path(),
        &["--gc-delete-untagged", "true", "--gc-seen-window", "0s"],
    );
    let c = client();
    let server = admin(&d);
    let img = Image::new(1, &[70_000, 123_457]);
    img.push(&c, &d, "gc/app", "v1").await;
    let r = c
        .delete(d.url("/v2/gc/app/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);

    let check = |v: &Value, dry_run: bool| {
        assert_eq!(v["status"], "completed", "{v}");
        assert_eq!(v["dry_run"], dry_run, "{v}");
        assert_eq!(v["trigger"], "cli", "{v}");
        assert_eq!(v["grace_ms"], 0, "{v}");
        assert_eq!(v["totals"]["blobs_quarantined"], 3, "{v}");
        assert_eq!(v["totals"]["bytes_quarantined"], img.blob_bytes(), "{v}");
        assert_eq!(v["totals"]["manifests_swept"], 1, "{v}");
        assert_eq!(
            v["totals"]["manifest_bytes_swept"],
            img.manifest.len() as u64,
            "{v}"
        );
        assert_eq!(v["totals"]["blobs_purged"], 0, "{v}");
        assert_eq!(v["repos"]["gc/app"]["manifests_swept"], 1, "{v}");
        assert_eq!(v["repos"]["gc/app"]["blobs_swept"], 3, "{v}");
        assert!(v["finished_ms"].as_u64().unwrap() >= v["started_ms"].as_u64().unwrap());
    };

    // Dry run: the figures of a real run, and nothing changes.
    let out = stowage(args(
        &[
            "gc",
            "run",
            "--dry-run",
            "--wait",
            "--grace",
            "0s",
            "--json",
        ],
        &server,
    ))
    .await;
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let dry: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("not one JSON document ({e}): {stdout:?}"));
    check(&dry, true);
    // Progress went to stderr (not a terminal here: one line per phase, ending with done).
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(": done"), "{stderr}");
    for (digest, bytes) in &img.blobs {
        let (st, body) = get(&c, &d, &format!("/v2/gc/app/blobs/{digest}")).await;
        assert_eq!(st, StatusCode::OK, "dry run removed {digest}");
        assert!(body == *bytes);
    }
    let by_digest = format!("/v2/gc/app/manifests/{}", img.digest());
    assert_eq!(get(&c, &d, &by_digest).await.0, StatusCode::OK);

    // Real run: same figures; the blobs and the untagged manifest are gone from the API.
    let real = ok_json(&["gc", "run", "--wait", "--grace", "0s", "--json"], &server).await;
    check(&real, false);
    assert!(real["run_id"].as_u64().unwrap() > dry["run_id"].as_u64().unwrap());
    for (digest, _) in &img.blobs {
        let r = c
            .get(d.url(&format!("/v2/gc/app/blobs/{digest}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{digest} still served");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["errors"][0]["code"], "BLOB_UNKNOWN");
    }
    assert_eq!(get(&c, &d, &by_digest).await.0, StatusCode::NOT_FOUND);

    // History, newest first; `show` gives the same report.
    let history = ok_json(&["gc", "history", "--json"], &server).await;
    let runs = history.as_array().unwrap();
    assert!(runs.len() >= 2, "{history}");
    let same_run = |a: &Value, b: &Value| {
        for key in ["run_id", "dry_run", "status", "totals", "repos", "grace_ms"] {
            assert_eq!(a[key], b[key], "{key}: {a} vs {b}");
        }
    };
    same_run(&runs[0], &real);
    same_run(&runs[1], &dry);
    let shown = ok_json(
        &["gc", "show", &real["run_id"].to_string(), "--json"],
        &server,
    )
    .await;
    same_run(&shown, &real);
    let table = ok(&["gc", "history"], &server).await;
    assert!(table.starts_with("RUN"), "{table}");
    assert!(table.contains("completed"), "{table}");
    let text = ok(&["gc", "show", &real["run_id"].to_string()], &server).await;
    assert!(
        text.contains("blobs quarantined") && text.contains("gc/app"),
        "{text}"
    );
    let status = ok_json(&["gc", "status", "--json"], &server).await;
    assert_eq!(status["running_run_id"], Value::Null, "{status}");

    // Restore one layer: served again from the repository that held it.
    let (layer, layer_bytes) = &img.blobs[2];
    let restored = ok_json(&["gc", "restore", layer, "--json"], &server).await;
    assert_eq!(restored["digest"], layer.as_str(), "{restored}");
    assert_eq!(restored["size"], layer_bytes.len() as u64, "{restored}");
    assert_eq!(restored["repositories"], serde_json::json!(["gc/app"]));
    let (st, body) = get(&c, &d, &format!("/v2/gc/app/blobs/{layer}")).await;
    assert_eq!(st, StatusCode::OK);
    assert!(body == *layer_bytes, "restored layer differs");
    // The other layer stays quarantined.
    let other = &img.blobs[1].0;
    assert_eq!(
        get(&c, &d, &format!("/v2/gc/app/blobs/{other}")).await.0,
        StatusCode::NOT_FOUND
    );

    // A blob that was never stored cannot be restored: non-zero exit, a message naming it.
    let never = sha256(b"never stored here");
    let out = stowage(args(&["gc", "restore", &never], &server)).await;
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&never) && stderr.contains("restor"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "{out:?}");
    // Nor can a malformed digest.
    let out = stowage(args(&["gc", "restore", "sha256:1234"], &server)).await;
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("sha256:1234"),
        "{out:?}"
    );
}

/// A tagged image is untouched by a run with no grace and no quarantine, while unreferenced
/// content next to it is collected and purged; the human report names what happened.
#[tokio::test]
async fn tagged_image_survives_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start_with(dir.path(), &["--gc-seen-window", "0s"]);
    let c = client();
    let server = admin(&d);
    let kept = Image::new(2, &[300_000, 4_096, 1]);
    kept.push(&c, &d, "keep/app", "1.0").await;
    // The same image under a second repository, and a blob no manifest references.
    kept.push(&c, &d, "keep/mirror", "latest").await;
    let loose = data(50_000, 99);
    let loose_digest = push_blob(&c, &d, "keep/app", &loose).await;

    let v = ok_json(
        &[
            "gc",
            "run",
            "--wait",
            "--grace",
            "0s",
            "--quarantine",
            "0s",
            "--json",
        ],
        &server,
    )
    .await;
    assert_eq!(v["status"], "completed", "{v}");
    assert_eq!(v["quarantine_ms"], 0, "{v}");
    assert_eq!(v["totals"]["manifests_swept"], 0, "{v}");
    assert_eq!(v["totals"]["blobs_quarantined"], 1, "{v}");
    assert_eq!(v["totals"]["bytes_quarantined"], loose.len() as u64, "{v}");
    assert_eq!(v["totals"]["blobs_purged"], 1, "{v}");
    assert_eq!(v["totals"]["bytes_purged"], loose.len() as u64, "{v}");

    kept.assert_intact(&c, &d, "keep/app", "1.0").await;
    kept.assert_intact(&c, &d, "keep/mirror", "latest").await;
    assert_eq!(
        get(&c, &d, &format!("/v2/keep/app/blobs/{loose_digest}"))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    // Purged bytes cannot be restored.
    let out = stowage(args(&["gc", "restore", &loose_digest], &server)).await;
    assert!(!out.status.success(), "{out:?}");

    // The human form of a waited run: the report table on stdout, exit 0.
    let text = ok(&["gc", "run", "--wait", "--grace", "0s"], &server).await;
    assert!(text.contains(": completed"), "{text}");
    assert!(text.contains("blobs quarantined"), "{text}");
    assert!(text.contains("REPOSITORY"), "{text}");
    kept.assert_intact(&c, &d, "keep/app", "1.0").await;

    // Without --wait: the run id at once, then the run can be followed by id.
    let started = ok_json(&["gc", "run", "--dry-run", "--json"], &server).await;
    let id = started["run_id"].as_u64().unwrap();
    assert_eq!(started["dry_run"], true);
    let mut shown = Value::Null;
    for _ in 0..300 {
        let out = stowage(args(&["gc", "show", &id.to_string(), "--json"], &server)).await;
        if out.status.success() {
            shown = serde_json::from_slice(&out.stdout).unwrap();
            if shown["status"] != "running" {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(shown["status"], "completed", "{shown}");
    assert_eq!(shown["run_id"], id);
}

/// The same on the S3 backend (moto): the unreferenced blob's object leaves the bucket, the
/// tagged image stays byte-identical.
#[tokio::test]
async fn gc_on_s3_removes_the_objects_of_what_it_collects() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = common::moto::bucket();
    let endpoint = common::moto::endpoint();
    let d = Daemon::start_full(
        dir.path(),
        "127.0.0.1:0",
        &[
            "--gc-seen-window",
            "0s",
            "--storage-backend",
            "s3",
            "--storage-bucket",
            &bucket,
            "--storage-endpoint",
            &endpoint,
            "--storage-region",
            "us-east-1",
            "--storage-path-style",
            "true",
            "--storage-allow-http",
            "true",
        ],
        &common::S3_ENV,
    );
    let c = client();
    let server = admin(&d);
    let kept = Image::new(3, &[6 << 20, 4_096]);
    kept.push(&c, &d, "s3/app", "1.0").await;
    let loose = data(50_000, 98);
    let loose_digest = push_blob(&c, &d, "s3/app", &loose).await;
    // Whether the bucket holds the blob's object (an unsigned listing, which moto answers).
    let in_bucket = |digest: &str| {
        let hex = digest.trim_start_matches("sha256:").to_string();
        let key = format!("blobs/sha256/{}/{hex}", &hex[..2]);
        let url = format!("{endpoint}/{bucket}?list-type=2&prefix={key}");
        let c = c.clone();
        async move {
            let body = c.get(url).send().await.unwrap().text().await.unwrap();
            body.contains(&format!("<Key>{key}</Key>"))
        }
    };
    assert!(in_bucket(&loose_digest).await, "the blob is in the bucket");

    let v = ok_json(
        &[
            "gc",
            "run",
            "--wait",
            "--grace",
            "0s",
            "--quarantine",
            "0s",
            "--json",
        ],
        &server,
    )
    .await;
    assert_eq!(v["status"], "completed", "{v}");
    assert_eq!(v["totals"]["blobs_purged"], 1, "{v}");
    assert_eq!(v["totals"]["bytes_purged"], loose.len() as u64, "{v}");
    assert!(!in_bucket(&loose_digest).await, "purged from the bucket");
    kept.assert_intact(&c, &d, "s3/app", "1.0").await;
    for digest in kept.blobs.iter().map(|(d, _)| d.clone()) {
        assert!(in_bucket(&digest).await, "{digest} kept");
    }
}

/// A daemon that is not there: non-zero exit and a message naming the address.
#[tokio::test]
async fn unreachable_daemon_is_a_clear_error() {
    // A port nobody listens on: bind one, note it, let it go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = format!("127.0.0.1:{port}");
    for cmd in [
        vec!["gc", "run"],
        vec!["gc", "run", "--wait", "--json"],
        vec!["gc", "status"],
        vec!["gc", "history"],
    ] {
        let out = stowage(args(&cmd, &server)).await;
        assert!(!out.status.success(), "{cmd:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&server), "{cmd:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{cmd:?}: {out:?}");
        assert!(!stderr.contains("panicked"), "{cmd:?}: {stderr}");
    }
    // STOWAGE_SERVER is the default for --server.
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_stowage"))
            .args(["gc", "status"])
            .env("STOWAGE_SERVER", format!("127.0.0.1:{port}"))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("127.0.0.1:{port}")));
}

/// `/metrics` on the API listener counts runs and their figures; `/v2/` is unchanged.
#[tokio::test]
async fn metrics_endpoint_counts_runs() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start_with(dir.path(), &["--gc-seen-window", "0s"]);
    let c = client();
    let server = admin(&d);
    let r = c.get(d.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let before = r.text().await.unwrap();
    assert!(
        before.contains("stowage_gc_runs_total{status=\"completed\"} 0"),
        "{before}"
    );
    assert!(before.contains("stowage_gc_running 0"), "{before}");

    let loose = data(10_000, 5);
    push_blob(&c, &d, "metrics/repo", &loose).await;
    let v = ok_json(&["gc", "run", "--wait", "--grace", "0s", "--json"], &server).await;
    assert_eq!(v["status"], "completed", "{v}");

    let text = c
        .get(d.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("# TYPE stowage_gc_runs_total counter"),
        "{text}"
    );
    assert!(
        text.contains("stowage_gc_runs_total{status=\"completed\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("stowage_gc_runs_total{status=\"failed\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("stowage_gc_blobs_quarantined_total 1"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "stowage_gc_bytes_quarantined_total {}",
            loose.len()
        )),
        "{text}"
    );
    assert!(
        text.contains("stowage_gc_last_run_duration_seconds "),
        "{text}"
    );
    assert!(
        text.contains("stowage_gc_last_run_phase_seconds{phase=\"mark\"}"),
        "{text}"
    );
    // The OCI API is untouched by the extra route.
    let r = c.get(d.url("/v2/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );
}

/// The standard gRPC health service reports the server and the Admin service SERVING.
#[tokio::test]
async fn grpc_health_reports_serving() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start_with(dir.path(), &["--gc-seen-window", "0s"]);
    let channel = tonic::transport::Endpoint::from_shared(d.admin.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    for service in ["", "stowage.v1.Admin"] {
        let r = health
            .check(HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "{service:?}");
    }
    let err = health
        .check(HealthCheckRequest {
            service: "no.such.Service".to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}
