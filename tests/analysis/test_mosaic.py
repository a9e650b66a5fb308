"""Section mosaic placement (analysis.mosaic) and tile registration (analysis.registration)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from analysis.mosaic import SectionMosaic
from analysis.registration import (
    edge_neighbour_pairs,
    measure_pair_shift,
    overlap_regions,
    register_tiles,
    solve_positions,
)
from analysis.tile import block_reduce_mean

PIXEL_UM = 0.65


def texture(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Smooth random texture (blurred noise, blob scale a few px), float32."""
    rng = np.random.default_rng(seed)
    t = ndi.gaussian_filter(rng.normal(size=shape), 2.0)
    return (100 + 50 * t / t.std()).astype(np.float32)


def cut(tex: np.ndarray, top_left_rc: tuple[int, int], size: int) -> np.ndarray:
    r, c = top_left_rc
    return tex[r : r + size, c : c + size]


def grid_corners(rows: int, cols: int, step: int, margin: int) -> np.ndarray:
    """(n, 2) integer (row, col) top-left corners of a serpentine grid."""
    out = []
    for i in range(rows):
        js = range(cols) if i % 2 == 0 else reversed(range(cols))
        out.extend((margin + i * step, margin + j * step) for j in js)
    return np.array(out)


def centre_um(corner_rc: np.ndarray, size: int) -> np.ndarray:
    """Stage (x, y) of a tile centre whose top-left pixel corner is at texture (row, col)."""
    return np.array([corner_rc[1] + size / 2, corner_rc[0] + size / 2]) * PIXEL_UM


# ------------------------------------------------------------------ registration, synthetic


def test_pair_shift_sign_and_precision():
    tex = texture((400, 600), seed=1)
    a = cut(tex, (50, 50), 256)
    b = cut(tex, (53, 50 + 230 - 4), 256)  # requested 230 px right; truly 226 right, 3 down
    ps = measure_pair_shift(a, b, (230 * PIXEL_UM, 0.0), pixel_size_um=PIXEL_UM)
    assert ps is not None
    np.testing.assert_allclose(ps.shift_px, [-4, 3], atol=0.15)
    np.testing.assert_allclose(ps.offset_um, np.array([226, 3]) * PIXEL_UM, atol=0.1)
    assert ps.ncc > 0.99


def test_register_recovers_known_offsets():
    size, step = 256, 230  # 10 % overlap
    tex = texture((1000, 1000), seed=2)
    rng = np.random.default_rng(3)
    nominal = grid_corners(3, 3, step, margin=40)
    true = nominal + rng.integers(-8, 9, size=nominal.shape)  # where the tiles really are
    tiles = [cut(tex, tuple(t), size) for t in true]
    requested = np.array([centre_um(c, size) for c in nominal]) + rng.uniform(-0.3, 0.3, (len(nominal), 2))
    true_um = np.array([centre_um(c, size) for c in true])
    reg = register_tiles(tiles, requested, pixel_size_um=PIXEL_UM)
    err = reg.positions_um - true_um
    err -= err.mean(axis=0)
    assert np.abs(err).max() / PIXEL_UM < 0.2
    # 12 edge + 8 diagonal neighbours overlapping, all confident
    assert len(reg.pairs) == 20 and reg.pair_used.sum() >= 12
    assert np.allclose(reg.correction_um.mean(axis=0), 0.0, atol=1e-6)  # anchor: mean correction 0
    before = requested - true_um
    before -= before.mean(axis=0)
    assert np.median(np.hypot(*before.T)) > 2 * PIXEL_UM


def test_solve_rejects_an_outlier_pair_and_keeps_isolated_tiles():
    # 3 tiles in a row, tile 2 shifted by (+2, 0) px; pair (0, 2) lies by 10 px; tile 3 is alone
    pairs = [(0, 1), (1, 2), (0, 2)]
    shifts = [(0.0, 0.0), (2.0, 0.0), (12.0, 0.0)]
    corr, used, resid = solve_positions(4, pairs, shifts, max_residual_px=1.0)
    assert list(used) == [True, True, False]
    np.testing.assert_allclose(corr[1] - corr[0], [0, 0], atol=1e-3)
    np.testing.assert_allclose(corr[2] - corr[0], [2, 0], atol=1e-3)
    np.testing.assert_allclose(corr[:3].mean(axis=0), 0, atol=1e-3)
    np.testing.assert_allclose(corr[3], 0, atol=1e-9)
    assert resid[2] == pytest.approx(10, abs=1e-3)


