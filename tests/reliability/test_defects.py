"""One regression test per defect of issue 15 (each docstring says how it failed before the fix)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import namedtuple
from pathlib import Path

import h5py
import numpy as np
import pytest

from acquisition.controller import ScanController
from acquisition.engine import DeviceTimeoutError, unanswered_device_calls
from acquisition.hardware import build_core
from acquisition.plan import load_plan, save_plan, validate_plan
from acquisition.session import ScanSession
from acquisition.storage import ScanFile, ScanWriter, TileStatus
from tests.reliability.helpers import (
    SECTION,
    assert_refused,
    fault_config,
    file_digests,
    run_cli,
    small_plan,
    write_plan,
)

REPO = Path(__file__).resolve().parents[2]
CORDSCOPE = [sys.executable, "-m", "cordscope.cli"]


def _status(path: Path) -> np.ndarray:
    with ScanFile.open(path) as scan:
        return scan.section(SECTION).tile_status


# --------------------------------------------------------------- defect 1


@pytest.mark.parametrize(
    "args",
    [
        ["export", "{scan}", "--format", "bdv", "--out", "{dir}", "--overwrite"],
        ["export", "{scan}", "--format", "bdv", "--out", "{dir}"],
        ["export", "{scan}", "--format", "csv", "--out", "{scan}"],
        ["regions", "{scan}", "--export", "{scan}"],
        ["scan", "{dir}/plan.yaml", "--out", "{dir}/plan.yaml", "--overwrite"],
        ["scan", "{dir}/plan.yaml", "--out", "{dir}/rig.cfg", "--overwrite"],
    ],
    ids=["bdv-overwrite", "bdv", "csv-over-scan", "regions-over-scan", "scan-over-plan", "scan-over-cfg"],
)
def test_1_no_command_writes_over_or_deletes_its_input(scan_copy: Path, monkeypatch, args) -> None:
    """Before: ``export DIR/scan.h5 --format bdv --out DIR --overwrite`` unlinked the scan itself and
    then failed with "scan file not found"; without --overwrite it advised --overwrite; the CSV
    export traced back (FileExistsError); regions --export and scan --out wrote over their input.
    """
    folder = scan_copy.parent
    argv = [a.format(scan=scan_copy, dir=folder) for a in args]
    run = run_cli(argv, monkeypatch, inputs=[scan_copy, folder / "plan.yaml", folder / "rig.cfg"])
    line = assert_refused(run)
    assert "input" in line or "itself" in line, line
    assert scan_copy.is_file()


# --------------------------------------------------------------- defect 3


def test_3_overwrite_refuses_a_file_a_running_scan_writes(scan_copy: Path, monkeypatch) -> None:
    """Before: ``scan --overwrite`` replaced the file under the running scan (which then wrote into
    the unlinked file and reported every tile done)."""
    plan = write_plan(scan_copy.parent, name="other.yaml", output=scan_copy)
    writer = ScanWriter.open_for_resume(scan_copy)  # another scan holds the file
    try:
        for command in (["validate", plan, "--overwrite"], ["scan", plan, "--overwrite"]):
            run = run_cli(command, monkeypatch, inputs=[scan_copy])
            assert_refused(run, "in use")
    finally:
        writer.close()


# --------------------------------------------------------------- defect 4


@pytest.mark.slow
def test_4_a_camera_hanging_in_the_focus_map_fails_the_scan_at_once(tmp_path: Path) -> None:
    """Before: the focus map's snaps had no watchdog: the scan waited out every hang (4 s each here;
    forever for a camera that never answers)."""
    config = fault_config(tmp_path, "Camera,HangEveryNthSnap,5", "Camera,Hang_s,4")
    plan = small_plan(
        tmp_path / "scan.h5",
        config=config,
        focus={"strategy": "focus_map", "points_per_section": 2, "z_um": 0.0},
        reliability={"max_retries": 1, "tile_timeout_s": 0.5},
    )
    core = build_core(config)
    controller = ScanController(core, plan)
    t0 = time.monotonic()
    with pytest.raises(DeviceTimeoutError):
        controller.run()
    elapsed = time.monotonic() - t0
    deadline = time.monotonic() + 15
    while unanswered_device_calls() and time.monotonic() < deadline:
        time.sleep(0.1)  # the demo camera answers after 4 s; then the core can be closed
    core.close()
    assert elapsed < 3, elapsed
    assert controller.result is not None and controller.result.state == "failed"
    assert "device not answering during the focus map" in controller.result.message
    assert not plan.output.exists()


def test_4_focus_map_moves_are_retried(tmp_path: Path) -> None:
    """Before: a failed XY move of the focus map was not retried: the scan failed before any tile."""
    config = fault_config(tmp_path, "XYStage,FailEveryNthMove,2")
    focus = {"strategy": "focus_map", "points_per_section": 2, "z_um": 0.0}
    plan = small_plan(tmp_path / "scan.h5", config=config, focus=focus)
    core = build_core(config)
    try:
        controller = ScanController(core, plan)
        result = controller.run()
    finally:
        core.close()
    assert result.state == "finished" and result.tiles_done == result.tiles_total, result
    assert controller.n_retried_calls > 0


def test_4_abort_during_the_focus_map_stops_the_scan(tmp_path: Path) -> None:
    """Before: abort (Ctrl-C) during the focus map was ignored and the whole scan ran."""
    config = fault_config(tmp_path, "Camera,ExposureTiming,Real")
    plan = small_plan(tmp_path / "scan.h5", config=config, focus={"strategy": "focus_map", "z_um": 0.0})
    core = build_core(config)
    try:
        session = ScanSession(core, plan)
        focusing = threading.Event()
        session.events.state_changed.connect(lambda s: s == "focusing" and focusing.set())
        session.start()
        assert focusing.wait(60)
        session.abort("interrupted from the keyboard")
        result = session.wait(60)
    finally:
        core.close()
    assert result.scan.state == "aborted", result.scan
    assert result.scan.tiles_done == 0 and "focus map" in result.scan.message
    assert not plan.output.exists()


# --------------------------------------------------------------- defect 5


@pytest.mark.slow
@pytest.mark.parametrize("interrupt", [False, True], ids=["device-dead", "ctrl-c"])
def test_5_a_hung_device_never_keeps_the_command_alive(tmp_path: Path, interrupt: bool) -> None:
    """Before: after "device not answering" the command never ended (Ctrl-C ignored) and exited 1."""
    config = fault_config(tmp_path, "Camera,HangEveryNthSnap,3", "Camera,Hang_s,3600")
    plan = write_plan(tmp_path, config=config, reliability={"max_retries": 1, "tile_timeout_s": 0.5})
    proc = subprocess.Popen(
        [*CORDSCOPE, "scan", str(plan), "--no-analysis"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        if interrupt:
            deadline = time.monotonic() + 60
            while not (tmp_path / "scan.h5").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(1.0)  # hung in the third snap
            proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err, err
    if interrupt:
        assert proc.returncode == 1, (proc.returncode, out, err)
        assert "resumable" in out + err
    else:
        assert proc.returncode == 2, (proc.returncode, out, err)
        assert len(lines) == 1 and "not answering" in lines[0], err


# --------------------------------------------------------------- defect 6


def test_6_validate_and_writer_agree_on_free_space(tmp_path: Path, monkeypatch) -> None:
    """Before: validate asked for estimate × 1.1, the writer for estimate + 64 MB, so a plan that
    validated failed on its first tile ("disk full")."""
    plan = write_plan(tmp_path)
    core = build_core(load_plan(plan).hardware_config)
    estimate = validate_plan(load_plan(plan), core).estimated_bytes
    core.close()
    usage = namedtuple("usage", "total used free")
    fake = usage(10**12, 0, int(estimate * 1.1) + 2**20)
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: fake)
    run = run_cli(["validate", plan], monkeypatch)
    assert_refused(run, "not enough free disk")


def test_6_disk_full_mid_scan_is_one_line_and_exit_2(tmp_path: Path, monkeypatch) -> None:
    """Before: disk full in the middle of a scan ended in an ``AssertionError`` traceback."""
    plan = write_plan(tmp_path)
    real = shutil.disk_usage
    usage = namedtuple("usage", "total used free")
    calls = {"n": 0}

    def filling(path):
        calls["n"] += 1
        free = 10**12 if calls["n"] < 12 else 10 * 2**20
        return usage(real(path).total, 0, free)

    monkeypatch.setattr(shutil, "disk_usage", filling)
    run = run_cli(["scan", plan, "--no-analysis"], monkeypatch)
    line = run.error_line()
    assert run.exit_code == 2 and "disk full" in line, line
    monkeypatch.setattr(shutil, "disk_usage", real)
    status = _status(tmp_path / "scan.h5")
    assert 0 < np.count_nonzero(status == TileStatus.DONE) < status.size


# --------------------------------------------------------------- defect 7


def test_7_relative_paths_resolve_against_the_plans_folder(tmp_path: Path, monkeypatch) -> None:
    """Before: ``output: scans/x.h5`` and ``hardware_config: rig.cfg`` resolved against the working
    folder (config not found), and a missing output folder passed validate, then failed the scan."""
    folder = tmp_path / "slide"
    folder.mkdir()
    plan_path = write_plan(folder)
    text = plan_path.read_text()
    text = text.replace(f"hardware_config: {folder / 'rig.cfg'}", "hardware_config: rig.cfg")
    text = text.replace(f"output: {folder / 'scan.h5'}", "output: scans/run-1/x.h5")
    plan_path.write_text(text)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    run = run_cli(["validate", plan_path], monkeypatch)
    assert run.exit_code == 0, run.stdout + run.stderr
    run = run_cli(["scan", plan_path, "--no-analysis"], monkeypatch)
    assert run.exit_code == 0, run.stdout + run.stderr
    assert (folder / "scans" / "run-1" / "x.h5").is_file()
    assert not (elsewhere / "scans").exists()


# --------------------------------------------------------------- defect 8


def _drop(name: str):
    def edit(f: h5py.File) -> None:
        del f[name]

    return edit


def _status_byte(f: h5py.File) -> None:
    f[f"sections/{SECTION}/tile_status"][3] = 7


@pytest.mark.parametrize(
    ("edit", "command", "needle"),
    [
        (_drop(f"sections/{SECTION}/tile_status"), "info", "tile_status"),
        (_drop(f"sections/{SECTION}/tile_meta"), "analyze", "tile_meta"),
        (_drop(f"sections/{SECTION}/tile_xy_um"), "export", "tile_xy_um"),
        (_drop("plan"), "resume", "plan"),
        (_status_byte, "info", "status 7"),
    ],
    ids=["info-no-status", "analyze-no-meta", "export-no-xy", "resume-no-plan", "info-status-7"],
)
def test_8_damaged_files_are_one_line_errors(scan_copy: Path, monkeypatch, edit, command, needle) -> None:
    """Before: ``KeyError``/``ValueError`` tracebacks from info, analyze, export and scan --resume."""
    with h5py.File(scan_copy, "r+") as f:
        edit(f)
    argv = {
        "info": ["info", scan_copy],
        "analyze": ["analyze", scan_copy],
        "export": ["export", scan_copy, "--format", "csv", "--out", scan_copy.parent / "out.csv"],
        "resume": ["scan", "--resume", scan_copy],
    }[command]
    run = run_cli(argv, monkeypatch, inputs=[scan_copy])
    assert_refused(run, needle)


def test_8_resume_repairs_a_bad_status_byte_and_acquires_the_tile(scan_copy: Path, monkeypatch) -> None:
    """Before: resuming a file with a status byte 7 stored nothing yet printed "Scan finished"."""
    with h5py.File(scan_copy, "r+") as f:
        f[f"sections/{SECTION}/tile_status"][3] = 7
    run = run_cli(["scan", "--resume", scan_copy, "--no-analysis"], monkeypatch)
    assert run.exit_code == 0, run.stdout + run.stderr
    assert "status 7" in run.stdout, run.stdout
    assert (_status(scan_copy) == TileStatus.DONE).all()


def test_8_repair_of_a_truncated_tail_says_what_it_lost(scan_copy: Path, monkeypatch) -> None:
    """Before: repairing a truncated file zero-padded its analysis datasets without a word, and
    ``info`` told a command-line user to call ``ScanWriter.open_for_resume``."""
    size = scan_copy.stat().st_size
    os.truncate(scan_copy, size - 4096)
    run = run_cli(["info", scan_copy], monkeypatch)
    line = assert_refused(run, "cordscope scan --resume")
    assert "ScanWriter" not in line
    run = run_cli(["scan", "--resume", scan_copy, "--no-analysis"], monkeypatch)
    assert "repaired" in run.stdout and "lost" in run.stdout, run.stdout + run.stderr


# --------------------------------------------------------------- defect 9


def test_9_a_plan_beyond_the_machines_memory_is_refused(tmp_path: Path, monkeypatch) -> None:
    """Before: an 83,000-tile section validated, then the live analysis ran out of memory."""
    plan = write_plan(tmp_path, objective="20x")
    data = load_plan(plan)
    # 10 x 10 mm on an analysis grid of the camera's pixels: ~140 GB of grids, ~4 GB of tiles
    huge = [(20_000.0, 5_000.0), (30_000.0, 5_000.0), (30_000.0, 15_000.0), (20_000.0, 15_000.0)]
    big = data.model_copy(
        update={
            "sections": [data.sections[0].model_copy(update={"polygon_um": huge})],
            "analysis": data.analysis.model_copy(update={"mosaic_pixel_um": 0.5}),
        }
    )
    save_plan(big, plan)
    run = run_cli(["validate", plan], monkeypatch)
    assert_refused(run, "memory")


# -------------------------------------------------------------- defect 10


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["analyze", "{scan}", "--bin-um", "inf"], "--bin-um"),
        (["analyze", "{scan}", "--bin-um", "nan"], "--bin-um"),
        (["analyze", "{scan}", "--dark-offset-adu", "1e12"], "--dark-offset-adu"),
        (["analyze", "{scan}", "--dark-offset-adu", "-5"], "--dark-offset-adu"),
        (["scan", "--resume", "{scan}", "--figures", "{scan}"], "--figures"),
        (["study", "{scan}", "--out", "{dir}/plan.yaml"], "--out"),
        (["snap", "--demo", "--out", "{dir}/folder.png"], "folder"),
    ],
    ids=["bin-inf", "bin-nan", "dark-1e12", "dark-negative", "figures-file", "study-out-file", "snap-dir"],
)
def test_10_bad_flags_are_refused_before_any_work(scan_copy: Path, monkeypatch, args, needle) -> None:
    """Before: ``--bin-um inf`` exited 0 and overwrote the CSV with an empty table,
    ``--dark-offset-adu 1e12`` was accepted, ``-5`` gave a multi-line pydantic dump, and
    ``--figures FILE``, ``study --out FILE``, ``snap --out DIR.png`` traced back after the work."""
    folder = scan_copy.parent
    (folder / "folder.png").mkdir()
    argv = [a.format(scan=scan_copy, dir=folder) for a in args]
    run = run_cli(argv, monkeypatch, inputs=[folder])
    assert_refused(run, needle)
    assert not run.motion.snaps


def test_10_fixed_focus_outside_the_focus_travel_is_refused(tmp_path: Path, monkeypatch) -> None:
    """Before: ``focus.z_um: 50000`` (the demo drive travels ±2 mm) validated."""
    plan = write_plan(tmp_path, focus={"strategy": "fixed", "z_um": 50000.0})
    assert_refused(run_cli(["validate", plan], monkeypatch), "focus.z_um", "travel")


def test_10_yaml_alias_bomb_is_refused_at_once(tmp_path: Path, monkeypatch) -> None:
    """Before: a 2 KB YAML alias bomb made ``validate`` spin (minutes, gigabytes)."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    plan = tmp_path / "bomb.yaml"
    plan.write_text("\n".join(lines) + "\nname: *a8\n")
    assert len(plan.read_bytes()) < 2500
    t0 = time.monotonic()
    assert_refused(run_cli(["validate", plan], monkeypatch), "alias")
    assert time.monotonic() - t0 < 5


