"""The results panel: open saved scan files, browse sections, export CSV / PNG / plan YAML."""

from __future__ import annotations

import csv
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PyQt6.QtCore import Qt
from PyQt6.QtWidgets import QFileDialog

from acquisition.demo.plans import demo_plan
from acquisition.plan import load_plan
from acquisition.session import ScanSession
from analysis.live import AnalysisProcess
from gui.results_panel import ResultsPanel
from tests.conftest import make_demo_core

pytestmark = pytest.mark.slow  # scans and analyses a section first

SECTIONS = ("rat01-Th7", "rat03-L2")


def _plan(path: Path):
    return demo_plan(
        output=path,
        section_ids=SECTIONS,
        focus={"strategy": "fixed", "z_um": 0.0},
        analysis={"register_tiles": False},
    )


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> Iterator[dict[str, Path]]:
    """A finished, analysed two-section scan and one aborted before any analysis was written."""
    folder = tmp_path_factory.mktemp("scans")
    core = make_demo_core(sensor_px=512)
    try:
        done = folder / "done.h5"
        assert ScanSession(core, _plan(done), analysis=AnalysisProcess).run().complete
        partial = folder / "partial.h5"
        session = ScanSession(core, _plan(partial))
        enough = threading.Event()
        session.events.tile_stored.connect(lambda stored: enough.set() if stored.tile_index >= 40 else None)
        session.start()
        assert enough.wait(60)
        session.abort("test")
        assert session.wait(60).scan.state == "aborted"
    finally:
        core.close()
    yield {"done": done, "partial": partial}


def open_panel(qtbot, path: Path) -> tuple[ResultsPanel, list[tuple[str, str]]]:
    panel = ResultsPanel()
    qtbot.addWidget(panel)
    panel.resize(1300, 800)
    panel.show()
    messages: list[tuple[str, str]] = []
    panel.message.connect(lambda level, text: messages.append((level, text)))
    with qtbot.waitSignal(panel.section_shown, timeout=30_000):
        panel.open_scan(path)
    return panel, messages


def test_open_shows_sections_mosaic_heatmap_and_region_table(qtbot, scans):
    panel, messages = open_panel(qtbot, scans["done"])
    assert panel.section_ids() == list(SECTIONS)
    table = panel.section_table
    cells = [[table.item(r, c).text() for c in range(table.columnCount())] for r in range(table.rowCount())]
    assert cells[0][:5] == ["rat01-Th7", "rat01", "intact", "Th7", "coronal"]
    assert cells[0][5] == "60 / 60" and cells[0][6] == "yes"
    assert cells[1][:4] == ["rat03-L2", "rat03", "vehicle", "L2"]
    assert "done.h5" in panel.file_label.text() and "142 of 142 tiles" in panel.file_label.text()
    picture = panel.display.picture
    assert picture is not None and picture.section_id == "rat01-Th7" and picture.heat_rgba is not None
    assert "rubrospinal_territory" in panel.display.table.regions()
    saved = panel.scan.sections["rat01-Th7"].analysis  # type: ignore[union-attr]
    rst = next(r for r in saved.table if r.region == "rubrospinal_territory")
    shown = panel.display.table.cell_text("rubrospinal_territory", "% axonal area")
    assert shown == f"{rst.pct_axonal_area:.3f}" == cells[0][8]  # also in the section list
    whole = next(r for r in saved.table if r.region == "section")
    assert cells[0][7] == f"{whole.pct_axonal_area:.3f}"
    # another section
    with qtbot.waitSignal(panel.section_shown, timeout=30_000):
        table.selectRow(1)
    assert panel.display.picture is not None and panel.display.picture.section_id == "rat03-L2"
    assert panel.display.caption.text().startswith("rat03-L2 · rat03 · vehicle · L2")
    # selecting a region fills it on the picture
    panel.display.table.selectRow(panel.display.table.regions().index("gray_matter"))
    assert not panel.display.view.highlight_item.pixmap().isNull()
    assert ("info", f"opened {scans['done']}") in messages


def test_exports_by_clicking(qtbot, scans, tmp_path, monkeypatch):
    panel, messages = open_panel(qtbot, scans["done"])
    csv_path, plan_path, figures = tmp_path / "tables.csv", tmp_path / "plan.yaml", tmp_path / "figures"
    answers = iter([(str(csv_path), ""), (str(plan_path), "")])
    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(lambda *a, **k: next(answers)))
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", staticmethod(lambda *a, **k: str(figures)))

    qtbot.mouseClick(panel.export_csv_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: any("region tables of 2 sections" in t for _, t in messages), timeout=10_000)
    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    assert {r["section_id"] for r in rows} == set(SECTIONS)
    assert {"section", "gray_matter", "white_matter", "rubrospinal_territory"} <= {r["region"] for r in rows}
    assert all(0 <= float(r["pct_axonal_area"]) < 100 for r in rows if r["pct_axonal_area"])

    qtbot.mouseClick(panel.export_plan_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: ("info", f"plan written: {plan_path}") in messages, timeout=10_000)
    assert [s.id for s in load_plan(plan_path).sections] == list(SECTIONS)

    qtbot.mouseClick(panel.export_png_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: ("info", f"figures written into {figures}") in messages, timeout=30_000)
    pngs = sorted(p.name for p in figures.glob("*.png"))
    assert pngs == ["done-rat01-Th7.png", "done-rat03-L2.png"]
    assert all((figures / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert not [m for m in messages if m[0] == "error"]


def test_a_scan_without_analysis_can_be_analysed_from_the_panel(qtbot, scans, tmp_path):
    copy = tmp_path / "partial.h5"
    copy.write_bytes(scans["partial"].read_bytes())
    panel, messages = open_panel(qtbot, copy)
    assert panel.display.picture is None and "no analysis saved" in panel.notice.text()
    assert any(level == "warning" and "Analyse file" in t for level, t in messages)
    assert not panel.export_csv_button.isEnabled() and panel.export_plan_button.isEnabled()
    with qtbot.waitSignal(panel.scan_loaded, timeout=60_000):
        qtbot.mouseClick(panel.analyse_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: panel.display.picture is not None, timeout=30_000)
    assert panel.export_csv_button.isEnabled()
    assert panel.section_table.item(0, 6).text() == "yes"


@pytest.mark.parametrize(
    ("content", "expected"),
    [(None, "scan file not found"), (b"plain text", "cannot open")],
    ids=["missing", "not-hdf5"],
)
def test_a_bad_file_is_an_error_message(qtbot, tmp_path, content: Any, expected: str):
    panel = ResultsPanel()
    qtbot.addWidget(panel)
    messages: list[tuple[str, str]] = []
    panel.message.connect(lambda level, text: messages.append((level, text)))
    path = tmp_path / "bad.h5"
    if content is not None:
        path.write_bytes(content)
    panel.open_scan(path)
    qtbot.waitUntil(lambda: any(level == "error" for level, _ in messages), timeout=10_000)
    assert any(expected in t for _, t in messages)
    assert panel.scan is None and not panel.export_plan_button.isEnabled()
