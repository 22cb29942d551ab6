#!/usr/bin/env bash
# What authentication costs: Stowage with and without it, and against CNCF Distribution 2.8.2
# with htpasswd, side by side on loopback, interleaved round by round. See benches/README.md,
# section "Authentication side by side".
#
#   benches/auth-side-by-side.sh [--quick] [--reps N] [--only push-pull|small]
#                                [--small-count N] [--rate-limit off|default]
#                                [--stowage-bin PATH]
#   benches/auth-side-by-side.sh --summarize .bench-out/auth-<stamp>   (tables of a run again)
#
# Part 1 (push-pull): the side-by-side.sh workloads -- (a) one 1 GiB blob, 1 client, push and
#   pull; (b) 500 x 2 MiB, 8 clients, push and pull; (c) 16 x 256 MiB, 16 clients, push --
#   against Stowage `--auth-mode none` and `--auth-mode token`.
# Part 2 (small): 1 KiB blob pushes from 16 clients, as pushes/s (then the same blobs pulled
#   back, pulls/s), against Stowage token, Stowage basic, Distribution with htpasswd
#   (bcrypt), and for reference Stowage and Distribution without authentication.
#
# Every run gets a daemon of its own with a fresh data directory, so only the daemon measured
# is running; in each round the configurations take turns to go first (Distribution's runs come
# after Stowage's: it deletes files as it goes, see below). Data directories are removed at the
# end of each round, followed by `sync` and a pause (SETTLE_S, default 65 s): on ext4 without a
# journal, inode allocation skips inodes freed in the last 60 s, which slowed whichever run came
# right after a deletion by up to a third.
# regbench authenticates as docker does (`GET /v2/`, the challenge, a token per client and
# scope, refreshed when it expires), after one untimed `regbench login` per daemon (as
# `docker login`; its time is recorded). Nothing is built here: regbench and stowage come from
# `cargo build --workspace --all-targets` (dev profile) and are copied before use.
#
# --rate-limit off (the default here) starts Stowage's authenticated daemons with
# `[limits] requests_per_second = 0`: the per-account limit (1000 requests/s by default with
# authentication) would otherwise cap one account at 500 monolithic pushes/s. `default` keeps it.
set -euo pipefail

usage() {
    sed -n '2,31p' "$0" | sed 's/^# \{0,1\}//'
}

QUICK=0
REPS=""
SUMMARIZE=""
ONLY=""
SMALL_COUNT=""
STOWAGE_BIN_ARG=""
RATE_LIMIT=off
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) QUICK=1; shift ;;
        --reps) REPS="$2"; shift 2 ;;
        --only) ONLY="$2"; shift 2 ;;
        --small-count) SMALL_COUNT="$2"; shift 2 ;;
        --stowage-bin) STOWAGE_BIN_ARG="$2"; shift 2 ;;
        --rate-limit) RATE_LIMIT="$2"; shift 2 ;;
        --summarize) SUMMARIZE="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 64 ;;
    esac
done
case "$ONLY" in ""|push-pull|small) ;; *) echo "--only takes push-pull or small" >&2; exit 64 ;; esac
case "$RATE_LIMIT" in off|default) ;; *) echo "--rate-limit takes off or default" >&2; exit 64 ;; esac

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
: "${CARGO_TARGET_DIR:=$HOME/.cache/stowage/target}"
SRC_STOWAGE="${STOWAGE_BIN_ARG:-${STOWAGE_BIN:-$CARGO_TARGET_DIR/debug/stowage}}"
SRC_REGBENCH="${REGBENCH:-$CARGO_TARGET_DIR/debug/regbench}"
DIST_BIN="${DISTRIBUTION_BIN:-$(command -v docker-registry || echo /usr/bin/docker-registry)}"
RUN_TIMEOUT="${RUN_TIMEOUT:-1800}"
BCRYPT_COST="${BCRYPT_COST:-5}"
SETTLE_S="${SETTLE_S:-65}"

for f in "$SRC_STOWAGE" "$SRC_REGBENCH" "$DIST_BIN"; do
    [[ -n "$SUMMARIZE" || -x "$f" ]] || {
        echo "not found: $f (build with: CARGO_TARGET_DIR=$CARGO_TARGET_DIR cargo build --workspace --all-targets)" >&2
        exit 1
    }
done
command -v python3 >/dev/null || { echo "python3 is required" >&2; exit 1; }

