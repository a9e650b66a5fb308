"""The HTML study report is self-contained and states tests, parameters and versions; the statistics CSV."""

from __future__ import annotations

import csv
import re

import pytest

from analysis.report import STATS_COLUMNS, write_report, write_statistics_csv
from analysis.study import StudyProblem, load_study, study_comparisons
from analysis.study_figures import group_bar_figure, region_label, save_figure
from tests.analysis._study_data import scan_one_section, synthetic_cohort

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def study_and_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    base = scan_one_section(tmp)
    files = synthetic_cohort(
        base,
        tmp,
        {"intact": [1.0, 1.1, 0.93, 1.05], "vehicle": [0.2, 0.26, 0.15, 0.21], "treated": [0.5, 0.6, 0.56]},
    )
    study = load_study(files)
    comps, problems = study_comparisons(study)
    return tmp, study, comps, problems


def test_report_is_self_contained_and_complete(study_and_files):
    import scipy

    tmp, study, comps, problems = study_and_files
    png, _ = save_figure(group_bar_figure(study, "L2", comps), tmp / "bars")
    extra = StudyProblem(str(tmp / "missing.h5"), None, "not a readable scan file; left out")
    out = write_report(
        tmp / "report.html",
        study,
        comps,
        figures={"L2": [png]},
        problems=[*problems, extra],
        region_label=region_label,
    )
    text = out.read_text(encoding="utf-8")
    # nothing outside the file: no external images, links, scripts, styles or fonts
    srcs = re.findall(r'src="([^"]*)"', text)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r"href=|<script|<link|@import|url\(", text, flags=re.IGNORECASE)
    # the tests used and why, stats per group and per pair
    assert "Shapiro" in text and "Tukey-Kramer" in text and "one-way ANOVA" in text
    assert "Hedges&#x27; g" in text or "Hedges' g" in text
    assert "intact vs vehicle" in text and "Rubrospinal territory" in text
    assert "mean ± SEM" in text
    # every analysis parameter used, and the software versions
    for params in {tuple(sorted(s.analysis.parameters)) for s in study.sections}:
        for key in params:
            if not key.startswith("n_"):  # per-section counts are results, not parameters
                assert f"<code>{key}" in text, key
    assert scipy.__version__ in text and "scikit-posthocs" in text and "pymmcore-plus" in text
    # what was left out
    assert "missing.h5" in text and "Left out" in text


def test_statistics_csv_one_row_per_pair(study_and_files):
    tmp, _, comps, _ = study_and_files
    out = write_statistics_csv(tmp / "stats.csv", comps)
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == STATS_COLUMNS
    n_pairs = sum(max(1, len(c.pairs)) for c in comps.values())
    assert len(rows) == n_pairs
    rst = [r for r in rows if r["region"] == "rubrospinal_territory"]
    assert {(r["group_a"], r["group_b"]) for r in rst} == {
        ("intact", "vehicle"),
        ("intact", "treated"),
        ("vehicle", "treated"),
    }
    iv = next(r for r in rst if r["group_b"] == "vehicle")
    assert iv["significant"] == "True" and float(iv["pair_p_value"]) < 0.05


def test_report_names_the_regions_corrected_by_hand(tmp_path, monkeypatch):
    import shapely
    from shapely.geometry import mapping

    from analysis.region_edits import RegionEdit, apply_region_edits
    from analysis.study import hand_regions
    from tests.analysis import _region_scan as rs

    monkeypatch.setattr("getpass.getuser", lambda: "anna")
    untouched = rs.make_scan(tmp_path / "untouched.h5")
    study = load_study([untouched])
    assert hand_regions(study) == []
    out = write_report(tmp_path / "none.html", study, {}, figures={})
    assert "Regions corrected by hand</h2><p>None" in out.read_text(encoding="utf-8")

    scan = rs.make_scan(tmp_path / "edited.h5")
    box = mapping(shapely.box(1050.0, 1990.0, 1080.0, 2020.0))
    edit = RegionEdit("rubrospinal_territory", "drawn", geometry_um=box, source="gui")
    apply_region_edits(scan, {rs.SECTION: [edit]})
    study = load_study([scan])
    (hand,) = hand_regions(study)
    assert (hand.animal, hand.level, hand.section_id, hand.region, hand.kind, hand.who, hand.source) == (
        "rat01",
        "Th7",
        rs.SECTION,
        "rubrospinal_territory",
        "drawn",
        "anna",
        "gui",
    )
    text = write_report(tmp_path / "edited.html", study, {}, figures={}).read_text(encoding="utf-8")
    assert "Regions corrected by hand (1 in 1 section(s))" in text
    assert "<code>rubrospinal_territory</code></td><td>drawn</td><td>anna</td>" in text
    assert "Regions corrected by hand at Th7: rat01 rubrospinal_territory (drawn)." in text
