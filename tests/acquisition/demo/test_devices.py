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


# ------------------------------------------------------- stock pymmcore-plus


class _SpotSlide:
    """A dark slide with one bright Gaussian spot at a known stage point (test double)."""

    def __init__(self, xy_um, sigma_um=3.0, peak=1000.0):
        self.xy_um = xy_um
        self.sigma_um = sigma_um
        self.peak = peak

    def render(self, *, center_um, pixel_size_um, shape, channel, z_um):
        h, w = shape
        x = center_um[0] + (np.arange(w) + 0.5 - w / 2) * pixel_size_um
        y = center_um[1] + (np.arange(h) + 0.5 - h / 2) * pixel_size_um
        d2 = (y[:, None] - self.xy_um[1]) ** 2 + (x[None, :] - self.xy_um[0]) ** 2
        return (self.peak * np.exp(-d2 / (2 * self.sigma_um**2))).astype(np.float32)


class _UniformSlide:
    """A uniformly bright slide (test double)."""

    def __init__(self, photons_per_ms=1000.0):
        self.photons_per_ms = photons_per_ms

    def render(self, *, center_um, pixel_size_um, shape, channel, z_um):
        return np.full(shape, self.photons_per_ms, dtype=np.float32)


@pytest.fixture
def stock_core():
    """A plain pymmcore-plus UniMMCore (not CordScope's core) with demo.cfg loaded."""
    import pymmcore
    from pymmcore_plus.experimental.unicore import UniMMCore

    from acquisition.hardware import DEMO_CONFIG

    core = UniMMCore()
    core.loadSystemConfiguration(DEMO_CONFIG)
    core.setProperty("Camera", "SensorWidth", 256)
    core.setProperty("Camera", "SensorHeight", 256)
    yield core
    core.unloadAllDevices()
    pymmcore.CMMCore.registerCallback(core, None)  # see CordScopeCore.close


def _tissue_xy(core):
    hub = find_demo_hub(core)
    section = hub.slide.sections[0]
    return section.spec.centre_um, float(hub.slide.focal_plane_z_um(*section.spec.centre_um))


def test_demo_config_snaps_the_slide_in_stock_unimmcore(stock_core):
    (x, y), z = _tissue_xy(stock_core)
    stock_core.setXYPosition(x, y)
    stock_core.setPosition(z)
    stock_core.snapImage()
    img = stock_core.getImage()
    offset = float(stock_core.getProperty("Camera", "DarkOffset_ADU"))
    assert img.shape == (256, 256) and img.dtype == np.uint16
    assert img.mean() > offset + 50  # tissue, not a dark frame
    assert stock_core.getShutterOpen()  # opened by the .cfg's start-up preset


def test_stock_unimmcore_still_cannot_resolve_python_pixel_sizes(stock_core):
    """The gap CordScopeCore closes; if pymmcore-plus fixes it, drop the override."""
    stock_core.setConfig("Objective", "20x")
    assert stock_core.getCurrentPixelSizeConfig() == ""
    assert stock_core.getPixelSizeUm() == 0.0


def test_demo_config_snaps_in_stock_unimmcore_with_qt_signals(qapp):
    """Under a Qt app pymmcore-plus uses Qt signals; devices still find their hub."""
    import pymmcore
    from pymmcore_plus.core.events import QCoreSignaler
    from pymmcore_plus.experimental.unicore import UniMMCore

    from acquisition.hardware import DEMO_CONFIG

    core = UniMMCore()
    try:
        assert isinstance(core.events, QCoreSignaler)
        core.loadSystemConfiguration(DEMO_CONFIG)
        core.setProperty("Camera", "SensorWidth", 128)
        core.setProperty("Camera", "SensorHeight", 128)
        (x, y), z = _tissue_xy(core)
        core.setXYPosition(x, y)
        core.setPosition(z)
        core.snapImage()
        assert core.getImage().mean() > 150
    finally:
        core.unloadAllDevices()
        pymmcore.CMMCore.registerCallback(core, None)


def test_two_cores_in_one_process_each_image_their_own_stage():
    a, b = make_demo_core(noise=False), make_demo_core(noise=False)
    try:
        (x, y), z = _tissue_xy(a)
        for core, xy in ((a, (x, y)), (b, GLASS_XY_UM)):
            core.setXYPosition(*xy)
            core.setPosition(z)
        a.snapImage()
        b.snapImage()
        offset = float(a.getProperty("Camera", "DarkOffset_ADU"))
        assert a.getImage().mean() > offset + 50  # tissue under a's stage
        assert abs(b.getImage().mean() - offset) < 1  # glass under b's
        assert find_demo_hub(a).xy_stage is not find_demo_hub(b).xy_stage
    finally:
        a.close()
        b.close()


