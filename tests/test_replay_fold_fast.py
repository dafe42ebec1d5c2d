"""The fast fold equals the straightforward one, bit for bit.

1. `ArrayBook` (numpy) vs `Book` (dicts) on random update streams cut into random segments: same
   levels in the same insertion order, same ladders byte for byte (tombstones, compaction, -0.0,
   repeated prices, one-sided books).
2. A small random lake (two instruments; snapshots, two delta files for one instrument, trades):
   `build_tape` (Stream.windows + Folder.feed_parts, merging only what shares an instrument) vs
   `Folder.feed` on the fully merged stream, and both vs a per-event dict-book reference fold.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl
from hypothesis import given, settings, strategies as st

from crashlab.ingest.formats.base import Parsed
from crashlab.ingest.lake import Lake
from crashlab.ingest.pipeline import ingest_parsed
from crashlab.replay.books import ArrayBook, Book
from crashlab.replay.state import PTYPES, Folder, build_tape
from crashlab.replay.stream import Stream

UTC = timezone.utc
T0 = datetime(2025, 10, 10, 21, 0, tzinfo=UTC)


def _same_ladder(x, y) -> bool:
    if x is None or y is None:
        return x is None and y is None
    return (np.float64(x[0]).tobytes() == np.float64(y[0]).tobytes() and x[1].tobytes() == y[1].tobytes()
            and x[2].tobytes() == y[2].tobytes())


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 600), levels=st.integers(1, 300),
       zero_frac=st.floats(0.0, 0.9), n_cuts=st.integers(0, 12))
def test_arraybook_equals_dict_book(seed, n, levels, zero_frac, n_cuts):
    rng = np.random.default_rng(seed)
    side = rng.choice(np.array([1, -1, 0], dtype=np.int8), n, p=[0.48, 0.48, 0.04])
    price = 100.0 + np.where(side > 0, -1, 1) * rng.integers(0, levels, n) * 0.01
    price[rng.random(n) < 0.01] = -0.0 if rng.random() < 0.5 else 0.0
    amount = np.where(rng.random(n) < zero_frac, 0.0, rng.exponential(3.0, n))
    cuts = np.unique(np.concatenate([[0, n], rng.integers(0, n, n_cuts)]))
    ref, fast = Book(), ArrayBook()
    for a, b in zip(cuts[:-1], cuts[1:]):
        if rng.random() < 0.05:
            ref.clear()
            fast.clear()
        ref.apply(side[a:b], price[a:b], amount[a:b])
        fast.apply(side[a:b], price[a:b], amount[a:b])
        assert _same_ladder(ref.ladder(), fast.ladder())  # ladder() also compacts tombstones in both
        bids, asks = fast.levels()
        assert list(ref.bids.items()) == list(bids.items())  # same levels, same insertion order
        assert list(ref.asks.items()) == list(asks.items())


def _put(lake: Lake, table: str, df: pl.DataFrame, tag: str) -> None:
    sha = hashlib.sha256(tag.encode()).hexdigest()
    rep = ingest_parsed(lake, Parsed(f"test.{table}", df.height, {table: df}), path=tag, sha256=sha, source="test")
    assert rep.rows_quarantined == 0, rep


def _ts(us: np.ndarray) -> pl.Series:
    return pl.Series(int(T0.timestamp() * 1e6) + us).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")


def _random_lake(root, seed: int) -> Lake:
    rng = np.random.default_rng(seed)
    lake = Lake.open(root)
    span = 120 * 1_000_000  # 2 minutes
    for sym, p0 in (("BTC/USDT:USDT", 100.0), ("ETH/USDT:USDT", 50.0)):
        n = 400
        t = np.sort(rng.integers(0, span, n))
        ts = _ts(t)
        _put(lake, "trades", pl.DataFrame({
            "ts": ts, "venue": "binance", "market": "perp", "symbol": sym, "native_symbol": sym[:3] + "USDT",
            "local_ts": ts, "trade_id": [str(i) for i in range(n)], "side": np.where(rng.random(n) < 0.5, "buy", "sell"),
            "price": p0 + rng.normal(0, 0.05, n), "amount": rng.exponential(1.0, n),
            "quote_amount": rng.exponential(100.0, n), "is_liquidation": pl.Series([None] * n, dtype=pl.Boolean),
            "_row": np.arange(1, n + 1)}), f"trades-{sym}-{seed}")
        # L2 deltas in two files (two "days" of one instrument interleave in time: the merge matters)
        for part in range(2 if sym.startswith("BTC") else 1):
            m = 1500
            t = np.sort(rng.integers(0, span, m))
            bid = rng.random(m) < 0.5
            lvl = rng.integers(1, 40, m)
            ts = _ts(t)
            snap = np.zeros(m, dtype=bool)
            if part == 0:  # a full snapshot (several rows at one ts) a third of the way in
                k = m // 3
                t[k:k + 6] = t[k]
                snap[k:k + 6] = True
                ts = _ts(np.sort(t))
            _put(lake, "book_deltas", pl.DataFrame({
                "ts": ts, "venue": "binance", "market": "perp", "symbol": sym, "native_symbol": sym[:3] + "USDT",
                "local_ts": ts, "is_snapshot": snap, "side": np.where(bid, "bid", "ask"),
                "price": np.round(p0 + np.where(bid, -lvl, lvl) * 0.01, 2),
                "amount": np.where(rng.random(m) < 0.25, 0.0, rng.exponential(2.0, m)),
                "_row": np.arange(1, m + 1)}), f"deltas-{sym}-{part}-{seed}")
        # a book snapshot (book_snapshots table) near the end
        ts = _ts(np.full(4, span - 20_000_000))
        _put(lake, "book_snapshots", pl.DataFrame({
            "ts": ts, "venue": "binance", "market": "perp", "symbol": sym, "native_symbol": sym[:3] + "USDT",
            "local_ts": ts, "side": ["bid", "bid", "ask", "ask"], "level": pl.Series([0, 1, 0, 1], dtype=pl.Int32),
            "price": [p0 - 0.01, p0 - 0.02, p0 + 0.01, p0 + 0.02], "amount": [1.0, 2.0, 1.5, 2.5],
            "_row": [1, 2, 3, 4]}), f"snap-{sym}-{seed}")
    return lake


def _tape_arrays(t) -> dict:
    out = {("inst",): repr(t.instruments), ("events",): t.events}
    for name in ("prices", "price_ids", "bid", "ask", "notional"):
        for k, a in getattr(t, name).items():
            out[(name, k)] = a.tobytes()
    return out


def test_fast_fold_equals_merged_and_reference(tmp_path):
    lake = _random_lake(tmp_path / "lake", seed=11)
    end = T0 + timedelta(minutes=2)
    for batch_rows in (131_072, 97):  # one window, and many windows cutting through periods and snapshots
        fast = build_tape(lake, T0, end, cache=False)
        stream = Stream(lake, T0, end, batch_rows=batch_rows)
        merged = Folder(T0, end, 1_000_000)
        for b in stream:  # the straightforward path: fully merged batches
            merged.feed(b)
        slow = merged.finish(T0, end, stream.instruments, stream.rows_read)
        if batch_rows == 131_072:
            assert _tape_arrays(fast) == _tape_arrays(slow)
        fast_small = Folder(T0, end, 1_000_000)
        s2 = Stream(lake, T0, end, batch_rows=batch_rows)
        for parts in s2.windows():
            fast_small.feed_parts([p for _, p in parts])
        assert _tape_arrays(fast_small.finish(T0, end, s2.instruments, s2.rows_read)) == _tape_arrays(slow)

    # per-event reference: dict books, one ladder per (instrument, 10 s period) from the merged stream
    tape = build_tape(lake, T0, end, cache=False)
    books: dict[int, Book] = {}
    last_trade: dict[tuple[int, int], float] = {}
    ladders: dict[tuple[int, int], tuple] = {}
    snap_ts: dict[int, int] = {}
    t0 = int(T0.timestamp() * 1e6)
    events = [row for b in Stream(lake, T0, end) for row in zip(
        b.ts.tolist(), b.table.tolist(), b.inst.tolist(), b.side.tolist(), b.price.tolist(), b.amount.tolist(),
        b.aux.tolist())]
    period_of = [(e[0] - t0) // 1_000_000 // 10 for e in events]
    next_book_period: list[int | None] = [None] * len(events)  # period of the instrument's next book row
    seen: dict[int, int] = {}
    for j in range(len(events) - 1, -1, -1):
        next_book_period[j] = seen.get(events[j][2])
        if events[j][1] != 8:
            seen[events[j][2]] = period_of[j]
    for j, (ts, table, inst, side, price, amount, aux) in enumerate(events):
        step = (ts - t0) // 1_000_000
        if table == 8:
            last_trade[(inst, step)] = price
            continue
        bk = books.setdefault(inst, Book())
        if table == 1 or aux > 0:  # a snapshot row: a new snapshot ts clears the book
            if snap_ts.get(inst) != ts:
                bk.clear()
                snap_ts[inst] = ts
        (bk.bids if side > 0 else bk.asks)[price] = amount
        period = step // 10
        if next_book_period[j] != period:  # the instrument's last book row of this period
            ladders[(inst, min(period * 10 + 9, tape.T - 1))] = bk.ladder()
    for (inst, kk), lad in ladders.items():
        if lad is None:
            continue
        mid, lb, la = lad
        assert tape.bid[inst][kk].tobytes() == lb.tobytes()
        assert tape.ask[inst][kk].tobytes() == la.tobytes()
        assert tape.prices[(inst, PTYPES["book_mid"])][kk] == mid
    for (inst, step), p in last_trade.items():
        assert tape.prices[(inst, PTYPES["trade"])][step] == p
