"""Each stage's observable signal as a per-minute series, its onset, and its evidence per leg.

Why one module: the narrative test (onsets) and the evidence scores of stages without a replay
mechanism must read the same series with the same rule, or the report would contradict itself.

Convention: every series is oriented so that larger = stronger signal (e.g. the depeg is the
percent *below* the on-chain price, depth withdrawal the percent of bid depth *gone*).

Onset rule (see data/stages.toml): baseline = the signal in [start - baseline, start); threshold =
median + max(k * 1.4826 * MAD, min_delta); onset = the first minute in [start, end) that begins a
run of `m` consecutive minutes above the threshold. Flow signals (notional per minute) count a
minute with no rows as zero, but only once the source has any rows at all: a table that is
absent gives "not enough data", never a silent zero.

Evidence for a leg = the fraction of the leg's minutes in which the signal is above its onset
threshold (markers: 1 when a marker falls in [leg start - 30 min, leg end]). It is a measure of
co-occurrence, not of cause, and is always labelled "evidence".
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import polars as pl

from .db import Forensics
from .stages import Stage

MAD_SCALE = 1.4826
MARKER_EVIDENCE_LOOKBACK = timedelta(minutes=30)
_SERIES = {"ts": pl.Datetime("us", "UTC"), "value": pl.Float64}


@dataclass
class Signal:
    stage: str
    kind: str
    unit: str
    series: pl.DataFrame  # ts (minute), value; for markers: ts, label
    available: bool
    note: str = ""


@dataclass
class Onset:
    stage: str
    ts: datetime | None
    threshold: float | None
    baseline_median: float | None
    rule: str
    reason: str  # why there is no onset, or how it was found


def _empty() -> pl.DataFrame:
    return pl.DataFrame(schema=_SERIES)


def _minutes(lo: datetime, hi: datetime) -> pl.DataFrame:
    return pl.DataFrame(
        {"ts": pl.datetime_range(lo, hi, "1m", closed="left", time_unit="us", time_zone="UTC", eager=True)}
    )


def _zero_fill(df: pl.DataFrame, lo: datetime, hi: datetime) -> pl.DataFrame:
    grid = _minutes(lo, hi)
    if df.height == 0:
        return grid.with_columns(pl.lit(0.0).alias("value"))
    df = df.with_columns(pl.col("ts").cast(pl.Datetime("us", "UTC")))
    return grid.join(df, on="ts", how="left").with_columns(pl.col("value").fill_null(0.0))


def _ffill(df: pl.DataFrame, lo: datetime, hi: datetime) -> pl.DataFrame:
    if df.height == 0:
        return _empty()
    df = df.with_columns(pl.col("ts").cast(pl.Datetime("us", "UTC")))
    first = df["ts"].min()
    return _minutes(lo, hi).join(df, on="ts", how="left").with_columns(pl.col("value").forward_fill()).filter(
        pl.col("ts") >= first
    ).drop_nulls("value")


def replay_flow_frame(run_liquidations: pl.DataFrame | None) -> pl.DataFrame:
    """A replay run's forced flow as (ts, venue, stage, quote_amount), or an empty frame.

    Accepts a run's events (forced orders are kept) or any frame of forced fills."""
    cols = {"ts": pl.Datetime("us", "UTC"), "venue": pl.String, "stage": pl.String, "quote_amount": pl.Float64}
    if run_liquidations is None or run_liquidations.height == 0:
        return pl.DataFrame(schema=cols)
    df = run_liquidations
    if "kind" in df.columns:
        # A run's events: liquidation rows mark the breach; the notional is on its forced orders.
        # The scenario's exogenous macro flow is not forced (liquidation) flow.
        df = df.filter((pl.col("kind") == "forced_order") & (pl.col("stage").fill_null("") != "macro_shock"))
    if "quote_amount" not in df.columns and {"price", "amount"} <= set(df.columns):
        df = df.with_columns((pl.col("price") * pl.col("amount")).alias("quote_amount"))
    return df.select(
        pl.col("ts").cast(pl.Datetime("us", "UTC")),
        pl.col("venue").cast(pl.String) if "venue" in df.columns else pl.lit(None, pl.String).alias("venue"),
        pl.col("stage").cast(pl.String) if "stage" in df.columns else pl.lit(None, pl.String).alias("stage"),
        pl.col("quote_amount").cast(pl.Float64).abs(),
    ).filter(pl.col("quote_amount").is_finite())


