"""20x where it matters: what an adaptive pass images, how its tiles enter the tables, on the demo scope."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import shapely

from acquisition.demo.plans import demo_plan
from acquisition.session import ScanSession
from acquisition.storage import EventKind, ScanFile, TileStatus
from analysis.adaptive import HiresSection, fold_hires, hires_fractions, target_mask, target_polygons
from analysis.live import AnalysisProcess
from analysis.maps import SectionAccumulator, region_table
from analysis.results import load_scan_results
from analysis.results_format import region_csv_path
from analysis.scan_analysis import analyze_scan
from analysis.tile import AxonSegmentationSettings
from tests.conftest import make_demo_core

pytestmark = pytest.mark.filterwarnings("error")

CELL_UM = 3.9


def _acc(pixel_um: float = 0.65, shape: tuple[int, int] = (20, 30)) -> SectionAccumulator:
    return SectionAccumulator(
        origin_um=(1000.0, 2000.0),
        cell_um=CELL_UM,
        shape=shape,
        tile_centres_um=[[1058.5, 2039.0]],
        tile_shape=(120, 180),
        tile_pixel_size_um=pixel_um,
    )


# ---------------------------------------------------------------- targets


def test_target_is_the_region_where_its_own_bins_show_signal() -> None:
    acc = _acc()
    acc.imaged_px[:] = 36.0  # every cell fully imaged (6 × 6 pixels of 0.65 µm)
    region = np.zeros(acc.shape, dtype=bool)
    region[2:12, 3:27] = True
    acc.axon_px[2:12, 3:13] = 3.6  # 10 % in the left part of the region
    acc.axon_px[0:2, 14:30] = 36.0  # strong signal outside the region: not a reason to look again
    mask = target_mask(acc, region, min_pct_axonal_area=1.0, bin_um=13 * CELL_UM)
    # bins of 13 cells: the region's cells in bins whose *region* part reaches 1 %
    assert mask[2:12, 3:13].all() and not mask[:, 26:].any() and not (mask & ~region).any()
    assert not target_mask(acc, region, min_pct_axonal_area=50.0, bin_um=13 * CELL_UM).any()
    assert target_mask(acc, region, min_pct_axonal_area=0.0, bin_um=13 * CELL_UM).sum() == region.sum()


def test_target_polygons_outline_each_piece_in_stage_um() -> None:
    mask = np.zeros((10, 20), dtype=bool)
    mask[1:3, 2:5] = True
    mask[6:9, 10:18] = True
    polygons = target_polygons(mask, origin_um=np.array([100.0, 50.0]), cell_um=2.0)
    assert len(polygons) == 2
    shapes = sorted((shapely.Polygon(p) for p in polygons), key=lambda g: g.bounds)
    assert shapes[0].bounds == (104.0, 52.0, 110.0, 56.0) and shapes[0].area == 6 * 4
    assert shapes[1].bounds == (120.0, 62.0, 136.0, 68.0) and shapes[1].area == 16 * 6
    assert target_polygons(np.zeros((3, 3), dtype=bool), origin_um=(0, 0), cell_um=1.0) == []


# -------------------------------------------------------------- folding


def _hires(base: SectionAccumulator) -> HiresSection:
    return HiresSection(
        origin_um=base.origin_um,
        cell_um=base.cell_um,
        shape=base.shape,
        tile_xy_um=[[1020.0, 2020.0]],
        tile_shape_px=(120, 120),
        pixel_size_um=0.325,
        tracer_channel=0,
        dark_offset_adu=100.0,
        segmentation=AxonSegmentationSettings(),
    )


def test_whole_cells_of_the_pass_replace_the_first_pass_in_its_units() -> None:
    base = _acc()
    base.imaged_px[:] = 36.0
    base.axon_px[:] = 1.0
    base.tracer_sum[:] = 360.0
    hires = _hires(base)
    h = hires.accumulator
    h.imaged_px[5:8, 5:9] = 144.0  # whole cells at 0.325 µm (12 × 12 pixels)
    h.imaged_px[8, 5:9] = 72.0  # half a cell: the first pass keeps it
    h.axon_px[5:8, 5:9] = 8.0
    h.tracer_sum[5:8, 5:9] = 2880.0
    cells = fold_hires(base, hires)
    assert cells.sum() == 12 and cells[5:8, 5:9].all()
    np.testing.assert_allclose(base.imaged_px[5:8, 5:9], 36.0)  # 144 × (0.325 / 0.65)²
    np.testing.assert_allclose(base.axon_px[5:8, 5:9], 2.0)
    np.testing.assert_allclose(base.tracer_sum[5:8, 5:9], 720.0)  # mean 20 ADU, as at 0.325 µm
    assert base.axon_px[8, 5] == 1.0 and base.axon_px[0, 0] == 1.0
    masks = {"section": np.ones(base.shape, dtype=bool), "patch": np.zeros(base.shape, dtype=bool)}
    masks["patch"][5:8, 5:9] = True
    rows = {r.region: r for r in hires_fractions(region_table(base, masks), base, masks, cells)}
    assert rows["patch"].imaged_at_hires_fraction == 1.0
    assert rows["patch"].pct_axonal_area == pytest.approx(100 * 2.0 / 36.0)
    assert rows["section"].imaged_at_hires_fraction == pytest.approx(12 / (20 * 30))


def test_the_pass_must_share_the_sections_grid() -> None:
    base = _acc()
    other = _hires(_acc(shape=(21, 30)))
    with pytest.raises(ValueError, match="another grid"):
        fold_hires(base, other)


# ---------------------------------------------------- on the demo scope

SECTION = "rat01-Th7"


def _adaptive_scan(path: Path, *, min_pct: float) -> tuple[object, object]:
    core = make_demo_core()
    try:
        plan = demo_plan(output=path, section_ids=[SECTION], focus={"strategy": "focus_map"})
        adaptive = {"objective": "20x", "min_pct_axonal_area": min_pct, "edge_fraction": 0.55}
        plan = plan.model_validate({**plan.model_dump(mode="json"), "adaptive": adaptive})
        # the process users run: it reads each tile from the file, the pass's too (added mid-scan)
        session = ScanSession(core, plan, analysis=AnalysisProcess, overwrite=True)
        progress = []
        session.events.progress.connect(progress.append)
        result = session.run()
    finally:
        core.close()
    assert session.analysis is not None and session.analysis.faults == []
    return result, progress


@pytest.fixture(scope="module")
def adaptive_scan(tmp_path_factory) -> tuple[Path, object, object]:
    path = tmp_path_factory.mktemp("adaptive") / "adaptive.h5"
    result, progress = _adaptive_scan(path, min_pct=0.5)
    return path, result, progress


@pytest.mark.slow
def test_the_pass_images_the_region_with_signal_at_20x(adaptive_scan) -> None:
    path, result, progress = adaptive_scan
    assert result.complete, result.scan.message
    with ScanFile.open(path) as scan:
        (key,) = scan.pass_keys(SECTION)
        p, first = scan.section(key), scan.section(SECTION)
        assert key == f"{SECTION}@20x" and p.attrs["kind"] == "adaptive"
        assert p.channel_names == ("tdTomato",) and p.pixel_size_um == pytest.approx(0.325)
        assert (p.tile_status == TileStatus.DONE).all()
        assert 0 < p.n_tiles < first.n_tiles  # a part of the section, at 4 × the tiles per area
        target = shapely.unary_union([shapely.Polygon(v) for v in p.attrs["target_polygons_um"]])
        half = 512 * 0.325 / 2
        for x, y in p.tile_xy_um:  # every tile images part of the target
            assert shapely.box(x - half, y - half, x + half, y + half).intersects(target)
        events = [e for e in scan.events() if e["kind"] == EventKind.ADAPTIVE_PASS]
        assert events == [events[0]] and events[0]["n_tiles"] == p.n_tiles
        assert result.scan.tiles_total == first.n_tiles + p.n_tiles
    assert key in progress[-1].sections


@pytest.mark.slow
def test_the_tables_use_20x_where_they_have_it_and_say_so(adaptive_scan, tmp_path: Path) -> None:
    path, result, _ = adaptive_scan
    rows = {r.region: r for r in load_scan_results(path)[SECTION].analysis.table}
    assert rows["rubrospinal_territory"].imaged_at_hires_fraction > 0.8
    assert 0 < rows["section"].imaged_at_hires_fraction < 0.2
    assert rows["gray_matter"].imaged_at_hires_fraction < 0.05
    live = {r.region: r for r in result.tables[SECTION]}
    assert live["rubrospinal_territory"] == rows["rubrospinal_territory"]
    with region_csv_path(path).open(newline="") as f:
        csv_rows = {r["region"]: r for r in csv.DictReader(f)}
    assert float(csv_rows["rubrospinal_territory"]["imaged_at_hires_pct"]) > 80.0
    # offline, from the file alone: the same numbers
    copy = tmp_path / "copy.h5"
    shutil.copy(path, copy)
    offline = {r.region: r for r in analyze_scan(copy)[SECTION]}
    assert offline == rows


@pytest.mark.slow
def test_no_signal_above_the_threshold_no_pass(tmp_path: Path) -> None:
    result, _ = _adaptive_scan(tmp_path / "none.h5", min_pct=100.0)
    assert result.complete
    with ScanFile.open(result.path) as scan:
        assert scan.pass_keys() == ()
    assert all(r.imaged_at_hires_fraction == 0.0 for r in result.tables[SECTION])
