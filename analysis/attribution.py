"""Which stage moved each leg: Shapley values over replayed mechanisms, evidence where none exists.

Two modes, always labelled in every output row (`method`):

* shapley: given a replay scenario, the engine is run once per subset of the chain's mechanisms
  (2^n runs, spread over a process pool). For a leg [t0, t1] of the chosen instrument, the value of
  a subset S is the model's move, v(S) = (model_price(t1) / model_price(t0) - 1) * 100, from the
  replay with only S switched on. Each mechanism's stage gets its Shapley value phi (percentage
  points of the leg's move), the residual = recorded move - v(all) is a row of its own, and a
  non-zero v(empty) (a model that moves with every mechanism off) is shown as `baseline`; the rows
  add up to the recorded move exactly (efficiency).
* evidence: a stage with no replay mechanism, or every stage when no replay is given, gets an
  evidence score from its signal (`signals.leg_evidence`: the fraction of the leg's minutes the
  signal is above its onset threshold). In evidence-only mode shares are evidence shares (they
  sum to 1 over the stages with evidence) and say nothing about magnitude: the residual row then
  carries the whole recorded move, because nothing was replayed.

Dominant stage = largest contribution in the leg's direction (shapley) or largest evidence.
Confidence in [0, 1]: shapley = explained * (0.5 + 0.5 * margin), with explained = 1 -
|residual| / |recorded| (clipped) and margin = (c1 - c2) / (c1 + c2) over the two largest
contributions; evidence = 0.5 * e1 * margin, capped at 0.5 because co-occurrence is weaker than a
replayed mechanism.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable

import numpy as np
import polars as pl

from crashlab.ingest.lake import Lake

from . import legs as legs_mod
from .db import Forensics, connect
from .narrative import onset_table, onsets, test_narrative
from .shapley import ShapleyResult, shapley
from .signals import Signal, leg_evidence, replay_flow_frame, stage_signals
from .stages import Chain, load_chain

ATTR_SCHEMA = {
    "instrument": pl.String,
    "leg_id": pl.Int64,
    "stage": pl.String,
    "method": pl.String,  # shapley | evidence | residual | baseline
    "contribution_pct": pl.Float64,  # percentage points of the leg's move (shapley/residual/baseline)
    "share": pl.Float64,  # contribution / recorded move, or evidence share
    "evidence": pl.Float64,  # evidence score in [0, 1] (evidence rows)
}

#: Instruments tried first for the headline price path (then the one with the most trades).
PREFERRED = (
    ("binance", "perp", "BTC/USDT:USDT"),
    ("binance", "spot", "BTC/USDT"),
    ("coinbase", "spot", "BTC/USD"),
    ("gemini", "spot", "BTC/USD"),
)


@dataclass
class Attribution:
    instrument: str
    start: datetime
    end: datetime
    mode: str  # shapley | evidence
    bars: pl.DataFrame
    legs: pl.DataFrame
    attribution: pl.DataFrame
    onsets: pl.DataFrame
    narrative: pl.DataFrame
    signals: dict[str, Signal]
    chain: Chain
    replay_flow: pl.DataFrame | None = None
    shapley: ShapleyResult | None = None
    model_path: pl.DataFrame | None = None  # ts, recorded_price, model_price (all mechanisms on)
    notes: list[str] = field(default_factory=list)


# ---- the price path --------------------------------------------------------------------------
def instrument_key(venue: str, market: str, symbol: str) -> str:
    return f"{venue}:{market}:{symbol}"


def parse_instrument(text: str) -> tuple[str, str, str]:
    parts = text.split(":", 2)
    if len(parts) != 3:
        raise ValueError(f"instrument {text!r}: use VENUE:MARKET:SYMBOL, e.g. gemini:spot:BTC/USD")
    return parts[0], parts[1], parts[2]


def pick_instrument(db: Forensics, start: datetime, end: datetime) -> tuple[str, str, str] | None:
    """The headline instrument: a preferred BTC market if present, else the most-traded one."""
    have = db.sql(
        """SELECT venue, market, symbol, count(*) AS n FROM trades
           WHERE ts >= $lo AND ts < $hi GROUP BY ALL
           UNION ALL
           SELECT venue, market, symbol, count(*) AS n FROM bars
           WHERE ts >= $lo AND ts < $hi AND price_type = 'trade' GROUP BY ALL""",
        {"lo": start, "hi": end},
    )
    if have.height == 0:
        return None
    keys = {(r["venue"], r["market"], r["symbol"]) for r in have.iter_rows(named=True)}
    for p in PREFERRED:
        if p in keys:
            return p
    top = have.group_by("venue", "market", "symbol").agg(pl.col("n").sum()).sort(
        ["n", "venue", "market", "symbol"], descending=[True, False, False, False]
    )
    r = top.row(0, named=True)
    return r["venue"], r["market"], r["symbol"]


def minute_bars(db: Forensics, venue: str, market: str, symbol: str, start: datetime, end: datetime) -> pl.DataFrame:
    """1-minute OHLC of one instrument from its trades, else from its stored bars (trade prices)."""
    p = {"lo": start, "hi": end, "v": venue, "m": market, "s": symbol}
    df = db.sql(
        """SELECT time_bucket(INTERVAL 1 minute, ts) AS ts,
                  arg_min(price, ts) AS open, max(price) AS high, min(price) AS low,
                  arg_max(price, ts) AS close, sum(quote_amount) AS quote_volume, count(*) AS trades
           FROM trades WHERE ts >= $lo AND ts < $hi AND venue = $v AND market = $m AND symbol = $s
           GROUP BY 1 ORDER BY 1""",
        p,
    )
    if df.height == 0:
        df = db.sql(
            """SELECT ts, open, high, low, close, quote_volume, trade_count AS trades FROM bars
               WHERE ts >= $lo AND ts < $hi AND venue = $v AND market = $m AND symbol = $s
                 AND price_type = 'trade'
               ORDER BY interval = '1m' DESC, ts""",
            p,
        ).unique("ts", keep="first").sort("ts")
    return df.with_columns(pl.col("ts").cast(pl.Datetime("us", "UTC")))


# ---- Shapley over replays ----------------------------------------------------------------------
class ReplayMoves:
    """Value function: model moves of every leg with a subset of mechanisms on (picklable)."""

    def __init__(self, lake_root: str, scenario: str, start: datetime, end: datetime, instrument: tuple[str, str, str],
                 bounds: list[tuple[datetime, datetime]], rules: Any = None, keep: tuple[frozenset[str], str] | None = None):
        self.lake_root, self.scenario, self.start, self.end = lake_root, scenario, start, end
        self.instrument, self.bounds, self.rules = instrument, bounds, rules
        self.keep = keep  # (subset, folder): that subset's events and model path are written there

    def run(self, subset: frozenset[str]):
        from crashlab.replay.engine import run_replay
        from crashlab.replay.scenario import load_scenario

        return run_replay(
            Lake.open(self.lake_root), load_scenario(self.scenario), self.start, self.end,
            rules=self.rules, mechanisms=frozenset(subset),
        )

    def worker_initializer(self):
        """Workers start with the tapes this process has folded, instead of re-reading the lake."""
        from crashlab.replay.state import export_tapes, seed_tapes

        return seed_tapes, (export_tapes(),)

    def moves(self, price_path: pl.DataFrame) -> np.ndarray:
        v, m, s = self.instrument
        pp = price_path.filter((pl.col("venue") == v) & (pl.col("market") == m) & (pl.col("symbol") == s)).sort("ts")
        if pp.height == 0:
            # The engine writes a price path only for instruments that forced flow touched: with
            # no flow on this instrument the model price never left its start, a zero move.
            return np.zeros(len(self.bounds))
        return model_moves(pp, self.bounds)

    def __call__(self, subset: frozenset[str]) -> np.ndarray:
        res = self.run(subset)
        if self.keep is not None and frozenset(subset) == self.keep[0]:
            v, m, s = self.instrument
            res.events.write_parquet(Path(self.keep[1]) / "events.parquet")
            res.price_path.filter((pl.col("venue") == v) & (pl.col("market") == m) & (pl.col("symbol") == s)).sort("ts").write_parquet(
                Path(self.keep[1]) / "price_path.parquet"
            )
        return self.moves(res.price_path)


def _price_at(ts: list[datetime], px: np.ndarray, t: datetime) -> float:
    """Model price at the last minute at or before t (the leg pivot's minute)."""
    t = t.replace(second=0, microsecond=0)
    i = int(np.searchsorted(np.array(ts, dtype="datetime64[us]"), np.datetime64(t.replace(tzinfo=None), "us"), side="right")) - 1
    return float(px[max(i, 0)]) if len(px) else float("nan")


def model_moves(price_path: pl.DataFrame, bounds: list[tuple[datetime, datetime]]) -> np.ndarray:
    """Percent move of `model_price` over each (t0, t1); NaN where the model has no price."""
    if price_path.height == 0:
        return np.full(len(bounds), np.nan)
    ts = [t.replace(tzinfo=None) for t in price_path["ts"].to_list()]
    px = price_path["model_price"].cast(pl.Float64).to_numpy()
    out = []
    for t0, t1 in bounds:
        a, b = _price_at(ts, px, t0), _price_at(ts, px, t1)
        out.append((b / a - 1) * 100 if a and np.isfinite(a) and np.isfinite(b) else np.nan)
    return np.array(out, dtype=float)


# ---- rows --------------------------------------------------------------------------------------
def _confidence_shapley(contribs: dict[str, float], recorded: float, residual: float) -> tuple[str, float]:
    sign = -1.0 if recorded < 0 else 1.0
    ranked = sorted(((c * sign, s) for s, c in contribs.items()), reverse=True)
    if not ranked or ranked[0][0] <= 0:
        return "unexplained", 0.0
    c1 = ranked[0][0]
    c2 = max(ranked[1][0], 0.0) if len(ranked) > 1 else 0.0
    explained = float(np.clip(1 - abs(residual) / abs(recorded), 0, 1)) if recorded else 0.0
    margin = (c1 - c2) / (c1 + c2) if c1 + c2 > 0 else 0.0
    return ranked[0][1], explained * (0.5 + 0.5 * margin)


def _confidence_evidence(ev: dict[str, float]) -> tuple[str, float]:
    ranked = sorted(((e, s) for s, e in ev.items()), reverse=True)
    if not ranked or ranked[0][0] <= 0:
        return "unexplained", 0.0
    e1 = ranked[0][0]
    e2 = ranked[1][0] if len(ranked) > 1 else 0.0
    margin = (e1 - e2) / (e1 + e2)
    return ranked[0][1], 0.5 * e1 * margin


def attribution_rows(
    instrument: str,
    legs: pl.DataFrame,
    chain: Chain,
    evidence: dict[str, list[float | None]],
    phi: dict[str, np.ndarray] | None = None,
    v_empty: np.ndarray | None = None,
    v_full: np.ndarray | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Attribution rows per leg and stage, and the legs table with dominant stage and confidence."""
    rows: list[dict[str, Any]] = []
    dom, conf, method, resid = [], [], [], []
    causes = [s for s in chain.stages if s.role == "cause"]
    for i, leg in enumerate(legs.iter_rows(named=True)):
        rec = float(leg["move_pct"])
        base = dict(instrument=instrument, leg_id=leg["leg_id"])
        contribs: dict[str, float] = {}
        if phi is not None:
            for s in causes:
                if s.mechanism and s.mechanism in phi:
                    c = float(phi[s.mechanism][i])
                    contribs[s.name] = c
                    rows.append({**base, "stage": s.name, "method": "shapley", "contribution_pct": c, "share": c / rec if rec else None, "evidence": None})
            r = rec - float(v_full[i])  # type: ignore[index]
            b = float(v_empty[i])  # type: ignore[index]
            if abs(b) > 1e-12:
                rows.append({**base, "stage": "baseline", "method": "baseline", "contribution_pct": b, "share": b / rec if rec else None, "evidence": None})
        else:
            r = rec
        ev = {s.name: evidence[s.name][i] for s in causes if s.name not in contribs and evidence[s.name][i] is not None}
        tot = sum(ev.values())
        for s in causes:
            if s.name in contribs:
                continue
            e = evidence[s.name][i]
            share = (e / tot if tot > 0 else 0.0) if (phi is None and e is not None) else None
            rows.append({**base, "stage": s.name, "method": "evidence", "contribution_pct": None, "share": share, "evidence": e})
        rows.append({**base, "stage": "residual", "method": "residual", "contribution_pct": r, "share": r / rec if rec else None, "evidence": None})
        if phi is not None and contribs:
            d, c = _confidence_shapley(contribs, rec, r)
            m = "shapley"
        else:
            d, c = _confidence_evidence(ev)
            m = "evidence"
        dom.append(d)
        conf.append(round(c, 4))
        method.append(m)
        resid.append(r)
    legs_out = legs.with_columns(
        pl.lit(instrument).alias("instrument"),
        pl.Series("dominant_stage", dom, dtype=pl.String),
        pl.Series("dominant_method", method, dtype=pl.String),
        pl.Series("confidence", conf, dtype=pl.Float64),
        pl.Series("residual_pct", resid, dtype=pl.Float64),
    )
    return pl.DataFrame(rows, schema=ATTR_SCHEMA), legs_out


# ---- the whole thing ---------------------------------------------------------------------------
def attribute(
    lake: Lake | str | Path | None,
    start: datetime,
    end: datetime,
    *,
    chain: Chain | None = None,
    stages_path: str | Path | None = None,
    instrument: tuple[str, str, str] | None = None,
    threshold_pct: float = legs_mod.DEFAULT_THRESHOLD_PCT,
    min_minutes: float = 0.0,
    scenario: str | Path | None = None,
    replay_liquidations: pl.DataFrame | None = None,
    workers: int = 2,
    progress: Callable[[frozenset[str]], None] | None = None,
    db: Forensics | None = None,
    mp_start: str = "spawn",
) -> Attribution:
    """Legs, per-leg attribution, onsets and the narrative test over [start, end).

    All 2^n replays run in the process pool (spawned: a forked worker inherits DuckDB/Polars
    thread state and was seen to deadlock); the all-mechanisms replay also writes its events to
    a temp file, whose forced flow then feeds the stage signals and charts. Each worker folds the
    lake into its replay tape once (the slow part of a first replay) and reuses it after.
    """
    lake = lake if isinstance(lake, Lake) else Lake.open(lake)
    chain = chain or load_chain(stages_path)
    own = db is None
    db = db or connect(lake)
    notes: list[str] = []
    try:
        inst = instrument or pick_instrument(db, start, end)
        bars = minute_bars(db, *inst, start, end) if inst else pl.DataFrame(schema={"ts": pl.Datetime("us", "UTC")})
        key = instrument_key(*inst) if inst else "none"
        if inst is None or bars.height == 0:
            notes.append(f"no prices for {key} in the window")
        legs = legs_mod.legs_from_bars(bars, threshold_pct, min_minutes) if bars.height else pl.DataFrame(schema=legs_mod.LEG_SCHEMA)
        bounds = [(r["start_ts"], r["end_ts"]) for r in legs.iter_rows(named=True)]

        sh: ShapleyResult | None = None
        model_path = None
        flow = replay_flow_frame(replay_liquidations) if replay_liquidations is not None else None
        if scenario is not None and inst is not None and bounds:
            mechs = chain.mechanisms
            with tempfile.TemporaryDirectory(prefix="crashlab-shapley-") as tmp:
                vf = ReplayMoves(str(lake.root), str(scenario), start, end, inst, bounds, keep=(frozenset(mechs), tmp))
                sh = shapley(mechs, vf, workers=workers, progress=progress, mp_start=mp_start)
                full_events = pl.read_parquet(Path(tmp) / "events.parquet")
                model_path = pl.read_parquet(Path(tmp) / "price_path.parquet")
            if flow is None:
                flow = replay_flow_frame(full_events)
        elif scenario is None:
            notes.append("no replay scenario: attribution uses evidence scores only (not a decomposition of the move)")

        sigs = stage_signals(db, chain.stages, start, end, flow)
        ev = {
            s.name: [leg_evidence(s, sigs[s.name], start, a, z) for a, z in bounds] for s in chain.stages
        }
        if sh is not None:
            attr, legs_out = attribution_rows(key, legs, chain, ev, sh.values, np.asarray(sh.v_empty), np.asarray(sh.v_full))  # type: ignore[arg-type]
        else:
            attr, legs_out = attribution_rows(key, legs, chain, ev)
        ons = onsets(chain, sigs, start, end)
        return Attribution(
            instrument=key,
            start=start,
            end=end,
            mode="shapley" if sh is not None else "evidence",
            bars=bars,
            legs=legs_out,
            attribution=attr,
            onsets=onset_table(chain, sigs, ons),
            narrative=test_narrative(chain, ons),
            signals=sigs,
            chain=chain,
            replay_flow=flow,
            shapley=sh,
            model_path=model_path,
            notes=notes,
        )
    finally:
        if own:
            db.close()