def _replay_minutes(replay: pl.DataFrame | None, stages: list[str], lo: datetime, hi: datetime) -> pl.DataFrame | None:
    if replay is None:
        return None
    r = replay.filter(pl.col("stage").is_in(stages) & (pl.col("ts") >= lo) & (pl.col("ts") < hi))
    return r.group_by(pl.col("ts").dt.truncate("1m")).agg(pl.col("quote_amount").sum().alias("value"))


def _sum_flows(parts: list[pl.DataFrame]) -> pl.DataFrame:
    parts = [p.with_columns(pl.col("ts").cast(pl.Datetime("us", "UTC")), pl.col("value").cast(pl.Float64)) for p in parts if p is not None]
    if not parts:
        return _empty()
    return pl.concat(parts).group_by("ts").agg(pl.col("value").sum()).sort("ts")


def base_of(symbol: str) -> str:
    return symbol.split("/")[0].split(":")[0].upper()


def _signal(db: Forensics, stage: Stage, start: datetime, end: datetime, replay: pl.DataFrame | None) -> Signal:
    sig = stage.signal
    kind = sig["kind"]
    lo = start - stage.onset.baseline
    p = {"lo": lo, "hi": end}
    if kind == "markers":
        look = start - _dur(sig.get("lookback", "3h"))
        kinds = list(sig.get("marker_kinds", ["news"]))
        m = db.sql(
            "SELECT ts, label FROM markers WHERE ts >= $lo AND ts < $hi AND list_contains($kinds, kind) ORDER BY ts",
            {"lo": look, "hi": end, "kinds": kinds},
        )
        return Signal(stage.name, kind, "marker", m, m.height > 0, "" if m.height else f"no markers of kind {kinds} in the window")
    if kind == "taker_imbalance":
        df = db.sql(
            """SELECT time_bucket(INTERVAL 1 minute, ts) AS ts,
                      sum(CASE WHEN side = 'sell' THEN quote_amount ELSE -quote_amount END) AS value
               FROM trades WHERE ts >= $lo AND ts < $hi AND side IS NOT NULL
                 AND coalesce(is_liquidation, false) = false
               GROUP BY 1""",
            p,
        )
        if df.height == 0:
            return Signal(stage.name, kind, "USD/min", _empty(), False, "no trades with a taker side")
        return Signal(stage.name, kind, "net taker sell, USD/min", _zero_fill(df, lo, end), True)
    if kind in ("liquidation_flow", "onchain_liquidations", "replay_flow"):
        parts: list[pl.DataFrame] = []
        notes = []
        if kind != "replay_flow":
            venues = list(sig.get("venues" if kind == "onchain_liquidations" else "exclude_venues", []))
            cond = "list_contains($v, venue)" if kind == "onchain_liquidations" else "NOT list_contains($v, venue)"
            liq = db.sql(
                f"""SELECT time_bucket(INTERVAL 1 minute, ts) AS ts, sum(abs(quote_amount)) AS value
                    FROM liquidations WHERE ts >= $lo AND ts < $hi AND {cond} GROUP BY 1""",
                {**p, "v": venues},
            )
            if liq.height:
                parts.append(liq)
                notes.append("recorded liquidations")
            if kind == "liquidation_flow":
                tagged = db.sql(
                    """SELECT time_bucket(INTERVAL 1 minute, ts) AS ts, sum(quote_amount) AS value
                       FROM trades WHERE ts >= $lo AND ts < $hi AND is_liquidation GROUP BY 1""",
                    p,
                )
                if tagged.height:
                    parts.append(tagged)
                    notes.append("liquidation-tagged trades")
        rep = _replay_minutes(replay, list(sig.get("replay_stages", [])), lo, end)
        if rep is not None and rep.height:
            parts.append(rep)
            notes.append("replayed forced flow")
        if not parts:
            why = "no replay run given" if replay is None else "no replayed forced flow for this stage"
            if kind != "replay_flow":
                why = f"no recorded liquidations and {why}"
            return Signal(stage.name, kind, "USD/min", _empty(), False, why)
        return Signal(stage.name, kind, "forced flow, USD/min", _zero_fill(_sum_flows(parts), lo, end), True, " + ".join(notes))
    if kind == "depeg_basis":
        base = base_of(sig["symbol"])
        cex = _close_series(db, sig.get("venue", "binance"), base, lo, end, exclude_venues=None)
        if cex.height == 0:
            return Signal(stage.name, kind, "% below reference", _empty(), False, f"no {sig['symbol']} prices on {sig.get('venue')}")
        ref = _ref_series(db, list(sig.get("ref_venues", [])), base, lo, end)
        note = "against the on-chain price"
        if ref.height == 0:
            ref = _minutes(lo, end).with_columns(pl.lit(float(sig.get("peg", 1.0))).alias("ref"))
            note = f"against the peg {sig.get('peg', 1.0)} (no on-chain price in the lake)"
        cexf = _ffill(cex, lo, end)
        out = cexf.join(ref, on="ts", how="inner").select("ts", ((pl.col("ref") - pl.col("value")) / pl.col("ref") * 100).alias("value"))
        return Signal(stage.name, kind, "% below reference", out, out.height > 0, note)
    if kind == "depth_withdrawal":
        bands = [float(b) for b in sig.get("bands", [sig.get("band_pct", -1.0)])]
        stale = stale_bands(db, lo, start)
        df = pl.DataFrame()
        used, skipped = None, []
        for band in bands:
            df = db.sql(
                """SELECT time_bucket(INTERVAL 1 minute, ts) AS ts, venue, symbol, avg(notional) AS n
                   FROM depth_bands WHERE ts >= $lo AND ts < $hi AND band_pct = $band GROUP BY ALL""",
                {**p, "band": band},
            )
            bad = {(v, s_) for (v, s_, b) in stale if b == band}
            if band < 0:
                bad |= _lopsided(db, band, lo, start, float(sig.get("min_bid_ask_ratio", 0.2)))
            bad |= _crossed(db, band, lo, end)
            if bad:
                skipped.append(f"{band:g} %")
                df = df.filter(~pl.struct("venue", "symbol").map_elements(lambda r: (r["venue"], r["symbol"]) in bad, return_dtype=pl.Boolean))
            if df.height:
                used = band
                break
        if used is None:
            why = f"no depth bands at {bands} %" + (f" (stale in the baseline: {', '.join(skipped)})" if skipped else "")
            return Signal(stage.name, kind, "% of bid depth gone", _empty(), False, why)
        df = df.group_by("ts").agg(pl.col("n").sum().alias("value")).sort("ts")
        base_df = df.filter(pl.col("ts") < start)
        ref = "pre-window median"
        if base_df.height == 0:  # nothing before the window: its first minutes are the reference
            base_df = df.filter(pl.col("ts") < start + FALLBACK_BASELINE)
            ref = f"median of the window's first {int(FALLBACK_BASELINE.total_seconds() // 60)} min (no depth before it)"
        if base_df.height == 0:
            return Signal(stage.name, kind, "% of bid depth gone", _empty(), False, "no depth before the window or in its first minutes to compare with")
        med = float(base_df["value"].median())
        out = _ffill(df, lo, end).with_columns(((1 - pl.col("value") / med) * 100).alias("value"))
        side = "bid" if used < 0 else "ask (every bid band was unusable)"
        note = f"{side} notional within {abs(used):g} % vs the {ref}"
        if skipped:
            note += f"; skipped stale band(s) {', '.join(skipped)}"
        return Signal(stage.name, kind, "% of bid depth gone", out, True, note)
    if kind == "price_drawdown":
        excl = [b.upper() for b in sig.get("exclude_bases", [])]
        closes = minute_closes(db, lo, end)
        closes = closes.filter(~pl.col("symbol").map_elements(base_of, return_dtype=pl.String).is_in(excl))
        if closes.height == 0:
            return Signal(stage.name, kind, "% median drawdown", _empty(), False, "no prices of instruments outside the excluded bases")
        dd = closes.sort("ts").with_columns(
            ((1 - pl.col("close") / pl.col("close").cum_max().over("key")) * 100).alias("dd")
        )
        med = dd.group_by("ts").agg(pl.col("dd").median().alias("value"), pl.col("key").n_unique().alias("n")).sort("ts")
        n = closes["key"].n_unique()
        return Signal(stage.name, kind, "% median drawdown", _ffill(med.select("ts", "value"), lo, end), True, f"median over {n} instruments")
    raise ValueError(f"stage {stage.name}: unknown signal kind {kind!r}")


