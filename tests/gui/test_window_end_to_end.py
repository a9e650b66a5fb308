"""The whole window on the demo config, driven as a person would: overview, sections, scan, results."""

from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")

from PyQt6.QtCore import Qt

from acquisition.demo import find_demo_hub
from acquisition.storage import ScanFile
from gui.app import MainWindow
from gui.slide_panel import COLUMNS

COL = {attr: i for i, (_, attr) in enumerate(COLUMNS)}
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module", autouse=True)
def offline_icons(tmp_path_factory):
    from gui.offline_icons import use_offline_icons

    use_offline_icons(tmp_path_factory.mktemp("icons"))


@pytest.mark.slow
def test_overview_find_label_scan_and_read_the_results(qtbot, tmp_path):
    window = MainWindow()  # loads the demo config, as `cordscope gui` does
    qtbot.addWidget(window)
    window.resize(1500, 950)
    window.show()
    messages: list[tuple[str, str]] = []
    for panel in (window.slide_panel, window.scan_panel, window.results_panel):
        panel.message.connect(lambda level, text: messages.append((level, text)))
    qtbot.waitUntil(lambda: window.core is not None and not window.is_loading(), timeout=TIMEOUT_MS)
    core = window.core
    assert core is not None
    core.setProperty("Camera", "SensorWidth", 512)  # a small camera keeps the test quick
    core.setProperty("Camera", "SensorHeight", 512)

    # Slide tab: an overview around one section, then find it
    slide = window.slide_panel
    window.tabs.setCurrentWidget(slide)
    x0, y0, x1, y1 = find_demo_hub(core).slide.section_bbox_um("rat03-Th7")
    slide.set_region_um((x0 - 600, y0 - 600, x1 + 600, y1 + 600))
    with qtbot.waitSignal(slide.overview_changed, timeout=TIMEOUT_MS):
        qtbot.mouseClick(slide.overview_box.acquire_button, Qt.MouseButton.LeftButton)
    with qtbot.waitSignal(slide.sections_changed, timeout=TIMEOUT_MS):
        qtbot.mouseClick(slide.find_button, Qt.MouseButton.LeftButton)
    assert [s["id"] for s in slide.sections()] == ["S01"]
    # label it in the section table
    model = slide.model
    with qtbot.waitSignal(slide.sections_changed):
        for column, value in (
            ("id", "rat03-Th7"),
            ("animal", "rat03"),
            ("group", "vehicle"),
            ("level", "Th7"),
        ):
            assert model.setData(model.index(0, COL[column]), value)
        assert model.setData(model.index(0, COL["injection_side"]), "left")

    # Scan tab: the section arrived; a fixed focus and no registration keep it short
    scan = window.scan_panel
    window.tabs.setCurrentWidget(scan)
    qtbot.waitUntil(lambda: "rat03-Th7" in scan.form.sections_label.text(), timeout=10_000)
    scan.form.output_edit.setText(str(tmp_path / "slide.h5"))
    scan.form.focus_combo.setCurrentIndex(scan.form.focus_combo.findData("fixed"))
    scan.form.register_check.setChecked(False)
    qtbot.waitUntil(scan.is_ready, timeout=10_000)
    assert "1 sections" in scan.form.summary_label.text()
    with qtbot.waitSignal(window.results_panel.section_shown, timeout=TIMEOUT_MS):
        qtbot.mouseClick(scan.start_button, Qt.MouseButton.LeftButton)
    assert scan.state == "finished"

    # Results tab: opened on the saved file with the section's numbers
    results = window.results_panel
    assert window.tabs.currentWidget() is results
    assert results.scan is not None and results.scan.path == tmp_path / "slide.h5"
    assert results.section_ids() == ["rat03-Th7"]
    row = [results.section_table.item(0, c).text() for c in range(4)]
    assert row == ["rat03-Th7", "rat03", "vehicle", "Th7"]
    regions = results.display.table.regions()
    assert {"section", "gray_matter", "white_matter", "rubrospinal_territory"} <= set(regions)
    rst = float(results.display.table.cell_text("rubrospinal_territory", "% axonal area"))
    assert rst > float(results.display.table.cell_text("section", "% axonal area")) > 0
    with ScanFile.open(tmp_path / "slide.h5") as f:
        assert f.summary().complete
    assert not [m for m in messages if m[0] == "error"]
    # the log panel holds the story
    log = [e.text for e in window.log_panel.entries()]
    assert any(t.startswith("scan finished") for t in log)