MIB=$((1024 * 1024))
if [[ $QUICK -eq 1 ]]; then
    BIG_SIZE=$((256 * MIB)); B_COUNT=100; C_SIZE=$((64 * MIB)); : "${REPS:=1}"; : "${SMALL_COUNT:=1000}"
else
    BIG_SIZE=$((1024 * MIB)); B_COUNT=500; C_SIZE=$((256 * MIB)); : "${REPS:=5}"; : "${SMALL_COUNT:=4000}"
fi
B_SIZE=$((2 * MIB)); B_CLIENTS=8; C_CLIENTS=16
SMALL_SIZE=1024; SMALL_CLIENTS=16
USER_NAME=bench
PASSWORD="bench-password-$RANDOM$RANDOM"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# ---------------------------------------------------------------- summary
summarize() { # out-dir big-size b-count c-size small-count
python3 - "$@" <<'PY'
import glob, json, os, statistics, sys

out = sys.argv[1]
big, bcount, csize, scount = (int(x) for x in sys.argv[2:6])
runs = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(out, "runs", "*.json")))]
with open(os.path.join(out, "runs.jsonl"), "w") as f:
    for r in runs:
        f.write(json.dumps(r, sort_keys=True) + "\n")

def get(r, phase, key):
    p = r.get(phase) or {}
    return p.get(key)

def vals(config, test, phase, key):
    v = {}
    for r in runs:
        if r["config"] == config and r["test"] == test and not r.get("failed"):
            x = get(r, phase, key)
            if x is not None and (get(r, phase, "errors") or 0) == 0:
                v[r["rep"]] = x
    return v

def med(v):
    return statistics.median(v.values()) if v else None

def spread(v):
    if not v:
        return "-"
    m = statistics.median(v.values())
    lo, hi = min(v.values()), max(v.values())
    return f"{lo:.0f}-{hi:.0f} ({100 * (hi - lo) / m:.0f}%)" if m else "-"

def paired(a, b):
    """Median and range of the per-round ratios a/b."""
    rs = [a[k] / b[k] for k in a if k in b and b[k]]
    if not rs:
        return "-"
    return f"{statistics.median(rs):.3f} ({min(rs):.2f}-{max(rs):.2f})"

def ratio(a, b):
    return f"{a / b:.3f}" if (a is not None and b) else "-"

def fmt(x, nd=1):
    return "-" if x is None else f"{x:.{nd}f}"

def errs(config):
    n = 0
    for r in runs:
        if r["config"] == config:
            for ph in ("push", "pull"):
                n += (r.get(ph) or {}).get("errors", 0)
            n += 1 if r.get("failed") else 0
    return n

L = []
reps = sorted({r["rep"] for r in runs})
L.append(f"## Authentication side by side ({os.path.basename(out)}; {len(reps)} rounds; medians)")
L.append("")
if any(r["test"] in "abc" for r in runs):
    L.append("### Stowage: auth on (`--auth-mode token`) vs off")
    L.append("")
    L.append("| metric | auth off | auth on (token) | on / off (of medians) | on / off per round: median (range) | spread off | spread on |")
    L.append("|---|---:|---:|---:|---:|---:|---:|")
    rows = [
        (f"(a) 1 x {big >> 20} MiB, 1 client: push MiB/s", "a", "push", "mib_s"),
        (f"(a) 1 x {big >> 20} MiB, 1 client: pull MiB/s", "a", "pull", "mib_s"),
        (f"(b) {bcount} x 2 MiB, 8 clients: push MiB/s", "b", "push", "mib_s"),
        (f"(b) {bcount} x 2 MiB, 8 clients: pull MiB/s", "b", "pull", "mib_s"),
        (f"(c) 16 x {csize >> 20} MiB, 16 clients: push MiB/s", "c", "push", "mib_s"),
    ]
    for label, test, ph, key in rows:
        off, on = vals("stowage-off", test, ph, key), vals("stowage-token", test, ph, key)
        L.append(f"| {label} | {fmt(med(off))} | {fmt(med(on))} | {ratio(med(on), med(off))} | {paired(on, off)} | {spread(off)} | {spread(on)} |")
    for test in "abc":
        off = vals("stowage-off", test, "push", "server_cpu_s_per_gib")
        on = vals("stowage-token", test, "push", "server_cpu_s_per_gib")
        L.append(f"| server CPU s per GiB pushed ({test}) | {fmt(med(off), 2)} | {fmt(med(on), 2)} | {ratio(med(on), med(off))} | {paired(on, off)} | | |")
    L.append(f"| failed requests (all runs) | {errs('stowage-off')} | {errs('stowage-token')} | | | | |")
    L.append("")
