"""The main window on the demo config: loading, errors, wiring between the tabs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("pytestqt")

from PyQt6.QtCore import Qt
from PyQt6.QtWidgets import QApplication

from acquisition.hardware import DEMO_CONFIG, CordScopeCore
from acquisition.plan import SectionPlan
from gui.app import MainWindow, main

LOAD_TIMEOUT_MS = 30_000


@pytest.fixture(scope="module", autouse=True)
def offline_icons(tmp_path_factory):
    from gui.offline_icons import use_offline_icons

    use_offline_icons(tmp_path_factory.mktemp("icons"))


@pytest.fixture(scope="module")
def window(qapp):
    """One window for the module, on the demo config, loaded as `cordscope gui` does."""
    w = MainWindow()
    w.resize(1400, 900)
    w.show()
    try:
        yield w
    finally:
        w.close()
        w.deleteLater()
        qapp.processEvents()


@pytest.fixture
def loaded(qtbot, window):
    qtbot.waitUntil(lambda: window.core is not None and not window.is_loading(), timeout=LOAD_TIMEOUT_MS)
    return window


def test_window_opens_on_the_demo_config(qtbot, loaded):
    w = loaded
    assert [w.tabs.tabText(i) for i in range(w.tabs.count())] == ["Microscope", "Slide", "Scan", "Results"]
    assert isinstance(w.core, CordScopeCore)
    assert Path(w.core.systemConfigurationFile()).resolve() == DEMO_CONFIG.resolve()
    assert w.hardware_panel.core is w.core and w.slide_panel.core is w.core
    assert w.hardware_panel.widgets["preview"]._mmc is w.core
    # the core was built off the Qt thread; its Qt signal objects were handed to the Qt thread
    assert w.core.events.thread() is w.thread()
    assert any("hardware loaded: demo.cfg" in e.text for e in w.log_panel.entries("info"))
    assert w.log_dock.isVisible() and w.log_dock.widget() is w.log_panel
    menu = [a.text() for a in w.menuBar().actions()[0].menu().actions() if a.text()]
    assert menu == ["Load hardware config…", "Open scan file…", "Quit"]


def test_loading_a_config_emits_core_changed_and_unloads_the_old_core(qtbot, loaded):
    old = loaded.core
    with qtbot.waitSignal(loaded.core_changed, timeout=LOAD_TIMEOUT_MS) as blocker:
        loaded.load_config(DEMO_CONFIG)
        assert loaded.is_loading() and not loaded.load_config_action.isEnabled()
    new = blocker.args[0]
    assert isinstance(new, CordScopeCore) and new is not old and loaded.core is new
    assert loaded.hardware_panel.widgets["xy_stage"]._mmc is new
    qtbot.waitUntil(
        lambda: not old.getLoadedDevices() or list(old.getLoadedDevices()) == ["Core"], timeout=10_000
    )
    qtbot.waitUntil(lambda: loaded.load_config_action.isEnabled())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "Property,Core,Initialize\nthis is not a config\n", "cannot load hardware config", id="malformed"
        ),
        pytest.param("Device,Cam,NoSuchAdapterLib,NoSuchCamera\n", "NoSuchAdapterLib", id="missing-adapter"),
        pytest.param(
            "#py pyDevice,Cam,os,system\nProperty,Core,Initialize,1\n", "trust", id="untrusted-python"
        ),
    ],
)
def test_a_bad_config_is_reported_and_the_window_survives(qtbot, loaded, tmp_path, text, expected):
    good = loaded.core
    bad = tmp_path / "bad.cfg"
    bad.write_text(text)
    n_errors = len(loaded.log_panel.entries("error"))
    loaded.load_config(bad)
    qtbot.waitUntil(lambda: not loaded.is_loading(), timeout=LOAD_TIMEOUT_MS)
    errors = loaded.log_panel.entries("error")
    assert len(errors) == n_errors + 1
    assert "bad.cfg" in errors[-1].text and expected in errors[-1].text
    assert "still using demo.cfg" in errors[-1].text
    box = loaded.error_box
    assert box is not None and box.isVisible() and box.windowModality() == Qt.WindowModality.NonModal
    assert expected in box.text()
    assert expected in loaded.statusBar().currentMessage()
    # the demo core is still in use and still works
    assert loaded.core is good and loaded.hardware_panel.core is good
    good.snapImage()
    assert good.getImage().shape == (good.getImageHeight(), good.getImageWidth())
    box.close()


def test_messages_go_to_the_log_and_status_bar(qtbot, loaded):
    box_before = loaded.error_box.isVisible() if loaded.error_box else False
    loaded.show_message("info", "hello from the test")
    assert loaded.log_panel.entries()[-1].text == "hello from the test"
    assert loaded.statusBar().currentMessage() == "hello from the test"
    assert (loaded.error_box.isVisible() if loaded.error_box else False) == box_before
    loaded.slide_panel.message.emit("warning", "from the slide panel")
    assert loaded.log_panel.entries()[-1].level == "warning"
    loaded.scan_panel.message.emit("error", "from the scan panel")
    assert loaded.log_panel.entries()[-1].level == "error" and loaded.error_box.isVisible()
    assert "from the scan panel" in loaded.error_box.text()
    loaded.error_box.close()


def test_sections_flow_from_the_slide_to_the_scan_tab(qtbot, loaded, monkeypatch):
    received: list[list[dict]] = []
    monkeypatch.setattr(loaded.scan_panel, "set_sections", received.append)
    section = {
        "id": "rat01-C5",
        "polygon_um": [[21_500.0, 3_400.0], [25_400.0, 3_400.0], [25_400.0, 6_200.0], [21_500.0, 6_200.0]],
        "animal": "rat01",
        "group": "intact",
        "level": "C5",
        "orientation": "coronal",
        "injection_side": "left",
    }
    with qtbot.waitSignal(loaded.slide_panel.sections_changed):
        loaded.slide_panel.set_sections([section])
    assert received[-1] == [section]
    SectionPlan.model_validate(received[-1][0])


def test_a_finished_scan_opens_in_the_results_tab(qtbot, loaded, monkeypatch):
    opened: list[Path] = []
    monkeypatch.setattr(loaded.results_panel, "open_scan", opened.append)
    loaded.tabs.setCurrentWidget(loaded.scan_panel)
    loaded.scan_panel.scan_finished.emit("/data/scans/slide-07.h5")
    assert opened == [Path("/data/scans/slide-07.h5")]
    assert loaded.tabs.currentWidget() is loaded.results_panel


def test_window_without_loading(qtbot):
    w = MainWindow(load_on_start=False)
    qtbot.addWidget(w)
    assert w.core is None and not w.is_loading()
    assert w.log_panel.entries() == []


def test_main_opens_the_window_and_returns_when_it_closes(qtbot, monkeypatch):
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # main() installs its own
    app = QApplication.instance()
    before = set(app.topLevelWidgets())
    opened: list[MainWindow] = []

    def run_until_loaded_then_close(_app) -> int:
        # stands in for app.exec(): the real one would run until the user quits
        def new_windows():
            return [w for w in app.topLevelWidgets() if isinstance(w, MainWindow) and w not in before]

        qtbot.waitUntil(lambda: any(w.core is not None for w in new_windows()), timeout=LOAD_TIMEOUT_MS)
        opened.extend(new_windows())
        opened[0].close()
        return 0

    monkeypatch.setattr(QApplication, "exec", run_until_loaded_then_close)
    assert main(DEMO_CONFIG) == 0
    (window,) = opened
    assert window.isHidden() and window.core is None  # closing unloaded the hardware
    assert (window.width(), window.height()) == (1400, 900)
    window.deleteLater()


def test_scan_warnings_are_listed_once_in_the_log(qtbot):
    """The controller's warnings arrive as the scan panel's messages; its log record is not listed again."""
    import logging

    from gui.log_panel import LogPanel

    panel = LogPanel()
    qtbot.addWidget(panel)
    try:
        logging.getLogger("acquisition.controller").warning("tile rat01-C5/3 failed: camera timeout")
        logging.getLogger("acquisition.storage").warning("repaired scan.h5")
        panel.add("warning", "tile rat01-C5/3 failed: camera timeout")  # the scan panel's message
        qtbot.waitUntil(lambda: any("repaired" in e.text for e in panel.entries()))
        texts = [e.text for e in panel.entries("warning")]
        assert texts.count("tile rat01-C5/3 failed: camera timeout") == 1
    finally:
        panel.detach_logging()


def test_a_cpp_config_without_channel_group_loads_and_fills_the_forms(qtbot, loaded, mm_demo_config):
    """Micro-Manager's own C++ demo adapters through the window's load path (a Wizard-style .cfg)."""
    cfg = mm_demo_config("8bit")  # no Core,ChannelGroup line; objective group "Nosepiece"
    with qtbot.waitSignal(loaded.core_changed, timeout=LOAD_TIMEOUT_MS) as blocker:
        loaded.load_config(cfg.path)
    core = blocker.args[0]
    assert "DCam" in [core.getDeviceName(d) for d in core.getLoadedDevices()]
    overview = loaded.slide_panel.overview_box
    objectives = {overview.objective_combo.itemText(i) for i in range(overview.objective_combo.count())}
    assert objectives == {"4x", "10x", "20x"}
    assert (
        overview.channel_combo.count() == 2
        and overview.acquisition_settings(core)["channel_group"] == "Channel"
    )
    # the DXYStage reports no travel: the overview region is the default slide beside its label
    assert overview.region_um() == pytest.approx((20_000.0, 0.0, 75_000.0, 25_000.0))
    form = loaded.scan_panel.form
    assert form.channel_row("DAPI") is not None and form.channel_row("tdTomato") is not None
    qtbot.waitUntil(lambda: loaded.load_config_action.isEnabled())
    with qtbot.waitSignal(loaded.core_changed, timeout=LOAD_TIMEOUT_MS):
        loaded.load_config(DEMO_CONFIG)  # leave the module's window on the demo microscope
