"""Tests for tokenbench.stats: hand-computed cases, statsmodels/scipy agreement, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint

from tokenbench.stats import (
    NonInferiority,
    PairedDifference,
    adjust,
    benjamini_hochberg,
    bootstrap_interval,
    holm,
    mcnemar_exact,
    minimum_detectable_difference,
    non_inferiority,
    paired_difference,
    paired_permutation_test,
    power_note,
    wilson_interval,
)

Z975 = 1.959963984540054  # standard normal 97.5% quantile
Z80 = 0.8416212335729143  # standard normal 80% quantile


def paired_binary(n11: int, n10: int, n01: int, n00: int) -> tuple[np.ndarray, np.ndarray]:
    """Paired 0/1 arrays realising the 2x2 table [[n11, n10], [n01, n00]] (rows: a, cols: b)."""
    a = np.array([1] * n11 + [1] * n10 + [0] * n01 + [0] * n00)
    b = np.array([1] * n11 + [0] * n10 + [1] * n01 + [0] * n00)
    return a, b


# --------------------------------------------------------------------------- Wilson


def test_wilson_8_of_10_by_hand() -> None:
    z2 = Z975**2  # p = 8/10 = 0.8, n = 10
    center = (0.8 + z2 / 20) / (1 + z2 / 10)
    half = Z975 / (1 + z2 / 10) * math.sqrt(0.8 * 0.2 / 10 + z2 / 400)
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(center - half, abs=1e-12)
    assert high == pytest.approx(center + half, abs=1e-12)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)


def test_wilson_contains_its_estimate_exactly_at_0_and_n_for_every_n_to_1000() -> None:
    """0/n has lower bound exactly 0 and n/n upper bound exactly 1 (the unclamped formula leaves
    rounding residues such as 2.8e-17 at 0/12 for 236 of these n)."""
    for n in range(1, 1001):
        low0, high0 = wilson_interval(0, n)
        lown, highn = wilson_interval(n, n)
        assert low0 == 0.0 and 0.0 < high0 < 1.0, n
        assert highn == 1.0 and 0.0 < lown < 1.0, n
        assert math.isclose(high0, 1 - lown, rel_tol=1e-12), n  # the interval is symmetric under k -> n - k


def test_wilson_edges() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(0, 20)
    assert low == 0.0 and 0 < high < 0.2
    low, high = wilson_interval(20, 20)
    assert high == 1.0 and 0.8 < low < 1
    narrow, wide = wilson_interval(30, 100, 0.8), wilson_interval(30, 100, 0.99)
    assert wide[0] < narrow[0] < 0.3 < narrow[1] < wide[1]


@pytest.mark.parametrize("seed", range(5))
def test_wilson_matches_statsmodels(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(20):
        n = int(rng.integers(1, 500))
        k = int(rng.integers(0, n + 1))
        level = float(rng.choice([0.8, 0.9, 0.95, 0.99]))
        expected = proportion_confint(k, n, alpha=1 - level, method="wilson")
        assert wilson_interval(k, n, level) == pytest.approx(expected, abs=1e-10)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((11, 10), "successes must be <= n"),
        ((-1, 10), "successes must be >= 0"),
        ((1, -1), "n must be >= 0"),
        ((1.0, 10), "successes must be an integer"),
        ((1, 10, 1.0), r"level must be a number in \(0, 1\)"),
        ((1, 10, 0.0), "level"),
        ((1, 10, float("nan")), "level"),
        ((True, 10), "successes must be an integer"),
    ],
)
def test_wilson_rejects_bad_input(args: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        wilson_interval(*args)


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_is_seeded_and_brackets_mean() -> None:
    x = np.random.default_rng(1).normal(0.5, 0.2, size=400)
    first = bootstrap_interval(x, seed=3)
    assert first == bootstrap_interval(x, seed=3)
    assert first != bootstrap_interval(x, seed=4)
    low, high = first
    assert low < x.mean() < high
    # Large n: percentile bootstrap ~ normal interval mean +- 1.96 * sd / sqrt(n).
    half = Z975 * x.std() / math.sqrt(x.size)
    assert low == pytest.approx(x.mean() - half, abs=0.004)
    assert high == pytest.approx(x.mean() + half, abs=0.004)
    wide = bootstrap_interval(x, level=0.99, seed=3)
    assert wide[0] < low and high < wide[1]


def test_bootstrap_constant_scores_and_large_input() -> None:
    assert bootstrap_interval([0.7] * 50) == pytest.approx((0.7, 0.7))
    # Exercises the block-wise resampling path (n * n_resamples > one block).
    low, high = bootstrap_interval(np.tile([0.0, 1.0], 2500), n_resamples=1000)
    assert low < 0.5 < high and high - low < 0.04


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scores": []}, "scores must not be empty"),
        ({"scores": [0.1, float("nan")]}, "scores contains non-finite values .*index 1"),
        ({"scores": [0.1, float("inf")]}, "scores contains non-finite"),
        ({"scores": [[0.1, 0.2]]}, "scores must be a 1-D array"),
        ({"scores": ["a", "b"]}, "scores must be numeric"),
        ({"scores": [0.1], "level": 1.5}, "level must be"),
        ({"scores": [0.1], "n_resamples": 0}, "n_resamples must be >= 1"),
    ],
)
def test_bootstrap_rejects_bad_input(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        bootstrap_interval(**kwargs)


# --------------------------------------------------------------------------- McNemar


def test_mcnemar_one_vs_six_is_exactly_0125() -> None:
    a, b = paired_binary(n11=5, n10=1, n01=6, n00=3)
    # 2 * P(X <= 1), X ~ Binomial(7, 1/2) = 2 * (1 + 7) / 128
    assert mcnemar_exact(a, b) == 2 * sps.binom.cdf(1, 7, 0.5) == 0.125
    assert mcnemar_exact(b, a) == 0.125


def test_mcnemar_degenerate_cases() -> None:
    a, b = paired_binary(4, 0, 0, 6)
    assert mcnemar_exact(a, b) == 1.0  # no discordant pairs
    a, b = paired_binary(2, 3, 3, 2)
    assert mcnemar_exact(a, b) == 1.0  # balanced, capped at 1
    assert mcnemar_exact([True, False, True], [True, True, True]) == 1.0


@pytest.mark.parametrize("seed", range(5))
def test_mcnemar_matches_statsmodels(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(10):
        n = int(rng.integers(5, 300))
        a = rng.integers(0, 2, n)
        b = np.where(rng.random(n) < rng.uniform(0.5, 0.95), a, 1 - a)
        table = [[np.sum((a == 1) & (b == 1)), np.sum((a == 1) & (b == 0))], [np.sum((a == 0) & (b == 1)), np.sum((a == 0) & (b == 0))]]
        expected = sm_mcnemar(np.array(table), exact=True).pvalue
        assert mcnemar_exact(a, b) == pytest.approx(expected, rel=1e-12)


def test_mcnemar_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="a and b must have the same length.*got 3 and 2"):
        mcnemar_exact([1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match="b must contain only binary scores"):
        mcnemar_exact([1, 0, 1], [1, 0, 0.5])
    with pytest.raises(ValueError, match="a contains non-finite"):
        mcnemar_exact([1, np.nan], [1, 0])


# --------------------------------------------------------------------------- permutation


def test_permutation_exact_by_hand() -> None:
    zeros = [0.0, 0.0, 0.0]
    # sign flips of (1, 2, 3): |sums| = 6, 4, 2, 0, 0, 2, 4, 6 -> P(|S| >= 6) = 2/8
    assert paired_permutation_test([1.0, 2.0, 3.0], zeros) == 0.25
    # observed |1 - 2 + 3| = 2 -> P(|S| >= 2) = 6/8
    assert paired_permutation_test([1.0, -2.0, 3.0], zeros) == 0.75
    # zero differences do not change the answer; a - b is what matters
    assert paired_permutation_test([1.5, 2.5, 3.5, 7.0], [0.5, 0.5, 0.5, 7.0]) == 0.25
    assert paired_permutation_test([0.1, 0.2, 0.3, 0.4], [0.0] * 4) == pytest.approx(0.125)
    assert paired_permutation_test([0.3, 0.4], [0.3, 0.4]) == 1.0
    # 20 pairs but only 4 non-zero differences: still enumerated exactly (2/16)
    a, b = [0.1, 0.2, 0.3, 0.4] + [0.5] * 16, [0.0] * 4 + [0.5] * 16
    assert paired_permutation_test(a, b, n_permutations=100) == pytest.approx(0.125)


def test_permutation_matches_scipy_exact() -> None:
    rng = np.random.default_rng(7)
    a, b = rng.normal(0.3, 1, 12), rng.normal(0, 1, 12)
    expected = sps.permutation_test(
        (a, b),
        lambda x, y: np.mean(x - y),
        permutation_type="samples",
        n_resamples=np.inf,
        alternative="two-sided",
    ).pvalue
    assert paired_permutation_test(a, b) == pytest.approx(expected, rel=1e-9)
    assert paired_permutation_test(b, a) == pytest.approx(expected, rel=1e-9)


def test_permutation_monte_carlo_close_to_exact() -> None:
    d = np.random.default_rng(11).normal(0.35, 1, 17)  # 17 > 16: Monte Carlo path
    signs = 1 - 2 * ((np.arange(2**17)[:, None] >> np.arange(17)) & 1)
    exact = float(np.mean(np.abs(signs @ d) >= abs(d.sum()) - 1e-9))
    p = paired_permutation_test(d, np.zeros(17), n_permutations=20_000, seed=1)
    assert abs(p - exact) < 4 * math.sqrt(exact * (1 - exact) / 20_000) + 1e-4
    assert p == paired_permutation_test(d, np.zeros(17), n_permutations=20_000, seed=1)


def test_permutation_monte_carlo_correction() -> None:
    a = np.linspace(1.0, 2.0, 40)  # every difference positive: no flip reaches the observed sum
    assert paired_permutation_test(a, np.zeros(40), n_permutations=999) == 1 / 1000


def test_permutation_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="same length"):
        paired_permutation_test([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match="n_permutations must be >= 1"):
        paired_permutation_test([0.1], [0.2], n_permutations=0)
    with pytest.raises(ValueError, match="b contains non-finite"):
        paired_permutation_test([0.1], [np.inf])


# --------------------------------------------------------------------------- paired difference


def test_newcombe_matches_published_reference() -> None:
    # Cavo et al. (2012) in Fagerland, Lydersen & Laake, "Statistical Analysis of Contingency
    # Tables", ch. 8: Newcombe square-and-add 95% CI -0.1186 to -0.0046, estimate -0.0621.
    a, b = paired_binary(59, 6, 16, 80)
    r = paired_difference(a, b, binary=True)
    assert isinstance(r, PairedDifference)
    assert round(r.difference, 4) == -0.0621
    assert (round(r.low, 4), round(r.high, 4)) == (-0.1186, -0.0046)
    assert r.p_value == pytest.approx(sm_mcnemar(np.array([[59, 6], [16, 80]]), exact=True).pvalue)
    assert r.test == "McNemar exact"


def test_newcombe_zero_margin_reduces_to_square_and_add() -> None:
    # a is always correct, so a margin is empty and phi = 0: plain square-and-add of Wilson arms.
    a, b = np.ones(40, dtype=int), np.array([1] * 30 + [0] * 10)
    l1, u1 = proportion_confint(40, 40, alpha=0.05, method="wilson")
    l2, u2 = proportion_confint(30, 40, alpha=0.05, method="wilson")
    r = paired_difference(a, b, binary=True)
    assert r.difference == pytest.approx(0.25)
    assert r.low == pytest.approx(0.25 - math.hypot(1.0 - l1, u2 - 0.75), abs=1e-9)
    assert r.high == pytest.approx(0.25 + math.hypot(u1 - 1.0, 0.75 - l2), abs=1e-9)


def test_newcombe_positive_correlation_narrows_interval() -> None:
    # Same margins (30/50 vs 20/50); high agreement gives a narrower paired interval.
    agree = paired_difference(*paired_binary(20, 10, 0, 20), binary=True)
    disagree = paired_difference(*paired_binary(0, 30, 20, 0), binary=True)
    assert agree.difference == disagree.difference == pytest.approx(0.2)
    assert agree.high - agree.low < disagree.high - disagree.low
    assert agree.low < 0.2 < agree.high and disagree.low < 0.2 < disagree.high


def test_paired_difference_continuous_uses_bootstrap_and_permutation() -> None:
    rng = np.random.default_rng(5)
    a = rng.uniform(0, 1, 60)
    b = np.clip(a - 0.05 + rng.normal(0, 0.1, 60), 0, 1)
    r = paired_difference(a, b, binary=False, level=0.9, seed=2)
    assert r.difference == pytest.approx(a.mean() - b.mean())
    assert (r.low, r.high) == bootstrap_interval(a - b, level=0.9, seed=2)
    assert r.p_value == paired_permutation_test(a, b, seed=2)
    assert r.test == "paired sign-flip permutation"


def test_paired_difference_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="a must contain only binary scores"):
        paired_difference([0.5, 1.0], [1, 0], binary=True)
    with pytest.raises(ValueError, match="same length"):
        paired_difference([1, 0], [1, 0, 1], binary=False)
    with pytest.raises(ValueError, match="level must be"):
        paired_difference([1, 0], [1, 1], binary=True, level=95)


# --------------------------------------------------------------------------- multiplicity

P = [0.01, 0.04, 0.03, 0.005]


def test_holm_by_hand() -> None:
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> running max 0.06
    assert holm(P) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == [1.0, 1.0]
    assert holm([]) == []


def test_bh_by_hand() -> None:
    # sorted: 0.005*4/1=0.02, 0.01*4/2=0.02, 0.03*4/3=0.04, 0.04*4/4=0.04 (running min from top)
    assert benjamini_hochberg(P) == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert benjamini_hochberg([0.9, 0.8]) == pytest.approx([0.9, 0.9])
    assert benjamini_hochberg([]) == []


@pytest.mark.parametrize("seed", range(5))
def test_adjustments_match_statsmodels(seed: int) -> None:
    rng = np.random.default_rng(seed)
    p = rng.uniform(0, 0.2, int(rng.integers(1, 30))) ** 2
    p[: p.size // 3] = p[0]  # include ties
    for method, ours in (("holm", holm), ("fdr_bh", benjamini_hochberg)):
        expected = multipletests(p, method=method)[1]
        got = ours(p.tolist())
        assert got == pytest.approx(expected, abs=1e-12)
        order = np.argsort(p, kind="stable")
        assert np.all(np.diff(np.asarray(got)[order]) >= -1e-15)  # monotone in p
        assert max(got) <= 1.0


def test_adjust_dispatch_and_errors() -> None:
    assert adjust(P) == holm(P)
    assert adjust(P, "bh") == benjamini_hochberg(P)
    assert adjust(P, "none") == P
    with pytest.raises(ValueError, match="'holm', 'bh', 'none'.*'bonferroni'"):
        adjust(P, "bonferroni")  # type: ignore[arg-type]
    for bad in ([0.1, 1.2], [-0.1], [float("nan")], [[0.1, 0.2]], ["x"]):
        with pytest.raises(ValueError, match="p_values must be"):
            holm(bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- non-inferiority


def test_non_inferiority_binary_flips_at_the_bound() -> None:
    cand, ref = paired_binary(80, 4, 9, 7)  # candidate 84%, reference 89%
    r = non_inferiority(cand, ref, margin=0.1, binary=True)
    assert isinstance(r, NonInferiority)
    assert r.difference == pytest.approx(-0.05)
    # one-sided 95% bound == lower end of the two-sided 90% Newcombe interval
    expected = paired_difference(cand, ref, binary=True, level=0.9).low
    assert r.lower_bound == pytest.approx(expected, abs=1e-12)
    bound = -r.lower_bound
    assert non_inferiority(cand, ref, margin=bound + 1e-6, binary=True).non_inferior
    assert not non_inferiority(cand, ref, margin=bound - 1e-6, binary=True).non_inferior
    assert not non_inferiority(cand, ref, margin=bound, binary=True).non_inferior  # strict
    assert not non_inferiority(cand, ref, margin=0.02, binary=True).non_inferior
    strict = non_inferiority(cand, ref, margin=0.1, binary=True, level=0.99)
    assert strict.lower_bound < r.lower_bound


def test_non_inferiority_continuous_flips_at_the_bound() -> None:
    rng = np.random.default_rng(9)
    ref = rng.uniform(0.2, 1.0, 150)
    cand = ref - 0.01 + rng.normal(0, 0.05, 150)
    r = non_inferiority(cand, ref, margin=0.03, binary=False, seed=4)
    assert r.difference == pytest.approx(cand.mean() - ref.mean())
    # one-sided 95% percentile bound == lower end of the two-sided 90% bootstrap interval
    expected = bootstrap_interval(cand - ref, level=0.9, seed=4)[0]
    assert r.lower_bound == pytest.approx(expected, abs=1e-12)
    bound = -r.lower_bound
    assert non_inferiority(cand, ref, margin=bound + 1e-9, binary=False, seed=4).non_inferior
    assert not non_inferiority(cand, ref, margin=bound - 1e-9, binary=False, seed=4).non_inferior


def test_non_inferiority_describe() -> None:
    yes = NonInferiority(-0.01, -0.015, 0.02, 0.95, True).describe()
    no = NonInferiority(-0.01, -0.025, 0.02, 0.9, False).describe()
    assert yes.startswith("Non-inferior") and no.startswith("Not shown non-inferior")
    for text, level in ((yes, "95%"), (no, "90%")):
        assert "2.0-point margin" in text and level in text and text.count(".\n") == 0
        assert text.endswith(".")


def test_non_inferiority_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="margin must be a finite non-negative"):
        non_inferiority([1, 0], [1, 1], margin=-0.02, binary=True)
    with pytest.raises(ValueError, match=r"level must be a number in \(0.5, 1\)"):
        non_inferiority([1, 0], [1, 1], margin=0.02, binary=True, level=0.5)
    with pytest.raises(ValueError, match="candidate and reference must have the same length"):
        non_inferiority([1, 0], [1], margin=0.02, binary=False)
    with pytest.raises(ValueError, match="reference must contain only binary"):
        non_inferiority([1, 0], [1, 2], margin=0.02, binary=True)


# --------------------------------------------------------------------------- power


def test_minimum_detectable_difference_by_hand() -> None:
    assert minimum_detectable_difference(50, 0.1) == pytest.approx((Z975 + Z80) * math.sqrt(0.1 / 50), rel=1e-12)
    assert round(minimum_detectable_difference(50, 0.1), 4) == 0.1253
    # discordance floored at 1/n
    assert minimum_detectable_difference(200, 0.0) == pytest.approx((Z975 + Z80) * math.sqrt((1 / 200) / 200), rel=1e-12)
    z = sps.norm.ppf(0.995) + sps.norm.ppf(0.9)
    assert minimum_detectable_difference(400, 0.2, alpha=0.01, power=0.9) == pytest.approx(z * math.sqrt(0.2 / 400), rel=1e-12)


def test_power_note() -> None:
    note = power_note(50, 0.1, margin=0.02)
    assert note == ("n=50 can only detect differences ≥ 12.5 points (α=0.05, power 0.8); a non-significant result here is not evidence of no difference")
    assert power_note(10_000, 0.1, margin=0.02) is None
    mdd = minimum_detectable_difference(500, 0.15)
    assert power_note(500, 0.15, margin=mdd) is None
    assert power_note(500, 0.15, margin=mdd - 1e-6) is not None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 0, "discordance": 0.1}, "n must be >= 1"),
        ({"n": 10.5, "discordance": 0.1}, "n must be an integer"),
        ({"n": 10, "discordance": 1.5}, r"discordance must be in \[0, 1\]"),
        ({"n": 10, "discordance": float("nan")}, "discordance must be"),
        ({"n": 10, "discordance": 0.1, "alpha": 0.0}, "alpha must be"),
        ({"n": 10, "discordance": 0.1, "power": 1.0}, "power must be"),
    ],
)
def test_minimum_detectable_difference_rejects_bad_input(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        minimum_detectable_difference(**kwargs)
    with pytest.raises(ValueError, match=match):
        power_note(margin=0.02, **kwargs)


def test_power_note_rejects_bad_margin() -> None:
    with pytest.raises(ValueError, match="margin must be"):
        power_note(50, 0.1, margin=float("inf"))


def test_all_results_are_plain_floats() -> None:
    a, b = paired_binary(10, 3, 1, 6)
    values = [
        *wilson_interval(3, 9),
        *bootstrap_interval([0.1, 0.5], n_resamples=50),
        mcnemar_exact(a, b),
        paired_permutation_test(a, b),
        *holm([0.1]),
        minimum_detectable_difference(10, 0.2),
    ]
    r = paired_difference(a, b, binary=True)
    values += [r.difference, r.low, r.high, r.p_value]
    assert all(type(v) is float for v in values)
    assert type(non_inferiority(a, b, margin=0.05, binary=True).non_inferior) is bool
