"""Region edits with provenance, the polygon rasteriser, and re-analysis from the stored sums."""

from __future__ import annotations

import csv
import dataclasses
import json
from datetime import datetime
from pathlib import Path

import h5py
import numpy as np
import pytest
import shapely
from scipy import ndimage as ndi

from analysis.maps import heatmaps, region_table
from analysis.region_edits import (
    GridGeometry,
    RegionEdit,
    RegionEditError,
    RegionReset,
    SectionRegionSet,
    apply_region_edits,
    mask_geometry_um,
    rasterize_geometry_um,
    reanalyse,
    reanalyse_section,
)
from analysis.results_format import read_analysis
from tests.analysis import _region_scan as rs

GRID = GridGeometry(np.array([0.0, 0.0]), 1.0, (5, 6))


def _box(x0: float, y0: float, x1: float, y1: float) -> dict:
    return shapely.geometry.mapping(shapely.box(x0, y0, x1, y1))


def _cells(*rc: tuple[int, int], shape: tuple[int, int] = (5, 6)) -> np.ndarray:
    out = np.zeros(shape, bool)
    for r, c in rc:
        out[r, c] = True
    return out


# ---------------------------------------------------------------- rasteriser


@pytest.mark.parametrize(
    ("geometry", "expected"),
    [
        (_box(1, 1, 3, 4), _cells(*[(r, c) for r in (1, 2, 3) for c in (1, 2)])),
        (
            shapely.geometry.mapping(shapely.box(0, 0, 5, 5).difference(shapely.box(2, 2, 3, 3))),
            np.pad(np.ones((5, 5), bool), ((0, 0), (0, 1))) & ~_cells((2, 2)),
        ),
        (
            shapely.geometry.mapping(
                shapely.MultiPolygon([shapely.box(0, 0, 1, 1), shapely.box(4, 3, 6, 4)])
            ),
            _cells((0, 0), (3, 4), (3, 5)),
        ),
        (_box(0.5, 0.5, 2.5, 1.5), _cells()),  # every centre on an edge: outside
        (_box(10, 10, 12, 12), _cells()),
        (
            {"type": "Polygon", "coordinates": [[[0, 0], [4, 4], [4, 0], [0, 4], [0, 0]]]},  # a bow tie
            _cells((1, 0), (2, 0), (1, 3), (2, 3)),  # two triangles; centres on the diagonals are out
        ),
        ({"type": "LineString", "coordinates": [[0, 0], [5, 5]]}, _cells()),
    ],
    ids=["box", "hole", "multipolygon", "centres-on-edges", "outside", "self-intersecting", "not-a-polygon"],
)
def test_rasterise_counts_cells_whose_centre_is_inside(geometry: dict, expected: np.ndarray) -> None:
    np.testing.assert_array_equal(rasterize_geometry_um(geometry, grid=GRID), expected)


