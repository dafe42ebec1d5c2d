"""Scenario files (TOML): who holds what, on which venue rule, when the replay starts.

A scenario is data, not code, so a user can argue with it. Layout (see data/scenarios/*.toml):

    [scenario]
    name = "usde_collateral"
    description = "..."
    step = "1s"                 # fold / margin-check grid
    bar_path = "ohlc"           # ohlc | close (how 1m bars become ticks; stream.py)
    params = "../venue_params.toml"   # optional, relative to this file (default data/venue_params.toml)

    [rules]                     # parameter overrides, "rule.param" = value (the CLI's --rule wins)
    "binance_unified.collateral_pricing" = "internal_book"

    [initial_prices]            # used only where the lake has no price for a key
    "spot:binance:WBETH" = 4700.0

    [[account]]                 # an explicit account
    id = "usde-holder"; rule = "binance_unified"; cohort = "usde_holder"
    balances = { USDE = 10_000_000, USDT = -2_000_000 }
    [[account.position]]
    symbol = "BTC/USDT:USDT"; notional = 1_000_000   # or qty = ...; side = "long" | "short"
    entry = "start"             # start | vwap24h | a number ; margin = ... for isolated

    [[cohort]]                  # a calibrated group, expanded into representative accounts
    kind = "unified_mm" | "perp_longs" | "aave_loop"

    [macro_shock]               # the exogenous flow the `macro_shock` mechanism switches
    at = "marker:news"          # or an ISO time
    [[macro_shock.flow]]
    venue = "binance"; market = "perp"; symbol = "BTC/USDT:USDT"; notional = 5e8; duration = "10m"

    [liquidity]                 # `liquidity_withdrawal` off -> depth held at this window's average
    reference_start = "2025-10-10T20:00"; reference_end = "2025-10-10T20:40"

Cohort kinds (each representative account stands for `accounts / representatives` real ones):
- unified_mm: market makers on binance_unified. `collateral_usd` split by `collateral` shares
  (USDE/BNSOL/WBETH...), `inventory_usd` split by `inventory` shares (their altcoins), `leverage`
  (assets / equity: a 2x book borrows half its assets in USDT), optional `hedge_ratio` (short perps
  on the inventory, delta-neutral market making).
- perp_longs: retail longs on binance_usdm or hyperliquid. `symbol`, `notional_by_leverage`
  {"10" = usd, ...}, `entry` (vwap24h | start | number), `entry_spread_pct`, `slices` per bucket,
  `margin_mode` isolated | cross.
- aave_loop: on-chain loops. `collateral` asset, `collateral_usd`, `leverage` (debt = collateral·(1 − 1/L)),
  `debt` asset.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable

from crashlab.ingest.paths import DATA
from crashlab.ingest.timeutil import parse_duration, parse_ts

from .rules.base import Account, Position
from .rules.registry import RULES

DEFAULT_STAGE = {
    "binance_unified": "mm_unified_liquidation",
    "binance_usdm": "leverage_flush",
    "hyperliquid": "leverage_flush",
    "aave_v3": "onchain_loops",
}


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message names the file and the entry."""


@dataclass
class Scenario:
    path: Path | None
    name: str
    description: str
    step: timedelta
    bar_path: str
    params_path: Path
    rule_overrides: dict[str, Any]
    initial_prices: dict[tuple[str, str, str], float]
    accounts: list[dict]
    cohorts: list[dict]
    macro_shock: dict | None
    liquidity: dict
    sha256: str
    raw: dict = field(default_factory=dict)


def load_scenario(path: str | Path) -> Scenario:
    p = Path(path)
    try:
        data = p.read_bytes()
        raw = tomllib.loads(data.decode())
    except FileNotFoundError:
        raise ScenarioError(f"{p}: scenario file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{p}: not valid TOML: {e}") from None
    return parse_scenario(raw, path=p, sha256=hashlib.sha256(data).hexdigest())


