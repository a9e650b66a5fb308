"""Issue 14's "done when", from the GUI alone, on a real demo scan.

Open the scan of rat01-Th7 in the Results tab, move the rubrospinal territory's
boundary, see the table change within seconds, export to QuPath, edit the
annotations as QuPath would, import them back, check the kinds in the table and
in the file, and make the study report of that file name the regions edited.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import shapely
from PyQt6.QtCore import QPointF, Qt
from PyQt6.QtWidgets import QFileDialog
from shapely.geometry import mapping, shape

from analysis.maps import region_table
from analysis.results_format import read_analysis
from gui.results_panel import ResultsPanel

pytestmark = pytest.mark.slow

TH7, RST, GRAY = "rat01-Th7", "rubrospinal_territory", "gray_matter"
#: The territory's medial boundary is moved this far toward the cord's centre.
MOVE_UM = 40.0


def _saved(path: Path):
    with h5py.File(path, "r") as f:
        return read_analysis(f[f"sections/{TH7}/analysis"])


def test_correct_regions_share_them_with_qupath_and_report_them(
    qtbot, th7_live_scan, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("getpass.getuser", lambda: "anna")
    path = tmp_path / "th7.h5"
    path.write_bytes(th7_live_scan.path.read_bytes())
    panel = ResultsPanel()
    qtbot.addWidget(panel)
    panel.resize(1500, 900)
    panel.show()
    messages: list[tuple[str, str]] = []
    panel.message.connect(lambda level, text: messages.append((level, text)))
    with qtbot.waitSignal(panel.section_shown, timeout=60_000):
        panel.open_scan(path)
    editor = panel.display
    qtbot.waitUntil(lambda: editor.editable is not None, timeout=30_000)

    # 1. select the territory and drag its medial vertices 40 µm toward the cord's centre
    table = editor.table
    table.selectRow(table.regions().index(RST))
    before = table.cell_text(RST, "% axonal area")
    section = _saved(path).masks["section"]
    grid = editor.editable.grid
    rows, cols = np.nonzero(section)
    centre = grid.origin_um + (np.array([cols.mean(), rows.mean()]) + 0.5) * grid.cell_um
    (ring,) = editor.outline_items()
    points = np.array(ring.vertices_um())
    distance = np.hypot(*(points - centre).T)
    medial = distance < np.median(distance)
    for handle, inner, (x, y), d in zip(ring.handles, medial, points, distance, strict=True):
        if inner:
            step = (centre - (x, y)) / d * MOVE_UM
            handle.setPos(handle.pos() + QPointF(*step))
    assert table.cell_text(RST, "Kind") == "edited (not saved)"

    # 2. re-analyse: the table changes within seconds and the file holds the edit with who/when
    t0 = time.perf_counter()
    with qtbot.waitSignal(editor.regions_written, timeout=60_000):
        qtbot.mouseClick(editor.reanalyse_button, Qt.MouseButton.LeftButton)
    elapsed_s = time.perf_counter() - t0
    print(f"re-analyse from the click to the new table on screen: {elapsed_s:.2f} s")
    assert elapsed_s < 15.0
    after = table.cell_text(RST, "% axonal area")
    assert after != before and table.cell_text(RST, "Kind") == "edited"
    stored = _saved(path)
    record = stored.regions[RST]
    assert (record.kind, record.who, record.source) == ("edited", "anna", "gui") and record.when_iso
    row = {r.region: r for r in stored.table}[RST]
    assert after == f"{row.pct_axonal_area:.3f}"
    independent = {r.region: r for r in region_table(stored.sums.accumulator(), {RST: stored.masks[RST]})}
    assert row.pct_axonal_area == independent[RST].pct_axonal_area
    grown = stored.masks[RST] & ~_saved(th7_live_scan.path).masks[RST]
    assert grown.sum() > 50  # the territory took in white matter on its medial side

    # 3. export to QuPath into a folder the user picks
    folder = tmp_path / "qupath"
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", staticmethod(lambda *a, **k: str(folder)))
    qtbot.mouseClick(panel.export_qupath_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: any("QuPath export: 2 files" in t for _, t in messages), timeout=120_000)
    assert sorted(p.name for p in folder.iterdir()) == [f"{TH7}.geojson", f"{TH7}.ome.tif"]

    # 4. in QuPath: the gray matter annotation trimmed by 3 px all round, exported as <image>.geojson
    collection = json.loads((folder / f"{TH7}.geojson").read_text())
    (feature,) = [f for f in collection["features"] if f["properties"]["classification"]["name"] == GRAY]
    trimmed = shapely.buffer(shape(feature["geometry"]), -3.0)
    feature["geometry"] = mapping(trimmed)
    edited = folder / f"{TH7}.ome.tif.geojson"
    edited.write_text(json.dumps(collection))

    # 5. import it back from the panel
    monkeypatch.setattr(QFileDialog, "getOpenFileName", staticmethod(lambda *a, **k: (str(edited), "")))
    with qtbot.waitSignal(panel.regions_imported, timeout=60_000):
        qtbot.mouseClick(panel.import_geojson_button, Qt.MouseButton.LeftButton)
    stored = _saved(path)
    kinds = {name: rec.kind for name, rec in stored.regions.items()}
    assert kinds.pop(RST) == "edited" and kinds.pop(GRAY) == "imported"
    assert set(kinds.values()) == {"automatic"}
    assert stored.regions[GRAY].source == edited.name
    qtbot.waitUntil(lambda: table.cell_text(GRAY, "Kind") == "imported", timeout=30_000)
    shown = {r: table.cell_text(r, "Kind") for r in table.regions()}
    assert shown == {r.region: r.kind for r in stored.table}
    assert panel.section_table.item(0, 9).text() == "gray matter (imported), rubrospinal territory (edited)"

    # 6. the study report of that file says which regions were corrected, by whom and how
    from cordscope.study_cli import run_study

    out = run_study([path], tmp_path / "study")
    report = out.report_html.read_text(encoding="utf-8")
    assert "Regions corrected by hand (2 in 1 section(s))" in report
    for region, kind in ((RST, "edited"), (GRAY, "imported")):
        assert f"(<code>{region}</code>)</td><td>{kind}</td><td>anna</td>" in report
    note = (
        "Regions corrected by hand at Th7: rat01 Gray matter (imported), "
        "rat01 Rubrospinal territory (edited)."
    )
    assert note in report
