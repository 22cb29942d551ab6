//! Which object store holds the blobs: the configured kind (file system, S3-compatible, GCS,
//! Azure, memory) and building it, with credentials from the environment and the providers'
//! standard chains, retries with backoff on transient failures, and an optional key prefix.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, RetryConfig};

use crate::{Backend, CasError, S3Uploads};

/// The kind of blob store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StorageKind {
    /// `<data dir>/cas` on the local file system.
    #[default]
    Filesystem,
    /// Amazon S3 or an S3-compatible server (Ceph RGW, MinIO, ...).
    S3,
    /// Google Cloud Storage.
    Gcs,
    /// Azure Blob Storage.
    Azure,
    /// In memory: lost at exit (tests and trials).
    Memory,
}

impl std::str::FromStr for StorageKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "filesystem" => Self::Filesystem,
            "s3" => Self::S3,
            "gcs" => Self::Gcs,
            "azure" => Self::Azure,
            "memory" => Self::Memory,
            other => {
                return Err(format!(
                    "{other:?} is not a storage backend (filesystem, s3, gcs, azure, memory)"
                ))
            }
        })
    }
}

impl StorageKind {
    /// The configuration word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Filesystem => "filesystem",
            Self::S3 => "s3",
            Self::Gcs => "gcs",
            Self::Azure => "azure",
            Self::Memory => "memory",
        }
    }
}

/// Where the blobs live, as configured (`[storage]`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StorageConfig {
    /// The kind of store.
    pub kind: StorageKind,
    /// Bucket (S3, GCS) or container (Azure).
    pub bucket: Option<String>,
    /// Key prefix under which everything is stored (`registry/site-a`).
    pub prefix: Option<String>,
    /// Endpoint URL: an S3-compatible server; for Azure, the account URL
    /// (`http://host:port/ACCOUNT` for Azurite); for GCS, a compatible server's base URL.
    pub endpoint: Option<String>,
    /// Region (S3).
    pub region: Option<String>,
    /// Path-style requests (`endpoint/bucket/key`) instead of virtual-hosted style (S3).
    pub path_style: bool,
    /// Allow plain HTTP endpoints (test servers).
    pub allow_http: bool,
    /// S3 only: how the store offers create-if-absent copies, in object_store's notation:
    /// `multipart` (Amazon S3's conditional writes: a one-part upload copy completed with
    /// `If-None-Match: *`), or `header:NAME:VALUE` / `header-with-status:NAME:VALUE:STATUS`
    /// for stores with a header of their own (Cloudflare R2). Unset: publishes on S3 are
    /// unconditional copies (harmless for content-addressed keys).
    pub copy_if_not_exists: Option<String>,
}

/// The largest source S3's `CopyObject` (and `UploadPartCopy`) accepts: 5 GiB.
pub const S3_MAX_COPY: u64 = 5 << 30;

/// Retries of transient failures (5xx, timeouts, connection errors): 6 with exponential backoff
/// from 100 ms, giving up after 60 s.
fn retry() -> RetryConfig {
    RetryConfig {
        backoff: object_store::BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            base: 2.0,
        },
        max_retries: 6,
        retry_timeout: Duration::from_secs(60),
    }
}

impl StorageConfig {
    /// A short description for messages: `s3 bucket "b" at http://127.0.0.1:9000`.
    pub fn describe(&self) -> String {
        let mut s = self.kind.as_str().to_string();
        if let Some(b) = &self.bucket {
            s.push_str(&format!(" bucket {b:?}"));
        }
        if let Some(p) = &self.prefix {
            s.push_str(&format!(" prefix {p:?}"));
        }
        if let Some(e) = &self.endpoint {
            s.push_str(&format!(" at {e}"));
        }
        s
    }

    /// The largest object the store copies server-side in one request (see
    /// [`crate::CasOptions::max_server_copy`]).
    pub fn max_server_copy(&self) -> u64 {
        match self.kind {
            StorageKind::S3 => S3_MAX_COPY,
            _ => u64::MAX,
        }
    }

