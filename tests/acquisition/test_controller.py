"""The scan controller on the demo microscope: runs, pause/resume, abort/resume, faults."""

from __future__ import annotations

import threading
import time

import h5py
import numpy as np
import pytest

from acquisition.calibration import DARK_FRAMES_PER_CHANNEL
from acquisition.controller import ScanController, ScanProgress
from acquisition.demo import find_demo_hub
from acquisition.demo.plans import demo_plan
from acquisition.engine import DeviceTimeoutError, call_with_watchdog
from acquisition.plan import PlanError
from acquisition.session import ScanSession
from acquisition.storage import ScanFile, StorageError
from tests.conftest import make_demo_core

SMALL_SECTIONS = ("rat01-Th7", "rat05-Th7")  # ~130 tiles at 10x with a 512² sensor


def small_plan(path, *, sections=SMALL_SECTIONS, **reliability):
    plan = demo_plan(output=path, section_ids=sections, focus={"strategy": "fixed", "z_um": 0.0})
    if reliability:
        plan = plan.model_copy(update={"reliability": plan.reliability.model_copy(update=reliability)})
    return plan


@pytest.fixture
def core():
    c = make_demo_core(noise=False)
    yield c
    c.close()


def _tile_counts(path):
    with ScanFile.open(path) as f:
        s = f.summary()
    return {sid: (sec.done, sec.failed, sec.n_tiles) for sid, sec in s.sections.items()}


def test_scan_completes_with_progress_and_a_valid_file(core, tmp_path):
    path = tmp_path / "scan.h5"
    controller = ScanController(core, small_plan(path))
    seen: list[ScanProgress] = []
    states: list[str] = []
    controller.events.progress.connect(seen.append)
    controller.events.state_changed.connect(states.append)
    result = controller.run()
    assert result.state == "finished" and result.complete and result.tiles_failed == 0
    assert set(result.sections) == set(SMALL_SECTIONS)
    assert states[0] == "preparing" and "scanning" in states and states[-1] == "finished"
    done = [p.tiles_done for p in seen]
    assert done == sorted(done) and done[-1] == result.tiles_total
    assert any(p.eta_s is not None and p.eta_s > 0 for p in seen[1:-1])
    assert {p.current_section for p in seen if p.current_section} <= set(SMALL_SECTIONS)
    counts = _tile_counts(path)
    assert all(done == total and failed == 0 for done, failed, total in counts.values())
    with h5py.File(path, "r") as f:
        kinds = [__import__("json").loads(e)["kind"] for e in f["events"][()]]
        assert "new_scan" in kinds and kinds[-1] == "finished"


