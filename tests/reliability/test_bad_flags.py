"""Bad options and paths on the command line: exit code 2, one line, before any work or motion.

Every case is one command line a user could type against a finished scan
(``{scan}``), its plan (``{plan}``), its config (``{cfg}``) and folder
(``{dir}``, which also holds a file ``notes.txt`` and a folder ``sub.png``).
Values typer would accept (``inf``, ``nan``, out-of-range numbers), paths of
the wrong kind, outputs that are inputs, combinations that mean nothing and
plain usage errors are all refused the same way.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.helpers import assert_refused, run_cli

# (id, argv template, needles)
CASES: list[tuple[str, str, tuple[str, ...]]] = [
    # ---- the command itself
    ("no-such-command", "frobnicate", ("No such command",)),
    ("no-such-option", "info {scan} --bogus", ("No such option: --bogus",)),
    ("validate-no-plan", "validate", ("Missing argument",)),
    ("info-no-file", "info", ("Missing argument",)),
    ("analyze-no-files", "analyze", ("Missing argument",)),
    ("export-no-format", "export {scan}", ("Missing option", "--format")),
    ("snap-no-out", "snap --demo", ("Missing option", "--out")),
    # ---- scan
    ("scan-nothing", "scan", ("exactly one of",)),
    ("scan-plan-and-demo", "scan {plan} --demo", ("exactly one of",)),
    ("scan-plan-and-resume", "scan {plan} --resume {scan}", ("exactly one of",)),
    ("scan-resume-out", "scan --resume {scan} --out {dir}/x.h5", ("--resume", "--out")),
    ("scan-resume-overwrite", "scan --resume {scan} --overwrite", ("--resume", "--overwrite")),
    ("scan-demo-config", "scan --demo --config {cfg}", ("--demo",)),
    ("scan-sensor-zero", "scan {plan} --sensor-px 0", ("--sensor-px",)),
    ("scan-sensor-huge", "scan {plan} --sensor-px 100000", ("--sensor-px",)),
    ("scan-sensor-text", "scan {plan} --sensor-px big", ("--sensor-px",)),
    (
        "scan-figures-a-file",
        "scan {plan} --overwrite --out {dir}/new.h5 --figures {dir}/notes.txt",
        ("--figures",),
    ),
    ("scan-figures-the-scan", "scan --resume {scan} --figures {scan}", ("--figures",)),
    ("scan-out-a-folder", "scan {plan} --out {dir}", ("is a folder",)),
    ("scan-out-the-plan", "scan {plan} --out {plan} --overwrite", ("the plan",)),
    ("scan-out-the-config", "scan {plan} --out {cfg} --overwrite", ("the hardware config",)),
    ("scan-out-exists", "scan {plan}", ("already exists",)),
    ("scan-config-missing", "scan {plan} --config {dir}/none.cfg", ("none.cfg", "not found")),
    ("scan-plan-missing", "scan {dir}/none.yaml", ("none.yaml", "not found")),
    ("scan-plan-a-folder", "scan {dir}", ("is a folder",)),
    ("scan-resume-missing", "scan --resume {dir}/none.h5", ("none.h5", "not found")),
    ("scan-resume-not-a-scan", "scan --resume {plan}", ("not a readable HDF5 file",)),
    ("scan-resume-other-camera", "scan --resume {scan} --sensor-px 256", ("128×128", "256×256")),
    ("validate-config-missing", "validate {plan} --config {dir}/none.cfg", ("not found",)),
    ("validate-overwrite-a-folder", "validate {plan} --overwrite --config {dir}", ("not found",)),
    # ---- snap
    ("snap-jpg", "snap --demo --out {dir}/x.jpg", ("--out", ".tif or .png")),
    ("snap-out-a-folder", "snap --demo --out {dir}/sub.png", ("is a folder",)),
    ("snap-out-under-a-file", "snap --demo --out {dir}/notes.txt/x.png", ("is a file",)),
    ("snap-exposure-zero", "snap --demo --out {dir}/x.png --exposure-ms 0", ("--exposure-ms",)),
    ("snap-exposure-nan", "snap --demo --out {dir}/x.png --exposure-ms nan", ("--exposure-ms", "finite")),
    ("snap-exposure-inf", "snap --demo --out {dir}/x.png --exposure-ms inf", ("--exposure-ms", "finite")),
    ("snap-x-nan", "snap --demo --out {dir}/x.png --x-um nan --y-um 0", ("--x-um", "finite")),
    ("snap-only-x", "snap --demo --out {dir}/x.png --x-um 30000", ("both --x-um and --y-um",)),
    ("snap-off-stage", "snap --demo --out {dir}/x.png --x-um 1e9 --y-um 0", ("outside",)),
    ("snap-channel-unknown", "snap --demo --out {dir}/x.png --channel GFP", ("--channel GFP",)),
    ("snap-objective-unknown", "snap --demo --out {dir}/x.png --objective 60x", ("--objective 60x",)),
    ("snap-demo-and-config", "snap --demo --config {cfg} --out {dir}/x.png", ("--demo",)),
    ("snap-config-missing", "snap --config {dir}/none.cfg --out {dir}/x.png", ("not found",)),
    # ---- analyze
    ("analyze-bin-zero", "analyze {scan} --bin-um 0", ("--bin-um", "> 0")),
    ("analyze-bin-negative", "analyze {scan} --bin-um -5", ("--bin-um",)),
    ("analyze-bin-inf", "analyze {scan} --bin-um inf", ("--bin-um", "finite")),
    ("analyze-bin-nan", "analyze {scan} --bin-um nan", ("--bin-um", "finite")),
    ("analyze-dark-nan", "analyze {scan} --dark-offset-adu nan", ("--dark-offset-adu",)),
    ("analyze-dark-huge", "analyze {scan} --dark-offset-adu 70000", ("--dark-offset-adu", "< 65536")),
    ("analyze-dark-negative", "analyze {scan} --dark-offset-adu -1", ("--dark-offset-adu", ">= 0")),
    ("analyze-workers-zero", "analyze {scan} --workers 0", ("--workers",)),
    ("analyze-workers-negative", "analyze {scan} --workers -2", ("--workers",)),
    ("analyze-workers-text", "analyze {scan} --workers many", ("--workers",)),
    ("analyze-workers-and-bin", "analyze {scan} --workers 2 --bin-um 10", ("serial runs",)),
    ("analyze-missing", "analyze {dir}/none.h5", ("none.h5",)),
    ("analyze-a-plan", "analyze {plan}", ("not a readable HDF5 file",)),
    ("analyze-regions-missing", "analyze {scan} --regions {dir}/none.geojson", ("none.geojson",)),
    ("analyze-regions-not-json", "analyze {scan} --regions {plan}", ("plan.yaml",)),
    ("analyze-regions-two-scans", "analyze {scan} {scan} --regions {dir}/r.geojson", ("one scan file",)),
    # ---- export
    ("export-format-unknown", "export {scan} --format tiff", ("unknown export format 'tiff'",)),
    ("export-bdv-no-out", "export {scan} --format bdv", ("--out",)),
    ("export-bdv-over-scan", "export {scan} --format bdv --out {dir}", ("scan file", "input")),
    ("export-bdv-out-the-scan", "export {scan} --format bdv --out {scan}", ("input",)),
    ("export-zarr-out-a-file", "export {scan} --format ome-zarr --out {dir}/notes.txt", ("is a file",)),
    ("export-qupath-out-the-scan", "export {scan} --format qupath --out {scan}", ("input",)),
    ("export-csv-over-scan", "export {scan} --format csv --out {scan}", ("input",)),
    ("export-csv-over-plan", "export {scan} --format csv --out {plan}", ("not a .csv",)),
    ("export-missing", "export {dir}/none.h5 --format csv", ("none.h5",)),
    # ---- regions
    ("regions-over-scan", "regions {scan} --export {scan}", ("input",)),
    ("regions-a-folder", "regions {scan} --export {dir}", ("is a folder",)),
    ("regions-txt", "regions {scan} --export {dir}/r.txt", (".geojson",)),
    ("regions-missing-scan", "regions {dir}/none.h5 --export {dir}/r.geojson", ("none.h5",)),
    # ---- study
    ("study-out-a-file", "study {scan} --out {dir}/notes.txt", ("--out", "is a file")),
    ("study-out-the-scan", "study {scan} --out {scan}", ("--out",)),
    ("study-alpha-zero", "study {scan} --out {dir}/s --alpha 0", ("--alpha",)),
    ("study-alpha-big", "study {scan} --out {dir}/s --alpha 1.5", ("--alpha",)),
    ("study-alpha-nan", "study {scan} --out {dir}/s --alpha nan", ("--alpha", "finite")),
    ("study-a-plan", "study {plan} --out {dir}/s", ("plan.yaml",)),
    # ---- plan, overview, devices, demo-cohort
    ("plan-not-demo", "plan --out {dir}/p.yaml", ("--demo",)),
    ("plan-txt", "plan --demo --out {dir}/p.txt", (".yaml",)),
    ("plan-out-a-folder", "plan --demo --out {dir}/sub.png", ("is a folder",)),
    ("plan-scan-file-is-plan", "plan --demo --out {dir}/p.yaml --scan-file {dir}/p.yaml", ("input",)),
    ("plan-objective-unknown", "plan --demo --out {dir}/p.yaml --objective 60x", ("--objective 60x",)),
    ("overview-txt", "overview --out {dir}/o.txt", (".yaml",)),
    ("overview-exposure-zero", "overview --out {dir}/o.yaml --exposure-ms 0", ("--exposure-ms",)),
    ("overview-region-inverted", "overview --out {dir}/o.yaml --region-um 50000 0 20000 25000", ("x0 < x1",)),
    ("overview-region-nan", "overview --out {dir}/o.yaml --region-um nan 0 20000 25000", ("finite",)),
    ("devices-config-missing", "devices --config {dir}/none.cfg", ("not found",)),
    ("cohort-out-a-file", "demo-cohort --out {dir}/notes.txt", ("is a file",)),
    ("cohort-no-animals", "demo-cohort --out {dir}/c --animals-per-group 0", ("animals_per_group",)),
    ("cohort-sensor-tiny", "demo-cohort --out {dir}/c --sensor-px 2", ("--sensor-px",)),
]


@pytest.fixture
def folder(scan_copy: Path) -> Path:
    """The finished scan's folder, with a file ``notes.txt`` and a folder ``sub.png`` beside it."""
    (scan_copy.parent / "notes.txt").write_text("notes")
    (scan_copy.parent / "sub.png").mkdir()
    return scan_copy.parent


@pytest.mark.parametrize(("argv", "needles"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_command_line_is_refused(folder: Path, monkeypatch, argv: str, needles: tuple[str, ...]) -> None:
    words = argv.format(
        scan=folder / "scan.h5", plan=folder / "plan.yaml", cfg=folder / "rig.cfg", dir=folder
    ).split()
    run = run_cli(words, monkeypatch, inputs=[folder])
    assert_refused(run, *needles)
    assert not run.motion.snaps
    assert not (folder / "x.png").exists() and not (folder / "s").exists() and not (folder / "c").exists()


def test_cases_are_distinct() -> None:
    assert len({c[0] for c in CASES}) == len({c[1] for c in CASES}) == len(CASES) >= 85