def parse_scenario(raw: dict, *, path: Path | None = None, sha256: str = "") -> Scenario:
    where = str(path) if path else "<scenario>"
    head = raw.get("scenario", {})
    base = path.parent if path else DATA / "scenarios"
    params = Path(head["params"]) if "params" in head else DATA / "venue_params.toml"
    if not params.is_absolute() and "params" in head:
        params = (base / params).resolve()
    init = {}
    for k, v in raw.get("initial_prices", {}).items():
        parts = tuple(k.split(":", 2))
        if len(parts) != 3:
            raise ScenarioError(f"{where}: [initial_prices] key {k!r} must be kind:venue:name")
        init[parts] = float(v)
    accounts = raw.get("account", [])
    for i, a in enumerate(accounts):
        for req in ("id", "rule"):
            if req not in a:
                raise ScenarioError(f"{where}: [[account]] #{i + 1} has no {req!r}")
        if a["rule"] not in RULES:
            raise ScenarioError(f"{where}: [[account]] {a['id']!r}: unknown rule {a['rule']!r} ({', '.join(RULES)})")
    cohorts = raw.get("cohort", [])
    for i, c in enumerate(cohorts):
        if c.get("kind") not in ("unified_mm", "perp_longs", "aave_loop"):
            raise ScenarioError(f"{where}: [[cohort]] #{i + 1} ({c.get('name', '?')}): kind must be "
                                f"unified_mm, perp_longs or aave_loop, not {c.get('kind')!r}")
    ids = [a["id"] for a in accounts]
    if len(ids) != len(set(ids)):
        raise ScenarioError(f"{where}: duplicate account ids")
    try:
        step = parse_duration(str(head.get("step", "1s")))
    except ValueError as e:
        raise ScenarioError(f"{where}: [scenario] step: {e}") from None
    return Scenario(
        path=path, name=str(head.get("name", path.stem if path else "scenario")),
        description=str(head.get("description", "")), step=step,
        bar_path=str(head.get("bar_path", "ohlc")), params_path=params,
        rule_overrides=dict(raw.get("rules", {})), initial_prices=init, accounts=accounts, cohorts=cohorts,
        macro_shock=raw.get("macro_shock"), liquidity=dict(raw.get("liquidity", {})), sha256=sha256, raw=raw,
    )


# ---- expansion into accounts ---------------------------------------------------------------------
PriceAt = Callable[[tuple[str, str, str]], float]  # recorded price of a key at the window start
Vwap = Callable[[tuple[str, str, str]], float | None]  # prior-24h VWAP of a key's instrument


def _entry(spec: Any, key: tuple[str, str, str], price_at: PriceAt, vwap24: Vwap) -> float:
    if spec is None or spec == "start":
        return price_at(key)
    if spec == "vwap24h":
        v = vwap24(key)
        return v if v else price_at(key)
    return float(spec)


def _position(d: dict, venue: str, price_at: PriceAt, vwap24: Vwap) -> Position:
    sym = d["symbol"]
    key = ("mark", venue, sym)
    entry = _entry(d.get("entry", "start"), key, price_at, vwap24)
    if "qty" in d:
        qty = float(d["qty"])
    elif "notional" in d:
        qty = float(d["notional"]) / entry
    else:
        raise ScenarioError(f"position {sym}: give qty or notional")
    if d.get("side", "long") == "short":
        qty = -abs(qty)
    margin = float(d["margin"]) if "margin" in d else None
    return Position(sym, qty, entry, margin, d.get("max_leverage"))


def build_accounts(sc: Scenario, price_at: PriceAt, vwap24: Vwap) -> list[Account]:
    """Explicit accounts and expanded cohorts, in file order (deterministic)."""
    out: list[Account] = []
    for a in sc.accounts:
        venue = RULES[a["rule"]].venue
        acct = Account(
            id=str(a["id"]), rule=a["rule"], cohort=str(a.get("cohort", a["id"])),
            stage=str(a.get("stage", DEFAULT_STAGE[a["rule"]])),
            balances={k.upper(): float(v) for k, v in a.get("balances", {}).items()},
            weight=float(a.get("weight", 1.0)),
        )
        for pd in a.get("position", []):
            pos = _position(pd, venue, price_at, vwap24)
            acct.positions[pos.symbol] = pos
        out.append(acct)
    for c in sc.cohorts:
        out.extend(_expand(c, price_at, vwap24))
    return out


