//! Errors carry what was being done and to what, as typed sources a caller can inspect, not
//! a catch-all string.

use super::*;

#[tokio::test]
async fn a_data_dir_that_cannot_be_made_is_an_io_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let data_dir = file.join("data");
    let err = Store::open(StoreConfig::new(&data_dir))
        .await
        .map(|_| ())
        .unwrap_err();
    let io = std::error::Error::source(&err)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .unwrap_or_else(|| panic!("no io::Error source in {err:?}"));
    assert_eq!(io.kind(), std::io::ErrorKind::NotADirectory, "{io}");
    assert!(
        err.to_string().contains(&data_dir.display().to_string()),
        "{err}"
    );
}

#[tokio::test]
async fn a_panicked_blocking_task_is_a_task_error_with_its_cause() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let err = store
        .blocking(|_| -> Result<()> { panic!("a bug in a blocking index read") })
        .await
        .unwrap_err();
    let join = std::error::Error::source(&err)
        .and_then(|s| s.downcast_ref::<tokio::task::JoinError>())
        .unwrap_or_else(|| panic!("no JoinError source in {err:?}"));
    assert!(join.is_panic());
    assert!(err.to_string().contains("blocking index"), "{err}");
}

#[tokio::test]
async fn content_indexed_without_bytes_is_bytes_missing_with_its_digest() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let cfg = b"{}".to_vec();
    let cd = Digest::sha256(&cfg);
    store
        .put_blob(&actor(), &repo("app"), &cd, body(&cfg))
        .await
        .unwrap();
    let m = image((&cd, cfg.len() as u64), &[]);
    let md = Digest::sha256(&m);
    store
        .put_manifest(&actor(), &repo("app"), &tag("v1"), None, m)
        .await
        .unwrap();

    // The blob's file removed behind the store's back.
    let file = dir
        .path()
        .join("cas")
        .join(stowage_cas::blob_path(&cd).as_ref());
    std::fs::remove_file(&file).unwrap();
    let err = read(&store, &repo("app"), &cd).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::BytesMissing { what: "blob", digest } if *digest == cd),
        "{err:?}"
    );

    // The manifest's bytes removed from the index behind the store's back.
    let mut batch = stowage_index::Batch::new();
    batch.delete_manifest_bytes(&md);
    store.index().commit(batch).unwrap();
    let err = store
        .get_manifest(&repo("app"), &Reference::Digest(md.clone()))
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::BytesMissing { what: "manifest", digest } if *digest == md),
        "{err:?}"
    );
}
