"""Calibration images on the demo microscope (acquisition.calibration)."""

from __future__ import annotations

import numpy as np
import pytest

from acquisition.calibration import (
    CalibrationAcquisitionError,
    acquire_bead_stack,
    acquire_blank_field,
    acquire_dark_frames,
)
from acquisition.demo import find_demo_hub

EXPOSURES = {"DAPI": 20.0, "tdTomato": 50.0}


def state(core):
    return (
        core.getCurrentConfig("Channel"),
        core.getExposure(),
        core.getAutoShutter(),
        core.getShutterOpen(),
        tuple(round(v, 6) for v in core.getXYPosition()),
        round(core.getPosition(), 6),
    )


def tissue_xy(core):
    slide = find_demo_hub(core).slide
    sec = slide.section("rat01-C5")
    return tuple(float(v) for v in sec.midline_point_um)


def test_dark_frames_are_dark_at_each_exposure_and_the_microscope_is_restored(demo_core):
    core = demo_core
    xy = tissue_xy(core)
    core.setXYPosition(*xy)
    core.setPosition(float(find_demo_hub(core).slide.focal_plane_z_um(*xy)))
    core.setConfig("Channel", "DAPI")
    core.snapImage()
    lit = core.getImage().astype(float)
    before = state(core)
    assert before[2] is True  # auto-shutter on: a plain snap opens the shutter
    darks = acquire_dark_frames(core, EXPOSURES, n_frames=3)
    assert state(core) == before
    offset = float(core.getProperty("Camera", "DarkOffset_ADU"))
    read_noise = float(core.getProperty("Camera", "ReadNoise_e")) / float(
        core.getProperty("Camera", "Gain_e_per_ADU")
    )
    for channel, frames in darks.items():
        assert frames.kind == "dark" and frames.channel == channel
        assert frames.exposure_ms == EXPOSURES[channel]
        assert frames.frames.shape == (3, 512, 512)
        assert frames.bit_depth == 16 and frames.pixel_size_um == pytest.approx(0.65)
        assert frames.metadata["shutter"] == "Shutter"
        data = frames.frames.astype(float)
        assert data.mean() == pytest.approx(offset, abs=0.5)
        assert np.std(data[1] - data[0]) / np.sqrt(2) == pytest.approx(read_noise, rel=0.1)
    assert lit.mean() > offset + 50  # the same place with light is far brighter


def test_no_shutter_needs_the_light_blocked(demo_core):
    core = demo_core
    core.setProperty("Core", "Shutter", "")
    with pytest.raises(CalibrationAcquisitionError, match="light_blocked"):
        acquire_dark_frames(core, {"DAPI": 10.0})
    frames = acquire_dark_frames(core, {"DAPI": 10.0}, n_frames=1, light_blocked=True)
    assert frames["DAPI"].metadata["shutter"] == "none"


@pytest.mark.parametrize(
    ("exposures", "match"),
    [({"GFP": 10.0}, "unknown channel"), ({"DAPI": 0.0}, "exposure")],
    ids=["unknown-channel", "zero-exposure"],
)
def test_bad_channels_are_refused(demo_core, exposures, match):
    before = state(demo_core)
    with pytest.raises(CalibrationAcquisitionError, match=match):
        acquire_dark_frames(demo_core, exposures)
    assert state(demo_core) == before


def test_blank_field_frames_are_taken_where_asked(demo_core):
    core = demo_core
    before = state(core)
    xy = tissue_xy(core)
    blank = acquire_blank_field(core, "DAPI", 20.0, xy_um=xy, n_frames=2)
    assert state(core) == before
    assert blank.kind == "blank_field" and blank.frames.shape == (2, 512, 512)
    assert blank.xy_um == pytest.approx(xy)
    assert blank.frames.mean() > float(core.getProperty("Camera", "DarkOffset_ADU")) + 50


def test_bead_stack_steps_through_focus(demo_core):
    core = demo_core
    before = state(core)
    stack = acquire_bead_stack(
        core, "tdTomato", 30.0, xy_um=(10_000.0, 12_000.0), z_center_um=5.0, z_range_um=2.0, z_step_um=0.5
    )
    assert state(core) == before
    assert stack.kind == "beads" and stack.frames.shape == (5, 512, 512)
    np.testing.assert_allclose(stack.z_um, [4.0, 4.5, 5.0, 5.5, 6.0])
    assert stack.objective == "Res10x"
