//! Model-based test: random sequences of upload, mount, manifest put, tag, untag, delete and
//! reopen run against the real store and a `BTreeMap` model; after every step the two agree on
//! everything a client can observe.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;

const REPOS: [&str; 3] = ["r0", "team/r1", "r2"];
const TAGS: [&str; 2] = ["t0", "latest"];
const POOL: usize = 4;

fn blob_data(i: usize) -> Vec<u8> {
    format!("blob-{i}-").repeat(100 + i * 37).into_bytes()
}

fn blob_digest(i: usize) -> Digest {
    Digest::sha256(&blob_data(i))
}

/// Manifest built from a non-empty subset of the pool: first chosen blob is the config.
fn manifest_bytes(mask: u8) -> Vec<u8> {
    let chosen: Vec<usize> = (0..POOL).filter(|i| mask & (1 << i) != 0).collect();
    let d: Vec<(Digest, u64)> = chosen
        .iter()
        .map(|i| (blob_digest(*i), blob_data(*i).len() as u64))
        .collect();
    let layers: Vec<(&Digest, u64)> = d[1..].iter().map(|(d, s)| (d, *s)).collect();
    image((&d[0].0, d[0].1), &layers)
}

fn mask_blobs(mask: u8) -> BTreeSet<usize> {
    (0..POOL).filter(|i| mask & (1 << i) != 0).collect()
}

#[derive(Clone, Debug)]
enum Op {
    Push(usize, usize),
    Mount(usize, usize, usize),
    PutManifest(usize, usize, u8),
    Untag(usize, usize),
    DeleteManifest(usize, u8),
    DeleteBlob(usize, usize),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let r = 0..REPOS.len();
    let b = 0..POOL;
    let t = 0..TAGS.len();
    let mask = 1u8..(1 << POOL);
    prop_oneof![
        4 => (r.clone(), b.clone()).prop_map(|(r, b)| Op::Push(r, b)),
        2 => (r.clone(), r.clone(), b.clone()).prop_map(|(a, f, b)| Op::Mount(a, f, b)),
        4 => (r.clone(), t.clone(), mask.clone()).prop_map(|(r, t, m)| Op::PutManifest(r, t, m)),
        1 => (r.clone(), t).prop_map(|(r, t)| Op::Untag(r, t)),
        1 => (r.clone(), mask).prop_map(|(r, m)| Op::DeleteManifest(r, m)),
        1 => (r, b).prop_map(|(r, b)| Op::DeleteBlob(r, b)),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Default, Debug)]
struct Model {
    repos: BTreeSet<usize>,
    links: BTreeMap<usize, BTreeSet<usize>>,
    /// repo -> manifest mask -> blobs it references
    manifests: BTreeMap<usize, BTreeSet<u8>>,
    tags: BTreeMap<usize, BTreeMap<usize, u8>>,
}

impl Model {
    fn linked(&self, r: usize, b: usize) -> bool {
        self.links.get(&r).is_some_and(|s| s.contains(&b))
    }
}

