"""Group comparisons: test selection, and scipy / scikit-posthocs against published worked examples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis.stats import _dunn_z, cliffs_delta, compare_groups, hedges_g

# NIST/SEMATECH e-Handbook of Statistical Methods, section 7.4.3.3 (one-way ANOVA
# example): three levels of a factor, five observations each; the ANOVA table gives
# SS(treatments) = 27.897, SS(error) = 17.452, F = 9.59 with (2, 12) degrees of freedom.
NIST_ANOVA = {
    "level1": [6.9, 5.4, 5.8, 4.6, 4.0],
    "level2": [8.3, 6.8, 7.8, 9.2, 6.5],
    "level3": [8.0, 10.5, 8.1, 6.9, 9.3],
}

# scipy.stats.tukey_hsd documentation example (data adapted from the NIST handbook,
# section 7.4.7.1): p(0-1) = 0.014, p(0-2) = 0.980, p(1-2) = 0.020; differences 4.600, 0.260, -4.340.
TUKEY_DOC = {
    "group0": [24.5, 23.5, 26.4, 27.1, 29.9],
    "group1": [28.4, 34.2, 29.5, 32.2, 30.1],
    "group2": [26.1, 28.3, 24.3, 26.2, 27.8],
}

# Dunn's test worked example published with the `dunn` package (pereirabarataap/dunn,
# README): five groups; unadjusted two-sided p and z of every pair.
DUNN_EXAMPLE = [
    [0.28551035, 0.338524035, 0.088631321, 0.205930807, 0.363240102],
    [0.52173913, 0.763358779, 0.325436786, 0.425305688, 0.378071834],
    [0.98911968, 1.192718142, 0.788288288, 0.549176236, 0.544588155],
    [1.26705653, 1.625320787, 1.266108976, 1.154187629, 1.268489431],
    [1.25697569, 1.265897356, 1.237814561, 0.954612564, 2.365415457],
]
DUNN_Z = {(0, 1): -0.9882, (0, 2): -2.1054, (0, 3): -3.8241, (0, 4): -3.3944, (1, 2): -1.1171,
          (1, 3): -2.8358, (1, 4): -2.4061, (2, 3): -1.7187, (2, 4): -1.2890, (3, 4): 0.42967}  # fmt: skip
DUNN_P = {(0, 1): 0.32304, (0, 2): 0.03526, (0, 3): 0.00013, (0, 4): 0.00069, (1, 2): 0.26393,
          (1, 3): 0.00457, (1, 4): 0.01612, (2, 3): 0.08567, (2, 4): 0.19740, (3, 4): 0.66744}  # fmt: skip


def test_anova_matches_the_nist_worked_example():
    res = compare_groups(NIST_ANOVA)
    assert res.normal is True
    assert res.test == "one-way ANOVA" and res.posthoc == "Tukey-Kramer"
    assert res.statistic == pytest.approx(9.59, abs=0.005)
    # F(2, 12) = 9.59 → p from the F distribution
    assert res.p_value == pytest.approx(0.00325, abs=0.00005)
    assert [g.n for g in res.groups] == [5, 5, 5]
    assert res.groups[0].mean == pytest.approx(5.34)
    assert res.groups[0].sem == pytest.approx(np.std(NIST_ANOVA["level1"], ddof=1) / math.sqrt(5))


def test_tukey_kramer_matches_the_scipy_documented_example():
    res = compare_groups(TUKEY_DOC)
    assert res.test == "one-way ANOVA"
    expected = {("group0", "group1"): (4.600, 0.014), ("group0", "group2"): (0.260, 0.980),
                ("group1", "group2"): (-4.340, 0.020)}  # fmt: skip
    for (a, b), (diff, p) in expected.items():
        pair = res.pair(a, b)
        assert pair.mean_difference == pytest.approx(diff, abs=1e-9)
        assert pair.statistic == pytest.approx(diff, abs=1e-9)
        assert pair.p_value == pytest.approx(p, abs=0.0005)
        assert pair.effect_size_name == "Hedges' g"
    assert res.significant_pairs() == {frozenset(("group0", "group1")), frozenset(("group1", "group2"))}


def _holm(p: dict[tuple[int, int], float]) -> dict[tuple[int, int], float]:
    """Holm's step-down adjustment of published p values (for the expected numbers)."""
    keys = sorted(p, key=p.get)  # type: ignore[arg-type]
    m, running, out = len(keys), 0.0, {}
    for i, k in enumerate(keys):
        running = max(running, min(1.0, (m - i) * p[k]))
        out[k] = running
    return out


