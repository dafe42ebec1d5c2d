"""The causal chain as data: load `data/stages.toml` (or a user's edited copy) into `Chain`.

Why a data file: the toolkit tests a story, so the story must be editable without touching code;
the file says, per stage, which signal shows it and which replay mechanism produces it.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from crashlab.ingest.paths import DATA
from crashlab.ingest.timeutil import parse_duration

DEFAULT_STAGES = DATA / "stages.toml"
SIGNAL_KINDS = frozenset(
    {
        "markers", "taker_imbalance", "liquidation_flow", "depeg_basis", "onchain_liquidations",
        "replay_flow", "depth_withdrawal", "price_drawdown",
    }
)


class StagesError(ValueError):
    """A stages file that cannot be used; the message names the file and the stage."""


@dataclass(frozen=True)
class OnsetRule:
    baseline: timedelta = timedelta(hours=2)
    k: float = 5.0
    m: int = 2
    min_delta: float = 0.0
    max_delta: float | None = None  # cap for bounded signals (a percentage of depth gone)


@dataclass(frozen=True)
class Stage:
    name: str
    title: str
    description: str
    mechanism: str | None  # replay mechanism, None when the stage has none (evidence only)
    role: str  # cause | outcome
    leads_to: tuple[str, ...]
    signal: dict[str, Any]
    onset: OnsetRule


@dataclass(frozen=True)
class Chain:
    title: str
    stages: tuple[Stage, ...]
    tolerance_minutes: float = 2.0
    path: str = ""
    order: dict[str, int] = field(default_factory=dict)

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.stages]

    @property
    def mechanisms(self) -> list[str]:
        return [s.mechanism for s in self.stages if s.mechanism and s.role == "cause"]

    def stage_of_mechanism(self, mechanism: str) -> Stage:
        for s in self.stages:
            if s.mechanism == mechanism:
                return s
        raise KeyError(mechanism)

    def ordered_pairs(self) -> list[tuple[str, str, int]]:
        """Every (A, B, hops) with A -> ... -> B in the chain: the transitive closure of leads_to."""
        out = []
        for a in self.stages:
            seen: dict[str, int] = {}
            frontier = [(b, 1) for b in a.leads_to]
            while frontier:
                b, d = frontier.pop(0)
                if b in seen:
                    continue
                seen[b] = d
                frontier.extend((c, d + 1) for c in self.stage(b).leads_to)
            for b, d in seen.items():
                out.append((a.name, b, d))
        out.sort(key=lambda t: (self.order[t[0]], self.order[t[1]]))
        return out


def _rule(raw: dict[str, Any], base: OnsetRule, where: str) -> OnsetRule:
    try:
        return OnsetRule(
            baseline=parse_duration(raw["baseline"]) if "baseline" in raw else base.baseline,
            k=float(raw.get("k", base.k)),
            m=int(raw.get("m", base.m)),
            min_delta=float(raw.get("min_delta", base.min_delta)),
            max_delta=float(raw["max_delta"]) if "max_delta" in raw else base.max_delta,
        )
    except (TypeError, ValueError) as e:
        raise StagesError(f"{where}: bad onset parameter: {e}") from None


def load_chain(path: str | Path | None = None) -> Chain:
    """Read and check a stages file: unknown references and cycles are errors naming the stage."""
    p = Path(path) if path is not None else DEFAULT_STAGES
    try:
        raw = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise StagesError(f"{p}: stages file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise StagesError(f"{p}: not valid TOML: {e}") from None
    chain_raw = raw.get("chain", {})
    default_rule = _rule(raw.get("onset", {}), OnsetRule(), f"{p} [onset]")
    stages: list[Stage] = []
    for i, s in enumerate(raw.get("stage", []), 1):
        where = f"{p} stage #{i} ({s.get('name', '?')})"
        if "name" not in s:
            raise StagesError(f"{where}: missing name")
        sig = dict(s.get("signal", {}))
        if sig.get("kind") not in SIGNAL_KINDS:
            raise StagesError(f"{where}: signal kind {sig.get('kind')!r} is not one of {sorted(SIGNAL_KINDS)}")
        role = s.get("role", "cause")
        if role not in ("cause", "outcome"):
            raise StagesError(f"{where}: role must be cause or outcome, not {role!r}")
        stages.append(
            Stage(
                name=s["name"],
                title=s.get("title", s["name"]),
                description=s.get("description", ""),
                mechanism=s.get("mechanism") or None,
                role=role,
                leads_to=tuple(s.get("leads_to", [])),
                signal=sig,
                onset=_rule(sig, default_rule, where),
            )
        )
    if not stages:
        raise StagesError(f"{p}: no [[stage]] entries")
    names = [s.name for s in stages]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise StagesError(f"{p}: duplicate stage names {sorted(dup)}")
    for s in stages:
        for b in s.leads_to:
            if b not in names:
                raise StagesError(f"{p} stage {s.name}: leads_to unknown stage {b!r}")
    mechs = [s.mechanism for s in stages if s.mechanism]
    if len(mechs) != len(set(mechs)):
        raise StagesError(f"{p}: a replay mechanism is claimed by two stages: {mechs}")
    chain = Chain(
        title=chain_raw.get("title", ""),
        stages=tuple(stages),
        tolerance_minutes=float(chain_raw.get("tolerance_minutes", 2.0)),
        path=str(p),
        order={n: i for i, n in enumerate(names)},
    )
    # Cycle check: a stage that (transitively) leads to itself cannot be ordered.
    for a, b, _ in chain.ordered_pairs():
        if a == b:
            raise StagesError(f"{p}: the chain has a cycle through stage {a!r}")
    return chain
