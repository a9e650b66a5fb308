"""Rotated, mirrored and slightly rotated cameras: synthetic tiles cut from one known stage image.

Each tile is rendered from a world image defined on the stage at the
pixel-size affine's pixel positions (:func:`analysis.geometry.pixel_to_stage_um`),
so a placement or a registration that ignored the affine would scramble or
misplace it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage as ndi

from analysis.geometry import pixel_to_stage_um, stage_offset_to_px
from analysis.mosaic import SectionMosaic
from analysis.registration import edge_neighbour_pairs, register_tiles
from analysis.section_analysis import SectionAnalysis
from analysis.settings import AnalysisSettings

P = 0.65
F = 6  # mosaic cell: 6 px = 3.9 µm
TILE = (252, 252)  # a whole number of blocks
STEP_PX = 228  # 38 blocks: 24 px (≈ 10 %) overlap
WORLD_PX = 900


def _rotation(deg: float) -> np.ndarray:
    t = math.radians(deg)
    return P * np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])


AFFINES = {
    "identity": P * np.eye(2),
    "rot90": P * np.array([[0.0, -1.0], [1.0, 0.0]]),
    "mirror": P * np.array([[-1.0, 0.0], [0.0, 1.0]]),
    "rot1.5": _rotation(1.5),
}
EXACT = ("identity", "rot90", "mirror")


@pytest.fixture(scope="module")
def world() -> dict[str, np.ndarray]:
    """Anatomy (tissue-scale structure, nuclei-scale texture), tracer (background, puncta); 1 px = P µm."""
    rng = np.random.default_rng(21)
    coarse = ndi.gaussian_filter(rng.normal(size=(WORLD_PX, WORLD_PX)), 15.0)  # tissue structure
    fine = ndi.gaussian_filter(rng.normal(size=(WORLD_PX, WORLD_PX)), 2.0)  # nuclei: what registers
    anatomy = 1000 + 300 * coarse / coarse.std() + 100 * fine / fine.std()
    tracer = np.full((WORLD_PX, WORLD_PX), 200.0)
    dots = np.zeros_like(tracer)
    r, c = rng.integers(100, WORLD_PX - 100, (2, 400))
    dots[r, c] = 1.0
    tracer += 2000 * ndi.gaussian_filter(dots, 1.2) / ndi.gaussian_filter(np.eye(1), 1.2).max()
    return {
        "anatomy": anatomy,
        "tracer": tracer,
        "anatomy_spline": ndi.spline_filter(anatomy, order=3),
        "tracer_spline": ndi.spline_filter(tracer, order=3),
    }


def render(world: dict[str, np.ndarray], name: str, center_um, affine) -> np.ndarray:
    """The camera image of a tile centred at ``center_um`` (the world sampled at its pixels)."""
    r, c = np.mgrid[0 : TILE[0], 0 : TILE[1]]
    x, y = pixel_to_stage_um(r, c, center_um=center_um, affine_um=affine, tile_shape=TILE)
    coords = [y / P - 0.5, x / P - 0.5]  # world pixel (i, j) is centred at ((j + .5) P, (i + .5) P)
    return ndi.map_coordinates(world[f"{name}_spline"], coords, order=3, mode="nearest", prefilter=False)


def planned_centres() -> np.ndarray:
    """3 × 3 serpentine grid, centres on multiples of a mosaic cell (blocks then land on cells)."""
    mid = WORLD_PX // 2
    out = []
    for i in range(3):
        for j in range(3) if i % 2 == 0 else reversed(range(3)):
            out.append(((mid + (j - 1) * STEP_PX) * P, (mid + (i - 1) * STEP_PX) * P))
    return np.array(out)


def world_cells(image: np.ndarray) -> np.ndarray:
    n = WORLD_PX // F
    return image.reshape(n, F, n, F).mean(axis=(1, 3))


def agree(img: np.ndarray, expected: np.ndarray, where: np.ndarray) -> tuple[float, float]:
    """Correlation and median |difference| / std of two mosaics at tissue scale (σ = 1 cell).

    The block-scale texture cannot survive resampling by a fraction of a cell;
    what a placement that ignored the affine would ruin is the structure.
    """
    a = ndi.gaussian_filter(np.nan_to_num(img), 1.0)[where]
    b = ndi.gaussian_filter(np.nan_to_num(expected), 1.0)[where]
    return float(np.corrcoef(a, b)[0, 1]), float(np.median(np.abs(a - b)) / b.std())


def expected_on(image: np.ndarray, mosaic: SectionMosaic) -> np.ndarray:
    """The stage image averaged over each cell of a mosaic grid (anywhere on the stage)."""
    boxed = ndi.uniform_filter(image, F, mode="nearest")
    rows, cols = mosaic.shape
    x = mosaic.origin_um[0] + (np.arange(cols) + 0.5) * mosaic.pixel_size_um
    y = mosaic.origin_um[1] + (np.arange(rows) + 0.5) * mosaic.pixel_size_um
    yy, xx = np.meshgrid(y / P - 0.5, x / P - 0.5, indexing="ij")
    return ndi.map_coordinates(boxed, [yy, xx], order=1, mode="nearest")


def mosaic_of(world, affine, centres) -> SectionMosaic:
    mos = SectionMosaic(
        (0.0, 0.0, WORLD_PX * P, WORLD_PX * P), n_channels=1, tile_pixel_size_um=P, affine_um=affine
    )
    for c in centres:
        mos.add_tile(render(world, "anatomy", c, affine)[None], center_um=tuple(c), pixel_size_um=P)
    return mos


@pytest.mark.parametrize("name", list(AFFINES))
def test_mosaic_reproduces_the_stage_image(world, name):
    affine = AFFINES[name]
    mos = mosaic_of(world, affine, planned_centres())
    assert mos.factor == F and mos.shape == (WORLD_PX // F, WORLD_PX // F)
    img = mos.image(0)
    expected = world_cells(world["anatomy"])
    cov = mos.coverage
    inner = ndi.binary_erosion(cov, iterations=2)
    assert inner.sum() > 0.8 * (3 * STEP_PX / F) ** 2
    if name in EXACT:
        # each cell holds the block of camera pixels that covers it: the stage image's cell means
        np.testing.assert_allclose(img[cov], expected[cov], rtol=0, atol=1e-2)
    else:
        # a 1.5° camera: blocks interpolated at the cell centres
        corr, err = agree(img, expected, ndi.binary_erosion(inner, iterations=3))
        assert corr > 0.99 and err < 0.05, (corr, err)


@pytest.mark.parametrize("name", list(AFFINES))
def test_neighbouring_tiles_agree_in_their_overlaps(world, name):
    affine = AFFINES[name]
    centres = planned_centres()
    singles = [mosaic_of(world, affine, [c]) for c in centres]
    pairs = edge_neighbour_pairs(centres, TILE, affine)
    assert len(pairs) == 12
    for i, j in pairs:
        both = singles[i].coverage & singles[j].coverage
        assert both.sum() >= 0.9 * 3 * (STEP_PX / F)  # a strip of ≥ 3 cells along the edge
        a, b = singles[i].image(0)[both], singles[j].image(0)[both]
        if name in EXACT:
            np.testing.assert_allclose(a, b, atol=1e-2)
        else:
            assert np.median(np.abs(a - b)) < 0.1 * a.std()


def stage_errors(seed: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-3.0, 3.0, (9, 2))  # µm: up to ~4.6 px per axis


@pytest.mark.parametrize("name", list(AFFINES))
def test_registration_recovers_stage_errors(world, name):
    affine = AFFINES[name]
    planned = planned_centres()
    true = planned + stage_errors()
    tiles = [render(world, "anatomy", c, affine) for c in true]
    reg = register_tiles(tiles, planned, affine_um=affine)
    err = reg.positions_um - true
    err -= err.mean(axis=0)  # registration measures relative positions only
    before = planned - true
    before -= before.mean(axis=0)
    assert np.abs(before).max() > 2 * P
    assert np.abs(err).max() < 0.2 * P, np.abs(err).max() / P
    # the pair shifts are in the tiles' pixel frame: the stage error mapped through A⁻¹ (edge pairs;
    # the small corner overlaps are weighed less in the solve)
    edges = {tuple(p) for p in edge_neighbour_pairs(planned, TILE, affine)}
    for (i, j), shift, used in zip(reg.pairs, reg.pair_shift_px, reg.pair_used, strict=True):
        if (i, j) in edges:
            assert used
            want = stage_offset_to_px(true[j] - true[i] - (planned[j] - planned[i]), affine)
            np.testing.assert_allclose(shift, want, atol=0.1)


def section_for(world, affine, *, register: bool = True) -> tuple[SectionAnalysis, np.ndarray]:
    planned = planned_centres()
    true = planned + stage_errors()
    section = SectionAnalysis(
        section_id="synthetic",
        tile_xy_um=planned,
        tile_shape_px=TILE,
        pixel_size_um=P,
        n_channels=2,
        tracer_channel=1,
        anatomy_channel=0,
        channel_names=("DAPI", "tdTomato"),
        settings=AnalysisSettings(
            dark_offset_adu=0.0, register_tiles=register, threshold_method="fixed", threshold_adu=300.0
        ),
        pixel_affine_um=affine,
    )
    return section, true


def add_all(section: SectionAnalysis, world, affine, true, order) -> None:
    for t in order:
        images = np.stack(
            [render(world, "anatomy", true[t], affine), render(world, "tracer", true[t], affine)]
        )
        section.add_tile(np.clip(images, 0, 65535).astype(np.uint16), tile_index=int(t))


@pytest.mark.parametrize("name", list(AFFINES))
def test_section_analysis_registers_and_places_through_the_affine(world, name):
    """Live registration (overlap strips in the rotated frame) and the rebuild at registered positions."""
    affine = AFFINES[name]
    section, true = section_for(world, affine)
    add_all(section, world, affine, true, range(9))
    res = section.results()
    reg = res.registration
    assert reg is not None and res.rebuilt_at_registered_positions
    err = reg.positions_um - true
    err -= err.mean(axis=0)
    assert np.abs(err).max() < 0.3 * P, np.abs(err).max() / P
    # the rebuilt mosaic is the stage image (tiles placed where they really were, to half a cell)
    rebuilt = res.source
    assert rebuilt is not None
    img = rebuilt.mosaic.image(0)
    exp = expected_on(world["anatomy"], rebuilt.mosaic)
    corr, err = agree(img, exp, ndi.binary_erosion(rebuilt.mosaic.coverage, iterations=5))
    live = section.mosaic  # at the planned positions: off by the stage errors
    where = ndi.binary_erosion(live.coverage, iterations=5)
    _, err_live = agree(live.image(0), expected_on(world["anatomy"], live), where)
    # measured: 0.059 (nearest block: ≤ half a cell) or 0.036 (1.5°, interpolated) against 0.095-0.099
    assert corr > 0.99 and err < 0.075 and err < 0.7 * err_live, (corr, err, err_live)
    # every imaged cell once: the imaged area is the union of the footprints, whatever the camera
    acc = rebuilt.accumulator
    assert acc.imaged_px.max() == pytest.approx(F * F)
    area = acc.imaged_area_um2.sum()
    assert area == pytest.approx((2 * STEP_PX + TILE[0]) ** 2 * P * P, rel=0.03)
