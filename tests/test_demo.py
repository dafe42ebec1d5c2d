"""`crashlab demo`: the whole product on the simulated night, offline, from the repository alone."""

from __future__ import annotations

import hashlib
from pathlib import Path

import polars as pl
import pytest

from crashlab.demo import run_demo


def _lake_digest(lake: Path) -> dict[str, str]:
    """sha256 of every data file (the manifest's ingest time is the only wall-clock field; skipped)."""
    return {
        str(p.relative_to(lake)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(lake.rglob("*.parquet"))
        if "_manifest" not in p.parts
    }


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return run_demo(out, workers=2)


def test_demo_writes_the_report_and_its_tables(demo):
    assert demo.report is not None and demo.report.exists()
    html = demo.report.read_text()
    assert "SIMULATED DATA" in html and "Calibration" in html
    assert "<script src" not in html  # self-contained: opens with no network
    charts = sorted(p.name for p in (demo.out / "report" / "charts").glob("*.png"))
    assert {"price_legs.png", "attribution.png", "liquidity.png", "depeg.png", "liquidations.png", "wicks.png", "narrative.png"} <= set(charts)
    for name in ("legs", "attribution", "narrative", "timeline", "calibration"):
        assert pl.read_csv(demo.out / "report" / "tables" / f"{name}.csv").height > 0, name


def test_demo_calibration_and_counterfactual(demo):
    cal = demo.calibration
    assert cal.height >= 20
    # one known miss is documented in data/scenarios/sim_oct10.toml (depth-withdrawal onset)
    assert int(cal["within"].sum()) >= cal.height - 1
    tot = demo.compare["total"]
    assert tot["liquidations_avoided"] > 0, "conversion_rate pricing should avoid the MM collateral liquidations"
    assert tot["forced_notional_avoided"] > 0


def test_demo_attribution_adds_up(demo):
    att, legs = demo.attribution, demo.legs
    assert att is not None and legs is not None and legs.height > 0
    shap = att.filter(pl.col("method").is_in(["shapley", "residual", "baseline"]))
    sums = shap.group_by("leg_id").agg(pl.col("contribution_pct").sum().alias("s"))
    j = legs.join(sums, on="leg_id")
    for r in j.iter_rows(named=True):
        assert r["s"] == pytest.approx(r["move_pct"], abs=1e-6), r


@pytest.mark.slow
def test_two_demo_runs_are_identical(tmp_path):
    a = run_demo(tmp_path / "a", workers=2)
    b = run_demo(tmp_path / "b", workers=2)
    assert _lake_digest(a.lake) == _lake_digest(b.lake)
    assert (a.out / "report" / "tables" / "attribution.csv").read_bytes() == (b.out / "report" / "tables" / "attribution.csv").read_bytes()
    assert (a.out / "report" / "tables" / "legs.csv").read_bytes() == (b.out / "report" / "tables" / "legs.csv").read_bytes()