def test_rasterise_uses_the_grid_origin_and_cell_size() -> None:
    grid = GridGeometry(np.array([100.0, -50.0]), 2.0, (4, 4))
    # cell (r, c) centred at (101 + 2c, -49 + 2r): the box holds the centres of columns 1-2, row 3
    got = rasterize_geometry_um(_box(102.5, -44.0, 106.0, -42.5), grid=grid)
    np.testing.assert_array_equal(got, _cells((3, 1), (3, 2), shape=(4, 4)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mask_outline_rasterises_back_exactly(seed: int) -> None:
    rng = np.random.default_rng(seed)
    mask = ndi.binary_opening(rng.random((30, 40)) < 0.55)  # blobs with holes, islands, diagonal contacts
    grid = GridGeometry(np.array([-12.5, 7.25]), 3.9, mask.shape)
    outline = mask_geometry_um(mask, grid=grid)
    assert outline is not None and outline["type"] in ("Polygon", "MultiPolygon")
    assert json.loads(json.dumps(outline)) == outline  # plain JSON
    np.testing.assert_array_equal(rasterize_geometry_um(outline, grid=grid), mask)


def test_checkerboard_and_empty_masks() -> None:
    board = (np.indices((6, 6)).sum(axis=0) % 2).astype(bool)
    grid = GridGeometry(np.array([0.0, 0.0]), 1.0, board.shape)
    np.testing.assert_array_equal(rasterize_geometry_um(mask_geometry_um(board, grid=grid), grid=grid), board)
    assert mask_geometry_um(np.zeros((6, 6), bool), grid=grid) is None


def test_smoothed_outline_moves_only_boundary_cells() -> None:
    y, x = np.mgrid[:40, :60]
    mask = ((x - 30) / 22) ** 2 + ((y - 20) / 13) ** 2 <= 1
    grid = GridGeometry(np.array([0.0, 0.0]), 3.9, mask.shape)
    smooth = mask_geometry_um(mask, grid=grid, simplify_um=0.5 * 3.9)
    exact = mask_geometry_um(mask, grid=grid)
    assert smooth is not None and exact is not None
    assert exact["type"] == smooth["type"] == "Polygon"  # one piece: the cells' union, not a patchwork
    assert len(shapely.get_coordinates(shapely.geometry.shape(smooth))) < len(
        shapely.get_coordinates(shapely.geometry.shape(exact))
    )
    back = rasterize_geometry_um(smooth, grid=grid)
    changed = back ^ mask
    boundary = mask ^ ndi.binary_erosion(mask) | ndi.binary_dilation(mask) ^ mask
    assert changed.sum() < 0.05 * mask.sum()
    assert not (changed & ~boundary).any()  # within one cell of the outline


# ---------------------------------------------------------------- edits


@pytest.fixture
def scan(tmp_path: Path) -> Path:
    return rs.make_scan(tmp_path / "scan.h5")


@pytest.fixture
def saved(scan: Path):
    with h5py.File(scan, "r") as f:
        return read_analysis(f[f"sections/{rs.SECTION}/analysis"])


@pytest.fixture(autouse=True)
def _user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("getpass.getuser", lambda: "anna")


def _territory_polygon(dx_um: float = 0.0) -> dict:
    return shapely.geometry.mapping(shapely.Point(1070.0 + dx_um, 2010.0).buffer(12.0))


def test_an_edit_records_kind_who_when_and_its_polygon(saved) -> None:
    regions = SectionRegionSet.from_saved(saved)
    edited, history = regions.apply(
        [RegionEdit("rubrospinal_territory", "edited", geometry_um=_territory_polygon())]
    )
    record = edited.records["rubrospinal_territory"]
    assert (record.kind, record.who, record.source) == ("edited", "anna", "")
    assert datetime.fromisoformat(record.when_iso).tzinfo is not None
    assert record.geometry_um == _territory_polygon()
    expected = rasterize_geometry_um(_territory_polygon(), grid=regions.grid) & saved.masks["section"]
    np.testing.assert_array_equal(edited.masks["rubrospinal_territory"], expected)
    np.testing.assert_array_equal(
        edited.automatic_masks["rubrospinal_territory"], saved.masks["rubrospinal_territory"]
    )
    for name in set(saved.masks) - {"rubrospinal_territory"}:
        np.testing.assert_array_equal(edited.masks[name], saved.masks[name], err_msg=name)
    assert history == [
        {"region": "rubrospinal_territory", "action": "set", "kind": "edited", "who": "anna",
         "when_iso": record.when_iso, "source": ""}
    ]  # fmt: skip


def test_regions_are_clipped_to_the_section(saved) -> None:
    regions = SectionRegionSet.from_saved(saved)
    everywhere = _box(0, 0, 5000, 5000)
    edited, _ = regions.apply([RegionEdit("rubrospinal_territory", "drawn", geometry_um=everywhere)])
    np.testing.assert_array_equal(edited.masks["rubrospinal_territory"], saved.masks["section"])


def test_white_matter_follows_an_edited_gray_matter(saved) -> None:
    regions = SectionRegionSet.from_saved(saved)
    gray = shapely.geometry.mapping(shapely.Point(rs.MID_X_UM, rs.MID_Y_UM).buffer(10.0))
    edited, _ = regions.apply([RegionEdit("gray_matter", "drawn", geometry_um=gray)])
    g = edited.masks["gray_matter"]
    np.testing.assert_array_equal(edited.masks["white_matter"], saved.masks["section"] & ~g)
    assert edited.records["white_matter"].kind == "automatic"
    assert not (edited.masks["rubrospinal_territory"] & g).any()


def test_halves_follow_an_edited_section(saved) -> None:
    regions = SectionRegionSet.from_saved(saved)
    x, y = rs.cell_centres()
    bigger = np.broadcast_to(
        ((x - rs.MID_X_UM) / 58) ** 2 + ((y - rs.MID_Y_UM) / 31) ** 2 <= 1, rs.GRID_SHAPE
    )
    edited, _ = regions.apply([RegionEdit("section", "edited", mask=bigger.copy())])
    np.testing.assert_array_equal(edited.masks["left"], bigger & (x < rs.MID_X_UM))
    np.testing.assert_array_equal(edited.masks["ventral"], bigger & (y >= rs.MID_Y_UM))
    assert edited.masks["left"].sum() > saved.masks["left"].sum()  # grew with the section
    # reset: everything automatic again
    back, history = edited.apply([RegionReset("section")])
    for name, mask in saved.masks.items():
        np.testing.assert_array_equal(back.masks[name], mask, err_msg=name)
    assert back.records["section"].kind == "automatic" and history[0]["action"] == "reset"


def test_an_edit_leaves_other_hand_made_regions_alone(saved) -> None:
    from analysis.results_format import RegionRecord

    regions = SectionRegionSet.from_saved(saved)
    # a region drawn in the plan whose stored mask is not exactly its polygon's rasterisation
    # (the plan's rasteriser has another edge convention): an unrelated edit keeps its cells
    odd = saved.masks["rubrospinal_territory"].copy()
    odd[10, 30] = ~odd[10, 30]
    drawn = RegionRecord(kind="drawn", source="plan", geometry_um=_territory_polygon())
    regions = dataclasses.replace(
        regions,
        masks={**regions.masks, "rubrospinal_territory": odd},
        records={**regions.records, "rubrospinal_territory": drawn},
    )
    gray = shapely.geometry.mapping(shapely.Point(rs.MID_X_UM, rs.MID_Y_UM).buffer(10.0))
    edited, _ = regions.apply([RegionEdit("gray_matter", "drawn", geometry_um=gray)])
    np.testing.assert_array_equal(edited.masks["rubrospinal_territory"], odd & saved.masks["section"])
    grown, _ = regions.apply([RegionEdit("section", "edited", mask=np.ones(rs.GRID_SHAPE, bool))])
    polygon = rasterize_geometry_um(_territory_polygon(), grid=regions.grid)
    np.testing.assert_array_equal(grown.masks["rubrospinal_territory"], polygon)  # regrown from its polygon


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (
            lambda: RegionEdit("section", "edited", mask=np.ones((3, 3), bool)),
            "mask shape .* differs from the grid",
        ),
        (
            lambda: RegionEdit("section", "imported", geometry_um=_box(0, 0, 5, 5)),
            "covers no cell .* stage µm",
        ),
        (lambda: RegionEdit("x", "drawn"), "either a polygon or a mask"),
        (lambda: RegionEdit("a/b", "drawn", mask=np.ones(rs.GRID_SHAPE, bool)), "empty or holds '/'"),
        (
            lambda: RegionEdit("x", "automatic", mask=np.ones(rs.GRID_SHAPE, bool)),
            "edited, drawn or imported",
        ),
        (lambda: RegionReset("lesion"), "no automatic mask to reset to"),
    ],
    ids=["mask-shape", "wrong-frame", "nothing", "bad-name", "bad-kind", "reset-unknown"],
)
def test_bad_edits_say_what_is_wrong(saved, edit, match: str) -> None:
    with pytest.raises(RegionEditError, match=match):
        SectionRegionSet.from_saved(saved).apply([edit()])


