"""Exports round-trip through readers other than the writers: npy2bdv's reader + XML, zarr + JSON, csv."""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr

from acquisition.pixel_geometry import (
    covered_extent_um,
    footprint_corners_um,
    pixel_to_stage_um,
    stage_to_pixel,
)
from acquisition.storage import ScanFile, ScanWriter, SectionLayout
from analysis.exports import (
    DISPLAY_PERCENTILES,
    ExportError,
    ExportProgress,
    export_bdv,
    export_csv,
    export_ome_zarr,
    mosaic_geometry,
    tile_positions_um,
)
from analysis.maps import Heatmaps, RegionRow, write_analysis, write_region_csv
from analysis.results import load_scan_results

PIXEL_UM = 0.5
H, W = 32, 48  # not square: a swapped axis shows
CHANNELS = ("DAPI", "tdTomato")
PENDING = 4  # tile of S1 left pending
# S2's registered positions: whole-pixel shifts (µm) for tiles 0 and 2; tile 1 not registered (NaN)
REGISTERED_SHIFT_UM = {0: (1.5, -1.0), 2: (-2.0, 0.5)}


def _grid(x0: float, y0: float) -> np.ndarray:
    # 3 columns × 2 rows, overlapping by 8 px in x and 4 px in y
    step_x, step_y = (W - 8) * PIXEL_UM, (H - 4) * PIXEL_UM
    return np.array([[x0 + i * step_x, y0 + j * step_y] for j in range(2) for i in range(3)])


def _pixels(section: int, tile: int) -> np.ndarray:
    rng = np.random.default_rng(1000 * section + tile)
    return rng.integers(0, 65536, size=(len(CHANNELS), 1, H, W), dtype=np.uint16)


def _heatmaps() -> Heatmaps:
    pct = np.array([[1.5, 2.5, np.nan], [0.0, 10.0, 4.25]], dtype=np.float32)
    return Heatmaps(
        pct_axonal_area=pct,
        mean_tracer=pct * 10,
        imaged_tissue_fraction=np.ones_like(pct),
        origin_um=np.array([1000.0, 2000.0]),
        bin_um=25.0,
        cells_per_bin=5,
    )


ROWS = [
    RegionRow("section", 12000.04, 600.0, 5.123456, 321.5062, 1.0),
    RegionRow("white_matter", 8000.0, 480.0, 6.0, float("nan"), 0.7512345),
]
# S1's analysis grid: 3 µm cells over its tiles (x 988..1052 µm, y 1992..2022 µm)
MASK_ORIGIN_UM = np.array([985.0, 1990.0])
MASK_CELL_UM = 3.0
MASKS = {"section": np.ones((12, 24), bool), "white_matter": np.zeros((12, 24), bool)}
MASKS["section"][:3, :4] = False
MASKS["white_matter"][2:9, 5:15] = True


@pytest.fixture(scope="module")
def scan_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("exports") / "slide.h5"
    layouts = [
        SectionLayout(sid, _grid(x0, y0), CHANNELS, 1, (H, W), PIXEL_UM, (W * PIXEL_UM, H * PIXEL_UM))
        for sid, x0, y0 in (("S1", 1000.0, 2000.0), ("S2", 5000.5, 2000.0))
    ]
    labels = {"animal": "rat01", "group": "vehicle", "level": "Th7"}
    layouts[0] = dataclasses.replace(layouts[0], attrs=labels)
    with ScanWriter.create(
        path, plan_yaml="name: t\n", sections=layouts, config_path="demo.cfg", config_text="", core_state={}
    ) as writer:
        for s, sid in enumerate(("S1", "S2")):
            for t in range(6):
                if sid == "S1" and t == PENDING:
                    continue
                for c in range(len(CHANNELS)):
                    writer.write_image(sid, t, c, 0, _pixels(s, t)[c, 0])
                writer.complete_tile(sid, t, z_um=0.0, meta={})
    with h5py.File(path, "r+") as f:
        g = f["sections/S1/analysis"]
        write_analysis(
            g,
            maps=_heatmaps(),
            masks=MASKS,
            table=ROWS,
            parameters={"bin_um": 25.0},
            grid_origin_um=MASK_ORIGIN_UM,
            grid_cell_um=MASK_CELL_UM,
        )
        registered = np.full((6, 2), np.nan)
        planned = f["sections/S2/tile_xy_um"][()]
        for t, (dx, dy) in REGISTERED_SHIFT_UM.items():
            registered[t] = planned[t] + (dx, dy)
        f["sections/S2/analysis"].create_dataset("registered_tile_xy_um", data=registered)
    return path