def test_tiles_hold_the_pixels_the_camera_gave(core, tmp_path):
    """Each stored tile equals a fresh snap at its planned position (noise off)."""
    path = tmp_path / "scan.h5"
    ScanController(core, small_plan(path, sections=("rat01-Th7",))).run()
    check = make_demo_core(noise=False)
    with ScanFile.open(path) as f:
        sec = f.section("rat01-Th7")
        for tile in (0, sec.n_tiles // 2, sec.n_tiles - 1):
            x, y = sec.tile_xy_um[tile]
            check.setXYPosition(float(x), float(y))
            check.setPosition(float(sec.tile_z_um[tile]))
            for c, (channel, exposure) in enumerate([("DAPI", 20.0), ("tdTomato", 50.0)]):
                check.setConfig("Channel", channel)
                check.setExposure(exposure)
                check.snapImage()
                assert np.array_equal(sec.read_tile(tile)[c, 0], check.getImage())
    check.close()


def test_plan_that_does_not_fit_fails_before_anything_moves(core, tmp_path):
    plan = small_plan(tmp_path / "scan.h5")
    bad = plan.model_copy(update={"objective": "60x"})
    core.setXYPosition(30_000.0, 10_000.0)
    with pytest.raises(PlanError, match="60x"):
        ScanController(core, bad).run()
    assert core.getXYPosition() == pytest.approx((30_000.0, 10_000.0))
    assert not (tmp_path / "scan.h5").exists()


def test_existing_output_is_refused_unless_overwrite(core, tmp_path):
    path = tmp_path / "scan.h5"
    path.write_bytes(b"precious")
    with pytest.raises(PlanError, match="exists"):
        ScanController(core, small_plan(path)).run()
    assert path.read_bytes() == b"precious"


def test_pause_stops_progress_and_resume_finishes(wait_until, core, tmp_path):
    path = tmp_path / "scan.h5"
    session = ScanSession(core, small_plan(path))
    started = threading.Event()
    session.events.tile_stored.connect(lambda *_: started.set())
    session.start()
    assert started.wait(30)
    session.pause()
    wait_until(lambda: session.state == "paused" and core.mda.is_paused())
    frozen = session.progress().tiles_done
    wait_until(lambda: session.progress().tiles_done == frozen, stable_s=0.5)
    assert session.progress().tiles_done < session.progress().tiles_total
    session.resume_scanning()
    result = session.wait(60).scan
    assert result.state == "finished" and result.complete


@pytest.mark.slow
def test_abort_then_resume_gives_the_same_tiles_as_one_run(core, tmp_path):
    full = tmp_path / "full.h5"
    ScanController(core, small_plan(full)).run()

    path = tmp_path / "interrupted.h5"
    controller = ScanController(core, small_plan(path))
    n_done = 0

    def on_done(*_):
        nonlocal n_done
        n_done += 1
        if n_done == 20:
            controller.abort()

    controller.events.tile_stored.connect(on_done)
    result = controller.run()
    assert result.state == "aborted" and not result.complete
    assert "--resume" in result.message
    partial = _tile_counts(path)
    assert 20 <= sum(d for d, _, _ in partial.values()) < sum(t for _, _, t in partial.values())

    resumed = ScanController.resume(path, core)
    acquired: list[tuple[str, int]] = []
    resumed.events.tile_stored.connect(lambda s: acquired.append((s.section_id, s.tile_index)))
    result = resumed.run()
    assert result.state == "finished" and result.complete
    assert len(acquired) == result.tiles_total - sum(d for d, _, _ in partial.values())
    with ScanFile.open(full) as a, ScanFile.open(path) as b:
        for sid in SMALL_SECTIONS:
            sa, sb = a.section(sid), b.section(sid)
            np.testing.assert_array_equal(sa.tile_xy_um, sb.tile_xy_um)
            for tile in range(sa.n_tiles):
                np.testing.assert_array_equal(sa.read_tile(tile), sb.read_tile(tile))


def test_resume_of_a_complete_file_does_nothing(core, tmp_path):
    path = tmp_path / "scan.h5"
    ScanController(core, small_plan(path, sections=("rat01-Th7",))).run()
    result = ScanController.resume(path, core).run()
    assert result.state == "finished" and result.complete and "nothing to do" in result.message


def test_transient_camera_faults_are_retried(core, tmp_path):
    core.setProperty("Camera", "FailEveryNthSnap", 7)
    path = tmp_path / "scan.h5"
    messages: list[str] = []
    controller = ScanController(core, small_plan(path, sections=("rat01-Th7",), max_retries=2))
    controller.events.message.connect(lambda level, text: messages.append(text))
    result = controller.run()
    assert result.complete and result.tiles_failed == 0
    with ScanFile.open(path) as f:
        assert f.summary().complete


def test_persistent_stage_fault_fails_the_tile_and_goes_on(core, tmp_path):
    # every 2nd move fails: with 0 retries half the tiles fail; they are marked, logged, skipped
    core.setProperty("XYStage", "FailEveryNthMove", 2)
    path = tmp_path / "scan.h5"
    failed: list[tuple[str, int, str]] = []
    controller = ScanController(core, small_plan(path, sections=("rat01-Th7",), max_retries=0))
    controller.events.tile_failed.connect(lambda sid, t, why: failed.append((sid, t, why)))
    result = controller.run()
    assert result.state == "finished" and not result.complete
    assert result.tiles_failed == len(failed) > 10
    assert all("XYStage" in why and "motor stalled" in why for _, _, why in failed)
    with ScanFile.open(path) as f:
        sec = f.section("rat01-Th7")
        status = sec.tile_status
        assert set(np.flatnonzero(status == 2)) == {t for _, t, _ in failed}
        assert "XYStage" in sec.tile_meta(failed[0][1])["error"]
        assert any(e["kind"] == "tile_failed" for e in f.events())
    # the failed tiles are acquired on resume once the stage behaves
    core.setProperty("XYStage", "FailEveryNthMove", 0)
    assert ScanController.resume(path, core).run().complete


def test_dead_camera_does_not_hang_the_scan(core, tmp_path):
    # The camera stops answering at its 5th tile's snap (after 2 × 4 dark frames) for 4 s
    # (a dead device for a 0.5 s watchdog; short enough that unloading it at teardown can finish).
    core.setProperty("Camera", "HangEveryNthSnap", 2 * DARK_FRAMES_PER_CHANNEL + 5)
    core.setProperty("Camera", "Hang_s", 4.0)
    path = tmp_path / "scan.h5"
    plan = small_plan(path, sections=("rat01-Th7",), tile_timeout_s=0.5, max_retries=1)
    session = ScanSession(core, plan)
    t0 = time.monotonic()
    session.start()
    result = session.wait(60).scan
    assert time.monotonic() - t0 < 3.5  # gave up before the camera came back
    assert result.state == "failed"  # stopped on its own (the command exits 2), resumable
    assert "not answering" in result.message and "--resume" in result.message
    assert result.tiles_done >= 2  # the tiles before the hang are safe
    with ScanFile.open(path) as f:
        assert f.summary().done == result.tiles_done


def test_watchdog_raises_for_a_call_that_never_returns():
    never = threading.Event()
    with pytest.raises(DeviceTimeoutError, match=r"Camera: snap: no answer within 0\.2 s"):
        call_with_watchdog("Camera: snap", never.wait, timeout_s=0.2)
    assert call_with_watchdog("x", lambda: 42, timeout_s=1) == 42
    with pytest.raises(ZeroDivisionError):
        call_with_watchdog("x", lambda: 1 / 0, timeout_s=1)


def test_storage_failure_stops_the_scan_keeping_done_tiles(core, tmp_path, monkeypatch):
    from acquisition import storage

    path = tmp_path / "scan.h5"
    real = storage.ScanWriter.write_image
    calls = 0

    def failing(self, *args, **kwargs):
        nonlocal calls
        calls += 1
        if calls > 40:
            raise StorageError(f"disk error writing tile to {path}: No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(storage.ScanWriter, "write_image", failing)
    result = ScanController(core, small_plan(path, sections=("rat01-Th7",))).run()
    assert result.state == "failed" and "No space left" in result.message  # stopped on its own
    monkeypatch.undo()
    with ScanFile.open(path) as f:
        assert f.summary().done == 20  # 40 images = 20 complete tiles, all intact


def test_focus_map_scan_records_planned_focus(tmp_path):
    core = make_demo_core(noise=False)
    path = tmp_path / "scan.h5"
    plan = demo_plan(output=path, section_ids=("rat01-Th7",))  # focus map by default
    ScanController(core, plan).run()
    slide = find_demo_hub(core).slide
    with ScanFile.open(path) as f:
        sec = f.section("rat01-Th7")
        truth = slide.focal_plane_z_um(sec.tile_xy_um[:, 0], sec.tile_xy_um[:, 1])
        assert np.abs(sec.tile_z_um - truth).max() < 1.0
        np.testing.assert_allclose(sec.planned_tile_z_um, sec.tile_z_um)
    core.close()
