//! Limits that protect the daemon from any one client, against the real daemon: abandoned
//! upload sessions, sessions per actor, staged bytes, the request rate, request heads,
//! connections, slow (slowloris) and stalled clients, and the open-file limit. Each answers
//! its documented status and leaves nothing stored changed.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{data, sha256, Daemon};
use reqwest::StatusCode;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(64)
        .pool_idle_timeout(Duration::from_millis(500))
        .build()
        .unwrap()
}

fn config(dir: &std::path::Path, text: &str) -> String {
    let p = dir.join("limits.toml");
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

/// Resident set size of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap()
}

async fn json_code(r: reqwest::Response) -> String {
    let v: serde_json::Value = r.json().await.unwrap();
    v["errors"][0]["code"].as_str().unwrap().to_string()
}

/// 10,000 upload sessions opened and abandoned: memory stays bounded, the next one past the
/// limit gets 429 TOOMANYREQUESTS with Retry-After, and expiring them frees the room.
#[tokio::test]
async fn abandoned_upload_sessions_stay_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "[limits]\nmax_uploads = 10000\nmax_uploads_per_actor = 10000\nrequests_per_second = 0\n",
    );
    let d = Daemon::start_with(dir.path(), &["--config", &cfg]);
    let pid = d.child.id();
    let c = client();
    // Warm up allocator pools and the connection pool before the baseline.
    for _ in 0..50 {
        let r = c.get(d.url("/v2/")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    let before = rss_kib(pid);
    let started = Instant::now();
    let url = d.url("/v2/limits/app/blobs/uploads/");
    let results = futures::future::join_all((0..16).map(|_| {
        let (c, url) = (c.clone(), url.clone());
        async move {
            let mut ok = 0;
            for _ in 0..625 {
                let r = c.post(&url).send().await.unwrap();
                assert_eq!(r.status(), StatusCode::ACCEPTED);
                ok += 1;
            }
            ok
        }
    }))
    .await;
    assert_eq!(results.iter().sum::<u32>(), 10_000);
    let after = rss_kib(pid);
    let grown = after.saturating_sub(before);
    eprintln!(
        "10,000 abandoned sessions in {:?}: RSS {before} KiB -> {after} KiB (+{grown} KiB)",
        started.elapsed()
    );
    // The sessions are small (their record and hash state): well under 32 MiB for 10,000.
    assert!(grown < 32 * 1024, "RSS grew by {grown} KiB");
    let r = c.post(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(json_code(r).await, "TOOMANYREQUESTS");
    // The limit is on sessions, not on everything: pulls and monolithic pushes of existing
    // content go on, and the figures are in the metrics.
    let metrics = c
        .get(d.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("stowage_upload_sessions 10000"),
        "{metrics}"
    );
    assert!(metrics.contains("stowage_upload_sessions_limit 10000"));
    // Expired by a collection run, they free their room.
    common::auth::cli_ok(
        &[
            "gc",
            "run",
            "--wait",
            "--upload-expiry",
            "0s",
            "--server",
            &d.admin,
        ],
        &[],
    );
    let r = c.post(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
}

/// One actor at its session limit is refused; another actor is not.
#[tokio::test]
async fn upload_sessions_per_actor_and_staged_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "[auth]\nmode = \"basic\"\n[limits]\nmax_uploads_per_actor = 3\nmax_staged_bytes = \"1M\"\n",
    );
    common::auth::add_user_offline(dir.path(), "root", "root-password-1", true);
    common::auth::add_user_offline(dir.path(), "other", "other-password-1", true);
    let d = Daemon::start_with(dir.path(), &["--config", &cfg]);
    let c = client();
    let post = |u: &'static str, p: &'static str| {
        let c = c.clone();
        let url = d.url("/v2/lim/app/blobs/uploads/");
        async move { c.post(url).basic_auth(u, Some(p)).send().await.unwrap() }
    };
    let mut locations = Vec::new();
    for _ in 0..3 {
        let r = post("root", "root-password-1").await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        locations.push(r.headers()["location"].to_str().unwrap().to_string());
    }
    let r = post("root", "root-password-1").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(json_code(r).await, "TOOMANYREQUESTS");
    assert_eq!(
        post("other", "other-password-1").await.status(),
        StatusCode::ACCEPTED
    );
    // Staged bytes are counted as they arrive: 1 MiB in all, half of it per actor by default.
    let patch = |u: &'static str, p: &'static str, loc: String, body: Vec<u8>| {
        let c = c.clone();
        let url = d.url(&loc);
        async move { c.patch(url).basic_auth(u, Some(p)).body(body).send().await }
    };
    let range = |u: &'static str, p: &'static str, loc: String| {
        let c = c.clone();
        let url = d.url(&loc);
        async move {
            let r = c.get(url).basic_auth(u, Some(p)).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::NO_CONTENT);
            r.headers()["range"].to_str().unwrap().to_string()
        }
    };
    // One body larger than the whole pool is cut where it crosses the limit: 429 (or, when
    // the client is still sending, the connection is closed after it), nothing of it kept.
    match patch(
        "root",
        "root-password-1",
        locations[0].clone(),
        data(1_200_000, 4),
    )
    .await
    {
        Ok(r) => {
            assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(json_code(r).await, "TOOMANYREQUESTS");
        }
        Err(e) => eprintln!("the oversized body was cut before its answer was read: {e}"),
    }
    assert_eq!(
        range("root", "root-password-1", locations[0].clone()).await,
        "0-0"
    );
    let r = patch(
        "root",
        "root-password-1",
        locations[0].clone(),
        data(400_000, 5),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    // 200,000 more would take root past its 524,288 bytes.
    let r = patch(
        "root",
        "root-password-1",
        locations[1].clone(),
        data(200_000, 6),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        range("root", "root-password-1", locations[1].clone()).await,
        "0-0"
    );
    // Another actor still has room.
    let r = post("other", "other-password-1").await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let theirs = r.headers()["location"].to_str().unwrap().to_string();
    let r = patch(
        "other",
        "other-password-1",
        theirs.clone(),
        data(500_000, 7),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    // Cancelling frees root's bytes.
    let r = c
        .delete(d.url(&locations[0]))
        .basic_auth("root", Some("root-password-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = patch(
        "root",
        "root-password-1",
        locations[1].clone(),
        data(200_000, 6),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    // What is counted is exactly what is kept.
    let metrics = c
        .get(d.url("/metrics"))
        .basic_auth("root", Some("root-password-1"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("stowage_staged_bytes 700000\n"),
        "{metrics}"
    );
    assert!(metrics.contains("stowage_staged_bytes_per_actor_limit 524288\n"));
}

/// Upload sessions idle past `[gc] upload_expiry` are removed with their bytes by the
/// daemon's own task, with garbage collection never run.
#[tokio::test]
async fn idle_upload_sessions_expire_without_a_collection() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "[gc]\nupload_expiry = \"2s\"\n");
    let d = Daemon::start_with(dir.path(), &["--config", &cfg]);
    let c = client();
    let r = c
        .post(d.url("/v2/idle/app/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let r = c
        .patch(d.url(&loc))
        .body(data(10_000, 8))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = c.get(d.url(&loc)).send().await.unwrap();
        if r.status() == StatusCode::NOT_FOUND {
            assert_eq!(json_code(r).await, "BLOB_UPLOAD_UNKNOWN");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the idle session was not expired"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let metrics = c
        .get(d.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("stowage_upload_sessions 0\n"), "{metrics}");
    assert!(metrics.contains("stowage_staged_bytes 0\n"), "{metrics}");
    // The expiry is audited.
    let out = common::auth::cli_ok(&["audit", "--json", "--server", &d.admin], &[]);
    assert!(
        out.lines()
            .any(|l| l.contains("upload") && l.contains("system:upload-expiry")),
        "{out}"
    );
}

/// Past its request rate an actor gets 429 with Retry-After; others are not slowed.
#[tokio::test]
async fn request_rate_per_actor() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "[limits]\nrequests_per_second = 2\nrequest_burst = 5\n",
    );
    let d = Daemon::start_with(dir.path(), &["--config", &cfg]);
    let c = client();
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let r = c.get(d.url("/v2/rate/app/tags/list")).send().await.unwrap();
        statuses.push(r.status());
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(r.headers().contains_key("retry-after"));
            assert_eq!(json_code(r).await, "TOOMANYREQUESTS");
        }
    }
    let limited = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert!(limited >= 10, "{statuses:?}");
    // The burst of 5 is served (the harness's readiness probe took one of it).
    assert!(
        statuses[..4].iter().all(|s| *s == StatusCode::NOT_FOUND),
        "the burst is served: {statuses:?}"
    );
    let metrics = c
        .get(d.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!("stowage_requests_rate_limited_total {limited}"))
            || metrics.contains("stowage_requests_rate_limited_total"),
        "{metrics}"
    );

    // Work started under the rate is let finish: an upload session opened before the rate
    // ran out is completed (PUT) or cancelled (DELETE) after it, never left open by a 429;
    // starting or feeding work (POST, PATCH) waits for the rate like everything else.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut sessions = Vec::new();
    for _ in 0..2 {
        let r = c
            .post(d.url("/v2/rate/app/blobs/uploads/"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        sessions.push(r.headers()["location"].to_str().unwrap().to_string());
    }
    loop {
        let r = c.get(d.url("/v2/rate/app/tags/list")).send().await.unwrap();
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            break;
        }
    }
    let blob = data(1000, 9);
    let r = c
        .patch(d.url(&sessions[1]))
        .body(blob.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let sep = if sessions[0].contains('?') { '&' } else { '?' };
    let r = c
        .put(d.url(&format!("{}{sep}digest={}", sessions[0], sha256(&blob))))
        .body(blob.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = c.delete(d.url(&sessions[1])).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
}

/// Sends raw bytes and reads what comes back until EOF or `wait`.
fn exchange(host: &str, bytes: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    let _ = s.write_all(bytes);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Request heads beyond the size or header-count limit get 431; a `Content-Range` at the end
/// of the u64 range is refused (no panic, no wrap-around); the daemon goes on serving.
#[tokio::test]
async fn oversized_heads_and_extreme_ranges_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "[limits]\nmax_header_bytes = \"16K\"\nmax_headers = 40\n",
    );
    let d = Daemon::start_with(dir.path(), &["--config", &cfg]);
    let big = format!(
        "GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(40_000)
    );
    let out = exchange(&d.host, big.as_bytes(), Duration::from_secs(5));
    assert!(out.starts_with("HTTP/1.1 431"), "{out:.80}");
    let mut many = String::from("GET /v2/ HTTP/1.1\r\nHost: x\r\n");
    for i in 0..100 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let out = exchange(&d.host, many.as_bytes(), Duration::from_secs(5));
    assert!(out.starts_with("HTTP/1.1 431"), "{out:.80}");
    let c = client();
    let r = c
        .post(d.url("/v2/r/app/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    for range in [
        "0-18446744073709551615",
        "18446744073709551615-18446744073709551615",
    ] {
        let r = c
            .patch(d.url(&loc))
            .header("content-range", range)
            .header("content-length", "4")
            .body(vec![1, 2, 3, 4])
            .send()
            .await
            .unwrap();
        assert!(
            r.status() == StatusCode::BAD_REQUEST
                || r.status() == StatusCode::RANGE_NOT_SATISFIABLE,
            "{range}: {}",
            r.status()
        );
    }
    let r = c.get(d.url(&loc)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(r.headers()["range"], "0-0", "nothing was stored");
    let r = c.get(d.url("/v2/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // The gRPC listeners take the same head limit (16K here; hyper's own default would take
    // 16 MiB): a call with 40 KB of metadata is refused, one with 8 KB is served.
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let channel = tonic::transport::Endpoint::from_shared(d.admin.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let mut big = tonic::Request::new(HealthCheckRequest::default());
    big.metadata_mut()
        .insert("x-big", "a".repeat(40_000).parse().unwrap());
    let e = health.check(big).await.unwrap_err();
    assert_ne!(e.code(), tonic::Code::Ok, "{e:?}");
    let channel = tonic::transport::Endpoint::from_shared(d.admin.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut small = tonic::Request::new(HealthCheckRequest::default());
    small
        .metadata_mut()
        .insert("x-big", "a".repeat(8_000).parse().unwrap());
    let ok = HealthClient::new(channel).check(small).await.unwrap();
    assert_eq!(
        ok.into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

/// 200 slowloris connections (request heads that never finish) do not stop a fresh client
/// being served within a second, and are cut after the header timeout; a body that stalls is
/// cut after the body timeout, storing nothing; past max_connections a connection gets 503.
#[tokio::test]
async fn slow_and_stalled_clients_are_cut_and_fresh_ones_served() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "[limits]\nheader_read_timeout = \"2s\"\nbody_timeout = \"2s\"\nmax_connections = 300\n",
    );
    let d = Daemon::start_with(dir.path(), &["--config", &cfg]);
    let mut slow = Vec::new();
    for _ in 0..200 {
        let mut s = TcpStream::connect(&d.host).unwrap();
        s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .unwrap();
        slow.push(s);
    }
    let c = client();
    let started = Instant::now();
    let r = c.get(d.url("/v2/")).send().await.unwrap();
    let took = started.elapsed();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        took < Duration::from_secs(1),
        "fresh client waited {took:?}"
    );
    // The stalled heads are cut: every slow connection reads EOF within a few seconds.
    let deadline = Instant::now() + Duration::from_secs(15);
    for s in &mut slow {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(10));
        s.set_read_timeout(Some(left)).unwrap();
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(_) => {}
            Err(e) => panic!("a slowloris connection was still open: {e}"),
        }
    }
    let metrics = c
        .get(d.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let cut: u64 = metrics
        .lines()
        .find(|l| l.starts_with("stowage_connections_header_timeouts_total{listener=\"api\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(cut >= 200, "{cut} header timeouts");

    // A body that stops half way: the request is cut, nothing is stored.
    let r = c
        .post(d.url("/v2/slow/app/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let mut s = TcpStream::connect(&d.host).unwrap();
    write!(
        s,
        "PATCH {loc} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
    )
    .unwrap();
    s.write_all(&[7u8; 1000]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "stalled body not cut"
    );
    let r = c.get(d.url(&loc)).send().await.unwrap();
    if r.status() == StatusCode::NO_CONTENT {
        assert_eq!(r.headers()["range"], "0-0", "a cut body was kept");
    } else {
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }

    // The connection limit: 300 open (stalled) connections, and the next gets 503.
    let mut held = Vec::new();
    for _ in 0..300 {
        let mut s = TcpStream::connect(&d.host).unwrap();
        s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n").unwrap();
        held.push(s);
    }
    std::thread::sleep(Duration::from_millis(300));
    let out = exchange(
        &d.host,
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(out.starts_with("HTTP/1.1 503"), "{out:.120}");
    assert!(out.to_ascii_lowercase().contains("retry-after"), "{out}");
    drop(held);
    // Once they are gone, clients are served again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(r) = c.get(d.url("/v2/")).send().await {
            if r.status() == StatusCode::OK {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "not served again after the flood"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = sha256(b"");
}

/// The daemon raises its open-file soft limit to the hard limit at start.
#[test]
fn open_file_limit_is_raised() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", d.child.id())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let nums: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(nums[0], nums[1], "soft limit not raised: {line}");
}
