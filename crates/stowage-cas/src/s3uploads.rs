//! Listing and aborting the incomplete multipart uploads of an S3 bucket.
//!
//! A multipart upload that was neither completed nor aborted (the process died mid-write, or an
//! abort request failed) keeps its parts on S3, billed and invisible to object listings, until
//! it is aborted. `object_store` can abort an upload whose id it knows
//! ([`MultipartStore::abort_multipart`]) but has no call that lists them, so this module sends
//! S3's `ListMultipartUploads` itself: signed with the store's own credentials and signer
//! ([`AwsAuthorizer`]), sent through `object_store`'s HTTP client, parsed with `quick-xml`.
//!
//! Not covered: S3 Express (zonal) endpoints, and listings of other providers (Azure drops
//! uncommitted blocks by itself after seven days; GCS multipart uploads are not listed here).
//! An S3 lifecycle rule (`AbortIncompleteMultipartUpload`) is a second line of defence.

use std::sync::Arc;
use std::time::SystemTime;

use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey, AwsAuthorizer};
use object_store::client::{
    ClientConfigKey, ClientOptions, HttpClient, HttpConnector, HttpRequestBody, ReqwestConnector,
};
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::CasError;

/// Query values are encoded as SigV4 canonicalises them: everything but `A-Z a-z 0-9 - . _ ~`.
const QUERY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Client settings carried over from the store's builder to the listing requests.
const CLIENT_KEYS: [ClientConfigKey; 5] = [
    ClientConfigKey::AllowHttp,
    ClientConfigKey::AllowInvalidCertificates,
    ClientConfigKey::ProxyUrl,
    ClientConfigKey::Timeout,
    ClientConfigKey::ConnectTimeout,
];

/// One incomplete multipart upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PendingUpload {
    /// The object key it writes, relative to the store's key prefix.
    pub key: String,
    /// S3's id of the upload.
    pub id: String,
    /// When it was started, as S3 reports it (`None` if the answer had no readable time).
    pub initiated: Option<SystemTime>,
}

/// The incomplete multipart uploads of one S3 bucket, under the store's key prefix.
#[derive(Clone)]
pub struct S3Uploads {
    /// The bucket's store, without the key prefix: credentials and `abort_multipart`.
    s3: Arc<AmazonS3>,
    client: HttpClient,
    /// `https://host/bucket` or `https://bucket.host`, no trailing slash.
    bucket_url: String,
    region: String,
    /// The store's key prefix with a trailing slash, or empty.
    prefix: String,
}

impl std::fmt::Debug for S3Uploads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Uploads")
            .field("bucket_url", &self.bucket_url)
            .field("region", &self.region)
            .field("prefix", &self.prefix)
            .finish()
    }
}

fn config_err(what: &str) -> impl FnOnce(object_store::Error) -> CasError + '_ {
    move |e| CasError::Config(format!("listing multipart uploads: {what}: {e}"))
}

fn answer_err(detail: String) -> CasError {
    CasError::Answer {
        context: "listing multipart uploads".into(),
        detail,
    }
}

