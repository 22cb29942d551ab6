//! Tests for manifest parsing. JSON bodies are written inline with
//! `serde_json::json!`; digests are derived from short labels so they are
//! valid and distinct.
#![allow(clippy::unwrap_used)]

use super::*;
use crate::media::*;
use serde_json::json;

fn d(label: &str) -> String {
    Digest::sha256(label.as_bytes()).to_string()
}

fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

fn oci_image() -> Value {
    json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": d("config"), "size": 7023},
        "layers": [
            {"mediaType": OCI_LAYER_TAR_GZIP, "digest": d("l0"), "size": 32654},
            {"mediaType": OCI_LAYER_TAR_GZIP, "digest": d("l1"), "size": 16724},
        ],
    })
}

#[test]
fn oci_manifest_with_subject_artifact_type_annotations() {
    let mut v = oci_image();
    v["subject"] = json!({"mediaType": OCI_MANIFEST, "digest": d("subject"), "size": 1234});
    v["artifactType"] = json!("application/vnd.example.sbom");
    v["annotations"] = json!({"org.opencontainers.image.created": "2024-01-01T00:00:00Z"});
    v["someUnknownField"] = json!({"ignored": true});
    let m = parse_manifest(Some(OCI_MANIFEST), &bytes(&v)).unwrap();
    assert_eq!(m.media_type, OCI_MANIFEST);
    assert_eq!(m.kind, ManifestKind::Image);
    let subject = m.subject.as_ref().unwrap();
    assert_eq!(subject.digest.as_str(), d("subject"));
    assert_eq!(subject.size, 1234);
    assert_eq!(
        m.artifact_type.as_deref(),
        Some("application/vnd.example.sbom")
    );
    assert_eq!(
        m.effective_artifact_type(),
        Some("application/vnd.example.sbom")
    );
    assert_eq!(
        m.annotations
            .get("org.opencontainers.image.created")
            .map(String::as_str),
        Some("2024-01-01T00:00:00Z")
    );
    let blobs: Vec<String> = m
        .blob_references()
        .iter()
        .map(|d| d.digest.to_string())
        .collect();
    assert_eq!(blobs, vec![d("config"), d("l0"), d("l1")]);
    assert!(m.manifest_references().is_empty());
}

#[test]
fn plain_image_effective_artifact_type_is_config_type() {
    let m = parse_manifest(None, &bytes(&oci_image())).unwrap();
    assert_eq!(m.artifact_type, None);
    assert_eq!(m.effective_artifact_type(), Some(OCI_CONFIG));
    assert!(m.subject.is_none());
    assert!(m.annotations.is_empty());
}

#[test]
fn oci_index_with_platforms() {
    let v = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": d("amd64"), "size": 100,
             "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": OCI_MANIFEST, "digest": d("arm64"), "size": 200,
             "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"},
             "annotations": {"k": "v"}},
        ],
        "annotations": {"com.example.key": "value"},
    });
    let m = parse_manifest(
        Some("application/vnd.oci.image.index.v1+json; charset=utf-8"),
        &bytes(&v),
    )
    .unwrap();
    assert_eq!(m.kind, ManifestKind::Index);
    assert_eq!(m.media_type, OCI_INDEX);
    assert!(m.config.is_none());
    assert!(m.blob_references().is_empty());
    let kids = m.manifest_references();
    assert_eq!(kids.len(), 2);
    assert_eq!(kids[1].platform.as_ref().unwrap()["variant"], "v8");
    assert_eq!(kids[1].annotations.as_ref().unwrap()["k"], "v");
    assert_eq!(m.annotations["com.example.key"], "value");
    assert_eq!(m.effective_artifact_type(), None);
}

