"""Pick the importer for a file from its name and first line; one module per format."""

from __future__ import annotations

import gzip
import importlib
import io
import zipfile
from pathlib import Path
from types import ModuleType

from .formats.base import FormatError

#: Importers in the order they are asked. Each module has FORMAT, SOURCE, sniff() and parse().
IMPORTERS = (
    "tardis",
    "binance_vision",
    "hyperliquid",
    "uniswap_pool",
    "markers",
    "generic_bars",
)

#: Files that are never data (checksums sit beside the zips they verify).
_SKIP_SUFFIXES = (".CHECKSUM", ".md", ".txt", ".json", ".tmp")


def _modules() -> list[ModuleType]:
    mods = []
    for name in IMPORTERS:
        try:
            mods.append(importlib.import_module(f"{__package__}.formats.{name}"))
        except ModuleNotFoundError as e:
            if e.name != f"{__package__}.formats.{name}":
                raise
    return mods


def read_head(path: Path, nbytes: int = 4096) -> str:
    """The first bytes of the file's text, looking inside .gz and .zip; '' for binary formats."""
    try:
        name = path.name.lower()
        if name.endswith(".gz"):
            with gzip.open(path, "rb") as fh:
                data = fh.read(nbytes)
        elif name.endswith(".zip"):
            with zipfile.ZipFile(path) as zf:
                members = [m for m in zf.namelist() if not m.endswith("/")]
                if not members:
                    raise FormatError(path, "zip archive is empty")
                with zf.open(members[0]) as fh:
                    data = fh.read(nbytes)
        elif name.endswith((".parquet", ".lz4")):
            return ""
        else:
            with open(path, "rb") as fh:
                data = fh.read(nbytes)
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise FormatError(path, f"cannot read (truncated or corrupt?): {e}") from None
    return data.decode("utf-8", errors="replace")


def detect(path: Path) -> ModuleType:
    head = read_head(path)
    for mod in _modules():
        if mod.sniff(path, head):
            return mod
    first = head.splitlines()[0][:120] if head else "(binary or empty)"
    raise FormatError(path, f"unknown format: no importer recognises this file name and first line {first!r}")


def expand_paths(paths: list[Path]) -> list[Path]:
    """Files as given, folders walked recursively (sorted); checksums and notes are skipped."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and not f.name.startswith(".") and not f.name.endswith(_SKIP_SUFFIXES):
                    out.append(f)
        else:
            out.append(p)
    return out
