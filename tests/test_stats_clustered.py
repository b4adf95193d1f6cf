"""Clustered paired statistics (tokenbench.stats_clustered) and how tasks, the harness and the report use them."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from scipy import stats as sps

from tokenbench.stats import mcnemar_exact, paired_difference, paired_permutation_test
from tokenbench.stats_clustered import (
    CLUSTER_TEST,
    cluster_permutation_test,
    cluster_robust_interval,
    cluster_sums,
    clustered_paired_difference,
    clustered_standard_error,
    is_clustered,
)

# Four images, ten questions; a = the strategy, b = the baseline (1 = right).
HAND_A = [1, 1, 1, 1, 1, 0, 1, 0, 1, 0]
HAND_B = [0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
HAND_CLUSTERS = ["i1", "i1", "i1", "i2", "i2", "i2", "i3", "i3", "i4", "i4"]


def test_hand_computed_cluster_sign_flip_test() -> None:
    # d = a - b per question: i1 (1, 1, 1), i2 (1, 1, 0), i3 (1, 0), i4 (1, -1).
    # Cluster sums S = (3, 2, 1, 0); i4 sums to 0 and is dropped. Observed |3 + 2 + 1| = 6.
    # The 2**3 flips of (3, 2, 1):
    #   +3+2+1 = 6*   +3+2-1 = 4   +3-2+1 = 2   +3-2-1 = 0
    #   -3+2+1 = 0    -3+2-1 = -2  -3-2+1 = -4  -3-2-1 = -6*
    # Two of eight reach |6|: p = 2/8 = 0.25.
    assert cluster_sums(np.subtract(HAND_A, HAND_B), HAND_CLUSTERS).tolist() == [3.0, 2.0, 1.0, 0.0]
    assert cluster_permutation_test(HAND_A, HAND_B, HAND_CLUSTERS) == 0.25
    # Per question: 7 discordant pairs one way, 1 the other; McNemar p = 2 * P(X <= 1 | 8, 1/2) = 2 * 9/256.
    assert mcnemar_exact(HAND_A, HAND_B) == pytest.approx(18 / 256)
    assert cluster_permutation_test(HAND_A, HAND_B, HAND_CLUSTERS) > mcnemar_exact(HAND_A, HAND_B)


def test_hand_computed_clustered_standard_error_and_interval() -> None:
    # d has mean 0.6 over n = 10; deviations per cluster: i1 (.4, .4, .4), i2 (.4, .4, -.6), i3 (.4, -.6), i4 (.4, -1.6).
    # Sum of squared deviations 0.48 + 0.68 + 0.52 + 2.72 = 4.4; CLT variance 4.4 / 9 / 10.
    # Cluster sums of deviations 1.2, 0.2, -0.2, -1.2; cross terms sum_c (S_c^2 - sum of squares)
    #   = (1.44 - .48) + (.04 - .68) + (.04 - .52) + (1.44 - 2.72) = -1.44, over n^2 = 100.
    # SE^2 = 4.4 / 90 - 0.0144 = 0.0344889, as (sum S_c^2 + 4.4 / 9) / 100 = (2.96 + 0.48889) / 100.
    d = np.subtract(HAND_A, HAND_B).astype(float)
    se = clustered_standard_error(d, HAND_CLUSTERS)
    assert se == pytest.approx(math.sqrt(4.4 / 90 - 0.0144), rel=1e-12)
    t3 = 3.182446305284263  # Student t, 3 degrees of freedom (4 clusters), 97.5% quantile
    low, high = cluster_robust_interval(d, HAND_CLUSTERS)
    assert (low, high) == pytest.approx((0.6 - t3 * se, 0.6 + t3 * se), rel=1e-12)
    r = clustered_paired_difference(HAND_A, HAND_B, HAND_CLUSTERS)
    assert (r.difference, r.low, r.high, r.p_value, r.test, r.clusters) == (pytest.approx(0.6), low, high, 0.25, CLUSTER_TEST, 4)


def test_clustered_standard_error_is_the_one_lmms_eval_computes() -> None:
    """lmms-eval's clustered_stderr (Miller 2024, Eq. 4) written out literally, on random clustered data."""
    rng = np.random.default_rng(3)
    x = rng.integers(0, 2, 60).astype(float)
    clusters = rng.integers(0, 17, 60).tolist()
    n, mean = x.size, x.mean()
    cross = 0.0
    for c in set(clusters):
        dev = x[np.array(clusters) == c] - mean
        cross += dev.sum() ** 2 - (dev**2).sum()
    expected = math.sqrt(x.var(ddof=1) / n + cross / n**2)
    assert clustered_standard_error(x, clusters) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("n", [9, 40])  # exact enumeration, then Monte Carlo
