"""Model B's microscope through the core: configuration, camera signal chain, hub properties."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from acquisition.demo import find_demo_hub
from acquisition.demo.model_b import optics
from acquisition.demo.model_b.devices import CAMERA_MODES, ModelBCamera, ModelBHub
from acquisition.demo.model_b.slide import BEAD_AREA_UM, ModelBSlide
from acquisition.hardware import CordScopeCore, build_core

pytestmark = pytest.mark.filterwarnings("error")

MODEL_B_CFG = Path(__file__).resolve().parents[3] / "hardware_configs" / "demo-model-b.cfg"
DEMO_CFG = Path(__file__).resolve().parents[3] / "hardware_configs" / "demo.cfg"
GLASS_XY_UM = (10_000.0, 12_500.0)
SENSOR_PX = 256


def _core(*, noise: bool = True, fixed_pattern: bool = True, vignetting: float = 0.12) -> CordScopeCore:
    core = build_core(MODEL_B_CFG)
    core.setProperty("Camera", "SensorWidth", SENSOR_PX)
    core.setProperty("Camera", "SensorHeight", SENSOR_PX)
    core.setProperty("Camera", "Noise", "On" if noise else "Off")
    core.setProperty("Camera", "NoiseSeed", 11)
    core.setProperty("Camera", "FixedPattern", "On" if fixed_pattern else "Off")
    core.setProperty("Camera", "Vignetting", vignetting)
    return core


@pytest.fixture
def core() -> Iterator[CordScopeCore]:
    c = _core()
    yield c
    c.close()


def _hub(core: CordScopeCore) -> ModelBHub:
    hub = find_demo_hub(core)
    assert isinstance(hub, ModelBHub)
    return hub


def _snap(
    core: CordScopeCore,
    channel: str,
    xy: tuple[float, float],
    *,
    exposure_ms: float = 20.0,
    z_um: float | None = None,
) -> np.ndarray:
    hub = _hub(core)
    core.setConfig("Channel", channel)
    core.setExposure(exposure_ms)
    core.setXYPosition(*xy)
    core.setPosition(float(hub.slide.focal_plane_z_um(*xy)) if z_um is None else z_um)
    core.snapImage()
    return np.asarray(core.getImage())


def _territory_xy(core: CordScopeCore, section_id: str = "rat12-Th7") -> tuple[float, float]:
    rst = _hub(core).slide.section(section_id).rubrospinal_territory
    assert rst is not None
    return (float(rst[:, 0].mean()), float(rst[:, 1].mean()))


# ------------------------------------------------------------ configuration


def test_model_b_config_loads_its_own_microscope() -> None:
    core = build_core(MODEL_B_CFG)
    try:
        hub = _hub(core)
        assert isinstance(hub.slide, ModelBSlide)
        assert isinstance(hub.camera, ModelBCamera)  # found by its role, as every demo peripheral
        assert (core.getImageWidth(), core.getImageHeight()) == (2048, 2048)
        assert core.getImageBitDepth() == 16
        for objective, (mag, _) in optics.OBJECTIVE_NA.items():
            core.setConfig("Objective", objective)
            assert core.getPixelSizeUm() == pytest.approx(optics.SENSOR_PIXEL_UM / mag)
        assert float(core.getProperty("Camera", "SensorPixelSize_um")) == optics.SENSOR_PIXEL_UM
    finally:
        core.close()


@pytest.mark.parametrize("channel", ["DAPI", "tdTomato"])
def test_snap_over_tissue_shows_tissue_and_glass_shows_the_offset(core: CordScopeCore, channel: str) -> None:
    core.setProperty("Camera", "Noise", "Off")
    tissue = _snap(core, channel, _territory_xy(core), exposure_ms=80.0).astype(float)
    glass = _snap(core, channel, GLASS_XY_UM, exposure_ms=80.0).astype(float)
    assert tissue.shape == (SENSOR_PX, SENSOR_PX) and core.getImage().dtype == np.uint16
    offset = CAMERA_MODES[16]["offset_adu"]
    assert abs(np.median(glass) - offset) < 3.0
    assert np.median(tissue) > np.median(glass) + 5.0
    assert tissue.max() > offset + 500.0


# ------------------------------------------------------------------ camera


@pytest.mark.parametrize("bits", [16, 8], ids=["16-bit", "8-bit"])
def test_bit_depth_sets_type_offset_and_clipping(core: CordScopeCore, bits: int) -> None:
    core.setProperty("Camera", "BitDepth", bits)
    assert core.getImageBitDepth() == bits
    assert float(core.getProperty("Camera", "DarkOffset_ADU")) == CAMERA_MODES[bits]["offset_adu"]
    dark = _snap(core, "DAPI", GLASS_XY_UM)
    assert dark.dtype == (np.uint8 if bits == 8 else np.uint16)
    assert (
        abs(float(dark.mean()) - CAMERA_MODES[bits]["offset_adu"])
        < 3 * CAMERA_MODES[bits]["offset_sd_adu"] + 1
    )
    # beads at a long exposure saturate: clipped at 2^bits − 1, never wrapped
    x0, y0, x1, y1 = BEAD_AREA_UM
    bright = _snap(core, "tdTomato", ((x0 + x1) / 2, (y0 + y1) / 2), exposure_ms=5000.0)
    top = 2**bits - 1
    assert bright.max() == top
    assert (bright == top).sum() >= 10
    # a saturated pixel stays saturated at a longer exposure (no wrap-around)
    brighter = _snap(core, "tdTomato", ((x0 + x1) / 2, (y0 + y1) / 2), exposure_ms=20000.0)
    assert (brighter[bright == top] == top).all()


def test_dark_frame_is_the_fixed_pattern(core: CordScopeCore) -> None:
    core.setProperty("Camera", "Noise", "Off")
    core.setAutoShutter(False)
    core.setShutterOpen(False)  # shutter closed over tissue: a dark frame
    a = _snap(core, "DAPI", _territory_xy(core)).astype(float)
    b = _snap(core, "DAPI", GLASS_XY_UM).astype(float)
    np.testing.assert_array_equal(a, b)  # the sensor's own pattern, wherever the stage is
    columns = a.mean(axis=0)
    assert 0.5 < columns.std() < 4.0  # column offsets
    assert 1.0 < (a - columns[None, :]).std() < 5.0  # per-pixel offsets
    core.setProperty("Camera", "FixedPatternSeed", 2)
    c = _snap(core, "DAPI", GLASS_XY_UM).astype(float)
    assert np.abs(c - a).mean() > 1.0  # another camera, another pattern
    core.setProperty("Camera", "FixedPattern", "Off")
    flat = _snap(core, "DAPI", GLASS_XY_UM).astype(float)
    assert np.ptp(flat) <= 1.0


def test_signal_is_proportional_to_exposure() -> None:
    core = _core(noise=False, fixed_pattern=False, vignetting=0.0)
    try:
        xy = _territory_xy(core)
        offset = CAMERA_MODES[16]["offset_adu"]
        one = _snap(core, "tdTomato", xy, exposure_ms=40.0).astype(float) - offset
        two = _snap(core, "tdTomato", xy, exposure_ms=80.0).astype(float) - offset
        lit = one > 20
        assert lit.sum() > 500
        # dark current is 0.5 e/s: negligible; rounding is ±0.5 ADU each
        np.testing.assert_allclose(two[lit], 2.0 * one[lit], atol=1.6)
    finally:
        core.close()


def test_vignetting_falls_toward_the_corners() -> None:
    cam = ModelBCamera()
    cam.set_property_value("Vignetting", 0.12)
    v = cam.vignetting((512, 640))
    assert v.max() == pytest.approx(1.0, abs=1e-3)
    for corner in (v[0, 0], v[0, -1], v[-1, 0], v[-1, -1]):
        assert corner == pytest.approx(0.88, abs=0.005)
    assert (np.diff(v[256, 320:]) <= 0).all()  # falls monotonically from the centre
    cam.set_property_value("Vignetting", 0.0)
    assert (cam.vignetting((64, 64)) == 1.0).all()
    # through the core: the ratio of two noiseless snaps is the fall-off
    core_flat = _core(noise=False, fixed_pattern=False, vignetting=0.0)
    core_vig = _core(noise=False, fixed_pattern=False, vignetting=0.12)
    try:
        xy = _territory_xy(core_flat)
        offset = CAMERA_MODES[16]["offset_adu"]
        flat = _snap(core_flat, "DAPI", xy, exposure_ms=400.0).astype(float) - offset
        vig = _snap(core_vig, "DAPI", xy, exposure_ms=400.0).astype(float) - offset
        ratio = vig / np.maximum(flat, 1e-9)
        want = ModelBCamera().vignetting((SENSOR_PX, SENSOR_PX))
        lit = flat > 200
        np.testing.assert_allclose(ratio[lit], want[lit], atol=0.01)
    finally:
        core_flat.close()
        core_vig.close()


def test_noise_is_seeded_and_follows_the_photon_transfer_curve(core: CordScopeCore) -> None:
    xy = _territory_xy(core)
    core.setProperty("Camera", "NoiseSeed", 5)
    a = _snap(core, "DAPI", xy, exposure_ms=100.0).astype(float)
    core.setProperty("Camera", "NoiseSeed", 5)
    b = _snap(core, "DAPI", xy, exposure_ms=100.0).astype(float)
    np.testing.assert_array_equal(a, b)
    c = _snap(core, "DAPI", xy, exposure_ms=100.0).astype(float)
    assert not np.array_equal(a, c)
    # variance of a difference of two frames = 2 (signal/gain + read²/gain²): slope 1/gain
    gain = CAMERA_MODES[16]["gain_e_per_adu"]
    mean = 0.5 * (a + c) - CAMERA_MODES[16]["offset_adu"]
    diff = a - c
    bins = np.quantile(mean, [0.2, 0.4, 0.6, 0.8, 0.95])
    xs, ys = [], []
    for lo, hi in itertools.pairwise(bins):
        sel = (mean >= lo) & (mean < hi)
        xs.append(mean[sel].mean())
        ys.append(diff[sel].var() / 2.0)
    slope = np.polyfit(xs, ys, 1)[0]
    assert slope == pytest.approx(1.0 / gain, rel=0.2)


def test_overlapping_tiles_agree_through_the_core() -> None:
    core = _core(noise=False, fixed_pattern=False, vignetting=0.0)
    try:
        xy = _territory_xy(core)
        p = core.getPixelSizeUm()
        z = float(_hub(core).slide.focal_plane_z_um(*xy))
        a = _snap(core, "tdTomato", xy, z_um=z)
        b = _snap(core, "tdTomato", (xy[0] + 40 * p, xy[1] - 25 * p), z_um=z)
        np.testing.assert_array_equal(a[: SENSOR_PX - 25, 40:], b[25:, : SENSOR_PX - 40])
    finally:
        core.close()


# ------------------------------------------------------------------ hub


@pytest.mark.parametrize("config", [DEMO_CFG, MODEL_B_CFG], ids=["model-a", "model-b"])
def test_focus_bumps_hub_property_on_both_models(config: Path) -> None:
    core = build_core(config)
    try:
        hub = find_demo_hub(core)
        assert hub is not None
        assert core.getProperty("DemoHub", "FocusBumps") == "Off"
        bump = hub.slide.focus_bumps[0]
        flat = float(hub.slide.focal_plane_z_um(bump.x_um, bump.y_um))
        core.setProperty("DemoHub", "FocusBumps", "On")
        assert core.getProperty("DemoHub", "FocusBumps") == "On"
        assert hub.slide.focus_bumps_on
        bumped = float(hub.slide.focal_plane_z_um(bump.x_um, bump.y_um))
        assert bumped - flat == pytest.approx(bump.amplitude_um, abs=0.05 * abs(bump.amplitude_um))
        core.setProperty("DemoHub", "FocusBumps", "Off")
        assert float(hub.slide.focal_plane_z_um(bump.x_um, bump.y_um)) == pytest.approx(flat)
    finally:
        core.close()


def test_model_b_hub_seed_and_dapi_contrast() -> None:
    core = build_core(MODEL_B_CFG)
    try:
        hub = _hub(core)
        first = hub.slide
        core.setProperty("DemoHub", "SlideSeed", 7)
        assert int(core.getProperty("DemoHub", "SlideSeed")) == 7
        assert hub.slide.seed == 7 and hub.slide is not first
        core.setProperty("DemoHub", "DapiGrayWhiteContrast", 2.0)
        assert hub.slide.parameters.dapi_gray_white_contrast == 2.0
        assert float(core.getProperty("DemoHub", "DapiGrayWhiteContrast")) == 2.0
    finally:
        core.close()
