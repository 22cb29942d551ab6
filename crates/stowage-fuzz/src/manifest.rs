//! Manifest parsing and the reference walk the store relies on.

use serde_json::{json, Map, Value};
use stowage_core::media::{self, base_media_type, is_manifest_media_type};
use stowage_core::{parse_manifest, Descriptor, ManifestKind, ParsedManifest};

/// Fuzz target: `parse_manifest(content_type, body)` and, for an accepted manifest, the
/// reference walk (`blob_references`, `manifest_references`, `effective_artifact_type`).
///
/// Input: a JSON body, or (when the input does not start with `{`) a first line holding the
/// request's Content-Type and the body after it.
///
/// * The media type is one of the four supported ones, agrees with a manifest Content-Type
///   and with the body's `mediaType`; the kind follows from it.
/// * Images have a config and no children, indexes children and no config or layers;
///   Docker types carry no subject, artifact type or annotations; the counts match the body.
/// * `blob_references` is the config and the layers that are not foreign;
///   `manifest_references` the children; the effective artifact type falls back to the
///   config's media type.
/// * The manifest re-serialized from its parsed parts parses to the same value.
pub fn manifest(data: &[u8]) {
    let (content_type, body) = split(data);
    let content_type = content_type.as_deref();
    let Ok(m) = parse_manifest(content_type, body) else {
        return;
    };
    let ctx = format!(
        "content type {content_type:?}, body {:?}",
        crate::text(body)
    );

    assert!(
        is_manifest_media_type(&m.media_type),
        "{ctx}: {}",
        m.media_type
    );
    assert_eq!(base_media_type(&m.media_type), m.media_type, "{ctx}");
    if let Some(h) = content_type.map(base_media_type) {
        if is_manifest_media_type(h) {
            assert_eq!(m.media_type, h, "{ctx}: Content-Type ignored");
        }
    }
    let v: Value = serde_json::from_slice(body).expect("an accepted manifest is JSON");
    if let Some(b) = v.get("mediaType").and_then(Value::as_str) {
        assert_eq!(
            m.media_type,
            base_media_type(b),
            "{ctx}: body mediaType ignored"
        );
    }
    assert_eq!(v["schemaVersion"].as_u64(), Some(2), "{ctx}");

    let count = |key: &str| v.get(key).and_then(Value::as_array).map(Vec::len);
    let is_index = matches!(
        m.media_type.as_str(),
        media::OCI_INDEX | media::DOCKER_MANIFEST_LIST
    );
    match m.kind {
        ManifestKind::Index => {
            assert!(is_index, "{ctx}");
            assert!(m.config.is_none() && m.layers.is_empty(), "{ctx}");
            assert_eq!(count("manifests"), Some(m.manifests.len()), "{ctx}");
        }
        ManifestKind::Image => {
            assert!(!is_index, "{ctx}");
            assert!(m.config.is_some() && m.manifests.is_empty(), "{ctx}");
            assert_eq!(count("layers"), Some(m.layers.len()), "{ctx}");
        }
    }
    let is_oci = matches!(
        m.media_type.as_str(),
        media::OCI_MANIFEST | media::OCI_INDEX
    );
    let present = |key: &str| v.get(key).is_some_and(|x| !x.is_null());
    if is_oci {
        assert_eq!(m.subject.is_some(), present("subject"), "{ctx}");
        assert_eq!(
            m.artifact_type.as_deref(),
            v.get("artifactType").and_then(Value::as_str),
            "{ctx}"
        );
        let annotations = v.get("annotations").and_then(Value::as_object);
        assert_eq!(
            m.annotations.len(),
            annotations.map_or(0, Map::len),
            "{ctx}"
        );
    } else {
        assert!(m.subject.is_none() && m.artifact_type.is_none(), "{ctx}");
        assert!(m.annotations.is_empty(), "{ctx}");
    }

    // The reference walk.
    let blobs: Vec<&Descriptor> = m.blob_references();
    let want: Vec<&Descriptor> = m
        .config
        .iter()
        .chain(m.layers.iter().filter(|l| {
            !(media::is_nondistributable_layer(&l.media_type)
                && l.urls.as_ref().is_some_and(|u| !u.is_empty()))
        }))
        .collect();
    assert_eq!(blobs, want, "{ctx}: blob references");
    assert_eq!(
        m.manifest_references(),
        m.manifests.iter().collect::<Vec<_>>()
    );
    assert_eq!(
        m.effective_artifact_type(),
        m.artifact_type
            .as_deref()
            .or(m.config.as_ref().map(|c| c.media_type.as_str())),
        "{ctx}"
    );
    for d in m
        .config
        .iter()
        .chain(&m.layers)
        .chain(&m.manifests)
        .chain(&m.subject)
    {
        assert_eq!(
            stowage_core::Digest::parse(d.digest.as_str()).as_ref(),
            Ok(&d.digest)
        );
    }

    // Round trip through the parsed parts.
    let again = serde_json::to_vec(&rebuild(&m)).expect("a manifest serializes");
    let reparsed = parse_manifest(None, &again)
        .unwrap_or_else(|e| panic!("{ctx}: the re-serialized manifest is refused: {e}"));
    assert_eq!(without_platforms(&reparsed), without_platforms(&m), "{ctx}");
    let labelled = parse_manifest(Some(&m.media_type), &again)
        .unwrap_or_else(|e| panic!("{ctx}: refused with its own Content-Type: {e}"));
    assert_eq!(labelled, reparsed, "{ctx}");
}

/// Content-Type line and body.
fn split(data: &[u8]) -> (Option<String>, &[u8]) {
    if data.first() == Some(&b'{') {
        return (None, data);
    }
    match data.iter().position(|b| *b == b'\n') {
        Some(nl) => (
            Some(String::from_utf8_lossy(&data[..nl]).into_owned()),
            &data[nl + 1..],
        ),
        None => (None, data),
    }
}

fn descriptor(d: &Descriptor) -> Value {
    serde_json::to_value(d).expect("a descriptor serializes")
}

fn rebuild(m: &ParsedManifest) -> Value {
    let mut out = json!({ "schemaVersion": 2, "mediaType": m.media_type });
    let obj = out.as_object_mut().expect("an object");
    match m.kind {
        ManifestKind::Image => {
            if let Some(c) = &m.config {
                obj.insert("config".into(), descriptor(c));
            }
            let layers = m.layers.iter().map(descriptor).collect();
            obj.insert("layers".into(), Value::Array(layers));
        }
        ManifestKind::Index => {
            let children = m.manifests.iter().map(descriptor).collect();
            obj.insert("manifests".into(), Value::Array(children));
        }
    }
    if let Some(s) = &m.subject {
        obj.insert("subject".into(), descriptor(s));
    }
    if let Some(a) = &m.artifact_type {
        obj.insert("artifactType".into(), Value::String(a.clone()));
    }
    if !m.annotations.is_empty() {
        let a = serde_json::to_value(&m.annotations).expect("annotations serialize");
        obj.insert("annotations".into(), a);
    }
    out
}

/// `platform` is opaque JSON kept as-is; serde_json's float parsing is not exact, so a
/// float inside it need not survive a round trip. Compare everything else.
fn without_platforms(m: &ParsedManifest) -> ParsedManifest {
    let mut m = m.clone();
    let strip = |d: &mut Descriptor| {
        if d.platform.is_some() {
            d.platform = Some(Value::Null);
        }
    };
    m.config.iter_mut().for_each(strip);
    m.layers.iter_mut().for_each(strip);
    m.manifests.iter_mut().for_each(strip);
    m.subject.iter_mut().for_each(strip);
    m
}
