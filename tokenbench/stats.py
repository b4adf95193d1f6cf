"""Significance tests and intervals for paired, per-sample benchmark scores.

Pure numpy/scipy helpers for significance-tested comparison tables: Wilson, bootstrap
and Newcombe intervals, exact McNemar and sign-flip permutation tests, Holm/BH adjustment,
non-inferiority decisions and power notes. Differences are in score units; "points" in
messages are 100 x score units (scores are assumed to lie on a 0-1 scale).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import ndtri  # scipy.stats' norm.ppf, without its 0.45 s import

_BLOCK = 1 << 21  # elements per resampling block: bounds memory at ~16 MB per block
_EXACT_MAX = 16  # enumerate all 2**k sign flips up to this many non-zero differences
FloatArray = NDArray[np.float64]


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _check_level(level: float, name: str = "level", low: float = 0.0) -> float:
    if not (_is_real(level) and math.isfinite(level) and low < level < 1):
        raise ValueError(f"{name} must be a number in ({low:g}, 1), got {level!r}")
    return float(level)


def _check_count(value: int, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_nonneg(value: float, name: str) -> float:
    if not (_is_real(value) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite non-negative number, got {value!r}")
    return float(value)


def _as_scores(x: ArrayLike, name: str) -> FloatArray:
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric per-sample scores ({exc})") from None
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of per-sample scores, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty")
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ValueError(f"{name} contains non-finite values (first at index {int(np.argmax(bad))})")
    return arr


def _as_pair(a: ArrayLike, b: ArrayLike, names: tuple[str, str] = ("a", "b"), binary: bool = False) -> tuple[FloatArray, FloatArray]:
    x, y = _as_scores(a, names[0]), _as_scores(b, names[1])
    if x.size != y.size:
        raise ValueError(f"{names[0]} and {names[1]} must have the same length (paired per-sample scores), got {x.size} and {y.size}")
    if binary:
        for arr, name in ((x, names[0]), (y, names[1])):
            if not np.isin(arr, (0.0, 1.0)).all():
                raise ValueError(f"{name} must contain only binary scores (0/1 or bool)")
    return x, y


def _as_pvalues(p_values: Sequence[float]) -> FloatArray:
    try:
        p = np.asarray(p_values, dtype=np.float64)
        valid = p.ndim == 1 and bool(np.all((p >= 0) & (p <= 1)))  # NaN fails both tests
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ValueError("p_values must be a flat sequence of numbers in [0, 1]")
    return p


def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Two-sided Wilson score interval for a binomial proportion (n=0 gives (0, 1)).

    >>> low, high = wilson_interval(8, 10)
    >>> round(low, 4), round(high, 4)
    (0.4902, 0.9433)
    >>> wilson_interval(0, 0)
    (0.0, 1.0)
    >>> wilson_interval(0, 12)[0], wilson_interval(12, 12)[1]
    (0.0, 1.0)
    """
    n = _check_count(n, "n", 0)
    successes = _check_count(successes, "successes", 0)
    if successes > n:
        raise ValueError(f"successes must be <= n, got {successes} > {n}")
    level = _check_level(level)
    if n == 0:
        return 0.0, 1.0
    z = float(ndtri(0.5 + level / 2))
    p, z2 = successes / n, z * z
    center = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # At 0 (or n) successes the bound is exactly 0 (or 1); center - half leaves a rounding
    # residue (2.8e-17 for 0/12) that would exclude the estimate from its own interval.
    low = 0.0 if successes == 0 else max(0.0, center - half)
    high = 1.0 if successes == n else min(1.0, center + half)
    return low, high


