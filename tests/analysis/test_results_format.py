"""The analysis/ group's format: versions written and read, old files read, newer ones refused."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest

from analysis.maps import REGION_COLUMNS, heatmaps, region_table
from analysis.results import load_scan_results
from analysis.results_format import (
    ANALYSIS_FORMAT,
    ANALYSIS_FORMAT_VERSION,
    CellSums,
    RegionRecord,
    ResultsFormatError,
    analysis_format_version,
    has_analysis,
    read_analysis,
    read_region_table,
    write_analysis,
    write_region_csv,
    write_scan_region_csv,
)
from tests.analysis import _region_scan as rs


@pytest.fixture
def scan(tmp_path: Path) -> Path:
    return rs.make_scan(tmp_path / "scan.h5")


def _group(f: h5py.File) -> h5py.Group:
    return f[f"sections/{rs.SECTION}/analysis"]


def test_written_groups_carry_format_and_version(scan: Path) -> None:
    with h5py.File(scan, "r") as f:
        g = _group(f)
        assert (
            g.attrs["format"] == ANALYSIS_FORMAT and g.attrs["format_version"] == ANALYSIS_FORMAT_VERSION == 2
        )
        assert analysis_format_version(g) == 2 and has_analysis(g)
        # plain datasets: the sums as pixel counts, with the tile geometry
        assert set(g["grid"]) == {"imaged_px", "axon_px", "tracer_sum_adu", "tile_centres_um"}
        assert g["grid"].attrs["tile_pixel_size_um"] == rs.PIXEL_UM
        assert list(g["grid"].attrs["tile_shape_px"]) == [rs.H, rs.W]
        assert g["masks/rubrospinal_territory"].attrs["kind"] == "automatic"
        assert [r.decode() for r in g["regions_table"]["kind"]] == ["automatic"] * 8


def test_sums_read_back_exactly_and_rebuild_the_table(scan: Path) -> None:
    acc = rs.accumulator()
    with h5py.File(scan, "r") as f:
        saved = read_analysis(_group(f))
    assert saved.sums is not None
    np.testing.assert_array_equal(saved.sums.imaged_px, acc.imaged_px)
    np.testing.assert_array_equal(saved.sums.axon_px, acc.axon_px)
    np.testing.assert_array_equal(saved.sums.tracer_sum_adu, acc.tracer_sum)
    np.testing.assert_array_equal(saved.sums.tile_centres_um, rs.tile_centres())
    with h5py.File(scan, "r") as f:
        assert read_region_table(_group(f)) == saved.table
        assert read_analysis(_group(f), with_mosaic=False).mosaic is None
    # the stored sums give the stored table to the last digit
    assert region_table(saved.sums.accumulator(), saved.masks) == saved.table
    assert list(saved.masks) == list(rs.automatic_masks())  # table order kept
    assert saved.regions_json == rs.REGIONS_JSON
    assert all(rec.kind == "automatic" for rec in saved.regions.values())
    assert saved.automatic_masks.keys() == saved.masks.keys()


def test_empty_group_holds_no_analysis(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "x.h5", "w") as f:
        g = f.create_group("sections/S/analysis")
        assert analysis_format_version(g) is None and not has_analysis(g) and not has_analysis(None)
        with pytest.raises(ResultsFormatError, match="holds no analysis; run cordscope analyze first"):
            read_analysis(g)


@pytest.mark.parametrize(
    ("attrs", "match"),
    [
        (
            {"format": ANALYSIS_FORMAT, "format_version": 3},
            r"analysis format version 3, newer than .* \(up to 2\); update",
        ),
        (
            {"format": "something-else", "format_version": 1},
            r"is 'something-else', not a cordscope-analysis group",
        ),
        ({"format": ANALYSIS_FORMAT, "format_version": 0}, "invalid format_version 0"),
    ],
    ids=["newer-version", "other-format", "bad-version"],
)
def test_unreadable_groups_are_refused_in_one_line(scan: Path, attrs: dict, match: str) -> None:
    with h5py.File(scan, "r+") as f:
        _group(f).attrs.update(attrs)
    with h5py.File(scan, "r") as f:
        with pytest.raises(ResultsFormatError, match=match) as err:
            read_analysis(_group(f))
    assert "\n" not in str(err.value) and "scan.h5" in str(err.value)
    with pytest.raises(ResultsFormatError, match=match):
        load_scan_results(scan)


def test_a_newer_group_is_not_overwritten(scan: Path) -> None:
    acc = rs.accumulator()
    masks = rs.automatic_masks()
    with h5py.File(scan, "r+") as f:
        _group(f).attrs["format_version"] = 9
        with pytest.raises(ResultsFormatError, match="newer than this CordScope"):
            write_analysis(
                _group(f),
                maps=heatmaps(acc),
                masks=masks,
                table=region_table(acc, masks),
                parameters={},
                accumulator=acc,
            )
        assert "mosaic" in _group(f)  # untouched


def _write_version_1(group: h5py.Group, *, plan_drawn: str | None = None) -> None:
    """The layout write_analysis produced before versioning (no format attributes, areas in the grid)."""
    acc = rs.accumulator()
    masks = rs.automatic_masks()
    maps = heatmaps(acc, bin_um=rs.BIN_UM, tissue_mask=masks["section"])
    for name, data in (
        ("pct_axonal_area_map", maps.pct_axonal_area),
        ("mean_tracer_map", maps.mean_tracer),
        ("imaged_tissue_fraction_map", maps.imaged_tissue_fraction),
    ):
        ds = group.create_dataset(name, data=data)
        ds.attrs.update({"origin_um": maps.origin_um, "bin_um": maps.bin_um})
    mg = group.create_group("masks")
    mg.attrs["origin_um"], mg.attrs["cell_um"] = rs.GRID_ORIGIN_UM, rs.CELL_UM
    for name, m in masks.items():
        mg.create_dataset(name, data=m.astype(np.uint8))
    table = region_table(acc, masks)
    dt = np.dtype([("region", h5py.string_dtype())] + [(k, np.float64) for k in REGION_COLUMNS[1:]])
    group.create_dataset(
        "regions_table", data=np.array([tuple(getattr(r, k) for k in REGION_COLUMNS) for r in table], dt)
    )
    group.create_dataset("parameters_json", data=json.dumps({"bin_um": rs.BIN_UM}), dtype=h5py.string_dtype())
    gg = group.create_group("grid")
    gg.attrs["origin_um"], gg.attrs["cell_um"] = acc.origin_um, acc.cell_um
    gg.create_dataset("imaged_area_um2", data=acc.imaged_area_um2)
    gg.create_dataset("axon_area_um2", data=acc.axon_area_um2)
    gg.create_dataset("tracer_sum", data=acc.tracer_sum)
    regions = json.loads(rs.REGIONS_JSON)
    regions["user_regions"] = [plan_drawn] if plan_drawn else []
    group.create_dataset("regions_json", data=json.dumps(regions), dtype=h5py.string_dtype())


def test_version_1_groups_are_read(scan: Path) -> None:
    with h5py.File(scan, "r+") as f:
        section = f[f"sections/{rs.SECTION}"]
        del section["analysis"]
        _write_version_1(section.create_group("analysis"), plan_drawn="rubrospinal_territory")
    with h5py.File(scan, "r") as f:
        saved = read_analysis(_group(f))
    acc = rs.accumulator()
    assert saved.format_version == 1
    assert [r.region for r in saved.table] == list(rs.automatic_masks())
    kinds = {r.region: r.kind for r in saved.table}
    assert kinds.pop("rubrospinal_territory") == "drawn"  # a plan polygon (regions_json user_regions)
    assert set(kinds.values()) == {"automatic"}
    assert saved.regions["rubrospinal_territory"] == RegionRecord(kind="drawn", source="plan")
    assert saved.sums is not None  # pixel counts recovered from the areas and the section's pixel size
    np.testing.assert_allclose(saved.sums.imaged_px, acc.imaged_px, rtol=1e-12)
    np.testing.assert_array_equal(saved.sums.tracer_sum_adu, acc.tracer_sum)
    np.testing.assert_array_equal(saved.sums.tile_centres_um, rs.tile_centres())
    for got, want in zip(region_table(saved.sums.accumulator(), saved.masks), saved.table, strict=True):
        assert got.area_um2 == want.area_um2
        assert got.pct_axonal_area == pytest.approx(want.pct_axonal_area, rel=1e-12)
    assert load_scan_results(scan)[rs.SECTION].analysis is not None
    with h5py.File(scan, "r") as f:
        assert read_region_table(_group(f)) == saved.table


def test_a_whole_write_replaces_everything_before_it(scan: Path) -> None:
    acc = rs.accumulator()
    masks = {"section": rs.automatic_masks()["section"]}
    with h5py.File(scan, "r+") as f:
        write_analysis(
            _group(f),
            maps=heatmaps(acc),
            masks=masks,
            table=region_table(acc, masks),
            parameters={},
            sums=CellSums.from_accumulator(acc),
        )
        g = _group(f)
        assert "mosaic" not in g and "regions_json" not in g and list(g["masks"]) == ["section"]


def test_region_records_are_stored_with_their_masks(scan: Path) -> None:
    acc = rs.accumulator()
    masks = rs.automatic_masks()
    drawn = RegionRecord(
        kind="drawn",
        who="anna",
        when_iso="2026-03-01T10:00:00+01:00",
        source="gui",
        geometry_um={"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]},
    )
    with h5py.File(scan, "r+") as f:
        write_analysis(
            _group(f),
            maps=heatmaps(acc),
            masks=masks,
            table=region_table(acc, masks),
            parameters={},
            accumulator=acc,
            regions={"rubrospinal_territory": drawn},
            automatic_masks={"rubrospinal_territory": np.zeros(rs.GRID_SHAPE, bool)},
        )
    with h5py.File(scan, "r") as f:
        saved = read_analysis(_group(f))
        assert dict(_group(f)["masks/rubrospinal_territory"].attrs)["who"] == "anna"
    assert saved.regions["rubrospinal_territory"] == drawn
    assert {r.region: r.kind for r in saved.table}["rubrospinal_territory"] == "drawn"
    assert not saved.automatic_masks["rubrospinal_territory"].any()  # the stored automatic mask wins
    assert saved.region_history == [
        {"region": "rubrospinal_territory", "action": "set", "kind": "drawn", "who": "anna",
         "when_iso": "2026-03-01T10:00:00+01:00", "source": "gui"}
    ]  # fmt: skip


def test_unknown_region_kind_is_refused() -> None:
    with pytest.raises(ResultsFormatError, match="region kind 'guessed' is not one of automatic, edited"):
        RegionRecord(kind="guessed")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "digits", "text"),
    [
        (1234.56, 1, "1234.6"),
        (4.123449, 4, "4.1234"),
        (-0.00001, 2, "0.00"),
        (math.nan, 2, ""),
        (321.5062, 2, "321.51"),
    ],
    ids=["area", "pct", "negative-zero", "nan", "adu"],
)
def test_csv_values_are_rounded(tmp_path: Path, value: float, digits: int, text: str) -> None:
    from analysis.maps import RegionRow
    from analysis.results_format import CSV_DIGITS

    column = {1: "area_um2", 4: "pct_axonal_area", 2: "mean_tracer_intensity_adu"}[digits]
    assert CSV_DIGITS[column] == digits
    row = RegionRow("section", 0.0, 0.0, 0.0, 0.0, 0.0)
    field = {
        "area_um2": "area_um2",
        "pct_axonal_area": "pct_axonal_area",
        "mean_tracer_intensity_adu": "mean_tracer_intensity",
    }
    row = RegionRow(**{**row.__dict__, field[column]: value})
    out = write_region_csv(tmp_path / "t.csv", {"S": [row]})
    with out.open() as f:
        assert next(csv.DictReader(f))[column] == text


def test_scan_csv_has_the_sections_labels(scan: Path) -> None:
    out = write_scan_region_csv(scan)
    assert out == scan.with_name("scan.regions.csv")
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert {(r["animal"], r["group"], r["level"], r["region_kind"]) for r in rows} == {
        ("rat01", "vehicle", "Th7", "automatic")
    }
    assert [r["region"] for r in rows] == list(rs.automatic_masks())