#[test]
fn docker_v2_schema2() {
    let v = json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST_V2,
        "config": {"mediaType": DOCKER_CONFIG, "digest": d("cfg"), "size": 1469},
        "layers": [
            {"mediaType": DOCKER_LAYER_TAR_GZIP, "digest": d("layer"), "size": 2_818_413},
        ],
        // Not part of Docker schema 2: ignored even though malformed.
        "subject": "not a descriptor",
        "artifactType": 42,
    });
    let m = parse_manifest(Some(DOCKER_MANIFEST_V2), &bytes(&v)).unwrap();
    assert_eq!(m.media_type, DOCKER_MANIFEST_V2);
    assert_eq!(m.kind, ManifestKind::Image);
    assert!(m.subject.is_none());
    assert!(m.artifact_type.is_none());
    assert_eq!(m.blob_references().len(), 2);
    assert_eq!(m.layers[0].size, 2_818_413);
}

#[test]
fn docker_config_media_type_required() {
    let v = json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST_V2,
        "config": {"digest": d("cfg"), "size": 1},
        "layers": [],
    });
    let err = parse_manifest(None, &bytes(&v)).unwrap_err();
    assert!(
        matches!(&err, ManifestError::Invalid(m) if m.contains("config.mediaType")),
        "{err}"
    );
}

#[test]
fn docker_manifest_list() {
    let v = json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST_LIST,
        "manifests": [
            {"mediaType": DOCKER_MANIFEST_V2, "digest": d("a"), "size": 7143,
             "platform": {"architecture": "ppc64le", "os": "linux"}},
        ],
    });
    let m = parse_manifest(None, &bytes(&v)).unwrap();
    assert_eq!(m.kind, ManifestKind::Index);
    assert_eq!(m.media_type, DOCKER_MANIFEST_LIST);
    assert_eq!(m.manifest_references()[0].digest.as_str(), d("a"));
}

#[test]
fn artifact_manifest_with_empty_config_and_no_layers() {
    let v = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.signature",
        "config": {"mediaType": OCI_EMPTY, "digest": Digest::sha256(b"{}").to_string(), "size": 2, "data": "e30="},
        "layers": [],
        "subject": {"mediaType": OCI_MANIFEST, "digest": d("target"), "size": 10},
    });
    let m = parse_manifest(Some(OCI_MANIFEST), &bytes(&v)).unwrap();
    assert_eq!(m.kind, ManifestKind::Image);
    assert_eq!(
        m.effective_artifact_type(),
        Some("application/vnd.example.signature")
    );
    assert_eq!(m.blob_references().len(), 1);
    assert_eq!(m.config.as_ref().unwrap().media_type, OCI_EMPTY);
}

#[test]
fn no_body_media_type_uses_header() {
    let mut v = oci_image();
    v.as_object_mut().unwrap().remove("mediaType");
    v["config"]["mediaType"] = json!(DOCKER_CONFIG);
    let m = parse_manifest(Some(DOCKER_MANIFEST_V2), &bytes(&v)).unwrap();
    assert_eq!(m.media_type, DOCKER_MANIFEST_V2);
    // A non-manifest header is ignored and detection applies.
    let m = parse_manifest(Some("application/json"), &bytes(&v)).unwrap();
    assert_eq!(m.media_type, OCI_MANIFEST);
}

#[test]
fn detection_without_media_type_or_header() {
    let mut v = oci_image();
    v.as_object_mut().unwrap().remove("mediaType");
    let m = parse_manifest(None, &bytes(&v)).unwrap();
    assert_eq!(m.media_type, OCI_MANIFEST);

    let idx = json!({"schemaVersion": 2, "manifests": []});
    let m = parse_manifest(Some("application/octet-stream"), &bytes(&idx)).unwrap();
    assert_eq!(m.media_type, OCI_INDEX);
    assert_eq!(m.kind, ManifestKind::Index);

    let neither = json!({"schemaVersion": 2, "layers": []});
    let err = parse_manifest(None, &bytes(&neither)).unwrap_err();
    assert!(
        matches!(&err, ManifestError::Invalid(m) if m.contains("mediaType")),
        "{err}"
    );
}

#[test]
fn header_body_mismatch() {
    let err = parse_manifest(Some(OCI_INDEX), &bytes(&oci_image())).unwrap_err();
    assert_eq!(
        err,
        ManifestError::MediaTypeMismatch {
            header: OCI_INDEX.to_owned(),
            body: OCI_MANIFEST.to_owned()
        }
    );
    // Non-manifest headers never cause a mismatch.
    for h in [
        "application/octet-stream",
        "application/json; charset=utf-8",
        "",
    ] {
        parse_manifest(Some(h), &bytes(&oci_image())).unwrap();
    }
}

