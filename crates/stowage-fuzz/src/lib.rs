//! Fuzz targets for the parsers that face untrusted input.
//!
//! Each target is a `pub fn <target>(data: &[u8])` that feeds the input to one parser and
//! checks properties of what comes back. A violated property panics: libFuzzer reports the
//! panic as a crash, and the corpus replay test (`tests/replay.rs`) as a failure. The same
//! functions serve both:
//!
//! * `fuzz/` (a cargo-fuzz project outside the workspace) wraps each function in a one-line
//!   `fuzz_target!`; `scripts/fuzz.sh` runs them for a while (not part of CI).
//! * `tests/replay.rs` runs every file of `fuzz/corpus/<target>/` and `fuzz/artifacts/<target>/`
//!   through the matching function on stable Rust, in CI's `cargo test --workspace`.
//!
//! | target | parser | main properties |
//! | --- | --- | --- |
//! | [`manifest`] | `parse_manifest` | kinds and references consistent; re-serialized manifest parses to the same value |
//! | [`digest`] | `Digest::parse` | agrees with the image-spec grammar; `to_string` round-trips |
//! | [`name`] | `RepoName`, `Tag`, `Reference` | agree with the distribution-spec regexes; `project()` is the first component |
//! | [`range`] | `blob_range`, `content_range` | a range is non-empty and inside the blob; agrees with a model on canonical headers |
//! | [`scope`] | `Scope::parse`, `parse_scope_params` | agrees with the scope grammar; merging keeps every action |
//! | [`authorization`] | `parse_authorization` | credentials round-trip; `Debug` redacts them |
//! | [`token_verify`] | `Verifier::verify` on raw bytes | never `Ok` (the fuzzer cannot sign) |
//! | [`token_claims`] | `Verifier::verify` on tokens the harness signs | `Ok` only for claims valid at `NOW`; tampering is refused |
//!
//! Inputs are bytes; parsers that take `&str` get `String::from_utf8_lossy` of them, so a
//! mutation that breaks UTF-8 still reaches the parser.

use std::borrow::Cow;

mod authorization;
mod digest;
pub mod fixture;
mod manifest;
mod name;
mod range;
mod scope;
mod token;

pub use authorization::authorization;
pub use digest::digest;
pub use manifest::manifest;
pub use name::name;
pub use range::range;
pub use scope::scope;
pub use token::{token_claims, token_verify};

/// A fuzz target: runs one input, panics on a violated property.
pub type Target = fn(&[u8]);

/// Every target by name; the names are those of `fuzz/fuzz_targets/<name>.rs` and of the
/// corpus directories.
pub const TARGETS: &[(&str, Target)] = &[
    ("manifest", manifest),
    ("digest", digest),
    ("name", name),
    ("range", range),
    ("scope", scope),
    ("authorization", authorization),
    ("token_verify", token_verify),
    ("token_claims", token_claims),
];

/// The input as text, invalid UTF-8 replaced (the parsers under test take `&str`).
fn text(data: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(data)
}

/// A regex compiled once; the patterns are constants of this crate, so failing to compile
/// is a bug of the harness.
fn regex(cell: &'static std::sync::OnceLock<regex::Regex>, pattern: &str) -> &'static regex::Regex {
    cell.get_or_init(|| regex::Regex::new(pattern).expect("harness regex compiles"))
}
