#!/usr/bin/env python3
"""Integrity scrub benchmark: one Stowage site on loopback.

  1. Pushes BLOBS incompressible blobs of BLOB_MIB MiB each (monolithic uploads).
  2. Scrub throughput, unthrottled: the daemon started with `--scrub-bytes-per-second 0`,
     `stowage scrub run --json` ROUNDS times; MiB/s = bytes checked / (finished - started) as the
     report records them. Median over rounds.
  3. Pull throughput with and without a scrub at the default rate (50 MiB/s), interleaved
     ROUNDS times on a daemon with default scrub settings: CLIENTS threads pull the blobs round
     robin for SECONDS seconds, each body hashed and checked; "with" starts a run
     (`stowage scrub run --detach`) just before and checks it was still going at the end.
     Median MiB/s of each, side by side.

The page cache is not dropped (that needs root on the host): blobs just pushed may be read from
memory, so the scrub figure is an upper bound of what a disk would give. Python 3 standard
library only. Prints a summary, then one JSON line. Exit code 1 on an error.

  benches/scrub-bench.py [--bin PATH] [--blobs 32] [--blob-mib 16] [--rounds 3]
                         [--seconds 8] [--clients 4] [--tmp-root DIR] [--keep]
"""

import argparse
import hashlib
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time


def start(binary, data, extra):
    """Starts `stowage serve` on free ports; returns (process, api host:port, admin addr)."""
    p = subprocess.Popen(
        [binary, "serve", "--data-dir", data, "--listen", "127.0.0.1:0",
         "--admin-listen", "127.0.0.1:0", "--repl-listen", "127.0.0.1:0",
         "--log-level", "warn"] + extra,
        stdout=subprocess.PIPE, text=True)
    api = admin = None
    deadline = time.time() + 60
    while (api is None or admin is None) and time.time() < deadline:
        line = p.stdout.readline()
        if not line:
            raise SystemExit(f"daemon exited before listening: {p.wait()}")
        if line.startswith("stowage listening on http://"):
            api = line.split("http://", 1)[1].strip()
        elif line.startswith("stowage admin listening on "):
            admin = line.split("listening on ", 1)[1].strip()
    threading.Thread(target=lambda: [None for _ in p.stdout], daemon=True).start()
    return p, api, admin


def stop(p):
    p.terminate()
    try:
        p.wait(30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def blob(i, mib):
    """Incompressible bytes, distinct per blob (SHAKE-256 of the index)."""
    return hashlib.shake_256(f"scrub-bench-{i}".encode()).digest(mib << 20)


def push(api, repo, data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    c = http.client.HTTPConnection(api, timeout=300)
    c.request("POST", f"/v2/{repo}/blobs/uploads/")
    r = c.getresponse()
    r.read()
    if r.status != 202:
        raise SystemExit(f"upload start: {r.status}")
    loc = r.getheader("Location")
    sep = "&" if "?" in loc else "?"
    c.request("PUT", f"{loc}{sep}digest={digest}", body=data,
              headers={"Content-Type": "application/octet-stream"})
    r = c.getresponse()
    r.read()
    if r.status != 201:
        raise SystemExit(f"upload put: {r.status}")
    return digest


def scrub(binary, admin, *args):
    out = subprocess.run([binary, "scrub", *args, "--json", "--server", admin],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"stowage scrub {' '.join(args)}: {out.stderr}")
    return json.loads(out.stdout)


def pull_load(api, repo, digests, seconds, clients):
    """MiB/s of CLIENTS threads pulling `digests` round robin for `seconds`."""
    total = [0] * clients
    errors = []
    end = time.time() + seconds

    def worker(k):
        c = http.client.HTTPConnection(api, timeout=300)
        i = k
        while time.time() < end:
            d = digests[i % len(digests)]
            i += clients
            c.request("GET", f"/v2/{repo}/blobs/{d}")
            r = c.getresponse()
            h = hashlib.sha256()
            n = 0
            while chunk := r.read(1 << 20):
                h.update(chunk)
                n += len(chunk)
            if r.status != 200 or "sha256:" + h.hexdigest() != d:
                errors.append(f"{d}: {r.status}")
                return
            total[k] += n

    started = time.time()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"pull errors: {errors[:3]}")
    return sum(total) / (1 << 20) / (time.time() - started)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.expanduser(
        "~/.cache/stowage/target-scrub/debug/stowage"))
    ap.add_argument("--blobs", type=int, default=32)
    ap.add_argument("--blob-mib", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--tmp-root", default=os.path.expanduser("~/.cache/stowage/bench-tmp"))
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    os.makedirs(a.tmp_root, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=a.tmp_root, prefix="scrub-")
    binary = shutil.copy(a.bin, os.path.join(tmp, "stowage"))
    data = os.path.join(tmp, "data")
    repo = "bench/scrub"
    try:
        p, api, admin = start(binary, data, ["--scrub-interval", "0s",
                                             "--scrub-bytes-per-second", "0"])
        digests = [push(api, repo, blob(i, a.blob_mib)) for i in range(a.blobs)]
        scrub_rates = []
        for _ in range(a.rounds):
            r = scrub(binary, admin, "run")
            secs = max(r["finished_ms"] - r["started_ms"], 1) / 1000
            assert r["corrupt"] == 0 and r["blobs"] == a.blobs, r
            scrub_rates.append(r["bytes"] / (1 << 20) / secs)
        stop(p)

        p, api, admin = start(binary, data, ["--scrub-interval", "0s"])
        without, with_scrub = [], []
        for _ in range(a.rounds):
            without.append(pull_load(api, repo, digests, a.seconds, a.clients))
            scrub(binary, admin, "run", "--detach")
            with_scrub.append(pull_load(api, repo, digests, a.seconds, a.clients))
            st = scrub(binary, admin, "status")
            if st["running"] is None:
                print("warning: the scrub ended before the pull phase did", file=sys.stderr)
            # Let the run finish before the next "without" phase.
            while scrub(binary, admin, "status")["running"] is not None:
                time.sleep(0.5)
        stop(p)
        res = {
            "data_mib": a.blobs * a.blob_mib,
            "scrub_unthrottled_mib_s": round(statistics.median(scrub_rates), 1),
            "scrub_rounds_mib_s": [round(x, 1) for x in scrub_rates],
            "pull_without_scrub_mib_s": round(statistics.median(without), 1),
            "pull_with_scrub_50mib_s": round(statistics.median(with_scrub), 1),
            "pull_rounds_without": [round(x, 1) for x in without],
            "pull_rounds_with": [round(x, 1) for x in with_scrub],
            "clients": a.clients,
        }
        res["pull_ratio_with_without"] = round(
            res["pull_with_scrub_50mib_s"] / res["pull_without_scrub_mib_s"], 3)
        print(f"scrub, unthrottled: {res['scrub_unthrottled_mib_s']} MiB/s (median of {a.rounds})")
        print(f"pull, {a.clients} clients: {res['pull_without_scrub_mib_s']} MiB/s without scrub, "
              f"{res['pull_with_scrub_50mib_s']} MiB/s with a scrub at 50 MiB/s "
              f"(ratio {res['pull_ratio_with_without']})")
        print(json.dumps(res))
    finally:
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
