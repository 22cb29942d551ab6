//! Replays the fuzz corpora on stable Rust: every file of `fuzz/corpus/<target>/` and of
//! `fuzz/artifacts/<target>/` (crash reproducers, kept until the bug is fixed) goes through
//! the matching target function. CI's `cargo test --workspace --all-targets` runs this.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use stowage_fuzz::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// The regular files of `dir`, sorted; `None` when the directory does not exist.
fn files(dir: &Path) -> Option<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("cannot read {}: {e}", dir.display()),
    };
    let mut out: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    Some(out)
}

/// Runs every file through `target`; returns the files that panicked.
fn replay(target: stowage_fuzz::Target, files: &[PathBuf]) -> Vec<String> {
    let mut failed = Vec::new();
    for file in files {
        let data = fs::read(file).unwrap();
        if panic::catch_unwind(AssertUnwindSafe(|| target(&data))).is_err() {
            failed.push(file.display().to_string());
        }
    }
    failed
}

/// What is wrong with the corpora under `fuzz` (a `fuzz/` layout): missing or empty
/// corpus directories, and files that trip a property.
fn problems(fuzz: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, target) in TARGETS {
        let corpus = fuzz.join("corpus").join(name);
        match files(&corpus) {
            None => problems.push(format!("{name}: no corpus directory {}", corpus.display())),
            Some(f) if f.is_empty() => {
                problems.push(format!(
                    "{name}: corpus directory {} is empty",
                    corpus.display()
                ));
            }
            Some(f) => {
                let failed = replay(*target, &f);
                println!("{name}: {} corpus files, {} failed", f.len(), failed.len());
                problems.extend(failed.into_iter().map(|p| format!("{name}: {p}")));
            }
        }
        if let Some(f) = files(&fuzz.join("artifacts").join(name)) {
            let failed = replay(*target, &f);
            println!("{name}: {} artifacts, {} failed", f.len(), failed.len());
            problems.extend(failed.into_iter().map(|p| format!("{name}: {p}")));
        }
    }
    problems
}

#[test]
fn every_corpus_replays_without_a_property_violation() {
    let problems = problems(&fuzz_dir());
    assert!(
        problems.is_empty(),
        "corpus replay failed:\n{}",
        problems.join("\n")
    );
}

/// A replay that reads nothing must not pass.
#[test]
fn missing_or_empty_corpora_fail() {
    let scratch = std::env::temp_dir().join(format!("stowage-fuzz-replay-{}", std::process::id()));
    assert_eq!(problems(&scratch).len(), TARGETS.len());
    for (name, _) in TARGETS {
        fs::create_dir_all(scratch.join("corpus").join(name)).unwrap();
    }
    let empty = problems(&scratch);
    fs::remove_dir_all(&scratch).unwrap();
    assert_eq!(empty.len(), TARGETS.len());
    assert!(empty.iter().all(|p| p.contains("is empty")), "{empty:?}");
}

/// Every cargo-fuzz target has a function (and so a replayed corpus), and every function a
/// cargo-fuzz target and a `[[bin]]` entry.
#[test]
fn fuzz_targets_match_the_library() {
    let fuzz = fuzz_dir();
    let mut on_disk: Vec<String> = files(&fuzz.join("fuzz_targets"))
        .expect("fuzz/fuzz_targets exists")
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut in_lib: Vec<String> = TARGETS.iter().map(|(n, _)| (*n).to_owned()).collect();
    in_lib.sort();
    assert_eq!(on_disk, in_lib);

    let manifest = fs::read_to_string(fuzz.join("Cargo.toml")).unwrap();
    for name in &in_lib {
        let source = fs::read_to_string(fuzz.join(format!("fuzz_targets/{name}.rs"))).unwrap();
        assert!(
            source.contains(&format!("stowage_fuzz::{name}(data)")),
            "fuzz_targets/{name}.rs does not call stowage_fuzz::{name}"
        );
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "fuzz/Cargo.toml has no [[bin]] {name}"
        );
    }
}