if any(r["test"] == "s" for r in runs):
    L.append(f"### {scount} x 1 KiB blobs, 16 clients: pushes/s, then pulls/s")
    L.append("")
    L.append("| configuration | pushes/s | spread: min-max (of median) | pulls/s | spread | server CPU ms per push / per pull | push latency p50 / p99 ms | failed |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    names = ["stowage-token", "stowage-basic", "distribution-htpasswd", "stowage-off", "distribution-off"]
    S, P = {}, {}
    for c in names:
        v = vals(c, "s", "push", "ops_per_s")
        pv = vals(c, "s", "pull", "ops_per_s")
        S[c], P[c] = v, pv
        cpu = {k: x * 1000 / scount for k, x in vals(c, "s", "push", "server_cpu_s").items()}
        pcpu = {k: x * 1000 / scount for k, x in vals(c, "s", "pull", "server_cpu_s").items()}
        p50, p99 = vals(c, "s", "push", "lat_p50_ms"), vals(c, "s", "push", "lat_p99_ms")
        L.append(f"| {c} | {fmt(med(v), 0)} | {spread(v)} | {fmt(med(pv), 0)} | {spread(pv)} | {fmt(med(cpu), 2)} / {fmt(med(pcpu), 2)} | {fmt(med(p50))} / {fmt(med(p99))} | {errs(c)} |")
    L.append("")
    L.append("| ratio | pushes/s: of medians | per round: median (range) | pulls/s: of medians | per round: median (range) |")
    L.append("|---|---:|---:|---:|---:|")
    for a, b in [("stowage-token", "distribution-htpasswd"), ("stowage-basic", "distribution-htpasswd"),
                 ("stowage-token", "stowage-off"), ("stowage-basic", "stowage-off"),
                 ("distribution-htpasswd", "distribution-off")]:
        L.append(f"| {a} / {b} | {ratio(med(S[a]), med(S[b]))} | {paired(S[a], S[b])} | {ratio(med(P[a]), med(P[b]))} | {paired(P[a], P[b])} |")
    L.append("")
logins = {}
for r in runs:
    if r.get("login"):
        logins.setdefault(r["config"], []).append(r["login"]["total_ms"])
if logins:
    L.append("Untimed login before each run (`regbench login`, cold credential check), median ms: " +
             ", ".join(f"{c} {statistics.median(v):.0f}" for c, v in sorted(logins.items())))
    L.append("")
loads = [float(r["loadavg_before"].split()[0]) for r in runs if r.get("loadavg_before")]
if loads:
    L.append(f"1-minute load average before the runs: median {statistics.median(loads):.2f}, "
             f"range {min(loads):.2f}-{max(loads):.2f} (2 cores)")
table = "\n".join(L) + "\n"
open(os.path.join(out, "table.md"), "w").write(table)
print()
print(table)
PY
}

