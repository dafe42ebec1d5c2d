"""The simulation scenario: `data/scenarios/sim_oct10.toml` parsed into plain, checked objects.

Why a file: every number the simulation is tuned with, and every calibration target with its
tolerance and source, sits in one place a reader can audit and vary; the code holds mechanisms only.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from crashlab.ingest.paths import DATA

DEFAULT_SCENARIO = DATA / "scenarios" / "sim_oct10.toml"


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message names the file and the entry."""


@dataclass(frozen=True)
class Instrument:
    id: str
    venue: str
    market: str  # spot | perp
    symbol: str  # ccxt unified
    native: str
    asset: str
    p0: float
    depth: float  # quote notional per side within 1 % of the mid at the start
    params: dict[str, Any]  # everything else, defaults merged

    def get(self, key: str) -> Any:
        return self.params[key]


@dataclass
class Scenario:
    path: Path
    sha256: str
    raw: dict[str, Any]
    start: datetime
    end: datetime
    instruments: list[Instrument]
    events: dict[str, datetime]
    targets: list[dict[str, Any]] = field(default_factory=list)

    @property
    def seconds(self) -> int:
        return int((self.end - self.start).total_seconds())

    def index(self, inst_id: str) -> int:
        for i, ins in enumerate(self.instruments):
            if ins.id == inst_id:
                return i
        raise ScenarioError(f"{self.path}: unknown instrument {inst_id!r}")

    def find(self, venue: str, market: str, asset: str) -> int | None:
        for i, ins in enumerate(self.instruments):
            if ins.venue == venue and ins.market == market and ins.asset == asset:
                return i
        return None

    def section(self, name: str) -> dict[str, Any]:
        if name not in self.raw:
            raise ScenarioError(f"{self.path}: missing section [{name}]")
        return self.raw[name]

    def step_of(self, when: datetime) -> int:
        return int((when - self.start).total_seconds())


def _time(day: str, hhmmss: str, path: Path, what: str) -> datetime:
    try:
        return datetime.fromisoformat(f"{day}T{hhmmss}").replace(tzinfo=timezone.utc)
    except ValueError as e:
        raise ScenarioError(f"{path}: {what}: bad time {hhmmss!r} ({e})") from None


def load(path: Path | None = None) -> Scenario:
    p = Path(path) if path is not None else DEFAULT_SCENARIO
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ScenarioError(f"{p}: cannot read scenario ({e})") from None
    try:
        raw = tomllib.loads(data.decode())
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{p}: not valid TOML ({e})") from None
    return from_raw(raw, p, hashlib.sha256(data).hexdigest())


def from_raw(raw: dict[str, Any], p: Path, sha256: str) -> Scenario:
    """Build a scenario from parsed TOML (the tuner varies `raw` in memory, then calls this)."""
    meta = raw.get("meta", {})
    day = meta.get("day", "2025-10-10")
    start = _time(day, meta.get("start", "20:30:00"), p, "meta.start")
    end = _time(day, meta.get("end", "22:30:00"), p, "meta.end")
    if end <= start:
        raise ScenarioError(f"{p}: meta.end must be after meta.start")
    events = {k: _time(day, v, p, f"events.{k}") for k, v in raw.get("events", {}).items()}
    classes = raw.get("instrument_class", {})
    insts: list[Instrument] = []
    seen: set[str] = set()
    for n, entry in enumerate(raw.get("instrument", []), 1):
        try:
            cls = dict(classes.get(entry.get("class", ""), {})) if entry.get("class") else {}
            merged = {**raw.get("instrument_defaults", {}), **cls, **entry}
            ins = Instrument(
                id=str(merged["id"]), venue=str(merged["venue"]), market=str(merged["market"]),
                symbol=str(merged["symbol"]), native=str(merged["native"]), asset=str(merged["asset"]),
                p0=float(merged["p0"]), depth=float(merged["depth"]), params=merged,
            )
        except KeyError as e:
            raise ScenarioError(f"{p}: instrument #{n} ({entry.get('id', '?')}): missing {e}") from None
        if ins.id in seen:
            raise ScenarioError(f"{p}: instrument #{n}: duplicate id {ins.id!r}")
        if ins.p0 <= 0 or ins.depth <= 0:
            raise ScenarioError(f"{p}: instrument {ins.id}: p0 and depth must be positive")
        seen.add(ins.id)
        insts.append(ins)
    if not insts:
        raise ScenarioError(f"{p}: no [[instrument]] entries")
    targets = list(raw.get("target", []))
    for n, t in enumerate(targets, 1):
        for k in ("name", "metric", "value", "tolerance", "unit", "source"):
            if k not in t:
                raise ScenarioError(f"{p}: target #{n} ({t.get('name', '?')}): missing {k!r}")
    return Scenario(p, sha256, raw, start, end, insts, events, targets)


def at(s: Scenario, hhmmss: str) -> datetime:
    return _time(s.start.date().isoformat(), hhmmss, s.path, "time")


def seconds_between(a: datetime, b: datetime) -> float:
    return (b - a) / timedelta(seconds=1)
