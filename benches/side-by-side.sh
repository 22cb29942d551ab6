#!/usr/bin/env bash
# Side-by-side benchmark: Stowage vs CNCF Distribution (docker-registry).
#
# Usage: benches/side-by-side.sh [--stowage-bin PATH] [--quick]
#
# Environment:
#   CARGO_TARGET_DIR   cargo target dir (default $HOME/.cache/stowage/target)
#   STOWAGE_BIN        stowage binary (default $CARGO_TARGET_DIR/debug/stowage)
#   DISTRIBUTION_BIN   Distribution binary (default: docker-registry on PATH)
#   KEEP_DATA=1        keep the temporary data directories after the run
#
# Results (raw per-run JSON, limits, table) go to <repo>/.bench-out/<timestamp>/.
set -euo pipefail

usage() {
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
}

QUICK=0
STOWAGE_BIN_ARG=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) QUICK=1; shift ;;
        --stowage-bin)
            [[ $# -ge 2 ]] || { echo "--stowage-bin needs a path" >&2; exit 64; }
            STOWAGE_BIN_ARG="$2"; shift 2 ;;
        --stowage-bin=*) STOWAGE_BIN_ARG="${1#*=}"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 64 ;;
    esac
done

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
: "${CARGO_TARGET_DIR:=$HOME/.cache/stowage/target}"
export CARGO_TARGET_DIR
STOWAGE_BIN="${STOWAGE_BIN_ARG:-${STOWAGE_BIN:-$CARGO_TARGET_DIR/debug/stowage}}"
DIST_BIN="${DISTRIBUTION_BIN:-$(command -v docker-registry || echo /usr/bin/docker-registry)}"

command -v python3 >/dev/null || { echo "python3 is required (ports, JSON, summary)" >&2; exit 1; }
[[ -x "$DIST_BIN" ]] || { echo "Distribution binary not found: $DIST_BIN" >&2; exit 1; }

MIB=$((1024 * 1024))
if [[ $QUICK -eq 1 ]]; then
    BIG_SIZE=$((256 * MIB)); SMALL_COUNT=100; REPS=1; LIMIT_MIB=256
else
    BIG_SIZE=$((1024 * MIB)); SMALL_COUNT=500; REPS=3; LIMIT_MIB=1024
fi
SMALL_SIZE=$((2 * MIB)); SMALL_CLIENTS=8
RSS_SIZE=$((256 * MIB)); RSS_CLIENTS=16

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# ---------------------------------------------------------------- build
log "building regbench (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
(cd "$REPO_ROOT" && cargo build --release -p stowage-benches --bin regbench)
REGBENCH="$CARGO_TARGET_DIR/release/regbench"
[[ -x "$REGBENCH" ]] || { echo "regbench not found at $REGBENCH" >&2; exit 1; }

# ---------------------------------------------------------------- dirs
TMP_ROOT="$(mktemp -d "${TMPDIR:-/tmp}/stowage-side-by-side.XXXXXX")"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
OUT="$REPO_ROOT/.bench-out/$STAMP"
mkdir -p "$OUT/runs" "$OUT/logs"

declare -a STARTED_PIDS=()
cleanup() {
    local rc=$?
    set +e
    local pid
    for pid in "${STARTED_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null
    done
    for pid in "${STARTED_PIDS[@]}"; do
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    cp "$TMP_ROOT"/*.log "$OUT/logs/" 2>/dev/null
    if [[ "${KEEP_DATA:-0}" == 1 ]]; then
        echo "data kept in $TMP_ROOT" >&2
    else
        rm -rf "$TMP_ROOT"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

http_code() {
    if command -v curl >/dev/null; then
        curl -s -o /dev/null -m 2 -w '%{http_code}' "$1" || true
    else
        python3 - "$1" <<'PY' || true
import sys, urllib.request, urllib.error
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=2).status, end="")
except urllib.error.HTTPError as e:
    print(e.code, end="")
except Exception:
    print("000", end="")
PY
    fi
}

wait_ready() { # name url pid logfile
    local name=$1 url=$2 pid=$3 logf=$4
    for _ in $(seq 1 300); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "$name exited during startup; log:" >&2
            tail -n 50 "$logf" >&2 || true
            return 1
        fi
        [[ "$(http_code "$url/v2/")" == 200 ]] && return 0
        sleep 0.2
    done
    echo "$name did not answer 200 on $url/v2/ within 60 s; log:" >&2
    tail -n 50 "$logf" >&2 || true
    return 1
}

# ---------------------------------------------------------------- daemons
declare -A URL=() PID=()
REGS=()

start_distribution() {
    local port dir cfg logf
    port="$(free_port)"
    dir="$TMP_ROOT/distribution-data"
    cfg="$TMP_ROOT/distribution.yml"
    logf="$TMP_ROOT/distribution.log"
    mkdir -p "$dir"
    cat >"$cfg" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$port
  secret: side-by-side-bench
EOF
    "$DIST_BIN" serve "$cfg" >"$logf" 2>&1 &
    local pid=$!
    STARTED_PIDS+=("$pid")
    URL[distribution]="http://127.0.0.1:$port"
    PID[distribution]=$pid
    wait_ready distribution "${URL[distribution]}" "$pid" "$logf"
    REGS+=(distribution)
    log "distribution ($DIST_BIN) pid $pid at ${URL[distribution]}"
}

start_stowage() {
    local port dir logf
    port="$(free_port)"
    dir="$TMP_ROOT/stowage-data"
    logf="$TMP_ROOT/stowage.log"
    mkdir -p "$dir"
    "$STOWAGE_BIN" serve --data-dir "$dir" --listen "127.0.0.1:$port" >"$logf" 2>&1 &
    local pid=$!
    STARTED_PIDS+=("$pid")
    URL[stowage]="http://127.0.0.1:$port"
    PID[stowage]=$pid
    wait_ready stowage "${URL[stowage]}" "$pid" "$logf"
    REGS+=(stowage)
    log "stowage ($STOWAGE_BIN) pid $pid at ${URL[stowage]}"
}

STOWAGE_PRESENT=0
if [[ -x "$STOWAGE_BIN" ]]; then
    STOWAGE_PRESENT=1
else
    log "NOTE: stowage binary not found at $STOWAGE_BIN -- benchmarking Distribution alone"
fi

start_distribution
if [[ $STOWAGE_PRESENT -eq 1 ]]; then
    start_stowage
fi

python3 - "$OUT/meta.json" "$QUICK" "$REPS" "$STOWAGE_PRESENT" "$STOWAGE_BIN" "$DIST_BIN" \
    "$("$DIST_BIN" --version 2>&1 | head -n1)" "$(nproc)" "$(uname -r)" <<'PY'
import json, sys, datetime
a = sys.argv
json.dump({
    "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    "quick": a[2] == "1", "reps": int(a[3]), "stowage_present": a[4] == "1",
    "stowage_bin": a[5], "distribution_bin": a[6], "distribution_version": a[7],
    "nproc": int(a[8]), "kernel": a[9],
}, open(a[1], "w"), indent=2)
PY

# ---------------------------------------------------------------- limits
log "measuring limits: sha-speed and fsync-speed ($LIMIT_MIB MiB) on $TMP_ROOT"
"$REGBENCH" sha-speed --mib "$LIMIT_MIB" --json >"$OUT/sha-speed.json"
"$REGBENCH" fsync-speed --dir "$TMP_ROOT" --mib "$LIMIT_MIB" --json >"$OUT/fsync-speed.json"
python3 - "$OUT" <<'PY' >&2
import json, sys
o = sys.argv[1]
s = json.load(open(o + "/sha-speed.json")); f = json.load(open(o + "/fsync-speed.json"))
print(f"  sha256 single core: {s['median_mib_s']:.0f} MiB/s; fsynced sequential write: {f['median_mib_s']:.0f} MiB/s")
PY

# ---------------------------------------------------------------- runs
declare -A DEAD=()

run_case() { # registry test rep seed size count clients pull(0/1)
    local reg=$1 test=$2 rep=$3 seed=$4 size=$5 count=$6 clients=$7 pull=$8
    local name="$reg-$test-r$rep"
    local raw="$OUT/runs/$name.raw" json="$OUT/runs/$name.json" errf="$OUT/runs/$name.stderr"
    if [[ -n "${DEAD[$reg]:-}" ]]; then
        log "$name: skipped ($reg is not running)"
        return 0
    fi
    if ! kill -0 "${PID[$reg]}" 2>/dev/null; then
        log "$name: $reg (pid ${PID[$reg]}) has exited; skipping its remaining runs"
        DEAD[$reg]=1
        return 0
    fi
    local args=(push-pull --url "${URL[$reg]}" --repo "bench/$test-r$rep-s$seed"
        --blob-size "$size" --count "$count" --clients "$clients" --seed "$seed"
        --server-pid "${PID[$reg]}" --interval-ms 100 --json)
    [[ "$pull" == 1 ]] && args+=(--pull)
    # Start every run from the same page-cache state: flush what the previous run left dirty
    # (Distribution does not fsync, so without this its deferred writeback lands on whichever
    # registry runs next). Not timed.
    sync
    local rc=0
    "$REGBENCH" "${args[@]}" >"$raw" 2>"$errf" || rc=$?
    if [[ -s "$errf" ]]; then
        log "$name: regbench stderr (first lines):"
        head -n 10 "$errf" >&2
    else
        rm -f "$errf"
    fi
    python3 - "$raw" "$json" "$reg" "$test" "$rep" "$rc" <<'PY' >&2
import json, sys
raw, out, reg, test, rep, rc = sys.argv[1:]
try:
    d = json.load(open(raw))
except Exception:
    d = {"failed": True}
d.update({"registry": reg, "test": test, "rep": int(rep), "rc": int(rc)})
json.dump(d, open(out, "w"), indent=2)
def ph(name):
    p = d.get(name)
    if not p:
        return ""
    cpu = p.get("server_cpu_s_per_gib")
    cpu = f", {cpu:.2f} cpu-s/GiB" if cpu is not None else ""
    if p.get("client_cpu_s") is not None:
        cpu += f", client {p['client_cpu_s']:.1f} cpu-s"
    return f" {name} {p['mib_s']:.1f} MiB/s ({p['errors']} err{cpu})"
rss = d.get("server") or {}
rss = f", peak RSS {rss['peak_rss_mib']:.0f} MiB" if "peak_rss_mib" in rss else ""
status = "FAILED" if d.get("failed") else f"rc={rc}"
print(f"  {reg:12} {test} rep {rep}:{ph('push')}{ph('pull')}{rss} [{status}]")
PY
    rm -f "$raw"
}

log "running: reps=$REPS, (a) 1 x $((BIG_SIZE / MIB)) MiB, (b) $SMALL_COUNT x 2 MiB / $SMALL_CLIENTS clients, (c) $RSS_CLIENTS x 256 MiB / $RSS_CLIENTS clients; registries: ${REGS[*]}"
for rep in $(seq 1 "$REPS"); do
    for reg in "${REGS[@]}"; do
        run_case "$reg" a "$rep" $((rep * 100 + 1)) "$BIG_SIZE" 1 1 1
    done
    for reg in "${REGS[@]}"; do
        run_case "$reg" b "$rep" $((rep * 100 + 2)) "$SMALL_SIZE" "$SMALL_COUNT" "$SMALL_CLIENTS" 1
    done
    for reg in "${REGS[@]}"; do
        run_case "$reg" c "$rep" $((rep * 100 + 3)) "$RSS_SIZE" "$RSS_CLIENTS" "$RSS_CLIENTS" 0
    done
done

# ---------------------------------------------------------------- summary
python3 - "$OUT" "$STOWAGE_PRESENT" "$QUICK" "$BIG_SIZE" "$SMALL_COUNT" <<'PY'
import glob, json, os, statistics, sys

out, stowage_present, quick = sys.argv[1], sys.argv[2] == "1", sys.argv[3] == "1"
big_mib, small_count = int(sys.argv[4]) // (1 << 20), int(sys.argv[5])
runs = []
for p in sorted(glob.glob(os.path.join(out, "runs", "*.json"))):
    runs.append(json.load(open(p)))
with open(os.path.join(out, "runs.jsonl"), "w") as f:
    for r in runs:
        f.write(json.dumps(r, sort_keys=True) + "\n")
sha = json.load(open(os.path.join(out, "sha-speed.json")))["median_mib_s"]
fsy = json.load(open(os.path.join(out, "fsync-speed.json")))["median_mib_s"]
limit = min(sha, fsy)

def med(reg, test, getter):
    vals = []
    for r in runs:
        if r["registry"] != reg or r["test"] != test or r.get("failed"):
            continue
        try:
            v = getter(r)
        except (KeyError, TypeError):
            v = None
        if v is not None:
            vals.append(v)
    return (statistics.median(vals), len(vals)) if vals else (None, 0)

def errs(reg):
    n = 0
    for r in runs:
        if r["registry"] == reg:
            n += (r.get("push") or {}).get("errors", 0) + (r.get("pull") or {}).get("errors", 0)
            n += 1 if r.get("failed") else 0
    return n

push = lambda r: r["push"]["mib_s"]
pull = lambda r: r["pull"]["mib_s"]
cpu = lambda r: r["push"]["server_cpu_s_per_gib"]
rss = lambda r: r["server"]["peak_rss_mib"]

rows = [
    (f"(a) 1 x {big_mib} MiB, 1 client: push MiB/s", "a", push, "ratio", ">= 2.00x"),
    (f"(a) 1 x {big_mib} MiB, 1 client: pull MiB/s", "a", pull, "ratio", ">= 1.00x"),
    (f"(b) {small_count} x 2 MiB, 8 clients: push MiB/s", "b", push, "ratio", ">= 2.00x"),
    (f"(b) {small_count} x 2 MiB, 8 clients: pull MiB/s", "b", pull, "ratio", ">= 1.00x"),
    ("(c) 16 x 256 MiB, 16 clients: push MiB/s", "c", push, "ratio", ""),
    ("server CPU s per GiB pushed (a)", "a", cpu, "ratio", "<= 1.5 s"),
    ("server CPU s per GiB pushed (b)", "b", cpu, "ratio", "<= 1.5 s"),
    ("server CPU s per GiB pushed (c)", "c", cpu, "ratio", "<= 1.5 s"),
    ("peak daemon RSS MiB (c)", "c", rss, "ratio", "< 200 MiB"),
]

def fmt(v, nd=1):
    return "-" if v is None else f"{v:.{nd}f}"

lines = []
mode = "quick (1 repetition)" if quick else "full"
lines.append(f"## Side-by-side results ({os.path.basename(out)}, {mode}; medians over repetitions)")
lines.append("")
if not stowage_present:
    lines.append("**Stowage binary not found: Distribution benchmarked alone.**")
    lines.append("")
lines.append("| metric | distribution | stowage | stowage / distribution | target |")
lines.append("|---|---:|---:|---:|---|")
for label, test, get, _, target in rows:
    d, nd_ = med("distribution", test, get)
    s, ns_ = med("stowage", test, get) if stowage_present else (None, 0)
    ratio = f"{s / d:.2f}x" if (s is not None and d) else "-"
    nd = 2 if "CPU" in label else 1
    lines.append(f"| {label} | {fmt(d, nd)} | {fmt(s, nd) if stowage_present else 'n/a'} | {ratio} | {target} |")
lines.append(f"| failed requests (all runs) | {errs('distribution')} | {errs('stowage') if stowage_present else 'n/a'} | | 0 |")
lines.append("")
lines.append("| limit | MiB/s |")
lines.append("|---|---:|")
lines.append(f"| single-core SHA-256 (regbench sha-speed) | {sha:.0f} |")
lines.append(f"| fsynced sequential write, data-dir filesystem (regbench fsync-speed) | {fsy:.0f} |")
lines.append(f"| min(sha, fsync) | {limit:.0f} |")
lines.append("")
lines.append("| push as % of min(sha, fsync) | distribution | stowage | target (stowage) |")
lines.append("|---|---:|---:|---|")
for test, label in (("a", "(a) single 1-client push"), ("b", "(b) 8-client push")):
    d, _ = med("distribution", test, push)
    s, _ = med("stowage", test, push) if stowage_present else (None, 0)
    pct = lambda v: "-" if v is None or not limit else f"{100 * v / limit:.0f}%"
    lines.append(f"| {label} | {pct(d)} | {pct(s) if stowage_present else 'n/a'} | >= 60% |")
table = "\n".join(lines) + "\n"
open(os.path.join(out, "table.md"), "w").write(table)
print()
print(table)
PY

ln -sfn "$STAMP" "$REPO_ROOT/.bench-out/latest"
log "raw per-run JSON: $OUT/runs/ and $OUT/runs.jsonl; table: $OUT/table.md (also .bench-out/latest/)"