if [[ -n "$SUMMARIZE" ]]; then
    read -r a b c d < <(python3 -c '
import json, sys
m = json.load(open(sys.argv[1] + "/meta.json"))
print(m.get("big_size", 1 << 30), m.get("b_count", 500), m.get("c_size", 256 << 20), m["small_count"])
' "$SUMMARIZE")
    summarize "$SUMMARIZE" "$a" "$b" "$c" "$d"
    exit 0
fi

TMP_ROOT="$(mktemp -d "${TMPDIR:-/tmp}/stowage-auth-bench.XXXXXX")"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
OUT="$REPO_ROOT/.bench-out/auth-$STAMP"
mkdir -p "$OUT/runs" "$OUT/logs"

declare -a STARTED_PIDS=()
CUR_PID=""
stop_pid() { # pid
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local rc=$?
    set +e
    local pid
    for pid in "${STARTED_PIDS[@]}"; do
        stop_pid "$pid"
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

# Copies, so that a rebuild during the run does not change what is measured.
STOWAGE_BIN="$TMP_ROOT/stowage"
REGBENCH="$TMP_ROOT/regbench"
cp "$SRC_STOWAGE" "$STOWAGE_BIN"
cp "$SRC_REGBENCH" "$REGBENCH"
export REGBENCH_PASSWORD="$PASSWORD"

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

http_code() {
    curl -s -o /dev/null -m 2 -w '%{http_code}' "$1" || true
}

wait_ready() { # name url pid logfile
    local name=$1 url=$2 pid=$3 logf=$4 code
    for _ in $(seq 1 300); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "$name exited during startup; log:" >&2
            tail -n 50 "$logf" >&2 || true
            return 1
        fi
        code="$(http_code "$url/v2/")"
        [[ "$code" == 200 || "$code" == 401 ]] && return 0
        sleep 0.2
    done
    echo "$name did not answer on $url/v2/ within 60 s; log:" >&2
    tail -n 50 "$logf" >&2 || true
    return 1
}

# ---------------------------------------------------------------- htpasswd (bcrypt)
HTPASSWD="$TMP_ROOT/htpasswd"
make_htpasswd() {
    if command -v htpasswd >/dev/null; then
        htpasswd -B -C "$BCRYPT_COST" -b -c "$HTPASSWD" "$USER_NAME" "$PASSWORD" 2>/dev/null
        HTPASSWD_TOOL="htpasswd -B -C $BCRYPT_COST"
        return
    fi
    local py=python3
    if "$HOME/.cache/stowage/venv/bin/python" -c 'import bcrypt' 2>/dev/null; then
        py="$HOME/.cache/stowage/venv/bin/python"
    fi
    HTPASSWD_TOOL="$("$py" -W ignore - "$HTPASSWD" "$USER_NAME" "$BCRYPT_COST" <<'PY'
import os, sys
path, user, cost = sys.argv[1], sys.argv[2], int(sys.argv[3])
pw = os.environ["REGBENCH_PASSWORD"]
try:
    import bcrypt
    h = bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=cost)).decode()
    tool = f"python bcrypt {bcrypt.__version__}"
except ImportError:
    import crypt  # libxcrypt's bcrypt ($2b$), Python <= 3.12
    h = crypt.crypt(pw, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1 << cost))
    tool = "python crypt (libxcrypt)"
assert h and h.startswith("$2"), "no bcrypt available: install apache2-utils (htpasswd)"
open(path, "w").write(f"{user}:{h}\n")
print(f"{tool}, cost {cost}")
PY
)"
}
HTPASSWD_TOOL=""
make_htpasswd
log "htpasswd: $(cut -c1-20 "$HTPASSWD")... ($HTPASSWD_TOOL)"

# ---------------------------------------------------------------- daemons
# Each start_* sets CUR_PID, CUR_URL, CUR_LOG, CUR_DIR.
start_distribution() { # run-name auth(none|htpasswd)
    local name=$1 auth=$2 port cfg
    port="$(free_port)"
    CUR_DIR="$TMP_ROOT/$name"
    cfg="$OUT/logs/$name.yml"
    CUR_LOG="$OUT/logs/$name.log"
    mkdir -p "$CUR_DIR"
    cat >"$cfg" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $CUR_DIR
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$port
  secret: auth-side-by-side-bench
EOF
    if [[ "$auth" == htpasswd ]]; then
        cat >>"$cfg" <<EOF
auth:
  htpasswd:
    realm: basic-realm
    path: $HTPASSWD
EOF
    fi
    (cd "$CUR_DIR" && exec env -u REGBENCH_PASSWORD "$DIST_BIN" serve "$cfg") >"$CUR_LOG" 2>&1 &
    CUR_PID=$!
    STARTED_PIDS+=("$CUR_PID")
    CUR_URL="http://127.0.0.1:$port"
    wait_ready "$name" "$CUR_URL" "$CUR_PID" "$CUR_LOG"
}

start_stowage() { # run-name auth-mode(none|token|basic)
    local name=$1 mode=$2
    CUR_DIR="$TMP_ROOT/$name"
    CUR_LOG="$OUT/logs/$name.log"
    : >"$CUR_LOG"
    if [[ "$mode" != none ]]; then
        STOWAGE_NEW_PASSWORD="$PASSWORD" "$STOWAGE_BIN" user add "$USER_NAME" --admin \
            --data-dir "$CUR_DIR" >>"$CUR_LOG" 2>&1
    fi
    mkdir -p "$CUR_DIR"
    local extra=()
    if [[ "$mode" != none && "$RATE_LIMIT" == off ]]; then
        printf '[limits]\nrequests_per_second = 0\n' >"$TMP_ROOT/stowage-limits.toml"
        extra+=(--config "$TMP_ROOT/stowage-limits.toml")
    fi
    env -u REGBENCH_PASSWORD "$STOWAGE_BIN" serve "${extra[@]+"${extra[@]}"}" --data-dir "$CUR_DIR" \
        --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --repl-listen 127.0.0.1:0 \
        --auth-mode "$mode" --log-level warn >>"$CUR_LOG" 2>&1 &
    CUR_PID=$!
    STARTED_PIDS+=("$CUR_PID")
    CUR_URL=""
    for _ in $(seq 1 300); do
        CUR_URL="$(sed -n 's/^stowage listening on \(http:[^ ]*\).*/\1/p' "$CUR_LOG" | head -n1 || true)"
        [[ -n "$CUR_URL" ]] && break
        kill -0 "$CUR_PID" 2>/dev/null || break
        sleep 0.2
    done
    [[ -n "$CUR_URL" ]] || { echo "$name: no listening address; log:" >&2; tail -n 50 "$CUR_LOG" >&2; return 1; }
    wait_ready "$name" "$CUR_URL" "$CUR_PID" "$CUR_LOG"
}