# ---------------------------------------------------------------- re-analysis


def test_unchanged_regions_reanalyse_to_the_stored_table(saved) -> None:
    assert saved.sums is not None
    table, maps = reanalyse(saved.sums, SectionRegionSet.from_saved(saved), bin_um=saved.bin_um)
    assert table == saved.table
    np.testing.assert_array_equal(maps.pct_axonal_area, saved.maps.pct_axonal_area)


def test_reanalysis_is_the_region_table_of_the_new_masks(saved) -> None:
    result = reanalyse_section(
        saved, [RegionEdit("rubrospinal_territory", "drawn", geometry_um=_territory_polygon(-8))]
    )
    acc = rs.accumulator()
    expected = region_table(acc, result.regions.masks)
    assert [dataclasses.replace(r, kind="automatic") for r in result.table] == expected
    kinds = {r.region: r.kind for r in result.table}
    assert kinds["rubrospinal_territory"] == "drawn" and kinds["section"] == "automatic"
    maps = heatmaps(acc, bin_um=rs.BIN_UM, tissue_mask=result.regions.masks["section"])
    np.testing.assert_array_equal(result.maps.pct_axonal_area, maps.pct_axonal_area)
    assert result.elapsed_s < 1.0


def test_edits_are_written_back_with_provenance(scan: Path) -> None:
    with h5py.File(scan, "r") as f:
        before = f[f"sections/{rs.SECTION}/analysis/mosaic"][()]
    results = apply_region_edits(
        scan,
        {
            rs.SECTION: [
                RegionEdit("rubrospinal_territory", "edited", geometry_um=_territory_polygon(), source="gui")
            ]
        },
    )
    with h5py.File(scan, "r") as f:
        g = f[f"sections/{rs.SECTION}/analysis"]
        saved = read_analysis(g)
        np.testing.assert_array_equal(g["mosaic"][()], before)  # the rest is untouched
        assert "rubrospinal_territory" in g["automatic_masks"] and "section" not in g["automatic_masks"]
    assert saved.table == results[rs.SECTION].table
    assert saved.regions["rubrospinal_territory"].who == "anna"
    assert saved.region_history[-1]["region"] == "rubrospinal_territory"
    with scan.with_name("scan.regions.csv").open() as f:
        kinds = {r["region"]: r["region_kind"] for r in csv.DictReader(f)}
    assert kinds["rubrospinal_territory"] == "edited" and kinds["section"] == "automatic"
    # a reset brings the automatic mask and numbers back
    apply_region_edits(scan, {rs.SECTION: [RegionReset("rubrospinal_territory")]})
    with h5py.File(scan, "r") as f:
        again = read_analysis(f[f"sections/{rs.SECTION}/analysis"])
    np.testing.assert_array_equal(
        again.masks["rubrospinal_territory"], rs.automatic_masks()["rubrospinal_territory"]
    )
    assert [r.kind for r in again.table] == ["automatic"] * len(again.table)
    assert [e["action"] for e in again.region_history] == ["set", "reset"]


