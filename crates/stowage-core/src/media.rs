//! Well-known OCI and Docker media types.

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list (multi-platform), schema 2.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image manifest, schema 1 (unsupported).
pub const DOCKER_MANIFEST_V1: &str = "application/vnd.docker.distribution.manifest.v1+json";
/// Signed Docker image manifest, schema 1 (unsupported).
pub const DOCKER_MANIFEST_V1_SIGNED: &str =
    "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// OCI empty descriptor content (`{}`), used as config of artifact manifests.
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
/// OCI image configuration.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker image configuration.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// OCI uncompressed layer tarball.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI gzip-compressed layer tarball.
pub const OCI_LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI zstd-compressed layer tarball.
pub const OCI_LAYER_TAR_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// OCI non-distributable uncompressed layer (deprecated in the spec).
pub const OCI_LAYER_NONDISTRIBUTABLE_TAR: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar";
/// OCI non-distributable gzip layer (deprecated in the spec).
pub const OCI_LAYER_NONDISTRIBUTABLE_TAR_GZIP: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
/// OCI non-distributable zstd layer (deprecated in the spec).
pub const OCI_LAYER_NONDISTRIBUTABLE_TAR_ZSTD: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd";
/// Docker gzip-compressed layer tarball.
pub const DOCKER_LAYER_TAR_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Docker foreign (non-distributable) layer, e.g. Windows base layers.
pub const DOCKER_FOREIGN_LAYER: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

/// Whether `media_type` (parameters allowed) is one of the four supported
/// manifest types: OCI manifest, OCI index, Docker v2 manifest, Docker
/// manifest list.
pub fn is_manifest_media_type(media_type: &str) -> bool {
    matches!(
        base_media_type(media_type),
        OCI_MANIFEST | OCI_INDEX | DOCKER_MANIFEST_V2 | DOCKER_MANIFEST_LIST
    )
}

/// Whether `media_type` is a Docker schema 1 manifest type (which we reject).
pub fn is_schema1_media_type(media_type: &str) -> bool {
    matches!(
        base_media_type(media_type),
        DOCKER_MANIFEST_V1 | DOCKER_MANIFEST_V1_SIGNED
    )
}

/// Whether `media_type` is a non-distributable layer type whose bytes may
/// live outside the registry.
pub fn is_nondistributable_layer(media_type: &str) -> bool {
    matches!(
        base_media_type(media_type),
        DOCKER_FOREIGN_LAYER
            | OCI_LAYER_NONDISTRIBUTABLE_TAR
            | OCI_LAYER_NONDISTRIBUTABLE_TAR_GZIP
            | OCI_LAYER_NONDISTRIBUTABLE_TAR_ZSTD
    )
}

/// Strip parameters (anything from the first `;`) and surrounding whitespace,
/// e.g. `"application/json; charset=utf-8"` -> `"application/json"`.
pub fn base_media_type(media_type: &str) -> &str {
    media_type.split(';').next().unwrap_or(media_type).trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_type_strips_parameters() {
        assert_eq!(
            base_media_type("application/json; charset=utf-8"),
            "application/json"
        );
        assert_eq!(base_media_type("  application/json  "), "application/json");
        assert_eq!(base_media_type(""), "");
        assert_eq!(base_media_type(";x=y"), "");
    }

    #[test]
    fn manifest_types() {
        for t in [
            OCI_MANIFEST,
            OCI_INDEX,
            DOCKER_MANIFEST_V2,
            DOCKER_MANIFEST_LIST,
        ] {
            assert!(is_manifest_media_type(t));
        }
        assert!(is_manifest_media_type(&format!(
            " {OCI_MANIFEST}; charset=utf-8"
        )));
        for t in [
            DOCKER_MANIFEST_V1,
            DOCKER_MANIFEST_V1_SIGNED,
            OCI_CONFIG,
            "application/json",
            "",
        ] {
            assert!(!is_manifest_media_type(t));
        }
        assert!(is_schema1_media_type(DOCKER_MANIFEST_V1_SIGNED));
        assert!(!is_schema1_media_type(OCI_MANIFEST));
        assert!(is_nondistributable_layer(DOCKER_FOREIGN_LAYER));
        assert!(is_nondistributable_layer(
            OCI_LAYER_NONDISTRIBUTABLE_TAR_GZIP
        ));
        assert!(!is_nondistributable_layer(OCI_LAYER_TAR_GZIP));
    }
}
