"""DuckDB over the lake, read-only and locked: one view per table, named queries, user SQL.

Why it is built this way:

* The database is in memory; the lake is only ever *read*, through views over the Parquet files of
  committed sources (a source without a `manifest` entry is a killed ingest and is not shown).
* Safety has two independent layers. (1) Every user statement is parsed by DuckDB first and only
  read statements run (SELECT/WITH/VALUES/FROM, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN of those, a few
  read PRAGMAs); the rest get a one-line ``refused: ...`` error. (2) The connection itself is locked:
  ``enable_external_access=false`` with ``allowed_directories=[<lake>/]`` (DuckDB still reads
  allowed directories with external access off), extension autoload/autoinstall off and
  ``lock_configuration=true``, so even a statement that slipped past (1) cannot read outside the
  lake, load an extension or change a setting. Files are written only by Python (`--out`).
* Limits (`Limits`): a time limit (the query is interrupted) and a memory limit (DuckDB's
  `memory_limit`, and the result is fetched in batches and stopped when it outgrows the same
  limit), so a runaway query stops with a message naming the limit and the flag that raises it.
* The session time zone is UTC, so `time_bucket`, `strftime` and date parts mean UTC everywhere.
* Markers: when the lake holds no `markers` rows, the view shows the markers shipped in
  `data/markers.csv` (parsed by the same importer `crashlab ingest` uses), so every timeline has
  that night's events even on a lake built from market data alone.

Named queries live in `sql/<name>.sql`. Each opens with comment lines: the first says which question
it answers; ``-- param: <name> <type> <default|required> <help>`` lines declare its parameters,
used as DuckDB prepared parameters (``$name``). Types: timestamp, duration, text, number,
integer, list (comma-separated text). A duration parameter also provides ``$<name>_label`` (the
text as given, e.g. ``1m``). Macros shared by several queries live in `sql/_macros.sql`.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa

from crashlab.ingest import schema
from crashlab.ingest.lake import Lake
from crashlab.ingest.paths import DATA
from crashlab.ingest.timeutil import parse_duration, parse_ts

SQL_DIR = Path(__file__).resolve().parent / "sql"
SHIPPED_MARKERS = DATA / "markers.csv"
LAKE_TABLES = tuple(schema.TABLES)


class SQLRefused(Exception):
    """A user statement that would write, attach, install or reach outside the lake."""


class QueryError(Exception):
    """A named query that does not exist, or a parameter it cannot take."""


class QueryLimit(Exception):
    """A query stopped by a limit of the session (time, memory): the message says which and how to raise it."""


# ---- limits --------------------------------------------------------------------------------------
#: A runaway query (a self cross join of `trades`) must stop with a message, not run until killed or
#: take the machine's memory. The defaults leave room for whole-day scans of a large lake.
DEFAULT_TIMEOUT_S = 300.0
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KIB|MIB|GIB|TIB)?\s*$", re.I)
_UNIT = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
         "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str) -> int:
    """Bytes of a size such as `4GB`, `512MiB` or `2000000000` (a bare number is bytes)."""
    m = _SIZE.match(str(text))
    if not m:
        raise QueryError(f"memory limit {text!r}: give a size such as 4GB, 512MiB or 2.5GB")
    n = int(float(m.group(1)) * _UNIT[(m.group(2) or "B").upper()])
    if n < 16 * 2**20:
        raise QueryError(f"memory limit {text!r}: at least 16MiB is needed to run a query")
    return n


def default_memory_bytes() -> int:
    """Half of the machine's physical memory: the query engine and the caller's frames share it."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2)
    except (ValueError, OSError, AttributeError):
        return 4 * 2**30


def _human(n: int) -> str:
    for unit, k in (("GiB", 2**30), ("MiB", 2**20)):
        if n >= k:
            return f"{n / k:.1f}{unit}"
    return f"{n}B"


@dataclass(frozen=True)
class Limits:
    """Time and memory limits of a session. `timeout_s=None` (or 0) means no time limit.

    The memory limit bounds DuckDB's own buffers and also the result handed back: results are
    fetched in batches and a result larger than the limit stops with a message (DuckDB hands
    Arrow results out of its buffer manager, so its `memory_limit` alone would not stop
    `SELECT * FROM trades a, trades b`)."""

    timeout_s: float | None = DEFAULT_TIMEOUT_S
    memory_bytes: int = field(default_factory=default_memory_bytes)

    def __post_init__(self) -> None:
        if self.timeout_s is not None and not (self.timeout_s >= 0):
            raise QueryError(f"time limit {self.timeout_s!r}: give seconds >= 0 (0 = no limit)")
        if self.memory_bytes < 16 * 2**20:
            raise QueryError(f"memory limit {self.memory_bytes} bytes: at least 16MiB is needed to run a query")

    @classmethod
    def parse(cls, timeout: float | str | None = None, memory: str | int | None = None) -> "Limits":
        """From CLI/API values: `timeout` in seconds (0 = none), `memory` as a size (`4GB`)."""
        t = DEFAULT_TIMEOUT_S if timeout is None else float(timeout)
        m = default_memory_bytes() if memory is None else (memory if isinstance(memory, int) else parse_size(memory))
        return cls(None if t == 0 else t, m)


