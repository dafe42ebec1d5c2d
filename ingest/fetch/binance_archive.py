"""Binance public data (data.binance.vision): plan, download, verify against .CHECKSUM, then ingest.

The archive is the only place where Binance's trades, book depth and mark/index prices for
10 October 2025 can still be had (REST serves the last days only), so this is the main way real
Binance data reaches the lake. Files are mirrored under `<cache>/binance-vision/<URL path>`; the
`.CHECKSUM` is stored beside each zip, and a zip is handed to ingest only once its sha256 matches.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Callable

from ..formats.base import Options
from ..lake import Lake
from ..pipeline import FileReport, ingest_paths
from .http import DownloadError, NotFound, RetryPolicy, download, fetch_bytes, head_size, sha256_of
from .pool import FetchResult, run_downloads

DEFAULT_BASE_URL = "https://data.binance.vision"

MARKET_ROOT = {"spot": "data/spot", "um": "data/futures/um", "cm": "data/futures/cm"}
#: kline-style types -> the `bars.price_type` their rows get
KLINE_PRICE_TYPE = {
    "klines": "trade",
    "markPriceKlines": "mark",
    "indexPriceKlines": "index",
    "premiumIndexKlines": "premium",
}
TYPES = ("trades", "aggTrades", *KLINE_PRICE_TYPE, "bookDepth", "metrics", "fundingRate")
FUTURES_ONLY = {"markPriceKlines", "indexPriceKlines", "premiumIndexKlines", "bookDepth", "metrics", "fundingRate"}
MONTHLY_ONLY = {"fundingRate"}  # Binance publishes funding history as monthly files only
INTERVALS = ("1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d")


class PlanError(ValueError):
    """The request cannot name files that exist (a spot-only type on futures, a bad interval...)."""


@dataclass(frozen=True)
class ArchiveFile:
    market: str  # spot | um | cm
    type: str
    symbol: str  # Binance's own, upper case: BTCUSDT, BTCUSD_PERP
    period: str  # YYYY-MM-DD (daily) or YYYY-MM (monthly)
    interval: str | None = None

    @property
    def daily(self) -> bool:
        return len(self.period) == 10

    @property
    def name(self) -> str:
        mid = self.interval if self.type in KLINE_PRICE_TYPE else self.type
        return f"{self.symbol}-{mid}-{self.period}.zip"

    @property
    def url_path(self) -> str:
        parts = [MARKET_ROOT[self.market], "daily" if self.daily else "monthly", self.type, self.symbol]
        if self.type in KLINE_PRICE_TYPE:
            parts.append(str(self.interval))
        return "/".join([*parts, self.name])

    def lake_market(self) -> str:
        if self.market == "spot":
            return "spot"
        return "perp" if "_" not in self.symbol or self.symbol.endswith("_PERP") else "future"

    def options(self) -> Options:
        """What the file's name cannot tell the importer: which price a kline is, and the market."""
        return Options(
            price_type=KLINE_PRICE_TYPE.get(self.type),
            venue="binance",
            market=self.lake_market(),
            interval=self.interval,
            verify_checksum=True,
        )


def _days(start: date, end: date) -> list[date]:
    if end < start:
        raise PlanError(f"--end {end} is before --start {start}")
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def plan(
    market: str, dtype: str, symbols: list[str], start: date, end: date, interval: str | None = None
) -> list[ArchiveFile]:
    """The files a request names, in a stable order (symbol, then day)."""
    if market not in MARKET_ROOT:
        raise PlanError(f"unknown market {market!r}: use spot, um (USDⓈ-M futures) or cm (COIN-M futures)")
    if dtype not in TYPES:
        raise PlanError(f"unknown type {dtype!r}: use one of {', '.join(TYPES)}")
    if market == "spot" and dtype in FUTURES_ONLY:
        raise PlanError(f"{dtype} exists for futures only (--market um or cm), not spot")
    if dtype in KLINE_PRICE_TYPE:
        if not interval:
            raise PlanError(f"{dtype} needs --interval (e.g. 1m); one of {', '.join(INTERVALS)}")
        if interval not in INTERVALS:
            raise PlanError(f"interval {interval!r} has no daily files; use one of {', '.join(INTERVALS)}")
    else:
        interval = None
    if not symbols:
        raise PlanError("no --symbols given")
    days = _days(start, end)
    if dtype in MONTHLY_ONLY:
        periods = sorted({d.strftime("%Y-%m") for d in days})
    else:
        periods = [d.isoformat() for d in days]
    out = []
    for sym in symbols:
        s = sym.strip().upper().replace("/", "")
        if not s.replace("_", "").isalnum():
            raise PlanError(f"symbol {sym!r} is not a Binance symbol (expected e.g. BTCUSDT, BTCUSD_PERP)")
        out.extend(ArchiveFile(market, dtype, s, p, interval) for p in periods)
    return out