def test_dunn_with_holm_matches_the_published_example():
    groups = {f"g{i}": v for i, v in enumerate(DUNN_EXAMPLE)}
    # the last group is not normal (one outlier): Kruskal-Wallis then Dunn
    res = compare_groups(groups)
    assert res.normal is False and "g4" in res.reason
    assert res.test == "Kruskal-Wallis" and res.posthoc == "Dunn (Holm)"
    holm = _holm(DUNN_P)
    for (i, j), p in holm.items():
        pair = res.pair(f"g{i}", f"g{j}")
        # published p are rounded to 5 decimals; Holm multiplies them by up to 10
        assert pair.p_value == pytest.approx(p, abs=5e-5 * 10), (i, j)
        # our z is b vs a (mean rank of b minus a); the example's is a vs b
        assert pair.statistic == pytest.approx(-DUNN_Z[(i, j)], abs=5e-4), (i, j)
        assert pair.effect_size_name == "Cliff's delta"
    arrays = [np.asarray(v) for v in DUNN_EXAMPLE]
    assert _dunn_z(arrays, 0, 3) == pytest.approx(3.8241, abs=5e-4)


def test_kruskal_statistic_is_scipys():
    from scipy import stats

    groups = {f"g{i}": v for i, v in enumerate(DUNN_EXAMPLE)}
    res = compare_groups(groups)
    kw = stats.kruskal(*DUNN_EXAMPLE)
    assert res.statistic == kw.statistic and res.p_value == kw.pvalue


@pytest.mark.parametrize(
    ("values", "test", "normal", "reason_part"),
    [
        pytest.param(
            {"a": [1.0, 1.2, 0.9, 1.1, 1.05], "b": [2.0, 2.1, 1.9, 2.2, 2.05]},
            "one-way ANOVA", True, "every group", id="normal-groups-anova",
        ),
        pytest.param(
            {"a": [1.0, 1.1, 1.2, 1.3, 9.0], "b": [2.0, 2.1, 1.9, 2.2, 2.05]},
            "Kruskal-Wallis", False, "in a", id="outlier-kruskal",
        ),
        pytest.param(
            {"a": [1.0, 1.2], "b": [2.0, 2.1, 1.9]},
            "Kruskal-Wallis", None, "could not be tested in a", id="two-animals-untestable",
        ),
        pytest.param(
            {"a": [1.0, 1.0, 1.0], "b": [2.0, 2.1, 1.9]},
            "Kruskal-Wallis", None, "could not be tested in a", id="constant-group",
        ),
    ],
)  # fmt: skip
def test_test_selection(values, test, normal, reason_part):
    res = compare_groups(values)
    assert res.test == test
    assert res.normal is normal
    assert reason_part in res.reason


def test_group_with_one_animal_is_left_out_and_others_compared():
    res = compare_groups({"intact": [5.0, 5.5, 4.8], "vehicle": [0.5], "treated": [2.0, 2.4, 1.8]})
    assert [g.group for g in res.groups] == ["intact", "treated"]
    assert res.left_out == {"vehicle": "1 animal (fewer than 2)"}
    assert len(res.pairs) == 1 and res.pairs[0].group_a == "intact"


def test_fewer_than_two_groups_gives_no_test():
    res = compare_groups({"intact": [5.0, 5.5], "vehicle": [1.0]})
    assert res.test == "" and math.isnan(res.p_value) and res.pairs == ()
    assert "vehicle" in res.left_out


def test_nan_values_are_dropped():
    res = compare_groups({"a": [1.0, float("nan"), 1.2, 1.1], "b": [2.0, 2.2, 2.1]})
    assert res.groups[0].n == 3


def test_effect_sizes_on_known_answers():
    # pooled SD 1, mean difference 2, n = 4 + 4: J = 1 - 3/(4*8 - 9) = 1 - 3/23
    a = [-1.0, 1.0, -1.0, 1.0]
    b = [1.0, 3.0, 1.0, 3.0]
    sd = np.std(a, ddof=1)
    assert hedges_g(a, b) == pytest.approx((1 - 3 / 23) * 2 / sd)
    assert cliffs_delta([1, 2, 3], [4, 5, 6]) == 1.0
    assert cliffs_delta([4, 5, 6], [1, 2, 3]) == -1.0
    assert cliffs_delta([1, 2], [1, 2]) == 0.0


def test_cliffs_delta_equals_rank_biserial_from_mann_whitney():
    from scipy import stats

    rng = np.random.default_rng(3)
    a, b = rng.normal(0, 1, 7), rng.normal(0.8, 1, 9)
    u_b = stats.mannwhitneyu(b, a).statistic
    assert cliffs_delta(a, b) == pytest.approx(2 * u_b / (len(a) * len(b)) - 1)


def test_alpha_is_validated():
    with pytest.raises(ValueError, match="alpha"):
        compare_groups({"a": [1, 2, 3], "b": [2, 3, 4]}, alpha=0)


@pytest.mark.parametrize(
    ("method", "test"),
    [("parametric", "one-way ANOVA"), ("nonparametric", "Kruskal-Wallis")],
    ids=["forced-parametric", "forced-nonparametric"],
)
def test_method_can_be_forced(method, test):
    groups = {f"g{i}": v for i, v in enumerate(DUNN_EXAMPLE)}
    res = compare_groups(groups, method=method)
    assert res.test == test and "chosen by the user" in res.reason
    assert res.normal is False  # still reported
