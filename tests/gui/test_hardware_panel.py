"""The Microscope tab: pymmcore-widgets on the demo core, snap, stage position, new cores."""

from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")

from PyQt6.QtCore import Qt, QThreadPool

from gui.hardware_panel import HardwarePanel
from tests.conftest import make_demo_core

SENSOR_PX = 256


@pytest.fixture(scope="module", autouse=True)
def offline_icons(tmp_path_factory):
    from gui.offline_icons import use_offline_icons

    use_offline_icons(tmp_path_factory.mktemp("icons"))


@pytest.fixture
def core(qapp):
    # made after the QApplication, so its events are Qt signals, as in the GUI
    c = make_demo_core(sensor_px=SENSOR_PX)
    yield c
    c.close()


@pytest.fixture
def panel(qtbot, core):
    p = HardwarePanel()
    qtbot.addWidget(p)
    p.set_core(core)
    p.resize(1200, 800)
    p.show()
    yield p
    # pymmcore-widgets' snap button snaps in a thread-pool worker: let it end before the core is unloaded
    assert QThreadPool.globalInstance().waitForDone(10_000)
    p.set_core(None)  # before the core is unloaded, as the window does


def test_widgets_are_made_for_our_core(panel, core):
    expected = {
        "snap",
        "live",
        "exposure",
        "channel",
        "objective",
        "xy_stage",
        "focus",
        "preview",
        "properties",
    }
    assert set(panel.widgets) == expected
    for name, widget in panel.widgets.items():
        assert widget._mmc is core, name  # never CMMCorePlus.instance()
    assert "demo.cfg" in panel._config_label.text()
    assert f"{SENSOR_PX} × {SENSOR_PX} px" in panel._image_info.text()


def test_snap_shows_an_image(qtbot, panel, core):
    preview = panel.widgets["preview"]
    assert preview.image is None
    qtbot.mouseClick(panel.widgets["snap"], Qt.MouseButton.LeftButton)
    # the snap runs in a worker thread; the preview updates on the Qt thread
    qtbot.waitUntil(lambda: preview.image is not None, timeout=10_000)
    assert preview.image.size == (SENSOR_PX, SENSOR_PX)


def test_live_view_starts_and_stops(qtbot, panel, core):
    live = panel.widgets["live"]
    qtbot.mouseClick(live, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(core.isSequenceRunning, timeout=5000)
    qtbot.waitUntil(lambda: panel.widgets["preview"].image is not None, timeout=10_000)
    qtbot.mouseClick(live, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not core.isSequenceRunning(), timeout=5000)


def test_a_stage_move_by_the_core_shows_in_the_stage_widget(qtbot, panel, core):
    x0, y0 = core.getXYPosition()
    core.setXYPosition(x0 + 1234.0, y0 - 500.0)
    core.waitForDevice(core.getXYStageDevice())
    x_box, y_box = panel.widgets["xy_stage"]._pos_boxes
    qtbot.waitUntil(lambda: x_box.value() == pytest.approx(x0 + 1234.0, abs=0.05), timeout=5000)
    assert y_box.value() == pytest.approx(y0 - 500.0, abs=0.05)
    assert f"X {x0 + 1234.0:,.1f} µm" in panel.position_text()
    core.setPosition(12.5)
    (z_box,) = panel.widgets["focus"]._pos_boxes
    qtbot.waitUntil(lambda: z_box.value() == pytest.approx(12.5), timeout=5000)
    assert "Z 12.50 µm" in panel.position_text()


def test_stage_widget_moves_the_stage(qtbot, panel, core):
    from pymmcore_widgets.control._stage_widget import MoveStageButton

    x0, _ = core.getXYPosition()
    right = next(
        b for b in panel.widgets["xy_stage"].findChildren(MoveStageButton) if (b.xmag, b.ymag) == (1, 0)
    )
    qtbot.mouseClick(right, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: core.getXYPosition()[0] == pytest.approx(x0 + 500.0), timeout=5000)
    qtbot.waitUntil(lambda: f"X {x0 + 500.0:,.1f} µm" in panel.position_text(), timeout=5000)


def test_objective_change_updates_the_image_size(qtbot, panel, core):
    core.setConfig("Objective", "4x")
    qtbot.waitUntil(lambda: "1.625 µm/px" in panel._image_info.text(), timeout=5000)


def test_a_new_core_replaces_the_widgets(qtbot, panel, core):
    old_preview = panel.widgets["preview"]
    other = make_demo_core(sensor_px=128)
    try:
        panel.set_core(other)
        assert panel.widgets["preview"] is not old_preview and panel.widgets["preview"]._mmc is other
        assert "128 × 128 px" in panel._image_info.text()
        # the old core's moves no longer reach the panel
        core.setXYPosition(30_000.0, 10_000.0)
        core.waitForDevice(core.getXYStageDevice())
        qtbot.wait(50)
        assert "30,000.0" not in panel.position_text()
        panel.set_core(None)
        assert panel.widgets == {} and panel.position_text() == ""
    finally:
        panel.set_core(None)
        other.close()
