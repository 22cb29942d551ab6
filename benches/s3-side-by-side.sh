#!/usr/bin/env bash
# S3 side-by-side benchmark: Stowage vs CNCF Distribution 2.8.2, both on the S3 backend of one
# moto S3 server started for the run.
#
# Usage: benches/s3-side-by-side.sh [--quick] [--stowage-bin PATH]
#
# Environment:
#   CARGO_TARGET_DIR   cargo target dir (default $HOME/.cache/stowage/target)
#   STOWAGE_BIN        stowage binary (default $CARGO_TARGET_DIR/debug/stowage)
#   REGBENCH           regbench binary (default $CARGO_TARGET_DIR/release/regbench; not built here)
#   DISTRIBUTION_BIN   Distribution binary (default: docker-registry on PATH)
#   MOTO_SERVER        moto's server (default $HOME/.cache/stowage/venv/bin/moto_server)
#   RUN_TIMEOUT        seconds one regbench run may take before it is stopped (default 1800)
#   KEEP_DATA=1        keep the temporary folder (data directories) after the run
#   STOWAGE_*          reach the Stowage daemon unchanged (e.g. STOWAGE_STORAGE_PART_SIZE=8M)
#
# Results (raw per-run JSON, daemon and moto logs, table) go to <repo>/.bench-out/s3-<timestamp>/.
set -euo pipefail

usage() {
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
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
STOWAGE_SRC_BIN="${STOWAGE_BIN_ARG:-${STOWAGE_BIN:-$CARGO_TARGET_DIR/debug/stowage}}"
REGBENCH="${REGBENCH:-$CARGO_TARGET_DIR/release/regbench}"
DIST_BIN="${DISTRIBUTION_BIN:-$(command -v docker-registry || echo /usr/bin/docker-registry)}"
MOTO="${MOTO_SERVER:-$HOME/.cache/stowage/venv/bin/moto_server}"
RUN_TIMEOUT="${RUN_TIMEOUT:-1800}"

command -v python3 >/dev/null || { echo "python3 is required (ports, S3 housekeeping, JSON, summary)" >&2; exit 1; }
command -v curl >/dev/null || { echo "curl is required" >&2; exit 1; }
[[ -x "$DIST_BIN" ]] || { echo "Distribution binary not found: $DIST_BIN" >&2; exit 1; }
[[ -x "$STOWAGE_SRC_BIN" ]] || { echo "stowage binary not found: $STOWAGE_SRC_BIN" >&2; exit 1; }
[[ -x "$MOTO" ]] || { echo "moto_server not found: $MOTO (scripts/install-deps.sh --test installs it)" >&2; exit 1; }
[[ -x "$REGBENCH" ]] || {
    echo "regbench not found at $REGBENCH; build it first:" >&2
    echo "  cargo build --release -p stowage-benches --bin regbench" >&2
    exit 1
}

MIB=$((1024 * 1024))
if [[ $QUICK -eq 1 ]]; then
    BIG_SIZE=$((64 * MIB)); SMALL_COUNT=20; REPS=1
else
    BIG_SIZE=$((256 * MIB)); SMALL_COUNT=100; REPS=3
fi
SMALL_SIZE=$((2 * MIB)); SMALL_CLIENTS=8

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# Loopback traffic must not go through a proxy; the daemons get no ambient AWS settings (an
# AWS_CA_BUNDLE in the environment makes Distribution 2.8.2's aws-sdk-go panic at start:
# "LoadCustomCABundleError ... unsupported transport").
export NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}" no_proxy="127.0.0.1,localhost${no_proxy:+,$no_proxy}"
AWS_UNSET=(-u AWS_CA_BUNDLE -u AWS_PROFILE -u AWS_DEFAULT_PROFILE -u AWS_SESSION_TOKEN
    -u AWS_ENDPOINT_URL -u AWS_ENDPOINT_URL_S3 -u AWS_CONFIG_FILE -u AWS_SHARED_CREDENTIALS_FILE
    -u AWS_REGION -u AWS_DEFAULT_REGION -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY)