def _expand(c: dict, price_at: PriceAt, vwap24: Vwap) -> list[Account]:
    kind = c["kind"]
    name = str(c.get("name", kind))
    n_real = float(c.get("accounts", 1))
    reps = int(c.get("representatives", c.get("slices", 1)))
    out: list[Account] = []
    if kind == "unified_mm":
        rule = c.get("rule", "binance_unified")
        venue = RULES[rule].venue
        lev = float(c.get("leverage", 2.0))
        coll_usd = float(c.get("collateral_usd", 0.0)) / reps
        inv_usd = float(c.get("inventory_usd", 0.0)) / reps
        hedge = float(c.get("hedge_ratio", 0.0))
        for r in range(reps):
            bal: dict[str, float] = {}
            for asset, share in sorted(c.get("collateral", {}).items()):
                a = asset.upper()
                bal[a] = bal.get(a, 0.0) + coll_usd * float(share) / price_at(("spot", venue, a))
            for asset, share in sorted(c.get("inventory", {}).items()):
                a = asset.upper()
                bal[a] = bal.get(a, 0.0) + inv_usd * float(share) / price_at(("spot", venue, a))
            assets = coll_usd + inv_usd
            bal["USDT"] = bal.get("USDT", 0.0) - assets * (1.0 - 1.0 / lev)
            acct = Account(f"{name}-{r + 1}", rule, name, str(c.get("stage", DEFAULT_STAGE[rule])), bal,
                           weight=n_real / reps)
            if hedge > 0:
                for asset, share in sorted(c.get("inventory", {}).items()):
                    sym = f"{asset.upper()}/USDT:USDT"
                    px = price_at(("mark", venue, sym))
                    acct.positions[sym] = Position(sym, -inv_usd * float(share) * hedge / px, px)
            out.append(acct)
    elif kind == "perp_longs":
        rule = c.get("rule", "binance_usdm")
        venue = RULES[rule].venue
        sym = c["symbol"]
        quote = RULES[rule].DEFAULTS.get("quote_asset", "USDT")
        key = ("mark", venue, sym)
        base_entry = _entry(c.get("entry", "vwap24h"), key, price_at, vwap24)
        spread = float(c.get("entry_spread_pct", 0.0)) / 100.0
        slices = int(c.get("slices", 3))
        buckets = sorted(c.get("notional_by_leverage", {}).items(), key=lambda kv: float(kv[0]))
        total = sum(float(v) for _, v in buckets) or 1.0
        isolated = c.get("margin_mode", "isolated") == "isolated"
        side = -1.0 if c.get("side", "long") == "short" else 1.0
        for lev_s, notional in buckets:
            lev = float(lev_s)
            for s in range(slices):
                off = (s - (slices - 1) / 2) / max(slices - 1, 1) * 2 * spread if slices > 1 else 0.0
                entry = base_entry * (1 + off)
                n = float(notional) / slices
                margin = n / lev
                pos = Position(sym, side * n / entry, entry, margin if isolated else None)
                bal = {} if isolated else {quote: margin}
                w = n_real * float(notional) / total / slices
                out.append(Account(f"{name}-{lev_s}x-{s + 1}", rule, name,
                                   str(c.get("stage", DEFAULT_STAGE[rule])), bal, {sym: pos}, weight=w))
    elif kind == "aave_loop":
        rule = c.get("rule", "aave_v3")
        coll = str(c.get("collateral", "USDE")).upper()
        debt = str(c.get("debt", "USDT")).upper()
        lev = float(c.get("leverage", 3.0))
        usd = float(c.get("collateral_usd", 0.0)) / reps
        spread = float(c.get("leverage_spread", 0.0))
        for r in range(reps):
            lv = lev * (1 + (r - (reps - 1) / 2) / max(reps - 1, 1) * spread) if reps > 1 else lev
            cp = 1.0 if coll in ("USDE", "USDT", "USDC") else price_at(("spot", c.get("price_venue", "binance"), coll))
            if coll == "SUSDE":
                cp = 1.19
            bal = {coll: usd / cp, debt: -usd * (1 - 1 / lv)}
            out.append(Account(f"{name}-{r + 1}", rule, name, str(c.get("stage", DEFAULT_STAGE[rule])), bal,
                               weight=n_real / reps))
    return out


def macro_time(sc: Scenario, markers: list[tuple[datetime, str, int]]) -> tuple[datetime, int] | None:
    """When the macro shock flow starts, and the marker event_id that causes it (0 if explicit)."""
    if not sc.macro_shock:
        return None
    at = str(sc.macro_shock.get("at", "marker:news"))
    if at.startswith("marker:"):
        kind = at.split(":", 1)[1]
        after = sc.macro_shock.get("after")
        lo = parse_ts(after) if after else None
        for ts, k, eid in markers:
            if k == kind and (lo is None or ts >= lo):
                return ts, eid
        return None
    return parse_ts(at), 0
