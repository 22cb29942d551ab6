//! Manifest parsing and validation.
//!
//! [`parse_manifest`] accepts the four supported manifest media types (OCI
//! image manifest, OCI image index, Docker v2 schema 2 manifest and Docker
//! manifest list), validates the structure required to store the manifest
//! safely (schema version, descriptors, digests) and extracts the references
//! a registry cares about: blobs (config and layers), child manifests,
//! `subject` and artifact type for the referrers API.
//!
//! Parsing goes through [`serde_json::Value`] rather than a derived struct so
//! that every error can name the offending field path (e.g.
//! `layers[2].digest`). Unknown fields are ignored.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::digest::{truncate_for_error, Digest};
use crate::media;

/// Maximum accepted manifest size in bytes (4 MiB).
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// An OCI content descriptor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    pub media_type: String,
    /// Digest of the referenced content.
    pub digest: Digest,
    /// Size in bytes of the referenced content.
    pub size: u64,
    /// Artifact type of the referenced manifest (referrers API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// Arbitrary annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Alternate download locations (used by non-distributable layers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    /// Platform of an index entry, kept as raw JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Value>,
}

impl Descriptor {
    /// Whether this is a non-distributable ("foreign") layer that carries
    /// `urls`: its bytes are fetched from elsewhere and need not exist in the
    /// registry.
    pub fn is_foreign(&self) -> bool {
        media::is_nondistributable_layer(&self.media_type)
            && self.urls.as_ref().is_some_and(|u| !u.is_empty())
    }
}

/// Broad kind of a manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ManifestKind {
    /// An image manifest (config + layers); includes artifact manifests.
    Image,
    /// An index / manifest list (references child manifests).
    Index,
}

/// The validated, registry-relevant content of a manifest.
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedManifest {
    /// The effective manifest media type.
    pub media_type: String,
    /// Image or index.
    pub kind: ManifestKind,
    /// Config descriptor (image manifests only).
    pub config: Option<Descriptor>,
    /// Layer descriptors (image manifests only).
    pub layers: Vec<Descriptor>,
    /// Child manifests (indexes only).
    pub manifests: Vec<Descriptor>,
    /// The manifest this one refers to (OCI only).
    pub subject: Option<Descriptor>,
    /// Top-level `artifactType` (OCI only).
    pub artifact_type: Option<String>,
    /// Top-level annotations (OCI only).
    pub annotations: BTreeMap<String, String>,
}

impl ParsedManifest {
    /// The artifact type reported by the referrers API: the top-level
    /// `artifactType` if set, otherwise (for image manifests) the config media
    /// type.
    pub fn effective_artifact_type(&self) -> Option<&str> {
        self.artifact_type
            .as_deref()
            .or_else(|| self.config.as_ref().map(|c| c.media_type.as_str()))
    }

    /// Blobs that must exist in the registry: config and layers, excluding
    /// foreign layers.
    pub fn blob_references(&self) -> Vec<&Descriptor> {
        self.config
            .iter()
            .chain(self.layers.iter().filter(|l| !l.is_foreign()))
            .collect()
    }

    /// Child manifests referenced by an index.
    pub fn manifest_references(&self) -> Vec<&Descriptor> {
        self.manifests.iter().collect()
    }
}

/// Why a manifest was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// The manifest exceeds [`MAX_MANIFEST_BYTES`].
    #[error("manifest is {size} bytes, larger than the maximum of {max}")]
    TooLarge {
        /// Actual size.
        size: usize,
        /// Maximum allowed size.
        max: usize,
    },
    /// The body is not valid JSON (or not a JSON object).
    #[error("manifest is not valid JSON: {0}")]
    InvalidJson(String),
    /// The JSON is structurally invalid; the message names the field.
    #[error("invalid manifest: {0}")]
    Invalid(String),
    /// The manifest media type is not supported (e.g. Docker schema 1).
    #[error("unsupported manifest media type: {0}")]
    UnsupportedMediaType(String),
    /// The Content-Type header and the body `mediaType` disagree.
    #[error("manifest media type mismatch: header {header:?}, body {body:?}")]
    MediaTypeMismatch {
        /// Media type from the Content-Type header.
        header: String,
        /// Media type from the body.
        body: String,
    },
}

