"""Ingest files into the lake: detect, parse, validate, write, account, in parallel, resumably.

Parallel ingest (`jobs > 1`) runs files in spawned worker processes that die with their parent and
write only under the parent's lake lock: the parent passes its locked lock file down (each worker
holds the same open file, `Lake.adopt_lock`), and a worker's commit checks it holds that lock. So a
parent killed with SIGKILL takes its workers with it (Linux: a parent-death signal; elsewhere the
workers watch their parent), and a worker that somehow outlived it still holds the lock, so the next
ingest waits for it instead of recovering the lake under its feet.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import signal
import sys
import threading
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from multiprocessing import get_context, reduction
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import polars as pl

from . import __version__
from .detect import detect, expand_paths
from .formats.base import MAX_MALFORMED, FormatError, Options, Parsed
from .formats.malformed import merge as merge_malformed
from .lake import Lake
from .validate import SeenIds, validate


@dataclass
class FileReport:
    path: str
    status: str  # written | already ingested | error
    format: str = ""
    source_id: str = ""
    rows_read: int = 0
    rows_written: int = 0
    rows_quarantined: int = 0
    first_ts: datetime | None = None
    last_ts: datetime | None = None
    tables: dict[str, int] = field(default_factory=dict)
    message: str = ""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _raw_text(parsed: Parsed, bad: pl.DataFrame, tables: dict[str, pl.DataFrame]) -> pl.Series:
    """The rejected units as text, so a human can see what was refused.

    From `Parsed.raw` (the line as read) where it has the unit; else the text the importer gave with
    the rejection (a malformed line, which no table row and no parsed line has); otherwise the first
    canonical row made from the unit, as JSON (units rejected after parsing may have no raw line).
    """
    if bad.height == 0:
        return pl.Series("raw", [], dtype=pl.String)
    keys = bad.select("_row")
    out = pl.Series("raw", [None] * bad.height, dtype=pl.String)
    lines = parsed.raw() if callable(parsed.raw) else parsed.raw
    if lines is not None and "_row" in lines.columns:
        cols = [c for c in lines.columns if c != "_row"]
        raw = lines.filter(pl.col("_row").is_in(keys["_row"].implode())).select(
            "_row", pl.concat_str([pl.col(c).cast(pl.String).fill_null("") for c in cols], separator=",").alias("raw")
        )
        out = keys.join(raw, on="_row", how="left", maintain_order="left")["raw"]
        if out.null_count() == 0:
            return out
    own = parsed.rejected.filter(pl.col("raw").is_not_null())
    if own.height:
        given = keys.join(own.select("_row", "raw").unique("_row", keep="first"), on="_row", how="left", maintain_order="left")
        out = out.fill_null(given["raw"]).alias("raw")
        if out.null_count() == 0:
            return out
    missing = keys.filter(out.is_null())
    parts = []
    for df in tables.values():
        sub = df.filter(pl.col("_row").is_in(missing["_row"].implode())).unique("_row", keep="first", maintain_order=True)
        if sub.height:
            parts.append(sub.select("_row", pl.struct(pl.exclude("_row", "event_id")).struct.json_encode().alias("raw")))
    if not parts:
        return out
    js = pl.concat(parts).unique("_row", keep="first", maintain_order=True)
    fallback = keys.join(js, on="_row", how="left", maintain_order="left")["raw"]
    return out.fill_null(fallback).alias("raw")


def _units(good: dict[str, pl.DataFrame]) -> int:
    """Source units with rows to write (a unit may have many rows, in several tables)."""
    rows = [df["_row"].to_numpy() for df in good.values() if df.height]
    if not rows:
        return 0
    r = rows[0] if len(rows) == 1 else np.concatenate(rows)
    if len(rows) == 1 and (r[1:] > r[:-1]).all():  # one row per unit, in file order: the usual case
        return len(r)
    return int(np.unique(r).size)


def ingest_parsed(lake: Lake, parsed: Parsed, *, path: str, sha256: str, source: str, cursor: dict | None = None) -> FileReport:
    """Validate and commit one parsed source. Used by file ingest, fetchers and the simulator alike."""
    return ingest_chunks(lake, [parsed], path=path, sha256=sha256, source=source, cursor=cursor)


def ingest_chunks(
    lake: Lake, chunks: Iterable[Parsed], *, path: str, sha256: str, source: str, cursor: dict | None = None,
    on_chunk: Callable[[int], None] | None = None, max_malformed: float = MAX_MALFORMED,
) -> FileReport:
    """Validate and commit one source given as consecutive chunks (`_row` ranges in file order).

    Memory is one chunk's frames plus the event ids seen so far (16 bytes each, for the duplicate
    check across chunks). Each chunk's rows go to part files; a source that came in one chunk
    keeps the single-file name. The manifest, written last, is the commit: an error or a kill
    part way leaves only uncommitted files, which are removed here or by `Lake.recover()`.
    The format, day and raw lines are per chunk; the decisions of the LAST chunk are the file's
    (an importer may complete them as it reads, e.g. the timestamp-unit evidence).
    A source whose malformed units (`Parsed.malformed`) are more than `max_malformed` of its units
    is refused (FormatError) after its last chunk, and nothing of it stays.
    Everything runs under the lake's lock (taken here unless this thread or process holds it).
    `on_chunk(rows_read_so_far)` is called after each chunk is written (progress for large files).
    """
    source_id = sha256[:16]
    rep = FileReport(path=path, status="written", source_id=source_id)
    with lake.lock():
        if lake.is_ingested(source_id):
            rep.status = "already ingested"
            return rep
        _write_source(lake, chunks, rep, sha256=sha256, source=source, cursor=cursor, on_chunk=on_chunk,
                      max_malformed=max_malformed)
    return rep


def _write_source(
    lake: Lake, chunks: Iterable[Parsed], rep: FileReport, *, sha256: str, source: str, cursor: dict | None,
    on_chunk: Callable[[int], None] | None, max_malformed: float,
) -> None:
    source_id, path = rep.source_id, rep.path
    seen = SeenIds()
    written_paths: list[Path] = []
    counts: dict[str, int] = {}
    decisions: dict = {}
    malformed: dict[str, tuple[int, int]] = {}
    n_chunks = 0
    lake.remove_source(source_id)  # a previous, killed attempt may have left files behind
    try:
        with lake.quarantine_writer(source_id) as qw:
            for part, parsed in enumerate(chunks):
                n_chunks, decisions = part + 1, parsed.decisions
                if part == 0:
                    rep.format = parsed.format
                rep.rows_read += parsed.rows_read
                malformed = merge_malformed(malformed, parsed.malformed)
                good, bad = validate(parsed, seen=seen)
                n_written = _units(good)
                if n_written + bad.height != parsed.rows_read:
                    raise RuntimeError(
                        f"{path}: accounting broken: read {parsed.rows_read} units but wrote {n_written} "
                        f"and quarantined {bad.height} (importer {parsed.format} bug)"
                    )
                rep.rows_written += n_written
                rep.rows_quarantined += bad.height
                for t, df in good.items():
                    if df.height == 0:
                        continue
                    out = df.drop("_row").with_columns(pl.lit(source).alias("source"), pl.lit(source_id).alias("source_id"))
                    lo, hi = out["ts"].min(), out["ts"].max()
                    rep.first_ts = lo if rep.first_ts is None or lo < rep.first_ts else rep.first_ts  # type: ignore[operator]
                    rep.last_ts = hi if rep.last_ts is None or hi > rep.last_ts else rep.last_ts  # type: ignore[operator]
                    counts[t] = counts.get(t, 0) + out.height
                    written_paths += lake.write_rows(source_id, t, out, part)
                    del out
                if bad.height:
                    qw.write(bad.with_columns(
                        pl.lit(source_id).alias("source_id"),
                        pl.lit(path).alias("path"),
                        pl.col("_row").alias("line"),
                        _raw_text(parsed, bad, parsed.tables).alias("raw"),
                    ))
                good = bad = df = parsed = None  # type: ignore[assignment]  # free the chunk
                if on_chunk is not None:
                    on_chunk(rep.rows_read)
            _refuse_if_mostly_malformed(path, rep.format, rep.rows_read, malformed, max_malformed)
        if n_chunks == 1:
            lake.unpart(written_paths)
        manifest_row = {
            "source_id": source_id,
            "sha256": sha256,
            "path": path,
            "format": rep.format,
            "decisions": json.dumps(decisions, sort_keys=True, default=str),
            "tables": ",".join(sorted(counts)),
            "rows_read": rep.rows_read,
            "rows_written": rep.rows_written,
            "rows_quarantined": rep.rows_quarantined,
            "first_ts": rep.first_ts,
            "last_ts": rep.last_ts,
            "ingested_at": datetime.now(timezone.utc),
            "tool_version": __version__,
            "cursor": json.dumps(cursor) if cursor is not None else None,
        }
        lake.commit(source_id, manifest_row)
    except BaseException:
        lake.remove_source(source_id)
        raise
    rep.tables = counts


def _refuse_if_mostly_malformed(
    path: str, fmt: str, rows_read: int, malformed: dict[str, tuple[int, int]], limit: float
) -> None:
    """Refuse a file more malformed than `limit` (a share of its units): it is most likely not a
    `fmt` file at all, and quarantining it line by line would pass garbage off as a source."""
    n = sum(k for k, _ in malformed.values())
    if not n or n <= limit * rows_read:
        return
    kinds = "; ".join(
        f"{k:,} {kind} (first at line {first})"
        for kind, (k, first) in sorted(malformed.items(), key=lambda kv: (-kv[1][0], kv[0]))
    )
    raise FormatError(
        path,
        f"{n:,} of its {rows_read:,} lines ({n / rows_read:.0%}) are malformed, more than the "
        f"{limit:.0%} a file may have (--max-malformed {limit:g}): {kinds}. Is it really a {fmt} file?",
    )


#: Source units per chunk for importers that stream (`iter_parse`): ~1 GB peak for Tardis trades.
CHUNK_ROWS = 1_000_000


def _chunks(importer, path: Path, options: Options, chunk_rows: int) -> Iterable[Parsed]:
    """The importer's chunks if it can stream a file, else the whole file as one chunk."""
    it = getattr(importer, "iter_parse", None)
    if it is not None:
        return it(path, options, chunk_rows)
    return [importer.parse(path, options)]


