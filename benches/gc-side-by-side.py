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

In the same run, on the same disk:
  * the unlink floor: as many files as Stowage purged, of the same sizes, in the same layout
    (blobs/sha256/xx/<hex>), written and synced, then unlinked by a plain loop (one thread) and
    by a pool of UNLINK_THREADS threads; Stowage's GC time is reported against both;
  * manifest-put latency: one client PUTs small manifests (new tag each) back to back, first
    for a quiet window with no GC, then during a second Stowage GC run (half of the kept
    manifests deleted first); p50/p99 of each, and that run's own duration under load.

Usage: benches/gc-side-by-side.py [--manifests 2000] [--reps 3] [--workers 16] [--no-latency]
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
import threading
import time

BLOBS_PER_MANIFEST = 10
UNLINK_THREADS = 8


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
    return Pushed(i, repo, sha(manifest), [sha(b) for b in blobs])


class Pushed:
    """One pushed image: its number, repository, manifest digest and blob digests."""

    def __init__(self, i, repo, digest, blobs):
        self.i, self.repo, self.digest, self.blobs = i, repo, digest, blobs


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


def populate(port, n, repos, workers):
    """Pushes image i into repository bench/gc<i % repos> (spread over repositories, as in a real
    registry: Distribution's delete by digest reads every tag of the repository), then deletes
    every other one by digest."""
    with concurrent.futures.ThreadPoolExecutor(workers) as ex:
        results = list(ex.map(lambda i: push(port, f"bench/gc{i % repos}", i), range(n)))
    deleted = results[1::2]
    with concurrent.futures.ThreadPoolExecutor(workers) as ex:
        list(ex.map(lambda m: delete(port, m.repo, m.digest), deleted))
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
    keep = {b for m in kept for b in m.blobs}
    gone = {b for m in deleted for b in m.blobs}
    missing = keep - on_disk
    left = gone & on_disk
    assert not missing, f"{kind}: {len(missing)} live blobs lost"
    assert not left, f"{kind}: {len(left)} garbage blobs left"
    return len(gone)


