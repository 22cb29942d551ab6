#!/usr/bin/env python3
"""Garbage collection side by side: Stowage's online GC vs `docker-registry garbage-collect`
(CNCF Distribution) on the same content.

Both registries receive the same images over the OCI API (MANIFESTS manifests of ten unique
small blobs each), then half of the manifests are deleted by digest in both. Then:
  * Distribution: the registry is stopped (its GC needs exclusive access to storage) and
    `docker-registry garbage-collect CONFIG` is timed;
  * Stowage: `stowage gc run --wait --grace 0s --quarantine 0s --json` is timed against the
    running daemon (it stays online).
Both collections are checked: every blob of a deleted manifest is gone from storage and every
blob of a kept manifest remains. Repeated REPS times (fresh registries each time); medians.

Usage: benches/gc-side-by-side.py [--manifests 2000] [--reps 3]
Needs: docker-registry on PATH (scripts/install-deps.sh --test), a built stowage binary
(STOWAGE_BIN, default $CARGO_TARGET_DIR/release/stowage, else .../debug/stowage).
"""

import argparse
import concurrent.futures
import hashlib
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

BLOBS_PER_MANIFEST = 10


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sha(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


class Client:
    def __init__(self, port):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def req(self, method, path, body=None, headers=None):
        for attempt in range(3):
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                r = self.conn.getresponse()
                data = r.read()
                return r.status, dict(r.getheaders()), data
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                if attempt == 2:
                    raise
        raise RuntimeError("unreachable")


def image(i):
    layers = [f"layer {i} {k} ".encode() * 40 for k in range(BLOBS_PER_MANIFEST - 1)]
    config = json.dumps({"architecture": "amd64", "os": "linux", "n": i,
                         "rootfs": {"type": "layers", "diff_ids": [sha(l) for l in layers]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": sha(l), "size": len(l)} for l in layers],
    }).encode()
    return [config] + layers, manifest


def push(port, repo, i):
    c = Client(port)
    blobs, manifest = image(i)
    for b in blobs:
        st, h, _ = c.req("POST", f"/v2/{repo}/blobs/uploads/")
        assert st == 202, st
        loc = h.get("Location") or h.get("location")
        if loc.startswith("http"):
            loc = "/" + loc.split("/", 3)[3]
        sep = "&" if "?" in loc else "?"
        st, _, body = c.req("PUT", f"{loc}{sep}digest={sha(b)}", body=b,
                            headers={"Content-Type": "application/octet-stream"})
        assert st == 201, (st, body[:200])
    st, _, body = c.req("PUT", f"/v2/{repo}/manifests/t{i}", body=manifest,
                        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert st == 201, (st, body[:200])
    return sha(manifest), [sha(b) for b in blobs]


def delete(port, repo, digest):
    st, _, body = Client(port).req("DELETE", f"/v2/{repo}/manifests/{digest}")
    assert st == 202, (st, body[:200])


def wait_ready(port, proc, what):
    deadline = time.time() + 30
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited early")
        try:
            st, _, _ = Client(port).req("GET", "/v2/")
            if st == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    sys.exit(f"{what} not ready")


def populate(port, repo, n, workers=8):
    with concurrent.futures.ThreadPoolExecutor(workers) as ex:
        results = list(ex.map(lambda i: push(port, repo, i), range(n)))
    deleted = results[1::2]
    with concurrent.futures.ThreadPoolExecutor(workers) as ex:
        list(ex.map(lambda m: delete(port, repo, m[0]), deleted))
    kept = results[0::2]
    return kept, deleted


def blob_files(root):
    found = set()
    for dirpath, _, files in os.walk(root):
        for f in files:
            if dirpath.endswith(f) or f == "data":
                # Distribution: .../blobs/sha256/xx/<hex>/data
                hexd = os.path.basename(dirpath)
                if len(hexd) == 64:
                    found.add("sha256:" + hexd)
            elif len(f) == 64:
                found.add("sha256:" + f)
    return found


def check(kind, root, kept, deleted):
    on_disk = blob_files(root)
    keep = {b for _, bs in kept for b in bs}
    gone = {b for _, bs in deleted for b in bs}
    missing = keep - on_disk
    left = gone & on_disk
    assert not missing, f"{kind}: {len(missing)} live blobs lost"
    assert not left, f"{kind}: {len(left)} garbage blobs left"
    return len(gone)


def run_distribution(bin_, tmp, n):
    root = os.path.join(tmp, "dist")
    port = free_port()
    cfg = os.path.join(tmp, "dist.yml")
    with open(cfg, "w") as f:
        f.write(f"""version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
""")
    proc = subprocess.Popen([bin_, "serve", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(port, proc, "distribution")
        kept, deleted = populate(port, "bench/gc", n)
    finally:
        proc.terminate()
        proc.wait()
    t = time.monotonic()
    subprocess.run([bin_, "garbage-collect", cfg], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    secs = time.monotonic() - t
    freed = check("distribution", os.path.join(root, "docker/registry/v2/blobs"), kept, deleted)
    return secs, freed


def run_stowage(bin_, tmp, n):
    data = os.path.join(tmp, "stowage")
    port, admin = free_port(), free_port()
    proc = subprocess.Popen([bin_, "serve", "--data-dir", data, "--listen", f"127.0.0.1:{port}",
                             "--admin-listen", f"127.0.0.1:{admin}", "--log-level", "warn"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(port, proc, "stowage")
        kept, deleted = populate(port, "bench/gc", n)
        t = time.monotonic()
        out = subprocess.run([bin_, "gc", "run", "--wait", "--grace", "0s", "--quarantine", "0s",
                              "--json", "--server", f"127.0.0.1:{admin}"],
                             check=True, capture_output=True, text=True).stdout
        secs = time.monotonic() - t
        report = json.loads(out)
        assert report["status"] == "completed", report
        freed = check("stowage", os.path.join(data, "cas/blobs"), kept, deleted)
        assert report["totals"]["blobs_purged"] == freed, report["totals"]
        return secs, freed, report
    finally:
        proc.terminate()
        proc.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--manifests", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/stowage/target"))
    stowage = os.environ.get("STOWAGE_BIN") or next(
        (p for p in (f"{target}/release/stowage", f"{target}/debug/stowage") if os.path.exists(p)), None)
    dist = os.environ.get("DISTRIBUTION_BIN") or shutil.which("docker-registry")
    if not stowage or not dist:
        sys.exit("need a built stowage binary and docker-registry on PATH")
    rows = []
    for rep in range(args.reps):
        with tempfile.TemporaryDirectory(prefix="gc-sbs-") as tmp:
            d_secs, d_freed = run_distribution(dist, tmp, args.manifests)
            s_secs, s_freed, report = run_stowage(stowage, tmp, args.manifests)
        row = {"rep": rep, "distribution_gc_s": round(d_secs, 3), "stowage_gc_s": round(s_secs, 3),
               "ratio_distribution_over_stowage": round(d_secs / s_secs, 2),
               "blobs_freed": s_freed, "distribution_blobs_freed": d_freed,
               "stowage_phases_ms": {p["phase"]: p["ms"] for p in report["phases"]}}
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(json.dumps({
        "stowage": stowage, "distribution": dist, "manifests": args.manifests,
        "blobs": args.manifests * BLOBS_PER_MANIFEST,
        "median_distribution_gc_s": statistics.median(r["distribution_gc_s"] for r in rows),
        "median_stowage_gc_s": statistics.median(r["stowage_gc_s"] for r in rows),
        "median_ratio": statistics.median(r["ratio_distribution_over_stowage"] for r in rows),
    }))


if __name__ == "__main__":
    main()