fn invalid(path: &str, why: impl std::fmt::Display) -> ManifestError {
    ManifestError::Invalid(format!("{path}: {why}"))
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Look up an optional field; JSON `null` counts as absent.
fn field<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn opt_string(
    obj: &Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<String>, ManifestError> {
    match field(obj, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(invalid(
            &join(path, key),
            format_args!("expected string, got {}", json_type(v)),
        )),
    }
}

fn opt_annotations(
    obj: &Map<String, Value>,
    path: &str,
) -> Result<Option<BTreeMap<String, String>>, ManifestError> {
    let p = join(path, "annotations");
    let Some(v) = field(obj, "annotations") else {
        return Ok(None);
    };
    let Value::Object(map) = v else {
        return Err(invalid(
            &p,
            format_args!("expected object, got {}", json_type(v)),
        ));
    };
    let mut out = BTreeMap::new();
    for (k, v) in map {
        let Value::String(s) = v else {
            return Err(invalid(
                &format!("{p}[{k:?}]"),
                format_args!("expected string, got {}", json_type(v)),
            ));
        };
        out.insert(k.clone(), s.clone());
    }
    Ok(Some(out))
}

/// Join a field onto a path; the root path is empty.
fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Validate and convert one descriptor found at `path`.
fn parse_descriptor(v: &Value, path: &str) -> Result<Descriptor, ManifestError> {
    let Value::Object(obj) = v else {
        return Err(invalid(
            path,
            format_args!("expected descriptor object, got {}", json_type(v)),
        ));
    };
    let media_type = opt_string(obj, "mediaType", path)?
        .ok_or_else(|| invalid(&join(path, "mediaType"), "missing"))?;
    let digest = match field(obj, "digest") {
        None => return Err(invalid(&join(path, "digest"), "missing")),
        Some(Value::String(s)) => {
            Digest::parse(s).map_err(|e| invalid(&join(path, "digest"), e))?
        }
        Some(v) => {
            return Err(invalid(
                &join(path, "digest"),
                format_args!("expected string, got {}", json_type(v)),
            ))
        }
    };
    let size = match field(obj, "size") {
        None => return Err(invalid(&join(path, "size"), "missing")),
        // as_u64 is None for negative numbers and non-integers (e.g. 1.5).
        Some(v) => v.as_u64().ok_or_else(|| {
            invalid(
                &join(path, "size"),
                format_args!(
                    "expected non-negative integer, got {}",
                    truncate_for_error(&v.to_string())
                ),
            )
        })?,
    };
    let artifact_type = opt_string(obj, "artifactType", path)?;
    let annotations = opt_annotations(obj, path)?;
    let urls = match field(obj, "urls") {
        None => None,
        Some(Value::Array(items)) => {
            let mut urls = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let Value::String(s) = item else {
                    return Err(invalid(
                        &format!("{}[{i}]", join(path, "urls")),
                        format_args!("expected string, got {}", json_type(item)),
                    ));
                };
                urls.push(s.clone());
            }
            Some(urls)
        }
        Some(v) => {
            return Err(invalid(
                &join(path, "urls"),
                format_args!("expected array, got {}", json_type(v)),
            ))
        }
    };
    let platform = match field(obj, "platform") {
        None => None,
        Some(p @ Value::Object(_)) => Some(p.clone()),
        Some(v) => {
            return Err(invalid(
                &join(path, "platform"),
                format_args!("expected object, got {}", json_type(v)),
            ))
        }
    };
    Ok(Descriptor {
        media_type,
        digest,
        size,
        artifact_type,
        annotations,
        urls,
        platform,
    })
}

/// Parse a required array of descriptors at top-level `key`.
fn descriptor_array(obj: &Map<String, Value>, key: &str) -> Result<Vec<Descriptor>, ManifestError> {
    match field(obj, key) {
        None => Err(invalid(key, "missing")),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| parse_descriptor(item, &format!("{key}[{i}]")))
            .collect(),
        Some(v) => Err(invalid(
            key,
            format_args!("expected array, got {}", json_type(v)),
        )),
    }
}