def _dur(text: str) -> timedelta:
    from crashlab.ingest.timeutil import parse_duration

    return parse_duration(text)


def minute_closes(db: Forensics, lo: datetime, hi: datetime) -> pl.DataFrame:
    """Last trade price per instrument per minute (`key` = venue:market:symbol)."""
    df = db.sql(
        """SELECT time_bucket(INTERVAL 1 minute, ts) AS ts, venue, market, symbol,
                  arg_max(price, ts) AS close
           FROM trades WHERE ts >= $lo AND ts < $hi GROUP BY ALL""",
        {"lo": lo, "hi": hi},
    )
    bars = db.sql(
        """SELECT ts, venue, market, symbol, close FROM bars
           WHERE ts >= $lo AND ts < $hi AND interval = '1m' AND price_type = 'trade'""",
        {"lo": lo, "hi": hi},
    )
    if bars.height:
        have = df.select("venue", "market", "symbol").unique()
        bars = bars.join(have, on=["venue", "market", "symbol"], how="anti")
        df = pl.concat([df, bars.select(df.columns)], how="vertical_relaxed")
    return df.with_columns(
        pl.col("ts").cast(pl.Datetime("us", "UTC")),
        pl.concat_str(["venue", "market", "symbol"], separator=":").alias("key"),
    )


