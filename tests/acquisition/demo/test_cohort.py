"""The demo cohort: slides and truth, and a small cohort scanned and compared with the truth."""

from __future__ import annotations

import csv
from collections import defaultdict

import numpy as np
import pytest

from acquisition.demo.cohort import cohort_slides, cohort_truth, render_cohort_slide
from acquisition.demo.slide import AXON_DENSITY, GROUPS

pytestmark = pytest.mark.slow

SMALL_N = 3
SMALL_LEVELS = ("L2",)


def test_cohort_layout_and_labels():
    slides = cohort_slides(2)
    assert [s.animal for s in slides] == [f"rat{i:02d}" for i in range(1, 7)]
    assert [s.group for s in slides] == [*GROUPS, *GROUPS]
    assert [s.injection_side for s in slides] == ["left"] * 3 + ["right"] * 3
    for s in slides:
        assert [sp.section_id for sp in s.specs] == [f"{s.animal}-C5", f"{s.animal}-Th7", f"{s.animal}-L2"]
        assert {sp.group for sp in s.specs} == {s.group}
        assert all(abs(sp.rotation_deg) <= 8.0 for sp in s.specs)
    # deterministic for a seed, different for another
    assert cohort_slides(2) == slides
    assert cohort_slides(2, seed=1) != slides


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"animals_per_group": 0}, "at least 1"),
        ({"animals_per_group": 1, "levels": ("C5", "lesion")}, "levels"),
        ({"animals_per_group": 1, "levels": ()}, "levels"),
    ],
    ids=["no-animals", "unknown-level", "no-levels"],
)
def test_bad_cohort_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        cohort_slides(**kwargs)


def test_truth_follows_the_density_parameters():
    slides = cohort_slides(1, levels=("L2",))
    rows = cohort_truth(slides)
    rst = {r.group: r.pct_axonal_area for r in rows if r.region == "rubrospinal_territory"}
    assert set(rst) == set(GROUPS)
    # L2 is caudal of the lesion: intact > treated > vehicle, as AXON_DENSITY sets
    order = sorted(GROUPS, key=lambda g: AXON_DENSITY[g]["L2"])
    assert sorted(rst, key=rst.get) == order  # type: ignore[arg-type]
    for g in GROUPS:  # within the animal-to-animal variation (log-normal SDs 0.12 and 0.30)
        assert 0.3 < rst[g] / (100 * AXON_DENSITY[g]["L2"]) < 3.0


def test_cohort_slide_renders_its_sections():
    slide = cohort_slides(1)[1]
    vs = render_cohort_slide(slide)
    assert [t.section_id for t in vs.sections] == [sp.section_id for sp in slide.specs]


# ------------------------------------------------------------------ scanned


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory):
    from cordscope.cohort import scan_demo_cohort

    out = tmp_path_factory.mktemp("cohort")
    return scan_demo_cohort(out, animals_per_group=SMALL_N, levels=SMALL_LEVELS)


def test_small_cohort_files_and_truth_csv(small_cohort):
    assert len(small_cohort.scan_files) == SMALL_N * len(GROUPS)
    assert all(p.is_file() for p in small_cohort.scan_files)
    with small_cohort.truth_csv.open() as f:
        rows = list(csv.DictReader(f))
    assert {r["animal"] for r in rows} == {f"rat{i:02d}" for i in range(1, SMALL_N * 3 + 1)}
    assert {r["level"] for r in rows} == set(SMALL_LEVELS)


def test_study_conclusions_match_the_truth(small_cohort):
    """Which pairs differ at p < 0.05: measured study vs the same statistics on the true values.

    A pair's true conclusion is taken only where it does not depend on the test
    family (ANOVA + Tukey-Kramer and Kruskal-Wallis + Dunn/Holm on the truth agree);
    at n = 3 Shapiro-Wilk can pick either family for the same kind of data.
    """
    from analysis.stats import compare_groups
    from analysis.study import MAIN_REGIONS, load_study, study_comparisons

    study = load_study(small_cohort.scan_files)
    assert study.problems == ()
    comps, problems = study_comparisons(study, regions=MAIN_REGIONS)
    assert problems == []
    truth: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in small_cohort.truth:
        truth[(r.level, r.region)][r.group].append(r.pct_axonal_area)
    checked = []
    for key, measured in comps.items():
        assert [g.n for g in measured.groups] == [SMALL_N] * 3
        par = compare_groups(truth[key], method="parametric")
        nonpar = compare_groups(truth[key], method="nonparametric")
        for pair in measured.pairs:
            a = par.pair(pair.group_a, pair.group_b).significant
            b = nonpar.pair(pair.group_a, pair.group_b).significant
            if a == b:
                checked.append((key, pair.group_a, pair.group_b))
                assert pair.significant == a, (key, pair.group_a, pair.group_b, pair.p_value)
    # the test cannot pass vacuously: intact vs vehicle below the lesion is checked everywhere
    assert {("L2", r, "intact", "vehicle") for r in MAIN_REGIONS} <= {(*k, a, b) for k, a, b in checked}
    assert all(comps[("L2", r)].pair("intact", "vehicle").significant for r in MAIN_REGIONS)


def test_measured_values_follow_the_truth(small_cohort):
    """% axonal area of the rubrospinal territory per animal is proportional to the truth at 4x."""
    from analysis.study import load_study

    study = load_study(small_cohort.scan_files)
    measured = {r.animal: r.pct_axonal_area for r in study.rows if r.region == "rubrospinal_territory"}
    true = {r.animal: r.pct_axonal_area for r in small_cohort.truth if r.region == "rubrospinal_territory"}
    animals = sorted(true)
    m = np.array([measured[a] for a in animals])
    t = np.array([true[a] for a in animals])
    assert np.corrcoef(m, t)[0, 1] > 0.97
