"""Per-tile analysis: correction and axon segmentation (analysis.tile)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage as ndi

from analysis.tile import (
    AxonSegmentation,
    AxonSegmentationSettings,
    block_reduce_mean,
    correct_tile,
    expand_background,
    normalise_flat_field,
    segment_axons,
)

PIXEL_UM = 0.65
# A disc blurred by a Gaussian PSF (the synthetic images here) has its edge at half its
# plateau: the fixed-fraction rule at 0.5 (tests of the shared machinery: background,
# threshold, blocks, specks). Object sizes through a PSF: test_object_size.py.
HALF_MAXIMUM = AxonSegmentationSettings(edge_fraction=0.5)


# ------------------------------------------------------------------ helpers


def render_discs(
    shape: tuple[int, int],
    discs: list[tuple[float, float, float, float]],
    *,
    background: np.ndarray | float = 20.0,
    noise_seed: int | None = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Discs (row, col, radius_px, amplitude) on a background, shot-like noise; and the truth mask.

    Pixel values are the disc's area coverage (4x4 supersampling) blurred by a
    0.45 px Gaussian (an in-focus PSF at 10x); the truth mask holds pixels
    whose centre lies inside a disc, as the demo slide's truth does.
    """
    h, w = shape
    ss = 4
    yy, xx = np.mgrid[0 : h * ss, 0 : w * ss]
    yy = (yy + 0.5) / ss - 0.5
    xx = (xx + 0.5) / ss - 0.5
    signal = np.zeros((h * ss, w * ss))
    truth = np.zeros(shape, dtype=bool)
    rr, cc = np.mgrid[0:h, 0:w]
    for r, c, radius, amp in discs:
        signal += amp * ((yy - r) ** 2 + (xx - c) ** 2 < radius**2)
        truth |= (rr - r) ** 2 + (cc - c) ** 2 < radius**2
    signal = signal.reshape(h, ss, w, ss).mean(axis=(1, 3))
    image = ndi.gaussian_filter(signal, 0.45) + background
    if noise_seed is not None:
        rng = np.random.default_rng(noise_seed)
        image = image + rng.standard_normal(shape) * np.sqrt(2.0 * np.clip(image, 0, None) + 10.0)
    return image.astype(np.float32), truth


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def reference_mask(
    tracer: np.ndarray, seg: AxonSegmentation, settings: AxonSegmentationSettings
) -> np.ndarray:
    """The documented method, written plainly with scipy.ndimage (slow, full frame)."""
    signal = tracer - seg.background_image()
    cut = np.full(signal.shape, seg.threshold_used, dtype=np.float32)
    if settings.edge_fraction > 0:
        r = max(1, round(settings.plateau_radius_um / PIXEL_UM))
        padded = np.pad(signal, r + 1, mode="edge")
        cross = ndi.generate_binary_structure(2, 1)
        plateau = ndi.maximum_filter(ndi.grey_erosion(padded, footprint=cross), 2 * r + 1)
        cut = np.maximum(cut, settings.edge_fraction * plateau[r + 1 : -r - 1, r + 1 : -r - 1])
    mask = signal > cut
    labels, _ = ndi.label(mask, structure=np.ones((3, 3)))
    sizes = np.bincount(labels.ravel())
    keep = sizes * PIXEL_UM**2 >= settings.min_area_um2 - 1e-9
    keep[0] = False
    return keep[labels]


# --------------------------------------------------------------- correction


def test_correct_tile_subtracts_the_dark_offset():
    raw = np.array([[100, 101], [350, 99]], dtype=np.uint16)
    out = correct_tile(raw, dark_offset_adu=100.0)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[0.0, 1.0], [250.0, -1.0]])


def test_flat_field_correction_makes_a_vignetted_field_uniform():
    h, w = 64, 96
    yy, xx = np.mgrid[0:h, 0:w]
    vignette = 1.0 - 0.4 * (((yy - h / 2) / h) ** 2 + ((xx - w / 2) / w) ** 2)
    dark = 100.0
    blank = (dark + 2000.0 * vignette).astype(np.uint16)
    tile = (dark + 500.0 * vignette).astype(np.uint16)
    flat = normalise_flat_field(blank, dark_offset_adu=dark)
    assert flat.dtype == np.float32
    assert flat.mean() == pytest.approx(1.0, abs=1e-6)
    out = correct_tile(tile, dark_offset_adu=dark, flat_field=flat)
    # uniform to within the uint16 rounding of the synthetic images
    assert out.std() / out.mean() < 2e-3
    assert out.mean() == pytest.approx(500.0 * vignette.mean(), rel=2e-3)
    plain = correct_tile(tile, dark_offset_adu=dark)
    assert plain.std() / plain.mean() > 0.02


