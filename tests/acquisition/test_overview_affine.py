"""The slide overview through a rotated or mirrored camera: frames turned into the stage frame first."""

from __future__ import annotations

import math

import numpy as np
import pytest

from acquisition.demo import find_demo_hub
from acquisition.hardware import DEMO_CONFIG, build_core
from acquisition.overview import OverviewError, StageFrame, acquire_overview
from acquisition.pixel_geometry import covered_extent_um, pixel_to_stage_um
from analysis.sections import find_sections

P = 1.625
H, W = 60, 84  # not square: a transpose shows
_T = math.radians(1.5)
CAMERAS = {
    "identity": [[1.0, 0.0], [0.0, 1.0]],
    "rot90": [[0.0, -1.0], [1.0, 0.0]],
    "rot-90": [[0.0, 1.0], [-1.0, 0.0]],
    "mirror": [[-1.0, 0.0], [0.0, 1.0]],
    "transpose": [[0.0, 1.0], [1.0, 0.0]],
    "rot1.5": [[math.cos(_T), -math.sin(_T)], [math.sin(_T), math.cos(_T)]],
    "rot-2_mirror": [[-math.cos(0.035), math.sin(0.035)], [math.sin(0.035), math.cos(0.035)]],
}
EXACT = ("identity", "rot90", "rot-90", "mirror", "transpose")


def _world(x_um: np.ndarray, y_um: np.ndarray) -> np.ndarray:
    """A stage image: different x and y slopes (turns and mirrors show) and waves (shifts show)."""
    return 1000 + 3 * x_um + 1 * y_um + 200 * np.sin(x_um / 9.0) * np.cos(y_um / 13.0)


def _frame(affine: np.ndarray, center=(500.0, 300.0)) -> np.ndarray:
    r, c = np.mgrid[0:H, 0:W]
    x, y = pixel_to_stage_um(r, c, center_um=center, affine_um=affine, tile_shape=(H, W))
    return _world(x, y)


@pytest.mark.parametrize("name", list(CAMERAS))
def test_frames_are_turned_into_the_stage_frame(name):
    affine = P * np.array(CAMERAS[name])
    turn = StageFrame.for_camera(affine, P, (H, W))
    stage = turn.apply(_frame(affine))
    assert stage.shape == turn.shape
    if name in EXACT:
        assert turn.permutation is not None
        assert turn.shape == ((W, H) if turn.permutation.transpose else (H, W))
    else:
        assert turn.permutation is None
        width_um, height_um = covered_extent_um(affine, (W, H))
        assert turn.shape == (math.floor(height_um / P), math.floor(width_um / P))
    # result pixel (i, j) images the stage point centre + P·(j + ½ − w/2, i + ½ − h/2)
    hs, ws = turn.shape
    x = 500.0 + (np.arange(ws) + 0.5 - ws / 2) * P
    y = 300.0 + (np.arange(hs) + 0.5 - hs / 2) * P
    expected = _world(x[None, :], y[:, None])
    if name in EXACT:
        np.testing.assert_allclose(stage, expected, rtol=0, atol=1e-9)
    else:  # bilinear between camera pixels of a smooth image
        error = np.abs(stage - expected)
        assert error.max() < 4.0 and error.mean() < 1.0, (error.max(), error.mean())


def test_an_exact_turn_is_a_view_without_copy():
    affine = P * np.array(CAMERAS["rot90"])
    frame = _frame(affine)
    assert np.shares_memory(StageFrame.for_camera(affine, P, (H, W)).apply(frame), frame)


@pytest.mark.parametrize(
    ("affine", "match"),
    [
        pytest.param([[1.0, 2.0], [0.5, 1.0]], "singular", id="singular"),
        pytest.param([[P, 0.0], [0.0, np.nan]], "finite", id="nan"),
    ],
)
def test_a_bad_affine_is_refused(affine, match):
    with pytest.raises(OverviewError, match=match):
        StageFrame.for_camera(affine, P, (H, W))


# ------------------------------------------------------- the demo microscope

CONFIGS = {
    "aligned": "demo.cfg",
    "rot90": "demo-rotated-90.cfg",
    "mirrored": "demo-mirrored.cfg",
    "rot1.5": "demo-rotated-1.5.cfg",
}
#: rat01's C5 and Th7 sections and the glass around them.
REGION_UM = (21_000.0, 3_000.0, 31_000.0, 6_600.0)


def _overview(config: str):
    core = build_core(DEMO_CONFIG.parent / config)
    try:
        core.setProperty("Camera", "SensorWidth", 1024)
        core.setProperty("Camera", "SensorHeight", 1024)
        core.setProperty("Camera", "NoiseSeed", 7)
        z = float(find_demo_hub(core).slide.focal_plane_z_um(26_000.0, 4_800.0))
        return acquire_overview(core, region_um=REGION_UM, z_um=z)
    finally:
        core.close()


@pytest.fixture(scope="module")
def overviews():
    return {name: _overview(cfg) for name, cfg in CONFIGS.items()}


@pytest.mark.slow  # four overviews of 21 tiles (~10 s)
@pytest.mark.parametrize("name", ["rot90", "mirrored", "rot1.5"])
def test_a_turned_camera_gives_the_aligned_cameras_overview_and_sections(overviews, name):
    aligned, turned = overviews["aligned"], overviews[name]
    assert (turned.shape, turned.origin_um, turned.pixel_size_um) == (
        aligned.shape,
        aligned.origin_um,
        aligned.pixel_size_um,
    )
    # the same slide, pixel for pixel up to noise (and, at 1.5°, resampling)
    assert np.corrcoef(turned.image.ravel(), aligned.image.ravel())[0, 1] > 0.998
    assert np.median(np.abs(turned.image - aligned.image)) < 2.0
    found = {
        k: find_sections(ov.image, origin_um=ov.origin_um, pixel_size_um=ov.pixel_size_um)
        for k, ov in (("aligned", aligned), (name, turned))
    }
    assert len(found["aligned"]) == 2 and len(found[name]) == 2
    for a, b in zip(found["aligned"], found[name], strict=True):
        shift_px = np.hypot(*np.subtract(a.centroid_um, b.centroid_um)) / aligned.pixel_size_um
        assert shift_px <= 2.0, (a.centroid_um, b.centroid_um)
        assert a.area_um2 == pytest.approx(b.area_um2, rel=0.02)
