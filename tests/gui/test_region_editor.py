"""Correcting regions in the Results tab: drag, draw, brush, reset, re-analyse, QuPath round trip.

The small analysed scan of ``tests/analysis/_region_scan.py`` (one section ``S1`` with geometric
regions and real per-cell sums) makes every expected table computable independently:
``region_table(rs.accumulator(), {region: mask})``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import shapely
from PyQt6.QtCore import QPointF, Qt
from PyQt6.QtWidgets import QFileDialog
from scipy import ndimage as ndi
from shapely import affinity
from shapely.geometry import mapping, shape

from analysis import exports
from analysis.maps import region_table
from analysis.region_edits import GridGeometry, rasterize_geometry_um
from analysis.results_format import read_analysis
from gui.region_editing import brush_cells
from gui.results_panel import ResultsPanel
from tests.analysis import _region_scan as rs

RST = "rubrospinal_territory"
PLAN_YAML = """name: regions test
hardware_config: hardware_configs/demo.cfg
output: scan.h5
objective: 10x
channels:
  - {preset: DAPI, exposure_ms: 20.0, role: anatomy}
  - {preset: tdTomato, exposure_ms: 50.0, role: tracer}
focus: {strategy: fixed, z_um: 0.0}
sections:
  - id: S1
    polygon_um: [[960.0, 1960.0], [1120.0, 1960.0], [1120.0, 2080.0], [960.0, 2080.0]]
    animal: rat01
    group: vehicle
    level: Th7
    injection_side: left
