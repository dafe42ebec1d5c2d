"""Pick the importer for a file from its name and first line; one module per format.

Before any importer sees a file, its container is checked against its name (`check_container`):
an empty file, a `.gz` that is not gzip, a `.zip` that is not a zip archive, an `.lz4` that is
no LZ4 frame, a `.parquet` without its magic at both ends, a `.csv` that is really an archive, is
refused with what it is instead, so no importer ever takes it for an empty or odd source.
"""

from __future__ import annotations

import gzip
import importlib
import io
import zipfile
import zlib
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


#: What a file's first bytes say it is (to name what a misnamed file really is).
_MAGIC = (
    (b"\x1f\x8b", "gzip file"),
    (b"PK\x03\x04", "zip archive"),
    (b"PK\x05\x06", "zip archive"),
    (b"\x04\x22\x4d\x18", "LZ4 frame"),
    (b"PAR1", "Parquet file"),
)
#: Name ending -> (what the name promises, the magic numbers it must start with).
_CONTAINERS = {
    ".gz": ("gzip file", (b"\x1f\x8b",)),
    ".zip": ("zip archive", (b"PK\x03\x04", b"PK\x05\x06")),
    ".lz4": ("LZ4 frame", (b"\x04\x22\x4d\x18",)),
    ".parquet": ("Parquet file", (b"PAR1",)),
}


def _a(kind: str) -> str:
    return ("an " if kind[0] in "AEILMNOSX" else "a ") + kind


def _what_it_is(head: bytes) -> str:
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return f"it is {_a(kind)}"
    text = head[:60]
    if text and all(32 <= b < 127 or b in (9, 10, 13) for b in text):
        s = text.decode("ascii").splitlines()[0][:40] if text.strip() else ""
        if s.lstrip().startswith("<"):
            return f"it is text starting {s!r} (an HTML or XML page: an error page saved as the download?)"
        return f"it is plain text starting {s!r}"
    return f"it starts with bytes {head[:8].hex(' ')}"


def check_container(path: Path) -> None:
    """Refuse a file whose bytes are not what its name says (FormatError naming file and cause)."""
    size = path.stat().st_size
    name = path.name.lower()
    promised = next((v for k, v in _CONTAINERS.items() if name.endswith(k)), None)
    if size == 0:
        what = f", so not {_a(promised[0])}" if promised else ""
        raise FormatError(path, f"empty file (0 bytes){what}: an interrupted download? Nothing of it is ingested")
    with open(path, "rb") as fh:
        head = fh.read(64)
        tail = b""
        if size >= 8:
            fh.seek(-4, 2)
            tail = fh.read(4)
    if promised is None:
        if name.endswith((".csv", ".txt")) and any(head.startswith(m) for m, _ in _MAGIC):
            raise FormatError(path, f"not a CSV file, as its name says: {_what_it_is(head)}")
        return
    kind, magics = promised
    if not head.startswith(magics):
        raise FormatError(path, f"not {_a(kind)}, as its name says: {_what_it_is(head)}")
    if kind == "Parquet file" and (size < 12 or tail != b"PAR1"):
        raise FormatError(path, f"truncated Parquet file ({size:,} bytes): it does not end with the PAR1 footer")


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
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise FormatError(path, f"cannot read (truncated or corrupt?): {e}") from None
    return data.decode("utf-8", errors="replace")


def detect(path: Path) -> ModuleType:
    check_container(path)
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
