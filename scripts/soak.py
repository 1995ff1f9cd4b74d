#!/usr/bin/env python3
"""Soak load for a running streamserver on loopback: a bounded mix of clients, then figures.

scripts/soak.sh starts the server and runs this; it can also run against a server started by
hand. Every client thread loops until the deadline or its iteration cap, whichever comes first,
and every socket has a timeout, so the run ends by itself.

Clients: full and ranged downloads, with their bytes checked against the files. Uploads that
are read back and deleted, some chunked and some overwriting. Clients that hang up mid-download
or mid-upload, and slow readers with a small receive buffer. Malformed requests (garbage, a
70 KiB head, bad framing, unsupported versions), and a /healthz poller.

Figures, each with its limit; the exit status is 1 when any limit fails:
- 5xx responses to well-formed requests, not counting 503 `too_many_connections`: 0;
- 503 `too_many_connections`, counted on its own: 0 (max_connections is far above the load);
- any other status than the expected success (and 429) to well-formed requests: 0;
- 500 responses to malformed requests: 0 (501 and 505 are the expected responses to some);
- any other status than the expected one (or 429) to malformed requests: 0;
- failed exchanges on well-formed requests (reset, timeout, short body): 0;
- bodies that differ from the stored bytes: 0;
- /healthz `tokens_in_use` once the clients have stopped: 0 (polled for up to 10 s);
- upload temporary files left in video_dir once the clients have stopped: 0 (polled for 10 s);
- RSS at the end at most 110% of RSS at the start. Start is the first sample after the
  warm-up (10 s, or a quarter of the run when that is shorter), so start-up allocations are
  excluded. End is sampled after the clients stopped and the tokens returned. Peak is the
  largest sample, taken every 0.5 s.
  NOTE: glibc's per-thread malloc arenas grow in steps for a minute or more after the warm-up,
  as more workers allocate upload buffers, so this figure can fail without a leak. The printed
  timeline and the growth over the second half tell the two apart.
429 responses are counted and printed but are no failure: the limiter works as designed.
"""

import argparse
import hashlib
import http.client
import json
import os
import random
import socket
import struct
import sys
import threading
import time

BOUNDARY = "soakBOUNDARY7d2f"
SOCKET_TIMEOUT = 30
ITERATION_CAP = 100_000