# ---- types ---------------------------------------------------------------------------------------
def _duck_type(t: pa.DataType) -> str:
    if pa.types.is_timestamp(t):
        return "TIMESTAMPTZ" if t.tz else "TIMESTAMP"
    return {
        pa.int64(): "BIGINT",
        pa.int32(): "INTEGER",
        pa.float64(): "DOUBLE",
        pa.string(): "VARCHAR",
        pa.large_string(): "VARCHAR",
        pa.bool_(): "BOOLEAN",
    }[t]


def _empty_select(sch: pa.Schema) -> str:
    cols = ", ".join(f"CAST(NULL AS {_duck_type(f.type)}) AS {f.name}" for f in sch)
    return f"SELECT {cols} WHERE false"


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


# ---- the guard -----------------------------------------------------------------------------------
_READ_PRAGMAS = {
    "version", "table_info", "show", "show_tables", "show_tables_expanded", "database_list",
    "functions", "collations", "platform", "storage_info", "metadata_info", "database_size",
}
_KEYWORD = re.compile(r"^\s*(?:--[^\n]*\n\s*|/\*.*?\*/\s*)*([A-Za-z_]+)", re.S)


def _keyword(text: str) -> str:
    m = _KEYWORD.match(text)
    return m.group(1).upper() if m else "?"


def check_statement(text: str) -> None:
    """Raise `SQLRefused` (one line) unless every statement in `text` only reads."""
    try:
        statements = duckdb.extract_statements(text)
    except (duckdb.Error, ValueError) as e:
        # The parser cannot classify it (syntax error, or a statement type the binding does not know).
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise QueryError(f"cannot parse the query: {first}") from None
    if not statements:
        raise SQLRefused("refused: empty query")
    for st in statements:
        _check_one(st)


def _check_one(st: Any) -> None:
    kind = st.type.name
    body = st.query
    word = _keyword(body)
    if kind == "SELECT":
        return
    if kind == "EXPLAIN":
        inner = re.sub(r"^\s*EXPLAIN\s+(ANALY[SZ]E\s+)?", "", body, flags=re.I)
        if inner.strip().startswith("("):  # EXPLAIN (FORMAT json) ...
            inner = inner.strip()[inner.strip().index(")") + 1 :]
        for sub in duckdb.extract_statements(inner):
            if sub.type.name != "SELECT":
                raise SQLRefused(f"refused: EXPLAIN {_keyword(sub.query)} is not allowed: only read queries can be explained")
        return
    if kind == "PRAGMA":
        m = re.match(r"\s*PRAGMA\s+([A-Za-z_]+)", body, re.I)
        name = m.group(1).lower() if m else ""
        if name in _READ_PRAGMAS and "=" not in body:
            return
        raise SQLRefused(f"refused: PRAGMA {name} is not allowed: only read PRAGMAs ({', '.join(sorted(_READ_PRAGMAS))})")
    why = {
        "COPY": "COPY is not allowed: the lake is read-only; save results with --out",
        "EXPORT": "EXPORT is not allowed: write results with --out",
        "ATTACH": "ATTACH is not allowed: only the lake can be read",
        "DETACH": "DETACH is not allowed: only the lake can be read",
        "LOAD": f"{word} is not allowed: extensions are disabled",
        "SET": f"{word} is not allowed: the session settings are locked",
        "CALL": f"{word} is not allowed: use SELECT * FROM <table function>(...)",
        "MULTI": f"{word} is not allowed: it runs several statements (write PIVOT as SELECT ... PIVOT inside a query)",
    }.get(kind)
    if why is None:
        why = f"{word} is not allowed: the lake is read-only"
    raise SQLRefused(f"refused: {why}")


# ---- named queries -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Param:
    name: str
    type: str
    default: str | None  # None = required; "null" = optional without value
    help: str


@dataclass(frozen=True)
class NamedQuery:
    name: str
    question: str
    params: tuple[Param, ...]
    text: str
    path: Path


_PARAM_LINE = re.compile(r"^--\s*param:\s*(\w+)\s+(\w+)\s+(\S+)\s*(.*)$")
_TYPES = {"timestamp", "duration", "text", "number", "integer", "list"}


