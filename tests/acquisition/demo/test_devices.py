"""The demo microscope's devices behave like hardware, through the core."""

from __future__ import annotations

import time

import numpy as np
import pytest
import useq

from acquisition.demo import find_demo_hub
from acquisition.demo.devices import DemoDeviceError
from tests.conftest import make_demo_core

GLASS_XY_UM = (10_000.0, 12_500.0)  # the slide's label end: no tissue


def _section(core, index=0):
    hub = find_demo_hub(core)
    assert hub is not None
    return hub.slide.sections[index]


def _focus(core, xy):
    hub = find_demo_hub(core)
    return float(hub.slide.focal_plane_z_um(*xy))


def _snap(core, channel, xy, *, z=None, exposure_ms=20.0):
    core.setConfig("Channel", channel)
    core.setExposure(exposure_ms)
    core.setXYPosition(*xy)
    core.setPosition(_focus(core, xy) if z is None else z)
    core.snapImage()
    return np.asarray(core.getImage(), dtype=np.float64)


def _sharpness(image):
    """Normalised variance of the Laplacian: a standard focus measure."""
    img = image.astype(np.float64)
    lap = -4 * img[1:-1, 1:-1] + img[:-2, 1:-1] + img[2:, 1:-1] + img[1:-1, :-2] + img[1:-1, 2:]
    return float(lap.var() / max(img.mean(), 1.0) ** 2)


def test_camera_is_16_bit_with_configured_sensor(demo_core):
    img = _snap(demo_core, "DAPI", GLASS_XY_UM)
    assert demo_core.getImage().dtype == np.uint16
    assert img.shape == (512, 512)
    assert demo_core.getImageBitDepth() == 16


def test_default_sensor_is_2048():
    from acquisition.hardware import build_core

    core = build_core()
    assert (core.getImageWidth(), core.getImageHeight()) == (2048, 2048)


@pytest.mark.parametrize("channel", ["DAPI", "tdTomato"])
def test_tile_over_section_has_tissue_glass_is_background(demo_core, channel):
    glass = _snap(demo_core, channel, GLASS_XY_UM)
    section = _section(demo_core)
    tissue = _snap(demo_core, channel, section.spec.centre_um)
    offset = float(demo_core.getProperty("Camera", "DarkOffset_ADU"))
    # glass: only the dark offset and read noise
    assert abs(glass.mean() - offset) < 2.0
    assert glass.std() < 10.0
    # tissue: well above background in both channels
    assert tissue.mean() > glass.mean() + 5
    if channel == "DAPI":  # nuclei; the tracer channel at the centre is autofluorescence only
        assert np.percentile(tissue, 99) > np.percentile(glass, 99) + 50


def test_tracer_tile_over_rubrospinal_territory_has_axons(demo_core):
    section = next(s for s in find_demo_hub(demo_core).slide.sections if s.rubrospinal_territory is not None)
    xy = tuple(section.rubrospinal_territory.mean(axis=0))
    tracer = _snap(demo_core, "tdTomato", xy)
    background = np.median(tracer)
    assert (tracer > background + 200).mean() > 0.001  # bright puncta present


def test_exposure_scales_signal(demo_core):
    xy = _section(demo_core).spec.centre_um
    demo_core.setProperty("Camera", "Noise", "Off")
    offset = float(demo_core.getProperty("Camera", "DarkOffset_ADU"))
    short = _snap(demo_core, "DAPI", xy, exposure_ms=10) - offset
    long = _snap(demo_core, "DAPI", xy, exposure_ms=40) - offset
    assert long.mean() / short.mean() == pytest.approx(4.0, rel=0.02)


def test_closed_shutter_gives_dark_frame(demo_core):
    xy = _section(demo_core).spec.centre_um
    demo_core.setAutoShutter(False)
    demo_core.setShutterOpen(False)
    dark = _snap(demo_core, "DAPI", xy)
    offset = float(demo_core.getProperty("Camera", "DarkOffset_ADU"))
    assert abs(dark.mean() - offset) < 1.0


def test_noise_is_deterministic_with_seed():
    frames = []
    for _ in range(2):
        core = make_demo_core(seed=123)
        frames.append(_snap(core, "DAPI", GLASS_XY_UM))
    assert np.array_equal(frames[0], frames[1])
    core = make_demo_core(seed=124)
    assert not np.array_equal(frames[0], _snap(core, "DAPI", GLASS_XY_UM))


