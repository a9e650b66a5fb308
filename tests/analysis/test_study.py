"""Study collection: per-animal averaging, tidy CSV, bad input, comparisons and figures."""

from __future__ import annotations

import csv
import shutil

import h5py
import numpy as np
import pytest

from analysis.study import (
    TIDY_COLUMNS,
    StudyError,
    load_study,
    study_comparisons,
    write_tidy_csv,
)
from tests.analysis._study_data import base_values, relabel, scale_results, scan_one_section, synthetic_cohort

pytestmark = pytest.mark.slow  # a cohort of scans first

SECTION = "rat01-L2"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return scan_one_section(tmp_path_factory.mktemp("study-base"))


def test_sections_of_one_animal_and_level_are_averaged(base, tmp_path):
    a, b = tmp_path / "slide-a.h5", tmp_path / "slide-b.h5"
    shutil.copyfile(base, a)
    shutil.copyfile(base, b)
    scale_results(b, SECTION, 3.0)  # the second section has 3× the axons
    study = load_study([a, b])
    assert study.problems == ()
    truth = base_values(base)
    rows = {r.region: r for r in study.rows}
    assert set(rows) == set(truth)
    for region, r in rows.items():
        assert (r.animal, r.group, r.level, r.n_sections) == ("rat01", "intact", "L2", 2)
        assert r.pct_axonal_area == pytest.approx(2.0 * truth[region], rel=1e-12)
        assert r.sections == (f"slide-a.h5:{SECTION}", f"slide-b.h5:{SECTION}")
    out = write_tidy_csv(tmp_path / "animals.csv", study.rows)
    with out.open() as f:
        table = list(csv.DictReader(f))
    assert tuple(table[0]) == TIDY_COLUMNS
    assert len(table) == len(truth)  # one row per animal × level × region
    sec = next(t for t in table if t["region"] == "section")
    assert float(sec["pct_axonal_area"]) == pytest.approx(2.0 * truth["section"], rel=1e-12)
    assert sec["n_sections"] == "2" and sec["group"] == "intact"


def test_bad_input_is_named_and_left_out(base, tmp_path):
    good = synthetic_cohort(base, tmp_path, {"intact": [1.0, 1.1], "vehicle": [0.2, 0.3]})
    no_analysis = tmp_path / "no-analysis.h5"
    shutil.copyfile(base, no_analysis)
    with h5py.File(no_analysis, "r+") as f:
        del f["sections"][SECTION]["analysis"]
    unlabelled = tmp_path / "unlabelled.h5"
    shutil.copyfile(base, unlabelled)
    relabel(unlabelled, SECTION, group=None, level="")
    not_a_scan = tmp_path / "notes.h5"
    not_a_scan.write_text("not hdf5")
    study = load_study([*good, no_analysis, unlabelled, not_a_scan])
    assert len(study.sections) == 4
    messages = [str(p) for p in study.problems]
    assert len(messages) == 3, messages
    assert any(str(no_analysis) in m and "no analysis" in m and "cordscope analyze" in m for m in messages)
    assert any(
        str(unlabelled) in m and f"section {SECTION}" in m and "no group or level" in m for m in messages
    )
    assert any(str(not_a_scan) in m and "not a readable scan file" in m for m in messages)


def test_section_without_analysis_in_an_analysed_file(base, tmp_path):
    # a second, unanalysed section: copy the section group without its analysis
    path = tmp_path / "two.h5"
    shutil.copyfile(base, path)
    with h5py.File(path, "r+") as f:
        f.copy(f["sections"][SECTION], f["sections"], name="rat01-L2b")
        del f["sections"]["rat01-L2b"]["analysis"]
    study = load_study([path])
    assert [s.section_id for s in study.sections] == [SECTION]
    assert any("rat01-L2b" in str(p) and "no analysis" in str(p) for p in study.problems)


def test_nothing_usable_is_an_error(base, tmp_path):
    bad = tmp_path / "unlabelled.h5"
    shutil.copyfile(base, bad)
    relabel(bad, SECTION, animal=None)
    with pytest.raises(StudyError, match=r"no usable section.*unlabelled\.h5.*no animal"):
        load_study([bad])