def _centres(sid: str) -> np.ndarray:
    planned = _grid(1000.0, 2000.0) if sid == "S1" else _grid(5000.5, 2000.0)
    if sid == "S2":
        for t, (dx, dy) in REGISTERED_SHIFT_UM.items():
            planned[t] = planned[t] + (dx, dy)
    return planned


def test_tile_positions_use_registered_where_finite(scan_path: Path) -> None:
    with ScanFile.open(scan_path) as scan:
        np.testing.assert_array_equal(tile_positions_um(scan.section("S1")), _grid(1000.0, 2000.0))
        got = tile_positions_um(scan.section("S2"))
    np.testing.assert_array_equal(got, _centres("S2"))
    assert got[1].tolist() == _grid(5000.5, 2000.0)[1].tolist()  # NaN: the planned position


# ----------------------------------------------------------------------- BDV


def test_bdv_round_trips_with_npy2bdv_reader(scan_path: Path, tmp_path: Path) -> None:
    import npy2bdv

    steps: list[ExportProgress] = []
    xml_path = export_bdv(scan_path, tmp_path / "bdv", progress=steps.append)
    assert xml_path == tmp_path / "bdv" / "slide.xml" and (tmp_path / "bdv" / "slide.h5").is_file()
    assert [s.done for s in steps] == list(range(1, 12)) and steps[-1].total == 11

    root = ET.parse(xml_path).getroot()
    setups = {int(v.findtext("id")): v for v in root.iterfind("./SequenceDescription/ViewSetups/ViewSetup")}
    assert len(setups) == 11 * 2
    tiles = [e.findtext("name") for e in root.iterfind(".//Attributes[@name='tile']/Tile")]
    assert tiles == [f"S{s}/{t:04d}" for s in (1, 2) for t in range(6)]  # the plan's position names
    channels = [e.findtext("name") for e in root.iterfind(".//Attributes[@name='channel']/Channel")]
    assert channels == list(CHANNELS)
    missing = {int(m.get("setup")) for m in root.iterfind(".//MissingViews/MissingView")}
    assert missing == {PENDING, 12 + PENDING}

    editor = npy2bdv.BdvEditor(str(xml_path), mode="r")
    try:
        assert editor.dtype == np.uint16  # from the dataType attribute
        for s, sid in enumerate(("S1", "S2")):
            centres = _centres(sid)
            for t in range(6):
                if sid == "S1" and t == PENDING:
                    continue
                tile = 6 * s + t
                for c, channel in enumerate(CHANNELS):
                    view = editor.read_view(channel=c, tile=tile)
                    np.testing.assert_array_equal(view, _pixels(s, t)[c], err_msg=f"{sid}/{t} {channel}")
                    affine = editor.read_affine(channel=c, tile=tile, index=0)
                    # pixel (r, c) lands at its stage position / pixel size
                    expected = [
                        centres[t, 0] / PIXEL_UM + 0.5 - W / 2,
                        centres[t, 1] / PIXEL_UM + 0.5 - H / 2,
                        0.0,
                    ]
                    np.testing.assert_allclose(affine[:, 3], expected, atol=1e-6)
                    np.testing.assert_array_equal(affine[:, :3], np.eye(3))
                    setup = setups[c * 12 + tile]
                    assert setup.findtext("name") == f"{sid}/{t:04d} {channel}"
                    assert setup.findtext("voxelSize/size") == f"{PIXEL_UM} {PIXEL_UM} {PIXEL_UM}"
                    assert setup.findtext("size") == f"{W} {H} 1"
        # downsampled level for BigStitcher's fast browsing
        assert editor.read_view(channel=0, tile=0, ilevel=1).shape == (1, H // 2, W // 2)
    finally:
        editor.finalize()
    with h5py.File(tmp_path / "bdv" / "slide.h5", "r") as f:
        assert f["s00"].attrs["dataType"] == b"uint16"
        raw = f["t00000/s00/0/cells"]
        assert raw.dtype == np.int16  # BDV's storage type; dataType says how to read it
        assert (raw[()].astype(np.uint16) == _pixels(0, 0)[0]).all()
        assert (_pixels(0, 0)[0] > 32767).any()


def test_bdv_refuses_to_overwrite(scan_path: Path, tmp_path: Path) -> None:
    export_bdv(scan_path, tmp_path)
    with pytest.raises(ExportError, match=r"already holds slide\.xml.*--overwrite"):
        export_bdv(scan_path, tmp_path)
    export_bdv(scan_path, tmp_path, overwrite=True)


# ------------------------------------------------------------------ OME-Zarr


def _read_image(path: Path) -> tuple[dict, list[np.ndarray], dict]:
    """Read an OME-Zarr v0.5 image with zarr and the spec's JSON (not yaozarrs, which wrote it)."""
    import zarr

    meta = json.loads((path / "zarr.json").read_text())
    ome = meta["attributes"]["ome"]
    assert ome["version"] == "0.5"
    multiscale = ome["multiscales"][0]
    group = zarr.open_group(str(path), mode="r")
    levels = [group[d["path"]] for d in multiscale["datasets"]]
    return multiscale, levels, ome


def _transforms(dataset: dict) -> tuple[list[float], list[float]]:
    kinds = {t["type"]: t for t in dataset["coordinateTransformations"]}
    return kinds["scale"]["scale"], kinds["translation"]["translation"]


def test_ome_zarr_mosaic_round_trips_with_zarr(scan_path: Path, tmp_path: Path) -> None:
    steps: list[ExportProgress] = []
    written = export_ome_zarr(scan_path, tmp_path, progress=steps.append)
    assert [p.name for p in written] == ["S1.ome.zarr", "S1_pct_axonal_area.ome.zarr", "S2.ome.zarr"]
    assert {s.section_id for s in steps} == {"S1", "S2"} and steps[-1].done == steps[-1].total
    import yaozarrs

    for path in written:  # conformance to OME-NGFF 0.5 (metadata and arrays agree)
        yaozarrs.validate_zarr_store(path)

    for s, sid in enumerate(("S1", "S2")):
        multiscale, levels, ome = _read_image(tmp_path / f"{sid}.ome.zarr")
        assert [a["name"] for a in multiscale["axes"]] == ["c", "y", "x"]
        assert [a.get("unit") for a in multiscale["axes"]] == [None, "micrometer", "micrometer"]
        assert [c["label"] for c in ome["omero"]["channels"]] == list(CHANNELS)
        scale, (_, ty, tx) = _transforms(multiscale["datasets"][0])
        assert scale == [1.0, PIXEL_UM, PIXEL_UM]
        done = [t for t in range(6) if not (sid == "S1" and t == PENDING)]
        centres = _centres(sid)
        # independent of the writer: the stage extent of the done tiles
        left = min(centres[t, 0] - W / 2 * PIXEL_UM for t in done)
        top = min(centres[t, 1] - H / 2 * PIXEL_UM for t in done)
        right = max(centres[t, 0] + W / 2 * PIXEL_UM for t in done)
        bottom = max(centres[t, 1] + H / 2 * PIXEL_UM for t in done)
        assert (tx, ty) == pytest.approx((left + PIXEL_UM / 2, top + PIXEL_UM / 2))
        level0 = levels[0]
        assert level0.dtype == np.uint16
        assert level0.shape == (2, round((bottom - top) / PIXEL_UM), round((right - left) / PIXEL_UM))
        mosaic = level0[...]

        def at(
            x_um: float, y_um: float, c: int, *, mosaic: np.ndarray = mosaic, tx: float = tx, ty: float = ty
        ) -> int:
            return int(mosaic[c, round((y_um - ty) / PIXEL_UM), round((x_um - tx) / PIXEL_UM)])

        for t in done:
            pixels = _pixels(s, t)
            x_t, y_t = centres[t]
            later = [u for u in done if u > t]
            for r, col in ((0, 0), (H - 1, W - 1), (H // 2, W // 2), (3, W - 5)):
                x = x_t + (col + 0.5 - W / 2) * PIXEL_UM
                y = y_t + (r + 0.5 - H / 2) * PIXEL_UM
                covered_later = any(
                    abs(x - centres[u, 0]) < W / 2 * PIXEL_UM and abs(y - centres[u, 1]) < H / 2 * PIXEL_UM
                    for u in later
                )
                if covered_later:
                    continue
                for c in range(2):
                    assert at(x, y, c) == pixels[c, 0, r, col], f"{sid}/{t} ({r}, {col}) c{c}"
        assert len(levels) == 1  # fits in one 512² chunk: no pyramid needed
        if sid == "S1":  # the middle of the pending tile, where no neighbour reaches, is 0
            x, y = centres[PENDING] + PIXEL_UM / 2
            assert at(x, y, 0) == 0 and at(x, y, 1) == 0

    # a large mosaic gets a pyramid: exercise it with S2 forced through the block mean
    from analysis import exports

    monkey_chunk = exports.ZARR_CHUNK_PX
    try:
        exports.ZARR_CHUNK_PX = 32
        out = tmp_path / "small-chunks"
        export_ome_zarr(scan_path, out)
    finally:
        exports.ZARR_CHUNK_PX = monkey_chunk
    multiscale, levels, _ = _read_image(out / "S2.ome.zarr")
    assert len(levels) >= 3
    full = levels[0][...].astype(np.float64)
    _, t0 = _transforms(multiscale["datasets"][0])
    for k in (1, 2):
        f = 2**k
        scale, shift = _transforms(multiscale["datasets"][k])
        assert scale == [1.0, PIXEL_UM * f, PIXEL_UM * f]
        # centre of level-k pixel 0 = centre of the f × f full-res pixels it averages
        assert shift[1:] == pytest.approx([t0[1] + (f - 1) / 2 * PIXEL_UM, t0[2] + (f - 1) / 2 * PIXEL_UM])
        level = levels[k][...]
        expected_shape = full.shape[1:]
        for _ in range(k):
            expected_shape = ((expected_shape[0] + 1) // 2, (expected_shape[1] + 1) // 2)
        assert level.shape == (2, *expected_shape)
    level1 = levels[1][...]
    for r, c in ((0, 0), (5, 7), (10, 20)):
        block = full[:, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2].mean(axis=(1, 2))
        np.testing.assert_allclose(level1[:, r, c], np.rint(block), atol=0.5)


def test_ome_zarr_display_windows_come_from_the_data(scan_path: Path, tmp_path: Path) -> None:
    export_ome_zarr(scan_path, tmp_path)
    for sid in ("S1", "S2"):
        _, levels, ome = _read_image(tmp_path / f"{sid}.ome.zarr")
        level0 = levels[0][...]
        for c, channel in enumerate(ome["omero"]["channels"]):
            imaged = level0[c][level0[c] > 0]  # 0: not imaged
            low, high = np.percentile(imaged, DISPLAY_PERCENTILES)
            window = channel["window"]
            assert (window["start"], window["end"]) == pytest.approx((low, high))
            assert (window["min"], window["max"]) == (0, 65535)  # the data type's range
            assert window["end"] < 65535 * 0.9999 or imaged.max() == 65535


def test_ome_zarr_multiscales_carry_name_type_and_metadata(scan_path: Path, tmp_path: Path) -> None:
    export_ome_zarr(scan_path, tmp_path)
    multiscale, _, _ = _read_image(tmp_path / "S1.ome.zarr")
    assert multiscale["name"] == "S1" and multiscale["type"] == "mean"
    assert "2 x 2 block mean" in multiscale["metadata"]["description"]
    heat, _, _ = _read_image(tmp_path / "S1_pct_axonal_area.ome.zarr")
    assert heat["name"] == "S1 % axonal area" and "NaN outside" in heat["metadata"]["description"]


def _label_expected(x_um: np.ndarray, y_um: np.ndarray, mask: np.ndarray) -> np.ndarray:
    # independent of the writer: the analysis-grid cell holding each pixel centre
    cols = np.floor((x_um - MASK_ORIGIN_UM[0]) / MASK_CELL_UM).astype(int)
    rows = np.floor((y_um - MASK_ORIGIN_UM[1]) / MASK_CELL_UM).astype(int)
    out = np.zeros((len(y_um), len(x_um)), dtype=np.uint8)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            if 0 <= r < mask.shape[0] and 0 <= c < mask.shape[1]:
                out[i, j] = mask[r, c]
    return out


def test_ome_zarr_region_masks_are_ngff_labels(scan_path: Path, tmp_path: Path) -> None:
    import yaozarrs

    from analysis import exports

    monkey_chunk = exports.ZARR_CHUNK_PX
    try:
        exports.ZARR_CHUNK_PX = 32  # a pyramid: labels need as many levels as the image
        export_ome_zarr(scan_path, tmp_path)
    finally:
        exports.ZARR_CHUNK_PX = monkey_chunk
    image = tmp_path / "S1.ome.zarr"
    yaozarrs.validate_zarr_store(image)  # checks the labels group and each label image too
    multiscale, levels, _ = _read_image(image)
    labels_meta = json.loads((image / "labels" / "zarr.json").read_text())["attributes"]["ome"]
    assert labels_meta["labels"] == list(MASKS)
    for region, mask in MASKS.items():
        meta = json.loads((image / "labels" / region / "zarr.json").read_text())["attributes"]["ome"]
        label = meta["image-label"]
        assert label["properties"] == [{"label-value": 1, "name": region, "kind": "automatic"}]
        assert label["colors"][0]["label-value"] == 1 and len(label["colors"][0]["rgba"]) == 4
        assert label["source"] == {"image": "../../"}
        lab_ms = meta["multiscales"][0]
        assert [a["name"] for a in lab_ms["axes"]] == ["y", "x"] and lab_ms["name"] == region
        assert len(lab_ms["datasets"]) == len(multiscale["datasets"]) >= 2
        group = zarr.open_group(str(image / "labels" / region), mode="r")
        for k, (lab_ds, img_ds) in enumerate(zip(lab_ms["datasets"], multiscale["datasets"], strict=True)):
            data = group[lab_ds["path"]][...]
            assert data.dtype == np.uint8 and data.shape == levels[k].shape[1:]
            scale, (ty, tx) = _transforms(lab_ds)
            assert scale == _transforms(img_ds)[0][1:] and [ty, tx] == _transforms(img_ds)[1][1:]
            x = tx + np.arange(data.shape[1]) * scale[1]
            y = ty + np.arange(data.shape[0]) * scale[0]
            np.testing.assert_array_equal(data, _label_expected(x, y, mask), err_msg=f"{region} level {k}")
    assert not (tmp_path / "S2.ome.zarr" / "labels").exists()  # S2 has no analysis


def test_ome_zarr_read_by_ome_zarr_py(scan_path: Path, tmp_path: Path) -> None:
    reader_mod = pytest.importorskip("ome_zarr.reader")
    from ome_zarr.io import parse_url

    export_ome_zarr(scan_path, tmp_path)
    location = parse_url(str(tmp_path / "S1.ome.zarr"))
    assert location is not None
    nodes = list(reader_mod.Reader(location)())
    image = nodes[0]
    assert image.metadata["name"] == "S1"
    assert image.metadata["channel_names"] == list(CHANNELS)
    windows = image.metadata["contrast_limits"]
    assert all(0 < lo < hi < 65535 for lo, hi in windows)
    label_nodes = [n for n in nodes if n.load(reader_mod.Label)]
    assert {n.metadata["name"] for n in label_nodes} == set(MASKS)


def test_ome_zarr_heatmap_in_stage_coordinates(scan_path: Path, tmp_path: Path) -> None:
    export_ome_zarr(scan_path, tmp_path)
    multiscale, levels, _ = _read_image(tmp_path / "S1_pct_axonal_area.ome.zarr")
    assert [a["name"] for a in multiscale["axes"]] == ["y", "x"]
    scale, shift = _transforms(multiscale["datasets"][0])
    maps = _heatmaps()
    assert scale == [maps.bin_um, maps.bin_um]
    assert shift == [maps.origin_um[1] + maps.bin_um / 2, maps.origin_um[0] + maps.bin_um / 2]
    np.testing.assert_array_equal(levels[0][...], maps.pct_axonal_area)
    assert not (tmp_path / "S2_pct_axonal_area.ome.zarr").exists()  # S2 has no analysis


# ------------------------------------------------- rotated and mirrored cameras

AP = 0.5  # µm per pixel
AH, AW = 40, 56  # not square: a transpose shows
ROT_1_5 = math.radians(1.5)
CAMERAS = {
    "identity": [[1.0, 0.0], [0.0, 1.0]],
    "rot90": [[0.0, -1.0], [1.0, 0.0]],
    "mirror": [[-1.0, 0.0], [0.0, 1.0]],
    "transpose": [[0.0, 1.0], [1.0, 0.0]],
    "rot180": [[-1.0, 0.0], [0.0, -1.0]],
    "rot1.5": [[math.cos(ROT_1_5), -math.sin(ROT_1_5)], [math.sin(ROT_1_5), math.cos(ROT_1_5)]],
    "rot-2_mirror": [[-math.cos(-0.035), -math.sin(-0.035)], [-math.sin(-0.035), math.cos(-0.035)]],
}
EXACT_CAMERAS = ("identity", "rot90", "mirror", "transpose", "rot180")
ORIGIN_UM = (3000.0, 1500.0)


def _world(x_um: np.ndarray, y_um: np.ndarray, channel: int) -> np.ndarray:
    """A stage image (counts): ramps tell every turn and mirror apart, the waves every shift."""
    dx, dy = x_um - ORIGIN_UM[0], y_um - ORIGIN_UM[1]
    waves = 300 * np.sin(2 * np.pi * dx / 31.0 + 0.3) * np.cos(2 * np.pi * dy / 23.0 + 1.1)
    return 1000 + 500 * channel + 9 * dx + 4 * dy + waves


def _camera(name: str) -> np.ndarray:
    return AP * np.array(CAMERAS[name])


def _rotated_centres(affine: np.ndarray) -> np.ndarray:
    """2 × 2 tiles spaced by 85 % of the stage rectangle one image covers, on whole pixels."""
    width, height = covered_extent_um(affine, (AW, AH))
    sx, sy = round(0.85 * width / AP) * AP, round(0.85 * height / AP) * AP
    return np.array([[ORIGIN_UM[0] + i * sx, ORIGIN_UM[1] + j * sy] for j in range(2) for i in range(2)])


def _rotated_tile(center: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """(C, 1, H, W) uint16: the world at each camera pixel's stage position."""
    r, c = np.mgrid[0:AH, 0:AW]
    x, y = pixel_to_stage_um(r, c, center_um=center, affine_um=affine, tile_shape=(AH, AW))
    return np.stack([np.rint(_world(x, y, ch)) for ch in range(2)]).astype(np.uint16)[:, None]


@functools.cache
def _rotated_scan(name: str, folder: str) -> Path:
    path = Path(folder) / f"{name}.h5"
    affine = _camera(name)
    centres = _rotated_centres(affine)
    layout = SectionLayout(
        "R", centres, CHANNELS, 1, (AH, AW), AP, covered_extent_um(affine, (AW, AH)), pixel_affine_um=affine
    )
    with ScanWriter.create(
        path, plan_yaml="name: t\n", sections=[layout], config_path="d.cfg", config_text="", core_state={}
    ) as writer:
        for t, centre in enumerate(centres):
            pixels = _rotated_tile(centre, affine)
            for c in range(len(CHANNELS)):
                writer.write_image("R", t, c, 0, pixels[c, 0])
            writer.complete_tile("R", t, z_um=0.0, meta={})
    return path


@pytest.fixture(scope="module")
def rotated_folder(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("rotated"))


@pytest.mark.parametrize(
    ("name", "placed_shape"),
    [("identity", (AH, AW)), ("rot90", (AW, AH)), ("mirror", (AH, AW)), ("transpose", (AW, AH))],
    ids=["identity", "rot90", "mirror", "transpose"],
)
def test_mosaic_geometry_turns_tiles_of_exact_cameras(name: str, placed_shape: tuple[int, int]) -> None:
    affine = _camera(name)
    centres = _rotated_centres(affine)
    geometry = mosaic_geometry(centres, (AH, AW), AP, affine_um=affine)
    assert not geometry.resampled and geometry.placed_shape_px == placed_shape
    # the turned tiles' stage extent, independent of the writer
    corners = np.concatenate([footprint_corners_um(c, affine, (AH, AW)) for c in centres])
    (x0, y0), (x1, y1) = corners.min(axis=0), corners.max(axis=0)
    assert geometry.origin_um == pytest.approx((x0 + AP / 2, y0 + AP / 2))
    assert geometry.shape_px == (round((y1 - y0) / AP), round((x1 - x0) / AP))


def test_mosaic_geometry_resamples_other_affines_and_an_inconsistent_pixel_size() -> None:
    affine = _camera("rot1.5")
    geometry = mosaic_geometry(_rotated_centres(affine), (AH, AW), AP, affine_um=affine)
    assert geometry.resampled and geometry.orientation is None
    # a 90° affine whose scale is not the mosaic's pixel cannot be a plain transpose
    assert mosaic_geometry(_rotated_centres(affine), (AH, AW), 0.4, affine_um=_camera("rot90")).resampled
    assert not mosaic_geometry(_rotated_centres(affine), (AH, AW), AP).resampled  # default: p·I


@pytest.mark.parametrize("name", list(CAMERAS))
def test_bdv_views_carry_the_pixel_affine(name: str, rotated_folder: str, tmp_path: Path) -> None:
    import npy2bdv

    affine = _camera(name)
    centres = _rotated_centres(affine)
    xml_path = export_bdv(_rotated_scan(name, rotated_folder), tmp_path)
    editor = npy2bdv.BdvEditor(str(xml_path), mode="r")
    try:
        r, c = np.mgrid[0:AH, 0:AW]
        pixel = np.stack([c.ravel(), r.ravel(), np.zeros(r.size), np.ones(r.size)])  # (x, y, z, 1)
        for t, centre in enumerate(centres):
            view = editor.read_view(channel=1, tile=t)
            np.testing.assert_array_equal(view, _rotated_tile(centre, affine)[1])  # as the camera took it
            m = editor.read_affine(channel=1, tile=t, index=0)  # applied after the calibration
            np.testing.assert_allclose(m[:2, :2], affine / AP, atol=1e-6)
            world_um = (m @ pixel)[:2] * AP  # BigStitcher's world is in calibrated pixels
            x, y = pixel_to_stage_um(r, c, center_um=centre, affine_um=affine, tile_shape=(AH, AW))
            np.testing.assert_allclose(world_um[0], x.ravel(), atol=1e-4)
            np.testing.assert_allclose(world_um[1], y.ravel(), atol=1e-4)
    finally:
        editor.finalize()


def _last_cover(x: np.ndarray, y: np.ndarray, centres: np.ndarray, affine: np.ndarray) -> tuple:
    """For pixel centres ``(x, y)`` (broadcast): in some tile's footprint; in the last such tile's
    pixel-centre hull (not in its outer half-pixel band, where the edge pixels repeat)."""
    shape = np.broadcast(x, y).shape
    inside, between = np.zeros(shape, dtype=bool), np.zeros(shape, dtype=bool)
    for centre in centres:  # later tiles over earlier ones
        rows, cols = stage_to_pixel(x, y, center_um=centre, affine_um=affine, tile_shape=(AH, AW))
        here = (rows >= -0.5) & (rows < AH - 0.5) & (cols >= -0.5) & (cols < AW - 0.5)
        core = (rows >= 0) & (rows <= AH - 1) & (cols >= 0) & (cols <= AW - 1)
        inside |= here
        between = np.where(here, core, between)
    return inside, between


@pytest.mark.parametrize("name", list(CAMERAS))
def test_ome_zarr_mosaic_of_a_turned_camera_is_the_stage_image(
    name: str, rotated_folder: str, tmp_path: Path
) -> None:
    import yaozarrs

    affine = _camera(name)
    (path,) = export_ome_zarr(_rotated_scan(name, rotated_folder), tmp_path)
    yaozarrs.validate_zarr_store(path)
    multiscale, levels, _ = _read_image(path)
    (_, sy, sx), (_, ty, tx) = _transforms(multiscale["datasets"][0])
    assert (sy, sx) == (AP, AP)  # stage-aligned: scale and translation say it all
    mosaic = levels[0][...]
    y = (ty + np.arange(mosaic.shape[1]) * AP)[:, None]
    x = (tx + np.arange(mosaic.shape[2]) * AP)[None, :]
    inside, between = _last_cover(x, y, _rotated_centres(affine), affine)
    # every pixel in some tile's footprint is imaged and no other: later tiles paint no zeros
    np.testing.assert_array_equal(mosaic[0] > 0, inside)
    for c in range(2):
        error = np.abs(mosaic[c].astype(float) - np.rint(_world(x, y, c)))
        if name in EXACT_CAMERAS:
            assert error[inside].max() == 0, f"{name} channel {c}"
        else:  # bilinear between pixel centres of a smooth image: within a few counts of ~2000
            assert error[between].max() <= 3 and error[between].mean() < 0.5
            assert error[inside].max() <= 25  # ≤ half a pixel of the steepest slope (~35 counts/px)
    meta = json.loads((path / "zarr.json").read_text())["attributes"]
    np.testing.assert_allclose(meta["cordscope"]["camera_pixel_affine_um"], affine)
    assert meta["cordscope"]["tiles_resampled"] is (name not in EXACT_CAMERAS)
    note = meta["ome"]["multiscales"][0]["metadata"]["orientation"]
    assert ("resampled" in note) is (name not in EXACT_CAMERAS)


def test_qupath_image_of_a_turned_camera_is_the_ome_zarr_mosaic(rotated_folder: str, tmp_path: Path) -> None:
    import tifffile

    from analysis.qupath import section_image_frame, write_section_ome_tiff

    scan = _rotated_scan("rot90", rotated_folder)
    (zarr_path,) = export_ome_zarr(scan, tmp_path / "zarr")
    with ScanFile.open(scan) as f:
        frame = write_section_ome_tiff(f.section("R"), tmp_path / "R.ome.tif")
        assert np.array_equal(frame.corner_um, section_image_frame(f.section("R")).corner_um)
    np.testing.assert_allclose(frame.affine_um, AP * np.eye(2))  # the image is stage-aligned
    multiscale, levels, _ = _read_image(zarr_path)
    _, (_, ty, tx) = _transforms(multiscale["datasets"][0])
    assert tuple(frame.corner_um) == pytest.approx((tx - AP / 2, ty - AP / 2))
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "R.ome.tif"), levels[0][...])


# ----------------------------------------------------------------------- CSV


def test_csv_has_the_numbers_labels_and_kinds_rounded(scan_path: Path, tmp_path: Path) -> None:
    out = export_csv(scan_path, tmp_path / "tables")
    assert out == tmp_path / "tables" / "slide.regions.csv"
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [
        "section_id", "animal", "group", "level", "region", "region_kind", "area_um2", "axon_area_um2",
        "pct_axonal_area", "mean_tracer_intensity_adu", "imaged_pct", "imaged_at_hires_pct",
    ]  # fmt: skip
    assert rows[0] == {
        "section_id": "S1",
        "animal": "rat01",
        "group": "vehicle",
        "level": "Th7",
        "region": "section",
        "region_kind": "automatic",
        "area_um2": "12000.0",  # 0.1 µm²
        "axon_area_um2": "600.0",
        "pct_axonal_area": "5.1235",  # 4 decimals
        "mean_tracer_intensity_adu": "321.51",  # 2 decimals, rounded
        "imaged_pct": "100.00",
        "imaged_at_hires_pct": "0.00",
    }
    assert rows[1]["mean_tracer_intensity_adu"] == "" and rows[1]["imaged_pct"] == "75.12"
    # the same text as the CSV written from the results the file holds
    saved = load_scan_results(scan_path)
    reference = write_region_csv(
        tmp_path / "reference.csv",
        {sid: s.analysis.table for sid, s in saved.items() if s.analysis},
        section_attrs={sid: s.attrs for sid, s in saved.items()},
    )
    assert out.read_text() == reference.read_text()


def test_csv_needs_an_analysis(tmp_path: Path) -> None:
    path = tmp_path / "raw.h5"
    layout = SectionLayout("S1", _grid(0.0, 0.0), CHANNELS, 1, (H, W), PIXEL_UM, (24.0, 16.0))
    ScanWriter.create(
        path, plan_yaml="name: t\n", sections=[layout], config_path="d.cfg", config_text="", core_state={}
    ).close()
    with pytest.raises(ExportError, match="no analysed section; run: cordscope analyze"):
        export_csv(path)
    with pytest.raises(ExportError, match="no done tile"):
        export_bdv(path, tmp_path / "bdv")


# ----------------------------------------------------------------------- CLI


def test_cli_export_every_format(scan_path: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cordscope.cli import app

    runner = CliRunner()
    for fmt, expected in (
        ("bdv", "slide.xml"),
        ("ome-zarr", "S2.ome.zarr"),
        ("csv", "slide.regions.csv"),
    ):
        result = runner.invoke(app, ["export", str(scan_path), "--format", fmt, "--out", str(tmp_path / fmt)])
        assert result.exit_code == 0, result.output
        assert (tmp_path / fmt / expected).exists() and f"wrote {tmp_path / fmt}" in result.output
    again = runner.invoke(app, ["export", str(scan_path), "--format", "bdv", "--out", str(tmp_path / "bdv")])
    assert again.exit_code == 2 and "--overwrite" in again.output
    bad = runner.invoke(app, ["export", str(scan_path), "--format", "tiff", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "unknown export format 'tiff'" in bad.output
    no_out = runner.invoke(app, ["export", str(scan_path), "--format", "ome-zarr"])
    assert no_out.exit_code == 2 and "--out DIR" in no_out.output
