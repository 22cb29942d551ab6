#!/usr/bin/env python3
"""Replication benchmarks: two Stowage sites on loopback, site A pushing to site B.

Subcommands (each prints a human summary, then one JSON line as its last output line):

  throughput [--mib 1024] [--layers 8] [--rounds 3]
      One image of MIB MiB in LAYERS equal incompressible layers. Per round, with fresh sites:
      (a) direct: the image is pushed over HTTP to a lone site B with 4 parallel connections
          (4 = the replication peer's `concurrency`), timed from the first request to the
          manifest PUT returning;
      (b) replication: the same image is pushed to A (not timed); timed from the manifest PUT at
          A returning until a HEAD of the tag at B answers 200 (polled every 20 ms). The peer
          must then report state in_sync with lag_events 0 and bytes_sent == the image's blob
          bytes.
      MiB/s of both, per round and median; the ratio replication/direct (median of per-round
      ratios; target >= 0.80).

  lag [--rate 20] [--seconds 30]
      After a warm-up that puts a 1 MiB base layer in every repository at both sites, pushes
      RATE images a second for SECONDS seconds to A (each: a fresh 4 KiB layer, a config and a
      manifest under a new tag; repositories lag/app0..9). Lag of one push = from its manifest
      PUT at A returning to the first HEAD of that tag at B answering 200 with the expected
      digest. p50/p90/p99/max (target p99 < 1000 ms).

  shared-base [--images 50] [--base-mib 32]
      Pushes IMAGES images to A (shared/app<i>:latest), all on the same BASE-MIB base layer plus
      their own small layer and config; waits for in_sync and checks that bytes_sent equals the
      unique blob bytes (the base crossed once) and bytes_skipped the other copies of the base.

  all     the three above in turn (same options).

Python 3 standard library only. Daemons: `--bin` (default
$HOME/.cache/stowage/target/debug/stowage; copied into the temporary folder first so a rebuild
during the run cannot swap it), started with port 0 and stopped by PID at the end. Temporary
data goes under $HOME/.cache/stowage/bench-tmp (--tmp-root) and is removed afterwards unless
--keep. Exit code: 0 when the run completed (targets met or not), 1 on an error.
"""

import argparse
import hashlib
import http.client
import json
import os
import queue
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

MiB = 1 << 20
CHUNK = 1 << 20          # bytes per streamed piece of a layer
HDR = 32                 # unique prefix of every chunk (makes every chunk, hence layer, unique)
POOL = 64 * MiB          # shared pseudo-random pool the rest of each chunk is sliced from
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DEFAULT_BIN = os.path.join(os.path.expanduser("~"), ".cache/stowage/target/debug/stowage")
DEFAULT_TMP = os.path.join(os.path.expanduser("~"), ".cache/stowage/bench-tmp")
HTTP_TIMEOUT = 300       # seconds per socket operation


class BenchError(Exception):
    pass


def log(msg=""):
    print(msg, flush=True)