def test_animal_in_two_groups_is_left_out(base, tmp_path):
    files = synthetic_cohort(base, tmp_path, {"intact": [1.0, 1.2], "vehicle": [0.3, 0.2]})
    clash = tmp_path / "clash.h5"
    shutil.copyfile(base, clash)
    relabel(clash, SECTION, animal="intact-1", group="treated")
    study = load_study([*files, clash])
    assert "intact-1" not in {s.animal for s in study.sections}
    assert sum("intact-1 is labelled with groups intact, treated" in str(p) for p in study.problems) == 2


@pytest.mark.slow
def test_comparisons_leave_out_a_group_of_one_animal(base, tmp_path):
    files = synthetic_cohort(
        base,
        tmp_path,
        {"intact": [1.0, 1.1, 0.92, 1.04], "vehicle": [0.2, 0.26, 0.15, 0.22], "treated": [0.5]},
    )
    study = load_study(files)
    comps, problems = study_comparisons(study)
    assert len(problems) == 1
    msg = str(problems[0])
    assert "group treated has 1 animal" in msg and "treated-1" in msg
    assert str(tmp_path / "treated-1.h5") in msg and SECTION in msg
    comp = comps[("L2", "rubrospinal_territory")]
    assert [g.group for g in comp.groups] == ["intact", "vehicle"]
    assert comp.pair("intact", "vehicle").significant
    base_rst = base_values(base)["rubrospinal_territory"]
    assert comp.groups[0].mean == pytest.approx(base_rst * np.mean([1.0, 1.1, 0.92, 1.04]), rel=1e-9)
    assert comp.groups[0].values == pytest.approx([base_rst * f for f in (1.0, 1.1, 0.92, 1.04)], rel=1e-9)


# ------------------------------------------------------------------ figures


@pytest.mark.slow
def test_bar_and_heatmap_figures_are_written(base, tmp_path):
    from analysis.study_figures import group_bar_figure, heatmap_figure, save_figure

    files = synthetic_cohort(base, tmp_path, {"intact": [1.0, 1.1, 0.9], "vehicle": [0.2, 0.25, 0.15]})
    study = load_study(files)
    comps, _ = study_comparisons(study)
    png, svg = save_figure(group_bar_figure(study, "L2", comps), tmp_path / "bars")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and b"<svg" in svg.read_bytes()[:400]
    png, svg = save_figure(heatmap_figure(study, "L2"), tmp_path / "maps")
    assert png.stat().st_size > 10_000 and svg.is_file()
    with pytest.raises(ValueError, match="no coronal sections"):
        heatmap_figure(study, "C5")


def test_common_frame_mirrors_by_injection_side(base, tmp_path):
    from analysis.study_figures import _frame_grid, section_in_frame

    left = tmp_path / "left.h5"
    right = tmp_path / "right.h5"
    shutil.copyfile(base, left)
    shutil.copyfile(base, right)
    relabel(right, SECTION, injection_side="right")
    (rec_l,) = load_study([left]).sections
    (rec_r,) = load_study([right]).sections
    pct_l, tissue_l, gray_l = section_in_frame(rec_l)
    pct_r, tissue_r, gray_r = section_in_frame(rec_r)
    np.testing.assert_array_equal(tissue_r, tissue_l[:, ::-1])
    np.testing.assert_array_equal(gray_r, gray_l[:, ::-1])
    np.testing.assert_array_equal(np.isnan(pct_r), np.isnan(pct_l[:, ::-1]))
    np.testing.assert_array_equal(pct_r[np.isfinite(pct_r)], pct_l[:, ::-1][np.isfinite(pct_r)])
    # injected on the left: the labelled tract is on the animal's right, drawn on the right (+u);
    # the rubrospinal territory (its densest labelling) is dorsolateral: dorsal (+v) is up
    u, v = _frame_grid()
    assert np.nanmean(pct_l[u > 0]) > 3 * np.nanmean(pct_l[u < 0])
    hot = np.nan_to_num(pct_l) >= np.nanpercentile(pct_l, 98)
    assert u[hot].mean() > 800 and v[hot].mean() > 150
    assert np.abs(u[tissue_l]).max() < 2000 and np.abs(v[tissue_l]).max() < 1400
