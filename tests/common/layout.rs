//! OCI image layouts for end-to-end tests: images built with umoci, and their blobs read back.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use super::{run, sha256};

/// Builds `layout:tag` with umoci: one layer per entry of `layers` (file name -> contents).
pub fn umoci_image(layout: &Path, tag: &str, arch: &str, layers: &[(&str, Vec<u8>)]) {
    if !layout.join("index.json").exists() {
        run(Command::new("umoci").args(["init", "--layout"]).arg(layout));
    }
    let image = format!("{}:{tag}", layout.display());
    run(Command::new("umoci").args(["new", "--image", &image]));
    run(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--architecture",
        arch,
        "--os",
        "linux",
        "--config.cmd",
        "/bin/true",
    ]));
    for (i, (name, contents)) in layers.iter().enumerate() {
        let bundle = layout.with_extension(format!("bundle-{tag}-{i}"));
        run(Command::new("umoci")
            .args(["unpack", "--rootless", "--image", &image])
            .arg(&bundle));
        std::fs::write(bundle.join("rootfs").join(name), contents).unwrap();
        run(Command::new("umoci")
            .args(["repack", "--image", &image])
            .arg(&bundle));
        std::fs::remove_dir_all(&bundle).unwrap();
    }
}

/// All blobs of an OCI layout: digest -> bytes.
pub fn layout_blobs(layout: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        let bytes = std::fs::read(e.path()).unwrap();
        let name = format!("sha256:{}", e.file_name().to_string_lossy());
        assert_eq!(sha256(&bytes), name, "layout blob does not match its name");
        out.insert(name, bytes);
    }
    out
}
