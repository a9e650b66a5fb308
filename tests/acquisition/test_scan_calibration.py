"""Every scan calibrates itself: dark frames at its start, calibration files copied in (acquisition side)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from acquisition.calibration import (
    DARK_FRAMES_PER_CHANNEL,
    calibration_dir,
    flat_file,
    psf_file,
    scan_calibration_files,
    scan_calibration_inputs,
)
from acquisition.demo.plans import demo_plan
from acquisition.hardware import build_core
from acquisition.session import ScanSession
from acquisition.storage import (
    CALIBRATION_FORMAT,
    DarkFrames,
    ScanFile,
    StorageError,
    copy_calibration_parts,
    require_calibration_group,
)
from tests.conftest import make_demo_core

REPO = Path(__file__).resolve().parents[2]
SECTION = "rat01-Th7"
EXPOSURES = {"DAPI": 20.0, "tdTomato": 50.0}


def _plan(path, **focus):
    return demo_plan(output=path, section_ids=[SECTION], focus=focus or {"strategy": "fixed", "z_um": 0.0})


def _run(core, plan, *, resume=None, abort_after=None):
    session = ScanSession.resume(resume, core) if resume else ScanSession(core, plan)
    messages: list[tuple[str, str]] = []
    session.events.message.connect(lambda level, text: messages.append((level, text)))
    if abort_after:
        n = [0]

        def stored(_):
            n[0] += 1
            if n[0] == abort_after:
                session.abort()

        session.events.tile_stored.connect(stored)
    return session.run(), messages


@pytest.fixture
def core():
    c = make_demo_core()
    yield c
    c.close()


def test_dark_frames_are_taken_before_the_stage_moves_at_each_exposure(core, tmp_path, monkeypatch):
    order: list[str] = []
    snap, move = core.snapImage, core.setXYPosition

    def snapping():
        order.append("dark" if not core.getShutterOpen() and not core.getAutoShutter() else "snap")
        snap()

    def moving(*args):
        order.append("move")
        move(*args)

    monkeypatch.setattr(core, "snapImage", snapping)
    monkeypatch.setattr(core, "setXYPosition", moving)
    # the focus map moves the stage in the preparing step: the dark frames come before it
    plan = _plan(tmp_path / "s.h5", strategy="focus_map", points_per_section=3)
    result, messages = _run(core, plan)
    assert result.scan.complete
    n_dark = len(EXPOSURES) * DARK_FRAMES_PER_CHANNEL
    assert order[:n_dark] == ["dark"] * n_dark and "dark" not in order[n_dark:]
    assert order[n_dark] == "move"
    assert ("info", "calibration: dark frames of DAPI, tdTomato (4 each, shutter closed); "
            "no PSF calibration file; no flat-field file") in messages  # fmt: skip
    offset = float(core.getProperty("Camera", "DarkOffset_ADU"))
    with ScanFile.open(plan.output) as f:
        darks = f.dark_frames()
        sources = json.loads(f.calibration_group.attrs["sources_json"])
        assert f.calibration_group.attrs["format"] == CALIBRATION_FORMAT
    assert set(darks) == set(EXPOSURES)
    for channel, dark in darks.items():
        assert dark.frames.shape == (DARK_FRAMES_PER_CHANNEL, 512, 512)
        assert dark.exposure_ms == EXPOSURES[channel] and dark.bit_depth == 16
        assert dark.attrs["shutter"] == "Shutter" and dark.attrs["camera"] == "Camera"
        assert abs(dark.frames.mean() - offset) < 0.5
        assert sources[f"dark/{channel}"]["kind"] == "dark_frames"
    # the microscope was left as the scan found it (auto-shutter back on)
    assert core.getAutoShutter()


def test_a_resumed_scan_keeps_its_dark_frames_and_takes_missing_ones(core, tmp_path):
    plan = _plan(tmp_path / "s.h5")
    first, _ = _run(core, plan, abort_after=10)
    assert first.scan.state == "aborted"
    with h5py.File(plan.output, "r+") as f:
        kept = f["calibration/dark/tdTomato/frames"][()]
        kept_created = f["calibration/dark/tdTomato"].attrs["created"]
        del f["calibration/dark/DAPI"]  # as if the channel had been added to an older file
    result, messages = _run(core, None, resume=plan.output)
    assert result.scan.complete
    with ScanFile.open(plan.output) as f:
        darks = f.dark_frames()
    assert set(darks) == set(EXPOSURES)
    np.testing.assert_array_equal(darks["tdTomato"].frames, kept)
    assert darks["tdTomato"].attrs["created"] == kept_created
    info = [text for level, text in messages if text.startswith("calibration:")]
    assert info == [
        "calibration: dark frames of DAPI (4 each, shutter closed); dark frames of tdTomato kept from "
        "the start of the scan; no PSF calibration file; no flat-field file"
    ]


def test_without_a_shutter_the_scan_says_it_takes_no_dark_frames(core, tmp_path):
    core.setProperty("Core", "Shutter", "")
    result, messages = _run(core, _plan(tmp_path / "s.h5"))
    assert result.scan.complete
    warnings = [text for level, text in messages if level == "warning"]
    assert len(warnings) == 1 and warnings[0].startswith("no shutter device in the configuration")
    with ScanFile.open(result.path) as f:
        assert f.dark_frames() == {}


def test_a_camera_failing_its_dark_frames_does_not_stop_the_scan(core, tmp_path):
    core.setProperty("Camera", "FailEveryNthSnap", 3)  # the 3rd dark frame fails, without retries
    plan = _plan(tmp_path / "s.h5")
    plan = plan.model_copy(update={"reliability": plan.reliability.model_copy(update={"max_retries": 0})})
    result, messages = _run(core, plan)
    assert result.scan.state == "finished"
    warnings = [text for level, text in messages if level == "warning" and "dark frames" in text]
    assert warnings and "no dark frames taken" in warnings[0] and "camera timeout" in warnings[0]


def _calibration_file(path: Path, parts: dict[str, np.ndarray], **attrs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.attrs["format"] = CALIBRATION_FORMAT
        f.attrs["format_version"] = 1
        f.attrs["created"] = "2026-12-01T10:00:00+00:00"
        for key, value in attrs.items():
            f.attrs[key] = value
        for name, data in parts.items():
            g = f.require_group(name)
            g.create_dataset("image", data=data)
            g.attrs["summary_json"] = json.dumps({"what": name})
    return path


@pytest.fixture
def own_config(tmp_path):
    """The demo configuration copied to a folder of its own (its calibration folder beside it)."""
    cfg = tmp_path / "rig" / "demo.cfg"
    cfg.parent.mkdir()
    shutil.copy(REPO / "hardware_configs" / "demo.cfg", cfg)
    shutil.copy(REPO / "hardware_configs" / "demo.rig.yaml", cfg.with_name("demo.rig.yaml"))
    return cfg


def test_calibration_files_beside_the_config_are_copied_into_the_scan(own_config, tmp_path):
    psf = _calibration_file(psf_file(own_config, "10x"), {"psf": np.arange(5.0)}, channel="tdTomato")
    flat = _calibration_file(flat_file(own_config, "10x", "DAPI"), {"flat/DAPI": np.ones((4, 4))})
    _calibration_file(flat_file(own_config, "4x", "DAPI"), {"flat/DAPI": np.ones((4, 4))})  # not 10x
    assert psf.parent == calibration_dir(own_config) == own_config.with_name("demo.calibration")
    core = build_core(own_config)
    core.setProperty("Camera", "SensorWidth", 512)
    core.setProperty("Camera", "SensorHeight", 512)
    try:
        result, messages = _run(core, _plan(tmp_path / "s.h5"))
    finally:
        core.close()
    assert result.scan.complete
    assert (
        "info",
        "calibration: dark frames of DAPI, tdTomato (4 each, shutter closed); PSF from "
        "demo.calibration/10x-psf.h5; flat fields from 10x-flat-DAPI.h5",
    ) in messages
    with h5py.File(result.path, "r") as f:
        group = f["calibration"]
        np.testing.assert_array_equal(group["psf/image"][()], np.arange(5.0))
        assert "flat/DAPI" in group and "flat/tdTomato" not in group
        sources = json.loads(group.attrs["sources_json"])
    assert sources["psf"]["file"] == str(psf.resolve()) and sources["psf"]["summary"] == {"what": "psf"}
    assert sources["flat/DAPI"]["file"] == str(flat.resolve())
    assert sources["psf"]["file_created"] == "2026-12-01T10:00:00+00:00"


def test_a_psf_of_another_channel_is_not_used(own_config):
    _calibration_file(psf_file(own_config, "10x"), {"psf": np.arange(5.0)}, channel="DAPI")
    files, skipped = scan_calibration_files(
        own_config, "10x", ["DAPI", "tdTomato"], tracer_channel="tdTomato"
    )
    assert files == {}
    assert skipped == ["10x-psf.h5 was measured in DAPI, not in the tracer channel tdTomato: not used"]


@pytest.mark.parametrize(
    ("name", "file_part"),
    [("10x", "10x"), ("Plan Apo 20x/0.75", "Plan_Apo_20x_0.75"), ("  ", "_")],
    ids=["plain", "spaces-and-slash", "blank"],
)
def test_calibration_file_names_are_safe(tmp_path, name, file_part):
    assert psf_file(tmp_path / "rig.cfg", name).name == f"{file_part}-psf.h5"
    assert flat_file(tmp_path / "rig.cfg", name, "Cy3/Cy5").name == f"{file_part}-flat-Cy3_Cy5.h5"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"frames": np.zeros((2, 3, 4, 5), np.uint16)}, r"expected \(N, H, W\)"),
        ({"frames": np.zeros((2, 4, 4), np.float32)}, "cannot be stored as uint16"),
        ({"exposure_ms": 0.0}, "exposure_ms > 0"),
        ({"bit_depth": 32}, "bit depth of 1-16"),
    ],
    ids=["4-d", "float", "zero-exposure", "32-bit"],
)
def test_bad_dark_frames_are_refused(kwargs, match):
    args = {"channel": "DAPI", "frames": np.zeros((2, 4, 4), np.uint16), "exposure_ms": 10.0, "bit_depth": 12}
    with pytest.raises(StorageError, match=match):
        DarkFrames(**{**args, **kwargs})


@pytest.mark.parametrize(
    ("attrs", "match"),
    [({"format": "something-else"}, "not a CordScope calibration file"), ({"format_version": 9}, "newer")],
    ids=["other-format", "newer-version"],
)
def test_only_calibration_files_are_copied(tmp_path, attrs, match):
    src = _calibration_file(tmp_path / "cal.h5", {"psf": np.arange(3.0)})
    with h5py.File(src, "r+") as f:
        f.attrs.update(attrs)
    with h5py.File(tmp_path / "scan.h5", "w") as f, pytest.raises(StorageError, match=match):
        copy_calibration_parts(require_calibration_group(f), src, ["psf"])


def test_parts_kept_unless_replaced(tmp_path):
    src = _calibration_file(tmp_path / "cal.h5", {"psf": np.arange(3.0)})
    with h5py.File(tmp_path / "scan.h5", "w") as f:
        group = require_calibration_group(f)
        assert copy_calibration_parts(group, src, ["psf", "flat/DAPI"]) == ["psf"]
        group["psf/image"][...] = 0.0
        assert copy_calibration_parts(group, src, ["psf"], replace=False) == []
        assert not group["psf/image"][()].any()
        assert copy_calibration_parts(group, src, ["psf"]) == ["psf"]
        np.testing.assert_array_equal(group["psf/image"][()], np.arange(3.0))


def test_dark_frames_announce_the_shutter_by_its_label(core):
    """pymmcore-plus' one-argument setShutterOpen named a Python shutter "" (GUI widgets raised)."""
    changed: list[tuple[str, str, str]] = []
    core.events.propertyChanged.connect(lambda dev, prop, value: changed.append((dev, prop, value)))
    scan_calibration_inputs(
        core, channel_group="Channel", exposures_ms=EXPOSURES, tracer_channel="tdTomato", objective="10x",
        config_path=None,
    )  # fmt: skip
    shutter = core.getShutterDevice()
    assert "" not in {dev for dev, _, _ in changed}
    assert [c for c in changed if c[0] == shutter] == [(shutter, "State", "0")] * 2  # closed, put back
