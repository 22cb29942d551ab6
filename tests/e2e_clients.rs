//! End to end with real clients from Debian packages (installed by scripts/install-test-deps.sh):
//! images built with umoci, copied in and out with skopeo, compared byte for byte.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::layout::{layout_blobs, umoci_image};
use common::{require_tool, run, sha256, Daemon};

fn skopeo() -> Command {
    let mut c = Command::new("skopeo");
    c.arg("--insecure-policy");
    c
}

/// The manifest descriptor tagged `tag` in a layout's index.json.
fn layout_ref(layout: &Path, tag: &str) -> serde_json::Value {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .cloned()
        .unwrap_or_else(|| panic!("tag {tag} not in {}", layout.display()))
}

/// Blobs reachable from `digest` in `blobs` (manifest, config, layers, children).
fn reachable(blobs: &BTreeMap<String, Vec<u8>>, digest: &str, out: &mut BTreeMap<String, Vec<u8>>) {
    let bytes = blobs
        .get(digest)
        .unwrap_or_else(|| panic!("{digest} missing"))
        .clone();
    out.insert(digest.to_string(), bytes.clone());
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) {
        if let Some(cfg) = v["config"]["digest"].as_str() {
            out.insert(cfg.to_string(), blobs[cfg].clone());
        }
        for key in ["layers", "manifests"] {
            for d in v[key].as_array().into_iter().flatten() {
                reachable(blobs, d["digest"].as_str().unwrap(), out);
            }
        }
    }
}

struct Env {
    _dir: tempfile::TempDir,
    root: PathBuf,
    daemon: Daemon,
}

fn env() -> Env {
    env_on(false)
}

/// A daemon on the local file system, or with `s3` on the tests' S3 server (moto).
fn env_on(s3: bool) -> Env {
    require_tool("skopeo");
    require_tool("umoci");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let daemon = if s3 {
        Daemon::start_s3(&root.join("data"), &[])
    } else {
        Daemon::start(&root.join("data"))
    };
    Env {
        _dir: dir,
        root,
        daemon,
    }
}

fn get(url: &str) -> (u16, Vec<u8>, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let r = reqwest::Client::new()
            .get(url)
            .header("accept", "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json")
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let ct = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        (status, r.bytes().await.unwrap().to_vec(), ct)
    })
}

#[test]
fn umoci_image_round_trip_is_byte_identical() {
    round_trip(&env());
}

#[test]
fn umoci_image_round_trip_on_s3_is_byte_identical() {
    round_trip(&env_on(true));
}

fn round_trip(e: &Env) {
    let src = e.root.join("src");
    umoci_image(
        &src,
        "v1",
        "amd64",
        &[
            ("hello.txt", b"hello stowage\n".to_vec()),
            // Larger than a part: a multipart upload on S3.
            ("big.bin", common::data(12 << 20, 7)),
        ],
    );
    let dest = format!("docker://{}/e2e/umoci:v1", e.daemon.host);
    run(skopeo()
        .args(["copy", "--dest-tls-verify=false", "--preserve-digests"])
        .arg(format!("oci:{}:v1", src.display()))
        .arg(&dest));
    let out = e.root.join("out");
    run(skopeo()
        .args(["copy", "--src-tls-verify=false", "--preserve-digests"])
        .arg(&dest)
        .arg(format!("oci:{}:v1", out.display())));

    let want_ref = layout_ref(&src, "v1");
    let got_ref = layout_ref(&out, "v1");
    assert_eq!(
        want_ref["digest"], got_ref["digest"],
        "manifest digest changed"
    );
    let mut want = BTreeMap::new();
    reachable(
        &layout_blobs(&src),
        want_ref["digest"].as_str().unwrap(),
        &mut want,
    );
    let mut got = BTreeMap::new();
    reachable(
        &layout_blobs(&out),
        got_ref["digest"].as_str().unwrap(),
        &mut got,
    );
    assert_eq!(
        want.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>()
    );
    assert!(want == got, "blob bytes differ");
    // The registry serves the exact manifest bytes.
    let (status, body, ct) = get(&format!("{}/v2/e2e/umoci/manifests/v1", e.daemon.base));
    assert_eq!(status, 200);
    assert_eq!(sha256(&body), want_ref["digest"].as_str().unwrap());
    assert_eq!(ct, "application/vnd.oci.image.manifest.v1+json");
}