@pytest.mark.parametrize(
    ("blank", "match"),
    [
        (np.full((4, 4), 100.0), "at or below the dark offset"),
        (np.r_[np.full(15, 500.0), 90.0].reshape(4, 4), "1 pixel"),
        (np.ones(5), "2-D"),
    ],
    ids=["all-dark", "one-dark-pixel", "not-2d"],
)
def test_normalise_flat_field_rejects_unusable_images(blank, match):
    with pytest.raises(ValueError, match=match):
        normalise_flat_field(blank, dark_offset_adu=100.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"flat_field": np.full((8, 8), 900.0)}, "normalise_flat_field"),
        ({"flat_field": np.ones((4, 8))}, "shape"),
        ({"dark_offset_adu": float("nan")}, "finite"),
    ],
    ids=["raw-blank-as-flat", "flat-shape", "nan-offset"],
)
def test_correct_tile_rejects_bad_input(kwargs, match):
    args = {"dark_offset_adu": 100.0} | kwargs
    with pytest.raises(ValueError, match=match):
        correct_tile(np.full((8, 8), 300, dtype=np.uint16), **args)


# ------------------------------------------------------------- segmentation


def disc_grid(n_rows: int, n_cols: int, spacing: float, rng: np.random.Generator):
    """Discs of radius 1.2-2.5 µm, amplitudes spread tenfold (as labelled axons are)."""
    discs = []
    for i in range(n_rows):
        for j in range(n_cols):
            r = spacing * (i + 0.75) + rng.uniform(-2, 2)
            c = spacing * (j + 0.75) + rng.uniform(-2, 2)
            discs.append((r, c, rng.uniform(1.2, 2.5) / PIXEL_UM, rng.uniform(150.0, 1500.0)))
    return discs


def test_discs_on_a_ramp_get_their_true_area():
    rng = np.random.default_rng(3)
    shape = (200, 260)
    ramp = 15.0 + 0.15 * np.arange(shape[1])[None, :] + 0.05 * np.arange(shape[0])[:, None]
    tracer, truth = render_discs(shape, disc_grid(8, 10, 24.0, rng), background=ramp)
    seg = segment_axons(tracer, pixel_size_um=PIXEL_UM, settings=HALF_MAXIMUM)
    assert seg.mask.shape == shape and seg.mask.dtype == bool
    assert seg.axon_pixels == int(seg.mask.sum())
    assert seg.axon_area_um2 == pytest.approx(seg.axon_pixels * PIXEL_UM**2)
    assert abs(seg.axon_pixels - truth.sum()) / truth.sum() < 0.03
    assert dice(seg.mask, truth) > 0.96
    # every disc found, none invented
    _, n_found = ndi.label(seg.mask, structure=np.ones((3, 3)))
    assert n_found == 80
    # the ramp is the background: within ~1 ADU of it away from the discs
    far = ~ndi.binary_dilation(truth, iterations=4)
    assert abs(float(np.mean((seg.background_image() - ramp)[far]))) < 1.0


def test_one_global_threshold_would_inflate_bright_discs():
    rng = np.random.default_rng(4)
    tracer, truth = render_discs((160, 160), disc_grid(6, 6, 26.0, rng))
    refined = segment_axons(tracer, pixel_size_um=PIXEL_UM, settings=HALF_MAXIMUM)
    plain = segment_axons(
        tracer, pixel_size_um=PIXEL_UM, settings=dataclasses.replace(HALF_MAXIMUM, edge_fraction=0.0)
    )
    assert plain.threshold_used == refined.threshold_used
    assert plain.axon_pixels > 1.25 * truth.sum()
    assert abs(refined.axon_pixels - truth.sum()) / truth.sum() < 0.03


