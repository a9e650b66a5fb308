"""The cordscope command's plan, validate, scan and info: output, exit codes, one-line errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from acquisition.demo.plans import demo_plan
from acquisition.hardware import DEMO_CONFIG
from acquisition.plan import ScanPlan, load_plan, save_plan
from acquisition.storage import ScanFile
from cordscope.cli import app

REPO = Path(__file__).resolve().parents[1]
SECTION = "rat01-Th7"
SENSOR_PX = "512"  # 66 tiles of rat01-Th7 at 10x: the quickest whole-section scan
WIDE = {"COLUMNS": "200"}  # a wide terminal, so rich tables show whole section ids

runner = CliRunner()


def _one_section_plan(directory: Path, name: str = "one", **update: object) -> Path:
    """A plan of one demo section with a fixed focus, written to ``directory/name.yaml``."""
    plan = demo_plan(
        output=directory / f"{name}.h5",
        section_ids=[SECTION],
        focus={"strategy": "fixed", "z_um": 0.0},
        hardware_config=DEMO_CONFIG,
    )
    if update:
        plan = plan.model_copy(update=update)
    path = directory / f"{name}.yaml"
    save_plan(plan, path)
    return path


def _error_line(output: str) -> str:
    """The one line of a user error, checked to be alone and without a traceback."""
    lines = output.strip().splitlines()
    assert "Traceback" not in output, output
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    return lines[0]


def _section_row(output: str, section_id: str) -> list[str]:
    """The cells of a rich table's row for ``section_id``."""
    for line in output.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃|]", line) if c.strip()]
        if cells and cells[0] == section_id:
            return cells
    raise AssertionError(f"no table row for {section_id}:\n{output}")


# ------------------------------------------------------------ plan, validate


@pytest.fixture(scope="module")
def demo_plan_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``cordscope plan --demo`` (run in the repository: its plan names the demo config relative to it)."""
    out = tmp_path_factory.mktemp("plan") / "slide.yaml"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO)
        result = runner.invoke(app, ["plan", "--demo", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}: 24 sections" in result.output
    return out


def test_plan_demo_writes_a_valid_plan_of_every_section(demo_plan_file: Path) -> None:
    plan = load_plan(demo_plan_file)
    assert len(plan.sections) == 24
    assert len({s.id for s in plan.sections}) == 24
    assert {"rat01-Th7", "rat05-Th7", "rat03-lesion"} <= {s.id for s in plan.sections}
    assert plan.output == demo_plan_file.with_suffix(".h5") and plan.objective == "10x"
    assert not plan.output.exists()


def test_validate_says_ok_and_prints_tiles_per_section(demo_plan_file: Path, monkeypatch) -> None:
    monkeypatch.chdir(REPO)
    result = runner.invoke(app, ["validate", str(demo_plan_file)], env=WIDE)
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"ok: {demo_plan_file}")
    counts = {s.id: int(_section_row(result.output, s.id)[1]) for s in load_plan(demo_plan_file).sections}
    assert all(n > 0 for n in counts.values())
    total = re.search(r"^(\d+) tiles of \d+ × \d+ µm at 0\.65 µm/px, (\d+) images", result.output, re.M)
    assert total, result.output
    assert int(total[1]) == sum(counts.values()) and int(total[2]) == 2 * int(total[1])


def test_demo_plan_validates_from_any_folder(demo_plan_file: Path, monkeypatch) -> None:
    monkeypatch.chdir(demo_plan_file.parent)
    result = runner.invoke(app, ["validate", demo_plan_file.name])
    assert result.exit_code == 0, result.output


def _unknown_objective(text: str) -> str:
    return text.replace("objective: 10x", "objective: 60x")


def _unclosed_list(text: str) -> str:
    return text.replace("overlap_pct: 10.0", "overlap_pct: [10.0")


def _negative_exposure(text: str) -> str:
    return text.replace("exposure_ms: 50.0", "exposure_ms: -5")


@pytest.mark.parametrize(
    ("edit", "needles"),
    [
        (_unknown_objective, ("objective: unknown objective '60x'", "10x, 20x, 4x")),
        (_unclosed_list, ("one.yaml:", "invalid YAML", "line")),
        (_negative_exposure, ("one.yaml:", "channels[1].exposure_ms", "-5")),
    ],
    ids=["unknown-objective", "yaml-syntax", "negative-exposure"],
)
def test_validate_of_a_bad_plan_is_one_error_line(tmp_path: Path, edit, needles) -> None:
    plan_file = _one_section_plan(tmp_path)
    text = plan_file.read_text()
    assert edit(text) != text, "the edit did not apply: the plan's YAML changed"
    plan_file.write_text(edit(text))
    result = runner.invoke(app, ["validate", str(plan_file)])
    assert result.exit_code == 2, result.output
    line = _error_line(result.output)
    for needle in needles:
        assert needle in line, line


def test_validate_line_number_points_at_the_bad_field(tmp_path: Path) -> None:
    plan_file = _one_section_plan(tmp_path)
    text = _negative_exposure(plan_file.read_text())
    plan_file.write_text(text)
    result = runner.invoke(app, ["validate", str(plan_file)])
    line_no = int(re.search(r"one\.yaml:(\d+):", _error_line(result.output))[1])
    assert "exposure_ms: -5" in text.splitlines()[line_no - 1]


# -------------------------------------------------------------- scan, info


@pytest.fixture(scope="module")
def scanned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A finished one-section scan: the plan's path and what ``cordscope scan`` printed."""
    plan_file = _one_section_plan(tmp_path_factory.mktemp("scan"))
    # the scan alone; its live analysis is tested in test_scan_analyses_live_and_analyze_reruns
    result = runner.invoke(app, ["scan", str(plan_file), "--sensor-px", SENSOR_PX, "--no-analysis"], env=WIDE)
    assert result.exit_code == 0, result.output
    return plan_file, result.output