def ingest_file(
    lake_root: str, path: str, options: Options, chunk_rows: int = CHUNK_ROWS,
    on_chunk: Callable[[int], None] | None = None,
) -> FileReport:
    """Ingest one file; errors come back in the report (naming the file) instead of raising."""
    lake = Lake.open(lake_root)
    p = Path(path)
    try:
        sha = sha256_file(p)
        if lake.is_ingested(sha[:16]):
            return FileReport(path=path, status="already ingested", source_id=sha[:16])
        importer = detect(p)
        chunks = _chunks(importer, p, options, chunk_rows)
        return ingest_chunks(lake, chunks, path=str(p), sha256=sha, source=importer.SOURCE, on_chunk=on_chunk,
                             max_malformed=options.max_malformed)
    except FormatError as e:
        return FileReport(path=path, status="error", message=str(e))
    except OSError as e:
        return FileReport(path=path, status="error", message=f"{path}: {e}")
    except Exception as e:  # an importer bug must still name the file, and the run goes on
        tb = traceback.format_exc(limit=3)
        return FileReport(path=path, status="error", message=f"{path}: {type(e).__name__}: {e}\n{tb}")


# ---- the worker pool -----------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class _InheritedFd:
    """A descriptor handed to a spawned worker: pickled while the worker is being started, it is
    passed into the new process (multiprocessing's own way of giving a child a pipe end)."""

    def __init__(self, fd: int):
        self.fd = fd

    def __reduce__(self):
        return (_InheritedFd._rebuild, (reduction.DupFd(self.fd),))

    @staticmethod
    def _rebuild(dup) -> "_InheritedFd":
        return _InheritedFd(dup.detach())


