"""The slide overview on the demo microscope: tiling, placement, TIFF, sections found."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass

import numpy as np
import pytest
import tifffile
from shapely import Point, Polygon

from acquisition.demo import find_demo_hub
from acquisition.demo.slide import VirtualSlide
from acquisition.hardware import CordScopeCore
from acquisition.overview import (
    DEFAULT_REGION_UM,
    Overview,
    OverviewCancelledError,
    OverviewError,
    acquire_overview,
    load_overview,
    overview_tile_grid,
    save_overview,
)
from analysis.sections import FoundSection, find_sections
from tests.conftest import make_demo_core

SENSOR_PX = 2048
SLIDE_CENTRE_UM = (37_500.0, 12_500.0)
# glass only: right of the horizontal sections, below the coronal rows
GLASS_REGION_UM = (62_000.0, 13_000.0, 70_000.0, 24_000.0)


@dataclass
class Run:
    core: CordScopeCore
    slide: VirtualSlide
    z_um: float
    overview: Overview
    seconds: float
    progress: list[tuple[int, int]]
    state_before: dict
    state_after: dict
    sections: list[FoundSection]
    find_ms: float


def _state(core: CordScopeCore) -> dict:
    return {
        "objective": core.getCurrentConfig("Objective"),
        "channel": core.getCurrentConfig("Channel"),
        "exposure_ms": core.getExposure(),
        "xy_um": tuple(core.getXYPosition()),
        "z_um": core.getPosition(),
    }


@pytest.fixture(scope="module")
def run():
    core = make_demo_core(sensor_px=SENSOR_PX, noise=True, seed=7)
    try:
        slide = find_demo_hub(core).slide
        z = float(slide.focal_plane_z_um(*SLIDE_CENTRE_UM))
        core.setExposure(33.0)
        core.setXYPosition(30_000.0, 10_000.0)
        core.setPosition(z + 5.0)
        core.waitForSystem()
        before = _state(core)
        progress: list[tuple[int, int]] = []
        t0 = time.perf_counter()
        overview = acquire_overview(core, z_um=z, progress=lambda done, total: progress.append((done, total)))
        seconds = time.perf_counter() - t0
        after = _state(core)
        t0 = time.perf_counter()
        sections = find_sections(
            overview.image, origin_um=overview.origin_um, pixel_size_um=overview.pixel_size_um
        )
        find_ms = 1e3 * (time.perf_counter() - t0)
        print(f"\noverview: {len(progress)} tiles in {seconds:.1f} s; find_sections {find_ms:.0f} ms")
        yield Run(core, slide, z, overview, seconds, progress, before, after, sections, find_ms)
    finally:
        core.close()


# ---------------------------------------------------------------- acquisition


def test_overview_covers_the_region_at_the_4x_pixel_multiple(run):
    ov = run.overview
    camera_px = 6.5 / 4
    factor = round(8.0 / camera_px)
    assert ov.pixel_size_um == pytest.approx(factor * camera_px)
    assert ov.origin_um == (DEFAULT_REGION_UM[0], DEFAULT_REGION_UM[1])
    x0, y0, x1, y1 = DEFAULT_REGION_UM
    assert ov.image.shape == (
        math.ceil((y1 - y0) / ov.pixel_size_um),
        math.ceil((x1 - x0) / ov.pixel_size_um),
    )
    assert ov.image.dtype == np.float32
    assert (ov.channel, ov.objective) == ("DAPI", "4x")


def test_tiles_follow_the_field_of_view_and_progress_is_reported(run):
    # tile size from the camera (2048 px × 1.625 µm = 3328 µm), never assumed
    grid = overview_tile_grid(
        DEFAULT_REGION_UM, camera_pixel_um=6.5 / 4, image_hw=(SENSOR_PX, SENSOR_PX), overview_pixel_um=8.0
    )
    n_rows = len(np.unique(grid.offsets_px[:, 0]))
    assert (grid.n_tiles // n_rows, n_rows) == (17, 8)
    assert run.progress == [(k, grid.n_tiles) for k in range(1, grid.n_tiles + 1)]


def test_microscope_state_is_restored(run):
    assert run.state_before["objective"] == "10x"  # the demo config starts at 10x
    assert run.state_after == run.state_before
    assert run.state_after["objective"] == run.state_before["objective"]
    assert run.state_after["channel"] == run.state_before["channel"]


def test_glass_reads_the_dark_offset_and_tissue_is_brighter(run):
    ov = run.overview
    assert float(np.median(ov.image)) == pytest.approx(100.0, abs=1.0)
    for truth in run.slide.sections:
        holes = [h for h in (truth.central_canal, truth.lesion_cavity) if h is not None]
        point = Polygon(truth.outline, holes).buffer(-200.0).representative_point()
        r, c = (round(float(v)) for v in ov.stage_to_pixel(point.x, point.y))
        assert ov.image[r - 2 : r + 3, c - 2 : c + 3].mean() > 110.0, truth.section_id


def test_tiles_land_where_the_stage_put_them(run):
    """A noiseless 2 × 2-tile overview equals the rendered frames, block-averaged."""
    core, slide = run.core, run.slide
    camera = "Camera"
    core.setProperty(camera, "Noise", "Off")
    try:
        region = (40_000.0, 3_000.0, 46_000.0, 9_000.0)  # over rat03-C5 / rat03-Th7 and their seams
        ov = acquire_overview(core, region_um=region, z_um=run.z_um)
    finally:
        core.setProperty(camera, "Noise", "On")
    p = 6.5 / 4
    grid = overview_tile_grid(
        region, camera_pixel_um=p, image_hw=(SENSOR_PX, SENSOR_PX), overview_pixel_um=8.0
    )
    assert grid.n_tiles == 4
    qe = float(core.getProperty(camera, "QuantumEfficiency"))
    gain = float(core.getProperty(camera, "Gain_e_per_ADU"))
    offset = float(core.getProperty(camera, "DarkOffset_ADU"))
    f, (th, tw), (r0, c0) = grid.factor, grid.tile_hw, grid.crop_rc
    for (xc, yc), (row, col) in zip(grid.centres_um, grid.offsets_px, strict=True):
        rate = slide.render(
            center_um=(xc, yc), pixel_size_um=p, shape=(SENSOR_PX, SENSOR_PX), channel="DAPI", z_um=run.z_um
        )
        adu = np.clip(rate * np.float32(20.0 * qe / gain) + np.float32(offset + 0.5), 0, 65535).astype(
            np.uint16
        )
        expected = adu[r0 : r0 + th * f, c0 : c0 + tw * f].reshape(th, f, tw, f).mean(axis=(1, 3))
        # the part of this tile inside the overview
        rr = slice(max(row, 0), min(row + th, ov.shape[0]))
        cc = slice(max(col, 0), min(col + tw, ov.shape[1]))
        got = ov.image[rr, cc]
        want = expected[rr.start - row : rr.stop - row, cc.start - col : cc.stop - col]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-3)
        assert want.max() > 150.0  # the comparison saw tissue, not only glass


def test_cancel_stops_between_tiles_and_restores_the_state(run):
    core = run.core
    before = _state(core)
    polls: list[int] = []

    def should_stop() -> bool:
        polls.append(1)
        return len(polls) > 2

    with pytest.raises(OverviewCancelledError, match="after 2 of"):
        acquire_overview(core, z_um=run.z_um, should_stop=should_stop)
    assert _state(core) == before


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"objective": "100x"}, "unknown objective '100x'", id="objective"),
        pytest.param({"channel": "GFP"}, "unknown channel 'GFP'", id="channel"),
        pytest.param({"objective_group": "Lens"}, "group 'Lens' is not defined", id="group"),
        pytest.param({"region_um": (30_000.0, 0.0, 20_000.0, 5_000.0)}, "x0 < x1", id="region"),
        pytest.param({"exposure_ms": -1.0}, "exposure_ms", id="exposure"),
        pytest.param({"overview_pixel_um": 0.0}, "overview_pixel_um", id="pixel"),
    ],
)
def test_bad_settings_are_refused(run, kwargs, match):
    core = run.core
    before = _state(core)
    with pytest.raises(OverviewError, match=match):
        acquire_overview(core, **kwargs)
    assert _state(core) == before


# ------------------------------------------------------------------- sections


def test_finds_every_section_once_and_nothing_else(run):
    truths = run.slide.sections
    polygons = [Polygon(s.polygon_um) for s in run.sections]
    centroids = [Point(Polygon(t.outline).centroid) for t in truths]
    assert len(run.sections) == len(truths)
    for t, c in zip(truths, centroids, strict=True):
        assert sum(p.contains(c) for p in polygons) == 1, t.section_id
    for s, p in zip(run.sections, polygons, strict=True):
        assert p.is_valid, s.index
        assert sum(p.contains(c) for c in centroids) == 1, s.index


def test_each_polygon_covers_its_section(run):
    polygons = [Polygon(s.polygon_um) for s in run.sections]
    for t in run.slide.sections:
        outline = Polygon(t.outline)
        (poly,) = [p for p in polygons if p.contains(outline.centroid)]
        outside = outline.difference(poly).area / outline.area
        assert outside <= 0.005, f"{t.section_id}: {outside:.2%} of the tissue outside its polygon"
        # dilated, but not wildly: the polygon is at most ~0.3 mm beyond the tissue
        assert poly.exterior.hausdorff_distance(outline.exterior) < 300.0, t.section_id


def test_sections_are_numbered_in_slide_order(run):
    truths = run.slide.sections
    # the demo slide is laid out in rows of equal y: top row first, then left to right
    expected = sorted(truths, key=lambda t: (t.spec.centre_um[1], t.spec.centre_um[0]))
    found_ids = []
    for s in run.sections:
        poly = Polygon(s.polygon_um)
        (t,) = [t for t in truths if poly.contains(Polygon(t.outline).centroid)]
        found_ids.append(t.section_id)
    assert [s.index for s in run.sections] == list(range(1, len(truths) + 1))
    assert found_ids == [t.section_id for t in expected]


def test_bare_glass_region_finds_nothing(run):
    ov = acquire_overview(run.core, region_um=GLASS_REGION_UM, z_um=run.z_um)
    assert ov.origin_um == GLASS_REGION_UM[:2]
    assert find_sections(ov.image, origin_um=ov.origin_um, pixel_size_um=ov.pixel_size_um) == []


def test_timings_are_reasonable(run):
    assert run.seconds < 40.0
    assert run.find_ms < 5_000.0


# ------------------------------------------------------------------- the file


def test_save_and_load_round_trip_exactly(run, tmp_path):
    path = save_overview(tmp_path / "overview.tif", run.overview)
    back = load_overview(path)
    assert np.array_equal(back.image, run.overview.image)
    assert back.image.dtype == np.float32
    assert back.origin_um == run.overview.origin_um
    assert back.pixel_size_um == run.overview.pixel_size_um
    assert (back.channel, back.objective) == (run.overview.channel, run.overview.objective)
    # readable without CordScope: plain TIFF, geometry as JSON in the description
    with tifffile.TiffFile(path) as tif:
        meta = json.loads(tif.pages.first.description)
    assert meta["format"] == "cordscope-overview"
    assert meta["origin_um"] == list(run.overview.origin_um)
    assert meta["pixel_size_um"] == run.overview.pixel_size_um


def test_load_refuses_what_is_not_an_overview(tmp_path):
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.zeros((4, 4), dtype=np.uint16))
    with pytest.raises(OverviewError, match="not a CordScope overview"):
        load_overview(plain)
    with pytest.raises(OverviewError, match="not found"):
        load_overview(tmp_path / "missing.tif")


# ------------------------------------------------------------ pure geometry


def test_pixel_and_stage_coordinates_are_inverse():
    ov = Overview(
        image=np.zeros((10, 20), dtype=np.float32),
        origin_um=(1_000.0, 2_000.0),
        pixel_size_um=8.0,
        channel="DAPI",
        objective="4x",
    )
    xs, ys = ov.pixel_to_stage_um([0, 9], [0, 19])
    assert xs.tolist() == [1_004.0, 1_156.0]
    assert ys.tolist() == [2_004.0, 2_076.0]
    rows, cols = ov.stage_to_pixel(xs, ys)
    assert rows.tolist() == [0.0, 9.0] and cols.tolist() == [0.0, 19.0]
    assert ov.stage_to_pixel(1_000.0, 2_000.0) == (-0.5, -0.5)  # the top-left corner
    assert ov.bbox_um == (1_000.0, 2_000.0, 1_160.0, 2_080.0)


def test_pixels_no_tile_saw_are_filled_from_their_neighbours():
    from acquisition.overview import _mean_of_tiles

    total = np.array([[2.0, 0.0, 6.0, 0.0], [4.0, 0.0, 12.0, 0.0], [0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    count = np.array([[1, 0, 2, 0], [1, 0, 2, 0], [0, 0, 0, 0]], dtype=np.uint8)
    image = _mean_of_tiles(total, count)
    # the gap column takes its nearest left neighbour, the last row the one above
    assert image.tolist() == [[2.0, 2.0, 3.0, 3.0], [4.0, 4.0, 6.0, 6.0], [4.0, 4.0, 6.0, 6.0]]


@pytest.mark.parametrize(
    ("image_hw", "pixel_um", "overview_um"),
    [
        pytest.param((2048, 2048), 1.625, 8.0, id="4x-2048"),
        pytest.param((1024, 1024), 1.625, 8.0, id="4x-1024"),
        pytest.param((512, 512), 0.65, 8.0, id="10x-512"),
        pytest.param((900, 1200), 1.625, 10.0, id="non-square"),
        pytest.param((256, 256), 1.625, 1.0, id="no-reduction"),
    ],
)
def test_tile_grid_covers_the_region_in_serpentine_order(image_hw, pixel_um, overview_um):
    region = (20_000.0, 0.0, 30_000.0, 6_000.0)
    grid = overview_tile_grid(
        region, camera_pixel_um=pixel_um, image_hw=image_hw, overview_pixel_um=overview_um
    )
    assert grid.factor == max(1, round(overview_um / pixel_um))
    th, tw = grid.tile_hw
    assert (th, tw) == (image_hw[0] // grid.factor, image_hw[1] // grid.factor)
    seen = np.zeros(grid.shape, dtype=np.uint8)
    for r, c in grid.offsets_px:
        seen[max(r, 0) : r + th, max(c, 0) : c + tw] += 1
    assert seen.min() >= 1  # no overview pixel left out
    # every centre inside the region (so inside the travel when the region is)
    x0, y0, x1, y1 = region
    assert ((grid.centres_um[:, 0] >= x0) & (grid.centres_um[:, 0] <= x1)).all()
    assert ((grid.centres_um[:, 1] >= y0) & (grid.centres_um[:, 1] <= y1)).all()
    # serpentine: rows top to bottom, alternating direction
    rows = np.unique(grid.offsets_px[:, 0])
    for i, r in enumerate(rows):
        cols = grid.offsets_px[grid.offsets_px[:, 0] == r, 1]
        assert (np.diff(cols) > 0).all() if i % 2 == 0 else (np.diff(cols) < 0).all()
    assert (np.diff(grid.offsets_px[:, 0]) >= 0).all()
    # the crop's camera pixels land on the overview grid: tile centre ↔ offset
    h, w = image_hw
    p = grid.pixel_size_um / grid.factor
    r0, c0 = grid.crop_rc
    left = grid.centres_um[:, 0] + (c0 - w / 2) * p
    top = grid.centres_um[:, 1] + (r0 - h / 2) * p
    np.testing.assert_allclose((left - x0) / grid.pixel_size_um, grid.offsets_px[:, 1], atol=1e-6)
    np.testing.assert_allclose((top - y0) / grid.pixel_size_um, grid.offsets_px[:, 0], atol=1e-6)