def test_glass_pairs_are_not_trusted():
    rng = np.random.default_rng(4)
    a, b = rng.normal(100, 5, (2, 128, 128))  # noise only: nothing to register
    reg = register_tiles([a, b], [(0.0, 0.0), (110 * PIXEL_UM, 0.0)], pixel_size_um=PIXEL_UM)
    assert not reg.pair_used.any()
    np.testing.assert_array_equal(reg.correction_um, 0.0)


# ------------------------------------------------------------------ mosaic


def test_exactly_placed_tiles_reproduce_the_reduced_texture():
    f, size, step = 6, 120, 102  # tile and step whole multiples of the reduction factor
    tex = texture((540, 540), seed=5)
    corners = grid_corners(4, 4, step, margin=60)  # multiples of 6
    mos = SectionMosaic(
        (0.0, 0.0, 540 * PIXEL_UM, 540 * PIXEL_UM),
        n_channels=2,
        tile_pixel_size_um=PIXEL_UM,
        mosaic_pixel_um=4.0,
    )
    assert mos.factor == f and mos.pixel_size_um == pytest.approx(3.9)
    assert mos.shape == (90, 90)
    for c in corners:
        t = cut(tex, tuple(c), size)
        mos.add_tile(np.stack([t, 2 * t]), center_um=tuple(centre_um(c, size)), pixel_size_um=PIXEL_UM)
    expected = block_reduce_mean(tex, f)
    cov = mos.coverage
    lo, hi = 60 // f, (60 + 3 * step + size) // f
    assert cov[lo:hi, lo:hi].all() and cov.sum() == (hi - lo) ** 2
    # contributions are rounded to 2⁻¹⁶ (order-independent sums): ≤ 2⁻¹⁶ / 0.5 absolute error
    np.testing.assert_allclose(mos.image(0)[cov], expected[cov], rtol=1e-5, atol=2**-15)
    np.testing.assert_allclose(mos.image(1)[cov], 2 * expected[cov], rtol=1e-5, atol=2**-15)
    assert np.isnan(mos.image(0)[~cov]).all()


def test_blending_is_order_independent_and_feathered():
    size = 120
    rng = np.random.default_rng(6)
    tiles = [rng.normal(100, 10, (1, size, size)).astype(np.float32) + 50 * k for k in range(5)]
    centres = [(100 + 60 * k, 90 + 25 * k) for k in range(5)]

    def build(order):
        mos = SectionMosaic((0.0, 0.0, 500.0, 400.0), n_channels=1, tile_pixel_size_um=PIXEL_UM)
        for k in order:
            mos.add_tile(tiles[k], center_um=centres[k], pixel_size_um=PIXEL_UM)
        return mos

    a, b = build([0, 1, 2, 3, 4]), build([3, 1, 4, 0, 2])
    np.testing.assert_array_equal(a.coverage, b.coverage)
    np.testing.assert_array_equal(a.image(0), b.image(0))  # to the last bit
    # a blended overlap lies between the two tiles' levels (feathering mixes, does not overwrite)
    img = a.image(0)
    assert np.nanmin(img) > 90 and np.nanmax(img) < 310


def test_tiles_outside_the_box_are_clipped():
    mos = SectionMosaic((0.0, 0.0, 100.0, 100.0), n_channels=1, tile_pixel_size_um=PIXEL_UM)
    tile = np.ones((1, 120, 120), np.float32)
    mos.add_tile(tile, center_um=(0.0, 0.0), pixel_size_um=PIXEL_UM)  # straddles the corner
    mos.add_tile(tile, center_um=(-500.0, 0.0), pixel_size_um=PIXEL_UM)  # wholly outside
    cov = mos.coverage
    assert cov[0, 0] and not cov[-1, -1]
    np.testing.assert_allclose(mos.image(0)[cov], 1.0)
    with pytest.raises(ValueError):
        mos.add_tile(tile, center_um=(0.0, 0.0), pixel_size_um=0.325)


# ------------------------------------------------------------------ demo microscope (the requirement)


