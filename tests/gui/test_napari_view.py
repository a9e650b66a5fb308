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