def _bootstrap_means(x: FloatArray, n_resamples: int, seed: int | None) -> FloatArray:
    """Means of `n_resamples` with-replacement resamples, drawn in vectorised blocks."""
    rng = np.random.default_rng(seed)
    rows = max(1, _BLOCK // x.size)
    means = np.empty(n_resamples)
    for start in range(0, n_resamples, rows):
        stop = min(start + rows, n_resamples)
        means[start:stop] = x[rng.integers(0, x.size, size=(stop - start, x.size))].mean(axis=1)
    return means


def bootstrap_interval(scores: ArrayLike, level: float = 0.95, n_resamples: int = 10_000, seed: int | None = 0) -> tuple[float, float]:
    """Percentile bootstrap interval for the mean of `scores`.

    >>> low, high = bootstrap_interval([0.2, 0.4, 0.6, 0.8, 1.0] * 20)
    >>> round(low, 2), round(high, 2)
    (0.55, 0.66)
    """
    x = _as_scores(scores, "scores")
    alpha = 1 - _check_level(level)
    means = _bootstrap_means(x, _check_count(n_resamples, "n_resamples", 1), seed)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def mcnemar_exact(a: ArrayLike, b: ArrayLike) -> float:
    """Two-sided exact McNemar p-value for paired binary scores.

    A binomial test with p=0.5 on the discordant pairs; 1.0 if there are none.

    >>> a = [1] * 6 + [0] * 1 + [1] * 3
    >>> b = [0] * 6 + [1] * 1 + [1] * 3
    >>> mcnemar_exact(a, b)
    0.125
    """
    x, y = _as_pair(a, b, binary=True)
    b10 = int(np.count_nonzero((x == 1) & (y == 0)))
    b01 = int(np.count_nonzero((x == 0) & (y == 1)))
    if b01 + b10 == 0:
        return 1.0
    return min(1.0, 2 * fair_binomial_cdf(min(b01, b10), b01 + b10))


def fair_binomial_cdf(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2), summed in integers and rounded once (exact to the last bit).

    scipy's ``binom.cdf`` agrees to 1e-12 relative; this needs no scipy.stats import
    (0.45 s) and gives the hand-computed value exactly.

    >>> fair_binomial_cdf(1, 7)  # (1 + 7) / 2**7
    0.0625
    >>> fair_binomial_cdf(3, 3)
    1.0
    """
    term = total = 1
    for i in range(k):
        term = term * (n - i) // (i + 1)
        total += term
    return float(Fraction(total, 1 << n))


def paired_permutation_test(a: ArrayLike, b: ArrayLike, n_permutations: int = 10_000, seed: int | None = 0) -> float:
    """Two-sided paired sign-flip permutation test of mean(a - b) = 0.

    Zero differences do not change the statistic and are dropped; with at most 16
    non-zero differences all 2**k sign flips are enumerated (exact p), otherwise
    `n_permutations` random flips give the Monte Carlo p = (count + 1) / (n + 1).

    >>> paired_permutation_test([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    0.25
    """
    x, y = _as_pair(a, b)
    return sign_flip_p_value((x - y)[x != y], n_permutations, seed)


def sign_flip_p_value(d: FloatArray, n_permutations: int = 10_000, seed: int | None = 0) -> float:
    """Two-sided sign-flip p-value of sum(d) = 0 for non-zero, exchangeable-in-sign values ``d``.

    Exact (all 2**k flips) for k <= 16 values, else Monte Carlo (count + 1) / (n + 1);
    an empty ``d`` gives 1.0. The core of :func:`paired_permutation_test` and of the
    cluster test in :mod:`tokenbench.stats_clustered`.

    >>> sign_flip_p_value(np.array([3.0, 2.0, 1.0]))
    0.25
    """
    n_permutations = _check_count(n_permutations, "n_permutations", 1)
    if d.size == 0:
        return 1.0
    observed = abs(float(d.sum()))
    threshold = observed - 1e-9 * float(np.abs(d).sum())  # float round-off tolerance
    k = d.size
    if k <= _EXACT_MAX:
        flips = (np.arange(2**k)[:, None] >> np.arange(k)) & 1
        stats = np.abs((1 - 2 * flips.astype(np.int8)) @ d)
        return float(np.mean(stats >= threshold))
    rng = np.random.default_rng(seed)
    rows, count = max(1, _BLOCK // k), 0
    for start in range(0, n_permutations, rows):
        m = min(rows, n_permutations - start)
        signs = 1 - 2 * rng.integers(0, 2, size=(m, k), dtype=np.int8)
        count += int(np.count_nonzero(np.abs(signs @ d) >= threshold))
    return (count + 1) / (n_permutations + 1)


def _newcombe_interval(x: FloatArray, y: FloatArray, level: float) -> tuple[float, float]:
    """Newcombe (1998) method 10 interval for mean(x) - mean(y), paired binary data.

    phi gets Newcombe's adjustment of ad - bc (as in Fagerland, Lydersen & Laake 2014).
    """
    n = x.size
    n11 = int(np.count_nonzero((x == 1) & (y == 1)))
    n10 = int(np.count_nonzero((x == 1) & (y == 0)))
    n01 = int(np.count_nonzero((x == 0) & (y == 1)))
    n00 = n - n11 - n10 - n01
    p1, p2 = (n11 + n10) / n, (n11 + n01) / n
    l1, u1 = wilson_interval(n11 + n10, n, level)
    l2, u2 = wilson_interval(n11 + n01, n, level)
    margins = (n11 + n10) * (n01 + n00) * (n11 + n01) * (n10 + n00)
    phi = 0.0
    if margins > 0:  # phi with Newcombe's continuity adjustment of ad - bc
        det = n11 * n00 - n10 * n01
        phi = (det - n / 2 if det > n / 2 else min(det, 0)) / math.sqrt(margins)
    diff = p1 - p2
    dl1, du1, dl2, du2 = p1 - l1, u1 - p1, p2 - l2, u2 - p2
    low = diff - math.sqrt(max(0.0, dl1**2 - 2 * phi * dl1 * du2 + du2**2))
    high = diff + math.sqrt(max(0.0, du1**2 - 2 * phi * du1 * dl2 + dl2**2))
    return max(-1.0, low), min(1.0, high)


@dataclass(frozen=True)
class PairedDifference:
    """mean(a) - mean(b) with a two-sided interval [low, high] and a paired-test p-value."""

    difference: float
    low: float
    high: float
    p_value: float
    test: str
    #: clusters the test and interval were computed over (None: samples, unclustered)
    clusters: int | None = None


def paired_difference(a: ArrayLike, b: ArrayLike, *, binary: bool, level: float = 0.95, seed: int | None = 0) -> PairedDifference:
    """Paired comparison of two systems scored on the same samples.

    binary=True: Newcombe hybrid score interval (Wilson margins + phi) and exact McNemar p.
    binary=False: bootstrap percentile interval of the mean paired difference and the
    sign-flip permutation p. Interval and p-value come from different methods, so near
    the 5% boundary the interval may exclude 0 while p > 0.05 (or vice versa).

    >>> a = [1] * 10 + [0] * 2 + [1] * 20 + [0] * 8  # 30/40 correct
    >>> b = [0] * 10 + [1] * 2 + [1] * 20 + [0] * 8  # 22/40 correct
    >>> r = paired_difference(a, b, binary=True)
    >>> round(r.difference, 2), round(r.low, 3), round(r.high, 3), round(r.p_value, 4), r.test
    (0.2, 0.031, 0.353, 0.0386, 'McNemar exact')
    """
    x, y = _as_pair(a, b, binary=binary)
    level = _check_level(level)
    diff = float(x.mean() - y.mean())
    if binary:
        low, high = _newcombe_interval(x, y, level)
        return PairedDifference(diff, low, high, mcnemar_exact(x, y), "McNemar exact")
    low, high = bootstrap_interval(x - y, level, seed=seed)
    p_value = paired_permutation_test(x, y, seed=seed)
    return PairedDifference(diff, low, high, p_value, "paired sign-flip permutation")


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values (family-wise error), in the original order.

    >>> holm([0.01, 0.04, 0.03])
    [0.03, 0.06, 0.06]
    """
    p = _as_pvalues(p_values)
    m = p.size
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return [float(v) for v in adjusted]


def benjamini_hochberg(p_values: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (false discovery rate), in the original order.

    >>> [round(v, 4) for v in benjamini_hochberg([0.01, 0.04, 0.03])]
    [0.03, 0.04, 0.04]
    """
    p = _as_pvalues(p_values)
    m = p.size
    order = np.argsort(p, kind="stable")[::-1]
    scaled = p[order] * m / (m - np.arange(m))
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(1.0, np.minimum.accumulate(scaled))
    return [float(v) for v in adjusted]


def adjust(p_values: Sequence[float], method: Literal["holm", "bh", "none"] = "holm") -> list[float]:
    """Adjust p-values for multiple comparisons with "holm", "bh" or "none".

    >>> adjust([0.01, 0.04, 0.03], "none")
    [0.01, 0.04, 0.03]
    """
    if method == "holm":
        return holm(p_values)
    if method == "bh":
        return benjamini_hochberg(p_values)
    if method == "none":
        return [float(v) for v in _as_pvalues(p_values)]
    raise ValueError(f"method must be one of 'holm', 'bh', 'none', got {method!r}")


@dataclass(frozen=True)
class NonInferiority:
    """One-sided non-inferiority decision for mean(candidate) - mean(reference)."""

    difference: float
    lower_bound: float
    margin: float
    level: float
    non_inferior: bool

    def describe(self) -> str:
        """One sentence with the verdict, margin and level (points = 100 x score units).

        >>> NonInferiority(-0.01, -0.015, 0.02, 0.95, True).describe()
        'Non-inferior at a 2.0-point margin: candidate - reference = -1.0 points, one-sided 95% lower bound -1.5 is above -2.0.'
        """
        verdict = "Non-inferior" if self.non_inferior else "Not shown non-inferior"
        relation = "is above" if self.non_inferior else "is not above"
        return (
            f"{verdict} at a {100 * self.margin:.1f}-point margin: candidate - reference = "
            f"{100 * self.difference:.1f} points, one-sided {100 * self.level:g}% lower bound "
            f"{100 * self.lower_bound:.1f} {relation} {-100 * self.margin:.1f}."
        )


def non_inferiority(candidate: ArrayLike, reference: ArrayLike, *, margin: float, binary: bool, level: float = 0.95, seed: int | None = 0) -> NonInferiority:
    """Is the candidate at most `margin` (absolute score units) worse than the reference?

    Uses the lower bound of a one-sided `level` interval on mean(candidate) -
    mean(reference): Newcombe's interval at two-sided level 2*level - 1 for binary
    scores, a one-sided percentile bootstrap otherwise; non-inferior iff bound > -margin.

    >>> r = non_inferiority([1] * 90 + [0] * 10, [1] * 92 + [0] * 8, margin=0.05, binary=True)
    >>> round(r.difference, 3), round(r.lower_bound, 3), r.non_inferior
    (-0.02, -0.058, False)
    >>> r.describe()
    'Not shown non-inferior at a 5.0-point margin: candidate - reference = -2.0 points, one-sided 95% lower bound -5.8 is not above -5.0.'
    """
    x, y = _as_pair(candidate, reference, ("candidate", "reference"), binary=binary)
    margin = _check_nonneg(margin, "margin")
    level = _check_level(level, low=0.5)
    if binary:
        lower = _newcombe_interval(x, y, 2 * level - 1)[0]
    else:
        lower = float(np.quantile(_bootstrap_means(x - y, 10_000, seed), 1 - level))
    return NonInferiority(float(x.mean() - y.mean()), lower, margin, level, lower > -margin)


def minimum_detectable_difference(n: int, discordance: float, alpha: float = 0.05, power: float = 0.8, design_effect: float = 1.0) -> float:
    """Smallest paired accuracy difference detectable with `n` samples (McNemar, normal approx).

    d = (z_{1-alpha/2} + z_power) * sqrt(max(discordance, 1/n) / n * design_effect), where
    `discordance` is the expected share of samples on which the two systems disagree and
    `design_effect` the variance inflation of clustered samples (1 when independent; see
    :func:`tokenbench.stats_clustered.design_effect`).

    >>> round(minimum_detectable_difference(50, 0.1), 4), round(minimum_detectable_difference(50, 0.1, design_effect=4.0), 4)
    (0.1253, 0.2506)
    """
    n = _check_count(n, "n", 1)
    discordance = _check_nonneg(discordance, "discordance")
    if discordance > 1:
        raise ValueError(f"discordance must be in [0, 1], got {discordance!r}")
    alpha, power = _check_level(alpha, "alpha"), _check_level(power, "power")
    design_effect = _check_nonneg(design_effect, "design_effect")
    z = float(ndtri(1 - alpha / 2) + ndtri(power))
    return z * math.sqrt(max(discordance, 1 / n) / n * design_effect)


def power_note(
    n: int, discordance: float, margin: float, alpha: float = 0.05, power: float = 0.8, *, clusters: int | None = None, design_effect: float = 1.0
) -> str | None:
    """A one-line caveat when `n` is too small to detect a difference of size `margin`.

    With `clusters` (the number of independent clusters the `n` samples form) the note
    says so and the detectable difference grows by ``sqrt(design_effect)``.

    >>> power_note(50, 0.1, margin=0.02)[:44]
    'n=50 can only detect differences ≥ 12.5 poin'
    >>> power_note(50, 0.1, margin=0.02, clusters=10, design_effect=4.0)[:75]
    'n=50 in 10 clusters (design effect 4.00) can only detect differences ≥ 25.1'
    >>> power_note(10_000, 0.1, margin=0.02) is None
    True
    """
    margin = _check_nonneg(margin, "margin")
    detectable = minimum_detectable_difference(n, discordance, alpha, power, design_effect)
    if detectable <= margin:
        return None
    grouped = "" if clusters is None else f" in {clusters} clusters (design effect {design_effect:.2f})"
    return (
        f"n={n}{grouped} can only detect differences ≥ {100 * detectable:.1f} points "
        f"(α={alpha:g}, power {power:g}); a non-significant result here is not "
        f"evidence of no difference"
    )