async fn apply(store: &Store, model: &mut Model, op: &Op) {
    match *op {
        Op::Push(r, b) => {
            store
                .put_blob(
                    &actor(),
                    &repo(REPOS[r]),
                    &blob_digest(b),
                    body(&blob_data(b)),
                )
                .await
                .unwrap();
            model.repos.insert(r);
            model.links.entry(r).or_default().insert(b);
        }
        Op::Mount(to, from, b) => {
            let got = store
                .mount_blob(
                    &actor(),
                    &repo(REPOS[to]),
                    &repo(REPOS[from]),
                    &blob_digest(b),
                )
                .await
                .unwrap();
            assert_eq!(got.is_some(), model.linked(from, b), "{op:?}");
            if got.is_some() {
                model.repos.insert(to);
                model.links.entry(to).or_default().insert(b);
            }
        }
        Op::PutManifest(r, t, mask) => {
            let res = store
                .put_manifest(
                    &actor(),
                    &repo(REPOS[r]),
                    &tag(TAGS[t]),
                    None,
                    manifest_bytes(mask),
                )
                .await;
            let missing = mask_blobs(mask).into_iter().find(|b| !model.linked(r, *b));
            match (res, missing) {
                (Ok(out), None) => {
                    assert_eq!(out.digest, Digest::sha256(&manifest_bytes(mask)));
                    model.repos.insert(r);
                    model.manifests.entry(r).or_default().insert(mask);
                    model.tags.entry(r).or_default().insert(t, mask);
                }
                (Err(StoreError::ManifestBlobUnknown(d)), Some(_)) => {
                    // Whichever missing blob the store names, it must be one the model lacks.
                    let idx = (0..POOL).find(|i| blob_digest(*i) == d).unwrap();
                    assert!(!model.linked(r, idx), "{op:?} named a linked blob");
                }
                (res, missing) => panic!("{op:?}: store {res:?}, model missing {missing:?}"),
            }
        }
        Op::Untag(r, t) => {
            let res = store
                .delete_manifest(&actor(), &repo(REPOS[r]), &tag(TAGS[t]))
                .await;
            let had = model.tags.get_mut(&r).and_then(|m| m.remove(&t));
            match (res, had) {
                (Ok(()), Some(_)) | (Err(StoreError::ManifestUnknown(_)), None) => {}
                (res, had) => panic!("{op:?}: store {res:?}, model {had:?}"),
            }
        }
        Op::DeleteManifest(r, mask) => {
            let d = Digest::sha256(&manifest_bytes(mask));
            let res = store
                .delete_manifest(&actor(), &repo(REPOS[r]), &Reference::Digest(d))
                .await;
            let had = model.manifests.get_mut(&r).is_some_and(|m| m.remove(&mask));
            match (res, had) {
                (Ok(()), true) => {
                    if let Some(tags) = model.tags.get_mut(&r) {
                        tags.retain(|_, m| *m != mask);
                    }
                }
                (Err(StoreError::ManifestUnknown(_)), false) => {}
                (res, had) => panic!("{op:?}: store {res:?}, model {had}"),
            }
        }
        Op::DeleteBlob(r, b) => {
            let res = store
                .delete_blob(&actor(), &repo(REPOS[r]), &blob_digest(b))
                .await;
            let referenced = model
                .manifests
                .get(&r)
                .is_some_and(|ms| ms.iter().any(|m| mask_blobs(*m).contains(&b)));
            match (res, model.linked(r, b), referenced) {
                (Err(StoreError::BlobUnknown(_)), false, _) => {}
                (Err(StoreError::Conflict(_)), true, true) => {}
                (Ok(()), true, false) => {
                    model.links.entry(r).or_default().remove(&b);
                }
                (res, linked, referenced) => {
                    panic!("{op:?}: store {res:?}, linked {linked}, referenced {referenced}")
                }
            }
        }
        Op::Reopen => {}
    }
}

async fn check(store: &Store, model: &Model) {
    let catalog = store.catalog(None, 100).unwrap();
    let expected: Vec<String> = {
        let mut v: Vec<String> = model.repos.iter().map(|r| REPOS[*r].to_string()).collect();
        v.sort();
        v
    };
    assert_eq!(catalog, expected);
    for (r, name) in REPOS.iter().enumerate() {
        let rn = repo(name);
        for b in 0..POOL {
            if model.linked(r, b) {
                assert_eq!(
                    read(store, &rn, &blob_digest(b)).await.unwrap(),
                    blob_data(b)
                );
            } else {
                assert!(matches!(
                    store.stat_blob(&rn, &blob_digest(b)),
                    Err(StoreError::BlobUnknown(_))
                ));
            }
        }
        let model_tags = model.tags.get(&r).cloned().unwrap_or_default();
        match store.tags(&rn, None, 100) {
            Ok(tags) => {
                let mut want: Vec<String> =
                    model_tags.keys().map(|t| TAGS[*t].to_string()).collect();
                want.sort();
                assert_eq!(tags, want);
            }
            Err(StoreError::NameUnknown(_)) => assert!(!model.repos.contains(&r)),
            Err(e) => panic!("tags: {e}"),
        }
        for (t, mask) in &model_tags {
            let got = store.get_manifest(&rn, &tag(TAGS[*t])).unwrap();
            assert_eq!(got.bytes, manifest_bytes(*mask));
        }
        for mask in 1u8..(1 << POOL) {
            let held = model.manifests.get(&r).is_some_and(|m| m.contains(&mask));
            let d = Reference::Digest(Digest::sha256(&manifest_bytes(mask)));
            assert_eq!(store.get_manifest(&rn, &d).is_ok(), held, "{name} {mask}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn store_agrees_with_model(ops in proptest::collection::vec(op(), 1..30)) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let mut store = Store::open(StoreConfig::new(dir.path())).await.unwrap();
            let mut model = Model::default();
            for op in &ops {
                if let Op::Reopen = op {
                    drop(store);
                    store = Store::open(StoreConfig::new(dir.path())).await.unwrap();
                }
                apply(&store, &mut model, op).await;
                check(&store, &model).await;
            }
        });
    }
}
