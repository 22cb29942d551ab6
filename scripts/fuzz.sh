#!/usr/bin/env bash
# Longer fuzzing run behind an explicit command (CI does not run it; CI replays the corpora
# through crates/stowage-fuzz/tests/replay.rs instead).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Runs each target (default: every file of fuzz/fuzz_targets/) for SECONDS (default 60) with
# cargo-fuzz and libFuzzer, then prints a summary (runs, exec/s, coverage). Exits non-zero
# when any target finds a crash, a property violation (a panic in crates/stowage-fuzz), a
# timeout or an out-of-memory; libFuzzer writes the input to fuzz/artifacts/<target>/, where
# the replay test picks it up (so CI fails until the bug is fixed and the file removed, or
# the file is kept as a regression input once the fix lands). Minimize one with
#   RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR=$HOME/.cache/stowage/target-fuzz \
#     cargo fuzz tmin <target> fuzz/artifacts/<target>/<file>
#
# Toolchain: cargo-fuzz needs nightly-only rustc flags (-Zsanitizer, sancov passes). This
# machine has only a stable toolchain; RUSTC_BOOTSTRAP=1 lets stable rustc 1.95 accept those
# flags, and the stable toolchain ships the ASan runtime, so the default AddressSanitizer
# build works: `RUSTC_BOOTSTRAP=1 cargo fuzz run <target>`. If a sanitizer ever fails to
# build or link, FUZZ_SANITIZER=none runs without one (coverage-guided fuzzing still
# works; the code is safe Rust, so ASan matters mostly for the C of aws-lc, which is not
# instrumented anyway). Fuzz builds use their own target directory,
# $HOME/.cache/stowage/target-fuzz, so they never invalidate the workspace's build; the first
# build takes about 5 minutes on 2 cores (aws-lc and the auth stack, never RocksDB:
# stowage-fuzz depends only on stowage-core and stowage-auth).
#
# Corpora: libFuzzer reads the seeds in fuzz/corpus/<target>/ but writes what it finds to
# $HOME/.cache/stowage/fuzz-corpus/<target>/ (kept between runs, so longer runs build on
# shorter ones), never into the committed seed directories. Copy a new input into
# fuzz/corpus/<target>/ by hand when it is small and worth replaying in CI (keep each
# directory under ~200 files and 1 MiB).
#
# Environment: FUZZ_SANITIZER (address | none; default address), FUZZ_ARGS (extra libFuzzer
# flags, e.g. "-jobs=2 -workers=2" or "-max_len=16384").
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    echo "usage: scripts/fuzz.sh [SECONDS] [TARGET...]" >&2
    exit 2
}

secs=60
if [[ $# -gt 0 ]]; then
    [[ $1 =~ ^[0-9]+$ ]] || usage
    secs=$1
    shift
fi
if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    targets=()
    for f in fuzz/fuzz_targets/*.rs; do
        targets+=("$(basename "$f" .rs)")
    done
fi
for t in "${targets[@]}"; do
    [[ -f fuzz/fuzz_targets/$t.rs ]] || {
        echo "fuzz.sh: no target $t (have: $(ls fuzz/fuzz_targets | sed 's/\.rs$//' | tr '\n' ' '))" >&2
        exit 2
    }
done

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="$HOME/.cache/stowage/target-fuzz"
sanitizer="${FUZZ_SANITIZER:-address}"
read -r -a extra <<<"${FUZZ_ARGS:-}"
scratch_root="$HOME/.cache/stowage/fuzz-corpus"
logs="$HOME/.cache/stowage/fuzz-logs"
mkdir -p "$scratch_root" "$logs"

# Build once, so a build failure is not mistaken for a crash.
cargo fuzz build --sanitizer "$sanitizer"

failed=()
summary=()
for t in "${targets[@]}"; do
    mkdir -p "$scratch_root/$t" "fuzz/artifacts/$t"
    log="$logs/$t.log"
    echo "== $t: ${secs}s (log: $log)"
    set +e
    cargo fuzz run --sanitizer "$sanitizer" "$t" "$scratch_root/$t" "fuzz/corpus/$t" -- \
        -max_total_time="$secs" -timeout=20 -print_final_stats=1 "${extra[@]}" >"$log" 2>&1
    rc=$?
    set -e
    last=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
    rate=$(grep -E '^stat::average_exec_per_sec' "$log" | awk '{print $2}' || true)
    summary+=("$(printf '%-14s rc=%-3s exec/s=%-7s %s' "$t" "$rc" "${rate:-?}" "$last")")
    if [[ $rc -ne 0 ]]; then
        failed+=("$t")
        echo "!! $t failed (exit $rc):"
        grep -E 'panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer|SUMMARY|Test unit written' "$log" | head -n 10 || true
    fi
    rmdir "fuzz/artifacts/$t" 2>/dev/null || true
done
rmdir fuzz/artifacts 2>/dev/null || true

echo
echo "== summary (${secs}s per target)"
printf '%s\n' "${summary[@]}"
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "fuzz.sh: crashes in: ${failed[*]} (reproducers in fuzz/artifacts/)" >&2
    exit 1
fi
