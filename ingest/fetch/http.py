"""Resumable, verified HTTP downloads with the standard library only.

Public archives are large and the networks users fetch them over are not: a download must survive
server errors (5xx), throttling (429 + Retry-After), a connection reset, a stalled server and a
truncated body, and pick up where it stopped. Bytes go to `<file>.part` (resumed with `Range:`);
the final name appears only after the whole file is there and, when a checksum is known, matches
it, so nothing downstream ever sees a partial or corrupt file.
"""

from __future__ import annotations

import email.utils
import hashlib
import http.client
import os
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import timezone
from pathlib import Path
from typing import Callable

USER_AGENT = "crashlab-fetch/0.1 (+https://github.com/; stdlib urllib)"
CHUNK = 1 << 16


class DownloadError(Exception):
    """A download that cannot complete; the message names the URL (and the file, if any)."""


class NotFound(DownloadError):
    """HTTP 404: the archive does not have this file (a day not published, a wrong symbol)."""


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try. Defaults suit a public CDN; tests shrink the delays."""

    attempts: int = 6  # tries per file, first one included
    backoff: float = 1.0  # seconds before the 2nd try; doubles each time
    max_backoff: float = 60.0
    timeout: float = 30.0  # per socket operation (connect, each read)
    max_retry_after: float = 300.0  # never sleep longer than this on a Retry-After


def _retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def _request(url: str, headers: dict[str, str] | None, method: str = "GET") -> urllib.request.Request:
    h = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    h.update(headers or {})
    return urllib.request.Request(url, headers=h, method=method)


#: Failures worth another try: the network or the server, not the request.
_TRANSIENT = (
    urllib.error.URLError,
    http.client.HTTPException,  # IncompleteRead, RemoteDisconnected, BadStatusLine
    ConnectionError,  # reset, aborted, refused
    TimeoutError,
    socket.timeout,
)


class _Attempts:
    """Counts tries and sleeps between them (exponential backoff, or the server's Retry-After)."""

    def __init__(self, url: str, policy: RetryPolicy, sleep: Callable[[float], None], log: Callable[[str], None] | None):
        self.url, self.policy, self.sleep, self.log = url, policy, sleep, log
        self.n = 0
        self.errors: list[str] = []

    def failed(self, why: str, wait: float | None = None) -> None:
        self.n += 1
        self.errors.append(why)
        if self.n >= self.policy.attempts:
            raise DownloadError(
                f"{self.url}: gave up after {self.n} tries; last error: {why}"
                + (f" (earlier: {'; '.join(self.errors[-4:-1])})" if len(self.errors) > 1 else "")
            )
        if wait is None:
            wait = min(self.policy.max_backoff, self.policy.backoff * 2 ** (self.n - 1))
        wait = min(wait, self.policy.max_retry_after)
        if self.log:
            name = self.url.split("?", 1)[0].rsplit("/", 1)[-1]
            self.log(f"{name}: retry {self.n}/{self.policy.attempts - 1} in {wait:.2f}s: {why}")
        self.sleep(wait)


def _http_error(url: str, e: urllib.error.HTTPError, tries: _Attempts) -> None:
    """Decide on an HTTP error status: retry (with the right wait) or raise."""
    code = e.code
    if code == 404:
        raise NotFound(f"{url}: 404 Not Found (not published for this day/symbol?)") from None
    if code in (429, 503) or code == 418:
        wait = _retry_after(e.headers.get("Retry-After") if e.headers else None)
        tries.failed(f"HTTP {code} (throttled)", wait)
        return
    if 500 <= code < 600 or code == 408:
        tries.failed(f"HTTP {code}")
        return
    if code in (401, 403):
        raise DownloadError(f"{url}: HTTP {code} {e.reason}: not authorised (missing or wrong API key?)") from None
    raise DownloadError(f"{url}: HTTP {code} {e.reason}") from None


def fetch_bytes(
    url: str,
    *,
    policy: RetryPolicy = RetryPolicy(),
    headers: dict[str, str] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    log: Callable[[str], None] | None = None,
) -> bytes:
    """A small resource (a .CHECKSUM, a JSON listing) in memory, with the same retries."""
    tries = _Attempts(url, policy, sleep, log)
    while True:
        try:
            with urllib.request.urlopen(_request(url, headers), timeout=policy.timeout) as resp:
                body = resp.read()
                length = resp.headers.get("Content-Length")
                if length is not None and len(body) != int(length):
                    tries.failed(f"truncated body: {len(body)} of {length} bytes")
                    continue
                return body
        except urllib.error.HTTPError as e:
            _http_error(url, e, tries)
        except _TRANSIENT as e:
            tries.failed(f"{type(e).__name__}: {e}")


def head_size(
    url: str,
    *,
    policy: RetryPolicy = RetryPolicy(),
    headers: dict[str, str] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int | None:
    """Content-Length from a HEAD request (None if the server does not say or has no such file)."""
    tries = _Attempts(url, policy, sleep, None)
    while True:
        try:
            with urllib.request.urlopen(_request(url, headers, "HEAD"), timeout=policy.timeout) as resp:
                v = resp.headers.get("Content-Length")
                return int(v) if v is not None else None
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            _http_error(url, e, tries)
        except _TRANSIENT as e:
            tries.failed(f"{type(e).__name__}: {e}")


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def download(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    verify: Callable[[Path], str | None] | None = None,
    policy: RetryPolicy = RetryPolicy(),
    headers: dict[str, str] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    progress: Callable[[int, int | None], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Download `url` to `dest`, resuming `dest.part`; `dest` exists only when complete and verified.

    `sha256` (hex) is checked when given; `verify(part) -> error text or None` runs extra checks
    (e.g. that a gzip is whole, for sources without checksums). A mismatch discards the partial
    file and downloads once more from scratch (a corrupt resume is the usual cause); a second
    mismatch is an error naming the file. `progress(new_bytes, total_or_None)` is called as bytes
    arrive (a resumed file first reports the bytes already on disk).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    tries = _Attempts(url, policy, sleep, log)
    mismatches = 0
    reported = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        h = dict(headers or {})
        if have:
            h["Range"] = f"bytes={have}-"
        complete = False
        try:
            with urllib.request.urlopen(_request(url, h), timeout=policy.timeout) as resp:
                status = resp.status
                length = resp.headers.get("Content-Length")
                if have and status == 206:
                    crange = resp.headers.get("Content-Range", "")
                    if not crange.startswith(f"bytes {have}-"):
                        raise DownloadError(f"{url}: server answered Range bytes={have}- with {crange!r}")
                    mode = "ab"
                else:  # 200: the whole file (a server that ignores Range restarts us)
                    have, mode = 0, "wb"
                expected = have + int(length) if length is not None else None
                if progress and reported != have:
                    progress(have - reported, expected)
                    reported = have
                got = have
                with open(part, mode) as fh:
                    while True:
                        chunk = resp.read(CHUNK)
                        if not chunk:
                            break
                        fh.write(chunk)
                        got += len(chunk)
                        if progress:
                            progress(len(chunk), expected)
                            reported = got
                if expected is not None and got < expected:
                    tries.failed(f"truncated body: {got} of {expected} bytes (will resume)")
                    continue
                complete = True
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:  # nothing past what we have: the part is already whole
                complete = True
            else:
                _http_error(url, e, tries)
        except _TRANSIENT as e:
            tries.failed(f"{type(e).__name__}: {e}")
        if not complete:
            continue
        problem = None
        if sha256 is not None:
            actual = sha256_of(part)
            if actual != sha256.lower():
                problem = f"sha256 mismatch: expected {sha256.lower()}, got {actual}"
        if problem is None and verify is not None:
            problem = verify(part)
        if problem is None:
            os.replace(part, dest)
            return dest
        part.unlink(missing_ok=True)
        if progress:
            progress(-reported, None)
        reported = 0
        mismatches += 1
        if mismatches >= 2:
            raise DownloadError(f"{dest.name} ({url}): {problem}; downloaded twice, refusing the file")
        if log:
            log(f"{dest.name}: {problem}; downloading again from scratch")

