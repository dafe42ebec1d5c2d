"""Tardis.dev downloadable CSV datasets: one gzip per (exchange, data type, day, symbol).

Tardis is where cross-venue tick data for 10 October 2025 lives (Coinbase, Gemini, Binance
COIN-M, liquidations). It needs an API key (env `TARDIS_API_KEY`, sent as a Bearer token) for all
days except the first of each month; we refuse other days up front instead of collecting 401s.
Tardis publishes no checksums, so a file is accepted only if its gzip stream is whole (a truncated
download fails the gzip CRC/length check) and its length matches Content-Length.
"""

from __future__ import annotations

import gzip
import os
import re
import time
import zlib
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Callable

from .http import RetryPolicy, download
from .pool import FetchResult, run_downloads

DEFAULT_BASE_URL = "https://datasets.tardis.dev"
KEY_ENV = "TARDIS_API_KEY"
DATA_TYPES = (
    "trades", "incremental_book_L2", "book_snapshot_25", "book_snapshot_5", "quotes", "book_ticker",
    "derivative_ticker", "liquidations", "options_chain",
)
_UNSAFE = re.compile(r'[:\\/?*<>|"]')


class PlanError(ValueError):
    """The request names files that cannot be fetched as asked (e.g. a paid day without a key)."""


@dataclass(frozen=True)
class TardisFile:
    exchange: str
    data_type: str
    day: date
    symbol: str  # as Tardis names it: upper case, ':' and '/' as '-'

    @property
    def url_path(self) -> str:
        return f"v1/{self.exchange}/{self.data_type}/{self.day:%Y/%m/%d}/{self.symbol}.csv.gz"

    @property
    def name(self) -> str:
        """tardis-dev's default file name, which the Tardis importer reads the data type from."""
        return _UNSAFE.sub("-", f"{self.exchange}_{self.data_type}_{self.day.isoformat()}_{self.symbol}.csv.gz")


def tardis_symbol(s: str) -> str:
    return s.strip().upper().replace(":", "-").replace("/", "-")


def parse_dates(specs: list[str]) -> list[date]:
    """`2025-10-10`, `2025-10-09..2025-10-11`, comma lists; sorted, unique."""
    out: set[date] = set()
    for spec in specs:
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            if ".." in part:
                a, b = (date.fromisoformat(x) for x in part.split(".."))
                if b < a:
                    raise PlanError(f"date range {part!r} ends before it starts")
                out.update(a + timedelta(days=i) for i in range((b - a).days + 1))
            else:
                out.add(date.fromisoformat(part))
    return sorted(out)


def plan(exchange: str, data_types: list[str], symbols: list[str], days: list[date]) -> list[TardisFile]:
    if not re.fullmatch(r"[a-z0-9-]+", exchange):
        raise PlanError(f"{exchange!r} is not a Tardis exchange id (e.g. binance, binance-futures, coinbase)")
    bad = [t for t in data_types if t not in DATA_TYPES]
    if bad:
        raise PlanError(f"unknown Tardis data type(s) {bad}; use {', '.join(DATA_TYPES)}")
    if not symbols or not days:
        raise PlanError("need at least one symbol and one date")
    return [TardisFile(exchange, t, d, tardis_symbol(s)) for t in data_types for s in symbols for d in days]


def check_access(files: list[TardisFile], api_key: str | None) -> None:
    """Without a key only first-of-month files are free: say which days need one, before any request."""
    if api_key:
        return
    paid = sorted({f.day for f in files if f.day.day != 1})
    if paid:
        days = ", ".join(d.isoformat() for d in paid[:5]) + (" ..." if len(paid) > 5 else "")
        raise PlanError(
            f"no Tardis API key: set {KEY_ENV} (sent as 'Authorization: Bearer <key>'). Without a key only "
            f"the first day of each month is free; these days need a key: {days}"
        )


def gzip_problem(path: Path) -> str | None:
    """None if the gzip stream is complete and its CRC matches; else what is wrong."""
    try:
        with gzip.open(path, "rb") as fh:
            while fh.read(1 << 20):
                pass
    except (OSError, EOFError, zlib.error) as e:
        return f"not a whole gzip file ({type(e).__name__}: {e})"
    return None


def cache_path(cache: Path, f: TardisFile) -> Path:
    return Path(cache) / "tardis" / f.exchange / f.name


def fetch_files(
    files: list[TardisFile],
    base_url: str,
    cache: Path,
    *,
    api_key: str | None = None,
    jobs: int = 4,
    policy: RetryPolicy = RetryPolicy(),
    sleep: Callable[[float], None] = time.sleep,
    show_progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> FetchResult[TardisFile]:
    api_key = api_key if api_key is not None else os.environ.get(KEY_ENV)
    check_access(files, api_key)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def one(f: TardisFile, progress) -> tuple[Path, bool]:
        dest = cache_path(cache, f)
        if dest.exists() and gzip_problem(dest) is None:
            return dest, True
        url = f"{base_url.rstrip('/')}/{f.url_path}"
        download(url, dest, verify=gzip_problem, policy=policy, headers=headers, sleep=sleep, progress=progress, log=log)
        return dest, False

    return run_downloads(files, one, jobs=jobs, show_progress=show_progress, name=lambda f: f.name)
