"""QuPath round trip: OME-TIFF read by other readers, GeoJSON in QuPath's shape, regions back as imported."""

from __future__ import annotations

import copy
import itertools
import json
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import h5py
import numpy as np
import pytest
import shapely
from scipy import ndimage as ndi
from shapely import affinity
from shapely.geometry import mapping, shape

from analysis import exports
from analysis.maps import region_table
from analysis.qupath import (
    ImageFrame,
    QuPathError,
    apply_regions_file,
    export_qupath,
    export_regions_geojson,
    qupath_features,
    read_qupath_geojson,
    region_from_class,
    section_image_frame,
)
from analysis.region_edits import GridGeometry, rasterize_geometry_um
from analysis.results_format import read_analysis
from tests.analysis import _region_scan as rs

OME_NS = {"ome": "http://www.openmicroscopy.org/Schemas/OME/2016-06"}

# An annotation exactly as QuPath (0.4+) writes it: qupath-core PathObjectTypeAdapters / GsonTools
QUPATH_ANNOTATION = {
    "type": "Feature",
    "id": "5a3c1f2e-8b7d-4e6f-9a0b-1c2d3e4f5a6b",
    "geometry": {
        "type": "Polygon",
        "coordinates": [[[10.0, 20.0], [30.5, 20.0], [30.5, 40.25], [10.0, 20.0]]],
    },
    "properties": {
        "objectType": "annotation",
        "name": "my outline",
        "classification": {"name": "Tumor", "color": [200, 0, 0]},
        "isLocked": True,
        "measurements": {"Area µm^2": 12.5},
    },
}


@pytest.fixture
def scan(tmp_path: Path) -> Path:
    return rs.make_scan(tmp_path / "scan.h5")


@pytest.fixture
def saved(scan: Path):
    with h5py.File(scan, "r") as f:
        return read_analysis(f[f"sections/{rs.SECTION}/analysis"])


@pytest.fixture
def frame(scan: Path) -> ImageFrame:
    from acquisition.storage import ScanFile

    with ScanFile.open(scan) as f:
        return section_image_frame(f.section(rs.SECTION))


@pytest.fixture(autouse=True)
def _user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("getpass.getuser", lambda: "anna")