def test_10_invalid_numbers_are_one_line(tmp_path: Path, monkeypatch) -> None:
    """Before: ``analyze --dark-offset-adu -5`` printed pydantic's multi-line error with a URL."""
    plan = write_plan(tmp_path, analysis={"heatmap_bin_um": 50.0})
    text = plan.read_text().replace("heatmap_bin_um: 50.0", "heatmap_bin_um: .inf")
    plan.write_text(text)
    line = assert_refused(run_cli(["validate", plan], monkeypatch), "heatmap_bin_um")
    assert "pydantic" not in line


# -------------------------------------------------------------- defect 11


def test_11_retries_are_shown_and_stored(tmp_path: Path, monkeypatch) -> None:
    """Before: retried snaps were only in a logger line on stderr, not in the scan's own output."""
    config = fault_config(tmp_path, "Camera,FailEveryNthSnap,5")
    plan = write_plan(tmp_path, config=config)
    run = run_cli(["scan", plan, "--no-analysis"], monkeypatch)
    assert run.exit_code == 0, run.stdout + run.stderr
    assert f"tile {SECTION}/0002: Camera: snap failed" in run.stdout and "retrying (1 of 2)" in run.stdout
    # 7 tile snaps and 2 of the 8 dark frames the scan takes at its start, each shown
    assert "dark frames: Camera: snap failed" in run.stdout
    assert run.stdout.count("; retrying (") == 9 and "9 device calls retried" in run.stdout, run.stdout
    with ScanFile.open(tmp_path / "scan.h5") as scan:
        meta = scan.section(SECTION).tile_meta(2)
    assert meta["retries"] == 1 and "snap" in meta["retried_calls"][0]["call"]


