//! Micro-benchmarks of the hot paths that do not need a network: manifest parsing, hashing,
//! and index commits. `cargo bench -p stowage-benches --bench micro`.
#![allow(clippy::unwrap_used, missing_docs)]

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use stowage_core::{Algorithm, Digest, Hasher, RepoName};
use stowage_index::{Batch, BlobRecord, BlobState, Event, EventKind, Index, IndexOptions};

fn manifest_json(layers: usize) -> Vec<u8> {
    let layers: Vec<_> = (0..layers)
        .map(|i| {
            serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": Digest::sha256(&i.to_le_bytes()).to_string(), "size": 1000 + i})
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": Digest::sha256(b"cfg").to_string(), "size": 3},
        "layers": layers
    }))
    .unwrap()
}

fn parse(c: &mut Criterion) {
    let m = manifest_json(20);
    let mut g = c.benchmark_group("manifest");
    g.throughput(Throughput::Bytes(m.len() as u64));
    g.bench_function("parse_20_layers", |b| {
        b.iter(|| stowage_core::parse_manifest(None, &m).unwrap())
    });
    g.finish();
}

fn hash(c: &mut Criterion) {
    let data = vec![7u8; 1 << 20];
    let mut g = c.benchmark_group("hash");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("sha256_1MiB_in_64KiB_updates", |b| {
        b.iter(|| {
            let mut h = Hasher::new(Algorithm::Sha256);
            for chunk in data.chunks(64 << 10) {
                h.update(chunk);
            }
            h.finish()
        })
    });
    g.finish();
}

fn index_commit(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let idx = Index::open(
        dir.path(),
        IndexOptions {
            sync_writes: false,
            ..IndexOptions::default()
        },
    )
    .unwrap();
    let repo = RepoName::parse("bench/repo").unwrap();
    let mut n = 0u64;
    c.bench_function("index_commit_blob_link_feed_unsynced", |b| {
        b.iter_batched(
            || {
                n += 1;
                Digest::sha256(&n.to_le_bytes())
            },
            |d| {
                let mut batch = Batch::new();
                batch.put_blob(
                    &d,
                    &BlobRecord {
                        size: 1,
                        state: BlobState::Present,
                        created_ms: 1,
                        updated_ms: 1,
                        crc32c: Some(1),
                        quarantine: None,
                    },
                );
                batch.link_blob(&repo, &d, 1);
                batch.event(Event {
                    kind: EventKind::BlobPut,
                    repo: repo.to_string(),
                    digest: Some(d),
                    tag: None,
                    ts_ms: 1,
                    actor: None,
                    origin: None,
                });
                idx.commit(batch).unwrap()
            },
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, parse, hash, index_commit);
criterion_main!(benches);
