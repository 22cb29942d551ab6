//! One error type for the HTTP API, rendered as the Distribution spec's JSON error body with its
//! code and status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use stowage_store::StoreError;

/// The spec's error codes (plus `UNKNOWN` for server faults).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// Blob unknown to registry.
    BlobUnknown,
    /// Blob upload invalid.
    BlobUploadInvalid,
    /// Blob upload unknown to registry.
    BlobUploadUnknown,
    /// Provided digest did not match uploaded content.
    DigestInvalid,
    /// Manifest references a manifest or blob unknown to registry.
    ManifestBlobUnknown,
    /// Manifest invalid.
    ManifestInvalid,
    /// Manifest unknown to registry.
    ManifestUnknown,
    /// Invalid repository name.
    NameInvalid,
    /// Repository name not known to registry.
    NameUnknown,
    /// Provided length did not match content length.
    SizeInvalid,
    /// The operation is unsupported.
    Unsupported,
    /// Requested access to the resource is denied.
    Denied,
    /// Range of an upload chunk or blob read is invalid.
    RangeInvalid,
    /// Authentication required.
    Unauthorized,
    /// A tag is malformed, or tags were given where they are not taken (the Docker registry's
    /// code, which the spec lets clients meet).
    TagInvalid,
    /// Too many requests: the client should slow down (`Retry-After`).
    TooManyRequests,
    /// A server fault.
    Unknown,
}

impl Code {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BlobUnknown => "BLOB_UNKNOWN",
            Code::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            Code::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            Code::DigestInvalid => "DIGEST_INVALID",
            Code::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            Code::ManifestInvalid => "MANIFEST_INVALID",
            Code::ManifestUnknown => "MANIFEST_UNKNOWN",
            Code::NameInvalid => "NAME_INVALID",
            Code::NameUnknown => "NAME_UNKNOWN",
            Code::SizeInvalid => "SIZE_INVALID",
            Code::Unsupported => "UNSUPPORTED",
            Code::Denied => "DENIED",
            Code::RangeInvalid => "RANGE_INVALID",
            Code::Unauthorized => "UNAUTHORIZED",
            Code::TagInvalid => "TAG_INVALID",
            Code::TooManyRequests => "TOOMANYREQUESTS",
            Code::Unknown => "UNKNOWN",
        }
    }
}

/// An API error: status, code, message, and optional JSON detail.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// OCI code.
    pub code: Code,
    /// Human-readable message.
    pub message: String,
    /// Extra headers (for example `Range` on 416 for uploads).
    pub headers: Vec<(&'static str, String)>,
    /// The reference logged with a server fault's details.
    pub reference: Option<String>,
}

impl ApiError {
    /// A new error.
    pub fn new(status: StatusCode, code: Code, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            headers: Vec::new(),
            reference: None,
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }

    /// A server fault. The client sees only what was being done and a reference to quote;
    /// the details (paths, bucket names, causes) go to the log under the same reference.
    pub fn internal(doing: &str) -> Self {
        let reference = uuid::Uuid::new_v4().simple().to_string();
        let reference = &reference[..12];
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            Code::Unknown,
            format!("internal error while {doing} (reference {reference})"),
        )
        .with_reference(reference)
    }

    fn with_reference(mut self, reference: &str) -> Self {
        self.reference = Some(reference.to_string());
        self
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        use StatusCode as S;
        let msg = e.to_string();
        match e {
            StoreError::BlobUnknown(_) => Self::new(S::NOT_FOUND, Code::BlobUnknown, msg),
            StoreError::BlobUploadUnknown(_) => {
                Self::new(S::NOT_FOUND, Code::BlobUploadUnknown, msg)
            }
            StoreError::BlobUploadInvalid(_) => {
                Self::new(S::BAD_REQUEST, Code::BlobUploadInvalid, msg)
            }
            StoreError::DigestInvalid(_) => Self::new(S::BAD_REQUEST, Code::DigestInvalid, msg),
            StoreError::ManifestBlobUnknown(_) => {
                Self::new(S::BAD_REQUEST, Code::ManifestBlobUnknown, msg)
            }
            StoreError::ManifestInvalid(_) => Self::new(S::BAD_REQUEST, Code::ManifestInvalid, msg),
            StoreError::ManifestUnknown(_) => Self::new(S::NOT_FOUND, Code::ManifestUnknown, msg),
            StoreError::NameInvalid(_) => Self::new(S::BAD_REQUEST, Code::NameInvalid, msg),
            StoreError::NameUnknown(_) => Self::new(S::NOT_FOUND, Code::NameUnknown, msg),
            StoreError::TagInvalid(_) => Self::new(S::BAD_REQUEST, Code::TagInvalid, msg),
            StoreError::SizeInvalid(_) => Self::new(S::BAD_REQUEST, Code::SizeInvalid, msg),
            // Both may cut a request body part-way: the rest is never read, so the connection
            // cannot carry another request and the client is told so.
            StoreError::TooLarge { .. } => Self::new(S::PAYLOAD_TOO_LARGE, Code::SizeInvalid, msg)
                .with_header("connection", "close".into()),
            StoreError::Unsupported(_) => {
                Self::new(S::UNSUPPORTED_MEDIA_TYPE, Code::Unsupported, msg)
            }
            StoreError::RangeInvalid { expected, .. } => {
                let range = if expected == 0 {
                    "0-0".to_string()
                } else {
                    format!("0-{}", expected - 1)
                };
                Self::new(S::RANGE_NOT_SATISFIABLE, Code::RangeInvalid, msg)
                    .with_header("range", range)
            }
            StoreError::RangeNotSatisfiable { size } => {
                Self::new(S::RANGE_NOT_SATISFIABLE, Code::RangeInvalid, msg)
                    .with_header("content-range", format!("bytes */{size}"))
            }
            StoreError::Conflict(_) => Self::new(S::CONFLICT, Code::Denied, msg),
            StoreError::TooManyUploads(_) => {
                Self::new(S::TOO_MANY_REQUESTS, Code::TooManyRequests, msg)
                    .with_header("retry-after", "10".into())
                    .with_header("connection", "close".into())
            }
            StoreError::NotFound(_) => Self::new(S::NOT_FOUND, Code::NameUnknown, msg),
            StoreError::StorageFull => Self::new(S::INSUFFICIENT_STORAGE, Code::Unknown, msg)
                .with_header("retry-after", "60".into()),
            StoreError::ReplicaRefused(_) => Self::new(S::FORBIDDEN, Code::Denied, msg),
            StoreError::TooManyPins { .. }
            | StoreError::Cas(_)
            | StoreError::Index(_)
            | StoreError::SiteMismatch { .. }
            | StoreError::Io { .. }
            | StoreError::Task { .. }
            | StoreError::BytesMissing { .. }
            | StoreError::Record { .. }
            | StoreError::Internal(_) => {
                // The text may name files, buckets or endpoints: it goes to the log only.
                let e = Self::internal("serving the request");
                tracing::error!(
                    error = %msg,
                    reference = e.reference.as_deref().unwrap_or_default(),
                    "internal error serving request"
                );
                e
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "errors": [{"code": self.code.as_str(), "message": self.message, "detail": null}]
        });
        let mut resp = (self.status, axum::Json(body)).into_response();
        for (name, value) in self.headers {
            if let Ok(v) = axum::http::HeaderValue::from_str(&value) {
                resp.headers_mut().insert(name, v);
            }
        }
        resp
    }
}

/// Shorthand.
pub type ApiResult<T = Response> = Result<T, ApiError>;