# ---------------------------------------------------------------- dirs
TMP_ROOT="$(mktemp -d "${TMPDIR:-/tmp}/stowage-s3-side-by-side.XXXXXX")"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
OUT="$REPO_ROOT/.bench-out/s3-$STAMP"
mkdir -p "$OUT/runs" "$OUT/logs"

# A rebuild during the run must not change what is measured.
STOWAGE_BIN="$TMP_ROOT/stowage"
cp "$STOWAGE_SRC_BIN" "$STOWAGE_BIN"

declare -a STARTED_PIDS=()
forget_pid() {
    local p keep=()
    for p in "${STARTED_PIDS[@]}"; do
        [[ "$p" != "$1" ]] && keep+=("$p")
    done
    STARTED_PIDS=("${keep[@]}")
}
stop_pid() { # pid [seconds before SIGKILL]
    local pid=$1 secs=${2:-10}
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 $((secs * 10))); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true
    forget_pid "$pid"
}
cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    local pid
    # Newest first: regbench and samplers, then the daemon, moto last.
    for ((i = ${#STARTED_PIDS[@]} - 1; i >= 0; i--)); do
        pid=${STARTED_PIDS[$i]}
        kill -0 "$pid" 2>/dev/null && stop_pid "$pid" 5
    done
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

http_code() { # [curl args...] url
    curl -s -o /dev/null -m 5 -w '%{http_code}' "$@" || true
}

rss_mib() {
    awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status" 2>/dev/null || echo null
}

# ---------------------------------------------------------------- moto
MOTO_PORT="$(free_port)"
S3="http://127.0.0.1:$MOTO_PORT"
# moto spools objects over 16 MiB to temporary files: keep them inside the run's folder.
mkdir -p "$TMP_ROOT/moto-tmp"
env "${AWS_UNSET[@]}" TMPDIR="$TMP_ROOT/moto-tmp" "$MOTO" -H 127.0.0.1 -p "$MOTO_PORT" \
    >"$OUT/logs/moto.log" 2>&1 &
MOTO_PID=$!
STARTED_PIDS+=("$MOTO_PID")
for _ in $(seq 1 150); do
    kill -0 "$MOTO_PID" 2>/dev/null || { echo "moto_server exited during startup:" >&2; tail -n 30 "$OUT/logs/moto.log" >&2; exit 1; }
    [[ "$(http_code "$S3/")" == 200 ]] && break
    sleep 0.2
done
[[ "$(http_code "$S3/")" == 200 ]] || { echo "moto_server did not answer on $S3" >&2; exit 1; }
log "moto ($MOTO) pid $MOTO_PID at $S3"

# Bucket housekeeping with SigV4-signed requests (credentials test/test; moto answers unsigned
# object requests with 403). Python standard library only.
cat >"$TMP_ROOT/s3util.py" <<'PY'
"""s3util.py ENDPOINT mkbucket BUCKET | drain BUCKET

drain prints {"objects", "bytes", "multipart_uploads", "prefixes": {first path element:
objects}, "delete_failures"} for the bucket, then aborts its multipart uploads, deletes every
object and the bucket itself."""
import datetime, hashlib, hmac, json, sys, urllib.error, urllib.parse, urllib.request
import xml.etree.ElementTree as ET

base, cmd, bucket = sys.argv[1], sys.argv[2], sys.argv[3]
host = urllib.parse.urlsplit(base).netloc
AK, SK, REGION = "test", "test", "us-east-1"
EMPTY = hashlib.sha256(b"").hexdigest()
q = lambda v: urllib.parse.quote(v, safe="-_.~")

def req(method, key="", query=()):
    path = "/" + bucket + ("/" + urllib.parse.quote(key, safe="/-_.~") if key else "")
    cq = "&".join(f"{q(k)}={q(v)}" for k, v in sorted(query))
    now = datetime.datetime.now(datetime.timezone.utc)
    amz, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    hdrs = {"host": host, "x-amz-content-sha256": EMPTY, "x-amz-date": amz}
    signed = ";".join(sorted(hdrs))
    creq = "\n".join([method, path, cq, "".join(f"{k}:{hdrs[k]}\n" for k in sorted(hdrs)),
                      signed, EMPTY])
    scope = f"{day}/{REGION}/s3/aws4_request"
    sts = "\n".join(["AWS4-HMAC-SHA256", amz, scope, hashlib.sha256(creq.encode()).hexdigest()])
    k = ("AWS4" + SK).encode()
    for part in (day, REGION, "s3", "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    sig = hmac.new(k, sts.encode(), hashlib.sha256).hexdigest()
    hdrs["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={AK}/{scope}, "
                             f"SignedHeaders={signed}, Signature={sig}")
    del hdrs["host"]
    r = urllib.request.Request(base + path + ("?" + cq if cq else ""), method=method, headers=hdrs)
    with urllib.request.urlopen(r, timeout=120) as resp:
        return resp.read()

NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
def find(el, tag):
    return el.findall(NS + tag) or el.findall(tag)
def text(el, tag):
    f = el.find(NS + tag)
    f = el.find(tag) if f is None else f
    return None if f is None else f.text

if cmd == "mkbucket":
    req("PUT")
    sys.exit(0)

keys, total, prefixes, token = [], 0, {}, None
while True:
    query = [("list-type", "2"), ("max-keys", "1000")] + ([("continuation-token", token)] if token else [])
    root = ET.fromstring(req("GET", query=query))
    for c in find(root, "Contents"):
        k = text(c, "Key")
        keys.append(k)
        total += int(text(c, "Size") or 0)
        prefixes[k.split("/", 1)[0]] = prefixes.get(k.split("/", 1)[0], 0) + 1
    if (text(root, "IsTruncated") or "false").lower() != "true":
        break
    token = text(root, "NextContinuationToken")
root = ET.fromstring(req("GET", query=[("uploads", "")]))
uploads = [(text(u, "Key"), text(u, "UploadId")) for u in find(root, "Upload")]
failures = 0
for k, uid in uploads:
    try:
        req("DELETE", k, [("uploadId", uid)])
    except urllib.error.URLError:
        failures += 1
for k in keys:
    try:
        req("DELETE", k)
    except urllib.error.URLError:
        failures += 1
try:
    req("DELETE")
except urllib.error.URLError:
    failures += 1
print(json.dumps({"objects": len(keys), "bytes": total, "multipart_uploads": len(uploads),
                  "prefixes": prefixes, "delete_failures": failures}))
PY

make_bucket() {
    python3 "$TMP_ROOT/s3util.py" "$S3" mkbucket "$1" || { echo "creating bucket $1 on moto failed" >&2; return 1; }
}

# Counts what a run left in its bucket, then empties and deletes the bucket, so every run
# starts on the same, nearly empty, moto.
drain_bucket() {
    python3 "$TMP_ROOT/s3util.py" "$S3" drain "$1"
}

# ---------------------------------------------------------------- daemons
# One fresh daemon, data directory and bucket per run; only one daemon runs at a time.
CUR_URL="" CUR_PID="" CUR_BUCKET="" CUR_LOG=""

wait_ready() { # name url pid logfile
    local name=$1 url=$2 pid=$3 logf=$4
    for _ in $(seq 1 300); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "$name exited during startup; log:" >&2
            tail -n 50 "$logf" >&2 || true
            return 1
        fi
        [[ -n "$url" && "$(http_code "$url/v2/")" == 200 ]] && return 0
        sleep 0.2
    done
    echo "$name did not answer 200 on $url/v2/ within 60 s; log:" >&2
    tail -n 50 "$logf" >&2 || true
    return 1
}

start_distribution() { # run-name
    local name=$1 port dir cfg
    port="$(free_port)"
    dir="$TMP_ROOT/$name"
    cfg="$OUT/logs/$name.yml"
    CUR_LOG="$OUT/logs/$name.log"
    CUR_BUCKET="$(echo "$name" | tr -c 'a-z0-9\n' '-')"
    mkdir -p "$dir"
    make_bucket "$CUR_BUCKET"
    # Distribution 2.8.2's s3 driver has no path-style option: it forces path-style requests
    # whenever regionendpoint is set, which is what moto on an IP address needs. The blob
    # descriptor cache is the one in the stock config.yml of the docker-registry package.
    cat >"$cfg" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  s3:
    accesskey: test
    secretkey: test
    region: us-east-1
    regionendpoint: $S3
    bucket: $CUR_BUCKET
    secure: false
    v4auth: true
  cache:
    blobdescriptor: inmemory
  delete:
    enabled: true
  redirect:
    disable: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$port
  secret: s3-side-by-side-bench
EOF
    (cd "$dir" && exec env "${AWS_UNSET[@]}" "$DIST_BIN" serve "$cfg") >"$CUR_LOG" 2>&1 &
    CUR_PID=$!
    STARTED_PIDS+=("$CUR_PID")
    CUR_URL="http://127.0.0.1:$port"
    wait_ready distribution "$CUR_URL" "$CUR_PID" "$CUR_LOG"
}

start_stowage() { # run-name
    local name=$1 dir
    dir="$TMP_ROOT/$name"
    CUR_LOG="$OUT/logs/$name.log"
    CUR_BUCKET="$(echo "$name" | tr -c 'a-z0-9\n' '-')"
    mkdir -p "$dir"
    make_bucket "$CUR_BUCKET"
    env "${AWS_UNSET[@]}" AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test \
        "$STOWAGE_BIN" serve --data-dir "$dir" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
        --log-level warn --storage-backend s3 --storage-bucket "$CUR_BUCKET" \
        --storage-endpoint "$S3" --storage-region us-east-1 \
        --storage-path-style true --storage-allow-http true >"$CUR_LOG" 2>&1 &
    CUR_PID=$!
    STARTED_PIDS+=("$CUR_PID")
    CUR_URL=""
    for _ in $(seq 1 300); do
        CUR_URL="$(sed -n 's/^stowage listening on \(http:[^ ]*\).*/\1/p' "$CUR_LOG" | head -n1)"
        [[ -n "$CUR_URL" ]] && break
        kill -0 "$CUR_PID" 2>/dev/null || break
        sleep 0.2
    done
    wait_ready stowage "$CUR_URL" "$CUR_PID" "$CUR_LOG"
}

python3 - "$OUT/meta.json" "$QUICK" "$REPS" "$STOWAGE_SRC_BIN" "$STOWAGE_BIN" "$DIST_BIN" \
    "$("$DIST_BIN" --version 2>&1 | head -n1)" "$MOTO" \
    "$("$(dirname "$MOTO")/python" -c 'import moto; print(moto.__version__)' 2>/dev/null || echo unknown)" \
    "$(git -C "$REPO_ROOT" describe --always --dirty 2>/dev/null || echo unknown)" \
    "$(sha256sum "$STOWAGE_BIN" | cut -d' ' -f1)" "$(nproc)" "$(uname -r)" \
    "$BIG_SIZE" "$SMALL_SIZE" "$SMALL_COUNT" "$SMALL_CLIENTS" <<'PY'
import json, sys, datetime
a = sys.argv
json.dump({
    "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    "quick": a[2] == "1", "reps": int(a[3]),
    "stowage_bin_source": a[4], "stowage_bin_copy": a[5], "distribution_bin": a[6],
    "distribution_version": a[7], "moto_server": a[8], "moto_version": a[9],
    "repo_describe": a[10], "stowage_bin_sha256": a[11], "nproc": int(a[12]), "kernel": a[13],
    "a": {"blob_size": int(a[14]), "count": 1, "clients": 1},
    "b": {"blob_size": int(a[15]), "count": int(a[16]), "clients": int(a[17])},
}, open(a[1], "w"), indent=2)
PY

# ---------------------------------------------------------------- moto alone
# What one stream to moto itself reaches (curl, unsigned), to see when both registries sit at
# the S3 server's ceiling rather than their own.
log "measuring moto alone: one $((BIG_SIZE / MIB)) MiB PUT and GET with curl"
head -c "$BIG_SIZE" /dev/urandom >"$TMP_ROOT/moto-probe.bin"
make_bucket moto-probe
sync
SIGN=(--aws-sigv4 "aws:amz:us-east-1:s3" --user test:test)
MOTO_PUT="$(curl -s -o /dev/null -m "$RUN_TIMEOUT" -w '%{http_code} %{speed_upload}' "${SIGN[@]}" \
    -H 'Content-Type: application/octet-stream' -H 'Expect:' -T "$TMP_ROOT/moto-probe.bin" \
    "$S3/moto-probe/probe.bin" || echo "000 0")"
MOTO_GET="$(curl -s -o /dev/null -m "$RUN_TIMEOUT" -w '%{http_code} %{speed_download}' "${SIGN[@]}" \
    "$S3/moto-probe/probe.bin" || echo "000 0")"
drain_bucket moto-probe >/dev/null
rm -f "$TMP_ROOT/moto-probe.bin"
python3 - "$OUT/moto-alone.json" "$BIG_SIZE" "$MOTO_PUT" "$MOTO_GET" <<'PY' >&2
import json, sys
out, size, put, get = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), sys.argv[4].split()
d = {"bytes": size,
     "put": {"status": int(put[0]), "mib_s": float(put[1]) / 2**20},
     "get": {"status": int(get[0]), "mib_s": float(get[1]) / 2**20}}
json.dump(d, open(out, "w"), indent=2)
print(f"  moto alone: PUT {d['put']['mib_s']:.1f} MiB/s (HTTP {d['put']['status']}), "
      f"GET {d['get']['mib_s']:.1f} MiB/s (HTTP {d['get']['status']})")
PY

# ---------------------------------------------------------------- runs
run_case() { # registry test rep seed size count clients
    local reg=$1 test=$2 rep=$3 seed=$4 size=$5 count=$6 clients=$7
    local name="$reg-$test-r$rep"
    local raw="$TMP_ROOT/$name.raw" sample="$TMP_ROOT/$name.sample.json" stopf="$TMP_ROOT/$name.stop"
    local json="$OUT/runs/$name.json" errf="$OUT/runs/$name.stderr"
    local rc=0 alive=1 idle bucket
    if ! "start_$reg" "$name"; then
        log "$name: $reg did not start"
        python3 -c 'import json,sys; json.dump({"registry": sys.argv[2], "test": sys.argv[3], "rep": int(sys.argv[4]), "failed": True, "start_failed": True}, open(sys.argv[1], "w"), indent=2)' \
            "$json" "$reg" "$test" "$rep"
        [[ -n "$CUR_PID" ]] && stop_pid "$CUR_PID"
        drain_bucket "$CUR_BUCKET" >/dev/null 2>&1 || true
        return 0
    fi
    sleep 1
    idle="$(rss_mib "$CUR_PID")"

    # Start every run from the same page-cache state (moto spools large objects to disk). Not timed.
    sync
    "$REGBENCH" sample --pid "$CUR_PID" --out "$sample" --interval-ms 100 --stop-file "$stopf" &
    local spid=$!
    STARTED_PIDS+=("$spid")
    timeout --signal=TERM --kill-after=10 "$RUN_TIMEOUT" \
        "$REGBENCH" push-pull --url "$CUR_URL" --repo "bench/$test-r$rep-s$seed" \
        --blob-size "$size" --count "$count" --clients "$clients" --seed "$seed" \
        --server-pid "$CUR_PID" --interval-ms 100 --pull --json >"$raw" 2>"$errf" &
    local bpid=$!
    STARTED_PIDS+=("$bpid")
    wait "$bpid" || rc=$?
    forget_pid "$bpid"
    touch "$stopf"
    wait "$spid" 2>/dev/null || true
    forget_pid "$spid"
    kill -0 "$CUR_PID" 2>/dev/null || alive=0
    stop_pid "$CUR_PID" 40
    bucket="$(drain_bucket "$CUR_BUCKET" 2>>"$errf" || echo null)"
    if [[ -s "$errf" ]]; then
        log "$name: regbench / housekeeping stderr (first lines):"
        head -n 10 "$errf" >&2
    else
        rm -f "$errf"
    fi
    python3 - "$raw" "$sample" "$json" "$reg" "$test" "$rep" "$rc" "$alive" "$idle" "$bucket" "$CUR_LOG" <<'PY' >&2
import json, re, sys
raw, sample, out, reg, test, rep, rc, alive, idle, bucket, logf = sys.argv[1:]
try:
    d = json.load(open(raw))
except Exception:
    d = {"failed": True}
try:
    s = json.load(open(sample))
except Exception:
    s = None
noisy = []
try:
    for line in open(logf, errors="replace"):
        if re.search(r"\b(WARN|WARNING|ERROR|error|warning|panic|fatal)\b", line, re.I) \
                and "listening on" not in line:
            noisy.append(line.rstrip("\n"))
except OSError:
    pass
d.update({"registry": reg, "test": test, "rep": int(rep), "rc": int(rc),
          "daemon_alive_after": alive == "1", "idle_rss_mib": json.loads(idle),
          "sample": s, "bucket": json.loads(bucket), "log_warn_error_lines": len(noisy)})
if s is not None:
    d["peak_rss_mib"] = max(s["peak_rss_mib"], (d.get("server") or {}).get("peak_rss_mib", 0))
json.dump(d, open(out, "w"), indent=2)
def ph(name):
    p = d.get(name)
    if not p:
        return ""
    cpu = p.get("server_cpu_s_per_gib")
    cpu = f", {cpu:.2f} cpu-s/GiB" if cpu is not None else ""
    return f" {name} {p['mib_s']:.1f} MiB/s ({p['errors']} err{cpu})"
rss = f", peak RSS {d['peak_rss_mib']:.0f} MiB (idle {d['idle_rss_mib']})" if "peak_rss_mib" in d else ""
b = d["bucket"]
b = f", bucket {b['objects']} objects / {b['bytes'] / 2**20:.0f} MiB / {b['multipart_uploads']} open multipart" if b else ""
status = "FAILED" if d.get("failed") else f"rc={rc}"
if alive != "1":
    status += ", DAEMON EXITED"
if noisy:
    status += f", {len(noisy)} warn/error log lines"
if (d["bucket"] or {}).get("delete_failures"):
    status += f", {d['bucket']['delete_failures']} bucket deletes failed"
print(f"  {reg:12} {test} rep {rep}:{ph('push')}{ph('pull')}{rss}{b} [{status}]")
PY
    rm -f "$raw" "$sample" "$stopf"
    rm -rf "${TMP_ROOT:?}/$name"
}

log "running: reps=$REPS, (a) 1 x $((BIG_SIZE / MIB)) MiB / 1 client, (b) $SMALL_COUNT x 2 MiB / $SMALL_CLIENTS clients; push then pull; a fresh daemon, data dir and bucket per run"
for rep in $(seq 1 "$REPS"); do
    # Alternate which registry goes first, so neither always runs on the warmer machine.
    if ((rep % 2 == 1)); then order=(distribution stowage); else order=(stowage distribution); fi
    for reg in "${order[@]}"; do
        run_case "$reg" a "$rep" $((rep * 100 + 1)) "$BIG_SIZE" 1 1
    done
    for reg in "${order[@]}"; do
        run_case "$reg" b "$rep" $((rep * 100 + 2)) "$SMALL_SIZE" "$SMALL_COUNT" "$SMALL_CLIENTS"
    done
done

# ---------------------------------------------------------------- summary
python3 - "$OUT" "$QUICK" "$BIG_SIZE" "$SMALL_COUNT" <<'PY'
import glob, json, os, re, statistics, sys

out, quick = sys.argv[1], sys.argv[2] == "1"
big_mib, small_count = int(sys.argv[3]) // (1 << 20), int(sys.argv[4])
runs = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(out, "runs", "*.json")))]
with open(os.path.join(out, "runs.jsonl"), "w") as f:
    for r in runs:
        f.write(json.dumps(r, sort_keys=True) + "\n")