def _die_with_parent(parent: int) -> None:
    """End this process as soon as `parent` ends, however it ends (SIGKILL included).

    Linux: the kernel sends SIGKILL when the parent dies (PR_SET_PDEATHSIG); elsewhere, or if prctl
    is refused, a thread checks the parent id twice a second. The parent may have died before
    this ran (then this process already has another parent), so the parent id is checked after.
    """
    armed = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if not armed:
        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(0.5)
            os._exit(1)

        threading.Thread(target=watch, name="watch-parent", daemon=True).start()
    if os.getppid() != parent:
        os._exit(1)


def _worker_init(parent: int, lake_root: str, lock: _InheritedFd) -> None:
    """Start of each pool worker: die with the parent, and write under the parent's lake lock."""
    _die_with_parent(parent)
    Lake.open(lake_root).adopt_lock(lock.fd)


def _worker_died(f: Path, e: BaseException) -> FileReport:
    return FileReport(
        path=str(f), status="error",
        message=f"{f}: the worker process ingesting it died ({type(e).__name__}: killed, or out of memory?); "
        "whatever it did not commit was not written: run the ingest again (committed files are skipped)",
    )


def ingest_paths(
    paths: list[str | os.PathLike[str]],
    lake: Lake,
    options: Options | None = None,
    jobs: int = 1,
    progress=None,
    chunk_rows: int = CHUNK_ROWS,
    rows_progress: Callable[[str, int], None] | None = None,
) -> list[FileReport]:
    """Ingest files and folders. `progress(report)` is called as each file finishes.

    `chunk_rows` bounds memory per file for importers that stream (see `ingest_chunks`).
    `rows_progress(path, rows_read_so_far)` follows a large file chunk by chunk (one process only:
    with `jobs > 1` the files are in other processes and only `progress` is called).
    With `jobs > 1` the files go to spawned worker processes that hold this process's lake lock and
    die with it (see the module docstring).
    """
    options = options or Options()
    files = expand_paths([Path(p) for p in paths])
    reports: list[FileReport] = []
    with lake.lock() as lock_fd:
        lake.recover()
        if jobs <= 1 or len(files) <= 1:
            for f in files:
                follow = None if rows_progress is None else (lambda n, f=f: rows_progress(str(f), n))
                r = ingest_file(str(lake.root), str(f), options, chunk_rows, on_chunk=follow)
                reports.append(r)
                if progress:
                    progress(r)
        else:
            with ProcessPoolExecutor(
                max_workers=min(jobs, len(files)), mp_context=get_context("spawn"), initializer=_worker_init,
                initargs=(os.getpid(), str(lake.root), _InheritedFd(lock_fd)),
            ) as ex:
                futs = {ex.submit(ingest_file, str(lake.root), str(f), options, chunk_rows): f for f in files}
                for fut in as_completed(futs):
                    try:
                        r = fut.result()
                    except BrokenProcessPool as e:
                        r = _worker_died(futs[fut], e)
                    reports.append(r)
                    if progress:
                        progress(r)
    order = {str(f): i for i, f in enumerate(files)}
    reports.sort(key=lambda r: order.get(r.path, 0))
    return reports


def report_dict(r: FileReport) -> dict:
    d = asdict(r)
    d["first_ts"] = r.first_ts.isoformat() if r.first_ts else None
    d["last_ts"] = r.last_ts.isoformat() if r.last_ts else None
    return d
