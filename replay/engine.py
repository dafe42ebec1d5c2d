"""The replay: fold the recorded window, run every scenario account through its venue rule, and
let liquidations' forced orders walk the book and feed back into every account's margin.

Flow of one `run_replay`:
1. `state.build_tape` folds the lake's window into a tape (prices, ladders; cached per process).
2. `scenario.build_accounts` expands the scenario; accounts of switched-off stages are dropped.
3. The time grid is walked in chunks. In each chunk every account's metric is computed for all
   steps at once (rules are numpy-vectorised over time) on the *margin price* = recorded ×
   exp(forced-flow impact). The first step at which any account must be liquidated (or a macro
   slice is due) ends the chunk: those liquidations run (forced orders walk the ladder, fills are
   booked, insurance fund / backstop / ADL / bad debt settle), the impact state changes, and the
   next chunk starts at the following step. Cost scales with chunks + liquidations, not steps.
   All accounts of one rule are evaluated in one numpy pass (`Rule.evaluate_packed`, rows equal to
   `Rule.evaluate` bit for bit), and a chunk is evaluated in growing look-ahead windows that stop
   once its end is known, so the many restarts (macro slices, liquidations) stay cheap.
4. Derived events, per-minute prices and per-minute account metrics are returned (and written
   as Parquet with a manifest when `out_dir` is given). Same inputs -> byte-identical tables.

Mechanisms (`MECHANISMS`) are the causal stages a run can switch off; see `run_replay`.
"""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from crashlab.ingest.lake import Lake
from crashlab.ingest.paths import DATA
from crashlab.ingest.timeutil import parse_duration, parse_ts

from .books import ladder_from_trades, GRID
from .impact import ImpactState
from .rules.base import STATUS, STATUS_NAMES, Account, ForcedOrder, Rule
from .rules.registry import RULES, make_rule
from .scenario import Scenario, build_accounts, load_scenario, macro_time
from .state import PriceResolver, Tape, build_tape, vwap

MECHANISMS = ("macro_shock", "leverage_flush", "collateral_depeg", "onchain_loops",
              "mm_unified_liquidation", "liquidity_withdrawal")

EVENT_KINDS = ("margin_call", "liquidation", "forced_order", "fill", "adl", "bad_debt")
EVENT_SCHEMA = {
    "event_id": pl.Int64, "run_id": pl.String, "ts": pl.Datetime("us", "UTC"), "kind": pl.String,
    "venue": pl.String, "market": pl.String, "symbol": pl.String, "account": pl.String, "cohort": pl.String,
    "rule": pl.String, "stage": pl.String, "cause_event_id": pl.Int64, "side": pl.String, "price": pl.Float64,
    "amount": pl.Float64, "quote_amount": pl.Float64, "weight": pl.Float64, "detail": pl.String,
}
PRICE_SCHEMA = {
    "ts": pl.Datetime("us", "UTC"), "venue": pl.String, "market": pl.String, "symbol": pl.String,
    "recorded_price": pl.Float64, "margin_price": pl.Float64, "model_price": pl.Float64, "depth_source": pl.String,
}
ACCOUNT_SCHEMA = {
    "ts": pl.Datetime("us", "UTC"), "account": pl.String, "cohort": pl.String, "rule": pl.String,
    "stage": pl.String, "metric_name": pl.String, "metric": pl.Float64, "equity": pl.Float64,
    "maintenance": pl.Float64, "status": pl.String, "weight": pl.Float64,
}
CHUNK = 300  # steps evaluated at once
LOOKAHEAD = 30  # first look-ahead window within a chunk (grown ×4 while no liquidation is found)
CODE_VERSION = "0.1.0"


@dataclass
class RunResult:
    run_id: str
    manifest: dict
    events: pl.DataFrame
    liquidations: pl.DataFrame
    price_path: pl.DataFrame
    accounts: pl.DataFrame