def test_11_timeouts_are_retried(tmp_path: Path) -> None:
    """Before: a call that timed out was never retried: the tile failed at once."""
    config = fault_config(tmp_path, "Camera,HangEveryNthSnap,12", "Camera,Hang_s,1.0")
    reliability = {"max_retries": 2, "tile_timeout_s": 0.4}
    plan = small_plan(tmp_path / "scan.h5", config=config, reliability=reliability)
    core = build_core(config)
    try:
        result = ScanController(core, plan).run()
    finally:
        core.close()
    assert result.state == "finished" and result.tiles_failed == 0, result
    with ScanFile.open(plan.output) as scan:
        retried = [scan.section(SECTION).tile_meta(i)["retries"] for i in range(result.tiles_total)]
    assert any(retried), retried


def test_11_the_final_analysis_stops_between_tiles_when_the_scan_is_gone(scan_copy: Path) -> None:
    """Before: the final analysis asked ``keep_going`` only for tiles the live analysis had not
    seen; with every tile analysed live it never asked, and wrote its results (the ~45 s the child
    outlived a killed scan)."""
    from analysis.scan_analysis import ScanAnalysis, feed_done_tiles

    analysis = ScanAnalysis(scan_copy)
    with ScanFile.open(scan_copy) as scan:
        feed_done_tiles(analysis, scan)  # as live: every tile analysed before the final step
        n_done = len(scan.section(SECTION).done_indices())
    before = file_digests(scan_copy)
    asked: list[int] = []

    def keep_going() -> bool:
        asked.append(1)
        return len(asked) <= n_done  # the scan's process dies once every tile was looked at

    with pytest.raises(InterruptedError):
        analysis.finalize(should_continue=keep_going)
    assert len(asked) == n_done + 1
    assert file_digests(scan_copy) == before  # no results written after the scan was gone


@pytest.mark.slow
def test_11_the_analysis_process_dies_with_a_killed_scan(tmp_path: Path) -> None:
    """End to end: SIGKILL the scan during its final analysis; the analysis process (and the
    forkserver) end within seconds and leave the file unlocked."""
    import psutil

    config = fault_config(tmp_path, "XYStage,PositioningError_um,3")  # registration rebuilds
    plan = write_plan(tmp_path, config=config, at_edge=True, half_side_um=600.0)
    proc = subprocess.Popen(
        [*CORDSCOPE, "scan", str(plan)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "final analysis of" in line:
                break
        time.sleep(0.3)
        descendants = psutil.Process(proc.pid).children(recursive=True)
        proc.kill()
        proc.wait(10)
        t0 = time.monotonic()
        _gone, alive = psutil.wait_procs(descendants, timeout=15)
        waited = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    assert descendants and not alive, alive
    assert waited < 10, waited
    with h5py.File(tmp_path / "scan.h5", "r"):  # not held open for writing by a live analysis
        pass