def _load(path: Path) -> NamedQuery:
    text = path.read_text(encoding="utf-8")
    question, params = "", []
    for line in text.splitlines():
        s = line.strip()
        if not s.startswith("--"):
            if s:
                break
            continue
        m = _PARAM_LINE.match(s)
        if m:
            name, typ, default, help_ = m.groups()
            if typ not in _TYPES:
                raise QueryError(f"{path}: parameter {name}: unknown type {typ!r}")
            params.append(Param(name, typ, None if default == "required" else default, help_.strip()))
        elif not question:
            question = s.lstrip("-").strip()
    if not question:
        raise QueryError(f"{path}: a named query must open with a comment saying which question it answers")
    return NamedQuery(path.stem, question, tuple(params), text, path)


def named_queries() -> dict[str, NamedQuery]:
    return {p.stem: _load(p) for p in sorted(SQL_DIR.glob("*.sql")) if not p.stem.startswith("_")}


def list_queries() -> list[tuple[str, str]]:
    """(name, first comment line) of every named query, sorted by name."""
    return [(q.name, q.question) for q in named_queries().values()]


def _convert(p: Param, value: Any) -> Any:
    if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "")):
        return None
    try:
        if p.type == "timestamp":
            return value if isinstance(value, datetime) else parse_ts(str(value))
        if p.type == "duration":
            return value if isinstance(value, timedelta) else parse_duration(str(value))
        if p.type == "number":
            return float(value)
        if p.type == "integer":
            return int(value)
        if p.type == "list":
            if isinstance(value, (list, tuple)):
                return [str(v) for v in value]
            return [v.strip() for v in str(value).split(",") if v.strip()]
        return str(value)
    except ValueError as e:
        raise QueryError(f"parameter {p.name} ({p.type}): {e}") from None


def _duration_label(td: timedelta) -> str:
    s = int(td.total_seconds())
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s % n == 0 and s >= n:
            return f"{s // n}{unit}"
    return f"{s}s"


def bind(q: NamedQuery, params: dict[str, Any]) -> dict[str, Any]:
    """Defaults, conversions and checks; returns the prepared parameters the SQL text uses."""
    known = {p.name: p for p in q.params}
    unknown = sorted(set(params) - set(known))
    if unknown:
        hint = ", ".join(f"{p.name} ({p.type})" for p in q.params) or "none"
        raise QueryError(f"query {q.name!r} has no parameter {', '.join(unknown)}; parameters: {hint}")
    out: dict[str, Any] = {}
    for p in q.params:
        if p.name in params:
            v = _convert(p, params[p.name])
        elif p.default is None:
            raise QueryError(f"query {q.name!r} needs --param {p.name}=... ({p.type}: {p.help})")
        else:
            v = _convert(p, p.default)
        out[p.name] = v
        if p.type == "duration":
            out[f"{p.name}_label"] = _duration_label(v) if v is not None else None
    used = set(re.findall(r"\$(\w+)", re.sub(r"--[^\n]*", "", q.text)))
    missing = used - set(out)
    if missing:
        raise QueryError(f"{q.path}: uses undeclared parameter(s) {', '.join(sorted(missing))}")
    return {k: v for k, v in out.items() if k in used}