def test_noise_statistics_match_shot_and_read_noise(demo_core):
    xy = _section(demo_core).spec.centre_um
    demo_core.setProperty("Camera", "Noise", "Off")
    clean = _snap(demo_core, "DAPI", xy)
    demo_core.setProperty("Camera", "Noise", "On")
    noisy = _snap(demo_core, "DAPI", xy)
    gain = float(demo_core.getProperty("Camera", "Gain_e_per_ADU"))
    read_e = float(demo_core.getProperty("Camera", "ReadNoise_e"))
    offset = float(demo_core.getProperty("Camera", "DarkOffset_ADU"))
    electrons = (clean - offset) * gain
    z = (noisy - clean) * gain / np.sqrt(electrons + read_e**2)
    assert abs(z.mean()) < 0.05
    assert z.std() == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("objective", ["10x", "20x"])
@pytest.mark.parametrize("channel", ["DAPI", "tdTomato"])
def test_overlapping_tiles_agree_exactly_without_noise(channel, objective):
    core = make_demo_core(noise=False)
    core.setConfig("Objective", objective)
    px = core.getPixelSizeUm()
    x, y = _section(core).spec.centre_um
    shift_px = 200
    a = _snap(core, channel, (x, y), z=_focus(core, (x, y)))
    b = _snap(core, channel, (x + shift_px * px, y), z=_focus(core, (x, y)))
    assert np.array_equal(a[:, shift_px:], b[:, :-shift_px])


def test_overlapping_tiles_agree_within_noise(demo_core):
    px = demo_core.getPixelSizeUm()
    x, y = _section(demo_core).spec.centre_um
    z = _focus(demo_core, (x, y))
    a = _snap(demo_core, "DAPI", (x, y), z=z)
    b = _snap(demo_core, "DAPI", (x, y + 100 * px), z=z)
    diff = a[100:] - b[:-100]
    gain = float(demo_core.getProperty("Camera", "Gain_e_per_ADU"))
    offset = float(demo_core.getProperty("Camera", "DarkOffset_ADU"))
    expected_sd = np.sqrt(2 * (np.maximum(a[100:] - offset, 0) * gain + 1.6**2)) / gain
    assert abs(diff.mean()) < 0.5
    assert (diff / expected_sd).std() == pytest.approx(1.0, abs=0.1)


def test_defocus_lowers_sharpness_refocus_restores(demo_core):
    demo_core.setProperty("Camera", "Noise", "Off")
    xy = _section(demo_core).spec.centre_um
    z0 = _focus(demo_core, xy)
    focused = _sharpness(_snap(demo_core, "DAPI", xy, z=z0))
    blurred = _sharpness(_snap(demo_core, "DAPI", xy, z=z0 + 20))
    refocused = _sharpness(_snap(demo_core, "DAPI", xy, z=z0))
    assert blurred < 0.5 * focused
    assert refocused == pytest.approx(focused)


def test_slide_is_tilted_so_focus_varies(demo_core):
    slide = find_demo_hub(demo_core).slide
    zs = [float(slide.focal_plane_z_um(*s.spec.centre_um)) for s in slide.sections]
    assert max(zs) - min(zs) > 5.0


@pytest.mark.parametrize(
    ("move", "match"),
    [
        (lambda c: c.setXYPosition(-100.0, 12_000.0), "XYStage.*refused"),
        (lambda c: c.setXYPosition(30_000.0, 26_000.0), "XYStage.*refused"),
        (lambda c: c.setXYPosition(80_000.0, 1_000.0), "XYStage.*refused"),
        (lambda c: c.setPosition(1e6), "ZStage.*refused"),
    ],
    ids=["x-below-travel", "y-beyond-slide", "x-beyond-slide", "z-beyond-travel"],
)
def test_impossible_moves_are_refused_naming_the_device(demo_core, move, match):
    before = demo_core.getXYPosition()
    with pytest.raises(DemoDeviceError, match=match):
        move(demo_core)
    assert demo_core.getXYPosition() == before  # nothing moved


def test_injected_camera_timeout_names_the_camera(demo_core):
    demo_core.setProperty("Camera", "FailEveryNthSnap", 3)
    demo_core.snapImage()
    demo_core.snapImage()
    with pytest.raises(DemoDeviceError, match=r"Camera: camera timeout"):
        demo_core.snapImage()
    demo_core.snapImage()  # recovers


