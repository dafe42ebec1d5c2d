"""Turn the simulation's per-step records into lake rows, chunk by chunk, through the shared ingest.

Why through `ingest_parsed`: the simulator is "a source like any other" — its rows get the same
validation, event ids, manifest and quarantine accounting as a Tardis file, so anything downstream
can trust them the same way (and `source = 'simulated'` says what they are).

Events between two model steps (trades at sub-second times, snapshots at a finer cadence when
`scale` > 1) are drawn from the step's flows with a per-chunk seeded generator, so a chunk's rows
depend only on (seed, scale, chunk, records): byte-identical lakes run after run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import date
from typing import Callable

import numpy as np
import polars as pl

from crashlab.ingest.formats.base import Parsed
from crashlab.ingest.lake import Lake
from crashlab.ingest.pipeline import FileReport, ingest_parsed

from .market import BAND_PCTS, Records
from .scenario import Scenario

FORMAT = "crashlab.simulated"
SOURCE = "simulated"


@dataclass
class Cadence:
    """Event cadences in seconds at a given scale (scale multiplies event density)."""

    snapshot_s: float
    band_s: float
    ref_per_step: int

    @classmethod
    def for_scale(cls, sc: Scenario, scale: float, dt: float) -> "Cadence":
        w = sc.raw.get("writer", {})
        return cls(
            snapshot_s=max(0.05, float(w.get("snapshot_s", 5.0)) / scale),
            band_s=max(dt, float(w.get("band_s", 30.0)) / scale),
            ref_per_step=max(1, int(round(scale ** 0.5))),
        )


def _ts(start_us: int, seconds: np.ndarray) -> pl.Series:
    us = start_us + np.round(seconds * 1e6).astype(np.int64)
    return pl.Series(us).cast(pl.Datetime("us", "UTC"))


class ChunkWriter:
    def __init__(self, sc: Scenario, rec: Records, seed: int, scale: float, dt: float, summary_oi: dict):
        self.sc, self.rec, self.seed, self.scale, self.dt = sc, rec, seed, scale, dt
        self.cad = Cadence.for_scale(sc, scale, dt)
        self.start_us = int(sc.start.timestamp() * 1_000_000)
        ins = sc.instruments
        self.meta = pl.DataFrame({
            "_i": np.arange(len(ins)),
            "venue": [i.venue for i in ins], "market": [i.market for i in ins],
            "symbol": [i.symbol for i in ins], "native_symbol": [i.native for i in ins],
        })
        self.rate = np.array([float(i.get("trade_rate")) for i in ins])
        gross = rec.buys + rec.sells
        calm = max(1, int(600 / dt))
        self.calm_gross = np.maximum(np.median(gross[:calm], axis=0), 1e-9)
        self.hs = np.array([float(i.get("half_spread_bp")) for i in ins]) * 1e-4
        self.flag = np.array([i.market == "perp" for i in ins])  # venues that tag liquidation fills
        self.oi = summary_oi

    # ---- one chunk ------------------------------------------------------------------------
    def chunk(self, k: int, t0: int, t1: int) -> Parsed:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 1000 + k, int(self.scale * 1000)]))
        tables: dict[str, pl.DataFrame] = {}
        row0 = 0
        for name, fn in (("trades", self._trades), ("book_snapshots", self._snapshots),
                         ("depth_bands", self._bands), ("prices", self._prices),
                         ("liquidations", self._liquidations), ("open_interest", self._oi)):
            df, units = fn(rng, t0, t1)
            if df is None or df.height == 0:
                continue
            tables[name] = df.with_columns((pl.col("_unit") + row0).alias("_row")).drop("_unit")
            row0 += units
        return Parsed(
            format=FORMAT, rows_read=row0, tables=tables, day=self.sc.start.date(),
            decisions={"simulated": True, "scenario": self.sc.path.name, "scenario_sha256": self.sc.sha256,
                       "seed": self.seed, "scale": self.scale, "chunk": k,
                       "window": [t0 * self.dt, t1 * self.dt],
                       "note": "agent-based simulation calibrated to crash_facts.md; not recorded data"},
        )

    def _with_meta(self, df: pl.DataFrame) -> pl.DataFrame:
        return df.join(self.meta, on="_i", how="left", maintain_order="left").drop("_i")

    def _trades(self, rng, t0, t1):
        rec, dt = self.rec, self.dt
        n = rec.n
        buys, sells, forced = rec.buys[t0:t1], rec.sells[t0:t1], rec.forced[t0:t1]
        gross = buys + sells
        act = np.clip(gross / self.calm_gross, 0.3, 30.0)
        lam = self.rate[None, :] * dt * self.scale * act
        cnt = rng.poisson(lam)
        # a sweep that reached a new low/high shows as at least one trade at that price
        low, high = rec.low[t0:t1], rec.high[t0:t1]
        cnt = np.maximum(cnt, np.isfinite(low).astype(np.int64) + np.isfinite(high).astype(np.int64))
        steps, inst = np.nonzero(cnt)
        c = cnt[steps, inst]
        N = int(c.sum())
        if N == 0:
            return None, 0
        st = np.repeat(steps, c)
        ii = np.repeat(inst, c)
        first = np.repeat(np.cumsum(c) - c, c)
        kk = np.arange(N) - first  # index within the (step, instrument) cell
        is_last = kk == np.repeat(c - 1, c)
        is_first = kk == 0
        b, s = buys[st, ii], sells[st, ii]
        p_buy = np.where(b + s > 0, b / np.maximum(b + s, 1e-300), 0.5)
        side_buy = rng.random(N) < p_buy
        lo, hi = low[st, ii], high[st, ii]
        # the cell's extreme trades: first trade of a cell with a low is that sell, last with a high that buy
        side_buy = np.where(np.isfinite(lo) & is_first, False, side_buy)
        side_buy = np.where(np.isfinite(hi) & is_last & ~(np.isfinite(lo) & is_first), True, side_buy)
        m0 = rec.mid[t0 + st, ii]
        m1 = rec.mid[t0 + st + 1, ii]
        u = rng.random(N)
        frac = (kk + u) / np.repeat(c, c)  # time within the step, increasing with kk
        path = m0 * (m1 / m0) ** frac
        spread = self.hs[ii] * (1 + rng.exponential(1.0, N))
        px = np.where(side_buy, path * (1 + spread), path * (1 - spread))
        px = np.where(~side_buy & np.isfinite(lo) & is_first, lo, px)
        px = np.where(side_buy & np.isfinite(hi) & is_last & ~(np.isfinite(lo) & is_first), hi, px)
        vol = np.where(side_buy, b, s)
        cc = np.repeat(c, c)
        n_side = np.maximum(np.where(side_buy, cc * p_buy, cc * (1 - p_buy)), 1.0)
        quote = vol / n_side * rng.exponential(1.0, N) + 1.0
        amount = quote / px
        f = forced[st, ii]
        p_liq = np.where(s > 0, f / np.maximum(s, 1e-300), 0.0)
        liq = np.where(side_buy, False, rng.random(N) < p_liq)
        is_liq = pl.Series("is_liquidation", liq, dtype=pl.Boolean)
        flag = self.flag[ii]
        secs = (t0 + st + frac) * dt
        order = np.lexsort((kk, ii, secs))
        df = pl.DataFrame({
            "_i": ii, "ts": _ts(self.start_us, secs),
            "local_ts": _ts(self.start_us, secs + 0.002 + 0.02 * rng.random(N)),
            "trade_id": pl.Series(((t0 + st).astype(np.int64) * 100000 + kk)).cast(pl.String),
            "side": np.where(side_buy, "buy", "sell"), "price": px, "amount": amount, "quote_amount": px * amount,
            "is_liquidation": is_liq,
        }).with_columns(pl.when(pl.Series(flag)).then(pl.col("is_liquidation")).otherwise(None).alias("is_liquidation"))
        df = df[order]
        df = df.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("_unit"))
        return self._with_meta(df).with_columns(pl.lit(SOURCE).alias("source")), N

    def _snap_times(self, t0, t1, every_s):
        dt = self.dt
        start, end = t0 * dt, t1 * dt
        first = np.ceil(start / every_s) * every_s
        return np.arange(first, end - 1e-9, every_s)

    def _snapshots(self, rng, t0, t1):
        rec = self.rec
        times = self._snap_times(t0, t1, self.cad.snapshot_s)
        if times.size == 0:
            return None, 0
        sidx = np.minimum((times / self.dt / rec.snap_every).astype(np.int64), rec.snap_bid_px.shape[0] - 1)
        parts = []
        unit = 0
        for side, px, amt in (("bid", rec.snap_bid_px, rec.snap_bid_amt), ("ask", rec.snap_ask_px, rec.snap_ask_amt)):
            p = px[sidx]  # (S, n, L)
            a = amt[sidx] * rng.uniform(0.85, 1.15, p.shape)
            S, n, L = p.shape
            si, ii, ll = np.meshgrid(np.arange(S), np.arange(n), np.arange(L), indexing="ij")
            ok = np.isfinite(p)
            parts.append(pl.DataFrame({
                "_s": si[ok], "_i": ii[ok], "level": ll[ok].astype(np.int32), "side": side,
                "price": p[ok], "amount": a[ok],
            }))
        df = pl.concat(parts).sort(["_s", "_i", "side", "level"])
        secs = times[df["_s"].to_numpy()]
        key = (df["_s"].cast(pl.Int64) * rec.n + df["_i"].cast(pl.Int64))
        units = key.rank("dense").cast(pl.Int64) - 1  # one unit per (snapshot time, book)
        df = df.with_columns(ts=_ts(self.start_us, secs), local_ts=_ts(self.start_us, secs + 0.005),
                             _unit=units).drop("_s")
        unit = int(units.max()) + 1
        return self._with_meta(df).with_columns(pl.lit(SOURCE).alias("source")), unit

    def _bands(self, rng, t0, t1):
        rec = self.rec
        times = self._snap_times(t0, t1, self.cad.band_s)
        if times.size == 0:
            return None, 0
        sidx = np.minimum((times / self.dt / rec.snap_every).astype(np.int64), rec.depth_bid.shape[0] - 1)
        steps = np.minimum((times / self.dt).astype(np.int64), rec.T - 1)
        mid = rec.mid[steps]  # (S, n)
        parts = []
        nb = len(BAND_PCTS)
        for sign, dep in ((-1.0, rec.depth_bid), (1.0, rec.depth_ask)):
            d = dep[sidx]  # (S, n, B)
            S, n, B = d.shape
            si, ii, bb = np.meshgrid(np.arange(S), np.arange(n), np.arange(B), indexing="ij")
            notional = d.ravel()
            parts.append(pl.DataFrame({
                "_s": si.ravel(), "_i": ii.ravel(), "band_pct": sign * BAND_PCTS[bb.ravel()],
                "notional": notional, "depth": notional / mid[si.ravel(), ii.ravel()],
            }))
        df = pl.concat(parts).sort(["_s", "_i", "band_pct"])
        secs = times[df["_s"].to_numpy()]
        df = df.with_columns(ts=_ts(self.start_us, secs),
                             _unit=(pl.int_range(pl.len(), dtype=pl.Int64) // (2 * nb))).drop("_s")
        return self._with_meta(df).with_columns(pl.lit(SOURCE).alias("source")), int(df.height // (2 * nb))

    def _prices(self, rng, t0, t1):
        rec, sc, dt = self.rec, self.sc, self.dt
        k = self.cad.ref_per_step
        parts = []
        for (inst_id, kind), arr in sorted(rec.ref.items()):
            if kind == "basis":
                continue
            i = sc.index(inst_id)
            v = arr[t0:t1]
            nxt = arr[t0 + 1:t1 + 1] if t1 < len(arr) else np.append(arr[t0 + 1:t1], arr[t1 - 1])
            sub = np.arange(k) / k
            vals = (v[:, None] * (1 - sub)[None, :] + nxt[:, None] * sub[None, :]).ravel()
            secs = ((np.arange(t0, t1)[:, None] + sub[None, :]) * dt).ravel()
            parts.append(pl.DataFrame({"_i": np.full(vals.size, i), "_sec": secs, "price_type": kind, "price": vals}))
        df = pl.concat(parts) if parts else None
        # the on-chain USDe/USDT pool, one price per ~12 s block
        pool_t = self._snap_times(t0, t1, 12.0)
        pool_steps = np.minimum((pool_t / dt).astype(np.int64), rec.T - 1)
        pool = pl.DataFrame({"_sec": pool_t, "price_type": "pool", "price": rec.pool[pool_steps],
                             "venue": "uniswap", "market": "pool", "symbol": "USDE/USDT", "native_symbol": "USDe-USDT"})
        # staking conversion rates (WBETH = ETH x rate, BNSOL = SOL x rate), once a minute
        conv = [(a, u, r) for a, (u, r) in sorted(self._conv().items())]
        rate_t = self._snap_times(t0, t1, 60.0)
        rates = pl.DataFrame({
            "_sec": np.repeat(rate_t, len(conv)), "price_type": "conversion_rate",
            "price": np.tile([r for _, _, r in conv], rate_t.size), "venue": "binance", "market": "index",
            "symbol": np.tile([f"{a}/{u}" for a, u, _ in conv], rate_t.size),
            "native_symbol": np.tile([f"{a}{u}" for a, u, _ in conv], rate_t.size),
        }) if conv and rate_t.size else None
        out = []
        if df is not None and df.height:
            out.append(self._with_meta(df))
        out.append(pool)
        if rates is not None:
            out.append(rates)
        full = pl.concat([o.select("_sec", "venue", "market", "symbol", "native_symbol", "price_type", "price")
                          for o in out]).sort(["_sec", "venue", "native_symbol", "price_type"])
        full = full.with_columns(ts=_ts(self.start_us, full["_sec"].to_numpy()),
                                 _unit=pl.int_range(pl.len(), dtype=pl.Int64)).drop("_sec")
        return full.with_columns(pl.lit(SOURCE).alias("source")), full.height

    def _conv(self) -> dict[str, tuple[str, float]]:
        return {a: (u, float(r)) for a, (u, r) in self.sc.raw.get("fair", {}).items() if u != "pool"}

    def _liquidations(self, rng, t0, t1):
        rec, sc, dt = self.rec, self.sc, self.dt
        rows = [x for x in rec.liquidations if t0 <= x[0] < t1]
        if not rows:
            return None, 0
        st = np.array([r[0] for r in rows])
        ii = np.array([r[1] for r in rows])
        qty = np.array([r[3] for r in rows])
        px = np.array([r[4] for r in rows])
        acct = [r[5] for r in rows]
        secs = (st + rng.random(len(rows))) * dt
        df = pl.DataFrame({"_i": ii, "_sec": secs, "side": [r[2] for r in rows], "price": px, "amount": qty,
                           "quote_amount": px * qty, "account": acct})
        df = self._with_meta(df)
        # Binance's forceOrder stream keeps the latest liquidation per symbol per second (B2): so does this
        bin_ = df.filter(pl.col("venue") == "binance").with_columns(pl.col("_sec").floor().alias("_s1"))
        bin_ = bin_.sort("_sec").group_by(["native_symbol", "market", "_s1"], maintain_order=True).last()
        bin_ = bin_.drop("_s1").with_columns(pl.lit(None, dtype=pl.String).alias("account"))
        df = pl.concat([bin_.select(df.columns), df.filter(pl.col("venue") != "binance")])
        df = df.sort(["_sec", "venue", "native_symbol", "account"], nulls_last=True)
        secs = df["_sec"].to_numpy()
        df = df.with_columns(ts=_ts(self.start_us, secs), local_ts=_ts(self.start_us, secs + 0.01),
                             _unit=pl.int_range(pl.len(), dtype=pl.Int64)).drop("_sec")
        return df.with_columns(pl.lit(SOURCE).alias("source")), df.height

    def _oi(self, rng, t0, t1):
        rec, dt = self.rec, self.dt
        times = self._snap_times(t0, t1, 60.0)
        if times.size == 0 or not self.oi:
            return None, 0
        steps = np.minimum((times / dt).astype(np.int64), rec.T - 1)
        parts = []
        for i, arr in sorted(self.oi.items()):
            mark = rec.mid[steps, i]
            parts.append(pl.DataFrame({"_i": np.full(times.size, i), "_sec": times,
                                       "open_interest": arr[steps] / mark, "open_interest_value": arr[steps]}))
        df = self._with_meta(pl.concat(parts)).sort(["_sec", "native_symbol", "venue"])
        df = df.with_columns(ts=_ts(self.start_us, df["_sec"].to_numpy()),
                             _unit=pl.int_range(pl.len(), dtype=pl.Int64)).drop("_sec")
        return df.with_columns(pl.lit(SOURCE).alias("source")), df.height


def chunk_bounds(T: int, dt: float, scale: float) -> list[tuple[int, int]]:
    """Time chunks small enough to keep memory bounded at large scale (~15 min at scale 1)."""
    span = max(1, int(round(900.0 / dt / max(1.0, scale))))
    return [(a, min(T, a + span)) for a in range(0, T, span)]


def write_lake(lake: Lake, sc: Scenario, rec: Records, *, seed: int, scale: float, dt: float,
               oi: dict, progress: Callable[[int, int], None] | None = None,
               wait: Callable[[int], None] | None = None) -> list[FileReport]:
    """Write every chunk as one source. A chunk's identity (and so its file names) is the hash of
    what determines its content, so re-running the same simulation is "already ingested".

    `wait(k)` blocks until the model has finished steps [0, k): the writer can then run while the
    model is still stepping (a chunk [t0, t1) reads records up to step t1 inclusive)."""
    if wait:
        wait(max(1, int(600 / dt)) + 1)  # ChunkWriter's calm activity level: the first 10 minutes
    w = ChunkWriter(sc, rec, seed, scale, dt, oi)
    bounds = chunk_bounds(rec.T, dt, scale)
    reports = []
    with lake.lock():
        lake.recover()
        for k, (t0, t1) in enumerate(bounds):
            ident = json.dumps({"format": FORMAT, "scenario": sc.sha256, "seed": seed, "scale": scale,
                                "chunk": k, "t0": t0, "t1": t1}, sort_keys=True)
            sha = hashlib.sha256(ident.encode()).hexdigest()
            path = f"simulated://{sc.path.stem}/seed={seed}/scale={scale:g}/chunk={k:04d}"
            if wait:
                wait(t1 + 1)
            if lake.is_ingested(sha[:16]):
                reports.append(FileReport(path=path, status="already ingested", format=FORMAT, source_id=sha[:16]))
            else:
                parsed = w.chunk(k, t0, t1)
                reports.append(ingest_parsed(lake, parsed, path=path, sha256=sha, source=SOURCE))
            if progress:
                progress(k + 1, len(bounds))
    return reports


_ = date  # (kept for type readers: Parsed.day is a date)
