//! The S3 backend against a real S3-compatible server (moto's, started by the tests; installed
//! by `scripts/install-deps.sh --test`): a chunked upload that survives `kill -9`, clear errors
//! for a store that is unreachable or missing at start, and store faults (connections reset,
//! a partition longer than the retries) between the daemon and the store.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::image::{image, pulls_identical, push_blob, push_image};
use common::{data, moto, sha256, Daemon, S3_ENV};
use reqwest::StatusCode;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

fn s3_flags<'a>(endpoint: &'a str, bucket: &'a str) -> Vec<&'a str> {
    vec![
        "--storage-backend",
        "s3",
        "--storage-bucket",
        bucket,
        "--storage-endpoint",
        endpoint,
        "--storage-region",
        "us-east-1",
        "--storage-path-style",
        "true",
        "--storage-allow-http",
        "true",
    ]
}

fn s3_daemon(dir: &Path, endpoint: &str, bucket: &str) -> Daemon {
    Daemon::start_full(dir, "127.0.0.1:0", &s3_flags(endpoint, bucket), &S3_ENV)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_upload_survives_kill9_on_s3() {
    let dir = tempfile::tempdir().unwrap();
    let (endpoint, bucket) = (moto::endpoint(), moto::bucket());
    let c = client();
    let blob = data(15 << 20, 5);
    let digest = sha256(&blob);
    let loc = {
        let d = s3_daemon(dir.path(), &endpoint, &bucket);
        let r = c
            .post(d.url("/v2/big/app/blobs/uploads/"))
            .send()
            .await
            .unwrap();
        let loc = r.headers()["location"].to_str().unwrap().to_string();
        // Two chunks of 6 MiB: each one a multipart upload to the store.
        for (start, end) in [(0usize, 6 << 20), (6 << 20, 12 << 20)] {
            let r = c
                .patch(d.url(&loc))
                .header("content-range", format!("{start}-{}", end - 1))
                .body(blob[start..end].to_vec())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::ACCEPTED);
        }
        d.kill9();
        loc
    };
    let d = s3_daemon(dir.path(), &endpoint, &bucket);
    let r = c.get(d.url(&loc)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT, "the session survived");
    assert_eq!(
        r.headers()["range"],
        format!("0-{}", (12 << 20) - 1).as_str()
    );
    let r = c
        .put(d.url(&format!("{loc}?digest={digest}")))
        .header("content-range", format!("{}-{}", 12 << 20, blob.len() - 1))
        .body(blob[12 << 20..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
    let got = c
        .get(d.url(&format!("/v2/big/app/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert!(
        got.bytes().await.unwrap().as_ref() == blob.as_slice(),
        "bytes differ"
    );
}

/// `stowage serve` that must fail at start: its stderr.
/// Multipart uploads a crash left in the bucket (a part being written, a blob being published
/// by streaming) are aborted when the daemon starts: S3 would otherwise keep and bill their
/// parts forever, out of sight of object listings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_uploads_left_by_a_crash_are_aborted_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let (endpoint, bucket) = (moto::endpoint(), moto::bucket());
    moto::start_multipart(&bucket, "uploads/crashed.00000000");
    moto::start_multipart(&bucket, &format!("blobs/sha256/ab/ab{}", "0".repeat(62)));
    assert_eq!(moto::multipart_uploads(&bucket).len(), 2);
    let _d = s3_daemon(dir.path(), &endpoint, &bucket);
    assert_eq!(moto::multipart_uploads(&bucket), Vec::<String>::new());
}

fn failed_start(dir: &Path, endpoint: &str, bucket: &str) -> String {
    failed_start_with(dir, &s3_flags(endpoint, bucket), &S3_ENV)
}

/// `stowage serve` with `flags` and `envs` (and nothing else of this process's environment)
/// that must fail at start: its stderr.
fn failed_start_with(dir: &Path, flags: &[&str], envs: &[(&str, &str)]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_stowage"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(envs.iter().copied())
        .args(["serve", "--data-dir"])
        .arg(dir)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(flags)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the daemon started on a broken store"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// An HTTP endpoint on a loopback port nothing listens on.
fn closed_endpoint() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("http://127.0.0.1:{port}")
}

#[tokio::test]
async fn an_unreachable_store_or_missing_bucket_stops_the_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let closed = closed_endpoint();
    let started = Instant::now();
    let err = failed_start(&dir.path().join("a"), &closed, "b");
    assert!(
        err.contains("probe object") && err.contains(&closed),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "gave up in time"
    );
    let err = failed_start(
        &dir.path().join("b"),
        &moto::endpoint(),
        "no-such-bucket-here",
    );
    assert!(
        err.contains("NoSuchBucket") || err.contains("no-such-bucket-here"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// GCS. No server installable here speaks the XML API that object_store's GCS client uses
/// (see the README), so this shows the configured backend is built and probed, and that an
/// unreachable endpoint stops the start with a clear error. The credentials are a service
/// account key with OAuth off, so no token is fetched from anywhere.
#[tokio::test]
async fn an_unreachable_gcs_store_stops_the_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let closed = closed_endpoint();
    let flags = [
        "--storage-backend",
        "gcs",
        "--storage-bucket",
        "blobs",
        "--storage-prefix",
        "site-a",
        "--storage-endpoint",
        &closed,
        "--storage-allow-http",
        "true",
    ];
    let key =
        r#"{"disable_oauth": true, "client_email": "", "private_key": "", "private_key_id": ""}"#;
    let started = Instant::now();
    let err = failed_start_with(dir.path(), &flags, &[("GOOGLE_SERVICE_ACCOUNT_KEY", key)]);
    assert!(
        err.contains("probe object")
            && err.contains("gcs bucket \"blobs\"")
            && err.contains(&closed),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "gave up in time"
    );
    // A setting of another backend is refused before anything is contacted.
    let mut wrong = flags.to_vec();
    wrong.extend(["--storage-copy-if-not-exists", "multipart"]);
    let err = failed_start_with(
        &dir.path().join("b"),
        &wrong,
        &[("GOOGLE_SERVICE_ACCOUNT_KEY", key)],
    );
    assert!(err.contains("copy_if_not_exists is an S3 setting"), "{err}");
}

/// `copy_if_not_exists` reaches the S3 client: a mode object_store does not know stops the
/// start with a message naming it, and with `multipart` (Amazon S3's conditional writes, which
/// moto enforces) concurrent pushes of one blob by several clients all succeed and pull back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_with_copy_if_not_exists_publishes_and_a_bad_mode_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (endpoint, bucket) = (moto::endpoint(), moto::bucket());
    let mut bad = s3_flags(&endpoint, &bucket);
    bad.extend(["--storage-copy-if-not-exists", "sometimes"]);
    let err = failed_start_with(&dir.path().join("bad"), &bad, &S3_ENV);
    assert!(err.contains("sometimes"), "{err}");
    let mut flags = s3_flags(&endpoint, &bucket);
    flags.extend(["--storage-copy-if-not-exists", "multipart"]);
    let d = Daemon::start_full(&dir.path().join("good"), "127.0.0.1:0", &flags, &S3_ENV);
    let c = client();
    let blob = data(3 << 20, 9);
    let digest = sha256(&blob);
    let mut pushes = Vec::new();
    for i in 0..4 {
        let (c, base, blob) = (c.clone(), d.base.clone(), blob.clone());
        pushes.push(tokio::spawn(async move {
            push_blob(&c, &base, &format!("cond/app{i}"), &blob).await
        }));
    }
    for p in pushes {
        p.await.unwrap();
    }
    for i in 0..4 {
        let got = c
            .get(d.url(&format!("/v2/cond/app{i}/blobs/{digest}")))
            .send()
            .await
            .unwrap();
        assert_eq!(got.status(), StatusCode::OK);
        assert!(got.bytes().await.unwrap().as_ref() == blob.as_slice());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_faults_are_retried_and_a_failure_is_a_clean_500_that_indexes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let upstream: std::net::SocketAddr = moto::endpoint()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let proxy = stowage_faultproxy::FaultProxy::start("127.0.0.1:0".parse().unwrap(), upstream)
        .await
        .unwrap();
    let via = format!("http://{}", proxy.local_addr());
    let d = s3_daemon(dir.path(), &via, &moto::bucket());
    let faults = proxy.faults();
    let c = client();

    // Connections to the store reset every 150 ms while images are pushed: the store client
    // retries, every push succeeds.
    let resetter = {
        let faults = faults.clone();
        tokio::spawn(async move {
            for _ in 0..40 {
                tokio::time::sleep(Duration::from_millis(150)).await;
                faults.reset_all();
            }
        })
    };
    let mut images = Vec::new();
    for i in 0..8u64 {
        let im = image(vec![data(700_000 + i as usize, 30 + i)]);
        push_image(&c, &d.base, "faults/app", &format!("t{i}"), &im).await;
        images.push(im);
    }
    resetter.await.unwrap();
    assert!(proxy.stats().resets_injected > 0, "{:?}", proxy.stats());
    for (i, im) in images.iter().enumerate() {
        assert!(pulls_identical(&c, &d.base, "faults/app", &format!("t{i}"), im).await);
    }

    // The store away for longer than the retries: the push fails with a 500, and nothing is
    // indexed. The cause (the store's endpoint and bucket) goes to the log, not to the client,
    // which gets a reference to quote.
    faults.set_partitioned(true);
    let lost = data(300_000, 44);
    let digest = sha256(&lost);
    let r = c
        .post(d.url(&format!("/v2/faults/app/blobs/uploads/?digest={digest}")))
        .body(lost.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let text = r.text().await.unwrap();
    assert!(text.contains("reference"), "{text}");
    let endpoint = common::moto::endpoint();
    let port = endpoint.rsplit(':').next().unwrap_or_default();
    assert!(
        !text.contains(&endpoint) && !text.contains(port) && !text.contains("bucket"),
        "internal details reached the client: {text}"
    );
    faults.set_partitioned(false);
    let head = c
        .head(d.url(&format!("/v2/faults/app/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        head.status(),
        StatusCode::NOT_FOUND,
        "a failed put is not indexed"
    );
    push_blob(&c, &d.base, "faults/app", &lost).await;
    let got = c
        .get(d.url(&format!("/v2/faults/app/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert!(got.bytes().await.unwrap().as_ref() == lost.as_slice());
    proxy.stop().await;
}

/// An HTTP proxy in front of the S3 server that answers every `nth` request with 503 instead of
/// forwarding it; returns its address and the count of 503s it gave.
async fn flaky_s3_proxy(
    upstream: String,
    nth: u64,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let seen = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let c = reqwest::Client::new();
    let (seen2, refused2) = (seen.clone(), refused.clone());
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let (c, upstream, seen, refused) =
            (c.clone(), upstream.clone(), seen2.clone(), refused2.clone());
        async move {
            use axum::response::IntoResponse;
            if seen.fetch_add(1, Ordering::SeqCst) % nth == nth - 1 {
                refused.fetch_add(1, Ordering::SeqCst);
                return (axum::http::StatusCode::SERVICE_UNAVAILABLE, "injected 503")
                    .into_response();
            }
            let (parts, body) = req.into_parts();
            let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
            let url = format!(
                "{upstream}{}",
                parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/")
            );
            let mut fwd = c.request(parts.method.clone(), url).body(body);
            for (k, v) in parts.headers.iter() {
                if k != axum::http::header::HOST && k != axum::http::header::CONTENT_LENGTH {
                    fwd = fwd.header(k, v);
                }
            }
            let resp = fwd.send().await.unwrap();
            let status = resp.status();
            let headers = resp.headers().clone();
            let bytes = resp.bytes().await.unwrap();
            let mut out = (status, bytes).into_response();
            for (k, v) in headers.iter() {
                if k != axum::http::header::CONTENT_LENGTH
                    && k != axum::http::header::TRANSFER_ENCODING
                {
                    out.headers_mut().insert(k, v.clone());
                }
            }
            out
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_5xx_answers_are_retried_with_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, refused) = flaky_s3_proxy(moto::endpoint(), 4).await;
    let d = s3_daemon(dir.path(), &format!("http://{addr}"), &moto::bucket());
    let c = client();
    let mut images = Vec::new();
    for i in 0..5u64 {
        let im = image(vec![data(6 << 20, 60 + i)]);
        push_image(&c, &d.base, "flaky/app", &format!("t{i}"), &im).await;
        images.push(im);
    }
    for (i, im) in images.iter().enumerate() {
        assert!(pulls_identical(&c, &d.base, "flaky/app", &format!("t{i}"), im).await);
    }
    let n = refused.load(std::sync::atomic::Ordering::SeqCst);
    assert!(n >= 10, "only {n} requests were refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_round_trips_on_azure_and_survives_a_restart() {
    use common::azurite;
    let dir = tempfile::tempdir().unwrap();
    let container = azurite::container();
    let url = azurite::account_url();
    let flags = [
        "--storage-backend",
        "azure",
        "--storage-bucket",
        &container,
        "--storage-endpoint",
        &url,
        "--storage-allow-http",
        "true",
    ];
    let env = [
        ("AZURE_STORAGE_ACCOUNT_NAME", azurite::ACCOUNT),
        ("AZURE_STORAGE_ACCOUNT_KEY", azurite::KEY),
    ];
    let c = client();
    let im = image(vec![data(7 << 20, 70), data(1000, 71)]);
    {
        let d = Daemon::start_full(dir.path(), "127.0.0.1:0", &flags, &env);
        push_image(&c, &d.base, "azure/app", "v1", &im).await;
        assert!(pulls_identical(&c, &d.base, "azure/app", "v1", &im).await);
        d.kill9();
    }
    let d = Daemon::start_full(dir.path(), "127.0.0.1:0", &flags, &env);
    assert!(
        pulls_identical(&c, &d.base, "azure/app", "v1", &im).await,
        "after a restart"
    );
}
