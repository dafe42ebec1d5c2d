"""Exact Shapley values over a value function on subsets of players (stage mechanisms).

Why exact and not sampled: the chain has about six mechanisms, so all 2^n subsets (64 replays) are
affordable, and exact values satisfy efficiency (the shares add up to v(all) - v(empty)) to float
precision, which is what lets the report show the residual honestly next to them.

The value function may return a float or a numpy vector (one entry per leg: one replay prices all
legs at once). Evaluations are memoised per subset, so a caller can reuse a cache across calls, and
can be spread over a process pool: the function must then be picklable (a module-level function,
a `functools.partial` of one, or an instance of a module-level class).
"""

from __future__ import annotations

import itertools
import math
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Callable, Iterable, Sequence

import numpy as np

Value = float | np.ndarray
ValueFn = Callable[[frozenset[str]], Value]


@dataclass
class ShapleyResult:
    players: tuple[str, ...]
    values: dict[str, Value]  # phi_i, same shape as v(.)
    v_empty: Value
    v_full: Value
    subset_values: dict[frozenset[str], Value] = field(repr=False, default_factory=dict)
    evaluations: int = 0  # value-function calls made by this computation (cache misses)

    def efficiency_gap(self) -> Value:
        """sum(phi) - (v(all) - v(empty)): zero up to rounding for exact Shapley values."""
        total = sum(np.asarray(v, dtype=float) for v in self.values.values())
        return total - (np.asarray(self.v_full, dtype=float) - np.asarray(self.v_empty, dtype=float))


def all_subsets(players: Sequence[str]) -> list[frozenset[str]]:
    """Every subset, smallest first, in a deterministic order."""
    out: list[frozenset[str]] = []
    for r in range(len(players) + 1):
        out.extend(frozenset(c) for c in itertools.combinations(players, r))
    return out


def _evaluate(fn: ValueFn, subset: frozenset[str]) -> tuple[frozenset[str], Value]:
    return subset, fn(subset)


def evaluate_subsets(
    value: ValueFn,
    subsets: Iterable[frozenset[str]],
    *,
    workers: int = 1,
    cache: dict[frozenset[str], Value] | None = None,
    progress: Callable[[frozenset[str]], None] | None = None,
    mp_start: str = "spawn",
) -> tuple[dict[frozenset[str], Value], int]:
    """Values of the given subsets (memoised in `cache`); returns (values, number of new calls)."""
    cache = {} if cache is None else cache
    todo = [s for s in dict.fromkeys(subsets) if s not in cache]
    if workers <= 1 or len(todo) <= 1:
        for s in todo:
            cache[s] = value(s)
            if progress:
                progress(s)
    else:
        # spawn, not fork: the value function usually runs DuckDB/Polars, whose thread pools do
        # not survive a fork safely.
        # A value function may say how to warm a worker up (e.g. with state its parent already
        # built) through `worker_initializer() -> (function, args)`.
        init = getattr(value, "worker_initializer", None)
        initializer, initargs = init() if callable(init) else (None, ())
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context(mp_start),
                                 initializer=initializer, initargs=initargs) as ex:
            futs = [ex.submit(_evaluate, value, s) for s in todo]
            for fut in as_completed(futs):
                s, v = fut.result()
                cache[s] = v
                if progress:
                    progress(s)
    return cache, len(todo)


def shapley(
    players: Sequence[str],
    value: ValueFn,
    *,
    workers: int = 1,
    cache: dict[frozenset[str], Value] | None = None,
    progress: Callable[[frozenset[str]], None] | None = None,
    mp_start: str = "spawn",
) -> ShapleyResult:
    """Exact Shapley values of `value` over `players` (2^n evaluations, memoised)."""
    players = tuple(players)
    if len(set(players)) != len(players):
        raise ValueError(f"players must be distinct: {players}")
    n = len(players)
    subsets = all_subsets(players)
    vals, calls = evaluate_subsets(value, subsets, workers=workers, cache=cache, progress=progress, mp_start=mp_start)
    weights = [math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n) for k in range(n)]
    phi: dict[str, Value] = {}
    for p in players:
        acc: Value = 0.0
        others = [q for q in players if q != p]
        for r in range(n):
            for c in itertools.combinations(others, r):
                s = frozenset(c)
                acc = acc + weights[r] * (np.asarray(vals[s | {p}], dtype=float) - np.asarray(vals[s], dtype=float))
        phi[p] = acc if isinstance(acc, np.ndarray) and acc.ndim else float(acc)
    empty, full = frozenset(), frozenset(players)
    return ShapleyResult(
        players=players,
        values=phi,
        v_empty=vals[empty],
        v_full=vals[full],
        subset_values={s: vals[s] for s in subsets},
        evaluations=calls,
    )