def _close_series(db: Forensics, venue: str, base: str, lo: datetime, hi: datetime, exclude_venues=None) -> pl.DataFrame:
    c = minute_closes(db, lo, hi).filter(
        (pl.col("venue") == venue) & (pl.col("symbol").map_elements(base_of, return_dtype=pl.String) == base)
    )
    if c.height == 0:
        return _empty()
    # One instrument: the one with most minutes (e.g. USDE/USDT over USDE/USDC).
    key = c.group_by("key").len().sort(["len", "key"], descending=[True, False])["key"][0]
    return c.filter(pl.col("key") == key).select("ts", pl.col("close").alias("value")).sort("ts")


def _ref_series(db: Forensics, venues: list[str], base: str, lo: datetime, hi: datetime) -> pl.DataFrame:
    df = db.sql(
        """SELECT time_bucket(INTERVAL 1 minute, ts) AS ts, symbol, arg_max(price, ts) AS value
           FROM prices WHERE ts >= $lo AND ts < $hi AND list_contains($v, venue) GROUP BY ALL""",
        {"lo": lo - timedelta(hours=6), "hi": hi, "v": venues},
    )
    df = df.filter(pl.col("symbol").map_elements(base_of, return_dtype=pl.String) == base)
    if df.height == 0:
        return pl.DataFrame(schema={"ts": pl.Datetime("us", "UTC"), "ref": pl.Float64})
    df = df.group_by("ts").agg(pl.col("value").median()).sort("ts")
    return _ffill(df, lo, hi).rename({"value": "ref"})