def pct(values, p):
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(-(-p * len(s) // 100)) - 1))
    return s[k]


# ---------------------------------------------------------------------------------------------
# Content


class Pool:
    """One pseudo-random buffer (seeded, so runs are reproducible) that layers are sliced from."""

    def __init__(self, seed=1):
        self.buf = memoryview(random.Random(seed).randbytes(POOL + CHUNK))


_pool = None


def pool():
    global _pool
    if _pool is None:
        _pool = Pool()
    return _pool


class Layer:
    """A blob streamed in CHUNK pieces without being held whole: piece j of layer `key` is a
    32-byte header (sha256 of key and j) followed by a slice of the pool at an offset that
    depends on (key, j). Distinct keys give distinct bytes and digests. The digest is computed
    once, by streaming, before anything is timed."""

    def __init__(self, key, size):
        self.key = key
        self.size = size
        h = hashlib.sha256()
        for piece in self.pieces():
            h.update(piece)
        self.digest = "sha256:" + h.hexdigest()

    def pieces(self):
        buf = pool().buf
        left, j = self.size, 0
        while left > 0:
            n = min(CHUNK, left)
            head = hashlib.sha256(f"{self.key}/{j}".encode()).digest()[: min(HDR, n)]
            yield head
            if n > len(head):
                off = int.from_bytes(hashlib.sha256(f"off {self.key}/{j}".encode()).digest()[:8],
                                     "little") % POOL
                yield buf[off: off + n - len(head)]
            left -= n
            j += 1


class Small:
    """A small blob held in memory."""

    def __init__(self, data):
        self.data = data
        self.size = len(data)
        self.digest = "sha256:" + hashlib.sha256(data).hexdigest()

    def pieces(self):
        yield self.data


def small_layer(key, size):
    data = bytearray()
    i = 0
    while len(data) < size:
        data += hashlib.sha256(f"small {key} {i}".encode()).digest()
        i += 1
    return Small(bytes(data[:size]))


def config_blob(key, layers):
    return Small(json.dumps({
        "architecture": "amd64", "os": "linux", "created_by": f"repl-bench {key}",
        "rootfs": {"type": "layers", "diff_ids": [l.digest for l in layers]},
    }).encode())


def manifest_doc(config, layers):
    body = json.dumps({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config.digest, "size": config.size},
        "layers": [{"mediaType": OCI_LAYER, "digest": l.digest, "size": l.size} for l in layers],
    }).encode()
    return body, "sha256:" + hashlib.sha256(body).hexdigest()


class Image:
    def __init__(self, key, layers):
        self.layers = layers
        self.config = config_blob(key, layers)
        self.manifest, self.digest = manifest_doc(self.config, layers)

    def blobs(self):
        return self.layers + [self.config]

    def blob_bytes(self):
        return sum(b.size for b in self.blobs())


# ---------------------------------------------------------------------------------------------
# HTTP


class Client:
    """One keep-alive HTTP/1.1 connection to an OCI API."""

    def __init__(self, addr):
        self.host, port = addr.rsplit(":", 1)
        self.port = int(port)
        self.conn = None

    def _connect(self):
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=HTTP_TIMEOUT)

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def req(self, method, path, body=None, headers=None, retry=True):
        """Returns (status, headers with lower-case names, body). Retries once on a dropped
        keep-alive connection when the body can be replayed (not a one-shot generator)."""
        attempts = 2 if retry else 1
        for attempt in range(attempts):
            if self.conn is None:
                self._connect()
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                r = self.conn.getresponse()
                data = r.read()
                hdrs = {k.lower(): v for k, v in r.getheaders()}
                if r.will_close:
                    self.close()
                return r.status, hdrs, data
            except (http.client.HTTPException, OSError) as e:
                self.close()
                if attempt == attempts - 1:
                    raise BenchError(f"{method} http://{self.host}:{self.port}{path}: {e!r}")
        raise AssertionError("unreachable")

    def upload(self, repo, blob):
        """Monolithic upload: POST, then PUT of the whole body to the Location."""
        st, h, body = self.req("POST", f"/v2/{repo}/blobs/uploads/")
        if st != 202 or "location" not in h:
            raise BenchError(f"POST upload {repo}: {st} {body[:300]!r}")
        loc = h["location"]
        if loc.startswith("http://") or loc.startswith("https://"):
            u = urllib.parse.urlsplit(loc)
            loc = u.path + ("?" + u.query if u.query else "")
        sep = "&" if "?" in loc else "?"
        body_arg = blob.data if isinstance(blob, Small) else blob.pieces()
        st, _, body = self.req("PUT", f"{loc}{sep}digest={blob.digest}", body=body_arg,
                               headers={"Content-Type": "application/octet-stream",
                                        "Content-Length": str(blob.size)},
                               retry=isinstance(blob, Small))
        if st != 201:
            raise BenchError(f"PUT blob {repo} {blob.digest}: {st} {body[:300]!r}")

    def put_manifest(self, repo, tag, image):
        st, _, body = self.req("PUT", f"/v2/{repo}/manifests/{tag}", body=image.manifest,
                               headers={"Content-Type": OCI_MANIFEST})
        if st != 201:
            raise BenchError(f"PUT manifest {repo}:{tag}: {st} {body[:300]!r}")

    def head_manifest(self, repo, ref):
        """Digest the site serves for repo:ref, or None on 404."""
        st, h, body = self.req("HEAD", f"/v2/{repo}/manifests/{ref}",
                               headers={"Accept": OCI_MANIFEST})
        if st == 200:
            return h.get("docker-content-digest", "")
        if st == 404:
            return None
        raise BenchError(f"HEAD manifest {repo}:{ref}: {st} {body[:300]!r}")