def cache_path(cache: Path, f: ArchiveFile) -> Path:
    return Path(cache) / "binance-vision" / f.url_path


def estimate(
    files: list[ArchiveFile], base_url: str, *, policy: RetryPolicy = RetryPolicy(), jobs: int = 8
) -> tuple[int, list[ArchiveFile]]:
    """Total Content-Length of the files (HEAD requests) and the files the server does not have."""
    base = base_url.rstrip("/")
    sizes: dict[ArchiveFile, int | None] = {}
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as ex:
        futs = {ex.submit(head_size, f"{base}/{f.url_path}", policy=policy): f for f in files}
        for fut in as_completed(futs):
            sizes[futs[fut]] = fut.result()
    total = sum(v for v in sizes.values() if v)
    return total, [f for f in files if sizes[f] is None]


def parse_checksum(text: str, name: str, url: str) -> str:
    """The hex digest from a `sha256sum`-style line; refuse anything else rather than guess."""
    first = text.strip().split()
    if not first or len(first[0]) != 64 or any(c not in "0123456789abcdefABCDEF" for c in first[0]):
        raise DownloadError(f"{url}: not a sha256sum line: {text[:80]!r}")
    if len(first) > 1 and first[1].lstrip("*") != name:
        raise DownloadError(f"{url}: checksum is for {first[1]!r}, not {name!r}")
    return first[0].lower()


def fetch_one(
    f: ArchiveFile,
    base_url: str,
    cache: Path,
    *,
    verify: bool = True,
    policy: RetryPolicy = RetryPolicy(),
    sleep: Callable[[float], None] = time.sleep,
    progress: Callable[[int, int | None], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[Path, bool]:
    """Download one zip (and its checksum) into the cache; returns (path, was_already_cached)."""
    url = f"{base_url.rstrip('/')}/{f.url_path}"
    dest = cache_path(cache, f)
    digest = None
    if verify:
        try:
            text = fetch_bytes(url + ".CHECKSUM", policy=policy, sleep=sleep, log=log).decode("ascii", "replace")
        except NotFound:
            if head_size(url, policy=policy, sleep=sleep) is None:
                raise NotFound(f"{url}: 404 Not Found (not published for this day/symbol?)") from None
            raise DownloadError(
                f"{f.name}: no .CHECKSUM published beside {url}; refusing an unverified file "
                "(pass --no-verify to accept it)"
            ) from None
        digest = parse_checksum(text, f.name, url + ".CHECKSUM")
    if dest.exists() and (digest is None or sha256_of(dest) == digest):
        return dest, True
    dest.unlink(missing_ok=True)
    download(url, dest, sha256=digest, policy=policy, sleep=sleep, progress=progress, log=log)
    if digest is not None:
        ck = dest.with_name(dest.name + ".CHECKSUM")
        tmp = ck.with_name(f".{ck.name}.tmp")
        tmp.write_text(f"{digest}  {f.name}\n")
        tmp.replace(ck)
    return dest, False


def fetch_files(
    files: list[ArchiveFile],
    base_url: str,
    cache: Path,
    *,
    jobs: int = 4,
    verify: bool = True,
    policy: RetryPolicy = RetryPolicy(),
    sleep: Callable[[float], None] = time.sleep,
    show_progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> FetchResult[ArchiveFile]:
    """Download `jobs` files at a time; a missing or failed file is reported, the rest go on."""

    def one(f: ArchiveFile, progress) -> tuple[Path, bool]:
        return fetch_one(f, base_url, cache, verify=verify, policy=policy, sleep=sleep, progress=progress, log=log)

    return run_downloads(files, one, jobs=jobs, show_progress=show_progress, name=lambda f: f.name)


def ingest_ready(
    ready: list[tuple[ArchiveFile, Path]], lake: Lake, *, jobs: int = 1, progress=None
) -> list[FileReport]:
    """Hand verified files to the shared ingest, grouped by what the importer must be told."""
    groups: dict[tuple, tuple[Options, list[Path]]] = {}
    for f, path in ready:
        opt = f.options()
        key = (opt.price_type, opt.market, opt.interval)
        groups.setdefault(key, (opt, []))[1].append(path)
    reports: list[FileReport] = []
    for opt, paths in groups.values():
        reports.extend(ingest_paths(paths, lake, opt, jobs=jobs, progress=progress))
    return reports
