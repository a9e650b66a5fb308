"""Dark frames, tile flags, flat fields and the scan calibration bundle (analysis.calibration, .flatfield)."""

from __future__ import annotations

import warnings

import h5py
import numpy as np
import pytest
from scipy import ndimage as ndi

from analysis.calibration import (
    CalibrationError,
    ScanCalibration,
    applied_calibration,
    measure_dark,
    read_scan_calibration,
    summarise_flags,
    tile_flags,
    write_scan_calibration,
)
from analysis.flatfield import FlatFieldError, flat_from_blank, flat_from_tiles
from analysis.psf import gaussian_psf
from analysis.tile import correct_tile
from tests.analysis import _optics as optics

SHAPE = (256, 320)


def dark_frames(rng, *, offset, read_noise, bits, n=4, hot=0):
    frames = rng.normal(offset, read_noise, (n, *SHAPE))
    if hot:
        idx = rng.integers(0, SHAPE[0] * SHAPE[1], hot)
        frames.reshape(n, -1)[:, idx] += 50 * read_noise + 20
    return np.clip(np.rint(frames), 0, 2**bits - 1).astype(np.uint8 if bits <= 8 else np.uint16)


@pytest.mark.parametrize(
    ("offset", "read_noise", "bits"),
    [
        pytest.param(500.0, 2.75, 16, id="16bit-offset500"),
        pytest.param(100.0, 3.2, 16, id="demo-like"),
        pytest.param(10.3, 0.6, 8, id="8bit-offset10-subADU-noise"),
    ],
)
def test_dark_frames_give_offset_and_read_noise(offset, read_noise, bits):
    rng = np.random.default_rng(0)
    dark = measure_dark(
        dark_frames(rng, offset=offset, read_noise=read_noise, bits=bits, hot=40),
        channel="tdTomato",
        exposure_ms=50.0,
        bit_depth=bits,
        keep_map=True,
    )
    assert dark.offset_adu == pytest.approx(offset, abs=0.05)
    # the camera's output noise: read noise and integer rounding
    assert dark.read_noise_adu == pytest.approx(np.hypot(read_noise, np.sqrt(1 / 12)), rel=0.1)
    assert dark.n_hot_pixels >= 40
    assert dark.dark_map_adu is not None and dark.dark_map_adu.shape == SHAPE
    assert dark.saturation_adu == 2**bits - 1


@pytest.mark.parametrize(
    ("frames", "match"),
    [
        (np.full((2, 8, 8), 255, dtype=np.uint8), "saturated"),
        (np.ones(5), "shape"),
    ],
    ids=["saturated", "not-2d"],
)
def test_unusable_dark_frames_are_refused(frames, match):
    with pytest.raises(CalibrationError, match=match):
        measure_dark(frames, channel="DAPI", exposure_ms=10.0, bit_depth=8)


def test_lit_frames_are_not_taken_for_dark():
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]]
    lit = 100 + 400 * np.exp(-((yy - 128) ** 2 + (xx - 160) ** 2) / 5000) + rng.normal(0, 2, (3, *SHAPE))
    with pytest.raises(CalibrationError, match="shutter"):
        measure_dark(lit.astype(np.uint16), channel="DAPI", exposure_ms=10.0, bit_depth=16)


def test_tile_flags_catch_a_wrong_offset_and_saturation():
    """The issue's 8-bit camera: ~20 ADU tiles against a default offset of 100."""
    rng = np.random.default_rng(2)
    tile = np.clip(rng.normal(20.0, 1.5, SHAPE), 0, 255).astype(np.uint8)
    tile[100:104, 100:110] = 255
    measured = tile_flags(tile, offset_adu=19.8, read_noise_adu=1.5, bit_depth=8)
    assert not measured.darker_than_offset
    assert measured.n_saturated == 40 and not measured.ok
    wrong = tile_flags(tile, offset_adu=100.0, read_noise_adu=1.5, bit_depth=8)
    assert wrong.darker_than_offset
    summary = summarise_flags(
        [measured, wrong, tile_flags(tile[:50, :50], offset_adu=20, read_noise_adu=1.5, bit_depth=8)]
    )
    assert (summary.n_tiles, summary.n_darker_than_offset, summary.n_with_saturation) == (3, 1, 2)
    assert len(summary.messages()) == 2 and "darker than the camera offset" in summary.messages()[0]
    # the corrected intensity has the right sign once the measured offset is used
    assert correct_tile(tile, dark_offset_adu=19.8)[:50, :50].mean() == pytest.approx(0.0, abs=0.3)
    assert correct_tile(tile, dark_offset_adu=100.0).mean() < -70


# ------------------------------------------------------------------ flat fields