def _crossed(db: Forensics, band: float, lo: datetime, hi: datetime) -> set[tuple[str, str]]:
    """Instruments whose bid band's average price sat above the lowest ask band price in more than a
    quarter of the samples of [lo, hi): the file measures that band from a stale crossed bid, not
    from the market, so its "withdrawal" would be the market moving away from that stale price."""
    if band >= 0:
        return set()
    df = db.sql(
        """WITH s AS (SELECT ts, venue, symbol,
                             max(notional / nullif(depth, 0)) FILTER (WHERE band_pct = $b) AS bid_px,
                             min(notional / nullif(depth, 0)) FILTER (WHERE band_pct > 0) AS ask_px
                      FROM depth_bands WHERE ts >= $lo AND ts < $hi GROUP BY ALL)
           SELECT venue, symbol, avg(CASE WHEN bid_px > ask_px THEN 1.0 ELSE 0.0 END) AS share
           FROM s WHERE bid_px IS NOT NULL AND ask_px IS NOT NULL GROUP BY ALL""",
        {"lo": lo, "hi": hi, "b": band},
    )
    return {(r["venue"], r["symbol"]) for r in df.iter_rows(named=True) if r["share"] > 0.25}


def _lopsided(db: Forensics, band: float, lo: datetime, hi: datetime, min_ratio: float) -> set[tuple[str, str]]:
    """Instruments whose bid band held less than `min_ratio` of the same-distance ask band over the
    baseline: a one-sided book there is a recording artefact (e.g. a stuck crossed order distorting
    the file's mid), not a calm market, so it cannot show a withdrawal."""
    df = db.sql(
        """SELECT venue, symbol,
                  median(notional) FILTER (WHERE band_pct = $b) AS bid,
                  median(notional) FILTER (WHERE band_pct = -$b) AS ask
           FROM depth_bands WHERE ts >= $lo AND ts < $hi AND abs(band_pct) = abs($b) GROUP BY ALL""",
        {"lo": lo, "hi": hi, "b": band},
    )
    return {(r["venue"], r["symbol"]) for r in df.iter_rows(named=True) if r["bid"] is not None and r["ask"] and r["bid"] < min_ratio * r["ask"]}


def stale_bands(db: Forensics, lo: datetime, hi: datetime, repeat_share: float = 0.5) -> set[tuple[str, str, float]]:
    """Depth bands that repeat the previous sample's notional in more than half of [lo, hi).

    Binance's bookDepth files carry bid bands that repeat one stale value for hours (a stuck
    order); such a band cannot show a withdrawal, so it is skipped for the next wider band.
    """
    df = db.sql(
        """WITH s AS (SELECT venue, symbol, band_pct, notional,
                             lag(notional) OVER (PARTITION BY venue, symbol, band_pct ORDER BY ts) AS prev
                      FROM depth_bands WHERE ts >= $lo AND ts < $hi)
           SELECT venue, symbol, band_pct, avg(CASE WHEN notional = prev THEN 1.0 ELSE 0.0 END) AS rep, count(*) AS n
           FROM s WHERE prev IS NOT NULL GROUP BY ALL""",
        {"lo": lo, "hi": hi},
    )
    return {(r["venue"], r["symbol"], float(r["band_pct"])) for r in df.iter_rows(named=True) if r["n"] >= 5 and r["rep"] > repeat_share}


#: Baseline used when the lake has nothing before the window (documented in data/stages.toml).
FALLBACK_BASELINE = timedelta(minutes=15)


def stage_signals(db: Forensics, stages, start: datetime, end: datetime, replay: pl.DataFrame | None = None) -> dict[str, Signal]:
    return {s.name: _signal(db, s, start, end, replay) for s in stages}


