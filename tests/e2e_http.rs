//! End to end over real sockets with a raw HTTP client: large streamed blobs, chunked uploads,
//! ranges, bad input leaving stored content intact, `kill -9` and restart, graceful SIGTERM.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{data, sha256, Daemon};
use reqwest::StatusCode;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
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

fn image_manifest(cfg: (&str, usize), layers: &[(&str, usize)]) -> Vec<u8> {
    let layers: Vec<_> = layers
        .iter()
        .map(|(d, s)| serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": s}))
        .collect();
    serde_json::to_vec_pretty(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg.0, "size": cfg.1},
        "layers": layers
    }))
    .unwrap()
}

async fn put_manifest(
    c: &reqwest::Client,
    d: &Daemon,
    repo: &str,
    reference: &str,
    m: &[u8],
) -> reqwest::Response {
    c.put(d.url(&format!("/v2/{repo}/manifests/{reference}")))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(m.to_vec())
        .send()
        .await
        .unwrap()
}

/// A 64 MiB blob streamed in as a chunked session (several PATCHes) and as one monolithic PUT;
/// pulled back whole and in ranges, byte-identical.
#[tokio::test]
async fn large_blobs_chunked_and_ranged() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    let c = client();
    let big = data(64 << 20, 1);
    let digest = sha256(&big);
    let r = c
        .post(d.url("/v2/big/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let mut loc = r.headers()["location"].to_str().unwrap().to_string();
    let chunk = 20 << 20;
    let mut off = 0;
    while off < big.len() {
        let end = (off + chunk).min(big.len());
        let r = c
            .patch(d.url(&loc))
            .header("content-range", format!("{}-{}", off, end - 1))
            .header("content-type", "application/octet-stream")
            .body(big[off..end].to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        assert_eq!(r.headers()["range"], format!("0-{}", end - 1).as_str());
        loc = r.headers()["location"].to_str().unwrap().to_string();
        off = end;
    }
    let r = c
        .put(d.url(&format!("{loc}?digest={digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let (st, body) = get(&c, &d, &format!("/v2/big/blobs/{digest}")).await;
    assert_eq!(st, StatusCode::OK);
    assert!(body == big, "pulled bytes differ");
    let r = c
        .get(d.url(&format!("/v2/big/blobs/{digest}")))
        .header("range", "bytes=33554432-33620000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        r.bytes().await.unwrap().as_ref(),
        &big[33_554_432..=33_620_000]
    );
    // Monolithic push of a second large blob.
    let big2 = data(40 << 20, 2);
    let d2 = push_blob(&c, &d, "big", &big2).await;
    let (_, body) = get(&c, &d, &format!("/v2/big/blobs/{d2}")).await;
    assert!(body == big2);
    let r = c
        .head(d.url(&format!("/v2/big/blobs/{d2}")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["content-length"],
        (40u64 << 20).to_string().as_str()
    );
    assert_eq!(r.headers()["docker-content-digest"], d2.as_str());
}

/// Bad input over the wire gets the right code, and everything stored before still pulls
/// byte-identical.
#[tokio::test]
async fn bad_input_leaves_stored_content_intact() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    let c = client();
    let cfg = b"{\"architecture\":\"amd64\"}".to_vec();
    let layer = data(100_000, 3);
    let cd = push_blob(&c, &d, "app", &cfg).await;
    let ld = push_blob(&c, &d, "app", &layer).await;
    let m = image_manifest((&cd, cfg.len()), &[(&ld, layer.len())]);
    assert_eq!(
        put_manifest(&c, &d, "app", "v1", &m).await.status(),
        StatusCode::CREATED
    );

    let missing = sha256(b"missing");
    let bad_manifests: Vec<(Vec<u8>, StatusCode, &str)> = vec![
        (
            b"{\"schemaVersion\": 2, \"config\": ".to_vec(),
            StatusCode::BAD_REQUEST,
            "MANIFEST_INVALID",
        ),
        (
            image_manifest((&cd, cfg.len()), &[(&missing, 7)]),
            StatusCode::BAD_REQUEST,
            "MANIFEST_BLOB_UNKNOWN",
        ),
        (
            vec![b'x'; 5 << 20],
            StatusCode::PAYLOAD_TOO_LARGE,
            "MANIFEST_INVALID",
        ),
    ];
    for (body, status, code) in bad_manifests {
        // Overwriting the good tag with bad content must fail and leave the tag alone.
        let r = put_manifest(&c, &d, "app", "v1", &body).await;
        assert_eq!(r.status(), status);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["errors"][0]["code"], code);
    }
    // Digest mismatch on a blob whose digest is already stored: refused, original intact.
    let r = c
        .post(d.url(&format!("/v2/app/blobs/uploads/?digest={ld}")))
        .body(b"not the layer".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["errors"][0]["code"], "DIGEST_INVALID");
    let r = c.get(d.url("/v2/Upper/tags/list")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = c
        .patch(d.url("/v2/app/blobs/uploads/4e1b1c9e-0000-4000-8000-000000000000"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    let (st, body) = get(&c, &d, "/v2/app/manifests/v1").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(body, m);
    assert_eq!(get(&c, &d, &format!("/v2/app/blobs/{ld}")).await.1, layer);
    assert_eq!(get(&c, &d, &format!("/v2/app/blobs/{cd}")).await.1, cfg);
}

/// Push, `kill -9`, restart: everything committed pulls byte-identical, an upload interrupted
/// by the kill serves nothing half-written, and a session's completed chunks survive.
#[tokio::test]
async fn kill9_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let c = client();
    let mut committed = Vec::new();
    let (session_loc, torn_digest) = {
        let d = Daemon::start(dir.path());
        for i in 0..5u64 {
            let cfg = format!("{{\"n\":{i}}}").into_bytes();
            let layer = data(300_000 + i as usize * 1000, 10 + i);
            let cd = push_blob(&c, &d, "keep/me", &cfg).await;
            let ld = push_blob(&c, &d, "keep/me", &layer).await;
            let m = image_manifest((&cd, cfg.len()), &[(&ld, layer.len())]);
            let tag = format!("t{i}");
            assert_eq!(
                put_manifest(&c, &d, "keep/me", &tag, &m).await.status(),
                StatusCode::CREATED
            );
            committed.push((tag, m, vec![(cd, cfg), (ld, layer)]));
        }
        // A session with one completed chunk.
        let r = c
            .post(d.url("/v2/keep/me/blobs/uploads/"))
            .send()
            .await
            .unwrap();
        let loc = r.headers()["location"].to_str().unwrap().to_string();
        let first = data(1 << 20, 99);
        let r = c
            .patch(d.url(&loc))
            .header("content-range", format!("0-{}", first.len() - 1))
            .body(first)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        // A monolithic upload whose body is still streaming when the daemon dies.
        let torn = data(8 << 20, 77);
        let torn_digest = sha256(&torn);
        let (tx, rx) = futures::channel::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(1);
        let url = d.url(&format!("/v2/keep/me/blobs/uploads/?digest={torn_digest}"));
        let c2 = c.clone();
        let push = tokio::spawn(async move {
            c2.post(url)
                .body(reqwest::Body::wrap_stream(rx))
                .send()
                .await
        });
        let mut tx = tx;
        use futures::SinkExt;
        tx.send(Ok(bytes::Bytes::copy_from_slice(&torn[..6 << 20])))
            .await
            .unwrap();
        d.kill9();
        drop(tx);
        assert!(push
            .await
            .unwrap()
            .map(|r| r.status() != StatusCode::CREATED)
            .unwrap_or(true));
        (loc, torn_digest)
    };
    let d = Daemon::start(dir.path());
    for (tag, m, blobs) in &committed {
        let (st, body) = get(&c, &d, &format!("/v2/keep/me/manifests/{tag}")).await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(&body, m);
        for (digest, bytes) in blobs {
            assert_eq!(
                &get(&c, &d, &format!("/v2/keep/me/blobs/{digest}")).await.1,
                bytes
            );
        }
    }
    let (st, _) = get(&c, &d, &format!("/v2/keep/me/blobs/{torn_digest}")).await;
    assert_eq!(
        st,
        StatusCode::NOT_FOUND,
        "a torn upload must not be served"
    );
    // Start-up recovery removed the torn upload's staging; the resumable session's stays.
    let session_id = session_loc.rsplit('/').next().unwrap().to_string();
    let staged: Vec<String> = std::fs::read_dir(dir.path().join("cas/uploads"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!staged.is_empty());
    for name in &staged {
        assert!(
            name.starts_with(&format!("{session_id}.")),
            "stray staging {name}"
        );
    }
    // The chunked session resumes where it was.
    let r = c.get(d.url(&session_loc)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        r.headers()["range"],
        format!("0-{}", (1 << 20) - 1).as_str()
    );
    let first = data(1 << 20, 99);
    let second = data(500_000, 98);
    let whole = [first, second.clone()].concat();
    let digest = sha256(&whole);
    let r = c
        .put(d.url(&format!("{session_loc}?digest={digest}")))
        .header("content-range", format!("{}-{}", 1 << 20, whole.len() - 1))
        .body(second)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
    assert_eq!(
        get(&c, &d, &format!("/v2/keep/me/blobs/{digest}")).await.1,
        whole
    );
    let tags: serde_json::Value = c
        .get(d.url("/v2/keep/me/tags/list"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tags["tags"].as_array().unwrap().len(), 5);
}

/// SIGTERM lets an in-flight upload finish, then the daemon exits cleanly and the blob is there
/// after a restart.
#[tokio::test]
async fn sigterm_drains_in_flight_requests() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    let c = client();
    // Larger than the in-memory threshold (4 MiB), so staging appears on disk mid-request.
    let blob = data(12 << 20, 5);
    let digest = sha256(&blob);
    let (mut tx, rx) = futures::channel::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(1);
    let url = d.url(&format!("/v2/drain/blobs/uploads/?digest={digest}"));
    let c2 = c.clone();
    let push = tokio::spawn(async move {
        c2.post(url)
            .body(reqwest::Body::wrap_stream(rx))
            .send()
            .await
    });
    use futures::SinkExt;
    tx.send(Ok(bytes::Bytes::copy_from_slice(&blob[..6 << 20])))
        .await
        .unwrap();
    // Wait until the server has the request (staging exists), then ask it to stop.
    let uploads = dir.path().join("cas/uploads");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::fs::read_dir(&uploads)
        .map(|mut r| r.next().is_none())
        .unwrap_or(true)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "upload never reached the server"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let term = tokio::task::spawn_blocking(move || d.terminate());
    tx.send(Ok(bytes::Bytes::copy_from_slice(&blob[6 << 20..])))
        .await
        .unwrap();
    drop(tx);
    let resp = push.await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let status = term.await.unwrap();
    assert!(status.success(), "daemon exit status {status}");
    let d = Daemon::start(dir.path());
    assert_eq!(
        get(&c, &d, &format!("/v2/drain/blobs/{digest}")).await.1,
        blob
    );
}

/// Mounts, referrers, paging and every error code, over a real socket.
#[tokio::test]
async fn api_surface_over_the_wire() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    let c = client();
    let cfg = b"{}".to_vec();
    let layer = data(50_000, 8);
    let cd = push_blob(&c, &d, "lib/base", &cfg).await;
    let ld = push_blob(&c, &d, "lib/base", &layer).await;
    // Mount: 201 without a body; unknown source: 202 session.
    let r = c
        .post(d.url(&format!(
            "/v2/app/one/blobs/uploads/?mount={ld}&from=lib/base"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = c
        .post(d.url(&format!(
            "/v2/app/one/blobs/uploads/?mount={ld}&from=nowhere"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = c
        .post(d.url(&format!(
            "/v2/app/one/blobs/uploads/?mount={cd}&from=lib/base"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let m = image_manifest((&cd, cfg.len()), &[(&ld, layer.len())]);
    for t in ["1.0", "1.1", "2.0", "latest"] {
        assert_eq!(
            put_manifest(&c, &d, "app/one", t, &m).await.status(),
            StatusCode::CREATED
        );
    }
    // Paging with Link.
    let r = c
        .get(d.url("/v2/app/one/tags/list?n=3"))
        .send()
        .await
        .unwrap();
    let link = r.headers()["link"].to_str().unwrap().to_string();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["tags"], serde_json::json!(["1.0", "1.1", "2.0"]));
    assert_eq!(link, "</v2/app/one/tags/list?n=3&last=2.0>; rel=\"next\"");
    let v: serde_json::Value = c
        .get(d.url("/v2/app/one/tags/list?n=3&last=2.0"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["tags"], serde_json::json!(["latest"]));
    let v: serde_json::Value = c
        .get(d.url("/v2/_catalog"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["repositories"],
        serde_json::json!(["app/one", "lib/base"])
    );
    // Referrers.
    let subject = sha256(&m);
    let sbom = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/spdx+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": cd, "size": cfg.len()},
        "layers": [],
        "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": subject, "size": m.len()}
    })).unwrap();
    let r = put_manifest(&c, &d, "app/one", &sha256(&sbom), &sbom).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["oci-subject"], subject.as_str());
    let v: serde_json::Value = c
        .get(d.url(&format!(
            "/v2/app/one/referrers/{subject}?artifactType=application/spdx%2Bjson"
        )))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["manifests"][0]["digest"], sha256(&sbom));
    assert_eq!(v["manifests"][0]["artifactType"], "application/spdx+json");
    // Error codes.
    let r = c
        .post(d.url("/v2/app/one/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let checks: Vec<(reqwest::RequestBuilder, StatusCode, &str)> = vec![
        (c.get(d.url(&format!("/v2/app/one/blobs/{}", sha256(b"?")))), StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
        (c.patch(d.url(&loc)).header("content-range", "10-19").body(vec![0u8; 10]), StatusCode::RANGE_NOT_SATISFIABLE, "RANGE_INVALID"),
        (c.patch(d.url(&loc)).header("content-range", "0-19").header("content-length", "3").body(vec![0u8; 3]), StatusCode::BAD_REQUEST, "SIZE_INVALID"),
        (c.put(d.url(&format!("{loc}?digest=sha256:abc"))), StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
        (c.get(d.url("/v2/app/one/blobs/uploads/11111111-2222-4333-8444-555555555555")), StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN"),
        (c.put(d.url("/v2/app/one/manifests/bad")).body("[]"), StatusCode::BAD_REQUEST, "MANIFEST_INVALID"),
        (c.put(d.url("/v2/app/one/manifests/bad")).body(image_manifest((&cd, cfg.len()), &[(&sha256(b"gone"), 4)])), StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN"),
        (c.get(d.url("/v2/app/one/manifests/nope")), StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
        (c.get(d.url("/v2/app//one/tags/list")), StatusCode::BAD_REQUEST, "NAME_INVALID"),
        (c.get(d.url("/v2/never/pushed/tags/list")), StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
        (c.put(d.url("/v2/app/one/manifests/v1")).header("content-type", "application/vnd.docker.distribution.manifest.v1+prettyjws").body("{\"schemaVersion\":1}"), StatusCode::UNSUPPORTED_MEDIA_TYPE, "UNSUPPORTED"),
        (c.post(d.url("/v2/app/one/blobs/uploads/?digest=sha256:0000000000000000000000000000000000000000000000000000000000000000")).body("x"), StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
    ];
    for (req, status, code) in checks {
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), status, "{code}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["errors"][0]["code"], code);
    }
    // The session survived the rejected chunks, and nothing stored was disturbed.
    let r = c.get(d.url(&loc)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(get(&c, &d, "/v2/app/one/manifests/latest").await.1, m);
    assert_eq!(
        get(&c, &d, &format!("/v2/app/one/blobs/{ld}")).await.1,
        layer
    );
}

/// `stowage info` talks to the admin gRPC service of a running daemon.
#[tokio::test]
async fn info_command_reads_admin_service() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    let c = client();
    push_blob(&c, &d, "info/repo", b"counted").await;
    let admin = d.admin.trim_start_matches("http://").to_string();
    let out = tokio::task::spawn_blocking(move || {
        common::run(
            std::process::Command::new(env!("CARGO_BIN_EXE_stowage"))
                .args(["info", "--json", "--server", &admin]),
        )
    })
    .await
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert!(v["feed_sequence"].as_u64().unwrap() >= 1, "{v}");
    assert_eq!(v["data_dir"], dir.path().display().to_string());
    // A daemon that is not there is a clear error, not a panic.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stowage"))
        .args(["info", "--server", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("connecting to"),
        "{out:?}"
    );
}

/// Many clients pushing and pulling at once: every push succeeds and every blob pulls
/// byte-identical (staging is shared, so this catches races between uploads).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_pushes_all_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let d = std::sync::Arc::new(Daemon::start(dir.path()));
    let c = client();
    let mut tasks = Vec::new();
    for client_no in 0..8u64 {
        let (c, d) = (c.clone(), d.clone());
        tasks.push(tokio::spawn(async move {
            let mut pushed = Vec::new();
            for i in 0..40u64 {
                let blob = data(64 * 1024 + (i as usize * 997), client_no * 1000 + i);
                let repo = format!("load/c{}", client_no % 3);
                let digest = push_blob(&c, &d, &repo, &blob).await;
                pushed.push((repo, digest, blob));
            }
            pushed
        }));
    }
    for t in tasks {
        for (repo, digest, blob) in t.await.unwrap() {
            let (st, body) = get(&c, &d, &format!("/v2/{repo}/blobs/{digest}")).await;
            assert_eq!(st, StatusCode::OK);
            assert!(body == blob, "{repo} {digest} differs");
        }
    }
}
