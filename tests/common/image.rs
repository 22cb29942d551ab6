//! OCI images for end-to-end tests: build, push over HTTP, pull and compare.
#![allow(dead_code, clippy::unwrap_used)]

use reqwest::StatusCode;

use super::sha256;

/// An image: its blobs (config first) and manifest bytes.
#[derive(Clone, Debug)]
pub struct Image {
    pub blobs: Vec<Vec<u8>>,
    pub manifest: Vec<u8>,
}

impl Image {
    /// The manifest's digest.
    pub fn digest(&self) -> String {
        sha256(&self.manifest)
    }

    /// Bytes of the image's blobs.
    pub fn blob_bytes(&self) -> u64 {
        self.blobs.iter().map(|b| b.len() as u64).sum()
    }
}

/// An image whose layers are `layers` (its config is derived from them).
pub fn image(layers: Vec<Vec<u8>>) -> Image {
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| sha256(l)).collect::<Vec<_>>()}
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256(&config), "size": config.len()},
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": sha256(l), "size": l.len()})).collect::<Vec<_>>()
    }))
    .unwrap();
    let mut blobs = vec![config];
    blobs.extend(layers);
    Image { blobs, manifest }
}

/// Uploads one blob (monolithic) unless the repository has it.
pub async fn push_blob(c: &reqwest::Client, base: &str, repo: &str, blob: &[u8]) {
    let digest = sha256(blob);
    let head = c
        .head(format!("{base}/v2/{repo}/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    if head.status() == StatusCode::OK {
        return;
    }
    let post = c
        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), StatusCode::ACCEPTED);
    let loc = post.headers()["location"].to_str().unwrap().to_string();
    let url = if loc.starts_with("http") {
        loc
    } else {
        format!("{base}{loc}")
    };
    let sep = if url.contains('?') { '&' } else { '?' };
    let put = c
        .put(format!("{url}{sep}digest={digest}"))
        .body(blob.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::CREATED, "blob upload failed");
}

/// Pushes an image's blobs, then its manifest under `reference` (a tag or its digest).
pub async fn push_image(c: &reqwest::Client, base: &str, repo: &str, reference: &str, img: &Image) {
    for blob in &img.blobs {
        push_blob(c, base, repo, blob).await;
    }
    put_manifest(c, base, repo, reference, img).await;
}

/// Puts the manifest only (its blobs must be there): moves a tag.
pub async fn put_manifest(
    c: &reqwest::Client,
    base: &str,
    repo: &str,
    reference: &str,
    img: &Image,
) {
    let resp = c
        .put(format!("{base}/v2/{repo}/manifests/{reference}"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(img.manifest.clone())
        .send()
        .await
        .unwrap();
    let status = resp.status();
    assert_eq!(
        status,
        StatusCode::CREATED,
        "manifest push: {}",
        resp.text().await.unwrap_or_default()
    );
}

/// The digest a tag resolves to, if any.
pub async fn tag_digest(c: &reqwest::Client, base: &str, repo: &str, tag: &str) -> Option<String> {
    let r = c
        .head(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .ok()?;
    if r.status() != StatusCode::OK {
        return None;
    }
    r.headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Whether `repo:reference` pulls byte-identical to `img` (manifest and every blob).
pub async fn pulls_identical(
    c: &reqwest::Client,
    base: &str,
    repo: &str,
    reference: &str,
    img: &Image,
) -> bool {
    let Ok(m) = c
        .get(format!("{base}/v2/{repo}/manifests/{reference}"))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
    else {
        return false;
    };
    if m.status() != StatusCode::OK
        || m.bytes().await.map(|b| b.to_vec()).ok().as_ref() != Some(&img.manifest)
    {
        return false;
    }
    for blob in &img.blobs {
        let digest = sha256(blob);
        let Ok(r) = c
            .get(format!("{base}/v2/{repo}/blobs/{digest}"))
            .send()
            .await
        else {
            return false;
        };
        if r.status() != StatusCode::OK {
            return false;
        }
        match r.bytes().await {
            Ok(b) if b.as_ref() == blob.as_slice() => {}
            _ => return false,
        }
    }
    true
}
