"""The Slide tab on the demo microscope: overview, found sections, hand edits, the table."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

pytest.importorskip("pytestqt")

from PyQt6.QtCore import QPointF, Qt
from PyQt6.QtWidgets import QComboBox, QStyleOptionViewItem

from acquisition.demo import find_demo_hub
from acquisition.demo.slide import VirtualSlide
from acquisition.hardware import CordScopeCore
from acquisition.overview import Overview, acquire_overview, save_overview
from acquisition.plan import SectionPlan
from gui.slide_panel import COLUMNS, SlidePanel
from tests.conftest import make_demo_core

#: Around rat03-C5 and rat03-Th7 (whole, with glass around them), stage µm.
REGION_UM = (37_500.0, 2_500.0, 48_000.0, 7_500.0)
SECTION_IDS = ("rat03-C5", "rat03-Th7")
COL = {attr: i for i, (_, attr) in enumerate(COLUMNS)}


@dataclass
class Demo:
    core: CordScopeCore
    slide: VirtualSlide
    overview: Overview


@pytest.fixture(scope="module")
def demo(qapp):
    """A 512-px demo core (Qt signals: made after the QApplication) and an overview of two sections."""
    core = make_demo_core(sensor_px=512)
    try:
        overview = acquire_overview(core, region_um=REGION_UM)
        yield Demo(core, find_demo_hub(core).slide, overview)
    finally:
        core.close()


@pytest.fixture
def panel(qtbot, demo):
    p = SlidePanel()
    qtbot.addWidget(p)
    p.resize(1200, 800)
    p.show()
    p.set_core(demo.core)
    return p


@pytest.fixture
def found(qtbot, panel, demo):
    """The panel with the overview shown and its sections found."""
    with qtbot.waitSignal(panel.overview_changed, timeout=5000):
        panel.set_overview(demo.overview)
    with qtbot.waitSignal(panel.sections_changed, timeout=10_000):
        panel.find_button.click()
    return panel


def _messages(panel, qtbot):
    got: list[tuple[str, str]] = []
    panel.message.connect(lambda level, text: got.append((level, text)))
    return got


# ------------------------------------------------------------------ overview


def test_acquire_overview_in_the_background_with_progress(qtbot, panel, demo):
    panel.set_region_um(REGION_UM)
    panel.overview_box.exposure_box.setValue(15.0)
    progress: list[int] = []
    panel.overview_box.progress.valueChanged.connect(progress.append)
    with qtbot.waitSignal(panel.overview_changed, timeout=30_000):
        panel.overview_box.acquire_button.click()
        # the button returns at once: the tiles are taken in a worker thread
        assert (
            panel.busy()
            and not panel.overview_box.acquire_button.isEnabled()
            and panel.overview_box.cancel_button.isEnabled()
        )
    ov = panel.overview()
    assert ov is not None
    assert ov.bbox_um[:2] == REGION_UM[:2]
    assert (ov.objective, ov.channel) == ("4x", "DAPI")
    assert progress and progress[-1] == panel.overview_box.progress.maximum() > 1
    qtbot.waitUntil(lambda: not panel.busy() and panel.find_button.isEnabled())
    # the overview is drawn in stage µm: the pixmap covers the region
    rect = panel._pixmap_item.sceneBoundingRect()
    assert rect.left() == pytest.approx(REGION_UM[0]) and rect.top() == pytest.approx(REGION_UM[1])
    assert rect.right() == pytest.approx(ov.bbox_um[2]) and rect.bottom() == pytest.approx(ov.bbox_um[3])


def test_cancel_stops_the_overview(qtbot, panel):
    messages = _messages(panel, qtbot)
    panel.set_region_um((20_000.0, 0.0, 75_000.0, 25_000.0))  # hundreds of tiles at 512 px
    panel.overview_box.acquire_button.click()
    panel.overview_box.cancel_button.click()
    qtbot.waitUntil(lambda: not panel.busy(), timeout=10_000)
    assert panel.overview() is None
    assert any("cancelled" in text for _, text in messages)
    assert panel.overview_box.acquire_button.isEnabled()


def test_save_and_load_overview(qtbot, panel, demo, tmp_path):
    path = tmp_path / "ov.tif"
    panel.set_overview(demo.overview)
    job = panel.save_overview_file(path)
    qtbot.waitSignal(job.finished, timeout=10_000).wait()
    panel.set_overview(None)
    assert panel.overview() is None
    with qtbot.waitSignal(panel.overview_changed, timeout=10_000):
        panel.load_overview_file(path)
    ov = panel.overview()
    assert ov is not None and ov.origin_um == demo.overview.origin_um
    np.testing.assert_array_equal(ov.image, demo.overview.image)


def test_a_bad_overview_file_is_reported_not_raised(qtbot, panel, tmp_path):
    messages = _messages(panel, qtbot)
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a tiff")
    job = panel.load_overview_file(bad)
    qtbot.waitSignal(job.finished, timeout=10_000).wait()
    assert messages[-1][0] == "error" and "bad.tif" in messages[-1][1]
    assert panel.overview() is None and not panel.busy()


# ---------------------------------------------------------- found sections


def test_find_sections_draws_outlines_and_fills_the_table(found, demo):
    panel = found
    sections = panel.sections()
    assert [s["id"] for s in sections] == ["S01", "S02"]
    assert panel.model.rowCount() == 2 == len(panel._items)
    for s, truth_id in zip(sections, SECTION_IDS, strict=True):
        x0, y0, x1, y1 = demo.slide.section_bbox_um(truth_id)
        xy = np.asarray(s["polygon_um"])
        # the outline holds the whole section, with a margin of at most a few hundred µm
        assert xy[:, 0].min() < x0 and xy[:, 0].max() > x1 and xy[:, 1].min() < y0 and xy[:, 1].max() > y1
        assert xy[:, 0].min() > x0 - 400 and xy[:, 0].max() < x1 + 400
        item = panel.item_for(s["id"])
        assert item is not None
        np.testing.assert_allclose(item.vertices_um(), s["polygon_um"], atol=0.06)
        SectionPlan.model_validate(s)


def test_editing_cells_changes_the_sections(qtbot, found):
    panel, model = found, found.model
    with qtbot.waitSignal(panel.sections_changed):
        assert model.setData(model.index(0, COL["animal"]), "rat03")
        assert model.setData(model.index(0, COL["group"]), "vehicle")
        assert model.setData(model.index(0, COL["level"]), "C5")
        assert model.setData(model.index(1, COL["id"]), "rat03-Th7")
    # the orientation and side columns edit with a combo box
    for column, choice in (("orientation", "horizontal"), ("injection_side", "left")):
        index = model.index(1, COL[column])
        delegate = panel.table.itemDelegateForColumn(COL[column])
        editor = delegate.createEditor(panel.table.viewport(), QStyleOptionViewItem(), index)
        assert isinstance(editor, QComboBox)
        delegate.setEditorData(editor, index)
        editor.setCurrentIndex(editor.findText(choice))
        delegate.setModelData(editor, model, index)
    s0, s1 = panel.sections()
    assert (s0["animal"], s0["group"], s0["level"]) == ("rat03", "vehicle", "C5")
    assert (s1["id"], s1["orientation"], s1["injection_side"]) == ("rat03-Th7", "horizontal", "left")
    assert panel.item_for("rat03-Th7").label.text() == "rat03-Th7"
    for s in (s0, s1):
        SectionPlan.model_validate(s)


@pytest.mark.parametrize(
    ("column", "value", "problem"),
    [
        pytest.param("id", "S02", "already used", id="duplicate-id"),
        pytest.param("id", "no spaces", "letters, digits", id="bad-id"),
        pytest.param("orientation", "sagittal", "orientation must be", id="orientation"),
        pytest.param("injection_side", "both", "injection side", id="side"),
    ],
)
def test_bad_cell_values_are_refused_with_a_message(qtbot, found, column, value, problem):
    messages = _messages(found, qtbot)
    before = found.sections()
    assert not found.model.setData(found.model.index(0, COL[column]), value)
    assert found.sections() == before
    assert messages and messages[-1][0] == "warning" and problem in messages[-1][1]


def test_editing_a_cell_in_the_table_with_the_keyboard(qtbot, found):
    table = found.table
    index = found.model.index(0, COL["animal"])
    table.setCurrentIndex(index)
    table.edit(index)
    editor = table.focusWidget()
    editor.setText("rat05")
    with qtbot.waitSignal(found.sections_changed):
        qtbot.keyClick(editor, Qt.Key.Key_Return)
    assert found.sections()[0]["animal"] == "rat05"


def test_dragging_a_vertex_moves_the_outline(qtbot, found):
    found.select_rows([0])
    item = found.item_for("S01")
    assert item.isSelected() and len(item.handles) == len(found.sections()[0]["polygon_um"]) >= 3
    handle = item.handles[2]
    old = found.sections()[0]["polygon_um"][2]
    target = QPointF(old[0] + 250.0, old[1] - 125.0)
    with qtbot.waitSignal(found.sections_changed):
        handle.setPos(target)  # what a mouse drag of the handle does
    s = found.sections()[0]
    assert s["polygon_um"][2] == pytest.approx([old[0] + 250.0, old[1] - 125.0], abs=0.06)
    assert found.model.section(0).source == "edited"
    assert item.polygon()[2] == target
    SectionPlan.model_validate(s)


def test_dragging_a_vertex_with_the_mouse(qtbot, found):
    found.select_rows([1])
    item = found.item_for("S02")
    handle = item.handles[0]
    view = found.view
    start = view.mapFromScene(handle.scenePos())
    end = start + type(start)(30, 20)
    viewport = view.viewport()
    with qtbot.waitSignal(found.sections_changed):
        qtbot.mousePress(viewport, Qt.MouseButton.LeftButton, pos=start)
        _drag_to(viewport, end)
        qtbot.mouseRelease(viewport, Qt.MouseButton.LeftButton, pos=end)
    moved = view.mapToScene(end)
    assert found.sections()[1]["polygon_um"][0] == pytest.approx(
        [moved.x(), moved.y()], abs=2 * _um_per_px(view)
    )


def _drag_to(viewport, pos):
    # QTest's mouseMove carries no pressed button; send the move event by hand
    from PyQt6.QtCore import QEvent
    from PyQt6.QtGui import QMouseEvent
    from PyQt6.QtWidgets import QApplication

    event = QMouseEvent(
        QEvent.Type.MouseMove,
        QPointF(pos),
        QPointF(viewport.mapToGlobal(pos)),
        Qt.MouseButton.NoButton,
        Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.NoModifier,
    )
    QApplication.sendEvent(viewport, event)


def _um_per_px(view) -> float:
    return 1.0 / view.transform().m11()


def test_drawing_a_new_section_with_the_mouse(qtbot, found):
    view = found.view
    corners = [(39_000.0, 6_600.0), (41_000.0, 6_600.0), (41_000.0, 7_300.0), (39_000.0, 7_300.0)]
    found.add_button.click()
    assert view.drawing
    for x, y in corners:
        qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=view.mapFromScene(QPointF(x, y)))
    with qtbot.waitSignal(found.sections_changed):
        qtbot.keyClick(view, Qt.Key.Key_Return)
    assert not view.drawing and not found.add_button.isChecked()
    new = found.sections()[-1]
    assert new["id"] == "S03"
    np.testing.assert_allclose(new["polygon_um"], corners, atol=2 * _um_per_px(view))
    assert found.model.section(2).source == "drawn"
    assert found.selected_rows() == [2] and found.item_for("S03").isSelected()
    SectionPlan.model_validate(new)


def test_escape_cancels_drawing(qtbot, found):
    view = found.view
    found.add_button.click()
    qtbot.mouseClick(
        view.viewport(), Qt.MouseButton.LeftButton, pos=view.mapFromScene(QPointF(39_000, 6_600))
    )
    qtbot.keyClick(view, Qt.Key.Key_Escape)
    assert not view.drawing and not found.add_button.isChecked()
    assert len(found.sections()) == 2


def test_selection_follows_between_table_and_outlines(qtbot, found):
    found.select_rows([1])
    assert found.item_for("S02").isSelected() and not found.item_for("S01").isSelected()
    # clicking an outline in the view selects its row
    item = found.item_for("S01")
    centre = item.polygon().boundingRect().center()
    qtbot.mouseClick(found.view.viewport(), Qt.MouseButton.LeftButton, pos=found.view.mapFromScene(centre))
    assert found.selected_rows() == [0]
    assert item.isSelected() and not found.item_for("S02").isSelected()


def test_delete_removes_the_selected_section(qtbot, found):
    found.select_rows([0])
    with qtbot.waitSignal(found.sections_changed):
        found.delete_button.click()
    assert [s["id"] for s in found.sections()] == ["S02"]
    assert found.item_for("S01") is None and len(found._items) == 1
    # the Delete key in the view does the same
    found.select_rows([0])
    found.view.setFocus()
    with qtbot.waitSignal(found.sections_changed):
        qtbot.keyClick(found.view, Qt.Key.Key_Delete)
    assert found.sections() == []


def test_finding_again_keeps_what_the_user_entered(qtbot, found):
    model = found.model
    model.setData(model.index(0, COL["animal"]), "rat03")
    found.select_rows([1])
    found.item_for("S02").handles[0].setPos(QPointF(44_000.0, 3_000.0))  # S02 is now "edited"
    edited = found.sections()[1]["polygon_um"]
    with qtbot.waitSignal(found.sections_changed, timeout=10_000):
        found.find_button.click()
    sections = {s["id"]: s for s in found.sections()}
    assert sorted(sections) == ["S01", "S02"]  # the edited outline is not found twice
    assert sections["S01"]["animal"] == "rat03"
    assert sections["S02"]["polygon_um"] == edited


def test_set_sections_round_trips_plan_fields(qtbot, panel):
    given = [
        {
            "id": "rat03-lesion",
            "polygon_um": [
                [36_700.0, 14_000.0],
                [46_300.0, 14_000.0],
                [46_300.0, 16_100.0],
                [36_700.0, 16_100.0],
            ],
            "animal": "rat03",
            "group": "vehicle",
            "level": "lesion",
            "orientation": "horizontal",
            "injection_side": "left",
            "lesion_epicenter_um": [41_500.0, 15_050.0],
            "rostral_direction_deg": 180.0,
        }
    ]
    with qtbot.waitSignal(panel.sections_changed):
        panel.set_sections(given)
    assert panel.sections() == [{**given[0]}]
    assert panel.model.section(0).source == "plan"
    SectionPlan.model_validate(panel.sections()[0])
    # a coronal section may not carry an epicenter: switching drops it
    panel.model.setData(panel.model.index(0, COL["orientation"]), "coronal")
    assert "lesion_epicenter_um" not in panel.sections()[0]
    SectionPlan.model_validate(panel.sections()[0])


def test_find_without_overview_or_core_warns(qtbot):
    panel = SlidePanel()
    qtbot.addWidget(panel)
    messages = _messages(panel, qtbot)
    assert panel.find_sections() is None
    assert panel.acquire_overview() is None
    assert [level for level, _ in messages] == ["warning", "warning"]


def test_overview_written_by_the_cli_format_loads(qtbot, panel, demo, tmp_path):
    # the TIFF that `cordscope overview` writes beside its plan
    path = save_overview(tmp_path / "plan-overview.tif", demo.overview)
    with qtbot.waitSignal(panel.overview_changed, timeout=10_000):
        panel.load_overview_file(path)
    assert panel.overview_box.overview_info.text().startswith(
        f"{demo.overview.shape[1]} × {demo.overview.shape[0]} px"
    )


def test_a_camera_fault_during_the_overview_is_reported(qtbot, panel, demo):
    messages = _messages(panel, qtbot)
    demo.core.setProperty("Camera", "FailEveryNthSnap", 3)
    try:
        panel.set_region_um(REGION_UM)
        panel.overview_box.acquire_button.click()
        qtbot.waitUntil(lambda: not panel.busy(), timeout=30_000)
    finally:
        demo.core.setProperty("Camera", "FailEveryNthSnap", 0)
    assert messages[-1][0] == "error" and messages[-1][1].startswith("cannot acquire the overview:")
    assert panel.overview() is None and panel.overview_box.acquire_button.isEnabled()


def test_long_sections_are_taken_for_horizontal_ones(qtbot, panel):
    # glass at the dark offset, one coronal-like and one horizontal-like section
    pixel_um = 8.0
    image = np.full((500, 1600), 100.0, dtype=np.float32)
    rows, cols = np.mgrid[0:500, 0:1600]
    image[((cols - 250) / 200.0) ** 2 + ((rows - 250) / 150.0) ** 2 < 1.0] = 160.0  # 3.2 × 2.4 mm
    image[175:325, 500:1500] = 160.0  # 8 × 1.2 mm
    overview = Overview(image, (10_000.0, 2_000.0), pixel_um, "DAPI", "4x")
    panel.set_overview(overview)
    with qtbot.waitSignal(panel.sections_changed, timeout=10_000):
        panel.find_sections()
    assert [s["orientation"] for s in panel.sections()] == ["coronal", "horizontal"]