analysis: {register_tiles: false}
"""
GRID = GridGeometry(rs.GRID_ORIGIN_UM, rs.CELL_UM, rs.GRID_SHAPE)


@pytest.fixture(autouse=True)
def _user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("getpass.getuser", lambda: "anna")


@pytest.fixture
def scan(tmp_path: Path) -> Path:
    path = rs.make_scan(tmp_path / "scan.h5")
    with h5py.File(path, "r+") as f:  # the plan names the channels' roles, as a real scan's does
        del f["plan"]
        f.create_dataset("plan", data=PLAN_YAML, dtype=h5py.string_dtype())
    return path


def saved(path: Path):
    with h5py.File(path, "r") as f:
        return read_analysis(f[f"sections/{rs.SECTION}/analysis"])


def expected_row(region: str, mask: np.ndarray):
    return next(r for r in region_table(rs.accumulator(), {region: mask}) if r.region == region)


def open_panel(qtbot, path: Path) -> tuple[ResultsPanel, list[tuple[str, str]]]:
    panel = ResultsPanel()
    qtbot.addWidget(panel)
    panel.resize(1400, 850)
    panel.show()
    messages: list[tuple[str, str]] = []
    panel.message.connect(lambda level, text: messages.append((level, text)))
    with qtbot.waitSignal(panel.section_shown, timeout=30_000):
        panel.open_scan(path)
    qtbot.waitUntil(lambda: panel.display.editable is not None, timeout=10_000)
    return panel, messages


def select_region(panel: ResultsPanel, region: str) -> None:
    table = panel.display.table
    table.selectRow(table.regions().index(region))


def reanalyse(qtbot, panel: ResultsPanel) -> None:
    with qtbot.waitSignal(panel.display.regions_written, timeout=30_000):
        qtbot.mouseClick(panel.display.reanalyse_button, Qt.MouseButton.LeftButton)


def kind_cell(panel: ResultsPanel, region: str) -> str:
    return panel.display.table.cell_text(region, "Kind")


def test_selecting_a_region_shows_its_outline_with_draggable_vertices(qtbot, scan: Path) -> None:
    panel, _ = open_panel(qtbot, scan)
    editor = panel.display
    assert not editor.draw_button.isEnabled() and not editor.reanalyse_button.isEnabled()
    assert all(kind_cell(panel, r) == "automatic" for r in editor.table.regions())
    select_region(panel, RST)
    items = editor.outline_items()
    assert len(items) == 1 and items[0].handles_shown and len(items[0].handles) >= 4
    # the outline is the territory's cells, simplified by at most two cells
    ring = shapely.Polygon(items[0].vertices_um())
    mask = rs.automatic_masks()[RST]
    off = rasterize_geometry_um(mapping(ring), grid=GRID) ^ mask
    near_edge = ndi.binary_dilation(mask ^ ndi.binary_erosion(mask), iterations=2)
    assert not (off & ~near_edge).any()
    assert editor.draw_button.isEnabled() and editor.brush_button.isEnabled()
    assert not editor.reset_button.isEnabled()  # nothing to reset yet
    # every region's outline can be shown
    editor.all_outlines_toggle.setChecked(True)
    shown = {i.data(0) for i in editor.view.outline_items if i.isVisible()}
    assert shown == set(rs.automatic_masks())


def test_dragging_vertices_and_reanalysing_writes_an_edited_region(qtbot, scan: Path) -> None:
    panel, messages = open_panel(qtbot, scan)
    editor = panel.display
    select_region(panel, RST)
    before = float(editor.table.cell_text(RST, "% axonal area"))
    item = editor.outline_items()[0]
    shown = shapely.Polygon(item.vertices_um())
    for handle in list(item.handles):  # drag every vertex 9 µm toward the midline (what the mouse does)
        handle.setPos(handle.pos() + QPointF(-9.0, 0.0))
    assert kind_cell(panel, RST) == "edited (not saved)"
    assert editor.reanalyse_button.isEnabled() and "Not saved" in editor.edit_hint.text()
    moved = shapely.Polygon(item.vertices_um())
    reanalyse(qtbot, panel)
    stored = saved(scan)
    record = stored.regions[RST]
    assert (record.kind, record.who, record.source) == ("edited", "anna", "gui")
    # the cells the outline left go, the cells it reached come in, every other cell stays as it was
    old_in, new_in = (rasterize_geometry_um(mapping(g), grid=GRID) for g in (shown, moved))
    automatic = rs.automatic_masks()[RST]
    expected = ((automatic & ~(old_in & ~new_in)) | (new_in & ~old_in)) & rs.automatic_masks()["section"]
    np.testing.assert_array_equal(stored.masks[RST], expected)
    row = {r.region: r for r in stored.table}[RST]
    truth = expected_row(RST, expected)
    assert row.kind == "edited" and row.pct_axonal_area == truth.pct_axonal_area
    # the table on screen follows, and says what kind the region is
    assert kind_cell(panel, RST) == "edited"
    assert editor.table.cell_text(RST, "% axonal area") == f"{truth.pct_axonal_area:.3f}" != f"{before:.3f}"
    assert panel.section_table.item(0, 9).text() == "rubrospinal territory (edited)"
    assert any(level == "info" and "rubrospinal territory edited" in t for level, t in messages)
    # the other regions were not touched
    assert all(stored.regions[r].kind == "automatic" for r in stored.masks if r != RST)


def test_dragging_one_vertex_changes_only_the_cells_it_sweeps(qtbot, scan: Path) -> None:
    panel, _ = open_panel(qtbot, scan)
    editor = panel.display
    select_region(panel, "section")
    (ring,) = editor.outline_items()
    shown = shapely.Polygon(ring.vertices_um())
    # the simplified outline does not follow every cell of the section's staircase
    assert not np.array_equal(
        rasterize_geometry_um(mapping(shown), grid=GRID), rs.automatic_masks()["section"]
    )
    handle = max(ring.handles, key=lambda h: h.pos().x())  # the lateral-most vertex, pulled 12 µm out
    handle.setPos(handle.pos() + QPointF(12.0, 0.0))
    ring.drag_finished()  # the mouse lets go
    moved = shapely.Polygon(ring.vertices_um())
    reanalyse(qtbot, panel)
    changed = saved(scan).masks["section"] ^ rs.automatic_masks()["section"]
    swept = rasterize_geometry_um(mapping(shown), grid=GRID) ^ rasterize_geometry_um(
        mapping(moved), grid=GRID
    )
    assert changed.any() and not (changed & ~swept).any()


def test_drawing_a_replacement_outline_with_the_mouse(qtbot, scan: Path) -> None:
    panel, _ = open_panel(qtbot, scan)
    editor, view = panel.display, panel.display.view
    select_region(panel, RST)
    qtbot.mouseClick(editor.draw_button, Qt.MouseButton.LeftButton)
    assert view.drawing
    corners = [(1060.0, 1995.0), (1085.0, 1995.0), (1085.0, 2015.0), (1060.0, 2015.0)]
    for x, y in corners:
        qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=view.mapFromScene(QPointF(x, y)))
    qtbot.keyClick(view, Qt.Key.Key_Return)
    assert not view.drawing and not editor.draw_button.isChecked()
    assert kind_cell(panel, RST) == "drawn (not saved)"
    drawn = shapely.Polygon(editor.outline_items()[0].vertices_um())
    np.testing.assert_allclose(drawn.bounds, (1060.0, 1995.0, 1085.0, 2015.0), atol=2.0)  # a screen px
    reanalyse(qtbot, panel)
    stored = saved(scan)
    assert stored.regions[RST].kind == "drawn"
    expected = rasterize_geometry_um(mapping(drawn), grid=GRID) & rs.automatic_masks()["section"]
    np.testing.assert_array_equal(stored.masks[RST], expected)
    assert kind_cell(panel, RST) == "drawn"


def _mouse(view, kind: str, scene_xy: tuple[float, float], buttons: Any) -> None:
    from PyQt6.QtCore import QEvent
    from PyQt6.QtGui import QMouseEvent
    from PyQt6.QtWidgets import QApplication

    viewport = view.viewport()
    pos = QPointF(view.mapFromScene(QPointF(*scene_xy)))
    types = {"press": QEvent.Type.MouseButtonPress, "move": QEvent.Type.MouseMove}
    types["release"] = QEvent.Type.MouseButtonRelease
    button = Qt.MouseButton.NoButton if kind == "move" else Qt.MouseButton.LeftButton
    event = QMouseEvent(
        types[kind], pos, QPointF(viewport.mapToGlobal(pos)), button, buttons, Qt.KeyboardModifier.NoModifier
    )
    QApplication.sendEvent(viewport, event)


def test_the_brush_paints_a_solid_stroke_into_the_region(qtbot, scan: Path) -> None:
    panel, _ = open_panel(qtbot, scan)
    editor, view = panel.display, panel.display.view
    select_region(panel, "gray_matter")
    editor.brush_radius.setValue(4.0)
    qtbot.mouseClick(editor.brush_button, Qt.MouseButton.LeftButton)
    assert view.brushing
    held = Qt.MouseButton.LeftButton
    start, end = (1010.0, 2030.0), (1070.0, 2000.0)  # one fast move: 67 µm at once
    _mouse(view, "press", start, held)
    _mouse(view, "move", end, held)
    _mouse(view, "release", end, Qt.MouseButton.NoButton)
    assert kind_cell(panel, "gray_matter") == "edited (not saved)"
    a, b = (
        view.mapToScene(view.mapFromScene(QPointF(*start))),
        view.mapToScene(view.mapFromScene(QPointF(*end))),
    )
    stroke = brush_cells(GRID, (a.x(), a.y()), (b.x(), b.y()), 4.0)
    assert stroke.sum() > 30
    reanalyse(qtbot, panel)
    stored = saved(scan)
    section = rs.automatic_masks()["section"]
    expected = (rs.automatic_masks()["gray_matter"] | stroke) & section
    np.testing.assert_array_equal(stored.masks["gray_matter"], expected)
    assert (
        stored.regions["gray_matter"].kind == "edited" and stored.regions["gray_matter"].geometry_um is None
    )
    # white matter follows the painted gray matter
    np.testing.assert_array_equal(stored.masks["white_matter"], section & ~expected)
    assert stored.regions["white_matter"].kind == "automatic"


def test_reset_brings_back_the_automatic_region(qtbot, scan: Path) -> None:
    panel, _ = open_panel(qtbot, scan)
    editor = panel.display
    select_region(panel, RST)
    editor.set_outline(RST, mapping(shapely.box(1050.0, 1990.0, 1080.0, 2020.0)))
    reanalyse(qtbot, panel)
    assert saved(scan).regions[RST].kind == "edited"
    select_region(panel, RST)
    assert editor.reset_button.isEnabled()
    qtbot.mouseClick(editor.reset_button, Qt.MouseButton.LeftButton)
    assert kind_cell(panel, RST) == "automatic (not saved)"
    reanalyse(qtbot, panel)
    stored = saved(scan)
    assert stored.regions[RST].kind == "automatic"
    np.testing.assert_array_equal(stored.masks[RST], rs.automatic_masks()[RST])
    assert [h["action"] for h in stored.region_history] == ["set", "reset"]


def test_unsaved_changes_survive_switching_sections_and_can_be_discarded(qtbot, scan: Path) -> None:
    panel, messages = open_panel(qtbot, scan)
    editor = panel.display
    select_region(panel, RST)
    editor.set_outline(RST, mapping(shapely.box(1050.0, 1990.0, 1080.0, 2020.0)))
    # exports and imports wait for the change to be saved or dropped
    assert panel.export_qupath(scan.parent / "out") is None
    assert any("changed but not saved" in t for _, t in messages)
    select_region(panel, "section")
    assert kind_cell(panel, RST) == "edited (not saved)"
    qtbot.mouseClick(editor.discard_button, Qt.MouseButton.LeftButton)
    assert kind_cell(panel, RST) == "automatic" and not editor.reanalyse_button.isEnabled()
    assert saved(scan).regions[RST].kind == "automatic"


def test_qupath_export_edit_and_import_from_the_panel(qtbot, scan: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(exports, "ZARR_CHUNK_PX", 64)  # a pyramid even for this small mosaic
    panel, messages = open_panel(qtbot, scan)
    folder = tmp_path / "qupath"
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", staticmethod(lambda *a, **k: str(folder)))
    qtbot.mouseClick(panel.export_qupath_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: any("QuPath export: 2 files" in t for _, t in messages), timeout=30_000)
    assert sorted(p.name for p in folder.iterdir()) == ["S1.geojson", "S1.ome.tif"]
    # in QuPath: the territory's annotation dragged 6 px, exported as <image>.geojson
    collection = json.loads((folder / "S1.geojson").read_text())
    for feature in collection["features"]:
        if feature["properties"]["classification"]["name"] == RST:
            feature["geometry"] = mapping(affinity.translate(shape(feature["geometry"]), xoff=-6.0))
    edited = folder / "S1.ome.tif.geojson"
    edited.write_text(json.dumps(collection))
    monkeypatch.setattr(QFileDialog, "getOpenFileName", staticmethod(lambda *a, **k: (str(edited), "")))
    with qtbot.waitSignal(panel.regions_imported, timeout=30_000):
        qtbot.mouseClick(panel.import_geojson_button, Qt.MouseButton.LeftButton)
    stored = saved(scan)
    assert stored.regions[RST].kind == "imported" and stored.regions[RST].source == "S1.ome.tif.geojson"
    assert all(stored.regions[r].kind == "automatic" for r in stored.masks if r != RST)
    qtbot.waitUntil(lambda: kind_cell(panel, RST) == "imported", timeout=10_000)
    assert [kind_cell(panel, r) for r in panel.display.table.regions() if r != RST] == ["automatic"] * 7
    assert any("rubrospinal territory imported" in t and "7 unchanged" in t for _, t in messages)
    assert panel.section_table.item(0, 9).text() == "rubrospinal territory (imported)"


def test_analysing_the_file_again_keeps_the_regions_corrected_by_hand(qtbot, scan: Path) -> None:
    panel, messages = open_panel(qtbot, scan)
    editor = panel.display
    select_region(panel, RST)
    box = shapely.box(1050.0, 1990.0, 1080.0, 2020.0)
    editor.set_outline(RST, mapping(box))
    reanalyse(qtbot, panel)
    with qtbot.waitSignal(panel.scan_loaded, timeout=120_000):
        qtbot.mouseClick(panel.analyse_button, Qt.MouseButton.LeftButton)
    stored = saved(scan)
    record = stored.regions[RST]
    assert (record.kind, record.who, record.source) == ("edited", "anna", "gui")
    grid = GridGeometry(stored.mask_origin_um, stored.mask_cell_um, stored.masks[RST].shape)
    expected = rasterize_geometry_um(mapping(box), grid=grid) & stored.masks["section"]
    np.testing.assert_array_equal(stored.masks[RST], expected)
    assert any("1 regions corrected by hand applied again" in t for _, t in messages)
