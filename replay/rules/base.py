"""The venue-rule plug-in interface: what a margin/liquidation rule must answer, and nothing more.

A rule is a *pure function of (account, prices, parameters)*. It holds its parameters and no
other state; accounts and prices live in the engine. That keeps rules testable against worked
examples (tests/test_replay_rules.py), importable by the crash simulator (`replay/sim/`), and lets
the engine evaluate one formula either for one instant (floats) or for a whole chunk of time steps
at once (numpy arrays of shape (T,)): every price in `prices` may be a float or an array, and the
formulas broadcast. One implementation, two speeds.

A rule answers five questions (see `Rule`):

1. `price_keys(account)`: which reference prices does this account's margin read? Keys are
   `PriceKey` tuples (kind, venue, asset-or-symbol), resolved by the engine from the lake
   (`replay/state.py`): e.g. ("mark", "binance", "BTC/USDT:USDT"), ("collateral", "binance", "USDE").
2. `evaluate(account, prices)`: equity, maintenance requirement and the venue's risk metric
   (uniMMR, margin ratio, health factor ...), as floats or arrays.
3. `status(metric, ...)`: the venue's state machine on that metric (ok, margin_call, reduce_only,
   liquidate, backstop) as integer codes (`STATUS`), vectorised.
4. `liquidation_plan(account, prices, check)`: the forced orders, in the venue's order, when an
   account is taken over. The engine executes them against the book and calls `apply_fill`.
5. `after_liquidation(...)` hooks for what happens to a residual deficit: insurance fund,
   backstop vault, ADL ranking (`adl_rank`), bad debt. Defaults are no-ops.

To add a venue, see `replay/rules/README.md`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping, Sequence, Union

import numpy as np

Num = Union[float, np.ndarray]

#: (kind, venue, name). kinds: "mark" (perp mark price of a symbol), "spot" (asset in USD(T) on the
#: venue's own spot book), "collateral" (the venue's collateral price of an asset, whose rule the
#: venue's parameters choose), "oracle" (on-chain/venue oracle of an asset), "conversion_rate"
#: (staking/redemption rate of a wrapped asset against its underlying).
PriceKey = tuple[str, str, str]

STATUS: dict[str, int] = {"ok": 0, "margin_call": 1, "reduce_only": 2, "liquidate": 3, "backstop": 4}
STATUS_NAMES: dict[int, str] = {v: k for k, v in STATUS.items()}

#: Assets counted at exactly 1 unit of account (the quote of the venue's margin). USDe is NOT here:
#: whether it is worth 1 is precisely what the collateral pricing rule decides.
CASH_ASSETS = frozenset({"USDT", "USD", "USDC"})


@dataclass
class Position:
    """A perpetual position. `qty` is signed base amount (+ long); `margin` is the isolated margin in
    quote (None = cross margin); `max_leverage` feeds rules whose maintenance depends on it."""

    symbol: str  # ccxt symbol, e.g. "BTC/USDT:USDT"
    qty: float
    entry: float
    margin: float | None = None
    max_leverage: float | None = None


@dataclass
class Account:
    """One margin account, or the representative of `weight` similar real accounts.

    `balances` are signed asset quantities: collateral positive, loans negative (USDT -8e6 is a
    borrowed 8 M USDT). A representative holds the group's *totals* (so its forced flow needs no
    scaling); thresholds defined per real account (Hyperliquid's partial-liquidation size) divide
    by `weight`, and liquidation counts are reported in real accounts.
    """

    id: str
    rule: str  # rule name, e.g. "binance_unified"
    cohort: str = ""
    stage: str = ""  # causal stage (engine.MECHANISMS) the account belongs to
    balances: dict[str, float] = field(default_factory=dict)
    positions: dict[str, Position] = field(default_factory=dict)
    weight: float = 1.0
    status: str = "ok"
    liquidated: bool = False

    def copy(self) -> "Account":
        return Account(
            self.id, self.rule, self.cohort, self.stage, dict(self.balances),
            {k: Position(p.symbol, p.qty, p.entry, p.margin, p.max_leverage) for k, p in self.positions.items()},
            self.weight, self.status, self.liquidated,
        )


@dataclass(frozen=True)
class Check:
    """A rule's verdict on an account at one instant (floats) or over a chunk (arrays)."""

    metric_name: str
    metric: Num
    equity: Num
    maintenance: Num
    status: Any  # int code (scalar) or np.ndarray of codes


@dataclass(frozen=True)
class ForcedOrder:
    """An order the venue sends on the account's behalf. `market` is where it executes ("perp" closes
    a position, "spot" sells collateral); `qty` is base amount, always positive; `reason` says which
    step of the venue's procedure it is (e.g. "close_position", "sell_collateral", "aave_seize")."""

    venue: str
    market: str
    symbol: str
    side: str  # sell | buy
    qty: float
    reason: str
    asset: str = ""  # the balance asset a spot order draws from (spot sales of collateral)


def piecewise_cum(value: Num, bounds: list[float], rates: list[float]) -> Num:
    """∫_0^value rate(v) dv for a rate that is constant on tiers [bounds[i], bounds[i+1]).

    Both tiered collateral ratios (a haircut per USD band) and maintenance-margin brackets
    (`notional·MMR − cum`) are this function: continuous and piecewise linear in the value, so it
    vectorises with one `np.interp` over the tier knots instead of a Python loop per tier.
    """
    b = np.asarray(bounds, dtype=float)
    r = np.asarray(rates, dtype=float)
    knots_y = np.concatenate([[0.0], np.cumsum(np.diff(b) * r[:-1])])
    v = np.asarray(value, dtype=float)
    last = b[-1]
    out = np.interp(v, b, knots_y) + np.maximum(v - last, 0.0) * r[-1]
    return float(out) if np.ndim(out) == 0 else out


def as_float(x: Num) -> float:
    return float(x) if np.ndim(x) == 0 else float(np.asarray(x).ravel()[-1])


class Rule(ABC):
    """Base class of a venue rule. Subclasses set `name`, `venue`, `metric_name`, `DEFAULTS`."""

    name: ClassVar[str] = ""
    venue: ClassVar[str] = ""
    metric_name: ClassVar[str] = ""
    #: parameter -> default value. `data/venue_params.toml` overrides these; `--rule` overrides that.
    DEFAULTS: ClassVar[dict[str, Any]] = {}

    def __init__(self, params: Mapping[str, Any] | None = None):
        merged = dict(self.DEFAULTS)
        for k, v in (params or {}).items():
            if k not in merged:
                raise KeyError(f"{self.name}: unknown parameter {k!r}; known: {', '.join(sorted(merged))}")
            merged[k] = v
        self.params: dict[str, Any] = merged

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"

    # ---- required ----------------------------------------------------------------------------
    @abstractmethod
    def price_keys(self, account: Account) -> list[PriceKey]:
        """The reference prices `evaluate` reads for this account."""

    @abstractmethod
    def evaluate(self, account: Account, prices: Mapping[PriceKey, Num]) -> tuple[Num, Num, Num]:
        """(equity, maintenance, metric) in the venue's unit of account; arrays broadcast."""

    @abstractmethod
    def status(self, metric: Num, equity: Num, maintenance: Num) -> Any:
        """Integer STATUS code(s) for the metric; vectorised."""

    @abstractmethod
    def liquidation_plan(self, account: Account, prices: Mapping[PriceKey, float]) -> list[ForcedOrder]:
        """Forced orders in execution order, for an account the venue takes over now."""

    # ---- many accounts at once (the engine's fast path) ----------------------------------------
    def pack(self, accounts: Sequence[Account]) -> Any:
        """What `evaluate_packed` needs from `accounts`, extracted once: the engine re-packs only
        after a liquidation step (the only time accounts change), not every chunk."""
        return list(accounts)

    def evaluate_packed(self, pack: Any, prices: Mapping[PriceKey, np.ndarray], n: int
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(equity, maintenance, metric) as (accounts, n) arrays for a pack of accounts over n steps.

        Row i must equal `evaluate(accounts[i], prices)` bit for bit (the engine's run tables are
        byte-identical with or without it). This default loops; rules with many similar accounts
        override it with one numpy pass per group of same-shaped accounts (`group_by_signature`)."""
        rows = [tuple(np.broadcast_to(np.asarray(x, dtype=float), (n,)) for x in self.evaluate(a, prices))
                for a in pack]
        if not rows:
            return tuple(np.empty((0, n)) for _ in range(3))  # type: ignore[return-value]
        return tuple(np.stack([r[i] for r in rows]) for i in range(3))  # type: ignore[return-value]

    def evaluate_many(self, accounts: Sequence[Account], prices: Mapping[PriceKey, np.ndarray], n: int
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.evaluate_packed(self.pack(accounts), prices, n)

    # ---- provided ----------------------------------------------------------------------------
    def check(self, account: Account, prices: Mapping[PriceKey, Num]) -> Check:
        eq, mm, metric = self.evaluate(account, prices)
        return Check(self.metric_name, metric, eq, mm, self.status(metric, eq, mm))

    def exec_key(self, order: ForcedOrder) -> PriceKey:
        """The price key whose instrument a forced order trades (for impact feedback)."""
        if order.market == "spot":
            return ("spot", order.venue, order.asset or order.symbol.split("/")[0])
        return ("mark", order.venue, order.symbol)

    def apply_fill(self, account: Account, order: ForcedOrder, price: float, qty: float, fee_rate: float = 0.0) -> float:
        """Book a fill of a forced order into the account; returns the fee charged (quote).

        Equity at the fill price is conserved up to the fee: closing `qty` of a position at `price`
        moves (price − entry)·qty of PnL into the quote balance and shrinks the position; selling
        collateral turns `qty` of the asset into `qty·price` of quote.
        """
        quote = self.quote_asset
        fee = abs(qty * price) * fee_rate
        if order.market == "spot":
            asset = order.asset or order.symbol.split("/")[0]
            sign = -1.0 if order.side == "sell" else 1.0
            account.balances[asset] = account.balances.get(asset, 0.0) + sign * qty
            account.balances[quote] = account.balances.get(quote, 0.0) - sign * qty * price - fee
            return fee
        pos = account.positions.get(order.symbol)
        if pos is None:
            return 0.0
        signed = -qty if order.side == "sell" else qty  # change in position
        closing = min(abs(signed), abs(pos.qty)) * (1.0 if pos.qty > 0 else -1.0)
        realized = closing * (price - pos.entry)
        frac = abs(closing) / abs(pos.qty) if pos.qty else 1.0
        if pos.margin is not None:
            # isolated: the released margin share and the realised PnL return to the wallet
            released = pos.margin * frac
            pos.margin -= released
            account.balances[quote] = account.balances.get(quote, 0.0) + released
        account.balances[quote] = account.balances.get(quote, 0.0) + realized - fee
        pos.qty -= closing
        if abs(pos.qty) < 1e-12:
            del account.positions[order.symbol]
        return fee

    @property
    def quote_asset(self) -> str:
        return str(self.params.get("quote_asset", "USDT"))

    def adl_rank(self, account: Account, symbol: str, mark: float, equity: float) -> float:
        """Higher = deleveraged first. Default: profit × leverage, as Binance's ranking."""
        pos = account.positions.get(symbol)
        if pos is None or equity <= 0:
            return -math.inf
        pnl_ratio = (mark - pos.entry) * pos.qty / max(equity, 1e-9)
        lev = abs(pos.qty) * mark / max(equity, 1e-9)
        return pnl_ratio * lev


def position_pnl(pos: Position, mark: Num) -> Num:
    return pos.qty * (mark - pos.entry)


# ---- packing accounts for `Rule.evaluate_packed` ---------------------------------------------------
@dataclass
class Pack:
    """Accounts split into groups of the same shape (same assets, signs, symbols): each group is
    one numpy pass with the per-account numbers as (g, 1) columns that broadcast against (n,) prices."""

    n: int  # accounts in the pack
    groups: list[tuple[np.ndarray, Any, dict[str, Any]]]  # (row indices, signature, columns)


def pack_groups(accounts: Sequence[Account], signature: Callable[[Account], Any],
                extract: Callable[[Any, list[Account]], dict[str, Any]]) -> Pack:
    by: dict[Any, list[int]] = {}
    for i, a in enumerate(accounts):
        by.setdefault(signature(a), []).append(i)
    groups = []
    for sig, idx in by.items():
        groups.append((np.asarray(idx, dtype=np.intp), sig, extract(sig, [accounts[i] for i in idx])))
    return Pack(len(accounts), groups)


def column(values: Sequence[float]) -> np.ndarray:
    """Per-account numbers as a (g, 1) float column (broadcasts against an (n,) price series)."""
    return np.asarray(values, dtype=float).reshape(-1, 1)


def weight_col(accounts: Sequence[Account]) -> np.ndarray:
    """max(weight, 1e-12) per account, as the scalar formulas compute it."""
    return column([max(float(a.weight), 1e-12) for a in accounts])


def unpack(pack: Pack, n: int, fn: Callable[[Any, dict[str, Any]], tuple[Num, Num, Num]]
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run `fn(signature, columns)` per group and place its rows; values are copied, never recomputed."""
    out = tuple(np.empty((pack.n, n)) for _ in range(3))
    for rows, sig, cols in pack.groups:
        for o, v in zip(out, fn(sig, cols)):
            o[rows] = v
    return out  # type: ignore[return-value]


_KNOTS: dict[tuple, tuple[np.ndarray, np.ndarray, np.float64, np.float64]] = {}


def _knots(bounds: Sequence[float], rates: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.float64, np.float64]:
    """`piecewise_cum`'s knots, built once per tier table (the engine evaluates thousands of chunks)."""
    key = (tuple(bounds), tuple(rates))
    got = _KNOTS.get(key)
    if got is None:
        b = np.asarray(bounds, dtype=float)
        r = np.asarray(rates, dtype=float)
        got = (b, np.concatenate([[0.0], np.cumsum(np.diff(b) * r[:-1])]), b[-1], r[-1])
        _KNOTS[key] = got
    return got


def tiered(value: np.ndarray, w: np.ndarray, bounds: Sequence[float], rates: Sequence[float]) -> np.ndarray:
    """`w · piecewise_cum(value / w)` with a per-account weight column (tiers apply per real account);
    the same operations as `piecewise_cum`, with its knots cached."""
    b, knots_y, last, r_last = _knots(bounds, rates)
    v = np.asarray(value, dtype=float) / w
    return w * (np.interp(v, b, knots_y) + np.maximum(v - last, 0.0) * r_last)