def test_peripheral_without_parent_line_names_the_fix():
    from pymmcore_plus.experimental.unicore import UniMMCore

    from acquisition.demo.devices import DemoCamera, DemoHub

    core = UniMMCore()
    core.loadPyDevice("Hub", DemoHub())
    core.loadPyDevice("Cam", DemoCamera())
    core.initializeAllDevices()
    core.setCameraDevice("Cam")
    with pytest.raises(DemoDeviceError, match=r"Cam: not attached to a DemoHub \(add 'Parent,Cam,"):
        core.snapImage()
    core.setParentLabel("Cam", "Hub")
    with pytest.raises(DemoDeviceError, match="no XY stage attached"):  # found the hub, which has no stage
        core.snapImage()
    core.unloadAllDevices()


def test_a_new_camera_class_registers_as_camera_without_editing_the_hub(demo_core):
    from pymmcore_plus.experimental.unicore import SimpleCameraDevice

    from acquisition.demo.devices import DemoPeripheral

    class OtherCamera(DemoPeripheral, SimpleCameraDevice):
        def get_exposure(self):
            return 1.0

        def set_exposure(self, exposure):
            pass

        def sensor_shape(self):
            return (64, 64)

        def dtype(self):
            return np.float32

        def snap(self, buffer):
            buffer[:] = self.hub.expected_photon_rate(buffer.shape)
            return {}

    demo_core.loadPyDevice("Camera2", OtherCamera())
    demo_core.setParentLabel("Camera2", "DemoHub")
    demo_core.initializeDevice("Camera2")
    hub = find_demo_hub(demo_core)
    assert OtherCamera.hub_role() == "camera"
    assert [d.get_label() for d in hub.peripherals("camera")] == ["Camera", "Camera2"]
    with pytest.raises(DemoDeviceError, match=r"2 devices with role 'camera' \(Camera, Camera2\)"):
        _ = hub.camera
    (x, y), z = _tissue_xy(demo_core)
    demo_core.setXYPosition(x, y)
    demo_core.setPosition(z)
    demo_core.setCameraDevice("Camera2")
    demo_core.setShutterOpen(True)
    demo_core.snapImage()
    assert demo_core.getImage().mean() > 0.1  # photons from the same slide, through the same hub


@pytest.mark.slow  # builds a second slide (~3 s)
def test_slide_seed_property_changes_the_slide(demo_core):
    hub = find_demo_hub(demo_core)
    demo_core.setProperty("DemoHub", "SlideSeed", 5)
    assert demo_core.getProperty("DemoHub", "SlideSeed") == 5
    assert hub.slide.seed == 5


# ------------------------------------------------------------ orientation


ORIENTATION_CONFIGS = ["demo.cfg", "demo-rotated-90.cfg", "demo-mirrored.cfg", "demo-rotated-1.5.cfg"]


def _oriented_core(name, *, sensor=(200, 300)):
    from acquisition.hardware import DEMO_CONFIG, build_core

    core = build_core(DEMO_CONFIG.parent / name)
    core.setProperty("Camera", "SensorHeight", sensor[0])
    core.setProperty("Camera", "SensorWidth", sensor[1])
    core.setProperty("Camera", "Noise", "Off")
    return core


