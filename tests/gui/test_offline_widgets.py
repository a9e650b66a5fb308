"""pymmcore-widgets open on the demo core with no network."""

from __future__ import annotations

import socket

import pytest

pytest.importorskip("pytestqt")


@pytest.fixture
def no_network(monkeypatch):
    """Fail any attempt to open a network connection."""

    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_offline_icon_for_every_key_widgets_use(tmp_path):
    from gui.offline_icons import NON_MDI_EQUIVALENTS, offline_svg

    for key in NON_MDI_EQUIVALENTS:
        prefix, name = key.split(":")
        svg = offline_svg(prefix, name, color="red")
        assert svg is not None and b'fill="red"' in svg, key
    assert offline_svg("mdi", "arrow-up") is not None
    assert offline_svg("mdi", "no-such-icon-anywhere") is None


def test_stage_and_property_widgets_open_offline(qtbot, demo_core, tmp_path, no_network):
    from gui.offline_icons import use_offline_icons

    use_offline_icons(tmp_path / "icons")
    from pymmcore_widgets import PropertyBrowser, StageWidget

    stage = StageWidget("XYStage", mmcore=demo_core)
    props = PropertyBrowser(mmcore=demo_core)
    qtbot.addWidget(stage)
    qtbot.addWidget(props)
    stage.show()
    props.show()
    assert list((tmp_path / "icons" / "svg_cache").glob("mdi_*.svg"))
    # the stage widget moves the demo stage
    x0, _ = demo_core.getXYPosition()
    stage._move_btns.moveRequested.emit(1.0, 0.0)  # as the "right" arrow does
    qtbot.waitUntil(lambda: demo_core.getXYPosition()[0] != x0, timeout=3000)