def uniformity_pct(image: np.ndarray) -> float:
    """Largest deviation from the mean of 16 × 16 block means (%)."""
    blocks = image[: image.shape[0] // 16 * 16, : image.shape[1] // 16 * 16]
    b = blocks.reshape(blocks.shape[0] // 16, 16, blocks.shape[1] // 16, 16).mean(axis=(1, 3))
    return float(100 * np.max(np.abs(b / b.mean() - 1)))


@pytest.mark.parametrize("fall_off", [0.12, 0.3], ids=["12pct", "30pct"])
def test_blank_field_flat_makes_a_uniform_field_uniform(fall_off):
    rng = np.random.default_rng(3)
    vignette = optics.vignetting(SHAPE, fall_off)
    camera = optics.Camera()
    frames = np.stack([camera.expose(40.0 * vignette, 20.0, rng) for _ in range(4)])
    flat = flat_from_blank(frames, dark_offset_adu=camera.offset_adu, channel="tdTomato")
    assert flat.method == "blank_field" and flat.n_images == 4
    assert flat.image.mean() == pytest.approx(1.0, abs=1e-5)
    truth = vignette / vignette.mean()
    assert np.max(np.abs(flat.image / truth - 1)) < 0.01
    assert flat.fall_off_pct == pytest.approx(100 * fall_off, abs=1.5)
    uniform = camera.expose(25.0 * vignette, 20.0, rng)
    assert uniformity_pct(correct_tile(uniform, dark_offset_adu=camera.offset_adu)) > 100 * fall_off / 2
    corrected = correct_tile(uniform, dark_offset_adu=camera.offset_adu, flat_field=flat.image)
    assert uniformity_pct(corrected) < 3.0


FLAT_SHAPE = (192, 240)


def tissue_tiles(rng, n, vignette, camera, *, with_glass=True):
    """Textured 'tissue' tiles (±14 % at 8 px and 40 px scales) landing anywhere, glass, puncta."""
    tiles = []
    for _ in range(n):
        # wrapped: the content's statistics are the same everywhere in the frame
        fine = ndi.gaussian_filter(rng.standard_normal(FLAT_SHAPE), 8, mode="wrap")
        coarse = ndi.gaussian_filter(rng.standard_normal(FLAT_SHAPE), 40, mode="wrap")
        texture = 1.0 + 0.1 * fine / fine.std() + 0.1 * coarse / coarse.std()
        cover = np.ones(FLAT_SHAPE)
        if with_glass:
            edge = ndi.gaussian_filter(rng.standard_normal(FLAT_SHAPE), 40, mode="wrap")
            cover = (edge > np.quantile(edge, rng.uniform(0.0, 0.4))).astype(float)
        rate = 20.0 * rng.uniform(0.7, 1.4) * texture * cover
        for r, c in rng.integers(2, min(FLAT_SHAPE) - 2, (30, 2)):
            rate[r - 1 : r + 2, c - 1 : c + 2] += 200.0  # axon puncta: outliers for the flat
        tiles.append(camera.expose(rate * vignette, 20.0, rng))
    return tiles


@pytest.mark.slow
def test_flat_from_the_scans_own_tiles():
    rng = np.random.default_rng(4)
    vignette = optics.vignetting(FLAT_SHAPE, 0.12)
    camera = optics.Camera()
    tiles = tissue_tiles(rng, 300, vignette, camera)
    flat = flat_from_tiles(tiles, dark_offset_adu=camera.offset_adu, channel="DAPI", block_px=16)
    assert flat.method == "scan_tiles" and flat.n_images == 300
    truth = vignette / vignette.mean()
    assert np.max(np.abs(flat.image / truth - 1)) < 0.03
    uniform = camera.expose(25.0 * vignette, 20.0, rng)
    corrected = correct_tile(uniform, dark_offset_adu=camera.offset_adu, flat_field=flat.image)
    assert uniformity_pct(corrected) < 3.0


def test_tiles_of_bare_glass_are_left_out_of_the_flat():
    """A scan's tiles beside the tissue (no light above the offset) carry no level and no warning."""
    rng = np.random.default_rng(7)
    vignette = optics.vignetting(FLAT_SHAPE, 0.12)
    camera = optics.Camera()
    tiles = tissue_tiles(rng, 12, vignette, camera, with_glass=False)
    glass = [np.full(FLAT_SHAPE, camera.offset_adu, dtype=np.uint16)] * 3
    kwargs = {"dark_offset_adu": camera.offset_adu, "channel": "DAPI", "min_tiles": 8}
    alone = flat_from_tiles(tiles, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with_glass = flat_from_tiles([*glass[:2], *tiles, glass[2]], **kwargs)
    assert with_glass.n_images == 15
    np.testing.assert_allclose(with_glass.image, alone.image, rtol=1e-6)


def test_too_few_tiles_give_no_flat():
    rng = np.random.default_rng(5)
    vignette = optics.vignetting(FLAT_SHAPE, 0.12)
    camera = optics.Camera()
    with pytest.raises(FlatFieldError, match="blank field"):
        flat_from_tiles(
            tissue_tiles(rng, 3, vignette, camera), dark_offset_adu=camera.offset_adu, channel="DAPI"
        )


def test_calibration_round_trips_through_hdf5(tmp_path):
    rng = np.random.default_rng(6)
    frames = dark_frames(rng, offset=500, read_noise=2.5, bits=16)
    dark = measure_dark(frames, channel="tdTomato", exposure_ms=50, bit_depth=16, keep_map=True)
    camera = optics.Camera()
    frames = np.stack([camera.expose(40.0 * optics.vignetting(SHAPE, 0.12), 20.0, rng) for _ in range(2)])
    flat = flat_from_blank(frames, dark_offset_adu=dark.offset_adu, channel="tdTomato")
    cal = ScanCalibration(
        darks={"tdTomato": dark}, flats={"tdTomato": flat}, psf=gaussian_psf(0.4, pixel_size_um=0.65),
        notes={"psf": "assumed"},
    )  # fmt: skip
    with h5py.File(tmp_path / "scan.h5", "w") as f:
        write_scan_calibration(f.create_group("calibration"), cal)
    with h5py.File(tmp_path / "scan.h5", "r") as f:
        back = read_scan_calibration(f["calibration"])
    assert back.summary() == cal.summary()
    np.testing.assert_array_equal(back.flats["tdTomato"].image, flat.image)
    np.testing.assert_array_equal(back.darks["tdTomato"].dark_map_adu, dark.dark_map_adu)
    assert back.darks["tdTomato"].offset_adu == pytest.approx(dark.offset_adu, abs=1e-4)
    with h5py.File(tmp_path / "scan.h5", "r") as f, pytest.raises(CalibrationError, match="not a CordScope"):
        read_scan_calibration(f["calibration/dark"])


# ------------------------------------------------------- what a scan applies


def a_calibration(rng) -> ScanCalibration:
    dark = measure_dark(
        dark_frames(rng, offset=20.4, read_noise=1.1, bits=8), channel="tdTomato", exposure_ms=50, bit_depth=8
    )
    frames = np.stack(
        [optics.Camera().expose(40.0 * optics.vignetting(SHAPE, 0.12), 20.0, rng) for _ in range(2)]
    )
    flat = flat_from_blank(frames, dark_offset_adu=500.0, channel="tdTomato")
    return ScanCalibration(
        darks={"tdTomato": dark}, flats={"tdTomato": flat}, psf=gaussian_psf(0.4, pixel_size_um=0.65)
    )


@pytest.mark.parametrize(
    ("settings", "offsets", "size", "n_warnings"),
    [
        pytest.param({}, (100.0, 20.4), "psf:gaussian", 1, id="measured-offset-psf-from-file"),
        pytest.param({"dark_offset_from": "plan"}, (100.0, 100.0), "psf:gaussian", 0, id="plan-fixes-offset"),
        pytest.param({"edge_rule": "fixed_fraction"}, (100.0, 20.4), "fixed_fraction", 1, id="former-rule"),
    ],
)
def test_applied_calibration_says_where_each_number_comes_from(settings, offsets, size, n_warnings):
    from analysis.settings import AnalysisSettings

    applied = applied_calibration(
        AnalysisSettings(**settings),
        a_calibration(np.random.default_rng(7)),
        channel_names=("DAPI", "tdTomato"),
        tile_shape=SHAPE,
        pixel_size_um=0.65,
    )
    assert applied.dark_offsets_adu == pytest.approx(offsets, abs=0.06)
    assert applied.flat_fields[0] is None and applied.flat_fields[1].shape == SHAPE
    assert applied.description["object_size"] == size
    assert (applied.size_model is None) == (size == "fixed_fraction")
    assert len(applied.warnings) == n_warnings
    if n_warnings and settings.get("dark_offset_from") != "plan":
        assert "DAPI: no dark frames" in applied.warnings[0]


def test_without_any_calibration_the_analysis_says_so():
    from analysis.settings import AnalysisSettings

    bare = applied_calibration(
        AnalysisSettings(), None, channel_names=("tdTomato",), tile_shape=SHAPE, pixel_size_um=0.65
    )
    assert bare.size_model is None
    assert any("no PSF calibration" in w for w in bare.warnings)
    planned = applied_calibration(
        AnalysisSettings(psf_sigma_um=0.4),
        None,
        channel_names=("tdTomato",),
        tile_shape=SHAPE,
        pixel_size_um=0.65,
    )
    assert planned.description["object_size"] == "psf:plan" and planned.size_model is not None
    # a PSF of another objective is not applied, and that is said
    other = applied_calibration(
        AnalysisSettings(),
        ScanCalibration(psf=gaussian_psf(0.4, pixel_size_um=1.625)),
        channel_names=("tdTomato",),
        tile_shape=SHAPE,
        pixel_size_um=0.65,
    )
    assert other.size_model is None and any("PSF not used" in w for w in other.warnings)
