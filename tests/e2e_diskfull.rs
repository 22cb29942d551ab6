#![allow(clippy::unwrap_used)]
//! Disk full: the data dir on a small file system of its own (a loop-mounted ext4 image the
//! test makes). Pushes are refused with 507 and `Retry-After` once free space falls under the
//! reserve, nothing stored is damaged, the index keeps working (tags, manifests, a GC run), and
//! pushes succeed again once space is freed. Needs root (mount); CI runs as root.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::image::{image, push_image, put_manifest};
use common::sha256;
use common::Daemon;
use reqwest::StatusCode;

/// A small ext4 file system mounted for the test's lifetime.
struct SmallFs {
    mount: PathBuf,
}

impl SmallFs {
    fn new(dir: &Path, mib: u64) -> SmallFs {
        let image = dir.join("fs.img");
        let mount = dir.join("mnt");
        std::fs::create_dir_all(&mount).unwrap();
        let f = std::fs::File::create(&image).unwrap();
        f.set_len(mib << 20).unwrap();
        drop(f);
        common::run(
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-m", "0"])
                .arg(&image),
        );
        common::run(
            Command::new("mount")
                .args(["-o", "loop"])
                .arg(&image)
                .arg(&mount),
        );
        SmallFs { mount }
    }

    fn available(&self) -> u64 {
        let out = common::run(
            Command::new("df")
                .args(["--output=avail", "-B1"])
                .arg(&self.mount),
        );
        out.lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .expect("df output")
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
    }
}

fn data(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

async fn push_monolithic(
    c: &reqwest::Client,
    d: &Daemon,
    repo: &str,
    blob: &[u8],
) -> reqwest::Response {
    let post = c
        .post(d.url(&format!("/v2/{repo}/blobs/uploads/")))
        .send()
        .await
        .unwrap();
    if post.status() != StatusCode::ACCEPTED {
        return post;
    }
    let loc = post.headers()["location"].to_str().unwrap().to_string();
    let url = if loc.starts_with("http") {
        loc
    } else {
        d.url(&loc)
    };
    let sep = if url.contains('?') { '&' } else { '?' };
    c.put(format!("{url}{sep}digest={}", sha256(blob)))
        .body(blob.to_vec())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_full_disk_refuses_pushes_clearly_and_recovers_when_space_is_freed() {
    let dir = tempfile::tempdir().unwrap();
    let fs = SmallFs::new(dir.path(), 320);
    let data_dir = fs.mount.join("data");
    let d = Daemon::start_with(&data_dir, &["--storage-min-free-space", "16M"]);
    let c = reqwest::Client::new();

    // Something stored before the disk fills: an image by tag.
    let layer = data(3 << 20, 1);
    let img = image(vec![layer.clone()]);
    push_image(&c, &d.base, "full/app", "v1", &img).await;

    // Something else fills the file system to just above the reserve.
    let filler = fs.mount.join("filler");
    let fill = fs.available().saturating_sub(20 << 20);
    let f = std::fs::File::create(&filler).unwrap();
    f.set_len(0).unwrap();
    {
        use std::io::Write;
        let mut w = std::io::BufWriter::new(f);
        let chunk = vec![7u8; 1 << 20];
        for _ in 0..(fill >> 20) {
            w.write_all(&chunk).unwrap();
        }
        w.into_inner().unwrap().sync_all().unwrap();
    }
    // Pushes go on until the reserve is reached, then are refused clearly.
    let mut refused = None;
    for i in 0..20u8 {
        let r = push_monolithic(&c, &d, "full/app", &data(2 << 20, 10 + i)).await;
        if r.status() == StatusCode::CREATED {
            continue;
        }
        refused = Some(r);
        break;
    }
    let r = refused.expect("pushes were never refused although the disk filled");
    assert_eq!(r.status(), StatusCode::INSUFFICIENT_STORAGE);
    assert!(r.headers().contains_key("retry-after"));
    let body = r.text().await.unwrap();
    assert!(body.contains("storage full"), "{body}");
    assert!(
        !body.contains(&*fs.mount.to_string_lossy()),
        "a path leaked: {body}"
    );

    // The index keeps working: a manifest of stored blobs can be tagged, tags listed, a GC
    // run completes, and what was stored before pulls byte-identical.
    put_manifest(&c, &d.base, "full/app", "v2", &img).await;
    let tags: serde_json::Value = c
        .get(d.url("/v2/full/app/tags/list"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tags["tags"], serde_json::json!(["v1", "v2"]));
    let got = c
        .get(d.url(&format!("/v2/full/app/blobs/{}", sha256(&layer))))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert!(got.bytes().await.unwrap().as_ref() == layer.as_slice());
    common::run(
        Command::new(env!("CARGO_BIN_EXE_stowage")).args(["gc", "run", "--server", &d.admin]),
    );

    // Space freed: pushes succeed again.
    std::fs::remove_file(&filler).unwrap();
    let blob = data(2 << 20, 99);
    let r = push_monolithic(&c, &d, "full/app", &blob).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let got = c
        .get(d.url(&format!("/v2/full/app/blobs/{}", sha256(&blob))))
        .send()
        .await
        .unwrap();
    assert!(got.bytes().await.unwrap().as_ref() == blob.as_slice());
    drop(d);
}
