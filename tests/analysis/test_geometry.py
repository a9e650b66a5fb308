"""Pixel ↔ stage geometry (analysis.geometry): the pixel-size affine, block lattices, tiles on grids."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import ndimage as ndi

from analysis.geometry import (
    BlockLattice,
    StageGrid,
    TileOnGrid,
    affine_from_attr,
    affine_from_core,
    affine_to_attr,
    axis_permutation,
    footprint_bbox_um,
    footprint_corners_um,
    pixel_size_from_affine,
    pixel_to_stage_matrix,
    pixel_to_stage_um,
    px_offset_to_stage_um,
    stage_offset_to_px,
    stage_to_pixel,
    to_stage_orientation,
)

P = 0.65


def rotation(deg: float) -> np.ndarray:
    t = math.radians(deg)
    return P * np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])


AFFINES = {
    "identity": P * np.eye(2),
    "rot90": P * np.array([[0.0, -1.0], [1.0, 0.0]]),
    "rot180": -P * np.eye(2),
    "rot270": P * np.array([[0.0, 1.0], [-1.0, 0.0]]),
    "mirror-x": P * np.array([[-1.0, 0.0], [0.0, 1.0]]),
    "mirror-y": P * np.array([[1.0, 0.0], [0.0, -1.0]]),
    "transpose": P * np.array([[0.0, 1.0], [1.0, 0.0]]),
    "rot1.5": rotation(1.5),
}
PERMUTATIONS = [k for k in AFFINES if k != "rot1.5"]


# ---------------------------------------------------------------- the affine


@pytest.mark.parametrize(
    ("affine6", "pixel", "expected"),
    [
        ((1.0, 0.0, 0.0, 0.0, 1.0, 0.0), 0.65, [[0.65, 0.0], [0.0, 0.65]]),
        ((0.0, -0.65, 5.0, 0.65, 0.0, 7.0), 0.65, [[0.0, -0.65], [0.65, 0.0]]),  # c, f ignored
        ((-1.3, 0.0, 0.0, 0.0, 1.3, 0.0), 1.3, [[-1.3, 0.0], [0.0, 1.3]]),
    ],
    ids=["identity-means-unset", "rotated-90", "mirrored-binned"],
)
def test_affine_from_core(affine6, pixel, expected):
    np.testing.assert_allclose(affine_from_core(affine6, pixel), expected)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: affine_from_core((1.0, 0.0, 0.0, 0.0), 0.65), "6 numbers"),
        (lambda: affine_from_core((1.0, 0.0, 0.0, 0.0, 1.0, 0.0), 0.0), "positive"),
        (lambda: affine_from_attr("[[1, 2], [2, 4]]", 0.65), "singular"),
        (lambda: affine_from_attr("not json", 0.65), "JSON"),
        (lambda: affine_from_attr([[1.0, 0.0]], 0.65), "2 × 2"),
        (lambda: affine_from_attr([[math.nan, 0.0], [0.0, 1.0]], 0.65), "finite"),
    ],
    ids=["short-affine", "no-pixel-size", "singular", "not-json", "not-2x2", "nan"],
)
def test_bad_affines_are_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize(
    "value",
    [None, "[[0.65, 0.0], [0.0, 0.65]]", b"[[0.65, 0.0], [0.0, 0.65]]", [[0.65, 0.0], [0.0, 0.65]]],
    ids=["absent", "json-text", "json-bytes", "nested-list"],
)
def test_affine_from_attr_forms(value):
    np.testing.assert_allclose(affine_from_attr(value, 0.65), 0.65 * np.eye(2))


def test_affine_attr_round_trip_and_pixel_size():
    a = AFFINES["rot1.5"]
    np.testing.assert_allclose(json.loads(affine_to_attr(a)), a)
    np.testing.assert_allclose(affine_from_attr(affine_to_attr(a), 99.0), a)
    assert pixel_size_from_affine(a) == pytest.approx(P)
    # float noise of a config is not a rotation
    noisy = affine_from_attr([[0.65, 1e-14], [-1e-14, 0.65]], 0.65)
    assert noisy[0, 1] == 0.0 and noisy[1, 0] == 0.0


# ---------------------------------------------------------------- points


@pytest.mark.parametrize("name", list(AFFINES))
def test_pixel_stage_round_trip(name):
    a = AFFINES[name]
    rng = np.random.default_rng(1)
    rows, cols = rng.uniform(-5, 300, 50), rng.uniform(-5, 200, 50)
    x, y = pixel_to_stage_um(rows, cols, center_um=(1000.0, -200.0), affine_um=a, tile_shape=(256, 192))
    r2, c2 = stage_to_pixel(x, y, center_um=(1000.0, -200.0), affine_um=a, tile_shape=(256, 192))
    np.testing.assert_allclose(r2, rows, atol=1e-9)
    np.testing.assert_allclose(c2, cols, atol=1e-9)
    m = pixel_to_stage_matrix((1000.0, -200.0), a, (256, 192))
    xy1 = m @ np.vstack([cols, rows, np.ones_like(rows)])
    np.testing.assert_allclose(xy1[0], x, atol=1e-9)
    np.testing.assert_allclose(xy1[1], y, atol=1e-9)
    d = rng.normal(size=(4, 2)) * 100
    np.testing.assert_allclose(px_offset_to_stage_um(stage_offset_to_px(d, a), a), d, atol=1e-9)


def test_pixel_convention_matches_micro_manager():
    # dx = a·u + b·v, dy = d·u + e·v with u, v the column and row offsets of pixel centres
    a = np.array([[0.5, 0.1], [-0.2, 0.6]])
    x, y = pixel_to_stage_um(0, 0, center_um=(0.0, 0.0), affine_um=a, tile_shape=(4, 6))
    u, v = 0 + 0.5 - 3, 0 + 0.5 - 2
    assert (x, y) == pytest.approx((0.5 * u + 0.1 * v, -0.2 * u + 0.6 * v))


def test_footprint_corners_and_bbox():
    c = footprint_corners_um((10.0, 20.0), AFFINES["rot90"], (100, 200))
    # a 200 px wide, 100 px tall camera turned by 90°: 65 µm wide, 130 µm tall on the stage
    np.testing.assert_allclose(c.min(axis=0), [10 - 32.5, 20 - 65])
    np.testing.assert_allclose(c.max(axis=0), [10 + 32.5, 20 + 65])
    bbox = footprint_bbox_um([(0.0, 0.0), (100.0, 50.0)], AFFINES["identity"], (100, 200))
    assert bbox == pytest.approx((-65.0, -32.5, 165.0, 82.5))


@pytest.mark.parametrize("name", PERMUTATIONS)
def test_permutation_affines_turn_images_exactly(name):
    a = AFFINES[name]
    assert axis_permutation(a) is not None
    h, w = 6, 4
    image = np.arange(h * w).reshape(h, w)
    oriented = to_stage_orientation(image, a)
    r, c = np.mgrid[0:h, 0:w]
    x, y = pixel_to_stage_um(r, c, center_um=(0.0, 0.0), affine_um=a, tile_shape=(h, w))
    # the oriented image lists the pixels by stage row (y) then stage column (x)
    order = np.lexsort((x.ravel(), y.ravel()))
    np.testing.assert_array_equal(oriented.ravel(), image.ravel()[order])
    assert oriented.shape in ((h, w), (w, h))


def test_a_slight_rotation_is_not_a_permutation():
    assert axis_permutation(AFFINES["rot1.5"]) is None
    with pytest.raises(ValueError, match="resample"):
        to_stage_orientation(np.zeros((4, 4)), AFFINES["rot1.5"])


# ---------------------------------------------------------------- lattices


@pytest.mark.parametrize(
    ("shape", "factor", "dtype"),
    [
        ((20, 26), 6, np.uint16),
        ((2048 // 16, 96), 6, np.float32),
        ((17, 13), 3, np.uint16),
        ((7, 7), 7, np.float32),
    ],
    ids=["u16-leftovers", "f32-even", "u16-f3", "one-block"],
)
def test_block_means_and_counts(shape, factor, dtype):
    rng = np.random.default_rng(2)
    image = (rng.random(shape) * 4000).astype(dtype)
    mask = rng.random(shape) < 0.1
    lat = BlockLattice(shape, factor)
    nh, nw = lat.n_blocks
    r0, c0 = lat.first_px
    assert (nh, nw) == (shape[0] // factor, shape[1] // factor)
    assert r0 == (shape[0] - nh * factor) // 2 and c0 == (shape[1] - nw * factor) // 2
    crop = image[r0 : r0 + nh * factor, c0 : c0 + nw * factor].astype(np.float64)
    expected = crop.reshape(nh, factor, nw, factor).mean(axis=(1, 3))
    np.testing.assert_allclose(lat.block_means(image), expected, rtol=1e-6)
    m = mask[r0 : r0 + nh * factor, c0 : c0 + nw * factor]
    np.testing.assert_array_equal(lat.block_counts(mask), m.reshape(nh, factor, nw, factor).sum(axis=(1, 3)))


def test_lattice_refuses_a_tile_smaller_than_a_block():
    with pytest.raises(ValueError, match="smaller"):
        BlockLattice((4, 40), 6)


# ---------------------------------------------------------------- tiles on grids


@pytest.mark.parametrize("name", PERMUTATIONS)
def test_aligned_tiles_land_block_for_cell(name):
    """With a 90°-multiple or mirror affine and aligned centres, each cell takes one block, exactly."""
    a = AFFINES[name]
    lat = BlockLattice((36, 24), 6)  # 6 × 4 blocks
    grid = StageGrid((0.0, 0.0), 6 * P, (20, 20))
    blocks = np.arange(1, 25, dtype=np.float32).reshape(1, 6, 4)
    on = TileOnGrid(grid, lat, center_um=(10 * 6 * P, 10 * 6 * P), affine_um=a)
    assert on.separable and on.exact_pitch
    values = on.resample(blocks)[0]
    cov = np.asarray(on.covered)
    assert cov.sum() == 24
    # the covered cells hold the blocks turned into the stage frame
    got = values[np.ix_(cov.any(axis=1), cov.any(axis=0))]
    np.testing.assert_array_equal(got, to_stage_orientation(blocks[0], a))


def test_general_affine_interpolates_bilinearly():
    a = AFFINES["rot1.5"]
    lat = BlockLattice((120, 96), 6)
    grid = StageGrid((0.0, 0.0), 6 * P, (40, 40))
    rng = np.random.default_rng(3)
    blocks = rng.random((2, *lat.n_blocks)).astype(np.float32)
    on = TileOnGrid(grid, lat, center_um=(77.0, 71.3), affine_um=a)
    assert not on.separable
    got = on.resample(blocks)
    # block coordinates of the cell centres, then scipy's linear interpolation (edges held)
    rows, cols = stage_to_pixel(
        np.broadcast_to(on.x_um, on.shape),
        np.broadcast_to(on.y_um, on.shape),
        center_um=(77.0, 71.3),
        affine_um=a,
        tile_shape=lat.tile_shape,
    )
    bi = (rows + 0.5 - lat.first_px[0]) / 6 - 0.5
    bj = (cols + 0.5 - lat.first_px[1]) / 6 - 0.5
    cov = np.asarray(on.covered)
    for k in range(2):
        want = ndi.map_coordinates(blocks[k].astype(np.float64), [bi, bj], order=1, mode="nearest")
        np.testing.assert_allclose(got[k][cov], want[cov], atol=1e-3)


def test_in_footprint_agrees_with_the_covered_cells_of_the_other_tile():
    """The ownership test of one tile about another uses the same numbers as the other tile itself."""
    for a in AFFINES.values():
        lat = BlockLattice((64, 64), 6)
        grid = StageGrid((-10.0, -10.0), 6 * P, (40, 40))
        one = TileOnGrid(grid, lat, center_um=(40.0, 40.0), affine_um=a)
        two = TileOnGrid(grid, lat, center_um=(75.3, 41.1), affine_um=a)
        seen_by_one = np.zeros(grid.shape, bool)
        seen_by_one[one.rows, one.cols] = one.in_footprint((75.3, 41.1))
        own = np.zeros(grid.shape, bool)
        own[two.rows, two.cols] = two.covered
        both = np.zeros(grid.shape, bool)
        both[one.rows, one.cols] = True
        np.testing.assert_array_equal(seen_by_one & both, own & both)
