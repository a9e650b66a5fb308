"""Group comparisons of a study: the test is chosen from the data, run with scipy, and stated.

For one outcome (e.g. % axonal area of the rubrospinal territory at L2) and
one value per animal, :func:`compare_groups` does what a tract-tracing paper
reports:

1. Groups with fewer than ``min_animals`` animals (default 2) are left out,
   and said to be (:attr:`GroupComparison.left_out`).
2. Normality: Shapiro–Wilk (:func:`scipy.stats.shapiro`) in every group. It
   needs three values; a group of two cannot be tested, and then normality is
   not assumed.
3. All groups normal (every Shapiro–Wilk p ≥ ``alpha``): one-way ANOVA
   (:func:`scipy.stats.f_oneway`), then Tukey–Kramer pairwise comparisons
   (:func:`scipy.stats.tukey_hsd`, which handles unequal group sizes), with
   Hedges' *g* (bias-corrected standardised mean difference) per pair.
   Otherwise: Kruskal–Wallis (:func:`scipy.stats.kruskal`), then Dunn's test
   with Holm's correction (:func:`scikit_posthocs.posthoc_dunn`,
   ``p_adjust="holm"``), with Cliff's delta (equal to the rank-biserial
   correlation of the pair) per pair.

Pairwise p values are reported whatever the omnibus p, and each pair says
whether it differs at ``alpha``; a reader who wants the protected procedure
reads the omnibus p first (both are in the result).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

__all__ = [
    "ALPHA",
    "GroupComparison",
    "GroupSummary",
    "PairComparison",
    "cliffs_delta",
    "compare_groups",
    "hedges_g",
]

ALPHA = 0.05
"""Significance level used throughout unless given."""

NORMALITY_TEST = "Shapiro-Wilk"
PARAMETRIC = ("one-way ANOVA", "Tukey-Kramer")
NONPARAMETRIC = ("Kruskal-Wallis", "Dunn (Holm)")


@dataclasses.dataclass(frozen=True)
class GroupSummary:
    """One group's values and their summary.

    Attributes
    ----------
    group : str
    values : tuple of float
        One value per animal, in the order given.
    n : int
    mean, sd, sem : float
        Sample SD (``ddof=1``) and SEM = SD/√n (NaN for n < 2).
    shapiro_w, shapiro_p : float
        Shapiro–Wilk statistic and p; NaN when n < 3 or all values are equal.
    """

    group: str
    values: tuple[float, ...]
    n: int
    mean: float
    sd: float
    sem: float
    shapiro_w: float
    shapiro_p: float


@dataclasses.dataclass(frozen=True)
class PairComparison:
    """A pairwise comparison of two groups after the omnibus test.

    Attributes
    ----------
    group_a, group_b : str
    mean_difference : float
        ``mean(b) − mean(a)``.
    statistic : float
        Tukey–Kramer: the mean difference (scipy's statistic); Dunn: the z statistic
        (mean rank of b − mean rank of a, over its standard error).
    p_value : float
        Tukey–Kramer p (family-wise by construction) or Dunn p after Holm's correction.
    effect_size : float
        Hedges' g (``b`` vs ``a``) or Cliff's delta (``P(b > a) − P(b < a)``).
    effect_size_name : str
    significant : bool
        ``p_value < alpha``.
    """

    group_a: str
    group_b: str
    mean_difference: float
    statistic: float
    p_value: float
    effect_size: float
    effect_size_name: str
    significant: bool


@dataclasses.dataclass(frozen=True)
class GroupComparison:
    """The outcome of :func:`compare_groups`.

    Attributes
    ----------
    groups : tuple of GroupSummary
        The groups compared (at least ``min_animals`` values each), in order.
    left_out : dict of group → reason
        Groups not compared, and why.
    normal : bool or None
        Whether every compared group passed Shapiro–Wilk (None: not tested).
    test : str
        ``"one-way ANOVA"``, ``"Kruskal-Wallis"``, or ``""`` when fewer than two groups remain.
    statistic, p_value : float
        The omnibus test's F or H and its p (NaN when no test ran).
    posthoc : str
        ``"Tukey-Kramer"`` or ``"Dunn (Holm)"`` (``""`` when no test ran).
    pairs : tuple of PairComparison
    reason : str
        Why this test was chosen, in words.
    alpha : float
    """

    groups: tuple[GroupSummary, ...]
    left_out: dict[str, str]
    normal: bool | None
    test: str
    statistic: float
    p_value: float
    posthoc: str
    pairs: tuple[PairComparison, ...]
    reason: str
    alpha: float

    def pair(self, group_a: str, group_b: str) -> PairComparison:
        """The comparison of two groups (either order; the sign follows the stored order)."""
        for p in self.pairs:
            if {p.group_a, p.group_b} == {group_a, group_b}:
                return p
        raise KeyError(f"no comparison of {group_a!r} and {group_b!r}")

    def significant_pairs(self) -> set[frozenset[str]]:
        """The pairs that differ at ``alpha``, as unordered pairs of group names."""
        return {frozenset((p.group_a, p.group_b)) for p in self.pairs if p.significant}


def hedges_g(a: ArrayLike, b: ArrayLike) -> float:
    """Hedges' g of ``b`` vs ``a``: mean difference over the pooled SD, bias-corrected.

    ``g = J · (mean(b) − mean(a)) / s_pooled`` with
    ``s_pooled² = ((n_a − 1)s_a² + (n_b − 1)s_b²) / (n_a + n_b − 2)`` and
    ``J = 1 − 3 / (4(n_a + n_b) − 9)`` (Hedges & Olkin 1985). NaN when the
    pooled SD is 0 or there are fewer than 3 values in all.
    """
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    na, nb = len(x), len(y)
    if na < 1 or nb < 1 or na + nb < 3:
        return math.nan
    ss = (na - 1) * (x.var(ddof=1) if na > 1 else 0.0) + (nb - 1) * (y.var(ddof=1) if nb > 1 else 0.0)
    pooled = math.sqrt(ss / (na + nb - 2))
    if pooled == 0.0:
        return math.nan
    j = 1.0 - 3.0 / (4.0 * (na + nb) - 9.0)
    return float(j * (y.mean() - x.mean()) / pooled)


def cliffs_delta(a: ArrayLike, b: ArrayLike) -> float:
    """Cliff's delta of ``b`` vs ``a``: ``P(b > a) − P(b < a)`` over all pairs (−1..1).

    Equal to the rank-biserial correlation ``2·U_b/(n_a n_b) − 1`` of the Mann–Whitney U of ``b``.
    """
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if len(x) == 0 or len(y) == 0:
        return math.nan
    diff = y[:, None] - x[None, :]
    return float((np.sign(diff)).sum() / diff.size)


def _summary(group: str, values: NDArray[np.float64]) -> GroupSummary:
    n = len(values)
    sd = float(values.std(ddof=1)) if n > 1 else math.nan
    w = p = math.nan
    if n >= 3 and np.ptp(values) > 0:
        res = stats.shapiro(values)
        w, p = float(res.statistic), float(res.pvalue)
    return GroupSummary(
        group=group,
        values=tuple(float(v) for v in values),
        n=n,
        mean=float(values.mean()) if n else math.nan,
        sd=sd,
        sem=sd / math.sqrt(n) if n > 1 else math.nan,
        shapiro_w=w,
        shapiro_p=p,
    )


def compare_groups(
    values: Mapping[str, Sequence[float]],
    *,
    alpha: float = ALPHA,
    min_animals: int = 2,
    method: Literal["auto", "parametric", "nonparametric"] = "auto",
) -> GroupComparison:
    """Compare groups of per-animal values with the test their distribution calls for.

    Parameters
    ----------
    values : mapping of group name → one value per animal
        NaN values are dropped (an animal without a value for this outcome).
        Groups are compared and reported in the mapping's order.
    alpha : float
        Significance level of the normality checks and of the pairwise decisions.
    min_animals : int
        Groups with fewer values are left out (reported in ``left_out``).
    method : {"auto", "parametric", "nonparametric"}
        ``"auto"`` chooses by the Shapiro–Wilk checks (above); the others force
        ANOVA + Tukey–Kramer or Kruskal–Wallis + Dunn (Holm), e.g. to follow a
        pre-registered analysis (the reason then says so).

    Returns
    -------
    GroupComparison
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if method not in ("auto", "parametric", "nonparametric"):
        raise ValueError(f"method must be 'auto', 'parametric' or 'nonparametric', got {method!r}")
    kept: list[GroupSummary] = []
    left_out: dict[str, str] = {}
    for group, raw in values.items():
        v = np.asarray(list(raw), dtype=np.float64)
        v = v[np.isfinite(v)]
        if len(v) < min_animals:
            left_out[group] = f"{len(v)} animal{'s' if len(v) != 1 else ''} (fewer than {min_animals})"
            continue
        kept.append(_summary(group, v))
    if len(kept) < 2:
        return GroupComparison(
            groups=tuple(kept),
            left_out=left_out,
            normal=None,
            test="",
            statistic=math.nan,
            p_value=math.nan,
            posthoc="",
            pairs=(),
            reason="fewer than two groups with enough animals: no test",
            alpha=alpha,
        )
    arrays = [np.asarray(g.values) for g in kept]
    untestable = [g.group for g in kept if not math.isfinite(g.shapiro_p)]
    non_normal = [g.group for g in kept if math.isfinite(g.shapiro_p) and g.shapiro_p < alpha]
    if untestable:
        normal: bool | None = None
        reason = (
            f"normality could not be tested in {', '.join(untestable)} (Shapiro-Wilk needs 3 different "
            "values): Kruskal-Wallis, then Dunn's test with Holm's correction"
        )
    elif non_normal:
        normal = False
        reason = (
            f"Shapiro-Wilk p < {alpha:g} in {', '.join(non_normal)}: Kruskal-Wallis, "
            "then Dunn's test with Holm's correction"
        )
    else:
        normal = True
        reason = (
            f"Shapiro-Wilk p ≥ {alpha:g} in every group: one-way ANOVA, "
            "then Tukey-Kramer pairwise comparisons"
        )
    if method == "parametric":
        reason = "one-way ANOVA and Tukey-Kramer chosen by the user (normality not used)"
        return dataclasses.replace(_parametric(kept, arrays, left_out, reason, alpha), normal=normal)
    if method == "nonparametric":
        reason = "Kruskal-Wallis and Dunn's test (Holm) chosen by the user (normality not used)"
        return _nonparametric(kept, arrays, left_out, normal, reason, alpha)
    if normal:
        return _parametric(kept, arrays, left_out, reason, alpha)
    return _nonparametric(kept, arrays, left_out, normal, reason, alpha)


def _parametric(
    kept: list[GroupSummary],
    arrays: list[NDArray[np.float64]],
    left_out: dict[str, str],
    reason: str,
    alpha: float,
) -> GroupComparison:
    anova = stats.f_oneway(*arrays)
    tukey = stats.tukey_hsd(*arrays)
    pairs = _pairs(
        kept,
        p_value=lambda i, j: float(tukey.pvalue[i, j]),
        statistic=lambda i, j: float(tukey.statistic[j, i]),
        effect_size=lambda i, j: hedges_g(arrays[i], arrays[j]),
        effect_size_name="Hedges' g",
        alpha=alpha,
    )
    return GroupComparison(
        groups=tuple(kept),
        left_out=left_out,
        normal=True,
        test=PARAMETRIC[0],
        statistic=float(anova.statistic),
        p_value=float(anova.pvalue),
        posthoc=PARAMETRIC[1],
        pairs=tuple(pairs),
        reason=reason,
        alpha=alpha,
    )


def _dunn_z(arrays: list[NDArray[np.float64]], i: int, j: int) -> float:
    """Dunn's z of group j vs group i (tie-corrected), the statistic behind scikit-posthocs' p."""
    allv = np.concatenate(arrays)
    ranks = stats.rankdata(allv)
    bounds = np.cumsum([0, *(len(a) for a in arrays)])
    mean_rank = [ranks[bounds[k] : bounds[k + 1]].mean() for k in range(len(arrays))]
    n = len(allv)
    _, counts = np.unique(allv, return_counts=True)
    ties = float(((counts**3) - counts).sum())
    var = (n * (n + 1) / 12.0 - ties / (12.0 * (n - 1))) * (1.0 / len(arrays[i]) + 1.0 / len(arrays[j]))
    return float((mean_rank[j] - mean_rank[i]) / math.sqrt(var)) if var > 0 else math.nan


def _nonparametric(
    kept: list[GroupSummary],
    arrays: list[NDArray[np.float64]],
    left_out: dict[str, str],
    normal: bool | None,
    reason: str,
    alpha: float,
) -> GroupComparison:
    import scikit_posthocs as sp

    allv = np.concatenate(arrays)
    if np.ptp(allv) == 0:
        h, p_kw = math.nan, math.nan  # every value equal: ranks carry no information
        dunn = np.ones((len(kept), len(kept)))
        reason += " (all values are equal: no difference can be tested)"
    else:
        kw = stats.kruskal(*arrays)
        h, p_kw = float(kw.statistic), float(kw.pvalue)
        with warnings.catch_warnings():
            # pandas/scikit-posthocs deprecations are not ours to fix; errors still raise
            warnings.simplefilter("ignore", category=FutureWarning)
            warnings.simplefilter("ignore", category=DeprecationWarning)
            dunn = sp.posthoc_dunn([list(a) for a in arrays], p_adjust="holm").to_numpy()
    pairs = _pairs(
        kept,
        p_value=lambda i, j: float(dunn[i, j]),
        statistic=lambda i, j: _dunn_z(arrays, i, j),
        effect_size=lambda i, j: cliffs_delta(arrays[i], arrays[j]),
        effect_size_name="Cliff's delta",
        alpha=alpha,
    )
    return GroupComparison(
        groups=tuple(kept),
        left_out=left_out,
        normal=normal,
        test=NONPARAMETRIC[0],
        statistic=h,
        p_value=p_kw,
        posthoc=NONPARAMETRIC[1],
        pairs=tuple(pairs),
        reason=reason,
        alpha=alpha,
    )


def _pairs(
    kept: Sequence[Any],
    *,
    p_value: Callable[[int, int], float],
    statistic: Callable[[int, int], float],
    effect_size: Callable[[int, int], float],
    effect_size_name: str,
    alpha: float,
) -> list[PairComparison]:
    """One PairComparison per pair of kept groups (i < j), from the post-hoc test's accessors."""
    pairs = []
    for i, j in itertools.combinations(range(len(kept)), 2):
        p = p_value(i, j)
        pairs.append(
            PairComparison(
                group_a=kept[i].group,
                group_b=kept[j].group,
                mean_difference=kept[j].mean - kept[i].mean,
                statistic=statistic(i, j),
                p_value=p,
                effect_size=effect_size(i, j),
                effect_size_name=effect_size_name,
                significant=p < alpha,
            )
        )
    return pairs
