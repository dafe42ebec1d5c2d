"""The report's charts (altair), each built from a small frame aggregated in DuckDB first.

Every builder returns a `ChartOut(name, chart, rows, reason)`: when the lake lacks the data a
chart needs, the chart is an explicit "no data: <reason>" panel instead of vanishing, and `rows`
is 0 so tests and the report can tell. Time axes use UTC scales and UTC formats so a browser in
another zone (or vl-convert) shows the same clock times as the tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import altair as alt
import polars as pl

from .attribution import Attribution
from .db import Forensics
from .signals import base_of

WIDTH = 1100
STAGE_PALETTE = [
    "#4c78a8", "#f58518", "#e45756", "#72b7b2", "#54a24b", "#eeca3b", "#b279a2", "#ff9da6", "#9d755d",
]
VERDICT_COLORS = alt.Scale(
    domain=["supported", "contradicted", "not enough data"], range=["#2ca02c", "#d62728", "#9e9e9e"]
)


@dataclass
class ChartOut:
    name: str
    title: str
    chart: alt.TopLevelMixin
    rows: int
    reason: str = ""


def _iso(df: pl.DataFrame, *cols: str) -> pl.DataFrame:
    """Timestamps as ISO-8601 UTC text (`...Z`): vega parses them as UTC instants, unambiguously."""
    return df.with_columns(
        [pl.col(c).dt.convert_time_zone("UTC").dt.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").alias(c) for c in cols if c in df.columns]
    )


def _x(field: str = "ts", title: str = "time (UTC)", window: tuple[datetime, datetime] | None = None) -> alt.X:
    """A UTC time axis; with `window`, the axis spans the whole window even if the data do not."""
    scale = alt.Scale(type="utc", domain=[_iso_s(window[0]), _iso_s(window[1])]) if window else alt.Scale(type="utc")
    return alt.X(f"{field}:T", title=title, scale=scale, axis=alt.Axis(format="%H:%M", labelAngle=0))


def _tt(field: str = "ts", title: str = "time (UTC)") -> alt.Tooltip:
    return alt.Tooltip(f"{field}:T", title=title, format="%Y-%m-%d %H:%M:%S", formatType="utc")


def stage_scale(att: Attribution) -> alt.Scale:
    names = [s.name for s in att.chain.stages if s.role == "cause"] + ["residual", "baseline", "unexplained"]
    colors = STAGE_PALETTE[: len(names) - 3] + ["#bdbdbd", "#7f7f7f", "#dddddd"]
    while len(colors) < len(names):
        colors.insert(len(names) - 3, "#333333")
    return alt.Scale(domain=names, range=colors)


def no_data(name: str, title: str, reason: str, height: int = 120) -> ChartOut:
    df = pl.DataFrame({"msg": [f"no data: {reason}"]})
    chart = (
        alt.Chart(df)
        .mark_text(fontSize=16, color="#a00", align="center")
        .encode(text="msg:N")
        .properties(width=WIDTH, height=height, title=title)
    )
    return ChartOut(name, title, chart, 0, reason)


def _markers(db: Forensics, start: datetime, end: datetime) -> pl.DataFrame:
    m = db.sql(
        """SELECT ts, kind, label FROM markers WHERE ts >= $lo AND ts < $hi
           AND kind IN ('news', 'venue_statement', 'liquidations', 'venue_event') ORDER BY ts""",
        {"lo": start, "hi": end},
    )
    return m.with_columns(pl.col("label").str.slice(0, 60).alias("short"))


# ---- 1. price path with legs -------------------------------------------------------------------
def price_legs(att: Attribution, db: Forensics) -> ChartOut:
    title = f"Price path of {att.instrument} with legs coloured by dominant stage ({att.mode})"
    if att.bars.height == 0:
        return no_data("price_legs", title, f"no prices for {att.instrument} in the window")
    bars = _iso(att.bars.select("ts", "close", "low", "high"), "ts")
    base = alt.Chart(bars).encode(x=_x())
    line = base.mark_line(color="#555", strokeWidth=1).encode(
        y=alt.Y("close:Q", title="price", scale=alt.Scale(zero=False)), tooltip=[_tt(), "close:Q", "low:Q", "high:Q"]
    )
    wick = base.mark_rule(color="#aaa").encode(y="low:Q", y2="high:Q")
    layers = [wick, line]
    if att.legs.height:
        legs = _iso(
            att.legs.select("leg_id", "start_ts", "end_ts", "start_price", "end_price", "move_pct", "dominant_stage", "confidence"),
            "start_ts", "end_ts",
        )
        seg = alt.Chart(legs).mark_rule(strokeWidth=4, opacity=0.85).encode(
            x=alt.X("start_ts:T", scale=alt.Scale(type="utc")),
            x2="end_ts:T",
            y="start_price:Q",
            y2="end_price:Q",
            color=alt.Color("dominant_stage:N", scale=stage_scale(att), title="dominant stage"),
            tooltip=["leg_id:Q", _tt("start_ts", "from"), _tt("end_ts", "to"), alt.Tooltip("move_pct:Q", format=".2f"), "dominant_stage:N", alt.Tooltip("confidence:Q", format=".2f")],
        )
        layers.append(seg)
    mk = _markers(db, att.start, att.end)
    if mk.height:
        mk = _iso(mk, "ts")
        rules = alt.Chart(mk).mark_rule(strokeDash=[4, 3], color="#8a2be2").encode(
            x=alt.X("ts:T", scale=alt.Scale(type="utc")), tooltip=[_tt(), "kind:N", "label:N"]
        )
        text = alt.Chart(mk.filter(pl.col("kind") == "news")).mark_text(angle=270, align="right", baseline="bottom", dx=-4, dy=-2, fontSize=9, color="#8a2be2").encode(
            x=alt.X("ts:T", scale=alt.Scale(type="utc")), y=alt.value(0), text="short:N"
        )
        layers += [rules, text]
    chart = alt.layer(*layers).properties(width=WIDTH, height=380, title=title)
    return ChartOut("price_legs", title, chart, att.bars.height)


# ---- 2. stacked attribution --------------------------------------------------------------------
def attribution_stack(att: Attribution) -> ChartOut:
    shapley = att.mode == "shapley"
    title = (
        "Attribution per leg: Shapley values of the replayed move + residual (percentage points)"
        if shapley
        else "Evidence shares per leg (no replay run: co-occurrence of signals, NOT a decomposition of the move)"
    )
    if att.legs.height == 0:
        return no_data("attribution", title, "no legs (no prices, or the path never moved by the threshold)")
    labels = att.legs.select(
        "leg_id",
        pl.format(
            "L{} {}→{} {}%",
            pl.col("leg_id"),
            pl.col("start_ts").dt.strftime("%H:%M"),
            pl.col("end_ts").dt.strftime("%H:%M"),
            pl.col("move_pct").round(1),
        ).alias("leg"),
    )
    a = att.attribution.join(labels, on="leg_id")
    if shapley:
        a = a.filter(pl.col("contribution_pct").is_not_null()).with_columns(pl.col("contribution_pct").alias("value"))
        ytitle = "contribution to the leg's move (pct points)"
    else:
        a = a.filter((pl.col("method") == "evidence") & pl.col("share").is_not_null()).with_columns(pl.col("share").alias("value"))
        ytitle = "evidence share"
    if a.height == 0 or a["value"].abs().sum() == 0:
        return no_data("attribution", title, "no stage signal overlaps any leg (every leg is residual)")
    chart = (
        alt.Chart(a.select("leg", "leg_id", "stage", "method", "value", "evidence"))
        .mark_bar()
        .encode(
            x=alt.X("leg:N", sort=alt.SortField("leg_id"), title="leg", axis=alt.Axis(labelAngle=-30)),
            y=alt.Y("value:Q", title=ytitle, stack="zero"),
            color=alt.Color("stage:N", scale=stage_scale(att)),
            tooltip=["leg:N", "stage:N", "method:N", alt.Tooltip("value:Q", format=".3f"), alt.Tooltip("evidence:Q", format=".2f")],
        )
        .properties(width=WIDTH, height=320, title=title)
    )
    return ChartOut("attribution", title, chart, a.height)


# ---- 3. liquidity vacuum -----------------------------------------------------------------------
def liquidity(db: Forensics, start: datetime, end: datetime) -> ChartOut:
    title = "Liquidity vacuum: bid and ask depth within 1/2/5 % of the mid, per minute (USD notional)"
    df = db.sql(
        """SELECT time_bucket(INTERVAL 1 minute, ts) AS ts, venue || ' ' || symbol AS instrument, band_pct,
                  avg(notional) AS notional
           FROM depth_bands WHERE ts >= $lo AND ts < $hi AND abs(band_pct) IN (1, 2, 5)
           GROUP BY ALL ORDER BY ts""",
        {"lo": start, "hi": end},
    )
    if df.height == 0:
        return no_data("liquidity", title, "no depth_bands in the lake for the window")
    df = _iso(
        df.with_columns(
            pl.when(pl.col("band_pct") < 0).then(pl.lit("bid")).otherwise(pl.lit("ask")).alias("side"),
            pl.format("{} {}%", pl.when(pl.col("band_pct") < 0).then(pl.lit("bid")).otherwise(pl.lit("ask")), pl.col("band_pct").abs().cast(pl.Int64)).alias("band"),
            (pl.col("notional") / 1e6).alias("usd_m"),
        ),
        "ts",
    )
    chart = (
        alt.Chart(df)
        .mark_line(strokeWidth=1.2)
        .encode(
            x=_x(),
            y=alt.Y("usd_m:Q", title="depth within band (US$ M)"),
            color=alt.Color("band:N", scale=alt.Scale(domain=["bid 1%", "bid 2%", "bid 5%", "ask 1%", "ask 2%", "ask 5%"],
                                                       range=["#08519c", "#3182bd", "#9ecae1", "#a50f15", "#de2d26", "#fc9272"])),
            strokeDash=alt.StrokeDash("side:N"),
            tooltip=[_tt(), "instrument:N", "band:N", alt.Tooltip("usd_m:Q", format=".2f")],
        )
        .properties(width=WIDTH, height=300, title=title)
    )
    n = df["instrument"].n_unique()
    if n > 1:
        # Each book on its own scale: a thin altcoin book next to the BTC perp would be a flat line.
        chart = (chart.properties(height=160).facet(row="instrument:N").resolve_scale(y="independent")
                 .properties(title=title))
    return ChartOut("liquidity", title, chart, df.height)


# ---- 4. USDe depeg -----------------------------------------------------------------------------
def depeg(db: Forensics, start: datetime, end: datetime, asset: str = "USDE") -> ChartOut:
    title = f"{asset} on Binance vs on-chain (per-minute close / last pool price)"
    p = {"lo": start, "hi": end}
    cex = db.sql(
        """SELECT ts, venue, symbol, close AS price FROM bars
           WHERE ts >= $lo AND ts < $hi AND venue NOT IN ('uniswap', 'curve', 'onchain') AND interval = '1m'
           UNION ALL
           SELECT time_bucket(INTERVAL 1 minute, ts), venue, symbol, arg_max(price, ts) FROM trades
           WHERE ts >= $lo AND ts < $hi AND venue NOT IN ('uniswap', 'curve', 'onchain') GROUP BY ALL""",
        p,
    )
    chain_px = db.sql(
        """SELECT time_bucket(INTERVAL 1 minute, ts) AS ts, venue, symbol, arg_max(price, ts) AS price FROM prices
           WHERE ts >= $lo AND ts < $hi AND venue IN ('uniswap', 'curve', 'onchain', 'aave') GROUP BY ALL""",
        p,
    )
    parts = []
    for df, where in ((cex, "CEX"), (chain_px, "on-chain")):
        if df.height:
            df = df.filter(pl.col("symbol").map_elements(base_of, return_dtype=pl.String) == asset)
            parts.append(df.with_columns(pl.format("{} {} ({})", pl.col("venue"), pl.col("symbol"), pl.lit(where)).alias("series")))
    parts = [p_ for p_ in parts if p_.height]
    if not parts:
        return no_data("depeg", title, f"no {asset} prices (CEX bars/trades or on-chain pool) in the window")
    df = pl.concat([p_.select("ts", "series", "price") for p_ in parts]).sort("ts")
    kinds = {s.split(" (")[-1] for s in df["series"].unique().to_list()}
    if kinds != {"CEX)", "on-chain)"}:
        title += " — only " + ", ".join(sorted(k.rstrip(")") for k in kinds)) + " prices present"
    df = _iso(df, "ts")
    chart = (
        alt.Chart(df)
        .mark_line(strokeWidth=1.5, interpolate="step-after")
        .encode(
            x=_x(),
            y=alt.Y("price:Q", title=f"{asset} price (USD)", scale=alt.Scale(zero=False)),
            color=alt.Color("series:N"),
            tooltip=[_tt(), "series:N", alt.Tooltip("price:Q", format=".4f")],
        )
        .properties(width=WIDTH, height=300, title=title)
    )
    return ChartOut("depeg", title, chart, df.height)


# ---- 5. liquidations ---------------------------------------------------------------------------
def liquidations(db: Forensics, att: Attribution) -> ChartOut:
    title = "Liquidations per minute by venue and stage (recorded, tagged trades, replayed)"
    p = {"lo": att.start, "hi": att.end}
    rec = db.sql(
        """SELECT time_bucket(INTERVAL 1 minute, ts) AS ts, venue, 'recorded' AS stage, sum(abs(quote_amount)) AS usd
           FROM liquidations WHERE ts >= $lo AND ts < $hi GROUP BY ALL
           UNION ALL
           SELECT time_bucket(INTERVAL 1 minute, ts), venue, 'tagged trades', sum(quote_amount)
           FROM trades WHERE ts >= $lo AND ts < $hi AND is_liquidation GROUP BY ALL""",
        p,
    )
    parts = [rec.with_columns(pl.col("ts").cast(pl.Datetime("us", "UTC")))] if rec.height else []
    if att.replay_flow is not None and att.replay_flow.height:
        r = att.replay_flow.filter((pl.col("ts") >= att.start) & (pl.col("ts") < att.end))
        r = r.group_by(pl.col("ts").dt.truncate("1m"), "venue", pl.col("stage").fill_null("replayed")).agg(
            pl.col("quote_amount").sum().alias("usd")
        )
        parts.append(r.with_columns(pl.format("replay: {}", pl.col("stage")).alias("stage")).select(rec.columns))
    if not parts:
        why = "the lake has no liquidations or liquidation-tagged trades in the window"
        why += "" if att.replay_flow is not None else ", and no replay run was given"
        return no_data("liquidations", title, why)
    df = pl.concat(parts, how="vertical_relaxed").with_columns((pl.col("usd") / 1e6).alias("usd_m"), pl.col("venue").fill_null("?"))
    df = _iso(df, "ts")
    chart = (
        alt.Chart(df)
        .mark_bar(width=2)
        .encode(
            x=_x(window=(att.start, att.end)),
            y=alt.Y("sum(usd_m):Q", title="US$ M per minute"),
            color=alt.Color("stage:N"),
            row=alt.Row("venue:N", title=None),
            tooltip=[_tt(), "venue:N", "stage:N", alt.Tooltip("usd_m:Q", format=".3f")],
        )
        .properties(width=WIDTH, height=140)
        .properties(title=title)
    )
    return ChartOut("liquidations", title, chart, df.height)


# ---- 6. cross-venue wicks ----------------------------------------------------------------------
def wick_table(db: Forensics, start: datetime, end: datetime) -> pl.DataFrame:
    """Per instrument: first price in the window, low, time of low, drawdown to the low."""
    return db.sql(
        """WITH t AS (
             SELECT venue, market, symbol, ts, price FROM trades WHERE ts >= $lo AND ts < $hi
             UNION ALL
             SELECT venue, market, symbol, ts, low FROM bars
             WHERE ts >= $lo AND ts < $hi AND price_type = 'trade' AND interval = '1m')
           SELECT venue, market, symbol, arg_min(price, ts) AS first_price, min(price) AS low,
                  arg_min(ts, price) AS low_ts, (min(price) / arg_min(price, ts) - 1) * 100 AS drawdown_pct,
                  count(*) AS n
           FROM t GROUP BY ALL ORDER BY symbol, venue""",
        {"lo": start, "hi": end},
    )


def wicks(db: Forensics, start: datetime, end: datetime) -> ChartOut:
    title = "Cross-venue wick comparison: drawdown from the window's first price to the low"
    df = wick_table(db, start, end)
    if df.height == 0:
        return no_data("wicks", title, "no trades or trade bars in the window")
    df = _iso(
        df.with_columns(
            pl.col("symbol").map_elements(base_of, return_dtype=pl.String).alias("asset"),
            pl.format("{} {}", pl.col("venue"), pl.col("market")).alias("venue_market"),
            pl.col("low_ts").dt.convert_time_zone("UTC").dt.strftime("%H:%M").alias("low_hhmm"),
        ),
        "low_ts",
    )
    chart = (
        alt.Chart(df)
        .mark_bar()
        .encode(
            y=alt.Y("asset:N", title=None),
            yOffset="venue_market:N",
            x=alt.X("drawdown_pct:Q", title="drawdown to the low (%)"),
            color=alt.Color("venue_market:N", title="venue"),
            tooltip=["asset:N", "venue:N", "market:N", "symbol:N", alt.Tooltip("first_price:Q", format=".6g"),
                     alt.Tooltip("low:Q", format=".6g"), _tt("low_ts", "time of low"), alt.Tooltip("drawdown_pct:Q", format=".2f")],
        )
        .properties(width=WIDTH - 150, height=alt.Step(14), title=title)
    )
    text = chart.mark_text(align="right", dx=-3, fontSize=9).encode(
        text="low_hhmm:N", color=alt.value("#222")
    )
    return ChartOut("wicks", title, alt.layer(chart, text), df.height)


# ---- 7. narrative timeline ---------------------------------------------------------------------
def narrative(att: Attribution) -> ChartOut:
    title = f"Narrative test: stage onsets and verdicts (tolerance {att.chain.tolerance_minutes:g} min)"
    order = [s.title for s in att.chain.stages]
    ons = att.onsets.with_columns(
        pl.when(pl.col("onset").is_null()).then(pl.format("{} — no onset: {}", pl.col("title"), pl.col("note").str.slice(0, 60))).otherwise(pl.lit("")).alias("missing")
    )
    have = ons.filter(pl.col("onset").is_not_null()).with_columns(
        pl.col("onset").dt.convert_time_zone("UTC").dt.strftime("%H:%M").alias("hhmm")
    )
    if have.height == 0:
        return no_data("narrative", title, "no stage has an onset (no signal data in the window)")
    titles = {s.name: s.title for s in att.chain.stages}
    pairs = att.narrative.with_columns(
        pl.col("cause").replace_strict(titles).alias("cause_title"),
        pl.col("effect").replace_strict(titles).alias("effect_title"),
        pl.format("{} → {}: {} ({} min)", pl.col("cause"), pl.col("effect"), pl.col("verdict"), pl.col("lead_minutes").round(1)).alias("desc"),
    ).filter(pl.col("cause_onset").is_not_null() & pl.col("effect_onset").is_not_null())
    y = alt.Y("title:N", sort=order, title=None, scale=alt.Scale(domain=order))
    pts = alt.Chart(_iso(have, "onset")).mark_point(size=140, filled=True, color="#222").encode(
        x=alt.X("onset:T", title="onset (UTC)", scale=alt.Scale(type="utc", domain=[_iso_s(att.start), _iso_s(att.end)]), axis=alt.Axis(format="%H:%M")),
        y=y,
        tooltip=["stage:N", _tt("onset", "onset"), "signal:N", "rule:N", "note:N"],
    )
    labels = alt.Chart(_iso(have, "onset")).mark_text(align="left", dx=9, fontSize=10).encode(
        x=alt.X("onset:T", scale=alt.Scale(type="utc")), y=y, text="hhmm:N"
    )
    layers = []
    if pairs.height:
        segs = alt.Chart(_iso(pairs, "cause_onset", "effect_onset")).mark_rule(strokeWidth=2, opacity=0.6).encode(
            x=alt.X("cause_onset:T", scale=alt.Scale(type="utc")),
            x2="effect_onset:T",
            y=alt.Y("cause_title:N", sort=order, scale=alt.Scale(domain=order)),
            y2="effect_title:N",
            color=alt.Color("verdict:N", scale=VERDICT_COLORS),
            strokeDash=alt.condition("datum.hops > 1", alt.value([4, 3]), alt.value([1, 0])),
            tooltip=["desc:N", "says:N"],
        )
        layers.append(segs)
    miss = ons.filter(pl.col("onset").is_null())
    if miss.height:
        layers.append(
            alt.Chart(miss.with_columns(pl.lit(_iso_s(att.start)).alias("x"))).mark_text(align="left", dx=4, fontSize=10, color="#9e9e9e").encode(
                x=alt.X("x:T", scale=alt.Scale(type="utc")), y=y, text="missing:N"
            )
        )
    chart = alt.layer(*layers, pts, labels).properties(width=WIDTH - 250, height=40 * len(order), title=title)
    return ChartOut("narrative", title, chart, have.height)


def _iso_s(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def all_charts(att: Attribution, db: Forensics) -> list[ChartOut]:
    return [
        price_legs(att, db),
        attribution_stack(att),
        liquidity(db, att.start, att.end),
        depeg(db, att.start, att.end),
        liquidations(db, att),
        wicks(db, att.start, att.end),
        narrative(att),
    ]
