"""``cordscope view``: the scan's layers in stage coordinates; napari optional."""

from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from acquisition.storage import ScanWriter, SectionLayout
from analysis.maps import Heatmaps, RegionRow
from analysis.results_format import write_analysis
from gui.napari_view import NAPARI_MISSING, PREVIEW_PIXEL_UM, scan_layers

P = 0.65
H = W = 64
CHANNELS = ("DAPI", "tdTomato")
MOSAIC_ORIGIN = (990.0, 1980.0)  # top-left corner of the analysis mosaic, stage µm
MOSAIC_PIXEL = 5.2
HEAT_ORIGIN, BIN = (1000.0, 2000.0), 50.0


@pytest.fixture(scope="module")
def scan_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("view") / "scan.h5"
    xy = np.array([[1000.0, 2000.0], [1000.0 + (W - 4) * P, 2000.0]])
    layouts = [
        SectionLayout(sid, xy + np.array([i * 3000.0, 0.0]), CHANNELS, 1, (H, W), P, (W * P, H * P))
        for i, sid in enumerate(("A1", "B2"))
    ]
    with ScanWriter.create(
        path, plan_yaml="name: t\n", sections=layouts, config_path="d.cfg", config_text="", core_state={}
    ) as writer:
        for sid in ("A1", "B2"):
            for t in range(2):
                for c in range(2):
                    writer.write_image(sid, t, c, 0, np.full((H, W), 100 * (t + 1) + c, np.uint16))
                writer.complete_tile(sid, t, z_um=0.0, meta={})
    pct = np.array([[1.0, 2.0], [np.nan, 8.0]], dtype=np.float32)
    maps = Heatmaps(pct, pct, np.ones_like(pct), np.array(HEAT_ORIGIN), BIN, 5)
    with h5py.File(path, "r+") as f:
        write_analysis(
            f["sections/A1/analysis"],
            maps=maps,
            masks={},
            table=[RegionRow("section", 1.0, 0.1, 10.0, 5.0, 1.0)],
            parameters={},
            mosaic=np.arange(2 * 10 * 20, dtype=np.float32).reshape(2, 10, 20),
            mosaic_origin_um=MOSAIC_ORIGIN,
            mosaic_pixel_um=MOSAIC_PIXEL,
            channel_names=CHANNELS,
        )
    return path


def test_layers_are_placed_in_stage_micrometres(scan_path: Path) -> None:
    layers = {spec.name: spec for spec in scan_layers(scan_path)}
    assert list(layers) == ["A1 DAPI", "A1 tdTomato", "A1 % axonal area", "B2 DAPI", "B2 tdTomato"]
    # A1: the analysis mosaic; translate = centre of pixel (0, 0) as (y, x)
    dapi = layers["A1 DAPI"]
    assert dapi.data.shape == (10, 20) and dapi.scale_um == (MOSAIC_PIXEL, MOSAIC_PIXEL)
    assert dapi.translate_um == pytest.approx((MOSAIC_ORIGIN[1] + 2.6, MOSAIC_ORIGIN[0] + 2.6))
    assert dapi.options["colormap"] == "blue" and layers["A1 tdTomato"].options["colormap"] == "red"
    heat = layers["A1 % axonal area"]
    assert heat.scale_um == (BIN, BIN) and heat.translate_um == (HEAT_ORIGIN[1] + 25, HEAT_ORIGIN[0] + 25)
    assert heat.options["contrast_limits"] == (0.0, 8.0)
    # B2 (not analysed): a preview mosaic built from its tiles
    preview = layers["B2 tdTomato"]
    f = round(PREVIEW_PIXEL_UM / P)
    assert preview.scale_um == pytest.approx((P * f, P * f))
    left_px_centre = 4000.0 - W / 2 * P + P / 2
    assert preview.translate_um[1] == pytest.approx(left_px_centre + (f - 1) / 2 * P)
    assert preview.data.shape[1] == (W - 4) // f + W // f
    assert preview.data[0, 0] == 101 and preview.data[0, -1] == 201  # tile 0, then tile 1 further right