@pytest.mark.slow
def test_registration_undoes_demo_stage_positioning_error():
    from acquisition.demo import find_demo_hub
    from tests.conftest import make_demo_core

    core = make_demo_core()
    try:
        core.setConfig("Objective", "10x")
        core.setConfig("Channel", "DAPI")
        core.setExposure(20.0)
        core.setProperty("XYStage", "PositioningError_um", 3.0)
        core.setProperty("XYStage", "PositioningErrorSeed", 11)
        slide = find_demo_hub(core).slide
        cx, cy = slide.sections[0].spec.centre_um
        core.setPosition(float(slide.focal_plane_z_um(cx, cy)))
        px = core.getPixelSizeUm()
        assert px == pytest.approx(PIXEL_UM)
        step = 0.9 * core.getImageWidth() * px  # 10 % overlap
        tiles, requested, true = [], [], []
        for i in range(4):
            for j in range(4) if i % 2 == 0 else reversed(range(4)):
                core.setXYPosition(cx + (j - 1.5) * step, cy + (i - 1.5) * step)
                core.snapImage()
                tiles.append(np.asarray(core.getImage(), dtype=np.float32))
                requested.append(core.getXYPosition())
                true.append(
                    (
                        float(core.getProperty("XYStage", "TrueX_um")),
                        float(core.getProperty("XYStage", "TrueY_um")),
                    )
                )
    finally:
        core.close()
    requested, true = np.array(requested), np.array(true)
    reg = register_tiles(tiles, requested, pixel_size_um=px)

    def median_error_px(pos):
        err = pos - true
        err -= err.mean(axis=0)  # registration only knows relative positions
        return float(np.median(np.hypot(*err.T))) / px

    assert median_error_px(reg.positions_um) <= 1.0
    assert median_error_px(requested) > 1.0
    assert reg.pair_used.sum() >= 24  # of the 24 edge neighbours (+ 18 diagonal)


# ------------------------------------------------------------------ pieces of registration


@pytest.mark.parametrize(
    ("offset", "margin", "expected"),
    [
        ((230.4, 0.0), 0, ((slice(0, 256), slice(230, 256)), (slice(0, 256), slice(0, 26)))),
        ((230.4, 0.0), 10, ((slice(0, 256), slice(220, 256)), (slice(0, 256), slice(0, 36)))),
        ((-3.0, -230.0), 5, ((slice(0, 31), slice(0, 256)), (slice(225, 256), slice(0, 256)))),
    ],
    ids=["right", "right-with-margin", "above"],
)
def test_overlap_regions(offset, margin, expected):
    got = overlap_regions(offset, (256, 256), margin_px=margin)
    assert got == expected


def test_no_overlap_gives_empty_regions():
    (_, ca), (_, cb) = overlap_regions((300.0, 0.0), (256, 256), margin_px=0)
    assert len(range(256)[ca]) == 0 and len(range(256)[cb]) == 0


def test_edge_neighbours_match_a_brute_force_search():
    rng = np.random.default_rng(8)
    size = (100, 120)
    centres = np.array([(c * 100 * PIXEL_UM, r * 85 * PIXEL_UM) for r in range(6) for c in range(7)])
    centres += rng.uniform(-3, 3, centres.shape)
    a = PIXEL_UM * np.array([[0.0, 1.0], [-1.0, 0.0]])  # a camera turned by 90°: x steps are rows
    got = {tuple(p) for p in edge_neighbour_pairs(centres, size, a, overlap_min_px=8)}
    want = set()
    for i in range(len(centres)):
        for j in range(i + 1, len(centres)):
            d = np.abs(np.linalg.solve(a, centres[j] - centres[i]))  # (columns, rows) of the camera
            if size[1] - d[0] >= 8 and size[0] - d[1] >= 8 and (d[0] < size[1] / 2 or d[1] < size[0] / 2):
                want.add((i, j))
    # stage x steps of 100 px are 100 camera rows of 100: no overlap; y steps overlap by 35 columns
    assert got == want and len(got) == 7 * 5


def test_sparse_solve_of_a_long_chain():
    n = 3000  # a dense n × n solve would take seconds and 70 MB; the sparse one is linear
    true = np.cumsum(np.random.default_rng(9).normal(0, 1, (n, 2)), axis=0)
    pairs = np.column_stack([np.arange(n - 1), np.arange(1, n)])
    corr, used, resid = solve_positions(n, pairs, true[1:] - true[:-1])
    np.testing.assert_allclose(corr - corr.mean(axis=0), true - true.mean(axis=0), atol=1e-3)
    assert used.all() and np.nanmax(resid) < 1e-3