#[test]
fn multi_arch_index_copy_all() {
    let e = env();
    let src = e.root.join("multi");
    umoci_image(&src, "amd64", "amd64", &[("arch", b"amd64\n".to_vec())]);
    umoci_image(&src, "arm64", "arm64", &[("arch", b"arm64\n".to_vec())]);
    // Compose an image index over the two manifests and tag it in the layout.
    let children: Vec<serde_json::Value> = ["amd64", "arm64"]
        .iter()
        .map(|a| {
            let r = layout_ref(&src, a);
            serde_json::json!({"mediaType": r["mediaType"], "digest": r["digest"], "size": r["size"],
                               "platform": {"architecture": a, "os": "linux"}})
        })
        .collect();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": children
    }))
    .unwrap();
    let index_digest = sha256(&index);
    std::fs::write(
        src.join("blobs/sha256")
            .join(index_digest.trim_start_matches("sha256:")),
        &index,
    )
    .unwrap();
    let mut layout_index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("index.json")).unwrap()).unwrap();
    layout_index["manifests"].as_array_mut().unwrap().push(serde_json::json!({
        "mediaType": "application/vnd.oci.image.index.v1+json", "digest": index_digest, "size": index.len(),
        "annotations": {"org.opencontainers.image.ref.name": "multi"}
    }));
    std::fs::write(
        src.join("index.json"),
        serde_json::to_vec(&layout_index).unwrap(),
    )
    .unwrap();

    let dest = format!("docker://{}/e2e/multi:v1", e.daemon.host);
    run(skopeo()
        .args([
            "copy",
            "--all",
            "--dest-tls-verify=false",
            "--preserve-digests",
        ])
        .arg(format!("oci:{}:multi", src.display()))
        .arg(&dest));
    let (status, body, ct) = get(&format!("{}/v2/e2e/multi/manifests/v1", e.daemon.base));
    assert_eq!(status, 200);
    assert_eq!(body, index, "index bytes differ");
    assert_eq!(ct, "application/vnd.oci.image.index.v1+json");
    let out = e.root.join("multi-out");
    run(skopeo()
        .args([
            "copy",
            "--all",
            "--src-tls-verify=false",
            "--preserve-digests",
        ])
        .arg(&dest)
        .arg(format!("oci:{}:multi", out.display())));
    let mut want = BTreeMap::new();
    reachable(&layout_blobs(&src), &index_digest, &mut want);
    let mut got = BTreeMap::new();
    reachable(
        &layout_blobs(&out),
        layout_ref(&out, "multi")["digest"].as_str().unwrap(),
        &mut got,
    );
    assert_eq!(
        want.len(),
        1 + 2 * 3,
        "index + 2 x (manifest, config, layer)"
    );
    assert!(want == got, "multi-arch blobs differ");
}

#[test]
fn docker_v2s2_format_and_deletes() {
    let e = env();
    let src = e.root.join("v2s2");
    umoci_image(&src, "v1", "amd64", &[("f", b"docker format\n".to_vec())]);
    let dest = format!("docker://{}/e2e/docker:v1", e.daemon.host);
    run(skopeo()
        .args(["copy", "--format", "v2s2", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:v1", src.display()))
        .arg(&dest));
    let raw = run(skopeo()
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(&dest));
    let (status, body, ct) = get(&format!("{}/v2/e2e/docker/manifests/v1", e.daemon.base));
    assert_eq!(status, 200);
    assert_eq!(ct, "application/vnd.docker.distribution.manifest.v2+json");
    assert_eq!(
        raw.as_bytes(),
        &body[..],
        "skopeo saw other bytes than served"
    );
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        v["config"]["mediaType"],
        "application/vnd.docker.container.image.v1+json"
    );
    // Pull into a dir: every blob verifies against the manifest.
    let out = e.root.join("v2s2-out");
    run(skopeo()
        .args(["copy", "--src-tls-verify=false"])
        .arg(&dest)
        .arg(format!("dir:{}", out.display())));
    for l in v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .chain(std::iter::once(&v["config"]))
    {
        let d = l["digest"].as_str().unwrap();
        let bytes = std::fs::read(out.join(d.trim_start_matches("sha256:"))).unwrap();
        assert_eq!(sha256(&bytes), d);
    }
    // Delete by tag (skopeo resolves the tag and deletes the manifest).
    run(skopeo().args(["delete", "--tls-verify=false"]).arg(&dest));
    assert_eq!(
        get(&format!("{}/v2/e2e/docker/manifests/v1", e.daemon.base)).0,
        404
    );
    // Push again under another tag and delete by digest: tag and manifest go.
    let dest2 = format!("docker://{}/e2e/docker:v2", e.daemon.host);
    run(skopeo()
        .args(["copy", "--format", "v2s2", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:v1", src.display()))
        .arg(&dest2));
    let digest = sha256(&get(&format!("{}/v2/e2e/docker/manifests/v2", e.daemon.base)).1);
    run(skopeo()
        .args(["delete", "--tls-verify=false"])
        .arg(format!("docker://{}/e2e/docker@{digest}", e.daemon.host)));
    assert_eq!(
        get(&format!(
            "{}/v2/e2e/docker/manifests/{digest}",
            e.daemon.base
        ))
        .0,
        404
    );
    assert_eq!(
        get(&format!("{}/v2/e2e/docker/manifests/v2", e.daemon.base)).0,
        404
    );
    // Blobs remain for garbage collection to decide; layers still pull.
    let cfg = v["config"]["digest"].as_str().unwrap();
    assert_eq!(
        get(&format!("{}/v2/e2e/docker/blobs/{cfg}", e.daemon.base)).0,
        200
    );
}
