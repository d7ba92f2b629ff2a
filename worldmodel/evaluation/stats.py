"""The statistics every result in this toolkit is reported with: a success rate's Wilson interval,
the exact McNemar test of two evaluations on the same tasks, the two-proportion z-test of two pooled
rates, and a percentile that tolerates an empty list.
"""
from __future__ import annotations

import math

import numpy as np


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score 95% interval of a success rate."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, centre - half), min(1.0, centre + half))


def mcnemar(a: list[bool], b: list[bool]) -> tuple[int, int, float]:
    """Exact McNemar test of two outcome lists on the same tasks: (tasks only `a` solved, tasks only
    `b` solved, two-sided p).

    Only discordant tasks carry information. Under "a and b are equally good" each discordant task
    is a fair coin, so p is twice the binomial tail of the smaller count of their sum. Pairing is
    sharper than comparing two Wilson intervals, which may touch while p is small.
    """
    if len(a) != len(b):
        raise ValueError(f"paired outcomes of different lengths ({len(a)} vs {len(b)})")
    a_only = sum(x and not y for x, y in zip(a, b))
    b_only = sum(y and not x for x, y in zip(a, b))
    n = a_only + b_only
    tail = sum(math.comb(n, i) for i in range(min(a_only, b_only) + 1)) / 2 ** n if n else 1.0
    return a_only, b_only, min(1.0, 2 * tail)


def two_proportion(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided p of the pooled two-proportion z-test (no continuity correction): are k1/n1 and
    k2/n2 one success rate? It treats every episode as an independent draw; two recipes' training
    seeds evaluated on the same tasks are better compared task by task (`mcnemar`), and their pooled
    episodes repeat tasks, so read it as optimistic there."""
    if min(n1, n2) < 1:
        raise ValueError(f"two_proportion needs episodes on both sides, got n1={n1}, n2={n2}")
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0
    z = abs(k1 / n1 - k2 / n2) / se
    return math.erfc(z / math.sqrt(2))


def percentile(xs: list[float], q: float) -> float | None:
    return float(np.percentile(xs, q)) if xs else None