def test_auto_threshold_is_k_times_the_noise():
    rng = np.random.default_rng(5)
    noise_sd = np.sqrt(2.0 * 40.0 + 10.0)  # shot-like noise of the synthetic background
    tracer, _ = render_discs((256, 256), disc_grid(6, 6, 40.0, rng), background=40.0, noise_seed=1)
    seg = segment_axons(tracer, pixel_size_um=PIXEL_UM)
    assert seg.noise_sigma == pytest.approx(noise_sd, rel=0.05)
    assert seg.threshold_used == pytest.approx(5.0 * seg.noise_sigma)
    # integer (camera-like) data give the same σ: the median is interpolated within its bin
    rounded = segment_axons(np.rint(tracer), pixel_size_um=PIXEL_UM)
    assert rounded.noise_sigma == pytest.approx(seg.noise_sigma, rel=0.03)


def test_fixed_threshold_is_used_as_given_and_drops_dim_objects():
    discs = [(30.0, 30.0, 3.0, 100.0), (30.0, 80.0, 3.0, 1000.0)]
    tracer, truth = render_discs((64, 112), discs, noise_seed=2)
    fixed_low = AxonSegmentationSettings(threshold_method="fixed", threshold_adu=40.0)
    fixed_high = dataclasses.replace(fixed_low, threshold_adu=300.0)
    low = segment_axons(tracer, pixel_size_um=PIXEL_UM, settings=fixed_low)
    high = segment_axons(tracer, pixel_size_um=PIXEL_UM, settings=fixed_high)
    assert low.threshold_used == 40.0 and high.threshold_used == 300.0
    assert low.mask[30, 30] and low.mask[30, 80]
    assert not high.mask[:, :55].any() and high.mask[30, 80]
    assert dice(low.mask, truth) > 0.9


@pytest.mark.parametrize(
    "background",
    [pytest.param(0.0, id="glass"), pytest.param(25.0, id="tissue"), pytest.param("ramp", id="tissue-edge")],
)
def test_no_axons_are_invented_where_there_are_none(background):
    shape = (512, 512)
    if background == "ramp":
        # glass on the left, tissue on the right, a 5 µm edge
        col = np.arange(shape[1])
        background = np.broadcast_to(25.0 / (1.0 + np.exp(-(col - 256) / 4.0)), shape)
    tracer, _ = render_discs(shape, [], background=background, noise_seed=11)
    seg = segment_axons(tracer, pixel_size_um=PIXEL_UM)
    assert seg.axon_pixels == 0
    assert np.isnan(seg.mean_intensity)
    assert seg.signal_sum == 0.0


def speck_image() -> tuple[np.ndarray, np.ndarray]:
    """Flat background with specks of 1-4 pixels and objects of 5+ pixels, at awkward places."""
    img = np.zeros((96, 100), dtype=np.float32)
    keep = np.zeros(img.shape, dtype=bool)

    def put(rows, cols, *, kept):
        img[rows, cols] = 500.0
        keep[rows, cols] = kept

    put(10, 10, kept=False)  # single pixel
    put(slice(20, 22), slice(40, 42), kept=False)  # 2x2 = 4 px
    put(slice(30, 34), 31, kept=False)  # 4-px line crossing the 32-px block boundary
    put(slice(62, 65), slice(63, 66), kept=True)  # 3x3 across a block corner
    put(0, slice(70, 74), kept=False)  # 4 px on the frame border
    put(slice(94, 96), slice(97, 100), kept=True)  # 6 px in the far corner (partial block)
    put(50, slice(2, 7), kept=True)  # 5-px line: exactly the minimum
    put(slice(80, 82), slice(10, 12), kept=True)  # 2x2 ...
    img[82, 12] = 500.0  # ... plus a diagonal neighbour: 5 px, 8-connected
    keep[82, 12] = True
    return img, keep