impl S3Uploads {
    /// For the store `s3` built from `builder`, whose objects are under key `prefix` (no
    /// leading or trailing slash; `None` or empty for the bucket's root). The bucket's URL is
    /// derived from the builder as `object_store` derives it.
    pub fn new(
        builder: &AmazonS3Builder,
        s3: Arc<AmazonS3>,
        prefix: Option<&str>,
    ) -> Result<S3Uploads, CasError> {
        let get = |k: AmazonS3ConfigKey| builder.get_config_value(&k).filter(|v| !v.is_empty());
        let bucket = get(AmazonS3ConfigKey::Bucket)
            .ok_or_else(|| CasError::Config("listing multipart uploads: no bucket".into()))?;
        let region = get(AmazonS3ConfigKey::Region).unwrap_or_else(|| "us-east-1".to_string());
        let virtual_hosted =
            get(AmazonS3ConfigKey::VirtualHostedStyleRequest).is_some_and(|v| v == "true");
        let endpoint =
            get(AmazonS3ConfigKey::S3Endpoint).or_else(|| get(AmazonS3ConfigKey::Endpoint));
        let bucket_url = match (endpoint, virtual_hosted) {
            // Virtual-hosted style with an endpoint: the endpoint names the bucket already.
            (Some(e), true) => e.trim_end_matches('/').to_string(),
            (Some(e), false) => format!("{}/{bucket}", e.trim_end_matches('/')),
            (None, true) => format!("https://{bucket}.s3.{region}.amazonaws.com"),
            (None, false) => format!("https://s3.{region}.amazonaws.com/{bucket}"),
        };
        let mut options = ClientOptions::new();
        for key in CLIENT_KEYS {
            if let Some(v) = builder.get_config_value(&AmazonS3ConfigKey::Client(key)) {
                options = options.with_config(key, v);
            }
        }
        let client = ReqwestConnector::default()
            .connect(&options)
            .map_err(config_err("building the HTTP client"))?;
        let prefix = match prefix.map(|p| p.trim_matches('/')) {
            Some(p) if !p.is_empty() => format!("{p}/"),
            _ => String::new(),
        };
        Ok(S3Uploads {
            s3,
            client,
            bucket_url,
            region,
            prefix,
        })
    }

    /// The incomplete multipart uploads whose keys start with `under` (relative to the key
    /// prefix), every page of the listing.
    pub(crate) async fn list(&self, under: &str) -> Result<Vec<PendingUpload>, CasError> {
        let full = format!("{}{under}", self.prefix);
        let mut out = Vec::new();
        let mut marker: Option<(String, String)> = None;
        loop {
            let mut url = format!(
                "{}/?uploads=&prefix={}",
                self.bucket_url,
                utf8_percent_encode(&full, QUERY)
            );
            if let Some((key, id)) = &marker {
                url.push_str(&format!(
                    "&key-marker={}&upload-id-marker={}",
                    utf8_percent_encode(key, QUERY),
                    utf8_percent_encode(id, QUERY)
                ));
            }
            let page = parse_page(&self.get(&url).await?)?;
            for u in page.uploads {
                // S3 filters by the prefix; anything else is not this store's.
                let Some(key) = u.key.strip_prefix(&self.prefix) else {
                    continue;
                };
                out.push(PendingUpload {
                    key: key.to_string(),
                    initiated: u
                        .initiated
                        .as_deref()
                        .and_then(|t| humantime::parse_rfc3339(t).ok()),
                    id: u.upload_id,
                });
            }
            match (
                page.is_truncated,
                page.next_key_marker,
                page.next_upload_id_marker,
            ) {
                (true, Some(k), Some(i)) if !k.is_empty() => {
                    let next = Some((k, i));
                    if next == marker {
                        return Err(answer_err(format!(
                            "under {full}: the store answered the same page twice"
                        )));
                    }
                    marker = next;
                }
                _ => return Ok(out),
            }
        }
    }

