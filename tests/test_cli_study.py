"""``cordscope study``, ``analyze --workers`` and ``demo-cohort`` from the command line."""

from __future__ import annotations

import csv
import shutil

import pytest
from typer.testing import CliRunner

from analysis.scan_analysis import region_csv_path
from cordscope.cli import app
from tests.analysis._study_data import relabel, scan_one_section, synthetic_cohort

pytestmark = pytest.mark.slow  # a cohort of scans first

runner = CliRunner()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli-study")
    base = scan_one_section(tmp)
    files = synthetic_cohort(
        base, tmp, {"intact": [1.0, 1.12, 0.94], "vehicle": [0.2, 0.27, 0.16], "treated": [0.55]}
    )
    return tmp, base, files


def test_study_writes_table_statistics_figures_and_report(cohort, tmp_path):
    _, _, files = cohort
    unlabelled = tmp_path / "unlabelled.h5"
    shutil.copyfile(files[0], unlabelled)
    relabel(unlabelled, "rat01-L2", level=None)
    out = tmp_path / "study"
    result = runner.invoke(app, ["study", *map(str, files), str(unlabelled), "--out", str(out)])
    assert result.exit_code == 0, result.output
    for name in ("study-animals.csv", "study-statistics.csv", "study-report.html"):
        assert (out / name).is_file(), name
    for ext in ("png", "svg"):
        assert (out / f"study-L2-bars.{ext}").is_file()
        assert (out / f"study-L2-heatmaps.{ext}").is_file()
    with (out / "study-animals.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["animal"] for r in rows} == {"intact-1", "intact-2", "intact-3", "vehicle-1", "vehicle-2",
                                           "vehicle-3", "treated-1"}  # fmt: skip
    text = " ".join(result.output.split())
    assert "left out" in text and "unlabelled.h5" in text and "rat01-L2" in text and "no level" in text
    assert "group treated has 1 animal" in text
    assert "% axonal area" in text
    with (out / "study-statistics.csv").open() as f:
        stats = list(csv.DictReader(f))
    rst = next(r for r in stats if r["region"] == "rubrospinal_territory")
    assert (rst["group_a"], rst["group_b"], rst["significant"]) == ("intact", "vehicle", "True")


def test_study_of_unusable_files_is_a_one_line_error(cohort, tmp_path):
    bad = tmp_path / "nothing.h5"
    bad.write_text("x")
    result = runner.invoke(app, ["study", str(bad), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "error:" in result.output and "nothing.h5" in result.output
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_analyze_with_two_workers(cohort, tmp_path):
    _, base, _ = cohort
    files = []
    for i in range(2):
        p = tmp_path / f"scan{i}.h5"
        shutil.copyfile(base, p)
        files.append(p)
    result = runner.invoke(app, ["analyze", *map(str, files), "--workers", "2"])
    assert result.exit_code == 0, result.output
    for p in files:
        assert f"analysed {p.name}" in result.output
        assert region_csv_path(p).is_file()
    assert "rubrospinal_territory" in result.output


def test_analyze_workers_on_a_missing_file_is_a_one_line_error(tmp_path):
    result = runner.invoke(app, ["analyze", str(tmp_path / "nope.h5"), "--workers", "2"])
    assert result.exit_code == 2 and "nope.h5" in result.output


def test_demo_cohort_rejects_an_empty_cohort(tmp_path):
    result = runner.invoke(app, ["demo-cohort", "--animals-per-group", "0", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "animals_per_group must be at least 1" in result.output


def test_study_of_one_animal_writes_its_report(tmp_path):
    # one animal: every group is left out of the comparisons, and the report is still written
    from tests.analysis import _region_scan as rs

    scan = rs.make_scan(tmp_path / "one.h5")
    result = runner.invoke(app, ["study", str(scan), "--out", str(tmp_path / "study")])
    assert result.exit_code == 0, result.output
    report = (tmp_path / "study" / "study-report.html").read_text(encoding="utf-8")
    assert "group vehicle has 1 animal (fewer than 2) (rat01)" in report