class Tally:
    """Counters shared by the client threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {}
        self.examples = {}

    def add(self, name, example=None):
        with self.lock:
            self.counts[name] = self.counts.get(name, 0) + 1
            if example is not None and len(self.examples.setdefault(name, [])) < 5:
                self.examples[name].append(example)

    def get(self, name):
        with self.lock:
            return self.counts.get(name, 0)


class Soak:
    def __init__(self, args):
        self.host = "127.0.0.1"
        self.port = args.port
        self.pid = args.pid
        self.video_dir = args.video_dir
        self.duration = args.duration
        self.warmup = min(10.0, args.duration / 4)
        self.deadline = time.monotonic() + args.duration
        self.tally = Tally()
        self.files = self.load_files()
        self.digests = {name: hashlib.sha256(data).digest() for name, data in self.files.items()}
        self.rss_samples = []
        self.sampling = True

    def load_files(self):
        files = {}
        for name in sorted(os.listdir(self.video_dir)):
            path = os.path.join(self.video_dir, name)
            if not name.startswith(".") and os.path.isfile(path):
                with open(path, "rb") as f:
                    files[name] = f.read()
        if not files:
            sys.exit(f"soak.py: {self.video_dir} holds no videos; add a few files first")
        return files

    def running(self, iteration):
        return time.monotonic() < self.deadline and iteration < ITERATION_CAP

    def connection(self):
        return http.client.HTTPConnection(self.host, self.port, timeout=SOCKET_TIMEOUT)

    def raw_socket(self, rcvbuf=None):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(SOCKET_TIMEOUT)
        sock.connect((self.host, self.port))
        return sock

    # -- recording ------------------------------------------------------------------------------

    def record_status(self, label, status, body, expected):
        """Counts the status of a response to a well-formed request; `expected` is the success."""
        self.tally.add("requests")
        if status == 429:
            self.tally.add("429")
        elif status == 503 and b"too_many_connections" in body:
            self.tally.add("503_too_many_connections", label)
        elif status >= 500:
            self.tally.add("5xx", f"{label}: {status} {body[:200]!r}")
        elif status != expected:
            self.tally.add("unexpected_status", f"{label}: {status} {body[:200]!r}")

    def record_failure(self, label, error):
        self.tally.add("failed_exchanges", f"{label}: {type(error).__name__}: {error}")

    def record_mismatch(self, label):
        self.tally.add("mismatches", label)

    # -- clients --------------------------------------------------------------------------------

    def full_downloader(self, rng):
        names = list(self.files)
        i = 0
        while self.running(i):
            i += 1
            name = rng.choice(names)
            label = f"GET /videos/{name}"
            try:
                conn = self.connection()
                conn.request("GET", f"/videos/{name}")
                response = conn.getresponse()
                digest, length, error_body = read_hashed(response)
                conn.close()
            except (OSError, http.client.HTTPException) as e:
                self.record_failure(label, e)
                continue
            self.record_status(label, response.status, error_body, 200)
            if response.status == 200:
                self.tally.add("full_downloads")
                if digest != self.digests[name]:
                    self.record_mismatch(f"{label}: {length} bytes differ from the file")

    def range_downloader(self, rng):
        names = list(self.files)
        i = 0
        conn = None
        while self.running(i):
            i += 1
            name = rng.choice(names)
            data = self.files[name]
            header, expected = random_range(rng, len(data))
            label = f"GET /videos/{name} Range: {header}"
            try:
                conn = conn or self.connection()
                conn.request("GET", f"/videos/{name}", headers={"Range": header})
                response = conn.getresponse()
                body = response.read()
            except (OSError, http.client.HTTPException) as e:
                self.record_failure(label, e)
                conn.close()
                conn = None
                continue
            self.record_status(label, response.status, body, 206)
            if response.status == 206:
                self.tally.add("ranged_downloads")
                if body != data[expected[0]:expected[1]]:
                    self.record_mismatch(f"{label}: {len(body)} bytes differ")
            if response.getheader("Connection", "").lower() == "close":
                conn.close()
                conn = None
        if conn:
            conn.close()

    def uploader(self, rng, worker):
        i = 0
        while self.running(i):
            i += 1
            video_id = f"soak-{worker}-{i}.mp4"
            data = rng.randbytes(rng.randint(64 * 1024, 4 * 1024 * 1024))
            chunked = i % 3 == 0
            if not self.upload(video_id, data, chunked, ""):
                continue
            if i % 4 == 0:
                data = rng.randbytes(rng.randint(1, 512 * 1024))
                if not self.upload(video_id, data, False, "?overwrite=true"):
                    continue
            self.read_back(video_id, data)
            self.delete(video_id)

    def upload(self, video_id, data, chunked, query):
        label = f"POST /upload/{video_id}{query}" + (" (chunked)" if chunked else "")
        body = multipart_body(data)
        headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
        try:
            conn = self.connection()
            if chunked:
                pieces = [body[k:k + 100_000] for k in range(0, len(body), 100_000)]
                conn.request("POST", f"/upload/{video_id}{query}", body=iter(pieces),
                             headers=headers, encode_chunked=True)
            else:
                conn.request("POST", f"/upload/{video_id}{query}", body=body, headers=headers)
            response = conn.getresponse()
            answer = response.read()
            conn.close()
        except (OSError, http.client.HTTPException) as e:
            self.record_failure(label, e)
            return False
        self.record_status(label, response.status, answer, 201)
        if response.status != 201:
            return False
        self.tally.add("uploads")
        if json.loads(answer).get("size") != len(data):
            self.record_mismatch(f"{label}: answered {answer!r} for {len(data)} bytes")
        return True

    def read_back(self, video_id, data):
        label = f"GET /videos/{video_id}"
        try:
            conn = self.connection()
            conn.request("GET", f"/videos/{video_id}")
            response = conn.getresponse()
            body = response.read()
            conn.close()
        except (OSError, http.client.HTTPException) as e:
            self.record_failure(label, e)
            return
        self.record_status(label, response.status, body, 200)
        if response.status == 200:
            self.tally.add("read_backs")
        if response.status == 200 and body != data:
            self.record_mismatch(f"{label}: {len(body)} bytes differ from the upload")

    def delete(self, video_id):
        label = f"DELETE /videos/{video_id}"
        try:
            conn = self.connection()
            conn.request("DELETE", f"/videos/{video_id}")
            response = conn.getresponse()
            body = response.read()
            conn.close()
        except (OSError, http.client.HTTPException) as e:
            self.record_failure(label, e)
            return
        self.record_status(label, response.status, body, 204)

    def hangup(self, rng):
        big = max(self.files, key=lambda n: len(self.files[n]))
        i = 0
        while self.running(i):
            i += 1
            try:
                if i % 2:
                    self.hang_up_download(rng, big)
                else:
                    self.hang_up_upload(rng, i)
                self.tally.add("hangups")
            except OSError:
                self.tally.add("hangups")

    def hang_up_download(self, rng, name):
        sock = self.raw_socket()
        sock.sendall(f"GET /videos/{name} HTTP/1.1\r\nHost: soak\r\n\r\n".encode())
        wanted = rng.randint(0, 2 * 1024 * 1024)
        received = 0
        while received < wanted:
            chunk = sock.recv(min(65536, wanted - received))
            if not chunk:
                break
            received += len(chunk)
        close_abruptly(sock, reset=rng.random() < 0.5)

    def hang_up_upload(self, rng, i):
        body = multipart_body(rng.randbytes(2 * 1024 * 1024))
        head = (f"POST /upload/soak-hangup-{i}.mp4 HTTP/1.1\r\nHost: soak\r\n"
                f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        sock = self.raw_socket()
        sock.sendall(head + body[:rng.randint(0, len(body) - 1)])
        close_abruptly(sock, reset=rng.random() < 0.5)

    def slow_reader(self, rng):
        big = max(self.files, key=lambda n: len(self.files[n]))
        i = 0
        while self.running(i):
            i += 1
            try:
                sock = self.raw_socket(rcvbuf=32 * 1024)
                sock.sendall(f"GET /videos/{big} HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n".encode())
                session_end = min(time.monotonic() + rng.uniform(1, 4), self.deadline)
                first = sock.recv(16 * 1024)
                if status_of(first) is None:
                    self.record_failure(f"slow GET /videos/{big}", OSError(f"no status line in {first[:40]!r}"))
                    sock.close()
                    continue
                self.record_status(f"slow GET /videos/{big}", status_of(first), first, 200)
                while time.monotonic() < session_end and sock.recv(16 * 1024):
                    time.sleep(0.05)
                sock.close()
                self.tally.add("slow_sessions")
            except OSError as e:
                self.record_failure(f"slow GET /videos/{big}", e)

    def bad_requests(self, rng):
        cases = malformed_requests(rng)
        i = 0
        while self.running(i):
            i += 1
            label, payload, allowed = cases[i % len(cases)]
            try:
                sock = self.raw_socket()
                sock.sendall(payload)
                answer = sock.recv(4096) if allowed is not None else b""
                sock.close()
            except OSError as e:
                self.tally.add("malformed_no_answer", f"{label}: {e}")
                continue
            self.tally.add("malformed")
            status = status_of(answer)
            if allowed is None:
                pass
            elif status == 500:
                self.tally.add("malformed_500", f"{label}: {answer[:200]!r}")
            elif status not in allowed and status != 429:
                self.tally.add("malformed_unexpected", f"{label}: expected {allowed}, got {answer[:120]!r}")
            time.sleep(0.01)

    def health_poller(self):
        i = 0
        while self.running(i):
            i += 1
            status, body = self.health()
            if status is not None:
                self.record_status("GET /healthz", status, body, 200)
            time.sleep(0.5)

    def health(self):
        try:
            conn = self.connection()
            conn.request("GET", "/healthz")
            response = conn.getresponse()
            body = response.read()
            conn.close()
            return response.status, body
        except (OSError, http.client.HTTPException) as e:
            self.record_failure("GET /healthz", e)
            return None, b""

    # -- figures --------------------------------------------------------------------------------

    def sample_rss(self):
        started = time.monotonic()
        while self.sampling:
            rss = read_rss_kib(self.pid)
            if rss is not None:
                self.rss_samples.append((time.monotonic() - started, rss))
            time.sleep(0.5)

    def tokens_after_load(self):
        """Polls /healthz for up to 10 s until no token is in use; returns the last count."""
        tokens = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            status, body = self.health()
            if status == 200:
                tokens = json.loads(body)["tokens_in_use"]
                if tokens == 0:
                    return 0
            time.sleep(0.2)
        return tokens

    def temp_files_after_load(self):
        """Polls video_dir for up to 10 s until no upload temporary file is left."""
        deadline = time.monotonic() + 10
        while True:
            left = [n for n in os.listdir(self.video_dir) if n.startswith(".upload-") and n.endswith(".part")]
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.2)


def read_hashed(response):
    """Reads a response body, hashing a 200 body as it arrives and keeping any other whole.
    Returns (sha256 digest, length, body of a non-200 response)."""
    if response.status != 200:
        body = response.read()
        return None, len(body), body
    digest = hashlib.sha256()
    length = 0
    while chunk := response.read(256 * 1024):
        digest.update(chunk)
        length += len(chunk)
    return digest.digest(), length, b""


def random_range(rng, size):
    """Returns a Range header value and the (start, end) slice it selects."""
    kind = rng.randrange(3)
    if kind == 0:
        start = rng.randrange(size)
        end = min(size - 1, start + rng.randint(0, 512 * 1024))
        return f"bytes={start}-{end}", (start, end + 1)
    if kind == 1:
        suffix = rng.randint(1, min(size, 256 * 1024))
        return f"bytes=-{suffix}", (size - suffix, size)
    start = max(0, size - rng.randint(1, 256 * 1024))
    return f"bytes={start}-", (start, size)


def multipart_body(data):
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"soak.mp4\"\r\n"
            "Content-Type: video/mp4\r\n\r\n").encode()
    return head + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def malformed_requests(rng):
    """Returns (label, bytes, allowed statuses or None when no response is required).
    A 429 is allowed for every case, because a request that parses takes a limiter token first."""
    huge = "X-Filler: " + "a" * (70 * 1024)
    return [
        ("garbage", rng.randbytes(300) + b"\r\n\r\n", {400, 501, 505}),
        ("70 KiB head", f"GET /healthz HTTP/1.1\r\nHost: soak\r\n{huge}\r\n\r\n".encode(), {431}),
        ("no version", b"GET /healthz\r\n\r\n", {400}),
        ("HTTP/2.0", b"GET /healthz HTTP/2.0\r\nHost: soak\r\n\r\n", {505}),
        ("bad Content-Length", b"POST /upload/x.mp4 HTTP/1.1\r\nHost: soak\r\nContent-Length: abc\r\n\r\n", {400}),
        ("two Content-Lengths",
         b"POST /upload/x.mp4 HTTP/1.1\r\nHost: soak\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello", {400}),
        ("gzip Transfer-Encoding",
         b"POST /upload/x.mp4 HTTP/1.1\r\nHost: soak\r\nTransfer-Encoding: gzip\r\n\r\n", {501}),
        ("header without colon", b"GET /healthz HTTP/1.1\r\nHost soak\r\n\r\n", {400}),
        ("NUL in header", b"GET /healthz HTTP/1.1\r\nHost: so\x00ak\r\n\r\n", {400}),
        ("path traversal", b"GET /videos/..%2F..%2Fetc%2Fpasswd HTTP/1.1\r\nHost: soak\r\n\r\n", {400}),
        ("partial head, then hang-up", b"GET /videos/x HTTP/1.1\r\nHo", None),
    ]


def status_of(answer):
    try:
        return int(answer.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None


def close_abruptly(sock, reset):
    if reset:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def read_rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="server port on 127.0.0.1")
    parser.add_argument("--pid", type=int, required=True, help="server process id, for RSS")
    parser.add_argument("--video-dir", required=True, help="the server's video_dir")
    parser.add_argument("--duration", type=float, default=180, help="seconds of load (default 180)")
    args = parser.parse_args()
    soak = Soak(args)

    threads = [threading.Thread(target=soak.sample_rss, daemon=True)]
    plan = ([("full", soak.full_downloader)] * 2 + [("range", soak.range_downloader)] * 3
            + [("hangup", soak.hangup)] * 2 + [("slow", soak.slow_reader)] * 2
            + [("bad", soak.bad_requests)] + [("health", lambda rng: soak.health_poller())])
    for n, (_, client) in enumerate(plan):
        threads.append(threading.Thread(target=client, args=(random.Random(n),), daemon=True))
    for worker in range(2):
        threads.append(threading.Thread(target=soak.uploader, args=(random.Random(100 + worker), worker), daemon=True))

    print(f"soak: {len(threads) - 1} client threads for {args.duration:.0f} s against 127.0.0.1:{args.port}",
          flush=True)
    for thread in threads:
        thread.start()
    for thread in threads[1:]:
        thread.join(timeout=args.duration + 120)
    stuck = sum(thread.is_alive() for thread in threads[1:])

    tokens = soak.tokens_after_load()
    temp_left = soak.temp_files_after_load()
    time.sleep(1)
    soak.sampling = False
    return report(soak, tokens, temp_left, stuck)


def report(soak, tokens, temp_left, stuck):
    tally = soak.tally
    samples = soak.rss_samples
    after_warmup = [rss for t, rss in samples if t >= soak.warmup]
    start = after_warmup[0] if after_warmup else None
    peak = max((rss for _, rss in samples), default=None)
    end = samples[-1][1] if samples else None

    print(f"requests (well-formed, answered): {tally.get('requests')}")
    print(f"429 too_many_requests (not an error): {tally.get('429')}")
    print(f"full downloads: {tally.get('full_downloads')}, ranged downloads: {tally.get('ranged_downloads')}, "
          f"uploads stored: {tally.get('uploads')} (read back: {tally.get('read_backs')}), "
          f"slow-reader sessions: {tally.get('slow_sessions')}")
    print(f"client hang-ups: {tally.get('hangups')}, malformed requests answered: {tally.get('malformed')}, "
          f"malformed without an answer: {tally.get('malformed_no_answer')}")
    checks = [
        ("5xx to well-formed requests", tally.get("5xx"), tally.get("5xx") == 0, "5xx"),
        ("503 too_many_connections", tally.get("503_too_many_connections"),
         tally.get("503_too_many_connections") == 0, "503_too_many_connections"),
        ("500 to malformed requests", tally.get("malformed_500"), tally.get("malformed_500") == 0, "malformed_500"),
        ("unexpected status to malformed requests", tally.get("malformed_unexpected"),
         tally.get("malformed_unexpected") == 0, "malformed_unexpected"),
        ("other unexpected status to well-formed requests", tally.get("unexpected_status"),
         tally.get("unexpected_status") == 0, "unexpected_status"),
        ("failed exchanges on well-formed requests", tally.get("failed_exchanges"),
         tally.get("failed_exchanges") == 0, "failed_exchanges"),
        ("bodies differing from the stored bytes", tally.get("mismatches"), tally.get("mismatches") == 0, "mismatches"),
        ("client threads still running at the end", stuck, stuck == 0, None),
        ("/healthz tokens_in_use after the load", tokens, tokens == 0, None),
        ("upload temporary files left", len(temp_left), not temp_left, None),
    ]
    within = start is not None and end is not None and end <= start * 1.10
    rss_text = (f"start {fmt_kib(start)} (after {soak.warmup:.0f} s), peak {fmt_kib(peak)}, end {fmt_kib(end)}"
                + (f", end/start {end / start:.2f}" if start and end else ""))
    checks.append(("RSS " + rss_text + "; end within 110% of start", "yes" if within else "no", within, None))

    print("RSS timeline: " + rss_timeline(samples, soak.duration))
    half = next((rss for t, rss in samples if t >= soak.duration / 2), None)
    if half and end:
        print(f"RSS growth over the second half (informational): {fmt_kib(half)} to {fmt_kib(end)}, "
              f"{(end - half) / half:+.1%}")

    failed = 0
    for name, value, ok, examples in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {value}")
        if not ok:
            failed += 1
            for example in tally.examples.get(examples, []) if examples else []:
                print(f"        e.g. {example}")
    if temp_left:
        print(f"        left: {temp_left[:5]}")
    print("soak: " + ("all figures pass" if failed == 0 else f"{failed} figures fail"))
    return 0 if failed == 0 else 1


def rss_timeline(samples, duration):
    """Returns the RSS at each tenth of the run and at the end, such as `18s 12.1 MiB, ...`."""
    points = []
    for tenth in range(1, 11):
        at = duration * tenth / 10
        sample = next(((t, rss) for t, rss in samples if t >= at), None)
        if sample:
            points.append(f"{sample[0]:.0f}s {fmt_kib(sample[1])}")
    if samples:
        points.append(f"end {fmt_kib(samples[-1][1])}")
    return ", ".join(points)


def fmt_kib(kib):
    return "n/a" if kib is None else f"{kib / 1024:.1f} MiB"


if __name__ == "__main__":
    sys.exit(main())