# ---- parameters ------------------------------------------------------------------------------------
def load_params(path: Path) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, str]]]:
    """Parameter values and their sources from a venue_params.toml ({value, source} entries)."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: venue parameter file not found") from None
    values: dict[str, dict[str, Any]] = {}
    sources: dict[str, dict[str, str]] = {}
    for rule, table in raw.items():
        for k, v in table.items():
            if not isinstance(v, dict) or "value" not in v:
                raise ValueError(f"{path}: [{rule}] {k} must be {{ value = ..., source = ... }}")
            values.setdefault(rule, {})[k] = v["value"]
            sources.setdefault(rule, {})[k] = str(v.get("source", ""))
    return values, sources


def parse_override(text: str) -> tuple[str, str, Any]:
    """`venue_rule.param=value` (value read as TOML: 1.1, "x", [..]; bare words are strings)."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ValueError(f"--rule {text!r}: use rule.param=value, e.g. binance_unified.collateral_pricing=conversion_rate")
    lhs, rhs = text.split("=", 1)
    rule, param = lhs.strip().split(".", 1)
    try:
        value = tomllib.loads(f"v = {rhs.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = rhs.strip()
    return rule, param, value


def _code_hash() -> str:
    h = hashlib.sha256()
    root = Path(__file__).parent
    for p in sorted(list(root.glob("*.py")) + list((root / "rules").glob("*.py"))):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _eid(run_id: str, n: int) -> int:
    d = hashlib.blake2b(f"{run_id}/{n}".encode(), digest_size=8).digest()
    return int.from_bytes(d, "little", signed=True)


# ---- the simulation --------------------------------------------------------------------------------
class _Sim:
    def __init__(self, tape: Tape, resolver: PriceResolver, accounts: list[Account], rules: dict[str, Rule],
                 impact: Mapping[str, Any], mech: frozenset[str], run_id: str, scenario: Scenario,
                 macro: tuple[datetime, int] | None, progress: Callable[[dict], None] | None):
        self.tape, self.res, self.rules, self.mech, self.run_id = tape, resolver, rules, mech, run_id
        self.accounts = accounts
        self.T = tape.T
        self.step_s = tape.step_us / 1e6
        self.ts_us = tape.step_ts()
        self.t_s = (np.arange(self.T) + 1) * self.step_s
        self.forced = ImpactState.from_params(impact)
        self.model = ImpactState.from_params(impact)
        self.trades_k = float(impact.get("trades_depth_k", 0.5))
        self.default_depth = float(impact.get("default_depth_1pct_usd", 2e6))
        self.rows: list[tuple] = []
        self.acc_rows: list[tuple] = []
        self.n = 0
        self.last_fill: dict[int, int] = {}
        self.status: dict[str, int] = {a.id: 0 for a in accounts}
        self.cool: dict[str, int] = {}
        self.keys = {a.id: rules[a.rule].price_keys(a) for a in accounts}
        self.insurance = {r: float(rules[r].params.get("insurance_fund_usd", 0.0)) for r in rules}
        self.touched: dict[int, str] = {}  # instruments with price path output
        for a in accounts:
            for k in self.keys[a.id]:
                r = resolver.resolve(k)
                if r.inst is not None:
                    self.touched[r.inst] = ""
        self.sample = (self.ts_us % 60_000_000 == 0)
        self.sample[-1] = True
        self.progress = progress
        self.scenario = scenario
        self.macro_steps: dict[int, list[tuple[dict, float, int]]] = {}
        if macro is not None and "macro_shock" in mech:
            self._schedule_macro(macro)
        self.ref_ladders = self._reference_ladders() if "liquidity_withdrawal" not in mech else None
        self.liq_count = 0
        self.forced_notional = 0.0

    # ---- bookkeeping ---------------------------------------------------------------------------
    def emit(self, kind: str, s: int, acct: Account | None, venue: str, market: str, symbol: str, cause: int,
             side: str = "", price: float = math.nan, amount: float = math.nan, quote: float = math.nan,
             detail: dict | None = None, stage: str | None = None, rule: str | None = None) -> int:
        eid = _eid(self.run_id, self.n)
        self.n += 1
        self.rows.append((
            eid, self.run_id, int(self.ts_us[s]), kind, venue, market, symbol,
            acct.id if acct else "", acct.cohort if acct else "", rule or (acct.rule if acct else ""),
            stage or (acct.stage if acct else ""), int(cause), side, float(price), float(amount), float(quote),
            float(acct.weight) if acct else 1.0, json.dumps(detail or {}, sort_keys=True, default=float),
        ))
        return eid

    def _schedule_macro(self, macro: tuple[datetime, int]) -> None:
        at, marker_id = macro
        start_us = int(self.tape.start.timestamp() * 1e6)
        slice_s = parse_duration(str(self.scenario.macro_shock.get("slice", "10s"))).total_seconds()
        for flow in self.scenario.macro_shock.get("flow", []):
            dur = parse_duration(str(flow.get("duration", "10m"))).total_seconds()
            n = max(1, int(round(dur / max(slice_s, self.step_s))))
            for j in range(n):
                t_us = int(at.timestamp() * 1e6) + int(j * dur / n * 1e6)
                s = int((t_us - start_us) // self.tape.step_us)
                if 0 <= s < self.T:
                    self.macro_steps.setdefault(s, []).append((flow, float(flow["notional"]) / n, marker_id))

    def _reference_ladders(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Pre-shock depth (liquidity_withdrawal off): the mean ladder over the scenario's reference
        window, or over the first tenth of the replay window."""
        liq = self.scenario.liquidity
        st = int(self.tape.start.timestamp() * 1e6)
        if "reference_start" in liq:
            a = max(0, int((int(parse_ts(liq["reference_start"]).timestamp() * 1e6) - st) // self.tape.step_us))
            b = max(a + 1, int((int(parse_ts(liq["reference_end"]).timestamp() * 1e6) - st) // self.tape.step_us))
        else:
            a, b = 0, max(1, self.T // 10)
        out = {}
        for i in self.tape.bid:
            bid, ask = self.tape.bid[i][a:b], self.tape.ask[i][a:b]
            if np.isnan(bid).all():
                bid, ask = self.tape.bid[i], self.tape.ask[i]
            out[i] = (np.nanmean(bid, axis=0), np.nanmean(ask, axis=0))
        return out

    def ladder(self, inst: int | None, s: int, side: str) -> tuple[np.ndarray, str]:
        if inst is not None and inst in self.tape.bid:
            if self.ref_ladders is not None and inst in self.ref_ladders:
                lad = self.ref_ladders[inst][0 if side == "sell" else 1]
                src = self.tape.depth_source.get(inst, "book") + " (pre-shock reference)"
            else:
                arr = (self.tape.bid if side == "sell" else self.tape.ask)[inst]
                lad = arr[s]
                src = self.tape.depth_source.get(inst, "book")
                if np.isnan(lad[0]) and s < len(arr) and not np.isnan(arr[:, 0]).all():
                    # before the first ladder of the window, the first ladder is the best guess
                    # (as prices are back-filled), not the much thinner trades estimate
                    lad = arr[int(np.argmax(~np.isnan(arr[:, 0])))]
                    src += " (back-filled)"
            if not np.isnan(lad).all():
                return np.nan_to_num(lad), src
        if inst is not None and inst in self.tape.notional:
            w = max(1, int(300 / self.step_s))
            a = self.tape.notional[inst]
            lo = max(0, s - w + 1)
            if self.ref_ladders is not None:
                lo, s = 0, max(w - 1, s)
            n5 = float(a[lo:s + 1].sum())
            if n5 > 0:
                return ladder_from_trades(n5, self.trades_k), "trades (no book: depth estimated from traded notional)"
        return self.default_depth * (GRID / 0.01), "default (no book, no trades: impact.default_depth_1pct_usd)"

    # ---- prices --------------------------------------------------------------------------------
    def margin_prices(self, acct: Account, a: int, b: int) -> dict:
        out = {}
        for k in self.keys[acct.id]:
            r = self.res.resolve(k)
            ser = r.series[a:b]
            if r.inst is not None and r.inst in self.forced.states:
                ser = ser * np.exp(self.forced.series(r.inst, self.t_s[a:b]))
            out[k] = ser
        return out

    def price_now(self, key, s: int) -> float:
        r = self.res.resolve(key)
        p = float(r.series[s])
        if r.inst is not None:
            p *= math.exp(self.forced.level(r.inst, self.t_s[s]))
        return p

    # ---- main loop -----------------------------------------------------------------------------
    def run(self) -> None:
        """Chunks of CHUNK steps; a chunk ends at the first liquidation-eligible step or macro slice.

        Within a chunk nothing changes the accounts or the forced-impact state, so each step's
        values are elementwise functions of that step's margin prices: the chunk is evaluated in
        growing look-ahead windows (LOOKAHEAD steps, then ×4) and stops evaluating as soon as its end
        is known (a restart after a liquidation rarely needs the whole chunk). All accounts of a rule
        are evaluated in one numpy pass (`Rule.evaluate_packed`), re-packed only after a liquidation
        step, since only liquidations change accounts. Chunk boundaries, and so the order of rows and
        event ids, are exactly those of a step-by-step evaluation of whole chunks."""
        active = [a for a in self.accounts]
        k = 0
        macro = sorted(self.macro_steps)
        mi = 0
        packs: list | None = None
        cool = np.zeros(0, dtype=np.int64)
        keys: list = []
        while k < self.T:
            b = min(k + CHUNK, self.T)
            while mi < len(macro) and macro[mi] < k:
                mi += 1
            stop = b
            if mi < len(macro) and macro[mi] < b:
                stop = macro[mi]
            if packs is None:
                packs, keys = self._packs(active)
                cool = np.array([self.cool.get(a.id, 0) for a in active], dtype=np.int64)
            n = b - k
            prices = self._chunk_prices(keys, k, b)
            parts = []
            lo, w = 0, LOOKAHEAD
            while True:
                hi = min(n, lo + w, stop - k + 1)
                part = self._evaluate(packs, len(active), prices, lo, hi, k, cool)
                parts.append(part)
                hit = np.flatnonzero(part[4].any(axis=0))
                if len(hit):
                    stop = min(stop, k + lo + int(hit[0]))
                if stop - k < hi or hi >= n:
                    break
                lo, w = hi, w * 4
            eq, mm, metric, st, elig = parts[0] if len(parts) == 1 else \
                tuple(np.concatenate([p[i] for p in parts], axis=1) for i in range(5))
            last = min(stop, b - 1)
            self._observe_all(active, k, last, eq, mm, metric, st)
            self._report(k, last, st)
            if stop < b:
                s = stop
                j = s - k
                liq = np.flatnonzero(elig[:, j]).tolist()
                for i in liq:
                    acct = active[i]
                    if not acct.liquidated:
                        self._liquidate(acct, s, float(metric[i, j]), float(eq[i, j]), float(mm[i, j]), int(st[i, j]))
                if liq:
                    packs = None  # accounts (and ADL counterparties, cool-downs) changed: re-pack
                for item in self.macro_steps.get(s, []) if s in self.macro_steps else []:
                    self._macro(s, *item)
                self.macro_steps.pop(s, None)
                active = [a for a in active if not a.liquidated]
                k = s + 1
            else:
                k = b

    def _packs(self, active: list[Account]) -> tuple[list, list]:
        """Active accounts per rule: (rule, their rows in `active`, rule.pack(...), price keys)."""
        by: dict[str, list[int]] = {}
        for i, a in enumerate(active):
            by.setdefault(a.rule, []).append(i)
        packs, keys = [], {}
        for name, idx in by.items():
            rule = self.rules[name]
            accs = [active[i] for i in idx]
            rk = list(dict.fromkeys(key for a in accs for key in self.keys[a.id]))
            keys.update(dict.fromkeys(rk))
            packs.append((rule, np.asarray(idx, dtype=np.intp), rule.pack(accs), rk))
        return packs, list(keys)

    def _chunk_prices(self, keys: list, a: int, b: int) -> dict:
        """Margin price of each key over [a, b), computed once per chunk for all accounts (the same
        arithmetic as `margin_prices`)."""
        out = {}
        t = self.t_s[a:b]
        for key in keys:
            r = self.res.resolve(key)
            ser = r.series[a:b]
            if r.inst is not None and r.inst in self.forced.states:
                ser = ser * np.exp(self.forced.series(r.inst, t))
            out[key] = ser
        return out

    def _evaluate(self, packs: list, n_act: int, prices: dict, lo: int, hi: int, k: int, cool: np.ndarray):
        """(equity, maintenance, metric, status, liquidation-eligible) of every active account over
        chunk steps [lo, hi), as (accounts, hi - lo) arrays in `active` order."""
        w = hi - lo
        eq, mm, metric = (np.empty((n_act, w)) for _ in range(3))
        st = np.empty((n_act, w), dtype=np.int64)
        for rule, rows, pack, rk in packs:
            e, m, x = rule.evaluate_packed(pack, {key: prices[key][lo:hi] for key in rk}, w)
            eq[rows], mm[rows], metric[rows] = e, m, x
            st[rows] = rule.status(x, e, m)
        steps = np.arange(k + lo, k + hi)
        elig = (st >= STATUS["liquidate"]) & (steps[None, :] >= cool[:, None])
        return eq, mm, metric, st, elig

    def _observe_all(self, active: list[Account], k: int, last: int, eq, mm, metric, st) -> None:
        """`_observe` for every active account; accounts with no margin-call state in the segment
        (nearly all) take a vectorised path with the same status update and sampled rows."""
        L = last - k + 1
        seg = st[:, :L]
        calls = ((seg >= STATUS["margin_call"]) & (seg <= STATUS["reduce_only"])).any(axis=1).tolist()
        end = seg[:, L - 1].tolist()
        samp = np.flatnonzero(self.sample[k:last + 1])
        if len(samp):
            ts = [int(x) for x in self.ts_us[k + samp]]
            met_s, eq_s, mm_s, st_s = (a[:, samp].tolist() for a in (metric, eq, mm, st))
        for i, acct in enumerate(active):
            if calls[i]:
                self._observe(acct, k, last, eq[i], mm[i], metric[i], st[i])
                continue
            c = end[i]
            if c < STATUS["liquidate"]:
                self.status[acct.id] = min(c, STATUS["reduce_only"])
            if len(samp):
                name = self.rules[acct.rule].metric_name
                for jj, t in enumerate(ts):
                    self.acc_rows.append((t, acct.id, acct.cohort, acct.rule, acct.stage, name, met_s[i][jj],
                                          eq_s[i][jj], mm_s[i][jj], STATUS_NAMES[st_s[i][jj]], acct.weight))

    def _observe(self, acct: Account, k: int, last: int, eq, mm, metric, st) -> None:
        rule = self.rules[acct.rule]
        prev = self.status[acct.id]
        seg = st[: last - k + 1]
        for j in np.flatnonzero((seg >= STATUS["margin_call"]) & (seg <= STATUS["reduce_only"])).tolist():
            code = int(seg[j])
            if code > prev:
                self.emit("margin_call", k + j, acct, rule.venue, "", "", self._cause(acct, k + j),
                          detail={"status": STATUS_NAMES[code], "metric": float(metric[j]), rule.metric_name: float(metric[j])})
            prev = code
        if len(seg):
            self.status[acct.id] = min(int(seg[-1]), STATUS["reduce_only"]) if int(seg[-1]) < STATUS["liquidate"] else prev
        for j in np.flatnonzero(self.sample[k:last + 1]).tolist():
            self.acc_rows.append((int(self.ts_us[k + j]), acct.id, acct.cohort, acct.rule, acct.stage, rule.metric_name,
                                  float(metric[j]), float(eq[j]), float(mm[j]), STATUS_NAMES[int(st[j])], acct.weight))

    def _report(self, k: int, last: int, st: np.ndarray) -> None:
        if self.progress is None:
            return
        for j in np.flatnonzero(self.sample[k:last + 1]).tolist():
            s = k + j
            at_risk = int((st[:, j] >= STATUS["margin_call"]).sum())
            prices = {}
            for inst in list(self.touched)[:4]:
                r = self._recorded(inst)
                if r is not None:
                    v, m, sym = self.tape.instruments[inst]
                    prices[f"{v}:{sym}"] = (float(r[s]), float(r[s]) * math.exp(self.forced.level(inst, self.t_s[s])))
            self.progress({"ts": datetime.fromtimestamp(self.ts_us[s] / 1e6, timezone.utc), "at_risk": at_risk,
                           "accounts": len(st), "liquidations": self.liq_count,
                           "forced_notional": self.forced_notional, "prices": prices, "step": s, "steps": self.T})

    # ---- causes --------------------------------------------------------------------------------
    def _cause(self, acct: Account, s: int) -> int:
        """The event that pushed the account: the last forced fill on its instruments if the replay's
        own flow made the difference, else the recorded price row of its most-moved price."""
        rule = self.rules[acct.rule]
        keys = self.keys[acct.id]
        rec = {k: self.res.resolve(k).series[s:s + 1] for k in keys}
        _, _, m_rec = rule.evaluate(acct, rec)
        st_rec = int(np.asarray(rule.status(m_rec, 0.0, 0.0)).ravel()[0])
        if st_rec < STATUS["liquidate"]:
            fills = [(abs(self.forced.level(self.res.resolve(k).inst, self.t_s[s])), self.last_fill[self.res.resolve(k).inst])
                     for k in keys if self.res.resolve(k).inst in self.last_fill]
            if fills:
                return max(fills)[1]
        best, cause = -1.0, 0
        for k in keys:
            r = self.res.resolve(k)
            p0, p1 = r.series[0], r.series[s]
            if not (p0 > 0 and p1 > 0):
                continue
            mv = abs(math.log(p1 / p0))
            if mv > best and r.ids[s] != 0:
                best, cause = mv, int(r.ids[s])
        return cause

    # ---- liquidation ---------------------------------------------------------------------------
    def _exec(self, acct: Account | None, rule: Rule | None, o: ForcedOrder, s: int, cause: int, stage: str,
              key=None, model_only: bool = False) -> tuple[float, int]:
        key = key or rule.exec_key(o)
        r = self.res.resolve(key)
        inst = r.inst
        t = self.t_s[s]
        p_now = self.price_now(key, s)
        notional = o.qty * p_now
        lad, src = self.ladder(inst, s, o.side)
        ikey = inst if inst is not None else -1 - (hash(key) & 0xFFFF)
        if model_only:
            factor, dlog = self.model.execute(ikey, t, o.side, notional, lad)
        else:
            factor, dlog = self.forced.execute(ikey, t, o.side, notional, lad)
            self.model.execute(ikey, t, o.side, notional, lad)
            self.forced_notional += notional
        if inst is not None:
            self.touched[inst] = src
        fill = p_now * factor
        v, m, sym = (self.tape.instruments[inst] if inst is not None else (o.venue, o.market, o.symbol))
        fo = self.emit("forced_order", s, acct, o.venue, o.market, o.symbol, cause, o.side, p_now, o.qty, notional,
                       {"reason": o.reason, "book": f"{v}:{m}:{sym}"}, stage=stage, rule=rule.name if rule else "")
        fid = self.emit("fill", s, acct, o.venue, o.market, o.symbol, fo, o.side, fill, o.qty, fill * o.qty,
                        {"reason": o.reason, "dlog_price": dlog, "depth_source": src}, stage=stage,
                        rule=rule.name if rule else "")
        if not model_only and inst is not None:
            self.last_fill[inst] = fid
        return fill, fid

    def _liquidate(self, acct: Account, s: int, metric: float, eq: float, mm: float, code: int) -> None:
        rule = self.rules[acct.rule]
        prices = {k: self.price_now(k, s) for k in self.keys[acct.id]}
        main = next(iter(sorted(acct.positions)), "")
        market = "perp" if main else ("spot" if rule.name != "aave_v3" else "pool")
        mode = "backstop" if code >= STATUS["backstop"] else "market"
        lid = self.emit("liquidation", s, acct, rule.venue, market, main, self._cause(acct, s),
                        detail={"metric_name": rule.metric_name, "metric": metric, "equity": eq, "maintenance": mm,
                                "threshold": float(rule.params["liquidation_threshold"]), "mode": mode})
        row, forced0 = len(self.rows) - 1, self.forced_notional
        pos = acct.positions.get(main) if main else None
        pos_qty = pos.qty if pos else 0.0
        pos_px = float(prices.get(("mark", rule.venue, main), math.nan)) if pos else math.nan
        pos_notional = sum(abs(p.qty) * float(prices.get(("mark", rule.venue, sym), 0.0))
                           for sym, p in acct.positions.items())
        self.liq_count += 1
        if rule.name == "hyperliquid" and mode == "backstop":
            self._backstop(acct, rule, s, lid, prices)
        else:
            for o in rule.liquidation_plan(acct, prices):
                if rule.name == "aave_v3":
                    _, bad = rule.settle_seizure(acct, o, prices)
                    self._exec(acct, rule, o, s, lid, acct.stage)
                    if bad > 0:
                        self.emit("bad_debt", s, acct, rule.venue, "pool", o.symbol, lid, quote=bad,
                                  detail={"note": "collateral exhausted; reserve deficit"})
                    continue
                fill, _ = self._exec(acct, rule, o, s, lid, acct.stage)
                fee_rate = float(rule.params.get("liquidation_fee_rate", rule.params.get("fee_rate", 0.0)))
                fee = rule.apply_fill(acct, o, fill, o.qty, fee_rate)
                if rule.name in self.insurance:
                    self.insurance[rule.name] += fee
            self._settle(acct, rule, s, lid, prices)
        # the liquidation row: the main position (price, qty) and the notional forced out of the
        # account (its orders' notional; a backstop's transfer at mark); null, never NaN, if none
        r = list(self.rows[row])
        forced = self.forced_notional - forced0
        r[12] = ("sell" if pos_qty > 0 else "buy") if pos else ""
        r[13], r[14] = (pos_px, abs(pos_qty)) if pos and pos_px == pos_px else (None, None)
        r[15] = forced if forced > 0 else (pos_notional if pos_notional > 0 else None)
        self.rows[row] = tuple(r)
        if rule.name == "hyperliquid" and acct.positions:
            self.cool[acct.id] = s + max(1, int(float(rule.params["partial_cooldown_s"]) / self.step_s))
        elif rule.name == "aave_v3":
            self.cool[acct.id] = s + 1
        acct.liquidated = self._done(acct)

    @staticmethod
    def _done(acct: Account) -> bool:
        return not acct.positions and not any(q > 1e-9 for a, q in acct.balances.items() if a not in ("USDT", "USDC", "USD")) \
            or (acct.rule == "aave_v3" and not any(q < -1e-9 for q in acct.balances.values()))

    def _settle(self, acct: Account, rule: Rule, s: int, lid: int, prices: dict) -> None:
        quote = rule.quote_asset
        bal = acct.balances.get(quote, 0.0)
        if rule.name == "binance_usdm" and bal < 0:
            fund = self.insurance[rule.name]
            paid = min(fund, -bal)
            self.insurance[rule.name] -= paid
            acct.balances[quote] = bal + paid
            rest = -(bal + paid)
            if rest > 1e-9:
                self._adl(acct, rule, s, lid, rest, prices)
                acct.balances[quote] = 0.0
        elif rule.name == "hyperliquid":
            eq, mm, _ = rule.evaluate(acct, prices)
            if acct.positions and float(eq) < float(rule.params["backstop_fraction"]) * float(mm):
                self._backstop(acct, rule, s, lid, prices)
            elif bal < 0 and not acct.positions:
                self._adl(acct, rule, s, lid, -bal, prices)
                acct.balances[quote] = 0.0
        elif rule.name == "binance_unified" and bal < 0 and not acct.positions and \
                not any(q > 1e-9 for a, q in acct.balances.items() if a != quote):
            self.emit("bad_debt", s, acct, rule.venue, "", "", lid, quote=-bal,
                      detail={"note": "uniMMR below 1.00 at liquidation: the venue bears the loss"})
            acct.balances[quote] = 0.0

    def _backstop(self, acct: Account, rule: Rule, s: int, lid: int, prices: dict) -> None:
        """Hyperliquid: the liquidator vault takes every position at mark and keeps the margin."""
        eq, _, _ = rule.evaluate(acct, prices)
        for sym in sorted(acct.positions):
            pos = acct.positions[sym]
            mark = float(prices[("mark", rule.venue, sym)])
            self.emit("fill", s, acct, rule.venue, "perp", sym, lid, "sell" if pos.qty > 0 else "buy", mark,
                      abs(pos.qty), abs(pos.qty) * mark, {"reason": "backstop", "counterparty": "liquidator_vault"})
        acct.positions.clear()
        acct.balances[rule.quote_asset] = 0.0
        if float(eq) < 0:
            self._adl(acct, rule, s, lid, -float(eq), prices)

    def _adl(self, acct: Account, rule: Rule, s: int, lid: int, deficit: float, prices: dict) -> None:
        """Close opposite positions of the scenario's accounts, best-ranked first, for the deficit."""
        sym = next(iter(sorted(acct.positions)), None) or next(
            (r[6] for r in reversed(self.rows) if r[7] == acct.id and r[6]), "")
        mark = self.price_now(("mark", rule.venue, sym), s) if sym else math.nan
        cands = []
        for other in self.accounts:
            if other is acct or other.rule != rule.name or other.liquidated or sym not in other.positions:
                continue
            eq, _, _ = self.rules[other.rule].evaluate(other, {k: self.price_now(k, s) for k in self.keys[other.id]})
            rank = rule.adl_rank(other, sym, mark, float(eq))
            if other.positions[sym].qty < 0 < sum(p.qty for p in acct.positions.values()) or rank > -math.inf:
                cands.append((-rank, other.id, other))
        left = deficit
        for _, _, other in sorted(cands, key=lambda x: (x[0], x[1])):
            if left <= 0:
                break
            pos = other.positions[sym]
            take = min(abs(pos.qty), left / max(mark, 1e-12))
            self.emit("adl", s, other, rule.venue, "perp", sym, lid, "buy" if pos.qty < 0 else "sell", mark, take,
                      take * mark, {"deficit": deficit, "against": acct.id})
            o = ForcedOrder(rule.venue, "perp", sym, "buy" if pos.qty < 0 else "sell", take, "adl")
            rule.apply_fill(other, o, mark, take)
            left -= take * mark
        if left > 1e-6:
            self.emit("adl", s, acct, rule.venue, "perp", sym, lid, "", mark, left / mark if mark > 0 else math.nan,
                      left, {"deficit": deficit, "against": "(unmodelled counterparties)"})

    def _macro(self, s: int, flow: dict, notional: float, marker_id: int) -> None:
        venue, market, sym = flow["venue"], flow.get("market", "perp"), flow["symbol"]
        key = ("mark", venue, sym) if market != "spot" else ("spot", venue, sym.split("/")[0])
        p = self.price_now(key, s)
        o = ForcedOrder(venue, market, sym, flow.get("side", "sell"), notional / p, "macro_shock")
        self._exec(None, None, o, s, marker_id, "macro_shock", key=key, model_only=True)

    # ---- outputs -------------------------------------------------------------------------------
    def _recorded(self, inst: int) -> np.ndarray | None:
        for kind in (0, 8, 1, 2, 3):
            a = self.tape.prices.get((inst, kind))
            if a is not None and not np.isnan(a).all():
                return a
        return None

    def price_path(self) -> pl.DataFrame:
        idx = np.flatnonzero(self.sample)
        rows = []
        for inst in sorted(self.touched, key=lambda i: self.tape.instruments[i]):
            rec = self._recorded(inst)
            if rec is None:
                continue
            v, m, sym = self.tape.instruments[inst]
            t = self.t_s[idx]
            lf = self.forced.replay_series(inst, t)
            lm = self.model.replay_series(inst, t)
            first = rec[~np.isnan(rec)][0]
            src = self.tape.depth_source.get(inst) or (self.touched.get(inst) or "trades")
            for j, s in enumerate(idx.tolist()):
                rows.append((int(self.ts_us[s]), v, m, sym, float(rec[s]), float(rec[s] * math.exp(lf[j])),
                             float(first * math.exp(lm[j])), src))
        return _frame(rows, PRICE_SCHEMA)


def _frame(rows: list[tuple], schema: dict) -> pl.DataFrame:
    if not rows:
        return pl.DataFrame(schema=schema)
    cols = list(schema)
    data = {c: [r[i] for r in rows] for i, c in enumerate(cols)}
    df = pl.DataFrame({c: data[c] for c in cols}, schema={c: (pl.Int64 if isinstance(t, pl.Datetime) else t)
                                                          for c, t in schema.items()}, strict=False)
    # NaN means "not applicable" here (a margin call has no price): stored as null, never NaN
    return df.with_columns([pl.col(c).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
                            for c, t in schema.items() if isinstance(t, pl.Datetime)]
                           + [pl.col(c).fill_nan(None) for c, t in schema.items() if t == pl.Float64])


def _markers(lake: Lake, start: datetime, end: datetime) -> list[tuple[datetime, str, int]]:
    files = lake.files("markers")
    if not files:
        return []
    df = pl.concat([pl.read_parquet(f) for f in files], how="vertical_relaxed")
    df = df.filter((pl.col("ts") >= start - timedelta(hours=6)) & (pl.col("ts") < end)).sort("ts", "event_id")
    return [(r["ts"], r["kind"], int(r["event_id"])) for r in df.iter_rows(named=True)]


def _lake_inputs(lake: Lake) -> list[dict]:
    m = lake.manifest()
    if m.height == 0:
        return []
    return [{"source_id": r["source_id"], "sha256": r["sha256"], "path": r["path"], "format": r["format"]}
            for r in m.sort("source_id").iter_rows(named=True)]


_VWAP_CACHE: dict[tuple, float | None] = {}


def _vwap_cached(lake: Lake, inst: tuple[str, str, str], a: datetime, b: datetime) -> float | None:
    """`state.vwap` memoised per process (an attribution replays one window 64 times; each query
    scans every trades file), keyed by the lake's committed sources."""
    key = (str(lake.root), lake.fingerprint(), inst, a, b)
    if key not in _VWAP_CACHE:
        if len(_VWAP_CACHE) > 256:
            _VWAP_CACHE.clear()
        _VWAP_CACHE[key] = vwap(lake, inst, a, b)
    return _VWAP_CACHE[key]


def _as_dt(t: datetime | str) -> datetime:
    return parse_ts(t) if isinstance(t, str) else (t if t.tzinfo else t.replace(tzinfo=timezone.utc))


def run_replay(
    lake: Lake | str | Path | None,
    scenario: Scenario | str | Path,
    start: datetime | str,
    end: datetime | str,
    *,
    rules: Mapping[str, Any] | None = None,
    mechanisms: frozenset[str] | None = None,
    out_dir: Path | None = None,
    progress: Callable[[dict], None] | None = None,
    run_id: str | None = None,
) -> RunResult:
    """Replay a window of the lake under a scenario; see the module docstring.

    `rules` maps "rule.param" to a value (strings are read as TOML literals, as `--rule` is).
    `mechanisms` (None = all) switches the causal stages: macro_shock (the scenario's exogenous
    flow), leverage_flush (usdm/hyperliquid cohorts exist), collateral_depeg (off = conversion_rate
    collateral pricing), onchain_loops (aave cohorts exist), mm_unified_liquidation (unified-account
    cohorts exist), liquidity_withdrawal (off = depth held at its pre-shock reference).
    """
    lake = lake if isinstance(lake, Lake) else Lake.open(lake)
    sc = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    start, end = _as_dt(start), _as_dt(end)
    if end <= start:
        raise ValueError(f"--end {end} is not after --start {start}")
    mech = frozenset(MECHANISMS) if mechanisms is None else frozenset(mechanisms)
    unknown = mech - set(MECHANISMS)
    if unknown:
        raise ValueError(f"unknown mechanisms {sorted(unknown)}; known: {', '.join(MECHANISMS)}")
    values, sources = load_params(sc.params_path)
    overrides: dict[str, Any] = {}
    for k, v in list(sc.rule_overrides.items()) + list((rules or {}).items()):
        if isinstance(v, str):
            _, _, v = parse_override(f"{k}={v}") if not v.startswith('"') else parse_override(f"{k}={v}")
        overrides[k] = v
    for k, v in overrides.items():
        rule, param = k.split(".", 1)
        if rule not in values and rule not in RULES:
            raise KeyError(f"--rule {k}: unknown rule {rule!r}; known: {', '.join(RULES)}, impact")
        values.setdefault(rule, {})[param] = v
    if "collateral_depeg" not in mech:
        values.setdefault("binance_unified", {})["collateral_pricing"] = "conversion_rate"
    rule_objs = {name: make_rule(name, values.get(name, {})) for name in RULES}
    tape = build_tape(lake, start, end, step=sc.step, bar_path=sc.bar_path)
    resolver = PriceResolver(tape, sc.initial_prices)

    def price_at(key) -> float:
        ser = resolver.resolve(key).series
        ok = ser[~np.isnan(ser)]
        if not len(ok):
            raise LookupError(f"no price for {key} in the window")
        return float(ok[0])

    entry_notes: dict[str, str] = {}
    entry_win = parse_duration(str(sc.raw.get("scenario", {}).get("entry_window", "15m")))

    def vwap24(key) -> float | None:
        """Entry price: prior-24h VWAP if the lake has it, else the VWAP of the window's first
        `entry_window` (a lake that starts at the window has no history); noted in the manifest."""
        r = resolver.resolve(key)
        if r.inst is None:
            return None
        inst = tape.instruments[r.inst]
        v = _vwap_cached(lake, inst, start - timedelta(hours=24), start)
        if v:
            entry_notes[":".join(key)] = f"prior-24h VWAP of {':'.join(inst)} = {v:.8g}"
            return v
        v = _vwap_cached(lake, inst, start, min(end, start + entry_win))
        if v:
            entry_notes[":".join(key)] = (f"no trades in the prior 24 h: VWAP of {':'.join(inst)} over the "
                                          f"first {entry_win} of the window = {v:.8g}")
        return v

    accounts = [a for a in build_accounts(sc, price_at, vwap24) if a.stage in mech or a.stage not in MECHANISMS]
    # A cohort account that is already liquidatable at the window start (its modelled entry, e.g. a
    # prior-24h VWAP far above the price at the start, implies it was liquidated before the window)
    # did not exist at the start: dropped and named in the manifest. Explicit accounts are kept.
    explicit = {str(a["id"]) for a in sc.accounts}
    dead_at_start: list[str] = []
    for a in accounts:
        if a.id in explicit:
            continue
        rl = rule_objs[a.rule]
        eq0, mm0, m0 = rl.evaluate(a, {k: float(resolver.resolve(k).series[0]) for k in rl.price_keys(a)})
        if int(np.asarray(rl.status(m0, eq0, mm0)).ravel()[0]) >= STATUS["liquidate"]:
            dead_at_start.append(a.id)
    accounts = [a for a in accounts if a.id not in set(dead_at_start)]
    macro = macro_time(sc, _markers(lake, start, end)) if sc.macro_shock else None
    lake_in = _lake_inputs(lake)
    code = _code_hash()
    inputs = {
        "scenario": {"name": sc.name, "path": str(sc.path) if sc.path else None, "sha256": sc.sha256},
        "window": {"start": start.isoformat(), "end": end.isoformat(), "step_s": tape.step_us / 1e6,
                   "bar_path": sc.bar_path},
        "mechanisms": sorted(mech),
        "params": {r: rule_objs[r].params for r in sorted(rule_objs)} | {"impact": values.get("impact", {})},
        "lake": [x["source_id"] + ":" + x["sha256"] for x in lake_in],
        "code": code,
    }
    rid = run_id or "r" + hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:12]
    sim = _Sim(tape, resolver, accounts, rule_objs, values.get("impact", {}), mech, rid, sc, macro, progress)
    sim.run()
    events = _frame(sim.rows, EVENT_SCHEMA)
    liqs = events.filter(pl.col("kind") == "liquidation")
    price_path = sim.price_path()
    accts = _frame(sim.acc_rows, ACCOUNT_SCHEMA)
    manifest = {
        "run_id": rid,
        "inputs": inputs,
        "lake_sources": lake_in,
        "param_sources": sources,
        "code_version": CODE_VERSION,
        "code_hash": code,
        "tape": {"events": tape.events, "rows_read": tape.rows_read, "steps": tape.T,
                 "instruments": len(tape.instruments),
                 "depth_sources": {":".join(tape.instruments[i]): s for i, s in sorted(sim.touched.items()) if s}},
        "price_notes": sorted(set(resolver.notes)),
        "entry_notes": dict(sorted(entry_notes.items())),
        "dropped_at_start": dead_at_start,
        "accounts": [{"id": a.id, "rule": a.rule, "cohort": a.cohort, "stage": a.stage, "weight": a.weight}
                     for a in accounts],
        "summary": summarize(events, price_path),
    }
    if out_dir is not None:
        write_run(Path(out_dir), manifest, events, liqs, price_path, accts)
    return RunResult(rid, manifest, events, liqs, price_path, accts)


def summarize(events: pl.DataFrame, price_path: pl.DataFrame) -> dict:
    liq = events.filter(pl.col("kind") == "liquidation")
    fills = events.filter(pl.col("kind") == "fill")
    out = {
        "liquidations": liq.height,
        "accounts_liquidated": float(liq.unique("account", keep="first", maintain_order=True)["weight"].sum()) if liq.height else 0.0,
        "forced_notional": float(events.filter(pl.col("kind") == "forced_order")
                                 .filter(pl.col("stage") != "macro_shock")["quote_amount"].sum() or 0.0),
        "fills": fills.height,
        "adl": events.filter(pl.col("kind") == "adl").height,
        "bad_debt": float(events.filter(pl.col("kind") == "bad_debt")["quote_amount"].sum() or 0.0),
        "first_liquidation": liq["ts"].min().isoformat() if liq.height else None,
        "by_cohort": {r["cohort"]: r["len"] for r in liq.group_by("cohort").len().sort("cohort").iter_rows(named=True)},
    }
    if price_path.height:
        worst = price_path.with_columns(
            (pl.col("margin_price") / pl.col("recorded_price") - 1).alias("d")
        ).group_by("venue", "market", "symbol").agg(pl.col("d").min()).sort("venue", "market", "symbol")
        out["max_impact_pct"] = {f"{r['venue']}:{r['symbol']}": round(100 * r["d"], 4) for r in worst.iter_rows(named=True)}
    return out


def write_run(out: Path, manifest: dict, events: pl.DataFrame, liqs: pl.DataFrame, price_path: pl.DataFrame,
              accounts: pl.DataFrame) -> None:
    """Parquet tables without wall-clock metadata (byte-identical reruns) + manifest.json with hashes."""
    out.mkdir(parents=True, exist_ok=True)
    hashes = {}
    for name, df in (("events", events), ("liquidations", liqs), ("price_path", price_path), ("accounts", accounts)):
        p = out / f"{name}.parquet"
        tmp = out / f".{name}.parquet.tmp"
        pq.write_table(df.to_arrow(), tmp, compression="zstd", write_statistics=True, store_schema=True)
        tmp.replace(p)
        hashes[f"{name}.parquet"] = hashlib.sha256(p.read_bytes()).hexdigest()
    m = dict(manifest)
    m["outputs"] = hashes
    (out / "manifest.json").write_text(json.dumps(m, indent=2, sort_keys=True, default=str) + "\n")