def test_singleton_clusters_give_the_unclustered_sign_flip_test(n: int) -> None:
    rng = np.random.default_rng(n)
    a, b = rng.random(n), rng.random(n)
    b[:2] = a[:2]  # zero differences are dropped by both
    singletons = [f"s{i}" for i in range(n)]
    assert not is_clustered(singletons)
    assert cluster_permutation_test(a, b, singletons, seed=5) == paired_permutation_test(a, b, seed=5)


def test_singleton_clusters_on_binary_scores_give_mcnemar() -> None:
    a = [1] * 6 + [0] * 1 + [1] * 3
    b = [0] * 6 + [1] * 1 + [1] * 3
    assert cluster_permutation_test(a, b, list(range(10))) == pytest.approx(mcnemar_exact(a, b))


def test_singleton_clusters_give_the_clt_error_and_the_paired_t_interval() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.random(25), rng.random(25)
    d = a - b
    singletons = list(range(25))
    assert clustered_standard_error(d, singletons) == pytest.approx(d.std(ddof=1) / math.sqrt(25), rel=1e-12)
    ci = sps.ttest_rel(a, b).confidence_interval(0.95)
    assert cluster_robust_interval(d, singletons) == pytest.approx((ci.low, ci.high), rel=1e-10)


def test_p_value_grows_when_correlated_clusters_are_declared() -> None:
    """Questions on one image tend to flip together: per-question tests count each flip as independent evidence."""
    rng = np.random.default_rng(0)
    images, per_image = 60, 5
    # per image: the strategy breaks all of its questions (12%), or none; plus rare independent flips
    broken = np.repeat(rng.random(images) < 0.12, per_image)
    b = (rng.random(images * per_image) < 0.8).astype(float)
    a = np.where(broken, 0.0, b)
    a = np.where(rng.random(a.size) < 0.02, 1 - a, a)
    clusters = np.repeat(np.arange(images), per_image).tolist()
    plain = paired_difference(a, b, binary=True)
    clustered = clustered_paired_difference(a, b, clusters)
    assert clustered.difference == pytest.approx(plain.difference)
    assert clustered.p_value > plain.p_value and plain.p_value < 0.001
    assert clustered.high - clustered.low > plain.high - plain.low  # the interval widens too


def test_bad_clusters_are_rejected() -> None:
    with pytest.raises(ValueError, match="one cluster per sample"):
        cluster_permutation_test([1, 0], [0, 0], ["a"])
    assert math.isnan(clustered_standard_error([1.0], ["a"]))
    assert cluster_robust_interval([1.0, 0.0], ["a", "a"]) == (-math.inf, math.inf)


# -- tasks and the harness ----------------------------------------------------------------
def test_tasks_declare_their_clusters() -> None:
    from tokenbench.task import Sample, Task
    from tokenbench.tasks.mmbench import MmbenchTask
    from tokenbench.tasks.mme import MmeTask
    from tokenbench.tasks.pope import PopeTask

    assert (Task.cluster_key, MmeTask.cluster_key, MmbenchTask.cluster_key, PopeTask.cluster_key) == (None, "group", "group", "image")
    sample = Sample(id="random-1", image=None, question="", answers=("yes",), meta={"image": "COCO_val2014_000000310196"})
    assert PopeTask.cluster(PopeTask.__new__(PopeTask), sample) == "COCO_val2014_000000310196"
    assert Task().cluster(sample) is None


def test_the_harness_stores_each_samples_cluster() -> None:
    from tokenbench.adapter import GenerationResult
    from tokenbench.harness import _record
    from tokenbench.registry import get_registry
    from tokenbench.task import Sample, Task

    class Grouped(Task):
        name = "grouped"
        cluster_key = "group"

        def score(self, sample: Sample, prediction: str) -> float:
            return 1.0

    baseline = get_registry().load("strategies", "baseline")()
    result = GenerationResult("yes", "USER: ...", 4, (2, 2), 4, [4, 4])
    grouped = Sample(id="q1", image=None, question="", answers=("yes",), meta={"group": "img7"})
    assert _record(Grouped(), grouped, 0, result, baseline, []).record["cluster"] == "img7"
    assert "cluster" not in _record(Grouped(), Sample(id="q2", image=None, question="", answers=("yes",)), 1, result, baseline, []).record