@pytest.mark.parametrize("binning", [1, 2], ids=["bin1", "bin2"])
@pytest.mark.parametrize("name", ORIENTATION_CONFIGS, ids=["aligned", "rot90", "mirrored", "rot1.5"])
def test_bright_spot_appears_where_the_pixel_affine_predicts(name, binning):
    from acquisition.roles import pixel_affine_um

    core = _oriented_core(name)
    try:
        core.setProperty("Camera", "Binning", binning)
        stage_xy = np.array([30_000.0, 12_000.0])
        spot_xy = stage_xy + np.array([40.0, -25.0])
        find_demo_hub(core).set_slide(_SpotSlide(tuple(spot_xy)))
        core.setXYPosition(*stage_xy)
        core.snapImage()
        img = core.getImage().astype(np.float64) - float(core.getProperty("Camera", "DarkOffset_ADU"))
        h, w = img.shape
        assert (h, w) == (200 // binning, 300 // binning)
        affine = pixel_affine_um(core)
        a, b, _, d, e, _ = core.getPixelSizeAffine()  # CordScopeCore's, binning applied
        np.testing.assert_allclose([[a, b], [d, e]], affine, atol=1e-12)
        u, v = np.linalg.solve(affine, spot_xy - stage_xy)
        predicted_rc = (v - 0.5 + h / 2, u - 0.5 + w / 2)
        weights = np.clip(img, 0, None)
        rows, cols = np.indices(img.shape)
        measured_rc = ((rows * weights).sum() / weights.sum(), (cols * weights).sum() / weights.sum())
        assert np.hypot(*np.subtract(measured_rc, predicted_rc)) < 1.0
    finally:
        core.close()


@pytest.mark.parametrize("objective", ["4x", "10x", "20x"])
@pytest.mark.parametrize("name", ORIENTATION_CONFIGS, ids=["aligned", "rot90", "mirrored", "rot1.5"])
def test_config_affine_is_the_cameras_true_affine(name, objective):
    from acquisition.roles import pixel_affine_um

    core = _oriented_core(name, sensor=(64, 64))
    try:
        core.setConfig("Objective", objective)
        camera = find_demo_hub(core).camera
        np.testing.assert_allclose(pixel_affine_um(core), camera.true_pixel_affine_um(), atol=1e-9)
        np.testing.assert_allclose(
            core.getPixelSizeAffine()[:2] + core.getPixelSizeAffine()[3:5],
            camera.true_pixel_affine_um().ravel(),
            atol=1e-9,
        )
    finally:
        core.close()


@pytest.mark.parametrize(
    ("name", "exact"),
    [("demo-rotated-90.cfg", True), ("demo-mirrored.cfg", True), ("demo-rotated-1.5.cfg", False)],
    ids=["rot90", "mirrored", "rot1.5"],
)
def test_tiles_stepped_by_the_affine_agree_in_their_overlap(name, exact):
    from acquisition.roles import pixel_affine_um

    core = _oriented_core(name, sensor=(256, 256))
    try:
        (x, y), z = _tissue_xy(core)
        core.setPosition(z)
        step_px = 64
        dx, dy = pixel_affine_um(core) @ np.array([step_px, 0.0])  # one step along image columns
        core.setXYPosition(x, y)
        core.snapImage()
        a = core.getImage().astype(np.float64)
        core.setXYPosition(x + dx, y + dy)
        core.snapImage()
        b = core.getImage().astype(np.float64)
        overlap_a, overlap_b = a[:, step_px:], b[:, :-step_px]
        if exact:
            assert np.array_equal(overlap_a, overlap_b)
        else:  # resampled at another sub-pixel phase: agree to within a few %
            offset = float(core.getProperty("Camera", "DarkOffset_ADU"))
            assert np.abs(overlap_a - overlap_b).mean() < 0.03 * (overlap_a - offset).mean()
    finally:
        core.close()


@pytest.mark.parametrize(
    ("rotation_deg", "mirror", "expected"),
    [
        (0.0, False, [[1, 0], [0, 1]]),
        (90.0, False, [[0, -1], [1, 0]]),
        (180.0, False, [[-1, 0], [0, -1]]),
        (-90.0, False, [[0, 1], [-1, 0]]),
        (0.0, True, [[-1, 0], [0, 1]]),
        (270.0, True, [[0, 1], [1, 0]]),  # a transposed sensor
        (30.0, False, [[np.sqrt(3) / 2, -0.5], [0.5, np.sqrt(3) / 2]]),
    ],
    ids=["0", "90", "180", "-90", "mirror", "transpose", "30"],
)
def test_camera_orientation_matrix(rotation_deg, mirror, expected):
    from acquisition.demo.devices import camera_orientation

    np.testing.assert_allclose(camera_orientation(rotation_deg, mirror), expected, atol=1e-15)


# ------------------------------------------------- camera realism properties


@pytest.mark.parametrize(
    ("pct", "corner", "edge_mid"),
    [(0.0, 1.0, 1.0), (12.0, 0.88, None), (40.0, 0.60, None)],
    ids=["none", "12pct", "40pct"],
)
def test_vignetting_map_is_one_at_the_centre_and_loses_pct_at_the_corners(pct, corner, edge_mid):
    from acquisition.demo.devices import vignetting_map

    v = vignetting_map((400, 600), pct)
    assert v[199:201, 299:301].min() == pytest.approx(1.0, abs=1e-4)
    # pixel centres of the corner pixels lie half a pixel inside the corner
    assert v[0, 0] == pytest.approx(corner, abs=2e-3) and v[-1, -1] == pytest.approx(corner, abs=2e-3)
    assert np.all(np.diff(v[200, 300:]) <= 0)  # falls monotonically outwards
    if edge_mid is not None:
        assert v[200, 0] == pytest.approx(edge_mid)


def test_camera_vignetting_darkens_the_corners_of_a_uniform_field(demo_core):
    find_demo_hub(demo_core).set_slide(_UniformSlide(100.0))
    demo_core.setProperty("Camera", "Noise", "Off")
    demo_core.setProperty("Camera", "Vignetting_pct", 12.0)
    demo_core.snapImage()
    signal = demo_core.getImage().astype(np.float64) - float(
        demo_core.getProperty("Camera", "DarkOffset_ADU")
    )
    centre = signal[250:262, 250:262].mean()
    assert signal[0, 0] / centre == pytest.approx(0.88, abs=0.005)
    assert signal[256, 0] / centre > signal[0, 0] / centre  # mid-edge between centre and corner


@pytest.mark.parametrize(
    ("bits", "dtype", "pixel_type"),
    [(8, np.uint8, "8bit"), (12, np.uint16, "16bit"), (16, np.uint16, "16bit")],
    ids=["8bit", "12bit", "16bit"],
)
def test_bit_depth_sets_pixel_type_and_clips_at_full_scale(demo_core, bits, dtype, pixel_type):
    find_demo_hub(demo_core).set_slide(_UniformSlide(1e6))  # saturates every bit depth
    demo_core.setProperty("Camera", "BitDepth", bits)
    assert demo_core.getProperty("Camera", "PixelType") == pixel_type
    assert demo_core.getImageBitDepth() == bits
    demo_core.snapImage()
    img = demo_core.getImage()
    assert img.dtype == dtype
    assert int(img.max()) == int(img.min()) == 2**bits - 1
    find_demo_hub(demo_core).set_slide(_UniformSlide(0.0))
    demo_core.snapImage()
    assert 0 < demo_core.getImage().mean() < 2**bits - 1  # dark frames are not clipped


def test_bit_depth_refuses_what_the_camera_cannot_do(demo_core):
    with pytest.raises(DemoDeviceError, match="BitDepth must be one of"):
        demo_core.setProperty("Camera", "BitDepth", 11)
    assert demo_core.getProperty("Camera", "BitDepth") == 16


def test_binning_sums_charge_shrinks_the_image_and_clears_the_roi(demo_core):
    find_demo_hub(demo_core).set_slide(_UniformSlide(10.0))
    demo_core.setProperty("Camera", "Noise", "Off")
    demo_core.setROI(10, 20, 100, 50)
    demo_core.snapImage()
    assert demo_core.getImage().shape == (50, 100)
    offset = float(demo_core.getProperty("Camera", "DarkOffset_ADU"))
    one = demo_core.getImage().astype(np.float64).mean() - offset
    demo_core.setProperty("Camera", "Binning", 2)
    assert demo_core.getROI() == [0, 0, 256, 256]
    demo_core.snapImage()
    assert demo_core.getImage().shape == (256, 256)
    assert demo_core.getImage().astype(np.float64).mean() - offset == pytest.approx(4 * one, rel=1e-3)
    assert demo_core.getPixelSizeUm() == pytest.approx(1.3)


@pytest.mark.parametrize(
    ("timing", "readout_ms", "exposure_ms", "min_s", "max_s"),
    [("Real", 30.0, 100.0, 0.13, 0.5), ("Real", 0.0, 60.0, 0.06, 0.4), ("Instant", 30.0, 300.0, 0.0, 0.2)],
    ids=["real-with-readout", "real-exposure-only", "instant"],
)
def test_snap_takes_exposure_plus_readout_when_timing_is_real(
    demo_core, timing, readout_ms, exposure_ms, min_s, max_s
):
    demo_core.setProperty("Camera", "ExposureTiming", timing)
    demo_core.setProperty("Camera", "ReadoutTime_ms", readout_ms)
    demo_core.setExposure(exposure_ms)
    demo_core.snapImage()  # warm up
    t0 = time.perf_counter()
    demo_core.snapImage()
    elapsed = time.perf_counter() - t0
    assert min_s <= elapsed < max_s


# ------------------------------------------------------- stage, wheel, turret


@pytest.mark.parametrize(
    ("distance", "speed", "accel", "settle_ms", "expected_s"),
    [
        (0.0, 1000.0, 0.0, 0.0, 0.0),
        (1000.0, 0.0, 5000.0, 20.0, 0.02),  # speed 0: instant move, settle only
        (2000.0, 10_000.0, 0.0, 0.0, 0.2),  # constant speed (today's behaviour)
        (2000.0, 10_000.0, 100_000.0, 0.0, 0.3),  # trapezoid: d/v + v/a
        (500.0, 10_000.0, 100_000.0, 0.0, 2 * np.sqrt(500 / 100_000)),  # triangle: 2·sqrt(d/a)
        (1000.0, 10_000.0, 100_000.0, 50.0, 0.25),  # d = v²/a: both formulas give 0.2 s; + 50 ms settle
    ],
    ids=["no-move", "settle-only", "constant-speed", "trapezoid", "triangle", "boundary-settle"],
)
def test_move_time_follows_a_trapezoidal_profile(distance, speed, accel, settle_ms, expected_s):
    from acquisition.demo.devices import move_time_s

    assert move_time_s(distance, speed, accel, settle_ms) == pytest.approx(expected_s)


@pytest.mark.parametrize(
    "args",
    [(-1.0, 1.0, 0.0, 0.0), (1.0, float("nan"), 0.0, 0.0), (1.0, 1.0, -5.0, 0.0)],
    ids=["neg", "nan", "accel"],
)
def test_move_time_refuses_bad_numbers(args):
    from acquisition.demo.devices import move_time_s

    with pytest.raises(ValueError, match="move_time_s needs finite values"):
        move_time_s(*args)


def test_stage_move_with_acceleration_and_settling_takes_the_predicted_time(demo_core):
    from acquisition.demo.devices import move_time_s

    demo_core.setXYPosition(30_000.0, 10_000.0)
    demo_core.setProperty("XYStage", "Speed_um_per_s", 20_000.0)
    demo_core.setProperty("XYStage", "Acceleration_um_per_s2", 200_000.0)
    demo_core.setProperty("XYStage", "SettleTime_ms", 50.0)
    predicted = move_time_s(3000.0, 20_000.0, 200_000.0, 50.0)  # 0.15 + 0.1 + 0.05 s
    assert predicted == pytest.approx(0.3)
    t0 = time.perf_counter()
    demo_core.setXYPosition(33_000.0, 10_000.0)
    time.sleep(0.05)  # still accelerating: 0.5·a·t² = 250 µm
    x_true = float(demo_core.getProperty("XYStage", "TrueX_um"))
    assert 30_100.0 < x_true < 30_600.0
    demo_core.waitForDevice("XYStage")
    elapsed = time.perf_counter() - t0
    assert predicted <= elapsed < predicted + 0.1
    assert float(demo_core.getProperty("XYStage", "TrueX_um")) == 33_000.0


def test_stage_reports_its_travel_in_its_own_coordinates(demo_core):
    travel = [
        float(demo_core.getProperty("XYStage", p))
        for p in ("TravelXMin_um", "TravelXMax_um", "TravelYMin_um", "TravelYMax_um")
    ]
    assert travel == [0.0, 75_000.0, 0.0, 25_000.0]
    demo_core.setXYPosition(10_000.0, 5_000.0)
    demo_core.setOriginXY()
    travel = [
        float(demo_core.getProperty("XYStage", p))
        for p in ("TravelXMin_um", "TravelXMax_um", "TravelYMin_um", "TravelYMax_um")
    ]
    assert travel == [-10_000.0, 65_000.0, -5_000.0, 20_000.0]
    assert [float(demo_core.getProperty("ZStage", p)) for p in ("TravelMin_um", "TravelMax_um")] == [
        -2000.0,
        2000.0,
    ]


@pytest.mark.parametrize(
    ("device", "group", "preset", "back"),
    [("FilterWheel", "Channel", "tdTomato", "DAPI"), ("Objective", "Objective", "20x", "10x")],
    ids=["filter-wheel", "objective-turret"],
)
def test_switches_take_their_time_and_block_the_light_meanwhile(demo_core, device, group, preset, back):
    (x, y), z = _tissue_xy(demo_core)
    demo_core.setXYPosition(x, y)
    demo_core.setPosition(z)
    offset = float(demo_core.getProperty("Camera", "DarkOffset_ADU"))
    demo_core.setProperty(device, "SwitchTime_ms", 150.0)
    t0 = time.perf_counter()
    demo_core.setConfig(group, preset)
    assert demo_core.deviceBusy(device)
    demo_core.snapImage()  # mid-switch: no light reaches the camera
    assert abs(demo_core.getImage().mean() - offset) < 1.0
    demo_core.waitForDevice(device)
    assert 0.15 <= time.perf_counter() - t0 < 0.4
    demo_core.snapImage()
    assert demo_core.getImage().mean() > offset + 5
    demo_core.setConfig(group, preset)  # already there: no switch
    assert not demo_core.deviceBusy(device)
    demo_core.setConfig(group, back)
    assert demo_core.deviceBusy(device)
