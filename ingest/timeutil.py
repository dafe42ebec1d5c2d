"""Parsing the times users type (`--start 2025-10-10T21:00`): always UTC, never the local zone."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

_FORMATS = (
    "%Y-%m-%dT%H:%M:%S.%f",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%d %H:%M:%S.%f",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%d",
)


def parse_ts(text: str) -> datetime:
    """A UTC datetime from ISO-like text; a trailing `Z` or `+00:00` is accepted, other offsets convert."""
    t = text.strip()
    if t.endswith("Z"):
        t = t[:-1]
    try:
        dt = datetime.fromisoformat(t)
    except ValueError:
        dt = None
        for f in _FORMATS:
            try:
                dt = datetime.strptime(t, f)
                break
            except ValueError:
                continue
        if dt is None:
            raise ValueError(f"cannot read time {text!r}: use e.g. 2025-10-10T21:00 (UTC)") from None
    if dt.tzinfo is None:
        return dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc)


def parse_date(text: str) -> date:
    return date.fromisoformat(text.strip())


def parse_duration(text: str) -> timedelta:
    """`500ms`, `1s`, `5m`, `2h`, `1d` -> timedelta."""
    t = text.strip().lower()
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    for u in ("ms", "s", "m", "h", "d"):
        if t.endswith(u) and t[: -len(u)].replace(".", "", 1).isdigit():
            return timedelta(seconds=float(t[: -len(u)]) * units[u])
    raise ValueError(f"cannot read duration {text!r}: use e.g. 1s, 1m, 5m, 1h")