# -- the report ---------------------------------------------------------------------------
def _comparison(a: list[int], b: list[int], clusters: list[str] | None) -> Any:
    from tokenbench.budget import FULL, Budget
    from tokenbench.results import Comparison, RunResult
    from tokenbench.store import SampleRecord

    ids = [f"q{i}" for i in range(len(a))]

    def records(scores: list[int]) -> list[SampleRecord]:
        out = []
        for i, (sid, score) in enumerate(zip(ids, scores)):
            record: dict[str, Any] = {"tokens_per_layer": [36, 36], "merged": {}}
            if clusters is not None:
                record["cluster"] = clusters[i]
            out.append(SampleRecord(sid, i, "yesno", float(score), "yes" if score else "no", "USER: ...", None, record))
        return out

    runs = [
        RunResult("baseline", {}, FULL, "base0001", {}, records(b)),
        RunResult("random", {}, Budget("fraction", 0.25), "rand0001", {}, records(a)),
    ]
    env = {"device_name": "cpu", "threads": 2, "torch": "x", "transformers": "x", "fvcore": "x", "tokenbench": "x"}
    return Comparison({"model": "tiny", "dtype": "float32", "attention": "sdpa"}, {"name": "mme"}, "binary", "accuracy (yes/no)", env, runs, ids, {})


def test_report_footnote_and_rows_say_when_the_comparison_is_clustered() -> None:
    from tokenbench.report import build_rows, render

    clusters = [f"img{i // 4}" for i in range(40)]
    a = [0] * 16 + [1] * 24  # the strategy fails every question on images 0-3
    b = [1] * 40
    plain_cmp, clustered_cmp = _comparison(a, b, None), _comparison(a, b, clusters)
    plain, clustered = build_rows(plain_cmp)[1], build_rows(clustered_cmp)[1]
    assert plain["test"] == "McNemar exact" and plain["clusters"] is None
    assert clustered["test"] == CLUSTER_TEST and clustered["clusters"] == 10
    assert clustered["p_value"] == 2 / 16 and clustered["p_value"] > plain["p_value"]  # 4 clusters all one way: 2 of 16 flips
    text = render(clustered_cmp, "md")
    assert f"- p: {CLUSTER_TEST} test against the baseline, paired over the task's 10 clusters of related samples" in text
    assert "Holm-adjusted over 1 comparison; Δ and accuracy CI: cluster-robust 95%" in text
    assert "McNemar" in render(plain_cmp, "md") and "cluster" not in render(plain_cmp, "md")


def test_singleton_clusters_keep_the_unclustered_report() -> None:
    from tokenbench.report import build_rows

    a, b = [0] * 4 + [1] * 6, [1] * 10
    rows = build_rows(_comparison(a, b, [f"img{i}" for i in range(10)]))
    assert rows[1]["test"] == "McNemar exact" and rows[1]["clusters"] is None


def test_the_power_note_counts_clusters_not_questions() -> None:
    from tokenbench.report import build_rows

    clusters = [f"img{i // 4}" for i in range(40)]
    a, b = [0] * 4 + [1] * 36, [1] * 40  # the strategy fails the four questions of one image: not significant either way
    plain, clustered = build_rows(_comparison(a, b, None))[1], build_rows(_comparison(a, b, clusters))[1]
    # per question: (z.975 + z.8) * sqrt(0.1 / 40) = 2.8016 * 0.05 = 14.0 points
    assert plain["power_note"].startswith("n=40 can only detect differences ≥ 14.0 points")
    # d = a - b: deviations -0.9 (x4), 0.1 (x36), sum of squares 3.6; cluster sums -3.6 and 0.4 (x9), squares 14.4;
    # design effect = 1/40 + 39 * 14.4 / (40 * 3.6) = 3.925; 14.008 * sqrt(3.925) = 27.75 points
    assert clustered["power_note"].startswith("n=40 in 10 clusters (design effect 3.9")
    assert "can only detect differences ≥ 27.8 points" in clustered["power_note"]
