//! `PUT /v2/<name>/manifests/<digest>?tag=...`: tags applied with the push, for any digest
//! algorithm, all or nothing.

use super::*;
use crate::manifests::MAX_TAG_PARAMS;
use stowage_core::Algorithm;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// An image in `repo` whose blobs are pushed; returns its manifest bytes.
async fn image(api: &Api, repo: &str, seed: &str) -> Vec<u8> {
    let cfg = format!("{{\"seed\":\"{seed}\"}}").into_bytes();
    let layer = format!("layer of {seed}").into_bytes();
    let cd = api.push_blob(repo, &cfg).await;
    let ld = api.push_blob(repo, &layer).await;
    manifest(&cd, cfg.len(), &[(&ld, layer.len())])
}

fn oci_tags(r: &Resp) -> Vec<String> {
    r.headers
        .get_all("oci-tag")
        .iter()
        .flat_map(|v| v.to_str().unwrap().split(','))
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect()
}

#[tokio::test]
async fn tag_parameters_tag_a_push_by_digest_of_either_algorithm() {
    let api = api().await;
    let ct = [("content-type", OCI_MANIFEST)];
    for (algorithm, tags) in [
        (Algorithm::Sha512, vec!["a", "b"]),
        (Algorithm::Sha256, vec!["c", "d", "e"]),
    ] {
        let bytes = image(&api, "r", algorithm.as_str()).await;
        let d = Digest::compute(algorithm, &bytes);
        let query: Vec<String> = tags.iter().map(|t| format!("tag={t}")).collect();
        let r = api
            .call(
                "PUT",
                &format!("/v2/r/manifests/{d}?{}", query.join("&")),
                &ct,
                bytes.clone(),
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.header("docker-content-digest"), d.as_str());
        assert_eq!(oci_tags(&r), tags, "OCI-Tag names every tag applied");
        for t in &tags {
            let g = api
                .call("GET", &format!("/v2/r/manifests/{t}"), &[], vec![])
                .await;
            assert_eq!(g.status, StatusCode::OK, "{algorithm:?} tag {t}");
            assert_eq!(g.header("docker-content-digest"), d.as_str());
            assert_eq!(g.body, bytes);
        }
    }
    let list = api.call("GET", "/v2/r/tags/list", &[], vec![]).await;
    assert_eq!(
        list.json()["tags"],
        serde_json::json!(["a", "b", "c", "d", "e"])
    );

    // Pushing again with a tag already there and a new one moves nothing and adds the new one.
    let bytes = image(&api, "r", "sha512").await;
    let d = Digest::compute(Algorithm::Sha512, &bytes);
    let r = api
        .call(
            "PUT",
            &format!("/v2/r/manifests/{d}?tag=a&tag=f&tag=a"),
            &ct,
            bytes,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(oci_tags(&r), ["a", "f"], "duplicates named once");
    let g = api.call("HEAD", "/v2/r/manifests/f", &[], vec![]).await;
    assert_eq!(g.header("docker-content-digest"), d.as_str());
}

#[tokio::test]
async fn a_bad_tag_parameter_refuses_the_whole_push() {
    let api = api().await;
    let ct = [("content-type", OCI_MANIFEST)];
    let bytes = image(&api, "r", "bad").await;
    let d = Digest::compute(Algorithm::Sha512, &bytes);
    let too_long = "x".repeat(129);
    for query in [
        "tag=ok&tag=-bad".to_string(),
        "tag=ok&tag=".to_string(),
        format!("tag=ok&tag={too_long}"),
        "tag=ok&tag=a%2Fb".to_string(),
    ] {
        let r = api
            .call(
                "PUT",
                &format!("/v2/r/manifests/{d}?{query}"),
                &ct,
                bytes.clone(),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(r.code(), "TAG_INVALID", "{query}");
    }
    // Tag parameters belong to a push by digest.
    let r = api
        .call("PUT", "/v2/r/manifests/v1?tag=ok", &ct, bytes.clone())
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.code(), "TAG_INVALID");
    // More than the limit: 414, as the spec allows.
    let many: Vec<String> = (0..=MAX_TAG_PARAMS).map(|i| format!("tag=t{i}")).collect();
    let r = api
        .call(
            "PUT",
            &format!("/v2/r/manifests/{d}?{}", many.join("&")),
            &ct,
            bytes.clone(),
        )
        .await;
    assert_eq!(r.status, StatusCode::URI_TOO_LONG);
    assert_eq!(r.code(), "TAG_INVALID");

    // Nothing was stored by any of them.
    for reference in [d.to_string(), "ok".into(), "v1".into(), "t0".into()] {
        let g = api
            .call("GET", &format!("/v2/r/manifests/{reference}"), &[], vec![])
            .await;
        assert_eq!(g.status, StatusCode::NOT_FOUND, "{reference}");
    }
    let list = api.call("GET", "/v2/r/tags/list", &[], vec![]).await;
    assert_eq!(list.json()["tags"], serde_json::json!([]));
}