def test_specks_below_the_minimum_area_are_removed_exactly():
    img, keep = speck_image()
    settings = AxonSegmentationSettings(
        threshold_method="fixed", threshold_adu=100.0, edge_fraction=0.0, min_area_um2=5 * PIXEL_UM**2
    )
    seg = segment_axons(img, pixel_size_um=PIXEL_UM, settings=settings)
    np.testing.assert_array_equal(seg.mask, keep)
    assert seg.mean_intensity == pytest.approx(500.0, rel=1e-4)
    no_specks = dataclasses.replace(settings, min_area_um2=0.0)
    assert segment_axons(img, pixel_size_um=PIXEL_UM, settings=no_specks).axon_pixels == int((img > 0).sum())


@pytest.mark.parametrize("shape", [(256, 256), (97, 130), (300, 257), (7, 9)], ids=str)
@pytest.mark.parametrize("edge_fraction", [0.6, 0.0])
@pytest.mark.parametrize("min_area_um2", [2.0, 6.0], ids=["5px", "15px"])  # 15 px: no 3x3 pre-test
def test_matches_the_plain_full_frame_method(shape, edge_fraction, min_area_um2):
    """Blocks, halos, chunks and padding change nothing: the result is the documented method."""
    rng = np.random.default_rng(sum(shape))
    n = max(1, shape[0] * shape[1] // 600)
    discs = [
        (
            rng.uniform(-3, shape[0] + 3),
            rng.uniform(-3, shape[1] + 3),
            rng.uniform(0.6, 4.0),
            rng.uniform(60, 900),
        )
        for _ in range(n)
    ]
    # a low fixed threshold makes plenty of noise specks to remove
    settings = AxonSegmentationSettings(
        threshold_method="fixed", threshold_adu=12.0, edge_fraction=edge_fraction, min_area_um2=min_area_um2
    )
    tracer, _ = render_discs(shape, discs, background=20.0, noise_seed=int(rng.integers(1000)))
    seg = segment_axons(tracer, pixel_size_um=PIXEL_UM, settings=settings)
    expected = reference_mask(tracer, seg, settings)
    np.testing.assert_array_equal(seg.mask, expected)
    signal = tracer - seg.background_image()
    assert seg.signal_sum == pytest.approx(float(signal[expected].sum(dtype=np.float64)), rel=1e-4, abs=1e-2)


def test_integer_input_and_views_are_accepted():
    tracer, _ = render_discs((64, 64), [(32.0, 32.0, 3.0, 800.0)], noise_seed=3)
    base = segment_axons(tracer, pixel_size_um=PIXEL_UM)
    wide = np.zeros((64, 128), dtype=np.float32)
    wide[:, ::2] = tracer
    view = segment_axons(wide[:, ::2], pixel_size_um=PIXEL_UM)
    as_int = segment_axons(np.rint(tracer).astype(np.int32), pixel_size_um=PIXEL_UM)
    np.testing.assert_array_equal(view.mask, base.mask)
    assert abs(int(as_int.mask.sum()) - base.axon_pixels) <= 2


@pytest.mark.parametrize(
    ("tracer", "pixel_size_um", "match"),
    [
        (np.zeros(10), PIXEL_UM, "2-D"),
        (np.zeros((0, 5)), PIXEL_UM, "non-empty"),
        (np.zeros((8, 8)), 0.0, "pixel_size_um"),
        (np.zeros((8, 8)), float("inf"), "pixel_size_um"),
    ],
    ids=["1d", "empty", "zero-pixel", "inf-pixel"],
)
def test_segment_axons_rejects_bad_input(tracer, pixel_size_um, match):
    with pytest.raises(ValueError, match=match):
        segment_axons(tracer, pixel_size_um=pixel_size_um)


BAD_SETTINGS = [
    ({"threshold_method": "otsu"}, "threshold_method"),
    ({"background_scale_um": 0.0}, "background_scale_um"),
    ({"noise_k_sigma": -1.0}, "noise_k_sigma"),
    ({"noise_floor_adu": float("nan")}, "noise_floor_adu"),
    ({"threshold_adu": -5.0}, "threshold_adu"),
    ({"edge_fraction": 1.0}, "edge_fraction"),
    ({"plateau_radius_um": 0.0}, "plateau_radius_um"),
    ({"min_area_um2": -1.0}, "min_area_um2"),
]


@pytest.mark.parametrize(("change", "match"), BAD_SETTINGS, ids=[m for _, m in BAD_SETTINGS])
def test_settings_validation(change, match):
    with pytest.raises(ValueError, match=match):
        AxonSegmentationSettings(**change)


def test_settings_are_keyword_only_and_frozen():
    s = AxonSegmentationSettings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.edge_fraction = 0.5  # type: ignore[misc]
    with pytest.raises(TypeError):
        AxonSegmentationSettings(15.0)  # type: ignore[misc]


# ------------------------------------------------------------------ helpers


def test_block_reduce_mean_handles_partial_blocks():
    a = np.arange(5 * 7, dtype=np.float32).reshape(5, 7)
    out = block_reduce_mean(a, 3)
    assert out.shape == (2, 3)
    assert out[0, 0] == pytest.approx(a[:3, :3].mean())
    assert out[1, 2] == pytest.approx(a[3:, 6:].mean())
    assert out[0, 2] == pytest.approx(a[:3, 6:].mean())
    np.testing.assert_allclose(block_reduce_mean(np.ones((8, 8)), 4), np.ones((2, 2)))
    with pytest.raises(ValueError, match="factor"):
        block_reduce_mean(a, 0)


def test_expand_background_is_bilinear_between_block_centres():
    lattice = np.array([[0.0, 8.0], [16.0, 24.0]], dtype=np.float32)
    full = expand_background(lattice, block_px=8, shape=(16, 16))
    assert full.shape == (16, 16)
    # constant up to the first centre (pixel 3.5), linear between centres, constant after
    assert full[0, 0] == full[3, 3] == 0.0
    assert full[12, 12] == full[15, 15] == 24.0
    # pixel 8 lies (8 − 3.5) / 8 of the way from the first centre to the second
    assert full[3, 8] == pytest.approx(8.0 * (8 - 3.5) / 8)
    assert full[8, 3] == pytest.approx(16.0 * (8 - 3.5) / 8)
    assert full[8, 8] == pytest.approx(24.0 * (8 - 3.5) / 8)


# ------------------------------------------------------- demo slide accuracy


@pytest.fixture(scope="module")
def demo_tiles():
    """In-focus tracer tiles (512², 10x, noise on) of the demo slide with their truth masks."""
    from acquisition.demo import find_demo_hub
    from tests.conftest import make_demo_core

    core = make_demo_core(sensor_px=512, noise=True, seed=7)
    try:
        slide = find_demo_hub(core).slide
        core.setConfig("Objective", "10x")
        core.setConfig("Channel", "tdTomato")
        core.setExposure(50.0)
        dark = float(core.getProperty(core.getCameraDevice(), "DarkOffset_ADU"))
        tiles = {}

        def snap(name, section_id, xy):
            core.setXYPosition(*xy)
            core.setPosition(float(slide.focal_plane_z_um(*xy)))
            core.snapImage()
            image = core.getImage()
            truth = (
                slide.render_truth_labels(
                    center_um=xy, pixel_size_um=PIXEL_UM, shape=image.shape, section_id=section_id
                )
                if section_id
                else None
            )
            tiles[name] = (correct_tile(image, dark_offset_adu=dark), truth)

        for sec in slide.sections:
            spec = sec.spec
            if (
                spec.orientation == "coronal"
                and spec.level in ("C5", "L2")
                and spec.animal in ("rat01", "rat03", "rat05")
            ):
                rst = sec.rubrospinal_territory.mean(axis=0)
                snap(f"{spec.section_id}/rst", spec.section_id, (float(rst[0]), float(rst[1])))
                if spec.level == "C5":
                    # mirror image of the territory: same tissue, ipsilateral, no labelled axons
                    mid, right = np.asarray(sec.midline_point_um), np.asarray(sec.right_direction)
                    ipsi = rst - 2.0 * np.dot(rst - mid, right) * right
                    snap(f"{spec.section_id}/ipsi", spec.section_id, (float(ipsi[0]), float(ipsi[1])))
            if spec.section_id == "rat02-lesion":
                # contralateral white matter, rostral of the lesion: beaded fibres
                side = 1.0 if spec.tracer_side == "right" else -1.0
                xy = np.asarray(sec.epicenter_um) + 2500.0 * np.asarray(sec.rostral_direction)
                xy = xy + side * 700.0 * np.asarray(sec.right_direction)
                snap("rat02-lesion/fibres", spec.section_id, (float(xy[0]), float(xy[1])))
        snap("glass", None, (10_000.0, 12_000.0))
        return tiles
    finally:
        core.close()


@pytest.fixture(scope="module")
def demo_psf():
    """The demo microscope's PSF from its beads, with the size offset of its size standards."""
    from analysis.object_size import measure_size_offset
    from analysis.psf import measure_psf_from_beads
    from tests.analysis import _model_a

    rng = np.random.default_rng(11)
    psf, _ = measure_psf_from_beads(
        _model_a.bead_images(rng), pixel_size_um=PIXEL_UM, dark_offset_adu=_model_a.DARK_OFFSET_ADU
    )
    offset = measure_size_offset(_model_a.size_standards(rng), psf=psf, pixel_size_um=PIXEL_UM)
    return psf.with_size_offset(offset.size_offset_um2)


@pytest.fixture(scope="module")
def demo_size_model(demo_psf):
    from analysis.object_size import object_size_model

    return object_size_model(demo_psf, pixel_size_um=PIXEL_UM)


RST_TILES = [f"{a}-{lvl}/rst" for lvl in ("C5", "L2") for a in ("rat01", "rat03", "rat05")]


@pytest.mark.slow
@pytest.mark.parametrize("name", RST_TILES)
def test_rubrospinal_territory_tiles_match_the_truth(demo_tiles, demo_size_model, name):
    tracer, truth = demo_tiles[name]
    seg = segment_axons(tracer, pixel_size_um=PIXEL_UM, size_model=demo_size_model)
    assert seg.edge_rule == "size_model:beads"
    axons = truth["axons"]
    assert axons.sum() > 1000, "the tile should hold labelled axons"
    assert dice(seg.mask, axons) >= 0.95
    assert abs(seg.axon_pixels - int(axons.sum())) / axons.sum() <= 0.05
    for region in ("section", "rubrospinal_territory"):
        inside = truth[region]
        pct_seg = 100.0 * (seg.mask & inside).sum() / inside.sum()
        pct_true = 100.0 * (axons & inside).sum() / inside.sum()
        assert abs(pct_seg - pct_true) <= 0.3, region
    assert seg.mean_intensity > 5 * seg.threshold_used


@pytest.mark.slow
def test_demo_puncta_need_the_size_standards_offset(demo_tiles, demo_psf):
    """With the beads' PSF alone the demo's puncta read ~10 % large: its renderer is no convolution."""
    from analysis.object_size import object_size_model

    assert 0.5 < demo_psf.size_offset_um2 < 1.3  # its soft edge adds π(σ² + L²/4) ≈ 0.86 µm²
    tracer, truth = demo_tiles["rat01-C5/rst"]
    psf_only = object_size_model(demo_psf.with_size_offset(0.0), pixel_size_um=PIXEL_UM)
    seg = segment_axons(tracer, pixel_size_um=PIXEL_UM, size_model=psf_only)
    assert 1.05 < seg.axon_pixels / truth["axons"].sum() < 1.2


@pytest.mark.slow
def test_beaded_fibres_match_the_truth(demo_tiles, demo_size_model):
    tracer, truth = demo_tiles["rat02-lesion/fibres"]
    seg = segment_axons(tracer, pixel_size_um=PIXEL_UM, size_model=demo_size_model)
    axons = truth["axons"]
    assert axons.sum() > 1000
    assert dice(seg.mask, axons) >= 0.88
    # dim beads next to bright ones read slightly small (module docstring, limits)
    assert abs(seg.axon_pixels - int(axons.sum())) / axons.sum() <= 0.12


@pytest.mark.slow
@pytest.mark.parametrize("name", ["rat01-C5/ipsi", "rat03-C5/ipsi", "rat05-C5/ipsi", "glass"])
def test_axon_free_tiles_stay_empty(demo_tiles, demo_size_model, name):
    tracer, truth = demo_tiles[name]
    if truth is not None:
        assert not truth["axons"].any() and truth["section"].mean() > 0.8
    for model in (None, demo_size_model):
        seg = segment_axons(tracer, pixel_size_um=PIXEL_UM, size_model=model)
        assert seg.axon_pixels == 0
        assert len(seg.objects) == 0
