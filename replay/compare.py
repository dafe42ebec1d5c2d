"""Compare two replay runs: what the second rule set avoided (or added) against the first.

"Avoided" = A − B: liquidations, forced notional and price impact (margin price below recorded,
in percent) that happen in run A and not in run B, by minute and by cohort.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl


def _load(run: Path) -> tuple[dict, pl.DataFrame, pl.DataFrame]:
    run = Path(run)
    if not (run / "manifest.json").exists():
        raise FileNotFoundError(f"{run}: not a replay run folder (no manifest.json)")
    return (json.loads((run / "manifest.json").read_text()), pl.read_parquet(run / "events.parquet"),
            pl.read_parquet(run / "price_path.parquet"))


def _per(events: pl.DataFrame, key: str) -> pl.DataFrame:
    ev = events.with_columns(pl.col("ts").dt.truncate("1m").alias("minute"))
    liq = ev.filter(pl.col("kind") == "liquidation").group_by(key).agg(
        pl.len().alias("liquidations"), pl.col("weight").sum().alias("accounts"))
    fo = ev.filter((pl.col("kind") == "forced_order") & (pl.col("stage") != "macro_shock")).group_by(key).agg(
        pl.col("quote_amount").sum().alias("forced_notional"))
    return liq.join(fo, on=key, how="full", coalesce=True).fill_null(0)


def compare_runs(run_a: Path, run_b: Path) -> dict:
    ma, ea, pa = _load(run_a)
    mb, eb, pb = _load(run_b)
    out: dict = {"run_a": ma["run_id"], "run_b": mb["run_id"]}
    for key, name in (("minute", "by_minute"), ("cohort", "by_cohort")):
        a, b = _per(ea, key), _per(eb, key)
        j = a.join(b, on=key, how="full", coalesce=True, suffix="_b").fill_null(0).sort(key)
        j = j.select(
            pl.col(key).cast(pl.String),
            (pl.col("liquidations") - pl.col("liquidations_b")).alias("liquidations_avoided"),
            (pl.col("accounts") - pl.col("accounts_b")).alias("accounts_avoided"),
            (pl.col("forced_notional") - pl.col("forced_notional_b")).alias("forced_notional_avoided"),
        )
        out[name] = j.to_dicts()
    imp = []
    for df, tag in ((pa, "a"), (pb, "b")):
        imp.append(df.with_columns(pl.col("ts").dt.truncate("1m").cast(pl.String).alias("minute"),
                                   (100 * (pl.col("margin_price") / pl.col("recorded_price") - 1)).alias(f"impact_{tag}"))
                   .select("minute", "venue", "symbol", f"impact_{tag}"))
    ji = imp[0].join(imp[1], on=["minute", "venue", "symbol"], how="full", coalesce=True).fill_null(0.0)
    ji = ji.with_columns((pl.col("impact_b") - pl.col("impact_a")).alias("impact_avoided_pct")).sort("minute", "venue", "symbol")
    out["price_impact"] = ji.filter(pl.col("impact_avoided_pct").abs() > 1e-12).to_dicts()
    sa, sb = ma["summary"], mb["summary"]
    out["total"] = {
        "liquidations_avoided": sa["liquidations"] - sb["liquidations"],
        "accounts_avoided": sa["accounts_liquidated"] - sb["accounts_liquidated"],
        "forced_notional_avoided": sa["forced_notional"] - sb["forced_notional"],
        "max_price_impact_avoided_pct": {k: round(sb.get("max_impact_pct", {}).get(k, 0.0) - v, 4)
                                         for k, v in sorted(sa.get("max_impact_pct", {}).items())},
        "first_liquidation_a": sa.get("first_liquidation"), "first_liquidation_b": sb.get("first_liquidation"),
    }
    return out