def test_a_bad_edit_writes_nothing(scan: Path) -> None:
    with pytest.raises(RegionEditError, match="has no section nope"):
        apply_region_edits(scan, {"nope": []})
    with pytest.raises(RegionEditError, match=f"section {rs.SECTION}: region 'x'"):
        apply_region_edits(scan, {rs.SECTION: [RegionEdit("x", "drawn", geometry_um=_box(0, 0, 1, 1))]})
    with h5py.File(scan, "r") as f:
        assert read_analysis(f[f"sections/{rs.SECTION}/analysis"]).region_history == []


def test_stored_edits_apply_again_after_a_new_analysis(saved) -> None:
    regions = SectionRegionSet.from_saved(saved)
    edited, _ = regions.apply(
        [RegionEdit("rubrospinal_territory", "imported", geometry_um=_territory_polygon(3))]
    )
    again, _ = regions.apply(edited.stored_edits())
    np.testing.assert_array_equal(again.masks["rubrospinal_territory"], edited.masks["rubrospinal_territory"])
    assert again.records == edited.records


# ---------------------------------------------------------------- real sections


@pytest.mark.slow
@pytest.mark.parametrize("section_id", ["rat02-Th7", "rat03-lesion"], ids=["coronal", "horizontal"])
def test_halves_and_bins_recomputed_like_the_automatic_ones(section_id: str) -> None:
    from acquisition.demo.slide import demo_slide
    from analysis.regions import section_regions
    from analysis.results_format import RegionRecord
    from analysis.section_analysis import regions_to_json
    from tests.analysis.test_regions import P_UM, section_frame

    slide = demo_slide()
    image, origin, _ = section_frame(slide, section_id)
    spec = slide.section(section_id).spec
    auto = section_regions(
        image,
        origin_um=origin,
        pixel_size_um=P_UM,
        orientation=spec.orientation,
        injection_side=spec.injection_side,
    )
    tissue = auto.masks["section"]
    regions = SectionRegionSet(
        grid=GridGeometry(np.asarray(origin, dtype=np.float64), P_UM, tissue.shape),
        masks=dict(auto.masks),
        records={name: RegionRecord() for name in auto.masks},
        automatic_masks=dict(auto.masks),
        regions_json=regions_to_json(auto),
    )
    # the section "edited" into itself: every half and bin recomputed from the stored axes
    same, _ = regions.apply([RegionEdit("section", "edited", mask=tissue.copy())])
    derived = [n for n in auto.masks if n in ("left", "right", "dorsal", "ventral") or n.startswith("rc_")]
    assert len(derived) >= 4
    assert spec.orientation == "coronal" or sum(n.startswith("rc_") for n in derived) >= 2
    for name in derived:
        np.testing.assert_array_equal(same.masks[name], auto.masks[name], err_msg=name)


