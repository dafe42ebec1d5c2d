"""Stable 64-bit event ids: the same source row always gets the same id, on any machine and version.

Polars' and DuckDB's own hash functions are explicitly not stable across releases, so the ids are
computed here with a fixed mix (splitmix64 finaliser) over each component's 64-bit image:
integers and timestamps as themselves, floats by their IEEE-754 bits, strings by blake2b-64 of their
UTF-8 bytes (numeric strings such as trade ids by their integer value, which is much faster).
"""

from __future__ import annotations

import hashlib

import numpy as np
import polars as pl

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_NULL = np.uint64(0x6A09E667F3BCC908)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, in place (x is a scratch array owned by the caller)."""
    t = x >> np.uint64(30)
    x ^= t
    x *= _M1
    np.right_shift(x, np.uint64(27), out=t)
    x ^= t
    x *= _M2
    np.right_shift(x, np.uint64(31), out=t)
    x ^= t
    return x


def _blake64(s: str) -> int:
    return int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little")


def _string_image(s: pl.Series) -> np.ndarray:
    """Each string's image, with every distinct non-numeric value hashed once.

    Numeric strings (trade ids) are cast in one vectorised pass; the other values (symbols, sides,
    venues: few distinct values repeated on every row) are blake2b-hashed once per distinct value
    and mapped back, a constant column without any per-row lookup. Same images as row by row.
    """
    n = len(s)
    nulls = s.null_count()
    if nulls == n:
        return np.full(n, _NULL, dtype=np.uint64)
    if not nulls and (s == s[0]).all():  # a constant column (venue, symbol): one image
        first = s[:1]
        i = first.cast(pl.Int64, strict=False)[0]
        img = (int(i) & 0xFFFFFFFFFFFFFFFF) if i is not None else (_blake64(first[0]) ^ 0x5DEECE66D)
        return np.full(n, np.uint64(img), dtype=np.uint64)
    as_int = s.cast(pl.Int64, strict=False)
    out = as_int.fill_null(0).to_numpy().astype(np.int64, copy=False).view(np.uint64).copy()
    n_text = as_int.null_count() - nulls  # non-null values that are not integers
    if n_text:
        text_mask = (as_int.is_null() & s.is_not_null())
        text = s if n_text == n else s.filter(text_mask)
        few = text.head(4096).unique()
        img = None
        if len(few) <= 8:  # sides, flags: a handful of values, one vectorised comparison each
            img = np.zeros(len(text), dtype=np.uint64)
            covered = np.zeros(len(text), dtype=bool)
            for v in few.to_list():
                m = (text == v).to_numpy()
                img[m] = _blake64(v) ^ 0x5DEECE66D
                covered |= m
            if not covered.all():
                img = None
        if img is None:
            uniq = text.unique()
            images = pl.Series([_blake64(v) ^ 0x5DEECE66D for v in uniq.to_list()], dtype=pl.UInt64)
            img = text.replace_strict(uniq, images, return_dtype=pl.UInt64).to_numpy()
        if n_text == n:
            out[:] = img
        else:
            out[text_mask.to_numpy()] = img
    if nulls:
        out[s.is_null().to_numpy()] = _NULL
    return out


def _image(s: pl.Series) -> np.ndarray:
    dt = s.dtype
    if dt == pl.String or dt == pl.Categorical:
        return _string_image(s.cast(pl.String))
    if dt == pl.Boolean:
        v = s.cast(pl.UInt64).fill_null(2).to_numpy().astype(np.uint64)
        return v
    if dt.is_float():
        f = s.cast(pl.Float64)
        if not f.null_count():  # read-only view is enough: the caller only reads images
            return f.to_numpy().astype(np.float64, copy=False).view(np.uint64)
        bits = f.fill_null(float("nan")).to_numpy().astype(np.float64).view(np.uint64).copy()
        bits[f.is_null().to_numpy()] = _NULL
        return bits
    if isinstance(dt, pl.Datetime):
        s = s.dt.cast_time_unit("us").to_physical()
    elif dt == pl.Date:
        s = s.to_physical()
    ints = s.cast(pl.Int64)
    if not ints.null_count():
        return ints.to_numpy().astype(np.int64, copy=False).view(np.uint64)
    out = ints.fill_null(0).to_numpy().astype(np.int64).view(np.uint64).copy()
    out[ints.is_null().to_numpy()] = _NULL
    return out


def event_ids(df: pl.DataFrame, columns: list[str], namespace: str) -> pl.Series:
    """Ids for the rows of `df`, from `columns` (which must identify a source row) and a namespace.

    The namespace (e.g. ``"trades"``) keeps a trade and a depth band with equal components apart.
    """
    h = np.full(len(df), np.uint64(_blake64(namespace)), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for c in columns:
            h *= _GOLDEN
            h ^= _image(df[c])
            h = _mix(h)
    return pl.Series("event_id", h.view(np.int64))