@pytest.fixture
def exported(scan: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    monkeypatch.setattr(exports, "ZARR_CHUNK_PX", 64)  # a pyramid even for this small mosaic
    return export_qupath(scan, tmp_path / "qupath")


# ---------------------------------------------------------------- the frame


def test_frame_maps_stage_to_image_pixels(frame: ImageFrame) -> None:
    # independent of the writer: the done tiles' extent, corner at the top-left tile's first pixel edge
    left = rs.tile_centres()[:, 0].min() - rs.W / 2 * rs.PIXEL_UM
    top = rs.tile_centres()[:, 1].min() - rs.H / 2 * rs.PIXEL_UM
    np.testing.assert_allclose(frame.corner_um, [left, top])
    assert frame.pixel_size_um == rs.PIXEL_UM
    assert frame.to_pixels(shapely.Point(left + 10.0, top + 5.0)).equals(shapely.Point(20.0, 10.0))
    square = shapely.box(3.0, 4.0, 9.0, 7.0)
    assert shapely.equals_exact(frame.to_pixels(frame.to_stage(square)), square, tolerance=1e-9)
    rotated = ImageFrame(np.array([0.0, 0.0]), np.array([[0.0, -0.5], [0.5, 0.0]]), (10, 10))
    assert rotated.to_stage(shapely.Point(2.0, 0.0)).equals(shapely.Point(0.0, 1.0))  # columns along +y
    assert rotated.pixel_size_um == 0.5


# ---------------------------------------------------------------- OME-TIFF


def test_ome_tiff_pyramid_read_by_tifffile(exported: list[Path], frame: ImageFrame) -> None:
    import tifffile

    path = exported[0]
    assert path.name == "S1.ome.tif" and exported[1].name == "S1.geojson"
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome
        series = tif.series[0]
        assert series.axes == "CYX" and series.shape == (2, *frame.shape_px)
        shapes = [level.shape for level in series.levels]
        assert len(shapes) >= 3 and len(tif.pages[0].subifds) == len(shapes) - 1
        for a, b in itertools.pairwise(shapes):
            assert b == (2, (a[1] + 1) // 2, (a[2] + 1) // 2)
        level0 = series.levels[0].asarray()
        level1 = series.levels[1].asarray()
        root = ET.fromstring(tif.ome_metadata)
    pixels = root.find("ome:Image/ome:Pixels", OME_NS)
    assert pixels is not None
    assert (pixels.get("PhysicalSizeX"), pixels.get("PhysicalSizeXUnit")) == (str(rs.PIXEL_UM), "µm")
    assert (pixels.get("PhysicalSizeY"), pixels.get("PhysicalSizeYUnit")) == (str(rs.PIXEL_UM), "µm")
    assert [c.get("Name") for c in pixels.iterfind("ome:Channel", OME_NS)] == list(rs.CHANNELS)
    plane = pixels.find("ome:Plane", OME_NS)
    assert plane is not None
    assert (float(plane.get("PositionX")), float(plane.get("PositionY"))) == tuple(frame.corner_um)
    # every tile's pixels at its place (later tiles over earlier ones in overlaps: check the last tile)
    t = len(rs.tile_centres()) - 1
    cx, cy = rs.tile_centres()[t]
    c0 = round((cx - rs.W / 2 * rs.PIXEL_UM - frame.corner_um[0]) / rs.PIXEL_UM)
    r0 = round((cy - rs.H / 2 * rs.PIXEL_UM - frame.corner_um[1]) / rs.PIXEL_UM)
    np.testing.assert_array_equal(level0[:, r0 : r0 + rs.H, c0 : c0 + rs.W], rs.tile_pixels(t)[:, 0])
    np.testing.assert_allclose(level1[:, 3, 5], np.rint(level0[:, 6:8, 10:12].mean(axis=(1, 2))), atol=0.5)


def test_ome_tiff_read_by_ome_types(exported: list[Path], frame: ImageFrame) -> None:
    ome_types = pytest.importorskip("ome_types")
    ome = ome_types.from_tiff(exported[0])  # validates against the OME schema
    px = ome.images[0].pixels
    assert ome.images[0].name == rs.SECTION
    assert px.physical_size_x == px.physical_size_y == rs.PIXEL_UM
    assert px.physical_size_x_unit.value == "µm"
    assert [c.name for c in px.channels] == list(rs.CHANNELS)
    assert [c.color.as_rgb_tuple() for c in px.channels] == [(0, 0, 255), (255, 0, 0)]
    assert (px.planes[0].position_x, px.planes[0].position_y) == tuple(frame.corner_um)


# ---------------------------------------------------------------- GeoJSON out


def _assert_qupath_feature(feature: dict) -> None:
    assert set(feature) == set(QUPATH_ANNOTATION) - {"properties"} | {"properties"}
    assert feature["type"] == "Feature" and uuid.UUID(feature["id"])
    assert feature["geometry"]["type"] in ("Polygon", "MultiPolygon")
    props = feature["properties"]
    assert props["objectType"] == "annotation" and isinstance(props["name"], str)
    cls = props["classification"]  # QuPath reads a classification only with a name and a colour
    assert set(cls) == {"name", "color"} and len(cls["color"]) == 3
    assert all(isinstance(v, int) and 0 <= v <= 255 for v in cls["color"])
    assert isinstance(props["measurements"], dict)
    assert all(isinstance(v, float) and np.isfinite(v) for v in props["measurements"].values())
    assert all(isinstance(v, str) for v in props["metadata"].values())
    for xy in shapely.get_coordinates(shape(feature["geometry"])):
        assert list(xy) == [round(v, 2) for v in xy]  # QuPath's 2 decimals


def test_geojson_has_qupaths_structure(exported: list[Path], saved) -> None:
    geojson = pytest.importorskip("geojson")
    text = exported[1].read_text()
    assert geojson.loads(text).is_valid
    collection = json.loads(text)
    assert collection["type"] == "FeatureCollection"
    features = collection["features"]
    assert [f["properties"]["classification"]["name"] for f in features] == list(saved.masks)
    for feature in features:
        _assert_qupath_feature(feature)
    rows = {r.region: r for r in saved.table}
    territory = next(f for f in features if f["properties"]["name"] == "rubrospinal_territory")
    assert (
        territory["properties"]["measurements"]["pct_axonal_area"]
        == rows["rubrospinal_territory"].pct_axonal_area
    )
    assert territory["properties"]["metadata"]["region_kind"] == "automatic"
    # the sample QuPath feature has the same structure as ours
    _assert_qupath_feature(
        {**QUPATH_ANNOTATION, "properties": {**QUPATH_ANNOTATION["properties"], "metadata": {}}}
    )


def _boundary_band(mask: np.ndarray) -> np.ndarray:
    """Cells within one cell (8-neighbourhood) of the mask's outline."""
    return ndi.binary_dilation(mask, np.ones((3, 3))) & ~ndi.binary_erosion(mask, np.ones((3, 3)))


def test_mask_to_geojson_to_mask_within_one_cell(saved, frame: ImageFrame) -> None:
    grid = GridGeometry(saved.mask_origin_um, saved.mask_cell_um, rs.GRID_SHAPE)
    collection = qupath_features(saved, frame, section_id=rs.SECTION)
    for feature in collection["features"]:
        region = feature["properties"]["name"]
        back = rasterize_geometry_um(frame.to_stage(shape(feature["geometry"])), grid=grid)
        changed = back ^ saved.masks[region]
        assert not (changed & ~_boundary_band(saved.masks[region])).any(), region
        assert changed.sum() <= 0.1 * saved.masks[region].sum(), region


# ---------------------------------------------------------------- GeoJSON in


def test_an_untouched_export_imports_as_unchanged(exported: list[Path], saved, frame: ImageFrame) -> None:
    found = read_qupath_geojson(exported[1], saved=saved, frame=frame, section_id=rs.SECTION)
    assert found.edits == {} and found.skipped == []
    assert found.unchanged == [f"{rs.SECTION}/{r}" for r in saved.masks]


def _px(geometry: shapely.Geometry) -> dict:
    return json.loads(json.dumps(mapping(geometry)))


def _annotation(
    geometry: shapely.Geometry, classification: dict | None, *, object_type: str = "annotation"
) -> dict:
    properties: dict = {"objectType": object_type, "name": "section"}
    if classification is not None:
        properties = {"objectType": object_type, "classification": classification, "measurements": {}}
    return {"type": "Feature", "id": str(uuid.uuid4()), "geometry": _px(geometry), "properties": properties}


def test_annotations_drawn_in_qupath_become_imported_regions(saved, frame: ImageFrame) -> None:
    territory = shapely.Polygon(
        [(150, 20), (200, 20), (200, 70), (150, 70)], holes=[[(165, 35), (185, 35), (185, 55), (165, 55)]]
    )
    gray = shapely.MultiPolygon([shapely.box(90, 50, 110, 70), shapely.box(120, 50, 140, 70)])
    features = [
        _annotation(territory, {"name": "Rubrospinal territory", "color": [255, 0, 0]}),
        _annotation(gray, {"name": "Grey Matter", "color": [0, 0, 255]}),
        _annotation(shapely.box(20, 20, 100, 60), {"names": ["Region*", "Left"], "color": [0, 200, 0]}),
        _annotation(shapely.box(20, 60, 60, 100), {"name": "Ventral", "colorRGB": -3670016}),  # QuPath 0.2
        QUPATH_ANNOTATION,  # "Tumor": not a region
        _annotation(shapely.box(0, 0, 9, 9), {"name": "Left", "color": [1, 2, 3]}, object_type="detection"),
        {
            **_annotation(shapely.box(0, 0, 9, 9), None),
            "geometry": {"type": "LineString", "coordinates": [[0, 0], [5, 5]]},
        },
    ]
    found = read_qupath_geojson(
        {"type": "FeatureCollection", "features": features}, saved=saved, frame=frame, section_id=rs.SECTION
    )
    edits = {e.region: e for e in found.edits[rs.SECTION]}
    assert set(edits) == {"rubrospinal_territory", "gray_matter", "left", "ventral"}
    assert {e.kind for e in edits.values()} == {"imported"}
    assert len(found.skipped) == 3 and any("'Tumor' is no region" in s for s in found.skipped)
    assert any("detection, not an annotation" in s for s in found.skipped)
    # the polygon, hole included, in stage µm
    got = shape(edits["rubrospinal_territory"].geometry_um)
    assert shapely.equals_exact(
        shapely.normalize(got), shapely.normalize(frame.to_stage(territory)), tolerance=1e-9
    )
    assert shape(edits["gray_matter"].geometry_um).geom_type == "MultiPolygon"
    grid = GridGeometry(saved.mask_origin_um, saved.mask_cell_um, rs.GRID_SHAPE)
    mask = rasterize_geometry_um(edits["rubrospinal_territory"].geometry_um, grid=grid)
    hole_centre = frame.to_stage(shapely.Point(175, 45))
    r = int((hole_centre.y - grid.origin_um[1]) // grid.cell_um)
    c = int((hole_centre.x - grid.origin_um[0]) // grid.cell_um)
    assert not mask[r, c] and mask.sum() > 0


@pytest.mark.parametrize(
    ("name", "region"),
    [
        ("White matter", "white_matter"),
        ("Grey matter", "gray_matter"),
        ("rubrospinal-territory", "rubrospinal_territory"),
        ("RST", "rubrospinal_territory"),
        ("Tissue", "section"),
        ("Region*: Dorsal", "dorsal"),
        ("rc_-500_0", "rc_-500_0"),
        ("Lesion core", "lesion_core"),
    ],
    ids=["white", "grey", "hyphens", "alias", "tissue", "derived", "bin", "new-name"],
)
def test_classification_names_map_to_regions(name: str, region: str) -> None:
    assert region_from_class(name) == region


def test_qupath_edit_round_trip_through_the_scan_file(
    exported: list[Path], scan: Path, frame: ImageFrame
) -> None:
    collection = json.loads(exported[1].read_text())
    moved = None
    for feature in collection["features"]:
        if feature["properties"]["name"] == "rubrospinal_territory":  # dragged 10 px left in QuPath
            moved = affinity.translate(shape(feature["geometry"]), xoff=-10.0)
            feature["geometry"] = _px(moved)
    assert moved is not None
    qupath_file = exported[1].with_name("S1.ome.tif.geojson")  # QuPath's default name: the image's
    qupath_file.write_text(json.dumps(collection))
    results, found = apply_regions_file(scan, qupath_file)
    assert [e.region for e in found.edits[rs.SECTION]] == ["rubrospinal_territory"]
    assert len(found.unchanged) == len(rs.automatic_masks()) - 1
    with h5py.File(scan, "r") as f:
        saved = read_analysis(f[f"sections/{rs.SECTION}/analysis"])
    record = saved.regions["rubrospinal_territory"]
    assert (record.kind, record.who, record.source) == ("imported", "anna", "S1.ome.tif.geojson")
    grid = GridGeometry(saved.mask_origin_um, saved.mask_cell_um, rs.GRID_SHAPE)
    expected = rasterize_geometry_um(frame.to_stage(moved), grid=grid) & saved.masks["section"]
    np.testing.assert_array_equal(saved.masks["rubrospinal_territory"], expected)
    row = {r.region: r for r in saved.table}["rubrospinal_territory"]
    truth = {r.region: r for r in region_table(rs.accumulator(), {"rubrospinal_territory": expected})}
    assert row.kind == "imported" and row.pct_axonal_area == truth["rubrospinal_territory"].pct_axonal_area
    assert results[rs.SECTION].table == saved.table


def test_a_qupath_file_needs_its_section(exported: list[Path], scan: Path, tmp_path: Path) -> None:
    anonymous = tmp_path / "annotations.geojson"
    anonymous.write_text(exported[1].read_text())
    with pytest.raises(QuPathError, match=r"name the section with --section \(analysed: S1\)"):
        apply_regions_file(scan, anonymous)
    results, found = apply_regions_file(scan, anonymous, section_id=rs.SECTION)
    assert results == {} and found.edits == {}
    with pytest.raises(QuPathError, match=r"section 'S9' of scan\.h5 is not analysed"):
        apply_regions_file(scan, anonymous, section_id="S9")
    broken = tmp_path / "broken.geojson"
    broken.write_text("{not json")
    with pytest.raises(QuPathError, match=r"broken\.geojson is not JSON"):
        apply_regions_file(scan, broken)


# ---------------------------------------------------------------- stage µm file


def test_stage_regions_file_round_trips_exactly(scan: Path, tmp_path: Path, saved) -> None:
    out = export_regions_geojson(scan, tmp_path / "regions.geojson")
    data = json.loads(out.read_text())
    assert data["cordscope"] == {
        "format": "cordscope-regions",
        "format_version": 1,
        "frame": "stage_um",
        "scan": "scan.h5",
    }
    grid = GridGeometry(saved.mask_origin_um, saved.mask_cell_um, rs.GRID_SHAPE)
    for feature in data["features"]:
        props = feature["properties"]
        assert (props["section_id"], props["animal"], props["group"], props["level"]) == (
            "S1",
            "rat01",
            "vehicle",
            "Th7",
        )
        assert props["kind"] == "automatic" and {"who", "when_iso", "source"} <= set(props)
        assert props["classification"]["name"] == props["region"]
        np.testing.assert_array_equal(
            rasterize_geometry_um(feature["geometry"], grid=grid), saved.masks[props["region"]]
        )
    results, found = apply_regions_file(scan, out)
    assert results == {} and len(found.unchanged) == len(saved.masks)


def test_stage_regions_file_edit_is_applied(scan: Path, tmp_path: Path) -> None:
    out = export_regions_geojson(scan, tmp_path / "regions.geojson")
    data = json.loads(out.read_text())
    edited = copy.deepcopy(data)
    for feature in edited["features"]:
        if feature["properties"]["region"] == "gray_matter":
            feature["geometry"] = _px(shapely.Point(rs.MID_X_UM, rs.MID_Y_UM).buffer(9.0))
    path = tmp_path / "edited.geojson"
    path.write_text(json.dumps(edited))
    results, found = apply_regions_file(scan, path)
    assert [e.region for e in found.edits["S1"]] == ["gray_matter"]
    kinds = {r.region: r.kind for r in results["S1"].table}
    assert kinds["gray_matter"] == "imported" and kinds["white_matter"] == "automatic"
    masks = results["S1"].regions.masks
    np.testing.assert_array_equal(masks["white_matter"], masks["section"] & ~masks["gray_matter"])
    again = json.loads(export_regions_geojson(scan, tmp_path / "again.geojson").read_text())
    gray = next(f for f in again["features"] if f["properties"]["region"] == "gray_matter")
    assert gray["properties"]["kind"] == "imported" and gray["properties"]["who"] == "anna"
    assert gray["geometry"]["type"] == "Polygon"  # the imported polygon itself, not its cells


def test_stage_file_of_another_scan_is_refused(scan: Path, tmp_path: Path) -> None:
    out = export_regions_geojson(scan, tmp_path / "regions.geojson")
    data = json.loads(out.read_text())
    data["features"][0]["properties"]["section_id"] = "rat09-C5"
    out.write_text(json.dumps(data))
    with pytest.raises(QuPathError, match="section 'rat09-C5' is not an analysed section of the scan"):
        apply_regions_file(scan, out)


# ---------------------------------------------------------------- command line


def test_cli_regions_round_trip_and_qupath_export(scan: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cordscope.cli import app

    runner = CliRunner()
    out = tmp_path / "regions.geojson"
    exported = runner.invoke(app, ["regions", str(scan), "--export", str(out)])
    assert exported.exit_code == 0, exported.output
    assert f"wrote {out}" in exported.output.replace("\n", "")
    same = runner.invoke(app, ["analyze", str(scan), "--regions", str(out)])
    assert same.exit_code == 0, same.output
    assert "no region changed (8 as they were)" in same.output
    data = json.loads(out.read_text())
    for feature in data["features"]:
        if feature["properties"]["region"] == "rubrospinal_territory":
            feature["geometry"] = _px(shapely.Point(1068.0, 2012.0).buffer(10.0))
    out.write_text(json.dumps(data))
    applied = runner.invoke(app, ["analyze", str(scan), "--regions", str(out)])
    assert applied.exit_code == 0, applied.output
    text = applied.output.replace("\n", " ")
    assert "imported S1/rubrospinal_territory (7 unchanged)" in text and "imported" in text
    assert "re-analysed from the stored sums in" in text
    both = runner.invoke(app, ["analyze", str(scan), str(scan), "--regions", str(out)])
    assert both.exit_code == 2 and "--regions applies to one scan file" in both.output
    qupath = runner.invoke(app, ["export", str(scan), "--format", "qupath", "--out", str(tmp_path / "qp")])
    assert qupath.exit_code == 0, qupath.output
    assert (tmp_path / "qp" / "S1.ome.tif").is_file() and (tmp_path / "qp" / "S1.geojson").is_file()
    territory = next(
        f
        for f in json.loads((tmp_path / "qp" / "S1.geojson").read_text())["features"]
        if f["properties"]["name"] == "rubrospinal_territory"
    )
    assert territory["properties"]["metadata"]["region_kind"] == "imported"