moto = json.load(open(os.path.join(out, "moto-alone.json")))

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
    return statistics.median(vals) if vals else None

def total(reg, getter):
    return sum(getter(r) for r in runs if r["registry"] == reg)

push = lambda r: r["push"]["mib_s"]
pull = lambda r: r["pull"]["mib_s"]
cpu = lambda r: r["push"]["server_cpu_s_per_gib"]
rss = lambda r: r["peak_rss_mib"]
idle = lambda r: r["idle_rss_mib"]
errs = lambda r: ((r.get("push") or {}).get("errors", 0) + (r.get("pull") or {}).get("errors", 0)
                  + (1 if r.get("failed") else 0) + (0 if r.get("daemon_alive_after", True) else 1))
noisy = lambda r: r.get("log_warn_error_lines", 0)
leftover = lambda r: (r.get("bucket") or {}).get("multipart_uploads", 0)

rows = [
    (f"(a) 1 x {big_mib} MiB, 1 client: push MiB/s", "a", push, 1, ">= 1.00x"),
    (f"(a) 1 x {big_mib} MiB, 1 client: pull MiB/s", "a", pull, 1, ">= 1.00x"),
    (f"(b) {small_count} x 2 MiB, 8 clients: push MiB/s", "b", push, 1, ">= 1.00x"),
    (f"(b) {small_count} x 2 MiB, 8 clients: pull MiB/s", "b", pull, 1, ">= 1.00x"),
    ("peak daemon RSS MiB during (a)", "a", rss, 0, "bounded"),
    ("peak daemon RSS MiB during (b)", "b", rss, 0, "bounded"),
    ("daemon RSS MiB at rest after start", "a", idle, 0, ""),
    ("server CPU s per GiB pushed (a)", "a", cpu, 2, ""),
    ("server CPU s per GiB pushed (b)", "b", cpu, 2, ""),
]
fmt = lambda v, nd: "-" if v is None else f"{v:.{nd}f}"
lines = []
mode = "quick (1 repetition)" if quick else f"{max(r['rep'] for r in runs) if runs else 0} repetitions"
lines.append(f"## S3 side-by-side results ({os.path.basename(out)}, {mode}; medians over repetitions)")
lines.append("")
lines.append("| metric | distribution | stowage | stowage / distribution | target |")
lines.append("|---|---:|---:|---:|---|")
for label, test, get, nd, target in rows:
    d, s = med("distribution", test, get), med("stowage", test, get)
    ratio = f"{s / d:.2f}x" if (s is not None and d) else "-"
    lines.append(f"| {label} | {fmt(d, nd)} | {fmt(s, nd)} | {ratio} | {target} |")