#[test]
fn schema1_unsupported() {
    let s1 = json!({
        "schemaVersion": 1,
        "name": "library/hello",
        "tag": "latest",
        "fsLayers": [{"blobSum": d("x")}],
    });
    for ct in [
        Some(DOCKER_MANIFEST_V1_SIGNED),
        Some(DOCKER_MANIFEST_V1),
        None,
    ] {
        let err = parse_manifest(ct, &bytes(&s1)).unwrap_err();
        assert!(
            matches!(err, ManifestError::UnsupportedMediaType(_)),
            "{ct:?}: {err}"
        );
    }
    let mut labelled = s1.clone();
    labelled["mediaType"] = json!(DOCKER_MANIFEST_V1);
    let err = parse_manifest(None, &bytes(&labelled)).unwrap_err();
    assert_eq!(
        err,
        ManifestError::UnsupportedMediaType(DOCKER_MANIFEST_V1.to_owned())
    );
    let mut other = oci_image();
    other["mediaType"] = json!("application/vnd.example.whatever");
    let err = parse_manifest(Some(OCI_MANIFEST), &bytes(&other)).unwrap_err();
    assert!(
        matches!(err, ManifestError::UnsupportedMediaType(_)),
        "{err}"
    );
}

#[test]
fn schema_version_checked() {
    for (sv, needle) in [
        (json!(1), "expected 2, got 1"),
        (json!("2"), "expected 2"),
        (json!(2.5), "expected 2"),
    ] {
        let mut v = oci_image();
        v["schemaVersion"] = sv;
        let err = parse_manifest(None, &bytes(&v)).unwrap_err();
        assert!(
            matches!(&err, ManifestError::Invalid(m) if m.contains("schemaVersion") && m.contains(needle)),
            "{err}"
        );
    }
    let mut v = oci_image();
    v.as_object_mut().unwrap().remove("schemaVersion");
    let err = parse_manifest(None, &bytes(&v)).unwrap_err();
    assert!(
        matches!(&err, ManifestError::Invalid(m) if m.contains("schemaVersion: missing")),
        "{err}"
    );
}

