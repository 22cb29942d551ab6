//! The local file system engine: parts are written by the threaded, direct-I/O writer
//! (`local.rs`), a single part is published by a hard link and several are first joined by the
//! kernel; everything else (reads, sizes, deletes, the empty blob) goes through
//! `object_store`'s `LocalFileSystem`, opened with `fsync` on.

use std::collections::HashSet;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use stowage_core::{Digest, Hasher};

use crate::backend::{BlobBackend, Body, Chunks};
use crate::object::{ObjectBackend, Tuning};
use crate::{be_err, combined_path, local, part_path, upload_of, CasError, CommitOutcome};

/// An engine over the folder `root`.
#[derive(Debug)]
pub(crate) struct FsBackend {
    root: PathBuf,
    /// `LocalFileSystem` under `root`, for everything without a fast path here.
    objects: ObjectBackend,
    /// Write parts with `O_DIRECT` where the file system has it.
    direct_io: bool,
}

impl FsBackend {
    /// Opens (creating it if needed) the folder `root`.
    pub(crate) fn open(root: PathBuf, tuning: Tuning, direct_io: bool) -> Result<Self, CasError> {
        std::fs::create_dir_all(&root).map_err(|source| CasError::Io {
            context: format!("creating blob root {}", root.display()),
            source,
        })?;
        let fs = LocalFileSystem::new_with_prefix(&root)
            .map_err(be_err(format!("opening {}", root.display())))?
            .with_fsync(true)
            // No automatic removal of emptied folders: staging is one shared folder, and
            // removing it when it empties races with the next upload creating a file in it.
            .with_automatic_cleanup(false);
        Ok(FsBackend {
            root,
            objects: ObjectBackend::new(Arc::new(fs), tuning, true, None),
            direct_io,
        })
    }

    fn file(&self, path: &Path) -> PathBuf {
        self.root.join(path.as_ref())
    }
}

#[async_trait]
impl BlobBackend for FsBackend {
    fn atomic_publish(&self) -> bool {
        true
    }

    async fn probe(&self) -> Result<(), CasError> {
        self.objects.probe().await
    }

    async fn write_part(
        &self,
        path: &Path,
        body: Body<'_>,
        hasher: &mut Hasher,
        limit: u64,
        durable: bool,
    ) -> Result<u64, CasError> {
        local::write_part(
            self.file(path),
            body,
            hasher,
            limit,
            durable,
            self.direct_io,
        )
        .await
    }

    async fn open(
        &self,
        path: &Path,
        range: Option<Range<u64>>,
        direct: bool,
    ) -> Result<Chunks, object_store::Error> {
        self.objects.open(path, range, direct).await
    }

    async fn head(&self, path: &Path) -> Result<Option<u64>, CasError> {
        self.objects.head(path).await
    }

    async fn commit(
        &self,
        upload: &str,
        parts: &[u32],
        target: &Path,
        digest: &Digest,
    ) -> Result<CommitOutcome, CasError> {
        let blob = self.file(target);
        let stored = match parts {
            // The empty blob: an empty object, published like one on an object store.
            [] => return self.objects.commit(upload, parts, target, digest).await,
            [only] => {
                // One blocking call links, syncs and removes the staged name.
                let part = self.file(&part_path(upload, *only));
                tokio::task::spawn_blocking(move || local::publish(&part, &blob))
                    .await
                    .map_err(|source| CasError::Task {
                        task: "publish",
                        source,
                    })??
            }
            _ => {
                // The kernel copies the parts into one staged file (copy_file_range, no trip
                // through user space), which is then published like a single part.
                let staged: Vec<PathBuf> = parts
                    .iter()
                    .map(|p| self.file(&part_path(upload, *p)))
                    .collect();
                let combined = self.file(&combined_path(upload));
                let stored = tokio::task::spawn_blocking(move || {
                    local::concatenate(&staged, &combined)?;
                    local::publish(&combined, &blob)
                })
                .await
                .map_err(|source| CasError::Task {
                    task: "concatenate",
                    source,
                })??;
                self.remove_staging(upload, parts).await;
                stored
            }
        };
        Ok(if stored {
            CommitOutcome::Stored
        } else {
            CommitOutcome::AlreadyPresent
        })
    }

    async fn claim(&self, path: &Path, owner: Bytes) -> Result<Bytes, CasError> {
        self.objects.claim(path, owner).await
    }

    fn list(
        &self,
        prefix: &Path,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        self.objects.list(prefix)
    }

    async fn delete(&self, path: &Path) -> Result<(), object_store::Error> {
        self.objects.delete(path).await
    }

    async fn delete_many(&self, paths: Vec<Path>) -> Result<(), object_store::Error> {
        self.objects.delete_many(paths).await
    }

    async fn remove_stray_staging(
        &self,
        live: &HashSet<String>,
        before: Option<SystemTime>,
    ) -> Result<usize, CasError> {
        // Read the folder directly: it also holds `#`-suffixed temporary files of interrupted
        // multipart writes, which listing through object_store does not show.
        let uploads = self.root.join("uploads");
        let listing = |source| CasError::Io {
            context: format!("listing {}", uploads.display()),
            source,
        };
        let mut entries = match tokio::fs::read_dir(&uploads).await {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(source) => return Err(listing(source)),
        };
        let mut removed = 0;
        while let Some(entry) = entries.next_entry().await.map_err(listing)? {
            let name = entry.file_name().to_string_lossy().into_owned();
            if live.contains(upload_of(&name)) {
                continue;
            }
            if let Some(before) = before {
                // Gone meanwhile (its upload ended): nothing to judge or remove.
                let Ok(meta) = entry.metadata().await else {
                    continue;
                };
                if !meta.modified().is_ok_and(|t| t < before) {
                    continue;
                }
            }
            let path = entry.path();
            let gone = if entry.file_type().await.map(|t| t.is_dir()).unwrap_or(false) {
                tokio::fs::remove_dir_all(&path).await
            } else {
                tokio::fs::remove_file(&path).await
            };
            match gone {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(CasError::Io {
                        context: format!("removing stray staging {}", path.display()),
                        source,
                    })
                }
            }
        }
        Ok(removed)
    }
}