def push_blobs(addr, repo, blobs, clients):
    """Uploads blobs over `clients` parallel connections (a shared queue); raises the first
    error after all workers stop."""
    q = queue.Queue()
    for b in blobs:
        q.put(b)
    errors = []

    def worker():
        c = Client(addr)
        try:
            while not errors:
                try:
                    b = q.get_nowait()
                except queue.Empty:
                    return
                c.upload(repo, b)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
        finally:
            c.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(max(1, clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def push_image(addr, repo, tag, image, clients=4, skip=()):
    """Layers (in parallel) and config, then the manifest. Returns the monotonic time at which
    the manifest PUT returned."""
    push_blobs(addr, repo, [b for b in image.blobs() if b.digest not in skip], clients)
    c = Client(addr)
    try:
        c.put_manifest(repo, tag, image)
        return time.monotonic()
    finally:
        c.close()


# ---------------------------------------------------------------------------------------------
# Daemons


class Env:
    """Temporary folder, the copied binary, and every daemon started (stopped by PID)."""

    def __init__(self, args):
        self.args = args
        if not os.path.isfile(args.bin):
            raise BenchError(f"no stowage binary at {args.bin} (build it, or pass --bin)")
        os.makedirs(args.tmp_root, exist_ok=True)
        self.root = tempfile.mkdtemp(prefix="repl-bench-", dir=args.tmp_root)
        self.bin = os.path.join(self.root, "stowage")
        try:
            shutil.copy2(args.bin, self.bin)
        except OSError:
            shutil.rmtree(self.root, ignore_errors=True)
            raise
        self.daemons = []
        self.seq = 0

    def new_dir(self, label):
        self.seq += 1
        d = os.path.join(self.root, f"{self.seq:02d}-{label}")
        os.makedirs(d)
        return d

    def start(self, label, site, peer_admin=None, concurrency=4, cpus=None):
        return Daemon(self, label, site, peer_admin, concurrency, cpus)

    def stop_all(self):
        for d in self.daemons:
            d.stop()

    def close(self):
        self.stop_all()
        if self.args.keep:
            log(f"kept temporary data in {self.root}")
        else:
            shutil.rmtree(self.root, ignore_errors=True)

    def dump_logs(self, lines=40):
        for d in self.daemons:
            d.dump_log(lines)


class Daemon:
    def __init__(self, env, label, site, peer_admin, concurrency, cpus=None):
        self.env = env
        self.label = label
        self.dir = env.new_dir(label)
        self.log_path = os.path.join(self.dir, "stderr.log")
        cfg = f'[site]\nname = "{site}"\n'
        if peer_admin:
            cfg += ('\n[[replication.peers]]\nname = "b"\n'
                    f'endpoint = "http://{peer_admin}"\n'
                    'direction = "push"\n'
                    'anti_entropy_interval = "0s"\n'
                    f'concurrency = {concurrency}\n')
        self.cfg_path = os.path.join(self.dir, "config.toml")
        with open(self.cfg_path, "w") as f:
            f.write(cfg)
        self.api = self.admin = None
        self.stdout_lines = []
        self.ready = threading.Event()
        self.stopped = False
        self.errf = open(self.log_path, "wb")
        # With --cpu-split each site runs on a CPU of its own (taskset), as two machines would.
        pin = ["taskset", "-c", cpus] if cpus is not None else []
        self.proc = subprocess.Popen(
            pin + [env.bin, "serve", "--data-dir", os.path.join(self.dir, "data"),
             "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
             "--config", self.cfg_path, "--log-level", "warn"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.errf)
        env.daemons.append(self)
        threading.Thread(target=self._drain, daemon=True).start()
        deadline = time.monotonic() + 60
        while not self.ready.wait(0.05):
            if self.proc.poll() is not None:
                raise BenchError(f"daemon {label} exited with {self.proc.returncode} at start")
            if time.monotonic() > deadline:
                raise BenchError(f"daemon {label}: no listening addresses on stdout after 60 s")
        c = Client(self.api)
        try:
            while True:
                try:
                    if c.req("GET", "/v2/")[0] == 200:
                        break
                except BenchError:
                    pass
                if time.monotonic() > deadline:
                    raise BenchError(f"daemon {label}: GET /v2/ not 200 after 60 s")
                time.sleep(0.05)
        finally:
            c.close()

    def _drain(self):
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            if len(self.stdout_lines) < 1000:
                self.stdout_lines.append(line)
            if line.startswith("stowage admin listening on http://"):
                self.admin = line.rsplit("http://", 1)[1]
            elif line.startswith("stowage listening on http://"):
                self.api = line.rsplit("http://", 1)[1]
            if self.api and self.admin:
                self.ready.set()

    def status(self):
        """`stowage repl status --json` of this site."""
        try:
            r = subprocess.run([self.env.bin, "repl", "status", "--json",
                                "--server", f"http://{self.admin}"],
                               capture_output=True, timeout=30)
        except subprocess.TimeoutExpired:
            raise BenchError(f"repl status on {self.label}: no answer in 30 s")
        if r.returncode != 0:
            raise BenchError(f"repl status on {self.label}: exit {r.returncode}: "
                             f"{r.stderr.decode(errors='replace').strip()}")
        return json.loads(r.stdout)

    def peer(self, name="b"):
        for p in self.status()["peers"]:
            if p["name"] == name:
                return p
        raise BenchError(f"{self.label}: no peer {name} in repl status")

    def wait_in_sync(self, timeout, interval=0.1, name="b"):
        """Polls status until peer `name` is in_sync with lag 0 and its cursor has reached the
        site's feed sequence of the same status answer (the peer's state is only refreshed when
        the replicator reads the feed, so right after a push it can still show the previous
        in_sync); returns (peer, seconds)."""
        t0 = time.monotonic()
        while True:
            st = self.status()
            p = next((x for x in st["peers"] if x["name"] == name), None)
            if p is None:
                raise BenchError(f"{self.label}: no peer {name} in repl status")
            if (p["state"] == "in_sync" and p["lag_events"] == 0
                    and p["cursor"] >= st["feed_sequence"]):
                return p, time.monotonic() - t0
            if self.proc.poll() is not None:
                raise BenchError(f"daemon {self.label} exited with {self.proc.returncode}")
            if time.monotonic() - t0 > timeout:
                raise BenchError(f"{self.label}: peer {name} not in sync after {timeout:.0f} s: "
                                 f"{json.dumps(p)}")
            time.sleep(interval)

    def cpu_s(self):
        """CPU seconds (user + system, all threads) the daemon has used so far."""
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return float("nan")

    def log_lines(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace").splitlines()
        except OSError:
            return []

    def dump_log(self, lines=40):
        tail = self.log_lines()[-lines:]
        print(f"--- daemon {self.label} (pid {self.proc.pid}, rc {self.proc.poll()}) "
              f"stderr tail, {self.log_path}:", file=sys.stderr)
        for l in tail:
            print("    " + l, file=sys.stderr)
        if not tail:
            print("    (empty)", file=sys.stderr)

    def stop(self):
        if self.stopped:
            return
        self.stopped = True
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.errf.close()


def log_report(daemons, out):
    """Warn/error lines the daemons logged (they run at --log-level warn: every line counts)."""
    rep = {}
    for d in daemons:
        lines = [l for l in d.log_lines() if l.strip()]
        rep[d.label] = len(lines)
        if lines:
            out.append(f"  daemon {d.label} logged {len(lines)} line(s); first ones:")
            out.extend("    " + l[:300] for l in lines[:5])
    return rep


def wait_visible(addr, repo, tag, digest, timeout, interval):
    """Polls HEAD repo:tag at addr until it serves `digest`; returns the monotonic time of the
    answering response."""
    c = Client(addr)
    deadline = time.monotonic() + timeout
    try:
        while True:
            got = c.head_manifest(repo, tag)
            now = time.monotonic()
            if got == digest:
                return now
            if got is not None:
                raise BenchError(f"{repo}:{tag} at {addr} is {got}, expected {digest}")
            if now > deadline:
                raise BenchError(f"{repo}:{tag} not visible at {addr} after {timeout:.0f} s")
            time.sleep(interval)
    finally:
        c.close()


# ---------------------------------------------------------------------------------------------
# throughput


def cmd_throughput(env, a):
    if a.layers < 1 or a.mib < a.layers:
        raise BenchError("need --layers >= 1 and --mib >= --layers")
    layer_size = a.mib * MiB // a.layers
    log(f"throughput: {a.layers} layers x {layer_size / MiB:.1f} MiB, {a.rounds} round(s); "
        "generating digests ...")
    rounds = []
    for r in range(a.rounds):
        # Fresh content every round (nothing is shared between rounds anyway: fresh sites).
        layers = [Layer(f"tp r{r} l{k}", layer_size) for k in range(a.layers)]
        img = Image(f"tp r{r}", layers)
        total = img.blob_bytes()
        repo, tag = "bench/throughput", f"r{r}"

        # With --cpu-split: B (the target, in both measurements) on CPU 0; the pushing client
        # and site A on CPU 1. Otherwise everything shares both CPUs.
        cpu_b, cpu_a = ("0", "1") if a.cpu_split else (None, None)
        if a.cpu_split:
            os.sched_setaffinity(0, {1})

        # (a) direct push to a lone site B.
        b = env.start(f"r{r}-direct-b", "b", cpus=cpu_b)
        cpu_b0, cpu_c0 = b.cpu_s(), time.process_time()
        t0 = time.monotonic()
        t_end = push_image(b.api, repo, tag, img, clients=a.clients)
        direct_s = t_end - t0
        cpu_direct = {"b": b.cpu_s() - cpu_b0, "client": time.process_time() - cpu_c0}
        b.stop()

        # (b) replication A -> B'.
        b2 = env.start(f"r{r}-repl-b", "b", cpus=cpu_b)
        am = env.start(f"r{r}-repl-a", "a", peer_admin=b2.admin, concurrency=a.concurrency,
                       cpus=cpu_a)
        t_push0 = time.monotonic()
        t_put = push_image(am.api, repo, tag, img, clients=a.clients)
        cpu_a0, cpu_b0 = am.cpu_s(), b2.cpu_s()
        push_a_s = t_put - t_push0
        t_vis = wait_visible(b2.api, repo, tag, img.digest, a.timeout, 0.02)
        repl_s = t_vis - t_put
        cpu_repl = {"a": am.cpu_s() - cpu_a0, "b": b2.cpu_s() - cpu_b0}
        p, extra = am.wait_in_sync(a.timeout)
        sync_s = time.monotonic() - t_put
        notes = []
        logs = log_report([b, b2, am], notes)
        am.stop()
        b2.stop()
        row = {
            "round": r, "bytes": total,
            "direct_s": direct_s, "direct_mib_s": total / MiB / direct_s,
            "push_to_a_s": push_a_s,
            "repl_s": repl_s, "repl_mib_s": total / MiB / repl_s,
            "in_sync_seen_after_s": sync_s,
            "ratio": (total / repl_s) / (total / direct_s),
            "bytes_sent": p["bytes_sent"], "bytes_skipped": p["bytes_skipped"],
            "blobs_sent": p["blobs_sent"], "bytes_resumed": p["bytes_resumed"],
            "errors": p["errors"], "retries": p["retries"], "last_error": p["last_error"],
            "bytes_sent_ok": p["bytes_sent"] == total, "daemon_log_lines": logs,
            "cpu_s_direct": cpu_direct, "cpu_s_repl": cpu_repl,
        }
        if a.cpu_split:
            os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
        rounds.append(row)
        log(f"  round {r}: direct {row['direct_mib_s']:.1f} MiB/s ({direct_s:.2f} s), "
            f"replication {row['repl_mib_s']:.1f} MiB/s ({repl_s:.2f} s; in_sync seen at "
            f"{sync_s:.2f} s), ratio {row['ratio']:.2f}; push to A took {push_a_s:.2f} s; "
            f"bytes_sent {p['bytes_sent']} vs {total} "
            f"{'OK' if row['bytes_sent_ok'] else 'MISMATCH'}; peer errors {p['errors']}")
        log(f"           CPU s: direct B {cpu_direct['b']:.2f} (client {cpu_direct['client']:.2f});"
            f" replication A {cpu_repl['a']:.2f}, B {cpu_repl['b']:.2f}")
        for n in notes:
            log(n)
    med_ratio = statistics.median(x["ratio"] for x in rounds)
    res = {
        "bench": "throughput", "mib": a.mib, "layers": a.layers, "clients": a.clients,
        "cpu_split": a.cpu_split,
        "concurrency": a.concurrency, "rounds": rounds,
        "direct_mib_s_median": statistics.median(x["direct_mib_s"] for x in rounds),
        "repl_mib_s_median": statistics.median(x["repl_mib_s"] for x in rounds),
        "ratio_median": med_ratio, "target_ratio": 0.80, "target_met": med_ratio >= 0.80,
        "bytes_sent_ok": all(x["bytes_sent_ok"] for x in rounds),
    }
    log(f"throughput: direct median {res['direct_mib_s_median']:.1f} MiB/s, replication median "
        f"{res['repl_mib_s_median']:.1f} MiB/s, ratio median {med_ratio:.2f} "
        f"(target >= 0.80: {'met' if res['target_met'] else 'NOT met'}); bytes_sent "
        f"{'equal to the image bytes in every round' if res['bytes_sent_ok'] else 'WRONG'}")
    return res


# ---------------------------------------------------------------------------------------------
# lag


def cmd_lag(env, a):
    repos = [f"lag/app{k}" for k in range(10)]
    b = env.start("lag-b", "b")
    am = env.start("lag-a", "a", peer_admin=b.admin, concurrency=a.concurrency)
    base = Layer("lag base", MiB)
    # Warm-up: the base in every repository at both sites (one image per repository).
    warm = [Image(f"lag warm {k}", [base]) for k in range(len(repos))]
    for repo, img in zip(repos, warm):
        push_image(am.api, repo, "warmup", img, clients=1)
    am.wait_in_sync(a.timeout)
    for repo, img in zip(repos, warm):
        wait_visible(b.api, repo, "warmup", img.digest, a.timeout, 0.05)
    p0 = am.peer()

    n = int(a.rate * a.seconds)
    log(f"lag: {n} pushes at {a.rate}/s over {a.seconds} s with {a.pushers} pusher threads; "
        f"HEAD poller scans outstanding tags every {a.poll_ms} ms")
    images = [Image(f"lag {i}", [base, small_layer(f"lag {i}", 4096)]) for i in range(n)]
    outstanding = {}            # i -> (repo, tag, digest, t_put)
    lock = threading.Lock()
    lags = {}                   # i -> seconds
    push_s = {}                 # i -> seconds for the whole push
    slip = {}                   # i -> seconds the push started after its slot
    errors = []
    next_i = [0]
    done_pushing = threading.Event()
    t_start = time.monotonic() + 0.2

    def pusher():
        cl = Client(am.api)
        try:
            while not errors:
                with lock:
                    i = next_i[0]
                    next_i[0] += 1
                if i >= n:
                    return
                due = t_start + i / a.rate
                d = due - time.monotonic()
                if d > 0:
                    time.sleep(d)
                t0 = time.monotonic()
                slip[i] = t0 - due
                repo, tag, img = repos[i % len(repos)], f"t{i}", images[i]
                for blob in img.blobs()[1:]:        # the base is already in the repository
                    cl.upload(repo, blob)
                cl.put_manifest(repo, tag, img)
                t_put = time.monotonic()
                push_s[i] = t_put - t0
                with lock:
                    outstanding[i] = (repo, tag, img.digest, t_put)
        except Exception as e:  # noqa: BLE001
            errors.append(e)
        finally:
            cl.close()

    def poller():
        cl = Client(b.api)
        deadline = None
        try:
            while not errors:
                with lock:
                    todo = sorted(outstanding.items())
                if not todo:
                    if done_pushing.is_set():
                        return
                else:
                    for i, (repo, tag, digest, t_put) in todo:
                        got = cl.head_manifest(repo, tag)
                        if got is None:
                            continue
                        now = time.monotonic()
                        if got != digest:
                            raise BenchError(f"{repo}:{tag} at B is {got}, expected {digest}")
                        lags[i] = now - t_put
                        with lock:
                            del outstanding[i]
                if done_pushing.is_set():
                    deadline = deadline or time.monotonic() + a.timeout
                    if time.monotonic() > deadline:
                        raise BenchError(f"{len(outstanding)} tag(s) still not visible at B "
                                         f"{a.timeout:.0f} s after the last push")
                time.sleep(a.poll_ms / 1000)
        except Exception as e:  # noqa: BLE001
            errors.append(e)
        finally:
            cl.close()

    pushers = [threading.Thread(target=pusher, daemon=True) for _ in range(a.pushers)]
    pt = threading.Thread(target=poller, daemon=True)
    pt.start()
    for t in pushers:
        t.start()
    for t in pushers:
        t.join()
    t_last = time.monotonic()
    done_pushing.set()
    pt.join()
    if errors:
        raise errors[0]
    p, _ = am.wait_in_sync(a.timeout)
    notes = []
    logs = log_report([b, am], notes)
    ms = [lags[i] * 1000 for i in range(n)]
    # Median lag of the pushes scheduled in each second: flat when replication keeps up,
    # rising when a backlog builds.
    per_sec = {}
    for i in range(n):
        per_sec.setdefault(int(i / a.rate), []).append(ms[i])
    by_second = [round(statistics.median(per_sec[k])) for k in sorted(per_sec)]
    achieved = n / (max(t_last - t_start, 1e-9))
    res = {
        "bench": "lag", "rate": a.rate, "seconds": a.seconds, "pushers": a.pushers,
        "poll_ms": a.poll_ms, "count": n, "achieved_rate": achieved,
        "lag_ms": {"p50": pct(ms, 50), "p90": pct(ms, 90), "p99": pct(ms, 99),
                   "max": max(ms), "mean": statistics.fmean(ms)},
        "lag_p50_ms_by_second": by_second,
        "push_ms": {"p50": pct([v * 1000 for v in push_s.values()], 50),
                    "p99": pct([v * 1000 for v in push_s.values()], 99)},
        "start_slip_ms_max": max(slip.values()) * 1000,
        "target_p99_ms": 1000, "target_met": pct(ms, 99) < 1000,
        "peer": {k: p[k] for k in ("state", "lag_events", "bytes_sent", "bytes_skipped",
                                   "blobs_sent", "blobs_skipped", "manifests_sent",
                                   "tags_applied", "errors", "retries", "last_error")},
        "bytes_sent_during_run": p["bytes_sent"] - p0["bytes_sent"],
        "expected_bytes_during_run": sum(img.blob_bytes() - base.size for img in images),
        "daemon_log_lines": logs,
    }
    res["bytes_sent_ok"] = res["bytes_sent_during_run"] == res["expected_bytes_during_run"]
    L = res["lag_ms"]
    log(f"lag: {n} pushes, achieved {achieved:.1f}/s (push p50 {res['push_ms']['p50']:.0f} ms, "
        f"p99 {res['push_ms']['p99']:.0f} ms; worst start slip {res['start_slip_ms_max']:.0f} ms)")
    log(f"lag: p50 {L['p50']:.0f} ms, p90 {L['p90']:.0f} ms, p99 {L['p99']:.0f} ms, "
        f"max {L['max']:.0f} ms (target p99 < 1000 ms: "
        f"{'met' if res['target_met'] else 'NOT met'}); bytes_sent during the run "
        f"{res['bytes_sent_during_run']} vs {res['expected_bytes_during_run']} expected "
        f"{'OK' if res['bytes_sent_ok'] else 'MISMATCH'}; peer errors {p['errors']}")
    log(f"lag: median lag (ms) of the pushes of each second: {by_second}")
    for l in notes:
        log(l)
    am.stop()
    b.stop()
    return res


# ---------------------------------------------------------------------------------------------
# shared-base


def cmd_shared_base(env, a):
    b = env.start("shared-b", "b")
    am = env.start("shared-a", "a", peer_admin=b.admin, concurrency=a.concurrency)
    base = Layer("shared base", a.base_mib * MiB)
    images = [Image(f"shared {i}", [base, small_layer(f"shared own {i}", 4096 + 64 * i)])
              for i in range(a.images)]
    log(f"shared-base: {a.images} images on one {a.base_mib} MiB base, pushed to A with "
        f"{a.clients} client thread(s)")
    q = queue.Queue()
    for i in range(a.images):
        q.put(i)
    errors = []

    def worker():
        try:
            while not errors:
                try:
                    i = q.get_nowait()
                except queue.Empty:
                    return
                push_image(am.api, f"shared/app{i}", "latest", images[i], clients=1)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(a.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    push_s = time.monotonic() - t0
    p, _ = am.wait_in_sync(a.timeout)
    sync_s = time.monotonic() - t0
    cb = Client(b.api)
    try:
        missing = [i for i in range(a.images)
                   if cb.head_manifest(f"shared/app{i}", "latest") != images[i].digest]
    finally:
        cb.close()
    own = sum(img.blob_bytes() - base.size for img in images)
    unique = base.size + own
    naive = a.images * base.size + own
    crossings = (p["bytes_sent"] - own) / base.size
    notes = []
    logs = log_report([b, am], notes)
    res = {
        "bench": "shared-base", "images": a.images, "base_bytes": base.size,
        "own_bytes": own, "unique_bytes": unique, "bytes_without_dedup": naive,
        "bytes_sent": p["bytes_sent"], "bytes_skipped": p["bytes_skipped"],
        "blobs_sent": p["blobs_sent"], "blobs_skipped": p["blobs_skipped"],
        "expected_bytes_skipped": (a.images - 1) * base.size,
        "base_crossings": crossings, "base_crossings_without_dedup": a.images,
        "bytes_sent_ok": p["bytes_sent"] == unique,
        "images_missing_at_b": len(missing), "push_s": push_s, "in_sync_after_s": sync_s,
        "errors": p["errors"], "retries": p["retries"], "last_error": p["last_error"],
        "daemon_log_lines": logs,
    }
    log(f"shared-base: pushed in {push_s:.1f} s, in sync {sync_s:.1f} s after the first push; "
        f"{a.images - len(missing)}/{a.images} images at B")
    log(f"shared-base: bytes_sent {p['bytes_sent']} vs unique {unique} "
        f"({'OK: the base crossed once' if res['bytes_sent_ok'] else 'MISMATCH'}; "
        f"{crossings:.2f} base crossings, {a.images} without dedup = {naive} bytes); "
        f"bytes_skipped {p['bytes_skipped']} (expected {res['expected_bytes_skipped']}); "
        f"blobs_sent {p['blobs_sent']}, blobs_skipped {p['blobs_skipped']}; "
        f"peer errors {p['errors']}")
    for l in notes:
        log(l)
    if missing:
        raise BenchError(f"{len(missing)} image(s) not at B after in_sync: "
                         f"{missing[:10]}")
    am.stop()
    b.stop()
    return res


# ---------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=DEFAULT_BIN, help=f"stowage binary (default {DEFAULT_BIN})")
    ap.add_argument("--tmp-root", default=DEFAULT_TMP, help=f"(default {DEFAULT_TMP})")
    ap.add_argument("--keep", action="store_true", help="keep the temporary data and logs")
    ap.add_argument("--timeout", type=float, default=600,
                    help="seconds to wait for replication to finish (default 600)")
    ap.add_argument("--concurrency", type=int, default=4,
                    help="the peer's `concurrency` (blobs in flight; default 4)")
    sub = ap.add_subparsers(dest="cmd", required=True)

    def tp_opts(p):
        p.add_argument("--mib", type=int, default=1024)
        p.add_argument("--layers", type=int, default=8)
        p.add_argument("--rounds", type=int, default=3)
        p.add_argument("--clients", type=int, default=4,
                       help="parallel connections of the pushes (default 4)")
        p.add_argument("--cpu-split", action="store_true",
                       help="one CPU per site (taskset): B on CPU 0, A and the client on CPU 1")

    def lag_opts(p):
        p.add_argument("--rate", type=float, default=20)
        p.add_argument("--seconds", type=float, default=30)
        p.add_argument("--pushers", type=int, default=4)
        p.add_argument("--poll-ms", type=float, default=5)

    def sb_opts(p, clients=True):
        p.add_argument("--images", type=int, default=50)
        p.add_argument("--base-mib", type=int, default=32)
        if clients:
            p.add_argument("--clients", type=int, default=4)

    tp_opts(sub.add_parser("throughput"))
    lag_opts(sub.add_parser("lag"))
    sb_opts(sub.add_parser("shared-base"))
    p_all = sub.add_parser("all")
    tp_opts(p_all)
    lag_opts(p_all)
    sb_opts(p_all, clients=False)
    a = ap.parse_args()

    env = None
    try:
        env = Env(a)
        if a.cmd == "throughput":
            out = cmd_throughput(env, a)
        elif a.cmd == "lag":
            out = cmd_lag(env, a)
        elif a.cmd == "shared-base":
            out = cmd_shared_base(env, a)
        else:
            out = {"bench": "all", "results": []}
            for f in (cmd_throughput, cmd_lag, cmd_shared_base):
                r = f(env, a)
                print(json.dumps(r), flush=True)
                out["results"].append(r)
        print(json.dumps(out), flush=True)
        return 0
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - reported, daemons stopped
        if isinstance(e, BenchError):
            print(f"repl-bench: error: {e}", file=sys.stderr)
        else:
            import traceback
            traceback.print_exc()
            print(f"repl-bench: error: {e!r}", file=sys.stderr)
        if env is not None:
            env.dump_logs()
        return 1
    finally:
        if env is not None:
            env.close()


if __name__ == "__main__":
    sys.exit(main())