    fn bucket(&self) -> Result<&str, CasError> {
        self.bucket
            .as_deref()
            .filter(|b| !b.is_empty())
            .ok_or_else(|| {
                CasError::Config(format!(
                    "storage backend {} needs a bucket",
                    self.kind.as_str()
                ))
            })
    }

    /// The backend for data dir `data_dir`.
    pub fn backend(&self, data_dir: &Path) -> Result<Backend, CasError> {
        let built = |e: object_store::Error| {
            CasError::Config(format!("storage backend {}: {e}", self.describe()))
        };
        if self.copy_if_not_exists.is_some() && self.kind != StorageKind::S3 {
            return Err(CasError::Config(format!(
                "copy_if_not_exists is an S3 setting; backend {} has create-if-absent copies of \
                 its own or none",
                self.kind.as_str()
            )));
        }
        let store: Arc<dyn ObjectStore> = match self.kind {
            StorageKind::Filesystem => {
                return Ok(Backend::Filesystem {
                    root: data_dir.join("cas"),
                })
            }
            StorageKind::Memory => return Ok(Backend::Memory),
            StorageKind::S3 => {
                let mut b = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(self.bucket()?)
                    .with_allow_http(self.allow_http)
                    .with_virtual_hosted_style_request(!self.path_style)
                    .with_retry(retry());
                if let Some(e) = &self.endpoint {
                    b = b.with_endpoint(e);
                }
                if let Some(r) = &self.region {
                    b = b.with_region(r);
                }
                if let Some(c) = &self.copy_if_not_exists {
                    // Parsed (and refused with object_store's message) by `build`.
                    b = b.with_config(object_store::aws::AmazonS3ConfigKey::CopyIfNotExists, c);
                }
                return s3_backend(b, self.prefix.as_deref())
                    .map_err(|e| CasError::Config(format!("{}: {e}", self.describe())));
            }
            StorageKind::Gcs => {
                let mut b = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(self.bucket()?)
                    .with_client_options(
                        object_store::ClientOptions::new().with_allow_http(self.allow_http),
                    )
                    .with_retry(retry());
                if let Some(e) = &self.endpoint {
                    // A GCS-compatible server (an emulator): its base URL.
                    b = b.with_base_url(e.trim_end_matches('/'));
                }
                Arc::new(b.build().map_err(built)?)
            }
            StorageKind::Azure => {
                let mut b = object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_container_name(self.bucket()?)
                    .with_allow_http(self.allow_http)
                    .with_retry(retry());
                if let Some(e) = &self.endpoint {
                    // The account's URL (`https://host/ACCOUNT` for emulators): container and
                    // key are appended as path segments.
                    b = b.with_endpoint(e.trim_end_matches('/').to_string());
                }
                Arc::new(b.build().map_err(built)?)
            }
        };
        Ok(Backend::Custom(with_prefix(store, self.prefix.as_deref())))
    }
}

/// `store` with every key under `prefix` (none when absent or empty).
fn with_prefix(store: Arc<dyn ObjectStore>, prefix: Option<&str>) -> Arc<dyn ObjectStore> {
    match prefix.map(|p| p.trim_matches('/')) {
        Some(p) if !p.is_empty() => Arc::new(PrefixStore::new(store, p)),
        _ => store,
    }
}

/// The S3 backend that `builder` describes, with every key under `prefix`: the store, and the
/// listing of its incomplete multipart uploads (see [`S3Uploads`]).
pub fn s3_backend(
    builder: object_store::aws::AmazonS3Builder,
    prefix: Option<&str>,
) -> Result<Backend, CasError> {
    let s3 = Arc::new(
        builder
            .clone()
            .build()
            .map_err(|e| CasError::Config(e.to_string()))?,
    );
    let uploads = S3Uploads::new(&builder, s3.clone(), prefix)?;
    Ok(Backend::S3 {
        store: with_prefix(s3, prefix),
        uploads,
    })
}
