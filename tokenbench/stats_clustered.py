"""Paired statistics when samples come in clusters that are not independent.

MME asks two questions per image, MMBench rotates each question's options, POPE asks
several questions per image: the outcomes within one cluster are correlated, and a
per-question test (McNemar, a per-sample permutation) overstates significance. A task
declares its clusters (:attr:`tokenbench.task.Task.cluster_key`); here the cluster, not
the sample, is the independent unit:

* :func:`clustered_standard_error`: the clustered standard error of a mean as lmms-eval
  computes it (``lmms_eval.api.metrics.clustered_stderr``, which implements Equation 4 of
  Miller 2024, "Adding Error Bars to Evals", arXiv:2411.00640): the CLT variance plus the
  within-cluster cross products of deviations, over n squared. With every cluster a
  single sample it is the CLT standard error ``std(x, ddof=1) / sqrt(n)``.
* :func:`cluster_permutation_test`: a paired sign-flip permutation test on the per-cluster
  sums of the differences ``a - b``: under the null each cluster's sum is as likely
  negative as positive, whatever the correlation inside it. Exact for up to 16 clusters
  with a non-zero sum, Monte Carlo (seeded) above; with singleton clusters it is
  :func:`tokenbench.stats.paired_permutation_test` exactly.
* :func:`clustered_paired_difference`: the mean paired difference with a cluster-robust
  interval, ``mean(d) ± t(C - 1) × clustered SE(d)`` (Student t with C - 1 degrees of
  freedom for C clusters, the usual small-cluster-count correction of Cameron & Miller
  2015; lmms-eval reports the standard error only), and the cluster test's p. With
  singleton clusters the interval is the paired t interval.
* :func:`design_effect`: how much clustering inflates the variance of a mean (Kish's
  design effect, here the ratio of the clustered to the CLT variance), which the power
  note under a table multiplies in (:func:`tokenbench.stats.power_note`).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import stdtrit  # scipy.stats' t.ppf(q, df) is stdtrit(df, q), without its 0.45 s import

from tokenbench.stats import FloatArray, PairedDifference, _as_pair, _as_scores, _check_level, sign_flip_p_value

CLUSTER_TEST = "cluster sign-flip permutation"


def _cluster_index(clusters: Sequence[Hashable], n: int) -> tuple[np.ndarray, int]:
    """Each sample's cluster as 0..C-1, numbered in order of first appearance, and C."""
    if len(clusters) != n:
        raise ValueError(f"clusters must name one cluster per sample, got {len(clusters)} for {n} samples")
    numbers: dict[Hashable, int] = {}
    index = np.fromiter((numbers.setdefault(c, len(numbers)) for c in clusters), dtype=np.intp, count=n)
    return index, len(numbers)


def cluster_sums(values: ArrayLike, clusters: Sequence[Hashable]) -> FloatArray:
    """The sum of ``values`` within each cluster, clusters in order of first appearance.

    >>> cluster_sums([1.0, 2.0, 3.0, 4.0], ["b", "a", "b", "c"]).tolist()
    [4.0, 2.0, 4.0]
    """
    x = _as_scores(values, "values")
    index, count = _cluster_index(clusters, x.size)
    return np.bincount(index, weights=x, minlength=count).astype(np.float64)


def is_clustered(clusters: Sequence[Hashable]) -> bool:
    """True when at least one cluster holds more than one sample.

    >>> is_clustered(["a", "b", "a"]), is_clustered(["a", "b", "c"])
    (True, False)
    """
    return len(set(clusters)) < len(clusters)


def clustered_standard_error(values: ArrayLike, clusters: Sequence[Hashable]) -> float:
    """Clustered standard error of mean(values), as lmms-eval's ``clustered_stderr``.

    SE² = var(x, ddof=1) / n + (1 / n²) Σ_c Σ_{i≠j in c} (x_i - x̄)(x_j - x̄), which is
    (Σ_c S_c² + Σ_i (x_i - x̄)² / (n - 1)) / n² with S_c the cluster's sum of deviations,
    so it is never negative. NaN for fewer than two samples.

    >>> round(clustered_standard_error([1.0, 0.0, 1.0, 0.0], ["a", "b", "c", "d"]), 4)  # = std/sqrt(n)
    0.2887
    >>> round(clustered_standard_error([1.0, 1.0, 0.0, 0.0], ["a", "a", "b", "b"]), 4)  # one answer per image: wider
    0.3819
    """
    x = _as_scores(values, "values")
    n = x.size
    index, count = _cluster_index(clusters, n)
    if n < 2:
        return float("nan")
    deviation = x - x.mean()
    per_cluster = np.bincount(index, weights=deviation, minlength=count)
    return math.sqrt((float(per_cluster @ per_cluster) + float(deviation @ deviation) / (n - 1)) / (n * n))


