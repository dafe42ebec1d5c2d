"""The zig-zag leg segmentation on paths whose legs are known."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import polars as pl
import pytest

from crashlab.analysis.legs import legs_from_bars, zigzag_pivots

T0 = datetime(2025, 10, 10, 20, 0, tzinfo=timezone.utc)


def bars(closes: list[float], wicks: dict[int, float] | None = None) -> pl.DataFrame:
    wicks = wicks or {}
    closes = [float(c) for c in closes]
    ts = [T0 + timedelta(minutes=i) for i in range(len(closes))]
    lows = [min(c, wicks.get(i, c)) for i, c in enumerate(closes)]
    return pl.DataFrame({"ts": ts, "open": closes, "high": closes, "low": lows, "close": closes})


def test_down_up_down_legs():
    path = [100, 99, 97, 95, 90, 91, 95, 99, 98, 96, 93, 94]
    legs = legs_from_bars(bars(path), threshold_pct=3)
    assert legs["direction"].to_list() == ["down", "up", "down"]
    assert legs["end_price"].to_list() == [90, 99, 93]
    assert legs["end_ts"][0] == T0 + timedelta(minutes=4)
    assert legs["complete"].to_list() == [True, True, False]
    assert legs["move_pct"][0] == pytest.approx(-10.0)


def test_wick_low_is_the_pivot_not_the_close():
    path = [100, 99, 98, 97, 98, 99, 100]
    legs = legs_from_bars(bars(path, wicks={3: 80.0}), threshold_pct=5)
    assert legs["end_price"][0] == 80.0  # the wick, which a close-only zig-zag would miss
    assert legs["end_ts"][0] == T0 + timedelta(minutes=3)
    assert legs["direction"].to_list() == ["down", "up"]


def test_noise_below_threshold_gives_no_leg():
    legs = legs_from_bars(bars([100, 100.5, 99.7, 100.2, 99.9]), threshold_pct=2)
    assert legs.height == 0


def test_legs_tile_the_path():
    path = [100, 96, 92, 97, 101, 95, 90, 85, 88, 92]
    legs = legs_from_bars(bars(path), threshold_pct=2)
    assert legs["start_ts"][1:].to_list() == legs["end_ts"][:-1].to_list()
    assert legs["start_price"][1:].to_list() == legs["end_price"][:-1].to_list()


def test_bad_threshold():
    with pytest.raises(ValueError):
        zigzag_pivots([T0], [1.0], [1.0], 0)