def test_tiles_at_full_resolution(scan_path: Path) -> None:
    tiles = [s for s in scan_layers(scan_path, tiles=True) if "/" in s.name]
    assert [t.name for t in tiles[:2]] == ["A1/0000 DAPI", "A1/0000 tdTomato"] and len(tiles) == 8
    t1 = next(t for t in tiles if t.name == "B2/0001 DAPI")
    assert t1.scale_um == (P, P) and (t1.data == 200).all()
    assert t1.translate_um == pytest.approx(
        (2000.0 - (W / 2 - 0.5) * P, 4000.0 + (W - 4) * P - (W / 2 - 0.5) * P)
    )
    assert t1.options["visible"] is False


def test_view_without_napari_says_how_to_install(scan_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cordscope.cli import app

    monkeypatch.setitem(sys.modules, "napari", None)  # import napari → ImportError
    result = CliRunner().invoke(app, ["view", str(scan_path)])
    assert result.exit_code == 2
    assert NAPARI_MISSING in result.output.replace("\n", "")
    # the pip of the Python running CordScope: installs into this environment from any folder
    assert f"{sys.executable} -m pip install 'napari>=0.6'" in NAPARI_MISSING


# napari and its dependencies warn about their own deprecations on import; not ours to fix here
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::PendingDeprecationWarning")
def test_layers_load_headless_in_napari(scan_path: Path) -> None:
    pytest.importorskip("napari")
    from napari.components import ViewerModel  # the viewer without a window (no OpenGL needed)

    from gui.napari_view import add_scan_layers

    viewer = ViewerModel()
    layers = add_scan_layers(viewer, scan_path, tiles=True)
    assert [layer.name for layer in viewer.layers] == [layer.name for layer in layers]
    assert len(layers) == 5 + 8 and viewer.scale_bar.visible
    heat = viewer.layers["A1 % axonal area"]
    np.testing.assert_allclose(heat.scale, (BIN, BIN))
    np.testing.assert_allclose(heat.translate, (HEAT_ORIGIN[1] + 25, HEAT_ORIGIN[0] + 25))
    tile = viewer.layers["A1/0000 DAPI"]
    np.testing.assert_allclose(tile.scale, (P, P))
    assert [str(u) for u in tile.units] == ["micrometer", "micrometer"]
    # the tile's centre lands at its stage position (y, x) in world coordinates
    world = np.asarray(tile.data_to_world((H / 2 - 0.5, W / 2 - 0.5)))
    np.testing.assert_allclose(world, (2000.0, 1000.0))
    # and the analysis mosaic covers it
    mosaic = viewer.layers["A1 DAPI"]
    row, col = np.asarray(mosaic.world_to_data((2000.0, 1000.0)))
    assert 0 <= row < 10 and 0 <= col < 20


# ------------------------------------------------- rotated and mirrored cameras

TH, TW = 40, 56  # not square: a transpose shows
T_P = 0.5
_ROT = np.radians(1.5)
CAMERAS = {
    "identity": [[1.0, 0.0], [0.0, 1.0]],
    "rot90": [[0.0, -1.0], [1.0, 0.0]],
    "mirror": [[-1.0, 0.0], [0.0, 1.0]],
    "transpose": [[0.0, 1.0], [1.0, 0.0]],
    "rot1.5": [[np.cos(_ROT), -np.sin(_ROT)], [np.sin(_ROT), np.cos(_ROT)]],
}


def _ramp(x_um: np.ndarray, y_um: np.ndarray) -> np.ndarray:
    """A stage image whose x and y slopes differ: a turned or mirrored placement shows."""
    return 1000.0 + 2.0 * (x_um - 3000.0) + 1.0 * (y_um - 1500.0)


def _turned_scan(folder: Path, name: str) -> tuple[Path, np.ndarray, np.ndarray]:
    from acquisition.pixel_geometry import covered_extent_um, pixel_to_stage_um

    affine = T_P * np.array(CAMERAS[name])
    width, height = covered_extent_um(affine, (TW, TH))
    # steps of whole preview pixels (the preview snaps tiles to its own grid)
    step = PREVIEW_PIXEL_UM * np.floor(0.85 * np.array([width, height]) / PREVIEW_PIXEL_UM)
    centres = np.array([[3000.0 + i * step[0], 1500.0 + j * step[1]] for j in range(2) for i in range(2)])
    path = folder / f"{name}.h5"
    layout = SectionLayout("R", centres, CHANNELS, 1, (TH, TW), T_P, (width, height), pixel_affine_um=affine)
    with ScanWriter.create(
        path, plan_yaml="name: t\n", sections=[layout], config_path="d.cfg", config_text="", core_state={}
    ) as writer:
        r, c = np.mgrid[0:TH, 0:TW]
        for t, centre in enumerate(centres):
            x, y = pixel_to_stage_um(r, c, center_um=centre, affine_um=affine, tile_shape=(TH, TW))
            for ch in range(2):
                writer.write_image("R", t, ch, 0, np.rint(_ramp(x, y) + 100 * ch).astype(np.uint16))
            writer.complete_tile("R", t, z_um=0.0, meta={})
    return path, affine, centres


@pytest.mark.parametrize("name", list(CAMERAS))
def test_tiles_of_a_turned_camera_are_placed_by_the_pixel_affine(name: str, tmp_path: Path) -> None:
    from acquisition.pixel_geometry import pixel_to_stage_um

    path, affine, centres = _turned_scan(tmp_path, name)
    tiles = [s for s in scan_layers(path, tiles=True) if "/" in s.name and s.name.endswith("DAPI")]
    assert len(tiles) == 4
    r, c = np.mgrid[0:TH, 0:TW]
    for t, spec in enumerate(tiles):
        assert spec.data.shape == (TH, TW) and spec.scale_um == (T_P, T_P)  # as the camera took it
        assert (spec.affine is None) is (name == "identity")  # identity cameras: as before
        x, y = spec.pixel_to_stage_um(r, c)
        ex, ey = pixel_to_stage_um(r, c, center_um=centres[t], affine_um=affine, tile_shape=(TH, TW))
        np.testing.assert_allclose(x, ex, atol=1e-9)
        np.testing.assert_allclose(y, ey, atol=1e-9)
        np.testing.assert_allclose(spec.data, np.rint(_ramp(ex, ey)), atol=0.5)


@pytest.mark.parametrize("name", list(CAMERAS))
def test_preview_mosaic_of_a_turned_camera_is_stage_aligned(name: str, tmp_path: Path) -> None:
    path, _, _ = _turned_scan(tmp_path, name)
    preview = next(s for s in scan_layers(path) if s.name == "R DAPI")
    assert preview.affine is None  # mosaics are stage-aligned
    rows, cols = np.nonzero(np.isfinite(preview.data))
    assert rows.size > 0.5 * preview.data.size
    x, y = preview.pixel_to_stage_um(rows, cols)
    error = np.abs(preview.data[rows, cols] - _ramp(x, y))
    # block means of a ramp are its value at the block centre; a turned or mirrored
    # placement would be off by tens of counts (2 counts/µm along x, 1 along y, ~30 µm tiles)
    assert np.median(error) <= 0.6 and error.max() <= 6.0, (np.median(error), error.max())


# napari and its dependencies warn about their own deprecations on import; not ours to fix here
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::PendingDeprecationWarning")
@pytest.mark.parametrize("name", ["rot90", "mirror", "rot1.5"])
def test_turned_tiles_land_at_their_stage_positions_in_napari(name: str, tmp_path: Path) -> None:
    pytest.importorskip("napari")
    from napari.components import ViewerModel

    from acquisition.pixel_geometry import pixel_to_stage_um
    from gui.napari_view import add_scan_layers

    path, affine, centres = _turned_scan(tmp_path, name)
    viewer = ViewerModel()
    add_scan_layers(viewer, path, tiles=True)
    for t, centre in enumerate(centres):
        layer = viewer.layers[f"R/{t:04d} DAPI"]
        for r, c in ((0, 0), (0, TW - 1), (TH - 1, 0), (TH / 2 - 0.5, TW / 2 - 0.5), (7, 31)):
            x, y = pixel_to_stage_um(r, c, center_um=centre, affine_um=affine, tile_shape=(TH, TW))
            np.testing.assert_allclose(np.asarray(layer.data_to_world((r, c))), (y, x), atol=1e-6)