lines.append(f"| failed requests / runs (all runs) | {total('distribution', errs)} | {total('stowage', errs)} | | 0 |")
lines.append(f"| warn/error lines in daemon logs | {total('distribution', noisy)} | {total('stowage', noisy)} | | |")
lines.append(f"| open multipart uploads left in the bucket | {total('distribution', leftover)} | {total('stowage', leftover)} | | 0 |")
lines.append("")
lines.append(f"moto alone, one {moto['bytes'] >> 20} MiB object with curl: PUT {moto['put']['mib_s']:.1f} MiB/s, "
             f"GET {moto['get']['mib_s']:.1f} MiB/s.")
table = "\n".join(lines) + "\n"
open(os.path.join(out, "table.md"), "w").write(table)
print()
print(table)

# Daemon log lines at WARN/ERROR, grouped (timestamps and ids stripped), on stderr.
for reg in ("stowage", "distribution"):
    groups = {}
    for p in sorted(glob.glob(os.path.join(out, "logs", f"{reg}-*.log"))):
        for line in open(p, errors="replace"):
            if "listening on" in line or not re.search(
                    r"\b(WARN|WARNING|ERROR|error|warning|panic|fatal)\b", line, re.I):
                continue
            key = re.sub(r"\d{4}-\d\d-\d\dT[\d:.]+Z?|[0-9a-f]{8}-[0-9a-f-]{27}|[0-9a-f]{64}|\d+(\.\d+)?",
                         "#", line.strip())
            g = groups.setdefault(key, [0, line.rstrip(), os.path.basename(p)])
            g[0] += 1
    if groups:
        print(f"{reg} log lines at WARN/ERROR (grouped; count, first file, first line):", file=sys.stderr)
        for key, (n, first, fname) in sorted(groups.items(), key=lambda kv: -kv[1][0])[:20]:
            print(f"  {n:5d}  {fname}: {first[:400]}", file=sys.stderr)
PY

ln -sfn "s3-$STAMP" "$REPO_ROOT/.bench-out/s3-latest"
log "raw per-run JSON: $OUT/runs/ and $OUT/runs.jsonl; logs: $OUT/logs/; table: $OUT/table.md (also .bench-out/s3-latest/)"