def test_injected_stage_failure_names_the_stage(demo_core):
    demo_core.setProperty("XYStage", "FailEveryNthMove", 2)
    demo_core.setXYPosition(30_000.0, 10_000.0)
    with pytest.raises(DemoDeviceError, match=r"XYStage: move 2 .* failed"):
        demo_core.setXYPosition(31_000.0, 10_000.0)


def test_camera_hang_is_injectable(demo_core):
    demo_core.setProperty("Camera", "HangEveryNthSnap", 1)
    demo_core.setProperty("Camera", "Hang_s", 0.3)
    t0 = time.perf_counter()
    demo_core.snapImage()
    assert time.perf_counter() - t0 >= 0.3


def test_positioning_error_off_by_default_on_when_asked(demo_core):
    demo_core.setXYPosition(30_000.0, 10_000.0)
    assert float(demo_core.getProperty("XYStage", "TrueX_um")) == 30_000.0
    demo_core.setProperty("XYStage", "PositioningError_um", 3.0)
    demo_core.setProperty("XYStage", "PositioningErrorSeed", 5)
    errors = []
    for i in range(20):
        demo_core.setXYPosition(30_000.0 + 500 * i, 10_000.0)
        assert demo_core.getXYPosition() == pytest.approx((30_000.0 + 500 * i, 10_000.0))
        true_xy = (
            float(demo_core.getProperty("XYStage", "TrueX_um")),
            float(demo_core.getProperty("XYStage", "TrueY_um")),
        )
        errors.append(np.subtract(true_xy, demo_core.getXYPosition()))
    err = np.array(errors)
    assert 1.0 < err.std() < 6.0  # a few µm


def test_positioning_error_shifts_the_image(demo_core):
    demo_core.setProperty("Camera", "Noise", "Off")
    xy = _section(demo_core).spec.centre_um
    exact = _snap(demo_core, "DAPI", xy)
    demo_core.setProperty("XYStage", "PositioningError_um", 5.0)
    shifted = _snap(demo_core, "DAPI", xy)
    assert not np.array_equal(exact, shifted)


def test_stage_speed_makes_moves_take_time(demo_core):
    demo_core.setXYPosition(30_000.0, 10_000.0)
    demo_core.setProperty("XYStage", "Speed_um_per_s", 10_000.0)
    t0 = time.perf_counter()
    demo_core.setXYPosition(32_000.0, 10_000.0)  # 2 mm at 10 mm/s = 0.2 s
    assert demo_core.deviceBusy("XYStage")
    demo_core.waitForDevice("XYStage")
    assert time.perf_counter() - t0 >= 0.19
    assert demo_core.getXYPosition() == pytest.approx((32_000.0, 10_000.0))


def test_small_grid_runs_under_the_mda_runner(demo_core):
    x, y = _section(demo_core).spec.centre_um
    seq = useq.MDASequence(
        stage_positions=[useq.Position(x=x, y=y, z=_focus(demo_core, (x, y)))],
        grid_plan=useq.GridRowsColumns(rows=2, columns=2, fov_width=300, fov_height=300),
        channels=[
            useq.Channel(config="DAPI", group="Channel", exposure=5),
            useq.Channel(config="tdTomato", group="Channel", exposure=5),
        ],
    )
    frames = []
    demo_core.mda.events.frameReady.connect(lambda img, ev, meta: frames.append((img.copy(), ev)))
    demo_core.mda.run(seq)
    assert len(frames) == 8
    assert all(img.shape == (512, 512) and img.mean() > 100 for img, _ in frames)
    assert {ev.channel.config for _, ev in frames} == {"DAPI", "tdTomato"}


def test_stages_report_their_moves_as_core_events(demo_core):
    """Position views (pymmcore-widgets' stage widget, the GUI) update on the move, not by polling."""
    seen = []
    demo_core.events.XYStagePositionChanged.connect(lambda *a: seen.append(("xy", *a)))
    demo_core.events.stagePositionChanged.connect(lambda *a: seen.append(("z", *a)))
    demo_core.setXYPosition(30_000.0, 10_000.0)
    demo_core.setPosition(5.0)
    assert ("xy", "XYStage", 30_000.0, 10_000.0) in seen
    assert ("z", "ZStage", 5.0) in seen