def design_effect(values: ArrayLike, clusters: Sequence[Hashable]) -> float:
    """Clustered variance of mean(values) over its CLT variance: :func:`clustered_standard_error` squared over var(x, ddof=1) / n.

    1 for singleton clusters; above 1 when samples in a cluster agree more than samples
    across clusters. 1.0 when the values do not vary (nothing to inflate) or n < 2.

    >>> design_effect([1.0, 1.0, 0.0, 0.0], ["a", "a", "b", "b"])  # 0.3819² / (0.3333 / 4)
    1.75
    >>> design_effect([1.0, 0.0, 1.0, 0.0], ["a", "b", "c", "d"])
    1.0
    """
    x = _as_scores(values, "values")
    if x.size < 2 or float(np.var(x)) == 0.0:
        return 1.0
    iid = float(np.var(x, ddof=1)) / x.size
    return round(clustered_standard_error(x, clusters) ** 2 / iid, 12)


def cluster_permutation_test(a: ArrayLike, b: ArrayLike, clusters: Sequence[Hashable], n_permutations: int = 10_000, seed: int | None = 0) -> float:
    """Two-sided paired sign-flip permutation test of mean(a - b) = 0, flipping whole clusters.

    The statistic is |Σ_c S_c| with S_c the sum of a - b over cluster c; clusters whose sum
    is zero are dropped (they do not change it). See :func:`tokenbench.stats.sign_flip_p_value`.

    >>> a = [1, 1, 1, 1, 1, 0]
    >>> b = [0, 0, 0, 0, 0, 0]
    >>> cluster_permutation_test(a, b, ["x", "x", "x", "y", "y", "z"])  # sums 3, 2: 2 of 4 flips reach 5
    0.5
    """
    x, y = _as_pair(a, b)
    sums = cluster_sums(x - y, clusters)
    return sign_flip_p_value(sums[sums != 0], n_permutations, seed)


def cluster_robust_interval(values: ArrayLike, clusters: Sequence[Hashable], level: float = 0.95) -> tuple[float, float]:
    """mean(values) ± t(C - 1) × :func:`clustered_standard_error`; (-inf, inf) with fewer than two clusters.

    >>> low, high = cluster_robust_interval([1.0, 1.0, 0.0, 0.0, 1.0, 1.0], ["a", "a", "b", "b", "c", "c"])
    >>> round(low, 3), round(high, 3)
    (-0.562, 1.895)
    """
    x = _as_scores(values, "values")
    level = _check_level(level)
    count = _cluster_index(clusters, x.size)[1]
    mean = float(x.mean())
    if count < 2:
        return -math.inf, math.inf
    half = float(stdtrit(count - 1, 0.5 + level / 2)) * clustered_standard_error(x, clusters)
    return mean - half, mean + half


def clustered_paired_difference(a: ArrayLike, b: ArrayLike, clusters: Sequence[Hashable], *, level: float = 0.95, seed: int | None = 0) -> PairedDifference:
    """mean(a) - mean(b) with the cluster-robust interval and the cluster sign-flip p.

    ``clusters`` names each sample's cluster (an image, a question's rotations); binary
    and continuous scores are treated alike. ``PairedDifference.clusters`` is the number
    of clusters.

    >>> a = [1, 1, 1, 1, 1, 0, 1, 0, 1, 0]
    >>> b = [0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    >>> r = clustered_paired_difference(a, b, ["i1", "i1", "i1", "i2", "i2", "i2", "i3", "i3", "i4", "i4"])
    >>> round(r.difference, 2), round(r.low, 4), round(r.high, 4), r.p_value, r.test, r.clusters
    (0.6, 0.009, 1.191, 0.25, 'cluster sign-flip permutation', 4)
    """
    x, y = _as_pair(a, b)
    level = _check_level(level)
    d = x - y
    low, high = cluster_robust_interval(d, clusters, level)
    p_value = cluster_permutation_test(x, y, clusters, seed=seed)
    return PairedDifference(float(d.mean()), low, high, p_value, CLUSTER_TEST, _cluster_index(clusters, d.size)[1])
