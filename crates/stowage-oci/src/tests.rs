#![allow(clippy::unwrap_used)]
//! The router driven in-process (no sockets): status codes, headers and OCI error codes.

use super::*;
use axum::http::Request as HttpRequest;
use http_body_util::BodyExt;
use stowage_auth::authority::AuthSettings;
use stowage_store::{Store, StoreConfig};
use tower::ServiceExt;

mod tag_params;

struct Api {
    router: Router,
    _dir: tempfile::TempDir,
}

/// An authority over `store`'s accounts in `mode` (its token key under `dir`).
pub(crate) fn authority(store: &Store, mode: Mode, dir: &std::path::Path) -> Arc<Authority> {
    Arc::new(
        Authority::new(
            AuthSettings::new(mode, dir.join("token-key.pem")),
            Arc::new(StoreDirectory(store.accounts())),
            Arc::new(stowage_core::SystemClock),
        )
        .unwrap(),
    )
}

async fn api() -> Api {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::new(dir.path())).await.unwrap();
    let auth = authority(&store, Mode::Open, dir.path());
    Api {
        router: router(
            store.client(),
            ApiConfig {
                max_page: 50,
                ..ApiConfig::default()
            },
            auth,
            Limits::new(None),
        ),
        _dir: dir,
    }
}

struct Resp {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }
    fn code(&self) -> String {
        let v: serde_json::Value = serde_json::from_slice(&self.body).unwrap();
        v["errors"][0]["code"].as_str().unwrap().to_string()
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

impl Api {
    async fn call(&self, method: &str, uri: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Resp {
        let mut req = HttpRequest::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = self
            .router
            .clone()
            .oneshot(req.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        Resp {
            status,
            headers,
            body,
        }
    }

    async fn push_blob(&self, repo: &str, data: &[u8]) -> Digest {
        let d = Digest::sha256(data);
        let r = self
            .call(
                "POST",
                &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
                &[],
                data.to_vec(),
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        d
    }
}

fn manifest(cfg: &Digest, cfg_size: usize, layers: &[(&Digest, usize)]) -> Vec<u8> {
    let layers: Vec<_> = layers
        .iter()
        .map(|(d, s)| serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d.to_string(), "size": s}))
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg.to_string(), "size": cfg_size},
        "layers": layers
    }))
    .unwrap()
}

#[test]
fn routes_split_from_the_end() {
    assert_eq!(
        route("a/b/blobs/uploads/"),
        Some(Target::UploadStart("a/b"))
    );
    assert_eq!(
        route("blobs/blobs/uploads"),
        Some(Target::UploadStart("blobs"))
    );
    assert_eq!(
        route("a/blobs/uploads/abc"),
        Some(Target::Upload("a", "abc"))
    );
    assert_eq!(
        route("a/manifests/blobs/sha256:x"),
        Some(Target::Blob("a/manifests", "sha256:x"))
    );
    assert_eq!(
        route("x/y/manifests/latest"),
        Some(Target::Manifest("x/y", "latest"))
    );
    assert_eq!(route("x/tags/list"), Some(Target::Tags("x")));
    assert_eq!(
        route("x/referrers/sha256:a"),
        Some(Target::Referrers("x", "sha256:a"))
    );
    assert_eq!(route("_catalog"), Some(Target::Catalog));
    assert_eq!(route("nothing"), None);
}

#[tokio::test]
async fn base_endpoint_and_version_header() {
    let api = api().await;
    let r = api.call("GET", "/v2/", &[], vec![]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("docker-distribution-api-version"), "registry/2.0");
}

