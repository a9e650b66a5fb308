"""Devices that fail or stop answering (the demo devices' fault properties), through ``cordscope scan``.

A fault the scan can ride out (a snap or a move that fails now and then, a
short hang) is retried and shown; tiles that keep failing are marked failed
and the command exits 1 with the file resumable; a device that stops
answering, or a focus map that cannot work, ends the command with exit code
2 and one line. Never a traceback.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from acquisition.calibration import DARK_FRAMES_PER_CHANNEL
from acquisition.storage import ScanFile, TileStatus
from tests.reliability.helpers import SECTION, fault_config, run_cli, write_plan

REPO = Path(__file__).resolve().parents[2]

# (id, device properties, plan fields, exit code, tiles done ("all", "none"), words in the output)
CASES = [
    ("snap-fails-sometimes", ("Camera,FailEveryNthSnap,3",), {}, 0, "all", ("retrying (1 of 2)",)),
    ("move-fails-sometimes", ("XYStage,FailEveryNthMove,2",), {}, 0, "all", ("XYStage: move", "retrying")),
    (
        "focus-fails-sometimes",
        ("ZStage,FailEveryNthMove,2",),
        {"focus": {"strategy": "fixed", "z_um": 2.0}},
        0,
        "all",
        (),
    ),
    (
        "short-hangs",
        ("Camera,HangEveryNthSnap,10", "Camera,Hang_s,0.6"),
        {"reliability": {"max_retries": 2, "tile_timeout_s": 0.4}},
        0,
        "all",
        ("no answer within 0.4 s", "retrying"),
    ),
    ("snap-always-fails", ("Camera,FailEveryNthSnap,1",), {}, 1, "none", ("failed after 2 retries",)),
    ("move-always-fails", ("XYStage,FailEveryNthMove,1",), {}, 1, "none", ("motor stalled",)),
    (
        "no-retries",
        ("Camera,FailEveryNthSnap,4",),
        {"reliability": {"max_retries": 0, "tile_timeout_s": 5}},
        1,
        "some",
        ("failed after 0 retries",),
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("properties", "plan_fields", "code", "done", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_device_faults_during_a_scan(
    tmp_path: Path, monkeypatch, properties, plan_fields, code: int, done: str, words: tuple[str, ...]
) -> None:
    plan = write_plan(tmp_path, config=fault_config(tmp_path, *properties), **plan_fields)
    run = run_cli(["scan", plan, "--no-analysis"], monkeypatch)
    output = run.stdout + run.stderr
    assert run.exception is None and "Traceback" not in output, output
    assert run.exit_code == code, output
    for word in words:
        assert word in output, (word, output)
    with ScanFile.open(tmp_path / "scan.h5") as scan:
        status = scan.section(SECTION).tile_status
    n_done = int(np.count_nonzero(status == TileStatus.DONE))
    assert {"all": n_done == status.size, "none": n_done == 0, "some": 0 < n_done < status.size}[done]
    if code == 1:
        assert "failed" in run.stdout and not run.stderr.strip(), output


@pytest.mark.slow
def test_failed_tiles_are_acquired_on_resume_once_the_device_behaves(tmp_path: Path, monkeypatch) -> None:
    config = fault_config(tmp_path, "Camera,FailEveryNthSnap,1")
    plan = write_plan(tmp_path, config=config)
    assert run_cli(["scan", plan, "--no-analysis"], monkeypatch).exit_code == 1
    config.write_text(config.read_text().replace("#py Property,Camera,FailEveryNthSnap,1\n", ""))
    run = run_cli(["scan", "--resume", tmp_path / "scan.h5", "--no-analysis"], monkeypatch)
    assert run.exit_code == 0, run.stdout + run.stderr
    with ScanFile.open(tmp_path / "scan.h5") as scan:
        assert scan.summary().complete


@pytest.mark.parametrize(
    ("properties", "needle"),
    [
        (("Camera,FailEveryNthSnap,1",), "snap failed"),
        (("XYStage,FailEveryNthMove,1",), "XYStage"),
    ],
    ids=["camera", "stage"],
)
def test_a_focus_map_that_cannot_work_is_one_line(
    tmp_path: Path, monkeypatch, properties, needle: str
) -> None:
    focus = {"strategy": "focus_map", "points_per_section": 1, "z_um": 0.0}
    plan = write_plan(tmp_path, config=fault_config(tmp_path, *properties), focus=focus)
    run = run_cli(["scan", plan, "--no-analysis"], monkeypatch)
    line = run.error_line()
    assert run.exit_code == 2 and needle in line, line
    assert not (tmp_path / "scan.h5").exists()


def test_a_focus_map_over_bare_glass_is_one_line(tmp_path: Path, monkeypatch) -> None:
    focus = {"strategy": "focus_map", "points_per_section": 2, "z_um": 0.0}
    glass = [[70_000.0, 20_000.0], [70_400.0, 20_000.0], [70_400.0, 20_400.0], [70_000.0, 20_400.0]]
    plan = write_plan(tmp_path, focus=focus)
    text = plan.read_text()
    import yaml

    data = yaml.safe_load(text)
    data["sections"][0]["polygon_um"] = glass
    plan.write_text(yaml.safe_dump(data))
    run = run_cli(["scan", plan, "--no-analysis"], monkeypatch)
    line = run.error_line()
    assert run.exit_code == 2 and "no focus point succeeded" in line, line


#: Snaps of the dark frames every scan takes first (two channels).
DARK_SNAPS = 2 * DARK_FRAMES_PER_CHANNEL


@pytest.mark.slow
@pytest.mark.parametrize(
    ("nth_snap", "where"),
    [(DARK_SNAPS + 4, "during the focus map"), (3, "during preparation")],
    ids=["focus-map", "dark-frames"],
)
def test_a_camera_that_never_answers_before_the_scan_ends_the_command(
    tmp_path: Path, nth_snap: int, where: str
) -> None:
    """A subprocess: the command exits 2 within seconds although the hung call never returns."""
    config = fault_config(tmp_path, f"Camera,HangEveryNthSnap,{nth_snap}", "Camera,Hang_s,3600")
    focus = {"strategy": "focus_map", "points_per_section": 1, "z_um": 0.0}
    plan = write_plan(
        tmp_path, config=config, focus=focus, reliability={"max_retries": 1, "tile_timeout_s": 0.5}
    )
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cordscope.cli", "scan", str(plan), "--no-analysis"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert proc.returncode == 2, (out, err)
    assert len(lines) == 1 and f"not answering {where}" in lines[0], err
    assert time.monotonic() - t0 < 60