def test_scan_prints_the_summary_table_and_file_size(scanned: tuple[Path, str]) -> None:
    plan_file, output = scanned
    path = load_plan(plan_file).output
    with ScanFile.open(path) as scan:
        summary = scan.summary()
    n = summary.n_tiles
    assert summary.complete and n > 10
    assert "Scan finished" in output
    assert _section_row(output, SECTION)[1:] == [str(n), "0", str(n)]  # done, failed, tiles
    size_mb = summary.file_size_bytes / 1e6
    assert re.search(rf"{re.escape(str(path))}: {n}/{n} tiles done, 0 failed, {size_mb:.1f} MB, ", output)
    assert "Traceback" not in output and "error" not in output.lower()


def test_info_lists_the_section_done_and_complete(scanned: tuple[Path, str]) -> None:
    path = load_plan(scanned[0]).output
    result = runner.invoke(app, ["info", str(path)], env=WIDE)
    assert result.exit_code == 0, result.output
    with ScanFile.open(path) as scan:
        n = scan.summary().n_tiles
    row = _section_row(result.output, SECTION)
    assert row[1:] == ["rat01", "intact", "Th7", "coronal", str(n), "0", "0", str(n)]
    assert re.search(rf"^{n}/{n} tiles, [\d.]+ MB, [\d.]+ s; complete$", result.output, re.M), result.output


def test_info_shows_whole_section_ids_on_an_80_column_terminal(scanned: tuple[Path, str]) -> None:
    path = load_plan(scanned[0]).output
    result = runner.invoke(app, ["info", str(path)], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    _section_row(result.output, SECTION)


def test_scan_of_an_existing_output_leaves_the_file_alone(scanned: tuple[Path, str]) -> None:
    path = load_plan(scanned[0]).output
    before = path.stat()
    result = runner.invoke(app, ["scan", str(scanned[0]), "--sensor-px", SENSOR_PX])
    assert str(path) in result.output and "already exists" in result.output, result.output
    after = path.stat()
    assert (after.st_mtime_ns, after.st_size) == (before.st_mtime_ns, before.st_size)


@pytest.mark.parametrize(
    ("how", "needle"),
    [("output-exists", "already exists"), ("unknown-objective", "unknown objective '60x'")],
    ids=["output-exists", "unknown-objective"],
)
def test_scan_of_a_plan_that_cannot_run_is_one_error_line(tmp_path: Path, how: str, needle: str) -> None:
    if how == "output-exists":
        plan_file = _one_section_plan(tmp_path)
        load_plan(plan_file).output.write_bytes(b"precious")
        needle = f"{tmp_path / 'one.h5'}' {needle}"
    else:
        plan_file = _one_section_plan(tmp_path, objective="60x")
    result = runner.invoke(app, ["scan", str(plan_file), "--sensor-px", SENSOR_PX])
    assert result.exit_code == 2, result.output
    assert needle in _error_line(result.output)


@pytest.mark.parametrize(
    "args",
    [[], ["plan.yaml", "--demo"], ["--demo", "--resume", "scan.h5"], ["plan.yaml", "--resume", "scan.h5"]],
    ids=["none", "plan-and-demo", "demo-and-resume", "plan-and-resume"],
)
def test_scan_needs_exactly_one_of_plan_demo_resume(tmp_path: Path, monkeypatch, args: list[str]) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["scan", *args])
    assert result.exit_code == 2, result.output
    expected = "error: give exactly one of: a PLAN.yaml, --demo, or --resume FILE.h5"
    assert _error_line(result.output) == expected