def run_distribution(bin_, tmp, n, repos, workers):
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
        kept, deleted = populate(port, n, repos, workers)
    finally:
        proc.terminate()
        proc.wait()
    os.sync()
    t = time.monotonic()
    subprocess.run([bin_, "garbage-collect", cfg], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    secs = time.monotonic() - t
    freed = check("distribution", os.path.join(root, "docker/registry/v2/blobs"), kept, deleted)
    return secs, freed


def stowage_gc(bin_, admin):
    out = subprocess.run([bin_, "gc", "run", "--wait", "--grace", "0s", "--quarantine", "0s",
                          "--json", "--server", f"127.0.0.1:{admin}"],
                         check=True, capture_output=True, text=True).stdout
    report = json.loads(out)
    assert report["status"] == "completed", report
    return report


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


class PutLoop:
    """One client putting small manifests (a new tag each, two shared blobs) back to back until
    stopped; collects each PUT's latency in milliseconds."""

    def __init__(self, port, repo):
        self.c = Client(port)
        self.repo = repo
        self.n = 0
        blobs, _ = image(10**9)
        self.refs = []
        for b in blobs[:2]:
            st, h, _ = self.c.req("POST", f"/v2/{repo}/blobs/uploads/")
            assert st == 202, st
            loc = h.get("Location") or h.get("location")
            if loc.startswith("http"):
                loc = "/" + loc.split("/", 3)[3]
            sep = "&" if "?" in loc else "?"
            st, _, body = self.c.req("PUT", f"{loc}{sep}digest={sha(b)}", body=b,
                                     headers={"Content-Type": "application/octet-stream"})
            assert st == 201, (st, body[:200])
            self.refs.append((sha(b), len(b)))

    def window(self, stop):
        """PUTs until `stop` is set; returns the latencies."""
        lat = []
        (cd, cs), (ld, ls) = self.refs
        while not stop.is_set():
            self.n += 1
            m = json.dumps({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": cd, "size": cs},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                            "digest": ld, "size": ls}],
                "annotations": {"n": str(self.n)},
            }).encode()
            t = time.perf_counter()
            st, _, body = self.c.req("PUT", f"/v2/{self.repo}/manifests/lat{self.n}", body=m,
                                     headers={"Content-Type":
                                              "application/vnd.oci.image.manifest.v1+json"})
            lat.append((time.perf_counter() - t) * 1000)
            assert st == 201, (st, body[:200])
        return lat


def latency_figures(lat):
    return {"puts": len(lat), "p50_ms": round(pct(lat, 50), 2), "p99_ms": round(pct(lat, 99), 2)}


def run_stowage(bin_, tmp, n, repos, workers, latency):
    data = os.path.join(tmp, "stowage")
    port, admin = free_port(), free_port()
    proc = subprocess.Popen([bin_, "serve", "--data-dir", data, "--listen", f"127.0.0.1:{port}",
                             "--admin-listen", f"127.0.0.1:{admin}", "--log-level", "warn",
                             # The run follows the pushes at once (grace 0): without this the
                             # window that keeps blobs a client just wrote keeps them all.
                             "--gc-seen-window", "0s"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(port, proc, "stowage")
        kept, deleted = populate(port, n, repos, workers)
        os.sync()
        t = time.monotonic()
        report = stowage_gc(bin_, admin)
        secs = time.monotonic() - t
        freed = check("stowage", os.path.join(data, "cas/blobs"), kept, deleted)
        assert report["totals"]["blobs_purged"] == freed, report["totals"]
        out = {"secs": secs, "freed": freed, "report": report, "deleted": deleted}
        if latency:
            # A second run with client load: half of the kept manifests go, and one client
            # pushes through a quiet window (as long as the first run took) and then the run.
            kept2, deleted2 = kept[0::2], kept[1::2]
            with concurrent.futures.ThreadPoolExecutor(workers) as ex:
                list(ex.map(lambda m: delete(port, m.repo, m.digest), deleted2))
            os.sync()
            loop = PutLoop(port, "bench/lat")
            stop = threading.Event()
            timer = threading.Timer(max(5.0, min(secs, 60.0)), stop.set)
            timer.start()
            quiet = loop.window(stop)
            stop.clear()
            with concurrent.futures.ThreadPoolExecutor(1) as ex:
                during = ex.submit(loop.window, stop)
                t = time.monotonic()
                report2 = stowage_gc(bin_, admin)
                secs2 = time.monotonic() - t
                stop.set()
                during = during.result()
            freed2 = check("stowage (under load)", os.path.join(data, "cas/blobs"), kept2,
                           deleted2 + deleted)
            out.update(quiet=latency_figures(quiet), during=latency_figures(during),
                       loaded_secs=secs2, loaded_freed=freed2 - freed,
                       loaded_phases={p["phase"]: p["ms"] for p in report2["phases"]})
        return out
    finally:
        proc.terminate()
        proc.wait()


def unlink_floor(tmp, deleted):
    """Seconds to unlink the blobs of `deleted` (same sizes, Stowage's layout, same disk),
    written and synced first: by one thread in a plain loop, and by UNLINK_THREADS threads."""
    root = os.path.join(tmp, "floor")
    paths = []

    def write_all():
        paths.clear()
        for m in deleted:
            for b in image(m.i)[0]:
                hexd = hashlib.sha256(b).hexdigest()
                d = os.path.join(root, "blobs", "sha256", hexd[:2])
                os.makedirs(d, exist_ok=True)
                p = os.path.join(d, hexd)
                with open(p, "wb") as f:
                    f.write(b)
                paths.append(p)
        os.sync()

    write_all()
    t = time.monotonic()
    for p in paths:
        os.unlink(p)
    serial = time.monotonic() - t
    write_all()
    chunks = [paths[k::UNLINK_THREADS] for k in range(UNLINK_THREADS)]
    t = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(UNLINK_THREADS) as ex:
        list(ex.map(lambda c: [os.unlink(p) for p in c], chunks))
    parallel = time.monotonic() - t
    shutil.rmtree(root)
    return len(paths), serial, parallel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--manifests", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--repos", type=int, default=100, help="repositories the images spread over")
    ap.add_argument("--workers", type=int, default=16, help="parallel pushes while populating")
    ap.add_argument("--no-latency", action="store_true",
                    help="skip the second run with a client pushing (put latency)")
    ap.add_argument("--tmp", default=None, help="parent of the scratch folders")
    args = ap.parse_args()
    target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/stowage/target"))
    stowage = os.environ.get("STOWAGE_BIN") or next(
        (p for p in (f"{target}/release/stowage", f"{target}/debug/stowage") if os.path.exists(p)), None)
    dist = os.environ.get("DISTRIBUTION_BIN") or shutil.which("docker-registry")
    if not stowage or not dist:
        sys.exit("need a built stowage binary and docker-registry on PATH")
    rows = []
    for rep in range(args.reps):
        with tempfile.TemporaryDirectory(prefix="gc-sbs-", dir=args.tmp) as tmp:
            load0 = os.getloadavg()[0]
            d_secs, d_freed = run_distribution(dist, tmp, args.manifests, args.repos, args.workers)
            shutil.rmtree(os.path.join(tmp, "dist"))
            s = run_stowage(stowage, tmp, args.manifests, args.repos, args.workers,
                            not args.no_latency)
            files, serial, parallel = unlink_floor(tmp, s["deleted"])
        assert files == s["freed"], (files, s["freed"])
        row = {"rep": rep, "distribution_gc_s": round(d_secs, 3), "stowage_gc_s": round(s["secs"], 3),
               "ratio_distribution_over_stowage": round(d_secs / s["secs"], 2),
               "blobs_freed": s["freed"], "distribution_blobs_freed": d_freed,
               "unlink_floor_s": round(serial, 3),
               f"unlink_floor_{UNLINK_THREADS}_threads_s": round(parallel, 3),
               "stowage_over_floor": round(s["secs"] / serial, 2),
               "stowage_over_parallel_floor": round(s["secs"] / parallel, 2),
               "stowage_phases_ms": {p["phase"]: p["ms"] for p in s["report"]["phases"]},
               "loadavg_1m_at_start": round(load0, 2), "loadavg_1m_at_end": round(os.getloadavg()[0], 2)}
        if "quiet" in s:
            row.update({"put_latency_no_gc": s["quiet"], "put_latency_during_gc": s["during"],
                        "p99_ratio": round(s["during"]["p99_ms"] / s["quiet"]["p99_ms"], 2),
                        "stowage_gc_under_load_s": round(s["loaded_secs"], 3),
                        "blobs_freed_under_load": s["loaded_freed"],
                        "stowage_phases_under_load_ms": s["loaded_phases"]})
        print(json.dumps(row), flush=True)
        rows.append(row)

    def med(key, sub=None):
        vals = [(r[key][sub] if sub else r[key]) for r in rows if key in r]
        return statistics.median(vals) if vals else None

    print(json.dumps({
        "stowage": stowage, "distribution": dist, "manifests": args.manifests, "repos": args.repos,
        "blobs": args.manifests * BLOBS_PER_MANIFEST, "reps": len(rows),
        "median_distribution_gc_s": med("distribution_gc_s"),
        "median_stowage_gc_s": med("stowage_gc_s"),
        "median_ratio": med("ratio_distribution_over_stowage"),
        "median_unlink_floor_s": med("unlink_floor_s"),
        f"median_unlink_floor_{UNLINK_THREADS}_threads_s": med(f"unlink_floor_{UNLINK_THREADS}_threads_s"),
        "median_stowage_over_floor": med("stowage_over_floor"),
        "median_stowage_over_parallel_floor": med("stowage_over_parallel_floor"),
        "median_p99_no_gc_ms": med("put_latency_no_gc", "p99_ms"),
        "median_p99_during_gc_ms": med("put_latency_during_gc", "p99_ms"),
        "median_p99_ratio": med("p99_ratio"),
    }))


if __name__ == "__main__":
    main()
