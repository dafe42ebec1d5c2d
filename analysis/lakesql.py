"""Read-only DuckDB over the lake for the attribution and report code.

Uses `crashlab.analysis.db.connect` (the project's SQL layer) when it is importable, and otherwise
a plain DuckDB connection with one view per lake table. Tables with no files get an empty view of
their canonical schema, so every query runs (and returns no rows) on a partial lake instead of
failing: the report then says "no data" for that chart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from crashlab.ingest import schema
from crashlab.ingest.lake import Lake


class LakeSQL:
    """`.sql(query, params)` -> polars, over views named like the lake tables."""

    def __init__(self, lake: Lake):
        self.lake = lake
        self._db = None
        self.con: duckdb.DuckDBPyConnection | None = None
        try:
            from crashlab.analysis import db as _db  # type: ignore[attr-defined]

            self._db = _db.connect(lake)
        except ImportError:
            self._db = None
        if self._db is None:
            self.con = duckdb.connect()
            self.con.execute("SET TimeZone = 'UTC'")
            for table, sch in schema.TABLES.items():
                if lake.files(table):
                    self.con.execute(
                        f"CREATE VIEW {table} AS SELECT * FROM read_parquet('{_q(lake.glob(table))}', union_by_name = true)"
                    )
                else:
                    self.con.register(f"_empty_{table}", sch.empty_table())
                    self.con.execute(f"CREATE VIEW {table} AS SELECT * FROM _empty_{table}")
        self.present = {t for t in schema.TABLES if lake.files(t)}

    def sql(self, query: str, params: dict[str, Any] | list[Any] | None = None) -> pl.DataFrame:
        if self._db is not None:
            return self._db.sql(query, params)
        assert self.con is not None
        rel = self.con.execute(query, params) if params is not None else self.con.execute(query)
        return rel.pl()

    def register(self, name: str, df: pl.DataFrame) -> None:
        """Expose an in-memory frame (e.g. a replay run's events) as a view for joins."""
        con = self.con if self.con is not None else getattr(self._db, "con", None)
        if con is None:
            raise RuntimeError("the SQL layer does not expose a connection to register frames on")
        con.register(name, df.to_arrow())

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
        if self.con is not None:
            self.con.close()


def _q(s: str) -> str:
    return s.replace("'", "''")


def connect(lake: Lake | str | Path | None) -> LakeSQL:
    return LakeSQL(lake if isinstance(lake, Lake) else Lake.open(lake))
