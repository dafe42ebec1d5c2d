"""The narrative test: does each stage's signal start before the stages the chain says it causes?

For every ordered pair A -> ... -> B of the chain (the transitive closure of `leads_to`, not only
neighbours), with onsets found by the rule in `signals` (documented in data/stages.toml):

    lead = onset(B) - onset(A) in minutes (positive: A came first, as the story says)
    supported       if onset(A) <= onset(B) + tolerance
    contradicted    if onset(A) >  onset(B) + tolerance
    not enough data if either onset is missing (its signal's data are absent or never cross)

Temporal order is necessary for the causal claim, not sufficient: "supported" means "not refuted
by timing", and the report says so.
"""

from __future__ import annotations

from datetime import datetime

import polars as pl

from .signals import Onset, Signal, onset
from .stages import Chain

NARRATIVE_SCHEMA = {
    "cause": pl.String,
    "effect": pl.String,
    "hops": pl.Int64,
    "cause_onset": pl.Datetime("us", "UTC"),
    "effect_onset": pl.Datetime("us", "UTC"),
    "lead_minutes": pl.Float64,
    "tolerance_minutes": pl.Float64,
    "verdict": pl.String,
    "says": pl.String,
}

ONSET_SCHEMA = {
    "stage": pl.String,
    "title": pl.String,
    "mechanism": pl.String,
    "signal": pl.String,
    "onset": pl.Datetime("us", "UTC"),
    "threshold": pl.Float64,
    "baseline_median": pl.Float64,
    "rule": pl.String,
    "note": pl.String,
}


def onsets(chain: Chain, signals: dict[str, Signal], start: datetime, end: datetime) -> dict[str, Onset]:
    return {s.name: onset(s, signals[s.name], start, end) for s in chain.stages}


def onset_table(chain: Chain, signals: dict[str, Signal], ons: dict[str, Onset]) -> pl.DataFrame:
    rows = []
    for s in chain.stages:
        o, sig = ons[s.name], signals[s.name]
        rows.append(
            {
                "stage": s.name,
                "title": s.title,
                "mechanism": s.mechanism or "",
                "signal": f"{sig.kind}" + (f" ({sig.note})" if sig.note and sig.available else ""),
                "onset": o.ts,
                "threshold": o.threshold,
                "baseline_median": o.baseline_median,
                "rule": o.rule,
                "note": o.reason,
            }
        )
    return pl.DataFrame(rows, schema=ONSET_SCHEMA)


def _fmt(ts: datetime | None) -> str:
    return ts.strftime("%H:%M") if ts else "?"


def test_narrative(chain: Chain, ons: dict[str, Onset]) -> pl.DataFrame:
    """One row per ordered pair, with the verdict and a sentence saying what the data says."""
    tol = chain.tolerance_minutes
    rows = []
    for a, b, hops in chain.ordered_pairs():
        oa, ob = ons[a], ons[b]
        ta, tb = chain.stage(a).title, chain.stage(b).title
        if oa.ts is None or ob.ts is None:
            missing = [f"{t}: {o.reason}" for t, o in ((ta, oa), (tb, ob)) if o.ts is None]
            verdict, lead = "not enough data", None
            says = f"cannot order {ta} and {tb}: " + "; ".join(missing)
        else:
            lead = (ob.ts - oa.ts).total_seconds() / 60
            if lead >= -tol:
                verdict = "supported"
                says = (
                    f"{ta} began {_fmt(oa.ts)}, {lead:.0f} min before {tb} ({_fmt(ob.ts)}): timing consistent with the arrow"
                    if lead > 0
                    else f"{ta} ({_fmt(oa.ts)}) and {tb} ({_fmt(ob.ts)}) began within the {tol:g}-min tolerance"
                )
            else:
                verdict = "contradicted"
                says = f"{tb} began {_fmt(ob.ts)}, {-lead:.0f} min BEFORE {ta} ({_fmt(oa.ts)}): {ta} cannot have caused its start"
        rows.append(
            {
                "cause": a,
                "effect": b,
                "hops": hops,
                "cause_onset": oa.ts,
                "effect_onset": ob.ts,
                "lead_minutes": lead,
                "tolerance_minutes": tol,
                "verdict": verdict,
                "says": says,
            }
        )
    return pl.DataFrame(rows, schema=NARRATIVE_SCHEMA)


# pytest would collect `test_narrative` from a test module's namespace if imported bare.
test_narrative.__test__ = False  # type: ignore[attr-defined]