#[tokio::test]
async fn chunked_upload_with_ranges_and_status() {
    let api = api().await;
    let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
    let d = Digest::sha256(&data);
    let r = api
        .call("POST", "/v2/team/app/blobs/uploads/", &[], vec![])
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let loc = r.header("location").to_string();
    assert!(loc.starts_with("/v2/team/app/blobs/uploads/"), "{loc}");
    assert_eq!(r.header("range"), "0-0");
    let r = api
        .call(
            "PATCH",
            &loc,
            &[("content-range", "0-3999"), ("content-length", "4000")],
            data[..4000].to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(r.header("range"), "0-3999");
    // Out of order chunk: 416 with the current range.
    let r = api
        .call(
            "PATCH",
            &loc,
            &[("content-range", "5000-5999")],
            data[5000..6000].to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.header("range"), "0-3999");
    let r = api.call("GET", &loc, &[], vec![]).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(r.header("range"), "0-3999");
    let r = api
        .call(
            "PUT",
            &format!("{loc}?digest={d}"),
            &[("content-range", "4000-9999")],
            data[4000..].to_vec(),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.header("docker-content-digest"), d.to_string());
    assert_eq!(r.header("location"), format!("/v2/team/app/blobs/{d}"));
    // Whole, ranged, suffix and unsatisfiable reads.
    let r = api
        .call("GET", &format!("/v2/team/app/blobs/{d}"), &[], vec![])
        .await;
    assert_eq!(r.body, data);
    let r = api
        .call(
            "GET",
            &format!("/v2/team/app/blobs/{d}"),
            &[("range", "bytes=100-199")],
            vec![],
        )
        .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.header("content-range"), "bytes 100-199/10000");
    assert_eq!(r.body, data[100..200]);
    let r = api
        .call(
            "GET",
            &format!("/v2/team/app/blobs/{d}"),
            &[("range", "bytes=20000-")],
            vec![],
        )
        .await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    let r = api
        .call("HEAD", &format!("/v2/team/app/blobs/{d}"), &[], vec![])
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-length"), "10000");
    // The finished session is gone.
    let r = api.call("GET", &loc, &[], vec![]).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN")
    );
}