def test_resume_of_a_missing_file_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "never-scanned.h5"
    result = runner.invoke(app, ["scan", "--resume", str(missing), "--sensor-px", SENSOR_PX])
    assert result.exit_code == 2, result.output
    assert _error_line(result.output) == f"error: scan file not found: {missing}"


def test_scan_with_failing_tiles_exits_1_and_prints_failed_counts(tmp_path: Path) -> None:
    # every 2nd stage move fails, and with no retries its tile fails: half the tiles
    faulty = tmp_path / "faulty.cfg"
    faulty.write_text(DEMO_CONFIG.read_text() + "\n#py Property,XYStage,FailEveryNthMove,2\n")
    base: ScanPlan = load_plan(_one_section_plan(tmp_path))
    plan_file = _one_section_plan(
        tmp_path,
        "faulty",
        hardware_config=faulty,
        reliability=base.reliability.model_copy(update={"max_retries": 0}),
    )
    # the scan alone; its live analysis is tested in test_scan_analyses_live_and_analyze_reruns
    result = runner.invoke(app, ["scan", str(plan_file), "--sensor-px", SENSOR_PX, "--no-analysis"], env=WIDE)
    assert result.exit_code == 1, result.output
    with ScanFile.open(tmp_path / "faulty.h5") as scan:
        s = scan.summary().sections[SECTION]
    assert s.failed > 10 and s.done + s.failed == s.n_tiles
    assert _section_row(result.output, SECTION)[1:] == [str(s.done), str(s.failed), str(s.n_tiles)]
    assert f"{s.done}/{s.n_tiles} tiles done, {s.failed} failed" in result.output
    why = rf"^tile {SECTION}/\d+ failed after 0 retries: XYStage: move \d+ .* motor stalled"
    assert len(re.findall(why, result.output, re.M)) == s.failed, result.output
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_overview_writes_a_plan_of_every_demo_section(tmp_path):
    from shapely.geometry import Point, Polygon

    from acquisition.demo.slide import demo_slide
    from acquisition.overview import load_overview
    from acquisition.plan import load_plan

    out = tmp_path / "slide.yaml"
    result = runner.invoke(app, ["overview", "--out", str(out)])
    assert result.exit_code == 0, result.output
    plan = load_plan(out)
    truth = demo_slide().sections
    assert [s.id for s in plan.sections] == [f"S{i:02d}" for i in range(1, len(truth) + 1)]
    assert all(s.animal == "" and s.group == "" for s in plan.sections)  # for the user to fill in
    polygons = [Polygon(s.polygon_um) for s in plan.sections]
    for section in truth:  # every section found exactly once, and no false ones
        centre = Point(section.outline.mean(axis=0))
        assert sum(p.contains(centre) for p in polygons) == 1, section.section_id
    overview = load_overview(tmp_path / "slide-overview.tif")
    assert overview.objective == "4x" and overview.image.ndim == 2
    assert plan.objective == "10x" and plan.output == out.with_suffix(".h5")


@pytest.mark.slow
def test_scan_analyses_live_and_analyze_reruns(tmp_path):
    import csv

    import h5py

    from acquisition.demo.plans import demo_plan
    from acquisition.plan import save_plan

    plan_path = tmp_path / "plan.yaml"
    scan_path = tmp_path / "scan.h5"
    plan = demo_plan(output=scan_path, section_ids=["rat05-Th7"], focus={"strategy": "fixed", "z_um": 0.0})
    save_plan(plan, plan_path)
    figures = tmp_path / "figures"
    scanned = runner.invoke(
        app, ["scan", str(plan_path), "--sensor-px", "512", "--figures", str(figures)], env=WIDE
    )
    assert scanned.exit_code == 0, scanned.output
    assert "rubrospinal_territory" in scanned.output and "% axonal area" in scanned.output
    assert (figures / "scan-rat05-Th7.png").is_file()
    live = (tmp_path / "scan.regions.csv").read_text()
    result = runner.invoke(app, ["analyze", str(scan_path)])
    assert result.exit_code == 0, result.output
    for region in ("section", "white_matter", "gray_matter", "rubrospinal_territory"):
        assert region in result.output
    csv_path = tmp_path / "scan.regions.csv"
    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    by_region = {r["region"]: r for r in rows if r["section_id"] == "rat05-Th7"}
    assert float(by_region["rubrospinal_territory"]["pct_axonal_area"]) > float(
        by_region["section"]["pct_axonal_area"]
    )
    assert csv_path.read_text() == live  # offline gives the live numbers
    with h5py.File(scan_path, "r") as f:
        assert "analysis" in f["sections/rat05-Th7"]