    /// Aborts `upload` (found by [`S3Uploads::list`]). An upload that is already gone is not
    /// an error.
    pub(crate) async fn abort(&self, upload: &PendingUpload) -> Result<(), CasError> {
        let key = format!("{}{}", self.prefix, upload.key);
        let path = Path::parse(&key).map_err(|e| {
            answer_err(format!("the listed key {key:?} is not an object path: {e}"))
        })?;
        match self.s3.abort_multipart(&path, &upload.id).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(CasError::Backend {
                context: format!("aborting the multipart upload {} of {key}", upload.id),
                source,
            }),
        }
    }

    /// A signed `GET` of `url`; the body of a successful answer.
    async fn get(&self, url: &str) -> Result<bytes::Bytes, CasError> {
        let context = || format!("listing multipart uploads ({url})");
        let credential = self
            .s3
            .credentials()
            .get_credential()
            .await
            .map_err(|source| CasError::Backend {
                context: "getting credentials to list multipart uploads".into(),
                source,
            })?;
        let mut request = http::Request::builder()
            .method(http::Method::GET)
            .uri(url)
            .body(HttpRequestBody::empty())
            .map_err(|e| CasError::Config(format!("{}: {e}", context())))?;
        AwsAuthorizer::new(&credential, "s3", &self.region)
            .try_authorize(&mut request, None)
            .map_err(|source| CasError::Backend {
                context: format!("signing the request {}", context()),
                source,
            })?;
        let request_err = |source| CasError::Request {
            context: context(),
            source,
        };
        let response = self.client.execute(request).await.map_err(request_err)?;
        let status = response.status();
        let body = response.into_body().bytes().await.map_err(request_err)?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned();
            return Err(CasError::Answer {
                context: context(),
                detail: format!("{status}: {text}"),
            });
        }
        Ok(body)
    }
}

/// One page of S3's `ListMultipartUploadsResult`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Page {
    #[serde(default, rename = "Upload")]
    uploads: Vec<Entry>,
    #[serde(default)]
    is_truncated: bool,
    next_key_marker: Option<String>,
    next_upload_id_marker: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    key: String,
    upload_id: String,
    initiated: Option<String>,
}

fn parse_page(body: &[u8]) -> Result<Page, CasError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| answer_err(format!("the answer is not UTF-8: {e}")))?;
    quick_xml::de::from_str(text).map_err(|e| answer_err(format!("unreadable answer: {e}")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A truncated page as Amazon S3 documents it: entries, their start times, the markers of
    /// the next page; unknown elements are skipped.
    #[test]
    fn a_page_of_the_listing_is_read() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Bucket>b</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker>
  <NextKeyMarker>site/uploads/b.00000001</NextKeyMarker>
  <NextUploadIdMarker>id-2</NextUploadIdMarker>
  <MaxUploads>2</MaxUploads><IsTruncated>true</IsTruncated>
  <Upload>
    <Key>site/uploads/a.00000000</Key><UploadId>id-1</UploadId>
    <Initiator><ID>x</ID><DisplayName>y</DisplayName></Initiator>
    <StorageClass>STANDARD</StorageClass><Initiated>2026-11-30T10:20:30.000Z</Initiated>
  </Upload>
  <Upload>
    <Key>site/uploads/b.00000001</Key><UploadId>id-2</UploadId>
    <Initiated>2026-12-01T00:00:00Z</Initiated>
  </Upload>
</ListMultipartUploadsResult>"#;
        let page = parse_page(xml.as_bytes()).unwrap();
        assert!(page.is_truncated);
        assert_eq!(
            page.next_key_marker.as_deref(),
            Some("site/uploads/b.00000001")
        );
        assert_eq!(page.next_upload_id_marker.as_deref(), Some("id-2"));
        let got: Vec<(&str, &str)> = page
            .uploads
            .iter()
            .map(|u| (u.key.as_str(), u.upload_id.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("site/uploads/a.00000000", "id-1"),
                ("site/uploads/b.00000001", "id-2")
            ]
        );
        let t = humantime::parse_rfc3339(page.uploads[0].initiated.as_deref().unwrap()).unwrap();
        assert_eq!(
            t,
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_796_034_030)
        );
    }

    /// The last page of an empty listing: no entries, not truncated.
    #[test]
    fn an_empty_listing_is_read() {
        let xml = "<ListMultipartUploadsResult><Bucket>b</Bucket>\
                   <IsTruncated>false</IsTruncated></ListMultipartUploadsResult>";
        let page = parse_page(xml.as_bytes()).unwrap();
        assert!(page.uploads.is_empty() && !page.is_truncated);
        assert!(parse_page(b"<nope").is_err());
    }
}