@pytest.fixture
def demo_section(th7_live_scan, tmp_path: Path) -> Path:
    """A copy of the session's live-analysed rat01-Th7 scan."""
    path = tmp_path / "th7.h5"
    path.write_bytes(th7_live_scan.path.read_bytes())
    return path


@pytest.mark.slow
def test_demo_section_reanalyses_in_well_under_a_second(demo_section: Path) -> None:
    with h5py.File(demo_section, "r") as f:
        saved = read_analysis(f["sections/rat01-Th7/analysis"])
    assert saved.sums is not None and saved.masks["section"].size > 100_000  # a real grid
    regions = SectionRegionSet.from_saved(saved)
    # nothing edited: exactly the live analysis's table and maps, from the stored sums alone
    table, maps = reanalyse(saved.sums, regions, bin_um=saved.bin_um)
    assert table == saved.table
    np.testing.assert_array_equal(maps.pct_axonal_area, saved.maps.pct_axonal_area)
    # the territory's boundary moved 20 µm outward
    outline = regions.outline_um("rubrospinal_territory")
    assert outline is not None
    moved = shapely.geometry.mapping(shapely.geometry.shape(outline).buffer(20.0))
    result = reanalyse_section(saved, [RegionEdit("rubrospinal_territory", "edited", geometry_um=moved)])
    assert result.elapsed_s < 0.5
    rows = {r.region: r for r in result.table}
    before = {r.region: r for r in saved.table}
    assert rows["rubrospinal_territory"].area_um2 > 1.1 * before["rubrospinal_territory"].area_um2
    assert rows["rubrospinal_territory"].kind == "edited"
    assert rows["section"] == before["section"]


def test_plan_polygons_are_written_as_drawn_regions(tmp_path: Path) -> None:
    from analysis.section_analysis import SectionAnalysis

    ring = shapely.Point(1040.0, 2016.0).buffer(30.0).exterior.coords[:-1]
    square = [(1060.0, 2000.0), (1080.0, 2000.0), (1080.0, 2020.0), (1060.0, 2020.0)]
    section = SectionAnalysis(
        section_id=rs.SECTION,
        tile_xy_um=rs.tile_centres(),
        tile_shape_px=(rs.H, rs.W),
        pixel_size_um=rs.PIXEL_UM,
        n_channels=2,
        tracer_channel=1,
        anatomy_channel=0,
        section_attrs={
            "orientation": "coronal",
            "injection_side": "left",
            "region_polygons_um": {"section": [list(p) for p in ring], "rubrospinal_territory": square},
        },
        channel_names=rs.CHANNELS,
    )
    for t in range(len(rs.tile_centres())):
        section.add_tile(rs.tile_pixels(t), tile_index=t)
    results = section.results()
    kinds = {r.region: r.kind for r in results.table}
    assert kinds.pop("section") == kinds.pop("rubrospinal_territory") == "drawn"
    assert set(kinds.values()) == {"automatic"}
    with h5py.File(tmp_path / "a.h5", "w") as f:
        section.write(f.create_group("analysis"), results)
        saved = read_analysis(f["analysis"])
    # NaN (a region with nothing imaged) compares unequal to itself: compare the rows as text
    assert [repr(r) for r in saved.table] == [repr(r) for r in results.table]
    record = saved.regions["rubrospinal_territory"]
    assert (record.kind, record.source) == ("drawn", "plan")
    assert shapely.geometry.shape(record.geometry_um).equals(shapely.Polygon(square))
    assert datetime.fromisoformat(saved.regions["white_matter"].when_iso).tzinfo is not None