declare -a ROUND_DIRS=()
stop_current() {
    stop_pid "$CUR_PID"
    local keep=()
    local p
    for p in "${STARTED_PIDS[@]}"; do
        [[ "$p" != "$CUR_PID" ]] && keep+=("$p")
    done
    STARTED_PIDS=("${keep[@]+"${keep[@]}"}")
    ROUND_DIRS+=("$CUR_DIR")
}

# Removes the round's data, then lets the freed inodes age (see the top of this file).
settle() {
    if [[ ${#ROUND_DIRS[@]} -gt 0 ]]; then
        rm -rf "${ROUND_DIRS[@]}"
    fi
    ROUND_DIRS=()
    sync
    log "settling ${SETTLE_S} s after deleting data"
    sleep "$SETTLE_S"
}

# config name -> "kind auth-mode regbench-auth"
declare -A CFG=(
    [stowage-off]="stowage none none"
    [stowage-token]="stowage token token"
    [stowage-basic]="stowage basic basic"
    [distribution-htpasswd]="distribution htpasswd basic"
    [distribution-off]="distribution none none"
)

start_config() { # config run-name
    local kind mode
    read -r kind mode _ <<<"${CFG[$1]}"
    if [[ "$kind" == stowage ]]; then
        start_stowage "$2" "$mode"
    else
        start_distribution "$2" "$mode"
    fi
}

python3 - "$OUT/meta.json" "$QUICK" "$REPS" "$SRC_STOWAGE" "$DIST_BIN" \
    "$("$DIST_BIN" --version 2>&1 | head -n1)" "$(sha256sum "$STOWAGE_BIN" | cut -d' ' -f1)" \
    "$(nproc)" "$(uname -r)" "$HTPASSWD_TOOL" "$SMALL_COUNT" "$RATE_LIMIT" "$BIG_SIZE" "$B_COUNT" "$C_SIZE" <<'PY'
import json, sys, datetime
a = sys.argv
json.dump({
    "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    "quick": a[2] == "1", "reps": int(a[3]), "stowage_bin": a[4], "distribution_bin": a[5],
    "distribution_version": a[6], "stowage_sha256": a[7], "nproc": int(a[8]), "kernel": a[9],
    "htpasswd": a[10], "small_count": int(a[11]), "stowage_rate_limit": a[12],
    "big_size": int(a[13]), "b_count": int(a[14]), "c_size": int(a[15]),
}, open(a[1], "w"), indent=2)
PY

# ---------------------------------------------------------------- one run
run_case() { # config test rep seed size count clients pull(0/1)
    local config=$1 test=$2 rep=$3 seed=$4 size=$5 count=$6 clients=$7 pull=$8
    local name="$config-$test-r$rep"
    local raw="$OUT/runs/$name.raw" json="$OUT/runs/$name.json" errf="$OUT/runs/$name.stderr"
    local rauth
    read -r _ _ rauth <<<"${CFG[$config]}"
    start_config "$config" "$name"
    local login_json="{}"
    if [[ "$rauth" != none ]]; then
        # As `docker login`: verifies the credentials once (a cold password check), untimed.
        login_json="$("$REGBENCH" login --url "$CUR_URL" --auth "$rauth" --user "$USER_NAME")"
    fi
    local args=(push-pull --url "$CUR_URL" --repo "bench/$test-r$rep-s$seed"
        --blob-size "$size" --count "$count" --clients "$clients" --seed "$seed"
        --server-pid "$CUR_PID" --interval-ms 100 --auth "$rauth" --json)
    [[ "$rauth" != none ]] && args+=(--user "$USER_NAME")
    [[ "$pull" == 1 ]] && args+=(--pull)
    # Same page-cache state for every run (Distribution does not fsync). Not timed.
    sync
    local load rc=0
    load="$(cut -d' ' -f1-3 /proc/loadavg)"
    timeout "$RUN_TIMEOUT" "$REGBENCH" "${args[@]}" >"$raw" 2>"$errf" || rc=$?
    if [[ -s "$errf" ]]; then
        log "$name: regbench stderr (first lines):"
        head -n 5 "$errf" >&2
    else
        rm -f "$errf"
    fi
    # Warnings other than the expected ones (Distribution logs every challenge it sends).
    local warns
    warns="$(grep -iE 'warn|error' "$CUR_LOG" | grep -vE 'no system-admin user exists|error authorizing context: basic authentication challenge' | head -n 5 || true)"
    if [[ -n "$warns" ]]; then
        log "$name: warnings/errors in the daemon log:"
        printf '%s\n' "$warns" >&2
    fi
    stop_current
    python3 - "$raw" "$json" "$config" "$test" "$rep" "$rc" "$load" "$login_json" <<'PY' >&2
import json, sys
raw, out, config, test, rep, rc, load, login = sys.argv[1:]
try:
    d = json.load(open(raw))
except Exception:
    d = {"failed": True}
d.update({"config": config, "test": test, "rep": int(rep), "rc": int(rc),
          "loadavg_before": load, "login": json.loads(login)})
json.dump(d, open(out, "w"), indent=2)
def ph(name):
    p = d.get(name)
    if not p:
        return ""
    s = f" {name} {p['mib_s']:.1f} MiB/s {p['ops_per_s']:.0f}/s ({p['errors']} err"
    if p.get("server_cpu_s") is not None:
        s += f", server {p['server_cpu_s']:.2f} cpu-s"
    a = p.get("auth")
    if a:
        s += f", {a['token_fetches']} tokens, {a['reauth_retries']} 401-retries"
    return s + ")"
status = "FAILED" if d.get("failed") else f"rc={rc}"
print(f"  {config:22} {test} rep {rep}:{ph('push')}{ph('pull')} [load {load}; {status}]")
PY
    rm -f "$raw"
}

# Round r runs the configurations starting at offset r (taking turns to go first).
rotated() { # rep config...
    local rep=$1; shift
    local n=$# i
    local arr=("$@")
    for ((i = 0; i < n; i++)); do
        echo "${arr[$(((i + rep - 1) % n))]}"
    done
}

PART1=(stowage-off stowage-token)
PART2_STOWAGE=(stowage-token stowage-basic stowage-off)
PART2_DIST=(distribution-htpasswd distribution-off)
log "output: $OUT; reps=$REPS; stowage rate limit: $RATE_LIMIT; part 1: (a) 1 x $((BIG_SIZE / MIB)) MiB, (b) $B_COUNT x 2 MiB / $B_CLIENTS clients, (c) $C_CLIENTS x $((C_SIZE / MIB)) MiB; part 2: $SMALL_COUNT x 1 KiB / $SMALL_CLIENTS clients"
settle
for rep in $(seq 1 "$REPS"); do
    [[ $rep -gt 1 ]] && settle
    if [[ "$ONLY" != small ]]; then
        for cfg in $(rotated "$rep" "${PART1[@]}"); do
            run_case "$cfg" a "$rep" $((rep * 100 + 1)) "$BIG_SIZE" 1 1 1
        done
        for cfg in $(rotated "$rep" "${PART1[@]}"); do
            run_case "$cfg" b "$rep" $((rep * 100 + 2)) "$B_SIZE" "$B_COUNT" "$B_CLIENTS" 1
        done
        for cfg in $(rotated "$rep" "${PART1[@]}"); do
            run_case "$cfg" c "$rep" $((rep * 100 + 3)) "$C_SIZE" "$C_CLIENTS" "$C_CLIENTS" 0
        done
    fi
    if [[ "$ONLY" != push-pull ]]; then
        for cfg in $(rotated "$rep" "${PART2_STOWAGE[@]}") $(rotated "$rep" "${PART2_DIST[@]}"); do
            run_case "$cfg" s "$rep" $((rep * 100 + 4)) "$SMALL_SIZE" "$SMALL_COUNT" "$SMALL_CLIENTS" 1
        done
    fi
done

summarize "$OUT" "$BIG_SIZE" "$B_COUNT" "$C_SIZE" "$SMALL_COUNT"

ln -sfn "auth-$STAMP" "$REPO_ROOT/.bench-out/auth-latest"
log "raw per-run JSON: $OUT/runs/ and $OUT/runs.jsonl; table: $OUT/table.md (also .bench-out/auth-latest/)"