/// Work out the effective manifest media type from the body's `mediaType`,
/// the Content-Type header and, failing both, the body's shape.
fn effective_media_type(
    content_type: Option<&str>,
    obj: &Map<String, Value>,
) -> Result<String, ManifestError> {
    let body = opt_string(obj, "mediaType", "")?;
    // Only a header naming a manifest type (supported or schema 1) carries
    // information; generic types such as application/json are ignored.
    let header = content_type
        .map(media::base_media_type)
        .filter(|h| media::is_manifest_media_type(h) || media::is_schema1_media_type(h));

    let chosen = match (header, body) {
        (Some(h), Some(b)) => {
            // An unsupported body type is reported as such rather than as a
            // mismatch; the final check below produces that error.
            if media::is_manifest_media_type(&b) && media::base_media_type(&b) != h {
                return Err(ManifestError::MediaTypeMismatch {
                    header: h.to_owned(),
                    body: b,
                });
            }
            b
        }
        (None, Some(b)) => b,
        (Some(h), None) => h.to_owned(),
        (None, None) => {
            if field(obj, "manifests").is_some_and(Value::is_array) {
                media::OCI_INDEX.to_owned()
            } else if field(obj, "config").is_some() {
                media::OCI_MANIFEST.to_owned()
            } else if obj.contains_key("fsLayers")
                || obj.get("schemaVersion") == Some(&Value::from(1))
            {
                // Unlabelled Docker schema 1 manifest.
                return Err(ManifestError::UnsupportedMediaType(
                    media::DOCKER_MANIFEST_V1.to_owned(),
                ));
            } else {
                return Err(invalid(
                    "mediaType",
                    "missing, no manifest Content-Type given, and the body has neither `manifests` nor `config`",
                ));
            }
        }
    };
    let base = media::base_media_type(&chosen);
    if !media::is_manifest_media_type(base) {
        return Err(ManifestError::UnsupportedMediaType(truncate_for_error(
            &chosen,
        )));
    }
    Ok(base.to_owned())
}

/// Parse and validate a manifest.
///
/// `content_type` is the request's Content-Type header, if any. See the
/// module docs for what is checked.
pub fn parse_manifest(
    content_type: Option<&str>,
    bytes: &[u8],
) -> Result<ParsedManifest, ManifestError> {
    if bytes.len() > MAX_MANIFEST_BYTES {
        return Err(ManifestError::TooLarge {
            size: bytes.len(),
            max: MAX_MANIFEST_BYTES,
        });
    }
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| ManifestError::InvalidJson(e.to_string()))?;
    let Value::Object(obj) = value else {
        return Err(ManifestError::InvalidJson(format!(
            "expected a JSON object, got {}",
            json_type(&value)
        )));
    };

    let media_type = effective_media_type(content_type, &obj)?;

    match field(&obj, "schemaVersion") {
        None => return Err(invalid("schemaVersion", "missing")),
        Some(v) if v.as_u64() == Some(2) => {}
        Some(v) => {
            return Err(invalid(
                "schemaVersion",
                format_args!("expected 2, got {}", truncate_for_error(&v.to_string())),
            ))
        }
    }

    let is_oci = matches!(media_type.as_str(), media::OCI_MANIFEST | media::OCI_INDEX);
    let kind = match media_type.as_str() {
        media::OCI_INDEX | media::DOCKER_MANIFEST_LIST => ManifestKind::Index,
        _ => ManifestKind::Image,
    };

    let (config, layers, manifests) = match kind {
        ManifestKind::Image => {
            let config = match obj.get("config") {
                None | Some(Value::Null) => return Err(invalid("config", "missing")),
                Some(v) => parse_descriptor(v, "config")?,
            };
            let layers = descriptor_array(&obj, "layers")?;
            (Some(config), layers, Vec::new())
        }
        ManifestKind::Index => (None, Vec::new(), descriptor_array(&obj, "manifests")?),
    };

    // Docker schema 2 has no subject/artifactType/annotations; ignore them
    // there rather than validating fields the format does not define.
    let (subject, artifact_type, annotations) = if is_oci {
        let subject = match field(&obj, "subject") {
            None => None,
            Some(v) => Some(parse_descriptor(v, "subject")?),
        };
        let artifact_type = opt_string(&obj, "artifactType", "")?;
        let annotations = opt_annotations(&obj, "")?.unwrap_or_default();
        (subject, artifact_type, annotations)
    } else {
        (None, None, BTreeMap::new())
    };

    Ok(ParsedManifest {
        media_type,
        kind,
        config,
        layers,
        manifests,
        subject,
        artifact_type,
        annotations,
    })
}

#[cfg(test)]
#[path = "manifest_tests.rs"]
mod tests;
