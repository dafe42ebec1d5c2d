"""The lake on disk: atomic, idempotent writes of canonical tables, the manifest and the quarantine.

Layout (chosen by measurement, see BENCHMARKS.md):

    <lake>/<table>/<venue>/<YYYY-MM-DD>/<source_id>.parquet   sorted by ts, zstd, 64 Ki-row groups
    <lake>/<table>/<venue>/<YYYY-MM-DD>/<source_id>.<part:05d>.parquet   the same, for a source
                                                              ingested in chunks (one file per chunk)
    <lake>/_quarantine/<source_id>.parquet                    rejected rows with file, line, reason
    <lake>/_manifest/<source_id>.parquet                      one row per ingested source

A source's manifest file is its commit record: it is written last, atomically, after every data
file of that source is in place. Files of a source with no manifest (an ingest killed half way)
are removed by `recover()` before the next ingest, which then rewrites them with the same names,
so a killed-then-rerun ingest leaves exactly the lake of an uninterrupted run. Every single file is
written to a hidden temp name and renamed, so no reader ever sees half a file.

One writer at a time: `lock()` is an flock on `<lake>/.lock`, held for a whole ingest (recovery
included), and `commit()` refuses to run unless this process holds it. A pool worker writes under
its parent's lock by holding the same open lock file (`adopt_lock`): the lock then lasts until the
last of them exits, so a worker that outlived its parent still excludes the next ingest's recovery.

A large source is ingested chunk by chunk (`pipeline.ingest_chunks`): each chunk's rows go to
part files, each sorted by ts on its own. Parts of one partition may overlap in time (a Tardis
file is ordered by arrival, not exchange time), so "sorted" is a per-file promise: readers that
need one order merge files (replay's k-way merge) or ORDER BY ts, as they must anyway for the
many sources sharing a partition. A source that fits in one chunk keeps the single-file name.

Data files are written by Polars (zstd level 1, statistics on), which encodes columns on all cores
and picks dictionary encoding per column chunk where values repeat; pyarrow's writer, on one core,
took 1.3-1.6x the wall time for the same 266 k trades (though less CPU in all). The file's Arrow
schema is the canonical one from `schema.py` (text as large_string). Row groups of 64 Ki rows:
on a 30 M-trade lake, measured in one run against 128 Ki groups, crashlab's 10-minute `bars`,
`lows` and `timeline` queries were 6-15 % faster and full-day bars no slower
(`bench/bench_rowgroups.py`, BENCHMARKS.md). The manifest and the quarantine, small and streamed,
are written with pyarrow.

Only validated venue names and dates become directory names; symbols never touch the file system.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from . import schema
from .paths import default_lake

ROW_GROUP = 64 * 1024
#: Manifest and quarantine text with many distinct values: dictionary encoding does not pay for them.
_NO_DICT = frozenset({"path", "raw", "decisions", "sha256", "cursor"})
_SAFE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,40}$")
_SID = re.compile(r"^[0-9a-f]{16}$")


class LakeError(Exception):
    """A lake operation that cannot go on; the message names the file."""


#: The lake locks this thread holds: resolved lake root -> descriptor of the locked `.lock` file.
_held = threading.local()


def _held_locks() -> dict[Path, int]:
    if not hasattr(_held, "fds"):
        _held.fds = {}
    return _held.fds


@dataclass(frozen=True)
class Lake:
    root: Path

    @classmethod
    def open(cls, root: str | os.PathLike[str] | None = None) -> "Lake":
        return cls(Path(root) if root is not None else default_lake())

    # ---- paths -------------------------------------------------------------------------------
    def table_dir(self, table: str) -> Path:
        if table not in schema.TABLES:
            raise LakeError(f"unknown table {table!r}; tables: {', '.join(schema.TABLES)}")
        return self.root / table

    def files(self, table: str) -> list[Path]:
        """The committed data files of a table, in a deterministic order: THE read path of the lake.

        Every reader (SQL views, the replay stream, reference prices, markers, catalog, report)
        lists files through here, so a data file left by a killed ingest before its manifest entry
        is invisible to all of them alike. Only recovery looks at `stored_files`."""
        committed = self.committed()
        return [f for f in self.stored_files(table) if f.name.split(".")[0] in committed]

    def stored_files(self, table: str) -> list[Path]:
        """Every data file of a table on disk, committed or not (for `recover` only)."""
        d = self.table_dir(table)
        return sorted(d.glob("*/*/*.parquet")) if d.exists() else []

    def committed(self) -> frozenset[str]:
        """Source ids with a manifest entry (the commit record)."""
        d = self.manifest_dir
        return frozenset(p.stem for p in d.glob("*.parquet")) if d.exists() else frozenset()

    def fingerprint(self) -> str:
        """A content key of what readers see: the sorted committed source ids (each the sha256 prefix
        of its source file), hashed. Caches of derived data (replay tapes, reference prices) are
        keyed by it, so they are invalidated by a new commit and survive copying the lake."""
        h = hashlib.sha256()
        for sid in sorted(self.committed()):
            h.update(sid.encode() + b"\n")
        return h.hexdigest()[:16]

    @property
    def manifest_dir(self) -> Path:
        return self.root / "_manifest"

    @property
    def quarantine_dir(self) -> Path:
        return self.root / "_quarantine"

    # ---- reading the bookkeeping -------------------------------------------------------------
    def is_ingested(self, source_id: str) -> bool:
        return (self.manifest_dir / f"{source_id}.parquet").exists()

    def manifest(self) -> pl.DataFrame:
        files = self.manifest_files()
        if not files:
            return pl.from_arrow(schema.MANIFEST_SCHEMA.empty_table())  # type: ignore[return-value]
        return pl.concat([pl.read_parquet(f) for f in files], how="vertical_relaxed")

    def quarantine_files(self) -> list[Path]:
        """Quarantine files of committed sources (a killed ingest's are not shown)."""
        d, committed = self.quarantine_dir, self.committed()
        return sorted(p for p in d.glob("*.parquet") if p.stem in committed) if d.exists() else []

    def manifest_files(self) -> list[Path]:
        d = self.manifest_dir
        return sorted(d.glob("*.parquet")) if d.exists() else []

    def quarantine(self) -> pl.DataFrame:
        files = self.quarantine_files()
        if not files:
            return pl.from_arrow(schema.QUARANTINE_SCHEMA.empty_table())  # type: ignore[return-value]
        return pl.concat([pl.read_parquet(f) for f in files], how="vertical_relaxed")

    # ---- writing -----------------------------------------------------------------------------
    @contextmanager
    def lock(self) -> Iterator[int]:
        """One writer at a time per lake (another ingest waits), so recovery never races a writer.

        Yields the descriptor of the locked file (a pool passes it to its workers, see `adopt_lock`).
        Re-entrant within a thread: code that already holds the lock keeps it. The lock is released
        when the file is closed, not by an explicit unlock, so it lasts while any process that
        adopted the same open file still lives.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        key, held = self.root.resolve(), _held_locks()
        if key in held:
            yield held[key]
            return
        with open(self.root / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            held[key] = fh.fileno()
            try:
                yield fh.fileno()
            finally:
                del held[key]

    def adopt_lock(self, fd: int) -> None:
        """Hold this lake's lock through `fd`, the locked `.lock` file a parent process passed down.

        Refused unless `fd` is this lake's lock file and already holds the lock: a worker never
        writes under a lock it does not have."""
        self._check_lock(fd)
        _held_locks()[self.root.resolve()] = fd

    def _check_lock(self, fd: int | None) -> None:
        lock_file = self.root / ".lock"
        try:
            if fd is None:
                raise LakeError("this process does not hold it")
            st, on_disk = os.fstat(fd), os.stat(lock_file)
            if (st.st_dev, st.st_ino) != (on_disk.st_dev, on_disk.st_ino):
                raise LakeError(f"descriptor {fd} is not {lock_file}")
            # On the open file that holds the lock this succeeds at once (it is already held);
            # on any other it fails, as another process holds the lock.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (OSError, LakeError) as e:
            why = "another process holds it" if isinstance(e, BlockingIOError) else str(e)
            raise LakeError(f"{self.root}: writing without the lake's lock ({lock_file}): {why}") from None

    def recover(self) -> list[Path]:
        """Remove temp files and data files of sources that never committed. Call under `lock()`."""
        removed: list[Path] = []
        if not self.root.exists():
            return removed
        for p in self.root.rglob(".*.tmp"):
            p.unlink(missing_ok=True)
            removed.append(p)
        committed = self.committed()
        for table in schema.TABLES:
            for p in self.stored_files(table):
                if p.stem.split(".")[0] not in committed:
                    p.unlink(missing_ok=True)
                    removed.append(p)
        q = self.quarantine_dir
        if q.exists():
            for p in q.glob("*.parquet"):
                if p.stem.split(".")[0] not in committed:
                    p.unlink(missing_ok=True)
                    removed.append(p)
        return removed

    @staticmethod
    def _dict_columns(sch: pa.Schema) -> list[str]:
        text = [f.name for f in sch if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
        return [n for n in text if n not in _NO_DICT]

    @contextmanager
    def _atomic(self, path: Path) -> Iterator[Path]:
        """A hidden temp name to write `path` under, renamed into place only if the write finished."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            yield tmp
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _write_atomic(self, table: pa.Table, path: Path) -> None:
        with self._atomic(path) as tmp:
            pq.write_table(
                table, tmp, compression="zstd", row_group_size=ROW_GROUP, write_statistics=True,
                use_dictionary=self._dict_columns(table.schema),
            )

    def _write_frame(self, table: str, df: pl.DataFrame, path: Path) -> None:
        with self._atomic(path) as tmp:
            df.write_parquet(
                tmp, compression="zstd", compression_level=1, statistics=True, row_group_size=ROW_GROUP,
                arrow_schema=schema.TABLES[table],
            )

    def source_files(self, source_id: str) -> list[Path]:
        """Every data and quarantine file of a source (all parts), committed or not."""
        out = []
        for t in schema.TABLES:
            d = self.table_dir(t)
            if d.exists():  # only this source's names: no listing of the whole lake per source
                out += [p for p in d.glob(f"*/*/{source_id}*.parquet") if p.stem.split(".")[0] == source_id]
        q = self.quarantine_dir
        if q.exists():
            out += [p for p in q.glob(f"{source_id}*.parquet") if p.stem.split(".")[0] == source_id]
        return out

    def remove_source(self, source_id: str) -> None:
        """Remove a source's data and quarantine files (a failed or killed attempt); not its manifest."""
        if not _SID.match(source_id):
            raise LakeError(f"bad source id {source_id!r}")
        for p in self.source_files(source_id):
            p.unlink(missing_ok=True)

    def write_rows(self, source_id: str, table: str, df: pl.DataFrame, part: int | None = None) -> list[Path]:
        """Write canonical rows (event_id, source, source_id included) into their venue/day partitions.

        Each file is sorted by ts. `part` names a chunk's file `<source_id>.<part:05d>.parquet`.
        """
        if not _SID.match(source_id):
            raise LakeError(f"bad source id {source_id!r}")
        if df.height == 0:
            return []
        name = f"{source_id}.parquet" if part is None else f"{source_id}.{part:05d}.parquet"
        venue_col = "venue" if "venue" in df.columns else None
        lo, hi = df["ts"].min(), df["ts"].max()
        one_venue = venue_col is None or (df[venue_col].null_count() == 0 and (df[venue_col] == df[venue_col][0]).all())
        if lo is not None and hi is not None and lo.date() == hi.date() and one_venue and df["ts"].null_count() == 0:
            # The usual chunk: one venue, one day. No key columns, no group_by.
            parts = [((df[venue_col][0] if venue_col else "_all", lo.date().isoformat()), df)]
        else:
            keyed = df.with_columns(
                pl.col("ts").dt.date().cast(pl.String).alias("_date"),
                (pl.col(venue_col) if venue_col else pl.lit("_all")).alias("_venue"),
            )
            parts = [(k, g.drop("_date", "_venue")) for k, g in keyed.group_by(["_venue", "_date"], maintain_order=True)]
        paths = []
        for (venue, day), grp in parts:
            if venue != "_all" and (not isinstance(venue, str) or not _SAFE.match(venue)):
                raise LakeError(f"venue {venue!r} is not a safe directory name")
            if day is None:
                raise LakeError(f"{table}: rows without a timestamp reached the writer")
            if not grp["ts"].is_sorted():
                grp = grp.sort("ts", maintain_order=True)
            path = self.table_dir(table) / venue / day / name
            self._write_frame(table, schema.conform_frame(table, grp), path)
            paths.append(path)
        return paths

    def unpart(self, paths: list[Path]) -> list[Path]:
        """Give a one-chunk source's part files their single-file names (before the commit)."""
        out = []
        for p in paths:
            sid = p.name.split(".")[0]
            target = p.with_name(f"{sid}.parquet")
            os.replace(p, target)
            out.append(target)
        return out

    def quarantine_writer(self, source_id: str) -> "QuarantineWriter":
        if not _SID.match(source_id):
            raise LakeError(f"bad source id {source_id!r}")
        return QuarantineWriter(self.quarantine_dir / f"{source_id}.parquet")

    def commit(self, source_id: str, manifest_row: dict) -> None:
        """Write the manifest row: from now on the source is in the lake. Only under `lock()`."""
        if not _SID.match(source_id):
            raise LakeError(f"bad source id {source_id!r}")
        self._check_lock(_held_locks().get(self.root.resolve()))
        row = {name: manifest_row.get(name) for name in schema.MANIFEST_SCHEMA.names}
        m = pa.Table.from_pylist([row], schema=schema.MANIFEST_SCHEMA)
        self._write_atomic(m, self.manifest_dir / f"{source_id}.parquet")

    def write_source(
        self,
        source_id: str,
        tables: dict[str, pl.DataFrame],
        quarantine: pl.DataFrame,
        manifest_row: dict,
    ) -> dict[str, int]:
        """Write one source's validated rows, its quarantine, then its manifest (the commit).

        `tables` hold canonical columns (event_id included). Returns rows written per table.
        """
        if not _SID.match(source_id):
            raise LakeError(f"bad source id {source_id!r}")
        written: dict[str, int] = {}
        with self.lock():
            # A previous, killed attempt of this source may have left files under other partitions.
            self.remove_source(source_id)
            for table, df in tables.items():
                if df.height == 0:
                    continue
                written[table] = df.height
                self.write_rows(source_id, table, df)
            with self.quarantine_writer(source_id) as qw:
                qw.write(quarantine)
            self.commit(source_id, manifest_row)
        return written


class QuarantineWriter:
    """A source's rejected rows, streamed chunk by chunk into one file (temp name until `close`)."""

    def __init__(self, path: Path):
        self.path = path
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self._writer: pq.ParquetWriter | None = None
        self.rows = 0

    def write(self, quarantine: pl.DataFrame) -> None:
        if quarantine.height == 0:
            return
        q = quarantine.select(schema.QUARANTINE_SCHEMA.names).to_arrow().cast(schema.QUARANTINE_SCHEMA)
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(
                self.tmp, schema.QUARANTINE_SCHEMA, compression="zstd", write_statistics=True,
                use_dictionary=Lake._dict_columns(schema.QUARANTINE_SCHEMA),
            )
        self._writer.write_table(q, row_group_size=ROW_GROUP)
        self.rows += q.num_rows

    def close(self) -> None:
        """Move the file into place (nothing is written for a source without rejected rows)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            os.replace(self.tmp, self.path)

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "QuarantineWriter":
        return self

    def __exit__(self, exc_type, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