#[test]
fn bad_digest_names_the_path() {
    let mut v = oci_image();
    v["layers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"mediaType": OCI_LAYER_TAR_GZIP, "digest": d("l2"), "size": 1}));
    v["layers"][1]["digest"] = json!("sha256:NOTHEX");
    let err = parse_manifest(None, &bytes(&v)).unwrap_err();
    match err {
        ManifestError::Invalid(m) => {
            assert!(m.starts_with("layers[1].digest:"), "{m}");
            assert!(m.contains("NOTHEX"), "{m}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn descriptor_field_errors() {
    let cases: Vec<(&str, Value, &str)> = vec![
        ("/config/size", json!(-1), "config.size"),
        ("/config/size", json!(1.5), "config.size"),
        ("/config/size", json!("12"), "config.size"),
        ("/config/digest", Value::Null, "config.digest: missing"),
        ("/layers/0/mediaType", json!(5), "layers[0].mediaType"),
        (
            "/layers/1",
            json!({"mediaType": "x", "digest": d("u"), "size": 1, "urls": ["ok", 3]}),
            "layers[1].urls[1]",
        ),
        (
            "/layers/0",
            json!({"mediaType": "x", "digest": d("a"), "size": 1, "annotations": {"a": 1}}),
            "layers[0].annotations",
        ),
        (
            "/layers/0",
            json!({"mediaType": "x", "digest": d("p"), "size": 1, "platform": "linux"}),
            "layers[0].platform",
        ),
        ("/layers/0", json!("str"), "layers[0]"),
        ("/layers", json!({}), "layers: expected array"),
        ("/config", Value::Null, "config: missing"),
        ("/annotations", json!([]), "annotations"),
        (
            "/subject",
            json!({"mediaType": OCI_MANIFEST, "size": 1}),
            "subject.digest",
        ),
    ];
    for (ptr, val, needle) in cases {
        let mut v = oci_image();
        match v.pointer_mut(ptr) {
            Some(slot) => *slot = val,
            None => v[&ptr[1..]] = val, // absent top-level field
        }
        let err = parse_manifest(None, &bytes(&v)).map(|_| ()).expect_err(ptr);
        assert!(
            matches!(&err, ManifestError::Invalid(m) if m.contains(needle)),
            "{ptr}: {err}"
        );
    }
    let mut v = oci_image();
    v.as_object_mut().unwrap().remove("layers");
    let err = parse_manifest(None, &bytes(&v)).unwrap_err();
    assert!(
        matches!(&err, ManifestError::Invalid(m) if m.contains("layers: missing")),
        "{err}"
    );
    let idx = json!({"schemaVersion": 2, "mediaType": OCI_INDEX});
    let err = parse_manifest(None, &bytes(&idx)).unwrap_err();
    assert!(
        matches!(&err, ManifestError::Invalid(m) if m.contains("manifests: missing")),
        "{err}"
    );
}

#[test]
fn too_large() {
    let big = vec![b' '; MAX_MANIFEST_BYTES + 1];
    assert_eq!(
        parse_manifest(None, &big).unwrap_err(),
        ManifestError::TooLarge {
            size: MAX_MANIFEST_BYTES + 1,
            max: MAX_MANIFEST_BYTES
        }
    );
    // Exactly at the limit is allowed (padding with whitespace keeps it JSON).
    let mut at_limit = bytes(&oci_image());
    at_limit.resize(MAX_MANIFEST_BYTES, b' ');
    parse_manifest(None, &at_limit).unwrap();
}

#[test]
fn not_json() {
    for body in [
        &b"not json"[..],
        b"",
        b"{\"schemaVersion\": 2",
        b"[1,2]",
        b"\"str\"",
        b"null",
    ] {
        let err = parse_manifest(Some(OCI_MANIFEST), body).unwrap_err();
        assert!(
            matches!(err, ManifestError::InvalidJson(_)),
            "{body:?}: {err}"
        );
    }
}

#[test]
fn foreign_layer_excluded_from_blob_references() {
    let v = json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST_V2,
        "config": {"mediaType": DOCKER_CONFIG, "digest": d("cfg"), "size": 1},
        "layers": [
            {"mediaType": DOCKER_FOREIGN_LAYER, "digest": d("win"), "size": 100,
             "urls": ["https://example.invalid/layer"]},
            {"mediaType": DOCKER_LAYER_TAR_GZIP, "digest": d("normal"), "size": 2},
            // Non-distributable type but no urls: must be in the registry.
            {"mediaType": OCI_LAYER_NONDISTRIBUTABLE_TAR_GZIP, "digest": d("nd"), "size": 3},
        ],
    });
    let m = parse_manifest(None, &bytes(&v)).unwrap();
    assert!(m.layers[0].is_foreign());
    assert!(!m.layers[1].is_foreign());
    assert!(!m.layers[2].is_foreign());
    let blobs: Vec<String> = m
        .blob_references()
        .iter()
        .map(|d| d.digest.to_string())
        .collect();
    assert_eq!(blobs, vec![d("cfg"), d("normal"), d("nd")]);
}

#[test]
fn descriptor_serde_round_trip() {
    let desc = Descriptor {
        media_type: OCI_MANIFEST.to_owned(),
        digest: Digest::sha256(b"x"),
        size: 3,
        artifact_type: None,
        annotations: None,
        urls: None,
        platform: Some(json!({"os": "linux"})),
    };
    let s = serde_json::to_string(&desc).unwrap();
    assert!(s.contains("\"mediaType\""));
    assert!(!s.contains("artifactType") && !s.contains("urls"));
    let back: Descriptor = serde_json::from_str(&s).unwrap();
    assert_eq!(back, desc);
    let parsed: Descriptor = serde_json::from_str(&format!(
        r#"{{"mediaType":"x","digest":"{}","size":1,"extra":true}}"#,
        d("y")
    ))
    .unwrap();
    assert_eq!(parsed.size, 1);
}
