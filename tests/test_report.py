"""The report on lakes whose content is known: self-contained page, explicit 'no data' panels."""

from __future__ import annotations

import re
from datetime import datetime, timezone

import polars as pl

from crashlab.analysis.report import build
from crashlab.ingest.lake import Lake

START = datetime(2025, 10, 10, 20, 0, tzinfo=timezone.utc)
END = datetime(2025, 10, 10, 21, 0, tzinfo=timezone.utc)


def test_empty_lake_report_says_no_data_and_is_self_contained(tmp_path):
    lake = Lake.open(tmp_path / "lake")
    res = build(lake, START, END, tmp_path / "rep", images=False)
    html = res.index.read_text()
    # every chart is present, each one explicitly says why it has no data
    for name in ("price_legs", "attribution", "liquidity", "depeg", "liquidations", "wicks"):
        assert res.charts[name]["rows"] == 0, name
        assert res.charts[name]["reason"]
    assert html.count("no data:") >= 6
    # nothing is loaded from the network: no script src, no link href to http(s)
    assert not re.search(r"<script[^>]+src=", html)
    assert not re.search(r"<link[^>]+href=[\"']https?://", html)
    assert "vegaEmbed('#c0'" in html and "window.vegaEmbed" in html
    for t in ("legs", "attribution", "narrative", "timeline"):
        assert (tmp_path / "rep" / "tables" / f"{t}.csv").exists()
    # shipped markers (data/markers.csv) still give the narrative its macro-shock onset
    nar = pl.read_csv(tmp_path / "rep" / "tables" / "onsets.csv")
    assert nar.filter(pl.col("stage") == "macro_shock")["onset"][0].startswith("2025-10-10T20:50")
