"""Resumable downloads against a local server that misbehaves on purpose (never the internet).

`ArchiveServer` is also used by the Binance-archive and Tardis tests: a ThreadingHTTPServer on
127.0.0.1 serving bytes by URL path, honouring `Range:`, answering `*.CHECKSUM` from the real
bytes, and injecting faults queued per path (500, 429 + Retry-After, truncated body, corrupt body,
connection reset, slow response).
"""

from __future__ import annotations

import hashlib
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from crashlab.ingest.fetch.http import DownloadError, NotFound, RetryPolicy, download, fetch_bytes, head_size

FAST = RetryPolicy(attempts=6, backoff=0.01, max_backoff=0.05, timeout=0.3, max_retry_after=0.05)


class ArchiveServer:
    """A local stand-in for a file CDN. Faults are consumed one per GET of the path, in order."""

    def __init__(self, files: dict[str, bytes | Path] | None = None, require_auth: str | None = None):
        self.files: dict[str, bytes | Path] = dict(files or {})
        self.faults: dict[str, list[str]] = {}
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range)
        self.bad_checksums: set[str] = set()
        self.require_auth = require_auth
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # keep pytest output clean
                pass

            def do_HEAD(self):
                self._serve(head=True)

            def do_GET(self):
                try:
                    self._serve(head=False)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (slow fault): fine
                    self.close_connection = True

            def _serve(self, head: bool):
                path = self.path.split("?", 1)[0]
                rng = self.headers.get("Range")
                with server.lock:
                    server.requests.append(("HEAD" if head else "GET", path, rng))
                    fault = server.faults.get(path, []).pop(0) if (not head and server.faults.get(path)) else None
                if server.require_auth and self.headers.get("Authorization") != server.require_auth:
                    return self._status(401)
                body = server.body(path)
                if body is None:
                    return self._status(404)
                if fault == "500":
                    return self._status(500)
                if fault == "429":
                    return self._status(429, {"Retry-After": "1"})
                if fault == "slow":
                    time.sleep(0.8)
                if fault == "corrupt":
                    body = bytes([body[0] ^ 0xFF]) + body[1:]
                start = 0
                code = 200
                if rng and rng.startswith("bytes=") and fault != "ignore-range":
                    start = int(rng[6:].split("-")[0])
                    if start >= len(body):
                        return self._status(416, {"Content-Range": f"bytes */{len(body)}"})
                    code = 206
                chunk = body[start:]
                self.send_response(code)
                self.send_header("Content-Length", str(len(chunk)))
                if code == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if head:
                    return
                if fault == "truncate":
                    self.wfile.write(chunk[: len(chunk) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if fault == "reset":
                    self.wfile.write(chunk[: len(chunk) // 3])
                    self.wfile.flush()
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()
                    return
                self.wfile.write(chunk)

            def _status(self, code: int, headers: dict[str, str] | None = None):
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def body(self, path: str) -> bytes | None:
        if path.endswith(".CHECKSUM"):
            data = self.body(path[: -len(".CHECKSUM")])
            if data is None:
                return None
            digest = hashlib.sha256(data).hexdigest()
            if path in self.bad_checksums:
                digest = "0" * 64
            return f"{digest}  {path.rsplit('/', 1)[-1][: -len('.CHECKSUM')]}\n".encode()
        v = self.files.get(path)
        if isinstance(v, Path):
            return v.read_bytes()
        return v

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def gets(self, path: str) -> list[str | None]:
        return [r for m, p, r in self.requests if m == "GET" and p == path]

    def __enter__(self) -> "ArchiveServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


PAYLOAD = bytes(range(256)) * 2000  # 512 000 bytes, several read chunks


@pytest.fixture()
def server():
    with ArchiveServer({"/f.bin": PAYLOAD}) as s:
        yield s


def _dl(server, tmp_path, sleeps=None, **kw):
    sleeps = [] if sleeps is None else sleeps
    return download(
        server.url + "/f.bin", tmp_path / "f.bin", sha256=hashlib.sha256(PAYLOAD).hexdigest(),
        policy=kw.pop("policy", FAST), sleep=sleeps.append, **kw,
    )


def test_clean_download(server, tmp_path):
    got = _dl(server, tmp_path)
    assert got.read_bytes() == PAYLOAD
    assert not (tmp_path / "f.bin.part").exists()


@pytest.mark.parametrize("fault", ["500", "truncate", "reset", "slow"])
def test_transient_faults_recover_exact_bytes(server, tmp_path, fault):
    server.faults["/f.bin"] = [fault, fault]
    sleeps: list[float] = []
    got = _dl(server, tmp_path, sleeps)
    assert got.read_bytes() == PAYLOAD
    assert len(sleeps) == 2  # two failures, two backoffs
    assert sleeps[1] >= sleeps[0]  # exponential, capped


def test_truncated_body_resumes_with_range(server, tmp_path):
    server.faults["/f.bin"] = ["truncate"]
    _dl(server, tmp_path)
    ranges = server.gets("/f.bin")
    assert ranges[0] is None
    assert ranges[1] == f"bytes={len(PAYLOAD) // 2}-"  # resumed, not restarted


def test_existing_part_is_resumed(server, tmp_path):
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD[:1000])
    seen = []
    _dl(server, tmp_path, progress=lambda n, total: seen.append(n))
    assert server.gets("/f.bin") == ["bytes=1000-"]
    assert sum(seen) == len(PAYLOAD)


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD[:1000])
    server.faults["/f.bin"] = ["ignore-range"]
    assert _dl(server, tmp_path).read_bytes() == PAYLOAD


def test_429_honours_retry_after(server, tmp_path):
    server.faults["/f.bin"] = ["429"]
    sleeps: list[float] = []
    slow_ok = RetryPolicy(attempts=3, backoff=0.01, timeout=1.0, max_retry_after=10)
    _dl(server, tmp_path, sleeps, policy=slow_ok)
    assert sleeps == [1.0]  # the server's Retry-After, not our backoff


def test_corrupt_once_redownloads_from_scratch(server, tmp_path):
    server.faults["/f.bin"] = ["corrupt"]
    assert _dl(server, tmp_path).read_bytes() == PAYLOAD
    assert server.gets("/f.bin") == [None, None]


def test_corrupt_twice_fails_naming_file_and_leaves_nothing(server, tmp_path):
    server.faults["/f.bin"] = ["corrupt", "corrupt"]
    with pytest.raises(DownloadError, match=r"f\.bin.*sha256 mismatch"):
        _dl(server, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_persistent_500_gives_up_with_clear_error(server, tmp_path):
    server.faults["/f.bin"] = ["500"] * 10
    with pytest.raises(DownloadError, match=r"/f\.bin: gave up after 6 tries; last error: HTTP 500"):
        _dl(server, tmp_path)
    assert not (tmp_path / "f.bin").exists()


def test_404_is_not_retried(server, tmp_path):
    with pytest.raises(NotFound, match="missing.bin: 404"):
        download(server.url + "/missing.bin", tmp_path / "m", policy=FAST, sleep=lambda s: None)
    assert len(server.gets("/missing.bin")) == 1


def test_checksum_and_head(server):
    text = fetch_bytes(server.url + "/f.bin.CHECKSUM", policy=FAST).decode()
    assert text.split()[0] == hashlib.sha256(PAYLOAD).hexdigest()
    assert head_size(server.url + "/f.bin", policy=FAST) == len(PAYLOAD)
    assert head_size(server.url + "/nope", policy=FAST) is None
