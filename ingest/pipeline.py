"""Ingest files into the lake: detect, parse, validate, write, account, in parallel, resumably."""

from __future__ import annotations

import hashlib
import json
import os
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from multiprocessing import get_context
from pathlib import Path

import polars as pl

from . import __version__
from .detect import detect, expand_paths
from .formats.base import FormatError, Options, Parsed
from .lake import Lake
from .validate import validate


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
    """The rejected units as text, so a human can see what was refused."""
    if bad.height == 0:
        return pl.Series("raw", [], dtype=pl.String)
    if parsed.raw is not None and "_row" in parsed.raw.columns:
        cols = [c for c in parsed.raw.columns if c != "_row"]
        raw = parsed.raw.select("_row", pl.concat_str([pl.col(c).cast(pl.String).fill_null("") for c in cols], separator=",").alias("raw"))
        return bad.join(raw, on="_row", how="left", maintain_order="left")["raw"]
    # Fall back to the first canonical row derived from the unit, as JSON.
    parts = []
    for t, df in tables.items():
        sub = df.join(bad.select("_row"), on="_row", how="semi").unique("_row", keep="first", maintain_order=True)
        if sub.height:
            parts.append(sub.select("_row", pl.struct(pl.exclude("_row", "event_id")).struct.json_encode().alias("raw")))
    if not parts:
        return pl.Series("raw", [None] * bad.height, dtype=pl.String)
    raw = pl.concat(parts).unique("_row", keep="first", maintain_order=True)
    return bad.join(raw, on="_row", how="left", maintain_order="left")["raw"]


def ingest_parsed(lake: Lake, parsed: Parsed, *, path: str, sha256: str, source: str, cursor: dict | None = None) -> FileReport:
    """Validate and commit one parsed source. Used by file ingest, fetchers and the simulator alike."""
    source_id = sha256[:16]
    rep = FileReport(path=path, status="written", format=parsed.format, source_id=source_id, rows_read=parsed.rows_read)
    if lake.is_ingested(source_id):
        rep.status = "already ingested"
        return rep
    good, bad = validate(parsed)
    written_units: set[int] = set()
    out: dict[str, pl.DataFrame] = {}
    for t, df in good.items():
        written_units.update(df["_row"].unique().to_list())
        out[t] = df.drop("_row").with_columns(pl.lit(source).alias("source"), pl.lit(source_id).alias("source_id"))
    rep.rows_quarantined = bad.height
    rep.rows_written = len(written_units)
    if rep.rows_written + rep.rows_quarantined != parsed.rows_read:
        raise RuntimeError(
            f"{path}: accounting broken: read {parsed.rows_read} units but wrote {rep.rows_written} "
            f"and quarantined {rep.rows_quarantined} (importer {parsed.format} bug)"
        )
    ts = [df["ts"] for df in out.values() if df.height]
    if ts:
        all_ts = pl.concat(ts)
        rep.first_ts, rep.last_ts = all_ts.min(), all_ts.max()  # type: ignore[assignment]
    quarantine = bad.with_columns(
        pl.lit(source_id).alias("source_id"),
        pl.lit(path).alias("path"),
        pl.col("_row").alias("line"),
        _raw_text(parsed, bad, parsed.tables).alias("raw"),
    )
    manifest_row = {
        "source_id": source_id,
        "sha256": sha256,
        "path": path,
        "format": parsed.format,
        "decisions": json.dumps(parsed.decisions, sort_keys=True, default=str),
        "tables": ",".join(sorted(out)),
        "rows_read": parsed.rows_read,
        "rows_written": rep.rows_written,
        "rows_quarantined": rep.rows_quarantined,
        "first_ts": rep.first_ts,
        "last_ts": rep.last_ts,
        "ingested_at": datetime.now(timezone.utc),
        "tool_version": __version__,
        "cursor": json.dumps(cursor) if cursor is not None else None,
    }
    rep.tables = lake.write_source(source_id, out, quarantine, manifest_row)
    return rep


def ingest_file(lake_root: str, path: str, options: Options) -> FileReport:
    """Ingest one file; errors come back in the report (naming the file) instead of raising."""
    lake = Lake.open(lake_root)
    p = Path(path)
    try:
        sha = sha256_file(p)
        if lake.is_ingested(sha[:16]):
            return FileReport(path=path, status="already ingested", source_id=sha[:16])
        importer = detect(p)
        parsed = importer.parse(p, options)
        return ingest_parsed(lake, parsed, path=str(p), sha256=sha, source=importer.SOURCE)
    except FormatError as e:
        return FileReport(path=path, status="error", message=str(e))
    except OSError as e:
        return FileReport(path=path, status="error", message=f"{path}: {e}")
    except Exception as e:  # an importer bug must still name the file, and the run goes on
        tb = traceback.format_exc(limit=3)
        return FileReport(path=path, status="error", message=f"{path}: {type(e).__name__}: {e}\n{tb}")


def ingest_paths(
    paths: list[str | os.PathLike[str]],
    lake: Lake,
    options: Options | None = None,
    jobs: int = 1,
    progress=None,
) -> list[FileReport]:
    """Ingest files and folders. `progress(report)` is called as each file finishes."""
    options = options or Options()
    files = expand_paths([Path(p) for p in paths])
    reports: list[FileReport] = []
    with lake.lock():
        lake.recover()
        if jobs <= 1 or len(files) <= 1:
            for f in files:
                r = ingest_file(str(lake.root), str(f), options)
                reports.append(r)
                if progress:
                    progress(r)
        else:
            with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as ex:
                futs = {ex.submit(ingest_file, str(lake.root), str(f), options): f for f in files}
                for fut in as_completed(futs):
                    r = fut.result()
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