def onset(stage: Stage, sig: Signal, start: datetime, end: datetime) -> Onset:
    """The documented onset rule (module docstring) applied to one stage's signal."""
    r = stage.onset
    cap = f" capped at {r.max_delta:g}" if r.max_delta is not None else ""
    rule = f"median + max({r.k:g}*1.4826*MAD, {r.min_delta:g}){cap} over {r.baseline} before start, {r.m} consecutive min"
    if sig.kind == "markers":
        rule = "first marker in the window (lookback included)"
        if not sig.available:
            return Onset(stage.name, None, None, None, rule, sig.note)
        return Onset(stage.name, sig.series["ts"][0], None, None, rule, f"marker: {sig.series['label'][0]}")
    if not sig.available:
        return Onset(stage.name, None, None, None, rule, sig.note)
    thr = threshold(stage, sig, start)
    search_from, base_note = start, ""
    if thr is None:
        # A lake that starts with the window (a simulation, a short recording) has nothing before
        # it: the window's own first minutes become the baseline and the search starts after them.
        search_from = start + FALLBACK_BASELINE
        thr = _threshold_of(stage, sig.series.filter((pl.col("ts") >= start) & (pl.col("ts") < search_from)))
        if thr is None:
            return Onset(stage.name, None, None, None, rule, "no baseline data before the window nor in its first minutes")
        rule += f" (no data before the window: baseline = its first {int(FALLBACK_BASELINE.total_seconds() // 60)} min)"
        base_note = "; baseline from the window's first minutes"
    med, th = thr
    w = sig.series.filter((pl.col("ts") >= search_from) & (pl.col("ts") < end)).sort("ts")
    above = (w["value"] > th).to_numpy()
    ts = w["ts"].to_list()
    run = 0
    for i, a in enumerate(above):
        # A gap in the minutes breaks a run: consecutive means consecutive minutes.
        if a and run and (ts[i] - ts[i - 1]) > timedelta(minutes=1):
            run = 0
        run = run + 1 if a else 0
        if run >= r.m:
            first = ts[i - r.m + 1]
            why = f"crossed {th:.4g} ({sig.unit}){base_note}"
            if first <= search_from:
                why += "; already above the threshold at the window start: the true onset may be earlier"
            return Onset(stage.name, first, th, med, rule, why)
    return Onset(stage.name, None, th, med, rule, f"never above {th:.4g} ({sig.unit}) for {r.m} min in the window")


def threshold(stage: Stage, sig: Signal, start: datetime) -> tuple[float, float] | None:
    """(baseline median, onset threshold) or None without a baseline."""
    return _threshold_of(stage, sig.series.filter(pl.col("ts") < start))


def _threshold_of(stage: Stage, baseline: pl.DataFrame) -> tuple[float, float] | None:
    r = stage.onset
    b = baseline["value"].drop_nulls().to_numpy()
    if b.size < 3:
        return None
    med = float(np.median(b))
    mad = float(np.median(np.abs(b - med)))
    delta = max(r.k * MAD_SCALE * mad, r.min_delta)
    if r.max_delta is not None:
        delta = min(delta, r.max_delta)
    return med, med + delta


def leg_evidence(stage: Stage, sig: Signal, start: datetime, leg_start: datetime, leg_end: datetime) -> float | None:
    """Fraction of the leg's minutes above the onset threshold (None when the signal is absent)."""
    if not sig.available:
        return None
    if sig.kind == "markers":
        t = sig.series["ts"]
        hit = ((t >= leg_start - MARKER_EVIDENCE_LOOKBACK) & (t <= leg_end)).any()
        return 1.0 if hit else 0.0
    thr = threshold(stage, sig, start)
    if thr is None:
        return None
    w = sig.series.filter((pl.col("ts") >= leg_start.replace(second=0, microsecond=0)) & (pl.col("ts") <= leg_end))
    if w.height == 0:
        return 0.0
    return float((w["value"] > thr[1]).mean())