# ---- the connection ------------------------------------------------------------------------------
class Forensics:
    """A locked, read-only DuckDB session over one lake."""

    def __init__(self, lake: Lake, limits: Limits | None = None):
        self.lake = lake
        self.limits = limits or Limits()
        root = Path(os.path.abspath(lake.root))
        self._tmp = tempfile.mkdtemp(prefix="crashlab-duckdb-")
        con = duckdb.connect(
            ":memory:",
            config={"autoinstall_known_extensions": False, "autoload_known_extensions": False},
        )
        try:
            con.execute("SET TimeZone = 'UTC'")
            con.execute(f"SET temp_directory = {_sql_str(self._tmp)}")
            con.execute(f"SET memory_limit = '{self.limits.memory_bytes}B'")
            con.execute(f"SET allowed_directories = [{_sql_str(str(root) + os.sep)}]")
            con.execute("SET enable_external_access = false")
            self.views = self._create_views(con, root)
            for stmt in duckdb.extract_statements((SQL_DIR / "_macros.sql").read_text(encoding="utf-8")):
                con.execute(stmt.query)
            con.execute("SET lock_configuration = true")
        except BaseException:
            con.close()
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise
        self.con = con

    # Views over committed files only: a killed ingest's leftovers are never read.
    def _create_views(self, con: duckdb.DuckDBPyConnection, root: Path) -> dict[str, int]:
        counts: dict[str, int] = {}
        for table in LAKE_TABLES:
            files = self.lake.files(table)
            counts[table] = len(files)
            if table == "markers" and not files and SHIPPED_MARKERS.exists():
                self._shipped_markers(con)
                continue
            self._view(con, table, schema.TABLES[table], files)
        for name, files, sch in (
            ("manifest", self.lake.manifest_files(), schema.MANIFEST_SCHEMA),
            ("quarantine", self.lake.quarantine_files(), schema.QUARANTINE_SCHEMA),
        ):
            counts[name] = len(files)
            self._view(con, name, sch, files)
        return counts

    @staticmethod
    def _view(con: duckdb.DuckDBPyConnection, name: str, sch: pa.Schema, files: list[Path]) -> None:
        if not files:
            con.execute(f"CREATE VIEW {name} AS {_empty_select(sch)}")
            return
        # Files are written by the lake against the canonical schema, so no casts are needed (a
        # cast per column would cost time on every scan); the column list fixes names and order.
        lst = ", ".join(_sql_str(os.path.abspath(f)) for f in files)
        cols = ", ".join(f.name for f in sch)
        con.execute(f"CREATE VIEW {name} AS SELECT {cols} FROM read_parquet([{lst}])")

    @staticmethod
    def _shipped_markers(con: duckdb.DuckDBPyConnection) -> None:
        from crashlab.ingest.formats import markers as importer
        from crashlab.ingest.validate import validate

        parsed = importer.parse(SHIPPED_MARKERS)
        good, _bad = validate(parsed)
        sid = hashlib.sha256(SHIPPED_MARKERS.read_bytes()).hexdigest()[:16]
        df = good.get("markers")
        if df is None:
            con.execute(f"CREATE VIEW markers AS {_empty_select(schema.TABLES['markers'])}")
            return
        df = df.drop("_row").with_columns(
            pl.lit(importer.SOURCE + " (shipped data/markers.csv)").alias("source"), pl.lit(sid).alias("source_id")
        )
        arrow = schema.conform_frame("markers", df).to_arrow()
        con.register("_shipped_markers_arrow", arrow)
        con.execute("CREATE TABLE _shipped_markers AS SELECT * FROM _shipped_markers_arrow ORDER BY ts, event_id")
        con.unregister("_shipped_markers_arrow")
        con.execute("CREATE VIEW markers AS SELECT * FROM _shipped_markers")

    # ---- running -----------------------------------------------------------------------------
    def sql(self, query: str, params: dict | None = None) -> pl.DataFrame:
        """Run user SQL (read statements only); the last statement's result as a DataFrame."""
        check_statement(query)
        statements = duckdb.extract_statements(query)
        rel = None
        for st in statements:
            rel = self._run(st.query, params if st is statements[-1] else None)
        return rel

    def _run(self, text: str, params: dict | None) -> pl.DataFrame:
        lim = self.limits
        fired = threading.Event()

        def stop() -> None:
            fired.set()
            self.con.interrupt()

        timer = threading.Timer(lim.timeout_s, stop) if lim.timeout_s else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        try:
            rel = self.con.sql(text, params=params or None)
            if rel is None:
                return pl.DataFrame()
            reader = rel.to_arrow_reader(65_536)
            batches, size = [], 0
            for b in reader:
                size += b.nbytes
                if size > lim.memory_bytes:
                    reader.close()
                    raise QueryLimit(
                        f"stopped: the result is larger than the memory limit ({_human(lim.memory_bytes)}); "
                        f"aggregate it or add LIMIT, write it with --out, or raise the limit with --memory-limit")
                batches.append(b)
            tbl = pa.Table.from_batches(batches, schema=reader.schema)
        except duckdb.InterruptException:
            if fired.is_set():
                raise QueryLimit(f"stopped after {lim.timeout_s:g} s (the time limit); raise it with "
                                 f"--timeout SECONDS, or --timeout 0 for none") from None
            raise
        except duckdb.OutOfMemoryException:
            raise QueryLimit(f"stopped: the query needs more than the memory limit ({_human(lim.memory_bytes)}); "
                             f"narrow the window or the tables, or raise it with --memory-limit") from None
        except duckdb.PermissionException as e:
            raise SQLRefused(f"refused: {str(e).splitlines()[0]} (only the lake can be read)") from None
        finally:
            if timer is not None:
                timer.cancel()
        return pl.from_arrow(tbl)  # type: ignore[return-value]

    def query(self, name: str, **params: Any) -> pl.DataFrame:
        """Run the named query `sql/<name>.sql` with its declared parameters."""
        qs = named_queries()
        if name not in qs:
            raise QueryError(f"no query named {name!r}; known: {', '.join(qs)}")
        q = qs[name]
        bound = bind(q, params)
        return self._run(q.text, bound)

    def close(self) -> None:
        try:
            self.con.close()
        finally:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> "Forensics":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(lake: str | os.PathLike[str] | Lake | None = None, limits: Limits | None = None) -> Forensics:
    """A read-only, locked session over `lake` (default: `--lake` > CRASHLAB_LAKE > data/lake)."""
    lk = lake if isinstance(lake, Lake) else Lake.open(lake)
    return Forensics(lk, limits)