#[tokio::test]
async fn error_codes() {
    let api = api().await;
    let good = api.push_blob("r", b"kept").await;
    let cases: Vec<(&str, String, Vec<u8>, StatusCode, &str)> = vec![
        ("GET", format!("/v2/r/blobs/{}", Digest::sha256(b"no")), vec![], StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
        ("GET", "/v2/r/blobs/sha256:zz".into(), vec![], StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
        ("POST", format!("/v2/r/blobs/uploads/?digest={}", Digest::sha256(b"x")), b"y".to_vec(), StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
        ("GET", "/v2/r/blobs/uploads/00000000-0000-0000-0000-000000000000".into(), vec![], StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN"),
        ("GET", "/v2/Bad/Name/tags/list".into(), vec![], StatusCode::BAD_REQUEST, "NAME_INVALID"),
        ("GET", "/v2/a/../b/tags/list".into(), vec![], StatusCode::BAD_REQUEST, "NAME_INVALID"),
        ("GET", "/v2/nosuch/tags/list".into(), vec![], StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
        ("GET", "/v2/r/manifests/latest".into(), vec![], StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
        ("PUT", "/v2/r/manifests/v1".into(), b"{not json".to_vec(), StatusCode::BAD_REQUEST, "MANIFEST_INVALID"),
        ("PUT", "/v2/r/manifests/v1".into(), manifest(&good, 4, &[(&Digest::sha256(b"missing"), 7)]), StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN"),
        ("PUT", "/v2/r/manifests/v1".into(), vec![b' '; stowage_core::MAX_MANIFEST_BYTES + 1], StatusCode::PAYLOAD_TOO_LARGE, "MANIFEST_INVALID"),
        ("PUT", "/v2/r/manifests/v1".into(), br#"{"schemaVersion":1,"mediaType":"application/vnd.docker.distribution.manifest.v1+prettyjws","fsLayers":[]}"#.to_vec(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "UNSUPPORTED"),
        ("PUT", "/v2/r/blobs/uploads/00000000-0000-0000-0000-000000000000?digest=sha256:00".into(), vec![], StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
        ("PATCH", "/v2/r/blobs/uploads/not$an*id".into(), vec![], StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN"),
        ("GET", "/v2/r/nothing/here".into(), vec![], StatusCode::NOT_FOUND, "UNSUPPORTED"),
    ];
    for (method, uri, body, status, code) in cases {
        let r = api.call(method, &uri, &[], body).await;
        assert_eq!(
            r.status,
            status,
            "{method} {uri}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.code(), code, "{method} {uri}");
    }
    // Nothing stored before was disturbed.
    let r = api
        .call("GET", &format!("/v2/r/blobs/{good}"), &[], vec![])
        .await;
    assert_eq!(r.body, b"kept");
    // Wrong length declared with the chunk.
    let r = api.call("POST", "/v2/r/blobs/uploads/", &[], vec![]).await;
    let loc = r.header("location").to_string();
    let r = api
        .call(
            "PATCH",
            &loc,
            &[("content-range", "0-9"), ("content-length", "4")],
            b"abcd".to_vec(),
        )
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::BAD_REQUEST, "SIZE_INVALID")
    );
    // Finishing without a digest.
    let r = api.call("PUT", &loc, &[], vec![]).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::BAD_REQUEST, "DIGEST_INVALID")
    );
    // Cancel.
    let r = api.call("DELETE", &loc, &[], vec![]).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = api.call("DELETE", &loc, &[], vec![]).await;
    assert_eq!(r.code(), "BLOB_UPLOAD_UNKNOWN");
}

#[tokio::test]
async fn manifests_tags_paging_mount_referrers() {
    let api = api().await;
    let cfg = api.push_blob("src", b"{}").await;
    let layer = api.push_blob("src", b"layer").await;
    // Mount into another repository: 201; mount of an unknown blob: 202 session.
    let r = api
        .call(
            "POST",
            &format!("/v2/dst/blobs/uploads/?mount={layer}&from=src"),
            &[],
            vec![],
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.header("location"), format!("/v2/dst/blobs/{layer}"));
    let r = api
        .call(
            "POST",
            &format!(
                "/v2/dst/blobs/uploads/?mount={}&from=src",
                Digest::sha256(b"zz")
            ),
            &[],
            vec![],
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let m = manifest(&cfg, 2, &[(&layer, 5)]);
    for t in ["b", "a", "c", "latest"] {
        let r = api
            .call(
                "PUT",
                &format!("/v2/src/manifests/{t}"),
                &[("content-type", "application/vnd.oci.image.manifest.v1+json")],
                m.clone(),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
        assert_eq!(
            r.header("docker-content-digest"),
            Digest::sha256(&m).to_string()
        );
    }
    let r = api
        .call("GET", "/v2/src/manifests/latest", &[], vec![])
        .await;
    assert_eq!(r.body, m);
    assert_eq!(
        r.header("content-type"),
        "application/vnd.oci.image.manifest.v1+json"
    );
    let r = api
        .call("HEAD", "/v2/src/manifests/latest", &[], vec![])
        .await;
    assert_eq!(r.header("content-length"), m.len().to_string());
    // Tag paging.
    let r = api.call("GET", "/v2/src/tags/list?n=2", &[], vec![]).await;
    assert_eq!(r.json()["tags"], serde_json::json!(["a", "b"]));
    assert_eq!(
        r.header("link"),
        "</v2/src/tags/list?n=2&last=b>; rel=\"next\""
    );
    let r = api
        .call("GET", "/v2/src/tags/list?n=2&last=b", &[], vec![])
        .await;
    assert_eq!(r.json()["tags"], serde_json::json!(["c", "latest"]));
    assert_eq!(r.header("link"), "");
    let r = api.call("GET", "/v2/_catalog?n=1", &[], vec![]).await;
    assert_eq!(r.json()["repositories"], serde_json::json!(["dst"]));
    assert!(r.header("link").contains("last=dst"));
    // Referrers with an artifactType filter.
    let subject = Digest::sha256(&m);
    let sig = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.example.sig",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": cfg.to_string(), "size": 2},
        "layers": [],
        "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": subject.to_string(), "size": m.len()}
    })).unwrap();
    let sig_d = Digest::sha256(&sig);
    let r = api
        .call("PUT", &format!("/v2/src/manifests/{sig_d}"), &[], sig)
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.header("oci-subject"), subject.to_string());
    let r = api
        .call("GET", &format!("/v2/src/referrers/{subject}"), &[], vec![])
        .await;
    assert_eq!(
        r.header("content-type"),
        "application/vnd.oci.image.index.v1+json"
    );
    assert_eq!(r.json()["manifests"][0]["digest"], sig_d.to_string());
    let r = api
        .call(
            "GET",
            &format!("/v2/src/referrers/{subject}?artifactType=application/other"),
            &[],
            vec![],
        )
        .await;
    assert_eq!(r.json()["manifests"], serde_json::json!([]));
    assert_eq!(r.header("oci-filters-applied"), "artifactType");
    // Delete by tag, then by digest.
    let r = api.call("DELETE", "/v2/src/manifests/a", &[], vec![]).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let r = api
        .call(
            "DELETE",
            &format!("/v2/src/manifests/{subject}"),
            &[],
            vec![],
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let r = api
        .call("GET", "/v2/src/manifests/latest", &[], vec![])
        .await;
    assert_eq!(r.code(), "MANIFEST_UNKNOWN");
    // Blob delete.
    let r = api
        .call("DELETE", &format!("/v2/dst/blobs/{layer}"), &[], vec![])
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let r = api
        .call("HEAD", &format!("/v2/dst/blobs/{layer}"), &[], vec![])
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}
